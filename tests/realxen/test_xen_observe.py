"""What an operator's monitoring sees on the real host: the controller's /metrics (a
guest's drops by kind from the kernel datapath's counters, its hotplug as libxl ran the
hook, from the real /var/log/xen/xen-hotplug.log), and a guest's log lines from that file
and the controller's journal (systemd unit, journal priorities)."""

from __future__ import annotations

import json
import re
import urllib.request

from dom0 import PEER_IP, mac, reach, sh, up, vif_spec, wait_for, xvif

METRICS = "http://127.0.0.1:9876/metrics"


def scrape() -> str:
    with urllib.request.urlopen(METRICS, timeout=60) as r:
        return r.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_and_log_of_a_spoofing_guest(peer, guests):
    spoof = "ip addr flush dev eth0\nip addr add 10.0.0.99/24 dev eth0\n"
    # It stays up afterwards: a guest that is gone has no series.
    script = up("10.0.0.33") + reach(PEER_IP) + spoof + f"ping -c 5 -W 1 {PEER_IP}\necho XR-SPOOFED\nsleep 600\n"
    g = guests.create("rxobs", [vif_spec(mac(33), ip="10.0.0.33")], script)
    g.wait_console("^XR-SPOOFED", 180)
    vif = g.vif()
    who = {"domain": g.name, "vif": vif, "bridge": "xenbr0"}

    def spoofs(text: str) -> float:
        # Its ARP for the peer from 10.0.0.99 first, then any IPv4 from it once it has an answer
        return sum(sample(text, "xvif_vif_port_security_drops_total", kind=k, **who) or 0 for k in ("arp", "ipv4"))

    wait_for("the guest's spoofs in the metrics", lambda: spoofs(scrape()) > 0, timeout=30, interval=2.5)
    text = scrape()
    assert sample(text, "xvif_vif_port_security_drops_total", kind="source-mac", **who) == 0.0
    assert sample(text, "xvif_vif_packets_total", direction="from_guest", **who) > 0
    assert sample(text, "xvif_vif_hotplug_ok", **who) == 1.0  # libxl ran the hook; its line, read back
    took = sample(text, "xvif_vif_hotplug_seconds", **who)
    assert took is not None and 0 < took < 60
    assert sample(text, "xvif_switch_connected", bridge="xenbr0") == 1.0
    assert re.search(r"^xvif_xenstore_connected 1\.0$", text, re.M) and re.search(
        r"^xvif_ovsdb_connected 1\.0$", text, re.M
    )

    # The controller reports the drops within its 10 s interval, as a warning in the journal.
    def warned() -> bool:
        out = sh(["journalctl", "-u", "xvif-ovs-controller", "-p", "warning", "-o", "json", "--no-pager"]).stdout
        entries = [json.loads(x) for x in out.splitlines() if x.strip()]
        return any(
            e.get("SYSLOG_IDENTIFIER") == "xvif-ovs-controller"
            and e.get("PRIORITY") == "4"
            and "port security" in str(e.get("MESSAGE"))
            and f"[vif={vif} domid={g.domid} domain={g.name}]" in str(e.get("MESSAGE"))
            for e in entries
        )

    wait_for("the drop report in the journal, at warning priority", warned, timeout=60)
    lines = json.loads(xvif("log", "--domain", g.name, "--json").stdout)["lines"]
    assert any(
        ln["source"] == "hook" and ln["text"].startswith(f"online {vif} (domid {g.domid} devid 0 domain {g.name})")
        for ln in lines
    ), lines
    assert any(ln["source"] == "controller" and "port security" in ln["text"] for ln in lines), lines
    assert [ln["time"] for ln in lines] == sorted(ln["time"] for ln in lines)
