"""Auto Scaling groups on a launch template, and their instance refreshes. A mixin of the EC2
facade: a tier with `auto_scaling` runs as a group (bakery/launch/group.py).

A group is tagged like everything bakery makes (its tags carry the environment, tier and the run
that made it, and propagate to its instances at launch), so the janitor and a sweep by the run's
tag find it. Its launch template is named by version number, never `$Latest` or `$Default`: the
group's own record then says which image it launches, and a rollout changes it by a refresh.
"""

from __future__ import annotations

from bakery.errors import CloudError
from bakery.waits import wait_for

REFRESH_ENDED = ("Successful", "Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed")
REFRESH_RUNNING = ("Pending", "InProgress", "Baking")  # RollbackInstanceRefresh is accepted only in these
GROUP_TIMEOUT = 900.0  # a group's instances in service, or a deleted group gone


class ScalingAPI:
    """Auto Scaling operations of the EC2 facade."""

    @property
    def autoscaling(self):
        return self.service("autoscaling")

    def auto_scaling_group(self, name: str, *, deleting: bool = False) -> dict | None:
        """The group, or None. One AWS is still deleting (Status "Delete in progress") counts as
        gone unless `deleting`: its name is not free again until it has gone."""
        groups = self.call("autoscaling describe-auto-scaling-groups", self.autoscaling.describe_auto_scaling_groups,
                           AutoScalingGroupNames=[name])["AutoScalingGroups"]
        return next((g for g in groups if deleting or g.get("Status") != "Delete in progress"), None)

    def auto_scaling_groups_tagged(self, key: str, value: str) -> list[dict]:
        return self.call("autoscaling describe-auto-scaling-groups", self.autoscaling.describe_auto_scaling_groups,
                         Filters=[{"Name": f"tag:{key}", "Values": [value]}])["AutoScalingGroups"]

    def create_auto_scaling_group(self, name: str, *, template: str, version: int, min_size: int, max_size: int,
                                  desired: int, subnets: list[str], grace: int, target_groups: list[str],
                                  tags: dict[str, str]) -> None:
        self.call("autoscaling create-auto-scaling-group", self.autoscaling.create_auto_scaling_group,
                  AutoScalingGroupName=name, MinSize=min_size, MaxSize=max_size, DesiredCapacity=desired,
                  LaunchTemplate={"LaunchTemplateName": template, "Version": str(version)},
                  VPCZoneIdentifier=",".join(subnets), HealthCheckType="ELB" if target_groups else "EC2",
                  HealthCheckGracePeriod=grace, TargetGroupARNs=target_groups,
                  Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": True, "ResourceId": name,
                         "ResourceType": "auto-scaling-group"} for k, v in sorted(tags.items())])

    def resize_auto_scaling_group(self, name: str, *, min_size: int, max_size: int, desired: int) -> None:
        self.call("autoscaling update-auto-scaling-group", self.autoscaling.update_auto_scaling_group,
                  AutoScalingGroupName=name, MinSize=min_size, MaxSize=max_size, DesiredCapacity=desired)

    def delete_auto_scaling_group(self, name: str, *, timeout: float = GROUP_TIMEOUT) -> None:
        """Delete the group and its instances (ForceDelete), and wait until the group and they are
        gone (one being deleted already is waited for)."""
        group = self.auto_scaling_group(name, deleting=True)
        if group is None:
            return
        if group.get("Status") != "Delete in progress":
            try:
                self.call(f"autoscaling delete-auto-scaling-group {name}", self.autoscaling.delete_auto_scaling_group,
                          AutoScalingGroupName=name, ForceDelete=True)
            except CloudError as exc:
                if "not found" not in exc.message:
                    raise
        wait_for(lambda: self.auto_scaling_group(name, deleting=True) is None or None, timeout=timeout,
                 what=f"Auto Scaling group {name} to be deleted")
        for member in group.get("Instances", []):
            self.wait_instance_state(member["InstanceId"], "terminated", timeout=timeout)

    def start_instance_refresh(self, name: str, *, template: str, version: int | str, min_healthy: int,
                               warmup: int) -> str:
        """Replace the group's instances by ones of `template` version `version`, keeping
        `min_healthy` % of its desired capacity in service; the group keeps that version once the
        refresh succeeds, and a failed one rolls back by itself (AutoRollback)."""
        return self.call(
            f"autoscaling start-instance-refresh {name}", self.autoscaling.start_instance_refresh,
            AutoScalingGroupName=name, Strategy="Rolling",
            DesiredConfiguration={"LaunchTemplate": {"LaunchTemplateName": template, "Version": str(version)}},
            Preferences={"MinHealthyPercentage": min_healthy, "InstanceWarmup": warmup, "SkipMatching": True,
                         "AutoRollback": True})["InstanceRefreshId"]

    def instance_refresh(self, name: str, refresh_id: str) -> dict:
        found = self.call("autoscaling describe-instance-refreshes", self.autoscaling.describe_instance_refreshes,
                          AutoScalingGroupName=name, InstanceRefreshIds=[refresh_id])["InstanceRefreshes"]
        if not found:
            raise CloudError(f"instance refresh {refresh_id} of Auto Scaling group {name} is gone")
        return found[0]

    def rollback_instance_refresh(self, name: str) -> None:
        self.call(f"autoscaling rollback-instance-refresh {name}", self.autoscaling.rollback_instance_refresh,
                  AutoScalingGroupName=name)
