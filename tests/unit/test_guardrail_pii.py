"""PII detector: per-type positives and hard negatives, exact code-point offsets, overlap
resolution, and precision/recall on the labelled sets (services/guardrail/data/, whose
README says how each split was written).

The quality floors are on the held-out ``test`` split (147 storefront texts in English,
French, German and Spanish, written after the detector and never used to tune it), set a
little below what it measured. The ``dev`` split (249 texts) is what the detector was built
on: it is only checked as a regression of the cases the detector was made for. Labelling
conventions:

- pii.person: a first name + surname, or a name after a cue ("my name is", "je m'appelle") or
  a title ("Mr", "Frau", "Sra."), the title itself excluded. A first name alone ("Maria at
  reception") is not labelled; brand and famous names (Christian Dior, Marie Curie) are not
  PII and count as false positives when found.
- pii.address: the street line with its house number, extended over an apartment, postcode and
  city directly after it on the same line; a UK postcode alone is an address too.
- pii.phone: every phone number, also the fictional 555 numbers people type, but not numbers
  that cannot be dialled (wrong length, invalid area code).
- Invalid checksums (Luhn, mod-97, DNI letter) are not PII: those texts are clean.
"""

from __future__ import annotations

import itertools
import timeit
from collections import Counter

import pytest

from services.guardrail.detectors.base import CheckContext, Detector, Finding
from services.guardrail.detectors.pii import PII_TYPES, PiiDetector
from services.guardrail.evaluation import evaluate_pii, load

DETECTOR = PiiDetector()


def detect(text: str, locale: str = "en-US") -> list[Finding]:
    return DETECTOR.detect(text, CheckContext(locale=locale))


def found(text: str, type_: str, locale: str = "en-US") -> list[str]:
    return [text[f.start : f.end] for f in detect(text, locale) if f.type == type_]


def one(text: str, type_: str, value: str, locale: str = "en-US") -> Finding:
    """The single finding of ``type_``; it must cover exactly ``value`` (code points)."""
    hits = [f for f in detect(text, locale) if f.type == type_]
    assert len(hits) == 1, hits
    start = text.index(value)
    assert (hits[0].start, hits[0].end) == (start, start + len(value))
    assert hits[0].detector == "pii"
    assert 0.0 < hits[0].score <= 1.0
    return hits[0]


def test_satisfies_detector_protocol() -> None:
    det: Detector = PiiDetector()
    assert det.name == "pii"
    assert det.detect("", CheckContext()) == []
    assert det.detect("nothing to see here", CheckContext()) == []


def test_types_filter_and_unknown_type() -> None:
    text = "Mail anna@example.com or call +44 20 7946 0958"
    only_email = PiiDetector(types=["pii.email"]).detect(text, CheckContext())
    assert [f.type for f in only_email] == ["pii.email"]
    with pytest.raises(ValueError, match="unknown PII types"):
        PiiDetector(types=["pii.dna"])


# --------------------------------------------------------------------------------------
# email


def test_email_offsets_after_non_ascii() -> None:
    text = "Zoë\u2019s Café 🌞: écrivez à zoë.cafe@example.fr? non — à zoe.cafe+resa@example.fr."
    f = one(text, "pii.email", "zoe.cafe+resa@example.fr")
    assert f.score >= 0.9


@pytest.mark.parametrize(
    "text",
    [
        "Follow us @grandhotel on Instagram",
        "Price 20 @ 5% discount",
        "user@localhost is not an address here",
        "email me at john at example dot com",
    ],
)
def test_email_negatives(text: str) -> None:
    assert found(text, "pii.email") == []


# --------------------------------------------------------------------------------------
# phone


@pytest.mark.parametrize(
    ("text", "value", "locale"),
    [
        ("Call +44 20 7946 0958 today", "+44 20 7946 0958", "en-US"),
        ("Tel 0049 30 1234567 bitte", "0049 30 1234567", "en-US"),
        ("Reach me at (415) 555-0132.", "(415) 555-0132", "en-US"),
        ("Appelez le 06 12 34 56 78 svp", "06 12 34 56 78", "fr-FR"),
        ("Mobil: 0151 23456789", "0151 23456789", "de-DE"),
        ("Llámame al 612 345 678", "612 345 678", "es-ES"),
        ("Office 212.555.0148 ext", "212.555.0148", "en-US"),
        ("Berlin: 030/1234567.", "030/1234567", "de-DE"),
        ("Call (443) 256-1280x619 anytime", "(443) 256-1280", "en-US"),
    ],
)
def test_phone_positives(text: str, value: str, locale: str) -> None:
    one(text, "pii.phone", value, locale)


def test_phone_runs_with_two_numbers_or_a_leading_group() -> None:
    text = "Call 06 12 34 56 78 / 01 42 68 53 00 thanks"
    assert found(text, "pii.phone", "fr-FR") == ["06 12 34 56 78", "01 42 68 53 00"]
    assert found("room 5 +44 20 7946 0958", "pii.phone") == ["+44 20 7946 0958"]
    assert found("Ruf 12 030 1234567 an", "pii.phone", "de-DE") == ["030 1234567"]


def test_phone_region_from_locale_and_fallback() -> None:
    text = "Ruf an: 030 1234567"
    assert one(text, "pii.phone", "030 1234567", "de-DE").score > 0.8
    # valid in a fallback region only: still found, with a lower score
    assert 0.5 < one(text, "pii.phone", "030 1234567", "en-US").score < 0.8
    assert one(text, "pii.phone", "030 1234567", "de").score > 0.8  # language only


def test_phone_fictional_555_only_after_a_cue() -> None:
    assert one("call me at (555) 123-4567", "pii.phone", "(555) 123-4567").score < 0.5
    assert found("the code is (555) 123-4567", "pii.phone") == []


@pytest.mark.parametrize(
    "text",
    [
        "Order 12345678 cost €1,234.56",
        "Booking 77120045 moved to 14/05/2025",
        "Dates 12.05.2024 - 19.05.2024",
        "The number +44 20 1234 is missing digits",
        "Our old line +1 (123) 456-7890 was never ours",
        "Rooms 101-120 are being renovated",
        "Server 192.168.100.200 restarted",
        "ISBN 978-3-16-148410-0",
        "Price 1 234 567 € for the villa",
        "Invoice 0012345678 is overdue",
        "Card 4111 1111 1111 1112 declined",
        "IBAN DE89 3704 0044 0532 0130 01 is wrong",
    ],
)
def test_phone_hard_negatives(text: str) -> None:
    assert found(text, "pii.phone", "de-DE") == []
    assert found(text, "pii.phone", "en-US") == []


# --------------------------------------------------------------------------------------
# credit cards


@pytest.mark.parametrize(
    ("value", "min_score"),
    [
        ("4111 1111 1111 1111", 0.9),  # Visa
        ("5555-5555-5555-4444", 0.9),  # Mastercard
        ("3782 822463 10005", 0.9),  # Amex 4-6-5
        ("6011111111111117", 0.9),  # Discover, no separators
        ("3056 930902 5904", 0.9),  # Diners 4-6-4
        ("8924 4026 8599 5288", 0.5),  # Luhn-valid, unknown IIN: lower score
    ],
)
def test_card_positives(value: str, min_score: float) -> None:
    text = f"Bitte belasten Sie die Karte {value} für Zimmer 12"
    f = one(text, "pii.credit_card", value, "de-DE")
    assert f.score >= min_score


def test_card_known_iin_scores_higher() -> None:
    known = one("card 4111 1111 1111 1111", "pii.credit_card", "4111 1111 1111 1111")
    unknown = one("card 8924 4026 8599 5288", "pii.credit_card", "8924 4026 8599 5288")
    assert known.score > unknown.score


def test_card_followed_by_expiry() -> None:
    one("card 4111 1111 1111 1111 12/27 cvc 123", "pii.credit_card", "4111 1111 1111 1111")


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # Luhn fails
        "card 5555 5555 5555 4445",  # Luhn fails
        "card 4111 11 1111 1111 11",  # not a card grouping
        "loyalty 9876 5432 1098",  # too short
        "order 1234567890123456789012",  # too long
        "ISBN 978-3-16-148410-0",
    ],
)
def test_card_negatives(text: str) -> None:
    assert found(text, "pii.credit_card") == []


# --------------------------------------------------------------------------------------
# IBAN


@pytest.mark.parametrize(
    "value",
    [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "GB82 WEST 1234 5698 7654 32",
        "FR14 2004 1010 0505 0001 3M02 606",
        "ES91 2100 0418 4502 0005 1332",
        "NL91 ABNA 0417 1643 00",
        "BE68 5390 0754 7034",
    ],
)
def test_iban_positives(value: str) -> None:
    text = f"Überweisung auf {value} BIC COBADEFFXXX"
    f = one(text, "pii.iban", value, "de-DE")
    assert f.score >= 0.95


@pytest.mark.parametrize(
    "text",
    [
        "IBAN DE89 3704 0044 0532 0130 01",  # mod-97 fails
        "IBAN GB82 WEST 1234 5698 7654 33",  # mod-97 fails
        "IBAN DE89 3704 0044 0532 0130",  # too short for DE
        "IBAN FR77 2004 1010 0505 0001 3M02 6",  # FR needs 27 characters
        "IBAN QQ12 3456 7890 1234 56",  # no such country
        "Model KD-55X85J and ref AB12 CDEF GHIJ",
    ],
)
def test_iban_negatives(text: str) -> None:
    assert found(text, "pii.iban") == []
    # the digits of a bad IBAN are not a card or a phone either
    assert found(text, "pii.credit_card") == []
    assert found(text, "pii.phone", "de-DE") == []


# --------------------------------------------------------------------------------------
# IP addresses


@pytest.mark.parametrize(
    "value",
    ["203.0.113.195", "10.0.0.15", "255.255.255.255", "2001:db8::8a2e:370:7334", "fe80::1", "::1"],
)
def test_ip_positives(value: str) -> None:
    one(f"Login from {value}, please check", "pii.ip_address", value)


@pytest.mark.parametrize(
    "text",
    [
        "version 1.2.3 is out",
        "Firmware 1.2.3.4 resets the locks",
        "Update to 2.10.1.4 fixed it",
        "address 256.1.1.1 is invalid",
        "address 01.02.03.04 has leading zeros",
        "Build 10.0.19045.3803",
        "Meeting at 12:30:45 in room 2",
        "Note:: nothing here",
        "Rated 4.5.2024",
    ],
)
def test_ip_negatives(text: str) -> None:
    assert found(text, "pii.ip_address") == []


# --------------------------------------------------------------------------------------
# national ids (checksum-verified)


@pytest.mark.parametrize(
    ("value", "locale"),
    [
        ("48213957T", "es-ES"),  # DNI, mod-23 letter
        ("X1234567L", "es-ES"),  # NIE
        ("185057800608491", "fr-FR"),  # NIR, key 97 - n mod 97
        ("2 92 06 75 123 456 84", "fr-FR"),  # NIR with spaces
        ("RSSMRA85T10A562S", "en-US"),  # codice fiscale check letter
        ("536-22-1947", "en-US"),  # SSN (format + area rules, no checksum exists)
    ],
)
def test_national_id_positives(value: str, locale: str) -> None:
    one(f"Documento: {value}.", "pii.national_id", value, locale)


def test_national_id_keyword_gated() -> None:
    one("BSN: 735379907 voor de factuur", "pii.national_id", "735379907")
    one("Meine Steuer-ID ist 80175989831.", "pii.national_id", "80175989831", "de-DE")
    # the same digits without the keyword are not reported
    assert found("Bestellung 735379907", "pii.national_id", "de-DE") == []
    assert found("Artikel 80175989831", "pii.national_id", "de-DE") == []


def test_ssn_cue_raises_score() -> None:
    plain = one("ref 536-22-1947", "pii.national_id", "536-22-1947")
    cued = one("my SSN is 536-22-1947", "pii.national_id", "536-22-1947")
    assert cued.score > plain.score


@pytest.mark.parametrize(
    "text",
    [
        "DNI 48213957X",  # wrong letter
        "NIE X1234567A",  # wrong letter
        "NIR 185057800608492",  # wrong key
        "CF RSSMRA85T10A562T",  # wrong check letter
        "SSN 000-12-3456",  # area 000
        "SSN 666-12-3456",  # area 666
        "ID 987-65-4321",  # area 900-999
        "SSN 536-00-1947",  # group 00
        "BSN 735379908",  # 11-proof fails
        "Steuer-ID 80175989832",  # check digit fails
    ],
)
def test_national_id_negatives(text: str) -> None:
    assert found(text, "pii.national_id", "es-ES") == []


# --------------------------------------------------------------------------------------
# passports


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("My passport number is C01X00T47.", "C01X00T47"),
        ("Passport no. 533380006, issued in Ottawa", "533380006"),
        ("Reisepass Nr. C01X00T47, gültig bis 2030", "C01X00T47"),
        ("Numéro de passeport : 18AV35412", "18AV35412"),
        ("Número de pasaporte: PAA123456", "PAA123456"),
    ],
)
def test_passport_after_keyword(text: str, value: str) -> None:
    f = one(text, "pii.passport", value)
    assert f.score <= 0.7  # formats have no checksum


@pytest.mark.parametrize(
    "text",
    [
        "Reference C01X00T47 for your booking",  # no keyword
        "My passport expires in 2031.",  # no number
        "Passport photos cost 12 EUR. Order 533380006 shipped.",  # number in the next sentence
    ],
)
def test_passport_negatives(text: str) -> None:
    assert found(text, "pii.passport") == []


# --------------------------------------------------------------------------------------
# addresses


@pytest.mark.parametrize(
    ("text", "value", "locale"),
    [
        (
            "Ship to 221B Baker Street, London NW1 6XE please",
            "221B Baker Street, London NW1 6XE",
            "en-GB",
        ),
        ("We live at 42 Wallaby Way, Sydney", "42 Wallaby Way", "en-US"),
        (
            "Deliver to 55 Water Street, Brooklyn, NY 11201.",
            "55 Water Street, Brooklyn, NY 11201",
            "en-US",
        ),
        ("Adresse: Hauptstraße 5, 10115 Berlin.", "Hauptstraße 5, 10115 Berlin", "de-DE"),
        ("Wohnung in der Karl-Marx-Straße 12a", "Karl-Marx-Straße 12a", "de-DE"),
        ("Büro: Berliner Straße 27", "Berliner Straße 27", "de-DE"),
        ("Wir wohnen Am Markt 3, 53111 Bonn.", "Am Markt 3, 53111 Bonn", "de-DE"),
        ("Au 12 rue de la Paix, 75002 Paris.", "12 rue de la Paix, 75002 Paris", "fr-FR"),
        ("Envío a Calle Mayor 10, 28013 Madrid.", "Calle Mayor 10, 28013 Madrid", "es-ES"),
        ("Oficina en C/ de Alcalá, 42", "C/ de Alcalá, 42", "es-ES"),
        ("Postcode EC1A 1BB for the driver", "EC1A 1BB", "en-GB"),
    ],
)
def test_address_positives(text: str, value: str, locale: str) -> None:
    f = one(text, "pii.address", value, locale)
    assert 0.5 <= f.score <= 0.8


@pytest.mark.parametrize(
    "text",
    [
        "Der Parkplatz 3 in der Tiefgarage war besetzt.",
        "We stayed 3 nights on the 2nd floor.",
        "Postcode 10115 is Berlin Mitte.",  # a bare 5-digit postcode
        "The hotel is 200 metros from Plaza Mayor.",
        "Booking ref BK2 9XY",  # postcode-shaped, but BK is no UK postcode area
        "Room 12, 3 beds and 2 baths",
    ],
)
def test_address_negatives(text: str) -> None:
    assert found(text, "pii.address", "de-DE") == []


# --------------------------------------------------------------------------------------
# person names


@pytest.mark.parametrize(
    ("text", "value", "locale"),
    [
        ("My name is John Smith and I booked", "John Smith", "en-US"),
        ("Bonjour, je m'appelle Camille Moreau.", "Camille Moreau", "fr-FR"),
        ("Hallo, ich heiße Lukas Becker.", "Lukas Becker", "de-DE"),
        ("Hola, me llamo Lucía Fernández.", "Lucía Fernández", "es-ES"),
        ("Maria Schmidt was at the desk", "Maria Schmidt", "en-US"),
        ("Titular: José García López, gracias", "José García López", "es-ES"),
        ("Dear Mr Thompson, thank you", "Thompson", "en-US"),
        ("Frau Schneider hat angerufen", "Schneider", "de-DE"),
        ("Hi, I'm Anna Kowalski's assistant", "Anna Kowalski", "en-US"),
        ("Our host Jean-Pierre Dubois met us", "Jean-Pierre Dubois", "fr-FR"),
    ],
)
def test_person_positives(text: str, value: str, locale: str) -> None:
    f = one(text, "pii.person", value, locale)
    assert 0.5 <= f.score <= 0.7


@pytest.mark.parametrize(
    "text",
    [
        "Maria at reception was lovely",  # first name alone
        "We visited Santa Maria Novella",
        "Hotel Maria Cristina is nice",
        "Thank you Maria Hotel team",
        "See you on Monday May 5",
        "12 Kevin Burgs",  # a house number before it: a street
    ],
)
def test_person_negatives(text: str) -> None:
    assert found(text, "pii.person") == []


# --------------------------------------------------------------------------------------
# overlaps and cost


def test_overlaps_keep_the_higher_score() -> None:
    # the IBAN's digits also look like a card run and a phone: only the IBAN remains
    text = "IBAN DE89 3704 0044 0532 0130 00"
    assert [f.type for f in detect(text, "de-DE")] == ["pii.iban"]
    findings = detect("Mr Smith, mail smith@example.com, 4111 1111 1111 1111, +44 20 7946 0958")
    starts = [f.start for f in findings]
    assert starts == sorted(starts)
    for a, b in itertools.pairwise(findings):
        assert a.end <= b.start


def test_cost_for_one_kilobyte() -> None:
    # generous bound (the measured cost is ~0.05-0.45 ms on a 2-core dev machine)
    texts = [row["text"] for row in load("pii", "dev")]
    kb = " ".join(texts)[:1024]
    ctx = CheckContext(locale="en-GB")
    per_call = min(timeit.repeat(lambda: DETECTOR.detect(kb, ctx), number=10, repeat=5)) / 10
    assert per_call < 0.005


# --------------------------------------------------------------------------------------
# precision / recall on the labelled sets


# Test split, measured 2026-12-06 (overall P 0.945 / R 0.954 / F1 0.950, 104/6/5): floors about
# one error below each measured value (per type: a type of n spans loses 1/n per miss).
# pii.person is the weak type (0.839 / 0.897): names outside the embedded first-name list are
# missed, brand names built from first names are found; its score is 0.6-0.7 so a policy can
# threshold it away.
TEST_FLOORS: dict[str, tuple[float, float]] = {  # type: (precision, recall); (spans)
    "pii.email": (0.90, 0.90),  # 1.000 / 1.000 (10)
    "pii.phone": (0.88, 0.93),  # 0.941 / 1.000 (16)
    "pii.credit_card": (0.90, 0.90),  # 1.000 / 1.000 (10)
    "pii.iban": (0.87, 0.87),  # 1.000 / 1.000 (8)
    "pii.ip_address": (0.83, 0.83),  # 1.000 / 1.000 (6)
    "pii.national_id": (0.88, 0.77),  # 1.000 / 0.889 (9)
    "pii.passport": (0.83, 0.66),  # 1.000 / 0.833 (6)
    "pii.address": (0.93, 0.93),  # 1.000 / 1.000 (15)
    "pii.person": (0.80, 0.85),  # 0.839 / 0.897 (29)
}
TEST_OVERALL_FLOOR = (0.92, 0.93, 0.92)  # precision, recall, F1
TEST_LANGUAGE_F1_FLOORS = {"en": 0.89, "fr": 0.93, "de": 0.92, "es": 0.93}
"""Measured F1 per language: en 0.921 (45 spans), fr 0.976 (20), de 0.955 (22), es 0.978 (22)."""
DEV_F1_FLOOR = 0.95
"""The dev split measures 0.964 (in-sample): a regression check, not a quality figure."""


@pytest.mark.parametrize("split", ["dev", "test"])
def test_labelled_set_is_well_formed(split: str) -> None:
    rows = load("pii", split)
    assert len(rows) >= (180 if split == "dev" else 120)
    assert len({r["id"] for r in rows}) == len(rows)
    langs = Counter(r["lang"] for r in rows)
    assert set(langs) == {"en", "fr", "de", "es"}
    assert min(langs.values()) >= 25
    clean = sum(1 for r in rows if not r["spans"])
    assert 0.28 <= clean / len(rows) <= 0.40
    for r in rows:
        assert set(r) == {"id", "lang", "text", "spans"}
        last_end = 0
        for s in sorted(r["spans"], key=lambda s: s["start"]):
            assert s["type"] in PII_TYPES
            assert last_end <= s["start"] < s["end"] <= len(r["text"]), r["id"]
            value = r["text"][s["start"] : s["end"]]
            assert value == value.strip() and value, r["id"]
            last_end = s["end"]


def test_test_split_is_disjoint_from_dev() -> None:
    dev = {r["text"] for r in load("pii", "dev")}
    assert not [r["id"] for r in load("pii", "test") if r["text"] in dev]


def test_precision_recall_on_the_test_split() -> None:
    """Scored with the bench's matcher (services.guardrail.evaluation): same type, at least
    half of a labelled span covered, each labelled span matched once, findings >= 0.5."""
    result = evaluate_pii(DETECTOR, load("pii", "test"))
    print("\n" + result.report.table("pii, test split"))
    for t, (p_floor, r_floor) in TEST_FLOORS.items():
        c = result.report.by_type[t]
        assert c.tp + c.fn >= 6, f"{t}: too few labelled spans to measure"
        assert c.precision >= p_floor, f"{t} precision {c.precision:.3f} < {p_floor}"
        assert c.recall >= r_floor, f"{t} recall {c.recall:.3f} < {r_floor}"
    overall = result.report.overall
    p_floor, r_floor, f1_floor = TEST_OVERALL_FLOOR
    assert overall.precision >= p_floor and overall.recall >= r_floor and overall.f1 >= f1_floor
    for lang, floor in TEST_LANGUAGE_F1_FLOORS.items():
        f1 = result.by_lang[lang].overall.f1
        print(f"{lang}: F1 {f1:.3f}")
        assert f1 >= floor, f"{lang}: F1 {f1:.3f} < {floor}"


def test_dev_split_regression() -> None:
    """The rows the detector was tuned on: a drop here means a tuned-for case broke."""
    result = evaluate_pii(DETECTOR, load("pii", "dev"))
    assert result.report.overall.f1 >= DEV_F1_FLOOR, result.report.table("pii, dev split")
