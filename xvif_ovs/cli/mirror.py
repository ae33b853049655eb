"""`xvif-ovs mirror add|del|list`: copy a guest's traffic to a monitoring guest or a dom0
port, through OVSDB's Mirror table.

A mirror is an OVSDB row of the bridge's, so it outlives the controller and this
command; it is marked (external_ids xvif-ovs-mirror=true) so that `del` and the
controller touch only ours, and the controller removes it once its guest or its output
goes away. Its output receives only mirrored frames and can send nothing: OVS reserves a
mirror's output port, and the controller gives it no flows (its frames are dropped at the
first table, and no flood or lookup sends to it).

JSON shape (`list --json`): {"mirrors": [{"name", "bridge", "source": [port], "direction",
"output", "ours", "packets"}]}
"""

from __future__ import annotations

import argparse
import json
import re

from ..controller.config import load_installed
from ..errors import XvifError
from ..inspect.hoststate import BridgeView, HostView, MirrorView, read_host
from ..model.ports import MIRROR_MARK
from ..ovsdb.client import ConditionFailed, Ovsdb, OvsdbError, ovs_map, ovs_set
from .show import NotFound, table

_VIF = re.compile(r"^x?vif(\d+)\.(\d+)(?:-emu)?$")
DIRECTIONS = {"both": (True, True), "from-guest": (True, False), "to-guest": (False, True)}


class MirrorError(XvifError):
    """A mirror that cannot be made as asked."""


def mirror_name(source: str, output: str) -> str:
    return f"xvif-{source}-to-{output}"


# Where a dom0 port may take a copy of guests' traffic: a local device (a tap, a veth, an
# internal port). A patch port leads to another bridge and a tunnel to another host.
LOCAL_TYPES = ("", "system", "internal", "tap")


def _bridge_of(host: HostView, port: str) -> tuple[BridgeView, str, str]:
    """(bridge, port kind, interface type) of the port named ``port``."""
    for b in host.bridges.values():
        for p in b.ports:
            if p.name == port:
                return b, p.kind, p.iface_type
    names = sorted(p.name for b in host.bridges.values() for p in b.ports)
    more = f", ... ({len(names)} in all)" if len(names) > 12 else ""
    raise NotFound(f"no port named {port} on any bridge (ports: {', '.join(names[:12]) or 'none'}{more})")


def _source_ports(host: HostView, dev: str) -> tuple[BridgeView, list[str], str]:
    """The guest NIC's ports (its vif, and an HVM guest's -emu tap) and its bridge."""
    b, kind, _type = _bridge_of(host, dev)
    if kind not in ("vif", "emu"):
        raise MirrorError(f"{dev} is not a guest's vif (it is {kind}): --vif takes a guest's port, e.g. vif5.0")
    p = next(p for p in b.ports if p.name == dev)
    ports = sorted(q.name for q in b.ports if q.kind in ("vif", "emu") and (q.domid, q.devid) == (p.domid, p.devid))
    return b, ports, f"vif{p.domid}.{p.devid}"


def add(host: HostView, db: Ovsdb, args: argparse.Namespace, managed: tuple[str, ...]) -> str:
    bridge, sources, nic = _source_ports(host, args.vif)
    out = args.to or args.to_port
    b2, kind, iface_type = _bridge_of(host, out)
    if b2.name != bridge.name:
        raise MirrorError(
            f"{out} is on {b2.name}, {args.vif} on {bridge.name}: a mirror's output must be on its bridge"
        )
    if bridge.name not in managed:
        raise MirrorError(
            f"bridge {bridge.name} is not managed by xvif-ovs ([controller] bridges): not mirroring on it"
        )
    if args.to and kind not in ("vif", "emu"):
        raise MirrorError(f"--to {out}: not a guest's vif ({kind}); for a dom0 port use --to-port {out}")
    if args.to_port and kind != "unmanaged":
        what = {"vif": "a guest's vif", "emu": "a guest's vif", "uplink": "an uplink", "local": "the bridge's own port"}
        raise MirrorError(
            f"--to-port {out}: it is {what.get(kind, kind)}; mirroring there would "
            + ("send guests' traffic onto the LAN" if kind == "uplink" else "take its traffic away")
            + ". Use a port of its own (ip tuntap add tapmon mode tap; ovs-vsctl add-port "
            + f"{bridge.name} tapmon)"
            + (f", or --to {out} for a monitoring guest" if kind in ("vif", "emu") else "")
        )
    if args.to_port and iface_type not in LOCAL_TYPES:
        raise MirrorError(
            f"--to-port {out}: a {iface_type} port leads off this host's dom0 (another bridge or another host): "
            "guests' traffic must not go there. Use a local port (a tap or veth of its own)"
        )
    if out in sources:
        raise MirrorError(f"{out} is {args.vif}'s own port: mirror to another guest or port")
    for m in bridge.mirrors:
        if m.output == out and set(sources) & (set(m.from_ports) | set(m.to_ports)):
            raise MirrorError(f"{args.vif} is already mirrored to {out} ({m.name}): `xvif-ovs mirror del` it first")
        if m.output in sources:
            raise MirrorError(f"{args.vif} receives mirror {m.name}: it cannot be mirrored itself")
        if out in m.from_ports or out in m.to_ports:
            raise MirrorError(f"{out} is mirrored by {m.name}: a mirror's output must not be mirrored")
    src, dst = DIRECTIONS[args.direction]
    ports = {r["name"]: r["_uuid"] for r in db.select("Port", [], ["name", "_uuid"])}
    missing = [n for n in (*sources, out) if n not in ports]
    if missing:
        raise NotFound(f"{', '.join(missing)} went away meanwhile")
    name = mirror_name(nic, out)
    row = {
        "name": name,
        "select_src_port": ovs_set([ports[n] for n in sources] if src else []),
        "select_dst_port": ovs_set([ports[n] for n in sources] if dst else []),
        "output_port": ports[out],
        "external_ids": ovs_map({MIRROR_MARK: "true", "xvif-source": nic, "xvif-output": out}),
    }
    ops = [
        # The ports must still be on this bridge when it commits (a guest destroyed meanwhile).
        *(
            {
                "op": "wait",
                "table": "Port",
                "where": [["_uuid", "==", ports[n]]],
                "columns": ["name"],
                "until": "==",
                "rows": [{"name": n}],
                "timeout": 0,
            }
            for n in (*sources, out)
        ),
        {"op": "insert", "table": "Mirror", "row": row, "uuid-name": "m"},
        {
            "op": "mutate",
            "table": "Bridge",
            "where": [["name", "==", bridge.name]],
            "mutations": [["mirrors", "insert", ["set", [["named-uuid", "m"]]]]],
        },
        {"op": "comment", "comment": f"xvif-ovs mirror add: {name}"},
    ]
    try:
        db.transact(ops)
    except ConditionFailed:
        raise NotFound(f"{args.vif} or {out} went away meanwhile: nothing was changed") from None
    what = {"both": "both directions", "from-guest": "what it sends", "to-guest": "what it receives"}[args.direction]
    return f"{name}: {nic} ({', '.join(sources)}, {what}) mirrored to {out} on {bridge.name}\n"


def delete(host: HostView, db: Ovsdb, args: argparse.Namespace) -> str:
    mine = [m for b in host.bridges.values() for m in b.mirrors if m.ours]
    if args.vif:
        # By the NIC it was made for (vifD.N, kept on the row): its ports may be gone already.
        m_ = _VIF.match(args.vif)
        if m_ is None:
            raise MirrorError(f"--vif {args.vif!r}: a guest's vif, e.g. vif5.0")
        nic = f"vif{m_.group(1)}.{m_.group(2)}"
        mine = [m for m in mine if m.source == nic or args.vif in (*m.from_ports, *m.to_ports)]
    out = args.to or args.to_port
    if out:
        mine = [m for m in mine if m.output == out]
    if not mine:
        others = [m.name for b in host.bridges.values() for m in b.mirrors if not m.ours]
        hint = f" (not ours, left alone: {', '.join(others)})" if others else ""
        raise NotFound("no xvif-ovs mirror matches" + hint)
    ops: list[dict] = [
        {
            "op": "mutate",
            "table": "Bridge",
            "where": [["name", "==", m.bridge]],
            "mutations": [["mirrors", "delete", ["set", [["uuid", m.uuid]]]]],
        }
        for m in mine
    ]
    db.transact([*ops, {"op": "comment", "comment": f"xvif-ovs mirror del: {', '.join(m.name for m in mine)}"}])
    return "".join(f"removed {m.name} on {m.bridge}\n" for m in mine)


def describe(m: MirrorView) -> dict:
    both = set(m.from_ports) & set(m.to_ports)
    direction = "both" if both else ("from-guest" if m.from_ports else "to-guest")
    return {
        "name": m.name,
        "bridge": m.bridge,
        "source": sorted(set(m.from_ports) | set(m.to_ports)),
        "direction": direction,
        "output": m.output,
        "ours": m.ours,
        "packets": m.packets,
    }


def run(args: argparse.Namespace) -> tuple[str, int]:
    cfg = load_installed(getattr(args, "config", None))
    host = read_host(args.db, args.xenstore, cfg.declared_uplinks)
    if args.mirror_command == "list":
        rows = [describe(m) for b in sorted(host.bridges.values(), key=lambda b: b.name) for m in b.mirrors]
        if args.json:
            return json.dumps({"mirrors": rows}, indent=2) + "\n", 0
        if not rows:
            return "no mirrors\n", 0
        lines = [["NAME", "BRIDGE", "SOURCE", "DIRECTION", "OUTPUT", "PACKETS", "BY"]]
        lines += [
            [
                r["name"],
                r["bridge"],
                ",".join(r["source"]) or "(gone)",
                r["direction"],
                r["output"] or "(gone)",
                str(r["packets"]),
                "xvif-ovs" if r["ours"] else "someone else",
            ]
            for r in rows
        ]
        return table(lines, "") + "\n", 0
    if args.mirror_command == "add" and not (args.to or args.to_port):
        raise MirrorError("mirror add needs --to DEV (a monitoring guest's vif) or --to-port PORT (a dom0 port)")
    try:
        with Ovsdb(args.db) as db:
            if args.mirror_command == "add":
                return add(host, db, args, cfg.bridges), 0
            return delete(host, db, args), 0
    except OvsdbError as e:
        raise MirrorError(f"OVSDB refused it, nothing was changed: {e}") from None
