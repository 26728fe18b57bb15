"""The wire protocol between `RemoteCache` and the node: multipart ZeroMQ messages, version 1.

This docstring is the specification. Both sides are in this module as pure functions between
Python values and lists of frames, so it is tested without sockets. A client talks to the node's
ROUTER socket from a DEALER (or REQ) socket; the ROUTER adds and strips the peer's routing id,
which is not part of a message below.

Request (client -> node) and reply (node -> client)
---------------------------------------------------
    frame  content                      notes
    0      b""                          empty delimiter, as a REQ socket sends it
    1      b"SHMKV/1"                   protocol tag: b"SHMKV/" + PROTOCOL_VERSION in ASCII
    2      header                       a UTF-8 JSON object (fields below)
    3..    payload                      raw bytes, one frame per key or value (table below)

The tag stands apart from the header so that any future version can read it without parsing
the header: a request tagged with another version gets an error reply (ProtocolError) naming
both versions. Values never go through JSON: each travels as its own frame, which the node
hands to the region as a memoryview of the received message (one copy, into the arena) and
sends from the bytes it read (zero-copy above pyzmq's copy threshold).

Why a JSON header rather than a struct: it costs ~17 us per round trip for the four dumps and
loads of a small header, measured against a ~320 us loopback round trip on this project's VM
(~5%), and it buys what the protocol needs to evolve: named optional fields, and unknown
fields that older peers ignore.

Header fields. Every field not listed is ignored by both sides, so a peer may add fields.
    request  id     int       chosen by the client, echoed in the reply: a client discards a
                              reply whose id is not that of its request in flight (a late
                              reply to a request it gave up on)
             op     str       the command, a key of REQUEST_FRAMES
             coll   str       the collection of key commands; "" or absent: the default one
             timeout_ms int   optional: how long the client waits for this reply. A
                              request that needs a busy lock is answered with LockTimeout
                              once DEADLINE_SHARE of it has passed (and at the latest after
                              the node's lock timeout), so that the client hears LockTimeout
                              rather than giving up. Absent (older clients): the lock timeout.
             ...              the command's arguments, as named in the table below
    reply    id     int|null  the request's id (null when it could not be read)
             ok     bool      false for an error reply
             result any       the command's result (table below); absent on errors
             error  str       error code: the name of the exception class (ERROR_CLASSES);
                              the client raises that class with `message`
             message str      the exception's message

Commands. "key", "value": one payload frame each; "k1 v1 k2 v2 ..": pairs of frames. A key
frame holds the key's bytes (a str key in UTF-8, which the engine treats as the same key).
    op                request fields     request frames   reply result          reply frames
    ping              -                  -                {"protocol_version",  -
                                                          "limits"}
    get               coll               key              found: bool           value if found
    get_with_version  coll               key              version or null       value if found
    set               coll, ttl_s        key, value       null                  -
    cas               coll, version,     key, value       stored: bool          -
                      ttl_s
    incr              coll, delta        key              the new int           -
    delete            coll               key              deleted: bool         -
    contains          coll               key              bool                  -
    len               coll               -                int                   -
    keys              coll               -                count: int            one per key
    ttl               coll               key              seconds or null       -
    expire            coll, ttl_s        key              bool                  -
    persist           coll               key              bool                  -
    clear             coll               -                removed: int          -
    stats             coll               -                the stats dict        -
    get_many          coll               keys (packed)    [found: bool, ..]     the values found
                                                                                (packed)
    set_many          coll, ttl_s        keys, values     null                  -
                                         (both packed)
    set_array         coll, ttl_s,       key, data        null                  -
                      dtype, shape
    get_array         coll               key              {dtype, shape}|null   data if found
    collection        name               -                null (creates it)     -
    collections       -                  -                [names]               -
    rename_collection old, new           -                null                  -
    drop_collection   name               -                removed: int          -
    publish           -                  channel, message null                  -
    set_options       coll, ttl_s, nx,   key, value       get: found: bool      get: old value
                      xx, keepttl, get                    else stored: bool     if found
                                                          or null
    getdel            coll               key              found: bool           value if found
    getex             coll, ttl_s,       key              found: bool           value if found
                      persist
    append            coll               key, value       the new length        -
    rename            coll, nx           old key, new key bool                  -
    strlen            coll               key              int                   -
    type              coll               key              str or null           -
    wait              n_replicas         -                {"replicas": int}     -

`wait` (RemoteCache.wait, Redis's WAIT) counts the replicas that have applied everything up to
the primary's offset after this connection's last write through the node (`after`, which the
node sets itself; broker/dispatch.py); it answers at once, the client asks again.

`set_options` is a set with any of Cache.set's options (nx, xx, keepttl, get; false when
absent), and returns what Cache.set returns; it is a command of its own rather than fields of
`set` so that a node that predates the options refuses it (unknown command) instead of doing a
plain set. The commands after it are Cache's of the same name (shmkv/commands.py).

`publish` sends message to the subscribers of channel through the region, as a local
Cache.publish does; channels are node-wide (any coll is ignored), a channel frame follows the
rules of a key frame. What subscribers receive is specified in pubsub.py (the PUB socket's
message format).

Packed: a batch travels as two frames, not one frame per item: a table of the items' lengths
(u32 little-endian each), then the items' bytes back to back. libzmq and pyzmq cost a few
microseconds per frame, which a batch of 100 one-frame items paid 400 times over (measured: a
get_many of 100 cost 9x Redis' MGET); a length table that does not add up to the bytes is a
ProtocolError.

Limits. A node refuses what would let one client take its memory or its loop; `limits` in
the ping reply says what they are, so that a client refuses an oversize request itself (a
node that predates them sends none):
    limit              what                                   over it
    max_message_bytes  bytes of one frame (ZMQ_MAXMSGSIZE);   libzmq drops the connection
                       set from the region's arena size       (no reply: check before sending)
    max_frames         frames of one message (MAX_FRAMES)     RequestTooLarge; the node reads
                                                              and drops the rest frame by frame
    max_batch_keys     items of a packed batch                RequestTooLarge
                       (MAX_BATCH_KEYS)
    max_reply_bytes    payload bytes of one reply             RequestTooLarge, naming the limit
                       (get_many, keys)
The frame and batch limits are constants, far above what any command of the table needs; the
two byte limits follow the region, as no value can be larger than its arena. While a get_many
is answered the node holds at most about twice max_reply_bytes (the values read, then packed).

Arrays: `dtype` is numpy's descr of the dtype as in a .npy header (numpy.lib.format), so
"<f8" for a plain dtype and a list of [name, descr(, shape)] for a structured one; `shape` is a
list of ints; data is the array's bytes in C order.

Errors. Any request, however malformed, gets exactly one reply. Error codes are the names of
the classes in shmkv.errors.__all__ plus KeyError, TypeError and ValueError (ERROR_CLASSES). An
exception is sent under the name of its class or, if that is not listed, of its nearest listed
base class (UnicodeDecodeError as ValueError); one with none, a failure of the node itself, as
ShmKVError. A client that gets a code it does not know raises ShmKVError.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from shmkv import errors
from shmkv.coerce import key_bytes, value_buffer
from shmkv.errors import ProtocolError

# A frame as either side handles it: bytes, a memoryview or a zmq.Frame (anything with the
# buffer protocol; collections.abc.Buffer is Python 3.12+).
Buffer = Any
PROTOCOL_VERSION = 1
TAG_PREFIX = b"SHMKV/"
PROTOCOL_TAG = TAG_PREFIX + str(PROTOCOL_VERSION).encode()

# Payload frames a request carries, per command: a count, or one of the two variable shapes.
REQUEST_FRAMES: dict[str, int] = {
    "ping": 0, "get": 1, "get_with_version": 1, "set": 2, "cas": 2, "incr": 1, "delete": 1,
    "contains": 1, "len": 0, "keys": 0, "ttl": 1, "expire": 1, "persist": 1, "clear": 0,
    "stats": 0, "get_many": 2, "set_many": 4, "set_array": 2, "get_array": 1,
    "collection": 0, "collections": 0, "rename_collection": 0, "drop_collection": 0,
    "publish": 2, "set_options": 2, "getdel": 1, "getex": 1, "append": 2, "rename": 2,
    "strlen": 1, "type": 1, "wait": 0,
}

# Limits (the table in the docstring). The most frames a request has is 3 (envelope) + 4
# (set_many), so 8 leaves no room for abuse; 100k keys is ~50x the largest batch the
# benchmarks use, and a Python view per key keeps a batch of that size under ~20 MB.
MAX_FRAMES = 8
MAX_BATCH_KEYS = 100_000
# Room beyond the largest value for the header, the key and a batch's length table.
MESSAGE_HEADROOM_BYTES = 1 << 20
# The share of the client's timeout_ms after which a request that waits for a lock is
# answered LockTimeout: the rest is for the reply's way back and the client's own clock.
DEADLINE_SHARE = 0.8


def limits_for(arena_bytes: int) -> dict[str, int]:
    """The limits of a node serving a region with this arena (the ping reply's `limits`)."""
    message_bytes = min(arena_bytes, 2**32 - 1) + MESSAGE_HEADROOM_BYTES
    return {"max_message_bytes": message_bytes, "max_frames": MAX_FRAMES,
            "max_batch_keys": MAX_BATCH_KEYS, "max_reply_bytes": message_bytes}


# The exceptions that cross the wire, by code. Built from errors.__all__, so a class added there
# is covered without touching this module.
ERROR_CLASSES: dict[str, type[Exception]] = {
    **{name: getattr(errors, name) for name in errors.__all__},
    "KeyError": KeyError,
    "TypeError": TypeError,
    "ValueError": ValueError,
}
INTERNAL_ERROR = "ShmKVError"
_CODES = {cls: code for code, cls in ERROR_CLASSES.items()}


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request. `fields` is the whole header, unknown fields included;
    `max_reply_bytes` is the node's limit, which the node sets (None: no limit)."""

    id: int
    op: str
    coll: str
    fields: dict[str, Any]
    frames: Sequence[memoryview]
    max_reply_bytes: int | None = None


@dataclass(slots=True)
class Reply:
    """A reply. `op` is the request's command, for the node's metrics; it is not sent."""

    id: int | None
    result: Any = None
    frames: list[Any] = field(default_factory=list)
    error: str | None = None
    message: str = ""
    op: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


# --- requests -------------------------------------------------------------------------------
def encode_request(request_id: int, op: str, fields: dict[str, Any],
                   frames: Sequence[Buffer] = ()) -> list[Any]:
    """The frames of a request. Raises TypeError for an argument JSON cannot carry."""
    header = {"id": request_id, "op": op, **fields}
    return [b"", PROTOCOL_TAG, _dumps(header), *frames]


def decode_request(frames: Sequence[Buffer]) -> Request:
    """Parse and check a request's envelope, header and frame count. Raises ProtocolError."""
    views = _envelope(frames)
    header = _header(views[2])
    request_id = header.get("id")
    if type(request_id) is not int:
        raise ProtocolError(f"the request id must be an int, not {request_id!r}")
    op, coll = header.get("op"), header.get("coll", "")
    if type(op) is not str or op not in REQUEST_FRAMES:
        raise ProtocolError(f"unknown command {op!r}; this node knows: "
                            f"{', '.join(sorted(REQUEST_FRAMES))}")
    if type(coll) is not str:
        raise ProtocolError(f"coll must be a collection name (str), not {coll!r}")
    timeout_ms = header.get("timeout_ms")
    if timeout_ms is not None and (type(timeout_ms) is not int or timeout_ms <= 0):
        raise ProtocolError(f"timeout_ms must be an int > 0, not {timeout_ms!r}")
    payload = views[3:]
    expected = REQUEST_FRAMES[op]
    if len(payload) != expected:
        raise ProtocolError(f"{op} takes {expected} frame(s) after the header, "
                            f"got {len(payload)}")
    return Request(request_id, op, coll, header, payload)


def request_id_of(frames: Sequence[Buffer]) -> int | None:
    """The id of a request that failed to decode, if its header holds one: the error reply
    carries it, so that the client can match the reply to its request."""
    try:
        header = json.loads(bytes(frames[2]))
    except (IndexError, TypeError, ValueError, RecursionError):
        return None
    request_id = header.get("id") if isinstance(header, dict) else None
    return request_id if type(request_id) is int else None


# --- replies --------------------------------------------------------------------------------
def encode_reply(reply: Reply) -> list[Any]:
    """The frames of a reply. Never raises: a result JSON cannot carry (a bug of the node)
    is sent as an internal error, so that the client still gets its one reply."""
    if reply.error is None:
        try:
            header = _dumps({"id": reply.id, "ok": True, "result": reply.result})
        except TypeError as exc:
            reply = Reply(reply.id, error=INTERNAL_ERROR, op=reply.op,
                          message=f"the node failed on this request: {exc}")
        else:
            return [b"", PROTOCOL_TAG, header, *reply.frames]
    return [b"", PROTOCOL_TAG, _dumps({"id": reply.id, "ok": False, "error": reply.error,
                                       "message": reply.message})]


def decode_reply(frames: Sequence[Buffer]) -> Reply:
    """Parse a reply. Raises ProtocolError if it is not one (an error reply is a Reply)."""
    views = _envelope(frames)
    header = _header(views[2])
    request_id, ok = header.get("id"), header.get("ok")
    if "id" not in header or request_id is not None and type(request_id) is not int \
            or type(ok) is not bool:
        raise ProtocolError("a reply needs an int or null id and a bool ok")
    if ok:
        return Reply(request_id, header.get("result"), list(views[3:]))
    error, message = header.get("error"), header.get("message", "")
    if type(error) is not str or type(message) is not str:
        raise ProtocolError("an error reply needs an error code and a message, as strings")
    return Reply(request_id, error=error, message=message)


def error_reply(request_id: int | None, exc: BaseException, op: str = "") -> Reply:
    """The reply that carries exc; an exception of no listed class counts as internal."""
    code = error_code(exc)
    if code is None:
        return Reply(request_id, error=INTERNAL_ERROR, op=op,
                     message=f"the node failed on this request: {type(exc).__name__}: {exc}")
    args = exc.args
    message = args[0] if len(args) == 1 and isinstance(args[0], str) else str(exc)
    return Reply(request_id, error=code, message=message, op=op)


def error_code(exc: BaseException) -> str | None:
    """The code of exc's class, or of its nearest base class that has one; None if none."""
    for cls in type(exc).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return None


def exception_from(reply: Reply) -> Exception:
    """The exception an error reply carries, of the class its code names."""
    cls = ERROR_CLASSES.get(reply.error or "")
    if cls is None:
        return errors.ShmKVError(f"{reply.error}: {reply.message}")
    return cls(reply.message)


# --- keys, values and arrays on the wire -----------------------------------------------------
# The client turns arguments into frames with the rules of the engine (shmkv.coerce), and with
# its messages, so that RemoteCache raises what Cache raises before anything is sent; the
# contract suite (tests/contract) checks that the two agree.
key_frame = key_bytes
value_frame = value_buffer


def pack(items: Sequence[Buffer]) -> list[bytes]:
    """Two frames for a batch: the lengths (u32 each), then the items back to back."""
    return [struct.pack(f"<{len(items)}I", *map(len, items)), b"".join(items)]


def unpack(lengths: Buffer, data: Buffer) -> list[memoryview]:
    """The items of a packed batch, as views of data. Raises ProtocolError if the length
    table is not whole or does not add up to the data, RequestTooLarge past MAX_BATCH_KEYS."""
    table, blob = memoryview(lengths), memoryview(data)
    if table.nbytes % 4:
        raise ProtocolError("a packed batch's length table must be whole u32s")
    if table.nbytes // 4 > MAX_BATCH_KEYS:
        raise errors.RequestTooLarge(f"a batch of {table.nbytes // 4} items is over the limit "
                                     f"of {MAX_BATCH_KEYS} per request; split it")
    lens = struct.unpack_from(f"<{table.nbytes // 4}I", table)
    if sum(lens) != blob.nbytes:
        raise ProtocolError("a packed batch's lengths do not add up to its bytes")
    items, at = [], 0
    blob = blob.cast("B")
    for n in lens:
        items.append(blob[at:at + n])
        at += n
    return items


def array_fields(arr: object) -> tuple[dict[str, Any], Buffer]:
    """(header fields, data frame) of an array for set_array."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"set_array() needs a numpy.ndarray, not {type(arr).__name__}")
    if arr.dtype.hasobject:
        raise TypeError("arrays holding Python objects (object dtype) cannot be shared; "
                        "use a plain or structured dtype")
    data = np.ascontiguousarray(arr)
    fields = {"dtype": npy_format.dtype_to_descr(arr.dtype), "shape": list(arr.shape)}
    # as bytes: memoryview() refuses some dtypes (datetime64), a uint8 view takes any
    return fields, memoryview(data.reshape(-1).view(np.uint8)) if data.nbytes else b""


def array_from(fields: dict[str, Any], data: Buffer) -> np.ndarray:
    """The array that set_array fields and a data frame describe: a view of data, not a copy.
    Raises ProtocolError for a dtype or shape that is not one, ValueError for data whose size
    does not match."""
    dtype = dtype_from_descr(fields.get("dtype"))
    shape = fields.get("shape")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise ProtocolError(f"an array shape is a list of ints >= 0, not {shape!r}")
    count = math.prod(shape)
    if len(memoryview(data)) != count * dtype.itemsize:
        raise ValueError(f"array data is {len(memoryview(data))} bytes; shape {shape} of "
                         f"{dtype} needs {count * dtype.itemsize}")
    if not count or not dtype.itemsize:
        return np.zeros(shape, dtype)
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def dtype_from_descr(descr: object) -> np.dtype:
    if not isinstance(descr, (str, list)):  # numpy would read None as float64
        raise ProtocolError(f"an array dtype is a numpy descr (str or list), not {descr!r}")
    try:
        dtype = npy_format.descr_to_dtype(_descr_tuples(descr))
    except Exception as exc:  # numpy raises a different class for each way a descr is wrong
        raise ProtocolError(f"not a numpy dtype description: {descr!r} ({exc})") from None
    if dtype.hasobject:
        raise TypeError("arrays holding Python objects (object dtype) cannot be shared; "
                        "use a plain or structured dtype")
    return dtype


def _descr_tuples(descr: object) -> object:
    """JSON turns a structured descr's tuples into lists; numpy wants the tuples back."""
    if not isinstance(descr, list):
        return descr
    fields = []
    for item in descr:
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise ValueError("each field of a structured dtype is [name, descr(, shape)]")
        name, sub, *shape = item
        fields.append((name, _descr_tuples(sub), *(tuple(s) for s in shape)))
    return fields


# --- helpers ----------------------------------------------------------------------------------
def _envelope(frames: Sequence[Buffer]) -> list[memoryview]:
    try:
        views = [memoryview(f) for f in frames]
    except TypeError:
        raise ProtocolError("every frame of a message must be bytes") from None
    if len(views) < 3:
        raise ProtocolError("a message is an empty delimiter frame, the protocol tag and a "
                            f"header frame, then payload frames; got {len(views)} frame(s)")
    if views[0].nbytes:
        raise ProtocolError("the first frame of a message must be the empty delimiter")
    tag = views[1].tobytes()
    if tag != PROTOCOL_TAG:
        if tag.startswith(TAG_PREFIX):
            theirs = tag[len(TAG_PREFIX):][:16].decode("ascii", "replace")
            raise ProtocolError(f"protocol version mismatch: the message is version {theirs}, "
                                f"this side speaks version {PROTOCOL_VERSION}")
        raise ProtocolError(f"not a shmkv message: the second frame must be {PROTOCOL_TAG!r}")
    return views


def _header(frame: memoryview) -> dict[str, Any]:
    try:
        header = json.loads(frame.tobytes())
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; RecursionError
        # is how json refuses a document nested deeper than the interpreter's stack allows
        raise ProtocolError("the header frame is not a UTF-8 JSON object") from None
    if not isinstance(header, dict):
        raise ProtocolError("the header frame must be a JSON object")
    return header


def _dumps(header: dict[str, Any]) -> bytes:
    try:
        return json.dumps(header, separators=(",", ":")).encode()
    except TypeError:
        bad = {k: type(v).__name__ for k, v in header.items()
               if not isinstance(v, (str, int, float, bool, list, dict, type(None)))}
        raise TypeError(f"cannot send these arguments over the wire: {bad}") from None
    except ValueError as exc:  # a circular list
        raise TypeError(f"cannot send these arguments over the wire: {exc}") from None


