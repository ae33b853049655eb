"""The real-Xen suite: runs inside dom0 of a real Xen 4.17 host booted in QEMU, reported on
the host as if it had run here.

On the host (the normal `pytest`), the tests in this directory are collected and marked
`realxen`. They run only when asked (`make xen-test`, `deploy/setup.sh xen-test`, or
XVIF_REALXEN=1): then the first of them boots the VM once for the session through
deploy/xen-vm/run.sh, which runs this same directory with pytest inside dom0, and each host
item takes the result its twin had inside (pass, fail with the failure text from dom0,
skip). When not asked, or when the VM cannot run, the last lines of the output say that
the real-Xen suite did not run and why: it is never skipped silently.

Inside dom0 (XVIF_REALXEN_INSIDE=1, set by deploy/xen-vm/inside.sh), the fixtures below
drive the real host: `xl create` of PV guests with busybox initramfs, OVSDB, XenStore and
the xvif-ovs controller as installed by deploy/install-host.sh.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
INSIDE = os.environ.get("XVIF_REALXEN_INSIDE") == "1"
REQUESTED = os.environ.get("XVIF_REALXEN", "") not in ("", "0")


def pytest_configure(config):
    config.addinivalue_line("markers", "realxen: runs inside dom0 of a real Xen host booted in QEMU (make xen-test)")


def pytest_collection_modifyitems(session, config, items):
    mine = [i for i in items if Path(str(i.fspath)).resolve().is_relative_to(HERE)]
    for item in mine:
        item.add_marker(pytest.mark.realxen)
    if INSIDE or not mine:
        return
    state = config.stash.setdefault(_STATE, {})
    state["count"] = len(mine)
    if not REQUESTED:
        # Not asked for: deselected here, and said so in the last lines (never silent).
        config.hook.pytest_deselected(items=mine)
        items[:] = [i for i in items if i not in mine]
        state["not_run"] = "not requested (run `make xen-test`, or set XVIF_REALXEN=1)"


_STATE = pytest.StashKey[dict]()


# -- on the host: one VM run per session, each item gets its twin's result ----------


def _host_run(config) -> dict:
    state = config.stash.setdefault(_STATE, {})
    if "results" in state:
        return state
    state["results"] = {}
    out = Path(os.environ.get("XVIF_REALXEN_OUT", f"/tmp/xvif-realxen/{time.strftime('%Y%m%d-%H%M%S')}"))
    state["out"] = out
    runner = os.environ.get("XVIF_REALXEN_RUNNER", str(REPO / "deploy/xen-vm/run.sh"))  # another: to test this
    args = [runner, "--out", str(out), "--"]
    args += state.get("inside_args", [])
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr:
        tr.write_line("")
        tr.write_line(f"real-Xen: booting Xen 4.17 in QEMU and running tests/realxen inside dom0 (results in {out})")
    start = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if tr and (line.startswith("xen-vm:") or line.startswith("build-image:")):
            tr.write_line(f"real-Xen: {line.rstrip()}")
    rc = proc.wait()
    state["seconds"] = time.monotonic() - start
    results = {}
    try:
        for line in (out / "results.jsonl").read_text().splitlines():
            r = json.loads(line)
            results.setdefault(r["nodeid"], []).append(r)
    except (OSError, ValueError):
        pass
    state["results"] = results
    if not results:
        why = (
            (out / "not-run").read_text().strip() if (out / "not-run").exists() else f"{Path(runner).name} exited {rc}"
        )
        state["not_run"] = why
    state["rc"] = rc
    return state


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if INSIDE:
        return None
    state = _host_run(pyfuncitem.config)
    if "not_run" in state:
        pytest.fail(f"the real-Xen suite did not run: {state['not_run']}", pytrace=False)
    phases = state["results"].get(pyfuncitem.nodeid)
    if not phases:
        pytest.fail(
            f"no result from dom0 for {pyfuncitem.nodeid} (see {state['out']}/pytest.log, inside.log)", pytrace=False
        )
    for r in phases:
        if r["outcome"] == "failed":
            pytest.fail(f"in dom0 ({r['when']}):\n{r['longrepr']}", pytrace=False)
    for r in phases:
        if r["outcome"] == "skipped":
            pytest.skip(f"in dom0: {r['longrepr']}")
    return True


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # outermost: after pytest's short summary
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    yield
    if INSIDE:
        return
    state = config.stash.get(_STATE, {})
    if not state.get("count"):
        return
    tr = terminalreporter
    tr.section("real-Xen suite (tests/realxen)")
    if "not_run" in state:
        tr.write_line(
            f"the real-Xen suite ({state['count']} tests) did NOT run: {state['not_run']}", red=True, bold=True
        )
    elif "results" in state:
        n = len(state["results"])
        tr.write_line(
            f"the real-Xen suite ran inside dom0 of Xen 4.17 in QEMU: {n} test(s) reported, "
            f"VM run {state['seconds']:.0f} s, logs in {state['out']}"
        )
        reruns = [r for rs in state["results"].values() for r in rs if r["when"] == "rerun"]
        for r in reruns:
            tr.write_line(f"run again in dom0 after an emulation fault: {r['nodeid']}: {r['longrepr']}", yellow=True)


# -- inside dom0: results for the host, one JSON line per test phase -------------------

RERUNS = 2  # a test that failed on an emulation fault runs at most this many times more


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Inside dom0: a test that failed because the emulated host corrupted a process
    (dom0.EMULATION_FAULTS: a segfault of busybox in a guest or of a program in dom0, ld.so
    finding its own libraries inconsistent) runs again, up to RERUNS times; any other failure
    stands at once. Each rerun is recorded and printed on the host, never hidden."""
    if not INSIDE:
        return None
    import dom0
    from _pytest.runner import runtestprotocol

    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for attempt in range(1, RERUNS + 2):
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        failed = [r.longreprtext for r in reports if r.failed]
        fault = next((sig for text in failed for sig in dom0.EMULATION_FAULTS if sig in text), None)
        if fault is None or attempt > RERUNS:
            break
        _record(item.nodeid, "rerun", "rerun", 0.0, f"attempt {attempt} failed on {fault!r}")
        _forget_failed_fixtures(item)
        _to_console(f"XVIF-REALXEN RERUN {item.nodeid}: attempt {attempt} failed on {fault!r}:\n{failed[0][-2000:]}\n")
    for r in reports:
        item.ihook.pytest_runtest_logreport(report=r)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _forget_failed_fixtures(item) -> None:
    """pytest keeps a session fixture's exception and raises it again for every test that
    asks for it: one emulation fault while the session's peer guest booted would fail
    every test after it. The rerun makes such a fixture again (pytest 7 to 9 keep
    (result, key, exception) in FixtureDef.cached_result, and its finalizers in
    FixtureDef._finalizers: private, and tested in tests/unit/test_realxen_reruns.py)."""
    for defs in item._fixtureinfo.name2fixturedefs.values():
        for fixturedef in defs:
            cached = getattr(fixturedef, "cached_result", None)
            if cached is not None and cached[2] is not None:
                # A fixture that raised has nothing to tear down: only the bookkeeping
                # pytest added for it goes (its list of finalizers, the cached exception).
                fixturedef._finalizers.clear()
                fixturedef.cached_result = None


def _record(nodeid: str, when: str, outcome: str, duration: float, text: str) -> None:
    path = os.environ.get("XVIF_REALXEN_RESULTS")
    if path:
        rec = {"nodeid": nodeid, "when": when, "outcome": outcome, "duration": duration, "longrepr": text}
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def _to_console(text: str) -> None:
    """At once on dom0's console (the host's serial.log), not only in the summary at the end."""
    try:
        with open("/dev/console", "w") as con:
            con.write(text)
    except OSError:
        pass


def pytest_runtest_logreport(report):
    if not INSIDE:
        return
    _record(report.nodeid, report.when, report.outcome, report.duration, report.longreprtext)
    if report.failed:
        _to_console(f"XVIF-REALXEN FAILED {report.nodeid} ({report.when}):\n{report.longreprtext[-3000:]}\n")


# -- fixtures: the real host inside dom0; None on the host (the item takes dom0's result) --


@pytest.fixture(scope="session")
def xenhost():
    """dom0 ready for guests: xenbr0 on the kernel datapath, the guests' initramfs built."""
    if not INSIDE:
        yield None
        return
    import dom0

    dom0.WORK.mkdir(parents=True, exist_ok=True)
    dom0.ensure_bridge("xenbr0")
    dom0.CONSOLE_DIR.mkdir(parents=True, exist_ok=True)  # xenconsoled does not make it
    dom0.extract_vmlinux(dom0.KERNEL)
    initrd = dom0.build_initramfs(dom0.WORK / "guest-initrd.gz")
    yield initrd


@pytest.fixture
def guests(xenhost):
    """Makes PV guests with `xl create` for one test; destroys them after it."""
    if not INSIDE:
        yield None
        return
    import dom0

    g = dom0.Guests(xenhost)
    yield g
    g.cleanup()


@pytest.fixture(scope="session")
def session_guests(xenhost):
    """Guests that live for the whole session (the peer every module talks to)."""
    if not INSIDE:
        yield None
        return
    import dom0

    g = dom0.Guests(xenhost)
    yield g
    g.cleanup()


@pytest.fixture(scope="session")
def controller(xenhost):
    """The xvif-ovs controller as its systemd unit runs it (installed by deploy/install-host.sh),
    connected to xenbr0; from the first test that needs it to the end of the session (its
    start costs tens of seconds under TCG)."""
    if not INSIDE:
        yield None
        return
    import dom0

    # The operator's config: xenbr0 managed, one guest name private (test_xen_controller),
    # metrics on loopback (test_xen_observe).
    Path("/etc/xvif-ovs/controller.toml").write_text(
        '[controller]\nlisten = "unix"\nbridges = ["xenbr0"]\n\n[vifs]\nprivate = ["rxprivate"]\n\n'
        '[metrics]\nlisten = "9876"\n'
    )
    dom0.sh(["systemctl", "start", "xvif-ovs-controller"])
    try:
        dom0.wait_for("the controller to connect to xenbr0", dom0.controller_connected, timeout=120)
        yield "xvif-ovs-controller"
    finally:
        status = dom0.sh(["systemctl", "is-active", "xvif-ovs-controller"], check=False).stdout.strip()
        dom0.sh(["systemctl", "stop", "xvif-ovs-controller"], check=False)
        journal = dom0.sh(["journalctl", "-u", "xvif-ovs-controller", "--no-pager", "-n", "40"], check=False).stdout
        assert status == "active", f"the controller was {status} at the end of the session:\n{journal}"


@pytest.fixture(scope="session")
def peer(controller, session_guests):
    """A guest at 10.0.0.20 on xenbr0 (PEER_IP) that the other guests talk to."""
    if not INSIDE:
        return None
    import dom0

    return session_guests.create_ready(
        "rxpeer", [dom0.vif_spec(dom0.mac(20), ip=dom0.PEER_IP)], dom0.up(dom0.PEER_IP) + "echo XR-READY\n", "^XR-READY"
    )


@pytest.fixture
def lan(controller):
    """A LAN behind xenbr0: a veth declared an uplink (Port external_ids:xvif-uplink=true,
    as an operator declares a port that is not a physical NIC), its far end in a
    namespace at 10.0.0.1."""
    if not INSIDE:
        yield None
        return
    import dom0

    dom0.sh("ip netns add rxlan && ip link add xr-lan0 type veth peer name xr-lan1 netns rxlan")
    dom0.sh("ip -n rxlan addr add 10.0.0.1/24 dev xr-lan1 && ip -n rxlan link set xr-lan1 up && ip link set xr-lan0 up")
    dom0.sh(
        ["ovs-vsctl", "add-port", "xenbr0", "xr-lan0", "--", "set", "Port", "xr-lan0", "external_ids:xvif-uplink=true"]
    )
    try:
        yield "rxlan"
    finally:
        dom0.sh(["ovs-vsctl", "--if-exists", "del-port", "xenbr0", "xr-lan0"], check=False)
        dom0.sh("ip link del xr-lan0; ip netns del rxlan", check=False)
