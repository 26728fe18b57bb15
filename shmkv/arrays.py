"""numpy arrays as values: the array header that precedes their data in the region.

A value stored by `Cache.set_array` is an entry of kind KIND_ARRAY (layout.py) whose value is:

Array value (little-endian)
---------------------------
    off      size        field        notes
    0        4           magic        ARRAY_MAGIC
    4        1           version      ARRAY_VERSION; bumped on any incompatible change
    5        1           ndim         at most MAX_NDIM
    6        2           descr_len    bytes of descr
    8        4           data_offset  from the start of the value: header, descr, padding
    12       4           reserved     zero
    16       8 * ndim    shape        u64 each
    ..       descr_len   descr        ASCII repr() of numpy.lib.format.dtype_to_descr(dtype),
                                      as in a .npy header: plain, structured, datetime dtypes
    ..       ..          padding      zero bytes, so that the data starts 8-aligned
    data_offset          data         prod(shape) * itemsize bytes, C order

Why 8-aligned: numpy (and what users hand arrays to) are fastest, some only correct, on data
aligned to the item size, and no plain dtype needs more than 8. A block starts 8-aligned and the
value sits after ENTRY_HEADER_BYTES + key_len, so the padding follows from the key's length
alone and an overwrite in place keeps it right. The descr is parsed with ast.literal_eval, never
eval: a region is shared, and its bytes are data, not code.

Decoding a header (literal_eval, descr_to_dtype) costs several microseconds, more than the rest
of opening a view, and the same few headers come back again and again: decode() keeps what it
found per header bytes (DECODED, at most DECODED_MAX of them), and the compiled view (pin.c)
looks there first, and calls decode_header when it finds nothing.
"""

from __future__ import annotations

import ast
import functools
import struct

import numpy as np
from numpy.lib import format as npy_format

from . import layout as L

ARRAY_MAGIC = b"\x93SKA"
ARRAY_VERSION = 1
MAX_NDIM = 64
_HEAD = struct.Struct("<4sBBHI4x")
DECODED_MAX = 1024
MAX_CACHED_HEADER_BYTES = 4096  # pin.c looks up headers of at most this many bytes
MAX_HEADER_BYTES = 16 + 8 * MAX_NDIM + 0xFFFF + 7  # the largest valid data_offset
# header bytes (up to data_offset) -> (dtype, shape, data_offset, data bytes); the last, because
# the same header over a value of another length is damaged
DECODED: dict[bytes, tuple[np.dtype, tuple[int, ...], int, int]] = {}


def encode(arr: object, key_len: int) -> tuple[bytes, memoryview]:
    """(header, data) of an array value for a key of key_len bytes; data is C-order bytes,
    copied only when arr is not C-contiguous already."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"set_array() needs a numpy.ndarray, not {type(arr).__name__}")
    if arr.dtype.hasobject:
        raise TypeError("arrays holding Python objects (object dtype) cannot be shared; "
                        "use a plain or structured dtype")
    if arr.ndim > MAX_NDIM:
        raise ValueError(f"arrays may have at most {MAX_NDIM} dimensions")
    descr = _stored_descr(arr.dtype)
    fixed = _HEAD.size + 8 * arr.ndim + len(descr)
    pad = -(L.ENTRY_HEADER_BYTES + key_len + fixed) % 8
    header = b"".join([
        _HEAD.pack(ARRAY_MAGIC, ARRAY_VERSION, arr.ndim, len(descr), fixed + pad),
        struct.pack(f"<{arr.ndim}Q", *arr.shape),
        descr,
        bytes(pad),
    ])
    data = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    return header, memoryview(data)


@functools.lru_cache(maxsize=256)
def _stored_descr(dtype: np.dtype) -> bytes:
    """The descr stored for dtype, once decode() is known to read it back: a dtype nested
    deeper than Python's parser takes (about 100 levels of structs) would otherwise be stored
    and then called damaged by every get_array. Checked by reading it back, not by counting
    levels, because the limit is the parser's and differs between Python versions."""
    text = repr(npy_format.dtype_to_descr(dtype))
    if len(text) > 0xFFFF:
        raise ValueError("the array's dtype description is too long to store")
    try:
        npy_format.descr_to_dtype(ast.literal_eval(text))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError("this dtype cannot be stored: its description would not read back "
                         "(a structured dtype nested too deeply); flatten it") from None
    return text.encode("ascii")


def decode(value: bytes | memoryview | np.ndarray) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data_offset) from the start of an array value. Raises TypeError if the
    value is not one (the key was written by set(), or the bytes are damaged)."""
    with memoryview(value) as mv:
        head = bytes(mv[:_HEAD.size])
        if len(head) == _HEAD.size:
            head = bytes(mv[:min(max(_HEAD.unpack(head)[4], _HEAD.size), MAX_HEADER_BYTES)])
        value_len = mv.nbytes
    return decode_header(head, value_len)[:3]  # type: ignore[return-value]


def decode_header(head: bytes, value_len: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, data_offset, data bytes) of an array value of value_len bytes that
    starts with head: its bytes up to data_offset (fewer if the value is shorter, or not an
    array), through DECODED. Only bytes, never the value itself: an exception's traceback
    must not keep a view's bytes, and with them its pin, alive."""
    hit = DECODED.get(head)
    if hit is not None and hit[2] + hit[3] == value_len:
        return hit
    found = _decode(head, value_len)
    if len(head) <= MAX_CACHED_HEADER_BYTES:
        if len(DECODED) >= DECODED_MAX:
            DECODED.clear()
        DECODED[head] = found
    return found


def _decode(head: bytes, value_len: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
    if len(head) < _HEAD.size:
        raise TypeError("the value is not an array stored by set_array()")
    magic, version, ndim, descr_len, data_offset = _HEAD.unpack(head[:_HEAD.size])
    if magic != ARRAY_MAGIC or version != ARRAY_VERSION or ndim > MAX_NDIM:
        raise TypeError("the value is not an array stored by set_array() (or by another "
                        "version of shmkv)")
    shape_end = _HEAD.size + 8 * ndim
    if data_offset != len(head) or data_offset < shape_end + descr_len:
        raise TypeError("the array header of this value is damaged")
    try:
        shape = struct.unpack(f"<{ndim}Q", head[_HEAD.size:shape_end])
        descr = ast.literal_eval(head[shape_end:shape_end + descr_len].decode("ascii"))
        dtype = npy_format.descr_to_dtype(descr)
    except (struct.error, ValueError, TypeError, SyntaxError, UnicodeDecodeError):
        raise TypeError("the array header of this value is damaged") from None
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    if dtype.hasobject or data_offset + nbytes != value_len:
        raise TypeError("the array header of this value is damaged")
    return dtype, shape, data_offset, nbytes
