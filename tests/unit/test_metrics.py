"""The metrics' pure parts: [metrics] in the configuration, the hook's log lines read
back, the tail that counts them, and the drop kinds in the cookies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xvif_ovs.controller.config import ConfigError, load
from xvif_ovs.controller.metrics import HotplugTail
from xvif_ovs.hotplug.log import parse_line
from xvif_ovs.model.host import BridgeModel, VifModel
from xvif_ovs.model.vifspec import parse_bridge, parse_ips
from xvif_ovs.pipeline.build import DROP_KINDS, P_DROP, build, drop_kind
from xvif_ovs.pipeline.flow import decode_cookie

OK = "2026-12-08T03:10:00 vif-xvif-ovs[12]: online vif5.0 (domid 5 devid 0) bridge=xenbr0 mac=00:16:3e:00:00:05 ofport=3: connected (55 ms)"
ERR = (
    "2026-12-08T03:10:01 vif-xvif-ovs[13]: error: online vif6.0 (domid 6 devid 0): bridge xenbr9 does not exist (7 ms)"
)


def cfg(tmp_path: Path, text: str):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return load(str(p))


@pytest.mark.parametrize(
    "listen, host, port",
    [
        ("9876", "127.0.0.1", 9876),
        (9876, "127.0.0.1", 9876),
        ("192.0.2.1:9100", "192.0.2.1", 9100),
        ("[::1]:80", "::1", 80),
    ],
)
def test_metrics_listen_a_bare_port_is_loopback(tmp_path, listen, host, port):
    value = f'"{listen}"' if isinstance(listen, str) else listen
    m = cfg(tmp_path, f"[metrics]\nlisten = {value}\n").metrics
    assert (m.host, m.port) == (host, port)
    assert m.remote == (host == "192.0.2.1")
    assert m.hotplug_log == "/var/log/xen/xen-hotplug.log"


def test_no_metrics_section_serves_nothing(tmp_path):
    assert cfg(tmp_path, '[controller]\nbridges = ["xenbr0"]\n').metrics is None


@pytest.mark.parametrize(
    "text, hint",
    [
        ('listen = "host.example:9876"', "not an IP address"),
        ('listen = "70000"', "1-65535"),
        ('listen = "[::1]9876"', "HOST:PORT"),
        ("listen = true", "a port"),
        ("", "a port"),
        ('listen = "9876"\nhotplug_log = "xen.log"', "absolute path"),
        ('listen = "9876"\nport = 1', "unknown key"),
    ],
)
def test_bad_metrics_settings_say_what_to_write(tmp_path, text, hint):
    with pytest.raises(ConfigError, match=hint):
        cfg(tmp_path, f"[metrics]\n{text}\n")


def test_hook_lines_read_back():
    ok, err = parse_line(OK), parse_line(ERR)
    assert ok is not None and ok.ok and (ok.action, ok.dev, ok.domid, ok.devid, ok.ms) == ("online", "vif5.0", 5, 0, 55)
    assert ok.message.endswith("connected")
    assert err is not None and not err.ok and err.ms == 7 and err.message == "bridge xenbr9 does not exist"
    assert parse_line("2026-12-08T03:10:00 vif-openvswitch: online vif5.0") is None  # Xen's own scripts
    old = parse_line("2026-12-08T03:10:00 vif-xvif-ovs[1]: error: offline vif5.0 (domid 5 devid 0): gone")
    assert old is not None and old.ms is None and old.outcome == "error"


def test_the_tail_counts_only_what_is_written_after_it_started_and_survives_rotation(tmp_path):
    log = tmp_path / "xen-hotplug.log"
    log.write_text(OK + "\n" + ERR + "\n")
    t = HotplugTail(str(log))
    t.poll()
    assert t.counts[("online", "ok")] == 0 and t.counts[("online", "error")] == 0  # history: not counted
    assert t.latest[(5, 0)].ok and not t.latest[(6, 0)].ok  # but each vif's latest is known
    with open(log, "a") as f:
        f.write(ERR + "\n" + OK[:30])  # the last line half written
    t.poll()
    assert t.counts[("online", "error")] == 1 and t.counts[("online", "ok")] == 0
    with open(log, "a") as f:
        f.write(OK[30:] + "\n")
    t.poll()
    assert t.counts[("online", "ok")] == 1
    assert t.buckets["online"][:3] == [1, 1, 2]  # 7 ms within 25 ms; 55 ms only from 100 ms
    os.rename(log, tmp_path / "xen-hotplug.log.1")  # logrotate
    log.write_text(OK.replace("vif5.0 (domid 5", "vif7.0 (domid 7") + "\n")
    t.poll()
    assert t.counts[("online", "ok")] == 2 and (7, 0) in t.latest
    t.poll()
    assert t.counts[("online", "ok")] == 2  # nothing read twice


def test_a_missing_log_is_no_hotplug_yet(tmp_path):
    t = HotplugTail(str(tmp_path / "none.log"))
    t.poll()
    assert t.latest == {} and sum(t.counts.values()) == 0


def test_every_drop_flow_of_a_vif_says_its_kind():
    v = VifModel(5, 0, "00:16:3e:00:00:05", parse_bridge("xenbr0"), parse_ips("192.0.2.5 2001:db8::5"), vif_port=3)
    flows = build(BridgeModel("xenbr0", vifs=(v,))).flows
    kinds = {drop_kind(f.cookie) for f in flows if decode_cookie(f.cookie)[0] == P_DROP}
    assert "?" not in kinds
    assert {"source-mac", "ipv4", "ipv6", "arp", "nd", "dhcp-server", "ra", "vlan", "other"} <= kinds
    assert kinds <= set(DROP_KINDS.values())


def test_sflow_and_ipfix_per_bridge(tmp_path):
    c = cfg(
        tmp_path,
        '[controller]\nbridges = ["xenbr0"]\n[bridges.xenbr0]\n'
        'sflow = { targets = ["192.0.2.9:6343", "[2001:db8::9]:6343"], sampling = 64, agent = "eth0" }\n'
        'ipfix = { targets = ["192.0.2.9:4739"], obs_domain_id = 7, cache_active_timeout = 60 }\n',
    )
    p = c.bridge_policy["xenbr0"]
    assert p.sflow.targets == ("192.0.2.9:6343", "[2001:db8::9]:6343")
    assert (p.sflow.sampling, p.sflow.polling, p.sflow.header, p.sflow.agent) == (64, 30, 128, "eth0")
    assert (p.ipfix.targets, p.ipfix.sampling, p.ipfix.obs_domain_id, p.ipfix.cache_active_timeout) == (
        ("192.0.2.9:4739",),
        400,
        7,
        60,
    )


@pytest.mark.parametrize(
    "line, hint",
    [
        ('sflow = { targets = ["collector.example:6343"] }', "not a collector address"),
        ('sflow = { targets = ["192.0.2.9"] }', "not a collector address"),
        ("sflow = { targets = [] }", "a list of collectors"),
        ('sflow = { targets = ["192.0.2.9:6343"], sampling = 0 }', "sampling = 0"),
        ('sflow = { targets = ["192.0.2.9:6343"], agent = "not an interface" }', "interface name"),
        ('sflow = { targets = ["192.0.2.9:6343"], rate = 5 }', "unknown key"),
        ('ipfix = { targets = ["192.0.2.9:4739"], obs_domain_id = -1 }', "observation domain"),
        ('ipfix = "192.0.2.9:4739"', "a table"),
    ],
)
def test_bad_collectors_say_what_to_write(tmp_path, line, hint):
    with pytest.raises(ConfigError, match=hint):
        cfg(tmp_path, f'[controller]\nbridges = ["xenbr0"]\n[bridges.xenbr0]\n{line}\n')


def test_controller_lines_are_tagged_with_each_vif_they_name_once():
    from xvif_ovs.controller.logtags import tags

    names = {5: "web", 6: "db"}.get
    assert tags("interface vif5.0 on xenbr0: port added", names) == " [vif=vif5.0 domid=5 domain=web]"
    both = tags("MAC conflict on xenbr0: vif6.0 and vif5.0-emu both use 00:16:3e:00:00:05", names)
    assert both == " [vif=vif6.0 domid=6 domain=db] [vif=vif5.0 domid=5 domain=web]"
    assert tags("xvif7.1 (NetBSD)", names) == " [vif=vif7.1 domid=7 domain=?]"
    assert tags("xenbr0: +28 flows", names) == ""
    assert tags("already tagged [vif=vif5.0 domid=5 domain=web]", names) == ""  # never twice


def test_hook_lines_carry_the_domain_name_when_xenstore_has_it():
    rec = parse_line(
        "2026-12-08T03:10:00 vif-xvif-ovs[12]: online vif5.0 (domid 5 devid 0 domain web) bridge=xenbr0 (6 ms)"
    )
    assert rec is not None and rec.domain == "web" and rec.ms == 6 and rec.message == "bridge=xenbr0"
