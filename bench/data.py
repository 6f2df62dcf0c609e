"""Big buffers, fast: rows of the default profile written straight into a buffer file.

Polling a simulator a million times would take a day at 10 Hz; instead the rows
are generated and inserted with one `executemany` into a buffer that
`edgelog.buffer.Buffer` created (so the schema, buffer_id and meta are the real
ones). The values are the simulator's own (`Pac3100Simulator.current_values()`:
the plant's load curve, float32 values rounded to float32) at a few thousand
instants of the backlog, each row multiplied by its own small jitter and rounded
to float32 again, so no two readings carry the same digits (as with a real meter,
whose values never repeat exactly; repeated values would flatter any cache).
One row in 1000 is a failed poll (a gap: `error` set, values NULL).

This is the one place the bench writes into a buffer file itself: `Buffer.append_many()`
builds one INSERT a row through peewee's query builder (about 500 µs a row on the
bench machine), which would take over eight minutes for a million rows. Everything
the bench reads from a buffer goes through `Buffer` (`read_rows`, `sample_rows`).
"""

from __future__ import annotations

import sqlite3
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgelog.buffer import Buffer
from edgelog.profiles import PAC3100
from edgelog.simulate import Pac3100Simulator

POOL = 2048  # distinct value vectors from the simulator
JITTERS = 1021  # distinct jitter vectors (prime, so (pool, jitter) pairs rarely repeat)
GAP_EVERY = 1000
GAP_ERROR = "timeout: no answer in 0.5 s"


@dataclass(frozen=True)
class BuiltBuffer:
    path: Path
    rows: int
    meters: tuple[str, ...]
    buffer_id: str
    seconds: float  # time taken to build it
    file_bytes: int


def profile_columns() -> list[str]:
    return [r.name for r in PAC3100.registers]


def _value_pool(start: float, span_s: float, columns: Sequence[str]) -> list[list[float]]:
    now = [start]
    sim = Pac3100Simulator(clock=lambda: now[0])
    pool = []
    for k in range(POOL):
        now[0] = start + span_s * k / POOL
        values = sim.current_values()
        pool.append([float(values.get(c, 0.0)) for c in columns])
    return pool


def _jitter_pool(n: int) -> list[list[float]]:
    # deterministic, ±0.05 %: 127 V -> ±0.06 V, well inside the plant's own noise
    return [
        [1.0 + 5e-4 * (((j * 7919 + c * 104729) % 2001) - 1000) / 1000 for c in range(n)]
        for j in range(JITTERS)
    ]


def generate_rows(
    n: int,
    meters: Sequence[str] = ("pac1",),
    interval_s: float = 0.1,
    end: float | None = None,
) -> Iterator[tuple[Any, ...]]:
    """`n` rows (meter, measured_at, clock_ok, error, *values): one reading per meter per
    tick of `interval_s`, the last tick just before `end`."""
    columns = profile_columns()
    float32 = [r.type == "float32" for r in PAC3100.registers]
    ticks = -(-n // len(meters))
    end = time.time() if end is None else end
    start = end - ticks * interval_s
    pool = _value_pool(start, ticks * interval_s, columns)
    jitters = _jitter_pool(len(columns))
    nulls = (None,) * len(columns)
    k = 0
    for tick in range(ticks):
        at = start + tick * interval_s + 0.0021  # the meter answers ~2 ms after the grid instant
        for meter in meters:
            if k >= n:
                return
            if k % GAP_EVERY == GAP_EVERY - 1:
                yield (meter, at + 0.5, 1, GAP_ERROR, *nulls)
            else:
                base = pool[k * POOL // n]
                jitter = jitters[k % JITTERS]
                values = [b * j for b, j in zip(base, jitter, strict=True)]
                rounded = array("f", values).tolist()  # float32, as the registers carry them
                yield (
                    meter,
                    at,
                    1,
                    None,
                    *(r if f else v for r, v, f in zip(rounded, values, float32, strict=True)),
                )
            k += 1


def build_buffer(
    path: Path,
    n: int,
    meters: Sequence[str] = ("pac1",),
    interval_s: float = 0.1,
    end: float | None = None,
) -> BuiltBuffer:
    """A buffer file at `path` (replaced) holding `n` unsent rows."""
    started = time.monotonic()
    for ext in ("", "-wal", "-shm"):
        Path(f"{path}{ext}").unlink(missing_ok=True)
    columns = profile_columns()
    buffer = Buffer(path, columns)
    buffer_id = buffer.buffer_id
    value_columns = list(buffer.value_columns)
    buffer.close()
    if value_columns != columns:
        raise RuntimeError(f"buffer columns {value_columns} differ from the profile's {columns}")
    names = ", ".join(f'"{c}"' for c in ["meter", "measured_at", "clock_ok", "error", *columns])
    marks = ", ".join("?" * (4 + len(columns)))
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # a bench fixture, not a reading: no fsync per page
        with conn:
            conn.executemany(
                f"INSERT INTO readings ({names}) VALUES ({marks})",
                generate_rows(n, meters, interval_s, end),
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return BuiltBuffer(
        path=path,
        rows=n,
        meters=tuple(meters),
        buffer_id=buffer_id,
        seconds=time.monotonic() - started,
        file_bytes=path.stat().st_size,
    )


def read_rows(path: Path, after: int = 0, limit: int = -1) -> list[tuple[Any, ...]]:
    """Rows with seq > `after` as `Buffer.unsent()` gives them (all of them: `limit` -1)."""
    buffer = Buffer(path, create=False, check=False)
    try:
        rows: list[tuple[Any, ...]] = []
        while limit < 0 or len(rows) < limit:
            want = 50_000 if limit < 0 else min(50_000, limit - len(rows))
            batch = buffer.unsent(want, after=after)
            if not batch:
                break
            rows += batch
            after = batch[-1][0]
        return rows
    finally:
        buffer.close()


def sample_rows(path: Path, step: int, limit: int) -> list[tuple[Any, ...]]:
    """Every `step`-th row (seq % step == 0), at most `limit`, as `Buffer.unsent()` gives them."""
    buffer = Buffer(path, create=False, check=False)
    try:
        out = []
        for k in range(1, limit + 1):
            row = buffer.unsent(1, after=k * step - 1)
            if row and row[0][0] == k * step:
                out.append(row[0])
        return out
    finally:
        buffer.close()
