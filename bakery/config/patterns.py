"""Names and ids as config files write them, as plain regular expressions (no models needed),
and the one way a recipe or environment name becomes its file."""

import re
from pathlib import Path

from bakery.errors import ConfigError

NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"  # recipe, environment and tier names
AMI_RE = r"^ami-[0-9a-f]{8,17}$"
AWS_EBS_KEY = "alias/aws/ebs"  # the AWS-managed key EBS encrypts with by default


def aws_managed_alias(key_id: str) -> bool:
    """Whether a KMS key id names an AWS-managed key by its alias (alias/aws/..., or its ARN):
    only its own account can use one, so nothing it encrypts can be shared."""
    return key_id.startswith("alias/aws/") or ":alias/aws/" in key_id


def named_file(directory: Path, name: str, kind: str, setting: str) -> Path:
    """DIRECTORY/NAME.yaml of a recipe or an environment, refused in one line: a name that is not
    one, a directory that does not exist (naming the setting that chose it), no such file (listing
    the names there are)."""
    if not re.fullmatch(NAME_RE, name):
        raise ConfigError(f"{kind} name {name!r} is invalid (lowercase letters, digits, - and _)")
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such directory for {kind}s (settings: {setting}, or the project's "
                          f"{directory.name}/)")
    path = directory / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in directory.glob("*.yaml"))) or "none"
        raise ConfigError(f"{path}: no such {kind} {name!r} (known: {known})")
    return path
