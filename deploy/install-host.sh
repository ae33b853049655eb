#!/bin/bash
# Install xvif-ovs on a Xen dom0 (as root), after deploy/setup.sh in this clone:
# the hotplug hook, its pointer to this installation, the controller's config and unit.
# It does not change xl.conf: see deploy/xl.conf.snippet for the one line to add.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
[ -x "$here/.venv/bin/xvif-ovs" ] || { echo "run deploy/setup.sh first" >&2; exit 1; }
install -D -m 755 deploy/vif-xvif-ovs /etc/xen/scripts/vif-xvif-ovs
echo "XVIF_OVS=$here/.venv/bin/xvif-ovs" > /etc/default/xvif-ovs
install -D -m 644 deploy/controller.toml /etc/xvif-ovs/controller.toml.example
[ -e /etc/xvif-ovs/controller.toml ] || cp /etc/xvif-ovs/controller.toml.example /etc/xvif-ovs/controller.toml
# Firewall rules: root's alone (the controller refuses files others could write).
install -d -m 755 -o root -g root /etc/xvif-ovs/rules.d
install -m 644 deploy/rules.example.toml /etc/xvif-ovs/rules.example.toml
sed "s#/opt/xvif-ovs#$here#g" deploy/xvif-ovs-controller.service > /etc/systemd/system/xvif-ovs-controller.service
systemctl daemon-reload 2>/dev/null || true
echo "installed; next: add deploy/xl.conf.snippet to /etc/xen/xl.conf, then: systemctl enable --now xvif-ovs-controller"
