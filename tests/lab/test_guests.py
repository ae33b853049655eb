"""Guests booted the way libxl boots them, with real traffic through the real OVS."""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pyxs import Client

from xvif_ovs.errors import LabError
from xvif_ovs.lab.domain import add_domain, del_domain
from xvif_ovs.lab.host import BridgeArg
from xvif_ovs.lab.sh import link_exists, netns_list


@pytest.fixture(scope="module")
def lab_bridges():
    return [BridgeArg("xenbr0", "peth0"), BridgeArg("xenbr1", "peth1"), BridgeArg("xenint", None)]


def xs_read(host, path: str) -> str | None:
    with Client(unix_socket_path=str(host.lab.xenstore_socket)) as c:
        return c.read(path.encode()).decode() if c.exists(path.encode()) else None


def ports(host, bridge: str = "xenbr0") -> set[str]:
    return set(host.vsctl("list-ports", bridge).split())


def ping(host, guest: str, addr: str, count: int = 2) -> bool:
    return host.exec(guest, "ping", "-c", str(count), "-i", "0.2", "-W", "1", addr, check=False).returncode == 0


def test_two_guests_reach_each_other_and_the_lan(guests):
    guests.guest("a", 11, "mac=00:16:3e:00:0b:01,ip=192.0.2.11 2001:db8::11")
    guests.guest("b", 12, "mac=00:16:3e:00:0c:01,ip=192.0.2.12 2001:db8::12")
    assert ping(guests, "a", "192.0.2.12")
    assert ping(guests, "a", "192.0.2.1")  # the LAN behind the uplink
    assert ping(guests, "b", "2001:db8::11")
    assert guests.exec("lan", "ping", "-c", "1", "-W", "1", "192.0.2.12", check=False).returncode == 0
    # TCP end to end: bad checksums from veth offloads would break this, not ping.
    guests.exec("b", "iperf3", "-s", "-1", "-D", "--pidfile", "/tmp/xvif-iperf-b.pid")
    time.sleep(0.3)
    out = guests.exec("a", "iperf3", "-c", "192.0.2.12", "-t", "1", "-J", timeout=30).stdout
    assert json.loads(out)["end"]["sum_received"]["bytes"] > 1_000_000


def test_xenstore_and_ovsdb_carry_what_libxl_and_xens_own_script_write(guests):
    """The lab keeps libxl's contract well enough for Xen's own vif-openvswitch to work."""
    dom = guests.guest("kv", 13, "mac=00:16:3e:00:0d:01,ip=192.0.2.13,mtu=1400,script=vif-openvswitch")
    be = "/local/domain/0/backend/vif/13/0"
    assert xs_read(guests, f"{be}/hotplug-status") == "connected"
    assert xs_read(guests, f"{be}/frontend") == "/local/domain/13/device/vif/0"
    assert xs_read(guests, f"{be}/frontend-id") == "13"
    assert xs_read(guests, f"{be}/mac") == "00:16:3e:00:0d:01"
    assert xs_read(guests, f"{be}/bridge") == "xenbr0"
    assert xs_read(guests, f"{be}/ip") == "192.0.2.13"
    assert xs_read(guests, f"{be}/mtu") == "1400"
    assert xs_read(guests, f"{be}/type") == "vif"
    assert xs_read(guests, f"{be}/script") == "/etc/xen/scripts/vif-openvswitch"
    assert xs_read(guests, "/local/domain/13/device/vif/0/backend") == be
    vm = xs_read(guests, "/local/domain/13/vm")
    assert vm == f"/vm/{dom.uuid}" and xs_read(guests, f"{vm}/name") == "kv"
    # Xen's own xenstore-read agrees (libxenstore through XENSTORED_PATH).
    env = guests.lab.env()
    out = subprocess.run(["xenstore-read", f"{be}/hotplug-status"], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "connected"
    # vif-openvswitch put the port on the bridge with its external ids.
    assert "vif13.0" in ports(guests)
    ids = guests.vsctl("get", "interface", "vif13.0", "external_ids")
    assert 'attached-mac="00:16:3e:00:0d:01"' in ids and "xen-vm-name=kv" in ids
    mtu = guests.exec("kv", "cat", "/sys/class/net/eth0/mtu").stdout.strip()
    assert mtu == "1400"


def test_hvm_guest_has_the_emulated_twin_with_the_same_mac(guests):
    guests.guest("hvm", 14, "mac=00:16:3e:00:0e:01,ip=192.0.2.14", hvm=True)
    assert {"vif14.0", "vif14.0-emu"} <= ports(guests)
    assert xs_read(guests, "/local/domain/0/backend/vif/14/0/type") == "vif_ioemu"
    macs = {dev: guests.exec("hvm", "cat", f"/sys/class/net/{dev}/address").stdout.strip() for dev in ("eth0", "emu0")}
    assert macs == {"eth0": "00:16:3e:00:0e:01", "emu0": "00:16:3e:00:0e:01"}
    assert ping(guests, "hvm", "192.0.2.1")


def test_netbsd_naming_and_vifname_renaming(guests):
    guests.guest("nb", 15, "ip=192.0.2.15", netbsd=True)
    assert "xvif15.0" in ports(guests)
    guests.guest("named", 16, "ip=192.0.2.16,vifname=web-nic", hvm=True)
    assert {"web-nic", "web-nic-emu"} <= ports(guests)  # the script renamed both, as vif-common.sh does
    assert not link_exists("vif16.0")
    assert ping(guests, "nb", "192.0.2.16")


def test_guests_on_other_bridges_and_vlans(guests):
    guests.guest("v10a", 21, "bridge=xenbr0.10,ip=198.18.10.1")
    guests.guest("v10b", 22, "bridge=xenbr0.10,ip=198.18.10.2")
    guests.guest("v20", 23, "bridge=xenbr0.20,ip=198.18.10.3")
    guests.guest("br1", 24, "bridge=xenbr1,ip=198.51.100.24")
    guests.guest("int", 25, "bridge=xenint,ip=198.18.20.1")
    assert guests.vsctl("get", "port", "vif21.0", "tag").strip() == "10"
    assert ping(guests, "v10a", "198.18.10.2")
    assert not ping(guests, "v20", "198.18.10.1", count=1)  # another VLAN
    assert ping(guests, "br1", "198.51.100.1")  # xenbr1's own LAN
    assert "vif25.0" in ports(guests, "xenint")


def test_domain_del_removes_everything_it_made(guests):
    guests.guest("gone", 31, "ip=192.0.2.31", hvm=True)
    from xvif_ovs.lab.domain import del_domain

    del_domain(guests.lab, "gone")
    assert not {"vif31.0", "vif31.0-emu"} & ports(guests)
    assert not link_exists("vif31.0") and "xvl-gone" not in netns_list()
    assert xs_read(guests, "/local/domain/0/backend/vif/31") is None
    assert xs_read(guests, "/local/domain/31") is None
    assert "gone" not in guests.lab.state_file.load().domains


def _host_view(host) -> tuple:
    with Client(unix_socket_path=str(host.lab.xenstore_socket)) as c:
        backends = c.list(b"/local/domain/0/backend/vif") if c.exists(b"/local/domain/0/backend/vif") else []
        domains = c.list(b"/local/domain")
    return (
        frozenset(ports(host)),
        frozenset(netns_list()),
        frozenset(backends),
        frozenset(domains),
        frozenset(host.lab.state_file.load().domains),
    )


@pytest.mark.parametrize(
    ("name", "domid", "vifs", "hint"),
    [
        ("dup", 41, ["ip=192.0.2.41"], "domid 41 is already used"),
        ("first", 42, ["ip=192.0.2.42"], "a domain named first already exists"),
        ("bad", 43, ["mac=00:16:3e:zz:00:01"], "six colon-separated"),
        ("bad", 43, ["bridge=xenbr0.5000"], "1-4094"),
        ("bad", 43, ["bridge=xenbr7"], "bridge xenbr7 does not exist"),
        ("bad", 43, ["script=/nonexistent/vif-x"], "does not exist or is not executable"),
        ("bad", 0, ["ip=192.0.2.43"], "out of range"),
        ("lan", 43, ["ip=192.0.2.43"], "LAN side"),
        ("bad", 43, ["ip=192.0.2.43", "devid=0"], "same devid"),
    ],
)
def test_bad_input_is_refused_and_leaves_nothing(guests, name, domid, vifs, hint):
    guests.guest("first", 41, "ip=192.0.2.40")
    before = _host_view(guests)
    with pytest.raises(LabError, match=hint):
        add_domain(guests.lab, name, domid, vifs)
    assert _host_view(guests) == before


def test_a_failing_hotplug_script_is_reported_and_undone(guests, tmp_path):
    script = tmp_path / "vif-fails"
    script.write_text(
        "#!/bin/sh\n"
        'xenstore-write "$XENBUS_PATH/hotplug-error" "bridge is on fire" "$XENBUS_PATH/hotplug-status" error\n'
        "exit 1\n"
    )
    script.chmod(0o755)
    before = _host_view(guests)
    with pytest.raises(LabError, match="bridge is on fire"):
        add_domain(guests.lab, "doomed", 44, [f"ip=192.0.2.44,script={script}"], hvm=True)
    assert _host_view(guests) == before
    assert not link_exists("vif44.0") and not link_exists("vif44.0-emu")


def test_concurrent_boots(guests):
    def boot(i: int) -> None:
        guests.guest(f"c{i}", 50 + i, f"ip=192.0.2.{50 + i}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(boot, range(8)))
    assert {f"vif{50 + i}.0" for i in range(8)} <= ports(guests)
    assert ping(guests, "c0", "192.0.2.57")


def test_scripts_run_with_exactly_libxls_arguments_and_environment(guests, tmp_path):
    """libxl 4.17 (libxl_linux.c) passes XENBUS_PATH relative to dom0's home: a hook that
    insisted on an absolute path once failed every vif on a real host while the lab,
    which passed an absolute one, saw nothing. The lab must pass what libxl passes."""
    record = tmp_path / "calls"
    script = tmp_path / "vif-record"
    names = "script XENBUS_TYPE XENBUS_PATH XENBUS_BASE_PATH netdev vif INTERFACE"
    script.write_text(
        "#!/bin/sh\n"
        f'{{ echo "ARGS $*"; for v in {names}; do eval "echo $v=\\${{$v-UNSET}}"; done; }} >> {record}\n'
        '[ "$1" = online ] && xenstore-write "$XENBUS_PATH/hotplug-status" connected\n'
        "exit 0\n"
    )
    script.chmod(0o755)
    add_domain(guests.lab, "rec", 46, [f"script={script},gatewaydev=peth0"], hvm=True)
    del_domain(guests.lab, "rec")
    calls = [c.strip().splitlines() for c in record.read_text().split("ARGS ")[1:]]
    env = [
        f"script={script}",
        "XENBUS_TYPE=vif",
        "XENBUS_PATH=backend/vif/46/0",
        "XENBUS_BASE_PATH=backend",
        "netdev=peth0",
        "vif=vif46.0",
        "INTERFACE=vif46.0-emu",
    ]
    assert [c[0] for c in calls] == [
        "online type_if=vif",
        "add type_if=tap",
        "offline type_if=vif",
        "remove type_if=tap",
    ]
    for c in calls:
        assert c[1:] == env
