"""`xvif-ovs flows`: the installed flows, grouped by the vif and purpose that installed
them (decoded from the cookie), with counters, in ovs-ofctl syntax; `--diff` against
what the controller would install now; `--drops` the port-security drops per vif.

JSON shape (`--json`), stable:
  flows: {"bridges": [{"name", "flows": [{"owner": {"domid", "devid", "device", "domain"} | null,
          "purpose", "table", "priority", "cookie", "packets", "bytes", "text"}],
          "groups": [{"group_id", "text"}]}]}
  --diff: {"bridges": [{"name", "missing": [text], "extra": [text], "changed": [text]}], "drift": bool}
  --drops: {"vifs": [{"bridge", "domid", "devid", "device", "domain", "dropped_packets", "dropped_bytes",
             "by_kind": {KIND: packets}}]}  (KIND: source-mac, ipv4, ipv6, arp, nd, dhcp-server, ra, vlan,
             other, routed, isolation)
"""

from __future__ import annotations

import json

from ..controller.config import Config, load_installed
from ..controller.fwstate import Firewall, vm_uuids
from ..controller.hostmodel import OfPort, bridge_models
from ..controller.ovsdb_monitor import BridgeInfo, PortInfo, port_vlans
from ..firewall.rules import RuleError, RuleSet, load_dir
from ..inspect.hoststate import HostView, read_host
from ..inspect.openflow import OfClient
from ..model.host import ALL_VLANS
from ..pipeline.build import P_DROP, PURPOSES, build, drop_kind
from ..pipeline.diff import diff
from ..pipeline.firewall import P_RULE, rule_index
from ..pipeline.flow import COOKIE_MAGIC, COOKIE_MASK, FlowSet, decode_cookie, purpose_match
from .show import NotFound


def controller_config(path: str | None) -> Config:
    return load_installed(path)


def select_bridges(
    host: HostView, vif: str | None, domain: str | None
) -> tuple[list[str], set[tuple[int, int]] | None]:
    """The bridges to look at, and the vifs (domid, devid) to keep (None: all)."""
    if vif:
        for v in host.vifs.values():
            if vif in {v.dev, *(p.name for p in v.ports)}:
                return sorted({p.bridge for p in v.ports}), {(v.domid, v.devid)}
        known = sorted(p.name for v in host.vifs.values() for p in v.ports)
        raise NotFound(f"no vif named {vif} (vifs: {', '.join(known) or 'none'})")
    if domain:
        keep = {(v.domid, v.devid) for v in host.vifs.values() if v.domain == domain or str(v.domid) == domain}
        if not keep:
            names = sorted({v.domain for v in host.vifs.values() if v.domain})
            raise NotFound(f"no domain named {domain} with vifs (domains: {', '.join(names) or 'none'})")
        return sorted({p.bridge for k in keep for p in host.vifs[k].ports}), keep
    return sorted(host.bridges), None


def _owner(host: HostView, domid: int | None, devid: int | None) -> dict | None:
    if domid is None:
        return None
    v = host.vifs.get((domid, devid or 0))
    return {
        "domid": domid,
        "devid": devid,
        "device": v.dev if v else f"vif{domid}.{devid}",
        "domain": v.domain if v else "",
    }


def installed(host: HostView, bridges: list[str], keep, table: int | None, cfg: Config | None = None) -> dict:
    """Each flow with its owner and purpose; a firewall rule's flows (tables 11-13) are
    grouped by rule after the rest, each group named by the rule as written."""
    rules = installed_rules(cfg) if cfg is not None else RuleSet()
    named: dict[tuple[int, int], tuple] = {}  # (domid, devid) -> its rules in order
    out = {"bridges": []}
    for b in bridges:
        with OfClient(b) as of:
            stats = of.flows()
            groups = of.groups()
        rows, by_rule = [], []
        for st in sorted(stats, key=lambda s: (s.flow.table, -s.flow.priority, s.flow.render())):
            d = decode_cookie(st.flow.cookie)
            domid, devid = (d[1], d[2]) if d else (None, None)
            if keep is not None and (domid, devid) not in keep:
                continue
            if table is not None and st.flow.table != table:
                continue
            purpose = PURPOSES.get(d[0], "?") if d else "not ours"
            if d and d[0] == P_RULE and domid is not None:
                if (domid, devid) not in named:
                    named[(domid, devid)] = _rules_of(host, rules, b, domid, devid or 0)
                i = rule_index(st.flow.cookie)
                mine = named[(domid, devid)]
                purpose = f"firewall rule {i}: " + (
                    f"{mine[i].describe()} ({mine[i].where})" if i < len(mine) else "not in the rule files now"
                )
            (by_rule if d and d[0] == P_RULE else rows).append(
                {
                    "owner": _owner(host, domid, devid),
                    "purpose": purpose,
                    "table": st.flow.table,
                    "priority": st.flow.priority,
                    "cookie": f"{st.flow.cookie:#x}",
                    "packets": st.packets,
                    "bytes": st.bytes,
                    "text": st.flow.render(),
                }
            )
        by_rule.sort(key=lambda r: (r["owner"]["domid"], r["owner"]["devid"], int(r["cookie"], 16) >> 32 & 0xFF))
        out["bridges"].append(
            {
                "name": b,
                "flows": rows + by_rule,
                "groups": [{"group_id": g.group_id, "text": g.render()} for g in groups] if keep is None else [],
            }
        )
    return out


def render_installed(data: dict) -> str:
    lines = []
    for b in data["bridges"]:
        lines.append(f"bridge {b['name']}: {len(b['flows'])} flows, {len(b['groups'])} groups")
        current = None
        for f in b["flows"]:
            o = f["owner"]
            head = (
                f"{o['device']} (domain {o['domain'] or '?'}, domid {o['domid']})" if o else "bridge"
            ) + f": {f['purpose']}"
            if head != current:
                lines.append(f"  {head}")
                current = head
            lines.append(f"    n_packets={f['packets']}, n_bytes={f['bytes']}, {f['text']}")
        for g in b["groups"]:
            lines.append(f"  group {g['text']}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def desired(host: HostView, bridge: str, of_ports: dict[str, tuple[int, bool]], cfg: Config) -> FlowSet:
    bv = host.bridges[bridge]
    info = BridgeInfo(
        bridge,
        tuple(
            PortInfo(
                p.name,
                p.ofport,
                p.kind,
                p.domid,
                p.devid,
                p.link != "down",
                port=p.port,
                # an uplink's own tag/trunks/vlan_mode, as the controller reads them
                vlans=ALL_VLANS if p.kind in ("vif", "emu") else port_vlans(p.tag, p.trunks, p.vlan_mode),
                vm_uuid=p.vm_uuid,
            )
            for p in bv.ports
        ),
        bv.fail_mode,
        tuple(c["target"] for c in bv.controllers),
        ("OpenFlow13",),
        bv.connected,
        local_mac=bv.local_mac,
        mirror_outputs=bv.mirror_outputs,
    )
    vifs = {k: v.keys for k, v in host.vifs.items()}
    names = {v.domid: v.domain for v in host.vifs.values()}
    ports = {bridge: {n: OfPort(no, live) for n, (no, live) in of_ports.items()}}
    models, _problems = bridge_models({bridge: info}, ports, vifs, names, cfg)
    rules = installed_rules(cfg)
    models = Firewall(lambda: rules, set(), allocate=False).attach(models, vifs, vm_uuids([info]))
    return build(models[bridge], cfg.learn_idle_timeout)


def _rules_of(host: HostView, rules: RuleSet, bridge: str, domid: int, devid: int) -> tuple:
    from .rules import rules_of_vif

    v = host.vifs.get((domid, devid))
    return rules_of_vif(v, rules, bridge)[0] if v is not None else ()


def installed_rules(cfg: Config) -> RuleSet:
    """The rule files as the controller would read them; with an error, none (the
    controller keeps its previous set then, which a CLI cannot know: `xvif-ovs rules check`)."""
    try:
        return load_dir(cfg.rules_dir)
    except RuleError:
        return RuleSet()


def drift(host: HostView, bridges: list[str], cfg: Config) -> dict:
    out = {"bridges": [], "drift": False}
    for b in bridges:
        with OfClient(b) as of:
            ports = of.ports()
            flows = [s.flow for s in of.flows(COOKIE_MAGIC, COOKIE_MASK)]
            groups = of.groups()
        plan = diff(desired(host, b, ports, cfg), flows, groups)
        entry = {
            "name": b,
            "missing": [f.render() for f in plan.flow_adds] + [g.render() for g in plan.group_adds],
            "extra": [f.render() for f in plan.flow_deletes] + [g.render() for g in plan.group_deletes],
            "changed": [f.render() for f in plan.flow_mods] + [g.render() for g in plan.group_mods],
        }
        out["drift"] |= bool(plan)
        out["bridges"].append(entry)
    return out


def render_drift(data: dict) -> str:
    lines = []
    for b in data["bridges"]:
        for sign, key in (("+", "missing"), ("-", "extra"), ("~", "changed")):
            lines += [f"{b['name']} {sign} {t}" for t in b[key]]
    return "\n".join(lines) + ("\n" if lines else "")


def drops(host: HostView, bridges: list[str], keep) -> dict:
    rows = []
    for b in bridges:
        with OfClient(b) as of:
            stats = of.flows(*purpose_match(P_DROP))
        per: dict[tuple[int, int], list] = {}
        for st in stats:
            d = decode_cookie(st.flow.cookie)
            if d and d[1] is not None and (keep is None or (d[1], d[2]) in keep):
                acc = per.setdefault((d[1], d[2]), [0, 0, {}])
                acc[0] += st.packets
                acc[1] += st.bytes
                if st.packets:
                    kind = drop_kind(st.flow.cookie)
                    acc[2][kind] = acc[2].get(kind, 0) + st.packets
        for (domid, devid), (pk, by, kinds) in sorted(per.items()):
            o = _owner(host, domid, devid)
            row = {"bridge": b, **o, "dropped_packets": pk, "dropped_bytes": by, "by_kind": dict(sorted(kinds.items()))}
            rows.append(row)  # type: ignore[arg-type]
    return {"vifs": rows}


def render_drops(data: dict) -> str:
    from .show import table

    rows = [["BRIDGE", "DEVICE", "DOMAIN", "DOMID", "DROPPED", "BYTES", "KINDS"]]
    rows += [
        [
            r["bridge"],
            r["device"],
            r["domain"] or "?",
            str(r["domid"]),
            str(r["dropped_packets"]),
            str(r["dropped_bytes"]),
            " ".join(f"{k}={n}" for k, n in r["by_kind"].items()) or "-",
        ]
        for r in data["vifs"]
    ]
    return table(rows, "") + "\n"


def run(args) -> tuple[str, int]:  # noqa: ANN001 - argparse namespace
    cfg = controller_config(args.config)
    host = read_host(args.db, args.xenstore, cfg.declared_uplinks)
    bridges, keep = select_bridges(host, args.vif, args.domain)
    if args.diff:
        data = drift(host, bridges, cfg)
        return (json.dumps(data, indent=2) + "\n" if args.json else render_drift(data)), (1 if data["drift"] else 0)
    if args.drops:
        data = drops(host, bridges, keep)
        return (json.dumps(data, indent=2) + "\n" if args.json else render_drops(data)), 0
    data = installed(host, bridges, keep, args.table, cfg)
    return (json.dumps(data, indent=2) + "\n" if args.json else render_installed(data)), 0
