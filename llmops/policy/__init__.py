"""Rego policy engines shared by the runtime and the governance service.

The runtime authorises every RPC with the same in-process engine (the bundle compiled to
WebAssembly, :mod:`llmops.policy.wasm`) that governance evaluates its decisions with; the
governance service adds the OPA-server engine and the decision log on top.
"""
