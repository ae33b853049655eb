"""The host as the controller sees it: per bridge, its uplinks, dom0's LOCAL port and
its vifs, joined from XenStore (what each vif is) and OVSDB/OpenFlow (where it is).

Pure data; the pipeline is a function of one BridgeModel.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

from ..firewall.rules import Rule
from .vifspec import BridgeSpec

IP = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# libxl's names during a migration (tools/xl/xl_migrate.c): the new domain is NAME--incoming
# until the switch, then the old one is NAME--migratedaway until it is destroyed. The same
# VM's NIC under two domids is one NIC only while one of them carries such a name.
INCOMING_SUFFIX, MIGRATED_AWAY_SUFFIX = "--incoming", "--migratedaway"


def migrating(domain_name: str) -> bool:
    return domain_name.endswith((INCOMING_SUFFIX, MIGRATED_AWAY_SUFFIX))


@dataclass(frozen=True)
class VifFirewall:
    """A firewalled vif's part of the pipeline (firewall/select.py chooses it): its
    conntrack zone, its rules in the order they are tried (a rule's index is in its
    flows' cookies), and the VLANs whose inbound default is closed."""

    zone: int
    rules: tuple[Rule, ...] = ()
    closed: frozenset[int] = frozenset()
    blocked: bool = False  # it could not be built (no zone free, too many rules): no IP at all


@dataclass(frozen=True)
class VifModel:
    """One guest NIC. An HVM NIC has two backends (the PV vif and the emulated tap)
    that share the MAC; traffic for the MAC goes to whichever is live."""

    domid: int
    devid: int
    mac: str
    vlans: BridgeSpec
    ips: tuple[IP, ...] = ()
    vif_port: int | None = None  # ofport of vifD.N
    emu_port: int | None = None  # ofport of vifD.N-emu
    vif_live: bool = True
    emu_live: bool = False
    trusted: bool = False  # may send DHCP server replies and router advertisements (a router VM)
    private: bool = False  # reaches the uplink but no other guest
    name: str = ""  # the domain's name, for logs and the CLI
    # A NIC being migrated or restored: the same VM's same vif under another domid, live
    # on the same bridge until libxl destroys the old domain. Frames for the MAC go to
    # every one of them (a paused or unconnected backend drops them), and only one, the
    # newest (`forwards`), holds the MAC's forwarding flows, with the others' ports here.
    twin_ports: tuple[int, ...] = ()
    forwards: bool = True
    firewall: VifFirewall | None = None  # rules or a closed network: stateful, in conntrack

    @property
    def key(self) -> str:
        return f"{self.domid}.{self.devid}"

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(p for p in (self.vif_port, self.emu_port) if p is not None)

    @property
    def active_port(self) -> int | None:
        """Where frames for the MAC go: the PV vif once its link is up, else the tap."""
        if self.vif_port is not None and (self.vif_live or self.emu_port is None or not self.emu_live):
            return self.vif_port
        return self.emu_port

    @functools.cached_property
    def access_vlans(self) -> tuple[int, ...]:
        """The VLANs (0 = the untagged network) this NIC belongs to. Cached: asked for
        every vif on every pass, and the model never changes."""
        b = self.vlans
        if b.vlan_mode == "access":
            return (b.tag or 0,)
        if b.vlan_mode == "trunk":
            return tuple(b.trunks)
        return tuple(sorted({b.tag or 0, *b.trunks}))

    def tagged_on_wire(self, vlan: int) -> bool:
        """Whether frames of ``vlan`` carry an 802.1Q tag on this NIC's port."""
        b = self.vlans
        if b.vlan_mode == "access":
            return False
        if b.vlan_mode == "trunk":
            return True
        return vlan != b.tag


@dataclass(frozen=True)
class PortVlans:
    """A non-vif port's own VLAN settings (OVSDB Port tag, trunks, vlan_mode), read as
    OVS's NORMAL reads them: a tagged uplink or a XenServer-style fake-bridge port
    carries only its VLANs. No tag and no trunks: every VLAN (0 untagged, others tagged)."""

    tag: int | None = None
    trunks: tuple[int, ...] = ()
    mode: str | None = None  # access | trunk | native-tagged | native-untagged (None: OVS's default)

    @property
    def effective_mode(self) -> str:
        if self.mode:
            return self.mode
        return "access" if self.tag is not None else "trunk"

    def carries(self, vlan: int) -> bool:
        mode = self.effective_mode
        if mode == "access":
            return vlan == (self.tag or 0)
        if mode == "trunk":
            return not self.trunks or vlan in self.trunks
        if mode in ("native-tagged", "native-untagged"):
            return vlan == self.tag or vlan in self.trunks
        return False  # dot1q-tunnel and anything newer: not ours to interpret, carries nothing

    def tagged_on_wire(self, vlan: int) -> bool:
        mode = self.effective_mode
        if mode == "access":
            return False
        if mode == "native-untagged":
            return vlan != self.tag
        if mode == "native-tagged":
            return True
        return vlan != 0  # trunk: VLAN 0 is the untagged frames

    def untagged_is(self) -> int | None:
        """The VLAN an untagged frame from this port belongs to (None: dropped)."""
        mode = self.effective_mode
        if mode == "access":
            return self.tag or 0
        if mode in ("native-tagged", "native-untagged"):
            return self.tag
        return 0 if self.carries(0) else None


ALL_VLANS = PortVlans()


@dataclass(frozen=True)
class Uplink:
    """A declared uplink: one OVSDB Port, with one interface (a NIC) or several (a bond,
    whose frames leave through one live member and come in on any)."""

    name: str
    members: tuple[int, ...]  # ofports
    vlans: PortVlans = ALL_VLANS

    @property
    def is_bond(self) -> bool:
        return len(self.members) > 1


@dataclass(frozen=True)
class PortForward:
    """A NAT bridge's port forward: ``proto`` port ``port`` of dom0's address to the guest
    address ``guest`` (resolved from the domain name in the config), port ``guest_port``."""

    proto: str  # tcp | udp
    port: int
    guest: str
    guest_port: int


NAT_PORTS = (61000, 65535)  # source ports for translated connections: outside Linux's ephemeral range


@dataclass(frozen=True)
class NatSpec:
    """Xen's NAT model on one bridge: guests on ``subnet`` (their gateway ``gateway``)
    leave with dom0's ``address``; conntrack zone ``zone`` holds their connections."""

    address: str
    subnet: str  # an IPv4 network, e.g. 10.0.0.0/24
    gateway: str
    zone: int
    forwards: tuple[PortForward, ...] = ()
    ports: tuple[int, int] = NAT_PORTS


@dataclass(frozen=True)
class BridgeModel:
    name: str
    uplinks: tuple[int, ...] = ()  # ofports of single-NIC uplinks that carry every VLAN (0 untagged)
    local: bool = True  # dom0's LOCAL port takes part (untagged network, no port security)
    private: bool = False  # every vif on this bridge is private
    reserved_for: frozenset[str] | None = None  # domain names or domids allowed on this bridge
    vifs: tuple[VifModel, ...] = ()
    refused: tuple[VifModel, ...] = field(default=())  # vifs the reservation keeps off
    # Uplinks with VLAN settings of their own, and bonds (besides the plain ones above).
    special_uplinks: tuple[Uplink, ...] = ()
    # Ports that are neither a vif with flows nor an uplink nor LOCAL: dropped and counted.
    unmanaged: tuple[int, ...] = ()
    # Xen's network model: "bridged" (vifs on the LAN) or "routed" (only the guests' IP
    # addresses are, answered for and routed by the bridge with router_mac, dom0's MAC).
    mode: str = "bridged"
    router_mac: str = ""  # the bridge's LOCAL port's MAC ("" while OVS has not said it)
    nat: NatSpec | None = None  # mode "nat": what to translate to, and for whom

    @property
    def routed(self) -> bool:
        """Routed or NAT: the bridge routes its guests (NAT translates them on the way)."""
        return self.mode in ("routed", "nat")

    def all_uplinks(self) -> tuple[Uplink, ...]:
        return tuple(Uplink(str(p), (p,)) for p in self.uplinks) + self.special_uplinks

    def vlans(self) -> tuple[int, ...]:
        return tuple(sorted({v for vif in self.vifs for v in vif.access_vlans} | ({0} if self.local else set())))

    def is_private(self, vif: VifModel) -> bool:
        return self.private or vif.private

    def admits(self, vif: VifModel) -> bool:
        if self.reserved_for is None:
            return True
        return vif.name in self.reserved_for or str(vif.domid) in self.reserved_for
