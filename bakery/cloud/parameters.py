"""SSM parameters that publish an image id: read, write (read back to confirm), put back, and
every AMI any version of any parameter names (prune spares those). A mixin of the EC2 facade."""

from __future__ import annotations

from bakery.cloud import tags as T
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

    def publish_parameter(self, name: str, image_id: str, mark: str) -> int:
        """Point the parameter at the image (DataType aws:ec2:image) and read it back; its new
        version, whose description is `mark` (tags.run_mark: the janitor finds a killed run's)."""
        resp = self._put_image_id(name, image_id, mark)
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
            self._put_image_id(name, previous, "bakery: put back")

    def _put_image_id(self, name: str, value: str, description: str) -> dict:
        return self.call(f"ssm put-parameter {name}", self.ssm.put_parameter, Name=name, Value=value,
                         Type="String", DataType="aws:ec2:image", Overwrite=True, Description=description)

    def parameters_marked(self, run_id: str) -> list[tuple[str, str | None, str]]:
        """Parameters whose current version a CI run wrote (its description carries the run's
        mark, tags.run_mark): (name, the value before the run's versions or None, the run's value)."""
        found = []
        for param in self.describe_all_parameters():
            versions = sorted(self._history(param["Name"]), key=lambda v: int(v.get("Version", 0)))
            if not versions or not T.marked_by_run(versions[-1].get("Description"), run_id):
                continue
            before = [v for v in versions if not T.marked_by_run(v.get("Description"), run_id)]
            found.append((param["Name"], before[-1]["Value"] if before else None, versions[-1]["Value"]))
        return found

    def describe_all_parameters(self) -> list[dict]:
        try:
            return [p for page in self.ssm.get_paginator("describe_parameters").paginate() for p in page["Parameters"]]
        except API_ERRORS as exc:
            raise mapped(exc, "ssm describe-parameters") from exc

    def _history(self, name: str) -> list[dict]:
        try:
            return [v for page in self.ssm.get_paginator("get_parameter_history").paginate(Name=name)
                    for v in page["Parameters"]]
        except API_ERRORS as exc:
            raise mapped(exc, f"ssm get-parameter-history {name}") from exc

    def images_in_parameters(self) -> dict[str, str]:
        """AMI id -> the parameter version naming it, over every version of every parameter."""
        used: dict[str, str] = {}
        for param in self.describe_all_parameters():
            for v in self._history(param["Name"]):
                if str(v.get("Value", "")).startswith("ami-"):
                    used.setdefault(v["Value"], f"SSM parameter {param['Name']} version {v.get('Version')}")
        return used
