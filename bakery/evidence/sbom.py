"""What an image contains (issue 16 item 2): its software bill of materials, as CycloneDX 1.5 JSON.

Collected from the builder after the recipe's steps and before hygiene, in one remote command
(`collection_script`; every package in one `dpkg-query`, every Python distribution in one `find`
and one `awk`, every uploaded file in one `sha256sum` and one `stat`, never a command per item):

- every dpkg package the image has installed: name, the version exactly as dpkg reports it (epoch
  included), architecture, and the source package and version it was built from; its purl is
  `pkg:deb/ID/NAME@VERSION?arch=ARCH&distro=ID-VERSION_ID` from the builder's /etc/os-release;
- every Python distribution installed in a site-packages or dist-packages directory (the system's
  and every virtualenv's, a virtualenv being a directory holding pyvenv.cfg), as pkg:pypi;
- every file the recipe's uploads brought (computed from the recipe's local sources and the
  uploads' dests), with its sha256, mode and owner as found on the builder, so that a later step
  that rewrote one shows what the image really holds. A file a later step removed is not listed.

The document is checked against the CycloneDX 1.5 schema cyclonedx-python-lib bundles, with the
validator that library builds for it (strict: no unknown fields), before it is written (an
invalid one is a bug here, not the user's) and whenever it is read back (`invoke diff`, the
vulnerability gate, freshness). The JSON itself is made from this module's model and read back
into it directly, in time linear in the number of components: the library's own writer and
reader, and jsonschema's `uniqueItems` check, compare every component with every other one, so
their time grows with the square of the package count, and a CI runner's or a fat image's
thousands of packages take them many seconds (tests/test_sbom.py holds the linear cost). Only
`uniqueItems` is checked differently here, by each item's canonical JSON; every other rule is the
library's validator's.

In the document: metadata.component is the image (name: the recipe, version: the build id,
description: the OS's PRETTY_NAME), its identity in properties; a deb package's source package is
its pedigree's ancestor, with the purl-spec's `arch=source`; a Python distribution's directory is
its evidence occurrence; an uploaded file is a `file` component named by its path. bakery's own
properties are named `bakery.*` (dotted: the `bakery:` colon names are the image's tag keys).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import shlex
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL  # encodes as purl-spec says: 1:2.4.47-2%2Bb1, pypi names normalised

import bakery
from bakery.errors import ConfigError, RemoteError
from bakery.render.upload import entries

SPEC = "1.5"
SUFFIX = ".sbom.cdx.json"  # beside the manifest: RECIPE-BUILD.json, RECIPE-BUILD.sbom.cdx.json

# bakery's own CycloneDX property names (the image's identity, what the library has no field for)
P_RECIPE, P_BUILD_ID, P_INPUTS_HASH, P_SOURCE_AMI = ("bakery.recipe", "bakery.build-id", "bakery.inputs-hash",
                                                     "bakery.source-ami")
P_OS_ID, P_OS_VERSION, P_OS_CODENAME, P_ARCH = ("bakery.os.id", "bakery.os.version-id", "bakery.os.codename",
                                                "bakery.architecture")
P_PY_ENV, P_MODE, P_OWNER = "bakery.python.environment", "bakery.file.mode", "bakery.file.owner"
P_APT = "bakery.apt.sources"  # the image's apt sources, one `deb URI SUITE COMPONENTS` line each: rebake's freshness
SYSTEM = "system"  # a Python distribution's environment when it is in no virtualenv


# ---- the model ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Image:
    """Which image the SBOM describes, and the system it runs."""

    recipe: str
    build_id: str
    inputs_hash: str
    source_ami: str
    os_id: str          # /etc/os-release ID: debian, ubuntu
    os_version: str     # VERSION_ID: 12 ("" on testing and unstable, which have none)
    os_codename: str    # VERSION_CODENAME: bookworm
    os_name: str        # PRETTY_NAME: Debian GNU/Linux 12 (bookworm)
    arch: str           # dpkg --print-architecture: amd64, arm64 (uname -m without dpkg)
    apt_sources: tuple[str, ...] = ()  # `deb URI SUITE COMPONENTS...`: where its packages' updates come from

    @property
    def distro(self) -> str:
        """The purl `distro` qualifier. purl-spec's deb type allows "the distribution name, codename,
        or suite"; ID-VERSION_ID (debian-12, ubuntu-22.04) is what Syft and OSV scanners write and
        maps one to one onto OSV's ecosystems (Debian:12); a release without VERSION_ID (testing,
        unstable) is named by its codename (debian-trixie)."""
        return f"{self.os_id}-{self.os_version or self.os_codename or 'unknown'}"


@dataclass(frozen=True)
class Package:
    """An installed dpkg package."""

    name: str
    version: str         # exactly as dpkg-query reports it: epoch, upstream, revision (1:2.4.47-2+b1)
    arch: str            # amd64, all, ...
    source: str          # the source package it was built from (openssl for libssl3)
    source_version: str  # the source's version: differs from `version` for binNMUs (+b1) and the like

    def purl(self, image: Image) -> str:
        return _purl("deb", self.name, self.version, namespace=image.os_id,
                     qualifiers={"arch": self.arch, "distro": image.distro})

    def source_purl(self, image: Image) -> str:
        return _purl("deb", self.source, self.source_version, namespace=image.os_id,
                     qualifiers={"arch": "source", "distro": image.distro})


@dataclass(frozen=True)
class PythonPackage:
    """A Python distribution installed in a site-packages (or Debian's dist-packages) directory."""

    name: str
    version: str
    location: str              # that directory
    environment: str = SYSTEM  # the virtualenv (a directory holding pyvenv.cfg) it is in, or "system"

    @property
    def key(self) -> str:
        """The name as PyPI compares names (PEP 503): Foo_Bar and foo-bar are one project."""
        return re.sub(r"[-_.]+", "-", self.name).lower()

    @property
    def purl(self) -> str:
        return _purl("pypi", self.name, self.version)


@dataclass(frozen=True)
class UploadedFile:
    """A file one of the recipe's uploads brought, as the image holds it."""

    path: str
    sha256: str
    mode: str | None = None   # 0644
    owner: str | None = None  # root:root


@dataclass
class Sbom:
    image: Image
    packages: list[Package] = field(default_factory=list)
    python: list[PythonPackage] = field(default_factory=list)
    files: list[UploadedFile] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.packages)} dpkg package(s), {len(self.python)} Python package(s), "
                f"{len(self.files)} uploaded file(s)")

    def to_cyclonedx(self) -> str:
        """The CycloneDX 1.5 JSON document, validated against the library's schema."""
        document = _document(self)
        problem = _first_problem(document)
        if problem is not None:  # bakery made it: a bug, never the user's input
            raise RuntimeError(f"bakery wrote an invalid CycloneDX {SPEC} SBOM: {problem}")
        return json.dumps(document, indent=1)

    def write(self, path: Path) -> str:
        """Write the document to `path`; its digest, `sha256:HEX`."""
        data = self.to_cyclonedx().encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # a reader never sees half a document
        return digest(data)

    @classmethod
    def from_cyclonedx(cls, text: str, where: str) -> "Sbom":
        """A document `write` made (validated first: a broken file is named in one line)."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: not JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("specVersion") != SPEC:
            found = data.get("specVersion") if isinstance(data, dict) else type(data).__name__
            raise ConfigError(f"{where}: specVersion: expected CycloneDX {SPEC}, found {found!r}")
        problem = _first_problem(data)
        if problem is not None:
            raise ConfigError(f"{where}: not a valid CycloneDX {SPEC} document: {problem}")
        return _model(data, where)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sbom_path(manifests: Path, recipe: str, build_id: str) -> Path:
    """Where a build's SBOM lives: beside its manifest (settings.manifests)."""
    return manifests / f"{recipe}-{build_id}{SUFFIX}"


def read_sbom(path: Path) -> Sbom:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the SBOM ({exc.strerror or exc})") from None
    return Sbom.from_cyclonedx(text, str(path))


# ---- CycloneDX ---------------------------------------------------------------------------------

def _purl(kind: str, name: str, version: str, namespace: str | None = None,
          qualifiers: dict[str, str] | None = None) -> str:
    return PackageURL(type=kind, namespace=namespace, name=name, version=version,
                      qualifiers=qualifiers or None).to_string()


@cache
def _validator():
    """The library's strict CycloneDX 1.5 validator (its bundled schema, the schemas that one
    refers to, its format checks), with `uniqueItems` checked in linear time."""
    from jsonschema import validators

    # the library's Draft 7 validator and its registry of referenced schemas are reached through
    # private attributes (the library has no other way to them): tests/test_sbom.py checks that
    # this one refuses what the library's own refuses, so a change there fails the tests
    library = JsonStrictValidator(SchemaVersion.V1_5)._validator
    linear = validators.extend(type(library), {"uniqueItems": _unique_items})
    return linear(library.schema, registry=library._registry, format_checker=library.format_checker)


def _unique_items(validator, unique, instance, schema):
    """jsonschema's `uniqueItems`, by each item's canonical JSON: exact for documents without
    floating-point numbers (jsonschema also holds 1 equal to 1.0), as bakery's are."""
    from jsonschema.exceptions import ValidationError

    if not unique or not validator.is_type(instance, "array"):
        return
    seen: dict[str, int] = {}
    for index, item in enumerate(instance):
        key = json.dumps(item, sort_keys=True)
        if key in seen:
            yield ValidationError(f"item {index} repeats item {seen[key]} (the items must be unique)")
            return
        seen[key] = index


def _first_problem(document) -> str | None:
    """The schema's first complaint in one line, at the field it is about: components[3].purl: ..."""
    error = next(iter(_validator().iter_errors(document)), None)
    if error is None:
        return None
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{path.lstrip('.') or 'document'}: {error.message.splitlines()[0]}"


def _properties(pairs) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in pairs if value]


def _document(sbom: Sbom) -> dict:
    image = sbom.image
    root = {"type": "operating-system", "bom-ref": "image", "name": image.recipe, "version": image.build_id,
            **({"description": image.os_name} if image.os_name else {}),
            "properties": _properties([(P_RECIPE, image.recipe), (P_BUILD_ID, image.build_id),
                                       (P_INPUTS_HASH, image.inputs_hash), (P_SOURCE_AMI, image.source_ami),
                                       (P_OS_ID, image.os_id), (P_OS_VERSION, image.os_version),
                                       (P_OS_CODENAME, image.os_codename), (P_ARCH, image.arch),
                                       (P_APT, "\n".join(image.apt_sources))])}
    components: list[dict] = []
    for p in sbom.packages:
        purl = p.purl(image)
        source = {"type": "library", "bom-ref": f"{purl}#source", "name": p.source, "version": p.source_version,
                  "purl": p.source_purl(image)}
        components.append({"type": "library", "bom-ref": purl, "name": p.name, "version": p.version, "purl": purl,
                           "pedigree": {"ancestors": [source]}})
    for py in sbom.python:
        components.append({"type": "library", "bom-ref": f"{py.purl}#{py.location}", "name": py.name,
                           "version": py.version, "purl": py.purl,
                           "evidence": {"occurrences": [{"location": py.location}]},
                           "properties": _properties([(P_PY_ENV, py.environment)])})
    for f in sbom.files:
        props = _properties([(P_MODE, f.mode), (P_OWNER, f.owner)])
        components.append({"type": "file", "bom-ref": f"file:{f.path}", "name": f.path,
                           "hashes": [{"alg": "SHA-256", "content": f.sha256}],
                           **({"properties": props} if props else {})})
    tool = {"type": "application", "name": "bakery", "version": bakery.__version__}
    return {"$schema": f"http://cyclonedx.org/schema/bom-{SPEC}.schema.json", "bomFormat": "CycloneDX",
            "specVersion": SPEC, "serialNumber": f"urn:uuid:{uuid.uuid4()}", "version": 1,
            "metadata": {"timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "tools": {"components": [tool]}, "component": root},
            "components": components,
            # the image holds every component. Their own dependencies are not collected: unknown, so
            # (as CycloneDX 1.5 says of components without an entry) they have none here
            "dependencies": [{"ref": "image", "dependsOn": [c["bom-ref"] for c in components]}]}


def _props(component: dict) -> dict[str, str]:
    return {p["name"]: p.get("value", "") for p in component.get("properties", [])}


def _model(data: dict, where: str) -> Sbom:
    """The model from a document that passed the schema (so every field read here has its type)."""
    root = data.get("metadata", {}).get("component")
    meta = _props(root or {})
    if P_BUILD_ID not in meta:
        raise ConfigError(f"{where}: metadata.component: no {P_BUILD_ID} property (not an SBOM bakery wrote)")
    image = Image(recipe=meta.get(P_RECIPE, root.get("name", "")), build_id=meta[P_BUILD_ID],
                  inputs_hash=meta.get(P_INPUTS_HASH, ""), source_ami=meta.get(P_SOURCE_AMI, ""),
                  os_id=meta.get(P_OS_ID, ""), os_version=meta.get(P_OS_VERSION, ""),
                  os_codename=meta.get(P_OS_CODENAME, ""), os_name=root.get("description", ""),
                  arch=meta.get(P_ARCH, ""), apt_sources=tuple(filter(None, meta.get(P_APT, "").split("\n"))))
    sbom = Sbom(image)
    for index, c in enumerate(data.get("components", [])):
        try:
            purl = PackageURL.from_string(c["purl"]) if c.get("purl") else None
        except ValueError as exc:  # the schema takes any text for a purl
            raise ConfigError(f"{where}: components[{index}].purl: {exc}") from None
        if purl is not None and purl.type == "deb":
            source = (c.get("pedigree", {}).get("ancestors") or [c])[0]
            sbom.packages.append(Package(c["name"], c.get("version", ""), (purl.qualifiers or {}).get("arch", ""),
                                         source["name"], source.get("version", c.get("version", ""))))
        elif purl is not None and purl.type == "pypi":
            found = [o["location"] for o in c.get("evidence", {}).get("occurrences", [])]
            sbom.python.append(PythonPackage(c["name"], c.get("version", ""), found[0] if found else "",
                                             _props(c).get(P_PY_ENV, SYSTEM)))
        elif c["type"] == "file":
            sha = [h["content"] for h in c.get("hashes", []) if h["alg"] == "SHA-256"]
            props = _props(c)
            sbom.files.append(UploadedFile(c["name"], sha[0] if sha else "", props.get(P_MODE), props.get(P_OWNER)))
    sbom.packages.sort(key=lambda p: (p.name, p.arch))
    sbom.python.sort(key=lambda p: (p.key, p.location))
    sbom.files.sort(key=lambda f: f.path)
    return sbom


# ---- collection on the builder -----------------------------------------------------------------

def uploaded_paths(uploads: list[tuple[Path, str]]) -> list[str]:
    """The files (not directories or symlinks) the uploads (local source, rendered dest) bring, at
    their paths on the machine, in upload order, each once: what the SBOM lists with its digest."""
    paths: dict[str, None] = {}
    for source, dest in uploads:
        if source.is_dir():
            for entry in entries(source, None, None, f"upload of {source}"):
                if entry.kind == "file":
                    paths[posixpath.normpath(posixpath.join(dest, entry.name))] = None
        else:
            paths[posixpath.normpath(dest)] = None
    return list(paths)


# Directories no package manager installs into and no virtualenv lives in: the kernel's and the
# run's (not the image's), temporary files, caches, logs.
PRUNE = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/var/cache", "/var/log",
         # the largest trees of a Debian system, where no Python distribution or virtualenv lives:
         # documentation and data, headers, sources, kernel modules, firmware, dpkg's and apt's own
         # databases (dpkg-query reads those), the boot files; half the walk's time
         "/usr/share", "/usr/include", "/usr/src", "/usr/lib/modules", "/usr/lib/firmware", "/var/lib/dpkg",
         "/var/lib/apt", "/boot")

# One record per line, tab-separated, tagged by its first field; stderr goes to files printed at
# the end as `error` (dpkg-query, checksums: the SBOM would be wrong) or `warning` (find: a file
# that vanished mid-walk) lines, so no message can split a record.
_COLLECT = r"""#!/bin/sh
e=$(mktemp /tmp/bakery-sbom.XXXXXXXX) && w=$(mktemp /tmp/bakery-sbom.XXXXXXXX) &&
d=$(mktemp /tmp/bakery-sbom.XXXXXXXX) && v=$(mktemp /tmp/bakery-sbom.XXXXXXXX) || exit 125
trap 'rm -f "$e" "$w" "$d" "$v"' EXIT
# os-release is shell assignments by design: sourced in a subshell
( for f in /etc/os-release /usr/lib/os-release; do [ -r "$f" ] && { . "$f"; break; }; done
  printf 'os\t%s\t%s\t%s\t%s\n' "${ID:-linux}" "${VERSION_ID:-}" "${VERSION_CODENAME:-}" "${PRETTY_NAME:-}" )
if command -v dpkg-query >/dev/null 2>&1; then
  printf 'arch\t%s\n' "$(dpkg --print-architecture 2>>"$e")"
  fmt='deb\t${db:Status-Status}\t${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\n'
  dpkg-query -W -f="$fmt" 2>>"$e" || echo "dpkg-query failed" >>"$e"
else
  printf 'arch\t%s\n' "$(uname -m)"
fi
find / -xdev \( @PRUNE@ \) -prune -o -type f \( -path '*-packages/*.dist-info/METADATA' -o \
     -path '*-packages/*.egg-info/PKG-INFO' -o -path '*-packages/*.egg-info' \) -fprint0 "$d" -o \
     -type f -name pyvenv.cfg -fprintf "$v" 'venv\t%h\n' 2>>"$w"
cat "$v"
# a distribution's Name and Version headers (RFC 822, up to the first blank line)
xargs -0 -r awk '
  function out() { if (f != "") printf "py\t%s\t%s\t%s\n", n, ver, f; f = "" }
  FNR == 1 { out(); f = FILENAME; n = ""; ver = ""; h = 1 }
  !h { next }
  { sub(/\r$/, "") }
  /^$/ { h = 0; next }
  /^Name:/ { n = $0; sub(/^Name:[ \t]*/, "", n); next }
  /^Version:/ { ver = $0; sub(/^Version:[ \t]*/, "", ver); next }
  END { out() }' <"$d" 2>>"$w"
# uploaded files: the index of each one present (a regular file, not a link), then one checksum
# and one stat line per present file, in the same order
set --
i=0
for p in @FILES@; do
  if [ -f "$p" ] && [ ! -L "$p" ]; then set -- "$@" "$p"; printf 'up\t%d\n' "$i"; fi
  i=$((i + 1))
done
if [ $# -gt 0 ]; then
  sha256sum -- "$@" 2>>"$e" | while read -r h rest; do printf 'sha\t%s\n' "${h#\\}"; done
  stat --printf 'stat\t%a\t%U:%G\n' -- "$@" 2>>"$e"
fi
# the image's apt sources (one-line and deb822 files), each line tagged with its file
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -r "$f" ] && sed "s|^|apt\t$f\t|" "$f" 2>>"$w"
done
sed 's/^/warning\t/' "$w"
sed 's/^/error\t/' "$e"
echo end
"""


def collection_script(files: list[str]) -> str:
    """The one remote command (as root) whose output `parse_collection` reads."""
    prune = " -o ".join(f"-path {p}" for p in PRUNE)
    return _COLLECT.replace("@PRUNE@", prune).replace("@FILES@", " ".join(shlex.quote(f) for f in files) or "''")


# dpkg's states whose files are on disk; not-installed and config-files (removed, its conffiles
# kept) are not in the image.
INSTALLED = {"installed", "half-installed", "unpacked", "half-configured", "triggers-awaited", "triggers-pending"}


def _apt_sources(rows: list[list[str]]) -> tuple[str, ...]:
    """Each `apt` row is one line of one sources file: the files put back together and read."""
    from bakery.evidence.apt import parse_sources

    files: dict[str, list[str]] = {}
    for row in rows:
        if row[0] == "apt" and len(row) >= 2:
            files.setdefault(row[1], []).append("\t".join(row[2:]))
    return tuple(f"deb {s.uri} {s.suite} {' '.join(s.components)}".rstrip()
                 for lines in files.values() for s in parse_sources("\n".join(lines)))


@dataclass
class Collected:
    sbom: Sbom
    warnings: list[str]


def parse_collection(lines: list[str], files: list[str], *, recipe: str, build_id: str, inputs_hash: str,
                     source_ami: str, where: str) -> Collected:
    """The SBOM from `collection_script(files)`'s output lines; `where` names the machine in errors."""
    rows = [line.split("\t") for line in lines]
    if not rows or rows[-1] != ["end"]:
        raise RemoteError(f"{where}: SBOM collection ended early (its last line: {lines[-1] if lines else 'none'!r})")
    errors = [r[1] for r in rows if r[0] == "error" and len(r) > 1]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise RemoteError(f"{where}: SBOM collection failed: {errors[0]}{more}")
    os_row = next((r for r in rows if r[0] == "os" and len(r) == 5), ["os", "linux", "", "", ""])
    arch = next((r[1] for r in rows if r[0] == "arch" and len(r) == 2), "")
    image = Image(recipe, build_id, inputs_hash, source_ami, os_id=os_row[1].lower() or "linux",
                  os_version=os_row[2], os_codename=os_row[3], os_name=os_row[4], arch=arch,
                  apt_sources=_apt_sources(rows))
    sbom = Sbom(image)
    venvs = sorted((r[1] for r in rows if r[0] == "venv" and len(r) == 2), key=len, reverse=True)
    present, sums, stats = [], [], []
    distributions: dict[tuple[str, str, str], PythonPackage] = {}
    for r in rows:
        if r[0] == "deb" and len(r) == 7 and r[1] in INSTALLED:
            sbom.packages.append(Package(r[2], r[3], r[4], r[5] or r[2], r[6] or r[3]))
        elif r[0] == "py" and len(r) >= 4:
            python = _python(r[1], r[2], "\t".join(r[3:]), venvs)
            # once per directory, though Debian ships some with both a .dist-info and an .egg-info
            if python is not None and (python.key, python.version, python.location) not in distributions:
                distributions[(python.key, python.version, python.location)] = python
                sbom.python.append(python)
        elif r[0] == "up" and len(r) == 2:
            present.append(files[int(r[1])])
        elif r[0] == "sha" and len(r) == 2:
            sums.append(r[1])
        elif r[0] == "stat" and len(r) == 3:
            stats.append(r[1:])
    if not len(present) == len(sums) == len(stats) or not all(re.fullmatch(r"[0-9a-f]{64}", s) for s in sums):
        raise RemoteError(f"{where}: SBOM collection: {len(present)} uploaded file(s) found but "
                          f"{len(sums)} checksum(s) and {len(stats)} stat line(s) came back")
    sbom.files = [UploadedFile(path, sha, f"{int(mode, 8):04o}", owner)
                  for path, sha, (mode, owner) in zip(present, sums, stats)]
    sbom.packages.sort(key=lambda p: (p.name, p.arch))
    sbom.python.sort(key=lambda p: (p.key, p.location))
    sbom.files.sort(key=lambda f: f.path)
    return Collected(sbom, [r[1] for r in rows if r[0] == "warning" and len(r) > 1])


def _python(name: str, version: str, metadata: str, venvs: list[str]) -> PythonPackage | None:
    """An installed distribution from its metadata file's path, or None for one vendored inside a
    package (pip/_vendor/...: not installed, its parent directory is no *-packages directory)."""
    dist = posixpath.dirname(metadata) if metadata.endswith(("/METADATA", "/PKG-INFO")) else metadata
    location = posixpath.dirname(dist)
    if not location.endswith(("/site-packages", "/dist-packages")) or not name:
        return None
    env = next((v for v in venvs if location.startswith(v.rstrip("/") + "/")), SYSTEM)
    return PythonPackage(name, version, location, env)
