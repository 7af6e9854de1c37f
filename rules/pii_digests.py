"""The keyed digests behind PII masking: pseudonyms (`hash`), the seeds of fakes, and the
fingerprint of a set of rules. HMAC-SHA256 keyed by `pii_secret`, over a type-preserving
encoding, so equal values match across collections and processes and nothing else does."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from typing import Any, overload

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from stagesync.rules.pii_fakes import FAKER_LOCALE, faker_version
from stagesync.settings.pii_rules import PiiRule

# Bump when the output of any transform changes for the same value and secret, so that
# `rules_fingerprint` tells staging documents masked the old way from the new.
MASK_VERSION = 1
HASH_PREFIX = "h:"
# Separates the fake seeds from the pseudonyms: a fake email's hex tag then cannot be matched
# against a `hash` pseudonym of the same value elsewhere in staging.
_FAKE_DOMAIN = b"stagesync.pii.fake\x00"
_FINGERPRINT_DOMAIN = b"stagesync.pii.rules\x00"


class PiiError(ValueError):
    """A value could not be masked. The message names a rule path and a type, never a value."""


def _canonical(value: Any) -> bytes:
    """The type-preserving encoding every digest is taken of (`1`, `1.0`, `"1"` all differ).

    The same spelling as `rules.identity`, so key digests and pseudonyms agree on what
    "the same value" means.
    """
    try:
        return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS).encode()
    except (TypeError, ValueError, OverflowError):
        # The original message may quote the value; keep only its type.
        raise PiiError(f"a value of type {type(value).__name__} cannot be encoded") from None


@overload
def pseudonym(value: None, secret: bytes) -> None: ...
@overload
def pseudonym(value: Any, secret: bytes) -> str: ...
def pseudonym(value: Any, secret: bytes) -> str | None:
    """The `hash` rule's output for one value: ``"h:" + hex HMAC-SHA256(secret, canonical)``.

    Deterministic across collections, processes and Python's hash randomization, so a hashed
    business key still matches its other occurrences. None stays None: a null is not personal
    data and must keep meaning "missing". Arrays and sub-documents are hashed as one value here;
    the rule itself maps arrays element by element (see `Masker`).
    """
    if value is None:
        return None
    return HASH_PREFIX + hmac.new(secret, _canonical(value), hashlib.sha256).hexdigest()


def fake_digest(value: Any, secret: bytes) -> bytes:
    return hmac.new(secret, _FAKE_DOMAIN + _canonical(value), hashlib.sha256).digest()


def rules_fingerprint(
    rules: Mapping[str, PiiRule], secret: bytes, strict: Iterable[str] | None = None
) -> str:
    """A short, stable hex digest of how documents are masked: the rules and the secret.

    Stored next to masked data, it tells when staging documents were masked under other rules
    or another secret (their pseudonyms would no longer match new ones). It does not depend on
    the order the rules were written in. When some rule is keyed (hash, fake), it is an HMAC
    keyed by the secret, so it reveals nothing about the secret; when none is, the secret does
    not change any output and is left out. It also covers `MASK_VERSION` and, when a fake rule
    exists, the Faker version, whose data sets decide the fake values. In strict mode
    (`strict`: the classified paths) it covers those paths too, so that allowing a path, or
    turning strict mode on, asks for the resync that copies or removes what changed; in open
    mode it is what it was before strict mode existed.
    """
    description: dict[str, Any] = {
        "version": MASK_VERSION,
        "rules": sorted([path, str(rule)] for path, rule in rules.items()),
    }
    if strict is not None:
        description["strict"] = sorted(set(strict))
    if any(rule.kind == "fake" for rule in rules.values()):
        description["faker"] = [faker_version(), FAKER_LOCALE]
    payload = json.dumps(description, sort_keys=True, separators=(",", ":")).encode()
    if any(rule.keyed for rule in rules.values()):
        digest = hmac.new(secret, _FINGERPRINT_DOMAIN + payload, hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(_FINGERPRINT_DOMAIN + payload).hexdigest()
    return digest[:16]
