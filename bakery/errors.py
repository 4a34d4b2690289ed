"""One exception family. The CLI prints `.message` on one line and exits non-zero."""


class BakeryError(Exception):
    """An error the user can act on; `message` is one line naming what and where."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(BakeryError):
    """Bad input: a recipe, environment, template or flag. Nothing was created."""

    exit_code = 2


class CloudError(BakeryError):
    """The EC2-compatible endpoint refused or failed a call."""


class RemoteError(BakeryError):
    """The builder could not be reached, or a step on it failed."""


class StepFailed(RemoteError):
    """A recipe step exited non-zero (or timed out) and its policy is abort."""


class BootFailed(BakeryError):
    """An instance booted, but cloud-init reported a failed module: it is not ready for service."""


class WaitTimeout(BakeryError):
    """A wait passed its deadline."""


class Interrupted(BakeryError):
    """Ctrl-C or SIGTERM: raised in the main thread so every cleanup still runs."""

    exit_code = 130


class VerificationFailed(BakeryError):
    """Evidence did not verify: a signature, a statement, a subject or a digest is not what it must be."""
