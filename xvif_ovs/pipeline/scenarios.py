"""Reference scenarios whose flow tables are kept in flows/golden/, so that a change to
the pipeline shows up as a reviewable diff of ovs-ofctl text.

Regenerate after an intended change:  python -m xvif_ovs.pipeline.scenarios flows/golden
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from ..model.host import BridgeModel, NatSpec, PortForward, PortVlans, Uplink, VifModel
from ..model.vifspec import parse_bridge, parse_ips
from .build import build
from .sim import Switch

UPLINK = 1


def _vif(domid: int, spec: str, ips: str = "", **kw) -> VifModel:
    return VifModel(
        domid,
        0,
        f"00:16:3e:00:00:{domid:02x}",
        parse_bridge(spec),
        parse_ips(ips),
        vif_port=domid,
        name=f"dom{domid}",
        **kw,
    )


def two_guests_one_vlan() -> str:
    b = BridgeModel("xenbr0", (UPLINK,), vifs=(_vif(5, "xenbr0.10", "192.0.2.5"), _vif(6, "xenbr0.10", "192.0.2.6")))
    return build(b).render()


def access_trunk_native() -> str:
    b = BridgeModel(
        "xenbr0",
        (UPLINK,),
        vifs=(
            _vif(5, "xenbr0.10", "192.0.2.5"),
            _vif(6, "xenbr0:10:20"),
            _vif(7, "xenbr0.10:20:30", "192.0.2.7 2001:db8::7"),
        ),
    )
    return build(b).render()


def private_mode() -> str:
    b = BridgeModel(
        "xenbr0", (UPLINK,), vifs=(_vif(5, "xenbr0", "192.0.2.5", private=True), _vif(6, "xenbr0", "192.0.2.6"))
    )
    return build(b).render()


def hvm_pair() -> str:
    hvm = VifModel(
        5, 0, "00:16:3e:00:00:05", parse_bridge("xenbr0"), parse_ips("192.0.2.5"), 5, 105, False, True, name="hvm"
    )
    return build(BridgeModel("xenbr0", (UPLINK,), vifs=(hvm,))).render()


def uplink_learning() -> str:
    """The flows, then table 4 after two hosts behind the uplink spoke on VLANs 0 and 10."""
    b = BridgeModel("xenbr0", (UPLINK,), vifs=(_vif(5, "xenbr0", "192.0.2.5"), _vif(6, "xenbr0.10")))
    fs = build(b)
    sw = Switch(fs)
    for mac, vlan in (("00:00:5e:00:53:01", None), ("00:00:5e:00:53:02", 10)):
        sw.send(UPLINK, {"dl_src": mac, "dl_dst": "ff:ff:ff:ff:ff:ff", "dl_type": 0x0806}, vlan=vlan)
    learned = sorted(f.render() for f in sw.tables.get(4, []))
    return (
        fs.render()
        + "# table 4 after frames from 00:00:5e:00:53:01 (untagged) and :02 (VLAN 10):\n"
        + "\n".join(learned)
        + "\n"
    )


def uplinks_and_strangers() -> str:
    """Trust: a two-member bond (ofports 2, 3) carrying every VLAN, an uplink with its own
    tag (ofport 4, access on VLAN 20, as a fake-bridge port), and a port nobody declared
    (ofport 9): no forwarding, counted."""
    b = BridgeModel(
        "xenbr0",
        special_uplinks=(Uplink("bond0", (2, 3)), Uplink("xapi20", (4,), PortVlans(tag=20))),
        vifs=(_vif(5, "xenbr0", "192.0.2.5"), _vif(6, "xenbr0.20", "198.51.100.6")),
        unmanaged=(9,),
    )
    return build(b).render()


def routed_host() -> str:
    """A routed bridge (Xen's vif-route): dom0's MAC 02:00:00:00:00:fe, two guests with
    addresses and one without (nothing routed for it); then table 6 after the LAN host
    198.51.100.1 sent ARP through the uplink."""
    router = "02:00:00:00:00:fe"
    b = BridgeModel(
        "xenbr1",
        (UPLINK,),
        vifs=(
            _vif(5, "xenbr1", "198.51.100.5 2001:db8:1::5"),
            _vif(6, "xenbr1", "198.51.100.6 198.51.100.64/28"),
            _vif(7, "xenbr1"),
        ),
        mode="routed",
        router_mac=router,
    )
    fs = build(b)
    sw = Switch(fs)
    lan = "00:00:5e:00:53:01"
    arp = {"dl_src": lan, "dl_dst": "ff:ff:ff:ff:ff:ff", "dl_type": 0x0806, "arp_op": 1, "arp_sha": lan}
    sw.send(UPLINK, arp | {"arp_spa": "198.51.100.1", "arp_tha": "00:00:00:00:00:00", "arp_tpa": "198.51.100.254"})
    learned = sorted(f.render() for f in sw.tables.get(6, []))
    return (
        fs.render()
        + "# table 6 after ARP from 198.51.100.1 (00:00:5e:00:53:01) on the uplink:\n"
        + "\n".join(learned)
        + "\n"
    )


def nat_host() -> str:
    """A NAT bridge (Xen's vif-nat): dom0's LAN address 198.51.100.254 and MAC
    02:00:00:00:00:fe, guests on 10.0.0.0/24 (gateway 10.0.0.1), dom0's tcp 8080 forwarded
    to the first guest's port 80, a guest with no address, conntrack zone 30838."""
    nat = NatSpec("198.51.100.254", "10.0.0.0/24", "10.0.0.1", 30838, (PortForward("tcp", 8080, "10.0.0.5", 80),))
    b = BridgeModel(
        "xennat",
        (UPLINK,),
        vifs=(_vif(5, "xennat", "10.0.0.5"), _vif(6, "xennat", "10.0.0.6"), _vif(7, "xennat")),
        mode="nat",
        router_mac="02:00:00:00:00:fe",
        nat=nat,
    )
    return build(b).render()


SCENARIOS: dict[str, Callable[[], str]] = {
    "two-guests-one-vlan": two_guests_one_vlan,
    "access-trunk-native": access_trunk_native,
    "private-mode": private_mode,
    "hvm-pair": hvm_pair,
    "uplink-learning": uplink_learning,
    "uplinks-and-strangers": uplinks_and_strangers,
    "routed-host": routed_host,
    "nat-host": nat_host,
}


def write(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, fn in SCENARIOS.items():
        (directory / f"{name}.flows").write_text(fn())


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "flows/golden"))
