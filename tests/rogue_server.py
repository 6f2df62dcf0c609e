"""A rogue MySQL server, for tests: it speaks just enough of the handshake to ask a client
for its password in the form a thief wants, and records every byte the client sends.

    python tests/rogue_server.py --listen 198.18.0.1:3306 --record DIR \
        [--plugin mysql_native_password] [--switch mysql_clear_password] [--tls CERT KEY]

Per connection: a HandshakeV10 naming `--plugin` (with the SSL capability only if
`--tls` is given; then a client's SSLRequest is answered with a real TLS handshake and
what follows is recorded decrypted), then, after the client's answer, an
AuthSwitchRequest to `--switch` (if given), then whatever the client sends next, then
an "Access denied" error. Everything the client sent (decrypted) goes to
DIR/conn-N.bin; DIR/conn-N.done appears when the connection is over. Prints "ready"
once listening.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import struct
import threading
from pathlib import Path

from pymysql.constants import CLIENT

CAPABILITIES = (
    CLIENT.LONG_PASSWORD
    | CLIENT.FOUND_ROWS
    | CLIENT.LONG_FLAG
    | CLIENT.CONNECT_WITH_DB
    | CLIENT.PROTOCOL_41
    | CLIENT.TRANSACTIONS
    | CLIENT.SECURE_CONNECTION
    | CLIENT.MULTI_RESULTS
    | CLIENT.PLUGIN_AUTH
    | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA
)


def packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def greeting(plugin: str, tls: bool, challenge: bytes) -> bytes:
    caps = CAPABILITIES | (CLIENT.SSL if tls else 0)
    return (
        b"\x0a5.5.5-10.11.6-MariaDB-rogue\0"
        + struct.pack("<I", 7)
        + challenge[:8]
        + b"\0"
        + struct.pack("<H", caps & 0xFFFF)
        + bytes([45])  # utf8mb4
        + struct.pack("<H", 2)
        + struct.pack("<H", caps >> 16)
        + bytes([len(challenge) + 1])
        + b"\0" * 10
        + challenge[8:]
        + b"\0"
        + plugin.encode()
        + b"\0"
    )


class Recorder:
    def __init__(self, sock: socket.socket, out: Path):
        self.sock = sock
        self.out = out.open("ab")

    def read_packet(self) -> tuple[int, bytes]:
        head = self._exactly(4)
        size = int.from_bytes(head[:3], "little")
        return head[3], self._exactly(size)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client closed")
            data += chunk
            self.out.write(chunk)
            self.out.flush()
        return data


def serve(conn: socket.socket, n: int, args: argparse.Namespace, tls: ssl.SSLContext | None) -> None:
    record = Path(args.record)
    try:
        conn.settimeout(10)
        challenge = bytes(b % 94 + 33 for b in os.urandom(20))  # printable, no NUL
        conn.sendall(packet(0, greeting(args.plugin, tls is not None, challenge)))
        rec = Recorder(conn, record / f"conn-{n}.bin")
        seq, payload = rec.read_packet()
        if tls is not None and len(payload) == 32 and struct.unpack_from("<I", payload)[0] & CLIENT.SSL:
            conn = tls.wrap_socket(conn, server_side=True)
            rec.sock = conn
            seq, payload = rec.read_packet()  # the real answer, now decrypted
        if args.switch:
            data = b"\x04Password: " if args.switch == "dialog" else challenge + b"\0"
            conn.sendall(packet(seq + 1, b"\xfe" + args.switch.encode() + b"\0" + data))
            seq, payload = rec.read_packet()
        conn.sendall(packet(seq + 1, b"\xff" + struct.pack("<H", 1045) + b"#28000Access denied"))
    except (OSError, ConnectionError):
        pass
    finally:
        conn.close()
        (record / f"conn-{n}.done").touch()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--plugin", default="mysql_native_password")
    parser.add_argument("--switch", default="")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    args = parser.parse_args()
    tls = None
    if args.tls:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(*args.tls)
    host, port = args.listen.rsplit(":", 1)
    listener = socket.create_server((host, int(port)))
    print("ready", flush=True)
    for n in range(1_000_000):
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, n, args, tls), daemon=True).start()


if __name__ == "__main__":
    main()
