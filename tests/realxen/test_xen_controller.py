"""The controller against real oxenstored, netback and the OVS kernel datapath: guests
reach each other; each spoof a busybox guest can send is dropped, counted, and never seen
on the far side; nothing crosses VLANs; no packet-in in steady state."""

from __future__ import annotations

import re
import subprocess
import threading

from dom0 import PEER_IP, drops, mac, ovs_rows, reach, sh, up, vif_spec, wait_for


def received(out: str, tag: str) -> int:
    m = re.search(rf"^XR-{tag}.*?(\d+) packets received", out, re.M | re.S)
    assert m, f"no ping summary after XR-{tag} in the console:\n{out[-2000:]}"
    return int(m.group(1))


class Sniffer:
    """tcpdump on a vif in dom0: what reached the far side."""

    def __init__(self, dev: str, bpf: str) -> None:
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", dev, "-nn", "-e", "-l", "-U", bpf],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.err: list[str] = []
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()
        wait_for(
            f"tcpdump on {dev} to listen",
            lambda: self.proc.poll() is not None or any("listening on" in e for e in self.err),
            30,
        )
        if self.proc.poll() is not None:
            raise AssertionError(f"tcpdump on {dev} exited {self.proc.returncode}: {''.join(self.err)}")

    def stop(self) -> str:
        if self.proc.poll() is not None:
            raise AssertionError(f"tcpdump stopped early ({self.proc.returncode}): {''.join(self.err)}")
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return out


def test_guests_ping_each_other(peer, guests):
    a = guests.create(
        "rxping",
        [vif_spec(mac(21), ip="10.0.0.21")],
        up("10.0.0.21") + reach(PEER_IP) + f"echo XR-PING\nping -c 10 -W 2 {PEER_IP}\n",
    )
    out = a.done()
    assert f"XR-REACHED {PEER_IP}" in out, out[-2000:]
    assert received(out, "PING") == 10, out[-2000:]


def _spoof_test(peer, guests, n: int, ip: str, spoof: str, bpf: str, foreign: str):
    """The guest first reaches the peer as itself, then does `spoof` and pings again:
    nothing of the spoofed traffic may reach the peer's vif, and its drops are counted."""
    sniff = Sniffer(peer.vif(), bpf)
    try:
        script = up(ip) + reach(PEER_IP) + spoof + f"echo XR-SPOOFED\nping -c 5 -W 1 {PEER_IP}\n"
        g = guests.create(f"rxsp{n}", [vif_spec(mac(n), ip=ip)], script)
        out = g.done()
        before = drops(g.vif())
    finally:
        seen = sniff.stop()
    assert f"XR-REACHED {PEER_IP}" in out, f"the guest never reached its peer as itself:\n{out[-2000:]}"
    assert received(out, "SPOOFED") == 0, out[-2000:]
    leaked = [line for line in seen.splitlines() if foreign in line]
    assert not leaked, "spoofed frames reached the peer's vif:\n" + "\n".join(leaked[:10])
    assert before > 0, f"no port-security drops counted for {g.vif()}"
    return g


def test_spoofed_source_mac_dropped_and_counted(peer, guests):
    spoof_mac = "00:16:3e:66:66:66"
    spoof = f"ip link set eth0 down\nip link set eth0 address {spoof_mac}\nip link set eth0 up\nip neigh flush all\n"
    _spoof_test(peer, guests, 22, "10.0.0.22", spoof, f"ether src {spoof_mac}", spoof_mac)


def test_foreign_ip_dropped_and_counted(peer, guests):
    spoof = "ip addr flush dev eth0\nip addr add 10.0.0.99/24 dev eth0\n"
    _spoof_test(peer, guests, 23, "10.0.0.23", spoof, "host 10.0.0.99", "10.0.0.99")


def test_foreign_arp_sender_dropped_and_counted(peer, guests):
    # busybox arping binds its probe socket to -s: allow a non-local source address
    spoof = (
        "echo 1 > /proc/sys/net/ipv4/ip_nonlocal_bind\n"
        f"echo XR-ARPING\narping -c 3 -w 4 -I eth0 -s 10.0.0.98 {PEER_IP}\n"
        "ip addr flush dev eth0\nip addr add 10.0.0.98/24 dev eth0\nip neigh flush all\n"
    )
    g = _spoof_test(peer, guests, 24, "10.0.0.24", spoof, "arp", "10.0.0.98")
    out = g.console()
    assert re.search(r"Sent 3 probe", out), f"arping did not send:\n{out[-2000:]}"
    assert re.search(r"Received 0 response", out), f"arping got an answer:\n{out[-2000:]}"


def _frames_hex(*frames) -> str:
    return " ".join(bytes(f).hex() for f in frames)


def _server_frames(n: int) -> tuple[str, str]:
    """A DHCP offer and an IPv6 router advertisement from guest n, made with scapy here
    (the guest sends them with sendframe: no busybox applet makes either)."""
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6NDOptPrefixInfo, IPv6
    from scapy.layers.l2 import Ether

    src = mac(n)
    offer = (
        Ether(src=src, dst="ff:ff:ff:ff:ff:ff")
        / IP(src=f"10.0.0.{n}", dst="255.255.255.255")
        / UDP(sport=67, dport=68)
        / BOOTP(op=2, yiaddr="10.0.0.199", siaddr=f"10.0.0.{n}", chaddr=bytes.fromhex("00163e5a0014"))
        / DHCP(options=[("message-type", "offer"), ("server_id", f"10.0.0.{n}"), ("router", f"10.0.0.{n}"), "end"])
    )
    ra = (
        Ether(src=src, dst="33:33:00:00:00:01")
        / IPv6(src="fe80::216:3eff:fe5a:" + f"{n:x}", dst="ff02::1", hlim=255)
        / ICMPv6ND_RA()
        / ICMPv6NDOptPrefixInfo(prefix="2001:db8:66::", prefixlen=64)
    )
    return _frames_hex(offer), _frames_hex(ra)


def test_rogue_dhcp_offer_and_router_advertisement_dropped_and_counted(peer, guests):
    """A guest that answers DHCP and advertises itself as the IPv6 router: neither frame
    reaches the peer, both are counted as the guest's drops."""
    n = 26
    offer, ra = _server_frames(n)
    sniff = Sniffer(peer.vif(), "(udp and src port 67) or (icmp6 and ip6[40] == 134)")
    try:
        g = guests.create(
            "rxsrv",
            [vif_spec(mac(n), ip=f"10.0.0.{n}")],
            up(f"10.0.0.{n}") + reach(PEER_IP) + f"echo XR-SEND\nsendframe eth0 5 {offer} {ra}\n",
        )
        out = g.done()
        counted = drops(g.vif())
    finally:
        seen = sniff.stop()
    assert f"XR-REACHED {PEER_IP}" in out, out[-2000:]
    assert "sendframe: 10 frames sent on eth0" in out, out[-2000:]
    assert not seen.strip(), "a guest's DHCP offer or router advertisement reached the peer:\n" + seen[-2000:]
    assert counted >= 10, f"{counted} drops counted for {g.vif()}, after 10 server frames"


PRIVATE = "rxprivate"  # named private in the controller's config (conftest: controller)
LAN_IP = "10.0.0.1"


def test_private_guest_reaches_the_uplink_and_no_guest(peer, guests, lan):
    ip = "10.0.0.28"
    g = guests.create(
        "",
        [vif_spec(mac(28), ip=ip)],
        up(ip) + reach(LAN_IP) + f"echo XR-GUEST\nping -c 3 -W 1 {PEER_IP}\n",
        name=PRIVATE,
    )
    out = g.done()
    assert f"XR-REACHED {LAN_IP}" in out, f"the private guest did not reach the LAN:\n{out[-2000:]}"
    assert received(out, "GUEST") == 0, out[-2000:]


def test_nothing_crosses_vlans(controller, guests):
    vlan10 = "ip link set eth0 up\nip addr add 10.1.0.{}/24 dev eth0\necho XR-READY\n"
    b = guests.create("rxv10b", [vif_spec(mac(31), "xenbr0.10", ip="10.1.0.31")], vlan10.format(31))
    c = guests.create("rxv20c", [vif_spec(mac(32), "xenbr0.20", ip="10.1.0.32")], vlan10.format(32))
    b.wait_console("^XR-READY")
    c.wait_console("^XR-READY")
    a = guests.create(
        "rxv10a",
        [vif_spec(mac(30), "xenbr0.10", ip="10.1.0.30")],
        up("10.1.0.30") + reach("10.1.0.31") + "echo XR-OTHERVLAN\nping -c 5 -W 1 10.1.0.32\n",
    )
    out = a.done()
    assert "XR-REACHED 10.1.0.31" in out, f"same VLAN unreachable:\n{out[-2000:]}"
    assert received(out, "OTHERVLAN") == 0, out[-2000:]


def test_no_packet_in(peer, guests):
    """OpenFlow between switch and controller while a guest boots, ARPs and pings: no
    packet-in at all, and no flow that could send one."""
    snoop = subprocess.Popen(
        ["ovs-ofctl", "snoop", "xenbr0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        a = guests.create(
            "rxpin",
            [vif_spec(mac(25), ip="10.0.0.25")],
            up("10.0.0.25") + reach(PEER_IP) + f"echo XR-PING\nping -c 20 -A {PEER_IP}\n",
        )
        out = a.done()
    finally:
        snoop.terminate()
        text, _ = snoop.communicate(timeout=30)
    assert received(out, "PING") == 20, out[-2000:]
    assert "PACKET_IN" not in text, text[-3000:]
    flows = sh(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "xenbr0"]).stdout
    assert "CONTROLLER" not in flows, [f for f in flows.splitlines() if "CONTROLLER" in f]
    assert all(r["is_connected"] is True for r in ovs_rows("Controller", "is_connected"))


def test_controller_logged_no_exception(controller):
    """Last in the module: the controller ran all of it without a thread dying."""
    since = sh(["systemctl", "show", "-p", "ActiveEnterTimestamp", "--value", "xvif-ovs-controller"]).stdout.strip()
    log = sh(["journalctl", "-u", "xvif-ovs-controller", "--no-pager", "--since", since], check=False).stdout
    bad = [i for i, line in enumerate(log.splitlines()) if "Traceback" in line or "Exception in thread" in line]
    assert not bad, "the controller logged an exception:\n" + "\n".join(log.splitlines()[bad[0] : bad[0] + 30])
