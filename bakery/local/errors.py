"""Error type for the local cloud (sandbox, base image, layer store).

Kept as a plain ``Exception`` subclass on purpose: the CLI layer re-parents it onto
``bakery.errors.BakeryError`` so users see ``str(err)`` (one actionable line) and no traceback.
"""

from __future__ import annotations


class LocalCloudError(Exception):
    """A local-cloud operation failed; ``message`` names the instance, path and fixing command."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
