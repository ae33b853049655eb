"""What a booting guest feels: from the hotplug script's start to the guest's first packet
answered by the LAN, with N vifs already on the bridge; beside it the floor (one
`ovs-vsctl add-port` that waits for ovs-vswitchd's reconfigure at that size). And 100
hooks started at once: time until all report connected and until all guests forward.

xvif-ovs: its hook with its controller programming the bridge. Baseline: Xen's
vif-openvswitch on the same bridge with OVS's NORMAL action and no controller.

Usage (root): .venv/bin/python bench/firstpacket.py [--sizes 0 100 1000] [--repeats 5] [--concurrent 100]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, fresh_lab, save, summary, wait_for, wait_idle
from hotplug import VIF_OPENVSWITCH, populate
from pyxs import Client

from xvif_ovs.lab import daemons
from xvif_ovs.lab.host import Lab

HOOK = ROOT / "deploy" / "vif-xvif-ovs"
# The least any hook can do, as a second floor: the port added without waiting for
# ovs-vswitchd, the link up and promiscuous; OVS forwards with NORMAL, no controller.
BARE_HOOK = """#!/bin/sh
ip link set "$vif" up promisc on
exec ovs-vsctl --no-wait add-port xenbr0 "$vif"
"""


def set_mode(lab: Lab, mode: str) -> None:
    mgmt = f"unix:{lab.dir}/xenbr0.mgmt"
    if mode == "xvif-ovs":
        lab.start_controller()
        wait_for(
            lambda: (
                "reg5"
                in subprocess.run(
                    ["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", mgmt], capture_output=True, text=True
                ).stdout
            ),
            60,
            0.05,
        )
        return
    lab.stop_controller()
    daemons.vsctl(
        lab.dir, "del-controller", "xenbr0", "--", "set", "bridge", "xenbr0", "fail_mode=standalone", timeout=600
    )
    for cmd in (["del-flows", mgmt], ["del-groups", mgmt], ["add-flow", mgmt, "priority=0,actions=NORMAL"]):
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", *cmd], check=True, capture_output=True)


def guest_addr(domid: int) -> tuple[str, str]:
    return f"00:16:3e:7e:{domid >> 8 & 0xFF:02x}:{domid & 0xFF:02x}", f"192.0.2.{100 + domid % 150}"


def make_guest(lab: Lab, domid: int) -> str:
    """A guest as libxl leaves it before the hook: namespace, backend device, XenStore keys."""
    ns, dev = f"xvl-fp{domid}", f"vif{domid}.0"
    subprocess.run(["ip", "link", "del", dev], capture_output=True)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", ns], check=True)
    mac, ip = guest_addr(domid)
    for cmd in (
        ["ip", "link", "set", "eth0", "address", mac],
        ["ip", "addr", "add", f"{ip}/24", "dev", "eth0"],
        ["ip", "link", "set", "eth0", "up"],
    ):
        subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
    be = f"/local/domain/0/backend/vif/{domid}/0"
    with Client(unix_socket_path=str(lab.xenstore_socket)) as c:
        c.write(f"/local/domain/{domid}/name".encode(), f"fp{domid}".encode())
        for k, v in {
            "frontend-id": str(domid),
            "mac": mac,
            "bridge": "xenbr0",
            "ip": ip,
            "online": "1",
            "state": "1",
        }.items():
            c.write(f"{be}/{k}".encode(), v.encode())
    return ns


def drop_guest(lab: Lab, domid: int) -> None:
    daemons.vsctl(lab.dir, "--if-exists", "del-port", f"vif{domid}.0", timeout=600)
    subprocess.run(["ip", "link", "del", f"vif{domid}.0"], capture_output=True)
    subprocess.run(["ip", "netns", "del", f"xvl-fp{domid}"], capture_output=True)
    with Client(unix_socket_path=str(lab.xenstore_socket)) as c:
        for p in (f"/local/domain/0/backend/vif/{domid}", f"/local/domain/{domid}"):
            if c.exists(p.encode()):
                c.delete(p.encode())


def env_for(lab: Lab, domid: int) -> dict[str, str]:
    return {
        **os.environ,
        **lab.hook_env(),
        "vif": f"vif{domid}.0",
        "XENBUS_PATH": f"/local/domain/0/backend/vif/{domid}/0",
    }


def first_packet(lab: Lab, script: Path, domid: int) -> tuple[float, float]:
    """(hook wall time, time to the first ping reply), both from the hook's start.

    The guest starts pinging when the hook returns, as a Xen guest's netfront connects
    only once the hotplug script reports connected, and pings every 2 ms from then on:
    the first reply marks when its path opened. Both sides' neighbour entries are static,
    so no ARP retry (1 s apart in Linux) hides when that was.
    """
    wait_idle(lab.dir)  # the last trial's clean-up is not this one's cost
    ns = make_guest(lab, domid)
    mac, ip = guest_addr(domid)
    lan_mac = Path("/sys/class/net/eth0/address")
    lan_mac = subprocess.run(
        ["ip", "netns", "exec", "xvl-lan", "cat", str(lan_mac)], capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "ip",
            "neigh",
            "replace",
            "192.0.2.1",
            "lladdr",
            lan_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
        check=True,
    )
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            "xvl-lan",
            "ip",
            "neigh",
            "replace",
            ip,
            "lladdr",
            mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
        check=True,
    )
    t0 = time.time()
    proc = subprocess.run([str(script), "online"], env=env_for(lab, domid), capture_output=True, text=True)
    hook = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"{script.name}: {proc.stderr}")
    ping = subprocess.Popen(
        ["ip", "netns", "exec", ns, "ping", "-D", "-i", "0.002", "-w", "30", "192.0.2.1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    first = None
    for line in ping.stdout:
        m = re.match(r"^\[(\d+\.\d+)\].*bytes from", line)
        if m:
            first = float(m.group(1)) - t0
            break
    ping.kill()
    ping.wait()
    subprocess.run(["ip", "netns", "exec", "xvl-lan", "ip", "neigh", "del", ip, "dev", "eth0"], capture_output=True)
    drop_guest(lab, domid)
    return hook, first if first is not None else float("nan")


def reconfigure_floor(lab: Lab) -> float:
    subprocess.run(["ip", "link", "add", "fpfloor", "type", "veth", "peer", "name", "fpfloorp"], check=True)
    subprocess.run(["ip", "link", "set", "fpfloor", "up"], check=True)
    t0 = time.perf_counter()
    daemons.vsctl(lab.dir, "add-port", "xenbr0", "fpfloor", timeout=600)
    took = time.perf_counter() - t0
    daemons.vsctl(lab.dir, "del-port", "xenbr0", "fpfloor", timeout=600)
    subprocess.run(["ip", "link", "del", "fpfloor"], capture_output=True)
    return took


def concurrent(lab: Lab, script: Path, n: int) -> dict:
    domids = [3000 + i for i in range(n)]
    for d in domids:
        make_guest(lab, d)
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [str(script), "online"], env=env_for(lab, d), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for d in domids
    ]
    failed = sum(p.wait(300) != 0 for p in procs)
    connected = time.perf_counter() - t0
    pending = set(domids)
    while pending and time.perf_counter() - t0 < 120:
        pings = {
            d: subprocess.Popen(
                ["ip", "netns", "exec", f"xvl-fp{d}", "ping", "-c1", "-W1", "192.0.2.1"], stdout=subprocess.DEVNULL
            )
            for d in pending
        }
        pending = {d for d, p in pings.items() if p.wait(10) != 0}
    forwarding = time.perf_counter() - t0
    for d in domids:
        drop_guest(lab, d)
    return {
        "hooks": n,
        "failed": failed,
        "all_connected_s": connected,
        "all_forwarding_s": forwarding,
        "not_forwarding": len(pending),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[0, 100, 1000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--concurrent", type=int, default=100)
    args = ap.parse_args()
    lab = fresh_lab("/run/xvif-ovs/bench-firstpacket")
    bare = lab.dir / "vif-bare"
    bare.write_text(BARE_HOOK)
    bare.chmod(0o755)
    rows, conc = [], []
    have = 0
    try:
        for mode, script in (("xvif-ovs", HOOK), ("vif-openvswitch", VIF_OPENVSWITCH)):
            set_mode(lab, mode)
            conc.append({"mode": mode, **concurrent(lab, script, args.concurrent)})
            print(f"  {mode}: {conc[-1]}", flush=True)
        for size in sorted(args.sizes):
            populate(lab, have, size)
            have = max(have, size)
            # The first waited add-port after adding many ports also waits out their
            # reconfigure: the floor is the best of three once that has settled.
            row: dict = {"vifs_on_bridge": size, "reconfigure_floor_s": min(reconfigure_floor(lab) for _ in range(3))}
            for mode, script in (("xvif-ovs", HOOK), ("vif-openvswitch", VIF_OPENVSWITCH), ("bare", bare)):
                set_mode(lab, mode)
                samples = [first_packet(lab, script, 2000 + r) for r in range(args.repeats)]
                row[mode] = {
                    "hook_s": summary([s[0] for s in samples]),
                    "first_packet_s": summary([s[1] for s in samples]),
                }
            rows.append(row)
            med = {m: row[m]["first_packet_s"]["median"] * 1000 for m in ("xvif-ovs", "vif-openvswitch", "bare")}
            print(
                f"  {size:5d} vifs: floor {row['reconfigure_floor_s'] * 1000:.0f} ms; first packet xvif-ovs "
                f"{med['xvif-ovs']:.0f} ms, vif-openvswitch {med['vif-openvswitch']:.0f} ms, "
                f"bare add-port + NORMAL {med['bare']:.0f} ms",
                flush=True,
            )
    finally:
        for i in range(have):
            subprocess.run(["ip", "link", "del", f"vif{1000 + i}.0"], capture_output=True)
        lab.down()
    out = save("firstpacket", {"first_packet": rows, "concurrent": conc}, ["firstpacket.py", *sys.argv[1:]])
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
