"""Desired versus installed: the smallest set of changes, in an order that never
leaves a flow pointing at a missing group.

Only our flows (our cookie) are compared; flows the learn action made (table 4) belong
to the switch and are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .flow import COOKIE_MAGIC, COOKIE_MASK, Flow, FlowSet, GroupEntry
from .tables import LEARNED


@dataclass
class Plan:
    group_adds: list[GroupEntry] = field(default_factory=list)
    group_mods: list[GroupEntry] = field(default_factory=list)
    flow_adds: list[Flow] = field(default_factory=list)  # also replacements whose cookie changed
    flow_mods: list[Flow] = field(default_factory=list)  # same cookie, other actions
    flow_deletes: list[Flow] = field(default_factory=list)
    group_deletes: list[GroupEntry] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(
            (self.group_adds, self.group_mods, self.flow_adds, self.flow_mods, self.flow_deletes, self.group_deletes)
        )

    def summary(self) -> str:
        return (
            f"+{len(self.flow_adds)} ~{len(self.flow_mods)} -{len(self.flow_deletes)} flows, "
            f"+{len(self.group_adds)} ~{len(self.group_mods)} -{len(self.group_deletes)} groups"
        )


def ours(flow: Flow) -> bool:
    return flow.cookie & COOKIE_MASK == COOKIE_MAGIC and flow.table != LEARNED


def diff(desired: FlowSet, flows: list[Flow], groups: list[GroupEntry]) -> Plan:
    plan = Plan()
    want_groups = {g.group_id: g for g in desired.groups}
    have_groups = {g.group_id: g for g in groups}
    for gid, g in sorted(want_groups.items()):
        if gid not in have_groups:
            plan.group_adds.append(g)
        elif have_groups[gid] != g:
            plan.group_mods.append(g)
    plan.group_deletes = [g for gid, g in sorted(have_groups.items()) if gid not in want_groups]

    want = desired.by_key()
    have: dict[tuple, Flow] = {}
    for f in flows:
        if not ours(f):
            continue
        if f.key in have:  # cannot happen in OpenFlow; treat the extra as stale
            plan.flow_deletes.append(f)
        have[f.key] = f
    for key, f in want.items():
        cur = have.get(key)
        if cur is None:
            plan.flow_adds.append(f)
        elif cur.cookie != f.cookie:
            plan.flow_adds.append(f)  # an add over an identical match replaces it, cookie included
        elif cur.actions != f.actions:
            plan.flow_mods.append(f)
    plan.flow_deletes += [f for key, f in have.items() if key not in want]
    return plan
