"""The os-ken application: a thin shim that turns OpenFlow events into Runtime calls.

All decisions live in the runtime and the pure pipeline; this module only knows
os-ken's event names. The Runtime instance is handed over through RUNTIME because
os-ken instantiates apps itself.
"""

from __future__ import annotations

import logging
from typing import Any

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_v1_3

log = logging.getLogger("xvif_ovs.controller")
RUNTIME: Any = None  # set by controller.main before os-ken instantiates the app


class XvifOvsApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runtime = RUNTIME

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state(self, ev: Any) -> None:
        # Up only once os-ken's handshake is over (MAIN): replies to our requests are
        # delivered to MAIN handlers, and one sent earlier could be lost.
        if ev.datapath is None or ev.datapath.id is None:
            return
        if ev.state == MAIN_DISPATCHER:
            self.runtime.datapath_up(ev.datapath)
        else:
            self.runtime.datapath_down(ev.datapath)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev: Any) -> None:
        self.runtime.port_status(ev.msg.datapath, ev.msg)

    @set_ev_cls(
        [
            ofp_event.EventOFPPortDescStatsReply,
            ofp_event.EventOFPFlowStatsReply,
            ofp_event.EventOFPAggregateStatsReply,
            ofp_event.EventOFPGroupDescStatsReply,
            ofp_event.EventOFPPortStatsReply,
            ofp_event.EventOFPTableStatsReply,
        ],
        MAIN_DISPATCHER,
    )
    def _multipart(self, ev: Any) -> None:
        msg = ev.msg
        s = self.runtime.session(msg.datapath)
        if s:
            s.on_reply(msg, more=bool(msg.flags & msg.datapath.ofproto.OFPMPF_REPLY_MORE))

    @set_ev_cls([ofp_event.EventONFBundleCtrlMsg, ofp_event.EventOFPBarrierReply], MAIN_DISPATCHER)
    def _reply(self, ev: Any) -> None:
        s = self.runtime.session(ev.msg.datapath)
        if s:
            s.on_reply(ev.msg)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev: Any) -> None:
        self.runtime.packet_in(ev.msg.datapath, ev.msg)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev: Any) -> None:
        s = self.runtime.session(ev.msg.datapath)
        if s:
            s.on_error(ev.msg)
        else:
            log.error("OpenFlow error from %s: type %s code %s", ev.msg.datapath.id, ev.msg.type, ev.msg.code)
