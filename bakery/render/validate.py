"""`invoke validate`: check every config file offline, collecting one line per problem.

Recipes, environments and every tier's user data (rendered with a placeholder image id,
schema-checked, secret-linted and sized) are checked without any cloud call.
"""

from __future__ import annotations

from bakery.config.environment import list_environments, load_environment
from bakery.config.recipe import list_recipes, load_recipe
from bakery.config.settings import Settings
from bakery.errors import ConfigError
from bakery.render.tier import render_offline


def validate_all(settings: Settings) -> tuple[list[str], int]:
    problems: list[str] = []
    recipes = list_recipes(settings.recipes)
    if not recipes:
        problems.append(f"{settings.recipes}: no recipes found")
    for name in recipes:
        try:
            load_recipe(settings.recipes, name)
        except ConfigError as exc:
            problems.append(exc.message)
    envs = list_environments(settings.envs)
    for name in envs:
        try:
            env = load_environment(settings.envs, name)
        except ConfigError as exc:
            problems.append(exc.message)
            continue
        for tier, spec in env.tiers.items():
            try:
                if spec.image.recipe and spec.image.recipe not in recipes:
                    raise ConfigError(f"{env.path}: tiers.{tier}.image.recipe: no recipe {spec.image.recipe!r} "
                                      f"in {settings.recipes}")
                render_offline(settings, env, tier)
            except ConfigError as exc:
                problems.append(exc.message)
    return problems, len(recipes) + len(envs)
