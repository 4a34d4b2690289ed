"""`invoke images`: what has been baked, newest first."""

from __future__ import annotations

from bakery.cloud.ec2 import EC2, tags_of
from bakery.config.settings import Settings


def image_rows(settings: Settings, recipe: str | None) -> list[dict]:
    rows = []
    for image in EC2(settings).bakery_images(recipe=recipe, states=()):
        tags = tags_of(image)
        rows.append({"ami_id": image["ImageId"], "name": image.get("Name", ""),
                     "recipe": tags.get("bakery:recipe", ""), "inputs_hash": tags.get("bakery:inputs-hash", ""),
                     "build_id": tags.get("bakery:build-id", ""), "created": image.get("CreationDate", ""),
                     "state": image.get("State", "")})
    return rows


def render_table(rows: list[dict]) -> str:
    if not rows:
        return "no baked images"
    cols = ["ami_id", "recipe", "name", "inputs_hash", "created", "state"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)
