"""The llm_eval service."""
