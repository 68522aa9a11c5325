"""Real processes for the tests that need them (load and fault tests): `saex` commands on free loopback ports,
waited for until they answer, stopped or killed; a private PostgreSQL cluster that a test may stop and start."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_saex(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m app.cli ARGS` with its output in log (read it when a test fails)."""
    out = open(log, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    return subprocess.Popen([sys.executable, "-m", "app.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})


def wait_http(url: str, seconds: float = 60.0, proc: subprocess.Popen | None = None) -> float:
    """Seconds until url answers 200; fails if proc exits first or time runs out."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process behind {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {seconds} s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


class PrivatePostgres:
    """A throwaway PostgreSQL 15 cluster in a folder, on its own port, that a test may stop and start at will
    (the shared server on 5432 is never touched). As root it runs as the `postgres` user, as initdb insists."""

    def __init__(self) -> None:
        self.initdb = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))),
                                                       None)
        if self.initdb is None:
            raise RuntimeError("PostgreSQL's initdb is not installed (Debian: postgresql)")
        self.pg_ctl = str(Path(self.initdb).with_name("pg_ctl"))
        # in /tmp itself: the postgres user cannot enter pytest's private folders
        self.folder, self.port = Path(tempfile.mkdtemp(prefix="saex-pg-")), free_port()
        self.data = self.folder / "pgdata"
        self.url = f"postgresql+psycopg://saex@127.0.0.1:{self.port}/postgres"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.folder, "postgres")
        self._run([self.initdb, "-D", str(self.data), "-A", "trust", "-U", "saex", "--no-sync"])

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run(self._as + cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.folder / "postgres.log"), "-w", "start", "-o",
                   f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"])

    def stop(self) -> None:
        self._run([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
