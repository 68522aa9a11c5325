"""Issue 17, finding 4, over HTTP: another key's explanation cannot be rewritten or deleted (403) but by an admin key;
automatic explanations only by admins; empty or whitespace-only text is refused (422); edits are kept in the history.
On SQLite and Postgres."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.store import explanations
from app.store.db import transaction
from app.store.models import SAERecord
from app.web.services.features import sae_or_404
from tests.web import test_hardening_sessions
from tests.web.forms import sign_in

lab = test_hardening_sessions.lab  # the fixture: a model, keys (one an admin) and web apps on each database


def _url(lab, feature=6):
    return f"/api/v1/models/{lab['slug']}/saes/L0/features/{feature}/explanations"


def test_another_keys_explanation_needs_an_admin(lab):
    c = TestClient(lab["app"]())
    made = c.post(_url(lab), json={"text": "alice says: fires on commas"}, headers={"X-API-Key": lab["alice"]})
    assert made.status_code == 201, made.text
    one = f"{_url(lab)}/{made.json()['id']}"
    bob = {"X-API-Key": lab["bob"]}
    r = c.patch(one, json={"text": "bob rewrote it"}, headers=bob)
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert c.delete(one, headers=bob).status_code == 403
    assert c.patch(one, json={"text": "alice: commas and periods"}, headers={"X-API-Key": lab["alice"]}).status_code \
        == 200
    r = c.patch(one, json={"text": "moderated"}, headers={"X-API-Key": lab["admin"]})
    assert r.status_code == 200 and r.json()["text"] == "moderated"
    with transaction(lab["sessions"]) as s:
        h = explanations.history(s, explanation_id=made.json()["id"])
        assert [(e.old_text, e.editor) for e in h] == [("alice says: fires on commas", "alice"),
                                                      ("alice: commas and periods", "root")]
    assert c.delete(one, headers={"X-API-Key": lab["admin"]}).status_code == 204


def test_the_page_form_checks_ownership_too(lab):
    c = TestClient(lab["app"]())
    made = c.post(_url(lab, 7), json={"text": "alice's own"}, headers={"X-API-Key": lab["alice"]}).json()
    token = sign_in(c, lab["bob"])
    url = f"/{lab['slug']}/L0/7/explanations/{made['id']}"
    assert c.post(url, data={"action": "edit", "text": "bob's now", "csrf_token": token}).status_code == 403
    assert c.post(url, data={"action": "delete", "csrf_token": token}).status_code == 403


def test_automatic_explanations_only_admins_may_change(lab):
    with transaction(lab["sessions"]) as s:
        sae = s.get(SAERecord, sae_or_404(s, sae_id="L0", model_slug=lab["slug"]).id)
        auto = explanations.create(s, sae=sae, feature=8, text="baseline: fires on 'the'", author="baseline",
                                   source="automatic", method="baseline")
        auto_id = auto.id
    c = TestClient(lab["app"]())
    one = f"{_url(lab, 8)}/{auto_id}"
    assert c.patch(one, json={"text": "mine now"}, headers={"X-API-Key": lab["alice"]}).status_code == 403
    assert c.delete(one, headers={"X-API-Key": lab["alice"]}).status_code == 403
    assert c.patch(one, json={"text": "fixed by an admin"}, headers={"X-API-Key": lab["admin"]}).status_code == 200


def test_empty_or_whitespace_text_is_refused(lab):
    c = TestClient(lab["app"]())
    key = {"X-API-Key": lab["alice"]}
    for text in (" ", "\n\t  ", "\u3000"):
        r = c.post(_url(lab, 9), json={"text": text}, headers=key)
        assert r.status_code == 422, (text, r.text)
    made = c.post(_url(lab, 9), json={"text": "real"}, headers=key).json()
    assert c.patch(f"{_url(lab, 9)}/{made['id']}", json={"text": "   "}, headers=key).status_code == 422
    assert [x["text"] for x in c.get(_url(lab, 9)).json()] == ["real"]
