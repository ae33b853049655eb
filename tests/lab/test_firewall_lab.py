"""Stateful firewall rules on the lab: real ovs-vswitchd and its conntrack, real TCP,
UDP and ICMP over IPv4 and IPv6 between Linux network stacks (the LAN and the guests),
rules as an operator writes them into the controller's rules directory."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labflows import Flows, cli, controller, cookie_of, wait_for

from xvif_ovs.pipeline.firewall import P_FW, P_RULE

ECHO = str(Path(__file__).with_name("echo.py"))
LAN4, LAN6 = "192.0.2.1", "2001:db8:0::1"
WEB = ("web", 31, "00:16:3e:00:1f:01", "192.0.2.31", "2001:db8:0::31")
DB = ("db", 32, "00:16:3e:00:20:01", "192.0.2.32", "2001:db8:0::32")
FLOWS = Flows("xenbr0")
ofctl = FLOWS.ofctl


@pytest.fixture(scope="module")
def fw(host):
    rules = host.lab.dir / "rules.d"
    rules.mkdir(exist_ok=True)
    config = f'[controller]\nbridges = ["xenbr0"]\nrules = "{rules}"\n'
    with controller(host, config):
        yield host


@pytest.fixture
def rules(fw) -> Iterator[Path]:
    d = fw.lab.dir / "rules.d"
    yield d
    for f in d.glob("*.toml"):
        f.unlink()


def write(d: Path, name: str, text: str) -> None:
    """As an editor saves: a new file renamed into place (the controller may read it at any moment)."""
    tmp = d / f".{name}.tmp"
    tmp.write_text(text)
    tmp.rename(d / name)


def rule_flows(host, domid: int) -> str:
    return ofctl(host, "dump-flows", cookie_of(P_RULE, domid))  # any rule index (bits 32-39)


def settled(host, domid: int, rules: int, has: str = "", lacks: str = "") -> None:
    """Wait until vif DOMID.0 has flows for exactly ``rules`` rules (by their cookies),
    among them one with ``has`` and none with ``lacks`` (the previous test's rules may
    still be in force for a moment: the files are read once a second)."""

    def ok() -> bool:
        dump = rule_flows(host, domid)
        return (
            len({c for c in re.findall(r"cookie=0x([0-9a-f]+)", dump)}) == rules
            and (rules > 0 or "table=11" in ofctl(host, "dump-flows", cookie_of(P_FW, domid)))
            and has in dump
            and not (lacks and lacks in dump)
        )

    try:
        wait_for(ok, f"vif{domid}.0 with {rules} rule(s)")
    except AssertionError:
        log = (host.lab.dir / "controller.log").read_text().splitlines()
        raise AssertionError("\n".join(log[-15:]) + "\n" + rule_flows(host, domid)) from None


def reach(host, ns: str, proto: str, addr: str, port: int) -> bool:
    return host.exec(ns, sys.executable, ECHO, "try", proto, addr, str(port), check=False).returncode == 0


def ping(host, ns: str, addr: str) -> bool:
    return host.exec(ns, "ping", "-c", "1", "-W", "1", addr, check=False).returncode == 0


@contextlib.contextmanager
def servers(host, *where: str, ports: tuple[int, ...] = (22, 25, 53, 2222, 7000)) -> Iterator[None]:
    procs = []
    try:
        for ns in where:
            p = subprocess.Popen(
                ["ip", "netns", "exec", f"xvl-{ns}", sys.executable, ECHO, "serve", *map(str, ports)],
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


class Session:
    """One TCP connection kept open from ``ns``; say() sends a line and returns the echo."""

    def __init__(self, ns: str, addr: str, port: int, sport: int = 0) -> None:
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", f"xvl-{ns}", sys.executable, ECHO, "session", addr, str(port), str(sport)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.p.stdout is not None and self.p.stderr is not None
        first = self.p.stdout.readline().strip()
        assert first == "connected", self.p.stderr.read()

    def say(self, word: str) -> str:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(word + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def close(self) -> None:
        self.p.kill()
        self.p.wait()


def web(host, *extra: str) -> None:
    name, domid, mac, ip4, ip6 = WEB
    host.guest(name, domid, f"mac={mac},bridge=xenbr0,ip={ip4} {ip6}", *extra)


def db(host) -> None:
    name, domid, mac, ip4, ip6 = DB
    host.guest(name, domid, f"mac={mac},bridge=xenbr0,ip={ip4} {ip6}")


CLOSED = '[policies]\nxenbr0 = "closed"\n'
SSH_FROM_LAN = """
[address_sets]
lan = ["192.0.2.0/24", "2001:db8:0::/64"]

[[rule]]
guest = "web"
direction = "in"
action = "allow"
protocol = "tcp"
ports = 22
remote = "lan"
comment = "SSH from the LAN"
"""


def test_a_closed_network_denies_what_comes_in_and_passes_the_replies_of_what_goes_out(guests, rules):
    write(rules, "10-closed.toml", CLOSED)
    web(guests)
    settled(guests, WEB[1], 0)
    with servers(guests, "web", "lan"):
        for addr in (WEB[3], WEB[4]):
            for proto in ("tcp", "udp"):
                assert not reach(guests, "lan", proto, addr, 22), (proto, addr)
            assert not ping(guests, "lan", addr), addr
        for addr in (LAN4, LAN6):  # its own connections, and their replies
            for proto in ("tcp", "udp"):
                assert reach(guests, "web", proto, addr, 7000), (proto, addr)
            assert ping(guests, "web", addr), addr


def test_an_allow_rule_opens_one_port_from_one_network_over_ipv4_and_ipv6(guests, rules):
    write(rules, "10-closed.toml", CLOSED)
    write(rules, "20-web.toml", SSH_FROM_LAN)
    web(guests)
    settled(guests, WEB[1], 1, has="tp_dst=22 ")
    with servers(guests, "web"):
        for addr in (WEB[3], WEB[4]):
            assert reach(guests, "lan", "tcp", addr, 22), addr
            assert not reach(guests, "lan", "tcp", addr, 2222), addr
            assert not reach(guests, "lan", "udp", addr, 22), addr  # tcp only
    listing = json.loads(cli(guests, "rules", "--json").stdout)
    (vif,) = listing["vifs"]
    (rule,) = vif["rules"]
    assert rule["comment"] == "SSH from the LAN" and rule["where"].endswith("20-web.toml:5")
    assert rule["packets"] >= 4 and vif["closed_vlans"] == [0] and vif["default_drops"]["packets"] > 0
    assert "SSH from the LAN" in cli(guests, "rules").stdout
    verdict = cli(
        guests, "trace", "--from", "peth0", "--to", "vif31.0", "--src-ip", LAN4, "--proto", "tcp", "--port", "22"
    ).stdout
    assert "forwarded to vif31.0 (allowed by firewall rule 0 of vif31.0: in allow tcp 22" in verdict, verdict
    verdict = cli(
        guests, "trace", "--from", "peth0", "--to", "vif31.0", "--src-ip", LAN4, "--proto", "tcp", "--port", "2222"
    ).stdout
    assert "dropped by the firewall: vif31.0's network is closed" in verdict, verdict
    grouped = cli(guests, "flows", "--domain", "web").stdout
    assert "firewall rule 0: in allow tcp 22 from 192.0.2.0/24,2001:db8::/64 (" in grouped, grouped


def test_doctor_names_a_rule_whose_guest_is_not_here_and_a_file_the_controller_refuses(guests, rules):
    write(rules, "20-ghost.toml", SSH_FROM_LAN.replace('guest = "web"', 'guest = "ghost"'))
    web(guests)
    out = cli(guests, "doctor", "--interval", "0").stdout
    assert re.search(r"20-ghost\.toml:5: no guest 'ghost' on this host", out), out
    write(rules, "20-ghost.toml", SSH_FROM_LAN.replace("ports = 22", "ports = 0"))
    out = cli(guests, "doctor", "--interval", "0").stdout
    assert re.search(r"20-ghost\.toml:\d+: port 0 is out of range", out), out


def test_rules_for_every_guest_for_the_network_and_for_one_guest_apply_together(guests, rules):
    write(rules, "10-closed.toml", CLOSED)
    write(
        rules,
        "20-all.toml",
        """
[[rule]]
all = true
direction = "out"
action = "deny"
protocol = "tcp"
ports = 25
comment = "no SMTP out, from anyone"

[[rule]]
network = "xenbr0"
direction = "in"
action = "allow"
protocol = "icmp"
type = 8

[[rule]]
network = "xenbr0"
direction = "in"
action = "allow"
protocol = "icmpv6"
type = 128
""",
    )
    write(rules, "30-web.toml", SSH_FROM_LAN)
    web(guests)
    db(guests)
    settled(guests, WEB[1], 4, has="tp_dst=22 ")
    settled(guests, DB[1], 3)
    with servers(guests, "lan", "web", "db"):
        for g in ("web", "db"):
            assert not reach(guests, g, "tcp", LAN4, 25), g
            assert not reach(guests, g, "tcp", LAN6, 25), g
            assert reach(guests, g, "tcp", LAN4, 7000), g
        for g in (WEB, DB):
            assert ping(guests, "lan", g[3]) and ping(guests, "lan", g[4]), g[0]
        assert reach(guests, "lan", "tcp", WEB[3], 22)
        assert not reach(guests, "lan", "tcp", DB[3], 22)


def test_a_reject_rule_answers_with_a_reset_or_icmp_unreachable_in_both_directions(guests, rules):
    write(rules, "10-closed.toml", CLOSED)
    write(
        rules,
        "20-web.toml",
        """
[[rule]]
guest = "web"
direction = "in"
action = "reject"
protocol = "any"
remote = ["192.0.2.0/24", "2001:db8::/64"]

[[rule]]
guest = "web"
direction = "out"
action = "reject"
protocol = "tcp"
ports = 25
""",
    )
    web(guests)
    settled(guests, WEB[1], 2, has="tp_dst=25")
    with servers(guests, "web", "lan"):
        for addr in (WEB[3], WEB[4]):
            for proto in ("tcp", "udp"):  # a reset, and ICMP port unreachable: refused at once, not timed out
                r = guests.exec("lan", sys.executable, ECHO, "try", proto, addr, "22", check=False)
                assert r.returncode == 1 and "Connection refused" in r.stdout, (proto, addr, r.stdout)
        ping4 = guests.exec("lan", "ping", "-c", "1", "-W", "1", WEB[3], check=False)
        assert "Packet filtered" in ping4.stdout or "Unreachable" in ping4.stdout, ping4.stdout
        for addr in (LAN4, LAN6):
            r = guests.exec("web", sys.executable, ECHO, "try", "tcp", addr, "25", check=False)
            assert "Connection refused" in r.stdout, r.stdout
            assert reach(guests, "web", "tcp", addr, 7000)  # only 25
    log = (guests.lab.dir / "controller.log").read_text()
    assert "unexpected packet-in" not in log
    dump = ofctl(guests, "dump-meters")
    assert "meter=30838 pktps burst" in dump and "rate=100" in dump, dump


def test_in_and_out_rules_decide_in_their_order_on_an_open_network(guests, rules):
    write(
        rules,
        "20-web.toml",
        """
[[rule]]
guest = "web"
direction = "out"
action = "allow"
protocol = "tcp"
ports = 7000

[[rule]]
guest = "web"
direction = "out"
action = "deny"
protocol = "tcp"

[[rule]]
guest = "web"
direction = "in"
action = "deny"
protocol = "udp"
ports = "50-60"
""",
    )
    web(guests)
    settled(guests, WEB[1], 3, has="tp_dst=7000")
    with servers(guests, "lan", "web", ports=(53, 2222, 7000, 7001)):
        for lan, addr in ((LAN4, WEB[3]), (LAN6, WEB[4])):
            assert reach(guests, "web", "tcp", lan, 7000)  # allowed before the deny
            assert not reach(guests, "web", "tcp", lan, 7001)  # denied
            assert reach(guests, "web", "udp", lan, 7001)  # udp: no rule, out is open
            assert not reach(guests, "lan", "udp", addr, 53)  # denied in
            assert reach(guests, "lan", "udp", addr, 2222)  # the network is open
            assert reach(guests, "lan", "tcp", addr, 53)  # and tcp was never denied


def test_reloads_lose_no_packet_of_a_connection_they_do_not_touch_and_sighup_reloads(guests, rules):
    write(rules, "10-closed.toml", CLOSED)
    write(rules, "20-web.toml", SSH_FROM_LAN)
    web(guests)
    settled(guests, WEB[1], 1, has="tp_dst=22 ")
    ping = subprocess.Popen(
        ["ip", "netns", "exec", "xvl-web", "ping", "-q", "-c", "400", "-i", "0.01", LAN4],
        stdout=subprocess.PIPE,
        text=True,
    )
    log = guests.lab.dir / "controller.log"
    for i in range(4):  # rules come and go for other ports; the guest's own ping runs on
        extra = f'[[rule]]\nguest = "web"\ndirection = "in"\naction = "allow"\nprotocol = "tcp"\nports = {3000 + i}\n'
        write(rules, f"30-extra{i}.toml", extra)
        settled(guests, WEB[1], 2 + i, has=f"tp_dst={3000 + i} ")
    before = log.read_text().count("firewall: reloaded")
    pid = int((guests.lab.dir / "controller.pid").read_text())
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: log.read_text().count("firewall: reloaded") > before, "a reload on SIGHUP")
    out, _ = ping.communicate(timeout=30)
    assert " 0% packet loss" in out, out


def test_a_guests_rules_follow_it_across_a_reboot(guests, rules):
    write(rules, "10-closed.toml", CLOSED)
    write(rules, "20-web.toml", SSH_FROM_LAN)
    web(guests)
    settled(guests, WEB[1], 1, has="tp_dst=22 ")
    from xvif_ovs.lab.domain import del_domain

    del_domain(guests.lab, "web")
    name, _, mac, ip4, ip6 = WEB
    guests.guest(name, 41, f"mac={mac},bridge=xenbr0,ip={ip4} {ip6}")  # the same guest, a new domid
    settled(guests, 41, 1, has="tp_dst=22 ")
    with servers(guests, "web"):
        assert reach(guests, "lan", "tcp", WEB[3], 22)
        assert not reach(guests, "lan", "tcp", WEB[3], 2222)


def test_a_guest_changing_its_mac_or_address_gets_no_way_around(guests, rules):
    write(rules, "10-closed.toml", CLOSED)
    web(guests)
    settled(guests, WEB[1], 0)
    with servers(guests, "web"):
        guests.exec("web", "ip", "addr", "add", "192.0.2.99/24", "dev", "eth0")
        assert not reach(guests, "lan", "tcp", "192.0.2.99", 22)
        guests.exec("web", "ip", "link", "set", "eth0", "address", "00:16:3e:00:99:99")
        assert not reach(guests, "lan", "tcp", WEB[3], 22)
        assert not reach(guests, "lan", "tcp", "192.0.2.99", 22)


def test_a_reload_that_removes_an_allow_cuts_that_connection_and_leaves_the_others(guests, rules):
    write(rules, "10-closed.toml", CLOSED)
    two = SSH_FROM_LAN + SSH_FROM_LAN.split("[[rule]]")[1].join(["[[rule]]", ""]).replace("ports = 22", "ports = 2222")
    write(rules, "20-web.toml", two)
    web(guests)
    settled(guests, WEB[1], 2, has="tp_dst=2222")
    with servers(guests, "web"):
        ssh, other = Session("lan", WEB[3], 22), Session("lan", WEB[3], 2222)
        try:
            assert ssh.say("one") == "one" and other.say("one") == "one"
            write(rules, "20-web.toml", SSH_FROM_LAN.replace("ports = 22", "ports = 2222"))
            settled(guests, WEB[1], 1, has="tp_dst=2222", lacks="tp_dst=22 ")
            assert ssh.say("two") == "TIMEOUT"
            assert other.say("two") == "two"
            assert not reach(guests, "lan", "tcp", WEB[3], 22)  # nor a new one
        finally:
            ssh.close()
            other.close()


def test_a_cut_connection_leaves_nothing_behind_the_same_ports_connect_again_once_allowed(guests, rules):
    """OVS's conntrack calls a SYN on an established entry invalid for as long as the
    entry lives (a day): the cut must remove it, not only stop its packets."""
    write(rules, "10-closed.toml", CLOSED)
    write(rules, "20-web.toml", SSH_FROM_LAN)
    web(guests)
    settled(guests, WEB[1], 1, has="tp_dst=22 ")
    with servers(guests, "web"):
        s = Session("lan", WEB[3], 22, sport=40022)
        try:
            assert s.say("one") == "one"
            write(rules, "20-web.toml", SSH_FROM_LAN.replace("ports = 22", "ports = 2222"))
            settled(guests, WEB[1], 1, has="tp_dst=2222", lacks="tp_dst=22 ")
            assert s.say("two") == "TIMEOUT"
        finally:
            s.close()
    # Both ends forget it (their RSTs are dropped by the firewall): only conntrack could remember.
    write(rules, "20-web.toml", SSH_FROM_LAN)
    settled(guests, WEB[1], 1, has="tp_dst=22 ", lacks="tp_dst=2222")
    with servers(guests, "web"):
        again = Session("lan", WEB[3], 22, sport=40022)
        try:
            assert again.say("three") == "three"
        finally:
            again.close()


def test_a_cut_connection_stays_cut_whatever_the_guest_sends_on_it(guests, rules):
    """Conntrack takes up a connection from any of its packets: the guest's next segment
    on a cut connection must not open it again as the guest's own (out is open), which
    would let the other side's packets in as its replies."""
    write(rules, "10-closed.toml", CLOSED)
    write(rules, "20-web.toml", SSH_FROM_LAN)
    web(guests)
    settled(guests, WEB[1], 1, has="tp_dst=22 ")
    with contextlib.ExitStack() as stack:
        stack.enter_context(servers(guests, "web"))
        s = Session("lan", WEB[3], 22)
        try:
            assert s.say("one") == "one"
            write(rules, "20-web.toml", SSH_FROM_LAN.replace("ports = 22", "ports = 2222"))
            settled(guests, WEB[1], 1, has="tp_dst=2222", lacks="tp_dst=22 ")
            assert s.say("two") == "TIMEOUT"
            stack.close()  # the guest's server dies: its kernel sends an RST on the connection
            time.sleep(0.5)
            # Taken up as the guest's, the LAN's next segment would reach the guest, whose
            # RST would come back: CLOSED. Cut, it goes nowhere.
            assert s.say("three") == "TIMEOUT"
        finally:
            s.close()


def test_a_malformed_file_is_refused_with_its_line_and_changes_nothing(guests, rules):
    write(rules, "10-closed.toml", CLOSED)
    write(rules, "20-web.toml", SSH_FROM_LAN)
    web(guests)
    settled(guests, WEB[1], 1, has="tp_dst=22 ")

    def flows() -> str:
        return re.sub(r"duration=[^,]*, |n_packets=\d+, |n_bytes=\d+, |idle_age=\d+, ", "", ofctl(guests, "dump-flows"))

    before = flows()
    log = guests.lab.dir / "controller.log"
    for bad, why in (
        ('remote = "lan"', 'remote = "192.0.2.1/24"'),
        ("ports = 22", "ports = 70000"),
        ('comment = "SSH from the LAN"', 'colour = "red"'),
    ):
        write(rules, "20-web.toml", SSH_FROM_LAN.replace(bad, why))
        wait_for(lambda: "20-web.toml:" in log.read_text().split("NOT reloaded")[-1], "the refusal in the log")
        assert flows() == before
        log.write_text("")
    r = cli(guests, "rules", "check")
    assert r.returncode != 0 and re.search(r"20-web\.toml:\d+: ", r.stdout + r.stderr), r
    with servers(guests, "web"):
        assert reach(guests, "lan", "tcp", WEB[3], 22)
        assert not reach(guests, "lan", "tcp", WEB[3], 2222)


def test_guest_to_guest_passes_both_firewalls(guests, rules):
    write(rules, "10-closed.toml", CLOSED)
    write(rules, "20-web.toml", SSH_FROM_LAN)
    web(guests)
    db(guests)
    settled(guests, WEB[1], 1, has="tp_dst=22 ")
    settled(guests, DB[1], 0)
    with servers(guests, "web", "db"):
        assert reach(guests, "db", "tcp", WEB[3], 22)  # db's out is open, web's in allows the LAN's /24
        assert not reach(guests, "web", "tcp", DB[3], 22)  # db's in is closed


def test_established_connections_survive_a_controller_restart(guests, rules):
    write(rules, "10-closed.toml", CLOSED)
    write(rules, "20-web.toml", SSH_FROM_LAN)
    web(guests)
    settled(guests, WEB[1], 1, has="tp_dst=22 ")
    zone_before = ofctl(guests, "dump-flows", cookie_of(P_FW, WEB[1]))
    with servers(guests, "web"):
        s = Session("lan", WEB[3], 22)
        try:
            assert s.say("one") == "one"
            guests.lab.stop_controller()
            guests.lab.start_controller(guests.lab.dir / "controller.toml")
            time.sleep(2)
            assert s.say("two") == "two"
            zone = re.search(r"zone=(\d+)", zone_before)
            assert zone and f"zone={zone.group(1)}" in ofctl(guests, "dump-flows", cookie_of(P_FW, WEB[1]))
        finally:
            s.close()
