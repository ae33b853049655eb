"""A read-only OpenFlow 1.3 client for the CLI: the bridge's management socket
(OVS_RUNDIR/BRIDGE.mgmt, the one ovs-ofctl uses), os-ken's message parser, and the
flows decoded into the same Flow values the controller installs, so `xvif-ovs flows`
prints exactly what is in the switch, in the controller's own rendering."""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from ..errors import XvifError

OFP_HEADER = struct.Struct("!BBHI")


class OpenFlowUnavailable(XvifError):
    """The bridge's OpenFlow management socket cannot be reached."""


@dataclass
class FlowStat:
    flow: Any  # pipeline.flow.Flow
    packets: int
    bytes: int
    duration: float


def mgmt_socket(bridge: str) -> str:
    rundir = os.environ.get("OVS_RUNDIR", "/var/run/openvswitch")
    return f"{rundir}/{bridge}.mgmt"


class OfClient:
    def __init__(self, bridge: str, timeout: float = 10.0) -> None:
        from ..compat import quiet_eventlet

        quiet_eventlet()
        from os_ken.ofproto import ofproto_protocol, ofproto_v1_3, ofproto_v1_3_parser

        self.ofp, self.parser = ofproto_v1_3, ofproto_v1_3_parser
        self.dp = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION)
        path = mgmt_socket(bridge)
        self.bridge = bridge
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            raise OpenFlowUnavailable(
                f"cannot open {path} ({e.strerror}): is {bridge} a bridge of a running ovs-vswitchd? (set OVS_RUNDIR)"
            ) from None
        self._xid = 0x78000000
        hello = self.parser.OFPHello(self.dp)
        self._send(hello)
        msg = self._recv()
        if msg.msg_type != self.ofp.OFPT_HELLO:
            raise OpenFlowUnavailable(f"{bridge} did not say hello")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> OfClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, msg: Any) -> int:
        self._xid += 1
        msg.set_xid(self._xid)
        msg.serialize()
        self.sock.sendall(bytes(msg.buf))
        return self._xid

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise OpenFlowUnavailable(f"{self.bridge} closed the OpenFlow connection")
            buf += chunk
        return buf

    def _recv(self) -> Any:
        from os_ken.ofproto import ofproto_parser

        head = self._recv_exact(OFP_HEADER.size)
        version, msg_type, length, xid = OFP_HEADER.unpack(head)
        body = self._recv_exact(length - OFP_HEADER.size)
        return ofproto_parser.msg(self.dp, version, msg_type, length, xid, head + body)

    def multipart(self, req: Any) -> list[Any]:
        xid = self._send(req)
        out = []
        while True:
            msg = self._recv()
            if msg.xid != xid:
                continue  # echo requests and the like
            if msg.msg_type == self.ofp.OFPT_ERROR:
                raise OpenFlowUnavailable(f"{self.bridge} refused the request: type {msg.type} code {msg.code}")
            out += msg.body
            if not msg.flags & self.ofp.OFPMPF_REPLY_MORE:
                return out

    def flows(self, cookie: int = 0, mask: int = 0) -> list[FlowStat]:
        from ..controller.ofmsg import flow_from_stats

        p, ofp = self.parser, self.ofp
        req = p.OFPFlowStatsRequest(self.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, cookie, mask, p.OFPMatch())
        return [
            FlowStat(flow_from_stats(ofp, s), s.packet_count, s.byte_count, s.duration_sec + s.duration_nsec / 1e9)
            for s in self.multipart(req)
        ]

    def groups(self) -> list[Any]:
        from ..controller.ofmsg import group_from_desc

        return [group_from_desc(self.ofp, d) for d in self.multipart(self.parser.OFPGroupDescStatsRequest(self.dp, 0))]

    def ports(self) -> dict[str, tuple[int, bool]]:
        ofp = self.ofp
        out = {}
        for p in self.multipart(self.parser.OFPPortDescStatsRequest(self.dp, 0)):
            name = p.name.decode() if isinstance(p.name, bytes) else p.name
            out[name] = (p.port_no, not (p.state & ofp.OFPPS_LINK_DOWN) and not (p.config & ofp.OFPPC_PORT_DOWN))
        return out
