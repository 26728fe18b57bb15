"""Why a client's (or a replica's) ZeroMQ socket cannot reach its node: the outcome of the
last security handshake, from the socket's monitor (zmq_socket_monitor(3)).

ZeroMQ never tells a socket's user that a handshake failed: the socket keeps reconnecting, and
messages wait (a DEALER's) or never come (a SUB's). The monitor does see it, and says which side
objected, so a client can turn "no reply" into an error that names the keys. Events come only
at connection time; nothing is added per message.
"""

from __future__ import annotations

import zmq
from zmq.utils.monitor import recv_monitor_message

_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication failed: the node refused this client's "
    "key (this client's .key file must be in the node's curve_allow directory)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "authentication failed: the security handshake "
    "failed; check the keys (curve_server_key must be the node's .key file)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "authentication failed: the node and this client do "
    "not use the same security (the node may require CurveZMQ keys: curve_server_key and "
    "curve_client_cert; or not use them)",
}
_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH \
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL


# A failure that may be a passing one (a connection reset while a node stops): only its
# repetition, on the next reconnection, shows that the keys are wrong.
_MAYBE_PASSING = {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL}


class HandshakeWatch:
    """The monitor of one socket; close() it before the socket."""

    def __init__(self, socket: zmq.Socket) -> None:
        self._socket = socket
        self.monitor = socket.get_monitor_socket(_EVENTS)
        self._failure: str | None = None
        self._in_row = 0  # failed handshakes since the last success
        self._definite = False

    def failure(self) -> str | None:
        """Why the last handshake failed, or None if none has failed since the last success."""
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            self._failure = _FAILURES.get(event)
            self._in_row = self._in_row + 1 if self._failure else 0
            self._definite = self._failure is not None and \
                (event not in _MAYBE_PASSING or self._in_row > 1)
        return self._failure

    def lasting_failure(self) -> str | None:
        """As failure(), but only once it cannot be a passing one: the node refused the key or
        the mechanism, or the same handshake failed twice in a row."""
        failure = self.failure()
        return failure if self._definite else None

    def close(self) -> None:
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:  # the socket is closed already
            pass
        self.monitor.close(linger=0)
