"""Dataplane: TCP throughput (iperf3) and round-trip latency (ping), guest-guest and
guest-LAN, through the controller's pipeline versus the same OVS with NORMAL versus a
Linux bridge versus a bare veth pair; then datapath flow (megaflow) counts and upcalls
with 2, 16 and 64 guests talking, pipeline versus NORMAL.

All runs alternate in one session; figures are min/median/max over the repeats and
ratios of medians. Usage (root): .venv/bin/python bench/dataplane.py [--repeats 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time

from common import ROOT, fresh_lab, save, summary, wait_for

from xvif_ovs.lab import daemons
from xvif_ovs.lab.domain import add_domain
from xvif_ovs.lab.host import Lab


def sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120).stdout


def ns(name: str, *cmd: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", name, *cmd, check=check)


def iperf(server_ns: str, client_ns: str, addr: str, seconds: int) -> float:
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        out = json.loads(ns(client_ns, "iperf3", "-c", addr, "-t", str(seconds), "-J"))
        return out["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        srv.wait(30)


def rtt_ms(client_ns: str, addr: str) -> float:
    out = ns(client_ns, "ping", "-q", "-c", "300", "-i", "0.002", addr)
    return float(re.search(r"= [\d.]+/([\d.]+)/", out).group(1))


class Baselines:
    """A Linux bridge and a bare veth pair, in namespaces of their own."""

    def __init__(self) -> None:
        sh("ip", "link", "add", "xbl-br", "type", "bridge")
        sh("ip", "link", "set", "xbl-br", "up")
        for i, addr in ((1, "198.18.50.1"), (2, "198.18.50.2"), (3, "198.18.50.3")):
            n = f"xbl-{i}"
            sh("ip", "netns", "add", n)
            sh("ip", "link", "add", f"xbl-p{i}", "type", "veth", "peer", "name", "eth0", "netns", n)
            sh("ip", "link", "set", f"xbl-p{i}", "master", "xbl-br", "up")
            ns(n, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
            ns(n, "ip", "link", "set", "eth0", "up")
            ns(n, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "add", "xbv-1")
        sh("ip", "netns", "add", "xbv-2")
        sh("ip", "link", "add", "eth0", "netns", "xbv-1", "type", "veth", "peer", "name", "eth0", "netns", "xbv-2")
        for i in (1, 2):
            ns(f"xbv-{i}", "ip", "addr", "add", f"198.18.51.{i}/24", "dev", "eth0")
            ns(f"xbv-{i}", "ip", "link", "set", "eth0", "up")
            ns(f"xbv-{i}", "ip", "link", "set", "lo", "up")

    def close(self) -> None:
        for n in ("xbl-1", "xbl-2", "xbl-3", "xbv-1", "xbv-2"):
            sh("ip", "netns", "del", n, check=False)
        sh("ip", "link", "del", "xbl-br", check=False)


def set_mode(lab: Lab, mode: str) -> None:
    """pipeline: the controller programs the bridge; normal: OVS's NORMAL action, no controller."""
    if mode == "pipeline":
        lab.start_controller()
        dump = ["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", f"unix:{lab.dir}/xenbr0.mgmt"]
        wait_for(lambda: "reg5" in sh(*dump), 30, 0.05)
        return
    lab.stop_controller()
    daemons.vsctl(lab.dir, "del-controller", "xenbr0", "--", "set", "bridge", "xenbr0", "fail_mode=standalone")
    sh("ovs-ofctl", "-O", "OpenFlow13", "del-flows", f"unix:{lab.dir}/xenbr0.mgmt")
    sh("ovs-ofctl", "-O", "OpenFlow13", "del-groups", f"unix:{lab.dir}/xenbr0.mgmt")
    sh("ovs-ofctl", "-O", "OpenFlow13", "add-flow", f"unix:{lab.dir}/xenbr0.mgmt", "priority=0,actions=NORMAL")


def dpstats(lab: Lab) -> tuple[int, int]:
    """(datapath flows, upcalls so far) of the userspace datapath."""
    ctl = str(lab.dir / "ovs-vswitchd.ctl")
    flows = len([ln for ln in sh("ovs-appctl", "-t", ctl, "dpctl/dump-flows").splitlines() if ln.strip()])
    m = re.search(r"missed:(\d+)", sh("ovs-appctl", "-t", ctl, "dpctl/show"))
    return flows, int(m.group(1)) if m else 0


def chatter(lab: Lab, n: int, mode: str) -> dict:
    """n guests, each pinging the next: megaflows and upcalls."""
    guests = [f"c{i}" for i in range(n)]
    for i, g in enumerate(guests):
        add_domain(lab, g, 200 + i, [f"mac=00:16:3e:00:c8:{i:02x},ip=192.0.2.{100 + i}"])
    set_mode(lab, mode)
    time.sleep(0.5)
    _, up0 = dpstats(lab)
    procs = [
        subprocess.Popen(
            ["ip", "netns", "exec", f"xvl-{g}", "ping", "-q", "-c", "30", "-i", "0.05", f"192.0.2.{100 + (i + 1) % n}"],
            stdout=subprocess.DEVNULL,
        )
        for i, g in enumerate(guests)
    ]
    for p in procs:
        p.wait(60)
    flows, up1 = dpstats(lab)
    from xvif_ovs.lab.domain import del_domain

    for g in guests:
        del_domain(lab, g)
    return {"guests": n, "mode": mode, "megaflows": flows, "upcalls": up1 - up0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--chatter", type=int, nargs="+", default=[2, 16, 64])
    args = ap.parse_args()
    lab = fresh_lab("/run/xvif-ovs/bench-dataplane")
    base = Baselines()
    samples: dict[str, list[float]] = {}

    def add(key: str, v: float) -> None:
        samples.setdefault(key, []).append(v)

    try:
        add_domain(lab, "g1", 11, ["mac=00:16:3e:00:0b:01,ip=192.0.2.11"])
        add_domain(lab, "g2", 12, ["mac=00:16:3e:00:0c:01,ip=192.0.2.12"])
        for r in range(args.repeats):
            for mode in ("pipeline", "normal") if r % 2 == 0 else ("normal", "pipeline"):
                set_mode(lab, mode)
                ns("xvl-g1", "ping", "-c", "2", "-W", "1", "192.0.2.12", check=False)  # warm ARP and learning
                add(f"{mode} guest-guest Gbit/s", iperf("xvl-g2", "xvl-g1", "192.0.2.12", args.seconds))
                add(f"{mode} guest-LAN Gbit/s", iperf("xvl-lan", "xvl-g1", "192.0.2.1", args.seconds))
                add(f"{mode} guest-guest rtt ms", rtt_ms("xvl-g1", "192.0.2.12"))
                add(f"{mode} guest-LAN rtt ms", rtt_ms("xvl-g1", "192.0.2.1"))
            add("linux-bridge guest-guest Gbit/s", iperf("xbl-2", "xbl-1", "198.18.50.2", args.seconds))
            add("linux-bridge guest-guest rtt ms", rtt_ms("xbl-1", "198.18.50.2"))
            add("veth-pair Gbit/s", iperf("xbv-2", "xbv-1", "198.18.51.2", args.seconds))
            add("veth-pair rtt ms", rtt_ms("xbv-1", "198.18.51.2"))
            print(f"  repeat {r + 1}/{args.repeats} done", flush=True)
        from xvif_ovs.lab.domain import del_domain

        del_domain(lab, "g1")
        del_domain(lab, "g2")
        chat = [chatter(lab, n, mode) for n in args.chatter for mode in ("pipeline", "normal")]
    finally:
        base.close()
        lab.stop_controller()
        lab.down()
    stats = {k: summary(v) for k, v in samples.items()}
    ratios = {
        path: stats[f"pipeline {path} Gbit/s"]["median"] / stats[f"normal {path} Gbit/s"]["median"]
        for path in ("guest-guest", "guest-LAN")
    }
    results = {"stats": stats, "pipeline_over_normal": ratios, "chatter": chat}
    out = save("dataplane", results, ["dataplane.py", *sys.argv[1:]])
    for k, s in stats.items():
        print(f"  {k:36} {s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f}")
    print(f"  pipeline/NORMAL throughput: {ratios}")
    for c in chat:
        print(f"  {c}")
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
