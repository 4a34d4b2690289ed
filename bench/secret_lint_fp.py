#!/usr/bin/env python3
"""What the secret lint costs in false positives, on the shipped and the test suite's inputs.

The lint (bakery/render/secrets.py) runs, with no waiver, over:
- shipped: every environment under envs/, each tier rendered offline exactly as `invoke
  validate` renders it (its variables, each rendered part, a bootstrap tier's generated script),
  and every template under userdata/ on its own, rendered as the tests' texts are (below);
- tests: every string literal in tests/**/*.py that is user data or a template (it starts with
  `#cloud-config`, `#!` or `## template`) or an environment file (it has a `tiers:` line), and
  the texts the command-line corpus and the lint's own specification build at run time
  (tests/test_bad_input_corpus.py, tests/test_secrets_lint.py: imported rather than read). A cloud-config text is rendered
  leniently first, in bakery's bounded sandbox (an undefined name becomes the reference
  `${name}`: a template that takes its password from a variable holds no secret itself; `yaml`
  and `shquote` as bakery has them), then checked as bakery checks it and linted as
  cloud-config; one that does not render or pass those checks (bakery would refuse it before
  linting) is linted as text, as is a shell text. An environment text's variables are linted as
  bakery lints them.

Every finding needs a verdict in VERDICTS, keyed by where it was found (file, the text's sha256
prefix, field, rule): true (the text means it as a secret: the lint's own tests, the corpus) or
false, with why. A finding without one is "unjudged" and the bench exits 1, as it does when a
shipped file has any finding: judge it, do not guess.

    .venv/bin/python bench/secret_lint_fp.py [--json bench/results/secret_lint_fp.json]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bakery.config.environment import list_environments, load_environment  # noqa: E402
from bakery.config.sandbox import BoundedSandbox  # noqa: E402
from bakery.config.settings import Settings  # noqa: E402
from bakery.config.yamlfile import format_path  # noqa: E402
from bakery.render.secrets import Finding, SecretLint, cloud_config_findings, data_findings, text_findings  # noqa: E402
from bakery.render.tier import PLACEHOLDER_IMAGE, render_tier, sends_user_data  # noqa: E402
from bakery.render.userdata import check_cloud_config  # noqa: E402

# (file, text sha256[:12], field, rule) -> (verdict, why). Only what the test suite feeds the
# lint on purpose is "true"; a "false" entry is a cost the lint has today.
VERDICTS: dict[tuple[str, str, str, str], tuple[str, str]] = {
    ('tests/test_bad_input_corpus.py', '9256c78c775a', 'chpasswd.users.0.password', 'cc-password'): ("true", 'a command-line corpus case: the secret is the bad input'),
    ('tests/test_secrets_lint.py', 'b88d907a4f41', 'line 3', 'assignment'): ("true", 'test_a_shell_part_names_the_line: a token assigned on purpose'),
    ('tests/test_userdata.py', 'd91d13669703', 'write_files.0.content', 'private-key'): ("true", 'test_literal_secrets_in_rendered_cloud_config_are_refused: a key block on purpose'),
    ('tests/test_userdata.py', '7d8e691b8e02', 'write_files.0.content', 'assignment'): ("true", 'test_literal_secrets_in_rendered_cloud_config_are_refused: DB_PASSWORD=s3cret on purpose'),
    ('tests/test_bad_input_corpus.py[env-secret-akia]:envs/prod.yaml', '9fa6d673211a', 'tiers.web.user_data.variables.greeting', 'aws-access-key-id'): ("true", 'a command-line corpus case: the secret is the bad input'),
    ('tests/test_bad_input_corpus.py[env-secret-password]:envs/prod.yaml', '42741c11e657', 'tiers.web.user_data.variables.db_password', 'secret-name'): ("true", 'a command-line corpus case: the secret is the bad input'),
    ('tests/test_bad_input_corpus.py[env-secret-pem]:envs/prod.yaml', 'e5751cfd4383', 'tiers.web.user_data.variables.greeting', 'private-key'): ("true", 'a command-line corpus case: the secret is the bad input'),
    ('tests/test_bad_input_corpus.py[env-secret-name-anywhere]:envs/prod.yaml', 'ac30185fbc1d', 'tiers.web.user_data.variables.db_password_prod', 'secret-name'): ("true", 'a command-line corpus case: the secret is the bad input'),
    ('tests/test_bad_input_corpus.py[env-secret-pgp-block]:envs/prod.yaml', '1a07748c41ef', 'tiers.web.user_data.variables.greeting', 'pgp-private-key'): ("true", 'a command-line corpus case: the secret is the bad input'),
    ('tests/test_bad_input_corpus.py[env-secret-connection-string]:envs/prod.yaml', 'b7a89724f9f1', 'tiers.web.user_data.variables.db_url', 'connection-string'): ("true", 'a command-line corpus case: the secret is the bad input'),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 0]', 'a7d0b5702030', 'tiers.web.user_data.variables.db_password_prod', 'secret-name'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 1]', 'c3d2d39d728b', 'tiers.web.user_data.variables.client_secret', 'secret-name'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 2]', '76611f2c78eb', 'tiers.web.user_data.variables.auth_token', 'secret-name'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 3]', '4480dee0522f', 'tiers.web.user_data.variables.bearer', 'secret-name'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 4]', 'd474dccc7b9a', 'tiers.web.user_data.variables.credentials', 'secret-name'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 5]', 'fb111f234a63', 'tiers.web.user_data.variables.private_key_pem', 'secret-name'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 6]', '5afde917eb87', 'tiers.web.user_data.variables.passphrase', 'secret-name'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 7]', '1e9418a0e8d7', 'tiers.web.user_data.variables.access_key_id', 'secret-name'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 8]', 'bd218da7d9eb', 'tiers.web.user_data.variables.db_pass', 'secret-name'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 9]', 'aecf460bee35', 'tiers.web.user_data.variables.greeting', 'private-key'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 10]', '5b4442f27e0a', 'tiers.web.user_data.variables.greeting', 'private-key'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 11]', '938e896d3b34', 'tiers.web.user_data.variables.greeting', 'private-key'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 12]', 'b4a0d6c9ae04', 'tiers.web.user_data.variables.greeting', 'private-key'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 13]', '2fdd8e326524', 'tiers.web.user_data.variables.greeting', 'private-key'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 14]', '1568f336dde9', 'tiers.web.user_data.variables.greeting', 'private-key'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 15]', 'e332a381ba93', 'tiers.web.user_data.variables.greeting', 'pgp-private-key'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 16]', '779a5bdffe1e', 'tiers.web.user_data.variables.greeting', 'putty-private-key'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 17]', 'a63be6b313bd', 'tiers.web.user_data.variables.greeting', 'aws-access-key-id'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 18]', 'b773c6ae7a69', 'tiers.web.user_data.variables.greeting', 'aws-secret-key'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 18]', 'b773c6ae7a69', 'tiers.web.user_data.variables.greeting', 'assignment'): ("true", "the lint's specification: the aws_secret_access_key line is an assignment too"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 19]', 'a01d15096d6c', 'tiers.web.user_data.variables.greeting', 'github-token'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 20]', '4e7c55a41ef4', 'tiers.web.user_data.variables.greeting', 'github-token'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 21]', 'af5ae9aa8dce', 'tiers.web.user_data.variables.greeting', 'slack-token'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 22]', 'fa7afdc85de1', 'tiers.web.user_data.variables.greeting', 'google-api-key'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 23]', 'ce6e97309f03', 'tiers.web.user_data.variables.greeting', 'stripe-key'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 24]', 'ff270d8305dc', 'tiers.web.user_data.variables.database_url', 'connection-string'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[VARIABLE_CASES 25]', '42e97e3920c1', 'tiers.web.user_data.variables.greeting', 'assignment'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 0]', 'fd2dccab4801', 'password', 'cc-password'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 1]', '539b084830d0', 'chpasswd.users.0.password', 'cc-password'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 2]', '67d27e6651af', 'chpasswd.users.0.password', 'cc-password'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 3]', 'e0844cef817b', 'chpasswd.users.0.password', 'cc-password-hash'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 4]', 'af633c749af4', 'chpasswd.list', 'cc-password'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 5]', '569f10beed1d', 'chpasswd.list.1', 'cc-password'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 6]', '0a66bfbc82bc', 'users.1.plain_text_passwd', 'cc-password'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 7]', 'b4323c5d82cd', 'users.0.passwd', 'cc-password-hash'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 8]', 'a6f816eb0fd4', 'users.0.hashed_passwd', 'cc-password-hash'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 9]', 'bedf6399218f', 'ssh_keys.ed25519_private', 'cc-host-key'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 10]', 'a5cd2312be64', 'ca_certs.trusted.0', 'private-key'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 11]', '154e30b6c996', 'rh_subscription.password', 'secret-name'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 12]', '1f330eaf9d6f', 'write_files.0.content', 'assignment'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 13]', '7d8e691b8e02', 'write_files.0.content', 'assignment'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 14]', '31a8f4173b28', 'runcmd.0.2', 'assignment'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 15]', '1c44c31bd732', 'runcmd.0', 'connection-string'): ("true", "the lint's specification: a secret on purpose"),
    ('tests/test_secrets_lint.py[CLOUD_CONFIG_CASES 16]', '22b98eeb8d73', 'write_files.0.content', 'pgp-private-key'): ("true", "the lint's specification: a secret on purpose"),
}


@dataclass
class Hit:
    source: str   # "shipped" or "tests"
    file: str     # relative to the project
    line: int     # where the text starts in its file (0: a rendered tier)
    sha: str
    where: str    # what the lint's message would put before the field
    finding: Finding

    def key(self) -> tuple[str, str, str, str]:
        return self.file, self.sha, self.finding.field, self.finding.rule


class Collect(SecretLint):
    """The lint, with every finding kept instead of the first one raised."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, Finding]] = []

    def check(self, findings, where: str) -> None:
        self.found += [(where, f) for f in findings]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- shipped

def shipped() -> tuple[list[Hit], int]:
    settings = Settings(project_dir=ROOT)
    hits, texts = [], 0
    for name in list_environments(settings.envs):
        env = load_environment(settings.envs, name)
        rel = str(env.path.relative_to(ROOT))
        for tier in env.tiers:
            if not sends_user_data(env, tier):
                continue
            lint = Collect()
            render_tier(settings, env, tier, PLACEHOLDER_IMAGE, settings.region, lint=lint)
            texts += 1
            hits += [Hit("shipped", rel, 0, f"tier {tier}", where, f) for where, f in lint.found]
    for path in sorted(settings.userdata.rglob("*.j2")):  # each on its own too, as the tests' templates are
        text = path.read_text()
        texts += 1
        read_as, found = lint_text(text)
        hits += [Hit("shipped", str(path.relative_to(ROOT)), 1, sha(text), read_as, f) for f in found]
    return hits, texts


# ---------------------------------------------------------------- the test suite's texts

class Placeholder(jinja2.Undefined):
    """An undefined name renders as the reference ${name}: the value is the test's to give."""

    def __str__(self) -> str:
        return "${%s}" % (self._undefined_name or "value")

    def __getattr__(self, name: str) -> "Placeholder":
        if name.startswith("__"):
            raise AttributeError(name)
        return Placeholder(name=f"{self._undefined_name}.{name}")

    __getitem__ = __getattr__


def lenient(text: str) -> str:
    """Rendered in bakery's bounded sandbox: the corpus's templates are hostile on purpose."""
    env = BoundedSandbox(loader=jinja2.FileSystemLoader(str(ROOT / "userdata")))
    env.undefined = Placeholder
    env.filters.update(yaml=lambda v: json.dumps(str(v) if isinstance(v, jinja2.Undefined) else v),
                       shquote=lambda v: shlex.quote(str(v)))
    return env.render(env.from_string(text), {})


def lint_text(text: str) -> tuple[str, list[Finding]]:
    """How bakery would see a user data text or template once rendered: (what it was read as, its
    findings). bakery lints rendered parts only, so a template's `{{ x }}` is never a literal."""
    try:
        rendered = lenient(text)
    except Exception:  # noqa: BLE001 - bakery refuses it before linting: read the source as it is
        return "text (does not render)", [Finding(f"line {n}", r, d) for n, r, d in text_findings(text)]
    if rendered.startswith("#cloud-config"):
        try:  # bakery's own parse and checks (bounded: some of these texts are alias bombs)
            return "rendered cloud-config", list(cloud_config_findings(check_cloud_config(rendered, "bench")))
        except Exception:  # noqa: BLE001 - bakery refuses it before linting: read it as text
            return "text (not valid cloud-config)", [Finding(f"line {n}", r, d) for n, r, d in text_findings(rendered)]
    return "rendered text", [Finding(f"line {n}", r, d) for n, r, d in text_findings(rendered)]


def lint_environment_text(text: str) -> list[Finding]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    if not isinstance(data, dict):
        return []
    found = list(data_findings(data.get("variables"), ("variables",), format_path))
    for tier, spec in (data.get("tiers") or {}).items() if isinstance(data.get("tiers"), dict) else ():
        variables = ((spec or {}).get("user_data") or {}).get("variables") if isinstance(spec, dict) else None
        found += data_findings(variables, ("tiers", tier, "user_data", "variables"), format_path)
    return found


def literals() -> list[tuple[str, int, str]]:
    """(file, line, text) of every string literal in the tests that is user data, a template or an
    environment file, plus the corpus's files as the corpus writes them."""
    out = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and wanted(node.value):
                out.append((rel, node.lineno, node.value))
    import tests.test_bad_input_corpus as corpus
    import tests.test_secrets_lint as spec

    for case, files, *_ in corpus.RECIPES + corpus.FLAGS + corpus.ENVS:
        project = {"envs/prod.yaml": corpus.GOOD_ENV, "userdata/web.yaml.j2": corpus.GOOD_TEMPLATE, **files}
        for rel, text in project.items():
            if isinstance(text, str) and (rel.startswith("envs/") or rel.startswith("userdata/")):
                out.append((f"tests/test_bad_input_corpus.py[{case}]:{rel}", 0, text))
    # the lint's own specification builds its texts from cases: secrets on purpose, and look-alikes
    built = [(f"VARIABLE_CASES {i}", spec.with_variables(**{name: value})) for i, (name, value, _) in
             enumerate(spec.VARIABLE_CASES)]
    built += [(f"CLOUD_CONFIG_CASES {i}", "#cloud-config\n" + body) for i, (body, _, _) in enumerate(spec.CLOUD_CONFIG_CASES)]
    built += [("LOOKALIKE_VARIABLES", spec.with_variables(**spec.LOOKALIKE_VARIABLES)),
              ("LOOKALIKE_CLOUD_CONFIG", spec.LOOKALIKE_CLOUD_CONFIG)]
    out += [(f"tests/test_secrets_lint.py[{case}]", 0, text) for case, text in built]
    return out


def wanted(text: str) -> bool:
    return text.startswith(("#cloud-config", "#!")) or "\ntiers:" in f"\n{text}"


def tests_suite() -> tuple[list[Hit], int]:
    hits, seen = [], set()
    for rel, line, text in literals():
        if (rel.split("[")[0], text) in seen:
            continue  # the corpus's unchanged base files, once
        seen.add((rel.split("[")[0], text))
        if "\ntiers:" in f"\n{text}":
            found, where = lint_environment_text(text), "environment"
        else:
            where, found = lint_text(text)
        hits += [Hit("tests", rel, line, sha(text), where, f) for f in found]
    return hits, len(seen)


# ---------------------------------------------------------------- report

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    ship, ship_texts = shipped()
    test, test_texts = tests_suite()
    rows = []
    for hit in ship + test:
        verdict, why = VERDICTS.get(hit.key(), ("unjudged", "no verdict in VERDICTS yet"))
        rows.append({"source": hit.source, "file": hit.file, "line": hit.line, "text_sha256": hit.sha,
                     "read_as": hit.where, "field": hit.finding.field, "rule": hit.finding.rule,
                     "detail": hit.finding.detail, "verdict": verdict, "why": why})
    count = {v: sum(r["verdict"] == v for r in rows) for v in ("true", "false", "unjudged")}
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "texts": {"shipped": ship_texts, "tests": test_texts},
        "findings": {"shipped": len(ship), "tests": len(test), "total": len(rows)},
        "true_positives": count["true"], "false_positives": count["false"], "unjudged": count["unjudged"],
        "false_positive_rate": round(count["false"] / len(rows), 3) if rows else 0.0,
        "rows": rows,
    }
    print(f"secret lint, {result['date']}: {ship_texts} shipped texts ({len(ship)} findings), "
          f"{test_texts} test texts ({len(test)} findings)")
    print(f"  true positives {count['true']}, false positives {count['false']}, unjudged {count['unjudged']}")
    for r in rows:
        if r["verdict"] != "true":
            print(f"  {r['verdict']}: {r['file']}:{r['line']} ({r['read_as']}) {r['field']} [{r['rule']}]: {r['why']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if ship or count["unjudged"] else 0


if __name__ == "__main__":
    sys.exit(main())
