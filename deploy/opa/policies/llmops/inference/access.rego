# Request-time rule (inference, per request): may this market use this model version?
#
# Input, built by the inference service from the request context and the registry:
#   {"market": "DE", "tenant": "acme",
#    "model": {"name": "review-sentiment-llm", "version": 3, "risk_tier": "limited"}}
# Result: {"allow": bool, "reasons": [why not, ...], "invalid": ["input.<field>: problem", ...]}.
# Market table (highest risk tier, blocked models): governance/data.json.
package llmops.inference.access

import data.llmops.governance as cfg

# METADATA
# title: per-request market/model rule
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

tier_rank := {t: i | some i, t in cfg.risk_tiers}

model := object.get(input, "model", {})

tier := object.get(model, "risk_tier", "")

# Per request on the inference path: reasons use concat and json.marshal (compiled into the
# Wasm module), not sprintf (a call back into the host per reason); see registry/alias.rego.
q(s) := json.marshal(s)

deny contains concat("", ["unknown market ", q(input.market)]) if {
	not cfg.markets[input.market]
}

deny contains concat("", ["model ", q(model.name), " may not be used in market ", q(input.market)]) if {
	model.name in cfg.markets[input.market].blocked_models
}

deny contains concat("", ["model ", q(model.name), " has risk tier ", q(tier), ", above ", q(limit), " allowed in market ", q(input.market)]) if {
	limit := cfg.markets[input.market].max_risk_tier
	tier_rank[tier] > tier_rank[limit]
}

deny contains concat("", ["model ", q(model.name), " has no known risk tier (", q(tier), ")"]) if {
	not tier_rank[tier]
}

invalid contains "input.market: required, a non-empty string" if not non_empty_string(object.get(input, "market", null))

invalid contains "input.model: required, an object" if not is_object(object.get(input, "model", null))

invalid contains "input.model.name: required, a non-empty string" if {
	is_object(object.get(input, "model", null))
	not non_empty_string(object.get(model, "name", null))
}

non_empty_string(s) if {
	is_string(s)
	s != ""
}
