"""Abstract recipes: templates used only through `extends`, never baked on their own.

A recipe file says `abstract: true` at its top level. The flag belongs to that file alone (a
recipe extending an abstract one is concrete) and says nothing about the image, so it is not part
of the inputs hash. It is read here without the recipe models: `bake` and `rebake` decide from it
before a remembered recipe would load pydantic, jinja or even YAML (bakery/bake/inputs.py).
"""

from __future__ import annotations

from pathlib import Path

from bakery.errors import ConfigError

KEY = "abstract"


def is_abstract(path: Path) -> bool:
    """Whether the recipe file at `path` marks itself abstract (its full validation is load_recipe's)."""
    try:
        text = path.read_bytes()
    except OSError:
        return False  # not there: whoever loads the recipe says so
    if KEY.encode() not in text:
        return False  # the common case, decided without parsing YAML
    from bakery.config.yamlfile import load_yaml

    data, _ = load_yaml(path)
    return isinstance(data, dict) and data.get(KEY) is True


def refuse_abstract(recipes_dir: Path, name: str, doing: str) -> None:
    """A one-line error when `name` is abstract: `doing` (e.g. "bake") is never done to one."""
    path = recipes_dir / f"{name}.yaml"
    if is_abstract(path):
        raise ConfigError(f"{path}: abstract: recipe {name!r} is abstract (a template for extends): "
                          f"{doing} a recipe that extends it instead")
