"""The one error type for bad configuration: it always names where the problem is."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem at ``path`` (a dotted config path, optionally prefixed by a file)."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)
