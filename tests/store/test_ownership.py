"""Issue 17, finding 4, in the store: an explanation belongs to the key that wrote it; only that key or an admin key
may change it; automatic ones (written with no key) only admins; every edit and deletion is kept with the old
text, who and when. On SQLite and Postgres."""

from __future__ import annotations

from app.store import explanations, keys
from app.store.dashboards import upsert_model, upsert_sae


def _sae(session):
    model = upsert_model(session, slug="own", name="own", source="x", config={"n_layers": 1})
    return upsert_sae(session, model=model, slug="L0", layer=0, hook_name="blocks.0.attn.hook_z", d_sae=16,
                      architecture="standard", source="x")


def test_only_the_writer_or_an_admin_may_change_an_explanation(session):
    sae = _sae(session)
    _, alice = keys.create_key(session, name="alice")
    _, bob = keys.create_key(session, name="bob")
    _, root = keys.create_key(session, name="root", admin=True)
    mine = explanations.create(session, sae=sae, feature=1, text="alice's", author="alice", key_id=alice.id)
    auto = explanations.create(session, sae=sae, feature=1, text="baseline text", author="baseline",
                               source="automatic", method="baseline")
    assert mine.key_id == alice.id and auto.key_id is None
    assert explanations.may_change(mine, alice) and not explanations.may_change(mine, bob)
    assert explanations.may_change(mine, root) and explanations.may_change(auto, root)
    assert not explanations.may_change(auto, alice)  # automatic explanations: admins only


def test_edits_and_deletions_are_kept_in_the_history(session):
    sae = _sae(session)
    _, alice = keys.create_key(session, name="alice")
    _, root = keys.create_key(session, name="root", admin=True)
    x = explanations.create(session, sae=sae, feature=2, text="first", author="alice", key_id=alice.id)
    explanations.edit(session, record=x, text="second", by=alice)
    explanations.edit(session, record=x, text="second", by=alice)  # unchanged: nothing to record
    xid = x.id
    explanations.remove(session, record=x, by=root)
    assert explanations.get(session, explanation_id=xid) is None
    h = explanations.history(session, explanation_id=xid)
    assert [(e.action, e.old_text, e.new_text, e.editor, e.key_id) for e in h] == [
        ("edit", "first", "second", "alice", alice.id), ("delete", "second", None, "root", root.id)]
    assert all(e.at is not None for e in h)


def test_the_existing_functions_keep_their_behaviour(session):
    sae = _sae(session)
    x = explanations.create(session, sae=sae, feature=3, text="  spaced  ", author="someone")
    assert x.text == "spaced" and x.key_id is None and x.method == "human"
    assert explanations.for_feature(session, sae=sae, feature=3)[0].id == x.id
    assert explanations.best_text(session, sae=sae, features={3}) == {3: "spaced"}


def test_saex_keys_create_admin(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}", "SAEX_DATA_DIR": str(tmp_path)}
    made = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--admin", "--name", "root"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert made.returncode == 0 and made.stdout.startswith("saex_") and "admin key" in made.stderr
    listed = subprocess.run([sys.executable, "-m", "app.cli", "keys", "list"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert listed.stdout.strip().endswith("\tadmin")
