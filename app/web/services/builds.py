"""Dashboard builds as pages show them: the latest run of a model's build, its phase and progress, or why it
failed; knows nothing of HTTP or torch."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.store.build_runs import as_utc, latest_run, run_seconds
from app.store.models import utcnow

STALLED_S = 600  # a running build that has reported nothing for this long has died without saying so (killed)


def build_status(session: Session, *, model_slug: str) -> dict | None:
    """The latest dashboard build of this model as pages show it, or None if none ever ran. state: running, done,
    failed, or stalled (running, but silent for STALLED_S: its process was killed)."""
    run = latest_run(session, model_slug=model_slug)
    if run is None:
        return None
    idle = (utcnow() - as_utc(run.updated_at)).total_seconds()
    state = run.status
    if state == "running" and idle > STALLED_S:
        state = "stalled"
    percent = round(100 * run.done / run.total) if run.total else 0
    if run.phase == "pass":
        summary = f"corpus pass, {run.done:,} of {run.total:,} tokens, {percent}%"
    elif run.phase == "writing":
        summary = f"writing layer {run.layer}, {run.done:,} of {run.total:,} features"
    else:
        summary = "loading the model and the corpus"
    return {"id": run.id, "state": state, "phase": run.phase, "layer": run.layer, "done": run.done,
            "total": run.total, "percent": percent, "summary": summary, "features_written": run.features_written,
            "error": run.error, "seconds": run_seconds(run), "idle_seconds": idle}
