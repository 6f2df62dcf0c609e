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
    """A poll failed. Recorded as a gap; the next poll tries again.

    The message starts with its cause, the part before the first ": " (`timeout`,
    `no connection`, `exception 02 illegal data address`, `bad answer`): sync-status
    counts gaps by it."""


class MeterTimeout(MeterError):
    """Nothing came back: the meter did not answer in time, or the bus (serial device,
    TCP link) is down. Wiring, termination, unit id or line settings."""


class MeterExceptionResponse(MeterError):
    """The meter answered with a Modbus exception (e.g. illegal data address): the line
    works; the request asked for something the meter refuses."""


class MeterBadAnswer(MeterError):
    """Something came back that is not a valid answer to the request: another function
    code, another unit, a wrong byte count, a CRC error or line noise."""


class BufferError(EdgelogError):
    """The local SQLite buffer cannot be opened or written."""

    exit_status = 2


class SinkUnavailable(EdgelogError):
    """The destination cannot be reached or refused the login. Retried with backoff."""


class SinkRejected(EdgelogError):
    """The destination refused the rows themselves (bad value, schema mismatch).

    Retrying the same rows gives the same answer.
    """


class SinkTooLarge(SinkRejected):
    """The destination refused a batch for its size, not its content (a Galera cluster's
    wsrep_max_ws_rows or wsrep_max_ws_size, the server's max_allowed_packet). Smaller
    batches go in; a single row that is still too large is refused like a bad value."""


class SchemaMismatch(EdgelogError):
    """The destination table lacks what the logger needs, and the logger may not change it
    (`[mariadb] manage_schema = false`). Someone must run the DDL the message names."""

    exit_status = 2
