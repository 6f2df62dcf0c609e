"""The backlog write path (prepared binary INSERT) and LOCAL INFILE safety, against the
real MariaDB of this session.

The binary path must behave exactly like the text INSERT it replaces for big batches:
values bit for bit, idempotent replays, strict-mode errors as SinkRejected, timeouts.
The LOCAL INFILE tests put a real TCP proxy between the client and MariaDB that plays
a rogue server: it answers a query with a request for a local file of its choosing,
or rewrites the file name in a genuine request. The client must never read that file
nor send anything but what it meant to send.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import math
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from helpers import COLUMNS, TRICKY, LoggerDB, meter_toml, parse_config, reading_values
from pymysql.constants import CLIENT

from bench.loaddata import new_local_name as bench_local_name
from bench.loaddata import open_loading
from edgelog.buffer import Buffer
from edgelog.clock import utc_text
from edgelog.config import Config
from edgelog.errors import SinkRejected, SinkUnavailable
from edgelog.sync import MariaDBSink, SyncWorker, connect, wire
from edgelog.sync.connect import GuardedConnection, GuardedResult, LocalInfileRefused
from edgelog.sync.mariadb import BINARY_MIN_ROWS, INSERT_COLUMNS, quote

SITE = "chapada-imperial"


def config_for(db: LoggerDB, port: int | None = None, **mariadb: Any) -> Config:
    return parse_config(db.toml(port=port, **mariadb), meter_toml(5020), site=SITE)


def fill(buffer: Buffer, n: int, start: float = 1_780_000_000.0) -> list[int]:
    return [buffer.append("pac1", start + k * 0.1, reading_values(k)) for k in range(n)]


def table_sink(cfg: Config) -> MariaDBSink:
    """A sink for `cfg`, its table created."""
    sink = MariaDBSink(cfg.mariadb, cfg.site)
    sink.ensure_table(cfg.columns())
    return sink


@pytest.fixture(params=[True, False], ids=["binary", "plain"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    """Backlog tests run on both paths: the fast one, and the plain one every batch takes
    with `fast_path = false` or once the fast path is off."""
    return request.param


def path_stats(fast_path: bool, batches: int) -> dict[str, int]:
    return {"binary": batches if fast_path else 0, "text": 0 if fast_path else batches, "binary_fallback": 0}


# -- the binary path ---------------------------------------------------------------------------


def test_chunk_sizes_cover_the_batch_with_few_shapes() -> None:
    for n in [1, 2, 3, 31, 32, 127, 128, 129, 2000, 2047, 4097, 100_000]:
        sizes = wire.chunk_sizes(n)
        assert sum(sizes) == n
        assert set(sizes) <= {128, 64, 32, 16, 8, 4, 2, 1}
        assert len(set(sizes)) <= 8


def test_a_backlog_batch_arrives_bit_for_bit(logger_db: LoggerDB, buffer: Buffer, fast_path: bool) -> None:
    cfg = config_for(logger_db, fast_path=fast_path)
    tricky = {**reading_values(0), **TRICKY, "corrente_l3": 5e-324}  # the smallest subnormal
    error = "timeout:\tno answer\nin 0.5 s \\ « ação » 电" + "x" * 400  # clipped to 255 characters
    seqs = [buffer.append("pac1", 1_780_000_000.0005, tricky)]
    seqs.append(buffer.append("pac2", 1_780_000_000.0625, reading_values(1), clock_ok=False))
    seqs.append(buffer.append("pac1", 1_780_000_001.9996, None, error=error))
    seqs += fill(buffer, 2 * BINARY_MIN_ROWS)
    worker = SyncWorker(buffer, MariaDBSink(cfg.mariadb, cfg.site), cfg.columns(), 1000, cfg.sync)
    assert worker.drain() == len(seqs)
    stats = worker.sink.stats
    worker.sink.close()
    assert stats == path_stats(fast_path, 1)

    rows = logger_db.rows()
    assert [r["seq"] for r in rows] == seqs
    assert logger_db.count() == (len(seqs), len(seqs))
    for row, source in zip(rows, buffer.unsent(10_000, after=0), strict=True):
        seq, meter, at, ok, err, *vals = source
        assert row["site"] == SITE and row["buffer_id"] == buffer.buffer_id
        assert row["meter"] == meter
        assert row["measured_at"].strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] == utc_text(at), seq
        assert row["clock_ok"] == int(ok)
        assert [row[c] for c in COLUMNS] == vals, seq  # == on floats: bit for bit (and None)
        if err is None:
            assert row["error"] is None
        else:
            assert row["error"] == err[:254] + "…"
    # .0625 s is 62.5 ms: rounded half to even, as utc_text() (the text INSERT) does
    assert rows[1]["measured_at"] == dt.datetime(2026, 5, 28, 20, 26, 40, 62000)
    assert rows[1]["clock_ok"] == 0


def test_replays_and_overlaps_duplicate_nothing_and_overwrite_nothing(
    logger_db: LoggerDB, buffer: Buffer, fast_path: bool
) -> None:
    cfg = config_for(logger_db, fast_path=fast_path)
    n = 3 * BINARY_MIN_ROWS
    fill(buffer, n)
    sink = table_sink(cfg)
    first = buffer.unsent(2 * BINARY_MIN_ROWS, after=0)
    sink.write_batch(buffer.buffer_id, buffer.value_columns, first)
    sink.write_batch(buffer.buffer_id, buffer.value_columns, first)  # a replay
    changed = [(*row[:5], *([-1.0] * len(COLUMNS))) for row in first]
    sink.write_batch(buffer.buffer_id, buffer.value_columns, changed)  # never overwrites
    sink.write_batch(buffer.buffer_id, buffer.value_columns, buffer.unsent(n, after=BINARY_MIN_ROWS))
    assert sink.stats == path_stats(fast_path, 4)
    sink.close()
    assert logger_db.count() == (n, n)
    for k, row in enumerate(logger_db.rows()):
        assert [row[c] for c in COLUMNS] == list(reading_values(k).values())


def test_a_value_the_table_refuses_rejects_the_whole_batch(
    logger_db: LoggerDB, buffer: Buffer, fast_path: bool
) -> None:
    cfg = config_for(logger_db, fast_path=fast_path)
    sink = table_sink(cfg)
    logger_db.query(f"ALTER TABLE `{logger_db.database}`.`medicoes` MODIFY `tensao_l1_n` DECIMAL(5,1) NULL")
    seqs = [
        buffer.append("pac1", 1_780_000_000.0 + k, {**reading_values(k), "tensao_l1_n": 127.4})
        for k in range(40)
    ]
    poison = buffer.append("pac1", 1_780_000_100.0, {**reading_values(0), "tensao_l1_n": 1e9})
    seqs += [
        buffer.append("pac1", 1_780_000_200.0 + k, {**reading_values(k), "tensao_l1_n": 127.4})
        for k in range(40)
    ]
    rows = buffer.unsent(1000)
    with pytest.raises(SinkRejected) as info:
        sink.write_batch(buffer.buffer_id, buffer.value_columns, rows)
    assert "(1264)" in str(info.value) and "tensao_l1_n" in str(info.value)
    assert sink.stats["binary"] == 0  # it failed: no fallback hides the error
    assert sink.stats["text"] == (0 if fast_path else 1) and sink.stats["binary_fallback"] == 0
    assert sink.sync_path == ("binary" if fast_path else "plain (fast_path = false)")  # a row's fault
    assert logger_db.count() == (0, 0)  # nothing of the batch, not even the rows before the bad one

    # the worker then isolates the row (its bisection, through both paths); the rest arrives
    worker = SyncWorker(buffer, sink, cfg.columns(), 1000, cfg.sync)
    with pytest.raises(SinkRejected):
        worker.sync_once()
    sink.close()
    stored = [r["seq"] for r in logger_db.rows()]
    assert poison not in stored
    assert stored == seqs
    assert buffer.sent_upto == poison - 1  # the position waits at the refused row


def test_an_infinite_value_is_rejected_not_clamped(logger_db: LoggerDB, buffer: Buffer) -> None:
    cfg = config_for(logger_db)
    sink = table_sink(cfg)
    fill(buffer, BINARY_MIN_ROWS)
    rows = [list(r) for r in buffer.unsent(1000)]
    rows[5][5] = math.inf  # not from a meter (they are stored as NULL), but never stored as a number
    with pytest.raises(SinkRejected) as info:
        sink.write_batch(buffer.buffer_id, buffer.value_columns, rows)
    sink.close()
    assert "(1264)" in str(info.value)
    assert logger_db.count() == (0, 0)


def test_a_value_that_is_not_a_number_goes_to_the_text_insert(logger_db: LoggerDB, buffer: Buffer) -> None:
    cfg = config_for(logger_db)
    sink = table_sink(cfg)
    fill(buffer, BINARY_MIN_ROWS)
    rows = [list(r) for r in buffer.unsent(1000)]
    rows[3][6] = "12.5"  # a text in a REAL column (SQLite allows it): the binary path cannot carry it
    sink.write_batch(buffer.buffer_id, buffer.value_columns, rows)
    assert sink.stats == {"binary": 0, "text": 1, "binary_fallback": 1}
    sink.close()
    assert logger_db.count() == (BINARY_MIN_ROWS, BINARY_MIN_ROWS)
    assert logger_db.rows()[3][COLUMNS[1]] == 12.5


def test_a_server_that_hangs_mid_batch_is_unavailable_within_the_read_timeout(
    logger_db: LoggerDB, buffer: Buffer, fast_path: bool
) -> None:
    cfg = config_for(logger_db, read_timeout_s=1, write_timeout_s=1, fast_path=fast_path)
    sink = table_sink(cfg)
    fill(buffer, 4 * wire.CHUNK_ROWS)
    lock = pymysql.connect(unix_socket=logger_db.socket, user="root", autocommit=True)
    try:
        with lock.cursor() as cur:
            cur.execute(f"LOCK TABLES `{logger_db.database}`.`medicoes` WRITE")
        with pytest.raises(SinkUnavailable):
            sink.write_batch(buffer.buffer_id, buffer.value_columns, buffer.unsent(10_000))
        assert sink.conn is None
    finally:
        lock.close()
    assert logger_db.count() == (0, 0)
    sink.write_batch(buffer.buffer_id, buffer.value_columns, buffer.unsent(10_000))  # a new connection
    sink.close()
    assert logger_db.count() == (4 * wire.CHUNK_ROWS,) * 2


# -- LOCAL INFILE: a rogue server ------------------------------------------------------------


def _packets(buf: bytearray) -> Iterator[tuple[int, bytes, bytes]]:
    """Complete MySQL packets at the head of `buf`: (seq, payload, raw bytes); consumed."""
    while len(buf) >= 4:
        size = int.from_bytes(buf[:3], "little")
        if len(buf) < 4 + size:
            return
        raw = bytes(buf[: 4 + size])
        del buf[: 4 + size]
        yield raw[3], raw[4:], raw


def _packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


class RogueProxy:
    """A TCP proxy to MariaDB that plays a rogue server, packet by packet.

    `forge(sql)`: for a client query for which it returns a path, the query is not
    forwarded; the client gets a LOCAL INFILE request for that path instead (then an
    OK). `rewrite`: in MariaDB's own LOCAL INFILE requests, the file name is replaced.
    Everything the client sends is kept in `from_client` for the test to inspect."""

    def __init__(
        self, port: int, forge: Callable[[str], bytes | None] = lambda _: None, rewrite: bytes = b""
    ):
        self.target = port
        self.forge = forge
        self.rewrite = rewrite
        self.from_client = bytearray()
        self.forged = 0
        self.rewritten = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, server]
            for pump, a, b in (
                (self._client_to_server, client, server),
                (self._server_to_client, server, client),
            ):
                threading.Thread(target=_quietly, args=(pump, a, b), daemon=True).start()

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        buf = bytearray()
        forging = False
        while data := _recv(client):
            self.from_client += data
            buf += data
            for seq, payload, raw in _packets(buf):
                if forging:  # the client's answer to our request: swallow, then OK
                    if not payload:
                        client.sendall(_packet(seq + 1, b"\x00\x00\x00\x02\x00\x00\x00"))
                        forging = False
                    continue
                if seq == 0 and payload[:1] == b"\x03":
                    path = self.forge(payload[1:].decode(errors="replace"))
                    if path is not None:
                        self.forged += 1
                        forging = True
                        client.sendall(_packet(1, b"\xfb" + path))
                        continue
                server.sendall(raw)
        server.close()

    def _server_to_client(self, server: socket.socket, client: socket.socket) -> None:
        buf = bytearray()
        while data := _recv(server):
            buf += data
            for seq, payload, raw in _packets(buf):
                if self.rewrite and seq == 1 and payload[:1] == b"\xfb":
                    self.rewritten += 1
                    client.sendall(_packet(seq, b"\xfb" + self.rewrite))
                else:
                    client.sendall(raw)
        client.close()

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()


def _quietly(
    pump: Callable[[socket.socket, socket.socket], None], a: socket.socket, b: socket.socket
) -> None:
    with contextlib.suppress(OSError):  # the test closed the sockets
        pump(a, b)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, bytes, list[str]]]:
    """A secret file the rogue server asks for, and every open() of it in this process."""
    secret = b"canary-" + secrets.token_hex(16).encode()
    path = tmp_path / "id_ed25519"
    path.write_bytes(secret + b"\n")
    opened: list[str] = []
    real_open = builtins.open

    def spy(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(path) or str(file).endswith(path.name):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    yield path, secret, opened


def test_the_sink_never_negotiates_local_infile(logger_db: LoggerDB, buffer: Buffer) -> None:
    cfg = config_for(logger_db)
    sink = MariaDBSink(cfg.mariadb, cfg.site)
    fill(buffer, BINARY_MIN_ROWS)
    worker = SyncWorker(buffer, sink, cfg.columns(), 1000, cfg.sync)
    assert worker.drain() == BINARY_MIN_ROWS
    assert isinstance(sink.conn, GuardedConnection)
    assert not sink.conn.client_flag & CLIENT.LOCAL_FILES
    sink.close()
    for tcp in (False, True):  # every other door (export, report, status) is the same connect()
        conn = connect(config_for(logger_db, port=logger_db.port if tcp else None).mariadb)
        try:
            assert isinstance(conn, GuardedConnection) and not conn.client_flag & CLIENT.LOCAL_FILES
        finally:
            conn.close()


def test_a_rogue_server_asking_the_sink_for_a_file_gets_nothing(
    logger_db: LoggerDB, buffer: Buffer, canary: tuple[Path, bytes, list[str]]
) -> None:
    path, secret, opened = canary
    proxy = RogueProxy(logger_db.port, forge=lambda sql: str(path).encode() if "MAX(seq)" in sql else None)
    try:
        cfg = config_for(logger_db, port=proxy.port)
        fill(buffer, BINARY_MIN_ROWS)
        worker = SyncWorker(buffer, MariaDBSink(cfg.mariadb, cfg.site), cfg.columns(), 1000, cfg.sync)
        with pytest.raises(SinkUnavailable) as info:
            worker.sync_once()  # ensure_table, then high_water: answered with the forged request
        assert proxy.forged == 1
        assert "refused" in str(info.value) and "nothing was read or sent" in str(info.value)
        assert "\n" not in str(info.value)
        assert worker.sink.conn is None  # dropped: a connection that saw this is not reused
    finally:
        proxy.close()
    assert opened == []
    assert secret not in bytes(proxy.from_client)
    assert buffer.sent_upto == 0 and logger_db.count() == (0, 0)


def test_a_rewritten_load_data_request_sends_neither_the_file_nor_our_data(
    logger_db: LoggerDB, canary: tuple[Path, bytes, list[str]]
) -> None:
    """The bench's LOAD DATA LOCAL (the only user of the capability): MariaDB asks for our
    stream's name, the proxy turns that into a request for the secret file."""
    (local_infile,) = logger_db.query("SELECT @@GLOBAL.local_infile")[0]
    if not local_infile:
        pytest.skip("this MariaDB has local_infile off")
    path, secret, opened = canary
    cfg = config_for(logger_db)
    sink = table_sink(cfg)
    sink.close()
    ours = b"ours-" + secrets.token_hex(8).encode()
    line = "\t".join([SITE, "pac1", "0123456789abcdef", "1", "2026-01-01 00:00:00.000", "1", "\\N"])
    data = (line + "\t" + ours.decode() + "\t1" * (len(COLUMNS) - 1) + "\n").encode()
    names = ", ".join(quote(c) for c in (*INSERT_COLUMNS, *COLUMNS))
    for rewrite, expect_sent in ((str(path).encode(), False), (b"", True)):
        proxy = RogueProxy(logger_db.port, rewrite=rewrite)
        conn = open_loading(config_for(logger_db, port=proxy.port).mariadb)
        assert conn.can_load_local and conn._local_infile is False
        name = bench_local_name()
        try:
            with conn.cursor() as cur, conn.offering(name, [data]) as outgoing:
                sql = f"LOAD DATA LOCAL INFILE '{name.decode()}' IGNORE INTO TABLE medicoes ({names})"
                if expect_sent:
                    cur.execute(sql)
                else:
                    with pytest.raises(LocalInfileRefused) as info:
                        cur.execute(sql)
                    assert str(path) in str(info.value)
            conn.rollback()
        finally:
            conn.close()
            proxy.close()
        assert secret not in bytes(proxy.from_client)
        assert (ours in bytes(proxy.from_client)) is expect_sent  # refused: not even our data
        assert outgoing.bytes_sent == (len(data) if expect_sent else 0)
        assert proxy.rewritten == (1 if rewrite else 0)
    assert opened == []


def test_pymysql_own_handler_is_disarmed_on_guarded_connections(
    logger_db: LoggerDB, canary: tuple[Path, bytes, list[str]]
) -> None:
    """A code path that bypasses GuardedResult reaches PyMySQL's handler, which must refuse,
    even on the bench's connection that negotiated LOCAL INFILE."""
    path, _secret, opened = canary
    conn = open_loading(config_for(logger_db).mariadb)
    try:
        packet = pymysql.protocol.MysqlPacket(b"\xfb" + str(path).encode(), "utf8")
        with pytest.raises(RuntimeError, match="local_infile option is false"):
            pymysql.connections.MySQLResult(conn)._read_load_local_packet(packet)
        with pytest.raises(NotImplementedError):
            conn.show_warnings()
    finally:
        conn.close()
    assert opened == []


def test_the_guard_answers_an_unexpected_request_with_an_empty_file() -> None:
    """GuardedResult on its own: a request while nothing is offered, on a fake wire."""

    class Wire:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def write_packet(self, payload: bytes) -> None:
            self.sent.append(payload)

        def _read_packet(self) -> Any:
            return pymysql.protocol.MysqlPacket(b"\x00\x00\x00\x02\x00\x00\x00", "utf8")

    fake = Wire()
    result = GuardedResult(fake)  # type: ignore[arg-type]
    request = pymysql.protocol.MysqlPacket(b"\xfb/etc/shadow", "utf8")
    with pytest.raises(LocalInfileRefused, match="/etc/shadow"):
        result._read_load_local_packet(request)
    assert fake.sent == [b""]
