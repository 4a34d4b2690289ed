"""What a bake's steps hand each other, and what a bake reports.

`BakeState` is typed, not a bag of keys: its first fields are known before any step runs (the
recipe, its variables, the source image, the inputs hash); the rest are written by one step each,
in the order of the pipeline (bakery/bake/pipeline.py), and read by later steps; each field says
which step writes it. A step test builds a state with just what that step reads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # annotations only: a skipped bake loads neither the recipe models nor the steps' services
    from bakery.cloud.ec2 import EC2
    from bakery.cloud.images import SourceImage
    from bakery.config.recipe import Recipe
    from bakery.config.settings import Settings
    from bakery.evidence.sbom import Sbom
    from bakery.housekeeping.stack import CleanupStack
    from bakery.progress import Reporter
    from bakery.remote.connector import Connector
    from bakery.remote.dial import Dial
    from bakery.remote.keys import HostKey, KeyPair


@dataclass
class StepRecord:
    name: str
    kind: str
    status: str  # ok | failed | continued | cached (in the checkpoint the bake resumed from)
    exit_status: int | None
    attempts: int
    seconds: float


@dataclass
class Manifest:
    recipe: str
    build_id: str
    region: str
    ami_id: str | None
    image_name: str | None
    source_ami: str
    inputs_hash: str
    skipped: bool
    reason: str
    started_at: str
    seconds: float
    variables: dict[str, str]
    steps: list[StepRecord] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    # every stage in order: {name, kind (stage | step), start (epoch s), seconds, waited, ok}: `invoke report`
    timeline: list[dict] = field(default_factory=list)
    builder: dict | None = None      # what the builder ran as: {"instance_type", "market" (spot | on-demand)}
    downloads: list[str] = field(default_factory=list)  # what download steps copied here (RECIPE-BUILD.files/)
    resumed_from: dict | None = None  # {"image", "after_step"}: the checkpoint whose steps this bake did not run
    checkpoints: list[dict] = field(default_factory=list)  # {"image", "after_step"}: the checkpoints it kept
    ssm_parameter: str | None = None
    published: dict | None = None
    manifest_path: str | None = None
    sbom: str | None = None          # the image's CycloneDX SBOM, beside this manifest
    sbom_sha256: str | None = None   # its digest (sha256:HEX), also the image's bakery:sbom tag
    vulnerabilities: dict | None = None  # GateImage: findings, counts, waivers (evidence/gate.py)
    provenance: str | None = None        # SignProvenance: sha256 of the signed statement (bakery:provenance)
    error: str | None = None             # a failed bake's reason (its manifest is kept, for `invoke report`)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.recipe}-{self.build_id}.json"
        self.manifest_path = str(path)
        path.write_text(self.to_json() + "\n")


@dataclass
class BakeState:
    # ---- known before the first step
    recipe: Recipe
    variables: dict[str, str]
    build_id: str
    context: dict[str, str]          # what recipe templates see: variables, recipe, build_id, timestamp
    source: SourceImage
    manifest: Manifest
    checkpoints: bool = False        # `bake` keeps checkpoints (never `rebake`, nor `bake --no-cache`)
    prefixes: list[str] = field(default_factory=list)  # per step: the checkpoint it would make (inputs.prefix_hashes)
    # ---- written by the steps, in pipeline order
    launch_from: SourceImage | None = None  # the image the next builder starts from (None: the source);
                                            # the bake's resume point, then each Checkpoint's image
    since: int = 0                   # Checkpoint: the first step the builder's image does not hold
    login: KeyPair | None = None     # CreateKeyPair: the login key
    key_file: Path | None = None     # CreateKeyPair: its private half on disk (0600, for ssh -i)
    key_name: str | None = None      # CreateKeyPair: the EC2 key pair
    subnet: dict | None = None       # CreateSecurityGroup: where the builder (and smoke instance) run
    group_id: str | None = None      # CreateSecurityGroup: SSH from the caller only
    caller_cidr: str | None = None   # CreateSecurityGroup
    builder: dict | None = None      # LaunchBuilder, then WaitForBuilder: the builder's instance record
    builder_host_key: KeyPair | HostKey | None = None  # LaunchBuilder (user data) or ReadHostKey (console)
    connector: Connector | None = None       # ConnectSSH: the open SSH connection
    sbom: Sbom | None = None         # CollectSbom: what the image contains (its file: manifest.sbom)
    image_id: str | None = None      # CreateImage
    image_name: str | None = None    # CreateImage
    image_tags: dict[str, str] = field(default_factory=dict)  # CreateImage: also on snapshots and copies
    image: dict | None = None        # WaitForImage: the available image's record


@dataclass
class Context:
    """The services a step uses (the state is what steps hand each other)."""

    settings: Settings
    ec2: EC2
    dial: Dial
    report: Reporter
    stack: CleanupStack


class Step(Protocol):
    title: str | None  # its stage line; None when the step reports its own stages

    def run(self, state: BakeState, ctx: Context) -> str | None:
        """Do the step (registering the undo of what it creates); the stage line's detail."""


def run_steps(steps: list[Step], state: BakeState, ctx: Context) -> None:
    """Run steps in order, each under its stage line (a step with no title reports its own)."""
    for step in steps:
        if step.title is None:
            step.run(state, ctx)
            continue
        with ctx.report.stage(step.title) as stage:
            stage.detail = step.run(state, ctx) or ""
