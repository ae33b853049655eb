"""xl's vif spec ('mac=...,bridge=xenbr0.10,ip=...') and the values libxl copies from it
into XenStore, parsed and validated.

The same rules serve three readers: the lab parsing `--vif`, the hotplug hook reading
the backend node, and the controller deriving flows. A value that would put a guest
on the wrong VLAN or let it claim a MAC it must not have is refused here, with a
message that names the value and how to write it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from ..errors import VifSpecError

# The keys xl-network-configuration(5) documents; xl refuses others.
XL_VIF_KEYS = frozenset(
    {
        "mac",
        "bridge",
        "gatewaydev",
        "type",
        "model",
        "vifname",
        "script",
        "ip",
        "backend",
        "rate",
        "devid",
        "mtu",
        "vlan",
        "trusted",
        "accel",
        "powerlimit",
    }
)
DEFAULT_BRIDGE = "xenbr0"
XEN_OUI = "00:16:3e"

_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
# vif-openvswitch's regex: bridge, optional .TAG, optional :TRUNK[:TRUNK...]
_BRIDGE = re.compile(r"^([^.:]+)(\.([0-9]+))?(:([0-9]+(:[0-9]+)*))?$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")
_VLAN_ITEM = re.compile(r"^(\d+)(p?)(?:\+(\d+)x(\d+))?$")


def mac_to_int(mac: str) -> int:
    """A MAC as a 48-bit number, most significant octet first: prefix and mask arithmetic."""
    return int(mac.replace(":", ""), 16)


def int_to_mac(n: int) -> str:
    h = f"{n:012x}"
    return f"{h[0:2]}:{h[2:4]}:{h[4:6]}:{h[6:8]}:{h[8:10]}:{h[10:12]}"


def is_mac(text: str) -> bool:
    """Six colon-separated hex octets (any kind of MAC: parse_mac judges whether a guest may have it)."""
    return bool(_MAC.match(text))


def parse_mac(text: str) -> str:
    """A guest MAC: six colon-separated octets, unicast, not all zero. Returned lower-case."""
    if not _MAC.match(text):
        raise VifSpecError(f"mac {text!r} is not six colon-separated hex octets (e.g. {XEN_OUI}:12:34:56)")
    mac = text.lower()
    first = int(mac[:2], 16)
    if mac == "ff:ff:ff:ff:ff:ff":
        raise VifSpecError(
            f"mac {text!r} is the broadcast address; give the guest a unicast MAC such as {XEN_OUI}:xx:xx:xx"
        )
    if first & 1:
        raise VifSpecError(
            f"mac {text!r} is a multicast address (low bit of the first octet set); use a unicast MAC such as {XEN_OUI}:xx:xx:xx"
        )
    if mac == "00:00:00:00:00:00":
        raise VifSpecError(f"mac {text!r} is all zeros; give the guest a real MAC such as {XEN_OUI}:xx:xx:xx")
    return mac


def parse_vlan_id(text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 4094:
        raise VifSpecError(f"{what} {text!r} is not a VLAN ID in 1-4094")
    return int(text)


@dataclass(frozen=True)
class BridgeSpec:
    """Where a vif goes: the OVS bridge and its VLAN membership.

    ``xenbr0.10`` is an access port on VLAN 10; ``xenbr0:10:20`` a trunk of 10 and 20;
    ``xenbr0.10:20:30`` carries 10 untagged (native) plus 20 and 30 tagged, which
    vif-openvswitch gets wrong (OVS ignores trunks when only tag is set).
    """

    name: str
    tag: int | None = None
    trunks: tuple[int, ...] = ()

    @property
    def vlan_mode(self) -> str:
        """OVS's vlan_mode. A vif without VLANs is an access port of the untagged network
        (VLAN 0): OVS's default for a port without tag is a trunk of every VLAN, which
        would hand a plain guest every VLAN's floods (as vif-openvswitch does)."""
        if self.tag is not None and self.trunks:
            return "native-untagged"
        if self.trunks:
            return "trunk"
        return "access"

    @property
    def ovs_trunks(self) -> tuple[int, ...]:
        """OVS's trunks column: a native-untagged port must list its native VLAN too."""
        if self.vlan_mode == "native-untagged":
            return tuple(sorted({self.tag, *self.trunks}))  # type: ignore[arg-type]
        return self.trunks

    def __str__(self) -> str:
        s = self.name
        if self.tag is not None:
            s += f".{self.tag}"
        if self.trunks:
            s += ":" + ":".join(map(str, self.trunks))
        return s


def parse_bridge(text: str) -> BridgeSpec:
    m = _BRIDGE.match(text)
    if not m:
        raise VifSpecError(
            f"bridge {text!r} does not parse: write BRIDGE, BRIDGE.TAG, BRIDGE:VLAN[:VLAN...] "
            "or BRIDGE.TAG:VLAN[:VLAN...] (e.g. xenbr0.10:20:30)"
        )
    name = m.group(1)
    if not _IFNAME.match(name):
        raise VifSpecError(f"bridge name {name!r} is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)")
    tag = parse_vlan_id(m.group(3), f"VLAN tag in bridge {text!r}") if m.group(3) else None
    trunks: tuple[int, ...] = ()
    if m.group(5):
        trunks = tuple(parse_vlan_id(t, f"trunk VLAN in bridge {text!r}") for t in m.group(5).split(":"))
        if len(set(trunks)) != len(trunks):
            raise VifSpecError(f"bridge {text!r} lists a trunk VLAN twice")
    return BridgeSpec(name, tag, trunks)


def parse_xl_vlan(text: str) -> tuple[int | None, tuple[int, ...]]:
    """xl's ``vlan=`` key: VLANs separated by '/', 'p' marks the untagged PVID, and
    ``START+STEPxCOUNT`` a range (``10p/100+10x4`` = untagged 10, tagged 100..130).
    Returns (pvid, tagged)."""
    pvid: int | None = None
    tagged: list[int] = []
    for item in text.split("/"):
        m = _VLAN_ITEM.match(item)
        if not m:
            raise VifSpecError(f"vlan item {item!r} in {text!r}: write VLAN, VLANp (untagged) or START+STEPxCOUNT")
        start = parse_vlan_id(m.group(1), f"VLAN in vlan={text!r}")
        ids = [start]
        if m.group(3):
            step, count = int(m.group(3)), int(m.group(4))
            if step < 1 or count < 1:
                raise VifSpecError(f"vlan range {item!r}: step and count must be at least 1")
            ids = [parse_vlan_id(str(start + i * step), f"VLAN in range {item!r}") for i in range(count)]
        if m.group(2):
            if pvid is not None or m.group(3):
                raise VifSpecError(f"vlan={text!r} marks more than one untagged VLAN with 'p'")
            pvid = start
        else:
            tagged.extend(ids)
    if pvid is None and len(tagged) == 1:
        return tagged[0], ()  # a single VLAN is the access VLAN
    if len(set(tagged)) != len(tagged) or pvid in tagged:
        raise VifSpecError(f"vlan={text!r} lists a VLAN twice")
    return pvid, tuple(tagged)


def vif_vlans(bridge: str | None, vlan: str | None) -> BridgeSpec:
    """A vif's bridge and VLANs from libxl's ``bridge`` and ``vlan`` keys: the one reading
    that the hook (which sets the port up), the controller (which enforces it) and the lab
    share, so the same input is refused by all or means the same to all."""
    spec = parse_bridge(bridge or DEFAULT_BRIDGE)
    if vlan:
        if spec.tag is not None or spec.trunks:
            raise VifSpecError("give VLANs either in bridge= (xenbr0.10:20) or in vlan=, not both")
        tag, trunks = parse_xl_vlan(vlan)
        spec = BridgeSpec(spec.name, tag, trunks)
    return spec


def parse_ips(text: str) -> tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]:
    """libxl's ``ip``: space-separated addresses (a /prefix is accepted for networks)."""
    out = []
    for word in text.split():
        try:
            out.append(ipaddress.ip_interface(word))
        except ValueError:
            raise VifSpecError(
                f"ip {word!r} is not an IPv4/IPv6 address or network (e.g. 192.0.2.10 or 2001:db8::10)"
            ) from None
    return tuple(out)


def format_ip(ip: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> str:
    """As libxl writes ``ip``: a bare address for a host, address/prefix for a network."""
    return str(ip.ip) if ip.network.prefixlen == ip.max_prefixlen else str(ip)


def parse_mtu(text: str) -> int:
    if not text.isdigit() or not 68 <= int(text) <= 65535:
        raise VifSpecError(f"mtu {text!r} is not a number in 68-65535")
    return int(text)


def parse_ifname(text: str, what: str) -> str:
    if not _IFNAME.match(text):
        raise VifSpecError(f"{what} {text!r} is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)")
    return text


@dataclass(frozen=True)
class VifSpec:
    """One guest NIC as xl describes it."""

    mac: str | None = None
    bridge: BridgeSpec = field(default_factory=lambda: BridgeSpec(DEFAULT_BRIDGE))
    ips: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()
    vifname: str | None = None
    mtu: int | None = None
    script: str | None = None
    type: str = "vif"
    devid: int | None = None
    trusted: bool = False
    rate: str | None = None
    raw: dict[str, str] = field(default_factory=dict)


def parse_vif_spec(text: str) -> VifSpec:
    raw: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise VifSpecError(f"vif spec item {item!r} is not KEY=VALUE")
        if key not in XL_VIF_KEYS:
            raise VifSpecError(f"vif spec key {key!r} is unknown; xl knows {', '.join(sorted(XL_VIF_KEYS))}")
        if key in raw:
            raise VifSpecError(f"vif spec key {key!r} is given twice")
        raw[key] = value.strip()
    bridge = vif_vlans(raw.get("bridge"), raw.get("vlan"))
    vif_type = raw.get("type", "vif")
    if vif_type not in ("vif", "ioemu"):
        raise VifSpecError(f"type {vif_type!r} is not vif or ioemu")
    devid = None
    if "devid" in raw:
        if not raw["devid"].isdigit():
            raise VifSpecError(f"devid {raw['devid']!r} is not a non-negative number")
        devid = int(raw["devid"])
    trusted = raw.get("trusted", "0")
    if trusted not in ("0", "1"):
        raise VifSpecError(f"trusted {trusted!r} is not 0 or 1")
    return VifSpec(
        mac=parse_mac(raw["mac"]) if "mac" in raw else None,
        bridge=bridge,
        ips=parse_ips(raw["ip"]) if "ip" in raw else (),
        vifname=parse_ifname(raw["vifname"], "vifname") if "vifname" in raw else None,
        mtu=parse_mtu(raw["mtu"]) if "mtu" in raw else None,
        script=raw.get("script"),
        type=vif_type,
        devid=devid,
        trusted=trusted == "1",
        rate=raw.get("rate"),
        raw=raw,
    )
