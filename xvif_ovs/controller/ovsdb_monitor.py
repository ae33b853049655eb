"""The controller's view of OVSDB: bridges, their ports and ofports, kept current by a
python-ovs IDL (a monitor: changes are pushed, never polled), and the writes that make
a bridge ours (OpenFlow 1.3, fail_mode secure, our controller target)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..model.host import ALL_VLANS, PortVlans
from ..model.ports import CONTROLLER_MARK, MIRROR_MARK, Iface, port_roles
from ..ovsdb.client import locate
from ..ovsdb.jsonrpc import JsonRpc
from ..ovsdb.stream_json import use_with_python_ovs
from .config import Ipfix, Sflow

log = logging.getLogger("xvif_ovs.controller.ovsdb")
MAX_BACKOFF_MS = 1000  # OVS retries a lost controller every second, not up to every 8 s
LEARNED_TABLE, LEARNED_LIMIT = 4, 65536  # MACs learned behind uplinks: bounded, oldest evicted
NEIGHBOURS_TABLE = 6  # a routed bridge's IPv4 neighbours, learned from the LAN's ARP: bounded too
BOUNDED_TABLES = {LEARNED_TABLE: "xvif-ovs-learned", NEIGHBOURS_TABLE: "xvif-ovs-neighbours"}
EXPORT_MARK = "xvif-ovs"  # external_ids key on the sFlow and IPFIX rows the controller made


@dataclass(frozen=True)
class PortInfo:
    name: str  # the interface
    ofport: int | None
    kind: str  # vif | emu | uplink | local | unmanaged (model/ports.py says why)
    domid: int | None = None
    devid: int | None = None
    link_up: bool = True
    ofport_request: int | None = None  # what the hook asked for, while the port is being created
    port: str = ""  # the OVSDB Port it belongs to (a bond has several interfaces); "" = same name
    vlans: PortVlans = ALL_VLANS  # a non-vif port's own tag/trunks/vlan_mode
    vm_uuid: str = ""  # a vif's xen-vm-uuid as the hook wrote it: which VM's NIC this is

    @property
    def port_name(self) -> str:
        return self.port or self.name


@dataclass(frozen=True)
class BridgeInfo:
    name: str
    ports: tuple[PortInfo, ...]
    fail_mode: str
    controllers: tuple[str, ...]
    protocols: tuple[str, ...]
    connected: bool
    fast_reconnect: bool = True  # every controller row has our max_backoff
    foreign_controllers: tuple[str, ...] = ()  # controller targets we did not set
    local_mac: str = ""  # the MAC of the bridge's own (LOCAL) interface: a routed bridge's router MAC
    mirror_outputs: frozenset[str] = frozenset()  # Port names that only receive mirrored frames


def port_vlans(tag: object, trunks: object, mode: object) -> PortVlans:
    """An OVSDB Port's VLAN columns (IDL values: lists of 0 or 1, or a list of ints)."""
    t = _one(tag)
    m = _one(mode)
    tr = tuple(sorted(x for x in (trunks or []) if isinstance(x, int)))
    if t is None and not tr and m is None:
        return ALL_VLANS
    return PortVlans(t if isinstance(t, int) else None, tr, m if isinstance(m, str) else None)


def _learned_bounded(br) -> bool:  # noqa: ANN001 - an IDL row
    tables = dict(br.flow_tables)
    return all(
        (ft := tables.get(t)) is not None
        and _one(ft.flow_limit) == LEARNED_LIMIT
        and _one(ft.overflow_policy) == "evict"
        for t in BOUNDED_TABLES
    )


def _export_columns(want: Sflow | Ipfix) -> dict[str, object]:
    """The OVSDB columns of a configured collector (optional columns as lists of 0 or 1)."""
    if isinstance(want, Sflow):
        return {
            "targets": sorted(want.targets),
            "sampling": [want.sampling],
            "polling": [want.polling],
            "header": [want.header],
            "agent": [want.agent] if want.agent else [],
        }
    return {
        "targets": sorted(want.targets),
        "sampling": [want.sampling],
        "obs_domain_id": [want.obs_domain_id],
        "cache_active_timeout": [want.cache_active_timeout] if want.cache_active_timeout else [],
        "cache_max_flows": [want.cache_max_flows] if want.cache_max_flows else [],
    }


def _row_columns(row, columns: dict[str, object]) -> dict[str, object]:  # noqa: ANN001 - an IDL row
    out: dict[str, object] = {}
    for k in columns:
        v = getattr(row, k)
        out[k] = sorted(v) if k == "targets" else (list(v) if isinstance(v, list) else [v])
    return out


def _ours_and_dead(m) -> bool:  # noqa: ANN001 - an IDL Mirror row
    """A mirror `xvif-ovs mirror add` made whose output, or every port it selected, is gone."""
    ours = dict(m.external_ids).get(MIRROR_MARK) == "true"
    return ours and (not list(m.output_port) or not (list(m.select_src_port) or list(m.select_dst_port)))


def _one(value):  # noqa: ANN001, ANN202 - IDL optional columns are lists of 0 or 1
    return value[0] if isinstance(value, list) and value else (None if isinstance(value, list) else value)


class OvsdbMonitor:
    """Runs the IDL in a thread; calls ``on_change(bridges)`` with a fresh snapshot
    whenever OVSDB changed."""

    def __init__(
        self,
        remote: str | None,
        on_change: Callable[[dict[str, BridgeInfo]], None],
        declared: Callable[[str], frozenset[str]] = lambda bridge: frozenset(),
        die: Callable[[str], None] | None = None,
    ) -> None:
        import ovs.db.idl  # python-ovs; heavy imports belong to the long-lived controller only

        use_with_python_ovs()  # its pure-Python JSON decoder: 119 ms for 1000 vifs' rows, now 25 ms
        self.remote = locate(remote)
        rpc = JsonRpc(self.remote, 10)
        try:
            schema = rpc.call("get_schema", ["Open_vSwitch"])
        finally:
            rpc.close()
        helper = ovs.db.idl.SchemaHelper(schema_json=schema)
        helper.register_columns("Open_vSwitch", ["bridges"])
        helper.register_columns(
            "Bridge",
            [
                "name",
                "ports",
                "fail_mode",
                "controller",
                "protocols",
                "datapath_type",
                "external_ids",
                "flow_tables",
                "sflow",
                "ipfix",
                "mirrors",
            ],
        )
        helper.register_columns("Mirror", ["name", "select_src_port", "select_dst_port", "output_port", "external_ids"])
        helper.register_columns("sFlow", ["targets", "sampling", "polling", "header", "agent", "external_ids"])
        helper.register_columns(
            "IPFIX", ["targets", "sampling", "obs_domain_id", "cache_active_timeout", "cache_max_flows", "external_ids"]
        )
        helper.register_columns("Flow_Table", ["name", "flow_limit", "overflow_policy"])
        helper.register_columns("Port", ["name", "interfaces", "external_ids", "tag", "trunks", "vlan_mode"])
        helper.register_columns(
            "Interface", ["name", "ofport", "ofport_request", "type", "external_ids", "link_state", "mac_in_use"]
        )
        helper.register_columns("Controller", ["target", "is_connected", "max_backoff", "external_ids"])
        self.idl = ovs.db.idl.Idl(self.remote, helper)
        self.on_change = on_change
        self.declared = declared
        self.die = die
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._requests: list[Callable[[], None]] = []
        self._foreign_export: set[tuple[str, str]] = set()  # (bridge, sflow|ipfix) someone else set
        self._thread = threading.Thread(target=self._run, name="ovsdb", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.idl.close()

    def connected(self) -> bool:
        """python-ovs's Idl has no public question for it; its session has (Session.is_connected)."""
        session = getattr(self.idl, "_session", None)
        return bool(session is not None and session.is_connected())

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the IDL thread (the IDL is not thread-safe)."""
        with self._lock:
            self._requests.append(fn)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 - a dead monitor would leave the controller blind
            log.exception("OVSDB monitor failed")
            if self.die and not self._stop.is_set():
                self.die(f"the OVSDB monitor failed: {type(e).__name__}: {e}")

    def _loop(self) -> None:
        import ovs.poller

        seqno = None
        while not self._stop.is_set():
            self.idl.run()
            with self._lock:
                requests, self._requests = self._requests, []
            for fn in requests:
                try:
                    fn()
                except Exception:  # noqa: BLE001 - a failed write is logged; monitoring goes on
                    log.exception("OVSDB request failed")
            if self.idl.has_ever_connected() and self.idl.change_seqno != seqno:
                seqno = self.idl.change_seqno
                try:
                    self.on_change(self.snapshot())
                except Exception:  # noqa: BLE001
                    log.exception("handling an OVSDB change failed")
            poller = ovs.poller.Poller()
            self.idl.wait(poller)
            poller.timer_wait(100)  # also wakes for call_soon requests
            poller.block()

    def snapshot(self) -> dict[str, BridgeInfo]:
        out = {}
        stale = []
        for br in self.idl.tables["Bridge"].rows.values():
            outputs = set()
            for m in br.mirrors:
                outputs.update(p.name for p in m.output_port)
                if _ours_and_dead(m):
                    stale.append((br.name, m.name))  # an end went away: the mirror goes too
            ports = []
            declared = self.declared(br.name)
            local_mac = ""
            for port in br.ports:
                ifaces = list(port.interfaces)
                roles = port_roles(
                    br.name,
                    port.name,
                    dict(port.external_ids),
                    [Iface(i.name, i.type, dict(i.external_ids)) for i in ifaces],
                    declared,
                )
                vlans = port_vlans(port.tag, port.trunks, port.vlan_mode)
                for iface in ifaces:
                    role = roles[iface.name]
                    if role.kind == "local":
                        local_mac = str(_one(iface.mac_in_use) or "").lower()
                    ofport = _one(iface.ofport)
                    link = _one(iface.link_state)
                    req = _one(iface.ofport_request)
                    ports.append(
                        PortInfo(
                            iface.name,
                            ofport if isinstance(ofport, int) and ofport > 0 else None,
                            role.kind,
                            role.domid,
                            role.devid,
                            link != "down",
                            # Only while ovs-vswitchd has not yet created the port: not
                            # for one it failed to create (ofport -1), whose number it
                            # may give to another port.
                            req if isinstance(req, int) and req > 0 and ofport is None else None,
                            port.name if port.name != iface.name else "",
                            vlans if role.kind not in ("vif", "emu") else ALL_VLANS,
                            dict(iface.external_ids).get("xen-vm-uuid", "") if role.kind in ("vif", "emu") else "",
                        )
                    )
            ours = {c.uuid for c in br.controller if dict(c.external_ids).get(CONTROLLER_MARK) == "true"}
            ctrls = tuple(sorted(c.target for c in br.controller))
            foreign = tuple(sorted(c.target for c in br.controller if c.uuid not in ours))
            connected = any(_one(c.is_connected) for c in br.controller)
            fast = all(_one(c.max_backoff) == MAX_BACKOFF_MS for c in br.controller) and _learned_bounded(br)
            out[br.name] = BridgeInfo(
                br.name,
                tuple(sorted(ports, key=lambda p: p.name)),
                _one(br.fail_mode) or "",
                ctrls,
                tuple(br.protocols),
                connected,
                fast,
                foreign,
                local_mac,
                frozenset(outputs),
            )
        if stale:
            self.call_soon(lambda: self._prune_mirrors(stale))
        return out

    def _prune_mirrors(self, stale: list[tuple[str, str]]) -> None:
        """Our mirrors whose source or output port is gone, removed (in the IDL thread)."""
        import ovs.db.idl

        txn = ovs.db.idl.Transaction(self.idl)
        gone = []
        for br in self.idl.tables["Bridge"].rows.values():
            keep = []
            for m in br.mirrors:
                if _ours_and_dead(m) and (br.name, m.name) in stale:
                    gone.append(f"{m.name} on {br.name}")
                else:
                    keep.append(m)
            if len(keep) != len(br.mirrors):
                br.mirrors = keep
        if not gone:
            txn.abort()
            return
        txn.add_comment("xvif-ovs controller: remove mirrors whose port went away")
        status = txn.commit_block()
        if status in (ovs.db.idl.Transaction.SUCCESS, ovs.db.idl.Transaction.UNCHANGED):
            log.info("mirror(s) removed, a port they used went away: %s", ", ".join(gone))
        else:
            log.error("could not remove mirror(s) %s: %s %s", ", ".join(gone), status, txn.get_error())

    def ensure_export(self, bridge: str, sflow: Sflow | None, ipfix: Ipfix | None) -> None:
        """The bridge's sFlow and IPFIX rows as the configuration says, in the IDL thread.
        Only rows marked ours are replaced or removed: a collector someone set by hand
        (ovs-vsctl -- --id=@s create sFlow ...) stays, and the conflict is logged once."""

        def do() -> None:
            import ovs.db.idl

            br = next((b for b in self.idl.tables["Bridge"].rows.values() if b.name == bridge), None)
            if br is None:
                return
            txn = ovs.db.idl.Transaction(self.idl)
            changed = []
            for kind, table, want in (("sflow", "sFlow", sflow), ("ipfix", "IPFIX", ipfix)):
                rows = list(getattr(br, kind))
                row = rows[0] if rows else None
                if row is not None and dict(row.external_ids).get(EXPORT_MARK) != "true":
                    if want is not None and (bridge, kind) not in self._foreign_export:
                        log.error(
                            "bridge %s already has an %s collector that xvif-ovs did not set (%s): left as it is; "
                            "remove it (ovs-vsctl clear Bridge %s %s) for the configured one to apply",
                            bridge,
                            table,
                            ", ".join(sorted(row.targets)),
                            bridge,
                            kind,
                        )
                    self._foreign_export.add((bridge, kind))
                    continue
                self._foreign_export.discard((bridge, kind))
                columns = _export_columns(want) if want is not None else None
                if columns == (_row_columns(row, columns) if row is not None and columns is not None else None):
                    continue
                if want is None:
                    if row is None:
                        continue
                    setattr(br, kind, [])
                else:
                    new = txn.insert(self.idl.tables[table])
                    for k, v in columns.items():  # type: ignore[union-attr]
                        setattr(new, k, v)
                    new.external_ids = {EXPORT_MARK: "true"}
                    setattr(br, kind, [new])
                changed.append(f"{table} {'off' if want is None else ', '.join(want.targets)}")
            if not changed:
                txn.abort()
                return
            txn.add_comment(f"xvif-ovs controller: {bridge} {'; '.join(changed)}")
            status = txn.commit_block()
            if status not in (ovs.db.idl.Transaction.SUCCESS, ovs.db.idl.Transaction.UNCHANGED):
                log.error("bridge %s: could not set %s: %s %s", bridge, "; ".join(changed), status, txn.get_error())
            else:
                log.info("bridge %s: %s", bridge, "; ".join(changed))

        self.call_soon(do)

    def take_over(self, bridge: str, target: str) -> None:
        """Make ``bridge`` ours: OpenFlow 1.3, fail_mode secure (flows stay when we are
        away, and nothing else forwards), and our controller target. In the IDL thread."""

        def do() -> None:
            import ovs.db.idl

            br = next((b for b in self.idl.tables["Bridge"].rows.values() if b.name == bridge), None)
            if br is None:
                return
            if any(dict(c.external_ids).get(CONTROLLER_MARK) != "true" and c.target != target for c in br.controller):
                return  # another application's controller appeared meanwhile: not ours to replace
            protocols = sorted(set(br.protocols) | {"OpenFlow13"})
            if (
                _one(br.fail_mode) == "secure"
                and [(c.target, _one(c.max_backoff)) for c in br.controller] == [(target, MAX_BACKOFF_MS)]
                and list(br.protocols) == protocols
                and _learned_bounded(br)
            ):
                return
            txn = ovs.db.idl.Transaction(self.idl)
            if not (
                _one(br.fail_mode) == "secure"
                and [(c.target, _one(c.max_backoff)) for c in br.controller] == [(target, MAX_BACKOFF_MS)]
                and list(br.protocols) == protocols
            ):
                ctrl = txn.insert(self.idl.tables["Controller"])
                ctrl.target = target
                ctrl.max_backoff = [MAX_BACKOFF_MS]
                ctrl.external_ids = {CONTROLLER_MARK: "true"}
                br.controller = [ctrl]
                br.fail_mode = ["secure"]
                br.protocols = protocols
            if not _learned_bounded(br):
                # A host behind the uplink sending from endless source MACs (or, to a routed
                # bridge, ARP from endless addresses) must not grow the learned tables
                # without end: cap them, evicting the flows idle longest.
                tables = dict(br.flow_tables)
                for number, name in BOUNDED_TABLES.items():
                    ft = txn.insert(self.idl.tables["Flow_Table"])
                    ft.name = [name]
                    ft.flow_limit = [LEARNED_LIMIT]
                    ft.overflow_policy = ["evict"]
                    tables[number] = ft
                br.flow_tables = tables
            txn.add_comment(f"xvif-ovs controller: take over {bridge}")
            status = txn.commit_block()
            if status not in (ovs.db.idl.Transaction.SUCCESS, ovs.db.idl.Transaction.UNCHANGED):
                log.error("could not take over bridge %s: %s %s", bridge, status, txn.get_error())
            else:
                log.info("took over bridge %s: fail_mode secure, controller %s", bridge, target)

        self.call_soon(do)
