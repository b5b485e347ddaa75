"""Registers the plugin's algorithms and datasets into the harness (filled in by later issues)."""


def register() -> None:
    """Idempotent; nothing to register until EX2L and Spawrious land."""
