"""Dead-letter replay jobs: one record per replay (`stagesync dlq replay`, or the watcher's
replay of documents held for their schema version), in their own collection, `replay_jobs`.

Upgrading in place: earlier versions kept these records in `resyncs`, marked `kind: "replay"`,
beside the resync records. They are not moved (a process not yet upgraded may still be
finishing or following one, by its `_id` in `resyncs`). Instead, during the transition:
- new jobs are written here only;
- `load` reads here, then a `kind: "replay"` record in `resyncs` (a job started by a process
  not yet upgraded, followed by an upgraded CLI);
- `finish` marks the job here, or else the one in `resyncs` (a job queued before the upgrade
  and run by an upgraded worker), so whoever follows it sees it done.
Old replay records left in `resyncs` are inert: nothing lists `resyncs` without asking for
`kind: "resync"`. The fallback can go once no deployment can hold a pre-upgrade job.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo.database import Database
from stagesync.protocol.names import REPLAY_JOBS, RESYNCS

COLLECTION = REPLAY_JOBS
# Fields of a replay job.
COLLECTION_FIELD = "collection"
STATE = "state"  # queued, then done
STARTED_AT = "startedAt"
FINISHED_AT = "finishedAt"
REASON = "reason"  # the dead-letter reason replayed (None: every reason)
SUMMARY = "summary"  # entries, resolved, still_failing
QUEUED = "queued"
DONE = "done"
# How earlier versions marked a replay job in `resyncs` (see the module docstring).
LEGACY_KIND = {"kind": "replay"}

Document = dict[str, Any]


def new_replay_job(state_db: Database[Document], collection: str, reason: str | None) -> str:
    """Record a queued replay job; returns its id."""
    job_id = f"replay-{collection}-{uuid.uuid4().hex[:8]}"
    state_db[COLLECTION].insert_one({
        "_id": job_id, COLLECTION_FIELD: collection, STATE: QUEUED,
        STARTED_AT: datetime.now(UTC), REASON: reason,
    })
    return job_id


def finish_replay_job(state_db: Database[Document], job_id: str,
                      summary: Mapping[str, int]) -> None:
    """Mark the job done with its summary (here, or its pre-upgrade record in `resyncs`)."""
    update = {"$set": {STATE: DONE, SUMMARY: dict(summary)},
              "$currentDate": {FINISHED_AT: True}}
    if state_db[COLLECTION].update_one({"_id": job_id}, update).matched_count:
        return
    state_db[RESYNCS].update_one({"_id": job_id, **LEGACY_KIND}, update)


def load_replay_job(state_db: Database[Document], job_id: str) -> Document | None:
    """The job's record (here, or its pre-upgrade one in `resyncs`), or None."""
    return state_db[COLLECTION].find_one({"_id": job_id}) or \
        state_db[RESYNCS].find_one({"_id": job_id, **LEGACY_KIND})


def replay_progress(state_db: Database[Document], job_id: str) -> dict[str, Any]:
    """Where a replay job stands, in the shape `cli.jobs.follow` reads."""
    record = load_replay_job(state_db, job_id) or {}
    summary = record.get(SUMMARY) or {}
    return {"state": record.get(STATE), "total": summary.get("entries"),
            "done": summary.get("entries", 0), "summary": summary}
