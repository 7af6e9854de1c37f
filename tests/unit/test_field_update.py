"""The write form of a merge when many documents share a shape: the decisions `plan_field_update`
remembers per shape (owned paths before and now) never carry one document's values, or its
empty sub-documents, over to another's update. (Its results are checked against a real server
in `tests/integration/test_field_updates_on_server.py`.)"""

from __future__ import annotations

from typing import Any

from stagesync.rules.field_update import plan_field_update
from stagesync.rules.merge import FieldRules

RULES = FieldRules(staging_fields=(("qaNotes",),), soft_delete_field=("deleted",))
BEFORE = (("a",), ("b", "c"), ("d",))
ALSO = {"deleted": False}


def update_of(leaves: list[tuple[tuple[str, ...], Any]]) -> Any:
    planned = plan_field_update(BEFORE, leaves, RULES, ALSO)
    assert planned is not None
    return planned.update


def test_documents_of_one_shape_get_their_own_values() -> None:
    first = update_of([(("a",), 1), (("b", "c"), "x"), (("d",), [1])])
    second = update_of([(("a",), 2), (("b", "c"), "y"), (("d",), [2])])
    assert first == {"$set": {"a": 1, "b.c": "x", "d": [1], "deleted": False}}
    assert second == {"$set": {"a": 2, "b.c": "y", "d": [2], "deleted": False}}


def test_an_empty_sub_document_takes_the_pipeline_for_that_document_only() -> None:
    plain = update_of([(("a",), 1), (("b", "c"), "x"), (("d",), 0)])
    empty = update_of([(("a",), 1), (("b", "c"), "x"), (("d",), {})])
    again = update_of([(("a",), 1), (("b", "c"), "x"), (("d",), 0)])
    assert isinstance(plain, dict) and again == plain
    assert isinstance(empty, list)  # keeps staging's own fields inside `d` (`$cond`)


def test_paths_no_longer_sent_are_unset_and_protected_ones_left_alone() -> None:
    before = (("a",), ("qaNotes",), ("b", "c"), ("b", "e"))
    planned = plan_field_update(before, [(("a",), 1), (("b", "c"), 2)], RULES, ALSO)
    assert planned is not None
    assert planned.update == {"$set": {"a": 1, "b.c": 2, "deleted": False},
                              "$unset": {"b.e": ""}}
