"""`xvif-ovs xenstored`: run the XenStore server in the foreground, as a service would."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from ..instance import AlreadyRunning, unlink_if_ours
from .server import XenStoreServer
from .store import Store

log = logging.getLogger("xvif_ovs.xenstored")


def run(
    socket_path: str,
    pidfile: str | None = None,
    log_file: str | None = None,
    verbose: bool = False,
    state_file: str | None = None,
) -> int:
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger("xvif_ovs")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        asyncio.run(_main(socket_path, pidfile, state_file))
    except AlreadyRunning as e:
        # Not ours to touch: the running server's socket, pidfile and state file stay.
        log.error("%s", e)
        if log_file:
            print(f"xvif-ovs xenstored: {e}", file=sys.stderr)
        return 1
    finally:
        if pidfile:
            _unlink_own_pidfile(pidfile)
    return 0


def _unlink_own_pidfile(pidfile: str) -> None:
    """Only the pidfile that holds our own pid: a refused second instance given the same
    --pidfile must leave the running one's in place."""
    try:
        if Path(pidfile).read_text().strip() == str(os.getpid()):
            Path(pidfile).unlink()
    except (OSError, ValueError):
        pass


async def _main(socket_path: str, pidfile: str | None, state_file: str | None) -> None:
    store = None
    if state_file and Path(state_file).exists():
        # Like a xenstored that survives its own restart (live update): the tree comes back.
        store = Store.load(json.loads(Path(state_file).read_text()))
        log.info("restored %d nodes from %s", len(store), state_file)
    server = XenStoreServer(store)
    await server.start(socket_path)
    if pidfile:
        # Written only once the socket accepts, so a waiter on the pidfile can connect.
        tmp = f"{pidfile}.tmp"
        Path(tmp).write_text(f"{os.getpid()}\n")
        os.replace(tmp, pidfile)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(server.serve_forever())
    await stop.wait()
    log.info("stopping")
    serving.cancel()
    if state_file:
        tmp = f"{state_file}.tmp"
        Path(tmp).write_text(json.dumps(server.store.dump()))
        os.replace(tmp, state_file)
        log.info("saved %d nodes to %s", len(server.store), state_file)
    unlink_if_ours(socket_path, server.socket_inode)  # never a successor's socket
