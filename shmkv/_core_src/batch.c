/* shmkv/_core_src/batch.c: Reader.get_many and Reader.get_list, the read of many keys at once.
 *
 * A get of a random key waits on three dependent cache (and TLB) misses: the key's slot, the
 * entry's header and key, the value. get_many overlaps them across keys (memory-level
 * parallelism, as hash joins and batched lookups do): it takes the keys in groups of
 * BATCH_GROUP and, for each group,
 *   1. coerces and hashes every key, and prefetches each key's home slot;
 *   2. reads each key's slots from home up to the first one with its tag (or an empty one,
 *      BATCH_PROBE_HINT slots at most), and prefetches that entry's header, key and the first
 *      line of its value; then (2b) reads each such entry's value length and prefetches the
 *      value's next lines, up to BATCH_VALUE_BYTES (without 2b: ~0.7x a get, not ~0.4x);
 *   3. reads each key, in order, exactly as get does (reader_read_hashed: the seqlock check,
 *      the bounds checks, expiry, the access byte, the counts, the GIL released for big values).
 * The loads of step 2 are plain hints, neither validated nor trusted: a slot or an entry
 * changed meanwhile only makes a prefetch useless. Correctness is step 3's, get's own code.
 *
 * What a caller sees is exactly what a loop of get would give: {key as given: value} of the
 * keys present, in the keys' order (get_list: a list of one value or None per key, in the
 * keys' order, which is what a node sends back without building a dict first; given
 * max_bytes, the list stops after the value that takes the values' bytes past it, so a node
 * copies at most one value more than its reply limit before it refuses the batch), each key
 * read and counted once per occurrence. A key that cannot be coerced, or an iterator that
 * raises, stops the batch where the loop would stop: the keys before it are read and counted
 * first, then the error is raised as it was (the only difference being that up to
 * BATCH_GROUP - 1 keys are coerced, and taken from the iterator, ahead of their read).
 */
#include "core.h"

/* BATCH_GROUP (core.h), keys per group: 32 measured best here (16: ~0.44x a get, 32 and 64:
 * ~0.41x; 8: ~0.5x) */
/* how much of a value step 2b prefetches: its first lines; the rest is left to the hardware */
#define BATCH_VALUE_BYTES 256
/* step 2 looks for a key's tag in at most this many slots from its home */
#define BATCH_PROBE_HINT 8

/* the error being raised, put aside while the keys before it are read */
typedef struct {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc;
#else
    PyObject *type, *value, *tb;
#endif
} Stashed;

static inline void
stash(Stashed *s)
{
#if PY_VERSION_HEX >= 0x030C0000
    s->exc = PyErr_GetRaisedException();
#else
    PyErr_Fetch(&s->type, &s->value, &s->tb);
#endif
}

static inline void
unstash(Stashed *s, int raise)
{
#if PY_VERSION_HEX >= 0x030C0000
    if (raise)
        PyErr_SetRaisedException(s->exc);
    else
        Py_XDECREF(s->exc);
#else
    if (raise) {
        PyErr_Restore(s->type, s->value, s->tb);
    }
    else {
        Py_XDECREF(s->type);
        Py_XDECREF(s->value);
        Py_XDECREF(s->tb);
    }
#endif
}

/* step 1 for one key */
void
batch_hash(const Reader *self, BatchKey *p)
{
    p->h = xxh3_64(p->data, (size_t)p->len, self->seed);
    const uint64_t stripe = p->h & self->smask;
    __builtin_prefetch(self->map.base + self->index_off
                       + (stripe * self->per + (uint32_t)(p->h >> 32) % self->per) * 8);
}

/* step 2 for one key: the guess of where its entry is (p->at), prefetched */
static inline void
prefetch_entry(const Reader *self, BatchKey *p)
{
    const uint8_t *const base = self->map.base;
    const uint64_t stripe = p->h & self->smask;
    const uint32_t tag = (uint32_t)(p->h >> 32), per = self->per;
    const uint8_t *const slots = base + self->index_off + stripe * per * 8;
    uint32_t i = tag % per;
    p->at = 0;
    for (uint32_t left = per < BATCH_PROBE_HINT ? per : BATCH_PROBE_HINT; left; left--) {
        const uint64_t v = ld64(slots + (uint64_t)i * 8, memory_order_relaxed);
        if (!v)
            return;
        if ((uint32_t)(v >> 32) == tag) {
            const uint64_t off = (v & 0xFFFFFFFFu) * ALIGN + self->arena_off;
            const uint64_t at = off + ENTRY_HEADER_BYTES + (uint64_t)p->len;
            if (at < self->arena_end) {
                __builtin_prefetch(base + off + E_EXPIRES_AT); /* what the read loads */
                __builtin_prefetch(base + at - 1); /* the key's end */
                __builtin_prefetch(base + at);     /* the value's first line */
                p->at = at;
            }
            __builtin_prefetch(base + self->access_off + stripe * per + i);
            return;
        }
        i = i + 1 == per ? 0 : i + 1;
    }
}

/* step 2b for one key: the rest of the value's first BATCH_VALUE_BYTES, prefetched */
static inline void
prefetch_value(const Reader *self, const BatchKey *p)
{
    if (!p->at)
        return;
    const uint8_t *const base = self->map.base;
    const uint64_t off = p->at - ENTRY_HEADER_BYTES - (uint64_t)p->len;
    uint64_t end = p->at + ld32(base + off + E_VALUE_LEN);
    if (end > p->at + BATCH_VALUE_BYTES)
        end = p->at + BATCH_VALUE_BYTES;
    if (end > self->arena_end)
        return;
    for (uint64_t line = (p->at | 63) + 1; line < end; line += 64)
        __builtin_prefetch(base + line);
}

void
batch_prefetch(const Reader *self, BatchKey *keys, int n)
{
    for (int k = 0; k < n; k++)
        prefetch_entry(self, &keys[k]);
    /* 2b. and the rest of each value's first lines, now that its length may be there */
    for (int k = 0; k < n; k++)
        prefetch_value(self, &keys[k]);
}

PyObject *
reader_get_many(Reader *self, PyObject *keys, int as_list, Py_ssize_t max_bytes)
{
    Py_ssize_t total_bytes = 0;
    int full = 0; /* get_list: the values read passed max_bytes, the list stops there */
    /* a group's keys: as given (new references), what coerce_key made of them (or NULL: see
     * key_bytes), their bytes */
    PyObject *given[BATCH_GROUP], *owned[BATCH_GROUP];
    BatchKey group[BATCH_GROUP];
    PyObject *it = NULL, *dict = as_list ? PyList_New(0) : PyDict_New();
    if (!dict || !(it = PyObject_GetIter(keys))) {
        Py_XDECREF(dict);
        return NULL;
    }
    int last = 0;
    while (!last && !full) {
        /* 1. coerce and hash a group, prefetching each key's home slot */
        int n = 0;
        while (n < BATCH_GROUP) {
            if (!(given[n] = PyIter_Next(it))) {
                last = 1;
                break;
            }
            if (key_bytes(self->coerce_key, given[n], &group[n].data, &group[n].len,
                          &owned[n]) < 0) {
                Py_DECREF(given[n]);
                last = 1;
                break;
            }
            batch_hash(self, &group[n]);
            n++;
        }
        Stashed error;
        const int failed = PyErr_Occurred() != NULL; /* the iterator's or coerce_key's */
        if (failed)
            stash(&error);
        /* 2. find each key's entry, without validating anything, and prefetch it (2b) */
        batch_prefetch(self, group, n);
        /* 3. read them in order, as get does */
        int k = 0, rc = 0;
        for (; k < n && rc >= 0 && !full; k++) {
            PyObject *found = NULL;
            rc = reader_read_hashed(self, group[k].data, group[k].len, group[k].h, WANT_VALUE,
                                    &found);
            if (as_list) {
                if (rc > 0 && max_bytes >= 0 && PyBytes_Check(found)
                    && (total_bytes += PyBytes_GET_SIZE(found)) > max_bytes)
                    full = 1; /* this value is the last one copied */
                if (rc >= 0)
                    rc = PyList_Append(dict, rc > 0 ? found : Py_None);
                Py_XDECREF(found);
            }
            else if (rc > 0) {
                rc = PyDict_SetItem(dict, given[k], found);
                Py_DECREF(found);
            }
            Py_XDECREF(owned[k]);
            Py_DECREF(given[k]);
        }
        for (; k < n; k++) { /* those after a read that failed */
            Py_XDECREF(owned[k]);
            Py_DECREF(given[k]);
        }
        if (failed) /* else the read's error is the one the loop would raise; a full list
                       stopped before the key that failed */
            unstash(&error, rc >= 0 && !full);
        if ((failed && !full) || rc < 0) {
            Py_DECREF(it);
            Py_DECREF(dict);
            return NULL;
        }
    }
    Py_DECREF(it);
    return dict;
}
