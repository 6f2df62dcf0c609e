"""Forwarding: the sink interface, the MariaDB sink, its connection, and the worker that moves
the position."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .aggregates import Aggregates
from .connect import connect
from .mariadb import MariaDBSink, create_table_sql
from .schema import config_types
from .sink import Sink
from .worker import SyncWorker

if TYPE_CHECKING:
    from ..buffer import Buffer
    from ..config import Config

__all__ = ["MariaDBSink", "Sink", "SyncWorker", "connect", "create_table_sql", "mariadb_worker"]


def mariadb_worker(cfg: Config, buffer: Buffer) -> SyncWorker:
    """The worker forwarding `buffer` to the MariaDB table of `cfg` (`edgelog run` and
    `edgelog sync`): register columns of their registers' types, the aggregate tables
    kept as `[mariadb] aggregates` says. Its sink (`worker.sink`) is closed by `run()`,
    or else by the caller."""
    sink = MariaDBSink(cfg.mariadb, cfg.site, types=config_types(cfg))
    aggregates = Aggregates(sink, buffer) if cfg.mariadb.aggregates else None
    return SyncWorker(buffer, sink, cfg.columns(), cfg.mariadb.batch_size, cfg.sync, aggregates=aggregates)
