"""A vif as XenStore describes it, read once and validated before anything changes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pyxs import Client

from ..errors import VifSpecError
from ..model.vifspec import (
    BridgeSpec,
    format_ip,
    parse_ifname,
    parse_ips,
    parse_mac,
    parse_mtu,
    vif_vlans,
)
from ..xenstore.client import read_str


@dataclass(frozen=True)
class VifConfig:
    domid: int
    devid: int
    backend: str
    mac: str
    bridge: BridgeSpec
    ips: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()
    vifname: str | None = None
    mtu: int | None = None
    vm_name: str = ""
    vm_uuid: str = ""
    domain_name: str = ""  # /local/domain/DOMID/name now: libxl's NAME--incoming during a migration
    xapi: dict[str, str] = field(default_factory=dict)  # xs-vif-uuid, xs-network-uuid when XAPI runs the host

    def device_name(self, tap: bool, created: str) -> str:
        """The name the device ends up with: vifname (vifname-emu for the tap) if set."""
        if self.vifname:
            return f"{self.vifname}-emu" if tap else self.vifname
        return created

    def external_ids(self, tap: bool) -> dict[str, str]:
        """What the ecosystem reads off an OVS Interface (vif-openvswitch's and XAPI's keys),
        plus ours: domid/devid tie an HVM vif and its -emu twin together as one NIC."""
        ids = {
            "attached-mac": self.mac,
            "xen-vm-name": self.vm_name,
            "xen-vm-uuid": self.vm_uuid,
            "iface-id": self.xapi.get("xs-vif-uuid") or f"{self.vm_uuid or self.domid}-{self.devid}",
            "xvif-domid": str(self.domid),
            "xvif-devid": str(self.devid),
            "xvif-kind": "emu" if tap else "vif",
        }
        if self.ips:
            ids["xvif-ip"] = " ".join(format_ip(i) for i in self.ips)
        ids.update(self.xapi)
        return {k: v for k, v in ids.items() if v}


def read_vif(xs: Client, backend: str, domid: int, devid: int) -> VifConfig:
    def key(name: str) -> str | None:
        return read_str(xs, f"{backend}/{name}")

    if read_str(xs, backend) is None:
        raise VifSpecError(f"{backend} does not exist in XenStore: is the domain still being built?")
    mac = key("mac")
    if not mac:
        raise VifSpecError(f"{backend}/mac is missing: set mac= in the vif spec (libxl always writes it)")
    try:
        mac = parse_mac(mac)
        bridge = vif_vlans(key("bridge"), key("vlan"))
        ips = parse_ips(key("ip") or "")
        vifname = key("vifname")
        mtu = key("mtu")
    except VifSpecError as e:
        raise VifSpecError(f"vif {domid}.{devid} ({backend}): {e}") from None
    vm = read_str(xs, f"/local/domain/{domid}/vm")
    domain_name = read_str(xs, f"/local/domain/{domid}/name") or ""
    vm_name = (read_str(xs, f"{vm}/name") if vm else None) or domain_name
    vm_uuid = (read_str(xs, f"{vm}/uuid") if vm else None) or ""
    xapi = {}
    if vm_uuid:
        private = f"/xapi/{vm_uuid}/private/vif/{devid}"
        for xs_key, node in (("xs-vif-uuid", "vif-uuid"), ("xs-network-uuid", "network-uuid")):
            value = read_str(xs, f"{private}/{node}")
            if value:
                xapi[xs_key] = value
        if xapi:
            xapi["xs-vm-uuid"] = vm_uuid
    return VifConfig(
        domid=domid,
        devid=devid,
        backend=backend,
        mac=mac,
        bridge=bridge,
        ips=ips,
        vifname=parse_ifname(vifname, "vifname") if vifname else None,
        mtu=parse_mtu(mtu) if mtu else None,
        vm_name=vm_name,
        vm_uuid=vm_uuid,
        domain_name=domain_name,
        xapi=xapi,
    )
