"""`xvif-ovs show`: bridges and the guests' vifs on them, the view the Xen docs'
troubleshooting steps ask for (MACs in XenStore, hotplug status, the bridge) in one table.

JSON shape (`--json`), stable:
  {"bridges": [{"name", "fail_mode", "datapath_type", "controllers": [{"target", "connected"}],
                "uplinks": [str], "vlans": [int],
                "vifs": [{"domain", "domid", "devid", "device", "mac", "ips": [str], "bridge_spec",
                          "hotplug_status", "hotplug_error",
                          "ports": [{"name", "bridge", "ofport", "kind", "domid", "devid", "tag",
                                     "trunks", "vlan_mode", "link", "attached_mac", "iface_type"}]}]}],
   "unattached_vifs": [same vif shape], "stray_ports": [port shape]}
"""

from __future__ import annotations

import json
from dataclasses import asdict

from ..errors import XvifError
from ..inspect.hoststate import HostView, VifView, read_host


class NotFound(XvifError):
    """What the command was asked about does not exist."""


def table(rows: list[list[str]], indent: str = "  ") -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def vlan_text(v: VifView) -> str:
    p = next((p for p in v.ports if p.kind == "vif"), v.ports[0] if v.ports else None)
    if p is None:
        return "-"
    mode = p.vlan_mode or ("access" if p.tag is not None else "trunk(all)")
    if mode == "access":
        return f"access {p.tag}" if p.tag is not None else "untagged"
    if mode == "trunk":
        return "trunk " + ",".join(map(str, p.trunks))
    return f"native {p.tag} + " + ",".join(str(t) for t in p.trunks if t != p.tag)


def show(host: HostView, bridge: str | None) -> dict:
    if bridge and bridge not in host.bridges:
        raise NotFound(f"no bridge named {bridge} (bridges: {', '.join(sorted(host.bridges)) or 'none'})")
    out = {"bridges": [], "unattached_vifs": [], "stray_ports": [asdict(p) for p in host.stray_ports]}
    for b in sorted(host.bridges.values(), key=lambda b: b.name):
        if bridge and b.name != bridge:
            continue
        vifs = sorted(
            (v for v in host.vifs.values() if any(p.bridge == b.name for p in v.ports)),
            key=lambda v: (v.domid, v.devid),
        )
        out["bridges"].append(
            {
                "name": b.name,
                "fail_mode": b.fail_mode,
                "datapath_type": b.datapath_type,
                "controllers": b.controllers,
                "uplinks": b.uplinks,
                "vlans": b.vlans(),
                "vifs": [v.as_json() for v in vifs],
            }
        )
    if not bridge:
        out["unattached_vifs"] = [
            v.as_json() for v in sorted(host.vifs.values(), key=lambda v: (v.domid, v.devid)) if not v.ports
        ]
    return out


def render(host: HostView, data: dict) -> str:
    lines = []
    for b in data["bridges"]:
        ctl = ", ".join(
            f"{c['target']} ({'connected' if c['connected'] else 'NOT connected'})" for c in b["controllers"]
        )
        lines.append(
            f"bridge {b['name']}  fail_mode={b['fail_mode'] or 'standalone'}  datapath={b['datapath_type']}  "
            f"uplinks={','.join(b['uplinks']) or 'none (internal)'}  vlans={','.join(map(str, b['vlans'])) or '-'}"
        )
        lines.append(f"  controller: {ctl or 'none'}")
        rows = [["DOMAIN", "DOMID", "DEV", "DEVICE", "MAC", "IPS", "VLAN", "OFPORT", "LINK", "HOTPLUG"]]
        for vj in b["vifs"]:
            v = host.vifs[(vj["domid"], vj["devid"])]
            for p in v.ports:
                rows.append(
                    [
                        v.domain or "?",
                        str(v.domid),
                        str(v.devid),
                        p.name,
                        v.mac,
                        ",".join(vj["ips"]) or "-",
                        vlan_text(v),
                        str(p.ofport or "-"),
                        p.link,
                        (vj["hotplug_status"] or "-") if p.kind == "vif" else "(emu)",
                    ]
                )
        lines.append(table(rows) if len(rows) > 1 else "  no vifs")
        lines.append("")
    if data["unattached_vifs"]:
        lines.append("vifs in XenStore on no bridge:")
        rows = [["DOMAIN", "DOMID", "DEV", "MAC", "BRIDGE", "HOTPLUG", "ERROR"]]
        for v in data["unattached_vifs"]:
            rows.append(
                [
                    v["domain"] or "?",
                    str(v["domid"]),
                    str(v["devid"]),
                    v["mac"],
                    v["bridge_spec"] or "-",
                    v["hotplug_status"] or "-",
                    v["hotplug_error"] or "",
                ]
            )
        lines.append(table(rows))
    if data["stray_ports"]:
        lines.append(
            "ports no XenStore vif owns: " + ", ".join(f"{p['name']} on {p['bridge']}" for p in data["stray_ports"])
        )
    return "\n".join(lines).rstrip() + "\n"


def run(bridge: str | None, as_json: bool, db: str | None, xenstore: str | None) -> str:
    host = read_host(db, xenstore)
    data = show(host, bridge)
    return json.dumps(data, indent=2) + "\n" if as_json else render(host, data)
