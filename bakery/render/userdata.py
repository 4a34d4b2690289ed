"""Per-tier user data: jinja templates under `userdata/` rendered, checked and packed for EC2.

Why each check: user data is read by cloud-init long after we can report anything, so every
mistake we can find here (an undefined variable, a cloud-config key of the wrong type, a key
pasted twice, 17 KB of text) is one less instance that boots broken. User data is also
readable by anyone with ec2:DescribeInstanceAttribute, so literal secrets are refused
(bakery/render/secrets.py) and `Secret`s are fetched at boot by a generated script: only their
names reach EC2.

Template rules (documented for template authors):
- Sandboxed jinja, undefined names are errors, includes/imports stay inside `userdata/`.
- In cloud-config templates write every value as `{{ x | yaml }}`: it emits one line of
  YAML (a double-quoted string or a flow mapping/list), so a value holding newlines, quotes
  or `key: value` text stays a value and can never add keys. Build multi-line file content
  with `{% set body %}...{% endset %}` and emit `content: {{ body | yaml }}`.
- In shell parts quote values with `{{ x | shquote }}`; `tojson` is jinja's own.
- A part's type comes from its first line (`#cloud-config`, `#!`) unless declared.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shlex
import traceback
from dataclasses import dataclass
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

from bakery.config.sandbox import BoundedSandbox, template_failure
from bakery.config.yamlfile import MAX_NODES, BoundedLoader, yaml_problem
from bakery.errors import ConfigError
from bakery.render.secrets import SecretLint

MAX_USER_DATA = 16_383  # EC2: 16 KB of raw data before base64; 16384 bytes encode past the API's 21847 chars
CLOUD_CONFIG, SHELL, BOOTHOOK = "text/cloud-config", "text/x-shellscript", "text/cloud-boothook"
MERGE_TYPE = "list(append)+dict(no_replace,recurse_list)+str()"
SECRETS_FILE = "/etc/bakery/secrets.env"
SECRETS_PART = "00-bakery-secrets.sh"  # generated; sorts before every other script and runcmd
# Top-level keys cloud-init 22.4 reads that its schema does not list (base config, not modules).
_EXTRA_KEYS = {"merge_how", "merge_type", "output", "log_cfg", "datasource", "datasource_list", "network",
               "system_info", "reporting", "manual_cache_clean", "vendor_data", "_doc", "debug"}



@dataclass(frozen=True)
class PartSpec:
    """One part of a tier's user data, as an environment file declares it."""

    template: str  # relative to the userdata dir, e.g. "web.yaml.j2" or "scripts/warm-cache.sh.j2"
    content_type: str | None = None  # None: inferred from the rendered first line


@dataclass(frozen=True)
class Secret:
    """A value fetched AT BOOT with the instance profile, never rendered into user data."""

    name: str  # env var name on the instance, e.g. DB_PASSWORD
    source: str  # "ssm:/prod/db/password" or "secretsmanager:prod/db" (names or ARNs)


@dataclass(frozen=True)
class UserData:
    text: str  # exact user data before gzip/base64: one part's text, or the MIME document
    payload: bytes  # what EC2 receives: text encoded, or its gzip when that is smaller
    gzipped: bool
    size: int  # len(payload)
    sha256: str  # of payload; stable across renders (fixed MIME boundary, gzip mtime 0)
    parts: list[tuple[str, str]]  # (template, content_type); the generated secrets script first
    documents: list[tuple[str, str, str]] = ()  # (part filename, content_type, text) as packed, in order


# ---------------------------------------------------------------- jinja

class _Escape(jinja2.TemplateNotFound):
    """A template path that is absolute, uses '..' or resolves outside the userdata dir."""


class _Loader(jinja2.FileSystemLoader):
    def __init__(self, root: Path) -> None:
        super().__init__(str(root))
        self.root = root.resolve()

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Any]:
        bad = template.startswith(("/", "\\")) or "\\" in template or ".." in template.split("/")
        if bad or not (self.root / template).resolve().is_relative_to(self.root):
            raise _Escape(template)
        return super().get_source(environment, template)


def _yaml_filter(value: object) -> str:
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined: raises the usual "'x' is undefined"
    out = yaml.dump(value, Dumper=_OneLineDumper, default_flow_style=True, width=float("inf"),
                    allow_unicode=False, sort_keys=False).rstrip("\n")
    out = out.removesuffix("\n...").rstrip("\n")
    if "\n" in out:  # cannot happen for safe types; refuse rather than emit something injectable
        raise ValueError("yaml filter: value does not fit on one line")
    return out


class _OneLineDumper(yaml.SafeDumper):
    """Strings always double-quoted: newlines and non-ASCII become escapes, never raw breaks."""


_OneLineDumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style='"'))


def _shquote(value: object) -> str:
    return shlex.quote(str(value))


def _environment(userdata_dir: Path) -> BoundedSandbox:
    env = BoundedSandbox(loader=_Loader(userdata_dir))
    env.filters.update(yaml=_yaml_filter, shquote=_shquote)
    return env


def _render(env: BoundedSandbox, userdata_dir: Path, name: str, context: dict[str, object], where: str) -> str:
    try:
        return env.render(env.get_template(name), context)
    except RecursionError:  # an include of itself, a macro calling itself: no frame worth naming
        raise ConfigError(f"{userdata_dir.name}/{name}: template recursion too deep (a template that includes "
                          "itself, or a macro that calls itself?)") from None
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{userdata_dir.name}/{exc.name or name}:{exc.lineno}: syntax error: {exc.message}") from None
    except Exception as exc:
        # jinja rewrites tracebacks so template frames carry the template file and line.
        root = userdata_dir.resolve()
        at = where  # a bad top-level name is the environment file's fault: name the tier
        for frame in traceback.extract_tb(exc.__traceback__):
            p = Path(frame.filename).resolve()
            if p.is_relative_to(root) and frame.lineno:
                at = f"{userdata_dir.name}/{p.relative_to(root).as_posix()}:{frame.lineno}"
        if isinstance(exc, _Escape):
            raise ConfigError(f"{at}: template path {exc.name!r} refused: it must be relative and stay "
                              f"inside {userdata_dir}") from None
        if isinstance(exc, jinja2.TemplateNotFound):
            raise ConfigError(f"{at}: template {exc.name!r} not found in {userdata_dir}") from None
        at = at if at != where else f"{userdata_dir.name}/{name}"
        raise ConfigError(f"{at}: {template_failure(exc)}") from None


# ---------------------------------------------------------------- cloud-config

@lru_cache(maxsize=1)
def _validator() -> tuple[Any, frozenset[str]]:
    """cloud-init 22.4's own schema (vendored, draft-04), loaded once on first use."""
    import jsonschema

    schema = json.loads(resources.files("bakery.render.schemas").joinpath("cloud-config-v1.json").read_text("utf-8"))
    known = {k for d in schema["$defs"].values() for k in d.get("properties", {})}
    return jsonschema.Draft4Validator(schema), frozenset(known | _EXTRA_KEYS)


class _NoDuplicates(BoundedLoader):
    """safe_load silently keeps the last of two equal keys (an include plus a local key)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _finite(data: object, show: str) -> None:
    """Aliases make shared values, not copies: refuse a value that contains itself (`a: &a [*a]`)
    and one that expands past yamlfile's node budget (an alias bomb), before anything walks it."""
    seen = 0
    stack: list[tuple[object, frozenset[int]]] = [(data, frozenset())]
    while stack:
        value, inside = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise ConfigError(f"{show}: rendered cloud-config expands to more than {MAX_NODES} values (alias bomb?)")
        if isinstance(value, (dict, list)):
            if id(value) in inside:
                raise ConfigError(f"{show}: rendered cloud-config has an alias that refers to a value containing it")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, inside | {id(value)}) for child in children)


def check_cloud_config(text: str, show: str) -> dict[str, Any]:
    if not text.startswith("#cloud-config"):
        raise ConfigError(f"{show}: a cloud-config part must start with '#cloud-config'")
    try:
        data = yaml.load(text, Loader=_NoDuplicates)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        line, problem = yaml_problem(exc, text)
        raise ConfigError(f"{show}{line}: rendered cloud-config is not valid YAML: {problem}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{show}: rendered cloud-config must be a mapping, not {type(data).__name__}")
    _finite(data, show)
    validator, known = _validator()
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.path)), e.message))
    if errors:
        err = errors[0]
        path = ".".join(str(p) for p in err.path) or "(top level)"
        raise ConfigError(f"{show}: cloud-config schema: {path}: {err.message}")
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"{show}: cloud-config: unknown top-level key {unknown[0]!r} "
                          "(not in cloud-init 22.4's schema; a typo?)")
    return data


# ---------------------------------------------------------------- secrets

def _secrets_script(secrets: list[Secret], region: str, where: str) -> str:
    lines = [
        "#!/bin/sh",
        "# Generated by bakery: fetch secrets at boot with the instance profile; only names live here.",
        "set -eu",
        'command -v aws >/dev/null 2>&1 || { echo "bakery: aws CLI not found, cannot fetch secrets" >&2; exit 1; }',
        "umask 077",
        "mkdir -p /etc/bakery",
        'tmp=$(mktemp /etc/bakery/.secrets.XXXXXX)',
        "trap 'rm -f \"$tmp\"' EXIT",
        "fetch() {",
        '  name=$1; shift',
        '  value=$("$@")',
        r'''  printf "%s='%s'\n" "$name" "$(printf '%s' "$value" | sed "s/'/'\\\\''/g")" >>"$tmp"''',
        "}",
    ]
    seen: set[str] = set()
    for s in secrets:
        kind, _, ident = s.source.partition(":")
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", s.name) or s.name in seen:
            raise ConfigError(f"{where}: secrets: {s.name!r} must be a unique UPPER_CASE env var name")
        seen.add(s.name)
        if kind not in ("ssm", "secretsmanager") or not re.fullmatch(r"[\w/+=.@:-]+", ident):
            raise ConfigError(f"{where}: secrets.{s.name}: source {s.source!r} must be ssm:NAME or secretsmanager:ID")
        reg = ident.split(":")[3] if ident.startswith("arn:") and ident.count(":") >= 5 else region
        q = shlex.quote
        if kind == "ssm":
            cmd = f"aws ssm get-parameter --with-decryption --name {q(ident)} --query Parameter.Value"
        else:
            cmd = f"aws secretsmanager get-secret-value --secret-id {q(ident)} --query SecretString"
        lines.append(f"fetch {s.name} {cmd} --output text --region {q(reg)}")
    lines += ["chown root:root \"$tmp\"", "chmod 0600 \"$tmp\"", f"mv \"$tmp\" {SECRETS_FILE}", "trap - EXIT", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- assembly

def _content_type(text: str, declared: str | None, show: str) -> str:
    if declared is not None:
        if declared not in (CLOUD_CONFIG, SHELL, BOOTHOOK):
            raise ConfigError(f"{show}: content_type {declared!r} is not one of {CLOUD_CONFIG}, {SHELL}, {BOOTHOOK}")
        if declared == SHELL and not text.startswith("#!"):
            raise ConfigError(f"{show}: a {SHELL} part must start with '#!'")
        return declared
    if text.startswith("#cloud-config"):
        return CLOUD_CONFIG
    if text.startswith("#!"):
        return SHELL
    if text.startswith("## template: jinja"):
        raise ConfigError(f"{show}: '## template: jinja' (cloud-init side jinja) is not supported; "
                          "use bakery's variables instead")
    first = text.splitlines()[0] if text else ""
    raise ConfigError(f"{show}: cannot infer the content type from the first line {first[:40]!r}; "
                      "start with '#cloud-config' or '#!', or declare content_type")


def multipart(parts: list[tuple[str, str, str]]) -> str:
    """parts: (filename, content_type, text). The boundary is derived from the content, so
    identical input gives an identical document (and sha256) on every render."""
    digest = hashlib.sha256("\0".join(t for _, _, t in parts).encode()).hexdigest()[:32]
    doc = MIMEMultipart("mixed", boundary=f"==bakery-{digest}==")
    for filename, ctype, text in parts:
        part = MIMEText(text, ctype.split("/", 1)[1])
        part.add_header("Content-Disposition", "attachment", filename=filename)
        if ctype == CLOUD_CONFIG:
            part["Merge-Type"] = MERGE_TYPE
        doc.attach(part)
    return doc.as_string()


def render_user_data(userdata_dir: Path, parts: list[PartSpec], context: dict[str, object], *,
                     secrets: list[Secret] = [], region: str = "us-east-1", where: str,
                     extra_parts: list[tuple[str, str, str]] = [], lint: SecretLint | None = None) -> UserData:
    """Render a tier's parts, check each, and pack them (MIME if several, gzip if smaller).

    `extra_parts` (filename, content_type, text) are generated parts (e.g. the bootstrap
    strategy's recipe script) that go before the templates, after the secrets script. Every
    rendered part goes through `lint` (the environment's waivers); the context is the caller's to
    lint, where it knows which file and field each value comes from (tier.render_tier)."""
    if not parts and not secrets and not extra_parts:
        raise ConfigError(f"{where}: no user data parts to render")
    lint = lint or SecretLint()
    env = _environment(userdata_dir)
    rendered: list[tuple[str, str, str]] = []  # (template, content_type, text)
    for spec in parts:
        show = f"{userdata_dir.name}/{spec.template}"
        text = _render(env, userdata_dir, spec.template, context, where)
        ctype = _content_type(text, spec.content_type, show)
        if ctype == CLOUD_CONFIG:
            lint.cloud_config(check_cloud_config(text, show), f"{show}: rendered cloud-config")
        else:
            lint.text(text, f"{show}: rendered {ctype}")
        rendered.append((spec.template, ctype, text))
    for name, ctype, text in extra_parts:
        lint.text(text, f"{where}: generated part {name}")
    rendered = list(extra_parts) + rendered

    mime_parts: list[tuple[str, str, str]] = []
    if secrets:
        mime_parts.append((SECRETS_PART, SHELL, _secrets_script(secrets, region, where)))
    for i, (template, ctype, text) in enumerate(rendered, start=1):
        # cloud-init runs shell parts from one directory in name order: keep the declared order.
        mime_parts.append((f"{i:02d}-{Path(template).name.removesuffix('.j2')}", ctype, text))
    text = mime_parts[0][2] if len(mime_parts) == 1 else multipart(mime_parts)

    raw = text.encode("utf-8")
    packed = gzip.compress(raw, compresslevel=9, mtime=0)
    gzipped = len(packed) < len(raw)
    payload = packed if gzipped else raw
    if len(payload) > MAX_USER_DATA:
        raise ConfigError(f"{where}: user data is {len(raw)} bytes ({len(packed)} gzipped), over EC2's "
                          f"{MAX_USER_DATA}-byte limit even compressed; move content into the image")
    return UserData(text=text, payload=payload, gzipped=gzipped, size=len(payload),
                    sha256=hashlib.sha256(payload).hexdigest(),
                    parts=([(SECRETS_PART, SHELL)] if secrets else []) + [(t, c) for t, c, _ in rendered],
                    documents=mime_parts)
