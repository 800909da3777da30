# Data-use rule: may this dataset version be used for this purpose?
#
# Input, built from the dataset's registry metadata and the caller's declared purpose:
#   {"purpose": "training",
#    "dataset": {"name": "guest-reviews-2026q3", "version": 2,
#                "allowed_purposes": ["evaluation", "analytics"],
#                "personal_data": true, "legal_basis": "legitimate_interest"}}
# Result: {"allow": bool, "reasons": [why not, ...], "invalid": ["input.<field>: problem", ...]}.
# Known purposes and which need consent (or a contract) for personal data:
# governance/data.json.
package llmops.dataset.use

import data.llmops.governance as cfg

# METADATA
# title: dataset purpose limitation (GDPR Art. 5(1)(b))
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

dataset := object.get(input, "dataset", {})

allowed_purposes := object.get(dataset, "allowed_purposes", [])

deny contains sprintf("unknown purpose %q", [input.purpose]) if {
	not input.purpose in cfg.purposes
}

deny contains sprintf("dataset %q may not be used for %q (allowed: %v)", [dataset.name, input.purpose, allowed_purposes]) if {
	input.purpose in cfg.purposes
	not input.purpose in allowed_purposes
}

deny contains sprintf("dataset %q holds personal data: %q needs a legal basis in %v", [dataset.name, input.purpose, cfg.consent_legal_bases]) if {
	object.get(dataset, "personal_data", false) == true
	input.purpose in cfg.consent_purposes
	not object.get(dataset, "legal_basis", "") in cfg.consent_legal_bases
}

invalid contains "input.purpose: required, a non-empty string" if not non_empty_string(object.get(input, "purpose", null))

invalid contains "input.dataset: required, an object" if not is_object(object.get(input, "dataset", null))

invalid contains "input.dataset.name: required, a non-empty string" if {
	is_object(object.get(input, "dataset", null))
	not non_empty_string(object.get(dataset, "name", null))
}

invalid contains "input.dataset.allowed_purposes: must be a list of strings" if {
	not is_array(allowed_purposes)
}

invalid contains "input.dataset.personal_data: must be a boolean" if {
	not is_boolean(object.get(dataset, "personal_data", false))
}

non_empty_string(s) if {
	is_string(s)
	s != ""
}
