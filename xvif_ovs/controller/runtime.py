"""The controller's moving parts around the pure pipeline.

Three sources feed one reconciler thread: XenStore (a watch on the vif backends), OVSDB
(an IDL monitor of bridges and ports) and the switches (os-ken events: connect, port
status). Whatever changed, the reconciler recomputes the affected bridges' desired flows
and applies the difference to what the switch has, atomically. It keeps no state that
cannot be rebuilt from those sources, so a restart loses nothing.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from pyxs import Client

from ..model.host import BridgeModel
from ..pipeline.build import P_DROP, PURPOSES, Builder, Parts
from ..pipeline.diff import diff_parts, first_stage
from ..pipeline.firewall import P_RULE, REJECT_BURST, REJECT_METER, REJECT_RATE
from ..pipeline.flow import Flow, decode_cookie
from ..pipeline.tables import FW_IN_CT, FW_OUT_CT
from ..xenstore.client import locate
from ..xenstore.vifwatch import VifWatcher
from . import conntrack, dhcp, reject
from .config import Config
from .fwstate import ZONE_KEY, Firewall, Rules, vm_uuids
from .hostmodel import Joiner, OfPort
from .metrics import Metrics
from .ovsdb_monitor import BridgeInfo, OvsdbMonitor
from .session import Session, SwitchError

log = logging.getLogger("xvif_ovs.controller")
DROP_REPORT_INTERVAL = 10.0
NAMES_INTERVAL = 5.0  # domain names can change without a vif event (xl rename)


class Runtime:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.sessions: dict[int, Session] = {}  # by datapath id
        self.vifs: dict[tuple[int, int], dict[str, str]] = {}
        self.names: dict[int, str] = {}
        self.ovsdb: dict[str, BridgeInfo] = {}
        self.xenstore_ready = threading.Event()
        self.ovsdb_ready = threading.Event()
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self.done = threading.Event()  # main waits on it: a signal, or a thread that died
        self.failed: str | None = None
        self._threads: list[threading.Thread] = []
        self._reported_problems: set[str] = set()
        self._reported_fw: set[str] = set()
        self._drops: dict[tuple[int, int], int] = {}
        # bridge -> (the session's port table, the OfPorts made from it): remade only when replaced
        self._of_ports_made: dict[str, tuple[Any, dict[str, OfPort]]] = {}
        # The incremental join and build keep their state here, bounded by what exists.
        self.joiner = Joiner()
        self.monitor: OvsdbMonitor | None = None
        self.refused_bridges: set[str] = set()  # named, but another controller's
        self._missing_reported: set[str] = set()
        self.packet_ins = 0
        self.rejects = 0  # packets a firewall "reject" rule sent, answered
        self._reject_failures = 0
        # bridge -> ofport -> (the vif on it, private?): whom a rejected packet concerns
        self._guests_by_port: dict[str, dict[int, tuple[Any, bool]]] = {}
        self._retry = False
        self.dhcp = dhcp.DhcpServers(cfg.rundir())
        self._nat_given: dict[tuple[int, int], str] = {}
        self._dhcp_failures = 0
        self.rules = Rules(cfg.rules_dir)
        nat_zones = {p.nat.zone for p in cfg.bridge_policy.values() if p.nat is not None}
        self.firewall = Firewall(lambda: self.rules.current, nat_zones)
        self._rules_checked = 0.0
        self.cutter = conntrack.Cutter()
        self.models: dict[str, BridgeModel] = {}  # as last posted to the switches: for the metrics
        self.xenstore_up = False
        self.metrics = Metrics(self, cfg.metrics)
        # vifs and sessions are changed by the XenStore and os-ken threads while the
        # reconciler copies them: copying a dict that another thread resizes can raise.
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.rules.load_initial()  # a bad rule file is fatal here (RuleError): nothing is touched
        if not self.cfg.bridges:
            log.warning("no bridges named in the configuration ([controller] bridges): managing none")
        self.monitor = OvsdbMonitor(self.cfg.ovsdb, self._on_ovsdb, self.cfg.declared_uplinks, self.die)
        self.monitor.start()
        for target, name in ((self._xenstore_loop, "xenstore"), (self._reconcile_loop, "reconcile")):
            t = threading.Thread(target=self.guarded(target, name), name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def reload_rules(self) -> None:
        """SIGHUP: read the rule files again (in the reconciler, which applies them)."""
        self._queue.put(("rules", None))

    def die(self, why: str) -> None:
        """A thread the controller cannot work without has died: end the process (main
        exits non-zero) rather than run on half-blind."""
        if self.failed is None:
            self.failed = why
        log.critical("%s", why)
        self.done.set()

    def guarded(self, target: Callable[[], None], name: str) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as e:  # noqa: BLE001 - whatever it was, the thread is gone
                log.exception("thread %s died", name)
                self.die(f"thread {name} died: {type(e).__name__}: {e}")

        return run

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(("stop", None))
        for t in self._threads:
            t.join(5)
        if self.monitor:
            self.monitor.stop()

    # -- inputs (any thread) -----------------------------------------------------------------

    def datapath_up(self, dp: Any) -> None:
        """A switch finished os-ken's handshake: it gets a session, unless a live
        connection already holds its datapath id.

        A connection that claims the id of a connected switch never replaces the live
        session: anyone who reaches the listener can send a FEATURES_REPLY with any id,
        and two bridges can share one (other_config:datapath-id). But a switch that lost
        its connection and reconnects must get its session back at once, and os-ken may
        deliver the new connection's MAIN before the old one's DEAD. The old connection
        is asked: if os-ken already saw it close, the newcomer takes over now; otherwise
        an OpenFlow echo goes out on it (liveness.answers). The switch behind a live
        connection answers, and the newcomer is closed with an error naming both; a dead
        one stays silent for PROBE_TIMEOUT, and the newcomer takes over. The probe runs in
        a thread of its own, so os-ken's event loop (every other switch's replies) never
        waits for it, and nothing of the newcomer's is acted on meanwhile (session()
        knows only the old connection).

        Rejected: OpenFlow roles (OFPCR_ROLE_MASTER with generation ids) arbitrate between
        controllers sharing one switch, not between two connections claiming to be one
        switch: the impostor answers a role request as it likes. OVSDB's
        Controller.is_connected is true in both cases (the switch is connected, to the old
        connection or the new) and says nothing about a remote switch.
        """
        from .liveness import PROBE_TIMEOUT, answers, closed, describe

        with self._lock:
            old = self.sessions.get(dp.id)
            if old is not None and old.dp is dp:
                return
            contested = old is not None and not closed(old.dp)
            if not contested:
                self.sessions[dp.id] = Session(dp)
        if not contested:
            if old is not None:
                old.close()
            self._queue.put(("dp_up", dp.id))
            return
        assert old is not None

        def settle() -> None:
            if answers(old.dp):
                log.error(
                    "refused %s: it claims datapath id %016x, which %s holds and still answers on; a second "
                    "connection never replaces a live switch (two bridges with one other_config:datapath-id, "
                    "or something posing as the switch?)",
                    describe(dp),
                    dp.id,
                    describe(old.dp, old.bridge),
                )
                dp.close()
                return
            with self._lock:
                now = self.sessions.get(dp.id)
                if (now is not None and now is not old) or closed(dp):
                    return  # it went away, or another connection settled it meanwhile
                self.sessions[dp.id] = Session(dp)
            old.close()
            old.dp.close()
            log.warning(
                "switch %016x reconnected (%s); its old connection (%s) did not answer within %.0f s: closed",
                dp.id,
                describe(dp),
                describe(old.dp, old.bridge),
                PROBE_TIMEOUT,
            )
            self._queue.put(("dp_up", dp.id))

        threading.Thread(target=settle, name=f"dpid-{dp.id:x}", daemon=True).start()

    def datapath_down(self, dp: Any) -> None:
        with self._lock:
            s = self.sessions.get(dp.id)
            if not (s and s.dp is dp):
                return
            del self.sessions[dp.id]
        s.close()
        log.info("switch %s disconnected", s.bridge or hex(dp.id))

    def session(self, dp: Any) -> Session | None:
        s = self.sessions.get(dp.id)
        return s if s and s.dp is dp else None

    def port_status(self, dp: Any, msg: Any) -> None:
        s = self.session(dp)
        ofp = dp.ofproto
        p = msg.desc
        name = p.name.decode() if isinstance(p.name, bytes) else p.name
        live = not (p.state & ofp.OFPPS_LINK_DOWN) and not (p.config & ofp.OFPPC_PORT_DOWN)
        reason = {ofp.OFPPR_ADD: "added", ofp.OFPPR_DELETE: "removed", ofp.OFPPR_MODIFY: "changed"}.get(msg.reason, "?")
        bridge = (s.bridge if s else None) or f"switch {dp.id:x}"  # not yet known right after a (re)connect
        if msg.reason == ofp.OFPPR_MODIFY and s and name in s.ports and s.ports[name][1] != live:
            log.info("interface %s on %s: link %s", name, bridge, "up" if live else "down")
        elif msg.reason != ofp.OFPPR_MODIFY:
            log.info("interface %s on %s: port %s (ofport %s)", name, bridge, reason, p.port_no)
        if s is None or not s.synced:
            self._queue.put(("ports", dp.id))  # no full picture yet: read them all
            return
        s.port_changed(name, p.port_no, live, removed=msg.reason == ofp.OFPPR_DELETE)
        self._queue.put(("model", None))

    def packet_in(self, dp: Any, msg: Any) -> None:
        """The pipeline sends nothing to the controller but a firewall rule's "reject"
        (behind a meter): that is answered; any other packet-in is a bug to see."""
        d = decode_cookie(msg.cookie)
        if d is not None and d[0] == P_RULE and msg.table_id in (FW_OUT_CT, FW_IN_CT):
            self.rejects += 1
            s = self.session(dp)
            try:
                reject.respond(dp, msg, self._guests_by_port.get(s.bridge if s else "", {}))
            except Exception:  # noqa: BLE001 - a malformed packet must not stop os-ken's loop
                self._reject_failures += 1
                if self._reject_failures <= 10 or self._reject_failures % 1000 == 0:
                    log.exception("firewall reject #%d: no answer (table %s)", self._reject_failures, msg.table_id)
            return
        self.packet_ins += 1
        if self.packet_ins <= 10 or self.packet_ins % 1000 == 0:
            s = self.session(dp)
            log.warning(
                "unexpected packet-in #%d from %s (table %s, reason %s): the pipeline should never send one",
                self.packet_ins,
                s.bridge if s else hex(dp.id),
                msg.table_id,
                msg.reason,
            )

    def _on_ovsdb(self, snapshot: dict[str, BridgeInfo]) -> None:
        target = self.cfg.target()
        assert self.monitor is not None
        refused = set()
        for name, info in snapshot.items():
            if not self.cfg.managed(name):
                continue  # not ours: never written, never programmed
            # Another application's controller (OVN's br-int, a Neutron or Faucet bridge):
            # taking the bridge over would cut it off. Ours are marked, or have our target.
            foreign = tuple(t for t in info.foreign_controllers if t != target)
            if foreign:
                refused.add(name)
                if name not in self.refused_bridges:
                    log.error(
                        "bridge %s is named in the configuration but already has another controller (%s): "
                        "not taking it over. Remove it from [controller] bridges, or remove that controller "
                        "(ovs-vsctl del-controller %s) if it is no longer used",
                        name,
                        ", ".join(foreign),
                        name,
                    )
                continue
            if (
                info.fail_mode != "secure"
                or info.controllers != (target,)
                or "OpenFlow13" not in info.protocols
                or not info.fast_reconnect
            ):
                self.monitor.take_over(name, target)
            policy = self.cfg.bridge_policy.get(name)
            self.monitor.ensure_export(name, policy.sflow if policy else None, policy.ipfix if policy else None)
        for name in set(self.cfg.bridges) - set(snapshot) - self._missing_reported:
            log.warning("bridge %s is named in the configuration but does not exist in OVSDB (yet)", name)
        self._missing_reported = set(self.cfg.bridges) - set(snapshot)
        self.refused_bridges = refused
        self.ovsdb = snapshot
        self.ovsdb_ready.set()
        self._queue.put(("model", None))

    # -- XenStore --------------------------------------------------------------------------

    def _xenstore_loop(self) -> None:
        where = self.cfg.xenstore
        while not self._stop.is_set():
            try:
                kwargs = {"unix_socket_path": where} if where else locate()
                with VifWatcher(kwargs.get("unix_socket_path")) as w:
                    scanned = w.scan()
                    self.xenstore_up = True
                    with self._lock:
                        self.vifs = scanned
                    self._refresh_names()
                    log.info("XenStore: %d vif(s)", len(self.vifs))
                    self.xenstore_ready.set()
                    self._queue.put(("model", None))
                    while not self._stop.is_set():
                        for ev in w.events(timeout=2.0):
                            self.metrics.xenstore_events.inc()
                            with self._lock:
                                if ev.kind == "removed":
                                    self.vifs.pop((ev.domid, ev.devid), None)
                                else:
                                    self.vifs[(ev.domid, ev.devid)] = ev.keys
                            if ev.kind != "removed":
                                # Names change (xl rename; a migrated guest arrives as
                                # NAME--incoming): re-read on every event, config matches on it.
                                self._refresh_names([ev.domid])
                            log.debug("XenStore: vif %d.%d %s %s", ev.domid, ev.devid, ev.kind, sorted(ev.changed))
                            self._queue.put(("model", None))
                        w.ping()
            except Exception as e:  # noqa: BLE001 - XenStore went away: keep the flows, retry
                self.xenstore_up = False
                if not self._stop.is_set():
                    log.warning("XenStore connection lost (%s); flows stay as they are, reconnecting", e)
                    self._stop.wait(1.0)

    def _names_matter(self) -> bool:
        """Only configuration that names domains needs their names kept current."""
        cfg = self.cfg
        return bool(
            cfg.private_vifs
            or cfg.trusted_vifs
            or any(p.reserved_for for p in cfg.bridge_policy.values())
            or any(r.scope in ("guest", "vif") for r in self.rules.current.rules)
        )

    def _refresh_names(self, domids: list[int] | None = None) -> None:
        where = self.cfg.xenstore
        if domids is None:
            with self._lock:
                domids = sorted({d for d, _ in self.vifs})
        try:
            with Client(**({"unix_socket_path": where} if where else locate())) as c:
                for domid in domids:
                    p = f"/local/domain/{domid}/name".encode()
                    if c.exists(p):
                        name = c.read(p).decode()
                        with self._lock:
                            self.names[domid] = name
        except Exception as e:  # noqa: BLE001 - names are for logs and config matching only
            log.debug("reading domain names: %s", e)

    # -- the reconciler ------------------------------------------------------------------------

    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reconcile_loop_once()
            except Exception:  # noqa: BLE001 - a bug must not stop the controller
                log.exception("reconciler failed; retrying")
                self._retry = True  # the changes of the failed pass must not be lost
                self._stop.wait(1.0)

    def _reconcile_loop_once(self) -> None:
        next_names = time.monotonic() + NAMES_INTERVAL
        while not self._stop.is_set():
            try:
                kind, arg = self._queue.get(timeout=1.0)
            except queue.Empty:
                kind, arg = "tick", None
            items = [(kind, arg)]
            while True:  # coalesce a burst of changes into one pass
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if any(k == "stop" for k, _ in items):
                return
            now = time.monotonic()
            look = now - self._rules_checked >= 1.0  # the files, at most once a second
            if look:
                self._rules_checked = now
            # SIGHUP, or the files changed: a set with an error is refused, and the rules
            # in force stay in force.
            wanted = any(k == "rules" for k, _ in items) or (look and self.rules.changed())
            if wanted:
                if self.rules.reload():
                    items.append(("model", None))
                    if self._names_matter():
                        self._refresh_names()
                else:
                    self.metrics.rules_reload_failures.inc()
            for k, a in items:
                if k in ("dp_up", "ports"):
                    s = self.sessions.get(a)
                    if s is not None:
                        self._worker(s).post(connect=k == "dp_up", ports=k == "ports")
            if time.monotonic() >= next_names and self.xenstore_ready.is_set() and self._names_matter():
                next_names = time.monotonic() + NAMES_INTERVAL
                before = dict(self.names)
                self._refresh_names()
                if self.names != before:
                    items.append(("model", None))
            if any(k != "tick" for k, _ in items) or self._retry:
                self._retry = False
                with self.metrics.reconcile_seconds.time():
                    self._reconcile_all()
                self.metrics.reconciles.inc()

    def _worker(self, s: Session) -> SwitchWorker:
        """The session's own thread: every request to one switch waits in it, so a switch
        that hangs holds up nobody else (each request still times out, then is retried)."""
        if s.worker is None:
            s.worker = SwitchWorker(self, s)
            s.worker.start()
        return s.worker

    def _connect(self, s: Session) -> None:
        try:
            s.read_ports()
            s.read_tables()
            try:
                s.ensure_meter(REJECT_METER, REJECT_RATE, REJECT_BURST)
            except SwitchError as e:  # only "reject" rules need it: they will fail to install, and say so
                log.error("switch %s: %s: firewall rules that reject cannot be installed on it", s.bridge, e)
            s.synced = True
            log.info(
                "switch %s connected: %d of our flows and %d groups installed",
                s.bridge,
                sum(map(len, s.installed_flows.values())),
                len(s.installed_groups),
            )
        except SwitchError as e:
            log.warning("switch %x: %s", s.dp.id, e)

    def _of_ports(self, bridge: str, s: Session) -> dict[str, OfPort]:
        """The session's ports as the model wants them, remade only when the session's
        port table was replaced (a read or a PORT_STATUS swaps in a new dict)."""
        last = self._of_ports_made.get(bridge)
        if last is not None and last[0] is s.ports:
            return last[1]
        made = {n: OfPort(no, live) for n, (no, live) in s.ports.items()}
        self._of_ports_made[bridge] = (s.ports, made)
        return made

    def _reconcile_all(self) -> None:
        if not (self.xenstore_ready.is_set() and self.ovsdb_ready.is_set()):
            return  # never act on half a picture: that would delete good flows
        with self._lock:
            sessions = {s.bridge: s for s in self.sessions.values() if s.synced and s.bridge}
            vifs, names = dict(self.vifs), dict(self.names)
        of_ports = {b: self._of_ports(b, s) for b, s in sessions.items()}
        for gone in self._of_ports_made.keys() - of_ports.keys():
            del self._of_ports_made[gone]
        models, problems = self.joiner.bridge_models(self.ovsdb, of_ports, vifs, names, self.cfg)
        for p in problems:
            if p not in self._reported_problems:
                log.warning("%s", p)
        self._reported_problems = set(problems)
        ours = {b: m for b, m in models.items() if self.cfg.managed(b) and b not in self.refused_bridges}
        ours = self.firewall.attach(ours, vifs, vm_uuids(self.ovsdb.values()))
        for p in self.firewall.problems:
            if p not in self._reported_fw:
                log.error("%s", p)
        self._reported_fw = set(self.firewall.problems)  # each once, while it lasts
        if self.firewall.to_write:
            self._write_zones(vifs)
        self._guests_by_port = {
            b: {p: (v, m.is_private(v)) for v in m.vifs if v.firewall is not None for p in v.ports}
            for b, m in ours.items()
        }
        self.models = ours
        for bname, model in ours.items():
            self._worker(sessions[bname]).post(model=model)
        nat_bridges = {b for b, p in self.cfg.bridge_policy.items() if p.nat is not None and self.cfg.managed(b)}
        if nat_bridges or self.dhcp.running:
            self._nat_dhcp(ours, vifs, nat_bridges)

    def _write_zones(self, vifs: dict[tuple[int, int], dict[str, str]]) -> None:
        """Zones just allocated, into XenStore: a restarted controller finds them there
        and keeps its guests' connections. Best effort: the flows already use them."""
        todo, self.firewall.to_write = self.firewall.to_write, {}
        where = self.cfg.xenstore
        try:
            with Client(**({"unix_socket_path": where} if where else locate())) as c:
                for (domid, devid), zone in todo.items():
                    backend = f"/local/domain/0/backend/vif/{domid}/{devid}"
                    if (domid, devid) in vifs and c.exists(f"{backend}/mac".encode()):
                        c.write(f"{backend}/{ZONE_KEY}".encode(), str(zone).encode())
        except Exception as e:  # noqa: BLE001
            log.warning("firewall zones not written to XenStore (%s): a controller restart will renumber them", e)

    def _nat_dhcp(
        self, models: dict[str, BridgeModel], vifs: dict[tuple[int, int], dict[str, str]], nat_bridges: set[str]
    ) -> None:
        """NAT guests without ip= get an address (written to XenStore: the next pass puts it
        in their flows), and each NAT bridge's DHCP server serves what the models say."""
        try:
            for bname, model in models.items():
                if model.nat is None:
                    continue
                need, taken = dhcp.wanting(model, vifs)
                # Written already, and not yet seen back from XenStore: not again.
                self._nat_given = {
                    k: a for k, a in self._nat_given.items() if k in vifs and not vifs[k].get(dhcp.NAT_IP_KEY)
                }
                need = [k for k in need if k not in self._nat_given]
                taken |= set(self._nat_given.values())
                if not need:
                    continue
                addrs = dhcp.allocate(model.nat, taken, len(need))
                if len(addrs) < len(need):
                    log.error(
                        "NAT bridge %s: subnet %s is full; %d guest(s) get no address",
                        bname,
                        model.nat.subnet,
                        len(need) - len(addrs),
                    )
                where = self.cfg.xenstore
                with Client(**({"unix_socket_path": where} if where else locate())) as c:
                    for (domid, devid), addr in zip(need, addrs, strict=False):
                        backend = f"/local/domain/0/backend/vif/{domid}/{devid}"
                        if not c.exists(f"{backend}/mac".encode()):
                            continue  # destroyed meanwhile: its node must not come back
                        c.write(f"{backend}/{dhcp.NAT_IP_KEY}".encode(), addr.encode())
                        self._nat_given[(domid, devid)] = addr
                        log.info("NAT bridge %s: vif%d.%d gets %s (DHCP)", bname, domid, devid, addr)
            if self.dhcp.sync(models, nat_bridges):
                self._dhcp_failures = 0
            else:  # a dnsmasq that would not start: again on the next few ticks, then on a change
                self._dhcp_failures += 1
                self._retry = self._retry or self._dhcp_failures < 5
        except Exception:  # noqa: BLE001 - DHCP must not stop the flows of every bridge
            log.exception("NAT DHCP: failed; retrying with the next change")

    def _program(self, s: Session, bname: str, model: BridgeModel) -> bool:
        """Bring one switch to ``model`` (in its worker); False if it must be retried."""
        with self.metrics.program_seconds.labels(bname).time():
            builder = s.worker.builder if s.worker else Builder()
            t_build = time.monotonic()
            if not s.installed_flows and not s.installed_groups:
                return self._fill(s, bname, model, builder)  # a new or restarted switch: all of it, streamed
            desired = builder.build_parts(model, self.cfg.learn_idle_timeout)
            first = first_stage(desired, s.installed_flows)
            for stage in (first, desired) if first is not None else (desired,):
                if not self._apply(s, bname, stage, t_build):
                    return False
                t_build = time.monotonic()
            return True

    def _apply(self, s: Session, bname: str, desired: Parts, t_build: float) -> bool:
        """Bring the switch to ``desired``; False (and a retry is due) if it refused."""
        plan = diff_parts(desired, s.installed_flows, s.installed_groups, s.applied)
        if not plan:
            return True
        t0 = time.monotonic()
        try:
            s.apply(plan)
        except SwitchError as e:
            self._failed(s, bname, e)
            return False
        self._applied(s, desired)
        log.info(
            "%s: %s in %.0f ms (computed in %.0f ms)",
            bname,
            plan.summary(),
            (time.monotonic() - t0) * 1000,
            (t0 - t_build) * 1000,
        )
        return True

    def _fill(self, s: Session, bname: str, model: BridgeModel, builder: Builder) -> bool:
        """A switch with none of our flows gets the whole pipeline in one bundle that is
        sent while it is being built: at 1000 vifs the build takes half a second that
        ovs-vswitchd otherwise spent waiting."""
        t0 = time.monotonic()
        try:
            desired = s.fill(lambda emit: builder.stream_parts(model, self.cfg.learn_idle_timeout, emit))
        except SwitchError as e:
            self._failed(s, bname, e)
            return False
        self._applied(s, desired)
        flows = sum(map(len, desired.flows.values()))
        log.info(
            "%s: +%d ~0 -0 flows, +%d ~0 -0 groups in %.0f ms (computed while sending)",
            bname,
            flows,
            len(desired.groups),
            (time.monotonic() - t0) * 1000,
        )
        return True

    def _failed(self, s: Session, bname: str, e: SwitchError) -> None:
        self.metrics.bundle_failures.labels(bname).inc()
        log.error("applying flows to %s failed, re-reading the switch and retrying: %s", bname, e)
        with contextlib.suppress(SwitchError):
            s.read_tables()

    @staticmethod
    def _applied(s: Session, desired: Parts) -> None:
        _record_applied(s, desired)
        # Tens of thousands of long-lived flow objects: keep the cyclic GC from
        # rescanning them on every pass (it made some vif changes take 200 ms).
        gc.freeze()

    def _report_drops(self, s: Session) -> None:
        """Rate-limited port-security summaries: one line per vif whose drops rose. The
        counters are the metrics' too (counters.py: dumped only when they moved)."""
        if not s.synced:
            return
        try:
            per_cookie = s.counters(P_DROP).read(s)
        except SwitchError:
            return
        totals: dict[tuple[int, int], int] = {}
        for ck, (pk, _by) in per_cookie.items():
            d = decode_cookie(ck)
            if d and d[1] is not None:
                totals[(d[1], d[2])] = totals.get((d[1], d[2]), 0) + pk  # type: ignore[index]
        for key, total in sorted(totals.items()):
            before = self._drops.get(key, 0)
            if total > before:
                name = self.names.get(key[0], "?")
                log.warning(
                    "port security on %s: dropped %d frame(s) from vif%d.%d (domain %s) in the last %.0f s (%d in all)",
                    s.bridge,
                    total - before,
                    key[0],
                    key[1],
                    name,
                    DROP_REPORT_INTERVAL,
                    total,
                )
            self._drops[key] = total


class SwitchWorker(threading.Thread):
    """One switch's I/O, in a thread of its own: reading it at connect, re-reading its
    ports, programming the latest model, and its drop reports. The reconciler only
    computes models and posts them here (the latest wins), so a switch whose OpenFlow
    connection hangs delays its own changes, never another bridge's. The incremental
    build's state for this switch lives here too (one Builder per switch)."""

    def __init__(self, runtime: Runtime, s: Session) -> None:
        super().__init__(name=f"switch-{s.dp.id:x}", daemon=True)
        self.runtime, self.session = runtime, s
        self.builder = Builder()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._connect = self._ports = False
        self._model: BridgeModel | None = None
        # Each vif's firewall as last programmed (None: it had none), for the cut.
        self._firewalls: dict[tuple[int, int], Any] = {}

    def post(self, connect: bool = False, ports: bool = False, model: BridgeModel | None = None) -> None:
        with self._lock:
            self._connect |= connect
            self._ports |= ports
            if model is not None:
                self._model = model
        self._wake.set()

    def _again(self, model: BridgeModel) -> None:
        with self._lock:
            if self._model is None:
                self._model = model
        self._wake.set()

    def run(self) -> None:
        rt, s = self.runtime, self.session
        next_report = time.monotonic() + DROP_REPORT_INTERVAL
        while not s.closed and not rt._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            with self._lock:
                connect, ports, model = self._connect, self._ports, self._model
                self._connect = self._ports = False
                self._model = None
            try:
                if connect or not s.synced:
                    # A switch whose first read failed is retried every second.
                    rt._connect(s)
                    if s.synced:
                        rt._queue.put(("model", None))  # now it has ports: models can include it
                    continue
                if ports:
                    s.read_ports()
                    rt._queue.put(("model", None))
                if model is not None and s.bridge:
                    if rt._program(s, s.bridge, model):
                        self._cut(model)
                    else:
                        rt._stop.wait(1.0)  # the switch refused: retry (unless a newer model came)
                        self._again(model)
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + DROP_REPORT_INTERVAL
                    rt._report_drops(s)
            except SwitchError as e:
                log.warning("%s", e)
            except Exception:  # noqa: BLE001 - a bug must not stop this switch's thread
                log.exception("switch %s: failed; retrying", s.bridge or hex(s.dp.id))
                rt._stop.wait(1.0)
                if model is not None:
                    self._again(model)

    def _cut(self, model: BridgeModel) -> None:
        """Once the flows of a changed rule set are in the switch, the connections they no
        longer allow are removed from conntrack (controller/conntrack.py, in a thread of
        its own: the flows already drop those connections' packets). Not at the first
        program after a start: nothing changed then, and the connections must survive."""
        first = not self._firewalls
        now = {(v.domid, v.devid): v for v in model.vifs}
        for key, v in now.items():
            fw, before = v.firewall, self._firewalls.get(key, v.firewall)
            if first or fw is None or fw.blocked or before is fw or (before is not None and before == fw):
                continue
            closed = fw.closed >= frozenset(v.access_vlans)
            self.runtime.cutter.post(key, fw, closed, f"vif{key[0]}.{key[1]}")
        self._firewalls = {k: v.firewall for k, v in now.items()}


def _record_applied(s: Session, desired: Parts) -> None:
    """What the switch now holds, touching only the owners the plan changed: copying
    every owner's flows after each change was O(vifs), 9 ms at 4000 vifs."""
    counts = dict(s.table_counts)

    def count(flows: Iterable[Flow], sign: int) -> None:
        for f in flows:
            counts[f.table] = counts.get(f.table, 0) + sign

    for owner, flows in desired.flows.items():
        if s.applied.get(owner) is not flows:
            count(s.installed_flows.get(owner, ()), -1)
            count(flows, 1)
            s.installed_flows[owner] = list(flows)
    for owner in s.installed_flows.keys() - desired.flows.keys():
        count(s.installed_flows[owner], -1)
        del s.installed_flows[owner]
    s.table_counts = counts
    s.installed_groups = list(desired.groups)
    s.applied = dict(desired.flows)


__all__ = ["Runtime", "PURPOSES"]
