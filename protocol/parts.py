"""Which part of a watcher batch a message carries, and which part a done report covers.

The watcher publishes each batch whole. A worker that cannot apply a batch splits it in two
halves and publishes each as a message of its own (each half may be split again), or, when
staging refused only some of its changes, reports one half done and publishes the refused
changes as the other. So a part is a path of halves from the whole batch: the whole, its first
half, the second half of its first half, ... A batch is done once its done reports cover it:
a part is covered when it was reported, or when both of its halves are covered.

On the wire (task arguments and done reports) a part is its path spelled as a string of `0`
(first half) and `1` (second half); the whole batch is the empty string. That spelling is
what messages and reports of earlier versions carry, so both sides stay compatible.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

_HALVES = frozenset("01")


@dataclass(frozen=True, order=True)
class BatchPart:
    """A part of a batch: `path` is the halves taken from the whole batch ("" = whole)."""

    path: str = ""

    def __post_init__(self) -> None:
        if not _HALVES.issuperset(self.path):
            raise ValueError(f"a batch part is a path of halves (0s and 1s), not {self.path!r}")

    @classmethod
    def from_wire(cls, text: str) -> BatchPart:
        return cls(text)

    @property
    def wire(self) -> str:
        return self.path

    @property
    def halves(self) -> tuple[BatchPart, BatchPart]:
        """The first and the second half of this part."""
        return BatchPart(self.path + "0"), BatchPart(self.path + "1")

    def contains(self, other: BatchPart) -> bool:
        """Whether `other` is this part or lies within it."""
        return other.path.startswith(self.path)

    def covered_by(self, done: Iterable[BatchPart]) -> bool:
        """Whether the parts reported `done` cover all of this part."""
        reported = set(done)
        return self._covered(reported)

    def _covered(self, reported: set[BatchPart]) -> bool:
        if self in reported:
            return True
        if not any(self.contains(part) and part != self for part in reported):
            return False
        first, second = self.halves
        return first._covered(reported) and second._covered(reported)

    def __str__(self) -> str:
        return self.path or "whole"


WHOLE = BatchPart()
