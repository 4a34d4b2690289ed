"""A recipe's variables: `--var` values over a `--var-file`'s, over the declared defaults.

Kept apart from the recipe models so a bake whose recipe is remembered unchanged
(bakery/bake/inputs.py) resolves its variables without loading them.
"""

from __future__ import annotations

import re
from pathlib import Path

from bakery.errors import ConfigError

VAR_NAME_RE = r"^[a-z_][a-z0-9_]*$"  # as recipes declare them (bakery/config/recipe.py)


def resolve_variables(declared: dict[str, str | None], given: dict[str, str], path, name: str) -> dict[str, str]:
    """`--var` values over the declared defaults (None: no default); an undeclared or missing one is an error."""
    for key in given:
        if key not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise ConfigError(f"{path}: variable {key!r} is not declared by recipe {name!r} (declared: {known})")
    out: dict[str, str] = {}
    for key, default in declared.items():
        value = given.get(key, default)
        if value is None:
            raise ConfigError(f"{path}: variable {key!r} has no default: pass --var {key}=VALUE "
                              "(or set it in a --var-file)")
        out[key] = value
    return out


def load_var_file(path: Path) -> dict[str, str]:
    """A `--var-file`: a YAML mapping of variable name to one value (text, number or boolean),
    each refused with `file:line: name: problem`. Numbers and booleans become the text a shell
    would see (`8080`, `true`), as if given with --var."""
    from bakery.config.yamlfile import load_yaml

    if not path.is_file():
        raise ConfigError(f"--var-file {path}: {'not a file' if path.exists() else 'file not found'}")
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping of variable names to values, got {type(data).__name__}")
    out: dict[str, str] = {}
    for key, value in data.items():
        where = f"{path}:{lines.line_for((key,))}: {key}"
        if not re.fullmatch(VAR_NAME_RE, key):
            raise ConfigError(f"{where}: not a variable name (lowercase letters, digits and _)")
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            out[key] = str(value)
        else:
            kind = "nothing" if value is None else "a list" if isinstance(value, list) else type(value).__name__
            raise ConfigError(f"{where}: expected one value (text, number or boolean), got {kind}")
    return out


def given_variables(var_file: Path | None, pairs: dict[str, str]) -> dict[str, str]:
    """What the command line gives: the file's values, each overridden by a `--var` of the same name."""
    return {**(load_var_file(var_file) if var_file is not None else {}), **pairs}
