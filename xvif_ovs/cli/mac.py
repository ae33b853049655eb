"""`xvif-ovs mac new`: fresh MACs in Xen's OUI (00:16:3e), none in use on this host.

JSON shape (`--json`): {"macs": [str]}
"""

from __future__ import annotations

import json
import secrets

from ..errors import XvifError
from ..inspect.hoststate import read_host
from ..model.vifspec import XEN_OUI


def in_use(db: str | None, xenstore: str | None) -> set[str]:
    host = read_host(db, xenstore)
    used = {v.mac.lower() for v in host.vifs.values() if v.mac}
    used |= {p.attached_mac.lower() for b in host.bridges.values() for p in b.ports if p.attached_mac}
    return used


def new_macs(count: int, used: set[str]) -> list[str]:
    if not 1 <= count <= 4096:
        raise XvifError(f"--count {count}: ask for 1-4096 MACs")
    out: list[str] = []
    while len(out) < count:
        b = secrets.token_bytes(3)
        mac = XEN_OUI + "".join(f":{x:02x}" for x in b)
        if mac not in used and mac not in out:
            out.append(mac)
    return out


def run(args) -> tuple[str, int]:  # noqa: ANN001
    macs = new_macs(args.count, in_use(args.db, args.xenstore))
    return (json.dumps({"macs": macs}) + "\n" if args.json else "\n".join(macs) + "\n"), 0
