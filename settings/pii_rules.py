"""The PII rule vocabulary of the configuration (`pii: {path: rule}`).

Only the vocabulary lives here; the transforms themselves are pure functions in
`rules.pii`, applied where production documents are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RuleKind = Literal["drop", "redact", "null", "hash", "fake"]
FakeKind = Literal["email", "name", "phone", "address"]
RULE_KINDS: tuple[RuleKind, ...] = ("drop", "redact", "null", "hash", "fake")
FAKE_KINDS: tuple[FakeKind, ...] = ("email", "name", "phone", "address")

# A bare `fake` infers what to generate from the field's last path segment.
# Ordered: "emailAddress" is an email, "mailingAddress" an address.
FAKE_HINTS: tuple[tuple[FakeKind, tuple[str, ...]], ...] = (
    ("email", ("email",)),
    ("address", ("address", "street", "addr")),
    ("phone", ("phone", "mobile", "tel", "fax")),
    ("email", ("mail",)),
    ("name", ("name",)),
)


@dataclass(frozen=True)
class PiiRule:
    kind: RuleKind
    fake_kind: FakeKind | None = None

    @property
    def keyed(self) -> bool:
        """Rules derived from the keyed hash need `pii_secret`."""
        return self.kind in ("hash", "fake")

    def __str__(self) -> str:
        return f"fake:{self.fake_kind}" if self.kind == "fake" else self.kind


def parse_pii_rule(path: str, value: object) -> PiiRule:
    if isinstance(value, PiiRule):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{path}: a rule is one of {', '.join(RULE_KINDS)} or fake:<kind>")
    kind, _, fake_kind = value.strip().partition(":")
    if kind not in RULE_KINDS:
        raise ValueError(
            f"{path}: unknown rule {value!r}; use one of {', '.join(RULE_KINDS)} or fake:<kind>"
        )
    if kind != "fake":
        if fake_kind:
            raise ValueError(f"{path}: only 'fake' takes a kind, not {value!r}")
        return PiiRule(kind)  # type: ignore[arg-type]
    if not fake_kind:
        leaf = path.rsplit(".", 1)[-1].lower()
        inferred = next((k for k, hints in FAKE_HINTS if any(h in leaf for h in hints)), None)
        if inferred is None:
            raise ValueError(
                f"{path}: cannot tell what to fake from the field name; write "
                f"fake:{'|'.join(FAKE_KINDS)}"
            )
        return PiiRule("fake", inferred)
    if fake_kind not in FAKE_KINDS:
        raise ValueError(f"{path}: fake:{fake_kind} is unknown; use fake:{'|'.join(FAKE_KINDS)}")
    return PiiRule("fake", fake_kind)  # type: ignore[arg-type]
