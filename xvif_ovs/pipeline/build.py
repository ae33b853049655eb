"""The pipeline as a function: one bridge's model in, its desired flows and groups out.

Pure and deterministic, so it is tested exhaustively with the simulator (sim.py) and
its output for reference scenarios is kept as golden files in flows/. See tables.py
for what each table does; flows/PIPELINE.md for the reasoning.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..model.host import BridgeModel, NatSpec, Uplink, VifModel
from ..model.vifspec import int_to_mac, mac_to_int
from .firewall import P_FW, P_FW_DEFAULT, P_RULE, firewall_flows
from .flow import (
    GROUP_BASE,
    OFPP_IN_PORT,
    OFPP_LOCAL,
    OFPVID_PRESENT,
    Bucket,
    Ct,
    DecTtl,
    F,
    Flow,
    FlowSet,
    Goto,
    Group,
    GroupEntry,
    LearnNeighbour,
    LearnSource,
    Move,
    Output,
    PopVlan,
    PushVlan,
    Resubmit,
    SetField,
    SetReg,
    cookie,
    ct_state,
    match,
    vif_owner,
)
from .tables import (
    CLASSIFY,
    EGRESS,
    FORWARD,
    FW_IN,
    FW_OUT,
    LEARN,
    LEARNED,
    NAT_IN,
    ND_REPLY,
    NEIGHBOURS,
    PORT_SECURITY,
    ROUTED,
    check_flow,
)

# Ingress classes in reg5. Bit 0: promiscuous (dom0 or an uplink: may reach private vifs);
# bit 2: private; bit 3: an uplink (never flooded back to another uplink).
FROM_LOCAL, FROM_UPLINK, FROM_VIF, FROM_PRIVATE = 1, 9, 2, 4
CLASSES = (FROM_LOCAL, FROM_UPLINK, FROM_VIF, FROM_PRIVATE)
PROMISCUOUS = F("reg5", 1, 1)

# Cookie purposes: the CLI groups flows by these.
(
    P_DEFAULT,
    P_CLASSIFY,
    P_ALLOW,
    P_DROP,
    P_LEARN,
    P_FORWARD,
    P_FLOOD,
    P_EGRESS,
    P_LEARNED,
    P_REFUSED,
    P_GUARD,
    P_UNMANAGED,
    P_PRIORITY_TAG,
    P_ARP_REPLY,
    P_ROUTE,
    P_NEIGHBOUR,
    P_NAT,
) = range(1, 18)
PURPOSES = {
    P_DEFAULT: "default",
    P_CLASSIFY: "classify",
    P_ALLOW: "port-security allow",
    P_DROP: "port-security drop",
    P_LEARN: "learn",
    P_FORWARD: "forward",
    P_FLOOD: "flood",
    P_EGRESS: "egress",
    P_LEARNED: "learned",
    P_REFUSED: "refused (reserved bridge)",
    P_GUARD: "source-MAC guard",
    P_UNMANAGED: "unmanaged port (no forwarding)",
    P_PRIORITY_TAG: "priority tag (VLAN 0) removed",
    P_ARP_REPLY: "ARP answered (routed)",
    P_ROUTE: "routed",
    P_NEIGHBOUR: "neighbour (routed)",
    P_NAT: "NAT (conntrack)",
    P_RULE: "firewall rule",
    P_FW: "firewall (conntrack)",
    P_FW_DEFAULT: "firewall default policy (closed)",
}

# Why a port-security flow dropped a frame, in bits 32-39 of its cookie: the flows' own
# counters then tell drops by kind (`xvif-ovs flows --drops`, the controller's metrics)
# without another flow or request.
DROP_SHIFT = 32
(
    K_SOURCE_MAC,
    K_IPV4,
    K_IPV6,
    K_ARP,
    K_ND,
    K_DHCP_SERVER,
    K_RA,
    K_VLAN,
    K_OTHER,
    K_ROUTED,
    K_ISOLATION,
) = range(1, 12)
DROP_KINDS = {
    K_SOURCE_MAC: "source-mac",
    K_IPV4: "ipv4",
    K_IPV6: "ipv6",
    K_ARP: "arp",
    K_ND: "nd",
    K_DHCP_SERVER: "dhcp-server",
    K_RA: "ra",
    K_VLAN: "vlan",
    K_OTHER: "other",  # an ethertype it may not send
    K_ROUTED: "routed",  # what a routed or NAT guest sent that is not routed
    K_ISOLATION: "isolation",  # to a routed guest from one that may not reach it
}


def drop_cookie(owner: int, kind: int) -> int:
    return cookie(P_DROP, owner) | kind << DROP_SHIFT


def drop_kind(value: int) -> str:
    """The kind of a P_DROP flow's cookie ("?" for a drop flow from before kinds)."""
    return DROP_KINDS.get((value >> DROP_SHIFT) & 0xFF, "?")


ETH_ARP, ETH_IP, ETH_IPV6 = 0x0806, 0x0800, 0x86DD
UDP, ICMPV6 = 17, 58
ND_RS, ND_RA, ND_NS, ND_NA, MLD2_REPORT = 133, 134, 135, 136, 143
NO_MAC = "00:00:00:00:00:00"
MULTICAST = F("dl_dst", "01:00:00:00:00:00", "01:00:00:00:00:00")
LEARN_IDLE_TIMEOUT = 300


def group_id(vlan: int, klass: int) -> int:
    """A flood group: ours by its id range (flow.GROUP_BASE), one per VLAN and ingress class."""
    return GROUP_BASE + vlan * 4 + {FROM_LOCAL: 0, FROM_UPLINK: 1, FROM_VIF: 2, FROM_PRIVATE: 3}[klass]


BOND_GROUPS = 0x10000  # a bond's fast-failover group: GROUP_BASE + BOND_GROUPS + its first member's ofport


def bond_group_id(uplink: Uplink) -> int:
    return GROUP_BASE + BOND_GROUPS + uplink.members[0]


def _bond_group(uplink: Uplink) -> GroupEntry:
    """Each frame leaves once, through the first live member (OVS judges liveness from the
    link and, with LACP, from the negotiation)."""
    return GroupEntry(
        bond_group_id(uplink), tuple(Bucket((Output(m),), watch_port=m) for m in uplink.members), type="ff"
    )


def _uplink_out(uplink: Uplink) -> tuple:
    return (Group(bond_group_id(uplink)),) if uplink.is_bond else (Output(uplink.members[0]),)


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 link-local address a guest derives from its MAC (Linux's default)."""
    b = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([b[0] ^ 0x02]) + b[1:3] + b"\xff\xfe" + b[3:]
    return ipaddress.IPv6Address(b"\xfe\x80" + b"\0" * 6 + eui)


def untagged() -> F:
    return F("vlan_tci", 0, OFPVID_PRESENT)


def tagged(vlan: int) -> F:
    return F("vlan_tci", vlan | OFPVID_PRESENT, 0x1FFF)


@dataclass
class Parts:
    """The pipeline split by owner (0: the bridge; else a vif's cookie owner), so a change
    to one vif is one entry: the controller diffs only the entries that changed."""

    flows: dict[int, tuple[Flow, ...]] = field(default_factory=dict)
    groups: list[GroupEntry] = field(default_factory=list)

    def flowset(self) -> FlowSet:
        return FlowSet([f for owner in sorted(self.flows) for f in self.flows[owner]], list(self.groups))


def build(bridge: BridgeModel, learn_idle_timeout: int = LEARN_IDLE_TIMEOUT) -> FlowSet:
    fs = build_parts(bridge, learn_idle_timeout).flowset()
    fs.by_key()  # no two flows may collide
    return fs


def build_parts(bridge: BridgeModel, learn_idle_timeout: int = LEARN_IDLE_TIMEOUT) -> Parts:
    """A build from nothing: pure, and remembering nothing (the controller keeps a
    Builder, which reuses what is unchanged)."""
    return Builder().build_parts(bridge, learn_idle_timeout)


def stream_parts(
    bridge: BridgeModel, learn_idle_timeout: int, emit: Callable[[Sequence[Flow] | Sequence[GroupEntry]], None]
) -> Parts:
    return Builder().stream_parts(bridge, learn_idle_timeout, emit)


_PATCH_AT_MOST = 16  # changed vifs; beyond this a full build is as cheap


@dataclass
class _VifEntry:
    """One vif's last model and what it made. Compared by identity first (the controller
    hands in the same object for an unchanged vif), then by value."""

    vif: VifModel
    private: bool
    refused: bool
    flows: tuple[Flow, ...]
    membership: tuple
    router: str | None = None  # on a routed bridge, its router MAC ("" unknown); None: bridged
    nat: NatSpec | None = None  # on a NAT bridge, its translation


@dataclass
class _BridgeState:
    model: BridgeModel
    parts: Parts
    learn_idle_timeout: int
    vifs: dict[tuple[int, int], _VifEntry] = field(default_factory=dict)
    groups: dict[tuple[int, int], tuple[tuple, GroupEntry]] = field(default_factory=dict)  # (vlan, class)


class Builder:
    """The incremental build's whole state, in one object whose size follows what exists:
    per bridge its last model and result, per vif (by domid.devid) its last model and
    flows, per flood group (VLAN, ingress class) its last members. Nothing is keyed on
    object identity and nothing grows with the number of changes: a vif changed 100,000
    times holds one entry. The result is always the full build's (tested)."""

    def __init__(self) -> None:
        self._bridges: dict[str, _BridgeState] = {}

    def forget(self, keep: set[str]) -> None:
        """Drop the state of bridges not in ``keep`` (gone, or no longer ours)."""
        for name in set(self._bridges) - keep:
            del self._bridges[name]

    def build_parts(self, bridge: BridgeModel, learn_idle_timeout: int = LEARN_IDLE_TIMEOUT) -> Parts:
        """The bridge's flows and groups. When the model differs from this bridge's last one
        only in a few vifs whose flood membership is unchanged (an ip or mac rewritten), those
        vifs' entries are replaced in a copy of the last result instead of walking every vif:
        the same result (tested against the full build), for a fraction of the time."""
        st = self._bridges.get(bridge.name)
        parts = None
        if st is not None and st.learn_idle_timeout == learn_idle_timeout:
            parts = self._patched(st, bridge)
        if parts is None:
            return self._full(bridge, learn_idle_timeout)
        st.model, st.parts = bridge, parts
        return parts

    def stream_parts(
        self,
        bridge: BridgeModel,
        learn_idle_timeout: int,
        emit: Callable[[Sequence[Flow] | Sequence[GroupEntry]], None],
    ) -> Parts:
        """The full build, handing each piece to ``emit`` as soon as it is made, the groups
        first (flows refer to them): a switch can take the first flows while the rest are
        being computed. Returns what build_parts() would, and is remembered as it is."""
        return self._full(bridge, learn_idle_timeout, emit)

    # -- per vif ----------------------------------------------------------------------------

    def _entry(
        self,
        st: _BridgeState,
        vif: VifModel,
        private: bool,
        refused: bool = False,
        router: str | None = None,
        nat: NatSpec | None = None,
    ) -> _VifEntry:
        key = (vif.domid, vif.devid)
        e = st.vifs.get(key)
        if (
            e is not None
            and e.private == private
            and e.refused == refused
            and e.router == router
            and e.nat == nat
            and (e.vif is vif or e.vif == vif)
        ):
            e.vif = vif
            return e
        if refused:
            e = _VifEntry(vif, private, True, _refused_flows(vif), ())
        elif router is not None:
            e = _VifEntry(vif, private, False, _routed_vif_flows(vif, private, router, nat), (), router, nat)
        else:
            e = _VifEntry(vif, private, False, _vif_flows(vif, private), _membership(vif, private))
        st.vifs[key] = e
        return e

    def _patched(self, st: _BridgeState, new: BridgeModel) -> Parts | None:
        """The last result updated for ``new``, or None where that is not safe."""
        old = st.model
        if (
            old.uplinks,
            old.special_uplinks,
            old.unmanaged,
            old.local,
            old.private,
            old.reserved_for,
            old.refused,
            old.mode,
            old.router_mac,
            old.nat,
        ) != (
            new.uplinks,
            new.special_uplinks,
            new.unmanaged,
            new.local,
            new.private,
            new.reserved_for,
            new.refused,
            new.mode,
            new.router_mac,
            new.nat,
        ) or len(old.vifs) != len(new.vifs):
            return None
        changed = []
        for o, n in zip(old.vifs, new.vifs, strict=True):
            if o is not n:
                changed.append((o, n))
                if len(changed) > _PATCH_AT_MOST:
                    return None
        out = Parts(dict(st.parts.flows), list(st.parts.groups))
        for o, n in changed:
            if (o.domid, o.devid) != (n.domid, n.devid) or not (new.admits(o) and new.admits(n)):
                return None
            private = new.is_private(n)
            router = new.router_mac if new.routed else None
            membership = () if router is not None else _membership(n, private)
            before = st.vifs.get((o.domid, o.devid))
            if before is None or o.access_vlans != n.access_vlans or before.membership != membership:
                return None  # flood groups (or the bridge's VLANs) change: build it all
            out.flows[vif_owner(n.domid, n.devid)] = self._entry(st, n, private, router=router, nat=new.nat).flows
        return out

    # -- the whole bridge ---------------------------------------------------------------------

    def _full(
        self,
        bridge: BridgeModel,
        learn_idle_timeout: int,
        emit: Callable[[Sequence[Flow] | Sequence[GroupEntry]], None] = lambda piece: None,
    ) -> Parts:
        old = self._bridges.get(bridge.name)
        st = _BridgeState(bridge, Parts(), learn_idle_timeout)
        if old is not None:  # reuse what is unchanged; take nothing that no longer exists
            st.vifs, st.groups = old.vifs, old.groups
        parts = st.parts
        vlans = bridge.vlans()
        admitted = [v for v in bridge.vifs if bridge.admits(v)]
        refused = [v for v in bridge.vifs if not bridge.admits(v)] + list(bridge.refused)
        router = bridge.router_mac if bridge.routed else None
        entries = {
            (v.domid, v.devid): self._entry(st, v, bridge.is_private(v), router=router, nat=bridge.nat)
            for v in admitted
        }
        parts.groups = self._flood_groups(st, bridge, vlans, [entries[(v.domid, v.devid)] for v in admitted])
        emit(parts.groups)
        for vif in refused:
            e = self._entry(st, vif, False, refused=True)
            entries[(vif.domid, vif.devid)] = e
            flows = parts.flows[vif_owner(vif.domid, vif.devid)] = e.flows
            emit(flows)
        for vif in admitted:
            flows = parts.flows[vif_owner(vif.domid, vif.devid)] = entries[(vif.domid, vif.devid)].flows
            emit(flows)
        parts.flows[0] = _bridge_flows(
            bridge.all_uplinks(), bridge.local, vlans, learn_idle_timeout, bridge.unmanaged, router or "", bridge.nat
        )
        emit(parts.flows[0])
        st.vifs = {k: st.vifs[k] for k in entries}  # bounded by the vifs that exist
        self._bridges[bridge.name] = st
        return parts

    def _flood_groups(
        self, st: _BridgeState, bridge: BridgeModel, vlans: tuple[int, ...], admitted: list[_VifEntry]
    ) -> list[GroupEntry]:
        groups: list[GroupEntry] = []
        # vlan -> (sort key, bucket actions, private?, uplink?)
        members: dict[int, list[tuple[int, tuple, bool, bool]]] = {v: [] for v in vlans}
        uplinks = bridge.all_uplinks()
        for vlan in vlans:
            for u in uplinks:
                if u.vlans.carries(vlan):
                    tag = (PushVlan(vlan),) if u.vlans.tagged_on_wire(vlan) else ()
                    members[vlan].append((u.members[0], (*tag, *_uplink_out(u)), False, True))
            if bridge.local and vlan == 0:
                members[vlan].append((OFPP_LOCAL, (Output(OFPP_LOCAL),), False, False))
        for e in admitted:
            for vlan, entry in e.membership:
                members[vlan].append(entry)
        made = {}
        for vlan in vlans:
            these = tuple(members[vlan])
            for klass in CLASSES:
                last = st.groups.get((vlan, klass))
                # An unchanged VLAN keeps the same group object, which the diff skips fast.
                group = last[1] if last is not None and last[0] == these else _flood_group(vlan, these, klass)
                made[(vlan, klass)] = (these, group)
                groups.append(group)
        st.groups = made
        groups += [_bond_group(u) for u in uplinks if u.is_bond]
        return groups


def _membership(vif: VifModel, private: bool) -> tuple[tuple[int, tuple[int, tuple, bool, bool]], ...]:
    """(VLAN, flood-group entry) for each VLAN the vif floods on."""
    port = vif.active_port
    if port is None:
        return ()
    if vif.firewall is not None:  # through its firewall (table 12), which tags it in table 5
        return tuple((v, (port, (SetReg("reg7", port), Resubmit(FW_IN)), private, False)) for v in vif.access_vlans)
    return tuple(
        (v, (port, (PushVlan(v), Output(port)) if vif.tagged_on_wire(v) else (Output(port),), private, False))
        for v in vif.access_vlans
    )


@functools.lru_cache(maxsize=256)
def _bridge_flows(
    uplinks: tuple[Uplink, ...],
    local: bool,
    vlans: tuple[int, ...],
    learn_idle_timeout: int,
    unmanaged: tuple[int, ...] = (),
    router_mac: str = "",
    nat: NatSpec | None = None,
) -> tuple[Flow, ...]:
    flows: list[Flow] = []
    bridge_cookie = cookie(P_DEFAULT)
    for t in (CLASSIFY, PORT_SECURITY, LEARN, FORWARD, EGRESS):
        flows.append(Flow(t, 0, (), (), bridge_cookie))  # explicit misses: drop, and count
    # A priority-tagged frame (802.1Q, VLAN 0, a PCP) is an untagged frame, as NORMAL reads it.
    flows.append(Flow(CLASSIFY, 200, match(tagged(0)), (PopVlan(), Resubmit(CLASSIFY)), cookie(P_PRIORITY_TAG)))
    # A port nobody declared (neither a vif with flows nor an uplink nor LOCAL): no
    # forwarding at all; one flow per port, so its drops are counted.
    for port in unmanaged:
        flows.append(Flow(CLASSIFY, 150, match(F("in_port", port)), (), cookie(P_UNMANAGED)))
    for u in uplinks:
        for vlan in vlans:
            if not u.vlans.carries(vlan):
                continue
            forms = []
            if u.vlans.tagged_on_wire(vlan):
                forms.append((tagged(vlan), (PopVlan(),)))
            if u.vlans.untagged_is() == vlan:
                forms.append((untagged(), ()))
            for port in u.members:
                for m, pre in forms:
                    acts = (*pre, SetReg("reg5", FROM_UPLINK), SetReg("reg6", vlan), Goto(LEARN))
                    flows.append(Flow(CLASSIFY, 100, match(F("in_port", port), m), acts, cookie(P_CLASSIFY)))
    if local:
        m = match(F("in_port", OFPP_LOCAL), untagged())
        acts = (SetReg("reg5", FROM_LOCAL), SetReg("reg6", 0), Goto(LEARN))
        flows.append(Flow(CLASSIFY, 100, m, acts, cookie(P_CLASSIFY)))
    learn = LearnSource(LEARNED, learn_idle_timeout, 100, cookie(P_LEARNED))
    flows.append(Flow(LEARN, 100, match(PROMISCUOUS), (learn, Goto(FORWARD)), cookie(P_LEARN)))
    for vlan in vlans:
        for klass in CLASSES:
            gid = group_id(vlan, klass)
            flows.append(
                Flow(FORWARD, 50, match(F("reg5", klass), F("reg6", vlan), MULTICAST), (Group(gid),), cookie(P_FLOOD))
            )
            flows.append(
                Flow(EGRESS, 10, match(F("reg5", klass), F("reg6", vlan), F("reg7", 0)), (Group(gid),), cookie(P_FLOOD))
            )
        for u in uplinks:
            if not u.vlans.carries(vlan):
                continue
            out = ((PushVlan(vlan),) if u.vlans.tagged_on_wire(vlan) else ()) + _uplink_out(u)
            # reg7 is where a learned MAC came in: for a bond, any member leads to the bond.
            for port in u.members:
                flows.append(Flow(EGRESS, 100, match(F("reg6", vlan), F("reg7", port)), out, cookie(P_EGRESS)))
        if local and vlan == 0:
            flows.append(
                Flow(EGRESS, 100, match(F("reg6", 0), F("reg7", OFPP_LOCAL)), (Output(OFPP_LOCAL),), cookie(P_EGRESS))
            )
    flows.append(Flow(FORWARD, 10, (), (Resubmit(LEARNED), Resubmit(EGRESS)), cookie(P_FORWARD)))
    if router_mac:
        flows += _router_flows(router_mac, learn, learn_idle_timeout, nat)
    if router_mac and nat:
        flows += _nat_flows(nat)
    for f in flows:
        check_flow(f)
    return tuple(flows)


def _router_flows(
    router_mac: str, learn: LearnSource, learn_idle_timeout: int, nat: NatSpec | None = None
) -> list[Flow]:
    """A routed bridge's own flows: the neighbour table learned from ARP and neighbour
    discovery, where a routed guest's packet goes after the lookup, and the last step of
    an answer to a neighbour solicitation."""
    ck = cookie(P_NEIGHBOUR)
    arp, ns, na = (LearnNeighbour(NEIGHBOURS, learn_idle_timeout, 100, ck, s) for s in ("arp", "ns", "na"))
    lan = (PROMISCUOUS, F("reg6", 0))
    icmp6 = (F("dl_type", ETH_IPV6), F("nw_proto", ICMPV6))
    flows = [
        Flow(LEARN, 110, match(*lan, F("dl_type", ETH_ARP)), (learn, arp, Goto(FORWARD)), cookie(P_LEARN)),
        Flow(LEARN, 110, match(*lan, *icmp6, F("icmpv6_type", ND_NS)), (learn, ns, Goto(FORWARD)), cookie(P_LEARN)),
        Flow(LEARN, 110, match(*lan, *icmp6, F("icmpv6_type", ND_NA)), (learn, na, Goto(FORWARD)), cookie(P_LEARN)),
        Flow(
            ND_REPLY, 100, match(*icmp6, F("icmpv6_type", ND_NA)), (Move("dl_src", "nd_tll"), Output(OFPP_IN_PORT)), ck
        ),
    ]
    # Without a link-layer option (duplicate address detection, a unicast probe), or an
    # ARP probe from 0.0.0.0, there is no address to learn: only the source MAC.
    for nothing_to_learn in (
        (F("dl_type", ETH_ARP), F("arp_spa", "0.0.0.0")),
        (*icmp6, F("icmpv6_type", ND_NS), F("nd_sll", NO_MAC)),
        (*icmp6, F("icmpv6_type", ND_NA), F("nd_tll", NO_MAC)),
    ):
        flows.append(Flow(LEARN, 111, match(*lan, *nothing_to_learn), (learn, Goto(FORWARD)), cookie(P_LEARN)))
    for eth_type in (ETH_IP, ETH_IPV6):
        # No next hop known: dom0 routes it (the frame is already addressed to its MAC), and
        # its ARP or solicitation for the next hop teaches table 6: the next packet stays in
        # the datapath. (On a NAT bridge it goes untranslated: dom0 sends it back through
        # the bridge, which translates it then; see _nat_flows.)
        flows.append(
            Flow(ROUTED, 100, match(F("reg7", 0), F("dl_type", eth_type)), (Output(OFPP_LOCAL),), cookie(P_ROUTE))
        )
        # A known next hop. Resubmit: goto_table only goes forward, and egress is table 5;
        # the IP match: OVS refuses dec_ttl without it (each action's prerequisites).
        acts = (SetField("dl_src", router_mac), DecTtl(), Resubmit(EGRESS))
        if nat is not None and eth_type == ETH_IP:  # a NAT guest's: with dom0's address
            acts = (Ct(nat.zone, commit=True, nat="src", addr=nat.address, ports=nat.ports), *acts)
        flows.append(Flow(ROUTED, 50, match(F("dl_type", eth_type)), acts, cookie(P_ROUTE)))
    return flows


def _nat_flows(nat: NatSpec) -> list[Flow]:
    """A NAT bridge's own flows (Xen's vif-nat): everything the LAN sends to dom0's
    address goes through conntrack, which translates replies back to the guest that
    opened the connection (table 9 routes them by their restored destination); a new
    connection to a forwarded port is translated to its guest; the rest is dom0's."""
    ck = cookie(P_NAT)
    to_dom0 = match(F("reg5", FROM_UPLINK), F("reg6", 0), F("dl_type", ETH_IP), F("nw_dst", nat.address))
    # dom0's own connections from that address go through the same zone, committed, so
    # that their replies are known (not invalid) and the guests' translations never take
    # their tuples. Then switched as any frame of dom0's.
    from_dom0 = match(
        F("reg5", FROM_LOCAL),
        F("reg6", 0),
        F("dl_dst", NO_MAC, "01:00:00:00:00:00"),
        F("dl_type", ETH_IP),
        F("nw_src", nat.address),
    )
    forwarded = match(
        F("reg5", FROM_LOCAL),
        F("reg6", 0),
        F("dl_dst", NO_MAC, "01:00:00:00:00:00"),
        F("dl_type", ETH_IP),
        _addr("nw_src", ipaddress.ip_interface(nat.subnet)),
    )
    snat = Ct(nat.zone, commit=True, nat="src", addr=nat.address, ports=nat.ports)
    flows = [
        Flow(FORWARD, 130, to_dom0, (Ct(nat.zone, table=NAT_IN, nat=""),), ck),
        Flow(FORWARD, 130, from_dom0, (Ct(nat.zone, commit=True), Resubmit(LEARNED), Resubmit(EGRESS)), ck),
        # A guest's packet that dom0 routed (its next hop was not learned yet) comes back
        # from dom0 untranslated: translated here, then switched to the next hop dom0 chose.
        # Below dom0's frames to a guest's own MAC (125), which stay untranslated.
        Flow(FORWARD, 124, forwarded, (snat, Resubmit(LEARNED), Resubmit(EGRESS)), ck),
        Flow(NAT_IN, 120, match(ct_state("+inv", "+trk"), F("dl_type", ETH_IP)), (), ck),
        Flow(NAT_IN, 10, (), (Output(OFPP_LOCAL),), ck),
    ]
    for fw in nat.forwards:
        m = match(
            ct_state("+new", "+trk"),
            F("dl_type", ETH_IP),
            F("nw_proto", {"tcp": 6, "udp": 17}[fw.proto]),
            F("nw_dst", nat.address),
            F("tp_dst", fw.port),
        )
        dnat = Ct(nat.zone, commit=True, table=NAT_IN, nat="dst", addr=fw.guest, ports=(fw.guest_port, fw.guest_port))
        flows.append(Flow(NAT_IN, 110, m, (dnat,), ck))
    return flows


ND_FLAGS_ROUTER, ND_FLAGS_SOLICITED, ND_FLAGS_OVERRIDE = 0x80000000, 0x40000000, 0x20000000


def na_reply(mac: str, flags: int) -> tuple:
    """Turn a neighbour solicitation into the advertisement "its target is at ``mac``",
    back out of the port it came in on: addresses swapped, the target as the source, type
    136 with ``flags``, the option retyped as a target link-layer address. Table 8 writes
    ``mac`` into that option (OVS lets nd_tll be set only under an advertisement's match)."""
    return (
        Move("dl_src", "dl_dst"),
        SetField("dl_src", mac),
        Move("ipv6_src", "ipv6_dst"),
        Move("nd_target", "ipv6_src"),
        SetField("icmpv6_type", ND_NA),
        SetField("nd_reserved", flags),
        SetField("nd_options_type", 2),
        Resubmit(ND_REPLY),
    )


def arp_reply(mac: str) -> tuple:
    """Turn an ARP request into the reply "its target address is at ``mac``", back out of
    the port it came in on (OVN's ARP responder, with the target taken from the request so
    that one flow answers for any address)."""
    return (
        Move("dl_src", "dl_dst"),
        SetField("dl_src", mac),
        SetField("arp_op", 2),
        Move("arp_sha", "arp_tha"),
        SetField("arp_sha", mac),
        Move("arp_tpa", "reg8"),
        Move("arp_spa", "arp_tpa"),
        Move("reg8", "arp_spa"),
        Output(OFPP_IN_PORT),
    )


def _routed_vif_flows(vif: VifModel, private: bool, router_mac: str, nat: NatSpec | None = None) -> tuple[Flow, ...]:
    """A vif on a routed bridge (Xen's vif-route): its port security as on a bridged one,
    and no layer 2 at all. Its addresses are answered for with dom0's MAC on the LAN (ARP
    and neighbour solicitations) and routed to it; what it sends to dom0's MAC is routed;
    everything else it sends is dropped and counted. With no router MAC known yet, or no
    address in ip=, or a VLAN (a routed network is untagged), nothing is routed to or from it."""
    fs = FlowSet()
    _vif_ingress(fs, FROM_PRIVATE if private else FROM_VIF, vif)
    _port_security(fs, vif)
    port = vif.active_port
    owner = vif_owner(vif.domid, vif.devid)
    drop, route, answer = drop_cookie(owner, K_ROUTED), cookie(P_ROUTE, owner), cookie(P_ARP_REPLY, owner)
    isolated = drop_cookie(owner, K_ISOLATION)
    v4 = [i for i in dict.fromkeys(vif.ips) if i.version == 4]
    v6 = [i for i in dict.fromkeys(vif.ips) if i.version == 6 and not i.ip.is_link_local]
    if nat is not None:  # a NAT guest: IPv4 on the NAT network only (no NAT for IPv6)
        subnet = ipaddress.ip_network(nat.subnet)
        v4 = [i for i in v4 if i.network.subnet_of(subnet)] if all(i.network.subnet_of(subnet) for i in v4) else []
        v6 = []
    for p in vif.ports:
        # Above the flood (50) and the lookup (10): nothing it sends is switched.
        fs.flows.append(Flow(FORWARD, 55, match(F("in_port", p)), (), drop))
    to = _to_vif(vif, port) if port is not None else ()
    to_it = match(F("reg5", FROM_LOCAL), F("reg6", 0), F("dl_dst", vif.mac))
    if nat is not None and port is not None and router_mac and vif.access_vlans == (0,) and vif.forwards:
        # DHCP, with or without an address yet: its requests to dom0's server, and the
        # server's answers (unicast to its MAC) back to it.
        for p in vif.ports:
            dhcp = match(
                F("in_port", p),
                F("dl_type", ETH_IP),
                F("nw_proto", UDP),
                F("nw_dst", "255.255.255.255"),  # (renewals go to the gateway: priority 118)
                F("tp_src", 68),
                F("tp_dst", 67),
            )
            fs.flows.append(Flow(FORWARD, 116, dhcp, (Output(OFPP_LOCAL),), route))
        fs.flows.append(Flow(FORWARD, 125, to_it, to, route))
    if port is not None:
        out = (Output(port),)
        fs.flows.append(Flow(EGRESS, 100, match(F("reg6", 0), F("reg7", port)), out, cookie(P_EGRESS, owner)))
    if port is None or not router_mac or not (v4 or v6) or vif.access_vlans != (0,) or not vif.forwards:
        if vif.firewall is not None:
            fs.flows += firewall_flows(vif)
        return _checked(fs)
    allowed_from = PROMISCUOUS if private else F("reg5", 0, FROM_PRIVATE)
    if nat is not None:  # from the LAN a NAT guest is reached only through conntrack (table 9)
        allowed_from = F("reg5", FROM_LOCAL) if private else F("reg5", FROM_VIF)
    routed_in = (SetField("dl_src", router_mac), SetField("dl_dst", vif.mac), DecTtl(), *to)
    for ip in v4:
        dst = _addr("nw_dst", ip)
        to_guest = (F("reg6", 0), F("dl_type", ETH_IP), F("dl_dst", router_mac), dst)
        fs.flows.append(Flow(FORWARD, 120, match(*to_guest, allowed_from), routed_in, route))
        fs.flows.append(Flow(FORWARD, 119, match(*to_guest), (), isolated))  # from a guest it may not reach
        who_has = (F("reg6", 0), F("dl_type", ETH_ARP), F("arp_op", 1), _addr("arp_tpa", ip))
        # The LAN learns dom0's MAC for it (not for a NAT guest: the LAN never sees its
        # address); dom0 its own MAC, and reaches it directly.
        if nat is None:
            fs.flows.append(Flow(FORWARD, 110, match(*who_has, F("reg5", FROM_UPLINK)), arp_reply(router_mac), answer))
        fs.flows.append(Flow(FORWARD, 110, match(*who_has, F("reg5", FROM_LOCAL)), arp_reply(vif.mac), answer))
        if nat is not None:  # replies to its connections, translated back by conntrack (table 9
            # comes after egress: resubmit, as goto_table only goes forward)
            back = tuple(Resubmit(a.table) if isinstance(a, Goto) else a for a in routed_in)
            fs.flows.append(Flow(NAT_IN, 100, match(F("dl_type", ETH_IP), dst), back, route))
        for p in vif.ports:  # its own address (a gratuitous ARP, a probe): nobody else has it
            fs.flows.append(Flow(FORWARD, 115, match(F("in_port", p), *who_has[1:]), (), drop))
    icmp6 = (F("dl_type", ETH_IPV6), F("nw_proto", ICMPV6))
    proxy, gateway = ND_FLAGS_SOLICITED | ND_FLAGS_OVERRIDE, ND_FLAGS_ROUTER | ND_FLAGS_SOLICITED | ND_FLAGS_OVERRIDE
    for ip in v6:
        dst = _addr("ipv6_dst", ip)
        to_guest = (F("reg6", 0), F("dl_type", ETH_IPV6), F("dl_dst", router_mac), dst)
        acts = (SetField("dl_src", router_mac), SetField("dl_dst", vif.mac), DecTtl(), *to)
        fs.flows.append(Flow(FORWARD, 120, match(*to_guest, allowed_from), acts, route))
        fs.flows.append(Flow(FORWARD, 119, match(*to_guest), (), isolated))
        solicit = (F("reg6", 0), *icmp6, F("icmpv6_type", ND_NS), _addr("nd_target", ip))
        # Duplicate address detection for its address (from ::): not answered, and not passed on.
        fs.flows.append(Flow(FORWARD, 111, match(*solicit, F("ipv6_src", "::")), (), drop))
        fs.flows.append(
            Flow(FORWARD, 110, match(*solicit, F("reg5", FROM_UPLINK)), na_reply(router_mac, proxy), answer)
        )
        fs.flows.append(Flow(FORWARD, 110, match(*solicit, F("reg5", FROM_LOCAL)), na_reply(vif.mac, proxy), answer))
    if nat is None:  # (a NAT guest's is above: it needs it before it has an address)
        fs.flows.append(Flow(FORWARD, 125, to_it, to, route))
    for p in vif.ports:
        arp_req = (F("in_port", p), F("dl_type", ETH_ARP), F("arp_op", 1))
        fs.flows.append(Flow(FORWARD, 110, match(*arp_req), arp_reply(router_mac), answer))
        routed = (Move("nw_dst", "reg8"), Resubmit(NEIGHBOURS), Resubmit(ROUTED))
        ip_in = (F("in_port", p), F("dl_type", ETH_IP), F("dl_dst", router_mac))
        if nat is not None:
            # To its gateway (dom0's address on the NAT network): to dom0, untranslated;
            # to any other address of the NAT network that no guest has: nowhere; to the
            # rest of the world: routed, translated to dom0's address on the way out (table 7).
            fs.flows.append(Flow(FORWARD, 118, match(*ip_in, F("nw_dst", nat.gateway)), (Output(OFPP_LOCAL),), route))
            fs.flows.append(
                Flow(FORWARD, 117, match(*ip_in, _addr("nw_dst", ipaddress.ip_interface(nat.subnet))), (), drop)
            )
        fs.flows.append(Flow(FORWARD, 60, match(*ip_in), routed, route))
        if not v6:  # no IPv6 address of its own (or a NAT guest: nothing NATs IPv6)
            continue
        # IPv6: its solicitations for any address are answered by the gateway, dom0's MAC
        # (not its own duplicate address detection, from ::); what it sends to dom0's MAC is
        # routed, but never from or to a link-local address (routers do not forward those).
        ns_in = (F("in_port", p), *icmp6, F("icmpv6_type", ND_NS))
        fs.flows.append(Flow(FORWARD, 115, match(*ns_in, F("ipv6_src", "::")), (), drop))
        fs.flows.append(Flow(FORWARD, 110, match(*ns_in), na_reply(router_mac, gateway), answer))
        ip6_in = (F("in_port", p), F("dl_type", ETH_IPV6), F("dl_dst", router_mac))
        fs.flows.append(Flow(FORWARD, 61, match(*ip6_in, F("ipv6_dst", "fe80::", "ffc0::")), (), drop))
        fs.flows.append(Flow(FORWARD, 61, match(*ip6_in, F("ipv6_src", "fe80::", "ffc0::")), (), drop))
        fs.flows.append(Flow(FORWARD, 60, match(*ip6_in), (Resubmit(NEIGHBOURS), Resubmit(ROUTED)), route))
    if vif.firewall is not None:
        fs.flows += firewall_flows(vif)
    return _checked(fs)


def _checked(fs: FlowSet) -> tuple[Flow, ...]:
    for f in fs.flows:
        check_flow(f)
    return tuple(fs.flows)


def _refused_flows(vif: VifModel) -> tuple[Flow, ...]:
    owner = vif_owner(vif.domid, vif.devid)
    return tuple(Flow(CLASSIFY, 100, match(F("in_port", port)), (), cookie(P_REFUSED, owner)) for port in vif.ports)


def _to_vif(vif: VifModel, port: int) -> tuple:
    """The actions that deliver a frame to the vif: through table 5 to its live port, or
    for a migrating NIC to each of its vifs in turn (table 5 tags each as it needs); for a
    firewalled vif through its firewall first (table 12, which goes on to table 5)."""
    via = FW_IN if vif.firewall is not None else EGRESS
    if vif.twin_ports:
        return tuple(a for p in (port, *vif.twin_ports) for a in (SetReg("reg7", p), Resubmit(via)))
    return (SetReg("reg7", port), Goto(via))


def _vif_flows(vif: VifModel, private: bool) -> tuple[Flow, ...]:
    """Everything one vif owns (a Builder keeps it while the vif is unchanged)."""
    fs = FlowSet()
    _vif_ingress(fs, FROM_PRIVATE if private else FROM_VIF, vif)
    _port_security(fs, vif)
    port = vif.active_port
    owner = vif_owner(vif.domid, vif.devid)
    if port is not None:
        to = _to_vif(vif, port)
        for vlan in vif.access_vlans if vif.forwards else ():
            dst = (F("reg6", vlan), F("dl_dst", vif.mac))
            allowed_from = PROMISCUOUS if private else F("reg5", 0, FROM_PRIVATE)
            fs.flows.append(Flow(FORWARD, 100, match(*dst, allowed_from), to, cookie(P_FORWARD, owner)))
            # Its MAC from anyone else (a private vif, or anyone to a private vif): nowhere.
            fs.flows.append(Flow(FORWARD, 90, match(*dst), (), cookie(P_FORWARD, owner)))
        for vlan in vif.access_vlans:
            out = (PushVlan(vlan), Output(port)) if vif.tagged_on_wire(vlan) else (Output(port),)
            fs.flows.append(Flow(EGRESS, 100, match(F("reg6", vlan), F("reg7", port)), out, cookie(P_EGRESS, owner)))
    if vif.firewall is not None:
        fs.flows += firewall_flows(vif)
    return _checked(fs)


def _flood_group(vlan: int, members: tuple, klass: int) -> GroupEntry:
    return GroupEntry(group_id(vlan, klass), _flood_buckets(list(members), klass))


def _flood_buckets(members: list[tuple[int, tuple, bool, bool]], klass: int) -> tuple[Bucket, ...]:
    """One bucket per member port (a bond is one member); OVS never sends a copy back out
    of the ingress port."""
    out = []
    for port, actions, private, uplink in sorted(members, key=lambda m: m[0]):
        if klass == FROM_VIF and private:
            continue  # ordinary guests do not reach private ones
        if klass == FROM_PRIVATE and not (uplink or port == OFPP_LOCAL):
            continue  # a private guest reaches only the uplinks and dom0
        if klass == FROM_UPLINK and uplink:
            continue  # never uplink to uplink: that would loop or confuse the LAN's switches
        out.append(Bucket(actions))
    return tuple(out)


def _vif_ingress(fs: FlowSet, klass: int, vif: VifModel) -> None:
    owner = vif_owner(vif.domid, vif.devid)
    for port in vif.ports:
        for vlan in vif.access_vlans:
            if vif.tagged_on_wire(vlan):
                m, pre = match(F("in_port", port), tagged(vlan)), (PopVlan(),)
            else:
                m, pre = match(F("in_port", port), untagged()), ()
            acts = (*pre, SetReg("reg5", klass), SetReg("reg6", vlan), Goto(PORT_SECURITY))
            fs.flows.append(Flow(CLASSIFY, 100, m, acts, cookie(P_CLASSIFY, owner)))
        # Anything else this port sends (a tag it may not use): dropped, counted for the vif.
        fs.flows.append(Flow(CLASSIFY, 1, match(F("in_port", port)), (), drop_cookie(owner, K_VLAN)))


@functools.lru_cache(maxsize=4096)  # bounded: addresses recur within a build, not across history
def _addr(name: str, ip: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> F:
    """An address field: the host, or for an ip= network (a router's routed subnet) the
    whole network as address/mask. Cached: a vif's addresses recur in many of its flows,
    and formatting an IPv6 address is slow."""
    if ip.network.prefixlen == ip.max_prefixlen:
        return F(name, str(ip.ip))
    return F(name, str(ip.network.network_address), str(ip.network.netmask))


MAC_BITS = 48
GUARD_TOP = 500  # the guard's first flow; the 48 take priorities 453-500, above every other table-1 flow
GUARDED = F("reg4", 1)  # set by the guard: table 3 drops the frame and counts it for the port
GUARD_ACTIONS = (SetReg("reg4", 1), Goto(FORWARD))


# Flow k's mask covers bits 0..k (most significant first); the last is the whole MAC.
_GUARD_MASKS = tuple(((1 << MAC_BITS) - 1) ^ ((1 << (MAC_BITS - 1 - k)) - 1) for k in range(MAC_BITS))
_GUARD_MASK_STRS = tuple(int_to_mac(m) for m in _GUARD_MASKS[:-1]) + (None,)  # None: as OVS shows a full mask


def _source_mac_guard(port: int, mac: str, ck: int) -> tuple[Flow, ...]:
    """Drop frames whose source MAC is not the vif's, keyed on the first differing bit.

    Matching dl_src exactly makes OVS's datapath cache one flow (megaflow) per source MAC
    it sees, each through an upcall: a guest sending from endless MACs fills the datapath
    flow table that every guest shares. Flow k here matches the vif's first k bits and the
    opposite bit k; tried in order of k, a spoofed frame is dropped by a flow that needs
    only its first k+1 bits, so one port can make at most 48 megaflows, whatever it sends.
    The frame is marked and dropped in table 3 by a per-port flow that counts it.
    """
    own = mac_to_int(mac)
    in_port = F("in_port", port)
    flows = []
    for k in range(MAC_BITS):  # 48 per vif: the hot loop of a full build, so no match() sorting
        value = (own ^ (1 << (MAC_BITS - 1 - k))) & _GUARD_MASKS[k]
        src = F("dl_src", int_to_mac(value), _GUARD_MASK_STRS[k])
        flows.append(Flow(PORT_SECURITY, GUARD_TOP - k, (in_port, src), GUARD_ACTIONS, ck))
    return tuple(flows)


def _port_security(fs: FlowSet, vif: VifModel) -> None:
    owner = vif_owner(vif.domid, vif.devid)
    allow = cookie(P_ALLOW, owner)
    go = (Goto(FORWARD),)
    # A firewalled vif's IP goes through its firewall (table 10) on the way; its ARP, neighbour
    # discovery and DHCP requests do not.
    ip_go = (Goto(FW_OUT),) if vif.firewall is not None else go
    ips = list(dict.fromkeys(vif.ips))  # a repeated address must not become two identical flows
    v4 = [i for i in ips if i.version == 4]
    ll = ipaddress.IPv6Interface(f"{link_local(vif.mac)}/128")
    v6 = [i for i in ips if i.version == 6 and i.ip != ll.ip]
    has_ip = bool(ips)
    for port in vif.ports:
        src = (F("in_port", port), F("dl_src", vif.mac))

        def add(prio: int, *fields: F, acts: tuple = go, ck: int = allow, _src: tuple = src) -> None:
            fs.flows.append(Flow(PORT_SECURITY, prio, match(*_src, *fields), acts, ck))

        if not vif.trusted:
            # DHCP/DHCPv6 server messages (by either port: clients look only at the
            # destination) and router advertisements: only from a trusted vif.
            for kind, *fields in (
                (K_DHCP_SERVER, F("dl_type", ETH_IP), F("nw_proto", UDP), F("tp_src", 67)),
                (K_DHCP_SERVER, F("dl_type", ETH_IP), F("nw_proto", UDP), F("tp_dst", 68)),
                (K_DHCP_SERVER, F("dl_type", ETH_IPV6), F("nw_proto", UDP), F("tp_src", 547)),
                (K_DHCP_SERVER, F("dl_type", ETH_IPV6), F("nw_proto", UDP), F("tp_dst", 546)),
                (K_RA, F("dl_type", ETH_IPV6), F("nw_proto", ICMPV6), F("icmpv6_type", ND_RA)),
                # A fragmented ICMPv6 packet can carry an RA or NA whose type OVS cannot
                # see (RFC 6980 forbids fragmented neighbour discovery): not from a guest.
                (K_ND, F("dl_type", ETH_IPV6), F("nw_proto", ICMPV6), F("ip_frag", 1, 1)),
            ):
                ck = drop_cookie(owner, kind)
                fs.flows.append(Flow(PORT_SECURITY, 300, match(F("in_port", port), *fields), (), ck))
        # ARP: sender hardware address is its MAC; sender IP among its addresses.
        arp = (F("dl_type", ETH_ARP), F("arp_sha", vif.mac))
        if has_ip:
            for ip in v4:
                add(200, *arp, _addr("arp_spa", ip))
        else:
            add(200, *arp)
        # IPv4.
        if has_ip:
            for ip in v4:
                add(200, F("dl_type", ETH_IP), _addr("nw_src", ip), acts=ip_go)
            add(
                200,
                F("dl_type", ETH_IP),
                F("nw_proto", UDP),
                F("nw_src", "0.0.0.0"),
                F("nw_dst", "255.255.255.255"),
                F("tp_src", 68),
                F("tp_dst", 67),
            )
        else:
            add(200, F("dl_type", ETH_IP), acts=ip_go)
        # IPv6 neighbour discovery: from its own addresses, link-layer options its MAC (or absent).
        icmp6 = (F("dl_type", ETH_IPV6), F("nw_proto", ICMPV6))
        sources6 = [ll, *v6] if has_ip else None
        for sll in (vif.mac, NO_MAC):
            if sources6 is None:
                add(250, *icmp6, F("icmpv6_type", ND_NS), F("nd_sll", sll))
            else:
                for s6 in sources6:
                    add(250, *icmp6, _addr("ipv6_src", s6), F("icmpv6_type", ND_NS), F("nd_sll", sll))
        if sources6 is not None:
            # Duplicate address detection: from ::, no link-layer option, for its own addresses only.
            for target in sources6:
                if target.network.prefixlen == 128:
                    add(
                        250,
                        *icmp6,
                        F("ipv6_src", "::"),
                        F("icmpv6_type", ND_NS),
                        F("nd_target", str(target.ip)),
                        F("nd_sll", NO_MAC),
                    )
            add(250, *icmp6, F("ipv6_src", "::"), F("icmpv6_type", MLD2_REPORT))
        for tll in (vif.mac, NO_MAC):
            if sources6 is None:
                add(250, *icmp6, F("icmpv6_type", ND_NA), F("nd_tll", tll))
            else:
                for s6 in sources6:
                    for target in sources6:
                        if target.network.prefixlen == 128:
                            add(
                                250,
                                *icmp6,
                                _addr("ipv6_src", s6),
                                F("icmpv6_type", ND_NA),
                                F("nd_target", str(target.ip)),
                                F("nd_tll", tll),
                            )
        for nd in (ND_NS, ND_NA):  # any other NS/NA from it is a spoof
            add(240, *icmp6, F("icmpv6_type", nd), acts=(), ck=drop_cookie(owner, K_ND))
        if sources6 is None:
            add(200, F("dl_type", ETH_IPV6), acts=ip_go)
        else:
            for s6 in sources6:
                add(200, F("dl_type", ETH_IPV6), _addr("ipv6_src", s6), acts=ip_go)
        fs.flows.extend(_source_mac_guard(port, vif.mac, cookie(P_GUARD, owner)))
        # What the guard caught, counted in one flow per port: the vif's drop counters stay
        # few, so reading them does not mean reading 48 guard flows per vif.
        fs.flows.append(Flow(FORWARD, 200, match(F("in_port", port), GUARDED), (), drop_cookie(owner, K_SOURCE_MAC)))
        # Everything else from this port: dropped, and counted as the vif's drops of its
        # kind: a source address or ARP sender that is not its own, or another ethertype.
        for kind, eth in ((K_ARP, ETH_ARP), (K_IPV4, ETH_IP), (K_IPV6, ETH_IPV6)):
            fs.flows.append(
                Flow(PORT_SECURITY, 2, match(F("in_port", port), F("dl_type", eth)), (), drop_cookie(owner, kind))
            )
        fs.flows.append(Flow(PORT_SECURITY, 1, match(F("in_port", port)), (), drop_cookie(owner, K_OTHER)))
