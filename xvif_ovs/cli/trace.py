"""`xvif-ovs trace`: what the pipeline does to a packet from a vif, table by table,
and the verdict in plain words. ofproto/trace (ovs-vswitchd's own tracer, over its
unixctl socket) does the work; we build its flow from vif names and read its answer.

JSON shape (`--json`), stable:
  {"bridge", "flow", "verdict", "outputs": [{"port", "vlan"}],
   "tables": [{"table", "priority", "cookie", "purpose", "owner"}], "trace"}
"""

from __future__ import annotations

import ipaddress
import json
import re

from ..inspect.hoststate import HostView, PortView, VifView, read_host
from ..inspect.vswitchd import appctl
from ..model.vifspec import is_mac
from ..pipeline.build import (
    P_ARP_REPLY,
    P_DEFAULT,
    P_DROP,
    P_FORWARD,
    P_REFUSED,
    P_ROUTE,
    P_UNMANAGED,
    PURPOSES,
    drop_kind,
    link_local,
)
from ..pipeline.firewall import P_FW_DEFAULT, P_RULE, rule_index
from ..pipeline.flow import decode_cookie
from ..pipeline.tables import FORWARD, FW_IN_CT, FW_OUT, FW_OUT_CT, ROUTED
from .show import NotFound

PROTOS = ("arp", "icmp", "tcp", "udp", "dhcp", "nd")
NO_IP_SOURCE = "198.18.0.1"  # used as the source when the vif has no ip= (any source is allowed then)


def find_port(host: HostView, dev: str) -> tuple[VifView | None, PortView]:
    for v in host.vifs.values():
        for p in v.ports:
            if p.name == dev:
                return v, p
    for b in host.bridges.values():
        for p in b.ports:
            if p.name == dev:
                return None, p
    names = sorted(p.name for b in host.bridges.values() for p in b.ports)
    raise NotFound(f"no port named {dev} on any bridge (ports: {', '.join(names) or 'none'})")


def resolve_to(host: HostView, to: str) -> tuple[str, str | None]:
    """(destination MAC, destination IP or None) for --to MAC|IP|DEV."""
    if is_mac(to):
        return to.lower(), None
    try:
        ip = ipaddress.ip_address(to)
    except ValueError:
        v, p = find_port(host, to)
        if v is None:
            raise NotFound(f"{to} is a port but not a guest's vif: give --to a MAC or IP") from None
        v4 = [a.split("/")[0] for a in v.keys.get("ip", "").split() if ":" not in a]
        return v.mac, (v4[0] if v4 else None)  # its address, as a packet for it would carry
    for v in host.vifs.values():
        if str(ip) in v.keys.get("ip", "").split():
            return v.mac, str(ip)
    return "ff:ff:ff:ff:ff:ff", str(ip)  # someone behind the uplink: ARP for it would be broadcast


def build_flow(v: VifView | None, port: PortView, to: str, host: HostView, args, router_mac: str = "") -> str:  # noqa: ANN001
    """``router_mac``: the bridge is routed, and IP goes to dom0's MAC (as a routed guest's
    and the LAN's ARP for any routed address says)."""
    from ..errors import VifSpecError

    raw_mac = args.src_mac or (v.mac if v else "") or "00:00:5e:00:53:01"
    if not is_mac(raw_mac):
        raise VifSpecError(f"source MAC {raw_mac!r} is not six colon-separated hex octets (give --src-mac)")
    src_mac = raw_mac.lower()
    dst_mac, dst_ip = resolve_to(host, to)
    if router_mac and (args.proto or "icmp") in ("icmp", "tcp", "udp"):
        dst_mac = router_mac
    ips = v.keys.get("ip", "").split() if v else []
    v4 = [i for i in ips if ":" not in i]
    v6 = [i for i in ips if ":" in i]
    parts = [f"in_port={port.name}", f"dl_src={src_mac}"]
    if args.vlan is not None:
        parts.append(f"dl_vlan={args.vlan}")
    proto = args.proto or "icmp"
    if proto == "dhcp":
        parts += [
            "dl_dst=ff:ff:ff:ff:ff:ff",
            "udp",
            "nw_src=0.0.0.0",
            "nw_dst=255.255.255.255",
            "udp_src=68",
            "udp_dst=67",
        ]
    elif proto == "nd":
        src6 = args.src_ip or (v6[0] if v6 else str(link_local(src_mac)))
        target = dst_ip if dst_ip and ":" in dst_ip else "fe80::1"
        parts += ["dl_dst=33:33:ff:00:00:01", "icmp6", f"ipv6_src={src6}", "ipv6_dst=ff02::1:ff00:1"]
        parts += ["icmp_type=135", "icmp_code=0", f"nd_target={target}", f"nd_sll={src_mac}"]
    elif proto == "arp":
        src = args.src_ip or (v4[0] if v4 else NO_IP_SOURCE)
        parts += [
            f"dl_dst={'ff:ff:ff:ff:ff:ff' if dst_ip else dst_mac}",
            "arp",
            "arp_op=1",
            f"arp_sha={src_mac}",
            f"arp_spa={src}",
        ]
        parts.append(f"arp_tpa={dst_ip or '192.0.2.1'}")
    else:
        src = args.src_ip or (v4[0] if v4 else NO_IP_SOURCE)
        dst = dst_ip or "192.0.2.1"
        six = ":" in src or ":" in dst
        parts += [
            f"dl_dst={dst_mac}",
            (proto if proto != "icmp" else "icmp") + ("6" if six and proto == "icmp" else ""),
        ]
        if six and proto in ("tcp", "udp"):
            parts[-1] = f"{proto}6"
        parts += [f"ipv6_src={src}", f"ipv6_dst={dst}"] if six else [f"nw_src={src}", f"nw_dst={dst}"]
        parts.append("nw_ttl=64")  # as a host sends it (a routed hop decrements it; 0 would be dropped)
        port = getattr(args, "port", None)
        if proto == "tcp":
            # A new connection opens with a SYN (the firewall lets nothing else open one).
            flags = "ack" if getattr(args, "established", False) else "syn"
            parts += [f"tcp_dst={port or 80}", "tcp_src=40000", f"tcp_flags={flags}"]
        elif proto == "udp":
            parts += [f"udp_dst={port or 53}", "udp_src=40000"]
        elif proto == "icmp":
            parts.append("icmp_type=128" if six else "icmp_type=8")  # an echo request: ping
    # ofproto/trace parses an exact flow field by field: the protocol must come first.
    keywords = {"udp", "tcp", "icmp", "icmp6", "arp", "udp6", "tcp6"}
    return ",".join([p for p in parts if p in keywords] + [p for p in parts if p not in keywords])


def odp_names(bridge: str) -> dict[str, str]:
    """Datapath port number -> port name, from dpif/show."""
    out = {}
    for line in appctl("dpif/show").splitlines():
        m = re.match(r"^\s+(\S+) (\d+|LOCAL)/(\d+)", line)
        if m:
            out[m.group(3)] = m.group(1)
    return out


def top_level(actions: str) -> list[str]:
    """Datapath actions split at the commas outside parentheses: "set(eth(src=..,dst=..)),3"
    is a rewrite and an output, and the MAC's octets are no ports."""
    out, depth, cur = [], 0, ""
    for ch in actions:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += (ch == "(") - (ch == ")")
        cur += ch
    return [a for a in [*out, cur.strip()] if a]


def interpret(trace: str, bridge: str, host: HostView, v: VifView | None, src_mac: str) -> dict:
    tables = []
    for m in re.finditer(r"^\s*(\d+)\. .*?priority (\d+), cookie (0x[0-9a-f]+)", trace, re.M):
        table, prio, ck = int(m.group(1)), int(m.group(2)), int(m.group(3), 16)
        d = decode_cookie(ck)
        owner = None
        if d and d[1] is not None:
            ov = host.vifs.get((d[1], d[2]))
            owner = ov.dev if ov else f"vif{d[1]}.{d[2]}"
        tables.append(
            {
                "table": table,
                "priority": prio,
                "cookie": f"{ck:#x}",
                "purpose": PURPOSES.get(d[0]) if d else None,
                "owner": owner,
                "rule": rule_index(ck) if d and d[0] == P_RULE else None,
            }
        )
    # After a ct(table=N) the trace goes on in further parts (recirculations), one per
    # conntrack pass: the packet's outputs are those of every part.
    names = odp_names(bridge)
    outputs = []
    for actions in re.findall(r"^Datapath actions: (.*)$", trace, re.M) or ["drop"]:
        vlan = None
        for action in top_level(actions.strip()):
            pushed = re.match(r"push_vlan\(vid=(\d+)", action)
            if pushed:
                vlan = int(pushed.group(1))
            elif action == "pop_vlan":
                vlan = None
            elif action.isdigit():  # an output; set(...), dec_ttl, ct(...) and the like are not
                outputs.append({"port": names.get(action, f"odp:{action}"), "vlan": vlan})
    nat = "nat(src=" in trace or "nat(dst=" in trace
    return {"tables": tables, "outputs": outputs, "verdict": verdict(tables, outputs, v, src_mac, nat)}


def verdict(tables: list[dict], outputs: list[dict], v: VifView | None, src_mac: str, nat: bool = False) -> str:
    def where(o: dict) -> str:
        return o["port"] + (f" tagged VLAN {o['vlan']}" if o["vlan"] else "")

    purposes = {t["purpose"] for t in tables}
    if PURPOSES[P_ARP_REPLY] in purposes and outputs:
        return f"answered by the bridge: an ARP reply back out of {where(outputs[0])} (routed bridge)"
    if PURPOSES[P_ROUTE] in purposes and len(outputs) == 1 and nat:
        how = "NAT: the source becomes dom0's address, through conntrack"
        if any(t["table"] == ROUTED and t["priority"] == 100 for t in tables):
            return f"routed to {where(outputs[0])} (dom0), {how}; dom0 routes it this once (next hop not learned yet)"
        return f"routed to {where(outputs[0])} ({how}; MACs rewritten, TTL decremented)"
    if PURPOSES[P_ROUTE] in purposes and len(outputs) == 1:
        if any(t["table"] == ROUTED and t["priority"] == 100 for t in tables):
            return (
                f"routed to {where(outputs[0])} (dom0): the next hop is not in the neighbour table yet; "
                "dom0 routes it, and its ARP for the next hop teaches the bridge"
            )
        return f"routed to {where(outputs[0])} (MACs rewritten, TTL decremented)"
    if len(outputs) == 1:
        return f"forwarded to {where(outputs[0])}"
    if outputs:
        return f"flooded to {len(outputs)} ports: " + ", ".join(where(o) for o in outputs)
    last = tables[-1] if tables else None
    d = decode_cookie(int(last["cookie"], 16)) if last else None
    if d is None:
        return "dropped: no flow matched"
    purpose, t, prio = d[0], last["table"], last["priority"]
    if purpose == P_DROP and t == 0:
        return "dropped: this port may not send a frame with that VLAN tag (or without one)"
    if purpose == P_DROP and prio == 300:
        return "dropped: DHCP server replies and router advertisements are allowed from trusted vifs only"
    if purpose == P_DROP and prio == 240:
        return "dropped: neighbour discovery for an address or link-layer address that is not this vif's"
    if purpose == P_DROP and t == FORWARD and prio == 115:
        return "dropped: ARP for the guest's own address (nobody else has it; routed bridge)"
    if purpose == P_DROP and t == FORWARD and prio == 55:
        return "dropped: a routed guest's frames are only routed (IPv4 to dom0's MAC, ARP), never switched"
    if purpose == P_DROP:
        if v and src_mac != v.mac:
            return f"dropped: source MAC {src_mac} is not this vif's ({v.mac})"
        what = {
            "arp": " (ARP: sender address)",
            "ipv4": " (IPv4)",
            "ipv6": " (IPv6)",
            "other": ": no ethertype but ARP, IPv4 and IPv6 is allowed from a guest",
        }.get(drop_kind(int(last["cookie"], 16)), "")
        if what.startswith(":"):
            return f"dropped{what}"
        return f"dropped: source address is not this vif's{what} (port security)"
    if purpose == P_REFUSED:
        return "dropped: the bridge is reserved for other domains"
    if purpose == P_UNMANAGED:
        return "dropped: the port is neither a vif nor a declared uplink (see `xvif-ovs doctor`)"
    if purpose == P_FORWARD and prio == 90 or purpose == P_DROP and t == FORWARD and prio == 119:
        return "dropped: private mode (guests do not reach each other)"
    if purpose == P_DEFAULT:
        return f"dropped: no rule for this port and VLAN (table {t} miss)"
    return f"dropped in table {t}"


def firewall_words(tables: list[dict], outputs: list[dict], named: dict[str, tuple]) -> str | None:
    """What the firewall decided, in words: the rule (as written, with its FILE:LINE) or
    the default that did. ``named``: each firewalled owner's rules in order."""

    def rule(t: dict) -> str:
        mine = named.get(t["owner"], ())
        i = t["rule"]
        what = (
            f"{mine[i].describe()} ({mine[i].where})" if i is not None and i < len(mine) else "(not in the files now)"
        )
        return f"rule {i} of {t['owner']}: {what}"

    fw = [t for t in tables if FW_OUT <= t["table"] <= FW_IN_CT]
    if not fw:
        return None
    decided = [t for t in fw if t["table"] in (FW_OUT_CT, FW_IN_CT) or t["rule"] is not None]
    if not outputs:
        last = tables[-1]
        if last["table"] < FW_OUT:
            return None
        if last["rule"] is not None:
            mine, i = named.get(last["owner"], ()), last["rule"]
            if i < len(mine) and mine[i].action == "reject":
                return f"rejected by firewall {rule(last)}: the controller answers with a TCP reset or ICMP unreachable"
            return f"dropped by firewall {rule(last)}"
        if last["purpose"] == PURPOSES[P_FW_DEFAULT]:
            return f"dropped by the firewall: {last['owner']}'s network is closed to connections no rule allows"
        if last["priority"] == 30000:
            return "dropped by the firewall: invalid for conntrack, or a TCP segment without SYN opening a connection"
        return None
    words = []
    for t in decided:
        if t["rule"] is not None:
            words.append(f"allowed by firewall {rule(t)}")
        elif t["priority"] == 30000:
            words.append(f"related to a connection of {t['owner']} (conntrack)")
        elif t["priority"] == 10:
            words.append(f"no rule of {t['owner']} decides it: the default allows it")
    return "; ".join(words) or None


def run(args) -> tuple[str, int]:  # noqa: ANN001
    from ..controller.config import load_installed

    cfg = load_installed()
    host = read_host(args.db, args.xenstore, cfg.declared_uplinks)
    v, port = find_port(host, args.src)
    routed = cfg.mode(port.bridge) in ("routed", "nat") and port.bridge in host.bridges
    flow = build_flow(v, port, args.to, host, args, host.bridges[port.bridge].local_mac if routed else "")
    state = "trk,est" if args.established else "trk,new"
    trace = appctl("ofproto/trace", port.bridge, flow, *[a for _ in range(3) for a in ("--ct-next", state)])
    src_mac = (args.src_mac or (v.mac if v else "")).lower()
    result = {"bridge": port.bridge, "flow": flow, **interpret(trace, port.bridge, host, v, src_mac), "trace": trace}
    named = _firewalled(host, cfg, {t["owner"] for t in result["tables"] if t["table"] >= FW_OUT and t["owner"]})
    words = firewall_words(result["tables"], result["outputs"], named)
    if words and not result["outputs"]:
        result["verdict"] = words
    elif words:
        result["verdict"] += f" ({'established connection; ' if args.established else ''}{words})"
    if args.json:
        return json.dumps(result, indent=2) + "\n", 0
    lines = [f"{port.bridge}: {flow}"]
    for t in result["tables"]:
        owner = f" [{t['owner']}]" if t["owner"] else ""
        lines.append(f"  table {t['table']:<2} priority {t['priority']:<4} {t['purpose'] or 'not ours'}{owner}")
    lines.append(f"verdict: {result['verdict']}")
    if args.verbose:
        lines += ["", trace]
    return "\n".join(lines) + "\n", 0


def _firewalled(host: HostView, cfg, owners: set[str]) -> dict[str, tuple]:  # noqa: ANN001
    """The rules of each firewalled vif the trace passed, by its device name."""
    from .flows import installed_rules
    from .rules import rules_of_vif

    rs = installed_rules(cfg)
    out = {}
    for v in host.vifs.values():
        if v.dev in owners:
            bridge = next((p.bridge for p in v.ports), "")
            out[v.dev] = rules_of_vif(v, rs, bridge)[0]
    return out
