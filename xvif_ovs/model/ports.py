"""Which ports of a bridge are trusted, and as what. The rules live here once, for the
controller (which gives flows) and the CLI (which shows and checks them).

Nothing is trusted without a name: a port is a vif when the hook's external ids say so
(or, for a port another hook added, when it has a vif's name; the join then also needs
its XenStore backend), an uplink only when declared (the controller's config, the OVSDB
marker below) or when it is a physical NIC or a bond of them, LOCAL when it is the
bridge's own internal port. Everything else is unmanaged: no forwarding at all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# `ovs-vsctl set Port PORT external_ids:xvif-uplink=true` declares PORT an uplink.
UPLINK_MARK = "xvif-uplink"
CONTROLLER_MARK = "xvif-ovs"  # Controller.external_ids: a controller row the controller made
MIRROR_MARK = "xvif-ovs-mirror"  # Mirror.external_ids: a mirror `xvif-ovs mirror add` made (removed with its ends)
_VIF_NAME = re.compile(r"^x?vif(\d+)\.(\d+)(-emu)?$")
SYSFS_NET = "/sys/class/net"
KINDS = ("local", "vif", "emu", "uplink", "unmanaged")


def is_physical_nic(name: str) -> bool:
    """A NIC has a device behind it in sysfs; a veth, tap, internal or patch port has none."""
    return os.path.exists(os.path.join(SYSFS_NET, name, "device"))


@dataclass(frozen=True)
class Iface:
    name: str
    type: str  # OVSDB Interface.type: "" or "system" for a kernel device, "internal", "patch", ...
    external_ids: Mapping[str, str]


@dataclass(frozen=True)
class Role:
    kind: str  # one of KINDS
    domid: int | None = None
    devid: int | None = None


def vif_role(iface: Iface) -> Role | None:
    """A vif by the hook's ids, or by Xen's device name (another hook added it)."""
    ids = iface.external_ids
    if "xvif-domid" in ids and "xvif-devid" in ids:
        try:
            kind = "emu" if ids.get("xvif-kind") == "emu" else "vif"
            return Role(kind, int(ids["xvif-domid"]), int(ids["xvif-devid"]))
        except ValueError:
            pass
    m = _VIF_NAME.match(iface.name)
    if m:
        return Role("emu" if m.group(3) else "vif", int(m.group(1)), int(m.group(2)))
    return None


def port_roles(
    bridge: str,
    port: str,
    port_ids: Mapping[str, str],
    ifaces: Sequence[Iface],
    declared: frozenset[str] = frozenset(),
    physical: Callable[[str], bool] = is_physical_nic,
) -> dict[str, Role]:
    """The role of each interface of one OVSDB Port. ``declared``: the port names the
    controller's config declares as uplinks of ``bridge``."""
    out: dict[str, Role] = {}
    for i in ifaces:
        if port == bridge and i.name == bridge and i.type == "internal":
            out[i.name] = Role("local")
        else:
            role = vif_role(i)
            if role is not None:
                out[i.name] = role
    rest = [i for i in ifaces if i.name not in out]
    if not rest:
        return out
    uplink = (
        port in declared
        or port_ids.get(UPLINK_MARK) == "true"
        or all(i.type in ("", "system") and physical(i.name) for i in rest)
    )
    for i in rest:
        out[i.name] = Role("uplink" if uplink else "unmanaged")
    return out


def unmanaged_problem(port: str, bridge: str) -> tuple[str, str]:
    """What is wrong with a port nobody declared, and the fix: (message, fix)."""
    return (
        f"port {port} on {bridge} is neither a vif nor a declared uplink: it gets no forwarding "
        "(its frames are dropped and counted)",
        f'declare it: `ovs-vsctl set Port {port} external_ids:{UPLINK_MARK}=true` (or uplinks = ["{port}"] '
        f"in [bridges.{bridge}] of the controller's config); or remove it: `ovs-vsctl del-port {bridge} {port}`",
    )


def unmanaged_hint(port: str, bridge: str) -> str:
    message, fix = unmanaged_problem(port, bridge)
    return f"{message}. Fix: {fix}"
