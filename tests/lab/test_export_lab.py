"""Traffic export as a monitoring collector receives it: sFlow and IPFIX set on the lab's
bridge through OVSDB by the controller from its configuration, real ovs-vswitchd sampling
a guest's real packets to a UDP collector in dom0."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from labflows import controller

SFLOW_PORT, IPFIX_PORT = 16343, 14739
WEB = ("web", 51, "00:16:3e:00:33:01", "192.0.2.51")
LAN = "192.0.2.1"


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


@contextlib.contextmanager
def collector(port: int) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.settimeout(0.5)
    try:
        yield s
    finally:
        s.close()


def received(s: socket.socket, seconds: float) -> list[bytes]:
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        with contextlib.suppress(TimeoutError):
            out.append(s.recv(65535))
    return out


def vsctl_get(host, what: str) -> str:
    return host.vsctl("--if-exists", "get", "Bridge", "xenbr0", what).strip()


@pytest.fixture(scope="module")
def exporting(host):
    config = (
        '[controller]\nbridges = ["xenbr0"]\n\n[bridges.xenbr0]\n'
        f'sflow = {{ targets = ["127.0.0.1:{SFLOW_PORT}"], sampling = 1, polling = 1 }}\n'
        f'ipfix = {{ targets = ["127.0.0.1:{IPFIX_PORT}"], sampling = 1, obs_domain_id = 7 }}\n'
    )
    with controller(host, config):
        yield host


def test_sflow_and_ipfix_collectors_receive_samples_of_a_guests_traffic(guests, exporting):
    name, domid, mac, ip = WEB
    guests.guest(name, domid, f"mac={mac},bridge=xenbr0,ip={ip}")
    with collector(SFLOW_PORT) as sflow, collector(IPFIX_PORT) as ipfix:
        guests.exec(name, "ping", "-c5", "-i0.2", "-W1", LAN)
        sflow_got = received(sflow, 3)
        ipfix_got = received(ipfix, 3)
    assert sflow_got, "no sFlow datagram"
    assert all(struct.unpack("!I", d[:4])[0] == 5 for d in sflow_got)  # sFlow version 5
    assert any(mac_bytes(mac) in d for d in sflow_got), "no sample of the guest's frames"
    assert ipfix_got, "no IPFIX message"
    version, _length, _time, _seq, domain = struct.unpack("!HHIII", ipfix_got[0][:16])
    assert version == 10 and domain == 7
    assert any(mac_bytes(mac) in d for d in ipfix_got), "no record of the guest's flow"
    # The collector names the port from OVSDB: what the hook wrote on the guest's interface.
    ids = exporting.vsctl("get", "Interface", f"vif{domid}.0", "external_ids")
    assert "xen-vm-name=web" in ids and f'xvif-domid="{domid}"' in ids


def test_only_our_rows_are_ours_a_collector_set_by_hand_stays(guests, exporting):
    mine = vsctl_get(exporting, "sflow")
    assert mine and mine != "[]"
    assert "xvif-ovs" in exporting.vsctl("get", "sFlow", mine, "external_ids")
    # Someone sets their own: the controller leaves it, and says so once.
    exporting.vsctl(
        "--", "--id=@s", "create", "sFlow", 'targets="127.0.0.1:16999"', "--", "set", "Bridge", "xenbr0", "sflow=@s"
    )
    time.sleep(2)
    theirs = vsctl_get(exporting, "sflow")
    assert "16999" in exporting.vsctl("get", "sFlow", theirs, "targets")
    log = (exporting.lab.dir / "controller.log").read_text()
    assert log.count("already has an sFlow collector that xvif-ovs did not set") == 1
    exporting.vsctl("clear", "Bridge", "xenbr0", "sflow")  # gone: the configured one comes back
    deadline = time.monotonic() + 10
    while str(SFLOW_PORT) not in exporting.vsctl("--columns=targets", "list", "sFlow"):
        assert time.monotonic() < deadline, "the configured sFlow collector did not come back"
        time.sleep(0.1)
