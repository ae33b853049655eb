"""The fast encoder's bytes decode, with os-ken's own parser, to the very flows and
groups they came from (every flow of every reference scenario, plus private/trusted)."""

from __future__ import annotations

import pytest

from xvif_ovs.compat import quiet_eventlet
from xvif_ovs.controller import ofmsg, wire
from xvif_ovs.model.host import BridgeModel
from xvif_ovs.pipeline.build import build
from xvif_ovs.pipeline.flow import COOKIE_MAGIC, COOKIE_MASK, vif_owner
from xvif_ovs.pipeline.scenarios import UPLINK, _vif

quiet_eventlet()
from os_ken.ofproto import ofproto_parser, ofproto_protocol, ofproto_v1_3  # noqa: E402

DP = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION)


def decode(buf: bytes):
    version, msg_type, length, xid = ofproto_parser.header(buf)
    assert length == len(buf)
    return ofproto_parser.msg(DP, version, msg_type, length, xid, buf)


FLOWSETS = {
    "mixed": build(
        BridgeModel(
            "xenbr0",
            (UPLINK, 2),
            vifs=(
                _vif(5, "xenbr0.10", "192.0.2.5 2001:db8::5"),
                _vif(6, "xenbr0:10:20"),
                _vif(7, "xenbr0.10:20:30", "192.0.2.7 198.51.100.0/24", private=True),
                _vif(8, "xenbr0", "192.0.2.8", trusted=True),
            ),
        )
    )
}


@pytest.mark.parametrize("name", sorted(FLOWSETS))
def test_flow_mods_round_trip(name):
    for f in FLOWSETS[name].flows:
        msg = decode(wire.flow_mod(f, "add", 7))
        back = ofmsg.flow_from_stats(ofproto_v1_3, msg)
        assert back == f, f"{f.render()}\n{back.render()}"


def test_group_mods_are_os_kens_bytes():
    """os-ken cannot parse a group_mod (switches do), so compare with its serialization."""
    for command in ("add", "modify", "delete"):
        for g in FLOWSETS["mixed"].groups:
            m = ofmsg.group_mod(DP, g, command)
            m.set_xid(9)
            m.serialize()
            assert wire.group_mod(g, command, 9) == bytes(m.buf), (command, g.render())


def test_owner_delete_is_os_kens_cookie_delete_over_all_tables():
    owner = vif_owner(7, 1)
    m = DP.ofproto_parser.OFPFlowMod(
        DP,
        cookie=COOKIE_MAGIC | owner,
        cookie_mask=COOKIE_MASK | 0xFFFFFFFF,
        table_id=ofproto_v1_3.OFPTT_ALL,
        command=ofproto_v1_3.OFPFC_DELETE,
        priority=0,  # ignored by a non-strict delete
        out_port=ofproto_v1_3.OFPP_ANY,
        out_group=ofproto_v1_3.OFPG_ANY,
        match=DP.ofproto_parser.OFPMatch(),
    )
    m.set_xid(5)
    m.serialize()
    assert wire.owner_delete(owner, 5) == bytes(m.buf)


def test_bundle_add_matches_os_ken():
    f = FLOWSETS["mixed"].flows[3]
    parser = ofproto_v1_3.__name__.replace("ofproto_v1_3", "ofproto_v1_3_parser")
    import importlib

    p = importlib.import_module(parser)
    inner = ofmsg.flow_mod(DP, f, "add")
    add = p.ONFBundleAddMsg(DP, 9, 3, inner, [])
    add.set_xid(0x1234)
    add.serialize()
    assert wire.bundle_add(wire.flow_mod(f, "add", 0), 9, 3, 0x1234)[:24] == bytes(add.buf)[:24]
    ours = wire.bundle_add(wire.flow_mod(f, "add", 0), 9, 3, 0x1234)
    inner_msg = decode(ours[24:])
    assert inner_msg.xid == 0x1234  # the inner message carries the outer xid
    assert ofmsg.flow_from_stats(ofproto_v1_3, inner_msg) == f
