"""The OpenSSH command `invoke ssh` runs: host keys pinned under the instance's alias, the user's
key only, and a bastion hop that uses the bastion's own key when it has one."""

from __future__ import annotations

import shlex
from pathlib import Path

from bakery.remote.shell import Jump, SshCommand, write_known_hosts


def test_known_hosts_name_every_key_under_the_alias_and_the_command_pins_them(tmp_path):
    known = write_known_hosts(tmp_path / "kh" / "i-1", "i-1", ["ssh-ed25519 AAAA root@ip-10-0-0-5", "ssh-rsa BBBB"])
    assert known.read_text() == "i-1 ssh-ed25519 AAAA\ni-1 ssh-rsa BBBB\n"
    assert oct(known.stat().st_mode & 0o777) == "0o644" and oct(known.parent.stat().st_mode & 0o777) == "0o700"
    argv = SshCommand("i-1", "admin", "10.0.0.5", Path("/k"), known, command="uptime").argv()
    assert argv[:3] == ["ssh", "-i", "/k"] and argv[-3:] == ["admin@10.0.0.5", "--", "uptime"]
    assert {"IdentitiesOnly=yes", f"UserKnownHostsFile={known}", "StrictHostKeyChecking=yes",
            "HostKeyAlias=i-1"} <= set(argv)


def test_a_bastion_is_a_jump_host_or_with_its_own_key_a_proxy_command():
    plain = SshCommand("i-1", "admin", "10.0.0.5", Path("/k"), Path("/kh"), jump=Jump("b.example", "ops")).argv()
    assert plain[plain.index("-J") + 1] == "ops@b.example:22"
    keyed = SshCommand("i-1", "admin", "10.0.0.5", Path("/k"), Path("/kh"),
                       jump=Jump("b.example", "ops", 2222, Path("/bk"))).argv()
    proxy = next(a for a in keyed if a.startswith("ProxyCommand="))
    assert shlex.split(proxy.removeprefix("ProxyCommand=")) == [
        "ssh", "-i", "/bk", "-o", "IdentitiesOnly=yes", "-p", "2222", "-W", "%h:%p", "ops@b.example"]
