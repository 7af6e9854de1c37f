"""The personal-data detectors of `stagesync pii scan` (`rules.pii_detect`): each kind,
its near misses, and properties of the checksums and shapes."""

from __future__ import annotations

import string
from datetime import UTC, datetime

import pytest
from faker import Faker
from hypothesis import given
from hypothesis import strategies as st
from stagesync.rules.pii_detect import (
    IBAN_LENGTHS,
    find_in_text,
    iban_valid,
    is_card_number,
    is_email,
    is_iban,
    is_ip_address,
    is_phone,
    is_street_address,
    luhn_valid,
    name_kind,
    name_words,
    segment_looks_personal,
    shape,
    value_kind,
)


def luhn_complete(body: str) -> str:
    """`body` with the check digit that makes it Luhn-valid (computed independently)."""
    for check in string.digits:
        digits = [int(c) for c in body + check]
        total = sum(digits[-1::-2]) + sum(sum(divmod(2 * d, 10)) for d in digits[-2::-2])
        if total % 10 == 0:
            return body + check
    raise AssertionError("unreachable")


def iban_complete(country: str, bban: str) -> str:
    """An IBAN with correct check digits (ISO 13616: 98 - (number mod 97))."""
    number = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    return f"{country}{98 - number % 97:02d}{bban}"


# --------------------------------------------------------------------------------------------
# Emails
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["ann.lee@corp.io", "A+tag@mail.example.co.uk",
                                   "o'neil@b-c.de", " x_y@z.museum "])
def test_emails(value: str) -> None:
    assert is_email(value) and value_kind(value) == "email"


@pytest.mark.parametrize("value", ["ann.lee@", "@corp.io", "ann lee@corp.io", "ann@corp",
                                   "ann@@corp.io", "ann@corp.i", "Ann <ann@corp.io>",
                                   "support at corp dot io"])
def test_email_near_misses(value: str) -> None:
    assert not is_email(value)


def test_faker_emails_are_all_found() -> None:
    faker = Faker("en_US")
    faker.seed_instance(7)
    assert all(is_email(faker.email()) for _ in range(300))


# --------------------------------------------------------------------------------------------
# Card numbers (Luhn)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["4111 1111 1111 1111", "4111-1111-1111-1111",
                                   "5555555555554444", "378282246310005", "6011111111111117",
                                   "3530111333300000"])
def test_card_numbers(value: str) -> None:
    assert is_card_number(value) and value_kind(value) == "card_number"


@pytest.mark.parametrize("value", [
    "4111 1111 1111 1112",  # fails Luhn by one digit
    "4111111111111121",  # two digits swapped: Luhn catches it
    luhn_complete("911111111111111"),  # Luhn-valid, but no card issuer's prefix starts with 9
    "4111 1111 111",  # too short
    "41111111111111111111",  # 20 digits: too long
    "4111 1111 1111 111a",
])
def test_card_number_near_misses(value: str) -> None:
    assert not is_card_number(value)


def test_the_issuer_near_miss_passes_luhn() -> None:
    assert luhn_valid(luhn_complete("911111111111111"))  # so only the issuer prefix rejects it
    assert is_card_number(luhn_complete("411111111111111"))


def test_faker_card_numbers_are_all_found() -> None:
    faker = Faker("en_US")
    faker.seed_instance(3)
    assert all(is_card_number(faker.credit_card_number()) for _ in range(500))


@given(st.text(alphabet=string.digits, min_size=11, max_size=18))
def test_luhn_accepts_its_check_digit_and_rejects_any_other(body: str) -> None:
    valid = luhn_complete(body)
    assert luhn_valid(valid)
    for wrong in string.digits:
        if wrong != valid[-1]:
            assert not luhn_valid(body + wrong)


@given(st.text(alphabet=string.digits, min_size=12, max_size=18),
       st.integers(min_value=0, max_value=17), st.integers(min_value=1, max_value=9))
def test_luhn_catches_every_single_digit_error(body: str, where: int, delta: int) -> None:
    valid = luhn_complete(body)
    position = where % len(valid)
    changed = str((int(valid[position]) + delta) % 10)
    assert not luhn_valid(valid[:position] + changed + valid[position + 1:])


def test_luhn_rejects_what_is_not_digits() -> None:
    assert not luhn_valid("")
    assert not luhn_valid("4111-1111")
    assert not luhn_valid("٤١١١")  # Arabic-Indic digits are digits, but not card digits


# --------------------------------------------------------------------------------------------
# IBANs (mod 97)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432",
                                   "DE89 3704 0044 0532 0130 00", "NL91ABNA0417164300",
                                   "FR1420041010050500013M02606"])
def test_ibans(value: str) -> None:
    assert is_iban(value) and value_kind(value) == "iban"


@pytest.mark.parametrize("value", [
    "GB82 WEST 1234 5698 7654 33",  # fails mod 97
    "GB28 WEST 1234 5698 7654 32",  # check digits swapped
    "DE89 3704 0044 0532 0130",  # valid-looking but short for Germany
    "ZZ82WEST12345698765432",  # no such country
    "gb82west12345698765432",  # lower case is not how IBANs are written
])
def test_iban_near_misses(value: str) -> None:
    assert not is_iban(value)


@given(st.sampled_from(sorted(IBAN_LENGTHS)), st.data())
def test_iban_check_digits_catch_every_single_substitution(country: str, data: st.DataObject
                                                              ) -> None:
    length = IBAN_LENGTHS[country] - 4
    bban = data.draw(st.text(alphabet=string.digits + string.ascii_uppercase,
                             min_size=length, max_size=length))
    valid = iban_complete(country, bban)
    assert is_iban(valid) and iban_valid(valid)
    position = data.draw(st.integers(min_value=2, max_value=len(valid) - 1))
    # A digit for a digit, or a letter for a letter: MOD 97-10 catches every such substitution
    # (a letter for a digit changes the length of the number, and is not always caught).
    alphabet = string.digits if valid[position].isdigit() else string.ascii_uppercase
    replacement = data.draw(st.sampled_from(alphabet.replace(valid[position], "")))
    assert not iban_valid(valid[:position] + replacement + valid[position + 1:])


# --------------------------------------------------------------------------------------------
# IP addresses
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["192.168.1.20", "8.8.8.8", "2001:db8::1",
                                   "fe80::1ff:fe23:4567:890a"])
def test_ip_addresses(value: str) -> None:
    assert is_ip_address(value) and value_kind(value) == "ip_address"


@pytest.mark.parametrize("value", ["256.1.1.1", "1.2.3", "12:30", "::", "v1.2.3.4",
                                   "1.2.3.4.5"])
def test_ip_near_misses(value: str) -> None:
    assert not is_ip_address(value)


# --------------------------------------------------------------------------------------------
# Phone numbers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["+44 20 7946 0958", "+1 (202) 555-0142", "(202) 555-0142",
                                   "202-555-0142", "202.555.0142", "020 7946 0958",
                                   "0044 20 7946 0958", "+33 1 23 45 67 89",
                                   "202-555-0142 x123", "+4915112345678"])
def test_phones(value: str) -> None:
    assert is_phone(value) and value_kind(value) == "phone"


@pytest.mark.parametrize("value", [
    "2024-06-000123",  # an order reference: year and month in front, then a sequence
    "2023-11-004217",
    "20240612-5550142",  # a date-stamped reference
    "ORD-202-555-0142",  # letters: a reference, however phone-like its digits
    "2025550142",  # a bare run of digits: an id, an amount, anything
    "1.234.567.890",  # grouped by thousands: an amount
    "12-3456789012",  # a group too long for a phone number
    "555-0142",  # too few digits without a country code
    "(202 555-0142",  # unbalanced
])
def test_phone_near_misses(value: str) -> None:
    assert not is_phone(value)


def test_most_faker_phones_are_found() -> None:
    """Faker also writes phones as 10 bare digits, which are not told from ids one by one: the
    scanner decides on the share of values (`MIN_SHARE`)."""
    faker = Faker("en_US")
    faker.seed_instance(11)
    found = sum(is_phone(faker.phone_number()) for _ in range(500))
    assert found >= 400


# --------------------------------------------------------------------------------------------
# Street addresses
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["12 Baker Street", "221B Baker St.", "1600 Pennsylvania Avenue",
                                   "8012 Hull Village Suite 759", "4 Rue de la Paix",
                                   "Hauptstraße 12", "742 Evergreen Terrace, Springfield"])
def test_street_addresses(value: str) -> None:
    assert is_street_address(value) and value_kind(value) == "street_address"


@pytest.mark.parametrize("value", ["12 items in the park", "Baker Street", "3 Gold Plan",
                                   "Springfield", "12"])
def test_street_address_near_misses(value: str) -> None:
    assert not is_street_address(value)


def test_faker_street_addresses_are_all_found() -> None:
    faker = Faker("en_US")
    faker.seed_instance(5)
    assert all(is_street_address(faker.street_address()) for _ in range(300))


# --------------------------------------------------------------------------------------------
# Free text
# --------------------------------------------------------------------------------------------


def test_free_text_finds_each_kind_inside() -> None:
    note = ("Called +1 202-555-0142 twice; write to ann.lee@corp.io. Ships to 12 Baker Street. "
            "Paid with 4111 1111 1111 1111 from GB82 WEST 1234 5698 7654 32, from 10.1.2.3.")
    found = find_in_text(note)
    assert set(found) == {"phone", "email", "street_address", "card_number", "iban",
                          "ip_address"}
    assert found["email"] == "ann.lee@corp.io"
    assert value_kind(note) is None  # the whole note is no single kind: it is free text


@pytest.mark.parametrize("note", [
    "Order 2024-06-000123 shipped in 3 boxes, total 129.99",
    "Customer prefers the gold plan; renew in 12 months",
    "SKU-55501 42 back-ordered 4111111111111112",  # a card-length number failing Luhn
    "Version 1.2.3 fixed it",
])
def test_free_text_near_misses(note: str) -> None:
    assert find_in_text(note) == {}


# --------------------------------------------------------------------------------------------
# Names of fields
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "kind"), [
    ("dateOfBirth", "date_of_birth"), ("customer.dob", "date_of_birth"),
    ("birth_date", "date_of_birth"), ("birthday", "date_of_birth"),
    ("firstName", "person_name"), ("customer.last_name", "person_name"),
    ("surname", "person_name"), ("customer.name", "person_name"), ("name", "person_name"),
    ("contacts.fullName", "person_name"), ("spouseName", "person_name"),
    ("emergency_contact_name", "person_name"),
    ("ssn", "government_id"), ("passportNumber", "government_id"),
    ("workEmail", "email"), ("emailAddress", "email"), ("mobilePhone", "phone"),
    ("phoneNumber", "phone"), ("billing.street", "street_address"),
    ("shippingAddress", "street_address"), ("addressLine1", "street_address"),
])
def test_names_that_say_personal(path: str, kind: str) -> None:
    assert name_kind(path) == kind


@pytest.mark.parametrize("path", ["lines.name", "product.name", "plan", "total", "sku",
                                  "emailVerified", "phoneVerifiedAt", "createdAt", "notes",
                                  "address.city", "status"])
def test_names_that_say_nothing(path: str) -> None:
    assert name_kind(path) is None


def test_name_words_split_camel_snake_and_digits() -> None:
    assert name_words("dateOfBirth") == ["date", "of", "birth"]
    assert name_words("billing_address2") == ["billing", "address", "2"]
    assert name_words("HTTPReferer") == ["http", "referer"]


def test_field_names_that_are_personal_data() -> None:
    assert segment_looks_personal("ann.lee@corp.io")
    assert segment_looks_personal("+44 20 7946 0958")
    assert not segment_looks_personal("customer")
    assert not segment_looks_personal("12345")


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


def test_shapes() -> None:
    assert shape("Ann.Lee@corp.io") == "Aaa.Aaa@aaaa.aa"
    assert shape("+1 (202)  555-0142") == "+9 (999) 999-9999"
    assert shape(None) == "<null>"
    assert shape(True) == "<bool>"
    assert shape(12) == "<int>"
    assert shape(datetime(2000, 1, 1, tzinfo=UTC)) == "<date>"
    assert shape("x" * 100).endswith("…") and len(shape("x" * 100)) == 40


@given(st.text(max_size=60))
def test_a_shape_never_holds_a_letter_or_digit_of_the_value(value: str) -> None:
    result = shape(value)
    assert all(not (char.isalnum() and char not in "aA9") for char in result)
    assert len(result) <= 40
