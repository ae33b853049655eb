"""The connection tracker's entries of one firewall zone, through ovs-vswitchd's own
control socket (as `ovs-appctl dpctl/...`): read them, and delete those the rules no
longer allow, so that a cut connection leaves nothing behind that would make the next
connection on the same addresses and ports look like part of it (OVS's conntrack calls a
SYN on an established entry invalid, for as long as the entry lives)."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..firewall.evaluate import Connection, decide
from ..inspect.vswitchd import Unixctl, VswitchdError, appctl
from ..model.host import VifFirewall
from ..pipeline.firewall import MARK_IN, MARK_OUT

log = logging.getLogger("xvif_ovs.controller")
_ENTRY = re.compile(
    r"^(?P<proto>\w+),orig=\(src=(?P<src>[^,]+),dst=(?P<dst>[^,]+),(?P<l4>[^)]*)\)"
    r".*?(?:,mark=(?P<mark>\d+))?(?:,|$)"
)
_PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "udplite": 136}


# TCP states in which OVS's conntrack lets a SYN open the same addresses and ports again:
# such an entry holds nothing back, and a flood of short connections leaves thousands.
_REOPENABLE = {"TIME_WAIT", "CLOSED"}


@dataclass(frozen=True)
class Entry:
    proto: int
    src: str
    dst: str
    l4: dict[str, int]  # sport/dport, or type/code/id
    mark: int
    state: str = ""  # TCP's, as OVS prints it

    def tuple_spec(self) -> str:
        """The orig tuple as dpctl/flush-conntrack takes it."""
        v6 = ":" in self.src
        parts = [f"ct_{'ipv6' if v6 else 'nw'}_src={self.src}", f"ct_{'ipv6' if v6 else 'nw'}_dst={self.dst}"]
        parts.append(f"ct_nw_proto={self.proto}")
        if "sport" in self.l4:
            parts += [f"ct_tp_src={self.l4['sport']}", f"ct_tp_dst={self.l4['dport']}"]
        elif "type" in self.l4:
            kind = "icmp" if not v6 else "icmp"
            parts += [
                f"{kind}_id={self.l4.get('id', 0)}",
                f"{kind}_type={self.l4['type']}",
                f"{kind}_code={self.l4['code']}",
            ]
        return ",".join(parts)


def parse(dump: str) -> list[Entry]:
    out = []
    for line in dump.splitlines():
        m = _ENTRY.match(line.strip())
        if not m or m.group("proto") not in _PROTOS:
            continue
        l4 = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group("l4"))}
        mark = re.search(r",mark=(\d+)", line)
        state = re.search(r"protoinfo=\(state=(\w+)", line)
        e = Entry(_PROTOS[m.group("proto")], m.group("src"), m.group("dst"), l4, int(mark.group(1)) if mark else 0)
        out.append(dataclasses.replace(e, state=state.group(1)) if state else e)
    return out


def flush_zone(zone: int) -> None:
    """A zone given to a new vif starts empty: entries of the vif that had it before
    (and its addresses) must not decide anything for this one."""
    try:
        appctl("dpctl/flush-conntrack", f"zone={zone}")
    except VswitchdError as e:
        log.warning("conntrack zone %d not flushed (%s)", zone, e)


def cut(fw: VifFirewall, what: str, closed: bool, current: Callable[[], bool] = lambda: True) -> int:
    """Delete the entries of ``fw``'s zone that its rules no longer allow; their packets
    are dropped by the flows already, this removes what they leave behind. ``closed``:
    inbound is closed on every VLAN of the vif (a trunk closed on some only is judged
    open: an entry kept is only an entry, one wrongly deleted kills a connection the flows
    allow). Stops when ``current()`` says a newer rule set has come for the vif."""
    gone = 0
    try:
        with Unixctl() as u:
            for e in parse(u.call("dpctl/dump-conntrack", f"zone={fw.zone}")):
                if e.mark not in (MARK_OUT, MARK_IN) or e.state in _REOPENABLE:
                    continue
                direction = "out" if e.mark == MARK_OUT else "in"
                remote = e.dst if direction == "out" else e.src
                c = Connection(
                    direction,
                    e.proto,
                    ipaddress.ip_address(remote),
                    e.l4.get("dport"),
                    e.l4.get("type"),
                    e.l4.get("code"),
                )
                if decide(fw.rules, closed, c)[0]:
                    continue
                if not current():
                    break  # superseded: the newer set's own cut follows
                try:
                    u.call("dpctl/flush-conntrack", f"zone={fw.zone}", e.tuple_spec())
                    gone += 1
                except VswitchdError as err:
                    log.warning("%s: connection %s not removed (%s)", what, e.tuple_spec(), err)
    except VswitchdError as e:
        log.warning("%s: connections not checked against the new rules (%s)", what, e)
    if gone:
        log.info("%s: %d connection(s) the new rules deny cut", what, gone)
    return gone


class Cutter:
    """The cuts, one at a time in a thread of their own, each with the newest rules of
    its vif: a cut of a set a later reload replaced must not delete what the later one
    allows. A zone can hold thousands of entries; no switch waits for them."""

    def __init__(self) -> None:
        self._latest: dict[tuple[int, int], tuple[VifFirewall, bool, str]] = {}
        self._todo: dict[tuple[int, int], None] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(target=self._run, name="conntrack-cut", daemon=True).start()

    def post(self, key: tuple[int, int], fw: VifFirewall, closed: bool, what: str) -> None:
        with self._lock:
            self._latest[key] = (fw, closed, what)
            self._todo[key] = None
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while True:
                with self._lock:
                    if not self._todo:
                        break
                    key = next(iter(self._todo))
                    del self._todo[key]
                    fw, closed, what = self._latest[key]
                try:
                    cut(fw, what, closed, lambda k=key, f=fw: self._latest.get(k, (None,))[0] is f)
                except Exception:  # noqa: BLE001 - a cleanup: the flows already enforce the rules
                    log.exception("%s: cut failed", what)
