"""Conformance against clients nobody here wrote: Debian's xenstore-utils (libxenstore
from Xen), talking to our server through XENSTORED_PATH exactly as on a dom0."""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest


@pytest.fixture(scope="module", autouse=True)
def _utils_installed():
    missing = [t for t in ("xenstore-read", "xenstore-write", "xenstore-watch") if not shutil.which(t)]
    assert not missing, f"install xenstore-utils (deploy/setup.sh does): missing {missing}"


def test_write_read_exists_rm(xenstored):
    t = xenstored.tool
    t("xenstore-write", "/u/a", "1", "/u/b/c", "two words")
    assert t("xenstore-read", "/u/a", "/u/b/c").stdout == "1\ntwo words\n"
    assert t("xenstore-exists", "/u/b").returncode == 0
    missing = t("xenstore-read", "/u/none", check=False)
    assert missing.returncode == 1 and "couldn't read path /u/none" in missing.stderr
    assert t("xenstore-exists", "/u/none", check=False).returncode == 1
    t("xenstore-rm", "/u/b")
    assert t("xenstore-exists", "/u/b/c", check=False).returncode == 1


def test_ls_and_list_show_the_tree_with_permissions(xenstored):
    t = xenstored.tool
    t("xenstore-write", "/ls/vif/0/mac", "00:16:3e:00:00:01", "/ls/vif/0/bridge", "xenbr0")
    t("xenstore-chmod", "/ls/vif", "n0", "r5")
    assert t("xenstore-list", "/ls/vif/0").stdout.split() == ["mac", "bridge"]
    out = t("xenstore-ls", "-p", "/ls").stdout
    assert 'vif = ""' in out and "(n0,r5)" in out
    assert 'mac = "00:16:3e:00:00:01"' in out


def test_chmod_rejects_malformed_permissions(xenstored):
    xenstored.tool("xenstore-write", "/chm", "x")
    bad = xenstored.tool("xenstore-chmod", "/chm", "q5", check=False)
    assert bad.returncode != 0
    line = next(ln for ln in xenstored.tool("xenstore-ls", "-p", "/").stdout.splitlines() if ln.startswith("chm "))
    assert line.endswith("(n0)"), line  # unchanged


def test_relative_paths_are_under_dom0_home(xenstored):
    xenstored.tool("xenstore-write", "relkey", "v")
    assert xenstored.tool("xenstore-read", "/local/domain/0/relkey").stdout == "v\n"


def test_list_falls_back_to_directory_part_for_large_directories(xenstored):
    names = [f"n{i:04d}-{'y' * 40}" for i in range(150)]
    args = [x for n in names for x in (f"/bigdir/{n}", "1")]
    xenstored.tool("xenstore-write", *args)
    assert xenstored.tool("xenstore-list", "/bigdir").stdout.split() == names


def test_watch_sees_registration_and_changes(xenstored):
    watch = subprocess.Popen(["xenstore-watch", "-n", "3", "/wt"], env=xenstored.env, stdout=subprocess.PIPE, text=True)
    try:
        first = watch.stdout.readline()  # the event that fires on registration
        assert first.split() == ["/wt"]
        xenstored.tool("xenstore-write", "/wt/x", "1")
        xenstored.tool("xenstore-rm", "/wt/x")
        out, _ = watch.communicate(timeout=10)
    finally:
        watch.kill()
    assert out.split() == ["/wt/x", "/wt/x"]


def test_concurrent_transactional_writers_all_succeed(xenstored):
    """xenstore-write wraps several keys in one transaction and retries on EAGAIN:
    twenty writers on the same node must all get through, one at a time."""

    def writer(i: int) -> subprocess.CompletedProcess[str]:
        return xenstored.tool("xenstore-write", "/race/counter", str(i), f"/race/w{i}", "done", check=False)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(writer, range(20)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    listed = xenstored.tool("xenstore-list", "/race").stdout.split()
    assert sorted(listed) == sorted(["counter"] + [f"w{i}" for i in range(20)])
