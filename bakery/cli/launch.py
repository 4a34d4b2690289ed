"""What `invoke launch` prints for people (JSON is LaunchReport.to_json)."""

from __future__ import annotations


def summary(report) -> str:
    lines = []
    if report.dry_run:
        lines.append(f"plan for {report.environment} in {report.region} (dry run: nothing created)")
        lines += [f"  network: {line}" for line in report.network]
        if not report.plans and report.network:
            lines.append("  (tiers are planned once the network exists)")
        for p in report.plans:
            ud = (f"{p.user_data_size} bytes{' gzip' if p.user_data_gzipped else ''} "
                  f"(raw {p.user_data_raw_size}), sha256 {p.user_data_sha256[:16]}" if p.user_data_size else "none")
            fill = f"desired {p.count}" if p.group else f"launch {len(p.missing_slots)}"
            lines.append(f"  {p.tier}: {p.strategy}, {p.image_id} {p.image_name}, {p.count} x {p.instance_type} "
                         f"({p.in_place()}, {fill}), subnets {', '.join(p.subnets)}, "
                         f"groups {', '.join(p.security_groups)}, user data {ud}")
        return "\n".join(lines)
    lines.append(f"{report.environment}: {len(report.instances)} instance(s) launched in {report.seconds:.1f}s "
                 f"(launch {report.launch_id})")
    for r in report.instances:
        ready = f", ready {r.ready_s:.2f}s after launch" if r.ready_s is not None else ""
        lines.append(f"  {r.tier}[{r.slot}] {r.instance_id} {r.private_ip or '-'} {r.health}{ready}")
    for p in report.plans:
        if not p.missing_slots and p.existing and not p.group:
            lines.append(f"  {p.tier}: {p.in_place()}, nothing to launch")
    for tier, version in report.launch_templates.items():
        lines.append(f"  {tier}: launch template {version}")
    if report.reach:
        lines.append("reach an instance from this machine:")
        lines.append(f"  {report.reach}")
    return "\n".join(lines)


def rollout_summary(report) -> str:
    """What `invoke rollout` prints for people (JSON is RolloutReport.to_json)."""
    moved = sum(len(t.moves) for t in report.tiers)
    lines = [f"{report.environment}: {moved} slot(s) moved in {report.seconds:.1f}s (rollout {report.rollout_id})"]
    if any(t.status == "planned" for t in report.tiers):
        lines = [f"rollout plan for {report.environment} (dry run: nothing changed)"]
    for t in report.tiers:
        if t.status == "current":
            lines.append(f"  {t.tier}: every instance runs {t.image_id} already")
            continue
        if t.status == "planned":
            lines.append(f"  {t.tier}: would move to {t.image_id} ({t.how}): {', '.join(t.stale)}")
            continue
        lines.append(f"  {t.tier}: {t.status} to {t.image_id} ({t.how})")
        for m in t.moves:
            gap = f", interfaces moved in {m.failover_s:.2f}s" if m.failover_s is not None else ""
            lines.append(f"    [{m.slot}] {m.old + ' -> ' if m.old else ''}{m.new} in {m.seconds:.1f}s{gap}")
    for tier, version in report.launch_templates.items():
        lines.append(f"  {tier}: launch template {version}")
    return "\n".join(lines)
