"""The literal-secret lint: what must not reach user data or sit in an environment file.

Why: user data is readable by anyone with ec2:DescribeInstanceAttribute (and from the instance
metadata service by every process on the instance), and environment files live in git. So a
literal credential in either is refused before anything is sent, and `secrets:` (fetched at boot
with the instance profile, only their names in user data) is the way in.

Every rule has a short stable id (RULES), which the message shows beside the field it found the
value at; the value itself is never printed. Three kinds of rule:
- blocks and tokens, in any text: private keys of every common format, AWS access keys, the
  well-known token prefixes, a password inside a connection string;
- names: a key, variable, assignment or flag named like a secret (password, token, api key...
  anywhere in the name) that holds a literal, not a reference (`${...}`, `$VAR`, `{{ ... }}`,
  `ssm:...`, `secretsmanager:...`) or something that is plainly not a credential (a file path,
  a yes/no word); qualifiers such as `_file`, `_url`, `_name`, `_ref`, `_arn` make a name
  describe a secret rather than hold one;
- cloud-config's own credential keys (cloud-init 22.4: cc_set_passwords, cc_users_groups,
  cc_ssh), read as cloud-init reads them: `RANDOM` asks cloud-init for a random password and is
  fine; a password hash is refused too, since anyone who can read the user data can crack it
  offline.

A finding the environment knowingly accepts is waived by an allow-list entry naming the field and
rule exactly as the message prints them, with a reason (README, "Waiving a secret-lint finding");
an entry that waives nothing is itself refused, so waivers do not outlive what they excused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from bakery.errors import ConfigError

RULES = {
    "private-key": "a PEM or OpenSSH private key block (RSA, EC, DSA, OPENSSH, PKCS#8, ENCRYPTED, SSH2)",
    "pgp-private-key": "a PGP private key block",
    "putty-private-key": "a PuTTY private key file (PuTTY-User-Key-File-N)",
    "aws-access-key-id": "an AWS access key id (AKIA.../ASIA...)",
    "aws-secret-key": "an aws_secret_access_key assignment",
    "github-token": "a GitHub token (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_)",
    "slack-token": "a Slack token (xoxb-, xoxp-, xoxa-, xoxr-...)",
    "google-api-key": "a Google API key (AIza...)",
    "stripe-key": "a Stripe live key (sk_live_, rk_live_)",
    "connection-string": "a password in a URL's user info (scheme://user:password@host)",
    "assignment": "a text line or flag assigning a literal to a secret-like name (NAME=..., name: ..., --name=...)",
    "secret-name": "a key or variable named like a secret holding a literal",
    "cc-password": "a plaintext password in cloud-config (password, chpasswd, plain_text_passwd)",
    "cc-password-hash": "a password hash in cloud-config (passwd, hashed_passwd, chpasswd hashes)",
    "cc-host-key": "a private SSH host key in cloud-config's ssh_keys",
}

HINT = ("use a Secret (fetched at boot) or a ${...} reference, or waive it in the environment's "
        "secret_lint.allow with a reason")

# Blocks and tokens: found anywhere in a text, whatever it is named.
_PATTERNS = [
    ("private-key", "contains a PEM private key block",
     re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----|---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----")),
    ("pgp-private-key", "contains a PGP private key block", re.compile(r"-----BEGIN PGP PRIVATE KEY BLOCK-----")),
    ("putty-private-key", "contains a PuTTY private key file", re.compile(r"(?m)^PuTTY-User-Key-File-\d+:")),
    ("aws-access-key-id", "contains an AWS access key id (AKIA/ASIA...)", re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")),
    ("aws-secret-key", "contains an aws_secret_access_key assignment",
     re.compile(r"(?i)(?:aws_?)?secret_?access_?key['\"]?\s*[:=]\s*['\"]?[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])")),
    ("github-token", "contains a GitHub token",
     re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})\b")),
    ("slack-token", "contains a Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    # bounded on both sides: a random base64 run (an inline upload) rarely holds one by chance
    ("google-api-key", "contains a Google API key", re.compile(r"(?<![\w+/-])AIza[0-9A-Za-z_-]{35}(?![\w+/-])")),
    ("stripe-key", "contains a Stripe live key", re.compile(r"\b[rs]k_live_[0-9A-Za-z]{24,}\b")),
]
# lengths bounded: every word boundary of a rendered part is a place to try (a.b.c.d... is many)
_URL_PASSWORD = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s/:@'\"]{1,256}:([^\s/@'\"]{1,256})@")

# Names: split into words (snake, kebab, dotted, camelCase), then judged word by word.
_SECRET_WORDS = {"password", "passwd", "passphrase", "secret", "token", "bearer", "credential", "creds",
                 "apikey", "privatekey", "psk"}
_KEY_KINDS = {"api", "private", "access", "secret", "signing", "encryption", "master", "shared", "session",
              "activation", "registration"}  # X_key: a key that is itself a credential (not public_key, ssh_key)
# A last word that makes the name describe a secret rather than hold one: password_file,
# token_url, secret_name, db_password_ref, api_key_header, password_min_length...
_DESCRIBES = {"file", "files", "path", "dir", "directory", "url", "uri", "endpoint", "host", "hostname", "port",
              "name", "names", "ref", "reference", "arn", "id", "ids", "env", "var", "variable", "length", "len",
              "size", "min", "max", "policy", "encryption", "type", "kind", "expire", "expires", "expiry",
              "expiration", "ttl", "timeout", "lifetime", "age", "required", "enabled", "disabled", "prompt", "cmd",
              "command", "helper", "script", "hint", "header", "field", "param", "parameter", "source", "store",
              "provider", "location", "version", "count", "format", "algorithm", "algo", "rotation", "mode",
              "method", "authentication", "auth", "complexity", "strength", "regex", "pattern", "chars", "template",
              "label", "description", "desc", "help", "manager", "backend", "scope", "scopes", "audience", "issuer",
              "prefix", "suffix", "owner", "group", "permissions", "perms", "user", "username", "login", "account",
              "email", "fingerprint"}
# A first word that makes the name a switch about secrets: lock_passwd, no_password, max_password_age.
_SWITCHES = {"lock", "no", "disable", "enable", "allow", "require", "use", "has", "is", "min", "max", "num"}

# Values that are not literals: references resolved elsewhere, and plain non-credentials.
_REFERENCE = re.compile(r"^(?:\{\{.*\}\}|ssm:\S+|secretsmanager:\S+|arn:aws[\w-]*:(?:ssm|secretsmanager):\S+)$", re.S)
_CRYPT_HASH = re.compile(r"^\$(?:1|2[abxy]?|5|6|7|y|gy|sha1|md5)\$[^\s:]+$")  # mkpasswd/crypt(3) output
_SHELL_REF = re.compile(r"^\$(?:\{|\(|[A-Za-z_]|\d$)")  # ${X}, $(cmd), $X, $1, but not a crypt hash
_PATH = re.compile(r"^(?:/|~/|\./)(?:[\w.@-]+/)*[\w.@-]+/?$")  # where the secret lives, not the secret
_NOT_SECRETS = {"", "true", "false", "yes", "no", "on", "off", "none", "null", "~", "unchanged"}
_MASKED = re.compile(r"^(?:\*+|x{3,}|X{3,}|\.\.\.|<[^<>]*>)$")  # redacted, or a <placeholder>

# Text assignments: a line that is `name: value`, `name = value` or JSON's `"name": "value"`, and
# anywhere in a line NAME=value (shell, env files, URL queries, connection strings) or --name=value.
_LINE_ASSIGN = re.compile(r"""^[ \t]*(?:-[ \t]+)?(["']?)([A-Za-z_][\w.-]*)\1[ \t]*[:=](?![:=])[ \t]*(.*)$""")
_INLINE_ASSIGN = re.compile(r"""(?:^|(?<=[\s;"'(?&,=]))(?:export[ \t]+)?-{0,2}([A-Za-z_][\w.-]*)=(?!=)("[^"]*"|'[^']*'|[^\s;&'"]*)""")


def words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name))
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def secret_like(name: object) -> bool:
    """Whether a key, variable or flag name says it holds a secret (see the module docstring)."""
    ws = words(str(name))
    if not ws or ws[0] in _SWITCHES:
        return False
    last = ws[-1]
    if last in _DESCRIBES and not (last == "id" and len(ws) > 1 and ws[-2] == "key"):  # access_key_id holds one
        return False
    for i, w in enumerate(ws):
        w = w[:-1] if w.endswith("s") and w[:-1] in _SECRET_WORDS else w
        if (w in _SECRET_WORDS or (w == "pass" and i == len(ws) - 1 and i > 0)
                or (w == "key" and i > 0 and ws[i - 1] in _KEY_KINDS)):
            return True
    return False


def is_literal(value: object) -> bool:
    """Whether a value found under a secret-like name would put a credential in the text."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return False
    v = str(value).strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        v = v[1:-1].strip()
    if v.lower() in _NOT_SECRETS or _MASKED.match(v) or _PATH.match(v) or _REFERENCE.match(v):
        return False
    return not (_SHELL_REF.match(v) and not _CRYPT_HASH.match(v))


@dataclass(frozen=True)
class Finding:
    field: str   # where the value is: a key path, "value", or "line N" of a text part
    rule: str    # an id of RULES
    detail: str  # what the message says about it (never the value)


# ---------------------------------------------------------------- text

def _assignments(line: str) -> Iterator[tuple[str, str]]:
    if line.lstrip().startswith(("#", ";", "//")):  # a comment describes, it does not configure
        return
    if m := _LINE_ASSIGN.match(line):
        value = m.group(3).strip().rstrip(",").strip()
        if value[:1] not in ("|", ">", "{", "[", "(", "&", "*", "!") or value.startswith("{{"):
            yield m.group(2), _unquote(value)
    for m in _INLINE_ASSIGN.finditer(line):
        yield m.group(1), m.group(2)
        for inner in _INLINE_ASSIGN.finditer(m.group(2)):  # Environment=DB_PASSWORD=x: the value assigns too
            yield inner.group(1), inner.group(2)


def _unquote(value: str) -> str:
    if value[:1] in ("'", '"'):
        end = value.find(value[0], 1)
        return value[1:end] if end > 0 else value[1:]
    return re.split(r"\s+#", value, maxsplit=1)[0]  # `x = y  # comment`


def text_findings(text: str) -> Iterator[tuple[int, str, str]]:
    """(line, rule, detail) for each secret a text holds: blocks, tokens, connection strings, assignments."""
    for rule, detail, pattern in _PATTERNS:
        for m in pattern.finditer(text):
            yield text.count("\n", 0, m.start()) + 1, rule, detail
    for m in _URL_PASSWORD.finditer(text):
        if is_literal(m.group(1)):
            yield text.count("\n", 0, m.start()) + 1, "connection-string", "contains a URL with a password in it"
    for n, line in enumerate(text.splitlines(), start=1):
        seen = set()
        for name, value in _assignments(line):
            if name not in seen and secret_like(name) and is_literal(value):
                seen.add(name)
                yield n, "assignment", f"assigns a literal to {name}"


# ---------------------------------------------------------------- structured values

KeyPath = tuple[object, ...]


def dotted(path: KeyPath) -> str:
    """Paths inside rendered cloud-config, as cloud-init's schema errors print them: a.0.b."""
    return ".".join(str(p) for p in path)


def _string(value: str, path: KeyPath, fmt: Callable[[KeyPath], str]) -> Iterator[Finding]:
    for line, rule, detail in text_findings(value):
        yield Finding(fmt(path) or "value", rule, f"{detail} (line {line})" if "\n" in value.strip() else detail)


def data_findings(value: object, path: KeyPath = (), fmt: Callable[[KeyPath], str] = dotted,
                  skip: frozenset[KeyPath] = frozenset(), named: bool = False) -> Iterator[Finding]:
    """Findings in a value read from YAML: the strings it holds, and literals under secret-like names
    (`named`: the value sits under one; a list's items inherit it, as in `tokens: [...]`). A value
    whose text shows a secret gets that finding, not a second one for its name. Paths in `skip` are
    left to a more specific rule."""
    if path in skip:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            yield from data_findings(v, (*path, k), fmt, skip, secret_like(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from data_findings(v, (*path, i), fmt, skip, named)
    else:
        found = list(_string(value, path, fmt)) if isinstance(value, str) else []
        yield from found
        if named and not found and is_literal(value):
            yield Finding(fmt(path) or "value", "secret-name", "key named like a secret has a literal value")


# ---------------------------------------------------------------- cloud-config's own credentials

_RANDOM = {"R", "RANDOM"}  # cc_set_passwords: cloud-init makes one up (chpasswd.list, top-level password)
_HOST_KEY = re.compile(r"^(?:dsa|ecdsa|ed25519|rsa)_private$")
_PASSWORD_KEYS = ("plain_text_passwd", "passwd", "hashed_passwd")  # cc_users_groups, per user


def _password(value: object, path: KeyPath, what: str, line: str = "") -> Finding | None:
    """A password cloud-init would set, named by what it is: a crypt hash or plaintext (a `passwd`
    that is not a hash is still a literal password, whatever cloud-init then makes of it)."""
    if not is_literal(value):
        return None
    if _CRYPT_HASH.match(str(value).strip()):
        return Finding(dotted(path), "cc-password-hash", f"{line}{what} is a password hash (crackable offline)")
    return Finding(dotted(path), "cc-password", f"{line}{what} is a plaintext password")


def _accounts(data: dict) -> Iterator[tuple[KeyPath, dict]]:
    """Where cloud-config describes a user account: users[i], user, system_info.default_user."""
    users = data.get("users")
    for i, account in enumerate(users if isinstance(users, list) else []):
        if isinstance(account, dict):
            yield ("users", i), account
    if isinstance(data.get("user"), dict):
        yield ("user",), data["user"]
    info = data.get("system_info")
    if isinstance(info, dict) and isinstance(info.get("default_user"), dict):
        yield ("system_info", "default_user"), info["default_user"]


def cloud_config_findings(data: dict) -> Iterator[Finding]:
    """Findings in a rendered cloud-config: its credential keys read as cloud-init 22.4 reads them,
    then everything else as any value is read."""
    found: list[Finding | None] = []
    handled: set[KeyPath] = set()

    def check(path: KeyPath, value: object, what: str, random_ok: bool = False, line: str = "") -> None:
        handled.add(path)
        if not (random_ok and str(value).strip() in _RANDOM):
            found.append(_password(value, path, what, line))

    if "password" in data:
        check(("password",), data["password"], "the default user's password", random_ok=True)
    chpasswd = data.get("chpasswd")
    if isinstance(chpasswd, dict):
        users = chpasswd.get("users")
        for i, user in enumerate(users if isinstance(users, list) else []):
            # type RANDOM carries no password; without a type, cloud-init takes the password as a hash
            if isinstance(user, dict) and "password" in user:
                check(("chpasswd", "users", i, "password"), user["password"], "a chpasswd password")
        entries = chpasswd.get("list")  # deprecated: "user:password" lines, R or RANDOM for a random one
        if isinstance(entries, str):
            handled.add(("chpasswd", "list"))
            for n, entry in enumerate(entries.splitlines(), start=1):
                if ":" in entry and entry.partition(":")[2].strip() not in _RANDOM:
                    found.append(_password(entry.partition(":")[2], ("chpasswd", "list"), "its password",
                                           line=f"line {n}: "))
        elif isinstance(entries, list):
            for i, entry in enumerate(entries):
                check(("chpasswd", "list", i), str(entry).partition(":")[2], "a chpasswd.list password", random_ok=True)
    for base, account in _accounts(data):
        for key in _PASSWORD_KEYS:
            if key in account:
                check((*base, key), account[key], f"a user's {key}")
    host_keys = data.get("ssh_keys")
    for key, value in (host_keys.items() if isinstance(host_keys, dict) else ()):
        if isinstance(key, str) and _HOST_KEY.match(key):
            handled.add(("ssh_keys", key))
            if is_literal(value):
                found.append(Finding(dotted(("ssh_keys", key)), "cc-host-key",
                                     "is a private SSH host key (every instance would share it)"))
    yield from (f for f in found if f is not None)
    yield from data_findings(data, (), dotted, frozenset(handled))


# ---------------------------------------------------------------- findings become errors

class Waiver(Protocol):  # bakery.config.environment.SecretWaiver
    field: str
    rule: str
    reason: str


class SecretLint:
    """Raises the first finding no waiver covers, as one line naming where, field and rule; remembers
    which waivers it used, so `unused` can refuse the ones that waive nothing."""

    def __init__(self, waivers: Sequence[Waiver] = (), source: str = "") -> None:
        self.waivers, self.source, self.used = list(waivers), source, set[int]()
        for i, waiver in enumerate(self.waivers):
            if waiver.rule not in RULES:
                raise ConfigError(f"{source}: secret_lint.allow[{i}].rule: no rule {waiver.rule!r} "
                                  f"(rules: {', '.join(RULES)})")

    def check(self, findings: Iterator[Finding], where: str) -> None:
        for f in findings:
            hits = {i for i, w in enumerate(self.waivers) if (w.field, w.rule) == (f.field, f.rule)}
            if not hits:
                raise ConfigError(f"{where}: {f.field}: {f.detail} [rule {f.rule}]; {HINT}")
            self.used |= hits

    def value(self, value: object, where: str, path: KeyPath = (), fmt: Callable[[KeyPath], str] = dotted) -> None:
        """A value read from YAML (a variable, a context); `path` is where it sits in its file."""
        named = bool(path) and not isinstance(path[-1], int) and secret_like(path[-1])
        self.check(data_findings(value, path, fmt, named=named), where)

    def cloud_config(self, data: dict, where: str) -> None:
        self.check(cloud_config_findings(data), where)

    def text(self, text: str, where: str) -> None:
        """A shell or boothook part, or a generated script: findings are named by their line."""
        self.check((Finding(f"line {n}", rule, detail) for n, rule, detail in text_findings(text)), where)

    def unused(self) -> None:
        """Call after every tier of the environment was rendered: an entry that waived nothing is stale."""
        for i, waiver in enumerate(self.waivers):
            if i not in self.used:
                raise ConfigError(f"{self.source}: secret_lint.allow[{i}]: waives nothing: no finding at field "
                                  f"{waiver.field!r} breaks rule {waiver.rule} (remove the entry, or correct its field)")


def lint_value(value: object, where: str) -> None:
    """Raise ConfigError if `value` (recursively) looks like a literal secret (no waivers)."""
    SecretLint().value(value, where)
