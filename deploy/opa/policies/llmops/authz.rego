# Example governance policy for the llmops mesh (Rego v1 syntax, OPA >= 1.0).
#
# The governance service asks OPA for `data.llmops.authz.decision` (POST
# /v1/data/llmops/authz/decision?provenance=true returns the bundle revision too) with an input
#   {
#     "subject":  {"id": "user:alice", "roles": ["ml-engineer"], "team": "search"},
#     "action":   "alias.set",                  # dotted verbs, as in AuditEvent.action
#     "resource": {"type": "model", "name": "property-summary-llm", "version": "7",
#                  "owner_team": "search", "created_by": "user:bob",
#                  "alias": "champion", "risk_tier": "high",
#                  "card": {"intended_use": "...", "human_oversight_contact": "...",
#                           "evaluation_results": [...]}}
#   }
# and gets {"allow": bool, "reasons": [why not, ...]}. Role grants and the lists used below
# live in config/data.json (data.llmops.config), so they change without touching the rules.
package llmops.authz

cfg := data.llmops.config

default allow := false

# Allowed when the subject's roles grant the action and no rule below objects.
allow if {
	granted
	count(deny) == 0
}

# METADATA
# title: per-method authorisation
# entrypoint: true
decision := {
	"allow": allow,
	"reasons": sort(deny),
}

granted if {
	some role in input.subject.roles
	some granted_action in cfg.roles[role].actions
	action_matches(granted_action, input.action)
}

action_matches("*", _)

action_matches(a, a)

is_admin if "platform-admin" in input.subject.roles

deny contains msg if {
	not granted
	msg := sprintf("action %q is not granted to roles %v", [object.get(input, "action", ""), object.get(input, ["subject", "roles"], [])])
}

# Teams change only their own artifacts.
deny contains msg if {
	granted
	not is_admin
	input.action in cfg.owner_scoped_actions
	input.resource.owner_team != input.subject.team
	msg := sprintf("team %q may not %s artifacts owned by team %q", [input.subject.team, input.action, input.resource.owner_team])
}

# Four-eyes: nobody approves what they created.
deny contains "an artifact cannot be approved by its creator" if {
	input.action == "artifact.approve"
	input.resource.created_by == input.subject.id
}

# Serving aliases (champion, production) need a complete model card for high-risk models.
deny contains msg if {
	input.action == "alias.set"
	input.resource.alias in cfg.protected_aliases
	input.resource.risk_tier in cfg.high_risk_tiers
	some field in cfg.required_card_fields
	not card_has(field)
	msg := sprintf("%s risk model needs model card field %q before alias %q", [input.resource.risk_tier, field, input.resource.alias])
}

# EU AI Act "unacceptable" risk: never served.
deny contains msg if {
	input.action == "alias.set"
	input.resource.risk_tier in cfg.forbidden_risk_tiers
	msg := sprintf("risk tier %q may not be served", [input.resource.risk_tier])
}

card_has(field) if {
	value := input.resource.card[field]
	value != null
	value != ""
	value != []
}
