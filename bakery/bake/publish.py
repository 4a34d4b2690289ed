"""Publishing a smoke-tested image: the AMI id in SSM, copies to other regions (in parallel),
launch permissions for other accounts, the AMI id in SSM in every region, a pinned launch
template version, and a deprecation time.

Everything published is a product registered on the bake's clean-up stack (and its ledger) as
it is made, so a publish that fails half-way leaves no orphan copy in some region and no SSM
value or template version naming an image that is then removed: publishing is all or nothing.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from bakery.bake.state import BakeState, Context
from bakery.cloud import tags as T
from bakery.cloud.images import snapshots_of
from bakery.errors import CloudError
from bakery.progress import submit_in_stage
from bakery.signals import block_in_this_thread


@dataclasses.dataclass
class Published:
    images: dict[str, str]  # region -> AMI id
    ssm_versions: dict[str, int] = dataclasses.field(default_factory=dict)
    shared_with: list[str] = dataclasses.field(default_factory=list)
    launch_template: str | None = None
    deprecate_at: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)


def put_parameter(ctx: Context, ec2, name: str, image_id: str, mark: str) -> int:
    """Point the parameter at the image; undone (the previous value put back) unless the bake finishes.
    Journalled before the put: restoring is a no-op unless the parameter holds this image."""
    previous = ec2.parameter_value(name)
    ctx.stack.created("ssm-parameter", name, ec2.region, f"SSM parameter {name} in {ec2.region}",
                      lambda: ec2.restore_parameter(name, previous, image_id), product=True,
                      previous=previous, value=image_id)
    return ec2.publish_parameter(name, image_id, mark)


class PublishParameter:
    """image.ssm_parameter: the home region's parameter names the new image."""

    title = "publish SSM parameter"

    def run(self, state: BakeState, ctx: Context) -> str:
        param = state.recipe.image.ssm_parameter
        version = put_parameter(ctx, ctx.ec2, param, state.image_id, T.run_mark(state.build_id))
        state.manifest.ssm_parameter = param
        return f"{param} = {state.image_id} (version {version})"


class Publish:
    """The recipe's publish: section."""

    title = None  # a stage per part: copies, sharing, SSM, launch template

    def run(self, state: BakeState, ctx: Context) -> None:
        spec, ec2, report = state.recipe.publish, ctx.ec2, ctx.report
        result = Published(images={ec2.region: state.image_id})
        if spec.regions:
            with report.stage(f"copy to {', '.join(spec.regions)}") as s:
                copies = self._copy(state, ctx)
                result.images.update(copies)
                s.detail = ", ".join(f"{r}: {i}" for r, i in copies.items())
        if spec.share_with:
            with report.stage(f"share with {', '.join(spec.share_with)}"):
                for region, ami in result.images.items():
                    ec2.in_region(region).share_image(ami, spec.share_with)
                result.shared_with = list(spec.share_with)
        if spec.ssm_parameter:
            with report.stage(f"publish {spec.ssm_parameter} in {len(result.images)} region(s)"):
                for region, ami in result.images.items():
                    result.ssm_versions[region] = put_parameter(ctx, ec2.in_region(region), spec.ssm_parameter, ami,
                                                                T.run_mark(state.build_id))
        if spec.launch_template:
            with report.stage(f"launch template {spec.launch_template.name}") as s:
                result.launch_template = self._template(state, ctx, spec.launch_template.name)
                s.detail = result.launch_template
        if spec.deprecate_after_days:
            self._deprecate(ctx, result, spec.deprecate_after_days)
        state.manifest.published = dataclasses.asdict(result)

    @staticmethod
    def _copy(state: BakeState, ctx: Context) -> dict[str, str]:
        spec, ec2 = state.recipe.publish, ctx.ec2
        for region in spec.regions:  # clients are made here, one at a time: a botocore session is not thread-safe
            ec2.in_region(region)
        copy_tags = {**state.image_tags, T.COPIED_FROM: f"{ec2.region}/{state.image_id}"}

        def copy(region: str) -> tuple[str, str]:
            target = ec2.in_region(region)
            copy_id = target.copy_image_from(ec2, state.image_id, state.image_name, spec.kms_key_ids.get(region),
                                             copy_tags)
            # registered as soon as it exists: a copy failing in another region must not orphan this one
            ctx.stack.created("image", copy_id, region, f"copy {copy_id} in {region}",
                              lambda: target.deregister_image(copy_id), product=True)
            return region, copy_id

        with ThreadPoolExecutor(max_workers=len(spec.regions), initializer=block_in_this_thread) as pool:
            futures = [pool.submit(copy, region) for region in spec.regions]
        copies = [f.result() for f in futures]  # every copy has returned (or failed) by now
        with ThreadPoolExecutor(max_workers=len(copies), initializer=block_in_this_thread) as pool:
            # each copy's state and snapshot progress reach the running stage's line, one per region
            waits = [submit_in_stage(pool, ec2.in_region(region).wait_image_available, copy_id, 3600)
                     for region, copy_id in copies]
            ready = [w.result() for w in waits]
        for (region, copy_id), image in zip(copies, ready):  # CopyImageTags is not honoured everywhere
            target = ec2.in_region(region)
            target.tag([copy_id], copy_tags)
            target.tag(snapshots_of(image), {**state.image_tags, T.ROLE: "snapshot"})
        return dict(copies)

    @staticmethod
    def _template(state: BakeState, ctx: Context, name: str) -> str:
        ec2 = ctx.ec2
        version = ec2.new_launch_template_version(name, {"ImageId": state.image_id},
                                                  f"{state.image_name} {T.run_mark(state.build_id)}",
                                                  tags={T.RECIPE: state.recipe.name}, merge_latest=True,
                                                  initial={"MetadataOptions": {"HttpTokens": "required"}})
        ctx.stack.created("launch-template-version", f"{name}:{version}", ec2.region,
                          f"launch template {name} version {version}",
                          lambda: ec2.delete_launch_template_version(name, version), product=True,
                          name=name, version=version)
        return f"{name}:{version}"

    @staticmethod
    def _deprecate(ctx: Context, result: Published, days: int) -> None:
        when = (datetime.now(timezone.utc) + timedelta(days=days)).replace(microsecond=0)
        for region, ami in result.images.items():
            try:
                ctx.ec2.in_region(region).deprecate_image(ami, when)
                result.deprecate_at = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            except CloudError as exc:
                if not ctx.ec2.unsupported(exc):
                    raise  # refused (AccessDenied, ...): the publish fails and is taken back
                # moto and some compatible endpoints lack EnableImageDeprecation: say so, do not fail the bake
                warning = (f"deprecation time not set on {ami} in {region}: the endpoint does not support it "
                           f"({exc.message})")
                result.warnings.append(warning)
                ctx.report.warn(warning)


def refuse_unshareable(recipe, path, ec2) -> None:
    """Sharing an image with other accounts cannot work when a snapshot of it, here or in a copy,
    is encrypted with an AWS-managed key (EBS's default `aws/ebs`): no other account can use that
    key, and AWS says so only after the bake, at ModifyImageAttribute or at the other account's
    launch. Refused before anything is created, at the first cloud call (which key is the
    default is the account's setting, per region)."""
    from bakery.errors import ConfigError

    spec, volume = recipe.publish, recipe.builder.root_volume
    if spec is None or not spec.share_with or not volume.encrypted:
        return
    keys = {ec2.region: ("builder.root_volume.kms_key_id", volume.kms_key_id)}
    keys.update({region: (f"publish.kms_key_ids.{region}", spec.kms_key_ids.get(region)) for region in spec.regions})
    for region, (field, key) in keys.items():
        here = ec2.in_region(region)
        used = key or here.ebs_default_key()
        if here.aws_managed_key(used):
            how = f"{used}, AWS-managed" if key else f"the region's EBS default, {used}, which AWS manages"
            raise ConfigError(f"{path}: {field}: the image's snapshots in {region} would be encrypted with {how}; "
                              f"publish.share_with cannot share them (no other account can use that key): set "
                              f"{field} to a customer managed key whose policy lets those accounts use it")
