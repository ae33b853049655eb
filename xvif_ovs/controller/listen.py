"""Where OVS connects: one listener for the Unix socket, TCP and TLS, feeding os-ken.

os-ken's own listener binds in a thread where a failure (the port is taken) is only a
logged traceback, and with TLS it lets a failed handshake escape as one; OVS accepts a
socket controller only inside its run directory, which os-ken cannot listen on at all.
So the controller binds here, before anything else starts (an error stops it at once),
and hands each accepted connection, TLS already verified, to os-ken's Datapath.
"""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import logging
import os
import socket
import ssl
import threading
import time
from typing import Any

from ..instance import bind_unix, peer_pid, unlink_if_ours
from .config import Config

log = logging.getLogger("xvif_ovs.controller")
HANDSHAKE_TIMEOUT = 10.0  # a peer that opens a connection and says nothing holds nothing for long


class _Conn:
    """What os-ken's Datapath sees of a connection.

    Its receive loop retries on every ssl.SSLError (it takes one for a read timeout), so
    a TLS connection that breaks for real would spin forever: here a TLS error is a lost
    connection. And it sets TCP_NODELAY, which a Unix socket refuses."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def setsockopt(self, level: int, opt: int, value: Any) -> None:
        if self._sock.family == socket.AF_UNIX and level == socket.IPPROTO_TCP:
            return
        self._sock.setsockopt(level, opt, value)

    def recv(self, n: int) -> bytes:
        try:
            return self._sock.recv(n)
        except ssl.SSLError as e:
            raise ConnectionResetError(f"TLS: {e}") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def serve_datapath(conn: socket.socket, address: str) -> None:
    """Run os-ken's Datapath on one connection until it closes."""
    from os_ken.controller.controller import Datapath

    class _Datapath(Datapath):
        def _recv_loop(self) -> None:
            try:
                super()._recv_loop()
            finally:
                # With os-ken's native hub, kill() is a no-op: wake the send loop so that
                # serve() returns and the DEAD state change (a disconnect) is delivered.
                self.send(b"", close_socket=True)

    dp = _Datapath(_Conn(conn), address)
    try:
        dp.serve()
    except Exception:  # noqa: BLE001 - one broken connection must not take the listener down
        log.exception("OpenFlow connection from %s failed", address)
    finally:
        dp.close()


def wake_vswitchd(rundir: str) -> None:
    """Make ovs-vswitchd look at the connection it has just opened to us.

    OVS 3.1 sends its HELLO on a new controller connection and then, in our traces,
    sleeps without polling that socket until something else wakes its main loop:
    about 500 ms later, on an idle switch. A connection to a bridge's management socket
    (which it does poll) wakes it at once; it finds our HELLO and the session starts.
    """
    time.sleep(0.01)  # after it has sent its HELLO and gone to sleep
    for path in glob.glob(os.path.join(rundir, "*.mgmt")):
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(path)
            # A whole OpenFlow 1.3 HELLO exchange, then our side ends and we wait for it
            # to close: an abrupt close is a "connection dropped" warning in its log.
            s.recv(256)
            s.sendall(b"\x04\x00\x00\x08\x00\x00\x00\x00")
            s.shutdown(socket.SHUT_WR)
            while s.recv(256):
                pass


class _Throttle:
    """A switch with a bad certificate retries every second: one log line per peer and
    reason a minute, with the number held back since. Bounded by the peers of a minute."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def __call__(self, key: tuple[str, str]) -> int | None:
        """None: stay quiet; else log, and this many were held back."""
        now = time.monotonic()
        with self._lock:
            if len(self._last) > 1024:
                self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
            last, held = self._last.get(key, (None, 0))
            if last is not None and now - last < self.interval:
                self._last[key] = (last, held + 1)
                return None
            self._last[key] = (now, 0)
            return held


def _tls_failure(e: OSError) -> str:
    """certificate verify failed: unable to get local issuer certificate; peer did not
    return a certificate; ... (what the operator fixes, without OpenSSL's file names)."""
    verify = getattr(e, "verify_message", None)
    if verify:
        return f"certificate verify failed: {verify}"
    reason = getattr(e, "reason", None)
    return reason.lower().replace("_", " ") if reason else str(e)


class Listener:
    """The bound, listening socket OVS connects to; ``serve`` accepts until ``close``."""

    def __init__(self, cfg: Config, tls: ssl.SSLContext | None = None) -> None:
        self.rundir = cfg.rundir()
        self.tls = tls
        self.path: str | None = None
        self._inode: int | None = None
        self._stop = False
        self._refusals = _Throttle()
        if cfg.listen == "unix":
            self.path = cfg.socket_path()
            self.sock = bind_unix(self.path, "xvif-ovs controller")
            self._inode = os.stat(self.path).st_ino
            self.name = f"unix:{self.path}"
        else:
            kind, host, port = cfg.endpoint()
            ip = ipaddress.ip_address(host)
            self.sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT, not a live listener
            try:
                self.sock.bind((host, port))
                self.sock.listen(64)
            except OSError:
                self.sock.close()
                raise
            self.name = f"{kind}:{host}:{port}" if ip.version == 4 else f"{kind}:[{host}]:{port}"

    def serve(self) -> None:
        from os_ken.lib import hub

        while not self._stop:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                break
            hub.spawn(self._handle, conn, peer)

    def _handle(self, conn: socket.socket, peer: Any) -> None:
        from os_ken.lib import hub

        if conn.family == socket.AF_UNIX:
            pid = peer_pid(conn)
            address = f"{self.name} (pid {pid})" if pid else self.name
            local = True
        else:
            host, port = peer[0], peer[1]
            kind = "ssl" if self.tls else "tcp"
            address = f"{kind}:[{host}]:{port}" if ":" in host else f"{kind}:{host}:{port}"
            local = ipaddress.ip_address(host.split("%")[0]).is_loopback
        if self.tls is not None:
            conn.settimeout(HANDSHAKE_TIMEOUT)
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as e:
                why = _tls_failure(e)
                held = self._refusals((peer[0], why))
                if held is not None:
                    more = f" ({held} more since the last report)" if held else ""
                    log.warning("refused a TLS connection from %s: %s%s", address, why, more)
                with contextlib.suppress(OSError):
                    conn.close()
                return
        if local:
            hub.spawn(wake_vswitchd, self.rundir)
        serve_datapath(conn, address)

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self.path:
            unlink_if_ours(self.path, self._inode)  # a successor may already listen there
