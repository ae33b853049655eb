"""The controller over TCP (listen = tcp:...); a bridge the config names that is created
while it runs is taken over without anything else being typed, and one it does not name
is never touched."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dump(host, bridge: str) -> str:
    cmd = ["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", f"unix:{host.lab.dir}/{bridge}.mgmt"]
    return subprocess.run(cmd, capture_output=True, text=True).stdout


@pytest.fixture
def tcp_controller(host):
    port = free_port()
    log = host.lab.dir / "tcp-controller.log"
    config = host.lab.dir / "tcp-controller.toml"
    # xenlate does not exist yet: named, it is taken over when it appears; other0 is not named.
    config.write_text('[controller]\nbridges = ["xenbr0", "xenlate"]\n')
    cmd = [sys.executable, "-m", "xvif_ovs.cli.main", "controller", "--no-syslog", "--config", str(config)]
    cmd += ["--listen", f"tcp:127.0.0.1:{port}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env={**os.environ, **host.lab.env()})
    yield port, log
    proc.terminate()
    proc.wait(15)


def wait(cond, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_tcp_listener_and_a_bridge_created_later(guests, tcp_controller):
    port, log = tcp_controller
    guests.guest("t1", 71, "mac=00:16:3e:00:47:01,ip=192.0.2.71")
    wait(lambda: "reg5" in dump(guests, "xenbr0"), f"flows over tcp:{port}: {log.read_text()}")
    assert guests.vsctl("get", "controller", "xenbr0", "target").strip() == f'"tcp:127.0.0.1:{port}"'
    assert guests.exec("t1", "ping", "-c1", "-W2", "192.0.2.1", check=False).returncode == 0
    guests.vsctl("add-br", "other0", "--", "set", "bridge", "other0", "datapath_type=netdev")
    guests.vsctl("add-br", "xenlate", "--", "set", "bridge", "xenlate", "datapath_type=netdev")
    try:
        wait(lambda: "reg5" in dump(guests, "xenlate"), "the new bridge taken over")
        assert guests.vsctl("get", "bridge", "xenlate", "fail_mode").strip() == "secure"
        # A bridge nobody named is never touched: no controller, no fail_mode, NORMAL stays.
        assert guests.vsctl("get", "bridge", "other0", "controller", "fail_mode").split() == ["[]", "[]"]
        assert "actions=NORMAL" in dump(guests, "other0") and "reg5" not in dump(guests, "other0")
    finally:
        for br in ("xenlate", "other0"):
            guests.vsctl("del-br", br)
            subprocess.run(["ip", "link", "del", br], capture_output=True)
