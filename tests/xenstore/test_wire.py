"""The server's answers, request by request, against what C xenstored answers
(tools/xenstored in Xen 4.17-4.19), including its errors and its handling of broken
clients. Raw messages, so nothing a client library smooths over is hidden."""

from __future__ import annotations

import socket
import time

import pytest
from xsraw import RawXs

from xvif_ovs.xenstore.protocol import HEADER, XENSTORE_PAYLOAD_MAX, Op, encode


@pytest.fixture
def xs(xenstored):
    c = RawXs(str(xenstored.socket))
    yield c
    c.close()


def test_write_creates_parents_with_empty_values(xs):
    assert xs.ok(Op.WRITE, b"/wire/a/b/c\0value") == b"OK\0"
    assert xs.ok(Op.READ, b"/wire/a/b/c\0") == b"value"  # READ replies carry no NUL
    assert xs.ok(Op.READ, b"/wire/a/b\0") == b""
    assert xs.ok(Op.DIRECTORY, b"/wire/a\0") == b"b\0"


def test_directory_lists_children_in_creation_order(xs):
    for name in (b"zeta", b"alpha", b"mid"):
        xs.ok(Op.WRITE, b"/order/" + name + b"\0x")
    assert xs.ok(Op.DIRECTORY, b"/order\0") == b"zeta\0alpha\0mid\0"
    xs.ok(Op.MKDIR, b"/order/empty\0")
    assert xs.ok(Op.DIRECTORY, b"/order/empty\0") == b""


def test_missing_nodes_are_enoent(xs):
    assert xs.err(Op.READ, b"/no/such\0") == "ENOENT"
    assert xs.err(Op.DIRECTORY, b"/no/such\0") == "ENOENT"
    assert xs.err(Op.GET_PERMS, b"/no/such\0") == "ENOENT"
    assert xs.err(Op.SET_PERMS, b"/no/such\0n0\0") == "ENOENT"


@pytest.mark.parametrize(
    "path",
    [b"/a//b", b"/a/", b"/a b", b"/a\xff", b"/a.b", b"/a:b", b"", b"@introduceDomain", b"/" + b"x" * 2048],
)
def test_malformed_paths_are_einval(xs, path):
    assert xs.err(Op.READ, path + b"\0") == "EINVAL"
    assert xs.err(Op.WRITE, path + b"\0v") == "EINVAL"


def test_path_length_limit_is_relative_to_the_domain_home(xs):
    under_home = b"/local/domain/7/" + b"a" * 2048
    xs.ok(Op.WRITE, under_home + b"\0ok")
    assert xs.err(Op.WRITE, under_home + b"a\0no") == "EINVAL"


def test_relative_paths_resolve_under_dom0_home(xs):
    xs.ok(Op.WRITE, b"rel/key\0v")
    assert xs.ok(Op.READ, b"/local/domain/0/rel/key\0") == b"v"
    assert xs.ok(Op.GET_DOMAIN_PATH, b"5\0") == b"/local/domain/5\0"


def test_mkdir_existing_is_ok_and_rm_missing_child_is_ok(xs):
    xs.ok(Op.WRITE, b"/mk/x\0keep")
    assert xs.ok(Op.MKDIR, b"/mk/x\0") == b"OK\0"
    assert xs.ok(Op.READ, b"/mk/x\0") == b"keep"
    assert xs.ok(Op.RM, b"/mk/absent\0") == b"OK\0"  # parent exists
    assert xs.err(Op.RM, b"/mk/absent/deeper\0") == "ENOENT"  # parent missing
    assert xs.err(Op.RM, b"/\0") == "EINVAL"


def test_rm_removes_the_subtree(xs):
    xs.ok(Op.WRITE, b"/tree/a/b/c\0v")
    xs.ok(Op.WRITE, b"/tree/a/d\0v")
    xs.ok(Op.RM, b"/tree/a\0")
    assert xs.err(Op.READ, b"/tree/a/b/c\0") == "ENOENT"
    assert xs.ok(Op.DIRECTORY, b"/tree\0") == b""


def test_permissions_are_inherited_and_formatted_as_xenstored_does(xs):
    xs.ok(Op.WRITE, b"/perm/dom\0")
    xs.ok(Op.SET_PERMS, b"/perm/dom\0n5\0r0\0b7\0")
    assert xs.ok(Op.GET_PERMS, b"/perm/dom\0") == b"n5\0r0\0b7\0"
    xs.ok(Op.WRITE, b"/perm/dom/child/leaf\0x")
    assert xs.ok(Op.GET_PERMS, b"/perm/dom/child/leaf\0") == b"n5\0r0\0b7\0"
    xs.ok(Op.SET_PERMS, b"/perm/dom\0w0x10\0")  # strtol(.., 0): hex is a domid too
    assert xs.ok(Op.GET_PERMS, b"/perm/dom\0") == b"w16\0"
    assert xs.ok(Op.GET_PERMS, b"@introduceDomain\0") == b"n0\0"


@pytest.mark.parametrize("perms", [b"x5\0", b"r\0", b"rabc\0", b"r5 \0", b"", b"n-1\0"])
def test_malformed_permissions_are_einval(xs, perms):
    xs.ok(Op.WRITE, b"/perm/bad\0")
    assert xs.err(Op.SET_PERMS, b"/perm/bad\0" + perms) == "EINVAL"
    assert xs.ok(Op.GET_PERMS, b"/perm/bad\0") == b"n0\0"  # unchanged


def test_malformed_requests_are_einval_and_unknown_types_enosys(xs):
    assert xs.err(Op.WRITE, b"/no-nul-at-all") == "EINVAL"
    assert xs.err(Op.WATCH, b"/only-path\0") == "EINVAL"
    assert xs.err(Op.READ, b"/no-terminator") == "EINVAL"
    assert xs.err(Op.READ, b"/two\0/args\0") == "EINVAL"
    t, body = xs.call(99, b"")
    assert (t, body) == (Op.ERROR, b"ENOSYS\0")
    t, body = xs.call(Op.WATCH_EVENT, b"/x\0t\0")  # a client may not send events
    assert (t, body) == (Op.ERROR, b"ENOSYS\0")
    assert xs.ok(Op.READ, b"/tool/xenstored\0") == b""  # the connection goes on


def test_watch_fires_on_registration_and_on_changes_below(xs, xenstored):
    other = RawXs(str(xenstored.socket))
    try:
        other.ok(Op.WATCH, b"/w\0tok\0")
        assert other.next_event() == (b"/w", b"tok")  # fires once up front, even if missing
        xs.ok(Op.WRITE, b"/w/a/b\0v")
        assert other.next_event() == (b"/w/a/b", b"tok")
        xs.ok(Op.WRITE, b"/wx\0v")  # a sibling sharing the prefix: no event
        xs.ok(Op.RM, b"/w\0")
        assert other.next_event() == (b"/w", b"tok")
        assert other.err(Op.WATCH, b"/w\0tok\0") == "EEXIST"
        other.ok(Op.UNWATCH, b"/w\0tok\0")
        assert other.err(Op.UNWATCH, b"/w\0tok\0") == "ENOENT"
    finally:
        other.close()


def test_removing_an_ancestor_fires_watches_on_existing_descendants(xs, xenstored):
    xs.ok(Op.WRITE, b"/anc/a/b/c\0v")
    other = RawXs(str(xenstored.socket))
    try:
        other.ok(Op.WATCH, b"/anc/a/b/c\0deep\0")
        other.next_event()
        xs.ok(Op.RM, b"/anc\0")
        assert other.next_event() == (b"/anc/a/b/c", b"deep")
    finally:
        other.close()


def test_relative_watch_reports_relative_paths(xs):
    xs.ok(Op.WATCH, b"relw\0r\0")
    assert xs.next_event() == (b"relw", b"r")
    xs.ok(Op.WRITE, b"/local/domain/0/relw/k\0v")
    assert xs.next_event() == (b"relw/k", b"r")


def test_special_watches_and_domain_introduction(xs, xenstored):
    other = RawXs(str(xenstored.socket))
    try:
        other.ok(Op.WATCH, b"@introduceDomain\0in\0")
        other.ok(Op.WATCH, b"@releaseDomain\0out\0")
        assert other.next_event() == (b"@introduceDomain", b"in")
        assert other.next_event() == (b"@releaseDomain", b"out")
        assert xs.ok(Op.IS_DOMAIN_INTRODUCED, b"9\0") == b"F\0"
        xs.ok(Op.INTRODUCE, b"9\0" + b"0\0" + b"3\0")
        assert other.next_event() == (b"@introduceDomain", b"in")
        assert xs.ok(Op.IS_DOMAIN_INTRODUCED, b"9\0") == b"T\0"
        xs.ok(Op.RELEASE, b"9\0")
        assert other.next_event() == (b"@releaseDomain", b"out")
        assert xs.err(Op.RELEASE, b"9\0") == "ENOENT"
        assert xs.err(Op.RELEASE, b"0\0") == "EINVAL"
    finally:
        other.close()


def test_reset_watches_drops_watches_and_transactions(xs):
    xs.ok(Op.WATCH, b"/rw\0t\0")
    xs.next_event()
    tx = int(xs.ok(Op.TRANSACTION_START, b"\0").rstrip(b"\0"))
    assert xs.ok(Op.RESET_WATCHES, b"") == b"OK\0"
    assert xs.err(Op.READ, b"/tool\0", tx=tx) == "ENOENT"
    assert xs.err(Op.UNWATCH, b"/rw\0t\0") == "ENOENT"


def test_transaction_errors(xs):
    tx = int(xs.ok(Op.TRANSACTION_START, b"\0").rstrip(b"\0"))
    assert tx != 0
    assert xs.err(Op.TRANSACTION_START, b"\0", tx=tx) == "EBUSY"
    assert xs.err(Op.READ, b"/tool\0", tx=tx + 1000) == "ENOENT"
    assert xs.err(Op.TRANSACTION_END, b"X\0", tx=tx) == "EINVAL"
    assert xs.err(Op.TRANSACTION_END, b"T\0", tx=0) == "ENOENT"
    assert xs.ok(Op.TRANSACTION_END, b"F\0", tx=tx) == b"OK\0"
    assert xs.err(Op.TRANSACTION_END, b"T\0", tx=tx) == "ENOENT"  # gone once ended


def test_transaction_is_isolated_and_conflicts_per_node(xs, xenstored):
    other = RawXs(str(xenstored.socket))
    try:
        xs.ok(Op.WRITE, b"/txn/a\0a0")
        xs.ok(Op.WRITE, b"/txn/b\0b0")
        tx = int(xs.ok(Op.TRANSACTION_START, b"\0").rstrip(b"\0"))
        assert xs.ok(Op.READ, b"/txn/a\0", tx=tx) == b"a0"
        xs.ok(Op.WRITE, b"/txn/a\0a1", tx=tx)
        assert other.ok(Op.READ, b"/txn/a\0") == b"a0"  # not visible before commit
        other.ok(Op.WRITE, b"/txn/b\0b1")  # a node the transaction never touched
        assert xs.ok(Op.TRANSACTION_END, b"T\0", tx=tx) == b"OK\0"
        assert other.ok(Op.READ, b"/txn/a\0") == b"a1"

        tx = int(xs.ok(Op.TRANSACTION_START, b"\0").rstrip(b"\0"))
        xs.ok(Op.READ, b"/txn/a\0", tx=tx)
        xs.ok(Op.WRITE, b"/txn/c\0c", tx=tx)
        other.ok(Op.WRITE, b"/txn/a\0changed")  # a node the transaction read
        assert xs.err(Op.TRANSACTION_END, b"T\0", tx=tx) == "EAGAIN"
        assert other.err(Op.READ, b"/txn/c\0") == "ENOENT"  # nothing of it applied

        tx = int(xs.ok(Op.TRANSACTION_START, b"\0").rstrip(b"\0"))
        assert xs.err(Op.READ, b"/txn/new\0", tx=tx) == "ENOENT"
        other.ok(Op.WRITE, b"/txn/new\0appeared")  # a node it saw missing
        assert xs.err(Op.TRANSACTION_END, b"T\0", tx=tx) == "EAGAIN"
    finally:
        other.close()


def test_transaction_events_fire_only_on_commit(xs, xenstored):
    watcher = RawXs(str(xenstored.socket))
    try:
        watcher.ok(Op.WATCH, b"/txev\0t\0")
        watcher.next_event()
        tx = int(xs.ok(Op.TRANSACTION_START, b"\0").rstrip(b"\0"))
        xs.ok(Op.WRITE, b"/txev/aborted\0x", tx=tx)
        xs.ok(Op.TRANSACTION_END, b"F\0", tx=tx)
        tx = int(xs.ok(Op.TRANSACTION_START, b"\0").rstrip(b"\0"))
        xs.ok(Op.WRITE, b"/txev/kept\0x", tx=tx)
        xs.ok(Op.TRANSACTION_END, b"T\0", tx=tx)
        assert watcher.next_event() == (b"/txev/kept", b"t")  # the aborted write never fired
    finally:
        watcher.close()


def test_large_directory_is_e2big_and_directory_part_pages_it(xs):
    names = [f"child-{i:04d}-{'x' * 40}".encode() for i in range(150)]  # > 4096 bytes of names
    for n in names:
        xs.ok(Op.WRITE, b"/big/" + n + b"\0")
    assert xs.err(Op.DIRECTORY, b"/big\0") == "E2BIG"
    got: list[bytes] = []
    offset = 0
    while True:
        body = xs.ok(Op.DIRECTORY_PART, b"/big\0" + str(offset).encode() + b"\0")
        gen, rest = body.split(b"\0", 1)
        assert gen.isdigit()
        done = rest.endswith(b"\0\0") or rest == b"\0"
        chunk = [x for x in rest.split(b"\0") if x]
        got += chunk
        offset += sum(len(x) + 1 for x in chunk)
        if done:
            break
    assert got == names


def test_oversized_request_closes_only_that_connection(xenstored):
    bad, good = RawXs(str(xenstored.socket)), RawXs(str(xenstored.socket))
    try:
        bad.sock.sendall(HEADER.pack(Op.WRITE, 1, 0, XENSTORE_PAYLOAD_MAX + 1))
        with pytest.raises(ConnectionError):
            bad.recv()
        assert good.ok(Op.READ, b"/tool/xenstored\0") == b""
    finally:
        bad.close()
        good.close()
    assert "exceeds XENSTORE_PAYLOAD_MAX" in xenstored.log.read_text()


def test_truncated_message_closes_only_that_connection(xenstored):
    good = RawXs(str(xenstored.socket))
    for partial in (HEADER.pack(Op.READ, 1, 0, 10)[:7], encode(Op.WRITE, 1, 0, b"/t\0value")[:-3]):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(xenstored.socket))
        s.sendall(partial)
        s.close()
    try:
        deadline = time.monotonic() + 5
        while "truncated payload" not in xenstored.log.read_text():
            assert time.monotonic() < deadline, "no log line for the truncated message"
            time.sleep(0.05)
        assert "truncated header" in xenstored.log.read_text()
        assert good.err(Op.READ, b"/t\0") == "ENOENT"  # the partial write did not happen
    finally:
        good.close()


def test_control_check_and_unknown_commands(xs):
    assert xs.ok(Op.CONTROL, b"check\0") == b"OK\0"
    assert xs.err(Op.CONTROL, b"frobnicate\0") == "EINVAL"
