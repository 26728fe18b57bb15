"""The batch form of the wire protocol (protocol.py): many requests in one message, and their
replies in one message.

protocol.py's docstring says where a header goes; this module owns the batch form's layout.
A pipeline of RemoteCache (clients/pipeline.py) sends what it queued as batches: libzmq and
pyzmq cost each message a few microseconds and a wake-up of both ends' I/O threads, which a
pipeline of 100 gets paid 100 times (measured: 0.11x a redis-py pipeline's throughput).

A batch is two frames, little-endian throughout:

    frame  content
    0      the tag (b"SHMKV/2"), then the form: REQUEST_FORM (0x03) or REPLY_FORM (0x04),
           then count (u32), then count entries, back to back:
               offset  size  field
               0       4     header bytes, h (u32)
               4       1     payload frames, n (u8; at most protocol.MAX_FRAMES - 1)
               5       4n    each payload frame's bytes (u32 each)
               5 + 4n  h     the header, as the first frame of a message of its own holds it
                             after the tag: a compact header (compact.py) or a JSON object
    1      every payload frame of every entry, back to back, in the entries' order

A request entry is a request of protocol.py's table (op "batch" does not exist: a batch holds
no batch); a reply entry is a reply (ok or error). The reply to a request batch is one reply
batch with one entry per request entry, in the same order, each with the id its request had
(null when that request's header could not be read: the client then matches by position).
Each request gets its own reply: a request that fails (an unknown command, a missing key, a
busy lock) fails alone, and the others are run.

What a malformed batch gets. A batch whose framing cannot be read (a count past
MAX_BATCH_REQUESTS, entries that do not fill frame 0 exactly, lengths that do not add up to
frame 1, not two frames) is answered with one error reply of a message of its own (protocol.py,
id null): ProtocolError, or RequestTooLarge past the limit; the client fails every request of
its oldest batch in flight with it. A node that predates batches cannot read the form either
and answers the same way; a client sends batches only to a node whose ping lists
max_batch_requests among its limits.

The node runs a batch's requests in order, as if each had come in a message of its own,
behind the requests before it (waits.py's rules, whole): a request that finds a lock busy is
parked, and the batch's later requests that share a key with it are parked behind it, while
those that do not are run. The batch's reply waits until every one of its requests is answered
(the parked ones when their lock frees or their deadline passes): one message, in order.

Limits: at most MAX_BATCH_REQUESTS requests a batch, each with the limits of its own message
(frames, batch keys); a batch's request frames travel as one frame, so max_message_bytes bounds
the sum of their bytes (a client sends a large value alone). Once the payload of a batch's
replies passes max_reply_bytes, its requests not yet run are answered RequestTooLarge without
being run, so a batch holds about as much of the node's memory as one large reply.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from shmkv.errors import ProtocolError, RequestTooLarge

from . import compact
from .protocol import MAX_BATCH_REQUESTS, MAX_FRAMES, PROTOCOL_TAG, Buffer, Reply, decode_reply

REQUEST_FORM, REPLY_FORM = 3, 4
_COUNT = struct.Struct("<I")
_ENTRY = struct.Struct("<IB")
_ENTRY_1 = struct.Struct("<IBI")  # an entry with one payload frame: most are
# the payload sizes of an entry of n frames (u32 each), by n, compiled once
_SIZES = tuple(struct.Struct(f"<{n}I") for n in range(MAX_FRAMES))
_TAG_BYTES = len(PROTOCOL_TAG)
_HEAD_BYTES = _TAG_BYTES + 1 + _COUNT.size  # tag, form, count


def is_batch(head: bytes, form: int) -> bool:
    """True if a message's first frame (tag included) is a batch of this form."""
    return len(head) > _TAG_BYTES and head[_TAG_BYTES] == form


def encode(form: int, entries: Sequence[Sequence[Buffer]]) -> list[bytes]:
    """The two frames of a batch of entries, each the frames of a message of its own (its
    first frame the tag and its header)."""
    if len(entries) > MAX_BATCH_REQUESTS:
        raise RequestTooLarge(f"a batch of {len(entries)} requests is over the limit of "
                              f"{MAX_BATCH_REQUESTS} per message")
    table = [PROTOCOL_TAG, bytes((form,)), _COUNT.pack(len(entries))]
    payload: list[Buffer] = []
    append, add, extend = table.append, payload.append, payload.extend
    one, none = _ENTRY_1.pack, _ENTRY.pack
    for frames in entries:
        head = frames[0][_TAG_BYTES:]
        n = len(frames) - 1
        if n == 1:  # most: a key or a value (_size, spelled out)
            frame = frames[1]
            append(one(len(head), 1, len(frame) if type(frame) is bytes else
                       memoryview(frame).nbytes))
            add(frame)
        elif n == 0:
            append(none(len(head), 0))
        else:
            append(struct.pack(f"<IB{n}I", len(head), n, *map(_size, frames[1:])))
            extend(frames[1:])
        append(head)
    return [b"".join(table), b"".join(payload)]


def _size(frame: Buffer) -> int:
    return len(frame) if type(frame) is bytes else memoryview(frame).nbytes


def decode(frames: Sequence[Buffer], form: int) -> list[list[Any]]:
    """The entries of a batch, each as the frames of a message of its own (its first frame
    the tag and its header, as bytes; its payload frames views of frame 1). Raises
    ProtocolError if the framing cannot be read, RequestTooLarge past MAX_BATCH_REQUESTS."""
    return [[PROTOCOL_TAG + table[at:end], *payload]
            for table, at, end, payload in _entries(frames, form)]


def decode_replies(frames: Sequence[Buffer]) -> list[Reply]:
    """The replies of a reply batch (decode's checks), each as protocol.decode_reply reads a
    message of its own; a compact reply is read in place, in one step (a client reads 100s a
    batch)."""
    replies: list[Reply] = []
    append, compact_form, result_of = replies.append, compact.REPLY_FORM, compact.reply_result
    for table, at, end, payload in _entries(frames, REPLY_FORM):
        if end > at and table[at] == compact_form:
            request_id, result = result_of(table, at, end)
            append(Reply(request_id, result, payload))
        else:
            append(decode_reply([PROTOCOL_TAG + table[at:end], *payload]))
    return replies


def _entries(frames: Sequence[Buffer], form: int
             ) -> list[tuple[bytes, int, int, list[memoryview]]]:
    """Each entry of a batch as (table, at, end, payload): its header is table[at:end] (a
    compact header or a JSON object, as the entry says; it is read by the caller), its
    payload frames views of frame 1. Raises what decode raises."""
    if len(frames) != 2:
        raise ProtocolError(f"a batch is two frames (its table, then its payload), not "
                            f"{len(frames)}")
    try:
        table = frames[0] if type(frames[0]) is bytes else bytes(frames[0])
        blob = memoryview(frames[1]).cast("B")
    except TypeError:
        raise ProtocolError("every frame of a message must be bytes") from None
    if len(table) < _HEAD_BYTES or table[_TAG_BYTES] != form or \
            not table.startswith(PROTOCOL_TAG):
        raise ProtocolError("a batch's first frame is the tag, its form and a u32 count")
    (count,) = _COUNT.unpack_from(table, _TAG_BYTES + 1)
    if count > MAX_BATCH_REQUESTS:
        raise RequestTooLarge(f"a batch of {count} requests is over this node's limit of "
                              f"{MAX_BATCH_REQUESTS} (max_batch_requests)")
    entries: list[tuple[bytes, int, int, list[memoryview]]] = []
    at, data_at, end = _HEAD_BYTES, 0, len(table)
    unpack_entry, entry_bytes, sizes_of = _ENTRY.unpack_from, _ENTRY.size, _SIZES
    unpack_size, append = _COUNT.unpack_from, entries.append
    for _ in range(count):
        if end - at < entry_bytes:
            raise ProtocolError("a batch's table ends inside an entry")
        head_bytes, n = unpack_entry(table, at)
        at += entry_bytes
        if n >= MAX_FRAMES or end - at < 4 * n + head_bytes:
            raise ProtocolError("a batch entry's frames or header do not fit its table")
        if n == 1:  # most: a key, a value
            (size,) = unpack_size(table, at)
            payload = [blob[data_at:data_at + size]]
            data_at += size
            at += 4
        elif n:
            payload = []
            for size in sizes_of[n].unpack_from(table, at):
                payload.append(blob[data_at:data_at + size])
                data_at += size
            at += 4 * n
        else:
            payload = []
        append((table, at, at + head_bytes, payload))
        at += head_bytes
    if at != end or data_at != blob.nbytes:
        raise ProtocolError("a batch's entries do not fill its table and payload exactly")
    return entries


class Replies:
    """The replies to one request batch as the node makes them, in any order (a parked
    request's comes later: waits.py); done(replies) is called once, when the last one is in.
    Tracks the replies' payload bytes against the reply limit (the docstring's Limits)."""

    __slots__ = ("replies", "left", "payload_bytes", "max_reply_bytes", "done")

    def __init__(self, count: int, max_reply_bytes: int | None, done: Any) -> None:
        self.replies: list[Any] = [None] * count
        self.left = count
        self.payload_bytes = 0
        self.max_reply_bytes = max_reply_bytes
        self.done = done

    def over_limit(self) -> RequestTooLarge | None:
        """The error for the batch's requests not yet run, once the replies are too large."""
        cap = self.max_reply_bytes
        if cap is None or self.payload_bytes <= cap:
            return None
        return RequestTooLarge(f"the replies to this batch are over this node's limit of {cap} "
                               "bytes per reply (max_reply_bytes) before this request: it was "
                               "not run; send fewer requests per batch")

    def fill(self, index: int, reply: Any) -> None:
        self.replies[index] = reply
        for frame in reply.frames:
            self.payload_bytes += len(frame) if type(frame) is bytes else \
                memoryview(frame).nbytes
        self.left -= 1
        if not self.left:
            self.done(self.replies)
