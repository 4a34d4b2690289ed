"""Uploads as a user meets them: a recipe in a temp dir, `invoke bake` on moto, the tests'
private sshd as the builder (its /srv is a scratch directory we can read here).

What an upload lands with and what it leaves alone is README "Uploads"; bakery/render/upload.py."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from tests.matrix import cli_environment
from tests.support import ROOT, leftovers, recipe_text, write_recipe

pytestmark = pytest.mark.e2e

NOBODY, NOGROUP = 65534, 65534  # Debian's nobody:nogroup, on the builder as here


def bake(tmp_path, moto, recipe: str = "r") -> dict:
    out = subprocess.run([sys.executable, "-m", "invoke", "bake", "--recipe", recipe, "--json"], cwd=ROOT,
                         env=cli_environment(moto.url, tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def tree(root, spec: dict) -> None:
    """Make files ("f": (text, mode)), directories ("d/": mode) and links ("l": "->target") under root."""
    for name, what in spec.items():
        path = root / name.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir(exist_ok=True)
            path.chmod(what)
        elif isinstance(what, str):
            path.symlink_to(what.removeprefix("->"))
        else:
            path.write_text(what[0])
            path.chmod(what[1])


def looks(path) -> tuple[str, int, int]:
    """(mode, uid, gid) as `stat` shows them on the builder."""
    st = path.lstat()
    return oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid


def test_an_upload_with_owner_and_mode_changes_only_what_it_brings(moto, builder_host, tmp_path):
    recipes = tmp_path / "recipes"
    tree(recipes / "files/app", {"conf/": 0o755, "conf/app.conf": ("port=80\n", 0o644), "bin/": 0o755,
                                 "bin/run": ("#!/bin/sh\n", 0o755), "new/": 0o755, "new/data": ("d\n", 0o644)})
    steps = """\
  - name: an earlier step populates /srv/app
    shell: |
      mkdir -p /srv/app/bin /srv/app/conf
      printf '#!/bin/sh\\necho tool\\n' > /srv/app/bin/tool
      chmod 0755 /srv/app/bin/tool; chmod 0750 /srv/app; chmod 0700 /srv/app/conf
  - name: config into it
    upload: {source: files/app, dest: /srv/app, mode: "0640", owner: "nobody:nogroup"}
"""
    write_recipe(recipes, "r", recipe_text(builder_host.port, steps))
    bake(tmp_path, moto)

    app = builder_host.fs / "srv/app"
    # what was there keeps its owner and modes: the earlier step's tool still runs, as root's
    assert looks(app / "bin/tool") == ("0o755", 0, 0) and (app / "bin/tool").read_text() == "#!/bin/sh\necho tool\n"
    assert [looks(app / p) for p in ("", "conf", "bin")] == [("0o750", 0, 0), ("0o700", 0, 0), ("0o755", 0, 0)]
    # what the upload brought has its owner, and `mode` on every file
    brought = ("conf/app.conf", "bin/run", "new", "new/data")
    assert [looks(app / p) for p in brought] == [("0o640", NOBODY, NOGROUP)] * 2 + [("0o755", NOBODY, NOGROUP),
                                                                                   ("0o640", NOBODY, NOGROUP)]
    assert leftovers(moto.client()) == {}


def test_without_mode_an_upload_keeps_the_source_modes_symlinks_and_empty_directories(moto, builder_host, tmp_path):
    recipes = tmp_path / "recipes"
    tree(recipes / "files/tree", {"bin/": 0o755, "bin/run": ("#!/bin/sh\necho run\n", 0o755),
                                  "readme": ("hi\n", 0o600), "private/": 0o750, "private/key": ("k\n", 0o400),
                                  "empty/": 0o755, "latest": "->bin/run", "elsewhere": "->/etc/hostname"})
    tree(recipes / "files", {"tool.sh": ("#!/bin/sh\necho tool\n", 0o755)})
    steps = """\
  - name: a tree as it is
    upload: {source: files/tree, dest: /srv/tree}
  - name: the same tree, its directories locked
    upload: {source: files/tree, dest: /srv/locked, dir_mode: "0700"}
  - name: one executable
    upload: {source: files/tool.sh, dest: /srv/bin/tool}
"""
    write_recipe(recipes, "r", recipe_text(builder_host.port, steps))
    bake(tmp_path, moto)

    srv = builder_host.fs / "srv"
    copy = srv / "tree"
    assert [looks(copy / p)[0] for p in ("", "bin", "bin/run", "readme", "private", "private/key", "empty")] == \
        ["0o755", "0o755", "0o755", "0o600", "0o750", "0o400", "0o755"]
    assert os.readlink(copy / "latest") == "bin/run" and os.readlink(copy / "elsewhere") == "/etc/hostname"
    assert list((copy / "empty").iterdir()) == [] and looks(copy / "readme")[1:] == (0, 0)
    locked = srv / "locked"
    assert [looks(locked / p)[0] for p in ("", "bin", "private", "empty")] == ["0o700"] * 4
    assert [looks(locked / p)[0] for p in ("bin/run", "readme", "private/key")] == ["0o755", "0o600", "0o400"]
    assert looks(srv / "bin/tool")[0] == "0o755" and (srv / "bin/tool").read_text() == "#!/bin/sh\necho tool\n"


def test_what_an_upload_carries_is_in_the_inputs_hash(moto, builder_host, tmp_path):
    """A change to anything the upload brings into the image bakes again; nothing else does."""
    recipes = tmp_path / "recipes"
    tree(recipes / "files/site", {"index.html": ("<p>hi</p>\n", 0o644), "css/": 0o755,
                                  "css/site.css": ("p{}\n", 0o644)})
    steps = "  - name: site\n    upload: {source: files/site, dest: /srv/site}\n"
    write_recipe(recipes, "r", recipe_text(builder_host.port, steps))
    first = bake(tmp_path, moto)
    assert bake(tmp_path, moto)["skipped"]

    (recipes / "files/site/css/fonts").mkdir()  # an empty directory, two levels down
    with_dir = bake(tmp_path, moto)
    assert not with_dir["skipped"] and with_dir["inputs_hash"] != first["inputs_hash"]
    assert (builder_host.fs / "srv/site/css/fonts").is_dir()

    (recipes / "files/site/css").chmod(0o700)  # a directory's mode
    shutil.rmtree(builder_host.fs / "srv/site")  # as on a fresh builder: this one's /srv outlives its bakes
    with_mode = bake(tmp_path, moto)
    assert not with_mode["skipped"] and with_mode["inputs_hash"] not in (first["inputs_hash"], with_dir["inputs_hash"])
    assert looks(builder_host.fs / "srv/site/css")[0] == "0o700"

    assert bake(tmp_path, moto)["skipped"]
    assert len(builder_host.served) == 3


def test_a_bootstrapped_upload_lands_as_a_baked_one(tmp_path):
    """The bootstrap strategy runs the same upload at boot: the generated script, run here as root."""
    from bakery.config.recipe import load_recipe
    from bakery.render.bootstrap import bootstrap_script

    recipes, dest = tmp_path / "recipes", tmp_path / "image/app"
    tree(recipes / "files/app", {"conf/": 0o755, "conf/app.conf": ("port=80\n", 0o644), "new/": 0o700})
    steps = f"""\
  - name: an earlier step populates the directory
    shell: mkdir -p {dest}/conf && printf 'x\\n' > {dest}/conf/tool && chmod 0755 {dest}/conf/tool {dest}/conf
  - name: config into it
    upload: {{source: files/app, dest: {dest}, mode: "0640", owner: "nobody:nogroup"}}
"""
    write_recipe(recipes, "r", "source: {ami: ami-12345678}\nsteps:\n" + steps)
    script = tmp_path / "bootstrap.sh"
    script.write_text(bootstrap_script(load_recipe(recipes, "r"), {}))
    out = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert looks(dest / "conf/tool") == ("0o755", 0, 0) and looks(dest / "conf") == ("0o755", 0, 0)
    assert [looks(dest / p) for p in ("conf/app.conf", "new")] == [("0o640", NOBODY, NOGROUP), ("0o700", NOBODY, NOGROUP)]
