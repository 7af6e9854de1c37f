"""Detectors of personal data, by a value's content or by a field's name. Pure: no I/O.

`stagesync pii scan` runs them over a sample of production to propose `pii` rules and `allow`
entries (`cli.pii_proposal`); the workers use `segment_looks_personal` so that a field
*name* holding personal data (a map keyed by email) is never recorded or logged as such.

Value detectors answer for a whole value (`is_email("ann@corp.io")`); `find_in_text` looks for
the same kinds inside free text. They lean towards precision on structured values (a number
must pass Luhn, an IBAN mod-97 and its country's length, an order reference with a date in
front is no phone) and leave it to the scanner's shares to decide over many values.

Name detectors read the last path segment as words (`dateOfBirth` -> date, of, birth), so
`emailVerified` (a flag) is not an email field while `workEmail` is.

Shapes (`shape`) show what a value looks like without showing it: letters become `a`/`A`,
digits `9`, everything else stays (`Ann.Lee@corp.io` -> `Aaa.Aaa@aaaa.aa`).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import date, datetime
from typing import Any, Literal

Kind = Literal[
    "email", "phone", "card_number", "iban", "ip_address", "street_address", "date_of_birth",
    "person_name", "government_id", "free_text", "personal_keys",
]
# Kinds found in a value's content, in the order a whole value is tested against them.
VALUE_KINDS: tuple[Kind, ...] = (
    "email", "iban", "card_number", "ip_address", "phone", "street_address",
)

__all__ = [
    "VALUE_KINDS",
    "Kind",
    "find_in_text",
    "iban_valid",
    "is_card_number",
    "is_email",
    "is_iban",
    "is_ip_address",
    "is_phone",
    "is_street_address",
    "luhn_valid",
    "name_kind",
    "name_words",
    "segment_looks_personal",
    "shape",
    "value_kind",
]

MAX_SHAPE = 40

# --------------------------------------------------------------------------------------------
# Emails
# --------------------------------------------------------------------------------------------

_EMAIL_CORE = (r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
               r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}")
_EMAIL = re.compile(_EMAIL_CORE)
_EMAIL_IN_TEXT = re.compile(r"(?<![\w.@])" + _EMAIL_CORE + r"(?![\w@-])")


def is_email(text: str) -> bool:
    """An address as people write it: `local@domain.tld` (no display name, no comments)."""
    return len(text) <= 254 and _EMAIL.fullmatch(text.strip()) is not None


# --------------------------------------------------------------------------------------------
# Card numbers (ISO/IEC 7812: issuer prefix, 12 to 19 digits, Luhn check digit)
# --------------------------------------------------------------------------------------------

_CARD_SHAPE = re.compile(r"\d{4}(?:[ -]?\d{2,7}){2,4}|\d{12,19}")
_CARD_IN_TEXT = re.compile(
    r"(?<![\d-])\d{4}(?:[ -]?\d{2,7}){2,4}(?![\d-])|(?<!\d)\d{12,19}(?!\d)"
)
# Issuer prefixes of the networks in use (Visa, Mastercard, Amex, Discover, JCB, Diners,
# UnionPay, Maestro, Mir): a Luhn-valid number with another prefix is more likely an id.
_CARD_PREFIX = re.compile(
    r"4|5[0-8]|2(?:2[2-9]|[3-6]\d|7[01]|720)|220[0-4]|3[0-9]|6011|64[4-9]|65|62|6[37]"
    r"|639|2131|1800|0604"
)


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check that every payment card number's last digit satisfies."""
    if not digits.isdigit() or not digits.isascii():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def is_card_number(text: str) -> bool:
    """12-19 digits (groups split by spaces or dashes), a card issuer's prefix, Luhn-valid."""
    stripped = text.strip()
    if not _CARD_SHAPE.fullmatch(stripped):
        return False
    digits = re.sub(r"[ -]", "", stripped)
    return (12 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) is not None
            and luhn_valid(digits))


# --------------------------------------------------------------------------------------------
# IBANs (ISO 13616: country, two check digits, mod 97 == 1, the country's length)
# --------------------------------------------------------------------------------------------

IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
_IBAN_SHAPE = re.compile(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}")
_IBAN_IN_TEXT = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4}){3,8}(?![A-Za-z0-9])")


def iban_valid(iban: str) -> bool:
    """The mod-97 check of an IBAN without spaces: the first four characters moved to the
    end, letters read as 10..35, the number must leave 1."""
    if not iban.isascii() or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(char, 36)) for char in rearranged.upper())
    return int(number) % 97 == 1


def is_iban(text: str) -> bool:
    compact = re.sub(r" ", "", text.strip())
    if not _IBAN_SHAPE.fullmatch(compact):
        return False
    return IBAN_LENGTHS.get(compact[:2]) == len(compact) and iban_valid(compact)


# --------------------------------------------------------------------------------------------
# IP addresses
# --------------------------------------------------------------------------------------------

_IPV4_IN_TEXT = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")
_IPV6_IN_TEXT = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")


def is_ip_address(text: str) -> bool:
    """A dotted-quad IPv4 or an IPv6 address (with at least two groups of hex digits)."""
    stripped = text.strip()
    try:
        address = ipaddress.ip_address(stripped)
    except ValueError:
        return False
    if address.version == 6:
        return sum(1 for group in stripped.split(":") if group) >= 2
    return True


# --------------------------------------------------------------------------------------------
# Phone numbers
# --------------------------------------------------------------------------------------------

_PHONE = re.compile(
    r"(?P<main>\+?\(?\d[\d\s().\-/]{5,}\d)(?:\s*(?:x|ext\.?|extension)\s*\d{1,6})?", re.I
)
_PHONE_IN_TEXT = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?\(?\d{1,4}\)?(?:[\s.-]?\d{2,5}){1,4}"
    r"|\(\d{2,5}\)\s?\d{3,4}[\s.-]?\d{3,4}|\d{3}[.-]\d{3}[.-]\d{4}"
    r"|0\d{2,4}[\s-]\d{3,4}[\s-]?\d{3,4})(?![\w-])"
)
# An ISO date in front (`2024-06-...`, `20240612...`) makes a reference, not a phone number.
_DATE_PREFIX = re.compile(
    r"(?:19|20)\d{2}[-/.]?(?:0[1-9]|1[0-2])(?:[-/.]?(?:0[1-9]|[12]\d|3[01]))?"
)
_THOUSANDS = re.compile(r"\d{1,3}(?:[.,\s]\d{3})+")
_GROUP_SPLIT = re.compile(r"[\s().\-/]+")


def is_phone(text: str) -> bool:
    """A phone number as written: international (`+44 20 7946 0958`, `0044 ...`) with 7-15
    digits, or national with separators (`(202) 555-0142`, `020 7946 0958`) with 9-15.

    Not a phone: a bare run of digits (an id, an amount), a number with a date in front or
    grouped by thousands, groups too long for a phone number, letters anywhere.
    """
    match = _PHONE.fullmatch(text.strip())
    if match is None:
        return False
    main = match["main"]
    if main.count("(") != main.count(")"):
        return False
    digits = re.sub(r"\D", "", main)
    international = main.startswith("+") or (main.startswith("00") and len(digits) > 10)
    if not (7 if international else 9) <= len(digits) <= 15:
        return False
    body = main.lstrip("+")
    if _DATE_PREFIX.match(body) or _THOUSANDS.fullmatch(body):
        return False
    groups = [group for group in _GROUP_SPLIT.split(body) if group]
    if len(groups) == 1:
        return international  # 2025550142 could be anything; +4915112345678 is a phone
    return len(groups) <= 6 and all(len(group) <= 5 for group in groups[1:]) \
        and len(groups[0]) <= 5


# --------------------------------------------------------------------------------------------
# Street addresses
# --------------------------------------------------------------------------------------------

# USPS street suffixes (Publication 28) and their usual abbreviations, plus common British ones.
_STREET_SUFFIXES = (
    "Alley|Aly|Avenue|Ave|Av|Bend|Bluff|Boulevard|Blvd|Branch|Bridge|Brook|Brooks|Burg|Burgs"
    "|Bypass|Byp|Camp|Canyon|Cape|Causeway|Center|Centers|Circle|Cir|Circles|Cliff|Cliffs"
    "|Close|Club|Common|Commons|Corner|Corners|Course|Court|Ct|Courts|Cove|Coves|Creek|Crescent"
    "|Cres|Crest|Crossing|Crossroad|Curve|Dale|Dam|Divide|Drive|Dr|Drives|Estate|Estates"
    "|Expressway|Expy|Extension|Extensions|Ext|Fall|Falls|Ferry|Field|Fields|Flat|Flats|Ford|Fords"
    "|Forest|Forge|Forges|Fork|Forks|Fort|Freeway|Fwy|Garden|Gardens|Gateway|Glen|Glens|Green"
    "|Greens|Grove|Groves|Harbor|Harbors|Haven|Heights|Hts|Highway|Hwy|Hill|Hills|Hollow|Inlet"
    "|Island|Islands|Isle|Junction|Junctions|Key|Keys|Knoll|Knolls|Lake|Lakes|Land|Landing"
    "|Lane|Ln|Light|Lights|Loaf|Lock|Locks|Lodge|Loop|Mall|Manor|Manors|Meadow|Meadows|Mews"
    "|Mill|Mills|Mission|Motorway|Mount|Mountain|Mountains|Neck|Orchard|Oval|Overpass|Park"
    "|Parks|Parkway|Pkwy|Parkways|Pass|Passage|Path|Pike|Pine|Pines|Place|Pl|Plain|Plains"
    "|Plaza|Plz|Point|Points|Port|Ports|Prairie|Radial|Ramp|Ranch|Rapid|Rapids|Rest|Ridge"
    "|Ridges|River|Road|Rd|Roads|Route|Rte|Row|Rue|Run|Shoal|Shoals|Shore|Shores|Skyway"
    "|Spring|Springs|Spur|Spurs|Square|Sq|Squares|Station|Stravenue|Stream|Street|St|Streets"
    "|Summit|Terrace|Ter|Throughway|Trace|Track|Trafficway|Trail|Trl|Trailer|Tunnel|Turnpike"
    "|Underpass|Union|Unions|Valley|Valleys|Via|Viaduct|View|Views|Village|Villages|Ville"
    "|Vista|Walk|Walks|Wall|Way|Ways|Well|Wells"
)
# A house number, one to four capitalised words, a suffix: `12 Baker Street`, `8012 Hull
# Village Suite 759`. A house number, then the kind of street: `4 Rue de la Paix`. Or
# European: `Hauptstraße 12`, `Keizersgracht 123`.
_HOUSE = r"\d{1,6}[A-Za-z]?(?:[-/]\d{1,5})?,?\s+"
_STREET_CORE = (
    r"(?:" + _HOUSE + r"(?:(?:[A-Z][A-Za-z'.-]*|of|de|la|du|the)\s+){1,4}"
    r"(?:" + _STREET_SUFFIXES + r")\.?(?![A-Za-z])"
    r"|" + _HOUSE + r"(?:Rue|Via|Calle|Avenida|Boulevard|Chemin|Allée|Quai|Impasse|Rua|Viale"
    r"|Piazza|Plaza|Place)\s+(?:(?:de|del|della|di|la|le|les|du|des|do|da)\s+){0,2}"
    r"[A-ZÀ-Ý][\w'-]+"
    r"|[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|str\.|weg|gasse|platz|allee|straat|gracht|laan|vej"
    r"|gatan|gata|veien)\s+\d{1,5}[a-z]?(?![\w]))"
)
_STREET = re.compile(_STREET_CORE)
_STREET_IN_TEXT = re.compile(r"(?<![\w])" + _STREET_CORE)
_MAX_ADDRESS_WORDS = 16


def is_street_address(text: str) -> bool:
    """A value that starts with a street address (what follows, a flat or a city, may vary)."""
    stripped = text.strip()
    return (len(stripped.split()) <= _MAX_ADDRESS_WORDS
            and _STREET.match(stripped) is not None)


# --------------------------------------------------------------------------------------------
# Whole values and free text
# --------------------------------------------------------------------------------------------

_VALUE_TESTS = (
    ("email", is_email), ("iban", is_iban), ("card_number", is_card_number),
    ("ip_address", is_ip_address), ("phone", is_phone), ("street_address", is_street_address),
)


def value_kind(value: Any) -> Kind | None:
    """The kind of personal data a whole value is, if any (strings only; numbers are not
    read as card or phone numbers: those are written as text)."""
    if not isinstance(value, str) or not value.strip():
        return None
    for kind, test in _VALUE_TESTS:
        if test(value):
            return kind  # type: ignore[return-value]
    return None


def find_in_text(text: str) -> dict[Kind, str]:
    """The kinds of personal data found inside a text, each with the first fragment found.

    Each candidate fragment must pass the same test as a whole value (Luhn, mod 97, the phone
    rules), so a product code in a sentence is not a card number.
    """
    found: dict[Kind, str] = {}
    searches: tuple[tuple[Kind, re.Pattern[str], Any], ...] = (
        ("email", _EMAIL_IN_TEXT, is_email),
        ("iban", _IBAN_IN_TEXT, is_iban),
        ("card_number", _CARD_IN_TEXT, is_card_number),
        ("ip_address", _IPV4_IN_TEXT, is_ip_address),
        ("ip_address", _IPV6_IN_TEXT, is_ip_address),
        ("phone", _PHONE_IN_TEXT, is_phone),
        ("street_address", _STREET_IN_TEXT, lambda fragment: True),
    )
    for kind, pattern, test in searches:
        if kind in found:
            continue
        for match in pattern.finditer(text):
            fragment = match.group(0).strip()
            if kind == "card_number" and len(re.sub(r"\D", "", fragment)) < 13:
                continue  # 12-digit Maestro numbers: too close to order numbers in prose
            if test(fragment):
                found[kind] = fragment
                break
    return found


# --------------------------------------------------------------------------------------------
# Field names
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_PERSON_NAME_KEYS = frozenset({
    "firstname", "lastname", "fullname", "middlename", "givenname", "givennames",
    "familyname", "surname", "maidenname", "nickname", "forename", "forenames", "displayname",
    "personname", "contactname", "customername", "username", "cardholdername", "holdername",
    "fname", "lname", "nom", "prenom", "vorname", "nachname", "apellido", "nombre",
})
# A bare `name` is a person's inside these (and at the top level); a product's elsewhere.
_PERSON_CONTAINERS = frozenset({
    "customer", "customers", "user", "users", "contact", "contacts", "person", "people",
    "owner", "recipient", "sender", "billing", "shipping", "author", "employee", "employees",
    "patient", "member", "members", "guest", "guests", "buyer", "seller", "holder",
    "cardholder", "beneficiary", "payer", "payee", "driver", "passenger", "manager",
    "emergencycontact", "account", "accountholder", "profile", "client", "student",
    "teacher", "parent", "child", "children", "spouse", "applicant", "signer", "agent",
})
_DOB_KEYS = frozenset({"dob", "born", "bornon", "birthday", "birthdate", "dateofbirth"})
_GOVERNMENT_ID_KEYS = frozenset({
    "ssn", "socialsecuritynumber", "socialsecurity", "sin", "nin", "nino",
    "nationalinsurancenumber", "nationalid", "nationalidnumber", "passport",
    "passportnumber", "passportno", "taxid", "tin", "taxnumber", "vatid", "driverslicense",
    "driverslicence", "driverlicense", "licensenumber", "idnumber", "idcard", "personalnumber",
    "personnummer", "bsn", "nif", "nie", "codicefiscale", "steuerid",
})


def name_words(segment: str) -> list[str]:
    """`dateOfBirth` -> [date, of, birth]; `billing_address2` -> [billing, address, 2]."""
    return [word.lower() for word in _WORD.findall(segment)]


def name_kind(path: str) -> Kind | None:
    """What a field's name says it holds, from the last segment of a dotted path.

    Dates of birth, person names and government ids are found by name only (their values
    look like any date, word or number); emails, phones and street addresses by name too,
    for fields the sample only shows empty.
    """
    segments = path.split(".")
    words = name_words(segments[-1])
    if not words:
        return None
    joined = "".join(words)
    last = words[-1]
    if joined in _DOB_KEYS or "birth" in words:
        return "date_of_birth"
    if joined in _GOVERNMENT_ID_KEYS or joined.rstrip("0123456789") in _GOVERNMENT_ID_KEYS:
        return "government_id"
    if joined in _PERSON_NAME_KEYS or (len(words) >= 2 and words[-1] == "name" and (
            words[-2] in {"first", "last", "middle", "full", "given", "family", "maiden", "sur"}
            or words[-2] in _PERSON_CONTAINERS)):
        return "person_name"
    if joined == "name":
        parent = "".join(name_words(segments[-2])) if len(segments) > 1 else ""
        if len(segments) == 1 or parent in _PERSON_CONTAINERS:
            return "person_name"
    if last in {"email", "mail"} or joined.endswith(("emailaddress", "mailaddress")):
        return "email"
    if last in {"phone", "mobile", "telephone", "tel", "fax", "cell", "msisdn"} \
            or joined.endswith(("phonenumber", "mobilenumber", "faxnumber")):
        return "phone"
    if "street" in words or last in {"address", "addr"} or joined.startswith(
            ("addressline", "streetaddress", "address1", "address2")):
        return "street_address"
    if joined in {"iban", "bankaccount", "accountnumber", "bankaccountnumber"}:
        return "iban"
    if joined in {"cardnumber", "creditcard", "creditcardnumber", "pan", "ccnumber"}:
        return "card_number"
    if joined in {"ip", "ipaddress", "ipv4", "ipv6", "remoteaddr", "clientip"}:
        return "ip_address"
    return None


def segment_looks_personal(segment: str) -> bool:
    """Whether a field *name* is itself personal data (a map keyed by email, phone, card...)."""
    return value_kind(segment) in {"email", "iban", "card_number", "ip_address", "phone"}


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


def shape(value: Any) -> str:
    """What a value looks like, never what it is: `Ann.Lee@corp.io` -> `Aaa.Aaa@aaaa.aa`.

    Letters become `a` (or `A`), digits `9`; punctuation and spaces stay (runs of spaces become
    one). Long shapes are cut. Non-strings show their type: `<date>`, `<int>`, `<bool>`...
    """
    if value is None:
        return "<null>"
    if isinstance(value, bool):
        return "<bool>"
    if isinstance(value, datetime | date):
        return "<date>"
    if isinstance(value, int | float):
        return f"<{type(value).__name__}>"
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    out: list[str] = []
    for char in value:
        if char.isalpha():
            out.append("A" if char.isupper() else "a")
        elif char.isalnum():  # digits of any script, numerals such as ¼ or Ⅻ
            out.append("9")
        elif char.isspace():
            if not out or out[-1] != " ":
                out.append(" ")
        else:
            out.append(char)
    text = "".join(out).strip()
    return text if len(text) <= MAX_SHAPE else text[: MAX_SHAPE - 1] + "…"
