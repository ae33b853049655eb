"""xl vif specs and the values libxl copies into XenStore."""

from __future__ import annotations

import pytest

from xvif_ovs.errors import VifSpecError
from xvif_ovs.model.vifspec import BridgeSpec, parse_bridge, parse_mac, parse_vif_spec, parse_xl_vlan


@pytest.mark.parametrize(
    ("text", "want", "mode", "ovs_trunks"),
    [
        ("xenbr0", BridgeSpec("xenbr0"), "access", ()),
        ("xenbr0.10", BridgeSpec("xenbr0", 10), "access", ()),
        ("xenbr0:10:20", BridgeSpec("xenbr0", None, (10, 20)), "trunk", (10, 20)),
        ("xenbr0.10:20:30", BridgeSpec("xenbr0", 10, (20, 30)), "native-untagged", (10, 20, 30)),
    ],
)
def test_bridge_syntax(text, want, mode, ovs_trunks):
    b = parse_bridge(text)
    assert b == want and b.vlan_mode == mode and b.ovs_trunks == ovs_trunks and str(b) == text


@pytest.mark.parametrize(
    ("bad", "hint"),
    [
        ("xenbr0.0", "1-4094"),
        ("xenbr0.4095", "1-4094"),
        ("xenbr0:10:", "does not parse"),
        ("xenbr0:a", "does not parse"),
        ("xenbr0:10:10", "twice"),
        ("", "does not parse"),
        ("waytoolongbridgename0", "interface name"),
    ],
)
def test_bridge_errors_say_what_to_fix(bad, hint):
    with pytest.raises(VifSpecError, match=hint):
        parse_bridge(bad)


@pytest.mark.parametrize(
    ("bad", "hint"),
    [
        ("00:16:3e:00:00", "six colon-separated"),
        ("01:00:5e:00:00:01", "multicast"),
        ("ff:ff:ff:ff:ff:ff", "broadcast"),
        ("00:00:00:00:00:00", "all zeros"),
        ("00:16:3g:00:00:01", "six colon-separated"),
    ],
)
def test_bad_macs(bad, hint):
    with pytest.raises(VifSpecError, match=hint):
        parse_mac(bad)


def test_mac_normalised():
    assert parse_mac("00:16:3E:AA:bb:01") == "00:16:3e:aa:bb:01"


def test_xl_vlan_key():
    assert parse_xl_vlan("10") == (10, ())
    assert parse_xl_vlan("10p/20/30") == (10, (20, 30))
    assert parse_xl_vlan("10p/100+10x4") == (10, (100, 110, 120, 130))
    for bad in ("0", "10p/20p", "10/10", "abc", "4090+10x2"):
        with pytest.raises(VifSpecError):
            parse_xl_vlan(bad)


def test_full_spec():
    s = parse_vif_spec("mac=00:16:3e:01:02:03, bridge=xenbr1.10:20, ip=192.0.2.5 2001:db8::5, vifname=web0, mtu=9000")
    assert s.mac == "00:16:3e:01:02:03" and s.bridge == BridgeSpec("xenbr1", 10, (20,))
    assert [str(i.ip) for i in s.ips] == ["192.0.2.5", "2001:db8::5"]
    assert s.vifname == "web0" and s.mtu == 9000
    assert parse_vif_spec("").bridge == BridgeSpec("xenbr0")
    assert parse_vif_spec("vlan=10p/20").bridge == BridgeSpec("xenbr0", 10, (20,))


@pytest.mark.parametrize(
    ("bad", "hint"),
    [
        ("colour=blue", "unknown"),
        ("mac", "KEY=VALUE"),
        ("ip=300.1.1.1", "not an IPv4/IPv6"),
        ("mtu=12", "68-65535"),
        ("bridge=xenbr0.10,vlan=20", "not both"),
        ("mac=00:16:3e:00:00:01,mac=00:16:3e:00:00:02", "twice"),
        ("type=tap", "vif or ioemu"),
        ("trusted=yes", "0 or 1"),
    ],
)
def test_spec_errors(bad, hint):
    with pytest.raises(VifSpecError, match=hint):
        parse_vif_spec(bad)
