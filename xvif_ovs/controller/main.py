"""`xvif-ovs controller`: start os-ken with our app, listen where OVS will connect,
take over the bridges, and run until SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import signal
import sys
from typing import Any

from ..errors import XvifError
from ..instance import AlreadyRunning, PidLock
from .config import Config, ConfigError, url_host
from .listen import Listener
from .logtags import GuestTags, JournalFormatter, stderr_is_journal

log = logging.getLogger("xvif_ovs.controller")


def setup_logging(verbose: bool, use_syslog: bool) -> None:
    root = logging.getLogger("xvif_ovs")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    h = logging.StreamHandler(sys.stderr)
    journal = stderr_is_journal()
    h.setFormatter(
        JournalFormatter("%(message)s") if journal else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    root.addHandler(h)
    # Under systemd stderr is the journal already (with the unit's name): syslog would
    # put every line there twice.
    if use_syslog and not journal and os.path.exists("/dev/log"):
        s = logging.handlers.SysLogHandler("/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        s.setFormatter(logging.Formatter("xvif-ovs-controller[%(process)d]: %(message)s"))
        root.addHandler(s)
    logging.getLogger("os_ken").setLevel(logging.WARNING)


def run(cfg: Config, verbose: bool = False, use_syslog: bool = True) -> int:
    setup_logging(verbose, use_syslog)
    from ..compat import quiet_eventlet

    quiet_eventlet()
    try:
        tls = cfg.tls.context() if cfg.tls and cfg.listen.startswith("ssl:") else None
    except ConfigError as e:
        log.error("%s", e)
        return 2
    # One per host, before anything is bound or taken over: a second controller would
    # fight the first over every flow. The lock dies with the process, however it dies.
    lock = PidLock(cfg.pidfile(), "xvif-ovs controller")
    try:
        lock.acquire()
        listener = Listener(cfg, tls)
    except AlreadyRunning as e:
        log.error("%s", e)
        lock.release()
        return 1
    except OSError as e:
        log.error("cannot listen on %s: %s", cfg.listen if cfg.listen != "unix" else cfg.socket_path(), e.strerror or e)
        lock.release()
        return 1
    if cfg.remote_listen() and not tls:
        log.warning(
            "listening on %s without TLS (allow_remote_listen = true): anyone who reaches it can pose as a "
            "switch; use ssl: with an [ssl] section",
            listener.name,
        )

    from os_ken import cfg as os_ken_cfg
    from os_ken.base.app_manager import AppManager
    from os_ken.controller import ofp_handler
    from os_ken.lib import hub

    from . import app as app_module
    from .runtime import Runtime

    def start_listener(self: Any) -> Any:
        super(ofp_handler.OFPHandler, self).start()
        return hub.spawn(listener.serve)

    ofp_handler.OFPHandler.start = start_listener  # instead of os-ken's own listener
    os_ken_cfg.CONF(args=[], project="os_ken")

    runtime = Runtime(cfg)
    for h in logging.getLogger("xvif_ovs").handlers:
        h.addFilter(GuestTags(runtime.names.get))
    if cfg.metrics is not None:
        try:
            runtime.metrics.serve()
        except OSError as e:
            log.error(
                "cannot serve metrics on %s:%d ([metrics] listen): %s",
                cfg.metrics.host,
                cfg.metrics.port,
                e.strerror or e,
            )
            return _exit(listener, lock, 1)
    # Before anything starts: a `systemctl reload` while it does must not end the process.
    signal.signal(signal.SIGHUP, lambda _s, _f: runtime.reload_rules())
    app_module.RUNTIME = runtime
    mgr = AppManager.get_instance()
    mgr.load_apps(["xvif_ovs.controller.app"])
    services = mgr.instantiate_apps(**mgr.create_contexts())
    try:
        runtime.start()
    except XvifError as e:
        log.error("%s", e)
        return _exit(listener, lock, 1)
    except OSError as e:
        log.error("cannot reach OVSDB: %s", e)
        return _exit(listener, lock, 1)
    log.info(
        "xvif-ovs controller (pid %d): OVS connects to %s; managing %s",
        os.getpid(),
        cfg.target(),
        ", ".join(cfg.bridges) or "no bridge",
    )
    if cfg.metrics is not None:
        log.info("metrics: http://%s:%d/metrics", url_host(cfg.metrics.host), cfg.metrics.port)

    done = runtime.done  # set by a signal, or by a thread of the runtime that died

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down (flows stay in the switch)", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    runtime.stop()
    for s in list(runtime.sessions.values()):  # end os-ken's receive loops
        with contextlib.suppress(Exception):
            s.dp.socket.close()
    with contextlib.suppress(Exception):  # os-ken 4.2.2's native hub lacks kill(); we are exiting anyway
        mgr.close()
    del services
    if runtime.failed:
        # A dead thread would leave the controller half-working (no OVSDB changes, or no
        # XenStore ones) while systemd sees it running: exit, and Restart= brings a new
        # one, which by design changes nothing in the switch.
        log.critical("exiting: %s", runtime.failed)
        return _exit(listener, lock, 1)
    return _exit(listener, lock, 0)


def _exit(listener: Listener, lock: PidLock, code: int) -> int:
    listener.close()
    lock.release()
    logging.shutdown()
    # os-ken's hub threads are not daemons and 4.2.2 cannot kill them: leave without waiting.
    os._exit(code)
