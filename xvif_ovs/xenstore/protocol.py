"""The XenStore wire protocol, as xen/include/public/io/xs_wire.h defines it.

Kept separate from the server so that clients, tests and the server agree on one
set of numbers; nothing here does I/O.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

HEADER = struct.Struct("<IIII")  # type, req_id, tx_id, len (x86: little-endian)
XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048


class Op(enum.IntEnum):
    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESTRICT = 20
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


class XsError(Exception):
    """A request that xenstored answers with XS_ERROR and one of Xen's errno names."""

    def __init__(self, errno_name: str, why: str = "") -> None:
        super().__init__(f"{errno_name}: {why}" if why else errno_name)
        self.errno_name = errno_name
        self.why = why


# The names xs_wire.h's xsd_errors table knows; anything else is a bug of ours.
ERRNO_NAMES = frozenset(
    {
        "EINVAL",
        "EACCES",
        "EEXIST",
        "EISDIR",
        "ENOENT",
        "ENOMEM",
        "ENOSPC",
        "EIO",
        "ENOTEMPTY",
        "ENOSYS",
        "EROFS",
        "EBUSY",
        "EAGAIN",
        "EISCONN",
        "E2BIG",
        "EPERM",
    }
)


@dataclass(frozen=True)
class Header:
    type: int
    req_id: int
    tx_id: int
    length: int

    def pack(self) -> bytes:
        return HEADER.pack(self.type, self.req_id, self.tx_id, self.length)

    @classmethod
    def unpack(cls, raw: bytes) -> Header:
        return cls(*HEADER.unpack(raw))


def encode(op: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    return HEADER.pack(op, req_id, tx_id, len(payload)) + payload


def split_strings(payload: bytes, count: int) -> list[bytes]:
    """Split a request into its NUL-terminated arguments, as xenstored's get_strings does.

    Exactly ``count`` NUL-terminated strings are required; fewer is EINVAL.
    """
    parts = payload.split(b"\0")
    if len(parts) < count + 1:
        raise XsError("EINVAL", f"expected {count} NUL-terminated argument(s)")
    return parts[:count]


def one_arg(payload: bytes) -> bytes:
    """xenstored's onearg(): the payload must be one string, NUL-terminated at the end."""
    if not payload or payload[-1] != 0 or b"\0" in payload[:-1]:
        raise XsError("EINVAL", "expected one NUL-terminated argument")
    return payload[:-1]
