"""`lab up / down / status / env`: the simulated Xen host itself.

Bridges use OVS's userspace datapath (the kernel here has no openvswitch module); an
uplink is a veth pair whose far end sits in a namespace standing for the physical
LAN, with an address so that guests can reach "the outside".
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import LabError
from ..model.ports import UPLINK_MARK
from ..xenstore.client import connect, in_transaction
from . import daemons
from .daemons import read_pid, vsctl
from .sh import link_exists, netns_list, require_tools, run
from .state import DEFAULT_DIR, NETNS_PREFIX, BridgeRec, LabState, StateFile, netns_of

_IFNAME = re.compile(r"^[A-Za-z0-9_\-]{1,15}$")
# Documentation ranges (RFC 5737 / 3849): guaranteed never to be someone's real network.
_LAN_V4 = ["192.0.2.1/24", "198.51.100.1/24", "203.0.113.1/24"]
REQUIRED_TOOLS = ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovsdb-tool", "ovs-appctl", "ip", "ethtool")


@dataclass(frozen=True)
class BridgeArg:
    name: str
    uplink: str | None
    mode: str = "bridged"  # or "routed": the controller routes its guests (Xen's vif-route)


LAB_MODES = ("bridged", "routed", "nat")
METRICS_PORT = 9876  # the lab controller's /metrics, on loopback (one lab per machine)


def parse_bridge_arg(text: str) -> BridgeArg:
    """``xenbr1:peth1`` (with an uplink), ``xenbr1:peth1:routed``, or ``xenbr1`` for --internal."""
    name, _, rest = text.partition(":")
    uplink, _, mode = rest.partition(":")
    for part, what in ((name, "bridge"), (uplink, "uplink")):
        if part and not _IFNAME.match(part):
            raise LabError(f"{what} name {part!r} in {text!r} is not an interface name (1-15 of A-Z a-z 0-9 _ -)")
    if not name:
        raise LabError(f"{text!r}: write BRIDGE:UPLINK, e.g. xenbr1:peth1")
    if mode and mode not in LAB_MODES:
        raise LabError(f"{text!r}: the network model is one of {', '.join(LAB_MODES)} (BRIDGE:UPLINK:routed)")
    if mode in ("routed", "nat") and not uplink:
        raise LabError(f"{text!r}: a {mode} bridge needs an uplink (BRIDGE:UPLINK:{mode}): it routes to a LAN")
    return BridgeArg(name, uplink or None, mode or "bridged")


class Lab:
    def __init__(self, d: Path | str | None = None) -> None:
        self.dir = Path(d) if d else DEFAULT_DIR
        self.state_file = StateFile(self.dir)

    # -- env ---------------------------------------------------------------------

    @property
    def xenstore_socket(self) -> Path:
        return self.dir / "xenstored.sock"

    @property
    def config(self) -> Path:
        """The lab's controller configuration: it names the lab's bridges, nothing else."""
        return self.dir / "controller.toml"

    @property
    def rules_dir(self) -> Path:
        """The lab's /etc/xvif-ovs/rules.d: firewall rule files for its controller."""
        return self.dir / "rules.d"

    def env(self) -> dict[str, str]:
        return {
            "XENSTORED_PATH": str(self.xenstore_socket),
            "XVIF_OVS_CONFIG": str(self.config),
            # where `xvif-ovs log` finds the lab's hook and controller lines
            "XVIF_HOTPLUG_LOG": str(self.dir / "xen-hotplug.log"),
            "XVIF_CONTROLLER_LOG": str(self.dir / "controller.log"),
            **daemons.ovs_env(self.dir),
        }

    def hook_env(self) -> dict[str, str]:
        """What the lab gives hotplug scripts besides libxl's variables: its XenStore and
        OVSDB, a hotplug log of its own, and this installation's xvif-ovs."""
        beside = Path(sys.executable).parent / "xvif-ovs"
        xvif_ovs = str(beside) if beside.exists() else (shutil.which("xvif-ovs") or "xvif-ovs")
        return {**self.env(), "XVIF_OVS": xvif_ovs}

    def is_up(self) -> bool:
        return self.state_file.exists() and read_pid(self.dir / "ovsdb-server.pid") is not None

    def require_up(self) -> LabState:
        if not self.is_up():
            raise LabError(f"the lab at {self.dir} is not up; run `xvif-ovs lab up` first")
        return self.state_file.load()

    # -- up / down -----------------------------------------------------------------

    def start_controller(self, config: Path | None = None) -> None:
        daemons.start_controller(self.dir, config or self.config)

    def _write_config(self, bridges: list[BridgeArg]) -> None:
        names = ", ".join(f'"{b.name}"' for b in bridges)
        recs = {r.name: r for r in self.state_file.load().bridges}
        modes = ""
        for b in bridges:
            if b.mode == "routed":
                modes += f'\n[bridges.{b.name}]\nmode = "routed"\n'
            elif b.mode == "nat":
                r = recs[b.name]
                modes += (
                    f'\n[bridges.{b.name}]\nmode = "nat"\naddress = "{r.dom0_ipv4.split("/")[0]}"\n'
                    f'subnet = "{r.nat_subnet}"\ngateway = "{r.nat_gateway}"\n'
                )
        self.config.write_text(
            "# Written by `xvif-ovs lab up`: the controller manages the lab's bridges, and only them.\n"
            f'[controller]\nbridges = [{names}]\nrules = "{self.rules_dir}"\n{modes}'
            f'\n[metrics]\nlisten = "127.0.0.1:{METRICS_PORT}"\nhotplug_log = "{self.dir / "xen-hotplug.log"}"\n'
        )

    def stop_controller(self, kill: bool = False) -> None:
        daemons.stop_controller(self.dir, kill)

    def up(self, bridges: list[BridgeArg] | None = None, controller: bool = False, dummy: bool = False) -> LabState:
        require_tools(*REQUIRED_TOOLS)
        bridges = bridges if bridges is not None else [BridgeArg("xenbr0", "peth0")]
        if self.is_up():
            raise LabError(f"a lab is already up at {self.dir}; `xvif-ovs lab down` first")
        self._check_bridges(bridges)
        others = [n for n in netns_list() if n.startswith(NETNS_PREFIX)]
        if others:
            raise LabError(
                f"namespaces {', '.join(others)} exist from another lab (they use Xen's vif names, so only one "
                "lab can run per host); `xvif-ovs lab down --dir DIR` for that lab first"
            )
        if self.dir.exists():
            self.down()  # a lab that died without `down`: stop what still runs, remove the rest
        self.dir.mkdir(parents=True)
        try:
            daemons.start_ovs(self.dir, dummy)
            daemons.start_xenstored(self.dir)
            self._init_dom0()
            state = LabState()
            self.state_file.save(state)
            n_uplinks = 0
            for b in bridges:
                rec = self._add_bridge(b, n_uplinks)
                n_uplinks += rec.uplink is not None
                with self.state_file.locked() as st:
                    st.bridges.append(rec)
            self._write_config(bridges)
            if controller:
                self.start_controller()
        except BaseException:
            self.down()
            raise
        return self.state_file.load()

    def _check_bridges(self, bridges: list[BridgeArg]) -> None:
        names = [b.name for b in bridges] + [b.uplink for b in bridges if b.uplink]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise LabError(f"interface name(s) {', '.join(sorted(dup))} given twice")
        for n in names:
            if link_exists(n):
                raise LabError(f"an interface named {n} already exists on this host; pick another name")

    def _init_dom0(self) -> None:
        """What xen-init-dom0 writes at boot."""
        with connect(str(self.xenstore_socket)) as xs:

            def write(c) -> None:  # noqa: ANN001
                c.write(b"/local/domain/0/name", b"Domain-0")
                c.write(b"/local/domain/0/domid", b"0")

            in_transaction(xs, write)

    def _add_bridge(self, b: BridgeArg, index: int) -> BridgeRec:
        vsctl(self.dir, "add-br", b.name, "--", "set", "bridge", b.name, "datapath_type=netdev")
        run(["ip", "link", "set", b.name, "up"], check=False)
        if not b.uplink:
            vsctl(self.dir, "br-set-external-id", b.name, "xvif-lab-internal", "true")
            return BridgeRec(b.name)
        lan = "lan" if index == 0 else f"lan-{b.name}"
        ns = netns_of(lan)
        v4 = _LAN_V4[index] if index < len(_LAN_V4) else f"198.19.{index}.1/24"
        v6 = f"2001:db8:{index}::1/64"
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", b.uplink, "type", "veth", "peer", "name", "eth0", "netns", ns])
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", v4, "dev", "eth0"],
            ["ip", "-6", "addr", "add", v6, "dev", "eth0", "nodad"],
            ["ip", "link", "set", "eth0", "up"],
        ):
            run(cmd, netns=ns)
        run(["ip", "link", "set", b.uplink, "up"])
        # Declared as an operator would (a veth is no NIC: nothing else makes it an uplink).
        vsctl(self.dir, "add-port", b.name, b.uplink, "--", "set", "port", b.uplink, f"external_ids:{UPLINK_MARK}=true")
        dom0 = subnet = gateway = None
        if b.mode == "nat":
            # dom0 as vif-nat and network-nat want it: its LAN address (which the guests
            # leave with) and the guests' gateway on the bridge, and forwarding on this
            # interface (a guest's packet whose next hop the bridge has not learned yet
            # comes to dom0 once, untranslated, and goes back through the bridge).
            dom0 = v4.rsplit(".", 1)[0] + ".254/24"
            subnet, gateway = f"10.0.{index}.0/24", f"10.0.{index}.1"
            run(["ip", "addr", "add", dom0, "dev", b.name])
            run(["ip", "addr", "add", f"{gateway}/24", "dev", b.name])
            for key, value in (("forwarding", "1"), ("send_redirects", "0")):
                Path(f"/proc/sys/net/ipv4/conf/{b.name}/{key}").write_text(value)
        if b.mode == "routed":
            # dom0 as vif-route wants it: an address on the LAN, and forwarding on this
            # interface only (the next hops the bridge does not know yet go through it once).
            dom0 = v4.rsplit(".", 1)[0] + ".254/24"
            run(["ip", "addr", "add", dom0, "dev", b.name])
            # IPv6 too, but not forwarding: that is host-wide (net.ipv6.conf.all), and would
            # make the lab's host a router; IPv6 next hops are learned from the LAN's own
            # neighbour discovery here (README, "The lab").
            run(["ip", "-6", "addr", "add", v6.replace("::1/", "::fe/"), "dev", b.name, "nodad"])
            for key in ("forwarding", "send_redirects"):
                Path(f"/proc/sys/net/ipv4/conf/{b.name}/{key}").write_text("1" if key == "forwarding" else "0")
        return BridgeRec(b.name, b.uplink, lan, v4, v6, b.mode, dom0, subnet, gateway)

    def down(self) -> None:
        """Remove every process, namespace, interface and file the lab made. Never fails
        half-way: each step runs even if an earlier one found nothing to do."""
        state = self.state_file.load() if self.state_file.exists() else LabState()
        daemons.stop_controller(self.dir)
        # The NAT bridges' DHCP servers the controller started (they outlive it by design).
        for pidfile in self.dir.glob("xvif-ovs-dhcp-*.pid") if self.dir.exists() else ():
            daemons.stop_pid(pidfile)
        self._remove_leftovers(state)
        daemons.stop_xenstored(self.dir)
        daemons.stop_ovs(self.dir)
        # The netdev datapath's taps: one per bridge for its LOCAL port, and ovs-netdev.
        for b in [*state.bridges, BridgeRec("ovs-netdev")]:
            if link_exists(b.name):
                run(["ip", "link", "del", b.name], check=False)
        if self.dir.exists():
            shutil.rmtree(self.dir)

    def _remove_leftovers(self, state: LabState) -> None:
        for dom in state.domains.values():
            for v in dom.vifs:
                for dev in (v.dev, v.vifname, v.emu, f"{v.vifname}-emu" if v.vifname else None):
                    if dev and link_exists(dev):
                        run(["ip", "link", "del", dev], check=False)
        for b in state.bridges:
            if b.uplink and link_exists(b.uplink):
                run(["ip", "link", "del", b.uplink], check=False)
        for ns in netns_list():
            if ns.startswith(NETNS_PREFIX):
                run(["ip", "netns", "del", ns], check=False)

    # -- status ------------------------------------------------------------------

    def status(self) -> dict:
        procs = {
            name: read_pid(self.dir / f"{name}.pid")
            for name in ("ovsdb-server", "ovs-vswitchd", "xenstored", "controller")
        }
        state = self.state_file.load() if self.state_file.exists() else LabState()
        return {
            "dir": str(self.dir),
            "up": self.is_up(),
            "processes": procs,
            "bridges": [b.__dict__ for b in state.bridges],
            "domains": {
                n: {"domid": d.domid, "vifs": [v.vifname or v.dev for v in d.vifs] + [v.emu for v in d.vifs if v.emu]}
                for n, d in state.domains.items()
            },
        }
