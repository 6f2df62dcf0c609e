"""Progress of long work (sync --drain, export): a bar on a terminal, plain lines elsewhere.

On a terminal, tqdm draws one line that redraws itself: rows done, rows/s and the
time left. Anywhere else (a pipe, cron, the journal) a redrawn bar is noise, so
the same figures come as a plain line at most every `every_s` seconds; work
shorter than that prints nothing at all. Everything goes to stderr: stdout stays
for the data (`export --out -`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from . import human


class Progress:
    """Call `update(done)` with the running total; use as a context manager."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        stream: TextIO | None = None,
        tty: bool | None = None,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.what = what
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self._isatty(self.stream) if tty is None else tty
        self.every_s = every_s
        self.clock = clock
        self.started = clock()
        self.done = 0
        self.lines = 0
        self._last_line = self.started
        self._bar = None
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=what,
                unit=" rows",
                unit_scale=True,
                file=self.stream,
                dynamic_ncols=True,
                leave=True,
                smoothing=0.1,
            )

    @staticmethod
    def _isatty(stream: TextIO) -> bool:
        try:
            return stream.isatty()
        except (AttributeError, ValueError):
            return False

    def update(self, done: int) -> None:
        """The work has reached `done` rows (a running total, not an increment)."""
        step, self.done = done - self.done, done
        if self._bar is not None:
            self._bar.update(step)
            return
        now = self.clock()
        if now - self._last_line >= self.every_s:
            self._last_line = now
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        speed = self.done / elapsed
        parts = [f"{self.what}: {human.count(self.done)}"]
        if self.total:
            parts[0] += f" of {human.count(self.total)} rows ({100 * self.done / self.total:.0f} %)"
        else:
            parts[0] += " rows"
        parts.append(human.rate(speed))
        if self.total and speed > 0 and self.total > self.done:
            parts.append(f"about {human.duration((self.total - self.done) / speed)} left")
        print(", ".join(parts), file=self.stream, flush=True)
        self.lines += 1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.lines:  # a line was printed: say where it ended
            self._line(self.clock())

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
