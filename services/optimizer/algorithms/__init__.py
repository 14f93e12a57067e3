"""Prompt optimisers: pure algorithm code over the `LlmService` interface (no gRPC)."""
