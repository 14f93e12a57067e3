"""The surrogate service."""
