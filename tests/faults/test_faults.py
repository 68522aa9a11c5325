"""Faults, each with real processes over loopback: the inference worker killed mid-request, PostgreSQL restarted
while the web app serves, a dashboard build killed (SIGKILL) in its corpus pass and again while writing. Each
prints one JSON line of what it measured (run with -s to read them)."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from app.config import DEMO_DIR
from app.jobs.dashboards import register
from app.store import keys
from app.store.dashboards import find_sae, read_dashboard
from app.store.db import make_engine, make_sessionmaker, transaction, upgrade
from app.store.models import DashboardBuild, FeatureRecord
from tests.processes import PrivatePostgres, free_port, start_saex, stop, wait_http

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DEMO_DIR / "model" / "model.safetensors").exists(), reason="no demo model")]
PROMPT = "The Python standard library contains many modules, and each module has its own documentation. "


def test_worker_killed_mid_request_then_back(tmp_path):
    wport, port = free_port(), free_port()
    worker_args = ["worker", "--port", str(wport), "--threads", "1", "--queue-size", "8"]
    worker = start_saex(worker_args, tmp_path / "worker.log")
    web = start_saex(["serve", "--port", str(port), "--worker-url", f"http://127.0.0.1:{wport}"], tmp_path / "web.log",
                     env={"DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}", "SAEX_DATA_DIR": str(tmp_path)})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"http://127.0.0.1:{wport}/health", 60, worker)
        wait_http(base + "/health", 60, web)
        c = httpx.Client(base_url=base, timeout=30)
        assert c.post("/api/v1/analyze", json={"text": PROMPT}).status_code == 200
        def long_request(_):  # seconds of work each (steering with a KV cache is over in a fraction of one)
            t0 = time.monotonic()
            r = httpx.post(base + "/api/v1/circuits/discover", json={"task": "induction"}, timeout=60)
            return r, time.monotonic() - t0

        with ThreadPoolExecutor(2) as pool:  # one computing, one queued behind it (a caller may have 2 at a time)
            futures = [pool.submit(long_request, i) for i in range(2)]
            time.sleep(0.6)
            assert not any(f.done() for f in futures), "the requests ended before the worker was killed"
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            t_killed = time.monotonic()
            in_flight = [f.result(timeout=30) for f in futures]
        answered_within = max(time.monotonic() - t_killed, 0.0)
        for r, _ in in_flight:
            assert r.status_code == 503 and r.headers["Retry-After"].isdigit(), (r.status_code, r.text)
            assert "no inference worker is reachable" in r.json()["detail"]

        t0 = time.monotonic()
        down = c.post("/api/v1/analyze", json={"text": PROMPT})
        down_s = time.monotonic() - t0
        assert down.status_code == 503 and "restarting" in down.json()["detail"] and down_s < 2
        page = c.get("/", params={"text": PROMPT})
        assert page.status_code == 503 and "inference worker is unavailable" in page.text
        assert c.get("/ready").status_code == 503

        t_restart = time.monotonic()
        worker = start_saex(worker_args, tmp_path / "worker.log")
        worker_start_s = wait_http(f"http://127.0.0.1:{wport}/health", 60, worker)
        t_up = time.monotonic()
        back = c.post("/api/v1/analyze", json={"text": PROMPT})
        recovered_s = time.monotonic() - t_up
        assert back.status_code == 200, back.text  # the very first request after the worker is back
        assert c.get("/ready").status_code == 200 and web.poll() is None  # the web app never restarted
        print(json.dumps({"fault": "worker killed", "in_flight": len(in_flight), "in_flight_503": len(in_flight),
                          "answered_within_s": round(answered_within, 3), "while_down_503_s": round(down_s, 3),
                          "worker_restart_s": round(worker_start_s, 2),
                          "web_recovered_after_worker_up_s": round(recovered_s, 3),
                          "total_outage_s": round(time.monotonic() - t_restart, 2)}))
    finally:
        stop(worker)
        stop(web)


def test_postgres_restarted_while_serving(tmp_path, tiny_engines):
    pg = PrivatePostgres()
    pg.start()
    port = free_port()
    web = None
    try:
        upgrade(pg.url)
        db = make_engine(pg.url)
        with transaction(make_sessionmaker(db)) as s:
            register(s, tiny_engines["standard"], "demo")
            key, _ = keys.create_key(s, name="alice")
        web = start_saex(["serve", "--port", str(port), "--worker-url", "http://127.0.0.1:9"], tmp_path / "web.log",
                         env={"DATABASE_URL": pg.url, "SAEX_DATA_DIR": str(tmp_path)})
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/health", 60, web)
        c = httpx.Client(base_url=base, timeout=10, headers={"X-API-Key": key})
        url = "/api/v1/saes/L0/features/3/explanations"
        written = []
        outcomes: dict[str, int] = {}
        stop_flag = threading.Event()

        def traffic() -> None:  # a read and a write, over and over, throughout
            i = 0
            while not stop_flag.is_set():
                i += 1
                for method, body in (("GET", None), ("POST", {"text": f"note {i}"})):
                    try:
                        r = c.request(method, url, json=body)
                    except httpx.TransportError as exc:  # a dropped connection is an outcome to report, not a crash
                        outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
                        continue
                    key_ = str(r.status_code)
                    if r.status_code == 503:
                        assert r.headers["Retry-After"].isdigit() and "database is unavailable" in r.json()["detail"]
                    outcomes[key_] = outcomes.get(key_, 0) + 1
                    if r.status_code == 201:
                        written.append(r.json()["text"])
                time.sleep(0.01)

        runner = threading.Thread(target=traffic)
        runner.start()
        time.sleep(1.0)
        pg.stop()
        t_down = time.monotonic()
        time.sleep(1.5)
        down_outcomes = dict(outcomes)
        ready = c.get("/ready")
        page = c.get("/demo/L0/3")
        pg.start()
        t_up = time.monotonic()
        recovered_s = None
        while time.monotonic() - t_up < 30:
            if c.get(url).status_code == 200:
                recovered_s = time.monotonic() - t_up
                break
            time.sleep(0.02)
        time.sleep(1.0)
        stop_flag.set()
        runner.join(30)
        assert not runner.is_alive()
        assert ready.status_code == 503 and ready.json()["database"] == "unavailable"
        assert page.status_code == 503 and "database is unavailable" in page.text
        assert recovered_s is not None and web.poll() is None  # back without restarting the web app
        assert set(outcomes) <= {"200", "201", "503"}, outcomes  # failing cleanly: never a 500, never a hang
        assert outcomes.get("503", 0) > 0 and outcomes.get("201", 0) > down_outcomes.get("201", 0)
        stored = [x["text"] for x in c.get(url).json()]
        assert sorted(stored) == sorted(written)  # every acknowledged write is there, no refused one is
        print(json.dumps({"fault": "postgres restarted", "outcomes": outcomes, "down_s": round(t_up - t_down, 2),
                          "recovered_after_postgres_up_s": round(recovered_s, 3)}))
        db.dispose()
    finally:
        if web is not None:
            stop(web)
        pg.remove()


def _features(url: str, layer: int) -> tuple[int, list[str]]:
    db = make_engine(url)
    with make_sessionmaker(db)() as s:
        sae = find_sae(s, sae_slug=f"L{layer}", model_slug="demo")
        n = s.scalar(select(func.count()).select_from(FeatureRecord).where(FeatureRecord.sae_id == sae.id)) if sae \
            else 0
        statuses = list(s.scalars(select(DashboardBuild.status)))
    db.dispose()
    return n or 0, statuses


def test_dashboard_build_killed_then_resumed(tmp_path):
    layer, d_sae = 1, 2048
    cmd = ["dashboards", "build", "--tokens", "32768", "--layers", str(layer), "--batch-size", "8",
           "--checkpoint-seconds", "1", "--no-explain"]  # dashboards alone: baseline explanations come after

    def env(name: str) -> dict:
        return {"DATABASE_URL": f"sqlite:///{tmp_path / name}.db", "SAEX_DATA_DIR": str(tmp_path / name)}

    reference = start_saex(cmd, tmp_path / "ref.log", env("ref"))
    assert reference.wait(300) == 0

    # 1. killed in the corpus pass, once a checkpoint exists and nothing is written yet
    run = start_saex(cmd, tmp_path / "run.log", env("run"))
    checkpoints = tmp_path / "run" / "builds"
    while not any(checkpoints.glob("*.safetensors")):
        assert run.poll() is None, "the build ended before it could be killed"
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait(10)
    assert _features(env("run")["DATABASE_URL"], layer)[0] == 0

    # 2. resumed from the checkpoint, killed again while writing features
    run = start_saex(cmd, tmp_path / "run.log", env("run"))
    while _features(env("run")["DATABASE_URL"], layer)[0] == 0:
        assert run.poll() is None, "the build ended before it could be killed"
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait(10)
    n_killed, statuses = _features(env("run")["DATABASE_URL"], layer)
    assert 0 < n_killed < d_sae and n_killed % 256 == 0, n_killed  # whole transactions of 256 features only
    assert "done" not in statuses

    # what a reader sees now: whole dashboards equal to the finished build's, and a clear 404 for the rest
    ref_db, run_db = make_engine(env("ref")["DATABASE_URL"]), make_engine(env("run")["DATABASE_URL"])
    with make_sessionmaker(ref_db)() as rs, make_sessionmaker(run_db)() as s:
        sae, ref_sae = find_sae(s, sae_slug=f"L{layer}", model_slug="demo"), find_sae(rs, sae_slug=f"L{layer}")
        partial = {f: read_dashboard(s, sae=sae, feature=f) for f in range(d_sae)}
        visible = [f for f, d in partial.items() if d is not None]
        assert len(visible) == n_killed
        for f in visible:
            assert partial[f] == read_dashboard(rs, sae=ref_sae, feature=f), f

    # 3. run again: finishes the rest, same result as the uninterrupted build
    run = start_saex(cmd, tmp_path / "run.log", env("run"))
    assert run.wait(300) == 0
    summary = json.loads((tmp_path / "run.log").read_text().strip().splitlines()[-1])
    assert summary["features_written"] == d_sae - n_killed
    with make_sessionmaker(ref_db)() as rs, make_sessionmaker(run_db)() as s:
        sae, ref_sae = find_sae(s, sae_slug=f"L{layer}", model_slug="demo"), find_sae(rs, sae_slug=f"L{layer}")
        for f in range(d_sae):
            assert read_dashboard(s, sae=sae, feature=f) == read_dashboard(rs, sae=ref_sae, feature=f), f
    assert _features(env("run")["DATABASE_URL"], layer)[1][-1] == "done"
    ref_db.dispose()
    run_db.dispose()
    print(json.dumps({"fault": "dashboard build killed", "killed_with_features_written": n_killed,
                      "resumed_features_written": summary["features_written"]}))
