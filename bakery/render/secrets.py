"""The literal-secret lint: what must not reach user data or sit in an environment file.

User data is readable by anyone with ec2:DescribeInstanceAttribute, so a literal secret in it
is refused; `Secret`s are fetched at boot by a generated script instead. Messages name the
rule a value breaks, never the value.
"""

from __future__ import annotations

import re

from bakery.errors import ConfigError

_PEM = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_AWS_SECRET = re.compile(r"(?i)aws_secret_access_key['\"]?\s*[:=]\s*['\"]?[A-Za-z0-9/+]{40}")
_SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|api[_-]?key|private[_-]?key)$")
_ASSIGNMENT = re.compile(r"^[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.MULTILINE)


def _is_reference(value: str) -> bool:
    v = value.strip().strip("'\"")
    return v == "" or v.startswith("$") or (v.startswith("{{") and v.endswith("}}"))


def text_rule(text: str) -> str | None:
    """The rule a piece of text breaks, if any (the message names the rule, never the value)."""
    if _PEM.search(text):
        return "contains a PEM private key block"
    if _AWS_KEY_ID.search(text):
        return "contains an AWS access key id (AKIA/ASIA...)"
    if _AWS_SECRET.search(text):
        return "contains an aws_secret_access_key assignment"
    for m in _ASSIGNMENT.finditer(text):
        if _SECRET_NAME.search(m.group(1)) and not _is_reference(m.group(2)):
            return f"assigns a literal to {m.group(1)}"
    return None


def _walk(value: object, path: str, where: str) -> None:
    hint = "; use a Secret (fetched at boot) or a ${...} reference"
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if (_SECRET_NAME.search(str(k)) and isinstance(v, (str, int, float)) and not isinstance(v, bool)
                    and not (isinstance(v, str) and _is_reference(v))):
                raise ConfigError(f"{where}: {sub}: key named like a secret has a literal value{hint}")
            _walk(v, sub, where)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _walk(v, f"{path}.{i}" if path else str(i), where)
    elif isinstance(value, str) and (rule := text_rule(value)):
        raise ConfigError(f"{where}: {path or 'value'}: {rule}{hint}")


def lint_value(value: object, where: str) -> None:
    """Raise ConfigError if `value` (recursively) looks like a literal secret."""
    _walk(value, "", where)
