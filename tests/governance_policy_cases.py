"""The shared table of policy decisions: one input per case and the result every engine must
give for it. ``tests/unit/test_governance_policy.py`` runs it on the embedded Wasm engine
(both ABI paths), ``tests/integration/test_governance_policy_opa.py`` on the OPA server
started by ``deploy/local/opa.sh``, asserting identical answers.

Expected results were produced by ``opa eval`` over ``deploy/opa/policies`` and reviewed.
Some cases exist for the engines rather than the rules: ``alias_quoting`` and
``alias_small_float`` exercise ``json.marshal`` compiled into the Wasm module against Go's
(escaping of non-ASCII, tab, no-break space; floats in exponent form), ``data_quoting`` the
host ``sprintf`` (Go's ``%q`` escaping, ``%v`` of an array holding floats), the malformed
ones the rules that read undefined fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALIAS = "llmops/registry/alias/decision"
ACCESS = "llmops/inference/access/decision"
DATA_USE = "llmops/dataset/use/decision"
AUTHZ = "llmops/authz/decision"
RPC = "llmops/rpc/decision"
DECISION_PATHS = (AUTHZ, DATA_USE, ACCESS, ALIAS, RPC)

CARD: dict[str, Any] = {
    "intended_use": "Summarize guest reviews on property pages",
    "risk_tier": "limited",
    "limitations": ["English and Dutch reviews only"],
    "evaluations": [{"metric": "rougeL", "value": 0.41}],
    "license": "Apache-2.0",
}


def promote(artifact: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A SetAlias gate input: ``champion`` for an approved, documented, limited-risk model
    approved by someone else, serving NL and FR; ``artifact``/``fields`` override."""
    doc: dict[str, Any] = {
        "alias": "champion",
        "artifact": {
            "kind": "model",
            "name": "property-summary-llm",
            "version": 7,
            "state": "approved",
            "created_by": "user:alice",
            "card": dict(CARD),
            **(artifact or {}),
        },
        "approvals": [{"by": "user:bob"}],
        "markets": ["NL", "FR"],
    }
    doc.update(fields)
    return doc


def _result(allow: bool, reasons: list[str], invalid: list[str] | None = None) -> dict[str, Any]:
    return {"allow": allow, "reasons": reasons, "invalid": invalid or []}


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    input: dict[str, Any]
    expected: Any


_NOT_APPROVED = "aliases point only at approved versions"
_REVIEWS = "guest-reviews-2026q3"

CASES: tuple[Case, ...] = (
    Case("alias_promoted", ALIAS, promote(), _result(True, [])),
    Case(
        "alias_self_approval",
        ALIAS,
        promote(approvals=[{"by": "user:alice"}]),
        _result(
            False,
            [
                'alias "champion" needs an approval by someone other than the registrant '
                '"user:alice"'
            ],
        ),
    ),
    Case(
        "alias_card_incomplete",
        ALIAS,
        promote({"card": {k: v for k, v in CARD.items() if k != "license"}}),
        _result(False, ['model card field "license" is missing (required for alias "champion")']),
    ),
    Case(
        "alias_high_risk_fr",
        ALIAS,
        promote({"card": {**CARD, "risk_tier": "high", "human_oversight_contact": "oncall@x.io"}}),
        _result(
            False,
            [
                'model card field "risk_tier_rationale" is missing (required for alias "champion")',
                'risk tier "high" is not allowed in market "FR" (at most "limited")',
            ],
        ),
    ),
    Case(
        "alias_unacceptable",
        ALIAS,
        promote({"card": {**CARD, "risk_tier": "unacceptable"}}, alias="challenger"),
        _result(False, ['risk tier "unacceptable" is never served']),
    ),
    Case(
        "alias_not_approved",
        ALIAS,
        promote({"state": "registered"}),
        _result(False, [f'version 7 of "property-summary-llm" is "registered": {_NOT_APPROVED}']),
    ),
    Case(
        "alias_unknown_market",
        ALIAS,
        promote(markets=["NL", "XX"]),
        _result(False, ['unknown market "XX"']),
    ),
    Case(
        "alias_quoting",
        ALIAS,
        promote({"state": "rejected", "name": 'résumé "llm"\t\u00a0✓', "version": 1234567.5}),
        _result(
            False,
            ['version 1234567.5 of "résumé \\"llm\\"\\t\u00a0✓" is "rejected": ' + _NOT_APPROVED],
        ),
    ),
    Case(
        "alias_small_float",
        ALIAS,
        promote({"state": "registered", "version": 0.00001}),
        _result(
            False, [f'version 1e-05 of "property-summary-llm" is "registered": {_NOT_APPROVED}']
        ),
    ),
    Case(
        "alias_malformed",
        ALIAS,
        {"alias": 3, "artifact": {"kind": "model"}, "approvals": "bob"},
        _result(
            False,
            [],
            [
                "input.alias: required, a non-empty string",
                'input.approvals: must be a list of objects with a string "by"',
                "input.artifact.created_by: required, a non-empty string",
                "input.artifact.name: required, a non-empty string",
                "input.artifact.state: required, a non-empty string",
            ],
        ),
    ),
    Case(
        "alias_empty",
        ALIAS,
        {},
        _result(
            False,
            [],
            ["input.alias: required, a non-empty string", "input.artifact: required, an object"],
        ),
    ),
    Case(
        "access_allowed",
        ACCESS,
        {
            "market": "NL",
            "tenant": "acme",
            "model": {"name": "property-summary-llm", "version": 3, "risk_tier": "high"},
        },
        _result(True, []),
    ),
    Case(
        "access_blocked",
        ACCESS,
        {
            "market": "DE",
            "tenant": "acme",
            "model": {"name": "review-sentiment-llm", "version": 3, "risk_tier": "limited"},
        },
        _result(False, ['model "review-sentiment-llm" may not be used in market "DE"']),
    ),
    Case(
        "access_tier_too_high",
        ACCESS,
        {"market": "FR", "model": {"name": "property-summary-llm", "risk_tier": "high"}},
        _result(
            False,
            [
                'model "property-summary-llm" has risk tier "high", above "limited" allowed in '
                'market "FR"'
            ],
        ),
    ),
    Case(
        "access_unknown",
        ACCESS,
        {"market": "XX", "model": {"name": "m", "risk_tier": ""}},
        _result(False, ['model "m" has no known risk tier ("")', 'unknown market "XX"']),
    ),
    Case(
        "access_no_model",
        ACCESS,
        {"market": "NL"},
        _result(False, [], ["input.model: required, an object"]),
    ),
    Case(
        "data_allowed",
        DATA_USE,
        {
            "purpose": "evaluation",
            "dataset": {
                "name": _REVIEWS,
                "version": 2,
                "allowed_purposes": ["training", "evaluation"],
                "personal_data": True,
                "legal_basis": "consent",
            },
        },
        _result(True, []),
    ),
    Case(
        "data_purpose_denied",
        DATA_USE,
        {
            "purpose": "analytics",
            "dataset": {"name": _REVIEWS, "allowed_purposes": ["training", "evaluation"]},
        },
        _result(
            False,
            [
                f'dataset "{_REVIEWS}" may not be used for "analytics" '
                '(allowed: ["training", "evaluation"])'
            ],
        ),
    ),
    Case(
        "data_quoting",
        DATA_USE,
        {
            "purpose": "analytics",
            "dataset": {
                "name": 'résumé "llm"\t\u00a0✓',
                "allowed_purposes": ["training", 1234567.5, 0.00001],
            },
        },
        _result(
            False,
            [
                'dataset "résumé \\"llm\\"\\t\\u00a0✓" may not be used for "analytics" '
                '(allowed: ["training", 1234567.5, 1e-05])'
            ],
        ),
    ),
    Case(
        "data_needs_consent",
        DATA_USE,
        {
            "purpose": "training",
            "dataset": {
                "name": _REVIEWS,
                "allowed_purposes": ["training"],
                "personal_data": True,
                "legal_basis": "legitimate_interest",
            },
        },
        _result(
            False,
            [
                f'dataset "{_REVIEWS}" holds personal data: "training" needs a legal basis in '
                '["consent", "contract"]'
            ],
        ),
    ),
    Case(
        "data_unknown_purpose",
        DATA_USE,
        {"purpose": "resale", "dataset": {"name": "d", "allowed_purposes": []}},
        _result(False, ['unknown purpose "resale"']),
    ),
    Case(
        "data_malformed",
        DATA_USE,
        {
            "purpose": "",
            "dataset": {"name": "x", "allowed_purposes": "training", "personal_data": "yes"},
        },
        _result(
            False,
            ['unknown purpose ""'],
            [
                "input.dataset.allowed_purposes: must be a list of strings",
                "input.dataset.personal_data: must be a boolean",
                "input.purpose: required, a non-empty string",
            ],
        ),
    ),
    Case(
        "authz_promote",
        AUTHZ,
        {
            "subject": {"id": "user:alice", "roles": ["ml-engineer"], "team": "search"},
            "action": "alias.set",
            "resource": {
                "type": "model",
                "name": "property-summary-llm",
                "version": "7",
                "owner_team": "search",
                "created_by": "user:alice",
                "alias": "champion",
                "risk_tier": "high",
                "card": {
                    "intended_use": "x",
                    "human_oversight_contact": "ml-oncall@example.com",
                    "evaluation_results": [{"metric": "rougeL", "value": 0.41}],
                },
            },
        },
        {"allow": True, "reasons": []},
    ),
    Case(
        "authz_viewer",
        AUTHZ,
        {
            "subject": {"id": "user:v", "roles": ["viewer", "auditor"], "team": "search"},
            "action": "artifact.register",
            "resource": {"owner_team": "search"},
        },
        {
            "allow": False,
            "reasons": ['action "artifact.register" is not granted to roles ["viewer", "auditor"]'],
        },
    ),
    Case(
        "authz_other_team",
        AUTHZ,
        {
            "subject": {"id": "user:eve", "roles": ["ml-engineer"], "team": "ads"},
            "action": "alias.set",
            "resource": {"owner_team": "search", "alias": "challenger"},
        },
        {
            "allow": False,
            "reasons": ['team "ads" may not alias.set artifacts owned by team "search"'],
        },
    ),
    Case(
        "authz_empty",
        AUTHZ,
        {},
        {"allow": False, "reasons": ['action "" is not granted to roles []']},
    ),
)
