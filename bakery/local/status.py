"""`invoke local.status`: what the local cloud is running and holds."""

from __future__ import annotations

from pathlib import Path

from bakery.local.cloud import LocalCloud
from bakery.local.internet import INTERNET_HOST


def status(data_dir: Path) -> dict:
    """The endpoint's URL, the internet namespace (where public addresses answer), every instance
    (from the running endpoint: its EC2 state, addresses, namespace and init's host PID; else the
    machines on disk) and every image in the layer store."""
    cloud = LocalCloud(data_dir)
    url = cloud.endpoint.running_url()
    instances = _from_endpoint(url) if url else None
    if instances is None:
        instances = [{"instance_id": box.name, "state": None, **cloud.machine_info(box.name)}
                     for box in cloud.sandboxes()]
    images = []
    for record in cloud.layers.list():
        ec2 = (record.get("meta") or {}).get("ec2") or {}
        images.append({"ami_id": record["id"], "name": ec2.get("name", ""), "kind": record.get("kind"),
                       "parent": record.get("parent"), "size": record.get("size"),
                       "tags": ec2.get("tags", {}),
                       "deregistered": bool(ec2.get("deregistered")), "created": record.get("created")})
    internet = {"netns": cloud.internet.netns if cloud.internet.exists() else None, "host": INTERNET_HOST}
    return {"data_dir": str(data_dir), "endpoint_url": url, "internet": internet, "instances": instances,
            "images": images}


def _from_endpoint(url: str) -> list[dict] | None:
    import json
    import urllib.request

    from bakery.local.endpoint import STATUS_PATH

    try:
        with urllib.request.urlopen(f"{url}{STATUS_PATH}", timeout=10) as resp:
            return json.loads(resp.read())["instances"]
    except (OSError, ValueError, KeyError):
        return None
