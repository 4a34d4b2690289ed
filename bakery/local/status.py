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
                       "recipe": ec2.get("tags", {}).get("bakery:recipe", ""),
                       "deregistered": bool(ec2.get("deregistered")), "created": record.get("created")})
    return {"data_dir": str(data_dir), "endpoint": cloud.endpoint.running_url(), "instances": instances,
            "images": images}


def render_status(info: dict) -> str:
    lines = [f"endpoint:  {info['endpoint'] or 'not running (starts on demand, or: invoke local.up)'}",
             f"data dir:  {info['data_dir']}", f"instances: {len(info['instances'])}"]
    lines += [f"  {i['instance_id']}  {'running' if i['running'] else 'stopped'}" for i in info["instances"]]
    lines.append(f"images:    {len(info['images'])}")
    for image in info["images"]:
        size = f"{image['size'] / 1048576:.1f} MiB" if image.get("size") else "base rootfs"
        flag = "  (deregistered, kept for images built on it)" if image["deregistered"] else ""
        lines.append(f"  {image['ami_id']}  {image['name']}  {size}{flag}")
    return "\n".join(lines)
