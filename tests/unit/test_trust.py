"""Trust only what is named: which ports are vifs, uplinks or nobody's, and what the
pipeline gives each (issue 11). Pure: the rules in model/ports.py, the join, and the
pipeline driven through the simulator."""

from __future__ import annotations

import pytest

from xvif_ovs.controller.config import ConfigError, load
from xvif_ovs.controller.hostmodel import OfPort, bridge_models
from xvif_ovs.controller.ovsdb_monitor import BridgeInfo, PortInfo, port_vlans
from xvif_ovs.model.host import BridgeModel, PortVlans, Uplink, VifModel
from xvif_ovs.model.ports import UPLINK_MARK, Iface, Role, port_roles
from xvif_ovs.model.vifspec import parse_bridge, parse_ips
from xvif_ovs.pipeline.build import P_PRIORITY_TAG, P_UNMANAGED, build
from xvif_ovs.pipeline.flow import decode_cookie, is_our_group
from xvif_ovs.pipeline.sim import Switch

BCAST = "ff:ff:ff:ff:ff:ff"
LAN_MAC = "00:00:5e:00:53:01"
BOND = (2, 3)
TAGGED_UPLINK = 4
ROGUE = 9


def vif(domid: int, spec: str = "xenbr0", ips: str = "") -> VifModel:
    return VifModel(
        domid, 0, f"00:16:3e:00:00:{domid:02x}", parse_bridge(spec), parse_ips(ips), vif_port=domid, name=f"d{domid}"
    )


def bcast(src: str, spa: str = "0.0.0.0") -> dict:
    return {"dl_src": src, "dl_dst": BCAST, "dl_type": 0x0806, "arp_sha": src, "arp_spa": spa}


def unicast(src: str, dst: str) -> dict:
    return {"dl_src": src, "dl_dst": dst, "dl_type": 0x0800, "nw_src": "192.0.2.99", "nw_dst": "192.0.2.5"}


# -- the rules --------------------------------------------------------------------------


def roles(port: str, *ifaces: Iface, port_ids: dict | None = None, declared=frozenset(), physical=()) -> dict:
    return port_roles("xenbr0", port, port_ids or {}, ifaces, frozenset(declared), lambda n: n in physical)


def test_a_port_with_no_name_is_trusted_with_nothing():
    # The case: `ovs-vsctl add-port xenbr0 rogue0`, a veth with no ids.
    assert roles("rogue0", Iface("rogue0", "", {})) == {"rogue0": Role("unmanaged")}
    # Not a NIC either: an internal port or a patch port nobody declared.
    assert roles("int0", Iface("int0", "internal", {}))["int0"].kind == "unmanaged"
    assert roles("patch0", Iface("patch0", "patch", {}), physical={"patch0"})["patch0"].kind == "unmanaged"


def test_vifs_by_the_hooks_ids_or_by_xens_name():
    ids = {"xvif-domid": "5", "xvif-devid": "1", "xvif-kind": "emu"}
    assert roles("web0", Iface("web0", "", ids)) == {"web0": Role("emu", 5, 1)}
    assert roles("vif7.0", Iface("vif7.0", "", {})) == {"vif7.0": Role("vif", 7, 0)}
    assert roles("xvif7.1-emu", Iface("xvif7.1-emu", "", {})) == {"xvif7.1-emu": Role("emu", 7, 1)}


def test_uplinks_only_when_declared_or_physical():
    veth = Iface("peth0", "", {})
    assert roles("peth0", veth, declared={"peth0"})["peth0"].kind == "uplink"
    assert roles("peth0", veth, port_ids={UPLINK_MARK: "true"})["peth0"].kind == "uplink"
    assert roles("peth0", veth, port_ids={UPLINK_MARK: "yes"})["peth0"].kind == "unmanaged"
    assert roles("eth1", Iface("eth1", "", {}), physical={"eth1"})["eth1"].kind == "uplink"
    assert roles("eth1", Iface("eth1", "system", {}), physical={"eth1"})["eth1"].kind == "uplink"


def test_a_bond_is_an_uplink_only_if_every_member_is_a_nic_or_it_is_declared():
    a, b = Iface("eth1", "", {}), Iface("veth9", "", {})
    assert {r.kind for r in roles("bond0", a, Iface("eth2", "", {}), physical={"eth1", "eth2"}).values()} == {"uplink"}
    assert {r.kind for r in roles("bond0", a, b, physical={"eth1"}).values()} == {"unmanaged"}
    assert {r.kind for r in roles("bond0", a, b, declared={"bond0"}).values()} == {"uplink"}


def test_the_bridges_own_internal_port_is_local():
    assert port_roles("xenbr0", "xenbr0", {}, [Iface("xenbr0", "internal", {})]) == {"xenbr0": Role("local")}


# -- configuration ----------------------------------------------------------------------


def test_no_bridge_is_managed_unless_named(tmp_path):
    assert not load(None).managed("xenbr0")
    p = tmp_path / "c.toml"
    p.write_text("[controller]\nbridges = ['xenbr0']\n[bridges.xenbr0]\nuplinks = ['eth1', 'bond0']\n")
    cfg = load(str(p))
    assert cfg.managed("xenbr0") and not cfg.managed("br-int")
    assert cfg.declared_uplinks("xenbr0") == {"eth1", "bond0"} and cfg.declared_uplinks("xenbr1") == frozenset()


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("[controller]\nbridges = 'xenbr0'\n", "a list of OVS bridge names"),
        ("[controller]\nbridges = ['xen br0']\n", "a list of OVS bridge names"),
        ("[controller]\nbridges = ['xenbr0']\n[bridges.xenbr1]\nprivate = true\n", "does not name"),
        ("[controller]\nbridges = ['xenbr0']\n[bridges.xenbr0]\nuplinks = 'eth1'\n", "a list of port names"),
    ],
)
def test_bad_trust_config_says_what_to_fix(tmp_path, text, hint):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=hint):
        load(str(p))


# -- the join -----------------------------------------------------------------------------


def test_join_gives_a_stranger_port_no_forwarding_and_says_how_to_fix_it():
    ports = (
        PortInfo("peth0", 1, "uplink"),
        PortInfo("rogue0", 7, "unmanaged"),
        PortInfo("vif5.0", 10, "vif", 5, 0),
        PortInfo("vif6.0", 11, "vif", 6, 0),  # no vif in XenStore: dropped and counted too
        PortInfo("eth1", 20, "uplink", port="bond0"),
        PortInfo("eth2", 21, "uplink", port="bond0"),
        PortInfo("xapi20", 30, "uplink", vlans=PortVlans(tag=20)),
    )
    info = {"xenbr0": BridgeInfo("xenbr0", ports, "secure", ("unix:x",), ("OpenFlow13",), True)}
    of = {"xenbr0": {p.name: OfPort(p.ofport, True) for p in ports}}
    models, problems = bridge_models(info, of, {(5, 0): {"mac": "00:16:3e:00:00:05"}}, {}, load(None))
    m = models["xenbr0"]
    assert m.uplinks == (1,)
    assert m.special_uplinks == (Uplink("bond0", (20, 21)), Uplink("xapi20", (30,), PortVlans(tag=20)))
    assert m.unmanaged == (7, 11)
    assert any(
        "port rogue0 on xenbr0 is neither a vif nor a declared uplink" in p and "del-port" in p for p in problems
    )


def test_ovsdb_vlan_columns():
    assert port_vlans([], [], []) == PortVlans()
    assert port_vlans([20], [], []) == PortVlans(tag=20)
    assert port_vlans([], [30, 10], ["trunk"]) == PortVlans(None, (10, 30), "trunk")


# -- the pipeline -------------------------------------------------------------------------


def bridge(*vifs: VifModel) -> BridgeModel:
    return BridgeModel(
        "xenbr0",
        special_uplinks=(Uplink("bond0", BOND), Uplink("xapi20", (TAGGED_UPLINK,), PortVlans(tag=20))),
        vifs=vifs,
        unmanaged=(ROGUE,),
    )


def test_an_unmanaged_port_reaches_nothing_gets_nothing_and_is_counted():
    a, b = vif(5, ips="192.0.2.5"), vif(6, ips="192.0.2.6")
    sw = Switch(build(bridge(a, b, vif(7, "xenbr0.20"))))
    # From the stranger, even with a guest's MAC (the attack), to a guest or flooded.
    for frame in (unicast(a.mac, b.mac), bcast(a.mac), unicast(LAN_MAC, b.mac)):
        t = sw.send(ROGUE, frame)
        assert not t.deliveries
        assert decode_cookie(t.hits[-1].cookie)[0] == P_UNMANAGED and not t.hits[-1].actions
    # Priority-tagged or VLAN-tagged, the same.
    assert not sw.send(ROGUE, bcast(LAN_MAC), vlan=0).deliveries
    assert not sw.send(ROGUE, bcast(LAN_MAC), vlan=20).deliveries
    # Nothing is flooded to it, from anyone.
    for port, vlan in ((a.vif_port, None), (BOND[0], None), (BOND[0], 20), (TAGGED_UPLINK, None)):
        t = sw.send(port, bcast(a.mac, "192.0.2.5") if port == a.vif_port else bcast(LAN_MAC), vlan=vlan)
        assert t.deliveries and ROGUE not in t.ports


def test_a_bond_is_one_uplink_each_frame_leaves_once_over_a_live_member():
    a = vif(5)
    sw = Switch(build(bridge(a)))
    t = sw.send(a.vif_port, bcast(a.mac))
    assert sorted(d.port for d in t.deliveries if d.port in BOND) == [2]
    sw.down.add(2)  # member 2's link goes down: the same frame leaves over member 3
    t = sw.send(a.vif_port, bcast(a.mac))
    assert sorted(d.port for d in t.deliveries if d.port in BOND) == [3]
    # Frames from either member are the uplink's; one learned on member 3 goes back out once.
    assert a.vif_port in sw.send(3, bcast(LAN_MAC)).ports
    t = sw.send(a.vif_port, unicast(a.mac, LAN_MAC))
    assert [d.port for d in t.deliveries] == [3]
    # Never from one member to the other: a flood from the LAN does not loop back.
    assert not {2, 3} & sw.send(2, bcast("00:00:5e:00:53:02")).ports


def test_a_tagged_uplink_carries_only_its_vlan():
    plain, v20 = vif(5), vif(6, "xenbr0.20")
    sw = Switch(build(bridge(plain, v20)))
    assert TAGGED_UPLINK not in sw.send(plain.vif_port, bcast(plain.mac)).ports
    t = sw.send(v20.vif_port, bcast(v20.mac))
    assert [d.vlan for d in t.deliveries if d.port == TAGGED_UPLINK] == [None]  # access: untagged
    # What it sends untagged is VLAN 20; tagged frames (any VLAN) are not its to send.
    assert sw.send(TAGGED_UPLINK, bcast(LAN_MAC)).ports & {v20.vif_port} == {v20.vif_port}
    assert plain.vif_port not in sw.send(TAGGED_UPLINK, bcast(LAN_MAC)).ports
    assert not sw.send(TAGGED_UPLINK, bcast(LAN_MAC), vlan=20).deliveries
    assert not sw.send(TAGGED_UPLINK, bcast(LAN_MAC), vlan=10).deliveries


@pytest.mark.parametrize(
    ("vlans", "carries", "tagged"),
    [
        (PortVlans(), {0: False, 10: True}, None),
        (PortVlans(tag=20), {20: False}, {0, 10}),
        (PortVlans(None, (10, 20), "trunk"), {10: True, 20: True}, {0, 30}),
        (PortVlans(None, (0, 10), "trunk"), {0: False, 10: True}, {20}),
        (PortVlans(10, (20,), "native-untagged"), {10: False, 20: True}, {0}),
        (PortVlans(10, (20,), "native-tagged"), {10: True, 20: True}, {0}),
        (PortVlans(10, (), "dot1q-tunnel"), {}, {0, 10}),
    ],
)
def test_port_vlans_as_ovs_reads_them(vlans, carries, tagged):
    for vlan, on_wire in carries.items():
        assert vlans.carries(vlan) and vlans.tagged_on_wire(vlan) == on_wire
    for vlan in tagged or ():
        assert not vlans.carries(vlan)


def test_priority_tagged_frames_are_untagged_frames():
    a, b = vif(5, ips="192.0.2.5"), vif(6, ips="192.0.2.6")
    sw = Switch(build(BridgeModel("xenbr0", (1,), vifs=(a, b))))
    frame = {**unicast(a.mac, b.mac), "nw_src": "192.0.2.5", "nw_dst": "192.0.2.6"}
    t = sw.send(a.vif_port, frame, vlan=0)
    assert decode_cookie(t.hits[0].cookie)[0] == P_PRIORITY_TAG
    assert [(d.port, d.vlan) for d in t.deliveries] == [(b.vif_port, None)]
    assert a.vif_port in sw.send(1, bcast(LAN_MAC), vlan=0).ports  # from the uplink too


def test_every_group_is_in_our_id_range():
    fs = build(bridge(vif(5), vif(6, "xenbr0:10:20")))
    assert fs.groups and all(is_our_group(g.group_id) for g in fs.groups)
    assert not is_our_group(0) and not is_our_group(1) and not is_our_group(0xFFFFFF00)


# -- keys from XenStore mean what Xen means ---------------------------------------------


def test_libxls_trusted_key_grants_nothing_our_own_key_or_the_config_does(tmp_path):
    from xvif_ovs.controller.hostmodel import TRUSTED_KEY, vif_from_xenstore

    keys = {"mac": "00:16:3e:00:00:05", "bridge": "xenbr0"}
    cfg = load(None)
    # XSA-403's trusted is the frontend's trust in its backend: not a licence to serve DHCP.
    assert not vif_from_xenstore({**keys, "trusted": "1"}, 5, 0, "web", cfg).trusted
    assert vif_from_xenstore({**keys, TRUSTED_KEY: "1"}, 5, 0, "web", cfg).trusted
    p = tmp_path / "c.toml"
    p.write_text("[vifs]\ntrusted = ['router']\n")
    assert vif_from_xenstore(keys, 5, 0, "router", load(str(p))).trusted


@pytest.mark.parametrize(
    ("bridge", "vlan", "expect"),
    [
        ("xenbr0.10", None, "access"),
        ("xenbr0", "10p/20", "native-untagged"),
        ("xenbr0:10:20", None, "trunk"),
        ("xenbr0.10", "20", "not both"),  # the controller once let vlan= win silently
        ("xenbr0", "10p/20p", "more than one untagged"),
        ("xenbr0.5000", None, "1-4094"),
    ],
)
def test_one_vlan_reading_for_the_hook_and_the_controller(bridge, vlan, expect):
    from xvif_ovs.controller.hostmodel import vif_from_xenstore
    from xvif_ovs.errors import VifSpecError
    from xvif_ovs.model.vifspec import vif_vlans

    keys = {"mac": "00:16:3e:00:00:05", "bridge": bridge, **({"vlan": vlan} if vlan else {})}
    try:
        spec = vif_vlans(bridge, vlan)
    except VifSpecError as e:
        assert expect in str(e)
        with pytest.raises(VifSpecError, match=expect):
            vif_from_xenstore(keys, 5, 0, "web", load(None))
        return
    assert spec.vlan_mode == expect
    assert vif_from_xenstore(keys, 5, 0, "web", load(None)).vlans == spec
