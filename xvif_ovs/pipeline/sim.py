"""An in-process OpenFlow 1.3 table simulator for the subset of matches and actions the
pipeline uses, after Faucet's fakeoftable: apply a FlowSet, push packets through it,
see where copies come out and with which VLAN tag.

It lets the pure pipeline be tested exhaustively (every spoof against every vif, every
VLAN pair) in milliseconds; the lab tests then show that real OVS agrees.
"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from ..model.vifspec import mac_to_int
from .flow import (
    CT_STATE,
    OFPP_IN_PORT,
    OFPVID_PRESENT,
    Ct,
    DecTtl,
    F,
    Flow,
    FlowSet,
    Goto,
    Group,
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

IP_FIELDS = {"nw_src", "nw_dst", "arp_spa", "arp_tpa", "ipv6_src", "ipv6_dst", "nd_target"}
MAC_FIELDS = {"dl_src", "dl_dst", "arp_sha", "arp_tha", "nd_sll", "nd_tll"}


@dataclass
class Packet:
    """Header fields by ovs-ofctl name; ``vlan`` is the 802.1Q VID or None if untagged."""

    fields: dict[str, Any]
    vlan: int | None = None
    regs: dict[str, int] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        if name == "ct_state":
            return self.fields.get("ct_state", 0)  # untracked: no bit set
        if name == "vlan_tci":
            return 0 if self.vlan is None else self.vlan | OFPVID_PRESENT
        if name.startswith("reg"):
            return self.regs.get(name, 0)
        return self.fields.get(name)


def field_matches(f: F, pkt: Packet) -> bool:
    have = pkt.get(f.name)
    if have is None:
        return False
    if f.name in MAC_FIELDS:
        mask = mac_to_int(f.mask) if isinstance(f.mask, str) else 0xFFFFFFFFFFFF
        return (mac_to_int(have) & mask) == (mac_to_int(str(f.value)) & mask)
    if f.name in IP_FIELDS:
        mask = f.mask
        if isinstance(mask, str) and ":" in mask:  # an IPv6 netmask: ipaddress wants a prefix length
            mask = str(int(ipaddress.IPv6Address(mask)).bit_count())
        net = ipaddress.ip_network(f"{f.value}/{mask}" if mask else str(f.value), strict=False)
        addr = ipaddress.ip_address(have)
        return addr.version == net.version and addr in net
    mask = f.mask if isinstance(f.mask, int) else -1
    return (int(have) & mask) == (int(f.value) & mask)


@dataclass(frozen=True)
class Delivery:
    port: int
    vlan: int | None
    # The headers as they leave (after any rewrite); not part of equality, so tests that
    # compare deliveries by port and tag stay as they are.
    fields: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Trace:
    deliveries: list[Delivery] = field(default_factory=list)
    hits: list[Flow] = field(default_factory=list)

    @property
    def ports(self) -> set[int]:
        return {d.port for d in self.deliveries}


@dataclass
class Connection:
    """One conntrack entry: the 5-tuple as first seen, and the one its replies carry (after
    any translation)."""

    orig: tuple
    reply: tuple


def five_tuple(pkt: Packet) -> tuple:
    f = pkt.fields
    src, dst = f.get("nw_src") or f.get("ipv6_src"), f.get("nw_dst") or f.get("ipv6_dst")
    return (src, dst, f.get("nw_proto"), f.get("tp_src", 0), f.get("tp_dst", 0))


class Switch:
    def __init__(self, fs: FlowSet) -> None:
        self.conntrack: dict[int, list[Connection]] = {}  # zone -> connections
        self.tables: dict[int, list[Flow]] = {}
        self.groups = {g.group_id: g for g in fs.groups}
        self.counters: dict[tuple, int] = {}
        self.down: set[int] = set()  # ports whose link is down (fast-failover buckets skip them)
        for f in fs.flows:
            self.tables.setdefault(f.table, []).append(f)
        for flows in self.tables.values():
            flows.sort(key=lambda f: -f.priority)

    def lookup(self, table: int, pkt: Packet) -> Flow | None:
        for f in self.tables.get(table, []):
            if all(field_matches(x, pkt) for x in f.match):
                return f
        return None

    def send(self, in_port: int, fields: dict[str, Any], vlan: int | None = None) -> Trace:
        pkt = Packet({**fields, "in_port": in_port}, vlan)
        trace = Trace()
        self._run_table(0, pkt, trace, depth=0)
        return trace

    def _run_table(self, table: int, pkt: Packet, trace: Trace, depth: int) -> None:
        if depth > 16:
            raise RuntimeError("resubmit/goto loop")
        flow = self.lookup(table, pkt)
        if flow is None:
            return  # a miss drops (OF1.3) or, inside a resubmit, does nothing
        trace.hits.append(flow)
        self.counters[flow.key] = self.counters.get(flow.key, 0) + 1
        self._apply(flow.actions, pkt, trace, depth)

    def _apply(self, actions: tuple, pkt: Packet, trace: Trace, depth: int) -> None:
        for a in actions:
            if isinstance(a, SetReg):
                pkt.regs[a.reg] = a.value
            elif isinstance(a, PopVlan):
                if pkt.vlan is None:
                    raise RuntimeError("pop_vlan on an untagged packet")
                pkt.vlan = None
            elif isinstance(a, PushVlan):
                pkt.vlan = a.vid
            elif isinstance(a, Output):
                if a.port == OFPP_IN_PORT:  # the one way back out of the ingress port
                    trace.deliveries.append(Delivery(pkt.fields["in_port"], pkt.vlan, dict(pkt.fields)))
                elif a.port != pkt.fields["in_port"]:  # OpenFlow never outputs to the ingress port
                    trace.deliveries.append(Delivery(a.port, pkt.vlan, dict(pkt.fields)))
            elif isinstance(a, SetField):
                pkt.fields[a.field] = a.value
            elif isinstance(a, Move):
                value = pkt.get(a.src)
                if value is None:
                    raise RuntimeError(f"move from {a.src}, which this packet does not have")
                if a.dst.startswith("reg"):
                    pkt.regs[a.dst] = int(ipaddress.ip_address(value)) if isinstance(value, str) else value
                elif a.src.startswith("reg") and a.dst in IP_FIELDS:
                    pkt.fields[a.dst] = str(ipaddress.ip_address(value))
                else:
                    pkt.fields[a.dst] = value
            elif isinstance(a, DecTtl):
                ttl = pkt.fields.get("nw_ttl", 64)  # the TTL or hop limit; 64 unless the test says
                if ttl <= 1:
                    return  # dropped where the TTL would reach zero
                pkt.fields["nw_ttl"] = ttl - 1
            elif isinstance(a, Group):
                group = self.groups[a.group_id]
                buckets = group.buckets
                if group.type == "ff":  # the first bucket whose port is live, or none
                    buckets = next(((b,) for b in buckets if b.watch_port not in self.down), ())
                for bucket in buckets:
                    self._apply(bucket.actions, copy.deepcopy(pkt), trace, depth + 1)
            elif isinstance(a, Resubmit):
                self._run_table(a.table, pkt, trace, depth + 1)
            elif isinstance(a, Goto):
                self._run_table(a.table, pkt, trace, depth + 1)
                return
            elif isinstance(a, LearnSource):
                self._learn(a, pkt)
            elif isinstance(a, LearnNeighbour):
                self._learn_neighbour(a, pkt)
            elif isinstance(a, Ct):
                self._ct(a, pkt, trace, depth)
            elif isinstance(a, Meter):
                pass  # a rate: the simulator sends one packet at a time
            else:  # the pipeline uses no other action
                raise TypeError(f"not a pipeline action: {a!r}")

    def _ct(self, a: Ct, pkt: Packet, trace: Trace, depth: int) -> None:
        """Conntrack as OVS's, for TCP and UDP: look the packet up in the zone (either
        direction), record it on commit, translate it where its connection says so."""
        t = five_tuple(pkt)
        conns = self.conntrack.setdefault(a.zone, [])
        found = next(((c, False) for c in conns if c.orig == t), None) or next(
            ((c, True) for c in conns if c.reply == t), None
        )
        conn, is_reply = found if found else (None, False)
        state = CT_STATE["trk"] | (CT_STATE["est"] if conn else CT_STATE["new"]) | (CT_STATE["rpl"] if is_reply else 0)
        if conn is None and a.commit:
            src, dst, proto, sport, dport = t
            if a.nat == "src":
                lo, hi = a.ports or (sport, sport)
                src, sport = a.addr, sport if lo <= sport <= hi else lo
            elif a.nat == "dst":
                dst, dport = a.addr, (a.ports or (dport, dport))[0]
            conn = Connection(t, (dst, src, proto, dport, sport))
            conns.append(conn)
        if conn is not None and a.nat is not None:
            back = conn.orig if is_reply else conn.reply  # the other direction, reversed
            pkt.fields.update(nw_src=back[1], nw_dst=back[0], tp_src=back[4], tp_dst=back[3])
        if a.table is not None:
            clone = copy.deepcopy(pkt)
            clone.fields["ct_state"] = state
            self._run_table(a.table, clone, trace, depth + 1)

    def _learn(self, a: LearnSource, pkt: Packet) -> None:
        m = match(F("reg6", pkt.regs.get("reg6", 0) & 0xFFF), F("dl_dst", pkt.fields["dl_src"]))
        self._install(Flow(a.table, a.priority, m, (SetReg("reg7", pkt.fields["in_port"]),), a.cookie))

    def _learn_neighbour(self, a: LearnNeighbour, pkt: Packet) -> None:
        f = pkt.fields
        if a.source == "arp":
            m, mac = match(F("dl_type", 0x0800), F("reg8", int(ipaddress.ip_address(f["arp_spa"])))), f["arp_sha"]
        else:  # IPv6: the solicitation's source, or the advertisement's target
            addr, mac = (f["ipv6_src"], f["nd_sll"]) if a.source == "ns" else (f["nd_target"], f["nd_tll"])
            m = match(F("dl_type", 0x86DD), F("ipv6_dst", addr))
        acts = (SetField("dl_dst", mac), SetReg("reg7", f["in_port"]))
        self._install(Flow(a.table, a.priority, m, acts, a.cookie))

    def _install(self, learned: Flow) -> None:
        a = learned
        flows = [f for f in self.tables.get(a.table, []) if f.key != learned.key]
        flows.append(learned)
        flows.sort(key=lambda f: -f.priority)
        self.tables[a.table] = flows
