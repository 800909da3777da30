# Unit tests for the SetAlias deploy gate: `opa test deploy/opa/policies deploy/opa/tests -v`.
package llmops.registry.alias_test

import data.llmops.registry.alias

card := {
	"intended_use": "Summarize guest reviews on property pages",
	"risk_tier": "limited",
	"limitations": ["English and Dutch reviews only"],
	"evaluations": [{"metric": "rougeL", "value": 0.41}],
	"license": "Apache-2.0",
}

promote := {
	"alias": "champion",
	"artifact": {
		"kind": "model", "name": "property-summary-llm", "version": 7,
		"state": "approved", "created_by": "user:alice", "card": card,
	},
	"approvals": [{"by": "user:bob"}],
	"markets": ["NL", "FR"],
}

# object.union merges objects recursively: replace the card (or artifact) whole.
with_card(c) := object.union(object.remove(promote, ["artifact"]), {"artifact": object.union(object.remove(promote.artifact, ["card"]), {"card": c})})

test_documented_approved_model_is_promoted if {
	alias.decision == {"allow": true, "reasons": [], "invalid": []} with input as promote
}

test_self_approval_does_not_count if {
	d := alias.decision with input as object.union(promote, {"approvals": [{"by": "user:alice"}]})
	d.reasons == [`alias "champion" needs an approval by someone other than the registrant "user:alice"`]
}

test_challenger_needs_no_approval_nor_card if {
	alias.allow with input as object.union(with_card({}), {"alias": "challenger", "approvals": []})
}

test_incomplete_card_blocks_serving_alias if {
	d := alias.decision with input as with_card(object.remove(card, ["license"]))
	d.reasons == [`model card field "license" is missing (required for alias "champion")`]
}

test_high_risk_needs_oversight_and_is_not_allowed_in_fr if {
	high := object.union(card, {"risk_tier": "high", "human_oversight_contact": "content-ml-oncall@example.com"})
	d := alias.decision with input as object.union(promote, {"artifact": object.union(promote.artifact, {"card": high})})
	d.reasons == [
		`model card field "risk_tier_rationale" is missing (required for alias "champion")`,
		`risk tier "high" is not allowed in market "FR" (at most "limited")`,
	]
}

test_unacceptable_never_served if {
	d := alias.decision with input as object.union(promote, {"alias": "challenger", "artifact": object.union(promote.artifact, {"card": object.union(card, {"risk_tier": "unacceptable"})})})
	d.reasons == [`risk tier "unacceptable" is never served`]
}

test_only_approved_versions if {
	d := alias.decision with input as object.union(promote, {"artifact": object.union(promote.artifact, {"state": "registered"})})
	d.reasons == [`version 7 of "property-summary-llm" is "registered": aliases point only at approved versions`]
}

test_unknown_market if {
	d := alias.decision with input as object.union(promote, {"markets": ["NL", "XX"]})
	d.reasons == [`unknown market "XX"`]
}

test_malformed_input_is_reported if {
	d := alias.decision with input as {"alias": 3, "artifact": {"kind": "model"}, "approvals": "bob"}
	not d.allow
	d.invalid == [
		`input.alias: required, a non-empty string`,
		`input.approvals: must be a list of objects with a string "by"`,
		`input.artifact.created_by: required, a non-empty string`,
		`input.artifact.name: required, a non-empty string`,
		`input.artifact.state: required, a non-empty string`,
	]
}
