"""The hook's reading of libxl's arguments and environment (libxl_linux.c, Xen 4.17)."""

from __future__ import annotations

import pytest

from xvif_ovs.hotplug.request import HotplugUsageError, parse_request

# Exactly what libxl 4.17's get_hotplug_env sets for vif 5.0 of a PV guest.
LIBXL_PV = {
    "script": "/etc/xen/scripts/vif-xvif-ovs",
    "XENBUS_TYPE": "vif",
    "XENBUS_PATH": "backend/vif/5/0",
    "XENBUS_BASE_PATH": "backend",
    "netdev": "",
    "vif": "vif5.0",
}
# ... and for NIC 1 of an HVM guest, which has an emulated twin: both names on both calls.
LIBXL_HVM = {**LIBXL_PV, "XENBUS_PATH": "backend/vif/7/1", "vif": "vif7.1", "INTERFACE": "vif7.1-emu"}


def test_libxl_relative_xenbus_path_is_the_vif_under_dom0() -> None:
    req = parse_request(["online", "type_if=vif"], LIBXL_PV)
    assert (req.action, req.tap, req.dev, req.domid, req.devid) == ("online", False, "vif5.0", 5, 0)
    assert req.xenbus_path == "/local/domain/0/backend/vif/5/0"
    assert req.applies


def test_absolute_xenbus_path_still_accepted() -> None:
    req = parse_request(["offline"], {**LIBXL_PV, "XENBUS_PATH": "/local/domain/0/backend/vif/5/0"})
    assert req.xenbus_path == "/local/domain/0/backend/vif/5/0" and not req.attach


def test_hvm_nic_calls() -> None:
    pv = parse_request(["online", "type_if=vif"], LIBXL_HVM)
    tap = parse_request(["add", "type_if=tap"], LIBXL_HVM)
    assert (pv.dev, pv.tap, pv.applies) == ("vif7.1", False, True)
    assert (tap.dev, tap.tap, tap.applies) == ("vif7.1-emu", True, True)
    assert tap.xenbus_path == pv.xenbus_path == "/local/domain/0/backend/vif/7/1"
    # vif-common.sh: online for a tap and add for a vif are no-ops.
    assert not parse_request(["online", "type_if=tap"], LIBXL_HVM).applies
    assert not parse_request(["add", "type_if=vif"], LIBXL_HVM).applies


def test_tap_without_xenbus_path_is_named_by_interface() -> None:
    req = parse_request(["remove", "type_if=tap"], {"INTERFACE": "vif9.2-emu"})
    assert (req.domid, req.devid, req.xenbus_path) == (9, 2, "/local/domain/0/backend/vif/9/2")


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (["online"], {**LIBXL_PV, "XENBUS_PATH": "/somewhere/else"}, "expected backend/vif/DOMID/DEVID"),
        (["online"], {**LIBXL_PV, "XENBUS_PATH": "backend/vbd/5/0"}, "expected backend/vif/DOMID/DEVID"),
        (["online"], {**LIBXL_PV, "XENBUS_PATH": "/local/domain/3/backend/vif/5/0"}, "expected"),
        (["online"], {k: v for k, v in LIBXL_PV.items() if k != "XENBUS_PATH"}, "no XENBUS_PATH"),
        (["online"], {k: v for k, v in LIBXL_PV.items() if k != "vif"}, "no vif=DEVICE"),
        # The device and the XenStore node must name the same vif.
        (["online"], {**LIBXL_PV, "vif": "vif6.0"}, "is vif 5.0 but the device is vif6.0"),
        (["add", "type_if=tap"], {**LIBXL_HVM, "INTERFACE": "vif8.1-emu"}, "is vif 7.1 but the device is vif8.1-emu"),
        (["add", "type_if=tap"], {**LIBXL_HVM, "INTERFACE": "tap0"}, "vifDOMID.DEVID-emu"),
        (["online", "type_if=bridge"], LIBXL_PV, "must be vif or tap"),
        (["frobnicate"], LIBXL_PV, "usage: vif-xvif-ovs"),
    ],
)
def test_refused_with_what_to_fix(argv: list[str], env: dict[str, str], says: str) -> None:
    with pytest.raises(HotplugUsageError, match=says):
        parse_request(argv, env)
