"""Finding and talking to XenStore the way Xen's own tools do.

libxenstore looks at XENSTORED_PATH, then /var/run/xenstored/socket, then the kernel's
xenbus device; doing the same means every xvif-ovs command works on a real dom0 and
on the lab without flags.
"""

from __future__ import annotations

import collections
import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pyxs._internal
import pyxs.client
import pyxs.exceptions
from pyxs import Client
from pyxs._internal import Op
from pyxs.exceptions import PyXSError

from ..errors import XvifError

DEFAULT_SOCKET = "/var/run/xenstored/socket"
XENBUS_DEVICES = ("/dev/xen/xenbus", "/proc/xen/xenbus")

T = TypeVar("T")


class XenStoreUnavailable(XvifError):
    """No XenStore to talk to (xenstored not running, wrong XENSTORED_PATH)."""


def locate() -> dict[str, str]:
    """The pyxs Client keyword arguments for this host's XenStore."""
    env = os.environ.get("XENSTORED_PATH")
    if env:
        return {"unix_socket_path": env}
    if os.path.exists(DEFAULT_SOCKET):
        return {"unix_socket_path": DEFAULT_SOCKET}
    for dev in XENBUS_DEVICES:
        if os.path.exists(dev):
            return {"xen_bus_path": dev}
    raise XenStoreUnavailable(
        f"no XenStore found: XENSTORED_PATH is unset, {DEFAULT_SOCKET} and {XENBUS_DEVICES[0]} do not exist; "
        "start xenstored (or, without Xen, `xvif-ovs lab up` and `eval $(xvif-ovs lab env)`)"
    )


@contextmanager
def connect(socket_path: str | None = None) -> Iterator[Client]:
    kwargs = {"unix_socket_path": socket_path} if socket_path else locate()
    where = next(iter(kwargs.values()))
    try:
        client = Client(**kwargs)
        client.connect()
    except (OSError, PyXSError) as e:
        raise XenStoreUnavailable(f"cannot connect to XenStore at {where}: {e}; is xenstored running?") from e
    try:
        yield client
    finally:
        client.close()


def in_transaction(client: Client, fn: Callable[[Client], T], attempts: int = 20) -> T:
    """Run ``fn`` in a XenStore transaction, retrying on EAGAIN as libxl does."""
    for _ in range(attempts):
        client.transaction()
        try:
            result = fn(client)
        except BaseException:
            if client.tx_id:
                client.rollback()
            raise
        if client.commit():  # False: EAGAIN, a node we touched changed meanwhile
            return result
    raise XenStoreUnavailable(
        f"XenStore transaction kept conflicting ({attempts} attempts); is something rewriting it?"
    )


def read_str(client: Client, path: str, default: str | None = None) -> str | None:
    try:
        return client.read(path.encode()).decode()
    except PyXSError as e:
        if e.args and e.args[0] == errno.ENOENT:
            return default
        raise


def _teach_pyxs_directory_part() -> None:
    """pyxs 0.4.1 predates XS_DIRECTORY_PART (Xen 4.9) and refuses any operation it does
    not know, in both directions. Without it a directory whose names exceed 4096 bytes
    (about 800 domains under backend/vif) cannot be listed: xenstored answers E2BIG, and
    libxenstore would page with DIRECTORY_PART. So we extend pyxs's operation table."""
    ops = pyxs._internal.Op
    if len(ops) > 22 or 22 in ops:
        return
    names = list(ops._fields) + ["RESET_WATCHES", "DIRECTORY_PART"]
    values = list(ops) + [21, 22]
    extended = collections.namedtuple("Operations", names)(*values)
    pyxs._internal.Op = extended  # Packet() checks membership against this module global


_teach_pyxs_directory_part()


class _Lost:
    """The reply of a request whose connection died: reading it raises ConnectionError."""

    def __init__(self, why: str) -> None:
        self.why = why

    @property
    def op(self) -> int:
        raise pyxs.exceptions.ConnectionError(self.why)


def _fail_requests_of_a_dead_connection() -> None:
    """pyxs 0.4.1's router thread ends when the connection breaks, and a request whose
    reply was pending then waits for ever (RVar.get has no timeout): a XenStore server
    restart once hung the controller's XenStore thread, so vif changes stopped reaching
    the flows. Here every pending request, and any sent later, fails with ConnectionError,
    and the caller reconnects."""
    router = pyxs.client.Router
    if getattr(router, "_xvif_patched", False):
        return
    run, send = router.__call__, router.send
    lost = "XenStore connection lost"

    def __call__(self) -> None:  # noqa: ANN001
        try:
            run(self)
        except Exception:  # noqa: BLE001 - reported to every caller below instead of to stderr
            pass
        finally:
            self.xvif_dead = True
            for rvar in list(self.rvars.values()):
                rvar.set(_Lost(lost))
            self.rvars.clear()

    def guarded_send(self, packet):  # noqa: ANN001, ANN202
        if getattr(self, "xvif_dead", False):
            raise pyxs.exceptions.ConnectionError(lost)
        try:
            rvar = send(self, packet)
        except (AttributeError, OSError) as e:
            # pyxs writes the header and the payload separately; if the router thread
            # closes the connection between them, the payload's write meets a transport
            # of None (AttributeError) or a closed descriptor (OSError).
            if self.connection.is_connected and not getattr(self, "xvif_dead", False):
                raise
            self.rvars.pop(packet.rq_id, None)
            raise pyxs.exceptions.ConnectionError(lost) from e
        if getattr(self, "xvif_dead", False):  # it died while we were sending
            rvar.set(_Lost(lost))
        return rvar

    router.__call__, router.send, router._xvif_patched = __call__, guarded_send, True


_fail_requests_of_a_dead_connection()
OP_DIRECTORY_PART = 22


def exists(client: Client, path: str) -> bool:
    """pyxs's exists() lists the node's children, which fails with E2BIG on a big one."""
    return read_str(client, path) is not None


def list_dir(client: Client, path: str) -> list[str]:
    """The children of ``path``, however many: DIRECTORY, then DIRECTORY_PART pages."""
    try:
        return [n.decode() for n in client.list(path.encode())]
    except PyXSError as e:
        if not e.args or e.args[0] != errno.E2BIG:
            raise
    names: list[str] = []
    offset = 0
    while True:
        # execute_command strips the trailing NULs; the last page ends in an extra NUL.
        reply = client.router.send(
            pyxs._internal.Packet(
                OP_DIRECTORY_PART,
                path.encode() + b"\0" + str(offset).encode() + b"\0",
                pyxs._internal.next_rq_id(),
                client.tx_id,
            )
        ).get()
        if reply.op == Op.ERROR:
            raise PyXSError(reply.payload.rstrip(b"\0").decode())
        gen, _, rest = reply.payload.partition(b"\0")
        chunk = [n for n in rest.split(b"\0") if n]
        names += [n.decode() for n in chunk]
        offset += sum(len(n) + 1 for n in chunk)
        if rest.endswith(b"\0\0") or rest in (b"", b"\0") or not chunk:
            return names


def write(client: Client, path: str, value: str | bytes | int) -> None:
    """Write a node; unlike ``Client.write`` this accepts the empty value libxl writes
    to hotplug-status (pyxs refuses empty arguments)."""
    data = value if isinstance(value, bytes) else str(value).encode()
    client.ack(Op.WRITE, path.encode() + b"\0" + data)
