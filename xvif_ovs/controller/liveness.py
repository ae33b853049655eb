"""Is an OpenFlow connection alive, and who is at the other end?

The runtime asks when a second connection claims the datapath id of a connected switch
(see Runtime.datapath_up): an echo round trip on the old connection tells a switch that
reconnects (the old connection is dead, it does not answer) from a newcomer posing as a
switch that is still connected (the old one answers).
"""

from __future__ import annotations

import contextlib
import random
import time
from typing import Any

PROBE_TIMEOUT = 10.0  # as patient as the reconciler is with any request (session.TIMEOUT)


def closed(dp: Any) -> bool:
    """os-ken has seen the end of this connection (or is tearing it down)."""
    from os_ken.controller.handler import DEAD_DISPATCHER

    return dp.state == DEAD_DISPATCHER or not dp.is_active or dp.send_q is None


def answers(dp: Any, timeout: float | None = None) -> bool:
    """True if the switch behind ``dp`` answers an OpenFlow echo within ``timeout``.

    os-ken's own handler takes echo replies in the connection's receive thread and strikes
    their xid off ``dp.unreplied_echo_requests`` (a list it uses for nothing else unless
    maximum-unreplied-echo-requests is set, and it is not): so this works from any thread
    and whatever the application's event queue is doing. A random xid keeps clear of the
    reconciler's sequence on the same connection."""
    if closed(dp):
        return False
    xid = random.getrandbits(32)
    req = dp.ofproto_parser.OFPEchoRequest(dp, data=b"xvif-ovs: still there?")
    req.set_xid(xid)
    dp.unreplied_echo_requests.append(xid)
    try:
        if not dp.send_msg(req):
            return False
        deadline = time.monotonic() + (PROBE_TIMEOUT if timeout is None else timeout)
        while xid in dp.unreplied_echo_requests:
            if closed(dp) or time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True
    finally:
        with contextlib.suppress(ValueError):
            dp.unreplied_echo_requests.remove(xid)


def describe(dp: Any, bridge: str | None = None) -> str:
    """``bridge xenbr0 at unix:... (pid 123)``: the name is the one the connection gave
    in its handshake (its LOCAL port), unless the caller knows better."""
    if bridge is None:
        with contextlib.suppress(Exception):
            local = (dp.ports or {}).get(dp.ofproto.OFPP_LOCAL)
            name = getattr(local, "name", None)
            bridge = name.decode(errors="replace") if isinstance(name, bytes) else name
    return f"{'bridge ' + bridge if bridge else 'a switch'} at {dp.address}"
