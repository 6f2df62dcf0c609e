"""For `report` on a period without readings: the nearest local day that has some.

Only the sources' public face is used (`export.open_source(...).count()`, one
indexed COUNT per step): an exponential search outwards from the period, then a
bisection, one day at a time, up to `HORIZON_DAYS` either side.
"""

from __future__ import annotations

import datetime as dt

from ..config import Config
from ..export import Query, open_source
from .data import Period, _add_days

HORIZON_DAYS = 400


def nearest_day(cfg: Config, period: Period, meter: str, source: str) -> dt.date | None:
    """The local day closest to the period that holds a reading of `meter` (before wins a tie)."""
    before = _search(cfg, period, meter, source, -1)
    after = _search(cfg, period, meter, source, +1)
    if before is None or after is None:
        return before or after
    return (
        before
        if period.start.date() - before <= after - (period.end.date() - dt.timedelta(days=1))
        else after
    )


def _search(cfg: Config, period: Period, meter: str, source: str, direction: int) -> dt.date | None:
    def has(days: int) -> bool:
        """Readings between the period's edge and `days` local days beyond it?"""
        if direction < 0:
            start, end = _add_days(period.start, -days).timestamp(), period.start_ts
        else:
            start, end = period.end_ts, _add_days(period.end, days).timestamp()
        src = open_source(cfg, Query(start, end, cfg.site, meter, gaps=False), source)
        try:
            return src.count() > 0
        finally:
            src.close()

    hi = 1
    while not has(hi):
        if hi >= HORIZON_DAYS:
            return None
        hi = min(2 * hi, HORIZON_DAYS)
    lo = hi // 2  # has(lo) is False (or lo == 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if has(mid) else (mid, hi)
    edge = period.start if direction < 0 else _add_days(period.end, hi - 1)
    return (_add_days(edge, -hi) if direction < 0 else edge).date()
