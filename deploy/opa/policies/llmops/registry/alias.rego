# Deploy gate (GovernanceService.SetAlias): may `input.alias` point at this artifact version?
#
# The registry builds the input from its own records (never from the request body alone):
#   {
#     "alias":     "champion",
#     "artifact":  {"kind": "model", "name": "property-summary-llm", "version": 7,
#                   "state": "approved", "created_by": "user:alice",
#                   "card": {"intended_use": "...", "risk_tier": "high", "license": "Apache-2.0",
#                            "limitations": ["..."], "evaluations": [{"metric": "rougeL", ...}],
#                            "human_oversight_contact": "...", "risk_tier_rationale": "..."}},
#     "approvals": [{"by": "user:bob"}],   # approvals recorded on the version
#     "markets":   ["NL", "DE"]            # markets the alias serves
#   }
# Result: {"allow": bool, "reasons": [why not, ...], "invalid": ["input.<field>: problem", ...]}.
# Lists (serving aliases, card fields, markets and their highest risk tier) live in
# governance/data.json (data.llmops.governance).
package llmops.registry.alias

import data.llmops.governance as cfg

# METADATA
# title: SetAlias deploy gate
# entrypoint: true
decision := {
	"allow": allow,
	"reasons": sort(deny),
	"invalid": sort(invalid),
}

default allow := false

allow if {
	count(invalid) == 0
	count(deny) == 0
}

artifact := object.get(input, "artifact", {})

card := object.get(artifact, "card", {})

tier := object.get(card, "risk_tier", "")

tier_rank := {t: i | some i, t in cfg.risk_tiers}

serving if input.alias in cfg.serving_aliases

is_model if artifact.kind == "model"

markets := object.get(input, "markets", [])

# Reasons are built with concat and json.marshal, which OPA compiles into the Wasm module,
# not sprintf, which a Wasm module hands back to its host: on the embedded engine each
# sprintf is a round trip into Python (~45 µs), five times on a gate that denies for five
# reasons. json.marshal quotes a string the way sprintf's %q does for the plain identifiers
# these messages name (it escapes <, > and & as \u003c ... where %q would not).
q(s) := json.marshal(s)

# Aliases point only at approved versions (VersionState in governance.proto).
deny contains concat("", ["version ", json.marshal(artifact.version), " of ", q(artifact.name), " is ", q(artifact.state), ": aliases point only at approved versions"]) if {
	artifact.state != "approved"
}

# Four eyes: a serving alias needs an approval by someone other than the registrant.
deny contains concat("", ["alias ", q(input.alias), " needs an approval by someone other than the registrant ", q(artifact.created_by)]) if {
	serving
	count([a | some a in object.get(input, "approvals", []); a.by != artifact.created_by]) == 0
}

# A serving model has a complete model card (more fields for high-risk models, Art. 14).
deny contains concat("", ["model card field ", q(field), " is missing (required for alias ", q(input.alias), ")"]) if {
	serving
	is_model
	some field in required_card_fields
	not filled(field)
}

required_card_fields contains field if some field in cfg.card_fields

required_card_fields contains field if {
	tier == "high"
	some field in cfg.high_risk_card_fields
}

filled(field) if {
	value := card[field]
	not value in {null, "", [], {}}
}

deny contains concat("", ["unknown risk tier ", q(tier)]) if {
	is_model
	tier != ""
	not tier_rank[tier]
}

# EU AI Act Art. 5: prohibited practices are never served, whatever the alias.
deny contains "risk tier \"unacceptable\" is never served" if {
	is_model
	tier == "unacceptable"
}

# The risk tier must be allowed in every market the alias serves.
deny contains concat("", ["risk tier ", q(tier), " is not allowed in market ", q(market), " (at most ", q(limit), ")"]) if {
	serving
	is_model
	tier != "unacceptable"
	some market in markets
	limit := cfg.markets[market].max_risk_tier
	tier_rank[tier] > tier_rank[limit]
}

deny contains concat("", ["unknown market ", q(market)]) if {
	serving
	some market in markets
	not cfg.markets[market]
}

invalid contains "input.alias: required, a non-empty string" if {
	not is_string(object.get(input, "alias", null))
}

invalid contains "input.alias: required, a non-empty string" if input.alias == ""

invalid contains "input.artifact: required, an object" if not is_object(object.get(input, "artifact", null))

invalid contains concat("", ["input.artifact.", field, ": required, a non-empty string"]) if {
	is_object(object.get(input, "artifact", null))
	some field in ["kind", "name", "state", "created_by"]
	not non_empty_string(object.get(artifact, field, null))
}

invalid contains "input.artifact.card: must be an object" if {
	not is_object(object.get(artifact, "card", {}))
}

invalid contains "input.approvals: must be a list of objects with a string \"by\"" if {
	approvals := object.get(input, "approvals", [])
	not valid_approvals(approvals)
}

invalid contains "input.markets: must be a list of market codes" if {
	not is_array(markets)
}

invalid contains "input.markets: must be a list of market codes" if {
	some m in markets
	not is_string(m)
}

valid_approvals(approvals) if {
	is_array(approvals)
	every a in approvals {
		is_string(a.by)
	}
}

non_empty_string(s) if {
	is_string(s)
	s != ""
}
