"""Rule files: TOML in a directory (/etc/xvif-ovs/rules.d/*.toml), read as one set.

    [address_sets]
    admins = ["192.0.2.0/24", "2001:db8:1::/48"]

    [policies]
    xenbr0 = "closed"          # inbound denied unless a rule allows it ("open": the default)
    "xenbr0.10" = "closed"     # one VLAN of a bridge

    [[rule]]
    guest = "web"              # or vif = "web.0" / "5.0", network = "xenbr0" / "xenbr0.10", all = true
    direction = "in"           # in: to the guest; out: from it
    action = "allow"           # allow, deny (drop silently), reject (TCP reset, ICMP unreachable)
    protocol = "tcp"           # tcp, udp, icmp, icmpv6, any, or an ethertype ("0x88cc")
    ports = [22, "8000-8080"]  # tcp and udp: the guest's port (in) or the remote's (out)
    remote = ["admins", "198.51.100.7"]   # CIDRs or address-set names; none: anywhere
    comment = "SSH from the admin network"

A file that cannot be used is refused as a whole with ``FILE:LINE: what to fix``, and
whoever loads it keeps the rules it had: a typo must never open (or close) a network.
A rule for a guest that does not exist is not an error: it waits for the guest.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import XvifError

DIRECTIONS = ("in", "out")
ACTIONS = ("allow", "deny", "reject")
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "any": None}
POLICIES = ("open", "closed")
TARGET_KEYS = ("guest", "vif", "network", "all")
RULE_KEYS = {*TARGET_KEYS, "direction", "action", "protocol", "ports", "remote", "type", "code", "comment"}
# Ethertypes a rule may not name: ARP always passes (a guest without it has no network),
# and IP is what the other protocols are for.
_RESERVED_ETHERTYPES = {0x0806: "ARP always passes", 0x0800: 'use protocol = "any"', 0x86DD: 'use protocol = "any"'}
_ICMPV6_ON_LINK = {130, 131, 132, 133, 134, 135, 136, 137, 143}
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_VIF = re.compile(r"^(?P<dom>[A-Za-z0-9_.\-]+)\.(?P<devid>\d{1,5})$")
_NETWORK = re.compile(r"^(?P<bridge>[A-Za-z0-9_\-]{1,15})(?:\.(?P<vlan>\d{1,4}))?$")
SCOPE_RANK = {"all": 0, "network": 1, "guest": 2, "vif": 2}

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class RuleError(XvifError):
    """A rule file that cannot be used: the message is ``FILE:LINE: what to fix``."""


@dataclass(frozen=True)
class Rule:
    """One rule as written, resolved: address-set names replaced by their networks."""

    scope: str  # all | network | guest | vif
    target: str  # network "xenbr0"/"xenbr0.10", guest name or VM uuid, vif "web.0"/"5.0"; "" for all
    direction: str
    action: str
    protocol: str  # tcp, udp, icmp, icmpv6, any, ether
    ethertype: int | None = None
    ports: tuple[tuple[int, int], ...] = ()  # inclusive ranges; () any
    remotes: tuple[Net, ...] = ()  # () anywhere
    icmp_type: int | None = None
    icmp_code: int | None = None
    comment: str = ""
    where: str = ""  # FILE:LINE, for messages and `xvif-ovs rules`
    seq: int = 0  # order of appearance across the files (sorted by name)

    @property
    def bridge(self) -> str:
        return self.target.split(".")[0] if self.scope == "network" else ""

    @property
    def vlan(self) -> int | None:
        """A network rule's VLAN (None: every VLAN of the bridge)."""
        if self.scope != "network" or "." not in self.target:
            return None
        return int(self.target.split(".")[1])

    @property
    def proto_number(self) -> int | None:
        return PROTOCOLS.get(self.protocol)

    def families(self) -> tuple[int, ...]:
        """The IP versions the rule can match (() for an ethertype rule)."""
        if self.protocol == "ether":
            return ()
        if self.protocol == "icmp":
            return (4,)
        if self.protocol == "icmpv6":
            return (6,)
        if self.remotes:
            return tuple(sorted({n.version for n in self.remotes}))
        return (4, 6)

    def describe(self) -> str:
        """One line, as an operator wrote it."""
        proto = f"0x{self.ethertype:04x}" if self.protocol == "ether" else self.protocol
        parts = [self.direction, self.action, proto]
        if self.ports:
            parts.append(",".join(str(a) if a == b else f"{a}-{b}" for a, b in self.ports))
        if self.icmp_type is not None:
            parts.append(f"type {self.icmp_type}" + (f" code {self.icmp_code}" if self.icmp_code is not None else ""))
        side = "from" if self.direction == "in" else "to"
        parts.append(f"{side} " + (",".join(map(str, self.remotes)) if self.remotes else "anywhere"))
        return " ".join(parts)


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    policies: dict[str, str] = field(default_factory=dict)  # "xenbr0" / "xenbr0.10" -> open | closed
    files: tuple[str, ...] = ()

    def __hash__(self) -> int:
        return id(self)


EMPTY = RuleSet()


def load_dir(path: str | Path) -> RuleSet:
    """Every ``*.toml`` in ``path``, in name order, as one set. A missing directory is no
    rules (the default); an unreadable one is an error."""
    d = Path(path)
    if not d.exists():
        return EMPTY
    if not d.is_dir():
        raise RuleError(f"{d}: not a directory; rules are *.toml files in a directory such as /etc/xvif-ovs/rules.d")
    try:
        files = sorted(p for p in d.iterdir() if p.suffix == ".toml" and not p.name.startswith("."))
    except OSError as e:
        raise RuleError(f"{d}: cannot list: {e.strerror}") from None
    _trusted(d)
    return load_files(files)


def _trusted(path: Path) -> None:
    """Rules decide who reaches a guest: only root may write them (as sudoers.d). A file
    or directory another user could change is refused, so nobody else can open a guest."""
    st = path.stat()
    if st.st_mode & 0o022:
        raise RuleError(f"{path}: writable by group or others; `chmod go-w {path}` (only root may write rules)")
    if os.geteuid() == 0 and st.st_uid != 0:
        raise RuleError(f"{path}: owned by uid {st.st_uid}, not root; `chown root {path}` (only root may write rules)")


def load_files(files: list[Path]) -> RuleSet:
    parsed = [_File.read(p) for p in files]
    sets: dict[str, tuple[tuple[Net, ...], str]] = {}
    for f in parsed:
        for name, (nets, where) in f.address_sets().items():
            if name in sets:
                raise RuleError(f"{where}: address set {name!r} is defined in {sets[name][1]} too; rename one")
            sets[name] = (nets, where)
    policies: dict[str, tuple[str, str]] = {}
    for f in parsed:
        for net, (policy, where) in f.policies().items():
            if net in policies and policies[net][0] != policy:
                raise RuleError(f"{where}: {net} is {policy!r} here but {policies[net][0]!r} in {policies[net][1]}")
            policies[net] = (policy, where)
    rules: list[Rule] = []
    for f in parsed:
        rules += f.rules({k: v[0] for k, v in sets.items()}, len(rules))
    return RuleSet(tuple(rules), {k: v[0] for k, v in policies.items()}, tuple(str(p) for p in files))


class _File:
    """One file's text and TOML, and where each of its tables starts (tomllib keeps no
    positions: the line of the k-th ``[[rule]]`` is found in the text)."""

    def __init__(self, path: Path, text: str, data: dict) -> None:
        self.path, self.text, self.data = path, text, data
        self.lines = text.splitlines()

    @classmethod
    def read(cls, path: Path) -> _File:
        try:
            _trusted(path)
            text = path.read_text()
        except OSError as e:
            raise RuleError(f"{path}: cannot read: {e.strerror}") from None
        except UnicodeDecodeError:
            raise RuleError(f"{path}: not UTF-8 text") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = re.search(r"\(at line (\d+), column \d+\)", str(e))
            line = m.group(1) if m else "1"
            what = str(e)[: m.start()].strip() if m else str(e)
            raise RuleError(f"{path}:{line}: not valid TOML: {what}") from None
        f = cls(path, text, data)
        unknown = set(data) - {"rule", "address_sets", "policies"}
        if unknown:
            key = sorted(unknown)[0]
            raise RuleError(
                f"{f.at(f.line_of(key))}: unknown section or key {key!r}; known: rule, address_sets, policies"
            )
        return f

    def at(self, line: int) -> str:
        return f"{self.path}:{line}"

    def line_of(self, key: str, start: int = 0, end: int | None = None) -> int:
        """The 1-based line where ``key`` is set or its table opens, from line index ``start``."""
        pat = re.compile(rf'^\s*(\[\[?\s*)?"?{re.escape(key)}"?\s*(=|\]|\.)')
        for i in range(start, len(self.lines) if end is None else end):
            if pat.match(self.lines[i]):
                return i + 1
        return start + 1

    def _rule_spans(self) -> list[tuple[int, int]]:
        starts = [i for i, ln in enumerate(self.lines) if re.match(r"^\s*\[\[\s*rule\s*\]\]", ln)]
        return [(s, starts[k + 1] if k + 1 < len(starts) else len(self.lines)) for k, s in enumerate(starts)]

    def address_sets(self) -> dict[str, tuple[tuple[Net, ...], str]]:
        raw = self.data.get("address_sets", {})
        top = self.line_of("address_sets")
        if not isinstance(raw, dict):
            raise RuleError(f'{self.at(top)}: [address_sets] is a table: name = ["CIDR", ...]')
        out = {}
        for name, value in raw.items():
            where = self.at(self.line_of(name, top - 1))
            if not _NAME.match(name):
                raise RuleError(f"{where}: address set name {name!r}: letters, digits, _ . - only")
            if not isinstance(value, list) or not value:
                raise RuleError(f'{where}: address set {name!r} is a non-empty list of CIDRs, e.g. ["192.0.2.0/24"]')
            out[name] = (tuple(_cidr(v, where) for v in value), where)
        return out

    def policies(self) -> dict[str, tuple[str, str]]:
        raw = self.data.get("policies", {})
        top = self.line_of("policies")
        if not isinstance(raw, dict):
            raise RuleError(f'{self.at(top)}: [policies] is a table: xenbr0 = "closed"')
        out = {}
        for net, policy in raw.items():
            where = self.at(self.line_of(net, top - 1))
            if isinstance(policy, dict):  # xenbr0.10 = ... unquoted: a TOML dotted key
                sub = next(iter(policy), "10")
                raise RuleError(f'{where}: write a bridge and VLAN in quotes: "{net}.{sub}" = "closed"')
            _network(net, where)
            if policy not in POLICIES:
                raise RuleError(f'{where}: {net} = {policy!r}: "open" (the default) or "closed"')
            out[net] = (policy, where)
        return out

    def rules(self, sets: dict[str, tuple[Net, ...]], seq0: int) -> list[Rule]:
        raw = self.data.get("rule", [])
        if not isinstance(raw, list):
            raise RuleError(f"{self.at(self.line_of('rule'))}: rules are [[rule]] tables")
        spans = self._rule_spans()
        out = []
        for k, r in enumerate(raw):
            s, e = spans[k] if k < len(spans) else (0, len(self.lines))
            out.append(
                _rule(r, lambda key, s=s, e=e: self.at(self.line_of(key, s, e) if key else s + 1), sets, seq0 + k)
            )
        return out


def _rule(r: dict, at, sets: dict[str, tuple[Net, ...]], seq: int) -> Rule:  # noqa: ANN001 - at: key -> "FILE:LINE"
    unknown = set(r) - RULE_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise RuleError(f"{at(key)}: unknown key {key!r}; a rule has {', '.join(sorted(RULE_KEYS))}")
    targets = [k for k in TARGET_KEYS if k in r]
    if len(targets) != 1:
        raise RuleError(
            f"{at('')}: a rule needs exactly one of guest = NAME|UUID, vif = NAME.DEVID|DOMID.DEVID, "
            f"network = BRIDGE|BRIDGE.VLAN, all = true (this one has {', '.join(targets) or 'none'})"
        )
    scope = targets[0]
    value = r[scope]
    if scope == "all":
        if value is not True:
            raise RuleError(f"{at('all')}: all = true (to mean every guest), or use guest/vif/network")
        target = ""
    elif not isinstance(value, str):
        raise RuleError(f"{at(scope)}: {scope} = {value!r}: a string")
    elif scope == "guest":
        if not _NAME.match(value):
            raise RuleError(f"{at(scope)}: guest = {value!r}: a domain name or VM uuid")
        target = value
    elif scope == "vif":
        m = _VIF.match(value)
        if not m or int(m.group("devid")) > 65535:
            raise RuleError(f'{at(scope)}: vif = {value!r}: NAME.DEVID or DOMID.DEVID, e.g. "web.0" or "5.0"')
        target = value
    else:
        _network(value, at(scope))
        target = value
    direction = r.get("direction")
    if direction not in DIRECTIONS:
        raise RuleError(f'{at("direction")}: direction = {direction!r}: "in" (to the guest) or "out" (from it)')
    action = r.get("action")
    if action not in ACTIONS:
        raise RuleError(
            f'{at("action")}: action = {action!r}: "allow", "deny" (drop silently) or "reject" '
            "(a TCP reset, or ICMP unreachable)"
        )
    protocol = r.get("protocol", "any")
    ethertype = None
    if isinstance(protocol, int) or (isinstance(protocol, str) and protocol.lower().startswith("0x")):
        try:
            ethertype = protocol if isinstance(protocol, int) else int(protocol, 16)
        except ValueError:
            raise RuleError(f'{at("protocol")}: protocol = {protocol!r}: an ethertype is hex, e.g. "0x88cc"') from None
        if not 0x0600 <= ethertype <= 0xFFFF:
            raise RuleError(f"{at('protocol')}: ethertype {protocol!r}: 0x0600-0xffff")
        if ethertype in _RESERVED_ETHERTYPES:
            raise RuleError(f"{at('protocol')}: ethertype 0x{ethertype:04x}: {_RESERVED_ETHERTYPES[ethertype]}")
        if action == "reject":
            raise RuleError(
                f'{at("action")}: reject answers IP (a reset, ICMP unreachable); for an ethertype use "deny"'
            )
        if direction == "out":
            raise RuleError(
                f'{at("protocol")}: an "out" rule for ethertype 0x{ethertype:04x} would never match: '
                "port security lets a guest send only ARP, IPv4 and IPv6"
            )
        protocol = "ether"
    elif protocol not in PROTOCOLS:
        raise RuleError(
            f'{at("protocol")}: protocol = {protocol!r}: tcp, udp, icmp, icmpv6, any, or an ethertype like "0x88cc"'
        )
    ports = _ports(r.get("ports"), protocol, at("ports"))
    icmp_type = _icmp(r, "type", protocol, at)
    icmp_code = _icmp(r, "code", protocol, at)
    if icmp_code is not None and icmp_type is None:
        raise RuleError(f"{at('code')}: code needs a type")
    if protocol == "icmpv6" and icmp_type in _ICMPV6_ON_LINK:
        raise RuleError(
            f"{at('type')}: ICMPv6 type {icmp_type} is neighbour discovery or MLD, which always pass on the link "
            "(and nowhere else): a rule for it would never apply"
        )
    remotes = _remotes(r.get("remote"), sets, at("remote"))
    if protocol == "ether" and remotes:
        raise RuleError(f"{at('remote')}: an ethertype rule has no IP remote")
    if protocol in ("icmp", "icmpv6"):
        want = 4 if protocol == "icmp" else 6
        wrong = [str(n) for n in remotes if n.version != want]
        if wrong:
            raise RuleError(f"{at('remote')}: {protocol} is IPv{want}; {', '.join(wrong)} is not")
    comment = r.get("comment", "")
    if not isinstance(comment, str):
        raise RuleError(f"{at('comment')}: comment is a string")
    return Rule(
        scope,
        target,
        direction,
        action,
        protocol,
        ethertype,
        ports,
        remotes,
        icmp_type,
        icmp_code,
        comment,
        at(""),
        seq,
    )


def _network(value: str, where: str) -> None:
    m = _NETWORK.match(value)
    if not m or (m.group("vlan") and not 1 <= int(m.group("vlan")) <= 4094):
        raise RuleError(f'{where}: network {value!r}: a bridge ("xenbr0") or a bridge and VLAN 1-4094 ("xenbr0.10")')


def _cidr(value: object, where: str) -> Net:
    if not isinstance(value, str):
        raise RuleError(f'{where}: {value!r}: a CIDR string such as "192.0.2.0/24"')
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        if "host bits set" in str(e):
            fixed = ipaddress.ip_network(value, strict=False)
            raise RuleError(f"{where}: {value!r} has host bits set: did you mean {fixed}?") from None
        raise RuleError(f"{where}: {value!r} is not an IPv4 or IPv6 address or CIDR") from None


def _remotes(value: object, sets: dict[str, tuple[Net, ...]], where: str) -> tuple[Net, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise RuleError(f"{where}: remote = {value!r}: a CIDR, an address-set name, or a list of them")
    out: list[Net] = []
    for v in items:
        if isinstance(v, str) and v in sets:
            out += sets[v]
        elif isinstance(v, str) and not any(c in v for c in ".:/") and _NAME.match(v):
            raise RuleError(f"{where}: no address set named {v!r} (define it under [address_sets])")
        else:
            out.append(_cidr(v, where))
    return tuple(dict.fromkeys(out))


def _ports(value: object, protocol: str, where: str) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    if protocol not in ("tcp", "udp"):
        raise RuleError(f'{where}: ports are for protocol "tcp" or "udp", not {protocol!r}')
    items = [value] if isinstance(value, int | str) else value
    if not isinstance(items, list) or not items:
        raise RuleError(f'{where}: ports = {value!r}: a port, "LOW-HIGH", or a list of them')
    out = []
    for v in items:
        if isinstance(v, bool):
            raise RuleError(f"{where}: {v!r} is not a port")
        if isinstance(v, int):
            lo = hi = v
        elif isinstance(v, str) and re.fullmatch(r"\s*\d{1,5}\s*(-\s*\d{1,5}\s*)?", v):
            a, _, b = v.partition("-")
            lo, hi = int(a), int(b or a)
        else:
            raise RuleError(f'{where}: {v!r}: a port 1-65535 or a range "LOW-HIGH"')
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            raise RuleError(f"{where}: port {v!r} is out of range: 1-65535")
        if lo > hi:
            raise RuleError(f'{where}: range {v!r} is backwards: "{hi}-{lo}"')
        out.append((lo, hi))
    return tuple(dict.fromkeys(out))


def _icmp(r: dict, key: str, protocol: str, at) -> int | None:  # noqa: ANN001
    if key not in r:
        return None
    if protocol not in ("icmp", "icmpv6"):
        raise RuleError(f'{at(key)}: {key} is for protocol "icmp" or "icmpv6"')
    v = r[key]
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
        raise RuleError(f"{at(key)}: {key} = {v!r}: 0-255")
    return v


def port_masks(lo: int, hi: int) -> list[tuple[int, int]]:
    """(value, mask) pairs whose union is exactly [lo, hi]: how OpenFlow matches a range."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return out
