"""Hotplug wall time: xvif-ovs's hook against Xen's vif-openvswitch, on the same lab.

What libxl waits for is the script's exit; this times exactly that (the script run as
libxl runs it: `SCRIPT online` with vif= and XENBUS_PATH=), for one new vif while N
vifs are already on the bridge. Both scripts run in the same lab, alternately, so the
machine's noise hits both alike; figures are reported as min/median/max and as the
ratio of medians.

Usage (as root, from the repository): .venv/bin/python bench/hotplug.py [--sizes 0 100 1000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pyxs import Client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xvif_ovs.lab.daemons import vsctl  # noqa: E402
from xvif_ovs.lab.host import BridgeArg, Lab  # noqa: E402

HOOK = ROOT / "deploy" / "vif-xvif-ovs"
VIF_OPENVSWITCH = Path("/etc/xen/scripts/vif-openvswitch")
BENCH_DOMID = 9000


def populate(lab: Lab, have: int, want: int) -> None:
    """Grow the bridge to ``want`` filler vifs: real veth ports, both ends up as a running
    guest's are (a port whose link is down costs ovs-vswitchd almost nothing to poll)."""
    if want <= have:
        return
    names = [f"vif{1000 + i}.0" for i in range(have, want)]
    for n in names:
        subprocess.run(["ip", "link", "add", n, "type", "veth", "peer", "name", f"bf{n[3:-2]}"], check=True)
        subprocess.run(["ip", "link", "set", n, "up"], check=True)
        subprocess.run(["ip", "link", "set", f"bf{n[3:-2]}", "up"], check=True)
    args: list[str] = []
    for n in names:
        args += ["--", "add-port", "xenbr0", n, "tag=10"]
    t0 = time.monotonic()
    vsctl(lab.dir, *args, timeout=1800)
    print(f"  added {len(names)} filler ports in {time.monotonic() - t0:.1f} s", flush=True)


def prepare_vif(lab: Lab, domid: int) -> str:
    dev = f"vif{domid}.0"
    subprocess.run(["ip", "link", "del", dev], capture_output=True)  # a leftover of an interrupted run
    subprocess.run(["ip", "link", "add", dev, "type", "veth", "peer", "name", f"bp{domid}"], check=True)
    be = f"/local/domain/0/backend/vif/{domid}/0"
    with Client(unix_socket_path=str(lab.xenstore_socket)) as c:
        c.write(f"/local/domain/{domid}/name".encode(), b"bench")
        c.write(f"/local/domain/{domid}/vm".encode(), f"/vm/bench-{domid}".encode())
        c.write(f"/vm/bench-{domid}/name".encode(), b"bench")
        c.write(f"/vm/bench-{domid}/uuid".encode(), f"00000000-0000-0000-0000-{domid:012d}".encode())
        for k, v in {
            "frontend-id": str(domid),
            "mac": f"00:16:3e:7f:{domid >> 8 & 0xFF:02x}:{domid & 0xFF:02x}",
            "bridge": "xenbr0.10",
            "online": "1",
            "state": "1",
        }.items():
            c.write(f"{be}/{k}".encode(), v.encode())
    return dev


def remove_vif(lab: Lab, domid: int, env: dict[str, str]) -> None:
    dev = f"vif{domid}.0"
    vsctl(lab.dir, "--if-exists", "del-port", dev, timeout=600)  # untimed: let ovs-vswitchd settle
    subprocess.run(["ip", "link", "del", dev], check=False)
    with Client(unix_socket_path=str(lab.xenstore_socket)) as c:
        for p in (f"/local/domain/0/backend/vif/{domid}", f"/local/domain/{domid}", f"/vm/bench-{domid}"):
            if c.exists(p.encode()):
                c.delete(p.encode())


def time_online(script: Path, lab: Lab, domid: int, env: dict[str, str]) -> float:
    dev = prepare_vif(lab, domid)
    run_env = {**env, "vif": dev, "XENBUS_PATH": f"/local/domain/0/backend/vif/{domid}/0"}
    t0 = time.perf_counter()
    proc = subprocess.run([str(script), "online"], env=run_env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{script.name} failed: {proc.stderr}")
    remove_vif(lab, domid, env)
    return elapsed


def summary(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "n": len(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[0, 100, 1000])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dir", default="/run/xvif-ovs/bench-hotplug")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "hotplug.json"))
    args = ap.parse_args()
    if not VIF_OPENVSWITCH.exists():
        raise SystemExit(f"{VIF_OPENVSWITCH} is missing: install xen-utils-common (deploy/setup.sh does)")
    lab = Lab(args.dir)
    if lab.is_up():
        lab.down()
    lab.up([BridgeArg("xenbr0", "peth0")])
    env = {**os.environ, **lab.hook_env()}
    results = []
    have = 0
    try:
        for size in sorted(args.sizes):
            populate(lab, have, size)
            have = max(have, size)
            samples: dict[str, list[float]] = {"xvif-ovs": [], "vif-openvswitch": []}
            for r in range(args.repeats):
                order = [("xvif-ovs", HOOK), ("vif-openvswitch", VIF_OPENVSWITCH)]
                for name, script in order if r % 2 == 0 else reversed(order):
                    samples[name].append(time_online(script, lab, BENCH_DOMID + r, env))
            row = {"vifs_on_bridge": size, **{k: summary(v) for k, v in samples.items()}}
            row["speedup_median"] = row["vif-openvswitch"]["median"] / row["xvif-ovs"]["median"]
            results.append(row)
            print(
                f"  {size:5d} vifs: xvif-ovs {row['xvif-ovs']['median'] * 1000:7.1f} ms, "
                f"vif-openvswitch {row['vif-openvswitch']['median'] * 1000:7.1f} ms, "
                f"{row['speedup_median']:.1f}x",
                flush=True,
            )
    finally:
        for name in [f"vif{1000 + i}.0" for i in range(have)] + [
            f"vif{BENCH_DOMID + r}.0" for r in range(args.repeats)
        ]:
            subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)
        lab.down()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python bench/hotplug.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} cores, {os.uname().release}",
        "date": time.strftime("%Y-%m-%d"),
    }
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(markdown(results))
    return 0


def markdown(results: list[dict]) -> str:
    lines = [
        "| vifs on bridge | xvif-ovs hook (ms) min/median/max | vif-openvswitch (ms) min/median/max | speed-up (medians) |",
        "|---:|---|---|---:|",
    ]
    fmt = lambda s: f"{s['min'] * 1000:.0f} / {s['median'] * 1000:.0f} / {s['max'] * 1000:.0f}"  # noqa: E731
    for r in results:
        lines.append(
            f"| {r['vifs_on_bridge']} | {fmt(r['xvif-ovs'])} | {fmt(r['vif-openvswitch'])} | {r['speedup_median']:.1f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
