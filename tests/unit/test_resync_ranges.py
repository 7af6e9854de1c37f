"""Resync chunk ranges, sizes and budgets: the pure parts of tasks.resync*."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Timestamp
from bson.errors import InvalidBSON
from celery.exceptions import SoftTimeLimitExceeded
from hypothesis import given
from hypothesis import strategies as st
from pymongo.errors import NetworkTimeout
from stagesync.rules.id_ranges import (
    BRACKETS,
    IdRange,
    UnsupportedIdType,
    any_bracket_after,
    brackets_after,
    type_bracket,
    whole_bracket,
)
from stagesync.rules.identity import encode_id
from stagesync.tasks.full_resync.chunks import ChunkRun, EmptinessProbe, SweptSpan
from stagesync.tasks.resync import (
    CHUNKS_PER_SLOT,
    MAX_BATCHES_PER_CHUNK,
    _overran,
    chunk_span,
    sweep_span,
)

# One value per bracket, in BSON comparison order.
BY_BRACKET: list[tuple[str, Any]] = [
    ("minkey", MinKey()), ("null", None), ("nan", float("nan")), ("number", -3),
    ("string", "s"), ("object", {"a": 1}), ("binary", Binary(b"\x01", 0)),
    ("objectid", ObjectId()), ("bool", True), ("date", datetime(2020, 1, 1, tzinfo=UTC)),
    ("timestamp", Timestamp(1, 1)), ("code", Code("f()")),
    ("code_with_scope", Code("f()", {"x": 1})), ("maxkey", MaxKey()),
]


def test_brackets_follow_bson_comparison_order() -> None:
    assert [bracket for bracket, _ in BY_BRACKET] == list(BRACKETS)
    for bracket, value in BY_BRACKET:
        assert type_bracket(value) == bracket


@pytest.mark.parametrize("value", [1, Int64(1), 1.5, Decimal128("1.5"), float("inf"),
                                   float("-inf"), -0.0, 10**15])
def test_every_numeric_type_is_one_bracket(value: Any) -> None:
    assert type_bracket(value) == "number"


@pytest.mark.parametrize("value", [float("nan"), Decimal128("NaN")])
def test_nan_is_a_bracket_of_its_own_matched_by_equality(value: Any) -> None:
    # NaN sorts below every number but no range matches it (MongoDB type bracketing).
    assert type_bracket(value) == "nan"
    query = IdRange.of(value).query()
    assert list(query) == ["_id"]
    assert not isinstance(query["_id"], dict) and type_bracket(query["_id"]) == "nan"


def test_booleans_are_not_numbers_and_code_is_not_a_string() -> None:
    assert type_bracket(True) == "bool"
    assert type_bracket(Code("x")) == "code"
    assert type_bracket(uuid.uuid4()) == "binary"
    assert type_bracket(b"raw") == "binary"


def test_unknown_types_are_refused_not_skipped() -> None:
    with pytest.raises(UnsupportedIdType):
        type_bracket(object())


def test_a_range_stays_inside_one_bracket() -> None:
    with pytest.raises(ValueError, match="one type bracket"):
        IdRange.of(1, "a")
    assert IdRange.of(1, 2.5).query() == {"_id": {"$gte": 1, "$lt": 2.5}}
    assert IdRange.of("a").query() == {"_id": {"$gte": "a"}}


def test_a_resumed_range_starts_after_the_checkpoint() -> None:
    chunk = IdRange.of(ObjectId("0" * 24), ObjectId("f" * 24))
    after = encode_id(ObjectId("8" * 24))
    assert chunk.query(after=after) == {
        "_id": {"$gt": ObjectId("8" * 24), "$lt": ObjectId("f" * 24)}
    }


@pytest.mark.parametrize("value", [MinKey(), None, float("nan"), MaxKey()])
def test_single_value_brackets_are_read_by_equality_once(value: Any) -> None:
    chunk = IdRange.of(value)
    query = chunk.query()
    assert list(query) == ["_id"] and not isinstance(query["_id"], dict)
    assert chunk.query(after=chunk.lo) == {"_id": {"$in": []}}


def test_bounds_keep_their_types_through_the_record() -> None:
    chunk = IdRange.of(Int64(5), Int64(9))
    assert chunk.lo == '{"$numberLong": "5"}' and chunk.bracket == "number"
    assert IdRange.of(5).lo != IdRange.of(5.0).lo


def test_later_brackets_cover_everything_after_one() -> None:
    assert brackets_after(None) == BRACKETS
    assert brackets_after("maxkey") == ()
    assert any_bracket_after("maxkey") is None
    assert any_bracket_after("code_with_scope") == whole_bracket("maxkey")
    later = any_bracket_after("bool")
    assert later is not None
    assert later["$or"] == [whole_bracket(b) for b in ("date", "timestamp", "code",
                                                       "code_with_scope", "maxkey")]


def test_whole_bracket_starts_at_the_smallest_value_of_its_type() -> None:
    assert whole_bracket("number") == {"_id": {"$gte": float("-inf")}}
    assert whole_bracket("string") == {"_id": {"$gte": ""}}
    assert whole_bracket("objectid") == {"_id": {"$gte": ObjectId("0" * 24)}}
    assert whole_bracket("null") == {"_id": None}


@given(estimate=st.integers(0, 10**9), inflight=st.integers(1, 64),
       batch=st.integers(10, 50_000))
def test_chunk_span_keeps_workers_busy_and_chunks_bounded(
    estimate: int, inflight: int, batch: int,
) -> None:
    span = chunk_span(estimate, inflight, batch)
    assert batch <= span <= batch * MAX_BATCHES_PER_CHUNK
    if span < batch * MAX_BATCHES_PER_CHUNK and estimate > batch:
        # Not capped: at least one chunk per in-flight slot, so every worker gets one.
        assert -(-estimate // span) >= min(CHUNKS_PER_SLOT * inflight, -(-estimate // batch))


@given(estimate=st.integers(0, 10**9), inflight=st.integers(1, 64),
       batch=st.integers(10, 50_000), percent=st.floats(0.01, 20))
def test_a_small_sample_s_chunks_are_sized_by_the_documents_they_apply(
    estimate: int, inflight: int, batch: int, percent: float,
) -> None:
    share = percent / 100
    span = chunk_span(estimate, inflight, batch, share)
    # What a chunk applies (its share of the `_id`s it walks) is bounded like a whole copy's.
    assert batch - 1 <= span * share <= batch * MAX_BATCHES_PER_CHUNK
    # Never cut into more chunks than by `_id`s (one more, from rounding).
    whole = max(estimate, 1)
    assert -(-whole // span) <= -(-whole // chunk_span(estimate, inflight, batch)) + 1


def test_a_five_percent_sample_of_20000_is_one_chunk() -> None:
    assert chunk_span(20_000, 2, 1000, share=0.05) >= 20_000
    assert chunk_span(20_000, 2, 1000) == 10_000  # by `_id`s: two chunks of ~500 applied


@given(estimate=st.integers(0, 10**9), inflight=st.integers(1, 64))
def test_sweep_span_is_bounded(estimate: int, inflight: int) -> None:
    assert 10_000 <= sweep_span(estimate, inflight) <= 200_000


def test_a_soft_time_limit_is_recognised_even_when_a_library_rewrapped_it() -> None:
    assert _overran(SoftTimeLimitExceeded())
    wrapped = InvalidBSON("SoftTimeLimitExceeded()")
    assert _overran(wrapped)
    try:
        try:
            raise SoftTimeLimitExceeded()
        except SoftTimeLimitExceeded as inner:
            raise RuntimeError("decode failed") from inner
    except RuntimeError as outer:
        assert _overran(outer)
    assert _overran(NetworkTimeout("timed out"))  # a batch the server could not answer in time
    assert not _overran(ValueError("a bug"))


class FakeTarget:
    """Answers the probe's one query from a set of recorded `_sync.pid`s."""

    def __init__(self, pids: set[str]) -> None:
        self.pids = pids
        self.queries = 0

    def find_one(self, query: dict[str, Any], projection: Any = None, **options: Any) -> Any:
        self.queries += 1
        bounds = query["_sync.pid"]
        hits = [p for p in self.pids if bounds["$gte"] <= p <= bounds["$lte"]]
        return {"_id": hits[0]} if hits else None


def test_empty_staging_skips_every_staging_read_without_asking() -> None:
    target = FakeTarget({"x"})
    probe = EmptinessProbe.for_resync({"emptyStart": True}, target)  # type: ignore[arg-type]
    assert probe.known_empty(["a", "b"]) and target.queries == 0


def test_staging_with_documents_to_adopt_is_always_read() -> None:
    target = FakeTarget(set())
    probe = EmptinessProbe.for_resync(  # type: ignore[arg-type]
        {"emptyStart": False, "unsyncedStart": True}, target)
    assert not probe.known_empty(["a"]) and target.queries == 0


def test_probe_skips_reads_until_a_batch_has_copies_then_stops_asking() -> None:
    ids = [encode_id(ObjectId(f"{i:024x}")) for i in range(10)]
    target = FakeTarget({ids[5]})
    probe = EmptinessProbe.for_resync(  # type: ignore[arg-type]
        {"emptyStart": False, "unsyncedStart": False}, target)
    assert probe.known_empty(ids[:5])  # no copy among them
    assert not probe.known_empty(ids[4:8])  # ids[5] has a copy
    assert not probe.known_empty(ids[8:]) and target.queries == 2  # no more probes


def in_span(pid: str, span: dict[str, str]) -> bool:
    checks = {"$gt": pid.__gt__, "$gte": pid.__ge__, "$lt": pid.__lt__, "$lte": pid.__le__}
    return all(checks[op](bound) for op, bound in span.items())


OIDS = st.builds(ObjectId, st.binary(min_size=12, max_size=12))


@given(st.lists(OIDS, min_size=1, max_size=40, unique=True), st.data())
def test_the_swept_spans_of_a_copy_of_object_ids_tile_every_object_id(
        production: list[ObjectId], data: st.DataObject) -> None:
    """Cut production's ObjectIds into chunks (the planner's bounds: each starts where the
    last ended, the last runs to the end of the bracket) and each chunk into batches; every
    ObjectId, in production or not, then falls in exactly one batch's span (what lets the
    resync skip its sweep phase)."""
    production.sort()
    cuts = sorted(data.draw(st.sets(st.integers(1, len(production) - 1), max_size=5))
                  if len(production) > 1 else [])
    bounds = [0, *cuts]
    spans: list[dict[str, str]] = []
    for number, start in enumerate(bounds):
        end = bounds[number + 1] if number + 1 < len(bounds) else len(production)
        chunk = {"index": number, "lo": encode_id(production[start]),
                 "hi": encode_id(production[end]) if end < len(production) else None}
        run = ChunkRun(None, "c", {"foldsSweep": True}, chunk, "me",  # type: ignore[arg-type]
                       0.0, 0.0)
        swept = SweptSpan.of(run)
        assert swept is not None
        ids = production[start:end]
        size = data.draw(st.integers(1, 5))
        batches = [ids[i:i + size] for i in range(0, len(ids), size)]
        spans += [swept.through(encode_id(batch[-1])) for batch in batches[:-1]]
        spans.append(swept.rest())  # the last batch runs to the chunk's end
    others = data.draw(st.lists(OIDS, max_size=10))
    probes = [ObjectId("0" * 24), ObjectId("f" * 24), *production, *others]
    for value in probes:
        assert sum(in_span(encode_id(value), span) for span in spans) == 1, value


def test_a_chunk_of_another_id_type_leaves_its_sweep_to_the_sweep_phase() -> None:
    for lo, folds in ((5, True), (ObjectId(), False)):
        run = ChunkRun(None, "c", {"foldsSweep": folds}, {"index": 1, "lo": encode_id(lo)},  # type: ignore[arg-type]
                       "me", 0.0, 0.0)
        assert SweptSpan.of(run) is None


@pytest.mark.parametrize("limit", [5, 8, 16, 17, 60, 240])
def test_a_chunk_hands_on_well_inside_its_soft_time_limit(limit: int) -> None:
    """The chunk's time budget is half its soft limit, whatever the hard limit: at the budget
    it hands on with a new message, which must never race the soft limit."""
    from types import SimpleNamespace

    from stagesync.settings.model import WorkerSettings
    from stagesync.tasks.celery_options import soft_time_limit
    from stagesync.tasks.resync import time_budget

    worker = WorkerSettings(task_time_limit_seconds=limit, visibility_timeout_seconds=limit + 60)
    runtime = SimpleNamespace(settings=SimpleNamespace(worker=worker))
    budget = time_budget(runtime)  # type: ignore[arg-type]
    assert 0 < budget <= soft_time_limit(worker) / 2
    assert soft_time_limit(worker) < limit
