"""Recipe: the typed description of one image, loaded from recipes/NAME.yaml.

A recipe may `extends:` another (e.g. a shared base): the parent's steps run first
and each top-level section of the child replaces the parent's. Everything a bake
needs is validated here so the bake can trust it: paths exist and stay inside the
recipes directory, variables are declared, the image name template renders. (A bake
whose recipe files have not changed since they were validated decides its skip from
the remembered result, bakery/bake/inputs.py, and loads this only to build.)
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from bakery.config.yamlfile import LineMap, load_yaml, validate
from bakery.errors import ConfigError
from bakery.config.variables import resolve_variables
from bakery.config.models import SSM_PATH, Strict, UserTags, exactly_one
from bakery.config.patterns import AMI_RE, NAME_RE, named_file
from bakery.config.vulnerabilities import VulnerabilityPolicy


class SourceFilter(Strict):
    name: str = Field(min_length=1, description="image name pattern, * and ? wildcards")
    owners: list[str] = Field(min_length=1, description="account ids or aliases (self, amazon)")
    architecture: Literal["x86_64", "arm64"] = "x86_64"
    most_recent: bool = True
    include_deprecated: bool = False


class Source(Strict):
    """Exactly one of: a fixed AMI id, a filter, an SSM parameter holding an AMI id, or another
    recipe, whose newest finished image this one is baked on (a layer: only this recipe's own
    steps run, on what the parent's image already holds)."""

    ami: Annotated[str, Field(pattern=AMI_RE)] | None = None
    filter: SourceFilter | None = None
    ssm_parameter: SSM_PATH | None = None
    recipe: Annotated[str, Field(pattern=NAME_RE)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Source":
        exactly_one(self, "ami", "filter", "ssm_parameter", "recipe")
        return self


class Bastion(Strict):
    host: str
    port: int = Field(22, ge=1, le=65535)
    user: str
    key_file: str | None = None


class SSH(Strict):
    user: str = Field("admin", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    interface: Literal["public_ip", "private_ip", "host"] = "public_ip"
    host: str | None = None  # interface=host: connect here instead (e.g. a port forward)
    port: int = Field(22, ge=1, le=65535)
    proxy_command: str | None = None
    bastion: Bastion | None = None
    allowed_cidr: str | None = None  # default: the caller's own address /32
    timeout: float = Field(300, gt=0, le=3600, description="deadline for SSH to answer, seconds")

    @field_validator("allowed_cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ipaddress.ip_network(v, strict=True)
            except ValueError as exc:
                raise ValueError(f"invalid CIDR {v!r}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _host(self) -> "SSH":
        if self.interface == "host" and not self.host:
            raise ValueError("interface 'host' needs ssh.host")
        if self.proxy_command and self.bastion:
            raise ValueError("give either proxy_command or bastion, not both")
        return self


class RootVolume(Strict):
    size_gb: int = Field(8, ge=1, le=16384)
    type: Literal["gp3", "gp2", "io1", "io2", "standard"] = "gp3"
    encrypted: bool = True
    kms_key_id: str | None = None
    device_name: str | None = None  # default: the source image's root device
    iops: int | None = None        # io1 and io2 need it; gp3 may raise it from its 3,000 baseline
    throughput: int | None = None  # MiB/s, gp3 only (125 baseline)

    @model_validator(mode="after")
    def _ebs_rules(self) -> "RootVolume":
        """What EBS refuses at launch, said here with EBS's own limits."""
        if self.kms_key_id and not self.encrypted:
            raise ValueError("kms_key_id is set but encrypted is false: a KMS key encrypts (set encrypted: true)")
        if self.type in ("io1", "io2"):
            if self.iops is None:
                raise ValueError(f"an {self.type} volume needs iops (provisioned IOPS: 100 and up)")
            per_gib = 50 if self.type == "io1" else 1000
            top = 64_000 if self.type == "io1" else 256_000
            if not 100 <= self.iops <= min(top, per_gib * self.size_gb):
                raise ValueError(f"iops {self.iops}: a {self.size_gb} GiB {self.type} volume takes 100 to "
                                 f"{min(top, per_gib * self.size_gb)} ({per_gib} per GiB, at most {top})")
            if self.size_gb < 4:
                raise ValueError(f"size_gb {self.size_gb}: {self.type} volumes are 4 GiB or more")
        elif self.type == "gp3":  # 3,000 IOPS and 125 MiB/s come with any size; more at 500 IOPS per GiB
            top = max(3000, min(80_000, 500 * self.size_gb))
            if self.iops is not None and not 3000 <= self.iops <= top:
                raise ValueError(f"iops {self.iops}: a {self.size_gb} GiB gp3 volume takes 3000 to {top} "
                                 "(500 per GiB above the baseline, at most 80000)")
            if self.throughput is not None and not 125 <= self.throughput <= 2000:
                raise ValueError(f"throughput {self.throughput}: gp3 takes 125 to 2000 MiB/s")
        elif self.iops is not None:
            raise ValueError(f"iops: a {self.type} volume's IOPS are not provisioned (use gp3, io1 or io2)")
        if self.throughput is not None and self.type != "gp3":
            raise ValueError(f"throughput: only gp3 volumes take it, not {self.type}")
        if self.type == "standard" and self.size_gb > 1024:
            raise ValueError(f"size_gb {self.size_gb}: standard (magnetic) volumes are at most 1024 GiB")
        return self


class Builder(Strict):
    instance_types: list[str] = Field(["t3.micro"], min_length=1)
    # spot: each type as a one-time spot instance first, then on demand (capacity errors move on);
    # how the builder is paid for, not what the image holds: not an input
    market: Literal["on-demand", "spot"] = "on-demand"
    # how the builder's SSH host key is pinned (not an input either): `injected`, a key generated
    # here and handed over in its user data, so the first key sshd presents is one already trusted
    # (the private half is readable through DescribeInstanceAttribute while the builder lives);
    # `console`, the keys cloud-init generates on the builder, read from its console output
    # (GetConsoleOutput) before the first connection: nothing secret travels, the wait is longer
    host_key: Literal["injected", "console"] = "injected"
    subnet: str | None = Field(None, pattern=r"^subnet-[0-9a-f]+$")
    iam_instance_profile: str | None = None
    root_volume: RootVolume = RootVolume()
    ssh: SSH = SSH()

    @field_validator("instance_types", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("instance_types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        for t in v:
            if not re.fullmatch(r"[a-z][a-z0-9-]*\.[a-z0-9]+", t):
                raise ValueError(f"{t!r} is not an instance type (like t3.micro)")
        return v


class Upload(Strict):
    """A file or a tree copied to dest; what lands there and what is left alone: bakery/render/upload.py."""

    source: str = Field(min_length=1)
    dest: str = Field(min_length=1)
    mode: str | None = Field(None, pattern=r"^0?[0-7]{3,4}$", description="every file's mode; default: the source's")
    dir_mode: str | None = Field(None, pattern=r"^0?[0-7]{3,4}$",
                                 description="a tree's directories' mode; default: the source's")
    owner: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_-]*(:[a-z_][a-z0-9_-]*)?$")

    @field_validator("dest")
    @classmethod
    def _abs(cls, v: str) -> str:
        p = PurePosixPath(v)
        if not p.is_absolute() or ".." in p.parts:
            raise ValueError(f"dest must be an absolute path without '..' (got {v!r})")
        return v


class Reboot(Strict):
    """Reboot the builder (EC2 RebootInstances) and wait for SSH to answer again, with the same
    pinned host key, from a new boot."""

    timeout: float = Field(600, gt=0, le=3600, description="deadline for the builder to come back, seconds")


class Download(Strict):
    """A file or directory copied from the builder into the build's output dir, beside the manifest
    (RECIPE-BUILD.files/DEST/NAME): logs, reports, what the image was built from."""

    source: str = Field(min_length=1, description="absolute path on the builder")
    dest: str = Field("", description="directory under the build's output dir ('' for its top)")

    @field_validator("source")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/") or v.rstrip("/") == "":
            raise ValueError(f"{v!r}: an absolute path on the builder, not /")
        return v

    @field_validator("dest")
    @classmethod
    def _inside(cls, v: str) -> str:
        path = PurePosixPath(v)
        if path.is_absolute() or ".." in path.parts:
            raise ValueError(f"{v!r}: a relative directory under the build's output dir, without ..")
        return v


class Step(Strict):
    name: str = Field(min_length=1, max_length=80)
    shell: str | None = None
    script: str | None = None
    upload: Upload | None = None
    reboot: Reboot | None = None
    download: Download | None = None
    timeout: float = Field(1800, gt=0, le=86400)
    env: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = {}
    retries: int = Field(0, ge=0, le=10)
    on_failure: Literal["abort", "continue"] = "abort"
    sudo: bool = True
    # a shell or script step that may end the connection (it reboots, restarts sshd): a dropped
    # connection then ends the step well, and the bake waits for SSH to answer again (within `timeout`)
    expect_disconnect: bool = False
    # keep an image of the builder after this step (cleaned as a product is) that `bake` resumes
    # from while nothing up to here changes: on AWS for long steps; the local cloud keeps one after
    # any long run of steps by itself (settings: checkpoint_after). Not an input: it makes no difference
    # to the image.
    checkpoint: bool = False

    @field_validator("reboot", mode="before")
    @classmethod
    def _reboot_true(cls, v):
        return {} if v is True else v

    @model_validator(mode="after")
    def _one_action(self) -> "Step":
        given = [k for k in ("shell", "script", "upload", "reboot", "download") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"step {self.name!r}: give exactly one of shell, script, upload, reboot, download "
                             f"(got {', '.join(given) or 'none'})")
        if self.expect_disconnect and self.kind not in ("shell", "script"):
            raise ValueError(f"step {self.name!r}: expect_disconnect is for shell and script steps")
        return self

    @property
    def kind(self) -> str:
        return ("shell" if self.shell is not None else "script" if self.script is not None
                else "upload" if self.upload is not None else "reboot" if self.reboot is not None else "download")


class Variable(Strict):
    default: str | None = None
    description: str = ""


class Image(Strict):
    name: str = Field("{{ recipe }}-{{ timestamp }}", min_length=1)
    description: str = ""
    tags: UserTags = {}
    ssm_parameter: SSM_PATH | None = None


class Check(Strict):
    name: str = Field(min_length=1, max_length=80)
    shell: str = Field(min_length=1)
    timeout: float = Field(120, gt=0, le=3600)


class Checks(Strict):
    """The smoke test: a throwaway instance of the new image must pass these before it is published."""

    environment: Annotated[str, Field(pattern=NAME_RE)] | None = None  # whose user data the instance gets
    tier: Annotated[str, Field(pattern=NAME_RE)] | None = None
    commands: list[Check] = []
    health_check: "HealthCheckRef | None" = None
    timeout: float = Field(300, gt=0, le=3600, description="deadline for the instance to boot and answer")

    @model_validator(mode="after")
    def _pair(self) -> "Checks":
        if (self.environment is None) != (self.tier is None):
            raise ValueError("give environment and tier together (whose user data the smoke instance gets)")
        if not self.commands and self.health_check is None:
            raise ValueError("declare commands and/or a health_check")
        return self


class HealthCheckRef(Strict):
    port: int = Field(80, ge=1, le=65535)
    path: str = Field("/health", pattern=r"^/")
    expect_status: int = Field(200, ge=100, le=599)


class LaunchTemplateRef(Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9()./_-]{3,128}$")


class Publish(Strict):
    """Where a smoke-tested image goes: other regions, other accounts, SSM, a launch template."""

    regions: list[Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")]] = []
    kms_key_ids: dict[str, str] = {}  # region -> KMS key for the encrypted copy there
    share_with: list[Annotated[str, Field(pattern=r"^\d{12}$")]] = []
    ssm_parameter: SSM_PATH | None = None  # written in every region (home and copies), DataType aws:ec2:image
    launch_template: LaunchTemplateRef | None = None  # a new version pinned to the home-region AMI
    deprecate_after_days: int | None = Field(None, ge=1, le=3650)

    @model_validator(mode="after")
    def _kms(self) -> "Publish":
        for region in self.kms_key_ids:
            if region not in self.regions:
                raise ValueError(f"kms_key_ids: {region} is not one of the copy regions")
        return self


Checks.model_rebuild()


class Freshness(Strict):
    """When `rebake` bakes again although the inputs did not change (issue 16): the newest image is
    older than `max_age_days`, or its apt sources offer a newer version of a package it has (all
    updates, security updates only, or none). A policy, not an input: not in the inputs hash."""

    max_age_days: int = Field(6, ge=1, le=365)  # 6: a weekly schedule always ships a fresh image
    updates: Literal["all", "security", "none"] = "all"


class RecipeDoc(Strict):
    """The YAML document as written (one file, before `extends` is applied)."""

    abstract: bool = False  # a template used only through extends (bakery/config/abstract.py); not inherited
    extends: str | None = Field(None, pattern=NAME_RE)
    description: str = ""
    source: Source | None = None
    builder: Builder | None = None
    variables: dict[Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")], Variable] = {}
    steps: list[Step] = []
    image: Image | None = None
    checks: Checks | None = None
    publish: Publish | None = None
    freshness: Freshness | None = None
    vulnerabilities: VulnerabilityPolicy | None = None  # the CVE gate (bakery/config/vulnerabilities.py)


class Recipe(Strict):
    """A complete recipe: `extends` resolved, every path checked."""

    name: str
    path: Path
    files: list[Path] = Field(description="recipe files in inheritance order, parents first")
    description: str
    source: Source
    builder: Builder
    variables: dict[str, Variable]
    steps: list[Step]
    image: Image
    checks: Checks | None = None
    publish: Publish | None = None
    freshness: Freshness = Freshness()
    vulnerabilities: VulnerabilityPolicy = VulnerabilityPolicy()
    root: Path = Field(description="directory script and upload sources are relative to")

    def local_path(self, rel: str) -> Path:
        return (self.root / rel).resolve()

    def resolve_vars(self, given: dict[str, str]) -> dict[str, str]:
        """Merge `--var` values over defaults; an undeclared or missing variable is an error."""
        return resolve_variables({k: v.default for k, v in self.variables.items()}, given, self.path, self.name)


def recipe_path(recipes_dir: Path, name: str) -> Path:
    return named_file(recipes_dir, name, "recipe", "recipes_dir")


def list_recipes(recipes_dir: Path) -> list[str]:
    return sorted(p.stem for p in recipes_dir.glob("*.yaml")) if recipes_dir.is_dir() else []


def check_template(recipes_dir: Path, name: str) -> None:
    """An abstract recipe on its own: every file of its extends chain valid as written. What only
    a complete recipe has (a source) is checked in each recipe that extends it."""
    _chain(recipes_dir.resolve(), name)


def load_recipe(recipes_dir: Path, name: str) -> Recipe:
    recipes_dir = recipes_dir.resolve()
    chain = _chain(recipes_dir, name)

    merged: dict = {"description": "", "source": None, "builder": None, "variables": {}, "steps": [], "image": None,
                    "checks": None, "publish": None, "freshness": None, "vulnerabilities": None}
    for _, doc, _ in chain:
        for key in ("source", "builder", "image", "checks", "publish", "freshness", "vulnerabilities"):
            if getattr(doc, key) is not None:
                merged[key] = getattr(doc, key)
        merged["description"] = doc.description or merged["description"]
        merged["variables"] = {**merged["variables"], **doc.variables}
        merged["steps"] = merged["steps"] + list(doc.steps)
    top = chain[-1][0]
    for key in ("source",):
        if merged[key] is None:
            raise ConfigError(f"{top}:1: {key}: required field is missing (here or in a recipe it extends)")
    recipe = Recipe(
        name=name, path=top, files=[p for p, _, _ in chain], root=recipes_dir,
        description=merged["description"], source=merged["source"],
        builder=merged["builder"] or Builder(), variables=merged["variables"],
        steps=merged["steps"], image=merged["image"] or Image(), checks=merged["checks"],
        publish=merged["publish"], freshness=merged["freshness"] or Freshness(),
        vulnerabilities=merged["vulnerabilities"] or VulnerabilityPolicy(),
    )
    _check_steps(recipe, chain)
    _check_templates(recipe, chain)
    if recipe.source.recipe is not None:
        _check_layer(recipes_dir, name, chain)
    return recipe


def source_recipe(recipes_dir: Path, name: str) -> str | None:
    """The recipe whose image `name` is baked on (its effective `source.recipe`, extends applied),
    read from the YAML alone: the layer checks walk a chain without validating every file in it."""
    current: str | None = name
    seen: set[str] = set()
    while current is not None and current not in seen:
        seen.add(current)
        data, _ = load_yaml(recipe_path(recipes_dir, current))
        if not isinstance(data, dict):
            return None
        source = data.get("source")
        if isinstance(source, dict):
            parent = source.get("recipe")
            return parent if isinstance(parent, str) else None
        current = data.get("extends") if isinstance(data.get("extends"), str) else None
    return None


def _check_layer(recipes_dir: Path, name: str, chain) -> None:
    """`source.recipe` names a recipe that can have an image: one that exists, is not abstract, and
    is not, through its own sources, this recipe again."""
    from bakery.config.abstract import is_abstract

    path, doc, lines = next((p, d, ln) for p, d, ln in reversed(chain) if d.source is not None)
    where = f"{path}:{lines.line_for(('source', 'recipe'))}: source.recipe"
    layers = [name]
    parent = doc.source.recipe
    while parent is not None:
        if parent in layers:
            raise ConfigError(f"{where}: layers loop: {' -> '.join(layers + [parent])}")
        parent_path = recipes_dir / f"{parent}.yaml"
        if not parent_path.is_file():
            raise ConfigError(f"{where}: {parent!r} names no recipe (no {parent_path})")
        if is_abstract(parent_path):
            raise ConfigError(f"{where}: {parent!r} is abstract (a template for extends): it has no image to "
                              "bake on")
        layers.append(parent)
        parent = source_recipe(recipes_dir, parent)


def _chain(recipes_dir: Path, name: str) -> list[tuple[Path, RecipeDoc, LineMap]]:
    """The recipe's files through `extends`, each validated as written; parents first."""
    chain: list[tuple[Path, RecipeDoc, LineMap]] = []
    seen: list[str] = []
    current: str | None = name
    while current is not None:
        if current in seen:
            raise ConfigError(f"{recipe_path(recipes_dir, seen[-1])}: extends cycle: "
                              f"{' -> '.join(seen + [current])}")
        seen.append(current)
        path = recipe_path(recipes_dir, current)
        data, lines = load_yaml(path)
        doc = validate(RecipeDoc, data, lines, str(path))
        _refuse_unrendered(data, (), lines, path)
        chain.append((path, doc, lines))
        current = doc.extends
    return chain[::-1]


def _step_origin(recipe: Recipe, chain, index: int) -> tuple[Path, LineMap, int]:
    """Which file (and which index there) the merged step `index` came from."""
    for path, doc, lines in chain:
        if index < len(doc.steps):
            return path, lines, index
        index -= len(doc.steps)
    raise IndexError(index)


def _check_steps(recipe: Recipe, chain) -> None:
    names: set[str] = set()
    for i, step in enumerate(recipe.steps):
        path, lines, j = _step_origin(recipe, chain, i)
        line = lines.line_for(("steps", j))
        where = f"{path}:{line}"
        if step.name in names:
            raise ConfigError(f"{where}: steps[{j}].name: duplicate step name {step.name!r}")
        names.add(step.name)
        rel = step.script if step.script is not None else step.upload.source if step.upload else None
        if rel is None:
            continue
        field = "script" if step.script is not None else "upload.source"
        where = f"{path}:{lines.line_for(('steps', j, *field.split('.')))}"
        if PurePosixPath(rel).is_absolute():
            raise ConfigError(f"{where}: steps[{j}].{field}: {rel!r} must be relative to {recipe.root}")
        local = recipe.local_path(rel)
        if not local.is_relative_to(recipe.root):
            raise ConfigError(f"{where}: steps[{j}].{field}: {rel!r} points outside {recipe.root}")
        if not local.exists():
            raise ConfigError(f"{where}: steps[{j}].{field}: {rel!r} does not exist ({local})")
        if step.script is not None and not local.is_file():
            raise ConfigError(f"{where}: steps[{j}].{field}: {rel!r} is not a file")
        if not (local.is_file() or local.is_dir()):  # reading a FIFO would wait for a writer forever
            raise ConfigError(f"{where}: steps[{j}].{field}: {rel!r} is not a regular file or a directory "
                              "(a FIFO, socket or device cannot be uploaded)")
        if step.upload is not None and step.upload.dir_mode is not None and not local.is_dir():
            where = f"{path}:{lines.line_for(('steps', j, 'upload', 'dir_mode'))}"
            raise ConfigError(f"{where}: steps[{j}].upload.dir_mode: {rel!r} is a file, not a directory "
                              f"(mode sets a file's mode)")


def template_context(recipe: Recipe, variables: dict[str, str], build_id: str, timestamp: str) -> dict[str, str]:
    return {**variables, "recipe": recipe.name, "build_id": build_id, "timestamp": timestamp}


def render_step(recipe: Recipe, step: Step, index: int, context: dict[str, str]) -> Step:
    """The step with variables substituted into its shell text, env values and upload dest."""
    from bakery.config.templating import render_text

    where = f"{recipe.path}: steps[{index}] ({step.name})"
    update: dict = {"env": {k: render_text(v, context, f"{where}.env.{k}") for k, v in step.env.items()}}
    if step.shell is not None:
        update["shell"] = render_text(step.shell, context, f"{where}.shell")
    if step.upload is not None:
        update["upload"] = step.upload.model_copy(
            update={"dest": render_text(step.upload.dest, context, f"{where}.upload.dest")})
    return step.model_copy(update=update)


def render_image(recipe: Recipe, context: dict[str, str]) -> tuple[str, str, dict[str, str]]:
    """The image's name, description and tags (values rendered; keys are not templates)."""
    from bakery.config.templating import image_name, render_text

    where = f"{recipe.path}: image"
    name = image_name(recipe.image.name, context, f"{where}.name")
    description = render_text(recipe.image.description or recipe.description, context, f"{where}.description")
    if len(description) > 255:
        raise ConfigError(f"{where}.description: renders to {len(description)} characters (EC2 allows 255)")
    tags = {}
    for key, value in recipe.image.tags.items():
        tags[key] = render_text(value, context, f"{where}.tags.{key}")
        if len(tags[key]) > 256:
            raise ConfigError(f"{where}.tags.{key}: renders to {len(tags[key])} characters (EC2 allows 256)")
    return name, description, tags


def render_check(recipe: Recipe, check: Check, index: int, context: dict[str, str]) -> Check:
    """A smoke check with variables substituted into its shell text, as a step's."""
    from bakery.config.templating import render_text

    where = f"{recipe.path}: checks.commands[{index}] ({check.name}).shell"
    return check.model_copy(update={"shell": render_text(check.shell, context, where)})


# The fields whose text is a jinja template (README "Recipes"); an int in a path stands for any
# list index, "*" for any mapping key.
TEMPLATED = {("image", "name"), ("image", "description"), ("image", "tags", "*"), ("steps", int, "shell"),
             ("steps", int, "env", "*"), ("steps", int, "upload", "dest"), ("checks", "commands", int, "shell")}
JINJA_MARK = re.compile(r"\{\{|\{%")


def _templated(path: tuple) -> bool:
    shape = tuple(int if isinstance(p, int) else p for p in path)
    return shape in TEMPLATED or shape[:-1] + ("*",) in TEMPLATED


def _refuse_unrendered(data, path: tuple, lines: LineMap, file: Path) -> None:
    """A jinja expression in a field that is never rendered would reach the image as written
    (a tag reading `{{ release }}`): refused where it is written."""
    from bakery.config.yamlfile import format_path

    def refuse(where: tuple, what: str) -> None:
        raise ConfigError(f"{file}:{lines.line_for(where)}: {format_path(where)}: {what} is not rendered as a "
                          "template (only image.name, image.description, image.tags values, steps[].shell, "
                          "steps[].env values, steps[].upload.dest and checks.commands[].shell are)")

    if isinstance(data, dict):
        for key, value in data.items():
            if JINJA_MARK.search(key):
                refuse(path + (key,), "a jinja expression in a key")
            _refuse_unrendered(value, path + (key,), lines, file)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _refuse_unrendered(value, path + (i,), lines, file)
    elif isinstance(data, str) and JINJA_MARK.search(data) and not _templated(path):
        refuse(path, "a jinja expression here")


def _check_templates(recipe: Recipe, chain) -> None:
    """Render every template once with the defaults (or placeholders) to prove it renders."""
    from bakery.config.templating import BUILTINS

    for key in recipe.variables:
        if key in BUILTINS:
            raise ConfigError(f"{recipe.path}: variables.{key}: name is reserved ({', '.join(BUILTINS)})")
    render_templates(recipe, {k: v.default if v.default is not None else "x" for k, v in recipe.variables.items()})


def render_templates(recipe: Recipe, variables: dict[str, str]) -> None:
    """Render the recipe's templates with these variables and a sample build id and time, to
    refuse before the cloud opens what they render to (an image name EC2 would refuse)."""
    context = template_context(recipe, variables, "b-20000101000000-000000", "20000101000000")
    render_image(recipe, context)
    for i, step in enumerate(recipe.steps):
        render_step(recipe, step, i, context)
    for i, check in enumerate(recipe.checks.commands if recipe.checks else []):
        render_check(recipe, check, i, context)
