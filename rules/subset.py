"""Subset membership, the part that needs no I/O: a deterministic keyed sample of `_id`s.

`subset: {percent: P}` takes a document when a keyed hash (HMAC-SHA256 with `pii_secret`) of
its encoded production `_id` falls in the first P percent of the hash space. The same document
is in or out on every run, resync and worker, and membership reveals nothing about the data
(without the secret, the sample cannot be told from any other). `follow` membership depends
on the referenced collection's staging copies and is decided at apply time
(`tasks.apply.references`).
"""

from __future__ import annotations

import hashlib
import hmac

_SCALE = 2**64


def in_sample(pid: str, percent: float, secret: bytes) -> bool:
    digest = hmac.new(secret, b"stagesync-subset\x00" + pid.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") < percent / 100 * _SCALE
