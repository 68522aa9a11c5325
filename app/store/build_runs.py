"""Runs of the dashboard build job in the store: started, told their progress, finished or failed, and the latest
one of a model read back for the web app; knows nothing of torch, HTTP or how a build computes."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.models import BuildRun, utcnow

MAX_ERROR = 2000  # characters of an error message kept: the page shows it, a traceback stays in the log


def start_run(session: Session, *, model_slug: str) -> BuildRun:
    run = BuildRun(model_slug=model_slug, status="running", phase="starting", done=0, total=0)
    session.add(run)
    session.flush()
    return run


def record_progress(session: Session, *, run_id: int, phase: str, layer: int | None, done: int, total: int) -> None:
    run = session.get(BuildRun, run_id)
    if run is not None and run.status == "running":  # a run marked failed (its process died) stays failed
        run.phase, run.layer, run.done, run.total, run.updated_at = phase, layer, done, total, utcnow()


def finish_run(session: Session, *, run_id: int, features_written: int) -> None:
    run = session.get(BuildRun, run_id)
    run.status, run.phase, run.layer, run.features_written = "done", "done", None, features_written
    run.updated_at = run.finished_at = utcnow()


def fail_run(session: Session, *, run_id: int, error: str, only_if_running: bool = False) -> bool:
    """Mark the run failed with this message; with only_if_running, leave a run that already ended as it is.
    True if it was marked."""
    run = session.get(BuildRun, run_id)
    if run is None or (only_if_running and run.status != "running"):
        return False
    run.status, run.error = "failed", error[:MAX_ERROR]
    run.updated_at = run.finished_at = utcnow()
    return True


def as_utc(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)  # SQLite gives back naive UTC times


def run_seconds(run: BuildRun) -> float:
    """How long the run took, or has taken so far."""
    return ((as_utc(run.finished_at) if run.finished_at else utcnow()) - as_utc(run.started_at)).total_seconds()


def latest_run(session: Session, *, model_slug: str) -> BuildRun | None:
    return session.scalars(select(BuildRun).where(BuildRun.model_slug == model_slug)
                           .order_by(BuildRun.id.desc()).limit(1)).first()
