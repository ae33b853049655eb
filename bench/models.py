"""Xen's three network models on one lab, in one session: TCP throughput (iperf3), round
trip latency (ping), guest-LAN and guest-guest, and new TCP connections per second from a
guest to the LAN (through NAT, each is a new conntrack entry):

- bridged: guests on xenbr0 through the controller's pipeline;
- routed: xenbr1 in the controller's routed mode (proxy ARP and routing in flows);
- nat: xennat in its NAT mode (routing and OVS conntrack NAT in flows);
- linux-route: what Xen's vif-route and network-route set up, in namespaces of its own:
  dom0 forwards, proxy-ARPs on the uplink and on each vif, a host route per guest;
- linux-nat: what vif-nat and network-nat set up: dom0 forwards, the guests on a private
  subnet behind dom0's vif addresses, iptables MASQUERADE on the uplink.

Runs alternate (forward, then backward...); figures are min/median/max over the repeats
and ratios of medians. Usage (root): .venv/bin/python bench/models.py [--repeats 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from common import ROOT, save, summary, wait_for
from dataplane import iperf, ns, rtt_ms, sh

from xvif_ovs.lab.domain import add_domain, del_domain
from xvif_ovs.lab.host import BridgeArg, Lab

LAB_DIR = "/run/xvif-ovs/bench-models"
# The LAN host listens on 7100-7115: connections spread as to several services.
# Opens and closes TCP connections to HOST:PORT.. for SECONDS; prints how many per second.
CONNECT = r"""
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    s = socket.create_connection((host, port + n % 16), timeout=2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST: no TIME_WAIT
    s.close()
    n += 1
print(n / seconds)
"""
ACCEPT = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in range(int(sys.argv[1]), int(sys.argv[1]) + 16):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(512); s.setblocking(False); sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        try:
            c, _ = key.fileobj.accept(); c.close()
        except BlockingIOError:
            pass
"""


class LinuxHost:
    """Xen's own scripts' job done by Linux, in namespaces of its own: PREFIX-dom0 (the
    host) forwards, with its uplink to PREFIX-lan and each guest PREFIX-gN on a vif device
    that carries VIF_IP, proxy-ARPs, and has a /32 route to the guest (vif-route,
    vif-nat and network-route/-nat in tools/hotplug/Linux of Xen's tree)."""

    DOM0_IP = LAN_IP = VIF_IP = ""
    GUESTS: dict[str, str] = {}

    def __init__(self, prefix: str) -> None:
        self.DOM0, self.LAN = f"{prefix}-dom0", f"{prefix}-lan"
        for n in (self.DOM0, self.LAN, *self.GUESTS):
            sh("ip", "netns", "add", n)
            ns(n, "ip", "link", "set", "lo", "up")
        d = self.DOM0
        sh("ip", "link", "add", "peth", "netns", d, "type", "veth", "peer", "name", "eth0", "netns", self.LAN)
        ns(self.LAN, "ip", "addr", "add", f"{self.LAN_IP}/24", "dev", "eth0")
        ns(self.LAN, "ip", "link", "set", "eth0", "up")
        ns(d, "ip", "addr", "add", f"{self.DOM0_IP}/24", "dev", "peth")
        ns(d, "ip", "link", "set", "peth", "up")
        ns(d, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.peth.proxy_arp=1")
        for i, (g, ip) in enumerate(self.GUESTS.items(), 1):
            vif = f"vif{i}"
            sh("ip", "link", "add", vif, "netns", d, "type", "veth", "peer", "name", "eth0", "netns", g)
            ns(g, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
            ns(g, "ip", "link", "set", "eth0", "up")
            ns(d, "ip", "addr", "add", f"{self.VIF_IP}/32", "dev", vif)
            ns(d, "ip", "link", "set", vif, "up")
            ns(d, "sysctl", "-qw", f"net.ipv4.conf.{vif}.proxy_arp=1")
            ns(d, "ip", "route", "add", f"{ip}/32", "dev", vif, "src", self.VIF_IP)

    def close(self) -> None:
        for n in (self.DOM0, self.LAN, *self.GUESTS):
            sh("ip", "netns", "del", n, check=False)


class LinuxRoute(LinuxHost):
    """vif-route: guests on the LAN's prefix; each vif carries dom0's LAN address."""

    DOM0_IP, LAN_IP = "198.18.60.254", "198.18.60.1"
    VIF_IP = DOM0_IP
    GUESTS = {"xbr-g1": "198.18.60.21", "xbr-g2": "198.18.60.22"}

    def __init__(self) -> None:
        super().__init__("xbr")


class LinuxNat(LinuxHost):
    """vif-nat: guests on a private subnet behind their gateway (each vif carries it),
    iptables MASQUERADE on the uplink."""

    DOM0_IP, LAN_IP, VIF_IP = "198.18.70.254", "198.18.70.1", "10.0.9.1"
    GUESTS = {"xbn-g1": "10.0.9.21", "xbn-g2": "10.0.9.22"}

    def __init__(self) -> None:
        super().__init__("xbn")
        ns(self.DOM0, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "peth", "-j", "MASQUERADE")
        for g in self.GUESTS:
            ns(g, "ip", "route", "add", "default", "via", self.VIF_IP)


def connection_rate(server_ns: str, client_ns: str, addr: str, seconds: int) -> float:
    srv = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, sys.executable, "-c", ACCEPT, "7100"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert srv.stdout.readline().strip() == "ready"
        return float(ns(client_ns, sys.executable, "-c", CONNECT, addr, "7100", str(seconds)))
    finally:
        srv.kill()
        srv.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    args = ap.parse_args()
    lab = Lab(LAB_DIR)
    if lab.dir.exists():
        lab.down()
    # The lab's own config names each bridge's model (NAT: 203.0.113.254, guests on 10.0.2.0/24).
    bridges = [
        BridgeArg("xenbr0", "peth0"),
        BridgeArg("xenbr1", "peth1", "routed"),
        BridgeArg("xennat", "peth2", "nat"),
    ]
    lab.up(bridges, controller=True)
    linux, linux_nat = LinuxRoute(), LinuxNat()
    samples: dict[str, list[float]] = {}
    # (guest ns, other guest ns, other guest's address, LAN ns, LAN address) per model
    paths = {
        "routed": ("xvl-r1", "xvl-r2", "198.51.100.22", "xvl-lan-xenbr1", "198.51.100.1"),
        "bridged": ("xvl-b1", "xvl-b2", "192.0.2.12", "xvl-lan", "192.0.2.1"),
        "linux-route": ("xbr-g1", "xbr-g2", LinuxRoute.GUESTS["xbr-g2"], "xbr-lan", LinuxRoute.LAN_IP),
        "nat": ("xvl-n1", "xvl-n2", "10.0.2.22", "xvl-lan-xennat", "203.0.113.1"),
        "linux-nat": ("xbn-g1", "xbn-g2", LinuxNat.GUESTS["xbn-g2"], "xbn-lan", LinuxNat.LAN_IP),
    }
    try:
        for name, domid, spec in (
            ("b1", 11, "mac=00:16:3e:00:0b:01,ip=192.0.2.11"),
            ("b2", 12, "mac=00:16:3e:00:0c:01,ip=192.0.2.12"),
            ("r1", 21, "mac=00:16:3e:00:15:01,bridge=xenbr1,ip=198.51.100.21"),
            ("r2", 22, "mac=00:16:3e:00:16:01,bridge=xenbr1,ip=198.51.100.22"),
            ("n1", 31, "mac=00:16:3e:00:1f:01,bridge=xennat,ip=10.0.2.21"),
            ("n2", 32, "mac=00:16:3e:00:20:01,bridge=xennat,ip=10.0.2.22"),
        ):
            add_domain(lab, name, domid, [spec])
        for g, _, other, _lan_ns, lan_ip in paths.values():
            wait_for(lambda g=g, a=other: " 0% packet loss" in ns(g, "ping", "-c1", "-W1", a, check=False), 30, 0.2)
            ns(g, "ping", "-c", "3", "-i", "0.2", "-W", "1", lan_ip, check=False)  # next hops learned
        order = list(paths)
        for r in range(args.repeats):
            for model in order if r % 2 == 0 else order[::-1]:
                g, g2, other, lan_ns, lan_ip = paths[model]
                samples.setdefault(f"{model} guest-LAN Gbit/s", []).append(iperf(lan_ns, g, lan_ip, args.seconds))
                samples.setdefault(f"{model} guest-guest Gbit/s", []).append(iperf(g2, g, other, args.seconds))
                samples.setdefault(f"{model} guest-LAN rtt ms", []).append(rtt_ms(g, lan_ip))
                samples.setdefault(f"{model} guest-guest rtt ms", []).append(rtt_ms(g, other))
                samples.setdefault(f"{model} guest-LAN conn/s", []).append(connection_rate(lan_ns, g, lan_ip, 2))
            print(f"  repeat {r + 1}/{args.repeats} done", flush=True)
        ttl = re.search(r"ttl=(\d+)", ns("xvl-lan-xenbr1", "ping", "-c1", "198.51.100.21"))
        log = (Path(LAB_DIR) / "controller.log").read_text()
        packet_ins = log.count("packet-in")
        for name in ("b1", "b2", "r1", "r2", "n1", "n2"):
            del_domain(lab, name)
    finally:
        linux.close()
        linux_nat.close()
        lab.stop_controller()
        lab.down()
    stats = {k: summary(v) for k, v in samples.items()}
    pairs = (("routed", "bridged"), ("routed", "linux-route"), ("nat", "bridged"), ("nat", "linux-nat"))
    ratios = {
        f"{model} / {base} {path}": stats[f"{model} {path} Gbit/s"]["median"] / stats[f"{base} {path} Gbit/s"]["median"]
        for model, base in pairs
        for path in ("guest-LAN", "guest-guest")
    }
    conn_ratios = {
        f"{model} / {base}": stats[f"{model} guest-LAN conn/s"]["median"] / stats[f"{base} guest-LAN conn/s"]["median"]
        for model, base in pairs
    }
    results = {
        "stats": stats,
        "throughput_ratios": ratios,
        "connection_rate_ratios": conn_ratios,
        "lan_sees_ttl": int(ttl.group(1)) if ttl else None,
        "controller_packet_ins": packet_ins,
    }
    out = save("models", results, ["models.py", *sys.argv[1:]])
    for k, s in stats.items():
        print(f"  {k:36} {s['min']:.3f} / {s['median']:.3f} / {s['max']:.3f}")
    for k, v in {**ratios, **conn_ratios}.items():
        print(f"  {k}: {v:.2f}")
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
