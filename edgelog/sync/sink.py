"""The destination of the sync worker, as one small interface."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class Sink(Protocol):
    """Where buffered rows go. Implementations raise `SinkUnavailable` (retry later)
    or `SinkRejected` (these rows will never be accepted as they are)."""

    def ensure_table(self, columns: Mapping[str, str]) -> None:
        """Create the table if missing and add any missing register column (name -> unit).
        Never drops or changes an existing column."""

    def high_water(self, buffer_id: str) -> int:
        """The highest seq of `buffer_id` the destination holds (0 if none).
        Batches commit in seq order, so every lower seq is there too."""

    def write_batch(self, buffer_id: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Commit `rows` (buffer.FIXED_COLUMNS + `columns`) in one transaction.
        Rows the destination already has are left as they are (idempotent)."""

    def close(self) -> None:
        """Drop the connection, if any."""

    def node_state(self) -> tuple[str | None, str]:
        """For sync-status: the server (node) last written through, or None before the first
        write, and the servers whose last try failed, as JSON: {name: {"error", "at"}}."""
