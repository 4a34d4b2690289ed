"""Recipes as specifications: what loads, what is refused, and what the inputs hash notices."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.stub import Stubber

from bakery.cloud.ec2 import EC2
from bakery.errors import ConfigError
from bakery.bake.inputs import Inputs, inputs_hash, load_inputs
from bakery.config.recipe import Source, SourceFilter, load_recipe
from bakery.config.settings import Settings
from tests.support import write_recipe

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_tiers_are_layers_on_base_sharing_commons_settings():
    base = load_recipe(ROOT / "recipes", "base")
    assert base.source.filter is not None and [f.name for f in base.files] == ["common.yaml", "base.yaml"]
    for name in ("web", "app", "db"):
        tier = load_recipe(ROOT / "recipes", name)
        assert tier.source.recipe == "base" and tier.builder == base.builder
        assert not {s.name for s in tier.steps} & {s.name for s in base.steps}  # base's steps run in base only
        assert tier.image.ssm_parameter == f"/bakery/images/{name}" and tier.files[0].name == "common.yaml"


@pytest.mark.parametrize("files, message", [
    ({"web": "source: {recipe: nowhere}\nsteps: []\n"}, r"web.yaml:1: source.recipe: 'nowhere' names no recipe"),
    ({"web": "source: {recipe: tmpl}\n", "tmpl": "abstract: true\nsource: {ami: ami-12345678}\n"},
     r"web.yaml:1: source.recipe: 'tmpl' is abstract \(a template for extends\): it has no image to bake on"),
    ({"web": "source: {recipe: app}\n", "app": "extends: mid\n", "mid": "source: {recipe: web}\n"},
     r"web.yaml:1: source.recipe: layers loop: web -> app -> web"),
    ({"web": "source: {recipe: web}\n"}, r"web.yaml:1: source.recipe: layers loop: web -> web"),
    ({"web": "source: {recipe: base, ami: ami-12345678}\n"}, "give exactly one of ami, filter, ssm_parameter, recipe"),
])
def test_a_layer_on_a_recipe_that_cannot_have_an_image_is_refused_where_it_is_named(tmp_path, files, message):
    for name, body in files.items():
        write_recipe(tmp_path / "recipes", name, body)
    with pytest.raises(ConfigError, match=message):
        load_recipe(tmp_path / "recipes", "web")


@pytest.mark.parametrize("step, message", [
    ("{name: r, reboot: true, shell: 'true'}", "give exactly one of shell, script, upload, reboot, download"),
    ("{name: r, reboot: {timeout: 0}}", "reboot.timeout: Input should be greater than 0"),
    ("{name: r, reboot: {deadline: 5}}", r"r.yaml:3: steps\[0\].reboot.deadline: unknown key"),
    ("{name: u, upload: {source: s.sh, dest: /x}, expect_disconnect: true}",
     "expect_disconnect is for shell and script steps"),
])
def test_a_reboot_step_or_a_step_that_may_drop_the_connection_is_refused_when_malformed(tmp_path, step, message):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes/s.sh").write_text("true\n")
    write_recipe(tmp_path / "recipes", "r", f"source: {{ami: ami-12345678}}\nsteps:\n  - {step}\n")
    with pytest.raises(ConfigError, match=message):
        load_recipe(tmp_path / "recipes", "r")


def recipe(tmp_path, body: str, name: str = "r") -> Path:
    recipes = tmp_path / "recipes"
    write_recipe(recipes, name, body)
    return recipes


@pytest.mark.parametrize("body, message", [
    ("a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n", "alias bomb"),
    ("source: {ami: ami-12345678}\nsource: {ami: ami-12345678}\n", r"r.yaml:2: duplicate key 'source'"),
    ("base: &b {ami: ami-12345678}\nsource:\n  <<: *b\n", "merge keys"),
    ("- just\n- a list\n", "expected a mapping at the top level"),
    ("source: {ami: ami-12345678}\nsteps:\n  - {name: a, shell: x}\n  - {name: a, shell: y}\n", "duplicate step name 'a'"),
    ("source: {ami: ami-12345678}\nsteps:\n  - {name: a, shell: x, upload: {source: f, dest: /f}}\n",
     "give exactly one of shell, script, upload"),
    ("source: {ami: ami-12345678}\nsteps:\n  - {name: a, upload: {source: missing, dest: /f}}\n",
     r"r.yaml:3: steps\[0\].upload.source: 'missing' does not exist"),
    ("source: {ami: ami-12345678}\nsteps:\n  - {name: a, upload: {source: /etc/passwd, dest: /f}}\n",
     "must be relative"),
    ("source: {ami: ami-12345678}\nsteps:\n  - {name: a, upload: {source: x, dest: relative/path}}\n",
     "dest must be an absolute path"),
    ("source: {ami: ami-12345678}\nimage: {name: 'bad name!{{ recipe }}'}\n", "not a valid AMI name"),
    ("source: {ami: ami-12345678}\nimage: {tags: {'aws:x': y}}\n", "reserved prefix"),
    ("source: {ami: not-an-ami}\n", r"source.ami: String should match pattern"),
    ("source: {ami: ami-12345678}\nbuilder: {instance_types: [huge]}\n", "is not an instance type"),
    ("source: {ami: ami-12345678}\nbuilder: {ssh: {interface: host}}\n", "interface 'host' needs ssh.host"),
    ("source: {ami: ami-12345678}\nvariables: {recipe: {default: x}}\n", "name is reserved"),
    ("extends: r\nsource: {ami: ami-12345678}\n", "extends cycle: r -> r"),
    ("extends: nothere\n", "no such recipe 'nothere'"),
    ("description: no source\n", "r.yaml:1: source: required field is missing"),
    ("source: {ami: ami-12345678}\ndescription: 2027-02-30\n", r"r.yaml:2: '2027-02-30' is not a valid date: day is out"),
])
def test_malformed_recipes_are_refused_with_file_line_and_field(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipe(tmp_path, body), "r")


def test_oversized_and_binary_files_are_refused(tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "big.yaml").write_text("# x\n" * 100_000)
    with pytest.raises(ConfigError, match="more than the 262144-byte limit"):
        load_recipe(recipes, "big")
    (recipes / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_recipe(recipes, "bin")


def test_the_inputs_hash_changes_with_every_input_and_only_then(tmp_path):
    recipes = recipe(tmp_path, "source: {ami: ami-12345678}\nvariables: {v: {default: a}}\nsteps:\n"
                               "  - {name: up, upload: {source: files, dest: /f}}\n")
    (recipes / "files").mkdir()
    (recipes / "files/one").write_text("1")
    r = Inputs.of(load_recipe(recipes, "r"))
    h = inputs_hash(r, {"v": "a"}, "ami-12345678")
    assert h == inputs_hash(Inputs.of(load_recipe(recipes, "r")), {"v": "a"}, "ami-12345678")
    assert h != inputs_hash(r, {"v": "b"}, "ami-12345678")
    assert h != inputs_hash(r, {"v": "a"}, "ami-87654321")
    (recipes / "files/one").write_text("2")
    assert h != inputs_hash(r, {"v": "a"}, "ami-12345678")
    (recipes / "files/one").write_text("1")
    (recipes / "files/one").chmod(0o755)
    assert h != inputs_hash(r, {"v": "a"}, "ami-12345678")


def test_the_inputs_hash_covers_everything_an_upload_carries_and_nothing_it_does_not(tmp_path):
    import os

    recipes = recipe(tmp_path, "source: {ami: ami-12345678}\nsteps:\n"
                               "  - {name: up, upload: {source: files, dest: /f, mode: '0644'}}\n")
    (recipes / "files/sub").mkdir(parents=True)
    (recipes / "files/sub").chmod(0o755)  # whatever the umask
    (recipes / "files/one").write_text("1")
    r = Inputs.of(load_recipe(recipes, "r"))
    seen = [inputs_hash(r, {}, "ami-1")]
    for change in (lambda: (recipes / "files/sub/empty").mkdir(),            # an empty directory
                   lambda: (recipes / "files/sub").chmod(0o700),             # a directory's mode
                   lambda: (recipes / "files/link").symlink_to("one"),       # a symlink
                   lambda: ((recipes / "files/link").unlink(), (recipes / "files/link").symlink_to("sub"))):
        change()
        seen.append(inputs_hash(r, {}, "ami-1"))
    assert len(set(seen)) == len(seen)
    os.utime(recipes / "files/one", (1, 1))          # times do not travel
    (recipes / "files/one").chmod(0o755)             # it lands with mode 0644 whatever its own
    assert inputs_hash(r, {}, "ami-1") == seen[-1]


def test_an_upload_of_a_fifo_is_refused_naming_the_step(tmp_path):
    import os

    recipes = recipe(tmp_path, "source: {ami: ami-12345678}\nsteps:\n  - {name: up, upload: {source: files, dest: /f}}\n")
    (recipes / "files").mkdir()
    os.mkfifo(recipes / "files/pipe")
    with pytest.raises(ConfigError, match=r"r.yaml: steps\[0\].upload.source: '.*files/pipe' is a fifo; an upload "
                                          "carries regular files, directories and symlinks only"):
        inputs_hash(Inputs.of(load_recipe(recipes, "r")), {}, "ami-1")


def test_what_bakery_runs_on_the_builder_reaches_the_hash_through_its_image_format(tmp_path, monkeypatch):
    """A release that changes what bakery does to every image must rebake every image: this fails
    until bakery.bake.inputs.IMAGE_FORMAT goes up by one with the new digest pinned beside it."""
    import hashlib
    import io

    from bakery.bake import inputs
    from bakery.bake.hygiene import HYGIENE, LEFTOVER_CHECK
    from bakery.render.builder import builder_user_data
    from bakery.render.upload import entries, unpack_command, write_tar

    class Key:
        private_openssh, public_openssh = "PRIVATE", "ssh-ed25519 PUBLIC"

    sample = tmp_path / "sample"
    (sample / "d").mkdir(parents=True)
    (sample / "d/f").write_text("f\n")
    (sample / "link").symlink_to("d/f")
    for path, mode in ((sample, 0o755), (sample / "d", 0o750), (sample / "d/f", 0o644)):
        path.chmod(mode)
    stream = io.BytesIO()
    write_tar(stream, entries(sample, None, None, "sample"), "app:app")
    shaping = [HYGIENE, LEFTOVER_CHECK, builder_user_data(Key()), unpack_command("/d", True, "app:app"),
               unpack_command("/d/f", False, None), stream.getvalue().hex()]
    digest = hashlib.sha256("\0".join(shaping).encode()).hexdigest()[:16]
    assert (inputs.IMAGE_FORMAT, digest) == (3, "b8e681901d854e5b")

    recipes = recipe(tmp_path, "source: {ami: ami-12345678}\n")
    r = Inputs.of(load_recipe(recipes, "r"))
    before = inputs_hash(r, {}, "ami-1")
    monkeypatch.setattr(inputs, "IMAGE_FORMAT", inputs.IMAGE_FORMAT + 1)
    assert inputs_hash(r, {}, "ami-1") != before


def test_the_inputs_hash_of_the_shipped_recipes_is_stable_across_releases():
    """Existing images keep being found by a skip only while the hash of unchanged inputs stays the
    same; a change here makes every user's next scheduled rebake bake everything again."""
    from tests.support import ROOT

    shipped = {name: Inputs.of(load_recipe(ROOT / "recipes", name)) for name in ("base", "web")}
    got = {name: inputs_hash(i, i.resolve_vars({}), "ami-12345678") for name, i in shipped.items()}
    # web's changed once, on purpose, when it became a layer on base (issue 17): another image
    assert got == {"base": "08990f3a6bde6fde2761f7497acd038f", "web": "6720eca07dac7ce522cb7fed1eba64f8"}


def aged(*paths, seconds=60):
    import os
    import time

    for p in paths:
        os.utime(p, (time.time() - seconds, time.time() - seconds))


def test_remembered_inputs_are_the_validated_ones_and_hash_the_same(tmp_path):
    recipes = recipe(tmp_path, "source: {ami: ami-12345678}\nvariables: {v: {default: a}}\nsteps:\n"
                               "  - {name: up, upload: {source: files, dest: /f}}\n")
    (recipes / "files").mkdir()
    (recipes / "files/one").write_text("1")
    aged(recipes / "r.yaml", recipes / "files")
    fresh = load_inputs(recipes, tmp_path / "state", "r")
    assert fresh.recipe is not None and (tmp_path / "state/inputs/r.json").is_file()
    again = load_inputs(recipes, tmp_path / "state", "r")
    assert again.recipe is None and again == fresh  # remembered: no models loaded
    assert inputs_hash(again, {"v": "a"}, "ami-1") == inputs_hash(fresh, {"v": "a"}, "ami-1")
    assert again.full().name == "r"


def test_a_changed_or_missing_file_is_validated_again(tmp_path):
    recipes = recipe(tmp_path, "source: {ami: ami-12345678}\nsteps:\n  - {name: s, script: s.sh}\n")
    (recipes / "s.sh").write_text("true\n")
    aged(recipes / "r.yaml", recipes / "s.sh")
    load_inputs(recipes, tmp_path / "state", "r")
    (recipes / "r.yaml").write_text("source: {ami: ami-87654321}\nsteps:\n  - {name: s, script: s.sh}\n")
    aged(recipes / "r.yaml")
    assert load_inputs(recipes, tmp_path / "state", "r").source == {"ami": "ami-87654321", "filter": None,
                                                                    "ssm_parameter": None, "recipe": None}
    (recipes / "s.sh").unlink()
    with pytest.raises(ConfigError, match="s.sh' does not exist"):
        load_inputs(recipes, tmp_path / "state", "r")


def test_a_file_changed_just_before_it_was_remembered_is_not_trusted(tmp_path):
    recipes = recipe(tmp_path, "source: {ami: ami-12345678}\n")
    load_inputs(recipes, tmp_path / "state", "r")  # r.yaml was written this very second
    assert load_inputs(recipes, tmp_path / "state", "r").recipe is not None


def test_a_remembered_recipe_skips_without_loading_the_models(tmp_path):
    import subprocess
    import sys

    from tests.support import ROOT

    recipes = recipe(tmp_path, "source: {ami: ami-12345678}\nsteps:\n  - {name: s, shell: 'true'}\n")
    aged(recipes / "r.yaml")
    load_inputs(recipes, tmp_path / "state", "r")
    code = ("import sys; from pathlib import Path; from bakery.bake.inputs import load_inputs, inputs_hash; "
            f"i = load_inputs(Path({str(recipes)!r}), Path({str(tmp_path / 'state')!r}), 'r'); "
            "inputs_hash(i, i.resolve_vars({}), 'ami-1'); "
            "print(sorted(m for m in ('pydantic', 'jinja2', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def images(*specs):
    return {"Images": [{"ImageId": i, "Name": n, "CreationDate": d, "State": "available", "RootDeviceName": "/dev/xvda",
                        "OwnerId": "136693071363", **({"DeprecationTime": dep} if dep else {})}
                       for i, n, d, dep in specs]}


def stubbed(response):
    ec2 = EC2(Settings(cloud="aws", region="us-east-1", endpoint_url="http://127.0.0.1:9"))
    stub = Stubber(ec2.client)
    stub.add_response("describe_images", response)
    stub.activate()
    return ec2


def test_the_source_filter_takes_the_newest_match_and_skips_deprecated_images():
    ec2 = stubbed(images(("ami-00000001", "debian-12-amd64-20260101", "2026-01-01T00:00:00.000Z", None),
                         ("ami-00000003", "debian-12-amd64-20260301", "2026-03-01T00:00:00.000Z", "2026-04-01T00:00:00.000Z"),
                         ("ami-00000002", "debian-12-amd64-20260201", "2026-02-01T00:00:00.000Z", None)))
    src = ec2.resolve_source(Source(filter=SourceFilter(name="debian-12-amd64-*", owners=["136693071363"])).model_dump())
    assert src.id == "ami-00000002"


def test_an_ambiguous_filter_without_most_recent_is_an_error():
    ec2 = stubbed(images(("ami-00000001", "debian-12-a", "2026-01-01T00:00:00.000Z", None),
                         ("ami-00000002", "debian-12-b", "2026-02-01T00:00:00.000Z", None)))
    with pytest.raises(ConfigError, match="2 images match"):
        ec2.resolve_source(Source(filter=SourceFilter(name="debian-12-*", owners=["self"], most_recent=False)).model_dump())


def test_remembered_digests_are_trusted_only_while_the_file_is_unchanged_and_not_racy(tmp_path):
    import json
    import os
    import time

    from bakery.bake.digests import DigestCache

    f, store = tmp_path / "big.bin", tmp_path / "digests.json"
    f.write_bytes(b"x" * 1000)
    old = time.time() - 60
    os.utime(f, (old, old))
    real = DigestCache(store).sha256(f)
    cache = DigestCache(store)
    cache.sha256(f)
    cache.save()
    # plant a marker digest: returned only if the cache is trusted instead of reading the file
    entries = json.loads(store.read_text())
    entries[str(f.resolve())][1] = "ab" * 32
    store.write_text(json.dumps(entries))
    assert DigestCache(store).sha256(f) == bytes.fromhex("ab" * 32)   # unchanged file: not re-read
    f.write_bytes(b"y" * 1000)                                         # same size, new content
    assert DigestCache(store).sha256(f) != bytes.fromhex("ab" * 32)   # stat changed: re-read
    fresh = DigestCache(store)
    assert fresh.sha256(f) == fresh.sha256(f) != real                  # written just now: racy, re-read


# ---- checkpoints (bakery/bake/checkpoints.py) ------------------------------------------------

def test_each_steps_checkpoint_hash_covers_that_step_and_everything_before_it_and_nothing_after(tmp_path):
    from bakery.bake.inputs import prefix_hashes

    body = ("source: {ami: ami-12345678}\nvariables: {v: {default: a}}\nimage: {name: 'x-{{ timestamp }}'}\n"
            "steps:\n  - {name: one, shell: 'echo 1'}\n  - {name: two, upload: {source: files, dest: /f}}\n"
            "  - {name: three, shell: 'echo 3'}\n")
    recipes = recipe(tmp_path, body)
    (recipes / "files").mkdir()
    (recipes / "files/f").write_text("1")

    def hashes(text: str = body, variables=None, source="ami-12345678") -> list[str]:
        (recipes / "r.yaml").write_text(text)
        return prefix_hashes(Inputs.of(load_recipe(recipes, "r")), variables or {"v": "a"}, source)

    h = hashes()
    assert len(h) == 3 and len(set(h)) == 3
    assert hashes(body.replace("echo 3", "echo three")) [:2] == h[:2] != hashes(body.replace("echo 3", "echo x"))
    assert hashes(body.replace("echo 1", "echo one")) [0] != h[0]
    (recipes / "files/f").write_text("2")  # step two's file: two and three change, one does not
    changed = hashes()
    assert changed[0] == h[0] and changed[1] != h[1] and changed[2] != h[2]
    (recipes / "files/f").write_text("1")
    assert hashes(variables={"v": "b"})[0] != h[0] and hashes(source="ami-87654321")[0] != h[0]
    # what only says what happens after the last step is in no checkpoint's hash
    assert hashes(body.replace("x-{{ timestamp }}", "y-{{ timestamp }}")) == h
    assert hashes(body.replace("{name: one, shell: 'echo 1'}", "{name: one, shell: 'echo 1', checkpoint: true}")) == h


def test_marking_a_step_as_a_checkpoint_changes_no_inputs_hash(tmp_path):
    plain = "source: {ami: ami-12345678}\nsteps:\n  - {name: one, shell: 'true'}\n  - {name: two, shell: 'true'}\n"
    recipes = recipe(tmp_path, plain)
    before = inputs_hash(Inputs.of(load_recipe(recipes, "r")), {}, "ami-12345678")
    (recipes / "r.yaml").write_text(plain.replace("shell: 'true'}", "shell: 'true', checkpoint: true}", 1))
    assert load_recipe(recipes, "r").steps[0].checkpoint
    assert inputs_hash(Inputs.of(load_recipe(recipes, "r")), {}, "ami-12345678") == before


@pytest.mark.parametrize("config, after, days", [
    ({"cloud": "local"}, 5.0, 7), ({"cloud": "aws"}, None, 7),
    ({"cloud": "local", "checkpoint_after": "off"}, None, 7),
    ({"cloud": "aws", "checkpoint_after": "30", "checkpoint_days": "2"}, 30.0, 2),
])
def test_checkpoints_follow_every_long_run_of_steps_on_the_local_cloud_and_marked_steps_only_on_aws(
        config, after, days):
    settings = Settings.load(config, environ={})
    assert (settings.checkpoint_after, settings.checkpoint_days) == (after, days)
    assert Settings(cloud=config["cloud"]).checkpoint_after == {"local": 5.0, "aws": None}[config["cloud"]]


@pytest.mark.parametrize("config, message", [
    ({"checkpoint_after": "soon"}, "bakery.checkpoint_after: 'soon' is not a number of seconds"),
    ({"checkpoint_after": "-3"}, "bakery.checkpoint_after: '-3' is not a number of seconds"),
    ({"checkpoint_days": "0"}, "bakery.checkpoint_days: '0' is not a number of days from 1 to 365"),
])
def test_bad_checkpoint_settings_are_refused_in_one_line(config, message):
    with pytest.raises(ConfigError, match=message):
        Settings.load(config, environ={})
