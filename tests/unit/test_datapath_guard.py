"""Runtime.datapath_up: a second connection claiming a connected switch's datapath id
never replaces a live session; a switch whose old connection is dead gets it back.

Stand-ins for os-ken's Datapath: the old connection's switch answers the echo (os-ken's
handler strikes the xid off ``unreplied_echo_requests``), or does not."""

from __future__ import annotations

import threading
import time

import pytest
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER
from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from xvif_ovs.controller import liveness
from xvif_ovs.controller.config import Config
from xvif_ovs.controller.runtime import Runtime

DPID = 0x2A


class FakeDatapath:
    ofproto, ofproto_parser = ofproto_v1_3, ofproto_v1_3_parser

    def __init__(self, address: str, answers: bool = True) -> None:
        self.id = DPID
        self.address = address
        self.answers = answers
        self.state = MAIN_DISPATCHER
        self.is_active = True
        self.send_q: object | None = object()
        self.unreplied_echo_requests: list[int] = []
        self.ports = {}
        self.sent: list[int] = []
        self.xid = 0

    def send_msg(self, msg) -> bool:
        msg.serialize()
        self.sent.append(msg.msg_type)
        if self.answers and msg.msg_type == ofproto_v1_3.OFPT_ECHO_REQUEST:
            # as os-ken's echo_reply_handler does, from the connection's receive thread
            threading.Timer(0.01, self.unreplied_echo_requests.remove, [msg.xid]).start()
        return True

    def close(self) -> None:
        self.state = DEAD_DISPATCHER


@pytest.fixture
def runtime(monkeypatch) -> Runtime:
    monkeypatch.setattr(liveness, "PROBE_TIMEOUT", 0.3)
    return Runtime(Config(bridges=("xenbr0",)))


def queued(rt: Runtime) -> list:
    out = []
    while not rt._queue.empty():
        out.append(rt._queue.get_nowait())
    return out


def settle(cond, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_newcomer_claiming_a_live_switchs_id_is_refused(runtime, caplog):
    old = FakeDatapath("unix:/run/openvswitch/xvif-ovs.sock (pid 100)")
    runtime.datapath_up(old)
    first = runtime.sessions[DPID]
    first.bridge = "xenbr0"
    assert queued(runtime) == [("dp_up", DPID)]
    new = FakeDatapath("unix:/run/openvswitch/xvif-ovs.sock (pid 666)")
    runtime.datapath_up(new)
    settle(lambda: new.state == DEAD_DISPATCHER)  # closed
    assert runtime.sessions[DPID] is first and runtime.session(old) is first and runtime.session(new) is None
    assert old.state == MAIN_DISPATCHER and not first.closed
    assert old.sent == [ofproto_v1_3.OFPT_ECHO_REQUEST] and new.sent == []
    assert queued(runtime) == []
    text = caplog.text
    assert "refused a switch at unix:/run/openvswitch/xvif-ovs.sock (pid 666)" in text
    assert "bridge xenbr0 at unix:/run/openvswitch/xvif-ovs.sock (pid 100) holds" in text
    runtime.datapath_down(new)  # its DEAD: the live session stays
    assert runtime.sessions[DPID] is first


def test_a_switch_whose_old_connection_is_already_closed_takes_over_at_once(runtime):
    old = FakeDatapath("tcp:127.0.0.1:40000")
    runtime.datapath_up(old)
    queued(runtime)
    old.state = DEAD_DISPATCHER  # os-ken saw it end; its DEAD event is not delivered yet
    new = FakeDatapath("tcp:127.0.0.1:40001")
    runtime.datapath_up(new)
    assert runtime.sessions[DPID].dp is new and queued(runtime) == [("dp_up", DPID)]
    assert old.sent == []  # nothing to ask
    runtime.datapath_down(old)  # the late DEAD of the old connection changes nothing
    assert runtime.sessions[DPID].dp is new


def test_a_switch_whose_old_connection_is_silent_takes_over_after_the_probe(runtime, caplog):
    old = FakeDatapath("tcp:127.0.0.1:40000", answers=False)
    runtime.datapath_up(old)
    first = runtime.sessions[DPID]
    queued(runtime)
    new = FakeDatapath("tcp:127.0.0.1:40001")
    runtime.datapath_up(new)
    assert runtime.sessions[DPID] is first  # not before the probe has its answer
    settle(lambda: runtime.sessions[DPID].dp is new)
    assert first.closed and old.state == DEAD_DISPATCHER and new.state == MAIN_DISPATCHER
    assert queued(runtime) == [("dp_up", DPID)]
    assert f"switch {DPID:016x} reconnected" in caplog.text and "did not answer" in caplog.text


def test_a_newcomer_that_goes_away_during_the_probe_gets_nothing(runtime):
    old = FakeDatapath("tcp:127.0.0.1:40000", answers=False)
    runtime.datapath_up(old)
    first = runtime.sessions[DPID]
    new = FakeDatapath("tcp:127.0.0.1:40001")
    runtime.datapath_up(new)
    new.state = DEAD_DISPATCHER
    runtime.datapath_down(new)
    time.sleep(0.6)
    assert runtime.sessions[DPID] is first and not first.closed
