"""An environment's network: VPC, subnets, security groups, network ACLs, Elastic IPs and
the persistent ENIs that carry a tier's addresses from instance to instance.

Everything is found again by its tags (cloud/tags.py: ENVIRONMENT, NETWORK_NAME), so
`network.up` is idempotent and `launch`/`failover` resolve names without a state file.
One module a job:

- resolve.py: names -> resources, and the checks that refuse bad interfaces before anything
  is created or launched;
- provision.py: `network.up`, the idempotent creation in dependency order;
- eni.py: moving ENIs (after launch, attach, detach, Elastic IPs) and `failover`;
- status.py: every ENI and Elastic IP of an environment, as data.

Every API call is the EC2 facade's (cloud/vpc.py). `Network` is the one object launch and the
tasks hold: the lookups and checks, plus `up` and the ENI moves.
"""

from __future__ import annotations

from bakery.config.environment import Environment
from bakery.network.eni import FailoverReport, Interfaces, failover
from bakery.network.provision import Action, Provisioner
from bakery.network.resolve import ResolvedInterface, Resolver, SubnetInfo
from bakery.network.status import status
from bakery.progress import Reporter

__all__ = ["Action", "FailoverReport", "Network", "ResolvedInterface", "SubnetInfo", "failover",
           "open_env", "status"]


class Network(Resolver):
    """Name -> resource lookups and checks (Resolver), `up`, and the ENI moves of one environment."""

    def __init__(self, ec2, env: Environment, report: Reporter | None = None):
        super().__init__(ec2, env)
        self.report = report or Reporter(quiet=True)
        self.enis = Interfaces(ec2)

    def up(self, dry_run: bool) -> list[Action]:
        """Create what is missing, in dependency order; report what exists and what was made."""
        return Provisioner(self, dry_run).run()

    def configure_attached(self, instance_id: str, resolved: list[ResolvedInterface], *, active: bool) -> None:
        self.enis.configure_attached(instance_id, resolved, active=active)


def open_env(settings, name: str):
    """(Cloud, Environment) for the network tasks: the environment is loaded, and bad input
    refused, before any cloud call."""
    from bakery.cloud.connect import open_cloud
    from bakery.config.environment import load_environment

    env = load_environment(settings.envs, name, settings.region)
    return open_cloud(settings), env
