"""Faults on the real host: the controller killed (-9) during a guest-to-guest ping flood
loses nothing; `systemctl restart openvswitch-switch` brings the pipeline back; xenstored
replaced in place (live update) changes nothing."""

from __future__ import annotations

import glob
import os
import re
import shutil

from dom0 import PEER_IP, controller_connected, mac, reach, sh, up, vif_spec, wait_for, xvif


def _main_pid() -> int:
    return int(sh(["systemctl", "show", "-p", "MainPID", "--value", "xvif-ovs-controller"]).stdout.strip() or 0)


def test_controller_kill9_during_ping_flood_loses_nothing(peer, guests):
    count = 500
    a = guests.create(
        "rxk9",
        [vif_spec(mac(40), ip="10.0.0.40")],
        up("10.0.0.40") + reach(PEER_IP) + f"echo XR-FLOOD\nping -A -q -c {count} -W 1 {PEER_IP}\n",
    )
    a.wait_console("^XR-FLOOD", 120)
    old = _main_pid()
    assert old > 0
    sh(["kill", "-9", str(old)])
    out = a.done(timeout=300)
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
    assert m, out[-2000:]
    assert (int(m.group(1)), int(m.group(2))) == (count, count), m.group(0)
    # systemd brought it back (Restart=always) and it changed nothing
    wait_for("a new controller process", lambda: _main_pid() not in (0, old), timeout=60)
    wait_for("the controller to reconnect", controller_connected, timeout=120)
    p = xvif("flows", "--diff", check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_openvswitch_restart_brings_the_pipeline_back(peer, guests):
    sh(["systemctl", "restart", "openvswitch-switch"], timeout=180)
    wait_for("the controller to reconnect after the OVS restart", controller_connected, timeout=180)
    wait_for(
        "the pipeline to be back (flows --diff empty)",
        lambda: xvif("flows", "--diff", check=False).returncode == 0,
        timeout=120,
        interval=2,
    )
    a = guests.create(
        "rxovs", [vif_spec(mac(41), ip="10.0.0.41")], up("10.0.0.41") + reach(PEER_IP) + f"ping -c 5 -W 2 {PEER_IP}\n"
    )
    out = a.done()
    assert f"XR-REACHED {PEER_IP}" in out, out[-2000:]
    assert "5 packets received" in out, out[-2000:]


def _xenstored() -> tuple[int, str]:
    """The running xenstored's pid and binary (Debian runs oxenstored)."""
    for pid in sh(["pgrep", "-x", "oxenstored|xenstored"], check=False).stdout.split():
        return int(pid), os.readlink(f"/proc/{pid}/exe")
    raise AssertionError("no xenstored process in dom0")


def test_xenstored_live_update_keeps_guests_and_the_controller(peer, guests):
    """xenstored cannot simply be restarted under running domains (their connections and
    watches would be lost); Xen 4.17 replaces it in place with `xenstore-control
    live-update`, which is the restart a Xen host supports. Afterwards the controller
    still follows XenStore: a new guest gets its flows and reaches the peer."""
    pid, exe = _xenstored()
    ctl = shutil.which("xenstore-control") or next(iter(glob.glob("/usr/lib/xen-*/bin/xenstore-control")), None)
    assert ctl, "no xenstore-control on this host"
    controller_pid = _main_pid()
    p = sh([ctl, "live-update", exe], check=False, timeout=300)
    out = (p.stdout + p.stderr).strip()
    assert p.returncode == 0, f"`xenstore-control live-update {exe}` exited {p.returncode}: {out}"
    print(f"live-update of {exe} (pid {pid}): {out}")
    assert _xenstored()[0] == pid, "xenstored's pid changed: live update re-executes in place"
    a = guests.create("rxlu", [vif_spec(mac(42), ip="10.0.0.42")], up("10.0.0.42") + reach(PEER_IP))
    out = a.done()
    assert f"XR-REACHED {PEER_IP}" in out, out[-2000:]
    if _main_pid() != controller_pid:
        log = sh(["journalctl", "-u", "xvif-ovs-controller", "--no-pager", "-n", "60"], check=False).stdout
        raise AssertionError(f"the controller restarted (or died) over xenstored's live update:\n{log}")
    p = xvif("flows", "--diff", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
