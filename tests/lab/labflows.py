"""What the routed and NAT lab tests share: one bridge's flows as ovs-ofctl reads them,
a vif's packet counters by cookie purpose, and waiting for the controller to get there."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from xvif_ovs.pipeline.flow import COOKIE_MAGIC, vif_owner


def wait_for(cond: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)


def cookie_of(purpose: int, domid: int) -> str:
    """An ovs-ofctl cookie match for the flows of one purpose of vif DOMID.0."""
    return f"cookie={COOKIE_MAGIC | purpose << 40 | vif_owner(domid, 0):#x}/0xffffff00ffffffff"


class Flows:
    """ovs-ofctl on one of the lab's bridges, by its management socket."""

    def __init__(self, bridge: str) -> None:
        self.bridge = bridge

    def ofctl(self, host, *args: str, bridge: str | None = None) -> str:  # noqa: ANN001 - conftest's LabHost
        cmd = ["ovs-ofctl", "-O", "OpenFlow13", args[0], f"unix:{host.lab.dir}/{bridge or self.bridge}.mgmt", *args[1:]]
        return subprocess.run(cmd, env=host.lab.env(), capture_output=True, text=True, check=True).stdout

    def packets(self, host, purpose: int, domid: int) -> int:  # noqa: ANN001
        dump = self.ofctl(host, "dump-flows", cookie_of(purpose, domid))
        return sum(int(n) for n in re.findall(r"n_packets=(\d+)", dump))


def cli(host, *args: str) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    """`xvif-ovs ARGS` as an operator on the lab's host runs it."""
    env = {**os.environ, **host.lab.env()}
    return subprocess.run(
        [sys.executable, "-m", "xvif_ovs.cli.main", *args], capture_output=True, text=True, env=env, timeout=60
    )


@contextlib.contextmanager
def controller(host, config: str) -> Iterator[None]:  # noqa: ANN001
    """The lab's controller with the test module's configuration, for the module."""
    cfg = host.lab.dir / "controller.toml"
    cfg.write_text(config)
    host.lab.start_controller(cfg)
    wait_for(lambda: "connected" in (host.lab.dir / "controller.log").read_text(), "the controller to connect")
    try:
        yield
    finally:
        host.lab.stop_controller()
