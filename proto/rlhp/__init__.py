"""rlhp's wire contract: generated `rlhp.v1` stubs plus the codec (`rlhp.wire`) and gRPC helpers (`rlhp.rpc`)."""
