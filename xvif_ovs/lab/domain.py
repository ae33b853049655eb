"""`lab domain add / del / migrate`: what libxl does when a guest boots, is destroyed or
migrates within the host.

The guest is a network namespace whose ethN is the vif's frontend; the backend is a
veth end in dom0 named as Xen names it. XenStore gets libxl's keys, then the vif's
hotplug script runs with libxl's arguments and environment, and the lab waits for
``hotplug-status`` as netback does. A failure at any step undoes every earlier one.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import re
import shlex
import subprocess
import uuid
from pathlib import Path

from ..errors import LabError, VifSpecError
from ..model.vifspec import XEN_OUI, VifSpec, format_ip, parse_vif_spec
from ..xenstore.client import connect, in_transaction, read_str
from ..xenstore.client import write as xs_write
from ..xenstore.protocol import Op
from .host import Lab
from .sh import link_exists, run
from .state import DomainRec, LabState, VifRec, netns_of

XEN_SCRIPT_DIR = Path(os.environ.get("XEN_SCRIPT_DIR", "/etc/xen/scripts"))
DEFAULT_SCRIPT = "vif-xvif-ovs"
# The hook as the package ships it, for hosts where it is not installed in XEN_SCRIPT_DIR.
PACKAGED_HOOK = Path(__file__).resolve().parent.parent / "hotplug" / "vif-xvif-ovs"
HOTPLUG_TIMEOUT = 40  # LIBXL_HOTPLUG_TIMEOUT
NETBACK_MAC = "fe:ff:ff:ff:ff:ff"  # netback gives every backend vif this MAC
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,40}$")
DOMID_MAX = 0x7FEF  # DOMID_FIRST_RESERVED - 1


def random_mac() -> str:
    """As xl does without mac=: Xen's OUI, locally random (the lab is its own registry)."""
    return XEN_OUI + "".join(f":{random.randrange(256):02x}" for _ in range(3))


def resolve_script(script: str | None) -> str:
    name = script or DEFAULT_SCRIPT
    path = Path(name) if name.startswith("/") else XEN_SCRIPT_DIR / name
    if name == DEFAULT_SCRIPT and not path.exists():
        path = PACKAGED_HOOK
    if not os.access(path, os.X_OK):
        raise LabError(f"hotplug script {path} does not exist or is not executable; install it or fix script=")
    return str(path)


def add_domain(lab: Lab, name: str, domid: int, specs: list[str], hvm: bool = False, netbsd: bool = False) -> DomainRec:
    lab.require_up()
    if not _NAME.match(name) or name == "lan" or name.startswith("lan-"):
        raise LabError(f"domain name {name!r}: use 1-40 of A-Z a-z 0-9 _ . - (and not 'lan', which is the LAN side)")
    if not 1 <= domid <= DOMID_MAX:
        raise LabError(f"domid {domid} is out of range: guests have 1-{DOMID_MAX} (0 is dom0)")
    _check_unique(lab.state_file.load(), name, domid)  # early, for the clearest error
    planned = _plan_vifs(lab, specs, domid, hvm, netbsd)
    dom = DomainRec(name, domid, str(uuid.uuid4()), hvm, netbsd, [v for v, _ in planned])
    by_devid = {v.devid: spec for v, spec in planned}
    with lab.state_file.locked() as st:
        _check_unique(st, name, domid)  # again under the lock: a concurrent add may have won
        st.domains[name] = dom  # reserved: a concurrent add of the same name or domid fails
    try:
        _build(lab, dom, by_devid)
    except BaseException as e:
        # As libxl does on a failed boot: run the scripts' offline/remove, then undo the rest.
        _teardown(lab, dom, strict=False)
        with lab.state_file.locked() as st:
            st.domains.pop(name, None)
        if isinstance(e, VifSpecError):
            raise LabError(str(e)) from e
        raise
    return dom


def _check_unique(st: LabState, name: str, domid: int) -> None:
    if name in st.domains:
        raise LabError(f"a domain named {name} already exists (domid {st.domains[name].domid})")
    clash = next((d for d in st.domains.values() if d.domid == domid), None)
    if clash:
        raise LabError(f"domid {domid} is already used by domain {clash.name}")


def _plan_vifs(lab: Lab, specs: list[str], domid: int, hvm: bool, netbsd: bool) -> list[tuple[VifRec, VifSpec]]:
    """Check every vif before anything is made, so a bad one leaves the host untouched."""
    state = lab.state_file.load()
    parsed: list[tuple[int, VifSpec, str]] = []
    for i, text in enumerate(specs):
        try:
            spec = parse_vif_spec(text)
        except VifSpecError as e:
            raise LabError(f"--vif {text!r}: {e}") from e
        devid = spec.devid if spec.devid is not None else i
        parsed.append((devid, spec, text))
    devids = [d for d, _, _ in parsed]
    if len(set(devids)) != len(devids):
        raise LabError(f"two vifs of the domain have the same devid ({devids})")
    out = []
    for devid, spec, text in parsed:
        if state.bridge(spec.bridge.name) is None:
            known = ", ".join(b.name for b in state.bridges) or "none"
            raise LabError(
                f"bridge {spec.bridge.name} does not exist in the lab (bridges: {known}); "
                f"add it with `lab up --bridge {spec.bridge.name}:pethN` or `--internal {spec.bridge.name}`"
            )
        dev = f"{'x' if netbsd else ''}vif{domid}.{devid}"
        for taken in (dev, spec.vifname):
            if taken and link_exists(taken):
                raise LabError(f"an interface named {taken} already exists on this host")
        rec = (
            VifRec(
                devid=devid,
                dev=dev,
                frontend=f"eth{devid}",
                mac=spec.mac or random_mac(),
                bridge=spec.raw.get("bridge", spec.bridge.name),
                script=resolve_script(spec.script),
                emu=f"{dev}-emu" if hvm else None,
                emu_frontend=f"emu{devid}" if hvm else None,
                vifname=spec.vifname,
                spec=text,
            ),
            spec,
        )
        out.append(rec)
    return out


def _build(lab: Lab, dom: DomainRec, specs: dict[int, VifSpec]) -> None:
    ns = dom.netns
    run(["ip", "netns", "add", ns])
    run(["ip", "link", "set", "lo", "up"], netns=ns)
    for v in dom.vifs:
        spec = specs[v.devid]
        _make_nic(ns, v.dev, v.frontend, v.mac, spec, up=True)
        if v.emu:
            # The emulated twin shares the MAC; the guest's PV driver has taken over, so it is down.
            _make_nic(ns, v.emu, v.emu_frontend, v.mac, spec, up=False)
    bridges = {b.name: b for b in lab.state_file.load().bridges}
    for v in dom.vifs:  # a guest on a NAT network routes through its gateway, as vif-nat's DHCP tells it
        rec = bridges.get(specs[v.devid].bridge.name)
        if (
            rec is not None
            and rec.mode == "nat"
            and rec.nat_gateway
            and any(i.version == 4 for i in specs[v.devid].ips)
        ):
            run(["ip", "route", "add", "default", "via", rec.nat_gateway, "dev", v.frontend], netns=ns)
    _write_xenstore(lab, dom, specs)
    for v in dom.vifs:
        # libxl's order (libxl_device.c, device_hotplug: num_exec 0 then 1): the PV vif's
        # `online`, then the emulated tap's `add`.
        _run_script(lab, dom, v, "online", tap=False)
        if v.emu:
            _run_script(lab, dom, v, "add", tap=True)


def _make_nic(ns: str, dev: str, frontend: str, mac: str, spec: VifSpec, up: bool) -> None:
    run(["ip", "link", "add", dev, "type", "veth", "peer", "name", frontend, "netns", ns])
    run(["ip", "link", "set", dev, "address", NETBACK_MAC])
    # On Xen the kernel datapath takes every frame of a port; OVS's userspace datapath here
    # reads them with AF_PACKET and dom0's stack sees them too. It must not answer a guest's
    # ARP for one of dom0's own addresses (a routed or NAT guest's gateway) from this device.
    Path(f"/proc/sys/net/ipv4/conf/{dev}/arp_ignore").write_text("8")
    if spec.mtu:
        run(["ip", "link", "set", dev, "mtu", str(spec.mtu)])
        run(["ip", "link", "set", frontend, "mtu", str(spec.mtu)], netns=ns)
    run(["ip", "link", "set", frontend, "address", mac], netns=ns)
    if up:  # the emulated twin is idle: the guest's addresses are on the PV NIC
        _nic_up(ns, frontend, spec)


def _nic_up(ns: str, frontend: str, spec: VifSpec) -> None:
    for ip in spec.ips:
        iface = ip if ip.network.prefixlen != ip.max_prefixlen else f"{ip.ip}/{24 if ip.version == 4 else 64}"
        cmd = ["ip", "addr", "add", str(iface), "dev", frontend]
        run(cmd + (["nodad"] if ip.version == 6 else []), netns=ns)
    run(["ip", "link", "set", frontend, "up"], netns=ns)


def _backend_path(domid: int, devid: int) -> str:
    return f"/local/domain/0/backend/vif/{domid}/{devid}"


def _write_xenstore(lab: Lab, dom: DomainRec, specs: dict[int, VifSpec]) -> None:
    n = dom.domid
    vm = f"/vm/{dom.uuid}"
    with connect(str(lab.xenstore_socket)) as xs:

        def write(c) -> None:  # noqa: ANN001
            w = functools.partial(xs_write, c)
            w(f"/local/domain/{n}/name", dom.name)
            w(f"/local/domain/{n}/domid", n)
            w(f"/local/domain/{n}/vm", vm)
            w(f"{vm}/name", dom.name)
            w(f"{vm}/uuid", dom.uuid)
            for v in dom.vifs:
                spec = specs[v.devid]
                be, fe = _backend_path(n, v.devid), f"/local/domain/{n}/device/vif/{v.devid}"
                for k, val in (("backend", be), ("backend-id", 0), ("state", 1), ("handle", v.devid), ("mac", v.mac)):
                    w(f"{fe}/{k}", val)
                keys = {
                    "frontend": fe,
                    "frontend-id": n,
                    "online": 1,
                    "state": 1,
                    "script": v.script,
                    "mac": v.mac,
                    "bridge": v.bridge,
                    "handle": v.devid,
                    "type": "vif_ioemu" if v.emu else "vif",
                }
                if spec.ips:
                    keys["ip"] = " ".join(format_ip(i) for i in spec.ips)
                for k in ("vifname", "mtu", "vlan", "gatewaydev"):
                    if k in spec.raw:
                        keys[k] = spec.raw[k]
                # libxl 4.17 writes `trusted` under the frontend only ("1" unless xl's trusted=0).
                w(f"{fe}/trusted", 1 if spec.raw.get("trusted", "1") == "1" else 0)
                if spec.mtu:
                    w(f"{fe}/mtu", spec.mtu)
                for k, val in keys.items():
                    w(f"{be}/{k}", val)
                w(f"{be}/hotplug-status", "")

        in_transaction(xs, write)
        xs.introduce_domain(n, 0, 1)


def _script_env(lab: Lab, dom: DomainRec, v: VifRec, tap: bool) -> tuple[list[str], dict[str, str]]:
    """libxl 4.17's arguments after the action, and its environment, exactly
    (libxl_linux.c: libxl__hotplug_nic and get_hotplug_env): XENBUS_PATH relative to the
    backend domain's home; vif= and, for a NIC with an emulated twin, INTERFACE= on both
    calls; `type_if=vif` or `type_if=tap` as an argument."""
    env = {
        **lab.hook_env(),
        "script": v.script,
        "XENBUS_TYPE": "vif",
        "XENBUS_PATH": f"backend/vif/{dom.domid}/{v.devid}",
        "XENBUS_BASE_PATH": "backend",
        "netdev": _gatewaydev(lab, dom, v),
        "vif": v.dev,
    }
    if v.emu:
        env["INTERFACE"] = v.emu
    return [f"type_if={'tap' if tap else 'vif'}"], env


def _gatewaydev(lab: Lab, dom: DomainRec, v: VifRec) -> str:
    """libxl reads gatewaydev from the backend for every call ("" when absent)."""
    with connect(str(lab.xenstore_socket)) as xs:
        return read_str(xs, f"{_backend_path(dom.domid, v.devid)}/gatewaydev") or ""


def _run_script(lab: Lab, dom: DomainRec, v: VifRec, action: str, tap: bool) -> None:
    extra, env = _script_env(lab, dom, v, tap)
    argv = [v.script, action, *extra]
    try:
        proc = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=HOTPLUG_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"hotplug script `{shlex.join(argv)}` did not finish within {HOTPLUG_TIMEOUT} s") from e
    except OSError as e:  # the script vanished or lost its exec bit since the domain was made
        raise LabError(f"cannot run hotplug script {v.script}: {e.strerror}") from e
    be = _backend_path(dom.domid, v.devid)
    if action not in ("online", "add"):
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise LabError(f"hotplug script {v.script} {action} for {v.emu if tap else v.dev} failed: {why}")
        return
    with connect(str(lab.xenstore_socket)) as xs:
        status = read_str(xs, f"{be}/hotplug-status", "")
        error = read_str(xs, f"{be}/hotplug-error", "")
    if proc.returncode != 0 or (not tap and status != "connected"):
        dev = v.emu if tap else v.dev
        why = error or (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise LabError(f"hotplug script {v.script} {action} for {dev} failed (hotplug-status {status!r}): {why}")


def migrate_domain(lab: Lab, name: str, new_domid: int) -> DomainRec:
    """`xl migrate NAME localhost`, as libxl does it to the network: the incoming domain
    (NAME--incoming, a new domid, the same UUID and NICs) is made while the old one still
    runs, its vifs go online (the hooks see the same VM's MAC already on the bridge); then
    the old domain is suspended, the new one resumes (netfront announces itself with a
    gratuitous ARP, as netfront_resume does), and the old one is destroyed (offline) and
    the new one renamed NAME. The guest's processes do not move: the new domain is a new
    namespace (NAME@DOMID), as the new domain is a new guest kernel on Xen."""
    state = lab.require_up()
    old = state.domains.get(name)
    if old is None:
        raise LabError(f"no domain named {name} (domains: {', '.join(state.domains) or 'none'})")
    if old.hvm:
        raise LabError(f"{name} is an HVM guest: the lab migrates PV guests only")
    named = [v.vifname for v in old.vifs if v.vifname]
    if named:
        # Xen has the same limit on one host: both domains' vifs would need that name.
        raise LabError(f"{name} has vifname={named[0]}: a vif named in its spec cannot migrate within one host")
    if any(not v.spec for v in old.vifs):
        raise LabError(f"{name} was made by an older xvif-ovs lab: destroy it and add it again to migrate it")
    if not 1 <= new_domid <= DOMID_MAX:
        raise LabError(f"domid {new_domid} is out of range: guests have 1-{DOMID_MAX} (0 is dom0)")
    incoming = f"{name}--incoming"
    _check_unique(state, incoming, new_domid)
    prefix = "xvif" if old.netbsd else "vif"
    vifs = [dataclasses.replace(v, dev=f"{prefix}{new_domid}.{v.devid}") for v in old.vifs]
    # Its own namespace, named for the domid with a character no domain name has, so that
    # it is never a namespace another domain (or an earlier migration of this one) holds.
    new = DomainRec(incoming, new_domid, old.uuid, old.hvm, old.netbsd, vifs, ns=f"{netns_of(name)}@{new_domid}")
    if Path(f"/run/netns/{new.netns}").exists():
        raise LabError(f"namespace {new.netns} exists already: remove it (ip netns del {new.netns}) and try again")
    specs = {v.devid: parse_vif_spec(v.spec) for v in vifs}
    with lab.state_file.locked() as st:
        _check_unique(st, incoming, new_domid)
        st.domains[incoming] = new
    try:
        run(["ip", "netns", "add", new.netns])
        run(["ip", "link", "set", "lo", "up"], netns=new.netns)
        for v in vifs:  # paused: netfront has not connected yet
            _make_nic(new.netns, v.dev, v.frontend, v.mac, specs[v.devid], up=False)
            run(["sysctl", "-qw", f"net.ipv4.conf.{v.frontend}.arp_notify=1"], netns=new.netns)
        _write_xenstore(lab, new, specs)
        for v in vifs:
            _run_script(lab, new, v, "online", tap=False)
    except BaseException:
        _teardown(lab, new, strict=False, keep_vm=True)  # the old domain runs on, untouched
        with lab.state_file.locked() as st:
            st.domains.pop(incoming, None)
        raise
    for v in old.vifs:  # suspended
        run(["ip", "link", "set", v.frontend, "down"], netns=old.netns)
    for v in vifs:  # resumed
        _nic_up(new.netns, v.frontend, specs[v.devid])
    try:
        _teardown(lab, old, strict=True, keep_vm=True)
    finally:
        with connect(str(lab.xenstore_socket)) as xs:

            def rename(c) -> None:  # noqa: ANN001
                xs_write(c, f"/local/domain/{new_domid}/name", name)
                xs_write(c, f"/vm/{new.uuid}/name", name)

            in_transaction(xs, rename)
        with lab.state_file.locked() as st:
            st.domains.pop(name, None)
            st.domains.pop(incoming, None)
            new.name = name
            st.domains[name] = new
    return new


def del_domain(lab: Lab, name: str) -> None:
    state = lab.require_up()
    dom = state.domains.get(name)
    if dom is None:
        raise LabError(f"no domain named {name} (domains: {', '.join(state.domains) or 'none'})")
    try:
        _teardown(lab, dom, strict=True)
    finally:
        # Every step ran even if one failed: the domain is gone either way.
        with lab.state_file.locked() as st:
            st.domains.pop(name, None)


def _teardown(lab: Lab, dom: DomainRec, strict: bool, keep_vm: bool = False) -> None:
    """Undo add_domain as far as it got; every step tolerates a missing piece.
    ``strict``: report what failed (for `domain del`), after doing every step anyway.
    ``keep_vm``: leave /vm/UUID, which the other domain of a migration still uses."""
    errors: list[str] = []
    for v in dom.vifs:
        for action, tap in (("offline", False), ("remove", True)) if v.emu else (("offline", False),):
            try:
                _run_script(lab, dom, v, action, tap)
            except LabError as e:
                errors.append(str(e))
        for dev in (v.dev, v.vifname, v.emu, f"{v.vifname}-emu" if (v.vifname and v.emu) else None):
            if dev and link_exists(dev):
                run(["ip", "link", "del", dev], check=False)
    try:
        with connect(str(lab.xenstore_socket)) as xs:

            def rm(c) -> None:  # noqa: ANN001
                vm = () if keep_vm else (f"/vm/{dom.uuid}",)
                for p in (f"/local/domain/0/backend/vif/{dom.domid}", f"/local/domain/{dom.domid}", *vm):
                    if c.exists(p.encode()):
                        c.delete(p.encode())

            in_transaction(xs, rm)
            if xs.is_domain_introduced(dom.domid):
                xs.ack(Op.RELEASE, f"{dom.domid}".encode() + b"\0")  # pyxs's release_domain wants xenbus
    except Exception as e:  # noqa: BLE001 - teardown goes on; the error is reported below
        errors.append(f"XenStore clean-up: {e}")
    run(["ip", "netns", "del", dom.netns], check=False)
    if errors and strict:
        raise LabError("; ".join(errors))
