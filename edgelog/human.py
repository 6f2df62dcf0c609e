"""Figures for people: ages, sizes, counts, instants; and colour only where it helps.

Every function here returns text; none prints.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from typing import TextIO

from .errors import EdgelogError


def duration(seconds: float | None) -> str:
    """2 h 13 min, 4 min 05 s, 12 s, 3 d 4 h; '-' for None."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 0:
        return "-" + duration(-seconds)
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 and seconds != s else f"{s} s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s" if minutes < 10 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def size(n: float | None) -> str:
    """Bytes in binary units: 512 B, 12.3 MiB, 1.5 GiB."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop always returns


def count(n: int | None) -> str:
    """12 345 (a thin space groups thousands in any language)."""
    return "-" if n is None else f"{n:,}".replace(",", "\u202f")


def rate(rows_per_s: float | None) -> str:
    if rows_per_s is None or not math.isfinite(rows_per_s):
        return "unknown"
    return f"{count(round(rows_per_s))} rows/s" if rows_per_s >= 10 else f"{rows_per_s:.1f} rows/s"


def instant(ts: float | None) -> str:
    """UTC, to the second: 2025-06-01 14:03:12 UTC."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|min|m|s)?", re.IGNORECASE)
_SECONDS = {"d": 86400, "h": 3600, "min": 60, "m": 60, "s": 1, None: 1}


def parse_duration(text: str) -> float:
    """'90' or '90s', '15m', '2h', '1d', '1h30m' -> seconds. Raises EdgelogError."""
    cleaned = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(cleaned):
        match = _DURATION.match(cleaned, pos)
        if not match or match.end() == pos:
            raise EdgelogError(f"{text!r} is not a duration (say e.g. 90s, 15m, 2h, 1d)")
        total += float(match[1]) * _SECONDS[match[2]]
        pos = match.end()
    if not cleaned:
        raise EdgelogError("empty duration (say e.g. 90s, 15m, 2h, 1d)")
    return total


# -- colour ----------------------------------------------------------------------------

_CODES = {"green": "32", "yellow": "33", "red": "31", "bold": "1", "dim": "2"}


def use_colour(stream: TextIO = sys.stdout) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def paint(text: str, colour: str, enabled: bool) -> str:
    return f"\x1b[{_CODES[colour]}m{text}\x1b[0m" if enabled else text
