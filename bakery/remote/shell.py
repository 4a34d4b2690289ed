"""The OpenSSH client command that reaches an instance, with its host keys pinned.

bakery never trusts a host key on first use: a builder's is the one the build generated (written
next to the build's private key as ``known_hosts``), a launched instance's are those its cloud-init
printed on the console (GetConsoleOutput: the "SSH HOST KEY KEYS" block), as careful operators pin
EC2 instances. Each known_hosts line is written under the instance id as a HostKeyAlias, so the
same pinning holds whether the instance is reached at its private address, through a bastion or,
on the local cloud, at 127.0.0.1 inside its network namespace.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

KNOWN_HOSTS = "known_hosts"


@dataclass(frozen=True)
class Jump:
    host: str
    user: str
    port: int = 22
    key_file: Path | None = None  # the bastion's own key (ssh -J would offer it only the target's)

    def options(self) -> list[str]:
        if self.key_file is None:
            return ["-J", f"{self.user}@{self.host}:{self.port}"]
        hop = shlex.join(["ssh", "-i", str(self.key_file), "-o", "IdentitiesOnly=yes", "-p", str(self.port),
                          "-W", "%h:%p", f"{self.user}@{self.host}"])
        return ["-o", f"ProxyCommand={hop}"]


@dataclass(frozen=True)
class SshCommand:
    alias: str  # the known_hosts name (HostKeyAlias)
    user: str
    host: str
    key_file: Path
    known_hosts: Path
    port: int = 22
    prefix: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", NS] on the local cloud
    jump: Jump | None = None
    command: str | None = None

    def argv(self) -> list[str]:
        args = [*self.prefix, "ssh", "-i", str(self.key_file), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", f"HostKeyAlias={self.alias}", "-o", "UpdateHostKeys=no"]
        if self.port != 22:
            args += ["-p", str(self.port)]
        if self.jump is not None:
            args += self.jump.options()
        args.append(f"{self.user}@{self.host}")
        if self.command:
            args += ["--", self.command]
        return args

    def line(self) -> str:
        return shlex.join(self.argv())


def builder_alias(build_id: str) -> str:
    """The known_hosts name of a build's builder (its instance id is not known when its key is made)."""
    return f"bakery-builder-{build_id}"


def write_known_hosts(path: Path, alias: str, public_keys: list[str]) -> Path:
    """known_hosts naming each key under ``alias`` (public data: 0644, in a 0700 directory)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lines = [f"{alias} {' '.join(key.split()[:2])}\n" for key in public_keys]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines))
    os.chmod(tmp, 0o644)
    tmp.replace(path)
    return path
