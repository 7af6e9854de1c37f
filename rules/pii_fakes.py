"""The `fake` rule's generators: realistic values drawn from a seed, never from the value.

Each generator takes the keyed digest of the production value (`rules.pii`), so the same value
always gets the same fake and nothing of the value itself shows through. Emails use reserved
domains and phones a range never allocated, so a fake can never reach a real person.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faker import Faker

# RFC 2606 reserved domains: mail to them can never reach anybody.
FAKE_EMAIL_DOMAINS: tuple[str, ...] = ("example.com", "example.org", "example.net")
# Ofcom's drama range: +44 7700 900000 to +44 7700 900999 are never allocated to subscribers.
FAKE_PHONE_PREFIX = "+44 7700 900"
FAKER_LOCALE = "en_US"
_NOT_LETTERS = re.compile(r"[^a-z]+")
_KEY_NOISE = re.compile(r"[\s_\-]+")

_faker: Faker | None = None
_faker_lock = threading.Lock()


def _get_faker() -> Faker:
    """One Faker for the process, created on first use (creating one is slow).

    `use_weighting=False` draws names uniformly instead of by frequency: still real names, but
    ~15x faster per value (the weighted draw re-sums thousands of weights on every call).
    """
    global _faker
    if _faker is None:
        with _faker_lock:
            if _faker is None:
                from faker import Faker

                _faker = Faker(FAKER_LOCALE, use_weighting=False)
    return _faker


def faker_version() -> str:
    import faker

    return str(faker.VERSION)


def _seed(digest: bytes) -> int:
    """The Faker seed of a value: from its keyed digest, never from Python's `hash()`."""
    return int.from_bytes(digest[:8], "big")


def _letters(text: str) -> str:
    return _NOT_LETTERS.sub("", text.lower()) or "user"


def _fake_name_parts(digest: bytes) -> tuple[str, str]:
    faker = _get_faker()
    with _faker_lock:  # seed and draw as one step: the Faker is shared between threads
        faker.seed_instance(_seed(digest))
        return faker.first_name(), faker.last_name()


def fake_email(digest: bytes) -> str:
    first, last = _fake_name_parts(digest)
    domain = FAKE_EMAIL_DOMAINS[digest[8] % len(FAKE_EMAIL_DOMAINS)]
    # A few digest characters keep two people with the same fake name apart.
    return f"{_letters(first)}.{_letters(last)}.{digest[9:12].hex()}@{domain}"


def fake_name(digest: bytes) -> str:
    first, last = _fake_name_parts(digest)
    return f"{first} {last}"


def fake_phone(digest: bytes) -> str:
    return f"{FAKE_PHONE_PREFIX}{int.from_bytes(digest[8:10], 'big') % 1000:03d}"


def fake_address(digest: bytes) -> str:
    faker = _get_faker()
    with _faker_lock:
        faker.seed_instance(_seed(digest))
        street = faker.street_address()
        city = faker.city()
        state = faker.state_abbr(include_territories=False)
        zipcode = faker.zipcode()
    return f"{street}, {city}, {state} {zipcode}"


# Fields of an address sub-document, by normalised key (lower case, no `_`, `-` or spaces).
_ADDRESS_FIELDS: dict[str, str] = {
    **dict.fromkeys(
        (
            "street",
            "street1",
            "streetaddress",
            "address",
            "address1",
            "addressline1",
            "line1",
            "line",
        ),
        "street",
    ),
    **dict.fromkeys(("street2", "address2", "addressline2", "line2"), "secondary"),
    **dict.fromkeys(("city", "town", "locality"), "city"),
    **dict.fromkeys(("state", "region", "province", "county"), "state"),
    **dict.fromkeys(("zip", "zipcode", "postcode", "postalcode"), "zip"),
    "country": "country",
    "countrycode": "country_code",
}


def fake_address_field(field: str, value: Any, digest: bytes) -> Any:
    faker = _get_faker()
    with _faker_lock:
        faker.seed_instance(_seed(digest))
        if field == "street":
            return faker.street_address()
        if field == "secondary":
            return faker.secondary_address()
        if field == "city":
            return faker.city()
        if field == "state":
            short = isinstance(value, str) and len(value) <= 3
            return faker.state_abbr(include_territories=False) if short else faker.state()
        if field == "zip":
            zipcode = faker.zipcode()
            # Keep a numeric zip numeric, so staging's queries and indexes keep their types.
            numeric = isinstance(value, int) and not isinstance(value, bool)
            return int(zipcode) if numeric else zipcode
        if field == "country":
            return faker.country()
        return faker.country_code()


def address_field_of(key: str) -> str | None:
    """Which part of an address a sub-document's field holds, from its name (or None)."""
    return _ADDRESS_FIELDS.get(_KEY_NOISE.sub("", key.lower()))
