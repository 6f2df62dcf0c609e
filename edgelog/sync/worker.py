"""The sync worker: moves buffered rows to the sink, oldest first, and the position after them.

The position moves only on confirmation: a batch is read from the buffer, the
sink commits it, and only then `Buffer.mark_sent()` records it. A crash between
the two replays the batch on the next start, which the sink ignores (idempotent).
While the sink is unavailable the worker waits with capped exponential backoff;
it never touches the poll loop, which keeps writing to the buffer meanwhile.

Poison rows: when the sink refuses a batch for its content (`SinkRejected`), the
batch is bisected: every part it accepts is committed, and each row it refuses
on its own is isolated. Before anything after such a row is written, the buffer
records a *hold* at its seq, so the position (even the one recovered from the
sink's high-water mark after a crash) never passes it unresolved. A row refused
in `quarantine_after` rounds in which other rows were accepted is copied to the
buffer's quarantine table and the position moves past it; if every row of a
batch is refused the fault is the table's, not the rows': nothing is
quarantined and the worker backs off. `retry_quarantined()` sends quarantined
rows again (`edgelog sync --retry-quarantined`).

Batches too large: a batch the sink refuses for its size (`SinkTooLarge`: a
Galera cluster's wsrep_max_ws_rows or wsrep_max_ws_size, max_allowed_packet) is
bisected the same way, every part that goes in committed; the next batches are
read at the size that worked (`fit.BatchFit`). A single row still too large is
refused like any other row (and so, in time, quarantined).

Aggregate tables (`aggregates.Aggregates`, `[mariadb] aggregates`): each batch is
noted before it is written, and the minutes it touched are summarised once per
drain round, after the rows are committed; a failure there never fails the sync.

With ``$EDGELOG_TIMINGS`` set (`edgelog/timings.py`), each move of the position and
each drain is noted in that log.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..buffer import Buffer
from ..config import SyncConfig
from ..episodes import Episode
from ..errors import ConfigError, EdgelogError, SinkRejected, SinkTooLarge, SinkUnavailable
from ..timings import Timings, from_env
from .aggregates import NoAggregates
from .fit import BatchFit
from .nodes import NODE_KEY, NODES_FAILED_KEY
from .sink import Sink

log = logging.getLogger(__name__)

Row = Sequence[Any]
#: Buffer meta key: how the sink writes backlog batches ("binary", or "plain (why)"),
#: kept for `sync-status`, which runs in another process.
SYNC_PATH_KEY = "sync_path"

#: Buffer meta key beside `last_error`: what kind of error it is, for sync-status.
#: "config": no retry can succeed until someone fixes the configuration (the password
#: file missing, readable by others, empty); "sink": MariaDB unreachable or refusing,
#: retried with backoff; "internal": an unexpected error of the worker itself.
ERROR_KIND_KEY = "last_error_kind"


class SyncWorker:
    def __init__(
        self,
        buffer: Buffer,
        sink: Sink,
        units: Mapping[str, str],
        batch_size: int,
        config: SyncConfig | None = None,
        clock: Callable[[], float] = time.time,
        aggregates: NoAggregates | None = None,
        timings: Timings | None = None,
    ):
        self.buffer = buffer
        self.sink = sink
        self.units = units
        self.batch_size = batch_size
        self.config = config or SyncConfig()
        self.clock = clock
        #: the aggregate tables: told of each batch before it is written, updated after each drain
        self.aggregates = aggregates or NoAggregates()
        self.timings = from_env() if timings is None else timings
        #: failed rounds in a row: an episode (logged at its start, 10th, 100th, every 1000th)
        self.failing = Episode()
        self.rejections: dict[int, int] = {}  # seq -> rounds in which the sink refused it
        self._counted = False  # the last round counted a refusal (progress towards quarantine)
        self._logged_kinds: set[str] = set()  # errors logged in this streak, digits left out
        self._ready = False
        self._noted_path: str | None = None
        self.fit = BatchFit(batch_size)  # rows a batch may hold (fewer once one was too large)
        self._nodes_recorded: tuple[str | None, str] | None = None
        self._error_kind = buffer.get_meta(ERROR_KIND_KEY)  # as recorded in the buffer

    def _prepare(self) -> None:
        """Once per connection: make the table fit, and skip what the sink already has."""
        if self._ready:
            return
        columns = {c: self.units.get(c, "") for c in self.buffer.value_columns}
        self.sink.ensure_table(columns)
        have = self.sink.high_water(self.buffer.buffer_id)
        hold = self.buffer.hold
        if hold is not None:  # rows after an unresolved rejected row may be there already
            have = min(have, hold - 1)
        if have > self.buffer.sent_upto:
            log.info("destination already has rows up to seq %d; moving the position there", have)
            self.buffer.mark_sent(have, at=self.clock())
        self._ready = True

    def _write_split(
        self,
        rows: Sequence[Row],
        accepted: Callable[[Sequence[Row], bool], None],
        rejected: Callable[[Row, str], None],
    ) -> None:
        """Write `rows`; on SinkRejected bisect, in seq order, down to the single rows
        refused. `accepted(part, after_a_rejected_row)` follows each committed part."""
        seen_rejected = False
        self.aggregates.note(rows)

        def visit(part: Sequence[Row]) -> None:
            nonlocal seen_rejected
            try:
                self.sink.write_batch(self.buffer.buffer_id, self.buffer.value_columns, part)
            except SinkRejected as exc:
                if isinstance(exc, SinkTooLarge):
                    self._too_large(len(part), exc)
                if len(part) == 1:
                    rejected(part[0], str(exc))
                    seen_rejected = True
                    return
                middle = len(part) // 2
                visit(part[:middle])
                visit(part[middle:])
                return
            self.fit.worked(len(part))
            accepted(part, seen_rejected)

        visit(rows)

    def _note_path(self) -> None:
        """Record the sink's `sync_path` in the buffer when it changes (one write a change)."""
        path = getattr(self.sink, "sync_path", None)
        if path is None or path == self._noted_path:
            return
        try:
            if self.buffer.get_meta(SYNC_PATH_KEY) != path:
                self.buffer.set_meta(SYNC_PATH_KEY, path)
        except Exception as exc:  # tried again next round; said once
            if self._noted_path != "":
                log.warning("sync: cannot record the sync path in the buffer: %s", exc)
            self._noted_path = ""
            return
        self._noted_path = path

    def sync_once(self) -> int:
        """Send the oldest unsent batch. Returns the number of rows resolved (committed by
        the sink, or quarantined); raises SinkRejected while a refused row is pending."""
        try:
            return self._sync_once()
        finally:
            self._note_path()

    def _sync_once(self) -> int:
        self._counted = False
        try:
            self._prepare()
            rows = self.buffer.unsent(self.fit.size)
            if not rows:
                return 0
            accepted = 0
            refused: list[tuple[Row, str]] = []
            started = time.monotonic()

            def on_accepted(part: Sequence[Row], after_rejected: bool) -> None:
                nonlocal accepted
                accepted += len(part)
                if not after_rejected:
                    rate = accepted / max(time.monotonic() - started, 1e-6)
                    batch = (part[0][0], len(part))
                    self.buffer.mark_sent(part[-1][0], at=self.clock(), rate=rate, batch=batch)
                    if self.timings.on:
                        self.timings.sent(part[-1][0], len(part))

            def on_rejected(row: Row, reason: str) -> None:
                if not refused:  # nothing after it is written before the hold is recorded
                    self.buffer.set_hold(row[0])
                refused.append((row, reason))

            self._write_split(rows, on_accepted, on_rejected)
        except (SinkUnavailable, SinkRejected) as exc:
            self._ready = False
            if isinstance(exc, SinkUnavailable):
                self.fit.reset()  # a new connection: try the full batch_size again
            raise
        if not refused:
            self.rejections.clear()  # refused rows are at the head: none is pending any more
            self.buffer.set_hold(None)
            return len(rows)
        return self._resolve(rows, accepted, refused)

    def _resolve(self, rows: Sequence[Row], accepted: int, refused: list[tuple[Row, str]]) -> int:
        """After a batch with refused rows: count the refusal, quarantine rows refused often
        enough, move the position as far as every row is resolved."""
        self._ready = False
        first_reason = refused[0][1]
        if not accepted:
            # Every row refused: the table, not the rows, is at fault. Quarantine nothing.
            raise SinkRejected(f"every row of a batch of {len(rows)} refused: {first_reason}")
        limit = self.config.quarantine_after
        ready, pending = [], []
        for row, reason in refused:
            count = self.rejections.get(row[0], 0) + 1
            self.rejections[row[0]] = count
            (ready if count >= limit else pending).append((row, reason))
        self._counted = True
        upto = pending[0][0][0] - 1 if pending else rows[-1][0]
        self.buffer.quarantine(ready, upto=upto, hold=pending[0][0][0] if pending else None, at=self.clock())
        for row, reason in ready:
            self.rejections.pop(row[0], None)
            log.warning(
                "sync: row seq %d (meter %s) refused by the destination %d times: quarantined "
                "(edgelog sync --retry-quarantined sends it again): %s",
                row[0],
                row[1],
                limit,
                reason,
            )
        if pending:
            count = self.rejections[pending[0][0][0]]
            raise SinkRejected(
                f"{len(pending)} row(s) refused (seq {pending[0][0][0]}, {count} of {limit} tries "
                f"before quarantine): {pending[0][1]}"
            )
        return accepted + len(ready)

    def drain(
        self,
        should_stop: Callable[[], bool] = lambda: False,
        progress: Callable[[int], None] | None = None,
        retry_rejected: bool = True,
    ) -> int:
        """Send batches until nothing is unsent (or `should_stop()`); errors propagate.
        With `retry_rejected`, a refused row is tried again at once (up to quarantine);
        without, the SinkRejected propagates so the caller can back off first."""
        total = 0
        started = time.time()
        try:
            while not should_stop():
                try:
                    sent = self.sync_once()
                except SinkRejected:
                    if not (retry_rejected and self._counted):
                        raise
                    continue  # bounded: each round counts the refusal, quarantine ends it
                if not sent:
                    break
                total += sent
                self._record_nodes()  # a failover shows in sync-status during a long drain
                if progress:
                    progress(total)
        finally:
            self._record_nodes()
        # the rows are in: the sync error is over now, not after the aggregates (which
        # record their own failures), else sync-status shows nothing unsent beside it
        self.buffer.record_sync_error(None, at=self.clock())
        self._record_kind(None)
        if not should_stop():
            self.aggregates.flush()
        if self.timings.on:
            stats = getattr(self.sink, "stats", None)
            self.timings.drain(started, total, dict(stats) if isinstance(stats, dict) else None)
        return total

    def _too_large(self, n_rows: int, exc: SinkTooLarge) -> None:
        if n_rows > 1 and (self.fit.refused_at is None or n_rows < self.fit.refused_at):
            log.info("sync: a batch of %d rows is too large; writing it in halves (%s)", n_rows, exc)
        self.fit.refused(n_rows)

    def _record_nodes(self) -> None:
        """Keep the sink's node in use and its failed nodes in the buffer's meta, for
        sync-status (a separate process); written only when they change."""
        state = self.sink.node_state()
        if state == self._nodes_recorded:
            return
        node, failed = state
        try:
            if node is not None:
                self.buffer.set_meta(NODE_KEY, node)
            self.buffer.set_meta(NODES_FAILED_KEY, failed)
        except Exception as exc:  # sync-status's view only: never a reason to stop syncing
            log.warning("sync: cannot record the MariaDB nodes in the buffer: %s", exc)
            return
        self._nodes_recorded = state

    def retry_quarantined(self) -> tuple[int, int]:
        """Send quarantined rows again (their cause fixed). Returns (sent, still refused)."""
        self._prepare()
        sent = still = 0
        after = 0
        while True:
            entries = self.buffer.quarantined(self.batch_size, after=after)
            if not entries:
                break
            rows = [row for row, _ in entries]
            ok: list[int] = []
            refused: list[tuple[int, str]] = []
            try:
                self._write_split(
                    rows,
                    lambda part, _after, ok=ok: ok.extend(r[0] for r in part),
                    lambda row, reason, refused=refused: refused.append((row[0], reason)),
                )
            except SinkUnavailable:
                self._ready = False
                raise
            finally:
                self.buffer.release_quarantined(ok)
            self.buffer.requarantine(refused)
            sent += len(ok)
            still += len(refused)
            after = rows[-1][0]
        self.aggregates.flush()
        return sent, still

    @property
    def failures(self) -> int:
        """Rounds failed in a row (the backoff grows with them)."""
        return self.failing.count

    def backoff_s(self) -> float:
        """Capped exponential backoff with jitter, from the number of failures in a row."""
        c = self.config
        ceiling = min(c.backoff_max_s, c.backoff_initial_s * 2 ** min(self.failures - 1, 30))
        return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set: drain, wait `interval_s`, repeat; back off while failing.

        An error of a round (an EdgelogError, or any Exception: a bug in a round) is
        logged, recorded for sync-status and retried after a backoff. Anything else that
        escapes (a BaseException, a fault of this loop itself) ends the thread, and
        `edgelog run` then stops with exit status 1 so that systemd restarts it."""
        while not stop.is_set():
            try:
                self.drain(should_stop=stop.is_set, retry_rejected=False)
                if failed := self.failing.end():
                    log.warning("sync: working again after %d failed rounds", failed)
                self._logged_kinds.clear()
                wait = self.config.interval_s
            except ConfigError as exc:  # retried too: someone may fix the file meanwhile
                wait = self._failed(exc, "config")
            except EdgelogError as exc:
                wait = self._failed(exc, "sink")
            except Exception as exc:  # a bug in one round: the next round may do better
                wait = self._failed(exc, "internal")
            stop.wait(wait)
        self.sink.close()

    def _failed(self, exc: BaseException, kind: str) -> float:
        """A failed round (inside its `except`): counted, logged, recorded for sync-status.
        Returns the backoff before the next round."""
        worth_a_line = self.failing.add(now=self.clock())
        wait = self.backoff_s()
        if kind == "internal" and self.failures == 1:
            log.exception("sync worker: unexpected error")
        self._report(exc, wait, kind, worth_a_line)
        return wait

    def _report(self, exc: BaseException, wait: float, kind: str, worth_a_line: bool) -> None:
        """Log a failure when a streak starts, at its 10th, 100th and every 1000th round
        (`worth_a_line`), and for each different error in the streak: not once a retry,
        even when two errors alternate. Record it (and its kind) in the buffer for
        sync-status."""
        message = str(exc) or type(exc).__name__
        shape = "".join(c for c in message if not c.isdigit())
        if worth_a_line or shape not in self._logged_kinds:
            if kind == "config":
                log.error(
                    "sync: %s (no retry can succeed until this is fixed; trying again in %.1f s)",
                    message,
                    wait,
                )
            else:
                log.warning(
                    "sync: %s (failure %d in a row; next try in %.1f s)", message, self.failures, wait
                )
            self._logged_kinds.add(shape)
        try:
            self._record_kind(kind)
            self.buffer.record_sync_error(message, at=self.clock())
        except EdgelogError as err:
            if self.failures == 1:
                log.warning("sync: cannot record the error in the buffer: %s", err)

    def _record_kind(self, kind: str | None) -> None:
        """Keep `last_error_kind` in the buffer in step with `last_error` (a write only when
        it changes: SD cards wear out)."""
        if kind == self._error_kind:
            return
        try:
            self.buffer.set_meta(ERROR_KIND_KEY, kind)
        except Exception as exc:  # the buffer unwritable now: as for last_error, try next time
            raise EdgelogError(f"cannot record the error kind: {exc}") from None
        self._error_kind = kind
