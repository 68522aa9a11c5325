"""Which models and SAE sets this deployment serves, and which workers answer for each: learnt from every worker's
/v1/info (a worker that is down when asked is asked again later), workers of the same model and set pooled so that
requests fail over between them. The first model (in the order of the worker URLs) answers requests that name none.
Knows the worker contract, nothing of torch or the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import httpx

from app import protocol as P
from app.web.services.errors import NotFound
from app.web.worker_client import (
    WorkerClient,
    WorkerError,
    WorkerPool,
    WorkerUnavailable,
    healthy_workers,
    http_client,
    in_process_client,
)

log = logging.getLogger("saex.web")
PROBE_EVERY_S = 5.0  # how often workers that have not answered /v1/info yet are asked again


@dataclass
class SAESet:
    name: str
    saes: list[P.SAEInfo]
    client: WorkerClient  # over every worker that hosts this set


@dataclass
class ServedModel:
    info: P.ModelInfo
    sets: dict[str, SAESet] = field(default_factory=dict)  # in the order their first worker was listed

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def saes(self) -> list[P.SAEInfo]:
        return [s for sae_set in self.sets.values() for s in sae_set.saes]

    def first_set(self) -> SAESet:
        return next(iter(self.sets.values()))

    def sae_set(self, name: str | None = None, sae_id: str | None = None) -> SAESet:
        """The set named, or the one holding sae_id, or the first; NotFound with what exists."""
        if sae_id is not None:
            for s in self.sets.values():
                if any(sae.id == sae_id for sae in s.saes):
                    return s
            raise NotFound(f"model {self.name!r} has no SAE {sae_id!r}; its SAEs: {[s.id for s in self.saes]}")
        if name is None:
            return self.first_set()
        if name not in self.sets:
            raise NotFound(f"model {self.name!r} has no SAE set {name!r}; its sets: {list(self.sets)}")
        return self.sets[name]

    def as_contract(self) -> P.ServedModel:
        return P.ServedModel(**self.info.model_dump(), saes=self.saes)

    def info_response(self) -> P.InfoResponse:
        return P.InfoResponse(model=self.info, saes=self.saes)


class Deployment:
    """Every worker (by URL, or the in-process one) grouped by the model and SAE set it hosts."""

    def __init__(self, clients: list[httpx.AsyncClient], names: list[str], fallback_model: str = "demo") -> None:
        if not clients:
            raise ValueError("the web app needs a worker: give --worker-url, or run the embedded default in-process")
        self._clients, self.names, self.fallback_model = clients, names, fallback_model
        self._infos: list[P.InfoResponse | None] = [None] * len(clients)
        self._why: dict[int, str] = {}  # why a worker that has not said what it hosts did not
        self._models: dict[str, ServedModel] = {}
        self._probed_at = float("-inf")
        self._lock = asyncio.Lock()

    @classmethod
    def over_http(cls, urls: list[str], fallback_model: str = "demo", token: str | None = None) -> Deployment:
        return cls([http_client(u, token=token) for u in urls], list(urls), fallback_model)

    @classmethod
    def in_process(cls, worker_app, fallback_model: str = "demo", token: str | None = None) -> Deployment:
        return cls([in_process_client(worker_app, token=token)], ["in-process worker"], fallback_model)

    async def close(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients))

    # --- discovery --------------------------------------------------------------------------------------------

    async def _discover(self, force: bool = False) -> None:
        """Ask the workers that have not said what they host yet (at most every PROBE_EVERY_S unless forced)."""
        unknown = [i for i, info in enumerate(self._infos) if info is None]
        if not unknown or (not force and time.monotonic() - self._probed_at < PROBE_EVERY_S):
            return
        async with self._lock:
            unknown = [i for i, info in enumerate(self._infos) if info is None]
            if not unknown:
                return
            self._probed_at = time.monotonic()
            answers = await asyncio.gather(*(self._ask_info(i) for i in unknown))
            if any(a is not None for a in answers):
                for i, info in zip(unknown, answers, strict=True):
                    self._infos[i] = info
                self._regroup()

    async def _ask_info(self, i: int) -> P.InfoResponse | None:
        pool = WorkerPool([self._clients[i]], [self.names[i]], timeout=5.0)
        try:
            info = await WorkerClient(pool).info()
        except (WorkerError, WorkerUnavailable) as exc:
            self._why[i] = exc.detail
            log.warning("worker %s did not say what it hosts: %s", self.names[i], exc.detail)
            return None
        self._why.pop(i, None)
        return info

    def _regroup(self) -> None:
        groups: dict[tuple[str, str], list[int]] = {}
        for i, info in enumerate(self._infos):
            if info is not None:
                sae_set = info.saes[0].set if info.saes else P.DEFAULT_SAE_SET
                groups.setdefault((info.model.name, sae_set), []).append(i)
        models: dict[str, ServedModel] = {}
        for (model, sae_set), members in groups.items():
            info = self._infos[members[0]]
            served = models.setdefault(model, ServedModel(info.model))
            taken = {s.id for s in served.saes}
            if clash := taken & {s.id for s in info.saes}:
                log.error("SAE set %r of model %r reuses SAE ids %s of another set: name them apart with "
                          "--sae id=folder; the set is left out", sae_set, model, sorted(clash))
                continue
            pool = WorkerPool([self._clients[i] for i in members], [self.names[i] for i in members])
            served.sets[sae_set] = SAESet(sae_set, info.saes, WorkerClient(pool))
        self._models = models

    # --- what the routes ask ----------------------------------------------------------------------------------

    def known(self) -> list[ServedModel]:
        """The models workers have said they host so far, without asking them (for the OpenAPI document's limits)."""
        return list(self._models.values())

    async def models(self) -> list[ServedModel]:
        await self._discover()
        return list(self._models.values())

    async def default_name(self) -> str:
        """The first model; while no worker has answered yet, the configured fallback."""
        await self._discover()
        return next(iter(self._models), self.fallback_model)

    async def model(self, name: str | None = None) -> ServedModel:
        """The model named (None: the first); NotFound if no worker hosts it, WorkerUnavailable if the workers that
        might are not answering."""
        await self._discover()
        if name is None:
            name = next(iter(self._models), None)
        if name not in self._models:
            await self._discover(force=True)
        if name is not None and name in self._models:
            return self._models[name]
        if any(info is None for info in self._infos):
            why = "; ".join(self._why.values()) or "not asked yet"
            raise WorkerUnavailable(f"no inference worker that hosts {'a model' if name is None else repr(name)} "
                                    f"answers: {why}")
        raise NotFound(f"this deployment serves models {list(self._models)}, not {name!r}: see /api/v1/models")

    async def client(self, model: str | None = None, sae_set: str | None = None,
                     sae_id: str | None = None) -> tuple[ServedModel, WorkerClient]:
        served = await self.model(model)
        return served, served.sae_set(sae_set, sae_id).client

    async def healthy(self) -> list[str]:
        return await healthy_workers(self._clients, self.names)
