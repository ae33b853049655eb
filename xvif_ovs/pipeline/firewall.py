"""A firewalled vif's flows: tables 10-13 (flows/PIPELINE.md, "Firewall").

Each vif has a conntrack zone of its own, so the zone tells whose connection an entry is,
and ct_state's "rpl" bit which side opened it: from the guest, -rpl is a connection it
opened (its "out" rules decide), +rpl a reply in one opened towards it (its "in" rules,
read with source and destination swapped, decide). Every packet, not only the first,
is judged by the rules in force: a reload that no longer allows a connection cuts it at
its next packet, in both directions, and one that still allows it lets it run on. Only
new connections are committed. A packet of a connection no rule decided falls to the
defaults: out open; in the network's policy.
"""

from __future__ import annotations

import ipaddress

from ..firewall.rules import Rule, port_masks
from ..model.host import VifModel
from .flow import OFPP_CONTROLLER, Ct, F, Flow, Meter, Output, Resubmit, cookie, ct_state, match, vif_owner
from .tables import EGRESS, FORWARD, FW_IN, FW_IN_CT, FW_OUT, FW_OUT_CT

P_RULE, P_FW, P_FW_DEFAULT = 18, 19, 20
# A committed connection's ct_mark says who opened it, for the controller's cut after a
# reload (controller/conntrack.py): the guest (its out rules decide) or the other side (in).
MARK_OUT, MARK_IN = 1, 2
ETH_ARP, ETH_IP, ETH_IPV6 = 0x0806, 0x0800, 0x86DD
TCP, UDP, ICMPV6 = 6, 17, 58
TCP_SYN = 0x002
# Neighbour discovery and MLD never go through conntrack (it cannot track them) nor the
# rules: without them IPv6 does not work, as security groups also assume. But only on the
# link, as RFC 4861 and RFC 2710/3810 define them: hop limit 255 for neighbour discovery,
# 1 and a link-local source for MLD, which no router's forwarding leaves; and from the
# guest, only to link-local or multicast destinations. Anything else of those types goes
# through conntrack, which calls it invalid: a host off the link cannot use them to
# reach a guest past its rules, nor a guest to reach one.
ND_TYPES, MLD_TYPES = (133, 134, 135, 136, 137), (130, 131, 132, 143)
ICMPV6_ALWAYS = tuple(sorted(ND_TYPES + MLD_TYPES))
LINK_LOCAL, MULTICAST6 = F("ipv6_src", "fe80::", "ffc0::"), ("ff00::", "ff00::")
# ICMP requests conntrack tracks, and the type of their replies.
ICMP_REPLY = {4: {8: 0, 13: 14, 15: 16, 17: 18}, 6: {128: 129}}
RULE_TOP = 10000  # rule i has priority RULE_TOP - i: first match wins
# A rejected packet goes to the controller, which answers with a TCP reset or an ICMP
# unreachable; the meter (installed by the controller on each switch) keeps a flood of
# them to REJECT_RATE a second in the datapath, so it costs neither ovs-vswitchd nor us.
REJECT_METER, REJECT_RATE, REJECT_BURST = 0x7876, 100, 50
REJECT_ACTIONS = (Meter(REJECT_METER), Output(OFPP_CONTROLLER))
RULE_SHIFT = 32  # a rule flow's cookie carries the rule's index in bits 32-39


def rule_cookie(owner: int, index: int) -> int:
    return cookie(P_RULE, owner) | (index & 0xFF) << RULE_SHIFT


def rule_index(value: int) -> int:
    return (value >> RULE_SHIFT) & 0xFF


def firewall_flows(vif: VifModel) -> list[Flow]:
    fw = vif.firewall
    assert fw is not None
    owner = vif_owner(vif.domid, vif.devid)
    ck, ck_default = cookie(P_FW, owner), cookie(P_FW_DEFAULT, owner)
    z = fw.zone
    flows: list[Flow] = []
    icmp6 = (F("dl_type", ETH_IPV6), F("nw_proto", ICMPV6))
    for p in vif.ports:
        inp, to = F("in_port", p), F("reg7", p)
        # 10: what it sends (port security passed it) into its zone.
        for t in (ETH_IP, ETH_IPV6):
            acts = () if fw.blocked else (Ct(z, table=FW_OUT_CT),)
            flows.append(Flow(FW_OUT, 100, match(inp, F("dl_type", t)), acts, ck_default if fw.blocked else ck))
        for ty, on_link in _link_only(out=True):
            m = match(inp, *icmp6, F("icmpv6_type", ty), *on_link)
            flows.append(Flow(FW_OUT, 200, m, (Resubmit(FORWARD),), ck))
        flows.append(Flow(FW_OUT, 1, match(inp), (), ck))
        # 12: what is about to be delivered to it.
        deliver = (Resubmit(EGRESS),)
        # Its own broadcast, flooded back to it (a bucket cannot see the ingress port, as
        # output does): nowhere, before conntrack sees it again.
        flows.append(Flow(FW_IN, 400, match(inp, to), (), ck))
        flows.append(Flow(FW_IN, 300, match(to, F("dl_type", ETH_ARP)), deliver, ck))
        for ty, on_link in _link_only(out=False):
            flows.append(Flow(FW_IN, 300, match(to, *icmp6, F("icmpv6_type", ty), *on_link), deliver, ck))
        # Its DHCP and DHCPv6 server's answers (who may serve is port security's business).
        for t, src, dst in ((ETH_IP, 67, 68), (ETH_IPV6, 547, 546)):
            dhcp = match(to, F("dl_type", t), F("nw_proto", UDP), F("tp_src", src), F("tp_dst", dst))
            flows.append(Flow(FW_IN, 300, dhcp, deliver, ck))
        for t in (ETH_IP, ETH_IPV6):
            acts = () if fw.blocked else (Ct(z, table=FW_IN_CT),)
            flows.append(Flow(FW_IN, 200, match(to, F("dl_type", t)), acts, ck_default if fw.blocked else ck))
        for i, r in enumerate(fw.rules):  # other ethertypes: stateless, inbound only
            if r.protocol == "ether":
                vlan = (F("reg6", r.vlan),) if r.vlan is not None else ()
                acts = deliver if r.action == "allow" else ()
                m = match(to, *vlan, F("dl_type", r.ethertype))
                flows.append(Flow(FW_IN, RULE_TOP - i, m, acts, rule_cookie(owner, i)))
        for vlan in sorted(fw.closed):
            flows.append(Flow(FW_IN, 2, match(to, F("reg6", vlan)), (), ck_default))
        flows.append(Flow(FW_IN, 1, match(to), deliver, ck))
        if fw.blocked:
            continue
        # 11 and 13: after conntrack.
        for table, key, back, mine in ((FW_OUT_CT, inp, FORWARD, "out"), (FW_IN_CT, to, EGRESS, "in")):
            on = (Resubmit(back),)
            commit = Ct(z, commit=True, mark=MARK_OUT if mine == "out" else MARK_IN)
            flows.append(Flow(table, 30000, match(key, ct_state("+inv", "+trk")), (), ck))
            # Only a SYN opens a TCP connection. Conntrack would take up a connection from
            # any of its packets; then a guest whose connection a reload cut could open it
            # again as its own (out is open) with its next segment, and the other side's
            # packets would pass as replies.
            for t in (ETH_IP, ETH_IPV6):
                no_syn = match(
                    key, ct_state("+new", "+trk"), F("dl_type", t), F("nw_proto", TCP), F("tcp_flags", 0, TCP_SYN)
                )
                flows.append(Flow(table, 30000, no_syn, (), ck))
            flows.append(Flow(table, 30000, match(key, ct_state("-inv", "+rel", "+trk")), on, ck))
            for i, r in enumerate(fw.rules):
                if r.protocol == "ether":
                    continue
                rck, prio = rule_cookie(owner, i), RULE_TOP - i
                forward = r.direction == mine
                for fields in rule_fields(r, reverse=not forward):
                    if not forward:  # a reply in a connection the other side opened
                        m = match(key, ct_state("+rpl", "+trk"), *fields)
                        flows.append(Flow(table, prio, m, on if r.action == "allow" else (), rck))
                    elif r.action == "reject":  # the controller answers it (controller/reject.py)
                        m = match(key, ct_state("-rpl", "+trk"), *fields)
                        flows.append(Flow(table, prio, m, REJECT_ACTIONS, rck))
                    elif r.action == "allow":
                        new = match(key, ct_state("+new", "-rpl", "+trk"), *fields)
                        flows.append(Flow(table, prio, new, (commit, *on), rck))
                        est = match(key, ct_state("-new", "-rpl", "+trk"), *fields)
                        flows.append(Flow(table, prio, est, on, rck))
                    else:
                        flows.append(Flow(table, prio, match(key, ct_state("-rpl", "+trk"), *fields), (), rck))
            # Defaults. Inbound: the network's policy, for connections opened towards the
            # guest (-rpl into it, +rpl out of it); outbound: open.
            inbound = ct_state("-rpl", "+trk") if mine == "in" else ct_state("+rpl", "+trk")
            for vlan in sorted(fw.closed):
                flows.append(Flow(table, 11, match(key, F("reg6", vlan), inbound), (), ck_default))
            for t in (ETH_IP, ETH_IPV6):  # (ct commit needs the match to say IP)
                new = match(key, ct_state("+new", "-rpl", "+trk"), F("dl_type", t))
                flows.append(Flow(table, 10, new, (commit, *on), ck))
            flows.append(Flow(table, 10, match(key, ct_state("-new", "-rpl", "+trk")), on, ck))
            flows.append(Flow(table, 10, match(key, ct_state("+rpl", "+trk")), on, ck))
            flows.append(Flow(table, 1, match(key), (), ck))
    return flows


def _link_only(out: bool) -> list[tuple[int, tuple[F, ...]]]:
    """(ICMPv6 type, the fields that keep it on the link) for neighbour discovery and MLD."""
    flows: list[tuple[int, tuple[F, ...]]] = []
    for ty in ND_TYPES:
        if out:
            flows += [
                (ty, (F("nw_ttl", 255), F("ipv6_dst", *MULTICAST6))),
                (ty, (F("nw_ttl", 255), F("ipv6_dst", "fe80::", "ffc0::"))),
            ]
        else:
            flows.append((ty, (F("nw_ttl", 255),)))
    for ty in MLD_TYPES:
        flows.append((ty, (F("nw_ttl", 1), F("ipv6_dst", *MULTICAST6)) if out else (F("nw_ttl", 1), LINK_LOCAL)))
    return flows


def rule_fields(r: Rule, reverse: bool = False) -> list[tuple[F, ...]]:
    """The matches of one IP rule, as a packet of a connection it decides looks: "in" is
    from the remote to the guest, "out" from the guest to the remote; ``reverse`` for the
    other direction's packets (a reply: addresses and ports swapped, an ICMP request's
    reply type)."""
    remote_is_src = (r.direction == "in") != reverse
    port_field = "tp_src" if reverse else "tp_dst"
    out: list[tuple[F, ...]] = []
    for fam in r.families():
        base: list[F] = [F("dl_type", ETH_IP if fam == 4 else ETH_IPV6)]
        if r.proto_number is not None:
            base.append(F("nw_proto", r.proto_number))
        if r.vlan is not None:
            base.append(F("reg6", r.vlan))
        if r.icmp_type is not None:
            kind = "icmp" if fam == 4 else "icmpv6"
            if not reverse:
                base.append(F(f"{kind}_type", r.icmp_type))
                if r.icmp_code is not None:
                    base.append(F(f"{kind}_code", r.icmp_code))
            elif r.icmp_type in ICMP_REPLY[fam]:  # a reply to the request the rule names
                base.append(F(f"{kind}_type", ICMP_REPLY[fam][r.icmp_type]))
                if r.icmp_code is not None:  # (conntrack keeps the request's code in the reply's tuple)
                    base.append(F(f"{kind}_code", r.icmp_code))
            else:
                continue  # no connection has replies of it (an error is "related")
        name = ("nw_" if fam == 4 else "ipv6_") + ("src" if remote_is_src else "dst")
        remotes: list[F | None] = [_net(name, n) for n in r.remotes if n.version == fam] if r.remotes else [None]
        ports: list[F | None] = [
            F(port_field, v, None if m == 0xFFFF else m) for lo, hi in r.ports for v, m in port_masks(lo, hi)
        ] or [None]
        for rem in remotes:
            for port in ports:
                out.append(tuple(f for f in (*base, rem, port) if f is not None))
    return out


def _net(name: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> F | None:
    if net.prefixlen == 0:
        return None  # anywhere
    if net.prefixlen == net.max_prefixlen:
        return F(name, str(net.network_address))
    return F(name, str(net.network_address), str(net.netmask))
