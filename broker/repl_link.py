"""A replica's connection to its primary (broker/replication.py has the protocol): requests
and replies kept in step, the epoch of every reply checked (fencing), and a refused CurveZMQ
handshake told from a silent primary.

A request that waits longer than REQUEST_TIMEOUT_S for its reply drops the socket (and any late
reply with it): the next request goes on a new one, so request and reply never get out of step.

CurveZMQ. A primary whose repl_bind is CURVE-protected (curve_secret_key, curve_allow: a door
like the others) admits a replica whose DEALER is a CURVE client (auth.CurveClient) with
repl_curve_server_key (the primary's PATH.key) and repl_curve_client_cert (this node's
PATH.key_secret, whose PATH.key is in the primary's curve_allow). A refused handshake is told
from a silent primary by the socket's monitor (handshake.py): a "replication_refused"
event names both public keys, nothing is exchanged, and the replica tries again every
replication.RETRY_S (a key added to the primary's allow-list is admitted after its SIGHUP).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq

import shmkv
from shmkv import layout as L
from shmkv.errors import ConfigError, ProtocolError, RemoteUnavailable, ShmKVError

from .auth import CurveClient
from .handshake import HandshakeWatch
from .repl_wire import message, parse

REQUEST_TIMEOUT_S = 5.0


class Stopped(Exception):
    """A stop signal arrived while the replica waited for its primary."""


class StaleEpoch(ShmKVError):
    """A primary answered with an epoch older than the replica's: it is no longer the primary
    (fencing), and what it sends is refused."""


class HandshakeRefused(RemoteUnavailable):
    """The primary's CurveZMQ handshake failed: it refused this replica's key, or it is not
    the key this replica expects, or one side speaks no CURVE. Nothing was exchanged."""


_CURVE_SETTINGS = ("repl_curve_server_key", "repl_curve_client_cert")


def curve_client(config: Any) -> CurveClient | None:
    """The replica's CURVE keys (None: it speaks no CURVE); ConfigError naming the setting if
    a file cannot be read, or holds no usable key."""
    try:
        return CurveClient.from_files(config.repl_curve_server_key or None,
                                      config.repl_curve_client_cert or None, _CURVE_SETTINGS)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class Link:
    """The DEALER socket toward the primary, and its requests."""

    def __init__(self, context: zmq.Context, config: Any,
                 wait: Callable[[zmq.Poller, int], bool]) -> None:
        self.context, self.config = context, config
        self.primary = config.replica_of
        self._wait = wait  # poll, with stop signals deliverable; False once one arrived
        self.curve = curve_client(config)
        self._socket: zmq.Socket | None = None
        # told (socket, True) when a socket is made and (socket, False) before it is closed:
        # the node's poller watches it for the replies to the pushed rounds (roles.py)
        self.watch: Callable[[zmq.Socket, bool], object] = lambda socket, on: None
        self._watch: HandshakeWatch | None = None  # why the primary does not answer, if CURVE
        self._id = 0
        # Since when the primary has said nothing to a request sent (None: nothing awaited).
        # Kept when a wait gives up early (Stopped: under etcd, after roles.YIELD_AFTER_S), so
        # that the next request shares its REQUEST_TIMEOUT_S: else a replica cut off from its
        # primary would never notice (nor resync) and queue a request a round.
        self._silent_since: float | None = None
        # The requests a wait gave up on early (Stopped), and the id of the first: asked again
        # as they were, they are not sent again (the primary would answer, and count, each
        # psync twice) but their replies awaited
        self._unanswered: tuple[list[dict[str, Any]], int] | None = None
        self.cache: shmkv.Cache | None = None  # the replica's region, once open (its epoch)
        self.epoch_refusals = 0

    @property
    def socket(self) -> zmq.Socket | None:
        return self._socket

    def _request(self, header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        return self._requests([header])[0]

    def _requests(self, headers: list[dict[str, Any]]) -> list[tuple[dict[str, Any], bytes]]:
        """Send every request, then read their replies (in order: the primary answers one
        socket's requests in turn). Pipelined: a round costs a few round trips through both
        nodes' loops, not a few per stripe."""
        if self._socket is None:
            self._connect()
        assert self._socket is not None
        if self._unanswered is not None and self._unanswered[0] == headers:
            first = self._unanswered[1]
        else:
            first = self._id + 1
            for header in headers:
                self._id += 1
                self._socket.send_multipart(message({**header, "id": self._id}))
        self._unanswered = None
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        if self._silent_since is None:
            self._silent_since = time.monotonic()
        replies: list[tuple[dict[str, Any], bytes]] = []
        while len(replies) < len(headers):
            left_ms = int((self._silent_since + REQUEST_TIMEOUT_S - time.monotonic()) * 1000)
            if left_ms <= 0:
                self._drop_socket()
                raise RemoteUnavailable(f"the primary {self.primary} did not answer within "
                                        f"{REQUEST_TIMEOUT_S} s")
            if not poller.poll(0) and not self._wait(poller, min(left_ms, 100)):
                if not replies:
                    self._unanswered = (headers, first)
                raise Stopped()
            if not poller.poll(0):
                self._check_handshake()
                continue
            reply, data = parse(self._socket.recv_multipart())
            self._silent_since = time.monotonic()  # per reply (a late one too)
            if reply.get("id") != first + len(replies):
                continue  # a late reply to an older request
            self._check_epoch(reply.get("epoch", 0))
            if not reply.get("ok"):
                op = headers[len(replies)]["op"]
                raise ShmKVError(f"the primary {self.primary} refused {op}: "
                                 f"{reply.get('error')}: {reply.get('message')}")
            replies.append((reply, data))
        self._silent_since = None
        return replies

    def _check_epoch(self, epoch: object) -> None:
        """Refuse a reply from an older epoch than the region's; adopt a newer one."""
        if self.cache is None:
            return
        if not isinstance(epoch, int):
            raise ProtocolError(f"epoch {epoch!r} is not a whole number")
        q = self.cache._region.q
        mine = q[L.H_REPL_EPOCH >> 3]
        if epoch < mine:
            self.epoch_refusals += 1
            self._drop_socket()
            raise StaleEpoch(f"the primary {self.primary} answers in epoch {epoch}, older than "
                             f"this replica's {mine}: refused")
        if epoch > mine:
            q[L.H_REPL_EPOCH >> 3] = epoch

    def _connect(self) -> None:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.secure(sock)  # before connect: the handshake starts with it
            self._watch = HandshakeWatch(sock)  # before connect too, not to miss it
        sock.connect(self.primary)
        self._socket = sock
        self.watch(sock, True)

    def _check_handshake(self) -> None:
        """A refused handshake is told from a silent primary at once (the monitor says so):
        raise HandshakeRefused naming both keys, rather than wait for the request timeout."""
        failure = self._watch.lasting_failure() if self._watch is not None else None
        if failure is None:
            return
        assert self.curve is not None
        self._drop_socket()
        raise HandshakeRefused(
            f"the primary {self.primary} refused the CurveZMQ handshake: {failure}. This "
            f"replica's public key is {self.curve.keys.public.decode()} (from "
            f"repl_curve_client_cert {self.config.repl_curve_client_cert}: its .key file must "
            f"be in the primary's curve_allow directory, then SIGHUP the primary); the "
            f"primary's key it expects is {self.curve.server_public.decode()} (from "
            f"repl_curve_server_key {self.config.repl_curve_server_key}: it must be the "
            "public key of the primary's curve_secret_key)")

    def _drop_socket(self) -> None:
        if self._watch is not None:
            self._watch.close()  # before its socket
            self._watch = None
        if self._socket is not None:
            self.watch(self._socket, False)
            self._socket.close()
            self._socket = None
        self._silent_since = None
        self._unanswered = None
