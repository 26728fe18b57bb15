"""Executing requests: `Dispatcher.handle(frames) -> Reply`, one handler per command of the
protocol (protocol.py), over the node's `Cache`.

No sockets and no clock here: the node's loop (server.py) hands in the frames of one request,
minus the routing id, and sends back what this returns. `handle` never raises: a malformed
message, an unknown command or a failed call becomes an error reply, so that no input can
stop the loop.

Collections are named in each request (the `coll` field), while the engine hands out handles.
The dispatcher keeps one handle per collection name it has seen and resolves a name without
creating anything: only the `collection` command creates, as `Cache.collection()` does. The
handle of a name is forgotten when this node renames or drops the collection, and when a write
finds it stale (dropped by another process); the request is then resolved once more by name.

Busy locks. The node's handle waits only a moment for a lock (server.py opens it so): a
request that finds one busy for longer is not answered by `attempt` (it returns None) and the
node retries it later, serving others meanwhile (waits.py). A request is retried whole, which
is safe because every write checks its lock before it changes anything; a batch (set_many,
clear) that stopped half-way repeats the part it had done, and clear's count is then of the
second pass only.

One request model, two codecs
-----------------------------
Every command that touches the region, whichever door it came through, is one operation of
this model: an op name, a collection (coll: "" for the default one), header fields, payload
frames (a protocol.Request, as the wire decodes it or another codec makes it, with id 0 and
its frames as bytes), run by one executor, `Dispatcher.run`, which returns the
operation's (result, payload frames) and raises the errors of shmkv.errors (LockTimeout: a
lock it needs is busy, and nothing was changed). Each door is a codec around it:

    door     codec                                   turns run's errors into
    ZeroMQ   protocol.py: frames <-> Request/Reply    error replies (`attempt`; a busy lock
             (the op table is protocol.REQUEST_FRAMES) is None: the node parks the request)
    RESP     resp_commands.py: a command's arguments  Redis's errors, worded as Redis words
             -> operations (one or a few), their       them (a busy lock is BUSY: the door
             results -> Redis's replies, RESP2/RESP3   parks the command, waits.py)

What stays out of the model is what belongs to a door: a RESP connection's state (SELECT's
database, which names the collection: db 0 the default one, db n "db<n>"; AUTH, HELLO,
CLIENT, subscriber mode, QUIT) and the node's facts it reports (INFO, CONFIG, COMMAND, WAIT).

Some operations of the model came for the RESP door; the ZeroMQ door has them too
(wire_ops.py's table), but for get_each. Their request frames are the wire's (a batch of keys
is packed, as get_many's). scan's keys are one frame each here, as the RESP door writes them,
and packed on the ZeroMQ wire (`attempt` packs them), whose reply batches (batches.py) hold
at most a few frames per reply:

    op            fields              frames             result            reply frames
    exists        coll                keys (packed)      how many of them  -
                                                         are present (a
                                                         key twice: twice)
    delete_many   coll                keys (packed)      how many deleted  -
    scan          coll, cursor: int,  pattern (a Redis   the next cursor   the keys found
                  count: int|null     glob; b"*": all)   (0: done)
    get_each      coll                keys, one each     how many found    one per key: the
                                                                           value, or None

get_each is get_many for a codec whose keys arrive apart and whose replies carry each value
inline (RESP's MGET): packed into get_many's two frames and back, RESP's MGET of 100 keys took
45 us in the node against 10 us calling Cache.get for each (measured on the project's VM), a
cost that buys ZeroMQ fewer frames and RESP nothing; get_each takes 12.7 us. A None frame is
not a ZeroMQ frame: on the wire this operation would be get_many.

`scan` reads whole index stripes from `cursor` (a stripe number) until it has `count` keys
(null: every stripe, which is KEYS), then keeps those matching the pattern: a key present
from the first call to the last is in its stripe when that stripe is read, so it is returned
at least once, as Redis's SCAN promises; one written or deleted meanwhile may or may not be.
What else RESP needs is the wire's: MSET is set_many, FLUSHDB clear, DBSIZE len, KEYS a scan
of every stripe, and the strings, TTL and counter commands their ops of the same name.
"""

from __future__ import annotations

import dataclasses
import struct
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from shmkv import Cache
from shmkv.backend import pack_found_c
from shmkv.errors import (CollectionNotFound, LockTimeout, NotEnoughReplicas, ProtocolError,
                          RequestTooLarge, ShmKVError)

from . import protocol
from .protocol import WRITE_OPS, Buffer, Reply, Request
from .resp_glob import glob_matcher
from .zerocopy import LEND

Result = tuple[Any, list[Any]]  # (the reply's result, its payload frames)
# The model's operations beyond the wire's table (the docstring's second table): payload
# frames per op, as protocol.REQUEST_FRAMES counts them (-1: one per key).
MODEL_ONLY_FRAMES: dict[str, int] = {"get_each": -1}
Handler = Callable[[Cache, Request], Result]
_REQUIRED = object()


class Dispatcher:
    """Runs requests against one root `Cache` handle (which it does not own)."""

    def __init__(self, cache: Cache, limits: dict[str, int] | None = None) -> None:
        self._cache = cache
        self._scopes: dict[str, Cache] = {}  # collection name -> handle
        self.limits = limits  # the node's (server.py); None: no reply limit, ping computes
        self.last_lock_timeout = ""  # the engine's message of the last busy lock
        # Requests about the node rather than the region (promote, replicaof: broker/roles.py),
        # handed in by the node; "role" adds the node's role to ping's reply.
        self.node_ops: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self.about: dict[str, Any] = {}  # more for ping to tell (a worker: its siblings)
        self._pings = 0  # answered: the worker each suggests goes round (_ping)
        # The node's replication source (broker/repl_source.py), if it is a primary, and
        # (--min-replicas-to-write, --min-replicas-max-lag-s); server.py sets them.
        self.replication: Any = None
        self.min_replicas: tuple[int, float] = (0, 0.0)
        self.replication_state: Callable[[], dict[str, Any] | None] = lambda: None

    def handle(self, frames: Sequence[Buffer]) -> Reply:
        """The reply to one request; never raises (but lets KeyboardInterrupt through). A
        busy lock is an error reply here (LockTimeout); the node uses decode and attempt."""
        decoded = self.decode(frames)
        if isinstance(decoded, Reply):
            return decoded
        reply = self.attempt(decoded)
        if reply is None:
            return protocol.error_reply(decoded.id, LockTimeout(self.last_lock_timeout),
                                        op=decoded.op)
        return reply

    def decode(self, frames: Sequence[Buffer]) -> Request | Reply:
        """The request, or the error reply to a message that is not one."""
        try:
            return protocol.decode_request(
                frames, self.limits["max_reply_bytes"] if self.limits is not None else None)
        except (ProtocolError, RequestTooLarge) as exc:
            return protocol.error_reply(protocol.request_id_of(frames), exc, op="invalid")

    def attempt(self, request: Request) -> Reply | None:
        """The reply to a request, or None if a lock it needs is busy (try again later)."""
        try:
            result, out = self.run(request)
        except LockTimeout as exc:
            self.last_lock_timeout = str(exc)
            return None
        except Exception as exc:
            if protocol.error_code(exc) is None:  # a bug or an OS failure: worth a traceback
                traceback.print_exc(file=sys.stderr)
            return protocol.error_reply(request.id, exc, op=request.op)
        if request.op == "scan":  # the wire's form of its keys: packed (the module's doc)
            out = protocol.pack(out)
        return Reply(request.id, result, out, op=request.op)

    @property
    def max_reply_bytes(self) -> int | None:
        """The node's limit, for a codec that makes its own requests (decode sets it)."""
        return self.limits["max_reply_bytes"] if self.limits is not None else None

    def run(self, request: Request) -> Result:
        """Run one operation of the model: its (result, payload frames). Raises the errors
        of shmkv.errors; LockTimeout means a lock it needs is busy and nothing was changed."""
        op = request.op
        handler = _PLAIN_KEY_COMMANDS.get(op)
        if handler is not None and request.max_reply_bytes is not None:  # the hot path
            if self.min_replicas[0] and op in WRITE_OPS:
                self._check_replicas()
            if not request.coll:
                return handler(self._cache, request)
            return self._run_key(request)
        if request.max_reply_bytes is None and self.limits is not None:  # made without it
            request = dataclasses.replace(request,
                                          max_reply_bytes=self.limits["max_reply_bytes"])
        if op in WRITE_OPS and self.min_replicas[0]:
            self._check_replicas()
        admin = _ADMIN.get(op)
        if admin is not None:
            return admin(self, request)
        if op == "stats":  # the node's replication state (lag) joins the region's
            result, out = self._run_key(request)
            state = self.replication_state()
            return ({**result, "replication": {**(result.get("replication") or {}), **state}}
                    if state else result), out
        return self._run_key(request)

    def _run_key(self, request: Request) -> Result:
        handler = _KEY_COMMANDS.get(request.op)
        if handler is None:
            raise ProtocolError(f"unknown operation {request.op!r}")
        if not request.coll:
            return handler(self._cache, request)
        cached = request.coll in self._scopes
        try:
            return handler(self._scope(request.coll), request)
        except CollectionNotFound:
            # Dropped meanwhile by another process, maybe created again: look the name up anew.
            # Safe to repeat: a write checks its collection before it changes anything.
            self._forget(request.coll)
            if not cached:
                raise
            return handler(self._scope(request.coll), request)

    def _scope(self, name: str) -> Cache:
        scope = self._scopes.get(name)
        if scope is None:
            if name not in self._cache.collections():  # collection() would create it
                raise CollectionNotFound(f"no collection {name!r}; create it with "
                                         f"collection({name!r})")
            scope = self._scopes[name] = self._cache.collection(name)
        return scope

    def close(self) -> None:
        """Close the handles of the collections it opened (not the root handle)."""
        self._forget(*list(self._scopes))

    def _forget(self, *names: str) -> None:
        for name in names:
            scope = self._scopes.pop(name, None) if isinstance(name, str) else None
            if scope is not None:
                scope.close()  # adds its hit/miss counts to the region's

    # --- commands on the region rather than on keys ----------------------------------------
    def _ping(self, request: Request) -> Result:
        limits = self.limits or protocol.limits_for(self._cache.stats()["arena_bytes"])
        found = {"protocol_version": protocol.PROTOCOL_VERSION, "limits": limits, **self.about}
        workers = self.about.get("workers")
        if workers:  # which of them the client should use: each in turn (clients/workers.py)
            found["worker_hint"] = self._pings % len(workers)
            self._pings += 1
        if "role" in self.node_ops:  # clients of several nodes look for the primary
            found["role"] = self.node_ops["role"]({})
        return found, []

    def _check_replicas(self) -> None:
        wanted, max_lag_s = self.min_replicas
        found = self.replication.replicas_in_sync(max_lag_s) if self.replication else 0
        if found < wanted:
            raise NotEnoughReplicas(f"{found} replica(s) in sync (reported within {max_lag_s} "
                                    f"s), fewer than the node's --min-replicas-to-write "
                                    f"{wanted}: write refused")

    def _wait(self, request: Request) -> Result:
        """How many replicas have applied everything up to the offset the node noted after
        the client's last write (`after`, which server.py sets); 0 on a node that is no
        primary. Answers at once: RemoteCache.wait asks again until its timeout."""
        after = _field(request, "after", None)
        if self.replication is None or not isinstance(after, int):
            return {"replicas": 0}, []
        return {"replicas": self.replication.replicas_at(after)}, []

    def _collection(self, request: Request) -> Result:
        name = _field(request, "name")
        scope = self._cache.collection(name)
        self._forget(name)
        self._scopes[name] = scope
        return None, []

    def _collections(self, request: Request) -> Result:
        return self._cache.collections(), []

    def _rename_collection(self, request: Request) -> Result:
        old, new = _field(request, "old"), _field(request, "new")
        self._cache.rename_collection(old, new)
        self._forget(old, new)
        return None, []

    def _drop_collection(self, request: Request) -> Result:
        name = _field(request, "name")
        try:
            return self._cache.drop_collection(name), []
        finally:
            self._forget(name)

    def _node_op(self, request: Request) -> Result:
        node_op = self.node_ops.get(request.op)
        if node_op is None:
            raise ShmKVError(f"{request.op}: this node does not change its replication role")
        return node_op(request.fields), []

    def _publish(self, request: Request) -> Result:
        # on the root handle: channels are node-wide, whatever collection the client holds
        self._cache.publish(bytes(request.frames[0]), request.frames[1])
        return None, []


_ADMIN: dict[str, Callable[[Dispatcher, Request], Result]] = {
    "ping": Dispatcher._ping,
    "collection": Dispatcher._collection,
    "collections": Dispatcher._collections,
    "rename_collection": Dispatcher._rename_collection,
    "drop_collection": Dispatcher._drop_collection,
    "publish": Dispatcher._publish,
    "promote": Dispatcher._node_op,
    "replicaof": Dispatcher._node_op,
    "wait": Dispatcher._wait,
}


# --- key commands: each runs in the request's collection -------------------------------------
def _field(request: Request, name: str, default: Any = _REQUIRED) -> Any:
    value = request.fields.get(name, default)
    if value is _REQUIRED:
        raise ProtocolError(f"{request.op} needs the header field {name!r}")
    return value


def _key(request: Request) -> bytes:
    # As bytes, not a view of the frame: the engine's messages show the key (KeyError,
    # TypeError), and a memoryview would show as <memory at 0x...>. Keys are small. (A frame
    # that is bytes already, as the RESP codec's are, is not copied.)
    return bytes(request.frames[0])


def _get(c: Cache, r: Request) -> Result:
    # The hottest operation: the key frame as it came (Cache.get takes any buffer, and its
    # errors do not show the key), not _key(r)'s bytes, which cost as much as the read.
    return get_result(c, r.frames[0], r.fields.pop(LEND, None))


def get_result(c: Cache, key: Any, lender: Any = None) -> Result:
    """get's (found, frames) for key (bytes or a buffer); with a lender (the ZeroMQ door's
    ZeroCopy), a large value is lent from a pin instead of copied (zerocopy.py). Also the
    ZeroMQ door's plain get, which skips the rest of dispatch (zmq_door.py)."""
    if lender is not None:
        return lender.get(c, key, False)  # type: ignore[no-any-return]
    value = c.get(key)
    return (True, [value]) if value is not None else (False, [])


def _get_with_version(c: Cache, r: Request) -> Result:
    lender = r.fields.pop(LEND, None)
    if lender is not None:
        return lender.get(c, _key(r), True)  # type: ignore[no-any-return]
    found = c.get_with_version(_key(r))
    return (None, []) if found is None else (found[1], [found[0]])


def _set(c: Cache, r: Request) -> Result:
    c.set(_key(r), r.frames[1], ttl_s=_field(r, "ttl_s", None))
    return None, []


def _cas(c: Cache, r: Request) -> Result:
    return c.cas(_key(r), r.frames[1], _field(r, "version"),
                 ttl_s=_field(r, "ttl_s", None)), []


def _incr(c: Cache, r: Request) -> Result:
    return c.incr(_key(r), _field(r, "delta", 1)), []


def _delete(c: Cache, r: Request) -> Result:
    return c.delete(_key(r)), []


def _contains(c: Cache, r: Request) -> Result:
    return _key(r) in c, []


def _len(c: Cache, r: Request) -> Result:
    return len(c), []


def _keys(c: Cache, r: Request) -> Result:
    keys = c.keys()
    _check_reply_bytes(r, sum(map(len, keys)))
    return len(keys), keys


def _ttl(c: Cache, r: Request) -> Result:
    return c.ttl(_key(r)), []


def _expire(c: Cache, r: Request) -> Result:
    return c.expire(_key(r), _field(r, "ttl_s")), []


def _persist(c: Cache, r: Request) -> Result:
    return c.persist(_key(r)), []


def _clear(c: Cache, r: Request) -> Result:
    return c.clear(), []


def _stats(c: Cache, r: Request) -> Result:
    return c.stats(), []


def _get_many(c: Cache, r: Request) -> Result:
    # One batch read in the engine (values in key order, None for a miss), which stops
    # copying once the values pass the reply limit; then the reply's two packed frames.
    keys = protocol.unpack_bytes(*r.frames)
    values = c.get_list(keys, r.max_reply_bytes)
    if len(values) < len(keys):  # it stopped past the limit
        _check_reply_bytes(r, r.max_reply_bytes + 1)  # type: ignore[operator]
    if pack_found_c is not None and (packed := pack_found_c(values)) is not None:  # ~5 us less
        _check_reply_bytes(r, len(packed[1][1]))
        return packed  # type: ignore[no-any-return]
    present = [v for v in values if v is not None]
    lengths = list(map(len, present))
    _check_reply_bytes(r, sum(lengths))
    return ([v is not None for v in values],
            [struct.pack(f"<{len(lengths)}I", *lengths), b"".join(present)])


def _check_reply_bytes(r: Request, reply_bytes: int) -> None:
    cap = r.max_reply_bytes
    if cap is not None and reply_bytes > cap:
        raise RequestTooLarge(f"the reply to {r.op} would be over this node's limit of {cap} "
                              "bytes per reply (max_reply_bytes); ask for fewer keys")


def _set_many(c: Cache, r: Request) -> Result:
    # Not atomic, as a loop of set() is not: the pairs before a failing one stay stored.
    ttl_s = _field(r, "ttl_s", None)
    keys, values = protocol.unpack_bytes(*r.frames[:2]), protocol.unpack(*r.frames[2:])
    if len(keys) != len(values):
        raise ProtocolError(f"set_many got {len(keys)} keys and {len(values)} values")
    store = c.set  # the compiled writer's, bound once
    for key, value in zip(keys, values):
        store(key, value, ttl_s)
    return None, []


def _set_array(c: Cache, r: Request) -> Result:
    arr = protocol.array_from(r.fields, r.frames[1])
    c.set_array(_key(r), arr, ttl_s=_field(r, "ttl_s", None))
    return None, []


def _get_array(c: Cache, r: Request) -> Result:
    lender = r.fields.pop(LEND, None)
    if lender is not None:
        lent = lender.get_array(c, _key(r))
        if lent is not None:
            return lent  # type: ignore[no-any-return]
    arr = c.get_array(_key(r), default=None)
    if arr is None:
        return None, []
    fields, data = protocol.array_fields(arr)
    return fields, [data]


def _set_options(c: Cache, r: Request) -> Result:
    get = _field(r, "get", False)
    result = c.set(_key(r), r.frames[1], ttl_s=_field(r, "ttl_s", None),
                   nx=_field(r, "nx", False), xx=_field(r, "xx", False),
                   keepttl=_field(r, "keepttl", False), get=get)
    return _value_reply(result) if get is True else (result, [])


def _value_reply(value: bytes | None) -> Result:
    return (True, [value]) if value is not None else (False, [])


def _getdel(c: Cache, r: Request) -> Result:
    return _value_reply(c.getdel(_key(r)))


def _getex(c: Cache, r: Request) -> Result:
    return _value_reply(c.getex(_key(r), _field(r, "ttl_s", None),
                                persist=_field(r, "persist", False)))


def _append(c: Cache, r: Request) -> Result:
    return c.append(_key(r), r.frames[1]), []


def _rename(c: Cache, r: Request) -> Result:
    return c.rename(_key(r), bytes(r.frames[1]), nx=_field(r, "nx", False)), []


def _strlen(c: Cache, r: Request) -> Result:
    return c.strlen(_key(r)), []


def _type(c: Cache, r: Request) -> Result:
    return c.type(_key(r)), []


def _exists(c: Cache, r: Request) -> Result:
    return sum(key.tobytes() in c for key in protocol.unpack(*r.frames)), []


def _delete_many(c: Cache, r: Request) -> Result:
    # Not atomic, as Redis's DEL of many keys is: a busy lock stops it half-way (and the
    # retry counts only what it deleted itself; the module's doc).
    return sum(c.delete(key.tobytes()) for key in protocol.unpack(*r.frames)), []


def _get_each(c: Cache, r: Request) -> Result:
    # The keys as the codec gave them (bytes, from RESP), read in one engine call that stops
    # copying once the values pass the reply limit (as _get_many).
    values = c.get_list(r.frames, r.max_reply_bytes)
    if len(values) < len(r.frames):
        _check_reply_bytes(r, r.max_reply_bytes + 1)  # type: ignore[operator]
    _check_reply_bytes(r, sum(map(len, filter(None, values))))
    return len(values) - values.count(None), values


def _scan(c: Cache, r: Request) -> Result:
    """See the module's doc. One stripe at a time bounds each call's work to a stripe's
    share of the keys; the engine's per-stripe listing is what Cache.__iter__ is made of."""
    cursor, count = _field(r, "cursor"), _field(r, "count", None)
    if type(cursor) is not int or (count is not None and (type(count) is not int or count < 1)):
        raise ProtocolError(f"scan needs an int cursor and a count > 0 or null, not "
                            f"{cursor!r} and {count!r}")
    pattern = bytes(r.frames[0])
    n_stripes = c._smask + 1
    if count is None:
        found, stripe = c.keys(), n_stripes
    else:
        found = []
        stripe = cursor if 0 <= cursor < n_stripes else n_stripes
        while stripe < n_stripes and len(found) < count:
            found.extend(c._stripe_keys(stripe))
            stripe += 1
    if pattern != b"*":
        match = glob_matcher(pattern)
        found = [k for k in found if match(k)]
    _check_reply_bytes(r, sum(map(len, found)))
    return (0 if stripe >= n_stripes else stripe), found


_KEY_COMMANDS: dict[str, Handler] = {
    "get": _get, "get_with_version": _get_with_version, "set": _set, "cas": _cas,
    "incr": _incr, "delete": _delete, "contains": _contains, "len": _len, "keys": _keys,
    "ttl": _ttl, "expire": _expire, "persist": _persist, "clear": _clear, "stats": _stats,
    "get_many": _get_many, "set_many": _set_many, "set_array": _set_array,
    "get_array": _get_array, "set_options": _set_options, "getdel": _getdel, "getex": _getex,
    "append": _append, "rename": _rename, "strlen": _strlen, "type": _type,
    "exists": _exists, "delete_many": _delete_many, "scan": _scan, "get_each": _get_each,
}
# The key commands that run() hands to their handler at once (stats adds the node's state)
_PLAIN_KEY_COMMANDS = {op: h for op, h in _KEY_COMMANDS.items() if op != "stats"}
