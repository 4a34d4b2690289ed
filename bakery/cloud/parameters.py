"""SSM parameters that publish an image id: read, write (read back to confirm), put back, and
every AMI any version of any parameter names (prune spares those). A mixin of the EC2 facade."""

from __future__ import annotations

from bakery.cloud.session import API_ERRORS, mapped
from bakery.errors import CloudError


class ParametersAPI:
    """SSM operations of the EC2 facade."""

    def parameter(self, name: str) -> str:
        """The parameter's value; a missing parameter is an error naming it."""
        return self.call(f"ssm get-parameter {name}", self.ssm.get_parameter, Name=name)["Parameter"]["Value"]

    def parameter_value(self, name: str) -> str | None:
        """The parameter's value, or None when it does not exist."""
        try:
            return self.parameter(name)
        except CloudError as exc:
            if self.code_of(exc) == "ParameterNotFound":
                return None
            raise

    def publish_parameter(self, name: str, image_id: str) -> int:
        """Point the parameter at the image (DataType aws:ec2:image) and read it back; its new version."""
        resp = self._put_image_id(name, image_id)
        got = self.parameter(name)
        if got != image_id:
            raise CloudError(f"ssm parameter {name} reads back {got!r}, expected {image_id}")
        return resp.get("Version", 0)

    def restore_parameter(self, name: str, previous: str | None, ours: str) -> None:
        """Undo `publish_parameter`, only while the parameter still holds our value (a later
        publish by someone else wins): put the previous value back, or delete what we created."""
        if self.parameter_value(name) != ours:
            return
        if previous is None:
            self.call(f"ssm delete-parameter {name}", self.ssm.delete_parameter, Name=name)
        else:
            self._put_image_id(name, previous)

    def _put_image_id(self, name: str, value: str) -> dict:
        return self.call(f"ssm put-parameter {name}", self.ssm.put_parameter, Name=name, Value=value,
                         Type="String", DataType="aws:ec2:image", Overwrite=True)

    def images_in_parameters(self) -> dict[str, str]:
        """AMI id -> the parameter version naming it, over every version of every parameter."""
        used: dict[str, str] = {}
        try:
            for page in self.ssm.get_paginator("describe_parameters").paginate():
                for param in page["Parameters"]:
                    for hist in self.ssm.get_paginator("get_parameter_history").paginate(Name=param["Name"]):
                        for v in hist["Parameters"]:
                            if str(v.get("Value", "")).startswith("ami-"):
                                used.setdefault(v["Value"], f"SSM parameter {param['Name']} version {v.get('Version')}")
        except API_ERRORS as exc:
            raise mapped(exc, "ssm describe-parameters") from exc
        return used
