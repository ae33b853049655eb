"""Our Flow / GroupEntry values to os-ken OpenFlow 1.3 messages and back.

Rendering both ways lets the controller compare what the switch reports (flow stats,
group descriptions) with what it wants, in the one representation the CLI also prints.
"""

from __future__ import annotations

import base64
from typing import Any

from ..pipeline.flow import (
    MOVABLE,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    OFPP_LOCAL,
    OFPVID_PRESENT,
    SET_FIELDS,
    Action,
    Bucket,
    Ct,
    DecTtl,
    F,
    Flow,
    Goto,
    Group,
    GroupEntry,
    LearnNeighbour,
    LearnSource,
    Meter,
    Move,
    Output,
    PopVlan,
    PushVlan,
    Resubmit,
    SetField,
    SetReg,
    match,
)

# ovs-ofctl name -> OXM name (tp_src/tp_dst depend on nw_proto).
_TO_OXM = {
    "in_port": "in_port",
    "reg4": "reg4",
    "reg5": "reg5",
    "reg6": "reg6",
    "reg7": "reg7",
    "reg8": "reg8",
    "ct_state": "ct_state",
    "dl_src": "eth_src",
    "dl_dst": "eth_dst",
    "dl_type": "eth_type",
    "arp_op": "arp_op",
    "arp_spa": "arp_spa",
    "arp_sha": "arp_sha",
    "arp_tpa": "arp_tpa",
    "arp_tha": "arp_tha",
    "nw_src": "ipv4_src",
    "nw_dst": "ipv4_dst",
    "nw_proto": "ip_proto",
    "ip_frag": "ip_frag",
    "ipv6_src": "ipv6_src",
    "ipv6_dst": "ipv6_dst",
    "icmpv6_type": "icmpv6_type",
    "icmpv6_code": "icmpv6_code",
    "tcp_flags": "tcp_flags_nxm",
    "nw_ttl": "nw_ttl",
    "icmp_type": "icmpv4_type",
    "icmp_code": "icmpv4_code",
    "nd_target": "ipv6_nd_target",
    "nd_sll": "ipv6_nd_sll",
    "nd_tll": "ipv6_nd_tll",
}
_FROM_OXM = {**{v: k for k, v in _TO_OXM.items()}, "tcp_flags": "tcp_flags"}  # (OVS may use the ONF OXM)
# os-ken's names of the Nicira (NXM) fields a reg_move names, by our match names: what we
# send, and what OVS reports back (it may name a field by its NXM or its OXM header).
_NXM = {
    "dl_src": "eth_src_nxm",
    "dl_dst": "eth_dst_nxm",
    "arp_op": "arp_op_nxm",
    "arp_sha": "arp_sha_nxm",
    "arp_tha": "arp_tha_nxm",
    "arp_spa": "arp_spa_nxm",
    "arp_tpa": "arp_tpa_nxm",
    "nw_src": "ipv4_src_nxm",
    "nw_dst": "ipv4_dst_nxm",
    "ipv6_src": "ipv6_src_nxm",
    "ipv6_dst": "ipv6_dst_nxm",
    "icmpv6_type": "icmpv6_type_nxm",
    "nd_target": "nd_target",
    "nd_sll": "nd_sll",
    "nd_tll": "nd_tll",
    "reg8": "reg8",
}
_FROM_MOVE = {**{v: k for k, v in _NXM.items()}, **{_TO_OXM[k]: k for k in MOVABLE if k in _TO_OXM}}
# OVS's Ericsson OXMs (class 0x1000), which os-ken parses by number only.
_ERIC_FIELDS = {"field_524289": "nd_reserved", "field_524290": "nd_options_type"}
_PORTS_IN = {OFPP_LOCAL: "OFPP_LOCAL", OFPP_IN_PORT: "OFPP_IN_PORT", OFPP_CONTROLLER: "OFPP_CONTROLLER"}
_L4 = {6: "tcp", 17: "udp", 132: "sctp"}


class Unknown:
    """An action or field we did not install: makes the flow differ, so it is replaced."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]

    def render(self) -> str:
        return f"unknown({self.what})"


def to_oxm(fields: tuple[F, ...]) -> dict[str, Any]:
    proto = next((int(f.value) for f in fields if f.name == "nw_proto"), None)
    out: dict[str, Any] = {}
    for f in fields:
        if f.name == "vlan_tci":
            # Our tci forms: 0/0x1000 (no tag) and (vid|0x1000)/0x1fff (that VLAN, any PCP).
            out["vlan_vid"] = 0 if int(f.value) == 0 else int(f.value) & 0x1FFF
            continue
        if f.name in ("tp_src", "tp_dst"):
            name = f"{_L4[proto]}_{f.name[3:]}"  # type: ignore[index]
        elif f.name == "in_port" and f.value == OFPP_LOCAL:
            out["in_port"] = OFPP_LOCAL
            continue
        else:
            name = _TO_OXM[f.name]
        out[name] = (f.value, f.mask) if f.mask is not None else f.value
    return out


def from_oxm(items: list[tuple[str, Any]]) -> tuple[F, ...]:
    fields = []
    for name, value in items:
        v, m = value if isinstance(value, tuple) else (value, None)
        if name == "vlan_vid":
            fields.append(F("vlan_tci", 0, OFPVID_PRESENT) if v == 0 else F("vlan_tci", v | OFPVID_PRESENT, 0x1FFF))
            continue
        if name.endswith(("_src", "_dst")) and name.split("_")[0] in _L4.values():
            fields.append(F(f"tp_{name.split('_')[1]}", v, m))
            continue
        if name not in _FROM_OXM:
            fields.append(F(name, v, m))  # not ours: the key will not match any desired flow
            continue
        fields.append(F(_FROM_OXM[name], _norm(v), _norm(m)))
    try:
        return match(*fields)
    except KeyError:
        return tuple(fields)


def _norm(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


def actions_to_os_ken(parser: Any, ofp: Any, actions: tuple[Action, ...]) -> tuple[list, int | None]:
    """(apply-actions, goto table or None)."""
    out: list = []
    goto = None
    for a in actions:
        if isinstance(a, Output):
            port = getattr(ofp, _PORTS_IN[a.port]) if a.port in _PORTS_IN else a.port
            out.append(parser.OFPActionOutput(port, 0xFFFF))
        elif isinstance(a, SetField) and a.field in _ERIC_FIELDS.values():
            from . import wire  # os-ken has no name for OVS's Ericsson OXMs: parse our own bytes

            out.append(parser.OFPActionSetField.parser(wire.action_bytes(a), 0))
        elif isinstance(a, SetField):
            out.append(parser.OFPActionSetField(**{_TO_OXM[a.field]: a.value}))
        elif isinstance(a, Move):
            out.append(
                parser.NXActionRegMove(
                    src_field=_NXM[a.src], dst_field=_NXM[a.dst], n_bits=a.n_bits, src_ofs=0, dst_ofs=0
                )
            )
        elif isinstance(a, DecTtl):
            out.append(parser.OFPActionDecNwTtl())
        elif isinstance(a, Group):
            out.append(parser.OFPActionGroup(a.group_id))
        elif isinstance(a, SetReg):
            out.append(parser.OFPActionSetField(**{a.reg: a.value}))
        elif isinstance(a, PushVlan):
            out.append(parser.OFPActionPushVlan(0x8100))
            out.append(parser.OFPActionSetField(vlan_vid=a.vid | OFPVID_PRESENT))
        elif isinstance(a, PopVlan):
            out.append(parser.OFPActionPopVlan())
        elif isinstance(a, Resubmit):
            out.append(parser.NXActionResubmitTable(table_id=a.table))
        elif isinstance(a, Goto):
            goto = a.table
        elif isinstance(a, Meter):
            pass  # an instruction of its own (flow_mod)
        elif isinstance(a, LearnSource):
            out.append(
                parser.NXActionLearn(
                    table_id=a.table,
                    specs=[
                        parser.NXFlowSpecMatch(src=("reg6", 0), dst=("reg6", 0), n_bits=12),
                        parser.NXFlowSpecMatch(src=("eth_src_nxm", 0), dst=("eth_dst_nxm", 0), n_bits=48),
                        parser.NXFlowSpecLoad(src=("in_port", 0), dst=("reg7", 0), n_bits=32),
                    ],
                    idle_timeout=a.idle_timeout,
                    priority=a.priority,
                    cookie=a.cookie,
                )
            )
        elif isinstance(a, Ct):
            nat = []
            if a.nat is not None:
                kw: dict[str, Any] = {}
                if a.addr:
                    kw.update(range_ipv4_min=a.addr, range_ipv4_max=a.addr)
                if a.ports:
                    kw.update(range_proto_min=a.ports[0], range_proto_max=a.ports[1])
                nat.append(parser.NXActionNAT(flags=_NAT_FLAGS[a.nat], **kw))
            if a.mark is not None:
                nat.append(parser.OFPActionSetField(ct_mark=a.mark))
            out.append(
                parser.NXActionCT(
                    flags=1 if a.commit else 0,
                    zone_src="",
                    zone_ofs_nbits=a.zone,
                    recirc_table=255 if a.table is None else a.table,
                    alg=0,
                    actions=nat,
                )
            )
        elif isinstance(a, LearnNeighbour):
            specs = [
                (parser.NXFlowSpecMatch if kind == "match" else parser.NXFlowSpecLoad)(src=src, dst=dst, n_bits=n)
                for kind, src, dst, n in _NEIGHBOUR_SPECS[a.source]
            ]
            out.append(
                parser.NXActionLearn(
                    table_id=a.table, specs=specs, idle_timeout=a.idle_timeout, priority=a.priority, cookie=a.cookie
                )
            )
        else:  # pragma: no cover
            raise TypeError(f"not a pipeline action: {a!r}")
    return out, goto


def flow_mod(dp: Any, flow: Flow, command: str = "add") -> Any:
    ofp, parser = dp.ofproto, dp.ofproto_parser
    acts, goto = actions_to_os_ken(parser, ofp, flow.actions)
    inst = [parser.OFPInstructionMeter(a.meter_id, ofp.OFPIT_METER) for a in flow.actions if isinstance(a, Meter)]
    if acts:
        inst.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, acts))
    if goto is not None:
        inst.append(parser.OFPInstructionGotoTable(goto))
    cmd = {"add": ofp.OFPFC_ADD, "modify": ofp.OFPFC_MODIFY_STRICT, "delete": ofp.OFPFC_DELETE_STRICT}[command]
    return parser.OFPFlowMod(
        dp,
        cookie=flow.cookie,
        cookie_mask=0,
        table_id=flow.table,
        command=cmd,
        priority=flow.priority,
        match=parser.OFPMatch(**to_oxm(flow.match)),
        instructions=inst,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
    )


def group_mod(dp: Any, group: GroupEntry, command: str = "add") -> Any:
    ofp, parser = dp.ofproto, dp.ofproto_parser
    buckets = [
        parser.OFPBucket(
            actions=actions_to_os_ken(parser, ofp, b.actions)[0],
            watch_port=ofp.OFPP_ANY if b.watch_port is None else b.watch_port,
            watch_group=ofp.OFPG_ANY,
        )
        for b in group.buckets
    ]
    cmd = {"add": ofp.OFPGC_ADD, "modify": ofp.OFPGC_MODIFY, "delete": ofp.OFPGC_DELETE}[command]
    kind = {"all": ofp.OFPGT_ALL, "ff": ofp.OFPGT_FF}[group.type]
    return parser.OFPGroupMod(dp, cmd, kind, group.group_id, [] if command == "delete" else buckets)


# -- back from the switch ------------------------------------------------------------------


def actions_from_os_ken(ofp: Any, actions: list) -> list[Action | Unknown]:
    out: list[Action | Unknown] = []
    i = 0
    while i < len(actions):
        a = actions[i]
        name = type(a).__name__
        if name == "OFPActionOutput":
            special = {ofp.OFPP_LOCAL: OFPP_LOCAL, ofp.OFPP_IN_PORT: OFPP_IN_PORT, ofp.OFPP_CONTROLLER: OFPP_CONTROLLER}
            out.append(Output(special.get(a.port, a.port)))
        elif name == "OFPActionSetField" and a.key in _ERIC_FIELDS:
            out.append(SetField(_ERIC_FIELDS[a.key], int.from_bytes(base64.b64decode(a.value), "big")))
        elif name == "OFPActionSetField" and a.key in _FROM_OXM and _FROM_OXM[a.key] in SET_FIELDS:
            out.append(SetField(_FROM_OXM[a.key], _norm(a.value)))
        elif name == "NXActionRegMove":
            src, dst = _FROM_MOVE.get(a.src_field), _FROM_MOVE.get(a.dst_field)
            whole = src and dst and a.src_ofs == 0 and a.dst_ofs == 0 and a.n_bits == MOVABLE[src]
            out.append(Move(src, dst) if whole and MOVABLE[src] == MOVABLE[dst] else Unknown("reg_move"))
        elif name == "OFPActionDecNwTtl":
            out.append(DecTtl())
        elif name == "OFPActionGroup":
            out.append(Group(a.group_id))
        elif name == "OFPActionSetField" and a.key in ("reg4", "reg5", "reg6", "reg7", "reg8"):
            out.append(SetReg(a.key, a.value))
        elif name == "OFPActionPushVlan":
            nxt = actions[i + 1] if i + 1 < len(actions) else None
            if nxt is not None and type(nxt).__name__ == "OFPActionSetField" and nxt.key == "vlan_vid":
                out.append(PushVlan(nxt.value & 0xFFF))
                i += 1
            else:
                out.append(Unknown("push_vlan"))
        elif name == "OFPActionPopVlan":
            out.append(PopVlan())
        elif name == "NXActionResubmitTable":
            out.append(Resubmit(a.table_id))
        elif name == "NXActionCT":
            out.append(_ct_back(a))
        elif name == "NXActionLearn":
            kind = _our_learn(a)
            out.append(kind(a.table_id, a.idle_timeout, a.priority, a.cookie) if kind else Unknown("learn"))
        else:
            out.append(Unknown(name))
        i += 1
    return out


# Each learn action's specs as os-ken builds and parses them: (match or load, src, dst, bits).
_NEIGHBOUR_SPECS = {
    "arp": [
        ("match", 0x0800, ("eth_type_nxm", 0), 16),  # an IPv6 lookup (reg8 0) never finds it
        ("match", ("arp_spa_nxm", 0), ("reg8", 0), 32),
        ("load", ("arp_sha_nxm", 0), ("eth_dst_nxm", 0), 48),
        ("load", ("in_port", 0), ("reg7", 0), 32),
    ],
    "ns": [
        ("match", 0x86DD, ("eth_type_nxm", 0), 16),
        ("match", ("ipv6_src_nxm", 0), ("ipv6_dst_nxm", 0), 128),
        ("load", ("nd_sll", 0), ("eth_dst_nxm", 0), 48),
        ("load", ("in_port", 0), ("reg7", 0), 32),
    ],
    "na": [
        ("match", 0x86DD, ("eth_type_nxm", 0), 16),
        ("match", ("nd_target", 0), ("ipv6_dst_nxm", 0), 128),
        ("load", ("nd_tll", 0), ("eth_dst_nxm", 0), 48),
        ("load", ("in_port", 0), ("reg7", 0), 32),
    ],
}
_KIND = {"NXFlowSpecMatch": "match", "NXFlowSpecLoad": "load"}
_LEARNS: dict[tuple, Any] = {
    (
        ("match", ("reg6", 0), ("reg6", 0), 12),
        ("match", ("eth_src_nxm", 0), ("eth_dst_nxm", 0), 48),
        ("load", ("in_port", 0), ("reg7", 0), 32),
    ): LearnSource,
    **{
        tuple(specs): (lambda t, i, p, c, _s=source: LearnNeighbour(t, i, p, c, _s))
        for source, specs in _NEIGHBOUR_SPECS.items()
    },
}


def _our_learn(a: Any) -> Any:
    """A constructor for which of our learn actions this is (by its specs), or None for
    someone else's."""
    return _LEARNS.get(tuple((_KIND.get(type(s).__name__), s.src, s.dst, s.n_bits) for s in a.specs))


_NAT_FLAGS = {"": 0, "src": 1, "dst": 2}


def _ct_back(a: Any) -> Ct | Unknown:
    """Our Ct from OVS's reading of it, or Unknown for a form we never install."""
    acts = list(a.actions)
    mark = None
    if acts and type(acts[-1]).__name__ == "OFPActionSetField" and acts[-1].key == "ct_mark":
        mark = acts.pop().value
    if a.zone_src or a.alg or len(acts) > 1:
        return Unknown("ct")
    nat, addr, ports = None, "", None
    if acts:
        n = acts[0]
        kinds = {v: k for k, v in _NAT_FLAGS.items()}
        if type(n).__name__ != "NXActionNAT" or n.flags not in kinds or n.range_ipv4_min != n.range_ipv4_max:
            return Unknown("ct")
        nat, addr = kinds[n.flags], n.range_ipv4_min or ""
        if n.range_proto_min is not None:
            ports = (n.range_proto_min, n.range_proto_max if n.range_proto_max is not None else n.range_proto_min)
    table = None if a.recirc_table == 255 else a.recirc_table
    return Ct(a.zone_ofs_nbits, bool(a.flags & 1), table, nat, addr, ports, mark)


def flow_from_stats(ofp: Any, stats: Any) -> Flow:
    actions: list = []
    goto = None
    for inst in stats.instructions:
        kind = type(inst).__name__
        if kind == "OFPInstructionActions" and inst.type == ofp.OFPIT_APPLY_ACTIONS:
            actions += actions_from_os_ken(ofp, inst.actions)
        elif kind == "OFPInstructionGotoTable":
            goto = inst.table_id
        elif kind == "OFPInstructionMeter":
            actions.insert(0, Meter(inst.meter_id))
        else:
            actions.append(Unknown(kind))
    if goto is not None:
        actions.append(Goto(goto))
    return Flow(stats.table_id, stats.priority, from_oxm(list(stats.match.items())), tuple(actions), stats.cookie)


def group_from_desc(ofp: Any, desc: Any) -> GroupEntry:
    kind = {ofp.OFPGT_ALL: "all", ofp.OFPGT_FF: "ff"}.get(desc.type)
    buckets = tuple(
        Bucket(
            tuple(actions_from_os_ken(ofp, b.actions)),
            b.watch_port if kind == "ff" and b.watch_port != ofp.OFPP_ANY else None,
        )
        for b in desc.buckets
    )
    if kind is None:
        return GroupEntry(desc.group_id, (*buckets, Bucket((Unknown(f"group type {desc.type}"),))))
    return GroupEntry(desc.group_id, buckets, kind)
