"""The production reader's command log: names only, and each thread's getMores counted apart
(the watcher paces its change stream fetches by its own thread's count)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from stagesync.deployments.production import CommandLog


def started(log: CommandLog, name: str) -> None:
    event: Any = SimpleNamespace(command_name=name)
    log.started(event)


def test_get_mores_are_counted_per_thread_and_other_commands_are_not() -> None:
    log = CommandLog()
    started(log, "find")
    started(log, "getMore")
    started(log, "getMore")
    counted_elsewhere: list[int] = []

    def other_thread() -> None:
        started(log, "getMore")
        counted_elsewhere.append(log.get_mores())

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert log.get_mores() == 2
    assert counted_elsewhere == [1]
    assert log.names == {"find", "getMore"} and not log.writes
