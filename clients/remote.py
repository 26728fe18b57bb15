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
pipeline queues its requests and hands out futures:

    with cache.pipeline() as p:
        a, b = p.get("a"), p.set("b", b"2")
    a.result()                                # b"..." (or raises what that request raised)

A pipeline's requests go to a node that reads batches (broker/batches.py) as batches of up to
connection.BATCH_REQUESTS requests in one message each (to an older node, a message each), up
to protocol.MAX_IN_FLIGHT messages in flight: a batch is sent once that many are queued, when a
result is asked for that was not sent yet, and when the pipeline ends. Replies are matched to
requests by id; an error in one request is raised by its own result() only. Leaving the `with`
block sends what is queued and waits for the replies still due (an exception leaving it
abandons them: those not sent are not, and late replies are dropped). get_many and set_many of
more than BATCH_KEYS keys send their parts pipelined.

What that means for callers:
  * A retried request may have been applied already: its reply, not the request, may be what
    got lost. So only idempotent requests (get, set, delete, expire, ...) are sent again; a
    timed-out request that is not (incr, cas, append, rename, getdel, set with nx/xx/get,
    clear, publish, ...: any op not in protocol.RESENDABLE) raises OutcomeUnknown (a
    RemoteUnavailable) at once, saying that it may have been applied. A timeout resets the
    connection, so the requests of a pipeline still in flight then are sent again or failed by
    the same rule.
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

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import zmq

from shmkv.broker import protocol
from shmkv.broker.auth import CurveClient
from shmkv.broker.protocol import Reply
from shmkv.clients.commands import (Commands, check_batch, found_values, pack_keys,
                                    scan_fields, scan_reply, set_many_frames)
from shmkv.clients.connection import Connection as _Connection
from shmkv.clients.pipeline import Pipeline
from shmkv.clients.primary import Primary
from shmkv.errors import CacheClosed

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7370"
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_RETRIES = 2
_MISSING = object()
# Keys per batch message of get_many/set_many: larger batches go as several, pipelined, so
# that the node works on one while the next travels (bench/bench_node.py measures both).
BATCH_KEYS = 1000


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
        if self._closed:  # _call's, spelled out: a call less for every command
            raise CacheClosed("this RemoteCache handle is closed; create a new one")
        if self.collection_name:
            fields["coll"] = self.collection_name
        return decode(self._link.call(op, fields, frames))

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

    def exists(self, *keys: str | bytes) -> int:
        """How many of keys are present (a key given twice counts twice): one request, or
        one per BATCH_KEYS keys, pipelined. At most MAX_BATCH_KEYS keys in all."""
        check_batch(len(keys))
        if len(keys) <= BATCH_KEYS:
            return super().exists(*keys)  # type: ignore[no-any-return]
        return sum(self._batches("exists", list(keys), pack_keys,
                                 lambda batch: lambda reply: reply.result))

    def delete_many(self, keys: Iterable[str | bytes]) -> int:
        """Remove keys; how many were present. One request, or one per BATCH_KEYS keys,
        pipelined. Not atomic, and not sent again after a timeout. At most MAX_BATCH_KEYS
        keys in all."""
        keys = list(keys)
        check_batch(len(keys))
        if len(keys) <= BATCH_KEYS:
            return super().delete_many(keys)  # type: ignore[no-any-return]
        return sum(self._batches("delete_many", keys, pack_keys,
                                 lambda batch: lambda reply: reply.result))

    def scan_iter(self, match: str | bytes = "*", count: int | None = None
                  ) -> Iterator[bytes]:
        """Every key matching match, a scan step at a time (scan()): a key present
        throughout is yielded at least once; one written or deleted meanwhile may or may not
        be, and a key may come twice (as Redis's SCAN)."""
        frames, fields = scan_fields(0, match, count)  # checked now, not at the first next()
        return self._scan_steps(frames, fields)

    def _scan_steps(self, frames: list[bytes], fields: dict[str, Any]) -> Iterator[bytes]:
        while True:
            cursor, keys = self._do("scan", frames, scan_reply, **fields)
            yield from keys
            if not cursor:
                return
            fields["cursor"] = cursor

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
