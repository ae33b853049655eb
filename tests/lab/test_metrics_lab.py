"""The controller's /metrics as an operator's monitoring sees it: a real Prometheus
server (Debian's prometheus package) scraping the lab's controller, queried through its
HTTP API, with the alert rules and the Grafana dashboard shipped in deploy/."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from labflows import Flows, cli, controller, wait_for

from xvif_ovs.controller.metrics import MIN_INTERVAL
from xvif_ovs.lab.host import METRICS_PORT

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "deploy/vif-xvif-ovs"
ALERTS = ROOT / "deploy/prometheus/xvif-ovs-alerts.yml"
DASHBOARD = ROOT / "deploy/grafana/xvif-ovs-dashboard.json"
PROM_PORT = 19090
WEB = ("web", 41, "00:16:3e:00:29:01", "192.0.2.41")
LAN = "192.0.2.1"


def need(tool: str) -> None:
    """deploy/setup.sh installs Debian's prometheus package: without it the set-up is
    broken, and these tests say so instead of skipping."""
    assert shutil.which(tool), f"{tool} not found: apt-get install prometheus (deploy/setup.sh does)"


def scrape() -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as r:
        return r.read().decode()


def fresh() -> str:
    """A scrape that sees what happened before it was called: the controller answers
    scrapes closer than MIN_INTERVAL with its last answer (ours or Prometheus's)."""
    time.sleep(MIN_INTERVAL + 0.1)
    return scrape()


def sample(text: str, name: str, **labels: str) -> float | None:
    """One series' value in the exposition text (None: absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def metered(host):
    rules = host.lab.dir / "rules.d"
    rules.mkdir(exist_ok=True)
    config = (
        f'[controller]\nbridges = ["xenbr0"]\nrules = "{rules}"\n\n'
        f'[metrics]\nlisten = "{METRICS_PORT}"\nhotplug_log = "{host.lab.dir / "xen-hotplug.log"}"\n'
    )
    with controller(host, config):
        wait_for(lambda: "xvif_switch_connected" in scrape(), "the controller's /metrics")
        yield host


class Prometheus:
    def __init__(self, d: Path) -> None:
        self.dir = d
        cfg = d / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{ALERTS}']\n"
            "scrape_configs:\n"
            "  - job_name: xvif-ovs\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{METRICS_PORT}']}}]\n"
        )
        self.log = open(d / "prometheus.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={cfg}",
                f"--storage.tsdb.path={d / 'data'}",
                f"--web.listen-address=127.0.0.1:{PROM_PORT}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def ready(self) -> bool:
        assert self.proc.poll() is None, (self.dir / "prometheus.log").read_text()[-3000:]
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{PROM_PORT}/-/ready", timeout=2) as r,
        ):
            return r.status == 200
        return False

    def api(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{PROM_PORT}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def value(self, expr: str) -> float | None:
        result = self.api("query", query=expr)["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def prom(metered, tmp_path_factory) -> Iterator[Prometheus]:
    need("prometheus")
    p = Prometheus(tmp_path_factory.mktemp("prometheus"))
    try:
        wait_for(p.ready, "prometheus to start", timeout=60)
        wait_for(lambda: p.value('up{job="xvif-ovs"}') == 1.0, "prometheus to scrape the controller", timeout=30)
        yield p
    finally:
        p.stop()


def web(host) -> None:
    name, domid, mac, ip = WEB
    host.guest(name, domid, f"mac={mac},bridge=xenbr0,ip={ip}")


def test_prometheus_sees_a_guests_drops_rise_by_kind_after_it_spoofs(guests, prom):
    web(guests)
    ipv4 = 'xvif_vif_port_security_drops_total{domain="web",domid="41",devid="0",vif="vif41.0",kind="ipv4"}'
    mac = ipv4.replace('"ipv4"', '"source-mac"')
    wait_for(lambda: prom.value(ipv4) is not None, "the guest's drop series in Prometheus", timeout=30)
    before_ip, before_mac = prom.value(ipv4), prom.value(mac)
    assert before_mac is not None
    # Its own address first (the LAN's MAC is then in its neighbour cache), then another's.
    guests.exec("web", "ping", "-c1", "-W2", LAN)
    guests.exec("web", "ip", "addr", "add", "192.0.2.99/32", "dev", "eth0")
    guests.exec("web", "ping", "-c3", "-i0.2", "-W1", "-I", "192.0.2.99", LAN, check=False)
    wait_for(lambda: (prom.value(ipv4) or 0) >= before_ip + 3, "Prometheus to see the IPv4 spoof", timeout=30)
    assert prom.value(f"increase({ipv4}[1m])") > 0
    assert prom.value(mac) == before_mac  # counted as what it was, not as every kind
    guests.exec("web", "ip", "link", "set", "eth0", "address", "00:16:3e:00:29:99")
    # The LAN's MAC known, so each ping is a frame (not an ARP retried); more of them than the
    # alert's threshold: a stray frame or ten is not news.
    lan_mac = guests.exec("lan", "cat", "/sys/class/net/eth0/address").stdout.strip()
    guests.exec("web", "ip", "neigh", "replace", LAN, "lladdr", lan_mac, "dev", "eth0", "nud", "permanent")
    guests.exec("web", "ping", "-c20", "-i0.2", "-W1", LAN, check=False, timeout=60)
    wait_for(lambda: (prom.value(mac) or 0) > before_mac, "Prometheus to see the source-MAC spoof", timeout=30)
    # The guest's traffic counters and identity carry its domain, domid, devid and VM uuid.
    info = prom.api("query", query='xvif_vif_info{domain="web"}')["result"][0]["metric"]
    assert info["mac"] == WEB[2] and info["bridge"] == "xenbr0" and re.fullmatch(r"[0-9a-f-]{36}", info["vm"])
    assert prom.value('xvif_vif_packets_total{domain="web",direction="from_guest"}') > 0
    # The alert the rules ship for it goes pending (its for: is a minute).
    wait_for(
        lambda: any(
            a["labels"]["alertname"] == "XvifOvsPortSecurityDrops" and a["labels"].get("domain") == "web"
            for a in prom.api("alerts")["alerts"]
        ),
        f"the port-security alert ({prom.value(mac)} source-mac drops now, {before_mac} before; increase over 5m: "
        f"{prom.value(f'increase({mac}[5m])')})",
        timeout=30,
    )


def test_hook_time_and_outcome_reach_the_metrics(guests, prom):
    before = fresh()
    ok0 = sample(before, "xvif_hotplug_total", action="online", outcome="ok")
    err0 = sample(before, "xvif_hotplug_total", action="online", outcome="error")
    assert ok0 is not None and err0 is not None  # from zero, before any run
    web(guests)
    # The hook run as libxl runs it, for a vif whose backend is not in XenStore: it fails.
    env = {**os.environ, **guests.lab.hook_env(), "XENBUS_TYPE": "vif", "XENBUS_PATH": "backend/vif/42/0"}
    env.update(XENBUS_BASE_PATH="backend", netdev="", vif="vif42.0")
    failed = subprocess.run([str(HOOK), "online", "type_if=vif"], env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1, failed.stderr
    text = fresh()
    assert sample(text, "xvif_hotplug_total", action="online", outcome="ok") >= ok0 + 1
    assert sample(text, "xvif_hotplug_total", action="online", outcome="error") >= err0 + 1
    took = sample(text, "xvif_vif_hotplug_seconds", domain="web", vif="vif41.0")
    assert took is not None and 0 < took < 30
    assert sample(text, "xvif_vif_hotplug_ok", domain="web") == 1.0
    assert sample(text, "xvif_hotplug_seconds_count", action="online") >= 1
    wait_for(
        lambda: (prom.value('sum(increase(xvif_hotplug_total{outcome="error"}[1m]))') or 0) > 0,
        "Prometheus to see the failed hotplug",
        timeout=30,
    )


def test_a_quiet_scrape_asks_each_switch_four_short_questions_and_dumps_only_when_drops_moved(guests, metered):
    """Port stats, table stats, the sum of our flows and of the drop flows, at once: the
    drop flows are dumped only when that sum moved (and at most every 10 s)."""
    web(guests)
    wait_for(lambda: sample(fresh(), "xvif_vif_info", domain="web") == 1.0, "the guest in the metrics")
    assert sample(fresh(), "xvif_metrics_scrape_requests") == 4
    before = sample(fresh(), "xvif_vif_port_security_drops_total", domain="web", kind="source-mac")
    assert before is not None
    guests.exec("web", "ip", "link", "set", "eth0", "address", "00:16:3e:00:29:98")
    guests.exec("web", "ping", "-c1", "-W1", LAN, check=False)
    asked = []

    def moved() -> bool:
        text = fresh()
        asked.append(sample(text, "xvif_metrics_scrape_requests"))
        return sample(text, "xvif_vif_port_security_drops_total", domain="web", kind="source-mac") > before

    wait_for(moved, "the spoof in the drop counters", timeout=30)
    assert asked[-1] == 5 and set(asked) <= {4, 5}, asked  # one dump, when it showed
    assert sample(fresh(), "xvif_metrics_scrape_requests") == 4


def test_scrapes_closer_than_two_seconds_get_the_last_answer(guests, metered):
    a = fresh()
    b = scrape()
    mine = [ln for ln in a.splitlines() if ln.startswith("xvif_")]  # (process_* are read anew)
    assert mine and mine == [ln for ln in b.splitlines() if ln.startswith("xvif_")]  # nothing asked again
    c = fresh()
    assert sample(c, "xvif_metrics_switch_requests_total") > sample(a, "xvif_metrics_switch_requests_total")


def test_state_metrics_follow_the_switch_and_the_rules(guests, metered):
    text = fresh()
    assert sample(text, "xvif_switch_connected", bridge="xenbr0") == 1.0
    assert sample(text, "xvif_ovsdb_connected") == 1.0 and sample(text, "xvif_xenstore_connected") == 1.0
    assert sample(text, "xvif_bridge_flows_drift", bridge="xenbr0") == 0.0
    assert sample(text, "xvif_bridge_foreign_flows", bridge="xenbr0") == 0.0
    assert sample(text, "process_resident_memory_bytes") > 10e6
    flows = metered.lab.dir / "extra.flows"
    # Someone else's flow (no cookie of ours): foreign, not drift; one with our cookie: drift.
    flows.write_text(
        "table=3,priority=7,dl_dst=00:16:3e:7e:7e:7e,actions=drop\n"
        "cookie=0x7876060000000000,table=3,priority=7,dl_dst=00:16:3e:7e:7e:7f,actions=drop\n"
    )
    Flows("xenbr0").ofctl(metered, "add-flows", str(flows))
    try:
        text = fresh()
        assert sample(text, "xvif_bridge_foreign_flows", bridge="xenbr0") == 1.0
        assert sample(text, "xvif_bridge_flows_drift", bridge="xenbr0") == 1.0
    finally:
        Flows("xenbr0").ofctl(metered, "del-flows", "table=3,dl_dst=00:16:3e:7e:7e:7e")
        Flows("xenbr0").ofctl(metered, "del-flows", "table=3,dl_dst=00:16:3e:7e:7e:7f")
    text = fresh()
    assert sample(text, "xvif_bridge_flows_drift", bridge="xenbr0") == 0.0
    assert sample(text, "xvif_bridge_foreign_flows", bridge="xenbr0") == 0.0


def test_the_alert_rules_pass_promtool_and_fire_on_what_they_watch(tmp_path):
    need("promtool")
    check = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # What fires and when (expr, for, labels): promtool compares annotations too, and the
    # operator's words in them are not what this test is about.
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    bare = tmp_path / "alerts.yml"
    bare.write_text(yaml.safe_dump(rules))
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(
        f"rule_files: ['{bare}']\n"
        "evaluation_interval: 1m\n"
        "tests:\n"
        "  - interval: 1m\n"
        "    input_series:\n"
        '      - series: \'xvif_switch_connected{instance="h1",bridge="xenbr0"}\'\n'
        "        values: '1 1 0 0 0 0'\n"
        '      - series: \'xvif_bridge_flows_drift{instance="h1",bridge="xenbr0"}\'\n'
        "        values: '0 0 2 2 2 2 2 2 2 2'\n"
        '      - series: \'xvif_vif_port_security_drops_total{instance="h1",bridge="xenbr0",domain="web",'
        'domid="5",devid="0",vif="vif5.0",vm="u",kind="ipv4"}\'\n'
        "        values: '0 0 0 20 40 60 80'\n"
        '      - series: \'xvif_hotplug_total{instance="h1",action="online",outcome="error"}\'\n'
        "        values: '0 0 1 1'\n"
        "    alert_rule_test:\n"
        "      - {eval_time: 1m, alertname: XvifOvsSwitchDisconnected, exp_alerts: []}\n"
        "      - eval_time: 4m\n"
        "        alertname: XvifOvsSwitchDisconnected\n"
        "        exp_alerts: [{exp_labels: {severity: critical, instance: h1, bridge: xenbr0, "
        "}}]\n"
        "      - {eval_time: 5m, alertname: XvifOvsFlowDrift, exp_alerts: []}\n"
        "      - eval_time: 8m\n"
        "        alertname: XvifOvsFlowDrift\n"
        "        exp_alerts: [{exp_labels: {severity: warning, instance: h1, bridge: xenbr0}}]\n"
        "      - {eval_time: 2m, alertname: XvifOvsPortSecurityDrops, exp_alerts: []}\n"
        "      - eval_time: 5m\n"
        "        alertname: XvifOvsPortSecurityDrops\n"
        "        exp_alerts: [{exp_labels: {severity: warning, instance: h1, bridge: xenbr0, domain: web, "
        "domid: '5', vif: vif5.0, kind: ipv4}}]\n"
        "      - {eval_time: 1m, alertname: XvifOvsHotplugErrors, exp_alerts: []}\n"
        "      - eval_time: 3m\n"
        "        alertname: XvifOvsHotplugErrors\n"
        "        exp_alerts: [{exp_labels: {severity: warning, instance: h1, action: online, outcome: error}}]\n"
    )
    run = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_dashboard_query_runs_on_prometheus_and_names_metrics_the_controller_serves(guests, prom):
    web(guests)
    wait_for(lambda: sample(fresh(), "xvif_vif_info", domain="web") == 1.0, "the guest in the metrics")
    served = set(re.findall(r"^# TYPE (\S+) ", fresh(), re.M))
    families = set()
    for name in served:
        families |= {name, f"{name}_total", f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    variables = {"$instance": ".*", "$bridge": ".*", "$domain": ".*", "$__rate_interval": "1m"}
    for expr in exprs:
        for metric in set(re.findall(r"\b((?:xvif|process)_[a-z_]+)\b", expr)):
            assert metric in families, f"{metric} in the dashboard is not served by the controller"
        q = expr
        for k, v in variables.items():
            q = q.replace(k, v)
        prom.api("query", query=q)  # status "success", or the assertion in api() names it
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            metric = re.search(r"label_values\((\w+)", v["query"]["query"]).group(1)
            assert metric in families or metric == "up"


def test_log_merges_one_guests_hook_and_controller_lines_in_time_order(guests, metered):
    web(guests)
    guests.guest("db", 43, "mac=00:16:3e:00:2b:01,bridge=xenbr0,ip=192.0.2.43")
    controller_log = metered.lab.dir / "controller.log"
    wait_for(lambda: "[vif=vif41.0 domid=41 domain=web]" in controller_log.read_text(), "a tagged controller line")

    def log(*args: str) -> list[dict]:
        out = cli(metered, "log", *args, "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["lines"]

    lines = log("--domain", "web")
    sources = {ln["source"] for ln in lines}
    assert sources == {"hook", "controller"}, lines
    assert any(ln["text"].startswith("online vif41.0 (domid 41 devid 0 domain web)") for ln in lines)
    assert all("vif43.0" not in ln["text"] and "domain=db" not in ln["text"] for ln in lines)
    assert [ln["time"] for ln in lines] == sorted(ln["time"] for ln in lines)
    assert log("--domain", "41") == lines
    assert log("--vif", "vif41.0") == lines
    theirs = log("--vif", "vif43.0")
    assert theirs and all("vif43.0" in ln["text"] for ln in theirs)
    text = cli(metered, "log", "--domain", "web", "-n", "2").stdout
    assert len(text.splitlines()) == 2 and re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (hook|controller) ", text)
    bad = cli(metered, "log", "--vif", "eth0")
    assert bad.returncode == 1 and "vif5.0" in bad.stderr


def test_firewall_rule_hits_and_what_each_rule_is(guests, metered):
    rules = metered.lab.dir / "rules.d"
    (rules / ".10-web.toml").write_text(
        '[[rule]]\nguest = "web"\ndirection = "in"\naction = "allow"\nprotocol = "icmp"\nremote = "192.0.2.0/24"\n'
        '[[rule]]\nguest = "web"\ndirection = "in"\naction = "deny"\nprotocol = "tcp"\nports = 23\n'
    )
    (rules / ".10-web.toml").rename(rules / "10-web.toml")
    try:
        web(guests)
        wait_for(
            lambda: sample(fresh(), "xvif_vif_firewall_rule_info", domain="web", rule="1") == 1.0,
            "the guest's rules in the metrics",
            timeout=30,
        )
        text = fresh()
        assert sample(text, "xvif_metrics_scrape_requests") == 6  # with rules: two more sums
        info = [ln for ln in text.splitlines() if ln.startswith("xvif_vif_firewall_rule_info{") and 'rule="0"' in ln]
        assert info and f'source="{rules}/10-web.toml:1"' in info[0], info
        before = sample(text, "xvif_vif_firewall_rule_hits_total", domain="web", rule="0")
        assert before == 0.0
        guests.exec("lan", "ping", "-c3", "-i0.2", "-W1", WEB[3])
        wait_for(
            lambda: (sample(fresh(), "xvif_vif_firewall_rule_hits_total", domain="web", rule="0") or 0) >= 3,
            "the allow rule's hits",
            timeout=30,
        )
        assert sample(fresh(), "xvif_vif_firewall_rule_hits_total", domain="web", rule="1") == 0.0
    finally:
        (rules / "10-web.toml").unlink()
