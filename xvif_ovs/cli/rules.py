"""`xvif-ovs rules`: the firewall rules in force for each guest, in the order they are
tried, with each rule's packet and byte counters (read from its flows' cookies);
`xvif-ovs rules check [FILE]`: validate the rule files (or FILE as if it were in the
directory, replacing its namesake) without applying anything.

JSON shape (`--json`), stable:
  {"vifs": [{"bridge", "domid", "devid", "device", "domain", "zone", "closed_vlans": [int],
             "default_drops": {"packets", "bytes"},
             "rules": [{"index", "where", "rule", "comment", "packets", "bytes"}]}],
   "files_ok": bool, "error": str | null}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..controller.config import load_installed
from ..controller.fwstate import ZONE_KEY
from ..errors import XvifError
from ..firewall.rules import Rule, RuleError, RuleSet, load_dir, load_files
from ..firewall.select import rules_for
from ..inspect.hoststate import VifView, read_host
from ..inspect.openflow import OfClient, OpenFlowUnavailable
from ..model.host import VifModel
from ..model.vifspec import vif_vlans
from ..pipeline.firewall import P_FW_DEFAULT, P_RULE, rule_index
from ..pipeline.flow import COOKIE_MAGIC, COOKIE_MASK, decode_cookie


def run(args: argparse.Namespace) -> tuple[str, int]:
    cfg = load_installed(args.config)
    if args.action == "check":
        return check(cfg.rules_dir, args.file)
    if args.file:
        raise RuleError("a FILE is for `xvif-ovs rules check FILE`")
    return listing(cfg, args)


def check(directory: str, file: str | None) -> tuple[str, int]:
    try:
        if file:
            f = Path(file)
            if not f.is_file():
                raise RuleError(f"{file}: no such file")
            if f.suffix != ".toml" or f.name.startswith("."):
                raise RuleError(f"{file}: the controller reads only NAME.toml files (not hidden ones): rename it")
            d = Path(directory)
            others = (
                sorted(p for p in d.glob("*.toml") if p.name != f.name and not p.name.startswith("."))
                if d.is_dir()
                else []
            )
            rs = load_files(sorted([*others, f], key=lambda p: p.name))
        else:
            rs = load_dir(directory)
    except RuleError as e:
        return f"{e}\n", 1
    closed = sorted(k for k, v in rs.policies.items() if v == "closed")
    return (
        f"OK: {len(rs.rules)} rule(s) in {len(rs.files)} file(s)"
        + (f"; closed: {', '.join(closed)}" if closed else "")
        + "\n",
        0,
    )


def rules_of_vif(v: VifView, rs: RuleSet, bridge: str) -> tuple[tuple[Rule, ...], frozenset[int]]:
    """The rules the controller gives this vif, in order, and its closed VLANs (as
    controller/fwstate.py chooses them, from what XenStore and OVSDB say)."""
    uuid = next((p.vm_uuid for p in v.ports if p.vm_uuid), "")
    try:
        vlans = VifModel(v.domid, v.devid, v.mac, vif_vlans(v.keys.get("bridge"), v.keys.get("vlan"))).access_vlans
    except XvifError:
        return (), frozenset()  # a vif the controller gives no flows has no rules either
    return rules_for(rs, v.domain, uuid, v.domid, v.devid, bridge, vlans)


def listing(cfg, args: argparse.Namespace) -> tuple[str, int]:  # noqa: ANN001
    error = None
    try:
        rs = load_dir(cfg.rules_dir)
    except RuleError as e:
        rs, error = RuleSet(), str(e)
    host = read_host(args.db, args.xenstore, cfg.declared_uplinks)
    counters: dict[tuple[int, int, int, int], list[int]] = {}
    for bridge in sorted(b for b in host.bridges if cfg.managed(b)):
        try:
            with OfClient(bridge) as of:
                stats = of.flows(COOKIE_MAGIC, COOKIE_MASK)
        except OpenFlowUnavailable:
            continue
        for st in stats:
            d = decode_cookie(st.flow.cookie)
            if d is None or d[1] is None or d[0] not in (P_RULE, P_FW_DEFAULT):
                continue
            key = (d[1], d[2] or 0, d[0], rule_index(st.flow.cookie) if d[0] == P_RULE else 0)
            c = counters.setdefault(key, [0, 0])
            c[0] += st.packets
            c[1] += st.bytes
    out = []
    for (domid, devid), v in sorted(host.vifs.items()):
        if args.domain and args.domain not in (v.domain, str(domid)):
            continue
        bridge = next((p.bridge for p in v.ports), v.keys.get("bridge", "").split(".")[0])
        mine, closed = rules_of_vif(v, rs, bridge)
        if not (mine or closed):
            continue
        d = counters.get((domid, devid, P_FW_DEFAULT, 0), [0, 0])
        out.append(
            {
                "bridge": bridge,
                "domid": domid,
                "devid": devid,
                "device": v.dev,
                "domain": v.domain,
                "zone": int(v.keys[ZONE_KEY]) if v.keys.get(ZONE_KEY, "").isdigit() else None,
                "closed_vlans": sorted(closed),
                "default_drops": {"packets": d[0], "bytes": d[1]},
                "rules": [
                    {
                        "index": i,
                        "where": r.where,
                        "rule": r.describe(),
                        "comment": r.comment,
                        "packets": counters.get((domid, devid, P_RULE, i), [0, 0])[0],
                        "bytes": counters.get((domid, devid, P_RULE, i), [0, 0])[1],
                    }
                    for i, r in enumerate(mine)
                ],
            }
        )
    if args.json:
        return json.dumps({"vifs": out, "files_ok": error is None, "error": error}, indent=2) + "\n", 0
    lines = []
    if error:
        lines.append(f"warning: the rule files have an error, so the controller keeps its previous rules: {error}")
    for e in out:
        policy = "closed" if e["closed_vlans"] else "open"
        lines.append(
            f"{e['device']} ({e['domain'] or '?'}) on {e['bridge']}: inbound default {policy}, "
            f"zone {e['zone'] if e['zone'] is not None else '?'}; default drops {e['default_drops']['packets']} packets"
        )
        for r in e["rules"]:
            comment = f"  # {r['comment']}" if r["comment"] else ""
            lines.append(
                f"  {r['index']:>3}  {r['rule']:<52} {r['packets']:>9} pkts {r['bytes']:>11} bytes  {r['where']}{comment}"
            )
        if not e["rules"]:
            lines.append("       (no rules: the default decides)")
    if not out:
        lines.append("no guest has firewall rules" + (f" (rules: {cfg.rules_dir})" if not error else ""))
    return "\n".join(lines) + "\n", 0
