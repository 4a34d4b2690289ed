"""`invoke local.status`: what the local cloud is running and holds."""

from __future__ import annotations

from pathlib import Path

from bakery.local.cloud import LocalCloud


def status(data_dir: Path) -> dict:
    cloud = LocalCloud(data_dir)
    instances = [{"instance_id": box.name, "running": box.is_running(), "dir": str(box.dir)}
                 for box in cloud.sandboxes()]
    images = []
    for record in cloud.layers.list():
        ec2 = (record.get("meta") or {}).get("ec2") or {}
        images.append({"ami_id": record["id"], "name": ec2.get("name", ""), "kind": record.get("kind"),
                       "parent": record.get("parent"), "size": record.get("size"),
                       "tags": ec2.get("tags", {}),
                       "deregistered": bool(ec2.get("deregistered")), "created": record.get("created")})
    return {"data_dir": str(data_dir), "endpoint": cloud.endpoint.running_url(), "instances": instances,
            "images": images}
