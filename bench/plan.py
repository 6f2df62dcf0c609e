"""How big each measurement of `python -m bench` is: the full run and `--quick` (CI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Each size of the plan: (with --quick, in the full run).
SIZES: dict[str, tuple[Any, Any]] = {
    # 1. the drain and its references (and the live drain's backlog: n_live)
    "n_drain": (20_000, 1_000_000),
    "naive_sample": (300, 2_000),
    "n_compare": (10_000, 100_000),  # write paths side by side, and the profile
    "n_tcp": (10_000, 100_000),
    "scaling_n": ((5_000, 20_000), (10_000, 100_000, 1_000_000)),
    "n_live": (50_000, 1_000_000),
    "live_interval_s": (0.1, 0.1),  # 2. and 3-5.: `edgelog run` at 10 Hz
    "after_drain_s": (2.0, 10.0),
    "cadence_s": (15.0, 600.0),  # 3-5.: the steady run
    "meters": ((1, 8, 32), (1, 8, 32)),  # 6.: meters on buses of up to four
    "meters_backlog": (10_000, 100_000),
    "meters_interval_s": (1.0, 1.0),
    "meters_run_s": (4.0, 10.0),
    "history_rows": (10_000, 100_000),  # rows of another logger in every measurement's table
    # 7.: the measured window of the card-wear run (1 Hz), after wear_warmup_s
    "wear_s": (15.0, 600.0),
    "wear_warmup_s": (5.0, 15.0),
    "layout_rows": (10_000, 100_000),  # `--only layout`: bytes per row, the aggregates' cost
    "layout_pairs": (1, 3),
}


@dataclass(frozen=True)
class Plan:
    quick: bool
    n_drain: int
    naive_sample: int
    n_compare: int
    n_tcp: int
    scaling_n: tuple[int, ...]
    n_live: int
    live_interval_s: float
    after_drain_s: float
    cadence_s: float
    meters: tuple[int, ...]
    meters_backlog: int
    meters_interval_s: float
    meters_run_s: float
    history_rows: int
    wear_s: float
    wear_warmup_s: float
    layout_rows: int
    layout_pairs: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        return cls(quick=quick, **{name: sizes[0 if quick else 1] for name, sizes in SIZES.items()})
