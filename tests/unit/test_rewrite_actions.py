"""The header-rewriting actions routing and answering ARP need (set_field, move, dec_ttl,
output to IN_PORT): our bytes decode, with os-ken's parser and with OVS's own
(`ovs-ofctl ofp-parse`), to the very flows they came from, and the simulator applies them
as OVS does."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from xvif_ovs.compat import quiet_eventlet
from xvif_ovs.controller import ofmsg, wire
from xvif_ovs.pipeline.build import arp_reply, na_reply
from xvif_ovs.pipeline.flow import (
    OFPP_IN_PORT,
    Ct,
    DecTtl,
    F,
    Flow,
    FlowSet,
    Goto,
    LearnNeighbour,
    Move,
    Output,
    Resubmit,
    SetField,
    SetReg,
    cookie,
    ct_state,
    match,
)
from xvif_ovs.pipeline.sim import Switch

quiet_eventlet()
from os_ken.ofproto import ofproto_parser, ofproto_protocol, ofproto_v1_3  # noqa: E402

DP = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION)
GW_MAC, GW_IP = "00:16:3e:00:00:01", "192.0.2.1"
C = cookie(2)

ARP_REPLY = Flow(
    1,
    300,
    match(F("in_port", 5), F("dl_type", 0x0806), F("arp_op", 1), F("arp_tpa", GW_IP)),
    (
        Move("dl_src", "dl_dst"),
        SetField("dl_src", GW_MAC),
        SetField("arp_op", 2),
        Move("arp_sha", "arp_tha"),
        SetField("arp_sha", GW_MAC),
        Move("arp_spa", "arp_tpa"),
        SetField("arp_spa", GW_IP),
        Output(OFPP_IN_PORT),
    ),
    C,
)
ROUTE_V4 = Flow(
    3,
    100,
    match(F("dl_type", 0x0800), F("nw_dst", "192.0.2.5")),
    (SetField("dl_src", GW_MAC), SetField("dl_dst", "00:16:3e:00:00:05"), DecTtl(), SetReg("reg7", 9), Resubmit(5)),
    C,
)
ROUTE_V6 = Flow(
    3,
    100,
    match(F("dl_type", 0x86DD), F("ipv6_dst", "2001:db8::5")),
    (SetField("dl_src", GW_MAC), SetField("dl_dst", "00:16:3e:00:00:05"), DecTtl(), Output(9)),
    C,
)
ECHO_V6 = Flow(  # an ICMPv6 echo request answered (address and type rewritten, sent back)
    1,
    310,
    match(F("dl_type", 0x86DD), F("nw_proto", 58), F("icmpv6_type", 128), F("ipv6_dst", "2001:db8::1")),
    (
        Move("ipv6_src", "ipv6_dst"),
        SetField("ipv6_src", "2001:db8::1"),
        SetField("icmpv6_type", 129),
        Output(OFPP_IN_PORT),
    ),
    C,
)
ARP_ANY = Flow(  # the routed model's responder: any target, swapped through reg8
    3,
    110,
    match(F("in_port", 5), F("dl_type", 0x0806), F("arp_op", 1)),
    arp_reply(GW_MAC),
    C,
)
LEARN_NEIGHBOUR = Flow(
    2,
    110,
    match(F("reg5", 1, 1), F("reg6", 0), F("dl_type", 0x0806)),
    (LearnNeighbour(6, 300, 100, cookie(15)), Goto(3)),
    C,
)
NEXT_HOP = Flow(  # what the learn makes, as the controller reads it back
    6, 100, match(F("reg8", 0xC0000232)), (SetField("dl_dst", "00:16:3e:00:00:32"), SetReg("reg7", 1)), C
)
ROUTE_LOOKUP = Flow(
    3,
    60,
    match(F("in_port", 5), F("dl_type", 0x0800), F("dl_dst", GW_MAC)),
    (Move("nw_dst", "reg8"), Resubmit(6), Resubmit(7)),
    C,
)
NA_ANY = Flow(  # a solicitation becomes an advertisement (table 8 finishes it)
    3,
    110,
    match(F("in_port", 5), F("dl_type", 0x86DD), F("nw_proto", 58), F("icmpv6_type", 135)),
    na_reply(GW_MAC, 0xE0000000),
    C,
)
NA_FINISH = Flow(
    8,
    100,
    match(F("dl_type", 0x86DD), F("nw_proto", 58), F("icmpv6_type", 136)),
    (Move("dl_src", "nd_tll"), Output(OFPP_IN_PORT)),
    C,
)
LEARN_ND = [
    Flow(
        2,
        110,
        match(F("reg5", 1, 1), F("dl_type", 0x86DD), F("nw_proto", 58), F("icmpv6_type", t)),
        (LearnNeighbour(6, 300, 100, cookie(16), source), Goto(3)),
        C,
    )
    for t, source in ((135, "ns"), (136, "na"))
]
NAT_IN = Flow(  # the LAN to dom0's address: through conntrack, translated back, then table 9
    3,
    130,
    match(F("reg5", 9), F("dl_type", 0x0800), F("nw_dst", "192.0.2.254")),
    (Ct(30838, table=9, nat=""),),
    C,
)
NAT_FORWARD = Flow(  # a port forward: a new connection to 8080 goes to a guest's port 80
    9,
    110,
    match(ct_state("+new", "+trk"), F("dl_type", 0x0800), F("nw_proto", 6), F("tp_dst", 8080)),
    (Ct(30838, commit=True, nat="dst", addr="10.0.0.5", ports=(80, 80)), DecTtl(), Output(5)),
    C,
)
NAT_OUT = Flow(  # a guest's packet out: its source becomes dom0's address
    3,
    60,
    match(F("in_port", 5), F("dl_type", 0x0800), F("dl_dst", GW_MAC)),
    (Move("nw_dst", "reg8"), Ct(30838, commit=True, nat="src", addr="192.0.2.254", ports=(61000, 65535)), Resubmit(6)),
    C,
)
INVALID = Flow(9, 120, match(ct_state("+inv", "+trk"), F("dl_type", 0x0800)), (), C)
FLOWS = [
    NAT_IN,
    NAT_FORWARD,
    NAT_OUT,
    INVALID,
    ARP_REPLY,
    ROUTE_V4,
    ROUTE_V6,
    ECHO_V6,
    ARP_ANY,
    LEARN_NEIGHBOUR,
    NEXT_HOP,
    ROUTE_LOOKUP,
    NA_ANY,
    NA_FINISH,
    *LEARN_ND,
]


def decode(buf: bytes):
    version, msg_type, length, xid = ofproto_parser.header(buf)
    return ofproto_parser.msg(DP, version, msg_type, length, xid, buf)


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.render()[-40:])
def test_round_trip_through_os_ken(flow):
    back = ofmsg.flow_from_stats(ofproto_v1_3, decode(wire.flow_mod(flow, "add", 3)))
    assert back == flow, f"{flow.render()}\n{back.render()}"


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.render()[-40:])
def test_fast_encoder_and_os_ken_agree(flow):
    m = ofmsg.flow_mod(DP, flow)
    m.set_xid(3)
    m.serialize()
    assert wire.flow_mod(flow, "add", 3) == bytes(m.buf)


def test_ovs_decodes_our_bytes_to_our_rendering(tmp_path):
    """OVS's own decoder (with its prerequisite checks) reads the actions we print."""
    ofctl = shutil.which("ovs-ofctl")
    assert ofctl, "ovs-ofctl is missing: deploy/setup.sh installs openvswitch-switch"
    blob = tmp_path / "flows.of"
    blob.write_bytes(b"".join(wire.flow_mod(f, "add", i) for i, f in enumerate(FLOWS)))
    out = subprocess.run([ofctl, "ofp-parse", str(blob)], capture_output=True, text=True, check=True).stdout
    assert "error" not in out, out
    ours = [f.render().split(" actions=")[1] for f in FLOWS]
    theirs = [line.split(" actions=")[1] for line in out.splitlines() if " actions=" in line]
    assert theirs == ours


def test_the_simulator_answers_arp_and_routes_as_ovs_would():
    steer = [Flow(0, 10, match(F("in_port", 5)), (Goto(1),), C), Flow(0, 5, (), (Goto(3),), C)]
    sw = Switch(FlowSet([*steer, ARP_REPLY, ROUTE_V4, Flow(5, 100, match(F("reg7", 9)), (Output(9),), C)]))
    guest = "00:16:3e:00:00:07"
    req = {"dl_src": guest, "dl_dst": "ff:ff:ff:ff:ff:ff", "dl_type": 0x0806, "arp_op": 1}
    req |= {"arp_sha": guest, "arp_spa": "192.0.2.7", "arp_tha": "00:00:00:00:00:00", "arp_tpa": GW_IP}
    (reply,) = sw.send(5, req).deliveries
    assert reply.port == 5  # back out of the port it came in on
    assert {k: reply.fields[k] for k in ("dl_src", "dl_dst", "arp_op", "arp_sha", "arp_spa", "arp_tha", "arp_tpa")} == {
        "dl_src": GW_MAC,
        "dl_dst": guest,
        "arp_op": 2,
        "arp_sha": GW_MAC,
        "arp_spa": GW_IP,
        "arp_tha": guest,
        "arp_tpa": "192.0.2.7",
    }
    ip = {"dl_src": guest, "dl_dst": GW_MAC, "dl_type": 0x0800, "nw_src": "192.0.2.7", "nw_dst": "192.0.2.5"}
    (routed,) = sw.send(7, ip | {"nw_ttl": 64}).deliveries
    assert (routed.port, routed.fields["nw_ttl"], routed.fields["dl_src"], routed.fields["dl_dst"]) == (
        9,
        63,
        GW_MAC,
        "00:16:3e:00:00:05",
    )
    assert sw.send(7, ip | {"nw_ttl": 1}).deliveries == []  # its TTL would reach zero: dropped


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: SetField("reg5", 1), "rewrites only"),
        (lambda: Move("dl_src", "nw_src"), "differ in width"),
        (lambda: Move("vlan_tci", "dl_src"), "moves only"),
    ],
)
def test_rewrites_outside_the_declared_set_are_refused(make, why):
    with pytest.raises(ValueError, match=why):
        make()
