"""A fake OpenFlow 1.3 switch on a raw socket, for what a real ovs-vswitchd will not do:
claim another switch's datapath id, or go silent in the middle of a session."""

from __future__ import annotations

import socket
import struct
import threading
import time

OFPT_HELLO, OFPT_ERROR, OFPT_ECHO_REQUEST, OFPT_ECHO_REPLY = 0, 1, 2, 3
OFPT_FEATURES_REQUEST, OFPT_FEATURES_REPLY = 5, 6
OFPT_MULTIPART_REQUEST, OFPT_MULTIPART_REPLY = 18, 19
OFPMP_PORT_DESC = 13
OFPP_LOCAL = 0xFFFFFFFE


class FakeSwitch:
    """An OpenFlow 1.3 switch that claims a datapath id: HELLO, FEATURES_REPLY and the
    port description (its LOCAL port carries its name), then echo replies, unless silent
    (a connection that is dead at the far end, not yet closed)."""

    def __init__(self, sock: socket.socket, dpid: int, name: str) -> None:
        self.sock = sock
        self.sock.settimeout(15)
        self.dpid, self.name = dpid, name
        self.received: list[int] = []
        self.closed = threading.Event()

    def _recv(self) -> tuple[int, int, bytes]:
        head = self._exact(8)
        _version, kind, length, xid = struct.unpack("!BBHI", head)
        self.received.append(kind)
        return kind, xid, self._exact(length - 8)

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _send(self, kind: int, xid: int, body: bytes = b"") -> None:
        self.sock.sendall(struct.pack("!BBHI", 4, kind, 8 + len(body), xid) + body)

    def handshake(self) -> None:
        self._send(OFPT_HELLO, 1)
        while True:
            kind, xid, body = self._recv()
            if kind == OFPT_FEATURES_REQUEST:
                self._send(OFPT_FEATURES_REPLY, xid, struct.pack("!QIBB2xII", self.dpid, 0, 254, 0, 0, 0))
            elif kind == OFPT_MULTIPART_REQUEST and struct.unpack("!H", body[:2])[0] == OFPMP_PORT_DESC:
                port = struct.pack(
                    "!I4x6s2x16sIIIIIIII", OFPP_LOCAL, b"\x02\0\0\0\xbe\xef", self.name.encode(), 0, 0, 0, 0, 0, 0, 0, 0
                )
                self._send(OFPT_MULTIPART_REPLY, xid, struct.pack("!HH4x", OFPMP_PORT_DESC, 0) + port)
                return  # the controller's side is in MAIN now
            elif kind == OFPT_ECHO_REQUEST:
                self._send(OFPT_ECHO_REPLY, xid, body)

    def answer(self) -> None:
        """Echo replies until the controller closes the connection (in a thread)."""

        def loop() -> None:
            try:
                while True:
                    kind, xid, body = self._recv()
                    if kind == OFPT_ECHO_REQUEST:
                        self._send(OFPT_ECHO_REPLY, xid, body)
            except (EOFError, OSError):
                self.closed.set()

        threading.Thread(target=loop, daemon=True).start()

    def eof(self, timeout: float) -> bool:
        """True if the controller closes the connection within ``timeout`` (reading all)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.05, deadline - time.monotonic()))
                self._recv()
        except TimeoutError:
            return False
        except (EOFError, OSError):
            return True
        return False
