"""How many rows a batch may hold: `batch_size`, or less once the destination refused one.

A Galera cluster refuses a transaction of more than `wsrep_max_ws_rows` rows or
`wsrep_max_ws_size` bytes, and any server a packet over its max_allowed_packet
(`SinkTooLarge`). The worker then writes the refused batch in halves, down to one
row, and keeps the largest size that went in since the refusal, so the next
batches do not try (and fail) again: the size that worked is kept until the sink
reconnects after an error (`reset()`), when the full `batch_size` is tried again.
"""

from __future__ import annotations


class BatchFit:
    """The number of rows the next batch may hold."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.refused_at: int | None = None  # the smallest size refused since the reset
        self.worked_at = 0  # the largest size below it that went in

    @property
    def size(self) -> int:
        if self.refused_at is None:
            return self.batch_size
        return max(1, self.worked_at or self.refused_at // 2)

    def refused(self, n_rows: int) -> None:
        """A batch of `n_rows` was too large."""
        if self.refused_at is None or n_rows < self.refused_at:
            self.refused_at = n_rows
            self.worked_at = min(self.worked_at, n_rows - 1)

    def worked(self, n_rows: int) -> None:
        """A batch of `n_rows` went in."""
        if self.refused_at is not None and self.worked_at < n_rows < self.refused_at:
            self.worked_at = n_rows

    def reset(self) -> None:
        self.refused_at, self.worked_at = None, 0
