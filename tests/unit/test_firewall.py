"""Firewall rules: the files (every mistake refused with its FILE:LINE), which rules a
vif gets and in which order, and the flows, pushed through the simulator's conntrack,
deciding what the Python reading of the rules decides. The lab test
(tests/lab/test_firewall_lab.py) shows real OVS conntrack and real TCP agree."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from pathlib import Path

import pytest
from ovsdecode import assert_ovs_accepts

from xvif_ovs.compat import quiet_eventlet
from xvif_ovs.controller import ofmsg, wire
from xvif_ovs.firewall.evaluate import Connection, decide
from xvif_ovs.firewall.rules import Rule, RuleError, load_dir, load_files, port_masks
from xvif_ovs.firewall.select import rules_for
from xvif_ovs.model.host import BridgeModel, VifFirewall, VifModel
from xvif_ovs.model.vifspec import parse_ips, vif_vlans
from xvif_ovs.pipeline.build import build
from xvif_ovs.pipeline.flow import OFPP_CONTROLLER
from xvif_ovs.pipeline.sim import Switch

quiet_eventlet()
from os_ken.ofproto import ofproto_parser, ofproto_protocol, ofproto_v1_3  # noqa: E402

UPLINK, LAN_MAC, W_MAC, W_IP = 1, "00:16:3e:aa:00:01", "00:16:3e:00:00:05", "192.0.2.5"
GOOD = """
[address_sets]
admins = ["192.0.2.0/24", "2001:db8:1::/48"]

[policies]
xenbr0 = "closed"

[[rule]]
guest = "web"
direction = "in"
action = "allow"
protocol = "tcp"
ports = [22, "8000-8080"]
remote = ["admins"]
comment = "SSH and the app from the admins"
"""


def files(tmp_path: Path, **texts: str) -> list[Path]:
    out = []
    for name, text in texts.items():
        p = tmp_path / f"{name}.toml"
        p.write_text(text)
        out.append(p)
    return out


# -- the files -----------------------------------------------------------------------------


def test_a_good_file_is_read_as_written(tmp_path):
    rs = load_files(files(tmp_path, a=GOOD))
    (r,) = rs.rules
    assert (r.scope, r.target, r.direction, r.action, r.protocol) == ("guest", "web", "in", "allow", "tcp")
    assert r.ports == ((22, 22), (8000, 8080))
    assert [str(n) for n in r.remotes] == ["192.0.2.0/24", "2001:db8:1::/48"]
    assert r.where == f"{tmp_path}/a.toml:8" and rs.policies == {"xenbr0": "closed"}


@pytest.mark.parametrize(
    ("change", "line", "says"),
    [
        (('remote = ["admins"]', 'remote = "192.0.2.1/24"'), 14, "host bits set: did you mean 192.0.2.0/24"),
        (('remote = ["admins"]', 'remote = "nobody"'), 14, "no address set named 'nobody'"),
        (('remote = ["admins"]', 'remote = "300.1.1.1"'), 14, "not an IPv4 or IPv6 address"),
        (('ports = [22, "8000-8080"]', "ports = 70000"), 13, "out of range: 1-65535"),
        (('ports = [22, "8000-8080"]', 'ports = "90-80"'), 13, "backwards"),
        (('comment = "SSH', 'colour = "red"\ncomment = "SSH'), 15, "unknown key 'colour'"),
        (('direction = "in"', 'direction = "inbound"'), 10, '"in" (to the guest) or "out"'),
        (('action = "allow"', 'action = "permit"'), 11, '"allow", "deny" (drop silently) or "reject"'),
        (('protocol = "tcp"', 'protocol = "tcpp"'), 12, "tcp, udp, icmp"),
        (('protocol = "tcp"', 'protocol = "0x0806"'), 12, "ARP always passes"),
        (('guest = "web"', 'guest = "web"\nnetwork = "xenbr0"'), 8, "exactly one of"),
        (('guest = "web"', 'network = "xenbr0.5000"'), 9, "VLAN 1-4094"),
        (('xenbr0 = "closed"', 'xenbr0 = "shut"'), 6, '"open" (the default) or "closed"'),
        (("[[rule]]", "[[rule]\n"), 8, "not valid TOML"),
    ],
)
def test_each_mistake_is_refused_with_its_line_and_what_to_write(tmp_path, change, line, says):
    (p,) = files(tmp_path, a=GOOD.replace(*change))
    with pytest.raises(RuleError) as e:
        load_files([p])
    assert str(e.value).startswith(f"{p}:{line}: "), str(e.value)
    assert says in str(e.value)


def test_an_out_rule_for_an_ethertype_and_icmp_of_the_other_family_are_refused(tmp_path):
    for text, says in (
        ('[[rule]]\nall = true\ndirection = "out"\naction = "deny"\nprotocol = "0x88cc"\n', "never match"),
        ('[[rule]]\nall = true\ndirection = "in"\naction = "deny"\nprotocol = "icmp"\nremote = "::/0"\n', "IPv4"),
        ('[[rule]]\nall = true\ndirection = "in"\naction = "deny"\nprotocol = "udp"\ntype = 3\n', "icmp"),
    ):
        (p,) = files(tmp_path, b=text)
        with pytest.raises(RuleError, match=says):
            load_files([p])


def test_names_across_files_must_agree(tmp_path):
    with pytest.raises(RuleError, match="defined in .*a.toml"):
        load_files(files(tmp_path, a=GOOD, b='[address_sets]\nadmins = ["10.0.0.0/8"]\n'))
    with pytest.raises(RuleError, match="'open' here but 'closed'"):
        load_files(files(tmp_path, a=GOOD, c='[policies]\nxenbr0 = "open"\n'))


def test_a_missing_directory_is_no_rules_and_hidden_or_other_files_are_not_read(tmp_path):
    assert load_dir(tmp_path / "nothing").rules == ()
    files(tmp_path, a=GOOD)
    (tmp_path / ".b.toml").write_text("not toml at all [")
    (tmp_path / "notes.txt").write_text("not toml either [")
    assert len(load_dir(tmp_path).rules) == 1


@pytest.mark.parametrize("lo,hi", [(1, 65535), (22, 22), (8000, 8080), (1024, 2047), (3, 1000), (65535, 65535)])
def test_port_ranges_become_masks_that_cover_exactly_the_range(lo, hi):
    covered = {p for v, m in port_masks(lo, hi) for p in range(65536) if p & m == v}
    assert covered == set(range(lo, hi + 1))


# -- which rules, in which order ---------------------------------------------------------------


def test_every_guest_then_the_network_then_the_guest_in_file_order(tmp_path):
    text = "".join(
        f'[[rule]]\n{target}\ndirection = "in"\naction = "allow"\nprotocol = "tcp"\nports = {port}\n'
        for target, port in (
            ('guest = "web"', 1),
            ("all = true", 2),
            ('network = "xenbr0.10"', 3),
            ('network = "xenbr0"', 4),
            ('vif = "web.1"', 5),
            ('guest = "6c0f6a3e-2f64-4b8b-9f61-0c2f2b2b2b2b"', 6),
            ('guest = "db"', 7),
            ('network = "xenbr1"', 8),
        )
    )
    rs = load_files(files(tmp_path, a=text, b='[policies]\nxenbr0 = "closed"\n"xenbr0.10" = "open"\n'))
    uuid = "6c0f6a3e-2f64-4b8b-9f61-0c2f2b2b2b2b"
    rules, closed = rules_for(rs, "web--incoming", uuid, 12, 1, "xenbr0", (0, 10))
    assert [r.ports[0][0] for r in rules] == [2, 3, 4, 1, 5, 6]
    assert closed == {0}
    rules, closed = rules_for(rs, "web", "", 12, 0, "xenbr0", (10,))
    assert [r.ports[0][0] for r in rules] == [2, 3, 4, 1] and closed == set()
    rules, _ = rules_for(rs, "other", "", 12, 1, "xenbr2", (0,))
    assert [r.ports[0][0] for r in rules] == [2]


def test_the_first_matching_rule_decides_and_then_the_defaults():
    deny = Rule("all", "", "in", "deny", "tcp", ports=((22, 22),))
    allow = Rule("guest", "web", "in", "allow", "tcp", remotes=(ipaddress.ip_network("192.0.2.0/24"),))
    c = Connection("in", 6, ipaddress.ip_address("192.0.2.9"), 22)
    assert decide((deny, allow), True, c) == (False, deny)
    assert decide((allow, deny), True, c) == (True, allow)
    other = Connection("in", 6, ipaddress.ip_address("198.51.100.9"), 80)
    assert decide((deny, allow), True, other) == (False, None)
    assert decide((deny, allow), False, other) == (True, None)
    assert decide((deny,), True, dataclasses.replace(other, direction="out")) == (True, None)


# -- the flows ------------------------------------------------------------------------------------


def guest(rules: tuple[Rule, ...], closed: bool, zone: int = 7) -> VifModel:
    fw = VifFirewall(zone, rules, frozenset({0}) if closed else frozenset())
    return VifModel(5, 0, W_MAC, vif_vlans("xenbr0", None), parse_ips(W_IP), vif_port=5, name="web", firewall=fw)


def switch(rules: tuple[Rule, ...], closed: bool) -> Switch:
    return Switch(build(BridgeModel("xenbr0", (UPLINK,), vifs=(guest(rules, closed),))))


def packet(c: Connection, reply: bool = False, sport: int = 40000) -> tuple[int, dict]:
    """The opening packet of ``c`` (or its reply), and the port it comes in on."""
    remote = str(c.remote)
    from_guest = (c.direction == "out") != reply
    src, dst = (W_IP, remote) if from_guest else (remote, W_IP)
    f = {
        "dl_src": W_MAC if from_guest else LAN_MAC,
        "dl_dst": LAN_MAC if from_guest else W_MAC,
        "dl_type": 0x0800,
        "nw_proto": c.proto,
        "nw_src": src,
        "nw_dst": dst,
    }
    if c.proto in (6, 17):
        ports = (sport, c.port) if not reply else (c.port, sport)
        f.update(tp_src=ports[0], tp_dst=ports[1])
        if c.proto == 6:
            f["tcp_flags"] = 0x012 if reply else 0x002
    if c.proto == 1:
        f.update(icmp_type=0 if reply else c.icmp_type, icmp_code=0)
    return (5 if from_guest else UPLINK), f


def delivered(sw: Switch, c: Connection, reply: bool = False) -> bool:
    port, f = packet(c, reply)
    t = sw.send(port, f)
    return (UPLINK if port == 5 else 5) in t.ports


REMOTES = ["192.0.2.0/24", "192.0.2.7/32", "198.51.100.0/24", "10.0.0.0/8"]


def random_rule(rng: random.Random) -> Rule:
    proto = rng.choice(["tcp", "udp", "icmp", "any"])
    ports: tuple = ()
    if proto in ("tcp", "udp") and rng.random() < 0.8:
        lo = rng.choice([22, 53, 80, 1000, 8000])
        ports = ((lo, lo + rng.choice([0, 0, 10, 1000])),)
    remotes = tuple(ipaddress.ip_network(n) for n in rng.sample(REMOTES, rng.choice([0, 1, 2])))
    icmp = rng.choice([None, 8, 13]) if proto == "icmp" else None
    return Rule(
        rng.choice(["all", "guest"]),
        "" if rng.random() < 0.5 else "web",
        rng.choice(["in", "out"]),
        rng.choice(["allow", "deny", "reject"]),
        proto,
        ports=ports,
        remotes=remotes,
        icmp_type=icmp,
    )


def random_connection(rng: random.Random) -> Connection:
    proto = rng.choice([6, 17, 1])
    remote = ipaddress.ip_address(rng.choice(["192.0.2.7", "192.0.2.9", "198.51.100.3", "10.1.2.3", "203.0.113.1"]))
    port = rng.choice([22, 25, 53, 80, 1005, 8005, 9000]) if proto != 1 else None
    return Connection(rng.choice(["in", "out"]), proto, remote, port, 8 if proto == 1 else None)


@pytest.mark.parametrize("seed", range(40))
def test_the_flows_decide_what_the_rules_say_and_let_the_replies_of_what_they_allow_back(seed):
    rng = random.Random(seed)
    rules = tuple(random_rule(rng) for _ in range(rng.randint(0, 6)))
    closed = rng.random() < 0.6
    for _ in range(12):
        c = random_connection(rng)
        sw = switch(rules, closed)  # a fresh conntrack for each connection
        allowed, rule = decide(rules, closed, c)
        port, f = packet(c)
        ports = sw.send(port, f).ports
        assert ((UPLINK if port == 5 else 5) in ports) == allowed, (rules, closed, c)
        assert (OFPP_CONTROLLER in ports) == (rule is not None and rule.action == "reject"), (rules, closed, c)
        if allowed:
            assert delivered(sw, c, reply=True), ("reply", rules, closed, c)


def test_a_reload_that_no_longer_allows_a_connection_drops_its_next_packets_both_ways():
    ssh = Rule("guest", "web", "in", "allow", "tcp", ports=((22, 22),))
    web = Rule("guest", "web", "in", "allow", "tcp", ports=((80, 80),))
    before = switch((ssh, web), True)
    c22 = Connection("in", 6, ipaddress.ip_address("192.0.2.9"), 22)
    c80 = dataclasses.replace(c22, port=80)
    for c in (c22, c80):
        assert delivered(before, c) and delivered(before, c, reply=True)
    after = switch((web,), True)
    after.conntrack = before.conntrack  # the connections live on in the datapath
    assert not delivered(after, c22) and not delivered(after, c22, reply=True)
    assert delivered(after, c80) and delivered(after, c80, reply=True)


def test_ovs_reads_every_firewall_flow_and_the_encoder_round_trips_them(tmp_path):
    rules = tuple(random_rule(random.Random(i)) for i in range(30))
    rules += (
        Rule("network", "xenbr0", "in", "deny", "ether", ethertype=0x88CC),
        Rule("all", "", "in", "allow", "icmpv6", icmp_type=128, icmp_code=0),
        Rule("network", "xenbr0.0", "out", "deny", "udp", ports=((1, 65535),), remotes=(ipaddress.ip_network("::/0"),)),
    )
    flows = build(BridgeModel("xenbr0", (UPLINK,), vifs=(guest(rules, True),))).flows
    assert_ovs_accepts(flows, tmp_path)
    dp = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION)
    for f in flows:
        buf = wire.flow_mod(f, "add", 7)
        version, msg_type, length, xid = ofproto_parser.header(buf)
        msg = ofproto_parser.msg(dp, version, msg_type, length, xid, buf)
        back = ofmsg.flow_from_stats(ofproto_v1_3, msg)
        assert back == f, f"{f.render()}\n{back.render()}"


def test_a_closed_network_still_lets_arp_neighbour_discovery_and_dhcp_answers_in():
    sw = switch((), True)
    lan = {"dl_src": LAN_MAC, "dl_dst": W_MAC}
    passes = [
        {"dl_type": 0x0806, "arp_op": 2, "arp_spa": "192.0.2.1", "arp_tpa": W_IP},
        {"dl_type": 0x0800, "nw_proto": 17, "nw_src": "192.0.2.1", "nw_dst": W_IP, "tp_src": 67, "tp_dst": 68},
        {"dl_type": 0x86DD, "nw_proto": 17, "ipv6_src": "fe80::1", "ipv6_dst": "fe80::5", "tp_src": 547, "tp_dst": 546},
    ] + [
        {"dl_type": 0x86DD, "nw_proto": 58, "ipv6_src": "fe80::1", "ipv6_dst": "fe80::5", "icmpv6_type": t, "nw_ttl": h}
        for t, h in ((134, 255), (135, 255), (136, 255), (130, 1))
    ]
    for f in passes:
        assert 5 in sw.send(UPLINK, lan | f).ports, f
    stopped = [
        {"dl_type": 0x0800, "nw_proto": 17, "nw_src": "192.0.2.1", "nw_dst": W_IP, "tp_src": 1234, "tp_dst": 68},
        # Neighbour discovery and MLD that crossed a router (from off the link): not let in.
        {
            "dl_type": 0x86DD,
            "nw_proto": 58,
            "ipv6_src": "2001:db8:9::1",
            "ipv6_dst": "2001:db8::5",
            "icmpv6_type": 134,
            "nw_ttl": 63,
        },
        {
            "dl_type": 0x86DD,
            "nw_proto": 58,
            "ipv6_src": "2001:db8:9::1",
            "ipv6_dst": "ff02::1",
            "icmpv6_type": 130,
            "nw_ttl": 1,
        },
        {"dl_type": 0x86DD, "nw_proto": 58, "ipv6_src": "2001:db8::1", "ipv6_dst": "2001:db8::5", "icmpv6_type": 128},
        {"dl_type": 0x88CC},
    ]
    for f in stopped:
        assert 5 not in sw.send(UPLINK, lan | f).ports, f


def test_a_guest_without_rules_on_an_open_network_keeps_the_open_pipeline_exactly():
    plain = dataclasses.replace(guest((), False), firewall=None)
    open_flows = build(BridgeModel("xenbr0", (UPLINK,), vifs=(plain,))).flows
    assert not any(f.table >= 10 for f in open_flows)
    fw_flows = build(BridgeModel("xenbr0", (UPLINK,), vifs=(guest((), False),))).flows
    assert {f.table for f in fw_flows} >= {10, 11, 12, 13}


def test_a_guest_whose_firewall_cannot_be_built_gets_no_ip_at_all():
    fw = VifFirewall(0, (), frozenset({0}), blocked=True)
    v = dataclasses.replace(guest((), False), firewall=fw)
    sw = Switch(build(BridgeModel("xenbr0", (UPLINK,), vifs=(v,))))
    c = Connection("out", 17, ipaddress.ip_address("192.0.2.9"), 53)
    assert not delivered(sw, c) and not delivered(sw, dataclasses.replace(c, direction="in"))


# -- the controller's state -------------------------------------------------------------------


def test_zones_are_the_lowest_free_kept_from_xenstore_and_never_a_nat_zone(tmp_path, monkeypatch):
    from xvif_ovs.controller import fwstate

    flushed = []
    monkeypatch.setattr(fwstate.conntrack, "flush_zone", flushed.append)
    rs = load_files(files(tmp_path, a='[policies]\nxenbr0 = "closed"\n'))
    fw = fwstate.Firewall(lambda: rs, {2})
    vifs = {(5, 0): {fwstate.ZONE_KEY: "7"}, (6, 0): {fwstate.ZONE_KEY: "7"}, (8, 0): {}}
    models = {
        "xenbr0": BridgeModel(
            "xenbr0",
            vifs=tuple(
                VifModel(d, 0, f"00:16:3e:00:00:0{d}", vif_vlans("xenbr0", None), vif_port=d, name=f"g{d}")
                for d in (5, 6, 8)
            ),
        )
    }
    out = fw.attach(models, vifs, {})
    zones = {v.domid: v.firewall.zone for v in out["xenbr0"].vifs}
    # 5 keeps its zone from XenStore (a restart); 6 claims the same one and gets a new one,
    # as does 8, which had none: the lowest free, never the NAT bridge's (2); both emptied.
    assert zones == {5: 7, 6: 1, 8: 3} and sorted(flushed) == [1, 3]
    assert fw.to_write == {(6, 0): 1, (8, 0): 3}
    again = fw.attach(models, vifs, {})
    assert all(
        a is b for a, b in zip(again["xenbr0"].vifs, out["xenbr0"].vifs, strict=True)
    )  # unchanged: the same objects
    del vifs[(5, 0)]
    fw.attach({"xenbr0": dataclasses.replace(models["xenbr0"], vifs=models["xenbr0"].vifs[1:])}, vifs, {})
    assert 7 not in fw.zones.values()  # gone with its vif


def test_the_rules_in_force_stay_when_a_reload_finds_an_error(tmp_path):
    from xvif_ovs.controller.fwstate import Rules

    (tmp_path / "a.toml").write_text(GOOD)
    r = Rules(str(tmp_path))
    first = r.load_initial()
    assert not r.changed()
    (tmp_path / "a.toml").write_text(GOOD.replace("ports = [22", "ports = [99999"))
    assert not r.changed()  # changed, but maybe still being written: read at the next look
    assert r.changed() and not r.reload() and r.current is first
    (tmp_path / "a.toml").write_text(GOOD.replace("ports = [22", "ports = [2222"))
    assert r.reload() and r.current.rules[0].ports[0] == (2222, 2222)
    (tmp_path / "a.toml").unlink()
    tmp_path.rmdir()  # the directory gone (a mount that failed, a typo in a move): not "no rules"
    kept = r.current
    assert not r.reload() and r.current is kept


def test_conntrack_entries_are_read_as_ovs_prints_them():
    from xvif_ovs.controller.conntrack import parse

    dump = (
        "tcp,orig=(src=192.0.2.1,dst=192.0.2.31,sport=40022,dport=22),reply=(src=192.0.2.31,dst=192.0.2.1,"
        "sport=22,dport=40022),zone=1,mark=2,protoinfo=(state=ESTABLISHED)\n"
        "icmpv6,orig=(src=2001:db8::1,dst=2001:db8::32,id=31411,type=128,code=0),reply=(src=2001:db8::32,"
        "dst=2001:db8::1,id=31411,type=129,code=0),zone=2,mark=1\n"
        "udp,orig=(src=10.0.0.5,dst=10.0.0.1,sport=68,dport=67),reply=(src=10.0.0.1,dst=10.0.0.5,sport=67,dport=68),zone=3\n"
    )
    tcp, icmp, udp = parse(dump)
    assert (tcp.proto, tcp.src, tcp.l4, tcp.mark, tcp.state) == (
        6,
        "192.0.2.1",
        {"sport": 40022, "dport": 22},
        2,
        "ESTABLISHED",
    )
    assert tcp.tuple_spec() == "ct_nw_src=192.0.2.1,ct_nw_dst=192.0.2.31,ct_nw_proto=6,ct_tp_src=40022,ct_tp_dst=22"
    assert (icmp.proto, icmp.l4["type"], icmp.mark) == (58, 128, 1)
    assert icmp.tuple_spec().startswith("ct_ipv6_src=2001:db8::1,ct_ipv6_dst=2001:db8::32,ct_nw_proto=58")
    assert udp.mark == 0


def test_rules_anyone_but_root_could_change_are_refused(tmp_path):
    (p,) = files(tmp_path, a=GOOD)
    p.chmod(0o666)
    with pytest.raises(RuleError, match="writable by group or others; `chmod go-w"):
        load_files([p])
    p.chmod(0o644)
    tmp_path.chmod(0o777)
    try:
        with pytest.raises(RuleError, match="writable by group or others"):
            load_dir(tmp_path)
    finally:
        tmp_path.chmod(0o755)
    assert len(load_dir(tmp_path).rules) == 1


def test_the_shipped_example_is_valid():
    example = Path(__file__).resolve().parents[2] / "deploy" / "rules.example.toml"
    rs = load_files([example])
    assert len(rs.rules) == 5 and rs.policies == {"xenbr0": "closed"}


# -- reject -----------------------------------------------------------------------------------


def frame(l3, l4, src_mac: str = LAN_MAC, dst_mac: str = W_MAC, payload: bytes = b"") -> bytes:
    from os_ken.lib.packet import ethernet, packet

    p = packet.Packet()
    p.add_protocol(ethernet.ethernet(dst=dst_mac, src=src_mac, ethertype=0x0800 if l3.version == 4 else 0x86DD))
    p.add_protocol(l3)
    p.add_protocol(l4)
    if payload:
        p.add_protocol(payload)
    p.serialize()
    return bytes(p.data)


def parsed(data: bytes):
    from os_ken.lib.packet import packet

    return packet.Packet(data)


def test_a_rejected_tcp_segment_gets_a_reset_that_the_sender_accepts():
    from os_ken.lib.packet import ethernet, ipv4, ipv6, tcp

    from xvif_ovs.controller.reject import answer

    syn = frame(
        ipv4.ipv4(src="192.0.2.1", dst=W_IP, proto=6), tcp.tcp(src_port=40000, dst_port=23, seq=1000, bits=tcp.TCP_SYN)
    )
    r = parsed(answer(syn))
    e, ip, t = r.get_protocol(ethernet.ethernet), r.get_protocol(ipv4.ipv4), r.get_protocol(tcp.tcp)
    assert (e.src, e.dst, ip.src, ip.dst) == (W_MAC, LAN_MAC, W_IP, "192.0.2.1")
    assert (t.src_port, t.dst_port, t.bits, t.ack) == (23, 40000, tcp.TCP_RST | tcp.TCP_ACK, 1001)
    data = frame(
        ipv6.ipv6(src="2001:db8::1", dst="2001:db8::5", nxt=6),
        tcp.tcp(src_port=40000, dst_port=23, seq=5, ack=777, bits=tcp.TCP_ACK | tcp.TCP_PSH),
        payload=b"hello",
    )
    t = parsed(answer(data)).get_protocol(tcp.tcp)
    assert (t.bits, t.seq) == (tcp.TCP_RST, 777)  # it acknowledged 777: the reset carries that sequence number
    rst = frame(ipv4.ipv4(src="192.0.2.1", dst=W_IP, proto=6), tcp.tcp(src_port=1, dst_port=23, bits=tcp.TCP_RST))
    assert answer(rst) is None


def test_other_rejected_packets_get_icmp_unreachable_quoting_them_but_errors_and_broadcasts_get_nothing():
    from os_ken.lib.packet import icmp, icmpv6, ipv4, ipv6, udp

    from xvif_ovs.controller.reject import answer

    data = frame(ipv4.ipv4(src="192.0.2.1", dst=W_IP, proto=17), udp.udp(src_port=5000, dst_port=53), payload=b"q" * 40)
    r = parsed(answer(data))
    i = r.get_protocol(icmp.icmp)
    assert (i.type, i.code) == (3, 3) and i.data.data == data[14 : 14 + 20 + 8]
    data6 = frame(ipv6.ipv6(src="2001:db8::1", dst="2001:db8::5", nxt=17), udp.udp(src_port=5000, dst_port=53))
    i6 = parsed(answer(data6)).get_protocol(icmpv6.icmpv6)
    assert (i6.type_, i6.code) == (1, 4) and i6.data[4:] == data6[14:]
    ping = frame(ipv4.ipv4(src="192.0.2.1", dst=W_IP, proto=1), icmp.icmp(type_=8, data=icmp.echo(id_=1, seq=1)))
    assert parsed(answer(ping)).get_protocol(icmp.icmp).code == 13  # administratively prohibited
    err = frame(ipv4.ipv4(src="192.0.2.1", dst=W_IP, proto=1), icmp.icmp(type_=3, code=1, data=icmp.dest_unreach()))
    assert answer(err) is None
    bcast = frame(ipv4.ipv4(src="192.0.2.1", dst="255.255.255.255", proto=17), udp.udp(), dst_mac="ff:ff:ff:ff:ff:ff")
    assert answer(bcast) is None


def test_rules_check_reads_a_file_with_the_directory_it_is_meant_for(tmp_path):
    from xvif_ovs.cli.rules import check

    d = tmp_path / "rules.d"
    d.mkdir()
    (d / "10-sets.toml").write_text('[address_sets]\nadmins = ["192.0.2.0/24"]\n[policies]\nxenbr0 = "closed"\n')
    (d / "20-web.toml").write_text("the version in force is broken [")  # what the new one replaces
    new = tmp_path / "20-web.toml"  # replaces its namesake in the directory
    new.write_text('[[rule]]\nguest = "web"\ndirection = "in"\naction = "allow"\nremote = "admins"\n')
    text, code = check(str(d), str(new))
    assert code == 0 and text.startswith("OK: 1 rule(s) in 2 file(s); closed: xenbr0"), text
    new.write_text('[[rule]]\nguest = "web"\ndirection = "in"\naction = "allow"\nremote = "nobody"\n')
    text, code = check(str(d), str(new))
    assert code == 1 and text.startswith(f"{new}:5: no address set named 'nobody'"), text
    assert check(str(d), str(tmp_path / "missing.toml"))[1] == 1


def test_a_migrating_nics_new_vif_shares_the_old_ones_zone_so_its_connections_carry_on(tmp_path, monkeypatch):
    from xvif_ovs.controller import fwstate

    flushed = []
    monkeypatch.setattr(fwstate.conntrack, "flush_zone", flushed.append)
    rs = load_files(files(tmp_path, a='[policies]\nxenbr0 = "closed"\n'))

    def nic(domid: int, name: str) -> VifModel:
        return VifModel(domid, 0, "00:16:3e:00:00:05", vif_vlans("xenbr0", None), vif_port=domid, name=name)

    def zones(*vs: VifModel, keys: dict | None = None) -> dict[int, int]:
        out = fw.attach({"xenbr0": BridgeModel("xenbr0", vifs=vs)}, keys or {(v.domid, 0): {} for v in vs}, {})
        return {v.domid: v.firewall.zone for v in out["xenbr0"].vifs}

    fw = fwstate.Firewall(lambda: rs, set())
    assert zones(nic(5, "web")) == {5: 1}
    assert zones(nic(5, "web"), nic(9, "web--incoming")) == {5: 1, 9: 1}  # xl migrate's new domain
    assert zones(nic(9, "web")) == {9: 1} and flushed == [1]  # the old one gone, renamed: kept, not emptied
    assert zones(nic(9, "web"), nic(12, "other")) == {9: 1, 12: 2}  # not a twin: a zone of its own
    # After a controller restart, XenStore's record is adopted for both twins alike.
    fw = fwstate.Firewall(lambda: rs, set())
    keys = {(5, 0): {fwstate.ZONE_KEY: "4"}, (9, 0): {fwstate.ZONE_KEY: "4"}}
    assert zones(nic(5, "web--migratedaway"), nic(9, "web"), keys=keys) == {5: 4, 9: 4}


def test_a_guest_sends_neighbour_discovery_and_mld_past_its_rules_only_on_the_link():
    deny_all = (Rule("all", "", "out", "deny", "any"),)
    sw = switch(deny_all, False)
    me = {
        "dl_src": W_MAC,
        "dl_dst": "33:33:00:00:00:02",
        "dl_type": 0x86DD,
        "nw_proto": 58,
        "ipv6_src": "fe80::216:3eff:fe00:5",
    }
    rs = me | {"ipv6_dst": "ff02::2", "icmpv6_type": 133, "nw_ttl": 255}
    assert UPLINK in sw.send(5, rs).ports
    assert UPLINK not in sw.send(5, rs | {"nw_ttl": 64}).ports
    assert UPLINK not in sw.send(5, rs | {"dl_dst": LAN_MAC, "ipv6_dst": "2001:db8:9::1"}).ports  # off the link
    report = me | {"ipv6_dst": "ff02::16", "icmpv6_type": 143, "nw_ttl": 1}
    assert UPLINK in sw.send(5, report).ports


def test_a_rule_for_neighbour_discovery_is_refused_as_one_that_never_applies(tmp_path):
    (p,) = files(
        tmp_path, a='[[rule]]\nall = true\ndirection = "in"\naction = "deny"\nprotocol = "icmpv6"\ntype = 134\n'
    )
    with pytest.raises(RuleError, match="a.toml:6: ICMPv6 type 134 is neighbour discovery or MLD"):
        load_files([p])


def test_a_vif_whose_domain_name_cannot_be_read_is_closed_while_rules_name_guests(tmp_path, monkeypatch):
    from xvif_ovs.controller import fwstate

    monkeypatch.setattr(fwstate.conntrack, "flush_zone", lambda z: None)
    rs = load_files(files(tmp_path, a=GOOD))
    fw = fwstate.Firewall(lambda: rs, set())
    v = VifModel(5, 0, W_MAC, vif_vlans("xenbr1", None), vif_port=5, name="")
    out = fw.attach({"xenbr1": BridgeModel("xenbr1", vifs=(v,))}, {(5, 0): {}}, {})
    assert out["xenbr1"].vifs[0].firewall.blocked and "name is not known" in fw.problems[0]
    named = dataclasses.replace(v, name="db")  # known, and no rule for it on xenbr1: the open pipeline
    assert (
        fw.attach({"xenbr1": BridgeModel("xenbr1", vifs=(named,))}, {(5, 0): {}}, {})["xenbr1"].vifs[0].firewall is None
    )


def test_a_rule_for_one_domid_of_a_migrating_nic_firewalls_both_of_its_vifs(tmp_path, monkeypatch):
    from xvif_ovs.controller import fwstate

    monkeypatch.setattr(fwstate.conntrack, "flush_zone", lambda z: None)
    rs = load_files(files(tmp_path, a='[[rule]]\nvif = "5.0"\ndirection = "in"\naction = "deny"\nprotocol = "udp"\n'))
    fw = fwstate.Firewall(lambda: rs, set())
    old = VifModel(5, 0, W_MAC, vif_vlans("xenbr0", None), vif_port=5, name="web")
    new = VifModel(9, 0, W_MAC, vif_vlans("xenbr0", None), vif_port=9, name="web--incoming")
    out = fw.attach({"xenbr0": BridgeModel("xenbr0", vifs=(old, new))}, {(5, 0): {}, (9, 0): {}}, {})
    a, b = out["xenbr0"].vifs
    assert a.firewall is not None and b.firewall is a.firewall


def test_an_icmp_rule_with_a_code_leaves_the_replies_of_other_codes_to_the_rule_that_allowed_them():
    odd = Rule("guest", "web", "in", "deny", "icmp", icmp_type=8, icmp_code=1)
    ping = Rule("guest", "web", "in", "allow", "icmp")
    sw = switch((odd, ping), True)
    c = Connection("in", 1, ipaddress.ip_address("192.0.2.9"), None, 8, 0)
    port, f = packet(c)
    assert 5 in sw.send(port, f | {"icmp_code": 0}).ports
    assert delivered(sw, c, reply=True)


def test_a_reject_speaks_only_for_its_guest():
    from os_ken.lib.packet import ipv4, tcp

    from xvif_ovs.controller.reject import answer

    me = guest((), True)
    syn = tcp.tcp(src_port=40000, dst_port=23, seq=1, bits=tcp.TCP_SYN)
    to_me = frame(ipv4.ipv4(src="192.0.2.1", dst=W_IP, proto=6), syn)
    assert answer(to_me, me, towards_guest=True) is not None
    other_mac = frame(ipv4.ipv4(src="192.0.2.1", dst=W_IP, proto=6), syn, dst_mac="00:16:3e:00:00:99")
    assert answer(other_mac, me, towards_guest=True) is None  # an unknown unicast frame flooded to it
    other_ip = frame(ipv4.ipv4(src="192.0.2.1", dst="192.0.2.99", proto=6), syn)
    assert answer(other_ip, me, towards_guest=True) is None
    spoofed = frame(ipv4.ipv4(src="0.0.0.0", dst=W_IP, proto=6), syn)
    assert answer(spoofed, me, towards_guest=True) is None


def test_an_unquoted_bridge_and_vlan_policy_says_to_quote_it(tmp_path):
    (p,) = files(tmp_path, a='[policies]\nxenbr0.10 = "closed"\n')
    with pytest.raises(RuleError, match='write a bridge and VLAN in quotes: "xenbr0.10" = "closed"'):
        load_files([p])
