"""A dashboard build's progress, recorded in the store as a dashboard run for the web app to show: the callback that
`app.jobs.dashboards.build(on_progress=...)` calls, and the run's end (done, or failed with why). Knows nothing of
how the statistics are computed, nor of HTTP."""

from __future__ import annotations

import os
import time

from sqlalchemy.orm import Session, sessionmaker

from app.store.build_runs import fail_run, finish_run, record_progress, start_run
from app.store.db import transaction


def error_message(exc: BaseException) -> str:
    """What a page says about a build that stopped with exc (the traceback is for the log)."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted; running the build again resumes it"
    if isinstance(exc, SystemExit) and isinstance(exc.code, str):
        return exc.code
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class RunRecorder:
    """Records one run's progress: every report that starts a phase or a layer, and the others at most every
    `every_s` seconds (the corpus pass reports every batch). parent_pid: the `saex serve` that started this build;
    the build stops at its next report once that process is gone, so that a killed server leaves no build behind."""

    def __init__(self, factory: sessionmaker[Session], run_id: int, *, every_s: float = 1.0,
                 parent_pid: int | None = None) -> None:
        self.factory, self.run_id, self.every_s, self.parent_pid = factory, run_id, every_s, parent_pid
        self._last: tuple | None = None  # (phase, layer) of the last report recorded
        self._at = 0.0

    @classmethod
    def start(cls, factory: sessionmaker[Session], *, model_slug: str, **kwargs) -> RunRecorder:
        with transaction(factory) as session:
            run_id = start_run(session, model_slug=model_slug).id
        return cls(factory, run_id, **kwargs)

    def __call__(self, event: dict) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            raise SystemExit("the server that started this build has stopped; the next `saex serve` resumes it")
        key, now = (event["phase"], event.get("layer")), time.monotonic()
        if key == self._last and now - self._at < self.every_s and event["done"] < event["total"]:
            return
        self._last, self._at = key, now
        with transaction(self.factory) as session:
            record_progress(session, run_id=self.run_id, phase=event["phase"], layer=event.get("layer"),
                            done=int(event["done"]), total=int(event["total"]))

    def finish(self, summary: dict) -> None:
        with transaction(self.factory) as session:
            finish_run(session, run_id=self.run_id, features_written=summary["features_written"])

    def fail(self, error: BaseException | str) -> None:
        with transaction(self.factory) as session:
            fail_run(session, run_id=self.run_id, error=error if isinstance(error, str) else error_message(error))
