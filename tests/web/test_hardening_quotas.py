"""Issue 17, finding 7: saved results (permalinks) have quotas: a key's and an address's saves in 24 hours are
counted (429 with Retry-After past SAEX_SAVES_PER_DAY_PER_KEY / _PER_ADDRESS, checked before a steer computes), and a
result larger than SAEX_SAVED_RESULT_MAX_BYTES is refused (413); nothing is stored when refused. SQLite and Postgres."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from app.store import results
from app.store.models import SavedResult, utcnow
from tests.web import test_hardening_sessions
from tests.web.forms import csrf_token

lab = test_hardening_sessions.lab
_addresses = itertools.count(1)


def _client(app) -> TestClient:
    """A client from an address of its own (each test's quota starts empty)."""
    return TestClient(app, client=(f"10.77.0.{next(_addresses)}", 5000))


def _saved(lab) -> int:
    with lab["sessions"]() as s:
        return s.scalar(select(func.count()).select_from(SavedResult))


def test_the_store_counts_an_owners_saves_in_the_last_day(session):
    limits = results.SaveLimits(owner="ip:abc", per_day=2, max_bytes=10_000)
    first = results.save(session, kind="analysis", model_slug="m", payload={"text": "a"}, limits=limits)
    results.save(session, kind="analysis", model_slug="m", payload={"text": "b"}, limits=limits)
    assert first.owner == "ip:abc" and first.size_bytes == len('{"text":"a"}')
    with pytest.raises(results.QuotaExceeded) as refused:
        results.save(session, kind="analysis", model_slug="m", payload={"text": "c"}, limits=limits)
    assert refused.value.status == 429 and 86_000 < refused.value.retry_after <= 86_400
    # another owner has a quota of its own; no owner (the CLI, old callers) has none
    results.save(session, kind="analysis", model_slug="m", payload={"text": "c"},
                 limits=results.SaveLimits(owner="key:1", per_day=2))
    results.save(session, kind="analysis", model_slug="m", payload={"text": "c"})
    # saves older than a day no longer count
    session.execute(update(SavedResult).where(SavedResult.id == first.id)
                    .values(created_at=utcnow() - timedelta(hours=25)))
    results.save(session, kind="analysis", model_slug="m", payload={"text": "d"}, limits=limits)


def test_the_store_refuses_an_over_size_result(session):
    limits = results.SaveLimits(owner="ip:big", per_day=5, max_bytes=1024)
    with pytest.raises(results.ResultTooLarge) as refused:
        results.save(session, kind="steering", model_slug="m", payload={"text": "x" * 2000}, limits=limits)
    assert refused.value.status == 413 and "1,024" in refused.value.detail
    assert session.scalar(select(func.count()).where(SavedResult.owner == "ip:big")) == 0


def test_api_steering_saves_up_to_the_address_quota(lab):
    c = _client(lab["app"](saves_per_day_per_address=2))
    body = {"model": lab["slug"], "text": "The quick brown fox", "max_new_tokens": 2}
    links = [c.post("/api/v1/steer", json=body).json()["permalink"] for _ in range(2)]
    assert all(link and link.startswith("/s/") for link in links)
    before = _saved(lab)
    r = c.post("/api/v1/steer", json=body)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 86_000
    assert "2 results a day" in r.json()["detail"] and _saved(lab) == before
    # unsaved runs are no save: with saving for keys only, an anonymous steer still answers
    open_c = _client(lab["app"](saves_per_day_per_address=0, saves_need_sign_in=True))
    r = open_c.post("/api/v1/steer", json=body)
    assert r.status_code == 200 and r.json()["permalink"] is None


def test_a_key_has_its_own_quota(lab):
    app = lab["app"](saves_per_day_per_address=0, saves_per_day_per_key=1)
    c = _client(app)
    body = {"model": lab["slug"], "text": "fox", "max_new_tokens": 1}
    assert c.post("/api/v1/steer", json=body).status_code == 429  # the address may save none
    key = {"X-API-Key": lab["bob"]}
    assert c.post("/api/v1/steer", json=body, headers=key).json()["permalink"].startswith("/s/")
    assert c.post("/api/v1/steer", json=body, headers=key).status_code == 429
    with lab["sessions"]() as s:
        owners = set(s.scalars(select(SavedResult.owner).where(SavedResult.owner.like("key:%"))))
    assert owners and all(o.split(":")[1].isdigit() for o in owners)


def test_over_size_results_are_refused(lab):
    c = _client(lab["app"](saved_result_max_bytes=1024))
    r = c.post("/api/v1/steer", json={"model": lab["slug"], "text": "The quick brown fox jumps", "max_new_tokens": 8})
    assert r.status_code == 413 and "largest that may be saved" in r.json()["detail"]
    page = c.post("/p", data={"csrf_token": csrf_token(c), "text": "fox " * 400, "model": lab["slug"]},
                  follow_redirects=False)
    assert page.status_code == 413 and "not saved" in page.text


def test_saved_analyses_and_the_steering_form_keep_the_quota(lab):
    c = _client(lab["app"](saves_per_day_per_address=1))
    token = csrf_token(c)
    first = c.post("/p", data={"csrf_token": token, "text": "fox", "model": lab["slug"]}, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"].startswith("/p/")
    again = c.post("/p", data={"csrf_token": token, "text": "dog", "model": lab["slug"]}, follow_redirects=False)
    assert again.status_code == 429 and again.headers["Retry-After"].isdigit() and "a day" in again.text
    form = c.post(f"/{lab['slug']}/steer", data={"csrf_token": token, "text": "fox", "max_new_tokens": 2},
                  follow_redirects=False)
    assert form.status_code == 429 and form.headers["Retry-After"].isdigit()
