"""The XenStore tree with xenstored's semantics: implicit parents, subtree removal,
inherited permissions, and transactions judged per node.

Pure data, no sockets: the server feeds requests in and carries the returned watch
events out. A transaction is an overlay over the live tree that records the
generation of every node it read or wrote; its commit fails with EAGAIN only if one
of those nodes changed meanwhile (the rule xenstored has followed since Xen 4.9),
so unrelated writers never make each other retry.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .paths import Perm, basename, is_child, parent_of
from .protocol import XsError

_ABSENT = -1  # the generation recorded for a node a transaction saw missing


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

    def read(self, tx: Transaction | None, path: str) -> bytes:
        node = self._get(tx, path)
        if node is None:
            raise XsError("ENOENT", path)
        return node.value

    def directory(self, tx: Transaction | None, path: str) -> list[str]:
        node = self._get(tx, path)
        if node is None:
            raise XsError("ENOENT", path)
        return list(node.children)

    def generation(self, tx: Transaction | None, path: str) -> int:
        node = self._get(tx, path)
        if node is None:
            raise XsError("ENOENT", path)
        return node.generation

    def get_perms(self, tx: Transaction | None, path: str) -> tuple[Perm, ...]:
        node = self._get(tx, path)
        if node is None:
            raise XsError("ENOENT", path)
        return node.perms

    def _create(self, tx: Transaction | None, path: str, value: bytes) -> None:
        """Create ``path`` and any missing ancestors; each inherits its parent's perms."""
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
        if path == "/":
            raise XsError("EINVAL", "cannot remove /")
        if self._get(tx, path) is None:
            if self._get(tx, parent_of(path)) is None:
                raise XsError("ENOENT", path)
            return []  # xenstored: removing a missing node under an existing parent is fine
        removed = self._subtree(tx, path)
        for p in reversed(removed):
            self._put(tx, p, None)
        parent_path = parent_of(path)
        parent = self._mutable(tx, parent_path)
        if basename(path) not in parent.children:
            # Only possible inside a transaction whose view of the parent predates the
            # node: the tree changed under it, which its commit would refuse anyway.
            raise XsError("EAGAIN", f"{path} changed during the transaction")
        parent.children.remove(basename(path))
        self._put(tx, parent_path, parent)
        events = [Event(p, exact=True) for p in removed[1:]] + [Event(path)]
        return self._events(tx, events)

    def set_perms(self, tx: Transaction | None, path: str, perms: tuple[Perm, ...]) -> list[Event]:
        node = self._mutable(tx, path)
        node.perms = perms
        self._put(tx, path, node)
        return self._events(tx, [Event(path)])

    def _subtree(self, tx: Transaction | None, path: str) -> list[str]:
        """``path`` and all nodes below it, parents before children."""
        out, stack = [], [path]
        while stack:
            p = stack.pop()
            node = self._get(tx, p)
            if node is None:
                continue
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
