"""A JSON-RPC stream parser for python-ovs that decodes with the standard library.

python-ovs reads OVSDB's stream with ovs.json.Parser, which is written in C only when
python-ovs was built against libopenvswitch; the PyPI package is not, and its fallback
decodes one character at a time in Python. The controller's first OVSDB read (every
Port and Interface of every bridge) then took about 0.4 s at 1000 vifs. Here Python's
C decoder does the decoding; Python code only finds where a message ends, one regular
expression match per string or bracket.
"""

from __future__ import annotations

import json
import re

# A complete string, a string cut off by the end of the data (maybe mid-escape), or a
# bracket. Brackets inside strings are consumed with their string.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|[{}\[\]]', re.S)
_WS = " \t\r\n"


class StreamParser:
    """ovs.json.Parser's interface: feed() text until is_done(), then finish().

    feed() returns how much of its text belongs to this value; the caller keeps the rest
    for the next parser. Values are objects or arrays, as every JSON-RPC message is; any
    other first character ends the value at once so that finish() reports the error.
    """

    def __init__(self, check_trailer: bool = False) -> None:
        self._parts: list[str] = []  # the value's text so far
        self._carry = ""  # a string cut off by the end of the last feed, rescanned with the next
        self._depth = 0
        self._started = False
        self._done = False

    def feed(self, s: str) -> int:
        if self._done:
            return 0
        text = self._carry + s
        start = 0
        if not self._started:
            start = len(text) - len(text.lstrip(_WS))
            if start == len(text):
                self._carry = ""
                return len(s)  # only white space so far
            self._started = True
            if text[start] not in "{[":
                self._parts.append(text)
                self._done = True
                return len(s)
        pos = start
        while True:
            m = _TOKEN.search(text, pos)
            if m is None:
                break
            tok = m.group()
            if tok[0] == '"':
                if m.end() == len(text) and (len(tok) == 1 or tok[-1] != '"' or _escaped_end(tok)):
                    # Cut off: keep it for the next feed, which completes it.
                    self._parts.append(text[: m.start()])
                    self._carry = text[m.start() :]
                    return len(s)
            elif tok in "{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._parts.append(text[: m.end()])
                    self._carry = ""
                    self._done = True
                    return m.end() - (len(text) - len(s))
            pos = m.end()
        self._parts.append(text)
        self._carry = ""
        return len(s)

    def is_done(self) -> bool:
        return self._done

    def finish(self) -> object:
        """The value, or as ovs.json.Parser does, a message string if it is not JSON."""
        text = "".join(self._parts) + self._carry
        try:
            return json.loads(text)
        except ValueError as e:
            return f"syntax error: {e}"


def _escaped_end(tok: str) -> bool:
    """Whether a token ending in a quote ends in an escaped quote (an odd run of
    backslashes before it): then the string is not closed yet."""
    run = len(tok) - 1 - len(tok[:-1].rstrip("\\"))
    return run % 2 == 1


def use_with_python_ovs() -> None:
    """Make python-ovs's JSON-RPC use StreamParser, unless it has its C parser."""
    import ovs.json

    if ovs.json.PARSER == ovs.json.PARSER_PY:
        ovs.json.Parser = StreamParser
