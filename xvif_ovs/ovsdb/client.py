"""A short-lived OVSDB client for the hotplug hook.

The hook runs once per vif and libxl waits for it, so it must not pay for what it does
not use: the IDL would monitor (download) every Port and Interface row, O(ports) per
hook. Plain `transact` requests with OVSDB `wait` operations give the same atomicity as
the IDL's verify-and-retry: the transaction commits only if what the hook read is
still true.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import XvifError
from .jsonrpc import JsonRpc, JsonRpcError

DEFAULT_DB = "/var/run/openvswitch/db.sock"
DB_NAME = "Open_vSwitch"


class OvsdbUnavailable(XvifError):
    """ovsdb-server cannot be reached."""


class OvsdbError(XvifError):
    """ovsdb-server refused a transaction."""


class ConditionFailed(Exception):
    """A `wait` operation failed: what the transaction assumed changed meanwhile."""


def locate(remote: str | None = None) -> str:
    """--db, then XVIF_OVSDB, then OVS_RUNDIR/db.sock as ovs-vsctl does, then the default."""
    if remote:
        return remote
    if os.environ.get("XVIF_OVSDB"):
        return os.environ["XVIF_OVSDB"]
    rundir = os.environ.get("OVS_RUNDIR")
    return f"unix:{rundir}/db.sock" if rundir else f"unix:{DEFAULT_DB}"


class Ovsdb:
    def __init__(self, remote: str | None = None, timeout: float = 10.0) -> None:
        self.remote = locate(remote)
        try:
            self._rpc = JsonRpc(self.remote, timeout)
        except JsonRpcError as e:
            raise OvsdbUnavailable(str(e)) from None
        except OSError as e:
            raise OvsdbUnavailable(
                f"cannot connect to OVSDB at {self.remote}: {e.strerror or e}; is ovsdb-server running? "
                "(set OVS_RUNDIR, or XVIF_OVSDB=unix:/path/db.sock)"
            ) from None

    def close(self) -> None:
        self._rpc.close()

    def __enter__(self) -> Ovsdb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, params: list[Any]) -> Any:
        try:
            return self._rpc.call(method, params)
        except JsonRpcError as e:
            raise OvsdbError(f"OVSDB refused {method}: {e}") from None
        except TimeoutError:
            raise OvsdbUnavailable(f"OVSDB at {self.remote} did not answer in time") from None
        except OSError as e:
            raise OvsdbUnavailable(f"lost the connection to OVSDB at {self.remote}: {e}") from None

    def transact(self, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run ``ops`` atomically. A failed `wait` raises ConditionFailed; any other error
        OvsdbError, naming the operation that failed."""
        results = self._call("transact", [DB_NAME, *ops])
        for i, r in enumerate(results):
            if r is not None and "error" in r:
                if r["error"] == "timed out" and i < len(ops) and ops[i].get("op") == "wait":
                    raise ConditionFailed(ops[i])
                raise OvsdbError(f"OVSDB transaction failed at {ops[min(i, len(ops) - 1)].get('op')}: {r}")
        return results

    def select(self, table: str, where: list, columns: list[str]) -> list[dict[str, Any]]:
        return self.transact([{"op": "select", "table": table, "where": where, "columns": columns}])[0]["rows"]


def ovs_map(d: dict[str, str]) -> list:
    return ["map", [[k, v] for k, v in sorted(d.items())]]


def ovs_set(values: list | tuple) -> list:
    return ["set", list(values)]


def from_set(value: Any) -> list:
    """OVSDB encodes a set of one as the bare value and other sizes as ["set", [...]]."""
    if isinstance(value, list) and value and value[0] == "set":
        return list(value[1])
    return [value]


def from_map(value: Any) -> dict:
    return dict(value[1]) if isinstance(value, list) and value and value[0] == "map" else {}
