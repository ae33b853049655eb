#!/bin/bash
# Inside dom0 (run at boot by xvif-realxen.service from the per-run disk at /mnt/run):
# install this checkout as an operator would, on a host with no network, then run the
# real-Xen suite (tests/realxen) and leave its results in /mnt/run/out for the host.
#
#   /mnt/run/src      the checkout under test
#   /mnt/run/wheels   xvif-ovs and every dependency, built on the host (same Python 3.11)
#   /mnt/run/pytest-args   extra pytest arguments, one per line (optional)
#   /mnt/run/out      results.jsonl (one line per test phase), pytest.log, logs/
set -uo pipefail
run=/mnt/run
out=$run/out
mkdir -p "$out/logs"
say() { echo "XVIF-REALXEN: $*"; }

say "xen $(xl info 2>/dev/null | awk '/^xen_version/ {print $3}'), kernel $(uname -r), $(python3 --version)"

# -- install, the operator's way: a clone in /opt/xvif-ovs, its .venv from the wheels
start=$SECONDS
rm -rf /opt/xvif-ovs
cp -a "$run/src" /opt/xvif-ovs
# The venv without ensurepip (which installs and byte-compiles pip and setuptools: about
# 50 s under TCG); Debian's own pip wheel installs into it, from the wheels only.
python3 -m venv --without-pip /opt/xvif-ovs/.venv
pipwhl=$(ls /usr/share/python-wheels/pip-*.whl | sort -V | tail -1)
say "venv made in $((SECONDS - start)) s"
if ! python3 "$pipwhl/pip" --python /opt/xvif-ovs/.venv/bin/python install -q --disable-pip-version-check \
    --no-compile --no-index --find-links "$run/wheels" xvif-ovs >"$out/logs/pip.log" 2>&1; then
    cat "$out/logs/pip.log"
    say "pip install from the wheels failed"
    exit 1
fi
# deploy/install-host.sh: the hook, /etc/default/xvif-ovs, the controller's config and unit
if ! bash /opt/xvif-ovs/deploy/install-host.sh; then
    say "deploy/install-host.sh failed"
    exit 1
fi
say "installed in $((SECONDS - start)) s: xvif-ovs $(/opt/xvif-ovs/.venv/bin/python -c "import xvif_ovs; print(xvif_ovs.__version__)" 2>&1)"

if [ "$(cat "$run/mode" 2>/dev/null)" = bench ]; then
    cd /opt/xvif-ovs
    XVIF_REALXEN_GUEST_BIN=$run/guest-bin timeout 3000 /opt/xvif-ovs/.venv/bin/python bench/realxen_inside.py \
        --out "$out/bench.json" 2>&1 | tee "$out/bench.log"
    rc=${PIPESTATUS[0]}
    say "benchmark exited $rc"
    cp -a /var/log/xen "$out/logs/" 2>/dev/null
    journalctl -b --no-pager >"$out/logs/journal.txt" 2>&1
    exit "$rc"
fi

# -- the suite: Debian's pytest (python3-pytest), the tests from the checkout
mapfile -t extra < <(grep -v '^$' "$run/pytest-args" 2>/dev/null)
cd /opt/xvif-ovs
XVIF_REALXEN_INSIDE=1 XVIF_REALXEN_RESULTS=$out/results.jsonl XVIF_REALXEN_GUEST_BIN=$run/guest-bin timeout 2400 \
    python3 -m pytest tests/realxen --confcutdir=tests/realxen -p no:cacheprovider \
    -o addopts= -rA -v "${extra[@]}" 2>&1 | tee "$out/pytest.log"
rc=${PIPESTATUS[0]}
say "pytest exited $rc"

# -- what a developer would look at when something failed
cp -a /var/log/xen "$out/logs/" 2>/dev/null
cp -a /var/log/openvswitch "$out/logs/" 2>/dev/null
journalctl -b --no-pager >"$out/logs/journal.txt" 2>&1
xl dmesg >"$out/logs/xl-dmesg.txt" 2>&1
exit "$rc"
