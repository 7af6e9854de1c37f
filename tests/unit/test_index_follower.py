"""How the watcher follows production's index changes, decided without a server: DDL events
on 6.0+, polling before that or when configured, a fall-back to polling when the server
refuses `showExpandedEvents`; and failure messages never carry duplicate values."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pymongo.errors import OperationFailure, PyMongoError
from stagesync.deployments.index_mirror import _message
from stagesync.rules.plan_types import PlannedWrite
from stagesync.settings.model import Settings
from stagesync.tasks.apply.index_guard import refusing_index, written_paths
from stagesync.watcher.index_follower import IndexFollower


class FakeReader:
    """Only what the follower asks of a ProductionReader: its version and a collection."""

    def __init__(self, version: tuple[int, ...] | None) -> None:
        self.version = version

    def server_version(self) -> tuple[int, ...]:
        if self.version is None:
            raise PyMongoError("no answer")
        return self.version

    def collection(self, _settings: Any) -> Any:
        return object()


class FakeStateDb:
    client: dict[str, Any] = {"s": {"orders": object()}}

    def __getitem__(self, name: str) -> Any:
        return object()


def settings(indexes: str = "mirror", follow: str = "auto") -> Settings:
    return Settings(
        prod={"uri": "mongodb://prod:27017/"}, staging={"uri": "mongodb://staging:27017/"},
        collections=[{"name": "orders", "source": "p.orders", "target": "s.orders",
                      "business_key": ["a"], "indexes": indexes}],
        watcher={"index_follow": follow, "index_poll_seconds": 0.5},
    )


def follower(version: tuple[int, ...] | None, **options: str) -> IndexFollower | None:
    config = settings(**options)
    return IndexFollower.for_watcher(config, config.collections[0],
                                     FakeReader(version),  # type: ignore[arg-type]
                                     FakeStateDb(),  # type: ignore[arg-type]
                                     threading.Event())


@pytest.mark.parametrize(("version", "mode"), [
    ((6, 0, 0), "events"), ((8, 2, 11), "events"), ((5, 0, 9), "poll"), ((4, 4), "poll"),
    (None, "poll"),
])
def test_events_where_the_server_has_them(version: tuple[int, ...] | None, mode: str) -> None:
    found = follower(version)
    assert found is not None and found.mode == mode
    assert found.stream_options() == ({"show_expanded_events": True} if mode == "events"
                                      else {})
    assert found.poll_seconds == 0.5


def test_poll_when_configured_and_nothing_when_indexes_none() -> None:
    polled = follower((8, 0), follow="poll")
    assert polled is not None and polled.mode == "poll"
    assert follower((8, 0), indexes="none") is None


def test_a_server_refusing_expanded_events_makes_it_poll() -> None:
    found = follower((7, 0))
    assert found is not None
    other = OperationFailure("Invalid resume token", 260)
    assert not found.events_refused(other) and found.mode == "events"
    refused = OperationFailure(
        "BSON field '$changeStream.showExpandedEvents' is an unknown field.", 40415)
    assert found.events_refused(refused)
    assert found.mode == "poll" and found.stream_options() == {}


def test_failure_messages_never_carry_the_duplicate_values() -> None:
    error = OperationFailure("E11000", 11000, {
        "errmsg": "Index build failed: E11000 duplicate key error collection: s.users "
                  "index: email_unique dup key: { email: \"ann@corp.test\" }",
        "codeName": "DuplicateKey", "keyValue": {"email": "ann@corp.test"}})
    message = _message(error)
    assert message.startswith("11000 DuplicateKey: ")
    assert "email_unique" in message and "ann@corp.test" not in message


@pytest.mark.parametrize("errmsg", [
    "Can't extract geo keys: { _id: 1, home: \"12 rue de la Paix\" }  Point must be an array",
    "Can't extract geo keys: value '12 rue de la Paix' is not a recognised geometry",
])
def test_failure_messages_never_carry_the_refused_document(errmsg: str) -> None:
    message = _message(OperationFailure(errmsg, 16755, {"errmsg": errmsg}))
    assert message.startswith("code 16755: Can't extract geo keys")
    assert "rue de la Paix" not in message


def test_the_safety_net_names_the_mirrored_index_that_refused() -> None:
    owned = {"home_geo": {"production": "home_geo", "spec": {"key": {"home": "2dsphere"}}},
             "office_geo": {"production": "office_geo", "spec": {"key": {"office": "2dsphere"}}},
             "email_1": {"production": "email_1", "spec": {"key": {"email": 1}}}}
    dup = "E11000 duplicate key error collection: s.u index: email_1 dup key: { email: 1 }"
    assert refusing_index(owned, 11000, dup, None) == "email_1"
    other = dup.replace("email_1", "qa_email")
    assert refusing_index(owned, 11000, other, None) is None  # made by hand: not ours
    geo = "Can't extract geo keys: {…}"
    assert refusing_index(owned, 16755, geo, ["home"]) == "home_geo"
    assert refusing_index(owned, 16755, geo, ["office.coordinates"]) == "office_geo"
    assert refusing_index(owned, 16755, geo, None) is None  # two candidates: not sure
    assert refusing_index(owned, 2, "BadValue", ["home"]) is None  # not an index's refusal
    insert = PlannedWrite("p1", 1, None, "created", document={"_id": 1, "home": "x", "a": 1})
    assert written_paths(insert) == ["_id", "home", "a"]
    update = PlannedWrite("p1", 1, 3, "updated", update={"$set": {"office.type": "x"},
                                                          "$unset": {"b": ""}})
    assert refusing_index(owned, 16755, geo, written_paths(update)) == "office_geo"


class DriftMirror:
    """A mirror whose drift the test sets."""

    def __init__(self, name: str) -> None:
        self.collection = type("C", (), {"name": name})()
        self.now: dict[str, Any] = {}

    def drift(self) -> dict[str, Any]:
        return self.now


def test_the_drift_is_exported_by_kind_and_new_mendable_drift_wakes_a_pass() -> None:
    mirror = DriftMirror("drift_orders")
    found = IndexFollower(mirror, threading.Event(), 1.0, False)  # type: ignore[arg-type]

    def value(kind: str) -> float | None:
        return REGISTRY.get_sample_value("stagesync_index_drift",
                                         {"collection": "drift_orders", "kind": kind})

    mirror.now = {"mode": "mirror", "missing": [], "failed": [{"production": "a"}],
                  "demoted": [{"production": "geo"}, {"production": "b"}]}
    assert found.report_drift() is False  # nothing a pass can mend
    assert (value("failed"), value("demoted"), value("missing")) == (1, 2, 0)
    mirror.now = {**mirror.now, "missing": [{"production": "geo", "staging": "geo"}]}
    assert found.report_drift() is True  # a demotion's new form to build: a pass now
    assert value("missing") == 1
    assert found.report_drift() is False  # the same again: the pass could not mend it
    inactive = IndexFollower(mirror, threading.Event(), 1.0, False,  # type: ignore[arg-type]
                             active=lambda: False)
    assert inactive.report_drift() is False
