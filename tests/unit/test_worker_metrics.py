"""The worker's multiprocess metrics bookkeeping (tasks.metrics): its directory, emptied at
start, and the live-gauge files of exited children, which stop counting while their counters
stay. The live endpoint itself is tested in tests/integration/test_monitoring_live.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stagesync.tasks import metrics


def test_each_worker_node_has_a_directory_of_its_own(tmp_path: Path) -> None:
    one = metrics.worker_directory(str(tmp_path), "worker-5100@host.example")
    two = metrics.worker_directory(str(tmp_path), "worker-5101@host.example")
    assert one != two and one.parent == two.parent == tmp_path
    # A node name is not a path: nothing climbs out of the base directory.
    assert metrics.worker_directory(str(tmp_path), "../../etc/x").parent == tmp_path
    assert metrics.worker_directory("", "w@h").parent.name == \
        f"{metrics.DEFAULT_DIR_NAME}-{os.getuid()}"


def test_start_empties_the_directory_of_an_earlier_run(tmp_path: Path) -> None:
    directory = tmp_path / "w@h"
    metrics.empty_directory(directory)
    (directory / "counter_123.db").write_bytes(b"old counts")
    (directory / "notes.txt").write_text("not ours")
    metrics.empty_directory(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["notes.txt"]


def test_exited_childrens_live_gauges_go_and_their_counters_stay(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        dead = int(gone.stdout)
        names = [f"gauge_livesum_{dead}.db", f"gauge_liveall_{dead}.db", f"counter_{dead}.db",
                 f"gauge_max_{dead}.db", f"gauge_livesum_{child.pid}.db",
                 f"gauge_livesum_{os.getpid()}.db"]
        for name in names:
            (tmp_path / name).write_bytes(b"")
        assert metrics.mark_exited_children(tmp_path) == [dead]
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted([f"counter_{dead}.db", f"gauge_max_{dead}.db",
                               f"gauge_livesum_{child.pid}.db",
                               f"gauge_livesum_{os.getpid()}.db"])
    finally:
        child.kill()
        child.wait()


def test_the_gauges_say_how_children_combine() -> None:
    assert metrics.LAST_APPLIED._multiprocess_mode == "max"
    assert metrics.UNCLASSIFIED_PATHS._multiprocess_mode == "mostrecent"


class _Recorder:
    """Stands for the state database: keeps what `new_resync` inserts."""

    def __init__(self) -> None:
        self.inserted: list[dict[str, object]] = []

    def __getitem__(self, _name: str) -> _Recorder:
        return self

    def insert_one(self, document: dict[str, object]) -> None:
        self.inserted.append(document)


def test_the_watchers_resync_query_matches_resync_records_and_nothing_else() -> None:
    """The resync gauges read the records by a pattern of their `_id`s: it must follow the
    `_id`s new_resync makes, and leave out chunk records and other collections."""
    import re

    from stagesync.state.resync_progress import chunk_id, new_resync, resync_ids_of

    state = _Recorder()
    resync_id = new_resync(state, "orders_1", "bootstrap")  # type: ignore[arg-type]
    pattern = re.compile(resync_ids_of("orders_1"))
    assert pattern.match(resync_id) and state.inserted[0]["_id"] == resync_id
    assert not pattern.match(chunk_id(resync_id, "copy", 0))
    assert not re.match(resync_ids_of("orders"), resync_id)
