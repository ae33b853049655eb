"""`xvif-ovs lab demo`: the main job on the lab, for a first look on a machine without Xen.

Brings a host up with the xvif-ovs controller, boots guests as libxl would (PV, HVM,
VLANs) through the xvif-ovs hotplug hook, and shows what each part did: XenStore as
xenstore-ls prints it, the bridge as ovs-vsctl shows it, the flows the controller
installed, and which guest reaches which over real packets, including a guest that
spoofs its address. Every check is a real ping; the exit status says whether the host
behaved as configured.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import LabError
from ..pipeline.build import P_ALLOW, P_DROP
from ..pipeline.flow import COOKIE_MAGIC, decode_cookie, vif_owner
from ..pipeline.tables import TABLES
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
SPOOFED = "192.0.2.99"  # web claims an address that is not its own


def run_demo(d: Path | None, keep: bool, say: Callable[[str], None] = print) -> int:
    lab = Lab(d)
    say(f"== lab up in {lab.dir}: ovsdb-server, ovs-vswitchd (userspace datapath), XenStore server, controller")
    lab.up([BridgeArg("xenbr0", "peth0")], controller=True)
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
        _wait_for_flows(lab, len(GUESTS))
        say("== the flows the controller installed, per table:")
        say(_flow_summary(lab))
        say("== reachability over real packets (ping):")
        failures = 0
        for src, dst, addr, expected in CHECKS:
            got = _ping(src, addr)
            verdict = "ok" if got == expected else "UNEXPECTED"
            failures += got != expected
            say(f"   {src:7} -> {dst:7} {addr:12} {'reaches' if got else 'blocked':8} ({verdict})")
        subprocess.run(["ip", "netns", "exec", netns_of("web"), "ip", "addr", "add", f"{SPOOFED}/32", "dev", "eth0"])
        got = _ping("web", "192.0.2.1", source=SPOOFED)
        failures += got
        say(
            f"   web as {SPOOFED} -> LAN  {'reaches' if got else 'blocked':8} ({'UNEXPECTED' if got else 'ok'}: "
            f"port security; web's drop counter is now {_drops(lab, 1)})"
        )
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


def _ping(guest: str, addr: str, source: str | None = None) -> bool:
    cmd = ["ip", "netns", "exec", netns_of(guest), "ping", "-c", "2", "-i", "0.2", "-W", "1", addr]
    if source:
        cmd += ["-I", source]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def _ofctl(lab: Lab, *args: str) -> str:
    cmd = ["ovs-ofctl", "-O", "OpenFlow13", args[0], f"unix:{lab.dir}/xenbr0.mgmt", *args[1:]]
    return subprocess.run(cmd, capture_output=True, text=True).stdout


def _wait_for_flows(lab: Lab, vifs: int, timeout: float = 30) -> None:
    """Until every guest's port-security flows are in the switch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cookies = re.findall(r"cookie=(0x[0-9a-f]+)", _ofctl(lab, "dump-flows", "table=1"))
        owners = {d[1:] for c in cookies if (d := decode_cookie(int(c, 16))) and d[0] == P_ALLOW}
        if len(owners) >= vifs:
            return
        time.sleep(0.1)
    raise LabError(f"the controller did not program xenbr0 within {timeout:.0f} s; see {lab.dir}/controller.log")


def _flow_summary(lab: Lab) -> str:
    flows = _ofctl(lab, "dump-flows", "--no-stats").splitlines()
    per_table: dict[str, int] = {}
    for line in flows:
        if "actions=" not in line:
            continue
        m = re.search(r"table=(\d+)", line)
        t = m.group(1) if m else "0"  # ovs-ofctl leaves table=0 out
        per_table[t] = per_table.get(t, 0) + 1
    names = {t.id: t.name for t in TABLES.values()}
    groups = len([g for g in _ofctl(lab, "dump-groups").splitlines() if "group_id=" in g])
    rows = [f"   table {t} {names.get(int(t), '?'):14} {n:4d} flows" for t, n in sorted(per_table.items())]
    return "\n".join(
        rows
        + [
            f"   flood groups       {groups:4d}",
            "   (no NORMAL action, no packet-in: forwarding stays in the datapath)",
        ]
    )


def _drops(lab: Lab, domid: int) -> int:
    cookie = f"cookie={COOKIE_MAGIC | P_DROP << 40 | vif_owner(domid, 0):#x}/0xffffff00ffffffff"
    return sum(int(n) for n in re.findall(r"n_packets=(\d+)", _ofctl(lab, "dump-flows", cookie)))
