"""What `Cache.stats()` reports: the region's counters and sizes, read from the header and the
stripe records (layout.py), plus the asking handle's collection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import layout as L

if TYPE_CHECKING:
    from .shared_region import SharedRegion


def region_stats(region: SharedRegion, retired: tuple[int, int], engine: str,
                 collection: str, collection_items: int) -> dict[str, Any]:
    """The stats document; `retired` (blocks, bytes) is read under the arena lock by the
    caller, the rest are single reads of counters that writers keep exact."""
    lay, q, u32, lru = region.layout, region.q, region.u32, region.lru
    seq0, count0 = lay.stripes_offset >> 3, (lay.stripes_offset + L.S_COUNT) >> 2
    seqs = range(seq0, seq0 + lay.n_stripes * L.STRIPE_Q, L.STRIPE_Q)
    items = sum(u32[count0 + s * L.STRIPE_U32] for s in range(lay.n_stripes))
    used = region.arena.used_bytes()
    payload = sum(q[seq_at + (L.S_PAYLOAD >> 3)] for seq_at in seqs)
    # what the region spends on an entry beyond its key and value: header, padding, slot
    # and access byte (the index and access areas are counted whole, as they are reserved)
    overhead = used - payload + lay.index_slots * 9  # 8-byte slot + its access byte
    return {
        "region": region.name,
        "layout_version": L.LAYOUT_VERSION,
        "engine": engine,
        "region_bytes": lay.region_bytes,
        "arena_bytes": lay.arena_bytes,
        "arena_used_bytes": used,
        "arena_free_bytes": region.arena.free_bytes(),
        "payload_bytes": payload,
        "index_slots": lay.index_slots,
        "n_stripes": lay.n_stripes,
        "collections": len(region.colls.live()),
        "collection": collection,
        "collection_items": collection_items,
        "items": items,
        "hits": q[L.H_HITS >> 3],
        "misses": q[L.H_MISSES >> 3],
        "sets": sum(q[seq_at + (L.S_WRITES >> 3)] for seq_at in seqs),
        "deletes": q[L.H_DELETES >> 3],
        "evictions": q[L.H_EVICTIONS >> 3],
        "expirations": q[L.H_EXPIRATIONS >> 3],
        "segments": {
            name: {"items": lru.items(seg), "bytes": lru.bytes(seg)}
            for name, seg in (("probation", L.SEG_PROBATION), ("protected", L.SEG_PROTECTED))
        },
        "protected_limit_bytes": lru.protected_limit(),
        "retired_blocks": retired[0],
        "retired_bytes": retired[1],
        "open_views": region.pins.open_pins,
        "overhead_bytes_per_item": round(overhead / items, 1) if items else None,
        # a replica's primary (its header's primary field), None on any other region
        "replica_of": bytes(region.mm[L.H_PRIMARY:L.H_PRIMARY + L.PRIMARY_BYTES])
        .rstrip(b"\0").decode(errors="replace") or None,
        "replication": _replication(region),
    }


def _replication(region: SharedRegion) -> dict[str, Any] | None:
    """The header's replication position (layout.py), None on a region that never replicated:
    a primary's history and offset, or the history a replica follows and the offset it has
    applied; the epoch. A replica node's stats add its lag (broker/replication.py)."""
    raw = bytes(region.mm[L.H_REPL_ID:L.H_REPL_ID + 40]).rstrip(b"\0")
    if not raw:
        return None
    return {"repl_id": raw.decode(errors="replace"), "offset": region.q[L.H_REPL_OFFSET >> 3],
            "epoch": region.q[L.H_REPL_EPOCH >> 3]}
