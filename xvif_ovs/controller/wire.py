"""Our flows and groups straight to OpenFlow 1.3 bytes, for the bulk path.

Building os-ken message objects and serialising them costs about 90 us a flow, most of
a full install (1000 vifs are 21000 flows: about 2 s of the controller's 2.8 s, against
0.45 s for ovs-ofctl to push the same file). The pipeline uses a handful of matches and
actions, so they are packed here with struct; the one Nicira learn action is taken from
os-ken's own encoder, once. tests/unit/test_wire.py proves every flow of the reference
scenarios decodes (with os-ken's parser) back to the very flow it came from.
"""

from __future__ import annotations

import functools
import ipaddress
import struct

from ..pipeline.flow import (
    COOKIE_MAGIC,
    COOKIE_MASK,
    OFPP_LOCAL,
    OFPVID_PRESENT,
    OWNER_MASK,
    Action,
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
)

OFP_VERSION = 4
OFPT_EXPERIMENTER, OFPT_FLOW_MOD, OFPT_GROUP_MOD = 4, 14, 15
OFPFC = {"add": 0, "modify": 2, "delete": 4}  # ADD, MODIFY_STRICT, DELETE_STRICT
OFPFC_DELETE, OFPTT_ALL = 3, 0xFF
OFPGC = {"add": 0, "modify": 1, "delete": 2}
OFPGT = {"all": 0, "select": 1, "indirect": 2, "ff": 3}
OFPP_ANY, OFPG_ANY, OFP_NO_BUFFER = 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF
ONF_EXPERIMENTER_ID, ONFT_BUNDLE_ADD_MESSAGE = 0x4F4E4600, 2301
NX_VENDOR, NXAST_RESUBMIT_TABLE = 0x00002320, 14

# (OXM class, field, length) by our ovs-ofctl field names; tp_* are resolved by nw_proto.
_OXM = {
    "in_port": (0x8000, 0, 4),
    "dl_dst": (0x8000, 3, 6),
    "dl_src": (0x8000, 4, 6),
    "dl_type": (0x8000, 5, 2),
    "vlan_tci": (0x8000, 6, 2),  # as vlan_vid
    "nw_proto": (0x8000, 10, 1),
    "ip_frag": (0x0001, 26, 1),  # NXM_NX_IP_FRAG
    "nw_src": (0x8000, 11, 4),
    "nw_dst": (0x8000, 12, 4),
    "arp_op": (0x8000, 21, 2),
    "arp_spa": (0x8000, 22, 4),
    "arp_sha": (0x8000, 24, 6),
    "arp_tpa": (0x8000, 23, 4),
    "arp_tha": (0x8000, 25, 6),
    "ipv6_src": (0x8000, 26, 16),
    "ipv6_dst": (0x8000, 27, 16),
    "icmpv6_type": (0x8000, 29, 1),
    "icmpv6_code": (0x8000, 30, 1),
    "tcp_flags": (0x0001, 34, 2),  # NXM_NX_TCP_FLAGS
    "nw_ttl": (0x0001, 29, 1),  # NXM_NX_IP_TTL: the IPv4 TTL or IPv6 hop limit
    "icmp_type": (0x8000, 19, 1),
    "icmp_code": (0x8000, 20, 1),
    "nd_target": (0x8000, 31, 16),
    "nd_sll": (0x8000, 32, 6),
    "nd_tll": (0x8000, 33, 6),
    "reg4": (0x0001, 4, 4),
    "reg5": (0x0001, 5, 4),
    "reg6": (0x0001, 6, 4),
    "reg7": (0x0001, 7, 4),
    "reg8": (0x0001, 8, 4),
    "ct_state": (0x0001, 105, 4),
    "nd_reserved": (0x1000, 1, 4),  # OVS's Ericsson OXMs (class 0x1000)
    "nd_options_type": (0x1000, 2, 1),
}
_TP = {(6, "tp_src"): 13, (6, "tp_dst"): 14, (17, "tp_src"): 15, (17, "tp_dst"): 16}


def _value(name: str, v: int | str, length: int) -> bytes:
    if isinstance(v, int):
        return v.to_bytes(length, "big")
    if length == 6:
        return bytes.fromhex(v.replace(":", ""))
    return ipaddress.ip_address(v).packed


def _oxm(cls: int, field: int, length: int, value: bytes, mask: bytes | None) -> bytes:
    if mask is None:
        return struct.pack("!HBB", cls, field << 1, length) + value
    return struct.pack("!HBB", cls, field << 1 | 1, 2 * length) + value + mask


def _field(f: F, proto: int | None) -> bytes:
    if f.name in ("tp_src", "tp_dst"):
        cls, field, length = 0x8000, _TP[(proto or 0, f.name)], 2
    else:
        cls, field, length = _OXM[f.name]
    if f.name == "vlan_tci":  # our tci forms, as OXM vlan_vid: no tag, or VID with the present bit
        return _oxm(cls, field, 2, (0 if int(f.value) == 0 else int(f.value) & 0x1FFF).to_bytes(2, "big"), None)
    if f.name in ("nw_src", "nw_dst", "arp_spa", "ipv6_src", "ipv6_dst", "nd_target") and f.mask is None:
        net = ipaddress.ip_network(str(f.value), strict=False)
        if net.prefixlen != net.max_prefixlen:
            return _oxm(cls, field, length, net.network_address.packed, net.netmask.packed)
    mask = _value(f.name, f.mask, length) if f.mask is not None else None
    return _oxm(cls, field, length, _value(f.name, f.value, length), mask)


def _pad8(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 8)


def match_bytes(fields: tuple[F, ...]) -> bytes:
    proto = next((int(f.value) for f in fields if f.name == "nw_proto"), None)
    body = b"".join(_field(f, proto) for f in fields)
    return _pad8(struct.pack("!HH", 1, 4 + len(body)) + body)


@functools.lru_cache(maxsize=64)
def _os_ken_bytes(a: LearnSource | LearnNeighbour | Move | Ct) -> bytes:
    """The Nicira actions with a layout of their own (learn, reg_move), from os-ken's own
    encoder: few distinct ones per pipeline, each encoded once."""
    from ..compat import quiet_eventlet

    quiet_eventlet()
    from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

    from .ofmsg import actions_to_os_ken

    (act,), _ = actions_to_os_ken(ofproto_v1_3_parser, ofproto_v1_3, (a,))
    buf = bytearray()
    act.serialize(buf, 0)
    return _pad8(bytes(buf))


def action_bytes(a: Action) -> bytes:
    if isinstance(a, Output):
        return struct.pack("!HHIH6x", 0, 16, OFPP_LOCAL if a.port == OFPP_LOCAL else a.port, 0xFFFF)
    if isinstance(a, Group):
        return struct.pack("!HHI", 22, 8, a.group_id)
    if isinstance(a, SetReg):
        oxm = _oxm(*_OXM[a.reg], a.value.to_bytes(4, "big"), None)
        return _pad8(struct.pack("!HH", 25, len(_pad8(b"\0" * 4 + oxm))) + oxm)
    if isinstance(a, PushVlan):
        vid = _oxm(0x8000, 6, 2, (a.vid | OFPVID_PRESENT).to_bytes(2, "big"), None)
        return struct.pack("!HHH2x", 17, 8, 0x8100) + _pad8(struct.pack("!HH", 25, len(_pad8(b"\0" * 4 + vid))) + vid)
    if isinstance(a, PopVlan):
        return struct.pack("!HH4x", 18, 8)
    if isinstance(a, Resubmit):
        return struct.pack("!HHIHHB3x", 0xFFFF, 16, NX_VENDOR, NXAST_RESUBMIT_TABLE, 0xFFF8, a.table)
    if isinstance(a, SetField):
        cls, field, length = _OXM[a.field]
        oxm = _oxm(cls, field, length, _value(a.field, a.value, length), None)
        return _pad8(struct.pack("!HH", 25, len(_pad8(b"\0" * 4 + oxm))) + oxm)
    if isinstance(a, DecTtl):
        return struct.pack("!HH4x", 24, 8)
    if isinstance(a, LearnSource | LearnNeighbour | Move | Ct):
        return _os_ken_bytes(a)
    raise TypeError(f"not a pipeline action: {a!r}")


def _instructions(actions: tuple[Action, ...]) -> bytes:
    out = b"".join(struct.pack("!HHI", 6, 8, a.meter_id) for a in actions if isinstance(a, Meter))  # OFPIT_METER
    apply = b"".join(action_bytes(a) for a in actions if not isinstance(a, Goto | Meter))
    out += struct.pack("!HH4x", 4, 8 + len(apply)) + apply if apply else b""
    goto = next((a for a in actions if isinstance(a, Goto)), None)
    if goto is not None:
        out += struct.pack("!HHB3x", 1, 8, goto.table)
    return out


def flow_mod(flow: Flow, command: str, xid: int) -> bytes:
    body = struct.pack(
        "!QQBBHHHIIIH2x",
        flow.cookie,
        0,
        flow.table,
        OFPFC[command],
        0,
        0,
        flow.priority,
        OFP_NO_BUFFER,
        OFPP_ANY,
        OFPG_ANY,
        0,
    )
    body += match_bytes(flow.match)
    if command != "delete":
        body += _instructions(flow.actions)
    return struct.pack("!BBHI", OFP_VERSION, OFPT_FLOW_MOD, 8 + len(body), xid) + body


def owner_delete(owner: int, xid: int) -> bytes:
    """Every flow of one cookie owner, in all tables, as one non-strict delete: a vif that
    goes costs one message instead of one per flow (73), which matters where OVS reads
    at most 50 messages per connection in each main-loop pass."""
    body = struct.pack(
        "!QQBBHHHIIIH2x",
        COOKIE_MAGIC | owner,
        COOKIE_MASK | OWNER_MASK,
        OFPTT_ALL,
        OFPFC_DELETE,
        0,
        0,
        0,
        OFP_NO_BUFFER,
        OFPP_ANY,
        OFPG_ANY,
        0,
    )
    body += match_bytes(())
    return struct.pack("!BBHI", OFP_VERSION, OFPT_FLOW_MOD, 8 + len(body), xid) + body


def group_mod(group: GroupEntry, command: str, xid: int) -> bytes:
    body = struct.pack("!HBxI", OFPGC[command], OFPGT[group.type], group.group_id)
    if command != "delete":
        for b in group.buckets:
            acts = b"".join(action_bytes(a) for a in b.actions)
            watch = OFPP_ANY if b.watch_port is None else b.watch_port
            body += struct.pack("!HHII4x", 16 + len(acts), 0, watch, OFPG_ANY) + acts
    return struct.pack("!BBHI", OFP_VERSION, OFPT_GROUP_MOD, 8 + len(body), xid) + body


def bundle_add(inner: bytes, bundle_id: int, flags: int, xid: int) -> bytes:
    """ONF bundle extension (OF1.3): the inner message carries the outer xid."""
    inner = inner[:4] + struct.pack("!I", xid) + inner[8:]
    body = struct.pack("!IIIxxH", ONF_EXPERIMENTER_ID, ONFT_BUNDLE_ADD_MESSAGE, bundle_id, flags) + inner
    return struct.pack("!BBHI", OFP_VERSION, OFPT_EXPERIMENTER, 8 + len(body), xid) + body
