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


def test_apt_installs_with_the_lists_as_they_are_when_they_know_the_package():
    from bakery.local.prereqs import _apt_install

    said: list[str] = []
    _apt_install(["bash"], said.append)  # installed already: apt-get says so, and nothing is updated
    assert said == ["$ apt-get install -y -q --no-install-recommends bash"]


def test_a_package_the_lists_do_not_know_updates_them_once_then_fails_in_one_line():
    import pytest

    from bakery.local.errors import LocalCloudError
    from bakery.local.prereqs import _apt_install

    said: list[str] = []
    with pytest.raises(LocalCloudError) as refused:
        _apt_install(["bakery-no-such-package"], said.append)
    assert [line.split()[2] for line in said] == ["install", "update", "install"]
    assert refused.value.message.startswith("local.install: apt-get install failed (100): E: Unable to locate package")


def test_without_root_or_apt_get_it_says_what_to_do_and_installs_nothing(monkeypatch):
    import pytest

    from bakery.local import prereqs
    from bakery.local.errors import LocalCloudError

    monkeypatch.setattr(prereqs, "missing_packages", lambda: ["nftables"])
    monkeypatch.setattr(prereqs.os, "geteuid", lambda: 1000)
    with pytest.raises(LocalCloudError) as refused:
        prereqs.install(lambda line: None)
    assert refused.value.message == ("local.install: installing nftables needs root: re-run it as root "
                                     '(sudo -E "$(command -v bakery)" ..., or sudo -E .venv/bin/invoke ... in a checkout)')
    monkeypatch.setattr(prereqs.os, "geteuid", lambda: 0)
    monkeypatch.setattr(prereqs.shutil, "which", lambda name: None)
    with pytest.raises(LocalCloudError) as refused:
        prereqs.install(lambda line: None)
    assert refused.value.message == ("local.install: no apt-get (Debian 12 or Ubuntu): install nftables with this "
                                     "system's package manager")
