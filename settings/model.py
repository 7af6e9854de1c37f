"""What to sync: the validated shape of a stagesync configuration.

Every model forbids unknown keys, so a typo in the YAML file fails loudly instead of silently
falling back to a default. Validators raise plain ``ValueError``s; ``settings.loader`` turns
pydantic's error locations into the dotted key a user can find in their file.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from limits import RateLimitItem, parse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from settings.durations import parse_duration
from settings.pii_rules import PiiRule, parse_pii_rule

# Queue names are `stagesync.<name>` and partitions `stagesync.<name>.<n>`, so a name must not
# contain a dot; Redis keys and Prometheus labels are built from it too.
COLLECTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
# MongoDB's own rules for database names (no `/\. "$*<>:|?`, at most 63 bytes).
DATABASE_NAME = re.compile(r'^[^/\\. "$*<>:|?\x00]{1,63}$')
RATE_UNITS = {"s": "second", "sec": "second", "m": "minute", "min": "minute", "h": "hour",
              "d": "day"}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProductionSettings(StrictModel):
    """Production is only ever read; its URI may be a replica-set URI with credentials."""

    uri: str
    read_concern: Literal["local", "majority"] = "majority"

    @field_validator("uri")
    @classmethod
    def _uri_is_mongodb(cls, value: str) -> str:
        return _check_mongodb_uri(value)


class StagingSettings(StrictModel):
    """Staging receives the merged documents and holds stagesync's own durable state."""

    uri: str
    write_concern: Literal["majority"] | Annotated[int, Field(ge=1)] = "majority"
    # Checkpoints, version counters, the dead-letter store and leases live here.
    state_db: str = "stagesync"

    @field_validator("uri")
    @classmethod
    def _uri_is_mongodb(cls, value: str) -> str:
        return _check_mongodb_uri(value)

    @field_validator("state_db")
    @classmethod
    def _state_db_name(cls, value: str) -> str:
        if not DATABASE_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid MongoDB database name")
        return value


class SubsetSettings(StrictModel):
    """Which production documents staging gets: a keyed-hash sample of `percent` of them, or
    those that reference (at `follow`, a declared reference) a document of the referenced
    collection's subset."""

    percent: Annotated[float, Field(gt=0, le=100)] | None = None
    follow: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SubsetSettings:
        if (self.percent is None) == (self.follow is None):
            raise ValueError("give exactly one of percent or follow")
        return self


class CollectionSettings(StrictModel):
    """One production collection mirrored into one staging collection."""

    name: str
    source: str
    target: str
    business_key: list[str]
    soft_delete_field: str = "deleted"
    staging_fields: list[str] = []
    pii: dict[str, PiiRule] = {}
    rate_limit: str | None = None
    partitions: Annotated[int, Field(ge=1, le=64)] = 1
    filter: dict[str, Any] | None = None
    schema_version_field: str | None = None
    accepted_schema_versions: list[int | str] | None = None
    purge_deleted_after: str | None = None
    resync_chunk_size: Annotated[int, Field(ge=10, le=50_000)] = 1000
    # `strict`: a production path that no `pii` rule, `allow` entry or business key classifies
    # is left out of staging and reported (README, "Personal data"); `open` copies it as is.
    pii_mode: Literal["open", "strict"] = "open"
    allow: list[str] = []  # paths known not to be personal data (whole subtrees)
    # `production`: a copy the sync creates takes production's `_id` where staging has it free,
    # so references between collections hold; `new`: every copy gets a fresh ObjectId.
    staging_ids: Literal["production", "new"] = "production"
    # Path -> logical name of another configured collection: the production `_id`s found there
    # (through arrays; a DBRef's `$id` too) are written as the staging `_id`s of their copies.
    references: dict[str, str] = {}
    # Only part of production: see SubsetSettings. Combines with `filter` (in when both say so).
    subset: SubsetSettings | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not COLLECTION_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} cannot name a queue: use letters, digits, '_' or '-', starting with a "
                "letter, no dots (queues are stagesync.<name> and stagesync.<name>.<n>)"
            )
        return value

    @field_validator("source", "target")
    @classmethod
    def _namespace(cls, value: str) -> str:
        database, _, collection = value.partition(".")
        if not collection:
            raise ValueError(f"{value!r} must be 'database.collection'")
        if not DATABASE_NAME.fullmatch(database):
            raise ValueError(f"{database!r} is not a valid MongoDB database name")
        if "$" in collection or "\x00" in collection or collection.startswith("system."):
            raise ValueError(f"{collection!r} is not a collection name MongoDB accepts")
        return value

    @field_validator("business_key")
    @classmethod
    def _business_key(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one field")
        for path in value:
            _check_field_path(path)
            if path == "_id" or path.startswith("_id."):
                raise ValueError(
                    "production _ids differ from staging _ids; use business fields instead"
                )
            if path.split(".")[0] == "_sync":
                raise ValueError("_sync is stagesync's own metadata")
        if len(set(value)) != len(value):
            raise ValueError("lists a field twice")
        return value

    @field_validator("soft_delete_field", "schema_version_field")
    @classmethod
    def _field_path(cls, value: str | None) -> str | None:
        if value is not None:
            _check_field_path(value)
            if value == "_id" or value.startswith("_sync"):
                raise ValueError(f"{value!r} is reserved")
        return value

    @field_validator("staging_fields")
    @classmethod
    def _staging_fields(cls, value: list[str]) -> list[str]:
        for path in value:
            _check_field_path(path)
            if path == "_id" or path.split(".")[0] == "_sync":
                raise ValueError(f"{path!r} is reserved")
        return value

    @field_validator("pii", mode="before")
    @classmethod
    def _pii(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        rules = {}
        for path, rule in value.items():
            _check_field_path(path)
            if path == "_id" or path.startswith("_id."):
                raise ValueError(
                    "_id cannot be masked: production _ids travel through Redis so changes can "
                    "be matched to documents; keep personal data out of _id"
                )
            rules[path] = parse_pii_rule(path, rule)
        return rules

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: list[str], info: ValidationInfo) -> list[str]:
        rules: dict[str, PiiRule] = info.data.get("pii") or {}
        for path in value:
            _check_field_path(path)
            if path.split(".")[0] == "_sync":
                raise ValueError(f"{path!r} is stagesync's own metadata")
            if path in rules:
                raise ValueError(f"{path!r} has a pii rule too; a path is either masked or "
                                 "allowed")
            masked_by = next((rule for rule in rules if path.startswith(rule + ".")), None)
            if masked_by is not None:
                raise ValueError(f"{path!r} lies under pii rule {masked_by!r}, which masks it "
                                 "as a whole")
        if len(set(value)) != len(value):
            raise ValueError("lists a path twice")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate_limit(value)
        return value

    @field_validator("purge_deleted_after")
    @classmethod
    def _purge_after(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CollectionSettings:
        if self.source == self.target:
            raise ValueError(
                f"target: must differ from source ({self.source}); a staging namespace that "
                "mirrors production's makes a swapped URI write into production"
            )
        for path in self.business_key:
            rule = self.pii.get(path)
            if rule is not None and rule.kind != "hash":
                raise ValueError(
                    f"pii.{path}: business-key fields may only use 'hash' ('{rule.kind}' "
                    + ("collapses keys" if rule.kind in ("drop", "redact", "null")
                       else "values can collide and merge two records") + ")"
                )
            for rule_path in self.pii:
                if path.startswith(rule_path + "."):
                    raise ValueError(
                        f"pii.{rule_path}: masks business-key field {path!r} as a whole; put "
                        f"a 'hash' rule on {path!r} and rules on the other fields instead"
                    )
            if path in self.staging_fields:
                raise ValueError(f"staging_fields: {path!r} is part of the business key")
        for path in self.references:
            try:
                _check_field_path(path)
            except ValueError as error:
                raise ValueError(f"references.{path}: {error}") from None
            for rule_path in self.pii:
                if _overlapping(path, rule_path):
                    raise ValueError(
                        f"references.{path}: pii rule {rule_path!r} would mask the referenced "
                        "_ids, which then match nothing; a reference holds _ids only"
                    )
            for staging_path in self.staging_fields:
                if _overlapping(path, staging_path):
                    raise ValueError(f"references.{path}: overlaps staging field "
                                     f"{staging_path!r}, which production never writes")
        follow = self.subset.follow if self.subset else None
        if follow is not None and follow not in self.references:
            declared = ", ".join(sorted(self.references)) or "none"
            raise ValueError(f"subset.follow: {follow!r} is not a declared reference "
                             f"(references: {declared})")
        reserved = {self.soft_delete_field, self.schema_version_field}
        for path in self.staging_fields:
            if path in reserved:
                raise ValueError(f"staging_fields: {path!r} is managed by stagesync")
        if self.accepted_schema_versions is not None and self.schema_version_field is None:
            raise ValueError("accepted_schema_versions: needs schema_version_field")
        return self

    @property
    def queues(self) -> list[str]:
        """Every Celery queue of this collection, partitions included."""
        if self.partitions == 1:
            return [f"stagesync.{self.name}"]
        return [f"stagesync.{self.name}.{n}" for n in range(self.partitions)]

    @property
    def source_db(self) -> str:
        return self.source.partition(".")[0]

    @property
    def source_collection(self) -> str:
        return self.source.partition(".")[2]

    @property
    def target_db(self) -> str:
        return self.target.partition(".")[0]

    @property
    def target_collection(self) -> str:
        return self.target.partition(".")[2]

    def rate_limit_item(self) -> RateLimitItem | None:
        return parse_rate_limit(self.rate_limit) if self.rate_limit else None

    def purge_after(self) -> timedelta | None:
        return parse_duration(self.purge_deleted_after) if self.purge_deleted_after else None


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
    inflight_timeout_seconds: Annotated[float, Field(gt=0)] = 600.0
    checkpoint_interval_seconds: Annotated[float, Field(gt=0)] = 1.0
    lease_seconds: Annotated[float, Field(ge=2)] = 15.0
    idle_sleep_ms: Annotated[int, Field(ge=1, le=1_000)] = 20


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
    every: str | None = None  # a duration such as 6h or 1d
    cron: str | None = None  # five crontab fields, e.g. "0 3 * * *" (UTC)

    @field_validator("every")
    @classmethod
    def _every(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) != 5:
            raise ValueError(f"{value!r} is not five crontab fields (minute hour day month "
                             "weekday)")
        return value

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleEntry:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of 'every' or 'cron'")
        return self


class StatusSettings(StrictModel):
    lag_threshold_seconds: Annotated[float, Field(gt=0)] = 60.0
    stalled_after_seconds: Annotated[float, Field(gt=0)] = 120.0


class MetricsSettings(StrictModel):
    # Watcher port; each worker child process serves on the first free port from
    # worker_port_base (see README, "Metrics"). 0 disables either.
    watcher_port: Annotated[int, Field(ge=0, le=65535)] = 0
    worker_port_base: Annotated[int, Field(ge=0, le=65535)] = 0


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


def parse_rate_limit(value: str) -> RateLimitItem:
    """Parse `2000/s`, `120/min` or any `limits` expression into one rate limit item."""
    text = value.strip()
    match = re.fullmatch(r"(\d+)\s*/\s*(\d*)\s*([A-Za-z]+)", text)
    if match:
        amount, multiple, unit = match.groups()
        unit = RATE_UNITS.get(unit.lower(), unit)
        text = f"{amount}/{multiple}{unit}" if multiple else f"{amount}/{unit}"
    try:
        item = parse(text)
    except ValueError as error:
        raise ValueError(f"{value!r} is not a rate such as '2000/s' or '100/minute'") from error
    if item.amount < 1:
        raise ValueError(f"{value!r} allows nothing")
    return item


def _overlapping(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _key_reference_cycle(collections: list[CollectionSettings]) -> list[str] | None:
    """A cycle of collections whose business keys include references to the next one.

    Keys are computed from production's values, so such keys are stable; but a collection
    whose key leads back to itself through references cannot be created in any order."""
    return _cycle({
        collection.name: {
            referenced for path, referenced in collection.references.items()
            if any(_overlapping(path, key) for key in collection.business_key)
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


def _check_field_path(path: str) -> None:
    if not path or any(not part or part.startswith("$") for part in path.split(".")):
        raise ValueError(f"{path!r} is not a field path such as 'customer.email'")


def _check_mongodb_uri(value: str) -> str:
    if not value.startswith(("mongodb://", "mongodb+srv://")):
        raise ValueError("must start with mongodb:// or mongodb+srv://")
    return value
