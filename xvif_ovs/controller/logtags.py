"""Who a controller log line is about, on the line itself.

A line that names a vif (vif5.0, xvif5.0, vif5.0-emu) gets `[vif=vif5.0 domid=5
domain=web]` for each vif it names, so that an operator (or `xvif-ovs log`) finds every
line of a guest by its name, its domid or its vif, whichever they know. Added in one
place, the handlers' filter, rather than in each of the many messages that name a vif.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable

from ..hotplug.log import safe_name

_VIF = re.compile(r"(?<![\w=])x?vif(\d+)\.(\d+)(?:-emu)?\b")
_MAX = 4  # a line naming more vifs than this (a summary) is tagged with the first ones


def tags(message: str, name_of: Callable[[int], str | None]) -> str:
    """The tags for the vifs ``message`` names ("" if none)."""
    seen: list[tuple[int, int]] = []
    for m in _VIF.finditer(message):
        key = (int(m.group(1)), int(m.group(2)))
        if key not in seen:
            seen.append(key)
        if len(seen) == _MAX:
            break
    return "".join(f" [vif=vif{d}.{n} domid={d} domain={safe_name(name_of(d))}]" for d, n in seen)


class GuestTags(logging.Filter):
    def __init__(self, name_of: Callable[[int], str | None]) -> None:
        super().__init__()
        self.name_of = name_of

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "xvif_tagged", False):
            return True  # another handler's filter did it
        message = record.getMessage()
        extra = tags(message, self.name_of)
        if extra:
            record.msg, record.args = message + extra, ()
        record.xvif_tagged = True
        return True


_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JournalFormatter(logging.Formatter):
    """stderr as systemd's journal reads it: `<PRIORITY>message`, no timestamp (the
    journal has its own), so that `journalctl -p err -u xvif-ovs-controller` works."""

    def format(self, record: logging.LogRecord) -> str:
        # Each line of it (a traceback's too) at the record's priority: the journal makes
        # an entry of every line, and one without a prefix would be "info".
        p = _PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{p}>{line}" for line in super().format(record).split("\n"))


def stderr_is_journal() -> bool:
    """systemd connected stderr to the journal (JOURNAL_STREAM names that stream)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return bool(dev.isdigit() and ino.isdigit() and (st.st_dev, st.st_ino) == (int(dev), int(ino)))
