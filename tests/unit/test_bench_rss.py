"""The benchmark's memory series (`bench.procs.RssSampler`, `quarters`): what issue 31's
"memory flat across the run" is read from."""

from __future__ import annotations

import os
import time

from bench.procs import RssSampler, quarters


def test_quarters_keep_the_largest_value_of_each_quarter() -> None:
    assert quarters([5, 1, 2, 9, 3, 3, 4, 8]) == [5, 9, 3, 8]
    assert quarters([1.0, 2.0]) == [1.0, 2.0]  # too short to cut: as it is
    assert quarters([]) == []


def test_the_sampler_sees_a_process_grow() -> None:
    sampler = RssSampler({"test": os.getpid()}, interval=0.05)
    held = []
    for _ in range(8):
        block = bytearray(8 * 2**20)  # 8 MiB, one byte written per page: resident
        block[::4096] = b"x" * len(range(0, len(block), 4096))
        held.append(block)
        time.sleep(0.08)
    series = sampler.stop()["test"]
    first, *_, last = quarters(series)
    assert last - first > 30, series  # 64 MiB were added over the run
    assert len(held) == 8
