#!/usr/bin/env python3
"""Write bakery/config/data/ec2.json: EC2's per-instance-type interface limits and each region's
availability zones, taken from the data moto ships (DescribeInstanceTypes and
DescribeInstanceTypeOfferings answers recorded from AWS).

bakery reads the vendored copy so that `validate` can apply EC2's limits offline without importing
moto's EC2 models (seconds) or depending on where moto keeps its files. Rerun after upgrading moto:
    .venv/bin/python scripts/vendor_ec2_data.py
"""

from __future__ import annotations

import gzip
import json
from importlib import metadata, resources
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "bakery" / "config" / "data" / "ec2.json"


def main() -> None:
    root = resources.files("moto.ec2") / "resources"
    types = json.loads(gzip.decompress((root / "instance_types.json.gz").read_bytes()))
    limits = {name: [t["NetworkInfo"]["MaximumNetworkInterfaces"], t["NetworkInfo"]["Ipv4AddressesPerInterface"]]
              for name, t in sorted(types.items()) if "NetworkInfo" in t}
    zones = {}
    for entry in sorted((root / "instance_type_offerings" / "availability-zone").iterdir(), key=lambda p: p.name):
        region = entry.name.removesuffix(".json.gz")
        zones[region] = sorted({o["Location"] for o in json.loads(gzip.decompress(entry.read_bytes()))})
    OUT.write_text(json.dumps({
        "source": f"moto {metadata.version('moto')}: ec2/resources (instance_types, instance_type_offerings)",
        "interfaces": "instance type -> [MaximumNetworkInterfaces, Ipv4AddressesPerInterface]",
        "instance_types": limits, "zones": zones}, separators=(",", ":"), sort_keys=False) + "\n")
    print(f"{OUT}: {len(limits)} instance types, {len(zones)} regions")


if __name__ == "__main__":
    main()
