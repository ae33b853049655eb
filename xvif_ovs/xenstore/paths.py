"""XenStore path and permission syntax, judged the way C xenstored judges it.

xenstored accepts only absolute paths of [A-Za-z0-9-/_@] without doubled or trailing
slashes, resolves relative ones under the caller's home, and names permissions as a
letter (n, r, w, b) followed by a domid. Clients rely on the EINVALs as much as on
the successes, so the rules live here, pure and tested on their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .protocol import XENSTORE_REL_PATH_MAX, XsError

SPECIAL_WATCHES = ("@introduceDomain", "@releaseDomain")
_VALID_CHARS = re.compile(r"^[A-Za-z0-9\-/_@]*$")
_DOMAIN_PREFIX = re.compile(r"^/local/domain/(\d{1,5})/")
_DOMID_MAX = 0x7FF0  # DOMID_FIRST_RESERVED: domids at or above it are not domains


def home_of(domid: int) -> str:
    return f"/local/domain/{domid}"


def canonical(path: str, domid: int = 0, allow_special: bool = False) -> str:
    """Resolve ``path`` for a client of ``domid`` and validate it, or raise EINVAL.

    ``allow_special``: the request (WATCH, UNWATCH, GET/SET_PERMS) may name an @ node.
    """
    if path.startswith("@"):
        if not allow_special:
            raise XsError("EINVAL", f"{path!r}: @ names are only for watches and permissions")
        if not _VALID_CHARS.match(path) or len(path) > XENSTORE_REL_PATH_MAX:
            raise XsError("EINVAL", f"{path!r} is not a valid special name")
        return path
    if not path.startswith("/"):
        path = f"{home_of(domid)}/{path}"
    validate(path)
    return path


def validate(path: str) -> None:
    if not path.startswith("/"):
        raise XsError("EINVAL", f"{path!r} is not absolute")
    if "//" in path:
        raise XsError("EINVAL", f"{path!r} has a doubled slash")
    if path.endswith("/") and path != "/":
        raise XsError("EINVAL", f"{path!r} has a trailing slash")
    if not _VALID_CHARS.match(path):
        raise XsError("EINVAL", f"{path!r} has characters outside [A-Za-z0-9-/_@]")
    # Xen 4.17's is_valid_nodename(): at most XENSTORE_REL_PATH_MAX characters below a
    # domain's home, or in all for paths outside /local/domain/N/.
    m = _DOMAIN_PREFIX.match(path)
    local_off = m.end() if m else 0
    if len(path) - local_off > XENSTORE_REL_PATH_MAX:
        raise XsError("EINVAL", f"path longer than {XENSTORE_REL_PATH_MAX} characters (below the domain's home)")


def parent_of(path: str) -> str:
    if path == "/":
        raise XsError("EINVAL", "/ has no parent")
    head = path.rsplit("/", 1)[0]
    return head or "/"


def basename(path: str) -> str:
    return path.rsplit("/", 1)[1]


def is_child(child: str, parent: str) -> bool:
    """True when ``child`` is ``parent`` or below it (xenstored's is_child)."""
    if parent == "/":
        return child.startswith("/")
    return child == parent or child.startswith(parent + "/")


def relative_to_home(path: str, domid: int) -> str:
    """How xenstored reports an event path to a watch that was registered relative."""
    prefix = home_of(domid) + "/"
    return path[len(prefix) :] if path.startswith(prefix) else path


@dataclass(frozen=True)
class Perm:
    """One xenstored permission: n(one), r(ead), w(rite), b(oth) for a domid.

    The first entry of a node's list names its owner and the default for every
    domain not listed after it.
    """

    kind: str
    domid: int

    def __str__(self) -> str:
        return f"{self.kind}{self.domid}"

    @classmethod
    def parse(cls, text: str) -> Perm:
        """xenstored reads the domid with strtol(.., 0): decimal, 0x hex or 0 octal."""
        kind, num = text[:1], text[1:]
        try:
            if not (kind and kind in "nrwb" and num.isascii() and num.isalnum()):
                raise ValueError
            if num.lower().startswith("0x"):
                domid = int(num[2:], 16)
            elif num.startswith("0") and len(num) > 1:
                domid = int(num[1:], 8)
            else:
                domid = int(num, 10)
        except ValueError:
            raise XsError("EINVAL", f"permission {text!r} is not n|r|w|b followed by a domid") from None
        if domid >= _DOMID_MAX:
            raise XsError("EINVAL", f"permission {text!r}: domid {domid} is out of range")
        return cls(text[0], domid)


def parse_perms(texts: list[str]) -> tuple[Perm, ...]:
    if not texts:
        raise XsError("EINVAL", "a permission list needs at least the owner")
    return tuple(Perm.parse(t) for t in texts)
