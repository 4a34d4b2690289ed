"""Generated input through the command line, in process (hypothesis).

Recipes, environments, user data templates, settings and flag values are generated around a good
project (a good file with one to three fields changed to hostile values, or hostile text) and fed
to invoke's own Program with bakery's namespace: the entry `invoke` uses, without a process per
input. Whatever comes in, the outcome is one of:

- accepted offline (`validate`, `render` found nothing wrong): exit 0;
- refused: exit 2 and exactly one line, `error: FILE[:LINE]: FIELD: problem` (or the setting or
  flag for those loaders), never a traceback or an internal error;
- let through to a cloud: the offline pass found nothing to refuse, and the cloud is reached.
  Here no cloud exists: opening the local cloud, building an EC2 client or exec'ing ssh stops the
  run (CloudReached), so nothing can be created whatever the input says.

Each loader runs 2,000 inputs; most must be refused (a generator that only made valid input
would prove nothing).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import ROOT

EXAMPLES = int(os.environ.get("BAKERY_FUZZ_EXAMPLES", "2000"))  # fewer while working on a generator
RUNS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

GOOD_RECIPE = {"source": {"ami": "ami-12345678"}, "variables": {"v": {"default": "x"}},
               "steps": [{"name": "hi", "shell": "echo {{ v }}"},
                         {"name": "up", "upload": {"source": "files/site", "dest": "/srv/site"}}]}
GOOD_ENV = {"network": {"vpc": {"cidr": "10.0.0.0/16"},
                        "subnets": {"a": {"cidr": "10.0.1.0/24", "az": "us-east-1a"}},
                        "security_groups": {"web": {"ingress": [{"ports": 80, "cidr": "0.0.0.0/0"}]}},
                        "elastic_ips": {"edge": {}}},
            "tiers": {"web": {"image": {"recipe": "web"}, "instance_type": "t3.small",
                              "user_data": {"parts": ["web.yaml.j2"], "variables": {"greeting": "hi"}},
                              "interfaces": [{"device_index": 0, "subnet": "a", "security_groups": ["web"],
                                              "private_ip": "10.0.1.10", "elastic_ip": {"name": "edge"}}],
                              "health_check": {"port": 80}}}}
GOOD_TEMPLATE = "#cloud-config\nwrite_files:\n  - {path: /etc/greeting, content: {{ greeting | yaml }}}\n"

RECIPE_FIELDS = [
    ("source",), ("source", "ami"), ("source", "filter"), ("source", "ssm_parameter"), ("steps",), ("steps", 0),
    ("steps", 0, "name"), ("steps", 0, "shell"), ("steps", 0, "timeout"), ("steps", 0, "retries"),
    ("steps", 0, "env"), ("steps", 0, "env", "A"), ("steps", 0, "on_failure"), ("steps", 0, "script"),
    ("steps", 1, "upload"), ("steps", 1, "upload", "source"), ("steps", 1, "upload", "dest"),
    ("steps", 1, "upload", "mode"), ("steps", 1, "upload", "dir_mode"), ("steps", 1, "upload", "owner"),
    ("steps", 2), ("builder",), ("builder", "instance_types"), ("builder", "ssh", "port"),
    ("builder", "ssh", "user"), ("builder", "ssh", "allowed_cidr"), ("builder", "ssh", "bastion"),
    ("builder", "ssh", "bastion", "key_file"), ("builder", "root_volume", "size_gb"),
    ("builder", "root_volume", "type"), ("builder", "root_volume", "iops"), ("image", "name"), ("image", "tags"),
    ("image", "tags", "k"), ("image", "description"), ("variables",), ("variables", "v"),
    ("variables", "v", "default"), ("variables", "w"), ("checks",), ("checks", "environment"), ("checks", "tier"),
    ("checks", "commands"), ("publish",), ("publish", "regions"), ("publish", "share_with"), ("extends",),
    ("description",), ("colour",),
]
ENV_FIELDS = [
    ("network",), ("network", "vpc", "cidr"), ("network", "subnets"), ("network", "subnets", "a", "cidr"),
    ("network", "subnets", "a", "az"), ("network", "subnets", "b"), ("network", "security_groups", "web"),
    ("network", "security_groups", "web", "ingress", 0, "ports"), ("network", "security_groups", "web", "ingress", 0, "cidr"),
    ("network", "network_acls"), ("network", "elastic_ips"), ("network", "route_tables"), ("tiers",), ("tiers", "web"),
    ("tiers", "web", "image"), ("tiers", "web", "image", "recipe"), ("tiers", "web", "instance_type"),
    ("tiers", "web", "count"), ("tiers", "web", "standby"), ("tiers", "web", "strategy"), ("tiers", "web", "tags"),
    ("tiers", "web", "root_volume"), ("tiers", "web", "root_volume", "iops"), ("tiers", "web", "secrets"),
    ("tiers", "web", "user_data", "parts"), ("tiers", "web", "user_data", "variables", "greeting"),
    ("tiers", "web", "interfaces", 0, "device_index"), ("tiers", "web", "interfaces", 0, "private_ip"),
    ("tiers", "web", "interfaces", 0, "secondary_ips"), ("tiers", "web", "interfaces", 0, "secondary_ip_count"),
    ("tiers", "web", "interfaces", 0, "subnet"), ("tiers", "web", "interfaces", 0, "persistent"),
    ("tiers", "web", "interfaces", 1), ("tiers", "web", "interfaces", 0, "elastic_ip"),
    ("tiers", "web", "health_check", "from"), ("tiers", "web", "health_check", "port"),
    ("tiers", "web", "health_check", "interface"), ("tiers", "app"), ("ssh",), ("ssh", "key_file"),
    ("variables",), ("tags",), ("tags", "k"), ("colour",),
]
HOSTILE_TEXT = [
    "", " ", "..", "../../etc/passwd", "/etc/shadow", "ami-", "ami-12345678", "10.0.0.0/33", "10.0.1.0/25",
    "10.0.0.1/24", "10.0.1.3", "10.0.1.300", "0.0.0.0/0", "0999", "0700", "root:root", "us-east-1z", "eu-west-1a",
    "t3.micro", "c5n.18xlarge", "big", "{{ 1 / 0 }}", "{{ 'a' * 10**9 }}", "{{ nope }}", "{% for i in range(10**9) %}",
    "{{ v.__class__.__mro__ }}", "AKIAIOSFODNN7EXAMPLE", "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n", "a" * 300,
    "line\nbreak", "\t", "*", "&a", "!!python/object:os.system", "${HOME}", "ssm:/x", "nope", "web", "prod",
]
scalars = st.one_of(
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70), st.integers(min_value=-2, max_value=70000),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(), st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=30),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["a", "name", "shell", "cidr", "ports", "subnet", "0", "x y"]), inner, max_size=3), max_leaves=6)


def put(doc, path: tuple, value) -> None:
    """Set doc[path] = value, making mappings on the way (a missing list index appends)."""
    for i, key in enumerate(path):
        last = i == len(path) - 1
        if isinstance(doc, list) and isinstance(key, int):
            if key >= len(doc):
                doc.append(value if last else {})
                key = len(doc) - 1
        elif not isinstance(doc, dict):
            return  # a scalar on the way: the change before this one made the path meaningless
        elif not last and not isinstance(doc.get(key), (dict, list)):
            doc[key] = {}
        if last:
            doc[key] = value
        else:
            doc = doc[key]


def edited(good: dict, fields: list[tuple]) -> st.SearchStrategy[str]:
    """The good document with one to three fields set to generated values (or removed), as YAML;
    sometimes that YAML with a character or line changed, or generated text alone."""
    edit = st.tuples(st.sampled_from(fields), st.one_of(values, st.just(REMOVE)))

    def build(edits, mangle):
        doc = copy.deepcopy(good)
        for path, value in edits:
            if value is REMOVE:
                parent = doc
                for key in path[:-1]:
                    parent = parent.get(key) if isinstance(parent, dict) else None
                if isinstance(parent, dict):
                    parent.pop(path[-1], None)
            else:
                put(doc, path, value)
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        if mangle is not None:
            at, chars = mangle
            at = at % (len(text) + 1)
            text = text[:at] + chars + text[at:]
        return text
    documents = st.builds(build, st.lists(edit, min_size=1, max_size=3),
                          st.one_of(st.none(), st.none(), st.tuples(st.integers(0, 10 ** 6),
                                    st.sampled_from(["[", "]", "{", ":", "\n  - ", "*x", "&", "\t", "'", "\"", "%"]))))
    return st.one_of(documents, documents, documents, st.text(max_size=200))


REMOVE = object()

# a template: cloud-config lines with jinja in them, from a small grammar of what templates do
atoms = st.one_of(st.integers(-(10 ** 12), 10 ** 12).map(str), st.sampled_from(
    ["greeting", "nope", "'a'", "''", "[1, 2]", "{'k': 1}", "range(10)", "range(10**8)", "none", "true", "1.5e308",
     "environment", "tier", "image_id", "instance_index", "greeting.__class__", "lipsum", "cycler", "joiner",
     "namespace()", "self"]))
expressions = st.recursive(atoms, lambda inner: st.one_of(
    st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "~", "==", "and", "in"]), inner).map(" ".join),
    st.tuples(inner, st.sampled_from(["int", "float", "string", "yaml", "tojson", "join", "upper", "length", "list",
                                      "center(999999999)", "center(10)", "indent(5)", "format(1)", "default('d')",
                                      "replace('a', 'b')", "batch(3)", "sum", "first", "attr('__class__')",
                                      "truncate(5)", "wordwrap(3)"])).map("|".join),
    inner.map(lambda e: f"({e})"), inner.map(lambda e: f"{e}[0]"), inner.map(lambda e: f"{e}.upper()")),
    max_leaves=4)
template_lines = st.one_of(
    expressions.map(lambda e: f"x: {{{{ {e} }}}}"),
    st.tuples(expressions, st.sampled_from(["", "{{ i }}", "{% for j in range(1000) %}{% endfor %}"])).map(
        lambda t: f"{{% for i in {t[0]} %}}{t[1]}{{% endfor %}}"),
    st.sampled_from(["{% include 'web.yaml.j2' %}", "{% include '/etc/passwd' %}", "{% include 'other.j2' %}",
                     "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "{% set x = 'a' * 99999999 %}",
                     "{% extends 'web.yaml.j2' %}", "{% import 'nope' as n %}", "{{", "{%", "{# ", "packages: nginx",
                     "runcmd: [[echo, hi]]", "write_files: {{ greeting }}", "users: [{name: x, passwd: hunter2}]",
                     "password: hunter2", "&a [*a]", "- [", "bootcmd: " + "[" * 100 + "]" * 100]),
    st.text(max_size=40),
)
templates = st.lists(template_lines, min_size=1, max_size=4).map(lambda lines: GOOD_TEMPLATE + "\n".join(lines) + "\n")

SETTINGS = ["INVOKE_BAKERY_CLOUD", "INVOKE_BAKERY_REGION", "AWS_REGION", "INVOKE_BAKERY_SSH_PORT",
            "INVOKE_BAKERY_SSH_HOST", "INVOKE_BAKERY_ENDPOINT_URL", "INVOKE_BAKERY_PROFILE",
            "INVOKE_BAKERY_STATE_DIR", "INVOKE_BAKERY_RECIPES_DIR"]
setting_values = st.one_of(st.sampled_from(["local", "aws", "gcp", "us-east-1", "us-east-1\nx", "EU", "22", "0",
                                            "70000", "-1", "abc", "http://127.0.0.1:1", "ftp://x", "/nonexistent",
                                            "/dev/null", "", " "]),
                           st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=20))
setting_sets = st.dictionaries(st.sampled_from(SETTINGS), setting_values, min_size=1, max_size=3)

FLAG_TASKS = {"bake": ["--recipe", "--var", "--var-file"], "rebake": ["--recipe", "--var"],
              "prune": ["--recipe", "--keep", "--region"], "janitor": ["--older-than", "--run-id"],
              "clean": ["--build-id"], "launch": ["--env", "--tier"], "render": ["--env", "--tier", "--part"],
              "failover": ["--env", "--tier", "--to"], "ssh": ["--instance", "--env", "--tier", "--index", "--key"],
              "network.up": ["--env"], "network.status": ["--env"], "images": ["--recipe"],
              "diff": ["--recipe", "--from", "--to"]}
flag_values = st.one_of(st.sampled_from(["web", "prod", "nope", "0", "-1", "3", "9" * 40, "1e999d", "30m", "6h",
                                         "2d", "soon", "v=1", "v", "=1", "w=2", "b-20260101120000-0a1b2c",
                                         "../x", "/etc/passwd", "i-0123456789abcdef0", "i-", "us-east-1", "x\ny",
                                         "1", "99", "web.yaml.j2", "NaN", "inf", "1_000"]),
                        st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
                                min_size=1, max_size=20).filter(lambda v: not v.startswith("-")))
# (a value that starts with "-" is a flag to invoke's own parser, which refuses it before bakery runs:
# one line, but exit 1 and without "error:", which only a program of bakery's own could change)
argvs = st.sampled_from(sorted(FLAG_TASKS)).flatmap(lambda task: st.lists(
    st.tuples(st.sampled_from(FLAG_TASKS[task]), flag_values), min_size=1, max_size=3,
    unique_by=lambda pair: pair[0]).map(  # a flag given twice is invoke's parse error, not bakery's
        lambda pairs: [task] + [f"{flag}={value}" for flag, value in pairs]))


PROJECT = {"recipes/web.yaml": yaml.safe_dump(GOOD_RECIPE), "envs/prod.yaml": yaml.safe_dump(GOOD_ENV),
           "userdata/web.yaml.j2": GOOD_TEMPLATE, "userdata/other.j2": "x: 1\n",
           "recipes/files/site/index.html": "<h1>hi</h1>\n"}


class CloudReached(BaseException):
    """The offline pass let the input through: the run went on to open a cloud or exec ssh."""


@dataclass
class Outcome:
    code: int
    lines: list[str]
    reached: bool = False


class InProcessCli:
    """`invoke ARGV` in this process, over a project directory whose files each example rewrites."""

    def __init__(self, project: Path):
        from invoke import Collection, Program

        import tasks

        self.project = project
        self.program = Program(namespace=Collection.from_module(tasks), name="invoke", binary="invoke")
        self.base_env = {"INVOKE_BAKERY_CLOUD": "local", "BAKERY_DATA_DIR": str(project / "local-cloud"),
                         "INVOKE_BAKERY_PROJECT_DIR": str(project), "INVOKE_BAKERY_STATE_DIR": str(project / "state"),
                         "INVOKE_BAKERY_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "fuzz",
                         "AWS_SECRET_ACCESS_KEY": "fuzz"}
        self.written: dict[str, str] = {}  # what each file holds now: only a changed file is written

    def write(self, files: dict[str, str]) -> None:
        for rel, text in {**PROJECT, **files}.items():
            if self.written.get(rel) == text:
                continue
            path = self.project / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode("utf-8", "surrogateescape"))
            self.written[rel] = text

    def run(self, argv: list[str], files: dict[str, str] | None = None, environ: dict[str, str] | None = None) -> Outcome:
        self.write(files or {})
        saved = dict(os.environ)
        os.environ.update({**self.base_env, **(environ or {})})
        out, err, code, reached = io.StringIO(), io.StringIO(), 0, False
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                self.program.run(["invoke", *argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except CloudReached:
            reached = True
        finally:
            os.environ.clear()
            os.environ.update(saved)
        assert not (self.project / "local-cloud").exists(), "a local cloud was started"
        return Outcome(code, err.getvalue().strip().splitlines(), reached)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    def reached(*args, **kwargs):
        raise CloudReached()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("bakery.local.cloud.LocalCloud.up", reached)
        patch.setattr("bakery.cloud.ec2.EC2.__init__", reached)
        patch.setattr("bakery.cli.os.execvp", reached)
        patch.chdir(ROOT)
        yield InProcessCli(tmp_path_factory.mktemp("fuzz"))


class Tally:
    def __init__(self):
        self.counts = {"accepted": 0, "refused": 0, "reached": 0}

    def judge(self, outcome: Outcome, names: re.Pattern) -> None:
        """The property every input must hold (see the module's docstring)."""
        text = "\n".join(outcome.lines)
        assert "Traceback" not in text and "internal error" not in text, text
        if outcome.reached:
            self.counts["reached"] += 1
        elif outcome.code == 0:
            self.counts["accepted"] += 1
        else:
            errors = [line for line in outcome.lines if line.startswith("error: ")]
            assert outcome.code == 2 and len(errors) == 1, (outcome.code, text)
            assert len(outcome.lines) == 1, text
            assert names.search(errors[0]), errors[0]
            self.counts["refused"] += 1

    def mostly_refused(self) -> None:
        print(self.counts)  # shown with -s: how the inputs fared
        assert sum(self.counts.values()) >= EXAMPLES
        assert self.counts["refused"] >= sum(self.counts.values()) // 2, self.counts


# a refusal names the file (and its line, when it has one) and then the field: `FILE[:N]: FIELD...: ...`
IN_A_FILE = r"(recipes|envs|userdata)/[\w./-]+(:\d+)?: [^:]+"


def test_generated_recipes(cli):
    tally = Tally()

    @RUNS
    @given(text=edited(GOOD_RECIPE, RECIPE_FIELDS))
    def bake(text):
        tally.judge(cli.run(["bake", "--recipe", "web"], {"recipes/web.yaml": text}), re.compile(IN_A_FILE))

    bake()
    tally.mostly_refused()


def test_generated_environments(cli):
    tally = Tally()

    @RUNS
    @given(text=edited(GOOD_ENV, ENV_FIELDS))
    def launch(text):
        tally.judge(cli.run(["launch", "--env", "prod", "--dry-run"], {"envs/prod.yaml": text}), re.compile(IN_A_FILE))

    launch()
    tally.mostly_refused()


def test_generated_templates(cli):
    tally = Tally()

    @RUNS
    @given(text=templates)
    def render(text):
        tally.judge(cli.run(["render", "--env", "prod", "--tier", "web"], {"userdata/web.yaml.j2": text}),
                    re.compile(IN_A_FILE))

    render()
    tally.mostly_refused()


def test_generated_settings(cli):
    tally = Tally()
    # a setting is named by its invoke config key or the variable it came from
    # (or the path it made, e.g. a recipes directory that holds no such recipe)
    names = re.compile(r"(invoke config bakery\.\w+|AWS_REGION|INVOKE_BAKERY_\w+|BAKERY_\w+|^error: /.+?: )")

    @RUNS
    @given(environ=setting_sets)
    def bake(environ):
        tally.judge(cli.run(["bake", "--recipe", "web"], environ=environ), names)

    bake()
    print(tally.counts)
    assert sum(tally.counts.values()) >= EXAMPLES and tally.counts["refused"] > 0, tally.counts


def test_generated_flag_values(cli):
    tally = Tally()
    # a --var-file's content is refused at its own path and line, as README says: `file:line: ...`
    names = re.compile(r"(--[a-z-]+|no such (recipe|environment)|(recipe|environment) name|no tier|^error: /[^:]+:\d+: |"
                       + IN_A_FILE + ")")

    @RUNS
    @given(argv=argvs)
    def run(argv):
        tally.judge(cli.run(argv), names)

    run()
    tally.mostly_refused()
