from __future__ import annotations

import pytest

from xvif_ovs.xenstore.paths import Perm, canonical, is_child, parse_perms, relative_to_home
from xvif_ovs.xenstore.protocol import XsError


@pytest.mark.parametrize(
    ("given", "want"),
    [("/", "/"), ("/a/b", "/a/b"), ("a/b", "/local/domain/0/a/b"), ("x-y_z@1", "/local/domain/0/x-y_z@1")],
)
def test_canonical(given, want):
    assert canonical(given) == want


@pytest.mark.parametrize("bad", ["", "/a/", "//a", "/a//b", "/a b", "/é", "/a.b", "@introduceDomain"])
def test_canonical_rejects(bad):
    with pytest.raises(XsError) as e:
        canonical(bad)
    assert e.value.errno_name == "EINVAL"


def test_special_names_only_where_allowed():
    assert canonical("@releaseDomain", allow_special=True) == "@releaseDomain"


def test_is_child_and_relative():
    assert is_child("/a/b", "/a") and is_child("/a", "/a") and not is_child("/ab", "/a")
    assert relative_to_home("/local/domain/0/x/y", 0) == "x/y"


@pytest.mark.parametrize(("text", "perm"), [("n0", Perm("n", 0)), ("b12", Perm("b", 12)), ("r0x1f", Perm("r", 31))])
def test_perm_parse(text, perm):
    assert Perm.parse(text) == perm and str(perm) == f"{perm.kind}{perm.domid}"


@pytest.mark.parametrize("bad", ["", "n", "x1", "r-1", "r1a", "r 1", "r99999"])
def test_perm_parse_rejects(bad):
    with pytest.raises(XsError):
        Perm.parse(bad)
    with pytest.raises(XsError):
        parse_perms([])
