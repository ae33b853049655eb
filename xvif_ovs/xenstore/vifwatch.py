"""Vifs appearing, changing and disappearing in XenStore, as events.

The controller derives its flows from what XenStore says about each vif; a vif whose
mac or ip is rewritten must get new flows without another hotplug run. One XenStore
watch on the backend directory tells which vif changed; the watcher re-reads only that
key of a vif it knows (else that vif) and compares it with what it last saw.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from pyxs import Client
from pyxs.exceptions import ConnectionError, PyXSError  # noqa: A004 - pyxs's, a PyXSError

from .client import list_dir, locate

BACKEND_ROOT = "/local/domain/0/backend/vif"
_VIF_PATH = re.compile(r"^/local/domain/0/backend/vif(?:/(\d+)(?:/(\d+))?)?(?:/.*)?$")
_KEY_PATH = re.compile(r"^/local/domain/0/backend/vif/(\d+)/(\d+)/([^/]+)$")  # a vif's own key
TOKEN = b"xvif-ovs-vifs"
LIVENESS_INTERVAL = 0.2  # seconds between checks that the watch connection is alive


@dataclass(frozen=True)
class VifEvent:
    kind: Literal["added", "changed", "removed"]
    domid: int
    devid: int
    keys: dict[str, str] = field(default_factory=dict)  # the backend node's keys now (empty once removed)
    changed: frozenset[str] = frozenset()  # which keys differ from the last event for this vif

    @property
    def backend(self) -> str:
        return f"{BACKEND_ROOT}/{self.domid}/{self.devid}"


class VifWatcher:
    """Iterate ``events()``; the first events are an ``added`` per existing vif."""

    def __init__(self, socket_path: str | None = None) -> None:
        kwargs = {"unix_socket_path": socket_path} if socket_path else locate()
        self._reader = Client(**kwargs)
        self._watcher = Client(**kwargs)
        self._reader.connect()
        self._watcher.connect()
        self._monitor = self._watcher.monitor()
        self._known: dict[tuple[int, int], dict[str, str]] = {}
        self._watching = False

    def close(self) -> None:
        for c in (self._watcher, self._reader):
            with contextlib.suppress(Exception):  # closing a dead connection
                c.close()

    def __enter__(self) -> VifWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def scan(self) -> dict[tuple[int, int], dict[str, str]]:
        """Every vif now, read at once: a consumer that (re)connects starts from this
        whole picture instead of a stream of adds, then follows ``events()``."""
        self._known = {}
        for _ev in self._resync(BACKEND_ROOT):
            pass
        return dict(self._known)

    def ping(self) -> None:
        """Raise if the XenStore connection is gone (pyxs does not notice on its own)."""
        self._reader.exists(b"/")

    def events(self, timeout: float | None = None) -> Iterator[VifEvent]:
        """Yield events until ``timeout`` seconds pass without one (forever if None).
        Vifs already known (from ``scan()`` or earlier events) are compared, not re-added."""
        if not self._watching:
            self._monitor.watch(BACKEND_ROOT.encode(), TOKEN)
            self._watching = True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = LIVENESS_INTERVAL if deadline is None else min(LIVENESS_INTERVAL, deadline - time.monotonic())
            try:
                path, _token = self._monitor.events.get(timeout=max(0.0, wait))
            except queue.Empty:
                if not self._watcher.router.thread.is_alive():
                    # The watch connection is gone: no event will come. Say so now rather
                    # than be blind until the next ping.
                    raise ConnectionError("XenStore watch connection lost") from None
                if deadline is not None and time.monotonic() >= deadline:
                    return
                continue
            yield from self._resync(path.decode())

    def _resync(self, path: str) -> Iterator[VifEvent]:
        m = _VIF_PATH.match(path)
        if not m:
            return
        k = _KEY_PATH.match(path)
        if k and (int(k.group(1)), int(k.group(2))) in self._known:
            yield from self._compare_key(int(k.group(1)), int(k.group(2)), k.group(3), path)
            return
        if m.group(2) is not None:
            vifs = {(int(m.group(1)), int(m.group(2)))}
        elif m.group(1) is not None:
            domid = int(m.group(1))
            vifs = {v for v in self._known if v[0] == domid} | {
                (domid, d) for d in self._list(f"{BACKEND_ROOT}/{domid}")
            }
        else:  # the root itself: the first event, or the whole tree removed
            vifs = set(self._known) | {
                (int(d), int(n))
                for d in self._list(BACKEND_ROOT)
                if d.isdigit()
                for n in self._list(f"{BACKEND_ROOT}/{d}")
            }
        for domid, devid in sorted(vifs):
            yield from self._compare(domid, devid)

    def _compare_key(self, domid: int, devid: int, key: str, path: str) -> Iterator[VifEvent]:
        """One key of a known vif written: read just that key (one request instead of one
        per key). A key that is gone may mean the whole vif is: then read it all."""
        try:
            value = self._reader.read(path.encode()).decode()
        except PyXSError as e:
            if not gone(e):
                raise
            yield from self._compare(domid, devid)
            return
        before = self._known[(domid, devid)]
        if before.get(key) != value:
            now = {**before, key: value}
            self._known[(domid, devid)] = now
            yield VifEvent("changed", domid, devid, now, frozenset({key}))

    def _compare(self, domid: int, devid: int) -> Iterator[VifEvent]:
        now = self._read_vif(f"{BACKEND_ROOT}/{domid}/{devid}")
        before = self._known.get((domid, devid))
        if now is None:
            if before is not None:
                del self._known[(domid, devid)]
                yield VifEvent("removed", domid, devid, {}, frozenset(before))
            return
        if before is None:
            self._known[(domid, devid)] = now
            yield VifEvent("added", domid, devid, now, frozenset(now))
        elif now != before:
            self._known[(domid, devid)] = now
            diff = {k for k in now.keys() | before.keys() if now.get(k) != before.get(k)}
            yield VifEvent("changed", domid, devid, now, frozenset(diff))

    def _list(self, path: str) -> list[str]:
        try:
            return list_dir(self._reader, path)
        except PyXSError as e:
            if not gone(e):
                raise
            return []

    def _read_vif(self, path: str) -> dict[str, str] | None:
        keys = {}
        try:
            for name in list_dir(self._reader, path):
                try:
                    keys[name] = self._reader.read(f"{path}/{name}".encode()).decode()
                except PyXSError as e:
                    if not gone(e):
                        raise
                    continue  # removed between list and read
        except PyXSError as e:
            if not gone(e):
                raise
            return None
        return keys


def gone(e: PyXSError) -> bool:
    """Only ENOENT means a node is gone. Anything else (the connection lost in the middle
    of a read, EACCES, EIO, an unexpected reply) says nothing about the vif: it is raised,
    and the controller keeps the last known state of every vif and reconnects, instead
    of taking a vif's flows away because a read failed."""
    return bool(e.args) and e.args[0] == errno.ENOENT
