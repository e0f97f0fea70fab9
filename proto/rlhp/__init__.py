"""rlhp's wire contract: generated `rlhp.v1` stubs, the domain types (`rlhp.types`, no protobuf), the codec (`rlhp.wire`) and gRPC helpers (`rlhp.rpc`)."""
