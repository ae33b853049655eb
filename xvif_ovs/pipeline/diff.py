"""Desired versus installed: the smallest set of changes, in an order that never
leaves a flow pointing at a missing group.

Only our flows (our cookie) are compared; flows the learn action made (table 4) belong
to the switch and are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .build import P_GUARD, Parts
from .flow import COOKIE_MAGIC, COOKIE_MASK, OWNER_MASK, VIF_OWNER, Flow, FlowSet, GroupEntry, is_our_group
from .tables import LEARNED, NEIGHBOURS


@dataclass
class Plan:
    group_adds: list[GroupEntry] = field(default_factory=list)
    group_mods: list[GroupEntry] = field(default_factory=list)
    flow_adds: list[Flow] = field(default_factory=list)  # also replacements whose cookie changed
    flow_mods: list[Flow] = field(default_factory=list)  # same cookie, other actions
    flow_deletes: list[Flow] = field(default_factory=list)
    group_deletes: list[GroupEntry] = field(default_factory=list)
    # vifs none of whose flows stay: all their flow_deletes can go as one delete by cookie
    gone_owners: list[int] = field(default_factory=list)

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
    """Ours to reconcile: our cookie, and not what the switch learned (tables 4 and 6 hold
    only flows the learn action made; a new controller must keep them)."""
    return flow.cookie & COOKIE_MASK == COOKIE_MAGIC and flow.table not in (LEARNED, NEIGHBOURS)


def diff(desired: FlowSet, flows: list[Flow], groups: list[GroupEntry]) -> Plan:
    plan = Plan()
    _diff_groups(desired.groups, groups, plan)

    _diff_flows(desired.by_key(), [f for f in flows if ours(f)], plan)
    return plan


def _diff_groups(desired: list[GroupEntry], groups: list[GroupEntry], plan: Plan) -> None:
    want_groups = {g.group_id: g for g in desired}
    have_groups = {g.group_id: g for g in groups if is_our_group(g.group_id)}  # another's are left alone
    for gid, g in sorted(want_groups.items()):
        if gid not in have_groups:
            plan.group_adds.append(g)
        elif have_groups[gid] is not g and have_groups[gid] != g:
            plan.group_mods.append(g)
    plan.group_deletes += [g for gid, g in sorted(have_groups.items()) if gid not in want_groups]


def _diff_flows(want: dict[tuple, Flow], flows: list[Flow], plan: Plan) -> None:
    have: dict[tuple, Flow] = {}
    for f in flows:
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


def owner_of(flow: Flow) -> int:
    return flow.cookie & OWNER_MASK


def by_owner(flows: list[Flow]) -> dict[int, list[Flow]]:
    out: dict[int, list[Flow]] = {}
    for f in flows:
        if ours(f):
            out.setdefault(owner_of(f), []).append(f)
    return out


def diff_parts(
    desired: Parts,
    installed: dict[int, list[Flow]],
    groups: list[GroupEntry],
    applied: dict[int, tuple[Flow, ...]] | None = None,
) -> Plan:
    """Like diff(), one owner at a time, skipping owners whose desired flows are the very
    tuple last applied (the pipeline caches each vif's flows): a change to one vif costs
    that vif's flows plus the bridge's groups, whatever the number of vifs."""
    plan = Plan()
    _diff_groups(desired.groups, groups, plan)
    for owner in desired.flows.keys() | installed.keys():
        want = desired.flows.get(owner, ())
        if applied is not None and owner in desired.flows and applied.get(owner) is want:
            continue
        if not want and owner & VIF_OWNER and installed.get(owner):
            plan.gone_owners.append(owner)
        _diff_flows({f.key: f for f in want}, installed.get(owner, []), plan)
    return plan


def first_stage(desired: Parts, installed: dict[int, list[Flow]]) -> Parts | None:
    """What to apply first when vifs join a switch that is already programmed: all of
    ``desired`` but the new vifs' source-MAC guards, which follow in a second bundle.

    Why: OVS reads at most 50 messages from a connection in each pass of its main loop,
    and on the userspace datapath with a thousand ports the passes around a port's
    creation take a third of a second each. A new vif's 73 flows need two passes and a
    third for the commit; its 25 without the guard fit one. The guard only bounds the
    datapath flows a guest can cause: without it, table 1's last flow still drops every
    foreign source MAC, so its arriving one round trip later weakens nothing.
    None when there is nothing to hold back; a switch's first programming is one bundle.
    """
    if not installed:
        return None
    new = [o for o in desired.flows if o & VIF_OWNER and o not in installed]
    if not new:
        return None
    flows = dict(desired.flows)
    for o in new:
        flows[o] = tuple(f for f in flows[o] if f.cookie >> 40 & 0xFF != P_GUARD)
    return Parts(flows, desired.groups)
