"""A mirrored index never refuses a write the sync makes (issue 28), on real servers.

In-process, wired like a worker's (`ApplyContext.build`, `apply_changes`) with the real mirror
(`IndexMirror` and its records), so each case takes seconds: production's indexes are mirrored
into staging first, then production's writes are applied in the order that hurt before.

- unique values that move (a swap through a temporary value, a rotation, a hand-over, a value
  freed by a delete or by a partial index's soft delete), applied holder-last;
- a unique index on a path in `staging_fields`;
- a 2dsphere index on a field the PII rules redact;
- the safety net: an index the translation lets through (a 2dsphere index with the geo rule
  switched off; a unique index mirrored by an earlier stagesync) that then refuses.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from pymongo.errors import OperationFailure
from stagesync.cli.index_drift import drift_warnings
from stagesync.deployments.index_mirror import IndexMirror
from stagesync.deployments.staging_indexes import ensure_indexes
from stagesync.rules import index_translation
from stagesync.rules.identity import encode_id
from stagesync.rules.merge import production_view
from stagesync.rules.pii import Masker
from stagesync.rules.sync_meta import read_meta
from stagesync.settings.model import Settings
from stagesync.state.index_mirror_records import IndexMirrorRecords
from stagesync.tasks.apply.applier import apply_changes
from stagesync.tasks.apply.context import ApplyContext

SECRET = b"index-refusals-secret"


@dataclass
class World:
    context: ApplyContext
    mirror: IndexMirror
    records: IndexMirrorRecords
    prod: Any
    staging: Any
    state: Any


def world(clients: Any, **config: Any) -> World:
    reader, staging, writer = clients
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        prod={"uri": "mongodb://unused/"},
        staging={"uri": "mongodb://unused/", "state_db": f"irs_{tag}"},
        pii_secret=SECRET.decode(),
        collections=[{"name": f"users_{tag}", "source": f"irp_{tag}.users",
                      "target": f"irt_{tag}.users", "business_key": ["accountId"], **config}],
    )
    collection = settings.collections[0]
    ensure_indexes(staging, settings)
    state = staging[settings.staging.state_db]
    source = reader.collection(collection)
    context = ApplyContext.build(collection, Masker.from_settings(collection, SECRET), source,
                                 staging, state)
    records = IndexMirrorRecords(state, collection.name)
    mirror = IndexMirror(collection, source, staging, records)
    return World(context, mirror, records, writer[f"irp_{tag}"]["users"],
                 staging[f"irt_{tag}"]["users"], state)


def apply(w: World, *ids: Any) -> None:
    """One apply per production `_id`, in the order given (each its own batch)."""
    for production_id in ids:
        apply_changes(w.context, {encode_id(production_id): "update"})


def open_dead_letters(w: World) -> list[dict[str, Any]]:
    return list(w.state["dead_letters"].find({"state": "open"}, {"pid": 1, "reason": 1,
                                                                 "error": 1}))


def assert_converged(w: World) -> None:
    """Every production document has one live copy with exactly its fields; no dead letter."""
    production = {encode_id(d["_id"]): d for d in w.prod.find({})}
    live = {}
    for doc in w.staging.find({}):
        meta = read_meta(doc)
        if not meta.deleted and meta.pid:
            live[meta.pid] = production_view(doc, meta.owned)
    masked = {pid: w.context.masker.mask(doc) for pid, doc in production.items()}
    assert live == {pid: {k: v for k, v in doc.items() if k != "_id"}
                    for pid, doc in masked.items()}
    assert open_dead_letters(w) == []


def staging_index(w: World, name: str) -> dict[str, Any] | None:
    return next((dict(i) for i in w.staging.list_indexes() if i["name"] == name), None)


# -- 1. unique values that move -------------------------------------------------------------


def test_unique_values_that_move_converge_applied_in_the_worst_order(clients: Any) -> None:
    w = world(clients)
    w.prod.create_index("email", unique=True, name="email_unique")
    w.prod.create_index("handle", unique=True, name="handle_active",
                        partialFilterExpression={"active": True})
    ids = [w.prod.insert_one({"accountId": n, "email": f"u{n}@corp.test", "handle": f"h{n}",
                              "active": True}).inserted_id for n in range(5)]
    a, b, c, d, e = ids
    apply(w, *ids)
    w.mirror.run()
    mirrored = staging_index(w, "email_unique")
    assert mirrored is not None and not mirrored.get("unique")  # production's keys, non-unique

    def email(doc_id: Any, value: str) -> None:
        w.prod.update_one({"_id": doc_id}, {"$set": {"email": value}})

    # A swap through a temporary value, each copy applied before the one holding its value.
    email(a, "tmp@corp.test")
    email(b, "u0@corp.test")
    email(a, "u1@corp.test")
    apply(w, b, a)
    # A rotation of three (c -> d's, d -> e's, e -> c's), applied in the rotation's order.
    email(c, "tmp@corp.test")
    email(e, "u2@corp.test")
    email(d, "u4@corp.test")
    email(c, "u3@corp.test")
    apply(w, e, d, c)
    # A hand-over freed by a delete, and one freed by a soft delete (partial index).
    w.prod.delete_one({"_id": d})
    email(e, "u4@corp.test")
    w.prod.update_one({"_id": c}, {"$set": {"active": False}})
    w.prod.update_one({"_id": a}, {"$set": {"handle": "h2"}})
    apply(w, e, a, d, c)
    assert_converged(w)
    drift = w.mirror.drift()
    assert drift["demoted"] == [] and drift["failed"] == []
    notes = {t["production"]: t["how"] for t in drift["translated"]}
    assert set(notes) == {"email_unique", "handle_active"}
    assert all(how[0].startswith("non-unique") for how in notes.values())
    status = drift_warnings("users", drift, problems_only=True, notes=True)
    assert status == ["users: unique in production, mirrored non-unique in staging (values "
                      "production moves must not be refused): email_unique, handle_active"]
    # The route's cost, stated: a QA copy of a production value is not refused in staging.
    w.staging.insert_one({"email": "u1@corp.test", "qaNotes": "fixture"})


# -- 2. a unique index on a path the sync never writes ---------------------------------------


def test_a_unique_index_on_a_staging_field_is_not_mirrored(clients: Any) -> None:
    w = world(clients, staging_fields=["ticket"])
    w.prod.create_index("ticket", unique=True, name="ticket_unique")
    w.mirror.run()  # into an empty staging: before the copies, as at a first start
    ids = [w.prod.insert_one({"accountId": n, "ticket": f"T-{n}"}).inserted_id
           for n in range(4)]
    apply(w, *ids)
    assert staging_index(w, "ticket_unique") is None
    assert w.staging.count_documents({"deleted": False}) == 4
    assert open_dead_letters(w) == []
    assert all("ticket" not in doc for doc in w.staging.find({}))
    [skip] = w.mirror.drift()["skipped"]
    assert skip["production"] == "ticket_unique" and "staging_fields" in skip["reason"]


# -- 3. a geo index on a masked field -----------------------------------------------------------


POINT = {"type": "Point", "coordinates": [2.35, 48.85]}


def test_a_2dsphere_index_on_a_redacted_field_is_skipped_and_copies_arrive(
    clients: Any,
) -> None:
    w = world(clients, pii={"home": "redact"})
    w.prod.create_index([("home", "2dsphere")], name="home_geo")
    w.prod.create_index([("office", "2dsphere")], name="office_geo")
    w.mirror.run()
    ids = [w.prod.insert_one({"accountId": n, "home": POINT, "office": POINT}).inserted_id
           for n in range(3)]
    apply(w, *ids)
    assert staging_index(w, "home_geo") is None
    assert staging_index(w, "office_geo") is not None  # not masked: mirrored as is
    assert_converged(w)
    [skip] = w.mirror.drift()["skipped"]
    assert skip["production"] == "home_geo" and "refuse every copy" in skip["reason"]


# -- the safety net -------------------------------------------------------------------------


def test_an_index_the_translation_lets_through_is_demoted_when_it_refuses(
    clients: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The geo rule switched off: the mirror builds a 2dsphere index on a redacted field.
    The first copy staging refuses demotes it; every copy arrives, none is dead-lettered; the
    next pass leaves it out, and `status` says so."""
    w = world(clients, pii={"home": "redact"})
    w.prod.create_index([("home", "2dsphere")], name="home_geo")
    with monkeypatch.context() as patch:
        patch.setattr(index_translation, "_refuses_masked", lambda *_: None)
        w.mirror.run()
        assert staging_index(w, "home_geo") is not None  # let through
    ids = [w.prod.insert_one({"accountId": n, "home": POINT}).inserted_id for n in range(3)]
    apply(w, ids[0])
    apply(w, *ids[1:])
    assert_converged(w)
    assert staging_index(w, "home_geo") is None
    [demoted] = w.records.demoted().values()
    assert demoted["name"] == "home_geo" and demoted["code"] in (16755, 16572)
    assert "48.85" not in str(demoted["error"])  # the refused document is cut out
    with monkeypatch.context() as patch:
        patch.setattr(index_translation, "_refuses_masked", lambda *_: None)
        w.mirror.run()  # the translation still lets it through: the demotion holds
        assert staging_index(w, "home_geo") is None
        drift = w.mirror.drift()
        assert [d["staging"] for d in drift["demoted"]] == ["home_geo"]
        assert "demoted by the safety net" in drift["skipped"][0]["reason"]
        [line] = drift_warnings("users", drift, problems_only=True)
        assert "refused sync writes" in line and "demoted" in line
    w.mirror.run()  # the translation skips it itself now: the demotion is no longer needed
    assert w.records.demoted() == {} and staging_index(w, "home_geo") is None


def test_a_unique_index_an_earlier_stagesync_mirrored_is_demoted_when_a_swap_hits_it(
    clients: Any,
) -> None:
    """Staging upgraded from the translation that kept uniqueness: the owned unique index
    refuses a swap applied holder-last, the safety net demotes it, the swap lands."""
    w = world(clients)
    w.prod.create_index("email", unique=True, name="email_unique")
    a = w.prod.insert_one({"accountId": 1, "email": "a@corp.test"}).inserted_id
    b = w.prod.insert_one({"accountId": 2, "email": "b@corp.test"}).inserted_id
    apply(w, a, b)
    old = {"key": {"email": 1}, "unique": True, "collation": {"locale": "simple"},
           "partialFilterExpression": {"deleted": False, "_sync.pid": {"$exists": True}}}
    w.records.building("email_unique", "email_unique", old)
    w.staging.database.command("createIndexes", w.staging.name,
                               indexes=[{**old, "name": "email_unique"}])
    w.records.built("email_unique")
    w.prod.update_one({"_id": a}, {"$set": {"email": "tmp@corp.test"}})
    w.prod.update_one({"_id": b}, {"$set": {"email": "a@corp.test"}})
    w.prod.update_one({"_id": a}, {"$set": {"email": "b@corp.test"}})
    apply(w, b)
    apply(w, a)
    assert_converged(w)
    assert staging_index(w, "email_unique") is None
    assert list(w.records.demoted()) == ["email_unique"]
    w.mirror.run()  # production's definition translates to another spec: built non-unique
    rebuilt = staging_index(w, "email_unique")
    assert rebuilt is not None and not rebuilt.get("unique")
    assert w.records.demoted() == {}  # the recorded definition is no longer wanted


def test_a_refusal_of_an_index_made_by_hand_stays_a_write_error(clients: Any) -> None:
    """The safety net demotes only indexes stagesync mirrored: one made by hand in staging is
    never dropped."""
    w = world(clients)
    w.staging.create_index("email", unique=True, name="qa_email",
                           partialFilterExpression={"deleted": False})
    a = w.prod.insert_one({"accountId": 1, "email": "a@corp.test"}).inserted_id
    b = w.prod.insert_one({"accountId": 2, "email": "b@corp.test"}).inserted_id
    apply(w, a, b)
    w.prod.update_one({"_id": a}, {"$set": {"email": "c@corp.test"}})
    w.prod.update_one({"_id": b}, {"$set": {"email": "a@corp.test"}})
    with pytest.raises(Exception, match="11000"):
        apply(w, b)
    assert staging_index(w, "qa_email") is not None
    assert w.records.demoted() == {}
    with pytest.raises(OperationFailure):
        w.staging.insert_one({"email": "a@corp.test", "deleted": False})
