/* shmkv/_core_src/delete.c: Writer.delete, the compiled Cache.delete: the key's slot removed by
 * backward shift between the stripe's seq bumps (index.py's remove_locked: access bytes move
 * with their slots), the counts and counters, then the block taken off its list and freed with
 * coalescing (evict.py's unpublish_locked and release_locked), and the EV_DEL (EV_EXPIRED for
 * an entry whose TTL had passed) when events are on; a block that a view pins is retired,
 * not freed (pins.py). A write fence, a dropped collection, a stripe or arena lock that needs
 * a repair, and anything that looks damaged go to Python before anything changes.
 *
 * Unlike Python, which takes the arena lock only for the free, the arena lock is taken before
 * the slot is removed: then nothing can fail between the unpublish and the free. */
#include "writer.h"

static inline void
add64(uint8_t *p, uint64_t d)
{
    st64(p, ld64(p, memory_order_relaxed) + d, memory_order_relaxed);
}

/* Whether removing the slot at pos can shift its run back as index.py does: every slot moved
 * must hold a ref inside the arena, and an empty slot must end the run within one lap. */
static int
shift_ok(const Writer *self, const uint8_t *slots, uint32_t pos)
{
    const uint32_t per = self->per;
    uint32_t hole = pos, j = pos;
    for (uint32_t left = per; left; left--) {
        j = j + 1 == per ? 0 : j + 1;
        const uint64_t v = ld64(slots + (uint64_t)j * 8, memory_order_relaxed);
        if (!v)
            return 1;
        const uint32_t home = (uint32_t)((v >> 32) % per);
        if ((j + per - home) % per >= (j + per - hole) % per) {
            const uint32_t ref = (uint32_t)v;
            if (!ref || ref > self->max_ref)
                return 0;
            hole = j;
        }
    }
    return 0;
}

/* index.py's remove_locked; shift_ok must hold */
static void
remove_slot(Writer *self, uint64_t stripe, uint32_t pos)
{
    uint8_t *const base = self->map.base;
    const uint32_t per = self->per;
    uint8_t *const slots = base + self->index_off + stripe * per * 8;
    uint8_t *const access = base + self->access_off + stripe * per;
    uint32_t hole = pos, j = pos;
    for (uint32_t left = per; left; left--) {
        j = j + 1 == per ? 0 : j + 1;
        const uint64_t v = ld64(slots + (uint64_t)j * 8, memory_order_relaxed);
        if (!v)
            break;
        const uint32_t home = (uint32_t)((v >> 32) % per);
        /* the entry at j may fill the hole unless its home lies cyclically in (hole, j] */
        if ((j + per - home) % per >= (j + per - hole) % per) {
            st64(slots + (uint64_t)hole * 8, v, memory_order_relaxed);
            st8(access + hole, ld8(access + j) ? 1 : 0);
            hole = j;
        }
    }
    st64(slots + (uint64_t)hole * 8, 0, memory_order_relaxed);
    st8(access + hole, 0);
}

/* Under the key's stripe lock: FAST_DONE (*removed: whether a live entry was), FAST_FALLBACK
 * (nothing changed) or FAST_ERROR. */
static int
delete_locked(Writer *self, uint8_t *rec, uint64_t stripe, const char *key, uint32_t klen,
              uint64_t h, int *removed)
{
    uint8_t *const base = self->map.base;
    if (!self->ext || !writer_fence_open(self, base))
        return FAST_FALLBACK; /* Python checks the fence */
    if (self->coll && !writer_coll_is_live(self))
        return FAST_FALLBACK;
    uint64_t off = 0, slot_no = 0;
    uint8_t *const e = writer_find_locked(self, key, klen, h, &off, &slot_no);
    if (e == FIND_GARBAGE)
        return FAST_FALLBACK;
    if (!e) {
        *removed = 0;
        return FAST_DONE;
    }
    const uint64_t exp = ld64(e + E_EXPIRES_AT, memory_order_relaxed);
    int expired = 0;
    if (exp) {
        uint64_t now;
        int rc = writer_now(self, &now);
        if (rc <= 0)
            return rc < 0 ? FAST_ERROR : FAST_FALLBACK;
        expired = exp <= now;
    }
    const int events = ld32(base + H_EVENTS_ENABLED) != 0;
    const uint32_t block = ld32(e + E_BLOCK_WORD) & SIZE_MASK;
    if (!writer_can_retire(self, e) || (events && !event_fits(self, klen))
            || off + block > self->arena_end
            || !shift_ok(self, base + self->index_off + stripe * self->per * 8,
                         (uint32_t)(slot_no - stripe * self->per)))
        return FAST_FALLBACK;
    int rc = lock_arena(self);
    if (rc <= 0)
        return rc < 0 ? FAST_ERROR : FAST_FALLBACK;
    if (lru_unlink(self, off, 1) != A_OK || arena_free_or_retire(self, off, 1) != A_OK) {
        unlock_arena(self);
        return FAST_FALLBACK; /* Python raises CorruptRegion */
    }
    /* unpublish_locked */
    if (events)
        emit_event(self, rec, stripe, expired ? EV_EXPIRED : EV_DEL, key, klen);
    add64(rec + S_CHANGES, 1);
    const uint64_t seq = ld64(rec + S_SEQ, memory_order_relaxed);
    st64(rec + S_SEQ, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    remove_slot(self, stripe, (uint32_t)(slot_no - stripe * self->per));
    st32(rec + S_COUNT, ld32(rec + S_COUNT) - 1);
    uint8_t *count = base + self->counts_off
                     + ((uint64_t)stripe * self->max_colls + self->coll) * 4;
    st32(count, ld32(count) - 1);
    add64(rec + S_PAYLOAD, -(uint64_t)(klen + ld32(e + E_VALUE_LEN)));
    atomic_thread_fence(memory_order_release);
    st64(rec + S_SEQ, seq + 2, memory_order_release);
    /* release_locked: the block leaves its list and is freed */
    lru_unlink(self, off, 0);
    add64(base + (expired ? H_EXPIRATIONS : H_DELETES), 1);
    rc = arena_free_or_retire(self, off, 0); /* retired if a view pins it */
    unlock_arena(self);
    if (rc != A_OK) {
        PyErr_SetString(self->corrupt_exc, "arena: a free list links to a block that is not "
                        "free; the region is corrupt: run `shmkv doctor --repair`, or unlink "
                        "the region and create it again");
        return FAST_ERROR;
    }
    *removed = !expired;
    return FAST_DONE;
}

/* writer.h: delete(key), Cache.delete's signature */
PyObject *
writer_delete(Writer *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[1];
    if (parse_args(&delete_sig, args, nargs, kwnames, a) < 0)
        return NULL;
    PyObject *key_obj = a[0];
    if (mapped_enter(&self->map) < 0)
        return NULL;
    const char *key;
    Py_ssize_t klen;
    PyObject *owned, *res = NULL;
    int removed = 0, rc;
    if (key_bytes(self->coerce_key, key_obj, &key, &klen, &owned) < 0) {
        rc = FAST_ERROR;
    }
    else {
        const uint64_t h = xxh3_64(key, (size_t)klen, self->hseed);
        uint8_t *rec = NULL;
        rc = claim_stripe(self, h & self->smask, &rec);
        if (rc == FAST_DONE) {
            rc = delete_locked(self, rec, h & self->smask, key, (uint32_t)klen, h, &removed);
            release_stripe(rec);
        }
        Py_XDECREF(owned);
    }
    if (rc == FAST_DONE) {
        self->fast++;
        res = PyBool_FromLong(removed);
    }
    else if (rc == FAST_FALLBACK) {
        self->fallbacks++;
        res = self->delete_fallback ? PyObject_CallOneArg(self->delete_fallback, key_obj) : NULL;
        if (!self->delete_fallback)
            PyErr_SetString(PyExc_TypeError, "delete needs the constructor's delete_fallback");
    }
    mapped_leave(&self->map);
    return res;
}
