"""`stagesync status [--json] [--watch]`: is every collection healthy, and how far behind?

Per collection: lag (age of the oldest change read but not yet applied; 0 when nothing is
pending, so an idle collection is healthy), last applied change, counters, queue depths,
the rate limit in force ("unlimited" when none), checkpoint time and age, oplog headroom (a
countdown only once the oplog drops entries: "unbounded" for an uncapped oplog, "not full"
while a capped one has dropped nothing; "unknown", with the reason, where production's oplog
cannot be read), whether a watcher streams it, the last error, and
the paths a strict collection leaves out
(`unclassified_paths`, shown as a warning; they do not change health), and index drift against
production (`indexes`: missing, extra, changed, failed, translated, skipped; problems shown as
notes; they do not change health either).
Environments (short-lived stagings beside the main one) follow in a table of their own
(cli.environment_status), and under `environments` in --json; they do not change the exit
code: the main staging's health is what status answers for.
Health (exit code 1 when any is not "ok"):
- down: no watcher has reported for this collection recently;
- stalled: changes are pending and nothing was applied for `status.stalled_after_seconds`;
- lagging: lag above `status.lag_threshold_seconds`.
Flower shows workers and tasks; this shows replication itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from stagesync.cli.environment_status import environments_table, read_environments
from stagesync.cli.index_drift import drift_of, drift_warnings
from stagesync.deployments.broker import queue_depth
from stagesync.deployments.production import OplogWindow, ProductionReader
from stagesync.deployments.staging import connect_staging
from stagesync.protocol.names import stats_key, watcher_key
from stagesync.protocol.routing import queues_of
from stagesync.rules.document import Document
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.model import Settings
from stagesync.state.checkpoints import CHECKPOINT_AT, HOST, OWNER, RESYNC_PENDING, read_all
from stagesync.state.database import state_database
from stagesync.state.dead_letters import DeadLetterStore
from stagesync.state.pending_references import pending_count
from stagesync.state.pii_state import masking_drift
from stagesync.state.rate_limits import effective_rate
from stagesync.state.resync_progress import REASON, STATE, load
from stagesync.state.unclassified_paths import unclassified_report, unclassified_warning
from stagesync.state.verifications import last_verification

HEARTBEAT_FRESH_SECONDS = 10.0
STREAM_COUNTERS = ("read", "enqueued", "created", "updated", "unchanged", "soft_deleted",
                   "tombstoned", "outside", "superseded", "released", "dead_lettered")


class StatusReader:
    """Reads every collection's status. `timeout_seconds` bounds each read (pymongo's
    client-side `timeoutMS`, Redis socket timeouts), so that a busy server makes a read fail
    fast instead of holding a live view: the view then shows its last rows, marked stale."""

    def __init__(self, settings: Settings, timeout_seconds: float = 5.0,
                 slow_every_seconds: float = 30.0) -> None:
        self.settings = settings
        # What changes slowly and can cost a server a scan (the oplog's oldest entry and fill
        # on some servers, size estimates) is read at most this often; see `_slowly`.
        self.slow_every_seconds = slow_every_seconds
        self._slow: dict[str, tuple[float, Any]] = {}
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=timeout_seconds,
                                          socket_connect_timeout=timeout_seconds)
        bounded = {"serverSelectionTimeoutMS": int(timeout_seconds * 1000),
                   "timeoutMS": int(timeout_seconds * 1000)}
        self.staging = connect_staging(settings.staging, **bounded)
        self.state_db = state_database(self.staging, settings.staging)
        self.production = ProductionReader(settings.prod, **bounded)
        # Where the environments live: the staging deployment, or `environments.uri`.
        uri = settings.environments.uri
        self.environment_client: MongoClient[Document] = self.staging if uri is None else \
            connect_staging(settings.staging.model_copy(update={"uri": uri}), **bounded)

    def close(self) -> None:
        self.redis.close()
        if self.environment_client is not self.staging:
            self.environment_client.close()
        self.staging.close()
        self.production.close()

    def collect(self) -> list[dict[str, Any]]:
        now = time.time()
        records = read_all(self.state_db)
        oplog = self._slowly("oplog", self.production.oplog_window)
        dead_letters = DeadLetterStore(self.state_db)
        return [self._one(c, records.get(c.name, {}), dead_letters, oplog, now)
                for c in self.settings.collections]

    def collect_environments(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every environment, with the lag of `rows` (the collections' rows just read)."""
        return read_environments(self.settings, self.state_db, self.environment_client,
                                 {row["collection"]: row["lag_seconds"] for row in rows},
                                 self._slowly)

    def _one(self, collection: CollectionSettings, record: dict[str, Any],
             dead_letters: DeadLetterStore, oplog: OplogWindow, now: float
             ) -> dict[str, Any]:
        heartbeat = _decode(self.redis.hgetall(watcher_key(collection.name)))
        stats = _decode(self.redis.hgetall(stats_key(collection.name)))
        alive = _float(heartbeat.get("heartbeat")) > now - HEARTBEAT_FRESH_SECONDS
        oldest = _float(heartbeat.get("oldest_pending"))
        lag = max(0.0, now - oldest) if (alive and oldest) else 0.0
        last_applied = _float(stats.get("last_applied_at")) or None
        checkpoint_at = record.get(CHECKPOINT_AT)
        checkpoint_age = (datetime.now(UTC) - _aware(checkpoint_at)).total_seconds() \
            if isinstance(checkpoint_at, datetime) else None
        rate, rate_source = effective_rate(self.settings, self.state_db, collection.name)
        queues = {q: queue_depth(self.redis, q) for q in queues_of(collection)}
        pending = int(_float(heartbeat.get("unapplied")))
        resync = record.get(RESYNC_PENDING)
        unclassified = unclassified_report(self.state_db, collection)
        return {
            "collection": collection.name,
            "health": self._health(alive, pending, lag, last_applied, now),
            "watcher": {"alive": alive, "state": heartbeat.get("state") if alive else "down",
                        "owner": record.get(OWNER), "host": record.get(HOST),
                        "idle_at": _float(heartbeat.get("idle_at")) or None},
            "lag_seconds": round(lag, 3),
            "pending_changes": pending,
            "last_applied_at": _iso(last_applied),
            "counters": {name: int(_float(stats.get(name))) for name in STREAM_COUNTERS},
            "resync_counters": {k.split(":", 1)[1]: int(_float(v)) for k, v in stats.items()
                                if k.startswith("resync:")},
            "dead_letters": dead_letters.count(collection.name),
            "queues": queues,
            "queue_depth": sum(queues.values()),
            "rate_limit": {"rate": rate, "source": rate_source},
            "checkpoint_at": checkpoint_at.isoformat() if isinstance(checkpoint_at, datetime)
            else None,
            "checkpoint_age_seconds": round(checkpoint_age, 1)
            if checkpoint_age is not None else None,
            **_oplog_fields(oplog, checkpoint_age),
            "resync": self._resync(resync) if resync else None,
            "last_verify": last_verification(self.state_db, collection.name),
            "last_error": heartbeat.get("last_error") or None,
            "pii_mode": collection.pii_mode,
            # References written with production's value until their copy arrives.
            "pending_references": pending_count(self.state_db, collection.name)
            if collection.references else 0,
            "documents": self._documents(collection),
            "subset": collection.subset.model_dump(exclude_none=True)
            if collection.subset else None,
            "unclassified_paths": unclassified["paths"],
            "indexes": self._indexes(collection),
            "warnings": [w for w in [masking_drift(self.state_db, self.settings, collection),
                                     unclassified_warning(unclassified)] if w],
        }

    def _health(self, alive: bool, pending: int, lag: float, last_applied: float | None,
                now: float) -> str:
        stalled_after = self.settings.status.stalled_after_seconds
        if not alive:
            return "down"
        if pending and (last_applied is None or now - last_applied > stalled_after) and \
                lag > stalled_after:
            return "stalled"
        if lag > self.settings.status.lag_threshold_seconds:
            return "lagging"
        return "ok"

    def _documents(self, collection: CollectionSettings) -> dict[str, Any]:
        """Sizes from metadata (no scan): with a filter or subset, staging holds a share."""
        return {
            "production_estimate": self._slowly(
                f"production:{collection.name}",
                self.production.collection(collection).estimated_count),
            "staging_estimate": self._slowly(
                f"staging:{collection.name}", self.staging[collection.target_db][
                    collection.target_collection].estimated_document_count),
        }

    def _slowly(self, key: str, read: Callable[[], Any]) -> Any:
        """`read()`, or its answer from less than `slow_every_seconds` ago. The oplog window
        only grows between reads, so a cached one understates headroom, never overstates."""
        now = time.monotonic()
        cached = self._slow.get(key)
        if cached is not None and now - cached[0] < self.slow_every_seconds:
            return cached[1]
        value = read()
        self._slow[key] = (now, value)
        return value

    def _indexes(self, collection: CollectionSettings) -> dict[str, Any]:
        """Index drift against production: missing, extra, changed, failed, translated,
        skipped (cli.index_drift)."""
        return drift_of(self.settings, collection, self.production, self.staging)

    def _resync(self, resync_id: str) -> dict[str, Any]:
        record = load(self.state_db, resync_id) or {}
        return {"id": resync_id, "state": record.get(STATE), "reason": record.get(REASON)}


@dataclass(frozen=True)
class _Column:
    header: str
    cell: Callable[[dict[str, Any]], str]
    wide: bool = False  # shown only with --wide


def _applied(row: dict[str, Any]) -> str:
    counters = row["counters"]
    return str(sum(v for k, v in counters.items() if k not in ("read", "enqueued",
                                                               "dead_lettered")))


def _health(row: dict[str, Any]) -> str:
    colour = {"ok": "green", "lagging": "yellow"}.get(row["health"], "red")
    return f"[{colour}]{row['health']}[/{colour}]"


def _rate(row: dict[str, Any]) -> str:
    rate = row["rate_limit"]
    return f"{rate['rate']} ({rate['source']})" if rate["rate"] else "unlimited"


# The essentials fit 100 columns, where status is read in terminals and CI logs (13 columns
# needed about 150); the rest come with --wide, as `kubectl get -o wide` does. --json has all.
COLUMNS = (
    _Column("collection", lambda row: row["collection"]),
    _Column("health", _health),
    _Column("watcher", lambda row: row["watcher"]["state"], wide=True),
    _Column("lag s", lambda row: f"{row['lag_seconds']:.1f}"),
    _Column("pending", lambda row: str(row["pending_changes"])),
    _Column("read", lambda row: str(row["counters"]["read"]), wide=True),
    _Column("applied", _applied, wide=True),
    _Column("dead", lambda row: str(row["dead_letters"])),
    _Column("queue", lambda row: _queues(row["queues"]), wide=True),
    _Column("rate limit", _rate, wide=True),
    _Column("checkpoint age", lambda row: _seconds(row["checkpoint_age_seconds"]), wide=True),
    _Column("oplog headroom", lambda row: _headroom(row), wide=True),
    _Column("last applied", lambda row: (row["last_applied_at"] or "-")[11:19]),
)


def render(rows: list[dict[str, Any]], unsafe_concerns: Sequence[str] = (),
           stale: str | None = None, wide: bool = False,
           environments: Sequence[dict[str, Any]] = ()) -> Group:
    """The status table; its title carries the time it was drawn, and `stale` (why and
    since when the rows are old) when the last read did not answer in time. The
    environments' table follows when there are any."""
    title = f"stagesync status  {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"
    if stale:
        title += f"  [yellow](stale: {stale})[/yellow]"
    columns = [column for column in COLUMNS if wide or not column.wide]
    table = Table(title=title)
    for column in columns:
        # A long name folds onto a second line rather than being cut to "co…".
        table.add_column(column.header, overflow="fold" if column.header == "collection"
                         else "ellipsis")
    notes: list[str] = []
    for row in rows:
        table.add_row(*(column.cell(row) for column in columns))
        if row["resync"]:
            notes.append(f"{row['collection']}: resync {row['resync']['id']} "
                         f"{row['resync']['state']} ({row['resync']['reason']})")
        if row["last_verify"] and not row["last_verify"]["equal"]:
            notes.append(f"{row['collection']}: last scheduled verify found "
                         f"{row['last_verify']['mismatched']} mismatched document(s)")
        if row["last_error"]:
            notes.append(f"{row['collection']}: last error: {row['last_error']}")
        notes.extend(f"{row['collection']}: {warning}" for warning in row["warnings"])
        if row["subset"]:
            documents = row["documents"]
            notes.append(f"{row['collection']}: subset {row['subset']}: staging holds about "
                         f"{documents['staging_estimate']} of about "
                         f"{documents['production_estimate']} production documents")
        notes.extend(_index_notes(row))
        if row["pending_references"]:
            notes.append(f"{row['collection']}: {row['pending_references']} reference(s) "
                         "waiting for their referenced copy")
    reasons = dict.fromkeys(r["oplog_unknown_because"] for r in rows if r["oplog_unknown_because"])
    notes.extend(f"oplog headroom unknown: {reason}" for reason in reasons)
    notes.extend(f"allow_unsafe_concerns is set: {concern}" for concern in unsafe_concerns)
    if environments:
        return Group(table, *notes, environments_table(environments, wide))
    return Group(table, *notes)


class StatusPoller:
    """Reads the status in a thread of its own, every `interval` seconds, with each read
    bounded by `timeout_seconds`; a live view draws `renderable()` at its own pace. A view
    thus never waits on a server: when reads fail or lag, it shows the last rows it has,
    marked stale with their age and the reason."""

    def __init__(self, settings: Settings, interval: float = 2.0, timeout_seconds: float = 2.0,
                 unsafe_concerns: Sequence[str] = (), wide: bool = False) -> None:
        self.settings = settings
        self.wide = wide
        self.interval = interval
        self.timeout_seconds = timeout_seconds
        self.unsafe_concerns = unsafe_concerns
        self._rows: list[dict[str, Any]] = []
        self._environments: list[dict[str, Any]] = []
        self._read_at: float | None = None  # when the read behind `_rows` started
        self._error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="status-poller", daemon=True)

    def __enter__(self) -> StatusPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout_seconds * 4 + 5)

    def _run(self) -> None:
        reader = StatusReader(self.settings, timeout_seconds=self.timeout_seconds)
        try:
            while not self._stop.is_set():
                started = time.time()
                try:
                    rows = reader.collect()
                    environments = reader.collect_environments(rows)
                except Exception as error:  # shown as the reason it is stale
                    with self._lock:
                        self._error = _reason(error)
                else:
                    with self._lock:
                        self._rows, self._read_at, self._error = rows, started, None
                        self._environments = environments
                self._stop.wait(max(0.0, self.interval - (time.time() - started)))
        finally:
            reader.close()

    def snapshot(self) -> tuple[list[dict[str, Any]], str | None]:
        """The last rows read, and why they are stale (None while fresh)."""
        with self._lock:
            rows, read_at, error = self._rows, self._read_at, self._error
        if read_at is None:
            return rows, "no status read yet" + (f" ({error})" if error else "")
        age = time.time() - read_at
        if error or age > max(3 * self.interval, 3.0):
            return rows, f"read {age:.0f}s ago" + (f", then {error}" if error else "")
        return rows, None

    def renderable(self) -> Group:
        rows, stale = self.snapshot()
        with self._lock:
            environments = self._environments
        return render(rows, self.unsafe_concerns, stale, self.wide, environments)


def _reason(error: Exception) -> str:
    """The kind of failure only: messages can quote server text."""
    if isinstance(error, PyMongoError) and error.timeout:
        return "a server did not answer in time"
    return type(error).__name__


def run_status(settings: Settings, json_output: bool, watch_live: bool, interval: float,
               console: Console, wide: bool = False) -> int:
    # Only listed while allowed: otherwise the configuration would not have loaded.
    unsafe = settings.unsafe_concerns()
    if watch_live:
        poller = StatusPoller(settings, interval=interval,
                              timeout_seconds=max(1.0, min(interval, 5.0)),
                              unsafe_concerns=unsafe, wide=wide)
        with poller, Live(get_renderable=poller.renderable, console=console,
                          refresh_per_second=2):
            try:
                while True:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
    reader = StatusReader(settings)
    try:
        rows = reader.collect()
        environments = reader.collect_environments(rows)
    finally:
        reader.close()
    if json_output:
        console.print_json(json.dumps({"collections": rows, "environments": environments,
                                       "unsafe_concerns": unsafe}))
    elif not watch_live:
        console.print(render(rows, unsafe, wide=wide, environments=environments))
    return 0 if all(row["health"] == "ok" for row in rows) else 1


def _index_notes(row: dict[str, Any]) -> list[str]:
    """Index drift worth a line: missing, extra, changed, failed, demoted, and which unique
    indexes staging holds non-unique (the JSON has it all)."""
    return drift_warnings(row["collection"], row.get("indexes") or {}, problems_only=True,
                          notes=True)


def _queues(depths: dict[str, int]) -> str:
    """`12`, or per partition `p0:12 p1:3`."""
    if len(depths) == 1:
        return str(next(iter(depths.values())))
    return " ".join(f"p{queue.rsplit('.', 1)[-1]}:{depth}" for queue, depth in depths.items())


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _float(value: str | None) -> float:
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat() if epoch else None


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}s"


def _headroom(row: dict[str, Any]) -> str:
    """Seconds, "unbounded" or "not full" where nothing falls off the oplog yet, "unknown"
    when the oplog cannot be read (the reason goes in a note), or "-" before the first
    checkpoint."""
    if row["oplog_headroom_seconds"] is None and row["oplog_unknown_because"]:
        return "unknown"
    history = row.get("oplog_history")
    if history == "unbounded":
        return "unbounded"
    if history == "not_full":
        return "not full"
    return _seconds(row["oplog_headroom_seconds"])


def _oplog_fields(oplog: OplogWindow, checkpoint_age: float | None) -> dict[str, Any]:
    return {
        "oplog_window_seconds": oplog.seconds,
        # A countdown only once the oplog drops entries: "unbounded" (not capped) and
        # "not_full" (nothing dropped yet) have no headroom in seconds to show.
        "oplog_history": oplog.history,
        "oplog_headroom_seconds": round(oplog.seconds - checkpoint_age, 1)
        if oplog.seconds is not None and checkpoint_age is not None
        and oplog.history not in ("unbounded", "not_full") else None,
        # Why the headroom is unknown (None when the oplog could be read).
        "oplog_unknown_because": oplog.unknown_because,
    }


