"""Trust only what is named, on a real ovs-vswitchd (issue 11): a port nobody declared
gets no forwarding, a bridge nobody named and another application's flows and groups are
left as they were, a named bridge with another controller is refused, and a bond is one
uplink that survives a member going down."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from pyxs import Client

from xvif_ovs.lab.host import BridgeArg

ROGUE_NS, BOND_NS = "xvt-rogue", "xvt-bondlan"
CONFIG = '[controller]\nbridges = ["xenbr0", "xenbr1", "brforeign"]\n'


@pytest.fixture(scope="module")
def lab_bridges():
    return [BridgeArg("xenbr0", "peth0"), BridgeArg("xenbr1", None)]


def run(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)
    assert not check or proc.returncode == 0, f"{argv}: {proc.stdout} {proc.stderr}"
    return proc


def ofctl(host, bridge: str, *args: str) -> str:
    cmd = ["ovs-ofctl", "-O", "OpenFlow13", args[0], f"unix:{host.lab.dir}/{bridge}.mgmt", *args[1:]]
    return run(*cmd, env={**os.environ, **host.lab.env()}).stdout


def cli(host, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **host.lab.env()}
    return run(sys.executable, "-m", "xvif_ovs.cli.main", *args, check=False, env=env)


def wait_for(cond, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def log_text(host) -> str:
    return (host.lab.dir / "controller.log").read_text()


def foreign_view(host) -> tuple[str, str, str]:
    """Everything about brforeign that the controller could have changed."""
    cols = "name,controller,fail_mode,protocols,flow_tables,external_ids,other_config"
    return (
        host.vsctl("--columns=" + cols, "list", "bridge", "brforeign"),
        ofctl(host, "brforeign", "dump-flows", "--no-stats"),
        ofctl(host, "brforeign", "dump-groups"),
    )


@pytest.fixture(scope="module")
def ctl(host):
    # Another application's bridge beside the lab's: its own controller (nobody listens
    # there), fail_mode, flows and groups. The config names it: it must still be refused.
    host.vsctl(
        "add-br", "brforeign", "--", "set", "bridge", "brforeign", "datapath_type=netdev", "fail_mode=standalone",
        "protocols=OpenFlow10,OpenFlow13", "--", "set-controller", "brforeign", "tcp:127.0.0.1:9",
    )  # fmt: skip
    ofctl(host, "brforeign", "add-flow", "cookie=0x42,priority=7,in_port=LOCAL,actions=NORMAL")
    ofctl(host, "brforeign", "add-group", "group_id=5,type=all,bucket=output:LOCAL")
    before = foreign_view(host)
    cfg = host.lab.dir / "trust.toml"
    cfg.write_text(CONFIG)
    host.lab.start_controller(cfg)
    wait_for(lambda: "switch xenbr0 connected" in log_text(host), "the controller")
    try:
        yield host, before
    finally:
        host.lab.stop_controller()
        host.vsctl("del-br", "brforeign")
        run("ip", "link", "del", "brforeign", check=False)


@pytest.fixture
def net(ctl, guests):
    return guests


def wait_flows(host, domid: int, bridge: str = "xenbr0") -> None:
    cookie = f"cookie=0x78760300{0x8000 | domid:04x}0000/-1"
    wait_for(lambda: "table=1" in ofctl(host, bridge, "dump-flows", cookie), f"flows of vif{domid}.0")


def test_a_port_nobody_declared_gets_no_forwarding_and_is_named(net, ctl):
    """The issue's case: a veth added by hand, using a guest's MAC and address."""
    a = net.guest("ta", 61, "mac=00:16:3e:00:3d:01,ip=192.0.2.61")
    net.guest("tb", 62, "mac=00:16:3e:00:3e:01,ip=192.0.2.62")
    wait_flows(net, 61)
    wait_flows(net, 62)
    run("ip", "netns", "add", ROGUE_NS)
    try:
        run("ip", "link", "add", "rogue0", "type", "veth", "peer", "name", "eth0", "netns", ROGUE_NS)
        ns = ("ip", "netns", "exec", ROGUE_NS)
        run(*ns, "ip", "link", "set", "eth0", "address", a.vifs[0].mac)
        run(*ns, "ip", "addr", "add", "192.0.2.61/24", "dev", "eth0")
        run(*ns, "ip", "link", "set", "eth0", "up")
        run(*ns, "ethtool", "-K", "eth0", "tx", "off")
        run("sysctl", "-qw", "net.ipv6.conf.rogue0.disable_ipv6=1")
        run("ip", "link", "set", "rogue0", "up")
        net.vsctl("add-port", "xenbr0", "rogue0")
        ofport = int(net.vsctl("get", "interface", "rogue0", "ofport").strip())
        unmanaged = f"table=0,in_port={ofport}"
        wait_for(lambda: "actions=drop" in ofctl(net, "xenbr0", "dump-flows", unmanaged), "the stranger's drop flow")
        assert run(*ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", "192.0.2.62", check=False).returncode != 0
        assert run(*ns, "ping", "-c", "1", "-W", "1", "192.0.2.1", check=False).returncode != 0
        counted = re.search(r"n_packets=(\d+)", ofctl(net, "xenbr0", "dump-flows", unmanaged))
        assert counted and int(counted.group(1)) >= 3  # dropped, and counted

        # Nothing is flooded to it: whatever the guests and the LAN broadcast, nothing arrives
        # on the far side (rogue0's own IPv6 is off: dom0's kernel sends nothing on it).
        def arrived() -> int:
            out = run(*ns, "ip", "-s", "-j", "link", "show", "eth0").stdout
            return json.loads(out)[0]["stats64"]["rx"]["packets"]

        rx_before = arrived()
        net.exec("tb", "ping", "-c", "2", "-W", "1", "-b", "192.0.2.255", check=False)  # broadcast ARP/ICMP
        net.exec("lan", "ping", "-c", "2", "-W", "1", "-b", "192.0.2.255", check=False)
        assert arrived() == rx_before
        # The operator sees it, and what to do.
        show = cli(net, "show", "xenbr0", "--json")
        assert json.loads(show.stdout)["bridges"][0]["unmanaged"] == ["rogue0"]
        assert "uplinks=peth0" in cli(net, "show").stdout
        doctor = cli(net, "doctor")
        assert doctor.returncode == 1 and "port rogue0 on xenbr0 is neither a vif nor a declared uplink" in (
            doctor.stdout
        )
        assert "external_ids:xvif-uplink=true" in doctor.stdout and "del-port xenbr0 rogue0" in doctor.stdout
        trace = cli(net, "trace", "--from", "rogue0", "--to", "192.0.2.62")
        assert "neither a vif nor a declared uplink" in trace.stdout, trace.stdout + trace.stderr
        # Declared (with a MAC of its own), it is an uplink like any other.
        run(*ns, "ip", "link", "set", "eth0", "address", "00:00:5e:00:53:77")
        run(*ns, "ip", "addr", "flush", "dev", "eth0")
        run(*ns, "ip", "addr", "add", "192.0.2.77/24", "dev", "eth0")
        net.vsctl("set", "port", "rogue0", "external_ids:xvif-uplink=true")
        wait_for(lambda: "actions=drop" not in ofctl(net, "xenbr0", "dump-flows", unmanaged), "the declaration")
        assert run(*ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", "192.0.2.62", check=False).returncode == 0
        assert "rogue0" in json.loads(cli(net, "show", "xenbr0", "--json").stdout)["bridges"][0]["uplinks"]
    finally:
        net.vsctl("--if-exists", "del-port", "xenbr0", "rogue0")
        run("ip", "link", "del", "rogue0", check=False)
        run("ip", "netns", "del", ROGUE_NS, check=False)


def test_a_named_bridge_with_another_controller_is_refused_and_left_as_it_was(net, ctl):
    host, before = ctl
    assert "bridge brforeign is named in the configuration but already has another controller" in log_text(host)
    # Someone else's flow and group on our own bridge too: never read as ours, never removed.
    ofctl(net, "xenbr0", "add-flow", "cookie=0x42,table=0,priority=7,in_port=999,actions=drop")
    ofctl(net, "xenbr0", "add-group", "group_id=5,type=all,bucket=output:LOCAL")
    net.guest("tc", 63, "mac=00:16:3e:00:3f:01,ip=192.0.2.63")  # makes the controller reconcile xenbr0
    wait_flows(net, 63)
    net.lab.stop_controller()  # a restart re-reads everything: still nothing of theirs touched
    log_at = len(log_text(host))
    net.lab.start_controller(host.lab.dir / "trust.toml")
    wait_for(lambda: "switch xenbr0 connected" in log_text(host)[log_at:], "the restarted controller")
    net.exec("tc", "ping", "-c", "1", "-W", "2", "192.0.2.1")  # and xenbr0 forwards, programmed
    assert "cookie=0x42, priority=7,in_port=999 actions=drop" in ofctl(net, "xenbr0", "dump-flows", "--no-stats")
    assert "group_id=5,type=all,bucket=actions=LOCAL" in ofctl(net, "xenbr0", "dump-groups")
    assert foreign_view(host) == before
    doctor = cli(net, "doctor", "--config", str(host.lab.dir / "trust.toml")).stdout
    assert "bridge brforeign is named in the controller's config but has another controller" in doctor


def test_a_bond_is_one_uplink_and_survives_a_member_going_down(net):
    """Two members to a LAN switch (a Linux bridge in a namespace): a frame leaves once,
    and pings go on over the other member when one goes down."""
    run("ip", "netns", "add", BOND_NS)
    ns = ("ip", "netns", "exec", BOND_NS)
    try:
        run(*ns, "ip", "link", "add", "br0", "type", "bridge")
        for member, peer in (("pbond0", "la"), ("pbond1", "lb")):
            run("ip", "link", "add", member, "type", "veth", "peer", "name", peer, "netns", BOND_NS)
            run(*ns, "ip", "link", "set", peer, "master", "br0")
            run(*ns, "ip", "link", "set", peer, "up")
            run("ip", "link", "set", member, "up")
        run(*ns, "ip", "addr", "add", "203.0.113.1/24", "dev", "br0")
        run(*ns, "ip", "link", "set", "br0", "up")
        net.vsctl(
            "add-bond", "xenbr1", "bond0", "pbond0", "pbond1", "bond_mode=active-backup",
            "--", "set", "port", "bond0", "external_ids:xvif-uplink=true",
        )  # fmt: skip
        net.guest("tbond", 64, "mac=00:16:3e:00:40:01,bridge=xenbr1,ip=203.0.113.64")
        wait_flows(net, 64, "xenbr1")
        wait_for(lambda: "type=ff" in ofctl(net, "xenbr1", "dump-groups"), "the bond's failover group")
        out = net.exec("tbond", "ping", "-c", "5", "-i", "0.2", "-W", "2", "203.0.113.1").stdout
        assert " 0% packet loss" in out and "DUP!" not in out, out  # each request left once
        first = net.vsctl("get", "interface", "pbond0", "ofport").strip()
        groups = ofctl(net, "xenbr1", "dump-groups")
        assert f"bucket=watch_port:{first}" in groups
        flood = subprocess.Popen(
            ["ip", "netns", "exec", "xvl-tbond", "ping", "-c", "40", "-i", "0.1", "-W", "1", "203.0.113.1"],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1)
        run("ip", "link", "set", "pbond0", "down")  # the member in use
        out, _ = flood.communicate(timeout=60)
        received = int(re.search(r"(\d+) received", out).group(1))
        assert received >= 35 and "DUP!" not in out, out
        out = net.exec("tbond", "ping", "-c", "3", "-i", "0.2", "-W", "2", "203.0.113.1").stdout
        assert " 0% packet loss" in out, out
    finally:
        net.vsctl("--if-exists", "del-port", "xenbr1", "bond0")
        for dev in ("pbond0", "pbond1"):
            run("ip", "link", "del", dev, check=False)
        run("ip", "netns", "del", BOND_NS, check=False)


def test_a_switch_that_hangs_holds_up_no_other_bridge(net, ctl):
    """A switch that completes the handshake and then answers nothing: the controller's
    requests to it wait for their timeout, in that switch's own thread; a vif change on
    xenbr0 meanwhile reaches xenbr0 at once, long before that timeout is even logged."""
    import socket

    from fakeswitch import FakeSwitch

    host, _ = ctl
    net.guest("ts", 65, "mac=00:16:3e:00:41:01,ip=192.0.2.65")
    wait_flows(net, 65)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(host.lab.dir / "xvif-ovs.sock"))
    stuck = FakeSwitch(sock, 0xFEED, "brstuck")
    try:
        log_at = len(log_text(host))
        stuck.handshake()  # then silence: the controller's next request gets no answer
        threading.Thread(target=lambda: stuck.eof(30), daemon=True).start()  # reads, answers nothing
        with Client(unix_socket_path=str(host.lab.xenstore_socket)) as c:
            c.write(b"/local/domain/0/backend/vif/65/0/ip", b"192.0.2.65 198.51.100.65")
        cookie = f"cookie=0x78760300{0x8000 | 65:04x}0000/-1"
        wait_for(lambda: "198.51.100.65" in ofctl(net, "xenbr0", "dump-flows", cookie), "the change on xenbr0")
        assert "no answer from" not in log_text(host)[log_at:], log_text(host)[log_at:]  # still waited for
    finally:
        sock.close()
