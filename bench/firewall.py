"""The firewall's cost: one guest's TCP throughput (iperf3) and new TCP connections per
second, both ways (the guest's own connections to the LAN, and the LAN's to the guest),
behind 0, 10 and 100 rules, against the open pipeline (no firewall) in the same run;
then the datapath flows (megaflows) and upcalls a flood of new connections makes.

"N rules": the network closed, N-1 rules that do not match the traffic (each its own
port, port range or remote network, in and out, tcp and udp), and last the rule that
allows the LAN's connections to the guest: every connection is tried against all of
them (first match wins). "0 rules": the network closed, the LAN's connections to the
guest not measured (nothing allows them), the guest's own through the defaults.

Runs alternate (forward, then backward...); figures are min/median/max over the repeats
and ratios of medians. Usage (root): .venv/bin/python bench/firewall.py [--repeats 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from common import ROOT, fresh_lab, ofctl, save, summary, wait_for
from dataplane import dpstats, iperf, ns
from models import connection_rate

from xvif_ovs.lab.domain import add_domain, del_domain

LAB_DIR = "/run/xvif-ovs/bench-firewall"
GUEST, GUEST_IP, LAN_IP = "fw", "192.0.2.41", "192.0.2.1"
CONFIGS = ("open", "0 rules", "10 rules", "100 rules")
ALLOW = """
[[rule]]
guest = "fw"
direction = "in"
action = "allow"
protocol = "tcp"
ports = ["5201", "7100-7115"]
remote = "192.0.2.0/24"
comment = "iperf3 and the connection test, from the LAN"
"""


def rules_text(n: int) -> str:
    """The network closed and ``n`` rules, the last one the allow the traffic needs."""
    out = ['[policies]\nxenbr0 = "closed"\n']
    for i in range(max(n - 1, 0)):
        kind = i % 4
        proto = "udp" if i % 3 == 0 else "tcp"
        ports = f'"{20000 + i * 10}-{20000 + i * 10 + 5}"' if kind == 1 else str(10000 + i)
        remote = f'"198.51.{i // 250}.{i % 250}/32"' if kind == 2 else '"203.0.113.0/24"'
        direction = "in" if i % 2 else "out"
        out.append(
            f'[[rule]]\nall = true\ndirection = "{direction}"\naction = "deny"\nprotocol = "{proto}"\n'
            f"ports = {ports}\nremote = {remote}\n"
        )
    if n:
        out.append(ALLOW)
    return "\n".join(out)


def apply(lab_dir: Path, config: str) -> None:
    """Write the rules (an editor's rename) and wait until the switch has them."""
    rules = lab_dir / "rules.d" / "bench.toml"
    n = 0 if config == "open" else int(config.split()[0])
    if config == "open":
        rules.unlink(missing_ok=True)
    else:
        tmp = rules.with_name(".bench.tmp")
        tmp.write_text(rules_text(n))
        tmp.rename(rules)

    def ready() -> bool:
        dump = ofctl(lab_dir, "dump-flows", "table=11")
        if config == "open":
            return "priority" not in dump
        prios = {int(p) for p in re.findall(r"priority=(\d+)", dump) if 9000 < int(p) <= 10000}
        # (a connection open while the firewall comes on would be cut: only a SYN opens one)
        return "priority=30000" in dump and len(prios) == n

    try:
        wait_for(ready, 60, 0.05)
    except TimeoutError:
        log = (lab_dir / "controller.log").read_text().splitlines()[-8:]
        raise TimeoutError(f"the switch never got the rules of {config!r}:\n" + "\n".join(log)) from None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    args = ap.parse_args()
    lab = fresh_lab(LAB_DIR)
    (lab.dir / "rules.d").mkdir(mode=0o755, exist_ok=True)
    lab.start_controller()
    samples: dict[str, list[float]] = {}
    flood: dict[str, dict] = {}

    def add(key: str, v: float) -> None:
        samples.setdefault(key, []).append(v)

    try:
        add_domain(lab, GUEST, 41, [f"mac=00:16:3e:00:29:01,ip={GUEST_IP}"])
        g = f"xvl-{GUEST}"
        wait_for(lambda: " 0% packet loss" in ns(g, "ping", "-c1", "-W1", LAN_IP, check=False), 30, 0.2)
        for r in range(args.repeats):
            for config in CONFIGS if r % 2 == 0 else CONFIGS[::-1]:
                apply(lab.dir, config)
                add(f"{config} guest-LAN Gbit/s", iperf("xvl-lan", g, LAN_IP, args.seconds))
                add(f"{config} guest-LAN conn/s", connection_rate("xvl-lan", g, LAN_IP, 2))
                if config != "0 rules":  # nothing allows the LAN in then
                    add(f"{config} LAN-guest Gbit/s", iperf(g, "xvl-lan", GUEST_IP, args.seconds))
                    add(f"{config} LAN-guest conn/s", connection_rate(g, "xvl-lan", GUEST_IP, 2))
            print(f"  repeat {r + 1}/{args.repeats} done", flush=True)
        for config in ("open", "100 rules"):  # a flood of new connections: what the datapath holds
            apply(lab.dir, config)
            subprocess.run(["ovs-appctl", "-t", str(lab.dir / "ovs-vswitchd.ctl"), "dpctl/del-flows"], check=False)
            flows0, up0 = dpstats(lab)
            rate = connection_rate(g, "xvl-lan", GUEST_IP, 3)
            flows1, up1 = dpstats(lab)
            conns = rate * 3
            flood[config] = {
                "connections": round(conns),
                "megaflows_after": flows1,
                "upcalls": up1 - up0,
                "upcalls_per_connection": (up1 - up0) / conns if conns else None,
            }
        log = (lab.dir / "controller.log").read_text()
        packet_ins = log.count("unexpected packet-in")
        del_domain(lab, GUEST)
    finally:
        lab.stop_controller()
        lab.down()
    stats = {k: summary(v) for k, v in samples.items()}
    ratios = {}
    for config in CONFIGS[1:]:
        for what in ("guest-LAN Gbit/s", "guest-LAN conn/s", "LAN-guest Gbit/s", "LAN-guest conn/s"):
            if f"{config} {what}" in stats:
                ratios[f"{config} / open {what}"] = (
                    stats[f"{config} {what}"]["median"] / stats[f"open {what}"]["median"]
                )
    results = {"stats": stats, "ratios": ratios, "flood": flood, "controller_packet_ins": packet_ins}
    out = save("firewall", results, ["firewall.py", *sys.argv[1:]])
    for k, s in stats.items():
        print(f"  {k:32} {s['min']:.3f} / {s['median']:.3f} / {s['max']:.3f}")
    for k, v in ratios.items():
        print(f"  {k}: {v:.2f}")
    print(f"  flood: {flood}")
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
