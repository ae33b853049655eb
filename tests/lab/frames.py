"""Real frames between lab guests: send with scapy inside one namespace, sniff inside
others, and report what arrived (with its VLAN tag, read from the packet socket's
auxdata), so tests observe the far side instead of inferring."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable

_SNIFF = r"""
import json, logging, sys
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.all import AsyncSniffer, Dot1Q, Ether, Raw, get_if_hwaddr
iface, marker, seconds = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
mine = get_if_hwaddr(iface)
# "ready" only once the packet socket is open (started_callback), never on a guess.
s = AsyncSniffer(iface=iface, store=True, started_callback=lambda: print("ready", flush=True),
    lfilter=lambda p: marker in bytes(p) and p[Ether].src != mine)  # raw bytes: whatever scapy dissects
s.start()
sys.stdin.readline()  # until told to stop
s.stop()
print(json.dumps([{"vlan": p[Dot1Q].vlan if Dot1Q in p else None, "src": p[Ether].src}
                  for p in (s.results or [])]))
"""

_SEND = r"""
import logging, sys
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.all import Dot1Q, Ether, IP, UDP, Raw, sendp, get_if_hwaddr
iface, marker, vlan, dst = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
src = sys.argv[5] if len(sys.argv) > 5 else get_if_hwaddr(iface)
p = Ether(src=src, dst=dst)
if vlan != "none":
    p = p / Dot1Q(vlan=int(vlan))
p = p / IP(src="198.18.255.1", dst="198.18.255.2") / UDP(sport=9, dport=9) / Raw(marker.encode())
sendp(p, iface=iface, verbose=False, count=2)
"""


def netns(guest: str) -> str:
    return f"xvl-{guest}"


class Capture:
    """Sniff on several guests at once while frames are sent."""

    def __init__(self, guests: Iterable[str], iface: str = "eth0") -> None:
        self.marker = f"XVIF-{uuid.uuid4().hex[:12]}"
        self.procs = {}
        for g in guests:
            p = subprocess.Popen(
                ["ip", "netns", "exec", netns(g), sys.executable, "-c", _SNIFF, iface, self.marker, "5"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            self.procs[g] = p
        for g, p in self.procs.items():
            line = p.stdout.readline()
            assert line.strip() == "ready", f"sniffer in {g} failed: {p.stderr.read()}"

    def send(self, guest: str, vlan: int | None = None, dst: str = "ff:ff:ff:ff:ff:ff", src: str | None = None) -> None:
        argv = [sys.executable, "-c", _SEND, "eth0", self.marker, str(vlan) if vlan else "none", dst]
        if src:
            argv.append(src)
        subprocess.run(["ip", "netns", "exec", netns(guest), *argv], check=True, capture_output=True, timeout=30)

    def send_frame(self, guest: str, expr: str, count: int = 1) -> None:
        """Send a frame built by the scapy expression ``expr`` (with ``M`` the marker
        payload and ``MAC`` the guest's own MAC) from the guest's eth0."""
        code = (
            "import logging, sys\n"
            'logging.getLogger("scapy.runtime").setLevel(logging.ERROR)\n'
            "from scapy.all import *\n"
            "from scapy.layers.dhcp import BOOTP, DHCP\n"
            "from scapy.layers.inet6 import *\n"
            'M = Raw(sys.argv[1].encode()); MAC = get_if_hwaddr("eth0")\n'
            f'sendp({expr}, iface="eth0", verbose=False, count={count})\n'
        )
        proc = subprocess.run(
            ["ip", "netns", "exec", netns(guest), sys.executable, "-c", code, self.marker],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0, f"sending {expr} from {guest}: {proc.stderr}"

    def results(self, settle: float = 0.5) -> dict[str, list[dict]]:
        """Stop sniffing; per guest, the frames that arrived (vlan None = untagged)."""
        time.sleep(settle)
        out = {}
        for g, p in self.procs.items():
            stdout, stderr = p.communicate("stop\n", timeout=30)
            assert p.returncode == 0, f"sniffer in {g}: {stderr}"
            out[g] = json.loads(stdout.strip().splitlines()[-1])
        return out

    def vlans(self, settle: float = 0.5) -> dict[str, set]:
        return {g: {f["vlan"] for f in frames} for g, frames in self.results(settle).items()}
