"""Traffic export as a monitoring collector receives it: sFlow and IPFIX set on the lab's
bridge through OVSDB by the controller from its configuration, real ovs-vswitchd sampling
a guest's real packets to a UDP collector in dom0."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest
from frames import Capture
from labflows import Flows, cli, controller, wait_for

from xvif_ovs.pipeline.build import P_UNMANAGED
from xvif_ovs.pipeline.flow import COOKIE_MAGIC, COOKIE_MASK

SFLOW_PORT, IPFIX_PORT = 16343, 14739
WEB = ("web", 51, "00:16:3e:00:33:01", "192.0.2.51")
LAN = "192.0.2.1"


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


@contextlib.contextmanager
def collector(port: int) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.settimeout(0.5)
    try:
        yield s
    finally:
        s.close()


def received(s: socket.socket, seconds: float) -> list[bytes]:
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        with contextlib.suppress(TimeoutError):
            out.append(s.recv(65535))
    return out


def vsctl_get(host, what: str) -> str:
    return host.vsctl("--if-exists", "get", "Bridge", "xenbr0", what).strip()


@pytest.fixture(scope="module")
def exporting(host):
    config = (
        '[controller]\nbridges = ["xenbr0"]\n\n[bridges.xenbr0]\n'
        f'sflow = {{ targets = ["127.0.0.1:{SFLOW_PORT}"], sampling = 1, polling = 1 }}\n'
        f'ipfix = {{ targets = ["127.0.0.1:{IPFIX_PORT}"], sampling = 1, obs_domain_id = 7 }}\n'
    )
    with controller(host, config):
        yield host


def test_sflow_and_ipfix_collectors_receive_samples_of_a_guests_traffic(guests, exporting):
    name, domid, mac, ip = WEB
    guests.guest(name, domid, f"mac={mac},bridge=xenbr0,ip={ip}")
    with collector(SFLOW_PORT) as sflow, collector(IPFIX_PORT) as ipfix:
        guests.exec(name, "ping", "-c5", "-i0.2", "-W1", LAN)
        sflow_got = received(sflow, 3)
        ipfix_got = received(ipfix, 3)
    assert sflow_got, "no sFlow datagram"
    assert all(struct.unpack("!I", d[:4])[0] == 5 for d in sflow_got)  # sFlow version 5
    assert any(mac_bytes(mac) in d for d in sflow_got), "no sample of the guest's frames"
    assert ipfix_got, "no IPFIX message"
    version, _length, _time, _seq, domain = struct.unpack("!HHIII", ipfix_got[0][:16])
    assert version == 10 and domain == 7
    assert any(mac_bytes(mac) in d for d in ipfix_got), "no record of the guest's flow"
    # The collector names the port from OVSDB: what the hook wrote on the guest's interface.
    ids = exporting.vsctl("get", "Interface", f"vif{domid}.0", "external_ids")
    assert "xen-vm-name=web" in ids and f'xvif-domid="{domid}"' in ids


def test_only_our_rows_are_ours_a_collector_set_by_hand_stays(guests, exporting):
    mine = vsctl_get(exporting, "sflow")
    assert mine and mine != "[]"
    assert "xvif-ovs" in exporting.vsctl("get", "sFlow", mine, "external_ids")
    # Someone sets their own: the controller leaves it, and says so once.
    exporting.vsctl(
        "--", "--id=@s", "create", "sFlow", 'targets="127.0.0.1:16999"', "--", "set", "Bridge", "xenbr0", "sflow=@s"
    )
    time.sleep(2)
    theirs = vsctl_get(exporting, "sflow")
    assert "16999" in exporting.vsctl("get", "sFlow", theirs, "targets")
    log = (exporting.lab.dir / "controller.log").read_text()
    assert log.count("already has an sFlow collector that xvif-ovs did not set") == 1
    exporting.vsctl("clear", "Bridge", "xenbr0", "sflow")  # gone: the configured one comes back
    deadline = time.monotonic() + 10
    while str(SFLOW_PORT) not in exporting.vsctl("--columns=targets", "list", "sFlow"):
        assert time.monotonic() < deadline, "the configured sFlow collector did not come back"
        time.sleep(0.1)


MA, MB, MM = ("ma", 61, "00:16:3e:00:3d:01"), ("mb", 62, "00:16:3e:00:3e:01"), ("mm", 63, "00:16:3e:00:3f:01")


def mirrors(host) -> list[dict]:
    out = cli(host, "mirror", "list", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["mirrors"]


def unmanaged_ports(host) -> str:
    return Flows("xenbr0").ofctl(
        host, "dump-flows", f"cookie={COOKIE_MAGIC | P_UNMANAGED << 40:#x}/{COOKIE_MASK | 0xFF << 40:#x}"
    )


def test_a_monitoring_guest_gets_one_guests_frames_both_ways_none_of_a_thirds_and_sends_nothing(guests, exporting):
    for name, domid, mac in (MA, MB, MM):
        guests.guest(name, domid, f"mac={mac},bridge=xenbr0,ip=192.0.2.{domid}")
    ofport = guests.vsctl("get", "Interface", "vif63.0", "ofport").strip()
    done = cli(guests, "mirror", "add", "--vif", "vif61.0", "--to", "vif63.0")
    assert done.returncode == 0, done.stderr
    assert "vif61.0" in done.stdout and "vif63.0" in done.stdout
    [m] = mirrors(guests)
    assert (m["source"], m["direction"], m["output"], m["ours"]) == (["vif61.0"], "both", "vif63.0", True)
    wait_for(lambda: f"in_port={ofport} " in unmanaged_ports(guests), "the monitor's port to get no forwarding")

    lan_mac = guests.exec("lan", "cat", "/sys/class/net/eth0/address").stdout.strip()

    def udp(guest: str, dst_mac: str, dst_ip: str) -> None:
        src_ip = {"ma": 61, "mb": 62, "mm": 63}[guest]
        cap.send_frame(guest, f'Ether(src=MAC, dst="{dst_mac}")/IP(src="192.0.2.{src_ip}", dst="{dst_ip}")/UDP()/M')

    cap = Capture(["mm", "lan"])
    udp("ma", lan_mac, LAN)  # what the guest sends
    udp("mb", MA[2], "192.0.2.61")  # what it receives
    got = cap.results()
    # (and the ICMP port-unreachable answers, which quote the marker: the LAN's to it, its to mb)
    assert {MA[2], MB[2]} <= {f["src"] for f in got["mm"]} <= {MA[2], MB[2], lan_mac}, got
    assert [f["src"] for f in got["lan"]] == [MA[2]]  # and the frame still went where it was going

    cap = Capture(["mm", "lan", "ma"])
    udp("mb", lan_mac, LAN)  # a third guest's traffic to the LAN
    got = cap.results()
    assert got["mm"] == [], got
    assert [f["src"] for f in got["lan"]] == [MB[2]] and got["ma"] == []  # (it was sent, to the LAN only)

    cap = Capture(["lan", "ma", "mb"])
    udp("mm", lan_mac, LAN)  # the monitor cannot send
    udp("mm", "ff:ff:ff:ff:ff:ff", "192.0.2.255")
    assert cap.results() == {"lan": [], "ma": [], "mb": []}
    assert guests.exec("mm", "ping", "-c1", "-W1", LAN, check=False).returncode != 0
    # The pipeline agrees: nothing is switched to it, and what it sends is dropped.
    groups = Flows("xenbr0").ofctl(guests, "dump-groups")
    assert "output:" in groups and not re.search(rf"output:{ofport}\b", groups), groups
    from_it = json.loads(cli(guests, "trace", "--from", "vif63.0", "--to", LAN, "--json").stdout)
    assert from_it["verdict"].startswith("dropped"), from_it["verdict"]

    # It survives the controller's restart (it is OVSDB's), and goes with its guest.
    guests.lab.stop_controller()
    guests.lab.start_controller(guests.lab.dir / "controller.toml")
    wait_for(
        lambda: (
            "connected" in (guests.lab.dir / "controller.log").read_text().rsplit("xvif-ovs controller (pid", 1)[-1]
        ),
        "reconnect",
    )
    assert [x["name"] for x in mirrors(guests)] == [m["name"]]
    from xvif_ovs.lab.domain import del_domain

    del_domain(guests.lab, "ma")
    wait_for(lambda: mirrors(guests) == [], "the mirror to go with its guest")
    wait_for(lambda: f"in_port={ofport} " not in unmanaged_ports(guests), "the monitor's port to get its flows back")
    guests.exec("mm", "ip", "neigh", "flush", "dev", "eth0")  # its failed ARP from before, forgotten
    wait_for(
        lambda: guests.exec("mm", "ping", "-c1", "-W1", LAN, check=False).returncode == 0,
        "the monitor to reach the LAN",
    )


@pytest.mark.parametrize(
    "args, hint",
    [
        (["--vif", "vif61.0", "--to-port", "peth0"], "an uplink"),
        (["--vif", "vif61.0", "--to", "vif61.0"], "own port"),
        (["--vif", "vif61.0", "--to", "vif99.0"], "no port named vif99.0"),
        (["--vif", "peth0", "--to", "vif62.0"], "not a guest's vif"),
        (["--vif", "vif61.0"], "needs --to"),
    ],
)
def test_a_mirror_that_cannot_be_is_refused_and_changes_nothing(guests, exporting, args, hint):
    for name, domid, mac in (MA, MB):
        guests.guest(name, domid, f"mac={mac},bridge=xenbr0,ip=192.0.2.{domid}")
    before = guests.vsctl("list", "Mirror")
    out = cli(guests, "mirror", "add", *args)
    assert out.returncode == 1 and hint in out.stderr, out.stderr
    assert guests.vsctl("list", "Mirror") == before


def test_a_mirror_to_a_dom0_tap_one_direction_is_shown_and_not_a_doctor_problem(guests, exporting):
    guests.guest(MA[0], MA[1], f"mac={MA[2]},bridge=xenbr0,ip=192.0.2.61")
    # dom0's monitoring port: one end of a veth on the bridge, a capture on the other.
    subprocess.run(["ip", "link", "add", "tapmon", "type", "veth", "peer", "name", "tapmon-cap"], check=True)
    try:
        for dev in ("tapmon", "tapmon-cap"):
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)
        guests.vsctl("add-port", "xenbr0", "tapmon")
        out = cli(guests, "mirror", "add", "--vif", "vif61.0", "--to-port", "tapmon", "--direction", "from-guest")
        assert out.returncode == 0, out.stderr
        [m] = mirrors(guests)
        assert (m["direction"], m["output"]) == ("from-guest", "tapmon")
        shown = json.loads(cli(guests, "show", "--json").stdout)["bridges"][0]
        assert shown["mirrors"][0]["output"] == "tapmon" and "tapmon" not in shown["unmanaged"]
        doctor = cli(guests, "doctor", "--interval", "0", "--json")
        assert "tapmon" not in doctor.stdout, doctor.stdout
        # Frames it sends reach the tap; frames sent to it do not (one direction only).
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as tap:
            tap.bind(("tapmon-cap", 0))
            tap.settimeout(0.5)
            guests.exec("ma", "ping", "-c2", "-i0.2", "-W1", LAN, check=False)
            frames = received(tap, 1.5)
        assert any(f[6:12] == mac_bytes(MA[2]) for f in frames), "nothing it sent reached the tap"
        assert not any(f[:6] == mac_bytes(MA[2]) and f[6:12] != mac_bytes(MA[2]) for f in frames)
        gone = cli(guests, "mirror", "del", "--vif", "vif61.0")
        assert gone.returncode == 0 and m["name"] in gone.stdout
        assert mirrors(guests) == []
    finally:
        guests.vsctl("--if-exists", "del-port", "xenbr0", "tapmon")
        subprocess.run(["ip", "link", "del", "tapmon"], check=False)


def test_a_mirror_to_a_patch_or_tunnel_port_is_refused(guests, exporting):
    guests.guest(MA[0], MA[1], f"mac={MA[2]},bridge=xenbr0,ip=192.0.2.61")
    guests.vsctl("add-port", "xenbr0", "patchx", "--", "set", "interface", "patchx", "type=patch", "options:peer=none")
    guests.vsctl(
        "add-port", "xenbr0", "vxx", "--", "set", "interface", "vxx", "type=vxlan", "options:remote_ip=192.0.2.200"
    )
    try:
        for port, kind in (("patchx", "patch"), ("vxx", "vxlan")):
            out = cli(guests, "mirror", "add", "--vif", "vif61.0", "--to-port", port)
            assert out.returncode == 1 and f"a {kind} port leads off" in out.stderr, out.stderr
        assert mirrors(guests) == []
    finally:
        guests.vsctl("--if-exists", "del-port", "xenbr0", "patchx", "--", "--if-exists", "del-port", "xenbr0", "vxx")


def test_a_mirror_goes_when_its_output_goes(guests, exporting):
    guests.guest(MA[0], MA[1], f"mac={MA[2]},bridge=xenbr0,ip=192.0.2.61")
    subprocess.run(["ip", "link", "add", "tapgone", "type", "veth", "peer", "name", "tapgone-p"], check=True)
    try:
        guests.vsctl("add-port", "xenbr0", "tapgone")
        out = cli(guests, "mirror", "add", "--vif", "vif61.0", "--to-port", "tapgone")
        assert out.returncode == 0, out.stderr
        assert [m["output"] for m in mirrors(guests)] == ["tapgone"]
        guests.vsctl("del-port", "xenbr0", "tapgone")  # the monitoring port removed
        wait_for(lambda: mirrors(guests) == [], "the mirror to go with its output")
        assert "mirror(s) removed, a port they used went away" in (guests.lab.dir / "controller.log").read_text()
    finally:
        guests.vsctl("--if-exists", "del-port", "xenbr0", "tapgone")
        subprocess.run(["ip", "link", "del", "tapgone"], check=False)
