"""One switch connection: synchronous requests over os-ken's asynchronous datapath.

os-ken delivers replies as events on its own thread; the reconciler thread waits for
them here by xid. Reading the switch's flows and groups, and applying a plan atomically
in an ONF bundle (OpenFlow 1.3's bundle extension, which OVS implements), are the only
two things the controller ever does to a switch.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from ..pipeline.diff import Plan, by_owner, owner_of
from ..pipeline.flow import COOKIE_MAGIC, COOKIE_MASK, Flow, GroupEntry, is_our_group
from . import ofmsg, wire
from .counters import FlowCounters

log = logging.getLogger("xvif_ovs.controller")
T = TypeVar("T")
TIMEOUT = 10.0
_bundle_ids = itertools.count(1)


class SwitchError(Exception):
    """The switch refused something or did not answer."""


class _Waiter:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.replies: list[Any] = []
        self.error: Any = None


class Session:
    def __init__(self, dp: Any) -> None:
        self.dp = dp
        self.bridge: str | None = None
        self.ports: dict[str, tuple[int, bool]] = {}  # name -> (ofport, live)
        self.installed_flows: dict[int, list[Flow]] = {}  # ours, by cookie owner
        self.installed_groups: list[GroupEntry] = []
        self.applied: dict[int, tuple[Flow, ...]] = {}  # the desired tuples last applied, by owner
        self.synced = False
        self._waiters: dict[int, _Waiter] = {}
        self._bundled: set[int] = set()  # xids of messages added to the open bundle
        self._bundle_errors: list[Any] = []
        self._lock = threading.Lock()
        self.closed = False
        self.worker: Any = None  # runtime.SwitchWorker: this switch's own thread
        # Our flows per table, swapped whole on every change (readers in other threads,
        # the metrics, see one consistent dict without a lock).
        self.table_counts: dict[int, int] = {}
        self._counters: dict[int, FlowCounters] = {}  # by purpose: see counters()
        # Several threads send on this connection (the switch's worker, the metrics, os-ken's
        # own for packet-outs): os-ken's xid counter (Datapath.set_xid) is a plain +=, so
        # two could take one xid, and a reply or an error would reach the wrong waiter.
        self._xid_lock = threading.Lock()
        unlocked = getattr(dp, "set_xid", None)
        if unlocked is not None:

            def set_xid(msg: Any) -> Any:
                with self._xid_lock:
                    return unlocked(msg)

            dp.set_xid = set_xid

    # -- called from os-ken's thread --------------------------------------------------

    def on_reply(self, msg: Any, more: bool = False) -> None:
        with self._lock:
            w = self._waiters.get(msg.xid)
        if w is None:
            return
        w.replies.append(msg)
        if not more:
            w.done.set()

    def on_error(self, msg: Any) -> None:
        with self._lock:
            w = self._waiters.get(msg.xid)
            if w is None and msg.xid in self._bundled:
                self._bundle_errors.append(msg)
                return
        if w is None:
            log.error(
                "switch %s reported an error for xid %s: type %s code %s", self.bridge, msg.xid, msg.type, msg.code
            )
            return
        w.error = msg
        w.done.set()

    def close(self) -> None:
        self.closed = True
        with self._lock:
            for w in self._waiters.values():
                w.done.set()

    # -- called from the reconciler thread -----------------------------------------------

    def request(self, msg: Any, what: str, timeout: float = TIMEOUT) -> list[Any]:
        return self._await(self._send(msg, what), msg.xid, what, timeout)

    def _send(self, msg: Any, what: str) -> _Waiter:
        """Send without waiting for the answer: requests on one connection are answered
        in order, so several can be in flight (each round trip to a switch holding
        hundreds of thousands of flows costs milliseconds)."""
        self.dp.set_xid(msg)
        w = _Waiter()
        with self._lock:
            self._waiters[msg.xid] = w
        if not self.dp.send_msg(msg):
            with self._lock:
                self._waiters.pop(msg.xid, None)
            raise SwitchError(f"{what}: the connection to {self.bridge} is closed")
        return w

    def _await(self, w: _Waiter, xid: int, what: str, timeout: float = TIMEOUT) -> list[Any]:
        try:
            if not w.done.wait(timeout) or self.closed:
                raise SwitchError(f"{what}: no answer from {self.bridge} within {timeout:.0f} s")
            if w.error is not None:
                raise SwitchError(f"{what}: {self.bridge} answered error type {w.error.type} code {w.error.code}")
            return w.replies
        finally:
            with self._lock:
                self._waiters.pop(xid, None)

    def read_ports(self) -> None:
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        replies = self.request(parser.OFPPortDescStatsRequest(self.dp, 0), "port description")
        ports = {}
        for r in replies:
            for p in r.body:
                live = not (p.state & ofp.OFPPS_LINK_DOWN) and not (p.config & ofp.OFPPC_PORT_DOWN)
                ports[p.name.decode() if isinstance(p.name, bytes) else p.name] = (p.port_no, live)
                if p.port_no == ofp.OFPP_LOCAL:
                    self.bridge = p.name.decode() if isinstance(p.name, bytes) else p.name
        with self._lock:
            self.ports = ports

    def port_changed(self, name: str, number: int, live: bool, removed: bool) -> None:
        """A PORT_STATUS applied in place of re-reading every port: on a bridge of
        a thousand ports each round trip to ovs-vswitchd can take a main-loop
        iteration (hundreds of ms in the lab's userspace datapath). Copy and swap,
        so that a reader iterating the old dict is never disturbed."""
        with self._lock:
            ports = dict(self.ports)
            if removed:
                if ports.get(name, (number,))[0] == number:
                    ports.pop(name, None)
            else:
                ports[name] = (number, live)
            self.ports = ports

    def read_tables(self) -> None:
        """What the switch has now: our flows (by cookie) and our groups (by id range);
        anything else on the bridge is someone else's and never read, changed or deleted."""
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        req = parser.OFPFlowStatsRequest(
            self.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, COOKIE_MAGIC, COOKIE_MASK, parser.OFPMatch()
        )
        flows = [ofmsg.flow_from_stats(ofp, s) for r in self.request(req, "flow stats") for s in r.body]
        greq = parser.OFPGroupDescStatsRequest(self.dp, 0)
        groups = [
            ofmsg.group_from_desc(ofp, d)
            for r in self.request(greq, "group description")
            for d in r.body
            if is_our_group(d.group_id)
        ]
        self.installed_flows, self.installed_groups = by_owner(flows), groups
        counts: dict[int, int] = {}
        for f in flows:
            counts[f.table] = counts.get(f.table, 0) + 1
        self.table_counts = counts
        self.applied = {}  # compare everything against what was just read

    def ensure_meter(self, meter_id: int, rate: int, burst: int) -> None:
        """Our meter (packets a second, dropped beyond): added, or set to our rate if
        it exists (a reconnect, or someone changed it). Flows that use it need it first."""
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        bands = [parser.OFPMeterBandDrop(rate=rate, burst_size=burst)]
        flags = ofp.OFPMF_PKTPS | ofp.OFPMF_BURST
        for command in (ofp.OFPMC_ADD, ofp.OFPMC_MODIFY):
            mod = parser.OFPMeterMod(self.dp, command=command, flags=flags, meter_id=meter_id, bands=bands)
            w = self._send(mod, "meter")
            try:
                self.request(parser.OFPBarrierRequest(self.dp), "barrier")  # answered after the meter's error, if any
            finally:
                with self._lock:
                    self._waiters.pop(mod.xid, None)
            if w.error is None:
                return
            if not (w.error.type == ofp.OFPET_METER_MOD_FAILED and w.error.code == ofp.OFPMMFC_METER_EXISTS):
                raise SwitchError(
                    f"meter {meter_id}: {self.bridge} answered error type {w.error.type} code {w.error.code}"
                )

    def flow_stats(self, cookie: int, mask: int, timeout: float = TIMEOUT) -> list[Any]:
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        req = parser.OFPFlowStatsRequest(
            self.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, cookie, mask, parser.OFPMatch()
        )
        return [s for r in self.request(req, "flow stats", timeout) for s in r.body]

    def packet_count(self, cookie: int, mask: int) -> int:
        """Packets matched by our flows with that cookie, summed by the switch: one short
        reply however many flows there are."""
        return self.aggregate(cookie, mask)[0]

    def aggregate(self, cookie: int, mask: int, timeout: float = TIMEOUT) -> tuple[int, int, int]:
        """(packets, bytes, flows) of our flows with that cookie."""
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        req = parser.OFPAggregateStatsRequest(
            self.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, cookie, mask, parser.OFPMatch()
        )
        bodies = [r.body for r in self.request(req, "aggregate stats", timeout)]
        return (
            sum(b.packet_count for b in bodies),
            sum(b.byte_count for b in bodies),
            sum(b.flow_count for b in bodies),
        )

    def counters(self, purpose: int) -> FlowCounters:
        """This switch's counters of one purpose's flows, shared by every reader."""
        with self._lock:
            c = self._counters.get(purpose)
            if c is None:
                c = self._counters[purpose] = FlowCounters(purpose)
            return c

    def gather(self, requests: list[tuple[Any, str]], timeout: float) -> list[list[Any] | SwitchError]:
        """Several requests sent at once and awaited within one deadline: a slow switch
        costs one timeout, not one per request. Each answer, or the SwitchError it got."""
        sent: list[tuple[_Waiter, Any, str] | SwitchError] = []
        for msg, what in requests:
            try:
                sent.append((self._send(msg, what), msg, what))
            except SwitchError as e:
                sent.append(e)
        deadline = time.monotonic() + timeout
        out: list[list[Any] | SwitchError] = []
        for item in sent:
            if isinstance(item, SwitchError):
                out.append(item)
                continue
            w, msg, what = item
            try:
                out.append(self._await(w, msg.xid, what, max(0.0, deadline - time.monotonic())))
            except SwitchError as e:
                out.append(e)
        return out

    def aggregate_request(self, cookie: int, mask: int) -> Any:
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        return parser.OFPAggregateStatsRequest(
            self.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, cookie, mask, parser.OFPMatch()
        )

    def port_stats(self, timeout: float = TIMEOUT) -> dict[int, Any]:
        """Every port's counters (OFPPortStats, by ofport) in one request."""
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        req = parser.OFPPortStatsRequest(self.dp, 0, ofp.OFPP_ANY)
        return {p.port_no: p for r in self.request(req, "port stats", timeout) for p in r.body}

    def table_stats(self, timeout: float = TIMEOUT) -> dict[int, int]:
        """Flows in each table that holds any (every application's, learned ones too)."""
        parser = self.dp.ofproto_parser
        req = parser.OFPTableStatsRequest(self.dp, 0)
        return {t.table_id: t.active_count for r in self.request(req, "table stats", timeout) for t in r.body}

    def _next_xid(self) -> int:
        """As Datapath.set_xid does, for messages we encode ourselves."""
        with self._xid_lock:
            self.dp.xid = (self.dp.xid + 1) & self.dp.ofproto.MAX_XID
            return self.dp.xid

    def apply(self, plan: Plan) -> None:
        """All of ``plan`` or none of it: one atomic, ordered bundle."""
        gone = set(plan.gone_owners)
        inner = (
            [wire.group_mod(g, "add", 0) for g in plan.group_adds]
            + [wire.group_mod(g, "modify", 0) for g in plan.group_mods]
            + [wire.owner_delete(o, 0) for o in plan.gone_owners]
            + [wire.flow_mod(f, "delete", 0) for f in plan.flow_deletes if owner_of(f) not in gone]
            + [wire.flow_mod(f, "add", 0) for f in plan.flow_adds]
            + [wire.flow_mod(f, "modify", 0) for f in plan.flow_mods]
            + [wire.group_mod(g, "delete", 0) for g in plan.group_deletes]
        )
        if inner:
            with self._bundle() as add:
                add(inner)

    def fill(self, build: Callable[[Callable[[Sequence[Flow] | Sequence[GroupEntry]], None]], T]) -> T:
        """Program a switch that has none of our flows while the pipeline is still being
        built: ``build`` is called with a function that takes each piece (groups first) as
        it is made, and the switch works on the first flows while the rest are computed.
        Still one atomic bundle; returns what ``build`` returns."""

        with self._bundle() as add:

            def emit(piece: Sequence[Flow] | Sequence[GroupEntry]) -> None:
                add(
                    [
                        wire.group_mod(p, "add", 0) if isinstance(p, GroupEntry) else wire.flow_mod(p, "add", 0)
                        for p in piece
                    ]
                )

            return build(emit)

    @contextlib.contextmanager
    def _bundle(self) -> Iterator[Callable[[list[bytes]], None]]:
        """An atomic, ordered bundle: the block adds encoded messages, sent a few big
        writes at a time; leaving it commits, an exception discards."""
        dp, ofp, parser = self.dp, self.dp.ofproto, self.dp.ofproto_parser
        bid = next(_bundle_ids) & 0xFFFFFFFF
        flags = ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED
        with self._lock:
            self._bundled, self._bundle_errors = set(), []
        # Open, adds and barrier go out together; the open's answer is awaited after the
        # barrier's. If the open failed, every add fails too and nothing is committed.
        opening = parser.ONFBundleCtrlMsg(dp, bid, ofp.ONF_BCT_OPEN_REQUEST, flags, [])
        opened = self._send(opening, "bundle open")
        chunk: list[bytes] = []
        size = 0

        def add(messages: list[bytes]) -> None:
            nonlocal size
            for m in messages:
                xid = self._next_xid()
                with self._lock:
                    self._bundled.add(xid)
                chunk.append(wire.bundle_add(m, bid, flags, xid))
                size += len(chunk[-1])
                if size > 1 << 18:  # a few big writes instead of one per message
                    self._send_raw(b"".join(chunk))
                    chunk.clear()
                    size = 0

        try:
            yield add
            if chunk:
                self._send_raw(b"".join(chunk))
            # OVS leaves a message it refuses out of the bundle and keeps the bundle open;
            # a barrier tells us every add was judged, so a refusal aborts the whole plan.
            self.request(parser.OFPBarrierRequest(dp), "barrier")
            self._await(opened, opening.xid, "bundle open")
            with self._lock:
                refused = list(self._bundle_errors)
            if refused:
                e = refused[0]
                raise SwitchError(
                    f"{self.bridge} refused {len(refused)} bundled message(s), first: type {e.type} code {e.code}"
                )
            self.request(parser.ONFBundleCtrlMsg(dp, bid, ofp.ONF_BCT_COMMIT_REQUEST, flags, []), "bundle commit")
        except BaseException:
            with self._lock:
                self._waiters.pop(opening.xid, None)
            with contextlib.suppress(SwitchError):
                self.request(parser.ONFBundleCtrlMsg(dp, bid, ofp.ONF_BCT_DISCARD_REQUEST, flags, []), "bundle discard")
            raise

    def _send_raw(self, buf: bytes) -> None:
        if not self.dp.send(buf):
            raise SwitchError(f"bundle add: the connection to {self.bridge} is closed")
