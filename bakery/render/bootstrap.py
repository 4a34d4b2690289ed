"""The `bootstrap` strategy: a recipe's own steps, run at boot by cloud-init.

One recipe serves both ways: baked (steps over SSH into an image) or bootstrapped
(the same steps as one shell script part in the user data, run by cloud-init's
scripts-user module on first boot). Keeping every step in one script preserves the
recipe's order exactly, which separate write_files/runcmd entries would not (cloud-init
writes files in its init stage, long before runcmd). Uploads travel inline, gzip +
base64, so large uploads hit the 16 KB user data limit and are reported there.
"""

from __future__ import annotations

import base64
import io
import shlex
import tarfile

from bakery.config.recipe import Recipe, render_step, template_context

HEADER = """#!/bin/sh
# bakery bootstrap of recipe {recipe}: the recipe's steps, in order, at first boot.
set -eu
export DEBIAN_FRONTEND=noninteractive
bakery_step() {{  # name, retries, on_failure, timeout, then the step's command on stdin
  name=$1 retries=$2 policy=$3 secs=$4 f=$(mktemp /tmp/bakery-step.XXXXXXXX); cat > "$f"; chmod 700 "$f"
  attempt=0
  while :; do
    attempt=$((attempt + 1)); rc=0
    timeout -k 10s "${{secs}}s" "$f" </dev/null || rc=$?
    [ "$rc" -eq 0 ] && break
    if [ "$attempt" -le "$retries" ]; then echo "bakery: step '$name' failed ($rc), retrying"; sleep 2; continue; fi
    echo "bakery: step '$name' failed with status $rc" >&2
    rm -f "$f"; [ "$policy" = continue ] && return 0; exit "$rc"
  done
  rm -f "$f"; echo "bakery: step '$name' ok"
}}
"""


def _payload(path) -> str:
    """A file or directory as base64 of a gzipped tar (one format for both)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tar:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                tar.add(child, arcname=str(child.relative_to(path)), recursive=False)
        else:
            tar.add(path, arcname=path.name, recursive=False)
    return base64.b64encode(buf.getvalue()).decode()


def bootstrap_script(recipe: Recipe, variables: dict[str, str]) -> str:
    context = template_context(recipe, variables, "bootstrap", "bootstrap")
    out = [HEADER.format(recipe=recipe.name)]
    for index, raw in enumerate(recipe.steps):
        step = render_step(recipe, raw, index, context)
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in step.env.items())
        if step.kind == "upload":
            up = step.upload
            local = recipe.local_path(up.source)
            dest = shlex.quote(up.dest)
            if local.is_dir():
                body = f"mkdir -p {dest}\nbase64 -d <<'BAKERY_DATA' | tar -xz --no-same-owner -C {dest}\n"
            else:
                tmp = shlex.quote(up.dest + ".bakery-part")
                body = (f"mkdir -p $(dirname {dest})\nd=$(mktemp -d)\nbase64 -d <<'BAKERY_DATA' | tar -xz -C \"$d\"\n"
                        f"mv \"$d\"/{shlex.quote(local.name)} {tmp} && rmdir \"$d\" && mv -f {tmp} {dest}\n")
            body = body.replace("BAKERY_DATA\n", "BAKERY_DATA\n" + _payload(local) + "\nBAKERY_DATA\n", 1)
            if up.owner:
                body += f"chown -R {shlex.quote(up.owner)} {dest}\n"
            if up.mode:
                body += (f"find {dest} -type f -exec chmod {up.mode} {{}} +\n" if local.is_dir()
                         else f"chmod {up.mode} {dest}\n")
        elif step.kind == "script":
            body = recipe.local_path(step.script).read_text()
        else:
            body = step.shell
        if not body.startswith("#!"):
            body = "#!/bin/sh -e\n" + body
        marker = f"BAKERY_STEP_{index}"
        out.append(f"# step {index + 1}: {step.name}\n({exports}bakery_step {shlex.quote(step.name)} {step.retries} "
                   f"{step.on_failure} {int(step.timeout)} <<'{marker}'\n{body.rstrip()}\n{marker}\n)\n")
    out.append("echo 'bakery: bootstrap finished'\n")
    return "".join(out)
