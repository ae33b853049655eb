#!/bin/bash
# Build (or reuse) the Debian 12 dom0 image the real-Xen suite boots in QEMU.
#
#   deploy/xen-vm/build-image.sh        prints the directory holding the image
#
# The image is cached under $XVIF_XEN_VM_CACHE (default /var/cache/xvif-ovs/xen-vm), in a
# directory named by the hash of this script (package list and dom0 set-up included), so a
# second run reuses it. The directory holds:
#   root.raw      dom0's root file system (raw ext4, booted with snapshot=on: never changed)
#   xen.elf       the hypervisor, gunzipped so that QEMU's -kernel loads it as multiboot
#   vmlinuz       dom0's kernel (also the guests' kernel, from inside the image)
#   initrd.img    dom0's initramfs
# Host packages it needs (mmdebstrap, e2fsprogs, qemu) are installed with apt-get.
# Everything comes from the host's own Debian apt sources; nothing else is downloaded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# What goes into dom0: Xen 4.17, Linux 6.1 (netback, openvswitch module), OVS, Python 3.11,
# and what the suite inside uses (pytest, scapy, tcpdump, cpio for the guests' initramfs).
DOM0_PACKAGES=(
    xen-system-amd64 linux-image-amd64 openvswitch-switch xenstore-utils
    busybox-static python3 python3-venv python3-pytest python3-scapy
    iproute2 iputils-ping tcpdump ethtool iperf3 cpio kmod procps udev systemd-sysv e2fsprogs
)
HOST_PACKAGES=(mmdebstrap e2fsprogs qemu-system-x86 qemu-utils)

log() { echo "build-image: $*" >&2; }

# --customize ROOT: mmdebstrap's customize hook, run on the host against the new root.
customize() {
    local r=$1
    echo xenhost >"$r/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 xenhost\n' >"$r/etc/hosts"
    printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' >"$r/etc/fstab"
    chroot "$r" passwd -d root >/dev/null
    # netback and the OVS kernel datapath, before Xen's and OVS's services start
    printf 'xen-netback\nopenvswitch\n' >"$r/etc/modules-load.d/xvif-realxen.conf"
    # guests' consoles logged to /var/log/xen/console/guest-NAME.log: how results come back
    echo 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"' >>"$r/etc/default/xen"
    # no getty on the console: its vhangup cuts the run's output on hvc0
    for u in serial-getty@hvc0.service getty@tty1.service serial-getty@ttyS0.service \
        apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer; do
        ln -sf /dev/null "$r/etc/systemd/system/$u"
    done
    # the run: mount the per-run disk (vdb) and hand over to the checkout's inside.sh
    cat >"$r/usr/local/sbin/xvif-realxen-run" <<'RUN'
#!/bin/bash
# Run by xvif-realxen.service at boot: the per-run disk (/dev/vdb) carries the checkout,
# its wheels and the suite; inside.sh installs and runs them; then dom0 powers off.
mkdir -p /mnt/run
if mount /dev/vdb /mnt/run; then
    mkdir -p /mnt/run/out
    echo "XVIF-REALXEN: dom0 up after $(cut -d' ' -f1 /proc/uptime) s"
    if [ -x /mnt/run/src/deploy/xen-vm/inside.sh ]; then
        /mnt/run/src/deploy/xen-vm/inside.sh 2>&1 | tee /mnt/run/out/inside.log
        echo "${PIPESTATUS[0]}" >/mnt/run/out/inside.rc
    else
        echo "XVIF-REALXEN: no /mnt/run/src/deploy/xen-vm/inside.sh on the run disk"
    fi
    sync
    umount /mnt/run
else
    echo "XVIF-REALXEN: cannot mount the run disk /dev/vdb"
fi
echo "XVIF-REALXEN: done, powering off"
systemctl --no-block poweroff
RUN
    chmod 755 "$r/usr/local/sbin/xvif-realxen-run"
    cat >"$r/etc/systemd/system/xvif-realxen.service" <<'UNIT'
[Unit]
Description=xvif-ovs real-Xen suite (from the per-run disk)
After=xen.service openvswitch-switch.service systemd-modules-load.service local-fs.target
Wants=xen.service openvswitch-switch.service
ConditionPathExists=/dev/vdb

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/xvif-realxen-run
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
    ln -sf /etc/systemd/system/xvif-realxen.service "$r/etc/systemd/system/multi-user.target.wants/xvif-realxen.service"
}
if [ "${1:-}" = --customize ]; then
    customize "$2"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || { log "run as root"; exit 1; }

cache_root=${XVIF_XEN_VM_CACHE:-/var/cache/xvif-ovs/xen-vm}
key=$(cat "$0" | sha256sum | cut -c1-16)
out=$cache_root/$key
if [ -s "$out/root.raw" ] && [ -s "$out/xen.elf" ] && [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ]; then
    log "reusing $out"
    echo "$out"
    exit 0
fi

missing=()
for p in "${HOST_PACKAGES[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The host's own Debian sources (deb822 or one-line), so the image matches the host's mirror.
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$f" ] && grep -qE '^[^#]*debian(-security)?( |$)|debian\.org' "$f" && sources+=("$f")
done
[ ${#sources[@]} -gt 0 ] || { log "no Debian apt sources on this host"; exit 1; }

mkdir -p "$cache_root"
work=$(mktemp -d "$cache_root/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
log "mmdebstrap bookworm from ${sources[*]} (a few minutes)"
start=$SECONDS
include=$(IFS=,; echo "${DOM0_PACKAGES[*]}")
mmdebstrap --mode=root --variant=important --include="$include" \
    --customize-hook='"'"$here"'/build-image.sh" --customize "$1"' \
    bookworm "$root" "${sources[@]}" >"$work/mmdebstrap.log" 2>&1 || {
    tail -40 "$work/mmdebstrap.log" >&2
    log "mmdebstrap failed"
    exit 1
}
log "mmdebstrap took $((SECONDS - start)) s"

kver=$(ls "$root/lib/modules" | sort -V | tail -1)
xen=$(ls "$root"/boot/xen-4.*-amd64.gz | sort -V | tail -1)
gunzip -c "$xen" >"$work/xen.elf"
cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$work/initrd.img"
mkfs.ext4 -q -F -L dom0 -d "$root" "$work/root.raw" 4G >&2
rm -rf "$root"
rm -rf "$out"
mv "$work" "$out"
trap - EXIT
echo "xen=$(basename "$xen") kernel=$kver" >"$out/VERSIONS"
log "built $out in $((SECONDS - start)) s"
echo "$out"
