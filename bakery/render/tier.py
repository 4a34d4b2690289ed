"""A tier's user data: the environment's templates rendered for one tier, offline.

Launch, the smoke test, `invoke render` and `invoke validate` all render a tier here, so they
send (and check) the same bytes. Rendering needs no cloud: only the image id is the cloud's to
know, and where it cannot be known offline (a recipe's newest image, an SSM parameter) the
caller passes PLACEHOLDER_IMAGE and says so.
"""

from __future__ import annotations

from bakery.config.environment import Environment
from bakery.config.settings import Settings
from bakery.config.yamlfile import format_path
from bakery.render.secrets import SecretLint
from bakery.render.userdata import PartSpec, Secret, UserData, render_user_data

# Stands in for the image id wherever it cannot be known without the cloud (validate, render).
PLACEHOLDER_IMAGE = "ami-00000000000000000"


def template_context(env: Environment, tier: str, image_id: str, region: str,
                     instance_index: int = 0) -> dict[str, object]:
    """What every user data template receives (README: 'Variables every template receives')."""
    spec = env.tiers[tier]
    return {**env.variables_for(tier), "environment": env.name, "tier": tier, "region": region,
            "image_id": image_id, "recipe": spec.image.recipe or "", "instance_index": instance_index}


def sends_user_data(env: Environment, tier: str) -> bool:
    spec = env.tiers[tier]
    return not (spec.strategy == "baked" or (spec.strategy == "combined" and not spec.user_data.parts
                                              and not spec.secrets))


def offline_image_id(env: Environment, tier: str) -> str | None:
    """The tier's image id when the environment file alone says it (a fixed AMI), else None."""
    spec = env.tiers[tier]
    return spec.image.ami if spec.strategy != "bootstrap" else None


def environment_lint(env: Environment) -> SecretLint:
    """The secret lint with the environment's waivers. Share one across all of its tiers, then call
    its `unused()`, to refuse a waiver that matches nothing."""
    return SecretLint(env.secret_lint.allow, str(env.path))


def lint_variables(env: Environment, tier: str, lint: SecretLint) -> None:
    """The user's part of a tier's template context, each value named by its field in the file
    (the environment's variables, then the tier's own, both as written: an overridden one too)."""
    for path, variables in ((("variables",), env.variables),
                            (("tiers", tier, "user_data", "variables"), env.tiers[tier].user_data.variables)):
        lint.value(variables, str(env.path), path, format_path)


def render_tier(settings: Settings, env: Environment, tier: str, image_id: str, region: str,
                instance_index: int = 0, lint: SecretLint | None = None) -> UserData | None:
    """The exact user data the tier's instance number `instance_index` gets (None when the tier sends none)."""
    if not sends_user_data(env, tier):
        return None  # nothing per-environment to send
    spec = env.tiers[tier]
    where = f"{env.path}: tiers.{tier}"
    lint = lint or environment_lint(env)
    lint_variables(env, tier, lint)
    extra = []
    if spec.strategy == "bootstrap":
        from bakery.config.recipe import load_recipe
        from bakery.render.bootstrap import bootstrap_script

        recipe = load_recipe(settings.recipes, spec.image.recipe)
        extra.append((f"bootstrap-{recipe.name}.sh", "text/x-shellscript",
                      bootstrap_script(recipe, recipe.resolve_vars({}))))
    return render_user_data(settings.userdata, [PartSpec(p) for p in spec.user_data.parts],
                            template_context(env, tier, image_id, region, instance_index),
                            secrets=[Secret(k, v) for k, v in spec.secrets.items()], region=region,
                            where=where, extra_parts=extra, lint=lint)


def render_offline(settings: Settings, env: Environment, tier: str,
                   lint: SecretLint | None = None) -> tuple[UserData | None, str | None]:
    """The tier's user data without a cloud, and (when the image id had to be a placeholder) why."""
    image_id = offline_image_id(env, tier)
    note = None
    if image_id is None:
        spec = env.tiers[tier]
        source = ("its recipe's source image" if spec.strategy == "bootstrap"
                  else f"recipe {spec.image.recipe}'s newest image" if spec.image.recipe
                  else f"SSM parameter {spec.image.ssm_parameter}")
        note = (f"image_id is the placeholder {PLACEHOLDER_IMAGE}: {source} is only known at launch "
                "(the rest is exactly what launch sends)")
        image_id = PLACEHOLDER_IMAGE
    return render_tier(settings, env, tier, image_id, settings.region, lint=lint), note


def render_for(settings: Settings, env_name: str, tier: str) -> tuple[UserData, str | None, str]:
    """`invoke render`: one tier's user data, offline, the note when its image id is a placeholder,
    and where it comes from ("envs/prod.yaml: tiers.web", for messages)."""
    from bakery.config.environment import load_environment
    from bakery.errors import ConfigError

    env = load_environment(settings.envs, env_name, settings.region)
    env.select(tier)
    user_data, note = render_offline(settings, env, tier)
    if user_data is None:
        raise ConfigError(f"{env.path}: tiers.{tier}: strategy 'baked' sends no user data")
    return user_data, note, f"{env.path}: tiers.{tier}"
