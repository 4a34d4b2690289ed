"""`invoke images`: what has been baked, newest first."""

from __future__ import annotations

from bakery.cloud import tags as T
from bakery.cloud.connect import open_cloud
from bakery.config.settings import Settings


def image_rows(settings: Settings, recipe: str | None) -> list[dict]:
    rows = []
    for image in open_cloud(settings).ec2.bakery_images(recipe=recipe, states=()):
        tags = T.tags_of(image)
        rows.append({"ami_id": image["ImageId"], "name": image.get("Name", ""),
                     "recipe": tags.get(T.RECIPE, ""), "inputs_hash": tags.get(T.INPUTS_HASH, ""),
                     "build_id": tags.get(T.BUILD_ID, ""), "created": image.get("CreationDate", ""),
                     "state": image.get("State", "")})
    return rows
