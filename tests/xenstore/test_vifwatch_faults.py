"""Only ENOENT means a vif is gone: a XenStore failure in the middle of a scan, a watch
event or a read is raised (the controller then keeps what it knew and reconnects), never
turned into a vif removed or a partial picture. The server is the project's, on its
socket; the failures are injected into the watcher's reading connection."""

from __future__ import annotations

import errno

import pytest
from pyxs import Client
from pyxs.exceptions import ConnectionError as XsConnectionError
from pyxs.exceptions import PyXSError

from xvif_ovs.xenstore.vifwatch import BACKEND_ROOT, VifWatcher


def write_vif(c: Client, domid: int, **keys: str) -> None:
    for k, v in {"mac": f"00:16:3e:00:00:{domid:02x}", "bridge": "xenbr0", **keys}.items():
        c.write(f"{BACKEND_ROOT}/{domid}/0/{k}".encode(), v.encode())


@pytest.fixture
def store(xenstored):
    with Client(unix_socket_path=str(xenstored.socket)) as c:
        for d in (5, 6, 7):
            write_vif(c, d, ip=f"192.0.2.{d}")
        yield c
        c.delete(BACKEND_ROOT.encode())


class Faulty:
    """The watcher's reader, failing (with ``error``) from the ``after``-th call on."""

    def __init__(self, reader: Client, after: int, error: Exception) -> None:
        self.reader, self.after, self.error, self.calls = reader, after, error, 0

    def _call(self, name: str, *args):  # noqa: ANN202
        self.calls += 1
        if self.calls > self.after:
            raise self.error
        return getattr(self.reader, name)(*args)

    def read(self, path: bytes) -> bytes:
        return self._call("read", path)

    def list(self, path: bytes) -> list[bytes]:
        return self._call("list", path)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.reader, name)


FAILURES = [
    XsConnectionError("connection lost"),
    PyXSError(errno.EACCES, "Permission denied"),
    PyXSError(errno.EIO, "I/O error"),
]


@pytest.mark.parametrize("error", FAILURES, ids=["lost", "EACCES", "EIO"])
@pytest.mark.parametrize("after", [0, 1, 3, 7])
def test_a_scan_that_fails_part_way_raises_instead_of_returning_part(xenstored, store, error, after):
    with VifWatcher(str(xenstored.socket)) as w:
        w._reader = Faulty(w._reader, after, error)
        with pytest.raises(PyXSError):
            w.scan()


@pytest.mark.parametrize("error", FAILURES, ids=["lost", "EACCES", "EIO"])
@pytest.mark.parametrize("after", [0, 1, 2, 5])
def test_a_read_that_fails_during_events_is_no_removal(xenstored, store, error, after):
    with VifWatcher(str(xenstored.socket)) as w:
        assert set(w.scan()) == {(5, 0), (6, 0), (7, 0)}
        seen = []
        store.write(f"{BACKEND_ROOT}/6/0/ip".encode(), b"192.0.2.66")  # a key of a known vif
        store.write(f"{BACKEND_ROOT}/8/0/mac".encode(), b"00:16:3e:00:00:08")  # a new vif
        store.delete(f"{BACKEND_ROOT}/7/0/bridge".encode())  # a known vif losing a key
        w._reader = Faulty(w._reader, after, error)
        with pytest.raises(PyXSError):
            for ev in w.events(timeout=1.0):
                seen.append(ev)
        assert all(ev.kind != "removed" for ev in seen), seen
        assert {(ev.domid, ev.devid) for ev in seen} <= {(5, 0), (6, 0), (7, 0), (8, 0)}


def test_only_enoent_removes_a_vif(xenstored, store):
    with VifWatcher(str(xenstored.socket)) as w:
        w.scan()
        store.delete(f"{BACKEND_ROOT}/7".encode())
        events = list(w.events(timeout=1.0))
        assert [(e.kind, e.domid) for e in events if e.kind == "removed"] == [("removed", 7)]


def test_a_request_pending_when_the_connection_dies_fails_instead_of_waiting_for_ever(tmp_path):
    """pyxs alone leaves such a request blocked for ever (xenstore/client.py patches it):
    a server that takes the request and closes without answering."""
    import socket
    import threading

    import xvif_ovs.xenstore.client  # noqa: F401 - the patch

    path = str(tmp_path / "mute.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    result: list = []

    def ask() -> None:
        try:
            with Client(unix_socket_path=path) as c:
                c.read(b"/local/domain/0/name")
        except Exception as e:  # noqa: BLE001
            result.append(e)

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    conn, _ = server.accept()
    assert conn.recv(16)  # the request's header arrived; no reply will
    conn.close()
    server.close()
    t.join(10)
    assert not t.is_alive(), "the request is still waiting for a reply that cannot come"
    assert result and isinstance(result[0], XsConnectionError)


def test_a_connection_that_dies_between_header_and_payload_fails_with_connection_error(tmp_path):
    """pyxs writes a request's header and payload separately; when the router thread
    closes the connection in between (the server hung up after the header), the payload's
    write used to meet a transport of None and raise AttributeError (CI saw it once)."""
    import socket

    import xvif_ovs.xenstore.client  # noqa: F401 - the patch

    path = str(tmp_path / "mute.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    client = Client(unix_socket_path=path)
    client.connect()
    try:
        connection = client.router.connection
        transport = connection.transport
        real_send = transport.send

        def send_then_lose(data: bytes) -> None:
            real_send(data)
            connection.close()  # what the router thread's finally does when the peer hangs up

        transport.send = send_then_lose
        with pytest.raises(XsConnectionError):
            client.read(b"/local/domain/0/name")
        assert client.router.rvars == {}, "the failed request's reply slot is left behind"
    finally:
        server.close()
        client.close()
