"""Percentiles and the other summaries the scenarios report."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0..100), nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def stats_ms(values: Sequence[float]) -> dict[str, Any]:
    """p50, p99 and max of durations in seconds, as milliseconds; and how many."""

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    return {
        "p50_ms": ms(percentile(values, 50)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(max(values) if values else None),
        "n": len(values),
    }


def missed(slots: Sequence[int]) -> int:
    """Slots (grid instants, as integers) between the first and the last with no reading."""
    if len(slots) < 2:
        return 0
    return (max(slots) - min(slots) + 1) - len(set(slots))
