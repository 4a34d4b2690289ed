"""The invoke front door: exit codes, one-line errors, JSON on stdout, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support import ROOT, leftovers, recipe_text, write_recipe

pytestmark = pytest.mark.e2e


def invoke(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, **kw)


@pytest.fixture
def cli_env(moto, tmp_path):
    recipes = tmp_path / "recipes"
    env = {**os.environ, "INVOKE_BAKERY_ENDPOINT_URL": moto.url, "INVOKE_BAKERY_RECIPES_DIR": str(recipes),
           "INVOKE_BAKERY_ENVS_DIR": str(tmp_path / "envs"),
           "INVOKE_BAKERY_STATE_DIR": str(tmp_path / "state"), "INVOKE_BAKERY_CLOUD": "aws"}
    env.pop("BAKERY_DEBUG", None)
    return env, recipes


@pytest.mark.parametrize("task, flag", [("bake", "--recipe"), ("launch", "--env"), ("render", "--env and --tier"),
                                        ("failover", "--tier"), ("clean", "--build-id"), ("prune", "--recipe")])
def test_task_help_after_the_task_name_and_missing_flags_are_one_line(cli_env, moto, task, flag):
    env, _ = cli_env
    for help_flag in ("--help", "-h"):
        helped = invoke([task, help_flag], env)
        assert helped.returncode == 0 and f"{flag.split()[0]}=" in helped.stdout, helped.stderr
    args = ["--env", "prod"] if task == "failover" else []
    missing = invoke([task, *args], env)
    assert (missing.returncode, missing.stderr.strip()) == (2, f"error: missing {flag} (see: invoke --help TASK)")
    assert leftovers(moto.client()) == {}


def test_an_unknown_aws_profile_is_one_line(cli_env):
    env, _ = cli_env
    out = invoke(["images"], {**env, "INVOKE_BAKERY_PROFILE": "no-such-profile"})
    assert (out.returncode, out.stderr.strip()) == (
        2, "error: AWS profile 'no-such-profile' not found (bakery.profile / AWS_PROFILE; see ~/.aws/config)")


def test_list_shows_every_task_with_help(cli_env):
    env, _ = cli_env
    out = invoke(["--list"], env)
    assert out.returncode == 0
    for name in ("bake", "images", "validate", "clean"):
        assert name in out.stdout
    helped = invoke(["--help", "bake"], env)
    for flag in ("--recipe", "--var", "--force", "--keep-on-error", "--json"):
        assert flag in helped.stdout


def test_bake_prints_the_manifest_as_json_and_images_lists_it(cli_env, builder_host):
    env, recipes = cli_env
    write_recipe(recipes, "web", recipe_text(builder_host.port, "  - name: hi\n    shell: echo hi\n"))
    out = invoke(["bake", "--recipe", "web", "--json"], env)
    assert out.returncode == 0, out.stderr
    manifest = json.loads(out.stdout)
    assert manifest["ami_id"].startswith("ami-") and manifest["steps"][0]["name"] == "hi"
    assert "hi | hi" in out.stderr  # progress and step output on stderr

    again = invoke(["bake", "--recipe", "web"], env)
    assert again.returncode == 0 and "unchanged" in again.stdout

    listed = json.loads(invoke(["images", "--json"], env).stdout)
    assert [r["ami_id"] for r in listed] == [manifest["ami_id"]]
    assert listed[0]["recipe"] == "web" and listed[0]["inputs_hash"] == manifest["inputs_hash"]


@pytest.mark.parametrize("args, message", [
    (["bake", "--recipe", "nope"], "no such recipe 'nope'"),
    (["bake", "--recipe", "web", "--var", "novalue"], "--var 'novalue': expected KEY=VALUE"),
    (["bake", "--recipe", "web", "--var", "x=1"], "variable 'x' is not declared"),
])
def test_bad_input_is_one_line_nonzero_and_no_traceback(cli_env, builder_host, moto, args, message):
    env, recipes = cli_env
    write_recipe(recipes, "web", recipe_text(builder_host.port, "  - name: hi\n    shell: echo hi\n"))
    out = invoke(args, env)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in out.stderr
    assert leftovers(moto.client()) == {}


def test_validate_reports_every_broken_recipe(cli_env):
    env, recipes = cli_env
    write_recipe(recipes, "good", "source: {ami: ami-12345678}\n")
    write_recipe(recipes, "bad1", "source: {ami: ami-12345678}\ncolour: red\n")
    write_recipe(recipes, "bad2", "source: [\n")
    out = invoke(["validate"], env)
    assert out.returncode == 2
    assert "bad1.yaml:2: colour: unknown key" in out.stdout and "bad2.yaml" in out.stdout
    assert "2 problem(s) in 3 file(s)" in out.stderr


def test_the_shipped_recipes_and_environments_validate(moto):
    env = {**os.environ}
    out = invoke(["validate"], env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "8 file(s) valid" in out.stdout  # 5 recipes (one a template), 3 environments (each tier's user data rendered)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_step_cleans_up_everything(cli_env, builder_host, moto, sig):
    env, recipes = cli_env
    write_recipe(recipes, "web", recipe_text(builder_host.port, "  - name: long\n    shell: echo started; sleep 30\n"))
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "bake", "--recipe", "web"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    seen = ""
    while "long | started" not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    assert "long | started" in seen
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert leftovers(moto.client()) == {}


def test_validate_and_render_start_no_cloud_and_need_no_endpoint(tmp_path):
    """On the shipped recipes and environments, with the local cloud as the cloud and a data dir
    where it has never run: both work offline, render marks the image id it cannot know, and no
    endpoint, base image or instance appears."""
    data = tmp_path / "data"
    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "local", "INVOKE_BAKERY_DATA_DIR": str(data),
           "INVOKE_BAKERY_STATE_DIR": str(tmp_path / "state"), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    validated = invoke(["validate"], env)
    assert validated.returncode == 0 and validated.stdout.startswith("ok: "), validated.stdout + validated.stderr
    rendered = invoke(["render", "--env", "prod", "--tier", "web"], env)
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout.startswith(("#cloud-config", "Content-Type: multipart")) and "ami-00000000000000000" in rendered.stdout
    assert rendered.stderr.strip() == ("note: image_id is the placeholder ami-00000000000000000: recipe web's newest "
                                       "image is only known at launch (the rest is exactly what launch sends)")
    assert not data.exists()


def test_render_prints_one_part_as_cloud_init_reads_it_and_checks_the_cloud_configs(tmp_path):
    """A MIME document is what EC2 receives, and not what `cloud-init schema -c` reads: --part gives
    one part exactly as packed, --check checks every cloud-config part, offline."""
    import email

    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "local", "INVOKE_BAKERY_DATA_DIR": str(tmp_path / "data"),
           "INVOKE_BAKERY_STATE_DIR": str(tmp_path / "state")}
    whole = invoke(["render", "--env", "prod", "--tier", "web"], env)
    assert whole.returncode == 0 and whole.stdout.startswith("Content-Type: multipart"), whole.stderr
    packed = {p.get_filename(): p.get_payload(decode=True).decode()
              for p in email.message_from_string(whole.stdout).walk() if p.get_filename()}
    assert list(packed) == ["01-web.yaml", "02-motd.sh"]
    for wanted in ("01-web.yaml", "web.yaml.j2", "1"):
        one = invoke(["render", "--env", "prod", "--tier", "web", "--part", wanted], env)
        assert one.returncode == 0 and one.stdout == packed["01-web.yaml"], (wanted, one.stderr)
    assert one.stdout.startswith("#cloud-config\n")
    shell = invoke(["render", "--env", "prod", "--tier", "web", "--part", "scripts/motd.sh.j2"], env)
    assert shell.stdout == packed["02-motd.sh"]

    wrong = invoke(["render", "--env", "prod", "--tier", "web", "--part", "motd"], env)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip().splitlines()[-1].endswith(
        "envs/prod.yaml: tiers.web: --part: no part 'motd'; the parts are: 1 01-web.yaml (web.yaml.j2), "
        "2 02-motd.sh (scripts/motd.sh.j2)")

    checked = invoke(["render", "--env", "prod", "--tier", "web", "--check"], env)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines()[0].startswith("ok: 01-web.yaml: valid (cloud-init 22.4 schema (vendored)")
    assert len(checked.stdout.splitlines()) == 1  # the shell part is not cloud-config
    assert not (tmp_path / "data").exists()  # offline: no cloud started


def kept_build(env, recipes, builder_host) -> str:
    """`bake --keep-on-error` of a recipe whose step fails: the build id it printed."""
    write_recipe(recipes, "web", recipe_text(builder_host.port, "  - name: breaks\n    shell: exit 1\n"))
    out = invoke(["bake", "--recipe", "web", "--keep-on-error"], env)
    assert out.returncode != 0 and "invoke clean --build-id " in out.stderr, out.stderr
    return out.stderr.split("invoke clean --build-id ")[1].split()[0]


@pytest.mark.parametrize("remove", [["clean", "--build-id", "{build}"], ["janitor", "--older-than", "0s"]])
def test_removing_a_kept_build_removes_its_private_key_too(cli_env, builder_host, moto, tmp_path, remove):
    env, recipes = cli_env
    build = kept_build(env, recipes, builder_host)
    keys = tmp_path / "state" / "keys"
    assert [p.name for p in keys.iterdir()] == [build]  # kept with the builder: `ssh -i` needs it

    dry = invoke([arg.format(build=build) for arg in remove] + ["--dry-run"], env)
    assert dry.returncode == 0 and f"private key {keys / build}" in dry.stdout, dry.stdout + dry.stderr
    assert [p.name for p in keys.iterdir()] == [build]
    out = invoke([arg.format(build=build) for arg in remove], env)
    assert out.returncode == 0, out.stderr
    assert f"private key {keys / build}" in out.stdout
    assert list(keys.iterdir()) == [] and leftovers(moto.client()) == {}


def test_clean_of_a_build_id_that_is_a_path_touches_no_file(cli_env, moto, tmp_path):
    env, _ = cli_env
    precious = tmp_path / "state" / "precious"
    precious.mkdir(parents=True)
    out = invoke(["clean", "--build-id", "../precious"], env)
    assert out.returncode == 2 and out.stderr.strip().startswith("error: --build-id '../precious': "), out.stderr
    assert precious.is_dir()


def test_prune_spares_an_image_named_only_by_a_late_launch_template_version(cli_env, builder_host, moto):
    """Every version counts, however many: moto answers DescribeLaunchTemplateVersions with its
    first 15 and no NextToken, as an endpoint that pages its own way might."""
    env, recipes = cli_env
    write_recipe(recipes, "web", recipe_text(builder_host.port, "  - name: hi\n    shell: echo hi\n"))
    amis = []
    for _ in range(2):
        out = invoke(["bake", "--recipe", "web", "--force", "--json"], env)
        assert out.returncode == 0, out.stderr
        amis.append(json.loads(out.stdout)["ami_id"])
        time.sleep(1.05)  # distinct creation times (one-second resolution)
    old, new = amis
    ec2 = moto.client()
    ec2.create_launch_template(LaunchTemplateName="pinned", LaunchTemplateData={"ImageId": new})
    for _ in range(18):
        ec2.create_launch_template_version(LaunchTemplateName="pinned", LaunchTemplateData={"ImageId": new})
    ec2.create_launch_template_version(LaunchTemplateName="pinned", LaunchTemplateData={"ImageId": old})  # version 20

    out = invoke(["prune", "--recipe", "web", "--keep", "1", "--json"], env)
    assert out.returncode == 0, out.stderr
    [report] = json.loads(out.stdout)
    assert report["removed"] == [] and report["spared"] == {old: "launch template pinned version 20"}
    assert len(ec2.describe_images(ImageIds=[old])["Images"]) == 1


def test_a_baked_image_does_not_carry_the_builders_hostname(cli_env, builder_host):
    from tests.support import BUILDER_HOSTNAME

    env, recipes = cli_env
    write_recipe(recipes, "web", recipe_text(builder_host.port, "  - name: name\n    shell: hostname\n"))
    out = invoke(["bake", "--recipe", "web"], env)
    assert out.returncode == 0, out.stderr
    assert f"name | {BUILDER_HOSTNAME}" in out.stderr  # the builder had its own name while the steps ran
    assert (builder_host.fs / "etc/hostname").read_text() == "localhost\n"  # an instance sets its own at boot
    assert (builder_host.fs / "etc/hosts").read_text() == (
        "# written by cloud-init\n127.0.0.1 localhost\n::1 localhost ip6-localhost\n")


GREET = ("variables:\n  who: {description: 'required, no default'}\n  punctuation: {default: '!'}\n",
         "  - name: greet\n    shell: echo hello {{ who }}{{ punctuation }}\n")


def test_bake_takes_a_var_file_and_var_wins_over_it(cli_env, builder_host, tmp_path):
    env, recipes = cli_env
    write_recipe(recipes, "web", recipe_text(builder_host.port, GREET[1], GREET[0]))
    (tmp_path / "vars.yaml").write_text("who: world\npunctuation: '?'\n")
    out = invoke(["bake", "--recipe", "web", "--var-file", str(tmp_path / "vars.yaml"), "--var", "punctuation=.",
                  "--json"], env)
    assert out.returncode == 0, out.stderr
    assert "greet | hello world." in out.stderr
    assert json.loads(out.stdout)["variables"] == {"who": "world", "punctuation": "."}


@pytest.mark.parametrize("text, message", [
    ("who: [a, b]\n", "vars.yaml:1: who: expected one value (text, number or boolean), got a list"),
    ("who: world\nWho: x\n", "vars.yaml:2: Who: not a variable name"),
    ("- who\n", "vars.yaml:1: expected a mapping of variable names to values, got list"),
    ("who: world\nnobody: 1\n", "variable 'nobody' is not declared by recipe 'web'"),
])
def test_a_bad_var_file_is_one_line_and_creates_nothing(cli_env, builder_host, moto, tmp_path, text, message):
    env, recipes = cli_env
    write_recipe(recipes, "web", recipe_text(builder_host.port, GREET[1], GREET[0]))
    (tmp_path / "vars.yaml").write_text(text)
    out = invoke(["bake", "--recipe", "web", "--var-file", str(tmp_path / "vars.yaml")], env)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert leftovers(moto.client()) == {} and not (tmp_path / "state" / "keys").exists()


def test_rebake_gives_each_variable_to_the_recipes_that_declare_it(cli_env, builder_host, moto, tmp_path):
    env, recipes = cli_env
    write_recipe(recipes, "web", recipe_text(builder_host.port, GREET[1], GREET[0]))
    write_recipe(recipes, "db", recipe_text(builder_host.port, "  - name: plain\n    shell: echo db\n"))
    (tmp_path / "vars.yaml").write_text("who: world\n")

    failed = invoke(["rebake", "--json"], env)  # web's required variable is not given: web alone fails
    assert failed.returncode != 0
    rows = {r["recipe"]: r for r in json.loads(failed.stdout)}
    assert rows["db"]["decision"] == "rebaked" and rows["web"]["decision"] == "failed"
    assert "variable 'who' has no default" in rows["web"]["reason"]

    refused = invoke(["rebake", "--var-file", str(tmp_path / "vars.yaml"), "--var", "nobody=1"], env)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "error: --var/--var-file nobody: no recipe to rebake declares it (db, web)")

    out = invoke(["rebake", "--var-file", str(tmp_path / "vars.yaml"), "--json"], env)
    assert out.returncode == 0, out.stderr
    rows = {r["recipe"]: r["decision"] for r in json.loads(out.stdout)}
    assert rows == {"db": "unchanged", "web": "rebaked"} and "[web] " in out.stderr
    assert "greet | hello world!" in out.stderr


def test_an_abstract_recipe_is_extended_but_never_baked(cli_env, builder_host, moto):
    env, recipes = cli_env
    write_recipe(recipes, "template", "abstract: true\n" + recipe_text(builder_host.port,
                                                                        "  - name: shared\n    shell: echo shared\n"))
    write_recipe(recipes, "web", "extends: template\nsteps:\n  - name: own\n    shell: echo own\n")
    assert json.loads(invoke(["rebake", "--names"], env).stdout) == ["web"]
    out = invoke(["rebake", "--json"], env)
    assert out.returncode == 0, out.stderr
    assert [r["recipe"] for r in json.loads(out.stdout)] == ["web"]
    assert "shared | shared" in out.stderr and "own | own" in out.stderr  # the template's steps run first
    for args in (["bake", "--recipe", "template"], ["rebake", "--recipe", "template"]):
        refused = invoke(args, env)
        assert refused.returncode == 2 and "recipe 'template' is abstract (a template for extends)" in refused.stderr
    assert invoke(["validate"], env).returncode == 0  # validated like any recipe
    assert [i["Tags"] for i in moto.client().describe_images(
        Filters=[{"Name": "tag:bakery:recipe", "Values": ["template"]}])["Images"]] == []


def test_image_description_and_tags_are_rendered_like_its_name(cli_env, builder_host, moto):
    env, recipes = cli_env
    image = ("variables: {release: {default: '1.0'}}\nimage:\n  name: \"{{ recipe }}-{{ release }}-{{ timestamp }}\"\n"
             "  description: \"{{ recipe }} release {{ release }}\"\n"
             "  tags: {release: \"{{ release }}\", build: \"{{ build_id }}\", team: platform}\n")
    write_recipe(recipes, "web", recipe_text(builder_host.port, "  - name: hi\n    shell: echo hi\n", image))
    out = invoke(["bake", "--recipe", "web", "--var", "release=2.5", "--json"], env)
    assert out.returncode == 0, out.stderr
    manifest = json.loads(out.stdout)
    [ami] = moto.client().describe_images(ImageIds=[manifest["ami_id"]])["Images"]
    tags = {t["Key"]: t["Value"] for t in ami["Tags"]}
    assert ami["Description"] == "web release 2.5" and ami["Name"].startswith("web-2.5-")
    assert (tags["release"], tags["build"], tags["team"]) == ("2.5", manifest["build_id"], "platform")


@pytest.mark.parametrize("extra, steps, where", [
    ("", "  - name: \"install {{ pkg }}\"\n    shell: echo hi\n", "web.yaml:8: steps[0].name"),
    ("variables: {pkg: {default: \"{{ recipe }}\"}}\n", "  - name: hi\n    shell: echo hi\n",
     "web.yaml:7: variables.pkg.default"),
    ("image: {tags: {\"{{ recipe }}\": x}}\n", "  - name: hi\n    shell: echo hi\n", "web.yaml:7: image.tags.{{ recipe }}"),
    ("checks: {commands: [{name: \"{% if x %}a{% endif %}\", shell: 'true'}]}\n", "  - name: hi\n    shell: echo hi\n",
     "web.yaml:7: checks.commands[0].name"),
])
def test_a_jinja_expression_where_nothing_is_rendered_is_refused(cli_env, builder_host, moto, extra, steps, where):
    env, recipes = cli_env
    write_recipe(recipes, "web", recipe_text(builder_host.port, steps, extra))
    out = invoke(["bake", "--recipe", "web"], env)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert where + ": " in out.stderr and "is not rendered as a template" in out.stderr
    assert leftovers(moto.client()) == {}
