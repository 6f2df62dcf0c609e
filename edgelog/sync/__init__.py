"""Forwarding: the sink interface, the MariaDB sink, and the worker that moves the position."""

from .mariadb import MariaDBSink, create_table_sql
from .sink import Sink
from .worker import SyncWorker

__all__ = ["MariaDBSink", "Sink", "SyncWorker", "create_table_sql"]
