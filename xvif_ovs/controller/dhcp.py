"""DHCP for NAT bridges, as vif-nat's dhcpd entries give it: each NAT guest without an
``ip=`` gets an address of the bridge's subnet, chosen once and kept in its backend node
in XenStore (``xvif-nat-ip``, which only dom0 can write), so the address the DHCP server
hands out is the one port security enforces, and survives a controller restart. One
dnsmasq per NAT bridge (Debian's dnsmasq-base) serves exactly those hosts, nothing else:
no dynamic range, no DNS, no answer (not even a refusal) to any other client, as the
LAN's hosts reach it too. It runs on its own: a controller restart adopts it by its pid
file and command line; a change of hosts restarts it, its leases kept in its lease file."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from ..model.host import BridgeModel, NatSpec

log = logging.getLogger("xvif_ovs.controller.dhcp")

NAT_IP_KEY = "xvif-nat-ip"  # backend/vif/D/N/xvif-nat-ip: the address the controller gave it
DNSMASQ = "dnsmasq"
LEASE_TIME = "1h"


def allocate(nat: NatSpec, taken: Iterable[str], count: int) -> list[str]:
    """The ``count`` lowest addresses of the subnet that are free: not the network or
    broadcast address, not the gateway, not dom0's address, not ``taken``. Fewer if the
    subnet is full."""
    net = ipaddress.ip_network(nat.subnet)
    used = {ipaddress.ip_address(a) for a in taken} | {ipaddress.ip_address(nat.gateway)}
    out = []
    for host in net.hosts():
        if len(out) == count:
            break
        if host not in used:
            out.append(str(host))
    return out


def wanting(model: BridgeModel, keys: dict[tuple[int, int], dict[str, str]]) -> tuple[list[tuple[int, int]], set[str]]:
    """(the NAT vifs that need an address, the subnet's addresses already in use)."""
    assert model.nat is not None
    net = ipaddress.ip_network(model.nat.subnet)
    need, taken = [], set()
    for v in model.vifs:
        k = keys.get((v.domid, v.devid), {})
        in_net = [str(i.ip) for i in v.ips if i.version == 4 and i.ip in net]
        taken.update(in_net)
        if not k.get("ip") and not k.get(NAT_IP_KEY):
            need.append((v.domid, v.devid))
    return sorted(need), taken


def hosts(model: BridgeModel) -> list[tuple[str, str]]:
    """(MAC, address) of every guest of a NAT bridge that has an address in its subnet."""
    assert model.nat is not None
    net = ipaddress.ip_network(model.nat.subnet)
    out = []
    for v in model.vifs:
        addr = next((str(i.ip) for i in v.ips if i.version == 4 and i.ip in net), None)
        if addr:
            out.append((v.mac, addr))
    return sorted(out)


class DhcpServers:
    """The dnsmasq of each NAT bridge, kept to what the models say. Its hosts are on its
    command line, not in a file: dnsmasq reads files after dropping root, and the run
    directory need not be readable to its user. A running dnsmasq whose command line is
    the one wanted is left alone (a controller restart adopts it); any other is replaced,
    and its leases, in its lease file, carry over."""

    def __init__(self, rundir: str) -> None:
        self.rundir = Path(rundir)

    @property
    def running(self) -> bool:
        """A DHCP server of ours runs here (a bridge may have stopped being NAT)."""
        return any(self.pid(self._bridge_of(p)) for p in self.rundir.glob("xvif-ovs-dhcp-*.pid"))

    @staticmethod
    def _bridge_of(pidfile: Path) -> str:
        return pidfile.name[len("xvif-ovs-dhcp-") : -len(".pid")]

    def paths(self, bridge: str) -> tuple[Path, Path, Path]:
        base = self.rundir / f"xvif-ovs-dhcp-{bridge}"
        return base.with_suffix(".pid"), base.with_suffix(".leases"), base.with_suffix(".log")

    def running_argv(self, bridge: str) -> tuple[int, list[str]] | None:
        """The pid and command line of this bridge's dnsmasq, if it runs (ours: its command
        line names our pid file)."""
        pidfile, _, _ = self.paths(bridge)
        try:
            pid = int(pidfile.read_text().strip())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        except (OSError, ValueError):
            return None
        return (pid, argv) if f"--pid-file={pidfile}" in argv else None

    def pid(self, bridge: str) -> int | None:
        found = self.running_argv(bridge)
        return found[0] if found else None

    def argv(self, bridge: str, model: BridgeModel) -> list[str]:
        assert model.nat is not None
        pidfile, leases, logfile = self.paths(bridge)
        net = ipaddress.ip_network(model.nat.subnet)
        return [
            DNSMASQ,
            "--conf-file=/dev/null",
            "--port=0",  # no DNS: only DHCP, as vif-nat's dhcpd entries
            f"--interface={bridge}",
            "--bind-interfaces",  # one dnsmasq per NAT bridge, beside any other on the host
            "--except-interface=lo",
            f"--dhcp-range={net.network_address},static,{net.netmask},{LEASE_TIME}",
            f"--dhcp-option=option:router,{model.nat.gateway}",
            f"--dhcp-leasefile={leases}",
            f"--pid-file={pidfile}",
            f"--log-facility={logfile}",
            "--log-dhcp",
            # dom0 is on the LAN through this bridge too: its hosts' DHCP is none of ours.
            "--dhcp-ignore=tag:!known",
            *(f"--dhcp-host={mac},{addr}" for mac, addr in hosts(model)),
        ]

    def sync(self, models: dict[str, BridgeModel], nat_bridges: set[str]) -> bool:
        """Each NAT bridge's dnsmasq running with its hosts; one of a bridge that is no
        longer a NAT bridge of the config stopped. False if one would not start (the
        caller retries)."""
        ok = True
        for pidfile in self.rundir.glob("xvif-ovs-dhcp-*.pid"):
            bridge = self._bridge_of(pidfile)
            if bridge not in nat_bridges and self.pid(bridge):
                self.stop(bridge, "is no longer a NAT bridge of the configuration")
        for bridge, model in models.items():
            if model.mode != "nat" or model.nat is None:
                continue
            want = self.argv(bridge, model)
            found = self.running_argv(bridge)
            if found and found[1] == want:
                continue
            if found:
                self.stop(bridge, "has other guests now")
            ok = self.start(bridge, want) and ok
        return ok

    def start(self, bridge: str, argv: list[str]) -> bool:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError as e:
            log.error("NAT bridge %s: cannot run %s (%s): apt-get install dnsmasq-base", bridge, DNSMASQ, e.strerror)
            return False
        if proc.returncode != 0:
            log.error(
                "NAT bridge %s: dnsmasq would not start (%s); its guests without ip= get no address: %s",
                bridge,
                proc.returncode,
                (proc.stderr or proc.stdout).strip(),
            )
            return False
        log.info(
            "NAT bridge %s: DHCP server started (dnsmasq, %d host(s))",
            bridge,
            sum(a.startswith("--dhcp-host=") for a in argv),
        )

    def stop(self, bridge: str, why: str) -> None:
        pid = self.pid(bridge)
        if not pid:
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):  # it must let go of the DHCP socket before another binds it
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.01)
        log.info("NAT bridge %s %s: its DHCP server stopped", bridge, why)
