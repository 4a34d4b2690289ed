"""Launch templates (a new version pinned to an image, and its undo) and target groups (register
a fleet and wait until it is in service). A mixin of the EC2 facade."""

from __future__ import annotations

from bakery.cloud.tags import tag_specs
from bakery.errors import CloudError

VERSIONS_PAGE = 200  # DescribeLaunchTemplateVersions' largest MaxResults


class TemplatesAPI:
    """Launch template and load balancer operations of the EC2 facade."""

    def new_launch_template_version(self, name: str, data: dict, description: str, *, tags: dict[str, str],
                                    merge_latest: bool = False, initial: dict | None = None) -> int:
        """A new version of the named template (created on first use, with `initial` added to
        `data`, and `tags` on the template itself: the IAM policy lets bakery change only templates
        that carry its tags); returns its number. `merge_latest` keeps everything else from the
        latest version and changes only `data`'s keys."""
        c = self.client
        try:
            self.call("describe-launch-templates", c.describe_launch_templates, LaunchTemplateNames=[name])
        except CloudError as exc:
            if "NotFound" not in self.code_of(exc):
                raise
            resp = self.call("create-launch-template", c.create_launch_template, LaunchTemplateName=name,
                             LaunchTemplateData={**(initial or {}), **data}, VersionDescription=description,
                             TagSpecifications=tag_specs(tags, "launch-template"))
            return resp["LaunchTemplate"]["LatestVersionNumber"]
        resp = self.call("create-launch-template-version", c.create_launch_template_version,
                         LaunchTemplateName=name, LaunchTemplateData=data, VersionDescription=description,
                         **({"SourceVersion": "$Latest"} if merge_latest else {}))
        return resp["LaunchTemplateVersion"]["VersionNumber"]

    def set_default_template_version(self, name: str, version: int) -> None:
        self.call("modify-launch-template", self.client.modify_launch_template, LaunchTemplateName=name,
                  DefaultVersion=str(version))

    def delete_launch_template_version(self, name: str, version: int) -> None:
        """Undo `new_launch_template_version`: version 1 was the template's creation, so the
        template goes with it; a later version is deleted unless something made it the default."""
        c = self.client
        try:
            if version == 1:
                self.call(f"delete-launch-template {name}", c.delete_launch_template, LaunchTemplateName=name)
                return
            resp = self.call(f"delete-launch-template-versions {name}", c.delete_launch_template_versions,
                             LaunchTemplateName=name, Versions=[str(version)])
        except CloudError as exc:
            if "NotFound" in self.code_of(exc):
                return
            raise
        for failed in resp.get("UnsuccessfullyDeletedLaunchTemplateVersions", []):
            error = failed.get("ResponseError", {})
            if error.get("Code") != "launchTemplateVersionDoesNotExist":
                raise CloudError(f"launch template {name} version {version} not deleted: "
                                 f"{error.get('Message', error.get('Code', 'unknown error'))}")

    def images_in_launch_templates(self) -> dict[str, str]:
        """AMI id -> the launch template version naming it, over every version of every template."""
        used: dict[str, str] = {}
        for lt in self.describe_all("describe_launch_templates", "LaunchTemplates"):
            for v in self._every_version(lt["LaunchTemplateId"], int(lt.get("LatestVersionNumber") or 1)):
                ami = v.get("LaunchTemplateData", {}).get("ImageId")
                if ami:
                    used.setdefault(ami, f"launch template {lt['LaunchTemplateName']} version {v['VersionNumber']}")
        return used

    def template_versions_marked(self, run_id: str) -> list[tuple[str, int]]:
        """(template name, version) of every launch template version a CI run wrote (its
        description carries the run's mark, tags.run_mark), newest first."""
        from bakery.cloud import tags as T

        found = []
        for lt in self.describe_all("describe_launch_templates", "LaunchTemplates"):
            for v in self._every_version(lt["LaunchTemplateId"], int(lt.get("LatestVersionNumber") or 1)):
                if T.marked_by_run(v.get("VersionDescription"), run_id):
                    found.append((lt["LaunchTemplateName"], int(v["VersionNumber"])))
        return sorted(found, key=lambda f: (f[0], -f[1]))

    def _every_version(self, template_id: str, latest: int) -> list[dict]:
        """Versions 1..latest, asked for by number range a page at a time: EC2 pages them with
        NextToken, but moto (the local cloud's API) answers with its first page and no token, and
        a version missed here would let prune deregister an image it still names."""
        out: list[dict] = []
        for low in range(1, latest + 1, VERSIONS_PAGE):
            out += self.describe_all("describe_launch_template_versions", "LaunchTemplateVersions",
                                     LaunchTemplateId=template_id, MinVersion=str(low),
                                     MaxVersion=str(min(latest, low + VERSIONS_PAGE - 1)),
                                     PaginationConfig={"PageSize": VERSIONS_PAGE})
        return out

    def deregister_targets(self, target_group_arn: str, instance_ids: list[str]) -> None:
        """Deregister the instances and wait until the target group has let them go (its
        deregistration delay: the connections they hold are drained first)."""
        targets = [{"Id": i} for i in instance_ids]
        self.call("elbv2 deregister-targets", self.elbv2.deregister_targets, TargetGroupArn=target_group_arn,
                  Targets=targets)
        self.call("elbv2 wait target-deregistered", self.elbv2.get_waiter("target_deregistered").wait,
                  TargetGroupArn=target_group_arn, Targets=targets, WaiterConfig={"Delay": 2, "MaxAttempts": 300})

    def register_targets(self, target_group_arn: str, instance_ids: list[str]) -> None:
        """Register the instances and wait until the target group reports them in service."""
        targets = [{"Id": i} for i in instance_ids]
        self.call("elbv2 register-targets", self.elbv2.register_targets, TargetGroupArn=target_group_arn,
                  Targets=targets)
        self.call("elbv2 wait target-in-service", self.elbv2.get_waiter("target_in_service").wait,
                  TargetGroupArn=target_group_arn, Targets=targets, WaiterConfig={"Delay": 2, "MaxAttempts": 150})
