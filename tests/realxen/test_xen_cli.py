"""The operator CLI on the real host, with no environment variables: it must find
oxenstored's socket (or /dev/xen/xenbus) and OVS's default database by itself."""

from __future__ import annotations

import json

from dom0 import mac, reach, up, vif_spec, xvif


def test_show(peer):
    out = xvif("show").stdout
    for want in ("xenbr0", peer.vif(), peer.name, mac(20), "connected"):
        assert want in out, f"{want!r} not in `xvif-ovs show`:\n{out}"
    data = json.loads(xvif("show", "--json").stdout)
    assert peer.vif() in json.dumps(data)


def test_flows_and_diff(peer):
    out = xvif("flows", "--vif", peer.vif()).stdout
    assert "priority=" in out and peer.vif() in out, out
    p = xvif("flows", "--diff", check=False)
    assert p.returncode == 0, f"flows --diff reports drift:\n{p.stdout}{p.stderr}"


def test_trace(peer, guests):
    a = guests.create("rxtr", [vif_spec(mac(27), ip="10.0.0.27")], up("10.0.0.27") + reach(peer_ip := "10.0.0.20"))
    a.wait_console(f"^XR-REACHED {peer_ip}", 120)
    ok = xvif("trace", "--from", a.vif(), "--to", peer.vif()).stdout
    assert f"verdict: forwarded to {peer.vif()}" in ok, ok
    bad = xvif("trace", "--from", a.vif(), "--to", peer.vif(), "--src-mac", "00:16:3e:66:66:67", check=False).stdout
    assert "verdict: dropped: source MAC 00:16:3e:66:66:67 is not this vif's" in bad, bad


def test_doctor(peer):
    p = xvif("doctor", check=False, timeout=120)
    assert p.returncode == 0, f"doctor is not happy on the real host:\n{p.stdout}{p.stderr}"
