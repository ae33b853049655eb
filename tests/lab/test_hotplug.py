"""The vif hotplug hook on the lab: what libxl runs, what OVSDB and XenStore end up
holding, real frames across VLANs, bad input, and concurrency."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from frames import Capture
from pyxs import Client

from xvif_ovs.lab.host import BridgeArg
from xvif_ovs.lab.sh import link_exists
from xvif_ovs.xenstore.vifwatch import VifWatcher

HOOK = Path(__file__).resolve().parents[2] / "deploy" / "vif-xvif-ovs"


@pytest.fixture(scope="module")
def lab_bridges():
    return [BridgeArg("xenbr0", "peth0"), BridgeArg("xenbr1", "peth1")]


def xs(host) -> Client:
    return Client(unix_socket_path=str(host.lab.xenstore_socket))


def xs_read(host, path: str) -> str | None:
    with xs(host) as c:
        return c.read(path.encode()).decode() if c.exists(path.encode()) else None


def port(host, name: str) -> dict:
    out = host.vsctl("--format=json", "--columns=name,tag,trunks,vlan_mode", "list", "Port", name)
    data = json.loads(out)
    row = dict(zip(data["headings"], data["data"][0], strict=True))
    as_list = lambda v: v[1] if isinstance(v, list) and v[0] == "set" else [v]  # noqa: E731
    return {"tag": as_list(row["tag"]), "trunks": as_list(row["trunks"]), "vlan_mode": as_list(row["vlan_mode"])}


def ovsdb_view(host) -> str:
    """Ports and interfaces as configured (not their counters), for "nothing changed" checks."""
    ports = host.vsctl("--format=json", "--columns=name,tag,trunks,vlan_mode", "list", "Port")
    ifaces = host.vsctl("--format=json", "--columns=name,external_ids,ofport_request", "list", "Interface")
    norm = lambda s: sorted(map(json.dumps, json.loads(s)["data"]))  # noqa: E731
    return json.dumps([norm(ports), norm(ifaces)])


def hook_env(host) -> dict[str, str]:
    """What the lab gives hotplug scripts: its XenStore and OVSDB, its log, this xvif-ovs."""
    return {**os.environ, **host.lab.hook_env()}


def hook(host, action: str, dev: str, domid: int, devid: int = 0, tap: bool = False, **env_over: str):
    """The hook run as libxl 4.17 runs it: a relative XENBUS_PATH, type_if as an argument."""
    env = hook_env(host)
    env.update(XENBUS_TYPE="vif", XENBUS_PATH=f"backend/vif/{domid}/{devid}", XENBUS_BASE_PATH="backend", netdev="")
    if tap:
        env.update(INTERFACE=dev, vif=dev.removesuffix("-emu"))
        argv = [str(HOOK), action, "type_if=tap"]
    else:
        env.update(vif=dev)
        argv = [str(HOOK), action, "type_if=vif"]
    env.update(env_over)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


class RawVifs:
    """Backend vifs made by hand, for feeding the hook what libxl never would."""

    def __init__(self, host) -> None:
        self.host = host
        self.made: list[tuple[str, int]] = []

    def make(self, domid: int, keys: dict[str, str], devid: int = 0, dev: str | None = None) -> str:
        dev = dev or f"vif{domid}.{devid}"
        subprocess.run(["ip", "link", "add", dev, "type", "veth", "peer", "name", f"xp{domid}x{devid}"], check=True)
        self.made.append((dev, domid))
        be = f"/local/domain/0/backend/vif/{domid}/{devid}"
        with xs(self.host) as c:
            c.write(f"/local/domain/{domid}/name".encode(), f"raw{domid}".encode())
            for k, v in {"frontend-id": str(domid), "online": "1", "state": "1", **keys}.items():
                c.write(f"{be}/{k}".encode(), v.encode())
        return dev

    def cleanup(self) -> None:
        for dev, domid in self.made:
            hook(self.host, "offline", dev, domid)
            for name in (dev, f"xp{domid}x0"):
                if link_exists(name):
                    subprocess.run(["ip", "link", "del", name], check=False)
            with xs(self.host) as c:
                for p in (f"/local/domain/0/backend/vif/{domid}", f"/local/domain/{domid}"):
                    if c.exists(p.encode()):
                        c.delete(p.encode())


@pytest.fixture
def raw(guests):
    r = RawVifs(guests)
    yield r
    r.cleanup()


# -- VLANs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("bridge=xenbr0", {"tag": [], "trunks": [], "vlan_mode": ["access"]}),  # VLAN 0 only, not a trunk
        ("bridge=xenbr0.10", {"tag": [10], "trunks": [], "vlan_mode": ["access"]}),
        ("bridge=xenbr0:10:20", {"tag": [], "trunks": [10, 20], "vlan_mode": ["trunk"]}),
        ("bridge=xenbr0.10:20:30", {"tag": [10], "trunks": [10, 20, 30], "vlan_mode": ["native-untagged"]}),
        ("vlan=10p/20", {"tag": [10], "trunks": [10, 20], "vlan_mode": ["native-untagged"]}),
        ("bridge=xenbr1.7", {"tag": [7], "trunks": [], "vlan_mode": ["access"]}),
    ],
)
def test_vlan_modes_in_ovsdb(guests, spec, want):
    guests.guest("v", 60, f"mac=00:16:3e:00:3c:01,{spec}")
    assert port(guests, "vif60.0") == want


def test_vlan_traffic_access_trunk_and_native(guests):
    guests.guest("a10", 61, "mac=00:16:3e:00:3d:01,bridge=xenbr0.10")
    guests.guest("b20", 62, "mac=00:16:3e:00:3e:01,bridge=xenbr0.20")
    guests.guest("trunk", 63, "mac=00:16:3e:00:3f:01,bridge=xenbr0:10:20")
    guests.guest("native", 64, "mac=00:16:3e:00:40:01,bridge=xenbr0.10:20")
    guests.guest("plain", 65, "mac=00:16:3e:00:41:01,bridge=xenbr0")
    everyone = ["a10", "b20", "trunk", "native", "plain"]

    def seen(sender: str, vlan: int | None) -> dict[str, set]:
        cap = Capture([g for g in everyone if g != sender])
        cap.send(sender, vlan)
        return cap.vlans()

    # An access-10 guest's broadcast: tagged 10 on the trunk, untagged on the native-10 port.
    assert seen("a10", None) == {"b20": set(), "trunk": {10}, "native": {None}, "plain": set()}
    # The trunk's VLAN 20 reaches the access-20 guest untagged, and the native port tagged.
    assert seen("trunk", 20) == {"a10": set(), "b20": {None}, "native": {20}, "plain": set()}
    # A VLAN the trunk does not carry goes nowhere; nor does untagged traffic from a pure trunk.
    assert seen("trunk", 30) == {"a10": set(), "b20": set(), "native": set(), "plain": set()}
    assert seen("trunk", None) == {"a10": set(), "b20": set(), "native": set(), "plain": set()}
    # The native port's untagged traffic is VLAN 10 (vif-openvswitch would have made it access-only).
    assert seen("native", None) == {"a10": {None}, "b20": set(), "trunk": {10}, "plain": set()}
    assert seen("native", 20) == {"a10": set(), "b20": {None}, "trunk": {20}, "plain": set()}


# -- lifecycle -----------------------------------------------------------------------


def test_online_offline_cycles_pv_and_hvm(guests):
    guests.guest("cyc", 66, "mac=00:16:3e:00:42:01,ip=192.0.2.66", hvm=True)
    guests.guest("peer", 67, "mac=00:16:3e:00:43:01,ip=192.0.2.67")
    ofport = xs_read(guests, "/local/domain/0/backend/vif/66/0/ofport")
    emu_ofport = xs_read(guests, "/local/domain/0/backend/vif/66/0/ofport-emu")
    assert ofport and emu_ofport and ofport != emu_ofport
    assert guests.vsctl("get", "interface", "vif66.0", "ofport").strip() == ofport
    for _ in range(2):
        assert hook(guests, "offline", "vif66.0", 66).returncode == 0
        assert hook(guests, "remove", "vif66.0-emu", 66, tap=True).returncode == 0
        ports = guests.vsctl("list-ports", "xenbr0").split()
        assert "vif66.0" not in ports and "vif66.0-emu" not in ports
        assert hook(guests, "offline", "vif66.0", 66).returncode == 0  # already gone: fine
        assert hook(guests, "online", "vif66.0", 66).returncode == 0
        assert hook(guests, "online", "vif66.0", 66).returncode == 0  # twice: fine, one port
        assert hook(guests, "add", "vif66.0-emu", 66, tap=True).returncode == 0
        assert guests.vsctl("list-ports", "xenbr0").split().count("vif66.0") == 1
        assert xs_read(guests, "/local/domain/0/backend/vif/66/0/ofport") == ofport  # stable across cycles
        assert guests.exec("cyc", "ping", "-c1", "-W2", "192.0.2.67", check=False).returncode == 0
    # Both backends of the HVM NIC carry the same identity, so the controller sees one NIC.
    ids = {d: guests.vsctl("get", "interface", d, "external_ids") for d in ("vif66.0", "vif66.0-emu")}
    for d in ids:
        assert (
            'xvif-domid="66"' in ids[d] and 'xvif-devid="0"' in ids[d] and 'attached-mac="00:16:3e:00:42:01"' in ids[d]
        )
    assert "xvif-kind=vif" in ids["vif66.0"] and "xvif-kind=emu" in ids["vif66.0-emu"]


def test_offline_and_add_are_no_ops_for_the_wrong_device_kind(guests):
    guests.guest("kind", 68, "mac=00:16:3e:00:44:01")
    assert hook(guests, "add", "vif68.0", 68).returncode == 0  # add is for taps: vif-common.sh exits 0
    assert hook(guests, "remove", "vif68.0", 68).returncode == 0
    assert "vif68.0" in guests.vsctl("list-ports", "xenbr0").split()


def test_netbsd_names_and_vifname_renaming(guests):
    guests.guest("nb", 69, "mac=00:16:3e:00:45:01,ip=192.0.2.69", netbsd=True)
    guests.guest("ren", 70, "mac=00:16:3e:00:46:01,ip=192.0.2.70,vifname=web0", hvm=True)
    ports = guests.vsctl("list-ports", "xenbr0").split()
    assert {"xvif69.0", "web0", "web0-emu"} <= set(ports)
    assert not link_exists("vif70.0") and not link_exists("vif70.0-emu")
    assert guests.exec("nb", "ping", "-c1", "-W2", "192.0.2.70", check=False).returncode == 0
    # offline finds the renamed device from vifname.
    assert hook(guests, "offline", "vif70.0", 70).returncode == 0
    assert "web0" not in guests.vsctl("list-ports", "xenbr0").split()


def test_xenstore_utils_see_connected_and_the_log_says_what_happened(guests):
    guests.guest("lg", 71, "mac=00:16:3e:00:47:01,bridge=xenbr0.10:20")
    out = subprocess.run(
        ["xenstore-read", "/local/domain/0/backend/vif/71/0/hotplug-status"],
        env={**os.environ, **guests.lab.env()},
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "connected"
    log = (guests.lab.dir / "xen-hotplug.log").read_text()
    line = next(ln for ln in log.splitlines() if "online vif71.0" in ln)
    for part in (
        "(domid 71 devid 0 domain lg)",
        "bridge=xenbr0",
        "vlan=native:10+trunk:20",
        "mac=00:16:3e:00:47:01",
        "connected",
    ):
        assert part in line, line


# -- bad input -----------------------------------------------------------------------

BASE = {"mac": "00:16:3e:00:50:01", "bridge": "xenbr0"}


@pytest.mark.parametrize(
    ("keys", "hint"),
    [
        ({"mac": "00:16:3e:00:50"}, "six colon-separated"),
        ({"mac": "01:00:5e:00:00:01"}, "multicast"),
        ({"mac": "ff:ff:ff:ff:ff:ff"}, "broadcast"),
        ({"mac": "00:00:00:00:00:00"}, "all zeros"),
        ({"bridge": "xenbr9"}, "bridge xenbr9 does not exist in OVSDB"),
        ({"bridge": "xenbr0.4095"}, "1-4094"),
        ({"bridge": "xenbr0.0"}, "1-4094"),
        ({"bridge": "xenbr0:10:x"}, "does not parse"),
        ({"bridge": "xenbr0:10:10"}, "twice"),
        ({"ip": "192.0.2.300"}, "not an IPv4/IPv6 address"),
        ({"ip": "hostname.example"}, "not an IPv4/IPv6 address"),
        ({"vlan": "5000"}, "1-4094"),
        ({"mtu": "12"}, "68-65535"),
        ({"vifname": "much-too-long-name"}, "interface name"),
    ],
)
def test_bad_vif_is_refused_and_changes_nothing(guests, raw, keys, hint):
    before = ovsdb_view(guests)
    dev = raw.make(80, {**BASE, **keys, "vifname": keys.get("vifname", "")} if "vifname" in keys else {**BASE, **keys})
    proc = hook(guests, "online", dev, 80)
    assert proc.returncode == 1
    be = "/local/domain/0/backend/vif/80/0"
    assert xs_read(guests, f"{be}/hotplug-status") == "error"
    assert hint in xs_read(guests, f"{be}/hotplug-error")
    assert hint in proc.stderr  # libxl logs the script's stderr
    assert xs_read(guests, f"{be}/ofport") is None
    assert ovsdb_view(guests) == before
    assert link_exists(dev)  # not renamed, not removed
    assert f"error: online {dev} (domid 80 devid 0 domain raw80)" in (guests.lab.dir / "xen-hotplug.log").read_text()


def test_mac_conflict_names_both_and_changes_nothing(guests, raw):
    guests.guest("owner", 81, "mac=00:16:3e:00:51:01")
    before = ovsdb_view(guests)
    dev = raw.make(82, {"mac": "00:16:3e:00:51:01", "bridge": "xenbr0.30"})
    proc = hook(guests, "online", dev, 82)
    assert proc.returncode == 1
    err = xs_read(guests, "/local/domain/0/backend/vif/82/0/hotplug-error")
    assert "vif 82.0" in err and "vif81.0 of domain owner (domid 81)" in err
    assert ovsdb_view(guests) == before


def test_same_mac_on_another_bridge_is_allowed(guests, raw):
    guests.guest("here", 83, "mac=00:16:3e:00:53:01")
    dev = raw.make(84, {"mac": "00:16:3e:00:53:01", "bridge": "xenbr1"})
    assert hook(guests, "online", dev, 84).returncode == 0


def link_flags(dev: str) -> int:
    return int(Path(f"/sys/class/net/{dev}/flags").read_text(), 16)


def admin_up(dev: str) -> bool:
    return bool(link_flags(dev) & 1)


IFF_UP_PROMISC = 0x101


def test_the_link_is_up_and_promiscuous_while_on_the_bridge_and_neither_after(guests, raw):
    """Promiscuous as OVS would make it, so ovs-vswitchd has no flags to rewrite."""
    dev = raw.make(89, {"mac": "00:16:3e:00:59:01", "bridge": "xenbr0"})
    assert link_flags(dev) & IFF_UP_PROMISC == 0
    assert hook(guests, "online", dev, 89).returncode == 0
    assert link_flags(dev) & IFF_UP_PROMISC == IFF_UP_PROMISC
    assert hook(guests, "offline", dev, 89).returncode == 0
    assert link_flags(dev) & IFF_UP_PROMISC == 0


def test_a_failed_transaction_after_the_link_went_up_leaves_it_as_it_was(guests, raw, monkeypatch):
    """The link goes up before the OVSDB transaction (see hotplug/run.py); when that
    transaction fails, the device is put back as libxl gave it. The failure is injected:
    a real one needs another writer to win a race at the right moment."""
    from xvif_ovs.errors import XvifError
    from xvif_ovs.hotplug import ovsport
    from xvif_ovs.hotplug.run import run

    dev = raw.make(88, {"mac": "00:16:3e:00:58:01", "bridge": "xenbr0"})
    before = (ovsdb_view(guests), link_flags(dev))
    at_transaction = []

    def failing_attach(db, cfg, target, *args, **kwargs):
        at_transaction.append(link_flags(target))
        raise XvifError("injected: the OVSDB transaction failed")

    monkeypatch.setattr(ovsport, "attach", failing_attach)
    env = {**hook_env(guests), "vif": dev, "XENBUS_PATH": "/local/domain/0/backend/vif/88/0"}
    env["XVIF_OVSDB"] = f"unix:{guests.lab.dir}/db.sock"  # in this process, OVS_RUNDIR is the host's
    assert run(["online"], env) == 1
    assert at_transaction and at_transaction[0] & IFF_UP_PROMISC == IFF_UP_PROMISC
    assert (ovsdb_view(guests), link_flags(dev)) == before
    assert xs_read(guests, "/local/domain/0/backend/vif/88/0/hotplug-status") == "error"
    assert "injected" in xs_read(guests, "/local/domain/0/backend/vif/88/0/hotplug-error")


def test_unreachable_ovsdb_is_an_error_in_xenstore(guests, raw):
    before = ovsdb_view(guests)
    dev = raw.make(85, BASE)
    assert not admin_up(dev)
    proc = hook(guests, "online", dev, 85, XVIF_OVSDB="unix:/nonexistent/db.sock")
    assert proc.returncode == 1
    assert xs_read(guests, "/local/domain/0/backend/vif/85/0/hotplug-status") == "error"
    assert "cannot connect to OVSDB" in xs_read(guests, "/local/domain/0/backend/vif/85/0/hotplug-error")
    assert ovsdb_view(guests) == before
    assert not admin_up(dev)  # the hook fails before touching the link, and leaves it down


def test_unreachable_xenstore_fails_loudly_and_changes_nothing(guests, raw):
    before = ovsdb_view(guests)
    dev = raw.make(86, BASE)
    proc = hook(guests, "online", dev, 86, XENSTORED_PATH="/nonexistent/socket")
    assert proc.returncode == 1 and "cannot connect to XenStore" in proc.stderr
    assert ovsdb_view(guests) == before


def test_missing_device_and_bad_invocation(guests, raw):
    with xs(guests) as c:
        c.write(b"/local/domain/0/backend/vif/87/0/mac", b"00:16:3e:00:57:01")
    try:
        proc = hook(guests, "online", "vif87.0", 87)
        assert proc.returncode == 1 and "device vif87.0 does not exist" in proc.stderr
        bad = hook(guests, "online", "vif87.0", 87, XENBUS_PATH="/somewhere/else")
        assert bad.returncode == 1 and "XENBUS_PATH" in bad.stderr
        usage = subprocess.run([str(HOOK), "frobnicate"], env=hook_env(guests), capture_output=True, text=True)
        assert usage.returncode == 1 and "usage: vif-xvif-ovs" in usage.stderr
    finally:
        with xs(guests) as c:
            c.delete(b"/local/domain/0/backend/vif/87")


# -- concurrency ---------------------------------------------------------------------


def test_fifty_concurrent_hooks_all_connect(guests, raw):
    devs = {100 + i: raw.make(100 + i, {"mac": f"00:16:3e:01:00:{i:02x}", "bridge": "xenbr0.10"}) for i in range(50)}
    env = hook_env(guests)
    t0 = time.monotonic()
    procs = {
        domid: subprocess.Popen(
            [str(HOOK), "online", "type_if=vif"],
            env={**env, "vif": dev, "XENBUS_PATH": f"backend/vif/{domid}/0"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for domid, dev in devs.items()
    }
    results = {d: (p.wait(60), p.stderr.read()) for d, p in procs.items()}
    elapsed = time.monotonic() - t0
    assert all(rc == 0 for rc, _ in results.values()), {d: e for d, (rc, e) in results.items() if rc}
    statuses = {xs_read(guests, f"/local/domain/0/backend/vif/{d}/0/hotplug-status") for d in devs}
    assert statuses == {"connected"}
    ofports = [xs_read(guests, f"/local/domain/0/backend/vif/{d}/0/ofport") for d in devs]
    assert len(set(ofports)) == 50
    assert set(devs.values()) <= set(guests.vsctl("list-ports", "xenbr0").split())
    # ovs-vswitchd rewrites each device's flags to set IFF_PROMISC as it adds it; every
    # vif must still be up once it has (a lost IFF_UP left a guest without a link).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = guests.vsctl("--format=csv", "--no-headings", "--columns=name,ofport", "list", "Interface")
        added = {
            n.strip('"')
            for n, port in (r.split(",") for r in rows.split())
            if port.lstrip("-").isdigit() and int(port) > 0
        }
        if set(devs.values()) <= added:
            break
        time.sleep(0.1)
    assert [d for d in devs.values() if not admin_up(d)] == []
    print(f"50 concurrent hooks: {elapsed:.2f} s")


# -- the XenStore watch API for the controller -----------------------------------------


def test_vif_watcher_reports_added_changed_removed(guests):
    guests.guest("w1", 90, "mac=00:16:3e:00:5a:01,ip=192.0.2.90")
    with VifWatcher(str(guests.lab.xenstore_socket)) as w:
        events = w.events(timeout=2)
        first = next(events)
        assert (first.kind, first.domid, first.devid) == ("added", 90, 0)
        assert first.keys["mac"] == "00:16:3e:00:5a:01" and first.keys["ip"] == "192.0.2.90"
        with xs(guests) as c:
            c.write(b"/local/domain/0/backend/vif/90/0/ip", b"192.0.2.91")
        changed = next(events)
        assert (changed.kind, changed.changed, changed.keys["ip"]) == ("changed", frozenset({"ip"}), "192.0.2.91")
        guests.guest("w2", 91, "mac=00:16:3e:00:5b:01")
        kinds = []
        for ev in events:
            kinds.append((ev.kind, ev.domid))
            if ev.domid == 91 and ev.keys.get("hotplug-status") == "connected":
                break
        assert kinds[0] == ("added", 91)
        from xvif_ovs.lab.domain import del_domain

        del_domain(guests.lab, "w1")
        gone = [ev for ev in events if ev.domid == 90]
        assert gone and gone[-1].kind == "removed"


# -- found in review: states a real host gets into --------------------------------------


def test_online_again_when_ofport_request_and_ofport_differ(guests):
    guests.guest("re", 92, "mac=00:16:3e:00:5c:01")
    guests.vsctl("set", "interface", "vif92.0", "ofport_request=4242")  # as if OVS could not honour it
    assert hook(guests, "online", "vif92.0", 92).returncode == 0
    assert guests.vsctl("list-ports", "xenbr0").split().count("vif92.0") == 1


def test_a_guest_reusing_anothers_vifname_does_not_take_its_port_down(guests, raw):
    guests.guest("owner", 93, "mac=00:16:3e:00:5d:01,vifname=shared0")
    dev = raw.make(94, {**BASE, "mac": "00:16:3e:00:5e:01", "vifname": "shared0"})
    assert hook(guests, "online", dev, 94).returncode == 1  # the name is taken
    assert hook(guests, "offline", dev, 94).returncode == 0  # libxl's clean-up after the failure
    assert "shared0" in guests.vsctl("list-ports", "xenbr0").split()
    assert link_exists("shared0")


def test_a_stale_port_of_a_dead_domain_does_not_block_its_mac(guests, raw):
    dead = raw.make(95, {**BASE, "mac": "00:16:3e:00:5f:01"})
    assert hook(guests, "online", dead, 95).returncode == 0
    with xs(guests) as c:  # the domain died and its backend went without an offline
        c.delete(b"/local/domain/0/backend/vif/95")
    dev = raw.make(96, {**BASE, "mac": "00:16:3e:00:5f:01"})
    proc = hook(guests, "online", dev, 96)
    assert proc.returncode == 0, proc.stderr
    ports = guests.vsctl("list-ports", "xenbr0").split()
    assert dev in ports and dead not in ports
