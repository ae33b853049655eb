"""libxl's contract on a real Xen 4.17 host: `xl create`/`destroy`, `network-attach`/`-detach`
with script=vif-xvif-ovs; what the hook leaves in XenStore and OVSDB; bad vifs refused
with the hook's hotplug-error in what xl prints, and OVSDB unchanged."""

from __future__ import annotations

from dom0 import XlError, backend, mac, ovs_ports, ovs_row, ovsdb_state, sh, vif_spec, wait_for, xs_read

UP = "ip link set eth0 up\n"


def _connected(domid: int, devid: int) -> None:
    be = backend(domid, devid)
    assert xs_read(f"{be}/hotplug-status") == "connected", f"{be}/hotplug-status"
    # netback goes to 4 (Connected) once the guest's netfront connects
    wait_for(f"{be}/state = 4", lambda: xs_read(f"{be}/state") == "4", timeout=90)


def _port_gone(name: str) -> bool:
    return ovs_row("Interface", name) is None and ovs_row("Port", name) is None


def test_create_two_vifs_vifname_vlan_and_destroy(guests):
    before = ovsdb_state()
    m0, m1 = mac(1), mac(2)
    g = guests.create("rxtwo", [vif_spec(m0), vif_spec(m1, "xenbr0.10", vifname="rxtwo-e1")], UP)
    uuid = xs_read(f"/local/domain/{g.domid}/vm").rsplit("/", 1)[-1]
    for devid, dev, m in ((0, g.vif(0), m0), (1, "rxtwo-e1", m1)):
        _connected(g.domid, devid)
        assert dev in ovs_ports("xenbr0")
        ids = ovs_row("Interface", dev)["external_ids"]
        assert ids.get("xvif-domid") == str(g.domid), ids
        assert ids.get("xvif-devid") == str(devid), ids
        assert ids.get("attached-mac") == m, ids
        assert ids.get("xen-vm-name") == g.name, ids
        assert ids.get("xen-vm-uuid") == uuid, ids
        assert ids.get("xvif-kind") == "vif", ids
        ofport = ovs_row("Interface", dev)["ofport"]
        assert xs_read(f"{backend(g.domid, devid)}/ofport") == str(ofport)
    # netback's own device MAC, as libxl and the kernel leave it
    assert "fe:ff:ff:ff:ff:ff" in sh(["ip", "link", "show", g.vif(0)]).stdout
    p0, p1 = ovs_row("Port", g.vif(0)), ovs_row("Port", "rxtwo-e1")
    assert (p0["vlan_mode"], p0["tag"], p0["trunks"]) == ("access", [], []), p0
    assert (p1["vlan_mode"], p1["tag"], p1["trunks"]) == ("access", 10, []), p1
    assert "connected" in sh(["tail", "-n", "20", "/var/log/xen/xen-hotplug.log"]).stdout

    g.destroy()
    wait_for("both ports removed", lambda: _port_gone(f"vif{g.domid}.0") and _port_gone("rxtwo-e1"), timeout=60)
    assert ovsdb_state() == before


def test_native_vlan_with_trunks(guests):
    g = guests.create("rxnat", [vif_spec(mac(3), "xenbr0.10:20:30")], UP)
    _connected(g.domid, 0)
    p = ovs_row("Port", g.vif(0))
    # the native VLAN may be listed among the trunks too (OVS trunks it either way)
    assert (p["vlan_mode"], p["tag"], sorted(set(p["trunks"]) - {10})) == ("native-untagged", 10, [20, 30]), p


def test_network_attach_and_detach(guests):
    g = guests.create("rxatt", [vif_spec(mac(4))], UP)
    _connected(g.domid, 0)
    before = ovsdb_state()
    # xl network-attach takes the vif's keys as separate arguments
    sh(["xl", "network-attach", g.name, *vif_spec(mac(5), "xenbr0.20").split(",")], timeout=120)
    _connected(g.domid, 1)
    assert g.vif(1) in ovs_ports("xenbr0")
    ids = ovs_row("Interface", g.vif(1))["external_ids"]
    assert (ids.get("xvif-devid"), ids.get("attached-mac")) == ("1", mac(5)), ids
    assert ovs_row("Port", g.vif(1))["tag"] == 20
    sh(["xl", "network-detach", g.name, "1"], timeout=120)
    wait_for(f"{g.vif(1)} removed", lambda: _port_gone(g.vif(1)), timeout=60)
    wait_for("the backend node removed", lambda: xs_read(backend(g.domid, 1) + "/state") is None, timeout=60)
    assert ovsdb_state() == before
    assert g.vif(0) in ovs_ports("xenbr0")


def _refused(guests, vifs: list[str], expect: str) -> str:
    before = ovsdb_state()
    try:
        g = guests.create("rxbad", vifs, UP)
    except XlError as e:
        out = e.output
    else:
        raise AssertionError(f"xl create of {vifs} succeeded (domid {g.domid}); expected a refusal")
    assert expect in out, f"xl's output does not carry the hook's hotplug-error ({expect!r}):\n{out}"
    assert ovsdb_state() == before, "OVSDB changed after a refused vif"
    return out


def test_missing_bridge_fails_create(guests):
    _refused(guests, [vif_spec(mac(6), "xenbr9")], "bridge xenbr9 does not exist in OVSDB")
    assert "rxbad" not in sh(["xl", "list"]).stdout


def test_multicast_mac_fails_create(guests):
    _refused(guests, [vif_spec("01:16:3e:00:00:07")], "is a multicast address")


def test_mac_in_use_fails_create(guests):
    g = guests.create("rxmac", [vif_spec(mac(8))], UP)
    _connected(g.domid, 0)
    out = _refused(guests, [vif_spec(mac(8))], f"MAC {mac(8)}")
    assert "already used on bridge xenbr0" in out and g.vif(0) in out, out
