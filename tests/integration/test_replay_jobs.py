"""Replay jobs live in `replay_jobs`; a job recorded before the upgrade, in `resyncs` with
`kind: "replay"`, is still followed and finished (state.replay_jobs)."""

from __future__ import annotations

from datetime import UTC, datetime

from stagesync.state.replay_jobs import (
    finish_replay_job,
    load_replay_job,
    new_replay_job,
    replay_progress,
)

from tests.support.pipeline import Pipeline

SUMMARY = {"entries": 3, "resolved": 2, "still_failing": 1}


def test_a_new_job_is_recorded_and_finished_in_its_own_collection(pipeline: Pipeline) -> None:
    state = pipeline.state()
    job = new_replay_job(state, "orders", "key_conflict")
    assert state["replay_jobs"].find_one({"_id": job})["state"] == "queued"
    assert state["resyncs"].find_one({"_id": job}) is None
    finish_replay_job(state, job, SUMMARY)
    record = load_replay_job(state, job)
    assert record is not None and record["state"] == "done" and record["summary"] == SUMMARY
    assert record["finishedAt"] is not None
    assert replay_progress(state, job) == {"state": "done", "total": 3, "done": 3,
                                           "summary": SUMMARY}


def test_a_job_queued_before_the_upgrade_is_found_and_finished_in_resyncs(
    pipeline: Pipeline,
) -> None:
    state = pipeline.state()
    # What the previous version wrote (tasks.enqueue.start_replay).
    state["resyncs"].insert_one({"_id": "replay-orders-0000abcd", "kind": "replay",
                                 "collection": "orders", "state": "queued",
                                 "startedAt": datetime.now(UTC), "reason": None})
    assert replay_progress(state, "replay-orders-0000abcd")["state"] == "queued"
    finish_replay_job(state, "replay-orders-0000abcd", SUMMARY)
    legacy = state["resyncs"].find_one({"_id": "replay-orders-0000abcd"})
    assert legacy["state"] == "done" and legacy["summary"] == SUMMARY
    assert state["replay_jobs"].find_one({"_id": "replay-orders-0000abcd"}) is None
    assert replay_progress(state, "replay-orders-0000abcd")["summary"] == SUMMARY


def test_a_resync_record_is_never_taken_for_a_replay_job(pipeline: Pipeline) -> None:
    state = pipeline.state()
    state["resyncs"].insert_one({"_id": "orders-20260101T000000-abcdef", "kind": "resync",
                                 "state": "applying"})
    finish_replay_job(state, "orders-20260101T000000-abcdef", SUMMARY)
    assert state["resyncs"].find_one({"_id": "orders-20260101T000000-abcdef"})["state"] == \
        "applying"
    assert load_replay_job(state, "orders-20260101T000000-abcdef") is None
