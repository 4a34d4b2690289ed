"""The persistent step runner's sudo path: a local-cloud sandbox logged into as `admin`, where sudo
steps and plain steps each keep a runner of their own (tests/test_ssh_runner.py: the rest)."""

from __future__ import annotations

import pytest
import yaml

from bakery.remote.dial import Opener
from bakery.remote.ssh import SSHConnector, Target
from tests.test_ssh_runner import RUNNER_PID, run

pytestmark = pytest.mark.local


def test_sudo_steps_run_as_root_and_plain_steps_as_the_login_user(local_base, local_sandboxes, local_keys,
                                                                   local_boot_wait):
    user, host = local_keys
    user_data = "#cloud-config\n" + yaml.safe_dump({"ssh_keys": {"ed25519_private": host.private_openssh,
                                                                 "ed25519_public": host.public_openssh}})
    box = local_sandboxes([local_base], user_data=user_data.encode(), meta_data={"public-keys": [user.public_openssh]})
    local_boot_wait(box)  # cloud-init creates `admin` with passwordless sudo
    conn = SSHConnector(Target(opener=Opener("", box.name, lambda timeout: box.connect(22, timeout)), user="admin",
                               login_key=user.paramiko_key(), host_key=host.public_openssh, label=box.name))
    conn.connect(timeout=60)
    try:
        runners = {}
        for i in range(3):  # interleaved: each kind keeps its own runner
            for sudo, who in ((True, "root"), (False, "admin")):
                res, lines = run(conn, f"id -un; echo \"$V\"; {RUNNER_PID}", env={"V": f"v {i}"}, sudo=sudo)
                assert (res.exit_status, lines[:2]) == (0, [who, f"v {i}"])
                runners.setdefault(sudo, set()).add(lines[2])
        assert len(runners[True]) == len(runners[False]) == 1 and runners[True] != runners[False]
        res, _ = run(conn, "sleep 30", sudo=True, timeout=1)
        assert res.timed_out and res.exit_status == 124
    finally:
        conn.close()
