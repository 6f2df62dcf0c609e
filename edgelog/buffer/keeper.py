"""`edgelog run`'s writes to the buffer: its writer thread and the jobs it runs.

The `Writer` (writer.py) commits what the bus threads hand over; here is what it
does with them and in between: `store()` commits readings with room made per
``when_full`` (`Space.store`), `housekeeping()` prunes a step at a time (each next
step queued behind the readings handed over meanwhile, so a big buffer never holds
a commit up for long). A buffer that cannot take readings as they come (full at
max_mb or the disk, or failing to write) is an `Episode`: logged when it starts,
at 10, 100, every 1000 events, and summed up after `episodes.QUIET_S` without one.
A corrupt file stops the service (`on_corrupt`): the next start moves it aside.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ..cadence import Clock
from ..config import BufferConfig
from ..episodes import Episode
from ..errors import EdgelogError
from .space import Space, Stored
from .store import Buffer, NewReading
from .writer import Writer

log = logging.getLogger(__name__)


class Keeper:
    """The writer thread of `edgelog run` (`writer`) and its jobs on `buffer`."""

    def __init__(self, buffer: Buffer, config: BufferConfig, clock: Clock, on_corrupt: Callable[[], object]):
        self.room = Space(buffer, config.max_bytes, config.when_full, clock=clock.monotonic)
        self.keep_sent_s = config.keep_sent_days * 86400
        self.clock = clock
        self.on_corrupt = on_corrupt
        #: the thread; its SQLite connection is opened and closed on it
        self.writer = Writer(
            self.store,
            on_start=buffer.connect,
            on_exit=buffer.disconnect,
            commit_every_s=config.commit_every_s,
        )
        self.full = Episode()
        self.dropped = 0  # readings lost in the current full-buffer episode
        if not self.room.keep_reserve():
            log.warning("buffer: no room for its %d-byte disk reserve", self.room.reserve_bytes())

    def store(self, readings: Sequence[NewReading]) -> None:
        """(On the writer thread.) Commit readings in one transaction; the buffer makes
        room per `when_full` and counts what it drops; a corrupt file stops the service."""
        result = self.room.store(readings)
        if result.corrupt:
            n = len(readings)
            what = "reading" if n == 1 else f"{n} readings"
            log.error("%s lost: %s; stopping so that the next start moves it aside", what, result.corrupt)
            self.on_corrupt()
        else:
            self._note(result)

    def housekeeping(self, after: int = 0) -> None:
        """(On the writer thread.) One step of the prune: the sent rows older than
        keep_sent_days, a chunk of seqs a step, each next step queued behind the readings
        handed over meanwhile; after the last step, the `max_mb` limit."""
        try:
            after_next, result = self.room.housekeeping(self.keep_sent_s, self.clock.wall(), after)
            if after_next is not None:
                self.writer.call(lambda: self.housekeeping(after_next))
            elif result.full:
                self._note(result)
        except EdgelogError as exc:
            log.warning("housekeeping: %s", exc)
        except Exception:
            log.exception("housekeeping failed")

    def _note(self, result: Stored) -> None:
        """Log a full-buffer event as part of its episode, or end a quiet episode."""
        now = self.clock.monotonic()
        if not result.full:
            if events := self.full.quiet(now):
                log.warning(
                    "buffer: no such event for a minute (%d events, %d readings dropped, in dropped_total)",
                    events,
                    self.dropped,
                )
                self.dropped = 0
            return
        self.dropped += result.dropped
        if not self.full.add(now=now):
            return
        if self.full.count == 1:
            log.warning("buffer %s", result.full)
        else:
            log.warning(
                "buffer: %d such events so far (%d readings dropped): %s",
                self.full.count,
                self.dropped,
                result.full,
            )
