"""A stored resume token the server refuses to resume from takes the history-lost path: a
full resync, then streaming from a fresh token. Real watcher and worker processes.

MongoDB answers an unreadable token with 9 FailedToParse ("resume token string was not a
valid hex string") and a token it cannot use with 260 InvalidResumeToken; either way the
stream cannot go on from it. SecantusDB produces the first case for real; the second is
covered at the call site in test_failure_conformance.py.
"""

from __future__ import annotations

from typing import Any

from stagesync.rules.identity import encode_id

from tests.support.pipeline import Pipeline, wait_for

GARBAGE_TOKEN = {"_data": "not-a-resume-token"}


def synced(pipeline: Pipeline, pid: Any) -> dict[str, Any] | None:
    return pipeline.staging().find_one({"_sync.pid": encode_id(pid)})


def test_a_garbage_checkpoint_token_means_resync_then_stream(pipeline: Pipeline) -> None:
    name = pipeline.collections[0]["name"]
    before = pipeline.prod().insert_one({"userEmail": "old@corp.test", "accountId": 1,
                                         "total": 1}).inserted_id
    pipeline.state()["watchers"].insert_one(
        {"_id": name, "token": GARBAGE_TOKEN, "owner": None, "leaseUntil": 0})

    pipeline.start_watcher()
    pipeline.start_worker(concurrency=1)
    # The resync copies what production held; the fresh token replaces the garbage one.
    wait_for(lambda: synced(pipeline, before), 45, "resync copied the existing document",
             pipeline)
    wait_for(lambda: (r := pipeline.state()["watchers"].find_one({"_id": name}))
             and r.get("token") not in (None, GARBAGE_TOKEN), 30, "a fresh checkpoint",
             pipeline)

    after = pipeline.prod().insert_one({"userEmail": "new@corp.test", "accountId": 2,
                                        "total": 2}).inserted_id
    wait_for(lambda: synced(pipeline, after), 30, "a later change streamed", pipeline)
    reasons = [doc.get("reason", "") for doc in pipeline.state()["resyncs"].find(
        {"kind": "resync"})]
    assert any("history lost" in reason and "code 9" in reason for reason in reasons), reasons
