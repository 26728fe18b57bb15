"""The node's Redis-protocol door: a listening TCP socket and its client connections, served
from the node's one poll loop (server.py), non-blocking.

    listening socket readable -> accept every waiting connection (a Session each)
    a connection readable     -> read what is there; answer the plain GET, SET, INCR,
                                 DECR and MGET it begins with in C (_run_compiled); parse the rest
                                 (resp.py), run it in order (resp_commands.py), queue the
                                 replies, and write as much as the socket takes; a connection
                                 that only reads moves to the read lane (resp_lane.py)
    the read lane hands one back -> run what it did not answer, as if read now
    a parked command answered  -> queue its reply, run the connection's next commands
    a parked WAIT satisfied    -> the same, once its replicas have the connection's writes
                                 or its timeout passed (looked at every WAIT_POLL_S)
    a connection writable     -> write more of what is queued; when nothing is left, the
                                 door stops asking the poller about writability
    events read from the rings -> channel messages and keyspace notifications for this
                                 door's subscribers (EventTee hands them over)

Each connection has its own input buffer (the parser's) and output buffer. A request that
breaks the protocol, or grows past the parser's limits, gets Redis's protocol error and the
connection is closed once that reply is written; nothing else is affected. A connection whose
queued output passes MAX_OUTPUT_BYTES (a client that sends requests or subscribes and never
reads) is closed at once: the node's memory is bounded by the number of connections times
that, not by what clients fail to read. One reply larger than that (a GET of a 64 MiB value)
raises the connection's cap by its size until its output has drained (Session.allowance):
Redis serves such a reply whole, and the bound becomes the cap plus two of the largest
values a client asks for at once. Replies are queued in the order the requests came,
pipelined or not.

Busy locks. Commands run on the node's requests handle, which waits only a moment for a lock
(server.py). A command that finds one busy for longer (a local process stopped or stuck while
holding it) is parked in the node's one queue of waiting requests (waits.py, shared with the
ZeroMQ door, so requests on one key keep their order across both doors) and tried again from
the node's loop while every other connection is served. Its connection runs none of its later
commands, and reads no more, until it is answered: replies keep the order of the requests, as
pipelining clients rely on. A command still parked at the node's lock timeout (5 s) is
answered `-LOCKTIMEOUT <command>: the stripe N lock it needs stayed busy for ... s, held by
pid P, ...` (redis-py raises it as a ResponseError); so is one that finds too many requests
waiting already.

TLS (resp_tls_cert and resp_tls_key set): every connection is TLS, its handshake first, bounded
in time; what differs from a plain socket in a non-blocking loop is in resp_tls.py.

Context is what commands share (resp_context.py: the executor of the request model that both
doors run, dispatch.py; the settings, the pub/sub registry, the counters INFO shows); Session
is one connection's state (database, protocol, name, authentication, subscriptions).
"""

from __future__ import annotations

import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq

import shmkv
from shmkv.arrays import ARRAY_MAGIC
from shmkv.backend import resp_serve
from shmkv.errors import ShmKVError

from . import resp_server_commands  # noqa: F401  (adds its commands to the table)
from .resp import Error
from .resp_commands import BUSY, execute, keys_of
from .resp_context import Context, Session
from .resp_lane import LANE_AFTER_READS, lane_for
from .resp_server_commands import Replies, WaitFor
from .resp_tls import HANDSHAKE_TIMEOUT_S, WANT_WRITE, handshake_step, server_context
from .waits import Keys, LockWaits

if TYPE_CHECKING:
    from shmkv.events import Event

    from .config import NodeConfig

# A connection's queued replies past this are not going to be read soon: Redis's hard limit
# for pub/sub clients (client-output-buffer-limit pubsub 32mb).
MAX_OUTPUT_BYTES = 32 << 20
READ_BYTES = 256 << 10  # per recv(); up to READS_PER_WAKE of them per wake-up and connection
READS_PER_WAKE = 4
# TLS: a recv() gives at most one record (16 KiB), so more of them per wake-up; a send() is of
# at most TLS_WRITE_BYTES (a slice: a copy), as OpenSSL encrypts what it is given whole.
TLS_READS_PER_WAKE = 64
TLS_WRITE_BYTES = 256 << 10
MAX_CLIENTS = 10_000  # Redis's maxclients
# How often a parked WAIT looks again at what its replicas applied (they say so every round)
WAIT_POLL_S = 0.005
# The compiled path's largest GET reply (larger ones are Python's: the output cap's allowance)
FAST_MAX_VALUE_BYTES = 64 << 10
# The poll flags as plain ints: zmq's are enum members, whose & costs a call each (measured:
# 5% of the node's time under redis-benchmark).
POLLIN, POLLOUT, POLLERR = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.POLLERR)
_NO_REPLY = object()


class RespDoor:
    """The listening socket and the connections; the node's loop calls attach() once, then
    service() with what each poll reported, and close() on the way out."""

    def __init__(self, cache: shmkv.Cache, config: NodeConfig, host: str, port: int,
                 waits: LockWaits, requirepass: str = "",
                 listener: socket.socket | None = None) -> None:
        """cache: a handle that waits only a moment for a lock; waits: the node's queue of
        parked requests, which the node's loop retries; listener: a listening socket to accept
        on instead of binding host:port (the workers of a node share the one their
        supervisor bound: broker/supervisor.py)."""
        tls = server_context(config)  # before binding: a bad certificate binds nothing
        try:
            self.listener = listener or socket.create_server(
                (host, port), backlog=511, family=_family(host), reuse_port=False)
        except OSError as exc:
            raise ShmKVError(f"cannot listen for the Redis protocol on {host}:{port}: "
                             f"{exc.strerror}; give another address with --resp-bind") from None
        self.listener.setblocking(False)
        self.fd = self.listener.fileno()
        bound = self.listener.getsockname()
        self.address = f"{host}:{bound[1]}" if ":" not in host else f"[{host}]:{bound[1]}"
        self.ctx = Context(cache, config, host, bound[1], requirepass)
        self.waits = waits
        self._parked = waits.queue  # true while any request of either door waits
        self.tls = tls
        self._handshaking: dict[int, Session] = {}  # fd -> session, in accept order
        self._decrypted: set[Session] = set()  # TLS bytes read and not yet parsed
        self._poller: zmq.Poller | None = None
        self.pump: Callable[[], object] = lambda: None  # set by the node: read the rings
        self._waiting: dict[Session, WaitFor] = {}  # the connections parked by a WAIT
        self._lane = self.ctx.lane = None if self.ctx.compiled is None or tls is not None \
            else lane_for(config.region, config.region_owner or None, FAST_MAX_VALUE_BYTES,
                          waits.queue)

    @property
    def listening(self) -> bool:
        return self.ctx.listening

    def attach(self, poller: zmq.Poller) -> None:
        self._poller = poller
        poller.register(self.fd, POLLIN)
        if self._lane is not None:
            poller.register(self._lane.fd, POLLIN)

    def service(self, ready: dict[Any, int]) -> None:
        """Handle what the poll reported for the door's sockets (others are ignored)."""
        if self._waiting:
            self._answer_waits()
        if self.fd in ready:
            self._accept()
        if self._lane is not None:
            if self._lane.fd in ready:
                self._taken_back(self._lane.take_back())
            self._lane.count(time.monotonic())
        sessions = self.ctx.sessions
        for fd, flags in ready.items():
            s = sessions.get(fd) if type(fd) is int else None
            if s is None:
                continue
            if s.handshake_deadline_s is not None:
                self._handshake(s)
                continue
            if flags & POLLIN:
                self._read(s)
            if flags & POLLOUT and fd in sessions:
                if s.read_wants_write:
                    s.read_wants_write = False
                    self._read(s)
                if fd in sessions:
                    self._write(s)
            if flags & POLLERR and fd in sessions:
                self._drop(s)
        if self.tls is not None:
            self._tls_upkeep()

    def due(self) -> float:
        """When the loop must call service() again, with or without anything polled
        (monotonic seconds): a TLS handshake's deadline, or now for decrypted bytes unread;
        soon while a WAIT is parked."""
        if self._decrypted:
            return 0.0
        due = time.monotonic() + WAIT_POLL_S if self._waiting else float("inf")
        if self._handshaking:  # the first accepted has the first deadline
            due = min(due, next(iter(self._handshaking.values())).handshake_deadline_s or 0.0)
        return due

    def deliver_events(self, events: Iterable[Event]) -> None:
        if self.ctx.listening:
            self.ctx.deliver_events(events)
            for s in list(self.ctx.sessions.values()):
                if s.out:
                    self._write(s)

    def close(self) -> None:
        """Write what each connection has queued, as far as its socket takes it at once
        (replies to requests the node read are not dropped by a stop), then close all."""
        self._answer_waits(stopping=True)  # how many replicas have their writes by now
        if self._lane is not None:  # its connections back first, with what they are owed
            if self._poller is not None:
                self._poller.unregister(self._lane.fd)
            lane, self._lane = self._lane, None
            self._taken_back(lane.close())
        for s in list(self.ctx.sessions.values()):
            self._write(s, flush_only=True)
            self._drop(s)
        if self._poller is not None:
            self._poller.unregister(self.fd)
        self.listener.close()
        self.ctx.close()

    # --- connections ----------------------------------------------------------------------
    def _accept(self) -> None:
        ctx = self.ctx
        while True:
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the others are still served
                print(f"resp: accept failed: {exc}", file=sys.stderr, flush=True)
                return
            ctx.connections_received += 1
            if len(ctx.sessions) >= MAX_CLIENTS:
                ctx.rejected_connections += 1
                sock.close()
                continue
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
                except OSError:  # gone already
                    sock.close()
                    continue
            s = Session(ctx, sock, f"{peer[0]}:{peer[1]}")
            ctx.sessions[s.fd] = s
            if s.tls:
                s.handshake_deadline_s = time.monotonic() + HANDSHAKE_TIMEOUT_S
                self._handshaking[s.fd] = s
                self._handshake(s)  # its hello may be there already
            else:
                self._watch(s)

    def _handshake(self, s: Session) -> None:
        try:
            wants = handshake_step(s.sock)  # type: ignore[arg-type]  # s.tls: an SSLSocket
        except OSError:  # not TLS, garbage, a certificate refused, or the peer has gone
            self._drop(s)
            return
        if wants is not None:
            s.handshake_wants = wants
            self._watch(s)
            return
        del self._handshaking[s.fd]
        s.handshake_deadline_s = None
        self._watch(s)
        self._read(s)  # a request may have come with the end of the handshake

    def _tls_upkeep(self) -> None:
        """Close the connections whose handshake is late; parse what TLS holds decrypted
        (a readable poll does not show it)."""
        now = time.monotonic()
        for s in list(self._handshaking.values()):
            if now < (s.handshake_deadline_s or 0.0):
                break  # in accept order: the others are later still
            self._drop(s)
        for s in list(self._decrypted):
            self._decrypted.discard(s)
            if self.ctx.sessions.get(s.fd) is s and s.parked is None:
                self._read(s)

    def _read(self, s: Session) -> None:
        for _ in range(TLS_READS_PER_WAKE if s.tls else READS_PER_WAKE):
            try:
                data = s.sock.recv(READ_BYTES)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                break
            except ssl.SSLWantWriteError:
                s.read_wants_write = True
                self._watch(s)
                break
            except OSError:
                self._drop(s)
                return
            if not data:  # the client closed its side
                self._drop(s)
                return
            if s.closing:
                continue  # a QUIT or a protocol error came before: the rest is not read
            if not self._take(s, data):
                return
            if len(data) < READ_BYTES and not s.tls:  # a TLS read is one record, 16 KiB
                break
        if s.tls and s.sock.pending():  # type: ignore[attr-defined]  # an SSLSocket
            self._decrypted.add(s)  # read them next round, without a poll
        if s.closing:
            self._write(s)
        elif s.lane_reads >= LANE_AFTER_READS and self._lane is not None:
            self._to_lane(s)

    def _take(self, s: Session, data: bytes) -> bool:
        """Answer the requests in data, read from s; False if s has gone, or must read no more
        for now (closing, or a command parked)."""
        if self.ctx.compiled is not None and self._plain(s):
            data = self._run_compiled(s, data)
            if self.ctx.sessions.get(s.fd) is not s:
                return False
        requests = s.parser.parse(data) if data else []
        if requests or s.parser.error is not None:
            s.broken = s.parser.error
            self._run(s, requests)
            if s.closing or self.ctx.sessions.get(s.fd) is not s or s.parked is not None:
                return False
        return True

    def _plain(self, s: Session) -> bool:
        """Whether what s sends next may be answered without its session's state or order
        (the compiled path, the read lane): db 0, authenticated, not a subscriber, at a
        request's start, and nothing parked anywhere (no order to keep)."""
        return s.parked is None and not self._parked and s.authenticated and not s.coll \
            and not s.channels and not s.patterns and s.parser.at_boundary

    def _to_lane(self, s: Session) -> None:
        """Move s to the read lane if nothing about it is the door's to do."""
        if s.in_lane or s.out or s.tls or s.pending or not self._plain(s) \
                or self.ctx.sessions.get(s.fd) is not s:
            return
        if self._poller is not None and s.poll_flags:
            self._poller.unregister(s.fd)
        s.poll_flags = 0
        self._lane.adopt(s)  # type: ignore[union-attr]  # the caller checked

    def _taken_back(self, back: list[tuple[int, bytes, bytes, bool]]) -> None:
        """The connections the read lane handed back: what they sent that it did not answer
        runs here now, after the replies it could not write."""
        for fd, unread, unsent, closed in back:
            s = self.ctx.sessions.get(fd)
            if s is None or not s.in_lane:
                continue
            s.in_lane, s.lane_reads = False, 0
            if closed:
                self._drop(s)
                continue
            s.out += unsent
            if not unread or self._take(s, unread):
                self._write(s)

    def _run_compiled(self, s: Session, data: bytes) -> bytes:
        """Answer the plain GET, SET, INCR, DECR and MGET at the start of data in C
        (_core.resp_serve, which says which it leaves): what it left, for the parser and _run.
        The caller has checked what the Python path would for each of them: db 0,
        authenticated, not a subscriber, nothing parked (no order to keep)."""
        ctx = self.ctx
        taken, replies, ran, wrote = resp_serve(  # type: ignore[misc]
            *ctx.compiled, data, s.encoder.resp3, FAST_MAX_VALUE_BYTES, ARRAY_MAGIC)
        s.lane_reads = s.lane_reads + 1 if taken == len(data) and not wrote else 0
        if not ran:
            return data
        ctx.commands_processed += ran
        if wrote:
            s.wrote = True  # the connection's next WAIT waits for them
        s.out += replies
        if len(s.out) > MAX_OUTPUT_BYTES + s.allowance:
            self._cut_off(s, len(s.out))
            return b""
        if taken < len(data):
            return data[taken:]  # _run pumps the events and writes, after the rest
        if ctx.listening:
            self.pump()  # these writes' messages reach subscribers before the replies
        self._write(s)
        return b""

    def _run(self, s: Session, requests: list[list[bytes]], first: object = _NO_REPLY) -> None:
        """Run requests in order until one is parked; those after it wait in s.pending (first:
        the reply of the one that was parked, answered now, queued before the others')."""
        ctx, encode, out, waits, parked, busy = \
            self.ctx, s.encoder._add, [], self.waits, self._parked, BUSY
        queued, counted = len(s.out), 0
        s.lane_reads = 0
        if first is not _NO_REPLY:
            if type(first) is Replies:
                for one in first:  # type: ignore[attr-defined]
                    encode(one, out)
            else:
                encode(first, out)
        for args in requests:
            if not parked:  # nothing waits anywhere: no order to keep, no job to make
                reply = execute(ctx, s, args)
                if reply is busy:
                    job = CommandJob(self, s, args, waits.clock(), keys_of(s, args))
                    job.last_error = ctx.last_lock_timeout
                    done = waits.park(job)
            else:
                job = CommandJob(self, s, args, waits.clock(), keys_of(s, args))
                done = waits.submit(job)
                reply = busy
            if reply is busy:
                if done is None:  # parked: the rest wait behind it, in order
                    s.parked = job
                    s.pending.extend(requests[_index(requests, args) + 1:])
                    break
                reply = done[0]
            if type(reply) is Replies:
                for one in reply:
                    encode(one, out)
            elif type(reply) is WaitFor:  # parked until its replicas have the writes
                s.parked = reply
                self._waiting[s] = reply
                s.pending.extend(requests[_index(requests, args) + 1:])
                break
            else:
                encode(reply, out)
            if s.closing:
                break
            # Counted as it grows: one read can hold thousands of GETs of a large value,
            # whose replies must not all be made before the cap is looked at.
            reply_bytes = 0
            for part in out[counted:]:
                reply_bytes += len(part)
            counted = len(out)
            queued += reply_bytes
            if reply_bytes > s.allowance:
                s.allowance = reply_bytes
            if queued > MAX_OUTPUT_BYTES + s.allowance:
                self._cut_off(s, queued)
                return
        if s.broken is not None and s.parked is None and not s.closing:
            out.append(b"-ERR " + str(s.broken).encode("utf-8", "replace") + b"\r\n")
            s.closing = True
        if out:
            s.out += b"".join(out)
        if self.ctx.listening:
            self.pump()  # this batch's messages reach subscribers before the replies are read
        self._write(s)

    def _answer_waits(self, stopping: bool = False) -> None:
        """Answer each parked WAIT whose replicas have its offset, or whose deadline passed
        (every one when stopping): how many replicas have it."""
        now, source = time.monotonic(), self.ctx.replication
        for s, wait in list(self._waiting.items()):
            found = source.replicas_at(wait.offset) if source is not None else 0
            if found >= wait.replicas or now >= wait.deadline_s or stopping or source is None:
                del self._waiting[s]
                self.answered(s, wait, found)

    def answered(self, s: Session, job: CommandJob | WaitFor, reply: object) -> None:
        """A parked command's reply (from the node's retry of waiting requests): queue it,
        then run the connection's next requests and read again."""
        if self.ctx.sessions.get(s.fd) is not s or s.parked is not job:
            return  # the connection has gone meanwhile
        s.parked = None
        requests = list(s.pending)
        s.pending.clear()
        self._run(s, requests, reply)
        # What came meanwhile: poll shows it, now that _watch asks for it again, except what a
        # TLS connection holds decrypted. Not read here: at a stop, answering every parked
        # command must come to an end (waits.expire_all()), and reading could go on forever.
        if s.tls and self.ctx.sessions.get(s.fd) is s:
            self._decrypted.add(s)

    def _write(self, s: Session, flush_only: bool = False) -> None:
        out = s.out
        while out:
            try:
                # a TLS write wanting more socket space is retried with the same first bytes
                # (out only grows at its end until they are sent), as OpenSSL requires
                sent = s.sock.send(out[:TLS_WRITE_BYTES] if s.tls else out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError,
                    ssl.SSLWantReadError):
                break
            except OSError:
                self._drop(s)
                return
            del out[:sent]
        if flush_only:
            return
        if not out:
            s.allowance = 0
        if not out and s.closing:
            self._drop(s)
        elif len(out) > MAX_OUTPUT_BYTES + s.allowance:
            self._cut_off(s, len(out))
        elif s.fd in self.ctx.sessions:
            self._watch(s)

    def _watch(self, s: Session) -> None:
        """Ask the poller about what the connection waits for: readability unless a parked
        command holds it up, writability only while output waits (else poll would spin);
        nothing while the read lane has it."""
        if s.in_lane:
            return
        if s.handshake_deadline_s is not None:
            flags = POLLOUT if s.handshake_wants == WANT_WRITE else POLLIN
        else:
            flags = (0 if s.parked is not None else POLLIN) | \
                (POLLOUT if s.out or s.read_wants_write else 0)
        if flags == s.poll_flags or self._poller is None:
            return
        if flags:
            self._poller.register(s.fd, flags)
        else:  # pyzmq's register(fd, 0) would unregister too; say it
            self._poller.unregister(s.fd)
        s.poll_flags = flags

    def _cut_off(self, s: Session, queued: int) -> None:
        """A client that does not read what it asked for: closed, so the node stays bounded."""
        print(f"resp: closing client id={s.id} addr={s.peer}: {queued} bytes of replies "
              "unread", file=sys.stderr, flush=True)
        self._drop(s)

    def _drop(self, s: Session) -> None:
        if self.ctx.sessions.pop(s.fd, None) is None:
            return
        self._handshaking.pop(s.fd, None)
        self._decrypted.discard(s)
        self._waiting.pop(s, None)
        for name in list(s.channels):
            self.ctx.unsubscribe(s, name, False)
        for name in list(s.patterns):
            self.ctx.unsubscribe(s, name, True)
        if self._poller is not None and s.poll_flags:
            self._poller.unregister(s.fd)
        s.poll_flags = 0
        s.out.clear()
        s.pending.clear()
        s.sock.close()


def _index(requests: list[list[bytes]], args: list[bytes]) -> int:
    """Where args is in requests (by identity: a pipeline may repeat a request)."""
    return next(i for i, one in enumerate(requests) if one is args)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@dataclass(slots=True, eq=False)
class CommandJob:
    """A command of one connection, as the node's queue of waiting requests sees it (waits.py's
    Job). Its replies are 1-tuples: a command's reply may be None (a nil), which to the queue
    means "still busy"."""

    door: RespDoor
    session: Session
    args: list[bytes]
    received_s: float
    keys: Keys
    payload_bytes: int = field(init=False)
    budget_s: float | None = None  # a Redis client does not say how long it waits
    last_error: str = ""

    def __post_init__(self) -> None:
        self.payload_bytes = sum(map(len, self.args))

    @property
    def op(self) -> str:
        return self.args[0].decode("utf-8", "replace").lower()[:64]

    def attempt(self) -> tuple[object] | None:
        ctx = self.door.ctx
        reply = execute(ctx, self.session, self.args)
        if reply is BUSY:
            self.last_error = ctx.last_lock_timeout
            return None
        return (reply,)

    def refuse(self, message: str, timed_out: bool) -> tuple[object]:
        if timed_out:
            message += (f", to the node's lock timeout of {self.door.waits.lock_timeout_s:g} "
                        "s. If that process is stopped or stuck, stop it")
        return (Error("LOCKTIMEOUT " + message.replace("\r", " ").replace("\n", " ")),)

    def answer(self, reply: tuple[object]) -> None:
        self.door.answered(self.session, self, reply[0])


__all__ = ["CommandJob", "Context", "MAX_OUTPUT_BYTES", "RespDoor", "Session"]
