"""What `invoke launch` and `invoke render` print for people (JSON is LaunchReport.to_json)."""

from __future__ import annotations

from bakery.config.environment import load_environment
from bakery.errors import ConfigError
from bakery.launch import LaunchReport, render_tier
from bakery.config.settings import Settings


def summary(report: LaunchReport) -> str:
    lines = []
    if report.dry_run:
        lines.append(f"plan for {report.environment} in {report.region} (dry run: nothing created)")
        lines += [f"  network: {line}" for line in report.network]
        if not report.plans and report.network:
            lines.append("  (tiers are planned once the network exists)")
        for p in report.plans:
            ud = (f"{p.user_data_size} bytes{' gzip' if p.user_data_gzipped else ''} "
                  f"(raw {p.user_data_raw_size}), sha256 {p.user_data_sha256[:16]}" if p.user_data_size else "none")
            lines.append(f"  {p.tier}: {p.strategy}, {p.image_id} {p.image_name}, {p.count} x {p.instance_type} "
                         f"({len(p.existing)} running, launch {len(p.missing_slots)}), subnets {', '.join(p.subnets)}, "
                         f"groups {', '.join(p.security_groups)}, user data {ud}")
        return "\n".join(lines)
    lines.append(f"{report.environment}: {len(report.instances)} instance(s) launched in {report.seconds:.1f}s "
                 f"(launch {report.launch_id})")
    for r in report.instances:
        ready = f"ready {r.ready_s:.2f}s after launch" if r.ready_s is not None else r.health
        lines.append(f"  {r.tier}[{r.slot}] {r.instance_id} {r.private_ip or '-'} {r.health}, {ready}")
    for p in report.plans:
        if not p.missing_slots and p.existing:
            lines.append(f"  {p.tier}: {len(p.existing)} already running, nothing to launch")
    for tier, version in report.launch_templates.items():
        lines.append(f"  {tier}: launch template {version}")
    checked = [(r, p) for r in report.instances for p in report.plans if p.tier == r.tier and p.health_check]
    if report.local and checked:
        first, plan = checked[0]
        hc = plan.health_check
        lines.append("reach an instance (local cloud: each has its own network namespace, no routed address):")
        lines.append(f"  ip netns exec bakery-{first.instance_id} curl -s http://127.0.0.1:{hc['port']}{hc['path']}"
                     if hc["type"] == "http" else f"  ip netns exec bakery-{first.instance_id} ss -ltn")
    return "\n".join(lines)


def rendered_user_data(settings: Settings, env_name: str, tier: str) -> str:
    """Exactly what launch would send: the tier's image is resolved (read-only calls) first."""
    from bakery.launch import Launcher
    from bakery.progress import Reporter

    env = load_environment(settings.envs, env_name)
    spec = env.select(tier)[tier]
    launcher = Launcher(settings, env, report=Reporter(quiet=True))
    image = launcher.image(tier, spec, f"{env.path}: tiers.{tier}")
    user_data = render_tier(settings, env, tier, image["ImageId"], launcher.ec2.region)
    if user_data is None:
        raise ConfigError(f"{env.path}: tiers.{tier}: strategy 'baked' sends no user data")
    return user_data.text
