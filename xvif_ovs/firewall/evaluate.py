"""The rules' decision for one connection, in Python: what tables 11 and 13 decide in
flows, for the controller's cut after a reload (which connections the new rules no
longer allow), `xvif-ovs trace` (which rule decided) and the tests (flows and this agree)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .rules import Rule

Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Connection:
    """A connection as the guest's side sees it: ``direction`` "out" if the guest opened
    it, "in" if the other side did; ``remote`` that other side's address; ``port`` the
    destination port of the opening packet (tcp/udp), or the ICMP type and code."""

    direction: str
    proto: int  # IP protocol number
    remote: Addr
    port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    vlan: int | None = None  # None: any (the caller does not know it)


def matches(r: Rule, c: Connection) -> bool:
    if r.direction != c.direction or r.protocol == "ether":
        return False
    if c.remote.version not in r.families():
        return False
    if r.proto_number is not None and r.proto_number != c.proto:
        return False
    if r.vlan is not None and c.vlan is not None and r.vlan != c.vlan:
        return False
    if r.remotes and not any(c.remote in n for n in r.remotes):
        return False
    if r.ports and (c.port is None or not any(lo <= c.port <= hi for lo, hi in r.ports)):
        return False
    if r.icmp_type is not None and r.icmp_type != c.icmp_type:
        return False
    return r.icmp_code is None or r.icmp_code == c.icmp_code


def decide(rules: tuple[Rule, ...], closed: bool, c: Connection) -> tuple[bool, Rule | None]:
    """(allowed, the rule that decided, or None for the default): first match wins; no
    match: out is allowed, in is allowed unless the network is closed."""
    for r in rules:
        if matches(r, c):
            return r.action == "allow", r
    return (c.direction == "out" or not closed), None
