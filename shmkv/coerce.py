"""What a key, a value and a TTL may be, and their bytes: one set of rules (and messages) for the
engine and for the wire, so that a RemoteCache refuses exactly what a Cache refuses, before
anything is sent."""

from __future__ import annotations

from . import layout as L
from .errors import KeyTooLarge


def utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (it holds a lone surrogate); pass bytes "
                         "or well-formed text") from None


def key_bytes(key: object) -> bytes:
    """A key as bytes: str (UTF-8) or bytes-like, at most MAX_KEY_BYTES."""
    if type(key) is str:
        raw = utf8(key, "key")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
    else:
        raise TypeError(f"key must be str or bytes, not {type(key).__name__}")
    if len(raw) > L.MAX_KEY_BYTES:
        raise KeyTooLarge(f"key is {len(raw)} bytes; keys may be at most {L.MAX_KEY_BYTES} bytes")
    return raw


def value_buffer(value: object) -> bytes | memoryview:
    """A value as bytes or as one flat run of bytes (a memoryview of format "B"): str (UTF-8)
    or anything with the buffer protocol, copied only when it is not contiguous."""
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return utf8(value, "value")
    if isinstance(value, (int, float, bool)) or value is None:
        raise TypeError(f"value must be bytes-like or str, not {type(value).__name__}")
    try:
        view = memoryview(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"value must be bytes-like or str, not {type(value).__name__}") from None
    if "O" in view.format:  # pointers to this process's objects mean nothing to another one
        raise TypeError("values holding Python objects (object dtype) cannot be shared; "
                        "store bytes, or an array of a plain dtype")
    return view.cast("B") if view.c_contiguous else memoryview(view.tobytes())


def expires_at_ns(ttl_s: object, now_ns: int) -> int:
    """The expiry time of a TTL of ttl_s seconds from now_ns; 0 (no expiry) for None."""
    if ttl_s is None:
        return 0
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)):
        raise TypeError(f"ttl_s must be a number of seconds or None, not {type(ttl_s).__name__}")
    if not ttl_s > 0 or ttl_s > 10 * 365 * 86400:
        raise ValueError("ttl_s must be > 0 and at most ten years (None means no expiry)")
    return now_ns + max(1, int(ttl_s * 1e9))
