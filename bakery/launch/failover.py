"""`invoke failover`: what the environment file alone can refuse, then the move.

The tier must have persistent interfaces, and a health check made from another tier needs a key
to log in there: both are refused before the cloud is opened. The hot standby's fitness is the
tier's own health check (launch/health.py); the move itself is the network's (network/eni.py).
"""

from __future__ import annotations

from bakery.cloud.connect import open_cloud
from bakery.config.environment import load_environment
from bakery.config.settings import Settings
from bakery.launch.health import failover_probe, require_logins
from bakery.network.eni import FailoverReport, check_failover, failover as move_interfaces
from bakery.progress import Reporter


def failover(settings: Settings, env_name: str, tier: str, to: str | None, report: Reporter) -> FailoverReport:
    env = load_environment(settings.envs, env_name, settings.region)
    check_failover(env, tier)
    require_logins(settings, env, [tier])
    cloud = open_cloud(settings)
    return move_interfaces(cloud.ec2, env, tier, to, report,
                           probe=failover_probe(cloud, env, tier, settings.project_dir))
