"""The wire protocol between `RemoteCache` and the node: multipart ZeroMQ messages, version 2.

This docstring is the specification. Both sides are in this module as pure functions between
Python values and lists of frames, so it is tested without sockets. A client talks to the node's
ROUTER socket from a DEALER socket; the ROUTER adds and strips the peer's routing id, which is
not part of a message below.

Request (client -> node) and reply (node -> client)
---------------------------------------------------
    frame  content                      notes
    0      b"SHMKV/2" + header          protocol tag (b"SHMKV/" + PROTOCOL_VERSION in ASCII),
                                        then the header in the same frame (forms below)
    1..    payload                      raw bytes, one frame per key or value (table below)

Every frame costs each side about a microsecond of libzmq and pyzmq (more with pyzmq's
send_multipart and its enum flags), so a message has no frame that carries nothing: the tag
leads the header frame, and there is no empty delimiter (version 1 had both: a get was 4 frames
out and 5 back, now 2 and 2). The tag is still read before the header is parsed, so a message of
another version gets an error reply (ProtocolError) naming both versions. Version 1's envelope
(an empty frame, then a tag frame) is recognised and answered in that envelope (b"", b"SHMKV/2",
a JSON error header), which a version 1 client reads as "protocol version mismatch"; a version 1
node answers a version 2 request the same way, and this side raises ProtocolError saying so.
Values never go through the header: each travels as its own frame, which the node hands to the
region as a view of the received message (one copy, into the arena) and sends from the bytes it
read (zero-copy above pyzmq's copy threshold, 64 KiB).

Header forms. The byte after the tag says which:
    first byte  form      what
    "{"         JSON      a UTF-8 JSON object: any command, any reply (fields below)
    0x01        compact   a request of one of compact.OPS whose fields are only coll,
                          timeout_ms and ttl_s (the hot path: get, set, get_many, ...)
    0x02        compact   an ok reply whose result is null, a bool, an int (i64), a float,
                          or a list of bools (get_many's)
    0x03        batch     many requests in one message (batches.py: its layout and rules)
    0x04        batch     their replies, in one message
A sender uses the compact form where it can and JSON otherwise; a receiver reads both. JSON
costs ~2 us per dump or load on this project's VM, four per round trip, against ~0.1 us for a
struct: ~7% of a remote get, which the compact form gives back; JSON stays for everything
else, for what it buys: named optional fields that older peers ignore.

The compact form's layout is the table in compact.py's docstring; a compact request
decodes to the JSON header it stands for, so the node handles both forms the same way.

Header fields. Every field not listed is ignored by both sides, so a peer may add fields.
    request  id     int       chosen by the client, echoed in the reply: a client matches
                              replies to its requests in flight by id, and discards a reply
                              whose id is none of theirs (a late reply to a request it gave
                              up on)
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

Pipelining. A client may send up to MAX_IN_FLIGHT messages (a batch of requests, batches.py,
is one) on one connection before it reads their replies. The node reads a connection's requests
in order and answers them in that order (one loop; a request parked on a busy lock (waits.py)
is the exception: the requests after it that do not share its keys are answered first).
MAX_IN_FLIGHT is half the node's send high-water mark (server.SEND_HWM): libzmq learns what the
client has read only every half of that mark, so a client within it never has a reply dropped.

Commands. The table of commands, their header fields, payload frames and results is in
wire_ops.py's docstring (with REQUEST_FRAMES and RESENDABLE); a key frame holds the key's
bytes (a str key in UTF-8, which the engine treats as the same key).

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
                       (get_many, keys, scan; a batch's
                       replies)
    max_batch_requests requests of one batch message          RequestTooLarge (batches.py); a
                       (MAX_BATCH_REQUESTS)                   node without it sends no batch
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
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from shmkv import errors
from shmkv.backend import pack_c, unpack_bytes_c
from shmkv.coerce import key_bytes, value_buffer
from shmkv.errors import ProtocolError

from . import compact
# RESENDABLE and WRITE_OPS: clients read them here
from .wire_ops import REQUEST_FRAMES, RESENDABLE, WRITE_OPS  # noqa: F401

# A frame as either side handles it: bytes, a memoryview or a zmq.Frame (anything with the
# buffer protocol; collections.abc.Buffer is Python 3.12+).
Buffer = Any
PROTOCOL_VERSION = 2
TAG_PREFIX = b"SHMKV/"
PROTOCOL_TAG = TAG_PREFIX + str(PROTOCOL_VERSION).encode()

# Requests a client keeps in flight on one connection (the docstring's Pipelining): half of
# the node's send high-water mark, server.SEND_HWM.
MAX_IN_FLIGHT = 8

# Limits (the table in the docstring). The most frames a request has is 1 (header) + 4
# (set_many), so 8 leaves no room for abuse; 100k keys is ~50x the largest batch the
# benchmarks use, and a Python view per key keeps a batch of that size under ~20 MB.
MAX_FRAMES = 8
MAX_BATCH_KEYS = 100_000
# Requests of one batch message (batches.py): 100x a pipeline's usual batch, ~1 MB of table.
MAX_BATCH_REQUESTS = 10_000
# Room beyond the largest value for the header, the key and a batch's length table.
MESSAGE_HEADROOM_BYTES = 1 << 20
# The share of the client's timeout_ms after which a request that waits for a lock is
# answered LockTimeout: the rest is for the reply's way back and the client's own clock.
DEADLINE_SHARE = 0.8


def limits_for(arena_bytes: int) -> dict[str, int]:
    """The limits of a node serving a region with this arena (the ping reply's `limits`)."""
    message_bytes = min(arena_bytes, 2**32 - 1) + MESSAGE_HEADROOM_BYTES
    return {"max_message_bytes": message_bytes, "max_frames": MAX_FRAMES,
            "max_batch_keys": MAX_BATCH_KEYS, "max_reply_bytes": message_bytes,
            "max_batch_requests": MAX_BATCH_REQUESTS}


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


@dataclass(slots=True)
class Request:
    """A decoded request. `fields` is the whole header, unknown fields included;
    `max_reply_bytes` is the node's limit, which the node sets (None: no limit). Not frozen:
    a frozen dataclass's __init__ costs ~0.3 us more, a tenth of what the node spends on a
    get; nothing changes a request once decoded."""

    id: int
    op: str
    coll: str
    fields: dict[str, Any]
    frames: Sequence[Buffer]  # views of the frames received (bytes from another codec)
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
    old_envelope: bool = False  # answers a request in version 1's envelope (the docstring)

    @property
    def ok(self) -> bool:
        return self.error is None


# --- requests -------------------------------------------------------------------------------
def encode_request(request_id: int, op: str, fields: dict[str, Any],
                   frames: Sequence[Buffer] = ()) -> list[Any]:
    """The frames of a request. Raises TypeError for an argument JSON cannot carry."""
    head = compact.request_header(request_id, op, fields)
    if head is None:
        head = _dumps({"id": request_id, "op": op, **fields})
    return [PROTOCOL_TAG + head, *frames]


def decode_request(frames: Sequence[Buffer], max_reply_bytes: int | None = None) -> Request:
    """Parse and check a request's tag, header and frame count. Raises ProtocolError."""
    head = _head(frames)
    if head[_TAG_BYTES] == compact.REQUEST_FORM:
        # a compact header can only hold an int id, an op of compact.OPS and a str coll
        header = compact.request_fields(head, _TAG_BYTES)
        request_id, op, coll = header["id"], header["op"], header.get("coll", "")
        timeout_ms = header.get("timeout_ms")
    else:
        header = _json_header(head)
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
    payload = _views(frames)
    expected = REQUEST_FRAMES[op]
    if len(payload) != expected:
        raise ProtocolError(f"{op} takes {expected} frame(s) after the header, "
                            f"got {len(payload)}")
    return Request(request_id, op, coll, header, payload, max_reply_bytes)


def request_id_of(frames: Sequence[Buffer]) -> int | None:
    """The id of a request that failed to decode, if its header holds one: the error reply
    carries it, so that the client can match the reply to its request."""
    try:
        head = _head(frames)
    except _OldEnvelope:  # version 1: the header is the third frame
        head = PROTOCOL_TAG + bytes(frames[2]) if len(frames) > 2 else b""
    except (ProtocolError, TypeError):
        return None
    try:
        header = compact.request_fields(head, _TAG_BYTES) \
            if head[_TAG_BYTES] == compact.REQUEST_FORM else json.loads(head[_TAG_BYTES:])
    except (IndexError, ProtocolError, ValueError, RecursionError):
        return None
    request_id = header.get("id") if isinstance(header, dict) else None
    return request_id if type(request_id) is int else None


# --- replies --------------------------------------------------------------------------------
def encode_reply(reply: Reply) -> list[Any]:
    """The frames of a reply. Never raises: a result JSON cannot carry (a bug of the node)
    is sent as an internal error, so that the client still gets its one reply."""
    if reply.error is None:
        head = compact.reply_header(reply.id, reply.result)
        if head is not None:
            return [PROTOCOL_TAG + head, *reply.frames]
        try:
            return [PROTOCOL_TAG + _dumps({"id": reply.id, "ok": True, "result": reply.result}),
                    *reply.frames]
        except TypeError as exc:
            reply = Reply(reply.id, error=INTERNAL_ERROR, op=reply.op,
                          message=f"the node failed on this request: {exc}",
                          old_envelope=reply.old_envelope)
    header = _dumps({"id": reply.id, "ok": False, "error": reply.error,
                     "message": reply.message})
    if reply.old_envelope:  # readable by a version 1 client: see the docstring
        return [b"", PROTOCOL_TAG, header]
    return [PROTOCOL_TAG + header]


def decode_reply(frames: Sequence[Buffer]) -> Reply:
    """Parse a reply. Raises ProtocolError if it is not one (an error reply is a Reply).
    Its frames are those given (bytes or zmq.Frame), not copies."""
    try:
        head = _head(frames)
    except _OldEnvelope as exc:  # an older node that could not read our request
        raise ProtocolError(f"{exc}: the node speaks an older version of the protocol than "
                            "this client (upgrade the node)") from None
    if head[_TAG_BYTES] == compact.REPLY_FORM:
        request_id, result = compact.reply_result(head, _TAG_BYTES)
        return Reply(request_id, result, list(frames[1:]))
    header = _json_header(head)
    request_id, ok = header.get("id"), header.get("ok")
    if "id" not in header or request_id is not None and type(request_id) is not int \
            or type(ok) is not bool:
        raise ProtocolError("a reply needs an int or null id and a bool ok")
    if ok:
        return Reply(request_id, header.get("result"), list(frames[1:]))
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
    return Reply(request_id, error=code, message=message, op=op,
                 old_envelope=isinstance(exc, _OldEnvelope))


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
    if pack_c is not None and (frames := pack_c(items)) is not None:  # bytes items, in C
        return frames  # type: ignore[no-any-return]
    return [struct.pack(f"<{len(items)}I", *map(len, items)), b"".join(items)]


def unpack(lengths: Buffer, data: Buffer) -> list[memoryview]:
    """The items of a packed batch, as views of data. Raises ProtocolError if the length
    table is not whole or does not add up to the data, RequestTooLarge past MAX_BATCH_KEYS."""
    blob = memoryview(data).cast("B")
    items, at = [], 0
    for n in _lengths(lengths, blob.nbytes):
        items.append(blob[at:at + n])
        at += n
    return items


def unpack_bytes(lengths: Buffer, data: Buffer) -> list[bytes]:
    """The items of a packed batch as bytes (unpack's checks): for small items (keys, the
    values of get_many's reply) one struct call that cuts them all costs half of a loop of
    slices (and a third of views and their tobytes())."""
    if unpack_bytes_c is not None:  # in C when the framing is sound; else the errors below
        items = unpack_bytes_c(lengths, data, MAX_BATCH_KEYS)
        if items is not None:
            return items  # type: ignore[no-any-return]
    lens = _lengths(lengths, memoryview(data).nbytes)
    layout = ("%ds" * len(lens)) % lens
    if len(lens) <= _CACHED_LAYOUT_ITEMS:  # struct's own cache of compiled layouts
        return list(struct.unpack_from(layout, data))
    return list(struct.Struct(layout).unpack_from(data))


# struct caches the layouts it compiles (100 of them); one of a batch's length costs ~24 bytes
# an item, so only small batches' layouts go through its cache (at most ~2.5 MB in all).
_CACHED_LAYOUT_ITEMS = 1024


def _lengths(lengths: Buffer, data_bytes: int) -> tuple[int, ...]:
    table = memoryview(lengths)
    if table.nbytes % 4:
        raise ProtocolError("a packed batch's length table must be whole u32s")
    if table.nbytes // 4 > MAX_BATCH_KEYS:
        raise errors.RequestTooLarge(f"a batch of {table.nbytes // 4} items is over the limit "
                                     f"of {MAX_BATCH_KEYS} per request; split it")
    lens = struct.unpack_from(f"<{table.nbytes // 4}I", table)
    if sum(lens) != data_bytes:
        raise ProtocolError("a packed batch's lengths do not add up to its bytes")
    return lens


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
class _OldEnvelope(ProtocolError):
    """A message in version 1's envelope: its error reply goes back in that envelope."""


_TAG_BYTES = len(PROTOCOL_TAG)


def _head(frames: Sequence[Buffer]) -> bytes:
    """The header frame, tag included, once its tag is this version's. Raises ProtocolError
    (_OldEnvelope for version 1's envelope) saying what the message is instead."""
    if not len(frames):
        raise ProtocolError("a message is a header frame (the protocol tag, then the header), "
                            "then payload frames; got 0 frames")
    try:
        head = bytes(frames[0])
    except TypeError:
        raise ProtocolError("every frame of a message must be bytes") from None
    if head.startswith(PROTOCOL_TAG) and len(head) > _TAG_BYTES:
        return head
    if head.startswith(PROTOCOL_TAG):
        raise ProtocolError("a message's first frame is the protocol tag and then its header; "
                            "the header is missing")
    if not head and len(frames) > 1:  # version 1's envelope: b"", then the tag frame
        try:
            tag = bytes(frames[1])
        except TypeError:
            tag = b""
        if tag == PROTOCOL_TAG:
            raise ProtocolError(f"the tag and the header are one frame in version "
                                f"{PROTOCOL_VERSION}, with no empty frame before them")
        if tag.startswith(TAG_PREFIX):
            raise _OldEnvelope(_mismatch(tag))
    if head.startswith(TAG_PREFIX):
        raise ProtocolError(_mismatch(head))
    raise ProtocolError(f"not a shmkv message: the first frame must start with {PROTOCOL_TAG!r}")


def _mismatch(tag: bytes) -> str:
    version = re.match(rb"\d*", tag[len(TAG_PREFIX):len(TAG_PREFIX) + 16])
    theirs = version.group().decode() if version and version.group() else \
        tag[len(TAG_PREFIX):][:16].decode("ascii", "replace")
    return (f"protocol version mismatch: the message is version {theirs}, this side speaks "
            f"version {PROTOCOL_VERSION}")


def _views(frames: Sequence[Buffer]) -> list[memoryview]:
    try:
        return [memoryview(f) for f in frames[1:]]
    except TypeError:
        raise ProtocolError("every frame of a message must be bytes") from None


def _json_header(head: bytes) -> dict[str, Any]:
    try:
        header = json.loads(head[_TAG_BYTES:])
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; RecursionError
        # is how json refuses a document nested deeper than the interpreter's stack allows
        raise ProtocolError("the header is neither a compact header nor a UTF-8 JSON "
                            "object") from None
    if not isinstance(header, dict):
        raise ProtocolError("the header must be a JSON object")
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


