"""Readings of a simulated plant with bad days in it, and syncing them with the aggregate tables.

Shared by the tests of the aggregate tables, `export --every` and the report read
from them. The values are the simulator's (`simulate.plant_values`), rounded to
float32 as the meter sends them; the plant's schedule holds an outage, an
overload (frequency and voltage sag) and a held low voltage; some polls fail,
some values are NaN (None; the frequency of a dead bus too), some readings were
taken with the clock unsynchronised.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from helpers import COLUMNS, UNITS, LoggerDB

from edgelog.buffer import Buffer
from edgelog.buffer.store import NewReading
from edgelog.profiles import PAC3100
from edgelog.simulate import Disturbance, Plant, as_float32, plant_values
from edgelog.sync import MariaDBSink, SyncWorker
from edgelog.sync.aggregates import Aggregates
from edgelog.sync.schema import column_types

SITE = "test-site"
TYPES = column_types(PAC3100.registers)
#: 2026-06-01 00:00 in Brasília (UTC-3), a Monday
START = dt.datetime(2026, 6, 1, 3, 0, tzinfo=dt.UTC).timestamp()


def bad_plant(start: float = START, every_day: bool = False) -> Plant:
    """An outage, an overload and a held low voltage, at 19:00, 20:00 and 03:00 local."""
    if every_day:
        return Plant(
            hydraulic_w=10_000.0,
            schedule=(
                Disturbance("outage", 600.0, daily_s=19 * 3600.0),
                Disturbance("overload", 1200.0, daily_s=20 * 3600.0, value=1.3),
                Disturbance("voltage", 900.0, daily_s=3 * 3600.0, value=114.0),
            ),
            day_variation=0.1,
        )
    return Plant(
        hydraulic_w=10_000.0,
        schedule=(
            Disturbance("outage", 600.0, start=start + 1800.0),
            Disturbance("overload", 1200.0, start=start + 3900.0, value=1.3),
            Disturbance("voltage", 900.0, start=start + 6000.0, value=114.0),
        ),
    )


def readings(
    meter: str, start: float, span_s: float, step: float, plant: Plant, jitter: float = 0.0
) -> list[NewReading]:
    """One reading every `step` seconds of [start, start + span_s), values as float32."""
    out = []
    n = int(span_s / step)
    for k in range(n):
        t = start + k * step + jitter
        if k % 487 == 13:
            out.append(NewReading(meter, t, None, "timeout: no answer in 0.5 s", True))
            continue
        values: dict[str, float | None] = {
            c: as_float32(v) for c, v in plant_values(t, plant=plant).items() if c in UNITS
        }
        if k % 211 == 5 or values["tensao_l1_n"] == 0.0:
            values["frequencia"] = None  # NaN from the meter (a dead bus has no frequency)
        if k % 307 == 7:
            values["corrente_neutro"] = None
        out.append(NewReading(meter, t, values, None, not 900 <= k % 5000 < 960))
    return out


def append(path: Path, rows: Iterable[NewReading]) -> None:
    buffer = Buffer(path, COLUMNS)
    try:
        buffer.append_many(list(rows))
    finally:
        buffer.close()


def sync(path: Path, logger_db: LoggerDB, aggregates: bool = True, stop_after: int | None = None) -> int:
    """Drain the buffer with the real worker (FLOAT columns; aggregates kept unless False);
    with `stop_after`, stop the drain once that many batches are sent (as SIGTERM would)."""
    buffer = Buffer(path, create=False)
    sink = MariaDBSink(logger_db.config(), SITE, types=TYPES)
    try:
        kept = Aggregates(sink, buffer) if aggregates else None
        worker = SyncWorker(buffer, sink, UNITS, 2000, aggregates=kept)
        batches = [0]

        def progress(_total: int) -> None:
            batches[0] += 1

        def stop() -> bool:
            return stop_after is not None and batches[0] >= stop_after

        return worker.drain(should_stop=stop, progress=progress)
    finally:
        sink.close()
        buffer.close()
