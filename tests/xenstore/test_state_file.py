"""A XenStore server restarted with --state-file comes back with its tree."""

from __future__ import annotations

import subprocess
import sys
import time


def start(tmp_path):
    sock, pid = tmp_path / "xs.sock", tmp_path / "xs.pid"
    pid.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "xvif_ovs.cli.main", "xenstored", "--socket", str(sock), "--pidfile", str(pid)]
    proc = subprocess.Popen([*cmd, "--state-file", str(tmp_path / "state.json"), "--log-file", str(tmp_path / "log")])
    deadline = time.monotonic() + 10
    while not pid.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    return proc, {"XENSTORED_PATH": str(sock)}


def test_tree_survives_a_restart(tmp_path):
    proc, env = start(tmp_path)
    subprocess.run(["xenstore-write", "/local/domain/0/backend/vif/5/0/mac", "00:16:3e:00:00:05"], env=env, check=True)
    subprocess.run(["xenstore-chmod", "/local/domain/0/backend/vif/5", "n0", "r5"], env=env, check=True)
    proc.terminate()
    proc.wait(10)
    proc, env = start(tmp_path)
    try:
        out = subprocess.run(
            ["xenstore-read", "/local/domain/0/backend/vif/5/0/mac"], env=env, capture_output=True, text=True
        )
        assert out.stdout.strip() == "00:16:3e:00:00:05"
        ls = subprocess.run(
            ["xenstore-ls", "-p", "/local/domain/0/backend/vif"], env=env, capture_output=True, text=True
        )
        assert "(n0,r5)" in ls.stdout
    finally:
        proc.terminate()
        proc.wait(10)
