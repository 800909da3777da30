"""Prompt-injection detector: instruction overrides, role-play jailbreaks, exfiltration asks,
and payloads hidden by encoding or Unicode tricks.

Finding types (detector name ``prompt_injection``):

- ``prompt_injection.ignore_instructions``: "ignore / disregard / forget all previous
  instructions", "new instructions:", chat-template or ``System:`` headers, attempts to
  override the system prompt or the safety rules.
- ``prompt_injection.role_play``: DAN / "do anything now", "you are now an unrestricted AI",
  "pretend you have no rules", developer / god mode.
- ``prompt_injection.exfiltration``: "reveal / print / repeat your system prompt", "what
  were your instructions", asking for API keys, credentials or other customers' data.
- ``prompt_injection.encoded``: an injection hidden from a plain reading — a base64 or hex
  blob or a rot13 text that decodes to one of the phrases above, right-to-left override
  text that reads as one, or a phrase written with zero-width characters, homoglyphs
  (Cyrillic / Greek look-alikes), compatibility forms (fullwidth, mathematical letters)
  or Unicode tag characters. Standalone tricks with no phrase (a zero-width character
  inside a Latin word, a mixed-script word, a bidi override, tag characters) are reported
  with low scores: they are odd, not proof.

Phrases are matched in English, French, German and Spanish. Each pattern has a fixed score
(its strength): a full "ignore all previous instructions" scores 0.95, a bare mention of
"system prompt" 0.5. A phrase found through a trick is reported twice: with its own type
and as ``encoded`` on the same span.

Matching runs on a normalised copy of the text (:func:`normalize`), made once per call:
per code point NFKD with combining marks dropped (so "précédentes" and
"pre\u0301ce\u0301dentes" both read "precedentes"), casefolded, typographic quotes made
ASCII, invisible / format characters removed, homoglyphs mapped to Latin inside words that
mix them with Latin letters. NFKD rather than NFKC because the marks are dropped anyway: the
compatibility mapping is the same. An index map turns normalised offsets back into offsets
of the original text, so spans cover exactly what the shopper typed (zero-width characters
inside a phrase included). When every character folds one to one (ASCII, accented Latin,
most Cyrillic / Greek / CJK text) the map is the identity and is not built.

Patterns do not scan the text one by one (a ``\\b(?:...)`` scan costs ~20 µs per KB per
pattern): :class:`PhraseSet` looks the text's distinct words up in a table of the words
patterns start with, checks their required substrings (``str.__contains__``), and runs
``regex.match`` only where a match can begin. Measured (best of 5): about 60 µs for 1 KB of
English, 100-160 µs for 1 KB of French or German, 390 µs for 8 KB of English.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from services.guardrail.detectors.base import CheckContext, Finding

NAME = "prompt_injection"
IGNORE = "prompt_injection.ignore_instructions"
ROLE_PLAY = "prompt_injection.role_play"
EXFILTRATION = "prompt_injection.exfiltration"
ENCODED = "prompt_injection.encoded"
TYPES = (IGNORE, ROLE_PLAY, EXFILTRATION, ENCODED)

# --------------------------------------------------------------------------- normalisation

_PLAIN, _INVISIBLE, _OVERRIDE, _TAG, _CONFUSABLE, _COMPAT = range(6)
_TRICKS = frozenset({_INVISIBLE, _OVERRIDE, _TAG, _CONFUSABLE, _COMPAT})

_BIDI_OVERRIDES = frozenset({0x202D, 0x202E})  # LRO, RLO: text displayed in forced order
_RLO = "\u202e"
_SCOPE_STOPS = ("\u202c", "\u2069", "\n", "\u202d", "\u202e")  # PDF, PDI, line, LRO, RLO
_MAX_SCOPE, _MAX_REVERSED = 1024, 16
"""Right-to-left override scopes read backwards: at most this long, at most this many."""
_INVISIBLE_EXTRA = frozenset(
    {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x3164, 0xFFA0, 0x2800}
    | set(range(0xFE00, 0xFE10))  # variation selectors
)
_HOMOGLYPHS = str.maketrans(
    {
        chr(cp): latin
        for cp, latin in (
            # Cyrillic, lower case (casefolding runs first): a ve ie ka em en o er es te u
            # ha dze byelorussian-i je shha komi-de qa we palochka straight-u
            (0x0430, "a"), (0x0432, "b"), (0x0435, "e"), (0x043A, "k"), (0x043C, "m"),
            (0x043D, "h"), (0x043E, "o"), (0x0440, "p"), (0x0441, "c"), (0x0442, "t"),
            (0x0443, "y"), (0x0445, "x"), (0x0455, "s"), (0x0456, "i"), (0x0458, "j"),
            (0x04BB, "h"), (0x0501, "d"), (0x051B, "q"), (0x051D, "w"), (0x04CF, "l"),
            (0x04AF, "y"), (0x0261, "g"),
            # Greek: alpha beta epsilon iota kappa nu omicron rho tau upsilon chi zeta eta
            (0x03B1, "a"), (0x03B2, "b"), (0x03B5, "e"), (0x03B9, "i"), (0x03BA, "k"),
            (0x03BD, "v"), (0x03BF, "o"), (0x03C1, "p"), (0x03C4, "t"), (0x03C5, "u"),
            (0x03C7, "x"), (0x03B6, "z"), (0x03B7, "n"),
        )
    }
)  # fmt: skip
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u2032": "'",
                         "\u201c": '"', "\u201d": '"', "\u00ab": '"', "\u00bb": '"'})  # fmt: skip
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f](?:[^A-Za-z]*[^\x00-\x7f])?")
"""From a non-ASCII character to the last one before the next ASCII letter: in non-Latin
text a run spans whole sentences, in Latin text it is one accented letter or a few."""
_FLAG_TAGS = re.compile("\U0001f3f4[\U000e0020-\U000e007e]{1,8}\U000e007f")
"""Emoji subdivision flags (England, Scotland, Wales) are legitimately spelled with tags."""


@lru_cache(maxsize=8192)
def _fold_char(ch: str) -> tuple[str, int, str]:
    """One non-ASCII code point -> (its normalised replacement, what kind of character, the
    replacement without the homoglyph mapping)."""
    cp = ord(ch)
    if cp in _BIDI_OVERRIDES:
        return "", _OVERRIDE, ""
    if 0xE0020 <= cp <= 0xE007E:
        rep = chr(cp - 0xE0000).lower()
        return rep, _TAG, rep
    if cp in _INVISIBLE_EXTRA or unicodedata.category(ch) == "Cf":
        return "", _INVISIBLE, ""
    folded = unicodedata.normalize("NFKD", ch)
    folded = "".join(c for c in folded if unicodedata.category(c) not in ("Mn", "Me"))
    folded = unicodedata.normalize("NFKD", folded.casefold())
    folded = "".join(c for c in folded if unicodedata.category(c) not in ("Mn", "Me"))
    folded = folded.translate(_QUOTES)
    mapped = folded.translate(_HOMOGLYPHS)
    if mapped != folded:
        return mapped, _CONFUSABLE, folded
    if cp > 0x2FF and folded.isascii() and folded.isalnum():
        return folded, _COMPAT, folded
    return folded, _PLAIN, folded


_CONFUSABLE_CHARS = re.compile(
    "[" + "".join(chr(cp) for cp in _HOMOGLYPHS if isinstance(cp, int)) + "]", re.IGNORECASE
)
_ONE_TO_ONE: dict[int, str] = {}
"""Cache: code point -> its one-character fold (homoglyphs not mapped), for the characters
that fold to exactly one plain character ("é" -> "e", "Ж" -> "ж", "好" -> "好")."""
_NOT_ONE_TO_ONE: set[int] = set()
_CACHE_LIMIT = 1 << 16


def _learn(cp: int) -> str | None:
    _, kind, plain = _fold_char(chr(cp))
    if len(_ONE_TO_ONE) + len(_NOT_ONE_TO_ONE) >= _CACHE_LIMIT:
        _ONE_TO_ONE.clear()
        _NOT_ONE_TO_ONE.clear()
    if kind in (_PLAIN, _CONFUSABLE) and len(plain) == 1:
        _ONE_TO_ONE[cp] = plain
        return plain
    _NOT_ONE_TO_ONE.add(cp)
    return None


def _simple_fold(run: str) -> str | None:
    """A run of non-ASCII characters folded one to one (C-speed ``translate``), or None when
    a character needs the per-character path (expansions, invisible characters, tricks)."""
    if len(run) == 1:
        cp = ord(run)
        rep = _ONE_TO_ONE.get(cp)
        return rep if rep is not None or cp in _NOT_ONE_TO_ONE else _learn(cp)
    table: dict[int, str] = {}
    for ch in set(run):
        cp = ord(ch)
        if cp < 0x80:
            continue  # spaces, digits, punctuation between non-ASCII text
        rep = _ONE_TO_ONE.get(cp)
        if rep is None and (cp in _NOT_ONE_TO_ONE or (rep := _learn(cp)) is None):
            return None
        table[cp] = rep
    return run.translate(table)


def _latin_at(text: str, i: int) -> bool:
    return 0 <= i < len(text) and text[i].isascii() and text[i].isalpha()


def _in_latin_word(text: str, i: int) -> bool:
    """Whether the word around ``text[i]`` has an ASCII letter (a mixed-script word)."""
    for step in (-1, 1):
        j = i + step
        while 0 <= j < len(text) and (text[j].isalpha() or unicodedata.category(text[j]) == "Cf"):
            if text[j].isascii():
                return True
            j += step
    return False


@dataclass(frozen=True, slots=True)
class Normalized:
    """A normalised copy of a text with the way back to the original's offsets."""

    text: str
    index: list[int] | None
    """Normalised position -> original position; ``None`` when they are the same."""
    tricks: tuple[int, ...] = ()
    """Sorted original offsets of invisible, override, tag, homoglyph and compatibility
    characters."""
    invisible: tuple[int, ...] = ()
    overrides: tuple[int, ...] = ()
    confusables: tuple[int, ...] = ()
    tags: tuple[int, ...] = ()

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Normalised ``[start, end)`` -> original ``[start, end)``."""
        if self.index is None or start >= end:
            return start, end
        return self.index[start], self.index[end - 1] + 1

    def tricked(self, start: int, end: int) -> bool:
        """Whether original ``[start, end)`` contains a trick character."""
        i = bisect_left(self.tricks, start)
        return i < len(self.tricks) and self.tricks[i] < end


def normalize(text: str) -> Normalized:
    """NFKD without marks, casefolded, invisible characters dropped, homoglyphs mapped in
    words that mix them with Latin letters ("ignore" spelled with a Cyrillic i is "ignore";
    an all-Cyrillic word stays as it is)."""
    if text.isascii():
        return Normalized(text.lower(), None)
    simple = True

    def fold_run(m: re.Match[str]) -> str:
        nonlocal simple
        run = m.group()
        rep = _simple_fold(run) if simple else None
        if rep is None or (
            _CONFUSABLE_CHARS.search(run)
            and (_latin_at(text, m.start() - 1) or _latin_at(text, m.end()))
        ):
            simple = False
            return run
        return rep

    folded = _NON_ASCII_RUN.sub(fold_run, text)
    if simple:  # every character folded one to one: offsets are unchanged
        return Normalized(folded.lower(), None)
    return _normalize_with_map(text)


def _normalize_with_map(text: str) -> Normalized:
    flag_tags: set[int] = set()
    if "\U0001f3f4" in text:
        for m in _FLAG_TAGS.finditer(text):
            flag_tags.update(range(m.start() + 1, m.end()))
    parts: list[str] = []
    index: list[int] = []
    kinds: dict[int, list[int]] = {k: [] for k in _TRICKS}
    pos = 0
    for m in _NON_ASCII_RUN.finditer(text):
        start, end = m.span()
        if start > pos:
            parts.append(text[pos:start].lower())
            index.extend(range(pos, start))
        pos = end
        run = m.group()
        latin = _latin_at(text, start - 1) or _latin_at(text, end)
        quick = None if latin and _CONFUSABLE_CHARS.search(run) else _simple_fold(run)
        if quick is not None:
            parts.append(quick)
            index.extend(range(start, end))
            continue
        prev_kind = _PLAIN
        for i in range(start, end):
            ch = text[i]
            if ch < "\x80":
                parts.append(ch)  # not a letter: runs stop at ASCII letters
                index.append(i)
                prev_kind = _PLAIN
                continue
            rep, kind, plain = _fold_char(ch)
            if kind == _CONFUSABLE and not _in_latin_word(text, i):
                rep, kind = plain, _PLAIN
            elif kind == _TAG and i in flag_tags:
                rep, kind = "", _PLAIN
            elif kind == _TAG and prev_kind != _TAG:
                parts.append(" ")  # a hidden run of tag text starts a new word
                index.append(i)
            if kind != _PLAIN:
                kinds[kind].append(i)
            if rep:
                parts.append(rep)
                index.extend([i] * len(rep))
            prev_kind = kind
    if pos < len(text):
        parts.append(text[pos:].lower())
        index.extend(range(pos, len(text)))
    return Normalized(
        "".join(parts),
        index,
        tuple(sorted(i for k in _TRICKS for i in kinds[k])),
        tuple(kinds[_INVISIBLE]),
        tuple(kinds[_OVERRIDE]),
        tuple(kinds[_CONFUSABLE]),
        tuple(kinds[_TAG]),
    )


# ------------------------------------------------------------------------------- patterns

_SEP = r"[\s_*,\-]+"
"""A literal space in a pattern below: one or more spaces, underscores, asterisks, commas or
hyphens ("ignore_all_previous_instructions" and "ignore - all previous" read the same);
a space followed by ``?`` makes the separator optional ("api ?key": "apikey", "api-key")."""


@dataclass(frozen=True, slots=True)
class Phrase:
    """One pattern over normalised text, with what gates it (see :class:`PhraseSet`)."""

    type: str
    score: float
    starts: tuple[str, ...]
    """Every match begins at a word that starts with one of these (the part of a stem before
    its first non-word character). Empty: the pattern is searched through the whole text."""
    requires: tuple[tuple[str, ...], ...]
    """Groups of substrings: the pattern runs only if each group has one in the text."""
    regex: re.Pattern[str]


def phrase(
    kind: str, score: float, starts: str, pattern: str, requires: str = "", sep: str = _SEP
) -> Phrase:
    """``starts`` and ``requires`` are ``|``-separated (``requires`` groups ``;``-separated);
    a literal space in ``pattern`` stands for ``sep`` (`` ?`` for an optional one)."""
    stems = tuple(re.split(r"\W", s, maxsplit=1)[0] for s in starts.split("|") if s)
    return Phrase(
        kind,
        score,
        tuple(s for s in stems if s),
        tuple(tuple(g.split("|")) for g in requires.split(";") if g),
        re.compile(pattern.replace(" ?", "(?: )?").replace(" ", sep)),
    )


_p = phrase


class PhraseSet:
    """Runs many :class:`Phrase` patterns over a text without scanning it once per pattern.

    The text's distinct words are looked up (first two letters, then ``startswith``) to find
    the patterns a match of which may begin there; those run with ``regex.match`` at the
    starts of those words only, and only when their required substrings are all present.
    """

    _CACHE_LIMIT = 65536

    def __init__(self, phrases: Sequence[Phrase]) -> None:
        self.phrases = tuple(phrases)
        self._by_prefix: dict[str, tuple[tuple[str, int], ...]] = {}
        for i, pat in enumerate(self.phrases):
            for stem in pat.starts:
                self._by_prefix[stem[:2]] = (*self._by_prefix.get(stem[:2], ()), (stem, i))
        self._searched = tuple(i for i, p in enumerate(self.phrases) if not p.starts)
        self._cache: dict[str, tuple[int, ...]] = {}

    def _started_by(self, word: str) -> tuple[int, ...]:
        found = self._cache.get(word)
        if found is None:
            found = tuple(
                i for stem, i in self._by_prefix.get(word[:2], ()) if word.startswith(stem)
            )
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            self._cache[word] = found
        return found

    def find(
        self, text: str, words: Iterable[str] | None = None
    ) -> list[tuple[str, int, int, float]]:
        """Hits in an already normalised text: (type, start, end, score). ``words``: the
        text's words if the caller has them already (default: ``\\w+`` runs)."""
        tokens: dict[int, set[str]] = {}
        for word in set(_WORD.findall(text) if words is None else words):
            for i in self._started_by(word):
                tokens.setdefault(i, set()).add(word)
        hits: list[tuple[str, int, int, float]] = []
        starts: dict[str, list[int]] = {}
        for i in sorted(tokens):
            pat = self.phrases[i]
            if pat.requires and not all(any(r in text for r in g) for g in pat.requires):
                continue
            offsets: set[int] = set()
            for word in tokens[i]:
                found = starts.get(word)
                if found is None:
                    found = starts[word] = _word_starts(text, word)
                offsets.update(found)
            for pos in sorted(offsets):
                m = pat.regex.match(text, pos)
                if m is not None and m.end() > m.start():
                    hits.append((pat.type, m.start(), m.end(), pat.score))
        for i in self._searched:
            pat = self.phrases[i]
            if all(any(r in text for r in g) for g in pat.requires):
                hits.extend(
                    (pat.type, m.start(), m.end(), pat.score)
                    for m in pat.regex.finditer(text)
                    if m.end() > m.start()
                )
        return hits


_WORD = re.compile(r"\w+")


def _word_starts(text: str, word: str) -> list[int]:
    """Offsets where ``word`` occurs at the start of a word."""
    out: list[int] = []
    i = text.find(word)
    while i != -1:
        if i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_"):
            out.append(i)
        i = text.find(word, i + 1)
    return out


_W = r"(?:[\w']+ )"  # any one word (and the separator after it)

# English building blocks
_EN_VERB = r"(?:ignore|disregard|forget|override|bypass|skip|discard|abandon|neglect|drop)"
_EN_VERB_S = "ignor|disregard|forget|overrid|bypass|skip|discard|abandon|neglect|drop"
_EN_OBJ_R = (
    "instruction|prompt|directive|rule|guideline|guidance|command|order|context|programming"
    "|constraint|restriction|polic|guardrail|filter"
)
_EN_DET = r"(?:(?:all|any|every|each|the|your|of|these|those|that|this|such|other|about) )*"
_EN_QUAL = (
    r"(?:previous|previously given|prior|above|earlier|preceding|former|foregoing|original"
    r"|initial|old|existing|current|system|developer|hidden|default|safety|standing)"
)
_EN_OBJ = (
    r"(?:instructions?|prompts?|directives?|rules|guidelines|guidance|commands?|orders"
    r"|context|programming|constraints|restrictions|polic(?:y|ies)|guardrails|filters)"
)
_EN_ROLE = (
    r"(?:ai|assistant|bot|chatbot|model|llm|gpt|character|persona|hacker|version"
    r"|unrestricted|unfiltered|uncensored|evil|rogue|amoral|dan|jailbroken)"
)
_ANY_LIMITS = (
    r"(?: (?:with no|without|free of|free from|sans(?: aucune?)?|ohne|sin(?: ninguna)?)"
    r" (?:[\w']+ )?(?:rules|restrictions?|limits|limitations|filters|guidelines"
    r"|content polic(?:y|ies)|regles|limites|filtres|regeln|einschrankungen|grenzen|filter"
    r"|reglas|restricciones|limites|filtros))?"
)
"""Optional tail of a role phrase: "... an AI without any rules" (EN / FR / DE / ES)."""
_EN_LIMITS = (
    r"(?:rules|restrictions|limits|limitations|filters|guidelines|boundaries|polic(?:y|ies)"
    r"|censorship|ethics|morals|constraints|programming|guardrails)"
)
_EN_LIMITS_R = (
    "rule|restriction|limit|filter|guideline|boundar|polic|censor|ethic|moral|constraint"
    "|programming|guardrail"
)
_EN_SYS_OBJ = (
    r"(?:system prompt|system message|system instructions|initial prompt|initial instructions"
    r"|original (?:prompt|instructions)|hidden (?:prompt|instructions|rules)|secret"
    r" (?:prompt|instructions|rules)|internal (?:prompt|instructions|rules)|developer"
    r" (?:prompt|message|instructions)|pre-?prompt|meta ?prompt|system rules)"
)
_EN_ASK = (
    r"(?:reveal|print|show|display|repeat|output|tell|give|share|disclose|leak|dump|expose"
    r"|recite|paste|copy|write(?: out)?|spell out|list|send|read(?: out)?|return|echo"
    r"|translate|summari[sz]e|provide|what (?:is|are|was|were))"
)
_EN_ASK_S = (
    "reveal|print|show|display|repeat|output|tell|give|share|disclose|leak|dump|expose|recite"
    "|paste|copy|write|spell|list|send|read|return|echo|translat|summari|provide|what"
)
_EN_CREDS = (
    r"(?:api ?keys?|apikeys?|secret keys?|access (?:tokens?|keys?)|credentials|private keys?"
    r"|(?:auth|bearer|session|oauth) tokens?|env(?:ironment)? (?:variables|vars)"
    r"|(?:admin|root|database|db|server|system|ssh|ftp|backend) (?:passwords?|logins?)"
    r"|connection strings?)"
)
_EN_PII = (
    r"(?:data|details|information|info|e-?mail addresses|e-?mails?|addresses|phone numbers?"
    r"|credit card (?:numbers|details)|credit cards?|card (?:numbers|details)"
    r"|payment (?:details|info|information|data)"
    r"|records|names|personal (?:data|details|information)|passwords?|accounts?|order history)"
)
_EN_PII_R = (
    "data|detail|info|mail|address|phone|card|payment|record|name|personal|password|account|history"
)
_EN_PEOPLE_R = "custom|guest|user|client|shopper|buyer|member|people"
_NOT_TOPIC_EN = r"(?! (?:for|on|about|regarding|re|when|if|concerning|to)\b)"

# French / German / Spanish building blocks (normalised: no accents, "ß" -> "ss")
_FR_OBJ = (
    r"(?:instructions?|consignes?|regles|directives?|ordres|indications|prompts?|contraintes"
    r"|restrictions)"
)
_FR_OBJ_R = "instruction|consigne|regle|directive|ordre|indication|prompt|contrainte|restriction"
_FR_ASK = (
    r"(?:revele[rsz]?|affiche[rsz]?|montre[rsz]?|repete[rsz]?|donne[rsz]?|ecris"
    r"|imprime[rsz]?|dis|communique[rz]?|divulgue[rz]?|recopie[rz]?)(?: ?-?moi| ?-?nous)?"
)
_FR_ASK_S = "revel|affich|montr|repet|donn|ecri|imprim|dis|communiqu|divulgu|recopi"
_NOT_TOPIC_FR = r"(?! (?:pour|sur|concernant|de|du|d'|a propos)\b)"
_DE_OBJ = (
    r"(?:anweisungen|instruktionen|befehle|regeln|vorgaben|richtlinien|anordnungen"
    r"|systemanweisungen|systemprompt|system prompt|prompts?|einschrankungen)"
)
_DE_OBJ_R = "anweisung|instruktion|befehl|regel|vorgabe|richtlinie|anordnung|prompt|einschrankung"
_DE_ASK = (
    r"(?:zeig(?:e|en)?|gib|geben|wiederhol(?:e|en)?|verrat(?:e|en)?|nenn(?:e|en)?"
    r"|druck(?:e|en)?|schreib(?:e|en)?|sag|sagen|teile|teilen|offenbare|offenlegen)"
    r"(?: (?:mir|uns|sie|bitte))*"
)
_DE_ASK_S = "zeig|gib|geben|wiederhol|verrat|nenn|druck|schreib|sag|teile|offenba|offenleg"
_NOT_TOPIC_DE = r"(?! (?:fur|zu|zum|zur|uber|bezuglich)\b)"
_ES_OBJ = (
    r"(?:instrucciones|indicaciones|ordenes|reglas|directrices|directivas|normas|prompts?"
    r"|restricciones)"
)
_ES_OBJ_R = "instruccion|indicacion|orden|regla|directri|directiva|norma|prompt|restriccion"
_ES_ASK = (
    r"(?:revela(?:me)?|muestra(?:me)?|ensena(?:me)?|repite(?:me)?|imprime|dime|dame"
    r"|escribe(?:me)?|comparte|di|copia|envia(?:me)?|pasame)"
)
_ES_ASK_S = "revela|muestra|ensena|repite|imprime|dime|dame|escribe|comparte|di|copia|envia|pasame"
_NOT_TOPIC_ES = r"(?! (?:para|sobre|de|del|acerca)\b)"

_PATTERNS: tuple[Phrase, ...] = (
    # ---- ignore_instructions, English
    _p(IGNORE, 0.95, _EN_VERB_S,
       rf"\b{_EN_VERB} {_EN_DET}{_EN_QUAL}(?: (?:and|or|&) {_EN_QUAL})?(?: {_EN_QUAL})?"
       rf" {_EN_OBJ}\b", _EN_OBJ_R),
    _p(IGNORE, 0.95, _EN_VERB_S,
       rf"\b{_EN_VERB} {_EN_DET}(?:instructions?|prompts?|directives?|rules|guidelines"
       r"|commands?|context) (?:above|before this|given (?:above|before|earlier|to you)"
       r"|(?:you were|you have been|you've been) given|so far)\b", _EN_OBJ_R),
    _p(IGNORE, 0.8, "ignor|disregard|forget|overrid|bypass",
       r"\b(?:ignore|disregard|forget|override|bypass) (?:(?:all|any|every|the|your|of|these"
       rf"|those|such) )+{_EN_OBJ}\b", _EN_OBJ_R),
    _p(IGNORE, 0.85, _EN_VERB_S,
       rf"\b{_EN_VERB} (?:about )?(?:everything|all|anything)(?: (?:that|which|written|stated"
       r"|said|mentioned))? (?:above|so far|up to (?:this point|now|here)|until now"
       r"|before this(?: line| point| message)?|prior to this|previously stated)\b",
       "everything|all|anything"),
    _p(IGNORE, 0.9, _EN_VERB_S,
       rf"\b{_EN_VERB} (?:about )?(?:everything|all|anything|what) (?:(?:that|which) )?"
       r"you(?:'ve| have| were| had)?(?: been)? (?:told|taught|instructed|given|programmed)\b",
       "told|taught|instructed|given|programmed"),
    _p(IGNORE, 0.85, "do|don|dont|stop|no|never",
       r"\b(?:do not|don't|dont|stop|no longer|never) (?:follow(?:ing)?|obey(?:ing)?"
       r"|adher(?:e|ing) to|listen(?:ing)? to|comply(?:ing)? with|respect(?:ing)?)"
       rf" (?:(?:any|all|of) )*(?:your (?:{_EN_QUAL} )?|(?:the |these |those )?{_EN_QUAL} )"
       rf"{_EN_OBJ}\b", _EN_OBJ_R),
    _p(IGNORE, 0.85, "new|updated|revised|real|actual|true|additional|override|secret|hidden"
       "|admin|developer",
       r"\b(?:new|updated|revised|real|actual|true|additional|override|secret|hidden|admin"
       r"|developer) (?:system )?(?:instructions?|directives?|system prompt|prompt|task"
       r"|orders)\s*:", ":"),
    _p(IGNORE, 0.8, "your",
       r"\byour (?:new|real|actual|true|only) (?:instructions|task|goal|objective|purpose"
       r"|role|job|mission) (?:is|are|will be|from now)\b",
       "instructions|task|goal|objective|purpose|role|job|mission"),
    _p(IGNORE, 0.85, "",
       r"(?:^|(?<=[\n\r])|(?<=[.!?]\x20))[\t\x20]*(?:\[|<\|?|\{|#{1,3}[\t\x20]*|\*\*"
       r"|-{2,}[\t\x20]*)?"
       r"(?:system|sys|developer)(?:[\t\x20]+(?:message|prompt|override|instructions?|note"
       r"|update))?(?:\]|\|?>|\}|\*\*)?[\t\x20]*:", "sys|developer;:"),
    _p(IGNORE, 0.95, "",
       r"<\|(?:im_start|im_end|system|endoftext|eot_id|start_header_id|end_header_id)\|>"
       r"|\[/?inst\]|<</?sys>>", "<|>|[inst]|[/inst]|<<sys>>|<</sys>>"),
    # markup that closes the data an application wrapped (a review, a document) and opens
    # instructions: an indirect injection planted in retrieved or user-written content
    _p(IGNORE, 0.9, "",
       r"</?(?:instructions?|system|system_prompt|prompt|task|assistant|admin|im_start)"
       r"(?:[\t\x20][^<>]{0,40})?>", "<instruction|<system|<prompt|<task|<assistant|<admin"
       "|</instruction|</system|</prompt|</task|</assistant|</admin|<im_start"),
    _p(IGNORE, 0.85, "override|overwrite|replace|update|change|modify|reset|disable"
       "|deactivate|remove|lift|turn|switch|bypass|circumvent",
       r"\b(?:override|overwrite|replace|update|change|modify|reset|disable|deactivate"
       r"|remove|lift|turn off|switch off|bypass|circumvent) (?:(?:all|any|of) )*(?:your"
       r" (?:[\w']+ )?(?:system prompt|system instructions|programming|safety (?:filters?"
       r"|guidelines|rules|settings)|content (?:filters?|polic(?:y|ies))|guardrails|filters)"
       r"|the (?:system prompt|system instructions|safety (?:filters?|guidelines|rules"
       r"|settings)|content (?:filters?|polic(?:y|ies))|guardrails|(?:ai|model|assistant)"
       r"(?:'s)? (?:rules|restrictions|instructions|filters)))\b",
       "system|programming|safety|content|guardrail|filter|rules|restriction|instruction"),
    # ---- ignore_instructions, French
    _p(IGNORE, 0.9, "ignor|oubli|neglig|ne|fais|faites|passe",
       r"\b(?:ignore[rsz]? |oublie[rsz]? |neglige[rsz]? |ne (?:tiens|tenez)(?: plus)? pas"
       r" compte d(?:e |es |u |')|(?:fais|faites) abstraction d(?:e |es |u |')|passe[rz]?"
       r" outre (?:a |aux ))(?:(?:toutes|tous|tout|les|la|le|tes|vos|ces|des|de|ses|ton"
       rf"|votre|ta) )*(?:l'|d')?{_FR_OBJ}(?: (?:precedentes?|anterieures?|ci-dessus"
       r"|d'avant|du systeme|initiales?|d'origine))?\b", _FR_OBJ_R),
    _p(IGNORE, 0.85, "ignor|oubli",
       r"\b(?:oublie[rsz]?|ignore[rsz]?) tout ce qu(?:i |e |')(?:precede|on t'a dit"
       r"|on vous a dit|est (?:au-dessus|ci-dessus)|a ete dit|je t'ai dit avant)"),
    _p(IGNORE, 0.85, "nouvel",
       r"\bnouvel(?:le)?s? (?:instructions?|consignes?|directives?|prompt)\s*:", ":"),
    # ---- ignore_instructions, German
    _p(IGNORE, 0.9, "ignorier|vergiss|vergessen|missacht|uberspring|verwirf|verwerf",
       r"\b(?:ignorier(?:e|en|t)?|vergiss|vergessen|missachte[nt]?|uberspring(?:e|en)?"
       r"|verwirf|verwerfen) (?:(?:sie|du|bitte|alle|alles|samtliche|die|deine|ihre|jegliche"
       r"|jede|den|der|eure) )*(?:(?:vorherigen?|vorigen?|bisherigen?|obigen?|fruheren?"
       r"|vorangegangenen?|ursprunglichen?|alten|gegebenen|bisher gegebenen|oben genannten)"
       rf" )?{_DE_OBJ}\b", _DE_OBJ_R),
    _p(IGNORE, 0.9, "vergiss|vergessen|ignorier",
       r"\b(?:vergiss|vergessen sie|ignorier(?:e|en sie)?) alles,? (?:was (?:dir|ihnen)"
       r" (?:vorher |bisher |zuvor )?(?:gesagt|befohlen|aufgetragen) wurde|was oben steht"
       r"|bisherige)"),
    _p(IGNORE, 0.85, "neue",
       r"\bneuen? (?:anweisungen|instruktionen|befehle|vorgaben|systemanweisungen)\s*:",
       ":"),
    # ---- ignore_instructions, Spanish
    _p(IGNORE, 0.9, "ignor|olvid|descart|omit|haz|no|pasa",
       r"\b(?:ignora|ignore|ignoren|ignorar|olvida|olvide|olviden|olvidar|descarta|descarte"
       r"|omite|omita|haz caso omiso (?:a|de)|no hagas caso (?:a|de)|pasa por alto)"
       r" (?:(?:todas|todos|todo|las|los|la|el|tus|sus|esas|estas|de|a) )*(?:(?:previas"
       rf"|anteriores|originales|iniciales) )?{_ES_OBJ}(?: (?:anteriores|previas|de arriba"
       r"|originales|iniciales|del sistema))?\b", _ES_OBJ_R),
    _p(IGNORE, 0.85, "olvid|ignor",
       r"\b(?:olvida|ignora|olvide|ignore) todo lo (?:anterior|que te (?:dijeron|han dicho"
       r"|dije)|de arriba)\b"),
    _p(IGNORE, 0.85, "nueva",
       r"\bnuevas? (?:instrucciones|indicaciones|ordenes|directrices)\s*:", ":"),
    # ---- role_play, English
    _p(ROLE_PLAY, 0.95, "dan|stan|do|you|act|acting|pretend|roleplay|role|become",
       r"\b(?:(?:dan|stan) mode|do anything now|(?:you are|you're|act as|acting as|pretend to"
       r" be|roleplay as|role-play as|become) dan\b|dan jailbreak)", "dan|anything now"),
    _p(ROLE_PLAY, 0.55, "jail", r"\bjail ?break(?:s|ed|ing)?\b|\bjailbroken\b"),
    _p(ROLE_PLAY, 0.9, "enable|activate|enter|switch|turn|go|start|unlock|you|engage",
       r"\b(?:enable|activate|enter|switch (?:to|into)|turn on|go into|start|unlock"
       r"|you(?: are|'re) (?:now )?in|engage) (?:the )?(?:developer|dev|god|debug|admin|sudo"
       r"|root|maintenance|unrestricted|unfiltered|uncensored|evil|jailbreak|dan|opposite)"
       r" mode\b", "mode"),
    _p(ROLE_PLAY, 0.55, "developer|god|sudo|unrestricted|unfiltered|uncensored|jailbreak|evil",
       r"\b(?:developer|god|sudo|unrestricted|unfiltered|uncensored|jailbreak|evil) mode\b",
       "mode"),
    _p(ROLE_PLAY, 0.8, "you",
       r"\byou(?: are|'re| r) (?:now|from now on|henceforth|no longer) "
       rf"{_W}{{0,3}}{_EN_ROLE}\b{_ANY_LIMITS}", "now|no longer|henceforth"),
    _p(ROLE_PLAY, 0.8, "you",
       r"\byou (?:will|shall|must|should) (?:now |from now on )?(?:act|answer|respond|behave"
       r"|reply|speak|talk|roleplay) (?:as|like) (?:an? |the )?"
       rf"{_W}{{0,2}}{_EN_ROLE}\b{_ANY_LIMITS}", "as|like"),
    _p(ROLE_PLAY, 0.9, "you",
       r"\byou(?: are|'re) (?:now )?(?:no longer|not) (?:bound|restricted|limited|constrained"
       rf"|governed) by(?: (?:any|your|the) {_EN_LIMITS})?\b",
       "bound|restricted|limited|constrained|governed"),
    _p(ROLE_PLAY, 0.75, "from|starting|henceforth",
       r"\b(?:from now on|starting now|henceforth|from this point(?: on)?) you(?: are|'re"
       rf"| will be| will act as| shall be| must act as| act as) {_W}{{0,3}}{_EN_ROLE}\b"
       rf"{_ANY_LIMITS}"),
    _p(ROLE_PLAY, 0.9, "pretend|imagine|act|behave|assume|suppose",
       r"\b(?:pretend|imagine|act as if|act like|behave as if|assume|suppose) (?:that )?"
       r"you(?: are| were| have| had| can|'re)? "
       r"(?:[\w']+ ){0,2}?(?:no|zero|without|free of|free from|not bound by|not restricted by"
       rf"|unrestricted|unfiltered|uncensored|able to ignore) {_W}{{0,2}}?{_EN_LIMITS}\b",
       _EN_LIMITS_R),
    _p(ROLE_PLAY, 0.75, "you",
       rf"\byou(?: have|'ve got| had) no {_EN_LIMITS}\b(?! (?:on|for|about|regarding)\b)",
       _EN_LIMITS_R),
    _p(ROLE_PLAY, 0.65, "pretend|act|roleplay|role|behave",
       r"\b(?:pretend|act|roleplay|role-play|role play|behave) (?:to be|as|like) (?:(?:an?"
       r"|the|my|your) )?(?:[\w']+ ){0,2}?(?:character|hacker|villain|criminal|evil"
       r"|unrestricted|unfiltered|uncensored|jailbroken|grandma|grandmother|developer"
       r"|admin|administrator|different ai|another ai|other ai)\b"),
    # ---- role_play, French
    _p(ROLE_PLAY, 0.85, "tu|vous",
       r"\b(?:tu es|vous etes) (?:desormais|maintenant|a present|dorenavant) "
       r"(?:[\w']+ ){0,3}?(?:ia|assistant|bot|dan|libre|personnage|pirate|hacker|sans"
       rf"|debride|non censure)\b{_ANY_LIMITS}", "desormais|maintenant|a present|dorenavant"),
    _p(ROLE_PLAY, 0.9, "fais|faites",
       r"\b(?:fais|faites) (?:comme si|semblant)\b[^.!?\n]{0,40}?\b(?:aucune?|pas de|sans"
       r"|plus de) (?:[\w']+ )?(?:regles?|restrictions?|limites?|filtres?|censure"
       r"|consignes?)\b", "comme si|semblant"),
    _p(ROLE_PLAY, 0.7, "fais|faites", r"\b(?:fais|faites) semblant d'etre\b", "semblant"),
    _p(ROLE_PLAY, 0.55, "mode",
       r"\bmode (?:developpeur|dieu|sans (?:restrictions?|limites|filtres?)|non censure"
       r"|debride|dan)\b"),
    _p(ROLE_PLAY, 0.9, "active|activez|activer|passe|entre|bascule",
       r"\b(?:active[rz]?|passe[rz]? en|entre[rz]? en|bascule[rz]? en) (?:le )?mode"
       r" (?:developpeur|dieu|sans (?:restrictions?|limites|filtres?)|non censure|debride"
       r"|dan)\b", "mode"),
    # ---- role_play, German
    _p(ROLE_PLAY, 0.85, "du|sie",
       r"\b(?:du bist|sie sind) (?:jetzt|nun|ab sofort|ab jetzt|von nun an) "
       r"(?:[\w']+ ){0,3}?(?:ki|assistent|bot|dan|frei|ohne|charakter|hacker"
       rf"|uneingeschrankt|unzensiert)\b{_ANY_LIMITS}", "bist|sind"),
    _p(ROLE_PLAY, 0.9, "tu",
       r"\btu(?:n sie)? so,? als\b[^.!?\n]{0,50}?\b(?:keine|ohne) (?:[\w']+ )?(?:regeln"
       r"|einschrankungen|grenzen|filter|richtlinien|zensur|vorgaben)\b", " als;keine|ohne"),
    _p(ROLE_PLAY, 0.55, "entwickler|gott|developer",
       r"\b(?:entwickler ?modus|gott ?modus|developer ?modus)\b", "modus"),
    _p(ROLE_PLAY, 0.9, "aktivier|starte|wechsle|schalte|geh",
       r"\b(?:aktiviere|aktivieren sie|aktiviert|starte|wechsle|schalte|geh) (?:in )?(?:den"
       r" )?(?:entwickler ?modus|gott ?modus|developer ?modus)\b", "modus"),
    # ---- role_play, Spanish
    _p(ROLE_PLAY, 0.85, "ahora",
       r"\bahora (?:eres|seras|actuas como|actua como) "
       r"(?:[\w']+ ){0,3}?(?:una ia|ia|asistente|bot|dan|libre|personaje|hacker)\b"
       rf"{_ANY_LIMITS}"),
    _p(ROLE_PLAY, 0.9, "finge|finja|imagina|imagine|haz|actua|simula",
       r"\b(?:finge|finja|imagina|imagine|haz como si|actua como si|simula) (?:que )?"
       r"[^.!?\n]{0,40}?\b(?:no tienes|sin|ninguna) (?:[\w']+ )?(?:reglas|restricciones"
       r"|limites|filtros|normas|censura)\b",
       "reglas|restricciones|limites|filtros|normas|censura"),
    _p(ROLE_PLAY, 0.55, "modo",
       r"\bmodo (?:desarrollador|dios|sin (?:restricciones|filtros|limites)|dan)\b"),
    _p(ROLE_PLAY, 0.9, "activa|activar|entra|pasa|cambia",
       r"\b(?:activa|activar|entra en|pasa a|cambia a|cambiate a) (?:el )?modo"
       r" (?:desarrollador|dios|sin (?:restricciones|filtros|limites)|dan)\b", "modo"),
    # ---- exfiltration, English
    _p(EXFILTRATION, 0.95, _EN_ASK_S,
       rf"\b{_EN_ASK} (?:me |us )?(?:[\w']+ ){{0,3}}?(?:your|the|its|this|ur) "
       r"(?:(?:full|entire|complete|exact|original|initial|hidden|secret|internal"
       rf"|confidential|verbatim|raw|whole) )*{_EN_SYS_OBJ}\b",
       "prompt|instruction|message|rule"),
    _p(EXFILTRATION, 0.85, _EN_ASK_S,
       rf"\b{_EN_ASK} (?:me |us )?(?:[\w']+ ){{0,2}}?(?:your|ur) (?:(?:full|entire|complete"
       r"|exact|whole) )?prompt\b(?! (?:reply|response|answer|service|delivery|payment"
       r"|refund|confirmation|attention|action|help|shipping|support))", "prompt"),
    _p(EXFILTRATION, 0.8, "reveal|print|show|display|repeat|output|disclose|leak|dump|expose"
       "|recite|paste|copy|spell|write|tell|list|echo",
       r"\b(?:reveal|print|show|display|repeat|output|disclose|leak|dump|expose|recite|paste"
       r"|copy|spell out|write out|tell me|list|echo) (?:me |us )?(?:(?:all|back|exactly"
       r"|verbatim|word for word) )*(?:your|ur) (?:[\w']+ )?(?:instructions|guidelines"
       rf"|directives|programming|configuration|config)\b{_NOT_TOPIC_EN}",
       "instruction|guideline|directive|programming|config"),
    _p(EXFILTRATION, 0.8, "what",
       r"\bwhat (?:were|are|was|is) (?:your|ur) (?:(?:(?:original|initial|exact|first"
       r"|secret|hidden|system|real|actual) )+(?:instructions|directives|guidelines|rules"
       r"|programming|prompt)|instructions|directives|programming|system prompt|prompt)\b"
       rf"{_NOT_TOPIC_EN}", "instruction|directive|guideline|rule|programming|prompt"),
    _p(EXFILTRATION, 0.8, "repeat|print|output|copy|recite|return|echo|show|write",
       r"\b(?:repeat|print|output|copy|recite|return|echo|show|write) (?:(?:back|out|me|all"
       r"|exactly|verbatim) )*(?:the |all )?(?:words|text|everything|content|lines"
       r"|sentences?|messages?) (?:(?:written|shown|that appears?|that came) )?(?:above"
       r"|before this|prior to this|at the (?:start|beginning)|preceding)\b",
       "above|before|prior|start|beginning|preceding"),
    _p(EXFILTRATION, 0.85, "starting|beginning",
       r"\b(?:starting|beginning) with (?:the words )?[\"']?you are\b"),
    _p(EXFILTRATION, 0.85, "give|tell|show|send|reveal|print|share|list|display|leak|dump"
       "|provide|output|expose|disclose|read|what|where",
       r"\b(?:give|tell|show|send|reveal|print|share|list|display|leak|dump|provide|output"
       r"|expose|disclose|read|what (?:is|are)|where (?:is|are)) (?:me |us )?"
       r"(?:[\w']+ ){0,3}?(?:your|the|any|all|internal|admin|system|server|backend|company"
       r"|store|shop|hotel|its|openai|stripe|aws)(?:'s)? (?:[\w']+ ){0,2}?"
       rf"{_EN_CREDS}\b", "key|credential|token|password|login|env|connection"),
    _p(EXFILTRATION, 0.8, "give|show|send|list|tell|share|dump|export|reveal|access|get|see"
       "|look|provide|download|pull|fetch|display|print|read",
       r"\b(?:give|show|send|list|tell|share|dump|export|reveal|access|get|see|look up"
       r"|lookup|provide|download|pull|fetch|display|print|read) (?:me |us )?"
       r"(?:[\w']+ ){0,3}?(?:other|another|all(?: the)?(?: other)?|every|previous|last"
       r"|different) (?:customers?|guests?|users?|clients?|shoppers?|buyers?|members?"
       rf"|people)(?:'s?|s')? (?:[\w']+ ){{0,2}}?{_EN_PII}\b", f"{_EN_PEOPLE_R};{_EN_PII_R}"),
    _p(EXFILTRATION, 0.8, "give|show|send|list|tell|share|dump|export|reveal|get|provide"
       "|download|display|print|read|what",
       r"\b(?:give|show|send|list|tell|share|dump|export|reveal|get|provide|download|display"
       r"|print|read|what (?:is|are|were)) (?:me |us )?(?:[\w']+ ){0,2}?"
       rf"{_EN_PII}(?: (?:and|&) (?:[\w']+ )?{_EN_PII})? (?:of|for|from) (?:the |all )?"
       r"(?:other|another|all(?: the)?(?: other)?|every|previous|last|different)"
       r" (?:customers?|guests?|users?|clients?|shoppers?|buyers?|members?|people)\b",
       f"{_EN_PEOPLE_R};{_EN_PII_R}"),
    _p(EXFILTRATION, 0.75, "give|show|send|list|dump|export|download|print|display",
       r"\b(?:give|show|send|list|dump|export|download|print|display) (?:me |us )?(?:the )?"
       r"(?:(?:full|complete|entire) )?(?:list of |table of |database of |all (?:the |your"
       r" |of your )?(?:other )?|every )(?:customers|users|guests|clients|members|accounts"
       r"|customer (?:records|data|emails)|user (?:records|data|emails))\b(?!')",
       _EN_PEOPLE_R),
    _p(EXFILTRATION, 0.5, "system|initial|hidden|prompt",
       r"\b(?:system prompt|system message|initial prompt|hidden prompt|prompt systeme"
       r"|systemprompt|system-prompt|prompt del sistema)\b", "prompt|system message"),
    # ---- exfiltration, French
    _p(EXFILTRATION, 0.9, _FR_ASK_S,
       rf"\b{_FR_ASK} (?:[\w']+ ){{0,2}}?(?:ton|ta|tes|votre|vos|le|la|les) (?:[\w']+ )?"
       r"(?:prompt(?: systeme| initial)?|instructions? (?:systeme|initiales?|d'origine"
       r"|cachees?|secretes?|du systeme)|consignes? (?:systeme|initiales?|d'origine|cachees?"
       r"|secretes?|du systeme)|message systeme)\b", "prompt|instruction|consigne|message"),
    _p(EXFILTRATION, 0.8, _FR_ASK_S,
       rf"\b{_FR_ASK} (?:toutes )?(?:ton|tes|vos|votre) (?:instructions|consignes"
       rf"|directives)\b{_NOT_TOPIC_FR}", "instruction|consigne|directive"),
    _p(EXFILTRATION, 0.8, "quel",
       r"\bquel(?:le)?s? (?:etaient|sont|etait|est) (?:tes|vos|ton|votre) (?:instructions"
       rf"|consignes|directives|prompt)\b{_NOT_TOPIC_FR}",
       "instruction|consigne|directive|prompt"),
    _p(EXFILTRATION, 0.85, _FR_ASK_S + "|envoi",
       r"\b(?:donne[rsz]?|montre[rsz]?|affiche[rsz]?|revele[rsz]?|envoie[rsz]?|dis"
       r"|communique[rz]?)(?: ?-?moi| ?-?nous)? (?:[\w']+ ){0,3}?(?:les?|la|tes|vos|ta|votre"
       r"|ton) (?:cles? (?:d'|de l'|de )?api|cles? secretes?|identifiants|mots? de passe"
       r" (?:admin|administrateur|de la base|du serveur|root)|jetons? d'acces"
       r"|tokens? d'acces)\b", "cle|identifiant|passe|jeton|token"),
    _p(EXFILTRATION, 0.85, "donnees|informations|coordonnees|adresses|e|emails|numeros|details",
       r"\b(?:donnees|informations|coordonnees|adresses|e-?mails|numeros de telephone"
       r"|numeros de carte|details) (?:(?:personnelles|bancaires) )?(?:des autres"
       r"|d'autres|de tous les(?: autres)?) (?:clients|utilisateurs|voyageurs"
       r"|acheteurs)\b", "client|utilisateur|voyageur|acheteur;autres|tous les"),
    # ---- exfiltration, German
    _p(EXFILTRATION, 0.9, _DE_ASK_S,
       rf"\b{_DE_ASK} (?:[\w']+ ){{0,2}}?(?:deinen|deine|dein|ihren|ihre|ihr|den|die|das)"
       r" (?:[\w']+ )?(?:system ?prompt|systemprompt|systemanweisungen|systemnachricht"
       r"|(?:ursprunglichen|geheimen|versteckten|internen|ersten|anfanglichen|originalen)"
       r" (?:anweisungen|instruktionen|prompt))\b", "prompt|anweisung|instruktion|nachricht"),
    _p(EXFILTRATION, 0.8, _DE_ASK_S,
       rf"\b{_DE_ASK} (?:alle )?(?:deinen|deine|dein|ihre|eure) (?:anweisungen|instruktionen"
       rf"|prompt|vorgaben)\b{_NOT_TOPIC_DE}", "anweisung|instruktion|prompt|vorgabe"),
    _p(EXFILTRATION, 0.8, "was",
       r"\bwas (?:waren|sind|war|ist) (?:deine|dein|ihre|eure) (?:(?:ursprunglichen"
       r"|geheimen|ersten|genauen) )?(?:anweisungen|instruktionen|vorgaben|prompt"
       rf"|systemprompt)\b{_NOT_TOPIC_DE}", "anweisung|instruktion|vorgabe|prompt"),
    _p(EXFILTRATION, 0.85, _DE_ASK_S + "|schick|send",
       r"\b(?:gib|geben|zeig(?:e|en)?|verrat(?:e|en)?|nenn(?:e|en)?|schick(?:e|en)?"
       r"|sende(?:n)?|sag)(?: (?:mir|uns|sie|bitte))* (?:[\w']+ ){0,2}?(?:den|die|deine|eure"
       r"|alle|ihre) (?:[\w']+ )?(?:api ?schlussel|api ?keys?|zugangsdaten|admin ?passwort"
       r"|datenbank ?passwort|zugangstoken|geheimen schlussel)\b",
       "schlussel|key|zugang|passwort"),
    _p(EXFILTRATION, 0.85, "daten|informationen|e|email|adressen|telefonnummern|kreditkarten"
       "|kontaktdaten|bestellungen",
       r"\b(?:daten|informationen|e-?mail-?adressen|adressen|telefonnummern"
       r"|kreditkarten(?:daten|nummern)?|kontaktdaten|bestellungen) (?:[\w']+ )?(?:anderer"
       r"|aller|fremder|der anderen) (?:kunden|gaste|nutzer|benutzer)\b",
       "kunden|gaste|nutzer"),
    # ---- exfiltration, Spanish
    _p(EXFILTRATION, 0.9, _ES_ASK_S,
       rf"\b{_ES_ASK} (?:[\w']+ ){{0,2}}?(?:tu|tus|su|sus|el|la|las|los)"
       r" (?:[\w']+ )?(?:prompt(?: del sistema| de sistema| inicial| original)?"
       r"|instrucciones (?:del sistema|de sistema|iniciales|originales|secretas|ocultas)"
       r"|indicaciones del sistema|mensaje del sistema)\b",
       "prompt|instruccion|mensaje|indicacion"),
    _p(EXFILTRATION, 0.8, _ES_ASK_S,
       rf"\b{_ES_ASK} (?:todas )?(?:tus|sus) (?:instrucciones|indicaciones"
       rf"|directrices)\b{_NOT_TOPIC_ES}", "instruccion|indicacion|directri"),
    _p(EXFILTRATION, 0.8, "cuales",
       r"\bcuales (?:eran|son|fueron) (?:tus|sus) (?:instrucciones|indicaciones|directrices"
       rf"|reglas originales)\b{_NOT_TOPIC_ES}"),
    _p(EXFILTRATION, 0.85, _ES_ASK_S,
       rf"\b{_ES_ASK} (?:[\w']+ ){{0,2}}?(?:la|las|tu|tus|su|sus|el|los) (?:[\w']+ )?(?:claves?"
       r" (?:de )?(?:la )?api|api ?keys?|claves? secretas?|credenciales|contrasenas? (?:de )?"
       r"(?:admin|administrador|de la base de datos|del servidor)|tokens? de acceso)\b",
       "clave|api|credencial|contrasena|token"),
    _p(EXFILTRATION, 0.85, "datos|informacion|correos|direcciones|telefonos|tarjetas|emails"
       "|pedidos",
       r"\b(?:datos|informacion|correos|direcciones|telefonos|tarjetas|emails|pedidos)"
       r" (?:(?:personales|bancarios|de contacto) )?(?:de|del) (?:otros|todos los(?: demas)?"
       r"|los demas) (?:clientes|usuarios|huespedes|compradores)\b",
       "client|usuario|huesped|comprador"),
)  # fmt: skip

_PHRASES = PhraseSet(_PATTERNS)

_ROT13 = str.maketrans("abcdefghijklmnopqrstuvwxyz", "nopqrstuvwxyzabcdefghijklm")
_ROT13_TRIGGERS = tuple(
    t.translate(_ROT13)
    for t in ("ignor", "instruct", "prompt", "disregard", "forget", "pretend", "reveal",
              "developer", "password", "api key", "jailbreak", "oubli", "vergiss", "olvida")
)  # fmt: skip
_BLOB = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2}){12,}")


def _phrases(text: str) -> list[tuple[str, int, int, float]]:
    """Pattern hits in an already normalised text: (type, start, end, score)."""
    return _PHRASES.find(text)


def _decode_blob(blob: str) -> str | None:
    """A hex or base64 (standard or URL-safe) blob -> the printable text it encodes."""
    raw: bytes | None = None
    if len(blob) % 2 == 0 and _HEX.fullmatch(blob):
        raw = bytes.fromhex(blob)
    else:
        body = blob.rstrip("=")
        if len(body) % 4 == 1:
            return None
        padded = body + "=" * (-len(body) % 4)
        try:
            if "-" in body or "_" in body:
                raw = base64.b64decode(padded, altchars=b"-_", validate=True)
            else:
                raw = base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    printable = sum(1 for c in text if c.isprintable() or c in "\n\r\t")
    if not text or printable < 0.9 * len(text) or not any(c.isalpha() for c in text):
        return None
    return text


def _decoded_score(text: str, depth: int) -> float:
    """Best pattern score inside a decoded payload (nested blobs up to ``depth`` more)."""
    norm = normalize(text)
    best = max((h[3] for h in _phrases(norm.text)), default=0.0)
    if depth > 0:
        for m in _BLOB.finditer(text):
            inner = _decode_blob(m.group())
            if inner is not None:
                best = max(best, _decoded_score(inner, depth - 1))
    return best


def _is_latin_letter(ch: str) -> bool:
    return ch.isascii() and ch.isalpha()


class PromptInjectionDetector:
    """Prompt-injection patterns (EN/FR/DE/ES), decoded payloads and Unicode tricks.

    ``min_score`` drops weaker findings; ``decode`` turns off the base64 / hex / rot13 /
    reversed-text passes; ``max_decode_depth`` bounds nested blobs (base64 in base64).
    """

    name = NAME

    def __init__(
        self, min_score: float = 0.0, decode: bool = True, max_decode_depth: int = 2
    ) -> None:
        if not 0.0 <= float(min_score) <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], not {min_score!r}")
        if int(max_decode_depth) < 0:
            raise ValueError("max_decode_depth must be >= 0")
        self.min_score = float(min_score)
        self.decode = bool(decode)
        self.max_decode_depth = int(max_decode_depth)

    def detect(self, text: str, ctx: CheckContext) -> list[Finding]:
        if not text:
            return []
        norm = normalize(text)
        raw: list[tuple[str, int, int, float]] = []
        for kind, s, e, score in _phrases(norm.text):
            start, end = norm.span(s, e)
            raw.append((kind, start, end, score))
            if norm.tricks and norm.tricked(start, end):
                raw.append((ENCODED, start, end, max(0.95, score)))
        if self.decode:
            raw.extend(self._decoded(text, norm))
        if norm.tricks:
            raw.extend(self._unicode_tricks(text, norm))
        return self._dedupe(raw)

    # -- encodings

    def _decoded(self, text: str, norm: Normalized) -> Iterable[tuple[str, int, int, float]]:
        if any(t in norm.text for t in _ROT13_TRIGGERS):
            for _, s, e, score in _phrases(norm.text.translate(_ROT13)):
                start, end = norm.span(s, e)
                yield ENCODED, start, end, max(0.9, score)
        if self.max_decode_depth > 0:
            for m in _BLOB.finditer(text):
                decoded = _decode_blob(m.group())
                if decoded is None:
                    continue
                score = _decoded_score(decoded, self.max_decode_depth - 1)
                if score > 0:
                    yield ENCODED, m.start(), m.end(), max(0.9, score)
        for n, pos in enumerate(norm.overrides):
            # the override's scope: up to its pop, the next override or the end of the line
            end = min(len(text), pos + _MAX_SCOPE)
            for stop in _SCOPE_STOPS:
                found = text.find(stop, pos + 1, end)
                if found != -1:
                    end = found
            score = 0.7
            if text[pos] == _RLO and n < _MAX_REVERSED:
                hits = _phrases(normalize(text[pos + 1 : end][::-1]).text)
                if hits:
                    score = max(0.95, *(h[3] for h in hits))
            yield ENCODED, pos, max(end, pos + 1), score

    # -- standalone Unicode tricks

    def _unicode_tricks(self, text: str, norm: Normalized) -> Iterable[tuple[str, int, int, float]]:
        hidden = set(norm.invisible)

        def word(pos: int) -> tuple[int, int]:
            start = pos
            while start > 0 and (text[start - 1].isalpha() or start - 1 in hidden):
                start -= 1
            end = pos + 1
            while end < len(text) and (text[end].isalpha() or end in hidden):
                end += 1
            return start, end

        seen: set[tuple[int, int]] = set()
        covered = -1  # positions are sorted: skip those inside the word just reported
        invisible = norm.invisible
        i = 0
        while i < len(invisible):
            # one run of consecutive invisible characters at a time (per character, scanning
            # its run both ways, took quadratic time: 15 s on 16 K zero-width spaces)
            first = j = i
            while j + 1 < len(invisible) and invisible[j + 1] == invisible[j] + 1:
                j += 1
            i = j + 1
            pos = invisible[first]
            if invisible[j] < covered:
                continue
            left, right = pos - 1, invisible[j] + 1
            if (
                left >= 0
                and right < len(text)
                and _is_latin_letter(text[left])
                and _is_latin_letter(text[right])
            ):
                span = word(max(pos, covered))
                covered = span[1]
                seen.add(span)
                yield ENCODED, span[0], span[1], 0.5
        covered = -1
        for pos in norm.confusables:
            if pos < covered:
                continue
            span = word(pos)
            covered = span[1]
            if span in seen:
                continue
            seen.add(span)
            letters = [c for c in text[span[0] : span[1]] if c.isalpha()]
            if len(letters) >= 3 and any(_is_latin_letter(c) for c in letters):
                yield ENCODED, span[0], span[1], 0.6
        if norm.tags:
            run_start = prev = norm.tags[0]
            for pos in (*norm.tags[1:], -2):
                if pos != prev + 1:
                    yield ENCODED, run_start, prev + 1, 0.7
                    run_start = pos
                prev = pos

    # -- output

    def _dedupe(self, raw: Sequence[tuple[str, int, int, float]]) -> list[Finding]:
        """Per type, overlapping hits collapse to the strongest (then the longest)."""
        kept: dict[str, list[tuple[int, int, float]]] = {}
        starts: dict[str, list[int]] = {}
        for kind, start, end, score in sorted(raw, key=lambda h: (-h[3], h[1] - h[2], h[1])):
            if score < self.min_score:
                continue
            spans = kept.setdefault(kind, [])  # sorted by start, disjoint
            keys = starts.setdefault(kind, [])
            i = bisect_left(keys, start)
            if i > 0 and spans[i - 1][1] > start:
                continue
            if i < len(spans) and spans[i][0] < end:
                continue
            spans.insert(i, (start, end, score))
            keys.insert(i, start)
        out = [
            Finding(kind, start, end, round(score, 4), NAME)
            for kind, spans in kept.items()
            for start, end, score in spans
        ]
        out.sort(key=lambda f: (f.start, f.end, f.type))
        return out
