"""The controller's configuration and the join of XenStore, OVSDB and OpenFlow."""

from __future__ import annotations

import dataclasses
import ssl
import subprocess
from pathlib import Path

import pytest

from xvif_ovs.controller.config import ConfigError, load
from xvif_ovs.controller.hostmodel import OfPort, bridge_models
from xvif_ovs.controller.ovsdb_monitor import BridgeInfo, PortInfo

NAT = "[controller]\nbridges = ['xennat']\n[bridges.xennat]\nmode = 'nat'\n"
DEPLOYED = Path(__file__).resolve().parents[2] / "deploy" / "controller.toml"


def test_the_shipped_example_loads():
    cfg = load(str(DEPLOYED))
    assert cfg.listen == "unix" and cfg.learn_idle_timeout == 300


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("[controler]\n", "unknown section"),
        ("[controller]\nlisten = 'udp:1'\n", r"use unix, tcp:\[HOST:\]PORT or ssl:\[HOST:\]PORT"),
        ("[controller]\nlearn_idle_timeout = 0\n", "1-65535"),
        ("[controller]\nbogus = 1\n", "unknown key"),
        ("[controller]\nbridges = ['xenbr1']\n[bridges.xenbr1]\nreserved_for = 'web'\n", "a list"),
        ("not toml [", "not valid TOML"),
        ("[controller]\nbridges = ['xenbr1']\n[bridges.xenbr1]\nmode = 'route'\n", '"bridged" .*, "routed" or "nat"'),
        (NAT + "", 'needs address = "192.0.2.254"'),
        (NAT + "address = '192.0.2.254'\n", 'needs subnet = "10.0.0.0/24"'),
        (NAT + "address = 'dom0'\nsubnet = '10.0.0.0/24'\n", "dom0's IPv4 address on the LAN"),
        (NAT + "address = '10.0.0.9'\nsubnet = '10.0.0.0/24'\n", "inside subnet 10.0.0.0/24"),
        (NAT + "address = '192.0.2.254'\nsubnet = '10.0.0.0/31'\n", "too small"),
        (NAT + "address = '192.0.2.254'\nsubnet = '10.0.0.0/24'\ngateway = '10.0.1.1'\n", "not in subnet"),
        (NAT + "address = '192.0.2.254'\nsubnet = '10.0.0.0/24'\nzone = 0\n", "conntrack zone, 1-65535"),
        (
            NAT + "address = '192.0.2.254'\nsubnet = '10.0.0.0/24'\nforwards = ['8080 -> web']\n",
            "PROTO:PORT -> DOMAIN:PORT",
        ),
        (
            NAT + "address = '192.0.2.254'\nsubnet = '10.0.0.0/24'\nforwards = ['tcp:80 -> a:80', 'tcp:80 -> b:80']\n",
            "tcp:80 forwarded twice",
        ),
        ("[controller]\nbridges = ['xenbr1']\n[bridges.xenbr1]\nsubnet = '10.0.0.0/24'\n", 'only for mode = "nat"'),
        (NAT + "address = '192.0.2.254'\nsubnet = '10.0.0.0/24'\nports = '80-90'\n", "LOW-HIGH within 1024-65535"),
        (
            "[controller]\nbridges = ['a', 'b']\n"
            + "".join(
                f"[bridges.{n}]\nmode = 'nat'\naddress = '192.0.2.254'\nsubnet = '10.0.{i}.0/24'\n"
                for i, n in enumerate("ab")
            ),
            "zone = 30838 is \\[bridges.a\\]'s too",
        ),
        (
            "[controller]\nbridges = ['a', 'b']\n"
            + "".join(
                f"[bridges.{n}]\nmode = 'nat'\naddress = '192.0.2.254'\nsubnet = '10.0.0.0/{16 + i * 8}'\nzone = {i + 1}\n"
                for i, n in enumerate("ab")
            ),
            "overlaps",
        ),
        (
            NAT + "address = '192.0.2.254'\nsubnet = '10.0.0.0/24'\nforwards = ['tcp:62000 -> web:80']\n",
            "lie in ports",
        ),
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


# -- where the controller listens ------------------------------------------------------------


def _load(tmp_path, text: str, **overrides: object):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return load(str(p), **overrides)


@pytest.mark.parametrize(
    ("listen", "normal", "target"),
    [
        ("unix", "unix", None),
        ("tcp:6653", "tcp:127.0.0.1:6653", "tcp:127.0.0.1:6653"),  # no host: loopback only
        ("tcp::6653", "tcp:127.0.0.1:6653", "tcp:127.0.0.1:6653"),
        ("tcp:127.0.0.2:6653", "tcp:127.0.0.2:6653", "tcp:127.0.0.2:6653"),
        ("tcp:[::1]:6653", "tcp:[::1]:6653", "tcp:[::1]:6653"),
        ("ssl:6653", "ssl:127.0.0.1:6653", "ssl:127.0.0.1:6653"),
        ("ssl:0.0.0.0:6653", "ssl:0.0.0.0:6653", "ssl:127.0.0.1:6653"),  # TLS: no extra line needed
        ("ssl:[::]:6653", "ssl:[::]:6653", "ssl:[::1]:6653"),
        ("ssl:192.0.2.1:6653", "ssl:192.0.2.1:6653", "ssl:192.0.2.1:6653"),
    ],
)
def test_listen_without_a_host_is_loopback_and_ovs_is_told_where_to_connect(tmp_path, listen, normal, target):
    tls = "[ssl]\nprivate_key = 'k'\ncertificate = 'c'\nca_cert = 'ca'\n"
    cfg = _load(tmp_path, f"[controller]\nlisten = '{listen}'\n{tls}")
    assert cfg.listen == normal
    assert cfg.target() == (target or f"unix:{cfg.socket_path()}")
    assert cfg.remote_listen() == (normal not in ("unix",) and "127." not in normal and "::1" not in normal)


@pytest.mark.parametrize("listen", ["tcp:0.0.0.0:6653", "tcp:192.0.2.1:6653", "tcp:[::]:6653", "tcp:[2001:db8::1]:1"])
def test_plain_tcp_beyond_loopback_needs_an_explicit_line(tmp_path, listen):
    with pytest.raises(ConfigError, match=r"add allow_remote_listen = true to \[controller\] in .*c\.toml"):
        _load(tmp_path, f"[controller]\nlisten = '{listen}'\n")
    with pytest.raises(ConfigError, match="allow_remote_listen = true"):  # the flag is no way around it
        _load(tmp_path, "[controller]\nlisten = 'unix'\n", listen=listen)
    cfg = _load(tmp_path, f"[controller]\nlisten = '{listen}'\nallow_remote_listen = true\n")
    assert cfg.remote_listen() and cfg.allow_remote_listen


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("[controller]\nlisten = 'tcp:'\n", "the port is 1-65535"),
        ("[controller]\nlisten = 'tcp:70000'\n", "the port is 1-65535"),
        ("[controller]\nlisten = 'tcp:ctl.example:6653'\n", "is not an IP address"),
        ("[controller]\nlisten = 'tcp:::1:6653'\n", "IPv6 in"),
        ("[controller]\nlisten = 'ssl:[::1]6653'\n", "IPv6 in"),
        ("[controller]\nallow_remote_listen = 'yes'\n", "true or false"),
        ("[controller]\nlisten = 'ssl:6653'\n", r"needs an \[ssl\] section .* ovs-pki init"),
        ("[controller]\nlisten = 'ssl:6653'\n[ssl]\ncertificate = 'c'\n", "ca_cert, private_key missing"),
        ("[ssl]\nkey = 'k'\n", "unknown key"),
    ],
)
def test_bad_listen_or_ssl_says_what_to_fix(tmp_path, text, hint):
    with pytest.raises(ConfigError, match=hint):
        _load(tmp_path, text)


def _pem(d, name: str, ca: tuple[str, str] | None = None) -> tuple[str, str]:
    """A key and a certificate (self-signed, or signed by ``ca``) made with openssl."""
    key, cert = str(d / f"{name}-privkey.pem"), str(d / f"{name}-cert.pem")
    subprocess.run(
        ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}"]
        + ["-keyout", key, "-days", "2"]
        + (["-x509", "-out", cert] if ca is None else ["-out", cert + ".req"]),
        check=True,
        capture_output=True,
    )
    if ca is not None:
        subprocess.run(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                cert + ".req",
                "-CA",
                ca[1],
                "-CAkey",
                ca[0],
                "-days",
                "2",
                "-out",
                cert,
            ],
            check=True,
            capture_output=True,
        )
    return key, cert


def _tls_config(tmp_path, key: str, cert: str, ca: str):
    return _load(
        tmp_path,
        f"[controller]\nlisten = 'ssl:6653'\n[ssl]\nprivate_key = '{key}'\ncertificate = '{cert}'\nca_cert = '{ca}'\n",
    )


def test_tls_context_requires_a_switch_certificate_from_the_ca(tmp_path):
    ca_key, ca_cert = _pem(tmp_path, "switchca")
    key, cert = _pem(tmp_path, "ctl")
    cfg = _tls_config(tmp_path, key, cert, ca_cert)
    assert cfg.tls is not None
    ctx = cfg.tls.context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "switchca"),),)]


def test_a_handshake_without_the_cas_certificate_fails(tmp_path):
    """The context itself, over a socketpair: a client signed by the CA gets through, one
    without a certificate or with another CA's does not."""
    import socket
    import threading

    ca = _pem(tmp_path, "switchca")
    other = _pem(tmp_path, "otherca")
    server = _tls_config(tmp_path, *_pem(tmp_path, "ctl"), ca[1]).tls.context()

    def handshake(client_cert: tuple[str, str] | None) -> bool:
        a, b = socket.socketpair()
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
        if client_cert:
            client.load_cert_chain(client_cert[1], client_cert[0])
        result: list[bool] = []

        def serve() -> None:
            try:
                with server.wrap_socket(a, server_side=True) as s:
                    s.sendall(b"ok")
                    result.append(True)
            except (ssl.SSLError, OSError):
                result.append(False)

        t = threading.Thread(target=serve)
        t.start()
        try:
            with client.wrap_socket(b) as c:
                c.settimeout(5)
                c.recv(2)
        except (ssl.SSLError, OSError):
            pass
        t.join(5)
        return result == [True]

    assert handshake(_pem(tmp_path, "sc", ca))
    assert not handshake(None)
    assert not handshake(_pem(tmp_path, "rogue", other))


def test_tls_files_that_cannot_be_used_are_named_with_the_fix(tmp_path):
    ca_key, ca_cert = _pem(tmp_path, "switchca")
    key, cert = _pem(tmp_path, "ctl")
    other_key, _ = _pem(tmp_path, "other")
    missing = str(tmp_path / "nope.pem")
    cases = [
        ((missing, cert, ca_cert), "private_key = '.*nope.pem': cannot read it .*ovs-pki req\\+sign ctl controller"),
        ((key, missing, ca_cert), "certificate = '.*nope.pem': cannot read it .*ovs-pki req\\+sign ctl controller"),
        ((key, cert, missing), "ca_cert = '.*nope.pem': cannot read it .*ovs-pki init"),
        ((key, cert, str(tmp_path)), "ca_cert = .*: cannot read it"),  # a directory
        ((other_key, cert, ca_cert), "are not a PEM certificate and its own key"),
        ((key, cert, key), "ca_cert = .* is not a PEM CA certificate"),
    ]
    for files, hint in cases:
        cfg = _tls_config(tmp_path, *files)
        with pytest.raises(ConfigError, match=hint):
            cfg.tls.context()


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
    joiner = hostmodel.Joiner()
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
        got, got_problems = joiner.bridge_models(ovsdb, of, dict(vifs), dict(names), cfg)
        full, full_problems = hostmodel.bridge_models(ovsdb, of, dict(vifs), dict(names), cfg)  # from nothing
        assert got["xenbr0"] == full["xenbr0"], (step, change)
        assert got_problems == full_problems, (step, change)
        assert len(joiner._vifs) <= len(vifs)  # bounded by the vifs that exist, not by the changes


def test_a_routed_bridge_gets_dom0s_mac_and_says_which_guests_it_cannot_route(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[controller]\nbridges = ['xenbr0']\n[bridges.xenbr0]\nmode = 'routed'\n")
    cfg = load(str(p))
    assert (cfg.mode("xenbr0"), cfg.mode("xenbr9")) == ("routed", "bridged")
    ports = (
        PortInfo("xenbr0", 0xFFFFFFFE, "local"),
        PortInfo("peth0", 1, "uplink"),
        PortInfo("vif5.0", 10, "vif", 5, 0),
        PortInfo("vif6.0", 11, "vif", 6, 0),
        PortInfo("vif7.0", 12, "vif", 7, 0),
    )
    of = {"xenbr0": {p.name: OfPort(p.ofport, True) for p in ports}}
    vifs = {
        (5, 0): {"mac": "00:16:3e:00:00:05", "bridge": "xenbr0", "ip": "192.0.2.5"},
        (6, 0): {"mac": "00:16:3e:00:00:06", "bridge": "xenbr0"},  # no address
        (7, 0): {"mac": "00:16:3e:00:00:07", "bridge": "xenbr0.10", "ip": "192.0.2.7"},  # a VLAN
    }
    info = _bridge(*ports)
    info["xenbr0"] = dataclasses.replace(info["xenbr0"], local_mac="02:00:00:00:00:fe")
    models, problems = bridge_models(info, of, vifs, {}, cfg)
    assert (models["xenbr0"].mode, models["xenbr0"].router_mac) == ("routed", "02:00:00:00:00:fe")
    text = "\n".join(problems)
    assert "vif6.0 on routed bridge xenbr0 has no address in ip=" in text
    assert "vif7.0 on routed bridge xenbr0 asks for a VLAN" in text
    assert "vif5.0" not in text
    info["xenbr0"] = dataclasses.replace(info["xenbr0"], local_mac="")
    _, problems = bridge_models(info, of, vifs, {}, cfg)
    assert any("has not reported its LOCAL port's MAC" in p for p in problems)
    models, problems = bridge_models(_bridge(*ports), of, vifs, {}, load(None))  # bridged: none of it
    assert models["xenbr0"].mode == "bridged" and not any("routed" in p for p in problems)


def test_address_conflicts_on_routed_and_nat_bridges_give_the_later_vif_no_flows(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(
        "[controller]\nbridges = ['xenbr0']\n[bridges.xenbr0]\nmode = 'nat'\n"
        "address = '192.0.2.254'\nsubnet = '10.0.0.0/24'\n"
    )
    cfg = load(str(p))
    ports = (PortInfo("xenbr0", 0xFFFFFFFE, "local"), PortInfo("peth0", 1, "uplink")) + tuple(
        PortInfo(f"vif{d}.0", d, "vif", d, 0) for d in (5, 6, 7, 8, 9)
    )
    of = {"xenbr0": {p.name: OfPort(p.ofport, True) for p in ports}}
    vifs = {
        (5, 0): {"mac": "00:16:3e:00:00:05", "ip": "10.0.0.5"},
        (6, 0): {"mac": "00:16:3e:00:00:06", "ip": "10.0.0.5"},  # the same as vif5.0
        (7, 0): {"mac": "00:16:3e:00:00:07", "ip": "10.0.0.1"},  # the gateway: dom0's
        (8, 0): {"mac": "00:16:3e:00:00:08", "ip": "10.0.0.0/25"},  # overlaps vif5.0
        (9, 0): {"mac": "00:16:3e:00:00:09", "ip": "0.0.0.0/0"},  # all of it
    }
    info = _bridge(*ports)
    info["xenbr0"] = dataclasses.replace(info["xenbr0"], local_mac="02:00:00:00:00:fe")
    models, problems = bridge_models(info, of, vifs, {}, cfg)
    assert [v.key for v in models["xenbr0"].vifs] == ["5.0"]
    assert set(models["xenbr0"].unmanaged) >= {6, 7, 8, 9}  # dropped and counted, like any port with no flows
    text = "\n".join(problems)
    assert "vif6.0 claims 10.0.0.5/32, which vif5.0 has" in text
    assert "vif7.0 claims 10.0.0.1/32, which dom0 has" in text
    assert "vif8.0 claims 10.0.0.0/25, which dom0 has" in text  # (the gateway is in it, before vif5.0)
    assert "vif9.0 on nat bridge xenbr0 claims 0.0.0.0/0" in text
