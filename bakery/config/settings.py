"""Where bakery runs: cloud, region, endpoint and directories.

Read from invoke's configuration (invoke.yaml beside tasks.py, ~/.invoke.yaml,
INVOKE_BAKERY_* environment variables) under the `bakery` key, then the standard
AWS environment (AWS_PROFILE, AWS_REGION / AWS_DEFAULT_REGION, AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from bakery.errors import ConfigError
from bakery.progress import HEARTBEAT  # seconds of silence before a running stage says it still runs

CLOUDS = ("aws", "local")
KNOWN_KEYS = {"cloud", "region", "profile", "endpoint_url", "project_dir", "recipes_dir", "envs_dir",
              "userdata_dir", "state_dir", "ssh_host", "ssh_port", "data_dir", "evidence_bucket",
              "signing_key", "verify_key", "osv_feed", "checkpoint_after", "checkpoint_days", "heartbeat",
              "log_format"}
LOG_FORMATS = ("text", "json")

#: By cloud, unless the settings say otherwise: `bake` keeps a checkpoint after a run of steps
#: that took at least this long (bakery/bake/checkpoints.py). On the local cloud an image is a
#: layer and a checkpoint costs about what a builder's boot costs (a few seconds), so shorter
#: steps are cheaper to run again than to resume from. On AWS an intermediate image takes
#: minutes: only steps marked `checkpoint: true` make one.
CHECKPOINT_AFTER = {"local": 5.0, "aws": None}
CHECKPOINT_DAYS = 7


@dataclass(frozen=True)
class Settings:
    cloud: str = "aws"
    region: str = "us-east-1"
    profile: str | None = None
    endpoint_url: str | None = None
    project_dir: Path = field(default_factory=Path.cwd)
    recipes_dir: Path | None = None
    envs_dir: Path | None = None
    userdata_dir: Path | None = None
    state_dir: Path | None = None
    ssh_host: str | None = None  # override: reach every builder here (a tunnel, a test sshd)
    ssh_port: int | None = None
    data_dir: Path | None = None  # the local cloud's images and instances
    evidence_bucket: str | None = None  # S3: images' SBOMs and provenance (the local cloud: its own)
    signing_key: str | None = None  # the bake signs its image's provenance: a PEM private key file, or kms:KEY-ID
    verify_key: str | None = None   # the public key (PEM) `verify` and launch trust, and no other
    osv_feed: Path | None = None    # vulnerability records (OSV JSON: a directory or a zip) the bake's gate reads
    # seconds of steps after which `bake` keeps a checkpoint (None: after marked steps only);
    # by default the cloud's (CHECKPOINT_AFTER)
    checkpoint_after: float | None | str = "by cloud"
    checkpoint_days: int = CHECKPOINT_DAYS  # how long a checkpoint image is kept for the next bake
    heartbeat: float = HEARTBEAT  # a silent stage says it is still running after this many seconds
    log_format: str = "text"      # progress on stderr: text (lines, or a live display on a terminal) | json

    def __post_init__(self) -> None:
        if self.checkpoint_after == "by cloud":
            object.__setattr__(self, "checkpoint_after", CHECKPOINT_AFTER[self.cloud])

    @property
    def recipes(self) -> Path:
        return self.recipes_dir or self.project_dir / "recipes"

    @property
    def envs(self) -> Path:
        return self.envs_dir or self.project_dir / "envs"

    @property
    def userdata(self) -> Path:
        return self.userdata_dir or self.project_dir / "userdata"

    @property
    def state(self) -> Path:
        """Per-project run state: manifests and temporary keys (0700)."""
        return self.state_dir or self.project_dir / ".bakery"

    @property
    def manifests(self) -> Path:
        """Each bake's manifest, and beside it the SBOM of the image it made."""
        return self.state / "manifests"

    @property
    def local_data(self) -> Path:
        """The local cloud's base image, layers, instances and endpoint state."""
        return self.data_dir or default_data_dir()

    @classmethod
    def load(cls, config: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
             project_dir: Path | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        cfg = dict(config or {})
        unknown = set(cfg) - KNOWN_KEYS
        if unknown:
            raise ConfigError(f"invoke config bakery.{sorted(unknown)[0]}: unknown setting "
                              f"(known: {', '.join(sorted(KNOWN_KEYS))})")
        cloud = cfg.get("cloud") or "aws"
        if cloud not in CLOUDS:
            raise ConfigError(f"invoke config bakery.cloud: {cloud!r} is not one of {', '.join(CLOUDS)}")
        region = cfg.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        if not REGION_RE.fullmatch(str(region)):
            raise ConfigError(f"invoke config bakery.region (or AWS_REGION): {str(region)!r} is not a region name "
                              "(like us-east-1 or eu-central-2)")
        port = cfg.get("ssh_port")
        if port is not None:
            try:
                port = int(port)
            except (TypeError, ValueError):
                raise ConfigError(f"invoke config bakery.ssh_port: {port!r} is not a port number") from None
        project = Path(cfg.get("project_dir") or project_dir or Path.cwd())
        after = cfg.get("checkpoint_after")
        if after is None or after == "":
            after = "by cloud"
        elif after in ("off", "none", 0, "0"):
            after = None
        else:
            try:
                seconds = float(after)
                assert seconds > 0
            except (TypeError, ValueError, AssertionError):
                raise ConfigError(f"invoke config bakery.checkpoint_after: {after!r} is not a number of seconds "
                                  "(or off)") from None
            after = seconds
        try:
            raw_days = cfg.get("checkpoint_days")
            days = CHECKPOINT_DAYS if raw_days is None or raw_days == "" else int(raw_days)
            assert 1 <= days <= 365
        except (TypeError, ValueError, AssertionError):
            raise ConfigError(f"invoke config bakery.checkpoint_days: {cfg.get('checkpoint_days')!r} is not a "
                              "number of days from 1 to 365") from None

        try:
            raw_beat = cfg.get("heartbeat")
            heartbeat = HEARTBEAT if raw_beat is None or raw_beat == "" else float(raw_beat)
            assert 0 < heartbeat <= 3600
        except (TypeError, ValueError, AssertionError):
            raise ConfigError(f"invoke config bakery.heartbeat: {cfg.get('heartbeat')!r} is not a number of "
                              "seconds from 0 to 3600") from None
        log_format = checked_log_format(cfg.get("log_format") or "text", "invoke config bakery.log_format")

        def opt_path(key: str) -> Path | None:  # relative to the project, wherever invoke runs
            return user_path(str(cfg[key]), project) if cfg.get(key) else None

        return cls(cloud=cloud, region=region, profile=cfg.get("profile") or env.get("AWS_PROFILE"),
                   endpoint_url=cfg.get("endpoint_url") or env.get("AWS_ENDPOINT_URL_EC2") or env.get("AWS_ENDPOINT_URL"),
                   project_dir=project, recipes_dir=opt_path("recipes_dir"), envs_dir=opt_path("envs_dir"),
                   userdata_dir=opt_path("userdata_dir"), state_dir=opt_path("state_dir"),
                   ssh_host=cfg.get("ssh_host"), ssh_port=port, data_dir=opt_path("data_dir"),
                   evidence_bucket=bucket_name(cfg.get("evidence_bucket")),
                   signing_key=cfg.get("signing_key") or None, verify_key=cfg.get("verify_key") or None,
                   osv_feed=opt_path("osv_feed"), checkpoint_after=after, checkpoint_days=days,
                   heartbeat=heartbeat, log_format=log_format)


def checked_log_format(value, where: str) -> str:
    """`text` or `json`, from the settings or a task's --log-format."""
    if value not in LOG_FORMATS:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(LOG_FORMATS)}")
    return value


def bucket_name(value) -> str | None:
    """An S3 bucket name as S3 takes it (3-63 lowercase letters, digits, dots and hyphens)."""
    if not value:
        return None
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", str(value)) or ".." in str(value):
        raise ConfigError(f"invoke config bakery.evidence_bucket: {str(value)!r} is not an S3 bucket name "
                          "(3-63 lowercase letters, digits, dots and hyphens)")
    return str(value)


#: an AWS region's name: us-east-1, eu-central-2, us-gov-west-1, ap-southeast-5
REGION_RE = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")


def user_path(value: str, base: Path) -> Path:
    """A path a user wrote in a file or flag: ~ expanded, relative to `base` (the project)."""
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def default_data_dir() -> Path:
    """``$BAKERY_DATA_DIR``, else ``/var/lib/bakery`` for root (the local cloud needs root anyway)."""
    env = os.environ.get("BAKERY_DATA_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/bakery")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "bakery"
