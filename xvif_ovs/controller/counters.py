"""Our flows' packet counters, per cookie, as totals that never go backwards.

The drop reports (the switch's worker, every 10 s) and the metrics (each scrape) both
want a vif's drops by kind; each is a sum over several flows, and a flow replaced (an ip=
change, a rule edited, an HVM guest's tap gone) starts again from 0, which a plain sum
would show as the counter going backwards, and Prometheus as a reset followed by a
false increase. So each flow's own counter is followed and only its increases are
added. One FlowCounters per switch and purpose, shared by both readers: a dump of every
drop flow costs seconds at 4000 vifs, so it happens only when an aggregate request says
the counters moved, and at most once per DUMP_INTERVAL whoever asks.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..pipeline.flow import purpose_match

DUMP_INTERVAL = 10.0
REQUEST_TIMEOUT = 5.0


class FlowCounters:
    def __init__(self, purpose: int) -> None:
        self.cookie, self.mask = purpose_match(purpose)
        self._lock = threading.Lock()
        self._aggregate: tuple[int, int, int] | None = None  # (packets, bytes, flows) at the last dump
        self._dumped_at = float("-inf")
        self._flows: dict[tuple, tuple[int, int]] = {}  # each flow's own counters at the last dump
        self._totals: dict[int, tuple[int, int]] = {}  # cookie -> (packets, bytes), never decreasing
        self.dumps = 0

    def read(
        self, s: Any, aggregate: tuple[int, int, int] | None = None, timeout: float = REQUEST_TIMEOUT
    ) -> dict[int, tuple[int, int]]:
        """cookie -> (packets, bytes) of the flows present at the last dump. ``aggregate``:
        the purpose's (packets, bytes, flows) if the caller already asked the switch."""
        with self._lock:
            if aggregate is None:
                aggregate = s.aggregate(self.cookie, self.mask, timeout)
            fresh = time.monotonic() - self._dumped_at < DUMP_INTERVAL
            if aggregate == self._aggregate or (fresh and self._aggregate is not None):
                return self._totals
            if aggregate[0] == 0 and aggregate[1] == 0:
                # Nothing ever matched: every flow's counter is 0, no dump needed (at start
                # on a big host that saves the switch's worker seconds). Readers that want
                # zeros for each vif make them from what they know exists.
                self._flows, self._totals, self._aggregate = {}, {}, aggregate
                return self._totals
            stats = s.flow_stats(self.cookie, self.mask, timeout)
            self.dumps += 1
            flows: dict[tuple, tuple[int, int]] = {}
            totals: dict[int, tuple[int, int]] = {}
            for st in stats:
                key = (st.cookie, st.table_id, st.priority, tuple(st.match.items()))
                pk, by = st.packet_count, st.byte_count
                was = self._flows.get(key)
                # A flow whose counter is below what it was is a new flow in its place.
                dp, db = (pk - was[0], by - was[1]) if was is not None and pk >= was[0] else (pk, by)
                t = totals.get(st.cookie) or self._totals.get(st.cookie, (0, 0))
                totals[st.cookie] = (t[0] + dp, t[1] + db)
                flows[key] = (pk, by)
            # A cookie none of whose flows is left (its vif went away) is forgotten.
            self._flows, self._totals = flows, totals
            self._aggregate, self._dumped_at = aggregate, time.monotonic()
            return totals
