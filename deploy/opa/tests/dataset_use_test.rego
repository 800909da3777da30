# Unit tests for the dataset purpose-limitation rule.
package llmops.dataset.use_test

import data.llmops.dataset.use

reviews := {
	"name": "guest-reviews-2026q3", "version": 2,
	"allowed_purposes": ["training", "evaluation"],
	"personal_data": true, "legal_basis": "consent",
}

test_allowed_purpose if {
	use.decision == {"allow": true, "reasons": [], "invalid": []} with input as {"purpose": "evaluation", "dataset": reviews}
}

test_purpose_not_allowed if {
	d := use.decision with input as {"purpose": "analytics", "dataset": reviews}
	d.reasons == [`dataset "guest-reviews-2026q3" may not be used for "analytics" (allowed: ["training", "evaluation"])`]
}

test_personal_data_training_needs_consent if {
	d := use.decision with input as {"purpose": "training", "dataset": object.union(reviews, {"legal_basis": "legitimate_interest"})}
	d.reasons == [`dataset "guest-reviews-2026q3" holds personal data: "training" needs a legal basis in ["consent", "contract"]`]
}

test_unknown_purpose if {
	d := use.decision with input as {"purpose": "resale", "dataset": reviews}
	d.reasons == [`unknown purpose "resale"`]
}

test_malformed if {
	d := use.decision with input as {"purpose": "", "dataset": {"name": "x", "allowed_purposes": "training", "personal_data": "yes"}}
	d.invalid == [
		`input.dataset.allowed_purposes: must be a list of strings`,
		`input.dataset.personal_data: must be a boolean`,
		`input.purpose: required, a non-empty string`,
	]
}
