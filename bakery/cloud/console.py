"""What an instance's console says about its boot: whether cloud-init finished, and which of its
modules failed.

cloud-init writes both to the console on Debian's images, on EC2 as on the local cloud:
"Cloud-init v. 22.4.2 finished at ... Datasource DataSourceEc2.  Up 3.2 seconds" once its last
stage is over, and "Running module scripts-user (<module ...>) failed" for each module that
failed. The console of an instance that booted more than once holds every boot; only the last one
counts.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable

from bakery.errors import BootFailed
from bakery.waits import Backoff, wait_for

_BOOT_START = re.compile(r"Cloud-init v\. \S+ running 'init-local'")
_FINISHED = re.compile(r"Cloud-init v\. (\S+) finished at .*?Datasource (\S+?)\.?\s")
_FAILED = re.compile(r"Running module (\S+) \(.*?\) failed")


@dataclass(frozen=True)
class BootResult:
    finished: bool
    failed_modules: tuple[str, ...] = ()
    datasource: str | None = None  # e.g. "DataSourceEc2"

    @property
    def ok(self) -> bool:
        return self.finished and not self.failed_modules


def boot_result(console: str) -> BootResult:
    """cloud-init's outcome in the last boot the console shows (not finished while it runs)."""
    starts = list(_BOOT_START.finditer(console))
    last = console[starts[-1].start():] if starts else console
    failed = tuple(dict.fromkeys(m.group(1) for m in _FAILED.finditer(last)))
    finished = _FINISHED.search(last)
    return BootResult(finished is not None, failed, finished.group(2) if finished else None)


def wait_cloud_init(console: Callable[[str], str], instance_id: str, deadline: float) -> BootResult:
    """Poll the instance's console (``console(instance_id)``, GetConsoleOutput) until cloud-init
    finished: its result when no module failed, BootFailed naming the failed modules otherwise."""
    last = [BootResult(False)]

    def attempt() -> BootResult | None:
        last[0] = result = boot_result(console(instance_id))
        return result if result.finished else None

    result = wait_for(attempt, what=f"cloud-init on {instance_id} to finish",
                      timeout=max(0.0, deadline - time.monotonic()),
                      backoff=Backoff(initial=0.2, factor=1.5, max_interval=2.0),
                      hint=lambda: "its console shows no end of cloud-init yet")
    if result.failed_modules:
        raise BootFailed(f"{instance_id}: cloud-init finished with failed module(s): "
                         f"{', '.join(result.failed_modules)} (its console: GetConsoleOutput, "
                         f"`aws ec2 get-console-output --instance-id {instance_id}`)")
    return result


_HOST_KEYS = re.compile(r"-----BEGIN SSH HOST KEY KEYS-----\s*\n(.*?)-----END SSH HOST KEY KEYS-----", re.S)
_KEY_LINE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|ssh-dss) [A-Za-z0-9+/=]+")


def host_keys(console: str) -> list[str]:
    """The SSH host public keys cloud-init printed in the last boot ("type base64" each), for pinning."""
    blocks = _HOST_KEYS.findall(console)
    if not blocks:
        return []
    return [m.group(0) for line in blocks[-1].splitlines() if (m := _KEY_LINE.match(line.strip()))]
