"""One part of a tier's user data, and each cloud-config part checked as cloud-init checks it.

`invoke render` prints what EC2 receives: with several parts, a MIME document, which
`cloud-init schema -c` does not read (it checks one cloud-config). `--part` prints one part as it
is packed; `--check` checks every cloud-config part against cloud-init's schema: the copy bakery
vendors (cloud-init 22.4, Debian 12's, what render itself enforces) and, when cloud-init is
installed where bakery runs, that cloud-init's own `schema -c` too (a newer one may deprecate
keys the vendored schema still knows).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bakery.errors import ConfigError
from bakery.render.userdata import CLOUD_CONFIG, UserData, check_cloud_config

VENDORED = "cloud-init 22.4 schema (vendored)"


@dataclass(frozen=True)
class Part:
    name: str  # as packed: "01-web.yaml", or the generated "00-bakery-secrets.sh"
    template: str  # what it was rendered from ("web.yaml.j2"), or the generated part's name
    content_type: str
    text: str


@dataclass(frozen=True)
class PartCheck:
    part: str
    checkers: list[str]  # what checked it, in order
    problem: str | None  # the first checker's complaint; None when every checker accepted it


def parts(user_data: UserData) -> list[Part]:
    return [Part(name, template, ctype, text)
            for (template, _), (name, ctype, text) in zip(user_data.parts, user_data.documents)]


def part(user_data: UserData, wanted: str, where: str) -> Part:
    """The part named as packed ("01-web.yaml"), by its template ("web.yaml.j2") or its number (1-based)."""
    found = parts(user_data)
    for i, p in enumerate(found, start=1):
        if wanted in (p.name, p.template, str(i)):
            return p
    listed = ", ".join(f"{i} {p.name} ({p.template})" for i, p in enumerate(found, start=1))
    raise ConfigError(f"{where}: --part: no part {wanted!r}; the parts are: {listed}")


def check(user_data: UserData, where: str) -> list[PartCheck]:
    """Every cloud-config part, checked by the vendored schema and the installed cloud-init if any."""
    host = shutil.which("cloud-init")
    out = []
    for p in parts(user_data):
        if p.content_type != CLOUD_CONFIG:
            continue
        checkers, problem = [VENDORED], None
        try:
            check_cloud_config(p.text, f"{where}: {p.name}")
        except ConfigError as exc:
            problem = exc.message
        if host is not None:
            checkers.append(f"{host} schema -c")
            problem = problem or _host_check(host, p, where)
        out.append(PartCheck(p.name, checkers, problem))
    return out


def _host_check(cloud_init: str, p: Part, where: str) -> str | None:
    with tempfile.TemporaryDirectory(prefix="bakery-schema-") as tmp:
        path = Path(tmp) / p.name
        path.write_text(p.text)
        try:
            done = subprocess.run([cloud_init, "schema", "-c", str(path)], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{where}: {p.name}: {cloud_init} schema -c did not run: {exc}"
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return f"{where}: {p.name}: cloud-init schema -c: {lines[-1] if lines else f'exit {done.returncode}'}"
