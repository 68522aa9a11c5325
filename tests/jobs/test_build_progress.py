"""A build's progress as the store records it (on Postgres and SQLite): the reports `build(on_progress=...)` makes,
a run recorder that keeps every phase and layer change, and the background build of `saex serve` whose run says
why when its process dies or is stopped with the server."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from app.jobs import dashboards as job
from app.jobs.background import BackgroundBuild, build_command
from app.jobs.progress import RunRecorder
from app.store.build_runs import latest_run, start_run
from app.store.db import make_sessionmaker, transaction


@pytest.fixture
def factory(db_engine):
    return make_sessionmaker(db_engine)


def test_build_reports_its_pass_and_each_layer_and_the_run_records_them(tiny_engines, factory, request):
    engine = tiny_engines["standard"]
    corpus = torch.randint(1, engine.model.cfg.d_vocab, (7, 40), generator=torch.Generator().manual_seed(2))
    corpus[:, 0] = 0
    slug = f"progress-{request.node.callspec.id}"
    run = RunRecorder.start(factory, model_slug=slug, every_s=3600)  # only phase changes and ends are recorded
    events, recorded = [], []

    def on_progress(event: dict) -> None:
        events.append(dict(event))
        run(event)
        with factory() as s:
            r = latest_run(s, model_slug=slug)
            recorded.append((r.phase, r.layer, r.done, r.total))

    summary = job.build(engine, factory, corpus, job.BuildParams(corpus="r", tokens=280), model_slug=slug,
                        batch_size=3, feature_batch=50, progress=False, on_progress=on_progress)
    run.finish(summary)
    passes = [e for e in events if e["phase"] == "pass"]
    assert [e["done"] for e in passes] == [120, 240, 280] and {e["total"] for e in passes} == {280}
    assert all(e["layer"] is None for e in passes)
    for layer in (0, 1):
        written = [e["done"] for e in events if e["phase"] == "writing" and e["layer"] == layer]
        assert written == [0, 50, 100, 128] and {e["total"] for e in events if e.get("layer") == layer} == {128}
    # throttled to once an hour, yet every phase or layer change and every end of one is in the store
    assert recorded[0] == ("pass", None, 120, 280) and recorded[2] == ("pass", None, 280, 280)
    assert ("writing", 0, 0, 128) in recorded and ("writing", 1, 128, 128) in recorded
    assert ("writing", 0, 50, 128) not in recorded
    with factory() as s:
        r = latest_run(s, model_slug=slug)
        assert (r.status, r.phase, r.features_written, r.error) == ("done", "done", 256, None)
        assert r.finished_at is not None


def test_a_build_whose_server_is_gone_stops_at_its_next_report(factory):
    run = RunRecorder.start(factory, model_slug="orphan", parent_pid=os.getpid())  # we are not our own parent
    with pytest.raises(SystemExit, match="the server that started this build has stopped"):
        run({"phase": "pass", "layer": None, "done": 1, "total": 2})


def start(factory, code: str) -> BackgroundBuild:
    with transaction(factory) as s:
        run_id = start_run(s, model_slug="background").id
    return BackgroundBuild(factory, run_id, [sys.executable, "-c", code])


def status_of(factory, build: BackgroundBuild) -> tuple[str, str | None]:
    from app.store.models import BuildRun

    with factory() as s:
        r = s.get(BuildRun, build.run_id)
        return r.status, r.error


def test_a_background_build_that_dies_is_marked_failed(factory):
    build = start(factory, "import sys; sys.exit(3)")
    build.process.wait(30)
    build._watcher.join(30)
    assert status_of(factory, build) == ("failed", "the build process exited with code 3; the server's log may say "
                                                   "more")


def test_a_background_build_stopped_with_the_server_says_it_resumes(factory):
    build = start(factory, "import time; time.sleep(60)")
    build.stop()
    assert build.process.returncode is not None
    assert status_of(factory, build) == ("failed", "stopped with the server; the next `saex serve` resumes it")


def test_a_background_build_that_recorded_its_own_end_is_left_as_it_is(factory):
    build = start(factory, "")  # exits 0, as a build does once it has recorded done (or its own failure)
    build.process.wait(30)
    build._watcher.join(30)
    assert status_of(factory, build) == ("running", None)  # nobody else writes it


def test_the_child_gets_the_servers_model_and_saes(tmp_path):
    argv = build_command(7, tokens=4096, model_slug="gpt2", model="gpt2", saes=["a:b", "/x/L5"],
                         config=tmp_path / "c.toml", device="cuda")
    assert argv[:5] == [sys.executable, "-m", "app.cli", "dashboards", "build"]
    flags = " ".join(argv[5:])
    for part in ("--tokens 4096", "--model-slug gpt2", "--model gpt2", "--sae a:b --sae /x/L5", "--device cuda",
                 f"--config {tmp_path / 'c.toml'}", "--run-id 7", f"--parent-pid {os.getpid()}", "--threads 1",
                 "--nice 10", "--quiet"):
        assert part in flags
