"""The watcher's one timer scheme: when each periodic duty is next due.

Every duty of a collection's watcher that runs on a period (draining done reports, renewing
the lease, the heartbeat, checking resyncs, counting dead letters, reading the oplog window,
saving the checkpoint) and the pacing of the stream's reads have a named deadline here, in
monotonic seconds. A duty not yet armed is due at once.
"""

from __future__ import annotations

from collections.abc import Mapping


class Timers:
    def __init__(self, periods: Mapping[str, float]) -> None:
        self._periods = dict(periods)
        self._next: dict[str, float] = {}

    def due(self, name: str, now: float) -> bool:
        """True when the duty is due; it is then next due one period later."""
        if not self.ready(name, now):
            return False
        self.restart(name, now)
        return True

    def ready(self, name: str, now: float) -> bool:
        """Whether the duty is due, without restarting its period."""
        return now >= self._next.get(name, 0.0)

    def restart(self, name: str, now: float) -> None:
        """The duty was just done: next due one period from `now`."""
        self._next[name] = now + self._periods[name]

    def hold_until(self, name: str, when: float) -> None:
        """Not due before `when` (a deadline set by the caller, not a period)."""
        self._next[name] = when

    def left(self, name: str, now: float) -> float:
        """Seconds until the duty is due (0 when due)."""
        return max(0.0, self._next.get(name, 0.0) - now)

    def reset(self, *names: str) -> None:
        """Make these duties due at once (a stream that starts again)."""
        for name in names:
            self._next.pop(name, None)
