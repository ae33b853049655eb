"""Joining XenStore (what each vif is), OVSDB (which port it is on) and OpenFlow (its
ofport and link) into one BridgeModel per bridge. Pure, so the rules for what gets flows
are unit-tested; what cannot be used is reported with what to fix."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from ..errors import VifSpecError
from ..model.host import BridgeModel, VifModel
from ..model.vifspec import BridgeSpec, parse_bridge, parse_ips, parse_mac, parse_xl_vlan
from .config import Config
from .ovsdb_monitor import BridgeInfo


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
    vlans = parse_bridge(keys.get("bridge") or "xenbr0")
    if keys.get("vlan"):
        tag, trunks = parse_xl_vlan(keys["vlan"])
        vlans = BridgeSpec(vlans.name, tag, trunks)
    return VifModel(
        domid=domid,
        devid=devid,
        mac=mac,
        vlans=vlans,
        ips=parse_ips(keys.get("ip", "")),
        trusted=keys.get("trusted") == "1" or cfg.matches(cfg.trusted_vifs, name, domid, devid),
        private=cfg.matches(cfg.private_vifs, name, domid, devid),
        name=name,
    )


# The XenStore keys that shape a vif's flows; the rest (hotplug-status, ofport, ...) do not.
_RELEVANT = ("mac", "bridge", "vlan", "ip", "trusted")
_MODEL_CACHE: dict[tuple, VifModel] = {}
# (domid, devid) -> (keys dict, name, config, backends, model) of the last pass. The
# XenStore watcher hands in a new dict for a changed vif, so "the same dict object" is a
# cheaper test than building the key above.
_BY_KEYS: dict[tuple[int, int], tuple] = {}


def _cached_vif(
    keys: dict[str, str], domid: int, devid: int, name: str, cfg: Config, backends: dict[str, OfPort]
) -> VifModel:
    """The same VifModel object for an unchanged vif, pass after pass: parsing 4000 vifs'
    addresses took 250 ms, and an unchanged object is what lets the pipeline's per-vif
    cache and the per-owner diff skip the vif at once."""
    v, e = backends.get("vif"), backends.get("emu")
    ports = (v, e)
    last = _BY_KEYS.get((domid, devid))
    if last is not None and last[0] is keys and last[1] == name and last[2] is cfg and last[3] == ports:
        return last[4]  # the very keys dict of the last pass: nothing about this vif changed
    key = (
        domid,
        devid,
        tuple(keys.get(k) for k in _RELEVANT),
        name,
        id(cfg),
        (v.number, v.live) if v else None,
        (e.number, e.live) if e else None,
    )
    hit = _MODEL_CACHE.get(key)
    if hit is not None:
        _BY_KEYS[(domid, devid)] = (keys, name, cfg, ports, hit)
        return hit
    vif = vif_from_xenstore(keys, domid, devid, name, cfg)  # raises VifSpecError
    model = dataclasses.replace(
        vif,
        vif_port=v.number if v else None,
        emu_port=e.number if e else None,
        vif_live=v.live if v else False,
        emu_live=e.live if e else False,
    )
    if len(_MODEL_CACHE) > 1 << 16:
        _MODEL_CACHE.clear()
        _BY_KEYS.clear()
    _MODEL_CACHE[key] = model
    _BY_KEYS[(domid, devid)] = (keys, name, cfg, ports, model)
    return model


def bridge_models(
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
        last = _LAST_JOIN.get(bname)
        joined = _patched(last, info, ports, vifs, names, cfg) if last else None
        if joined is None:
            joined = _join(bname, info, ports, vifs, names, cfg)
        _LAST_JOIN[bname] = joined
        models[bname] = joined.model
        problems += joined.problems
    return models, problems


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


_LAST_JOIN: dict[str, _Joined] = {}
_PATCH_AT_MOST = 16


def _patched(
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
    if info is not last.info or ports is not last.ports or cfg is not last.cfg:
        return None
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
            vif = _cached_vif(keys, key[0], key[1], name, cfg, backends)
        except VifSpecError:
            return None
        old = built[pos]
        if vif.mac != old.mac or vif.vlans.name != bname or old.vlans.name != bname:
            return None
        built[pos] = vif
        inputs[key] = (keys, name, backends)
    model = dataclasses.replace(last.model, vifs=tuple(built))
    return _Joined(info, ports, cfg, model, last.problems, inputs, last.position)


def _join(
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
    uplinks, members = [], {}
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
        if p.kind == "uplink":
            uplinks.append(of.number)
        elif p.kind in ("vif", "emu") and p.domid is not None and p.devid is not None:
            members.setdefault((p.domid, p.devid), {})[p.kind] = of
    built: list[VifModel] = []
    seen_macs: dict[str, tuple[int, int]] = {}
    for (domid, devid), backends in sorted(members.items()):
        keys = vifs.get((domid, devid))
        inputs[(domid, devid)] = (keys, names.get(domid, ""), backends)
        if keys is None:
            problems.append(
                f"vif{domid}.{devid} on {bname} has no vif in XenStore: its traffic is dropped (stale port? remove it)"
            )
            continue
        try:
            vif = _cached_vif(keys, domid, devid, names.get(domid, ""), cfg, backends)
        except VifSpecError as e:
            problems.append(f"vif{domid}.{devid} on {bname}: {e}; its traffic is dropped until XenStore is fixed")
            continue
        if vif.vlans.name != bname:
            problems.append(
                f"vif{domid}.{devid} is on bridge {bname} but XenStore says bridge={keys.get('bridge')}: using {bname}"
            )
        other = seen_macs.get(vif.mac)
        if other is not None:
            dev = f"vif{domid}.{devid}"
            problems.append(
                f"MAC conflict on {bname}: {dev} and vif{other[0]}.{other[1]} both use {vif.mac}; {dev} gets no flows"
            )
            continue
        seen_macs[vif.mac] = (domid, devid)
        position[(domid, devid)] = len(built)
        built.append(vif)
    policy = cfg.bridge_policy.get(bname)
    model = BridgeModel(
        bname,
        tuple(sorted(uplinks)),
        local=True,
        private=bool(policy and policy.private),
        reserved_for=policy.reserved_for if policy else None,
        vifs=tuple(built),
    )
    return _Joined(info, ports, cfg, model, problems, inputs, position)
