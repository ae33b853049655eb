"""The README's main job: `xvif-ovs lab demo` must pass its own checks and clean up."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_and_cleans_up(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo") / "lab"
    proc = subprocess.run(
        [sys.executable, "-m", "xvif_ovs.cli.main", "lab", "--dir", str(d), "demo"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout
    assert "blue20  -> app10   198.18.10.13 blocked" in proc.stdout  # VLANs keep guests apart
    assert 'hotplug-status = "connected"' in proc.stdout
    assert "table 1 port_security" in proc.stdout
    assert "web as 192.0.2.99 -> LAN  blocked  (ok: port security" in proc.stdout
    assert not d.exists()
