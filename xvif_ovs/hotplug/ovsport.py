"""Putting a vif's port on its bridge in one OVSDB transaction, and taking it off.

Read, check, then write with OVSDB `wait` operations that assert what was read: the
bridge still exists, no other interface took the MAC or the chosen ofport meanwhile.
If another hook won a race the transaction fails as a whole and is re-planned, so
concurrent hooks need no lock and a failure leaves OVSDB as it was.

The hook chooses the ofport (Interface.ofport_request) instead of waiting for
ovs-vswitchd to assign one: that wait is a full reconfigure, O(ports) on the userspace
datapath (about 0.9 s at 1000 ports), and is what makes vif-openvswitch slow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import XvifError
from ..model.host import INCOMING_SUFFIX
from ..ovsdb.client import ConditionFailed, Ovsdb, from_map, from_set, ovs_map, ovs_set
from .vifconfig import VifConfig

VifExists = Callable[[int, int], bool]  # does XenStore still have this domid/devid's backend?
OFPORT_FIRST = 100  # leave low numbers to uplinks and ports OVS numbers itself
OFPORT_LAST = 0xFEFF  # OFPP_MAX in OpenFlow 1.3
PROBE = 8  # candidate ofports looked up per round trip
ATTEMPTS = 20


class BridgeMissing(XvifError):
    """The vif names a bridge OVSDB does not have."""


class MacConflict(XvifError):
    """Another vif on the same bridge already uses the MAC."""


@dataclass
class Snapshot:
    """What the transaction will assume; each field becomes a `wait` condition."""

    bridge: str
    dev: str
    mac: str
    bridge_exists: bool
    same_mac: list[dict[str, Any]]  # Interface rows: _uuid, name, external_ids
    mine_request: int | None = None  # dev's ofport_request, if dev exists (a repeated online)
    mine_ofport: int | None = None  # dev's ofport as assigned by ovs-vswitchd

    @property
    def mine(self) -> int | None:
        """The number a repeated online keeps: what dev asked for, else what it got."""
        return self.mine_request or self.mine_ofport

    old_port: str | None = None  # uuid of a Port already named dev


def read_snapshot(db: Ovsdb, bridge: str, dev: str, mac: str) -> Snapshot:
    """A handful of indexed selects: nothing here grows with the number of ports."""
    r = db.transact(
        [
            {"op": "select", "table": "Bridge", "where": [["name", "==", bridge]], "columns": ["name"]},
            {
                "op": "select",
                "table": "Interface",
                "where": [["external_ids", "includes", ovs_map({"attached-mac": mac})]],
                "columns": ["_uuid", "name", "external_ids"],
            },
            {
                "op": "select",
                "table": "Interface",
                "where": [["name", "==", dev]],
                "columns": ["ofport", "ofport_request"],
            },
            {"op": "select", "table": "Port", "where": [["name", "==", dev]], "columns": ["_uuid"]},
        ]
    )
    req = ofp = None
    if r[2]["rows"]:
        req, ofp = _int_or_none(r[2]["rows"][0]["ofport_request"]), _int_or_none(r[2]["rows"][0]["ofport"])
    old = r[3]["rows"][0]["_uuid"][1] if r[3]["rows"] else None
    return Snapshot(bridge, dev, mac, bool(r[0]["rows"]), r[1]["rows"], req, ofp, old)


def _int_or_none(value: Any) -> int | None:
    vals = from_set(value)
    return vals[0] if vals and isinstance(vals[0], int) and vals[0] > 0 else None


def check(db: Ovsdb, snap: Snapshot, cfg: VifConfig, vif_exists: VifExists = lambda d, n: True) -> list[str]:
    """Refuse what must never reach the bridge; messages say what to fix.

    Returns the Port uuids of stale ports to replace: same MAC on this bridge, left by a
    vif whose backend is gone from XenStore (its domain died without `offline`)."""
    stale: list[str] = []
    if not snap.bridge_exists:
        raise BridgeMissing(
            f"bridge {snap.bridge} does not exist in OVSDB: create it (ovs-vsctl add-br {snap.bridge}) "
            f"or fix bridge= in the vif spec of domain {cfg.domid}"
        )
    for row in snap.same_mac:
        ids = from_map(row["external_ids"])
        if row["name"] == snap.dev:
            continue  # this very port, online again
        if ids.get("xvif-domid") == str(cfg.domid) and ids.get("xvif-devid") == str(cfg.devid):
            continue  # the HVM twin: one NIC, two backends
        other_port, other_bridge = _port_and_bridge_of_interface(db, row["_uuid"][1])
        if other_bridge != snap.bridge or other_port is None:
            continue  # another bridge is another L2 network
        dom, dev = ids.get("xvif-domid", ""), ids.get("xvif-devid", "")
        if dom.isdigit() and dev.isdigit() and not vif_exists(int(dom), int(dev)):
            stale.append(other_port)
            continue
        if is_incoming_twin(cfg, ids):
            continue  # both ports stay until libxl destroys the old domain; the controller pairs them
        who = ids.get("xen-vm-name") or "?"
        owner = f"domain {who}" + (f" (domid {dom})" if dom else "")
        raise MacConflict(
            f"MAC {snap.mac} of vif {cfg.domid}.{cfg.devid} is already used on bridge {snap.bridge} by "
            f"{row['name']} of {owner}: give one of them another mac= (a free one in Xen's OUI 00:16:3e)"
        )
    return stale


def is_incoming_twin(cfg: VifConfig, ids: dict[str, str]) -> bool:
    """Whether the port holding our MAC is the same VM's same NIC, and we are the incoming
    domain of a migration (libxl names it NAME--incoming while the old one still runs).

    What it trusts: the VM UUID in XenStore (written by the toolstack, read-only to guests)
    and the port's external ids (root only). A second domain given a running VM's UUID by
    hand, outside a migration, is still refused: it has no --incoming name."""
    return (
        bool(cfg.vm_uuid)
        and cfg.domain_name.endswith(INCOMING_SUFFIX)
        and ids.get("xen-vm-uuid") == cfg.vm_uuid
        and ids.get("xvif-devid") == str(cfg.devid)
        and ids.get("xvif-domid") != str(cfg.domid)
    )


def _port_and_bridge_of_interface(db: Ovsdb, iface_uuid: str) -> tuple[str | None, str | None]:
    ports = db.select("Port", [["interfaces", "includes", ["uuid", iface_uuid]]], ["_uuid"])
    if not ports:
        return None, None
    bridges = db.select("Bridge", [["ports", "includes", ports[0]["_uuid"]]], ["name"])
    return ports[0]["_uuid"][1], (bridges[0]["name"] if bridges else None)


def candidate_ofports(cfg: VifConfig, tap: bool, attempt: int) -> list[int]:
    """Numbers to probe, derived from domid/devid so that concurrent hooks (and a vif
    booted again) mostly land on different, stable numbers without reading every port."""
    span = OFPORT_LAST - OFPORT_FIRST + 1
    start = (cfg.domid * 64 + cfg.devid * 2 + int(tap)) % span
    return [OFPORT_FIRST + (start + attempt * PROBE + i * 997) % span for i in range(PROBE)]


def choose_ofport(db: Ovsdb, snap: Snapshot, cfg: VifConfig, tap: bool) -> int:
    """Keep the port's ofport across a repeated online; otherwise the first free candidate."""
    if snap.mine:
        return snap.mine
    for attempt in range((OFPORT_LAST - OFPORT_FIRST + 1) // PROBE):
        cands = candidate_ofports(cfg, tap, attempt)
        r = db.transact(
            [
                {"op": "select", "table": "Interface", "where": [[col, "==", n]], "columns": ["name"]}
                for n in cands
                for col in ("ofport_request", "ofport")
            ]
        )
        for i, n in enumerate(cands):
            if not r[2 * i]["rows"] and not r[2 * i + 1]["rows"]:
                return n
    raise XvifError(f"no free OpenFlow port number left in {OFPORT_FIRST}-{OFPORT_LAST}")


def plan_attach(
    snap: Snapshot, cfg: VifConfig, tap: bool, ofport: int, stale: list[str] | None = None
) -> list[dict[str, Any]]:
    """The whole change as one list of OVSDB operations (pure: unit-tested as data)."""
    # The chosen number is free, or already dev's own (a repeated online); each column
    # is asserted as it was read, since ofport_request and ofport may differ.
    req_holders = [{"name": snap.dev}] if snap.mine_request == ofport else []
    of_holders = [{"name": snap.dev}] if snap.mine_ofport == ofport else []
    ops: list[dict[str, Any]] = [
        _wait("Bridge", [["name", "==", snap.bridge]], [{"name": snap.bridge}]),
        _wait(
            "Interface",
            [["external_ids", "includes", ovs_map({"attached-mac": snap.mac})]],
            [{"name": r["name"]} for r in snap.same_mac],
        ),
        _wait("Interface", [["ofport_request", "==", ofport]], req_holders),
        _wait("Interface", [["ofport", "==", ofport]], of_holders),
    ]
    for port_uuid in [snap.old_port, *(stale or [])]:
        if port_uuid:
            ops.append(_remove_port(port_uuid))
    b = cfg.bridge
    ops += [
        {
            "op": "insert",
            "table": "Interface",
            "uuid-name": "iface",
            "row": {"name": snap.dev, "ofport_request": ofport, "external_ids": ovs_map(cfg.external_ids(tap))},
        },
        {
            "op": "insert",
            "table": "Port",
            "uuid-name": "port",
            "row": {
                "name": snap.dev,
                "interfaces": ["named-uuid", "iface"],
                "tag": b.tag if b.tag is not None else ovs_set([]),
                "trunks": ovs_set(list(b.ovs_trunks)),
                "vlan_mode": b.vlan_mode,
                "external_ids": ovs_map({"xvif-domid": str(cfg.domid), "xvif-devid": str(cfg.devid)}),
            },
        },
        {
            "op": "mutate",
            "table": "Bridge",
            "where": [["name", "==", snap.bridge]],
            "mutations": [["ports", "insert", ovs_set([["named-uuid", "port"]])]],
        },
        {"op": "comment", "comment": f"vif-xvif-ovs: {snap.dev} (domid {cfg.domid}) on {b}"},
    ]
    return ops


def _wait(table: str, where: list, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "op": "wait",
        "timeout": 0,
        "table": table,
        "where": where,
        "columns": ["name"],
        "until": "==",
        "rows": rows,
    }


def _remove_port(port_uuid: str) -> dict[str, Any]:
    # Unreferenced Port and Interface rows are garbage-collected by ovsdb-server.
    return {
        "op": "mutate",
        "table": "Bridge",
        "where": [["ports", "includes", ["uuid", port_uuid]]],
        "mutations": [["ports", "delete", ["uuid", port_uuid]]],
    }


def attach(db: Ovsdb, cfg: VifConfig, dev: str, tap: bool, vif_exists: VifExists = lambda d, n: True) -> int:
    """Add or replace ``dev`` on its bridge; returns its ofport."""
    for _ in range(ATTEMPTS):
        snap = read_snapshot(db, cfg.bridge.name, dev, cfg.mac)
        stale = check(db, snap, cfg, vif_exists)
        ofport = choose_ofport(db, snap, cfg, tap)
        try:
            db.transact(plan_attach(snap, cfg, tap, ofport, stale))
            return ofport
        except ConditionFailed:
            continue  # another writer changed what we read: look again
    raise XvifError(f"OVSDB kept changing under the hook ({ATTEMPTS} attempts) while adding {dev}; try again")


def detach(db: Ovsdb, names: list[str], domid: int, devid: int, tap: bool) -> list[str]:
    """Remove the ports of this vif; nothing to remove is success. Returns the names removed.

    A port is this vif's if its Interface carries our ids for this domid/devid/kind, or
    (a port added by another script) it has no ids and the name libxl gave the device.
    A port that merely shares the name of another guest's vifname is left alone: a
    guest that wrongly reuses a vifname must not take another guest's port down.
    """
    kind = "emu" if tap else "vif"
    ids = ovs_map({"xvif-domid": str(domid), "xvif-devid": str(devid), "xvif-kind": kind})
    mine = {row["name"] for row in db.select("Interface", [["external_ids", "includes", ids]], ["name"])}
    created = names[0]
    for row in db.select("Interface", [["name", "==", created]], ["name", "external_ids"]):
        if "xvif-domid" not in from_map(row["external_ids"]):
            mine.add(created)
    r = db.transact(
        [{"op": "select", "table": "Port", "where": [["name", "==", n]], "columns": ["_uuid"]} for n in sorted(mine)]
    )
    ports = {n: res["rows"][0]["_uuid"][1] for n, res in zip(sorted(mine), r, strict=True) if res["rows"]}
    if ports:
        ops = [_remove_port(uuid) for uuid in ports.values()]
        ops.append({"op": "comment", "comment": f"vif-xvif-ovs: remove {', '.join(sorted(ports))}"})
        db.transact(ops)
    return sorted(ports)
