/* shmkv/_core_src/insert.c: the Writer's inserts and relocating overwrites: put_locked's branch
 * that builds the new entry in a block of its own (writer.py), in C, when the arena has a free
 * block that fits and nothing unusual is asked for. Everything that needs eviction or expiry
 * (no block fits, the stripe at its max count, an expired entry seen by the periodic expiry
 * sampling), a damaged list or a lock that needs a repair goes to Python before anything
 * changes.
 *
 * The order is the Python engine's, so that a writer killed anywhere leaves what a Python
 * writer killed there leaves: the new block is allocated, given its key and header and put on
 * the probation list (arena lock); the value and checksum are written while no reader can reach
 * the block; then, between the stripe's two seq bumps, one slot store publishes it (the
 * PUBLISHED bit after the slot, layout 7), with the count, the collection's count and the
 * payload; only then is the old block (a relocation's) unlinked and freed (retired if a view
 * pins it). Unlike Python, the
 * arena lock is held from the allocation to that free: one lock section instead of two, and no
 * way to fail between them. */
#include "writer.h"

static inline void
add64(uint8_t *p, uint64_t d)
{
    st64(p, ld64(p, memory_order_relaxed) + d, memory_order_relaxed);
}

/* writer.h */
int
writer_insert_locked(Writer *self, uint8_t *rec, uint64_t stripe, uint64_t h, const char *key,
                     uint32_t klen, wreq *r, uint64_t exp, uint8_t *old_e, uint64_t slot_no,
                     int events)
{
    uint8_t *const base = self->map.base;
    if (!self->ext)
        return FAST_FALLBACK;
    const uint32_t vlen = r->vlen;
    const uint64_t need = (ENTRY_HEADER_BYTES + (uint64_t)klen + vlen + ALIGN - 1)
                          & ~(uint64_t)(ALIGN - 1);
    if (need > self->arena_last - self->arena_first || need > MAX_BLOCK_BYTES)
        return FAST_FALLBACK; /* Python raises ValueTooLarge */
    const uint64_t old_off = old_e ? (uint64_t)(old_e - base) : 0;
    if (old_e) {
        if (!writer_can_retire(self, old_e))
            return FAST_FALLBACK; /* a pinned block, and no view state to tell: Python's */
    }
    else if (ld32(rec + S_COUNT) >= self->max_count) {
        return FAST_FALLBACK; /* the stripe must evict first */
    }
    uint64_t writes = ld64(rec + S_WRITES, memory_order_relaxed) + 1;
    if (!(writes & VERSION_MASK))
        writes++;
    if (writes > MAX_WRITES)
        return FAST_FALLBACK; /* garbage: Python raises CorruptRegion */
    /* Every WRITER_EXPIRY_EVERY-th write samples slots for expired entries (allocate_locked):
     * when one looks expired the whole write is Python's, which removes it; else the pass
     * would only move the cursor past them, which we do under the arena lock below. */
    uint64_t cursor = 0;
    const int sample = !(writes % WRITER_EXPIRY_EVERY);
    if (sample) {
        int due = writer_expiry_due(self, &cursor, 1);
        if (due)
            return due < 0 ? FAST_ERROR : FAST_FALLBACK;
    }

    int rc = lock_arena(self);
    if (rc <= 0)
        return rc < 0 ? FAST_ERROR : FAST_FALLBACK;
    /* the old block must be freeable before the new one is taken: a relocation has no way
     * back once it is published */
    if (old_e && (lru_unlink(self, old_off, 1) != A_OK
                  || arena_free_or_retire(self, old_off, 1) != A_OK)) {
        unlock_arena(self);
        return FAST_FALLBACK; /* Python raises CorruptRegion */
    }
    uint64_t off = 0;
    rc = arena_alloc(self, (uint32_t)need, &off);
    if (rc == A_NONE || rc == A_GARBAGE) {
        unlock_arena(self);
        return FAST_FALLBACK; /* eviction, or Python's CorruptRegion */
    }
    if (rc != A_OK)
        goto torn;
    /* the write is ours now: its expiry pass found nothing and moves the cursor only (an
     * arena field) */
    if (sample)
        st64(base + H_EXPIRE_CURSOR, cursor, memory_order_relaxed);
    uint8_t *const e = base + off;
    uint8_t *const body = e + ENTRY_HEADER_BYTES;
    /* fill_entry(new=True): the key goes in before the block joins a list, so that an evictor
     * looking at it computes this stripe, finds it locked by us, and leaves it alone */
    memcpy(body, key, klen);
    st64(e + E_EXPIRES_AT, exp, memory_order_relaxed);
    st32(e + E_VERSION, (uint32_t)writes);
    st32(e + E_VALUE_LEN, 0);
    st32(e + E_KEY_COLL, klen | self->coll_hi);
    if (lru_push_head(self, off, SEG_PROBATION) != A_OK)
        goto torn;

    st64(rec + S_WRITES, writes, memory_order_relaxed);
    add64(rec + S_CHANGES, 1);
    /* fill_entry(new=False): the value, while no reader can reach the block */
    memcpy(body + klen, r->val, vlen);
    st32(e + E_VALUE_LEN, vlen);
    st8(e + E_KIND, (uint8_t)(ld8(e + E_KIND) & ~KIND_MASK));
    st32(e + E_CHECKSUM, (uint32_t)xxh3_64(body, (size_t)klen + vlen, self->seed));

    const uint64_t seq = ld64(rec + S_SEQ, memory_order_relaxed);
    st64(rec + S_SEQ, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    const uint64_t ref = (off - self->arena_off) >> 3;
    const uint64_t slot = (h >> 32) << 32 | ref;
    uint8_t *const slots = base + self->index_off;
    if (old_e) { /* an overwrite is a use of the key */
        add64(rec + S_PAYLOAD, -(uint64_t)((ld32(old_e + E_KEY_COLL) & KEY_LEN_MASK)
                                           + ld32(old_e + E_VALUE_LEN)));
        st64(slots + slot_no * 8, slot, memory_order_relaxed);
        st8(base + self->access_off + slot_no, 1);
    }
    else { /* index.insert_locked: the first empty slot of the key's probe run */
        const uint32_t per = self->per, home = (uint32_t)((h >> 32) % per);
        uint32_t i = home;
        const uint64_t first = stripe * per;
        while (ld64(slots + (first + i) * 8, memory_order_relaxed)) {
            i = i + 1 == per ? 0 : i + 1;
            if (i == home) /* a whole lap: never in a sound stripe */
                goto torn;
        }
        st64(slots + (first + i) * 8, slot, memory_order_relaxed);
        st8(base + self->access_off + first + i, 0);
        st32(rec + S_COUNT, ld32(rec + S_COUNT) + 1);
        uint8_t *count = base + self->counts_off
                         + ((uint64_t)stripe * self->max_colls + self->coll) * 4;
        st32(count, ld32(count) + 1);
    }
    /* after the slot store: a writer killed between the two leaves it unmarked, and recovery
     * does not bring it back */
    atomic_signal_fence(memory_order_seq_cst);
    st8(e + E_KIND, (uint8_t)(ld8(e + E_KIND) | PUBLISHED));
    add64(rec + S_PAYLOAD, (uint64_t)klen + vlen);
    atomic_thread_fence(memory_order_release);
    st64(rec + S_SEQ, seq + 2, memory_order_release);
    if (old_e) { /* only now: a reader that still copies from it saw seq move and retries */
        lru_unlink(self, old_off, 0);
        if (arena_free_or_retire(self, old_off, 0) != A_OK) /* retired if a view pins it */
            goto torn;
    }
    unlock_arena(self);
    if (events)
        emit_event(self, rec, stripe, EV_SET, key, klen);
    r->cas_ok = 1;
    r->writes = writes;
    r->sampled = sample;
    return FAST_DONE;
torn:
    unlock_arena(self);
    PyErr_SetString(self->corrupt_exc, "arena, segment lists or index: a link or block word is "
                    "not what it must be; the region is corrupt: run `shmkv doctor --repair`, "
                    "or unlink the region and create it again");
    return FAST_ERROR;
}
