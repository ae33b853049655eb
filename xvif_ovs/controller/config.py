"""`xvif-ovs controller` configuration: a TOML file, with command-line flags on top.

[controller]
listen = "unix"              # unix (OVS_RUNDIR/xvif-ovs.sock), "tcp:127.0.0.1:6653", "ssl:..."
bridges = []                 # bridges to manage; empty: every bridge in OVSDB
learn_idle_timeout = 300     # seconds a MAC learned behind an uplink is kept unused

[bridges.xenbr1]
private = true               # every guest reaches the uplink, no other guest
reserved_for = ["router", "12"]   # only these domains (names or domids) may use it

[vifs]
private = ["web"]            # domain names, domids or DOMID.DEVID
trusted = ["router"]         # may send DHCP server replies and router advertisements
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import XvifError


class ConfigError(XvifError):
    """The controller's configuration file or flags are wrong."""


@dataclass(frozen=True)
class BridgePolicy:
    private: bool = False
    reserved_for: frozenset[str] | None = None


@dataclass(frozen=True)
class Config:
    listen: str = "unix"
    bridges: tuple[str, ...] = ()
    learn_idle_timeout: int = 300
    bridge_policy: dict[str, BridgePolicy] = field(default_factory=dict)
    private_vifs: frozenset[str] = frozenset()
    trusted_vifs: frozenset[str] = frozenset()
    ovsdb: str | None = None
    xenstore: str | None = None

    def socket_path(self) -> str:
        rundir = os.environ.get("OVS_RUNDIR", "/var/run/openvswitch")
        return f"{rundir}/xvif-ovs.sock"

    def target(self) -> str:
        """What OVS is told to connect to (Bridge.controller)."""
        if self.listen == "unix":
            return f"unix:{self.socket_path()}"
        kind, _, rest = self.listen.partition(":")
        return f"{kind}:{rest}"

    def managed(self, bridge: str) -> bool:
        return not self.bridges or bridge in self.bridges

    def matches(self, names: frozenset[str], domain: str, domid: int, devid: int) -> bool:
        return bool({domain, str(domid), f"{domid}.{devid}"} & names)


def load(path: str | None, **overrides: object) -> Config:
    raw: dict = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
    known = {"controller", "bridges", "vifs"}
    if set(raw) - known:
        raise ConfigError(f"{path}: unknown section(s) {sorted(set(raw) - known)}; known: {sorted(known)}")
    ctl = raw.get("controller", {})
    _only(ctl, {"listen", "bridges", "learn_idle_timeout"}, f"{path} [controller]")
    listen = str(overrides.get("listen") or ctl.get("listen", "unix"))
    if listen != "unix" and not listen.startswith(("tcp:", "ssl:")):
        raise ConfigError(f"listen = {listen!r}: use unix, tcp:HOST:PORT or ssl:HOST:PORT")
    idle = ctl.get("learn_idle_timeout", 300)
    if not isinstance(idle, int) or not 1 <= idle <= 65535:
        raise ConfigError(f"learn_idle_timeout = {idle!r}: seconds, 1-65535")
    policies = {}
    for name, b in raw.get("bridges", {}).items():
        _only(b, {"private", "reserved_for"}, f"{path} [bridges.{name}]")
        reserved = b.get("reserved_for")
        if reserved is not None and not (
            isinstance(reserved, list) and all(isinstance(x, str | int) for x in reserved)
        ):
            raise ConfigError(f"[bridges.{name}] reserved_for: a list of domain names or domids")
        policies[name] = BridgePolicy(
            bool(b.get("private", False)), frozenset(map(str, reserved)) if reserved is not None else None
        )
    vifs = raw.get("vifs", {})
    _only(vifs, {"private", "trusted"}, f"{path} [vifs]")
    bridges = overrides.get("bridges") or ctl.get("bridges", [])
    return Config(
        listen=listen,
        bridges=tuple(bridges),  # type: ignore[arg-type]
        learn_idle_timeout=idle,
        bridge_policy=policies,
        private_vifs=frozenset(map(str, vifs.get("private", []))),
        trusted_vifs=frozenset(map(str, vifs.get("trusted", []))),
        ovsdb=overrides.get("ovsdb"),  # type: ignore[arg-type]
        xenstore=overrides.get("xenstore"),  # type: ignore[arg-type]
    )


def _only(section: dict, allowed: set[str], where: str) -> None:
    extra = set(section) - allowed
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}; known: {sorted(allowed)}")
