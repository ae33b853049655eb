"""A routed bridge (Xen's vif-route, in flows) on the lab: real ovs-vswitchd, real Linux
hosts on the LAN and as guests, dom0 the lab's own namespace. A bridged bridge beside it
shows the two models coexist."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from frames import Capture
from labflows import Flows, cli, controller, cookie_of, wait_for

from xvif_ovs.lab.host import BridgeArg
from xvif_ovs.pipeline.build import P_ALLOW, P_DROP, P_ROUTE

CONFIG = """
[controller]
bridges = ["xenbr0", "xenbr1"]

[bridges.xenbr1]
mode = "routed"
"""
LAN = "lan-xenbr1"  # the LAN namespace behind peth1: 198.51.100.1
LAN_IP, DOM0_IP = "198.51.100.1", "198.51.100.254"
R1 = ("r1", 21, "00:16:3e:00:15:01", "198.51.100.21")
R2 = ("r2", 22, "00:16:3e:00:16:01", "198.51.100.22")


FLOWS = Flows("xenbr1")
ofctl, packets = FLOWS.ofctl, FLOWS.packets


@pytest.fixture(scope="module")
def lab_bridges():
    return [BridgeArg("xenbr0", "peth0"), BridgeArg("xenbr1", "peth1", "routed")]


def router_mac(host) -> str:
    return host.vsctl("get", "interface", "xenbr1", "mac_in_use").strip().strip('"')


def ping(host, ns: str, addr: str, count: int = 1) -> subprocess.CompletedProcess[str]:
    return host.exec(ns, "ping", "-c", str(count), "-i", "0.2", "-W", "1", addr, check=False)


@pytest.fixture(scope="module")
def routed(host):
    with controller(host, CONFIG):
        yield host


@pytest.fixture
def guests2(routed, guests):
    for name, domid, mac, ip in (R1, R2):
        guests.guest(name, domid, f"mac={mac},bridge=xenbr1,ip={ip}")
    for domid in (R1[1], R2[1]):
        wait_for(
            lambda d=domid: "table=3" in ofctl(guests, "dump-flows", cookie_of(P_ROUTE, d)), f"vif{domid}.0 routed"
        )
    return guests


def test_the_lan_reaches_a_routed_guest_and_sees_only_dom0s_mac(guests2):
    r = ping(guests2, LAN, R1[3], 3)
    assert r.returncode == 0, r.stdout
    neigh = guests2.exec(LAN, "ip", "neigh", "show", R1[3]).stdout
    assert router_mac(guests2) in neigh and R1[2] not in neigh, neigh
    assert re.search(r"ttl=63", r.stdout), r.stdout  # one routed hop


def test_a_routed_guest_reaches_the_lan_dom0_and_another_guest(guests2):
    for target in (LAN_IP, DOM0_IP, R2[3]):
        r = ping(guests2, "r1", target, 2)
        assert r.returncode == 0, (target, r.stdout)
    neigh = guests2.exec("r1", "ip", "neigh", "show", R2[3]).stdout
    assert router_mac(guests2) in neigh and R2[2] not in neigh, neigh


def test_after_the_first_packet_the_lan_host_is_a_learned_neighbour_and_nothing_goes_to_the_controller(guests2):
    assert ping(guests2, "r1", LAN_IP, 2).returncode == 0
    table6 = ofctl(guests2, "dump-flows", "table=6")
    assert "reg8=0xc6336401" in table6, table6  # 198.51.100.1 -> the LAN host's MAC, behind peth1
    lan_mac = guests2.exec(LAN, "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert f"set_field:{lan_mac}->eth_dst" in table6 or f"load:0x{lan_mac.replace(':', '')}" in table6.lower(), table6
    flows = ofctl(guests2, "dump-flows")
    assert "CONTROLLER" not in flows and "NORMAL" not in flows
    assert "packet-in" not in (guests2.lab.dir / "controller.log").read_text()


def test_spoofs_from_a_routed_guest_are_dropped_and_counted(guests2):
    rmac = router_mac(guests2)
    before = packets(guests2, P_DROP, R1[1])
    cap = Capture([LAN])
    cap.send_frame("r1", f'Ether(src=MAC, dst="{rmac}")/IP(src="{R1[3]}", dst="{LAN_IP}")/UDP()/M')  # allowed
    for spoof in (
        f'Ether(src=MAC, dst="{rmac}")/IP(src="198.51.100.99", dst="{LAN_IP}")/UDP()/M',  # foreign address
        f'Ether(src="00:16:3e:00:99:99", dst="{rmac}")/IP(src="{R1[3]}", dst="{LAN_IP}")/UDP()/M',  # foreign MAC
        f'Ether(src=MAC, dst="{rmac}")/IP(src="{R2[3]}", dst="{LAN_IP}")/UDP()/M',  # the other guest's address
        f'Ether(src=MAC)/ARP(op=1, hwsrc=MAC, psrc="{R2[3]}", pdst="{LAN_IP}")/M',  # ARP as the other guest
    ):
        cap.send_frame("r1", spoof)
    got = cap.results()[LAN]
    assert [f["src"] for f in got] == [rmac], got  # the allowed one, routed (from dom0's MAC); no spoof
    assert packets(guests2, P_DROP, R1[1]) >= before + 4


def test_a_routed_guest_without_an_address_gets_nothing(guests2):
    guests2.guest("r3", 23, "mac=00:16:3e:00:17:01,bridge=xenbr1")
    guests2.exec("r3", "ip", "addr", "add", "198.51.100.23/24", "dev", "eth0")
    assert ping(guests2, "r3", LAN_IP).returncode != 0
    assert ping(guests2, LAN, "198.51.100.23").returncode != 0


def test_bridged_and_routed_bridges_coexist(guests2):
    guests2.guest("b1", 31, "mac=00:16:3e:00:1f:01,ip=192.0.2.31")
    wait_for(lambda: "table=1" in ofctl(guests2, "dump-flows", cookie_of(P_ALLOW, 31), bridge="xenbr0"), "vif31.0")
    assert ping(guests2, "b1", "192.0.2.1").returncode == 0
    neigh = guests2.exec("lan", "ip", "neigh", "show", "192.0.2.31").stdout
    assert "00:16:3e:00:1f:01" in neigh  # bridged: the LAN sees the guest's own MAC
    assert ping(guests2, LAN, R2[3]).returncode == 0


def test_the_cli_knows_the_routed_model(guests2):
    rmac = router_mac(guests2)
    data = json.loads(cli(guests2, "show", "--json").stdout)
    br = {b["name"]: b for b in data["bridges"]}
    assert (br["xenbr1"]["mode"], br["xenbr1"]["router_mac"], br["xenbr0"]["mode"]) == ("routed", rmac, "bridged")
    seen = {v["device"]: v["visible"] for v in br["xenbr1"]["vifs"]}
    assert seen["vif21.0"] == f"{R1[3]} at dom0's MAC {rmac}"
    assert "mode=routed" in cli(guests2, "show").stdout

    out = json.loads(cli(guests2, "trace", "--from", "vif21.0", "--to", LAN_IP, "--json").stdout)
    assert out["verdict"].startswith("routed to "), out["verdict"]
    out = json.loads(cli(guests2, "trace", "--from", "peth1", "--to", R1[3], "--json").stdout)
    assert out["verdict"] == "routed to vif21.0 (MACs rewritten, TTL decremented)", out
    out = json.loads(cli(guests2, "trace", "--from", "vif21.0", "--to", LAN_IP, "--proto", "arp", "--json").stdout)
    assert out["verdict"].startswith("answered by the bridge: an ARP reply back out of vif21.0"), out
    out = json.loads(
        cli(guests2, "trace", "--from", "vif21.0", "--to", LAN_IP, "--src-ip", "198.51.100.99", "--json").stdout
    )
    assert out["verdict"].startswith("dropped: source address"), out

    def routed_problems() -> list[str]:
        report = json.loads(cli(guests2, "doctor", "--json", "--interval", "0").stdout)
        return [p["message"] for p in report["problems"] if p["check"] == "routed bridges"]

    assert routed_problems() == []
    forwarding = Path("/proc/sys/net/ipv4/conf/xenbr1/forwarding")
    forwarding.write_text("0")
    try:
        (msg,) = routed_problems()
        assert "does not forward" in msg
    finally:
        forwarding.write_text("1")


def test_a_controller_kill_and_restart_loses_no_routed_packet_and_keeps_the_neighbours(guests2):
    """The learned neighbours are the switch's (flows of table 6): a new controller keeps
    them, and the routed flood to the LAN and to the other guest loses nothing."""
    assert ping(guests2, "r1", LAN_IP, 2).returncode == 0
    table6 = ofctl(guests2, "dump-flows", "table=6")
    floods = [
        subprocess.Popen(
            ["ip", "netns", "exec", "xvl-r1", "ping", "-q", "-c", "1000", "-i", "0.002", target],
            stdout=subprocess.PIPE,
            text=True,
        )
        for target in (LAN_IP, R2[3])
    ]
    time.sleep(0.5)
    guests2.lab.stop_controller(kill=True)
    log = guests2.lab.dir / "controller.log"
    log_at = len(log.read_text())
    guests2.lab.start_controller(guests2.lab.dir / "controller.toml")
    wait_for(lambda: "switch xenbr1 connected" in log.read_text()[log_at:], "the restarted controller to connect")
    for f in floods:
        out, _ = f.communicate(timeout=60)
        assert " 0% packet loss" in out, out
    assert "reg8=0xc6336401" in table6 and "reg8=0xc6336401" in ofctl(guests2, "dump-flows", "table=6")


def test_ipv6_to_and_from_a_routed_guest_is_routed_and_the_lan_sees_only_dom0s_mac(guests2):
    guests2.guest("r6", 26, "mac=00:16:3e:00:1a:01,bridge=xenbr1,ip=198.51.100.26 2001:db8:1::26")
    wait_for(lambda: "table=3" in ofctl(guests2, "dump-flows", cookie_of(P_ROUTE, 26)), "vif26.0 routed")
    rmac = router_mac(guests2)
    r = guests2.exec(LAN, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "1", "2001:db8:1::26", check=False)
    assert r.returncode == 0 and "ttl=63" in r.stdout.replace("hlim", "ttl"), r.stdout
    neigh = guests2.exec(LAN, "ip", "-6", "neigh", "show", "2001:db8:1::26").stdout
    assert rmac in neigh and "00:16:3e:00:1a:01" not in neigh, neigh
    # The LAN host's solicitation taught the bridge where it is: the guest reaches it in the datapath.
    assert ping(guests2, "r6", "2001:db8:1::1", 2).returncode == 0
    assert "ipv6_dst=2001:db8:1::1" in ofctl(guests2, "dump-flows", "table=6")
    neigh = guests2.exec("r6", "ip", "-6", "neigh", "show", "2001:db8:1::1").stdout
    assert rmac in neigh and "router" in neigh, neigh  # the gateway answers with the R flag
    # Another routed guest, over IPv6.
    assert ping(guests2, "r6", R1[3]).returncode == 0
    if Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text().strip() == "0":  # the lab leaves it so
        report = json.loads(cli(guests2, "doctor", "--json", "--interval", "0").stdout)
        msgs = [p["message"] for p in report["problems"] if p["check"] == "routed bridges"]
        assert len(msgs) == 1 and "does not forward IPv6" in msgs[0] and "vif26.0" in msgs[0], msgs
