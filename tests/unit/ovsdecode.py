"""OVS's own decoder as a witness: `ovs-ofctl ofp-parse` reads the bytes we would send,
with its checks of each action's prerequisites (what OVS would refuse with an error)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from xvif_ovs.controller import wire
from xvif_ovs.pipeline.flow import Flow


def assert_ovs_accepts(flows: Sequence[Flow], tmp_path: Path) -> None:
    ofctl = shutil.which("ovs-ofctl")
    assert ofctl, "ovs-ofctl is missing: deploy/setup.sh installs openvswitch-switch"
    blob = tmp_path / "flows.of"
    blob.write_bytes(b"".join(wire.flow_mod(f, "add", i) for i, f in enumerate(flows)))
    proc = subprocess.run([ofctl, "ofp-parse", str(blob)], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "error" not in out.lower(), out
    assert out.count("OFPT_FLOW_MOD") == len(flows)
