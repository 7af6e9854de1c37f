"""References: finding and translating referenced `_id`s (pure), and their configuration."""

from __future__ import annotations

from typing import Any

import pytest
from bson import ObjectId
from bson.dbref import DBRef
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from stagesync.rules.identity import encode_id
from stagesync.rules.references import Reference, referenced_ids, translate
from stagesync.settings.model import Settings

U1, U2, S1 = ObjectId(), ObjectId(), ObjectId()


def test_ids_are_found_through_arrays_documents_and_dbrefs() -> None:
    order = {"customerId": U1, "lines": [{"productId": 1}, {"productId": 2}, {"x": 3}],
             "giftFor": [U1, U2], "owner": DBRef("users", U2)}
    assert referenced_ids(order, Reference("customerId", "users")) == [encode_id(U1)]
    assert referenced_ids(order, Reference("lines.productId", "p")) == [encode_id(1),
                                                                         encode_id(2)]
    assert referenced_ids(order, Reference("giftFor", "users")) == [encode_id(U1), encode_id(U2)]
    assert referenced_ids(order, Reference("owner", "users")) == [encode_id(U2)]
    assert referenced_ids(order, Reference("lines.1.productId", "p")) == [encode_id(2)]
    assert referenced_ids(order, Reference("missing", "users")) == []


def test_translation_replaces_known_ids_and_keeps_the_others() -> None:
    order = {"customerId": U1, "giftFor": [U1, U2], "owner": DBRef("users", U1, "db", x=1),
             "lines": [{"productId": 1, "qty": 2}]}
    lookup = {("users", encode_id(U1)): S1}
    references = (Reference("customerId", "users"), Reference("giftFor", "users"),
                  Reference("owner", "users"), Reference("lines.productId", "products"))
    result = translate(order, references, lookup)
    assert result["customerId"] == S1 and result["giftFor"] == [S1, U2]
    assert result["owner"] == DBRef("users", S1, "db", x=1)
    assert result["lines"] == [{"productId": 1, "qty": 2}]
    assert order["customerId"] == U1  # the input is left alone


def test_ids_are_told_apart_by_type() -> None:
    lookup = {("p", encode_id(1)): "one"}
    assert translate({"ids": [1, 1.0, "1"]}, (Reference("ids", "p"),), lookup) == {
        "ids": ["one", 1.0, "1"]}


@settings(database=None, max_examples=200)
@given(st.recursive(st.one_of(st.integers(), st.text(max_size=3), st.none()),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2)))
def test_translating_with_nothing_known_changes_nothing(value: Any) -> None:
    document = {"a": value}
    assert translate(document, (Reference("a.b", "x"), Reference("a", "y")), {}) == document


def config(**orders: Any) -> dict[str, Any]:
    return {
        "prod": {"uri": "mongodb://p/"}, "staging": {"uri": "mongodb://s/"},
        "collections": [
            {"name": "users", "source": "p.users", "target": "s.users",
             "business_key": ["email"]},
            {"name": "orders", "source": "p.orders", "target": "s.orders",
             "business_key": ["orderNo"], **orders},
        ],
    }


def test_a_reference_to_an_unknown_collection_is_refused_naming_the_key() -> None:
    with pytest.raises(ValidationError, match=r"collections\[1\] \(orders\)\.references\."
                                              r"customerId: no collection named 'customers'"):
        Settings(**config(references={"customerId": "customers"}))


def test_business_keys_that_depend_on_each_other_through_references_are_refused() -> None:
    data = config(references={"customerId": "users"}, business_key=["customerId", "n"])
    data["collections"][0]["business_key"] = ["primaryOrder"]
    data["collections"][0]["references"] = {"primaryOrder": "orders"}
    with pytest.raises(ValidationError, match=r"(users|orders) -> (orders|users) -> "):
        Settings(**data)
    Settings(**config(references={"customerId": "users"}, business_key=["customerId", "n"]))


def test_a_pii_rule_on_a_reference_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"references\.customerId: pii rule"):
        Settings(**config(references={"customerId": "users"}, pii={"customerId": "hash"}),
                 pii_secret="s")


def test_staging_ids_defaults_to_production() -> None:
    assert Settings(**config()).collection("orders").staging_ids == "production"
    with pytest.raises(ValidationError, match="staging_ids"):
        Settings(**config(staging_ids="random"))
