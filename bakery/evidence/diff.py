"""What changed between two images of a recipe (issue 16 item 3): `invoke diff`, and the rebake's
job summary for every recipe it rebaked.

Each image's SBOM is found beside the manifests (settings.manifests) by the image's recipe and
build id tags, and trusted only when its sha256 is the one the image was tagged with at bake time
(bakery/cloud/tags.py SBOM). Then, by name: dpkg packages added, removed, upgraded and downgraded
in Debian's own version order (python-debian: epochs, tildes and revisions exactly as dpkg
compares them, never as strings); Python distributions likewise, per directory, in PEP 440's
order; uploaded files added, removed and changed (content, mode or owner).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from bakery.cloud import tags as T
from bakery.config.patterns import AMI_RE
from bakery.config.recipe import recipe_path
from bakery.config.settings import Settings
from bakery.errors import BakeryError, ConfigError
from bakery.evidence.sbom import Sbom, UploadedFile, read_sbom, sbom_path
from bakery.evidence.sbom import digest as digest_of


@dataclass(frozen=True)
class Image:
    """One side of a diff."""

    ami_id: str
    build_id: str
    name: str
    created: str


@dataclass(frozen=True)
class VersionChange:
    name: str
    old: str | None          # None: added
    new: str | None          # None: removed
    location: str | None = None  # a Python distribution's directory


@dataclass
class VersionChanges:
    added: list[VersionChange] = field(default_factory=list)
    removed: list[VersionChange] = field(default_factory=list)
    upgraded: list[VersionChange] = field(default_factory=list)
    downgraded: list[VersionChange] = field(default_factory=list)

    def count(self) -> int:
        return len(self.added) + len(self.removed) + len(self.upgraded) + len(self.downgraded)


@dataclass(frozen=True)
class FileChange:
    path: str
    old: UploadedFile | None
    new: UploadedFile | None


@dataclass
class FileChanges:
    added: list[FileChange] = field(default_factory=list)
    removed: list[FileChange] = field(default_factory=list)
    changed: list[FileChange] = field(default_factory=list)

    def count(self) -> int:
        return len(self.added) + len(self.removed) + len(self.changed)


@dataclass
class ImageDiff:
    recipe: str
    old: Image
    new: Image
    packages: VersionChanges
    python: VersionChanges
    files: FileChanges
    totals: dict[str, list[int]]  # packages / python / files: [count in old, count in new]

    def empty(self) -> bool:
        return not (self.packages.count() or self.python.count() or self.files.count())


# ---- comparing two SBOMs -----------------------------------------------------------------------

def debian_order(old: str, new: str) -> int:
    """-1, 0 or 1 as dpkg --compare-versions orders them (1:1.0 > 2.0, 1.0~rc1 < 1.0)."""
    from debian.debian_support import Version

    a, b = Version(old), Version(new)
    return (a > b) - (a < b)


def python_order(old: str, new: str) -> int:
    """PEP 440's order; a version it cannot parse (legacy) is ordered as Debian orders versions,
    which orders any text of digits and letters sensibly, rather than guessed from the string."""
    from packaging.version import InvalidVersion, Version

    try:
        a, b = Version(old), Version(new)
    except InvalidVersion:
        return debian_order(old, new)
    return (a > b) - (a < b)


def compare_versions(old: dict[tuple, str], new: dict[tuple, str], order: Callable[[str, str], int],
                     name: Callable[[tuple], tuple[str, str | None]]) -> VersionChanges:
    """Versions keyed the same way on both sides; `name(key)` is (name, location) to show."""
    out = VersionChanges()
    for key in sorted(old.keys() | new.keys()):
        shown, where = name(key)
        before, after = old.get(key), new.get(key)
        if before is None:
            out.added.append(VersionChange(shown, None, after, where))
        elif after is None:
            out.removed.append(VersionChange(shown, before, None, where))
        elif before != after:
            step = order(before, after)
            if step < 0:
                out.upgraded.append(VersionChange(shown, before, after, where))
            elif step > 0:
                out.downgraded.append(VersionChange(shown, before, after, where))
            # 0: two spellings of one version (1.0 and 1.00 to dpkg): not a change
    return out


def _package_keys(sbom: Sbom) -> dict[tuple, str]:
    """A package by its name, as dpkg knows it; by name and architecture only where the image has
    it for two architectures (multiarch), so a package that moves from amd64 to all is upgraded,
    not removed and added."""
    count: dict[str, int] = {}
    for p in sbom.packages:
        count[p.name] = count.get(p.name, 0) + 1
    return {(p.name, p.arch if count[p.name] > 1 else ""): p.version for p in sbom.packages}


def compare(old: Sbom, new: Sbom) -> tuple[VersionChanges, VersionChanges, FileChanges]:
    packages = compare_versions(_package_keys(old), _package_keys(new), debian_order,
                                lambda key: (f"{key[0]}:{key[1]}" if key[1] else key[0], None))
    names = {p.key: p.name for p in [*old.python, *new.python]}
    python = compare_versions({(p.key, p.location): p.version for p in old.python},
                              {(p.key, p.location): p.version for p in new.python}, python_order,
                              lambda key: (names[key[0]], key[1]))
    files = FileChanges()
    before, after = {f.path: f for f in old.files}, {f.path: f for f in new.files}
    for path in sorted(before.keys() | after.keys()):
        a, b = before.get(path), after.get(path)
        if a is None:
            files.added.append(FileChange(path, None, b))
        elif b is None:
            files.removed.append(FileChange(path, a, None))
        elif a != b:
            files.changed.append(FileChange(path, a, b))
    return packages, python, files


def image_diff(recipe: str, old: tuple[Image, Sbom], new: tuple[Image, Sbom]) -> ImageDiff:
    packages, python, files = compare(old[1], new[1])
    totals = {"packages": [len(old[1].packages), len(new[1].packages)],
              "python": [len(old[1].python), len(new[1].python)], "files": [len(old[1].files), len(new[1].files)]}
    return ImageDiff(recipe, old[0], new[0], packages, python, files, totals)


# ---- finding the images and their SBOMs --------------------------------------------------------

def _image(record: dict) -> Image:
    tags = T.tags_of(record)
    return Image(record["ImageId"], tags.get(T.BUILD_ID, ""), record.get("Name", ""), record.get("CreationDate", ""))


def image_sbom(settings: Settings, record: dict, ec2=None) -> Sbom:
    """The SBOM of a baked image: beside the manifests, by its recipe and build id tags, else (with
    `ec2`) from the evidence store by the image id; trusted only with the digest it was tagged with."""
    tags, ami = T.tags_of(record), record["ImageId"]
    digest = tags.get(T.SBOM)
    if not digest:
        raise BakeryError(f"{ami} has no SBOM (no {T.SBOM} tag: baked before bakery collected SBOMs; "
                          f"`invoke bake --recipe {tags.get(T.RECIPE, 'NAME')} --force` bakes one that has)")
    path = sbom_path(settings.manifests, tags.get(T.RECIPE, ""), tags.get(T.BUILD_ID, ""))
    if not path.exists() and ec2 is not None:
        from bakery.evidence.store import EvidenceStore

        stored = EvidenceStore(ec2, settings.state / "evidence").find(ami, "sbom", digest.removeprefix("sha256:"))
        if stored is not None:
            return Sbom.from_cyclonedx(stored.decode(), f"{ami} SBOM")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BakeryError(f"{ami}: its SBOM {path} is not here (baked with another state_dir, or on another "
                          "machine)") from None
    except OSError as exc:
        raise BakeryError(f"{path}: cannot read the SBOM ({exc.strerror or exc})") from None
    if digest_of(data) != digest:
        raise BakeryError(f"{path}: sha256 {digest_of(data).removeprefix('sha256:')[:12]}... is not the "
                          f"{digest.removeprefix('sha256:')[:12]}... {ami} was tagged with at bake time "
                          "(the file changed since)")
    return read_sbom(path)


def _named(ec2, recipe: str, ami: str, flag: str) -> dict:
    record = ec2.image(ami)
    if record is None:
        raise ConfigError(f"{flag} {ami}: no such image in {ec2.region}")
    owner = T.tags_of(record).get(T.RECIPE)
    if owner != recipe:
        what = f"an image of recipe {owner}" if owner else "not an image bakery baked"
        raise ConfigError(f"{flag} {ami}: {what}, not of {recipe}")
    return record


def pick(images: list[dict], recipe: str, old: dict | None, new: dict | None) -> tuple[dict, dict]:
    """The two images to compare: those named, else the newest finished image (`new`) and the one
    before it (`old`); `images` are the recipe's finished images, newest first."""
    new = new or (images[0] if images else None)
    if old is None and new is not None:
        ids = [i["ImageId"] for i in images]
        older = (images[ids.index(new["ImageId"]) + 1:] if new["ImageId"] in ids
                 else [i for i in images if i.get("CreationDate", "") < new.get("CreationDate", "")])
        old = older[0] if older else None
    if old is None or new is None:
        raise BakeryError(f"recipe {recipe} has {len(images)} finished image(s) to compare; a diff needs two "
                          "(or name them: --from AMI --to AMI)")
    if old["ImageId"] == new["ImageId"]:
        raise ConfigError(f"--from {old['ImageId']} is the newest finished image of {recipe}: nothing to compare "
                          "it with (name one: --to AMI)")
    return old, new


def diff_recipe(settings: Settings, recipe: str, from_ami: str | None = None, to_ami: str | None = None,
                *, cloud=None) -> ImageDiff:
    """`invoke diff`: the recipe's two newest finished images, or the images named."""
    from bakery.cloud.connect import open_cloud

    recipe_path(settings.recipes, recipe)
    for flag, ami in (("--from", from_ami), ("--to", to_ami)):  # before any cloud opens
        if ami is not None and not re.fullmatch(AMI_RE, ami):
            raise ConfigError(f"{flag} {ami!r}: not an image id (like ami-0123456789abcdef0)")
    if from_ami and to_ami and from_ami == to_ami:
        raise ConfigError(f"--from and --to are both {from_ami}: nothing to compare")
    ec2 = (cloud or open_cloud(settings)).ec2
    old = _named(ec2, recipe, from_ami, "--from") if from_ami else None
    new = _named(ec2, recipe, to_ami, "--to") if to_ami else None
    images = ec2.bakery_images(recipe=recipe) if old is None or new is None else []
    return _between(settings, ec2, recipe, *pick(images, recipe, old, new))


def since_previous(settings: Settings, ec2, recipe: str, ami: str) -> ImageDiff:
    """A new image against the recipe's finished image before it (the rebake's summary)."""
    images = ec2.bakery_images(recipe=recipe)
    ids = [i["ImageId"] for i in images]
    if ami not in ids:
        raise BakeryError(f"{ami} is not a finished image of recipe {recipe}")
    if ids.index(ami) == len(ids) - 1:
        raise BakeryError(f"{ami} is the first finished image of {recipe}: nothing before it to compare with")
    return _between(settings, ec2, recipe, *pick(images, recipe, None, images[ids.index(ami)]))


def _between(settings: Settings, ec2, recipe: str, old: dict, new: dict) -> ImageDiff:
    return image_diff(recipe, (_image(old), image_sbom(settings, old, ec2)),
                      (_image(new), image_sbom(settings, new, ec2)))
