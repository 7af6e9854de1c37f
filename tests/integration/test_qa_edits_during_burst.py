"""QA edits to staging-only fields made while a burst of production changes is applied.

The sync writes only production's paths (`$set`/`$unset`) under a version compare-and-swap,
so an edit of a staging-only field that lands between a batch's staging read and its write is
never lost. Whole-document replaces would lose such edits: each `$inc` below is counted, so a
single lost edit shows.
"""

from __future__ import annotations

import threading
from typing import Any

from pymongo import UpdateOne

from tests.support.pipeline import Pipeline, collection_config, wait_for

DOCUMENTS = 200
ROUNDS = 8
TIMEOUT = 120


def test_no_staging_only_edit_is_lost_during_a_burst(pipeline_factory: Any) -> None:
    pipeline: Pipeline = pipeline_factory([collection_config("orders")])
    prod = pipeline.prod()
    ids = prod.insert_many([
        {"userEmail": f"u{i}@corp.test", "accountId": i, "total": 0, "customer": {"n": i}}
        for i in range(DOCUMENTS)
    ]).inserted_ids
    pipeline.start_watcher()
    pipeline.start_worker(concurrency=2)
    pipeline.start_worker(concurrency=2)
    staging = pipeline.staging()
    wait_for(lambda: staging.count_documents({"total": 0}) == DOCUMENTS, TIMEOUT,
             "initial copy", pipeline)

    def burst() -> None:
        for round_number in range(1, ROUNDS + 1):
            prod.bulk_write([
                UpdateOne({"_id": i}, {"$set": {"total": round_number,
                                                "customer.round": round_number}})
                for i in ids
            ], ordered=False)

    writer = threading.Thread(target=burst)
    writer.start()
    edits = 0
    # QA keeps editing every staging document, top level and inside production's
    # sub-document, for as long as the burst runs.
    while writer.is_alive() or edits < 3:
        staging.update_many({}, {"$inc": {"qaCount": 1, "customer.qaCount": 1},
                                 "$set": {"qaNotes": f"edit {edits}"}})
        edits += 1
    writer.join()

    wait_for(lambda: staging.count_documents({"total": ROUNDS}) == DOCUMENTS, TIMEOUT,
             "burst applied", pipeline)
    for document in staging.find({}):
        assert document["qaCount"] == edits, document
        assert document["customer"]["qaCount"] == edits, document
        assert document["qaNotes"] == f"edit {edits - 1}"
        assert document["customer"]["round"] == ROUNDS
