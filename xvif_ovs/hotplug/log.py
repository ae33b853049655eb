"""Hotplug logging where a Xen admin looks: /var/log/xen/xen-hotplug.log and syslog
(daemon facility, as Xen's logging.sh), one line per action, and stderr for libxl."""

from __future__ import annotations

import os
import re
import sys
import syslog
import time
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_LOG = "/var/log/xen/xen-hotplug.log"
TAG = "vif-xvif-ovs"


_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:@+\-]{1,64}$")


def safe_name(name: str | None) -> str:
    """A domain name as log lines carry it: as is when it is a plain word, else "?".
    Names are the toolstack's, but a line must never be split or forged by one (a
    newline, a "]" closing a tag early, a journal priority prefix)."""
    return name if name and _SAFE_NAME.match(name) else "?"


class HotplugLog:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.path = env.get("XVIF_HOTPLUG_LOG", DEFAULT_LOG)
        syslog.openlog(TAG, syslog.LOG_PID, syslog.LOG_DAEMON)

    def _emit(self, level: int, word: str, msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {TAG}[{os.getpid()}]: {word}{msg}"
        syslog.syslog(level, f"{word}{msg}")
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass  # a read-only /var/log must not fail the hotplug; syslog still has it
        if level <= syslog.LOG_ERR:
            print(line, file=sys.stderr)

    def info(self, msg: str) -> None:
        self._emit(syslog.LOG_INFO, "", msg)

    def error(self, msg: str) -> None:
        self._emit(syslog.LOG_ERR, "error: ", msg)


# One of the lines above, as read back by the controller's metrics and `xvif-ovs log`:
# TIME TAG[PID]: [error: ]ACTION DEV (domid D devid N[ domain NAME])[ what happened] (MS ms)
_LINE = re.compile(
    rf"^(?P<time>\S+) {TAG}\[(?P<pid>\d+)\]: (?P<error>error: )?"
    r"(?P<action>online|offline|add|remove) (?P<dev>\S+) \(domid (?P<domid>\d+) devid (?P<devid>\d+)"
    r"(?: domain (?P<domain>[^ )]+))?\)"
    r"(?P<rest>.*?)(?: \((?P<ms>\d+) ms\))?$"
)


@dataclass(frozen=True)
class HotplugRecord:
    time: str  # local time, as written (seconds)
    pid: int
    ok: bool
    action: str
    dev: str
    domid: int
    devid: int
    message: str
    ms: int | None  # None: a line from before durations were logged on errors
    domain: str = ""  # the domain's name ("" if XenStore had none, or an older line)

    @property
    def outcome(self) -> str:
        return "ok" if self.ok else "error"


def parse_line(line: str) -> HotplugRecord | None:
    """A hook line of ours, or None for anything else (Xen's own scripts log here too)."""
    m = _LINE.match(line.rstrip("\n"))
    if m is None:
        return None
    return HotplugRecord(
        m["time"],
        int(m["pid"]),
        m["error"] is None,
        m["action"],
        m["dev"],
        int(m["domid"]),
        int(m["devid"]),
        m["rest"].lstrip(": ").strip(),
        int(m["ms"]) if m["ms"] else None,
        m["domain"] or "",
    )
