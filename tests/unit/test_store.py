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
        doomed: set[int] = set()
        for _step in range(12):
            i = rng.randrange(len(txs) + 1)
            tx = txs[i] if i < len(txs) else None
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
                if e.errno_name in ("EIO", "EINVAL"):
                    # xenstored's answers to an RM in a transaction whose view is torn
                    # (rm_node, delete_child, walk_node_tree): never outside one, and
                    # that transaction cannot commit.
                    assert op == "rm" and tx is not None
                    doomed.add(i)
                else:
                    assert e.errno_name == "ENOENT"
        for i, tx in enumerate(txs):
            try:
                s.commit(tx)
            except XsError as e:
                assert e.errno_name == "EAGAIN"
            else:
                assert i not in doomed
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


# -- which nodes a transaction reads, and so conflicts on (xenstored's rules) ------------
#
# Each test has a transaction do one request, another writer (tx None) make one change,
# and the commit either fail with EAGAIN (the change touched a node the request read)
# or succeed (it did not), as C xenstored decides.


def _commit_fails(s: Store, tx: Transaction) -> bool:
    try:
        s.commit(tx)
    except XsError as e:
        assert e.errno_name == "EAGAIN"
        return True
    return False


def _enoent(call, *args) -> None:
    with pytest.raises(XsError) as e:
        call(*args)
    assert e.value.errno_name == "ENOENT"


_LOOKUPS = {
    "read": lambda s, tx, p: s.read(tx, p),
    "directory": lambda s, tx, p: s.directory(tx, p),
    "directory_part": lambda s, tx, p: s.generation(tx, p),
    "get_perms": lambda s, tx, p: s.get_perms(tx, p),
    "set_perms": lambda s, tx, p: s.set_perms(tx, p, (Perm("n", 0),)),
}


@pytest.mark.parametrize("request_", sorted(_LOOKUPS))
def test_a_missing_node_reads_its_nearest_existing_ancestor(request_):
    """Issue 11: get_node() asks the parents of a node it cannot find
    (errno_from_parents), and the first one that exists counts as read."""
    s = Store()
    s.mkdir(None, "/xd/1/b/a")
    tx = Transaction()
    _enoent(_LOOKUPS[request_], s, tx, "/xd/1/0/0")
    s.rm(None, "/xd/1")
    assert _commit_fails(s, tx)


@pytest.mark.parametrize("request_", sorted(_LOOKUPS))
def test_a_new_child_of_that_ancestor_is_a_conflict(request_):
    s = Store()
    s.mkdir(None, "/xd/2")
    tx = Transaction()
    _enoent(_LOOKUPS[request_], s, tx, "/xd/2/m/n")
    s.write(None, "/xd/2/other", b"")  # rewrites /xd/2, not the missing /xd/2/m
    assert _commit_fails(s, tx)


def test_a_value_written_to_that_ancestor_is_a_conflict():
    s = Store()
    s.mkdir(None, "/xd/3")
    tx = Transaction()
    _enoent(s.read, tx, "/xd/3/m")
    s.write(None, "/xd/3", b"")  # any write gives a new generation, even of the same value
    assert _commit_fails(s, tx)


def test_the_walk_stops_at_the_first_existing_ancestor():
    s = Store()
    s.mkdir(None, "/xd/4/p")
    tx = Transaction()
    _enoent(s.read, tx, "/xd/4/p/m/n")
    s.write(None, "/xd/4/sibling", b"")  # rewrites /xd/4, above /xd/4/p
    assert not _commit_fails(s, tx)


def test_an_existing_node_does_not_read_its_parent():
    s = Store()
    s.write(None, "/xd/5/x", b"1")
    s.write(None, "/xd/5/y", b"1")
    tx = Transaction()
    assert s.read(tx, "/xd/5/x") == b"1"
    s.rm(None, "/xd/5/y")  # rewrites /xd/5
    assert not _commit_fails(s, tx)


def test_ask_parents_walks_malformed_names_as_xenstored_does():
    """Xen 4.17's get_node() asks the parents of a name is_valid_nodename() refused;
    get_parent() cuts at the last slash: "/a//b" -> "/a/" -> "/a"."""
    s = Store()
    s.mkdir(None, "/mf/a")
    tx = Transaction()
    s.ask_parents(tx, "/mf/a//b")
    assert list(tx.accessed) == ["/mf/a/", "/mf/a"]
    tx = Transaction()
    s.ask_parents(tx, "@whatever")
    assert list(tx.accessed) == ["/"]
    s.ask_parents(None, "/mf/a/b")  # outside a transaction nothing is recorded


def test_rm_of_a_missing_node_reads_its_parent():
    s = Store()
    s.mkdir(None, "/rm1")
    tx = Transaction()
    assert s.rm(tx, "/rm1/missing") == []  # fine: the parent exists (do_rm)
    s.write(None, "/rm1/new", b"")
    assert _commit_fails(s, tx)


def test_rm_under_a_missing_parent_reads_the_nearest_existing_ancestor():
    s = Store()
    s.mkdir(None, "/rm2/b")
    tx = Transaction()
    _enoent(s.rm, tx, "/rm2/m1/m2")
    s.rm(None, "/rm2/b")  # rewrites /rm2, the nearest existing ancestor
    assert _commit_fails(s, tx)


def test_rm_of_the_root_reads_it_before_refusing():
    s = Store()
    tx = Transaction()
    with pytest.raises(XsError) as e:
        s.rm(tx, "/")
    assert e.value.errno_name == "EINVAL"
    s.write(None, "/newtop", b"")
    assert _commit_fails(s, tx)


@pytest.mark.parametrize("change", ["write deep", "add deep", "rm deep"])
def test_rm_reads_every_node_below(change):
    """walk_node_tree() reads the whole subtree before deleting it."""
    s = Store()
    s.write(None, "/rm3/t/a/b", b"1")
    tx = Transaction()
    s.rm(tx, "/rm3/t")
    if change == "write deep":
        s.write(None, "/rm3/t/a/b", b"2")
    elif change == "add deep":
        s.write(None, "/rm3/t/a/b/c", b"")
    else:
        s.rm(None, "/rm3/t/a/b")
    assert _commit_fails(s, tx)


def test_rm_reads_the_parent_but_not_its_siblings():
    s = Store()
    s.write(None, "/rm4/t", b"")
    s.write(None, "/rm4/u", b"")
    tx = Transaction()
    s.rm(tx, "/rm4/t")
    s.write(None, "/rm4/u", b"x")  # a sibling
    s.write(None, "/other", b"x")
    assert not _commit_fails(s, tx)
    tx = Transaction()
    s.rm(tx, "/rm4/u")
    s.write(None, "/rm4", b"x")  # the parent
    assert _commit_fails(s, tx)


def test_write_and_mkdir_of_a_missing_node_read_the_path_up_to_an_existing_node():
    s = Store()
    s.mkdir(None, "/wr")
    for request_ in (lambda tx: s.write(tx, "/wr/a/b", b"v"), lambda tx: s.mkdir(tx, "/wr/a/b")):
        tx = Transaction()
        request_(tx)
        s.write(None, "/wr/a/c", b"")  # creates the missing /wr/a, rewrites /wr
        assert _commit_fails(s, tx)
        s.rm(None, "/wr/a")
        tx = Transaction()
        request_(tx)
        s.write(None, "/wr", b"")  # only the existing ancestor, that the request rewrote
        assert _commit_fails(s, tx)
        tx = Transaction()
        request_(tx)
        s.write(None, "/elsewhere", b"")  # rewrites /, above the existing /wr
        assert not _commit_fails(s, tx)
        s.rm(None, "/wr/a")


def test_mkdir_of_an_existing_node_only_reads_it():
    s = Store()
    s.mkdir(None, "/mk/d")
    tx = Transaction()
    s.mkdir(tx, "/mk/d")
    s.write(None, "/mk/sibling", b"")  # rewrites /mk: not read
    assert not _commit_fails(s, tx)
    tx = Transaction()
    s.mkdir(tx, "/mk/d")
    s.write(None, "/mk/d/child", b"")  # rewrites /mk/d: read
    assert _commit_fails(s, tx)


def test_get_and_set_perms_of_an_existing_node_read_it():
    s = Store()
    s.mkdir(None, "/pm")
    for request_ in (lambda tx: s.get_perms(tx, "/pm"), lambda tx: s.set_perms(tx, "/pm", (Perm("n", 3),))):
        tx = Transaction()
        request_(tx)
        s.set_perms(None, "/pm", s.get_perms(None, "/pm"))  # same perms: still a change
        assert _commit_fails(s, tx)


def test_nodes_a_transaction_only_read_keep_their_generation_at_its_commit():
    s = Store()
    s.write(None, "/ro/k", b"1")
    tx1, tx2 = Transaction(), Transaction()
    s.read(tx1, "/ro/k")
    s.read(tx2, "/ro/k")
    s.write(tx1, "/ro/o", b"1")
    s.commit(tx1)  # rewrote /ro and /ro/o only
    assert not _commit_fails(s, tx2)


def test_rm_with_a_torn_view_of_the_tree_is_eio_or_einval_then_eagain():
    """xenstored's rm_node() inside a transaction whose view mixes nodes seen before
    and after another connection's change: EINVAL without the parent (rm_node), EIO
    for a listed child that is gone (walk_node_tree) or a node its parent does not list
    (delete_child). Each such transaction then fails to commit."""
    s = Store()
    s.write(None, "/torn/p/c", b"")
    tx = Transaction()
    s.directory(tx, "/torn/p")  # lists c
    s.rm(None, "/torn/p/c")
    with pytest.raises(XsError) as e:
        s.rm(tx, "/torn/p")
    assert e.value.errno_name == "EIO"
    assert s.directory(tx, "/torn/p") == ["c"]  # nothing was removed in the transaction
    assert _commit_fails(s, tx)

    s.mkdir(None, "/torn/q")
    tx = Transaction()
    s.directory(tx, "/torn/q")  # lists nothing
    s.write(None, "/torn/q/n", b"")
    with pytest.raises(XsError) as e:
        s.rm(tx, "/torn/q/n")
    assert e.value.errno_name == "EIO"
    assert _commit_fails(s, tx)

    s.write(None, "/torn/r/n", b"")
    tx = Transaction()
    s.read(tx, "/torn/r/n")
    s.rm(None, "/torn/r")
    with pytest.raises(XsError) as e:
        s.rm(tx, "/torn/r/n")
    assert e.value.errno_name == "EINVAL"
    assert _commit_fails(s, tx)
