"""`xvif-ovs hotplug ACTION`: the body of deploy/vif-xvif-ovs.

Order matters for "a failure changes nothing": read and validate everything (XenStore,
the kernel device, OVSDB) first; then rename the device if vifname asks for it and bring
it up; then one OVSDB transaction; then report `connected`. Any error before the
transaction leaves OVSDB untouched; the link's flags, MTU and name are put back if the
transaction or the report fails; the error goes to hotplug-error as Xen's scripts write it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence

from pyxs import Client

from ..errors import XvifError
from ..ovsdb.client import Ovsdb
from ..xenstore.client import XenStoreUnavailable, connect, in_transaction, read_str, write
from . import netdev, ovsport
from .log import HotplugLog, safe_name
from .request import HotplugRequest, HotplugUsageError, parse_request
from .vifconfig import VifConfig, read_vif


def run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    log = HotplugLog(env)
    t0 = time.monotonic()
    try:
        req = parse_request(argv, env)
    except HotplugUsageError as e:
        log.error(str(e))
        return 1
    if not req.applies:
        return 0  # vif-common.sh: online/offline is for the vif, add/remove for the tap
    where = f"{req.action} {req.dev} (domid {req.domid} devid {req.devid})"

    def took() -> str:  # every outcome's line ends with it: metrics read the hook's time from the log
        return f"({(time.monotonic() - t0) * 1000:.0f} ms)"

    try:
        with connect(env.get("XENSTORED_PATH")) as xs:
            # The guest's name too, so that its lines are found by it (`xvif-ovs log --domain`).
            with contextlib.suppress(Exception):
                name = safe_name(read_str(xs, f"/local/domain/{req.domid}/name"))
                if name != "?":
                    where = f"{req.action} {req.dev} (domid {req.domid} devid {req.devid} domain {name})"
            try:
                summary = _attach(xs, req, env) if req.attach else _detach(xs, req, env)
            except XvifError as e:
                log.error(f"{where}: {e} {took()}")
                if req.attach:
                    _report_error(xs, req, str(e))
                return 1
            except Exception as e:  # noqa: BLE001 - libxl must hear "error" now, not time out in 40 s
                log.error(f"{where}: unexpected {type(e).__name__}: {e} {took()}")
                if req.attach:
                    _report_error(xs, req, f"internal error ({type(e).__name__}: {e}); see xen-hotplug.log")
                return 1
    except XenStoreUnavailable as e:
        log.error(f"{where}: {e} {took()}")
        return 1
    log.info(f"{where} {summary} {took()}")
    return 0


def _attach(xs: Client, req: HotplugRequest, env: Mapping[str, str]) -> str:
    cfg = read_vif(xs, req.xenbus_path, req.domid, req.devid)
    target = cfg.device_name(req.tap, req.dev)
    renamed = False
    if not netdev.exists(req.dev) and not netdev.exists(target):
        raise netdev.NetdevError(
            f"device {req.dev} does not exist: netback (or QEMU, for the -emu tap) creates it before the hook runs"
        )
    with Ovsdb(env.get("XVIF_OVSDB")) as db:
        # Checked before the rename so that a bad vif leaves even the kernel as it was.
        def vif_exists(domid: int, devid: int) -> bool:
            return xs.exists(f"/local/domain/0/backend/vif/{domid}/{devid}".encode())

        ovsport.check(db, ovsport.read_snapshot(db, cfg.bridge.name, target, cfg.mac), cfg, vif_exists)
        old_mtu = netdev.get_mtu(req.dev if netdev.exists(req.dev) else target)
        old_flags = netdev.flags(req.dev if netdev.exists(req.dev) else target)
        attached = False
        try:
            if target != req.dev and netdev.exists(req.dev):
                netdev.rename(req.dev, target)
                renamed = True
            if cfg.mtu:
                netdev.set_mtu(target, cfg.mtu)
            # Up, and promiscuous as OVS would make it, before the port exists:
            # ovs-vswitchd sets IFF_PROMISC by reading and rewriting the device's flags,
            # and an IFF_UP set between its read and its write was lost (1 in a few
            # hundred concurrent boots left a vif down). Already promiscuous, the device
            # needs no rewrite at all, which spares ovs-vswitchd a reconfigure.
            netdev.set_up(target, promisc=True)
            ofport = ovsport.attach(db, cfg, target, req.tap, vif_exists)
            attached = True

            def report(c: Client) -> None:
                write(c, f"{req.xenbus_path}/{'ofport-emu' if req.tap else 'ofport'}", str(ofport))
                if not req.tap:  # libxl and netback wait for this; the tap's script reports by exit status
                    if c.exists(f"{req.xenbus_path}/hotplug-error".encode()):
                        c.delete(f"{req.xenbus_path}/hotplug-error".encode())
                    write(c, f"{req.xenbus_path}/hotplug-status", "connected")

            in_transaction(xs, report)
        except BaseException:
            # Undo in reverse: the port, the MTU, the name. Best effort; the error that
            # brought us here is the one to report.
            with contextlib.suppress(Exception):
                if attached:
                    ovsport.detach(db, [target], req.domid, req.devid, req.tap)
            with contextlib.suppress(Exception):
                if cfg.mtu and old_mtu:
                    netdev.set_mtu(target, old_mtu)
            with contextlib.suppress(Exception):
                if renamed:
                    netdev.rename(target, req.dev)  # (takes it down first)
            with contextlib.suppress(Exception):
                netdev.restore(req.dev if renamed else target, old_flags)
            raise
    port = f"port {target} " if target != req.dev else ""
    return f"{port}bridge={cfg.bridge.name} {_vlans(cfg)} mac={cfg.mac} ofport={ofport}: connected"


def _detach(xs: Client, req: HotplugRequest, env: Mapping[str, str]) -> str:
    # The backend node may already be half gone; the device name is all we need then.
    vifname = read_str(xs, f"{req.xenbus_path}/vifname")
    names = [req.dev]
    if vifname:
        names.append(f"{vifname}-emu" if req.tap else vifname)
    with Ovsdb(env.get("XVIF_OVSDB")) as db:
        removed = ovsport.detach(db, names, req.domid, req.devid, req.tap)
    for name in removed:
        if netdev.exists(name):
            netdev.set_up(name, False, promisc=False)
    key = f"{req.xenbus_path}/{'ofport-emu' if req.tap else 'ofport'}".encode()
    if xs.exists(key):
        xs.delete(key)
    return f"removed {', '.join(removed)}" if removed else "not on any bridge: nothing to do"


def _vlans(cfg: VifConfig) -> str:
    b = cfg.bridge
    if b.vlan_mode == "access":
        return f"vlan=access:{b.tag}" if b.tag is not None else "vlan=untagged"
    if b.vlan_mode == "trunk":
        return f"vlan=trunk:{','.join(map(str, b.trunks))}"
    return f"vlan=native:{b.tag}+trunk:{','.join(map(str, b.trunks))}"


def _report_error(xs: Client, req: HotplugRequest, message: str) -> None:
    """As Xen's fatal(): hotplug-error = message, hotplug-status = error."""
    try:

        def report(c: Client) -> None:
            write(c, f"{req.xenbus_path}/hotplug-error", message)
            write(c, f"{req.xenbus_path}/hotplug-status", "error")

        in_transaction(xs, report)
    except Exception:  # noqa: BLE001 - the error is already logged; XenStore may be the problem
        pass
