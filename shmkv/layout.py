"""The shared-memory format of a shmkv region: the one place that knows every offset.

A region is one fixed-size mapping (a POSIX shm object in /dev/shm or a regular file) laid out
as eight areas, each 64-byte aligned. Nothing in it is a pointer: every reference is an offset,
so the same bytes work at any address, in any process, and from a file after a restart.

    +--------+---------+-------+-------------+--------+--------+-------+--------+---------+
    | header | stripes | procs | collections | counts | access | index | events |  arena  |
    +--------+---------+-------+-------------+--------+--------+-------+--------+---------+

Version 7 shrinks the entry header from 46 to 36 bytes (the per-item overhead target: at most
48 B beyond key and value for 16 B keys and 100 B values): an entry no longer records its slot
(whoever needs its access byte finds the slot by hashing the key), its stored version is the
low 32 bits of its stripe's writes counter, and kind and segment live in spare bits of key_coll
and of the block word. Version 6 reserved (zero, and ignored by this release) what persistence,
replication and in-region locks will use, so that regions made from now on are not stranded by
them. A field marked "reserved:" names its future use; until then it is zero.

Region header (HEADER_BYTES = 4096; little-endian)
--------------------------------------------------
    off   size  field               lock    notes
    0     8     magic               -       MAGIC; written last at creation
    8     4     layout_version      -       LAYOUT_VERSION; bumped on any incompatible change
    12    4     header_bytes        -       HEADER_BYTES
    16    8     region_bytes        -       total mapped size
    24    8     hash_seed           -       random per region; all processes hash with it
    32    4     hash_id             -       HASH_XXH3_64; a process that disagrees refuses to attach
    36    4     n_stripes           -       power of two, <= 256
    40    4     slots_per_stripe    -       <= 2**24 (any size: probing wraps by modulo)
    44    4     max_collections     -
    48    4     max_procs           -
    52    4     max_key_bytes       -
    56    8     stripes_offset      -       each area's offset from the start of the region
    64    8     procs_offset        -
    72    8     collections_offset  -
    80    8     access_offset       -
    88    8     index_offset        -
    96    8     arena_offset        -
    104   8     arena_bytes         -
    112   8     created_at_ns       -       unix time
    120   4     state               -       STATE_READY once initialised
    124   4     next_collection     arena   round-robin cursor into the collection table
    128   8     counts_offset       -       offset of the counts area
    136   8     arena_used_bytes    arena   bytes in used blocks, headers and padding included
    144   8     reserved            -       (live entries are the stripes' counts, exact by
                                            construction: see the counts area)
    152   8     reserved            -       (sets are counted per stripe: see `writes`)
    160   8     deletes             arena   entries removed by delete/clear/drop
    168   8     evictions           arena   entries removed to make room
    176   8     expirations         arena   entries removed because their TTL passed
    184   4     arena_owner_pid     arena   holder of the arena lock (diagnostics, recovery)
    188   4     protected_pct       -       share of the arena the protected segment may hold
    192   8     arena_owner_token   arena
    200   4     reserved            -       (was the SysV key of the semaphores)
    256   16    seg_ends            arena   head, tail u32 refs of the probation list, then of
                                            the protected list (0 = empty)
    272   16    seg_items           arena   entries on each list (probation, protected)
    288   16    seg_bytes           arena   block bytes on each list
    304   8     hits                arena   flushed from each handle's own counters
    312   8     misses              arena
    320   8     expire_cursor       arena   next slot the active expiry pass samples
    328   4     retired_head        arena   first block ref of the retired list (0 = empty)
    332   4     retired_count       arena   blocks on it
    336   8     retired_bytes       arena   their block bytes (held for open views only)
    344   4     events_enabled      -       1: writers record keyspace events (events.py)
    348   4     lock_kind           -       LOCKS_ROBUST: robust process-shared pthread
                                            mutexes in the region (locks.py). A process
                                            refuses a kind it does not implement
    352   8     writable_until_ns   -       reserved: replication's write fence (unix ns; 0 =
                                            no fence); writers refuse to write past it
    360   8     region_id           -       random at creation; names the region's contents
                                            in snapshots and replication
    368   8     file_dev            -       st_dev and st_ino of the object the region was
    376   8     file_ino            -       created in: a copy (cp) of a file region sees other
                                            values and knows it is not the original
    384   8     clean_marker        -       written by the last process to close the region,
                                            after flushing it to its file: a checksum of the
                                            region's identity (recovery.py); zeroed, durably,
                                            by the first opener before anything changes
    392   4     lock_generation     -       bumped each time a first opener rebuilds the locks
    396   4     reserved
    400   40    repl_id             -       replication id (40 hex digits, Redis's): a primary's
                                            history, or the one a replica follows
    440   8     repl_offset         -       a primary's offset (sum of its stripes' changes);
                                            a replica's: the offset it has applied
    448   40    repl_id2            -       the previous history's id (new_history), and the
    488   8     repl_offset2        -       offset up to which it is valid (partial resync
                                            after a failover)
    496   8     repl_epoch          -       the epoch (leader key revision) of the current
                                            primary's term; replicas refuse older ones
    504   8     boot_id             -       the kernel boot the region was last opened in
                                            (recovery.py): a region not closed cleanly in
                                            another boot lost pages in any order
    512   48    bin_bitmap          arena   NBINS bits: bit c set <=> free list c is not empty
    1024  1536  bin_heads           arena   NBINS x u32 block refs of the free lists (0 = empty)
    2560  64    arena_mutex         -       the arena lock (pthread_mutex_t)
    2624  256   primary             -       a replica's primary: its replication endpoint,
                                            UTF-8, NUL-padded (all zero = not a replica);
                                            written before the fence, so that a refused
                                            writer can name where to write
    2880  1216  reserved            -       zero

Stripe record (STRIPE_BYTES = 128, n_stripes of them; two cache lines: what readers poll,
then what only writers touch)
----------------------------------------------------------------------------------------
    off   size  field            lock    notes
    0     8     seq              stripe  seqlock: odd while the stripe's slots or entries change
    8     4     count            stripe  occupied slots in this stripe's sub-table
    12    4     owner_pid        stripe  holder of the stripe lock, 0 when free
    16    8     owner_token      stripe  holder's process token
    24    8     acquired_at_ns   stripe
    32    8     writes           stripe  entries written (published or rewritten in place);
                                         also the source of versions: an entry stores the
                                         low 32 bits of the counter after its write (never
                                         0: a writer skips the values that would store 0),
                                         and its version is stored << 8 | stripe
    40    8     payload_bytes    stripe  key + value bytes of the stripe's entries
    48    8     events_head      stripe  bytes ever written to the stripe's event ring
    56    8     events_count     stripe  events ever written to it
    64    8     changes          stripe  every change to the stripe's keys (write, delete,
                                         expiry, eviction, TTL change): a replica or a
                                         snapshot that saw N changes knows it missed some
    72    8     digest           stripe  reserved: xor of the live entries' digests
    80    48    mutex            -       the stripe lock (pthread_mutex_t: 40 bytes on
                                         x86_64, 48 on aarch64)

Process record (PROC_BYTES = 512, max_procs of them): the pins of one process's open views
----------------------------------------------------------------------------------------
    off   size  field          lock    notes
    0     4     owner_pid      arena   pid of the process that claimed it, 0 = free (for
                                       diagnostics only: liveness is the record's OFD
                                       lock on the region's file, see holders.py)
    4     4     reserved
    8     8     claimed_at_ns  arena   unix time
    16    496   pins           owner   PINS_PER_PROC u32 block refs, 0 = unused; written only
                                       by the owner (a pin under the entry's stripe lock), or
                                       cleared by whoever reclaims the record of a dead owner

Collection record (COLLECTION_BYTES = 64, max_collections of them; record 0 is the default)
------------------------------------------------------------------------------------------
    off   size  field        lock    notes
    0     2     generation   arena   bumped when the record is reused; handles remember it
    2     1     state        arena   COLL_FREE, COLL_LIVE
    3     1     name_len     arena
    4     4     reserved
    8     8     reserved             (its entries are counted in the counts area)
    16    8     reserved
    24    40    name         arena   UTF-8, MAX_COLLECTION_NAME_BYTES at most

Counts: n_stripes rows of max_collections u32, stripe-major: counts[stripe * max_collections +
coll] is the number of entries of collection coll whose slots lie in stripe's sub-table. Changed
with the slot (stripe lock, between the seq bumps) and recounted by the stripe's repair, so the
counts follow the slots exactly through any crash: `len()` is the sum of a collection's column,
and the region's item count is the sum of the stripes' `count`.

Access bytes: one byte per index slot, set to 1 by a reader that found its entry through that
slot, cleared by writers; they move with the slot in a backward shift. Never locked: a lost
store costs eviction precision only. Kept outside the arena, so a reader can never write into a
block that a writer has just reused (a stale store marks at worst the wrong entry), and one per
slot rather than per arena granule, so that their cost does not grow with value size. An
entry does not record its slot: a writer that needs its byte (the lists, under the arena lock)
hashes the entry's key and probes for the slot holding its ref. Without the stripe lock, a
backward shift may hide the slot from that probe for a moment: the entry then looks unread, or
a clear is lost, which costs eviction precision only.

Index: n_stripes sub-tables of slots_per_stripe u64 slots, open addressing with linear probing
that wraps inside the sub-table, deletion by backward shift (no tombstones). A key's stripe owns
its whole probe run, so writers of different stripes never touch the same slot.

    slot = (hash >> 32) << 32 | ref        0 = empty
    stripe = hash & (n_stripes - 1)        home = (hash >> 32) % slots_per_stripe

Events: n_stripes rings of event_ring_bytes each (the area starts right after the index, 64-byte
aligned; the arena after it). Their size follows from arena_bytes and n_stripes (see
Layout.event_ring_bytes): 1/64 of the arena, between 4 KiB and 64 KiB a stripe. A writer appends
to its key's stripe's ring under the stripe lock, then advances events_head; the ring is
overwritten oldest first, and readers (the node) tell that they were overtaken from events_head
(events.py). An event record, 8-aligned, may wrap around the ring's end:

    off   size  field          notes
    0     4     record_bytes   the whole record, padding included
    4     1     kind           EV_SET, EV_DEL, EV_EXPIRED, EV_EVICTED, EV_MESSAGE
                                   (reserved: EV_EXPIRE, EV_PERSIST, EV_RENAME)
    5     1     reserved
    6     2     collection     index in the collection table
    8     2     key_len        the key (the channel, for EV_MESSAGE)
    10    2     reserved
    12    4     data_len       the message of EV_MESSAGE, else 0
    16    ..    key bytes, data bytes, zero padding

Arena: ALIGN-byte blocks with boundary tags (a TLSF-style allocator, see arena.py). A block ref
is the block's offset inside the arena divided by ALIGN, so 32-bit refs address 32 GiB. Arena
bytes 0..7 are never allocated, so ref 0 means "none". A used block holds one entry:

Entry (ENTRY_HEADER_BYTES = 36, then the key, then the value)
-------------------------------------------------------------
    off   size  field          lock    notes
    0     4     block_word     arena   block bytes | FREE (bit 0) | PREV_FREE (bit 1) | the
                                       segment's low bit (bit 2) and high bit (bit 31):
                                       SEG_NONE, SEG_PROBATION, SEG_PROTECTED, SEG_RETIRED
                                       (SEG_WORD[seg]); so a block is < 2 GiB (SIZE_MASK)
    4     4     checksum       -       low 32 bits of xxh3_64(key + value, hash_seed)
    8     4     lru_prev       arena   segment list links (block refs, 0 = none)
    12    4     lru_next       arena
    16    8     expires_at_ns  stripe  unix ns, 0 = never; changed in place (aligned store)
    24    4     version        -       the stripe's writes counter after this write, low 32
                                       bits (see the stripe record); the API's version is
                                       version << 8 | stripe
    28    4     value_len      -
    32    4     key_coll       -       key_len (bits 0-12) | kind bits (13-15) | collection
                                       << 16: a reader checks key_len and collection with one
                                       aligned u32 load, masked with KEY_COLL_MASK
                                       The kind bits are byte 33 (E_KIND) above key_len's
                                       high bits (KEY_LEN_HI_MASK), changed under the stripe
                                       lock by a byte store that keeps the rest:
                                       KIND_ARRAY (else KIND_BYTES), KIND_PINNED once a view
                                       has pinned the entry (never rewritten in place then),
                                       PUBLISHED once a slot has pointed here (never cleared)
    36    ..    key bytes, value bytes

Every field is aligned to its size: fields are read and written through u32/u64 views of the
mapping, which index by offset // size (a misaligned offset would silently hit its neighbour).
The block word is only ever written under the arena lock, the kind byte only under the entry's
stripe lock (or by whoever alone can reach the entry): they share no byte.

Versions: the API's version is the stored one << 8 | stripe. Within the last 2**32 writes to
each stripe it is unique in the region, and it rises with each write of a key except when the
stripe's counter crosses a multiple of 2**32 (the stored bits wrap: the version comes out
smaller, and a cas holding the older one fails as for any other write). ABA is possible only
for a cas that holds a version while its stripe takes a multiple of 2**32 writes, the last of
which stores the same key. Repair and recovery compare two copies of a key by the wrapping
difference of their stored versions (newer_version), right while they are less than 2**31
writes apart.

A retired block is an entry taken out of the index while a view still pins it: it sits on the
retired list (linked through lru_next, segment SEG_RETIRED) until no process pins it, and is
freed then. A KIND_ARRAY value starts with the array header described in arrays.py.

A reader touches bytes 16..36+key_len only, next to the key, so that a get costs one cache miss
for the entry and not two (measured: 400 ns per get on this VM when the key sat on another line
than key_len). Writer-only fields come first.

Fields marked "-" are written while nobody can read them: before the entry is published into
the index, or by an in-place overwrite (a new value that fits the key's current block), which
happens under the stripe lock between the two increments of the stripe's seq, exactly like a
slot change, so readers of the stripe retry. A free block keeps block_word at 0, its free-list
links at 8 and 12 (the same bytes as lru_prev/lru_next), and a copy of its size in its last 4
bytes (the footer) so that the block after it can coalesce backwards.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import IncompatibleLayout

MAGIC = b"SHMKV\x00r\x01"
LAYOUT_VERSION = 7
HASH_XXH3_64 = 1
STATE_READY = 1

HEADER_BYTES = 4096
STRIPE_BYTES = 128
STRIPE_Q = STRIPE_BYTES >> 3  # a stripe record in u64 / u32 indexes
STRIPE_U32 = STRIPE_BYTES >> 2
PROC_BYTES = 512
COLLECTION_BYTES = 64
ALIGN = 8
ENTRY_HEADER_BYTES = 36
MIN_BLOCK_BYTES = 40  # the smallest entry (an empty key and value); no smaller block exists

MAX_KEY_BYTES = 4096
MAX_VALUE_BYTES = 2**32 - 1
MAX_COLLECTION_NAME_BYTES = 40
MAX_ARENA_BYTES = 2**32 * ALIGN

SEG_NONE = 0
SEG_PROBATION = 1
SEG_PROTECTED = 2

SEG_RETIRED = 3

# the kind byte (E_KIND): key_len's high bits, then the kind bits
KIND_BYTES = 0
KIND_ARRAY = 0x20
KIND_PINNED = 0x40
PUBLISHED = 0x80
KIND_MASK = KIND_ARRAY  # what a value is (bytes or array), without the other flags
KEY_LEN_HI_MASK = 0x1F

COLL_FREE = 0
COLL_LIVE = 1

# --- region header ---------------------------------------------------------------------
HEADER = struct.Struct("<8sIIQQIIIIIIQQQQQQQQI")
# byte offsets of header fields that change after creation (u64 unless noted)
H_STATE = 120  # u32
H_NEXT_COLLECTION = 124  # u32
H_ARENA_USED = 136
H_COUNTS_OFFSET = 128
H_DELETES = 160
H_EVICTIONS = 168
H_EXPIRATIONS = 176
H_ARENA_OWNER_PID = 184  # u32
H_ARENA_OWNER_TOKEN = 192
H_PROTECTED_PCT = 188  # u32
H_SEG_ENDS = 256  # 4 x u32: probation head, tail, protected head, tail
H_SEG_ITEMS = 272  # 2 x u64
H_SEG_BYTES = 288  # 2 x u64
H_HITS = 304
H_MISSES = 312
H_EXPIRE_CURSOR = 320
H_RETIRED_HEAD = 328  # u32
H_RETIRED_COUNT = 332  # u32
H_RETIRED_BYTES = 336
H_EVENTS_ENABLED = 344  # u32
H_LOCK_KIND = 348  # u32
H_WRITABLE_UNTIL = 352
H_REGION_ID = 360
H_FILE_DEV = 368
H_FILE_INO = 376
H_CLEAN_MARKER = 384
H_LOCK_GENERATION = 392  # u32
H_REPL_ID = 400  # 40 bytes
H_REPL_OFFSET = 440
H_REPL_ID2 = 448  # 40 bytes
H_REPL_OFFSET2 = 488
H_REPL_EPOCH = 496
H_BOOT_ID = 504
H_ARENA_MUTEX = 2560  # 64 bytes
H_PRIMARY = 2624  # PRIMARY_BYTES
PRIMARY_BYTES = 256
LOCKS_ROBUST = 2  # 1 was SysV semaphores, never in a released layout
H_BIN_BITMAP = 512
H_BIN_HEADS = 1024
NBINS = 384
BITMAP_BYTES = NBINS // 8

# --- stripe record ---------------------------------------------------------------------
S_SEQ = 0
S_COUNT = 8  # u32
S_OWNER_PID = 12  # u32
S_OWNER_TOKEN = 16
S_ACQUIRED_AT = 24
S_WRITES = 32
S_PAYLOAD = 40
S_EVENTS_HEAD = 48
S_EVENTS_COUNT = 56
S_CHANGES = 64
S_DIGEST = 72
S_MUTEX = 80  # 48 bytes

# --- event rings -------------------------------------------------------------------------
MIN_EVENT_RING_BYTES = 4 << 10
MAX_EVENT_RING_BYTES = 64 << 10
EVENT_HEADER = struct.Struct("<IBxHHxxI")
EV_SET, EV_DEL, EV_EXPIRED, EV_EVICTED, EV_MESSAGE = 1, 2, 3, 4, 5
EV_EXPIRE, EV_PERSIST, EV_RENAME = 6, 7, 8  # reserved

# --- process record --------------------------------------------------------------------
P_OWNER_PID = 0  # u32
P_CLAIMED_AT = 8
P_PINS = 16  # PINS_PER_PROC x u32
PINS_PER_PROC = (PROC_BYTES - P_PINS) // 4

# --- collection record -----------------------------------------------------------------
COLLECTION = struct.Struct("<HBB4x16x40s")  # generation, state, name_len, name
C_GENERATION = 0  # u16

# --- entry -----------------------------------------------------------------------------
E_BLOCK_WORD = 0  # u32
E_CHECKSUM = 4  # u32
E_LRU_PREV = 8  # u32
E_LRU_NEXT = 12  # u32
E_EXPIRES_AT = 16
E_VERSION = 24  # u32
E_VALUE_LEN = 28  # u32
E_KEY_COLL = 32  # u32: key_len | kind bits << 8 | collection << 16
E_KIND = 33  # u8: the kind byte
E_COLLECTION = 34  # u16
KEY_LEN_MASK = 0x1FFF
KEY_COLL_MASK = 0xFFFF0000 | KEY_LEN_MASK  # key_coll without the kind bits
# What a writer puts down first in a new block, at E_EXPIRES_AT (block_word belongs to the
# allocator, the links to the lists, the checksum comes with the value): expires_at_ns,
# version, value_len, key_coll
ENTRY_HEADER = struct.Struct("<QIII")
FREE_BIT = 1
PREV_FREE_BIT = 2
SIZE_MASK = 0x7FFFFFF8
# the segment in the block word: bit 2 is its low bit, bit 31 its high bit
SEG_BITS = 0x80000004
SEG_WORD = (0, 0x4, 0x80000000, 0x80000004)  # SEG_NONE .. SEG_RETIRED
SEG_RETIRED_WORD = SEG_WORD[SEG_RETIRED]
VERSION_MASK = 0xFFFFFFFF  # the stored version: the writes counter's low 32 bits


def segment_of(block_word: int) -> int:
    """The segment recorded in a block word (SEG_NONE .. SEG_RETIRED)."""
    return (block_word >> 2 & 1) | (block_word >> 30 & 2)


def newer_version(a: int, b: int) -> bool:
    """Whether stored version a was written after b (same stripe): their wrapping difference,
    right while they are less than 2**31 writes apart."""
    return 0 < (a - b) & VERSION_MASK < 2**31


@dataclass(frozen=True)
class Layout:
    """Where each area of a region lives; computed by plan_layout or read from a header."""

    n_stripes: int
    slots_per_stripe: int
    max_collections: int
    max_procs: int
    stripes_offset: int
    procs_offset: int
    collections_offset: int
    counts_offset: int
    access_offset: int
    index_offset: int
    arena_offset: int
    arena_bytes: int
    region_bytes: int

    @property
    def index_slots(self) -> int:
        return self.n_stripes * self.slots_per_stripe

    @property
    def events_offset(self) -> int:
        return _align(self.index_offset + self.index_slots * 8)

    @property
    def event_ring_bytes(self) -> int:
        return event_ring_bytes(self.arena_bytes, self.n_stripes)


def event_ring_bytes(arena_bytes: int, n_stripes: int) -> int:
    """A power of two: rings take ~1/64 of the arena, within [4 KiB, 64 KiB] per stripe."""
    share = arena_bytes // 64 // n_stripes
    return min(MAX_EVENT_RING_BYTES, max(MIN_EVENT_RING_BYTES, 1 << max(0, share.bit_length() - 1)))


def _align(n: int, to: int = 64) -> int:
    return (n + to - 1) // to * to


DEFAULT_STRIPES = 16
DEFAULT_MAX_COLLECTIONS = 1024
DEFAULT_MAX_PROCS = 128
# A slot costs 8 bytes; index sizing assumes entries of about this many arena bytes.
DEFAULT_BYTES_PER_KEY = 128
MAX_LOAD = 0.9  # a stripe evicts before it fills beyond this: probe runs stay short
TARGET_LOAD = 0.75  # the load an index sized by max_keys runs at when max_keys are stored


def plan_layout(
    arena_bytes: int,
    max_keys: int | None = None,
    n_stripes: int = DEFAULT_STRIPES,
    max_collections: int = DEFAULT_MAX_COLLECTIONS,
    max_procs: int = DEFAULT_MAX_PROCS,
) -> Layout:
    """Compute a region's layout from its parameters. Pure: no I/O."""
    if not isinstance(arena_bytes, int) or isinstance(arena_bytes, bool):
        raise TypeError("arena_bytes must be an int")
    if arena_bytes < 4096 or arena_bytes > MAX_ARENA_BYTES:
        raise ValueError(f"arena_bytes must be between 4096 and {MAX_ARENA_BYTES}")
    if n_stripes < 1 or n_stripes > 256 or n_stripes & (n_stripes - 1):
        raise ValueError("n_stripes must be a power of two between 1 and 256")
    if not 1 <= max_collections <= 65535:
        raise ValueError("max_collections must be between 1 and 65535")
    if not 1 <= max_procs <= 65535:
        raise ValueError("max_procs must be between 1 and 65535")
    if max_keys is None:
        max_keys = max(1024, arena_bytes // DEFAULT_BYTES_PER_KEY)
    if max_keys < 1:
        raise ValueError("max_keys must be positive")
    # Size each stripe for max_keys at TARGET_LOAD: linear probing stays short there, and a
    # stripe still has room (up to MAX_LOAD) when hashing fills it a little faster than others.
    per_stripe = max(64, int(max_keys / n_stripes / TARGET_LOAD) + 1)
    if per_stripe > 2**24:
        raise ValueError("max_keys is too large for this many stripes; raise n_stripes")
    stripes_offset = HEADER_BYTES
    procs_offset = _align(stripes_offset + n_stripes * STRIPE_BYTES)
    collections_offset = _align(procs_offset + max_procs * PROC_BYTES)
    counts_offset = _align(collections_offset + max_collections * COLLECTION_BYTES)
    access_offset = _align(counts_offset + n_stripes * max_collections * 4)
    index_offset = _align(access_offset + n_stripes * per_stripe)
    events_offset = _align(index_offset + n_stripes * per_stripe * 8)
    arena_offset = _align(events_offset
                          + n_stripes * event_ring_bytes(arena_bytes // ALIGN * ALIGN, n_stripes),
                          4096)
    arena_bytes = arena_bytes // ALIGN * ALIGN
    return Layout(
        n_stripes=n_stripes,
        slots_per_stripe=per_stripe,
        max_collections=max_collections,
        max_procs=max_procs,
        stripes_offset=stripes_offset,
        procs_offset=procs_offset,
        collections_offset=collections_offset,
        counts_offset=counts_offset,
        access_offset=access_offset,
        index_offset=index_offset,
        arena_offset=arena_offset,
        arena_bytes=arena_bytes,
        region_bytes=arena_offset + arena_bytes,
    )


# What creation writes after HEADER: counts_offset, then (at 348) lock_kind, writable_until_ns,
# region_id, file_dev, file_ino
_CREATION_COUNTS = struct.Struct("<Q")
_CREATION_IDS = struct.Struct("<IQQQQ")
CREATION_HEADER_BYTES = H_CLEAN_MARKER


def pack_header(layout: Layout, hash_seed: int, created_at_ns: int, region_id: int = 0,
                file_id: tuple[int, int] = (0, 0)) -> bytes:
    """The part of the header fixed at creation (its first CREATION_HEADER_BYTES), with magic
    and state left zero (written last) and the counters zero."""
    buf = bytearray(CREATION_HEADER_BYTES)
    _CREATION_COUNTS.pack_into(buf, H_COUNTS_OFFSET, layout.counts_offset)
    _CREATION_IDS.pack_into(buf, H_LOCK_KIND, LOCKS_ROBUST, 0, region_id, *file_id)
    HEADER.pack_into(buf, 0,
        b"\0" * 8,
        LAYOUT_VERSION,
        HEADER_BYTES,
        layout.region_bytes,
        hash_seed,
        HASH_XXH3_64,
        layout.n_stripes,
        layout.slots_per_stripe,
        layout.max_collections,
        layout.max_procs,
        MAX_KEY_BYTES,
        layout.stripes_offset,
        layout.procs_offset,
        layout.collections_offset,
        layout.access_offset,
        layout.index_offset,
        layout.arena_offset,
        layout.arena_bytes,
        created_at_ns,
        0,
    )
    return bytes(buf)


def unpack_header(buf: bytes | memoryview, mapped_bytes: int) -> tuple[Layout, int]:
    """Validate a header against the bytes actually mapped; return (layout, hash_seed)."""
    if len(buf) < CREATION_HEADER_BYTES:
        raise IncompatibleLayout("region is smaller than a shmkv header; it is not a shmkv region")
    (magic, version, header_bytes, region_bytes, seed, hash_id, n_stripes, per_stripe,
     max_collections, max_procs, max_key_bytes, stripes_off, procs_off, colls_off, access_off,
     index_off, arena_off, arena_bytes, _created, _state) = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise IncompatibleLayout(
            f"bad magic {magic!r}: not a shmkv region (or not initialised); "
            "unlink it or pick another name"
        )
    if version != LAYOUT_VERSION:
        raise IncompatibleLayout(
            f"region has layout version {version}, this shmkv reads version {LAYOUT_VERSION}; "
            "to move its data, open it with the shmkv release that created it and run "
            "`shmkv snapshot PATH`, then `shmkv restore PATH` with this release (or unlink "
            "and recreate the region)"
        )
    if hash_id != HASH_XXH3_64 or header_bytes != HEADER_BYTES or max_key_bytes != MAX_KEY_BYTES:
        raise IncompatibleLayout("region was created with other hashing or limits; recreate it")
    lock_kind = _CREATION_IDS.unpack_from(buf, H_LOCK_KIND)[0]
    if lock_kind != LOCKS_ROBUST:
        raise IncompatibleLayout(f"region uses lock kind {lock_kind}, which this shmkv release "
                                 "does not implement; use the release that created it")
    counts_off = int.from_bytes(bytes(buf[H_COUNTS_OFFSET:H_COUNTS_OFFSET + 8]), "little")
    layout = Layout(n_stripes, per_stripe, max_collections, max_procs, stripes_off, procs_off,
                    colls_off, counts_off, access_off, index_off, arena_off, arena_bytes,
                    region_bytes)
    try:
        expected = plan_layout(arena_bytes, None, n_stripes, max_collections, max_procs)
    except (ValueError, TypeError) as exc:
        raise IncompatibleLayout(f"region header describes an impossible layout ({exc}); it "
                                 "is corrupt: unlink the region and create it again") from None
    same_areas = (
        expected.stripes_offset == stripes_off
        and expected.procs_offset == procs_off
        and expected.collections_offset == colls_off
        and expected.counts_offset == counts_off
        and expected.access_offset == access_off
        and arena_off + arena_bytes == region_bytes
        and layout.events_offset + n_stripes * layout.event_ring_bytes <= arena_off
        and access_off + n_stripes * per_stripe <= index_off
    )
    if not same_areas or not 1 <= per_stripe <= 2**24 or n_stripes & (n_stripes - 1):
        raise IncompatibleLayout("region header describes an impossible layout; it is corrupt")
    if region_bytes != mapped_bytes:
        raise IncompatibleLayout(
            f"header says {region_bytes} bytes but {mapped_bytes} are mapped: "
            "the region was truncated or resized"
        )
    return layout, seed
