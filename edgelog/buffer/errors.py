"""SQLite's errors as one-line `BufferError`s: the file is corrupt, the disk is full, or else."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from peewee import DatabaseError

from ..errors import BufferError

# SQLite primary result codes (the low byte of an extended code).
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 10, 11, 13, 26


class BufferCorrupt(BufferError):
    """The file fails its integrity check or is not an SQLite database at all."""


class BufferFull(BufferError):
    """A write was refused for lack of space (ENOSPC, or the file size limit)."""


def _sqlite_code(exc: BaseException) -> int | None:
    orig = getattr(exc, "orig", None) or exc  # peewee keeps sqlite3's exception as .orig
    code = getattr(orig, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def classify(path: Path, what: str, exc: BaseException) -> BufferError:
    """One-line BufferError of the right kind for an SQLite error.

    A commit refused for lack of space is rolled back by SQLite itself, and the
    ROLLBACK peewee then sends fails ("cannot rollback - no transaction is active"),
    hiding the cause: look down the chain of exceptions for it."""
    code, cause = None, exc
    seen: BaseException | None = exc
    while seen is not None:
        found = _sqlite_code(seen)
        if found in (_SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_FULL, _SQLITE_IOERR):
            code, cause = found, seen
            break
        seen = seen.__context__
    message = f"buffer {path}: {what}{': ' if what else ''}{cause}"
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return BufferCorrupt(message)
    if code == _SQLITE_FULL or (code == _SQLITE_IOERR and "full" in str(cause).lower()):
        return BufferFull(message)
    return BufferError(message)


@contextmanager
def one_line(path: Path, what: str) -> Iterator[None]:
    """Turn SQLite's errors (peewee's, or sqlite3's own from a cursor) into one-line
    BufferErrors: BufferCorrupt, BufferFull or BufferError."""
    try:
        yield
    except (DatabaseError, sqlite3.DatabaseError) as exc:
        raise classify(path, what, exc) from None
