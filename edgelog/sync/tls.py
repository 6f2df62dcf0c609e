"""Transport security towards MariaDB: which TLS, and where the password may go.

TLS modes (`[mariadb] ssl_mode`, MySQL's names; docs/guarantees.md §10 says what
each protects against):

* ``disabled``: no TLS. The default over a unix socket and towards a loopback
  address (the traffic never leaves the machine); towards any other host only
  when written explicitly, and `edgelog doctor` warns about it.
* ``required``: TLS, the server's certificate not checked: an eavesdropper reads
  nothing, a man in the middle reads everything.
* ``verify-ca``: TLS, the certificate must be signed by `ssl_ca`.
* ``verify-identity`` (the default for any other host): ``verify-ca`` plus the
  host name (or IP address) the config names must be in the certificate; the CA
  is `ssl_ca`, or the system's CA store.

The password guard: the password leaves in cleartext only over verified TLS or a
unix socket. On any other connection, a server (or anyone in the middle) that
asks for it in a form it could read is refused before anything is sent:

* as its first choice in the greeting (`check_greeting`, read with MSG_PEEK
  before PyMySQL sees it), or later in an auth switch or a plugin's extra round
  (`refusing_plugins`, PyMySQL's public ``auth_plugin_map``);
* the plugins refused are `CLEARTEXT_PLUGINS`: ``mysql_clear_password`` and
  ``dialog`` (PAM) send the password itself; ``sha256_password`` and
  ``caching_sha2_password``'s full authentication send it in cleartext over TLS
  and otherwise encrypted to a public key the server itself supplies, which a
  rogue server decrypts.

``mysql_native_password`` and ``client_ed25519`` send a proof computed from a
random challenge, never the password, and work everywhere.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass
from typing import Any

import pymysql
from pymysql.constants import CLIENT, CR

from ..config import MariaDBConfig

#: Modes under which the server has proved who it is.
VERIFIED = frozenset({"verify-ca", "verify-identity"})
#: Authentication plugins that hand the server the password (or something it can
#: decrypt to it), with what they would send.
CLEARTEXT_PLUGINS = {
    "mysql_clear_password": "the password in cleartext",
    "dialog": "the password in cleartext (PAM dialog)",
    "sha256_password": "the password, in cleartext or encrypted to a key the server supplies",
    "caching_sha2_password": "the password, in cleartext or encrypted to a key the server supplies",
}
_GREETING_MAX = 4096


class PasswordRefused(pymysql.err.OperationalError):
    """The server asked for the password in a form it could read, over a connection
    that does not allow it. Nothing was sent."""


class TlsUnavailable(pymysql.err.OperationalError):
    """ssl_mode asks for TLS and the server does not offer it. Nothing was sent."""


def password_may_travel(config: MariaDBConfig) -> bool:
    """True over a unix socket or verified TLS: the only channels the password may cross."""
    return config.unix_socket is not None or config.tls_mode in VERIFIED


def context(config: MariaDBConfig) -> ssl.SSLContext | None:
    """The TLS context of `config.tls_mode` (None: no TLS). Given to PyMySQL as its `ssl`
    argument: an SSLContext is used as it is (PyMySQL's ssl_* arguments would build
    their own and replace an ssl dict)."""
    mode = config.tls_mode
    if mode == "disabled":
        return None
    if mode == "required":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(config.ssl_ca) if config.ssl_ca else None)
        ctx.check_hostname = mode == "verify-identity"
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.ssl_cert is not None:
        ctx.load_cert_chain(str(config.ssl_cert), str(config.ssl_key) if config.ssl_key else None)
    return ctx


def channel(config: MariaDBConfig) -> str:
    """How this connection travels, in words, for error messages."""
    mode = config.tls_mode
    if config.unix_socket is not None:
        return "a unix socket"
    if mode == "disabled":
        return 'a connection without TLS (ssl_mode = "disabled")'
    if mode == "required":
        return 'TLS whose certificate is not verified (ssl_mode = "required")'
    return f'verified TLS (ssl_mode = "{mode}")'


def refusal(config: MariaDBConfig, plugin: str) -> PasswordRefused:
    """The one-line error for a server asking for the password as `plugin` would send it."""
    sends = CLEARTEXT_PLUGINS.get(plugin, "the password")
    return PasswordRefused(
        CR.CR_AUTH_PLUGIN_CANNOT_LOAD,
        f"the server asked for {sends} ({plugin}) over {channel(config)}: refused, password not sent; "
        'set ssl_mode = "verify-identity" (or "verify-ca" with ssl_ca) so the server proves who it is',
    )


def refusing_plugins(config: MariaDBConfig) -> dict[str, type]:
    """PyMySQL's `auth_plugin_map` for a connection the password may not cross: each
    cleartext plugin's handler refuses, whether the server switches to it or asks for
    its extra round (PyMySQL looks the handler up by name for both)."""

    class Refuse:
        plugin = ""

        def __init__(self, conn: Any) -> None:
            self.conn = conn

        def authenticate(self, packet: Any) -> Any:
            raise refusal(config, self.plugin)

        def prompt(self, echo: bool, prompt: bytes) -> bytes:  # the dialog plugin's other entry
            raise refusal(config, self.plugin)

    return {name: type(f"Refuse_{name}", (Refuse,), {"plugin": name}) for name in CLEARTEXT_PLUGINS}


# -- the server's greeting, read before PyMySQL answers it ---------------------------------


@dataclass(frozen=True)
class Greeting:
    capabilities: int
    plugin: str  # the server's first-choice authentication plugin ("" if none named)

    @property
    def offers_tls(self) -> bool:
        return bool(self.capabilities & CLIENT.SSL)


def peek_greeting(sock: socket.socket, deadline: float) -> Greeting | None:
    """The server's HandshakeV10, read with MSG_PEEK (PyMySQL then reads it as usual).
    None: the first packet is an error packet (PyMySQL raises it, having sent nothing).
    Raises OperationalError for anything else, or no complete packet by `deadline`."""
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise pymysql.err.OperationalError(CR.CR_SERVER_LOST, "no greeting within connect_timeout_s")
        sock.settimeout(remaining)
        try:
            data = sock.recv(_GREETING_MAX, socket.MSG_PEEK)
        except OSError as exc:
            raise pymysql.err.OperationalError(CR.CR_SERVER_LOST, f"no greeting: {exc}") from None
        if not data:
            raise pymysql.err.OperationalError(CR.CR_SERVER_LOST, "the server closed before its greeting")
        size = int.from_bytes(data[:3], "little") if len(data) >= 4 else None
        if size is not None and len(data) >= 4 + size:
            break
        if len(data) >= _GREETING_MAX:
            raise pymysql.err.OperationalError(CR.CR_SERVER_HANDSHAKE_ERR, "greeting too long")
        time.sleep(0.005)  # part of the packet is here: wait for the rest
    payload = data[4 : 4 + size]
    if payload[:1] == b"\xff":
        return None
    try:
        return _parse_greeting(payload)
    except (IndexError, ValueError, struct.error):
        raise pymysql.err.OperationalError(
            CR.CR_SERVER_HANDSHAKE_ERR, "the server's greeting is not a MySQL protocol 10 handshake"
        ) from None


def _parse_greeting(p: bytes) -> Greeting:
    if p[0] != 10:
        raise ValueError("protocol")
    i = p.index(b"\0", 1) + 1  # server version
    i += 4 + 8 + 1  # thread id, first part of the challenge, filler
    capabilities = struct.unpack_from("<H", p, i)[0]
    i += 2
    plugin = ""
    if len(p) > i:
        i += 1 + 2  # character set, status
        capabilities |= struct.unpack_from("<H", p, i)[0] << 16
        i += 2
        challenge_len = p[i]
        i += 1 + 10
        if capabilities & CLIENT.SECURE_CONNECTION:
            i += max(13, challenge_len - 8)
        if capabilities & CLIENT.PLUGIN_AUTH and i < len(p):
            end = p.find(b"\0", i)
            plugin = p[i : end if end >= 0 else len(p)].decode("ascii", "replace")
    return Greeting(capabilities, plugin)


def check_greeting(greeting: Greeting | None, config: MariaDBConfig) -> None:
    """Refuse, before anything is sent, a server that does not offer the TLS ssl_mode
    requires, or that wants a cleartext plugin where the password may not travel."""
    if greeting is None:
        return
    mode = config.tls_mode
    if mode != "disabled" and not greeting.offers_tls:
        reason = "" if config.ssl_mode else " (the default for a host that is not loopback)"
        raise TlsUnavailable(
            CR.CR_SSL_CONNECTION_ERROR,
            f'the server does not offer TLS, and ssl_mode = "{mode}"{reason} requires it: '
            "refused, nothing sent (enable TLS on the server: docs/guarantees.md §10)",
        )
    if greeting.plugin in CLEARTEXT_PLUGINS and not password_may_travel(config):
        raise refusal(config, greeting.plugin)
