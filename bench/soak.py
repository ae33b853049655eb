"""Memory soak: the controller's RSS is bounded by what exists, not by history.

1000 vifs on a dummy-datapath bridge (as bench/scale.py makes them); the controller
programs them; then a stream of events that each make it redo a vif: ``ip=`` rewritten in
XenStore (a new address every time, so nothing it built before can be reused) and link
flaps of every port (OVS's netdev-dummy/set-admin-state, 1000 flaps per call). RSS is
sampled throughout. The figure is its growth from the settled start (after a warm-up of
a fifth as many of the same events: Python's allocator keeps the arenas of its high-water
mark, which the first full rebuilds set) to the end; the growth from the moment the
pipeline was first programmed is reported beside it. Target: < 10%.

Usage (root): .venv/bin/python bench/soak.py [--vifs 1000] [--events 100000]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

from common import ROOT, fresh_lab, rss_kib, save, wait_for
from pyxs import Client
from scale import populate


def flap_all(lab_dir, state: str) -> None:  # noqa: ANN001
    subprocess.run(
        ["ovs-appctl", "-t", str(lab_dir / "ovs-vswitchd.ctl"), "netdev-dummy/set-admin-state", state],
        check=True,
        capture_output=True,
        timeout=120,
    )


def settle(log, before: int, timeout: float = 300) -> None:  # noqa: ANN001
    """Until the controller has applied something after ``before`` (a log offset) and then
    logged nothing for a second."""
    wait_for(lambda: re.search(r"xenbr0: [+~-]", log.read_text()[before:]) is not None, timeout, poll=0.05)
    size = -1
    while size != len(log.read_text()):
        size = len(log.read_text())
        time.sleep(1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vifs", type=int, default=1000)
    ap.add_argument("--events", type=int, default=100_000)
    args = ap.parse_args()
    n = args.vifs
    lab = fresh_lab("/run/xvif-ovs/bench-soak", None, dummy=True)
    try:
        populate(lab, n)
        log = lab.dir / "controller.log"
        lab.start_controller()
        settle(log, 0, 900)
        pid = int((lab.dir / "controller.pid").read_text())
        programmed_rss = rss_kib(pid)
        samples: list[tuple[int, int]] = []  # (events so far, RSS KiB)
        done = 0
        counter = 0

        def burst(k: int) -> int:
            """About k events: half ip= rewrites across all vifs, half link flaps (each
            call flaps every port, down then up again, so that every port ends up)."""
            nonlocal counter
            calls = ((k // 2) // n) & ~1
            writes = k - calls * n
            with Client(unix_socket_path=str(lab.xenstore_socket)) as c:
                for _ in range(writes):
                    counter += 1
                    domid = 100 + counter % n
                    ip = f"10.{counter >> 16 & 0xFF}.{counter >> 8 & 0xFF}.{counter & 0xFF}"
                    c.write(f"/local/domain/0/backend/vif/{domid}/0/ip".encode(), ip.encode())
            for i in range(calls):
                flap_all(lab.dir, "down" if i % 2 == 0 else "up")
            return writes + calls * n

        t0 = time.perf_counter()
        at = len(log.read_text())
        burst(args.events // 5)  # warm-up, not counted
        settle(log, at)
        start_rss = rss_kib(pid)
        samples.append((0, start_rss))
        step = max(2 * n, args.events // 20)
        while done < args.events:
            at = len(log.read_text())
            done += burst(min(step, args.events - done))
            settle(log, at)
            samples.append((done, rss_kib(pid)))
            print(f"  {done:6d} events: RSS {samples[-1][1] / 1024:.1f} MiB", flush=True)
        end_rss = samples[-1][1]
        alive = subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode == 0
        row = {
            "vifs": n,
            "events": done,
            "rss_start_mib": start_rss / 1024,
            "rss_end_mib": end_rss / 1024,
            "growth": end_rss / start_rss - 1,
            "rss_programmed_mib": programmed_rss / 1024,
            "growth_from_programmed": end_rss / programmed_rss - 1,
            "rss_max_mib": max(r for _, r in samples) / 1024,
            "samples": [{"events": e, "rss_mib": r / 1024} for e, r in samples],
            "seconds": time.perf_counter() - t0,
            "controller_alive": alive,
        }
        print(
            f"  RSS {row['rss_start_mib']:.1f} -> {row['rss_end_mib']:.1f} MiB "
            f"({row['growth'] * 100:+.1f}%; {row['growth_from_programmed'] * 100:+.1f}% from first programmed) "
            f"over {done} events in {row['seconds']:.0f} s",
            flush=True,
        )
    finally:
        lab.down()
    out = save("soak", row, ["soak.py", *sys.argv[1:]])
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
