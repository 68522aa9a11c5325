"""Lists (collections) of features in the store: made by a key, changed only by it or an admin key, a feature once per
list (adding it again keeps its place and takes the new note), entries in the order added, deleting a list deletes
its entries; the migration builds the tables. On SQLite and Postgres."""

from __future__ import annotations

import pytest

from app.store import collections, keys
from app.store.dashboards import upsert_model, upsert_sae
from app.store.models import FeatureListEntry


def _saes(session):
    model = upsert_model(session, slug="lists", name="lists", source="x", config={"n_layers": 2})
    return [upsert_sae(session, model=model, slug=f"L{i}", layer=i, hook_name=f"blocks.{i}.attn.hook_z", d_sae=16,
                       architecture="topk", source="x") for i in (0, 1)]


def test_a_list_keeps_features_in_order_with_notes(session):
    l0, l1 = _saes(session)
    _, alice = keys.create_key(session, name="alice")
    made = collections.create(session, title="  induction  ", description="heads that copy", key=alice)
    assert made.title == "induction" and made.author == "alice" and made.key_id == alice.id and len(made.id) >= 10
    collections.add(session, record=made, sae=l1, feature=3, note="fires on repeats")
    collections.add(session, record=made, sae=l0, feature=3)
    collections.add(session, record=made, sae=l1, feature=7)
    again = collections.add(session, record=made, sae=l1, feature=3, note="  the second token  ")
    session.expire_all()
    got = collections.get(session, list_id=made.id)
    assert [(e.sae.slug, e.feature, e.note) for e in got.entries] == [
        ("L1", 3, "the second token"), ("L0", 3, ""), ("L1", 7, "")]
    assert again.id == got.entries[0].id
    collections.add(session, record=got, sae=l1, feature=3)  # no note: the old one stays
    assert collections.entry(session, record=got, entry_id=again.id).note == "the second token"


def test_only_the_maker_or_an_admin_may_change_a_list(session):
    _saes(session)
    _, alice = keys.create_key(session, name="alice")
    _, bob = keys.create_key(session, name="bob")
    _, root = keys.create_key(session, name="root", admin=True)
    made = collections.create(session, title="mine", key=alice)
    assert collections.may_change(made, alice) and collections.may_change(made, root)
    assert not collections.may_change(made, bob) and not collections.may_change(made, None)


def test_lists_of_a_key_with_counts_and_which_hold_a_feature(session):
    l0, l1 = _saes(session)
    _, alice = keys.create_key(session, name="alice")
    _, bob = keys.create_key(session, name="bob")
    a = collections.create(session, title="a", key=alice)
    b = collections.create(session, title="b", key=alice)
    collections.create(session, title="bob's", key=bob)
    collections.add(session, record=a, sae=l0, feature=1)
    collections.add(session, record=a, sae=l0, feature=2)
    collections.add(session, record=b, sae=l1, feature=1)
    mine = {r.title: n for r, n in collections.of_key(session, key_id=alice.id)}
    assert mine == {"a": 2, "b": 1}
    assert collections.holding(session, key_id=alice.id, sae_id=l0.id, feature=1) == {a.id}
    assert collections.holding(session, key_id=bob.id, sae_id=l0.id, feature=1) == set()


def test_annotate_remove_rename_delete(session):
    l0, _ = _saes(session)
    _, alice = keys.create_key(session, name="alice")
    made = collections.create(session, title="t", key=alice)
    e = collections.add(session, record=made, sae=l0, feature=5)
    collections.annotate(session, record=made, entry=e, note=" why ")
    assert e.note == "why"
    collections.rename(session, record=made, title=" new ", description=" d ")
    assert (made.title, made.description) == ("new", "d")
    collections.remove(session, record=made, entry=e)
    assert collections.get(session, list_id=made.id).entries == []
    e2 = collections.add(session, record=made, sae=l0, feature=6)
    entry_id = e2.id
    collections.delete(session, record=made)
    assert collections.get(session, list_id=made.id) is None
    assert session.get(FeatureListEntry, entry_id) is None  # cascaded


def test_an_entry_of_another_list_is_not_found_through_this_one(session):
    l0, _ = _saes(session)
    _, alice = keys.create_key(session, name="alice")
    a = collections.create(session, title="a", key=alice)
    b = collections.create(session, title="b", key=alice)
    e = collections.add(session, record=a, sae=l0, feature=1)
    assert collections.entry(session, record=b, entry_id=e.id) is None


def test_a_list_is_bounded(session, monkeypatch):
    l0, _ = _saes(session)
    _, alice = keys.create_key(session, name="alice")
    made = collections.create(session, title="t", key=alice)
    monkeypatch.setattr(collections, "MAX_ENTRIES", 2)
    collections.add(session, record=made, sae=l0, feature=1)
    collections.add(session, record=made, sae=l0, feature=2)
    collections.add(session, record=made, sae=l0, feature=2, note="again: not a new entry")
    with pytest.raises(collections.ListFull):
        collections.add(session, record=made, sae=l0, feature=3)
