"""An image's evidence, end to end: moto server as EC2 and S3, a real sshd as the builder (this
machine's own dpkg database is what the SBOM lists). The vulnerability gate against a fixture OSV
feed, waivers and their expiry; signed provenance verified from a second checkout through the
bucket, refused once the image's tags change; an environment that requires verified images."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import date, timedelta

import pytest

from bakery.bake.run import bake
from bakery.cloud.connect import open_cloud
from bakery.errors import StepFailed, VerificationFailed
from bakery.progress import Reporter
from tests.support import ROOT, recipe_text, signing_key_pair, write_recipe

pytestmark = pytest.mark.e2e

STEPS = "  - {name: hello, shell: echo hello > /srv/hello}\n"


def installed(package: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def feed(tmp_path):
    """One record: the builder's own base-files is vulnerable (fixed only in a later revision), urgency high."""
    record = {"schema_version": "1.6.0", "id": "DEBIAN-CVE-2099-0001", "modified": "2099-01-01T00:00:00Z",
              "upstream": ["CVE-2099-0001"], "details": "base-files: a test vulnerability",
              "affected": [{"package": {"name": "base-files", "ecosystem": "Debian:12"},
                            "ranges": [{"type": "ECOSYSTEM",
                                        "events": [{"introduced": "0"}, {"fixed": installed("base-files") + "+zz1"}]}],
                            "ecosystem_specific": {"urgency": "high"}}]}
    path = tmp_path / "osv"
    path.mkdir()
    (path / "DEBIAN-CVE-2099-0001.json").write_text(json.dumps(record))
    return path


def waiver(expires: date) -> str:
    return (f"vulnerabilities:\n  waive:\n    - {{id: CVE-2099-0001, reason: 'base-files is rebuilt next week', "
            f"expires: {expires.isoformat()}}}\n")


def test_the_gate_fails_a_vulnerable_image_a_waiver_lets_it_through_and_its_expiry_does_not(
        moto, tmp_path, builder_host, settings_for, feed):
    recipes = tmp_path / "recipes"
    settings = settings_for(recipes, osv_feed=feed)
    write_recipe(recipes, "web", recipe_text(builder_host.port, STEPS))
    with pytest.raises(StepFailed, match=r"vulnerabilities: (ami-\w+) not published: .*DEBIAN-CVE-2099-0001"):
        bake(settings, "web", {}, report=Reporter(quiet=True))
    ec2 = moto.client()
    (failed,) = ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:bakery:recipe", "Values": ["web"]}])["Images"]
    tags = {t["Key"]: t["Value"] for t in failed["Tags"]}
    assert tags["bakery:vulnerability-gate"] == "failed" and "bakery:complete" not in tags  # kept, never used

    write_recipe(recipes, "web", recipe_text(builder_host.port, STEPS, waiver(date.today() + timedelta(days=30))))
    passed = bake(settings, "web", {}, report=Reporter(quiet=True))
    (finding,) = [f for f in passed.vulnerabilities["findings"] if f["id"] == "DEBIAN-CVE-2099-0001"]
    assert finding["waived_by"] and not passed.vulnerabilities["failed"]

    write_recipe(recipes, "web", recipe_text(builder_host.port, STEPS, waiver(date.today() - timedelta(days=1))))
    with pytest.raises(StepFailed, match="DEBIAN-CVE-2099-0001"):
        bake(settings, "web", {}, report=Reporter(quiet=True), force=True)


def test_a_failed_gate_is_in_the_rebake_summary_and_its_findings_are_evidence_of_the_kept_image(
        moto, tmp_path, builder_host, settings_for, feed, monkeypatch):
    from bakery.bake.attest import findings_path
    from bakery.bake.rebake import rebake
    from bakery.cli import show
    from bakery.evidence.store import EvidenceStore, digest

    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    moto.client("s3").create_bucket(Bucket="evidence")
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, STEPS))
    settings = settings_for(recipes, osv_feed=feed, evidence_bucket="evidence")
    (row,) = rebake(settings, ["web"], report=Reporter(quiet=True))
    assert row.decision == "failed" and "DEBIAN-CVE-2099-0001" in row.reason
    with pytest.raises(Exception, match="1 recipe\\(s\\) failed: web"):
        show.rebake([row], json=False)
    text = summary.read_text()
    assert "### web: vulnerabilities: **failed**: 1 at or above high, not waived" in text
    assert "| DEBIAN-CVE-2099-0001 (CVE-2099-0001) | base-files |" in text and "**fails**" in text

    ec2 = moto.client()
    (kept,) = ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:bakery:recipe", "Values": ["web"]}])["Images"]
    tags = {t["Key"]: t["Value"] for t in kept["Tags"]}
    build = tags["bakery:build-id"]
    beside = findings_path(settings.manifests, "web", build).read_bytes()
    assert tags["bakery:findings"] == digest(beside) and json.loads(beside)["failed"] is True
    second = dataclasses.replace(settings, state_dir=tmp_path / "second-checkout")
    assert EvidenceStore(open_cloud(second).ec2, second.state / "evidence").find(
        kept["ImageId"], "findings", tags["bakery:findings"]) == beside  # found through the bucket


def verify_cli(moto, tmp_path, ami: str, public, state: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "aws", "INVOKE_BAKERY_ENDPOINT_URL": moto.url,
           "INVOKE_BAKERY_EVIDENCE_BUCKET": "evidence", "INVOKE_BAKERY_VERIFY_KEY": str(public),
           "INVOKE_BAKERY_STATE_DIR": str(tmp_path / state), "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing"}
    return subprocess.run([sys.executable, "-m", "invoke", "verify", "--ami", ami], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_signed_image_verifies_from_a_second_checkout_and_fails_once_its_tags_change(
        moto, tmp_path, builder_host, settings_for):
    private, public = signing_key_pair(tmp_path)
    moto.client("s3").create_bucket(Bucket="evidence")
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, STEPS))
    manifest = bake(settings_for(recipes, signing_key=str(private), evidence_bucket="evidence"), "web", {},
                    report=Reporter(quiet=True))
    assert manifest.provenance and manifest.sbom_sha256

    second = verify_cli(moto, tmp_path, manifest.ami_id, public, "second-checkout")  # an empty state dir
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(f"verified: {manifest.ami_id}: recipe web, build {manifest.build_id}")

    moto.client().create_tags(Resources=[manifest.ami_id], Tags=[{"Key": "bakery:inputs-hash", "Value": "0" * 64}])
    altered = verify_cli(moto, tmp_path, manifest.ami_id, public, "third-checkout")
    lines = altered.stderr.strip().splitlines()
    assert altered.returncode != 0 and len(lines) == 1 and "Traceback" not in altered.stderr
    assert lines[0].startswith(f"error: {manifest.ami_id} provenance: ") and manifest.ami_id in lines[0][20:]


def test_an_environment_that_requires_verified_images_refuses_an_unsigned_one(moto, tmp_path, builder_host,
                                                                               settings_for):
    from bakery.launch.run import launch

    _, public = signing_key_pair(tmp_path)
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, STEPS))
    settings = settings_for(recipes, verify_key=str(public), envs_dir=tmp_path / "envs")
    unsigned = bake(settings, "web", {}, report=Reporter(quiet=True))
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs/prod.yaml").write_text("require_verified_images: true\ntiers:\n  web:\n"
                                             "    image: {recipe: web}\n    strategy: baked\n")
    with pytest.raises(VerificationFailed, match=f"tiers.web: require_verified_images: {unsigned.ami_id}: not signed"):
        launch(settings, "prod", dry_run=True, report=Reporter(quiet=True))


def test_rebake_bakes_an_unchanged_recipe_again_when_stale_or_offered_updates_and_says_why(
        moto, tmp_path, builder_host, settings_for, monkeypatch):
    """The image's own apt sources (this machine's, as the SBOM recorded them) are asked through a
    fake archive on 127.0.0.1 standing in for deb.debian.org."""
    from datetime import datetime as real_datetime
    from datetime import timezone

    from bakery.bake import run as bake_run
    from bakery.bake.rebake import rebake
    from bakery.evidence import freshness
    from tests.test_freshness import FakeArchive

    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, STEPS, "freshness: {updates: all}\n"))
    settings = settings_for(recipes)
    first = bake(settings, "web", {}, report=Reporter(quiet=True))
    sbom_sources = subprocess.run(["sh", "-c", "cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list "
                                   "2>/dev/null"], capture_output=True, text=True).stdout
    archive = FakeArchive(tmp_path / "mirror")
    try:
        monkeypatch.setattr(freshness, "http_fetch", lambda timeout=20.0: lambda url: _redirected(url, archive))

        def offer(version: str) -> None:
            for source in freshness.parse_sources(sbom_sources):
                archive.publish(source.suite, {"base-files": version}, root=_path_of(source.uri))

        offer(installed("base-files"))
        (row,) = rebake(settings, ["web"], report=Reporter(quiet=True))
        assert (row.decision, row.ami_id) == ("unchanged", first.ami_id), row

        offer(installed("base-files") + "+zz1")
        (row,) = rebake(settings, ["web"], report=Reporter(quiet=True))
        assert row.decision == "rebaked" and row.ami_id != first.ami_id
        assert row.reason == (f"{first.ami_id} updates: base-files {installed('base-files')} -> "
                              f"{installed('base-files')}+zz1"), row.reason

        class Later(real_datetime):
            @classmethod
            def now(cls, tz=None):
                return real_datetime.now(tz or timezone.utc) + timedelta(days=9)
        monkeypatch.setattr(bake_run, "datetime", Later)
        (row,) = rebake(settings, ["web"], report=Reporter(quiet=True))
        assert row.decision == "rebaked" and row.reason.endswith("stale: 9 days old (freshness.max_age_days: 6)")
    finally:
        archive.close()


def _path_of(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[1] if "/" in uri.split("://", 1)[1] else ""


def _redirected(url: str, archive) -> bytes:
    import urllib.request

    path = url.split("://", 1)[1].split("/", 1)[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{archive.server.server_port}/{path}", timeout=5) as response:
        return response.read()
