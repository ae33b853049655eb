"""An OpenFlow 1.3 connection to a bridge's management socket that looks like the part
of os-ken's Datapath the controller's Session uses: so a test can drive Session against
a real ovs-vswitchd without os-ken's application machinery."""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

from xvif_ovs.compat import quiet_eventlet

quiet_eventlet()
from os_ken.ofproto import ofproto_parser, ofproto_v1_3, ofproto_v1_3_parser  # noqa: E402


class MgmtDatapath:
    ofproto = ofproto_v1_3
    ofproto_parser = ofproto_v1_3_parser

    def __init__(self, path: str) -> None:
        self.id = 1
        self.xid = 0
        self.session: Any = None  # gets on_reply/on_error, as the controller's app calls them
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        hello = self.ofproto_parser.OFPHello(self)
        hello.set_xid(0)
        hello.serialize()
        self.sock.sendall(hello.buf)
        assert self._read()[1] == self.ofproto.OFPT_HELLO
        self._reader = threading.Thread(target=self._loop, daemon=True)
        self._reader.start()

    def set_xid(self, msg: Any) -> None:
        self.xid = (self.xid + 1) & self.ofproto.MAX_XID
        msg.set_xid(self.xid)

    def send_msg(self, msg: Any) -> bool:
        msg.serialize()
        return self.send(bytes(msg.buf))

    def send(self, buf: bytes) -> bool:
        try:
            self.sock.sendall(buf)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()

    def _read(self) -> tuple[int, int, int, int, bytes]:
        head = self._exactly(8)
        version, msg_type, length, xid = struct.unpack("!BBHI", head)
        return version, msg_type, length, xid, head + self._exactly(length - 8)

    def _exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _loop(self) -> None:
        ofp = self.ofproto
        try:
            while True:
                version, msg_type, length, xid, buf = self._read()
                if msg_type == ofp.OFPT_ECHO_REQUEST:
                    self.send(struct.pack("!BBHI", version, ofp.OFPT_ECHO_REPLY, 8, xid) + buf[8:])
                    continue
                msg = ofproto_parser.msg(self, version, msg_type, length, xid, buf)
                if msg_type == ofp.OFPT_ERROR:
                    self.session.on_error(msg)
                elif msg_type == ofp.OFPT_MULTIPART_REPLY:
                    self.session.on_reply(msg, more=bool(msg.flags & ofp.OFPMPF_REPLY_MORE))
                else:
                    self.session.on_reply(msg)
        except (EOFError, OSError):
            pass
