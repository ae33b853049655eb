"""Hotplug logging where a Xen admin looks: /var/log/xen/xen-hotplug.log and syslog
(daemon facility, as Xen's logging.sh), one line per action, and stderr for libxl."""

from __future__ import annotations

import os
import sys
import syslog
import time
from collections.abc import Mapping

DEFAULT_LOG = "/var/log/xen/xen-hotplug.log"
TAG = "vif-xvif-ovs"


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
