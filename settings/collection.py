"""One collection's part of the configuration: what is copied, how it is keyed and masked.

Validators raise plain ``ValueError``s; ``settings.loader`` turns pydantic's error locations
into the dotted key a user can find in their file (`collections[0] (orders).pii`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from stagesync.settings.durations import parse_duration
from stagesync.settings.pii_rules import PiiRule, parse_pii_rule
from stagesync.settings.values import (
    COLLECTION_NAME,
    DATABASE_NAME,
    DurationText,
    RateText,
    StrictModel,
    check_field_path,
    exactly_one,
    overlapping,
)


class SubsetSettings(StrictModel):
    """Which production documents staging gets: a keyed-hash sample of `percent` of them, or
    those that reference (at `follow`, a declared reference) a document of the referenced
    collection's subset."""

    percent: Annotated[float, Field(gt=0, le=100)] | None = None
    follow: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SubsetSettings:
        exactly_one(("percent", self.percent), ("follow", self.follow))
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
    rate_limit: RateText | None = None
    partitions: Annotated[int, Field(ge=1, le=64)] = 1
    filter: dict[str, Any] | None = None
    schema_version_field: str | None = None
    accepted_schema_versions: list[int | str] | None = None
    purge_deleted_after: DurationText | None = None
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
    # `mirror`: production's secondary indexes are kept in staging, translated so that the sync
    # never breaks on them (README, "Indexes in staging"); `none`: only stagesync's own.
    indexes: Literal["mirror", "none"] = "mirror"
    # Mirrored TTL indexes keep production's expiry (hard deletes in staging) when true.
    mirror_ttl: bool = False

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
            check_field_path(path)
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
            check_field_path(value)
            if value == "_id" or value.startswith("_sync"):
                raise ValueError(f"{value!r} is reserved")
        return value

    @field_validator("staging_fields")
    @classmethod
    def _staging_fields(cls, value: list[str]) -> list[str]:
        for path in value:
            check_field_path(path)
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
            check_field_path(path)
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
            check_field_path(path)
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
                check_field_path(path)
            except ValueError as error:
                raise ValueError(f"references.{path}: {error}") from None
            for rule_path in self.pii:
                if overlapping(path, rule_path):
                    raise ValueError(
                        f"references.{path}: pii rule {rule_path!r} would mask the referenced "
                        "_ids, which then match nothing; a reference holds _ids only"
                    )
            for staging_path in self.staging_fields:
                if overlapping(path, staging_path):
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
        if self.mirror_ttl and self.indexes != "mirror":
            raise ValueError("mirror_ttl: needs indexes: mirror (no index is mirrored with "
                             "indexes: none)")
        return self

    @property
    def target_db(self) -> str:
        return self.target.partition(".")[0]

    @property
    def target_collection(self) -> str:
        return self.target.partition(".")[2]

    def purge_after(self) -> timedelta | None:
        return parse_duration(self.purge_deleted_after) if self.purge_deleted_after else None
