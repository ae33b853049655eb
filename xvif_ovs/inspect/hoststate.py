"""One consistent read of the host for the CLI: OVSDB (bridges, ports, interfaces,
controllers) and XenStore (every vif backend), joined by domid/devid. Read-only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..model.ports import CONTROLLER_MARK, MIRROR_MARK, Iface, port_roles
from ..ovsdb.client import Ovsdb, from_map, from_set
from ..xenstore.client import connect, exists, list_dir, read_str
from ..xenstore.vifwatch import BACKEND_ROOT


@dataclass
class PortView:
    name: str
    bridge: str
    ofport: int | None
    kind: str  # vif | emu | uplink | local | unmanaged (model/ports.py)
    domid: int | None
    devid: int | None
    tag: int | None
    trunks: list[int]
    vlan_mode: str | None
    link: str  # up | down | ?
    attached_mac: str | None
    iface_type: str
    port: str = ""  # the OVSDB Port, when it is not named as the interface (a bond's member)
    vm_uuid: str = ""  # xen-vm-uuid as the hook wrote it: a migrating NIC's vifs share it
    mac: str = ""  # mac_in_use: for LOCAL, a routed bridge's router MAC


@dataclass(frozen=True)
class MirrorView:
    """An OVSDB Mirror row (port names are OVSDB Port names)."""

    uuid: str
    name: str
    bridge: str
    from_ports: tuple[str, ...]  # select_src_port: what these ports send
    to_ports: tuple[str, ...]  # select_dst_port: what is sent to these ports
    output: str  # output_port ("" when it went away)
    ours: bool  # made by `xvif-ovs mirror add` (external_ids MIRROR_MARK)
    packets: int = 0  # statistics tx_packets: frames mirrored
    source: str = ""  # ours: the guest NIC it was made for (vifD.N), even once its ports are gone


@dataclass
class BridgeView:
    name: str
    fail_mode: str
    datapath_type: str
    controllers: list[dict[str, Any]]
    ports: list[PortView] = field(default_factory=list)
    mirrors: list[MirrorView] = field(default_factory=list)

    @property
    def mirror_outputs(self) -> frozenset[str]:
        """Ports that only receive mirrored frames (any mirror's output, ours or not)."""
        return frozenset(m.output for m in self.mirrors if m.output)

    @property
    def uplinks(self) -> list[str]:
        """Uplink ports by OVSDB Port name; a bond as BOND(MEMBER,MEMBER)."""
        members: dict[str, list[str]] = {}
        for p in self.ports:
            if p.kind == "uplink":
                members.setdefault(p.port or p.name, []).append(p.name)
        return [n if m == [n] else f"{n}({','.join(m)})" for n, m in members.items()]

    @property
    def local_mac(self) -> str:
        return next((p.mac for p in self.ports if p.kind == "local"), "")

    @property
    def unmanaged(self) -> list[PortView]:
        """Ports nobody vouches for; a mirror's output is vouched for by its mirror."""
        outputs = self.mirror_outputs
        return [p for p in self.ports if p.kind == "unmanaged" and (p.port or p.name) not in outputs]

    @property
    def connected(self) -> bool:
        return any(c["connected"] for c in self.controllers)

    def vlans(self) -> list[int]:
        out = set()
        for p in self.ports:
            if p.kind in ("vif", "emu"):
                if p.tag is not None:
                    out.add(p.tag)
                out.update(p.trunks)
        return sorted(out)


@dataclass
class VifView:
    domid: int
    devid: int
    domain: str
    keys: dict[str, str]  # the backend node as XenStore has it
    ports: list[PortView] = field(default_factory=list)  # where OVSDB has it (vif, and emu for HVM)

    @property
    def mac(self) -> str:
        return self.keys.get("mac", "")

    @property
    def dev(self) -> str:
        return self.keys.get("vifname") or f"vif{self.domid}.{self.devid}"

    def as_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "domid": self.domid,
            "devid": self.devid,
            "device": self.dev,
            "mac": self.mac,
            "ips": self.keys.get("ip", "").split(),
            "bridge_spec": self.keys.get("bridge", ""),
            "hotplug_status": self.keys.get("hotplug-status"),
            "hotplug_error": self.keys.get("hotplug-error"),
            "ports": [asdict(p) for p in self.ports],
        }


@dataclass
class HostView:
    bridges: dict[str, BridgeView]
    vifs: dict[tuple[int, int], VifView]
    ovs_other_config: dict[str, str]
    stray_ports: list[PortView]  # vif-like ports no XenStore vif owns


def read_ovsdb(
    db: Ovsdb, declared: Callable[[str], frozenset[str]] = lambda bridge: frozenset()
) -> tuple[dict[str, BridgeView], dict[str, str]]:
    """``declared``: the uplinks the controller's config names per bridge."""

    r = db.transact(
        [
            {"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["other_config"]},
            {
                "op": "select",
                "table": "Bridge",
                "where": [],
                "columns": ["name", "ports", "fail_mode", "controller", "datapath_type", "mirrors"],
            },
            {
                "op": "select",
                "table": "Port",
                "where": [],
                "columns": ["_uuid", "name", "interfaces", "tag", "trunks", "vlan_mode", "external_ids"],
            },
            {
                "op": "select",
                "table": "Interface",
                "where": [],
                "columns": ["_uuid", "name", "ofport", "type", "external_ids", "link_state", "mac_in_use"],
            },
            {
                "op": "select",
                "table": "Controller",
                "where": [],
                "columns": ["_uuid", "target", "is_connected", "external_ids"],
            },
            {
                "op": "select",
                "table": "Mirror",
                "where": [],
                "columns": [
                    "_uuid",
                    "name",
                    "select_src_port",
                    "select_dst_port",
                    "output_port",
                    "external_ids",
                    "statistics",
                ],
            },
        ]
    )
    other = from_map(r[0]["rows"][0]["other_config"]) if r[0]["rows"] else {}
    ports = {row["_uuid"][1]: row for row in r[2]["rows"]}
    ifaces = {row["_uuid"][1]: row for row in r[3]["rows"]}
    ctrls = {row["_uuid"][1]: row for row in r[4]["rows"]}
    mirrors = {row["_uuid"][1]: row for row in r[5]["rows"]}
    bridges = {}
    for b in r[1]["rows"]:
        name = b["name"]
        bv = BridgeView(
            name,
            (from_set(b["fail_mode"]) or [""])[0] if from_set(b["fail_mode"]) else "",
            b["datapath_type"] or "system",
            [
                {
                    "target": ctrls[u]["target"],
                    "connected": bool(ctrls[u]["is_connected"]),
                    "ours": from_map(ctrls[u]["external_ids"]).get(CONTROLLER_MARK) == "true",
                }
                for _, u in (from_set(b["controller"]) if b["controller"] != ["set", []] else [])
                if u in ctrls
            ],
        )
        for _, pu in from_set(b["ports"]) if b["ports"] != ["set", []] else []:
            port = ports.get(pu)
            if port is None:
                continue
            rows = [ifaces[iu] for _, iu in from_set(port["interfaces"]) if iu in ifaces]
            roles = port_roles(
                name,
                port["name"],
                from_map(port["external_ids"]),
                [Iface(i["name"], i["type"], from_map(i["external_ids"])) for i in rows],
                declared(name),
            )
            for iface in rows:
                ids = from_map(iface["external_ids"])
                role = roles[iface["name"]]
                ofp = from_set(iface["ofport"])
                tag = from_set(port["tag"])
                mode = from_set(port["vlan_mode"])
                link = from_set(iface["link_state"])
                bv.ports.append(
                    PortView(
                        iface["name"],
                        name,
                        ofp[0] if ofp and isinstance(ofp[0], int) and ofp[0] > 0 else None,
                        role.kind,
                        role.domid,
                        role.devid,
                        tag[0] if tag and isinstance(tag[0], int) else None,
                        sorted(x for x in from_set(port["trunks"]) if isinstance(x, int)),
                        mode[0] if mode and isinstance(mode[0], str) else None,
                        link[0] if link and isinstance(link[0], str) else "?",
                        ids.get("attached-mac"),
                        iface["type"],
                        port["name"] if port["name"] != iface["name"] else "",
                        ids.get("xen-vm-uuid", "") if role.kind in ("vif", "emu") else "",
                        str((from_set(iface.get("mac_in_use", ["set", []])) or [""])[0]).lower(),
                    )
                )
        for _, mu in _sets(b["mirrors"]):
            m = mirrors.get(mu)
            if m is None:
                continue

            def names(refs: Any) -> tuple[str, ...]:
                return tuple(sorted(ports[u]["name"] for _, u in _sets(refs) if u in ports))

            out = names(m["output_port"])
            bv.mirrors.append(
                MirrorView(
                    mu,
                    m["name"],
                    name,
                    names(m["select_src_port"]),
                    names(m["select_dst_port"]),
                    out[0] if out else "",
                    from_map(m["external_ids"]).get(MIRROR_MARK) == "true",
                    int(from_map(m["statistics"]).get("tx_packets", 0)),
                    from_map(m["external_ids"]).get("xvif-source", ""),
                )
            )
        order = {"local": 0, "uplink": 1, "vif": 2, "emu": 2, "unmanaged": 3}
        bv.ports.sort(key=lambda p: (order[p.kind], p.domid or 0, p.devid or 0, p.name))
        bridges[name] = bv
    return bridges, other


def _sets(value: Any) -> list:
    return from_set(value) if value != ["set", []] else []


def read_xenstore(socket_path: str | None = None) -> dict[tuple[int, int], VifView]:
    out: dict[tuple[int, int], VifView] = {}
    with connect(socket_path) as xs:
        if not exists(xs, BACKEND_ROOT):
            return out
        for d in list_dir(xs, BACKEND_ROOT):
            if not d.isdigit():
                continue
            domid = int(d)
            domain = read_str(xs, f"/local/domain/{domid}/name", "") or ""
            for n in list_dir(xs, f"{BACKEND_ROOT}/{d}"):
                if not n.isdigit():
                    continue
                base = f"{BACKEND_ROOT}/{d}/{n}"
                keys = {}
                for k in list_dir(xs, base):
                    try:
                        keys[k] = xs.read(f"{base}/{k}".encode()).decode()
                    except Exception:  # noqa: BLE001 - removed while we read
                        continue
                out[(domid, int(n))] = VifView(domid, int(n), domain, keys)
    return out


def read_host(
    db_remote: str | None = None,
    xenstore: str | None = None,
    declared: Callable[[str], frozenset[str]] = lambda bridge: frozenset(),
) -> HostView:
    with Ovsdb(db_remote) as db:
        bridges, other = read_ovsdb(db, declared)
    vifs = read_xenstore(xenstore)
    stray = []
    for b in bridges.values():
        for p in b.ports:
            if p.kind in ("vif", "emu") and p.domid is not None:
                v = vifs.get((p.domid, p.devid or 0))
                if v is None:
                    stray.append(p)
                else:
                    v.ports.append(p)
    return HostView(bridges, vifs, other, stray)
