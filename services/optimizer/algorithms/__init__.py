"""Prompt optimisers: algorithm code over the `LlmService` interface (llm_eval's evaluator in
process or its gRPC client), metered by `MeteredLlm`."""
