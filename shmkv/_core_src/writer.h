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

SHMKV_INTERNAL extern const signature set_sig, cas_sig, incr_sig;

/* out[0..sig->n) gets the arguments (NULL for an omitted one with a default): 0, or -1 with
 * CPython's TypeError. */
SHMKV_INTERNAL int parse_args(const signature *sig, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames, PyObject **out);

/* --- the fast path (fastpath.c) ------------------------------------------------------------- */
enum wop { W_SET, W_CAS, W_INCR };
enum { FAST_ERROR = -1, FAST_FALLBACK = 0, FAST_DONE = 1 };

typedef struct {
    enum wop op;
    const char *val;      /* set, cas: the new value */
    uint32_t vlen;
    uint64_t exp;         /* set, cas: the new expires_at_ns */
    uint64_t version;     /* cas */
    int64_t delta;        /* incr */
    /* results */
    int cas_ok;
    int64_t result;       /* incr */
    uint64_t writes;      /* the stripe's new writes counter, 0 if nothing was written */
    char digits[24];      /* incr: the new value */
} wreq;

/* The arguments of a call prepared in r (value_bytes: 1 or 0 for Python; expiry: 1, 0 for
 * Python or -1 if the clock raised), then the call's fast path: FAST_DONE, FAST_FALLBACK
 * (nothing was changed) or FAST_ERROR. */
SHMKV_INTERNAL int value_bytes(PyObject *value, wreq *r);
SHMKV_INTERNAL int expiry(Writer *self, PyObject *ttl, wreq *r);
SHMKV_INTERNAL int writer_run(Writer *self, PyObject *key_obj, wreq *r);

/* --- the stripe lock (lock.c): 0, or -1 with an exception set -------------------------------- */
SHMKV_INTERNAL int lock_stripe(Writer *self, pthread_mutex_t *m, const uint8_t *rec,
                               uint64_t stripe);

#endif /* SHMKV_WRITER_H */
