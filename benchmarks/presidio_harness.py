"""Presidio side of `llmops bench guardrail`, run ONLY by the Presidio venv's python.

Started by `benchmarks.presidio_baseline` with a JSON config on stdin:
  {"texts_path": "<bench texts.json>", "calls": <int>, "score_threshold": <float>,
   "spacy_models": {"en": "<spaCy model package>", "fr": "...", "de": null, ...}}
It must not import llmops: only the stdlib and what presidio-analyzer and the models install.
Presidio, spaCy and tldextract are imported through importlib (typed Any) so that this file
type-checks (mypy strict) in the project venv, where they are absent.

Engine: one `AnalyzerEngine` for every language of `spacy_models` (en, fr, de, es), configured
with what Presidio has for each (:func:`registry_configuration`):

- NLP: a spaCy pipeline per language, Presidio's own NER mapping (`conf/default.yaml`). A
  language whose model is null (no spaCy 3.8 pipeline on PyPI: German, Spanish) gets a blank
  spaCy pipeline whose lemma is the lower-cased token, so Presidio's pattern recognizers and
  their context words work there but its NER finds no PERSON or LOCATION.
- Recognizers: Presidio's `conf/default_recognizers.yaml` for these languages (the
  language-agnostic ones, e-mail, phone, IBAN, IP, ..., run in every language), plus what it
  ships disabled or English-only that covers our types in our languages: the credit-card
  recognizer for French and German (its default languages are en, es, it, pl), the German
  recognizers for tax id, identity card, passport and social security number, the Spanish
  passport, the UK National Insurance number and passport; context words in French, German
  and Spanish for phone numbers and cards (Presidio scores a bare phone number 0.4, below
  the threshold, and raises it only next to a context word); phone numbers parsed for the
  European regions of the set as well as Presidio's defaults. France has no recognizer of its
  own in Presidio (no NIR); nor have the Netherlands (BSN).

Presidio would try `spacy download` for a model that is not installed; the harness refuses
instead. Presidio's EmailRecognizer validates domains with tldextract, which by default
fetches the Public Suffix List from the internet on first use (and caches it in ~/.cache); the
harness points tldextract at the snapshot it ships instead, so runs are offline and repeatable.

Latency cases: per latency text (English), a warm-up, then `calls` calls of
`analyze(text=..., language="en")` at concurrency 1 (Presidio's defaults: every entity, no
score threshold): one case per text, `p50_ms`/`p99_ms` per call, `rps` = calls / wall time.

Quality case "pii_quality": `analyze(text=..., language=<the text's language>,
score_threshold=T)` once per labelled text (T = config `score_threshold`, 0.5 by default:
Presidio's own scores are confidences where pattern-only hits of weak recognizers sit below
0.5 and validated or context-confirmed hits above it; note that a bare phone number scores 0.4
and only passes with a context word nearby, and US_PASSPORT never reaches 0.5 at all, 0.45 at
most even with context). A text in a language the engine lacks is analysed as English. The
case's `p50_ms`/`p99_ms` are per text, `rps` = texts / wall time, and `findings` maps each
text id to its findings as OUR types:
  EMAIL_ADDRESS                           -> pii.email
  PHONE_NUMBER, ZA_MOBILE/TELEPHONE_NUMBER -> pii.phone
  CREDIT_CARD                             -> pii.credit_card
  IBAN_CODE                               -> pii.iban
  IP_ADDRESS                              -> pii.ip_address
  national identifiers (NATIONAL_ID below: US_SSN, US_ITIN, UK_NHS, UK_NINO, ES_NIF, ES_NIE,
    DE_TAX_ID, DE_ID_CARD, DE_SOCIAL_SECURITY, IT_FISCAL_CODE, PL_PESEL, ...) -> pii.national_id
  passports (US_PASSPORT, UK_PASSPORT, ES/IT/IN/KR/PH/DE/ZA_PASSPORT) -> pii.passport
  LOCATION                                -> pii.address
  PERSON                                  -> pii.person
LOCATION is spaCy's GPE/LOC/FAC: cities, countries and regions as well as streets and
buildings. Every LOCATION hit is reported as pii.address, so the bench's matching counts it as
an address only where it overlaps a labelled address and as a false positive elsewhere (a city
named outside an address is a false positive). Every other Presidio type has no counterpart
and is dropped (counted in `dropped_types`): DATE_TIME, NRP (nationality/religion/political
group), URL, ORGANIZATION (ignored by Presidio's default config anyway), CRYPTO, MAC_ADDRESS,
UUID, MEDICAL_LICENSE, US_BANK_NUMBER, US_DRIVER_LICENSE and the other licences, vehicle
registrations, company and tax numbers of companies, postcodes. The case lists, per language,
the entities the engine can find (`presidio_entities`) and the spaCy pipeline it used
(`spacy_models`). `below_threshold_types` counts, per Presidio type, what an extra untimed
pass with no threshold found under T, to show what the threshold cost.

Offsets: Presidio's `start`/`end` are indices into the Python `str` it was given (regex spans
and spaCy `token.idx`), i.e. code points, like our spans; the harness checks each finding
lies inside its text. Progress goes to stderr; the last stdout line is the JSON case list.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

SYSTEM = "presidio"
LATENCY_LANGUAGE = "en"
WARMUP_CALLS = 5
PHONE_REGIONS = ("US", "GB", "DE", "FR", "IL", "IN", "CA", "BR", "ES", "IT", "NL", "AT", "CH",
                 "BE", "IE", "PT")  # fmt: skip
"""Presidio's default regions (US, GB, DE, FR, IL, IN, CA, BR) and the other European ones
whose numbers the labelled set holds."""
CONTEXT: dict[str, dict[str, list[str]]] = {
    # Presidio ships English (and, for cards, Spanish) context words only.
    "PhoneRecognizer": {
        "fr": ["téléphone", "telephone", "tél", "tel", "portable", "mobile", "numéro", "appeler",
               "joindre", "standard"],
        "de": ["telefon", "tel", "handy", "mobil", "mobilnummer", "nummer", "rufnummer",
               "anrufen", "erreichen", "zentrale"],
        "es": ["teléfono", "telefono", "tel", "móvil", "movil", "número", "llamar", "llamen",
               "recepción"],
    },
    "CreditCardRecognizer": {
        "fr": ["carte", "crédit", "credit", "cb", "visa", "mastercard", "amex", "paiement"],
        "de": ["karte", "kreditkarte", "visa", "mastercard", "amex", "zahlung", "bezahlen"],
    },
}  # fmt: skip
ENABLE: dict[str, list[str]] = {
    # Recognizers Presidio ships disabled (or for other languages) that cover our types.
    "en": ["UkNinoRecognizer", "UkPassportRecognizer"],
    "de": ["DeTaxIdRecognizer", "DeIdCardRecognizer", "DePassportRecognizer",
           "DeSocialSecurityRecognizer"],
    "es": ["EsPassportRecognizer"],
}  # fmt: skip

NATIONAL_ID = {
    "US_SSN",
    "US_ITIN",
    "UK_NHS",
    "UK_NINO",
    "ES_NIF",
    "ES_NIE",
    "IT_FISCAL_CODE",
    "IT_IDENTITY_CARD",
    "PL_PESEL",
    "FI_PERSONAL_IDENTITY_CODE",
    "SE_PERSONNUMMER",
    "SG_NRIC_FIN",
    "IN_AADHAAR",
    "IN_PAN",
    "IN_VOTER",
    "KR_RRN",
    "KR_FRN",
    "NG_NIN",
    "TH_TNIN",
    "TR_NATIONAL_ID",
    "CA_SIN",
    "ZA_ID_NUMBER",
    "DE_ID_CARD",
    "DE_TAX_ID",
    "DE_SOCIAL_SECURITY",
    "AU_TFN",
    "PH_TIN",
    "PH_UMID",
}
PASSPORT = {
    "US_PASSPORT",
    "UK_PASSPORT",
    "ES_PASSPORT",
    "IT_PASSPORT",
    "IN_PASSPORT",
    "KR_PASSPORT",
    "PH_PASSPORT",
    "DE_PASSPORT",
    "ZA_PASSPORT",
}
TYPE_MAP: dict[str, str] = {
    "EMAIL_ADDRESS": "pii.email",
    "PHONE_NUMBER": "pii.phone",
    "ZA_MOBILE_NUMBER": "pii.phone",
    "ZA_TELEPHONE_NUMBER": "pii.phone",
    "CREDIT_CARD": "pii.credit_card",
    "IBAN_CODE": "pii.iban",
    "IP_ADDRESS": "pii.ip_address",
    "LOCATION": "pii.address",
    "PERSON": "pii.person",
    **{t: "pii.national_id" for t in NATIONAL_ID},
    **{t: "pii.passport" for t in PASSPORT},
}


def log(msg: str) -> None:
    print(f"presidio: {msg}", file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, the same formula as benchmarks.report.percentile."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def offline_tldextract() -> None:
    """Make tldextract (Presidio's email domain check) use its bundled suffix-list snapshot."""
    tld: Any = importlib.import_module("tldextract.tldextract")
    tld.TLD_EXTRACTOR = tld.TLDExtract(suffix_list_urls=(), cache_dir=None)


def registry_configuration(languages: Sequence[str]) -> dict[str, Any]:
    """Presidio's default recognizer configuration for ``languages``, with the additions the
    module docstring lists (context words, phone regions, recognizers enabled)."""
    presidio: Any = importlib.import_module("presidio_analyzer")
    yaml: Any = importlib.import_module("yaml")
    conf_dir = Path(presidio.__file__).parent / "conf"
    conf: dict[str, Any] = yaml.safe_load((conf_dir / "default_recognizers.yaml").read_text())
    conf["supported_languages"] = list(languages)
    recognizers: list[dict[str, Any]] = []
    for rec in conf["recognizers"]:
        name = rec["name"]
        langs = [
            lang if isinstance(lang, dict) else {"language": lang}
            for lang in rec.get("supported_languages") or []
        ]
        extra = CONTEXT.get(name, {})
        enabled_for = [lang for lang, names in ENABLE.items() if name in names]
        if enabled_for:
            rec = {**rec, "enabled": True}
            langs = [{"language": lang} for lang in enabled_for]
        if name == "PhoneRecognizer":
            rec = {**rec, "supported_regions": list(PHONE_REGIONS)}
            langs = [{"language": "en"}]  # its own default context (English)
        if extra or name == "PhoneRecognizer":
            have = {lang["language"] for lang in langs}
            langs += [{"language": lang, "context": words} for lang, words in extra.items()
                      if lang not in have]  # fmt: skip
        if langs:
            rec = {**rec, "supported_languages": langs}
        recognizers.append(rec)
    conf["recognizers"] = recognizers
    return conf


def blank_pipeline(lang: str) -> Any:
    """A spaCy pipeline with no model: tokenizer, and the lower-cased token as its lemma (so
    that Presidio's context words match)."""
    spacy: Any = importlib.import_module("spacy")
    language: Any = importlib.import_module("spacy.language")
    name = "llmops_lower_lemma"
    if name not in language.Language.factories:

        def lower_lemma(doc: Any) -> Any:
            for token in doc:
                token.lemma_ = token.lower_
            return doc

        language.Language.component(name, func=lower_lemma)
    nlp = spacy.blank(lang)
    nlp.add_pipe(name)
    return nlp


def build_analyzer(models: dict[str, str | None]) -> Any:
    """AnalyzerEngine for ``models``' languages (see the module docstring)."""
    spacy: Any = importlib.import_module("spacy")
    spacy_util: Any = importlib.import_module("spacy.util")
    presidio: Any = importlib.import_module("presidio_analyzer")
    nlp_engine_mod: Any = importlib.import_module("presidio_analyzer.nlp_engine")
    registry_mod: Any = importlib.import_module("presidio_analyzer.recognizer_registry")
    yaml: Any = importlib.import_module("yaml")
    conf_file = Path(presidio.__file__).parent / "conf" / "default.yaml"
    nlp_conf: dict[str, Any] = (yaml.safe_load(conf_file.read_text()) if conf_file.exists()
                                else {}) or {}  # fmt: skip
    pipelines: dict[str, Any] = {}
    for lang, model in models.items():
        if model is None:
            pipelines[lang] = blank_pipeline(lang)
        elif not spacy_util.is_package(model):
            raise RuntimeError(f"spaCy model package {model!r} is not installed in this venv")
        else:
            pipelines[lang] = spacy.load(model)
    engine = nlp_engine_mod.SpacyNlpEngine(
        models=[{"lang_code": lang, "model_name": model or f"blank:{lang}"}
                for lang, model in models.items()],
        ner_model_configuration=nlp_engine_mod.NerModelConfiguration(
            **nlp_conf.get("ner_model_configuration", {})
        ),
    )  # fmt: skip
    engine.nlp = pipelines  # loaded above: Presidio would otherwise spacy.load each name
    languages = list(models)
    registry = registry_mod.RecognizerRegistryProvider(
        registry_configuration=registry_configuration(languages), nlp_engine=engine
    ).create_recognizer_registry()
    return presidio.AnalyzerEngine(
        nlp_engine=engine, registry=registry, supported_languages=languages
    )


def latency_case(
    analyzer: Any, case: str, text: str, calls: int, versions: dict[str, Any]
) -> dict[str, Any]:
    for _ in range(WARMUP_CALLS):
        analyzer.analyze(text=text, language=LATENCY_LANGUAGE)
    latencies = [0.0] * calls
    findings = 0
    perf = time.perf_counter
    started = perf()
    for i in range(calls):
        t0 = perf()
        results = analyzer.analyze(text=text, language=LATENCY_LANGUAGE)
        latencies[i] = perf() - t0
        findings += len(results)
    wall = perf() - started
    latencies.sort()
    log(f"{case}: {calls} calls in {wall:.2f} s, p50 {percentile(latencies, 50) * 1000:.2f} ms")
    return {
        "case": case,
        "system": SYSTEM,
        "p50_ms": round(percentile(latencies, 50) * 1000, 4),
        "p99_ms": round(percentile(latencies, 99) * 1000, 4),
        "rps": round(calls / wall, 1),
        "n": calls,
        "concurrency": 1,
        **versions,
        "text_chars": len(text),
        "text_bytes": len(text.encode("utf-8")),
        "findings_per_call": round(findings / calls, 2),
    }


def quality_case(
    analyzer: Any,
    labelled: list[dict[str, Any]],
    threshold: float,
    versions: dict[str, Any],
    languages: Sequence[str],
) -> dict[str, Any]:
    def lang(item: dict[str, Any]) -> str:
        code = str(item.get("lang", ""))
        return code if code in languages else LATENCY_LANGUAGE

    findings: dict[str, list[dict[str, Any]]] = {}
    presidio_types: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    latencies: list[float] = []
    perf = time.perf_counter
    started = perf()
    for item in labelled:
        text: str = item["text"]
        t0 = perf()
        results = analyzer.analyze(text=text, language=lang(item), score_threshold=threshold)
        latencies.append(perf() - t0)
        mapped: list[dict[str, Any]] = []
        for r in results:
            start, end, entity = int(r.start), int(r.end), str(r.entity_type)
            if not 0 <= start < end <= len(text):
                raise RuntimeError(f"{item['id']}: {entity} span [{start}, {end}) outside text")
            presidio_types[entity] += 1
            ours = TYPE_MAP.get(entity)
            if ours is None:
                dropped[entity] += 1
                continue
            mapped.append(
                {"type": ours, "start": start, "end": end, "score": round(float(r.score), 4)}
            )
        mapped.sort(key=lambda f: (f["start"], f["end"], f["type"]))
        findings[str(item["id"])] = mapped
    wall = perf() - started
    log(f"pii_quality: {len(labelled)} texts in {wall:.2f} s")

    # Untimed diagnostics: what Presidio found below the threshold, per type.
    below: Counter[str] = Counter()
    for item in labelled:
        for r in analyzer.analyze(text=item["text"], language=lang(item), score_threshold=0.0):
            if float(r.score) < threshold:
                below[str(r.entity_type)] += 1
    labelled_types = Counter(str(s["type"]) for item in labelled for s in item.get("spans", []))

    latencies.sort()
    return {
        "case": "pii_quality",
        "system": SYSTEM,
        "p50_ms": round(percentile(latencies, 50) * 1000, 4),
        "p99_ms": round(percentile(latencies, 99) * 1000, 4),
        "rps": round(len(labelled) / wall, 1),
        "n": len(labelled),
        "concurrency": 1,
        **versions,
        "score_threshold": threshold,
        "findings": findings,
        "presidio_types": dict(sorted(presidio_types.items())),
        "dropped_types": dict(sorted(dropped.items())),
        "below_threshold_types": dict(sorted(below.items())),
        "labelled_types": dict(sorted(labelled_types.items())),
        "location_note": "LOCATION counts as pii.address only where it overlaps a labelled address",
    }


def run(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    texts = json.loads(Path(cfg["texts_path"]).read_text(encoding="utf-8"))
    calls = max(1, int(cfg["calls"]))
    threshold = float(cfg.get("score_threshold", 0.5))
    models: dict[str, str | None] = dict(cfg["spacy_models"])
    latency_texts: dict[str, str] = texts.get("latency_texts") or {}
    labelled: list[dict[str, Any]] = texts.get("labelled") or []
    if not latency_texts and not labelled:
        raise RuntimeError(f"{cfg['texts_path']}: no latency_texts and no labelled texts")

    # Presidio logs each recognizer it skips for other languages at WARNING: keep errors only;
    # and it warns that it adds the NLP recognizer we leave it to add.
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NLP recognizer", category=UserWarning)
    offline_tldextract()
    started = time.perf_counter()
    analyzer = build_analyzer(models)
    spacy: Any = importlib.import_module("spacy")
    pipelines = {
        lang: f"{model}=={dist_version(model)}" if model else "blank (tokenizer only, no NER)"
        for lang, model in models.items()
    }
    versions: dict[str, Any] = {
        "presidio_version": dist_version("presidio-analyzer"),
        "spacy_version": str(spacy.__version__),
        "spacy_models": pipelines,
    }
    entities = {lang: sorted(analyzer.get_supported_entities(language=lang)) for lang in models}
    log(
        f"presidio-analyzer {versions['presidio_version']}, spacy {versions['spacy_version']}: "
        f"engine built in {time.perf_counter() - started:.2f} s"
    )
    for lang, names in entities.items():
        log(f"  {lang} ({pipelines[lang]}): {', '.join(names)}")
    unknown = sorted({e for names in entities.values() for e in names if e not in TYPE_MAP})
    log(f"no counterpart in our types (dropped): {', '.join(unknown) or 'none'}")

    # Warm-up: the first analyze calls pay for lazy initialisation (spaCy, regex compiles).
    started = time.perf_counter()
    for text in latency_texts.values():
        analyzer.analyze(text=text, language=LATENCY_LANGUAGE)
    for lang in models:
        analyzer.analyze(text="warm-up text 0123", language=lang)
    log(f"warm-up in {time.perf_counter() - started:.2f} s")

    cases = [
        latency_case(analyzer, case, text, calls, versions) for case, text in latency_texts.items()
    ]
    if labelled:
        quality = quality_case(analyzer, labelled, threshold, versions, list(models))
        quality["presidio_entities"] = entities
        cases.append(quality)
    return cases


def main() -> int:
    cfg = json.loads(sys.stdin.read())
    out = sys.stdout
    # Anything presidio or spaCy prints must not land after our JSON line.
    with contextlib.redirect_stdout(sys.stderr):
        cases = run(cfg)
    print(json.dumps(cases), file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
