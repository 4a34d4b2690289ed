"""`bakery local.install` (issue 19 item 4): the local cloud's system packages from a pip install,
in one list that scripts/install.sh uses too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bakery.local.prereqs import PACKAGES, REQUIRED_COMMANDS, missing_packages
from tests.support import ROOT

BAKERY = Path(sys.executable).parent / "bakery"


def test_every_command_the_local_cloud_runs_comes_from_a_package_it_installs():
    assert set(REQUIRED_COMMANDS.values()) <= set(PACKAGES)
    assert "openssh-client" in PACKAGES  # `bakery ssh` hands the terminal to OpenSSH


def test_dpkg_says_which_packages_are_missing():
    assert missing_packages(("bash", "coreutils", "bakery-no-such-package")) == ["bakery-no-such-package"]


def test_on_a_machine_set_up_by_install_sh_the_check_finds_nothing_missing():
    done = subprocess.run([str(BAKERY), "local.install", "--check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok: this machine can run the local cloud (root, overlayfs, every package)\n"


def test_install_sh_installs_the_local_clouds_packages_with_bakery_and_names_none_of_them_itself():
    script = (ROOT / "scripts/install.sh").read_text()
    assert ".venv/bin/bakery local.install" in script.splitlines()
    apt_lines = " ".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert not {"mmdebstrap", "slirp4netns", "nftables", "systemd-container", "zstd"} & set(apt_lines.split())
