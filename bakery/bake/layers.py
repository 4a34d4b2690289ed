"""Layered images: a recipe whose `source` is another recipe is baked on that recipe's newest
finished image (bakery/cloud/images.py resolves it), so the order recipes are baked in matters.

    parents          what `bake` brings up to date first: the recipe's layers below it, root first
    in_layer_order   the order `rebake` bakes in: every parent before its children
    groups           the recipes that must be baked in one sequence (a tree of layers): the
                     scheduled workflow runs one job per group, the groups side by side

A parent's new image changes its children's source, so their inputs hash: each is baked again in
turn, with nothing to say but the order.
"""

from __future__ import annotations

from bakery.bake.inputs import Inputs, load_inputs
from bakery.config.settings import Settings
from bakery.errors import ConfigError


def parent_of(inputs: Inputs) -> str | None:
    return inputs.source.get("recipe")


def parents(settings: Settings, inputs: Inputs) -> list[Inputs]:
    """The recipes `inputs` is layered on, the root first (empty when its source is an image)."""
    chain: list[Inputs] = []
    seen = {inputs.name}
    current = parent_of(inputs)
    while current is not None:
        if current in seen:  # refused when the recipe loads; a remembered one may predate the loop
            raise ConfigError(f"{inputs.path}: source.recipe: layers loop through {current!r}")
        seen.add(current)
        parent = load_inputs(settings.recipes, settings.state, current)
        chain.append(parent)
        current = parent_of(parent)
    return chain[::-1]


def in_layer_order(names: list[str], parent: dict[str, str | None]) -> list[str]:
    """`names` with every parent before its children, otherwise in the order given (a parent
    outside `names` is not baked here: its newest image is what the child starts from)."""
    chosen, done, out = set(names), set(), []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        above = parent.get(name)
        if above in chosen and above not in path:
            visit(above, path + (name,))
        done.add(name)
        out.append(name)

    for name in names:
        visit(name, ())
    return out


def groups(names: list[str], parent: dict[str, str | None]) -> list[list[str]]:
    """`names` split into trees of layers (each in layer order): what one job must bake in sequence."""
    def root(name: str) -> str:
        seen = set()
        while parent.get(name) in names and name not in seen:
            seen.add(name)
            name = parent[name]
        return name

    trees: dict[str, list[str]] = {}
    for name in in_layer_order(names, parent):
        trees.setdefault(root(name), []).append(name)
    return list(trees.values())
