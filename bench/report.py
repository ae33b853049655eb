"""Write BENCHMARKS.md (and a PNG where a curve says more) from bench/results/*.json.

Usage: .venv/bin/python bench/report.py
"""

from __future__ import annotations

import json
import sys

from common import RESULTS, ROOT


def load(name: str) -> dict | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def mmm(s: dict, scale: float = 1, fmt: str = ".0f") -> str:
    return f"{s['min'] * scale:{fmt}} / {s['median'] * scale:{fmt}} / {s['max'] * scale:{fmt}}"


def header(d: dict) -> list[str]:
    m = d["meta"]
    return [f"Command: `{m['command']}` ({m['date']}; {m['machine']})", ""]


def hotplug(d: dict) -> list[str]:
    out = ["## Hotplug: what libxl waits for", ""] + header(d)
    out += [
        "`online` of one new vif while N vifs (real veth ports, both ends up) are on the bridge: wall time of the",
        "script as libxl runs it, xvif-ovs's hook against Xen's vif-openvswitch, alternating, same lab.",
        "",
        "| vifs on bridge | xvif-ovs hook (ms) min/median/max | vif-openvswitch (ms) min/median/max | speed-up (medians) |",
        "|---:|---|---|---:|",
    ]
    for r in d["results"]:
        out.append(
            f"| {r['vifs_on_bridge']} | {mmm(r['xvif-ovs'], 1000)} | {mmm(r['vif-openvswitch'], 1000)} | {r['speedup_median']:.1f}x |"
        )
    return out + [""]


def _log_time(line: str) -> float:
    from datetime import datetime

    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def connect_to_pipeline(r: dict) -> float | None:
    """From the switch's connection to the pipeline applied, from the controller's log."""
    lines = r.get("controller_log", [])
    conn = next((ln for ln in lines if "connected:" in ln), None)
    done = next((ln for ln in lines if " flows, " in ln), None)
    return _log_time(done) - _log_time(conn) if conn and done else None


def firstpacket(d: dict) -> list[str]:
    out = ["## Hotplug: what the guest feels", ""] + header(d)
    out += [
        "From the hotplug script's start to the guest's first ping answered by the LAN, with N vifs on the",
        "bridge; xvif-ovs (hook + controller) against vif-openvswitch (with NORMAL). The guest pings every",
        "2 ms from when the hook returns (a netfront connects only once the hook reports connected), with",
        "static neighbour entries on both sides so that no ARP retry (1 s apart) hides when the path opened.",
        "Floor: one `ovs-vsctl add-port` waiting for ovs-vswitchd at that size. Bare: the least any hook",
        "can do, as a second floor: the link up and promiscuous, `ovs-vsctl --no-wait add-port`, NORMAL.",
        "",
        "| vifs on bridge | floor (ms) | xvif-ovs hook (ms) | xvif-ovs first packet (ms) min/median/max | vif-openvswitch hook (ms) | vif-openvswitch first packet (ms) min/median/max | bare first packet (ms) min/median/max |",
        "|---:|---:|---:|---|---:|---|---|",
    ]
    for r in d["results"]["first_packet"]:
        x, v = r["xvif-ovs"], r["vif-openvswitch"]
        bare = mmm(r["bare"]["first_packet_s"], 1000) if "bare" in r else "-"
        out.append(
            f"| {r['vifs_on_bridge']} | {r['reconfigure_floor_s'] * 1000:.0f} | {x['hook_s']['median'] * 1000:.0f} | "
            f"{mmm(x['first_packet_s'], 1000)} | {v['hook_s']['median'] * 1000:.0f} | {mmm(v['first_packet_s'], 1000)} | {bare} |"
        )
    out += [
        "",
        "| hooks started at once | mode | all connected (s) | all forwarding (s) | failed |",
        "|---:|---|---:|---:|---:|",
    ]
    for c in d["results"]["concurrent"]:
        out.append(
            f"| {c['hooks']} | {c['mode']} | {c['all_connected_s']:.2f} | {c['all_forwarding_s']:.2f} | {c['failed']} |"
        )
    return out + [""]


def scale(d: dict) -> list[str]:
    out = ["## Control-plane scale (dummy datapath)", ""] + header(d)
    out += [
        "Start: process start to every flow in the switch (includes Python and os-ken start-up and OVS's reconnect).",
        "Connected: from the switch's connection to the pipeline applied (read back, computed, sent in one bundle).",
        "Floor: `ovs-ofctl --bundle add-groups/add-flows` of the same flows, rendered by the pipeline, from a file.",
        "",
        "| vifs | start (s) | connected (s) | floor (s) | start / floor | connected / floor | flows | flows/vif | one vif change (ms) min/median/p99/max | RSS (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in d["results"]:
        c = r["one_vif_change_s"]
        change = f"{c['min'] * 1000:.0f} / {c['median'] * 1000:.0f} / {c['p99'] * 1000:.0f} / {c['max'] * 1000:.0f}"
        conn = connect_to_pipeline(r)
        conn_s = f"{conn:.2f}" if conn is not None else "?"
        conn_r = f"{conn / r['bundle_floor_s']:.1f}x" if conn is not None else "?"
        out.append(
            f"| {r['vifs']} | {r['controller_start_to_pipeline_s']:.2f} | {conn_s} | {r['bundle_floor_s']:.2f} | "
            f"{r['ratio_to_floor']:.1f}x | {conn_r} | {r['flows']} | {r['flows_per_vif']:.1f} | {change} | {r['controller_rss_mib']:.0f} |"
        )
    return out + [""]


def dataplane(d: dict) -> list[str]:
    out = ["## Dataplane", ""] + header(d)
    st = d["results"]["stats"]
    out += ["| path | Gbit/s min/median/max | RTT ms min/median/max |", "|---|---|---|"]
    for mode, path in (
        ("pipeline", "guest-guest"),
        ("normal", "guest-guest"),
        ("pipeline", "guest-LAN"),
        ("normal", "guest-LAN"),
    ):
        out.append(
            f"| OVS {'xvif-ovs pipeline' if mode == 'pipeline' else 'NORMAL'}, {path} | "
            f"{mmm(st[f'{mode} {path} Gbit/s'], 1, '.2f')} | {mmm(st[f'{mode} {path} rtt ms'], 1, '.3f')} |"
        )
    out.append(
        f"| Linux bridge, guest-guest | {mmm(st['linux-bridge guest-guest Gbit/s'], 1, '.2f')} | {mmm(st['linux-bridge guest-guest rtt ms'], 1, '.3f')} |"
    )
    out.append(
        f"| bare veth pair | {mmm(st['veth-pair Gbit/s'], 1, '.2f')} | {mmm(st['veth-pair rtt ms'], 1, '.3f')} |"
    )
    r = d["results"]["pipeline_over_normal"]
    out += [
        "",
        f"Pipeline / NORMAL throughput (medians): guest-guest {r['guest-guest']:.2f}x, guest-LAN {r['guest-LAN']:.2f}x.",
        "",
    ]
    out += ["| guests talking | mode | datapath flows (megaflows) | upcalls |", "|---:|---|---:|---:|"]
    for c in d["results"]["chatter"]:
        out.append(f"| {c['guests']} | {c['mode']} | {c['megaflows']} | {c['upcalls']} |")
    return out + [""]


def models(d: dict) -> list[str]:
    out = ["## Xen's network models: bridged, routed, NAT", ""] + header(d)
    st, res = d["results"]["stats"], d["results"]
    out += [
        "The same lab, alternating: guests bridged through the pipeline, routed (proxy ARP and",
        "routing in the controller's flows) and NATed (routing and OVS conntrack NAT in flows),",
        "against Linux doing vif-route's job (kernel forwarding, proxy ARP, a /32 route per guest)",
        "and vif-nat's (the same, guests on a private subnet, iptables MASQUERADE), in namespaces",
        "with veths and no OVS. Connections: new TCP connections per second from one guest to a",
        "LAN host, one at a time (each one a new conntrack entry through NAT).",
        "",
        "| model, path | Gbit/s min/median/max | RTT ms min/median/max |",
        "|---|---|---|",
    ]
    names = {
        "bridged": "xvif-ovs bridged",
        "routed": "xvif-ovs routed",
        "nat": "xvif-ovs NAT",
        "linux-route": "Linux vif-route",
        "linux-nat": "Linux vif-nat",
    }
    for model in names:
        for path in ("guest-LAN", "guest-guest"):
            out.append(
                f"| {names[model]}, {path} | {mmm(st[f'{model} {path} Gbit/s'], 1, '.2f')} | "
                f"{mmm(st[f'{model} {path} rtt ms'], 1, '.3f')} |"
            )
    out += ["", "| model | new TCP connections/s to the LAN min/median/max |", "|---|---|"]
    out += [f"| {names[m]} | {mmm(st[f'{m} guest-LAN conn/s'])} |" for m in names]
    out += ["", "Ratios of medians (throughput, then connection rate):", ""]
    out += [f"- {k}: {v:.2f}" for k, v in res["throughput_ratios"].items()]
    out += [f"- connections, {k}: {v:.2f}" for k, v in res["connection_rate_ratios"].items()]
    out += [
        "",
        f"A LAN host's ping to a routed guest comes back with TTL {res['lan_sees_ttl']} (one routed hop); "
        f"the controller logged {res['controller_packet_ins']} packet-ins.",
        "",
    ]
    return out


def firewall(d: dict) -> list[str]:
    out = ["## Firewall: a guest behind 0, 10 and 100 rules", ""] + header(d)
    st, res = d["results"]["stats"], d["results"]
    out += [
        "One guest, alternating in one lab run: no firewall (the open pipeline); its network",
        "closed with no rule; and closed with 10 or 100 rules, all tried before the last one,",
        "which allows the LAN's connections to it (the others deny ports, port ranges and",
        "networks the traffic does not use, in and out, tcp and udp). TCP throughput (iperf3)",
        "and new TCP connections per second, each way: the guest's to the LAN, the LAN's to it.",
        "",
        "| rules | guest to LAN Gbit/s | LAN to guest Gbit/s | guest to LAN conn/s | LAN to guest conn/s |",
        "|---|---|---|---|---|",
    ]
    for config in ("open", "0 rules", "10 rules", "100 rules"):

        def cell(what: str, fmt: str, c: str = config) -> str:
            s = st.get(f"{c} {what}")
            return mmm(s, 1, fmt) if s else "(nothing allows it)"

        out.append(
            f"| {'no firewall' if config == 'open' else config} | {cell('guest-LAN Gbit/s', '.2f')} | "
            f"{cell('LAN-guest Gbit/s', '.2f')} | {cell('guest-LAN conn/s', '.0f')} | {cell('LAN-guest conn/s', '.0f')} |"
        )
    out += ["", "Ratios of medians against no firewall (target: 100 rules at 0.9x its throughput or better):", ""]
    out += [f"- {k}: {v:.2f}" for k, v in res["ratios"].items()]
    out += ["", "A flood of new connections from the LAN to the guest (`dpctl/del-flows` first):", ""]
    out += ["| | connections | datapath flows after | upcalls |", "|---|---:|---:|---:|"]
    for config, f in res["flood"].items():
        out.append(
            f"| {'no firewall' if config == 'open' else config} | {f['connections']} | {f['megaflows_after']} | {f['upcalls']} |"
        )
    out += ["", f"The controller logged {res['controller_packet_ins']} unexpected packet-ins.", ""]
    return out


def drills(d: dict) -> list[str]:
    out = ["## Fault drills", ""] + header(d)
    out += [
        "During a 5 ms ping flood between two guests and an iperf3 run to the LAN:",
        "",
        "| drill | pings lost min/median/max | longest gap between replies (ms) min/median/max | iperf3 Gbit/s min/median/max |",
        "|---|---|---|---|",
    ]
    for what, s in sorted(d["results"]["summary"].items()):
        out.append(
            f"| {what} | {mmm(s['ping_lost'])} | {mmm(s['longest_gap_s'], 1000)} | {mmm(s['iperf_gbps'], 1, '.2f')} |"
        )
    return out + [""]


def adversarial(d: dict) -> list[str]:
    out = ["## Packet-ins and a hostile guest", ""] + header(d)
    p = d["results"]["packet_ins"]
    out += [
        f"Packet-ins: {p['steady_state']} in steady state; {p['after_1000_uplink_macs']} after 1000 MACs appeared behind the uplink "
        f"(learned by the switch: table 4 went from {p['learned_flows_before']} to {p['learned_flows_after']} flows).",
        "",
    ]
    h = d["results"].get("hostile_guest")
    if h:
        out += [
            "The third guest sends as fast as it can: the attack (10,000 source MACs, spoofed IP/ARP/ND, DHCP offers, "
            "RAs), or, as a control, the same load well-formed (its own MAC and IP, unicast to the LAN host). On this "
            "2-core machine the sender itself takes a core, so the control separates what spoofing costs from what "
            "load costs.",
            "",
            "| | quiet | busy neighbour (control) | under attack | attack / quiet | attack / busy |",
            "|---|---|---|---|---:|---:|",
            f"| guest-guest Gbit/s min/median/max | {mmm(h['quiet_gbps'], 1, '.2f')} | {mmm(h['busy_gbps'], 1, '.2f')} | "
            f"{mmm(h['attack_gbps'], 1, '.2f')} | {h['throughput_ratio']:.2f} | {h['throughput_ratio_vs_busy']:.2f} |",
            f"| ping RTT ms min/median/max | {mmm(h['quiet_rtt_ms'], 1, '.3f')} | {mmm(h['busy_rtt_ms'], 1, '.3f')} | "
            f"{mmm(h['attack_rtt_ms'], 1, '.3f')} | {h['rtt_ratio']:.2f} | {h['rtt_ratio_vs_busy']:.2f} |",
            f"| frames sent by the third guest (millions) | - | {mmm(h['busy_frames_sent'], 1e-6, '.2f')} | "
            f"{mmm(h['attack_frames_sent'], 1e-6, '.2f')} | | |",
            "",
            f"Attack frames seen on the LAN: {h['attack_frames_seen_on_lan']}; controller CPU during each attack: "
            f"{mmm(h['controller_cpu_s_during_attack'], 1, '.2f')} s; OpenFlow flows after: {h['openflow_flows_after']}; "
            f"datapath flows after: {h['datapath_flows_after']}.",
            "",
        ]
    return out


def soak(d: dict) -> list[str]:
    r = d["results"]
    out = ["## Memory soak (dummy datapath)", ""] + header(d)
    out += [
        f"{r['vifs']} vifs; {r['events']:,} events (ip= rewritten with a new address each time, and link flaps "
        "of every port), after a warm-up of a fifth as many. Target: RSS grows less than 10%.",
        "",
        "| RSS when first programmed | after the warm-up | at the end | max | growth over the events | "
        "growth from first programmed |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {r['rss_programmed_mib']:.1f} MiB | {r['rss_start_mib']:.1f} MiB | {r['rss_end_mib']:.1f} MiB | "
        f"{r['rss_max_mib']:.1f} MiB | {r['growth'] * 100:+.1f}% | {r['growth_from_programmed'] * 100:+.1f}% |",
        "",
        "RSS after each step of events (MiB): "
        + ", ".join(f"{s['rss_mib']:.1f}" for s in r["samples"])
        + f". Controller still running at the end: {r['controller_alive']}.",
        "",
    ]
    return out


def realxen(d: dict) -> list[str]:
    r = d["results"]
    i = r["info"]
    out = ["## Real Xen 4.17 in QEMU (emulated: only the ratios mean anything)", ""] + header(d)
    out += [
        f"Xen {i['xen']}, dom0 Linux {i['kernel']} ({i['dom0_vcpus']} vCPU), {i['ovs']}, kernel datapath; PV guests",
        "made by `xl create` (busybox initramfs, netfront/netback). The VM runs in QEMU with software emulation",
        "(this machine cannot give Xen hardware virtualisation), so every time here is many times a real",
        "host's; xvif-ovs (its hook, the controller's pipeline on xenbr0) and Xen's vif-openvswitch (NORMAL on",
        "xenbr1, no controller) ran in the same VM, alternating (ABBA). The whole command took "
        f"{r['vm_run_s'] / 60:.0f} min (the dom0 image, the wheels, booting and the measures).",
        "",
        "| idle guests per bridge | measure | xvif-ovs (s) min/median/max | vif-openvswitch (s) min/median/max | "
        "xvif-ovs / vif-openvswitch (medians; below 1: xvif-ovs faster) |",
        "|---:|---|---|---|---:|",
    ]
    names = {
        "xl_create_s": "`xl create` returns",
        "connected_s": "hotplug-status connected",
        "first_frame_s": "guest's first frame at a peer",
    }
    for row in r.get("create", []):
        for key, label in names.items():
            x, v = row["xvif-ovs"][key], row["vif-openvswitch"][key]
            out.append(
                f"| {row['other_guests']} | {label} | {mmm(x, 1, '.2f')} | {mmm(v, 1, '.2f')} | "
                f"{x['median'] / v['median']:.2f} |"
            )
    if t := r.get("throughput"):
        x, v = t["xvif-ovs"], t["vif-openvswitch"]
        out += [
            "",
            f"Guest-to-guest throughput through netback (busybox httpd -> wget of {t['megabytes']} MiB, Mbit/s):",
            "",
            "| pipeline (xvif-ovs) min/median/max | NORMAL (vif-openvswitch) min/median/max | "
            "pipeline / NORMAL (medians; above 1: the pipeline faster) |",
            "|---|---|---:|",
            f"| {mmm(x, 1, '.0f')} | {mmm(v, 1, '.0f')} | {x['median'] / v['median']:.2f} |",
        ]
    if m := r.get("migration"):
        x, v = m["xvif-ovs"], m["vif-openvswitch"]
        out += [
            "",
            "A guest moved to a new domain of the same VM in `xl migrate`'s order (`xl save -c` for the copy,",
            "`xl restore -p` of it as NAME--incoming with the same UUID while the original runs; then the original",
            "paused and renamed NAME--migratedaway, the copy renamed and unpaused, the original destroyed: `xl migrate`",
            "of a PV guest cannot run on Debian's Xen, built without shadow paging), while another guest pings it",
            "every 100 ms: the silence between the original's last reply and the new domain's first, and the",
            "whole move's time (save, restore, switch):",
            "",
            "| measure | xvif-ovs (s) min/median/max | vif-openvswitch (s) min/median/max | "
            "xvif-ovs / vif-openvswitch (medians; below 1: xvif-ovs faster) |",
            "|---|---|---|---:|",
        ]
        for key, label in (("gap_s", "replies stopped"), ("switch_s", "save, restore and switch took")):
            out.append(
                f"| {label} | {mmm(x[key], 1, '.2f')} | {mmm(v[key], 1, '.2f')} | "
                f"{x[key]['median'] / v[key]['median']:.2f} |"
            )
    return out + [""]


def _plots() -> list:
    try:
        import plots
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'): BENCHMARKS.md gets no plots", file=sys.stderr)
        return []
    out = []
    if hp := load("hotplug"):
        out.append(plots.hotplug(hp, load("firstpacket")))
    if sc := load("scale"):
        out.append(plots.scale(sc))
    return out


def metrics(d: dict) -> list[str]:
    out = ["## Metrics: what a Prometheus scrape costs the switch", ""] + header(d)
    out += [
        "The controller's /metrics with N vifs on a dummy-datapath bridge. A quiet scrape (nothing",
        "dropped since the last) against one aggregate request (`ovs-ofctl dump-aggregate` of our",
        "cookie) in the same run, by ovs-vswitchd's CPU time (utime+stime, /proc; 10 ms ticks) and",
        "wall time; then a scrape right after a guest was caught spoofing (its drop counters moved,",
        "so they are dumped once), and that dump alone (`ovs-ofctl dump-flows` of the drop flows).",
        "",
        "| vifs | quiet scrape ms | requests | vswitchd CPU ms (scrape) | vswitchd CPU ms (1 aggregate) "
        "| after a drop ms | vswitchd CPU ms (after a drop) | drop dump ms | series | bytes |",
        "|---:|---|---:|---|---|---|---|---|---:|---:|",
    ]
    for r in d["results"]:
        q, a, m, dd = r["quiet_scrape"], r["one_aggregate_request"], r["scrape_after_drop"], r["drop_flow_dump"]
        out.append(
            f"| {r['vifs']} | {mmm(q['wall'], 1000)} | {q['requests']['median']:.0f} | {mmm(q['cpu'], 1000)} | "
            f"{mmm(a['cpu'], 1000)} | {mmm(m['wall'], 1000)} | {mmm(m['cpu'], 1000)} | {mmm(dd['wall'], 1000)} | "
            f"{q['series']['median']:.0f} | {q['bytes']['median']:.0f} |"
        )
    out += [
        "",
        "A quiet scrape asks each bridge four things at once: every port's counters, every table's flow",
        "count, the sum of our flows and of the drop flows (six with firewall rules: two more sums); the",
        "per-flow counters are dumped only when a sum moved, at most every 10 s. Ratio of vswitchd CPU, quiet",
        "scrape to one aggregate request (medians): "
        + ", ".join(
            f"{r['vifs']} vifs {r['quiet_cpu_in_aggregates']:.1f}x"
            if r["quiet_cpu_in_aggregates"]
            else f"{r['vifs']} vifs n/a"
            for r in d["results"]
        )
        + ". A scrape after a drop also dumps the drop flows (at most every 10 s, shared with the",
        "controller's drop reports): at 4000 vifs that costs ovs-vswitchd about three aggregates' CPU.",
        "",
    ]
    return out


def main() -> int:
    intro = (ROOT / "bench" / "INTRO.md").read_text()
    parts = [intro]
    for name, fn in (
        ("hotplug", hotplug),
        ("firstpacket", firstpacket),
        ("scale", scale),
        ("dataplane", dataplane),
        ("models", models),
        ("firewall", firewall),
        ("metrics", metrics),
        ("drills", drills),
        ("adversarial", adversarial),
        ("soak", soak),
        ("realxen", realxen),
    ):
        d = load(name)
        if d:
            parts.append("\n".join(fn(d)))
    parts.append((ROOT / "bench" / "DISCUSSION.md").read_text())
    pngs = _plots()
    if pngs:  # after the title and intro, before the first table
        parts.insert(1, "\n".join(f"![{p.stem}]({p.relative_to(ROOT)})" for p in pngs) + "\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts).rstrip() + "\n")
    print("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
