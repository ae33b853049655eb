"""Conformance against pyxs, the Python client the hook and controller use."""

from __future__ import annotations

import threading

import pytest
from pyxs import Client
from pyxs.exceptions import PyXSError

from xvif_ovs.xenstore.client import in_transaction, write


@pytest.fixture
def client(xenstored):
    with Client(unix_socket_path=str(xenstored.socket)) as c:
        yield c


def test_basic_operations(client):
    client.write(b"/p/a", b"1")
    assert client.read(b"/p/a") == b"1"
    client.mkdir(b"/p/dir")
    assert sorted(client.list(b"/p")) == [b"a", b"dir"]
    assert client.exists(b"/p/dir")
    client.set_perms(b"/p/a", [b"n0", b"r3"])
    assert client.get_perms(b"/p/a") == [b"n0", b"r3"]
    client.delete(b"/p")
    assert not client.exists(b"/p/a")
    assert client.get_domain_path(3) == b"/local/domain/3"
    with pytest.raises(PyXSError):
        client.read(b"/p/a")


def test_empty_values_as_libxl_writes_them(client):
    write(client, "/p2/hotplug-status", "")
    assert client.read(b"/p2/hotplug-status") == b""


def test_watch_events_through_monitor(xenstored, client):
    with Client(unix_socket_path=str(xenstored.socket)) as watcher:
        m = watcher.monitor()
        m.watch(b"/mon", b"tok")
        events = m.wait()
        assert next(events) == (b"/mon", b"tok")
        client.write(b"/mon/child", b"x")
        assert next(events) == (b"/mon/child", b"tok")
        m.unwatch(b"/mon", b"tok")


def test_transaction_conflict_and_retry(xenstored, client):
    client.write(b"/tc/n", b"0")
    with Client(unix_socket_path=str(xenstored.socket)) as other:
        client.transaction()
        assert client.read(b"/tc/n") == b"0"
        other.write(b"/tc/n", b"other")
        client.write(b"/tc/n", b"mine")
        assert client.commit() is False  # EAGAIN: the node it read changed
        assert client.read(b"/tc/n") == b"other"

        client.transaction()
        client.read(b"/tc/n")
        other.write(b"/tc/unrelated", b"x")
        client.write(b"/tc/n", b"mine")
        assert client.commit() is True  # another node changed: no conflict


def test_in_transaction_retries_until_it_commits(xenstored):
    """Eight threads increment one counter through read-modify-write transactions;
    conflicts are retried, so no increment is lost."""
    with Client(unix_socket_path=str(xenstored.socket)) as c:
        c.write(b"/cnt", b"0")

    def worker() -> None:
        with Client(unix_socket_path=str(xenstored.socket)) as c:
            for _ in range(10):

                def incr(cl: Client) -> None:
                    cl.write(b"/cnt", str(int(cl.read(b"/cnt")) + 1).encode())

                in_transaction(c, incr, attempts=200)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with Client(unix_socket_path=str(xenstored.socket)) as c:
        assert c.read(b"/cnt") == b"80"


def test_list_dir_pages_a_directory_over_4096_bytes(client):
    from xvif_ovs.xenstore.client import list_dir

    names = [f"{i:04d}-{'z' * 30}" for i in range(300)]
    client.transaction()
    for n in names:
        write(client, f"/huge/{n}", "")
    assert client.commit()
    assert list_dir(client, "/huge") == names
    assert list_dir(client, "/huge/" + names[0]) == []
