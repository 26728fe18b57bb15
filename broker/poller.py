"""The node's poller: zmq.Poller's interface on one epoll(7) set, for the node's loop (server.py)
and each worker's (worker.py).

Why: zmq_poll() calls poll(2) twice each time it sleeps (a first pass that does not wait, then
the wait) and asks each ZeroMQ socket for ZMQ_EVENTS after each pass, which for an idle socket
is a getpid and a poll of its own. On a wake-up for one RESP request that is six system calls
where Redis makes one (epoll_wait), beside the read and the write (bench/README.md).

A ZeroMQ socket is watched through its ZMQ_FD, which libzmq makes readable when the socket has
news to process, not while a message waits: after one message is read others may wait with
nothing to signal them, and a send or a recv on the socket may take in the news that would
have signalled one. So before each sleep every ZeroMQ socket is asked for ZMQ_EVENTS (a socket
with something to report: no sleep), and after a wake-up its ZMQ_FD caused it is asked again
(libzmq's documented way to put a socket in another event loop) - except a socket that is
settled: the last thing done with it was a ZMQ_EVENTS or a recv that found nothing to read, so
its ZMQ_FD will signal whatever comes next. The caller says so with settled(sock). A socket
registered as tracked is also settled by the poll itself when its own ask finds nothing: the
caller of a tracked socket promises to call unsettled(sock) whenever it uses the socket other
than right after a poll reported it. A socket the poll reports is no longer settled (the
caller is about to use it).

As zmq.Poller: register(obj, flags) takes a zmq.Socket, an int descriptor or an object with
fileno(), flags zmq.POLLIN | zmq.POLLOUT (registering again changes them, 0 unregisters);
poll(timeout_ms) returns [(socket or descriptor, revents)] in zmq's flags (a descriptor as
its int, whatever was registered), a hang-up or an error on a descriptor as POLLERR.
"""

from __future__ import annotations

import select
from typing import Any

import zmq

_POLLIN, _POLLOUT, _POLLERR = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.POLLERR)
_EVENTS = int(zmq.EVENTS)
_EPOLLIN, _EPOLLOUT = select.EPOLLIN, select.EPOLLOUT


class Poller:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._fds: dict[int, int] = {}  # descriptor -> flags
        self._sockets: dict[zmq.Socket, int] = {}  # ZeroMQ socket -> flags
        self._socket_fds: dict[zmq.Socket, int] = {}  # ZeroMQ socket -> its ZMQ_FD
        self._socket_at: dict[int, zmq.Socket] = {}  # and back
        self._settled: set[zmq.Socket] = set()
        self._tracked: set[zmq.Socket] = set()

    def __contains__(self, obj: Any) -> bool:
        if isinstance(obj, zmq.Socket):
            return obj in self._sockets
        return self._fd(obj) in self._fds

    def register(self, obj: Any, flags: int = _POLLIN | _POLLOUT, *,
                 tracked: bool = False) -> None:
        if not flags:
            if obj in self:
                self.unregister(obj)
            return
        if isinstance(obj, zmq.Socket):
            if obj not in self._sockets:
                fd = obj.getsockopt(zmq.FD)
                self._epoll.register(fd, _EPOLLIN)
                self._socket_fds[obj], self._socket_at[fd] = fd, obj
            self._sockets[obj] = flags
            if tracked:
                self._tracked.add(obj)
            return
        fd = self._fd(obj)
        mask = (_EPOLLIN if flags & _POLLIN else 0) | (_EPOLLOUT if flags & _POLLOUT else 0)
        if fd in self._fds:
            self._epoll.modify(fd, mask)
        else:
            self._epoll.register(fd, mask)
        self._fds[fd] = flags

    def unregister(self, obj: Any) -> None:
        """As zmq.Poller's: KeyError if obj is not registered."""
        if isinstance(obj, zmq.Socket):
            del self._sockets[obj]  # the KeyError, before anything changes
            fd = self._socket_fds.pop(obj)
            del self._socket_at[fd]
            self._settled.discard(obj)
            self._tracked.discard(obj)
        else:
            fd = self._fd(obj)
            del self._fds[fd]
        self._epoll.unregister(fd)

    def settled(self, sock: zmq.Socket) -> None:
        """The last thing done with sock found nothing to read (the module's docstring)."""
        if sock in self._sockets:
            self._settled.add(sock)

    def unsettled(self, sock: zmq.Socket) -> None:
        self._settled.discard(sock)

    def poll(self, timeout_ms: int | None = -1) -> list[tuple[Any, int]]:
        """What is ready, waiting at most timeout_ms (None or negative: until something is)."""
        ready: list[tuple[Any, int]] = []
        settled, tracked, asked = self._settled, self._tracked, set()
        for sock, flags in self._sockets.items():
            if sock not in settled:
                asked.add(sock)
                events = sock.getsockopt(_EVENTS) & flags
                if events:
                    ready.append((sock, events))
                elif sock in tracked:
                    settled.add(sock)
        if ready:
            timeout_s: float = 0
        else:
            timeout_s = -1 if timeout_ms is None or timeout_ms < 0 else timeout_ms / 1000
        fds = self._fds
        for fd, mask in self._epoll.poll(timeout_s):
            if fd in fds:
                ready.append((fd, (_POLLIN if mask & _EPOLLIN else 0)
                              | (_POLLOUT if mask & _EPOLLOUT else 0)
                              | (_POLLERR if mask & ~(_EPOLLIN | _EPOLLOUT) else 0)))
                continue
            sock = self._socket_at.get(fd)  # news for a ZeroMQ socket: what is there now?
            # (one asked above and found ready is in ready; one found idle may have news
            # since, unless the poll did not wait: then the next poll asks it again)
            if sock is not None and (sock not in asked or timeout_s != 0):
                events = sock.getsockopt(_EVENTS) & self._sockets[sock]
                if events:
                    ready.append((sock, events))
        for obj, _ in ready:
            settled.discard(obj)
        return ready

    def close(self) -> None:
        self._epoll.close()

    @staticmethod
    def _fd(obj: Any) -> int:
        return obj if isinstance(obj, int) else obj.fileno()
