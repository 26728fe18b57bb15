"""Why a client's ZeroMQ socket cannot reach its node: the outcome of the last security
handshake, from the socket's monitor (zmq_socket_monitor(3)).

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


class HandshakeWatch:
    """The monitor of one socket; close() it before the socket."""

    def __init__(self, socket: zmq.Socket) -> None:
        self._socket = socket
        self.monitor = socket.get_monitor_socket(_EVENTS)
        self._failure: str | None = None

    def failure(self) -> str | None:
        """Why the last handshake failed, or None if none has failed since the last success."""
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            self._failure = _FAILURES.get(event)
        return self._failure

    def close(self) -> None:
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:  # the socket is closed already
            pass
        self.monitor.close(linger=0)
