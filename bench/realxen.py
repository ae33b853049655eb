"""The real-Xen benchmark: boots Xen 4.17 in QEMU (deploy/xen-vm/run.sh --bench), where
bench/realxen_inside.py measures xvif-ovs against vif-openvswitch on a real dom0, then
keeps its figures in bench/results/realxen.json for report.py.

Usage (as root, from bench/): ../.venv/bin/python realxen.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, save


def main() -> int:
    out = Path(tempfile.mkdtemp(prefix="xvif-realxen-bench."))
    start = time.monotonic()
    p = subprocess.run([str(ROOT / "deploy/xen-vm/run.sh"), "--out", str(out), "--bench"], env=None)
    data = out / "bench.json"
    if not data.exists():
        print(f"the real-Xen benchmark reported nothing (run.sh exited {p.returncode}; logs in {out})", file=sys.stderr)
        return 1
    results = json.loads(data.read_text())
    results["vm_run_s"] = time.monotonic() - start
    results["host"] = machine()
    missing = [k for k in ("create", "throughput", "migration") if k not in results]
    path = save("realxen", results, sys.argv)
    print(f"wrote {path} (logs in {out})")
    if missing or p.returncode != 0:
        print(f"incomplete: {', '.join(missing) or 'none missing'}; run.sh exited {p.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
