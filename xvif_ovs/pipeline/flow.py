"""One flow representation, rendered both to the wire (controller/ofmsg.py) and to
ovs-ofctl syntax (here), so that what the CLI prints is what was installed.

Matches and actions are small frozen values with a canonical order: two flows that
mean the same thing compare equal, which is what the diff against the switch needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OFPP_LOCAL = 0xFFFFFFFE
OFPP_IN_PORT = 0xFFFFFFF8  # output back where the frame came in (an ARP or ND reply)
OFPP_CONTROLLER = 0xFFFFFFFD  # a firewall "reject": the controller answers (always behind a meter)
OFPVID_PRESENT = 0x1000

# ovs-ofctl field names in the order they are rendered.
FIELDS = (
    "in_port",
    "reg4",
    "reg5",
    "reg6",
    "reg7",
    "reg8",
    "ct_state",
    "dl_src",
    "dl_dst",
    "vlan_tci",
    "dl_type",
    "arp_op",
    "arp_spa",
    "arp_sha",
    "arp_tpa",
    "arp_tha",
    "nw_src",
    "nw_dst",
    "nw_proto",
    "nw_ttl",
    "ip_frag",
    "ipv6_src",
    "ipv6_dst",
    "tp_src",
    "tp_dst",
    "tcp_flags",
    "icmp_type",
    "icmp_code",
    "icmpv6_type",
    "icmpv6_code",
    "nd_target",
    "nd_sll",
    "nd_tll",
)
_ORDER = {f: i for i, f in enumerate(FIELDS)}
HEX_FIELDS = {"reg4", "reg5", "reg6", "reg7", "reg8", "vlan_tci", "dl_type", "tcp_flags"}
# ip_frag (value, mask) -> ovs-ofctl's word: bit 0 "is a fragment", bit 1 "not the first".
IP_FRAG_WORDS = {(0, 1): "no", (1, 1): "yes", (1, 3): "first", (3, 3): "later", (1, 2): "not_later"}

# Cookies: the top 16 bits say "installed by xvif-ovs"; flows without them are not ours.
COOKIE_MAGIC = 0x7876 << 48
COOKIE_MASK = 0xFFFF << 48
OWNER_MASK = 0xFFFFFFFF  # the low 32 bits: which vif (VIF_OWNER set) or 0, the bridge
VIF_OWNER = 1 << 31


# Groups: ids in [GROUP_BASE, GROUP_BASE + GROUP_SPAN) are ours; the controller reads,
# changes and deletes only those, so another application's groups on a bridge are left alone.
GROUP_BASE = 0x7876 << 16
GROUP_SPAN = 0x20000


def is_our_group(group_id: int) -> bool:
    return GROUP_BASE <= group_id < GROUP_BASE + GROUP_SPAN


def cookie(purpose: int, owner: int = 0) -> int:
    """``purpose`` (8 bits) says why the flow exists; ``owner`` which vif (0: the bridge)."""
    return COOKIE_MAGIC | (purpose & 0xFF) << 40 | (owner & OWNER_MASK)


def purpose_match(purpose: int) -> tuple[int, int]:
    """(cookie, mask) that an OpenFlow request matches every flow of ours of ``purpose``
    with, whichever vif it is and whatever its bits 32-39 say."""
    return COOKIE_MAGIC | (purpose & 0xFF) << 40, COOKIE_MASK | 0xFF << 40


def vif_owner(domid: int, devid: int) -> int:
    """Bit 31 marks a vif; domids fit 15 bits (below DOMID_FIRST_RESERVED), devids 16."""
    return VIF_OWNER | (domid & 0x7FFF) << 16 | (devid & 0xFFFF)


def decode_cookie(value: int) -> tuple[int, int | None, int | None] | None:
    """(purpose, domid, devid) of one of our cookies; None for someone else's."""
    if value & COOKIE_MASK != COOKIE_MAGIC:
        return None
    owner = value & OWNER_MASK
    if owner & VIF_OWNER:
        return (value >> 40) & 0xFF, (owner >> 16) & 0x7FFF, owner & 0xFFFF
    return (value >> 40) & 0xFF, None, None


# Connection-tracking state bits (OVS's ct_state), in the order ovs-ofctl prints them.
CT_BITS = (("new", 0x01), ("est", 0x02), ("rel", 0x04), ("rpl", 0x08), ("inv", 0x10), ("trk", 0x20))
CT_STATE = dict(CT_BITS)


def ct_state(*flags: str) -> F:
    """A ct_state match from "+trk", "-new", ...: the named bits set or clear, the rest ignored."""
    value = mask = 0
    for flag in flags:
        bit = CT_STATE[flag[1:]]
        mask |= bit
        value |= bit if flag[0] == "+" else 0
    return F("ct_state", value, mask)


@dataclass(frozen=True)
class F:
    """One match field: value and optional mask (ints for numbers, text for addresses)."""

    name: str
    value: int | str
    mask: int | str | None = None

    def render(self) -> str:
        v = self.value
        if self.name == "ct_state":  # ovs-ofctl's flags: +est+trk, -new
            m = int(self.mask if self.mask is not None else 0xFF)
            return "ct_state=" + "".join(("+" if int(v) & bit else "-") + name for name, bit in CT_BITS if m & bit)
        if self.name == "ip_frag":  # ovs-ofctl spells these as words
            return "ip_frag=" + IP_FRAG_WORDS[(int(v), int(self.mask if self.mask is not None else 3))]
        if self.name in HEX_FIELDS and isinstance(v, int):
            text = f"{v:#x}" if self.name != "dl_type" else f"0x{v:04x}"
        elif self.name == "in_port" and v == OFPP_LOCAL:
            text = "LOCAL"
        else:
            text = str(v)
        if self.mask is not None:
            m = self.mask
            text += "/" + (f"{m:#x}" if isinstance(m, int) else str(m))
        return f"{self.name}={text}"


def match(*fields: F) -> tuple[F, ...]:
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"a field appears twice in {names}")
    return tuple(sorted(fields, key=lambda f: _ORDER[f.name]))


# -- actions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    port: int

    def render(self) -> str:
        names = {OFPP_LOCAL: "LOCAL", OFPP_IN_PORT: "IN_PORT", OFPP_CONTROLLER: "CONTROLLER:65535"}
        return names.get(self.port, f"output:{self.port}")


@dataclass(frozen=True)
class Meter:
    """OpenFlow 1.3's meter instruction (first of a flow's instructions): packets beyond
    the meter's rate are dropped in the datapath, before anything else."""

    meter_id: int

    def render(self) -> str:
        return f"meter:{self.meter_id}"


@dataclass(frozen=True)
class Group:
    group_id: int

    def render(self) -> str:
        return f"group:{self.group_id}"


@dataclass(frozen=True)
class SetReg:
    reg: str  # reg4..reg8
    value: int

    def render(self) -> str:
        return f"set_field:{self.value:#x}->{self.reg}"


@dataclass(frozen=True)
class PushVlan:
    vid: int  # pushes an 802.1Q header with this VLAN

    def render(self) -> str:
        return f"push_vlan:0x8100,set_field:{self.vid | OFPVID_PRESENT}->vlan_vid"


@dataclass(frozen=True)
class PopVlan:
    def render(self) -> str:
        return "pop_vlan"


@dataclass(frozen=True)
class Resubmit:
    table: int

    def render(self) -> str:
        return f"resubmit(,{self.table})"


@dataclass(frozen=True)
class Goto:
    table: int

    def render(self) -> str:
        return f"goto_table:{self.table}"


@dataclass(frozen=True)
class LearnSource:
    """Learn the source MAC of a frame, per VLAN (reg6), as a flow in ``table`` that
    loads the ingress port into reg7: MAC learning in the datapath, no packet-in."""

    table: int
    idle_timeout: int
    priority: int
    cookie: int

    def render(self) -> str:
        return (
            f"learn(table={self.table},idle_timeout={self.idle_timeout},priority={self.priority},"
            f"cookie={self.cookie:#x},NXM_NX_REG6[0..11],NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],"
            f"load:OXM_OF_IN_PORT[]->NXM_NX_REG7[])"
        )


# What a learned neighbour is keyed on and taken from, by the message it is learned from:
# ARP (IPv4, in reg8), a neighbour solicitation (its source, with its source link-layer
# option) and a neighbour advertisement (its target, with its target link-layer option).
NEIGHBOUR_SPECS = {
    "arp": "eth_type=0x800,NXM_NX_REG8[]=NXM_OF_ARP_SPA[],load:NXM_NX_ARP_SHA[]->NXM_OF_ETH_DST[]",
    "ns": "eth_type=0x86dd,NXM_NX_IPV6_DST[]=NXM_NX_IPV6_SRC[],load:NXM_NX_ND_SLL[]->NXM_OF_ETH_DST[]",
    "na": "eth_type=0x86dd,NXM_NX_IPV6_DST[]=NXM_NX_ND_TARGET[],load:NXM_NX_ND_TLL[]->NXM_OF_ETH_DST[]",
}


@dataclass(frozen=True)
class LearnNeighbour:
    """Learn a LAN host's address as a flow in ``table`` that loads its MAC into eth_dst
    and its ingress port into reg7: the routed model's neighbour table, filled in the
    datapath from the ARP and neighbour discovery the LAN sends, with no packet-in (OVN's
    MAC_Binding, without a controller in the path). IPv4 is matched in reg8 (where the
    route put the next hop), IPv6 as the packet's destination."""

    table: int
    idle_timeout: int
    priority: int
    cookie: int
    source: str = "arp"  # arp | ns | na (NEIGHBOUR_SPECS)

    def render(self) -> str:
        return (
            f"learn(table={self.table},idle_timeout={self.idle_timeout},priority={self.priority},"
            f"cookie={self.cookie:#x},{NEIGHBOUR_SPECS[self.source]},load:OXM_OF_IN_PORT[]->NXM_NX_REG7[])"
        )


# Registers a Move may copy to and from (scratch space: a swap, a next hop's address).
MOVE_REGS = {"reg8": 32}
# Header fields an action may rewrite, by our match names, and the widths of those a Move
# may copy between (whole fields only): what answering ARP and ND, and routing, need.
SET_FIELDS = {
    "dl_src": 48,
    "dl_dst": 48,
    "arp_op": 16,
    "arp_sha": 48,
    "arp_tha": 48,
    "arp_spa": 32,
    "arp_tpa": 32,
    "nw_src": 32,
    "nw_dst": 32,
    "ipv6_src": 128,
    "ipv6_dst": 128,
    "icmpv6_type": 8,
    "nd_target": 128,
    "nd_sll": 48,
    "nd_tll": 48,
    # ND's reserved word (its R, S and O flags) and its option's type: with them a
    # solicitation becomes an advertisement (OVS's Ericsson OXMs, since 2.11).
    "nd_reserved": 32,
    "nd_options_type": 8,
}
MOVABLE = {**{k: w for k, w in SET_FIELDS.items() if k not in ("nd_reserved", "nd_options_type")}, **MOVE_REGS}
# ovs-ofctl's names in set_field, and the NXM names its move: action takes.
_SET_NAME = {"dl_src": "eth_src", "dl_dst": "eth_dst", "nw_src": "ip_src", "nw_dst": "ip_dst"}
NXM_NAMES = {
    "dl_src": "NXM_OF_ETH_SRC",
    "dl_dst": "NXM_OF_ETH_DST",
    "arp_op": "NXM_OF_ARP_OP",
    "arp_sha": "NXM_NX_ARP_SHA",
    "arp_tha": "NXM_NX_ARP_THA",
    "arp_spa": "NXM_OF_ARP_SPA",
    "arp_tpa": "NXM_OF_ARP_TPA",
    "nw_src": "NXM_OF_IP_SRC",
    "nw_dst": "NXM_OF_IP_DST",
    "ipv6_src": "NXM_NX_IPV6_SRC",
    "ipv6_dst": "NXM_NX_IPV6_DST",
    "icmpv6_type": "NXM_NX_ICMPV6_TYPE",
    "nd_target": "NXM_NX_ND_TARGET",
    "nd_sll": "NXM_NX_ND_SLL",
    "nd_tll": "NXM_NX_ND_TLL",
    "reg8": "NXM_NX_REG8",
}


@dataclass(frozen=True)
class SetField:
    """Rewrite one header field (by its match name) to a value: a MAC or an address as
    text, a number as an int."""

    field: str
    value: int | str

    def __post_init__(self) -> None:
        if self.field not in SET_FIELDS:
            raise ValueError(f"set_field of {self.field!r}: the pipeline rewrites only {sorted(SET_FIELDS)}")

    def render(self) -> str:
        return f"set_field:{self.value}->{_SET_NAME.get(self.field, self.field)}"


@dataclass(frozen=True)
class Move:
    """Copy one whole header field into another of the same width (Nicira reg_move)."""

    src: str
    dst: str

    def __post_init__(self) -> None:
        for f in (self.src, self.dst):
            if f not in MOVABLE:
                raise ValueError(f"move of {f!r}: the pipeline moves only {sorted(MOVABLE)}")
        if MOVABLE[self.src] != MOVABLE[self.dst]:
            raise ValueError(f"move {self.src} -> {self.dst}: the fields differ in width")

    @property
    def n_bits(self) -> int:
        return MOVABLE[self.src]

    def render(self) -> str:
        return f"move:{NXM_NAMES[self.src]}[]->{NXM_NAMES[self.dst]}[]"


@dataclass(frozen=True)
class Ct:
    """Send the packet through the connection tracker in ``zone``: with ``commit`` record
    it; with ``nat`` "src" or "dst" record an address (and port) translation for it, with
    ``nat`` "" apply the translation its connection already has; with ``table`` continue
    in that table with ct_state known (a recirculation)."""

    zone: int
    commit: bool = False
    table: int | None = None
    nat: str | None = None  # None: no NAT; "": the connection's own; "src" / "dst": a new one
    addr: str = ""
    ports: tuple[int, int] | None = None  # a port range for src, or (port, port) for dst
    mark: int | None = None  # with commit: set the connection's ct_mark (the firewall's "who opened it")

    def render(self) -> str:
        parts = ["commit"] if self.commit else []
        if self.table is not None:
            parts.append(f"table={self.table}")
        parts.append(f"zone={self.zone}")
        if self.nat == "":
            parts.append("nat")
        elif self.nat is not None:
            ports = ""
            if self.ports:
                lo, hi = self.ports
                ports = f":{lo}" if lo == hi else f":{lo}-{hi}"
            parts.append(f"nat({self.nat}={self.addr}{ports})")
        if self.mark is not None:
            parts.append(f"exec(set_field:{self.mark:#x}->ct_mark)")
        return "ct(" + ",".join(parts) + ")"


@dataclass(frozen=True)
class DecTtl:
    """Decrement the IPv4 TTL or the IPv6 hop limit; a packet whose TTL would reach zero is
    dropped (OVS sends no packet-in for it unless a controller asked for invalid-TTL ones)."""

    def render(self) -> str:
        return "dec_ttl"


Action = (
    Output
    | Meter
    | Group
    | SetReg
    | PushVlan
    | PopVlan
    | Resubmit
    | Goto
    | LearnSource
    | LearnNeighbour
    | SetField
    | Move
    | DecTtl
)


@dataclass(frozen=True)
class Flow:
    table: int
    priority: int
    match: tuple[F, ...]
    actions: tuple[Action, ...]  # empty: drop
    cookie: int

    @property
    def key(self) -> tuple:
        """What identifies a flow in a table (OpenFlow's strict match)."""
        return (self.table, self.priority, self.match)

    def render(self) -> str:
        m = ",".join(f.render() for f in self.match)
        acts = ",".join(a.render() for a in self.actions) if self.actions else "drop"
        return (
            f"cookie={self.cookie:#x}, table={self.table}, priority={self.priority}"
            + (f",{m}" if m else "")
            + f" actions={acts}"
        )


@dataclass(frozen=True)
class Bucket:
    actions: tuple[Action, ...]
    watch_port: int | None = None  # fast-failover: the bucket is live while this port is

    def render(self) -> str:
        acts = ",".join(a.render() for a in self.actions)
        if self.watch_port is None:
            return f"bucket={acts}"
        return f"bucket=watch_port:{self.watch_port},actions={acts}"


@dataclass(frozen=True)
class GroupEntry:
    """An OpenFlow group: ``all`` sends a copy through every bucket (a VLAN's flood);
    ``ff`` (fast failover) through the first bucket whose watch_port is live (a bond: each
    frame leaves once, over a live member)."""

    group_id: int
    buckets: tuple[Bucket, ...]
    type: str = "all"

    def render(self) -> str:
        return f"group_id={self.group_id},type={self.type}," + ",".join(b.render() for b in self.buckets)


@dataclass
class FlowSet:
    flows: list[Flow] = field(default_factory=list)
    groups: list[GroupEntry] = field(default_factory=list)

    def by_key(self) -> dict[tuple, Flow]:
        out: dict[tuple, Flow] = {}
        for f in self.flows:
            if f.key in out:
                raise ValueError(
                    f"two flows with the same table/priority/match:\n  {out[f.key].render()}\n  {f.render()}"
                )
            out[f.key] = f
        return out

    def render(self) -> str:
        """ovs-ofctl syntax, sorted as a reviewer reads it: groups, then table by table."""
        lines = [g.render() for g in sorted(self.groups, key=lambda g: g.group_id)]
        lines += [
            f.render() for f in sorted(self.flows, key=lambda f: (f.table, -f.priority, [x.render() for x in f.match]))
        ]
        return "\n".join(lines) + "\n"
