"""The real-Xen suite runs a test again only when it failed on a fault of the emulated host
(tests/realxen/dom0.py, EMULATION_FAULTS), never for any other failure, and records each
rerun for the host to print. Run here as dom0 runs it: pytest with XVIF_REALXEN_INSIDE=1
on a copy of the suite's conftest and dom0 helpers, and tests that count their attempts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REALXEN = Path(__file__).resolve().parents[1] / "realxen"

TESTS = """
from pathlib import Path

import pytest

@pytest.fixture(scope="session")
def peer():
    # like the suite's peer guest: its first boot dies of an emulation fault
    if _attempt("peer") == 1:
        raise AssertionError("timed out waiting for XR-READY: zcat: short read")
    return "peer"

def test_a_uses_the_peer(peer):
    _attempt("uses_peer")

def test_b_uses_the_peer_too(peer):
    _attempt("uses_peer_too")

def _attempt(name):
    f = Path(__file__).parent / (name + ".count")
    n = int(f.read_text()) + 1 if f.exists() else 1
    f.write_text(str(n))
    return n

def test_guest_crashed_once():
    if _attempt("crashed_once") == 1:
        raise AssertionError("timed out waiting for XR-REACHED\\n--- console ---\\nSegmentation fault\\n")

def test_always_crashes():
    _attempt("always")
    raise AssertionError("xl create exited 3: vif-xvif-ovs online died due to fatal signal Segmentation fault")

def test_plain_failure():
    _attempt("plain")
    assert 1 == 2, "the flows are wrong"
"""


def test_only_emulation_faults_are_run_again(tmp_path):
    for name in ("conftest.py", "dom0.py"):
        shutil.copy(REALXEN / name, tmp_path / name)
    (tmp_path / "test_faults.py").write_text(TESTS)
    results = tmp_path / "results.jsonl"
    env = {**os.environ, "XVIF_REALXEN_INSIDE": "1", "XVIF_REALXEN_RESULTS": str(results)}
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1, p.stdout + p.stderr
    counts = {f.stem: int(f.read_text()) for f in tmp_path.glob("*.count")}
    assert counts == {"peer": 2, "uses_peer": 1, "uses_peer_too": 1, "crashed_once": 2, "always": 3, "plain": 1}
    assert "2 failed, 3 passed" in p.stdout, p.stdout
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    reruns = [(r["nodeid"].split("::")[1], r["longrepr"]) for r in recs if r["when"] == "rerun"]
    assert reruns == [
        ("test_a_uses_the_peer", "attempt 1 failed on 'zcat: short read'"),
        ("test_guest_crashed_once", "attempt 1 failed on 'Segmentation fault'"),
        ("test_always_crashes", "attempt 1 failed on 'died due to fatal signal'"),
        ("test_always_crashes", "attempt 2 failed on 'died due to fatal signal'"),
    ]
    final = {(r["nodeid"].split("::")[1], r["when"]): r["outcome"] for r in recs if r["when"] == "call"}
    assert final == {
        ("test_a_uses_the_peer", "call"): "passed",
        ("test_b_uses_the_peer_too", "call"): "passed",
        ("test_guest_crashed_once", "call"): "passed",
        ("test_always_crashes", "call"): "failed",
        ("test_plain_failure", "call"): "failed",
    }
