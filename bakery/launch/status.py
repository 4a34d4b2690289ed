"""`invoke status --env NAME`: what runs in an environment against what its files say.

For every instance of the environment: its tier and slot, state, image and the image's age, and
whether its recipe has a newer finished image (a rebake that has not been rolled out yet). Then
its network interfaces and Elastic IPs (bakery/network/status.py), and drift: every security
group rule and network ACL entry that is live but not in the environment file (added by hand,
say with the AWS CLI), or in the file but not live, a route live but not declared (or the other
way), and a subnet whose ACL or route table is not the declared one. All as data; bakery/cli/status.py prints it for people.
"""

from __future__ import annotations

from datetime import datetime, timezone

from bakery.cloud import tags as T
from bakery.cloud.vpc import ACL_PROTOCOLS, IP_PROTOCOLS
from bakery.config.environment import Environment
from bakery.network import status as network_status
from bakery.network.resolve import Resolver

ALL_OUTBOUND = ("egress", "-1", -1, -1, "0.0.0.0/0")  # EC2's default egress rule of a new group


def fleet_status(ec2, env: Environment, now: datetime | None = None) -> dict:
    now = now or datetime.now(timezone.utc)
    newest: dict[str, dict | None] = {}
    rows = []
    for inst in ec2.instances(T.tag_filter(T.ENVIRONMENT, env.name)):
        state = inst["State"]["Name"]
        if state in ("terminated", "shutting-down"):
            continue
        tags = T.tags_of(inst)
        tier = tags.get(T.TIER, "")
        spec = env.tiers.get(tier)
        recipe = spec.image.recipe if spec is not None and spec.image is not None else None
        image = ec2.image(inst["ImageId"]) or {}
        if recipe and recipe not in newest:
            found = ec2.bakery_images(recipe=recipe)
            newest[recipe] = found[0] if found else None
        latest = newest.get(recipe) if recipe else None
        rows.append({"instance": inst["InstanceId"], "tier": tier, "slot": tags.get(T.SLOT, ""), "state": state,
                     "image": inst["ImageId"], "image_name": image.get("Name"),
                     "image_age_days": _age_days(image.get("CreationDate"), now), "recipe": recipe,
                     "newest_image": latest["ImageId"] if latest else None,
                     "outdated": bool(latest and latest["ImageId"] != inst["ImageId"]
                                      and _newer(latest, image))})
    rows.sort(key=lambda r: (r["tier"], r["slot"], r["instance"]))
    network = network_status(ec2, env) if env.network is not None else {"interfaces": [], "elastic_ips": [],
                                                                       "warnings": []}
    return {"environment": env.name, "instances": rows, "interfaces": network["interfaces"],
            "elastic_ips": network["elastic_ips"], "warnings": network["warnings"],
            "drift": security_group_drift(ec2, env) + network_acl_drift(ec2, env) + route_table_drift(ec2, env)}


def _age_days(created: str | None, now: datetime) -> float | None:
    if not created:
        return None
    try:
        when = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((now - when).total_seconds() / 86400, 1)


def _newer(a: dict, b: dict) -> bool:
    return (a.get("CreationDate") or "") >= (b.get("CreationDate") or "")


def security_group_drift(ec2, env: Environment) -> list[dict]:
    """Each security group rule live but not declared, or declared but not live."""
    if env.network is None:
        return []
    names = Resolver(ec2, env)
    ids = {name: names.find_id("sg", name) for name in env.network.security_groups}
    out = []
    for name, decl in env.network.security_groups.items():
        gid = ids[name]
        if gid is None:
            out.append({"kind": "security-group", "name": name, "problem": "declared, not created (invoke network.up)"})
            continue
        (live_group,) = ec2.security_groups({"Name": "group-id", "Values": [gid]}) or [None]
        if live_group is None:
            out.append({"kind": "security-group", "name": name, "id": gid, "problem": "gone"})
            continue
        wanted = _declared_rules(decl, ids)
        live = _live_rules(live_group)
        out += _both_ways("security-group", name, gid, live, wanted, lambda rule: _describe(rule, ids), env)
    return out


def _both_ways(kind: str, name: str, rid: str, live: set, wanted: set, text, env: Environment) -> list[dict]:
    """What is live and not declared, then what is declared and not live, each in `text`'s words."""
    return ([{"kind": kind, "name": name, "id": rid, "problem": f"{text(x)}: live, not in {env.path.name}"}
             for x in sorted(live - wanted, key=str)]
            + [{"kind": kind, "name": name, "id": rid, "problem": f"{text(x)}: in {env.path.name}, not live"}
               for x in sorted(wanted - live, key=str)])


def _declared_rules(decl, ids: dict[str, str | None]) -> set[tuple]:
    rules = set()
    for direction, declared in (("ingress", decl.ingress), ("egress", decl.egress or [])):
        for r in declared:
            low, high = r.port_range()
            source = r.cidr if r.cidr else ids.get(r.group) or f"group {r.group}"
            rules.add((direction, IP_PROTOCOLS[r.protocol], low, high, source))
    if decl.egress is None:
        rules.add(ALL_OUTBOUND)
    return rules


def _live_rules(group: dict) -> set[tuple]:
    rules = set()
    for direction, key in (("ingress", "IpPermissions"), ("egress", "IpPermissionsEgress")):
        for p in group.get(key, []):
            proto = str(p.get("IpProtocol", "-1"))
            low, high = (p.get("FromPort", -1), p.get("ToPort", -1)) if proto not in ("-1",) else (-1, -1)
            for r in p.get("IpRanges", []):
                rules.add((direction, proto, low, high, r["CidrIp"]))
            for r in p.get("UserIdGroupPairs", []):
                rules.add((direction, proto, low, high, r["GroupId"]))
    return rules


def _describe(rule: tuple, ids: dict[str, str | None]) -> str:
    direction, proto, low, high, source = rule
    names = {gid: f"group {name}" for name, gid in ids.items() if gid}
    ports = "" if proto == "-1" or low == -1 else f" {low}" if low == high else f" {low}-{high}"
    what = {"-1": "all"}.get(proto, proto)
    return f"{direction} {what}{ports} {'from' if direction == 'ingress' else 'to'} {names.get(source, source)}"


DEFAULT_ACL_RULE = 32767  # every ACL's last, fixed entry (deny all): not the file's to declare


def network_acl_drift(ec2, env: Environment) -> list[dict]:
    """Each network ACL entry live but not declared, or declared but not live; each declared
    subnet the ACL is not associated with."""
    if env.network is None:
        return []
    names = Resolver(ec2, env)
    out = []
    for name, decl in env.network.network_acls.items():
        acl_id = names.find_id("acl", name)
        live = ec2.network_acl(acl_id) if acl_id else None
        if live is None:
            out.append({"kind": "network-acl", "name": name, "problem": "declared, not created (invoke network.up)"})
            continue
        wanted = {(egress, e.rule, e.action, ACL_PROTOCOLS[e.protocol], *(_acl_ports(e.protocol, e.port_range())),
                   e.cidr) for egress, entries in ((False, decl.ingress), (True, decl.egress)) for e in entries}
        have = {(x["Egress"], x["RuleNumber"], x["RuleAction"], str(x["Protocol"]),
                 *(_acl_ports_live(x)), x.get("CidrBlock")) for x in live.get("Entries", [])
                if x["RuleNumber"] != DEFAULT_ACL_RULE and x.get("CidrBlock")}
        out += _both_ways("network-acl", name, acl_id, have, wanted, _acl_text, env)
        out += [{"kind": "network-acl", "name": name, "id": acl_id, "problem": f"{subnet} has another ACL"}
                for subnet in _elsewhere(names, env, decl.subnets, live)]
    return out


def _elsewhere(names: Resolver, env: Environment, subnets: list[str], live: dict) -> list[str]:
    """The declared subnets (as "NAME (subnet-ID)") that the live ACL or route table is not associated with."""
    associated = {a.get("SubnetId") for a in live.get("Associations", [])}
    out = []
    for subnet in subnets:
        sid = names.find_id("subnet", subnet) or getattr(env.network.subnets.get(subnet), "id", None)
        if sid and sid not in associated:
            out.append(f"subnet {subnet} ({sid})")
    return out


def _acl_ports(protocol: str, ports: tuple[int, int]) -> tuple[int, int]:
    return ports if protocol in ("tcp", "udp") else (-1, -1)


def _acl_ports_live(entry: dict) -> tuple[int, int]:
    ports = entry.get("PortRange")
    if str(entry["Protocol"]) in ("6", "17") and ports:
        return ports.get("From", -1), ports.get("To", -1)
    return -1, -1


def _acl_text(entry: tuple) -> str:
    egress, number, action, proto, low, high, cidr = entry
    what = {"6": "tcp", "17": "udp", "1": "icmp", "-1": "all"}.get(proto, proto)
    ports = "" if low == -1 else f" {low}" if low == high else f" {low}-{high}"
    return f"{'egress' if egress else 'ingress'} rule {number} {action} {what}{ports} {cidr}"


def route_table_drift(ec2, env: Environment) -> list[dict]:
    """Each route live but not declared (the VPC's own local route aside), or declared but not
    live or to another target; each declared subnet the table is not associated with."""
    if env.network is None:
        return []
    names = Resolver(ec2, env)
    igw = names.find_id("igw", "igw")
    out = []
    for name, decl in env.network.route_tables.items():
        live = names.find("rtb", name)
        if live is None:
            out.append({"kind": "route-table", "name": name, "problem": "declared, not created (invoke network.up)"})
            continue
        rid = live["RouteTableId"]
        wanted = {r.cidr: igw if r.internet_gateway else names.find_id("nat", r.nat_gateway) or f"nat {r.nat_gateway}"
                  for r in decl.routes}
        have = {r["DestinationCidrBlock"]: r.get("GatewayId") or r.get("NatGatewayId") or r.get("NetworkInterfaceId")
                or r.get("InstanceId") for r in live.get("Routes", [])
                if r.get("DestinationCidrBlock") and r.get("GatewayId") != "local"}
        for cidr in sorted(set(have) | set(wanted)):
            if have.get(cidr) == wanted.get(cidr):
                continue
            if cidr not in wanted:
                problem = f"route {cidr} -> {have[cidr]}: live, not in {env.path.name}"
            elif cidr not in have:
                problem = f"route {cidr} -> {wanted[cidr]}: in {env.path.name}, not live"
            else:
                problem = f"route {cidr}: live to {have[cidr]}, {env.path.name} says {wanted[cidr]}"
            out.append({"kind": "route-table", "name": name, "id": rid, "problem": problem})
        out += [{"kind": "route-table", "name": name, "id": rid, "problem": f"{subnet} has another route table"}
                for subnet in _elsewhere(names, env, decl.subnets, live)]
    return out
