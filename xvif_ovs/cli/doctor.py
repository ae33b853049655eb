"""`xvif-ovs doctor`: every check, each problem with its fix; exit 0 only when healthy.

JSON shape (`--json`), stable:
  {"healthy": bool, "checks": [str], "problems": [{"check", "message", "fix"}]}
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..controller.config import NatPolicy
from ..errors import VifSpecError, XvifError
from ..inspect.hoststate import BridgeView, HostView, read_host
from ..inspect.openflow import OpenFlowUnavailable
from ..model.host import migrating
from ..model.ports import unmanaged_problem
from ..model.vifspec import parse_bridge, parse_mac
from .flows import controller_config, drift, drops

NETFILTER = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
IPV4_CONF = Path("/proc/sys/net/ipv4/conf")
IPV6_CONF = Path("/proc/sys/net/ipv6/conf")
SYSFS_NET = Path("/sys/class/net")


def linux_bridges() -> list[str]:
    """Linux bridges still on the host (netfilter on bridges only concerns those)."""
    return sorted(p.name for p in SYSFS_NET.glob("*/bridge") for p in [p.parent])


@dataclass
class Problem:
    check: str
    message: str
    fix: str


def xl_conf() -> Path:
    return Path(os.environ.get("XVIF_XL_CONF", "/etc/xen/xl.conf"))


def check_host(host: HostView, config_path: str | None, interval: float) -> tuple[list[str], list[Problem]]:
    checks: list[str] = []
    problems: list[Problem] = []

    def check(name: str) -> None:
        checks.append(name)

    check("vifs on no bridge")
    for v in sorted(host.vifs.values(), key=lambda v: (v.domid, v.devid)):
        if not v.ports:
            problems.append(
                Problem(
                    "vifs on no bridge",
                    f"{v.dev} (domain {v.domain or '?'}, domid {v.domid}) is in XenStore but on no bridge"
                    + (f"; hotplug-error: {v.keys['hotplug-error']}" if v.keys.get("hotplug-error") else ""),
                    f"fix the cause, then: vif={v.dev} XENBUS_PATH=backend/vif/{v.domid}/{v.devid} "
                    "/etc/xen/scripts/vif-xvif-ovs online type_if=vif",
                )
            )
    check("ports no vif owns")
    for p in host.stray_ports:
        problems.append(
            Problem(
                "ports no vif owns",
                f"port {p.name} on {p.bridge} belongs to no vif in XenStore (domid {p.domid} is gone?)",
                f"ovs-vsctl del-port {p.bridge} {p.name}",
            )
        )
    cfg = controller_config(config_path)
    check("named bridges")
    for name in cfg.bridges:
        bv = host.bridges.get(name)
        if bv is None:
            problems.append(
                Problem(
                    "named bridges",
                    f"bridge {name} is named in the controller's config but does not exist",
                    f"ovs-vsctl add-br {name}, or remove it from [controller] bridges",
                )
            )
            continue
        foreign = [c["target"] for c in bv.controllers if not c.get("ours") and c["target"] != cfg.target()]
        if foreign:
            problems.append(
                Problem(
                    "named bridges",
                    f"bridge {name} is named in the controller's config but has another controller "
                    f"({', '.join(foreign)}): the controller refuses to take it over",
                    f"remove {name} from [controller] bridges, or `ovs-vsctl del-controller {name}` if that "
                    "controller is no longer used",
                )
            )
    check("unmanaged ports")
    for b in sorted(host.bridges.values(), key=lambda b: b.name):
        if not cfg.managed(b.name):
            continue  # not ours: its ports are someone else's business
        for p in b.unmanaged:
            problems.append(Problem("unmanaged ports", *unmanaged_problem(p.port or p.name, b.name)))
    check("invalid MACs")
    check("MAC conflicts")
    seen: dict[tuple[str, str], tuple[str, tuple[str, int], str]] = {}  # -> (device, (VM uuid, devid), domain)
    for v in sorted(host.vifs.values(), key=lambda v: (v.domid, v.devid)):
        try:
            mac = parse_mac(v.mac)
        except VifSpecError as e:
            problems.append(
                Problem(
                    "invalid MACs",
                    f"{v.dev} (domain {v.domain or '?'}): {e}",
                    "set mac= in the vif spec to a unicast MAC in 00:16:3e",
                )
            )
            continue
        try:
            bridge = parse_bridge(v.keys.get("bridge") or "xenbr0").name
        except VifSpecError:
            bridge = v.keys.get("bridge", "?")
        other = seen.get((bridge, mac))
        # One VM's NIC under two domids, one of them named as libxl names a migration's
        # domains (a migration or restore in progress), is no conflict.
        nic = (next((p.vm_uuid for p in v.ports if p.vm_uuid), ""), v.devid)
        twins = (
            bool(nic[0])
            and other is not None
            and other[1] == nic
            and (migrating(other[2]) or migrating(v.domain or ""))
        )
        if other and not twins:
            problems.append(
                Problem(
                    "MAC conflicts",
                    f"{v.dev} and {other[0]} both use {mac} on {bridge}",
                    "give one of them another mac= (xvif-ovs mac new)",
                )
            )
        seen[(bridge, mac)] = (v.dev, nic, v.domain or "")
    check("missing ofports")
    for b in host.bridges.values():
        for p in b.ports:
            if p.ofport is None and p.kind != "local":
                problems.append(
                    Problem(
                        "missing ofports",
                        f"{p.name} on {b.name} has no OpenFlow port: ovs-vswitchd could not open it",
                        f"ovs-vsctl get interface {p.name} error; check the device exists (ip link show {p.name})",
                    )
                )
    check("hotplug status")
    for v in host.vifs.values():
        status = v.keys.get("hotplug-status")
        if status not in (None, "connected"):
            problems.append(
                Problem(
                    "hotplug status",
                    f"{v.dev} (domain {v.domain or '?'}): hotplug-status is {status!r}"
                    + (f": {v.keys['hotplug-error']}" if v.keys.get("hotplug-error") else ""),
                    "fix what hotplug-error says, then re-run the hook (or xl network-detach/attach)",
                )
            )
    check("controller connected")
    for b in host.bridges.values():
        has_vifs = any(p.kind in ("vif", "emu") for p in b.ports)
        if has_vifs and not b.connected:
            problems.append(
                Problem(
                    "controller connected",
                    f"bridge {b.name} has guests but no connected controller (flows cannot follow changes)",
                    "systemctl start xvif-ovs-controller (or: xvif-ovs controller)",
                )
            )
    check("netfilter on bridges")
    try:
        bridges = linux_bridges()
        if bridges and NETFILTER.read_text().strip() == "1":
            problems.append(
                Problem(
                    "netfilter on bridges",
                    f"bridge-nf-call-iptables is on and Linux bridges remain ({', '.join(bridges)}): iptables sees "
                    "every bridged frame, which slows them and confuses firewalls",
                    "sysctl -w net.bridge.bridge-nf-call-iptables=0 (and in /etc/sysctl.d)",
                )
            )
    except OSError:
        pass  # br_netfilter not loaded: nothing to check
    check("userspace TSO")
    if (
        any(b.datapath_type == "netdev" for b in host.bridges.values())
        and host.ovs_other_config.get("userspace-tso-enable") != "true"
    ):
        problems.append(
            Problem(
                "userspace TSO",
                "bridges use the userspace datapath without userspace TSO: guests' TCP is slow or breaks on bad checksums",
                "ovs-vsctl set Open_vSwitch . other_config:userspace-tso-enable=true, then restart ovs-vswitchd",
            )
        )
    check("vif-openvswitch configured")
    try:
        conf = xl_conf().read_text()
        if "vif-openvswitch" in conf.replace(" ", ""):
            problems.append(
                Problem(
                    "vif-openvswitch configured",
                    f"{xl_conf()} still names vif-openvswitch (no working anti-spoofing, trunks ignored with a tag)",
                    'set vif.default.script="vif-xvif-ovs" in xl.conf',
                )
            )
    except OSError:
        pass
    users = sorted(v.dev for v in host.vifs.values() if v.keys.get("script", "").endswith("vif-openvswitch"))
    if users:
        problems.append(
            Problem(
                "vif-openvswitch configured",
                f"vifs hotplugged by vif-openvswitch: {', '.join(users)}",
                "use script=vif-xvif-ovs in their vif specs (or vif.default.script in xl.conf)",
            )
        )
    check("routed bridges")
    try:
        cfg = controller_config(config_path)
    except XvifError:
        cfg = None  # a broken config is reported by the drift check below
    for b in sorted(host.bridges.values(), key=lambda b: b.name):
        mode = cfg.mode(b.name) if cfg else "bridged"
        if mode in ("routed", "nat"):
            problems += routed_problems(host, b, cfg.bridge_policy[b.name].nat if mode == "nat" and cfg else None)
    check("firewall rules")
    problems += firewall_problems(host, controller_config(config_path).rules_dir)
    check("flows drifted")
    connected = sorted(b.name for b in host.bridges.values() if b.connected)
    try:
        d = drift(host, connected, controller_config(config_path))
        for b in d["bridges"]:
            n = len(b["missing"]) + len(b["extra"]) + len(b["changed"])
            if n:
                problems.append(
                    Problem(
                        "flows drifted",
                        f"{b['name']}: {n} flows differ from what the controller would install (xvif-ovs flows --diff)",
                        "systemctl restart xvif-ovs-controller (it reapplies exactly the difference)",
                    )
                )
    except OpenFlowUnavailable as e:
        problems.append(Problem("flows drifted", str(e), "check that ovs-vswitchd runs (OVS_RUNDIR)"))
    check("port-security drops rising")
    if connected and interval > 0:
        try:
            first = {(r["bridge"], r["device"]): r["dropped_packets"] for r in drops(host, connected, None)["vifs"]}
            time.sleep(interval)
            for r in drops(host, connected, None)["vifs"]:
                before = first.get((r["bridge"], r["device"]), 0)
                if r["dropped_packets"] > before:
                    problems.append(
                        Problem(
                            "port-security drops rising",
                            f"{r['device']} (domain {r['domain'] or '?'}) sent {r['dropped_packets'] - before} forbidden frame(s) in {interval:.0f} s",
                            f"look at the guest: spoofing, or an ip= that misses an address it uses (xvif-ovs flows --drops --vif {r['device']})",
                        )
                    )
        except OpenFlowUnavailable:
            pass  # reported above
    return checks, problems


def firewall_problems(host: HostView, rules_dir: str) -> list[Problem]:
    """Rule files the controller would refuse, and rules for a guest that is not here
    (they wait for it: a typo in a name is a rule that never applies)."""
    from ..firewall.rules import RuleError, load_dir
    from ..firewall.select import applies

    try:
        rs = load_dir(rules_dir)
    except RuleError as e:
        return [
            Problem(
                "firewall rules",
                f"{e} (the controller keeps the rules it had, or does not start)",
                "fix the file; `xvif-ovs rules check` says when it is right",
            )
        ]
    nics = [(v, next((p.vm_uuid for p in v.ports if p.vm_uuid), "")) for v in host.vifs.values()]
    out = []
    for r in rs.rules:
        # (a guest or vif rule does not depend on the bridge or VLAN: those are left out)
        missing = r.scope in ("guest", "vif") and not any(
            applies(r, v.domain, uuid, v.domid, v.devid, "", ()) for v, uuid in nics
        )
        if missing:
            out.append(
                Problem(
                    "firewall rules",
                    f"{r.where}: no {r.scope} {r.target!r} on this host: the rule waits for it",
                    "check the name (xvif-ovs show lists the guests), or remove the rule if that guest is gone",
                )
            )
    return out


def nat_problems(b: BridgeView, nat: NatPolicy) -> list[Problem]:
    """A NAT bridge's extra needs: dom0's address to translate to, on the bridge; its own
    address as a source accepted there (a translated packet dom0 routes once); the
    guests' gateway address; Linux's own source ports outside the translated range."""
    out, name = [], "routed bridges"
    addrs = dom0_ipv4(b.name)
    if nat.address not in addrs:
        out.append(
            Problem(
                name,
                f"NAT bridge {b.name} translates to {nat.address}, which dom0 does not have on {b.name}: replies "
                "to the guests' connections go to nobody",
                f"ip addr add {nat.address}/PREFIX dev {b.name} (dom0's LAN address moves to the bridge, as with vif-nat)",
            )
        )
    if nat.gateway not in addrs:
        out.append(
            Problem(
                name,
                f"NAT bridge {b.name}: dom0 does not have the guests' gateway {nat.gateway} on it (their DNS and "
                "anything else they send to their gateway goes nowhere)",
                f"ip addr add {nat.gateway}/{nat.subnet.split('/')[1]} dev {b.name}",
            )
        )
    out += dhcp_and_zone_problems(b, nat)
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    nlo, nhi = nat.ports
    if hi >= nlo and lo <= nhi:
        out.append(
            Problem(
                name,
                f"dom0's own source ports ({lo}-{hi}) overlap the ports NAT gives guests' connections on {b.name} "
                f"({nlo}-{nhi}): a connection of dom0's and a guest's could collide",
                f"sysctl -w net.ipv4.ip_local_port_range='{lo} {nlo - 1}' (or another ports = in [bridges.{b.name}])",
            )
        )
    return out


def dhcp_and_zone_problems(b: BridgeView, nat: NatPolicy) -> list[Problem]:
    """The NAT bridge's DHCP server runs; its conntrack zone holds only its own connections
    (a guest's, from the subnet; dom0's own, from its address; a forwarded one, to it)."""
    from ..controller.config import Config
    from ..controller.dhcp import DhcpServers
    from ..inspect.vswitchd import VswitchdError as TraceError
    from ..inspect.vswitchd import appctl

    out, name = [], "routed bridges"
    if DhcpServers(Config.rundir()).pid(b.name) is None:
        out.append(
            Problem(
                name,
                f"NAT bridge {b.name}: no DHCP server runs for it (its guests without ip= get no address)",
                "look for 'dnsmasq' in the controller's log; apt-get install dnsmasq-base; systemctl restart xvif-ovs-controller",
            )
        )
    try:
        dump = appctl("dpctl/dump-conntrack", f"zone={nat.zone}")
    except TraceError:
        return out  # ovs-vswitchd unreachable: the drift check says so
    subnet = ipaddress.ip_network(nat.subnet)
    strangers = 0
    for line in dump.splitlines():
        m = re.search(r"orig=\(src=([^,]+),dst=([^,]+),", line)
        if not m:
            continue
        try:
            src, dst = ipaddress.ip_address(m.group(1)), ipaddress.ip_address(m.group(2))
        except ValueError:
            strangers += 1
            continue
        if not (src in subnet or nat.address in (str(src), str(dst))):  # a guest's, dom0's, a forward
            strangers += 1
    if strangers:
        out.append(
            Problem(
                name,
                f"NAT bridge {b.name}: conntrack zone {nat.zone} holds {strangers} connection(s) that are not its "
                "guests': another application uses the zone, and their connections and the guests' can mix",
                f"give [bridges.{b.name}] a zone = nothing else uses (ovs-appctl dpctl/dump-conntrack shows them)",
            )
        )
    return out


def dom0_ipv4(interface: str) -> list[str]:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", interface], capture_output=True, text=True)
    if out.returncode != 0:
        return []
    return [a["local"] for link in json.loads(out.stdout or "[]") for a in link.get("addr_info", [])]


def routed_problems(host: HostView, b: BridgeView, nat: NatPolicy | None = None) -> list[Problem]:
    """What a routed or NAT bridge needs from dom0 (vif-route's and vif-nat's scripts set
    the same up: an address, forwarding) and from each guest (an address, no VLAN)."""
    out = []
    name = "routed bridges"
    if nat is not None:
        out += nat_problems(b, nat)
    if not b.local_mac:
        out.append(
            Problem(
                name,
                f"{b.name}: OVS reports no MAC for its LOCAL port; nothing is routed",
                "ovs-vsctl list interface " + b.name,
            )
        )
    if not dom0_ipv4(b.name):
        out.append(
            Problem(
                name,
                f"{b.name} is routed but dom0 has no IPv4 address on it: a guest's packet to a next hop the bridge "
                "has not learned yet goes to dom0, which cannot route it",
                f"ip addr add ADDRESS/PREFIX dev {b.name} (an address on the LAN, as network-route gives dom0)",
            )
        )
    try:
        forwarding = (IPV4_CONF / b.name / "forwarding").read_text().strip() == "1"
    except OSError:
        forwarding = False
    if not forwarding:
        out.append(
            Problem(
                name,
                f"{b.name} is routed but dom0 does not forward on it: the first packet to an unlearned next hop is lost",
                f"sysctl -w net.ipv4.conf.{b.name}.forwarding=1 (and in /etc/sysctl.d)",
            )
        )
    on_it = [v for v in host.vifs.values() if any(p.bridge == b.name for p in v.ports)]
    v6 = [
        v.dev
        for v in on_it
        if any(":" in i and not i.lower().startswith("fe80:") for i in v.keys.get("ip", "").split())
    ]
    try:
        forwarding6 = (IPV6_CONF / "all" / "forwarding").read_text().strip() == "1"
    except OSError:
        forwarding6 = False
    if v6 and not forwarding6:
        out.append(
            Problem(
                name,
                f"{b.name} routes IPv6 for {', '.join(sorted(v6))} but dom0 does not forward IPv6: a guest's first "
                "packet to an IPv6 next hop the bridge has not learned is lost (until that host speaks)",
                "sysctl -w net.ipv6.conf.all.forwarding=1 (and in /etc/sysctl.d; dom0 then takes no router advertisements)",
            )
        )
    for v in sorted(on_it, key=lambda v: (v.domid, v.devid)):
        addrs = (v.keys.get("ip") or v.keys.get("xvif-nat-ip", "")).split()  # (a NAT guest's, from DHCP)
        if not [i for i in addrs if not i.lower().startswith("fe80:")]:
            out.append(
                Problem(
                    name,
                    f"{v.dev} (domain {v.domain or '?'}) is on {'NAT' if nat else 'routed'} bridge {b.name} with no "
                    "address: nothing is routed for it",
                    "give it ip= in its vif spec (xl network-detach, then network-attach)"
                    + (
                        "; on a NAT bridge the controller gives it one unless the subnet is full (see its log)"
                        if nat
                        else ""
                    ),
                )
            )
        elif "." in v.keys.get("bridge", "") or v.keys.get("vlan"):
            out.append(
                Problem(
                    name,
                    f"{v.dev} (domain {v.domain or '?'}) asks for a VLAN on routed bridge {b.name}: nothing is routed for it",
                    f"use bridge={b.name} (a routed network is untagged)",
                )
            )
    return out


def run(args) -> tuple[str, int]:  # noqa: ANN001
    host = read_host(args.db, args.xenstore, controller_config(args.config).declared_uplinks)
    checks, problems = check_host(host, args.config, args.interval)
    if args.json:
        data = {"healthy": not problems, "checks": checks, "problems": [asdict(p) for p in problems]}
        return json.dumps(data, indent=2) + "\n", 0 if not problems else 1
    if not problems:
        return f"healthy: {len(checks)} checks passed\n", 0
    lines = [f"{len(problems)} problem(s):"]
    for p in problems:
        lines += [f"  [{p.check}] {p.message}", f"      fix: {p.fix}"]
    return "\n".join(lines) + "\n", 1
