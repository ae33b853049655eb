"""Reconciliation as data: applying a plan to what is installed gives what is desired,
and applying the same state twice changes nothing."""

from __future__ import annotations

from dataclasses import replace

from xvif_ovs.model.host import BridgeModel
from xvif_ovs.pipeline.build import build
from xvif_ovs.pipeline.diff import diff
from xvif_ovs.pipeline.flow import GROUP_BASE, Bucket, F, Flow, FlowSet, GroupEntry, Output, SetReg, vif_owner
from xvif_ovs.pipeline.scenarios import _vif


def apply(flows: list[Flow], groups, plan):
    by_key = {f.key: f for f in flows}
    for f in plan.flow_deletes:
        by_key.pop(f.key, None)
    for f in plan.flow_adds + plan.flow_mods:
        by_key[f.key] = f
    g = {x.group_id: x for x in groups}
    for x in plan.group_adds + plan.group_mods:
        g[x.group_id] = x
    for x in plan.group_deletes:
        g.pop(x.group_id)
    return list(by_key.values()), list(g.values())


def model(*vifs):
    return BridgeModel("xenbr0", (1,), vifs=tuple(vifs))


def test_from_empty_everything_is_added_and_second_pass_is_empty():
    fs = build(model(_vif(5, "xenbr0", "192.0.2.5"), _vif(6, "xenbr0.10")))
    plan = diff(fs, [], [])
    assert len(plan.flow_adds) == len(fs.flows) and len(plan.group_adds) == len(fs.groups)
    flows, groups = apply([], [], plan)
    assert not diff(fs, flows, groups)  # idempotent: the same state twice changes nothing


def test_one_vif_change_touches_only_its_flows():
    a, b = _vif(5, "xenbr0", "192.0.2.5"), _vif(6, "xenbr0", "192.0.2.6")
    before = build(model(a, b))
    after = build(model(a, replace(b, ips=(b.ips[0].__class__("192.0.2.66"),))))
    plan = diff(after, before.flows, before.groups)
    changed = plan.flow_adds + plan.flow_mods + plan.flow_deletes
    assert changed and all(f.cookie & 0xFFFFFFFF == vif_owner(6, 0) for f in changed)
    assert not plan.group_adds and not plan.group_mods and not plan.group_deletes


def test_foreign_and_learned_flows_are_left_alone():
    fs = build(model(_vif(5, "xenbr0")))
    foreign = Flow(0, 500, (F("in_port", 9),), (Output(1),), 0x1234)
    learned = Flow(4, 100, (F("reg6", 0), F("dl_dst", "00:00:5e:00:53:01")), (), 0x7876090000000000)
    neighbour = Flow(6, 100, (F("reg8", 0xC0000201),), (SetReg("reg7", 1),), 0x7876100000000000)  # a routed bridge's
    plan = diff(fs, [*fs.flows, foreign, learned, neighbour], fs.groups)
    assert not plan


def test_stale_flows_and_groups_are_removed():
    big = build(model(_vif(5, "xenbr0.10"), _vif(6, "xenbr0.20")))
    small = build(model(_vif(5, "xenbr0.10")))
    plan = diff(small, big.flows, big.groups)
    assert plan.flow_deletes and {(g.group_id - GROUP_BASE) // 4 for g in plan.group_deletes} == {20}
    flows, groups = apply(big.flows, big.groups, plan)
    assert not diff(small, flows, groups)


def test_cookie_change_is_a_replacement():
    fs = build(model(_vif(5, "xenbr0")))
    f = fs.flows[-1]
    installed = [*fs.flows[:-1], replace(f, cookie=f.cookie ^ 1)]
    plan = diff(fs, installed, fs.groups)
    assert plan.flow_adds == [f] and not plan.flow_mods


def test_empty_desired_set_removes_only_ours():
    fs = build(model(_vif(5, "xenbr0")))
    foreign = Flow(0, 500, (F("in_port", 9),), (Output(1),), 0x1234)
    foreign_group = GroupEntry(7, (Bucket((Output(1),)),))
    plan = diff(FlowSet(), [*fs.flows, foreign], [*fs.groups, foreign_group])
    assert len(plan.flow_deletes) == len(fs.flows) and foreign not in plan.flow_deletes
    assert len(plan.group_deletes) == len(fs.groups) and foreign_group not in plan.group_deletes


def test_diff_parts_skips_unchanged_owners_and_finds_real_changes():
    from xvif_ovs.pipeline.build import Builder
    from xvif_ovs.pipeline.diff import by_owner, diff_parts

    build_parts = Builder().build_parts  # as the controller builds: one Builder, pass after pass
    a, b = _vif(5, "xenbr0", "192.0.2.5"), _vif(6, "xenbr0", "192.0.2.6")
    before = build_parts(model(a, b))
    installed = by_owner(before.flowset().flows)
    assert not diff_parts(before, installed, before.groups)  # full compare: in sync
    assert not diff_parts(before, installed, before.groups, before.flows)
    after = build_parts(model(a, replace(b, ips=(b.ips[0].__class__("192.0.2.66"),))))
    assert after.flows[vif_owner(5, 0)] is before.flows[vif_owner(5, 0)]  # untouched vif: the same cached tuple
    plan = diff_parts(after, installed, before.groups, before.flows)
    assert plan and {f.cookie & 0xFFFFFFFF for f in plan.flow_adds + plan.flow_deletes} == {vif_owner(6, 0)}
    gone = build_parts(model(a))
    plan = diff_parts(gone, installed, before.groups, before.flows)
    assert len(plan.flow_deletes) == len(before.flows[vif_owner(6, 0)])
    assert plan.gone_owners == [vif_owner(6, 0)]  # so the switch gets one delete by cookie
    assert not diff_parts(after, installed, before.groups, before.flows).gone_owners  # a change is no removal
