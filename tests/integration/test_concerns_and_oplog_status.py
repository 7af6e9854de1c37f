"""`check` and `status` say when unsafe concerns are allowed, and `status` says why the oplog
headroom is unknown instead of showing "-"."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from pymongo.errors import OperationFailure
from rich.console import Console
from stagesync.cli.status import StatusReader, render

from tests.support.pipeline import Pipeline, collection_config


def test_check_and_status_say_that_unsafe_concerns_are_allowed(pipeline_factory: Any) -> None:
    pipeline: Pipeline = pipeline_factory(
        [collection_config("orders")], prod={"read_concern": "local"},
        allow_unsafe_concerns=True)
    check = pipeline.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "allow_unsafe_concerns is set: prod.read_concern" in " ".join(check.stdout.split())

    status = pipeline.cli("status", "--json")
    report = json.loads(status.stdout)
    assert [c.split(":")[0] for c in report["unsafe_concerns"]] == ["prod.read_concern"]


class OplogRefused:
    """Production's client, refusing `local` the way MongoDB refuses a user holding `read` on
    the source databases only (the test server has no users or roles)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __getitem__(self, name: str) -> Any:
        if name == "local":
            return {"oplog.rs": self}
        return self._real[name]

    def find_one(self, *_: Any, **__: Any) -> Any:
        raise OperationFailure(
            'not authorized on local to execute command { find: "oplog.rs" }', code=13,
            details={"ok": 0.0, "code": 13, "codeName": "Unauthorized"})


def test_status_names_why_the_oplog_headroom_is_unknown(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = StatusReader(pipeline.settings, slow_every_seconds=0)  # no cached oplog window
    try:
        if pipeline.pair.kind != "external":  # a deployment of ours: its oplog is readable
            assert reader.collect()[0]["oplog_unknown_because"] is None
        monkeypatch.setattr(reader.production, "_client", OplogRefused(reader.production._client))
        rows = reader.collect()
    finally:
        reader.close()
    assert rows[0]["oplog_window_seconds"] is None
    assert "local.oplog.rs" in rows[0]["oplog_unknown_because"]
    out = io.StringIO()
    Console(file=out, width=250).print(render(rows, wide=True))
    text = out.getvalue()
    assert "unknown" in text and "oplog headroom unknown: the production user may not read " \
        "local.oplog.rs" in " ".join(text.split())
