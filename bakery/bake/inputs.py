"""A recipe's inputs: everything that determines its image, and the hash a skip looks for.

A finished image tagged with the same inputs hash (bakery:inputs-hash) means nothing changed, and
the bake is skipped without launching anything. The hash covers the recipe as resolved (extends
applied, defaults filled), the variables, the source AMI, the bytes of every script, everything
every upload carries (each file, directory and symlink with the mode it lands with, empty
directories included) and the version of what bakery itself runs on the builder (IMAGE_FORMAT).

Deciding a skip needs no recipe models: `Inputs` is the recipe as plain data, and `load_inputs`
remembers it per recipe (in STATE/inputs/) for as long as none of the files that validated it
changed (the recipe files of its extends chain, the files its steps name, and bakery's own
config code), by the same stat rules as the file digests. An unchanged `invoke bake` thus skips
pydantic, jinja and YAML entirely; any change, or a first run, validates the recipe in full.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakery.bake.digests import RACY_SECONDS, DigestCache
from bakery.config.patterns import NAME_RE
from bakery.errors import ConfigError
from bakery.render.upload import entries

if TYPE_CHECKING:
    from bakery.config.recipe import Recipe

FORMAT = 1  # of the remembered inputs (STATE/inputs/)
# What bakery itself does to every image on the builder: how an upload lands
# (bakery/render/upload.py), the builder's user data, hygiene and the leftover check. It is in
# every hash through this number, so a release that changes any of them rebakes what a fresh bake
# would now make differently; tests/test_recipe.py pins their text to it, and fails until it goes up.
IMAGE_FORMAT = 3  # 3: hygiene forgets the builder's hostname
# The code whose behaviour a remembered validation depends on: the models and this module.
_CODE = [*sorted((Path(__file__).parent.parent / "config").glob("*.py")), Path(__file__)]


@dataclass(frozen=True)
class Inputs:
    name: str
    path: str                          # the recipe's own file, for messages
    recipes_dir: str
    body: dict                         # the resolved recipe as JSON: what the hash covers
    declared: dict[str, str | None]    # variable -> default (None: must be given)
    local_files: list[str]             # scripts and upload sources, relative to recipes_dir
    source: dict                       # recipe.source as JSON (bakery.cloud.images.resolve_source)
    recipe: Any = field(default=None, compare=False, repr=False)  # the Recipe, when it was loaded

    @classmethod
    def of(cls, recipe: "Recipe") -> "Inputs":
        rels = [s.script if s.script is not None else s.upload.source for s in recipe.steps
                if s.script is not None or s.upload is not None]
        return cls(name=recipe.name, path=str(recipe.path), recipes_dir=str(recipe.root),
                   body=_unset_later_fields(recipe.model_dump(mode="json", exclude=NOT_INPUTS)),
                   declared={k: v.default for k, v in recipe.variables.items()}, local_files=rels,
                   source=recipe.source.model_dump(mode="json"), recipe=recipe)

    def resolve_vars(self, given: dict[str, str]) -> dict[str, str]:
        from bakery.config.variables import resolve_variables

        return resolve_variables(self.declared, given, self.path, self.name)

    def full(self) -> "Recipe":
        """The recipe's models, loaded (and validated) on first use if this came from the cache,
        then kept: a bake asks for them at its checks, its sharing check and its build."""
        if self.recipe is None:
            from bakery.config.recipe import load_recipe

            object.__setattr__(self, "recipe", load_recipe(Path(self.recipes_dir), self.name))  # frozen: a cache
        return self.recipe


def load_inputs(recipes_dir: Path, state_dir: Path, name: str) -> Inputs:
    """The recipe's inputs: remembered when nothing that validated them changed, else loaded in full."""
    store = state_dir / "inputs" / f"{name}.json"
    remembered = _remembered(store, recipes_dir.resolve()) if re.fullmatch(NAME_RE, name) else None
    if remembered is not None:
        return remembered
    from bakery.config.recipe import load_recipe

    started = time.time()  # an edit while the recipe is being read must not be trusted later
    recipe = load_recipe(recipes_dir, name)
    inputs = Inputs.of(recipe)
    named = [recipe.root / rel for rel in inputs.local_files]  # as named (a symlink) and what they resolve to
    _remember(store, inputs, [*recipe.files, *named, *(p.resolve() for p in named), *_CODE], started)
    return inputs


def _stamp(path: Path) -> list[int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _remembered(store: Path, recipes_dir: Path) -> Inputs | None:
    try:
        data = json.loads(store.read_text())
    except (OSError, ValueError):
        return None
    if data.get("format") != FORMAT or data.get("inputs", {}).get("recipes_dir") != str(recipes_dir):
        return None
    for path, stamp in data["stamps"].items():
        # unchanged, and old enough that a change in the same clock tick cannot hide (digests.py)
        if _stamp(Path(path)) != stamp or data["written"] - stamp[4] / 1e9 <= RACY_SECONDS:
            return None
    return Inputs(**data["inputs"])


def _remember(store: Path, inputs: Inputs, files: list[Path], validated_at: float) -> None:
    record = {"format": FORMAT, "written": validated_at, "stamps": {str(f): _stamp(f) for f in files},
              "inputs": {k: v for k, v in asdict(inputs).items() if k != "recipe"}}
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, sort_keys=True))
        tmp.replace(store)
    except OSError:
        pass  # remembering is an optimisation: a read-only state dir just validates every time


#: what a recipe says that does not make the image: where it was read from, and policies about
#: its images (a new freshness policy must not rebake every image; the vulnerability gate's policy
#: decides whether a new image is published, against a feed that changes daily with no input
#: changing: renewing a waiver's expiry must not rebake an unchanged image either)
NOT_INPUTS = {"path", "files", "root", "freshness", "vulnerabilities"}
#: recipe fields added after images were baked and tagged with their hash, with the value that
#: means "not used": left out of the hash while they have it (as before they existed), so unchanged
#: recipes keep finding their images. "*": every item of a list.
LATER_FIELDS = ((("builder", "root_volume", "iops"), None), (("builder", "root_volume", "throughput"), None),
                (("source", "recipe"), None), (("steps", "*", "reboot"), None), (("steps", "*", "download"), None),
                (("steps", "*", "expect_disconnect"), False))
#: fields inside a section that say how an image is made, not what it holds: never in the hash
NOT_INPUT_FIELDS = (("builder", "market"), ("builder", "host_key"), ("steps", "*", "checkpoint"))


def _holders(body, parents: tuple) -> list[dict]:
    """The dicts at `parents` in `body` ("*": each item of a list)."""
    found = [body]
    for key in parents:
        found = [item for holder in found
                 for item in ((holder if isinstance(holder, list) else []) if key == "*"
                              else [holder.get(key)] if isinstance(holder, dict) else [])]
    return [h for h in found if isinstance(h, dict)]


def _unset_later_fields(body: dict) -> dict:
    for *parents, name in NOT_INPUT_FIELDS:
        for holder in _holders(body, tuple(parents)):
            holder.pop(name, None)
    for (*parents, name), unset in LATER_FIELDS:
        for holder in _holders(body, tuple(parents)):
            if name in holder and holder[name] == unset and type(holder[name]) is type(unset):
                del holder[name]
    return body


class _Hasher:
    """sha256 over labelled, length-prefixed parts: no two different sequences of parts collide."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()

    def feed(self, label: str, data: bytes) -> None:
        self.h.update(label.encode() + b"\0" + len(data).to_bytes(8, "big") + data)

    def hexdigest(self) -> str:
        return self.h.hexdigest()[:32]


def _feed_step(feed, inputs: Inputs, index: int, step: dict, digests: DigestCache) -> None:
    """What one step's local files carry: a script's bytes, or every entry an upload lands."""
    root = Path(inputs.recipes_dir)
    rel = step["script"] if step.get("script") is not None else (step.get("upload") or {}).get("source")
    if rel is None:
        return
    local = (root / rel).resolve()
    if not local.is_relative_to(root):  # re-pointed since it was validated
        raise ConfigError(f"{inputs.path}: {rel!r} points outside {root}")
    if step.get("script") is not None:  # read as text and run: its bytes are what matters
        feed("script", digests.sha256(local))
        return
    up = step["upload"]
    # exactly what the upload carries (bakery/render/upload.py): every entry, with the mode it lands with
    for entry in entries(local, up["mode"], up.get("dir_mode"), f"{inputs.path}: steps[{index}].upload.source"):
        feed("entry", json.dumps([entry.name, entry.kind, entry.mode, entry.target]).encode())
        if entry.kind == "file":
            feed("content", digests.sha256(entry.source))


def inputs_hash(inputs: Inputs, variables: dict[str, str], source_ami: str, digests: DigestCache | None = None) -> str:
    """Hash of everything that determines the image: a matching tag means nothing changed.

    `digests` spares re-reading files that have not changed."""
    digests = digests or DigestCache(None)
    h = _Hasher()
    h.feed("image-format", str(IMAGE_FORMAT).encode())
    h.feed("recipe", json.dumps(inputs.body, sort_keys=True).encode())
    h.feed("variables", json.dumps(variables, sort_keys=True).encode())
    h.feed("source", source_ami.encode())
    for index, step in enumerate(inputs.body["steps"]):
        _feed_step(h.feed, inputs, index, step, digests)
    digests.save()
    return h.hexdigest()


#: what a builder is, before its first step: the recipe without its steps and without what only
#: says what happens after the last one (the image's name and tags, publishing, the smoke test)
AFTER_THE_STEPS = {"steps", "image", "publish", "checks", "description"}


def prefix_hashes(inputs: Inputs, variables: dict[str, str], source_ami: str,
                  digests: DigestCache | None = None) -> list[str]:
    """One hash per step: of everything the builder holds once that step has run (the source
    image, the builder's settings, the variables, bakery's own IMAGE_FORMAT, and that step and
    every step before it with their files). A checkpoint taken after step N is tagged with the
    Nth; a bake whose Nth hash matches may resume from it (bakery/bake/checkpoints.py)."""
    digests = digests or DigestCache(None)
    h = _Hasher()
    h.feed("image-format", str(IMAGE_FORMAT).encode())
    h.feed("builder", json.dumps({k: v for k, v in inputs.body.items() if k not in AFTER_THE_STEPS},
                                 sort_keys=True).encode())
    h.feed("variables", json.dumps(variables, sort_keys=True).encode())
    h.feed("source", source_ami.encode())
    hashes = []
    for index, step in enumerate(inputs.body["steps"]):
        h.feed("step", json.dumps(step, sort_keys=True).encode())
        _feed_step(h.feed, inputs, index, step, digests)
        hashes.append(h.h.copy().hexdigest()[:32])
    digests.save()
    return hashes
