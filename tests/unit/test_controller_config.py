"""The controller's configuration and the join of XenStore, OVSDB and OpenFlow."""

from __future__ import annotations

from pathlib import Path

import pytest

from xvif_ovs.controller.config import ConfigError, load
from xvif_ovs.controller.hostmodel import OfPort, bridge_models
from xvif_ovs.controller.ovsdb_monitor import BridgeInfo, PortInfo, classify_port

DEPLOYED = Path(__file__).resolve().parents[2] / "deploy" / "controller.toml"


def test_the_shipped_example_loads():
    cfg = load(str(DEPLOYED))
    assert cfg.listen == "unix" and cfg.learn_idle_timeout == 300


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("[controler]\n", "unknown section"),
        ("[controller]\nlisten = 'udp:1'\n", "use unix, tcp:HOST:PORT"),
        ("[controller]\nlearn_idle_timeout = 0\n", "1-65535"),
        ("[controller]\nbogus = 1\n", "unknown key"),
        ("[bridges.xenbr1]\nreserved_for = 'web'\n", "a list"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_config_says_what_to_fix(tmp_path, text, hint):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=hint):
        load(str(p))


def test_flags_override_the_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[controller]\nlisten = 'tcp:127.0.0.1:6653'\nbridges = ['xenbr0']\n")
    cfg = load(str(p), listen="unix", bridges=["xenbr1"])
    assert cfg.listen == "unix" and cfg.bridges == ("xenbr1",)


def test_port_classification():
    assert classify_port("xenbr0", "xenbr0", "internal", {}) == ("local", None, None)
    assert classify_port("web0", "xenbr0", "", {"xvif-domid": "5", "xvif-devid": "1", "xvif-kind": "emu"}) == (
        "emu",
        5,
        1,
    )
    assert classify_port("vif7.0", "xenbr0", "", {}) == ("vif", 7, 0)  # added by vif-openvswitch
    assert classify_port("xvif7.1-emu", "xenbr0", "", {}) == ("emu", 7, 1)
    assert classify_port("eth1", "xenbr0", "", {}) == ("uplink", None, None)


def _bridge(*ports: PortInfo) -> dict:
    return {"xenbr0": BridgeInfo("xenbr0", ports, "secure", ("unix:x",), ("OpenFlow13",), True)}


def test_join_reports_what_gets_no_flows():
    ports = (
        PortInfo("peth0", 1, "uplink"),
        PortInfo("vif5.0", 10, "vif", 5, 0),
        PortInfo("vif6.0", 11, "vif", 6, 0),
        PortInfo("vif7.0", 12, "vif", 7, 0),
        PortInfo("vif8.0", 13, "vif", 8, 0),
    )
    of = {"xenbr0": {p.name: OfPort(p.ofport, True) for p in ports}}
    vifs = {
        (5, 0): {"mac": "00:16:3e:00:00:05", "bridge": "xenbr0"},
        (6, 0): {"mac": "01:00:5e:00:00:01", "bridge": "xenbr0"},  # multicast
        (8, 0): {"mac": "00:16:3e:00:00:05", "bridge": "xenbr0"},  # conflicts with 5.0
    }
    models, problems = bridge_models(_bridge(*ports), of, vifs, {5: "web"}, load(None))
    m = models["xenbr0"]
    assert m.uplinks == (1,) and [v.key for v in m.vifs] == ["5.0"]
    text = "\n".join(problems)
    assert "vif6.0 on xenbr0: mac" in text and "multicast" in text
    assert "vif7.0 on xenbr0 has no vif in XenStore" in text
    assert "MAC conflict on xenbr0: vif8.0 and vif5.0" in text


def test_a_vif_ovs_vswitchd_has_not_created_yet_gets_flows_for_its_requested_ofport():
    """Flows in place before the port exists: its first frame finds them."""
    ports = (
        PortInfo("peth0", 1, "uplink"),
        PortInfo("vif5.0", None, "vif", 5, 0, ofport_request=20),
        PortInfo("vif6.0", None, "vif", 6, 0, ofport_request=1),  # the uplink holds 1
        PortInfo("vif7.0", None, "vif", 7, 0),  # not our hook's: no request, wait for the port
    )
    of = {"xenbr0": {"peth0": OfPort(1, True)}}
    vifs = {(d, 0): {"mac": f"00:16:3e:00:00:0{d}", "bridge": "xenbr0"} for d in (5, 6, 7)}
    models, _ = bridge_models(_bridge(*ports), of, vifs, {}, load(None))
    assert [(v.key, v.vif_port, v.active_port) for v in models["xenbr0"].vifs] == [("5.0", 20, 20)]
    of["xenbr0"]["vif5.0"] = OfPort(21, True)  # ovs-vswitchd gave it another number after all
    models, _ = bridge_models(_bridge(*ports), of, vifs, {}, load(None))
    assert [(v.key, v.vif_port) for v in models["xenbr0"].vifs] == [("5.0", 21)]


def test_a_patched_join_equals_a_full_join_through_random_changes():
    """bridge_models redoes only the vifs whose keys changed when OVSDB and the ports did
    not; whatever the change, the result must be a full join's."""
    import random

    from xvif_ovs.controller import hostmodel

    rng = random.Random(5)
    ports = (PortInfo("peth0", 1, "uplink"), *(PortInfo(f"vif{d}.0", 10 + d, "vif", d, 0) for d in range(1, 30)))
    ovsdb = _bridge(*ports)
    of = {"xenbr0": {p.name: OfPort(p.ofport, True) for p in ports}}
    cfg = load(None)
    vifs = {(d, 0): {"mac": f"00:16:3e:00:00:{d:02x}", "bridge": "xenbr0", "ip": f"192.0.2.{d}"} for d in range(1, 30)}
    names = {d: f"dom{d}" for d in range(1, 30)}
    for step in range(400):
        d = rng.randrange(1, 31)
        change = rng.choice(["ip", "ip", "mac", "bridge", "bad", "gone", "name", "ports", "nothing"])
        keys = dict(vifs.get((d, 0)) or {"mac": f"00:16:3e:00:01:{d:02x}", "bridge": "xenbr0"})
        if change == "ip":
            keys["ip"] = f"198.51.100.{rng.randrange(1, 250)}"
        elif change == "mac":
            keys["mac"] = f"00:16:3e:00:00:{rng.randrange(1, 40):02x}"  # sometimes another vif's
        elif change == "bridge":
            keys["bridge"] = rng.choice(["xenbr0", "xenbr0.10", "xenbr1"])
        elif change == "bad":
            keys["ip"] = "not-an-address"
        elif change == "name":
            names[d] = f"renamed{step}"
        elif change == "ports":
            of = {"xenbr0": dict(of["xenbr0"])}
        if change == "gone":
            vifs.pop((d, 0), None)
        elif change not in ("name", "ports", "nothing"):
            vifs[(d, 0)] = keys
        got, got_problems = bridge_models(ovsdb, of, dict(vifs), dict(names), cfg)
        full = hostmodel._join("xenbr0", ovsdb["xenbr0"], of["xenbr0"], dict(vifs), dict(names), cfg)
        assert got["xenbr0"] == full.model, (step, change)
        assert got_problems == full.problems, (step, change)
