"""The operator CLI on the lab: both output forms, the JSON shapes, errors, and doctor
reporting each problem with its fix, then clean after the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from frames import Capture
from pyxs import Client

from xvif_ovs.cli import doctor as doctor_mod
from xvif_ovs.inspect.hoststate import read_host
from xvif_ovs.lab.host import BridgeArg


@pytest.fixture(scope="module")
def lab_bridges():
    return [BridgeArg("xenbr0", "peth0")]


@pytest.fixture(scope="module")
def ctl(host):
    host.lab.start_controller()
    deadline = time.monotonic() + 20
    while "connected" not in (host.lab.dir / "controller.log").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield host
    host.lab.stop_controller()


def cli(host, *args: str, code: int | None = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **host.lab.env()}
    proc = subprocess.run(
        [sys.executable, "-m", "xvif_ovs.cli.main", *args], env=env, capture_output=True, text=True, timeout=120
    )
    if code is not None:
        assert proc.returncode == code, f"{args}: exit {proc.returncode}: {proc.stdout} {proc.stderr}"
    return proc


def wait_flows(host, device: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        out = cli(host, "flows", "--vif", device, "--json", code=None)
        if out.returncode == 0 and json.loads(out.stdout)["bridges"][0]["flows"]:
            return
        assert time.monotonic() < deadline, f"no flows for {device}"
        time.sleep(0.1)


@pytest.fixture
def two(ctl, guests):
    guests.guest("web", 51, "mac=00:16:3e:00:33:01,ip=192.0.2.51,bridge=xenbr0.10")
    guests.guest("db", 52, "mac=00:16:3e:00:34:01,ip=192.0.2.52,bridge=xenbr0.10")
    wait_flows(guests, "vif51.0")
    wait_flows(guests, "vif52.0")
    return guests


def test_show_table_and_json(two):
    out = cli(two, "show").stdout
    assert "bridge xenbr0" in out and "connected" in out and "vif51.0" in out and "access 10" in out
    assert "web" in out and "00:16:3e:00:33:01" in out and "192.0.2.51" in out
    data = json.loads(cli(two, "show", "xenbr0", "--json").stdout)
    b = data["bridges"][0]
    assert set(b) == {
        "name",
        "managed",
        "mode",
        "router_mac",
        "nat_address",
        "fail_mode",
        "datapath_type",
        "controllers",
        "mirrors",
        "uplinks",
        "unmanaged",
        "vlans",
        "vifs",
    }
    assert b["managed"] and b["unmanaged"] == [] and b["uplinks"] == ["peth0"]
    assert (b["mode"], b["router_mac"]) == ("bridged", "")
    assert b["fail_mode"] == "secure" and b["uplinks"] == ["peth0"] and b["vlans"] == [10]
    web = next(v for v in b["vifs"] if v["domid"] == 51)
    assert set(web) == {
        "domain",
        "domid",
        "devid",
        "device",
        "mac",
        "ips",
        "visible",
        "bridge_spec",
        "hotplug_status",
        "hotplug_error",
        "ports",
    }
    assert web["hotplug_status"] == "connected" and web["ports"][0]["tag"] == 10 and web["ports"][0]["ofport"]
    err = cli(two, "show", "xenbr9", code=1)
    assert "no bridge named xenbr9" in err.stderr and err.stderr.count("\n") == 1


def test_flows_by_vif_domain_table_and_json(two):
    out = cli(two, "flows", "--vif", "vif51.0").stdout
    assert "vif51.0 (domain web, domid 51): port-security allow" in out
    assert "n_packets=" in out and "table=1" in out and "nw_src=192.0.2.51" in out
    data = json.loads(cli(two, "flows", "--domain", "db", "--table", "1", "--json").stdout)
    flows = data["bridges"][0]["flows"]
    assert flows and all(f["table"] == 1 and f["owner"]["domid"] == 52 for f in flows)
    assert set(flows[0]) == {"owner", "purpose", "table", "priority", "cookie", "packets", "bytes", "text"}
    assert "no vif named vif77.0" in cli(two, "flows", "--vif", "vif77.0", code=1).stderr
    assert "no domain named nosuch" in cli(two, "flows", "--domain", "nosuch", code=1).stderr


def test_flows_text_is_what_ovs_has(two):
    """What `flows` prints is the installed flow: OVS parses it back to the same flow."""
    data = json.loads(cli(two, "flows", "--vif", "vif51.0", "--json").stdout)
    texts = [f["text"] for f in data["bridges"][0]["flows"]]
    parsed = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow13", "parse-flows", "/dev/stdin"],
        input="\n".join(texts) + "\n",
        capture_output=True,
        text=True,
    )
    assert parsed.returncode == 0, parsed.stderr
    assert parsed.stdout.count("OFPT_FLOW_MOD") == len(texts)


def test_flows_diff_is_empty_when_in_sync_and_shows_drift(two):
    assert cli(two, "flows", "--diff").stdout == ""
    env = {**os.environ, **two.lab.env()}
    rogue = "cookie=0x7876010000000000,table=0,priority=7,in_port=9999,actions=drop"
    subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "add-flow", "xenbr0", rogue], env=env, check=True)
    try:
        out = cli(two, "flows", "--diff", code=1).stdout
        assert "xenbr0 - " in out and "in_port=9999" in out
        data = json.loads(cli(two, "flows", "--diff", "--json", code=1).stdout)
        assert data["drift"] and data["bridges"][0]["extra"]
    finally:
        subprocess.run(
            ["ovs-ofctl", "-O", "OpenFlow13", "del-flows", "--strict", "xenbr0", "table=0,priority=7,in_port=9999"],
            env=env,
        )


def test_flows_drops_counts_spoofs(two):
    cap = Capture(["db"])
    cap.send_frame(
        "web",
        'Ether(src="00:16:3e:66:66:66",dst="ff:ff:ff:ff:ff:ff")/IP(src="192.0.2.51",dst="192.0.2.52")/UDP(sport=9,dport=9)/M',
        count=4,
    )
    cap.results()
    data = json.loads(cli(two, "flows", "--drops", "--json").stdout)
    web = next(r for r in data["vifs"] if r["domid"] == 51)
    assert set(web) == {"bridge", "domid", "devid", "device", "domain", "dropped_packets", "dropped_bytes", "by_kind"}
    assert web["dropped_packets"] >= 4
    assert web["by_kind"].get("source-mac", 0) >= 4  # counted as what it was
    assert "vif51.0" in cli(two, "flows", "--drops").stdout
    assert "source-mac=" in cli(two, "flows", "--drops").stdout


@pytest.mark.parametrize(
    ("args", "verdict"),
    [
        (["--to", "vif52.0"], "forwarded to vif52.0"),
        (["--to", "192.0.2.52"], "forwarded to vif52.0"),
        (["--to", "ff:ff:ff:ff:ff:ff"], "flooded to 2 ports"),
        (
            ["--to", "vif52.0", "--src-mac", "00:16:3e:66:66:66"],
            "dropped: source MAC 00:16:3e:66:66:66 is not this vif's",
        ),
        (["--to", "vif52.0", "--src-ip", "192.0.2.99"], "dropped: source address is not this vif's"),
        (["--to", "192.0.2.52", "--proto", "arp"], "flooded to 2 ports"),
        (["--to", "vif52.0", "--proto", "dhcp"], "flooded to 2 ports"),
        (["--to", "vif52.0", "--vlan", "20"], "dropped: this port may not send a frame with that VLAN tag"),
    ],
)
def test_trace_verdicts(two, args, verdict):
    out = cli(two, "trace", "--from", "vif51.0", *args).stdout
    assert f"verdict: {verdict}" in out, out


def test_trace_json_and_errors(two):
    data = json.loads(cli(two, "trace", "--from", "vif51.0", "--to", "vif52.0", "--json").stdout)
    assert set(data) == {"bridge", "flow", "verdict", "outputs", "tables", "trace"}
    assert data["outputs"] == [{"port": "vif52.0", "vlan": None}] and data["tables"][0]["owner"] == "vif51.0"
    assert "no port named vif70.0" in cli(two, "trace", "--from", "vif70.0", "--to", "vif52.0", code=1).stderr


def test_mac_new(two):
    macs = cli(two, "mac", "new", "--count", "5").stdout.split()
    assert len(set(macs)) == 5 and all(m.startswith("00:16:3e:") for m in macs)
    assert "00:16:3e:00:33:01" not in macs
    assert len(json.loads(cli(two, "mac", "new", "--json").stdout)["macs"]) == 1
    assert "1-4096" in cli(two, "mac", "new", "--count", "0", code=1).stderr


def test_help_has_an_example_everywhere_and_completion(ctl):
    for cmd in (
        ["show"],
        ["flows"],
        ["trace"],
        ["doctor"],
        ["mac", "new"],
        ["controller"],
        ["hotplug"],
        ["xenstored"],
        ["lab", "up"],
    ):
        assert "example" in cli(ctl, *cmd, "--help").stdout, cmd
    script = cli(ctl, "completion", "bash").stdout
    check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert check.returncode == 0 and "complete -F _xvif_ovs xvif-ovs" in script and "--drops" in script


# -- doctor --------------------------------------------------------------------------------


def problems(host, tmp_path, monkeypatch, interval: float = 0) -> list[tuple[str, str]]:
    for k, v in host.lab.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(doctor_mod, "NETFILTER", tmp_path / "nf")
    monkeypatch.setattr(doctor_mod, "linux_bridges", lambda: ["br-legacy"] if (tmp_path / "nf").exists() else [])
    monkeypatch.setenv("XVIF_XL_CONF", str(tmp_path / "xl.conf"))
    _checks, found = doctor_mod.check_host(read_host(), None, interval)
    return [(p.check, p.message + " | " + p.fix) for p in found]


def test_doctor_is_healthy_then_sees_each_problem_and_its_fix(two, tmp_path, monkeypatch):
    assert problems(two, tmp_path, monkeypatch) == []
    out = cli(two, "doctor", "--interval", "0")
    assert "healthy" in out.stdout
    env = {**os.environ, **two.lab.env()}
    xs = Client(unix_socket_path=str(two.lab.xenstore_socket))
    xs.connect()
    try:
        # A vif in XenStore that never reached a bridge, with a hotplug error.
        be = b"/local/domain/0/backend/vif/61/0"
        xs.write(be + b"/mac", b"00:16:3e:00:3d:01")
        xs.write(be + b"/hotplug-status", b"error")
        xs.write(be + b"/hotplug-error", b"bridge xenbr9 does not exist")
        found = problems(two, tmp_path, monkeypatch)
        assert any(c == "vifs on no bridge" and "vif61.0" in m and "vif-xvif-ovs online" in m for c, m in found)
        assert any(c == "hotplug status" and "xenbr9" in m for c, m in found)
        # Its MAC taken by web as well, and another vif with a MAC that is no MAC.
        xs.write(be + b"/mac", b"00:16:3e:00:33:01")
        xs.write(b"/local/domain/0/backend/vif/62/0/mac", b"00:16:3e:zz:00:01")
        found = problems(two, tmp_path, monkeypatch)
        assert any(c == "MAC conflicts" and "00:16:3e:00:33:01" in m and "mac new" in m for c, m in found)
        assert any(c == "invalid MACs" and "vif62.0" in m for c, m in found)
        res = json.loads(cli(two, "doctor", "--interval", "0", "--json", code=1).stdout)
        assert not res["healthy"] and set(res["problems"][0]) == {"check", "message", "fix"}
        xs.delete(be)
        xs.delete(b"/local/domain/0/backend/vif/62")
        # A port no vif owns, whose device does not exist either.
        subprocess.run(["ovs-vsctl", "add-port", "xenbr0", "vif63.0"], env=env, check=True)
        found = problems(two, tmp_path, monkeypatch)
        assert any(c == "ports no vif owns" and "del-port xenbr0 vif63.0" in m for c, m in found)
        assert any(c == "missing ofports" and "vif63.0" in m for c, m in found)
        subprocess.run(["ovs-vsctl", "del-port", "xenbr0", "vif63.0"], env=env, check=True)
        # Host settings.
        (tmp_path / "nf").write_text("1\n")
        (tmp_path / "xl.conf").write_text('vif.default.script="vif-openvswitch"\n')
        subprocess.run(
            ["ovs-vsctl", "set", "Open_vSwitch", ".", "other_config:userspace-tso-enable=false"], env=env, check=True
        )
        found = problems(two, tmp_path, monkeypatch)
        assert any(c == "netfilter on bridges" and "bridge-nf-call-iptables=0" in m for c, m in found)
        assert any(c == "vif-openvswitch configured" and "vif-xvif-ovs" in m for c, m in found)
        assert any(c == "userspace TSO" and "userspace-tso-enable=true" in m for c, m in found)
        (tmp_path / "nf").unlink()
        (tmp_path / "xl.conf").write_text('vif.default.script="vif-xvif-ovs"\n')
        subprocess.run(
            ["ovs-vsctl", "set", "Open_vSwitch", ".", "other_config:userspace-tso-enable=true"], env=env, check=True
        )
        # Drift: someone else's edit under our cookie.
        rogue = "cookie=0x7876010000000000,table=0,priority=7,in_port=9999,actions=drop"
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "add-flow", "xenbr0", rogue], env=env, check=True)
        assert any(c == "flows drifted" for c, m in problems(two, tmp_path, monkeypatch))
        two.lab.stop_controller()
        deadline = time.monotonic() + 20  # ovs-vswitchd updates is_connected every few seconds
        while not any(c == "controller connected" for c, _ in problems(two, tmp_path, monkeypatch)):
            assert time.monotonic() < deadline, "a stopped controller was not reported"
            time.sleep(0.3)
        found = problems(two, tmp_path, monkeypatch)
        assert any(c == "controller connected" and "xvif-ovs-controller" in m for c, m in found)
        assert "controller connected" in cli(two, "doctor", "--interval", "0", code=1).stdout
        two.lab.start_controller()  # the fix for both: it reconnects and removes the stray flow
        deadline = time.monotonic() + 20
        while problems(two, tmp_path, monkeypatch):
            assert time.monotonic() < deadline, problems(two, tmp_path, monkeypatch)
            time.sleep(0.3)
    finally:
        xs.close()
    assert "healthy" in cli(two, "doctor", "--interval", "0").stdout


def test_doctor_sees_drops_rising(two, tmp_path, monkeypatch):
    spoofer = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            "xvl-web",
            sys.executable,
            "-c",
            "import time\nfrom scapy.all import *\n"
            "for _ in range(40):\n"
            "    sendp(Ether(src='00:16:3e:66:66:66',dst='ff:ff:ff:ff:ff:ff')/IP()/UDP(), iface='eth0', verbose=False)\n"
            "    time.sleep(0.1)\n",
        ]
    )
    try:
        time.sleep(0.5)
        found = problems(two, tmp_path, monkeypatch, interval=1.5)
        assert any(c == "port-security drops rising" and "vif51.0" in m for c, m in found), found
    finally:
        spoofer.wait(30)
