"""Steering: a steering form's fields read into the contract's SteerRequest (the one shape a steering spec has from
here to the engine), run by the model's workers, saved behind a permalink; knows nothing of HTTP or torch."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import protocol as P
from app.store import explanations, results
from app.store.models import ModelRecord, SAERecord
from app.web.deployment import Deployment
from app.web.services.errors import NotFound


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
            interventions.append(P.InterventionSpec(
                layer=form_number(row["layer"], int, f"row {i + 1}: layer"),
                feature=form_number(row["feature"], int, f"row {i + 1}: feature"),
                mode=row["mode"] or "add",
                value=form_number(row["value"] if str(row["value"]).strip() else "0", float, f"row {i + 1}: value"),
                heads=parse_ints(row["heads"], "heads"), positions=parse_ints(row["positions"], "positions")))
        return P.SteerRequest(model=model, text=self.text, max_new_tokens=self.max_new_tokens,
                              temperature=self.temperature, seed=self.seed, top_logprobs=5,
                              interventions=interventions)


def draft_of(body: P.SteerRequest) -> dict:
    """A request as the form shows it (heads and positions as typed text)."""
    return {**body.model_dump(), "interventions": [
        {**i.model_dump(), "heads": ", ".join(map(str, i.heads or [])),
         "positions": ", ".join(map(str, i.positions or []))} for i in body.interventions]}


async def steer_and_save(*, deployment: Deployment, session: Session, body: P.SteerRequest,
                         save: bool) -> P.SteerResponse:
    """Run default and steered generation on the model's workers; saved (permalink set) when `save`."""
    model, client = await deployment.client(body.model, body.set)
    body = body.model_copy(update={"model": model.name})
    out = await client.steer(body)
    if not save:
        return out.model_copy(update={"permalink": None})
    saved = results.save(session, kind="steering", model_slug=model.name,
                         payload={"request": body.model_dump(), "result": out.model_dump(exclude={"permalink"})})
    return out.model_copy(update={"permalink": f"/s/{saved.id}"})


def saved_steering(*, session: Session, result_id: str) -> tuple[str, P.SteerRequest, dict]:
    """(model, request, result) of a saved steering result."""
    saved = results.load(session, result_id=result_id, kind="steering")
    if saved is None:
        raise NotFound(f"there is no saved steering result {result_id!r}")
    request = saved.payload["request"]
    return saved.model_slug, P.SteerRequest.model_validate({**request, "model": request.get("model")}), \
        saved.payload["result"]


def explain_rows(*, session: Session, model_slug: str, rows: list[dict]) -> None:
    """Each intervention row naming a layer and feature gets its best explanation (row["explanation"])."""
    wanted: dict[int, set[int]] = {}
    for row in rows:
        if str(row.get("layer", "")).isdigit() and str(row.get("feature", "")).isdigit():
            wanted.setdefault(int(row["layer"]), set()).add(int(row["feature"]))
    texts: dict[tuple[int, int], str] = {}
    for layer, features in wanted.items():
        sae = session.scalars(select(SAERecord).join(ModelRecord).where(
            ModelRecord.slug == model_slug, SAERecord.layer == layer).order_by(SAERecord.id)).first()
        if sae is not None:
            texts |= {(layer, f): t for f, t in explanations.best_text(session, sae=sae, features=features).items()}
    for row in rows:
        key = (row.get("layer"), row.get("feature"))
        if str(key[0]).isdigit() and str(key[1]).isdigit():
            row["explanation"] = texts.get((int(key[0]), int(key[1])))
