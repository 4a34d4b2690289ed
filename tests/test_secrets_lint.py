"""Specifications for the literal-secret lint (bakery/render/secrets.py) and its waivers.

Each case goes through what `invoke render`, `validate` and `launch` run offline: an environment
file and its templates, rendered for a tier. A refusal is one line naming the file, the field and
the rule id, and never the value; a look-alike that is not a secret renders; a waiver with a
reason lets exactly its finding through; a waiver that is malformed or waives nothing is refused.
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest

from bakery.config.environment import load_environment
from bakery.config.sandbox import MAX_OUTPUT
from bakery.config.settings import Settings
from bakery.errors import ConfigError
from bakery.render.secrets import RULES, lint_value
from bakery.render.tier import environment_lint, render_offline
from bakery.render.validate import validate_all

ENV = """\
tiers:
  web:
    image: {ami: ami-12345678}
    user_data: {parts: [web.yaml.j2]}
"""
QUIET = "#cloud-config\nruncmd: [[touch, /run/ok]]\n"  # a template that emits nothing from the variables

# Key material as a leak would carry it: a header line, then a body. None of it is a live credential.
RSA = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3bq\n-----END RSA PRIVATE KEY-----\n"
OPENSSH = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
PKCS8 = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n"
ENCRYPTED = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHzBJBgkqhkiG9w0\n-----END ENCRYPTED PRIVATE KEY-----\n"
EC = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA\n-----END EC PRIVATE KEY-----\n"
SSH2 = "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nP2/56wAAAi4AAAA3aWYt\n---- END SSH2 ENCRYPTED PRIVATE KEY ----\n"
PGP = "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBGRmZXQBCADJ\n-----END PGP PRIVATE KEY BLOCK-----\n"
PUTTY = "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nPrivate-Lines: 1\nAAAAIGm9kq\n"
SHA512 = "$6$rounds=4096$saltsalt$3MEaFIAr1CjQTwpVdO3pbqhGqKnZlbv5HthjQ1Pk9oCXzbU9W9CeXr1Ql9tCrLvXqk8Zu5T/4XxW6xVyuNe.e/"


def project(tmp_path: Path, env: str = ENV, **templates: str) -> Settings:
    (tmp_path / "envs").mkdir(exist_ok=True)
    (tmp_path / "envs/prod.yaml").write_text(env)
    (tmp_path / "userdata").mkdir(exist_ok=True)
    (tmp_path / "recipes").mkdir(exist_ok=True)  # validate wants one
    (tmp_path / "recipes/base.yaml").write_text("source: {ami: ami-12345678}\nsteps: [{name: hi, shell: echo hi}]\n")
    for name, text in {"web.yaml.j2": QUIET, **templates}.items():
        (tmp_path / "userdata" / name.replace("__", "/")).write_text(text)
    return Settings(project_dir=tmp_path)


def render(settings: Settings, tier: str = "web") -> str:
    env = load_environment(settings.envs, "prod")
    user_data, _ = render_offline(settings, env, tier)
    return user_data.text


def refusal(settings: Settings, tier: str = "web") -> str:
    with pytest.raises(ConfigError) as info:
        render(settings, tier)
    message = info.value.message
    assert "\n" not in message
    return message


def with_variables(**variables: object) -> str:
    return ENV.replace("{parts: [web.yaml.j2]}", "{parts: [web.yaml.j2], variables: " + json.dumps(variables) + "}")


def cloud_config(body: str) -> str:
    return "#cloud-config\n" + textwrap.dedent(body)


# ---------------------------------------------------------------- each class is refused, by id

VARIABLE_CASES = [
    # secret-like names, wherever the secret word sits (a literal value under each)
    ("db_password_prod", "hunter2", "secret-name"),
    ("client_secret", "s3cr3t-value", "secret-name"),
    ("auth_token", "abc123", "secret-name"),
    ("bearer", "abc123", "secret-name"),
    ("credentials", "admin:admin", "secret-name"),
    ("private_key_pem", "MIIEpAIBAAKCAQEA3bq", "secret-name"),
    ("passphrase", "correct horse battery staple", "secret-name"),
    ("access_key_id", "LTAI5tPxdsS9ZyR3f", "secret-name"),  # an access key of another cloud
    ("db_pass", 1234, "secret-name"),
    # blocks and tokens, whatever the variable is called
    ("greeting", RSA, "private-key"),
    ("greeting", OPENSSH, "private-key"),
    ("greeting", PKCS8, "private-key"),
    ("greeting", ENCRYPTED, "private-key"),
    ("greeting", EC, "private-key"),
    ("greeting", SSH2, "private-key"),
    ("greeting", PGP, "pgp-private-key"),
    ("greeting", PUTTY, "putty-private-key"),
    ("greeting", "AKIAIOSFODNN7EXAMPLE", "aws-access-key-id"),
    ("greeting", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws-secret-key"),
    ("greeting", "ghp_" + "A1b2C3d4E5" * 3 + "F6g7H8", "github-token"),
    ("greeting", "github_pat_" + "11ABCDEFG0" * 8 + "xy", "github-token"),
    ("greeting", "xoxb-2048-1234567890-abcdefABCDEF", "slack-token"),
    ("greeting", "AIzaSyA-" + "x1Y2z3" * 5 + "a", "google-api-key"),
    ("greeting", "sk_live_" + "51HqT2eXaMpLe0123456789ab", "stripe-key"),
    ("database_url", "postgres://app:hunter2@db.internal:5432/app", "connection-string"),
    ("greeting", "API_TOKEN=abc123", "assignment"),
]


@pytest.mark.parametrize("name, value, rule", VARIABLE_CASES, ids=lambda v: str(v)[:24])
def test_a_variable_holding_a_secret_is_refused_by_file_field_and_rule(tmp_path, name, value, rule) -> None:
    message = refusal(project(tmp_path, with_variables(**{name: value})))
    assert message.startswith(f"{tmp_path}/envs/prod.yaml: tiers.web.user_data.variables.{name}: ")
    assert f"[rule {rule}]" in message and rule in RULES
    for line in str(value).splitlines()[1:-1]:  # the body (a PEM header is no secret, and is named)
        assert not line.strip() or line.strip() not in message
    assert "hunter2" not in message and "abc123" not in message


def test_environment_wide_and_nested_variables_are_named_where_the_file_has_them(tmp_path) -> None:
    env = "variables: {app: {PASSWORD_DB: hunter2}}\n" + ENV
    assert refusal(project(tmp_path, env)).startswith(f"{tmp_path}/envs/prod.yaml: variables.app.PASSWORD_DB: "
                                                      "key named like a secret has a literal value [rule secret-name]")
    env = ENV.replace("{parts: [web.yaml.j2]}", "{parts: [web.yaml.j2], variables: {extra: {nested: [x, "
                                               "'AKIAIOSFODNN7EXAMPLE']}}}")
    assert refusal(project(tmp_path, env)).startswith(f"{tmp_path}/envs/prod.yaml: tiers.web.user_data.variables."
                                                      "extra.nested[1]: contains an AWS access key id")


def test_a_list_under_a_secret_like_name_holds_secrets(tmp_path) -> None:
    message = refusal(project(tmp_path, with_variables(api_tokens=["t-1", "t-2"])))
    assert "variables.api_tokens[0]: key named like a secret" in message and "t-1" not in message


CLOUD_CONFIG_CASES = [
    # cc_set_passwords
    ("password: hunter2\n", "password", "cc-password"),
    ("chpasswd:\n  users:\n    - {name: ops, type: text, password: hunter2}\n", "chpasswd.users.0.password", "cc-password"),
    ("chpasswd:\n  users:\n    - {name: ops, password: hunter2}\n", "chpasswd.users.0.password", "cc-password"),
    (f"chpasswd:\n  users:\n    - {{name: ops, password: '{SHA512}'}}\n", "chpasswd.users.0.password", "cc-password-hash"),
    ("chpasswd:\n  list: |\n    app:RANDOM\n    ops:hunter2\n", "chpasswd.list", "cc-password"),
    ("chpasswd:\n  list: ['app:R', 'ops:hunter2']\n", "chpasswd.list.1", "cc-password"),
    # cc_users_groups: a hash is a credential too, crackable offline by anyone who reads user data
    ("users:\n  - default\n  - {name: ops, plain_text_passwd: hunter2}\n", "users.1.plain_text_passwd", "cc-password"),
    (f"users:\n  - {{name: ops, passwd: '{SHA512}'}}\n", "users.0.passwd", "cc-password-hash"),
    (f"users:\n  - {{name: ops, hashed_passwd: '{SHA512}', lock_passwd: false}}\n", "users.0.hashed_passwd",
     "cc-password-hash"),
    # cc_ssh: a host key in user data is every instance's host key
    ("ssh_keys:\n  ed25519_private: |\n" + textwrap.indent(OPENSSH, "    "), "ssh_keys.ed25519_private", "cc-host-key"),
    # cc_ca_certs takes certificates; a private key pasted there is still a private key
    ("ca_certs:\n  trusted:\n    - |\n" + textwrap.indent(RSA, "      "), "ca_certs.trusted.0", "private-key"),
    # a module's own secret-named key, and secrets inside files written at boot
    ("rh_subscription: {username: ops, password: hunter2}\n", "rh_subscription.password", "secret-name"),
    ("write_files:\n  - path: /etc/wireguard/wg0.conf\n    content: |\n      [Interface]\n"
     "      PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n", "write_files.0.content", "assignment"),
    ("write_files:\n  - path: /etc/app.env\n    content: |\n      DB_HOST=db\n      DB_PASSWORD=s3cret\n",
     "write_files.0.content", "assignment"),
    ("runcmd:\n  - [mysql, --user=app, --password=hunter2, -e, 'select 1']\n", "runcmd.0.2", "assignment"),
    ("runcmd:\n  - psql postgres://app:hunter2@db/app -c 'select 1'\n", "runcmd.0", "connection-string"),
    ("write_files:\n  - path: /etc/gpg/key.asc\n    content: |\n" + textwrap.indent(PGP, "      "),
     "write_files.0.content", "pgp-private-key"),
]


@pytest.mark.parametrize("body, field, rule", CLOUD_CONFIG_CASES, ids=lambda v: str(v)[:30])
def test_a_rendered_cloud_config_holding_a_secret_is_refused_by_template_field_and_rule(tmp_path, body, field, rule):
    message = refusal(project(tmp_path, **{"web.yaml.j2": "#cloud-config\n" + body}))
    assert message.startswith(f"userdata/web.yaml.j2: rendered cloud-config: {field}: "), message
    assert message.endswith(f"[rule {rule}]; use a Secret (fetched at boot) or a ${{...}} reference, or waive it "
                            "in the environment's secret_lint.allow with a reason")
    assert "hunter2" not in message and "s3cret" not in message and "$6$" not in message


def test_a_shell_part_names_the_line(tmp_path) -> None:
    env = ENV.replace("[web.yaml.j2]", "[web.yaml.j2, boot.sh.j2]")
    settings = project(tmp_path, env, **{"boot.sh.j2": "#!/bin/sh\nset -eu\nexport GITHUB_TOKEN=ghx-literal\n"})
    assert refusal(settings) == ("userdata/boot.sh.j2: rendered text/x-shellscript: line 3: assigns a literal to "
                                 "GITHUB_TOKEN [rule assignment]; use a Secret (fetched at boot) or a ${...} "
                                 "reference, or waive it in the environment's secret_lint.allow with a reason")


# ---------------------------------------------------------------- look-alikes pass

LOOKALIKE_VARIABLES = {
    "password_file": "/etc/app/password",      # where the secret lives
    "token_url": "https://auth.example.com/oauth/token",
    "secret_name": "prod/db",
    "db_password_ref": "prod/db/password",
    "secret_arn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db",
    "kms_key_id": "alias/prod",                # a key id, not a key
    "password_min_length": 16,
    "token_ttl": 3600,
    "api_key_header": "X-Api-Key",
    "db_password": "${DB_PASSWORD}",           # references resolved elsewhere
    "api_token": "$API_TOKEN",
    "auth_token": "{{ resolve('x') }}",
    "client_secret": "ssm:/prod/oauth/client-secret",
    "bearer": "secretsmanager:prod/api",
    "passphrase": "",
    "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBc+public ops@example",
    "database_url": "postgres://app:${DB_PASSWORD}@db.internal/app",
    "cache_url": "redis://cache.internal:6379/0",
    "lock_password": True,
    "greeting": "PasswordAuthentication no",
}


def test_names_and_values_that_only_look_like_secrets_render(tmp_path) -> None:
    template = ("#cloud-config\nwrite_files:\n  - {path: /etc/app.env, content: "
                "{{ ('DB_PASSWORD=' ~ db_password ~ '\\nTOKEN_URL=' ~ token_url ~ '\\n') | yaml }}}\n")
    text = render(project(tmp_path, with_variables(**LOOKALIKE_VARIABLES), **{"web.yaml.j2": template}))
    assert "DB_PASSWORD=${DB_PASSWORD}\\nTOKEN_URL=https://auth.example.com/oauth/token\\n" in text


LOOKALIKE_CLOUD_CONFIG = cloud_config("""\
    ssh_pwauth: false
    password: RANDOM
    chpasswd:
      expire: false
      users:
        - {name: app, type: RANDOM}
        - {name: ops, type: text, password: "${OPS_PASSWORD}"}
    users:
      - default
      - name: ops
        lock_passwd: true
        ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBc+public ops@example]
    ssh_keys:
      ed25519_public: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBc+public root@host
      ed25519_certificate: ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQ
    ca_certs:
      trusted:
        - |
          -----BEGIN CERTIFICATE-----
          MIIBszCCAVmgAwIBAgIUeXAmPlE
          -----END CERTIFICATE-----
    apt:
      sources:
        app.list:
          source: deb https://apt.example.com stable main
          key: |
            -----BEGIN PGP PUBLIC KEY BLOCK-----
            mQINBGRmZXQBEAC
            -----END PGP PUBLIC KEY BLOCK-----
    write_files:
      - path: /etc/postgresql/15/main/conf.d/50-bakery.conf
        content: |
          password_encryption = scram-sha-256
          # password: kept in /etc/bakery/secrets.env
      - path: /etc/app.env
        content: |
          DB_PASSWORD_FILE=/etc/bakery/secrets.env
          TOKEN_URL=https://auth.example.com/token
    runcmd:
      - [sh, -c, 'DB_PASSWORD="$(cat /run/db)" exec app --password-file=/run/db --token="$API_TOKEN"']
      - [mkpasswd, --method=SHA-512]
    """)


def test_cloud_configs_lookalikes_render(tmp_path) -> None:
    assert render(project(tmp_path, **{"web.yaml.j2": LOOKALIKE_CLOUD_CONFIG})) == LOOKALIKE_CLOUD_CONFIG


def test_the_shipped_templates_and_environments_validate_with_no_finding() -> None:
    root = Path(__file__).resolve().parent.parent
    problems, checked = validate_all(Settings(project_dir=root))
    assert problems == [] and checked >= 3


def test_lint_value_keeps_its_callers_behaviour() -> None:
    lint_value({"a": [1, {"b": "fine", "password": None, "lock_passwd": True}]}, "here")
    with pytest.raises(ConfigError, match=r"^here: a\.1\.api_key: key named like a secret has a literal value "
                                          r"\[rule secret-name\]"):
        lint_value({"a": [1, {"api_key": "k-123"}]}, "here")
    with pytest.raises(ConfigError, match=r"^here: value: contains a PGP private key block \(line 1\)"):
        lint_value(PGP, "here")


# ---------------------------------------------------------------- waivers

def waiving(env: str, *entries: dict[str, str]) -> str:
    return "secret_lint:\n  allow:\n" + "".join(f"    - {json.dumps(e)}\n" for e in entries) + env


def test_a_waiver_with_a_reason_lets_exactly_its_finding_through(tmp_path) -> None:
    env = with_variables(demo_password="demo", admin_password="hunter2")
    waiver = {"field": "tiers.web.user_data.variables.demo_password", "rule": "secret-name",
              "reason": "the public demo's documented login"}
    # the other finding is still refused, at its own field
    assert "variables.admin_password: key named like a secret" in refusal(project(tmp_path, waiving(env, waiver)))
    # the same field under another rule is not covered
    other = {**waiver, "rule": "assignment"}
    assert "variables.demo_password: key named like a secret" in refusal(project(tmp_path, waiving(env, other)))
    settings = project(tmp_path, waiving(with_variables(demo_password="demo"), waiver))
    assert render(settings) == QUIET
    assert validate_all(settings)[0] == []


def test_a_waiver_covers_a_rendered_template_finding_by_its_printed_field(tmp_path) -> None:
    template = cloud_config("""\
        chpasswd:
          users:
            - {name: kiosk, type: text, password: kiosk}
        """)
    waiver = {"field": "chpasswd.users.0.password", "rule": "cc-password", "reason": "a kiosk login shown on screen"}
    assert render(project(tmp_path, waiving(ENV, waiver), **{"web.yaml.j2": template})) == template


@pytest.mark.parametrize("entry, expected", [
    ({"field": "x", "rule": "secret-name"}, "secret_lint.allow[0].reason: required field is missing"),
    ({"field": "x", "rule": "secret-name", "reason": "  "}, "secret_lint.allow[0].reason: a waiver needs a reason"),
    ({"field": "", "rule": "secret-name", "reason": "r"}, "secret_lint.allow[0].field"),
    ({"field": "x", "rule": "Not An Id", "reason": "r"}, "secret_lint.allow[0].rule"),
    ({"field": "x", "rule": "secret-name", "reason": "r", "until": "2027"}, "secret_lint.allow[0].until: unknown key"),
])
def test_a_malformed_waiver_is_refused_with_the_file_read(tmp_path, entry, expected) -> None:
    settings = project(tmp_path, waiving(ENV, entry))
    with pytest.raises(ConfigError) as info:
        load_environment(settings.envs, "prod")
    assert f"{tmp_path}/envs/prod.yaml:3: {expected}" in info.value.message


def test_a_waiver_given_twice_is_refused(tmp_path) -> None:
    entry = {"field": "x", "rule": "secret-name", "reason": "r"}
    with pytest.raises(ConfigError, match=r"prod\.yaml:4: secret_lint\.allow\[1\]: waives field 'x', rule "
                                          r"secret-name again \(allow\[0\] does already\)"):
        load_environment(project(tmp_path, waiving(ENV, entry, entry)).envs, "prod")


def test_a_waiver_of_an_unknown_rule_is_refused(tmp_path) -> None:
    settings = project(tmp_path, waiving(ENV, {"field": "x", "rule": "password", "reason": "r"}))
    message = refusal(settings)
    assert message.startswith(f"{tmp_path}/envs/prod.yaml: secret_lint.allow[0].rule: no rule 'password' (rules: ")


def test_a_waiver_that_matches_nothing_is_refused_once_every_tier_rendered(tmp_path) -> None:
    stale = {"field": "tiers.web.user_data.variables.db_password", "rule": "secret-name", "reason": "moved to SSM"}
    env = waiving(ENV + "  db:\n    image: {ami: ami-12345678}\n    user_data: {parts: [web.yaml.j2]}\n", stale)
    settings = project(tmp_path, env)
    render(settings)  # one tier alone cannot tell: another tier might hold the finding
    problems, _ = validate_all(settings)
    assert problems == [f"{tmp_path}/envs/prod.yaml: secret_lint.allow[0]: waives nothing: no finding at field "
                        "'tiers.web.user_data.variables.db_password' breaks rule secret-name (remove the entry, "
                        "or correct its field)"]
    lint = environment_lint(load_environment(settings.envs, "prod"))
    for tier in ("web", "db"):
        render_offline(settings, load_environment(settings.envs, "prod"), tier, lint)
    with pytest.raises(ConfigError, match=r"secret_lint\.allow\[0\]: waives nothing"):
        lint.unused()


# ---------------------------------------------------------------- bounded

@pytest.mark.parametrize("unit", ["a.", "a=", "x:", "a://b:c", "-----BEGIN A ", 'TOKEN="', "aB"])
def test_the_lint_reads_the_largest_part_a_template_may_render_in_linear_time(tmp_path, unit) -> None:
    # the lint runs before the size check, on up to MAX_OUTPUT characters of rendered text, and
    # every word boundary is a place a pattern starts: no pattern may rescan the rest of the line
    settings = project(tmp_path, ENV.replace("[web.yaml.j2]", "[web.yaml.j2, big.sh.j2]"),
                       **{"big.sh.j2": "#!/bin/sh\n# " + unit * (MAX_OUTPUT // len(unit) - 16) + "\n"})
    started = time.monotonic()
    try:
        render(settings)  # it gzips small enough to send
    except ConfigError as exc:  # or holds a finding (TOKEN=" opens an assignment)
        assert "[rule " in exc.message and "\n" not in exc.message
    assert time.monotonic() - started < 10  # about a second on CI's 2 cores; quadratic would be hours
