"""A recipe's variables: `--var` values over the declared defaults.

Kept apart from the recipe models so a bake whose recipe is remembered unchanged
(bakery/bake/inputs.py) resolves its variables without loading them.
"""

from __future__ import annotations

from bakery.errors import ConfigError


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
            raise ConfigError(f"{path}: variable {key!r} has no default: pass --var {key}=VALUE")
        out[key] = value
    return out
