"""`lab up / env / status / down` through the CLI, as an operator types them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xvif_ovs.lab.sh import netns_list


def cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "xvif_ovs.cli.main", *args], capture_output=True, text=True, env=env, timeout=120
    )
    if check:
        assert proc.returncode == 0, f"{args}: {proc.stdout} {proc.stderr}"
    return proc


@pytest.fixture
def lab_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "lab"
    yield d
    cli("lab", "--dir", str(d), "down", check=False)


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_up_env_status_down_twice_leaves_nothing(lab_dir):
    links_before, netns_before = _links(), set(netns_list())
    for _ in range(2):  # a second up after down works
        out = cli("lab", "--dir", str(lab_dir), "up", "--bridge", "xenbr1:peth1", "--internal", "xenint").stdout
        assert "bridge xenbr0: uplink peth0" in out and "bridge xenint: internal" in out

        env_lines = cli("lab", "--dir", str(lab_dir), "env").stdout.splitlines()
        env = dict(os.environ)
        for line in env_lines:
            k, v = line.removeprefix("export ").split("=", 1)
            env[k] = v.strip("'")
        # Xen's and OVS's own tools work against the lab with just those exports.
        bridges = subprocess.run(["ovs-vsctl", "list-br"], env=env, capture_output=True, text=True, check=True)
        assert bridges.stdout.split() == ["xenbr0", "xenbr1", "xenint"]
        dp = subprocess.run(
            ["ovs-vsctl", "get", "bridge", "xenbr0", "datapath_type"], env=env, capture_output=True, text=True
        )
        assert dp.stdout.strip() == "netdev"
        name = subprocess.run(["xenstore-read", "/local/domain/0/name"], env=env, capture_output=True, text=True)
        assert name.stdout.strip() == "Domain-0"
        ofctl = subprocess.run(["ovs-ofctl", "show", "xenbr0"], env=env, capture_output=True, text=True)
        assert ofctl.returncode == 0 and "peth0" in ofctl.stdout

        st = json.loads(cli("lab", "--dir", str(lab_dir), "status", "--json").stdout)
        procs = st["processes"]
        assert st["up"] and all(procs[k] for k in ("ovsdb-server", "ovs-vswitchd", "xenstored"))
        assert procs["controller"] is None  # only with --controller
        assert [b["name"] for b in st["bridges"]] == ["xenbr0", "xenbr1", "xenint"]

        lan = cli("lab", "--dir", str(lab_dir), "exec", "lan", "--", "ip", "-br", "addr", "show", "eth0").stdout
        assert "192.0.2.1/24" in lan

        cli("lab", "--dir", str(lab_dir), "down")
        assert not lab_dir.exists()
        assert _links() == links_before
        assert set(netns_list()) == netns_before
        assert cli("lab", "--dir", str(lab_dir), "status", check=False).returncode == 1


def test_second_up_is_refused_while_up(lab_dir):
    cli("lab", "--dir", str(lab_dir), "up")
    again = cli("lab", "--dir", str(lab_dir), "up", check=False)
    assert again.returncode == 1 and "already up" in again.stderr
    assert cli("lab", "--dir", str(lab_dir), "status").returncode == 0  # the first lab is untouched


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--bridge", "xenbr0:peth9"], "given twice"),
        (["--bridge", "xenbr1:lo"], "already exists"),
        (["--bridge", "bad name:peth1"], "not an interface name"),
    ],
)
def test_bad_up_arguments_make_nothing(lab_dir, args, hint):
    links_before = _links()
    bad = cli("lab", "--dir", str(lab_dir), "up", *args, check=False)
    assert bad.returncode == 1 and hint in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    assert _links() == links_before and not lab_dir.exists()


def test_commands_on_a_lab_that_is_down_say_so(lab_dir):
    out = cli("lab", "--dir", str(lab_dir), "domain", "add", "g", "--domid", "3", "--vif", "", check=False)
    assert out.returncode == 1 and "not up" in out.stderr and "lab up" in out.stderr
