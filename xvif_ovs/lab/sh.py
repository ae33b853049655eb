"""Running the host's tools (ip, ovs-vsctl, ...) for the lab, with failures as LabErrors.

The lab may use the command-line tools: they are independent witnesses of what the
product does through OVSDB and OpenFlow, and they are what an operator would type.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from ..errors import LabError

# The Debian packages that provide each tool the lab runs, for the error that says what to install.
TOOL_PACKAGES = {
    "ovsdb-server": "openvswitch-switch",
    "ovs-vswitchd": "openvswitch-switch",
    "ovs-vsctl": "openvswitch-switch",
    "ovsdb-tool": "openvswitch-switch",
    "ovs-appctl": "openvswitch-switch",
    "ovs-ofctl": "openvswitch-switch",
    "ip": "iproute2",
    "ethtool": "ethtool",
    "xenstore-read": "xenstore-utils",
}


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pkgs = sorted({TOOL_PACKAGES.get(t, t) for t in missing})
        raise LabError(
            f"missing {', '.join(missing)}: install {' '.join(pkgs)} (deploy/setup.sh installs everything the lab needs)"
        )
    if os.geteuid() != 0:
        raise LabError("the lab creates namespaces and interfaces: run it as root")


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    netns: str | None = None,
    check: bool = True,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    argv = list(cmd)
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    full_env = {**os.environ, **env} if env else None
    try:
        proc = subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise LabError(f"{argv[0]} not found: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise LabError(f"`{shlex.join(argv)}` did not finish within {timeout:.0f} s") from e
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip()
        raise LabError(f"`{shlex.join(argv)}` failed ({proc.returncode}): {msg}")
    return proc


def link_exists(name: str, netns: str | None = None) -> bool:
    return run(["ip", "link", "show", "dev", name], netns=netns, check=False).returncode == 0


def netns_list() -> list[str]:
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]
