"""The `bootstrap` strategy: a recipe's own steps, run at boot by cloud-init.

One recipe serves both ways: baked (steps over SSH into an image) or bootstrapped
(the same steps as one shell script part in the user data, run by cloud-init's
scripts-user module on first boot). Keeping every step in one script preserves the
recipe's order exactly, which separate write_files/runcmd entries would not (cloud-init
writes files in its init stage, long before runcmd). Uploads travel inline, gzip +
base64, so large uploads hit the 16 KB user data limit and are reported there; they land as
they do in a bake (the same tar stream and unpack command, bakery/render/upload.py).
"""

from __future__ import annotations

import base64
import gzip
import io
import shlex

from bakery.config.recipe import Recipe, render_step, template_context
from bakery.render.upload import Entry, entries, unpack_command, write_tar

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


def _payload(items: list[Entry], owner: str | None) -> str:
    """The upload's tar stream (render/upload.py), gzipped and base64'd for the heredoc."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        write_tar(gz, items, owner)
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
            items = entries(local, up.mode, up.dir_mode, f"{recipe.path}: steps[{index}].upload.source")
            unpack = unpack_command(up.dest, tree=local.is_dir(), owner=up.owner)
            body = (f"base64 -d <<'BAKERY_DATA' | gzip -dc | sh -c {shlex.quote(unpack)}\n"
                    f"{_payload(items, up.owner)}\nBAKERY_DATA\n")
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
