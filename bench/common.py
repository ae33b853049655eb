"""Shared pieces of the benchmarks: statistics, result files, the lab's tools."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))


def summary(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]
    return {"min": xs[0], "median": statistics.median(xs), "p99": p99, "max": xs[-1], "n": len(xs)}


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    ovs = subprocess.run(["ovs-vswitchd", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return (
        f"{os.cpu_count()} cores, {mem:.0f} GiB, Linux {platform.release()}, Python {platform.python_version()}, {ovs}"
    )


def save(name: str, results: object, argv: list[str]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    meta = {"command": "python bench/" + " ".join(argv), "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    return out


def ofctl(lab_dir: Path, *args: str, bridge: str = "xenbr0", timeout: float = 600) -> str:
    cmd = ["ovs-ofctl", "-O", "OpenFlow13", args[0], f"unix:{lab_dir}/{bridge}.mgmt", *args[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=timeout).stdout


def flow_count(lab_dir: Path, bridge: str = "xenbr0") -> int:
    out = ofctl(lab_dir, "dump-aggregate", bridge=bridge)
    m = re.search(r"flow_count=(\d+)", out)
    return int(m.group(1)) if m else 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_for(cond, timeout: float, poll: float = 0.005) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError
        time.sleep(poll)
    return time.perf_counter() - t0


def wait_idle(lab_dir: Path, bridge: str = "xenbr0", quick: float = 0.05, timeout: float = 60) -> float:
    """Until ovs-vswitchd answers two OpenFlow round trips in a row within ``quick``:
    on the userspace datapath with many ports each reconfigure (after any port or link
    change) holds its main loop for a third of a second, so a trial that starts while
    the last one's clean-up is still being reconfigured would pay for it."""
    t0 = time.perf_counter()
    fast = 0
    while fast < 2:
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"ovs-vswitchd still busy after {timeout:.0f} s")
        t = time.perf_counter()
        ofctl(lab_dir, "dump-ports-desc", "LOCAL", bridge=bridge)
        fast = fast + 1 if time.perf_counter() - t < quick else 0
    return time.perf_counter() - t0


def fresh_lab(path: str | Path, uplink: str | None = "peth0", **up: object):  # noqa: ANN201
    """The lab a benchmark runs on, at ``path``: one left by an interrupted run is taken
    down first. One bridge, xenbr0, with ``uplink`` (None: internal)."""
    from xvif_ovs.lab.host import BridgeArg, Lab

    lab = Lab(str(path))
    if lab.dir.exists():
        lab.down()
    lab.up([BridgeArg("xenbr0", uplink)], **up)
    return lab
