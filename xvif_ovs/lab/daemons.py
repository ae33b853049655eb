"""Starting and stopping the lab's daemons (ovsdb-server, ovs-vswitchd, the XenStore
server) under one directory, so that nothing touches the host's own OVS or Xen."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import LabError
from .sh import run

VSWITCH_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


def ovs_env(d: Path) -> dict[str, str]:
    """The variables with which OVS's own tools find the lab's daemons and sockets."""
    return {"OVS_RUNDIR": str(d), "OVS_LOGDIR": str(d), "OVS_DBDIR": str(d), "OVS_SYSCONFDIR": str(d)}


def read_pid(pidfile: Path) -> int | None:
    """The daemon's pid, if it still runs: a recycled pid of some other program is not it."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    if str(pidfile.parent).encode() not in cmdline:  # every lab daemon is started with paths in its dir
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_pid(pidfile: Path, timeout: float = 10.0) -> None:
    pid = read_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        _reap(pid)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    _reap(pid)
    pidfile.unlink(missing_ok=True)


def _reap(pid: int) -> None:
    """Collect the exit status if the daemon is our own child (the XenStore server is)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_for(path: Path, what: str, timeout: float = 15.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            tail = ""
            if log and log.exists():
                tail = "; last log lines:\n" + "\n".join(log.read_text().splitlines()[-5:])
            raise LabError(f"{what} did not come up within {timeout:.0f} s (waiting for {path}){tail}")
        time.sleep(0.02)


def start_ovs(d: Path, dummy: bool = False) -> None:
    env = ovs_env(d)
    db = d / "conf.db"
    if not db.exists():
        run(["ovsdb-tool", "create", str(db), VSWITCH_SCHEMA])
    run(
        [
            "ovsdb-server",
            str(db),
            f"--remote=punix:{d}/db.sock",
            f"--pidfile={d}/ovsdb-server.pid",
            f"--log-file={d}/ovsdb-server.log",
            f"--unixctl={d}/ovsdb-server.ctl",
            "--detach",
        ],
        env=env,
    )
    vsctl(d, "--no-wait", "init")
    # Userspace TSO lets veth guests keep their offloads with good checksums (PLATFORM.md).
    vsctl(d, "--no-wait", "set", "Open_vSwitch", ".", "other_config:userspace-tso-enable=true")
    start_vswitchd(d, dummy)


def start_vswitchd(d: Path, dummy: bool | None = None) -> None:
    """``dummy``: every port is a dummy device (OVS's --enable-dummy=override), for
    control-plane scale runs with thousands of ports and no traffic (PLATFORM.md)."""
    flag = d / "dummy"
    if dummy is None:
        dummy = flag.exists()
    elif dummy:
        flag.touch()
    run(
        [
            "ovs-vswitchd",
            *(["--enable-dummy=override"] if dummy else []),
            f"unix:{d}/db.sock",
            f"--pidfile={d}/ovs-vswitchd.pid",
            f"--log-file={d}/ovs-vswitchd.log",
            f"--unixctl={d}/ovs-vswitchd.ctl",
            "--detach",
        ],
        env=ovs_env(d),
    )


def restart_vswitchd(d: Path) -> None:
    """Stop ovs-vswitchd (its flows die with it, as on a real restart) and start it again."""
    ctl = d / "ovs-vswitchd.ctl"
    if read_pid(d / "ovs-vswitchd.pid") and ctl.exists():
        run(["ovs-appctl", "-t", str(ctl), "exit"], check=False, timeout=20)
    stop_pid(d / "ovs-vswitchd.pid")
    start_vswitchd(d)


def stop_ovs(d: Path) -> None:
    ctl = d / "ovs-vswitchd.ctl"
    if read_pid(d / "ovs-vswitchd.pid") and ctl.exists():
        # --cleanup removes the datapath and its tap devices (xenbr0, ovs-netdev) from the host.
        # A vswitchd busy with thousands of ports may not answer in time: then it is killed
        # below and `down` removes the taps itself.
        with contextlib.suppress(LabError):
            run(["ovs-appctl", "-t", str(ctl), "exit", "--cleanup"], check=False, timeout=20)
    stop_pid(d / "ovs-vswitchd.pid")
    stop_pid(d / "ovsdb-server.pid")


def vsctl(d: Path, *args: str, timeout: float = 30) -> str:
    """ovs-vsctl against the lab; ``timeout`` bounds its wait for ovs-vswitchd too."""
    argv = ["ovs-vsctl", f"--db=unix:{d}/db.sock", f"--timeout={max(1, int(timeout) - 5)}", *args]
    return run(argv, env=ovs_env(d), timeout=timeout).stdout


def start_xenstored(d: Path) -> None:
    sock, pidfile, log = d / "xenstored.sock", d / "xenstored.pid", d / "xenstored.log"
    pidfile.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "xvif_ovs.cli.main", "xenstored", "--socket", str(sock)]
    cmd += ["--pidfile", str(pidfile), "--log-file", str(log), "--state-file", str(d / "xenstore.json")]
    subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_for(pidfile, "the XenStore server", log=log)


def restart_xenstored(d: Path) -> None:
    """Stop and start the XenStore server; its tree survives (state file)."""
    stop_xenstored(d)
    start_xenstored(d)


def stop_xenstored(d: Path) -> None:
    stop_pid(d / "xenstored.pid")
    (d / "xenstored.sock").unlink(missing_ok=True)


def start_controller(d: Path, config: Path | None = None) -> None:
    """The xvif-ovs controller for the lab's OVS and XenStore, as its systemd unit would run it."""
    pidfile, log = d / "controller.pid", d / "controller.log"
    if read_pid(pidfile):
        return
    cmd = [sys.executable, "-m", "xvif_ovs.cli.main", "controller", "--no-syslog", "--db", f"unix:{d}/db.sock"]
    cmd += ["--xenstore", str(d / "xenstored.sock")]
    if config:
        cmd += ["--config", str(config)]
    env = {**os.environ, **ovs_env(d)}
    with open(log, "a") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True, cwd=str(d)
        )
    tmp = pidfile.with_suffix(".tmp")
    tmp.write_text(f"{proc.pid}\n")
    os.replace(tmp, pidfile)


def stop_controller(d: Path, kill: bool = False) -> None:
    """SIGTERM (a clean stop) or, with ``kill``, SIGKILL as a crash would."""
    pidfile = d / "controller.pid"
    pid = read_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return
    if kill:
        os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
            _reap(pid)
            time.sleep(0.01)
        pidfile.unlink(missing_ok=True)
        return
    stop_pid(pidfile)
