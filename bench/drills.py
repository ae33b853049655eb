"""Fault drills: the controller killed (-9) and restarted, ovs-vswitchd restarted, the
XenStore server restarted, each during a 5 ms ping flood between two guests while a
third guest runs iperf3 to the LAN; and the same load with no fault, as the baseline
(on this 2-core machine the iperf3 load alone costs the flood some replies). Reports
pings lost and the longest gap between replies (time to recovery).

Usage (root): .venv/bin/python bench/drills.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, fresh_lab, save, summary, wait_for

from xvif_ovs.lab import daemons
from xvif_ovs.lab.domain import add_domain
from xvif_ovs.lab.host import Lab


def flood_analysis(out: str) -> tuple[int, int, float]:
    """(sent, lost, longest gap in s between consecutive replies) from `ping -D` output."""
    stamps = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\].*icmp_seq=", out, re.M)]
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    sent, got = int(m.group(1)), int(m.group(2))
    gap = max((b - a for a, b in zip(stamps, stamps[1:], strict=False)), default=0.0)
    return sent, sent - got, gap


def steal_s() -> float:
    """CPU time the hypervisor gave to others (all CPUs): a stall of the whole machine
    shows here, and not in anything of ours."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def drill(lab: Lab, what: str) -> dict:
    vlog = lab.dir / "ovs-vswitchd.log"
    vpos, steal0 = vlog.stat().st_size, steal_s()
    flood = subprocess.Popen(
        ["ip", "netns", "exec", "xvl-g1", "ping", "-D", "-c", "1200", "-i", "0.005", "-W", "1", "192.0.2.12"],
        stdout=subprocess.PIPE,
        text=True,
    )
    srv = subprocess.Popen(["ip", "netns", "exec", "xvl-lan", "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    perf = subprocess.Popen(
        ["ip", "netns", "exec", "xvl-g1", "iperf3", "-c", "192.0.2.1", "-t", "6", "-J"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    t0 = time.perf_counter()
    if what == "controller kill -9":
        lab.stop_controller(kill=True)
        lab.start_controller()
    elif what == "ovs-vswitchd restart":
        daemons.restart_vswitchd(lab.dir)
    elif what == "XenStore server restart":
        daemons.restart_xenstored(lab.dir)
    # "no fault": the same load and nothing else, the baseline the others compare with
    event = time.perf_counter() - t0
    out, _ = flood.communicate(timeout=120)
    perf_out, _ = perf.communicate(timeout=120)
    srv.wait(30)
    sent, lost, gap = flood_analysis(out)
    # ovs-vswitchd's main thread also polls the guests' ports here: if it stalled, it says so.
    stalls = re.findall(r"Unreasonably long \d+ms poll interval", vlog.read_text()[vpos:])
    try:
        gbps = json.loads(perf_out)["end"]["sum_received"]["bits_per_second"] / 1e9
    except (ValueError, KeyError):
        gbps = 0.0  # the TCP connection did not survive
    return {
        "drill": what,
        "ping_sent": sent,
        "ping_lost": lost,
        "longest_gap_s": gap,
        "iperf_gbps": gbps,
        "event_s": event,
        "vswitchd_stalls": stalls,
        "steal_s": steal_s() - steal0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    lab = fresh_lab("/run/xvif-ovs/bench-drills", controller=True)
    rows = []
    try:
        add_domain(lab, "g1", 11, ["mac=00:16:3e:00:0b:01,ip=192.0.2.11"])
        add_domain(lab, "g2", 12, ["mac=00:16:3e:00:0c:01,ip=192.0.2.12"])
        add_domain(lab, "g3", 13, ["mac=00:16:3e:00:0d:01,ip=192.0.2.13"])

        def ok():
            return (
                subprocess.run(
                    ["ip", "netns", "exec", "xvl-g1", "ping", "-c1", "-W1", "192.0.2.12"], capture_output=True
                ).returncode
                == 0
            )  # noqa: E731

        wait_for(ok, 30, 0.2)
        for _r in range(args.repeats):
            for what in ("no fault", "controller kill -9", "ovs-vswitchd restart", "XenStore server restart"):
                wait_for(ok, 60, 0.2)
                row = drill(lab, what)
                rows.append(row)
                print(
                    f"  {what:24} lost {row['ping_lost']:4d}/{row['ping_sent']} pings, longest gap {row['longest_gap_s'] * 1000:6.0f} ms, "
                    f"iperf {row['iperf_gbps']:.2f} Gbit/s",
                    flush=True,
                )
    finally:
        lab.down()
    by = {}
    for what in {r["drill"] for r in rows}:
        rs = [r for r in rows if r["drill"] == what]
        by[what] = {
            "ping_lost": summary([r["ping_lost"] for r in rs]),
            "longest_gap_s": summary([r["longest_gap_s"] for r in rs]),
            "iperf_gbps": summary([r["iperf_gbps"] for r in rs]),
        }
    out = save("drills", {"runs": rows, "summary": by}, ["drills.py", *sys.argv[1:]])
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
