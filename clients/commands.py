"""The commands of a remote handle, each as what it sends and how its reply reads: shared by
`RemoteCache` (remote.py), which waits for each reply, and its pipelines (pipeline.py), which
hand out a future instead.

A command builds its request (protocol.py: the op, its payload frames, its header fields) and
a function of the reply, and gives both to `_do`, which is what tells the two apart.
Arguments are checked here, with the engine's messages, before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import compress
from typing import Any

import numpy as np

from shmkv.backend import found_values_c, pack_c
from shmkv.broker import protocol
from shmkv.broker.protocol import Reply
from shmkv.errors import ProtocolError, RequestTooLarge
from shmkv.layout import MAX_KEY_BYTES

Decode = Callable[[Reply], Any]


def _result(reply: Reply) -> Any:
    return reply.result


def _nothing(reply: Reply) -> None:
    return None


def _writable(frame: Any) -> Any:
    """A received frame as a buffer its reader may change: a small one comes as bytes (the
    compiled round trip's, shmkv/_core_src/zmqcall.c), copied; a large one as a Frame, which
    the reader owns already."""
    return bytearray(frame) if type(frame) is bytes else frame


def _value(reply: Reply) -> bytes | None:
    return bytes(reply.frames[0]) if reply.result else None


def check_batch(count: int) -> None:
    if count > protocol.MAX_BATCH_KEYS:
        raise RequestTooLarge(f"a batch of {count} items is over the limit of "
                              f"{protocol.MAX_BATCH_KEYS} per request; split it")


def pack_keys(keys: Sequence[Any]) -> list[bytes]:
    """The two frames of a batch of keys (protocol.pack), each key checked as key_frame does:
    at once when they are all bytes, the usual case (a call per key is ~0.1 us a key; the
    check in Python ~5 us a hundred keys, in C 0.5 with the packing)."""
    if pack_c is not None and (frames := pack_c(keys, MAX_KEY_BYTES)) is not None:
        return frames  # type: ignore[no-any-return]
    if set(map(type, keys)) == {bytes} and max(map(len, keys)) <= MAX_KEY_BYTES:
        return protocol.pack(keys)
    return protocol.pack([protocol.key_frame(k) for k in keys])


def found_values(keys: Sequence[Any], reply: Reply) -> dict[Any, bytes]:
    """{key: value} of get_many's reply, keys as given (in C when the reply holds: ~2 us a
    hundred keys against ~8)."""
    found = reply.result
    if found_values_c is not None and len(reply.frames) == 2 and \
            (done := found_values_c(keys, found, *reply.frames)) is not None:
        return done  # type: ignore[no-any-return]
    values = protocol.unpack_bytes(*reply.frames)
    if type(found) is not list or len(found) != len(keys) or sum(found) != len(values):
        raise ProtocolError(f"a get_many reply must say found or not for each of its "
                            f"{len(keys)} keys and carry one value per key found")
    return dict(zip(compress(keys, found), values))


def scan_reply(reply: Reply) -> tuple[int, list[bytes]]:
    """(next cursor, keys) of scan's reply."""
    cursor = reply.result
    if type(cursor) is not int or cursor < 0 or len(reply.frames) != 2:
        raise ProtocolError("a scan reply must carry the next cursor (an int >= 0) and its "
                            "keys, packed")
    return cursor, protocol.unpack_bytes(*reply.frames)


def scan_fields(cursor: int, match: str | bytes, count: int | None
                ) -> tuple[list[bytes], dict[str, Any]]:
    """scan's pattern frame and fields, its arguments checked first. count None: Redis's
    default (SCAN_COUNT)."""
    if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
        raise ValueError(f"a scan cursor is an int >= 0 (0 to start), not {cursor!r}")
    if count is None:
        count = SCAN_COUNT
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"a scan count is an int > 0 or None, not {count!r}")
    if isinstance(match, str):
        match = match.encode()
    if not isinstance(match, bytes):
        raise TypeError(f"a scan pattern is str or bytes (a Redis glob), not "
                        f"{type(match).__name__}")
    return [match], {"cursor": cursor, "count": count}


# Keys scan asks for per call when not told (Redis's default COUNT): a call reads whole index
# stripes until it has that many, so it may return more.
SCAN_COUNT = 10


def set_many_frames(items: Mapping[Any, Any]) -> list[bytes]:
    keys = [protocol.key_frame(key) for key in items]
    values = [protocol.value_frame(value) for value in items.values()]
    return [*protocol.pack(keys), *protocol.pack(values)]


class Commands:
    """The key commands of the Cache API over the wire (see RemoteCache for the others)."""

    collection_name: str

    def _do(self, op: str, frames: Sequence[Any], decode: Decode, **fields: Any) -> Any:
        raise NotImplementedError

    # --- reads ----------------------------------------------------------------------------
    def get(self, key: str | bytes, default: Any = None) -> Any:
        """The value of key as bytes, or default if it is absent or expired."""
        if default is None:  # the usual call: no function made for its reply
            return self._do("get", [protocol.key_frame(key)], _value)
        return self._do("get", [protocol.key_frame(key)],
                        lambda r: bytes(r.frames[0]) if r.result else default)

    def get_with_version(self, key: str | bytes) -> Any:
        """(value, version) for use with cas(), or None if absent."""
        return self._do("get_with_version", [protocol.key_frame(key)],
                        lambda r: None if r.result is None else (bytes(r.frames[0]), r.result))

    def get_many(self, keys: Iterable[str | bytes]) -> Any:
        """{key: value} of the keys that are present, in one request; keys as given."""
        keys = list(keys)
        check_batch(len(keys))
        return self._do("get_many", pack_keys(keys),
                        lambda r: found_values(keys, r))

    def exists(self, *keys: str | bytes) -> Any:
        """How many of keys are present, in one request (a key given twice counts twice, as
        Redis's EXISTS)."""
        check_batch(len(keys))
        return self._do("exists", pack_keys(keys), _result)

    def scan(self, cursor: int = 0, match: str | bytes = "*",
             count: int | None = None) -> Any:
        """(next cursor, keys) of one step of a scan, as Redis's SCAN: start at cursor 0 and
        go on with the cursor each step returns until it is 0. match is a Redis glob; count
        how many keys to look at (None: SCAN_COUNT), which a step may pass. A key present
        from the first step to the last is returned at least once; one written or deleted
        meanwhile may or may not be, and a key may come twice."""
        frames, fields = scan_fields(cursor, match, count)
        return self._do("scan", frames, scan_reply, **fields)

    def get_array(self, key: str | bytes, default: Any = None) -> Any:
        """The array stored at key by set_array (over the received message, the caller's to
        change), or default if absent."""
        return self._do("get_array", [protocol.key_frame(key)],
                        lambda r: default if r.result is None else
                        protocol.array_from(r.result, _writable(r.frames[0])))

    def strlen(self, key: str | bytes) -> Any:
        """Length in bytes of key's value, 0 if absent."""
        return self._do("strlen", [protocol.key_frame(key)], _result)

    def type(self, key: str | bytes) -> Any:
        """"string", "shmkv-array", or None if absent."""
        return self._do("type", [protocol.key_frame(key)], _result)

    def ttl(self, key: str | bytes) -> Any:
        """Seconds until key expires; None if it has no expiry or does not exist."""
        return self._do("ttl", [protocol.key_frame(key)], _result)

    # --- writes ---------------------------------------------------------------------------
    def set(self, key: str | bytes, value: Any, ttl_s: float | None = None, *,
            nx: bool = False, xx: bool = False, keepttl: bool = False, get: bool = False) -> Any:
        """Store value under key, replacing any previous value and TTL; with Redis's options,
        which return what they return for Cache.set (see its docstring)."""
        frames = [protocol.key_frame(key), protocol.value_frame(value)]
        if not (nx or xx or keepttl or get):
            return self._do("set", frames, _nothing, ttl_s=ttl_s)
        return self._do("set_options", frames, _value if get is True else _result,
                        ttl_s=ttl_s, nx=nx, xx=xx, keepttl=keepttl, get=get)

    def getdel(self, key: str | bytes) -> Any:
        """Delete key and return the value it had; None if absent."""
        return self._do("getdel", [protocol.key_frame(key)], _value)

    def getex(self, key: str | bytes, ttl_s: float | None = None, *,
              persist: bool = False) -> Any:
        """The value of key (None if absent), giving it a TTL of ttl_s, or none (persist)."""
        return self._do("getex", [protocol.key_frame(key)], _value, ttl_s=ttl_s,
                        persist=persist)

    def append(self, key: str | bytes, value: Any) -> Any:
        """Append value to key's value (absent: empty); returns the new length."""
        frames = [protocol.key_frame(key), protocol.value_frame(value)]
        return self._do("append", frames, _result)

    def rename(self, old: str | bytes, new: str | bytes, *, nx: bool = False) -> Any:
        """Move old's value and TTL to new (Cache.rename). KeyError if old is absent."""
        frames = [protocol.key_frame(old), protocol.key_frame(new)]
        return self._do("rename", frames, _result, nx=nx)

    def set_many(self, items: Mapping[Any, Any], ttl_s: float | None = None) -> Any:
        """Store every key -> value of items in one request. Not atomic: if one pair
        fails, the pairs before it are stored."""
        check_batch(len(items))
        return self._do("set_many", set_many_frames(items), _nothing, ttl_s=ttl_s)

    def set_array(self, key: str | bytes, arr: np.ndarray, ttl_s: float | None = None) -> Any:
        """Store a numpy array (dtype and shape travel with it)."""
        fields, data = protocol.array_fields(arr)
        return self._do("set_array", [protocol.key_frame(key), data], _nothing, ttl_s=ttl_s,
                        **fields)

    def cas(self, key: str | bytes, value: Any, version: int,
            ttl_s: float | None = None) -> Any:
        """Store value only if key still has `version` (from get_with_version). True if it did."""
        frames = [protocol.key_frame(key), protocol.value_frame(value)]
        return self._do("cas", frames, _result, version=version, ttl_s=ttl_s)

    def incr(self, key: str | bytes, delta: int = 1) -> Any:
        """Add delta to the integer at key (absent counts as 0) and return the result. Not
        sent again after a timeout (see remote.py's docstring)."""
        return self._do("incr", [protocol.key_frame(key)], _result, delta=delta)

    def delete(self, key: str | bytes) -> Any:
        """Remove key; True if it was present (and not expired)."""
        return self._do("delete", [protocol.key_frame(key)], _result)

    def delete_many(self, keys: Iterable[str | bytes]) -> Any:
        """Remove keys in one request; how many were present (a key given twice counts once).
        Not atomic, as Redis's DEL of many keys, and not sent again after a timeout."""
        keys = list(keys)
        check_batch(len(keys))
        return self._do("delete_many", pack_keys(keys), _result)

    # --- expiry ---------------------------------------------------------------------------
    def expire(self, key: str | bytes, ttl_s: float) -> Any:
        """Give key a TTL of ttl_s seconds from now; False if the key does not exist."""
        return self._do("expire", [protocol.key_frame(key)], _result, ttl_s=ttl_s)

    def persist(self, key: str | bytes) -> Any:
        """Remove key's TTL; False if the key does not exist."""
        return self._do("persist", [protocol.key_frame(key)], _result)

    # --- pub/sub --------------------------------------------------------------------------
    def publish(self, channel: str | bytes, message: Any) -> Any:
        """Send message to the subscribers of channel (clients/subscribe.py), as
        Cache.publish does: fire and forget. The node puts it through the region, so it is
        ordered with the keyspace events of local writers. Channels are node-wide: a
        collection handle publishes on the same channels."""
        return self._do("publish", [protocol.key_frame(channel),
                                    protocol.value_frame(message)], _nothing)
