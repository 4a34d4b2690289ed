"""The bake's evidence steps (issue 16): the vulnerability gate before anything is published,
the SBOM kept where any machine finds it, and the signed provenance after the publish.

    GateImage        the image's SBOM against the settings' OSV feed and the recipe's policy;
                     a failing image is tagged and kept for inspection, never published
    KeepSbom         the SBOM in the evidence store under the image's id (a second checkout's
                     `diff` and `verify` find it there)
    SignProvenance   the in-toto statement of every regional image, signed with the settings' key
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timezone
from functools import lru_cache
from pathlib import Path

from bakery.bake.state import BakeState, Context
from bakery.cloud import tags as T


def check_settings(settings) -> None:
    """Before the cloud opens: the feed the gate reads and the key the bake signs with are there
    and are what they must be (a bake must not fail at its last step for a missing key)."""
    from bakery.config.settings import user_path
    from bakery.errors import ConfigError
    from bakery.evidence.dsse import load_signing_key

    if settings.osv_feed is not None and not settings.osv_feed.exists():
        raise ConfigError(f"invoke config bakery.osv_feed: {settings.osv_feed}: not found (a directory of OSV JSON "
                          "files or a zip of them)")
    if settings.signing_key and not settings.signing_key.startswith("kms:"):
        load_signing_key(user_path(settings.signing_key, settings.project_dir))


@lru_cache(maxsize=2)
def _feed(path: Path, mtime_ns: int, cache_dir: Path):
    """A feed is read once per process (a rebake gates every recipe against the same one), and a
    zip's index is kept in the state dir for the next bake (evidence/osv.py load_feed)."""
    from bakery.evidence.osv import load_feed

    return load_feed(path, cache_dir)


class GateImage:
    title = None  # a stage only when there is a feed to gate against

    def run(self, state: BakeState, ctx: Context) -> None:
        if ctx.settings.osv_feed is None or state.sbom is None:
            return
        with ctx.report.stage("vulnerability gate") as stage:
            stage.detail = self._gate(state, ctx)

    def _gate(self, state: BakeState, ctx: Context) -> str:
        from bakery.evidence.gate import GateFailed, gate
        from bakery.evidence.store import EvidenceStore

        feed_path = ctx.settings.osv_feed
        feed = _feed(feed_path, feed_path.stat().st_mtime_ns, ctx.settings.state / "cache")
        image = state.sbom.image
        result = gate(state.sbom.packages, feed, state.recipe.vulnerabilities, date.today(),
                      release=image.os_version or image.os_codename)
        findings = result.to_json()
        state.manifest.vulnerabilities = findings
        # kept whatever the verdict: a failed image's findings are what its reviewer reads
        document = (json.dumps(findings, indent=1, sort_keys=True) + "\n").encode()
        findings_path(ctx.settings.manifests, state.recipe.name, state.build_id).write_bytes(document)
        sha256 = EvidenceStore(ctx.ec2, ctx.settings.state / "evidence").keep(state.image_id, "findings", document)
        verdict = "failed" if result.failed else "passed"
        ctx.ec2.tag([state.image_id], {T.GATE: verdict, T.FINDINGS: sha256})
        if result.failed:
            ctx.stack.keep("image", state.image_id, ctx.ec2.region)
            raise GateFailed(f"{state.recipe.path}: vulnerabilities: {state.image_id} not published: {result.reason()}",
                             findings)
        return result.reason()


def findings_path(manifests: Path, recipe: str, build_id: str) -> Path:
    """Beside the build's manifest and SBOM: RECIPE-BUILD.findings.json."""
    manifests.mkdir(parents=True, exist_ok=True)
    return manifests / f"{recipe}-{build_id}.findings.json"


class KeepSbom:
    title = None

    def run(self, state: BakeState, ctx: Context) -> None:
        from bakery.evidence.store import EvidenceStore

        if state.manifest.sbom is None:
            return
        EvidenceStore(ctx.ec2, ctx.settings.state / "evidence").keep(state.image_id, "sbom",
                                                                     Path(state.manifest.sbom).read_bytes())


class SignProvenance:
    title = None  # a stage only when there is a key to sign with

    def run(self, state: BakeState, ctx: Context) -> None:
        from bakery.evidence.attestation import signer_for

        signer = signer_for(ctx.settings, ctx.ec2)
        if signer is None:
            return
        with ctx.report.stage("sign provenance") as stage:
            stage.detail = self._sign(state, ctx, signer)

    def _sign(self, state: BakeState, ctx: Context, signer) -> str:
        from bakery.evidence.attestation import Built, sign_image, snapshot_ids

        images = (state.manifest.published or {}).get("images") or {ctx.ec2.region: state.image_id}
        source = state.source
        built = Built(recipe=state.recipe.name, build_id=state.build_id, variables=state.variables,
                      inputs_hash=state.manifest.inputs_hash, images=images,
                      sbom_sha256=(state.manifest.sbom_sha256 or "").removeprefix("sha256:") or None,
                      source=(source.id, ctx.ec2.region, snapshot_ids(ctx.ec2.image(source.id) or {})),
                      inputs=input_digests(state), started=_started(state.manifest.started_at),
                      finished=datetime.now(timezone.utc), checkpoints=tuple(
                          (ami, ctx.ec2.region, snapshot_ids(ctx.ec2.image(ami) or {})) for ami in _checkpoints(state)))
        state.manifest.provenance = sign_image(ctx.ec2, ctx.settings.state / "evidence", signer, built)
        return f"{len(images)} image(s), key {signer.keyid}"


def _checkpoints(state: BakeState) -> list[str]:
    """The checkpoint images the bake's steps ran on, in order."""
    resumed = [state.manifest.resumed_from["image"]] if state.manifest.resumed_from else []
    return resumed + [c["image"] for c in state.manifest.checkpoints]


def input_digests(state: BakeState) -> dict[str, str]:
    """Every file the image was baked from, relative to the recipes directory: the recipe files
    (extends chain) and every script and upload source (a directory: each file in it)."""
    root = state.recipe.root
    paths = list(state.recipe.files)
    for step in state.recipe.steps:
        rel = step.script if step.script is not None else step.upload.source if step.upload is not None else None
        if rel is not None:
            local = state.recipe.local_path(rel)
            paths += sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
    return {str(p.resolve().relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _started(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
