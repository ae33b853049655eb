"""`xvif-ovs lab demo`: the main job on the lab, for a first look on a machine without Xen.

Brings a host up, boots guests as libxl would (PV, HVM, VLANs), and shows what each
part saw: XenStore as xenstore-ls prints it, the bridges as ovs-vsctl shows them, and
which guest reaches which over real packets. Every check is a real ping; the exit
status says whether the host behaved as configured.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from .domain import add_domain
from .host import BridgeArg, Lab
from .state import netns_of

GUESTS = [
    # name, domid, vif spec, hvm
    ("web", 1, "mac=00:16:3e:00:01:01,bridge=xenbr0,ip=192.0.2.11", False),
    ("db", 2, "mac=00:16:3e:00:02:01,bridge=xenbr0,ip=192.0.2.12", True),
    ("app10", 3, "mac=00:16:3e:00:03:01,bridge=xenbr0.10,ip=198.18.10.13", False),
    ("red10", 4, "mac=00:16:3e:00:04:01,bridge=xenbr0.10,ip=198.18.10.14", False),
    ("blue20", 5, "mac=00:16:3e:00:05:01,bridge=xenbr0.20,ip=198.18.10.15", False),
]
# (from, to, address, expected): same VLAN reaches, another VLAN does not.
CHECKS = [
    ("web", "db", "192.0.2.12", True),
    ("web", "LAN", "192.0.2.1", True),
    ("db", "LAN", "192.0.2.1", True),
    ("app10", "red10", "198.18.10.14", True),
    ("blue20", "app10", "198.18.10.13", False),
    ("web", "app10", "198.18.10.13", False),
]


def run_demo(d: Path | None, keep: bool, say: Callable[[str], None] = print) -> int:
    lab = Lab(d)
    say(f"== lab up in {lab.dir}: ovsdb-server, ovs-vswitchd (userspace datapath), XenStore server")
    lab.up([BridgeArg("xenbr0", "peth0")])
    ok = False
    try:
        for name, domid, spec, hvm in GUESTS:
            dom = add_domain(lab, name, domid, [spec], hvm=hvm)
            v = dom.vifs[0]
            twin = f" + {v.emu}" if v.emu else ""
            say(f"   booted {name:7} domid {domid}  {v.dev}{twin:14} {spec}  -> hotplug-status connected")
        env = lab.env()
        say("\n== XenStore, as Xen's xenstore-ls sees it (backend of domid 3):")
        say(_tool(["xenstore-ls", "/local/domain/0/backend/vif/3/0"], env))
        say("== the bridge, as ovs-vsctl shows it:")
        say(_tool(["ovs-vsctl", "show"], env))
        say("== reachability over real packets (ping):")
        failures = 0
        for src, dst, addr, expected in CHECKS:
            got = _ping(src, addr)
            verdict = "ok" if got == expected else "UNEXPECTED"
            failures += got != expected
            say(f"   {src:7} -> {dst:7} {addr:12} {'reaches' if got else 'blocked':8} ({verdict})")
        ok = failures == 0
        say(f"\n{'all checks passed' if ok else f'{failures} check(s) failed'}")
        if keep:
            say(
                f'the lab stays up: `eval "$(xvif-ovs lab env{_dir_arg(d)})"`, `xvif-ovs lab exec web -- ping 192.0.2.12`'
            )
    finally:
        if not keep:
            say("== lab down")
            lab.down()
    return 0 if ok else 1


def _dir_arg(d: Path | None) -> str:
    return f" --dir {d}" if d else ""


def _tool(argv: list[str], env: dict[str, str]) -> str:
    return subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True).stdout.rstrip()


def _ping(guest: str, addr: str) -> bool:
    cmd = ["ip", "netns", "exec", netns_of(guest), "ping", "-c", "2", "-i", "0.2", "-W", "1", addr]
    return subprocess.run(cmd, capture_output=True).returncode == 0
