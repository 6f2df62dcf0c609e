"""The sync worker: moves buffered rows to the sink, oldest first, and the position after them.

The position moves only on confirmation: a batch is read from the buffer, the
sink commits it, and only then `Buffer.mark_sent()` records it. A crash between
the two replays the batch on the next start, which the sink ignores (idempotent).
While the sink is unavailable the worker waits with capped exponential backoff;
it never touches the poll loop, which keeps writing to the buffer meanwhile.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping

from ..buffer import Buffer
from ..config import SyncConfig
from ..errors import EdgelogError, SinkRejected, SinkUnavailable
from .sink import Sink

log = logging.getLogger(__name__)


class SyncWorker:
    def __init__(
        self,
        buffer: Buffer,
        sink: Sink,
        units: Mapping[str, str],
        batch_size: int,
        config: SyncConfig | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.buffer = buffer
        self.sink = sink
        self.units = units
        self.batch_size = batch_size
        self.config = config or SyncConfig()
        self.clock = clock
        self.failures = 0
        self._ready = False

    def _prepare(self) -> None:
        """Once per connection: make the table fit, and skip what the sink already has."""
        if self._ready:
            return
        columns = {c: self.units.get(c, "") for c in self.buffer.value_columns}
        self.sink.ensure_table(columns)
        have = self.sink.high_water(self.buffer.buffer_id)
        if have > self.buffer.sent_upto:
            log.info("destination already has rows up to seq %d; moving the position there", have)
            self.buffer.mark_sent(have, at=self.clock())
        self._ready = True

    def sync_once(self) -> int:
        """Send the oldest unsent batch. Returns the number of rows the sink committed."""
        try:
            self._prepare()
            rows = self.buffer.unsent(self.batch_size)
            if not rows:
                return 0
            self.sink.write_batch(self.buffer.buffer_id, self.buffer.value_columns, rows)
        except (SinkUnavailable, SinkRejected):
            self._ready = False
            raise
        self.buffer.mark_sent(rows[-1][0], at=self.clock())
        return len(rows)

    def drain(
        self,
        should_stop: Callable[[], bool] = lambda: False,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Send batches until nothing is unsent (or `should_stop()`); errors propagate."""
        total = 0
        while not should_stop():
            sent = self.sync_once()
            if not sent:
                break
            total += sent
            if progress:
                progress(total)
        self.buffer.record_sync_error(None, at=self.clock())
        return total

    def backoff_s(self) -> float:
        """Capped exponential backoff with jitter, from the number of failures in a row."""
        c = self.config
        ceiling = min(c.backoff_max_s, c.backoff_initial_s * 2 ** min(self.failures - 1, 30))
        return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set: drain, wait `interval_s`, repeat; back off while failing."""
        while not stop.is_set():
            try:
                self.drain(should_stop=stop.is_set)
                self.failures = 0
                wait = self.config.interval_s
            except EdgelogError as exc:
                self.failures += 1
                wait = self.backoff_s()
                self._report(exc, wait)
            except Exception as exc:  # never let the thread die: the poll loop needs no help
                self.failures += 1
                wait = self.backoff_s()
                log.exception("sync worker: unexpected error")
                self._report(exc, wait)
            stop.wait(wait)
        self.sink.close()

    def _report(self, exc: BaseException, wait: float) -> None:
        message = str(exc) or type(exc).__name__
        if self.failures == 1 or self.failures % 10 == 0:
            log.warning("sync: %s (failure %d in a row; next try in %.0f s)", message, self.failures, wait)
        try:
            self.buffer.record_sync_error(message, at=self.clock())
        except EdgelogError:
            log.exception("sync: cannot record the error in the buffer")
