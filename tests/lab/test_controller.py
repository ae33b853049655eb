"""The controller on the lab: real ovs-vswitchd, real OpenFlow, real frames between guests."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time

import pytest
from frames import Capture
from pyxs import Client

from xvif_ovs.lab import daemons
from xvif_ovs.lab.domain import del_domain, migrate_domain
from xvif_ovs.lab.host import BridgeArg
from xvif_ovs.pipeline.build import P_ALLOW, P_DROP
from xvif_ovs.pipeline.flow import COOKIE_MAGIC, COOKIE_MASK, vif_owner

CONFIG = """
[controller]
bridges = ["xenbr0", "xenbr1"]
learn_idle_timeout = 120

[bridges.xenbr1]
reserved_for = ["router"]

[vifs]
private = ["loner"]
trusted = ["router"]
"""


@pytest.fixture(scope="module")
def lab_bridges():
    return [BridgeArg("xenbr0", "peth0"), BridgeArg("xenbr1", "peth1")]


def ofctl(host, *args: str, bridge: str = "xenbr0") -> str:
    env = host.lab.env()
    cmd = ["ovs-ofctl", "-O", "OpenFlow13", args[0], f"unix:{host.lab.dir}/{bridge}.mgmt", *args[1:]]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout


def vif_cookie(purpose: int, domid: int, devid: int = 0) -> str:
    return f"cookie={COOKIE_MAGIC | purpose << 40 | vif_owner(domid, devid):#x}/0xffffff00ffffffff"


def packets(host, purpose: int, domid: int, bridge: str = "xenbr0") -> int:
    out = ofctl(host, "dump-flows", vif_cookie(purpose, domid), bridge=bridge)
    return sum(int(n) for n in re.findall(r"n_packets=(\d+)", out))


def wait_for(cond, what: str, timeout: float = 15.0) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - t0


def wait_vif(host, domid: int, bridge: str = "xenbr0") -> None:
    wait_for(
        lambda: "table=1" in ofctl(host, "dump-flows", vif_cookie(P_ALLOW, domid), bridge=bridge),
        f"flows of vif{domid}.0",
    )


def ping(host, guest: str, addr: str, count: int = 1) -> bool:
    cmd = ["ping", "-6" if ":" in addr else "-4", "-c", str(count), "-i", "0.2", "-W", "1", addr]
    return host.exec(guest, *cmd, check=False).returncode == 0


@pytest.fixture(scope="module")
def controller(host):
    cfg = host.lab.dir / "controller.toml"
    cfg.write_text(CONFIG)
    host.lab.start_controller(cfg)
    wait_for(lambda: "connected" in (host.lab.dir / "controller.log").read_text(), "the controller to connect")
    yield host
    host.lab.stop_controller()


@pytest.fixture
def net(controller, guests):
    return guests


def flow_stats(host, bridge: str = "xenbr0") -> dict[str, tuple[int, float]]:
    """Each of the controller's flows (its text without counters) -> (n_packets, duration
    in seconds). Not table 4: what the learn action makes comes and goes with traffic."""
    out = {}
    for line in ofctl(host, "dump-flows", bridge=bridge).splitlines():
        if "table=4" in line or "cookie=" not in line:
            continue
        age = re.search(r"duration=([\d.]+)s", line)
        packets = re.search(r"n_packets=(\d+)", line)
        key = re.sub(r"(duration|n_packets|n_bytes|idle_age|hard_age)=[\d.]+s?, ", "", line).strip()
        out[key] = (int(packets.group(1)), float(age.group(1)))
    return out


def log_text(host) -> str:
    return (host.lab.dir / "controller.log").read_text()


# -- allowed traffic -----------------------------------------------------------------------


def test_guests_and_the_lan_talk_through_the_pipeline(net):
    net.guest("a", 11, "mac=00:16:3e:00:0b:01,ip=192.0.2.11 2001:db8::11")
    net.guest("b", 12, "mac=00:16:3e:00:0c:01,ip=192.0.2.12 2001:db8::12")
    wait_vif(net, 11)
    wait_vif(net, 12)
    flows = ofctl(net, "dump-flows")
    assert "NORMAL" not in flows and "CONTROLLER" not in flows  # ours, all of it; nothing to the controller
    assert ping(net, "a", "192.0.2.12", 3)
    assert ping(net, "a", "192.0.2.1")
    assert net.exec("lan", "ping", "-c1", "-W1", "192.0.2.12", check=False).returncode == 0
    assert ping(net, "b", "2001:db8::11", 2)  # IPv6 with neighbour discovery through port security
    net.exec("b", "iperf3", "-s", "-1", "-D", "--pidfile", "/tmp/xvif-ctl-iperf.pid")
    time.sleep(0.3)
    out = net.exec("a", "iperf3", "-c", "192.0.2.12", "-t", "1", timeout=30).stdout
    assert "receiver" in out
    assert "packet-in" not in log_text(net)
    # The controller wakes ovs-vswitchd through a management socket when OVS connects
    # (see controller/main.py); that must look like any ovs-ofctl call, not an error.
    assert "connection dropped" not in (net.lab.dir / "ovs-vswitchd.log").read_text()


def test_dhcp_client_passes_and_a_rogue_dhcp_server_does_not(net):
    net.guest("d", 13, "mac=00:16:3e:00:0d:01,ip=192.0.2.13")
    wait_vif(net, 13)
    cap = Capture(["lan"])
    discover = 'Ether(src=MAC,dst="ff:ff:ff:ff:ff:ff")/IP(src="0.0.0.0",dst="255.255.255.255")/UDP(sport=68,dport=67)/M'
    cap.send_frame("d", discover)
    assert len(cap.results()["lan"]) >= 1
    before = packets(net, P_DROP, 13)
    cap = Capture(["lan"])
    offer = 'Ether(src=MAC,dst="ff:ff:ff:ff:ff:ff")/IP(src="192.0.2.13",dst="255.255.255.255")/UDP(sport=67,dport=68)/M'
    cap.send_frame("d", offer)
    assert cap.results()["lan"] == []
    assert packets(net, P_DROP, 13) >= before + 1


SPOOFS = {
    "foreign source MAC": 'Ether(src="00:16:3e:66:66:66",dst="ff:ff:ff:ff:ff:ff")/IP(src="192.0.2.14",dst="192.0.2.1")/UDP()/M',
    "foreign IPv4 source": 'Ether(src=MAC,dst="ff:ff:ff:ff:ff:ff")/IP(src="192.0.2.99",dst="192.0.2.1")/UDP()/M',
    "ARP with another sha": 'Ether(src=MAC,dst="ff:ff:ff:ff:ff:ff")/ARP(op=2,hwsrc="00:16:3e:66:66:66",psrc="192.0.2.14",pdst="192.0.2.1")/M',
    "ARP for another IP": 'Ether(src=MAC,dst="ff:ff:ff:ff:ff:ff")/ARP(op=2,hwsrc=MAC,psrc="192.0.2.1",pdst="192.0.2.1")/M',
    "router advertisement": 'Ether(src=MAC,dst="33:33:00:00:00:01")/IPv6(src="fe80::216:3eff:fe00:e01",dst="ff02::1")/ICMPv6ND_RA()/M',
    "NA for another address": 'Ether(src=MAC,dst="33:33:00:00:00:01")/IPv6(src="2001:db8::14",dst="ff02::1")/ICMPv6ND_NA(tgt="2001:db8::1")/ICMPv6NDOptDstLLAddr(lladdr=MAC)/M',
    "NS with another sll": 'Ether(src=MAC,dst="33:33:ff:00:00:01")/IPv6(src="2001:db8::14",dst="ff02::1:ff00:1")/ICMPv6ND_NS(tgt="2001:db8::1")/ICMPv6NDOptSrcLLAddr(lladdr="00:16:3e:66:66:66")/M',
    "tagged frame on an access port": 'Ether(src=MAC,dst="ff:ff:ff:ff:ff:ff")/Dot1Q(vlan=20)/IP(src="192.0.2.14",dst="192.0.2.1")/UDP()/M',
}


def test_every_spoof_is_dropped_and_counted(net):
    net.guest("s", 14, "mac=00:16:3e:00:0e:01,ip=192.0.2.14 2001:db8::14")
    net.guest("peer", 15, "mac=00:16:3e:00:0f:01,ip=192.0.2.15 2001:db8::15")
    wait_vif(net, 14)
    wait_vif(net, 15)
    legit = 'Ether(src=MAC,dst="ff:ff:ff:ff:ff:ff")/IP(src="192.0.2.14",dst="192.0.2.255")/UDP(sport=9,dport=9)/M'
    cap = Capture(["lan", "peer"])
    cap.send_frame("s", legit)
    assert all(cap.results().values()), "the sniffers see nothing: the spoof checks below would prove nothing"
    for what, expr in SPOOFS.items():
        before = packets(net, P_DROP, 14)
        cap = Capture(["lan", "peer"])
        cap.send_frame("s", expr, count=3)
        got = cap.results()
        assert got == {"lan": [], "peer": []}, f"{what} leaked: {got}"
        assert packets(net, P_DROP, 14) >= before + 3, f"{what} was not counted as vif14.0's drop"
    wait_for(lambda: "port security on xenbr0: dropped" in log_text(net), "the drop summary in the log", 15)


def test_a_guest_sending_from_endless_macs_makes_few_datapath_flows(net):
    """Each source MAC matched exactly would cost an upcall and a datapath flow that all
    guests share; the prefix guard bounds a port at 48 whatever it sends."""
    net.guest("many", 16, "mac=00:16:3e:00:10:01,ip=192.0.2.16")
    wait_vif(net, 16)
    before = packets(net, P_DROP, 16)
    cap = Capture(["lan"])
    frames = '[Ether(src=str(RandMAC()),dst="ff:ff:ff:ff:ff:ff")/IP(src="192.0.2.16",dst="192.0.2.255")/UDP(sport=9,dport=9)/M for _ in range(2000)]'
    cap.send_frame("many", frames)
    assert cap.results()["lan"] == []
    # Counted for the vif (the switch pushes datapath counters to its flows within a second).
    wait_for(lambda: packets(net, P_DROP, 16) >= before + 2000, "2000 drops counted for vif16.0", 10)
    ctl = str(net.lab.dir / "ovs-vswitchd.ctl")
    cmd = ["ovs-appctl", "-t", ctl, "dpctl/dump-flows", "--names"]
    dp = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    mine = [ln for ln in dp.splitlines() if "in_port(vif16.0)" in ln]
    assert 0 < len(mine) <= 50, f"{len(mine)} datapath flows for one port:\n" + "\n".join(mine[:5])


def test_a_port_ovs_could_not_create_gets_no_flows_for_its_requested_ofport(net):
    """A vif's flows go in for its requested ofport while ovs-vswitchd creates the port,
    but not for a port it failed to create: it may give that number to another port."""
    be = "/local/domain/0/backend/vif/77/0"
    with Client(unix_socket_path=str(net.lab.xenstore_socket)) as c:
        for k, v in {"mac": "00:16:3e:00:4d:01", "bridge": "xenbr0", "online": "1"}.items():
            c.write(f"{be}/{k}".encode(), v.encode())
    ids = ["external_ids:xvif-domid=77", "external_ids:xvif-devid=0", "external_ids:xvif-kind=vif"]
    net.vsctl("add-port", "xenbr0", "vif77.0", "--", "set", "Interface", "vif77.0", "ofport_request=777", *ids)
    try:
        wait_for(lambda: net.vsctl("get", "Interface", "vif77.0", "ofport").strip() == "-1", "ovs-vswitchd to fail")
        # A guest booted after it: once its flows are in, the controller has seen vif77.0 too.
        net.guest("after", 78, "mac=00:16:3e:00:4e:01,ip=192.0.2.78")
        wait_vif(net, 78)
        assert "in_port=777" not in ofctl(net, "dump-flows")
    finally:
        net.vsctl("del-port", "xenbr0", "vif77.0")
        with Client(unix_socket_path=str(net.lab.xenstore_socket)) as c:
            c.delete(b"/local/domain/0/backend/vif/77")


def test_a_destroyed_guest_takes_all_its_flows_and_nothing_else(net):
    """A vif that goes is removed by one delete on its cookie: it must take every flow of
    that vif and leave the neighbour's, and a flow someone else put in with the same low
    cookie bits (not our magic) alone."""
    net.guest("stays", 21, "mac=00:16:3e:00:15:01,ip=192.0.2.21")
    net.guest("goes", 22, "mac=00:16:3e:00:16:01,ip=192.0.2.22")
    wait_vif(net, 21)
    wait_vif(net, 22)
    owner = f"{vif_owner(22, 0):#x}"
    ofctl(net, "add-flow", f"table=9,priority=1,cookie={owner},actions=drop")  # an operator's
    mine = f"cookie={COOKIE_MAGIC | vif_owner(22, 0):#x}/{COOKIE_MASK | 0xFFFFFFFF:#x}"
    theirs = f"cookie={COOKIE_MAGIC | vif_owner(21, 0):#x}/{COOKIE_MASK | 0xFFFFFFFF:#x}"
    assert ofctl(net, "dump-flows", mine).count("cookie=") > 20
    before = ofctl(net, "dump-flows", "--no-stats", theirs)
    try:
        del_domain(net.lab, "goes")
        wait_for(lambda: "cookie=" not in ofctl(net, "dump-flows", mine), "vif22.0's flows to go")
        assert ofctl(net, "dump-flows", "--no-stats", theirs) == before
        assert f"cookie={owner}" in ofctl(net, "dump-flows", "table=9")
        assert ping(net, "stays", "192.0.2.1")
    finally:
        ofctl(net, "del-flows", f"table=9,cookie={owner}/-1")


def test_nothing_crosses_vlans(net):
    net.guest("v10", 21, "mac=00:16:3e:00:15:01,bridge=xenbr0.10")
    net.guest("v20", 22, "mac=00:16:3e:00:16:01,bridge=xenbr0.20")
    net.guest("tr", 23, "mac=00:16:3e:00:17:01,bridge=xenbr0:10:20")
    net.guest("pl", 24, "mac=00:16:3e:00:18:01,bridge=xenbr0")
    for d in (21, 22, 23, 24):
        wait_vif(net, d)
    others = ["v10", "v20", "tr", "pl"]
    ether = 'Ether(src=MAC,dst="ff:ff:ff:ff:ff:ff")'

    def seen(sender: str, vlan: int | None) -> dict:
        cap = Capture([g for g in others if g != sender] + ["lan"])
        tag = f"/Dot1Q(vlan={vlan})" if vlan else ""
        cap.send_frame(sender, f'{ether}{tag}/IP(src="198.18.255.1",dst="198.18.255.2")/UDP(sport=9,dport=9)/M')
        return cap.vlans()

    assert seen("v10", None) == {"v20": set(), "tr": {10}, "pl": set(), "lan": {10}}
    assert seen("tr", 20) == {"v10": set(), "v20": {None}, "pl": set(), "lan": {20}}
    assert seen("pl", None) == {"v10": set(), "v20": set(), "tr": set(), "lan": {None}}


def test_private_vif_reaches_the_lan_but_no_guest(net):
    net.guest("loner", 31, "mac=00:16:3e:00:1f:01,ip=192.0.2.31")
    net.guest("other", 32, "mac=00:16:3e:00:20:01,ip=192.0.2.32")
    wait_vif(net, 31)
    wait_vif(net, 32)
    assert ping(net, "loner", "192.0.2.1")
    assert not ping(net, "loner", "192.0.2.32")
    assert not ping(net, "other", "192.0.2.31")


def test_reserved_bridge_admits_only_named_domains(net):
    net.guest("router", 33, "mac=00:16:3e:00:21:01,bridge=xenbr1,ip=198.51.100.33")
    net.guest("intruder", 34, "mac=00:16:3e:00:22:01,bridge=xenbr1,ip=198.51.100.34")
    wait_vif(net, 33, "xenbr1")
    assert ping(net, "router", "198.51.100.1")
    assert not ping(net, "intruder", "198.51.100.1")
    assert "table=1" not in ofctl(net, "dump-flows", vif_cookie(P_ALLOW, 34), bridge="xenbr1")


def test_uplink_macs_are_learned_in_the_switch(net):
    net.guest("l", 35, "mac=00:16:3e:00:23:01,ip=192.0.2.35")
    wait_vif(net, 35)
    assert ping(net, "l", "192.0.2.1", 2)
    lan_mac = net.exec("lan", "cat", "/sys/class/net/eth0/address").stdout.strip()
    learned = ofctl(net, "dump-flows", "table=4")
    assert f"dl_dst={lan_mac}" in learned and "idle_timeout=120" in learned
    limit = net.vsctl("--columns=flow_limit,overflow_policy", "list", "Flow_Table")
    assert "65536" in limit and "evict" in limit  # learning is bounded
    assert "packet-in" not in log_text(net)


def test_hvm_pair_follows_the_live_backend(net):
    net.guest("h", 36, "mac=00:16:3e:00:24:01,ip=192.0.2.36", hvm=True)
    net.guest("x", 37, "mac=00:16:3e:00:25:01,ip=192.0.2.37")
    wait_vif(net, 36)
    wait_vif(net, 37)
    assert ping(net, "x", "192.0.2.36")  # through the PV vif
    # The PV driver goes away (link down) and the emulated NIC takes over with the address.
    net.exec("h", "ip", "link", "set", "eth0", "down")
    net.exec("h", "ip", "addr", "add", "192.0.2.36/24", "dev", "emu0")
    net.exec("h", "ip", "link", "set", "emu0", "up")
    wait_for(lambda: ping(net, "x", "192.0.2.36"), "traffic to follow the emulated NIC", 10)


def test_an_ip_change_in_xenstore_gets_new_rules_without_hotplug(net):
    net.guest("m", 38, "mac=00:16:3e:00:26:01,ip=192.0.2.38")
    wait_vif(net, 38)
    assert ping(net, "m", "192.0.2.1")
    with Client(unix_socket_path=str(net.lab.xenstore_socket)) as c:
        c.write(b"/local/domain/0/backend/vif/38/0/ip", b"192.0.2.88")
    net.exec("m", "ip", "addr", "add", "192.0.2.88/24", "dev", "eth0")
    wait_for(lambda: "nw_src=192.0.2.88" in ofctl(net, "dump-flows", "table=1"), "rules for the new address", 10)
    assert not ping(net, "m", "192.0.2.1")  # the old address is no longer its own
    assert net.exec("m", "ping", "-c1", "-W1", "-I", "192.0.2.88", "192.0.2.1", check=False).returncode == 0


# -- restarts ------------------------------------------------------------------------------


def test_controller_kill_and_restart_loses_no_packets(net):
    net.guest("f1", 41, "mac=00:16:3e:00:29:01,ip=192.0.2.41")
    net.guest("f2", 42, "mac=00:16:3e:00:2a:01,ip=192.0.2.42")
    wait_vif(net, 41)
    wait_vif(net, 42)
    flows_before = set(flow_stats(net))
    flood = subprocess.Popen(
        ["ip", "netns", "exec", "xvl-f1", "ping", "-q", "-c", "1500", "-i", "0.002", "192.0.2.42"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    net.lab.stop_controller(kill=True)
    stats_before = flow_stats(net)
    log_at = len(log_text(net))
    net.lab.start_controller(net.lab.dir / "controller.toml")
    # The new process's own connection, not a line the killed one wrote.
    wait_for(lambda: "switch xenbr0 connected" in log_text(net)[log_at:], "the restarted controller to connect")
    out, _ = flood.communicate(timeout=60)
    assert " 0% packet loss" in out, out
    wait_for(lambda: "switch xenbr1 connected" in log_text(net)[log_at:], "the restarted controller to connect")
    stats_after = flow_stats(net)
    assert set(stats_after) == flows_before  # it found nothing to change
    # ... and replaced nothing either: a flow deleted and added again would restart its
    # counters and its age.
    for key, (packets, age) in stats_before.items():
        assert stats_after[key][0] >= packets and stats_after[key][1] >= age, key


def test_a_guest_migrated_within_the_host_stays_reachable(net):
    """`xl migrate` to localhost, as libxl orders it: the incoming domain's vif goes online
    while the old one still runs with the same MAC, then the old one goes. A peer pinging
    the guest every 5 ms through all of it loses next to nothing, and what is left
    afterwards is exactly the pipeline of a guest booted at the new domid."""
    net.guest("mover", 46, "mac=00:16:3e:00:2e:01,ip=192.0.2.46")
    net.guest("watch", 47, "mac=00:16:3e:00:2f:01,ip=192.0.2.47")
    wait_vif(net, 46)
    wait_vif(net, 47)
    assert ping(net, "watch", "192.0.2.46")
    log_at = len(log_text(net))
    for old_domid, new_domid in ((46, 48), (48, 49)):  # and once more: the moved guest moves again
        # Pings every 5 ms from before the migration until a second after it: the flood
        # spans the whole switch-over however long the hooks take.
        flood = subprocess.Popen(
            ["ip", "netns", "exec", "xvl-watch", "ping", "-q", "-i", "0.005", "-W", "1", "192.0.2.46"],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        dom = migrate_domain(net.lab, "mover", new_domid)
        time.sleep(1)
        flood.send_signal(signal.SIGINT)
        out, _ = flood.communicate(timeout=60)
        assert (dom.name, dom.domid) == ("mover", new_domid)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m and int(m.group(1)) >= 200, out
        lost = int(m.group(1)) - int(m.group(2))
        assert lost <= 20, f"{lost} of {m.group(1)} pings lost (5 ms apart) across the migration:\n{out}"
        assert "table=1" not in ofctl(net, "dump-flows", vif_cookie(P_ALLOW, old_domid))  # the old domain's flows went
        assert ping(net, "watch", "192.0.2.46", 3)
        assert (
            subprocess.run(
                ["ip", "netns", "exec", dom.netns, "ping", "-c", "1", "-W", "1", "192.0.2.47"], capture_output=True
            ).returncode
            == 0
        )
    assert "MAC conflict" not in log_text(net)[log_at:]


def test_xenstore_lost_while_vifs_change_removes_no_flow(net):
    """The XenStore connection drops (the server restarts) again and again while vifs are
    added and changed: the controller keeps what it knew, reconnects, and never takes a
    flow away; afterwards the flows are exactly those of the final XenStore."""
    net.guest("x1", 44, "mac=00:16:3e:00:2c:01,ip=192.0.2.44")
    net.guest("x2", 45, "mac=00:16:3e:00:2d:01,ip=192.0.2.45")
    wait_vif(net, 44)
    wait_vif(net, 45)
    before = flow_stats(net)
    sock = str(net.lab.xenstore_socket)
    stop = threading.Event()

    def noise() -> None:
        """A key of vif44 that shapes no flow, rewritten all the time: whenever the
        connection drops, the controller is likely in the middle of reading it."""
        n = 0
        while not stop.is_set():
            try:
                with Client(unix_socket_path=sock) as c:
                    while not stop.is_set():
                        n += 1
                        c.write(b"/local/domain/0/backend/vif/44/0/xvif-noise", str(n).encode())
                        time.sleep(0.002)
            except Exception:  # noqa: BLE001 - the server is restarting
                time.sleep(0.01)

    writer = threading.Thread(target=noise, daemon=True)
    writer.start()
    for round_ in range(6):
        with Client(unix_socket_path=sock) as c:
            for i in range(30):  # a burst for the controller to be in the middle of
                be = f"/local/domain/0/backend/vif/{200 + round_ * 30 + i}/0"
                c.write(f"{be}/mac".encode(), f"00:16:3e:02:{round_:02x}:{i:02x}".encode())
                c.write(f"{be}/bridge".encode(), b"xenbr0")
            c.write(b"/local/domain/0/backend/vif/45/0/ip", f"192.0.2.45 198.51.100.{round_ + 1}".encode())
        time.sleep(0.2)
        daemons.restart_xenstored(net.lab.dir)
    stop.set()
    writer.join(10)
    try:
        wait_for(lambda: "198.51.100.6" in ofctl(net, "dump-flows", vif_cookie(P_ALLOW, 45)), "the last ip= change")
    except AssertionError:
        raise AssertionError(f"the last ip= change never reached the flows:\n{log_text(net)[-3000:]}") from None
    wait_for(lambda: log_text(net).count("XenStore connection lost") >= 1, "the controller to see the loss")
    after = flow_stats(net)
    # vif44's flows, and the bridge's, were never touched: the same flows, counters and age going on.
    kept = [
        k
        for k in before
        if k.startswith((f"cookie={0x7876 << 48:#x}"[:12], "cookie=0x7876"))
        and (
            re.match(r"cookie=0x7876[0-9a-f]{2}0000000000,", k)
            or re.match(rf"cookie=0x7876[0-9a-f]{{2}}00{vif_owner(44, 0):08x},", k)
        )
    ]
    assert len(kept) > 80
    for key in kept:
        packets, age = before[key]
        assert key in after and after[key][0] >= packets and after[key][1] >= age, key
    with Client(unix_socket_path=sock) as c:
        c.delete(b"/local/domain/0/backend/vif/44/0/xvif-noise")
        for d in range(200, 380):
            c.delete(f"/local/domain/0/backend/vif/{d}".encode())
    assert net.exec("x1", "ping", "-c", "1", "-W", "2", "192.0.2.45", check=False).returncode == 0


def test_vswitchd_restart_is_recovered(net):
    net.guest("r1", 43, "mac=00:16:3e:00:2b:01,ip=192.0.2.43")
    wait_vif(net, 43)
    daemons.restart_vswitchd(net.lab.dir)
    took = wait_for(lambda: ping(net, "r1", "192.0.2.1"), "traffic after ovs-vswitchd restarted", 30)
    print(f"traffic back {took:.1f} s after ovs-vswitchd restarted")
    assert "CONTROLLER" not in ofctl(net, "dump-flows")


def test_many_guests_booted_at_once_all_forward(net):
    """Hooks, XenStore, OVSDB and port events interleave; no guest may be left out."""
    from concurrent.futures import ThreadPoolExecutor

    def boot(i: int) -> None:
        net.guest(f"m{i}", 100 + i, f"mac=00:16:3e:01:64:{i:02x},ip=192.0.2.{150 + i}")

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(boot, range(24)))
    pending = set(range(24))
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        pending = {i for i in pending if not ping(net, f"m{i}", "192.0.2.1")}
    if pending:  # what the switch has for them, to tell a lost update from a datapath problem
        ports = ofctl(net, "show")
        mine = {i: len(ofctl(net, "dump-flows", vif_cookie(P_ALLOW, 100 + i)).splitlines()) - 1 for i in pending}
        ctl = str(net.lab.dir / "ovs-vswitchd.ctl")
        dp = subprocess.run(["ovs-appctl", "-t", ctl, "dpctl/dump-flows", "--names"], capture_output=True, text=True)
        detail = f"allow flows {mine}\n{ports}\n{dp.stdout[-3000:]}"
        pytest.fail(f"guests not forwarding: {sorted(pending)}; {detail}\n{log_text(net)[-3000:]}")
