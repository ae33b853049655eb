"""`xvif-ovs controller` configuration: a TOML file, with command-line flags on top.

[controller]
listen = "unix"              # unix (OVS_RUNDIR/xvif-ovs.sock), tcp:[HOST:]PORT, ssl:[HOST:]PORT
allow_remote_listen = false  # needed for tcp: on an address other than loopback
bridges = ["xenbr0"]         # the bridges to manage: no other bridge is ever touched
learn_idle_timeout = 300     # seconds a MAC learned behind an uplink is kept unused
rules = "/etc/xvif-ovs/rules.d"   # firewall rule files (xvif_ovs/firewall/rules.py); reloaded on SIGHUP

[bridges.xenbr1]
uplinks = ["eth1", "bond0"]  # ports (or bonds) trusted as uplinks, besides physical NICs
private = true               # every guest reaches the uplink, no other guest
reserved_for = ["router", "12"]   # only these domains (names or domids) may use it
mode = "bridged"             # or "routed": Xen's vif-route, in flows (flows/PIPELINE.md, "Routed")

[bridges.xennat]
mode = "nat"                 # Xen's vif-nat, in flows (flows/PIPELINE.md, "NAT")
address = "192.0.2.254"      # dom0's address on the LAN, which NAT guests leave with
subnet = "10.0.0.0/24"       # the guests' private network (their ip= addresses)
gateway = "10.0.0.1"         # their gateway (default: the subnet's first address)
zone = 30838                 # the conntrack zone of their connections
ports = "61000-65535"        # their translated source ports: outside dom0's own
forwards = ["tcp:8080 -> web:80"]   # dom0's port 8080 to domain web's port 80

[bridges.xenbr0]
# Traffic samples to collectors, through OVSDB (Bridge sflow / ipfix): each port's counters
# and one frame in `sampling`. A collector names a guest's port from OVSDB: Interface
# external_ids xen-vm-name, xen-vm-uuid, xvif-domid, xvif-devid (what the hook writes).
sflow = { targets = ["192.0.2.9:6343"], sampling = 400, polling = 30, agent = "eth0" }
ipfix = { targets = ["192.0.2.9:4739"], sampling = 400, obs_domain_id = 1 }

[vifs]
private = ["web"]            # domain names, domids or DOMID.DEVID
trusted = ["router"]         # may send DHCP server replies and router advertisements

[metrics]
listen = "9876"              # Prometheus /metrics on 127.0.0.1:9876; HOST:PORT for another address,
                             # with allow_remote = true (and best HTTPS: certificate, private_key, client_ca)
hotplug_log = "/var/log/xen/xen-hotplug.log"   # where the hook's lines are read from

Nothing is trusted by default: an empty ``bridges`` manages nothing, and a port that is
neither a vif nor a declared uplink gets no forwarding (see flows/PIPELINE.md, "Trust").

Where OVS connects (``listen``): ``unix`` is a socket in OVS's run directory, which only
root on this host can open. ``tcp:PORT`` and ``ssl:PORT`` listen on 127.0.0.1 unless a
host is given (``tcp:192.0.2.1:6653``, ``ssl:[2001:db8::1]:6653``, ``ssl:0.0.0.0:6653``).
Plain TCP is unauthenticated: anyone who reaches it can pose as a switch, so ``tcp:`` on
any address but loopback is refused unless ``allow_remote_listen = true`` says it is
meant, and it is logged as a warning at every start. ``ssl:`` is mutual TLS, with OVS's
own PKI (``ovs-pki``, in its default directory /var/lib/openvswitch/pki)::

    ovs-pki init                        # once: controllerca/ and switchca/
    cd /etc/xvif-ovs && ovs-pki req+sign ctl controller   # ctl-privkey.pem, ctl-cert.pem
    cd /etc/openvswitch && ovs-pki req+sign sc switch     # sc-privkey.pem, sc-cert.pem
    # the switch: its own key and certificate, and the CA that signed the controller's
    ovs-vsctl set-ssl /etc/openvswitch/sc-privkey.pem /etc/openvswitch/sc-cert.pem \
        /var/lib/openvswitch/pki/controllerca/cacert.pem

    [ssl]
    private_key = "/etc/xvif-ovs/ctl-privkey.pem"
    certificate = "/etc/xvif-ovs/ctl-cert.pem"
    ca_cert = "/var/lib/openvswitch/pki/switchca/cacert.pem"   # switches must be signed by it

A switch that presents no certificate, or one that ``ca_cert`` did not sign, is refused
during the TLS handshake. (On a host other than the CA's, copy the two cacert.pem files
and sign the requests there: ``ovs-pki sign sc switch``.)
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import XvifError
from ..model.host import NAT_PORTS

MODES = ("bridged", "routed", "nat")
_FORWARD = re.compile(r"^\s*(tcp|udp):(\d{1,5})\s*->\s*([A-Za-z0-9_.\-]+):(\d{1,5})\s*$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")


DEFAULT_RULES = "/etc/xvif-ovs/rules.d"
DEFAULT_HOTPLUG_LOG = "/var/log/xen/xen-hotplug.log"  # (hotplug/log.py writes it)


class ConfigError(XvifError):
    """The controller's configuration file or flags are wrong."""


@dataclass(frozen=True)
class BridgePolicy:
    private: bool = False
    reserved_for: frozenset[str] | None = None
    uplinks: frozenset[str] = frozenset()  # OVSDB Port names declared as uplinks
    mode: str = "bridged"  # Xen's network model: bridged (vif-bridge), routed (vif-route) or nat (vif-nat)
    nat: NatPolicy | None = None
    sflow: Sflow | None = None
    ipfix: Ipfix | None = None


@dataclass(frozen=True)
class Sflow:
    """OVSDB's sFlow row for a bridge (ovs-vswitchd.conf.db(5), sFlow table)."""

    targets: tuple[str, ...]  # IP:PORT (IPv6 in [])
    sampling: int = 400  # one frame in this many
    polling: int = 30  # seconds between each port's counters
    header: int = 128  # bytes of each sampled frame
    agent: str = ""  # the interface whose address identifies the host ("": OVS chooses)


@dataclass(frozen=True)
class Ipfix:
    """OVSDB's IPFIX row for a bridge (bridge-wide sampling, ovs-vswitchd.conf.db(5))."""

    targets: tuple[str, ...]
    sampling: int = 400
    obs_domain_id: int = 0
    cache_active_timeout: int = 0  # seconds a flow's record waits before export (0: OVS's default)
    cache_max_flows: int = 0  # flows held before export (0: no limit)


@dataclass(frozen=True)
class NatPolicy:
    address: str
    subnet: str
    gateway: str
    zone: int = 0x7876
    forwards: tuple[tuple[str, int, str, int], ...] = ()  # (proto, port, domain, guest port)
    ports: tuple[int, int] = NAT_PORTS  # the translated source ports


@dataclass(frozen=True)
class MetricsConfig:
    host: str  # an IP address
    port: int
    hotplug_log: str = DEFAULT_HOTPLUG_LOG
    # HTTPS with client certificates: only a Prometheus holding a certificate that
    # client_ca signed may scrape (all three, or none)
    certificate: str = ""
    private_key: str = ""
    client_ca: str = ""

    @property
    def remote(self) -> bool:
        return not ipaddress.ip_address(self.host).is_loopback


@dataclass(frozen=True)
class TlsFiles:
    """The [ssl] section: PEM files in OVS's ovs-pki layout (see the module's docstring)."""

    private_key: str
    certificate: str
    ca_cert: str

    def context(self) -> ssl.SSLContext:
        """The server side of mutual TLS: a switch without a certificate signed by
        ``ca_cert`` fails the handshake. ConfigError names a file that cannot be used."""
        for key, path, fix in (
            ("private_key", self.private_key, "ovs-pki req+sign ctl controller (writes ctl-privkey.pem)"),
            ("certificate", self.certificate, "ovs-pki req+sign ctl controller (writes ctl-cert.pem)"),
            ("ca_cert", self.ca_cert, "ovs-pki init (writes /var/lib/openvswitch/pki/switchca/cacert.pem)"),
        ):
            try:
                with open(path, "rb") as f:
                    f.read(1)
            except OSError as e:
                raise ConfigError(
                    f"[ssl] {key} = {path!r}: cannot read it ({e.strerror}); create it with: {fix}"
                ) from None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_cert_chain(self.certificate, self.private_key)
        except ssl.SSLError as e:
            raise ConfigError(
                f"[ssl] certificate = {self.certificate!r} and private_key = {self.private_key!r} "
                f"are not a PEM certificate and its own key ({e.reason or e}); "
                "make both with: ovs-pki req+sign ctl controller"
            ) from None
        try:
            ctx.load_verify_locations(self.ca_cert)
        except ssl.SSLError as e:
            raise ConfigError(
                f"[ssl] ca_cert = {self.ca_cert!r} is not a PEM CA certificate ({e.reason or e}); "
                "use the switch CA's: /var/lib/openvswitch/pki/switchca/cacert.pem after ovs-pki init"
            ) from None
        return ctx


@dataclass(frozen=True)
class Config:
    listen: str = "unix"  # unix, or tcp:HOST:PORT / ssl:HOST:PORT as load() normalised it
    allow_remote_listen: bool = False
    tls: TlsFiles | None = None  # the [ssl] section
    bridges: tuple[str, ...] = ()
    learn_idle_timeout: int = 300
    bridge_policy: dict[str, BridgePolicy] = field(default_factory=dict)
    private_vifs: frozenset[str] = frozenset()
    trusted_vifs: frozenset[str] = frozenset()
    ovsdb: str | None = None
    xenstore: str | None = None
    rules_dir: str = DEFAULT_RULES
    metrics: MetricsConfig | None = None  # the [metrics] section: None serves no /metrics

    @staticmethod
    def rundir() -> str:
        return os.environ.get("OVS_RUNDIR", "/var/run/openvswitch")

    def socket_path(self) -> str:
        return f"{self.rundir()}/xvif-ovs.sock"

    def pidfile(self) -> str:
        """Held locked by the running controller: one per host (per OVS run directory)."""
        return f"{self.rundir()}/xvif-ovs.pid"

    def endpoint(self) -> tuple[str, str, int]:
        """(tcp or ssl, IP address, port) of a network listener."""
        kind, _, rest = self.listen.partition(":")
        host, _, port = rest.rpartition(":")
        return kind, host.strip("[]"), int(port)

    def remote_listen(self) -> bool:
        """A network listener that a switch on another host can reach."""
        return self.listen != "unix" and not ipaddress.ip_address(self.endpoint()[1]).is_loopback

    def target(self) -> str:
        """What OVS is told to connect to (Bridge.controller): the listener, and for a
        listener on every address (0.0.0.0, ::), this host's loopback."""
        if self.listen == "unix":
            return f"unix:{self.socket_path()}"
        kind, host, port = self.endpoint()
        ip = ipaddress.ip_address(host)
        if ip.is_unspecified:
            ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
        return f"{kind}:{url_host(ip)}:{port}"

    def managed(self, bridge: str) -> bool:
        """Only a bridge the configuration names is ours: never "every bridge"."""
        return bridge in self.bridges

    def mode(self, bridge: str) -> str:
        policy = self.bridge_policy.get(bridge)
        return policy.mode if policy else "bridged"

    def declared_uplinks(self, bridge: str) -> frozenset[str]:
        policy = self.bridge_policy.get(bridge)
        return policy.uplinks if policy else frozenset()

    def matches(self, names: frozenset[str], domain: str, domid: int, devid: int) -> bool:
        return bool({domain, str(domid), f"{domid}.{devid}"} & names)


def load(path: str | None, **overrides: object) -> Config:
    raw: dict = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
    known = {"controller", "ssl", "bridges", "vifs", "metrics"}
    if set(raw) - known:
        raise ConfigError(f"{path}: unknown section(s) {sorted(set(raw) - known)}; known: {sorted(known)}")
    ctl = raw.get("controller", {})
    _only(ctl, {"listen", "allow_remote_listen", "bridges", "learn_idle_timeout", "rules"}, f"{path} [controller]")
    rules_dir = ctl.get("rules", DEFAULT_RULES)
    if not isinstance(rules_dir, str) or not rules_dir.startswith("/"):
        raise ConfigError(f'rules = {rules_dir!r}: an absolute directory path, e.g. "{DEFAULT_RULES}"')
    allow_remote = ctl.get("allow_remote_listen", False)
    if not isinstance(allow_remote, bool):
        raise ConfigError(f"allow_remote_listen = {allow_remote!r}: true or false")
    listen = _listen(str(overrides.get("listen") or ctl.get("listen", "unix")), allow_remote, path)
    tls = _tls(raw.get("ssl"), listen, path)
    idle = ctl.get("learn_idle_timeout", 300)
    if not isinstance(idle, int) or not 1 <= idle <= 65535:
        raise ConfigError(f"learn_idle_timeout = {idle!r}: seconds, 1-65535")
    bridges = overrides.get("bridges") or ctl.get("bridges", [])
    if not isinstance(bridges, list | tuple) or not all(isinstance(b, str) and _IFNAME.match(b) for b in bridges):
        raise ConfigError(f"bridges = {bridges!r}: a list of OVS bridge names, e.g. ['xenbr0']")
    policies = {}
    for name, b in raw.get("bridges", {}).items():
        _only(
            b,
            {
                "private",
                "reserved_for",
                "uplinks",
                "mode",
                "address",
                "subnet",
                "gateway",
                "zone",
                "forwards",
                "ports",
                "sflow",
                "ipfix",
            },
            f"{path} [bridges.{name}]",
        )
        if name not in bridges:
            raise ConfigError(
                f"[bridges.{name}] configures a bridge that [controller] bridges does not name; "
                f"add {name!r} to bridges = [...] or remove the section"
            )
        reserved = b.get("reserved_for")
        if reserved is not None and not (
            isinstance(reserved, list) and all(isinstance(x, str | int) for x in reserved)
        ):
            raise ConfigError(f"[bridges.{name}] reserved_for: a list of domain names or domids")
        uplinks = b.get("uplinks", [])
        if not isinstance(uplinks, list) or not all(isinstance(u, str) and _IFNAME.match(u) for u in uplinks):
            raise ConfigError(f"[bridges.{name}] uplinks = {uplinks!r}: a list of port names, e.g. ['eth1', 'bond0']")
        mode = b.get("mode", "bridged")
        if mode not in MODES:
            raise ConfigError(f'[bridges.{name}] mode = {mode!r}: one of "bridged" (the default), "routed" or "nat"')
        nat_keys = sorted({"address", "subnet", "gateway", "zone", "forwards", "ports"} & set(b))
        if nat_keys and mode != "nat":
            raise ConfigError(f'[bridges.{name}] {", ".join(nat_keys)}: only for mode = "nat"')
        policies[name] = BridgePolicy(
            bool(b.get("private", False)),
            frozenset(map(str, reserved)) if reserved is not None else None,
            frozenset(uplinks),
            mode,
            _nat(b, f"[bridges.{name}]") if mode == "nat" else None,
            _sflow(b.get("sflow"), f"[bridges.{name}] sflow"),
            _ipfix(b.get("ipfix"), f"[bridges.{name}] ipfix"),
        )
    zones: dict[int, str] = {}
    nets: list[tuple[ipaddress.IPv4Network, str]] = []
    for name, policy in policies.items():
        if policy.nat is None:
            continue
        if policy.nat.zone in zones:
            raise ConfigError(
                f"[bridges.{name}] zone = {policy.nat.zone} is [bridges.{zones[policy.nat.zone]}]'s too: "
                "each NAT bridge needs a conntrack zone of its own"
            )
        zones[policy.nat.zone] = name
        subnet = ipaddress.IPv4Network(policy.nat.subnet)
        for other_net, other in nets:
            if subnet.overlaps(other_net):
                raise ConfigError(
                    f"[bridges.{name}] subnet = {subnet} overlaps [bridges.{other}]'s {other_net}: "
                    "NAT networks must not share addresses"
                )
        nets.append((subnet, name))
    vifs = raw.get("vifs", {})
    _only(vifs, {"private", "trusted"}, f"{path} [vifs]")
    return Config(
        listen=listen,
        allow_remote_listen=allow_remote,
        tls=tls,
        bridges=tuple(bridges),  # type: ignore[arg-type]
        learn_idle_timeout=idle,
        bridge_policy=policies,
        private_vifs=frozenset(map(str, vifs.get("private", []))),
        trusted_vifs=frozenset(map(str, vifs.get("trusted", []))),
        ovsdb=overrides.get("ovsdb"),  # type: ignore[arg-type]
        xenstore=overrides.get("xenstore"),  # type: ignore[arg-type]
        rules_dir=rules_dir,
        metrics=_metrics(raw.get("metrics"), path),
    )


def _metrics(section: object, path: str | None) -> MetricsConfig | None:
    """[metrics]: off unless asked for; a bare port listens on loopback only, since the
    metrics name every guest and its traffic."""
    if section is None:
        return None
    where = f"{path or 'the configuration file'} [metrics]"
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a section")
    _only(section, {"listen", "hotplug_log", "allow_remote", "certificate", "private_key", "client_ca"}, where)
    value = section.get("listen")
    usage = f'{where} listen = {value!r}: a port ("9876", on 127.0.0.1) or HOST:PORT ("192.0.2.1:9876", "[::1]:9876")'
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ConfigError(usage)
    ip, port = host_port(str(value), usage)
    log_path = section.get("hotplug_log", DEFAULT_HOTPLUG_LOG)
    if not isinstance(log_path, str) or not log_path.startswith("/"):
        raise ConfigError(f'{where} hotplug_log = {log_path!r}: an absolute path, e.g. "{DEFAULT_HOTPLUG_LOG}"')
    tls = {k: section.get(k, "") for k in ("certificate", "private_key", "client_ca")}
    for k, v in tls.items():
        if not isinstance(v, str) or (v and not v.startswith("/")):
            raise ConfigError(f"{where} {k} = {v!r}: an absolute path to a PEM file")
    if any(tls.values()) and not all(tls.values()):
        missing = ", ".join(k for k, v in tls.items() if not v)
        raise ConfigError(
            f"{where}: HTTPS needs certificate, private_key and client_ca together ({missing} missing): the "
            "controller's certificate and key, and the CA that signed Prometheus's client certificate"
        )
    allow = section.get("allow_remote", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"{where} allow_remote = {allow!r}: true or false")
    if not ip.is_loopback and not allow:
        raise ConfigError(
            f"{where} listen = {value!r} is reachable from other hosts (and from guests on a bridge dom0 has that "
            "address on): the metrics name every guest, its MAC and its traffic. Add certificate, private_key and "
            "client_ca (HTTPS with client certificates) and allow_remote = true, or listen on loopback "
            f'("{port}") and let a local agent forward it'
        )
    return MetricsConfig(str(ip), port, log_path, tls["certificate"], tls["private_key"], tls["client_ca"])


def _target(value: object, where: str, port: int) -> str:
    """A collector's IP:PORT as OVS wants it (IPv6 in brackets)."""
    usage = f'{where}: {value!r} is not a collector address: IP:PORT, e.g. "192.0.2.9:{port}" or "[2001:db8::9]:{port}"'
    if not isinstance(value, str):
        raise ConfigError(usage)
    ip, p = host_port(value, usage, default_host=None)
    return f"{url_host(ip)}:{p}"


def _count(section: dict, key: str, default: int, lo: int, hi: int, where: str, what: str) -> int:
    v = section.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ConfigError(f"{where} {key} = {v!r}: {what}, {lo}-{hi}")
    return v


def _collector(section: object, where: str, keys: set[str], port: int) -> dict:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f'{where}: a table such as {{ targets = ["192.0.2.9:{port}"] }}')
    _only(section, keys, where)
    targets = section.get("targets")
    if not isinstance(targets, list) or not targets:
        raise ConfigError(f'{where} targets: a list of collectors, e.g. ["192.0.2.9:{port}"]')
    return {"targets": tuple(_target(t, f"{where} targets", port) for t in targets)}


def _sflow(section: object, where: str) -> Sflow | None:
    keys = {"targets", "sampling", "polling", "header", "agent"}
    found = _collector(section, where, keys, 6343)
    if not found:
        return None
    assert isinstance(section, dict)
    agent = section.get("agent", "")
    if not isinstance(agent, str) or (agent and not _IFNAME.match(agent)):
        raise ConfigError(
            f'{where} agent = {agent!r}: an interface name whose address identifies this host, e.g. "eth0"'
        )
    return Sflow(
        found["targets"],
        _count(section, "sampling", 400, 1, 2**31 - 1, where, "one frame sampled in this many"),
        _count(section, "polling", 30, 1, 3600, where, "seconds between counter samples"),
        _count(section, "header", 128, 14, 1518, where, "bytes of each sampled frame"),
        agent,
    )


def _ipfix(section: object, where: str) -> Ipfix | None:
    keys = {"targets", "sampling", "obs_domain_id", "cache_active_timeout", "cache_max_flows"}
    found = _collector(section, where, keys, 4739)
    if not found:
        return None
    assert isinstance(section, dict)
    return Ipfix(
        found["targets"],
        _count(section, "sampling", 400, 1, 2**32 - 1, where, "one packet sampled in this many"),
        _count(section, "obs_domain_id", 0, 0, 2**32 - 1, where, "the observation domain the collector sees"),
        _count(section, "cache_active_timeout", 0, 0, 4200, where, "seconds"),
        _count(section, "cache_max_flows", 0, 0, 2**32 - 1, where, "flows"),
    )


def _nat(b: dict, where: str) -> NatPolicy:
    """A NAT bridge's settings, each checked with what to write instead."""
    for key in ("address", "subnet"):
        if key not in b:
            example = {"address": '"192.0.2.254" (dom0\'s address on the LAN)', "subnet": '"10.0.0.0/24"'}[key]
            raise ConfigError(f'{where} mode = "nat" needs {key} = {example}')
    try:
        address = ipaddress.IPv4Address(b["address"])
    except (ValueError, TypeError):
        raise ConfigError(
            f'{where} address = {b["address"]!r}: dom0\'s IPv4 address on the LAN, e.g. "192.0.2.254"'
        ) from None
    try:
        subnet = ipaddress.IPv4Network(b["subnet"])
    except (ValueError, TypeError):
        raise ConfigError(f'{where} subnet = {b["subnet"]!r}: an IPv4 network, e.g. "10.0.0.0/24"') from None
    if subnet.num_addresses < 4:
        raise ConfigError(f"{where} subnet = {b['subnet']!r}: too small for a gateway and guests; /30 at least")
    if address in subnet:
        raise ConfigError(
            f"{where} address = {b['address']!r} is inside subnet {subnet}: use dom0's address on the LAN"
        )
    try:
        gateway = ipaddress.IPv4Address(b.get("gateway", str(next(subnet.hosts()))))
    except (ValueError, TypeError):
        raise ConfigError(f"{where} gateway = {b['gateway']!r}: an IPv4 address in {subnet}") from None
    if gateway not in subnet:
        raise ConfigError(f"{where} gateway = {b['gateway']!r} is not in subnet {subnet}")
    zone = b.get("zone", 0x7876)
    if not isinstance(zone, int) or isinstance(zone, bool) or not 1 <= zone <= 65535:
        raise ConfigError(f"{where} zone = {zone!r}: a conntrack zone, 1-65535, that nothing else on the host uses")
    forwards = []
    raw = b.get("forwards", [])
    if not isinstance(raw, list):
        raise ConfigError(f'{where} forwards = {raw!r}: a list such as ["tcp:8080 -> web:80"]')
    for text in raw:
        m = _FORWARD.match(text) if isinstance(text, str) else None
        if m is None or not (1 <= int(m.group(2)) <= 65535 and 1 <= int(m.group(4)) <= 65535):
            raise ConfigError(f'{where} forwards: {text!r} is not PROTO:PORT -> DOMAIN:PORT, e.g. "tcp:8080 -> web:80"')
        forwards.append((m.group(1), int(m.group(2)), m.group(3), int(m.group(4))))
    seen = [(p, port) for p, port, _, _ in forwards]
    dup = sorted({f"{p}:{port}" for p, port in seen if seen.count((p, port)) > 1})
    if dup:
        raise ConfigError(f"{where} forwards: {', '.join(dup)} forwarded twice; keep one")
    ports = b.get("ports", f"{NAT_PORTS[0]}-{NAT_PORTS[1]}")
    m = re.match(r"^(\d{1,5})-(\d{1,5})$", ports) if isinstance(ports, str) else None
    if m is None or not 1024 <= int(m.group(1)) <= int(m.group(2)) <= 65535:
        raise ConfigError(
            f"{where} ports = {ports!r}: the source ports to translate to, LOW-HIGH within 1024-65535, outside "
            f'dom0\'s own (net.ipv4.ip_local_port_range), e.g. "{NAT_PORTS[0]}-{NAT_PORTS[1]}"'
        )
    lo, hi = int(m.group(1)), int(m.group(2))
    clash = sorted(f"{p}:{port}" for p, port, _, _ in forwards if lo <= port <= hi)
    if clash:
        raise ConfigError(f"{where} forwards {', '.join(clash)} lie in ports = {ports!r}: forward ports outside it")
    return NatPolicy(str(address), str(subnet), str(gateway), zone, tuple(forwards), (lo, hi))


def url_host(ip: ipaddress.IPv4Address | ipaddress.IPv6Address | str) -> str:
    ip = ipaddress.ip_address(ip)
    return f"[{ip}]" if ip.version == 6 else str(ip)


def host_port(
    text: str, usage: str, default_host: str | None = "127.0.0.1"
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """[HOST:]PORT or [IPv6]:PORT (HOST an IP address; ``default_host`` when it is left
    out, or required if None); ConfigError(usage ...) says what is wrong."""
    if text.startswith("["):
        host, close, port = text[1:].partition("]")
        if not close or not port.startswith(":"):
            raise ConfigError(usage)
        port = port[1:]
    elif text.count(":") <= 1:
        host, _, port = text.rpartition(":")
    else:
        raise ConfigError(usage)
    if not host and default_host is None:
        raise ConfigError(usage)
    try:
        ip = ipaddress.ip_address(host or default_host)
    except ValueError:
        raise ConfigError(f"{usage}; {host!r} is not an IP address") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{usage}; the port is 1-65535")
    return ip, int(port)


def _listen(value: str, allow_remote: bool, path: str | None) -> str:
    """``unix``, or ``tcp:[HOST:]PORT`` / ``ssl:[HOST:]PORT`` normalised to KIND:HOST:PORT
    (HOST 127.0.0.1 when none is given). Plain TCP beyond loopback must be asked for."""
    if value == "unix":
        return value
    usage = f"listen = {value!r}: use unix, tcp:[HOST:]PORT or ssl:[HOST:]PORT (HOST an IP address, IPv6 in [])"
    kind, sep, rest = value.partition(":")
    if kind not in ("tcp", "ssl") or not sep:
        raise ConfigError(usage)
    ip, port = host_port(rest, usage)
    if kind == "tcp" and not ip.is_loopback and not allow_remote:
        raise ConfigError(
            f"listen = {value!r} is plain TCP on {ip}, which other hosts can reach: anyone who reaches it "
            f"can pose as a switch. Use ssl:{url_host(ip)}:{int(port)} with an [ssl] section, or tcp:{int(port)} "
            f"(loopback), or if it is really meant add allow_remote_listen = true to [controller] in "
            f"{path or 'the configuration file'}"
        )
    return f"{kind}:{url_host(ip)}:{int(port)}"


def _tls(section: object, listen: str, path: str | None) -> TlsFiles | None:
    if section is None:
        if listen.startswith("ssl:"):
            raise ConfigError(
                f"listen = {listen!r} needs an [ssl] section in {path or 'the configuration file'} with "
                "private_key, certificate and ca_cert (OVS's PKI: ovs-pki init; ovs-pki req+sign ctl controller; "
                "ca_cert = /var/lib/openvswitch/pki/switchca/cacert.pem)"
            )
        return None
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [ssl] must be a section")
    keys = {"private_key", "certificate", "ca_cert"}
    _only(section, keys, f"{path} [ssl]")
    missing = sorted(k for k in keys if not isinstance(section.get(k), str) or not section.get(k))
    if missing:
        raise ConfigError(
            f"{path} [ssl]: {', '.join(missing)} missing: private_key and certificate from "
            "ovs-pki req+sign ctl controller, ca_cert the switch CA's cacert.pem"
        )
    return TlsFiles(section["private_key"], section["certificate"], section["ca_cert"])


def _only(section: dict, allowed: set[str], where: str) -> None:
    extra = set(section) - allowed
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}; known: {sorted(allowed)}")


DEFAULT_PATH = "/etc/xvif-ovs/controller.toml"


def load_installed(path: str | None = None) -> Config:
    """The configuration the host's controller runs with, for the CLI: ``path``, else
    XVIF_OVS_CONFIG (the lab sets it), else /etc/xvif-ovs/controller.toml if it exists."""
    path = path or os.environ.get("XVIF_OVS_CONFIG")
    if path:
        return load(path)
    return load(DEFAULT_PATH) if os.path.exists(DEFAULT_PATH) else load(None)
