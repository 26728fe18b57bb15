"""TLS for the Redis-protocol door: the server's ssl.SSLContext from the settings, and the
bounded handshake of each connection, in the door's non-blocking loop (resp_door.py).

Settings (config.py): resp_tls_cert and resp_tls_key (PEM files: the certificate chain and its
private key; both or neither) turn TLS on for every connection of the door; resp_tls_ca (a
PEM file of CA certificates) also requires each client to present a certificate signed by one
of them. TLS 1.2 at least, the ssl module's default ciphers.

Non-blocking TLS differs from a plain socket in three ways the door handles:
- the handshake comes first, in several steps, each of which may want to read or to write
  (SSLWantReadError, SSLWantWriteError): the door polls for what it wants;
- a read may need a write (and a write a read), for the same reason;
- a readable poll says nothing about bytes already decrypted into the SSL object's buffer
  (pending()): after a read stops short of them, the door reads again without polling.

A connection that has not finished its handshake HANDSHAKE_TIMEOUT_S after it was accepted is
closed (a client that opens TLS and says nothing more holds a socket, not the node); one that
sends anything but TLS (plaintext RESP, garbage) fails its handshake and is closed at once.
Either way only that connection is affected.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from shmkv.errors import ConfigError

if TYPE_CHECKING:
    from .config import NodeConfig

# Ample for a handshake across a slow network (2 round trips and the key exchange), short
# enough that connections which never finish one cannot pile up.
HANDSHAKE_TIMEOUT_S = 5.0


def server_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The door's TLS context, or None when resp_tls_cert is not set; ConfigError (naming the
    setting) for a file that cannot be read or does not fit."""
    cert, key = config.resp_tls_cert, config.resp_tls_key
    # A set: a key without its certificate (or the other way round), or client CAs without
    # either, is a mistake, not a door without TLS.
    for given, missing in (("resp_tls_cert", not key and "resp_tls_key"),
                           ("resp_tls_key", not cert and "resp_tls_cert"),
                           ("resp_tls_ca", not cert and "resp_tls_cert")):
        if getattr(config, given) and missing:
            raise ConfigError(f"{given} is set but {missing} is not: the Redis-protocol "
                              f"door's TLS needs {missing} too")
    if not cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.resp_tls_cert, config.resp_tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"resp_tls_cert/resp_tls_key: cannot load the certificate "
                          f"{config.resp_tls_cert!r} with the key {config.resp_tls_key!r}: "
                          f"{_reason(exc)}") from None
    if config.resp_tls_ca:
        try:
            context.load_verify_locations(cafile=config.resp_tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"resp_tls_ca: cannot load CA certificates from "
                              f"{config.resp_tls_ca!r}: {_reason(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)


WANT_READ, WANT_WRITE = "read", "write"


def handshake_step(sock: ssl.SSLSocket) -> str | None:
    """Advance a server-side handshake: None once it is done, else what it waits for
    (WANT_READ or WANT_WRITE). Raises OSError (ssl.SSLError among them) if it failed."""
    try:
        sock.do_handshake()
    except ssl.SSLWantReadError:
        return WANT_READ
    except ssl.SSLWantWriteError:
        return WANT_WRITE
    return None
