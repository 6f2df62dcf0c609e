"""Forwarding: the sink interface, the MariaDB sink, its connection, and the worker that moves
the position."""

from .connect import connect
from .mariadb import MariaDBSink, create_table_sql
from .sink import Sink
from .worker import SyncWorker

__all__ = ["MariaDBSink", "Sink", "SyncWorker", "connect", "create_table_sql"]
