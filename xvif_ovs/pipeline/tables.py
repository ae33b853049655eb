"""The pipeline's tables, declared: what each holds, which fields it may match and
where it may go next. build.py's output is checked against this (check_flow), and
flows/PIPELINE.md is written from the same facts."""

from __future__ import annotations

from dataclasses import dataclass

from .flow import Ct, Flow, Goto, LearnNeighbour, LearnSource, Resubmit


@dataclass(frozen=True)
class Table:
    id: int
    name: str
    purpose: str
    matches: frozenset[str]
    next_tables: frozenset[int]


CLASSIFY, PORT_SECURITY, LEARN, FORWARD, LEARNED, EGRESS, NEIGHBOURS, ROUTED, ND_REPLY, NAT_IN = range(10)
FW_OUT, FW_OUT_CT, FW_IN, FW_IN_CT = range(10, 14)
_CT_MATCHES = frozenset(
    {
        "ct_state",
        "reg6",
        "dl_type",
        "nw_proto",
        "nw_src",
        "nw_dst",
        "ipv6_src",
        "ipv6_dst",
        "tp_src",
        "tp_dst",
        "tcp_flags",
        "icmp_type",
        "icmp_code",
        "icmpv6_type",
        "icmpv6_code",
    }
)

TABLES = {
    t.id: t
    for t in (
        Table(
            CLASSIFY,
            "classify",
            "which port a frame came in on and on which VLAN: sets reg5 (ingress class: 1 dom0, 9 uplink, "
            "2 vif, 4 private vif) and reg6 (VLAN, 0 = untagged network), strips the 802.1Q tag. "
            "Frames a port may not send (a tag on an access port, an untagged frame on a trunk, "
            "any frame from a vif refused by a reserved bridge) are dropped here, and so is everything "
            "from a port that is neither a vif nor a declared uplink nor LOCAL (counted per port). "
            "A priority-tagged frame (VLAN 0) loses its tag and is classified again, as untagged.",
            frozenset({"in_port", "vlan_tci"}),
            frozenset({CLASSIFY, PORT_SECURITY, LEARN}),
        ),
        Table(
            PORT_SECURITY,
            "port_security",
            "anti-spoofing for vifs, keyed on in_port: the vif's own source MAC only (a foreign one is "
            "caught by the flow of its first differing bit, which marks it reg4=1 for table 3 to drop and "
            "count, so a guest inventing MACs makes at most 48 datapath flows); ARP with "
            "arp_sha = its MAC and arp_spa among its IPs; IPv4 source among its IPs (and the DHCP "
            "client's 0.0.0.0 -> 255.255.255.255 udp 68->67); IPv6 source its link-local or its IPs; "
            "ND with nd_sll / nd_tll = its MAC and NA targets among its addresses; no DHCP server "
            "replies or router advertisements unless trusted. The rest is dropped by a per-vif flow "
            "whose counters are the vif's drop count.",
            frozenset(
                {
                    "in_port",
                    "dl_src",
                    "dl_type",
                    "arp_spa",
                    "arp_sha",
                    "nw_src",
                    "nw_dst",
                    "nw_proto",
                    "ip_frag",
                    "ipv6_src",
                    "tp_src",
                    "tp_dst",
                    "icmpv6_type",
                    "nd_target",
                    "nd_sll",
                    "nd_tll",
                }
            ),
            frozenset({FORWARD, FW_OUT}),
        ),
        Table(
            LEARN,
            "learn",
            "frames from an uplink or dom0: learn their source MAC per VLAN into table 4 with the "
            "learn action (in the datapath: no packet-in), then forward. On a routed bridge an ARP "
            "frame from them also teaches table 6 its sender's IPv4 address -> MAC and port, and a "
            "neighbour solicitation or advertisement with a link-layer option the IPv6 one.",
            frozenset({"reg5", "reg6", "dl_type", "arp_spa", "nw_proto", "icmpv6_type", "nd_sll", "nd_tll"}),
            frozenset({FORWARD}),
        ),
        Table(
            FORWARD,
            "forward",
            "known destinations first: each vif's MAC on each of its VLANs (installed from XenStore, "
            "not learned), allowed unless private mode forbids; broadcast and multicast to the VLAN's "
            "flood group for the ingress class; anything else is looked up in table 4 and egresses "
            "through table 5. First of all, a frame table 1's source-MAC guard marked (reg4=1) is "
            'dropped and counted for its port. On a routed bridge (flows/PIPELINE.md, "Routed"): '
            "ARP and neighbour solicitations for a guest's address from the LAN are answered with dom0's "
            "MAC, and from dom0 with the guest's; a guest's own are answered with dom0's MAC; IP to "
            "dom0's MAC for a guest's address is routed to it (MACs rewritten, TTL decremented); a "
            "guest's other IP to dom0's MAC goes to tables 6 and 7; nothing else from a routed guest "
            "goes anywhere.",
            frozenset(
                {
                    "reg4",
                    "in_port",
                    "reg5",
                    "reg6",
                    "dl_dst",
                    "dl_type",
                    "arp_op",
                    "arp_tpa",
                    "nw_dst",
                    "nw_proto",
                    "icmpv6_type",
                    "ipv6_src",
                    "ipv6_dst",
                    "nd_target",
                    "tp_src",
                    "tp_dst",
                    "nw_src",
                }
            ),
            frozenset({LEARNED, EGRESS, NEIGHBOURS, ROUTED, ND_REPLY, NAT_IN, FW_IN}),
        ),
        Table(
            LEARNED,
            "learned",
            "only flows the learn action made: VLAN + MAC behind an uplink -> reg7 = port. Idle ones expire.",
            frozenset({"reg6", "dl_dst"}),
            frozenset(),
        ),
        Table(
            EGRESS,
            "egress",
            "reg7 = output port: out with the 802.1Q tag that port needs for the VLAN; no reg7 "
            "(unknown unicast): the VLAN's flood group for the ingress class.",
            frozenset({"reg5", "reg6", "reg7"}),
            frozenset(),
        ),
        Table(
            NEIGHBOURS,
            "neighbours",
            "only flows the learn action made (routed bridges): IPv4 address in reg8, or IPv6 destination, "
            "-> eth_dst = its MAC, reg7 = the port it is behind, learned from the ARP and neighbour "
            "discovery the LAN and dom0 send. Idle ones expire.",
            frozenset({"reg8", "dl_type", "ipv6_dst"}),
            frozenset(),
        ),
        Table(
            ROUTED,
            "routed",
            "a routed guest's packet after the neighbour lookup: a known next hop (reg7 set) gets "
            "dom0's MAC as its source and a decremented TTL and egresses through table 5; an unknown "
            "one goes to dom0, whose kernel routes it (and whose ARP for it fills table 6).",
            frozenset({"reg7", "dl_type"}),
            frozenset({EGRESS}),
        ),
        Table(
            ND_REPLY,
            "nd_reply",
            "a neighbour solicitation table 3 turned into an advertisement: its target link-layer "
            "option gets the answering MAC (OVS lets an action set it only where the match says "
            "advertisement), and it leaves by the port it came in on.",
            frozenset({"dl_type", "nw_proto", "icmpv6_type"}),
            frozenset(),
        ),
        Table(
            NAT_IN,
            "nat_in",
            "NAT bridges: what the LAN sent to dom0's address, after conntrack translated it back: "
            "a reply to a guest's connection (its destination is the guest again) is routed to it; "
            "a new connection to a forwarded port is translated to its guest and comes back here; "
            "an invalid one is dropped; the rest is dom0's own and goes to it.",
            frozenset({"ct_state", "dl_type", "nw_proto", "nw_dst", "tp_dst"}),
            frozenset({NAT_IN, EGRESS, FW_IN}),
        ),
        Table(
            FW_OUT,
            "fw_out",
            "a firewalled guest's IP (port security passed it) goes through conntrack in the guest's "
            "own zone, then table 11; neighbour discovery and MLD skip the firewall.",
            frozenset({"in_port", "dl_type", "nw_proto", "nw_ttl", "icmpv6_type", "ipv6_dst"}),
            frozenset({FW_OUT_CT, FORWARD}),
        ),
        Table(
            FW_OUT_CT,
            "fw_out_ct",
            "a firewalled guest's IP after conntrack: invalid dropped, related passed; a connection it "
            "opened is judged by its out rules (new ones committed), a reply in one opened towards it by "
            "its in rules read backwards; first match wins; then the defaults (out open, in the "
            "network's policy). Allowed packets go on to table 3.",
            frozenset({"in_port"}) | _CT_MATCHES,
            frozenset({FORWARD}),
        ),
        Table(
            FW_IN,
            "fw_in",
            "a frame about to be delivered to a firewalled guest (reg7 = its port): ARP, neighbour "
            "discovery, MLD and DHCP answers pass; IP goes through conntrack in its zone, then table 13; "
            "other ethertypes by its ethertype rules, then the network's policy.",
            frozenset(
                {
                    "in_port",
                    "reg7",
                    "reg6",
                    "dl_type",
                    "nw_proto",
                    "nw_ttl",
                    "icmpv6_type",
                    "ipv6_src",
                    "tp_src",
                    "tp_dst",
                }
            ),
            frozenset({FW_IN_CT, EGRESS}),
        ),
        Table(
            FW_IN_CT,
            "fw_in_ct",
            "IP to a firewalled guest after conntrack: as table 11 with the roles swapped (in rules for "
            "connections opened towards it, out rules backwards for replies); allowed packets egress "
            "through table 5.",
            frozenset({"reg7"}) | _CT_MATCHES,
            frozenset({EGRESS}),
        ),
    )
}


class PipelineError(ValueError):
    """A flow that breaks the declared pipeline: a bug in build.py, never operator input."""


def check_flow(flow: Flow) -> None:
    table = TABLES.get(flow.table)
    if table is None:
        raise PipelineError(f"flow in undeclared table {flow.table}: {flow.render()}")
    extra = {f.name for f in flow.match} - table.matches
    if extra:
        raise PipelineError(f"table {table.name} may not match {sorted(extra)}: {flow.render()}")
    for a in flow.actions:
        target = a.table if isinstance(a, Goto | Resubmit | Ct) else None
        if isinstance(a, LearnSource | LearnNeighbour):
            want = LEARNED if isinstance(a, LearnSource) else NEIGHBOURS
            if a.table != want:
                raise PipelineError(f"this learn writes only into table {want}: {flow.render()}")
            continue
        if isinstance(a, Goto) and a.table <= flow.table:
            raise PipelineError(f"goto_table only goes to a later table (OpenFlow refuses it): {flow.render()}")
        if target is not None and target not in table.next_tables:
            raise PipelineError(f"table {table.name} may not go to table {target}: {flow.render()}")
