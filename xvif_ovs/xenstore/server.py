"""A XenStore daemon on a Unix socket, for hosts (the lab, CI) that have no hypervisor.

Xen's own xenstored cannot run without one (see PLATFORM.md), yet the hotplug hook and
the controller must be exercised against the real wire protocol, and Xen's clients
(xenstore-utils, libxenstore via XENSTORED_PATH, pyxs) must work unmodified. Every
socket client is dom0, as with xenstored's socket. One asyncio loop serialises all
requests, which gives the same atomicity xenstored's single thread gives.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..instance import bind_unix
from . import paths
from .protocol import HEADER, XENSTORE_PAYLOAD_MAX, Header, Op, XsError, encode, one_arg, split_strings
from .store import Event, Store, Transaction, matches

log = logging.getLogger("xvif_ovs.xenstored")

OK = b"OK\0"
# xenstored exempts dom0 from its quotas (10 transactions, 128 watches); every client
# here is dom0, so the bounds are only there to keep one runaway client from eating memory.
MAX_TRANSACTIONS_PER_CONN = 1024
MAX_WATCHES_PER_CONN = 4096
MAX_QUEUED_BYTES = 4 << 20  # a client that stops reading its watch events is cut off


@dataclass
class Watch:
    path: str  # canonical
    token: bytes
    relative: bool


@dataclass
class Connection:
    cid: int
    writer: asyncio.StreamWriter
    domid: int = 0
    watches: list[Watch] = field(default_factory=list)
    transactions: dict[int, Transaction] = field(default_factory=dict)

    def send(self, op: int, req_id: int, tx_id: int, payload: bytes) -> None:
        if self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > MAX_QUEUED_BYTES:
            log.warning("connection %d: client is not reading its replies, closing it", self.cid)
            self.writer.close()
            return
        self.writer.write(encode(op, req_id, tx_id, payload))


class XenStoreServer:
    def __init__(self, store: Store | None = None) -> None:
        self.store = store or Store()
        self.connections: dict[int, Connection] = {}
        self.introduced: set[int] = {0}
        self.special_perms = {p: (paths.Perm("n", 0),) for p in paths.SPECIAL_WATCHES}
        self._cids = itertools.count(1)
        self._txids = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self.socket_inode: int | None = None  # of the socket start() bound: ours to remove
        self._events: list[Event] = []  # raised by the request being handled
        self._handlers: dict[int, Callable[[Connection, Header, bytes, Transaction | None], bytes]] = {
            Op.READ: self._read,
            Op.DIRECTORY: self._directory,
            Op.DIRECTORY_PART: self._directory_part,
            Op.WRITE: self._write,
            Op.MKDIR: self._mkdir,
            Op.RM: self._rm,
            Op.GET_PERMS: self._get_perms,
            Op.SET_PERMS: self._set_perms,
            Op.WATCH: self._watch,
            Op.UNWATCH: self._unwatch,
            Op.TRANSACTION_START: self._transaction_start,
            Op.TRANSACTION_END: self._transaction_end,
            Op.GET_DOMAIN_PATH: self._get_domain_path,
            Op.RESET_WATCHES: self._reset_watches,
            Op.INTRODUCE: self._introduce,
            Op.RELEASE: self._release,
            Op.IS_DOMAIN_INTRODUCED: self._is_domain_introduced,
            Op.CONTROL: self._control,
            Op.RESUME: self._resume,
            Op.SET_TARGET: self._set_target,
        }

    # -- socket ------------------------------------------------------------------

    async def start(self, socket_path: str) -> None:
        """Listen on ``socket_path``; AlreadyRunning if a live process serves it. A stale
        socket (nobody listens) is replaced. The socket is bound here, not by asyncio,
        which would unlink whatever is at the path, a live server's socket included."""
        sock = bind_unix(socket_path, "XenStore server")
        self.socket_inode = os.stat(socket_path).st_ino
        self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        log.info("listening on %s", socket_path)

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(next(self._cids), writer)
        self.connections[conn.cid] = conn
        log.debug("connection %d opened", conn.cid)
        try:
            while True:
                try:
                    raw = await reader.readexactly(HEADER.size)
                except asyncio.IncompleteReadError as e:
                    if e.partial:
                        log.warning("connection %d: truncated header (%d bytes), closing", conn.cid, len(e.partial))
                    break
                hdr = Header.unpack(raw)
                if hdr.length > XENSTORE_PAYLOAD_MAX:
                    # xenstored treats this as a protocol error and drops the socket unanswered.
                    log.warning(
                        "connection %d: request of %d bytes exceeds XENSTORE_PAYLOAD_MAX %d, closing",
                        conn.cid,
                        hdr.length,
                        XENSTORE_PAYLOAD_MAX,
                    )
                    break
                try:
                    payload = await reader.readexactly(hdr.length)
                except asyncio.IncompleteReadError:
                    log.warning("connection %d: truncated payload for request type %d, closing", conn.cid, hdr.type)
                    break
                self.handle(conn, hdr, payload)
                await writer.drain()
        except (ConnectionError, OSError) as e:
            log.debug("connection %d: %s", conn.cid, e)
        finally:
            del self.connections[conn.cid]
            writer.close()
            log.debug("connection %d closed", conn.cid)

    # -- dispatch ----------------------------------------------------------------

    def handle(self, conn: Connection, hdr: Header, payload: bytes) -> None:
        handler = self._handlers.get(hdr.type)
        self._events = []
        try:
            if handler is None:
                raise XsError("ENOSYS", f"unknown request type {hdr.type}")
            tx = None
            if hdr.tx_id and hdr.type not in (Op.TRANSACTION_START, Op.WATCH, Op.UNWATCH, Op.RESET_WATCHES):
                tx = conn.transactions.get(hdr.tx_id)
                if tx is None:
                    raise XsError("ENOENT", f"no transaction {hdr.tx_id}")
            reply = handler(conn, hdr, payload, tx)
        except XsError as e:
            log.debug("connection %d: %s -> %s", conn.cid, _op_name(hdr.type), e)
            conn.send(Op.ERROR, hdr.req_id, hdr.tx_id, e.errno_name.encode() + b"\0")
            return
        except UnicodeDecodeError:
            conn.send(Op.ERROR, hdr.req_id, hdr.tx_id, b"EINVAL\0")
            return
        # As in xenstored, the events a request raises are queued before its reply;
        # a new watch's first event follows the OK.
        events, self._events = self._events, []
        self.fire(events)
        conn.send(hdr.type, hdr.req_id, hdr.tx_id, reply)
        if hdr.type == Op.WATCH:
            self._send_event(conn, conn.watches[-1], conn.watches[-1].path)

    def _path(self, conn: Connection, raw: bytes, tx: Transaction | None, allow_special: bool = False) -> str:
        try:
            return paths.canonical(raw.decode("ascii"), conn.domid, allow_special)
        except (XsError, UnicodeDecodeError):
            if tx is not None:
                # Xen 4.17's get_node() refuses a malformed path only after asking its
                # parents, as for a missing node, so a transaction reads them (4.18
                # checks first and reads nothing); see Store.ask_parents.
                name = raw.decode("latin-1")
                if not name.startswith(("/", "@")):
                    name = f"{paths.home_of(conn.domid)}/{name}"
                self.store.ask_parents(tx, name)
            raise

    def fire(self, events: list[Event]) -> None:
        for conn in list(self.connections.values()):
            for w in conn.watches:
                for ev in events:
                    if matches(w.path, ev):
                        self._send_event(conn, w, ev.path)

    def _send_event(self, conn: Connection, w: Watch, path: str) -> None:
        shown = paths.relative_to_home(path, conn.domid) if w.relative else path
        conn.send(Op.WATCH_EVENT, 0, 0, shown.encode() + b"\0" + w.token + b"\0")

    # -- handlers: each returns the reply payload or raises XsError ---------------

    def _read(self, conn, hdr, payload, tx) -> bytes:
        return self.store.read(tx, self._path(conn, one_arg(payload), tx))

    def _directory(self, conn, hdr, payload, tx) -> bytes:
        names = self.store.directory(tx, self._path(conn, one_arg(payload), tx))
        reply = b"".join(n.encode() + b"\0" for n in names)
        if len(reply) > XENSTORE_PAYLOAD_MAX:
            raise XsError("E2BIG", "directory too large; use DIRECTORY_PART")
        return reply

    def _directory_part(self, conn, hdr, payload, tx) -> bytes:
        raw_path, raw_off = split_strings(payload, 2)
        path = self._path(conn, raw_path, tx)
        # The node first, as xenstored reads it before it looks at the offset.
        names = self.store.directory(tx, path)
        gen = f"{self.store.generation(tx, path)}".encode() + b"\0"
        if not raw_off.isdigit():
            raise XsError("EINVAL", "offset is not a number")
        offset = int(raw_off)
        body = b"".join(n.encode() + b"\0" for n in names)
        if offset > len(body):
            raise XsError("EINVAL", "offset past the end of the directory")
        room = XENSTORE_PAYLOAD_MAX - len(gen) - 1
        chunk = body[offset:]
        if len(chunk) <= room:
            return gen + chunk + b"\0"
        cut = chunk.rfind(b"\0", 0, room) + 1  # whole names only
        return gen + chunk[:cut]

    def _write(self, conn, hdr, payload, tx) -> bytes:
        if b"\0" not in payload:
            raise XsError("EINVAL", "WRITE needs path NUL value")
        raw_path, value = payload.split(b"\0", 1)
        self._events.extend(self.store.write(tx, self._path(conn, raw_path, tx), value))
        return OK

    def _mkdir(self, conn, hdr, payload, tx) -> bytes:
        self._events.extend(self.store.mkdir(tx, self._path(conn, one_arg(payload), tx)))
        return OK

    def _rm(self, conn, hdr, payload, tx) -> bytes:
        self._events.extend(self.store.rm(tx, self._path(conn, one_arg(payload), tx)))
        return OK

    def _get_perms(self, conn, hdr, payload, tx) -> bytes:
        path = self._path(conn, one_arg(payload), tx, allow_special=True)
        if not path.startswith("@"):
            perms = self.store.get_perms(tx, path)
        elif path in self.special_perms:
            perms = self.special_perms[path]
        else:
            # xenstored reads "/" for any other @ name: 4.17 asks its parents after
            # refusing it (EINVAL), 4.18+ after not finding it as a node (ENOENT).
            self.store.ask_parents(tx, path)
            raise XsError("ENOENT", path)
        return b"".join(str(p).encode() + b"\0" for p in perms)

    def _set_perms(self, conn, hdr, payload, tx) -> bytes:
        if not payload.endswith(b"\0"):
            raise XsError("EINVAL", "SET_PERMS arguments must be NUL-terminated")
        args = payload[:-1].split(b"\0")
        # xenstored parses the permissions before it looks at the path, and takes @
        # names (4.17: set_perms_special) without reading any node.
        perms = paths.parse_perms([a.decode("ascii") for a in args[1:]])
        path = self._path(conn, args[0], None if args[0].startswith(b"@") else tx, allow_special=True)
        if path.startswith("@"):
            self._special_perms(path)
            self.special_perms[path] = perms
            return OK
        self._events.extend(self.store.set_perms(tx, path, perms))
        return OK

    def _special_perms(self, path: str) -> tuple[paths.Perm, ...]:
        """@introduceDomain and @releaseDomain are nodes of their own in xenstored (n0).

        They live here, outside the tree and its transactions, as in Xen 4.17, which
        sets their perms at once even inside a transaction (set_perms_special). Since
        4.18 they are nodes of the database, so GET/SET_PERMS of them inside a
        transaction read or write them as part of it; we do not follow that.
        """
        if path not in self.special_perms:
            raise XsError("ENOENT", path)
        return self.special_perms[path]

    def _watch(self, conn, hdr, payload, tx) -> bytes:
        raw_path, token = split_strings(payload, 2)
        path = self._path(conn, raw_path, None, allow_special=True)
        if any(w.path == path and w.token == token for w in conn.watches):
            raise XsError("EEXIST", "watch already registered")
        if len(conn.watches) >= MAX_WATCHES_PER_CONN:
            raise XsError("E2BIG", "too many watches on this connection")
        w = Watch(path, token, relative=not raw_path.startswith((b"/", b"@")))
        conn.watches.append(w)
        return OK

    def _unwatch(self, conn, hdr, payload, tx) -> bytes:
        raw_path, token = split_strings(payload, 2)
        path = self._path(conn, raw_path, None, allow_special=True)
        for i, w in enumerate(conn.watches):
            if w.path == path and w.token == token:
                del conn.watches[i]
                return OK
        raise XsError("ENOENT", "no such watch")

    def _reset_watches(self, conn, hdr, payload, tx) -> bytes:
        conn.watches.clear()
        conn.transactions.clear()
        return OK

    def _transaction_start(self, conn, hdr, payload, tx) -> bytes:
        if hdr.tx_id:
            raise XsError("EBUSY", "already in a transaction")
        if len(conn.transactions) >= MAX_TRANSACTIONS_PER_CONN:
            raise XsError("ENOSPC", "too many open transactions on this connection")
        txid = next(self._txids)
        conn.transactions[txid] = Transaction()
        return f"{txid}".encode() + b"\0"

    def _transaction_end(self, conn, hdr, payload, tx) -> bytes:
        arg = one_arg(payload)
        if arg not in (b"T", b"F"):
            raise XsError("EINVAL", "TRANSACTION_END takes T or F")
        if tx is None:
            raise XsError("ENOENT", "no transaction")
        del conn.transactions[hdr.tx_id]
        if arg == b"T":
            self._events.extend(self.store.commit(tx))
        return OK

    def _get_domain_path(self, conn, hdr, payload, tx) -> bytes:
        # xenstored parses this one with atoi(): "abc" is domain 0, and so are we.
        arg = one_arg(payload)
        digits = arg[: len(arg) - len(arg.lstrip(b"0123456789"))]
        return paths.home_of(int(digits or b"0") & 0xFFFFFFFF).encode() + b"\0"

    def _introduce(self, conn, hdr, payload, tx) -> bytes:
        raw_domid, _gfn, raw_port = split_strings(payload, 3)
        domid = _domid(raw_domid)
        if not raw_port.isdigit() or int(raw_port) <= 0:
            raise XsError("EINVAL", "event channel port must be a positive number")
        if domid not in self.introduced:
            self.introduced.add(domid)
            self._events.append(Event("@introduceDomain"))
        return OK

    def _release(self, conn, hdr, payload, tx) -> bytes:
        domid = _domid(one_arg(payload))
        if domid == 0:
            raise XsError("EINVAL", "dom0 cannot be released")
        if domid not in self.introduced:
            raise XsError("ENOENT", f"domain {domid} was not introduced")
        self.introduced.discard(domid)
        self._events.append(Event("@releaseDomain"))
        return OK

    def _is_domain_introduced(self, conn, hdr, payload, tx) -> bytes:
        return b"T\0" if _domid(one_arg(payload)) in self.introduced else b"F\0"

    def _resume(self, conn, hdr, payload, tx) -> bytes:
        if _domid(one_arg(payload)) not in self.introduced:
            raise XsError("ENOENT", "domain not introduced")
        return OK

    def _set_target(self, conn, hdr, payload, tx) -> bytes:
        domid, target = (_domid(a) for a in split_strings(payload, 2))
        if domid not in self.introduced or target not in self.introduced:
            raise XsError("ENOENT", "domain not introduced")
        return OK

    def _control(self, conn, hdr, payload, tx) -> bytes:
        args = payload.rstrip(b"\0").split(b"\0")
        if args == [b"check"]:
            return OK
        if args[0] == b"print" and len(args) == 2:
            log.info("control print: %s", args[1].decode(errors="replace"))
            return OK
        raise XsError("EINVAL", f"unknown control command {args[0]!r}")


def _domid(raw: bytes) -> int:
    if not raw.isdigit() or int(raw) >= 0x7FF0:
        raise XsError("EINVAL", f"{raw!r} is not a domid")
    return int(raw)


def _op_name(op: int) -> str:
    try:
        return Op(op).name
    except ValueError:
        return str(op)
