"""The timings log: when each reading was polled, answered and committed, and when the
sync position moved, for measuring edgelog from outside (`python -m bench`, or a site
under study). Off unless the environment names a file:

    EDGELOG_TIMINGS=/run/edgelog-timings.jsonl edgelog run

The process then appends one JSON object a line, each line flushed as it is written
(a reader can follow the file; a kill -9 loses no line written):

* ``{"ev": "reading", "meter", "slot", "poll", "answer", "committed", "error"}``: a row
  the buffer writer stored. ``slot`` is the grid instant the poll was for, ``poll``
  when it started, ``answer`` the row's ``measured_at`` (taken right after the meter's
  answer, or when the poll failed), ``committed`` when the commit holding it returned:
  fsync()ed, or dropped if the buffer could not take it (then logged and counted in
  ``dropped_total``). ``error`` is true for a gap. A gap stored for a slot the bus was
  too busy to poll has ``poll`` null, and ``slot`` and ``answer`` are its grid instant.
* ``{"ev": "task", "start", "end"}``: a task of the buffer writer thread (a
  housekeeping step), which holds the commits handed over meanwhile.
* ``{"ev": "sent", "upto", "rows", "at"}``: the sync position moved to seq ``upto``
  after the destination committed ``rows`` rows.
* ``{"ev": "drain", "start", "end", "sent", "sink"}``: one drain (`edgelog sync
  --drain`, or a round of `edgelog run`'s sync thread), the rows it sent, and the
  destination's counts of statements by path so far (`MariaDBSink.stats`; null
  for a destination without them).
* ``{"ev": "cadence", "meter", "interval_s", "runs", "missed", "clock_jumps", "at"}``:
  a meter's grid counters (`cadence.GridStats`), when its bus thread ends.

Times are seconds since the epoch on the wall clock (`time.time()`), the clock of
``measured_at`` and of the sampling grid, with microseconds: differences are
meaningful while the clock is not stepped.

Cost: off, one attribute test per commit and per sync batch (and a clock read per
poll, for ``poll``). On, a line written per event, never fsync()ed. The file counts
in the process's ``/proc/<pid>/io`` ``write_bytes`` unless it is on a tmpfs: put it
on one (/run, /dev/shm) while measuring what the buffer writes. It is opened
append-only, mode 0600, never through a symlink, and only if it is a regular file;
if it cannot be, one warning is logged and the timings stay off: a measuring aid
never stops a logger. It holds times, meter names and row counts, nothing else.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import stat
import threading
import time
from typing import Any, NamedTuple, TextIO

log = logging.getLogger(__name__)

ENV_VAR = "EDGELOG_TIMINGS"


class Polled(NamedTuple):
    """What a poll was for, carried with its reading to the buffer writer."""

    slot: float | None  # the grid instant the cadence ran the poll for
    at: float  # when the poll started (wall clock)


class Timings:
    """The timings log of one process; `on` is False when there is no file."""

    def __init__(self, path: str | os.PathLike[str] | None = None):
        self.path = path
        self._file: TextIO | None = None
        self._lock = threading.Lock()  # the writer and the sync thread both write
        if path:
            self._file = _open(os.fspath(path))

    @property
    def on(self) -> bool:
        return self._file is not None

    def reading(self, meter: str, polled: Polled | None, answer: float, error: bool) -> None:
        """A row committed just now (see the module's docstring)."""
        slot = answer if polled is None else polled.slot
        poll = None if polled is None else polled.at
        self._line(
            {"ev": "reading", "meter": meter, "slot": slot, "poll": poll, "answer": answer, "error": error},
            "committed",
        )

    def task(self, start: float) -> None:
        """A writer task that started at `start` ended just now."""
        self._line({"ev": "task", "start": start}, "end")

    def sent(self, upto: int, rows: int) -> None:
        """The sync position moved to `upto` just now."""
        self._line({"ev": "sent", "upto": upto, "rows": rows}, "at")

    def drain(self, start: float, sent: int, sink: dict[str, int] | None = None) -> None:
        """A drain that started at `start` and sent `sent` rows ended just now."""
        self._line({"ev": "drain", "start": start, "sent": sent, "sink": sink}, "end")

    def cadence(self, meter: str, interval_s: float, runs: int, missed: int, clock_jumps: int) -> None:
        """The grid counters of `meter`, whose bus thread ends now."""
        counters = {"runs": runs, "missed": missed, "clock_jumps": clock_jumps}
        self._line({"ev": "cadence", "meter": meter, "interval_s": interval_s, **counters}, "at")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _line(self, record: dict[str, Any], now_key: str) -> None:
        if self._file is None:
            return
        record[now_key] = time.time()
        text = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.write(text)
            except OSError as exc:  # a full tmpfs, say: the logger goes on without timings
                log.warning("%s: cannot write %s: %s; timings off", ENV_VAR, self.path, exc.strerror)
                self._file = None


def _open(path: str) -> TextIO | None:
    """The file, opened for appending; None (and a warning) if it cannot be, or is not a
    regular file (O_NONBLOCK: a FIFO planted there fails at once instead of hanging)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        log.warning("%s=%s: cannot open it: %s; timings off", ENV_VAR, path, exc.strerror)
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        log.warning("%s=%s: not a regular file; timings off", ENV_VAR, path)
        return None
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8")  # line-buffered: a write per line


@functools.cache
def from_env() -> Timings:
    """The process's timings log: the file `$EDGELOG_TIMINGS` names, else off."""
    return Timings(os.environ.get(ENV_VAR) or None)
