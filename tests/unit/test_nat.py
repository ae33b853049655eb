"""The NAT model (Xen's vif-nat, in flows and OVS's conntrack), pushed through the
simulator and its conntrack: what the LAN sees, what comes back, what never gets in. The
lab test (tests/lab/test_nat_lab.py) shows real OVS conntrack and real hosts agree."""

from __future__ import annotations

import pytest
from ovsdecode import assert_ovs_accepts

from xvif_ovs.model.host import BridgeModel, NatSpec, PortForward, VifModel
from xvif_ovs.model.vifspec import parse_ips, vif_vlans
from xvif_ovs.pipeline.build import P_DROP, build
from xvif_ovs.pipeline.flow import OFPP_LOCAL
from xvif_ovs.pipeline.sim import Switch

UPLINK, LAN_MAC, LAN_IP = 1, "00:16:3e:aa:00:01", "192.0.2.50"
ROUTER, ADDRESS = "02:00:00:00:00:fe", "192.0.2.254"
N5_MAC, N6_MAC = "00:16:3e:00:00:05", "00:16:3e:00:00:06"
NAT = NatSpec(ADDRESS, "10.0.0.0/24", "10.0.0.1", 30838, (PortForward("tcp", 8080, "10.0.0.5", 80),))


def vif(domid: int, mac: str, ip: str, **kw) -> VifModel:
    return VifModel(domid, 0, mac, vif_vlans("xennat", None), parse_ips(ip), vif_port=domid, name=f"d{domid}", **kw)


def bridge(*vifs: VifModel, nat: NatSpec = NAT) -> BridgeModel:
    return BridgeModel("xennat", (UPLINK,), vifs=vifs, mode="nat", router_mac=ROUTER, nat=nat)


N5, N6 = vif(5, N5_MAC, "10.0.0.5"), vif(6, N6_MAC, "10.0.0.6")
N7, N8 = vif(7, "00:16:3e:00:00:07", ""), vif(8, "00:16:3e:00:00:08", "192.0.2.8")


@pytest.fixture
def sw() -> Switch:
    s = Switch(build(bridge(N5, N6, N7, N8)))
    # The LAN host speaks first (its ARP for dom0): the bridge learns where it is.
    arp = {"dl_src": LAN_MAC, "dl_dst": "ff:ff:ff:ff:ff:ff", "dl_type": 0x0806, "arp_op": 1, "arp_sha": LAN_MAC}
    s.send(UPLINK, arp | {"arp_spa": LAN_IP, "arp_tha": "00:00:00:00:00:00", "arp_tpa": ADDRESS})
    return s


def udp(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int, proto: int = 17) -> dict:
    return {
        "dl_src": src_mac,
        "dl_dst": dst_mac,
        "dl_type": 0x0800,
        "nw_proto": proto,
        "nw_src": src,
        "nw_dst": dst,
        "tp_src": sport,
        "tp_dst": dport,
        "nw_ttl": 64,
    }


def seen(d) -> tuple:
    f = d.fields
    return (d.port, f["dl_src"], f["dl_dst"], f["nw_src"], f["nw_dst"], f["tp_src"], f["tp_dst"], f["nw_ttl"])


def test_a_guest_leaves_with_dom0s_address_and_the_reply_comes_back_to_it(sw):
    (out,) = sw.send(5, udp(N5_MAC, ROUTER, "10.0.0.5", LAN_IP, 40000, 53)).deliveries
    assert seen(out) == (UPLINK, ROUTER, LAN_MAC, ADDRESS, LAN_IP, 61000, 53, 63)  # its port: outside the range
    (back,) = sw.send(UPLINK, udp(LAN_MAC, ROUTER, LAN_IP, ADDRESS, 53, 61000)).deliveries
    assert seen(back) == (5, ROUTER, N5_MAC, LAN_IP, "10.0.0.5", 53, 40000, 63)
    (again,) = sw.send(5, udp(N5_MAC, ROUTER, "10.0.0.5", LAN_IP, 40000, 53)).deliveries
    assert seen(again)[3:6] == (ADDRESS, LAN_IP, 61000)  # the same mapping


def test_nothing_from_the_lan_reaches_a_nat_guest_unasked(sw):
    # To dom0's address on a port nobody forwarded: dom0's own (its services), no guest's.
    assert sw.send(UPLINK, udp(LAN_MAC, ROUTER, LAN_IP, ADDRESS, 5000, 40000)).ports == {OFPP_LOCAL}
    # Straight to a guest's private address, at dom0's MAC: dropped.
    assert sw.send(UPLINK, udp(LAN_MAC, ROUTER, LAN_IP, "10.0.0.5", 5000, 40000)).deliveries == []
    # ARP for it is not answered by the bridge (the LAN never learns it): flooded to dom0 at most.
    arp = {"dl_src": LAN_MAC, "dl_dst": "ff:ff:ff:ff:ff:ff", "dl_type": 0x0806, "arp_op": 1, "arp_sha": LAN_MAC}
    t = sw.send(UPLINK, arp | {"arp_spa": LAN_IP, "arp_tha": "00:00:00:00:00:00", "arp_tpa": "10.0.0.5"})
    assert t.ports <= {OFPP_LOCAL}


def test_a_port_forward_reaches_its_guest_and_its_replies_leave_as_dom0(sw):
    (d,) = sw.send(UPLINK, udp(LAN_MAC, ROUTER, LAN_IP, ADDRESS, 33000, 8080, proto=6)).deliveries
    assert seen(d) == (5, ROUTER, N5_MAC, LAN_IP, "10.0.0.5", 33000, 80, 63)
    (r,) = sw.send(5, udp(N5_MAC, ROUTER, "10.0.0.5", LAN_IP, 80, 33000, proto=6)).deliveries
    assert seen(r)[:7] == (UPLINK, ROUTER, LAN_MAC, ADDRESS, LAN_IP, 8080, 33000)
    # udp 8080 is not forwarded
    assert sw.send(UPLINK, udp(LAN_MAC, ROUTER, LAN_IP, ADDRESS, 33000, 8080)).ports == {OFPP_LOCAL}


def test_guests_reach_each_other_and_their_gateway_untranslated(sw):
    (d,) = sw.send(5, udp(N5_MAC, ROUTER, "10.0.0.5", "10.0.0.6", 1, 2)).deliveries
    assert seen(d)[:5] == (6, ROUTER, N6_MAC, "10.0.0.5", "10.0.0.6")
    (g,) = sw.send(5, udp(N5_MAC, ROUTER, "10.0.0.5", "10.0.0.1", 1, 53)).deliveries
    assert (g.port, g.fields["nw_src"]) == (OFPP_LOCAL, "10.0.0.5")
    assert sw.send(5, udp(N5_MAC, ROUTER, "10.0.0.5", "10.0.0.99", 1, 2)).deliveries == []  # nobody has it


def test_an_unknown_next_hop_goes_through_dom0_once_and_is_translated_on_its_way_out(sw):
    far = "198.51.100.7"
    (d,) = sw.send(5, udp(N5_MAC, ROUTER, "10.0.0.5", far, 40001, 53)).deliveries
    assert (d.port, d.fields["nw_src"], d.fields["nw_ttl"]) == (OFPP_LOCAL, "10.0.0.5", 64)  # untranslated
    # dom0 routes it back out through the bridge, to the next hop it resolved: translated then.
    (out,) = sw.send(OFPP_LOCAL, udp(ROUTER, LAN_MAC, "10.0.0.5", far, 40001, 53)).deliveries
    assert seen(out)[:6] == (UPLINK, ROUTER, LAN_MAC, ADDRESS, far, 61000)
    (back,) = sw.send(UPLINK, udp(LAN_MAC, ROUTER, far, ADDRESS, 53, 61000)).deliveries
    assert seen(back)[:7] == (5, ROUTER, N5_MAC, far, "10.0.0.5", 53, 40001)


def test_dom0s_own_connections_from_its_address_stay_dom0s(sw):
    (out,) = sw.send(OFPP_LOCAL, udp(ROUTER, LAN_MAC, ADDRESS, LAN_IP, 33333, 53)).deliveries
    assert seen(out)[:6] == (UPLINK, ROUTER, LAN_MAC, ADDRESS, LAN_IP, 33333)  # untranslated, recorded
    assert sw.send(UPLINK, udp(LAN_MAC, ROUTER, LAN_IP, ADDRESS, 53, 33333)).ports == {OFPP_LOCAL}


def test_guests_without_an_address_on_the_nat_network_get_nothing(sw):
    for port, mac, src in ((7, N7.mac, "10.0.0.7"), (8, N8.mac, "192.0.2.8")):
        assert sw.send(port, udp(mac, ROUTER, src, LAN_IP, 1, 2)).deliveries == []


def test_spoofs_from_a_nat_guest_are_dropped_and_counted(sw):
    for frame in (
        udp(N5_MAC, ROUTER, "10.0.0.6", LAN_IP, 1, 2),  # another guest's address
        udp(N5_MAC, ROUTER, ADDRESS, LAN_IP, 1, 2),  # dom0's
        udp("00:16:3e:00:00:99", ROUTER, "10.0.0.5", LAN_IP, 1, 2),  # a foreign MAC
    ):
        t = sw.send(5, frame)
        assert t.deliveries == [] and any((h.cookie >> 40) & 0xFF == P_DROP for h in t.hits), frame


def test_a_forward_to_a_guest_that_is_not_there_leaves_the_port_to_dom0():
    nat = NatSpec(ADDRESS, "10.0.0.0/24", "10.0.0.1", 30838)  # hostmodel left the forward out
    sw = Switch(build(bridge(N5, nat=nat)))
    assert sw.send(UPLINK, udp(LAN_MAC, ROUTER, LAN_IP, ADDRESS, 33000, 8080, proto=6)).ports == {OFPP_LOCAL}


def test_ovs_accepts_every_flow_of_a_nat_bridge(tmp_path):
    flows = build(bridge(N5, N6, N7, N8)).flows
    assert_ovs_accepts(flows, tmp_path)


def test_a_guest_without_an_address_reaches_dom0s_dhcp_server_and_hears_its_answer(sw):
    discover = udp(N7.mac, "ff:ff:ff:ff:ff:ff", "0.0.0.0", "255.255.255.255", 68, 67)
    assert sw.send(7, discover).ports == {OFPP_LOCAL}
    offer = udp(ROUTER, N7.mac, "10.0.0.1", "10.0.0.7", 67, 68)  # dnsmasq unicasts to its MAC
    assert sw.send(OFPP_LOCAL, offer).ports == {7}
    assert sw.send(7, udp(N7.mac, ROUTER, "0.0.0.0", LAN_IP, 68, 53)).deliveries == []  # nothing else


def test_the_dhcp_allocator_takes_the_lowest_free_addresses():
    from xvif_ovs.controller.dhcp import allocate, hosts, wanting

    assert allocate(NAT, ["10.0.0.2", "10.0.0.4"], 3) == ["10.0.0.3", "10.0.0.5", "10.0.0.6"]  # .1 is the gateway
    small = NatSpec(ADDRESS, "10.0.0.0/30", "10.0.0.1", 1)
    assert allocate(small, [], 5) == ["10.0.0.2"]  # full after one
    model = bridge(N5, N7)
    keys = {(5, 0): {"ip": "10.0.0.5"}, (7, 0): {}}
    assert wanting(model, keys) == ([(7, 0)], {"10.0.0.5"})
    keys[(7, 0)] = {"xvif-nat-ip": "10.0.0.2"}  # given one already: not asked again
    assert wanting(model, keys)[0] == []
    assert hosts(model) == [(N5_MAC, "10.0.0.5")]  # N7's address reaches the model through XenStore


def test_arp_spoofs_from_a_nat_guest_are_dropped_and_counted(sw):
    arp = {"dl_src": N5_MAC, "dl_dst": "ff:ff:ff:ff:ff:ff", "dl_type": 0x0806, "arp_op": 1, "arp_sha": N5_MAC}
    for frame in (
        arp | {"arp_spa": "10.0.0.6", "arp_tha": "00:00:00:00:00:00", "arp_tpa": "10.0.0.1"},  # as the other guest
        arp | {"arp_spa": ADDRESS, "arp_tha": "00:00:00:00:00:00", "arp_tpa": "10.0.0.1"},  # as dom0
        arp | {"arp_sha": N6_MAC, "arp_spa": "10.0.0.5", "arp_tha": "00:00:00:00:00:00", "arp_tpa": "10.0.0.1"},
    ):
        t = sw.send(5, frame)
        assert t.deliveries == [] and any((h.cookie >> 40) & 0xFF == P_DROP for h in t.hits), frame
