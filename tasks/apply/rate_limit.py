"""Per-queue rate limits that hold across every worker, in documents per unit of time.

Celery's own `rate_limit` (and Flower's control of it) counts per worker process, so a queue
consumed by N workers would run N times faster than configured. The limit here is one shared
moving window in Redis, kept by the `limits` library. The effective rate is the runtime
override stored in staging (`state.rate_limits`: `stagesync ratelimit NAME RATE`, which
every worker reads again at its next apply, told by the change signal in Redis) or else the
configured `rate_limit`.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from limits import RateLimitItem
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from pymongo.database import Database
from stagesync.deployments.broker import ChangeSignal
from stagesync.protocol.names import (
    RATE_LIMIT_KEY_PREFIX,
    RATE_LIMITS_CHANGED_KEY,
    rate_limit_prefix,
)
from stagesync.settings.model import Settings
from stagesync.settings.values import parse_rate_limit
from stagesync.state.rate_limits import effective_rate

# An override is read again at least this often even when no change was announced (a
# command killed between its write and its announcement).
OVERRIDE_RECHECK_SECONDS = 30.0


class QueueRateLimiter:
    def __init__(
        self, settings: Settings, client: redis.Redis, state_db: Database[dict[str, Any]]
    ) -> None:
        self.settings = settings
        self.state_db = state_db
        pool = client.connection_pool
        self.limiter = MovingWindowRateLimiter(
            RedisStorage(settings.redis_url, connection_pool=pool, key_prefix=RATE_LIMIT_KEY_PREFIX)
        )
        self.signal = ChangeSignal(client, RATE_LIMITS_CHANGED_KEY)
        # collection -> (read again after, the change token it was read under, the item)
        self._cache: dict[str, tuple[float, bytes | None, RateLimitItem | None]] = {}

    def current_item(self, collection: str) -> RateLimitItem | None:
        token = self.signal.token()  # the limit is kept in Redis: no Redis, no apply anyway
        cached = self._cache.get(collection)
        if cached and cached[0] > time.monotonic() and cached[1] == token:
            return cached[2]
        rate, _ = effective_rate(self.settings, self.state_db, collection)
        item = parse_rate_limit(rate) if rate else None
        self._cache[collection] = (time.monotonic() + OVERRIDE_RECHECK_SECONDS, token, item)
        return item

    def acquire(self, collection: str, documents: int, max_wait: float = 120.0) -> float:
        """Block until `documents` tokens are granted; return the seconds spent waiting.

        A request is split into pieces no larger than one window's amount, since a larger one
        could never be granted.
        """
        waited = 0.0
        remaining = documents
        deadline = time.monotonic() + max_wait
        while remaining > 0:
            item = self.current_item(collection)
            if item is None:
                return waited
            piece = min(remaining, item.amount)
            if self.limiter.hit(item, rate_limit_prefix(collection), cost=piece):
                remaining -= piece
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"rate limit of {collection} did not grant tokens in time")
            reset_at, _ = self.limiter.get_window_stats(item, rate_limit_prefix(collection))
            pause = min(max(reset_at - time.time(), 0.01), 1.0)
            time.sleep(pause)
            waited += pause
        return waited
