"""A thread the controller cannot work without that dies ends the process (systemd then
restarts it, which changes nothing in the switch) instead of leaving it half-working."""

from __future__ import annotations

import threading

from xvif_ovs.controller.config import load
from xvif_ovs.controller.ovsdb_monitor import OvsdbMonitor
from xvif_ovs.controller.runtime import Runtime


def test_a_dead_runtime_thread_ends_the_controller():
    rt = Runtime(load(None))

    def broken() -> None:
        raise SystemError("error return without exception set")  # as python-ovs once raised

    t = threading.Thread(target=rt.guarded(broken, "xenstore"))
    t.start()
    t.join(5)
    assert rt.done.is_set() and rt.failed and "thread xenstore died: SystemError" in rt.failed


def test_a_dead_ovsdb_monitor_ends_the_controller():
    died: list[str] = []
    m = OvsdbMonitor.__new__(OvsdbMonitor)  # no OVSDB: only the thread's guard is under test
    m._stop, m.die = threading.Event(), died.append

    def broken() -> None:
        raise SystemError("error return without exception set")

    m._loop = broken
    m._run()
    assert died and "the OVSDB monitor failed: SystemError" in died[0]
    m._stop.set()  # a stop is no failure
    died.clear()
    m._run()
    assert not died
