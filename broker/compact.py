"""The compact header of the wire protocol (protocol.py): a struct, for the hot requests and
replies, in place of a JSON object.

protocol.py's docstring says where a header goes and when each form is used; this module owns
the compact form's layout (version 2 of the protocol; the first byte after the tag is the form,
so a JSON header, which starts with "{", cannot be taken for one). Little-endian throughout.

    compact request                                  compact reply
    offset size field                                offset size field
    0      1    REQUEST_FORM (0x01)                  0      1    REPLY_FORM (0x02)
    1      1    op: its index in OPS                 1      8    id (u64)
    2      1    flags: 1 ttl_s is a float,           9      1    result kind: 0 null,
                2 ttl_s is an int, 4 timeout_ms                  1 false, 2 true, 3 int,
    3      8    id (u64)                                         4 bools, 5 float
    11     4    timeout_ms (u32; with flag 4)        10     ..   int: i64; float: f64;
    15     8    ttl_s (f64; with flag 1 or 2)                    bools: one byte each
    23     ..   coll, UTF-8, to the end (empty:                  (0 or 1), to the end
                the default collection)

A compact request stands for the JSON header {"id", "op", and the fields its flags and coll
give}; absent flags are absent fields. An int ttl_s travels as an f64 only while that is exact
(|ttl_s| < 2**53); anything else a request carries (another field, a value of another type, an
id past u64) takes the JSON form, so that the node's engine still names a wrong argument as a
local call would. Only an ok reply is compact: error replies are JSON.
"""

from __future__ import annotations

import struct
from typing import Any

from shmkv.errors import ProtocolError

# The commands that have a compact request: the hot ones whose fields are only coll, timeout_ms
# and ttl_s. Append only: a command's code is its index.
OPS = ("get", "set", "delete", "contains", "get_many", "set_many", "get_with_version",
       "getdel", "ttl", "expire", "persist", "strlen", "type", "get_array")
REQUEST_FORM, REPLY_FORM = 1, 2

_REQUEST = struct.Struct("<BBBQId")  # form, op, flags, id, timeout_ms, ttl_s; then coll
_ID = struct.Struct("<Q")
_ID_AT = struct.calcsize("<BBB")  # the id's offset in a compact request
_REPLY = struct.Struct("<BQB")  # form, id, result kind; then the result
_REPLY_BYTES, _unpack_reply = _REPLY.size, _REPLY.unpack_from
_I64, _F64 = struct.Struct("<q"), struct.Struct("<d")
_TTL_FLOAT, _TTL_INT, _HAS_TIMEOUT = 1, 2, 4
_FIELDS = frozenset({"coll", "timeout_ms", "ttl_s"})
_OP_CODES = {op: code for code, op in enumerate(OPS)}
_U64_END, _U32_END, _I64_END = 1 << 64, 1 << 32, 1 << 63
_EXACT_FLOAT_INT = 1 << 53
_NULL, _FALSE, _TRUE, _INT, _BOOLS, _FLOAT = range(6)
_SINGLES = (None, False, True)  # the results of _NULL, _FALSE and _TRUE
_BOOL_TYPE = {bool}


# The plain get: a compact get with timeout_ms and nothing else (no ttl_s, the default
# collection), the request a node answers most. The node's loop knows it by these first bytes
# and its size, and answers it without decoding it (zmq_door.py): the reply's header is
# plain_get_reply(), the compact reply of true (the value follows) or false.
PLAIN_GET = bytes([REQUEST_FORM, _OP_CODES["get"], _HAS_TIMEOUT])
PLAIN_GET_BYTES = _REQUEST.size
# What its reply is made of (also the compiled door's: compiled_door.py): the id is the
# request's 8 bytes at PLAIN_GET_ID_AT.
FOUND, NOT_FOUND = bytes([_TRUE]), bytes([_FALSE])
# The plain get_many, the compiled door's too: the same header but its op, then a packed batch
# of keys; its reply's result kind is BOOLS, a found byte per key.
PLAIN_GET_MANY = bytes([REQUEST_FORM, _OP_CODES["get_many"], _HAS_TIMEOUT])
BOOLS = bytes([_BOOLS])
REPLY_FORM_BYTE = bytes([REPLY_FORM])
PLAIN_GET_ID_AT = _ID_AT


def plain_get_reply(head: bytes, at: int, found: bool, tag: bytes = b"") -> bytes:
    """The header of the reply to the plain get at head[at:] (its id, found or not), after
    tag (the protocol's, in one concatenation)."""
    start = at + _ID_AT
    return tag + REPLY_FORM_BYTE + head[start:start + _ID.size] + \
        (FOUND if found else NOT_FOUND)


def request_header(request_id: int, op: str, fields: dict[str, Any]) -> bytes | None:
    """The compact header of a request, or None if it needs the JSON form."""
    code = _OP_CODES.get(op)
    if code is None or not _FIELDS.issuperset(fields) or type(request_id) is not int \
            or not 0 <= request_id < _U64_END:
        return None
    flags, timeout_ms, ttl_s = 0, fields.get("timeout_ms"), fields.get("ttl_s")
    coll = fields.get("coll", "")
    if type(coll) is not str:
        return None
    if timeout_ms is not None:
        if type(timeout_ms) is not int or not 0 < timeout_ms < _U32_END:
            return None
        flags |= _HAS_TIMEOUT
    if ttl_s is None:
        ttl = 0.0
    elif type(ttl_s) is float and ttl_s == ttl_s:  # NaN: as JSON carries it
        flags, ttl = flags | _TTL_FLOAT, ttl_s
    elif type(ttl_s) is int and -_EXACT_FLOAT_INT < ttl_s < _EXACT_FLOAT_INT:
        flags, ttl = flags | _TTL_INT, float(ttl_s)
    else:
        return None
    try:
        coll_bytes = coll.encode()
    except UnicodeEncodeError:  # a lone surrogate: JSON escapes it, the engine refuses it
        return None
    return _REQUEST.pack(REQUEST_FORM, code, flags, request_id, timeout_ms or 0, ttl) \
        + coll_bytes


def request_template(op: str, fields: dict[str, Any]) -> tuple[bytes, bytes] | None:
    """(before, after): request_header(request_id, op, fields) is before + pack_id(request_id)
    + after for every request_id of a u64, so that a client makes the header of a request it
    sends often with one pack (~0.1 us against ~0.3); None if it needs the JSON form."""
    head = request_header(0, op, fields)
    if head is None:
        return None
    return head[:_ID_AT], head[_ID_AT + _ID.size:]


pack_id = _ID.pack


def request_fields(head: bytes, at: int) -> dict[str, Any]:
    """The JSON header that the compact request at head[at:] stands for."""
    if len(head) - at < _REQUEST.size:
        raise ProtocolError(f"a compact request header is at least {_REQUEST.size} bytes")
    _, code, flags, request_id, timeout_ms, ttl = _REQUEST.unpack_from(head, at)
    if code >= len(OPS):
        raise ProtocolError(f"unknown compact command code {code}; this node knows "
                            f"{len(OPS)} ({', '.join(OPS)})")
    header: dict[str, Any] = {"id": request_id, "op": OPS[code]}
    if len(head) > at + _REQUEST.size:
        try:
            header["coll"] = head[at + _REQUEST.size:].decode()
        except UnicodeDecodeError:
            raise ProtocolError("a compact request's collection name is not UTF-8") from None
    if flags & _HAS_TIMEOUT:
        header["timeout_ms"] = timeout_ms
    if flags & _TTL_FLOAT:
        header["ttl_s"] = ttl
    elif flags & _TTL_INT:
        header["ttl_s"] = int(ttl)
    return header


def reply_header(request_id: int | None, result: Any) -> bytes | None:
    """The compact header of an ok reply, or None if it needs the JSON form."""
    if type(request_id) is not int or not 0 <= request_id < _U64_END:
        return None
    kind = type(result)
    if result is None:
        return _REPLY.pack(REPLY_FORM, request_id, _NULL)
    if kind is bool:
        return _REPLY.pack(REPLY_FORM, request_id, _TRUE if result else _FALSE)
    if kind is int and -_I64_END <= result < _I64_END:
        return _REPLY.pack(REPLY_FORM, request_id, _INT) + _I64.pack(result)
    if kind is float:
        return _REPLY.pack(REPLY_FORM, request_id, _FLOAT) + _F64.pack(result)
    if kind is list and set(map(type, result)) <= _BOOL_TYPE:
        return _REPLY.pack(REPLY_FORM, request_id, _BOOLS) + bytes(result)
    return None


def reply_result(head: bytes, at: int, end: int | None = None) -> tuple[int, Any]:
    """(id, result) of the compact reply at head[at:end] (end None: the end of head; a
    batch's replies are read in place, end to end in its table)."""
    if end is None:
        end = len(head)
    rest = end - at - _REPLY_BYTES  # the result's bytes
    if rest < 0:
        raise ProtocolError(f"a compact reply header is at least {_REPLY_BYTES} bytes")
    _, request_id, kind = _unpack_reply(head, at)
    at += _REPLY_BYTES
    if kind <= _TRUE and not rest:
        return request_id, _SINGLES[kind]
    if kind == _INT and rest == _I64.size:
        return request_id, _I64.unpack_from(head, at)[0]
    if kind == _FLOAT and rest == _F64.size:
        return request_id, _F64.unpack_from(head, at)[0]
    if kind == _BOOLS:
        return request_id, list(map(bool, head[at:end]))
    raise ProtocolError(f"a compact reply of result kind {kind} cannot be {rest} bytes long")
