"""The exception hierarchy. Every error edgelog raises on purpose is an EdgelogError.

Each class says whether the same operation is tried again later without anyone
changing anything (a meter that did not answer, a database that is down).
"""

from __future__ import annotations


class EdgelogError(Exception):
    """Base class. The CLI prints `str(error)` as one line and exits with `exit_status`."""

    exit_status = 1


class ConfigError(EdgelogError):
    """The configuration file is missing, unreadable or invalid. Never retried."""

    exit_status = 2


class MeterError(EdgelogError):
    """A poll failed. Recorded as a gap; the next poll tries again."""


class MeterTimeout(MeterError):
    """The meter did not answer in time (or the bus/TCP link is down)."""


class MeterExceptionResponse(MeterError):
    """The meter answered with a Modbus exception (e.g. illegal data address)."""


class BufferError(EdgelogError):
    """The local SQLite buffer cannot be opened or written."""

    exit_status = 2


class SinkUnavailable(EdgelogError):
    """The destination cannot be reached or refused the login. Retried with backoff."""


class SinkRejected(EdgelogError):
    """The destination refused the rows themselves (bad value, schema mismatch).

    Retrying the same rows gives the same answer.
    """
