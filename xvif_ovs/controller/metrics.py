"""Prometheus metrics of the controller, its switches, their guests and the hook.

Served at /metrics on [metrics] listen (loopback unless a host is named, and another
address only with allow_remote = true; off without the section). Per-guest figures come
from where the switch already counts them: the ports' counters and our flows' counters,
whose cookie says which vif and why (port-security drops by kind, firewall rules). A
quiet scrape asks each bridge four short things at once, within one deadline: every
port's counters, every table's flow count, the sum of our flows and the sum of the drop
flows (two more sums with firewall rules). The drop and rule flows themselves are dumped
only when their sum moved, and at most every 10 s whoever asks (controller/counters.py,
shared with the drop reports). Scrapes closer together than MIN_INTERVAL get the last
answer again, so nobody who reaches the port can make the switch busy with them.

Guest labels: bridge, domain (the domain's name), domid, devid, vif (the port) and vm
(the VM's uuid, as the hook wrote it). Counters never go backwards while the controller
runs (a flow replaced starts from 0; counters.py adds only increases); a controller
restart is a reset, as Prometheus expects.
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
from ..pipeline.flow import COOKIE_MAGIC, COOKIE_MASK, GROUP_BASE, decode_cookie, is_our_group, purpose_match
from ..pipeline.tables import LEARNED, NEIGHBOURS, TABLES
from .config import DEFAULT_HOTPLUG_LOG, MetricsConfig
from .session import Session, SwitchError

if TYPE_CHECKING:
    from ..model.host import BridgeModel, VifModel
    from .runtime import Runtime

log = logging.getLogger("xvif_ovs.controller.metrics")
VIF_LABELS = ("bridge", "domain", "domid", "devid", "vif", "vm")
DEADLINE = 4.0  # each switch's answers: a scrape must answer within Prometheus's default 10 s
MIN_INTERVAL = 2.0  # scrapes closer than this get the last answer again
ACTIONS = ("online", "offline", "add", "remove")
# Drop kinds every vif has flows for, and those of a routed or NAT bridge's vifs: their series
# are there (at 0) before the first drop, so that increase() sees that one.
BASE_KINDS = ("source-mac", "ipv4", "ipv6", "arp", "nd", "dhcp-server", "ra", "vlan", "other")
ROUTED_KINDS = ("routed", "isolation")
# A flood group's id is GROUP_BASE + vlan * 4 + this index (pipeline/build.group_id).
_INGRESS = ("dom0", "uplink", "vif", "private")  # FROM_LOCAL, FROM_UPLINK, FROM_VIF, FROM_PRIVATE
HOTPLUG_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LEARNING_TABLES = (LEARNED, NEIGHBOURS)  # flows the switch adds by itself (learn actions)


class HotplugTail:
    """The hook's lines in xen-hotplug.log, read from where the last scrape stopped.

    At start the file is read once for each vif's latest hotplug (how it went and how
    long it took) but not counted: counting years of history as new events at every
    restart would fire the alerts on hotplug errors."""

    MAX_BACKLOG = 4 << 20  # at start, the last 4 MiB: enough for each present vif's latest line

    def __init__(self, path: str) -> None:
        self.path = path
        self.latest: dict[tuple[int, int], HotplugRecord] = {}  # (domid, devid) -> last vif line
        # From zero for every action, so that the first error after a start is an increase.
        self.counts: dict[tuple[str, str], int] = {(a, o): 0 for a in ACTIONS for o in ("ok", "error")}
        self.buckets: dict[str, list[int]] = {}  # action -> counts per HOTPLUG_BUCKETS (+Inf last)
        self.sums: dict[str, float] = {}
        self._where: tuple[int, int] | None = None  # (inode, offset)
        self._partial = ""

    def start(self) -> None:
        """At the controller's start: what is in the file now is history. A file that is
        not there yet is read from its first byte once it appears: all of it is new."""
        if not os.path.exists(self.path):
            self._where = (-1, 0)  # no inode matches: read from 0, and count
        self.poll()

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
        for b in runtime.cfg.bridges:  # from 0, so that a bridge's first failure is an increase
            self.bundle_failures.labels(b)
            self.program_seconds.labels(b)
        tail = HotplugTail(cfg.hotplug_log if cfg else DEFAULT_HOTPLUG_LOG)
        if cfg is not None:
            tail.start()
        self.collector = SwitchCollector(runtime, tail)
        r.register(self.collector)
        self._server: Any = None

    def serve(self) -> None:
        """Listen now: an address that cannot be bound stops the start (OSError)."""
        c = self.cfg
        assert c is not None
        tls = {}
        if c.certificate:
            tls = {"certfile": c.certificate, "keyfile": c.private_key, "client_cafile": c.client_ca}
            tls["client_auth_required"] = True  # type: ignore[assignment]
        self._server, _thread = start_http_server(c.port, c.host, registry=self.registry, **tls)
        if c.remote and not c.certificate:
            log.warning(
                "metrics on %s:%d over plain HTTP, reachable from other hosts (allow_remote = true): they name every "
                "guest; restrict who reaches the port, or add certificate, private_key and client_ca",
                c.host,
                c.port,
            )

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class SwitchCollector(Collector):
    """Read at scrape time, one scrape at a time (a second one waits for the first, and
    one within MIN_INTERVAL of the last gets its answer)."""

    def __init__(self, runtime: Runtime, hotplug: HotplugTail) -> None:
        self.runtime = runtime
        self.hotplug = hotplug
        self.requests = 0  # asked of switches by scrapes, in all
        self._lock = threading.Lock()
        self._last: tuple[float, list[Metric]] = (float("-inf"), [])
        # Port counters as totals that never go backwards: (domid, devid) -> port -> last seen,
        # and the totals (an HVM NIC's -emu tap going away must not take its share away).
        self._ports: dict[tuple[int, int], dict[str, tuple[int, ...]]] = {}
        self._port_totals: dict[tuple[int, int], list[int]] = {}

    def describe(self) -> list[Metric]:
        return []  # families depend on what exists: described when collected

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            at, last = self._last
            if time.monotonic() - at >= MIN_INTERVAL:
                last = list(self._collect())
                self._last = (time.monotonic(), last)
        yield from last

    def _collect(self) -> Iterator[Metric]:
        rt = self.runtime
        t0 = time.monotonic()
        fam = _Families()
        up = fam.gauge("xvif_switch_connected", "1 while the bridge's switch is connected and synced", ["bridge"])
        with rt._lock:
            sessions = {s.bridge: s for s in rt.sessions.values() if s.bridge}
            backends = set(rt.vifs)
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
        _firewall_families(fam)
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
        for gone in self._port_totals.keys() - vifs_seen.keys():
            del self._port_totals[gone]
            self._ports.pop(gone, None)
        self.requests += requests[0]
        self._hotplug(fam, vifs_seen, backends)
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
        parser, ofp = s.dp.ofproto_parser, s.dp.ofproto
        firewalled = any(v.firewall for v in model.vifs)
        purposes = (P_DROP, P_RULE, P_FW_DEFAULT) if firewalled else (P_DROP,)
        asked = [
            (parser.OFPPortStatsRequest(s.dp, 0, ofp.OFPP_ANY), "port stats"),
            (parser.OFPTableStatsRequest(s.dp, 0), "table stats"),
            (s.aggregate_request(COOKIE_MAGIC, COOKIE_MASK), "aggregate stats"),
            *((s.aggregate_request(*purpose_match(p)), "aggregate stats") for p in purposes),
        ]
        answers = s.gather(asked, DEADLINE)
        requests[0] += len(asked)
        for a in answers:
            if isinstance(a, SwitchError):
                raise a
        ports_r, tables_r, ours_r, *sums = answers
        stats = {p.port_no: p for r in ports_r for p in r.body}  # type: ignore[union-attr]
        tables = {t.table_id: t.active_count for r in tables_r for t in r.body}  # type: ignore[union-attr]
        ours_on_switch = sum(r.body.flow_count for r in ours_r)  # type: ignore[union-attr]
        counted: dict[int, dict[int, tuple[int, int]]] = {}
        for p, replies in zip(purposes, sums, strict=True):
            total = tuple(
                sum(getattr(r.body, k) for r in replies) for k in ("packet_count", "byte_count", "flow_count")
            )
            counter = s.counters(p)
            dumps = counter.dumps
            counted[p] = counter.read(s, total, DEADLINE)  # type: ignore[arg-type]
            requests[0] += counter.dumps - dumps
        names = {no: name for name, (no, _live) in s.ports.items()}
        vm = {p.domid: p.vm_uuid for p in self.runtime.ovsdb.get(bname, _NoBridge).ports if p.domid is not None}
        by_owner: dict[tuple[int, int], list[str]] = {}
        info = fam.gauge("xvif_vif_info", "A guest NIC on a managed bridge (1), with its MAC", [*VIF_LABELS, "mac"])
        dropped = fam.counter(
            "xvif_vif_port_security_drops",
            "Frames from the guest dropped by port security, by kind (source-mac, ipv4, ipv6, arp, nd, "
            "dhcp-server, ra, vlan, other; routed, isolation on routed and NAT bridges)",
            [*VIF_LABELS, "kind"],
        )
        kinds_of_bridge = BASE_KINDS + (ROUTED_KINDS if model.mode in ("routed", "nat") else ())
        drops: dict[tuple[tuple[int, int], str], int] = {}
        for ck, (pk, _by) in counted[P_DROP].items():
            d = decode_cookie(ck)
            if d is not None and d[1] is not None:
                key = ((d[1], d[2]), drop_kind(ck))  # type: ignore[arg-type]
                drops[key] = drops.get(key, 0) + pk
        for v in model.vifs:
            port = v.vif_port if v.vif_port is not None else v.emu_port
            labels = [bname, v.name, str(v.domid), str(v.devid), names.get(port, ""), vm.get(v.domid, "")]
            key = (v.domid, v.devid)
            by_owner[key] = labels
            vifs_seen[key] = labels
            info.add_metric([*labels, v.mac], 1.0)
            self._port_counters(fam, labels, v, stats)
            for kind in kinds_of_bridge:
                dropped.add_metric([*labels, kind], drops.get((key, kind), 0))
        if firewalled:
            self._firewall(fam, model, by_owner, counted[P_RULE], counted[P_FW_DEFAULT])
        self._bridge_tables(fam, bname, s, tables, ours_on_switch)

    def _firewall(
        self,
        fam: _Families,
        model: BridgeModel,
        by_owner: dict[tuple[int, int], list[str]],
        rule_hits: dict[int, tuple[int, int]],
        default_hits: dict[int, tuple[int, int]],
    ) -> None:
        hits, about, closed = _firewall_families(fam)
        per_rule: dict[tuple[tuple[int, int], int], int] = {}
        for ck, (pk, _by) in rule_hits.items():
            d = decode_cookie(ck)
            if d is not None and d[1] is not None:
                key = ((d[1], d[2]), rule_index(ck))  # type: ignore[arg-type]
                per_rule[key] = per_rule.get(key, 0) + pk
        per_vif: dict[tuple[int, int], int] = {}
        for ck, (pk, _by) in default_hits.items():
            d = decode_cookie(ck)
            if d is not None and d[1] is not None:
                per_vif[(d[1], d[2])] = per_vif.get((d[1], d[2]), 0) + pk  # type: ignore[index]
        for v in model.vifs:
            key = (v.domid, v.devid)
            if v.firewall is None or key not in by_owner:
                continue
            labels = by_owner[key]
            for i, rule in enumerate(v.firewall.rules):
                hits.add_metric([*labels, str(i)], per_rule.get((key, i), 0))
                about.add_metric([*labels, str(i), rule.where, rule.describe()], 1.0)
            closed.add_metric(labels, per_vif.get(key, 0))

    def _port_counters(self, fam: _Families, labels: list[str], v: VifModel, stats: dict[int, Any]) -> None:
        """From the guest's side: the switch's rx is what the guest sent. Both ports of an
        HVM guest's NIC (the PV vif and the emulated tap) count as the one NIC, as totals
        that never go backwards."""
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
        key = (v.domid, v.devid)
        seen = self._ports.setdefault(key, {})
        totals = self._port_totals.setdefault(key, [0] * 6)
        for no in v.ports:
            p = stats.get(no)
            if p is None:
                continue
            now = (p.rx_packets, p.tx_packets, p.rx_bytes, p.tx_bytes, p.rx_dropped, p.tx_dropped)
            was = seen.get(str(no))
            for i, x in enumerate(now):
                totals[i] += x - was[i] if was is not None and x >= was[i] else x
            seen[str(no)] = now
        for i, (metric, direction) in enumerate(
            (
                (pk, "from_guest"),
                (pk, "to_guest"),
                (by, "from_guest"),
                (by, "to_guest"),
                (lost, "from_guest"),
                (lost, "to_guest"),
            )
        ):
            metric.add_metric([*labels, direction], totals[i])

    @staticmethod
    def _bridge_tables(fam: _Families, bname: str, s: Session, tables: dict[int, int], ours_on_switch: int) -> None:
        ours = dict(s.table_counts)  # swapped whole by the switch's worker: a consistent copy
        per_table = fam.gauge(
            "xvif_bridge_flows", "Flows in each table, as the switch counts them", ["bridge", "table", "name"]
        )
        for t in sorted(set(tables) | set(ours)):
            n = tables.get(t, 0)
            if n or t in TABLES:
                per_table.add_metric([bname, str(t), TABLES[t].name if t in TABLES else ""], n)
        learned = {t: max(0, tables.get(t, 0) - ours.get(t, 0)) for t in _LEARNING_TABLES}
        installed = sum(ours.values())
        # Our cookie's flows beyond (or short of) what the controller installed and the
        # switch learned: someone changed them. Flows without our cookie are not ours to fix.
        fam.gauge(
            "xvif_bridge_flows_drift",
            "Flows with xvif-ovs's cookie that the switch holds beyond, or lacks of, what the controller "
            "installed (`xvif-ovs flows --diff` names them; a controller restart puts them right)",
            ["bridge"],
        ).add_metric([bname], abs(ours_on_switch - installed - sum(learned.values())))
        fam.gauge(
            "xvif_bridge_foreign_flows",
            "Flows on the bridge without xvif-ovs's cookie (added by hand or by another program); never touched",
            ["bridge"],
        ).add_metric([bname], max(0, sum(tables.values()) - ours_on_switch))
        fam.gauge("xvif_bridge_learned_macs", "MACs learned behind uplinks (table 4)", ["bridge"]).add_metric(
            [bname], learned[LEARNED]
        )
        fam.gauge(
            "xvif_bridge_learned_neighbours", "IPv4 neighbours learned on a routed bridge (table 6)", ["bridge"]
        ).add_metric([bname], learned[NEIGHBOURS])
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

    def _hotplug(
        self, fam: _Families, vifs_seen: dict[tuple[int, int], list[str]], backends: set[tuple[int, int]]
    ) -> None:
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
            "vifs in XenStore whose last hotplug failed and that are on no bridge (a guest NIC libxl could not connect)",
        )
        failed.add_metric(
            [],
            sum(
                1
                for k, r in h.latest.items()
                if not r.ok and r.action == "online" and k in backends and k not in vifs_seen
            ),
        )


def _firewall_families(fam: _Families) -> tuple[CounterMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
    """Declared on every scrape, firewall or not, so that dashboards and alerts find them."""
    return (
        fam.counter(
            "xvif_vif_firewall_rule_hits",
            "Packets a firewall rule decided (rule: its index among the guest's rules, as `xvif-ovs rules` lists them)",
            [*VIF_LABELS, "rule"],
        ),
        fam.gauge(
            "xvif_vif_firewall_rule_info",
            "A guest's firewall rule (1): its index, FILE:LINE and text",
            [*VIF_LABELS, "rule", "source", "text"],
        ),
        fam.counter(
            "xvif_vif_firewall_default_drops",
            "Packets to the guest a closed network's default policy dropped",
            VIF_LABELS,
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
