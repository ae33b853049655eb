"""The XenStore tree with xenstored's semantics: implicit parents, subtree removal,
inherited permissions, and transactions judged per node.

Pure data, no sockets: the server feeds requests in and carries the returned watch
events out. A transaction is an overlay over the live tree that records the
generation of every node it read or wrote; its commit fails with EAGAIN only if one
of those nodes changed meanwhile (the rule xenstored has followed since Xen 4.9),
so unrelated writers never make each other retry.

Which nodes a transaction reads, and so conflicts on, is exactly xenstored's set
(Xen 4.17-4.19): every node its read_node() looks at counts, through access_node(..,
NODE_ACCESS_READ) in transaction.c, as of its first look (a missing node as "no
generation"). (finalize_transaction checks only nodes whose first access was a read,
but every request reads a node before it writes or deletes it, so all of them count.)
In a transaction:

- READ, DIRECTORY, DIRECTORY_PART, GET_PERMS, SET_PERMS, WRITE, MKDIR and RM all
  read their node first (core.c: get_node); the modifying ones then rewrite it.
- When that node is missing, get_node() asks its ancestors, nearest first, until one
  exists (errno_from_parents/ask_parents, which choose ENOENT or EACCES): each of
  them is read too, the missing ones and the existing one. A transaction that was
  told ENOENT therefore fails if the nearest existing ancestor changes (gains or
  loses a child, say) or if any of those missing nodes appears. See ``ask_parents``.
- WRITE and MKDIR of a missing node create it and every missing ancestor
  (construct_node): all were read missing, the nearest existing ancestor is read
  and rewritten with the new child. MKDIR of an existing node only reads it.
- RM reads the node, its parent (rm_node; even a missing node under an existing
  parent, which is not an error: do_rm) and every node below it as the transaction
  sees them (walk_node_tree), deletes those and rewrites the parent.
- A node changes (gets a new generation) whenever it is written, even with the same
  value, or deleted, and a parent is rewritten whenever a child is added or removed:
  so reading a directory conflicts with another connection adding or removing an
  entry in it. Nodes a transaction only read keep their generation at its commit.

Xen 4.17 also asks the ancestors of a path it refuses as malformed (is_valid_nodename
fails inside get_node, then errno_from_parents walks up the string); 4.18 moved that
check into canonicalize(), before any read. We follow 4.17 (``ask_parents`` is called
by the server for such paths).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .paths import Perm, basename, is_child, parent_of
from .protocol import XsError

_ABSENT = -1  # the generation recorded for a node a transaction saw missing


def xs_parent(name: str) -> str:
    """xenstored's get_parent(): everything before the last "/" after the first
    character, else "/". The same as ``paths.parent_of`` for valid paths, and also
    defined on the malformed ones (``/a/`` gives ``/a``, ``@x`` gives ``/``)."""
    slash = name.rfind("/", 1)
    return name[:slash] if slash > 0 else "/"


@dataclass
class Node:
    value: bytes
    perms: tuple[Perm, ...]
    children: list[str] = field(default_factory=list)  # names, in creation order
    generation: int = 0

    def copy(self) -> Node:
        return replace(self, children=list(self.children))


@dataclass(frozen=True)
class Event:
    """A change that fires watches: ``exact`` ones only those on ``path`` itself
    (descendants of a removed subtree), the others every watch at or above it."""

    path: str
    exact: bool = False


@dataclass
class Transaction:
    changes: dict[str, Node | None] = field(default_factory=dict)
    accessed: dict[str, int] = field(default_factory=dict)  # generation at first access
    seen: dict[str, Node | None] = field(default_factory=dict)  # each node as first seen
    events: list[Event] = field(default_factory=list)


class Store:
    def __init__(self) -> None:
        root_perms = (Perm("n", 0),)
        self._nodes: dict[str, Node] = {"/": Node(b"", root_perms)}
        self._generation = 0
        # xenstored's setup_structure() makes /tool/xenstored at start.
        self.write(None, "/tool/xenstored", b"")

    # -- views -----------------------------------------------------------------

    def _get(self, tx: Transaction | None, path: str) -> Node | None:
        if tx is not None:
            if path in tx.changes:
                return tx.changes[path]
            if path not in tx.seen:
                # A transaction sees every node as it was at its first access (as
                # xenstored copies it then), never a later version: otherwise it could
                # build on a node that is gone again by commit time.
                node = self._nodes.get(path)
                tx.accessed.setdefault(path, node.generation if node else _ABSENT)
                tx.seen[path] = node.copy() if node else None
            return tx.seen[path]
        return self._nodes.get(path)

    def _put(self, tx: Transaction | None, path: str, node: Node | None) -> None:
        if tx is not None:
            if path not in tx.changes:
                self._get(tx, path)  # record the generation it is based on
            tx.changes[path] = node
            return
        if node is None:
            self._nodes.pop(path, None)
        else:
            self._generation += 1
            node.generation = self._generation
            self._nodes[path] = node

    def _mutable(self, tx: Transaction | None, path: str) -> Node:
        node = self._get(tx, path)
        if node is None:
            raise XsError("ENOENT", path)
        if tx is not None and tx.changes.get(path) is node:
            return node
        return node.copy()

    # -- requests --------------------------------------------------------------

    def exists(self, tx: Transaction | None, path: str) -> bool:
        return self._get(tx, path) is not None

    def ask_parents(self, tx: Transaction | None, name: str) -> None:
        """Read the ancestors of ``name``, nearest first, up to the first that exists.

        xenstored's get_node() does this whenever it cannot hand out a node
        (errno_from_parents -> ask_parents in core.c): the nearest existing ancestor's
        permissions decide between the caller's errno and EACCES, so that a domain
        learns nothing about nodes it may not see. Each ancestor is read with
        read_node(), so inside a transaction all of them, missing ones included,
        count as read: the transaction fails if the existing one changes or a
        missing one appears before its commit. Every socket client is dom0 and is
        never refused, but the reads, and so the conflicts, happen all the same.
        """
        if tx is None:
            return
        while True:
            name = xs_parent(name)
            if self._get(tx, name) is not None or name == "/":
                return

    def _lookup(self, tx: Transaction | None, path: str) -> Node:
        """xenstored's get_node(): the node, or ENOENT once its ancestors were asked."""
        node = self._get(tx, path)
        if node is None:
            self.ask_parents(tx, path)
            raise XsError("ENOENT", path)
        return node

    def read(self, tx: Transaction | None, path: str) -> bytes:
        return self._lookup(tx, path).value

    def directory(self, tx: Transaction | None, path: str) -> list[str]:
        return list(self._lookup(tx, path).children)

    def generation(self, tx: Transaction | None, path: str) -> int:
        return self._lookup(tx, path).generation

    def get_perms(self, tx: Transaction | None, path: str) -> tuple[Perm, ...]:
        return self._lookup(tx, path).perms

    def _create(self, tx: Transaction | None, path: str, value: bytes) -> None:
        """Create ``path`` and any missing ancestors; each inherits its parent's perms.

        As construct_node() does, this reads every ancestor up to the first existing
        one (the same nodes ``ask_parents`` read when the caller found ``path``
        missing) and rewrites that one with its new child.
        """
        parent_path = parent_of(path)
        parent = self._get(tx, parent_path)
        if parent is None:
            self._create(tx, parent_path, b"")
            parent = self._get(tx, parent_path)
            assert parent is not None
        parent = self._mutable(tx, parent_path)
        parent.children.append(basename(path))
        self._put(tx, parent_path, parent)
        self._put(tx, path, Node(value, parent.perms))

    def write(self, tx: Transaction | None, path: str, value: bytes) -> list[Event]:
        if path == "/":
            node = self._mutable(tx, "/")
            node.value = value
            self._put(tx, "/", node)
        elif self._get(tx, path) is None:
            self._create(tx, path, value)
        else:
            node = self._mutable(tx, path)
            node.value = value
            self._put(tx, path, node)
        return self._events(tx, [Event(path)])

    def mkdir(self, tx: Transaction | None, path: str) -> list[Event]:
        if self._get(tx, path) is not None:
            return []
        self._create(tx, path, b"")
        return self._events(tx, [Event(path)])

    def rm(self, tx: Transaction | None, path: str) -> list[Event]:
        """Remove ``path`` and everything below it, as do_rm() and rm_node() do.

        The node is looked up first, even "/" (refused only once read). A missing node
        is fine when its parent exists; either way get_node() asked its ancestors
        (``ask_parents``). Then the parent, read before the subtree, and every node
        below ``path`` as the transaction sees it (walk_node_tree) are read, so another
        connection adding a node anywhere under ``path`` makes the commit fail.
        """
        if self._get(tx, path) is None:
            self.ask_parents(tx, path)
            if self._get(tx, parent_of(path)) is None:
                raise XsError("ENOENT", path)
            return []  # xenstored: removing a missing node under an existing parent is fine
        if path == "/":
            raise XsError("EINVAL", "cannot remove /")
        parent_path = parent_of(path)
        if self._get(tx, parent_path) is None:
            # rm_node(): a transaction whose view has the node but not its parent
            # (the parent went away before the transaction first looked at it).
            raise XsError("EINVAL", f"{parent_path} is gone")
        removed = self._subtree(tx, path)
        parent = self._mutable(tx, parent_path)
        if basename(path) not in parent.children:
            # delete_child() finds no entry: a transaction whose view of the parent
            # predates the node. xenstored calls that corruption and answers EIO; the
            # commit would fail with EAGAIN anyway, as the parent or the node changed.
            raise XsError("EIO", f"{path} is not listed in {parent_path}")
        for p in reversed(removed):
            self._put(tx, p, None)
        parent.children.remove(basename(path))
        self._put(tx, parent_path, parent)
        events = [Event(p, exact=True) for p in removed[1:]] + [Event(path)]
        return self._events(tx, events)

    def set_perms(self, tx: Transaction | None, path: str, perms: tuple[Perm, ...]) -> list[Event]:
        self._lookup(tx, path)
        node = self._mutable(tx, path)
        node.perms = perms
        self._put(tx, path, node)
        return self._events(tx, [Event(path)])

    def _subtree(self, tx: Transaction | None, path: str) -> list[str]:
        """``path`` and all nodes below it, parents before children, each one read.

        A child listed by its parent but missing can only happen inside a transaction
        that saw the parent before another connection removed the child (or looked for
        the child, missing, before the parent gained it): walk_node_tree() then stops
        and rm_node() answers EIO, and the commit would fail with EAGAIN anyway.
        """
        out, stack = [], [path]
        while stack:
            p = stack.pop()
            node = self._get(tx, p)
            if node is None:
                raise XsError("EIO", f"{p} is listed by its parent but missing")
            out.append(p)
            prefix = p if p.endswith("/") else p + "/"
            stack.extend(prefix + c for c in reversed(node.children))
        return out

    def _events(self, tx: Transaction | None, events: list[Event]) -> list[Event]:
        if tx is not None:
            tx.events.extend(events)
            return []
        return events

    # -- transactions ----------------------------------------------------------

    def commit(self, tx: Transaction) -> list[Event]:
        """Apply ``tx`` if none of the nodes it touched changed meanwhile, else EAGAIN."""
        for path, gen in tx.accessed.items():
            cur = self._nodes.get(path)
            if (cur.generation if cur else _ABSENT) != gen:
                raise XsError("EAGAIN", f"{path} changed during the transaction")
        for path, node in tx.changes.items():
            if node is not None:
                node = node.copy()
            self._put(None, path, node)
        return tx.events

    def __len__(self) -> int:
        return len(self._nodes)

    # -- persistence ---------------------------------------------------------------------

    def dump(self) -> dict:
        """The tree as JSON-able data (values as latin-1 text: XenStore values are bytes)."""
        return {
            path: {"value": n.value.decode("latin-1"), "perms": [str(p) for p in n.perms], "children": n.children}
            for path, n in self._nodes.items()
        }

    @classmethod
    def load(cls, data: dict) -> Store:
        s = cls()
        s._nodes = {}
        for path, n in data.items():
            s._generation += 1
            s._nodes[path] = Node(
                n["value"].encode("latin-1"),
                tuple(Perm.parse(p) for p in n["perms"]),
                list(n["children"]),
                s._generation,
            )
        if "/" not in s._nodes:
            raise ValueError("a saved XenStore without its root")
        return s


def matches(watch_path: str, event: Event) -> bool:
    if event.exact or event.path.startswith("@"):
        return watch_path == event.path
    return not watch_path.startswith("@") and is_child(event.path, watch_path)
