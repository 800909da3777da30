# Per-RPC authorisation of the mesh's callers (Rego v1 syntax, OPA >= 1.0).
#
# Every service's runtime asks `data.llmops.rpc.decision` (in-process, the Wasm build of this
# bundle; decisions cached per caller and method) before a call reaches the servicer, with
#   {
#     "subject": {"id": "token:storefront-web", "roles": ["storefront"], "via": "token"},
#     "method":  "llmops.v1.FeatureService/GetOnlineFeatures"
#   }
# and gets {"allow": bool, "reasons": [why not]}. Which role may call what lives in
# config/rpc/data.json (data.llmops.config.rpc): change it, rebuild the bundle
# (scripts/build_opa_wasm.sh, or a bundle of your own at security.authz_bundle), and every
# service picks it up without a restart.
package llmops.rpc

grants := data.llmops.config.rpc.roles

default allow := false

allow if {
	some role in input.subject.roles
	some pattern in grants[role]
	method_matches(pattern, input.method)
}

# "Service/Method", or a prefix ending in "*": "Service/*", "Service/Get*", "*".
method_matches(pattern, method) if pattern == method

method_matches(pattern, method) if {
	endswith(pattern, "*")
	startswith(method, trim_suffix(pattern, "*"))
}

# METADATA
# title: per-RPC authorisation
# entrypoint: true
decision := {"allow": allow, "reasons": reasons}

reasons := [] if allow

reasons := [sprintf("%s is not granted to %s (roles %v)", [input.method, input.subject.id, input.subject.roles])] if not allow
