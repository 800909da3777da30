"""Generated protobuf/gRPC stubs of the llmops.v1 contracts (scripts/gen_protos.sh); do not edit."""
