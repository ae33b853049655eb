"""`xvif-ovs log [--vif DEV | --domain NAME|DOMID]`: one guest's lines from the hook
(xen-hotplug.log) and the controller (its journal, or its log file), merged in time order.

Where they are read from: the hook's log is the controller config's [metrics]
hotplug_log, else $XVIF_HOTPLUG_LOG, else /var/log/xen/xen-hotplug.log; the
controller's lines come from $XVIF_CONTROLLER_LOG (a file, as the lab writes) or else
from the journal (journalctl -u xvif-ovs-controller). --hotplug-log and
--controller-log name either explicitly.

A guest's lines are found by what they carry: the hook writes `(domid D devid N domain
NAME)`, the controller `[vif=vifD.N domid=D domain=NAME]` (controller/logtags.py).

JSON shape (`--json`): {"lines": [{"time", "source": "hook"|"controller", "text"}], "sources": [str]}
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..controller.config import DEFAULT_HOTPLUG_LOG, load_installed
from ..errors import XvifError
from ..hotplug.log import parse_line

UNIT = "xvif-ovs-controller.service"
_FILE_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) (.*)$")
_VIF = re.compile(r"^x?vif(\d+)\.(\d+)(?:-emu)?$")


class LogError(XvifError):
    """The logs cannot be read as asked."""


@dataclass(frozen=True)
class Line:
    time: datetime
    source: str  # hook | controller
    text: str


@dataclass(frozen=True)
class Who:
    """What a line must name: a vif (domid, devid), a domid, or a domain name."""

    vif: tuple[int, int] | None = None
    domid: int | None = None
    name: str | None = None

    def hook(self, rec) -> bool:  # noqa: ANN001 - a HotplugRecord
        if self.vif is not None:
            return (rec.domid, rec.devid) == self.vif
        if self.domid is not None:
            return rec.domid == self.domid
        return self.name is None or rec.domain == self.name

    def controller(self, text: str) -> bool:
        if self.vif is not None:
            d, n = self.vif
            return f"[vif=vif{d}.{n} " in text or re.search(rf"(?<![\w=])x?vif{d}\.{n}\b", text) is not None
        if self.domid is not None:
            return f" domid={self.domid} " in text
        return self.name is None or f" domain={self.name}]" in text


def who(args: argparse.Namespace) -> Who:
    if args.vif:
        m = _VIF.match(args.vif)
        if m is None:
            raise LogError(f"--vif {args.vif!r}: a guest's vif, e.g. vif5.0 (or xvif5.0, vif5.0-emu)")
        return Who(vif=(int(m.group(1)), int(m.group(2))))
    if args.domain:
        return Who(domid=int(args.domain)) if args.domain.isdigit() else Who(name=args.domain)
    return Who()


def hook_lines(path: str, want: Who) -> list[Line]:
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise LogError(f"cannot read the hook's log {path}: {e.strerror}") from None
    out = []
    for raw in text.splitlines():
        rec = parse_line(raw)
        if rec is None or not want.hook(rec):
            continue
        try:
            t = datetime.strptime(rec.time, "%Y-%m-%dT%H:%M:%S")
        except ValueError:
            continue
        out.append(Line(t, "hook", raw.split(": ", 1)[1] if ": " in raw else raw))
    return out


def controller_file_lines(path: str, want: Who) -> list[Line]:
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise LogError(f"cannot read the controller's log {path}: {e.strerror}") from None
    out = []
    for raw in text.splitlines():
        m = _FILE_LINE.match(raw)
        if m is None or not want.controller(m.group(3) + " "):
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        out.append(Line(t, "controller", f"{m.group(2)} {m.group(3)}"))
    return out


def journal_lines(want: Who, since: int | None) -> list[Line]:
    if shutil.which("journalctl") is None:
        raise LogError(
            "no journalctl here: name the controller's log with --controller-log FILE (or XVIF_CONTROLLER_LOG)"
        )
    cmd = ["journalctl", "-u", UNIT, "-o", "json", "--no-pager", "--output-fields=MESSAGE,PRIORITY"]
    if since is not None:
        cmd.append(f"--since=-{since}min")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise LogError(f"journalctl -u {UNIT} took over 2 minutes: narrow it with --since MINUTES") from None
    if proc.returncode != 0:
        raise LogError(f"journalctl -u {UNIT} failed: {proc.stderr.strip() or proc.returncode}")
    levels = {0: "EMERG", 1: "ALERT", 2: "CRITICAL", 3: "ERROR", 4: "WARNING", 5: "NOTICE", 6: "INFO", 7: "DEBUG"}
    out = []
    for raw in proc.stdout.splitlines():
        try:
            e = json.loads(raw)
        except ValueError:
            continue
        msg = e.get("MESSAGE")
        if not isinstance(msg, str) or not want.controller(msg + " "):
            continue
        t = datetime.fromtimestamp(int(e.get("__REALTIME_TIMESTAMP", "0")) / 1e6)
        level = levels.get(int(e.get("PRIORITY", 6)), "INFO")
        out.append(Line(t, "controller", f"{level} {msg}"))
    return out


def run(args: argparse.Namespace) -> tuple[str, int]:
    want = who(args)
    cfg = load_installed(args.config)
    hook_path = args.hotplug_log or (
        cfg.metrics.hotplug_log if cfg.metrics else os.environ.get("XVIF_HOTPLUG_LOG", DEFAULT_HOTPLUG_LOG)
    )
    ctl_path = args.controller_log or os.environ.get("XVIF_CONTROLLER_LOG")
    lines = hook_lines(hook_path, want)
    if ctl_path:
        lines += controller_file_lines(ctl_path, want)
    else:
        lines += journal_lines(want, args.since)
    if args.since is not None:
        start = datetime.now() - timedelta(minutes=args.since)
        lines = [ln for ln in lines if ln.time >= start]
    lines.sort(key=lambda ln: ln.time)  # stable: equal times keep each source's own order
    if args.lines:
        lines = lines[-args.lines :]
    sources = [hook_path, ctl_path or f"journal ({UNIT})"]
    if args.json:
        rows = [{"time": ln.time.isoformat(sep=" "), "source": ln.source, "text": ln.text} for ln in lines]
        return json.dumps({"lines": rows, "sources": sources}, indent=2) + "\n", 0
    if not lines:
        return f"no lines for it in {' or '.join(sources)}\n", 0
    return "".join(f"{ln.time.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]} {ln.source:<10} {ln.text}\n" for ln in lines), 0
