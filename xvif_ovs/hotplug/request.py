"""What libxl asked for, decoded from the arguments and environment exactly as Xen's
vif-common.sh decodes them (so the hook is a drop-in for vif-openvswitch)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import XvifError

ACTIONS = ("online", "offline", "add", "remove")
# libxl 4.17 (libxl_linux.c, get_hotplug_env) passes the backend path RELATIVE to the
# backend domain's home, "backend/vif/DOMID/DEVID"; xenstore-read resolves it there.
# An absolute path (older toolstacks, other callers) is accepted too.
_BACKEND = re.compile(r"^(?:/local/domain/0/)?backend/vif/(\d+)/(\d+)$")
_TAP = re.compile(r"^x?vif(\d+)\.(\d+)-emu$")
_VIF = re.compile(r"^x?vif(\d+)\.(\d+)$")
HOME = "/local/domain/0"  # the hook runs in dom0, the backend domain of its vifs


class HotplugUsageError(XvifError):
    """The hook was run without what libxl always passes (action, vif, XENBUS_PATH)."""


@dataclass(frozen=True)
class HotplugRequest:
    action: str  # online | offline | add | remove
    tap: bool  # the HVM emulated twin (type_if=tap), not the PV vif
    dev: str  # the device as created (vif5.0, xvif5.0, vif5.0-emu)
    xenbus_path: str  # the vif's backend node, absolute
    domid: int
    devid: int

    @property
    def attach(self) -> bool:
        return self.action in ("online", "add")

    @property
    def applies(self) -> bool:
        """vif-common.sh: a PV vif acts on online/offline, a tap on add/remove; else exit 0."""
        return (self.action in ("add", "remove")) == self.tap


def parse_request(argv: Sequence[str], env: Mapping[str, str]) -> HotplugRequest:
    variables = dict(env)
    positional = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key.isidentifier():
            variables[key] = value  # vif-common.sh's evalVariables
        else:
            positional.append(arg)
    if not positional or positional[0] not in ACTIONS:
        raise HotplugUsageError(f"usage: vif-xvif-ovs {'|'.join(ACTIONS)} (got {' '.join(argv) or 'nothing'})")
    action = positional[0]
    type_if = variables.get("type_if", "vif")
    if type_if not in ("vif", "tap"):
        raise HotplugUsageError(f"type_if={type_if!r}: must be vif or tap")
    # libxl sets XENBUS_PATH and vif= on both calls of an HVM NIC, INTERFACE= on both
    # too; the tap's own name is INTERFACE.
    path = variables.get("XENBUS_PATH", "")
    if type_if == "tap":
        dev = variables.get("INTERFACE", "")
        m = _TAP.match(dev)
        if not m:
            raise HotplugUsageError(f"INTERFACE={dev!r}: a tap must be named vifDOMID.DEVID-emu")
        domid, devid = int(m.group(1)), int(m.group(2))
    else:
        dev = variables.get("vif", "")
        if not dev:
            raise HotplugUsageError("the environment has no vif=DEVICE (libxl sets it, e.g. vif=vif5.0)")
        if not path:
            raise HotplugUsageError("the environment has no XENBUS_PATH (libxl sets it, e.g. backend/vif/5/0)")
        m = _VIF.match(dev)
        domid, devid = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    if path:
        b = _BACKEND.match(path)
        if not b:
            raise HotplugUsageError(
                f"XENBUS_PATH={path!r}: expected backend/vif/DOMID/DEVID, as libxl sets it "
                f"(or {HOME}/backend/vif/DOMID/DEVID)"
            )
        at = int(b.group(1)), int(b.group(2))
        if domid is not None and (domid, devid) != at:
            # The device and the XenStore node must be the same vif: the hook never acts
            # on one vif's port with another vif's keys.
            raise HotplugUsageError(f"XENBUS_PATH={path!r} is vif {at[0]}.{at[1]} but the device is {dev}")
        domid, devid = at
    assert domid is not None and devid is not None
    xenbus_path = f"{HOME}/backend/vif/{domid}/{devid}"
    return HotplugRequest(action, type_if == "tap", dev, xenbus_path, domid, devid)
