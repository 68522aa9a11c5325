"""A dashboard build seen from the pages while it runs: a status fragment that polls itself during the build and
stops polling once it has ended, a feature page that says its dashboard is not built yet (and the API's 404 that
says a build is running), and a failed build's error on the page while the server keeps answering."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.config import Settings
from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model
from app.jobs import dashboards as job
from app.jobs.progress import RunRecorder
from app.store.db import make_engine, make_sessionmaker, transaction, upgrade
from app.store.models import BuildRun, utcnow
from app.web.app import create_web_app
from app.worker.service import create_worker_app

HX = {"HX-Request": "true"}
POLLS = 'hx-trigger="every 2s"'


@pytest.fixture(scope="module")
def engine(tiny_model_dir, sae_dirs) -> Engine:
    model = load_model(str(tiny_model_dir))
    return Engine(model, attach_saes(model, [str(p) for p in sae_dirs["standard"]]), "demo")


@pytest.fixture
def site(engine, tmp_path):
    """A web app on the tiny model whose SAEs are registered in a fresh store but have no dashboards yet."""
    url = f"sqlite:///{tmp_path / 'b.db'}"
    upgrade(url)
    db = make_engine(url)
    factory = make_sessionmaker(db)
    with transaction(factory) as s:
        job.register(s, engine, "demo")
    with TestClient(create_web_app(Settings(database_url=url), create_worker_app(engine))) as c:
        yield c, engine, factory
    db.dispose()


def corpus_for(engine: Engine) -> torch.Tensor:
    ids = torch.randint(1, engine.model.cfg.d_vocab, (6, 40), generator=torch.Generator().manual_seed(3))
    ids[:, 0] = 0
    return ids


def status(c: TestClient, return_to: str = "") -> str:
    """The status fragment as the polling element fetches it."""
    r = c.get("/demo/build", params={"return_to": return_to} if return_to else None, headers=HX)
    assert r.status_code == 200 and "<html" not in r.text
    return r.text


def test_a_feature_page_before_any_build(site):
    c, _, _ = site
    page = c.get("/demo/L0/3")
    assert page.status_code == 200 and "no dashboard was built for feature 3 of SAE L0" in page.text
    assert 'id="build-status"' not in page.text  # no build ever ran: nothing to poll
    r = c.get("/api/v1/saes/L0/features/3")
    assert r.status_code == 404 and "saex dashboards build --layers 0" in r.json()["detail"]
    assert "No dashboard build has run for demo" in c.get("/demo/build").text


def test_progress_fragment_during_a_build_and_after_it(site):
    c, engine, factory = site
    run = RunRecorder.start(factory, model_slug="demo", every_s=0.0)
    seen: list[str] = []

    def on_progress(event: dict) -> None:  # what the pages say at each report of the real build
        run(event)
        if event["phase"] == "pass" and not seen:
            seen.append(status(c, "/demo/L1/7"))
            seen.append(c.get("/demo/L1/7").text)
            seen.append(c.get("/api/v1/saes/L1/features/7").json()["detail"])
            seen.append(c.get("/").text)
        if event["phase"] == "writing" and event["layer"] == 1 and event["done"] == 0:
            seen.append(status(c))

    assert POLLS in status(c) and "Checking feature dashboards" in status(c)  # started, not yet reporting
    summary = job.build(engine, factory, corpus_for(engine), job.BuildParams(corpus="r", tokens=240), batch_size=3,
                        progress=False, on_progress=on_progress)
    fragment, feature_page, detail, explorer, writing = seen
    assert POLLS in fragment and 'hx-get="/demo/build?return_to=/demo/L1/7"' in fragment
    assert re.search(r'<progress max="240" value="\d+"', fragment) and "corpus pass, " in fragment
    assert POLLS in feature_page and "not built yet" in feature_page and 'role="alert"' not in feature_page
    assert "is not built yet: a dashboard build is running (corpus pass" in detail
    assert POLLS in explorer and "Prompt analysis works meanwhile" in explorer
    assert POLLS in writing and "writing layer 1, 0 of 128 features" in writing

    run.finish(summary)
    done = status(c, "/demo/L1/7")
    assert POLLS not in done and "hx-get" not in done  # ended: the element polls no more
    assert "Dashboards built:</strong> 256 features" in done and '<a href="/demo/L1/7">' in done
    page = c.get("/demo/L1/7")
    assert 'id="build-status"' not in page.text and "Top activations" in page.text
    assert 'id="build-status"' not in c.get("/").text
    assert c.get("/demo/build", params={"return_to": "//elsewhere.example"}).status_code == 422


def test_a_failed_build_is_shown_with_its_error(site, tmp_path):
    c, engine, factory = site
    run = RunRecorder.start(factory, model_slug="demo")
    (tmp_path / "builds").write_text("a file where the build wants its checkpoint folder")
    with pytest.raises(OSError) as failure:  # a real failure inside the build: its checkpoint cannot be saved
        job.build(engine, factory, corpus_for(engine), job.BuildParams(corpus="r", tokens=240), batch_size=3,
                  progress=False, work_dir=tmp_path / "builds", on_progress=run)
    run.fail(failure.value)
    error = type(failure.value).__name__
    for text in (status(c), c.get("/").text, c.get("/demo/L0/5").text):
        assert "The dashboard build failed" in text and f"{error}: " in text and POLLS not in text
    r = c.get("/api/v1/saes/L0/features/5")
    assert r.status_code == 404 and f"the last dashboard build failed ({error}: " in r.json()["detail"]
    assert c.get("/health").status_code == 200


def test_an_error_message_is_text_not_markup(site):
    c, _, factory = site
    RunRecorder.start(factory, model_slug="demo").fail("RuntimeError: out of <memory>")
    page = c.get("/demo/L0/9")
    assert page.status_code == 200 and "RuntimeError: out of &lt;memory&gt;" in page.text


def test_a_silent_running_build_is_shown_as_stalled(site):
    c, _, factory = site
    run = RunRecorder.start(factory, model_slug="demo")
    run({"phase": "pass", "layer": None, "done": 40, "total": 240})
    with transaction(factory) as s:  # its process was killed an hour ago without a word
        s.execute(update(BuildRun).where(BuildRun.id == run.run_id).values(updated_at=utcnow() - timedelta(hours=1)))
    text = status(c)
    assert "stopped reporting" in text and "1 h 0 min ago" in text and POLLS not in text
