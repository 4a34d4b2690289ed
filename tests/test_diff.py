"""What changed between two images (bakery/evidence/diff.py): versions in Debian's and Python's own
order, the changes in each kind of content, how the two images and their SBOMs are found (and
refused), what `invoke diff` prints, and the rebake summary's section for each rebaked recipe.

The images are made in moto and tagged as a bake tags them; their SBOMs are written beside the
manifests as CollectSbom writes them (a real bake's collection: tests/test_bake_steps.py and
tests/local/test_sbom_local.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from bakery.bake.rebake import RebakeRow, changes
from bakery.cli import tables
from bakery.cloud import tags as T
from bakery.cloud.connect import open_cloud
from bakery.config.settings import Settings
from bakery.errors import BakeryError, ConfigError
from bakery.evidence.diff import compare, debian_order, diff_recipe, python_order
from bakery.evidence.sbom import Image, Package, PythonPackage, Sbom, UploadedFile, sbom_path
from tests.support import ROOT, moto_in_process, write_recipe

REGION = "us-east-1"
VENV = "/opt/app/venv/lib/python3.11/site-packages"


def sbom(build_id: str = "b-1", packages=(), python=(), files=()) -> Sbom:
    image = Image("web", build_id, "sha256:" + "0" * 64, "ami-0123456789abcdef0", "debian", "12", "bookworm",
                  "Debian GNU/Linux 12 (bookworm)", "amd64")
    return Sbom(image, list(packages), list(python), list(files))


def deb(name: str, version: str, arch: str = "amd64") -> Package:
    return Package(name, version, arch, name, version)


# ---- version order -----------------------------------------------------------------------------

@pytest.mark.parametrize("older, newer", [
    ("2.0-1", "1:1.0-1"),             # an epoch outranks everything after it
    ("1.0~rc1-1", "1.0-1"),           # a tilde sorts before nothing: a pre-release is older
    ("1.0-1", "1.0-1+deb12u1"),       # a stable update
    ("1.22.1-9", "1.22.1-10"),        # revisions compare as numbers, not text
    ("1.0-1~bpo12+1", "1.0-1"),       # a backport is older than the release it was built from
    ("2.36-9+deb12u9", "2.36-9+deb12u10"),
])
def test_debian_versions_order_as_dpkg_orders_them_where_string_order_would_not(older, newer):
    assert debian_order(older, newer) == -1 and debian_order(newer, older) == 1
    assert debian_order(newer, newer) == 0


def test_debian_order_of_one_version_spelled_twice_is_equal():
    assert debian_order("1.0-1", "1.00-1") == 0  # dpkg --compare-versions 1.0-1 eq 1.00-1


@pytest.mark.parametrize("older, newer", [("2.9.0", "2.10.0"), ("1.0rc1", "1.0"), ("1.0", "1.0.post1"),
                                          ("0.9", "1!0.1")])
def test_python_versions_order_as_pep_440_orders_them(older, newer):
    assert python_order(older, newer) == -1 and python_order(newer, older) == 1


def test_a_python_version_pep_440_cannot_read_is_ordered_as_debian_orders_text():
    assert python_order("2013b", "2014a") == -1  # not PEP 440; never a string comparison either
    assert python_order("1.0-legacy-2", "1.0-legacy-10") == -1


# ---- comparing two SBOMs -----------------------------------------------------------------------

def test_packages_are_added_removed_upgraded_and_downgraded_by_debian_order():
    old = sbom(packages=[deb("nginx", "1.22.1-9"), deb("libfoo1", "2.0-1"), deb("gone", "1.0"),
                         deb("rolled-back", "1.0-2"), deb("tzdata", "2024a-1", "amd64"), deb("same", "1.0")])
    new = sbom(packages=[deb("nginx", "1.22.1-10"), deb("libfoo1", "1:1.0-1"), deb("fresh", "0.1"),
                         deb("rolled-back", "1.0-1"), deb("tzdata", "2025b-0+deb12u1", "all"), deb("same", "1.0")])
    packages, python, files = compare(old, new)
    pairs = lambda changes: [(c.name, c.old, c.new) for c in changes]  # noqa: E731
    assert pairs(packages.added) == [("fresh", None, "0.1")]
    assert pairs(packages.removed) == [("gone", "1.0", None)]
    # string order would call the first two downgrades; tzdata moved from amd64 to all: still one package
    assert pairs(packages.upgraded) == [("libfoo1", "2.0-1", "1:1.0-1"), ("nginx", "1.22.1-9", "1.22.1-10"),
                                        ("tzdata", "2024a-1", "2025b-0+deb12u1")]
    assert pairs(packages.downgraded) == [("rolled-back", "1.0-2", "1.0-1")]
    assert packages.count() == 6 and python.count() == 0 and files.count() == 0


def test_a_package_installed_for_two_architectures_is_compared_per_architecture():
    old = sbom(packages=[deb("libc6", "2.36-9", "amd64"), deb("libc6", "2.36-9", "i386")])
    new = sbom(packages=[deb("libc6", "2.36-9+deb12u1", "amd64"), deb("libc6", "2.36-9", "i386")])
    packages, _, _ = compare(old, new)
    assert [(c.name, c.old, c.new) for c in packages.upgraded] == [("libc6:amd64", "2.36-9", "2.36-9+deb12u1")]


def test_python_packages_are_compared_per_directory_by_their_normalised_name():
    old = sbom(python=[PythonPackage("PyYAML", "6.0", "/usr/lib/python3/dist-packages"),
                       PythonPackage("requests", "2.31.0", VENV, "/opt/app/venv")])
    new = sbom(python=[PythonPackage("pyyaml", "6.0", "/usr/lib/python3/dist-packages"),
                       PythonPackage("requests", "2.32.3", VENV, "/opt/app/venv"),
                       PythonPackage("requests", "2.28.1", "/usr/lib/python3/dist-packages")])
    _, python, _ = compare(old, new)
    assert [(c.name, c.old, c.new, c.location) for c in python.upgraded] == [("requests", "2.31.0", "2.32.3", VENV)]
    assert [(c.name, c.location) for c in python.added] == [("requests", "/usr/lib/python3/dist-packages")]
    assert python.count() == 2  # PyYAML and pyyaml are one project


def test_uploaded_files_are_added_removed_and_changed_in_content_mode_or_owner():
    index = UploadedFile("/var/www/html/index.html", "a" * 64, "0644", "root:root")
    old = sbom(files=[index, UploadedFile("/etc/motd", "b" * 64, "0644", "root:root"),
                      UploadedFile("/usr/local/bin/tool", "c" * 64, "0755", "root:root"),
                      UploadedFile("/etc/gone", "d" * 64, "0644", "root:root")])
    new = sbom(files=[index, UploadedFile("/etc/motd", "e" * 64, "0644", "root:root"),
                      UploadedFile("/usr/local/bin/tool", "c" * 64, "0750", "root:staff"),
                      UploadedFile("/etc/new", "f" * 64, "0600", "root:root")])
    _, _, files = compare(old, new)
    assert [c.path for c in files.changed] == ["/etc/motd", "/usr/local/bin/tool"]
    assert [(c.path, c.new.sha256) for c in files.added] == [("/etc/new", "f" * 64)]
    assert [(c.path, c.old.sha256) for c in files.removed] == [("/etc/gone", "d" * 64)]


# ---- finding the images and their SBOMs --------------------------------------------------------

class Baked:
    """Images of recipe `web` in moto, tagged as a bake tags them, their SBOMs beside the manifests."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cloud = open_cloud(settings)
        self.client = self.cloud.ec2.client
        images = self.client.describe_images(Owners=["self"])["Images"]
        source = images[0]["ImageId"] if images else "ami-0123456789abcdef0"
        self.instance = self.client.run_instances(ImageId=source, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        self.count = 0

    def image(self, content: Sbom | None, *, recipe: str = "web", tag_digest: bool = True, finished: bool = True,
              write: bool = True) -> str:
        """One more image (moto gives images made in one second one creation date: names order them)."""
        self.count += 1
        build_id = f"b-2026010100000{self.count}-0a1b2c"
        tags = {T.RECIPE: recipe, T.BUILD_ID: build_id, **({T.COMPLETE: "true"} if finished else {})}
        if content is not None:
            content = Sbom(Image(**{**content.image.__dict__, "recipe": recipe, "build_id": build_id}),
                           content.packages, content.python, content.files)
            path = sbom_path(self.settings.manifests, recipe, build_id)
            written = content.write(path)
            if not write:
                path.unlink()
            if tag_digest:
                tags[T.SBOM] = written
        return self.client.create_image(InstanceId=self.instance, Name=f"{recipe}-{self.count}", TagSpecifications=[
            {"ResourceType": "image", "Tags": T.tag_list(tags)}])["ImageId"]


@pytest.fixture
def baked(tmp_path, monkeypatch):
    with moto_in_process(tmp_path, monkeypatch, REGION) as settings:
        write_recipe(settings.recipes, "web", "steps: []\n")
        write_recipe(settings.recipes, "app", "steps: []\n")
        yield Baked(settings)


OLD = sbom(packages=[deb("nginx", "1.22.1-9"), deb("curl", "7.88.1-10")],
           files=[UploadedFile("/var/www/html/index.html", "a" * 64, "0644", "root:root")])
NEW = sbom(packages=[deb("nginx", "1.22.1-9+deb12u1"), deb("curl", "7.88.1-10")],
           files=[UploadedFile("/var/www/html/index.html", "b" * 64, "0644", "root:root")])


def test_diff_compares_the_recipes_two_newest_finished_images(baked):
    baked.image(sbom(packages=[deb("nginx", "1.0")]))
    old, new = baked.image(OLD), baked.image(NEW)
    baked.image(NEW, finished=False)  # a bake that did not finish is no image of the recipe yet
    baked.image(sbom(packages=[deb("other", "1.0")]), recipe="app")
    diff = diff_recipe(baked.settings, "web", cloud=baked.cloud)
    assert (diff.old.ami_id, diff.new.ami_id) == (old, new)
    assert (diff.old.build_id, diff.new.build_id) == ("b-20260101000002-0a1b2c", "b-20260101000003-0a1b2c")
    assert [(c.name, c.old, c.new) for c in diff.packages.upgraded] == [("nginx", "1.22.1-9", "1.22.1-9+deb12u1")]
    assert [c.path for c in diff.files.changed] == ["/var/www/html/index.html"]
    assert diff.totals == {"packages": [2, 2], "python": [0, 0], "files": [1, 1]}


def test_diff_compares_the_images_named_or_the_one_before_the_image_named(baked):
    first, second, third = baked.image(OLD), baked.image(NEW), baked.image(OLD)
    named = diff_recipe(baked.settings, "web", first, third, cloud=baked.cloud)
    assert (named.old.ami_id, named.new.ami_id) == (first, third) and named.empty()
    before = diff_recipe(baked.settings, "web", to_ami=second, cloud=baked.cloud)
    assert (before.old.ami_id, before.new.ami_id) == (first, second)
    since = diff_recipe(baked.settings, "web", from_ami=first, cloud=baked.cloud)
    assert (since.old.ami_id, since.new.ami_id) == (first, third)


@pytest.mark.parametrize("arrange, flags, error, message", [
    (lambda b: None, {"recipe": "nope"}, ConfigError, r"recipes/nope.yaml: no such recipe 'nope' \(known: app, web\)$"),
    (lambda b: b.image(OLD), {}, BakeryError,
     r"^recipe web has 1 finished image\(s\) to compare; a diff needs two \(or name them: --from AMI --to AMI\)$"),
    (lambda b: None, {"from_ami": "ami-nothex"}, ConfigError,
     r"^--from 'ami-nothex': not an image id \(like ami-0123456789abcdef0\)$"),
    (lambda b: None, {"from_ami": "ami-0123456789abcdef9", "to_ami": "ami-0123456789abcdef9"}, ConfigError,
     r"^--from and --to are both ami-0123456789abcdef9: nothing to compare$"),
    (lambda b: b.image(OLD), {"to_ami": "ami-0000000000000000f"}, ConfigError,
     r"^--to ami-0000000000000000f: no such image in us-east-1$"),
    (lambda b: [b.image(OLD), b.image(OLD, recipe="app")], {"to_ami": "LAST"}, ConfigError,
     r"^--to ami-\w+: an image of recipe app, not of web$"),
    (lambda b: [b.image(OLD), b.image(OLD)], {"from_ami": "LAST"}, ConfigError,
     r"^--from ami-\w+ is the newest finished image of web: nothing to compare it with \(name one: --to AMI\)$"),
    (lambda b: [b.image(OLD), b.image(NEW, tag_digest=False)], {}, BakeryError,
     r"^ami-\w+ has no SBOM \(no bakery:sbom tag: baked before bakery collected SBOMs; "
     r"`invoke bake --recipe web --force` bakes one that has\)$"),
    (lambda b: [b.image(OLD), b.image(NEW, write=False)], {}, BakeryError,
     r"^ami-\w+: its SBOM .*/state/manifests/web-b-20260101000002-0a1b2c.sbom.cdx.json is not here "
     r"\(baked with another state_dir, or on another machine\)$"),
], ids=["unknown-recipe", "one-image", "bad-id", "same-image", "no-such-image", "other-recipe", "nothing-newer",
        "no-sbom-tag", "no-sbom-file"])
def test_diff_refuses_in_one_line(baked, arrange, flags, error, message):
    made = arrange(baked)
    last = made[-1] if isinstance(made, list) else made
    flags = {k: last if v == "LAST" else v for k, v in flags.items()}
    recipe = flags.pop("recipe", "web")
    with pytest.raises(error, match=message):
        diff_recipe(baked.settings, recipe, cloud=baked.cloud, **flags)


def test_a_second_checkout_with_an_empty_state_dir_finds_the_sboms_in_the_evidence_bucket(baked, tmp_path):
    import dataclasses

    from bakery.evidence.store import EvidenceStore

    first = dataclasses.replace(baked.settings, evidence_bucket="evidence")
    ec2 = open_cloud(first).ec2
    ec2.ensure_bucket("evidence")
    for build, ami in (("b-20260101000001-0a1b2c", baked.image(OLD)), ("b-20260101000002-0a1b2c", baked.image(NEW))):
        # what the bake's KeepSbom does with the SBOM it collected
        EvidenceStore(ec2, first.state / "evidence").keep(ami, "sbom", sbom_path(first.manifests, "web", build)
                                                          .read_bytes())
    second = dataclasses.replace(first, state_dir=tmp_path / "second-checkout")
    diff = diff_recipe(second, "web", cloud=open_cloud(second))
    assert [(c.name, c.new) for c in diff.packages.upgraded] == [("nginx", "1.22.1-9+deb12u1")]
    assert not (tmp_path / "second-checkout/manifests").exists()
    rows = [RebakeRow("web", "rebaked", "forced", diff.new.ami_id, 1.0)]
    rows[0].changes, rows[0].no_changes = changes(second, open_cloud(second), "web", diff.new.ami_id)
    assert rows[0].no_changes == "" and rows[0].changes.packages.upgraded == diff.packages.upgraded


def test_diff_trusts_an_sbom_only_with_the_digest_its_image_was_tagged_with(baked):
    baked.image(OLD)
    ami = baked.image(NEW)
    path = sbom_path(baked.settings.manifests, "web", "b-20260101000002-0a1b2c")
    path.write_text(path.read_text().replace("1.22.1-9+deb12u1", "1.22.1-9+deb12u9"))  # edited after the bake
    with pytest.raises(BakeryError, match=rf"^{re.escape(str(path))}: sha256 \w{{12}}\.\.\. is not the \w{{12}}\.\.\. "
                                          rf"{ami} was tagged with at bake time \(the file changed since\)$"):
        diff_recipe(baked.settings, "web", cloud=baked.cloud)


# ---- what it prints ----------------------------------------------------------------------------

def example_diff(baked):
    baked.image(sbom(packages=[deb("nginx", "1.22.1-9"), deb("gone", "1.0")],
                     python=[PythonPackage("requests", "2.31.0", VENV, "/opt/app/venv")],
                     files=[UploadedFile("/var/www/html/index.html", "a" * 64, "0644", "root:root")]))
    baked.image(sbom(packages=[deb("nginx", "1.22.1-9+deb12u1"), deb("fresh", "0.1")],
                     python=[PythonPackage("requests", "2.31.0", VENV, "/opt/app/venv")],
                     files=[UploadedFile("/var/www/html/index.html", "b" * 64, "0640", "root:root")]))
    return diff_recipe(baked.settings, "web", cloud=baked.cloud)


def test_the_diff_for_people_is_a_block_per_kind_of_content_and_a_line_per_change(baked):
    diff = example_diff(baked)
    assert tables.diff_text(diff).splitlines()[1:] == [
        "dpkg packages (2 -> 2): 1 added, 1 removed, 1 upgraded",
        "  added       fresh 0.1",
        "  removed     gone 1.0",
        "  upgraded    nginx 1.22.1-9 -> 1.22.1-9+deb12u1",
        "Python packages (1 -> 1): no change",
        "uploaded files (1 -> 1): 1 changed",
        f"  changed     /var/www/html/index.html sha256 {'a' * 12} 0644 root:root -> sha256 {'b' * 12} 0640 root:root"]
    assert re.fullmatch(r"web: ami-\w+ \(b-20260101000001-0a1b2c, 20\S+\) -> "
                        r"ami-\w+ \(b-20260101000002-0a1b2c, 20\S+\)", tables.diff_text(diff).splitlines()[0])


def test_the_diff_as_markdown_is_a_table_per_kind_of_content_that_changed(baked):
    diff = example_diff(baked)
    text = tables.diff_markdown(diff)
    assert text.startswith(f"#### web: `{diff.old.ami_id}` -> `{diff.new.ami_id}`\n")
    assert ("**dpkg packages** (2 -> 2): 1 added, 1 removed, 1 upgraded\n\n| change | name | from | to |\n"
            "|---|---|---|---|\n| added | fresh | - | 0.1 |\n| removed | gone | 1.0 | - |\n"
            "| upgraded | nginx | 1.22.1-9 | 1.22.1-9+deb12u1 |\n") in text
    assert "**Python packages** (1 -> 1): no change\n\n**uploaded files**" in text


def test_the_rebake_summary_says_what_changed_in_each_rebaked_image_and_why_not_when_it_cannot(baked):
    baked.image(OLD)
    ami = baked.image(NEW)
    first_app = baked.image(OLD, recipe="app")
    rows = [RebakeRow("web", "rebaked", "inputs changed", ami, 12.0),
            RebakeRow("db", "unchanged", "same", "ami-1", 0.1), RebakeRow("app", "rebaked", "forced", first_app, 10.0)]
    for row in rows:
        if row.decision == "rebaked":
            row.changes, row.no_changes = changes(baked.settings, baked.cloud, row.recipe, row.ami_id)
    summary = tables.rebake_markdown(rows)
    table, _, rest = summary.partition("\n\n### What changed\n\n")
    assert table.count("\n| ") == 3
    assert rest.startswith(tables.diff_markdown(rows[0].changes))
    assert rest.endswith(f"#### app: no diff ({first_app} is the first finished image of app: nothing before it "
                         "to compare with)")
    assert "| upgraded | nginx | 1.22.1-9 | 1.22.1-9+deb12u1 |" in rest
    assert json.loads(tables.rebake_json(rows))[0]["changes"]["packages"]["upgraded"][0]["new"] == "1.22.1-9+deb12u1"
    people = tables.rebake_table(rows).split("\n\n")
    assert people[1:] == [tables.diff_text(rows[0].changes), f"app: no diff ({rows[2].no_changes})"]


# ---- invoke diff -------------------------------------------------------------------------------

@pytest.mark.e2e
def test_invoke_diff_prints_the_changes_or_json_and_refuses_in_one_line(moto, tmp_path):
    settings = Settings(cloud="aws", region=REGION, endpoint_url=moto.url, project_dir=tmp_path,
                        recipes_dir=tmp_path / "recipes", state_dir=tmp_path / "state")
    write_recipe(settings.recipes, "web", "steps: []\n")
    baked = Baked(settings)
    old, new = baked.image(OLD), baked.image(NEW)
    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "aws", "INVOKE_BAKERY_ENDPOINT_URL": moto.url,
           "INVOKE_BAKERY_RECIPES_DIR": str(settings.recipes), "INVOKE_BAKERY_STATE_DIR": str(settings.state)}
    env.pop("BAKERY_DEBUG", None)

    def invoke(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "invoke", "diff", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)

    out = invoke("--recipe", "web")
    assert out.returncode == 0, out.stderr
    assert f"web: {old} (b-20260101000001-0a1b2c" in out.stdout
    assert "  upgraded    nginx 1.22.1-9 -> 1.22.1-9+deb12u1\n" in out.stdout
    as_json = json.loads(invoke("--recipe", "web", "--from", old, "--to", new, "--json").stdout)
    assert as_json["packages"]["upgraded"] == [{"name": "nginx", "old": "1.22.1-9", "new": "1.22.1-9+deb12u1",
                                                "location": None}]
    refused = invoke("--recipe", "web", "--to", "i-0123")
    assert (refused.returncode, refused.stdout, refused.stderr) == (
        2, "", "error: --to 'i-0123': not an image id (like ami-0123456789abcdef0)\n")
