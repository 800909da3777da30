# Unit tests for the example policy: `opa test deploy/opa/policies deploy/opa/tests -v`
# (kept outside the bundle directory so the server does not load them).
package llmops.authz_test

import data.llmops.authz

card := {
	"intended_use": "property description summaries",
	"human_oversight_contact": "ml-oncall@example.com",
	"evaluation_results": [{"metric": "rougeL", "value": 0.41}],
}

promote(card_value, tier) := {
	"subject": {"id": "user:alice", "roles": ["ml-engineer"], "team": "search"},
	"action": "alias.set",
	"resource": {
		"type": "model", "name": "property-summary-llm", "version": "7", "owner_team": "search",
		"created_by": "user:alice", "alias": "champion", "risk_tier": tier, "card": card_value,
	},
}

test_engineer_promotes_documented_high_risk_model if {
	authz.allow with input as promote(card, "high")
}

test_missing_card_field_denies if {
	d := authz.decision with input as promote(object.remove(card, ["human_oversight_contact"]), "high")
	not d.allow
	d.reasons == [`high risk model needs model card field "human_oversight_contact" before alias "champion"`]
}

test_low_risk_needs_no_card if {
	authz.allow with input as promote({}, "minimal")
}

test_unacceptable_risk_never_served if {
	not authz.allow with input as promote(card, "unacceptable")
}

test_viewer_cannot_register if {
	d := authz.decision with input as {"subject": {"id": "user:v", "roles": ["viewer"], "team": "search"}, "action": "artifact.register", "resource": {"owner_team": "search"}}
	not d.allow
	count(d.reasons) == 1
}

test_other_team_denied if {
	d := authz.decision with input as object.union(promote(card, "high"), {"subject": {"id": "user:eve", "roles": ["ml-engineer"], "team": "ads"}})
	d.reasons == [`team "ads" may not alias.set artifacts owned by team "search"`]
}

test_other_team_may_read if {
	authz.allow with input as {"subject": {"id": "user:eve", "roles": ["viewer"], "team": "ads"}, "action": "artifact.read", "resource": {"owner_team": "search"}}
}

test_admin_crosses_teams if {
	authz.allow with input as object.union(promote(card, "high"), {"subject": {"id": "user:root", "roles": ["platform-admin"], "team": "platform"}})
}

test_no_self_approval if {
	d := authz.decision with input as {"subject": {"id": "user:rita", "roles": ["risk-officer"], "team": "risk"}, "action": "artifact.approve", "resource": {"owner_team": "search", "created_by": "user:rita"}}
	not d.allow
	d.reasons == ["an artifact cannot be approved by its creator"]
}

test_risk_officer_approves_other_teams_artifact if {
	authz.allow with input as {"subject": {"id": "user:rita", "roles": ["risk-officer"], "team": "risk"}, "action": "artifact.approve", "resource": {"owner_team": "search", "created_by": "user:alice"}}
}

test_empty_input_denied if {
	not authz.allow with input as {}
}
