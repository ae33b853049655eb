"""Which nodes a transaction reads, and so conflicts on, over the wire: C xenstored's
rules (core.c get_node/errno_from_parents/rm_node, transaction.c access_node), down to
the ancestors it asks about a node it cannot find (issue 11). Raw messages, as no
xenstore-* tool keeps a transaction open; xenstore-rm plays the other connection."""

from __future__ import annotations

import pytest
from xsraw import RawXs

from xvif_ovs.xenstore.protocol import Op


@pytest.fixture
def xs(xenstored):
    c = RawXs(str(xenstored.socket))
    yield c
    c.close()


@pytest.fixture
def other(xenstored):
    c = RawXs(str(xenstored.socket))
    yield c
    c.close()


def _start(xs: RawXs) -> int:
    return int(xs.ok(Op.TRANSACTION_START, b"\0").rstrip(b"\0"))


def test_issue_11_get_perms_of_a_missing_node_then_its_ancestor_removed(xs, xenstored):
    """The issue's reproduction: the transaction's ENOENT came from /xd/1, the nearest
    existing ancestor of /xd/1/0/0, so removing /xd/1 fails its commit."""
    xs.ok(Op.MKDIR, b"/xd/1/b/a\0")
    tx = _start(xs)
    assert xs.err(Op.GET_PERMS, b"/xd/1/0/0\0", tx=tx) == "ENOENT"
    xenstored.tool("xenstore-rm", "/xd/1")
    assert xs.err(Op.TRANSACTION_END, b"T\0", tx=tx) == "EAGAIN"


_MISSING = {
    "READ": (Op.READ, b"{}\0"),
    "DIRECTORY": (Op.DIRECTORY, b"{}\0"),
    "DIRECTORY_PART": (Op.DIRECTORY_PART, b"{}\0x\0"),  # the node is read before the offset
    "GET_PERMS": (Op.GET_PERMS, b"{}\0"),
    "SET_PERMS": (Op.SET_PERMS, b"{}\0n0\0"),
    "RM": (Op.RM, b"{}\0"),  # a missing node under a missing parent
}


@pytest.mark.parametrize("name", sorted(_MISSING))
def test_every_lookup_of_a_missing_node_reads_its_nearest_existing_ancestor(xs, other, name):
    op, fmt = _MISSING[name]
    top = f"/xm-{name.lower()}".encode()
    xs.ok(Op.MKDIR, top + b"/p/q\0")
    tx = _start(xs)
    assert xs.err(op, fmt.replace(b"{}", top + b"/p/m/n"), tx=tx) == "ENOENT"
    other.ok(Op.WRITE, top + b"/p/new\0")  # a new child: /p changes, /p/m does not exist
    assert xs.err(Op.TRANSACTION_END, b"T\0", tx=tx) == "EAGAIN"

    # ... and only that one: a change above it leaves the transaction alone.
    tx = _start(xs)
    assert xs.err(op, fmt.replace(b"{}", top + b"/p/m/n"), tx=tx) == "ENOENT"
    other.ok(Op.WRITE, top + b"/sibling\0")
    assert xs.ok(Op.TRANSACTION_END, b"T\0", tx=tx) == b"OK\0"


def test_rm_of_a_missing_node_reads_its_parent(xs, other):
    xs.ok(Op.MKDIR, b"/xr/p\0")
    tx = _start(xs)
    assert xs.ok(Op.RM, b"/xr/p/missing\0", tx=tx) == b"OK\0"
    other.ok(Op.WRITE, b"/xr/p/new\0")
    assert xs.err(Op.TRANSACTION_END, b"T\0", tx=tx) == "EAGAIN"


def test_rm_reads_the_whole_subtree(xs, other):
    xs.ok(Op.WRITE, b"/xs/t/a/b\0v")
    tx = _start(xs)
    assert xs.ok(Op.RM, b"/xs/t\0", tx=tx) == b"OK\0"
    other.ok(Op.WRITE, b"/xs/t/a/b\0changed")
    assert xs.err(Op.TRANSACTION_END, b"T\0", tx=tx) == "EAGAIN"
    assert other.ok(Op.READ, b"/xs/t/a/b\0") == b"changed"


def test_rm_of_the_root_reads_it(xs, other):
    tx = _start(xs)
    assert xs.err(Op.RM, b"/\0", tx=tx) == "EINVAL"
    other.ok(Op.WRITE, b"/xroot-new\0")
    assert xs.err(Op.TRANSACTION_END, b"T\0", tx=tx) == "EAGAIN"


def test_rm_of_a_node_the_transaction_saw_listed_but_gone_is_eio(xs, other):
    """walk_node_tree() finds a listed child missing: rm_node() answers EIO."""
    xs.ok(Op.WRITE, b"/xe/p/c\0")
    tx = _start(xs)
    assert xs.ok(Op.DIRECTORY, b"/xe/p\0", tx=tx) == b"c\0"
    other.ok(Op.RM, b"/xe/p/c\0")
    assert xs.err(Op.RM, b"/xe/p\0", tx=tx) == "EIO"
    assert xs.err(Op.TRANSACTION_END, b"T\0", tx=tx) == "EAGAIN"


def test_a_malformed_path_reads_its_parents_as_xen_4_17_does(xs, other):
    """4.17's get_node() refuses "/xi/p/" only after asking its parents ("/xi/p")."""
    xs.ok(Op.MKDIR, b"/xi/p\0")
    tx = _start(xs)
    assert xs.err(Op.READ, b"/xi/p/\0", tx=tx) == "EINVAL"
    other.ok(Op.WRITE, b"/xi/p/new\0")
    assert xs.err(Op.TRANSACTION_END, b"T\0", tx=tx) == "EAGAIN"

    # A relative one is first put under the caller's home, as canonicalize() does.
    xs.ok(Op.MKDIR, b"xi-rel/p\0")
    tx = _start(xs)
    assert xs.err(Op.DIRECTORY, b"xi-rel/p/\0", tx=tx) == "EINVAL"
    other.ok(Op.WRITE, b"/local/domain/0/xi-rel/p/new\0")
    assert xs.err(Op.TRANSACTION_END, b"T\0", tx=tx) == "EAGAIN"


def test_special_names(xs, other):
    """GET_PERMS of an unknown @ name reads "/" (4.17 asks its parents after refusing
    it, 4.18+ after not finding it); SET_PERMS of a malformed @ name reads nothing
    (4.17's set_perms_special and 4.18's canonicalize refuse it first)."""
    tx = _start(xs)
    assert xs.err(Op.GET_PERMS, b"@nosuch\0", tx=tx) == "ENOENT"
    other.ok(Op.WRITE, b"/xsp-1\0")
    assert xs.err(Op.TRANSACTION_END, b"T\0", tx=tx) == "EAGAIN"

    tx = _start(xs)
    assert xs.err(Op.SET_PERMS, b"@no such\0n0\0", tx=tx) == "EINVAL"
    other.ok(Op.WRITE, b"/xsp-2\0")
    assert xs.ok(Op.TRANSACTION_END, b"T\0", tx=tx) == b"OK\0"
