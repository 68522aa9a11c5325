"""The dashboard build that `saex serve` runs behind the web app: `saex dashboards build` as a child process, at low
CPU priority on one torch thread, recording its progress in the store (a dashboard run) for the pages to show.
This module starts it, records why if it dies, and stops it with the server; it knows nothing of torch or HTTP.

A child process rather than a thread: the build keeps its own model copy (an analysis's hooks and the build's never
meet), holds no lock the web app's threads wait for, can be given a lower priority, and dies alone if it fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.store.build_runs import fail_run, run_seconds
from app.store.db import transaction
from app.store.models import BuildRun

NICE = 10  # the build yields the CPU to the server's own requests


def build_command(run_id: int, *, tokens: int, model_slug: str, model: str | None = None,
                  saes: list[str] | None = None, config: Path | None = None, device: str | None = None,
                  sae_set: str | None = None) -> list[str]:
    """The child's command line: the same model and SAEs as the server, recording into run `run_id`."""
    argv = [sys.executable, "-m", "app.cli", "dashboards", "build", "--corpus", "stdlib", "--tokens", str(tokens),
            "--model-slug", model_slug, "--threads", "1", "--nice", str(NICE), "--quiet", "--run-id", str(run_id),
            "--parent-pid", str(os.getpid())]
    for flag, value in (("--model", model), ("--config", config), ("--device", device), ("--sae-set", sae_set)):
        if value is not None:
            argv += [flag, str(value)]
    for sae in saes or []:
        argv += ["--sae", sae]
    return argv


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class BackgroundBuild:
    """A running child build. A watcher thread waits for it; if it ends without having recorded its own end (killed,
    out of memory, a crash below Python), the run is marked failed with the exit status."""

    def __init__(self, factory: sessionmaker[Session], run_id: int, argv: list[str]) -> None:
        self.factory, self.run_id = factory, run_id
        self._stopping = False
        # its own session: Ctrl-C in the terminal reaches the server, which then stops the build (stop below)
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
        self._watcher = threading.Thread(target=self._watch, name="dashboards-build-watcher", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        code = self.process.wait()
        if self._stopping:
            error = "stopped with the server; the next `saex serve` resumes it"
        else:
            error = f"the build process {exit_reason(code)}; the server's log may say more"
        try:
            with transaction(self.factory) as session:
                if code != 0:
                    fail_run(session, run_id=self.run_id, error=error, only_if_running=True)
                run = session.get(BuildRun, self.run_id)
                status, written, error, seconds = run.status, run.features_written, run.error, run_seconds(run)
        except Exception as exc:  # the database is down, say: the terminal is all that is left
            print(f"saex serve: the dashboard build {exit_reason(code)}; its end could not be recorded ({exc})",
                  file=sys.stderr)
            return
        if self._stopping:
            return
        if status == "done" and written:  # the terminal hears of it too, not only the pages
            print(f"saex serve: built {written} feature dashboards in {seconds:.0f} s", file=sys.stderr)
        elif status == "failed":
            print(f"saex serve: the dashboard build failed: {error}", file=sys.stderr)

    def stop(self, timeout: float = 10.0) -> None:
        """End the build (it resumes from its checkpoint next time) and wait until its run says so."""
        self._stopping = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._watcher.join(timeout)
