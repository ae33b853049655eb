"""Which rules apply to one vif, in the order they are tried.

First match wins, broadest scope first: the rules for every guest, then the network's
(bridge, or bridge and VLAN), then the guest's own (by name, VM uuid or vif); within a
scope, in the order the files (sorted by name) and their rules are written. So a host-wide
"no SMTP out" cannot be undone by a rule a guest's owner asked for, and what no rule
decides falls to the network's policy: inbound "open" (the default) or "closed".
Outbound is open unless a rule denies it.
"""

from __future__ import annotations

from ..model.host import INCOMING_SUFFIX, MIGRATED_AWAY_SUFFIX
from .rules import SCOPE_RANK, Rule, RuleSet

MAX_RULES_PER_VIF = 256  # a flow's cookie has 8 bits for the rule


def base_name(name: str) -> str:
    """A migrating domain's name without libxl's suffix: the rules follow the guest."""
    for suffix in (INCOMING_SUFFIX, MIGRATED_AWAY_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def applies(rule: Rule, name: str, uuid: str, domid: int, devid: int, bridge: str, vlans: tuple[int, ...]) -> bool:
    if rule.scope == "all":
        return True
    if rule.scope == "network":
        return rule.bridge == bridge and (rule.vlan is None or rule.vlan in vlans)
    if rule.scope == "guest":
        return rule.target in (base_name(name), uuid) and bool(rule.target)
    return rule.target in (f"{base_name(name)}.{devid}", f"{domid}.{devid}")


def rules_for(
    rs: RuleSet, name: str, uuid: str, domid: int, devid: int, bridge: str, vlans: tuple[int, ...]
) -> tuple[tuple[Rule, ...], frozenset[int]]:
    """(its rules in evaluation order, its closed VLANs)."""
    mine = [r for r in rs.rules if applies(r, name, uuid, domid, devid, bridge, vlans)]
    mine.sort(key=lambda r: (SCOPE_RANK[r.scope], r.seq))
    closed = set()
    for vlan in vlans:
        policy = rs.policies.get(f"{bridge}.{vlan}") if vlan else None
        if policy is None:
            policy = rs.policies.get(bridge, "open")
        if policy == "closed":
            closed.add(vlan)
    return tuple(mine), frozenset(closed)


def firewalled(rules: tuple[Rule, ...], closed: frozenset[int]) -> bool:
    """Only a vif with a rule or a closed network pays for conntrack; the rest keep the
    open pipeline exactly as it was."""
    return bool(rules or closed)
