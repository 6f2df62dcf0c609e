"""`edgelog tail`: the newest reading of each meter, as the buffer has it, refreshed.

For commissioning and curiosity on site: it reads the local buffer (so it works
while `edgelog run` runs, and without MariaDB), never the meter itself. One
column per meter, one line per register with its unit; a failed newest poll is
shown with its error above the last good values. On a terminal each frame
replaces the previous one; elsewhere frames follow each other.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from . import human
from .buffer import Buffer
from .config import Config
from .errors import EdgelogError

#: Shown in a larger unit: (unit, factor, shown unit).
_SCALED = {"Wh": (1e-3, "kWh"), "varh": (1e-3, "kvarh"), "VAh": (1e-3, "kVAh")}


def fmt_value(value: float | None, unit: str) -> tuple[str, str]:
    """(number, unit) for display: thin-space thousands, Wh shown as kWh."""
    if value is None or not math.isfinite(value):
        return "NULL", ""
    factor, unit = _SCALED.get(unit, (1.0, unit))
    value *= factor
    digits = 3 if abs(value) < 1000 else 2
    return f"{value:,.{digits}f}".replace(",", "\u202f"), unit


def _cell(value: float | None, unit: str, width: int) -> str:
    number, shown = fmt_value(value, unit)
    return f"{number:>{width - 6}} {shown:<5}"


class Tail:
    def __init__(self, cfg: Config, meter: str | None = None):
        self.cfg = cfg
        self.units = cfg.columns()
        names = [m.name for m in cfg.meters]
        if meter is not None and meter not in names:
            raise EdgelogError(f"tail: no meter {meter!r} in the config (meters: {', '.join(names)})")
        self.meters = [meter] if meter else names
        self.buffer = Buffer(cfg.buffer.path, create=False)
        self.columns = [c for c in self.buffer.value_columns if c in self.units] or list(
            self.buffer.value_columns
        )

    def close(self) -> None:
        self.buffer.close()

    def _newest(self, meter: str, good_only: bool) -> dict[str, Any] | None:
        row = self.buffer.newest(meter, good_only)
        if row is None:
            return None
        return {
            "at": row.measured_at,
            "error": row.error,
            "clock_ok": row.clock_ok,
            "values": {c: row.values.get(c) for c in self.columns},
        }

    def frame(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        newest = {m: self._newest(m, good_only=False) for m in self.meters}
        good = {
            m: (r if r is None or r["error"] is None else self._newest(m, good_only=True))
            for m, r in newest.items()
        }
        name_w = max([len(c) for c in self.columns] + [8])
        col_w = max([len(m) for m in self.meters] + [26])
        lines = [f"edgelog tail · site {self.cfg.site} · {human.instant(now)}", ""]
        lines.append(" " * name_w + "  " + "  ".join(f"{m:>{col_w}}" for m in self.meters))

        def when(m: str) -> str:
            row = good[m]
            if row is None:
                return "no reading yet"
            clock = "" if row["clock_ok"] else " (clock?)"
            at = time.strftime("%H:%M:%S", time.gmtime(row["at"]))
            return f"{at} UTC, {human.duration(now - row['at'])} ago{clock}"

        lines.append(f"{'reading':<{name_w}}  " + "  ".join(f"{when(m):>{col_w}}" for m in self.meters))
        failures = {m: r for m, r in newest.items() if r is not None and r["error"] is not None}
        for column in self.columns:
            unit = self.units.get(column, "")
            cells = []
            for m in self.meters:
                row = good[m]
                cells.append(f"{'-':>{col_w}}" if row is None else _cell(row["values"][column], unit, col_w))
            lines.append(f"{column:<{name_w}}  " + "  ".join(cells))
        for m, row in failures.items():
            lines.append("")
            lines.append(f"{m}: newest poll FAILED {human.duration(now - row['at'])} ago: {row['error']}")
            if good[m] is not None:
                lines.append(f"{m}: the values above are from the last good reading")
        return "\n".join(line.rstrip() for line in lines)


def run(
    cfg: Config, once: bool = False, every_s: float = 1.0, meter: str | None = None, out: TextIO | None = None
) -> int:
    out = out or sys.stdout
    if every_s <= 0:
        raise EdgelogError("tail: --every must be more than 0 seconds")
    tail = Tail(cfg, meter)
    clear = not once and out.isatty()
    try:
        while True:
            text = tail.frame()
            if clear:
                out.write("\x1b[H\x1b[2J")  # home, clear screen: the new frame replaces the old one
            out.write(text + "\n")
            if once:
                return 0
            if not clear:
                out.write("\n")
            out.flush()
            time.sleep(every_s)
    except KeyboardInterrupt:
        return 0
    finally:
        tail.close()
