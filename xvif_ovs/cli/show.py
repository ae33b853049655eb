"""`xvif-ovs show`: bridges and the guests' vifs on them, the view the Xen docs'
troubleshooting steps ask for (MACs in XenStore, hotplug status, the bridge) in one table.

JSON shape (`--json`), stable:
  {"bridges": [{"name", "managed", "mode", "router_mac", "nat_address", "fail_mode", "datapath_type",
                "controllers": [{"target", "connected", "ours"}],
                "uplinks": [str], "unmanaged": [str], "vlans": [int],
                "mirrors": [{"name", "source": [str], "output"}],
                "vifs": [{"domain", "domid", "devid", "device", "mac", "ips": [str], "visible", "bridge_spec",
                          "hotplug_status", "hotplug_error",
                          "ports": [{"name", "bridge", "ofport", "kind", "domid", "devid", "tag",
                                     "trunks", "vlan_mode", "link", "attached_mac", "iface_type"}]}]}],
   "unattached_vifs": [same vif shape], "stray_ports": [port shape]}
"""

from __future__ import annotations

import json
from dataclasses import asdict

from ..errors import VifSpecError, XvifError
from ..inspect.hoststate import HostView, VifView, read_host
from ..model.vifspec import vif_vlans


class NotFound(XvifError):
    """What the command was asked about does not exist."""


def table(rows: list[list[str]], indent: str = "  ") -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def vlan_text(v: VifView) -> str:
    """The VLANs the controller's flows enforce: XenStore's bridge/vlan keys through the
    one parser the hook and the controller share (not the OVS port's columns, which the
    hook set once and which may have been changed since)."""
    try:
        spec = vif_vlans(v.keys.get("bridge"), v.keys.get("vlan"))
    except VifSpecError as e:
        return f"invalid ({e})"
    if spec.vlan_mode == "access":
        return f"access {spec.tag}" if spec.tag is not None else "untagged"
    if spec.vlan_mode == "trunk":
        return "trunk " + ",".join(map(str, spec.trunks))
    return f"native {spec.tag} + " + ",".join(map(str, spec.trunks))


def visible(v: VifView, mode: str, router_mac: str, nat_address: str = "") -> str:
    """What the LAN sees of a guest: on a bridged network its own MAC (and whatever
    addresses it uses); on a routed one only its addresses from ip=, at dom0's MAC; on a
    NAT one nothing of its own."""
    if mode == "nat":
        return f"nothing: NAT behind dom0's {nat_address}"
    if mode != "routed":
        return f"its MAC {v.mac}"
    ips = [i for i in v.keys.get("ip", "").split() if not i.lower().startswith("fe80:")]
    if not ips:
        return "nothing (routed, no address in ip=)"
    return f"{','.join(ips)} at dom0's MAC {router_mac or '(not known yet)'}"


def show(
    host: HostView,
    bridge: str | None,
    managed: frozenset[str] | None = None,
    modes: dict[str, str] | None = None,
    nat_addresses: dict[str, str] | None = None,
) -> dict:
    """``managed``: the bridges the controller's config names (None: unknown, all shown as such);
    ``modes``: each managed bridge's network model from the config (absent: bridged)."""
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
        mode = (modes or {}).get(b.name, "bridged")
        router = b.local_mac if mode in ("routed", "nat") else ""
        nat_address = (nat_addresses or {}).get(b.name, "")
        out["bridges"].append(
            {
                "name": b.name,
                "managed": managed is None or b.name in managed,
                "mode": mode,
                "router_mac": router,
                "fail_mode": b.fail_mode,
                "datapath_type": b.datapath_type,
                "controllers": b.controllers,
                "uplinks": b.uplinks,
                "unmanaged": [p.name for p in b.unmanaged] if managed is None or b.name in managed else [],
                "mirrors": [
                    {"name": m.name, "source": sorted({*m.from_ports, *m.to_ports}), "output": m.output}
                    for m in b.mirrors
                ],
                "vlans": b.vlans(),
                "nat_address": nat_address,
                "vifs": [{**v.as_json(), "visible": visible(v, mode, router, nat_address)} for v in vifs],
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
            f"bridge {b['name']}{'' if b['managed'] else ' (not managed by xvif-ovs)'}  "
            + (f"mode=routed (dom0's MAC {b['router_mac'] or 'not known yet'})  " if b["mode"] == "routed" else "")
            + (f"mode=nat (behind dom0's {b['nat_address']})  " if b["mode"] == "nat" else "")
            + f"fail_mode={b['fail_mode'] or 'standalone'}  datapath={b['datapath_type']}  "
            f"uplinks={','.join(b['uplinks']) or 'none (internal)'}  vlans={','.join(map(str, b['vlans'])) or '-'}"
        )
        lines.append(f"  controller: {ctl or 'none'}")
        if b["unmanaged"]:
            lines.append(f"  unmanaged (no forwarding; declare as uplink or remove): {', '.join(b['unmanaged'])}")
        for m in b["mirrors"]:
            lines.append(f"  mirror {m['name']}: {','.join(m['source']) or '(gone)'} -> {m['output'] or '(gone)'}")
        rows = [["DOMAIN", "DOMID", "DEV", "DEVICE", "MAC", "IPS", "VLAN", "OFPORT", "LINK", "HOTPLUG", "LAN SEES"]]
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
                        vj["visible"],
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
    from ..controller.config import load_installed

    cfg = load_installed()
    host = read_host(db, xenstore, cfg.declared_uplinks)
    nat = {b: p.nat.address for b, p in cfg.bridge_policy.items() if p.nat}
    data = show(host, bridge, frozenset(cfg.bridges), {b: cfg.mode(b) for b in cfg.bridges}, nat)
    return json.dumps(data, indent=2) + "\n" if as_json else render(host, data)
