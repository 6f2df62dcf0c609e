"""Episodes: a fault that repeats, logged when it starts, now and then while it lasts,
and once when it ends.

A meter that stops answering fails every poll, a full disk refuses every reading,
an unreachable MariaDB fails every sync round. One log line each time would bury
the journal (and wear the SD card); none would hide the fault. So each such fault
is an `Episode`: logged at its first event, again at the 10th, the 100th and every
1000th (with the count so far), and once when it is over, with the total. It is
over when its owner says so (the meter answers again: `end()`), or after `QUIET_S`
without an event (`quiet()`) for a fault with no "working again" moment of its own
(a disk that stops being full).

An `Episode` only counts and says when to log; the words stay with its owner. It
holds no lock: an owner whose events come from several threads holds its own.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Counts at which an episode is logged (after the last, every `EVERY`th).
MARKS = (1, 10, 100)
EVERY = 1000
#: An episode that ends only by silence is over after this long without an event.
QUIET_S = 60.0


@dataclass
class Episode:
    """The events of one fault episode, counted; says when they deserve a log line."""

    #: events so far in this episode (0: none going on)
    count: int = 0
    #: when the last event happened (by the owner's clock)
    last_at: float = 0.0

    def add(self, n: int = 1, now: float = 0.0) -> bool:
        """Count `n` events at `now`. True when the count reaches or passes a mark worth a
        log line: the first event (then `count == n`), the 10th, the 100th, every 1000th."""
        before = self.count
        self.count += n
        self.last_at = now
        return any(before < mark <= self.count for mark in MARKS) or self.count // EVERY > before // EVERY

    def end(self) -> int:
        """The episode is over: its count (0 if none was going on); counting starts afresh."""
        count, self.count = self.count, 0
        return count

    def quiet(self, now: float, quiet_s: float = QUIET_S) -> int:
        """`end()` if the last event is at least `quiet_s` old at `now`; else 0."""
        return self.end() if self.count and now - self.last_at >= quiet_s else 0
