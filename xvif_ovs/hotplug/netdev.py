"""Kernel link operations the hook needs (up, down, rename, MTU), by ioctl.

Spawning `ip` for each would cost more than the OVSDB transaction; these are four
ioctls that every Linux since 2.2 has.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from ..errors import XvifError

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFMTU = 0x8922
SIOCSIFNAME = 0x8923
IFF_UP = 0x1
IFF_PROMISC = 0x100


class NetdevError(XvifError):
    """A kernel network device is missing or refused a change."""


def _ioctl(name: str, request: int, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            return fcntl.ioctl(s, request, struct.pack("16s", name.encode()) + payload)
        except OSError as e:
            raise NetdevError(f"{name}: {os.strerror(e.errno or 0)}") from None


def exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def flags(name: str) -> int:
    return struct.unpack("H", _ioctl(name, SIOCGIFFLAGS, b"\0" * 16)[16:18])[0]


def set_up(name: str, up: bool = True, promisc: bool | None = None) -> None:
    """IFF_UP on or off, and IFF_PROMISC too unless ``promisc`` is None, in one write.

    A port joining OVS gets IFF_PROMISC from ovs-vswitchd, which reads the device's
    flags and writes them back. Setting it ourselves with IFF_UP leaves it nothing to
    write: no window in which its write undoes our IFF_UP, and no second link event,
    each of which costs ovs-vswitchd a reconfigure of every port on the userspace
    datapath (a third of a second at 1000 ports: bench/firstpacket.py)."""
    old = flags(name)
    new = old | IFF_UP if up else old & ~IFF_UP
    if promisc is not None:
        new = new | IFF_PROMISC if promisc else new & ~IFF_PROMISC
    if new != old:
        _ioctl(name, SIOCSIFFLAGS, struct.pack("H", new) + b"\0" * 14)


def restore(name: str, old: int) -> None:
    """IFF_UP and IFF_PROMISC back to what ``old`` (an earlier flags()) says."""
    set_up(name, bool(old & IFF_UP), bool(old & IFF_PROMISC))


def is_up(name: str) -> bool:
    return bool(flags(name) & IFF_UP)


def rename(old: str, new: str) -> None:
    """The device must be down; vif-common.sh refuses if ``new`` exists, and so do we."""
    if exists(new):
        raise NetdevError(
            f"cannot rename {old} to {new}: an interface named {new} already exists "
            "(another guest's vifname?); choose another vifname"
        )
    set_up(old, False)
    _ioctl(old, SIOCSIFNAME, struct.pack("16s", new.encode()))


SIOCGIFMTU = 0x8921


def get_mtu(name: str) -> int | None:
    try:
        return struct.unpack("i", _ioctl(name, SIOCGIFMTU, b"\0" * 16)[16:20])[0]
    except NetdevError:
        return None


def set_mtu(name: str, mtu: int) -> None:
    _ioctl(name, SIOCSIFMTU, struct.pack("i", mtu) + b"\0" * 12)
