"""`xvif-ovs xenstored` never takes a live server's socket away: a second one on the same
path is refused (naming the path and the pid that serves it) and leaves the first's
socket and pidfile alone; a stale socket (nobody listens) is replaced."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from xvif_ovs.instance import AlreadyRunning, PidLock
from xvif_ovs.lab.daemons import wait_for


def run_server(sock: Path, pidfile: Path, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "xvif_ovs.cli.main", "xenstored", "--socket", str(sock), "--pidfile", str(pidfile)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_a_second_server_on_a_live_socket_is_refused_and_changes_nothing(xenstored):
    xs = xenstored
    xs.tool("xenstore-write", "/single/instance", "first")
    inode, pid = xs.socket.stat().st_ino, xs.pidfile.read_text()
    proc = run_server(xs.socket, xs.pidfile)
    assert proc.returncode == 1
    assert f"{xs.socket} is served by process {xs.proc.pid}: another XenStore server is running" in proc.stderr
    assert xs.socket.stat().st_ino == inode and xs.pidfile.read_text() == pid
    assert xs.tool("xenstore-read", "/single/instance").stdout.strip() == "first"  # the first still serves


def test_a_stale_socket_is_replaced(tmp_path):
    path = tmp_path / "xs.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))  # and closed without unlinking: a crashed server's leftover
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xvif_ovs.cli.main",
            "xenstored",
            "--socket",
            str(path),
            "--pidfile",
            str(tmp_path / "p"),
        ]
    )
    try:
        wait_for(tmp_path / "p", "the XenStore server")
        env = {"XENSTORED_PATH": str(path), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
        subprocess.run(["xenstore-write", "/a", "1"], env=env, check=True, timeout=10)
    finally:
        proc.terminate()
        proc.wait(10)
    assert not path.exists()  # its own socket, removed at exit


def test_a_path_that_is_not_a_socket_is_never_removed(tmp_path):
    path = tmp_path / "xs.sock"
    path.write_text("somebody's file")
    proc = run_server(path, tmp_path / "p")
    assert proc.returncode == 1 and "exists and is not a socket" in proc.stderr
    assert path.read_text() == "somebody's file"


def test_a_pid_lock_names_its_holder(tmp_path):
    path = str(tmp_path / "xvif-ovs.pid")
    first = PidLock(path, "xvif-ovs controller").acquire()
    try:
        second = PidLock(path, "xvif-ovs controller")
        try:
            second.acquire()
        except AlreadyRunning as e:
            assert f"another xvif-ovs controller is running (pid {os.getpid()}; it holds {path})" in str(e)
        else:
            raise AssertionError("a second lock holder")
    finally:
        first.release()
    assert not Path(path).exists()
    PidLock(path, "xvif-ovs controller").acquire().release()  # free again
