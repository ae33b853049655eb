"""Control-plane scale: 1 to 4000 vifs on a dummy-datapath bridge (no traffic, so
thousands of ports are cheap; flows, bundles and ofproto/trace work as on real ones).

Per size: time from controller start to the full pipeline in the switch, flows per vif,
time for one vif change (an ip rewritten in XenStore) to reach the switch, controller
RSS; and the floor: `ovs-ofctl --bundle add-flows` of the same flows from a file into
an empty bridge (how fast OVS itself takes them).

Usage (root): .venv/bin/python bench/scale.py [--sizes 1 100 1000 4000] [--changes 7]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

from common import ROOT, flow_count, fresh_lab, rss_kib, save, summary, wait_for
from pyxs import Client

from xvif_ovs.lab import daemons
from xvif_ovs.lab.host import Lab
from xvif_ovs.pipeline.build import P_ALLOW
from xvif_ovs.pipeline.flow import COOKIE_MAGIC, vif_owner

VLANS = (0, 10, 20, 30)


def populate(lab: Lab, n: int) -> None:
    """n vifs: XenStore backends as libxl writes them, dummy ports as the hook adds them."""
    with Client(unix_socket_path=str(lab.xenstore_socket)) as c:
        for start in range(0, n, 250):
            c.transaction()
            for i in range(start, min(n, start + 250)):
                domid = 100 + i
                be = f"/local/domain/0/backend/vif/{domid}/0"
                vlan = VLANS[i % len(VLANS)]
                bridge = "xenbr0" if vlan == 0 else f"xenbr0.{vlan}"
                for k, v in {
                    "mac": f"00:16:3e:{domid >> 16 & 0xFF:02x}:{domid >> 8 & 0xFF:02x}:{domid & 0xFF:02x}",
                    "bridge": bridge,
                    "ip": f"198.18.{domid >> 8 & 0xFF}.{domid & 0xFF}",
                    "frontend-id": str(domid),
                    "hotplug-status": "connected",
                }.items():
                    c.write(f"{be}/{k}".encode(), v.encode())
                c.write(f"/local/domain/{domid}/name".encode(), f"g{domid}".encode())
            c.commit()
    args: list[str] = ["--", "add-port", "xenbr0", "peth0", "--", "set", "interface", "peth0", "type=dummy"]
    args += ["--", "set", "port", "peth0", "external_ids:xvif-uplink=true"]  # declared, as the lab does
    for i in range(n):
        domid = 100 + i
        dev = f"vif{domid}.0"
        vlan = VLANS[i % len(VLANS)]
        args += ["--", "add-port", "xenbr0", dev] + ([f"tag={vlan}"] if vlan else ["vlan_mode=access"])
        args += ["--", "set", "interface", dev, "type=dummy", f"ofport_request={1000 + i}"]
        args += [f"external_ids:xvif-domid={domid}", "external_ids:xvif-devid=0", "external_ids:xvif-kind=vif"]
    daemons.vsctl(lab.dir, *args, timeout=1800)


def floor(lab: Lab) -> float:
    """ovs-ofctl --bundle of the same flows and groups, rendered by the pipeline from the
    same host, into an empty bridge: how fast OVS itself takes them from a file."""
    import os

    from xvif_ovs.cli.flows import controller_config, desired
    from xvif_ovs.inspect.hoststate import read_host
    from xvif_ovs.inspect.openflow import OfClient

    os.environ.update(lab.env())
    host = read_host()
    with OfClient("xenbr0") as of:
        ports = of.ports()
    fs = desired(host, "xenbr0", ports, controller_config(None))
    text = fs.render().splitlines()
    (lab.dir / "floor.groups").write_text("\n".join(t for t in text if t.startswith("group_id=")) + "\n")
    (lab.dir / "floor.flows").write_text("\n".join(t for t in text if t.startswith("cookie=")) + "\n")
    daemons.vsctl(
        lab.dir, "add-br", "floor0", "--", "set", "bridge", "floor0", "datapath_type=netdev", "protocols=OpenFlow13"
    )
    daemons.vsctl(lab.dir, "set", "bridge", "floor0", "fail_mode=secure")
    mgmt = f"unix:{lab.dir}/floor0.mgmt"
    t0 = time.perf_counter()
    for what in ("groups", "flows"):
        cmd = ["ovs-ofctl", "-O", "OpenFlow13", "--bundle", f"add-{what}", mgmt, str(lab.dir / f"floor.{what}")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()[:500]}")
    took = time.perf_counter() - t0
    daemons.vsctl(lab.dir, "del-br", "floor0")
    return took


def one_vif_change(lab: Lab, n: int, k: int) -> float:
    """From the XenStore write to the new rule in the switch, watched over one OpenFlow
    connection: a look about every 2 ms (1 ms asking, 1 ms asleep), so the figure is at
    most about 2 ms late and the poller does not starve what it measures."""
    import os

    from xvif_ovs.inspect.openflow import OfClient

    os.environ.update(lab.env())
    domid = 100 + (k * 7919) % n
    new_ip = f"198.19.{k}.{domid & 0xFF}"
    cookie = COOKIE_MAGIC | P_ALLOW << 40 | vif_owner(domid, 0)
    with OfClient("xenbr0") as of, Client(unix_socket_path=str(lab.xenstore_socket)) as c:
        t0 = time.perf_counter()
        c.write(f"/local/domain/0/backend/vif/{domid}/0/ip".encode(), new_ip.encode())
        wait_for(
            lambda: any(f"nw_src={new_ip}" in s.flow.render() for s in of.flows(cookie, -1 & 0xFFFFFFFFFFFFFFFF)),
            60,
            poll=0.001,  # a busy poller would take a core from the controller and ovs-vswitchd
        )
        return time.perf_counter() - t0


def run_size(n: int, changes: int) -> dict:
    lab = fresh_lab("/run/xvif-ovs/bench-scale", None, dummy=True)
    try:
        t0 = time.perf_counter()
        populate(lab, n)
        print(f"  {n} vifs in XenStore and OVSDB in {time.perf_counter() - t0:.1f} s", flush=True)
        log = lab.dir / "controller.log"
        t0 = time.perf_counter()
        lab.start_controller()
        wait_for(lambda: log.exists() and re.search(r"xenbr0: \+\d+", log.read_text()) is not None, 900, poll=0.01)
        to_pipeline = time.perf_counter() - t0
        timeline = [ln for ln in log.read_text().splitlines() if " INFO " in ln][:6]
        total = flow_count(lab.dir)
        pid = int((lab.dir / "controller.pid").read_text())
        rss = rss_kib(pid)
        change = [one_vif_change(lab, n, k) for k in range(changes)]
        lab.stop_controller()  # else it would take the floor bridge over and "fix" its flows
        floor_s = floor(lab)
        base = build_base()
        row = {
            "vifs": n,
            "controller_start_to_pipeline_s": to_pipeline,
            "flows": total,
            "flows_per_vif": (total - base) / n,
            "bundle_floor_s": floor_s,
            "ratio_to_floor": to_pipeline / floor_s if floor_s else None,
            "one_vif_change_s": summary(change),
            "controller_rss_mib": rss / 1024,
            "controller_log": timeline,
        }
        print(
            f"  {n:5d} vifs: pipeline in {to_pipeline:.2f} s (floor {floor_s:.2f} s, {row['ratio_to_floor']:.1f}x), "
            f"{total} flows ({row['flows_per_vif']:.1f}/vif), one change median {row['one_vif_change_s']['median'] * 1000:.0f} ms, "
            f"RSS {rss / 1024:.0f} MiB",
            flush=True,
        )
        return row
    finally:
        lab.down()


def build_base() -> int:
    """Flows the bridge has with no vif at all (defaults, uplink, dom0)."""
    from xvif_ovs.model.host import BridgeModel
    from xvif_ovs.pipeline.build import build

    return len(build(BridgeModel("xenbr0", (1,))).flows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 1000, 4000])
    ap.add_argument("--changes", type=int, default=7)
    args = ap.parse_args()
    rows = [run_size(n, args.changes) for n in args.sizes]
    out = save("scale", rows, ["scale.py", *sys.argv[1:]])
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
