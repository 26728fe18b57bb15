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

What that means for callers:
  * A retried request may have been applied already: its reply, not the request, may be what
    got lost. Idempotent calls (get, set, delete, expire, ...) do not mind; `incr` may then
    apply twice, and a retried `cas` may report False for a write it made itself.
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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import zmq

from shmkv.broker import protocol
from shmkv.broker.auth import AUTH_HINT, CurveClient
from shmkv.broker.protocol import Reply
from shmkv.clients.handshake import HandshakeWatch
from shmkv.errors import CacheClosed, RemoteUnavailable, RequestTooLarge

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7370"
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_RETRIES = 2
_MISSING = object()
# A request with a frame larger than this asks the node for its limits first (once): smaller
# frames are under any node's max_message_bytes (an arena is at least 4 KiB, plus headroom).
CHECK_LIMITS_ABOVE_BYTES = protocol.MESSAGE_HEADROOM_BYTES


class _Connection:
    """One DEALER socket to one node, shared by a RemoteCache and its collection handles."""

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
        self.closed = True

    def call(self, op: str, fields: dict[str, Any], frames: Sequence[Any] = ()) -> Reply:
        """Send one request and return its reply; raise what an error reply carries."""
        if self.closed:
            raise CacheClosed("this RemoteCache is closed; create a new one")
        largest = max((memoryview(f).nbytes for f in frames), default=0)
        if largest > CHECK_LIMITS_ABOVE_BYTES:
            self._check_message_bytes(op, largest)
        self._last_id += 1
        request_id = self._last_id
        fields = {**fields, "timeout_ms": max(1, round(self.timeout_s * 1000))}
        message = protocol.encode_request(request_id, op, fields, frames)
        failure = None
        for _ in range(self.retries + 1):
            sock = self._socket or self._open()
            sock.send_multipart(message, copy=False)
            reply = self._await(sock, request_id)
            if reply is not None:
                if not reply.ok:
                    raise protocol.exception_from(reply)
                return reply
            # Lazy Pirate: the next attempt starts on a fresh socket
            failure = self._drop_socket() or failure
        why = failure or (AUTH_HINT if self.curve is not None else
                          "is the node running (shmkv serve)?")
        raise RemoteUnavailable(f"no reply from {self.endpoint} to {op} within {self.timeout_s} "
                                f"s, {self.retries + 1} attempt(s); {why}")

    def _check_message_bytes(self, op: str, frame_bytes: int) -> None:
        if self._node_limits is None:
            self._node_limits = self.call("ping", {}).result.get("limits") or {}
        cap = self._node_limits.get("max_message_bytes")
        if type(cap) is int and frame_bytes > cap:
            raise RequestTooLarge(
                f"{op}: a frame of {frame_bytes} bytes is over the node's limit of {cap} bytes "
                "per message (max_message_bytes, from its arena size); no value that large "
                "fits its region: split it, or serve a region with a larger arena")

    @staticmethod
    def check_batch(count: int) -> None:
        if count > protocol.MAX_BATCH_KEYS:
            raise RequestTooLarge(f"a batch of {count} items is over the limit of "
                                  f"{protocol.MAX_BATCH_KEYS} per request; split it")

    def _await(self, sock: zmq.Socket, request_id: int) -> Reply | None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            left_ms = math.ceil((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not sock.poll(left_ms, zmq.POLLIN):
                return None
            reply = protocol.decode_reply(sock.recv_multipart(copy=False))
            if reply.id == request_id or reply.id is None and not reply.ok:
                return reply  # (a node that could not read our id cannot serve us anyway)
            # else: the late reply to an earlier request, given up on (e.g. interrupted)


class RemoteCache:
    """A handle on the region a node serves; the same surface as `shmkv.Cache`.

    Keys are str (UTF-8) or bytes, values bytes-like or str; reads return bytes. Not
    thread-safe. `with RemoteCache(...) as c:` closes it at the end.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, context: zmq.Context | None = None,
                 curve_server_key: str | os.PathLike[str] | None = None,
                 curve_client_cert: str | os.PathLike[str] | None = None) -> None:
        """curve_server_key is the node's public key file (node.key), curve_client_cert this
        client's secret key file (me.key_secret): both for a node with CurveZMQ, else neither.
        A file that cannot be read raises ValueError now."""
        curve = CurveClient.from_files(curve_server_key, curve_client_cert)
        self._link = _Connection(endpoint, timeout_s, retries, context, curve)
        self._owns_link = True
        self._closed = False
        self.collection_name = ""

    def _call(self, op: str, frames: Sequence[Any] = (), **fields: Any) -> Reply:
        if self._closed:
            raise CacheClosed("this RemoteCache handle is closed; create a new one")
        if self.collection_name:
            fields["coll"] = self.collection_name
        return self._link.call(op, fields, frames)

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
        """One round trip to the node: its protocol version. Raises RemoteUnavailable."""
        return self._call("ping").result  # type: ignore[no-any-return]

    # --- reads ----------------------------------------------------------------------------
    def get(self, key: str | bytes, default: Any = None) -> Any:
        """The value of key as bytes, or default if it is absent or expired."""
        reply = self._call("get", [protocol.key_frame(key)])
        return reply.frames[0].tobytes() if reply.result else default

    def get_with_version(self, key: str | bytes) -> tuple[bytes, int] | None:
        """(value, version) for use with cas(), or None if absent."""
        reply = self._call("get_with_version", [protocol.key_frame(key)])
        return None if reply.result is None else (reply.frames[0].tobytes(), reply.result)

    def get_many(self, keys: Iterable[str | bytes]) -> dict[Any, bytes]:
        """{key: value} of the keys that are present, in one round trip; keys as given."""
        keys = list(keys)
        self._link.check_batch(len(keys))
        reply = self._call("get_many", protocol.pack([protocol.key_frame(k) for k in keys]))
        values = iter(protocol.unpack(*reply.frames))
        return {k: next(values).tobytes() for k, found in zip(keys, reply.result, strict=True)
                if found}

    def get_array(self, key: str | bytes, default: Any = None) -> Any:
        """The array stored at key by set_array (read-only, over the received message), or
        default if absent."""
        reply = self._call("get_array", [protocol.key_frame(key)])
        if reply.result is None:
            return default
        return protocol.array_from(reply.result, reply.frames[0])

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
        return [frame.tobytes() for frame in self._call("keys").frames]

    # --- writes ---------------------------------------------------------------------------
    def set(self, key: str | bytes, value: Any, ttl_s: float | None = None, *,
            nx: bool = False, xx: bool = False, keepttl: bool = False, get: bool = False) -> Any:
        """Store value under key, replacing any previous value and TTL; with Redis's options,
        which return what they return for Cache.set (see its docstring)."""
        frames = [protocol.key_frame(key), protocol.value_frame(value)]
        if not (nx or xx or keepttl or get):
            self._call("set", frames, ttl_s=ttl_s)
            return None
        reply = self._call("set_options", frames, ttl_s=ttl_s, nx=nx, xx=xx, keepttl=keepttl,
                           get=get)
        if get is True:
            return reply.frames[0].tobytes() if reply.result else None
        return reply.result

    def getdel(self, key: str | bytes) -> bytes | None:
        """Delete key and return the value it had; None if absent."""
        return self._value(self._call("getdel", [protocol.key_frame(key)]))

    def getex(self, key: str | bytes, ttl_s: float | None = None, *,
              persist: bool = False) -> bytes | None:
        """The value of key (None if absent), giving it a TTL of ttl_s, or none (persist)."""
        return self._value(self._call("getex", [protocol.key_frame(key)], ttl_s=ttl_s,
                                      persist=persist))

    def append(self, key: str | bytes, value: Any) -> int:
        """Append value to key's value (absent: empty); returns the new length."""
        frames = [protocol.key_frame(key), protocol.value_frame(value)]
        return self._call("append", frames).result  # type: ignore[no-any-return]

    def rename(self, old: str | bytes, new: str | bytes, *, nx: bool = False) -> bool:
        """Move old's value and TTL to new (Cache.rename). KeyError if old is absent."""
        frames = [protocol.key_frame(old), protocol.key_frame(new)]
        return self._call("rename", frames, nx=nx).result  # type: ignore[no-any-return]

    def strlen(self, key: str | bytes) -> int:
        """Length in bytes of key's value, 0 if absent."""
        return self._call("strlen", [protocol.key_frame(key)]).result  # type: ignore

    def type(self, key: str | bytes) -> str | None:
        """"string", "shmkv-array", or None if absent."""
        return self._call("type", [protocol.key_frame(key)]).result  # type: ignore

    @staticmethod
    def _value(reply: Reply) -> bytes | None:
        return reply.frames[0].tobytes() if reply.result else None

    def __setitem__(self, key: str | bytes, value: Any) -> None:
        self.set(key, value)

    def set_many(self, items: Mapping[Any, Any], ttl_s: float | None = None) -> None:
        """Store every key -> value of items in one round trip. Not atomic: if one pair
        fails, the pairs before it are stored."""
        self._link.check_batch(len(items))
        keys = [protocol.key_frame(key) for key in items]
        values = [protocol.value_frame(value) for value in items.values()]
        self._call("set_many", [*protocol.pack(keys), *protocol.pack(values)], ttl_s=ttl_s)

    def set_array(self, key: str | bytes, arr: np.ndarray, ttl_s: float | None = None) -> None:
        """Store a numpy array (dtype and shape travel with it)."""
        fields, data = protocol.array_fields(arr)
        self._call("set_array", [protocol.key_frame(key), data], ttl_s=ttl_s, **fields)

    def cas(self, key: str | bytes, value: Any, version: int,
            ttl_s: float | None = None) -> bool:
        """Store value only if key still has `version` (from get_with_version). True if it did."""
        frames = [protocol.key_frame(key), protocol.value_frame(value)]
        return self._call("cas", frames, version=version, ttl_s=ttl_s).result  # type: ignore

    def incr(self, key: str | bytes, delta: int = 1) -> int:
        """Add delta to the integer at key (absent counts as 0) and return the result. A retry
        after a lost reply applies it again (see the module docstring)."""
        return self._call("incr", [protocol.key_frame(key)], delta=delta).result  # type: ignore

    def delete(self, key: str | bytes) -> bool:
        """Remove key; True if it was present (and not expired)."""
        return self._call("delete", [protocol.key_frame(key)]).result  # type: ignore

    def __delitem__(self, key: str | bytes) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def clear(self) -> int:
        """Delete every key of this collection; returns how many were removed."""
        return self._call("clear").result  # type: ignore[no-any-return]

    # --- expiry ---------------------------------------------------------------------------
    def ttl(self, key: str | bytes) -> float | None:
        """Seconds until key expires; None if it has no expiry or does not exist."""
        return self._call("ttl", [protocol.key_frame(key)]).result  # type: ignore

    def expire(self, key: str | bytes, ttl_s: float) -> bool:
        """Give key a TTL of ttl_s seconds from now; False if the key does not exist."""
        return self._call("expire", [protocol.key_frame(key)], ttl_s=ttl_s).result  # type: ignore

    def persist(self, key: str | bytes) -> bool:
        """Remove key's TTL; False if the key does not exist."""
        return self._call("persist", [protocol.key_frame(key)]).result  # type: ignore

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

    # --- pub/sub --------------------------------------------------------------------------
    def publish(self, channel: str | bytes, message: Any) -> None:
        """Send message to the subscribers of channel (clients/subscribe.py), as
        Cache.publish does: fire and forget. The node puts it through the region, so it is
        ordered with the keyspace events of local writers. Channels are node-wide: a
        collection handle publishes on the same channels."""
        self._call("publish", [protocol.key_frame(channel), protocol.value_frame(message)])

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

__all__ = ["DEFAULT_ENDPOINT", "RemoteCache"]
