"""Steering: a steering form's fields read into the contract's SteerRequest (the one shape a steering spec has from
here to the engine), strengths in multiples of each feature's max activation, run by the model's workers within the
model's context, saved behind a permalink, and where the two continuations part; knows nothing of HTTP or torch."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import protocol as P
from app.store import explanations, results
from app.store.models import FeatureRecord, ModelRecord, SAERecord
from app.web.deployment import Deployment
from app.web.services.errors import Invalid, NotFound

DEFAULT_MULTIPLE = 2.0  # a new row's strength: twice the feature's max activation (a clear, not absurd, push)
DEFAULT_VALUE = 8.0  # ... or this, for a feature without a dashboard
BLANK_ROW = {"layer": "", "feature": "", "mode": "add", "value": "", "heads": "", "positions": ""}


def parse_ints(text: str, what: str) -> list[int] | None:
    """'0, 3 5' -> [0, 3, 5]; blank -> None (all)."""
    parts = text.replace(",", " ").split()
    if not parts:
        return None
    try:
        return [int(p) for p in parts]
    except ValueError as exc:
        raise ValueError(f"{what} must be whole numbers separated by commas, got {text!r}") from exc


def form_number(text: str, kind: type, what: str):
    """A form field (always text) as the number the API wants, or a message that says what to type."""
    try:
        return kind(str(text).strip())
    except ValueError as exc:
        word = "a whole number" if kind is int else "a number"
        raise ValueError(f"{what} must be {word}, got {text!r}") from exc


@dataclass
class SteerForm:
    """The steering form as the browser sends it: one list per column of the interventions table, all text."""

    text: str
    max_new_tokens: int
    temperature: float
    seed: int
    layer: list[str]
    feature: list[str]
    mode: list[str]
    value: list[str]
    heads: list[str]
    positions: list[str]

    def rows(self) -> list[dict]:
        """The table's rows as typed (for showing the form again)."""
        return [{"layer": a, "feature": b, "mode": c, "value": d, "heads": e, "positions": f}
                for a, b, c, d, e, f in zip(self.layer, self.feature, self.mode, self.value, self.heads,
                                            self.positions, strict=False)]

    def request(self, model: str) -> P.SteerRequest:
        """The contract's request; ValueError (a message per field) or pydantic's ValidationError when a field
        does not fit."""
        interventions = []
        for i, row in enumerate(self.rows()):
            if not str(row["feature"]).strip():
                continue
            mode, value = row["mode"] or "add", str(row["value"]).strip()
            if not value and mode != "ablate":  # an empty clamp is not a clamp to 0: ask
                raise ValueError(f"row {i + 1}: {mode} needs a value (clamp to 0 is a value of 0; ablate needs none)")
            interventions.append(P.InterventionSpec(
                layer=form_number(row["layer"], int, f"row {i + 1}: layer"),
                feature=form_number(row["feature"], int, f"row {i + 1}: feature"),
                mode=mode, value=form_number(value or "0", float, f"row {i + 1}: value"),
                heads=parse_ints(row["heads"], "heads"), positions=parse_ints(row["positions"], "positions")))
        return P.SteerRequest(model=model, text=self.text, max_new_tokens=self.max_new_tokens,
                              temperature=self.temperature, seed=self.seed, top_logprobs=5,
                              interventions=interventions)


def draft_of(body: P.SteerRequest) -> dict:
    """A request as the form shows it (heads and positions as typed text)."""
    return {**body.model_dump(), "interventions": [
        {**i.model_dump(), "heads": ", ".join(map(str, i.heads or [])),
         "positions": ", ".join(map(str, i.positions or []))} for i in body.interventions]}


def with_blank_row(rows: list[dict]) -> list[dict]:
    """The rows with one blank row to fill at the end, unless one is blank already (a form sent back keeps its rows
    as they were, not one more blank row per try)."""
    if any(not str(r.get("feature", "")).strip() for r in rows):
        return rows
    return [*rows, dict(BLANK_ROW)]


def new_draft(*, session: Session, model_slug: str, layer: int | None, feature: int | None) -> dict:
    """The empty form, or one with this feature picked at DEFAULT_MULTIPLE times its max activation."""
    row = {**BLANK_ROW, "layer": "" if layer is None else layer, "feature": "" if feature is None else feature}
    explain_rows(session=session, model_slug=model_slug, rows=[row])
    if feature is not None:
        row["value"] = round(DEFAULT_MULTIPLE * row["max_act"], 3) if row.get("max_act") else DEFAULT_VALUE
    return {"text": "", "max_new_tokens": 24, "temperature": 0.0, "seed": 0, "interventions": [row]}


async def context_left(*, deployment: Deployment, model: str, text: str) -> tuple[int, int | None]:
    """(the model's context n_ctx, new tokens that fit after this prompt: n_ctx minus its tokens; None without a
    prompt)."""
    served, client = await deployment.client(model)
    if not text:
        return served.info.n_ctx, None
    tokens = await client.tokenize(P.TextRequest(model=served.name, text=text))
    return served.info.n_ctx, served.info.n_ctx - len(tokens.tokens)


async def steer_and_save(*, deployment: Deployment, session: Session, body: P.SteerRequest,
                         save: bool, limits: results.SaveLimits | None = None) -> P.SteerResponse:
    """Run default and steered generation on the model's workers; saved (permalink set) when `save`. ValueError
    when the new tokens asked for do not fit the model's context after the prompt; results.QuotaExceeded (before
    any generation) or ResultTooLarge past `limits`."""
    if save and limits is not None:
        results.check_quota(session, limits)
    model, client = await deployment.client(body.model, body.set)
    body = body.model_copy(update={"model": model.name})
    n_ctx, left = await context_left(deployment=deployment, model=model.name, text=body.text)
    if left is not None and body.max_new_tokens > left:
        raise Invalid(f"the prompt is {n_ctx - left} tokens and the model's context {n_ctx}, so at most "
                         f"{max(left, 0)} new tokens fit: ask for fewer")
    out = await client.steer(body)
    if not save:
        return out.model_copy(update={"permalink": None})
    # off the event loop: on SQLite an INSERT waits for another request's uncommitted one, whose commit may need
    # the loop (two steers that took turns on the worker end together)
    saved = await asyncio.to_thread(
        results.save, session, kind="steering", model_slug=model.name,
        payload={"request": body.model_dump(), "result": out.model_dump(exclude={"permalink"})}, limits=limits)
    return out.model_copy(update={"permalink": f"/s/{saved.id}"})


def saved_steering(*, session: Session, result_id: str) -> tuple[str, P.SteerRequest, dict]:
    """(model, request, result) of a saved steering result."""
    saved = results.load(session, result_id=result_id, kind="steering")
    if saved is None:
        raise NotFound(f"there is no saved steering result {result_id!r}")
    request = saved.payload["request"]
    return saved.model_slug, P.SteerRequest.model_validate({**request, "model": request.get("model")}), \
        saved.payload["result"]


def divergence(default: list[int], steered: list[int]) -> dict:
    """Where two continuations part: the first generated position whose token differs (None: identical) and every
    position that differs (a longer run's extra tokens included)."""
    differ = [i for i in range(max(len(default), len(steered)))
              if i >= len(default) or i >= len(steered) or default[i] != steered[i]]
    return {"first": differ[0] if differ else None, "positions": differ}


def explain_rows(*, session: Session, model_slug: str, rows: list[dict]) -> None:
    """Each intervention row naming a layer and feature gets its best explanation (row["explanation"]), its SAE's id
    (row["sae_id"]) and, from its dashboard, its max activation (row["max_act"]), the unit of the strength control."""
    wanted: dict[int, set[int]] = {}
    for row in rows:
        if str(row.get("layer", "")).isdigit() and str(row.get("feature", "")).isdigit():
            wanted.setdefault(int(row["layer"]), set()).add(int(row["feature"]))
    texts: dict[tuple[int, int], str] = {}
    peaks: dict[tuple[int, int], float] = {}
    slugs: dict[int, str] = {}
    for layer, features in wanted.items():
        sae = session.scalars(select(SAERecord).join(ModelRecord).where(
            ModelRecord.slug == model_slug, SAERecord.layer == layer).order_by(SAERecord.id)).first()
        if sae is not None:
            slugs[layer] = sae.slug
            texts |= {(layer, f): t for f, t in explanations.best_text(session, sae=sae, features=features).items()}
            peaks |= {(layer, f): m for f, m in session.execute(
                select(FeatureRecord.index, FeatureRecord.max_activation).where(
                    FeatureRecord.sae_id == sae.id, FeatureRecord.index.in_(features))).all()}
    for row in rows:
        key = (row.get("layer"), row.get("feature"))
        if str(key[0]).isdigit() and str(key[1]).isdigit():
            layer, feature = int(key[0]), int(key[1])
            row["explanation"] = texts.get((layer, feature))
            row["max_act"] = peaks.get((layer, feature))
            row["sae_id"] = slugs.get(layer)
