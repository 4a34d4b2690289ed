"""Security groups, network ACLs and the source/dest check, enforced in each VPC's namespace.

One nftables ruleset per VPC namespace, written from the VPC's policy (moto_network.VpcPolicy) and
the fabric's layout (which bridge is which subnet, which bridge port is which ENI), and loaded in
one transaction by ``VpcFabric.apply_firewall`` only when its text changed. Two tables:

``bridge bakery`` sees every frame at the ENI's own bridge port, where no conntrack exists here
(the kernel lacks CONFIG_NF_CONNTRACK_BRIDGE), so it does the stateless per-port work:

- the source/dest check: a port whose ENI has it on drops IPv4 not from one of the ENI's IPs as
  it enters (anti-spoofing) and not to one of them as it leaves; with it off (an appliance) the
  ENI sends and receives for any address. ARP must always claim an address of the ENI's own
  instance (Linux asks with whichever of its addresses the packet that needs the answer carries,
  so a multi-homed instance replying on another interface than it was reached on asks with its
  other ENI's address), and anything but IPv4 and ARP is dropped (the fabric carries no IPv6,
  VLANs or other protocols);
- it marks the packet with the ENI it came from (the low bits of the mark) and, for frames the
  bridge forwards within a subnet, the ENI it leaves by (the high bits) plus a ``bridged`` bit;
- a port of an ENI the policy does not (yet) know drops everything; clients' ports (made by
  ``VpcFabric.client``, standing for hosts outside EC2's rules) pass.

``inet bakery``'s forward hook sees routed traffic and, through br_netfilter (bridge-nf-call-
iptables, set per namespace), bridged IPv4 too, with conntrack:

- network ACLs (stateless, per subnet): a packet that crosses a subnet's boundary (routed between
  two bridges; traffic within a subnet does not, as on EC2) runs through the egress entries of
  the subnet it leaves and the ingress entries of the one it enters, in rule-number order; allow
  returns, deny drops, and the end of the list is the implicit deny (``*``). Replies are packets
  like any other here, so they need their own (ephemeral-port) entries;
- then established and related traffic passes (groups are stateful);
- then security groups (per ENI, allow-only): the sending ENI's egress permissions (found from
  the mark), then the receiving ENI's ingress permissions (found from the mark for bridged
  frames, from the destination address for routed ones: the VPC router delivers to the address's
  owner), each the union of the ENI's groups; no match drops. A group reference matches the
  private IPs (all of them) of every ENI in that group, from the policy, so it follows ENIs as
  they move, gain IPs or change groups.

Every block is a drop: EC2 answers blocked traffic with nothing (no reset, no ICMP unreachable).
"""

from __future__ import annotations

import ipaddress
import logging
import time

from bakery.local.errors import LocalCloudError
from bakery.local.moto_network import AclEntry, Interface, NetworkAcl, Permission, Traffic, VpcPolicy
from bakery.local.vpcnet import ENI_PORT_PREFIX, VpcFabric

log = logging.getLogger("bakery.local")

TABLE = "bakery"
#: the packet mark: the ENI it came from (low bits), the ENI it leaves by (high bits), bridged or routed
FROM_MASK, TO_SHIFT, TO_MASK, BRIDGED = 0x7FFF, 16, 0x7FFF0000, 0x80000000
MAX_PORTS = FROM_MASK
#: before br_netfilter's own bridge hooks (priority 0 and -1), so marks and drops come first
BRIDGE_PRIORITY = -200


def render(policy: VpcPolicy, subnets: dict[str, str], ports: dict[str, str]) -> str:
    """The VPC's nftables ruleset, as text for ``nft -f``.

    ``subnets`` maps the VPC's subnets on the fabric to their bridges, ``ports`` the ENIs attached
    on the fabric to their bridge ports (veths). Deterministic: the same input gives the same text.
    """
    enis = [(eni_id, ports[eni_id], policy.interfaces[eni_id]) for eni_id in sorted(ports)
            if eni_id in policy.interfaces]
    if len(enis) > MAX_PORTS:
        raise LocalCloudError(f"{policy.vpc_id}: {len(enis)} attached ENIs; the firewall marks at most {MAX_PORTS}")
    index = {eni.id: n for n, (_, _, eni) in enumerate(enis, start=1)}
    out = [f"# the local cloud's firewall for {policy.vpc_id} (bakery/local/firewall.py); loaded as one transaction",
           f"table bridge {TABLE}", f"delete table bridge {TABLE}", f"table inet {TABLE}", f"delete table inet {TABLE}",
           ""]
    out += _bridge_table(policy, enis, index)
    out += _inet_table(policy, subnets, enis, index)
    return "\n".join(out).rstrip("\n") + "\n"


def apply(fabric: VpcFabric, policies: dict[str, VpcPolicy]) -> list[str]:
    """Bring every VPC namespace on the fabric to its policy (a VPC moto does not know gets an
    empty one: its ENI ports drop everything). Returns the VPCs whose ruleset was loaded now."""
    layout = fabric.layout()
    loaded, failures = [], []
    for vpc_id in sorted(layout["vpcs"]):
        subnets = {sid: s["bridge"] for sid, s in layout["subnets"].items() if s["vpc"] == vpc_id}
        ports = {eni: a["veth"] for eni, a in layout["attachments"].items() if a["subnet"] in subnets}
        try:
            text = render(policies.get(vpc_id) or VpcPolicy(vpc_id), subnets, ports)
            started = time.monotonic()
            if fabric.apply_firewall(vpc_id, text):
                loaded.append(vpc_id)
                log.info("firewall of %s loaded (%d rules' lines) in %.0f ms", vpc_id, text.count("\n"),
                         (time.monotonic() - started) * 1000)
            _reported.pop(vpc_id, None)
        except LocalCloudError as exc:
            if _reported.get(vpc_id) != exc.message:  # once per distinct failure, not every pass
                _reported[vpc_id] = exc.message
                failures.append(exc.message)
    if failures:
        raise LocalCloudError("; ".join(failures))
    return loaded


_reported: dict[str, str] = {}


# ---- bridge table: per-port, stateless -------------------------------------------------------


def _bridge_table(policy: VpcPolicy, enis: list[tuple[str, str, Interface]], index: dict[str, int]) -> list[str]:
    port_in = {veth: f"goto from-{eni.id}" for _, veth, eni in enis}
    port_out = {veth: f"goto to-{eni.id}" for _, veth, eni in enis}
    unknown = f'"{ENI_PORT_PREFIX}*"'
    out: list[str] = []
    out += _chain("prerouting", [f"type filter hook prerouting priority {BRIDGE_PRIORITY}; policy accept;"],
                  [*_vmap("iifname", port_in), f"iifname {unknown} drop comment \"an ENI without a policy\""])
    out += _chain("forward", [f"type filter hook forward priority {BRIDGE_PRIORITY}; policy accept;"],
                  [f"meta mark set meta mark | {BRIDGED:#010x} comment \"bridged within a subnet\"",
                   *_vmap("oifname", port_out), f"oifname {unknown} drop"])
    out += _chain("output", [f"type filter hook output priority {BRIDGE_PRIORITY}; policy accept;"],
                  [*_vmap("oifname", port_out), f"oifname {unknown} drop"])
    for _, _, eni in enis:
        ips = _set(eni.ips)
        check = eni.source_dest_check
        out += _chain(f"from-{eni.id}", [f"# {', '.join(eni.ips)}; source/dest check {'on' if check else 'off'}"],
                      [f"meta mark set {index[eni.id]:#010x}",
                       "ether type != { ip, arp } drop",
                       f"arp saddr ip != {_set(('0.0.0.0', *policy.instance_ips(eni)))} drop",
                       *([f"ip saddr != {ips} drop"] if check else [])])
        out += _chain(f"to-{eni.id}", [],
                      [f"meta mark set meta mark | {index[eni.id] << TO_SHIFT:#010x}",
                       "ether type != { ip, arp } drop",
                       *([f"ip daddr != {ips} drop"] if check else [])])
    return _table("bridge", out)


# ---- inet table: ACLs and groups, stateful ---------------------------------------------------


def _inet_table(policy: VpcPolicy, subnets: dict[str, str], enis: list[tuple[str, str, Interface]],
                index: dict[str, int]) -> list[str]:
    acls = {sid: policy.subnet_acls[sid] for sid in sorted(subnets)
            if sid in policy.subnet_acls and policy.subnet_acls[sid] in policy.acls}
    crossing = []
    for sid, acl in acls.items():
        br = subnets[sid]
        crossing += [f'iifname "{br}" oifname != "{br}" jump {acl}-egress comment "leaving {sid}"',
                     f'oifname "{br}" iifname != "{br}" jump {acl}-ingress comment "entering {sid}"']
    egress = {f"{index[eni.id]:#x}": f"jump {eni.id}-egress" for _, _, eni in enis}
    routed = {ip: f"jump {eni.id}-ingress" for _, _, eni in enis for ip in eni.ips}
    bridged = {f"{index[eni.id] << TO_SHIFT:#x}": f"jump {eni.id}-ingress" for _, _, eni in enis}
    rules = [*crossing, "ct state established,related accept",
             *_vmap(f"meta mark & {FROM_MASK:#x}", egress),
             *_vmap(f"meta mark & {BRIDGED:#x} == 0 ip daddr", routed, sort=ipaddress.IPv4Address),
             *_vmap(f"meta mark & {TO_MASK:#x}", bridged)]
    referenced = sorted({p.group for _, _, eni in enis for g in eni.groups if g in policy.groups
                         for p in (*policy.groups[g].ingress, *policy.groups[g].egress) if p.group})
    out: list[str] = []
    for group in referenced:
        members = policy.members(group)
        out += [f"\tset members-{group} {{", "\t\ttype ipv4_addr",
                *([f"\t\telements = {_set(members)}"] if members else []), "\t}", ""]
    out += _chain("forward", ["type filter hook forward priority filter; policy accept;"], rules)
    for acl_id in sorted(set(acls.values())):
        acl: NetworkAcl = policy.acls[acl_id]
        for direction, entries in (("ingress", acl.ingress), ("egress", acl.egress)):
            out += _chain(f"{acl_id}-{direction}", [],
                          [*(_acl_rule(e, direction) for e in sorted(entries, key=lambda e: e.number)),
                           'drop comment "*"'])
    for _, _, eni in enis:
        for direction in ("ingress", "egress"):
            out += _chain(f"{eni.id}-{direction}", [f"# groups {', '.join(eni.groups) or '(none)'}"],
                          [*_group_rules(policy, eni, direction), "drop"])
    return _table("inet", out)


def _group_rules(policy: VpcPolicy, eni: Interface, direction: str) -> list[str]:
    """The union of the ENI's groups' permissions in one direction, each an allow (return)."""
    peer = "ip saddr" if direction == "ingress" else "ip daddr"
    rules: list[str] = []
    for group_id in eni.groups:
        group = policy.groups.get(group_id)
        for p in (group.ingress if direction == "ingress" else group.egress) if group else ():
            rule = " ".join(filter(None, (_peer(peer, p), _traffic(p.traffic), "return")))
            if rule not in rules:
                rules.append(rule)
    return rules


def _peer(peer: str, p: Permission) -> str:
    if p.group:
        return f"{peer} @members-{p.group}"
    return "" if p.cidr == "0.0.0.0/0" else f"{peer} {p.cidr}"


def _acl_rule(e: AclEntry, direction: str) -> str:
    peer = "" if e.cidr == "0.0.0.0/0" else f"ip {'saddr' if direction == 'ingress' else 'daddr'} {e.cidr}"
    verdict = "return" if e.allow else "drop"
    return " ".join(filter(None, (peer, _traffic(e.traffic), verdict,
                                  f'comment "{e.number} {"allow" if e.allow else "deny"}"')))


def _traffic(t: Traffic) -> str:
    if t.protocol == "all":
        return ""
    if t.protocol in ("tcp", "udp"):
        if t.ports is None:
            return f"meta l4proto {t.protocol}"
        low, high = t.ports
        return f"{t.protocol} dport {low}" if low == high else f"{t.protocol} dport {low}-{high}"
    if t.protocol == "icmp":
        if t.icmp is None:
            return "meta l4proto icmp"
        kind, code = t.icmp
        return f"icmp type {kind}" + (f" icmp code {code}" if code >= 0 else "")
    return f"meta l4proto {int(t.protocol)}"


# ---- text helpers ----------------------------------------------------------------------------


def _table(family: str, body: list[str]) -> list[str]:
    return [f"table {family} {TABLE} {{", *body[:-1], "}", ""]


def _chain(name: str, head: list[str], rules: list[str]) -> list[str]:
    return [f"\tchain {name} {{", *(f"\t\t{line}" for line in head + rules), "\t}", ""]


def _vmap(key: str, verdicts: dict[str, str], sort=None) -> list[str]:
    """``key vmap { k : verdict, ... }``; nothing when there is nothing to map (nft refuses ``{ }``)."""
    if not verdicts:
        return []
    keys = sorted(verdicts, key=sort) if sort else sorted(verdicts)
    quote = key.endswith("ifname")
    items = ", ".join(f'"{k}" : {verdicts[k]}' if quote else f"{k} : {verdicts[k]}" for k in keys)
    return [f"{key} vmap {{ {items} }}"]


def _set(ips) -> str:
    return "{ " + ", ".join(ips) + " }"
