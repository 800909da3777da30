"""PII detector for storefront texts (reviews, chats, generated copy) in EN, FR, DE, ES.

Finding types and how each is found (scores are confidences, not decisions):

- ``pii.email``        regex (0.98).
- ``pii.phone``        candidate regex, then ``phonenumbers`` validation (the metadata of
                       libphonenumber): international numbers (``+``/``00``) anywhere,
                       national numbers in the shopper's region (from ``ctx.locale``) at 0.85,
                       in one of the fallback regions at 0.7; a phone cue word before the
                       number ("call", "Tel.", "appelez", "llame"...) adds 0.1. A number that
                       is only *possible* (right length, e.g. the fictional US 555 area code)
                       counts only right after a phone cue, at 0.4. Digits inside IBAN- or
                       card-shaped runs, dates, prices and numbers after "order"/"room"/
                       "Buchung"... are not phone numbers. (``PhoneNumberMatcher`` was ~3.5 ms
                       per KB with numbers in it: too slow, hence regex + validation.)
- ``pii.credit_card``  13-19 digits, spaces/dashes in card groupings, Luhn-checked; a known
                       IIN prefix with a matching length gives 0.95, otherwise 0.55.
- ``pii.iban``         country length table + ISO 7064 mod-97 (0.97).
- ``pii.ip_address``   IPv4 (octets <= 255, no leading zeros, not after "version"/"build")
                       and IPv6, both validated with ``ipaddress`` (0.85, 0.95 after "IP").
- ``pii.national_id``  checksum-verified only: Spanish DNI/NIE (mod-23 letter), French NIR
                       (97 - n mod 97), Italian codice fiscale (check letter), Dutch BSN
                       (11-proof, next to "BSN"), German Steuer-ID (ISO 7064 mod 11,10, next
                       to "Steuer-ID"); US SSN (dashed, area/group/serial rules; no checksum
                       exists, so 0.75 unless "SSN"/"social security" is near).
- ``pii.passport``     a 6-9 character number with a digit, only shortly after a passport
                       keyword (no checksum in most formats: 0.6).
- ``pii.address``      street lines in US/UK ("221B Baker Street"), DE ("Hauptstraße 5",
                       "Berliner Straße 12", "Am Markt 3, 53111 Bonn"), FR ("12 rue de la
                       Paix") and ES ("Calle Mayor 10") shapes, extended over a following
                       postcode + city; UK postcodes (postcode area checked) on their own
                       (0.55-0.75). 5-digit postcodes count only inside an address line.
- ``pii.person``       a name after a cue ("my name is", "je m'appelle", "ich heiße", "me
                       llamo": 0.7), after a title ("Mr", "Frau", "Mme", "Sra.": 0.65), or a
                       common first name from an embedded list followed by a capitalised
                       surname (0.6). Single first names are not reported.

Overlapping findings: the higher score wins (ties: the earlier, then the longer one).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Final

import phonenumbers
from phonenumbers import PhoneMetadata

from services.guardrail.detectors.base import CheckContext, Finding

__all__ = ["PII_TYPES", "PiiDetector"]

EMAIL: Final = "pii.email"
PHONE: Final = "pii.phone"
CREDIT_CARD: Final = "pii.credit_card"
IBAN: Final = "pii.iban"
IP_ADDRESS: Final = "pii.ip_address"
NATIONAL_ID: Final = "pii.national_id"
PASSPORT: Final = "pii.passport"
ADDRESS: Final = "pii.address"
PERSON: Final = "pii.person"

PII_TYPES: Final[tuple[str, ...]] = (
    EMAIL,
    PHONE,
    CREDIT_CARD,
    IBAN,
    IP_ADDRESS,
    NATIONAL_ID,
    PASSPORT,
    ADDRESS,
    PERSON,
)

# Upper/lower-case letter classes for the four languages (Latin-1 + a few Latin Extended-A).
_UP = "A-ZÀ-ÖØ-ÞŒŠŽŸ"
_LO = "a-zß-öø-ÿœšž"
# A capitalised word: "Smith", "O'Brien", "McDonald", "Müller". Patterns that scan the whole
# text start with a character class (the lookbehind comes after it): CPython's re then skips
# positions that cannot start a match in C, 3-4x faster than a leading lookbehind.
_CAPWORD = rf"[{_UP}](?:['\u2019][{_UP}])?[{_LO}]+(?:[{_UP}][{_LO}]+)?"

_DIGIT = re.compile(r"\d")


def _words(s: str) -> frozenset[str]:
    return frozenset(s.split())


def _suffix_before_number(low: str, suffixes: Iterable[str]) -> bool:
    """Whether a suffix ("straße") is followed by a house number ("straße 5", "str.12")."""
    for w in suffixes:
        i = low.find(w)
        while i >= 0:
            j = i + len(w)
            if low[j : j + 1].isdigit() or (low[j : j + 1] == " " and low[j + 1 : j + 2].isdigit()):
                return True
            i = low.find(w, j)
    return False


def _lower_aligned(text: str) -> str:
    """``text.lower()`` with the same length, so that its indices are ``text``'s."""
    low = text.lower()
    if len(low) != len(text):  # e.g. "İ" lower-cases to two code points
        low = "".join(ch.lower()[:1] for ch in text)
    return low


def _word_hits(low: str, words: Iterable[str]) -> list[tuple[int, int, str]]:
    """Whole-word occurrences (start, end, word) of lower-case ``words`` in ``low``."""
    hits: list[tuple[int, int, str]] = []
    n = len(low)
    for w in words:
        i = low.find(w)
        while i >= 0:
            j = i + len(w)
            if (i == 0 or not low[i - 1].isalnum()) and (
                j == n or not low[j].isalnum() or not w[-1].isalnum()
            ):
                hits.append((i, j, w))
            i = low.find(w, i + 1)
    hits.sort()
    return hits


# --------------------------------------------------------------------------------------
# email: searched only in a window before each "@"
_EMAIL = re.compile(
    r"[A-Za-z0-9](?<![\w.%+-][A-Za-z0-9])(?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)

# --------------------------------------------------------------------------------------
# phone
# ends before a letter, except an extension ("x594" / "ext. 12" stays outside the span)
_PHONE = re.compile(r"[+(\d](?<![\w+@/.,:-][+(\d])[\d ().\-/+]{5,25}\d(?!(?!x\d)[\w@]|[.,/-]\d)")
_PHONE_SEP = re.compile(r"[ ./-]+")
_PHONE_SHAPE = re.compile(r"(?:\+|\(\+?)?\d[\d ().\-/]*")
_PHONE_PUNCTUATION = str.maketrans("", "", "+() .-/")
"""Deletes what a _PHONE_SHAPE match holds besides digits."""
_DATE_LIKE = re.compile(r"\d{1,4}([./-])\d{1,2}\1\d{1,4}|\d{1,3}(?:\.\d{1,3}){3}")
_PHONE_CUE = re.compile(
    r"(?i:\b(?:tel|tél|phone|call|ring|mobile|cell|whats ?app|sms|text me|fax|reach me|"
    r"téléphone|telephone|portable|appel(?:ez|er)?|joindre|numéro|"
    r"telefon|handy|anrufen|rufen|erreichbar|mobil|nummer|"
    r"tel[eé]fono|m[oó]vil|llam(?:ar|e|ame|adme)|llámame|celular|número)\b)"
)
_NEG_NUMBER_CUE = re.compile(
    r"(?i:\b(?:order|booking|reservation|confirmation|ref|reference|invoice|tracking|"
    r"room|ticket|case|sku|item|commande|réservation|facture|chambre|bestellung|buchung|"
    r"rechnung|zimmer|vorgang|pedido|reserva|factura|habitaci[oó]n|localizador)\b)"
)
_CURRENCY_BEFORE = re.compile(r"[€$£¥]\s?$|(?i:\b(?:eur|usd|gbp|chf))\s?$")

# --------------------------------------------------------------------------------------
# credit card
_CARD = re.compile(r"\d(?<![\w.,-]\d)(?:[ -]?\d){12,22}(?![\w]|[.,-]\d)")
_CARD_CUE = re.compile(
    r"(?i:\b(?:card|credit|debit|visa|master ?card|amex|american express|carte|cb|"
    r"karte|kreditkarte|tarjeta|cr[eé]dito|d[eé]bito)\b)"
)

# --------------------------------------------------------------------------------------
# IBAN
_IBAN = re.compile(r"[A-Z](?<![\w-][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]){10,32}(?![\w])")
_IBAN_LENGTHS: Final[dict[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip

# --------------------------------------------------------------------------------------
# IP addresses
_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(
    r"[0-9A-Fa-f:](?<![\w:.][0-9A-Fa-f:])[0-9A-Fa-f:]*:[0-9A-Fa-f:]*"
    r"(?:(?<=:)\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})?(?![\w:])"
)
_VERSION_CUE = re.compile(
    r"(?i:\b(?:v|ver|version|versi[oó]n|build|release|firmware|update|app|ios|android|"
    r"patch|sdk|api|upgrade)\.?(?:\s+(?:to|is|was))?\s*:?\s*$)"
)
_IP_CUE = re.compile(r"(?i:\bip(?:v[46])?\b|\badresse ip\b|\bdirecci[oó]n ip\b)")

# --------------------------------------------------------------------------------------
# national ids
# US SSN ("536-22-1947"), Spanish DNI ("48213957T") and French NIR ("1 85 05 78 006 084 91")
# all start with a digit: one scan, one group each
_NUM_ID = re.compile(
    r"\d(?<![\w-]\d)(?:"
    r"(\d\d-\d\d-\d{4})(?![\w]|-\d)"
    r"|(\d{7}[- ]?[A-Z])(?!\w)"
    r"|( ?\d{2} ?(?:0[1-9]|1[0-2]|[2-9]\d) ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2})(?![\w])"
    r")"
)
_SSN_CUE = re.compile(r"(?i:\bssn\b|social security|\bsocial sec\b)")
_NIE = re.compile(r"[XYZ](?<![\w-][XYZ])[- ]?\d{7}[- ]?[A-Z](?!\w)")
_DNI_LETTERS: Final = "TRWAGMYFPDXBNJZSQVHLCKE"
_OMO = "LMNPQRSTUV"  # omocodia: letters standing in for digits in a codice fiscale
_CF = re.compile(
    rf"[A-Z](?<![\w][A-Z])[A-Z]{{5}}[\d{_OMO}]{{2}}[ABCDEHLMPRST][\d{_OMO}]{{2}}[A-Z]"
    rf"[\d{_OMO}]{{3}}[A-Z](?![\w])"
)
_CF_ODD: Final[dict[str, int]] = {}
_CF_EVEN: Final[dict[str, int]] = {}
_odd_values = (1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16,
               10, 22, 25, 24, 23)  # fmt: skip
for _i in range(10):
    _CF_ODD[str(_i)] = _odd_values[_i]
    _CF_EVEN[str(_i)] = _i
for _i in range(26):
    _CF_ODD[chr(65 + _i)] = _odd_values[_i]
    _CF_EVEN[chr(65 + _i)] = _i
# Keyword-gated numbers (no checksum strong enough to stand alone, or a format that is too
# generic): passports, Dutch BSN, German Steuer-ID. Keywords are found with str.find in the
# lower-cased text (a case-insensitive regex alternation is ~10x slower to scan).
_GATED_KEYWORDS: Final[dict[str, str]] = {
    "passport": PASSPORT, "passeport": PASSPORT, "pasaporte": PASSPORT,
    "reisepass": PASSPORT, "passnummer": PASSPORT, "pass-nr": PASSPORT,
    "bsn": "bsn", "burgerservicenummer": "bsn", "sofinummer": "bsn",
    "steuer-id": "steuer", "steuerid": "steuer", "steueridentifikationsnummer": "steuer",
    "steuer-identifikationsnummer": "steuer", "idnr": "steuer", "tax id": "steuer",
}  # fmt: skip
_PASSPORT_NUM = re.compile(r"[A-Z0-9](?<![\w-][A-Z0-9])[A-Z0-9]{5,8}(?![\w-])")
_BSN_NUM = re.compile(r"\d(?<![\w.-]\d)\d{3}\.?\d{2}\.?\d{3}(?![\w]|[.-]\d)")
_STEUER_NUM = re.compile(r"\d(?<![\w-]\d)\d ?\d{3} ?\d{3} ?\d{3}(?![\w]|[.-]\d)")
# a sentence end, but not the dot of "No." / "Nr." / "Num." before the number
_SENTENCE_END = re.compile(r"(?<![Nn]o)(?<![Nn]r)(?<![Nn]um)[.!?]\s|\n")

# --------------------------------------------------------------------------------------
# addresses
_ZIP_CITY = (
    rf"\d{{5}}\s+[{_UP}][\w'\u2019-]*(?:\s(?:am|an der|im|sur|en|de|la|le)\s[{_UP}][\w'\u2019-]*)?"
)
_UK_PC = r"(?:[A-Z]{1,2}\d[A-Z\d]? ?\d[ABD-HJLNP-UW-Z]{2})"
_EN_STREET = re.compile(
    rf"\d(?<![\w.,-]\d)\d{{0,4}}[A-Za-z]?(?:-\d{{1,5}})?,?\s+"
    rf"(?:(?:North|South|East|West|[NSEW]\.?)\s+)?"
    rf"(?:(?:\d{{1,3}}(?:st|nd|rd|th)|{_CAPWORD}(?:['\u2019]s)?\.?)\s+){{0,3}}"
    rf"(?:\d{{1,3}}(?:st|nd|rd|th)|{_CAPWORD}(?:['\u2019]s)?)\s+"
    r"(?:Street|St|Road|Rd|Avenue|Ave|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|"
    r"Square|Sq|Terrace|Way|Close|Crescent|Grove|Gardens|Parkway|Pkwy|Highway|Hwy|Mews|Hill|"
    r"Circle|Cir|Trail|Trl|Ridge|Loop|Path|Pike|Alley|Row|Walk|Park|Plaza|Point|View|Valley|"
    r"Heights|Crossing|Creek|Landing|Meadows?|Village|Green|Parade|Embankment)\b\.?"
    r"(?:\s+(?:NW|NE|SW|SE)\b)?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Unit|Flat|Ste)\.?\s*#?\w{1,5})?"
    rf"(?:,?\s+(?:[{_UP}][{_LO}]+(?:\s[{_UP}][{_LO}]+){{0,2}},?\s+)?"
    rf"(?:[A-Z]{{2}}\s+\d{{5}}(?:-\d{{4}})?(?!\w)|{_UK_PC}(?!\w)))?"
)
# street-word suffixes; the regex below only runs when one is followed by a house number
_DE_WORDS: Final = (
    "straße", "strasse", "str.", "weg", "platz", "allee", "gasse", "damm", "ring", "ufer",
    "chaussee", "graben",
)  # fmt: skip
_DE_STREET = re.compile(
    rf"[{_UP}](?<![\w-][{_UP}])[{_LO}]*(?:-[{_UP}][{_LO}]*)*[- ]?"
    r"(?:[Ss]tra(?:ß|ss)e|[Ss]tr\.|[Ww]eg|[Pp]latz|[Aa]llee|[Gg]asse|[Dd]amm|[Rr]ing|[Uu]fer|"
    r"[Cc]haussee|[Gg]raben)"
    rf"\s*\d{{1,4}}(?:\s?[a-zA-Z](?!\w))?(?:[-/]\d{{1,4}})?(?!\w)(?:,?\s+{_ZIP_CITY})?"
)
_DE_STREET_STOP: Final = _words(
    "parkplatz stellplatz sitzplatz spielplatz campingplatz arbeitsplatz tennisplatz "
    "golfplatz sportplatz marktplatz fußweg fussweg rückweg heimweg hinweg umweg wanderweg "
    "radweg schulweg ehering"
)
# German street names led by a preposition ("Am Markt 3", "Unter den Linden 77"): only with a
# postcode and city after them, since "Am Bahnhof 2" alone is as often a direction.
_DE_PREP_STREET = re.compile(
    r"(?:Am|An der|An den|Auf dem|Auf der|Unter den|Im|In der|Zum|Zur|Hinter der|Vor dem)\s+"
    rf"{_CAPWORD}(?:\s{_CAPWORD})?\s+\d{{1,4}}[a-z]?,?\s+{_ZIP_CITY}"
)
# street words; the regex below only runs when a house number comes shortly before one
_FR_WORDS: Final = (
    "rue", "avenue", "av", "bd", "boulevard", "place", "allée", "impasse", "chemin", "quai",
    "route", "cours", "passage", "square",
)  # fmt: skip
_PARTICLES_FR = r"(?:des|de|du|la|le|les|l['\u2019]|d['\u2019]|aux|au|sur|en)"
_FR_STREET = re.compile(
    r"\d(?<![\w.,-]\d)\d{0,3}(?:\s?(?:bis|ter)\b)?,?\s+"
    r"(?:[Rr]ue|[Aa]venue|[Aa]v\.|[Bb]oulevard|[Bb]d|[Pp]lace|[Aa]llée|[Ii]mpasse|[Cc]hemin|"
    r"[Qq]uai|[Rr]oute|[Cc]ours|[Pp]assage|[Ss]quare)\s+"
    rf"(?:{_PARTICLES_FR}\s*)*[{_UP}][\w'\u2019-]*"
    rf"(?:\s+(?:{_PARTICLES_FR}\s*)*[{_UP}][\w'\u2019-]*){{0,3}}"
    rf"(?:,?\s+{_ZIP_CITY})?"
)
# street words; the regex below only runs when a number comes after one
_ES_WORDS: Final = (
    "calle", "c/", "avenida", "avda.", "plaza", "pza.", "paseo", "camino", "carrera", "ronda",
    "travesía", "carrer", "rambla",
)  # fmt: skip
_PARTICLES_ES = r"(?:del|de|la|las|los|el|y|d['\u2019])"
_ES_STREET = re.compile(
    r"[CcAaPpRrTt](?<![\w][CcAaPpRrTt])"
    r"(?:alle|/|venida|vda\.|laza|za\.|aseo|amino|arrera|onda|ravesía|arrer|ambla)\s*"
    rf"(?:{_PARTICLES_ES}\s+)*[{_UP}][\w'\u2019.-]*"
    rf"(?:\s+(?:{_PARTICLES_ES}\s+)*[{_UP}][\w'\u2019.-]*){{0,3}},?\s+"
    r"(?:n(?:[º°.]|úm\.?)\s*)?\d{1,4}(?![\w]|[.,]\d)"
    r"(?:,?\s*\d{1,2}\s?[º°ª](?:\s?[A-Z](?!\w))?)?"
    rf"(?:,?\s+{_ZIP_CITY})?"
)
_UK_POSTCODE = re.compile(r"[A-Z](?<![\w-][A-Z])[A-Z]?\d[A-Z\d]? ?\d[ABD-HJLNP-UW-Z]{2}(?![\w-])")
_UK_AREAS: Final = _words(
    "AB AL B BA BB BD BH BL BN BR BS BT CA CB CF CH CM CO CR CT CV CW DA DD DE DG DH DL DN "
    "DT DY E EC EH EN EX FK FY G GL GU GY HA HD HG HP HR HS HU HX IG IM IP IV JE KA KT KW "
    "KY L LA LD LE LL LN LS LU M ME MK ML N NE NG NN NP NR NW OL OX PA PE PH PL PO PR RG RH "
    "RM S SA SE SG SK SL SM SN SO SP SR SS ST SW SY TA TD TF TN TQ TR TS TW UB W WA WC WD "
    "WF WN WR WS WV YO ZE"
)

# --------------------------------------------------------------------------------------
# person names
_PARTICLES_NAME = (
    r"(?:[Vv]an der|[Vv]an den|[Vv]an|[Vv]on der|[Vv]on|[Dd]e la|[Dd]e los|[Dd]el|[Dd]e|[Dd]a|"
    r"[Dd]i|[Dd]u|[Dd]os|[Ll]e|[Ll]a|zu|y)"
)
_NAME_START = re.compile(
    rf"[{_UP}](?<![\w'\u2019-][{_UP}])(?:['\u2019][{_UP}])?[{_LO}]+(?:[{_UP}][{_LO}]+)?"
    rf"(?:-{_CAPWORD})?(?=\s+(?:{_PARTICLES_NAME}\s+)?[{_UP}])"
)
# \s++ (possessive): a name never starts with a space, so giving spaces back cannot help,
# and on a long run of spaces it made every try quadratic
_SURNAMES = re.compile(
    rf"\s++((?:{_PARTICLES_NAME}\s++)?{_CAPWORD}(?:-{_CAPWORD})?)"
    rf"(?:\s++((?:{_PARTICLES_NAME}\s++)?{_CAPWORD}(?:-{_CAPWORD})?))?"
)
# cue phrases before a name (lower case, found with str.find)
_NAME_CUES: Final = (
    "my name is", "my name's", "my name\u2019s", "je m'appelle", "je m\u2019appelle",
    "mon nom est", "ich heiße", "ich heisse", "mein name ist", "me llamo", "mi nombre es",
    "name:", "nom :", "nom:", "nombre:",
)  # fmt: skip
_CUE_NAME = re.compile(rf"\s++({_CAPWORD}(?:-{_CAPWORD})?)")
_TITLE = re.compile(
    r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Herr|Frau|Mme|Mlle|M\.|Monsieur|Madame|"
    r"Mademoiselle|Sr|Sra|Srta|Señor|Señora|Don|Doña)\.?"
    rf"\s+({_CAPWORD}(?:-{_CAPWORD})?)(?=[^\w'\u2019-]|$)"
)
_BEFORE_NAME_STOP = re.compile(
    r"(?:\b(?:Santa|San|Saint|St\.?|Sankt|Villa|Casa|Hotel|Hôtel|Hostal|Pension|Chez|Rue|"
    r"Calle|Plaza|Avenue|Avenida|Via|Château|Chateau|Domaine|Maison|Gasthof|Haus|Playa|"
    r"Puerto|Port|Mount|Mont|Lake|Cape|Fort|rue|avenue|boulevard|bd|place|allée|chemin|quai|"
    r"calle|avenida|paseo|plaza)\s+$|\d[A-Za-z]?\s+$)"
)

# fmt: off
_FIRST_NAMES: Final = _words("""
Aaron Adam Adrian Alan Albert Alex Alexander Alfie Alfred Andrew Andy Anthony Archie Arthur
Ben Benjamin Bill Billy Bob Bobby Brandon Brian Bruce Bryan Callum Carl Charles Charlie Chris
Christopher Colin Connor Craig Dan Daniel Darren Dave David Dean Dennis Derek Dominic Donald
Douglas Dylan Edward Elliot Eric Ethan Eugene Evan Finley Fred Freddie Gareth Gary Gavin George
Gerald Gordon Graham Greg Gregory Harold Harrison Harry Harvey Henry Howard Ian Isaac Jack
Jacob Jake Jamie James Jason Jeff Jeffrey Jeremy Jerry Jesse Jim Jimmy Joe Joel John Johnny
Jonathan Joseph Josh Joshua Justin Keith Ken Kenneth Kevin Kieran Kyle Larry Lawrence Lee Leo
Lewis Liam Logan Louis Luke Malcolm Mason Matt Matthew Michael Mike Mohammed Muhammad Nathan Neil
Nicholas Nick Noah Oliver Oscar Owen Patrick Paul Peter Philip Phil Raymond Reece Richard Rob
Robert Robin Roger Ronald Ross Roy Russell Ryan Sam Samuel Scott Sean Simon Stephen Steve Steven
Stuart Terry Theo Thomas Tim Timothy Toby Tom Tony Tyler Vincent Walter Wayne William Zachary
Abigail Alice Alison Amanda Amber Amelia Amy Andrea Angela Ann Anna Anne Ashley Ava Barbara
Beth Betty Brenda Carol Caroline Catherine Chloe Christine Claire Deborah Diane Donna Dorothy
Eleanor Elizabeth Ella Ellie Emily Emma Erin Evelyn Fiona Freya Gemma Hannah Harper
Heather Helen Holly Isabel Isabella Isla Jacqueline Jane Janet Jasmine Jennifer Jessica Joan
Joanne Jodie Julia Julie Karen Kate Katherine Kathleen Katie Kelly Kimberly Laura Lauren Leah
Linda Lisa Lily Louise Lucy Lydia Madison Margaret Maria Martha Mary Megan Melissa Michelle Mia
Millie Molly Nancy Natalie Nicola Nicole Olivia Pamela Patricia Phoebe Poppy Rachel Rebecca
Ruby Ruth Samantha Sandra Sarah Scarlett Sharon Shirley Sophia Sophie Stephanie Susan Tracy
Vanessa Zoe
Aidan Alec Alexis Allison Alyssa Andre Angel Angelica Anita Annie Antonio Audrey Austin Bailey
Bethany Bradley Brett Brittany Brooke Bryce Caleb Cameron Carlos Carrie Casey Cassandra
Chad Chelsea Cheryl Christina Cindy Cody Cole Courtney Crystal Curtis Dakota Dale Dana Danielle
Darius Darrell Dawn Debra Denise Derrick Desiree Destiny Devin Diego Dustin Edwin Elijah Erica
Erik Felicia Francisco Gabriel Gabrielle Glenn Haley Heidi Hunter Jacqueline Jaime Jared Jasmin
Javier Jenna Jenny Jill Jocelyn Jodi Jordan Jorge Juan Julian Kaitlyn Kara Katrina Kayla Kelsey
Kendra Kristen Kristin Krystal Lance Latoya Leslie Lindsay Lindsey Lori Lucas Mackenzie Madeline
Marcus Marissa Marvin Meghan Melanie Miranda Misty Monica Morgan Nathaniel Nicolas Noel Omar
Paige Peggy Rachael Randall Randy Raul Regina Ricardo Ricky Rodney Ronnie Sabrina Sergio Seth
Shannon Shawn Sheila Shelby Sierra Stacy Stacey Tammy Tanya Tara Taylor Tiffany Tina Tonya
Travis Trevor Troy Valerie Veronica Vickie Victor Wendy Whitney Xavier Yvonne Zachary
Alain André Antoine Baptiste Benoît Bernard Bruno Cédric Christophe Claude Clément Cyril
Damien Didier Dominique Éric Fabien Fabrice Florian Francis François Frédéric Gérard Gilles
Guillaume Hervé Hugo Jacques Jean Jérôme Joël Jules Julien Laurent Léo Loïc Lucas Luc Marc
Mathieu Mathis Matthieu Maxime Michel Nicolas Noël Olivier Pascal Patrice Philippe Pierre
Quentin Raphaël Rémi Romain Sébastien Serge Stéphane Sylvain Théo Thierry Timothée Yann Yves
Agathe Amandine Amélie Anaïs Aurélie Brigitte Camille Capucine Céline Chantal Chloé Christelle
Claudine Clémence Colette Danielle Delphine Élise Elise Élodie Émilie Geneviève Hélène Inès
Isabelle Jeanne Joséphine Juliette Justine Laetitia Laure Léa Léonie Lucie Madeleine Manon
Margaux Marianne Marie Marine Martine Mathilde Maëlle Monique Nathalie Océane Pauline Sandrine
Solène Sylvie Valérie Véronique Virginie
Andreas Axel Bernd Björn Christian Dieter Dirk Dominik Fabian Felix Finn Florian Frank Friedrich
Fritz Georg Gerhard Günter Günther Hans Heinz Helmut Holger Horst Jan Jens Jonas Jörg Josef
Jürgen Kai Karl Klaus Konrad Lars Leon Lukas Manfred Markus Martin Matthias Maximilian Moritz
Niklas Nils Ole Otto Philipp Rainer Ralf Reinhard Rolf Sebastian Stefan Steffen Sven Thorsten
Tobias Torsten Udo Ulrich Uwe Volker Walter Werner Wilhelm Wolfgang
Anja Annika Antje Birgit Brigitte Christa Claudia Doris Elke Franziska Gabriele Gisela Greta
Heike Helga Hildegard Ines Ingrid Johanna Jutta Karin Katharina Katja Katrin Kerstin Lena Leonie
Luisa Maren Marion Martina Melanie Monika Nadine Petra Renate Sabine Sandra Silke Simone
Stefanie Susanne Tanja Ulrike Ursula Ute
Adrián Agustín Alberto Alejandro Alfonso Álvaro Andrés Ángel Antonio Arturo Carlos César Diego
Eduardo Emilio Enrique Ernesto Esteban Federico Felipe Fernando Francisco Gonzalo Guillermo
Gustavo Héctor Ignacio Iker Iván Jaime Javier Jesús Joaquín Jordi Jorge José Juan Julián Lorenzo
Jose Luis Manuel Marcos Mario Martín Miguel Nicolás Óscar Pablo Pedro Rafael Ramón Raúl Ricardo
Roberto Rodrigo Rubén Salvador Sergio Tomás Vicente Víctor Xavier
Adriana Ainhoa Alba Alicia Ana Andrea Ángela Beatriz Begoña Blanca Carla Carmen Carolina
Catalina Clara Claudia Concepción Cristina Daniela Diana Elena Encarnación Esther Eva Fátima
Gabriela Inés Inmaculada Irene Isabel Jimena Josefa Juana Julia Laura Leire Lorena Lucía
Manuela Marina Marta María Miriam Montserrat Natalia Nerea Noelia Nuria Olga Patricia Paula
Raquel Rocío Rosa Sara Silvia Sofía Sonia Susana Teresa Valentina Valeria Verónica Yolanda
""")

# Capitalised words that follow a first name but are not a surname (places, venue words,
# weekdays, months, sentence starts).
_NOT_SURNAME: Final = _words("""
I The A An And But Or So We You He She They It My Our Your His Her Their This That These Those
Hotel Hostel Inn Resort Suites Spa Restaurant Bar Cafe Café Club Street Road Avenue Station
Airport Beach Bay Park Square Centre Center Museum Church Cathedral Palace Castle Bridge Tower
Garden Gardens Plaza Mall Market Hall University College School Hospital Island Lake River
Mountain Terminal Harbour Harbor Lodge Villa House Apartments Apartment Room Suite Deluxe
Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June
July August September October November December Thanks Thank Hello Hi Dear Regards Cheers
Best Kind Please Yes No Ok OK Team Support Service Customer Reception Manager Booking
Mr Mrs Ms Miss Mx Dr Prof Herr Frau Mme Mlle Monsieur Madame Sr Sra Srta Señor Señora
Le La Les Un Une Et Mais Nous Vous Il Elle Ils Merci Bonjour Cordialement Lundi Mardi Mercredi
Jeudi Vendredi Samedi Dimanche Janvier Février Mars Avril Mai Juin Juillet Août Septembre
Octobre Novembre Décembre Hôtel Gare Plage Église Musée
Der Die Das Ein Eine Und Aber Wir Sie Er Es Ich Danke Hallo Liebe Lieber Grüße Gruß Montag
Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag Januar Februar März Juni Juli Oktober
Dezember Bahnhof Flughafen Strand Frühstück Rezeption Team Hotelzimmer
El Los Las Una Y Pero Nosotros Usted Gracias Hola Saludos Lunes Martes Miércoles Jueves Viernes
Sábado Domingo Enero Febrero Marzo Abril Mayo Junio Julio Agosto Septiembre Octubre Noviembre
Diciembre Playa Estación Aeropuerto Habitación Recepción Desayuno
""")
# fmt: on

_NANP: Final = frozenset({"US", "CA"})
_LANG_REGION: Final[dict[str, str]] = {"en": "US", "fr": "FR", "de": "DE", "es": "ES", "it": "IT"}


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        v = ord(ch) - 48
        if i & 1:
            v += v
            if v > 9:
                v -= 9
        total += v
    return total % 10 == 0


def _card_brand_length_ok(d: str) -> bool:
    """Known IIN range (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro)
    with a length that brand issues."""
    n = len(d)
    p2 = int(d[:2])
    p3 = int(d[:3])
    p4 = int(d[:4])
    if d[0] == "4":
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16
    if p2 in (34, 37):
        return n == 15
    if p4 == 6011 or 644 <= p3 <= 649 or p2 == 65:
        return 16 <= n <= 19
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19
    if p2 in (36, 38, 39) or 300 <= p3 <= 305:
        return 14 <= n <= 19
    if p2 == 62:
        return 16 <= n <= 19
    if p2 in (50, 56, 57, 58, 63, 67) or p4 in (6304, 6759, 6761, 6762, 6763):
        return 12 <= n <= 19
    return False


_CARD_LAYOUTS: Final = frozenset({(4, 6, 5), (4, 6, 4)})


def _card_layout_ok(groups: list[str]) -> bool:
    if len(groups) == 1:
        return True
    lens = tuple(len(g) for g in groups)
    if lens in _CARD_LAYOUTS:
        return True
    return all(n == 4 for n in lens[:-1]) and 1 <= lens[-1] <= 4


def _iban_ok(compact: str) -> bool:
    rearranged = compact[4:] + compact[:4]
    value = 0
    for ch in rearranged:
        code = ord(ch) - 48 if ch <= "9" else ord(ch) - 55  # A=10 ... Z=35
        value = (value * (10 if code < 10 else 100) + code) % 97
    return value == 1


def _ssn_ok(area: str, group: str, serial: str) -> bool:
    a = int(area)
    if a == 0 or a == 666 or a >= 900 or group == "00" or serial == "0000":
        return False
    return f"{area}-{group}-{serial}" not in ("078-05-1120", "219-09-9999", "123-45-6789")


def _nir_ok(compact: str) -> bool:
    """French NIR (15 characters): key = 97 - (first 13 digits mod 97); Corsica 2A/2B
    count as 19/18."""
    body = compact[:13]
    dept = body[5:7]
    if dept == "2A":
        body = body[:5] + "19" + body[7:]
    elif dept == "2B":
        body = body[:5] + "18" + body[7:]
    return 97 - int(body) % 97 == int(compact[13:])


def _cf_ok(code: str) -> bool:
    total = 0
    for i, ch in enumerate(code[:15]):
        total += _CF_ODD[ch] if i % 2 == 0 else _CF_EVEN[ch]
    return chr(65 + total % 26) == code[15]


def _bsn_ok(d: str) -> bool:
    if d[0] == "0" and d[1] == "0":
        return False
    total = sum((9 - i) * (ord(d[i]) - 48) for i in range(8)) - (ord(d[8]) - 48)
    return total % 11 == 0


def _steuer_id_ok(d: str) -> bool:
    if d[0] == "0":
        return False
    product = 10
    for ch in d[:10]:
        s = (ord(ch) - 48 + product) % 10
        if s == 0:
            s = 10
        product = (s * 2) % 11
    check = 11 - product
    if check == 10:
        check = 0
    return check == ord(d[10]) - 48


def _region_of(locale: str, default: str) -> str:
    if not locale:
        return default
    parts = locale.replace("_", "-").split("-")
    for part in parts[1:]:
        if len(part) == 2 and part.isalpha():
            return part.upper()
    return _LANG_REGION.get(parts[0].lower(), default)


class PiiDetector:
    """Finds PII in storefront texts; see the module docstring for types and scores.

    ``default_region``: phone region when ``ctx.locale`` names none (ISO 3166 alpha-2).
    ``fallback_regions``: regions also tried, at a lower score, for national-format phone
    numbers that are not valid in the shopper's region.
    ``types``: the finding types to report (default: all of ``PII_TYPES``).
    """

    name = "pii"

    def __init__(
        self,
        *,
        default_region: str = "US",
        fallback_regions: Sequence[str] = ("US", "GB", "DE", "FR", "ES", "NL"),
        types: Iterable[str] | None = None,
    ) -> None:
        self.default_region = default_region.upper()
        self.fallback_regions = tuple(r.upper() for r in fallback_regions)
        self.types = frozenset(PII_TYPES if types is None else types)
        unknown = self.types - set(PII_TYPES)
        if unknown:
            raise ValueError(f"unknown PII types: {sorted(unknown)}")
        self._meta: dict[str, tuple[str, frozenset[int]] | None] = {}
        for region in (self.default_region, *self.fallback_regions):
            self._region_meta(region)

    # ----------------------------------------------------------------------------------
    def detect(self, text: str, ctx: CheckContext) -> list[Finding]:
        out: list[Finding] = []
        types = self.types
        if EMAIL in types and "@" in text:
            self._emails(text, out)
        low = _lower_aligned(text)
        if _DIGIT.search(text) is not None:
            # IBAN- and card-shaped runs, valid or not, are never phone numbers
            shaped: list[tuple[int, int]] = []
            self._ibans(text, out, shaped, IBAN in types)
            self._cards(text, out, shaped, CREDIT_CARD in types)
            if PHONE in types:
                region = _region_of(ctx.locale, self.default_region)
                self._phones(text, region, out, shaped)
            if IP_ADDRESS in types:
                self._ips(text, out)
            if NATIONAL_ID in types:
                self._national_ids(text, out)
            if PASSPORT in types or NATIONAL_ID in types:
                self._gated(text, low, out)
            if ADDRESS in types:
                self._addresses(text, low, out)
        if PERSON in types:
            self._persons(text, low, out)
        if len(out) < 2:
            return out
        return _resolve_overlaps(out)

    # ----------------------------------------------------------------------------------
    @staticmethod
    def _emails(text: str, out: list[Finding]) -> None:
        pos = 0
        n = len(text)
        while True:
            at = text.find("@", pos)
            if at < 0:
                return
            m = _EMAIL.search(text, max(pos, at - 64), min(n, at + 256))
            if m is not None and m.start() <= at < m.end():
                out.append(Finding(EMAIL, m.start(), m.end(), 0.98, "pii"))
                pos = m.end()
            else:
                pos = at + 1

    def _ibans(
        self, text: str, out: list[Finding], shaped: list[tuple[int, int]], report: bool
    ) -> None:
        for m in _IBAN.finditer(text):
            raw = m.group()
            shaped.append((m.start(), m.end()))
            expected = _IBAN_LENGTHS.get(raw[:2])
            if expected is None or not report:
                continue
            compact = raw.replace(" ", "")
            if len(compact) < expected:
                continue
            end = m.start()
            if len(compact) > expected:
                # the regex ran on into a following upper-case word: cut at the IBAN length,
                # which must fall on a space
                seen = 0
                for i, ch in enumerate(raw):
                    if ch != " ":
                        seen += 1
                        if seen == expected:
                            end += i + 1
                            break
                if text[end] != " ":
                    continue
                compact = compact[:expected]
            else:
                end = m.end()
            if _iban_ok(compact):
                out.append(Finding(IBAN, m.start(), end, 0.97, "pii"))

    def _cards(
        self, text: str, out: list[Finding], shaped: list[tuple[int, int]], report: bool
    ) -> None:
        for m in _CARD.finditer(text):
            raw = m.group()
            if " " in raw and "-" in raw:
                continue
            groups = raw.split(" " if " " in raw else "-")
            start = m.start()
            if any(start < e and s < m.end() for s, e in shaped):
                continue  # digits inside an IBAN-shaped run
            if (len(groups) >= 4 or len(raw) >= 16) and _card_layout_ok(groups[:4]):
                shaped.append((start, m.end()))
            if not report:
                continue
            # try the whole run, then without its last group (an expiry or CVC after it)
            for k in (len(groups), len(groups) - 1):
                if k < 1:
                    break
                g = groups[:k]
                digits = "".join(g)
                if not 13 <= len(digits) <= 19 or not _card_layout_ok(g) or not _luhn(digits):
                    continue
                end = start + sum(len(x) for x in g) + k - 1
                if _card_brand_length_ok(digits):
                    score = 0.95
                else:
                    before = text[max(0, start - 30) : start]
                    if _NEG_NUMBER_CUE.search(before) and not _CARD_CUE.search(before):
                        break
                    score = 0.55
                out.append(Finding(CREDIT_CARD, start, end, score, "pii"))
                break

    # ----------------------------------------------------------------------------------
    def _region_meta(self, region: str) -> tuple[str, frozenset[int]] | None:
        if region in self._meta:
            return self._meta[region]
        md = PhoneMetadata.metadata_for_region(region)
        if md is None or md.general_desc is None:
            meta = None
        else:
            meta = (md.national_prefix or "", frozenset(md.general_desc.possible_length or ()))
        self._meta[region] = meta
        return meta

    def _national_plausible(self, digits: str, region: str) -> bool:
        """Cheap pre-check before parsing: the trunk prefix (where the region has one) and
        a possible length for the region."""
        meta = self._region_meta(region)
        if meta is None:
            return False
        prefix, lengths = meta
        if prefix:
            if digits.startswith(prefix):
                return len(digits) - len(prefix) in lengths
            if region not in _NANP:
                return False
        return len(digits) in lengths

    def _plausible(self, raw: str, digits: str, region: str) -> bool:
        if raw[0] == "+" or raw.startswith("(+") or digits.startswith("00"):
            return True
        if self._national_plausible(digits, region):
            return True
        return any(self._national_plausible(digits, other) for other in self.fallback_regions)

    def _phone_score(self, raw: str, digits: str, region: str, cue: bool) -> float:
        """Score of one candidate (0.0: not a phone number)."""
        try:
            if raw[0] == "+" or raw.startswith("(+") or digits.startswith("00"):
                number = phonenumbers.parse("+" + raw.lstrip("(+0"), None)
                if phonenumbers.is_valid_number(number):
                    return 0.95 if cue else 0.85
                if cue and len(digits) >= 10 and phonenumbers.is_possible_number(number):
                    return 0.4
                return 0.0
            possible = False
            if self._national_plausible(digits, region):
                number = phonenumbers.parse(raw, region)
                if phonenumbers.is_valid_number(number):
                    return 0.95 if cue else 0.85
                possible = cue and len(digits) >= 10 and phonenumbers.is_possible_number(number)
            for other in self.fallback_regions:
                if other != region and self._national_plausible(digits, other):
                    number = phonenumbers.parse(raw, other)
                    if phonenumbers.is_valid_number(number):
                        return 0.8 if cue else 0.7
        except phonenumbers.NumberParseException:
            return 0.0
        return 0.4 if possible else 0.0

    def _phones(
        self, text: str, region: str, out: list[Finding], shaped: list[tuple[int, int]]
    ) -> None:
        pos = 0
        # a text repeating a number checks and parses it once
        seen: dict[tuple[str, str], bool] = {}
        scores: dict[tuple[str, bool], float] = {}
        while True:
            m = _PHONE.search(text, pos)
            if m is None:
                return
            pos = m.end()
            start = m.start()
            if any(start < e and s < pos for s, e in shaped):
                continue
            shape = _PHONE_SHAPE.match(text, start, pos)
            if shape is None:
                pos = start + 1
                continue
            raw = shape.group()
            slash = raw.find(" / ")
            if slash > 0:  # "06 12 34 56 78 / 01 42 68 53 00": two numbers
                raw = raw[:slash]
            if raw.count("(") != raw.count(")"):
                if raw.startswith("(") and ")" not in raw:
                    pos = start + 1  # a stray "(" before a number: look again after it
                continue
            if _DATE_LIKE.fullmatch(raw.rstrip(" (./-")):
                continue
            # Sub-candidates: the whole run, then the run without trailing groups (a room
            # number, a second number after "/"), longest first; at most 4 parses. The
            # context words before the number are only looked at once a candidate passes
            # the cheap length/prefix check.
            cuts = [len(raw)]
            cuts.extend(sm.start() for sm in _PHONE_SEP.finditer(raw))
            cuts.sort(reverse=True)
            tries = 0
            cue: bool | None = None
            hit = False
            for cut in cuts:
                sub = raw[:cut].rstrip(" (")
                digits = sub.translate(_PHONE_PUNCTUATION)
                if len(digits) < 7:
                    break
                if len(digits) > 17 or not sub[-1].isdigit():
                    continue
                plausible = seen.get((sub[:2], digits))
                if plausible is None:
                    plausible = seen[(sub[:2], digits)] = self._plausible(sub, digits, region)
                if not plausible:
                    continue
                if cue is None:
                    before = text[max(0, start - 30) : start]
                    if _CURRENCY_BEFORE.search(before):
                        break
                    cue = _PHONE_CUE.search(before) is not None
                    if not cue and raw[0] != "+" and _NEG_NUMBER_CUE.search(before):
                        break  # "order 0012345678"; an explicit "+" still counts
                tries += 1
                score = scores.get((sub, cue))
                if score is None:
                    score = scores[(sub, cue)] = self._phone_score(sub, digits, region, cue)
                if score:
                    out.append(Finding(PHONE, start, start + len(sub), score, "pii"))
                    pos = start + len(sub)
                    hit = True
                    break
                if tries >= 4:
                    break
            if not hit:
                # nothing in this run: look again from its second space-separated group
                # ("Zimmer 12 030 1234567")
                space = raw.find(" ", 1, len(raw) - 7)
                pos = start + space + 1 if space > 0 else start + len(raw)

    # ----------------------------------------------------------------------------------
    @staticmethod
    def _ips(text: str, out: list[Finding]) -> None:
        if "." in text:
            for m in _IPV4.finditer(text):
                start = m.start()
                before = text[max(0, start - 20) : start]
                if _VERSION_CUE.search(before):
                    continue
                try:
                    ipaddress.IPv4Address(m.group())
                except ValueError:
                    continue
                score = 0.95 if _IP_CUE.search(before) else 0.85
                out.append(Finding(IP_ADDRESS, start, m.end(), score, "pii"))
        if "::" in text or text.count(":") >= 7:
            for m in _IPV6.finditer(text):
                raw = m.group()
                if raw.count(":") < 2 or raw.strip(":") == "":
                    continue
                try:
                    ipaddress.IPv6Address(raw)
                except ValueError:
                    continue
                start = m.start()
                before = text[max(0, start - 20) : start]
                score = 0.95 if _IP_CUE.search(before) else 0.85
                out.append(Finding(IP_ADDRESS, start, m.end(), score, "pii"))

    @staticmethod
    def _national_ids(text: str, out: list[Finding]) -> None:
        for m in _NUM_ID.finditer(text):
            raw = m.group()
            start = m.start()
            if m.group(1) is not None:  # SSN
                if _ssn_ok(raw[:3], raw[4:6], raw[7:]):
                    cue = _SSN_CUE.search(text, max(0, start - 40), start) is not None
                    out.append(Finding(NATIONAL_ID, start, m.end(), 0.95 if cue else 0.75, "pii"))
            elif m.group(2) is not None:  # DNI
                if _DNI_LETTERS[int(raw[:8]) % 23] == raw[-1]:
                    out.append(Finding(NATIONAL_ID, start, m.end(), 0.9, "pii"))
            elif raw[0] in "12" and _nir_ok(raw.replace(" ", "")):
                out.append(Finding(NATIONAL_ID, start, m.end(), 0.9, "pii"))
        for m in _NIE.finditer(text):
            raw = m.group().replace("-", "").replace(" ", "")
            n = int(str("XYZ".index(raw[0])) + raw[1:8])
            if _DNI_LETTERS[n % 23] == raw[8]:
                out.append(Finding(NATIONAL_ID, m.start(), m.end(), 0.9, "pii"))
        for m in _CF.finditer(text):
            if _cf_ok(m.group()):
                out.append(Finding(NATIONAL_ID, m.start(), m.end(), 0.95, "pii"))

    def _gated(self, text: str, low: str, out: list[Finding]) -> None:
        for _, lo, word in _word_hits(low, _GATED_KEYWORDS):
            kind = _GATED_KEYWORDS[word]
            hi = min(len(text), lo + 45)
            stop = _SENTENCE_END.search(text, lo, hi)
            if stop is not None:
                hi = stop.start()
            if kind == PASSPORT:
                if PASSPORT in self.types:
                    for m in _PASSPORT_NUM.finditer(text, lo, hi):
                        if _DIGIT.search(m.group()) is not None:
                            out.append(Finding(PASSPORT, m.start(), m.end(), 0.6, "pii"))
                            break
            elif NATIONAL_ID not in self.types:
                continue
            elif kind == "bsn":
                b = _BSN_NUM.search(text, lo, hi)
                if b is not None and _bsn_ok(b.group().replace(".", "")):
                    out.append(Finding(NATIONAL_ID, b.start(), b.end(), 0.85, "pii"))
            else:
                s = _STEUER_NUM.search(text, lo, hi)
                if s is not None and _steuer_id_ok(s.group().replace(" ", "")):
                    out.append(Finding(NATIONAL_ID, s.start(), s.end(), 0.85, "pii"))

    @staticmethod
    def _addresses(text: str, low: str, out: list[Finding]) -> None:
        for m in _EN_STREET.finditer(text):
            out.append(Finding(ADDRESS, m.start(), m.end(), 0.7, "pii"))
        if _suffix_before_number(low, _DE_WORDS):
            for m in _DE_STREET.finditer(text):
                word = m.group().split(None, 1)[0].lower()
                if word in _DE_STREET_STOP:
                    continue
                score = 0.75 if "," in m.group() or m.group().count(" ") >= 2 else 0.65
                out.append(Finding(ADDRESS, m.start(), m.end(), score, "pii"))
        for m in _DE_PREP_STREET.finditer(text):
            start = m.start()
            if start == 0 or not text[start - 1].isalnum():
                out.append(Finding(ADDRESS, start, m.end(), 0.7, "pii"))
        if any(_DIGIT.search(low, max(0, i - 8), i) for i, _, _ in _word_hits(low, _FR_WORDS)):
            for m in _FR_STREET.finditer(text):
                out.append(Finding(ADDRESS, m.start(), m.end(), 0.7, "pii"))
        if any(_DIGIT.search(low, j, j + 60) for _, j, _ in _word_hits(low, _ES_WORDS)):
            for m in _ES_STREET.finditer(text):
                out.append(Finding(ADDRESS, m.start(), m.end(), 0.7, "pii"))
        for m in _UK_POSTCODE.finditer(text):
            raw = m.group()
            area = raw[:2] if raw[1].isalpha() else raw[:1]
            if area in _UK_AREAS:
                out.append(Finding(ADDRESS, m.start(), m.end(), 0.55, "pii"))

    def _persons(self, text: str, low: str, out: list[Finding]) -> None:
        for _, j, _ in _word_hits(low, _NAME_CUES):
            m = _CUE_NAME.match(text, j)
            if m is None or m.group(1) in _NOT_SURNAME:
                continue
            end = self._surname_end(text, m.end())
            out.append(Finding(PERSON, m.start(1), end, 0.7, "pii"))
        for m in _TITLE.finditer(text):
            start = m.start()
            if start and (text[start - 1].isalnum() or text[start - 1] == "-"):
                continue
            if m.group(1) in _NOT_SURNAME:
                continue
            end = self._surname_end(text, m.end())
            out.append(Finding(PERSON, m.start(1), end, 0.65, "pii"))
        for m in _NAME_START.finditer(text):
            word = m.group()
            first = word.split("-", 1)[0]
            if first not in _FIRST_NAMES:
                continue
            start = m.start()
            if start and _BEFORE_NAME_STOP.search(text, max(0, start - 12), start):
                continue
            end = self._surname_end(text, m.end())
            if end == m.end():
                continue
            out.append(Finding(PERSON, start, end, 0.6, "pii"))

    @staticmethod
    def _surname_end(text: str, pos: int) -> int:
        """End of up to two surname tokens after ``pos`` (``pos`` itself when none)."""
        s = _SURNAMES.match(text, pos)
        if s is None:
            return pos
        first = s.group(1)
        if first.rsplit(None, 1)[-1] in _NOT_SURNAME:
            return pos
        second = s.group(2)
        if second is not None and second.rsplit(None, 1)[-1] not in _NOT_SURNAME:
            return s.end(2)
        return s.end(1)


def _resolve_overlaps(findings: list[Finding]) -> list[Finding]:
    findings.sort(key=lambda f: (-f.score, f.start, f.start - f.end))
    kept: list[Finding] = []
    for f in findings:
        for k in kept:
            if f.start < k.end and k.start < f.end:
                break
        else:
            kept.append(f)
    kept.sort(key=lambda f: f.start)
    return kept
