"""The part of os-ken's Datapath that the controller's Session uses, over the CLI's
OpenFlow client (the bridge's management socket): so a test can drive Session against a
real ovs-vswitchd without os-ken's application machinery."""

from __future__ import annotations

import struct
import threading
from typing import Any

from xvif_ovs.errors import XvifError
from xvif_ovs.inspect.openflow import OfClient


class MgmtDatapath:
    def __init__(self, bridge: str) -> None:
        self.client = OfClient(bridge)  # connected, HELLO exchanged
        self.client.sock.settimeout(None)  # the reader below waits as long as the test runs
        self.ofproto, self.ofproto_parser = self.client.ofp, self.client.parser
        self.id = 1
        self.xid = 0
        self.session: Any = None  # gets on_reply/on_error, as the controller's app calls them
        threading.Thread(target=self._loop, daemon=True).start()

    def set_xid(self, msg: Any) -> None:
        self.xid = (self.xid + 1) & self.ofproto.MAX_XID
        msg.set_xid(self.xid)

    def send_msg(self, msg: Any) -> bool:
        msg.serialize()
        return self.send(bytes(msg.buf))

    def send(self, buf: bytes) -> bool:
        try:
            self.client.sock.sendall(buf)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self.client.close()

    def _loop(self) -> None:
        ofp = self.ofproto
        try:
            while True:
                msg = self.client._recv()
                if msg.msg_type == ofp.OFPT_ECHO_REQUEST:
                    self.send(struct.pack("!BBHI", msg.version, ofp.OFPT_ECHO_REPLY, 8, msg.xid))
                elif msg.msg_type == ofp.OFPT_ERROR:
                    self.session.on_error(msg)
                elif msg.msg_type == ofp.OFPT_MULTIPART_REPLY:
                    self.session.on_reply(msg, more=bool(msg.flags & ofp.OFPMPF_REPLY_MORE))
                else:
                    self.session.on_reply(msg)
        except (XvifError, OSError):
            pass  # the connection closed: the test is over
