"""Signed provenance of an image (#16 item 5): an in-toto Statement v1 whose predicate is SLSA
provenance v1, signed in a DSSE envelope (bakery/evidence/dsse.py), and its verification.

Subjects (what was built): the image in every region, each named by its AMI id, and the SBOM
file, named by its file name with its sha256. Materials (`resolvedDependencies`, what it was
built from): the source image, every recipe input file, bakery's version.

An AMI has no content digest, so bakery defines one (AMI_DIGEST_FORMAT "bakery-ami/v1"):

    sha256 of the canonical JSON (keys sorted, no whitespace, ASCII only) of
    {"format": "bakery-ami/v1", "image_id": "ami-...", "inputs_hash": the image's bakery inputs
     hash or null, "region": "us-east-1", "snapshot_ids": its EBS snapshot ids, sorted}

It commits to which image in which region, to the snapshots that hold its contents (an EBS
snapshot never changes: other contents are other snapshots) and to the inputs it was baked from.
A verifier recomputes it from DescribeImages and the image's tags, so a retagged inputs hash, a
swapped snapshot, or the statement of another image fails as a subject mismatch.

Verification (`verify`) trusts only the public key it is given; every failure is one line naming
which check failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from bakery import __version__
from bakery.errors import ConfigError, VerificationFailed
from bakery.evidence.dsse import Envelope, PublicKey, Signer, sign, verify_signature

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
# What externalParameters and internalParameters mean for a bakery build. bakery publishes no
# web page for it, so a URN (a URI, as SLSA asks) rather than a URL that would not resolve.
BUILD_TYPE = "urn:bakery-build-type:ami-bake:v1"
AMI_DIGEST_FORMAT = "bakery-ami/v1"

Digest = Mapping[str, str]
Descriptor = tuple[str, Digest]  # (subject name or material uri, {algorithm: lowercase hex})

_HEX = re.compile(r"[0-9a-f]+")
_ALGORITHM = re.compile(r"[a-z0-9][a-z0-9_-]*")
_IMAGE = re.compile(r"ami-[0-9a-f]{8,17}")
_SNAPSHOT = re.compile(r"snap-[0-9a-f]{8,17}")


def canonical_json(value: Any) -> bytes:
    """One byte string per value: sorted keys, no whitespace, ASCII escapes. For the strings and
    nulls bakery digests this is also RFC 8785's canonical form."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def ami_digest(image_id: str, region: str, snapshot_ids: Iterable[str], inputs_hash: str | None) -> dict[str, str]:
    """The digest bakery gives an AMI (module docstring)."""
    snapshots = sorted(set(snapshot_ids))
    for value, pattern, what in [(image_id, _IMAGE, "an AMI id"), *((s, _SNAPSHOT, "a snapshot id") for s in snapshots)]:
        if not pattern.fullmatch(value):
            raise ConfigError(f"{value!r} is not {what}")
    document = {"format": AMI_DIGEST_FORMAT, "image_id": image_id, "inputs_hash": inputs_hash, "region": region,
                "snapshot_ids": snapshots}
    return {"sha256": hashlib.sha256(canonical_json(document)).hexdigest()}


def ami_subject(image_id: str, region: str, snapshot_ids: Iterable[str], inputs_hash: str | None) -> Descriptor:
    return image_id, ami_digest(image_id, region, snapshot_ids, inputs_hash)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with Path(path).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return h.hexdigest()


def file_subject(path: Path, name: str | None = None) -> Descriptor:
    """A file as a subject (the SBOM): its name (the file's own by default) and sha256."""
    return name or Path(path).name, {"sha256": sha256_file(path)}


def source_image_material(image_id: str, region: str, snapshot_ids: Iterable[str] = ()) -> Descriptor:
    """The image a bake started from: its ARN, and the AMI digest (no inputs hash: bakery did not bake it)."""
    return f"arn:aws:ec2:{region}::image/{image_id}", ami_digest(image_id, region, snapshot_ids, None)


def bakery_material(version: str = __version__) -> Descriptor:
    return f"pkg:generic/bakery@{version}", {}


def builder_id(environ: Mapping[str, str] | None = None) -> str:
    """Who ran the build: on GitHub Actions the workflow (SLSA's form for a GitHub builder:
    server/owner/repo/.github/workflows/FILE@REF), else this machine."""
    env = os.environ if environ is None else environ
    if env.get("GITHUB_SERVER_URL") and env.get("GITHUB_WORKFLOW_REF"):
        return f"{env['GITHUB_SERVER_URL'].rstrip('/')}/{env['GITHUB_WORKFLOW_REF']}"
    return f"urn:bakery-builder:{socket.gethostname()}"


def _descriptors(items: Iterable[Descriptor], what: str, key: str, digest_required: bool) -> list[dict]:
    out: list[dict] = []
    seen: set[str] = set()
    for name, digest in items:
        if not name or name in seen:
            raise ValueError(f"{what} {name!r}: empty or given twice")
        seen.add(name)
        if digest_required and not digest:
            raise ValueError(f"{what} {name}: no digest")
        for algorithm, value in digest.items():
            if not _ALGORITHM.fullmatch(algorithm) or not _HEX.fullmatch(value):
                raise ValueError(f"{what} {name}: digest {algorithm}: {value!r} is not lowercase hex")
        out.append({key: name, **({"digest": dict(digest)} if digest else {})})
    return out


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("a build time must be timezone-aware")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_statement(subjects: Iterable[Descriptor], materials: Iterable[Descriptor], *, recipe: str,
                    variables: Mapping[str, str], builder: str, build_id: str, started: datetime, finished: datetime,
                    internal: Mapping[str, Any] | None = None) -> dict:
    """The in-toto Statement of one bake. `variables` are recorded as given: a secret passed as a
    variable would be in the statement (and wherever it is stored)."""
    subject = _descriptors(subjects, "subject", "name", digest_required=True)
    if not subject:
        raise ValueError("a statement needs at least one subject")
    definition: dict[str, Any] = {
        "buildType": BUILD_TYPE,
        "externalParameters": {"recipe": recipe, "variables": dict(sorted(variables.items()))},
        "resolvedDependencies": _descriptors(materials, "material", "uri", digest_required=False),
    }
    if internal:
        definition["internalParameters"] = dict(internal)
    return {
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": definition,
            "runDetails": {
                "builder": {"id": builder, "version": {"bakery": __version__}},
                "metadata": {"invocationId": build_id, "startedOn": _rfc3339(started),
                             "finishedOn": _rfc3339(finished)},
            },
        },
    }


def sign_statement(statement: dict, signer: Signer) -> Envelope:
    """The statement in a DSSE envelope; its payload is the statement's canonical JSON, so the same
    statement always has the same payload digest."""
    return sign(PAYLOAD_TYPE, canonical_json(statement), signer)


@dataclass(frozen=True)
class VerifiedStatement:
    statement: dict
    keyid: str                      # the trusted key that signed it
    payload_sha256: str

    @property
    def subjects(self) -> dict[str, dict[str, str]]:
        return {s["name"]: s["digest"] for s in self.statement["subject"]}

    @property
    def predicate(self) -> dict:
        return self.statement.get("predicate") or {}

    @property
    def materials(self) -> list[Descriptor]:
        deps = (self.predicate.get("buildDefinition") or {}).get("resolvedDependencies") or []
        return [(d.get("uri", ""), d.get("digest") or {}) for d in deps if isinstance(d, dict)]

    @property
    def recipe(self) -> str | None:
        return ((self.predicate.get("buildDefinition") or {}).get("externalParameters") or {}).get("recipe")

    @property
    def build_id(self) -> str | None:
        return ((self.predicate.get("runDetails") or {}).get("metadata") or {}).get("invocationId")

    @property
    def builder(self) -> str | None:
        return ((self.predicate.get("runDetails") or {}).get("builder") or {}).get("id")


def verify(envelope: Envelope | bytes | str | dict, public_key: PublicKey, expected_subjects: Iterable[Descriptor], *,
           payload_sha256: str | None = None, where: str = "provenance") -> VerifiedStatement:
    """Check, in this order: the envelope's form, the payload type, the payload against its
    recorded digest (when given), the signature (with `public_key` only), the statement's and
    predicate's types, and that every expected subject is there with a matching digest (on every
    algorithm both name). Any failure raises VerificationFailed: `WHERE: what failed`."""
    expected = list(expected_subjects)
    if not expected:
        raise ValueError("verify needs the subjects it expects: a statement alone proves nothing about an image")
    env = envelope if isinstance(envelope, Envelope) else Envelope.parse(envelope, where)
    if env.payload_type != PAYLOAD_TYPE:
        raise VerificationFailed(f"{where}: payload type is {env.payload_type!r}, expected {PAYLOAD_TYPE}")
    signature = verify_signature(env, public_key, payload_sha256=payload_sha256, where=where)

    try:
        statement = json.loads(env.payload)
    except (ValueError, RecursionError):
        raise VerificationFailed(f"{where}: the signed payload is not JSON") from None
    if not isinstance(statement, dict):
        raise VerificationFailed(f"{where}: the signed payload is not an in-toto statement")
    if statement.get("_type") != STATEMENT_TYPE:
        raise VerificationFailed(f"{where}: statement type is {statement.get('_type')!r}, expected {STATEMENT_TYPE}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise VerificationFailed(f"{where}: predicate type is {statement.get('predicateType')!r}, expected "
                                 f"{PREDICATE_TYPE}")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("digest"), dict)
            for s in subjects):
        raise VerificationFailed(f"{where}: the statement's subject is not a list of names with digests")
    named: dict[str, dict] = {}
    for s in subjects:
        named.setdefault(s["name"], s["digest"])

    for name, digest in expected:
        if name not in named:
            listed = ", ".join(sorted(named)) or "nothing"
            raise VerificationFailed(f"{where}: missing subject {name}: the statement names {listed}")
        ours = named[name]
        common = sorted(set(digest) & set(ours))
        if not common:
            raise VerificationFailed(f"{where}: subject {name}: no digest algorithm in common (the statement has "
                                     f"{', '.join(sorted(ours)) or 'none'}, expected {', '.join(sorted(digest))})")
        for algorithm in common:
            if str(ours[algorithm]).lower() != str(digest[algorithm]).lower():
                raise VerificationFailed(f"{where}: subject mismatch: {name} has {algorithm} {ours[algorithm]} in the "
                                         f"statement, expected {digest[algorithm]}")
    return VerifiedStatement(statement, signature.keyid or public_key.keyid, env.payload_sha256)
