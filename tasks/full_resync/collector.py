"""Python's cyclic garbage collector, paused while a resync chunk takes its turn.

A chunk holds a batch of thousands of decoded documents, with their plans and operations,
while it reads and applies it, and every automatic collection walks all of those live
containers again. Into an empty staging (20,000 documents in batches of 5,000, 2 ms) the
collector took about a sixth of the pool children's CPU: 91 and 96 µs per document with it
paused, 110 with it running, in runs minutes apart (bench/README, seventh session).
Reference counting frees a batch once it is done; the cycles a turn leaves (tracebacks of
handled errors, mostly) are collected when it ends, and a turn is bounded by the task's time
budget. A stream apply holds far fewer documents at once, and pausing there measured no
difference (143 against 144 µs per change in its pool children), so only chunks pause.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0  # turns inside `collector_paused`: a thread pool runs several at once
_resume = False  # whether collection was on when the first of them came in


@contextmanager
def collector_paused() -> Iterator[None]:
    """Automatic collection off while any turn is inside; back as it was after the last."""
    global _holders, _resume
    with _lock:
        if _holders == 0:
            _resume = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _resume:
                gc.enable()
