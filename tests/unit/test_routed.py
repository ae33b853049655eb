"""The routed model (Xen's vif-route, in flows): what the LAN, dom0 and each guest see,
pushed through the simulator. The lab test (tests/lab/test_routed_lab.py) shows real OVS
and real Linux hosts agree."""

from __future__ import annotations

import dataclasses

import pytest
from ovsdecode import assert_ovs_accepts

from xvif_ovs.model.host import BridgeModel, VifModel
from xvif_ovs.model.vifspec import parse_ips, vif_vlans
from xvif_ovs.pipeline.build import Builder, build
from xvif_ovs.pipeline.flow import OFPP_LOCAL
from xvif_ovs.pipeline.sim import Switch

UPLINK, LAN_MAC, LAN_IP = 1, "00:16:3e:aa:00:01", "192.0.2.50"
ROUTER = "02:00:00:00:00:fe"  # the bridge's LOCAL MAC
DOM0_IP = "192.0.2.1"
A_MAC, B_MAC, C_MAC = "00:16:3e:00:00:0a", "00:16:3e:00:00:0b", "00:16:3e:00:00:0c"
A_IP, B_IP = "192.0.2.10", "192.0.2.11"


def vif(domid: int, mac: str, ip: str, port: int, bridge: str = "xenbr1", **kw) -> VifModel:
    return VifModel(domid, 0, mac, vif_vlans(bridge, None), parse_ips(ip), vif_port=port, name=f"d{domid}", **kw)


def routed(*vifs: VifModel, router: str = ROUTER) -> BridgeModel:
    return BridgeModel("xenbr1", (UPLINK,), vifs=vifs, mode="routed", router_mac=router)


A6, B6, LAN6 = "2001:db8::10", "2001:db8::11", "2001:db8::50"
A, B, C = vif(10, A_MAC, f"{A_IP} {A6}", 10), vif(11, B_MAC, f"{B_IP} {B6}", 11), vif(12, C_MAC, "", 12)


@pytest.fixture
def sw() -> Switch:
    return Switch(build(routed(A, B, C)))


def arp_request(src_mac: str, src_ip: str, target: str) -> dict:
    return {
        "dl_src": src_mac,
        "dl_dst": "ff:ff:ff:ff:ff:ff",
        "dl_type": 0x0806,
        "arp_op": 1,
        "arp_sha": src_mac,
        "arp_spa": src_ip,
        "arp_tha": "00:00:00:00:00:00",
        "arp_tpa": target,
    }


def ip(src_mac: str, dst_mac: str, src: str, dst: str, ttl: int = 64) -> dict:
    return {"dl_src": src_mac, "dl_dst": dst_mac, "dl_type": 0x0800, "nw_src": src, "nw_dst": dst, "nw_ttl": ttl}


def arp_fields(d) -> tuple:
    f = d.fields
    return (d.port, f["dl_src"], f["dl_dst"], f["arp_op"], f["arp_sha"], f["arp_spa"], f["arp_tha"], f["arp_tpa"])


def test_the_lan_asking_for_a_guest_gets_dom0s_mac_and_the_guest_hears_nothing(sw):
    (reply,) = sw.send(UPLINK, arp_request(LAN_MAC, LAN_IP, A_IP)).deliveries
    assert arp_fields(reply) == (UPLINK, ROUTER, LAN_MAC, 2, ROUTER, A_IP, LAN_MAC, LAN_IP)


def test_dom0_asking_for_a_guest_gets_the_guests_own_mac_and_reaches_it_directly(sw):
    (reply,) = sw.send(OFPP_LOCAL, arp_request(ROUTER, DOM0_IP, A_IP)).deliveries
    assert arp_fields(reply) == (OFPP_LOCAL, A_MAC, ROUTER, 2, A_MAC, A_IP, ROUTER, DOM0_IP)
    (d,) = sw.send(OFPP_LOCAL, ip(ROUTER, A_MAC, DOM0_IP, A_IP)).deliveries
    assert (d.port, d.fields["nw_ttl"]) == (10, 64)  # one link: not routed


def test_the_lan_reaches_a_guest_routed(sw):
    (d,) = sw.send(UPLINK, ip(LAN_MAC, ROUTER, LAN_IP, A_IP)).deliveries
    assert (d.port, d.fields["dl_src"], d.fields["dl_dst"], d.fields["nw_ttl"]) == (10, ROUTER, A_MAC, 63)
    assert sw.send(UPLINK, ip(LAN_MAC, ROUTER, LAN_IP, A_IP, ttl=1)).deliveries == []


def test_the_lan_never_reaches_a_guests_mac(sw):
    """Sent to a guest's MAC, a frame from the LAN is switched as any unknown unicast: to
    dom0 at most, never to the guest (whose MAC the LAN should not even know)."""
    out = sw.send(UPLINK, ip(LAN_MAC, A_MAC, LAN_IP, A_IP)).ports
    assert 10 not in out and out <= {OFPP_LOCAL}


def test_a_guest_asking_for_anything_gets_dom0s_mac(sw):
    for target in (LAN_IP, DOM0_IP, B_IP, "198.51.100.7"):
        (reply,) = sw.send(10, arp_request(A_MAC, A_IP, target)).deliveries
        assert arp_fields(reply) == (10, ROUTER, A_MAC, 2, ROUTER, target, A_MAC, A_IP)


def test_a_guest_asking_for_its_own_address_gets_no_answer(sw):
    assert sw.send(10, arp_request(A_MAC, A_IP, A_IP)).deliveries == []


def test_guest_to_guest_is_routed(sw):
    (d,) = sw.send(10, ip(A_MAC, ROUTER, A_IP, B_IP)).deliveries
    assert (d.port, d.fields["dl_src"], d.fields["dl_dst"], d.fields["nw_ttl"]) == (11, ROUTER, B_MAC, 63)


def test_a_guest_reaches_an_unknown_next_hop_through_dom0_once_then_in_the_datapath(sw):
    first = sw.send(10, ip(A_MAC, ROUTER, A_IP, LAN_IP))
    (d,) = first.deliveries
    assert (d.port, d.fields["dl_dst"], d.fields["nw_ttl"]) == (OFPP_LOCAL, ROUTER, 64)  # dom0 routes it
    # dom0 (or the LAN host itself) sends ARP; the bridge learns the LAN host from it.
    sw.send(UPLINK, arp_request(LAN_MAC, LAN_IP, DOM0_IP))
    (d,) = sw.send(10, ip(A_MAC, ROUTER, A_IP, LAN_IP)).deliveries
    assert (d.port, d.fields["dl_src"], d.fields["dl_dst"], d.fields["nw_ttl"]) == (UPLINK, ROUTER, LAN_MAC, 63)


def test_dom0_is_learned_as_a_neighbour_from_its_arp(sw):
    sw.send(OFPP_LOCAL, arp_request(ROUTER, DOM0_IP, LAN_IP))
    (d,) = sw.send(10, ip(A_MAC, ROUTER, A_IP, DOM0_IP)).deliveries
    assert (d.port, d.fields["dl_dst"]) == (OFPP_LOCAL, ROUTER)


def test_a_guest_cannot_teach_the_neighbour_table(sw):
    """A guest's ARP (even one claiming the LAN host's address from its own) is answered,
    never learned: only the LAN and dom0 fill table 6."""
    sw.send(10, arp_request(A_MAC, A_IP, LAN_IP))
    (d,) = sw.send(11, ip(B_MAC, ROUTER, B_IP, A_IP)).deliveries  # routed by its own flow, not learned
    assert d.port == 10
    (d,) = sw.send(11, ip(B_MAC, ROUTER, B_IP, LAN_IP)).deliveries
    assert d.port == OFPP_LOCAL  # still unknown


def test_nothing_is_switched_from_a_routed_guest(sw):
    for frame in (
        ip(A_MAC, "ff:ff:ff:ff:ff:ff", A_IP, "192.0.2.255"),  # a broadcast
        ip(A_MAC, LAN_MAC, A_IP, LAN_IP),  # straight to a LAN MAC
        ip(A_MAC, B_MAC, A_IP, B_IP),  # straight to another guest's MAC
        {**arp_request(A_MAC, A_IP, LAN_IP), "arp_op": 2},  # an ARP reply nobody asked for
    ):
        assert sw.send(10, frame).deliveries == [], frame


def test_spoofs_from_a_routed_guest_are_dropped_and_counted():
    bridge = routed(A, B)
    sw = Switch(build(bridge))
    for frame in (
        ip(A_MAC, ROUTER, "192.0.2.99", LAN_IP),  # a foreign source address
        ip("00:16:3e:00:00:99", ROUTER, A_IP, LAN_IP),  # a foreign source MAC
        arp_request(A_MAC, B_IP, LAN_IP),  # ARP from another guest's address
        {**arp_request(A_MAC, A_IP, LAN_IP), "arp_sha": B_MAC},  # ARP with a foreign sender MAC
    ):
        t = sw.send(10, frame)
        assert t.deliveries == [], frame
        assert any(h.cookie & 0xFF << 40 == 4 << 40 for h in t.hits), frame  # a P_DROP flow counted it


def test_a_guest_without_an_address_gets_nothing_routed(sw):
    assert sw.send(12, arp_request(C_MAC, "192.0.2.12", LAN_IP)).deliveries == []
    assert sw.send(12, ip(C_MAC, ROUTER, "192.0.2.12", LAN_IP)).deliveries == []
    assert sw.send(UPLINK, arp_request(LAN_MAC, LAN_IP, "192.0.2.12")).ports <= {OFPP_LOCAL}


def test_a_private_guest_is_reached_by_the_lan_and_dom0_and_no_guest():
    sw = Switch(build(routed(dataclasses.replace(A, private=True), B)))
    assert sw.send(11, ip(B_MAC, ROUTER, B_IP, A_IP)).deliveries == []
    assert sw.send(10, ip(A_MAC, ROUTER, A_IP, B_IP)).deliveries == []
    assert sw.send(UPLINK, ip(LAN_MAC, ROUTER, LAN_IP, A_IP)).ports == {10}


def test_a_vlan_or_an_unknown_router_mac_routes_nothing():
    tagged = vif(13, "00:16:3e:00:00:0d", "192.0.2.13", 13, bridge="xenbr1.10")
    sw = Switch(build(routed(A, tagged)))
    assert sw.send(UPLINK, arp_request(LAN_MAC, LAN_IP, "192.0.2.13")).ports <= {OFPP_LOCAL}
    sw = Switch(build(routed(A, router="")))
    assert sw.send(UPLINK, arp_request(LAN_MAC, LAN_IP, A_IP)).ports == {OFPP_LOCAL}  # flooded, unanswered
    assert sw.send(10, ip(A_MAC, ROUTER, A_IP, LAN_IP)).deliveries == []


def test_the_incremental_build_agrees_with_the_full_one_through_changes():
    b = Builder()
    models = [
        routed(A, B, C),
        routed(dataclasses.replace(A, ips=parse_ips("192.0.2.20")), B, C),
        routed(
            dataclasses.replace(A, ips=parse_ips("192.0.2.20")), B, dataclasses.replace(C, ips=parse_ips("192.0.2.12"))
        ),
        routed(A, B, C, router="02:00:00:00:00:fd"),
        dataclasses.replace(routed(A, B, C), mode="bridged", router_mac=""),
        routed(A, B, C),
    ]
    for m in models:
        assert b.build_parts(m).flowset().render() == build(m).render()


def test_ovs_accepts_every_flow_of_a_routed_bridge(tmp_path):
    """OVS's own decoder, with its checks of each action's prerequisites (dec_ttl and the
    ARP rewrites need the match to say IPv4 and ARP), reads every flow we would send."""
    flows = build(routed(A, B, C, vif(13, "00:16:3e:00:00:0d", "10.0.0.0/24", 13))).flows
    assert_ovs_accepts(flows, tmp_path)


# -- IPv6 ------------------------------------------------------------------------------------


def ns(src_mac: str, src: str, target: str, sll: str | None = None) -> dict:
    return {
        "dl_src": src_mac,
        "dl_dst": "33:33:ff:00:00:01",
        "dl_type": 0x86DD,
        "nw_proto": 58,
        "ipv6_src": src,
        "ipv6_dst": "ff02::1:ff00:1",
        "icmpv6_type": 135,
        "nd_target": target,
        "nd_sll": src_mac if sll is None else sll,
        "nd_reserved": 0,
        "nd_options_type": 1,
    }


def ip6(src_mac: str, dst_mac: str, src: str, dst: str, ttl: int = 64) -> dict:
    return {
        "dl_src": src_mac,
        "dl_dst": dst_mac,
        "dl_type": 0x86DD,
        "nw_proto": 17,
        "ipv6_src": src,
        "ipv6_dst": dst,
        "nw_ttl": ttl,
    }


def na_fields(d) -> tuple:
    f = d.fields
    return (
        d.port,
        f["dl_src"],
        f["dl_dst"],
        f["ipv6_src"],
        f["ipv6_dst"],
        f["icmpv6_type"],
        f["nd_target"],
        f["nd_reserved"],
        f["nd_options_type"],
        f["nd_tll"],
    )


def test_the_lan_soliciting_a_guests_ipv6_address_gets_dom0s_mac(sw):
    (na,) = sw.send(UPLINK, ns(LAN_MAC, LAN6, A6)).deliveries
    assert na_fields(na) == (UPLINK, ROUTER, LAN_MAC, A6, LAN6, 136, A6, 0x60000000, 2, ROUTER)


def test_dom0_soliciting_a_guest_gets_its_own_mac(sw):
    (na,) = sw.send(OFPP_LOCAL, ns(ROUTER, "2001:db8::fe", A6)).deliveries
    assert na_fields(na)[:2] == (OFPP_LOCAL, A_MAC) and na.fields["nd_tll"] == A_MAC


def test_duplicate_address_detection_for_a_guests_address_is_not_answered(sw):
    assert sw.send(UPLINK, ns(LAN_MAC, "::", A6, sll="00:00:00:00:00:00")).deliveries == []
    assert sw.send(10, ns(A_MAC, "::", A6, sll="00:00:00:00:00:00")).deliveries == []


def test_a_guest_soliciting_anything_gets_the_gateway_dom0s_mac_with_the_router_flag(sw):
    for target in (LAN6, B6, "fe80::1"):
        (na,) = sw.send(10, ns(A_MAC, A6, target)).deliveries
        assert na_fields(na) == (10, ROUTER, A_MAC, target, A6, 136, target, 0xE0000000, 2, ROUTER)


def test_ipv6_between_the_lan_and_guests_is_routed_and_next_hops_are_learned(sw):
    (d,) = sw.send(UPLINK, ip6(LAN_MAC, ROUTER, LAN6, A6)).deliveries
    assert (d.port, d.fields["dl_src"], d.fields["dl_dst"], d.fields["nw_ttl"]) == (10, ROUTER, A_MAC, 63)
    (d,) = sw.send(10, ip6(A_MAC, ROUTER, A6, B6)).deliveries
    assert (d.port, d.fields["dl_dst"]) == (11, B_MAC)
    (d,) = sw.send(10, ip6(A_MAC, ROUTER, A6, LAN6)).deliveries
    assert (d.port, d.fields["nw_ttl"]) == (OFPP_LOCAL, 64)  # unknown: dom0 routes it
    sw.send(UPLINK, ns(LAN_MAC, LAN6, "2001:db8::fe"))  # the LAN host solicits dom0: learned
    (d,) = sw.send(10, ip6(A_MAC, ROUTER, A6, LAN6)).deliveries
    assert (d.port, d.fields["dl_src"], d.fields["dl_dst"], d.fields["nw_ttl"]) == (UPLINK, ROUTER, LAN_MAC, 63)
    other = "2001:db8::51"
    sw.send(
        UPLINK,
        {**ns(LAN_MAC, LAN6, other), "icmpv6_type": 136, "nd_tll": "00:16:3e:aa:00:02", "dl_src": "00:16:3e:aa:00:02"},
    )
    (d,) = sw.send(10, ip6(A_MAC, ROUTER, A6, other)).deliveries
    assert (d.port, d.fields["dl_dst"]) == (UPLINK, "00:16:3e:aa:00:02")  # learned from an advertisement


def test_a_solicitation_without_a_link_layer_option_teaches_nothing(sw):
    sw.send(UPLINK, ns(LAN_MAC, LAN6, "2001:db8::fe", sll="00:00:00:00:00:00"))
    (d,) = sw.send(10, ip6(A_MAC, ROUTER, A6, LAN6)).deliveries
    assert d.port == OFPP_LOCAL


def test_a_guests_link_local_traffic_is_not_routed(sw):
    assert sw.send(10, ip6(A_MAC, ROUTER, "fe80::216:3eff:fe00:a", "fe80::1")).deliveries == []


def test_a_guest_with_only_ipv6_is_routed():
    d6 = vif(14, "00:16:3e:00:00:0e", "2001:db8::14", 14)
    sw = Switch(build(routed(A, d6)))
    (d,) = sw.send(UPLINK, ip6(LAN_MAC, ROUTER, LAN6, "2001:db8::14")).deliveries
    assert d.port == 14


def test_nd_spoofs_from_a_routed_guest_are_dropped_and_counted(sw):
    for frame in (
        {**ns(A_MAC, A6, B6), "icmpv6_type": 136, "nd_tll": A_MAC},  # advertises another guest's address
        ns(A_MAC, A6, LAN6, sll=B_MAC),  # a solicitation with a foreign link-layer address
        ns(A_MAC, B6, LAN6),  # from another guest's address
    ):
        t = sw.send(10, frame)
        assert t.deliveries == [], frame
        assert any((h.cookie >> 40) & 0xFF == 4 for h in t.hits), frame  # a P_DROP flow counted it
