"""A buffer file that fails its check: found at open, moved aside (never deleted).

Every open runs ``PRAGMA quick_check``. `edgelog run` runs it through a read-only
connection first (`check_file`): closing the last read-write connection to a corrupt
file would checkpoint its WAL into it and delete the WAL. A file that fails is
renamed with its -wal and -shm to ``<name>.corrupt-<UTC time>.sqlite3``, never over
another file (`move_aside`), and a new buffer (with a new ``buffer_id``, so
identities stay unique) is started; the new buffer remembers where the old one went
(meta ``corrupt_buffers``, shown by sync-status).
"""

from __future__ import annotations

import time
from pathlib import Path

from peewee import SqliteDatabase

from ..errors import BufferError
from .errors import BufferCorrupt, one_line
from .schema import BUSY_TIMEOUT_S

#: The files of one buffer: the database, its WAL and its shared-memory index.
SUFFIXES = ("", "-wal", "-shm")


def check(path: Path, db: SqliteDatabase) -> None:
    """PRAGMA quick_check on an open database; raises BufferCorrupt unless "ok"."""
    # every row of the report (one problem a row): Database.pragma() returns the first only
    rows = db.execute_sql("PRAGMA quick_check").fetchall()
    report = "\n".join(str(row[0]) for row in rows)
    if report != "ok":
        # One line: the report is "*** in database main ***" then one line a problem.
        problems = [p for p in report.splitlines() if p and not p.startswith("***")] or [report]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise BufferCorrupt(f"buffer {path}: quick_check failed: {problems[0]}{more}")


def check_file(path: Path) -> None:
    """`check` through a read-only connection (no pragmas), which changes nothing in the
    file or its WAL; raises BufferCorrupt (or BufferError if it cannot be read)."""
    db = SqliteDatabase(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        with one_line(path, ""):
            check(path, db)
    finally:
        db.close()


def corrupt_name(path: Path, now: float) -> Path:
    """Where a corrupt buffer goes: next to it, named with the UTC time, never over a file."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    for n in range(1, 1000):
        tag = f".corrupt-{stamp}" + (f"-{n}" if n > 1 else "")
        candidate = path.with_name(f"{path.stem}{tag}{path.suffix}")
        if not any(Path(f"{candidate}{x}").exists() for x in SUFFIXES):
            return candidate
    raise BufferError(f"buffer {path}: too many corrupt copies named {path.stem}.corrupt-{stamp}*")


def unnoted(path: Path, known: list[str]) -> list[Path]:
    """Corrupt copies of `path` beside it that are not in `known` (a power cut between a
    move aside and its note keeps the file, not the note)."""
    copies = sorted(path.parent.glob(f"{path.stem}.corrupt-*{path.suffix}"))
    return [aside for aside in copies if str(aside) not in set(known)]


def move_aside(path: Path, exc: BufferCorrupt, now: float) -> Path:
    """Rename the corrupt buffer and its -wal and -shm; returns the new name."""
    aside = corrupt_name(path, now)
    try:
        for ext in SUFFIXES:
            if Path(f"{path}{ext}").exists():
                Path(f"{path}{ext}").rename(f"{aside}{ext}")
    except OSError as err:
        raise BufferError(f"{exc}; cannot move it aside: {err.strerror}") from None
    return aside
