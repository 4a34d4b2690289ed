"""Reading cloud-init's outcome from an instance's console, on text a real local instance printed
(Debian 12's cloud-init 22.4.2: one package that does not exist, one runcmd that fails)."""

from __future__ import annotations

import time

import pytest

from bakery.cloud.console import boot_result, wait_cloud_init
from bakery.errors import BootFailed, WaitTimeout

RUNNING = """\
[  OK  ] Started ssh.service - OpenBSD Secure Shell server.
[14737.382442] cloud-init[85]: Cloud-init v. 22.4.2 running 'modules:config' at Mon, 30 Nov 2026 07:55:45 +0000. Up 14737.34 seconds.
[14737.972994] cloud-init[113]: Cloud-init v. 22.4.2 running 'modules:final' at Mon, 30 Nov 2026 07:55:45 +0000. Up 14737.93 seconds.
[14740.743016] cloud-init[113]: E: Unable to locate package definitely-not-a-package
[14740.743120] cloud-init[113]: 2026-11-30 07:55:48,651 - util.py[WARNING]: Failed to install packages: ['definitely-not-a-package']
[14740.748241] cloud-init[113]: 2026-11-30 07:55:48,653 - util.py[WARNING]: Running module package-update-upgrade-install (<module 'cloudinit.config.cc_package_update_upgrade_install' from '/usr/lib/python3/dist-packages/cloudinit/config/cc_package_update_upgrade_install.py'>) failed
[14740.757192] cloud-init[113]: /var/lib/cloud/instance/scripts/runcmd: 2: False: not found
[14740.760383] cloud-init[113]: 2026-11-30 07:55:48,669 - cc_scripts_user.py[WARNING]: Failed to run module scripts-user (scripts in /var/lib/cloud/instance/scripts)
[14740.760556] cloud-init[113]: 2026-11-30 07:55:48,669 - util.py[WARNING]: Running module scripts-user (<module 'cloudinit.config.cc_scripts_user' from '/usr/lib/python3/dist-packages/cloudinit/config/cc_scripts_user.py'>) failed
<14>Nov 30 07:55:48 cloud-init: -----BEGIN SSH HOST KEY FINGERPRINTS-----
"""
FINISHED = ("[14740.857490] cloud-init[113]: Cloud-init v. 22.4.2 finished at Mon, 30 Nov 2026 07:55:48 +0000. "
            "Datasource DataSourceEc2.  Up 14740.85 seconds\n")
CLEAN_BOOT = ("[   1.1] cloud-init[40]: Cloud-init v. 22.4.2 running 'init-local' at Mon, 30 Nov 2026 08:00:00 +0000.\n"
              "[   3.2] cloud-init[90]: Cloud-init v. 22.4.2 finished at Mon, 30 Nov 2026 08:00:02 +0000. "
              "Datasource DataSourceEc2.  Up 3.2 seconds\n")


def test_cloud_init_is_not_finished_while_its_last_stage_runs():
    assert not boot_result(RUNNING).finished and not boot_result(RUNNING).ok


def test_a_finished_boot_names_each_failed_module_once_and_its_datasource():
    result = boot_result(RUNNING + FINISHED)
    assert result.finished and not result.ok
    assert result.failed_modules == ("package-update-upgrade-install", "scripts-user")
    assert result.datasource == "DataSourceEc2"


def test_only_the_last_boot_counts():
    first = "Cloud-init v. 22.4.2 running 'init-local' at x.\n" + RUNNING + FINISHED
    assert boot_result(first + CLEAN_BOOT).ok
    assert not boot_result(CLEAN_BOOT + first).ok


def test_waiting_ends_with_the_failed_modules_named_or_times_out_saying_so():
    consoles = iter([RUNNING, RUNNING, RUNNING + FINISHED])
    with pytest.raises(BootFailed, match=r"i-1: cloud-init finished with failed module\(s\): "
                                         r"package-update-upgrade-install, scripts-user"):
        wait_cloud_init(lambda iid: next(consoles), "i-1", deadline=float("inf"))
    assert wait_cloud_init(lambda iid: CLEAN_BOOT, "i-2", deadline=float("inf")).ok
    with pytest.raises(WaitTimeout, match="cloud-init on i-3 to finish: its console shows no end of cloud-init yet"):
        wait_cloud_init(lambda iid: RUNNING, "i-3", deadline=time.monotonic() + 0.3)
