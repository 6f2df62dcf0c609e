"""Reading unsent rows fast, and the next batch ahead while the current one is sent.

`Buffer.unsent()` is the sync worker's read of the backlog. Through peewee's
model layer a row costs ~18 µs of Python (one converter call per column); here
one SQL statement goes through the sqlite3 driver, which builds the row tuples
in C (~7 µs a row of the pac3100 profile), ``clock_ok`` included: a column
converter made of a dict's ``__getitem__`` turns SQLite's 0/1 into ``bool``
without a Python call per row.

Read-ahead: when a read in position order returns a full batch (a backlog), the
batch after it is read at once on the reader's own thread and connection, while
the caller sends the first one. The next call asking for exactly that batch
(same position, same limit) takes it; any other call drops it. Rows are never
updated in place and new ones only get higher seqs, so a batch read ahead is
what a read at that moment would give, except for rows appended meanwhile
(they come in the next batch) or dropped meanwhile by `prune()` for space
(sending them anyway is harmless). At most one batch is read ahead: memory does
not grow with the backlog.

The reader's connection is a plain SQLite connection to the same WAL file with
``query_only``: it never changes the data, and in WAL mode it never blocks the
poll loop.

"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

#: The converter name of the ``clock_ok`` column (sqlite3 keeps converters per process).
_BOOL = "EDGELOG_BOOL"


class _Truth(dict[bytes, bool]):
    """SQLite's text of a 0/1 column -> bool; a C-level lookup for the usual values."""

    def __missing__(self, key: bytes) -> bool:
        try:
            return bool(float(key))
        except ValueError:
            return bool(key)


sqlite3.register_converter(_BOOL, _Truth({b"1": True, b"0": False}).__getitem__)

Row = tuple[Any, ...]


def select_unsent_sql(columns: Sequence[str]) -> str:
    """The SELECT of `unsent()`: `columns` (FIXED_COLUMNS then the registers) by seq."""
    names = []
    for name in columns:
        if '"' in name or "\0" in name:
            raise ValueError(f"unsafe column name {name!r}")
        names.append(f'"{name}" AS "{name} [{_BOOL}]"' if name == "clock_ok" else f'"{name}"')
    return f"SELECT {', '.join(names)} FROM readings WHERE seq > ? ORDER BY seq LIMIT ?"


class UnsentReader:
    """Reads batches of unsent rows on one background thread with its own connection."""

    def __init__(self, path: Path, columns: Sequence[str], busy_timeout_s: float = 10.0):
        self.path = Path(path)
        self.sql = select_unsent_sql(columns)
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used only on the executor's thread
        self._ahead: tuple[tuple[int, int], Future[list[Row]]] | None = None

    # -- the reader thread -----------------------------------------------------------

    def _fetch(self, after: int, limit: int) -> list[Row]:
        if self._conn is None:
            conn = sqlite3.connect(
                str(self.path),
                timeout=self.busy_timeout_s,
                detect_types=sqlite3.PARSE_COLNAMES,
                check_same_thread=True,
            )
            conn.execute("PRAGMA query_only = 1")
            self._conn = conn
        return self._conn.execute(self.sql, (after, limit)).fetchall()

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _submit(self, after: int, limit: int) -> Future[list[Row]]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgelog-read")
        return self._executor.submit(self._fetch, after, limit)

    # -- the caller's side -----------------------------------------------------------

    def read(self, after: int, limit: int, read_ahead: bool = False) -> list[Row]:
        """Up to `limit` rows with seq > `after`, by seq. With `read_ahead`, a full
        batch starts the read of the batch after it."""
        with self._lock:
            ahead, self._ahead = self._ahead, None
            rows: list[Row] | None = None
            if ahead is not None and ahead[0] == (after, limit):
                try:
                    rows = ahead[1].result()
                except Exception:  # e.g. SQLITE_BUSY then: read again now, errors propagate
                    rows = None
            elif ahead is not None:
                ahead[1].cancel()  # a running read finishes; its rows are dropped
            if rows is None:
                rows = self._submit(after, limit).result()
            if read_ahead and limit > 0 and len(rows) == limit:
                key = (rows[-1][0], limit)
                self._ahead = (key, self._submit(*key))
            return rows

    def close(self) -> None:
        """Stop the reader thread and close its connection (a later read starts them again)."""
        with self._lock:
            if self._ahead is not None:
                self._ahead[1].cancel()
                self._ahead = None
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.submit(self._close_conn)
            executor.shutdown(wait=True)
