#!/bin/bash
# Set up a Debian 12 machine (as root) for xvif-ovs, then run the demo or the tests.
#
#   deploy/setup.sh demo   packages, virtualenv, package; then the main job on the lab
#   deploy/setup.sh test   the same set-up; then lint and every test
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
        echo "== pytest"
        rc=0
        .venv/bin/python -m pytest -ra "${@:2}" || rc=$?
        if [ "$rc" -eq 5 ]; then
            echo "pytest collected no tests: that is a failure" >&2
            exit 1
        fi
        exit "$rc"
        ;;
    "")
        echo "set up; next: .venv/bin/xvif-ovs lab demo"
        ;;
    *)
        echo "usage: deploy/setup.sh [demo|test]" >&2
        exit 2
        ;;
esac
