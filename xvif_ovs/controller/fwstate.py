"""The controller's firewall state: the rules in force, and each firewalled vif's
conntrack zone. Both can be rebuilt after a restart: the rules from their files, the
zones from XenStore (``xvif-ct-zone`` in the vif's backend node, which only dom0 writes),
so a restarted controller keeps every connection's state where it was."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable

from ..firewall.rules import EMPTY, RuleError, RuleSet, load_dir
from ..firewall.select import MAX_RULES_PER_VIF, base_name, firewalled, rules_for
from ..model.host import BridgeModel, VifFirewall, VifModel, migrating
from . import conntrack
from .ovsdb_monitor import BridgeInfo

log = logging.getLogger("xvif_ovs.controller")
ZONE_KEY = "xvif-ct-zone"
ZONES = range(1, 30000)  # firewall zones; a NAT bridge's zone (30838 by default) is never one


class Rules:
    """The rule set in force. A reload that fails leaves it in force, and says why."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.current: RuleSet = EMPTY
        self._stamp: tuple = ()  # the files in force
        self._seen: tuple = ()  # the files at the last look
        self.refused = False  # the files on disk are not what is in force: the last reload failed

    def load_initial(self) -> RuleSet:
        """At start a bad file is fatal (RuleError): starting without the rules would
        remove every firewall flow the switch still holds, opening what they closed."""
        self._stamp = self._seen = self.stamp()
        self.current = load_dir(self.path)
        log.info(
            "firewall: %d rule(s) from %d file(s) in %s", len(self.current.rules), len(self.current.files), self.path
        )
        return self.current

    def stamp(self) -> tuple:
        """What a file change changes: names, sizes, modification times."""
        try:
            entries = sorted(os.scandir(self.path), key=lambda e: e.name)
        except OSError:
            return ()
        out = []
        for e in entries:
            if e.name.endswith(".toml"):
                try:
                    st = e.stat()
                except OSError:
                    continue
                out.append((e.name, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(out)

    def changed(self) -> bool:
        """The files differ from those in force, and have not changed since the last look
        (a second ago): an editor saving (a truncate then a write, or a rename out and one
        back) is not read halfway."""
        now = self.stamp()
        settled = now == self._seen
        self._seen = now
        return now != self._stamp and settled

    def reload(self) -> bool:
        """True if a new set is in force."""
        self._stamp = self._seen = self.stamp()
        if not os.path.isdir(self.path) and self.current.rules + tuple(self.current.policies.items()):
            log.error(
                "firewall rules NOT reloaded, the previous ones stay in force: %s is gone; recreate it "
                "(an empty directory means no rules)",
                self.path,
            )
            self.refused = True
            return False
        try:
            new = load_dir(self.path)
        except RuleError as e:
            log.error("firewall rules NOT reloaded, the previous ones stay in force: %s", e)
            self.refused = True
            return False
        self.current, self.refused = new, False
        log.info("firewall: reloaded %d rule(s) from %d file(s) in %s", len(new.rules), len(new.files), self.path)
        return True


class Firewall:
    """Attaches each vif's firewall (its rules, closed VLANs and zone) to the models.

    The same VifModel object comes back for a vif whose inputs did not change, so the
    pipeline's per-vif cache and the diff skip it."""

    def __init__(self, rules: Callable[[], RuleSet], reserved_zones: set[int], allocate: bool = True) -> None:
        """``allocate``: give zones to vifs that have none (the controller); without it
        (the CLI, which changes nothing) a vif without one in XenStore shows zone 0."""
        self.rules = rules
        self.allocate = allocate
        self.zones: dict[tuple[int, int], int] = {}
        self.reserved = reserved_zones
        self._made: dict[tuple[int, int], tuple[VifModel, VifFirewall, VifModel]] = {}
        self._fw: dict[tuple, VifFirewall] = {}
        self.to_write: dict[tuple[int, int], int] = {}  # zones allocated, for XenStore
        self._twins: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {}
        self.problems: list[str] = []

    def attach(
        self,
        models: dict[str, BridgeModel],
        vifs: dict[tuple[int, int], dict[str, str]],
        uuids: dict[int, str],
    ) -> dict[str, BridgeModel]:
        rs = self.rules()
        self.problems = []
        self._twins = _twins(models)
        self._adopt(vifs)
        fws = {
            (v.domid, v.devid): self._firewall_of(rs, v, bname, uuids.get(v.domid, ""))
            for bname, model in models.items()
            for v in model.vifs
        }
        for key, twins in self._twins.items():
            # A migrating NIC is one NIC: a rule that names one of its domids (vif = "5.0")
            # firewalls both, or frames delivered through the other would pass around it.
            if fws.get(key) is None:
                fws[key] = next((fws[t] for t in twins if fws.get(t) is not None), None)
        out = {}
        seen: set[tuple[int, int]] = set()
        for bname, model in models.items():
            changed = False
            new_vifs = []
            for v in model.vifs:
                key = (v.domid, v.devid)
                seen.add(key)
                fw = fws[key]
                if fw is None:
                    new_vifs.append(v)
                    continue
                last = self._made.get(key)
                if last is not None and last[0] is v and last[1] is fw:
                    nv = last[2]
                else:
                    nv = dataclasses.replace(v, firewall=fw)
                    self._made[key] = (v, fw, nv)
                new_vifs.append(nv)
                changed = True
            out[bname] = dataclasses.replace(model, vifs=tuple(new_vifs)) if changed else model
        for key in self._made.keys() - seen:
            del self._made[key]
        for key in self.zones.keys() - vifs.keys():  # the vif is gone: its zone is free
            del self.zones[key]
        if len(self._fw) > 4 * max(len(seen), 64):
            self._fw.clear()
        return out

    def _adopt(self, vifs: dict[tuple[int, int], dict[str, str]]) -> None:
        """Zones XenStore remembers (a restart), unless two vifs claim one."""
        taken = {z: k for k, z in self.zones.items()}
        for key in sorted(vifs):
            if key in self.zones:
                continue
            raw = vifs[key].get(ZONE_KEY, "")
            if not raw.isdigit() or int(raw) not in ZONES or int(raw) in self.reserved:
                continue
            holder = taken.get(int(raw))
            if holder is None or holder in self._twins.get(key, ()):  # a migrating NIC's two vifs share it
                self.zones[key] = int(raw)
                taken[int(raw)] = key

    def _zone(self, key: tuple[int, int]) -> int | None:
        z = self.zones.get(key)
        if z is not None or not self.allocate:
            return z if z is not None else 0
        # A NIC being migrated (or restored) on this host: the new vif takes the zone of
        # the old one, so the guest's connections carry on across the move, as they do
        # without a firewall (a new zone would know none of them: only a SYN opens one).
        shared = next((self.zones[t] for t in self._twins.get(key, ()) if t in self.zones), None)
        if shared is not None:
            self.zones[key] = shared
            self.to_write[key] = shared
            return shared
        used = set(self.zones.values()) | self.reserved
        z = next((z for z in ZONES if z not in used), None)
        if z is None:
            return None
        self.zones[key] = z
        self.to_write[key] = z
        conntrack.flush_zone(z)  # whatever its last owner left there is not this vif's
        return z

    def _firewall_of(self, rs: RuleSet, v: VifModel, bridge: str, uuid: str) -> VifFirewall | None:
        if not v.name and any(r.scope == "guest" or (r.scope == "vif" and not r.target[0].isdigit()) for r in rs.rules):
            # Rules name guests, and this one's name could not be read: closed until it can.
            self.problems.append(
                f"vif {v.domid}.{v.devid}: its domain's name is not known (XenStore /local/domain/{v.domid}/name), "
                "and rules name guests: its IP is dropped until the name can be read"
            )
            return self._intern(self._zone((v.domid, v.devid)) or 0, (), frozenset(v.access_vlans), blocked=True)
        rules, closed = rules_for(rs, v.name, uuid, v.domid, v.devid, bridge, v.access_vlans)
        if not firewalled(rules, closed):
            return None
        key = (v.domid, v.devid)
        zone = self._zone(key)
        if zone is None or len(rules) > MAX_RULES_PER_VIF:
            # Closed, not open: no conntrack zone left, or more rules than a cookie can
            # name. Every IP packet to and from it is dropped until that is fixed.
            why = (
                "no conntrack zone is free"
                if zone is None
                else f"{len(rules)} rules apply (at most {MAX_RULES_PER_VIF})"
            )
            self.problems.append(
                f"vif {v.domid}.{v.devid} ({v.name}): firewall cannot be built: {why}; its IP is dropped"
            )
            return self._intern(zone or 0, (), frozenset(v.access_vlans), blocked=True)
        return self._intern(zone, rules, closed)

    def _intern(self, zone: int, rules: tuple, closed: frozenset[int], blocked: bool = False) -> VifFirewall:
        k = (zone, tuple(id(r) for r in rules), closed, blocked)
        fw = self._fw.get(k)
        if fw is None or fw.rules != rules:
            fw = self._fw[k] = VifFirewall(zone, rules, closed, blocked)
        return fw


def _twins(models: dict[str, BridgeModel]) -> dict[tuple[int, int], tuple[tuple[int, int], ...]]:
    """The vifs of one NIC under two domids while libxl migrates or restores it on this
    host (NAME--incoming beside NAME, or NAME beside NAME--migratedaway): each key's twins."""
    nics: dict[tuple[str, int], list[VifModel]] = {}
    for m in models.values():
        for v in m.vifs:
            nics.setdefault((base_name(v.name), v.devid), []).append(v)
    out = {}
    for group in nics.values():
        if len(group) > 1 and any(migrating(v.name) for v in group):
            keys = [(v.domid, v.devid) for v in group]
            for k in keys:
                out[k] = tuple(x for x in keys if x != k)
    return out


def vm_uuids(bridges: Iterable[BridgeInfo]) -> dict[int, str]:
    """Each domain's VM uuid as the hook wrote it on its vifs (external_ids:xen-vm-uuid),
    for rules that name a guest by it."""
    return {p.domid: p.vm_uuid for b in bridges for p in b.ports if p.domid is not None and p.vm_uuid}
