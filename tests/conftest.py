"""Fixtures: a XenStore server per test module, the lab as a host per module with
guests per test, and a session-end check that nothing the tests made leaked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xvif_ovs.lab.domain import add_domain, del_domain
from xvif_ovs.lab.host import BridgeArg, Lab
from xvif_ovs.lab.sh import netns_list

_LAB_PROC = re.compile(r"(ovsdb-server|ovs-vswitchd|xvif_ovs\.cli\.main xenstored|dnsmasq .*xvif-ovs-dhcp)")


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def _procs() -> set[tuple[int, str]]:
    found = set()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and _LAB_PROC.search(cmd):
            found.add((int(p.name), cmd.strip()))
    return found


def _snapshot() -> dict[str, set]:
    netns = set(netns_list()) if os.geteuid() == 0 else set()
    return {"netns": netns, "links": _links(), "procs": _procs()}


@pytest.fixture(scope="session", autouse=True)
def nothing_leaks() -> Iterator[None]:
    """Fail the session if a test left a namespace, an interface or a daemon behind."""
    before = _snapshot()
    yield
    deadline = time.monotonic() + 5
    while True:
        after = _snapshot()
        leaks = {k: sorted(map(str, after[k] - before[k])) for k in after}
        leaks = {k: v for k, v in leaks.items() if v}
        if not leaks or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not leaks, f"the tests leaked: {leaks}"


# -- XenStore server ---------------------------------------------------------------


class XenStored:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.socket = d / "xs.sock"
        self.log = d / "xenstored.log"
        self.pidfile = d / "xenstored.pid"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.pidfile.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "xvif_ovs.cli.main", "xenstored", "--socket", str(self.socket)]
        cmd += ["--pidfile", str(self.pidfile), "--log-file", str(self.log), "-v"]
        self.proc = subprocess.Popen(cmd)
        deadline = time.monotonic() + 10
        while not self.pidfile.exists():
            assert self.proc.poll() is None, f"xenstored exited: {self.log.read_text() if self.log.exists() else ''}"
            assert time.monotonic() < deadline, "xenstored did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "XENSTORED_PATH": str(self.socket)}

    def tool(self, *argv: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        """Run one of Xen's xenstore-* clients against this server."""
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, f"{argv}: {proc.returncode} {proc.stderr}"
        return proc


@pytest.fixture(scope="module")
def xenstored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XenStored]:
    xs = XenStored(tmp_path_factory.mktemp("xs"))
    xs.start()
    yield xs
    xs.stop()


# -- the lab -------------------------------------------------------------------------


class LabHost:
    """A lab host for one test module; `guest` adds a domain that is removed after the test."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._guests: list[str] = []

    def guest(self, name: str, domid: int, *vifs: str, hvm: bool = False, netbsd: bool = False):  # noqa: ANN201
        dom = add_domain(self.lab, name, domid, list(vifs), hvm=hvm, netbsd=netbsd)
        self._guests.append(name)
        return dom

    def exec(self, name: str, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ip", "netns", "exec", f"xvl-{name}", *argv], capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert proc.returncode == 0, f"{name}: {argv}: {proc.returncode} {proc.stdout} {proc.stderr}"
        return proc

    def vsctl(self, *args: str) -> str:
        from xvif_ovs.lab.daemons import vsctl

        return vsctl(self.lab.dir, *args)

    def cleanup_guests(self) -> None:
        state = self.lab.state_file.load()
        for name in list(state.domains):
            del_domain(self.lab, name)
        self._guests.clear()


def lab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Unix socket paths are limited to 108 bytes: keep the lab directory short.
    return tmp_path_factory.mktemp("lab")


@pytest.fixture(scope="module")
def lab_bridges() -> list[BridgeArg]:
    """Override in a module to shape its host."""
    return [BridgeArg("xenbr0", "peth0")]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, lab_bridges: list[BridgeArg]) -> Iterator[LabHost]:
    lab = Lab(lab_dir(tmp_path_factory))
    lab.up(lab_bridges)
    h = LabHost(lab)
    try:
        yield h
    finally:
        try:
            h.cleanup_guests()
        finally:
            lab.down()


@pytest.fixture
def guests(host: LabHost) -> Iterator[LabHost]:
    """The module's host; every guest a test adds is destroyed after it, pass or fail."""
    try:
        yield host
    finally:
        host.cleanup_guests()
