"""v0.1's read of the backlog, kept as a reference for the write paths (bench/paths.py).

v0.1 read each batch of unsent rows through peewee's model layer: one Python
converter call per column, about three times the cost of today's read
(edgelog/buffer/batch.py). `LegacyReads` is a buffer whose `unsent()` reads that way,
with its own peewee model of the readings table on its own read-only connection;
everything else (the position, the meta) is the real `Buffer`'s, which it wraps.
"""

from __future__ import annotations

from typing import Any

from peewee import BooleanField, DoubleField, IntegerField, Model, SqliteDatabase, TextField

from edgelog.buffer import Buffer


class LegacyReads:
    """A `Buffer` whose `unsent()` is v0.1's (peewee's model layer); the rest is the buffer's."""

    def __init__(self, buffer: Buffer):
        self._buffer = buffer
        self._db = SqliteDatabase(str(buffer.path), pragmas={"query_only": 1})
        fields: dict[str, Any] = {
            "seq": IntegerField(primary_key=True),
            "meter": TextField(),
            "measured_at": DoubleField(),
            "clock_ok": BooleanField(),
            "error": TextField(null=True),
        }
        for i, name in enumerate(buffer.value_columns):
            fields[f"v{i}"] = DoubleField(null=True, column_name=name)
        meta = type("Meta", (), {"database": self._db, "table_name": "readings"})
        self._reading: Any = type("Reading", (Model,), {**fields, "Meta": meta})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._buffer, name)

    def unsent(self, limit: int, after: int | None = None) -> list[tuple[Any, ...]]:
        R = self._reading
        position = self._buffer.sent_upto if after is None else after
        return list(R.select().where(R.seq > position).order_by(R.seq).limit(limit).tuples())

    def close(self) -> None:
        self._db.close()
