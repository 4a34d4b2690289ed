"""`invoke validate`: check every config file, collecting one line per problem."""

from __future__ import annotations

from bakery.errors import ConfigError
from bakery.recipe import list_recipes, load_recipe
from bakery.settings import Settings


def validate_all(settings: Settings) -> tuple[list[str], int]:
    problems: list[str] = []
    names = list_recipes(settings.recipes)
    if not names:
        problems.append(f"{settings.recipes}: no recipes found")
    for name in names:
        try:
            load_recipe(settings.recipes, name)
        except ConfigError as exc:
            problems.append(exc.message)
    return problems, len(names)
