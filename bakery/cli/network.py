"""What `invoke network.status` prints for people (`--json` prints network.status's data as it is)."""

from __future__ import annotations


def render_status(info: dict) -> str:
    lines = [f"{info['environment']}: {len(info['interfaces'])} network interface(s)"]
    for r in info["interfaces"]:
        where = f"{r['instance']} dev {r['device_index']} ({r['attachment']})" if r["instance"] else "detached"
        kind = f"persistent {r['name']}" if r["persistent"] else "launch-time"
        check = "" if r["source_dest_check"] in (True, None) else " src/dst check OFF"
        lines.append(f"  {r['eni']} {kind:22} {','.join(r['private_ips']):30} {r['mac']} {','.join(r['groups'])} "
                     f"-> {where}{check}")
    for e in info["elastic_ips"]:
        lines.append(f"  EIP {e['name']} {e['public_ip']} -> {e['eni'] or '-'} {e['private_ip'] or ''} "
                     f"{e.get('nat_gateway') or e['instance'] or ''}")
    lines += [f"warning: {w}" for w in info["warnings"]]
    return "\n".join(lines)


def render_fleet(info: dict) -> str:
    """`invoke status`: instances with their images, then the network, then drift."""
    lines = [f"{info['environment']}: {len(info['instances'])} instance(s)"]
    for r in info["instances"]:
        age = f"{r['image_age_days']:g} d" if r["image_age_days"] is not None else "age ?"
        mark = f"  OUTDATED: newer {r['newest_image']}" if r["outdated"] else ""
        lines.append(f"  {r['tier']}/{r['slot']:10} {r['instance']} {r['state']:8} {r['image']} ({age}){mark}")
    lines.append(render_status(info).split("\n", 1)[1] if "\n" in render_status(info) else "")
    lines += [f"drift: {d['kind']} {d['name']}{' ' + d['id'] if d.get('id') else ''}: {d['problem']}"
              for d in info["drift"]]
    if not info["drift"]:
        lines.append("no drift: the security groups are as the environment file says")
    return "\n".join(line for line in lines if line)
