"""One instance per host, and never a live server's socket taken away.

Two controllers programming the same bridges would undo each other's flows, and a
daemon that unlinks the socket of a running one at start leaves that one serving
nobody: its clients silently reach the newcomer instead (systemd restarting one while an
operator runs another by hand is enough). So:

- ``PidLock``: the controller holds an exclusive ``flock`` on a pid file in OVS's run
  directory (``OVS_RUNDIR/xvif-ovs.pid``, next to ovs-vswitchd.pid) for as long as it
  runs; a second one finds it locked and names the pid it holds. The kernel drops the
  lock when the holder dies, however it dies, so a stale file never blocks a restart.
- ``bind_unix``: a Unix socket path that exists is probed with a connect first. If
  something answers, it is a live server's: refuse, naming the path and the pid of the
  process that listens there (``SO_PEERCRED``). Only a stale one (``ECONNREFUSED``: no
  process listens on it any more) is replaced. The probe, the unlink and the bind happen
  under a ``flock`` on the socket's directory, so two starting at the same moment cannot
  both find it stale and unlink each other's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import struct

from .errors import XvifError


class AlreadyRunning(XvifError):
    """Another instance holds the lock, or a live process serves the socket."""


def peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process at the other end of a connected Unix socket."""
    try:
        pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return None
    return pid or None


def _serving_pid(path: str) -> tuple[bool, int | None]:
    """(True, pid) if a process accepts connections on ``path``; (False, None) if stale."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(path)
        except ConnectionRefusedError:
            return False, None
        except TimeoutError:  # a full backlog: somebody listens, busy
            return True, None
        return True, peer_pid(s)


def bind_unix(path: str, what: str, mode: int = 0o600, backlog: int = 64) -> socket.socket:
    """A listening Unix socket at ``path``, never at the expense of a live server."""
    directory = os.path.dirname(os.path.abspath(path))
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise AlreadyRunning(f"{path} exists and is not a socket: {what} will not replace it; remove it")
            live, pid = _serving_pid(path)
            if live:
                by = f"process {pid}" if pid else "a live process"
                raise AlreadyRunning(
                    f"{path} is served by {by}: another {what} is running; stop it first "
                    f"(or give this one another socket)"
                )
            os.unlink(path)  # stale: nobody listens on it any more
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, mode)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock
    finally:
        os.close(dfd)  # releases the flock


def unlink_if_ours(path: str, inode: int | None) -> None:
    """Remove the socket we bound at ``path`` (``inode``: its inode then) when we stop,
    but never a successor's that is already bound at the same path."""
    with contextlib.suppress(OSError):
        if inode is not None and os.stat(path).st_ino == inode:
            os.unlink(path)


class PidLock:
    """An exclusive lock on ``path`` that holds our pid, for as long as we run."""

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> PidLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                raise AlreadyRunning(
                    f"another {self.what} is running (pid {self._holder()}; it holds {self.path}): "
                    "only one may run per host; stop it first (systemctl stop xvif-ovs-controller)"
                ) from None
            # The holder may have unlinked the file between our open and our lock: then
            # we locked a file nobody else will ever look at. Lock the one at the path.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def _holder(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None
