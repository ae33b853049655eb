"""Routed guests (Xen's vif-route model): TCP throughput (iperf3) and round-trip latency
(ping), guest-LAN and guest-guest, three ways in one session:

- routed: xenbr1 in the controller's routed mode (proxy ARP and routing in flows);
- bridged: the same guests' bridged counterparts on xenbr0 through the controller's pipeline;
- linux-route: what Xen's vif-route and network-route set up, built the same way in
  namespaces of its own: dom0 forwards, proxy-ARPs on the uplink and on each vif, and
  has a host route to each guest's address through its vif.

Runs alternate (ABC, then CBA...); figures are min/median/max over the repeats and
ratios of medians. Usage (root): .venv/bin/python bench/routed.py [--repeats 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from common import ROOT, save, summary, wait_for
from dataplane import iperf, ns, rtt_ms, sh

from xvif_ovs.lab.domain import add_domain, del_domain
from xvif_ovs.lab.host import BridgeArg, Lab

LAB_DIR = "/run/xvif-ovs/bench-routed"


class LinuxRoute:
    """vif-route by hand: namespace xbr-dom0 (the host), xbr-lan behind its uplink, and
    guests xbr-g1, xbr-g2 on vif devices with dom0's LAN address, proxy ARP and a /32
    route each (tools/hotplug/Linux/vif-route and network-route in Xen's tree)."""

    DOM0, LAN = "xbr-dom0", "xbr-lan"
    NET, DOM0_IP, LAN_IP = "198.18.60", "198.18.60.254", "198.18.60.1"
    GUESTS = {"xbr-g1": "198.18.60.21", "xbr-g2": "198.18.60.22"}

    def __init__(self) -> None:
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
            # vif-route: the vif gets dom0's address, proxy ARP, and a route to the guest.
            ns(d, "ip", "addr", "add", f"{self.DOM0_IP}/32", "dev", vif)
            ns(d, "ip", "link", "set", vif, "up")
            ns(d, "sysctl", "-qw", f"net.ipv4.conf.{vif}.proxy_arp=1")
            ns(d, "ip", "route", "add", f"{ip}/32", "dev", vif, "src", self.DOM0_IP)

    def close(self) -> None:
        for n in (self.DOM0, self.LAN, *self.GUESTS):
            sh("ip", "netns", "del", n, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    args = ap.parse_args()
    lab = Lab(LAB_DIR)
    if lab.dir.exists():
        lab.down()
    lab.up([BridgeArg("xenbr0", "peth0"), BridgeArg("xenbr1", "peth1", "routed")], controller=True)
    linux = LinuxRoute()
    samples: dict[str, list[float]] = {}
    # (guest ns, other guest ns, other guest's address, LAN ns, LAN address) per model
    paths = {
        "routed": ("xvl-r1", "xvl-r2", "198.51.100.22", "xvl-lan-xenbr1", "198.51.100.1"),
        "bridged": ("xvl-b1", "xvl-b2", "192.0.2.12", "xvl-lan", "192.0.2.1"),
        "linux-route": ("xbr-g1", "xbr-g2", LinuxRoute.GUESTS["xbr-g2"], LinuxRoute.LAN, LinuxRoute.LAN_IP),
    }
    try:
        for name, domid, spec in (
            ("b1", 11, "mac=00:16:3e:00:0b:01,ip=192.0.2.11"),
            ("b2", 12, "mac=00:16:3e:00:0c:01,ip=192.0.2.12"),
            ("r1", 21, "mac=00:16:3e:00:15:01,bridge=xenbr1,ip=198.51.100.21"),
            ("r2", 22, "mac=00:16:3e:00:16:01,bridge=xenbr1,ip=198.51.100.22"),
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
            print(f"  repeat {r + 1}/{args.repeats} done", flush=True)
        ttl = re.search(r"ttl=(\d+)", ns("xvl-lan-xenbr1", "ping", "-c1", "198.51.100.21"))
        log = (Path(LAB_DIR) / "controller.log").read_text()
        packet_ins = log.count("packet-in")
        for name in ("b1", "b2", "r1", "r2"):
            del_domain(lab, name)
    finally:
        linux.close()
        lab.stop_controller()
        lab.down()
    stats = {k: summary(v) for k, v in samples.items()}
    ratios = {
        f"{model} / {base} {path}": stats[f"{model} {path} Gbit/s"]["median"] / stats[f"{base} {path} Gbit/s"]["median"]
        for model, base in (("routed", "bridged"), ("routed", "linux-route"))
        for path in ("guest-LAN", "guest-guest")
    }
    results = {
        "stats": stats,
        "throughput_ratios": ratios,
        "lan_sees_ttl": int(ttl.group(1)) if ttl else None,
        "controller_packet_ins": packet_ins,
    }
    out = save("routed", results, ["routed.py", *sys.argv[1:]])
    for k, s in stats.items():
        print(f"  {k:36} {s['min']:.3f} / {s['median']:.3f} / {s['max']:.3f}")
    for k, v in ratios.items():
        print(f"  {k}: {v:.2f}")
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
