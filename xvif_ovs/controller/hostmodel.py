"""Joining XenStore (what each vif is), OVSDB (which port it is on) and OpenFlow (its
ofport and link) into one BridgeModel per bridge. Pure, so the rules for what gets flows
are unit-tested; what cannot be used is reported with what to fix."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import NamedTuple

from ..errors import VifSpecError
from ..model.host import ALL_VLANS, BridgeModel, NatSpec, PortForward, Uplink, VifModel, migrating
from ..model.ports import unmanaged_hint
from ..model.vifspec import parse_ips, parse_mac, vif_vlans
from .config import Config, NatPolicy
from .dhcp import NAT_IP_KEY
from .ovsdb_monitor import BridgeInfo, PortInfo


class OfPort(NamedTuple):
    """A tuple, not a frozen dataclass: thousands are made on every pass, and a frozen
    dataclass's __init__ costs several times a tuple's."""

    number: int
    live: bool


def vif_from_xenstore(keys: dict[str, str], domid: int, devid: int, name: str, cfg: Config) -> VifModel:
    """Raises VifSpecError (with what to fix) for a vif that cannot be given flows."""
    if "mac" not in keys:
        raise VifSpecError(f"vif {domid}.{devid} has no mac in XenStore")
    mac = parse_mac(keys["mac"])
    vlans = vif_vlans(keys.get("bridge"), keys.get("vlan"))
    return VifModel(
        domid=domid,
        devid=devid,
        mac=mac,
        vlans=vlans,
        # ip= as libxl wrote it; on a NAT bridge, without one, the address the controller
        # gave it for DHCP (dhcp.py), which port security then enforces.
        ips=parse_ips(keys.get("ip") or keys.get(NAT_IP_KEY, "")),
        # Not libxl's `trusted` (XSA-403: the frontend's trust in its backend, written under
        # the frontend); a router VM is named in the config or marked with our own key in
        # the backend node, which only dom0 can write.
        trusted=keys.get(TRUSTED_KEY) == "1" or cfg.matches(cfg.trusted_vifs, name, domid, devid),
        private=cfg.matches(cfg.private_vifs, name, domid, devid),
        name=name,
    )


# The XenStore keys that shape a vif's flows; the rest (hotplug-status, ofport, ...) do not.
TRUSTED_KEY = "xvif-trusted"  # backend/vif/D/N/xvif-trusted = 1: may serve DHCP and send RAs
_RELEVANT = ("mac", "bridge", "vlan", "ip", TRUSTED_KEY, NAT_IP_KEY)


class Joiner:
    """The join's state between passes, in one object whose size follows what exists: per
    vif (by domid.devid) its last keys and model, per bridge its last join. Nothing is
    keyed on object identity; nothing grows with the number of changes."""

    def __init__(self) -> None:
        # (domid, devid) -> (keys dict, name, config, backends, relevant keys, model)
        self._vifs: dict[tuple[int, int], tuple] = {}
        self._joined: dict[str, _Joined] = {}

    def vif(
        self, keys: dict[str, str], domid: int, devid: int, name: str, cfg: Config, backends: dict[str, OfPort]
    ) -> VifModel:
        """The same VifModel object for an unchanged vif, pass after pass: parsing 4000 vifs'
        addresses took 250 ms, and an unchanged object is what lets the pipeline's per-vif
        state and the per-owner diff skip the vif at once."""
        v, e = backends.get("vif"), backends.get("emu")
        if v is not None and e is None and not v.live:
            # A PV vif's link state decides nothing (its frames go to it either way; only an
            # HVM pair chooses by it): a flapping link must not remake its model and flows.
            v = OfPort(v.number, True)
        ports = (v, e)
        last = self._vifs.get((domid, devid))
        if last is not None and last[0] is keys and last[1] == name and last[2] is cfg and last[3] == ports:
            return last[5]  # the very keys dict of the last pass: nothing about this vif changed
        relevant = tuple(keys.get(k) for k in _RELEVANT)
        if last is not None and (last[1], last[2], last[3], last[4]) == (name, cfg, ports, relevant):
            model = last[5]  # a new dict, the same values (another key was written)
        else:
            vif = vif_from_xenstore(keys, domid, devid, name, cfg)  # raises VifSpecError
            model = dataclasses.replace(
                vif,
                vif_port=v.number if v else None,
                emu_port=e.number if e else None,
                vif_live=v.live if v else False,
                emu_live=e.live if e else False,
            )
        self._vifs[(domid, devid)] = (keys, name, cfg, ports, relevant, model)
        return model

    def bridge_models(
        self,
        ovsdb: dict[str, BridgeInfo],
        of_ports: dict[str, dict[str, OfPort]],
        vifs: dict[tuple[int, int], dict[str, str]],
        names: dict[int, str],
        cfg: Config,
    ) -> tuple[dict[str, BridgeModel], list[str]]:
        """Models for the bridges that have an OpenFlow connection, and the problems found."""
        models: dict[str, BridgeModel] = {}
        problems: list[str] = []
        for bname, ports in of_ports.items():
            info = ovsdb.get(bname)
            if info is None:
                continue
            last = self._joined.get(bname)
            joined = _patched(self, last, info, ports, vifs, names, cfg) if last else None
            if joined is None:
                joined = _join(self, bname, info, ports, vifs, names, cfg)
            self._joined[bname] = joined
            models[bname] = joined.model
            problems += joined.problems
        # Bounded by what exists: vifs gone from XenStore, bridges without a connection.
        for key in self._vifs.keys() - vifs.keys():
            del self._vifs[key]
        for bname in self._joined.keys() - of_ports.keys():
            del self._joined[bname]
        return models, problems


def bridge_models(
    ovsdb: dict[str, BridgeInfo],
    of_ports: dict[str, dict[str, OfPort]],
    vifs: dict[tuple[int, int], dict[str, str]],
    names: dict[int, str],
    cfg: Config,
) -> tuple[dict[str, BridgeModel], list[str]]:
    """A join from nothing (the CLI's): pure, remembering nothing."""
    return Joiner().bridge_models(ovsdb, of_ports, vifs, names, cfg)


@dataclasses.dataclass
class _Joined:
    """One bridge's join and what it was made from, so that the next pass can redo only
    the vifs whose XenStore keys (or domain name) changed."""

    info: BridgeInfo
    ports: dict[str, OfPort]
    cfg: Config
    model: BridgeModel
    problems: list[str]
    inputs: dict[tuple[int, int], tuple]  # (domid, devid) -> (keys dict, name, backends)
    position: dict[tuple[int, int], int]  # where each vif that got flows is in model.vifs


_PATCH_AT_MOST = 16


def _patched(
    joiner: Joiner,
    last: _Joined,
    info: BridgeInfo,
    ports: dict[str, OfPort],
    vifs: dict[tuple[int, int], dict[str, str]],
    names: dict[int, str],
    cfg: Config,
) -> _Joined | None:
    """``last`` with the vifs whose keys changed redone, or None where a full join is
    needed: OVSDB or the ports changed, a vif appeared, vanished or became a problem, a
    MAC or a bridge changed (conflicts and problems are bridge-wide)."""
    if info is not last.info or ports is not last.ports or cfg is not last.cfg or last.model.routed:
        return None  # (a routed bridge's problems depend on each vif's addresses: join it all)
    changed = []
    for key, (keys, name, _backends) in last.inputs.items():
        if vifs.get(key) is not keys or names.get(key[0], "") != name:
            changed.append(key)
            if len(changed) > _PATCH_AT_MOST:
                return None
    if not changed:
        return last
    built = list(last.model.vifs)
    inputs = dict(last.inputs)
    bname = last.model.name
    for key in changed:
        pos, (old_keys, _, backends) = last.position.get(key), last.inputs[key]
        keys, name = vifs.get(key), names.get(key[0], "")
        if pos is None or old_keys is None or keys is None:
            return None
        try:
            vif = joiner.vif(keys, key[0], key[1], name, cfg, backends)
        except VifSpecError:
            return None
        old = built[pos]
        if vif.mac != old.mac or vif.vlans.name != bname or old.vlans.name != bname:
            return None
        if old.twin_ports or not old.forwards:
            return None  # one of a migrating NIC's vifs: the pair is the bridge's to make
        built[pos] = vif
        inputs[key] = (keys, name, backends)
    model = dataclasses.replace(last.model, vifs=tuple(built))
    return _Joined(info, ports, cfg, model, last.problems, inputs, last.position)


def _uplinks(by_port: dict[str, list[tuple[int, PortInfo]]]) -> tuple[tuple[int, ...], tuple[Uplink, ...]]:
    """Plain uplinks (one NIC, every VLAN) as ofports; bonds and uplinks with VLAN
    settings of their own as Uplink values."""
    plain, special = [], []
    for name, members in sorted(by_port.items()):
        numbers = tuple(sorted(n for n, _ in members))
        vlans = members[0][1].vlans
        if len(numbers) == 1 and vlans == ALL_VLANS:
            plain.append(numbers[0])
        else:
            special.append(Uplink(name, numbers, vlans))
    return tuple(sorted(plain)), tuple(special)


def _join(
    joiner: Joiner,
    bname: str,
    info: BridgeInfo,
    ports: dict[str, OfPort],
    vifs: dict[tuple[int, int], dict[str, str]],
    names: dict[int, str],
    cfg: Config,
) -> _Joined:
    problems: list[str] = []
    inputs: dict[tuple[int, int], tuple] = {}
    position: dict[tuple[int, int], int] = {}
    uplinks: dict[str, list[tuple[int, PortInfo]]] = {}  # OVSDB Port name -> (ofport, interface)
    members: dict[tuple[int, int], dict[str, OfPort]] = {}
    vm_uuids: dict[tuple[int, int], str] = {}  # the VM each vif belongs to (the hook's xen-vm-uuid)
    unmanaged: list[int] = []
    no_flows: dict[tuple[int, int], list[int]] = {}  # a vif's ports, until it is known to get flows
    taken: set[int] | None = None
    for p in info.ports:
        of = ports.get(p.name)
        if of is None and p.ofport_request and p.kind in ("vif", "emu") and p.domid is not None:
            # A vif the hook has just added, before ovs-vswitchd has created the port
            # (which takes it hundreds of ms on a big bridge): its flows go in now, for
            # the ofport the hook requested, so they are in place when its first frame
            # arrives. Not if another port holds that number; once the port exists its
            # real number is used.
            if taken is None:
                taken = {o.number for o in ports.values()}
            if p.ofport_request not in taken:
                of = OfPort(p.ofport_request, False)
        if of is None:
            continue
        if p.port_name in info.mirror_outputs:
            # A mirror's output (`xvif-ovs mirror add`): it receives only what OVS mirrors
            # to it. No flow forwards to it, and what it sends is dropped, as for a port
            # nobody vouches for (OVS itself drops that first).
            unmanaged.append(of.number)
            continue
        if p.kind == "uplink":
            uplinks.setdefault(p.port_name, []).append((of.number, p))
        elif p.kind in ("vif", "emu") and p.domid is not None and p.devid is not None:
            members.setdefault((p.domid, p.devid), {})[p.kind] = of
            if p.vm_uuid:
                vm_uuids[(p.domid, p.devid)] = p.vm_uuid
            no_flows.setdefault((p.domid, p.devid), []).append(of.number)
        elif p.kind == "unmanaged":
            unmanaged.append(of.number)
            problems.append(unmanaged_hint(p.port_name, bname))
    built: list[VifModel] = []
    seen_macs: dict[str, tuple[int, int]] = {}
    twins: dict[str, list[tuple[int, int]]] = {}  # MAC -> a migrating NIC's vifs, oldest first
    policy = cfg.bridge_policy.get(bname)
    mode = policy.mode if policy else "bridged"
    # On a routed or NAT bridge an address is a route: two guests (or a guest and dom0's
    # own addresses) must not claim one, or one would silently take the other's traffic.
    claimed: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
    if mode == "nat" and policy and policy.nat:
        claimed = [(ipaddress.ip_network(a), "dom0") for a in (policy.nat.gateway, policy.nat.address)]
    for (domid, devid), backends in sorted(members.items()):
        keys = vifs.get((domid, devid))
        inputs[(domid, devid)] = (keys, names.get(domid, ""), backends)
        if keys is None:
            problems.append(
                f"vif{domid}.{devid} on {bname} has no vif in XenStore: its traffic is dropped (stale port? remove it)"
            )
            continue
        try:
            vif = joiner.vif(keys, domid, devid, names.get(domid, ""), cfg, backends)
        except VifSpecError as e:
            problems.append(f"vif{domid}.{devid} on {bname}: {e}; its traffic is dropped until XenStore is fixed")
            continue
        if vif.vlans.name != bname:
            problems.append(
                f"vif{domid}.{devid} is on bridge {bname} but XenStore says bridge={keys.get('bridge')}: using {bname}"
            )
        other = seen_macs.get(vif.mac)
        if other is not None and _same_nic(vm_uuids, names, other, (domid, devid)):
            twins.setdefault(vif.mac, [other]).append((domid, devid))
            seen_macs[vif.mac] = (domid, devid)
        elif other is not None:
            dev = f"vif{domid}.{devid}"
            problems.append(
                f"MAC conflict on {bname}: {dev} and vif{other[0]}.{other[1]} both use {vif.mac}; {dev} gets no flows"
            )
            continue
        elif mode in ("routed", "nat"):
            dev = f"vif{domid}.{devid}"
            wide = [str(ip) for ip in vif.ips if ip.network.prefixlen < (8 if ip.version == 4 else 16)]
            if wide:
                problems.append(
                    f"{dev} on {mode} bridge {bname} claims {', '.join(wide)}: the bridge would answer for that much "
                    f"of the network; {dev} gets no flows (give it its own addresses, or a routed subnet)"
                )
                continue
            clash = next(((ip, who) for ip in vif.ips for net, who in claimed if ip.network.overlaps(net)), None)
            if clash is not None:
                problems.append(
                    f"address conflict on {mode} bridge {bname}: {dev} claims {clash[0]}, which {clash[1]} has; "
                    f"{dev} gets no flows (give it another ip=)"
                )
                continue
            claimed += [(ip.network, dev) for ip in vif.ips if not ip.ip.is_link_local]
        seen_macs[vif.mac] = (domid, devid)
        position[(domid, devid)] = len(built)
        built.append(vif)
        del no_flows[(domid, devid)]
    for group in twins.values():
        _pair_twins(built, position, group)
    plain, special = _uplinks(uplinks)
    nat = None
    if mode in ("routed", "nat"):
        problems += _routed_problems(bname, info.local_mac, built, mode)
    if mode == "nat" and policy and policy.nat:
        nat, nat_problems = _nat_spec(bname, policy.nat, built)
        problems += nat_problems
    model = BridgeModel(
        bname,
        plain,
        local=True,
        private=bool(policy and policy.private),
        reserved_for=policy.reserved_for if policy else None,
        vifs=tuple(built),
        special_uplinks=special,
        # A vif port that gets no flows (no XenStore vif, a bad one, a MAC conflict) is
        # dropped and counted like any port nobody vouches for.
        unmanaged=tuple(sorted({*unmanaged, *(n for ns in no_flows.values() for n in ns)})),
        mode=mode,
        router_mac=info.local_mac if mode in ("routed", "nat") else "",
        nat=nat,
    )
    return _Joined(info, ports, cfg, model, problems, inputs, position)


def _nat_spec(bname: str, policy: NatPolicy, vifs: list[VifModel]) -> tuple[NatSpec, list[str]]:
    """The NAT model's spec with each port forward's domain resolved to its guest's
    address on this bridge; a forward to a guest that is not there is left out, and said."""
    subnet = ipaddress.ip_network(policy.subnet)
    problems, forwards = [], []
    for v in vifs:
        outside = [str(i.ip) for i in v.ips if i.version == 4 and not i.network.subnet_of(subnet)]
        if outside:
            problems.append(
                f"vif{v.domid}.{v.devid} on NAT bridge {bname} has ip= {', '.join(outside)} outside its subnet "
                f"{subnet}: nothing is routed for it (give it an address in {subnet})"
            )
    for proto, port, domain, guest_port in policy.forwards:
        guest = next(
            (
                str(i.ip)
                for v in vifs
                if v.name == domain
                for i in v.ips
                if i.version == 4 and i.network.subnet_of(subnet)
            ),
            None,
        )
        if guest is None:
            problems.append(
                f"forward {proto}:{port} -> {domain}:{guest_port} on {bname}: no running domain {domain} with an "
                f"address in {subnet} on it; the port is dom0's until there is"
            )
            continue
        forwards.append(PortForward(proto, port, guest, guest_port))
    spec = NatSpec(policy.address, policy.subnet, policy.gateway, policy.zone, tuple(forwards), policy.ports)
    return spec, problems


def _routed_problems(bname: str, router_mac: str, vifs: list[VifModel], mode: str = "routed") -> list[str]:
    """What keeps a routed (or NAT) bridge or its guests from being routed, with what to fix."""
    out = []
    if not router_mac:
        out.append(
            f"{mode} bridge {bname}: OVS has not reported its LOCAL port's MAC yet; nothing is routed until it does"
        )
    for v in vifs:
        dev = f"vif{v.domid}.{v.devid}"
        if v.access_vlans != (0,):
            out.append(
                f"{dev} on {mode} bridge {bname} asks for a VLAN ({v.vlans.name}): a routed network is "
                f"untagged; nothing is routed for it (use bridge={bname})"
            )
        elif not any(i.version == 4 or (mode == "routed" and not i.ip.is_link_local) for i in v.ips):
            out.append(
                f"{dev} on {mode} bridge {bname} has no address in ip=: nothing is routed for it "
                + (
                    "(set ip= in its vif spec, as for vif-route)"
                    if mode == "routed"
                    else "(the controller is choosing it one for DHCP; if this stays, the subnet is full)"
                )
            )
    return out


def _same_nic(
    vm_uuids: dict[tuple[int, int], str], names: dict[int, str], a: tuple[int, int], b: tuple[int, int]
) -> bool:
    """Two domains' vifs that are one VM's one NIC in the middle of a migration or a
    restore: the hook names the VM in OVSDB, libxl gives the incoming domain the old one's
    UUID, and one of the two carries libxl's migration name (NAME--incoming until the
    switch, then the old one NAME--migratedaway until it is destroyed). Two domains that
    share a UUID outside of that are a MAC conflict, as any others are."""
    uuid = vm_uuids.get(a)
    if not uuid or uuid != vm_uuids.get(b) or a[1] != b[1] or a[0] == b[0]:
        return False
    return any(migrating(names.get(d, "")) for d in (a[0], b[0]))


def _pair_twins(built: list[VifModel], position: dict[tuple[int, int], int], group: list[tuple[int, int]]) -> None:
    """One migrating NIC's vifs (sorted by domid): the newest forwards the MAC to all.

    The config's private and trusted lists name domains, and the incoming domain has a
    name and a domid of its own: the group is private if any of its vifs is (the newest
    forwards to the old port too, which must not open a private guest to the others) and
    trusted if any is (the same VM keeps its rights while it moves)."""
    *older, newest = group
    members = [built[position[key]] for key in group]
    private = any(v.private for v in members)
    trusted = any(v.trusted for v in members)
    ports = {key: built[position[key]].active_port for key in group}
    for key in older:
        built[position[key]] = dataclasses.replace(
            built[position[key]], forwards=False, private=private, trusted=trusted
        )
    built[position[newest]] = dataclasses.replace(
        built[position[newest]],
        twin_ports=tuple(p for k in older if (p := ports[k]) is not None),
        private=private,
        trusted=trusted,
    )
