"""The AWS session, its clients' retry policy, and how an endpoint's errors become one line.

Every call that fails becomes a CloudError whose message names the call and the endpoint's
error code. 5xx are retried by botocore's standard retry mode; throttling by the region's shared
limiter (bakery/cloud/throttle.py) in the facade's `call`; capacity errors
are surfaced as `CapacityError` at once (never retried) so the caller can fall back to the next
instance type; a signal during a request is never retried away.
"""

from __future__ import annotations

import botocore.exceptions
import botocore.parsers
from botocore.config import Config

from bakery.errors import CloudError, ConfigError, Interrupted

AUTH_CODES = {"AuthFailure", "UnauthorizedOperation", "ExpiredToken", "ExpiredTokenException",
              "InvalidClientTokenId", "RequestExpired", "UnrecognizedClientException", "AccessDenied",
              "AccessDeniedException", "SignatureDoesNotMatch"}
CAPACITY_CODES = {"InsufficientInstanceCapacity", "InsufficientCapacity", "Unsupported",
                  "InstanceLimitExceeded", "VcpuLimitExceeded", "InsufficientHostCapacity",
                  # spot: no spot capacity at any price we allow, or the account's spot quota is used
                  "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded"}

CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8}, connect_timeout=5, read_timeout=60,
                       user_agent_extra="bakery")


class CapacityError(CloudError):
    """No capacity for this instance type here: try the next one."""


def error_message(exc: BaseException, action: str) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code, msg = err.get("Code", "Error"), (err.get("Message") or "").strip().splitlines()
        first = msg[0] if msg else ""
        if code in AUTH_CODES:
            return f"{action}: not authorised ({code}): {first} (check AWS_PROFILE / credentials and the bake role's policy)"
        return f"{action}: {code}: {first}"
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return f"{action}: no AWS credentials found (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return f"{action}: cannot reach the endpoint {exc.kwargs.get('endpoint_url', '')}"
    if isinstance(exc, botocore.parsers.ResponseParserError):
        return f"{action}: the endpoint failed with an unreadable response (a server error; see its log)"
    return f"{action}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def mapped(exc: BaseException, action: str) -> CloudError:
    """The CloudError (or CapacityError) a botocore failure of `action` becomes."""
    if isinstance(exc, botocore.exceptions.ClientError):
        if exc.response.get("Error", {}).get("Code", "") in CAPACITY_CODES:
            return CapacityError(error_message(exc, action))
    return CloudError(error_message(exc, action))


# What a facade call catches and maps; anything else is a bug and surfaces as one.
API_ERRORS = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError, botocore.parsers.ResponseParserError,
              OSError)


def error_code(exc: BaseException) -> str:
    """The endpoint's error code behind a mapped CloudError ('' when it was not the endpoint's answer)."""
    cause = exc.__cause__ if isinstance(exc, CloudError) else exc
    if isinstance(cause, botocore.exceptions.ClientError):
        return cause.response.get("Error", {}).get("Code", "")
    return ""


# How an endpoint says it lacks an operation. moto answers one it has not implemented with an
# HTML 500 page, no EC2 answer at all, which botocore cannot parse.
UNSUPPORTED_CODES = ("InvalidAction", "UnsupportedOperation", "NotImplemented", "Unsupported")


def unsupported(exc: BaseException) -> bool:
    """Whether a mapped CloudError means the endpoint does not offer the operation (rather than
    refusing it: AccessDenied, UnauthorizedOperation, a bad parameter, ...)."""
    cause = exc.__cause__ if isinstance(exc, CloudError) else exc
    return isinstance(cause, botocore.parsers.ResponseParserError) or error_code(exc) in UNSUPPORTED_CODES


class Session:
    """The part of boto3.Session bakery uses, on botocore alone: importing boto3 also imports
    s3transfer (~60 ms of every command's start-up), and bakery has no use for resources."""

    def __init__(self, *, profile_name: str | None = None, region_name: str | None = None,
                 aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None):
        import botocore.session

        from bakery.cloud.service_models import use_trimmed_models

        self.core = botocore.session.Session(profile=profile_name)
        if aws_access_key_id:
            self.core.set_credentials(aws_access_key_id, aws_secret_access_key)
        if region_name:
            self.core.set_config_variable("region", region_name)
        try:
            use_trimmed_models(self.core)  # the first thing that reads the profile
        except botocore.exceptions.ProfileNotFound:
            raise ConfigError(f"AWS profile {profile_name!r} not found (bakery.profile / AWS_PROFILE; "
                              "see ~/.aws/config)") from None
        self.events = self.core.get_component("event_emitter")
        # every client made from this session (EC2, SSM, ELB) lets a signal through, and EC2's
        # capacity errors go straight to the caller
        self.events.register("needs-retry", _interrupted_is_not_retried, unique_id="bakery-interrupted")
        self.events.register("needs-retry.ec2", _capacity_is_not_retried, unique_id="bakery-capacity")
        # throttling is the region's shared limiter's to handle (bakery/cloud/throttle.py), not each call's
        self.events.register("needs-retry", _throttling_is_not_retried, unique_id="bakery-throttling")

    def client(self, service: str, **kwargs):
        return self.core.create_client(service, **kwargs)

    def get_credentials(self):
        return self.core.get_credentials()


def _interrupted_is_not_retried(caught_exception=None, **_) -> None:
    """Ctrl-C or SIGTERM during a request raises Interrupted inside botocore's send, which wraps
    any exception there in a retryable HTTPClientError: the call would be sent again and the
    signal lost. Raise it instead of retrying."""
    cause = getattr(caught_exception, "kwargs", {}).get("error")
    if isinstance(cause, Interrupted):
        raise cause


def _throttling_is_not_retried(response=None, operation=None, **_) -> None:
    """A throttled call ends at once: the facade's `call` waits on the region's limiter, which
    slows every caller in the region, and tries again."""
    from bakery.cloud.throttle import THROTTLE_CODES

    parsed = response[1] if isinstance(response, tuple) and len(response) == 2 else None
    code = parsed.get("Error", {}).get("Code") if isinstance(parsed, dict) else None
    if code in THROTTLE_CODES and operation is not None:
        raise botocore.exceptions.ClientError(parsed, operation.name)


def _capacity_is_not_retried(response=None, operation=None, **_) -> None:
    """EC2 answers InsufficientInstanceCapacity with HTTP 500, which botocore's standard mode
    retries up to 8 times with backoff: the next instance type is the better answer. Raising
    here ends the call with the error before botocore sleeps."""
    parsed = response[1] if isinstance(response, tuple) and len(response) == 2 else None
    code = parsed.get("Error", {}).get("Code") if isinstance(parsed, dict) else None
    if code in CAPACITY_CODES and operation is not None:
        raise botocore.exceptions.ClientError(parsed, operation.name)
