"""The firewall on real Xen: a guest's rules enforced by the OVS kernel datapath and the
Linux kernel's conntrack (the lab's is OVS's userspace one), through netback, against a
LAN namespace in dom0; a reject answered by the controller through a kernel meter."""

from __future__ import annotations

from pathlib import Path

from dom0 import mac, sh, up, vif_spec, wait_for, xvif
from test_xen_controller import LAN_IP

RULES = Path("/etc/xvif-ovs/rules.d/50-rxfw.toml")
GUEST_IP = "10.0.0.40"
TEXT = f"""
[[rule]]
guest = "rxfw"
direction = "in"
action = "allow"
protocol = "icmp"
type = 8
remote = "{LAN_IP}/32"

[[rule]]
guest = "rxfw"
direction = "in"
action = "reject"
protocol = "tcp"
ports = 23

[[rule]]
guest = "rxfw"
direction = "in"
action = "deny"
protocol = "any"
"""
CONNECT = (
    "import socket, sys\n"
    "s = socket.socket(); s.settimeout(3)\n"
    "try:\n    s.connect((sys.argv[1], int(sys.argv[2]))); print('connected')\n"
    "except ConnectionRefusedError: print('refused')\n"
    "except OSError as e: print('timeout' if 'timed out' in str(e) else e)\n"
)


def reloads() -> int:
    log = sh(["journalctl", "-u", "xvif-ovs-controller", "--no-pager", "-o", "cat"], check=False).stdout
    return log.count("firewall: reloaded")


def probe(port: int) -> str:
    return sh(
        ["ip", "netns", "exec", "rxlan", "python3", "-c", CONNECT, GUEST_IP, str(port)], timeout=30
    ).stdout.strip()


def test_a_guests_rules_hold_on_the_kernel_datapath(controller, guests, lan):
    before = reloads()
    RULES.write_text(TEXT)
    sh(["ip", "-n", "rxlan", "addr", "add", "10.0.0.2/24", "dev", "xr-lan1"])
    try:
        wait_for("the controller to read the rules", lambda: reloads() > before, 60)
        g = guests.create(
            "",
            [vif_spec(mac(40), ip=GUEST_IP)],
            up(GUEST_IP) + f"ping -c 3 -W 2 {LAN_IP} >/dev/null && echo XR-OUT-OK\necho XR-READY\n",
            name="rxfw",
        )
        out = g.wait_console("^XR-READY", 180).string
        assert "XR-OUT-OK" in out, f"the guest's own pings got no replies:\n{out[-2000:]}"  # replies pass
        allowed = sh(["ip", "netns", "exec", "rxlan", "ping", "-c", "3", "-W", "2", GUEST_IP], check=False)
        assert allowed.returncode == 0, allowed.stdout  # rule 0: ping from the LAN host
        other = sh(
            ["ip", "netns", "exec", "rxlan", "ping", "-I", "10.0.0.2", "-c", "2", "-W", "2", GUEST_IP], check=False
        )
        assert other.returncode != 0, other.stdout  # rule 2: not from anywhere else
        assert probe(23) == "refused"  # rule 1: a reset, made by the controller
        assert probe(24) == "timeout"  # rule 2: dropped
        flows = sh(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "xenbr0", "table=13"]).stdout
        assert "ct_state=+new-rpl+trk,icmp" in flows and "meter:30838" in flows, flows[-3000:]
        listing = xvif("rules", "--domain", "rxfw").stdout
        assert "in reject tcp 23" in listing and "in allow icmp type 8 from 10.0.0.1/32" in listing, listing
    finally:
        RULES.unlink(missing_ok=True)
        sh(["ip", "-n", "rxlan", "addr", "del", "10.0.0.2/24", "dev", "xr-lan1"], check=False)
