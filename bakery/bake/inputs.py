"""The inputs hash: everything that determines a recipe's image, in 32 hex digits.

A finished image tagged with the same hash (bakery:inputs-hash) means nothing changed, and the
bake is skipped without launching anything: the recipe as resolved, the variables, the source
AMI, and the bytes, modes and links of every script and upload.
"""

from __future__ import annotations

import hashlib
import json

from bakery.bake.digests import DigestCache
from bakery.config.recipe import Recipe


def inputs_hash(recipe: Recipe, variables: dict[str, str], source_ami: str, digests=None) -> str:
    """Hash of everything that determines the image: a matching tag means nothing changed.

    `digests` (a bakery.bake.digests.DigestCache) spares re-reading files that have not changed."""
    digests = digests or DigestCache(None)
    h = hashlib.sha256()

    def feed(label: str, data: bytes) -> None:
        h.update(label.encode() + b"\0" + len(data).to_bytes(8, "big") + data)

    body = recipe.model_dump(mode="json", exclude={"path", "files", "root"})
    feed("recipe", json.dumps(body, sort_keys=True).encode())
    feed("variables", json.dumps(variables, sort_keys=True).encode())
    feed("source", source_ami.encode())
    for step in recipe.steps:
        rel = step.script if step.script is not None else step.upload.source if step.upload else None
        if rel is None:
            continue
        local = recipe.local_path(rel)
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file() or p.is_symlink())
        for f in files:
            feed("path", str(f.relative_to(recipe.root)).encode())
            feed("mode", oct(f.lstat().st_mode).encode())
            if f.is_symlink():
                feed("link", str(f.readlink()).encode())
            else:
                feed("content", digests.sha256(f))
    digests.save()
    return h.hexdigest()[:32]
