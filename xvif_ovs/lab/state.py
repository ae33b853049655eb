"""What the lab made, recorded in DIR/lab.json so that `lab down` can remove exactly
that, and several lab commands can run at once (a lock guards each update)."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_DIR = Path("/run/xvif-ovs/lab")
NETNS_PREFIX = "xvl-"  # every namespace the lab makes starts with this


@dataclass
class BridgeRec:
    name: str
    uplink: str | None = None  # the root-namespace end of the uplink veth (peth0)
    lan: str | None = None  # lab name of the LAN namespace behind the uplink ("lan", "lan-xenbr1")
    lan_ipv4: str | None = None
    lan_ipv6: str | None = None
    mode: str = "bridged"
    dom0_ipv4: str | None = None  # a routed or NAT bridge's dom0 address (on its LOCAL port)
    nat_subnet: str | None = None  # a NAT bridge's guest network
    nat_gateway: str | None = None  # and the guests' gateway there (also dom0's)


@dataclass
class VifRec:
    devid: int
    dev: str  # backend name as Xen creates it (vif5.0 / xvif5.0)
    frontend: str  # the guest's interface (eth0)
    mac: str
    bridge: str
    script: str
    emu: str | None = None  # vif5.0-emu for an HVM guest
    emu_frontend: str | None = None
    vifname: str | None = None
    spec: str = ""  # the vif spec as given (`lab domain migrate` makes the same NIC again)


@dataclass
class DomainRec:
    name: str
    domid: int
    uuid: str
    hvm: bool = False
    netbsd: bool = False
    vifs: list[VifRec] = field(default_factory=list)
    ns: str = ""  # the namespace, when not named for the domain (it kept its own over a migration)

    @property
    def netns(self) -> str:
        return self.ns or netns_of(self.name)


@dataclass
class LabState:
    bridges: list[BridgeRec] = field(default_factory=list)
    domains: dict[str, DomainRec] = field(default_factory=dict)

    def bridge(self, name: str) -> BridgeRec | None:
        return next((b for b in self.bridges if b.name == name), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> LabState:
        raw = json.loads(text)
        doms = {}
        for name, d in raw.get("domains", {}).items():
            vifs = [VifRec(**v) for v in d.pop("vifs", [])]
            doms[name] = DomainRec(**d, vifs=vifs)
        return cls([BridgeRec(**b) for b in raw.get("bridges", [])], doms)


def netns_of(name: str) -> str:
    return f"{NETNS_PREFIX}{name}"


class StateFile:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.path = d / "lab.json"
        self.lock_path = d / "lab.lock"

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> LabState:
        return LabState.from_json(self.path.read_text()) if self.path.exists() else LabState()

    def save(self, state: LabState) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(state.to_json())
        os.replace(tmp, self.path)

    @contextmanager
    def locked(self) -> Iterator[LabState]:
        """Load, let the caller change, and save the state under an exclusive lock."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.load()
            yield state
            self.save(state)
