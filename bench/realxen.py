"""The real-Xen benchmark: boots Xen 4.17 in QEMU (deploy/xen-vm/run.sh --bench), where
bench/realxen_inside.py measures xvif-ovs against vif-openvswitch on a real dom0, then
keeps its figures in bench/results/realxen.json for report.py.

Usage (as root, from bench/): ../.venv/bin/python realxen.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, save


def main() -> int:
    out = Path(tempfile.mkdtemp(prefix="xvif-realxen-bench."))
    start = time.monotonic()
    # The benchmark inside dom0 may take up to 3000 s (inside.sh); QEMU's own limit is above it.
    env = {**os.environ, "XVIF_XEN_VM_TIMEOUT": os.environ.get("XVIF_XEN_VM_TIMEOUT", "3600")}
    p = subprocess.run([str(ROOT / "deploy/xen-vm/run.sh"), "--out", str(out), "--bench"], env=env)
    data = out / "bench.json"
    if not data.exists():
        print(f"the real-Xen benchmark reported nothing (run.sh exited {p.returncode}; logs in {out})", file=sys.stderr)
        return 1
    results = json.loads(data.read_text())
    results["vm_run_s"] = time.monotonic() - start
    results["host"] = machine()
    missing = [k for k in ("create", "throughput", "migration") if k not in results]
    if missing or p.returncode != 0:
        # The last complete figures stay in results/realxen.json; this run's are in out.
        print(
            f"incomplete, not saved: missing {', '.join(missing) or 'nothing'}; run.sh exited {p.returncode} "
            f"(figures so far in {data}, logs in {out})",
            file=sys.stderr,
        )
        return 1
    path = save("realxen", results, sys.argv)
    print(f"wrote {path} (logs in {out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
