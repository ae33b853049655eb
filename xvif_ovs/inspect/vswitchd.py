"""ovs-vswitchd's control socket (what `ovs-appctl` talks to), through python-ovs: for
ofproto/trace, dpif/show and the connection tracker's dpctl/ commands."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import XvifError


class VswitchdError(XvifError):
    """ovs-vswitchd could not be reached, or refused the command."""


def unixctl_path() -> str:
    rundir = Path(os.environ.get("OVS_RUNDIR", "/var/run/openvswitch"))
    if (rundir / "ovs-vswitchd.ctl").exists():
        return str(rundir / "ovs-vswitchd.ctl")
    try:
        pid = (rundir / "ovs-vswitchd.pid").read_text().strip()
    except OSError:
        raise VswitchdError(f"ovs-vswitchd is not running (no pidfile in {rundir}; set OVS_RUNDIR)") from None
    return str(rundir / f"ovs-vswitchd.{pid}.ctl")


class Unixctl:
    """One connection to ovs-vswitchd's control socket, for many commands (each new
    connection costs more than the command)."""

    def __enter__(self) -> Unixctl:
        from ..compat import quiet_eventlet

        quiet_eventlet()
        import ovs.unixctl.client

        error, self.client = ovs.unixctl.client.UnixctlClient.create(unixctl_path())
        if error:
            raise VswitchdError(f"cannot reach ovs-vswitchd's control socket: {os.strerror(error)}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def call(self, command: str, *args: str) -> str:
        error, err, result = self.client.transact(command, list(args))  # python-ovs: (errno, error, result)
        if error or err:
            raise VswitchdError(f"{command}: {err or os.strerror(error)}")
        return result


def appctl(command: str, *args: str) -> str:
    with Unixctl() as u:
        return u.call(command, *args)
