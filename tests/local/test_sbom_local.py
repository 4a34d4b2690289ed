"""The SBOM of a real bake on the local cloud's Debian base (issue 16 items 2 and 3): collected from
the builder, valid CycloneDX 1.5, and exactly what an instance of the image holds: every installed
dpkg package at the version dpkg reports inside it, the recipe's virtualenv, the files its upload
brought with the digests they have there. Then `invoke diff` between two real bakes whose package
of their own moved from 2.0-1 to 1:1.0-1, an upgrade only Debian's order sees (the epoch).

Nothing is fetched from the network: the package is built on the builder with dpkg-deb, the
virtualenv made without pip."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bakery.bake.run import bake
from bakery.cloud import tags as T
from bakery.cloud.connect import open_cloud
from bakery.config.settings import Settings
from bakery.evidence.sbom import PythonPackage, read_sbom, sbom_path
from bakery.local.sandbox import Sandbox
from bakery.progress import Reporter
from tests.support import ROOT, write_recipe

pytestmark = pytest.mark.local

RECIPE = """\
source:
  filter: {name: "debian-12-amd64-*", owners: ["136693071363"]}
builder:
  ssh: {user: admin, timeout: 60}
variables:
  demo_version: {default: "2.0-1"}
steps:
  - name: site
    upload: {source: files/site, dest: /var/www/site, mode: "0644"}
  - name: retitle
    shell: sed -i 's/hello/hello from {{ recipe }}/' /var/www/site/index.html
  - name: a package of our own
    shell: |
      d=$(mktemp -d) && mkdir "$d/DEBIAN"
      printf 'Package: bakery-demo\\nVersion: %s\\nArchitecture: all\\n' '{{ demo_version }}' > "$d/DEBIAN/control"
      printf 'Maintainer: t <t@example.com>\\nDescription: demo\\n' >> "$d/DEBIAN/control"
      dpkg-deb --build "$d" /var/tmp/bakery-demo.deb >/dev/null && dpkg -i /var/tmp/bakery-demo.deb
      rm -rf "$d" /var/tmp/bakery-demo.deb
  - name: a virtualenv
    shell: |
      python3 -m venv --without-pip /opt/venv
      m=$(echo /opt/venv/lib/python3*/site-packages)/demo_tool-0.3.dist-info
      mkdir "$m" && printf 'Metadata-Version: 2.1\\nName: demo-tool\\nVersion: 0.3\\n' > "$m/METADATA"
"""
SITE = {"index.html": "<h1>hello</h1>\n", "css/site.css": "h1 { color: teal }\n", "img/empty.txt": ""}


@pytest.fixture(scope="module")
def settings(cloud, tmp_path_factory):
    project = tmp_path_factory.mktemp("sbom")
    recipes = project / "recipes"
    for rel, text in SITE.items():
        (recipes / "files/site" / rel).parent.mkdir(parents=True, exist_ok=True)
        (recipes / "files/site" / rel).write_text(text)
    write_recipe(recipes, "sbom", RECIPE)
    return Settings(cloud="local", data_dir=cloud.data_dir, project_dir=project, recipes_dir=recipes,
                    state_dir=project / "state")


@pytest.fixture(scope="module")
def baked(settings):
    """The recipe baked once, with its defaults."""
    return bake(settings, "sbom", {}, report=Reporter(quiet=True))


@pytest.fixture(scope="module")
def instance(cloud, settings, baked):
    """An instance of the baked image, booted: what the SBOM is checked against."""
    ec2 = open_cloud(settings).ec2
    iid = ec2.client.run_instances(ImageId=baked.ami_id, InstanceType="t3.micro", MinCount=1,
                                   MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.wait_instance_state(iid, "running", timeout=60)
    box = Sandbox.attach(iid, cloud.instances_dir)
    deadline = time.monotonic() + 60
    while "done" not in box.boot_status():
        assert time.monotonic() < deadline, box.boot_log()
        time.sleep(0.05)
    yield box
    ec2.client.terminate_instances(InstanceIds=[iid])
    ec2.wait_instance_state(iid, "terminated", timeout=60)


def run_in(box: Sandbox, *argv: str) -> str:
    done = box.exec(list(argv), timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_bake_writes_a_valid_cyclonedx_sbom_beside_its_manifest_and_tags_the_image_with_its_digest(
        settings, baked):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    path = sbom_path(settings.manifests, "sbom", baked.build_id)
    assert baked.sbom == str(path) and path.exists()
    text = path.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(text) is None
    assert json.loads(text)["specVersion"] == "1.5"
    assert baked.sbom_sha256 == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    image = open_cloud(settings).ec2.image(baked.ami_id)
    assert T.tags_of(image)[T.SBOM] == baked.sbom_sha256
    assert json.loads((settings.manifests / f"sbom-{baked.build_id}.json").read_text())["sbom_sha256"] == \
        baked.sbom_sha256
    assert "collect SBOM" in baked.stages


def test_the_sbom_lists_every_installed_package_at_the_version_dpkg_reports_inside_the_image(baked, instance):
    sbom = read_sbom(Path(baked.sbom))
    listed = run_in(instance, "dpkg-query", "-W", "-f",
                    "${db:Status-Status} ${Package} ${Version} ${Architecture} ${source:Package}\n")
    installed = {tuple(line.split(" ")[1:]) for line in listed.splitlines() if line.startswith("installed ")}
    assert {(p.name, p.version, p.arch, p.source) for p in sbom.packages} == installed
    by_name = {p.name: p for p in sbom.packages}
    assert by_name["openssh-server"].version.startswith("1:")  # the epoch, as dpkg reports it
    assert by_name["openssh-server"].purl(sbom.image) == (
        f"pkg:deb/debian/openssh-server@{by_name['openssh-server'].version.replace('+', '%2B')}"
        "?arch=amd64&distro=debian-12")
    assert by_name["bakery-demo"].version == "2.0-1"  # what the recipe itself installed
    assert (sbom.image.os_id, sbom.image.os_version, sbom.image.os_codename, sbom.image.arch) == (
        "debian", "12", "bookworm", "amd64")


def test_the_sbom_lists_the_recipes_virtualenv_and_the_systems_python_packages(baked, instance):
    sbom = read_sbom(Path(baked.sbom))
    site = run_in(instance, "sh", "-c", "echo /opt/venv/lib/python3*/site-packages").strip()
    assert PythonPackage("demo-tool", "0.3", site, "/opt/venv") in sbom.python
    system = [p for p in sbom.python if p.location == "/usr/lib/python3/dist-packages"]
    assert system and all(p.environment == "system" for p in system)  # cloud-init's own, from Debian packages


def test_the_sbom_digests_every_file_the_upload_brought_as_the_image_holds_it(baked, instance):
    sbom = read_sbom(Path(baked.sbom))
    files = {f.path: f for f in sbom.files}
    assert sorted(files) == sorted(f"/var/www/site/{rel}" for rel in SITE)
    for path, f in files.items():
        assert f.sha256 == run_in(instance, "sha256sum", path).split()[0]
        assert (f.mode, f.owner) == ("0644", "root:root")
    retitled = hashlib.sha256(b"<h1>hello from sbom</h1>\n").hexdigest()  # the later step's edit is what is there
    assert files["/var/www/site/index.html"].sha256 == retitled


def test_a_bake_skipped_as_unchanged_collects_no_sbom(settings, baked):
    before = sorted(settings.manifests.glob("*.sbom.cdx.json"))
    again = bake(settings, "sbom", {}, report=Reporter(quiet=True))
    assert again.skipped and again.ami_id == baked.ami_id
    assert again.sbom is None and sorted(settings.manifests.glob("*.sbom.cdx.json")) == before


def test_invoke_diff_shows_the_package_a_second_bake_upgraded_in_debian_order(cloud, settings, baked):
    second = bake(settings, "sbom", {"demo_version": "1:1.0-1"}, report=Reporter(quiet=True))
    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "local", "INVOKE_BAKERY_DATA_DIR": str(cloud.data_dir),
           "INVOKE_BAKERY_STATE_DIR": str(settings.state), "INVOKE_BAKERY_RECIPES_DIR": str(settings.recipes)}
    out = subprocess.run([sys.executable, "-m", "invoke", "diff", "--recipe", "sbom"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"sbom: {baked.ami_id} ({baked.build_id}, ") and f"-> {second.ami_id} (" in lines[0]
    first = read_sbom(Path(baked.sbom))
    packages, python = len(first.packages), len(first.python)
    # 2.0-1 -> 1:1.0-1 is an upgrade (the epoch); a string comparison would call it a downgrade
    assert lines[1:] == [f"dpkg packages ({packages} -> {packages}): 1 upgraded",
                         "  upgraded    bakery-demo 2.0-1 -> 1:1.0-1",
                         f"Python packages ({python} -> {python}): no change",
                         "uploaded files (3 -> 3): no change"]
