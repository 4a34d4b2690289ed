"""Is a recipe's newest image still fresh? Issue 16 item 1, decided by `rebake` only.

An image with unchanged inputs goes stale two ways: time (it is older than the recipe's
`freshness.max_age_days`), and the archive (its apt sources now offer a newer version of a
package it has installed: a security update the fleet has not got). The second needs the image's
installed packages (its SBOM) and its apt sources, and asks the archive from where bakery runs:
each source's InRelease, then the Packages index of each component its SHA256 list names,
checked against that digest. Parsed indexes are cached by the InRelease's own digest, so an
unchanged archive costs one small download per source.

An archive that cannot be reached is a warning, never a failure: the age rule still holds.
The InRelease's signature is not checked here: what it decides is only whether to bake again
(apt on the builder checks signatures when the bake installs anything).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from debian.deb822 import Packages, Release
from debian.debian_support import Version

from bakery.errors import BakeryError
from bakery.evidence.apt import AptSource, parse_sources

#: index files by preference: the smallest to download first (apt's own order)
_COMPRESSIONS = ((".xz", lzma.decompress), (".gz", gzip.decompress), (".bz2", bz2.decompress), ("", bytes))
MAX_INDEX_BYTES = 256 << 20  # Debian main's Packages is ~50 MB uncompressed


class Installed(Protocol):
    """A package installed in the image, as its SBOM lists it."""

    name: str
    version: str
    arch: str


@dataclass(frozen=True)
class Update:
    name: str
    installed: str
    available: str
    source: str  # which archive offers it (AptSource.label)

    def line(self) -> str:
        return f"{self.name} {self.installed} -> {self.available}"


@dataclass
class Verdict:
    """Why a rebake bakes an image whose inputs did not change (reason None: it does not)."""

    reason: str | None
    updates: list[Update] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


Fetch = Callable[[str], bytes]


def http_fetch(timeout: float = 20.0) -> Fetch:
    def fetch(url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) archive URLs
            return response.read(MAX_INDEX_BYTES + 1)
    return fetch


class ArchiveError(BakeryError):
    """An archive that cannot be read: the rebake warns and judges by age alone."""


class Archive:
    """What apt sources offer now: package name -> newest version, per source and architecture."""

    def __init__(self, cache_dir: Path, fetch: Fetch | None = None):
        self.cache_dir = cache_dir
        self.fetch = fetch or http_fetch()

    def offers(self, source: AptSource, arch: str) -> dict[str, str]:
        base = f"{source.uri.rstrip('/')}/dists/{source.suite}"
        release_bytes = self._get(f"{base}/InRelease")
        digest = hashlib.sha256(release_bytes).hexdigest()
        cached = self.cache_dir / f"{digest}-{arch}.json"
        if cached.is_file():
            return json.loads(cached.read_text())
        release = Release(release_bytes.decode("utf-8", "replace"))
        listed = {entry["name"]: entry for entry in release.get("SHA256", [])}
        newest: dict[str, Version] = {}
        for component in source.components:
            for suffix, decompress in _COMPRESSIONS:
                name = f"{component}/binary-{arch}/Packages{suffix}"
                if name in listed:
                    break
            else:
                raise ArchiveError(f"{base}/InRelease: lists no Packages index for {component}/binary-{arch}")
            raw = self._get(f"{base}/{name}")
            if hashlib.sha256(raw).hexdigest() != listed[name]["sha256"]:
                raise ArchiveError(f"{base}/{name}: its sha256 is not the one InRelease lists (a mirror mid-update?)")
            for para in Packages.iter_paragraphs(decompress(raw).decode("utf-8", "replace").splitlines(),
                                                 use_apt_pkg=False):
                version = Version(para["Version"])
                if para["Package"] not in newest or version > newest[para["Package"]]:
                    newest[para["Package"]] = version
        offers = {name: str(version) for name, version in newest.items()}
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps(offers, sort_keys=True))
        tmp.replace(cached)
        return offers

    def _get(self, url: str) -> bytes:
        try:
            data = self.fetch(url)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            raise ArchiveError(f"{url}: {getattr(exc, 'reason', None) or exc}") from None
        if len(data) > MAX_INDEX_BYTES:
            raise ArchiveError(f"{url}: larger than {MAX_INDEX_BYTES >> 20} MiB")
        return data


def available_updates(installed: Iterable[Installed], sources: list[AptSource], archive: Archive,
                      *, security_only: bool = False) -> tuple[list[Update], list[str]]:
    """(each installed package some source offers newer, warnings for sources that could not be read)."""
    packages = list(installed)
    arches = sorted({p.arch for p in packages if p.arch != "all"}) or ["amd64"]
    best: dict[str, tuple[Version, str]] = {}
    warnings: list[str] = []
    for source in sources:
        if security_only and not source.security:
            continue
        for arch in arches:
            try:
                offers = archive.offers(source, arch)
            except ArchiveError as exc:
                warnings.append(f"{source.label()}: cannot read the archive ({exc.message})")
                continue
            for name, version in offers.items():
                v = Version(version)
                if name not in best or v > best[name][0]:
                    best[name] = (v, source.label())
    updates = [Update(p.name, p.version, str(best[p.name][0]), best[p.name][1]) for p in packages
               if p.name in best and best[p.name][0] > Version(p.version)]
    return sorted(updates, key=lambda u: u.name), warnings


def judge(created: datetime, now: datetime, max_age_days: int, updates: str, installed: Iterable[Installed] | None,
          sources: list[AptSource], archive: Archive) -> Verdict:
    """The rebake's freshness decision for an image of unchanged inputs. `updates` is the recipe's
    policy: "all", "security" or "none"; `installed` None means the image has no SBOM."""
    age = now - created
    if age > timedelta(days=max_age_days):
        return Verdict(f"stale: {age.days} days old (freshness.max_age_days: {max_age_days})")
    if updates == "none":
        return Verdict(None)
    if installed is None:
        return Verdict(None, warnings=["no SBOM for the newest image: available updates not checked"])
    if not sources:
        return Verdict(None, warnings=["the image's SBOM records no apt sources: available updates not checked"])
    found, warnings = available_updates(installed, sources, archive, security_only=updates == "security")
    if found:
        shown = ", ".join(u.line() for u in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        return Verdict(f"updates: {shown}", found, warnings)
    return Verdict(None, [], warnings)


def image_verdict(settings, ec2, policy, image: dict, now: datetime) -> Verdict:
    """`rebake`'s verdict on the newest image of unchanged inputs (the recipe's `freshness`
    policy): its SBOM says what is installed and where updates come from."""
    from bakery.evidence.diff import image_sbom

    created = datetime.strptime(image["CreationDate"][:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=now.tzinfo)
    sbom, warnings = None, []
    if policy.updates != "none":
        try:
            sbom = image_sbom(settings, image, ec2)
        except BakeryError as exc:
            warnings.append(f"available updates not checked: {exc.message}")
    sources = [s for line in (sbom.image.apt_sources if sbom else ()) for s in parse_sources(line)]
    verdict = judge(created, now, policy.max_age_days, policy.updates, sbom.packages if sbom else None, sources,
                    Archive(settings.state / "apt-indexes"))
    if sbom is None and policy.updates != "none":
        verdict.warnings = warnings  # the reason it was not checked, not judge's generic one
    return verdict
