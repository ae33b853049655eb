"""OVSDB's JSON-RPC (RFC 7047) over a Unix or TCP socket, in the few lines the hook needs.

python-ovs's jsonrpc/stream stack pulls in ssl, vlog, reconnect and poller, about 18 ms
of imports; that is half of the hook's whole run, and libxl waits for every vif. The
protocol itself is back-to-back JSON objects: send a request, read objects until the
reply with our id arrives. The controller, a long-lived process, uses python-ovs.
"""

from __future__ import annotations

import codecs
import json
import socket
from typing import Any


class JsonRpcError(Exception):
    pass


class JsonRpc:
    def __init__(self, remote: str, timeout: float) -> None:
        kind, _, where = remote.partition(":")
        if kind == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = where
        elif kind == "tcp":
            host, _, port = where.rpartition(":")
            self.sock = socket.socket(socket.AF_INET6 if host.startswith("[") else socket.AF_INET)
            address = (host.strip("[]"), int(port))
        else:
            raise JsonRpcError(f"unsupported OVSDB remote {remote!r}: use unix:PATH or tcp:HOST:PORT")
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self._decoder = json.JSONDecoder()
        self._utf8 = codecs.getincrementaldecoder("utf-8")()  # a character may straddle two reads
        self._buf = ""
        self._next_id = 0

    def close(self) -> None:
        self.sock.close()

    def call(self, method: str, params: list[Any]) -> Any:
        self._next_id += 1
        rid = self._next_id
        self.sock.sendall(json.dumps({"id": rid, "method": method, "params": params}).encode())
        while True:
            msg = self._read_message()
            if msg.get("method") == "echo":  # ovsdb-server's keepalive
                self.sock.sendall(json.dumps({"id": msg["id"], "result": msg["params"], "error": None}).encode())
                continue
            if msg.get("id") == rid:
                if msg.get("error") is not None:
                    raise JsonRpcError(str(msg["error"]))
                return msg.get("result")

    def _read_message(self) -> dict[str, Any]:
        while True:
            text = self._buf.lstrip()
            if text:
                try:
                    msg, end = self._decoder.raw_decode(text)
                    self._buf = text[end:]
                    return msg
                except json.JSONDecodeError:
                    pass  # incomplete: read more
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("OVSDB closed the connection")
            self._buf += self._utf8.decode(chunk)
