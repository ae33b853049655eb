"""The XenStore tree and transactions, without sockets."""

from __future__ import annotations

import pytest

from xvif_ovs.xenstore.paths import Perm
from xvif_ovs.xenstore.protocol import XsError
from xvif_ovs.xenstore.store import Event, Store, Transaction, matches


def test_write_reports_one_event_for_the_written_node():
    s = Store()
    assert s.write(None, "/a/b/c", b"v") == [Event("/a/b/c")]
    assert s.directory(None, "/a") == ["b"]


def test_rm_reports_descendants_exactly_and_the_top_broadly():
    s = Store()
    s.write(None, "/a/b/c", b"v")
    events = s.rm(None, "/a")
    assert Event("/a") in events and Event("/a/b/c", exact=True) in events
    assert matches("/a/b/c", Event("/a/b/c", exact=True))
    assert not matches("/a/b", Event("/a/b/c", exact=True))
    assert matches("/", Event("/a"))
    assert not matches("/", Event("@introduceDomain"))


def test_transaction_sees_its_own_writes_and_hides_them_from_others():
    s = Store()
    tx = Transaction()
    s.write(tx, "/x/y", b"1")
    assert s.read(tx, "/x/y") == b"1"
    assert not s.exists(None, "/x")
    s.commit(tx)
    assert s.read(None, "/x/y") == b"1"


def test_rm_inside_a_transaction_then_recreate():
    s = Store()
    s.write(None, "/r/a/b", b"1")
    tx = Transaction()
    s.rm(tx, "/r/a")
    assert not s.exists(tx, "/r/a/b")
    s.write(tx, "/r/a/c", b"2")
    s.commit(tx)
    assert s.directory(None, "/r/a") == ["c"]
    assert not s.exists(None, "/r/a/b")


def test_conflict_only_on_touched_nodes():
    s = Store()
    s.write(None, "/n1", b"a")
    s.write(None, "/n2", b"a")
    tx = Transaction()
    s.read(tx, "/n1")
    s.write(None, "/n2", b"b")
    s.commit(tx)  # fine
    tx = Transaction()
    s.read(tx, "/n1")
    s.write(None, "/n1", b"b")
    with pytest.raises(XsError) as e:
        s.commit(tx)
    assert e.value.errno_name == "EAGAIN"


def test_adding_a_child_changes_the_parent_for_directory_readers():
    s = Store()
    s.mkdir(None, "/dir")
    tx = Transaction()
    s.directory(tx, "/dir")
    s.write(None, "/dir/new", b"")
    with pytest.raises(XsError):
        s.commit(tx)


def test_new_nodes_inherit_parent_permissions():
    s = Store()
    s.write(None, "/p", b"")
    s.set_perms(None, "/p", (Perm("n", 5), Perm("r", 0)))
    s.write(None, "/p/q/r", b"")
    assert s.get_perms(None, "/p/q/r") == (Perm("n", 5), Perm("r", 0))


def _consistent(s: Store) -> None:
    nodes = s._nodes  # noqa: SLF001 - the invariant is about the internal tree
    for path, node in nodes.items():
        for child in node.children:
            assert (path.rstrip("/") + "/" + child) in nodes, f"{path} lists missing child {child}"
        if path != "/":
            parent = path.rsplit("/", 1)[0] or "/"
            assert parent in nodes and path.rsplit("/", 1)[1] in nodes[parent].children, f"{path} is orphaned"


def test_random_interleavings_keep_the_tree_consistent():
    """Transactions racing plain writers: commits either apply whole or fail with EAGAIN,
    and the tree never ends with orphans or dangling children."""
    import random

    rng = random.Random(1234)
    paths = ["/a", "/a/b", "/a/b/c", "/a/d", "/e", "/e/f"]
    for _ in range(3000):
        s = Store()
        txs = [Transaction() for _ in range(2)]
        for _step in range(12):
            tx = rng.choice([None, *txs])
            op, path = rng.choice(["write", "rm", "read", "mkdir"]), rng.choice(paths)
            try:
                if op == "write":
                    s.write(tx, path, b"v")
                elif op == "rm":
                    s.rm(tx, path)
                elif op == "mkdir":
                    s.mkdir(tx, path)
                else:
                    s.read(tx, path)
            except XsError as e:
                assert e.errno_name in ("ENOENT", "EAGAIN")
        for tx in txs:
            try:
                s.commit(tx)
            except XsError as e:
                assert e.errno_name == "EAGAIN"
            _consistent(s)


def test_a_node_that_came_and_went_during_the_transaction_is_a_conflict():
    s = Store()
    tx = Transaction()
    assert not s.exists(tx, "/x")
    s.write(None, "/x/old", b"")
    s.write(tx, "/x/y", b"1")  # built on its own view: /x missing
    s.rm(None, "/x")
    with pytest.raises(XsError):
        s.commit(tx)
    _consistent(s)


def test_dump_and_load_keep_values_perms_and_order():
    s = Store()
    s.write(None, "/b/z", b"\x00\xff bytes")
    s.write(None, "/b/a", b"2")
    s.set_perms(None, "/b", (Perm("n", 5), Perm("r", 0)))
    t = Store.load(s.dump())
    assert t.read(None, "/b/z") == b"\x00\xff bytes"
    assert t.directory(None, "/b") == ["z", "a"]
    assert t.get_perms(None, "/b") == (Perm("n", 5), Perm("r", 0))
