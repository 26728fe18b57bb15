"""`RemoteCache`: the Cache API of a region served by a node (`shmkv serve`), over ZeroMQ.

    from shmkv.clients import RemoteCache
    with RemoteCache("tcp://127.0.0.1:7370", timeout_s=1.0, retries=2) as cache:
        cache.set("user:42", b"Ada", ttl_s=300)
        cache.get("user:42")                  # b"Ada"
        users = cache.collection("users")     # same connection, another key space

Every call is one request and one reply (protocol.py), on a DEALER socket. Reliability is the
"Lazy Pirate" pattern of the ZeroMQ guide: a call waits timeout_s for its reply; on a timeout
it closes the socket (LINGER 0, so that the unanswered request is dropped rather than delivered
later) and sends the request again on a fresh one, up to `retries` times, then raises
RemoteUnavailable. Each request carries an id; a reply with another id (the late reply to a
request given up on) is discarded.

Pipelining. A call waits for its reply before the next is sent: one round trip each. A
pipeline sends without waiting, up to protocol.MAX_IN_FLIGHT requests in flight, and hands
out futures:

    with cache.pipeline() as p:
        a, b = p.get("a"), p.set("b", b"2")
    a.result()                                # b"..." (or raises what that request raised)

Replies are matched to requests by id and come in the order the requests were sent; an error
in one request is raised by its own result() only. Leaving the `with` block waits for the
replies still due (an exception leaving it abandons them: their late replies are dropped).
get_many and set_many of more than BATCH_KEYS keys send their batches pipelined.

What that means for callers:
  * A retried request may have been applied already: its reply, not the request, may be what
    got lost. So only idempotent requests (get, set, delete, expire, ...) are sent again; a
    timed-out request that is not (incr, cas, append, rename, getdel, set with nx/xx/get,
    clear, publish, ...: any op not in protocol.RESENDABLE) raises OutcomeUnknown (a
    RemoteUnavailable) at once, saying that it may have been applied. A timeout resets the connection, so the requests of
    a pipeline still in flight then are sent again or failed by the same rule.
  * RemoteUnavailable does not mean that nothing was applied, for the same reason.
  * A handle is not thread-safe (a ZeroMQ socket belongs to one thread): use one per thread.
    After a fork, make a new one in the child.

A node with CurveZMQ on (broker/auth.py) admits only clients that know its public key and whose
own key it allows: RemoteCache(url, curve_server_key="node.key", curve_client_cert="me.key_secret")
(files from `shmkv keygen`). A refused client is never told so by ZeroMQ, which just never
connects: its calls time out, and the RemoteUnavailable says that authentication may have failed.

Limits. Each request carries timeout_s (as timeout_ms), so that a node that cannot take a lock
in time answers LockTimeout before the call gives up. A request with a frame over the node's
max_message_bytes (protocol.py: about its arena size) would make the node drop the connection
without a reply, so the first large request asks the node for its limits (a ping) and such a
request raises RequestTooLarge (a ValueTooLarge) without being sent; so does a batch of more
than protocol.MAX_BATCH_KEYS keys.

Errors raised by the node arrive as the same class with the same message (KeyTooLarge,
NotAnInteger, CollectionNotFound, TypeError, ...); argument types are checked here first, with
the engine's messages, so that a wrong argument is not sent at all.

Differences from a local Cache handle, all from naming a collection in each request rather than
holding it: a handle from collection(name) follows the name, so after a rename it raises
CollectionNotFound and after a drop every call (not only writes) does, until a collection of
that name is created again. maintain() and repair() are the node's business and not offered.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import zmq

from shmkv.broker import protocol
from shmkv.broker.auth import AUTH_HINT, CurveClient
from shmkv.broker.protocol import Reply
from shmkv.clients.commands import (Commands, check_batch, found_values, pack_keys,
                                    set_many_frames)
from shmkv.broker.handshake import HandshakeWatch
from shmkv.clients.pipeline import Pipeline
from shmkv.clients.primary import Primary
from shmkv.clients.workers import choose_worker
from shmkv.errors import CacheClosed, OutcomeUnknown, RemoteUnavailable, RequestTooLarge

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7370"
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_RETRIES = 2
_MISSING = object()
# A request with a frame larger than this asks the node for its limits first (once): smaller
# frames are under any node's max_message_bytes (an arena is at least 4 KiB, plus headroom).
CHECK_LIMITS_ABOVE_BYTES = protocol.MESSAGE_HEADROOM_BYTES
# Keys per batch message of get_many/set_many: larger batches go as several, pipelined, so
# that the node works on one while the next travels (bench/bench_node.py measures both).
BATCH_KEYS = 1000
# Flags as plain ints: pyzmq's are enums, whose `|` costs ~1 us each.
_SNDMORE, _POLLIN = int(zmq.SNDMORE), int(zmq.POLLIN)


class _Sent:
    """A request in flight, and then its reply (or the error that stands for it)."""

    __slots__ = ("id", "op", "message", "deadline", "attempts", "reply", "error")

    def __init__(self, request_id: int, op: str, message: list[Any], attempts: int) -> None:
        self.id, self.op, self.message = request_id, op, message
        self.deadline = 0.0
        self.attempts = attempts  # sends left, this one included
        self.reply: Reply | None = None
        self.error: Exception | None = None


class _Connection:
    """One DEALER socket to one node, shared by a RemoteCache and its collection handles, with
    the requests in flight on it (one for a call, up to MAX_IN_FLIGHT for a pipeline)."""

    def __init__(self, endpoint: str, timeout_s: float, retries: int,
                 context: zmq.Context | None, curve: CurveClient | None = None) -> None:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
                or not 0 < timeout_s <= 3600:
            raise ValueError("timeout_s must be a number of seconds, > 0 and at most an hour")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be an int >= 0")
        self.endpoint = endpoint
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.curve = curve
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._watch: HandshakeWatch | None = None
        self._last_id = 0
        self._in_flight: dict[int, _Sent] = {}  # by id, in the order sent (= replies' order)
        self._timeout_ms = max(1, round(self.timeout_s * 1000))
        self._worker_chosen = False  # a node with workers: which one, at the first call
        self._node_limits: dict[str, Any] | None = None  # the ping reply's, once asked
        self.closed = False
        self._open()  # now: a malformed endpoint fails here, not at the first call

    def _open(self) -> zmq.Socket:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.secure(sock)  # before connect: the handshake starts with it
        watch = HandshakeWatch(sock)  # before connect too, or it could miss the handshake
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            watch.close()
            sock.close()
            raise ValueError(f"cannot connect to {self.endpoint!r}: {exc.strerror} (an "
                             "endpoint looks like tcp://host:port or ipc:///path)") from None
        self._socket, self._watch = sock, watch
        return sock

    def _drop_socket(self) -> str | None:
        """Close the socket; returns why its last handshake failed, if it did."""
        self._node_limits = None  # the node may come back serving another region size
        failure = None
        if self._watch is not None:
            failure = self._watch.failure()
            self._watch.close()
            self._watch = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        return failure

    def close(self) -> None:
        self._drop_socket()
        self._in_flight.clear()
        self.closed = True

    def call(self, op: str, fields: dict[str, Any], frames: Sequence[Any] = ()) -> Reply:
        """Send one request and return its reply; raise what an error reply carries."""
        return self.wait(self.send(op, fields, frames))

    def send(self, op: str, fields: dict[str, Any], frames: Sequence[Any] = ()) -> _Sent:
        """Send a request now (once fewer than MAX_IN_FLIGHT are in flight) and return it
        in flight: wait() gives its reply."""
        if self.closed:
            raise CacheClosed("this RemoteCache is closed; create a new one")
        if not self._worker_chosen:  # stick to one of the node's workers (clients/workers.py)
            self._choose_worker()
        if frames:
            largest = max(memoryview(f).nbytes for f in frames)
            if largest > CHECK_LIMITS_ABOVE_BYTES:
                self._check_message_bytes(op, largest)
        while len(self._in_flight) >= protocol.MAX_IN_FLIGHT:
            self._next_reply()
        self._last_id += 1
        request_id = self._last_id
        fields["timeout_ms"] = self._timeout_ms
        sent = _Sent(request_id, op, protocol.encode_request(request_id, op, fields, frames),
                     self.retries + 1 if op in protocol.RESENDABLE else 1)
        self._transmit(sent)
        self._in_flight[request_id] = sent
        return sent

    def _choose_worker(self) -> None:
        """Ask the node (ping) for its workers and stick to one of them: a client's requests
        stay in order on one worker (clients/workers.py says which)."""
        self._worker_chosen = True  # the ping itself goes where the endpoint says
        try:
            chosen = choose_worker(self.endpoint, self.call("ping", {}).result)
        except RemoteUnavailable:  # ask again at the next call
            self._worker_chosen = False
            raise
        if chosen != self.endpoint:
            self._drop_socket()
            self.endpoint = chosen

    def wait(self, sent: _Sent) -> Reply:
        """The reply to a request sent; raise what an error reply carries, or
        RemoteUnavailable. Replies to the requests sent before it are kept for their wait()."""
        while sent.reply is None and sent.error is None:
            if sent.id not in self._in_flight:  # abandoned, or the connection closed
                raise CacheClosed("this request was abandoned: its pipeline or RemoteCache "
                                  "was closed before its reply came")
            self._next_reply()
        if sent.error is not None:
            raise sent.error
        reply = sent.reply
        if reply.error is not None:  # type: ignore[union-attr]
            raise protocol.exception_from(reply)  # type: ignore[arg-type]
        return reply  # type: ignore[return-value]

    def settle(self, sent: Iterable[_Sent]) -> None:
        """Take in the replies to these requests (their errors stay with them)."""
        for each in sent:
            while each.reply is None and each.error is None and each.id in self._in_flight:
                self._next_reply()

    def abandon(self, sent: Iterable[_Sent]) -> None:
        """Forget requests in flight: their late replies are dropped as they come."""
        for each in sent:
            self._in_flight.pop(each.id, None)

    def _transmit(self, sent: _Sent) -> None:
        sock = self._socket or self._open()
        message = sent.message
        last = len(message) - 1
        for i in range(last):  # frame by frame: cheaper than send_multipart
            sock.send(message[i], _SNDMORE, copy=False)
        sock.send(message[last], 0, copy=False)
        sent.attempts -= 1
        sent.deadline = time.monotonic() + self.timeout_s

    def _next_reply(self) -> None:
        """Take the next reply in (for whichever request in flight it answers), or handle the
        timeout of the oldest request in flight."""
        oldest = next(iter(self._in_flight.values()))
        sock = self._socket or self._open()
        left_ms = math.ceil((oldest.deadline - time.monotonic()) * 1000)
        # zmq_poll, not sock.poll: that one builds a Poller each time (~5 us against ~1 us)
        if left_ms <= 0 or not zmq.zmq_poll([(sock, _POLLIN)], left_ms):
            self._timed_out()
            return
        # get_array's data is viewed, not copied: it comes as a zmq.Frame
        reply = protocol.decode_reply(sock.recv_multipart(copy=oldest.op != "get_array"))
        if reply.id is None and not reply.ok:  # a node that could not read the id answers
            reply.id = oldest.id  # in order: this is the oldest one's reply
        sent = self._in_flight.pop(reply.id, None)  # type: ignore[arg-type]
        if sent is not None:  # else: the late reply to a request given up on
            sent.reply = reply

    def _timed_out(self) -> None:
        """Lazy Pirate: the oldest request got no reply in time. A fresh socket; the requests
        in flight are sent again on it if they have attempts left and may be (protocol.RESENDABLE),
        in the order they were first sent, or fail with RemoteUnavailable."""
        failure = self._drop_socket()
        why = failure or (AUTH_HINT if self.curve is not None else
                          "is the node running (shmkv serve)?")
        for sent in list(self._in_flight.values()):
            if sent.attempts > 0:
                self._transmit(sent)
                continue
            del self._in_flight[sent.id]
            if sent.op in protocol.RESENDABLE:
                sent.error = RemoteUnavailable(
                    f"no reply from {self.endpoint} to {sent.op} within {self.timeout_s} s, "
                    f"{self.retries + 1} attempt(s); {why}")
            else:
                sent.error = OutcomeUnknown(
                    f"no reply from {self.endpoint} to {sent.op} within {self.timeout_s} s; "
                    f"not sent again, as a second {sent.op} may not do what the first did: it "
                    f"may or may not have been applied (read the key to find out); {why}")

    def _check_message_bytes(self, op: str, frame_bytes: int) -> None:
        if self._node_limits is None:
            self._node_limits = self.call("ping", {}).result.get("limits") or {}
        cap = self._node_limits.get("max_message_bytes")
        if type(cap) is int and frame_bytes > cap:
            raise RequestTooLarge(
                f"{op}: a frame of {frame_bytes} bytes is over the node's limit of {cap} bytes "
                "per message (max_message_bytes, from its arena size); no value that large "
                "fits its region: split it, or serve a region with a larger arena")


def _connect(endpoint: str | Sequence[str], timeout_s: float, retries: int,
             context: zmq.Context | None, curve: CurveClient | None) -> Any:
    """One node's connection, or a Primary over several nodes' (each without retries: the
    Primary decides what is sent again)."""
    if isinstance(endpoint, str):
        return _Connection(endpoint, timeout_s, retries, context, curve)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError("retries must be an int >= 0")
    return Primary(list(endpoint), lambda e: _Connection(e, timeout_s, 0, context, curve),
                   retries)


class RemoteCache(Commands):
    """A handle on the region a node serves; the same surface as `shmkv.Cache`.

    Keys are str (UTF-8) or bytes, values bytes-like or str; reads return bytes. Not
    thread-safe. `with RemoteCache(...) as c:` closes it at the end.
    """

    def __init__(self, endpoint: str | Sequence[str] = DEFAULT_ENDPOINT, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, context: zmq.Context | None = None,
                 curve_server_key: str | os.PathLike[str] | None = None,
                 curve_client_cert: str | os.PathLike[str] | None = None) -> None:
        """curve_server_key is the node's public key file (node.key), curve_client_cert this
        client's secret key file (me.key_secret): both for a node with CurveZMQ, else neither.
        A file that cannot be read raises ValueError now. A list of endpoints: the nodes of a
        replicated cluster; requests go to its primary, followed across a failover
        (clients/primary.py says what is then sent again and what raises OutcomeUnknown)."""
        curve = CurveClient.from_files(curve_server_key, curve_client_cert)
        self._link = _connect(endpoint, timeout_s, retries, context, curve)
        self._owns_link = True
        self._closed = False
        self.collection_name = ""

    def _call(self, op: str, frames: Sequence[Any] = (), **fields: Any) -> Reply:
        if self._closed:
            raise CacheClosed("this RemoteCache handle is closed; create a new one")
        if self.collection_name:
            fields["coll"] = self.collection_name
        return self._link.call(op, fields, frames)

    def _do(self, op: str, frames: Sequence[Any], decode: Callable[[Reply], Any],
            **fields: Any) -> Any:
        return decode(self._call(op, frames, **fields))

    def pipeline(self) -> Pipeline:
        """A pipeline on this handle's connection and collection: its commands are sent at
        once and return futures (the module docstring)."""
        if self.closed:
            raise CacheClosed("this RemoteCache handle is closed; create a new one")
        link = self._link
        if isinstance(link, Primary):  # several nodes: the pipeline goes to the primary
            link = link.connection()   # found now, and does not follow a failover
        return Pipeline(link, self.collection_name)

    def get_many(self, keys: Iterable[str | bytes]) -> dict[Any, bytes]:
        """{key: value} of the keys that are present; keys as given. One request, or one per
        BATCH_KEYS keys, pipelined. At most MAX_BATCH_KEYS keys in all, as in one request:
        the reply is held whole."""
        keys = list(keys)
        check_batch(len(keys))
        if len(keys) <= BATCH_KEYS:
            return super().get_many(keys)  # type: ignore[no-any-return]
        found: dict[Any, bytes] = {}
        for part in self._batches("get_many", keys, pack_keys,
                lambda batch: lambda reply: found_values(batch, reply)):
            found.update(part)
        return found

    def set_many(self, items: Mapping[Any, Any], ttl_s: float | None = None) -> None:
        """Store every key -> value of items: one request, or one per BATCH_KEYS pairs,
        pipelined. Not atomic: if one pair fails, the pairs before it are stored, and so may
        be pairs of the batches after its own. At most MAX_BATCH_KEYS pairs in all."""
        check_batch(len(items))
        if len(items) <= BATCH_KEYS:
            super().set_many(items, ttl_s)
            return
        self._batches("set_many", list(items.items()),
                      lambda batch: set_many_frames(dict(batch)),
                      lambda batch: lambda reply: None, ttl_s=ttl_s)

    def _batches(self, op: str, items: list[Any], frames_of: Callable[[list[Any]], list[Any]],
                 decode_of: Callable[[list[Any]], Callable[[Reply], Any]],
                 **fields: Any) -> list[Any]:
        """Send items in batches of BATCH_KEYS, pipelined; the batches' results in order."""
        batches = [items[at:at + BATCH_KEYS] for at in range(0, len(items), BATCH_KEYS)]
        with self.pipeline() as p:
            futures = [p._do(op, frames_of(batch), decode_of(batch), **fields)
                       for batch in batches]
        return [future.result() for future in futures]

    # --- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the handle. Closing the handle made by RemoteCache() closes the connection,
        and so its collection handles too; a collection handle's close() closes only itself."""
        self._closed = True
        if self._owns_link:
            self._link.close()

    @property
    def closed(self) -> bool:
        return self._closed or self._link.closed

    @property
    def endpoint(self) -> str:
        return self._link.endpoint

    def __enter__(self) -> RemoteCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        coll = f" collection={self.collection_name!r}" if self.collection_name else ""
        state = "closed" if self.closed else "open"
        return f"<shmkv.clients.RemoteCache {self.endpoint!r}{coll} {state}>"

    def ping(self) -> dict[str, Any]:
        """One round trip to the node: its protocol version, and its replication role
        ({"role": "primary" | "replica" | "candidate" | "none", "primary", "epoch"}).
        Raises RemoteUnavailable."""
        return self._call("ping").result  # type: ignore[no-any-return]

    def promote(self) -> dict[str, Any]:
        """Make the node a primary (`shmkv promote`; broker/roles.py): its new state."""
        return self._link.call("promote", {}).result  # type: ignore[no-any-return]

    def replicaof(self, primary: str) -> dict[str, Any]:
        """Make the node a replica of primary's replication endpoint, or a primary with
        "none" (`shmkv replicaof`): its new state."""
        return self._link.call("replicaof", {"primary": primary}).result  # type: ignore

    # --- reads ----------------------------------------------------------------------------
    def __getitem__(self, key: str | bytes) -> bytes:
        found = self.get(key, _MISSING)
        if found is _MISSING:
            raise KeyError(key)
        return found  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        return self._call("contains", [protocol.key_frame(key)]).result  # type: ignore

    def __len__(self) -> int:
        return self._call("len").result  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.keys())

    def keys(self) -> list[bytes]:
        return [bytes(frame) for frame in self._call("keys").frames]

    # --- writes ---------------------------------------------------------------------------
    def __setitem__(self, key: str | bytes, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: str | bytes) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def clear(self) -> int:
        """Delete every key of this collection; returns how many were removed."""
        return self._call("clear").result  # type: ignore[no-any-return]

    # --- collections ----------------------------------------------------------------------
    def collection(self, name: str) -> RemoteCache:
        """A handle on the named collection, created if it does not exist; it shares this
        handle's connection."""
        self._call("collection", name=name)
        handle = RemoteCache.__new__(RemoteCache)
        handle._link = self._link
        handle._owns_link = False
        handle._closed = False
        handle.collection_name = name
        return handle

    def collections(self) -> list[str]:
        """Names of the named collections (the default collection is not listed)."""
        return self._call("collections").result  # type: ignore[no-any-return]

    def rename_collection(self, old: str, new: str) -> None:
        self._call("rename_collection", old=old, new=new)

    def drop_collection(self, name: str) -> int:
        """Delete a collection and all its keys; returns how many keys it held."""
        return self._call("drop_collection", name=name).result  # type: ignore

    def stats(self) -> dict[str, Any]:
        """The region's counters and sizes, plus this handle's collection (Cache.stats())."""
        return self._call("stats").result  # type: ignore[no-any-return]

    def wait(self, n_replicas: int, timeout_s: float) -> int:
        """How many replicas have applied every write this connection made through the node
        (Redis's WAIT): asked again until n_replicas have, or timeout_s has passed. It does not
        make the writes strongly consistent: a write acknowledged with fewer replicas is not
        undone, and a failover may still lose what no replica applied (see the README)."""
        deadline = time.monotonic() + timeout_s
        pause_s = WAIT_FIRST_PAUSE_S
        while True:
            found = self._call("wait", n_replicas=n_replicas).result["replicas"]
            left_s = deadline - time.monotonic()
            if found >= n_replicas or left_s <= 0:
                return int(found)
            time.sleep(min(pause_s, left_s))
            pause_s = min(pause_s * 2, WAIT_MAX_PAUSE_S)


# wait() asks the node again after these pauses (doubling): a replica's round is ~10 ms
WAIT_FIRST_PAUSE_S = 0.001
WAIT_MAX_PAUSE_S = 0.02

__all__ = ["DEFAULT_ENDPOINT", "Pipeline", "RemoteCache"]
