"""Specifications for bakery.render.userdata: shipped templates, template errors, safety and packing."""

from __future__ import annotations

import email
import gzip
import hashlib
import json
import os
import re
import secrets as pysecrets
import shutil
import stat
import subprocess
from importlib import resources
from pathlib import Path

import jinja2.meta
import jsonschema
import pytest
import yaml

from bakery.errors import ConfigError
from bakery.render.secrets import lint_value
from bakery.render.userdata import (MAX_USER_DATA, MERGE_TYPE, PartSpec, Secret, UserData,
                             render_user_data)

SHIPPED = Path(__file__).resolve().parent.parent / "userdata"
WHERE = "envs/prod.yaml: tiers.web"
CONTEXT: dict[str, object] = {
    "environment": "prod", "tier": "web", "region": "eu-west-1", "image_id": "ami-0123456789abcdef0",
    "recipe": "web-nginx", "server_name": "www.example.com", "app_upstream": "10.0.2.10:8080",
    "app_port": 8080, "app_subnet_cidr": "10.0.2.0/24",
}
CLOUD_CONFIGS = ["web.yaml.j2", "app.yaml.j2", "db.yaml.j2"]
PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"


def render(parts: list[str | PartSpec], context: dict[str, object] | None = None, *,
           directory: Path = SHIPPED, **kw: object) -> UserData:
    specs = [p if isinstance(p, PartSpec) else PartSpec(p) for p in parts]
    return render_user_data(directory, specs, dict(CONTEXT if context is None else context), where=WHERE, **kw)


def error(parts: list[str | PartSpec], context: dict[str, object] | None = None, **kw: object) -> str:
    with pytest.raises(ConfigError) as info:
        render(parts, context, **kw)
    message = info.value.message
    assert "\n" not in message
    return message


@pytest.fixture
def udir(tmp_path: Path):
    """A userdata dir of our own; write(name, text) adds a template."""
    root = tmp_path / "userdata"
    root.mkdir()

    def write(name: str, text: str) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return root

    write.root = root  # type: ignore[attr-defined]
    return write


def vendored_schema() -> dict:
    return json.loads(resources.files("bakery.render.schemas").joinpath("cloud-config-v1.json").read_text())


# ---------------------------------------------------------------- shipped templates

@pytest.mark.parametrize("template", CLOUD_CONFIGS)
def test_shipped_cloud_configs_render_and_validate_against_cloud_init_schema(template: str) -> None:
    ud = render([template])
    assert ud.text.startswith("#cloud-config\n") and ud.parts == [(template, "text/cloud-config")]
    data = yaml.safe_load(ud.text)
    jsonschema.Draft4Validator(vendored_schema()).validate(data)
    files = {f["path"]: f.get("content", "") for f in data["write_files"]}
    assert "ENVIRONMENT=prod\nTIER=web\n" in files["/etc/bakery/env"]
    assert data["ssh_pwauth"] is False and data["package_upgrade"] is False and data["runcmd"]


def test_web_template_wires_nginx_to_the_app_tier_and_writes_health() -> None:
    data = yaml.safe_load(render(["web.yaml.j2"]).text)
    site = next(f["content"] for f in data["write_files"] if f["path"].startswith("/etc/nginx/"))
    assert "server_name www.example.com;" in site and "server 10.0.2.10:8080;" in site
    command = " ".join(data["runcmd"][0])
    assert "nginx -t" in command and "systemctl restart nginx" in command and "/var/www/html/health" in command
    assert "service " not in command and "||" not in command  # systemd starts services, as on EC2


def test_app_and_db_templates_carry_their_variables() -> None:
    app = yaml.safe_load(render(["app.yaml.j2"]).text)
    assert {f["path"]: f["content"] for f in app["write_files"]}["/etc/app/app.env"] == "APP_ENV=prod\nAPP_PORT=8080\n"
    assert app["runcmd"] == [["systemctl", "restart", "app.service"]]
    db = yaml.safe_load(render(["db.yaml.j2"]).text)
    files = {f["path"]: f for f in db["write_files"]}
    assert "listen_addresses = '*'" in files["/etc/postgresql/15/main/conf.d/50-bakery.conf"]["content"]
    hba = files["/etc/postgresql/15/main/pg_hba.conf"]
    assert hba["append"] is True and "host all all 10.0.2.0/24 scram-sha-256" in hba["content"]


def test_shipped_shell_part_quotes_values() -> None:
    ud = render(["scripts/motd.sh.j2"], {**CONTEXT, "environment": "it's prod"})
    assert ud.parts == [("scripts/motd.sh.j2", "text/x-shellscript")] and ud.text.startswith("#!/bin/sh\n")
    assert "'bakery: it'\"'\"'s prod / web'" in ud.text
    subprocess.run(["sh", "-n"], input=ud.text, text=True, check=True)


@pytest.mark.parametrize("template", sorted(p.relative_to(SHIPPED).as_posix() for p in SHIPPED.rglob("*.j2")))
def test_every_variable_a_shipped_template_uses_is_documented_in_its_header(template: str) -> None:
    source = (SHIPPED / template).read_text()
    header = re.search(r"\{#(.*?)#\}", source, re.S)
    assert header, f"{template} has no {{# ... #}} header comment"
    env = jinja2.Environment()
    env.filters.update(yaml=str, shquote=str)  # parsing only needs the names to exist
    used = jinja2.meta.find_undeclared_variables(env.parse(source))
    missing = sorted(v for v in used if not re.search(rf"\b{v}\b", header.group(1)))
    assert not missing, f"{template}: undocumented variables {missing}"


@pytest.mark.parametrize("template", CLOUD_CONFIGS)
def test_cloud_init_itself_accepts_each_shipped_rendering(template: str, tmp_path: Path) -> None:
    cloud_init = shutil.which("cloud-init")
    if cloud_init is None:
        pytest.skip("cloud-init is not installed on this machine (the vendored schema is checked above)")
    path = tmp_path / template.removesuffix(".j2")
    path.write_text(render([template]).text)
    done = subprocess.run([cloud_init, "schema", "-c", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- template errors

def test_undefined_variable_names_file_line_and_variable() -> None:
    context = {k: v for k, v in CONTEXT.items() if k != "server_name"}
    line = next(i for i, text in enumerate((SHIPPED / "web.yaml.j2").read_text().splitlines(), 1)
                if "server_name {{" in text)
    assert error(["web.yaml.j2"], context) == f"userdata/web.yaml.j2:{line}: 'server_name' is undefined"


def test_undefined_variable_inside_an_include_names_the_included_file(udir) -> None:
    udir("inc.yaml.j2", "timezone: UTC\nhostname: {{ host | yaml }}\n")
    root = udir("main.yaml.j2", '#cloud-config\n{% include "inc.yaml.j2" %}\n')
    assert error(["main.yaml.j2"], {}, directory=root) == "userdata/inc.yaml.j2:2: 'host' is undefined"


def test_syntax_error_names_file_and_line(udir) -> None:
    root = udir("bad.yaml.j2", "#cloud-config\nruncmd:\n  - {{ x | yaml }\n")
    assert re.fullmatch(r"userdata/bad\.yaml\.j2:3: syntax error: .+", error(["bad.yaml.j2"], directory=root))


@pytest.mark.parametrize("bad", ["../outside.j2", "/etc/passwd", "sub/../../outside.j2", "escape.j2"])
def test_include_cannot_leave_the_userdata_dir(udir, bad: str) -> None:
    (udir.root.parent / "outside.j2").write_text("secret: 1\n")
    (udir.root / "escape.j2").symlink_to(udir.root.parent / "outside.j2")
    root = udir("main.yaml.j2", f'#cloud-config\n{{% include "{bad}" %}}\n')
    message = error(["main.yaml.j2"], directory=root)
    assert message.startswith("userdata/main.yaml.j2:2: ") and repr(bad) in message and "refused" in message


@pytest.mark.parametrize("bad", ["../web.yaml.j2", "/etc/passwd"])
def test_a_part_path_outside_the_userdata_dir_is_refused(bad: str) -> None:
    message = error([bad])
    assert message.startswith(f"{WHERE}: ") and repr(bad) in message and "refused" in message


def test_missing_template_names_template_and_dir(udir) -> None:
    root = udir("main.yaml.j2", '#cloud-config\n{% include "nothere.yaml.j2" %}\n')
    assert error(["gone.yaml.j2"], directory=root) == f"{WHERE}: template 'gone.yaml.j2' not found in {root}"
    assert error(["main.yaml.j2"], directory=root) == (
        f"userdata/main.yaml.j2:2: template 'nothere.yaml.j2' not found in {root}")


def test_sandbox_refuses_python_internals(udir) -> None:
    root = udir("evil.yaml.j2", "#cloud-config\nx: {{ ''.__class__.__mro__ }}\n")
    assert "unsafe" in error(["evil.yaml.j2"], directory=root)


# ---------------------------------------------------------------- YAML safety and cloud-config checks

INJECTIONS = [
    "prod\nruncmd: [rm -rf /]\nusers: []",
    "x'\n\"y: z\n  - nested: 1\n# comment\n---\nssh_pwauth: true",
    "a: b",
    "{bootcmd: [reboot]}",
    "line\u2028bootcmd: [reboot]\x85power_state: {mode: reboot}",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_yaml_filter_keeps_hostile_values_inside_their_key(udir, value: str) -> None:
    root = udir("t.yaml.j2", "#cloud-config\nhostname: {{ v | yaml }}\nwrite_files:\n"
                              "  - path: /etc/x\n    content: {{ v | yaml }}\n")
    benign = yaml.safe_load(render(["t.yaml.j2"], {"v": "web1"}, directory=root).text)
    hostile = yaml.safe_load(render(["t.yaml.j2"], {"v": value}, directory=root).text)
    assert set(hostile) == set(benign) == {"hostname", "write_files"}
    assert set(hostile["write_files"][0]) == {"path", "content"}
    assert hostile["hostname"] == value and hostile["write_files"][0]["content"] == value


def test_yaml_filter_keeps_types_and_single_lines(udir) -> None:
    root = udir("t.yaml.j2", "#cloud-config\nbootcmd: {{ v | yaml }}\n")
    value = ["echo 1", ["sh", "-c", "echo 'a: b'\nid"], "null", "8080"]
    ud = render(["t.yaml.j2"], {"v": value}, directory=root)
    assert len(ud.text.splitlines()) == 2 and yaml.safe_load(ud.text)["bootcmd"] == value


def test_schema_error_names_template_and_key_path(udir) -> None:
    root = udir("p.yaml.j2", "#cloud-config\npackages: nginx\n")
    udir("w.yaml.j2", "#cloud-config\nwrite_files:\n  - content: hi\n")
    assert error(["p.yaml.j2"], directory=root) == (
        "userdata/p.yaml.j2: cloud-config schema: packages: 'nginx' is not of type 'array'")
    assert error(["w.yaml.j2"], directory=root) == (
        "userdata/w.yaml.j2: cloud-config schema: write_files.0: 'path' is a required property")


def test_cloud_config_header_typos_and_duplicates_are_refused(udir) -> None:
    root = udir("nohdr.yaml.j2", "packages: [nginx]\n")
    udir("typo.yaml.j2", "#cloud-config\npackges: [nginx]\n")
    udir("dup.yaml.j2", "#cloud-config\ntimezone: UTC\nruncmd: [id]\ntimezone: UTC\n")
    udir("jinja.yaml.j2", "## template: jinja\n#cloud-config\n")
    udir("list.yaml.j2", "#cloud-config\n- a\n")
    assert "must start with '#cloud-config'" in error([PartSpec("nohdr.yaml.j2", "text/cloud-config")], directory=root)
    assert "cannot infer the content type" in error(["nohdr.yaml.j2"], directory=root)
    assert "unknown top-level key 'packges'" in error(["typo.yaml.j2"], directory=root)
    assert error(["dup.yaml.j2"], directory=root).startswith("userdata/dup.yaml.j2:4: ")
    assert "not supported" in error(["jinja.yaml.j2"], directory=root)
    assert "must be a mapping" in error(["list.yaml.j2"], directory=root)
    assert "is not one of" in error([PartSpec("typo.yaml.j2", "text/jinja2")], directory=root)


# ---------------------------------------------------------------- packing

def test_one_part_without_secrets_is_the_plain_text() -> None:
    ud = render(["scripts/motd.sh.j2"])
    assert ud.text.startswith("#!/bin/sh") and not ud.gzipped and ud.payload == ud.text.encode()
    assert ud.size == len(ud.payload)


def test_several_parts_make_a_mime_multipart_that_merges_cloud_configs() -> None:
    ud = render(["web.yaml.j2", "app.yaml.j2", "scripts/motd.sh.j2"])
    assert ud.parts == [("web.yaml.j2", "text/cloud-config"), ("app.yaml.j2", "text/cloud-config"),
                        ("scripts/motd.sh.j2", "text/x-shellscript")]
    message = email.message_from_string(ud.text)
    assert message.get_content_type() == "multipart/mixed"
    parts = message.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/cloud-config", "text/cloud-config", "text/x-shellscript"]
    assert [p.get_filename() for p in parts] == ["01-web.yaml", "02-app.yaml", "03-motd.sh"]
    assert [p["Merge-Type"] for p in parts] == [MERGE_TYPE, MERGE_TYPE, None]
    assert parts[0].get_payload(decode=True).decode() == render(["web.yaml.j2"]).text


def test_gzip_is_used_when_smaller_and_gunzips_to_the_text() -> None:
    ud = render(["web.yaml.j2", "app.yaml.j2", "db.yaml.j2"])
    assert ud.gzipped and ud.size < len(ud.text.encode()) and gzip.decompress(ud.payload) == ud.text.encode()
    assert ud.sha256 == hashlib.sha256(ud.payload).hexdigest()


def test_the_same_input_gives_the_same_payload() -> None:
    a = render(["web.yaml.j2", "scripts/motd.sh.j2"], secrets=[Secret("DB_PASSWORD", "ssm:/prod/db/password")])
    b = render(["web.yaml.j2", "scripts/motd.sh.j2"], secrets=[Secret("DB_PASSWORD", "ssm:/prod/db/password")])
    assert a.sha256 == b.sha256 and a.text == b.text


def test_oversize_user_data_names_tier_both_sizes_and_the_limit(udir) -> None:
    root = udir("big.yaml.j2", "#cloud-config\nwrite_files:\n  - path: /opt/blob\n    content: {{ blob | yaml }}\n")
    blob = pysecrets.token_hex(20_000)  # lowercase hex: incompressible enough, and trips no secret rule
    message = error(["big.yaml.j2"], {"blob": blob}, directory=root)
    sizes = re.fullmatch(rf"{re.escape(WHERE)}: user data is (\d+) bytes \((\d+) gzipped\), "
                         rf"over EC2's {MAX_USER_DATA}-byte limit.*", message)
    assert sizes, message
    assert int(sizes[1]) > 40_000 and MAX_USER_DATA < int(sizes[2]) < int(sizes[1])


def test_just_under_the_limit_fits_via_gzip(udir) -> None:
    root = udir("big.yaml.j2", "#cloud-config\nwrite_files:\n  - path: /opt/blob\n    content: {{ blob | yaml }}\n")
    ud = render(["big.yaml.j2"], {"blob": "a" * 50_000}, directory=root)
    assert ud.gzipped and ud.size <= MAX_USER_DATA < len(ud.text)


# ---------------------------------------------------------------- literal secrets
# (every rule, the variables' lint and waivers: tests/test_secrets_lint.py)

def test_literal_secrets_in_rendered_cloud_config_are_refused(udir) -> None:
    root = udir("pw.yaml.j2", "#cloud-config\nchpasswd:\n  expire: false\n  users:\n"
                               "    - {name: app, type: RANDOM}\n    - name: ops\n      password: {{ pw }}\n")
    udir("pem.yaml.j2", "#cloud-config\nwrite_files:\n  - path: /etc/k\n    content: |\n"
                        "      -----BEGIN RSA PRIVATE KEY-----\n      MIIE\n      -----END RSA PRIVATE KEY-----\n")
    udir("env.yaml.j2", "#cloud-config\nwrite_files:\n  - path: /etc/app.env\n    content: |\n"
                        "      DB_HOST=db\n      DB_PASSWORD=s3cret\n")
    message = error(["pw.yaml.j2"], {"pw": "s3cret"}, directory=root)
    assert message.startswith("userdata/pw.yaml.j2: rendered cloud-config: chpasswd.users.1.password: ")
    assert "s3cret" not in message
    assert "PEM private key" in error(["pem.yaml.j2"], {}, directory=root)
    assert "DB_PASSWORD" in error(["env.yaml.j2"], {}, directory=root)
    render(["pw.yaml.j2"], {"pw": "${DB_PASSWORD}"}, directory=root)  # a reference is fine


def test_literal_secrets_in_a_shell_part_are_refused(udir) -> None:
    root = udir("s.sh.j2", "#!/bin/sh\nexport TOKEN={{ t }}\n")
    assert "assigns a literal to TOKEN" in error(["s.sh.j2"], {"t": "abc"}, directory=root)
    render(["s.sh.j2"], {"t": '"$API_TOKEN"'}, directory=root)
    render(["s.sh.j2"], {"t": "${TOKEN:-}"}, directory=root)


def test_lint_value_walks_nested_structures() -> None:
    lint_value({"a": [1, {"b": "fine", "password": None, "lock_passwd": True}]}, "here")
    with pytest.raises(ConfigError, match=r"^here: a\.1\.api_key: key named like a secret"):
        lint_value({"a": [1, {"api_key": "k-123"}]}, "here")


# ---------------------------------------------------------------- secrets fetched at boot

def test_secrets_become_a_boot_script_with_names_but_no_values() -> None:
    ud = render(["web.yaml.j2"], region="eu-west-1", secrets=[Secret("DB_PASSWORD", "ssm:/prod/db/password"),
                                                              Secret("API_KEY", "secretsmanager:prod/api")])
    assert ud.parts[0] == ("00-bakery-secrets.sh", "text/x-shellscript")
    script = email.message_from_string(ud.text).get_payload()[0]
    assert script.get_filename() == "00-bakery-secrets.sh"
    body = script.get_payload(decode=True).decode()
    assert body.startswith("#!/bin/sh\n") and "set -eu" in body and "command -v aws" in body
    assert ("aws ssm get-parameter --with-decryption --name /prod/db/password --query Parameter.Value "
            "--output text --region eu-west-1") in body
    assert "aws secretsmanager get-secret-value --secret-id prod/api --query SecretString" in body
    assert "/etc/bakery/secrets.env" in body and "chmod 0600" in body
    subprocess.run(["sh", "-n"], input=body, text=True, check=True)


def test_secrets_alone_are_just_the_script() -> None:
    ud = render([], secrets=[Secret("DB_PASSWORD", "ssm:/prod/db/password")])
    assert ud.parts == [("00-bakery-secrets.sh", "text/x-shellscript")] and ud.text.startswith("#!/bin/sh\n")
    assert "no user data parts" in error([])


def test_an_arn_source_is_fetched_from_its_own_region() -> None:
    arn = "arn:aws:ssm:us-west-2:123456789012:parameter/prod/db"
    ud = render(["web.yaml.j2"], secrets=[Secret("DB_PASSWORD", f"ssm:{arn}")])
    assert f"--name {arn} --query Parameter.Value --output text --region us-west-2" in ud.text


@pytest.mark.parametrize("secret, problem", [
    (Secret("db_password", "ssm:/x"), "UPPER_CASE"),
    (Secret("DB", "vault:/x"), "must be ssm:NAME or secretsmanager:ID"),
    (Secret("DB", "ssm:/x; rm -rf /"), "must be ssm:NAME or secretsmanager:ID"),
])
def test_bad_secret_declarations_are_refused(secret: Secret, problem: str) -> None:
    assert problem in error(["web.yaml.j2"], secrets=[secret])
    assert "unique" in error(["web.yaml.j2"], secrets=[Secret("A", "ssm:/a"), Secret("A", "ssm:/b")])


def _boot_script(tmp_path: Path, secrets: list[Secret]) -> str:
    ud = render(["scripts/motd.sh.j2"], secrets=secrets)
    body = email.message_from_string(ud.text).get_payload()[0].get_payload(decode=True).decode()
    return body.replace("/etc/bakery", str(tmp_path / "etc-bakery"))  # run it without touching /etc


def test_boot_script_writes_quoted_values_0600_with_the_cli(tmp_path: Path) -> None:
    """Runs the generated script with an `aws` stand-in on PATH that answers by parameter name."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "aws"
    fake.write_text("#!/bin/sh\ncase \"$*\" in\n  *--name\\ /prod/db/password*) printf '%s\\n' \"it's \\$secret\";;\n"
                    "  *--secret-id\\ prod/api*) echo 'k1 k2';;\n  *) exit 254;;\nesac\n")
    fake.chmod(0o755)
    script = _boot_script(tmp_path, [Secret("DB_PASSWORD", "ssm:/prod/db/password"),
                                     Secret("API_KEY", "secretsmanager:prod/api")])
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(["sh", "-c", script], env=env, check=True, capture_output=True)
    out = tmp_path / "etc-bakery" / "secrets.env"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    sourced = subprocess.run(["sh", "-c", f". {out}; printf '%s|%s' \"$DB_PASSWORD\" \"$API_KEY\""],
                             capture_output=True, text=True, check=True).stdout
    assert sourced == "it's $secret|k1 k2"
    assert [p.name for p in out.parent.iterdir()] == ["secrets.env"]  # no temp file left behind

    failing = _boot_script(tmp_path, [Secret("OTHER", "ssm:/unknown")])
    done = subprocess.run(["sh", "-c", failing], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and out.read_text().startswith("DB_PASSWORD=")  # old file untouched


def test_boot_script_fails_loudly_without_the_aws_cli(tmp_path: Path) -> None:
    if shutil.which("aws", path="/usr/bin:/bin"):
        pytest.skip("an aws CLI is installed in /usr/bin")
    script = _boot_script(tmp_path, [Secret("DB_PASSWORD", "ssm:/prod/db/password")])
    done = subprocess.run(["sh", "-c", script], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert done.returncode == 1 and "aws CLI not found" in done.stderr
    assert not (tmp_path / "etc-bakery" / "secrets.env").exists()
