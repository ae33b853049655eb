"""The metrics' pure parts: [metrics] in the configuration, the hook's log lines read
back, the tail that counts them, and the drop kinds in the cookies."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
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
    allow = "true" if host == "192.0.2.1" else "false"
    m = cfg(tmp_path, f"[metrics]\nlisten = {value}\nallow_remote = {allow}\n").metrics
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
        ('listen = "192.0.2.1:9876"', "allow_remote = true"),
        ('listen = "0.0.0.0:9876"', "reachable from other hosts"),
        ('listen = "9876"\ncertificate = "/etc/xvif-ovs/m.pem"', "private_key, client_ca missing"),
        ('listen = "9876"\nallow_remote = "yes"', "true or false"),
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


def _pki(d: Path) -> dict[str, str]:
    """A CA, the controller's certificate and a scraper's, as an operator makes them."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=ca",
    )
    for who in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{who}.key",
            "-out",
            f"{who}.csr",
            "-subj",
            "/CN=127.0.0.1",
        )
        (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
        run(
            "x509",
            "-req",
            "-in",
            f"{who}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{who}.pem",
            "-days",
            "1",
            "-extfile",
            "ext",
        )
    return {
        k: str(d / f)
        for k, f in (
            ("ca", "ca.pem"),
            ("cert", "server.pem"),
            ("key", "server.key"),
            ("ccert", "client.pem"),
            ("ckey", "client.key"),
        )
    }


def test_https_metrics_answer_only_a_scraper_with_a_certificate_the_ca_signed(tmp_path):
    from xvif_ovs.controller.metrics import Metrics
    from xvif_ovs.controller.runtime import Runtime

    pki = _pki(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = cfg(
        tmp_path,
        f'[metrics]\nlisten = "{port}"\ncertificate = "{pki["cert"]}"\nprivate_key = "{pki["key"]}"\n'
        f'client_ca = "{pki["ca"]}"\n',
    )
    m = Metrics(Runtime(c), c.metrics)
    m.serve()
    try:
        ctx = ssl.create_default_context(cafile=pki["ca"])
        ctx.load_cert_chain(pki["ccert"], pki["ckey"])
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=ctx, timeout=10) as r:
            assert "xvif_ovsdb_connected 0.0" in r.read().decode()
        anonymous = ssl.create_default_context(cafile=pki["ca"])
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=anonymous, timeout=10).read()
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        m.close()


def test_a_domain_name_cannot_forge_a_tag_or_a_journal_line():
    import logging

    from xvif_ovs.controller.logtags import JournalFormatter, tags

    evil = {5: "web] [vif=vif9.0 domid=9 domain=db\n<0>panic"}.get
    assert tags("interface vif5.0 added", evil) == " [vif=vif5.0 domid=5 domain=?]"
    rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "first\nsecond", (), None)
    assert JournalFormatter("%(message)s").format(rec) == "<3>first\n<3>second"


class _Stats:
    def __init__(self, cookie: int, priority: int, packets: int, match: dict) -> None:
        self.cookie, self.table_id, self.priority = cookie, 1, priority
        self.packet_count, self.byte_count = packets, packets * 100
        self.match = match


class _Switch:
    """What FlowCounters asks of a session: the purpose's sum, and its flows."""

    def __init__(self) -> None:
        self.flows: list[_Stats] = []
        self.dumps = 0

    def aggregate(self, cookie: int, mask: int, timeout: float) -> tuple[int, int, int]:
        return (sum(f.packet_count for f in self.flows), sum(f.byte_count for f in self.flows), len(self.flows))

    def flow_stats(self, cookie: int, mask: int, timeout: float) -> list[_Stats]:
        self.dumps += 1
        return list(self.flows)


def test_flow_counters_never_go_backwards_and_dump_only_when_moved(monkeypatch):
    from xvif_ovs.controller import counters
    from xvif_ovs.pipeline.build import K_IPV4, drop_cookie
    from xvif_ovs.pipeline.flow import vif_owner

    now = [1000.0]
    monkeypatch.setattr(counters.time, "monotonic", lambda: now[0])
    ck = drop_cookie(vif_owner(5, 0), K_IPV4)
    sw, c = _Switch(), counters.FlowCounters(P_DROP)
    a = _Stats(ck, 200, 0, {"in_port": 3, "nw_src": "192.0.2.5"})
    sw.flows = [a]
    assert c.read(sw) == {} and sw.dumps == 0  # nothing ever matched: no dump
    a.packet_count, a.byte_count = 7, 700
    assert c.read(sw)[ck] == (7, 700) and sw.dumps == 1
    assert c.read(sw)[ck] == (7, 700) and sw.dumps == 1  # the sum did not move: no dump
    a.packet_count = 9
    now[0] += 1
    assert c.read(sw)[ck] == (7, 700) and sw.dumps == 1  # moved, but dumped a second ago
    now[0] += counters.DUMP_INTERVAL
    assert c.read(sw)[ck][0] == 9 and sw.dumps == 2
    # The flow is replaced (ip= changed): the new one counts from 0, the total goes on.
    b = _Stats(ck, 200, 2, {"in_port": 3, "nw_src": "192.0.2.6"})
    sw.flows = [b]
    now[0] += counters.DUMP_INTERVAL
    assert c.read(sw)[ck][0] == 11
    b.packet_count = 1  # (a flow of the same match, deleted and added: lower than it was)
    now[0] += counters.DUMP_INTERVAL
    assert c.read(sw)[ck][0] == 12
    sw.flows = []  # the vif went away: forgotten
    now[0] += counters.DUMP_INTERVAL
    assert c.read(sw) == {}
