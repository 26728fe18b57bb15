"""CurveZMQ for the node's ZeroMQ sockets: the key files, the server side (the node's ROUTER and
XPUB sockets, and the ZAP handler that admits only allowed client keys) and the client side
(RemoteCache, Subscriber).

CurveZMQ (zmq_curve(7)) encrypts every message and authenticates both ends: a client must know
the node's public key to connect at all, and the node asks its ZAP handler (RFC 27) whether the
client's public key is in the allow-list, a directory of public key files. A client that is
refused, or that speaks no CURVE, never completes the handshake: it receives nothing, and
nothing it sends reaches the node.

Key files, written by `shmkv keygen PATH` (the certificate format of pyzmq's zmq.auth, ZPL text,
so zmq.auth.load_certificate and other CurveZMQ tools read them):

    file              holds                                    mode   give it to
    PATH.key          `public-key = "<40 Z85 characters>"`     0644   the peers
    PATH.key_secret   the same, and `secret-key = "<...>"`     0600   nobody: it is the identity

A node is set up with its own PATH.key_secret (curve_secret_key) and a directory holding the
PATH.key of every client it admits (curve_allow); a client with the node's PATH.key
(curve_server_key) and its own PATH.key_secret (curve_client_cert).

The allow-list is read at start, and again when the node gets SIGHUP (`kill -HUP`; server.py
acts on it between requests): a key added to the directory is admitted at its next
connection, a key removed is refused at its next connection. A connection already open stays
open: ZAP runs only in the handshake, never per message, so a revoked client keeps its
connection until it closes it or the node restarts. A reload that finds the directory unusable
(missing, empty, a malformed key file: most likely an edit in progress) keeps the list it had
and says why; to shut every client out, stop the node.

Why a ZAP thread (zmq.auth.thread.ThreadAuthenticator) rather than a handler in the node's
loop: ZAP runs once per connection, in the handshake, never per message, so the thread sleeps
while requests flow and costs the loop nothing; a handler in the loop would add a socket to
every poll and delay handshakes behind request batches. Measured (bench/bench_curve.py, results
in bench/results/curve-*.md): CURVE adds ~16% to a get's round trip and ~23% to a get_many of
100 (encryption), and a few ms to a connection (key exchange and the ZAP round trip); a handler
in the loop could only change the last, which clients pay once.
"""

from __future__ import annotations

import datetime
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from shmkv.errors import ConfigError

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
ZAP_DOMAIN = "shmkv"
_Z85_KEY_CHARS = 40  # a 32-byte key in Z85


@dataclass(frozen=True)
class KeyPair:
    public: bytes
    secret: bytes


# --- key files ------------------------------------------------------------------------------
def create_key_files(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write PATH.key and PATH.key_secret (mode 0600) for a new key pair; returns their paths.

    Refuses (FileExistsError) if either exists: overwriting a key would lock out every peer
    that holds the old one. The secret file is created 0600 by open(2) itself, so it is never
    readable by others, not even for a moment.
    """
    public_path = Path(f"{os.fspath(path)}{PUBLIC_SUFFIX}")
    secret_path = Path(f"{os.fspath(path)}{SECRET_SUFFIX}")
    for existing in (public_path, secret_path):
        if os.path.lexists(existing):
            raise FileExistsError(f"{existing} exists; keygen never overwrites a key "
                                  "(remove it first, or give another path)")
    public, secret = zmq.curve_keypair()
    _write_new(secret_path, _certificate("Secret", public, secret), 0o600)
    try:
        _write_new(public_path, _certificate("Public", public, None), 0o644)
    except BaseException:
        secret_path.unlink()
        raise
    return public_path, secret_path


def _certificate(kind: str, public: bytes, secret: bytes | None) -> str:
    lines = [(f"#   ****  Generated on {datetime.datetime.now():%Y-%m-%d %H:%M:%S} "
              "by shmkv keygen  ****"),
             f"#   ZeroMQ CURVE **{kind}** Certificate",
             "#   Do not give this file to anyone." if secret else
             "#   Give this file to the peers that must know this key.",
             "", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write_new(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away from the public file
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_public_key(path: str, setting: str) -> bytes:
    """The public key of a key file (PATH.key or PATH.key_secret); ValueError naming the
    setting if it cannot be read or holds no valid key."""
    public, _ = _read(path, setting)
    return public


def read_key_pair(path: str, setting: str) -> KeyPair:
    """The key pair of a PATH.key_secret file; ValueError naming the setting if it cannot be
    read, holds no secret key, or other users may read it."""
    public, secret = _read(path, setting)
    if secret is None:
        raise ValueError(f"{setting}: {path} holds no secret key; give the .key_secret file "
                         "that shmkv keygen wrote, not the public .key")
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{setting}: {path} has mode {stat.S_IMODE(mode):04o}: other users may "
                         "read the secret key; chmod 600 it (and make a new key if they did)")
    return KeyPair(public, secret)


def _read(path: str, setting: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ValueError(f"{setting}: cannot read a key from {path!r}: {reason}") from None
    for key in (public, secret):
        if key is not None and len(key) != _Z85_KEY_CHARS:
            raise ValueError(f"{setting}: {path!r} holds a malformed key (expected "
                             f"{_Z85_KEY_CHARS} Z85 characters)")
    return public, secret


def allowed_keys(directory: str) -> list[bytes]:
    """The public keys of the *.key files in directory (the allow-list)."""
    if not os.path.isdir(directory):
        raise ValueError(f"curve_allow: {directory!r} is not a directory")
    keys = [read_public_key(str(p), "curve_allow")
            for p in sorted(Path(directory).glob("*" + PUBLIC_SUFFIX))]
    if not keys:
        raise ValueError(f"curve_allow: no *{PUBLIC_SUFFIX} files in {directory!r}: no client "
                         "could connect; copy the clients' public keys there")
    return keys


# --- the node's side ------------------------------------------------------------------------
class CurveServer:
    """The node's CURVE identity and its ZAP handler, for the life of one zmq.Context.

    start() raises ConfigError (naming the setting) for a bad key file or allow-list, before
    anything is bound; secure(socket) makes a socket a CURVE server, before it binds.
    """

    def __init__(self, context: zmq.Context, secret_key_file: str, allow_dir: str) -> None:
        if not (secret_key_file and allow_dir):
            given, missing = ("curve_secret_key", "curve_allow") if secret_key_file else \
                ("curve_allow", "curve_secret_key")
            raise ConfigError(f"{given} is set but {missing} is not: CurveZMQ needs both (the "
                              "node's secret key file, and the directory of allowed client keys)")
        try:
            self.keys = read_key_pair(secret_key_file, "curve_secret_key")
            self.allowed = allowed_keys(allow_dir)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._authenticator = ThreadAuthenticator(context)
        self._authenticator.start()
        # the keys were read above: a handler reading the directory again could see another
        # set of files (and an empty set would admit nobody, silently)
        self._allow_dir = allow_dir
        self._admit(self.allowed)

    def _admit(self, keys: list[bytes]) -> None:
        # One assignment of a new dict: the ZAP thread looks keys up in whichever dict it
        # finds, never in one half updated.
        self._authenticator.certs[ZAP_DOMAIN] = {key: True for key in keys}

    def reload(self) -> int:
        """Read the allow-list directory again and admit exactly its keys from the next
        handshake on; returns how many. ConfigError (and the list unchanged) if it is unusable."""
        try:
            keys = allowed_keys(self._allow_dir)
        except ValueError as exc:
            raise ConfigError(f"{exc}; the allow-list in use is unchanged") from None
        self.allowed = keys
        self._admit(keys)
        return len(keys)

    def secure(self, socket: zmq.Socket) -> None:
        socket.curve_secretkey = self.keys.secret
        socket.curve_publickey = self.keys.public
        socket.curve_server = True
        socket.zap_domain = ZAP_DOMAIN.encode()

    def stop(self) -> None:
        self._authenticator.stop()


# --- the client's side ----------------------------------------------------------------------
@dataclass(frozen=True)
class CurveClient:
    """What a client needs: the node's public key and its own key pair."""

    server_public: bytes
    keys: KeyPair

    @classmethod
    def from_files(cls, server_key: str | os.PathLike[str] | None,
                   client_cert: str | os.PathLike[str] | None,
                   settings: tuple[str, str] = ("curve_server_key", "curve_client_cert"),
                   ) -> CurveClient | None:
        """None when neither file is given (no CURVE); ValueError if only one is, or if a
        file cannot be read. settings: the names the errors give the two files (a replica
        node has its own)."""
        if server_key is None and client_cert is None:
            return None
        if server_key is None or client_cert is None:
            raise ValueError(f"CurveZMQ needs both {settings[0]} (the node's .key file) and "
                             f"{settings[1]} (this client's .key_secret file)")
        return cls(read_public_key(os.fspath(server_key), settings[0]),
                   read_key_pair(os.fspath(client_cert), settings[1]))

    def secure(self, socket: zmq.Socket) -> None:
        """Make socket a CURVE client of the node; before it connects."""
        socket.curve_serverkey = self.server_public
        socket.curve_publickey = self.keys.public
        socket.curve_secretkey = self.keys.secret


AUTH_HINT = "authentication may have failed: check the keys (curve_server_key must be the " \
    "node's .key file, and this client's .key file must be in the node's curve_allow directory)"
