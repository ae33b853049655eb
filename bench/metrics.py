"""What a Prometheus scrape of the controller costs the switch, at 100 to 4000 vifs.

Per size, on a dummy-datapath bridge (bench/scale.py's host: XenStore backends as libxl
writes them, ports as the hook adds them), with the controller serving /metrics:
- a quiet scrape (nothing dropped since the last): its wall time, the OpenFlow requests it
  sent (the controller's own xvif_metrics_scrape_requests), ovs-vswitchd's CPU time
  during it (utime+stime from /proc), the response's size and series (each scrape more
  than the controller's 2 s answer cache and 10 s dump interval after the last);
- a scrape after a guest was caught spoofing (a frame injected on its port with
  netdev-dummy/receive): the drop counters moved, so they are dumped once;
- baselines in the same run: one aggregate request (`ovs-ofctl dump-aggregate` of our
  cookie), the request a quiet scrape is meant to cost "a few of"; and the dump a scrape
  would make without the aggregate first (`ovs-ofctl dump-flows` of the drop flows).

Figures are min/median/max over the repeats. Usage (root):
.venv/bin/python bench/metrics.py [--sizes 100 1000 4000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import urllib.request

from common import ROOT, fresh_lab, ofctl, save, summary, wait_for
from scale import populate

from xvif_ovs.controller.counters import DUMP_INTERVAL
from xvif_ovs.controller.metrics import MIN_INTERVAL
from xvif_ovs.lab.host import METRICS_PORT, Lab
from xvif_ovs.pipeline.build import P_DROP
from xvif_ovs.pipeline.flow import COOKIE_MAGIC, COOKIE_MASK

LAB_DIR = "/run/xvif-ovs/bench-metrics"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def vswitchd_pid(lab: Lab) -> int:
    return int((lab.dir / "ovs-vswitchd.pid").read_text())


def scrape() -> tuple[float, str]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=120) as r:
        text = r.read().decode()
    return time.perf_counter() - t0, text


def value(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def measured(lab: Lab, what) -> tuple[float, float]:  # noqa: ANN001
    """(wall seconds, ovs-vswitchd CPU seconds) of ``what()``."""
    pid = vswitchd_pid(lab)
    c0, t0 = cpu_s(pid), time.perf_counter()
    what()
    return time.perf_counter() - t0, cpu_s(pid) - c0


def spoof(lab: Lab, k: int) -> None:
    """A frame from another source MAC on vif100.0's port: port security drops it."""
    frame = (
        f"in_port(1000),eth(src=02:00:00:00:{k >> 8 & 0xFF:02x}:{k & 0xFF:02x},dst=ff:ff:ff:ff:ff:ff),eth_type(0x0800)"
    )
    subprocess.run(
        ["ovs-appctl", "-t", str(lab.dir / "ovs-vswitchd.ctl"), "netdev-dummy/receive", "vif100.0", frame],
        check=True,
        capture_output=True,
        env={**os.environ, **lab.env()},
    )


def run_size(n: int, repeats: int) -> dict:
    lab = fresh_lab(LAB_DIR, None, dummy=True)
    try:
        populate(lab, n)
        log = lab.dir / "controller.log"
        lab.start_controller()
        wait_for(lambda: log.exists() and re.search(r"xenbr0: \+\d+", log.read_text()) is not None, 900, poll=0.05)
        wait_for(lambda: value(scrape()[1], 'xvif_switch_connected{bridge="xenbr0"}') == 1.0, 60, poll=0.2)
        scrape()  # the first after the fill dumps the drop flows once
        quiet: dict[str, list[float]] = {"wall": [], "cpu": [], "requests": [], "bytes": [], "series": []}
        moved: dict[str, list[float]] = {"wall": [], "cpu": [], "requests": []}
        agg: dict[str, list[float]] = {"wall": [], "cpu": []}
        dump: dict[str, list[float]] = {"wall": [], "cpu": []}
        cookie = f"cookie={COOKIE_MAGIC | P_DROP << 40:#x}/{COOKIE_MASK | 0xFF << 40:#x}"
        for k in range(repeats):
            # Past the controller's answer cache (MIN_INTERVAL) and its dump interval, so
            # each scrape below is read from the switch, and the one after a drop dumps.
            time.sleep(max(MIN_INTERVAL, DUMP_INTERVAL) + 0.2)
            got: list[str] = []
            w, c = measured(lab, lambda got=got: got.append(scrape()[1]))
            quiet["wall"].append(w)
            quiet["cpu"].append(c)
            quiet["requests"].append(value(got[0], "xvif_metrics_scrape_requests"))
            quiet["bytes"].append(len(got[0]))
            quiet["series"].append(sum(1 for ln in got[0].splitlines() if ln and not ln.startswith("#")))
            spoof(lab, k)
            time.sleep(MIN_INTERVAL + 0.2)
            got = []
            w, c = measured(lab, lambda got=got: got.append(scrape()[1]))
            moved["wall"].append(w)
            moved["cpu"].append(c)
            moved["requests"].append(value(got[0], "xvif_metrics_scrape_requests"))
            w, c = measured(lab, lambda: ofctl(lab.dir, "dump-aggregate", f"cookie={COOKIE_MAGIC:#x}/{COOKIE_MASK:#x}"))
            agg["wall"].append(w)
            agg["cpu"].append(c)
            w, c = measured(lab, lambda: ofctl(lab.dir, "dump-flows", cookie))
            dump["wall"].append(w)
            dump["cpu"].append(c)
        row = {
            "vifs": n,
            "quiet_scrape": {k: summary(v) for k, v in quiet.items()},
            "scrape_after_drop": {k: summary(v) for k, v in moved.items()},
            "one_aggregate_request": {k: summary(v) for k, v in agg.items()},
            "drop_flow_dump": {k: summary(v) for k, v in dump.items()},
        }
        q, a = row["quiet_scrape"]["cpu"]["median"], row["one_aggregate_request"]["cpu"]["median"]
        row["quiet_cpu_in_aggregates"] = q / a if a else None
        print(
            f"  {n:5d} vifs: quiet scrape {row['quiet_scrape']['wall']['median'] * 1000:.0f} ms, "
            f"{row['quiet_scrape']['requests']['median']:.0f} requests, vswitchd CPU {q * 1000:.0f} ms "
            f"(one aggregate {a * 1000:.0f} ms); after a drop {row['scrape_after_drop']['wall']['median'] * 1000:.0f} ms "
            f"({row['scrape_after_drop']['requests']['median']:.0f} requests); "
            f"{row['quiet_scrape']['series']['median']:.0f} series",
            flush=True,
        )
        return row
    finally:
        lab.down()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 4000])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = [run_size(n, args.repeats) for n in args.sizes]
    out = save("metrics", rows, ["metrics.py", *sys.argv[1:]])
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
