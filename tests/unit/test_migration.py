"""A NIC being migrated or restored within the host: the same VM's same vif under two
domids on one bridge (libxl makes the incoming domain before it destroys the old one).
The hook lets the second one on, and the controller pairs them instead of calling it a
MAC conflict: both get port security, the newest forwards the MAC to both."""

from __future__ import annotations

import pytest

from xvif_ovs.controller.config import load
from xvif_ovs.controller.hostmodel import OfPort, bridge_models
from xvif_ovs.controller.ovsdb_monitor import BridgeInfo, PortInfo
from xvif_ovs.hotplug.ovsport import MacConflict, Snapshot, check
from xvif_ovs.hotplug.vifconfig import VifConfig
from xvif_ovs.model.vifspec import parse_bridge
from xvif_ovs.pipeline.build import build
from xvif_ovs.pipeline.flow import OFPP_LOCAL, decode_cookie
from xvif_ovs.pipeline.sim import Switch
from xvif_ovs.pipeline.tables import FORWARD

MAC = "00:16:3e:00:00:05"
VM = "6f1b1c9e-0d5a-4c0e-9a53-1b2c3d4e5f60"


def _join(uuid_old: str, uuid_new: str, devid_new: int = 0, new_name: str = "web--incoming", cfg=None):
    ports = (
        PortInfo("peth0", 1, "uplink"),
        PortInfo("vif5.0", 10, "vif", 5, 0, vm_uuid=uuid_old),
        PortInfo(f"vif9.{devid_new}", 11, "vif", 9, devid_new, link_up=False, vm_uuid=uuid_new),
        PortInfo("vif7.0", 12, "vif", 7, 0, vm_uuid="another"),
    )
    of = {"xenbr0": {p.name: OfPort(p.ofport, p.link_up) for p in ports}}
    vifs = {
        (5, 0): {"mac": MAC, "bridge": "xenbr0", "ip": "192.0.2.5"},
        (9, devid_new): {"mac": MAC, "bridge": "xenbr0", "ip": "192.0.2.5"},
        (7, 0): {"mac": "00:16:3e:00:00:07", "bridge": "xenbr0", "ip": "192.0.2.7"},
    }
    info = {"xenbr0": BridgeInfo("xenbr0", ports, "secure", ("unix:x",), ("OpenFlow13",), True)}
    models, problems = bridge_models(info, of, vifs, {5: "web", 9: new_name, 7: "db"}, cfg or load(None))
    return models["xenbr0"], problems


def test_the_same_vms_nic_under_two_domids_is_a_pair_not_a_conflict():
    m, problems = _join(VM, VM)
    assert not [p for p in problems if "MAC conflict" in p], problems
    by = {v.key: v for v in m.vifs}
    assert set(by) == {"5.0", "9.0", "7.0"} and 11 not in m.unmanaged
    assert (by["5.0"].forwards, by["5.0"].twin_ports) == (False, ())
    assert (by["9.0"].forwards, by["9.0"].twin_ports) == (True, (10,))


@pytest.mark.parametrize(
    ("old", "new", "devid", "name"),
    [
        ("", "", 0, "web--incoming"),
        (VM, "someone-else", 0, "web--incoming"),
        (VM, VM, 1, "web--incoming"),
        (VM, VM, 0, "web2"),
    ],
    ids=["no-uuid", "another-vm", "another-nic", "no-migration-name"],
)
def test_anything_else_with_the_mac_is_still_a_conflict(old, new, devid, name):
    """A domain given a running VM's UUID by hand, outside a migration, gets no pass."""
    m, problems = _join(old, new, devid, name)
    assert any(f"MAC conflict on xenbr0: vif9.{devid} and vif5.0" in p for p in problems), problems
    assert [v.key for v in m.vifs] == ["5.0", "7.0"] and 11 in m.unmanaged


def _frame(src: str, dst: str, ip_src: str, ip_dst: str) -> dict:
    return {"dl_src": src, "dl_dst": dst, "dl_type": 0x0800, "nw_src": ip_src, "nw_dst": ip_dst, "nw_proto": 1}


def test_frames_for_the_mac_reach_both_and_each_sends_only_as_itself():
    m, _ = _join(VM, VM)
    fs = build(m)
    fs.by_key()  # no two flows share a table, priority and match
    sw = Switch(fs)
    other = "00:16:3e:00:00:07"
    assert sw.send(12, _frame(other, MAC, "192.0.2.7", "192.0.2.5")).ports == {10, 11}
    for port in (10, 11):  # either domain of the pair may send as the guest ...
        assert sw.send(port, _frame(MAC, other, "192.0.2.5", "192.0.2.7")).ports == {12}
        # ... and neither as anyone else
        assert sw.send(port, _frame("00:16:3e:00:00:66", other, "192.0.2.5", "192.0.2.7")).ports == set()
        assert sw.send(port, _frame(MAC, other, "192.0.2.99", "192.0.2.7")).ports == set()
    holders = {
        decode_cookie(f.cookie)[1:] for f in fs.flows if f.table == FORWARD and any(x.name == "dl_dst" for x in f.match)
    }
    assert (9, 0) in holders and (5, 0) not in holders


def _cfg(domid: int, vm_uuid: str, devid: int = 0, name: str = "web--incoming") -> VifConfig:
    be = f"/local/domain/0/backend/vif/{domid}/{devid}"
    return VifConfig(
        domid=domid, devid=devid, backend=be, mac=MAC, bridge=parse_bridge("xenbr0"), vm_uuid=vm_uuid, domain_name=name
    )


def _snapshot(other_uuid: str, other_devid: int = 0) -> Snapshot:
    row = {
        "_uuid": ["uuid", "i-1"],
        "name": "vif5.0",
        "external_ids": [
            "map",
            [
                ["xvif-domid", "5"],
                ["xvif-devid", str(other_devid)],
                ["xen-vm-uuid", other_uuid],
                ["xen-vm-name", "web"],
            ],
        ],
    }
    return Snapshot("xenbr0", "vif9.0", MAC, True, [row])


class _Db:
    """The two selects check() makes to find the other port's bridge: it is on xenbr0."""

    def select(self, table: str, where: list, columns: list) -> list[dict]:
        return [{"_uuid": ["uuid", "p-1"]}] if table == "Port" else [{"name": "xenbr0"}]


def test_the_hook_lets_the_incoming_domain_of_the_same_vm_on():
    assert check(_Db(), _snapshot(VM), _cfg(9, VM)) == []


@pytest.mark.parametrize(
    ("mine", "theirs", "devid", "name"),
    [(VM, "other", 0, "web--incoming"), ("", "", 0, "web--incoming"), (VM, VM, 1, "web--incoming"), (VM, VM, 0, "web")],
)
def test_the_hook_still_refuses_anyone_else_with_the_mac(mine, theirs, devid, name):
    with pytest.raises(MacConflict, match="already used on bridge xenbr0 by vif5.0 of domain web"):
        check(_Db(), _snapshot(theirs, devid), _cfg(9, mine, name=name))


def test_the_hook_still_replaces_the_stale_port_of_the_same_vm():
    """A crashed domain's leftover port (no backend in XenStore) is replaced on restore."""
    assert check(_Db(), _snapshot(VM), _cfg(9, VM), vif_exists=lambda d, n: False) == ["p-1"]


@pytest.mark.parametrize("listed", ["web", "web--incoming"])
def test_private_and_trusted_hold_for_the_whole_pair(tmp_path, listed):
    """The config names domains; the incoming one has another name. Private must not lapse
    while the newest forwards to the old port too, and a trusted router stays trusted."""
    conf = tmp_path / "c.toml"
    conf.write_text(f'[vifs]\nprivate = ["{listed}"]\ntrusted = ["{listed}"]\n')
    m, problems = _join(VM, VM, cfg=load(str(conf)))
    assert not problems
    by = {v.key: v for v in m.vifs}
    assert all(by[k].private and by[k].trusted for k in ("5.0", "9.0"))
    assert not by["7.0"].private
    other = "00:16:3e:00:00:07"
    assert Switch(build(m)).send(12, _frame(other, MAC, "192.0.2.7", "192.0.2.5")).ports == set()


def test_three_domains_of_one_nic_are_one_group():
    """A restore of a checkpoint while a migration's copy still exists: still one NIC."""
    ports = tuple(PortInfo(f"vif{d}.0", 10 + d, "vif", d, 0, vm_uuid=VM) for d in (5, 9, 11))
    of = {"xenbr0": {p.name: OfPort(p.ofport, True) for p in ports}}
    vifs = {(d, 0): {"mac": MAC, "bridge": "xenbr0"} for d in (5, 9, 11)}
    info = {"xenbr0": BridgeInfo("xenbr0", ports, "secure", ("unix:x",), ("OpenFlow13",), True)}
    names = {5: "web", 9: "web--migratedaway", 11: "web--incoming"}
    models, problems = bridge_models(info, of, vifs, names, load(None))
    by = {v.key: v for v in models["xenbr0"].vifs}
    assert not problems
    assert [by[k].forwards for k in ("5.0", "9.0", "11.0")] == [False, False, True]
    assert by["11.0"].twin_ports == (15, 19)
    from_dom0 = Switch(build(models["xenbr0"])).send(
        OFPP_LOCAL, _frame("00:16:3e:00:00:07", MAC, "192.0.2.7", "192.0.2.5")
    )
    assert from_dom0.ports == {15, 19, 21}
