"""Packet-ins and a hostile guest.

1. Packet-ins: none in steady state, and none when 1000 MACs appear behind the uplink
   (they are learned by the switch: table 4 grows, the controller hears nothing).
2. A guest sends spoofed MAC/IP/ARP/ND, DHCP offers, RAs and frames from 10,000 source
   MACs as fast as it can, while two other guests measure throughput (iperf3) and
   latency (ping): compared with the same run without the attacker. Also: whether
   anything leaked to the LAN, the controller's CPU and the flow tables' size.

Usage (root): .venv/bin/python bench/adversarial.py [--repeats 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, flow_count, fresh_lab, ofctl, save, summary, wait_for

from xvif_ovs.lab.domain import add_domain
from xvif_ovs.lab.host import Lab

SENDER = r"""
import logging, sys, time
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.all import *
from scapy.layers.inet6 import *
mode, seconds, lan_mac = sys.argv[1], float(sys.argv[2]), sys.argv[3]
me = get_if_hwaddr("eth0")
frames = []
for i in range(10000):
    if mode == "attack":  # a new source MAC each frame, broadcast
        frames.append(Ether(src="02:%02x:%02x:%02x:00:01" % (i >> 16 & 255, i >> 8 & 255, i & 255), dst="ff:ff:ff:ff:ff:ff")/IP(src="192.0.2.13", dst="192.0.2.255")/UDP(sport=9, dport=9)/Raw(b"XVIF-ATTACK"))
    else:  # the same load, well-formed: its own MAC and IP, unicast to the LAN host
        frames.append(Ether(src=me, dst=lan_mac)/IP(src="192.0.2.13", dst="192.0.2.1")/UDP(sport=9, dport=9 + i % 100)/Raw(b"XVIF-BUSY"))
spoofs = [
    Ether(src=me, dst="ff:ff:ff:ff:ff:ff")/IP(src="192.0.2.99", dst="192.0.2.1")/UDP(sport=9, dport=9)/Raw(b"XVIF-ATTACK"),
    Ether(src=me, dst="ff:ff:ff:ff:ff:ff")/ARP(op=2, hwsrc="00:16:3e:66:66:66", psrc="192.0.2.1", pdst="192.0.2.11")/Raw(b"XVIF-ATTACK"),
    Ether(src=me, dst="ff:ff:ff:ff:ff:ff")/IP(src="192.0.2.13", dst="255.255.255.255")/UDP(sport=67, dport=68)/Raw(b"XVIF-ATTACK"),
    Ether(src=me, dst="33:33:00:00:00:01")/IPv6(src="fe80::1", dst="ff02::1")/ICMPv6ND_RA()/Raw(b"XVIF-ATTACK"),
    Ether(src=me, dst="33:33:00:00:00:01")/IPv6(src="2001:db8::13", dst="ff02::1")/ICMPv6ND_NA(tgt="2001:db8::1")/ICMPv6NDOptDstLLAddr(lladdr=me)/Raw(b"XVIF-ATTACK"),
] if mode == "attack" else frames[:5]
raw = [bytes(f) for f in frames]
extra = [bytes(f) for f in spoofs]
s = conf.L2socket(iface="eth0")
end = time.time() + seconds
n = 0
while time.time() < end:
    for f in raw[:2000] + extra:
        s.send(f)
        n += 1
    raw = raw[2000:] + raw[:2000]
print(n)
"""


def sh(*cmd: str, timeout: float = 120) -> str:  # noqa
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=timeout).stdout


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def measure(seconds: int) -> tuple[float, float]:
    srv = subprocess.Popen(["ip", "netns", "exec", "xvl-v2", "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    ping = subprocess.Popen(
        ["ip", "netns", "exec", "xvl-v1", "ping", "-q", "-c", str(seconds * 100), "-i", "0.01", "192.0.2.12"],
        stdout=subprocess.PIPE,
        text=True,
    )
    out = json.loads(sh("ip", "netns", "exec", "xvl-v1", "iperf3", "-c", "192.0.2.12", "-t", str(seconds), "-J"))
    srv.wait(30)
    rtt = float(re.search(r"= [\d.]+/([\d.]+)/", ping.communicate(timeout=60)[0]).group(1))
    return out["end"]["sum_received"]["bits_per_second"] / 1e9, rtt


def packet_ins(lab: Lab) -> int:
    return (lab.dir / "controller.log").read_text().count("unexpected packet-in")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    args = ap.parse_args()
    lab = fresh_lab("/run/xvif-ovs/bench-adversarial", controller=True)
    results: dict = {}
    try:
        add_domain(lab, "v1", 11, ["mac=00:16:3e:00:0b:01,ip=192.0.2.11 2001:db8::11"])
        add_domain(lab, "v2", 12, ["mac=00:16:3e:00:0c:01,ip=192.0.2.12 2001:db8::12"])
        add_domain(lab, "bad", 13, ["mac=00:16:3e:00:0d:01,ip=192.0.2.13 2001:db8::13"])

        def ok() -> bool:
            cmd = ["ip", "netns", "exec", "xvl-v1", "ping", "-c1", "-W1", "192.0.2.12"]
            return subprocess.run(cmd, capture_output=True).returncode == 0

        wait_for(ok, 30, 0.2)
        # 1. Packet-ins: steady state, then 1000 MACs behind the uplink.
        measure(1)
        steady = packet_ins(lab)
        learned_before = len([ln for ln in ofctl(lab.dir, "dump-flows", "table=4").splitlines() if "dl_dst=" in ln])
        gen = "from scapy.all import *\ns=conf.L2socket(iface='eth0')\nfor i in range(1000):\n    s.send(Ether(src='02:00:00:00:%02x:%02x' % (i>>8, i&255), dst='ff:ff:ff:ff:ff:ff')/ARP(psrc='192.0.2.200', pdst='192.0.2.201'))\n"
        sh("ip", "netns", "exec", "xvl-lan", sys.executable, "-c", gen)
        time.sleep(1)
        learned_after = len([ln for ln in ofctl(lab.dir, "dump-flows", "table=4").splitlines() if "dl_dst=" in ln])
        results["packet_ins"] = {
            "steady_state": steady,
            "after_1000_uplink_macs": packet_ins(lab) - steady,
            "learned_flows_before": learned_before,
            "learned_flows_after": learned_after,
        }
        print(f"  packet-ins: {results['packet_ins']}", flush=True)
        # 2. The hostile guest.
        pid = int((lab.dir / "controller.pid").read_text())
        lan_mac = sh("ip", "netns", "exec", "xvl-lan", "cat", "/sys/class/net/eth0/address").strip()
        ctl = str(lab.dir / "ovs-vswitchd.ctl")
        runs: dict[str, list[tuple[float, float]]] = {"quiet": [], "busy": [], "attack": []}
        sent: dict[str, list[int]] = {"busy": [], "attack": []}
        cpu, flows, megaflows, leaked = [], [], [], []
        for _r in range(args.repeats):
            for mode in runs:
                sh("ovs-appctl", "-t", ctl, "revalidator/purge")  # each run starts from an empty datapath cache
                if mode == "quiet":
                    runs[mode].append(measure(args.seconds))
                    continue
                sniff = subprocess.Popen(
                    ["ip", "netns", "exec", "xvl-lan", "tcpdump", "-n", "-i", "eth0", "-c", "1000", "-w", "-"]
                    + ["udp or arp or icmp6"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
                c0 = cpu_seconds(pid)
                sender = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        "xvl-bad",
                        sys.executable,
                        "-c",
                        SENDER,
                        mode,
                        str(args.seconds + 2),
                        lan_mac,
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                time.sleep(1)
                runs[mode].append(measure(args.seconds))
                sent[mode].append(int(sender.communicate(timeout=120)[0].strip() or 0))
                sniff.terminate()
                pcap = sniff.communicate(timeout=30)[0]
                if mode == "attack":
                    cpu.append(cpu_seconds(pid) - c0)
                    flows.append(flow_count(lab.dir))
                    megaflows.append(len(sh("ovs-appctl", "-t", ctl, "dpctl/dump-flows").splitlines()))
                    leaked.append(pcap.count(b"XVIF-ATTACK"))
            print(f"  repeat: {runs} sent {sent}", flush=True)

        def med(mode: str, i: int) -> float:
            return summary([r[i] for r in runs[mode]])["median"]

        results["hostile_guest"] = {
            **{f"{m}_gbps": summary([r[0] for r in runs[m]]) for m in runs},
            **{f"{m}_rtt_ms": summary([r[1] for r in runs[m]]) for m in runs},
            **{f"{m}_frames_sent": summary(sent[m]) for m in sent},
            "throughput_ratio": med("attack", 0) / med("quiet", 0),
            "rtt_ratio": med("attack", 1) / med("quiet", 1),
            "throughput_ratio_vs_busy": med("attack", 0) / med("busy", 0),
            "rtt_ratio_vs_busy": med("attack", 1) / med("busy", 1),
            "attack_frames_seen_on_lan": leaked,
            "controller_cpu_s_during_attack": summary(cpu),
            "openflow_flows_after": flows,
            "datapath_flows_after": megaflows,
        }
    finally:
        lab.down()
    out = save("adversarial", results, ["adversarial.py", *sys.argv[1:]])
    print(json.dumps(results, indent=1)[:2000])
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
