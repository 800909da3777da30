package llmops.rpc_test

import data.llmops.rpc

call(roles, method) := {"subject": {"id": "token:t", "roles": roles, "via": "token"}, "method": method}

test_storefront_reads_features if {
	rpc.allow with input as call(["storefront"], "llmops.v1.FeatureService/GetOnlineFeatures")
}

test_storefront_cannot_push_features if {
	d := rpc.decision with input as call(["storefront"], "llmops.v1.FeatureService/PushFeatures")
	not d.allow
	count(d.reasons) == 1
}

test_storefront_cannot_drain if {
	not rpc.allow with input as call(["storefront"], "llmops.v1.AdminService/Drain")
}

test_operator_drains if {
	rpc.allow with input as call(["operator"], "llmops.v1.AdminService/Drain")
}

test_service_calls_data_plane_not_admin if {
	rpc.allow with input as call(["service"], "llmops.v1.GuardrailService/Check")
	not rpc.allow with input as call(["service"], "llmops.v1.GuardrailAdminService/ReloadPolicies")
}

test_auditor_reads_audit_only if {
	rpc.allow with input as call(["auditor"], "llmops.v1.GovernanceService/VerifyAudit")
	not rpc.allow with input as call(["auditor"], "llmops.v1.GovernanceService/SetAlias")
}

test_no_roles_nothing if {
	not rpc.allow with input as call([], "llmops.v1.FeatureService/GetOnlineFeatures")
}
