"""The snapshot file format: the one place that knows its bytes. snapshot.py writes snapshots
from a live region and loads them back; this module packs the framing and validates a whole
file before anything is taken from it.

A snapshot is a header, chunks, and a trailer, all little-endian, with nothing after the
trailer. Every part carries its own xxh3_64 checksum, so damage is located (the error names the
byte offset of the part that fails), and the trailer counts what came before it, so a file cut
anywhere is refused:

    +--------+-------------------+----------------+-----+----------------+---------+
    | header | chunk: collections | chunk: records | ... | chunk: records | trailer |
    +--------+-------------------+----------------+-----+----------------+---------+

Header (HEADER_BYTES = 128)
---------------------------
    off   size  field            notes
    0     8     magic            MAGIC = b"SHMKVSNP"
    8     4     format_version   FORMAT_VERSION; bumped on any incompatible change
    12    4     header_bytes     HEADER_BYTES
    16    8     created_at_ns    unix ns (the source region's clock) when the snapshot began
    24    8     region_id        the source region's region_id (layout.H_REGION_ID)
    32    8     arena_bytes      the source region's arena
    40    8     live_bytes       arena bytes the records take as entries (block sizes, headers
                                 and alignment included): what a target's arena must hold
    48    8     index_slots      the source region's index slots (a region sized from the
                                 snapshot gets as many)
    56    4     n_stripes        the source region's
    60    4     max_collections  the source region's
    64    4     max_key_bytes    the longest key in the file
    68    4     chunk_bytes      the payload size the writer closed chunks at
    72    8     record_count     records in the file (the trailer says it again)
    80    40    reserved         zero
    120   8     checksum         xxh3_64 of bytes 0..120

Chunk (CHUNK_HEADER_BYTES = 32, then payload_bytes of payload)
--------------------------------------------------------------
    off   size  field            notes
    0     4     tag              CHUNK_TAG = b"SNPC"
    4     1     kind             CHUNK_COLLECTIONS (exactly one, the first chunk) or
                                 CHUNK_RECORDS
    5     3     reserved         zero
    8     4     records          collections or records in the payload
    12    4     reserved         zero
    16    8     payload_bytes    a records chunk is closed once it passes chunk_bytes (~1 MiB),
                                 so one large value makes one large chunk
    24    8     checksum         xxh3_64 of the payload, seeded with xxh3_64 of bytes 0..24:
                                 it covers the chunk's own header too

Collections payload: per named collection of the source region, in index order: u16 index (1..,
as in the source; index 0 is the default collection and is never listed), u8 name_len, the
UTF-8 name. Records refer to collections by that index.

Record (RECORD_HEADER_BYTES = 20, then the key, then the value; no padding)
---------------------------------------------------------------------------
    off   size  field            notes
    0     8     expires_at_ns    ABSOLUTE unix ns, 0 = never (as Redis's RDB): a restore
                                 later never extends a TTL and skips what expired meanwhile
    8     4     value_len
    12    2     key_len          at most layout.MAX_KEY_BYTES
    14    2     collection       0 (default) or an index of the collections chunk
    16    1     kind             RECORD_BYTES (0) or RECORD_ARRAY (1: the value then holds
                                 the array header of arrays.py, as in the region: the padding
                                 in it follows from key_len alone, which does not change)
    17    3     reserved         zero

Trailer (TRAILER_BYTES = 40, the last bytes of the file)
--------------------------------------------------------
    off   size  field            notes
    0     4     tag              TRAILER_TAG = b"SNPT"
    4     4     chunks           chunks in the file, the collections chunk included
    8     8     record_count
    16    8     payload_bytes    key + value bytes of every record
    24    8     chunks_digest    xxh3_64 of the chunks' checksums, in file order (u64 each): a
                                 chunk dropped, repeated or moved changes it
    32    8     checksum         xxh3_64 of bytes 0..32

A key may appear in two records (a key rewritten while the snapshot was taken, read before and
after it moved): both are values it had, and a loader applies records in order.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import arrays
from . import layout as L
from .errors import CorruptSnapshot
from .hashing import xxh3_64

MAGIC = b"SHMKVSNP"
FORMAT_VERSION = 1
HEADER_BYTES = 128
CHUNK_HEADER_BYTES = 32
RECORD_HEADER_BYTES = 20
TRAILER_BYTES = 40
CHUNK_BYTES = 1 << 20
CHUNK_TAG = b"SNPC"
TRAILER_TAG = b"SNPT"
CHUNK_COLLECTIONS = 1
CHUNK_RECORDS = 2
# A record's kind, the file's own numbers: a region layout's kind bits may move, these do not
RECORD_BYTES, RECORD_ARRAY = 0, 1

HEADER = struct.Struct("<8sIIQQQQQIIIIQ")  # up to reserved; checksum at H_CHECKSUM
H_CHECKSUM = 120
CHUNK = struct.Struct("<4sB3xI4xQ")  # tag, kind, records, payload_bytes; checksum at 24
RECORD = struct.Struct("<QIHHB3x")  # expires_at_ns, value_len, key_len, collection, kind
TRAILER = struct.Struct("<4sIQQQ")  # tag, chunks, record_count, payload_bytes, chunks_digest
_U64 = struct.Struct("<Q")
_COLL_ENTRY = struct.Struct("<HB")


def entry_bytes(key_len: int, value_len: int) -> int:
    """Arena bytes an entry of this key and value takes (what put_locked allocates)."""
    return max(L.MIN_BLOCK_BYTES,
               (L.ENTRY_HEADER_BYTES + key_len + value_len + L.ALIGN - 1) & ~(L.ALIGN - 1))


# --- writing ------------------------------------------------------------------------------
@dataclass
class Header:
    created_at_ns: int
    region_id: int
    arena_bytes: int
    index_slots: int
    n_stripes: int
    max_collections: int
    live_bytes: int = 0
    max_key_bytes: int = 0
    chunk_bytes: int = CHUNK_BYTES
    record_count: int = 0

    def pack(self) -> bytes:
        head = HEADER.pack(MAGIC, FORMAT_VERSION, HEADER_BYTES, self.created_at_ns,
                           self.region_id, self.arena_bytes, self.live_bytes, self.index_slots,
                           self.n_stripes, self.max_collections, self.max_key_bytes,
                           self.chunk_bytes, self.record_count)
        head += bytes(H_CHECKSUM - len(head))
        return head + _U64.pack(xxh3_64(head))


def pack_chunk(kind: int, records: int, payload: bytes) -> tuple[bytes, int]:
    """(chunk header, its checksum) for a payload."""
    head = CHUNK.pack(CHUNK_TAG, kind, records, len(payload))
    checksum = xxh3_64(payload, xxh3_64(head))
    return head + _U64.pack(checksum), checksum


def pack_collections(named: list[tuple[int, bytes]]) -> bytes:
    return b"".join(_COLL_ENTRY.pack(idx, len(name)) + name for idx, name in named)


def pack_trailer(chunks: int, record_count: int, payload_bytes: int,
                 chunk_checksums: list[int]) -> bytes:
    digest = xxh3_64(b"".join(_U64.pack(c) for c in chunk_checksums))
    body = TRAILER.pack(TRAILER_TAG, chunks, record_count, payload_bytes, digest)
    return body + _U64.pack(xxh3_64(body))


# --- reading ------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """What a validated file holds: its header, collections and where its records lie."""

    header: Header
    file_bytes: int
    collections: dict[int, str]  # index in the source region -> name (named ones only)
    record_chunks: list[tuple[int, int]] = field(default_factory=list)  # (payload start, end)
    payload_bytes: int = 0


def _corrupt(path: str, offset: int, what: str) -> CorruptSnapshot:
    return CorruptSnapshot(f"snapshot {path!r} is damaged at byte offset {offset}: {what}; "
                           "nothing was restored", offset)


def read_header(buf: bytes | memoryview, path: str) -> Header:
    """The header, checked (magic, version, checksum); CorruptSnapshot if it is not one."""
    size = len(buf)
    if size == 0:
        raise _corrupt(path, 0, "the file is empty")
    if size < 8 or bytes(buf[:8]) != MAGIC:
        raise _corrupt(path, 0, f"no snapshot magic (found {bytes(buf[:8])!r}): this is not "
                       "a shmkv snapshot")
    if size < HEADER_BYTES:
        raise _corrupt(path, size, f"the file ends inside the header ({size} of "
                       f"{HEADER_BYTES} bytes): it was truncated")
    fields = HEADER.unpack_from(buf, 0)
    if fields[1] != FORMAT_VERSION:
        raise _corrupt(path, 8, f"format version {fields[1]}, this shmkv reads version "
                       f"{FORMAT_VERSION}")
    if xxh3_64(buf[:H_CHECKSUM]) != _U64.unpack_from(buf, H_CHECKSUM)[0]:
        raise _corrupt(path, 0, f"the checksum of the header (bytes 0..{HEADER_BYTES}) does "
                       "not match its bytes")
    if fields[2] != HEADER_BYTES:
        raise _corrupt(path, 12, f"header_bytes is {fields[2]}, not {HEADER_BYTES}")
    (_, _, _, created, region_id, arena_bytes, live_bytes, index_slots, n_stripes,
     max_collections, max_key_bytes, chunk_bytes, record_count) = fields
    return Header(created, region_id, arena_bytes, index_slots, n_stripes, max_collections,
                  live_bytes, max_key_bytes, chunk_bytes, record_count)


def validate(buf: bytes | memoryview, path: str, max_key_bytes: int = L.MAX_KEY_BYTES) \
        -> Snapshot:
    """Check a whole file: header, every chunk's framing and checksum, every record's framing,
    collection and kind (array headers decoded), the trailer's counts and checksums. Returns
    what a loader needs; raises CorruptSnapshot naming the offset of the first damage."""
    header = read_header(buf, path)
    size = len(buf)
    snap = Snapshot(header, size, {})
    pos, chunks, records, live_bytes, longest_key = HEADER_BYTES, 0, 0, 0, 0
    checksums: list[int] = []
    while True:
        if size - pos < 4:
            raise _corrupt(path, pos, "the file ends where a chunk or the trailer should "
                           "start: it was truncated")
        tag = bytes(buf[pos:pos + 4])
        if tag == TRAILER_TAG:
            break
        if tag != CHUNK_TAG:
            raise _corrupt(path, pos, f"expected a chunk or the trailer, found {tag!r}")
        if size - pos < CHUNK_HEADER_BYTES:
            raise _corrupt(path, pos, "the file ends inside a chunk header: it was truncated")
        _, kind, n, payload_bytes = CHUNK.unpack_from(buf, pos)
        start = pos + CHUNK_HEADER_BYTES
        end = start + payload_bytes
        if end > size - TRAILER_BYTES:
            raise _corrupt(path, pos, f"the chunk claims {payload_bytes} payload bytes, the "
                           f"file has {max(0, size - start)} after its header: it was "
                           "truncated (or the chunk header is damaged)")
        checksum = _U64.unpack_from(buf, pos + 24)[0]
        if xxh3_64(buf[start:end], xxh3_64(buf[pos:pos + 24])) != checksum:
            raise _corrupt(path, pos, f"the checksum of the chunk at bytes {pos}..{end} does "
                           "not match its bytes")
        if (kind == CHUNK_COLLECTIONS) != (chunks == 0) or kind not in (CHUNK_COLLECTIONS,
                                                                        CHUNK_RECORDS):
            raise _corrupt(path, pos, f"chunk {chunks} is of kind {kind}: the collections "
                           "chunk comes first and only there")
        if kind == CHUNK_COLLECTIONS:
            snap.collections = _parse_collections(buf, start, end, n, path)
        else:
            got, nbytes, keys = _check_records(buf, start, end, snap.collections, max_key_bytes,
                                               path)
            if got != n:
                raise _corrupt(path, pos, f"the chunk says {n} records, its payload holds {got}")
            records += n
            live_bytes += nbytes
            longest_key = max(longest_key, keys)
            snap.record_chunks.append((start, end))
        checksums.append(checksum)
        chunks += 1
        pos = end
    if size - pos != TRAILER_BYTES:
        raise _corrupt(path, pos, f"the trailer is {size - pos} bytes, not {TRAILER_BYTES}: "
                       "the file was truncated or has bytes after its end")
    _, n_chunks, n_records, payload_bytes, digest = TRAILER.unpack_from(buf, pos)
    if xxh3_64(buf[pos:pos + 32]) != _U64.unpack_from(buf, pos + 32)[0]:
        raise _corrupt(path, pos, f"the checksum of the trailer (bytes {pos}..{size}) does "
                       "not match its bytes")
    if chunks == 0:
        raise _corrupt(path, HEADER_BYTES, "the file has no collections chunk")
    if n_chunks != chunks or n_records != records \
            or digest != xxh3_64(b"".join(_U64.pack(c) for c in checksums)):
        raise _corrupt(path, pos, f"the trailer counts {n_chunks} chunks and {n_records} "
                       f"records, the file holds {chunks} and {records} (or other chunks): "
                       "chunks were lost or moved")
    if header.record_count != records or header.live_bytes != live_bytes \
            or header.max_key_bytes != longest_key:
        raise _corrupt(path, 0, "the header's counts do not match the records")
    snap.payload_bytes = payload_bytes
    return snap


def _parse_collections(buf: bytes | memoryview, start: int, end: int, n: int,
                       path: str) -> dict[int, str]:
    named: dict[int, str] = {}
    pos = start
    for _ in range(n):
        if end - pos < _COLL_ENTRY.size:
            raise _corrupt(path, pos, "the collections chunk ends inside an entry")
        idx, name_len = _COLL_ENTRY.unpack_from(buf, pos)
        raw = bytes(buf[pos + 3:pos + 3 + name_len])
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        if not idx or idx in named or len(raw) != name_len or not name \
                or name_len > L.MAX_COLLECTION_NAME_BYTES or "\0" in name \
                or name in named.values():
            raise _corrupt(path, pos, f"collection entry {idx} ({raw!r}) is not a valid, "
                           "unique collection")
        named[idx] = name
        pos += 3 + name_len
    if pos != end:
        raise _corrupt(path, pos, "the collections chunk has bytes after its last entry")
    return named


def _check_records(buf: bytes | memoryview, start: int, end: int, named: dict[int, str],
                   max_key_bytes: int, path: str) -> tuple[int, int, int]:
    """(records, their entry bytes, longest key) of a records payload, framing checked."""
    unpack, pos, n, nbytes, longest = RECORD.unpack_from, start, 0, 0, 0
    hb = RECORD_HEADER_BYTES
    while pos < end:
        if end - pos < hb:
            raise _corrupt(path, pos, "a record header runs past the end of its chunk")
        _, vlen, klen, coll, kind = unpack(buf, pos)
        body = pos + hb
        if body + klen + vlen > end:
            raise _corrupt(path, pos, "a record runs past the end of its chunk")
        if klen > max_key_bytes:
            raise _corrupt(path, pos, f"a key of {klen} bytes, longer than the target's "
                           f"{max_key_bytes}")
        if coll and coll not in named:
            raise _corrupt(path, pos, f"a record names collection {coll}, which the "
                           "collections chunk does not list")
        if kind == RECORD_ARRAY:
            try:
                arrays.decode(buf[body + klen:body + klen + vlen])
            except TypeError:
                raise _corrupt(path, pos, "an array record's array header is damaged") \
                    from None
        elif kind != RECORD_BYTES:
            raise _corrupt(path, pos, f"a record of kind {kind}, not bytes or array")
        nbytes += entry_bytes(klen, vlen)
        longest = max(longest, klen)
        n += 1
        pos = body + klen + vlen
    return n, nbytes, longest


def records(buf: bytes | memoryview, snap: Snapshot) \
        -> Iterator[tuple[int, int, int, memoryview, memoryview]]:
    """(collection, kind, expires_at_ns, key, value) of every record of a validated file, in
    file order; key and value are views into buf."""
    mv = memoryview(buf)
    unpack, hb = RECORD.unpack_from, RECORD_HEADER_BYTES
    for start, end in snap.record_chunks:
        pos = start
        while pos < end:
            exp, vlen, klen, coll, kind = unpack(mv, pos)
            body = pos + hb
            yield coll, kind, exp, mv[body:body + klen], mv[body + klen:body + klen + vlen]
            pos = body + klen + vlen
