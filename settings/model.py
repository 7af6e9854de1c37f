"""What to sync: the validated shape of a stagesync configuration.

Every model forbids unknown keys, so a typo in the YAML file fails loudly instead of silently
falling back to a default. Validators raise plain ``ValueError``s; ``settings.loader`` turns
pydantic's error locations into the dotted key a user can find in their file.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.environments import (
    LONGEST_NAME,
    EnvironmentsSettings,
    check_environment_name,
)
from stagesync.settings.values import (
    DATABASE_NAME,
    DurationText,
    StrictModel,
    check_mongodb_uri,
    exactly_one,
    overlapping,
)


class ProductionSettings(StrictModel):
    """Production is only ever read; its URI may be a replica-set URI with credentials."""

    uri: str
    read_concern: Literal["local", "majority"] = "majority"

    @field_validator("uri")
    @classmethod
    def _uri_is_mongodb(cls, value: str) -> str:
        return check_mongodb_uri(value)


class StagingSettings(StrictModel):
    """Staging receives the merged documents and holds stagesync's own durable state."""

    uri: str
    write_concern: Literal["majority"] | Annotated[int, Field(ge=1)] = "majority"
    # Checkpoints, version counters, the dead-letter store and leases live here.
    state_db: str = "stagesync"

    @field_validator("uri")
    @classmethod
    def _uri_is_mongodb(cls, value: str) -> str:
        return check_mongodb_uri(value)

    @field_validator("state_db")
    @classmethod
    def _state_db_name(cls, value: str) -> str:
        if not DATABASE_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid MongoDB database name")
        return value


class WatcherSettings(StrictModel):
    """How the watcher batches, bounds and checkpoints what it reads."""

    batch_max_size: Annotated[int, Field(ge=1, le=10_000)] = 2000
    batch_max_wait_ms: Annotated[int, Field(ge=0, le=5_000)] = 20
    # While this many batches of a collection are in flight, new changes gather (up to
    # busy_batch_wait_ms) into bigger batches instead of queueing as small ones. Set it to
    # about the number of worker processes that consume the collection.
    max_inflight_batches: Annotated[int, Field(ge=1, le=1_000)] = 4
    busy_batch_wait_ms: Annotated[int, Field(ge=0, le=10_000)] = 250
    max_unapplied: Annotated[int, Field(ge=10)] = 20_000
    # The window's bound in flush groups, beside max_unapplied's in changes: past it the
    # watcher neither reads nor publishes until a group is done, so a queue can never fill
    # with thousands of small messages. Batching keeps far fewer in flight (while the workers
    # are busy only full batches join a queue that holds messages): a bound, not a target.
    max_inflight_groups: Annotated[int, Field(ge=1, le=10_000)] = 64
    inflight_timeout_seconds: Annotated[float, Field(gt=0)] = 600.0
    checkpoint_interval_seconds: Annotated[float, Field(gt=0)] = 1.0
    lease_seconds: Annotated[float, Field(ge=2)] = 15.0
    idle_sleep_ms: Annotated[int, Field(ge=1, le=1_000)] = 20
    # Least time between two fetches (getMores) of the change stream while the workers are
    # busy (max_inflight_batches in flight). A getMore returns as soon as any change is there,
    # so a reader that fetches again at once brings back a handful per round trip; waiting
    # brings back what gathered meanwhile, for the same cost. Changes gather for
    # busy_batch_wait_ms then anyway, so keep it below that; with workers that have room the
    # stream is read at once. 0 fetches again at once.
    stream_fetch_gap_ms: Annotated[int, Field(ge=0, le=10_000)] = 50
    # While the workers are busy, a change of a document that a batch in flight holds waits
    # in the watcher for that batch: two applies of one document then never race (the later
    # would re-plan, and write a version-only update). The price is lag on hot documents: up
    # to one more busy_batch_wait_ms. False publishes at once and lets the applies race.
    hold_changes_in_flight: bool = True
    # How the watcher follows production's index changes: `auto` reads the change stream's DDL
    # events where the server has them (MongoDB 6.0+) and polls `listIndexes` elsewhere;
    # `poll` always polls. Polls come every `index_poll_seconds` (45: a new production index
    # reaches staging within a minute, its build time aside).
    index_follow: Literal["auto", "poll"] = "auto"
    index_poll_seconds: Annotated[float, Field(gt=0, le=3600)] = 45.0
    # How often the watcher process reads production's oplog window (its first and last
    # entries and `$collStats`) for the headroom gauge, once for all its collections. On
    # MongoDB these are small reads; SecantusDB, the test server, decodes every oplog entry
    # for each of them while holding its storage lock (seconds at 100,000 entries, with every
    # other request waiting), so the bench reads it less often.
    oplog_check_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0


class WorkerSettings(StrictModel):
    """At-least-once delivery on Redis: how long a message may stay unacknowledged and how
    often a change is tried before it is dead-lettered."""

    visibility_timeout_seconds: Annotated[int, Field(ge=10)] = 300
    task_time_limit_seconds: Annotated[int, Field(ge=5)] = 240
    max_deliveries: Annotated[int, Field(ge=1, le=100)] = 3
    max_retries: Annotated[int, Field(ge=0, le=100)] = 8
    retry_backoff_max_seconds: Annotated[float, Field(gt=0)] = 60.0

    @model_validator(mode="after")
    def _below_visibility(self) -> WorkerSettings:
        # Redis redelivers a task whose countdown outlives the visibility timeout, and a task
        # that runs longer than it is handed to a second worker while the first still works.
        if self.retry_backoff_max_seconds >= self.visibility_timeout_seconds:
            raise ValueError(
                "retry_backoff_max_seconds: must stay below visibility_timeout_seconds"
            )
        if self.task_time_limit_seconds >= self.visibility_timeout_seconds:
            raise ValueError("task_time_limit_seconds: must stay below visibility_timeout_seconds")
        return self


class ScheduleEntry(StrictModel):
    """A job Celery beat runs: a full resync or a verification of one collection."""

    task: Literal["resync", "verify"]
    collection: str
    every: DurationText | None = None  # a duration such as 6h or 1d
    cron: str | None = None  # five crontab fields, e.g. "0 3 * * *" (UTC)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) != 5:
            raise ValueError(f"{value!r} is not five crontab fields (minute hour day month "
                             "weekday)")
        return value

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleEntry:
        exactly_one(("'every'", self.every), ("'cron'", self.cron))
        return self


class StatusSettings(StrictModel):
    lag_threshold_seconds: Annotated[float, Field(gt=0)] = 60.0
    stalled_after_seconds: Annotated[float, Field(gt=0)] = 120.0


class MetricsSettings(StrictModel):
    # Watcher port; each `celery worker` serves all its pool processes on the first free port
    # from worker_port_base (see README, "Monitoring"). 0 disables either.
    watcher_port: Annotated[int, Field(ge=0, le=65535)] = 0
    worker_port_base: Annotated[int, Field(ge=0, le=65535)] = 0
    # Where workers keep their multiprocess metric files, one sub-directory per Celery node
    # name, emptied at start ("": $TMPDIR/stagesync-metrics-UID).
    worker_dir: str = ""


class Settings(BaseSettings):
    """The whole configuration; see README, "Configuration reference".

    Values come from keyword arguments (the YAML file, see `settings.loader`) overridden by
    `STAGESYNC_*` environment variables, `__` separating nested keys.
    """

    model_config = SettingsConfigDict(
        env_prefix="STAGESYNC_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    prod: ProductionSettings
    staging: StagingSettings
    redis_url: str = "redis://127.0.0.1:6379/0"
    pii_secret: SecretStr | None = None
    collections: list[CollectionSettings]
    watcher: WatcherSettings = WatcherSettings()
    worker: WorkerSettings = WorkerSettings()
    status: StatusSettings = StatusSettings()
    metrics: MetricsSettings = MetricsSettings()
    schedule: list[ScheduleEntry] = []
    # Named short-lived stagings beside the main one (README, "Environments").
    environments: EnvironmentsSettings = EnvironmentsSettings()
    # Accept prod.read_concern local or a staging.write_concern below majority (see
    # `unsafe_concerns`); `check` and `status` say so while it is set.
    allow_unsafe_concerns: bool = False
    # Most values in one `$in` of a lookup by a list of ids or keys (`deployments.in_lists`).
    # MongoDB plans a long list in one round trip; the test server's `$in` is quadratic, so
    # the tests and the benchmark set 200.
    in_list_max: Annotated[int, Field(ge=1, le=100_000)] = 1000

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("collections")
    @classmethod
    def _collections(cls, value: list[CollectionSettings]) -> list[CollectionSettings]:
        if not value:
            raise ValueError("must configure at least one collection")
        return value

    @model_validator(mode="after")
    def _safe_concerns(self) -> Settings:
        """A rolled-back write produces no change event, so whatever staging took from it
        stays wrong for good: refuse what allows one unless explicitly accepted."""
        if not self.allow_unsafe_concerns:
            problems = self.unsafe_concerns()
            if problems:
                raise ValueError(f"{problems[0]}; or set allow_unsafe_concerns: true to accept "
                                 "that")
        return self

    def unsafe_concerns(self) -> list[str]:
        """Each read or write concern in force that lets a rolled-back write reach staging
        or undo a staging write after the checkpoint moved past it, naming its key."""
        found = []
        if self.prod.read_concern != "majority":
            found.append(
                f"prod.read_concern: {self.prod.read_concern!r} reads production writes that a "
                "failover can roll back, and a rollback produces no change event, so staging "
                "would keep them for good; use 'majority'"
            )
        if self.staging.write_concern != "majority":
            found.append(
                f"staging.write_concern: {self.staging.write_concern!r} acknowledges writes "
                "before a majority holds them, so a failover can roll them back after the "
                "checkpoint moved past their changes; use 'majority'"
            )
        return found

    @model_validator(mode="after")
    def _across_collections(self) -> Settings:
        """Checks that need more than one collection, or the collection and the rest."""
        for kind in ("name", "target"):
            seen: set[str] = set()
            for index, collection in enumerate(self.collections):
                item = getattr(collection, kind)
                if item in seen:
                    raise ValueError(f"{_key(index, collection, kind)}: {item!r} is configured "
                                     "twice")
                seen.add(item)
        names = {collection.name for collection in self.collections}
        for index, entry in enumerate(self.schedule):
            if entry.collection not in names:
                raise ValueError(f"schedule[{index}].collection: no collection named "
                                 f"{entry.collection!r}")
        for index, collection in enumerate(self.collections):
            for path, referenced in collection.references.items():
                if referenced not in names:
                    raise ValueError(
                        f"{_key(index, collection, 'references.' + path)}: no collection named "
                        f"{referenced!r} (known: {', '.join(sorted(names))})"
                    )
        follows = _follow_cycle(self.collections)
        if follows:
            raise ValueError("collections: subsets follow each other in a cycle ("
                             + " -> ".join(follows) + "); one of them needs percent or none")
        for index, collection in enumerate(self.collections):
            if collection.subset and collection.subset.percent is not None and not (
                    self.pii_secret and self.pii_secret.get_secret_value()):
                raise ValueError(f"{_key(index, collection, 'subset.percent')}: the sample is "
                                 "a keyed hash of the _id and needs a non-empty pii_secret "
                                 "(set STAGESYNC_PII_SECRET)")
        cycle = _key_reference_cycle(self.collections)
        if cycle:
            raise ValueError(
                "collections: business keys depend on each other through references ("
                + " -> ".join(cycle) + "); a key must not need the staging copy it identifies"
            )
        secret = self.pii_secret.get_secret_value() if self.pii_secret else ""
        for index, collection in enumerate(self.collections):
            if collection.target_db == self.staging.state_db:
                raise ValueError(f"{_key(index, collection, 'target')}: the database "
                                 f"{self.staging.state_db!r} is stagesync's own state database")
            for path, rule in collection.pii.items():
                if rule.keyed and not secret:
                    raise ValueError(
                        f"{_key(index, collection, 'pii.' + path)}: '{rule.kind}' needs a "
                        "non-empty pii_secret (set STAGESYNC_PII_SECRET)"
                    )
        return self

    @model_validator(mode="after")
    def _environment_databases(self) -> Settings:
        """Every environment name the rule allows must give valid database names."""
        for collection in self.collections:
            for name in ("a", LONGEST_NAME):
                database = self.environments.database_name(collection.target_db, name)
                if not DATABASE_NAME.fullmatch(database):
                    raise ValueError(
                        f"environments.database: {self.environments.database!r} gives "
                        f"{database!r} for {collection.target_db!r} and environment {name!r}, "
                        "not a valid MongoDB database name (at most 63 bytes, none of "
                        "/\\. \"$*<>:|?)"
                    )
        return self

    def environment_databases(self, environment: str) -> dict[str, str]:
        """Target database -> the environment's database for it. Refuses a bad name, and a
        name whose databases would be one of the main staging's or the state database."""
        check_environment_name(environment)
        own = {collection.target_db for collection in self.collections}
        own.add(self.staging.state_db)
        databases = {db: self.environments.database_name(db, environment)
                     for db in sorted({c.target_db for c in self.collections})}
        for db, database in databases.items():
            if database in own:
                raise ValueError(
                    f"environment {environment!r} would use the database {database!r} (from "
                    f"{db!r}), which is one of the main staging's own; choose another name"
                )
        if len(set(databases.values())) != len(databases):
            raise ValueError(f"environment {environment!r}: environments.database gives two "
                             "target databases the same name")
        return databases

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first so it overrides the file; no dotenv or secrets-dir magic.
        return (env_settings, init_settings)

    def collection(self, name: str) -> CollectionSettings:
        for collection in self.collections:
            if collection.name == name:
                return collection
        known = ", ".join(c.name for c in self.collections)
        raise KeyError(f"no collection named {name!r} in the configuration (known: {known})")

    def secret_bytes(self) -> bytes:
        return self.pii_secret.get_secret_value().encode() if self.pii_secret else b""


def _key(index: int, collection: CollectionSettings, field: str) -> str:
    return f"collections[{index}] ({collection.name}).{field}"


def _key_reference_cycle(collections: list[CollectionSettings]) -> list[str] | None:
    """A cycle of collections whose business keys include references to the next one.

    Keys are computed from production's values, so such keys are stable; but a collection
    whose key leads back to itself through references cannot be created in any order."""
    return _cycle({
        collection.name: {
            referenced for path, referenced in collection.references.items()
            if any(overlapping(path, key) for key in collection.business_key)
        } for collection in collections
    })


def _follow_cycle(collections: list[CollectionSettings]) -> list[str] | None:
    """Subsets that follow each other around: none of them could ever get a document in."""
    return _cycle({
        collection.name: {collection.references[collection.subset.follow]}
        if collection.subset and collection.subset.follow else set()
        for collection in collections
    })


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    for start in edges:
        trail = [start]
        stack = [(start, iter(sorted(edges[start])))]
        while stack:
            _, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                trail.pop()
            elif child == start:
                return [*trail, start]
            elif child not in trail and child in edges:
                trail.append(child)
                stack.append((child, iter(sorted(edges[child]))))
    return None


