"""Error type for the local cloud (sandbox, base image, layer store)."""

from __future__ import annotations

from bakery.errors import BakeryError


class LocalCloudError(BakeryError):
    """A local-cloud operation failed; ``message`` names the instance, path and fixing command."""

    def __str__(self) -> str:
        return self.message
