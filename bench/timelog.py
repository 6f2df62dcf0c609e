"""Reading the timings log an `edgelog` process writes with ``$EDGELOG_TIMINGS`` set
(edgelog/timings.py: one JSON line per committed row, writer task, move of the sync
position, drain, and each meter's cadence counters at stop), and what the scenarios
derive from it."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    """A row the buffer writer committed."""

    meter: str
    slot: float  # the grid instant its poll was for (a skipped slot's gap: that slot)
    poll: float | None  # when the poll started; None for a skipped slot's gap
    answer: float  # measured_at
    committed: float
    error: bool


@dataclass(frozen=True)
class Reading:
    """A row from a poll of `edgelog run`, its slot as an integer (slot / interval)."""

    meter: str
    slot: int
    poll: float
    answer: float
    committed: float
    error: bool
    interval: float

    @property
    def grid_to_durable(self) -> float:
        return self.committed - self.slot * self.interval

    @property
    def response_to_durable(self) -> float:
        return self.committed - self.answer


@dataclass
class TimingLog:
    rows: list[Row] = field(default_factory=list)
    tasks: list[tuple[float, float]] = field(default_factory=list)  # (start, end)
    sent: list[tuple[float, int]] = field(default_factory=list)  # (at, upto)
    drains: list[tuple[float, float, int]] = field(default_factory=list)  # (start, end, sent)
    #: the destination's statements by path after the last drain (`MariaDBSink.stats`)
    sink_stats: dict[str, int] = field(default_factory=dict)
    #: each meter's grid counters, written when its bus thread ended
    cadence: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0  # bytes of the file read so far

    @classmethod
    def read(cls, path: Path) -> TimingLog:
        log = cls()
        log.follow(path)
        return log

    def follow(self, path: Path) -> TimingLog:
        """Add the lines written to `path` since the last call (a whole line at a time)."""
        try:
            with path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            self._add(json.loads(line))
        return self

    def _add(self, r: dict[str, Any]) -> None:
        ev = r["ev"]
        if ev == "reading":
            self.rows.append(Row(r["meter"], r["slot"], r["poll"], r["answer"], r["committed"], r["error"]))
        elif ev == "task":
            self.tasks.append((r["start"], r["end"]))
        elif ev == "sent":
            self.sent.append((r["at"], r["upto"]))
        elif ev == "drain":
            self.drains.append((r["start"], r["end"], r["sent"]))
            self.sink_stats = r["sink"] or {}
        elif ev == "cadence":
            keys = ("interval_s", "runs", "missed", "clock_jumps")
            self.cadence.append({key: r[key] for key in keys})

    @property
    def sent_upto(self) -> int:
        return max((upto for _, upto in self.sent), default=0)

    def sent_at(self, upto: int) -> float | None:
        """When the position first reached `upto`."""
        return next((at for at, seq in self.sent if seq >= upto), None)

    def readings(self, interval: float) -> list[Reading]:
        """The rows of polls (not the gaps stored for skipped slots), in commit order."""
        return [
            Reading(r.meter, round(r.slot / interval), r.poll, r.answer, r.committed, r.error, interval)
            for r in self.rows
            if r.poll is not None
        ]

    @property
    def skipped(self) -> int:
        """Gaps stored for slots a bus was too busy to poll (the cadence's own missed count)."""
        return sum(1 for r in self.rows if r.poll is None)


def gap_causes(
    live: Sequence[Reading], tasks: Sequence[tuple[float, float]], interval: float
) -> dict[str, int]:
    """Missed samples of one meter, by what kept the poll thread from the next slot: a meter
    answer slower than the interval, a writer task (housekeeping) at the same time, or
    something else (the poll thread not scheduled in time: CPU, GIL)."""
    causes: dict[str, int] = defaultdict(int)
    for before, after in itertools.pairwise(live):
        gap = after.slot - before.slot - 1
        if gap <= 0:
            continue
        if before.answer - before.poll > interval:
            causes["a meter answer slower than the interval"] += gap
        elif any(a < after.poll and b > before.poll for a, b in tasks):
            causes["during a housekeeping pass (prune)"] += gap
        else:
            causes["other (poll thread not scheduled in time)"] += gap
    return dict(causes)
