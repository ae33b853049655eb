"""The real-Xen benchmark, run inside dom0 of Xen 4.17 in QEMU (bench/realxen.py boots it).

Each figure is xvif-ovs (its hook on xenbr0, the controller's pipeline) against Xen's
vif-openvswitch (on xenbr1, OVS's NORMAL action, no controller), measured in the same
VM run, alternating. QEMU emulates the CPU here (no hardware virtualisation): absolute
times are many times a real host's; only the ratios mean anything.

- create: `xl create` to the backend's hotplug-status `connected` (what libxl waits for),
  and to the guest's first frame seen by a peer guest on the bridge (what the guest
  feels), with the peer alone on the bridge and with several idle guests besides;
- throughput: HTTP (busybox httpd and wget) between two guests through netback and the
  OVS kernel datapath;
- migration: a guest moved to a new domain of the same VM in libxl's order
  (tests/realxen/dom0.py, switch_over: `xl migrate` of a PV guest cannot run on Debian's
  Xen, built without shadow paging) while another guest pings it every 100 ms: the
  longest silence between its replies.

Usage (in dom0, from the checkout, by deploy/xen-vm/inside.sh in bench mode):
    /opt/xvif-ovs/.venv/bin/python bench/realxen_inside.py --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "realxen"))
sys.path.insert(0, str(ROOT))

import dom0  # noqa: E402
from dom0 import Guests, ensure_bridge, mac, migration_gap, reach, sh, up, vif_spec, wait_for  # noqa: E402

VARIANTS = {"xvif-ovs": ("xenbr0", "vif-xvif-ovs"), "vif-openvswitch": ("xenbr1", "vif-openvswitch")}


def spec(n: int, variant: str, **kw) -> str:
    bridge, script = VARIANTS[variant]
    return vif_spec(mac(n), bridge, **kw).replace("script=vif-xvif-ovs", f"script={script}")


def in_turn(r: int) -> list[tuple[int, str]]:
    """(index, variant) in the order of repeat r: ABBA, so that neither always goes first."""
    order = list(enumerate(VARIANTS))
    return order if r % 2 == 0 else order[::-1]


def stats(xs: list[float]) -> dict:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "n": len(xs), "all": xs}


class ConnectedAt:
    """When a domain's first vif reports hotplug-status connected, polled in XenStore
    every 20 ms through a single connection (no process per poll)."""

    def __init__(self, name: str) -> None:
        from xvif_ovs.xenstore.client import connect

        self.name, self.at, self.stop = name, None, False
        self._conn = connect()
        self.xs = self._conn.__enter__()
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        domid = None
        while not self.stop and self.at is None:
            try:
                if domid is None:
                    for d in self.xs.list(b"/local/domain"):
                        if self.xs.read(b"/local/domain/" + d + b"/name") == self.name.encode():
                            domid = d.decode()
                if domid is not None:
                    st = self.xs.read(f"/local/domain/0/backend/vif/{domid}/0/hotplug-status".encode())
                    if st == b"connected":
                        self.at = time.monotonic()
            except Exception:  # noqa: BLE001 - a node not there yet: poll again
                pass
            time.sleep(0.02)

    def close(self) -> None:
        self.stop = True
        time.sleep(0.05)
        self._conn.__exit__(None, None, None)


class FirstFrom:
    """The first frame from a MAC seen on a vif (tcpdump in dom0)."""

    def __init__(self, dev: str, src: str) -> None:
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", dev, "-nn", "-l", "-c", "1", "-U", f"ether src {src}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.at: float | None = None
        self.err: list[str] = []
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(f"tcpdump on {dev}", lambda: self.proc.poll() is not None or any("listening" in e for e in self.err))

    def _read(self) -> None:
        for _ in self.proc.stdout:
            self.at = self.at or time.monotonic()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)


def one_create(guests: Guests, n: int, variant: str, peer: tuple) -> dict:
    ip = f"10.0.0.{n}"
    name = f"rxb{n}"
    first = FirstFrom(peer[0].vif(), mac(n))
    conn = ConnectedAt(name)
    try:
        t0 = time.monotonic()
        g = guests.create("", [spec(n, variant, ip=ip)], up(ip) + f"ping -c 30 -i 0.2 {peer[1]}\n", name=name)
        xl_s = time.monotonic() - t0
        wait_for(f"{name}'s first frame at the peer", lambda: first.at is not None, 180, 0.05)
        wait_for(f"{name} connected", lambda: conn.at is not None, 30, 0.05)
    finally:
        first.close()
        conn.close()
    g.destroy()
    return {"xl_create_s": xl_s, "connected_s": conn.at - t0, "first_frame_s": first.at - t0}


def bench_create(guests: Guests, idle: int, repeats: int) -> list[dict]:
    """With the peer alone, then with `idle` more idle guests on each bridge."""
    peers = {}
    for i, v in enumerate(VARIANTS):
        n = 100 + i
        ip = f"10.0.0.{n}"
        peers[v] = (guests.create("", [spec(n, v, ip=ip)], up(ip) + "echo XR-READY\n", name=f"rxbp{n}"), ip)
    for p, _ in peers.values():
        p.wait_console("^XR-READY", 180)
    out = []
    for size in (0, idle):
        have = len([g for g in guests.made if g.name.startswith("rxbi")]) // len(VARIANTS)
        idle_guests = []
        for k in range(have, size):
            for i, v in enumerate(VARIANTS):
                n = 130 + k * 2 + i
                script = up(f"10.0.0.{n}") + "echo XR-READY\n"
                idle_guests.append(
                    guests.create("", [spec(n, v, ip=f"10.0.0.{n}")], script, memory=IDLE_MIB, name=f"rxbi{n}")
                )
        for g in idle_guests:  # booted and idle before anything is measured
            g.wait_console("^XR-READY", 600)
        row: dict = {"other_guests": size, **{v: [] for v in VARIANTS}}
        for r in range(repeats):
            for i, v in in_turn(r):
                row[v].append(one_create(guests, 110 + r * 2 + i, v, peers[v]))
                print(f"create, {size} idle guests, {v}: {row[v][-1]}", flush=True)
        out.append(
            {
                "other_guests": size,
                **{
                    v: {k: stats([m[k] for m in row[v]]) for k in ("xl_create_s", "connected_s", "first_frame_s")}
                    for v in VARIANTS
                },
            }
        )
    return out


SERVER = (
    "mkdir -p /www && dd if=/dev/zero of=/www/f bs=1M count={mb} 2>/dev/null && "
    "httpd -h /www -p 80 && echo XR-SERVING\n"
)
CLIENT = (
    "for i in $(seq {count}); do t0=$(cut -d' ' -f1 /proc/uptime); wget -q -O /dev/null http://{server}/f && "
    "t1=$(cut -d' ' -f1 /proc/uptime) && echo \"XR-TPUT $t0 $t1\"; done\n"
)


def bench_throughput(guests: Guests, rounds: int, mb: int = 32, count: int = 2) -> dict:
    servers = {}
    for i, v in enumerate(VARIANTS):
        n = 160 + i
        ip = f"10.0.0.{n}"
        servers[v] = (guests.create("rxhs", [spec(n, v, ip=ip)], up(ip) + SERVER.format(mb=mb), memory=192), ip)
    for g, _ in servers.values():
        g.wait_console("^XR-SERVING", 240)
    res: dict = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for i, v in in_turn(r):
            n = 170 + r * 2 + i
            ip = f"10.0.0.{n}"
            server = servers[v][1]
            c = guests.create(
                "rxhc", [spec(n, v, ip=ip)], up(ip) + reach(server, 120) + CLIENT.format(count=count, server=server)
            )
            out = c.done(timeout=600)
            assert f"XR-REACHED {server}" in out, f"{v}: the client never reached the server:\n{out[-2000:]}"
            got = [line.split() for line in out.splitlines() if line.startswith("XR-TPUT")]
            assert len(got) == count, f"{v}: {count - len(got)} of {count} downloads failed:\n{out[-2000:]}"
            for _, t0, t1 in got:  # /proc/uptime has 10 ms steps: a transfer takes seconds here
                res[v].append(mb * 2**20 * 8 / max(float(t1) - float(t0), 0.01) / 1e6)  # Mbit/s
            c.destroy()
            print(f"throughput {v}: {res[v]}", flush=True)
    for g, _ in servers.values():
        g.destroy()
    return {v: stats(xs) for v, xs in res.items()} | {"megabytes": mb}


def bench_migration(guests: Guests, repeats: int) -> dict:
    res: dict = {v: {"gap_s": [], "switch_s": []} for v in VARIANTS}
    for r in range(repeats):
        for i, v in in_turn(r):
            bridge, script = VARIANTS[v]
            m = migration_gap(guests, bridge, script, 180 + r * 4 + i * 2)
            m["guest"].destroy()
            res[v]["gap_s"].append(m["gap_s"])
            res[v]["switch_s"].append(m["switch_s"])
            print(f"migration {v}: gap {m['gap_s']:.2f} s, switch-over {m['switch_s']:.1f} s", flush=True)
    return {v: {k: stats(xs) for k, xs in d.items()} for v, d in res.items()}


IDLE_MIB = 96  # an idle guest: Xen refused 64 ("segment kernel too large": the kernel and initramfs take 58)


def idle_that_fit() -> int:
    """As many idle guests per bridge as Xen's free memory holds, leaving room for the
    measured guest and its peer (96 MiB each) and Xen's own overhead per domain."""
    free = int(sh("xl info | awk '/^free_memory/ {print $3}'").stdout.strip())
    return max(1, min(40, (free - 3 * 96) // (IDLE_MIB + 4) // len(VARIANTS)))  # 40: addresses .130-.209


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--idle", type=int, default=0, help="idle guests per bridge for the second create row (0: as many as fit)"
    )
    args = ap.parse_args()
    dom0.WORK.mkdir(parents=True, exist_ok=True)
    dom0.CONSOLE_DIR.mkdir(parents=True, exist_ok=True)
    for b in ("xenbr0", "xenbr1"):
        ensure_bridge(b)
    dom0.extract_vmlinux(dom0.KERNEL)
    initrd = dom0.build_initramfs(dom0.WORK / "guest-initrd.gz")
    sh(["systemctl", "start", "xvif-ovs-controller"])
    wait_for("the controller to connect to xenbr0", dom0.controller_connected, timeout=180)
    info = {
        "xen": sh("xl info | awk '/^xen_version/ {print $3}'").stdout.strip(),
        "kernel": sh(["uname", "-r"]).stdout.strip(),
        "ovs": sh(["ovs-vswitchd", "--version"]).stdout.splitlines()[0],
        "dom0_vcpus": int(sh("nproc").stdout.strip()),
    }
    guests = Guests(initrd)
    results: dict = {"info": info}
    out = Path(args.out)
    # inside.sh's timeout sends SIGTERM: end through `finally`, keeping what was measured.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("SIGTERM: the benchmark ran out of time"))
    sections = {
        "migration": lambda: bench_migration(guests, max(2, args.repeats - 1)),
        "throughput": lambda: bench_throughput(guests, rounds=2),
        "create": lambda: bench_create(guests, args.idle or idle_that_fit(), args.repeats),
    }
    try:
        for section, measure in sections.items():
            results[section] = measure()
            out.write_text(json.dumps(results, indent=2) + "\n")  # each section as soon as it is done
    finally:
        guests.cleanup()
        out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
