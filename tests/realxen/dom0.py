"""Helpers for the real-Xen suite, run inside dom0: xl guests, OVSDB, XenStore, the controller.

Guests are PV domUs: dom0's own kernel (Debian's vmlinuz, a PV-capable bzImage) with a
busybox-static initramfs built here, whose /init loads netfront and runs the shell script
passed gzipped and base64-encoded on the kernel command line (xl's extra=, key xr_run; Xen
keeps 1024 bytes of a PV guest's command line). What the script
prints comes back through xenconsoled's log of the guest's console
(/var/log/xen/console/guest-NAME.log, XENCONSOLED_ARGS set in the image).
Only the standard library: the host imports this module too (and uses none of it).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import itertools
import json
import lzma
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

XVIF = "/opt/xvif-ovs/.venv/bin/xvif-ovs"
WORK = Path("/var/lib/xvif-realxen")
CONSOLE_DIR = Path("/var/log/xen/console")
HOTPLUG_LOG = Path("/var/log/xen/xen-hotplug.log")

GUEST_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /modules/$m 2>/dev/null; done
echo "XR-BOOT $(cat /proc/uptime)"
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 200 ]; do sleep 0.1; n=$((n+1)); done
ip link set lo up
run=$(sed -n 's/.*xr_run=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$run" ]; then
    echo "$run" | base64 -d | zcat > /run.sh
    sh /run.sh 2>&1
    echo "XR-DONE rc=$?"
fi
while true; do sleep 3600; done
"""


def sh(cmd, check: bool = True, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command (a list, or a string for the shell); check=True raises with its output."""
    p = subprocess.run(
        cmd,
        shell=isinstance(cmd, str),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})} if env is not None else None,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd!r} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def wait_for(what: str, cond, timeout: float = 60, interval: float = 0.2):
    """Poll cond() until it returns something true; fail naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- XenStore (through Xen's own tools, as an independent witness) ------------------------


def xs_read(path: str) -> str | None:
    p = sh(["xenstore-read", path], check=False)
    return p.stdout.rstrip("\n") if p.returncode == 0 else None


def backend(domid: int, devid: int) -> str:
    return f"/local/domain/0/backend/vif/{domid}/{devid}"


# -- OVSDB ----------------------------------------------------------------------------


def _ovs_json(value):
    """ovs-vsctl --data=json values to Python: maps to dicts, sets to lists."""
    if isinstance(value, list) and len(value) == 2 and value[0] in ("map", "set", "uuid"):
        if value[0] == "map":
            return {k: _ovs_json(v) for k, v in value[1]}
        if value[0] == "set":
            return [_ovs_json(v) for v in value[1]]
        return value[1]
    return value


def ovs_rows(table: str, columns: str = "") -> list[dict]:
    cmd = ["ovs-vsctl", "--format=json", "--data=json"]
    if columns:
        cmd.append(f"--columns={columns}")
    out = json.loads(sh([*cmd, "list", table]).stdout)
    return [{h: _ovs_json(v) for h, v in zip(out["headings"], row, strict=True)} for row in out["data"]]


def ovs_row(table: str, name: str) -> dict | None:
    for r in ovs_rows(table):
        if r.get("name") == name:
            return r
    return None


def ovs_ports(bridge: str) -> list[str]:
    return sh(["ovs-vsctl", "list-ports", bridge]).stdout.split()


def ovsdb_state() -> dict:
    """Ports and interfaces as an operator sees them: for "OVSDB unchanged" checks."""
    ports = {r["name"]: (r["tag"], r["trunks"], r["vlan_mode"]) for r in ovs_rows("Port", "name,tag,trunks,vlan_mode")}
    ifaces = {r["name"]: r["external_ids"] for r in ovs_rows("Interface", "name,external_ids")}
    bridges = {r["name"]: sorted(ovs_ports(r["name"])) for r in ovs_rows("Bridge", "name")}
    return {"ports": ports, "interfaces": ifaces, "bridges": bridges}


def ensure_bridge(name: str) -> None:
    """A bridge on the kernel datapath (no datapath_type=netdev), up, as a dom0 would have."""
    sh(["ovs-vsctl", "--may-exist", "add-br", name])
    dp = sh(["ovs-vsctl", "get", "Bridge", name, "datapath_type"]).stdout.strip().strip('"')
    assert dp in ("", "system"), f"{name} has datapath_type={dp}: the real host must use the kernel datapath"
    sh(["ip", "link", "set", name, "up"])


# -- guests ---------------------------------------------------------------------------


def build_initramfs(dest: Path) -> Path:
    """busybox-static + xen-netfront (and what it needs) + our /init, as a gzipped newc cpio."""
    root = WORK / "initramfs"
    shutil.rmtree(root, ignore_errors=True)
    (root / "bin").mkdir(parents=True)
    (root / "modules").mkdir()
    for d in ("proc", "sys", "dev", "tmp", "run"):
        (root / d).mkdir()
    shutil.copy("/bin/busybox", root / "bin/busybox")
    # Tools built on the host for the guests (tests/realxen/guest: sendframe), if any.
    tools = Path(os.environ.get("XVIF_REALXEN_GUEST_BIN", "/nonexistent"))
    for tool in sorted(tools.glob("*")) if tools.is_dir() else ():
        shutil.copy(tool, root / "bin" / tool.name)
        (root / "bin" / tool.name).chmod(0o755)
    (root / "init").write_text(GUEST_INIT)
    (root / "init").chmod(0o755)
    kver = os.uname().release
    deps = sh(["modprobe", "--show-depends", "--set-version", kver, "xen-netfront"]).stdout
    order = []
    for line in deps.splitlines():
        parts = line.split()
        if parts[:1] != ["insmod"]:
            continue
        src = Path(parts[1])
        name = src.name
        if name.endswith(".xz"):
            name = name[:-3]
            (root / "modules" / name).write_bytes(lzma.decompress(src.read_bytes()))
        elif name.endswith(".zst"):
            name = name[:-4]
            sh(f"zstd -dc {src} > {root / 'modules' / name}")
        else:
            shutil.copy(src, root / "modules" / name)
        order.append(name)
    assert any(n.startswith("xen-netfront") for n in order), f"no xen-netfront module in {deps!r}"
    (root / "modules.order").write_text("\n".join(order) + "\n")
    raw = subprocess.run(
        f"cd {root} && find . | cpio -o -H newc --quiet", shell=True, capture_output=True, check=True
    ).stdout
    dest.write_bytes(gzip.compress(raw, 6))
    return dest


def extract_vmlinux(dest: Path) -> Path:
    """dom0's bzImage's payload (xz) as the ELF vmlinux, so that each `xl create` does not
    decompress the kernel again (slow under TCG)."""
    data = Path(f"/boot/vmlinuz-{os.uname().release}").read_bytes()
    setup = (data[0x1F1] or 4) + 1
    off = int.from_bytes(data[0x248:0x24C], "little")
    length = int.from_bytes(data[0x24C:0x250], "little")
    payload = data[setup * 512 + off : setup * 512 + off + length]
    elf = lzma.LZMADecompressor().decompress(payload)
    assert elf[:4] == b"\x7fELF", "the kernel's payload is not an xz-compressed ELF"
    dest.write_bytes(elf)
    return dest


KERNEL = WORK / "vmlinux"


def kernel_path() -> str:
    return str(KERNEL)


_names = itertools.count(1)

# Faults of the emulated host (QEMU's software emulation of Xen, no hardware virtualisation):
# processes in dom0 and in the guests die at random, a read of an intact file goes wrong.
# Seen in every run here, in programs that are not ours as much as in ours (busybox in the
# guests, xl, ld.so, zcat, Python running the hook), at random places. `xl create` is tried
# once more when its output shows one, and a test that fails on one runs again (conftest).
EMULATION_FAULTS = (
    "Inconsistency detected by ld.so",
    "xc_dom_probe_bzimage_kernel unable to XZ decompress kernel",
    "died due to fatal signal",  # libxl: a hotplug script (or its Python) killed by a signal
    "Segmentation fault",  # a guest's busybox, or a program in dom0
    "Illegal instruction",
    "Bus error",
    "zcat: short read",
    "SystemError: error return without exception set",
)


class XlError(AssertionError):
    def __init__(self, cmd: str, p: subprocess.CompletedProcess) -> None:
        self.output = p.stdout + p.stderr
        self.returncode = p.returncode
        super().__init__(f"{cmd} exited {p.returncode}:\n{self.output}")


class Guest:
    """A PV domU made by `xl create` and its console log."""

    def __init__(self, name: str, cfg: Path) -> None:
        self.name = name
        self.cfg = cfg
        self.domid: int | None = None

    @property
    def console_log(self) -> Path:
        return CONSOLE_DIR / f"guest-{self.name}.log"

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, pattern: str, timeout: float = 90) -> re.Match:
        rx = re.compile(pattern, re.M)
        try:
            return wait_for(f"{pattern!r} on {self.name}'s console", lambda: rx.search(self.console()), timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- console of {self.name} ---\n{self.console()[-3000:]}") from None

    def done(self, timeout: float = 120) -> str:
        """Wait for the guest's script to finish; its console output."""
        self.wait_console(r"^XR-DONE rc=\d+", timeout)
        return self.console()

    def vif(self, devid: int = 0) -> str:
        return f"vif{self.domid}.{devid}"

    def destroy(self) -> None:
        if self.domid is not None and sh(["xl", "domid", self.name], check=False).returncode == 0:
            sh(["xl", "destroy", self.name], timeout=120)
        self.domid = None


class Guests:
    """Makes guests for one test and destroys them after it."""

    def __init__(self, initrd: Path) -> None:
        self.initrd = initrd
        self.made: list[Guest] = []

    def config(self, name: str, vifs: list[str], script: str = "", memory: int = 96) -> str:
        extra = "console=hvc0 quiet loglevel=4"
        if script:
            extra += " xr_run=" + base64.b64encode(gzip.compress(script.encode(), 9, mtime=0)).decode()
        assert len(extra) < 1000, f"the guest's command line is {len(extra)} bytes: Xen keeps 1024"
        vif_list = ", ".join(f"'{v}'" for v in vifs)
        return (
            f'name = "{name}"\ntype = "pv"\nkernel = "{kernel_path()}"\nramdisk = "{self.initrd}"\n'
            f'extra = "{extra}"\nmemory = {memory}\nvcpus = 1\non_crash = "destroy"\n'
            f"vif = [ {vif_list} ]\n"
        )

    def create_ready(self, prefix: str, vifs: list[str], script: str, ready: str, timeout: float = 120) -> Guest:
        """A guest whose script has printed ``ready`` (a regex) on its console. One that
        died of an emulation fault on the way (EMULATION_FAULTS on its console) is
        destroyed and made again, twice at most: for guests a whole session relies on."""
        for attempt in range(3):
            g = self.create(prefix, vifs, script)
            try:
                g.wait_console(ready, timeout)
                return g
            except AssertionError as e:
                fault = next((sig for sig in EMULATION_FAULTS if sig in str(e)), None)
                if fault is None or attempt == 2:
                    raise
                print(f"{g.name}: an emulation fault ({fault!r}) before {ready!r}: made again")
                g.destroy()
        raise AssertionError("unreachable")

    def create(self, prefix: str, vifs: list[str], script: str = "", memory: int = 96, name: str = "") -> Guest:
        """`xl create` of a guest named prefix + a number (or exactly ``name``); raises
        XlError (with xl's output) when it fails."""
        name = name or f"{prefix}{next(_names)}"
        cfg = WORK / f"{name}.cfg"
        cfg.write_text(self.config(name, vifs, script, memory))
        g = Guest(name, cfg)
        self.made.append(g)
        p = sh(["xl", "create", str(cfg)], check=False, timeout=180)
        if p.returncode != 0 and any(sig in p.stdout + p.stderr for sig in EMULATION_FAULTS):
            # seen on this emulated host, not from xvif-ovs (see EMULATION_FAULTS): said, and tried once more
            print(f"xl create {name}: retrying after an emulation fault:\n{p.stdout}{p.stderr}")
            p = sh(["xl", "create", str(cfg)], check=False, timeout=180)
        if p.returncode != 0:
            raise XlError(f"xl create {cfg}", p)
        g.domid = int(sh(["xl", "domid", name]).stdout.strip())
        return g

    def cleanup(self) -> None:
        for g in self.made:
            g.destroy()
        self.made.clear()


def vif_spec(mac: str, bridge: str = "xenbr0", **kw) -> str:
    parts = [f"mac={mac}", f"bridge={bridge}", "script=vif-xvif-ovs"]
    parts += [f"{k}={v}" for k, v in kw.items()]
    return ",".join(parts)


def mac(n: int) -> str:
    return f"00:16:3e:5a:{n // 256:02x}:{n % 256:02x}"


# -- the controller ---------------------------------------------------------------------


def controller_connected(bridge: str = "xenbr0") -> bool:
    rows = ovs_rows("Controller", "target,is_connected")
    br = ovs_row("Bridge", bridge)
    return bool(br and br["controller"] and rows and all(r["is_connected"] is True for r in rows))


def xvif(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """The operator CLI with a clean environment: it must find XenStore and OVS by itself."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    p = subprocess.run([XVIF, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"xvif-ovs {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def drops(device: str) -> int:
    data = json.loads(xvif("flows", "--drops", "--json").stdout)
    return sum(v["dropped_packets"] for v in data["vifs"] if v["device"] == device)


# -- guest scripts ----------------------------------------------------------------------

PEER_IP = "10.0.0.20"


def up(ip: str) -> str:
    """Guest script: eth0 up with ip/24."""
    return f"ip link set eth0 up\nip addr add {ip}/24 dev eth0\n"


def reach(peer: str, tries: int = 40) -> str:
    """Guest script: wait until peer answers (flows may still be on their way), say so."""
    return (
        f"n=0; until ping -c 1 -W 1 {peer} >/dev/null 2>&1; do n=$((n+1)); [ $n -ge {tries} ] && break; done\n"
        f'[ $n -lt {tries} ] && echo "XR-REACHED {peer} after $n" || echo "XR-UNREACHABLE {peer}"\n'
    )


# -- migration within the host -------------------------------------------------------------
#
# `xl migrate` of a PV guest cannot run on this host: live migration tracks the pages the
# guest dirties with shadow paging's log-dirty mode, and Debian 12's Xen 4.17 is built
# without it (CONFIG_SHADOW_PAGING is not set in /boot/xen-4.17-amd64.config: "Failed to
# enable logdirty: 95"); HVM and PVH guests, which use HAP instead, need the hardware
# virtualisation this emulated host does not have. What a migration does to the network
# is done here with xl's own commands instead, in libxl's order: the guest is
# checkpointed (`xl save -c`, it runs on), restored paused as NAME--incoming with the
# same VM UUID and NICs while the original still runs (its vifs go online with the MAC
# already on the bridge), then the original is destroyed, the copy unpaused (netfront
# reconnects and announces itself) and renamed NAME.


def switch_over(g: Guest, timeout: float = 600) -> tuple[float, float]:
    """Moves g to a new domain of the same VM in the order `xl migrate` uses
    (tools/xl/xl_migrate.c), with a checkpoint for the memory copy: `xl save -c` (the guest
    runs on after it), `xl restore -p` as NAME--incoming with the same UUID (its vifs come
    online while the original runs: the pair the hook and the controller must accept);
    then the switch: the original is suspended (`xl pause`, the last round of a live
    migration) and renamed NAME--migratedaway, the new domain renamed NAME and unpaused,
    the original destroyed. Returns the wall-clock times at which the original stopped
    and the new one started; g.domid is the new one's after."""
    uuid = (xs_read(f"/local/domain/{g.domid}/vm") or "").rsplit("/", 1)[-1]
    assert uuid, f"no /local/domain/{g.domid}/vm"
    incoming, away = f"{g.name}--incoming", f"{g.name}--migratedaway"
    cfg = WORK / f"{incoming}.cfg"
    cfg.write_text(
        re.sub(r'^name = ".*"$', f'name = "{incoming}"', g.cfg.read_text(), flags=re.M) + f'uuid = "{uuid}"\n'
    )
    state = WORK / f"{g.name}.checkpoint"
    sh(["xl", "save", "-c", g.name, str(state)], timeout=timeout)
    try:
        p = sh(["xl", "restore", "-p", str(cfg), str(state)], check=False, timeout=timeout)
        if p.returncode != 0:
            raise XlError(f"xl restore -p {cfg} {state}", p)
    finally:
        state.unlink(missing_ok=True)
    new = int(sh(["xl", "domid", incoming]).stdout.strip())
    stopped = time.time()
    sh(["xl", "pause", g.name], timeout=120)
    sh(["xl", "rename", g.name, away], timeout=120)
    sh(["xl", "rename", incoming, g.name], timeout=120)
    sh(["xl", "unpause", g.name], timeout=120)
    started = time.time()
    sh(["xl", "destroy", away], timeout=120)
    g.domid = new
    return stopped, started


class ReplyGaps:
    """tcpdump on a (fixed) vif in dom0, timing the echo replies that come from ``ip``:
    the longest gap between two of them is how long that guest's traffic stopped."""

    def __init__(self, dev: str, ip: str) -> None:
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", dev, "-nn", "-l", "-tt", "-U", f"icmp[icmptype] == icmp-echoreply and src host {ip}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.times: list[float] = []
        self.err: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()
        wait_for(f"tcpdump on {dev}", lambda: self.proc.poll() is not None or any("listening" in e for e in self.err))

    def _read(self) -> None:
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError, IndexError):  # tcpdump's own notes
                self.times.append(float(line.split()[0]))

    def replies_after(self, t: float) -> int:
        return sum(1 for x in self.times if x > t)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest silence between replies that overlaps [start, end] (wall clock)."""
        ts = sorted(self.times)
        gaps = [(b - a) for a, b in zip(ts, ts[1:], strict=False) if b > start and a < end]
        assert gaps, f"no replies around the migration ({len(ts)} replies in all)"
        return max(gaps)


def pinger(guests: Guests, n: int, bridge: str, script: str, target: str) -> Guest:
    """A guest at 10.0.0.N pinging ``target`` every 100 ms for as long as a test needs."""
    ip = f"10.0.0.{n}"
    g = guests.create(
        "rxpgr",
        [vif_spec(mac(n), bridge, ip=ip).replace("script=vif-xvif-ovs", f"script={script}")],
        up(ip) + reach(target, 120) + f"echo XR-PINGING\nping -q -i 0.1 -c 100000 {target}\n",
    )
    g.wait_console("^XR-(PINGING|UNREACHABLE)", 240)
    assert "XR-PINGING" in g.console() and f"XR-REACHED {target}" in g.console(), g.console()[-2000:]
    return g


def migration_gap(guests: Guests, bridge: str, script: str, n: int = 50) -> dict:
    """A guest (10.0.0.N) moved to a new domain (switch_over) while another one pings it
    every 100 ms: the longest silence between its replies around the switch."""
    ip = f"10.0.0.{n}"
    spec = vif_spec(mac(n), bridge, ip=ip).replace("script=vif-xvif-ovs", f"script={script}")
    mover = guests.create("rxmig", [spec], up(ip) + "echo XR-READY\n")
    mover.wait_console("^XR-READY", 120)
    old = mover.domid
    watch = pinger(guests, n + 1, bridge, script, ip)
    gaps = ReplyGaps(watch.vif(), ip)
    try:
        wait_for("replies before the switch", lambda: len(gaps.times) >= 5, 120)
        t0 = time.monotonic()
        stopped, started = switch_over(mover)
        took = time.monotonic() - t0
        # Only the new domain can answer after it started (the original is paused, then gone).
        wait_for("replies from the new domain", lambda: gaps.replies_after(started) >= 5, 120)
    finally:
        gaps.stop()
    watch.destroy()
    # The silence that spans the switch: from the original's last reply before it stopped
    # to the new domain's first.
    return {"old_domid": old, "guest": mover, "switch_s": took, "gap_s": gaps.longest_gap(stopped, started)}
