"""What libxl asked for, decoded from the arguments and environment exactly as Xen's
vif-common.sh decodes them (so the hook is a drop-in for vif-openvswitch)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import XvifError

ACTIONS = ("online", "offline", "add", "remove")
_BACKEND = re.compile(r"^/local/domain/(\d+)/backend/vif/(\d+)/(\d+)$")
_TAP = re.compile(r"^x?vif(\d+)\.(\d+)-emu$")


class HotplugUsageError(XvifError):
    """The hook was run without what libxl always passes (action, vif, XENBUS_PATH)."""


@dataclass(frozen=True)
class HotplugRequest:
    action: str  # online | offline | add | remove
    tap: bool  # the HVM emulated twin (type_if=tap), not the PV vif
    dev: str  # the device as created (vif5.0, xvif5.0, vif5.0-emu)
    xenbus_path: str  # the vif's backend node
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
    if type_if == "tap":
        dev = variables.get("INTERFACE", "")
        m = _TAP.match(dev)
        if not m:
            raise HotplugUsageError(f"INTERFACE={dev!r}: a tap must be named vifDOMID.DEVID-emu")
        domid, devid = int(m.group(1)), int(m.group(2))
        xenbus_path = f"/local/domain/0/backend/vif/{domid}/{devid}"
    else:
        dev = variables.get("vif", "")
        xenbus_path = variables.get("XENBUS_PATH", "")
        if not dev:
            raise HotplugUsageError("the environment has no vif=DEVICE (libxl sets it, e.g. vif=vif5.0)")
        m = _BACKEND.match(xenbus_path)
        if not m:
            raise HotplugUsageError(
                f"XENBUS_PATH={xenbus_path!r}: expected /local/domain/0/backend/vif/DOMID/DEVID (libxl sets it)"
            )
        domid, devid = int(m.group(2)), int(m.group(3))
    return HotplugRequest(action, type_if == "tap", dev, xenbus_path, domid, devid)
