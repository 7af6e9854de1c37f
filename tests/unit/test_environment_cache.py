"""The workers' cache of the environment store: it reads the store when the change token
moved, at least every `seconds`, and at every check while the token cannot be read."""

from __future__ import annotations

from stagesync.state.environments import Environment, EnvironmentCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def cache_of(token: list[object], clock: Clock, loads: list[int]) -> EnvironmentCache:
    def load() -> list[Environment]:
        loads.append(1)
        return []

    def read_token() -> object:
        if isinstance(token[0], Exception):
            raise token[0]
        return token[0]

    return EnvironmentCache(load, read_token, seconds=30.0, clock=clock)


def test_an_unchanged_token_reads_the_store_once_per_period() -> None:
    token: list[object] = [b"a"]
    clock, loads = Clock(), []
    cache = cache_of(token, clock, loads)
    for moment in (0.0, 1.0, 29.9):
        clock.now = moment
        cache.current()
    assert len(loads) == 1
    clock.now = 30.0  # a writer that died before announcing is seen this late
    cache.current()
    assert len(loads) == 2


def test_a_new_token_is_seen_at_the_next_check() -> None:
    token: list[object] = [None]  # nothing announced yet (or Redis was emptied)
    clock, loads = Clock(), []
    cache = cache_of(token, clock, loads)
    cache.current()
    token[0] = b"b"
    cache.current()
    cache.current()
    assert len(loads) == 2
    token[0] = None  # Redis restarted empty: the token differs, so read again
    cache.current()
    assert len(loads) == 3


def test_an_unreadable_token_reads_the_store_every_time() -> None:
    token: list[object] = [ConnectionError("redis down")]
    clock, loads = Clock(), []
    cache = cache_of(token, clock, loads)
    for _ in range(3):
        cache.current()
    assert len(loads) == 3
    token[0] = b"c"
    cache.current()
    cache.current()
    assert len(loads) == 4


def test_refresh_reads_at_the_next_check() -> None:
    token: list[object] = [b"a"]
    clock, loads = Clock(), []
    cache = cache_of(token, clock, loads)
    cache.current()
    cache.refresh()
    cache.current()
    assert len(loads) == 2
