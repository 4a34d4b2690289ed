"""What a launch decided and did: a plan per tier, a line per instance."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class TierPlan:
    tier: str
    strategy: str
    image_id: str
    image_name: str
    recipe: str | None
    instance_type: str
    count: int
    existing: list[str]
    missing_slots: list[str]
    subnets: list[str]
    vpc_id: str
    security_groups: list[str]
    user_data_size: int
    user_data_raw_size: int
    user_data_gzipped: bool
    user_data_sha256: str
    root_device_name: str = "/dev/xvda"
    user_data: bytes = field(default=b"", repr=False)
    interfaces: list = field(default_factory=list, repr=False)  # network.ResolvedInterface, when declared
    health_check: dict | None = None
    stopped: list[str] = field(default_factory=list)  # of `existing`: those not running (they keep their slot)
    group: str | None = None  # the tier's Auto Scaling group (launch/group.py), which fills no slots itself

    def in_place(self) -> str:
        """Like "2 in place" or "2 in place, 2 stopped": a stopped instance fills its slot, as on EC2."""
        if self.group:
            return f"group {self.group}, {len(self.existing)} in place"
        return f"{len(self.existing)} in place" + (f", {len(self.stopped)} stopped" if self.stopped else "")
    # per slot (each instance's own instance_index): (user data payload, its sha256)
    slot_user_data: dict[str, tuple[bytes, str]] = field(default_factory=dict, repr=False)

    def user_data_for(self, slot: str) -> tuple[bytes, str]:
        """What the instance in `slot` is sent, and its sha256 (the first slot's when not planned)."""
        return self.slot_user_data.get(slot, (self.user_data, self.user_data_sha256))


@dataclass
class InstanceReport:
    tier: str
    slot: str
    instance_id: str
    private_ip: str | None
    public_ip: str | None
    image_id: str
    running_s: float | None = None
    ready_s: float | None = None
    health: str = "not checked"


@dataclass
class LaunchReport:
    environment: str
    launch_id: str
    region: str
    dry_run: bool
    plans: list[TierPlan]
    instances: list[InstanceReport] = field(default_factory=list)
    launch_templates: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    network: list[str] = field(default_factory=list)
    reach: str | None = None  # a shell command that reaches a healthy instance from this machine

    def to_json(self) -> str:
        data = asdict(self, dict_factory=lambda items: {k: v for k, v in items
                                                        if k not in ("user_data", "interfaces", "slot_user_data")})
        return json.dumps(data, indent=2, sort_keys=True)
