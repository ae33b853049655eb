"""`xvif-ovs controller`: start os-ken with our app, listen where OVS will connect,
take over the bridges, and run until SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import signal
import socket
import sys
import threading
from typing import Any

from ..errors import XvifError
from .config import Config

log = logging.getLogger("xvif_ovs.controller")


def setup_logging(verbose: bool, use_syslog: bool) -> None:
    root = logging.getLogger("xvif_ovs")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(h)
    if use_syslog and os.path.exists("/dev/log"):
        s = logging.handlers.SysLogHandler("/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        s.setFormatter(logging.Formatter("xvif-ovs-controller[%(process)d]: %(message)s"))
        root.addHandler(s)
    logging.getLogger("os_ken").setLevel(logging.WARNING)


class _UnixConn:
    """os-ken's Datapath sets TCP_NODELAY, which a Unix socket refuses; the rest passes through."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def setsockopt(self, level: int, opt: int, value: Any) -> None:
        if level == socket.IPPROTO_TCP:
            return
        self._sock.setsockopt(level, opt, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _serve_datapath(conn: socket.socket, address: str) -> None:
    from os_ken.controller.controller import Datapath

    class UnixDatapath(Datapath):
        def _recv_loop(self) -> None:
            try:
                super()._recv_loop()
            finally:
                # With os-ken's native hub, kill() is a no-op: wake the send loop so that
                # serve() returns and the DEAD state change (a disconnect) is delivered.
                self.send(b"", close_socket=True)

    dp = UnixDatapath(_UnixConn(conn), address)
    try:
        dp.serve()
    except Exception:  # noqa: BLE001 - one broken connection must not take the listener down
        log.exception("OpenFlow connection failed")
    finally:
        dp.close()


def _wake_vswitchd(rundir: str) -> None:
    """Make ovs-vswitchd look at the connection it has just opened to us.

    OVS 3.1 sends its HELLO on a new controller connection and then, in our traces,
    sleeps without polling that socket until something else wakes its main loop:
    about 500 ms later, on an idle switch. A connection to a bridge's management socket
    (which it does poll) wakes it at once; it finds our HELLO and the session starts.
    """
    import glob
    import time

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


class UnixListener:
    """os-ken listens on TCP/TLS only; OVS accepts a socket controller only inside its
    run directory, so we accept there and hand each connection to os-ken's datapath."""

    def __init__(self, path: str) -> None:
        self.path = path
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.inode = os.stat(path).st_ino
        self.sock.listen(64)
        self._stop = False

    def serve(self) -> None:
        from os_ken.lib import hub

        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                break
            hub.spawn(_serve_datapath, conn, f"unix:{self.path}")
            hub.spawn(_wake_vswitchd, os.path.dirname(self.path))

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        # Only our own socket: a successor may already listen at the same path.
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)


def run(cfg: Config, verbose: bool = False, use_syslog: bool = True) -> int:
    setup_logging(verbose, use_syslog)
    from ..compat import quiet_eventlet

    quiet_eventlet()
    from os_ken import cfg as os_ken_cfg
    from os_ken.base.app_manager import AppManager
    from os_ken.controller import ofp_handler
    from os_ken.lib import hub

    from . import app as app_module
    from .runtime import Runtime

    args: list[str] = []
    listener: UnixListener | None = None
    if cfg.listen == "unix":
        listener = UnixListener(cfg.socket_path())

        def start_unix(self: Any) -> Any:
            super(ofp_handler.OFPHandler, self).start()
            return hub.spawn(listener.serve)

        ofp_handler.OFPHandler.start = start_unix  # instead of os-ken's TCP listener
    else:
        kind, _, rest = cfg.listen.partition(":")
        host, _, port = rest.rpartition(":")
        args += ["--ofp-listen-host", host.strip("[]") or "0.0.0.0"]
        args += ["--ofp-tcp-listen-port" if kind == "tcp" else "--ofp-ssl-listen-port", port]
    os_ken_cfg.CONF(args=args, project="os_ken")

    runtime = Runtime(cfg)
    app_module.RUNTIME = runtime
    mgr = AppManager.get_instance()
    mgr.load_apps(["xvif_ovs.controller.app"])
    services = mgr.instantiate_apps(**mgr.create_contexts())
    try:
        runtime.start()
    except XvifError as e:
        log.error("%s", e)
        return 1
    except OSError as e:
        log.error("cannot reach OVSDB: %s", e)
        return 1
    log.info(
        "xvif-ovs controller: OVS connects to %s; managing %s", cfg.target(), ", ".join(cfg.bridges) or "every bridge"
    )

    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down (flows stay in the switch)", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    runtime.stop()
    if listener:
        listener.close()
    for s in list(runtime.sessions.values()):  # end os-ken's receive loops
        with contextlib.suppress(Exception):
            s.dp.socket.close()
    with contextlib.suppress(Exception):  # os-ken 4.2.2's native hub lacks kill(); we are exiting anyway
        mgr.close()
    del services
    logging.shutdown()
    # os-ken's hub threads are not daemons and 4.2.2 cannot kill them: leave without waiting.
    os._exit(0)
