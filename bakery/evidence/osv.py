"""An OSV vulnerability feed, read from a directory of OSV JSON records or a zip of them (OSV's
Debian export, `Debian/all.zip`, is such a zip), and which installed Debian packages it says are
affected.

Matching follows OSV's schema for Debian: an `affected[]` entry names a *source* package
(`package.name`) in an ecosystem `Debian` (any release) or `Debian:N` (release N only); the
installed package matches through its source package and source version (a binary's own version,
when no source version is known, which differs only for a binNMU's `+bN` suffix). It is affected
when its version is listed in `versions[]` or falls in an ECOSYSTEM range: events sorted in
Debian version order, `introduced` opens an affected interval ("0": from the very first version),
`fixed` closes it at that version, `last_affected` closes it after that version, `limit` bounds
the range. Every comparison is dpkg's (python-debian): epochs, `~` sorting before anything,
revisions; never string order. GIT and SEMVER ranges say nothing about a dpkg version and are
not read.

A feed that cannot be read is refused in one line naming the file (inside a zip `all.zip:NAME`)
and what is wrong with it; so is a record that is not OSV. A version string that is not a Debian
version is refused when a record naming an installed package is matched, naming its field: a
gate must not pass because it could not read a range.
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

from debian.debian_support import Version

from bakery.errors import ConfigError

#: OSV records are a few kB; Debian's largest are well under 1 MiB. A member past this is not a
#: record (and reading it whole, from a zip, could exhaust memory).
MAX_RECORD_BYTES = 8 * 1024 * 1024
#: OSV schema versions this reader understands (the `schema_version` field's major part)
SCHEMA_MAJOR = 1

# Debian releases by codename, for callers that know the release as /etc/os-release's
# VERSION_CODENAME or a purl's distro qualifier rather than as VERSION_ID.
CODENAMES = {"stretch": "9", "buster": "10", "bullseye": "11", "bookworm": "12", "trixie": "13", "forky": "14"}


class InstalledPackage(Protocol):
    """One installed Debian binary package, as the SBOM lists it (dpkg-query's ${Package},
    ${Version}, ${source:Package}, ${source:Version})."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...  # exact, epoch included ("1:1.2.13.dfsg-1")

    @property
    def source(self) -> str: ...  # the source package; equals name when dpkg names none

    @property
    def source_version(self) -> str | None: ...


@dataclass(frozen=True)
class DebPackage:
    """The plainest InstalledPackage."""

    name: str
    version: str
    source: str = ""
    source_version: str | None = None

    def __post_init__(self) -> None:
        if not self.source:
            object.__setattr__(self, "source", self.name)


def debian_release(value: str) -> str:
    """The release number OSV's ecosystem uses ("Debian:12") from "12", "12.5", "bookworm",
    "debian-12" or "Debian:12"."""
    text = str(value).strip().lower().removeprefix("debian").lstrip(":-")
    text = CODENAMES.get(text, text)
    match = re.fullmatch(r"(\d+)(\.\d+)*", text)
    if not match:
        raise ConfigError(f"Debian release {value!r} is not one (give its number, e.g. 12, or a codename: "
                          f"{', '.join(CODENAMES)})")
    return match.group(1)


# ---- severity ---------------------------------------------------------------------------------

# What the feeds' words mean on the gate's scale. Debian's urgency `unimportant` (no security
# impact in Debian), Ubuntu's `negligible` and a CVSS score of 0.0 are the bottom of the scale:
# the gate has no level below low, and they still appear in the findings.
SEVERITY_WORDS = {"unimportant": "low", "negligible": "low", "none": "low", "low": "low", "minor": "low",
                  "medium": "medium", "moderate": "medium", "high": "high", "important": "high",
                  "critical": "critical"}
CVSS_TYPES = ("CVSS_V4", "CVSS_V3", "CVSS_V2")  # newest first: a record giving several is read by its newest


def _word(value: Any) -> str | None:
    """A severity word on the gate's scale; None for one that states nothing ("not yet assigned",
    "end-of-life", "unknown") or is not a word. Debian's tracker marks some urgencies with `*`."""
    if not isinstance(value, str):
        return None
    return SEVERITY_WORDS.get(value.strip().rstrip("*").strip().lower())


def _cvss(kind: str, vector: str) -> str | None:
    from cvss import CVSS2, CVSS3, CVSS4, CVSSError

    try:
        if kind == "CVSS_V4":
            rating = CVSS4(vector).severity
        elif kind == "CVSS_V3":
            rating = CVSS3(vector).severities()[0]
        else:
            rating = CVSS2(vector).severities()[0]
    except (CVSSError, ValueError, KeyError, IndexError):
        return None  # a vector the calculator cannot read states no severity; the next one may
    return SEVERITY_WORDS.get(str(rating).lower())


def _rated(specific: list[tuple[str, Any]], vectors: list[Any]) -> tuple[str, str] | None:
    """(severity, where it came from) from named fields' words, else the newest readable CVSS vector."""
    for label, value in specific:
        word = _word(value)
        if word:
            return word, f"{label} {str(value).strip()}"
    readable = [v for v in vectors if isinstance(v, dict) and isinstance(v.get("score"), str)]
    for kind in CVSS_TYPES:
        for item in readable:
            if item.get("type") == kind:
                rating = _cvss(kind, item["score"])
                if rating:
                    return rating, f"{kind} {item['score']}"
    for item in readable:  # a vendor's own scale in severity[] (type "Ubuntu": "medium")
        word = _word(item["score"]) if item.get("type") not in CVSS_TYPES else None
        if word:
            return word, f"{item.get('type')} {item['score']}"
    return None


# ---- records ----------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Advisory:
    """One OSV record: what the gate reads of it."""

    id: str
    where: str                      # the file it came from, for messages
    aliases: tuple[str, ...]        # the same vulnerability under other ids
    upstream: tuple[str, ...]       # the upstream vulnerabilities this record is about (DSA -> CVEs)
    summary: str
    raw: dict = field(repr=False)

    @cached_property
    def severity(self) -> tuple[str, str] | None:
        specific = self.raw.get("database_specific") or {}
        return _rated([("database_specific.severity", specific.get("severity")),
                       ("database_specific.urgency", specific.get("urgency"))], self.raw.get("severity") or [])

    def ids(self) -> set[str]:
        """Every id naming exactly this vulnerability, upper-cased (waivers match case-insensitively)."""
        return {i.upper() for i in (self.id, *self.aliases)}


@dataclass(frozen=True, eq=False)
class Affected:
    """One `affected[]` entry of a Debian package."""

    advisory: Advisory
    index: int                      # its place in affected[], for messages
    release: str | None             # "12" for Debian:12; None for plain "Debian" (every release)
    package: str                    # the source package it names
    raw: dict = field(repr=False)

    @cached_property
    def severity(self) -> tuple[str, str] | None:
        """The entry's own rating (Debian puts its urgency here), else the record's."""
        own = [(f"affected[{self.index}].{part}.{key}", (self.raw.get(part) or {}).get(key))
               for part in ("ecosystem_specific", "database_specific") for key in ("severity", "urgency")]
        return _rated(own, self.raw.get("severity") or []) or self.advisory.severity

    def _version(self, text: str, path: str) -> Version:
        try:
            return Version(text)
        except ValueError:
            raise ConfigError(f"{self.advisory.where}: affected[{self.index}].{path}: {text!r} is not a Debian "
                              "version") from None

    @cached_property
    def _ranges(self) -> list[list[tuple[str, Version | None]]]:
        out = []
        for r, rng in enumerate(self.raw.get("ranges") or []):
            if rng["type"] != "ECOSYSTEM":
                continue
            events = []
            for e, event in enumerate(rng["events"]):
                (kind, text), = event.items()
                if kind == "introduced" and text == "0":
                    events.append((kind, None))  # before every version
                else:
                    events.append((kind, self._version(text, f"ranges[{r}].events[{e}].{kind}")))
            out.append(events)
        return out

    @cached_property
    def _versions(self) -> list[Version]:
        return [self._version(text, f"versions[{i}]") for i, text in enumerate(self.raw.get("versions") or [])]

    def affects(self, version: Version) -> tuple[bool, Version | None]:
        """Whether `version` is affected, and the version that fixes it (None: none known)."""
        hit = any(version == listed for listed in self._versions)
        fixes: list[Version] = []
        for events in self._ranges:
            if _in_range(version, events):
                hit = True
                fixes += [at for kind, at in events if kind == "fixed" and at is not None and at > version]
        return hit, (min(fixes) if hit and fixes else None)


def _in_range(version: Version, events: list[tuple[str, Version | None]]) -> bool:
    """OSV's evaluation of one range: events in version order, each opening or closing it."""
    limits = [at for kind, at in events if kind == "limit" and at is not None]
    if limits and not any(version < at for at in limits):
        return False
    # sorted() is stable: events at one version keep the order the record gives them
    ordered = sorted(events, key=lambda e: (0, 0) if e[1] is None else (1, e[1]))
    affected = False
    for kind, at in ordered:
        if kind == "introduced" and (at is None or version >= at):
            affected = True
        elif kind == "fixed" and at is not None and version >= at:
            affected = False
        elif kind == "last_affected" and at is not None and version > at:
            affected = False
    return affected


# ---- the feed ---------------------------------------------------------------------------------

@dataclass
class Feed:
    """Every record of a feed naming a Debian package, by that package's name, kept as its JSON:
    a record is parsed into `Affected` entries only when an installed package asks for it (a feed
    is tens of thousands of records, an image a few hundred source packages). Every record was
    checked to be OSV when the feed was read."""

    source: str                     # the directory or zip, as given
    records: int = 0                # OSV records read (withdrawn ones included)
    withdrawn: int = 0
    raw: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)  # package -> (where, record JSON)
    _parsed: dict[str, list[Affected]] = field(default_factory=dict, repr=False)

    def entries(self, package: str, release: str) -> list[Affected]:
        if package not in self._parsed:
            self._parsed[package] = [a for where, data in self.raw.get(package, ())
                                     for a in _debian_entries(parse_record(_json(data, where), where))
                                     if a.package == package]
        return [a for a in self._parsed[package] if a.release in (None, release)]

    def add(self, data: bytes, where: str) -> None:
        advisory = parse_record(_json(data, where), where)
        self.records += 1
        if advisory is None:
            self.withdrawn += 1
            return
        for name in dict.fromkeys(a.package for a in _debian_entries(advisory)):  # once per package
            self.raw.setdefault(name, []).append((where, data))


def _debian_entries(advisory: Advisory | None) -> Iterator[Affected]:
    for index, entry in enumerate(advisory.raw.get("affected") or [] if advisory else []):
        package = entry.get("package")
        if not package:
            continue  # GIT-only entries name no package
        base, _, release = package["ecosystem"].partition(":")
        if base == "Debian":
            yield Affected(advisory, index, release.strip() or None, package["name"], entry)


# The index of a zip feed, kept by its sha256: the same download read again (every bake of a
# scheduled run, every local bake) costs a hash and a load, not tens of thousands of records parsed
# and checked. marshal: plain values only, and the cache is in bakery's own state directory.
INDEX_FORMAT = 1


def load_feed(path: Path, cache_dir: Path | None = None) -> Feed:
    """Every record of a directory of OSV JSON files (*.json, not recursive) or a zip of them.
    With `cache_dir`, a zip's index is kept there by the zip's sha256 and read from there next time."""
    path = Path(path)
    where = str(path)
    try:
        is_dir = path.is_dir()
        if not is_dir:
            with path.open("rb"):
                pass
    except FileNotFoundError:
        raise ConfigError(f"{where}: vulnerability feed not found (a directory of OSV JSON files or a zip of them)") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the vulnerability feed: {exc.strerror or exc}") from None
    index = None if is_dir or cache_dir is None else Path(cache_dir) / f"osv-{_sha256(path)}.index"
    feed = _read_index(index, where) if index is not None else None
    if feed is None:
        feed = Feed(where)
        for name, text in (_directory(path) if is_dir else _zip(path)):
            feed.add(text, name)
        if not feed.records:
            # an empty feed would pass every image: almost certainly the wrong directory or a failed download
            raise ConfigError(f"{where}: no OSV records (*.json) in the vulnerability feed")
        if index is not None:
            _write_index(index, feed)
    return feed


def _sha256(path: Path) -> str:
    import hashlib

    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _read_index(index: Path, where: str) -> Feed | None:
    import marshal

    try:
        fmt, records, withdrawn, raw = marshal.loads(index.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None  # none yet, or unreadable: read the feed again
    if fmt != INDEX_FORMAT:
        return None
    # the records' names are kept relative to the zip: the same download may be read from elsewhere
    return Feed(where, records, withdrawn, {pkg: [(f"{where}:{member}", data) for member, data in items]
                                            for pkg, items in raw.items()})


def _write_index(index: Path, feed: Feed) -> None:
    import marshal
    import os

    prefix = f"{feed.source}:"
    raw = {pkg: [(w.removeprefix(prefix), data) for w, data in items] for pkg, items in feed.raw.items()}
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        partial = index.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(marshal.dumps((INDEX_FORMAT, feed.records, feed.withdrawn, raw)))
        partial.replace(index)  # whole or not at all, also with two bakes at once
    except OSError:
        pass  # a cache: the next bake reads the feed again


def _directory(path: Path) -> Iterator[tuple[str, bytes]]:
    for file in sorted(path.glob("*.json")):
        try:
            size = file.stat().st_size
            if size > MAX_RECORD_BYTES:
                raise ConfigError(f"{file}: {size} bytes, more than an OSV record's {MAX_RECORD_BYTES}-byte limit")
            yield str(file), file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None


def _zip(path: Path) -> Iterator[tuple[str, bytes]]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"{path}: not a zip file ({exc}); the feed is a directory of OSV JSON files or a zip "
                          "of them") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with archive:
        for info in archive.infolist():
            if info.is_dir() or not info.filename.endswith(".json"):
                continue
            name = f"{path}:{info.filename}"
            if info.file_size > MAX_RECORD_BYTES:
                raise ConfigError(f"{name}: {info.file_size} bytes, more than an OSV record's "
                                  f"{MAX_RECORD_BYTES}-byte limit")
            try:
                with archive.open(info) as member:
                    data = member.read(MAX_RECORD_BYTES + 1)  # the header's size may lie; the read may not
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # a bad CRC, a damaged stream
                raise ConfigError(f"{name}: damaged in the zip: {exc}") from None
            except (NotImplementedError, zipfile.LargeZipFile, OSError) as exc:  # an unknown compression, ...
                raise ConfigError(f"{name}: cannot read from the zip: {exc}") from None
            if len(data) > MAX_RECORD_BYTES:
                raise ConfigError(f"{name}: more than an OSV record's {MAX_RECORD_BYTES}-byte limit")
            yield name, data


def _json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 (byte {exc.start}), so not an OSV record") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: corrupt JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ConfigError(f"{where}: corrupt JSON: nested too deeply") from None


# ---- what an OSV record must look like ----------------------------------------------------------

EVENT_KINDS = ("introduced", "fixed", "last_affected", "limit")
_WANT = {str: "a non-empty string", list: "a list", dict: "an object"}


class _NotOSV(Exception):
    """A field that is not what OSV says (its path, the problem); parse_record names the file."""


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(type(value), type(value).__name__)


def _need(obj: dict, key: str, typ: type, path: str, required: bool = True) -> Any:
    if key not in obj:
        if required:
            raise _NotOSV(f"{path}{key}", "missing")
        return None
    value = obj[key]
    if not isinstance(value, typ) or (typ is str and required and not value.strip()):
        raise _NotOSV(f"{path}{key}", f"is {_kind(value)}, expected {_WANT[typ]}")
    return value


def _strings(obj: dict, key: str, path: str = "") -> tuple[str, ...]:
    items = _need(obj, key, list, path, required=False) or ()
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise _NotOSV(f"{path}{key}[{i}]", f"is {_kind(item)}, expected a string")
    return tuple(items)


def _severities(obj: dict, path: str) -> None:
    for i, item in enumerate(_need(obj, "severity", list, path, required=False) or ()):
        if not isinstance(item, dict) or not isinstance(item.get("type"), str) or not isinstance(item.get("score"), str):
            raise _NotOSV(f"{path}severity[{i}]", "expected an object with a type and a score")


def _affected(entry: Any, path: str) -> None:
    if not isinstance(entry, dict):
        raise _NotOSV(path, f"is {_kind(entry)}, expected an object")
    package = _need(entry, "package", dict, f"{path}.", required=False)
    if package is not None:
        _need(package, "ecosystem", str, f"{path}.package.")
        _need(package, "name", str, f"{path}.package.")
    _need(entry, "ecosystem_specific", dict, f"{path}.", required=False)
    _need(entry, "database_specific", dict, f"{path}.", required=False)
    _severities(entry, f"{path}.")
    _strings(entry, "versions", f"{path}.")
    for r, rng in enumerate(_need(entry, "ranges", list, f"{path}.", required=False) or ()):
        rpath = f"{path}.ranges[{r}]"
        if not isinstance(rng, dict):
            raise _NotOSV(rpath, f"is {_kind(rng)}, expected an object")
        _need(rng, "type", str, f"{rpath}.")
        for e, event in enumerate(_need(rng, "events", list, f"{rpath}.")):
            if not isinstance(event, dict) or len(event) != 1 or next(iter(event)) not in EVENT_KINDS:
                raise _NotOSV(f"{rpath}.events[{e}]", f"an event is one of {', '.join(EVENT_KINDS)}: a version")
            (name, value), = event.items()
            if not isinstance(value, str) or not value:
                raise _NotOSV(f"{rpath}.events[{e}].{name}", f"is {_kind(value)}, expected a version")


def parse_record(doc: Any, where: str) -> Advisory | None:
    """The record's advisory (None when it is withdrawn); a document that is not an OSV record is
    refused naming the first field that says so. (Module-level checks, not closures: a feed is
    tens of thousands of records.)"""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: not an OSV record: the document is {_kind(doc)}, not an object")
    try:
        record_id = _need(doc, "id", str, "")
        _need(doc, "modified", str, "")
        schema = _need(doc, "schema_version", str, "", required=False)
        if schema is not None:
            major = schema.split(".")[0]
            if not major.isdigit() or int(major) > SCHEMA_MAJOR:
                raise _NotOSV("schema_version", f"{schema!r}: this reader knows OSV {SCHEMA_MAJOR}.x")
        aliases = _strings(doc, "aliases")
        upstream = _strings(doc, "upstream")
        _strings(doc, "related")
        _need(doc, "database_specific", dict, "", required=False)
        _severities(doc, "")
        for a, entry in enumerate(_need(doc, "affected", list, "", required=False) or ()):
            _affected(entry, f"affected[{a}]")
    except _NotOSV as exc:
        path, problem = exc.args
        raise ConfigError(f"{where}: not an OSV record: {path}: {problem}") from None
    if doc.get("withdrawn"):
        return None
    # Debian's per-CVE records have no summary, only details: their first line stands in
    text = next((doc[k] for k in ("summary", "details") if isinstance(doc.get(k), str) and doc[k].strip()), "")
    return Advisory(record_id, where, aliases, upstream, text.strip().splitlines()[0][:200] if text else "", doc)


# ---- matching ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Match:
    """An installed package an affected entry covers."""

    package: InstalledPackage
    entry: Affected
    compared: str                   # the version compared: the source version, else the binary's
    fixed: str | None               # the version that fixes it, when the range names one

    @property
    def severity(self) -> tuple[str, str] | None:
        return self.entry.severity


def affected_packages(packages: Iterable[InstalledPackage], feed: Feed, release: str) -> list[Match]:
    """Every (installed package, affected entry) where the entry's range or list covers the package's version."""
    release = debian_release(release)
    out: list[Match] = []
    for pkg in packages:
        compared = pkg.source_version or pkg.version
        try:
            version = Version(compared)
        except ValueError:
            raise ConfigError(f"installed package {pkg.name}: version {compared!r} is not a Debian version") from None
        for entry in feed.entries(pkg.source or pkg.name, release):
            hit, fixed = entry.affects(version)
            if hit:
                out.append(Match(pkg, entry, compared, None if fixed is None else str(fixed)))
    return out

