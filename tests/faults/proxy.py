"""A TCP proxy in front of MariaDB that fails like a network does: it black-holes (accepts,
then forwards nothing and never resets), slows every chunk, cuts a batch in the middle,
loses the answer to a COMMIT, or refuses. Used by the fault tests (the `proxy` fixture).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

#: The start of the sync worker's batch into the default table (text protocol); the
#: aggregate tables' INSERT ... SELECT (`medicoes_1min`, ...) and their COMMIT are not it.
BATCH_INSERT = b"INSERT INTO `medicoes` ("


def is_batch_insert(data: bytes) -> bool:
    """A packet that starts a batch: the text INSERT, or an EXECUTE (0x17) of the prepared one."""
    return BATCH_INSERT in data or data[4:5] == b"\x17"


class _Link:
    def __init__(self, client: socket.socket, upstream: socket.socket | None):
        self.client, self.upstream = client, upstream
        self.frozen = False  # nothing more is forwarded, either way (no RST: a black hole)
        self.replies_frozen = False  # server -> client stops (the request got through)
        self.batch_open = False  # a batch INSERT went up since this link's last COMMIT

    def close(self, upstream: bool = True) -> None:
        # shutdown(), not only close(): a thread blocked in recv() on the socket keeps
        # the connection open (no FIN) until it returns, and shutdown() makes it return.
        for s in (self.client, self.upstream) if upstream else (self.client,):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()


class TcpProxy:
    """127.0.0.1:<port> -> target, through threads that can stop forwarding without a
    reset (`blackhole`), delay every chunk (`latency_s`), cut the next big request in the
    middle (`cut_next_request`), or let the COMMIT of a batch through and lose its answer
    (`lose_commit_reply`). Frozen connections stay frozen; new ones follow the current mode."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.blackhole = False
        self.refuse = False
        self.latency_s = 0.0
        self.cut_next_request = False
        self.lose_commit_reply = False
        self.cuts = 0
        self.lost_replies = 0
        self.accepted = 0
        self.links: list[_Link] = []
        self._closed = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.refuse:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")  # RST
                client.close()
                continue
            upstream = None
            if not self.blackhole:
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    client.close()
                    continue
            link = _Link(client, upstream)
            link.frozen = upstream is None
            with self._lock:
                self.links.append(link)
            threading.Thread(target=self._pump, args=(link, True), daemon=True).start()
            if upstream is not None:
                threading.Thread(target=self._pump, args=(link, False), daemon=True).start()

    def _pump(self, link: _Link, up: bool) -> None:
        src = link.client if up else link.upstream
        dst = link.upstream if up else link.client
        assert src is not None
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.blackhole:
                    link.frozen = True  # an existing connection goes silent too
                if link.frozen or (not up and link.replies_frozen):
                    continue  # read and drop: the sender sees no error, the peer nothing
                if self.latency_s:
                    time.sleep(self.latency_s)
                assert dst is not None
                insert = up and is_batch_insert(data)
                link.batch_open = link.batch_open or insert
                if self.cut_next_request and insert:
                    self.cut_next_request = False
                    dst.sendall(data[: len(data) // 2])
                    link.frozen = True
                    self.cuts += 1
                    continue
                commit = up and b"COMMIT" in data
                if commit and self.lose_commit_reply and link.batch_open:
                    self.lose_commit_reply = False
                    link.replies_frozen = True
                    dst.sendall(data)
                    self.lost_replies += 1
                    continue
                link.batch_open = link.batch_open and not commit
                dst.sendall(data)
        except OSError:
            pass
        # One side closed: close both, so the server rolls back what it has. Unless the
        # link is frozen: a partition eats the FIN too, the server keeps the session.
        link.close(upstream=not link.frozen)

    def cut(self) -> None:
        """MariaDB gone: reset every open connection, refuse new ones (until refuse = False)."""
        self.refuse = True
        with self._lock:
            for link in self.links:
                link.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self._lock:
            for link in self.links:
                link.close()
