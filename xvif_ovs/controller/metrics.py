"""Prometheus metrics of the controller, its switches, their guests and the hook.

Served at /metrics on [metrics] listen (loopback unless a host is named; off without the
section). Per-guest figures come from where the switch already counts them, read at
scrape time: the ports' counters (one port-stats request per bridge) and our flows'
counters, whose cookie says which vif and why (port-security drops by kind, firewall
rules). A flow dump costs the switch far more than a request whose reply is one sum, so
drop and rule counters are dumped only when an aggregate request says they moved:
a quiet host costs each bridge three short requests a scrape (five with firewall rules). The hook's time and outcome
per vif are read from the lines it writes to xen-hotplug.log (hotplug/log.py).

Guest labels: bridge, domain (the domain's name), domid, devid, vif (the port) and vm
(the VM's uuid, as the hook wrote it). Counters follow Prometheus's conventions: a
controller restart resets what it counts itself, never what the switch counts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..hotplug.log import HotplugRecord, parse_line
from ..pipeline.build import P_DROP, drop_kind
from ..pipeline.firewall import P_FW_DEFAULT, P_RULE, rule_index
from ..pipeline.flow import COOKIE_MAGIC, COOKIE_MASK, GROUP_BASE, decode_cookie, is_our_group
from ..pipeline.tables import LEARNED, NEIGHBOURS, TABLES
from .config import DEFAULT_HOTPLUG_LOG, MetricsConfig
from .session import Session, SwitchError

if TYPE_CHECKING:
    from ..model.host import BridgeModel, VifModel
    from .runtime import Runtime

log = logging.getLogger("xvif_ovs.controller.metrics")
VIF_LABELS = ("bridge", "domain", "domid", "devid", "vif", "vm")
REQUEST_TIMEOUT = 5.0  # a scrape must answer within Prometheus's default 10 s
_PURPOSE_MASK = COOKIE_MASK | 0xFF << 40
# A flood group's id is GROUP_BASE + vlan * 4 + this index (pipeline/build.group_id).
_INGRESS = ("dom0", "uplink", "vif", "private")  # FROM_LOCAL, FROM_UPLINK, FROM_VIF, FROM_PRIVATE
HOTPLUG_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LEARNING_TABLES = (LEARNED, NEIGHBOURS)  # flows the switch adds by itself (learn actions)


class CookieCounts:
    """Our flows' counters for one purpose, by cookie, dumped only when their sum moved."""

    def __init__(self, purpose: int) -> None:
        self.cookie = COOKIE_MAGIC | purpose << 40
        self._seen: dict[str, tuple[tuple[int, int, int], dict[int, tuple[int, int]]]] = {}

    def read(self, s: Session, requests: list[int]) -> dict[int, tuple[int, int]]:
        """cookie -> (packets, bytes). ``requests`` counts what was asked of the switch."""
        total = s.aggregate(self.cookie, _PURPOSE_MASK, REQUEST_TIMEOUT)
        requests[0] += 1
        last = self._seen.get(s.bridge or "")
        if last is not None and last[0] == total:
            return last[1]
        # Changed counts, or flows added or removed (a vif came or went): the zeros too, so
        # that each series exists before its first drop and increase() sees that one.
        per: dict[int, tuple[int, int]] = {}
        for st in s.flow_stats(self.cookie, _PURPOSE_MASK, REQUEST_TIMEOUT):
            p, b = per.get(st.cookie, (0, 0))
            per[st.cookie] = (p + st.packet_count, b + st.byte_count)
        requests[0] += 1
        self._seen[s.bridge or ""] = (total, per)
        return per


class HotplugTail:
    """The hook's lines in xen-hotplug.log, read from where the last scrape stopped.

    At start the file is read once for each vif's latest hotplug (how it went and how
    long it took) but not counted: counting years of history as new events at every
    restart would fire the alerts on hotplug errors."""

    MAX_BACKLOG = 4 << 20  # at start, the last 4 MiB: enough for each present vif's latest line

    def __init__(self, path: str) -> None:
        self.path = path
        self.latest: dict[tuple[int, int], HotplugRecord] = {}  # (domid, devid) -> last vif line
        # From zero for the vif's actions, so that the first error after a start is an increase.
        self.counts: dict[tuple[str, str], int] = {(a, o): 0 for a in ("online", "offline") for o in ("ok", "error")}
        self.buckets: dict[str, list[int]] = {}  # action -> counts per HOTPLUG_BUCKETS (+Inf last)
        self.sums: dict[str, float] = {}
        self._where: tuple[int, int] | None = None  # (inode, offset)
        self._partial = ""

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                first = self._where is None
                if first:
                    offset = max(0, st.st_size - self.MAX_BACKLOG)
                else:
                    inode, offset = self._where  # type: ignore[misc]
                    if inode != st.st_ino or st.st_size < offset:  # rotated or truncated
                        offset, self._partial = 0, ""
                f.seek(offset)
                data = f.read()
                self._where = (st.st_ino, offset + len(data))
        except OSError:
            return  # no hotplug yet, or no such file on this host: nothing to count
        text = self._partial + data.decode("utf-8", "replace")
        lines = text.split("\n")
        self._partial = lines.pop()  # the last line may be half written
        for line in lines:
            rec = parse_line(line)
            if rec is None:
                continue
            if rec.action in ("online", "offline"):  # the vif's; add/remove are the -emu tap's
                self.latest[(rec.domid, rec.devid)] = rec
            if not first:
                self._count(rec)

    def _count(self, rec: HotplugRecord) -> None:
        key = (rec.action, rec.outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        if rec.ms is None:
            return
        seconds = rec.ms / 1000
        b = self.buckets.setdefault(rec.action, [0] * (len(HOTPLUG_BUCKETS) + 1))
        for i, le in enumerate((*HOTPLUG_BUCKETS, float("inf"))):
            if seconds <= le:
                b[i] += 1
        self.sums[rec.action] = self.sums.get(rec.action, 0.0) + seconds


class Metrics:
    """What the controller counts itself, and the collector that reads the rest at scrape time."""

    def __init__(self, runtime: Runtime, cfg: MetricsConfig | None) -> None:
        """Counted whether or not served: serve() only where [metrics] asks for it."""
        self.cfg = cfg
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, open fds
        self.reconciles = Counter("xvif_reconcile_passes", "Passes of the reconciler over every bridge", registry=r)
        self.reconcile_seconds = Histogram(
            "xvif_reconcile_seconds",
            "Time of one reconciler pass: joining XenStore and OVSDB and computing each bridge's model",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10),
            registry=r,
        )
        self.program_seconds = Histogram(
            "xvif_program_seconds",
            "Time to bring one switch to its model: computing the flows and applying the difference in a bundle",
            ["bridge"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60),
            registry=r,
        )
        self.bundle_failures = Counter(
            "xvif_bundle_failures", "Bundles (flow changes) a switch refused; each is retried", ["bridge"], registry=r
        )
        self.xenstore_events = Counter("xvif_xenstore_events", "vif changes seen in XenStore", registry=r)
        self.rules_reload_failures = Counter(
            "xvif_rules_reload_failures", "Reloads of the firewall rule files refused (a mistake in a file)", registry=r
        )
        self.collector = SwitchCollector(runtime, HotplugTail(cfg.hotplug_log if cfg else DEFAULT_HOTPLUG_LOG))
        r.register(self.collector)
        self._server: Any = None

    def serve(self) -> None:
        """Listen now: an address that cannot be bound stops the start (OSError)."""
        assert self.cfg is not None
        self._server, _thread = start_http_server(self.cfg.port, self.cfg.host, registry=self.registry)
        if self.cfg.remote:
            log.warning(
                "metrics on %s:%d, reachable from other hosts: they name every guest; restrict who reaches the port",
                self.cfg.host,
                self.cfg.port,
            )

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class SwitchCollector(Collector):
    """Read at scrape time, one scrape at a time (a second one waits for the first)."""

    def __init__(self, runtime: Runtime, hotplug: HotplugTail) -> None:
        self.runtime = runtime
        self.hotplug = hotplug
        self.drops = CookieCounts(P_DROP)
        self.rules = CookieCounts(P_RULE)
        self.defaults = CookieCounts(P_FW_DEFAULT)
        self.requests = 0  # asked of switches by scrapes, in all
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return []  # families depend on what exists: described when collected

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        rt = self.runtime
        t0 = time.monotonic()
        fam = _Families()
        up = fam.gauge("xvif_switch_connected", "1 while the bridge's switch is connected and synced", ["bridge"])
        with rt._lock:
            sessions = {s.bridge: s for s in rt.sessions.values() if s.bridge}
        models: dict[str, BridgeModel] = dict(rt.models)
        for b in rt.cfg.bridges:
            s = sessions.get(b)
            up.add_metric([b], 1.0 if s is not None and s.synced and not s.closed else 0.0)
        fam.gauge("xvif_ovsdb_connected", "1 while the controller's OVSDB monitor is connected").add_metric(
            [], 1.0 if rt.monitor is not None and rt.monitor.connected() else 0.0
        )
        fam.gauge("xvif_xenstore_connected", "1 while the controller's XenStore watch is connected").add_metric(
            [], 1.0 if rt.xenstore_up else 0.0
        )
        fam.counter(
            "xvif_unexpected_packet_ins", "Packets sent to the controller that the pipeline should not send"
        ).add_metric([], rt.packet_ins)
        fam.counter(
            "xvif_firewall_rejects", "Packets a firewall reject rule sent to the controller, answered"
        ).add_metric([], rt.rejects)
        fam.gauge("xvif_rules", "Firewall rules in force").add_metric([], len(rt.rules.current.rules))
        fam.gauge(
            "xvif_rules_refused",
            "1 while the rule files on disk were refused (a mistake in one): the previous rules stay in force",
        ).add_metric([], 1.0 if rt.rules.refused else 0.0)
        self.hotplug.poll()
        vifs_seen: dict[tuple[int, int], list[str]] = {}
        requests = [0]
        for bname, s in sorted(sessions.items()):
            model = models.get(bname)
            if model is None or not s.synced or s.closed:
                continue
            try:
                self._bridge(fam, bname, s, model, vifs_seen, requests)
            except SwitchError as e:
                log.warning("metrics: switch %s: %s", bname, e)
        self.requests += requests[0]
        self._hotplug(fam, vifs_seen)
        fam.counter("xvif_metrics_switch_requests", "OpenFlow requests scrapes sent to the switches").add_metric(
            [], self.requests
        )
        fam.gauge("xvif_metrics_scrape_seconds", "Time this scrape took to read the switches").add_metric(
            [], time.monotonic() - t0
        )
        fam.gauge("xvif_metrics_scrape_requests", "OpenFlow requests this scrape sent to the switches").add_metric(
            [], requests[0]
        )
        yield from fam.all()

    def _bridge(
        self,
        fam: _Families,
        bname: str,
        s: Session,
        model: BridgeModel,
        vifs_seen: dict[tuple[int, int], list[str]],
        requests: list[int],
    ) -> None:
        ofp = s.dp.ofproto
        names = {no: name for name, (no, _live) in s.ports.items()}
        stats = s.port_stats(REQUEST_TIMEOUT)
        tables = s.table_stats(REQUEST_TIMEOUT)
        requests[0] += 2
        drops = self.drops.read(s, requests)
        rule_hits = self.rules.read(s, requests) if any(v.firewall for v in model.vifs) else {}
        default_hits = self.defaults.read(s, requests) if any(v.firewall for v in model.vifs) else {}
        vm = {p.domid: p.vm_uuid for p in self.runtime.ovsdb.get(bname, _NoBridge).ports if p.domid is not None}
        by_owner: dict[tuple[int, int], list[str]] = {}
        for v in model.vifs:
            port = v.vif_port if v.vif_port is not None else v.emu_port
            labels = [bname, v.name, str(v.domid), str(v.devid), names.get(port, ""), vm.get(v.domid, "")]
            by_owner[(v.domid, v.devid)] = labels
            vifs_seen[(v.domid, v.devid)] = labels
            fam.gauge(
                "xvif_vif_info", "A guest NIC on a managed bridge (1), with its MAC", [*VIF_LABELS, "mac"]
            ).add_metric([*labels, v.mac], 1.0)
            self._port_counters(fam, labels, v, stats, ofp)
        kinds: dict[tuple[tuple[int, int], str], list[int]] = {}
        for ck, (pk, by) in drops.items():
            d = decode_cookie(ck)
            if d is None or d[1] is None or (d[1], d[2]) not in by_owner:
                continue
            acc = kinds.setdefault(((d[1], d[2]), drop_kind(ck)), [0, 0])  # type: ignore[arg-type]
            acc[0] += pk
            acc[1] += by
        dropped = fam.counter(
            "xvif_vif_port_security_drops",
            "Frames from the guest dropped by port security, by kind (source-mac, ipv4, ipv6, arp, nd, "
            "dhcp-server, ra, vlan, other, routed, isolation)",
            [*VIF_LABELS, "kind"],
        )
        dropped_bytes = fam.counter(
            "xvif_vif_port_security_dropped_bytes", "Bytes of those frames", [*VIF_LABELS, "kind"]
        )
        for (owner, kind), (pk, by) in sorted(kinds.items()):
            dropped.add_metric([*by_owner[owner], kind], pk)
            dropped_bytes.add_metric([*by_owner[owner], kind], by)
        hits = fam.counter(
            "xvif_vif_firewall_rule_hits",
            "Packets a firewall rule decided (rule: its index among the guest's rules, in order)",
            [*VIF_LABELS, "rule", "source"],
        )
        per_rule: dict[tuple[tuple[int, int], int], int] = {}
        for ck, (pk, _by) in rule_hits.items():
            d = decode_cookie(ck)
            if d is not None and d[1] is not None and (d[1], d[2]) in by_owner:
                key = ((d[1], d[2]), rule_index(ck))  # type: ignore[arg-type]
                per_rule[key] = per_rule.get(key, 0) + pk
        fw = {(v.domid, v.devid): v.firewall for v in model.vifs if v.firewall is not None}
        for (owner, i), pk in sorted(per_rule.items()):
            rules = fw[owner].rules if owner in fw else ()
            source = rules[i].where if i < len(rules) else ""
            hits.add_metric([*by_owner[owner], str(i), source], pk)
        closed = fam.counter(
            "xvif_vif_firewall_default_drops",
            "Packets to the guest a closed network's default policy dropped",
            VIF_LABELS,
        )
        per_vif: dict[tuple[int, int], int] = {}
        for ck, (pk, _by) in default_hits.items():
            d = decode_cookie(ck)
            if d is not None and d[1] is not None and (d[1], d[2]) in by_owner:
                per_vif[(d[1], d[2])] = per_vif.get((d[1], d[2]), 0) + pk  # type: ignore[index]
        for owner, pk in sorted(per_vif.items()):
            closed.add_metric(by_owner[owner], pk)
        self._bridge_tables(fam, bname, s, tables)

    @staticmethod
    def _port_counters(fam: _Families, labels: list[str], v: VifModel, stats: dict[int, Any], ofp: Any) -> None:
        """From the guest's side: the switch's rx is what the guest sent. Both ports of an
        HVM guest's NIC (the PV vif and the emulated tap) count as the one NIC."""
        pk = fam.counter(
            "xvif_vif_packets",
            "Packets through the guest NIC (direction: from_guest, to_guest)",
            [*VIF_LABELS, "direction"],
        )
        by = fam.counter("xvif_vif_bytes", "Bytes through the guest NIC", [*VIF_LABELS, "direction"])
        lost = fam.counter(
            "xvif_vif_interface_drops",
            "Packets the interface itself dropped (to_guest: the guest's ring was full)",
            [*VIF_LABELS, "direction"],
        )
        ports = [stats[p] for p in v.ports if p in stats]
        if not ports:
            return
        for direction, rx in (("from_guest", True), ("to_guest", False)):
            pk.add_metric([*labels, direction], sum(p.rx_packets if rx else p.tx_packets for p in ports))
            by.add_metric([*labels, direction], sum(p.rx_bytes if rx else p.tx_bytes for p in ports))
            lost.add_metric([*labels, direction], sum(p.rx_dropped if rx else p.tx_dropped for p in ports))

    @staticmethod
    def _bridge_tables(fam: _Families, bname: str, s: Session, tables: dict[int, int]) -> None:
        ours: dict[int, int] = {}
        for flows in s.installed_flows.values():
            for f in flows:
                ours[f.table] = ours.get(f.table, 0) + 1
        per_table = fam.gauge(
            "xvif_bridge_flows", "Flows in each table, as the switch counts them", ["bridge", "table", "name"]
        )
        drift = 0
        for t in sorted(set(tables) | set(ours)):
            n = tables.get(t, 0)
            if n or t in TABLES:
                per_table.add_metric([bname, str(t), TABLES[t].name if t in TABLES else ""], n)
            if t not in _LEARNING_TABLES:
                drift += abs(n - ours.get(t, 0))
        fam.gauge(
            "xvif_bridge_flows_drift",
            "Flows the switch holds beyond, or short of, what the controller installed (tables without "
            "learned flows); `xvif-ovs flows --diff` names them",
            ["bridge"],
        ).add_metric([bname], drift)
        learned = sum(max(0, tables.get(t, 0) - ours.get(t, 0)) for t in (LEARNED,))
        fam.gauge("xvif_bridge_learned_macs", "MACs learned behind uplinks (table 4)", ["bridge"]).add_metric(
            [bname], learned
        )
        fam.gauge(
            "xvif_bridge_learned_neighbours", "IPv4 neighbours learned on a routed bridge (table 6)", ["bridge"]
        ).add_metric([bname], max(0, tables.get(NEIGHBOURS, 0) - ours.get(NEIGHBOURS, 0)))
        groups = [g for g in s.installed_groups if is_our_group(g.group_id)]
        fam.gauge(
            "xvif_bridge_groups", "Groups the controller installed (flood groups and bonds)", ["bridge"]
        ).add_metric([bname], len(groups))
        flood = fam.gauge(
            "xvif_flood_group_ports",
            "Ports a flood group sends to, per VLAN and where the frame came from (dom0, uplink, vif, private)",
            ["bridge", "vlan", "ingress"],
        )
        for g in groups:
            offset = g.group_id - GROUP_BASE
            if g.type != "all" or offset >= 4096 * 4:
                continue
            flood.add_metric([bname, str(offset // 4), _INGRESS[offset % 4]], len(g.buckets))

    def _hotplug(self, fam: _Families, vifs_seen: dict[tuple[int, int], list[str]]) -> None:
        h = self.hotplug
        total = fam.counter(
            "xvif_hotplug",
            "Hook runs since the controller started (action: online, offline, add, remove)",
            ["action", "outcome"],
        )
        for (action, outcome), n in sorted(h.counts.items()):
            total.add_metric([action, outcome], n)
        hist = HistogramMetricFamily("xvif_hotplug_seconds", "Time the hook took, by action", labels=["action"])
        for action, b in sorted(h.buckets.items()):
            les = [*map(str, HOTPLUG_BUCKETS), "+Inf"]
            hist.add_metric([action], list(zip(les, b, strict=True)), h.sums.get(action, 0.0))
        fam.add(hist)
        ok = fam.gauge("xvif_vif_hotplug_ok", "1 if the guest NIC's last hotplug succeeded, 0 if it failed", VIF_LABELS)
        took = fam.gauge("xvif_vif_hotplug_seconds", "Time the guest NIC's last hotplug took", VIF_LABELS)
        for key, labels in sorted(vifs_seen.items()):
            rec = h.latest.get(key)
            if rec is None:
                continue
            ok.add_metric(labels, 1.0 if rec.ok else 0.0)
            if rec.ms is not None:
                took.add_metric(labels, rec.ms / 1000)
        failed = fam.gauge(
            "xvif_hotplug_failed_vifs",
            "vifs whose last hotplug failed and that are not on a bridge (a guest NIC libxl could not connect)",
        )
        with self.runtime._lock:
            backends = set(self.runtime.vifs)  # in XenStore now: a destroyed guest's failure is over
        failed.add_metric(
            [],
            sum(
                1
                for k, r in h.latest.items()
                if not r.ok and r.action == "online" and k in backends and k not in vifs_seen
            ),
        )


class _NoBridge:
    ports: tuple = ()


class _Families:
    """One family per name, however many bridges add to it: Prometheus's text format
    wants each name once."""

    def __init__(self) -> None:
        self._by_name: dict[str, Metric] = {}

    def gauge(self, name: str, doc: str, labels: list[str] | tuple[str, ...] = ()) -> GaugeMetricFamily:
        if name not in self._by_name:
            self._by_name[name] = GaugeMetricFamily(name, doc, labels=list(labels))
        return self._by_name[name]  # type: ignore[return-value]

    def counter(self, name: str, doc: str, labels: list[str] | tuple[str, ...] = ()) -> CounterMetricFamily:
        if name not in self._by_name:
            self._by_name[name] = CounterMetricFamily(name, doc, labels=list(labels))
        return self._by_name[name]  # type: ignore[return-value]

    def add(self, m: Metric) -> None:
        self._by_name[m.name] = m

    def all(self) -> Iterator[Metric]:
        yield from self._by_name.values()
