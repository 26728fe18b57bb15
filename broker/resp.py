"""The Redis protocol (RESP2, and RESP3 after HELLO 3) on the wire: `RequestParser` turns the
bytes a client sends into commands, `Encoder` turns replies into bytes. No sockets here: the
node's door (resp_door.py) feeds what it receives and writes what this returns, and client or
test code can use the same two classes.

What is supported
-----------------
    direction  form                                  notes
    request    array of bulk strings                 *<n>\\r\\n, then n times
                                                     $<len>\\r\\n<bytes>\\r\\n
                                                     (what every client library sends); *0 and
                                                     *-1 are skipped, as Redis does
    request    inline command                        a line of words split on blanks, with
                                                     "double" and 'single' quotes (redis-cli
                                                     and telnet); a line that does not start
                                                     with "*"
    reply      simple string  +OK                    Simple("OK")
    reply      error          -ERR ...               Error("ERR ...")
    reply      integer        :1                     int
    reply      bulk string    $3 abc / nil           bytes, str (UTF-8); None is nil
    reply      array          *2 ... / nil array     list or tuple; NIL_ARRAY is *-1
    reply      RESP3 null     _                      None (and NIL_ARRAY) under RESP3
    reply      RESP3 map      %<n>                   dict; a flat array of key, value under RESP2
    reply      RESP3 double   ,1.5                   float; a bulk string under RESP2
    reply      RESP3 boolean  #t / #f                bool; an integer 1 / 0 under RESP2
    reply      RESP3 push     ><n>                   Push(list): pub/sub messages; an array
                                                     under RESP2

Limits (each breaks the request, and the door closes that connection only):
    MAX_BULK_BYTES      512 MiB: one argument (Redis's proto-max-bulk-len)
    MAX_ARGS            1 Mi arguments in one request (Redis refuses a larger multibulk count
                        from a client that has not authenticated; we refuse it from anyone)
    MAX_INLINE_BYTES    64 KiB: an inline command, or the header line of an array or bulk
                        (Redis's PROTO_INLINE_MAX_SIZE)

Two parsers, one result. hiredis's Reader (when installed) reads request arrays 13x faster
than the Python code here (136 ns against 1.8 us per GET request in a pipeline of 16, on the
project's VM), but it enforces none of the limits above, cannot read inline commands, and
words its errors its own way. So `parse(chunk)` gives hiredis only a chunk that starts at a
request boundary, and keeps its requests only if they are exactly the whole chunk: every one
an array of bulk strings whose canonical encoding adds up to the chunk's length (a chunk
holds at most READ_BYTES of what the door reads, far below the limits). Anything else (a
request cut by the end of the chunk, an inline command, a malformed or non-canonical
encoding) is parsed again from the chunk's first byte by the Python parser, which keeps the
partial state and answers errors as Redis does, until the stream is back at a boundary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from shmkv.errors import ProtocolError

try:
    import hiredis
except ImportError:  # optional: the Python parser reads everything alone
    hiredis = None

MAX_BULK_BYTES = 512 << 20
MAX_ARGS = 1 << 20
MAX_INLINE_BYTES = 64 << 10

_STAR, _DOLLAR = 42, 36  # b"*", b"$"


class RequestParser:
    """Incremental: feed() what arrives, then take the complete requests with requests().
    A request is split anywhere; partial state is kept, so a large argument arriving in many
    small reads is not parsed again for each of them."""

    def __init__(self, max_bulk_bytes: int = MAX_BULK_BYTES, max_args: int = MAX_ARGS) -> None:
        self.max_bulk_bytes = max_bulk_bytes
        self.max_args = max_args
        self._buf = bytearray()
        self._args: list[bytes] | None = None  # the arguments of a request begun
        self._left = 0  # arguments that request still needs
        self.error: ProtocolError | None = None  # what broke the stream, once it broke
        self._hiredis: object | None = None  # a hiredis Reader known to hold nothing

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def parse(self, chunk: bytes) -> list[list[bytes]]:
        """feed(chunk), then requests(): through hiredis when it can be trusted with the
        chunk (see the module's doc), else through the Python parser."""
        if hiredis is not None and self._args is None and not self._buf and chunk[:1] == b"*" \
                and self.error is None and not _LARGE_COUNT.search(chunk):
            reader = self._hiredis or hiredis.Reader()
            found = _whole_requests(reader, chunk)
            if found is not None:
                self._hiredis = reader  # it read whole requests only: nothing is left in it
                return found
            self._hiredis = None  # it may hold part of a request: never used again
        self._buf += chunk
        return self.requests()

    @property
    def at_boundary(self) -> bool:
        """Nothing of a request is held: the next bytes begin one (or are garbage)."""
        return self._args is None and not self._buf and self.error is None

    @property
    def pending_bytes(self) -> int:
        """Bytes received and not yet part of a returned request."""
        return len(self._buf)

    def requests(self) -> list[list[bytes]]:
        """The complete requests in what was fed, in order, each a list of arguments (the
        command name first). Malformed input sets `error` (a ProtocolError with Redis's
        wording): the requests before it are still returned, nothing after it ever is."""
        out: list[list[bytes]] = []
        if self.error is not None:
            return out
        buf = self._buf
        end = len(buf)
        pos = 0
        try:
            while True:
                args = self._args
                if args is None:  # at a request boundary
                    if pos >= end:
                        break
                    if buf[pos] != _STAR:
                        line_end = _line_end(buf, pos, "inline")
                        if line_end < 0:
                            break
                        words = split_inline(bytes(buf[pos:line_end]))
                        pos = line_end + 2 if buf[line_end:line_end + 2] == b"\r\n" \
                            else line_end + 1
                        if words:
                            out.append(words)
                        continue
                    line_end = _line_end(buf, pos, "multibulk")
                    if line_end < 0:
                        break
                    count = _number(buf, pos + 1, line_end, "invalid multibulk length")
                    if count > self.max_args:
                        raise ProtocolError("Protocol error: invalid multibulk length")
                    pos = line_end + 2
                    if count <= 0:
                        continue
                    args = self._args = []
                    self._left = count
                while self._left:
                    if pos >= end:
                        return out
                    if buf[pos] != _DOLLAR:
                        raise ProtocolError(f"Protocol error: expected '$', got "
                                            f"'{chr(buf[pos])}'")
                    line_end = _line_end(buf, pos, "bulk")
                    if line_end < 0:
                        return out
                    length = _number(buf, pos + 1, line_end, "invalid bulk length")
                    if length < 0 or length > self.max_bulk_bytes:
                        raise ProtocolError("Protocol error: invalid bulk length")
                    start = line_end + 2
                    if start + length + 2 > end:
                        return out  # pos stays at the "$": this header is read again
                    args.append(bytes(buf[start:start + length]))
                    pos = start + length + 2
                    self._left -= 1
                out.append(args)
                self._args = None
            return out
        except ProtocolError as exc:
            self.error = exc
            buf.clear()
            pos = 0
            return out
        finally:
            if pos:
                del buf[:pos]  # a bytearray drops its head without moving the rest


# An array header of 100000 elements or more: hiredis allocates the whole array when it reads
# the header and frees it element by element, so "*2000000000\r\n" (13 bytes) would cost
# seconds and gigabytes; and such a request cannot fit in one chunk anyway. The same bytes
# inside a value send that chunk to the Python parser, which is only slower.
_LARGE_COUNT = re.compile(rb"\*[1-9][0-9]{5}")


# bytes around an argument of n bytes ($<n>\r\n ... \r\n), for the common small n
_FRAMED = 1024
_BULK_FRAMING = tuple(len(str(n)) + 5 for n in range(_FRAMED))


def _whole_requests(reader: object, chunk: bytes) -> list[list[bytes]] | None:
    """The requests of chunk as hiredis's reader reads them, if they are canonical arrays of
    bulk strings that make up exactly the whole chunk; else None."""
    reader.feed(chunk)  # type: ignore[attr-defined]
    found: list[list[bytes]] = []
    size = 0
    try:
        while (request := reader.gets()) is not False:  # type: ignore[attr-defined]
            if type(request) is not list or not request:
                return None
            encoded = 3 + len(str(len(request)))  # *<n>\r\n
            for arg in request:
                if type(arg) is not bytes:
                    return None
                n = len(arg)  # + $<len>\r\n and \r\n
                encoded += n + (_BULK_FRAMING[n] if n < _FRAMED else len(str(n)) + 5)
            found.append(request)
            size += encoded
    except (hiredis.ProtocolError, MemoryError):  # a MemoryError: "*4294967295" asks 32 GiB
        return None
    return found if size == len(chunk) else None


def _line_end(buf: bytearray, pos: int, what: str) -> int:
    """Index of the line's "\\r\\n" (or "\\n", for inline), -1 if not here yet."""
    at = buf.find(b"\n" if what == "inline" else b"\r\n", pos, pos + MAX_INLINE_BYTES + 2)
    if at >= 0:
        return at - 1 if what == "inline" and at > pos and buf[at - 1] == 13 else at
    if len(buf) - pos > MAX_INLINE_BYTES:
        raise ProtocolError(f"Protocol error: too big {what} request" if what != "bulk"
                            else "Protocol error: too big bulk count string")
    return -1


def _number(buf: bytearray, start: int, end: int, what: str) -> int:
    digits = bytes(buf[start:end])
    # int() also takes blanks, "_" and "+", which Redis's string2ll does not
    if not digits or not (digits.isdigit() or (digits[:1] == b"-" and digits[1:].isdigit())):
        raise ProtocolError(f"Protocol error: {what}")
    return int(digits)


def split_inline(line: bytes) -> list[bytes]:
    """Words of an inline command, as Redis's sdssplitargs splits them: blanks separate,
    "double quotes" take \\n \\r \\t \\b \\a \\\\ \\" and \\xHH escapes, 'single quotes' take
    \\'; a closing quote must be followed by a blank. Raises ProtocolError on unbalanced
    quotes."""
    if b'"' not in line and b"'" not in line:
        return line.split()
    words: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i:i + 1].isspace():
            i += 1
        if i >= n:
            return words
        word = bytearray()
        quote = 0
        while True:
            if i >= n:
                if quote:
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
                break
            c = line[i]
            if quote == 34 and c == 92 and i + 1 < n:  # \ in "..."
                nxt = line[i + 1]
                if nxt == 120 and i + 3 < n and _is_hex(line[i + 2:i + 4]):  # \xHH
                    word.append(int(line[i + 2:i + 4], 16))
                    i += 4
                    continue
                word.append(_ESCAPES.get(nxt, nxt))
                i += 2
                continue
            if quote == 39 and c == 92 and i + 1 < n and line[i + 1] == 39:  # \' in '...'
                word.append(39)
                i += 2
                continue
            if quote and c == quote:
                if i + 1 < n and not line[i + 1:i + 2].isspace():
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
                i += 1
                break
            if not quote and c in (34, 39) and not word:
                quote = c
                i += 1
                continue
            if not quote and line[i:i + 1].isspace():
                break
            word.append(c)
            i += 1
        words.append(bytes(word))


_ESCAPES = {110: 10, 114: 13, 116: 9, 98: 8, 97: 7}  # n r t b a


def _is_hex(two: bytes) -> bool:
    return len(two) == 2 and all(c in b"0123456789abcdefABCDEF" for c in two)


# --- replies ------------------------------------------------------------------------------
class Simple(str):
    """A simple string reply (+OK)."""


class Error(str):
    """An error reply; the text starts with its code (ERR, WRONGTYPE, NOAUTH, ...)."""


class Push(list):  # type: ignore[type-arg]
    """An out-of-band message (pub/sub): > under RESP3, an array under RESP2."""


class _NilArray:
    def __repr__(self) -> str:
        return "NIL_ARRAY"


NIL_ARRAY = _NilArray()  # *-1 (RESP2), _ (RESP3)
OK = Simple("OK")
_OK_BYTES = b"+OK\r\n"


class Encoder:
    """Replies as bytes for one protocol version (2 or 3); `resp3` may change on HELLO."""

    def __init__(self, protocol: int = 2) -> None:
        self.resp3 = protocol == 3

    def encode(self, value: object) -> bytes:
        out: list[bytes] = []
        self._add(value, out)
        return b"".join(out)

    def _add(self, value: object, out: list[bytes]) -> None:
        # Most frequent first: GET's bulk, SET's OK, INCR's integer.
        kind = type(value)
        if kind is bytes or kind is bytearray or kind is memoryview:
            out.append(b"$%d\r\n" % len(value))  # type: ignore[arg-type]
            out.append(value)  # type: ignore[arg-type]
            out.append(b"\r\n")
        elif value is OK:
            out.append(_OK_BYTES)
        elif kind is int:
            out.append(b":%d\r\n" % value)  # type: ignore[str-format]
        elif value is None:
            out.append(b"_\r\n" if self.resp3 else b"$-1\r\n")
        elif kind is Simple:
            out.append(b"+" + _line(value) + b"\r\n")  # type: ignore[arg-type]
        elif kind is Error:
            out.append(b"-" + _line(value) + b"\r\n")  # type: ignore[arg-type]
        elif kind is str:
            data = value.encode()  # type: ignore[attr-defined]
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        elif kind is bool:
            out.append((b"#t\r\n" if value else b"#f\r\n") if self.resp3
                       else (b":1\r\n" if value else b":0\r\n"))
        elif kind is float:
            text = _double(value)  # type: ignore[arg-type]
            out.append(b"," + text + b"\r\n" if self.resp3
                       else b"$%d\r\n%s\r\n" % (len(text), text))
        elif value is NIL_ARRAY:
            out.append(b"_\r\n" if self.resp3 else b"*-1\r\n")
        elif kind is dict:
            items = value.items()  # type: ignore[attr-defined]
            out.append((b"%%%d\r\n" if self.resp3 else b"*%d\r\n")
                       % (len(items) * (1 if self.resp3 else 2)))
            for k, v in items:
                self._add(k, out)
                self._add(v, out)
        elif kind is Push:
            count = len(value)  # type: ignore[arg-type]
            out.append((b">%d\r\n" if self.resp3 else b"*%d\r\n") % count)
            for item in value:  # type: ignore[attr-defined]
                self._add(item, out)
        elif isinstance(value, list | tuple):
            out.append(b"*%d\r\n" % len(value))
            for item in value:
                self._add(item, out)
        else:
            raise TypeError(f"no RESP form for {kind.__name__}")

    def encode_all(self, values: Iterable[object]) -> bytes:
        out: list[bytes] = []
        for value in values:
            self._add(value, out)
        return b"".join(out)


def _line(text: str) -> bytes:
    # a simple string or error is one line: a CR or LF in it would end the reply early
    return text.encode("utf-8", "replace").replace(b"\r", b" ").replace(b"\n", b" ")


def _double(value: float) -> bytes:
    if value != value:
        return b"nan"
    if value in (float("inf"), float("-inf")):
        return b"inf" if value > 0 else b"-inf"
    return repr(value).encode()


def encode_request(*args: bytes | str | int) -> bytes:
    """A request as clients send it (an array of bulk strings): for tests and client code."""
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
