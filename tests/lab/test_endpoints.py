"""Where the controller listens, and who may connect: TLS with OVS's own PKI against a
real ovs-vswitchd, one controller per host, no live socket taken away, and no second
connection replacing a connected switch.

Its own OVS (ovsdb-server and ``ovs-vswitchd --enable-dummy=override``, dummy bridges)
in a private directory, not the lab: nothing here touches the host's devices."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeswitch import OFPT_ECHO_REQUEST, OFPT_FEATURES_REQUEST, OFPT_HELLO, OFPT_MULTIPART_REQUEST, FakeSwitch

from xvif_ovs.lab.daemons import ovs_env, start_ovs, stop_ovs, vsctl
from xvif_ovs.pipeline.flow import COOKIE_MAGIC, COOKIE_MASK

pytestmark = pytest.mark.lab

OURS = f"cookie={COOKIE_MAGIC:#x}/{COOKIE_MASK:#x}"
IMPOSTOR_DPID = 0xBEEF  # br1's datapath id, and first a silent fake switch's


def wait(cond, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- OVS, PKI and the controller -------------------------------------------------------------


class Ovs:
    def __init__(self, d: Path) -> None:
        self.dir = d

    def vsctl(self, *args: str) -> str:
        return vsctl(self.dir, *args)

    def flows(self, bridge: str) -> list[str]:
        """Our flows on ``bridge`` (by cookie), without counters: what the controller installed."""
        cmd = ["ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "--sort", "dump-flows", f"unix:{self.dir}/{bridge}.mgmt"]
        proc = subprocess.run([*cmd, OURS], capture_output=True, text=True, env={**os.environ, **ovs_env(self.dir)})
        return [line.strip() for line in proc.stdout.splitlines() if "cookie=" in line]

    def dpid(self, bridge: str) -> int:
        return int(self.vsctl("get", "bridge", bridge, "datapath_id").strip().strip('"'), 16)


@pytest.fixture(scope="module")
def ovs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ovs]:
    d = tmp_path_factory.mktemp("ep")
    start_ovs(d, dummy=True)  # --enable-dummy=override: no device of the host is created
    o = Ovs(d)
    try:
        o.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=dummy")
        yield o
    finally:
        stop_ovs(d)


class Pki:
    """OVS's layout: ``ovs-pki init`` makes controllerca/ and switchca/; the controller's
    key and certificate are signed by the first, the switch's by the second."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.pki = d / "pki"
        self.run("init")
        self.run("req+sign", "ctl", "controller")
        self.run("req+sign", "sc", "switch")
        # The same names from a CA of nobody's: what a switch with a foreign certificate has.
        self.run("init", pki=d / "rogue-pki")
        self.run("req+sign", "rogue", "switch", pki=d / "rogue-pki")

    def run(self, *args: str, pki: Path | None = None) -> None:
        cmd = ["ovs-pki", f"--dir={pki or self.pki}", "--force", *args]
        subprocess.run(cmd, cwd=self.dir, check=True, capture_output=True, timeout=60)

    def file(self, name: str) -> str:
        return str(self.dir / name)

    def controller_ca(self) -> str:
        return str(self.pki / "controllerca" / "cacert.pem")

    def switch_ca(self) -> str:
        return str(self.pki / "switchca" / "cacert.pem")

    def client(self, cert: str | None) -> ssl.SSLContext:
        """A switch's side of the handshake (trusting our controller's CA), with a certificate or none."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(self.controller_ca())
        if cert:
            ctx.load_cert_chain(self.file(f"{cert}-cert.pem"), self.file(f"{cert}-privkey.pem"))
        return ctx


@pytest.fixture(scope="module")
def pki(ovs: Ovs) -> Pki:
    return Pki(ovs.dir)


class Controller:
    port = 0  # a network listener's

    def __init__(self, d: Path, config: str, rundir: Path, db: str, xenstore: str, name: str = "controller") -> None:
        self.config = d / f"{name}.toml"
        self.config.write_text(config)
        self.log = d / f"{name}.log"
        cmd = [sys.executable, "-m", "xvif_ovs.cli.main", "controller", "--no-syslog", "--config", str(self.config)]
        cmd += ["--db", db, "--xenstore", xenstore]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env={**os.environ, **ovs_env(rundir)}
            )

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def ctl(ovs: Ovs, pki: Pki, xenstored) -> Iterator[Controller]:
    """The controller on ssl:127.0.0.1:PORT (no host given: loopback), managing br0 (with
    a declared uplink up0, added by a test) and br1 (created by a test)."""
    port = free_port()
    config = f"""
[controller]
listen = "ssl:{port}"
bridges = ["br0", "br1"]

[ssl]
private_key = "{pki.file("ctl-privkey.pem")}"
certificate = "{pki.file("ctl-cert.pem")}"
ca_cert = "{pki.switch_ca()}"

[bridges.br0]
uplinks = ["up0"]
"""
    c = Controller(ovs.dir, config, ovs.dir, f"unix:{ovs.dir}/db.sock", str(xenstored.socket))
    c.port = port
    try:
        wait(lambda: ovs.vsctl("get-controller", "br0").strip() == f"ssl:127.0.0.1:{port}", "br0 taken over")
        yield c
    finally:
        c.stop()


def set_ssl(ovs: Ovs, pki: Pki, cert: str) -> None:
    ovs.vsctl("set-ssl", pki.file(f"{cert}-privkey.pem"), pki.file(f"{cert}-cert.pem"), pki.controller_ca())


@pytest.fixture
def connected(ovs: Ovs, pki: Pki, ctl: Controller) -> Controller:
    set_ssl(ovs, pki, "sc")
    wait(lambda: len(ovs.flows("br0")) > 0, f"br0 programmed over TLS: {ctl.text()}")
    return ctl


# -- a switch of our own making ---------------------------------------------------------------


def tls_connect(pki: Pki, port: int, cert: str | None) -> ssl.SSLSocket:
    return pki.client(cert).wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))


# -- the tests ----------------------------------------------------------------------------------


def test_tls_switch_is_refused_without_a_certificate_of_the_switch_ca_and_programmed_with_one(ovs, pki, ctl):
    """Listen on ssl: with OVS's PKI: a switch whose certificate another CA signed never
    gets a session (the handshake fails on our side); with one from switchca it is
    taken over and gets its flows."""
    set_ssl(ovs, pki, "rogue")
    wait(lambda: "refused a TLS connection from ssl:127.0.0.1" in ctl.text(), f"rogue refused: {ctl.text()}")
    time.sleep(2)  # it retries every second: none of its attempts may get through
    assert ovs.flows("br0") == [] and "connected: " not in ctl.text()
    assert "certificate verify failed" in ctl.text()

    set_ssl(ovs, pki, "sc")
    wait(lambda: len(ovs.flows("br0")) > 0, f"br0 programmed over TLS: {ctl.text()}")
    assert ovs.vsctl("get-controller", "br0").strip() == f"ssl:127.0.0.1:{ctl.port}"
    assert "switch br0 connected" in ctl.text() or "br0:" in ctl.text()


def test_tls_client_without_a_certificate_gets_no_openflow(pki, ctl, connected):
    """A peer that presents no certificate at all: refused before a single OpenFlow byte."""
    before = ctl.text().count("refused a TLS connection")
    got = b""
    try:
        with tls_connect(pki, ctl.port, None) as s:
            s.settimeout(5)
            got = s.recv(8)  # TLS 1.3: the refusal (an alert) arrives after the client's Finished
    except (ssl.SSLError, OSError):
        pass
    assert got == b"", f"an OpenFlow HELLO reached a client without a certificate: {got!r}"
    wait(lambda: ctl.text().count("refused a TLS connection") > before, "the refusal logged")


def test_listens_on_loopback_only_when_no_host_is_given(ctl, connected):
    out = subprocess.run(["ss", "-Htln", f"sport = :{ctl.port}"], capture_output=True, text=True).stdout
    assert [line.split()[3] for line in out.splitlines()] == [f"127.0.0.1:{ctl.port}"], out


def test_a_second_controller_refuses_to_start_and_names_the_first(ovs, ctl, connected, xenstored):
    flows = ovs.flows("br0")
    second = Controller(
        ovs.dir, ctl.config.read_text(), ovs.dir, f"unix:{ovs.dir}/db.sock", str(xenstored.socket), "second"
    )
    try:
        assert second.proc.wait(30) == 1, second.text()
    finally:
        second.stop()
    assert f"another xvif-ovs controller is running (pid {ctl.proc.pid}" in second.text()
    assert (ovs.dir / "xvif-ovs.pid").read_text().strip() == str(ctl.proc.pid)
    assert ctl.proc.poll() is None and ovs.flows("br0") == flows


def test_a_connection_claiming_a_connected_switchs_datapath_id_is_refused(ovs, pki, ctl, connected):
    """An impostor with a valid switch certificate claims br0's datapath id: it is
    closed, the log names both, and br0's session goes on (a later change reaches br0)."""
    flows = ovs.flows("br0")
    fake = FakeSwitch(tls_connect(pki, ctl.port, "sc"), ovs.dpid("br0"), "impostor")
    fake.handshake()
    assert fake.eof(15), "the impostor's connection was left open"
    wait(lambda: "refused bridge impostor at ssl:127.0.0.1:" in ctl.text(), f"the refusal logged: {ctl.text()}")
    line = next(x for x in ctl.text().splitlines() if "refused bridge impostor" in x)
    assert f"{ovs.dpid('br0'):016x}" in line and "bridge br0 at ssl:127.0.0.1:" in line
    assert set(fake.received) <= {OFPT_HELLO, OFPT_FEATURES_REQUEST, OFPT_MULTIPART_REQUEST, OFPT_ECHO_REQUEST}
    assert ovs.flows("br0") == flows
    # The live session still programs br0: a declared uplink appears and gets its flows.
    ovs.vsctl("add-port", "br0", "up0")
    wait(lambda: len(ovs.flows("br0")) > len(flows), f"br0 still programmed after the impostor: {ctl.text()}")


def test_a_switch_whose_old_connection_died_silently_gets_its_session_back(ovs, pki, ctl, connected):
    """os-ken may deliver a reconnect before the old connection's end, or never see the
    end of a connection whose far side vanished: the old one is probed, stays silent,
    and the switch (br1, created with the datapath id the dead connection had) is
    taken over and programmed."""
    fake = FakeSwitch(tls_connect(pki, ctl.port, "sc"), IMPOSTOR_DPID, "br1")
    fake.handshake()  # and then silence: it answers nothing more, and does not close
    try:
        ovs.vsctl(
            "add-br",
            "br1",
            "--",
            "set",
            "bridge",
            "br1",
            "datapath_type=dummy",
            f"other_config:datapath-id={IMPOSTOR_DPID:016x}",
        )
        assert ovs.dpid("br1") == IMPOSTOR_DPID
        wait(lambda: len(ovs.flows("br1")) > 0, f"br1 programmed: {ctl.text()}", timeout=60)
        assert f"switch {IMPOSTOR_DPID:016x} reconnected" in ctl.text()
        assert "did not answer" in ctl.text()
        assert fake.eof(15), "the dead connection was not closed"
        assert len(ovs.flows("br0")) > 0
    finally:
        fake.sock.close()
        ovs.vsctl("--if-exists", "del-br", "br1")


def served_by(path: Path) -> int | None:
    """The pid of the process listening on a Unix socket, None if nobody does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return None
        return struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]


def test_the_controller_never_unlinks_a_socket_that_a_live_process_serves(ovs, tmp_path):
    """listen = unix in a run directory where something already serves xvif-ovs.sock:
    refused, naming the path and the pid; once nobody serves it (stale), replaced."""
    rundir = Path(tmp_path)
    path = rundir / "xvif-ovs.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen(1)
    inode = path.stat().st_ino
    config = "[controller]\nlisten = 'unix'\nbridges = []\n"
    db, xs = f"unix:{ovs.dir}/db.sock", str(rundir / "no-xenstore.sock")
    c = Controller(rundir, config, rundir, db, xs)
    try:
        assert c.proc.wait(30) == 1, c.text()
    finally:
        c.stop()
    assert f"{path} is served by process {os.getpid()}" in c.text()
    assert path.stat().st_ino == inode and served_by(path) == os.getpid()  # still ours, still answering
    live.close()  # now stale: a socket file nobody listens on

    c = Controller(rundir, config, rundir, db, xs, "after")
    try:
        wait(lambda: served_by(path) == c.proc.pid, f"the stale socket replaced: {c.text()}")
        assert c.proc.poll() is None, c.text()
    finally:
        c.stop()


def test_plain_tcp_beyond_loopback_is_refused_unless_asked_for_and_then_warned_about(ovs, tmp_path):
    db, xs = f"unix:{ovs.dir}/db.sock", str(tmp_path / "no-xenstore.sock")
    port = free_port()
    c = Controller(tmp_path, f"[controller]\nlisten = 'tcp:0.0.0.0:{port}'\n", tmp_path, db, xs, "refused")
    try:
        assert c.proc.wait(30) == 2
    finally:
        c.stop()
    assert "add allow_remote_listen = true to [controller]" in c.text()
    config = f"[controller]\nlisten = 'tcp:0.0.0.0:{port}'\nallow_remote_listen = true\nbridges = []\n"
    c = Controller(tmp_path, config, tmp_path, db, xs, "warned")
    try:
        wait(lambda: "xvif-ovs controller (pid" in c.text(), f"started: {c.text()}")
        assert f"WARNING listening on tcp:0.0.0.0:{port} without TLS (allow_remote_listen = true)" in c.text()
    finally:
        c.stop()
