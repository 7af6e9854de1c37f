"""Production's indexes translated for staging, and the plan that makes staging match
(rules.index_translation; no I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stagesync.deployments.staging_indexes import serves
from stagesync.rules.index_translation import (
    Mirrored,
    Skipped,
    combine,
    demote,
    equivalent,
    free_name,
    index_fields,
    plan_mirror,
    translate,
)
from stagesync.settings.collection import CollectionSettings

SIMPLE = {"locale": "simple"}


def users(**overrides: Any) -> CollectionSettings:
    config: dict[str, Any] = {"name": "users", "source": "p.users", "target": "s.users",
                              "business_key": ["accountId"]}
    config.update(overrides)
    return CollectionSettings(**config)


def mirrored(index: dict[str, Any], collection: CollectionSettings | None = None,
             mirror_ttl: bool = False) -> Mirrored:
    result = translate({"v": 2, **index}, collection or users(), mirror_ttl)
    assert isinstance(result, Mirrored), result
    return result


def skipped(index: dict[str, Any], collection: CollectionSettings) -> Skipped:
    result = translate({"v": 2, **index}, collection, False)
    assert isinstance(result, Skipped), result
    return result


# -- copied as is -----------------------------------------------------------------------------


def test_the_id_index_is_not_mirrored() -> None:
    assert translate({"v": 2, "key": {"_id": 1}, "name": "_id_"}, users(), False) is None


def test_a_compound_index_is_copied_with_the_simple_collation_stated() -> None:
    result = mirrored({"key": {"a": 1, "b": -1}, "name": "a_1_b_-1"})
    assert result.spec == {"key": {"a": 1, "b": -1}, "collation": SIMPLE}
    assert not result.translated


@pytest.mark.parametrize("options", [
    {"sparse": True},
    {"hidden": True},
    {"collation": {"locale": "fr", "strength": 2}},
    {"partialFilterExpression": {"qty": {"$gt": 0}}},
    {"key": {"loc": "2dsphere"}, "2dsphereIndexVersion": 3},
    {"key": {"tenant": "hashed"}},
    {"key": {"$**": 1}, "wildcardProjection": {"secret": 0}},
    {"key": {"_fts": "text", "_ftsx": 1}, "weights": {"title": 5, "body": 1},
     "default_language": "french", "language_override": "lang", "textIndexVersion": 3},
])
def test_options_are_copied(options: dict[str, Any]) -> None:
    index = {"key": {"a": 1}, "name": "some_index", **options}
    result = mirrored(index)
    for name, value in options.items():
        assert result.spec[name] == value
    assert "v" not in result.spec and "name" not in result.spec
    assert not result.translated


def test_background_and_the_version_are_the_servers_not_copied() -> None:
    result = mirrored({"key": {"a": 1}, "name": "a_1", "background": True, "ns": "p.users"})
    assert set(result.spec) == {"key", "collation"}


# -- unique -----------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {}, {"sparse": True}, {"partialFilterExpression": {"qty": {"$gt": 0}}},
    {"partialFilterExpression": {"$or": [{"a": 1}, {"b": 2}]}},
    {"collation": {"locale": "en", "strength": 2}},
])
def test_unique_is_mirrored_non_unique_and_says_why(options: dict[str, Any]) -> None:
    """Issue 28's route: staging applies each document's current state, so a value production
    moves would collide with a copy not yet updated; production checked every value."""
    result = mirrored({"key": {"email": 1}, "name": "email_1", "unique": True, **options})
    assert "unique" not in result.spec
    for name, value in options.items():
        assert result.spec[name] == value  # production's own options, nothing of ours added
    assert result.notes[0].startswith("non-unique")
    assert "QA write" in result.notes[0]


@pytest.mark.parametrize("rule", ["hash", "fake:email", "redact", "null"])
def test_a_unique_index_on_masked_values_is_non_unique_too(rule: str) -> None:
    result = mirrored({"key": {"email": 1}, "name": "email", "unique": True},
                      users(pii={"email": rule}))
    assert "unique" not in result.spec
    assert any("masked values of email" in note for note in result.notes)


# -- TTL --------------------------------------------------------------------------------------


def test_ttl_is_dropped_unless_mirror_ttl() -> None:
    index = {"key": {"createdAt": 1}, "name": "ttl", "expireAfterSeconds": 3600}
    plain = mirrored(index)
    assert "expireAfterSeconds" not in plain.spec
    assert "mirror_ttl" in plain.notes[0]
    kept = mirrored(index, mirror_ttl=True)
    assert kept.spec["expireAfterSeconds"] == 3600 and not kept.translated


# -- PII --------------------------------------------------------------------------------------


def test_a_dropped_field_is_not_indexed() -> None:
    result = skipped({"key": {"phone": 1}, "name": "phone"}, users(pii={"phone": "drop"}))
    assert result.reason.startswith("not indexed") and "phone" in result.reason


def test_an_index_mixing_a_dropped_field_with_others_is_skipped_with_a_reason() -> None:
    result = skipped({"key": {"phone": 1, "plan": 1}, "name": "mixed"},
                     users(pii={"phone": "drop"}))
    assert result.reason.startswith("skipped") and "plan" in result.reason


def test_a_field_inside_a_value_masked_whole_is_not_there() -> None:
    result = skipped({"key": {"customer.email": 1}, "name": "c"},
                     users(pii={"customer": "hash"}))
    assert "replaces the whole value" in result.reason


@pytest.mark.parametrize("rule", ["hash", "fake:email", "redact", "null"])
def test_masked_fields_keep_production_keys(rule: str) -> None:
    result = mirrored({"key": {"email": 1, "plan": 1}, "name": "email_plan"},
                      users(pii={"email": rule}))
    assert result.spec["key"] == {"email": 1, "plan": 1}


# -- what staging would refuse or plan otherwise (issue 28) -------------------------------


@pytest.mark.parametrize("path", ["qaNotes", "qa.flag"])
def test_a_path_in_staging_fields_is_treated_like_a_dropped_field(path: str) -> None:
    config = users(staging_fields=["qaNotes", "qa"])
    alone = skipped({"key": {path: 1}, "name": "qa", "unique": True}, config)
    assert alone.reason.startswith("not indexed") and "staging_fields" in alone.reason
    mixed = skipped({"key": {"plan": 1, path: 1}, "name": "mixed"}, config)
    assert mixed.reason.startswith("skipped") and "staging_fields" in mixed.reason
    assert mirrored({"key": {"plan": 1}, "name": "plan"}, config).spec["key"] == {"plan": 1}


@pytest.mark.parametrize("kind", ["2dsphere", "2d"])
@pytest.mark.parametrize(("rule", "path"), [
    ("hash", "loc"), ("redact", "loc"), ("fake:address", "loc"), ("redact", "loc.coordinates"),
])
def test_a_geo_index_on_a_field_masking_turns_into_a_string_is_skipped(
    kind: str, rule: str, path: str,
) -> None:
    key = {"loc": kind, "plan": 1}
    result = skipped({"key": key, "name": "geo"}, users(pii={path: rule}))
    assert f"a {kind} index" in result.reason and "refuse every copy" in result.reason


def test_a_geo_index_on_a_nulled_or_unmasked_field_is_mirrored() -> None:
    assert mirrored({"key": {"loc": "2dsphere"}, "name": "geo"},
                    users(pii={"loc": "null"})).spec["key"] == {"loc": "2dsphere"}
    assert mirrored({"key": {"loc": "2dsphere"}, "name": "geo"},
                    users(pii={"email": "redact"})).notes == ()


TEXT = {"key": {"_fts": "text", "_ftsx": 1}, "name": "search",
        "weights": {"title": 1, "body": 1}}


@pytest.mark.parametrize(("override", "rule"), [
    (None, "redact"), (None, "hash"), ("lang", "fake:name"),
])
def test_a_text_index_whose_language_override_is_masked_is_skipped(
    override: str | None, rule: str,
) -> None:
    index = {**TEXT, **({"language_override": override} if override else {})}
    result = skipped(index, users(pii={override or "language": rule}))
    assert "language override" in result.reason


def test_a_text_index_on_masked_text_is_built_on_the_masked_strings() -> None:
    result = mirrored(TEXT, users(pii={"title": "redact", "language": "null"}))
    assert result.notes == ("text index built on masked values of title",)


def test_hashed_and_wildcard_indexes_take_masked_values_with_a_note() -> None:
    hashed = mirrored({"key": {"email": "hashed"}, "name": "h"}, users(pii={"email": "hash"}))
    assert hashed.notes == ("hashed index built on masked values of email",)
    wildcard = mirrored({"key": {"profile.$**": 1}, "name": "w"},
                        users(pii={"profile.phone": "redact"}))
    assert wildcard.notes == ("wildcard index built on masked values of profile",)
    dropped = skipped({"key": {"profile.$**": 1}, "name": "w"}, users(pii={"profile": "drop"}))
    assert dropped.reason.startswith("not indexed")


def test_a_collation_on_masked_values_is_noted() -> None:
    result = mirrored({"key": {"name": 1}, "name": "n", "collation": {"locale": "fr"}},
                      users(pii={"name": "fake:name"}))
    assert result.spec["collation"] == {"locale": "fr"}
    assert "collation compares the masked strings" in result.notes[-1]


@pytest.mark.parametrize(("filter_", "config", "why"), [
    ({"phone": {"$exists": True}}, {"pii": {"phone": "drop"}}, "removes it"),
    ({"$or": [{"plan": "pro"}, {"phone": {"$gt": ""}}]}, {"pii": {"phone": "drop"}},
     "removes it"),
    ({"qaNotes": {"$exists": True}}, {"staging_fields": ["qaNotes"]}, "staging_fields"),
    ({"status": "active"}, {"pii": {"status": "hash"}}, "masks"),
    ({"email": {"$type": "string"}}, {"pii": {"email": "null"}}, "masks"),
    ({"plan": "pro"}, {"pii_mode": "strict", "allow": ["sku"]}, "strict"),
])
def test_a_partial_filter_on_a_dropped_masked_or_staging_field_is_skipped(
    filter_: dict[str, Any], config: dict[str, Any], why: str,
) -> None:
    result = skipped({"key": {"sku": 1}, "name": "p", "partialFilterExpression": filter_},
                     users(**config))
    assert "partial filter" in result.reason and why in result.reason, result.reason


def test_a_partial_filter_that_masking_keeps_is_mirrored() -> None:
    """`$exists: true` is kept by every masking but drop: a masked value exists where
    production's does."""
    result = mirrored({"key": {"sku": 1}, "name": "p",
                       "partialFilterExpression": {"email": {"$exists": True}}},
                      users(pii={"email": "hash"}))
    assert result.spec["partialFilterExpression"] == {"email": {"$exists": True}}


def test_a_demoted_index_stays_demoted_while_production_s_definition_is_the_same() -> None:
    geo = mirrored({"key": {"loc": "2dsphere"}, "name": "geo"})
    record = {"spec": dict(geo.spec), "code": 16755, "error": "16755: Can't extract geo keys"}
    result = demote(geo, {"geo": record})
    assert isinstance(result, Skipped) and "refused sync writes" in result.reason
    changed = mirrored({"key": {"loc": "2dsphere", "plan": 1}, "name": "geo"})
    assert demote(changed, {"geo": record}) is changed  # a new definition is tried again
    assert demote(geo, {}) is geo
    unique = Mirrored("u", {"key": {"a": 1}, "unique": True, "collation": SIMPLE})
    record = {"spec": dict(unique.spec), "code": 11000, "error": "11000: dup key: {…}"}
    made = demote(unique, {"u": record})
    assert isinstance(made, Mirrored) and "unique" not in made.spec
    assert made.notes[-1].startswith("non-unique: staging refused sync writes")


def test_a_faked_address_keeps_its_keys() -> None:
    result = mirrored({"key": {"address.city": 1}, "name": "city"},
                      users(pii={"address": "fake:address"}))
    assert result.spec["key"] == {"address.city": 1}


def test_text_fields_come_from_the_weights() -> None:
    index = {"key": {"_fts": "text", "_ftsx": 1}, "name": "text",
             "weights": {"bio": 1, "phone": 2}}
    assert index_fields(index) == ["bio", "phone"]
    assert skipped(index, users(pii={"phone": "drop"})).reason.startswith("skipped")


def test_wildcards_read_their_prefix_or_their_projection() -> None:
    assert index_fields({"key": {"$**": 1}}) == []
    assert index_fields({"key": {"$**": 1}, "wildcardProjection": {"a": 1, "b.c": 1}}) == \
        ["a", "b.c"]
    assert index_fields({"key": {"profile.$**": 1}}) == ["profile"]
    assert skipped({"key": {"profile.$**": 1}, "name": "w"},
                   users(pii={"profile": "drop"})).reason.startswith("not indexed")


def test_strict_mode_does_not_index_unclassified_fields() -> None:
    strict = users(pii_mode="strict", allow=["plan"])
    assert isinstance(translate({"key": {"plan": 1}, "name": "p"}, strict, False), Mirrored)
    assert skipped({"key": {"notes": 1}, "name": "n"}, strict).reason.startswith("not indexed")


# -- equivalence and the plan -----------------------------------------------------------------


def existing(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"v": 2, "name": name, **spec}


def test_an_equivalent_staging_index_is_reused_whatever_its_name() -> None:
    wanted = mirrored({"key": {"a": 1}, "name": "a_1"})
    plan = plan_mirror([wanted], [existing("restored_a", {"key": {"a": 1}})], {}, {}, serves)
    assert plan.reused == {"a_1": "restored_a"} and not plan.creates


def test_unique_must_match_both_ways() -> None:
    wanted = mirrored({"key": {"a": 1}, "name": "a_1"})
    assert not equivalent({"key": {"a": 1}, "unique": True}, wanted.spec, serves)


def test_a_taken_name_gets_another() -> None:
    wanted = mirrored({"key": {"a": 1}, "name": "a_1"})
    plan = plan_mirror([wanted], [existing("a_1", {"key": {"b": 1}})], {}, {}, serves)
    assert [c.name for c in plan.creates] == ["a_1_mirror"]
    assert free_name("x", {"x", "x_mirror"}) == "x_mirror_2"


def test_hand_made_indexes_are_never_dropped_owned_extra_ones_are() -> None:
    staging = [existing("by_hand", {"key": {"h": 1}}), existing("mine", {"key": {"m": 1}})]
    plan = plan_mirror([], staging, {"mine": {"production": "m_1"}}, {}, serves)
    assert plan.drops == ["mine"]


def test_an_outdated_owned_index_is_rebuilt_under_its_name() -> None:
    wanted = mirrored({"key": {"a": 1}, "name": "a_1", "sparse": True})
    staging = [existing("a_1", {"key": {"a": 1}, "collation": SIMPLE})]
    plan = plan_mirror([wanted], staging, {"a_1": {"production": "a_1"}}, {}, serves)
    assert plan.drops == ["a_1"] and [c.name for c in plan.creates] == ["a_1"]


def test_a_unique_index_an_earlier_version_mirrored_is_rebuilt_non_unique() -> None:
    """Upgrading: the owned unique index over live synced copies is dropped and built again
    non-unique under its name at the first pass; a hand-made unique one is left alone."""
    wanted = mirrored({"key": {"email": 1}, "name": "email_1", "unique": True})
    old = existing("email_1", {"key": {"email": 1}, "unique": True, "collation": SIMPLE,
                               "partialFilterExpression": {"deleted": False,
                                                           "_sync.pid": {"$exists": True}}})
    plan = plan_mirror([wanted], [old], {"email_1": {"production": "email_1"}}, {}, serves)
    assert plan.drops == ["email_1"] and [c.name for c in plan.creates] == ["email_1"]
    assert "unique" not in plan.creates[0].spec
    by_hand = plan_mirror([wanted], [old], {}, {}, serves)
    assert by_hand.drops == [] and [c.name for c in by_hand.creates] == ["email_1_mirror"]


def test_hidden_changes_in_place_on_owned_indexes_only() -> None:
    wanted = mirrored({"key": {"a": 1}, "name": "a_1", "hidden": True})
    staging = [existing("a_1", {"key": {"a": 1}, "collation": SIMPLE})]
    owned = plan_mirror([wanted], staging, {"a_1": {"production": "a_1"}}, {}, serves)
    assert [(m.name, m.changes) for m in owned.modifies] == [("a_1", {"hidden": True})]
    theirs = plan_mirror([wanted], staging, {}, {}, serves)
    assert not theirs.modifies and not theirs.creates and "a_1" in theirs.unmanaged


def test_a_failed_build_waits_for_a_new_definition_or_a_resync() -> None:
    wanted = mirrored({"key": {"a": 1}, "name": "a_1", "unique": True})
    failed = {"a_1": {"name": "a_1", "spec": wanted.spec}}
    assert plan_mirror([wanted], [], {}, failed, serves).held == {"a_1": "a_1"}
    assert [c.name for c in plan_mirror([wanted], [], {}, failed, serves,
                                        retry_failed=True).creates] == ["a_1"]
    changed = {"a_1": {"name": "a_1", "spec": {"key": {"a": 1}}}}
    assert plan_mirror([wanted], [], {}, changed, serves).creates


def test_records_of_indexes_gone_by_hand_are_forgotten() -> None:
    plan = plan_mirror([], [], {"gone": {"production": "g"}}, {}, serves)
    assert plan.forget == ["gone"] and not plan.drops


def test_an_index_someone_put_in_place_of_ours_is_theirs() -> None:
    ours = {"key": {"a": 1}, "collation": SIMPLE}
    staging = [existing("a_1", {"key": {"b": 1}})]  # dropped ours, made their own
    plan = plan_mirror([], staging, {"a_1": {"production": "a_1", "spec": ours}}, {}, serves)
    assert plan.forget == ["a_1"] and not plan.drops
    hidden = [existing("a_1", {**ours, "hidden": True})]  # ours, changed in place: still ours
    plan = plan_mirror([], hidden, {"a_1": {"production": "a_1", "spec": ours}}, {}, serves)
    assert plan.drops == ["a_1"]


# -- properties -------------------------------------------------------------------------------

FIELDS = st.sampled_from(["a", "b", "c.d", "deleted", "_sync.pid"])
CONDITIONS = st.one_of(
    st.integers(-3, 3), st.booleans(), st.text("xy", max_size=2),
    st.fixed_dictionaries({"$gt": st.integers(-3, 3)}),
    st.fixed_dictionaries({"$exists": st.just(True)}),
    st.fixed_dictionaries({"$type": st.sampled_from(["string", "int"])}),
)
CONJUNCTS = st.lists(st.dictionaries(FIELDS, CONDITIONS, min_size=1, max_size=1), max_size=4)


@settings(max_examples=200, deadline=None)
@given(CONJUNCTS, st.booleans())
def test_a_unique_partial_index_keeps_production_s_filter_as_it_is(
    conjuncts: list[dict[str, Any]], wrapped: bool,
) -> None:
    production = {"$and": conjuncts} if wrapped and conjuncts else combine(conjuncts)
    index = {"key": {"k": 1}, "name": "k", "unique": True}
    if production:
        index["partialFilterExpression"] = production
    result = mirrored(index)
    assert result.spec.get("partialFilterExpression") == (production or None)
    assert "unique" not in result.spec


INDEXES = st.lists(st.fixed_dictionaries({
    "key": st.sampled_from([{"a": 1}, {"b": 1}, {"a": 1, "b": -1}, {"c": "hashed"}]),
    "unique": st.booleans(), "hidden": st.booleans(),
}), max_size=4, unique_by=lambda spec: (tuple(spec["key"]), spec["unique"]))


@settings(max_examples=200, deadline=None)
@given(INDEXES, INDEXES, st.lists(st.sampled_from(["h1", "h2"]), unique=True))
def test_carrying_out_a_plan_leaves_nothing_to_do_and_never_drops_hand_made_indexes(
    before: list[dict[str, Any]], after: list[dict[str, Any]], by_hand: list[str],
) -> None:
    """Mirror `before`, change production to `after`, mirror again: staging then needs no
    further step, and every hand-made index is still there."""
    staging = {name: {"v": 2, "name": name, "key": {name: 1}} for name in by_hand}
    owned: dict[str, dict[str, Any]] = {}
    for production in (before, after):
        wanted = [mirrored({**spec, "name": f"i{n}"}) for n, spec in enumerate(production)
                  if not (spec["unique"] and "hashed" in spec["key"].values())]
        plan = plan_mirror(wanted, list(staging.values()), owned, {}, serves)
        for name in plan.drops:
            assert name in owned
            del staging[name]
            del owned[name]
        for change in plan.modifies:
            staging[change.name].update(change.changes)
        for create in plan.creates:
            assert create.name not in staging
            staging[create.name] = {"v": 2, "name": create.name, **create.spec}
            owned[create.name] = {"production": create.production_name}
        again = plan_mirror(wanted, list(staging.values()), owned, {}, serves)
        assert not (again.creates or again.drops or again.modifies), again
        assert set(by_hand) <= set(staging)
