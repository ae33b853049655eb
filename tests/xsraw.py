"""A bare XenStore wire client for tests that must send what no library would
(malformed, truncated, oversized messages) and see every reply and event as sent."""

from __future__ import annotations

import socket

from xvif_ovs.xenstore.protocol import HEADER, Op, encode


class RawXs:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.req = 0
        self.events: list[tuple[bytes, bytes]] = []

    def close(self) -> None:
        self.sock.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by server")
            buf += chunk
        return buf

    def recv(self) -> tuple[int, int, int, bytes]:
        t, rid, tx, ln = HEADER.unpack(self._recv_exact(HEADER.size))
        return t, rid, tx, self._recv_exact(ln)

    def call(self, op: int, payload: bytes, tx: int = 0) -> tuple[int, bytes]:
        """Send one request; return (type, payload) of its reply, keeping events aside."""
        self.req += 1
        self.sock.sendall(encode(op, self.req, tx, payload))
        while True:
            t, rid, rtx, body = self.recv()
            if t == Op.WATCH_EVENT:
                path, token = body.split(b"\0")[:2]
                self.events.append((path, token))
                continue
            assert rid == self.req, f"reply to request {rid}, expected {self.req}"
            assert rtx == tx
            return t, body

    def ok(self, op: int, payload: bytes, tx: int = 0) -> bytes:
        t, body = self.call(op, payload, tx)
        assert t == op, f"{Op(op).name} failed: {body!r}"
        return body

    def err(self, op: int, payload: bytes, tx: int = 0) -> str:
        t, body = self.call(op, payload, tx)
        assert t == Op.ERROR, f"{Op(op).name} succeeded with {body!r}, expected an error"
        return body.rstrip(b"\0").decode()

    def next_event(self) -> tuple[bytes, bytes]:
        if self.events:
            return self.events.pop(0)
        t, _, _, body = self.recv()
        assert t == Op.WATCH_EVENT, f"expected an event, got type {t}"
        path, token = body.split(b"\0")[:2]
        return path, token
