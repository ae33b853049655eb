#!/bin/bash
# Set up a Debian 12 machine (as root) for xvif-ovs, then run the demo or the tests.
#
#   deploy/setup.sh demo   packages, virtualenv, package; then the main job on the lab
#   deploy/setup.sh test   the same set-up; then lint and every test, the real-Xen suite included
#   deploy/setup.sh xen-test   the same set-up; then the real-Xen suite (tests/realxen):
#                          Xen 4.17 booted in QEMU, the suite run inside dom0 (deploy/xen-vm/)
#   deploy/setup.sh        set-up only
#
# Everything it needs comes from Debian and PyPI; nothing has to be running before.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    python3 python3-venv python3-pip   # the package and its virtualenv
    openvswitch-switch                 # ovsdb-server, ovs-vswitchd, ovs-vsctl, ovs-ofctl
    xenstore-utils                     # Xen's xenstore-* clients: the conformance witnesses
    xen-utils-common                   # Xen's hotplug scripts (vif-openvswitch, vif-common.sh)
    iproute2 iputils-ping iperf3 ethtool tcpdump procps
    dnsmasq-base                       # the DHCP server of NAT bridges (started by the controller)
    busybox                            # udhcpc: the lab tests' DHCP client
    iptables                           # bench/models.py: Linux doing vif-nat's job, the baseline
    prometheus                         # tests/lab/test_metrics_lab.py: a real server scraping the controller
)

if [ "$(id -u)" -ne 0 ]; then
    echo "deploy/setup.sh: run as root (it installs packages and the lab makes namespaces)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "== apt-get: ${APT_PACKAGES[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null

echo "== virtualenv .venv with xvif-ovs and its test dependencies"
python3 -m venv .venv
# compat mode: a plain .pth path entry; the default editable finder adds ~7 ms to every
# Python start, and the hotplug hook starts once per vif.
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat

case "${1:-}" in
    demo)
        exec .venv/bin/xvif-ovs lab demo
        ;;
    test)
        echo "== ruff"
        .venv/bin/ruff check xvif_ovs tests bench
        .venv/bin/ruff format --check xvif_ovs tests bench
        echo "== pytest: unit, XenStore conformance and the lab"
        rc=0
        XVIF_REALXEN=0 .venv/bin/python -m pytest -ra "${@:2}" || rc=$?
        if [ "$rc" -eq 5 ]; then
            echo "pytest collected no tests: that is a failure" >&2
            exit 1
        fi
        [ "$rc" -eq 0 ] || exit "$rc"
        if [ "${XVIF_REALXEN:-1}" = 0 ]; then
            echo "the real-Xen suite (tests/realxen) did NOT run: XVIF_REALXEN=0" >&2
            exit 0
        fi
        echo "== pytest: the real-Xen suite (Xen 4.17 booted in QEMU, tests/realxen run inside dom0)"
        # Software emulation of a Xen host kills a process now and then: a test that fails
        # on such a fault runs again inside dom0 (tests/realxen/conftest.py), and the
        # output names each rerun; the suite itself runs once.
        rc=0
        XVIF_REALXEN=1 .venv/bin/python -m pytest -ra --confcutdir=tests/realxen tests/realxen || rc=$?
        if [ "$rc" -eq 5 ]; then
            echo "pytest collected no real-Xen tests: that is a failure" >&2
            exit 1
        fi
        exit "$rc"
        ;;
    xen-test)
        echo "== the real-Xen suite: a Xen 4.17 host in QEMU (deploy/xen-vm/run.sh)"
        rc=0
        XVIF_REALXEN=1 .venv/bin/python -m pytest -ra --confcutdir=tests/realxen tests/realxen "${@:2}" || rc=$?
        if [ "$rc" -eq 5 ]; then
            echo "pytest collected no real-Xen tests: that is a failure" >&2
            exit 1
        fi
        exit "$rc"
        ;;
    "")
        echo "set up; next: .venv/bin/xvif-ovs lab demo"
        ;;
    *)
        echo "usage: deploy/setup.sh [demo|test|xen-test]" >&2
        exit 2
        ;;
esac
