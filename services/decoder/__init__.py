"""The decoder service."""
