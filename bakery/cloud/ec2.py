"""The EC2 facade: the one object through which bakery calls EC2, SSM, ELB, Auto Scaling, S3, KMS.

`EC2` holds one region's clients and the two primitives everything else is built on: `call`
(one API call, its failure mapped to a one-line CloudError) and `describe_all` (every page of a
Describe*). The operations themselves are grouped by subject in mixins: images, instances,
access (key pairs, builder security groups), vpc (networking), parameters (SSM), templates
(launch templates, target groups), scaling (Auto Scaling groups, instance refresh), evidence
(S3: an image's SBOM and provenance), kms (signing provenance with an asymmetric key; which key
EBS encrypts with). Nothing outside bakery/cloud touches a client.

Constructing an EC2 starts nothing: which endpoint to talk to (AWS, a moto server, the local
cloud) is decided by `bakery.cloud.connect.open_cloud`, once.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from bakery.cloud.access import AccessAPI
from bakery.cloud.evidence import EvidenceAPI
from bakery.cloud.images import ImagesAPI
from bakery.cloud.instances import InstancesAPI
from bakery.cloud.kms import KmsAPI
from bakery.cloud.parameters import ParametersAPI
from bakery.cloud.scaling import ScalingAPI
from bakery.cloud.session import API_ERRORS, CLIENT_CONFIG, Session, error_code, mapped, unsupported
from bakery.cloud.templates import TemplatesAPI
from bakery.cloud.throttle import GIVE_UP_AFTER, THROTTLE_CODES, for_region
from bakery.cloud.vpc import VpcAPI
from bakery.config.settings import Settings
from bakery.errors import CloudError
from bakery.signals import check_cancelled


class EC2(ImagesAPI, InstancesAPI, AccessAPI, VpcAPI, ParametersAPI, TemplatesAPI, ScalingAPI, EvidenceAPI, KmsAPI):
    """One region's EC2, SSM, ELB, Auto Scaling, S3 and KMS clients behind typed methods."""

    def __init__(self, settings: Settings, session: Session | None = None):
        self.settings = settings
        self.region = settings.region
        self.session = session or Session(profile_name=settings.profile, region_name=settings.region)
        # region_name explicitly: a facade for another region shares the home region's session
        self.client = self.session.client("ec2", region_name=settings.region, endpoint_url=settings.endpoint_url,
                                          config=CLIENT_CONFIG)
        self._clients: dict[str, object] = {}  # the other services' clients, made on first use
        self._regions: dict[str, EC2] = {settings.region: self}
        self.throttle = for_region(settings.endpoint_url, settings.region)  # shared by every bake in the region

    def service(self, name: str, config=CLIENT_CONFIG):
        """This region's client of another service at the same endpoint, made once on first use."""
        if name not in self._clients:
            self._clients[name] = self.session.client(name, region_name=self.region,
                                                      endpoint_url=self.settings.endpoint_url, config=config)
        return self._clients[name]

    @property
    def ssm(self):
        return self.service("ssm")

    @property
    def elbv2(self):
        return self.service("elbv2")

    def in_region(self, region: str) -> "EC2":
        """The same account and endpoint in another region (region copies, prune, the janitor)."""
        if region not in self._regions:
            import dataclasses

            other = EC2(dataclasses.replace(self.settings, region=region), session=self.session)
            other._regions = self._regions
            self._regions[region] = other
        return self._regions[region]

    # ---- the two primitives ---------------------------------------------------------------

    def call(self, action: str, fn: Callable[..., Any], **kwargs) -> Any:
        """One API call; a failure becomes a CloudError naming `action` (CapacityError for capacity).
        Throttled, it waits with every other caller in the region and tries again (throttle.py)."""
        throttled_since = None
        while True:
            check_cancelled()
            self.throttle.wait_turn()
            try:
                result = fn(**kwargs)
            except API_ERRORS as exc:
                now = time.monotonic()
                if error_code(exc) in THROTTLE_CODES and (throttled_since is None
                                                          or now - throttled_since < GIVE_UP_AFTER):
                    throttled_since = throttled_since or now
                    self.throttle.throttled()
                    continue
                raise mapped(exc, action) from exc
            self.throttle.passed()
            return result

    def describe_all(self, operation: str, key: str, **kwargs) -> list[dict]:
        """Every item across pages: a large account's instances, groups or images do not fit one."""
        client = self.client
        action = operation.replace("_", "-")
        if not client.can_paginate(operation):
            return self.call(action, getattr(client, operation), **kwargs).get(key, [])

        def every_page() -> list[dict]:  # a throttled page: the whole listing again, after the pause
            return [item for page in client.get_paginator(operation).paginate(**kwargs) for item in page.get(key, [])]
        return self.call(action, every_page)

    def lookup(self, action: str, fn: Callable[..., Any], key: str, not_found: tuple[str, ...], **kwargs) -> dict | None:
        """The one resource a Describe* by id returns, or None when the endpoint says it does not exist."""
        try:
            items = self.call(action, fn, **kwargs)[key]
        except CloudError as exc:
            if self.code_of(exc) in not_found:
                return None
            raise
        return items[0] if items else None

    @staticmethod
    def code_of(exc: CloudError) -> str:
        return error_code(exc)

    @staticmethod
    def unsupported(exc: CloudError) -> bool:
        return unsupported(exc)

    def ensure_credentials_last(self, seconds: float, what: str) -> None:
        """Fail now, while clean-up can still run, if the credentials cannot outlive this wait.

        Credentials that refresh themselves (assume-role, web identity, SSO) are fine; temporary
        ones that cannot (e.g. exported with AWS_CREDENTIAL_EXPIRATION) are checked against the
        wait's deadline, instead of hanging on ExpiredToken half way (a classic Packer complaint).
        """
        from datetime import datetime, timezone

        creds = self.session.get_credentials()
        expiry = getattr(creds, "_expiry_time", None)
        if creds is None or expiry is None or getattr(creds, "method", "") not in ("env", "shared-credentials-file"):
            return
        left = (expiry - datetime.now(timezone.utc)).total_seconds()
        if left < seconds:
            raise CloudError(f"{what}: the AWS credentials expire in {max(0, int(left))}s, before this wait's "
                             f"{int(seconds)}s deadline; renew them with a longer session (e.g. "
                             "role-duration-seconds) and bake again")

    def tag(self, resource_ids: list[str], tags: dict[str, str]) -> None:
        from bakery.cloud.tags import tag_list

        if resource_ids:
            self.call("create-tags", self.client.create_tags, Resources=resource_ids, Tags=tag_list(tags))
