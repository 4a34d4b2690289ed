"""Where moto answers with a stand-in and EC2 has a real answer, the local endpoint gives the real one.

Installed once, in the endpoint's process only (server.py), on moto's own response handlers, so
moto still parses the request, finds the instance (or answers InvalidInstanceID.NotFound) and
serialises the answer as EC2 does.
"""

from __future__ import annotations

from bakery.local.cloud import LocalCloud


def install(machines: LocalCloud) -> None:
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.ec2.responses.general import General
    from moto.ec2.utils import Base64EncodedString

    def get_console_output(self) -> ActionResult:
        """The machine's console: its boot, cloud-init's output and host key fingerprints (moto:
        a canned 2006 Xen boot log)."""
        instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
        text = machines.console_output(instance.id)
        return ActionResult({"InstanceId": instance.id, "Timestamp": utcnow(),
                             "Output": Base64EncodedString.from_raw_string(text)})

    General.get_console_output = get_console_output
