"""The engine's side of replication: reading a primary's stripes and applying them to a replica.

The transport and the roles are broker/replication.py's; this module knows the region only.

Reading (primary). `StripeReader` reads one stripe as snapshot.py reads a live region: the
stripe's slots are copied under its lock (a memcpy), then each entry they point to is read
without a lock and kept only if it validates (a used block, a sane header, a checksum that
matches the key and value copied, the header unchanged after the copy). Entries that failed
(rewritten or freed meanwhile) send the reader back to the slots, up to REREADS times, for the
entries written since. Given digest ranges (shmkv/repl_digest.py), it reads only the slots of
those ranges. Expired entries are left out, unless keep_expired (replication keeps them: a
replica holds what its primary holds until the primary removes it, and the digests count
them). A reused block can yield a key of another
stripe: the replica drops those. Records go out in chunks of about CHUNK_BYTES (a record larger
than that goes alone in its chunk).

Record (RECORD_HEADER, little-endian, then the key, then the value):

    off   size  field
    0     8     expires_at_ns   absolute unix ns, 0 = never
    8     4     version         the stored version (layout.py): the primary's, kept
    12    4     value_len
    16    2     key_len
    18    2     collection      index in the collection table (the same on both sides)
    20    1     kind            layout.KIND_BYTES or KIND_ARRAY
    21    3     zero

Applying (replica). `Applier` is the privileged write path: it takes stripe locks and writes
through Writer.put_locked and remove_locked directly, never through Cache's methods, so the
region's write fence (which refuses every other writer) does not apply to it. Collections are
copied record by record (same index, generation and name), because a key's hash is seeded
with its collection's index: keys then land in the same stripes on both sides. An entry is
rewritten only when its version, expiry, kind or length differ; the primary's version is kept
by setting the stripe's writes counter just below it before the write (put_locked stores the
counter after its increment). A TTL change alone (which keeps the version) is an in-place
store of the expiry. At the end of a stripe, every entry the primary's stripe did not list is
removed, and the stripe's writes counter takes the primary's value.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from . import layout as L
from . import repl_digest as D
from .errors import IncompatibleLayout
from .hashing import xxh3_64
from .shared_region import SharedRegion
from .writer import Writer

if TYPE_CHECKING:
    from .cache import Cache

RECORD_HEADER = struct.Struct("<QIIHHB3x")
CHUNK_BYTES = 1 << 20
# Times a stripe whose entries failed validation has its slots copied again (snapshot.py's)
REREADS = 3
REPL_ID_BYTES = 40  # layout.py's repl_id and repl_id2: 40 hex digits, as Redis's
FENCED = 1  # writable_until_ns of a replica: 1 ns after the epoch, always in the past

_ENTRY = struct.Struct("<IIIIQIII")  # block_word, checksum, lru links, expires, version,
# value_len, key_coll: the entry's first 36 bytes


# --- region parameters and the fence ----------------------------------------------------
def region_params(region: SharedRegion) -> dict[str, int]:
    """What a replica needs to create a region identical to this one in format."""
    lay = region.layout
    return {"arena_bytes": lay.arena_bytes, "n_stripes": lay.n_stripes,
            "slots_per_stripe": lay.slots_per_stripe, "max_collections": lay.max_collections,
            "max_procs": lay.max_procs, "hash_seed": region.seed,
            "protected_pct": region.u32[L.H_PROTECTED_PCT >> 2],
            "region_id": region.q[L.H_REGION_ID >> 3]}


def clone_layout(params: dict[str, int]) -> L.Layout:
    """The layout of params' region, found through plan_layout's own sizing: the max_keys that
    gives its slots_per_stripe (plan_layout: max(64, int(max_keys / n / TARGET_LOAD) + 1))."""
    n, per = params["n_stripes"], params["slots_per_stripe"]
    guess = max(1, int((per - 1) * n * L.TARGET_LOAD))
    for max_keys in range(max(1, guess - 2 * n), guess + 2 * n + 2):
        lay = L.plan_layout(params["arena_bytes"], max_keys, n, params["max_collections"],
                            params["max_procs"])
        if lay.slots_per_stripe == per:
            return lay
    raise IncompatibleLayout(f"no region of this release has {per} slots per stripe with "
                             f"{n} stripes: the primary runs another shmkv release")


def same_format(region: SharedRegion, params: dict[str, int]) -> bool:
    """Whether region can replicate params' region: same layout and hash seed."""
    mine = region_params(region)
    return all(mine[k] == params[k] for k in ("arena_bytes", "n_stripes", "slots_per_stripe",
                                                "max_collections", "max_procs", "hash_seed"))


def create_clone(name: str, params: dict[str, int], mode: int, lock_timeout_s: float,
                 clock: Any) -> Cache:
    """A new region with params' layout and hash seed (empty, not yet fenced)."""
    from .cache import Cache  # cache.py is the API over this engine module: no cycle at import
    region = SharedRegion.create(name, clone_layout(params), params["protected_pct"], mode,
                                 lock_timeout_s, clock, seed=params["hash_seed"])
    return Cache(region)


def fence(region: SharedRegion, primary: str) -> None:
    """Make region a replica of primary: every local write refuses from now on, naming it."""
    raw = primary.encode()[:L.PRIMARY_BYTES]
    region.mm[L.H_PRIMARY:L.H_PRIMARY + L.PRIMARY_BYTES] = raw.ljust(L.PRIMARY_BYTES, b"\0")
    region.q[L.H_WRITABLE_UNTIL >> 3] = FENCED


def unfence(region: SharedRegion, writable_until_ns: int = 0) -> None:
    """Make region a primary's: no primary named, writes allowed until writable_until_ns (0 =
    no fence; a primary elected through etcd gives the end of its lease). The fence goes
    first: a writer that sees no primary named must not see the old fence lift either."""
    region.q[L.H_WRITABLE_UNTIL >> 3] = FENCED
    region.mm[L.H_PRIMARY:L.H_PRIMARY + L.PRIMARY_BYTES] = bytes(L.PRIMARY_BYTES)
    region.q[L.H_WRITABLE_UNTIL >> 3] = writable_until_ns


def replication_offset(region: SharedRegion) -> int:
    """How far this region's history goes, to compare candidates for promotion: repl_offset
    when the replication keeps it, else the sum of the stripes' writes counters (a replica's
    take the primary's values as it syncs, so the one that synced last has the largest)."""
    kept = int(region.q[L.H_REPL_OFFSET >> 3])
    return kept if kept else sum(stripe_counters(region)[1])


def primary_of(region: SharedRegion) -> str:
    """The primary named in region's header ("" if it is not a replica)."""
    raw = bytes(region.mm[L.H_PRIMARY:L.H_PRIMARY + L.PRIMARY_BYTES]).rstrip(b"\0")
    return raw.decode(errors="replace")


def repl_id(region: SharedRegion, previous: bool = False) -> str:
    """The region's replication id (repl_id2 if previous), "" if it has none."""
    at = L.H_REPL_ID2 if previous else L.H_REPL_ID
    return bytes(region.mm[at:at + REPL_ID_BYTES]).rstrip(b"\0").decode(errors="replace")


def set_position(region: SharedRegion, history: str, offset: int) -> None:
    """Record in a replica's header the history it follows and the offset it has applied."""
    region.mm[L.H_REPL_ID:L.H_REPL_ID + REPL_ID_BYTES] = \
        history.encode()[:REPL_ID_BYTES].ljust(REPL_ID_BYTES, b"\0")
    region.q[L.H_REPL_OFFSET >> 3] = offset


def new_history(region: SharedRegion) -> str:
    """Start a new replication history (a primary's first, or a promoted replica's): the
    current repl_id and offset become repl_id2 and repl_offset2 (replicas of that history can
    still resync partially), and a new random 40-hex repl_id is written; returns it."""
    mm, q = region.mm, region.q
    mm[L.H_REPL_ID2:L.H_REPL_ID2 + REPL_ID_BYTES] = mm[L.H_REPL_ID:L.H_REPL_ID + REPL_ID_BYTES]
    q[L.H_REPL_OFFSET2 >> 3] = q[L.H_REPL_OFFSET >> 3]
    fresh = secrets.token_hex(REPL_ID_BYTES // 2)
    set_position(region, fresh, 0)
    return fresh


def stripe_counters(region: SharedRegion) -> tuple[list[int], list[int]]:
    """(changes, writes) of every stripe: what tells a replica which stripes moved."""
    lay = region.layout
    base = lay.stripes_offset >> 3
    changes = [region.q[base + s * L.STRIPE_Q + (L.S_CHANGES >> 3)] for s in range(lay.n_stripes)]
    writes = [region.q[base + s * L.STRIPE_Q + (L.S_WRITES >> 3)] for s in range(lay.n_stripes)]
    return changes, writes


def live_collections(region: SharedRegion) -> list[tuple[int, int, str]]:
    with region.locks.arena_held:
        return [(idx, gen, name.decode()) for idx, gen, name in region.colls.live()]


# --- reading a stripe (primary) ---------------------------------------------------------
class StripeReader:
    """The live entries of one stripe, read in chunks (see the module docstring)."""

    def __init__(self, region: SharedRegion, stripe: int, ranges: Iterable[int] | None = None,
                 keep_expired: bool = False) -> None:
        self.region, self.stripe = region, stripe
        self.ranges = None if ranges is None else np.asarray(sorted(set(ranges)), np.int64)
        self.keep_expired = keep_expired
        self.offs = _slot_entries(region, stripe, self.ranges)
        self.seen = set(self.offs)
        self.at = self.failed = self.rereads = 0
        self.records = 0

    def chunk(self, max_bytes: int = CHUNK_BYTES) -> tuple[bytes, bool]:
        """(records, done): the next records of the stripe, about max_bytes of them."""
        parts: list[bytes] = []
        size = 0
        while size < max_bytes:
            if self.at == len(self.offs):
                if not self.failed or self.rereads == REREADS:
                    break
                fresh = _slot_entries(self.region, self.stripe, self.ranges)
                self.offs = [off for off in fresh if off not in self.seen]
                self.seen.update(fresh)
                self.at = self.failed = 0
                self.rereads += 1
                continue
            record = _read_entry(self.region, self.offs[self.at], self.keep_expired)
            self.at += 1
            if record is None:
                self.failed += 1
            elif record:
                parts.append(record)
                size += len(record)
                self.records += 1
        done = self.at == len(self.offs) and (not self.failed or self.rereads == REREADS)
        return b"".join(parts), done


def key_records_locked(region: SharedRegion, stripe: int, keys: Iterable[tuple[int, bytes]],
                       max_bytes: int = CHUNK_BYTES) -> bytes | None:
    """The records of keys of the stripe as they are now (the stripe's lock held: exact),
    expired ones included; a key that is not there gets a tombstone (a record of version 0,
    no value). None if they come to more than max_bytes, or an entry does not validate."""
    parts: list[bytes] = []
    size = 0
    smask = region.layout.n_stripes - 1
    for coll, key in keys:
        h = xxh3_64(key, region.seed ^ coll)
        if h & smask != stripe or len(key) > L.MAX_KEY_BYTES:
            return None  # not a key of this stripe: the hint is wrong, compare instead
        _, off = region.index.find_locked(stripe, h, key, coll)
        if off:
            record = _read_entry(region, off, keep_expired=True)
            if not record:
                return None
        else:
            record = RECORD_HEADER.pack(0, 0, 0, len(key), coll, 0) + key
        size += len(record)
        if size > max_bytes:
            return None
        parts.append(record)
    return b"".join(parts)


def _slot_entries(region: SharedRegion, stripe: int, ranges: np.ndarray | None = None
                  ) -> list[int]:
    """The entry offsets of the stripe's occupied slots, copied under its lock (only those
    of the given digest ranges, repl_digest.py, if ranges is not None)."""
    region.locks.acquire_stripe(stripe)
    try:
        return _slot_entries_locked(region, stripe, ranges)
    finally:
        region.locks.release_stripe(stripe)


def _slot_entries_locked(region: SharedRegion, stripe: int, ranges: np.ndarray | None = None
                         ) -> list[int]:
    index = region.index
    start = index.slot0 + stripe * index.per
    raw = region.q[start:start + index.per].tobytes()
    slots = np.frombuffer(raw, dtype=np.uint64)
    refs = slots & np.uint64(0xFFFFFFFF)
    keep = (refs > 0) & (refs <= index.max_ref)
    if ranges is not None:
        keep &= np.isin(D.range_of_slots(slots, D.n_ranges(region.layout)), ranges)
    return (refs[keep].astype(np.int64) * L.ALIGN + index.arena_base).tolist()


def _read_entry(region: SharedRegion, off: int, keep_expired: bool = False) -> bytes | None:
    """The record of the entry at off; b"" if it has expired, None if it fails validation."""
    end = region.arena.end
    if off + L.ENTRY_HEADER_BYTES > end:
        return None
    mm = region.mm
    head = _ENTRY.unpack_from(mm, off)
    word, checksum, _, _, exp, version, vlen, key_coll = head
    klen, coll = key_coll & L.KEY_LEN_MASK, key_coll >> 16
    kind = mm[off + L.E_KIND] & L.KIND_MASK
    size = word & L.SIZE_MASK
    if word & L.FREE_BIT or klen > L.MAX_KEY_BYTES or coll >= region.layout.max_collections \
            or L.ENTRY_HEADER_BYTES + klen + vlen > size or off + size > end:
        return None
    body = bytes(mm[off + L.ENTRY_HEADER_BYTES:off + L.ENTRY_HEADER_BYTES + klen + vlen])
    if xxh3_64(body, region.seed) & 0xFFFFFFFF != checksum:
        return None
    again = _ENTRY.unpack_from(mm, off)
    if again[0] & L.FREE_BIT or again[1] != checksum or again[4:] != head[4:]:
        return None
    if exp and not keep_expired and exp <= region.clock():
        return b""
    return RECORD_HEADER.pack(exp, version, vlen, klen, coll, kind) + body


def records(data: bytes | memoryview) -> Iterable[tuple[int, int, int, int, bytes, bytes]]:
    """(collection, kind, expires_at_ns, version, key, value) of each record in a chunk."""
    mv = memoryview(data)
    at, hb = 0, RECORD_HEADER.size
    while at < len(mv):
        exp, version, vlen, klen, coll, kind = RECORD_HEADER.unpack_from(mv, at)
        at += hb
        key = bytes(mv[at:at + klen])
        value = bytes(mv[at + klen:at + klen + vlen])
        if len(value) != vlen:
            raise ValueError("a replication chunk ends inside a record")
        at += klen + vlen
        yield coll, kind, exp, version, key, value


# --- applying (replica) -----------------------------------------------------------------
class Applier:
    """The privileged write path of a replica's region (see the module docstring)."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.region: SharedRegion = cache._region
        self.writers: dict[int, Writer] = {}
        lay = self.region.layout
        self._smask = lay.n_stripes - 1
        self._seq0 = lay.stripes_offset >> 3

    def _writer(self, coll: int) -> Writer | None:
        gen, state, name = self.region.colls.read(coll)
        if state != L.COLL_LIVE:
            return None
        writer = self.writers.get(coll)
        if writer is None or writer._gen != gen:
            writer = self.writers[coll] = Writer(self.region, coll, gen, name.decode(),
                                                 self.cache._flush_counts_locked)
        return writer

    def sync_collections(self, primary: list[tuple[int, int, str]]) -> int:
        """Make the collection table the primary's; returns how many records changed. A
        record whose collection is another one now loses its entries first."""
        region = self.region
        wanted = {idx: (gen, name.encode()) for idx, gen, name in primary}
        changed = 0
        for idx in range(1, region.layout.max_collections):
            gen, state, name = region.colls.read(idx)
            want = wanted.get(idx)
            if want is not None and state == L.COLL_LIVE and (gen, name) == want:
                continue
            if want is None and state == L.COLL_FREE:
                continue
            if state == L.COLL_LIVE and (want is None or want[0] != gen):
                Writer(region, idx, gen, name.decode(),
                       self.cache._flush_counts_locked).delete_collection_entries(idx)
            with region.locks.arena_held:
                if want is None:
                    region.colls._write_locked(idx, gen, L.COLL_FREE, b"")
                else:
                    region.colls._write_locked(idx, want[0], L.COLL_LIVE, want[1])
            self.writers.pop(idx, None)
            changed += 1
        return changed

    def apply_chunk(self, stripe: int, data: bytes | memoryview,
                    seen: dict[tuple[int, bytes], int]) -> int:
        """Upsert the chunk's records of stripe; seen collects (collection, key) -> version of
        what the primary listed. Returns how many entries were written."""
        region, q, u32 = self.region, self.region.q, self.region.u32
        writes_at = self._seq0 + stripe * L.STRIPE_Q + (L.S_WRITES >> 3)
        changes_at = self._seq0 + stripe * L.STRIPE_Q + (L.S_CHANGES >> 3)
        written = 0
        region.locks.acquire_stripe(stripe)
        try:
            for coll, kind, exp, version, key, value in records(data):
                h = xxh3_64(key, region.seed ^ coll)
                if h & self._smask != stripe or not version:  # a reused block's other key
                    continue
                before = seen.get((coll, key))
                if before is not None and not L.newer_version(version, before):
                    continue  # read twice: the newer copy wins
                writer = self._writer(coll)
                if writer is None:
                    continue
                seen[(coll, key)] = version
                pos, old = region.index.find_locked(stripe, h, key, coll)
                # the value too: after a failover, a demoted node's discarded write and its new
                # primary's can share a key, a version and a length
                at = old + L.ENTRY_HEADER_BYTES + len(key)
                if old and u32[(old + L.E_VERSION) >> 2] == version \
                        and u32[(old + L.E_VALUE_LEN) >> 2] == len(value) \
                        and region.mm[old + L.E_KIND] & L.KIND_MASK == kind \
                        and region.mm[at:at + len(value)] == value:
                    if q[(old + L.E_EXPIRES_AT) >> 3] != exp:  # a TTL change keeps versions
                        q[(old + L.E_EXPIRES_AT) >> 3] = exp
                        q[changes_at] += 1
                        written += 1
                    continue
                q[writes_at] = version - 1  # put_locked stores the counter after its increment
                writer.put_locked(stripe, h, key, value, exp, pos, old, kind)
                written += 1
        finally:
            region.locks.release_stripe(stripe)
        return written

    def can_apply(self, data: bytes | memoryview) -> bool:
        """Whether every collection the records of data name is live in this region's table
        (a hint naming one that is not yet must wait for the next round)."""
        return all(self._writer(coll) is not None
                   for coll, _, _, version, _, _ in records(data) if version)

    def remove_tombstoned(self, stripe: int, data: bytes | memoryview) -> int:
        """Remove the keys of the tombstones (records of version 0, key_records_locked) in
        data; returns how many were there. Before any upsert of a round: the room they free
        is what the primary's new entries took."""
        region = self.region
        removed = 0
        region.locks.acquire_stripe(stripe)
        try:
            for coll, _, _, version, key, _ in records(data):
                if version:
                    continue
                pos, found = region.index.find_locked(
                    stripe, xxh3_64(key, region.seed ^ coll), key, coll)
                if found:
                    region.evictor.remove_locked(stripe, pos, found, L.H_DELETES)
                    removed += 1
        finally:
            region.locks.release_stripe(stripe)
        return removed

    def upsert_hinted(self, stripe: int, data: bytes | memoryview, primary_writes: int) -> int:
        """Upsert the records of data (tombstones are skipped); the stripe's writes counter
        takes the primary's value. Returns how many entries were written."""
        written = self.apply_chunk(stripe, data, {})
        region = self.region
        region.locks.acquire_stripe(stripe)
        try:
            region.q[self._seq0 + stripe * L.STRIPE_Q + (L.S_WRITES >> 3)] = primary_writes
        finally:
            region.locks.release_stripe(stripe)
        return written

    def end_stripe(self, stripe: int, seen: dict[tuple[int, bytes], int],
                   primary_writes: int, ranges: Iterable[int] | None = None) -> int:
        """Remove what the primary's stripe (or only those of its digest ranges that were read)
        no longer has; returns how many were removed."""
        wanted = None if ranges is None else np.asarray(sorted(set(ranges)), np.int64)
        region = self.region
        index, u32, mm = region.index, region.u32, region.mm
        removed = 0
        region.locks.acquire_stripe(stripe)
        try:
            # only the occupied slots (a stripe has ~4/3 slots per key it is sized for)
            for off in _slot_entries_locked(region, stripe, wanted):
                key_coll = u32[(off + L.E_KEY_COLL) >> 2]
                klen, coll = key_coll & L.KEY_LEN_MASK, key_coll >> 16
                key = bytes(mm[off + L.ENTRY_HEADER_BYTES:off + L.ENTRY_HEADER_BYTES + klen])
                if (coll, key) in seen:
                    continue
                # found again: each removal's backward shift moves later slots of the run
                pos, found = index.find_locked(stripe, xxh3_64(key, region.seed ^ coll), key,
                                               coll)
                if found != off:
                    continue
                region.evictor.remove_locked(stripe, pos, off, L.H_DELETES)
                removed += 1
            region.q[self._seq0 + stripe * L.STRIPE_Q + (L.S_WRITES >> 3)] = \
                _past_every(primary_writes, seen.values())
        finally:
            region.locks.release_stripe(stripe)
        return removed


def _past_every(primary_writes: int, versions: Iterable[int]) -> int:
    """The writes counter a stripe takes at the end of its read: the primary's, read at the
    start of the round, or past it if an entry copied later carries a newer version. Else,
    once promoted, this region's next write of such a key would store an older version than
    the one it replaces, and a cas holding a version could match a later value."""
    ahead = max(((v - primary_writes) & L.VERSION_MASK for v in versions
                 if L.newer_version(v, primary_writes & L.VERSION_MASK)), default=0)
    return primary_writes + ahead
