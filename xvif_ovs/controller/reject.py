"""A firewall rule's "reject": the answer a host would give for a closed port, made here
because a flow cannot make it (OVS cannot set TCP flags, nor build an ICMP error around
the packet). The rule's flows send the packet here through a meter (tables 11 and 13,
pipeline/firewall.py), so at most REJECT_RATE a second per bridge arrive, and each gets:
- TCP: a reset (RFC 9293: ACK set, or the sequence number the segment acknowledged);
- anything else: ICMP destination unreachable, port unreachable for UDP and
  administratively prohibited otherwise (ICMPv6 for IPv6), quoting the packet.
No answer to a reset, to an ICMP error, or to a broadcast or multicast destination
(RFC 1122 4.2.3.10, 3.2.2). The answer goes back into the pipeline as the other side
would send it: a reject of a packet towards a guest leaves as the guest's own (through
table 3, so it is switched, routed or translated like its other packets); a reject of a
packet from a guest is delivered to it (table 5).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from os_ken.lib.packet import ethernet, icmp, icmpv6, ipv4, ipv6, packet, tcp

from ..model.host import VifModel
from ..pipeline.build import FROM_PRIVATE, FROM_VIF
from ..pipeline.tables import EGRESS, FORWARD, FW_IN_CT

log = logging.getLogger("xvif_ovs.controller")
ETH_IP, ETH_IPV6 = 0x0800, 0x86DD
ICMP_REQUESTS = {8, 13, 15, 17}  # echo, timestamp, information, address mask: not errors
ICMPV6_ERRORS = range(0, 128)


def answer(data: bytes, guest: VifModel | None = None, towards_guest: bool = True) -> bytes | None:
    """The reply to the rejected frame ``data`` (Ethernet, no VLAN tag), or None. With
    ``guest``: only for a frame addressed to it (``towards_guest``) or sent by it, so that
    no answer ever speaks for another host (an unknown unicast frame flooded to the guest
    is not the guest's to refuse)."""
    pkt = packet.Packet(data)
    eth = pkt.get_protocol(ethernet.ethernet)
    ip4, ip6 = pkt.get_protocol(ipv4.ipv4), pkt.get_protocol(ipv6.ipv6)
    if eth is None or (ip4 is None and ip6 is None):
        return None
    src, dst = (ip4.src, ip4.dst) if ip4 else (ip6.src, ip6.dst)
    d, s_ = ipaddress.ip_address(dst), ipaddress.ip_address(src)
    if d.is_multicast or dst == "255.255.255.255" or int(eth.dst.split(":")[0], 16) & 1:
        return None
    if s_.is_multicast or s_.is_unspecified or src == "255.255.255.255" or int(eth.src.split(":")[0], 16) & 1:
        return None  # nobody to answer
    if guest is not None:
        mac, mine = (eth.dst, d) if towards_guest else (eth.src, s_)
        if mac.lower() != guest.mac.lower():
            return None
        if guest.ips and not any(mine in ip.network for ip in guest.ips) and not mine.is_link_local:
            return None
    orig = data[14:]
    proto = ip4.proto if ip4 else ip6.nxt
    out = packet.Packet()
    out.add_protocol(ethernet.ethernet(dst=eth.src, src=eth.dst, ethertype=eth.ethertype))
    t = pkt.get_protocol(tcp.tcp)
    if t is not None:
        if t.bits & tcp.TCP_RST:
            return None
        l4_len = (ip4.total_length - ip4.header_length * 4) if ip4 else ip6.payload_length
        seg = l4_len - t.offset * 4 + (1 if t.bits & tcp.TCP_SYN else 0) + (1 if t.bits & tcp.TCP_FIN else 0)
        if t.bits & tcp.TCP_ACK:
            rst = tcp.tcp(src_port=t.dst_port, dst_port=t.src_port, seq=t.ack, bits=tcp.TCP_RST)
        else:
            rst = tcp.tcp(
                src_port=t.dst_port, dst_port=t.src_port, ack=(t.seq + seg) & 0xFFFFFFFF, bits=tcp.TCP_RST | tcp.TCP_ACK
            )
        out.add_protocol(_ip(ip4, ip6, dst, src, 6))
        out.add_protocol(rst)
    elif ip4 is not None:
        if proto == 1 and pkt.get_protocol(icmp.icmp) and pkt.get_protocol(icmp.icmp).type not in ICMP_REQUESTS:
            return None
        quote = orig[: ip4.header_length * 4 + 8]
        out.add_protocol(_ip(ip4, ip6, dst, src, 1))
        out.add_protocol(icmp.icmp(type_=3, code=3 if proto == 17 else 13, data=icmp.dest_unreach(data=quote)))
    else:
        e6 = pkt.get_protocol(icmpv6.icmpv6)
        if proto == 58 and e6 is not None and e6.type_ in ICMPV6_ERRORS:
            return None
        out.add_protocol(_ip(ip4, ip6, dst, src, 58))
        out.add_protocol(icmpv6.icmpv6(type_=1, code=4 if proto == 17 else 1, data=b"\0\0\0\0" + orig[:1232]))
    out.serialize()
    return bytes(out.data)


def _ip(ip4: Any, ip6: Any, src: str, dst: str, proto: int) -> Any:
    if ip4 is not None:
        return ipv4.ipv4(src=src, dst=dst, proto=proto, ttl=64)
    return ipv6.ipv6(src=src, dst=dst, nxt=proto, hop_limit=64)


def respond(dp: Any, msg: Any, guests: dict[int, tuple[VifModel, bool]]) -> bool:
    """Answer one rejected packet-in; False if it gets no answer. ``guests``: the bridge's
    vifs (and whether each is private) by port."""
    m = msg.match
    towards = msg.table_id == FW_IN_CT
    found = guests.get(m.get("reg7") if towards else m.get("in_port"))
    if found is None:
        return False
    guest, private = found
    reply = answer(bytes(msg.data), guest, towards)
    if reply is None:
        return False
    ofp, parser = dp.ofproto, dp.ofproto_parser
    vlan = m.get("reg6", 0)
    if towards:  # it was going to the guest: the guest answers it
        in_port = m.get("reg7")
        actions = [
            parser.OFPActionSetField(reg5=FROM_PRIVATE if private else FROM_VIF),
            parser.OFPActionSetField(reg6=vlan),
            parser.NXActionResubmitTable(table_id=FORWARD),
        ]
    else:  # the guest sent it: it is answered
        in_port = ofp.OFPP_CONTROLLER
        actions = [
            parser.OFPActionSetField(reg6=vlan),
            parser.OFPActionSetField(reg7=m.get("in_port")),
            parser.NXActionResubmitTable(table_id=EGRESS),
        ]
    if in_port is None:
        return False
    dp.send_msg(parser.OFPPacketOut(dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=in_port, actions=actions, data=reply))
    return True
