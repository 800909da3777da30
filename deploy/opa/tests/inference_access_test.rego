# Unit tests for the per-request market/model rule.
package llmops.inference.access_test

import data.llmops.inference.access

request(market, name, tier) := {"market": market, "tenant": "acme", "model": {"name": name, "version": 3, "risk_tier": tier}}

test_allowed if {
	access.decision == {"allow": true, "reasons": [], "invalid": []} with input as request("NL", "property-summary-llm", "high")
}

test_model_blocked_in_market if {
	d := access.decision with input as request("DE", "review-sentiment-llm", "limited")
	d.reasons == [`model "review-sentiment-llm" may not be used in market "DE"`]
}

test_risk_tier_above_market_limit if {
	d := access.decision with input as request("FR", "property-summary-llm", "high")
	d.reasons == [`model "property-summary-llm" has risk tier "high", above "limited" allowed in market "FR"`]
}

test_unknown_market_and_tier if {
	d := access.decision with input as request("XX", "m", "")
	d.reasons == [`model "m" has no known risk tier ("")`, `unknown market "XX"`]
}

test_missing_model if {
	d := access.decision with input as {"market": "NL"}
	d.invalid == [`input.model: required, an object`]
}
