"""The offline validation pass: what the files alone can refuse, before any cloud is opened.

`invoke validate` runs all of it over every recipe and environment, one line per problem: recipes
(with what a bake needs beyond the file: its smoke test's environment and tier, its bastion key),
environments (the network and EC2-limit checks run as they load) and every tier's user data
(rendered with a placeholder image id, schema-checked, secret-linted and sized), then each
environment's secret-lint waivers once all its tiers rendered (one that waives nothing is stale).
`bake` runs the recipe part with the run's variables (`check_recipe`); `launch` renders its tiers
the same way.
"""

from __future__ import annotations

from bakery.config.environment import list_environments, load_environment
from bakery.config.abstract import is_abstract
from bakery.config.recipe import Recipe, check_template, list_recipes, load_recipe, render_templates
from bakery.config.settings import Settings, user_path
from bakery.config.patterns import aws_managed_alias
from bakery.errors import ConfigError
from bakery.render.tier import environment_lint, render_offline


def validate_all(settings: Settings) -> tuple[list[str], int]:
    problems: list[str] = []
    recipes = list_recipes(settings.recipes)
    if not recipes:
        problems.append(f"{settings.recipes}: no recipes found")
    for name in recipes:
        try:
            if is_abstract(settings.recipes / f"{name}.yaml"):
                check_template(settings.recipes, name)  # a template: complete only where it is extended
                continue
            check_recipe(settings, load_recipe(settings.recipes, name))
        except ConfigError as exc:
            problems.append(exc.message)
    envs = list_environments(settings.envs)
    for name in envs:
        try:
            env = load_environment(settings.envs, name, settings.region)
        except ConfigError as exc:
            problems.append(exc.message)
            continue
        before = len(problems)
        try:
            lint = environment_lint(env)  # one for every tier, so it sees which waivers were used
        except ConfigError as exc:
            problems.append(exc.message)
            continue
        for tier, spec in env.tiers.items():
            try:
                if spec.image.recipe and spec.image.recipe not in recipes:
                    raise ConfigError(f"{env.path}: tiers.{tier}.image.recipe: no recipe {spec.image.recipe!r} "
                                      f"in {settings.recipes}")
                render_offline(settings, env, tier, lint)
            except ConfigError as exc:
                problems.append(exc.message)
        if len(problems) == before:  # a tier that failed early may not have reached its waived finding
            try:
                lint.unused()
            except ConfigError as exc:
                problems.append(exc.message)
    return problems, len(recipes) + len(envs)


def check_recipe(settings: Settings, recipe: Recipe, variables: dict[str, str] | None = None) -> None:
    """What a bake of this recipe needs beyond its own file (loading it checked the file), with
    these variables when given (`--var`: an image name can become one EC2 refuses)."""
    if variables:
        render_templates(recipe, variables)
    bastion = recipe.builder.ssh.bastion
    if bastion is not None and bastion.key_file is not None:
        key = user_path(bastion.key_file, settings.project_dir)
        if not key.is_file():
            raise ConfigError(f"{recipe.path}: builder.ssh.bastion.key_file: {key} is not a file")
    publish = recipe.publish
    if publish is not None and publish.share_with:  # an AWS-managed key named in the file: no cloud needed to refuse
        named = {"builder.root_volume.kms_key_id": recipe.builder.root_volume.kms_key_id,
                 **{f"publish.kms_key_ids.{r}": k for r, k in publish.kms_key_ids.items()}}
        for field, key in named.items():
            if key and aws_managed_alias(key):
                raise ConfigError(f"{recipe.path}: {field}: {key} is AWS-managed: publish.share_with cannot share "
                                  "what it encrypts (no other account can use that key); name a customer managed key")
    checks = recipe.checks
    if checks is not None and checks.environment is not None:
        if checks.environment not in list_environments(settings.envs):
            raise ConfigError(f"{recipe.path}: checks.environment: no environment {checks.environment!r} "
                              f"in {settings.envs}")
        env = load_environment(settings.envs, checks.environment, settings.region)
        if checks.tier not in env.tiers:
            raise ConfigError(f"{recipe.path}: checks.tier: {env.path} has no tier {checks.tier!r} "
                              f"(tiers: {', '.join(env.tiers)})")
        render_offline(settings, env, checks.tier)
