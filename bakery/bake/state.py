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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: a skipped bake never loads the recipe models
    from bakery.cloud.images import SourceImage
    from bakery.config.recipe import Recipe


@dataclass
class StepRecord:
    name: str
    kind: str
    status: str  # ok | failed | continued
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
    ssm_parameter: str | None = None
    published: dict | None = None
    manifest_path: str | None = None

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
    # ---- written by the steps, in pipeline order
    login: Any = None                # CreateKeyPair: the login KeyPair (bakery.remote.keys)
    key_file: Path | None = None     # CreateKeyPair: its private half on disk (0600, for ssh -i)
    key_name: str | None = None      # CreateKeyPair: the EC2 key pair
    subnet: dict | None = None       # CreateSecurityGroup: where the builder (and smoke instance) run
    group_id: str | None = None      # CreateSecurityGroup: SSH from the caller only
    caller_cidr: str | None = None   # CreateSecurityGroup
    builder: dict | None = None      # LaunchBuilder, then WaitForBuilder: the builder's instance record
    builder_host_key: Any = None     # LaunchBuilder: the host key pinned through its user data
    connector: Any = None            # ConnectSSH: the open SSH connection (bakery.remote.connector)
    image_id: str | None = None      # CreateImage
    image_name: str | None = None    # CreateImage
    image_tags: dict[str, str] = field(default_factory=dict)  # CreateImage: also on snapshots and copies
    image: dict | None = None        # WaitForImage: the available image's record
