/* shmkv/_core_src/writer.h: what the Writer's files share: the Writer object (writer.c), a
 * call's request to the fast path and its outcomes (fastpath.c), the stripe lock (lock.c) and
 * the argument parsing (args.c). writer.c explains the whole. */
#ifndef SHMKV_WRITER_H
#define SHMKV_WRITER_H

#include "core.h"

/* --- the Writer object (writer.c) --------------------------------------------------------- */
typedef struct {
    PyObject_HEAD
    MappedView map;       /* first, as in every MappedObject */
    uint64_t smask;       /* n_stripes - 1 */
    uint32_t per;         /* slots_per_stripe */
    uint32_t max_count;   /* int(per * MAX_LOAD): more entries in a stripe is garbage */
    uint32_t max_ref;     /* the last ref at which a whole entry fits (index.py) */
    uint64_t index_slots;
    uint64_t stripes_off, coll_rec_off, access_off, index_off, arena_off, arena_end;
    uint64_t seed;        /* the region's: checksums */
    uint64_t hseed;       /* seed ^ collection: key hashes */
    uint32_t coll_hi;     /* collection << 16 */
    uint32_t coll;
    uint16_t gen;
    double timeout_s;
    int clock_is_time_ns;
    PyObject *timeout_str; /* format(lock_timeout_s, "g"), for LockTimeout's message */
    PyObject *clock, *coerce_key, *timeout_exc, *corrupt_exc;
    PyObject *write_fallback, *incr_fallback, *expire_hook;
    uint64_t fast, fallbacks, expire_calls;
    /* views (pin.c), set by enable_views(); NULL until then */
    uint64_t procs_off;    /* the process records */
    uint32_t max_procs;
    PyObject *free_pins;   /* the region's PinTable._free: u32 indexes of this process's free
                            * pin slots, shared with the Python path (one owner of that state) */
    PyObject *pin_fallback, *after_unpin, *array_headers, *decode_array, *ndarray_type;
    uint64_t pins_fast, pins_fallback;
    /* last, so that the fields above keep their offsets (and cache lines) */
    PyObject *set_fallback; /* Cache.set in Python, for a set with its options; may be NULL */
    /* inserts, relocations, deletes and events (insert.c, delete.c, alloc.c, events.c); all
     * of them go to Python unless the constructor was given these (ext) */
    int ext;
    uint64_t events_off;     /* the event rings */
    uint64_t ring_bytes;     /* one stripe's ring */
    uint64_t counts_off;     /* the counts area */
    uint32_t max_colls;
    uint64_t arena_first;    /* the first block (arena bytes 0..7 are never allocated) */
    uint64_t arena_last;     /* the sentinel: blocks end at or before it (arena.py's end) */
    PyObject *delete_fallback; /* Cache.delete in Python */
} Writer;

/* --- arguments, with the messages CPython gives for the Python methods (args.c) -------------
 * The handle binds these methods in place of Cache.set/cas/incr, so a call with the wrong
 * arguments must fail as a call of the Python method does (CPython 3.11's wording, self
 * counted). */
typedef struct {
    const char *qualname;
    const char *const *names; /* the parameters after self */
    int n;
    int required;             /* the first `required` have no default */
} signature;

SHMKV_INTERNAL extern const signature set_sig, cas_sig, incr_sig, delete_sig;

/* out[0..sig->n) gets the arguments (NULL for an omitted one with a default): 0, or -1 with
 * CPython's TypeError. */
SHMKV_INTERNAL int parse_args(const signature *sig, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames, PyObject **out);
/* Whether a call passes a keyword that sig does not name (nor "self"). */
SHMKV_INTERNAL int has_other_keyword(const signature *sig, PyObject *kwnames);

/* --- the fast path (fastpath.c) ------------------------------------------------------------- */
enum wop { W_SET, W_CAS, W_INCR };
enum { FAST_ERROR = -1, FAST_FALLBACK = 0, FAST_DONE = 1 };

typedef struct {
    enum wop op;
    const char *val;      /* set, cas: the new value */
    uint32_t vlen;
    Py_buffer held;       /* a memoryview value's buffer, while held.obj (value_release) */
    uint64_t exp;         /* set, cas: the new expires_at_ns */
    uint64_t version;     /* cas */
    int64_t delta;        /* incr */
    /* results */
    int cas_ok;
    int64_t result;       /* incr */
    uint64_t writes;      /* the stripe's new writes counter, 0 if nothing was written */
    int sampled;          /* the write did its expiry sampling itself (an insert's) */
    char digits[24];      /* incr: the new value */
} wreq;

/* The arguments of a call prepared in r (value_bytes: 1 or 0 for Python; expiry: 1, 0 for
 * Python or -1 if the clock raised), then the call's fast path: FAST_DONE, FAST_FALLBACK
 * (nothing was changed) or FAST_ERROR. */
SHMKV_INTERNAL int value_bytes(PyObject *value, wreq *r);
SHMKV_INTERNAL void value_release(wreq *r);
SHMKV_INTERNAL int expiry(Writer *self, PyObject *ttl, wreq *r);
SHMKV_INTERNAL int writer_run(Writer *self, PyObject *key_obj, wreq *r);
/* writer_run of a key given as bytes (at most MAX_KEY_BYTES) and hashed with self->hseed; key
 * must stay put while the call runs (a lock wait releases the GIL). FAST_ERROR with r->writes
 * set: the write was done, the expiry sampling after it failed. */
SHMKV_INTERNAL int writer_run_hashed(Writer *self, const char *key, uint32_t klen, uint64_t h,
                                     wreq *r);

/* --- the stripe lock (lock.c): 0, or -1 with an exception set -------------------------------- */
SHMKV_INTERNAL int lock_stripe(Writer *self, pthread_mutex_t *m, const uint8_t *rec,
                               uint64_t stripe);
/* The key's stripe locked and claimed as locks.py's acquire_stripe does (*rec: its record):
 * FAST_DONE (held, our pid recorded), FAST_FALLBACK (the stripe needs Python's repair: the
 * lock was given back untouched) or FAST_ERROR. Release with release_stripe. */
SHMKV_INTERNAL int claim_stripe(Writer *self, uint64_t stripe, uint8_t **rec);
static inline void
release_stripe(uint8_t *rec)
{
    st32(rec + S_OWNER_PID, 0);
    pthread_mutex_unlock((pthread_mutex_t *)(void *)(rec + S_MUTEX));
}
/* The arena lock, taken after a stripe lock (locks.py's order): 1 held (our pid recorded),
 * 0 if Python must take it (a dead holder's repair, a wait past lock_timeout_s: nothing was
 * changed, the call goes to Python, which waits, repairs or raises), -1 with an exception. */
SHMKV_INTERNAL int lock_arena(Writer *self);
SHMKV_INTERNAL void unlock_arena(Writer *self);

/* --- the arena and its lists (alloc.c), the arena lock held ----------------------------------
 * arena.py's alloc_locked and free_locked, lru.py's push_head_locked and unlink_locked, with
 * the same choices, so that both engines leave the same bytes. Every check of the shared
 * memory that the Python functions make is made here; the results: */
enum { A_OK = 0, A_NONE = 1, A_GARBAGE = -1 /* nothing changed */, A_TORN = -2 /* changed */ };
#define NBINS 384
#define SMALL_LIMIT 1024
#define H_ARENA_USED 136
#define H_DELETES 160
#define H_EXPIRATIONS 176
#define H_ARENA_OWNER_PID 184 /* u32 */
#define H_SEG_ENDS 256
#define H_RETIRED_HEAD 328  /* u32 */
#define H_RETIRED_COUNT 332 /* u32 */
#define H_RETIRED_BYTES 336
#define H_SEG_ITEMS 272
#define H_SEG_BYTES 288
#define H_BIN_BITMAP 512
#define H_BIN_HEADS 1024
#define FREE_BIT 1u
#define PREV_FREE_BIT 2u
#define MAX_BLOCK_BYTES (0xFFFFFFFFu & SIZE_MASK)
#define E_LRU_PREV 8
#define E_LRU_NEXT 12
#define SEG_PROBATION 1
#define SEG_PROTECTED 2
#define S_EVENTS_HEAD 48
#define S_EVENTS_COUNT 56
#define EVENT_HEADER_BYTES 16
#define EV_SET 1
#define EV_DEL 2
#define EV_EXPIRED 3

/* a used block of at least nbytes in *off: A_OK, A_NONE (none fits: eviction is Python's),
 * A_GARBAGE or A_TORN */
SHMKV_INTERNAL int arena_alloc(Writer *self, uint32_t nbytes, uint64_t *off);
/* free the used block at off, coalescing; check_only: only whether it could be (A_OK or
 * A_GARBAGE), changing nothing */
SHMKV_INTERNAL int arena_free(Writer *self, uint64_t off, int check_only);
/* pins.py's free_or_retire_locked: the block of an entry that left the index is freed, or put
 * on the retired list if a process pins it (its KIND_PINNED bit set and its ref in a process
 * record; views must be enabled to tell: writer_can_retire); check_only as arena_free */
SHMKV_INTERNAL int arena_free_or_retire(Writer *self, uint64_t off, int check_only);
static inline int
writer_can_retire(const Writer *self, const uint8_t *e)
{
    return !(ld8(e + E_KIND) & KIND_PINNED) || self->free_pins != NULL;
}
SHMKV_INTERNAL int lru_push_head(Writer *self, uint64_t off, int seg);
SHMKV_INTERNAL int lru_unlink(Writer *self, uint64_t off, int check_only);

/* --- events (events.c), the stripe lock held ------------------------------------------------ */
/* Whether an event of a key of klen bytes fits a ring (else Python raises ValueTooLarge). */
static inline int
event_fits(const Writer *self, uint32_t klen)
{
    return ((EVENT_HEADER_BYTES + (uint64_t)klen + 7) & ~(uint64_t)7) <= self->ring_bytes / 4;
}
/* events.py's emit_locked, without data; event_fits must hold */
SHMKV_INTERNAL void emit_event(Writer *self, uint8_t *rec, uint64_t stripe, uint8_t kind,
                               const char *key, uint32_t klen);

/* --- inserts and relocations (insert.c) ------------------------------------------------------ */
/* put_locked's branch that builds the entry in a new block (old_e: the key's entry, which is
 * relocated, or NULL for an insert; slot_no its slot), the stripe lock held and nothing changed
 * yet: FAST_DONE, FAST_FALLBACK (still nothing changed) or FAST_ERROR. */
SHMKV_INTERNAL int writer_insert_locked(Writer *self, uint8_t *rec, uint64_t stripe, uint64_t h,
                                        const char *key, uint32_t klen, wreq *r, uint64_t exp,
                                        uint8_t *old_e, uint64_t slot_no, int events);
SHMKV_INTERNAL PyObject *writer_delete(Writer *self, PyObject *const *args, Py_ssize_t nargs,
                                       PyObject *kwnames);

/* Unix ns from the handle's clock: 1 (in *now), 0 if the clock gave something the fast paths
 * leave to Python (not an int, negative, past 2**63), -1 if it raised (fastpath.c). */
SHMKV_INTERNAL int writer_now(Writer *self, uint64_t *now);

/* Whether the region's write fence (H_WRITABLE_UNTIL: 0 = none) lets this write through in C:
 * no fence, or a primary's lease fence still in the future by the system clock (a primary
 * under etcd always has one; sending its every write to Python would cost ~15x). A handle
 * on another clock, or a fence that has passed, goes to Python, which raises or compares by
 * that clock. Read under the key's stripe lock, as Python reads it. */
static inline int
writer_fence_open(const Writer *self, const uint8_t *base)
{
    const uint64_t until = ld64(base + H_WRITABLE_UNTIL, memory_order_relaxed);
    return !until || (self->clock_is_time_ns && realtime_ns() < until);
}

/* A lock-free look at the WRITER_EXPIRY_SLOTS slots from the region's expiry cursor: 1 if one
 * looks expired (or the clock is one the fast path does not read, or, strict, a slot holds a
 * ref outside the arena: Python judges), 0 if none does (*cursor: where the pass would leave
 * the cursor), -1 if the clock raised (fastpath.c). */
SHMKV_INTERNAL int writer_expiry_due(Writer *self, uint64_t *cursor, int strict);

/* ---------------------------------------------------------------------------------------------- */
SHMKV_INTERNAL extern PyTypeObject ViewType;
SHMKV_INTERNAL extern PyTypeObject PinType;
/* Writer.view(key) and Writer.view_array(key): a View, not yet entered */
SHMKV_INTERNAL PyObject *writer_view(Writer *self, PyObject *key, int as_array);
SHMKV_INTERNAL PyObject *writer_enable_views(Writer *self, PyObject *args);
SHMKV_INTERNAL PyObject *writer_pin(Writer *self, PyObject *key);
SHMKV_INTERNAL PyObject *writer_unpin(Writer *self, PyObject *const *args, Py_ssize_t nargs);

/* ---------------------------------------------------------------------------------------------- */

/* Whether this handle's collection is live and its record sound; else Python decides (a dropped
 * collection raises CollectionNotFound, a damaged record CorruptRegion): its name must be of a
 * possible length, and UTF-8, which the fast paths check for ASCII names only. */
static inline int
writer_coll_is_live(const Writer *self)
{
    const uint8_t *c = self->map.base + self->coll_rec_off;
    const uint8_t name_len = ld8(c + C_NAME_LEN);
    if (ld16(c + C_GENERATION) != self->gen || ld8(c + C_STATE) != COLL_LIVE
            || name_len > MAX_COLLECTION_NAME_BYTES)
        return 0;
    uint8_t high = 0;
    for (uint8_t k = 0; k < name_len; k++)
        high |= ld8(c + C_NAME + k);
    return !(high & 0x80);
}

#define FIND_GARBAGE ((uint8_t *)(uintptr_t)1)

/* index.find_locked, the stripe lock held: the key's entry (its offset in *off, the number of
 * its slot, stripe * per + position, in *slot_no), NULL if absent, or FIND_GARBAGE for a ref
 * out of bounds (Python raises CorruptRegion). */
static inline uint8_t *
writer_find_locked(const Writer *self, const char *key, uint32_t klen, uint64_t h, uint64_t *off,
                   uint64_t *slot_no)
{
    uint8_t *const base = self->map.base;
    const uint64_t stripe = h & self->smask;
    const uint32_t per = self->per, tag = (uint32_t)(h >> 32);
    const uint32_t key_coll = self->coll_hi | klen;
    const uint8_t *const slots = base + self->index_off + stripe * per * 8;
    uint32_t i = tag % per;
    for (uint32_t left = per; left; left--) {
        const uint64_t v = ld64(slots + (uint64_t)i * 8, memory_order_relaxed);
        if (!v)
            return NULL;
        if ((uint32_t)(v >> 32) == tag) {
            const uint32_t ref = (uint32_t)v;
            if (!ref || ref > self->max_ref)
                return FIND_GARBAGE;
            const uint64_t o = self->arena_off + (uint64_t)ref * ALIGN;
            if ((ld32(base + o + E_KEY_COLL) & KEY_COLL_MASK) == key_coll
                    && o + ENTRY_HEADER_BYTES + klen <= self->arena_end
                    && memcmp(base + o + ENTRY_HEADER_BYTES, key, klen) == 0) {
                *off = o;
                *slot_no = stripe * per + i;
                return base + o;
            }
        }
        i = i + 1 == per ? 0 : i + 1;
    }
    return NULL;
}

#endif /* SHMKV_WRITER_H */
