"""A NAT bridge (Xen's vif-nat, in flows and OVS's conntrack) on the lab: real ovs-vswitchd
and its conntrack, real Linux hosts on the LAN and as guests, dom0 the lab's namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from frames import Capture
from labflows import Flows, cli, controller, cookie_of, wait_for

from xvif_ovs.lab.host import BridgeArg
from xvif_ovs.pipeline.build import P_DROP, P_ROUTE

LAN = "lan-xennat"  # behind peth1: 198.51.100.1
LAN_IP, ADDRESS, GATEWAY = "198.51.100.1", "198.51.100.254", "10.0.1.1"
CONFIG = f"""
[controller]
bridges = ["xenbr0", "xennat", "xenrt"]

[bridges.xenrt]
mode = "routed"

[bridges.xennat]
mode = "nat"
address = "{ADDRESS}"
subnet = "10.0.1.0/24"
gateway = "{GATEWAY}"
forwards = ["tcp:8080 -> web:80"]
"""

# A TCP server that answers one connection with the address it came from, then exits.
SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); print("ready", flush=True)
c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()
"""
CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(c.recv(100).decode())
"""
# UDP to a closed port: the ICMP port unreachable must come back through NAT.
UDP_REFUSED = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2]))); s.send(b"x")
try:
    s.recv(10); print("answered")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"""


FLOWS = Flows("xennat")
ofctl, packets = FLOWS.ofctl, FLOWS.packets


@pytest.fixture(scope="module")
def lab_bridges():
    # The three models on one host: bridged, NAT, routed (its LAN: 203.0.113.1).
    return [BridgeArg("xenbr0", "peth0"), BridgeArg("xennat", "peth1", "nat"), BridgeArg("xenrt", "peth2", "routed")]


def py(host, ns: str, code: str, *args: str, check: bool = True) -> str:
    return host.exec(ns, sys.executable, "-c", code, *args, check=check).stdout.strip()


def serve(ns: str, port: int) -> subprocess.Popen:
    p = subprocess.Popen(
        ["ip", "netns", "exec", f"xvl-{ns}", sys.executable, "-c", SERVER, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.fixture(scope="module")
def nat(host):
    with controller(host, CONFIG):
        yield host


@pytest.fixture
def two(nat, guests):
    guests.guest("web", 41, "mac=00:16:3e:00:29:01,bridge=xennat,ip=10.0.1.41")
    guests.guest("db", 42, "mac=00:16:3e:00:2a:01,bridge=xennat,ip=10.0.1.42")
    for d in (41, 42):
        wait_for(lambda d=d: "table=3" in ofctl(guests, "dump-flows", cookie_of(P_ROUTE, d)), f"vif{d}.0 routed")
    # The forward to web needs web running: the controller redoes the bridge when it appears.
    wait_for(lambda: "tp_dst=8080" in ofctl(guests, "dump-flows", "table=9"), "the port forward to web")
    wait_for(lambda: dhcp_hosts(guests) == 2, "the DHCP server to serve both")
    return guests


def dhcp_hosts(host) -> int | None:
    """How many hosts the NAT bridge's dnsmasq serves (None: it does not run)."""
    try:
        pid = int((host.lab.dir / "xvif-ovs-dhcp-xennat.pid").read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return sum(a.startswith(b"--dhcp-host=") for a in argv)


def test_a_nat_guest_reaches_the_lan_which_sees_only_dom0s_address(two):
    server = serve(LAN, 7000)
    assert py(two, "web", CLIENT, LAN_IP, "7000") == ADDRESS
    server.wait(5)
    r = two.exec("web", "ping", "-c", "2", "-i", "0.2", "-W", "1", LAN_IP, check=False)
    assert r.returncode == 0, r.stdout


def test_a_port_forward_reaches_the_named_guest(two):
    server = serve("web", 80)
    assert py(two, LAN, CLIENT, ADDRESS, "8080") == LAN_IP  # web sees the LAN host itself
    server.wait(5)


def test_nothing_unsolicited_from_the_lan_reaches_a_nat_guest(two):
    server = serve("web", 9090)
    try:
        # dom0's port 9090 is dom0's (nothing listens there: refused), not web's.
        out = py(two, LAN, CLIENT, ADDRESS, "9090", check=False)
        assert out != LAN_IP
        # Even with a route to the NAT network through dom0, its addresses are not reachable.
        two.exec(LAN, "ip", "route", "add", "10.0.1.0/24", "via", ADDRESS)
        try:
            assert two.exec(LAN, "ping", "-c", "2", "-W", "1", "10.0.1.41", check=False).returncode != 0
            assert py(two, LAN, CLIENT, "10.0.1.41", "9090", check=False) != LAN_IP
        finally:
            two.exec(LAN, "ip", "route", "del", "10.0.1.0/24")
    finally:
        server.kill()
        server.wait(5)


def test_an_icmp_error_for_a_nated_flow_comes_back_to_its_guest(two):
    assert py(two, "web", UDP_REFUSED, LAN_IP, "9") == "refused"


def test_nat_guests_reach_each_other_and_their_gateway_untranslated(two):
    server = serve("db", 7001)
    assert py(two, "web", CLIENT, "10.0.1.42", "7001") == "10.0.1.41"
    server.wait(5)
    assert two.exec("web", "ping", "-c", "1", "-W", "1", GATEWAY, check=False).returncode == 0


def test_spoofs_from_a_nat_guest_are_dropped_and_counted(two):
    rmac = two.vsctl("get", "interface", "xennat", "mac_in_use").strip().strip('"')
    before = packets(two, P_DROP, 41)
    cap = Capture([LAN])
    cap.send_frame("web", f'Ether(src=MAC, dst="{rmac}")/IP(src="10.0.1.41", dst="{LAN_IP}")/UDP()/M')  # allowed
    for spoof in (
        f'Ether(src=MAC, dst="{rmac}")/IP(src="10.0.1.42", dst="{LAN_IP}")/UDP()/M',  # the other guest's
        f'Ether(src=MAC, dst="{rmac}")/IP(src="{ADDRESS}", dst="{LAN_IP}")/UDP()/M',  # dom0's
        f'Ether(src="00:16:3e:00:99:99", dst="{rmac}")/IP(src="10.0.1.41", dst="{LAN_IP}")/UDP()/M',
    ):
        cap.send_frame("web", spoof)
    got = cap.results()[LAN]
    assert [f["src"] for f in got] == [rmac], got
    assert packets(two, P_DROP, 41) >= before + 3


def test_a_nated_tcp_stream_survives_a_controller_kill(two):
    """Connections live in the datapath's conntrack, not in the controller."""
    server = subprocess.Popen(["ip", "netns", "exec", f"xvl-{LAN}", "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    wait_for(lambda: ":5201" in two.exec(LAN, "ss", "-ltn").stdout, "iperf3 to listen")
    stream = subprocess.Popen(
        ["ip", "netns", "exec", "xvl-web", "iperf3", "-c", LAN_IP, "-t", "4", "-J"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    two.lab.stop_controller(kill=True)
    log = two.lab.dir / "controller.log"
    at = len(log.read_text())
    two.lab.start_controller(two.lab.dir / "controller.toml")
    wait_for(lambda: "switch xennat connected" in log.read_text()[at:], "the restarted controller")
    out, _ = stream.communicate(timeout=60)
    server.wait(10)
    result = json.loads(out)
    assert "error" not in result, result.get("error")
    assert result["end"]["sum_received"]["bytes"] > 1_000_000
    assert not [i for i in result["intervals"] if i["sum"]["bytes"] == 0], "the stream stalled for a second"


def test_the_cli_knows_the_nat_model(two):
    data = json.loads(cli(two, "show", "--json").stdout)
    br = {b["name"]: b for b in data["bridges"]}["xennat"]
    assert br["mode"] == "nat"
    seen = {v["device"]: v["visible"] for v in br["vifs"]}
    assert seen["vif41.0"] == f"nothing: NAT behind dom0's {ADDRESS}"

    def doctor() -> list[str]:
        report = json.loads(cli(two, "doctor", "--json", "--interval", "0").stdout)
        return [p["message"] for p in report["problems"] if p["check"] == "routed bridges"]

    assert doctor() == []
    pid = int((two.lab.dir / "xvif-ovs-dhcp-xennat.pid").read_text())
    os.kill(pid, 15)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "dnsmasq to stop")
    (msg,) = doctor()
    assert "no DHCP server runs" in msg, msg
    out = json.loads(cli(two, "trace", "--from", "vif41.0", "--to", LAN_IP, "--json").stdout)
    assert "NAT" in out["verdict"], out["verdict"]


UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/$mask" dev "$interface"
        ip route replace default via "${router%% *}" dev "$interface"
        echo "$ip" > /tmp/xvif-udhcpc-$interface.ip ;;
esac
"""


def dhcp_lease(host, guest: str, tmp_path) -> str:
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    argv = ("busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s", str(script))
    got = host.exec(guest, *argv, check=False)
    log = host.lab.dir / "xvif-ovs-dhcp-xennat.log"
    assert got.returncode == 0, (
        f"{got.stdout}{got.stderr}\nthe DHCP server's log:\n{log.read_text()[-3000:] if log.exists() else 'none'}"
    )
    return host.exec(guest, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout.split()[3].split("/")[0]


def xs_read(host, path: str) -> str | None:
    from pyxs import Client

    with Client(unix_socket_path=str(host.lab.xenstore_socket)) as c:
        return c.read(path.encode()).decode() if c.exists(path.encode()) else None


def test_a_guest_without_an_address_gets_one_by_dhcp_that_port_security_enforces_and_keeps(two, tmp_path):
    two.guest("dyn", 43, "mac=00:16:3e:00:2b:01,bridge=xennat")
    key = "/local/domain/0/backend/vif/43/0/xvif-nat-ip"
    wait_for(lambda: xs_read(two, key) is not None, "the controller to choose its address")
    given = xs_read(two, key)
    assert given == "10.0.1.2", given  # the lowest free: .1 is the gateway, web and db have .41 and .42
    wait_for(lambda: f"nw_dst={given}" in ofctl(two, "dump-flows", cookie_of(P_ROUTE, 43)), "its routes")
    assert dhcp_lease(two, "dyn", tmp_path) == given
    server = serve(LAN, 7002)
    assert py(two, "dyn", CLIENT, LAN_IP, "7002") == ADDRESS
    server.wait(5)
    # Another address on its NIC is a spoof: dropped.
    two.exec("dyn", "ip", "addr", "add", "10.0.1.99/24", "dev", "eth0")
    bad = two.exec("dyn", "ping", "-c", "2", "-W", "1", "-I", "10.0.1.99", LAN_IP, check=False)
    two.exec("dyn", "ip", "addr", "del", "10.0.1.99/24", "dev", "eth0")
    assert bad.returncode != 0
    # A controller restart keeps the address, and the DHCP server that hands it out.
    pidfile = two.lab.dir / "xvif-ovs-dhcp-xennat.pid"
    pid = pidfile.read_text().strip()
    two.lab.stop_controller(kill=True)
    log = two.lab.dir / "controller.log"
    at = len(log.read_text())
    two.lab.start_controller(two.lab.dir / "controller.toml")
    wait_for(lambda: "switch xennat connected" in log.read_text()[at:], "the restarted controller")
    assert dhcp_lease(two, "dyn", tmp_path) == given
    assert pidfile.read_text().strip() == pid
    assert "DHCP server" not in log.read_text()[at:]  # adopted, not restarted


def test_the_three_models_work_side_by_side(two):
    two.guest("br", 51, "mac=00:16:3e:00:33:01,ip=192.0.2.51")
    two.guest("rt", 52, "mac=00:16:3e:00:34:01,bridge=xenrt,ip=203.0.113.52")
    for guest, lan_ns, lan_ip, seen_as in (
        ("br", "lan", "192.0.2.1", "192.0.2.51"),
        ("rt", "lan-xenrt", "203.0.113.1", "203.0.113.52"),
        ("web", LAN, LAN_IP, ADDRESS),
    ):
        server = serve(lan_ns, 7003)
        deadline = time.monotonic() + 15
        while True:  # the routed guest's flows may still be on their way
            got = py(two, guest, CLIENT, lan_ip, "7003", check=False)
            if got == seen_as or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        server.kill()
        server.wait(5)
        assert got == seen_as, (guest, got)


def test_dom0_keeps_its_own_connections_from_its_nat_address(two):
    """dom0's address is also the guests': its own connections, out and in, still work
    (replies to them are dom0's, not taken for a guest's nor dropped as invalid)."""
    server = serve(LAN, 7005)
    out = subprocess.run([sys.executable, "-c", CLIENT, LAN_IP, "7005"], capture_output=True, text=True, timeout=30)
    server.wait(5)
    assert out.stdout.strip() == ADDRESS, out.stdout + out.stderr
    ping = subprocess.run(
        ["ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", ADDRESS, LAN_IP], capture_output=True, text=True
    )
    assert ping.returncode == 0, ping.stdout
