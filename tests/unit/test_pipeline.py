"""The pure pipeline, driven through the in-process OpenFlow simulator."""

from __future__ import annotations

import itertools

import pytest

from xvif_ovs.model.host import BridgeModel, VifModel
from xvif_ovs.model.vifspec import int_to_mac, mac_to_int, parse_bridge, parse_ips
from xvif_ovs.pipeline.build import P_DROP, P_REFUSED, build, link_local
from xvif_ovs.pipeline.flow import OFPP_LOCAL, decode_cookie
from xvif_ovs.pipeline.sim import Delivery, Switch

UPLINK = 1
BCAST = "ff:ff:ff:ff:ff:ff"


def vif(domid: int, spec: str = "xenbr0", ips: str = "", port: int | None = None, **kw) -> VifModel:
    return VifModel(
        domid=domid,
        devid=0,
        mac=f"00:16:3e:00:00:{domid:02x}",
        vlans=parse_bridge(spec),
        ips=parse_ips(ips),
        vif_port=port if port is not None else 100 + domid,
        name=f"dom{domid}",
        **kw,
    )


def switch(*vifs: VifModel, **kw) -> Switch:
    return Switch(build(BridgeModel("xenbr0", uplinks=(UPLINK,), vifs=vifs, **kw)))


def ip4(src_mac: str, src: str, dst: str, dst_mac: str = BCAST, **extra) -> dict:
    return {
        "dl_src": src_mac,
        "dl_dst": dst_mac,
        "dl_type": 0x0800,
        "nw_src": src,
        "nw_dst": dst,
        "nw_proto": 1,
        **extra,
    }


def arp(sha: str, spa: str, tpa: str = "192.0.2.1", dl_src: str | None = None) -> dict:
    return {"dl_src": dl_src or sha, "dl_dst": BCAST, "dl_type": 0x0806, "arp_sha": sha, "arp_spa": spa, "arp_tpa": tpa}


def dropped_by_vif(sw: Switch, trace, v: VifModel) -> bool:
    """Dropped and counted as this vif's port-security drop."""
    last = trace.hits[-1]
    decoded = decode_cookie(last.cookie)
    return not trace.deliveries and decoded == (P_DROP, v.domid, v.devid) and not last.actions


# -- two guests, one VLAN -----------------------------------------------------------------


def test_broadcast_reaches_the_vlan_but_not_the_sender():
    a, b = vif(1, ips="192.0.2.11"), vif(2, ips="192.0.2.12")
    sw = switch(a, b)
    t = sw.send(a.vif_port, arp(a.mac, "192.0.2.11"))
    assert set(t.deliveries) == {Delivery(b.vif_port, None), Delivery(UPLINK, None), Delivery(OFPP_LOCAL, None)}


def test_unicast_to_a_known_vif_goes_only_there():
    a, b = vif(1, ips="192.0.2.11"), vif(2, ips="192.0.2.12")
    sw = switch(a, b)
    t = sw.send(a.vif_port, ip4(a.mac, "192.0.2.11", "192.0.2.12", b.mac))
    assert t.deliveries == [Delivery(b.vif_port, None)]


# -- port security ----------------------------------------------------------------------

GUEST = vif(5, ips="192.0.2.5 2001:db8::5")
OTHER_MAC = "00:16:3e:99:99:99"


@pytest.mark.parametrize(
    ("what", "pkt", "allowed"),
    [
        ("own IPv4", ip4(GUEST.mac, "192.0.2.5", "192.0.2.1"), True),
        ("foreign source MAC", ip4(OTHER_MAC, "192.0.2.5", "192.0.2.1"), False),
        ("foreign IPv4 source", ip4(GUEST.mac, "192.0.2.99", "192.0.2.1"), False),
        ("ARP from itself", arp(GUEST.mac, "192.0.2.5"), True),
        ("ARP with another sha", arp(OTHER_MAC, "192.0.2.5", dl_src=GUEST.mac), False),
        ("ARP for another IP", arp(GUEST.mac, "192.0.2.99"), False),
        (
            "DHCP discover",
            ip4(GUEST.mac, "0.0.0.0", "255.255.255.255", nw_proto=17, tp_src=68, tp_dst=67),
            True,
        ),
        ("DHCP server reply", ip4(GUEST.mac, "192.0.2.5", "192.0.2.1", nw_proto=17, tp_src=67, tp_dst=68), False),
        (
            "IPv6 from its address",
            {"dl_src": GUEST.mac, "dl_dst": BCAST, "dl_type": 0x86DD, "ipv6_src": "2001:db8::5", "nw_proto": 6},
            True,
        ),
        (
            "IPv6 from its link-local",
            {
                "dl_src": GUEST.mac,
                "dl_dst": BCAST,
                "dl_type": 0x86DD,
                "ipv6_src": str(link_local(GUEST.mac)),
                "nw_proto": 6,
            },
            True,
        ),
        (
            "IPv6 from another address",
            {"dl_src": GUEST.mac, "dl_dst": BCAST, "dl_type": 0x86DD, "ipv6_src": "2001:db8::99", "nw_proto": 6},
            False,
        ),
        (
            "RA",
            {
                "dl_src": GUEST.mac,
                "dl_dst": BCAST,
                "dl_type": 0x86DD,
                "ipv6_src": str(link_local(GUEST.mac)),
                "nw_proto": 58,
                "icmpv6_type": 134,
            },
            False,
        ),
        (
            "NS with its sll",
            {
                "dl_src": GUEST.mac,
                "dl_dst": BCAST,
                "dl_type": 0x86DD,
                "ipv6_src": "2001:db8::5",
                "nw_proto": 58,
                "icmpv6_type": 135,
                "nd_target": "2001:db8::1",
                "nd_sll": GUEST.mac,
            },
            True,
        ),
        (
            "NS with another sll",
            {
                "dl_src": GUEST.mac,
                "dl_dst": BCAST,
                "dl_type": 0x86DD,
                "ipv6_src": "2001:db8::5",
                "nw_proto": 58,
                "icmpv6_type": 135,
                "nd_target": "2001:db8::1",
                "nd_sll": OTHER_MAC,
            },
            False,
        ),
        (
            "NA for its address",
            {
                "dl_src": GUEST.mac,
                "dl_dst": BCAST,
                "dl_type": 0x86DD,
                "ipv6_src": "2001:db8::5",
                "nw_proto": 58,
                "icmpv6_type": 136,
                "nd_target": "2001:db8::5",
                "nd_tll": GUEST.mac,
            },
            True,
        ),
        (
            "NA for another address",
            {
                "dl_src": GUEST.mac,
                "dl_dst": BCAST,
                "dl_type": 0x86DD,
                "ipv6_src": "2001:db8::5",
                "nw_proto": 58,
                "icmpv6_type": 136,
                "nd_target": "2001:db8::1",
                "nd_tll": GUEST.mac,
            },
            False,
        ),
        (
            "DAD probe",
            {
                "dl_src": GUEST.mac,
                "dl_dst": BCAST,
                "dl_type": 0x86DD,
                "ipv6_src": "::",
                "nw_proto": 58,
                "icmpv6_type": 135,
                "nd_target": "2001:db8::5",
                "nd_sll": "00:00:00:00:00:00",
            },
            True,
        ),
        ("another ethertype", {"dl_src": GUEST.mac, "dl_dst": BCAST, "dl_type": 0x88CC}, False),
    ],
)
def test_port_security(what, pkt, allowed):
    peer = vif(6, ips="192.0.2.6")
    sw = switch(GUEST, peer)
    t = sw.send(GUEST.vif_port, pkt)
    if allowed:
        assert UPLINK in t.ports, what
    else:
        assert dropped_by_vif(sw, t, GUEST), f"{what}: {t.deliveries} via {[f.render() for f in t.hits]}"


def test_without_ip_the_mac_checks_stay():
    g = vif(7)
    sw = switch(g)
    assert UPLINK in sw.send(g.vif_port, ip4(g.mac, "203.0.113.9", "192.0.2.1")).ports
    assert dropped_by_vif(sw, sw.send(g.vif_port, ip4(OTHER_MAC, "203.0.113.9", "192.0.2.1")), g)
    assert dropped_by_vif(sw, sw.send(g.vif_port, arp(OTHER_MAC, "203.0.113.9", dl_src=g.mac)), g)


def test_trusted_vif_may_serve_dhcp_and_advertise_routes():
    r = vif(8, ips="192.0.2.8", trusted=True)
    sw = switch(r)
    assert UPLINK in sw.send(r.vif_port, ip4(r.mac, "192.0.2.8", "192.0.2.1", nw_proto=17, tp_src=67, tp_dst=68)).ports


def test_tagged_frame_from_an_access_port_is_dropped_and_counted():
    g = vif(9, "xenbr0.10")
    sw = switch(g)
    assert dropped_by_vif(sw, sw.send(g.vif_port, ip4(g.mac, "192.0.2.9", "192.0.2.1"), vlan=10), g)


# -- VLANs --------------------------------------------------------------------------------


def test_no_frame_crosses_vlans():
    vifs = [
        vif(10, "xenbr0"),
        vif(11, "xenbr0.10"),
        vif(12, "xenbr0.20"),
        vif(13, "xenbr0:10:20"),
        vif(14, "xenbr0.10:20:30"),
        vif(15, "xenbr0.30"),
    ]
    sw = switch(*vifs)
    ports = {v.vif_port: v for v in vifs}
    for sender in vifs:
        for vlan in sender.access_vlans:
            wire = vlan if sender.tagged_on_wire(vlan) else None
            t = sw.send(sender.vif_port, ip4(sender.mac, "192.0.2.1", "192.0.2.2"), vlan=wire)
            for d in t.deliveries:
                if d.port == UPLINK:
                    assert d.vlan == (vlan or None)
                    continue
                if d.port == OFPP_LOCAL:
                    assert vlan == 0 and d.vlan is None
                    continue
                rcv = ports[d.port]
                assert vlan in rcv.access_vlans, f"{sender.key} VLAN {vlan} leaked to {rcv.key}"
                assert d.vlan == (vlan if rcv.tagged_on_wire(vlan) else None)
            want = {v.vif_port for v in vifs if v is not sender and vlan in v.access_vlans}
            assert t.ports - {UPLINK, OFPP_LOCAL} == want
            assert len(t.deliveries) == len(t.ports)  # one copy per port


def test_untagged_from_a_trunk_and_unknown_vlans_go_nowhere():
    t13 = vif(13, "xenbr0:10:20")
    sw = switch(t13, vif(11, "xenbr0.10"))
    assert not sw.send(t13.vif_port, ip4(t13.mac, "192.0.2.1", "192.0.2.2")).deliveries
    assert not sw.send(t13.vif_port, ip4(t13.mac, "192.0.2.1", "192.0.2.2"), vlan=30).deliveries
    assert not sw.send(UPLINK, ip4(OTHER_MAC, "192.0.2.1", "192.0.2.2"), vlan=99).deliveries


# -- learning -----------------------------------------------------------------------------


def test_uplink_macs_are_learned_per_vlan_in_the_switch():
    a10, b20 = vif(21, "xenbr0.10"), vif(22, "xenbr0.20")
    sw = switch(a10, b20)
    lan = "00:11:22:33:44:55"
    # Before learning: unknown unicast floods in the VLAN.
    t = sw.send(a10.vif_port, ip4(a10.mac, "192.0.2.1", "192.0.2.2", lan))
    assert t.ports == {UPLINK}
    sw.send(UPLINK, ip4(lan, "192.0.2.2", "192.0.2.1", BCAST), vlan=10)
    t = sw.send(a10.vif_port, ip4(a10.mac, "192.0.2.1", "192.0.2.2", lan))
    assert t.deliveries == [Delivery(UPLINK, 10)]
    assert any(f.table == 4 for f in t.hits)  # found by the flow the learn action made
    # Learned on VLAN 10 only: on VLAN 20 the same MAC is still unknown and floods there.
    t = sw.send(b20.vif_port, ip4(b20.mac, "192.0.2.1", "192.0.2.2", lan))
    assert t.deliveries == [Delivery(UPLINK, 20)]


def test_mac_move_between_uplinks_is_relearned():
    g = vif(23)
    sw = Switch(build(BridgeModel("xenbr0", uplinks=(1, 2), vifs=(g,))))
    lan = "00:11:22:33:44:66"
    sw.send(1, ip4(lan, "192.0.2.2", "192.0.2.1", BCAST))
    assert sw.send(g.vif_port, ip4(g.mac, "192.0.2.1", "192.0.2.2", lan)).deliveries == [Delivery(1, None)]
    sw.send(2, ip4(lan, "192.0.2.2", "192.0.2.1", BCAST))
    assert sw.send(g.vif_port, ip4(g.mac, "192.0.2.1", "192.0.2.2", lan)).deliveries == [Delivery(2, None)]


def test_a_vif_mac_is_never_learned_from_the_uplink():
    g, h = vif(24), vif(25)
    sw = switch(g, h)
    sw.send(UPLINK, ip4(g.mac, "192.0.2.2", "192.0.2.1", BCAST))  # someone outside claims g's MAC
    assert sw.send(h.vif_port, ip4(h.mac, "192.0.2.1", "192.0.2.2", g.mac)).deliveries == [Delivery(g.vif_port, None)]


# -- isolation ------------------------------------------------------------------------------


def test_private_vif_reaches_the_uplink_and_dom0_only():
    p, n = vif(31, private=True), vif(32)
    sw = switch(p, n)
    assert sw.send(p.vif_port, ip4(p.mac, "192.0.2.1", "192.0.2.2")).ports == {UPLINK, OFPP_LOCAL}
    assert sw.send(n.vif_port, ip4(n.mac, "192.0.2.1", "192.0.2.2")).ports == {UPLINK, OFPP_LOCAL}
    assert not sw.send(p.vif_port, ip4(p.mac, "192.0.2.1", "192.0.2.2", n.mac)).deliveries
    assert not sw.send(n.vif_port, ip4(n.mac, "192.0.2.1", "192.0.2.2", p.mac)).deliveries
    assert sw.send(UPLINK, ip4(OTHER_MAC, "192.0.2.1", "192.0.2.2", p.mac)).deliveries == [Delivery(p.vif_port, None)]


def test_private_bridge():
    a, b = vif(33), vif(34)
    sw = switch(a, b, private=True)
    assert not sw.send(a.vif_port, ip4(a.mac, "192.0.2.1", "192.0.2.2", b.mac)).deliveries
    assert b.vif_port not in sw.send(a.vif_port, ip4(a.mac, "192.0.2.1", "192.0.2.2")).ports


def test_reserved_bridge_refuses_other_domains():
    ok, intruder = vif(35), vif(36)
    fs = build(BridgeModel("xenbr1", uplinks=(UPLINK,), vifs=(ok, intruder), reserved_for=frozenset({"dom35"})))
    sw = Switch(fs)
    t = sw.send(intruder.vif_port, ip4(intruder.mac, "192.0.2.1", "192.0.2.2"))
    assert not t.deliveries and decode_cookie(t.hits[-1].cookie)[0] == P_REFUSED
    assert intruder.vif_port not in sw.send(ok.vif_port, ip4(ok.mac, "192.0.2.1", "192.0.2.2")).ports


def test_internal_bridge_has_no_outside():
    a, b = vif(37), vif(38)
    sw = Switch(build(BridgeModel("xenint", uplinks=(), local=False, vifs=(a, b))))
    assert sw.send(a.vif_port, ip4(a.mac, "192.0.2.1", "192.0.2.2")).ports == {b.vif_port}


# -- HVM pair -------------------------------------------------------------------------------


@pytest.mark.parametrize(("vif_live", "emu_live", "want"), [(True, False, 141), (False, True, 241), (True, True, 141)])
def test_hvm_pair_traffic_goes_to_the_live_backend(vif_live, emu_live, want):
    h = VifModel(41, 0, "00:16:3e:00:00:29", parse_bridge("xenbr0"), (), 141, 241, vif_live, emu_live, name="hvm")
    other = vif(42)
    sw = switch(h, other)
    assert sw.send(other.vif_port, ip4(other.mac, "192.0.2.1", "192.0.2.2", h.mac)).deliveries == [Delivery(want, None)]
    for port in (141, 241):  # both backends pass port security with the shared MAC
        assert UPLINK in sw.send(port, ip4(h.mac, "192.0.2.1", "192.0.2.2")).ports


# -- size and determinism ------------------------------------------------------------------


def test_flood_state_grows_linearly_with_vifs():
    def buckets(n: int) -> int:
        fs = build(BridgeModel("xenbr0", uplinks=(UPLINK,), vifs=tuple(vif(i, port=1000 + i) for i in range(1, n + 1))))
        return sum(len(g.buckets) for g in fs.groups)

    small, big = buckets(10), buckets(100)
    assert big <= 11 * small  # 10x the vifs, about 10x the buckets (not 100x)


def test_build_is_deterministic():
    """Two independent builds (fresh model objects, fresh Builders: no cache shared) of the
    same host give the same flows, and a Builder that has seen other hosts gives them too."""
    from xvif_ovs.pipeline.build import Builder

    def host() -> BridgeModel:
        specs = itertools.cycle(["xenbr0", "xenbr0.10", "xenbr0:10:20"])
        vifs = [vif(i, spec, f"192.0.2.{i}") for i, spec in zip(range(50, 56), specs, strict=False)]
        return BridgeModel("b", uplinks=(1,), vifs=tuple(vifs))

    first, second = Builder().build_parts(host()), Builder().build_parts(host())
    assert first.flowset().render() == second.flowset().render()
    assert first.flows is not second.flows and first.groups is not second.groups
    used = Builder()
    used.build_parts(BridgeModel("b", uplinks=(1, 2), vifs=(vif(50, "xenbr0.20"), vif(57))))
    assert used.build_parts(host()).flowset().render() == first.flowset().render()
    assert len(first.flowset().flows) > 6 * 25  # a real pipeline, not two empty ones


# -- found in review ---------------------------------------------------------------------


def test_dhcp_and_dhcpv6_server_messages_are_dropped_by_destination_port_too():
    g = vif(61, ips="192.0.2.61 2001:db8::61")
    sw = switch(g, vif(62))
    offer = ip4(g.mac, "192.0.2.61", "255.255.255.255", nw_proto=17, tp_src=5555, tp_dst=68)
    assert dropped_by_vif(sw, sw.send(g.vif_port, offer), g)
    adv = {
        "dl_src": g.mac,
        "dl_dst": BCAST,
        "dl_type": 0x86DD,
        "ipv6_src": "2001:db8::61",
        "nw_proto": 17,
        "tp_src": 9,
        "tp_dst": 546,
    }
    assert dropped_by_vif(sw, sw.send(g.vif_port, adv), g)


def test_an_ip_network_allows_the_whole_subnet():
    r = vif(63, ips="192.0.2.63 198.51.100.0/24")
    sw = switch(r)
    assert UPLINK in sw.send(r.vif_port, ip4(r.mac, "198.51.100.7", "192.0.2.1")).ports
    assert dropped_by_vif(sw, sw.send(r.vif_port, ip4(r.mac, "198.51.101.7", "192.0.2.1")), r)


def test_repeated_addresses_make_one_set_of_flows():
    build(
        BridgeModel("xenbr0", uplinks=(UPLINK,), vifs=(vif(64, ips="192.0.2.64 192.0.2.64/32 fe80::216:3eff:fe00:40"),))
    )


def test_dad_probe_only_for_its_own_addresses():
    g = vif(65, ips="2001:db8::65")
    sw = switch(g)
    probe = {
        "dl_src": g.mac,
        "dl_dst": BCAST,
        "dl_type": 0x86DD,
        "ipv6_src": "::",
        "nw_proto": 58,
        "icmpv6_type": 135,
        "nd_sll": "00:00:00:00:00:00",
    }
    assert UPLINK in sw.send(g.vif_port, {**probe, "nd_target": "2001:db8::65"}).ports
    assert dropped_by_vif(sw, sw.send(g.vif_port, {**probe, "nd_target": "2001:db8::1"}), g)


def test_uplinks_never_flood_to_each_other_but_dom0_reaches_both():
    g = vif(66)
    sw = Switch(build(BridgeModel("xenbr0", uplinks=(1, 2), vifs=(g,))))
    assert sw.send(1, ip4(OTHER_MAC, "192.0.2.1", "192.0.2.2")).ports == {g.vif_port, OFPP_LOCAL}
    assert sw.send(OFPP_LOCAL, ip4("00:16:3e:aa:aa:aa", "192.0.2.1", "192.0.2.2")).ports == {1, 2, g.vif_port}


def test_fragmented_icmpv6_from_a_guest_is_dropped_but_not_other_fragments():
    g = vif(67, ips="2001:db8::67")
    sw = switch(g)
    base = {"dl_src": g.mac, "dl_dst": BCAST, "dl_type": 0x86DD, "ipv6_src": "2001:db8::67"}
    assert dropped_by_vif(sw, sw.send(g.vif_port, {**base, "nw_proto": 58, "ip_frag": 3}), g)
    assert dropped_by_vif(sw, sw.send(g.vif_port, {**base, "nw_proto": 58, "ip_frag": 1, "icmpv6_type": 128}), g)
    assert UPLINK in sw.send(g.vif_port, {**base, "nw_proto": 17, "ip_frag": 3}).ports  # fragmented UDP passes
    assert UPLINK in sw.send(g.vif_port, {**base, "nw_proto": 58, "ip_frag": 0, "icmpv6_type": 128}).ports


def test_a_spoofed_source_mac_is_dropped_by_a_flow_that_needs_only_its_first_differing_bit():
    """What bounds a port's datapath flows: the drop for a foreign MAC must not depend on
    the MAC's later bits, or OVS caches one datapath flow per MAC a guest invents."""
    import random

    v = vif(5, ips="192.0.2.5")
    sw = switch(v)
    own = mac_to_int(v.mac)
    rng = random.Random(7)
    spoofs = [own ^ (1 << b) for b in range(48)] + [rng.getrandbits(48) for _ in range(300)]
    dropping_flows = set()
    for n in spoofs:
        mac = int_to_mac(n)
        trace = sw.send(v.vif_port, ip4(mac, "192.0.2.5", "192.0.2.1"))
        assert dropped_by_vif(sw, trace, v), mac
        hit = trace.hits[-2]  # the guard flow; the last is the port's counting drop in table 3
        (field,) = [f for f in hit.match if f.name == "dl_src"]
        first_diff = 48 - (n ^ own).bit_length()
        mask = mac_to_int(field.mask) if field.mask else (1 << 48) - 1
        assert mask.bit_count() == first_diff + 1, (mac, field)
        dropping_flows.add(hit)
    assert len(dropping_flows) == 48
    assert not dropped_by_vif(sw, sw.send(v.vif_port, ip4(v.mac, "192.0.2.5", "192.0.2.1")), v)


def test_a_patched_build_equals_a_full_build_through_random_changes():
    """build_parts patches its last result when few vifs changed; whatever the change,
    the result must be the full build's."""
    import dataclasses
    import random

    from xvif_ovs.pipeline import build as b

    rng = random.Random(11)
    builder = b.Builder()
    specs = ["xenbr0", "xenbr0.10", "xenbr0:10:20", "xenbr0.10:20"]
    vifs = [vif(d, rng.choice(specs), f"192.0.2.{d}") for d in range(1, 40)]
    for step in range(120):  # each step also builds from nothing: about 40 ms
        i = rng.randrange(len(vifs))
        v = vifs[i]
        change = rng.choice(["ip", "ip", "mac", "vlan", "port", "live", "private", "trusted", "several"])
        if change == "ip":
            v = dataclasses.replace(v, ips=parse_ips(f"198.51.100.{rng.randrange(1, 250)}"))
        elif change == "mac":
            v = dataclasses.replace(v, mac=f"00:16:3e:01:{step % 256:02x}:{v.domid:02x}")
        elif change == "vlan":
            v = dataclasses.replace(v, vlans=parse_bridge(rng.choice(specs)))
        elif change == "port":
            v = dataclasses.replace(v, vif_port=rng.choice([None, 500 + v.domid, 100 + v.domid]))
        elif change == "live":
            v = dataclasses.replace(v, emu_port=300 + v.domid, emu_live=True, vif_live=not v.vif_live)
        elif change == "private":
            v = dataclasses.replace(v, private=not v.private)
        elif change == "trusted":
            v = dataclasses.replace(v, trusted=not v.trusted)
        vifs[i] = v
        if change == "several":
            for j in rng.sample(range(len(vifs)), 20):
                vifs[j] = dataclasses.replace(vifs[j], ips=parse_ips(f"203.0.113.{rng.randrange(1, 250)}"))
        model = BridgeModel("xenbr0", uplinks=(UPLINK,), vifs=tuple(vifs))
        got, want = builder.build_parts(model), b.build_parts(model)  # incremental; from nothing
        assert got.flows == want.flows and got.groups == want.groups, (step, change)
        # State bounded by what exists: one entry per vif, however many changes went by.
        assert len(builder._bridges["xenbr0"].vifs) == len(vifs)


# -- staging a new vif ----------------------------------------------------------------------


def test_a_new_vifs_first_stage_holds_back_only_its_guard_and_still_drops_foreign_macs():
    from xvif_ovs.pipeline.build import P_GUARD, build_parts
    from xvif_ovs.pipeline.diff import by_owner, first_stage
    from xvif_ovs.pipeline.flow import vif_owner

    a, b = vif(11, ips="192.0.2.11"), vif(12, ips="192.0.2.12")
    old = build_parts(BridgeModel("xenbr0", uplinks=(UPLINK,), vifs=(a,)))
    assert first_stage(old, {}) is None  # a switch's first programming: one bundle
    installed = by_owner(old.flowset().flows)
    assert first_stage(old, installed) is None  # nothing new
    new = build_parts(BridgeModel("xenbr0", uplinks=(UPLINK,), vifs=(a, b)))
    first = first_stage(new, installed)
    owner = vif_owner(12, 0)
    held = set(new.flows[owner]) - set(first.flows[owner])
    assert len(held) == 48 and {decode_cookie(f.cookie)[0] for f in held} == {P_GUARD}
    assert all(first.flows[o] is new.flows[o] for o in new.flows if o != owner)
    assert first.groups == new.groups
    sw = Switch(first.flowset())
    assert dropped_by_vif(sw, sw.send(b.vif_port, ip4("02:00:00:00:00:01", "192.0.2.12", "192.0.2.1")), b)
    assert UPLINK in sw.send(b.vif_port, ip4(b.mac, "192.0.2.12", "192.0.2.1")).ports


def test_streamed_build_emits_groups_first_then_exactly_the_built_flows():
    from xvif_ovs.pipeline import build as build_mod
    from xvif_ovs.pipeline.flow import GroupEntry

    bridge = BridgeModel("xenbr0", uplinks=(UPLINK,), vifs=(vif(11, "xenbr0.10"), vif(12, ips="192.0.2.12")))
    pieces: list = []
    streamed = build_mod.stream_parts(bridge, 300, pieces.append)
    assert pieces[0] == streamed.groups and all(isinstance(g, GroupEntry) for g in pieces[0])
    assert [f for p in pieces[1:] for f in p] == [f for fl in streamed.flows.values() for f in fl]
    assert streamed.flowset().render() == build_mod.build(bridge, 300).render()
