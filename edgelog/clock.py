"""Is the wall clock trustworthy? The Pi has no real-time clock.

After a power cut it boots with the time fake-hwclock saved (hours or days in
the past) until NTP/chrony synchronises it. The kernel knows which: adjtimex(2)
returns TIME_ERROR while the clock is not synchronised. Readings taken then are
stored with ``clock_ok = 0``; their identity never depends on the clock anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

#: No plausible reading can be older than this (2026-01-01T00:00:00Z).
EARLIEST_PLAUSIBLE = 1767225600.0
_TIME_ERROR = 5
_libc = None


def utc_text(ts: float, iso: bool = False) -> str:
    """Unix seconds -> UTC with milliseconds (rounded): 'YYYY-MM-DD HH:MM:SS.fff', the text
    MariaDB's DATETIME(3) takes, or with `iso` 'YYYY-MM-DDTHH:MM:SS.fffZ'."""
    seconds, millis = divmod(round(ts * 1000), 1000)
    fmt = "%Y-%m-%dT%H:%M:%S" if iso else "%Y-%m-%d %H:%M:%S"
    return time.strftime(fmt, time.gmtime(seconds)) + f".{millis:03d}" + ("Z" if iso else "")


def utc_iso(ts: float | None) -> str | None:
    """Unix seconds -> 'YYYY-MM-DDTHH:MM:SS.fffZ' (UTC, the form of JSON and CSV output);
    None stays None."""
    return None if ts is None else utc_text(ts, iso=True)


def kernel_synchronised() -> bool | None:
    """True/False from adjtimex(2); None where it cannot be asked."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        timex = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
        state = _libc.adjtimex(timex)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR
