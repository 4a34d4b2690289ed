"""EC2's per-type interface limits and each region's zones, as vendored in data/ec2.json
(scripts/vendor_ec2_data.py writes it from the data moto ships). A type or region the data does
not know is not refused: AWS adds both faster than any copy is refreshed."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import NamedTuple


class InterfaceLimits(NamedTuple):
    interfaces: int         # MaximumNetworkInterfaces
    ipv4_per_interface: int  # Ipv4AddressesPerInterface, the primary included


@cache
def _data() -> dict:
    return json.loads((resources.files("bakery.config") / "data" / "ec2.json").read_text())


def interface_limits(instance_type: str) -> InterfaceLimits | None:
    limits = _data()["instance_types"].get(instance_type)
    return InterfaceLimits(*limits) if limits else None


def zones(region: str) -> list[str] | None:
    return _data()["zones"].get(region)
