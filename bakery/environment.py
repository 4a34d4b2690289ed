"""Environment: where and how the baked images run, loaded from envs/NAME.yaml.

An environment names its tiers; each tier says which image (newest of a recipe, a
pinned AMI, or an SSM parameter), how many instances, where (subnets, security groups),
which provisioning strategy, and which user data templates with which variables.
Environment-wide variables are shared by all tiers; a tier's own override them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from bakery.configfile import load_yaml, validate
from bakery.errors import ConfigError
from bakery.models import AMI_RE, NAME_RE, SSM_PATH, Strict, UserTags, exactly_one
from bakery.recipe import RootVolume

VAR_NAME = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")]
RESERVED_VARS = ("environment", "tier", "region", "image_id", "recipe", "instance_index")


class ImageRef(Strict):
    """Exactly one of: the newest finished image of a recipe, a pinned AMI, an SSM parameter."""

    recipe: Annotated[str, Field(pattern=NAME_RE)] | None = None
    ami: Annotated[str, Field(pattern=AMI_RE)] | None = None
    ssm_parameter: SSM_PATH | None = None

    @model_validator(mode="after")
    def _one(self) -> "ImageRef":
        exactly_one(self, "recipe", "ami", "ssm_parameter")
        return self


class HealthCheck(Strict):
    type: Literal["http", "tcp"] = "http"
    port: int = Field(80, ge=1, le=65535)
    path: str = Field("/health", pattern=r"^/")
    expect_status: int = Field(200, ge=100, le=599)
    timeout: float = Field(300, gt=0, le=3600, description="seconds from launch until the check must pass")
    address: Literal["private_ip", "public_ip"] = "private_ip"


class UserDataSpec(Strict):
    parts: list[str] = Field(default_factory=list, description="templates under userdata/, in order")
    variables: dict[VAR_NAME, object] = {}

    @field_validator("parts")
    @classmethod
    def _parts(cls, v: list[str]) -> list[str]:
        for p in v:
            if p.startswith("/") or ".." in Path(p).parts:
                raise ValueError(f"template {p!r} must be a path inside userdata/ (no '..', not absolute)")
        return v


class LaunchTemplateSpec(Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9()./_-]{3,128}$")
    set_default: bool = True


class Tier(Strict):
    image: ImageRef
    strategy: Literal["combined", "baked", "bootstrap"] = "combined"
    instance_type: str = Field("t3.micro", pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
    count: int = Field(1, ge=0, le=100)
    subnets: list[str] = Field(default_factory=list, description="subnet ids or Name tags; default: the default VPC")
    security_groups: list[str] = Field(default_factory=list, description="group ids or names")
    iam_instance_profile: str | None = None
    public_ip: bool | None = None  # None: follow the subnet's MapPublicIpOnLaunch
    key_name: str | None = None
    root_volume: RootVolume | None = None
    tags: UserTags = {}
    user_data: UserDataSpec = UserDataSpec()
    secrets: dict[Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")],
                  Annotated[str, Field(pattern=r"^(ssm:/[\w./-]+|secretsmanager:[\w/+=.@-]+)$")]] = {}
    health_check: HealthCheck | None = None
    target_group_arn: Annotated[str, Field(pattern=r"^arn:aws[\w-]*:elasticloadbalancing:")] | None = None
    launch_template: LaunchTemplateSpec | None = None

    @model_validator(mode="after")
    def _strategy(self) -> "Tier":
        if self.strategy != "combined" and self.image.recipe is None:
            raise ValueError(f"strategy {self.strategy!r} needs image.recipe (it uses the recipe itself)")
        if self.strategy == "baked" and (self.user_data.parts or self.secrets):
            raise ValueError("strategy 'baked' launches the image alone: remove user_data.parts and secrets")
        return self


class Environment(Strict):
    name: str
    path: Path
    description: str = ""
    variables: dict[VAR_NAME, object] = {}
    tags: UserTags = {}
    tiers: dict[Annotated[str, Field(pattern=NAME_RE)], Tier] = Field(min_length=1)

    @model_validator(mode="after")
    def _reserved(self) -> "Environment":
        for scope, names in [("variables", self.variables)] + [
                (f"tiers.{t}.user_data.variables", tier.user_data.variables) for t, tier in self.tiers.items()]:
            for key in names:
                if key in RESERVED_VARS:
                    raise ValueError(f"{scope}.{key}: name is reserved ({', '.join(RESERVED_VARS)})")
        return self

    def select(self, tier: str | None) -> dict[str, Tier]:
        if tier is None:
            return dict(self.tiers)
        if tier not in self.tiers:
            raise ConfigError(f"{self.path}: environment {self.name!r} has no tier {tier!r} "
                              f"(tiers: {', '.join(self.tiers)})")
        return {tier: self.tiers[tier]}

    def variables_for(self, tier: str) -> dict[str, object]:
        return {**self.variables, **self.tiers[tier].user_data.variables}


def list_environments(envs_dir: Path) -> list[str]:
    return sorted(p.stem for p in envs_dir.glob("*.yaml")) if envs_dir.is_dir() else []


def load_environment(envs_dir: Path, name: str) -> Environment:
    if not re.fullmatch(NAME_RE, name):
        raise ConfigError(f"environment name {name!r} is invalid (lowercase letters, digits, - and _)")
    path = envs_dir / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_environments(envs_dir)) or "none"
        raise ConfigError(f"{path}: no such environment {name!r} (known: {known})")
    data, lines = load_yaml(path)
    if isinstance(data, dict):
        for key in ("name", "path"):
            if key in data:
                raise ConfigError(f"{path}:{lines.line_for((key,))}: {key}: unknown key "
                                  "(an environment's name is its file name)")
        data = {**data, "name": name, "path": path}
        lines.record(("name",), 1)
    return validate(Environment, data, lines, str(path))
