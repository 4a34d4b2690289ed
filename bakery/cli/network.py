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
