/* shmkv._core: the compiled read path of a shmkv region, and the compiled fast path of its
 * common writes.
 *
 * One `Reader` per Cache handle does what the pure-Python Reader does (reader.py, formerly
 * Cache._read), in C, with the same arguments and results: coerce the key, hash it with xxh3_64
 * (seed ^ collection), probe the key's stripe sub-table, check the entry, copy the value, and
 * validate the copy with the stripe's seqlock, retrying if a writer moved it. It takes no lock
 * and writes nothing but the slot's access byte on a hit.
 *
 * One `Writer` per Cache handle does the common writes (set, cas and incr of a key that is
 * there, whose new entry fits its block: an in-place overwrite) exactly as the Python engine's
 * in-place branch (Cache._put_locked, _fill_entry) does, under the stripe's robust mutex
 * (locks.py's protocol), and hands every other case, before it has changed anything, to the
 * Python engine through the fallbacks it was given: inserts, relocations, pinned entries,
 * events, the write fence, dropped collections, stripes that need a repair, every unusual
 * argument and every error. See "the Writer" below.
 *
 * The region format is the table in layout.py; the constants used here are #defined below and
 * exported as `_core.LAYOUT` (tests/unit/test_core.py checks them against layout.py).
 *
 * Memory ordering, the standard seqlock reader: seq is loaded with acquire, then the slots, the
 * entry fields (relaxed atomic loads of their natural width), key and value bytes are read,
 * then an acquire fence and seq is loaded again. Whatever was read is used only if seq was even
 * and unchanged; a block freed and reused meanwhile can hold any bytes, so every offset is
 * bounds-checked against the arena before it is followed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include "_vendor/xxhash.h"

/* --- layout (layout.py, LAYOUT_VERSION 6): same names there ------------------------------- */
#define LAYOUT_VERSION 6
#define ALIGN 8
#define STRIPE_BYTES 128
#define S_SEQ 0
#define S_COUNT 8            /* u32 */
#define S_OWNER_PID 12       /* u32 */
#define S_WRITES 32
#define S_PAYLOAD 40
#define S_CHANGES 64
#define S_MUTEX 80           /* pthread_mutex_t, 48 bytes reserved */
#define H_EXPIRE_CURSOR 320
#define H_EVENTS_ENABLED 344 /* u32 */
#define H_LOCK_KIND 348      /* u32 */
#define H_WRITABLE_UNTIL 352
#define H_ARENA_MUTEX 2560   /* never taken here: every path that needs it goes to Python */
#define LOCKS_ROBUST 2
#define COLLECTION_BYTES 64
#define C_GENERATION 0       /* u16 */
#define COLL_LIVE 1
#define MAX_COLLECTION_NAME_BYTES 40
#define ENTRY_HEADER_BYTES 46
#define MIN_BLOCK_BYTES 48
#define E_BLOCK_WORD 0       /* u32 */
#define E_CHECKSUM 4         /* u32 */
#define E_VERSION 16
#define E_EXPIRES_AT 24
#define E_VALUE_LEN 32       /* u32 */
#define E_KEY_COLL 36        /* u32 */
#define E_SLOT_NO 40         /* u32 */
#define E_KIND 44            /* u8 */
#define KIND_BYTES 0
#define KIND_PINNED 0x80
#define SIZE_MASK 0xFFFFFFF8u
#define MAX_KEY_BYTES 4096
/* not named in layout.py: the u32 after the 8-byte magic (layout.HEADER "<8sI..."), and the
 * collection record's u8 state, after its u16 generation (layout.COLLECTION "<HBB...") */
#define H_LAYOUT_VERSION 8
#define C_STATE 2
#define C_NAME_LEN 3         /* u8 */
#define C_NAME 24
#define S_MUTEX_BYTES 48
/* what a reader loads at E_EXPIRES_AT: expires_at_ns u64, value_len u32, key_coll u32 */
#define ENTRY_READ_BYTES 16

/* --- read path (cache.py, reader.py) ----------------------------------------------------- */
#define READ_SPINS_BEFORE_YIELD 64
/* values at least this large are copied with the GIL released */
#define GIL_RELEASE_BYTES (1u << 20)

/* --- write path (cache.py) ---------------------------------------------------------------- */
#define INPLACE_SLACK_BYTES 64
#define INPLACE_MAX_BYTES (64u << 10)
#define WRITER_EXPIRY_EVERY 16
#define WRITER_EXPIRY_SLOTS 16
#define MAX_LOAD 0.9                           /* layout.MAX_LOAD: a stripe's max_count */
#define MAX_TTL_S (10.0 * 365 * 86400)         /* cache._expires_at */
#define MAX_WRITES (((uint64_t)1 << 56) - 1)   /* repair.MAX_WRITES: versions are u64 */
/* a contended lock is waited for in slices of this, so that signal handlers run (locks.py) */
#define WAIT_SLICE_NS 50000000L

_Static_assert(sizeof(_Atomic uint64_t) == 8 && _Alignof(_Atomic uint64_t) == 8,
               "u64 fields must be loadable as naturally aligned atomics");
_Static_assert(sizeof(_Atomic uint32_t) == 4 && sizeof(_Atomic uint8_t) == 1,
               "u32/u8 fields must be loadable as atomics");
_Static_assert(E_EXPIRES_AT + ENTRY_READ_BYTES <= ENTRY_HEADER_BYTES, "entry read in header");
_Static_assert(sizeof(pthread_mutex_t) <= S_MUTEX_BYTES && S_MUTEX + S_MUTEX_BYTES <= STRIPE_BYTES,
               "a stripe's mutex must fit its record");
_Static_assert(S_MUTEX % _Alignof(pthread_mutex_t) == 0 && H_ARENA_MUTEX % 64 == 0,
               "mutexes must be aligned");

static PyObject *time_ns_func; /* time.time_ns, to recognise the default clock */

static inline uint64_t
ld64(const uint8_t *p, memory_order mo)
{
    return atomic_load_explicit((const _Atomic uint64_t *)(const void *)p, mo);
}

static inline uint32_t
ld32(const uint8_t *p)
{
    return atomic_load_explicit((const _Atomic uint32_t *)(const void *)p,
                                memory_order_relaxed);
}

static inline uint16_t
ld16(const uint8_t *p)
{
    return atomic_load_explicit((const _Atomic uint16_t *)(const void *)p,
                                memory_order_relaxed);
}

static inline uint8_t
ld8(const uint8_t *p)
{
    return atomic_load_explicit((const _Atomic uint8_t *)(const void *)p, memory_order_relaxed);
}

static inline void
st64(uint8_t *p, uint64_t v, memory_order mo)
{
    atomic_store_explicit((_Atomic uint64_t *)(void *)p, v, mo);
}

static inline void
st32(uint8_t *p, uint32_t v)
{
    atomic_store_explicit((_Atomic uint32_t *)(void *)p, v, memory_order_relaxed);
}

static inline void
st8(uint8_t *p, uint8_t v)
{
    atomic_store_explicit((_Atomic uint8_t *)(void *)p, v, memory_order_relaxed);
}

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/* --- the Reader type -------------------------------------------------------------------- */
typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;        /* view holds the buffer: released by the last user after close() */
    int closed;
    Py_ssize_t inflight; /* method calls in progress (one may have released the GIL) */
    uint8_t *base;
    uint64_t smask;      /* n_stripes - 1 */
    uint32_t per;        /* slots_per_stripe */
    uint64_t stripes_off, index_off, access_off, arena_off, arena_end;
    uint64_t seed;       /* region seed ^ collection */
    uint32_t coll_hi;    /* collection << 16 */
    int clock_is_time_ns;
    PyObject *clock, *coerce_key, *wait_writer, *corrupt_exc;
    uint64_t hits, misses;
} Reader;

static void
reader_release(Reader *self)
{
    if (self->has_view) {
        self->has_view = 0;
        self->base = NULL;
        PyBuffer_Release(&self->view);
    }
}

static inline int
reader_enter(Reader *self)
{
    if (self->closed) {
        PyErr_SetString(PyExc_ValueError, "closed");
        return -1;
    }
    self->inflight++;
    return 0;
}

static inline void
reader_leave(Reader *self)
{
    if (--self->inflight == 0 && self->closed)
        reader_release(self);
}

static int
Reader_init(Reader *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "n_stripes", "slots_per_stripe", "stripes_offset",
                             "index_offset", "access_offset", "arena_offset", "arena_bytes",
                             "seed", "coll", "clock", "coerce_key", "wait_writer",
                             "corrupt_exc", NULL};
    PyObject *buffer, *seed_obj, *clock, *coerce_key, *wait_writer, *corrupt_exc;
    Py_ssize_t n_stripes, per, stripes_off, index_off, access_off, arena_off, arena_bytes, coll;

    if (self->has_view || self->clock) {
        PyErr_SetString(PyExc_TypeError, "Reader is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnnnnnnnOnOOOO:Reader", kwlist, &buffer,
                                     &n_stripes, &per, &stripes_off, &index_off, &access_off,
                                     &arena_off, &arena_bytes, &seed_obj, &coll, &clock,
                                     &coerce_key, &wait_writer, &corrupt_exc))
        return -1;
    if (n_stripes < 1 || n_stripes > 256 || (n_stripes & (n_stripes - 1))) {
        PyErr_SetString(PyExc_ValueError, "n_stripes must be a power of two between 1 and 256");
        return -1;
    }
    if (per < 1 || per > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "slots_per_stripe must be between 1 and 2**24");
        return -1;
    }
    if (coll < 0 || coll > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "coll must be between 0 and 65535");
        return -1;
    }
    if (stripes_off < 0 || index_off < 0 || access_off < 0 || arena_off < 0 || arena_bytes < 0
            || (stripes_off | index_off | arena_off) % ALIGN) {
        PyErr_SetString(PyExc_ValueError, "offsets must be >= 0, and those of the stripes, "
                                          "the index and the arena multiples of 8");
        return -1;
    }
    unsigned long long seed = PyLong_AsUnsignedLongLong(seed_obj);
    if (seed == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (!PyCallable_Check(clock) || !PyCallable_Check(coerce_key)
            || !PyCallable_Check(wait_writer)) {
        PyErr_SetString(PyExc_TypeError, "clock, coerce_key and wait_writer must be callable");
        return -1;
    }
    if (!PyExceptionClass_Check(corrupt_exc)) {
        PyErr_SetString(PyExc_TypeError, "corrupt_exc must be an exception class");
        return -1;
    }
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    self->has_view = 1;
    uint64_t len = (uint64_t)self->view.len;
    uint64_t ns = (uint64_t)n_stripes, pp = (uint64_t)per;
    const char *bad = NULL;
    if ((uintptr_t)self->view.buf % ALIGN)
        bad = "buffer is not 8-byte aligned";
    else if (len < H_LAYOUT_VERSION + 4
             || ld32((uint8_t *)self->view.buf + H_LAYOUT_VERSION) != LAYOUT_VERSION)
        bad = "buffer is not a region of the layout version shmkv._core was built for";
    else if ((uint64_t)stripes_off + ns * STRIPE_BYTES > len
             || (uint64_t)access_off + ns * pp > len
             || (uint64_t)index_off + ns * pp * 8 > len
             || (uint64_t)arena_off + (uint64_t)arena_bytes > len)
        bad = "layout does not fit in the buffer";
    if (bad) {
        reader_release(self);
        PyErr_SetString(PyExc_ValueError, bad);
        return -1;
    }
    self->base = (uint8_t *)self->view.buf;
    self->smask = ns - 1;
    self->per = (uint32_t)per;
    self->stripes_off = (uint64_t)stripes_off;
    self->index_off = (uint64_t)index_off;
    self->access_off = (uint64_t)access_off;
    self->arena_off = (uint64_t)arena_off;
    self->arena_end = (uint64_t)arena_off + (uint64_t)arena_bytes;
    self->seed = (uint64_t)seed ^ (uint64_t)coll;
    self->coll_hi = (uint32_t)coll << 16;
    self->clock_is_time_ns = clock == time_ns_func;
    Py_INCREF(clock);
    self->clock = clock;
    Py_INCREF(coerce_key);
    self->coerce_key = coerce_key;
    Py_INCREF(wait_writer);
    self->wait_writer = wait_writer;
    Py_INCREF(corrupt_exc);
    self->corrupt_exc = corrupt_exc;
    self->closed = 0;
    return 0;
}

static int
Reader_traverse(Reader *self, visitproc visit, void *arg)
{
    Py_VISIT(self->clock);
    Py_VISIT(self->coerce_key);
    Py_VISIT(self->wait_writer);
    Py_VISIT(self->corrupt_exc);
    if (self->has_view)
        Py_VISIT(self->view.obj);
    return 0;
}

static int
Reader_clear(Reader *self)
{
    self->closed = 1;
    if (!self->inflight)
        reader_release(self);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->coerce_key);
    Py_CLEAR(self->wait_writer);
    Py_CLEAR(self->corrupt_exc);
    return 0;
}

static void
Reader_dealloc(Reader *self)
{
    PyObject_GC_UnTrack(self);
    Reader_clear(self);
    reader_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Reader_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    Reader *self = (Reader *)type->tp_alloc(type, 0);
    if (self)
        self->closed = 1; /* until __init__ succeeds */
    return (PyObject *)self;
}

/* --- the read ----------------------------------------------------------------------------- */

/* The key's bytes: exact bytes and str directly, anything else (and every error) through
 * coerce_key, so that errors carry the project's messages. *owned gets a new reference to
 * keep while the bytes are used, or NULL. */
static inline int
key_bytes(Reader *self, PyObject *key, const char **data, Py_ssize_t *len, PyObject **owned)
{
    *owned = NULL;
    if (PyBytes_CheckExact(key)) {
        Py_ssize_t n = PyBytes_GET_SIZE(key);
        if (n <= MAX_KEY_BYTES) {
            *data = PyBytes_AS_STRING(key);
            *len = n;
            return 0;
        }
    }
    else if (PyUnicode_CheckExact(key)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(key, &n);
        if (s && n <= MAX_KEY_BYTES) {
            *data = s;
            *len = n;
            return 0;
        }
        if (!s)
            PyErr_Clear();
    }
    PyObject *b = PyObject_CallOneArg(self->coerce_key, key);
    if (!b)
        return -1;
    if (!PyBytes_Check(b) || PyBytes_GET_SIZE(b) > MAX_KEY_BYTES) {
        Py_DECREF(b);
        PyErr_SetString(PyExc_TypeError, "coerce_key must return bytes of at most "
                                         "MAX_KEY_BYTES");
        return -1;
    }
    *data = PyBytes_AS_STRING(b);
    *len = PyBytes_GET_SIZE(b);
    *owned = b;
    return 0;
}

/* 1 if an entry that expires at exp (unix ns, not 0) has expired, 0 if not, -1 on error */
static int
expired(Reader *self, uint64_t exp)
{
    if (self->clock_is_time_ns) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        return exp <= now;
    }
    PyObject *now = PyObject_CallNoArgs(self->clock);
    if (!now)
        return -1;
    if (PyLong_CheckExact(now)) {
        unsigned long long n = PyLong_AsUnsignedLongLong(now);
        if (!(n == (unsigned long long)-1 && PyErr_Occurred())) {
            Py_DECREF(now);
            return exp <= n;
        }
        PyErr_Clear(); /* negative or beyond u64: compare as Python does */
    }
    PyObject *e = PyLong_FromUnsignedLongLong(exp);
    if (!e) {
        Py_DECREF(now);
        return -1;
    }
    int live = PyObject_RichCompareBool(e, now, Py_GT); /* `exp > clock()` in reader.py */
    Py_DECREF(e);
    Py_DECREF(now);
    return live < 0 ? -1 : !live;
}

static Py_ssize_t
call_wait_writer(Reader *self, Py_ssize_t spins, uint64_t stripe)
{
    PyObject *args[2];
    args[0] = PyLong_FromSsize_t(spins);
    args[1] = PyLong_FromUnsignedLongLong(stripe);
    PyObject *res = NULL;
    if (args[0] && args[1])
        res = PyObject_Vectorcall(self->wait_writer, args, 2, NULL);
    Py_XDECREF(args[0]);
    Py_XDECREF(args[1]);
    if (!res)
        return -1;
    Py_ssize_t n = PyLong_AsSsize_t(res);
    Py_DECREF(res);
    if (n < 0 && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "wait_writer returned a negative spin count");
    return n;
}

enum want { WANT_CONTAINS, WANT_VALUE, WANT_VERSIONED };

/* Read key consistently. Returns 1 on a hit (*out: new reference to the value, the
 * (value, version) tuple, or Py_True for WANT_CONTAINS), 0 on a miss, -1 on error. Counts the
 * hit or miss and marks the slot's access byte on a hit, like the pure-Python Reader. */
static int
reader_read(Reader *self, PyObject *key_obj, enum want want, PyObject **out)
{
    const char *key;
    Py_ssize_t klen;
    PyObject *owned;
    if (key_bytes(self, key_obj, &key, &klen, &owned) < 0)
        return -1;

    uint8_t *const base = self->base;
    const uint64_t h = XXH3_64bits_withSeed(key, (size_t)klen, self->seed);
    const uint64_t stripe = h & self->smask;
    const uint32_t tag = (uint32_t)(h >> 32);
    const uint32_t per = self->per;
    const uint32_t key_coll = self->coll_hi | (uint32_t)klen;
    const uint64_t arena_off = self->arena_off, arena_end = self->arena_end;
    const uint8_t *const seqp = base + self->stripes_off + stripe * STRIPE_BYTES + S_SEQ;
    const uint8_t *const slots = base + self->index_off + stripe * per * 8;
    const uint32_t home = tag % per;
    Py_ssize_t spins = 0;
    int rc = -1;

    for (;;) {
        const uint64_t s1 = ld64(seqp, memory_order_acquire);
        PyObject *found = NULL;
        uint64_t version = 0;
        int hit = 0;
        uint32_t i = home;
        /* An odd seq fails the check below whatever is read: wait for it to turn even rather
         * than copy a value for nothing (the pure reader probes anyway; same outcome). */
        for (uint32_t left = s1 & 1 ? 0 : per; left; left--) {
            const uint64_t v = ld64(slots + (uint64_t)i * 8, memory_order_relaxed);
            if (!v)
                break;
            if ((uint32_t)(v >> 32) == tag) {
                const uint64_t off = (v & 0xFFFFFFFFu) * ALIGN + arena_off;
                if (off + E_EXPIRES_AT + ENTRY_READ_BYTES > arena_end) {
                    char hex[24]; /* PyErr_Format has no %llx before 3.12 */
                    PyOS_snprintf(hex, sizeof hex, "%#llx", (unsigned long long)v);
                    PyErr_Format(self->corrupt_exc,
                                 "index stripe %llu, slot %u holds %s, whose ref is outside "
                                 "the arena: the region is corrupt; run `shmkv doctor --repair`",
                                 (unsigned long long)stripe, (unsigned)i, hex);
                    goto done;
                }
                const uint8_t *e = base + off;
                const uint32_t kc = ld32(e + E_KEY_COLL);
                if (kc == key_coll) {
                    const uint64_t exp = ld64(e + E_EXPIRES_AT, memory_order_relaxed);
                    const uint32_t vlen = ld32(e + E_VALUE_LEN);
                    const uint64_t start = off + ENTRY_HEADER_BYTES + (uint64_t)klen;
                    /* bounds first: a block reused under us may hold any bytes */
                    if (start + vlen <= arena_end
                            && memcmp(base + start - klen, key, (size_t)klen) == 0) {
                        int gone = 0;
                        if (exp && (gone = expired(self, exp)) < 0)
                            goto done;
                        if (!gone) {
                            hit = 1;
                            if (want == WANT_CONTAINS) {
                                found = Py_NewRef(Py_True);
                            }
                            else {
                                found = PyBytes_FromStringAndSize(NULL, vlen);
                                if (!found)
                                    goto done;
                                if (vlen >= GIL_RELEASE_BYTES) {
                                    char *dst = PyBytes_AS_STRING(found);
                                    const uint8_t *src = base + start;
                                    Py_BEGIN_ALLOW_THREADS
                                    memcpy(dst, src, vlen);
                                    Py_END_ALLOW_THREADS
                                }
                                else {
                                    memcpy(PyBytes_AS_STRING(found), base + start, vlen);
                                }
                                if (want == WANT_VERSIONED)
                                    version = ld64(e + E_VERSION, memory_order_relaxed);
                            }
                        }
                        break;
                    }
                }
            }
            i = i + 1 == per ? 0 : i + 1;
        }
        atomic_thread_fence(memory_order_acquire);
        if (ld64(seqp, memory_order_relaxed) == s1 && !(s1 & 1)) {
            if (!hit) {
                self->misses++;
                rc = 0;
                goto done;
            }
            self->hits++;
            /* mark the entry read for the segmented LRU, only when clear (no line bouncing) */
            _Atomic uint8_t *a = (_Atomic uint8_t *)(base + self->access_off
                                                     + stripe * per + i);
            if (!atomic_load_explicit(a, memory_order_relaxed))
                atomic_store_explicit(a, 1, memory_order_relaxed);
            if (want == WANT_VERSIONED) {
                PyObject *ver = PyLong_FromUnsignedLongLong(version);
                PyObject *pair = ver ? PyTuple_New(2) : NULL;
                if (!pair) {
                    Py_XDECREF(ver);
                    Py_DECREF(found);
                    goto done;
                }
                PyTuple_SET_ITEM(pair, 0, found);
                PyTuple_SET_ITEM(pair, 1, ver);
                found = pair;
            }
            *out = found;
            rc = 1;
            goto done;
        }
        Py_XDECREF(found); /* a writer moved the stripe: what we copied may be torn */
        if (spins < READ_SPINS_BEFORE_YIELD) {
            cpu_relax();
            spins++;
        }
        else if ((spins = call_wait_writer(self, spins, stripe)) < 0) {
            goto done;
        }
    }
done:
    Py_XDECREF(owned);
    return rc;
}

/* --- methods -------------------------------------------------------------------------------- */
static PyObject *
Reader_get(Reader *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *key = nargs > 0 ? args[0] : NULL, *dflt = nargs > 1 ? args[1] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get() takes at most 2 arguments (%zd given)", nargs);
        return NULL;
    }
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        PyObject **slot = NULL;
        if (PyUnicode_CompareWithASCIIString(name, "key") == 0)
            slot = &key;
        else if (PyUnicode_CompareWithASCIIString(name, "default") == 0)
            slot = &dflt;
        if (!slot || *slot) {
            PyErr_Format(PyExc_TypeError, "get() got %s keyword argument '%U'",
                         slot ? "a duplicate" : "an unexpected", name);
            return NULL;
        }
        *slot = args[nargs + k];
    }
    if (!key) {
        PyErr_SetString(PyExc_TypeError, "get() missing required argument 'key'");
        return NULL;
    }
    if (reader_enter(self) < 0)
        return NULL;
    PyObject *found = NULL;
    int rc = reader_read(self, key, WANT_VALUE, &found);
    reader_leave(self);
    if (rc < 0)
        return NULL;
    if (rc == 0)
        return Py_NewRef(dflt ? dflt : Py_None);
    return found;
}

static PyObject *
Reader_get_with_version(Reader *self, PyObject *key)
{
    if (reader_enter(self) < 0)
        return NULL;
    PyObject *found = NULL;
    int rc = reader_read(self, key, WANT_VERSIONED, &found);
    reader_leave(self);
    if (rc < 0)
        return NULL;
    return rc ? found : Py_NewRef(Py_None);
}

static PyObject *
Reader_contains(Reader *self, PyObject *key)
{
    if (reader_enter(self) < 0)
        return NULL;
    PyObject *found = NULL;
    int rc = reader_read(self, key, WANT_CONTAINS, &found);
    reader_leave(self);
    if (rc < 0)
        return NULL;
    Py_XDECREF(found);
    return PyBool_FromLong(rc);
}

static PyObject *
Reader_get_many(Reader *self, PyObject *keys)
{
    if (reader_enter(self) < 0)
        return NULL;
    PyObject *result = NULL, *it = NULL, *key;
    PyObject *dict = PyDict_New();
    if (!dict || !(it = PyObject_GetIter(keys)))
        goto out;
    while ((key = PyIter_Next(it))) {
        PyObject *found = NULL;
        int rc = reader_read(self, key, WANT_VALUE, &found);
        if (rc > 0) {
            rc = PyDict_SetItem(dict, key, found);
            Py_DECREF(found);
        }
        Py_DECREF(key);
        if (rc < 0)
            goto out;
    }
    if (!PyErr_Occurred())
        result = Py_NewRef(dict);
out:
    Py_XDECREF(it);
    Py_XDECREF(dict);
    reader_leave(self);
    return result;
}

static PyObject *
Reader_take_counts(Reader *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *res = Py_BuildValue("(KK)", (unsigned long long)self->hits,
                                  (unsigned long long)self->misses);
    if (res)
        self->hits = self->misses = 0;
    return res;
}

static PyObject *
Reader_close(Reader *self, PyObject *Py_UNUSED(ignored))
{
    self->closed = 1;
    if (!self->inflight)
        reader_release(self); /* else the last call in flight releases it */
    Py_RETURN_NONE;
}

static PyObject *
Reader_get_hits(Reader *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->hits);
}

static PyObject *
Reader_get_misses(Reader *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->misses);
}

static PyObject *
Reader_get_closed(Reader *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->closed);
}

static PyMethodDef Reader_methods[] = {
    {"get", (PyCFunction)(void (*)(void))Reader_get, METH_FASTCALL | METH_KEYWORDS,
     "get(key, default=None): the value of key as bytes, or default if absent or expired."},
    {"get_with_version", (PyCFunction)Reader_get_with_version, METH_O,
     "get_with_version(key): (value, version), or None if absent or expired."},
    {"contains", (PyCFunction)Reader_contains, METH_O,
     "contains(key): True if key is present and not expired (no value copy)."},
    {"get_many", (PyCFunction)Reader_get_many, METH_O,
     "get_many(keys): {key as given: value} of the keys that are present."},
    {"take_counts", (PyCFunction)Reader_take_counts, METH_NOARGS,
     "take_counts(): (hits, misses) counted since the last call, then zeroed."},
    {"close", (PyCFunction)Reader_close, METH_NOARGS,
     "close(): release the buffer (once no call is in flight); idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Reader_getset[] = {
    {"hits", (getter)Reader_get_hits, NULL, "hits not yet taken by take_counts()", NULL},
    {"misses", (getter)Reader_get_misses, NULL, "misses not yet taken by take_counts()", NULL},
    {"closed", (getter)Reader_get_closed, NULL, "True once close() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmkv._core.Reader",
    .tp_doc = PyDoc_STR(
        "Reader(buffer, n_stripes, slots_per_stripe, stripes_offset, index_offset, "
        "access_offset, arena_offset, arena_bytes, seed, coll, clock, coerce_key, "
        "wait_writer, corrupt_exc)\n\n"
        "The lock-free read path of one Cache handle (reader.py's Reader, compiled) over a "
        "region's writable buffer, which it holds until close()."),
    .tp_basicsize = sizeof(Reader),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Reader_new,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_traverse = (traverseproc)Reader_traverse,
    .tp_clear = (inquiry)Reader_clear,
    .tp_methods = Reader_methods,
    .tp_getset = Reader_getset,
};

/* --- the Writer ------------------------------------------------------------------------------
 *
 * One `Writer` per Cache handle: set(key, value, ttl_s=None), cas(key, value, version,
 * ttl_s=None) and incr(key, delta=1), with Cache's signatures, so that the handle can bind them
 * as its own methods. The fast path is the in-place overwrite of Cache._put_locked, and only
 * that: exact bytes or str keys and values (others are coerced by coerce_key, or handed over),
 * a key that is present, a new entry that fits its block snugly, no pin, no events, no write
 * fence, a live collection, a sound stripe. Anything else goes to the Python engine (the
 * fallbacks), which then does the whole call itself: the fast path decides before it changes
 * anything, so a call is done either all in C or all in Python, and behaves as Python's.
 *
 * Locking (locks.py's protocol): the stripe's robust process-shared mutex, in the stripe
 * record. trylock; if busy, wait (GIL released) with pthread_mutex_clocklock in slices until
 * lock_timeout_s, then LockTimeout naming the recorded pid. EOWNERDEAD: made consistent at once.
 * Held, the stripe needs the Python repair if a pid is still recorded (a holder died inside),
 * its seq is odd or its count is impossible: then the lock is given back untouched (the pid
 * stays: it is the needs-repair mark) and the call goes to Python, which repairs. Else our pid
 * is recorded for the time we hold it. The arena lock is never taken here.
 *
 * The write, as the in-place branch of _put_locked with _fill_entry(new=False): seq made odd
 * (relaxed store, release fence), the stripe's writes, changes and payload counters, the value,
 * version, expiry, length, kind and checksum of the entry, a release fence, seq made even
 * (release store); then the slot's access byte (lru.mark(off, True)).
 *
 * Expiry sampling: an in-place writer must reclaim expired entries too (a process that only
 * overwrites would never reclaim anything otherwise). Every WRITER_EXPIRY_EVERY-th write of a
 * stripe (by its writes counter), once the stripe lock is released, WRITER_EXPIRY_SLOTS slots
 * from the region's expiry cursor are looked at without any lock (every ref bounds-checked);
 * if one looks expired, expire_hook() is called (Python: the real expiry pass, under the arena
 * lock, which verifies everything), else the cursor is moved past them (a relaxed store; it is
 * only a hint).
 */
static pid_t writer_pid; /* getpid(), refreshed in a forked child */

static void
writer_atfork_child(void)
{
    writer_pid = getpid();
}

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;
    int closed;
    Py_ssize_t inflight;
    uint8_t *base;
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

static void
writer_release(Writer *self)
{
    if (self->has_view) {
        self->has_view = 0;
        self->base = NULL;
        PyBuffer_Release(&self->view);
    }
}

static inline int
writer_enter(Writer *self)
{
    if (self->closed) {
        PyErr_SetString(PyExc_ValueError, "closed");
        return -1;
    }
    self->inflight++;
    return 0;
}

static inline void
writer_leave(Writer *self)
{
    if (--self->inflight == 0 && self->closed)
        writer_release(self);
}

static int
Writer_init(Writer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "n_stripes", "slots_per_stripe", "stripes_offset",
                             "collections_offset", "access_offset", "index_offset",
                             "arena_offset", "arena_bytes", "seed", "coll", "gen",
                             "lock_timeout_s", "clock", "coerce_key", "lock_timeout_exc",
                             "corrupt_exc", "write_fallback", "incr_fallback", "expire_hook",
                             NULL};
    PyObject *buffer, *seed_obj, *timeout_obj, *clock, *coerce_key, *timeout_exc, *corrupt_exc;
    PyObject *write_fallback, *incr_fallback, *expire_hook;
    Py_ssize_t n_stripes, per, stripes_off, colls_off, access_off, index_off, arena_off;
    Py_ssize_t arena_bytes, coll, gen;

    if (self->has_view || self->clock) {
        PyErr_SetString(PyExc_TypeError, "Writer is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnnnnnnnnOnnOOOOOOOO:Writer", kwlist, &buffer,
                                     &n_stripes, &per, &stripes_off, &colls_off, &access_off,
                                     &index_off, &arena_off, &arena_bytes, &seed_obj, &coll,
                                     &gen, &timeout_obj, &clock, &coerce_key, &timeout_exc,
                                     &corrupt_exc, &write_fallback, &incr_fallback,
                                     &expire_hook))
        return -1;
    if (n_stripes < 1 || n_stripes > 256 || (n_stripes & (n_stripes - 1))) {
        PyErr_SetString(PyExc_ValueError, "n_stripes must be a power of two between 1 and 256");
        return -1;
    }
    if (per < 1 || per > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "slots_per_stripe must be between 1 and 2**24");
        return -1;
    }
    if (coll < 0 || coll > 0xFFFF || gen < 0 || gen > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "coll and gen must be between 0 and 65535");
        return -1;
    }
    if (stripes_off < 0 || colls_off < 0 || index_off < 0 || access_off < 0 || arena_off < 0
            || arena_bytes < ALIGN + MIN_BLOCK_BYTES
            || (stripes_off | colls_off | index_off | arena_off) % ALIGN) {
        PyErr_SetString(PyExc_ValueError, "offsets must be >= 0, and those of the stripes, "
                                          "the collections, the index and the arena multiples "
                                          "of 8; arena_bytes must hold an entry");
        return -1;
    }
    if (arena_bytes > ((Py_ssize_t)1 << 35)) {
        PyErr_SetString(PyExc_ValueError, "arena_bytes is beyond what 32-bit refs address");
        return -1;
    }
    unsigned long long seed = PyLong_AsUnsignedLongLong(seed_obj);
    if (seed == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (PyBool_Check(timeout_obj) || !(PyLong_Check(timeout_obj) || PyFloat_Check(timeout_obj))) {
        PyErr_SetString(PyExc_TypeError, "lock_timeout_s must be a number of seconds");
        return -1;
    }
    double timeout_s = PyFloat_AsDouble(timeout_obj);
    if (timeout_s == -1.0 && PyErr_Occurred())
        return -1;
    if (!(timeout_s > 0 && timeout_s <= 3600)) {
        PyErr_SetString(PyExc_ValueError, "lock_timeout_s must be > 0 and at most an hour");
        return -1;
    }
    if (!PyCallable_Check(clock) || !PyCallable_Check(coerce_key)
            || !PyCallable_Check(write_fallback) || !PyCallable_Check(incr_fallback)
            || !PyCallable_Check(expire_hook)) {
        PyErr_SetString(PyExc_TypeError, "clock, coerce_key, write_fallback, incr_fallback and "
                                         "expire_hook must be callable");
        return -1;
    }
    if (!PyExceptionClass_Check(timeout_exc) || !PyExceptionClass_Check(corrupt_exc)) {
        PyErr_SetString(PyExc_TypeError, "lock_timeout_exc and corrupt_exc must be exception "
                                         "classes");
        return -1;
    }
    PyObject *timeout_str = PyObject_Format(timeout_obj, NULL);
    if (timeout_str) { /* as locks.py's f"{timeout_s:g}" */
        PyObject *spec = PyUnicode_FromString("g");
        Py_DECREF(timeout_str);
        timeout_str = spec ? PyObject_Format(timeout_obj, spec) : NULL;
        Py_XDECREF(spec);
    }
    if (!timeout_str)
        return -1;
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(timeout_str);
        return -1;
    }
    self->has_view = 1;
    uint64_t len = (uint64_t)self->view.len;
    uint64_t ns = (uint64_t)n_stripes, pp = (uint64_t)per;
    const uint8_t *buf = (const uint8_t *)self->view.buf;
    const char *bad = NULL;
    if ((uintptr_t)buf % ALIGN)
        bad = "buffer is not 8-byte aligned";
    else if (len < H_ARENA_MUTEX + S_MUTEX_BYTES || ld32(buf + H_LAYOUT_VERSION) != LAYOUT_VERSION)
        bad = "buffer is not a region of the layout version shmkv._core was built for";
    else if (ld32(buf + H_LOCK_KIND) != LOCKS_ROBUST)
        bad = "the region's locks are not robust mutexes (lock_kind is not LOCKS_ROBUST)";
    else if ((uint64_t)stripes_off + ns * STRIPE_BYTES > len
             || (uint64_t)colls_off + ((uint64_t)coll + 1) * COLLECTION_BYTES > len
             || (uint64_t)access_off + ns * pp > len
             || (uint64_t)index_off + ns * pp * 8 > len
             || (uint64_t)arena_off + (uint64_t)arena_bytes > len)
        bad = "layout does not fit in the buffer";
    if (bad) {
        writer_release(self);
        Py_DECREF(timeout_str);
        PyErr_SetString(PyExc_ValueError, bad);
        return -1;
    }
    self->base = (uint8_t *)self->view.buf;
    self->smask = ns - 1;
    self->per = (uint32_t)per;
    self->max_count = (uint32_t)((double)per * MAX_LOAD); /* int(per * L.MAX_LOAD) */
    self->max_ref = (uint32_t)(((uint64_t)arena_bytes - ALIGN - MIN_BLOCK_BYTES) >> 3);
    self->index_slots = ns * pp;
    self->stripes_off = (uint64_t)stripes_off;
    self->coll_rec_off = (uint64_t)colls_off + (uint64_t)coll * COLLECTION_BYTES;
    self->access_off = (uint64_t)access_off;
    self->index_off = (uint64_t)index_off;
    self->arena_off = (uint64_t)arena_off;
    self->arena_end = (uint64_t)arena_off + (uint64_t)arena_bytes;
    self->seed = (uint64_t)seed;
    self->hseed = (uint64_t)seed ^ (uint64_t)coll;
    self->coll = (uint32_t)coll;
    self->coll_hi = (uint32_t)coll << 16;
    self->gen = (uint16_t)gen;
    self->timeout_s = timeout_s;
    self->timeout_str = timeout_str;
    self->clock_is_time_ns = clock == time_ns_func;
    self->clock = Py_NewRef(clock);
    self->coerce_key = Py_NewRef(coerce_key);
    self->timeout_exc = Py_NewRef(timeout_exc);
    self->corrupt_exc = Py_NewRef(corrupt_exc);
    self->write_fallback = Py_NewRef(write_fallback);
    self->incr_fallback = Py_NewRef(incr_fallback);
    self->expire_hook = Py_NewRef(expire_hook);
    self->closed = 0;
    return 0;
}

static int
Writer_traverse(Writer *self, visitproc visit, void *arg)
{
    Py_VISIT(self->clock);
    Py_VISIT(self->coerce_key);
    Py_VISIT(self->timeout_exc);
    Py_VISIT(self->corrupt_exc);
    Py_VISIT(self->write_fallback);
    Py_VISIT(self->incr_fallback);
    Py_VISIT(self->expire_hook);
    if (self->has_view)
        Py_VISIT(self->view.obj);
    return 0;
}

static int
Writer_clear(Writer *self)
{
    self->closed = 1;
    if (!self->inflight)
        writer_release(self);
    Py_CLEAR(self->timeout_str);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->coerce_key);
    Py_CLEAR(self->timeout_exc);
    Py_CLEAR(self->corrupt_exc);
    Py_CLEAR(self->write_fallback);
    Py_CLEAR(self->incr_fallback);
    Py_CLEAR(self->expire_hook);
    return 0;
}

static void
Writer_dealloc(Writer *self)
{
    PyObject_GC_UnTrack(self);
    Writer_clear(self);
    writer_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Writer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    Writer *self = (Writer *)type->tp_alloc(type, 0);
    if (self)
        self->closed = 1; /* until __init__ succeeds */
    return (PyObject *)self;
}

/* --- arguments, with the messages CPython gives for the Python methods ----------------------
 * The handle binds these methods in place of Cache.set/cas/incr, so a call with the wrong
 * arguments must fail as a call of the Python method does (CPython 3.11's wording, self
 * counted). */
typedef struct {
    const char *qualname;
    const char *const *names; /* the parameters after self */
    int n;
    int required;             /* the first `required` have no default */
} signature;

static const char *const set_names[] = {"key", "value", "ttl_s"};
static const char *const cas_names[] = {"key", "value", "version", "ttl_s"};
static const char *const incr_names[] = {"key", "delta"};
static const signature set_sig = {"Cache.set", set_names, 3, 2};
static const signature cas_sig = {"Cache.cas", cas_names, 4, 3};
static const signature incr_sig = {"Cache.incr", incr_names, 2, 1};

static int
parse_args(const signature *sig, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
           PyObject **out)
{
    for (int j = 0; j < sig->n; j++)
        out[j] = j < nargs ? args[j] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int j = -1, is_self = 0;
        if (PyUnicode_Check(name)) {
            is_self = PyUnicode_CompareWithASCIIString(name, "self") == 0;
            for (int p = 0; p < sig->n && !is_self && j < 0; p++)
                if (PyUnicode_CompareWithASCIIString(name, sig->names[p]) == 0)
                    j = p;
        }
        if (!is_self && j < 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%S'",
                         sig->qualname, name);
            return -1;
        }
        if (is_self || out[j]) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%S'",
                         sig->qualname, name);
            return -1;
        }
        out[j] = args[nargs + k];
    }
    if (nargs > sig->n) {
        if (sig->required < sig->n)
            PyErr_Format(PyExc_TypeError, "%s() takes from %d to %d positional arguments but "
                         "%zd were given", sig->qualname, sig->required + 1, sig->n + 1,
                         nargs + 1);
        else
            PyErr_Format(PyExc_TypeError, "%s() takes %d positional arguments but %zd were "
                         "given", sig->qualname, sig->n + 1, nargs + 1);
        return -1;
    }
    int missing[4], nmissing = 0;
    for (int j = 0; j < sig->required; j++)
        if (!out[j])
            missing[nmissing++] = j;
    if (nmissing) {
        const char *const *nm = sig->names;
        if (nmissing == 1)
            PyErr_Format(PyExc_TypeError, "%s() missing 1 required positional argument: '%s'",
                         sig->qualname, nm[missing[0]]);
        else if (nmissing == 2)
            PyErr_Format(PyExc_TypeError, "%s() missing 2 required positional arguments: "
                         "'%s' and '%s'", sig->qualname, nm[missing[0]], nm[missing[1]]);
        else
            PyErr_Format(PyExc_TypeError, "%s() missing 3 required positional arguments: "
                         "'%s', '%s', and '%s'", sig->qualname, nm[missing[0]], nm[missing[1]],
                         nm[missing[2]]);
        return -1;
    }
    return 0;
}

/* --- the fast path ---------------------------------------------------------------------------- */
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

/* Unix ns from the clock: 1 (in *now), 0 if the clock gave something the fast path leaves to
 * Python (not an int, negative, past 2**63), -1 if it raised. */
static int
writer_now(Writer *self, uint64_t *now)
{
    if (self->clock_is_time_ns) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        *now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        return 1;
    }
    PyObject *res = PyObject_CallNoArgs(self->clock);
    if (!res)
        return -1;
    int ok = 0;
    if (PyLong_CheckExact(res)) {
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(res, &overflow);
        if (!overflow && n >= 0) {
            *now = (uint64_t)n;
            ok = 1;
        }
    }
    Py_DECREF(res);
    return ok;
}

/* The value's bytes: exact bytes, or exact str as UTF-8; 0 for anything else (Python's). */
static int
value_bytes(PyObject *value, wreq *r)
{
    Py_ssize_t n;
    if (PyBytes_CheckExact(value)) {
        r->val = PyBytes_AS_STRING(value);
        n = PyBytes_GET_SIZE(value);
    }
    else if (PyUnicode_CheckExact(value)) {
        r->val = PyUnicode_AsUTF8AndSize(value, &n);
        if (!r->val) {
            PyErr_Clear(); /* a lone surrogate: Python raises its own error */
            return 0;
        }
    }
    else {
        return 0;
    }
    if ((size_t)n > INPLACE_MAX_BYTES) /* never rewritten in place */
        return 0;
    r->vlen = (uint32_t)n;
    return 1;
}

/* expires_at_ns for ttl_s as cache._expires_at computes it: 1 (in r->exp), 0 for what the
 * fast path leaves to Python, -1 if the clock raised. */
static int
expiry(Writer *self, PyObject *ttl, wreq *r)
{
    double t;
    if (ttl == Py_None) {
        r->exp = 0;
        return 1;
    }
    if (PyFloat_CheckExact(ttl)) {
        t = PyFloat_AS_DOUBLE(ttl);
    }
    else if (PyLong_CheckExact(ttl)) {
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(ttl, &overflow);
        if (overflow || n <= 0 || n > (long long)MAX_TTL_S)
            return 0;
        t = (double)n; /* ttl_s * 1e9 is a float product in Python too */
    }
    else {
        return 0;
    }
    if (!(t > 0 && t <= MAX_TTL_S))
        return 0; /* NaN included */
    uint64_t now;
    int rc = writer_now(self, &now);
    if (rc <= 0)
        return rc;
    int64_t d = (int64_t)(t * 1e9); /* int() truncates; at most 3.2e17 */
    r->exp = now + (uint64_t)(d < 1 ? 1 : d);
    return 1;
}

static int
parse_decimal(const uint8_t *p, uint32_t n, int64_t *out)
{
    /* the fullmatch of -?[0-9]{1,19} (cache._DECIMAL) whose value fits an int64: 1, else 0 */
    uint32_t i = 0;
    int neg = n && p[0] == '-';
    i = (uint32_t)neg;
    if (n - i < 1 || n - i > 19)
        return 0;
    uint64_t mag = 0;
    for (; i < n; i++) {
        unsigned d = (unsigned)p[i] - '0';
        if (d > 9)
            return 0;
        mag = mag * 10 + d;
    }
    if (neg) {
        if (mag > (uint64_t)INT64_MAX + 1)
            return 0;
        *out = (int64_t)(0 - mag);
    }
    else {
        if (mag > (uint64_t)INT64_MAX)
            return 0;
        *out = (int64_t)mag;
    }
    return 1;
}

static uint32_t
format_decimal(int64_t v, char *buf)
{
    /* str(v).encode(): at most 20 bytes */
    char tmp[20];
    uint64_t mag = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    int n = 0;
    do {
        tmp[n++] = (char)('0' + mag % 10);
        mag /= 10;
    } while (mag);
    uint32_t len = 0;
    if (v < 0)
        buf[len++] = '-';
    while (n)
        buf[len++] = tmp[--n];
    return len;
}

static inline void
timespec_add_ns(struct timespec *t, int64_t ns)
{
    t->tv_sec += ns / 1000000000;
    t->tv_nsec += ns % 1000000000;
    if (t->tv_nsec >= 1000000000) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000;
    }
}

static inline int
timespec_before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* Take stripe's mutex (locks.py's acquire_stripe, without the claim): 0, or -1 with
 * LockTimeout, CorruptRegion or what a signal handler raised. */
static int
lock_stripe(Writer *self, pthread_mutex_t *m, const uint8_t *rec, uint64_t stripe)
{
    int rc = pthread_mutex_trylock(m);
    if (rc == EBUSY) {
        struct timespec now, deadline, until;
        clock_gettime(CLOCK_MONOTONIC, &now);
        deadline = now;
        timespec_add_ns(&deadline, (int64_t)(self->timeout_s * 1e9));
        for (;;) {
            until = now;
            timespec_add_ns(&until, WAIT_SLICE_NS);
            if (timespec_before(&deadline, &until))
                until = deadline;
            Py_BEGIN_ALLOW_THREADS
            rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &until);
            Py_END_ALLOW_THREADS
            if (rc != ETIMEDOUT)
                break;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (!timespec_before(&now, &deadline)) {
                unsigned pid = ld32(rec + S_OWNER_PID);
                char who[16] = "?";
                if (pid)
                    PyOS_snprintf(who, sizeof who, "%u", pid);
                PyErr_Format(self->timeout_exc,
                             "stripe %llu lock not acquired within %U s; held by pid %s, which "
                             "is alive (a dead holder's lock passes to the next locker). If it "
                             "is stopped or stuck, stop it; if it is just busy, raise "
                             "lock_timeout_s", (unsigned long long)stripe, self->timeout_str,
                             who);
                return -1;
            }
            if (PyErr_CheckSignals() < 0) /* Ctrl-C while waiting */
                return -1;
        }
    }
    if (rc == 0)
        return 0;
    if (rc == EOWNERDEAD) { /* its holder died: consistent now, repaired by Python (pid) */
        pthread_mutex_consistent(m);
        return 0;
    }
    if (rc == EDEADLK)
        PyErr_Format(self->timeout_exc, "stripe %llu lock: this thread holds it already (a "
                     "lock is not re-entrant: a bug in the caller)", (unsigned long long)stripe);
    else
        PyErr_Format(self->corrupt_exc, "stripe %llu lock: pthread says %s (error %d); close "
                     "every process using the region and open it again, which re-initialises "
                     "its locks", (unsigned long long)stripe, strerror(rc), rc);
    return -1;
}

/* Under the stripe lock: find the key and, if the fast path applies, write. */
static int
writer_locked(Writer *self, const char *key, uint32_t klen, uint64_t h, wreq *r)
{
    uint8_t *const base = self->base;
    const uint64_t stripe = h & self->smask;
    uint8_t *const rec = base + self->stripes_off + stripe * STRIPE_BYTES;
    pthread_mutex_t *const m = (pthread_mutex_t *)(void *)(rec + S_MUTEX);
    if (lock_stripe(self, m, rec, stripe) < 0)
        return FAST_ERROR;
    /* A pid still recorded (its holder died inside), an odd seq, an impossible count: the
     * stripe needs Python's repair. Leave everything as it is, the pid above all. */
    if (ld32(rec + S_OWNER_PID) || ld64(rec + S_SEQ, memory_order_relaxed) & 1
            || ld32(rec + S_COUNT) > self->max_count) {
        pthread_mutex_unlock(m);
        return FAST_FALLBACK;
    }
    st32(rec + S_OWNER_PID, (uint32_t)writer_pid);
    int out = FAST_FALLBACK;

    if (self->coll) {
        /* a dropped collection (Python raises CollectionNotFound), or a record Python finds
         * damaged (CorruptRegion): its name must be of a possible length, and UTF-8, which
         * the fast path checks for ASCII names only */
        const uint8_t *c = base + self->coll_rec_off;
        const uint8_t name_len = ld8(c + C_NAME_LEN);
        if (ld16(c + C_GENERATION) != self->gen || ld8(c + C_STATE) != COLL_LIVE
                || name_len > MAX_COLLECTION_NAME_BYTES)
            goto release;
        uint8_t high = 0;
        for (uint8_t k = 0; k < name_len; k++)
            high |= ld8(c + C_NAME + k);
        if (high & 0x80)
            goto release;
    }
    if (ld64(base + H_WRITABLE_UNTIL, memory_order_relaxed) || ld32(base + H_EVENTS_ENABLED))
        goto release;

    /* index.find_locked */
    const uint32_t per = self->per, tag = (uint32_t)(h >> 32);
    const uint32_t key_coll = self->coll_hi | klen;
    const uint8_t *const slots = base + self->index_off + stripe * per * 8;
    uint8_t *e = NULL;
    uint64_t off = 0;
    uint32_t i = tag % per;
    for (uint32_t left = per; left; left--) {
        const uint64_t v = ld64(slots + (uint64_t)i * 8, memory_order_relaxed);
        if (!v)
            break;
        if ((uint32_t)(v >> 32) == tag) {
            const uint32_t ref = (uint32_t)v;
            if (!ref || ref > self->max_ref)
                goto release; /* garbage: Python raises CorruptRegion */
            off = self->arena_off + (uint64_t)ref * ALIGN;
            if (ld32(base + off + E_KEY_COLL) == key_coll
                    && off + ENTRY_HEADER_BYTES + klen <= self->arena_end
                    && memcmp(base + off + ENTRY_HEADER_BYTES, key, klen) == 0) {
                e = base + off;
                break;
            }
        }
        i = i + 1 == per ? 0 : i + 1;
    }
    if (!e) {
        if (r->op == W_CAS) { /* absent: False */
            r->cas_ok = 0;
            out = FAST_DONE;
        }
        goto release; /* set, incr: an insert */
    }
    uint64_t exp = ld64(e + E_EXPIRES_AT, memory_order_relaxed);
    if (exp && r->op != W_SET) {
        uint64_t now;
        int rc = writer_now(self, &now);
        if (rc <= 0) {
            out = rc < 0 ? FAST_ERROR : FAST_FALLBACK;
            goto release;
        }
        if (exp <= now) { /* expired: cas fails, incr starts from 0 (Python's) */
            if (r->op == W_CAS) {
                r->cas_ok = 0;
                out = FAST_DONE;
            }
            goto release;
        }
    }
    if (r->op == W_CAS && ld64(e + E_VERSION, memory_order_relaxed) != r->version) {
        r->cas_ok = 0;
        out = FAST_DONE;
        goto release;
    }
    const uint32_t old_vlen = ld32(e + E_VALUE_LEN);
    if (r->op == W_INCR) {
        int64_t current;
        if (off + ENTRY_HEADER_BYTES + klen + old_vlen > self->arena_end
                || !parse_decimal(e + ENTRY_HEADER_BYTES + klen, old_vlen, &current)
                || __builtin_add_overflow(current, r->delta, &r->result))
            goto release; /* not an integer, or an overflow: Python raises NotAnInteger */
        r->vlen = format_decimal(r->result, r->digits);
        r->val = r->digits;
    }
    else {
        exp = r->exp; /* incr keeps the TTL */
    }
    /* in place only, as _put_locked: a snug fit in an entry no view pins */
    const uint32_t vlen = r->vlen;
    const uint64_t need = (ENTRY_HEADER_BYTES + (uint64_t)klen + vlen + ALIGN - 1)
                          & ~(uint64_t)(ALIGN - 1);
    const uint32_t block = ld32(e + E_BLOCK_WORD) & SIZE_MASK;
    if (ld8(e + E_KIND) >= KIND_PINNED || block < need || block >= need + INPLACE_SLACK_BYTES
            || off + block > self->arena_end)
        goto release;
    const uint64_t writes = ld64(rec + S_WRITES, memory_order_relaxed) + 1;
    if (writes > MAX_WRITES)
        goto release; /* garbage: Python raises CorruptRegion */
    const uint64_t version = writes << 8 | stripe;

    /* the write: readers of the stripe retry while seq is odd */
    const uint64_t seq = ld64(rec + S_SEQ, memory_order_relaxed);
    st64(rec + S_SEQ, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    st64(rec + S_WRITES, writes, memory_order_relaxed);
    st64(rec + S_CHANGES, ld64(rec + S_CHANGES, memory_order_relaxed) + 1, memory_order_relaxed);
    st64(rec + S_PAYLOAD, ld64(rec + S_PAYLOAD, memory_order_relaxed) + vlen - old_vlen,
         memory_order_relaxed);
    uint8_t *const body = e + ENTRY_HEADER_BYTES;
    memcpy(body + klen, r->val, vlen);
    st64(e + E_VERSION, version, memory_order_relaxed);
    st64(e + E_EXPIRES_AT, exp, memory_order_relaxed);
    st32(e + E_VALUE_LEN, vlen);
    st8(e + E_KIND, KIND_BYTES);
    st32(e + E_CHECKSUM, (uint32_t)XXH3_64bits_withSeed(body, (size_t)klen + vlen, self->seed));
    atomic_thread_fence(memory_order_release);
    st64(rec + S_SEQ, seq + 2, memory_order_release);
    /* a write is a use: it keeps the entry's segment (lru.mark(off, True)) */
    const uint32_t slot_no = ld32(e + E_SLOT_NO);
    if (slot_no < self->index_slots) {
        uint8_t *a = base + self->access_off + slot_no;
        if (ld8(a) != 1)
            st8(a, 1);
    }
    r->cas_ok = 1;
    r->writes = writes;
    out = FAST_DONE;
release:
    st32(rec + S_OWNER_PID, 0);
    pthread_mutex_unlock(m);
    return out;
}

/* After every WRITER_EXPIRY_EVERY-th write: a lock-free look at the next slots of the expiry
 * cursor, and the Python expiry pass if something there looks expired. 0, or -1 on error. */
static int
writer_expiry_sample(Writer *self)
{
    uint8_t *const base = self->base;
    const uint64_t total = self->index_slots;
    uint64_t now;
    int rc = writer_now(self, &now);
    if (rc < 0)
        return -1;
    int found = rc == 0; /* a clock the fast path does not read: Python judges */
    uint64_t cursor = ld64(base + H_EXPIRE_CURSOR, memory_order_relaxed) % total;
    for (int k = 0; k < WRITER_EXPIRY_SLOTS && !found; k++) {
        const uint64_t v = ld64(base + self->index_off + cursor * 8, memory_order_relaxed);
        cursor = cursor + 1 == total ? 0 : cursor + 1;
        const uint32_t ref = (uint32_t)v;
        if (!v || !ref || ref > self->max_ref)
            continue; /* empty, or garbage the next locked pass will meet */
        const uint64_t exp = ld64(base + self->arena_off + (uint64_t)ref * ALIGN + E_EXPIRES_AT,
                                  memory_order_relaxed);
        found = exp && exp <= now;
    }
    if (!found) {
        /* as expire_sample_locked would have moved it; a racing store loses a hint only */
        st64(base + H_EXPIRE_CURSOR, cursor, memory_order_relaxed);
        return 0;
    }
    /* the cursor stays: the Python pass samples the same slots */
    self->expire_calls++;
    PyObject *res = PyObject_CallNoArgs(self->expire_hook);
    if (!res)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* The fast path of one call, its arguments prepared in r: FAST_DONE, FAST_FALLBACK (nothing
 * was changed) or FAST_ERROR. */
static int
writer_run(Writer *self, PyObject *key_obj, wreq *r)
{
    const char *key;
    Py_ssize_t klen;
    PyObject *owned = NULL;
    if (PyBytes_CheckExact(key_obj) && PyBytes_GET_SIZE(key_obj) <= MAX_KEY_BYTES) {
        key = PyBytes_AS_STRING(key_obj);
        klen = PyBytes_GET_SIZE(key_obj);
    }
    else {
        key = PyUnicode_CheckExact(key_obj) ? PyUnicode_AsUTF8AndSize(key_obj, &klen) : NULL;
        if (!key || klen > MAX_KEY_BYTES) {
            /* Every other argument was taken by the fast path, so Python would raise the
             * key's error now too: coerce_key gives its exact message. */
            PyErr_Clear();
            owned = PyObject_CallOneArg(self->coerce_key, key_obj);
            if (!owned)
                return FAST_ERROR;
            if (!PyBytes_Check(owned) || PyBytes_GET_SIZE(owned) > MAX_KEY_BYTES) {
                Py_DECREF(owned);
                PyErr_SetString(PyExc_TypeError, "coerce_key must return bytes of at most "
                                                 "MAX_KEY_BYTES");
                return FAST_ERROR;
            }
            key = PyBytes_AS_STRING(owned);
            klen = PyBytes_GET_SIZE(owned);
        }
    }
    const uint64_t h = XXH3_64bits_withSeed(key, (size_t)klen, self->hseed);
    int rc = writer_locked(self, key, (uint32_t)klen, h, r);
    Py_XDECREF(owned);
    if (rc == FAST_DONE) {
        self->fast++;
        if (r->writes && r->writes % WRITER_EXPIRY_EVERY == 0 && writer_expiry_sample(self) < 0)
            return FAST_ERROR; /* the write is done; the expiry pass failed */
    }
    return rc;
}

static PyObject *
call_write_fallback(Writer *self, PyObject *key, PyObject *value, PyObject *ttl,
                    PyObject *version)
{
    self->fallbacks++;
    PyObject *args[4] = {key, value, ttl, version};
    return PyObject_Vectorcall(self->write_fallback, args, 4, NULL);
}

static PyObject *
Writer_set(Writer *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[3];
    if (parse_args(&set_sig, args, nargs, kwnames, a) < 0)
        return NULL;
    PyObject *key = a[0], *value = a[1], *ttl = a[2] ? a[2] : Py_None;
    if (writer_enter(self) < 0)
        return NULL;
    wreq r;
    r.op = W_SET;
    r.writes = 0;
    int rc = value_bytes(value, &r);
    if (rc > 0)
        rc = expiry(self, ttl, &r);
    if (rc > 0)
        rc = writer_run(self, key, &r);
    PyObject *res = NULL;
    if (rc == FAST_DONE) {
        res = Py_NewRef(Py_None);
    }
    else if (rc == FAST_FALLBACK) {
        res = call_write_fallback(self, key, value, ttl, Py_None);
        if (res)
            Py_SETREF(res, Py_NewRef(Py_None));
    }
    writer_leave(self);
    return res;
}

static PyObject *
Writer_cas(Writer *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[4];
    if (parse_args(&cas_sig, args, nargs, kwnames, a) < 0)
        return NULL;
    PyObject *key = a[0], *value = a[1], *version = a[2], *ttl = a[3] ? a[3] : Py_None;
    if (PyBool_Check(version) || !PyLong_Check(version)) { /* Cache.cas's own check */
        PyErr_SetString(PyExc_TypeError, "version must be the int returned by get_with_version");
        return NULL;
    }
    if (writer_enter(self) < 0)
        return NULL;
    wreq r;
    r.op = W_CAS;
    r.writes = 0;
    int rc = 0;
    if (PyLong_CheckExact(version)) {
        r.version = PyLong_AsUnsignedLongLong(version);
        if (r.version == (uint64_t)-1 && PyErr_Occurred())
            PyErr_Clear(); /* negative or past u64: no entry has it; Python says so */
        else
            rc = 1;
    }
    if (rc > 0)
        rc = value_bytes(value, &r);
    if (rc > 0)
        rc = expiry(self, ttl, &r);
    if (rc > 0)
        rc = writer_run(self, key, &r);
    PyObject *res = NULL;
    if (rc == FAST_DONE)
        res = PyBool_FromLong(r.cas_ok);
    else if (rc == FAST_FALLBACK)
        res = call_write_fallback(self, key, value, ttl, version);
    writer_leave(self);
    return res;
}

static PyObject *
Writer_incr(Writer *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[2];
    if (parse_args(&incr_sig, args, nargs, kwnames, a) < 0)
        return NULL;
    PyObject *key = a[0];
    PyObject *delta = a[1];
    static PyObject *one;
    if (!delta) {
        if (!one && !(one = PyLong_FromLong(1)))
            return NULL;
        delta = one;
    }
    if (PyBool_Check(delta) || !PyLong_Check(delta)) { /* Cache.incr's own check */
        PyErr_SetString(PyExc_TypeError, "delta must be an int");
        return NULL;
    }
    if (writer_enter(self) < 0)
        return NULL;
    wreq r;
    r.op = W_INCR;
    r.writes = 0;
    int rc = 0;
    if (PyLong_CheckExact(delta)) {
        int overflow;
        r.delta = PyLong_AsLongLongAndOverflow(delta, &overflow);
        rc = !overflow;
    }
    if (rc > 0)
        rc = writer_run(self, key, &r);
    PyObject *res = NULL;
    if (rc == FAST_DONE) {
        res = PyLong_FromLongLong(r.result);
    }
    else if (rc == FAST_FALLBACK) {
        self->fallbacks++;
        PyObject *fargs[2] = {key, delta};
        res = PyObject_Vectorcall(self->incr_fallback, fargs, 2, NULL);
    }
    writer_leave(self);
    return res;
}

static PyObject *
Writer_close(Writer *self, PyObject *Py_UNUSED(ignored))
{
    self->closed = 1;
    if (!self->inflight)
        writer_release(self);
    Py_RETURN_NONE;
}

static PyObject *
Writer_take_counts(Writer *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *res = Py_BuildValue("(KKK)", (unsigned long long)self->fast,
                                  (unsigned long long)self->fallbacks,
                                  (unsigned long long)self->expire_calls);
    if (res)
        self->fast = self->fallbacks = self->expire_calls = 0;
    return res;
}

static PyObject *
Writer_get_closed(Writer *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->closed);
}

static PyObject *
Writer_get_fast(Writer *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->fast);
}

static PyObject *
Writer_get_fallbacks(Writer *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->fallbacks);
}

static PyObject *
Writer_get_expire_calls(Writer *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->expire_calls);
}

static PyMethodDef Writer_methods[] = {
    {"set", (PyCFunction)(void (*)(void))Writer_set, METH_FASTCALL | METH_KEYWORDS,
     "set(key, value, ttl_s=None): Cache.set; in place in C, else write_fallback."},
    {"cas", (PyCFunction)(void (*)(void))Writer_cas, METH_FASTCALL | METH_KEYWORDS,
     "cas(key, value, version, ttl_s=None): Cache.cas; in place in C, else write_fallback."},
    {"incr", (PyCFunction)(void (*)(void))Writer_incr, METH_FASTCALL | METH_KEYWORDS,
     "incr(key, delta=1): Cache.incr; in place in C, else incr_fallback."},
    {"take_counts", (PyCFunction)Writer_take_counts, METH_NOARGS,
     "take_counts(): (calls done in C, calls handed to the fallbacks, expire_hook calls) "
     "since the last call, then zeroed."},
    {"close", (PyCFunction)Writer_close, METH_NOARGS,
     "close(): release the buffer (once no call is in flight); idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Writer_getset[] = {
    {"closed", (getter)Writer_get_closed, NULL, "True once close() was called", NULL},
    {"fast", (getter)Writer_get_fast, NULL, "calls done in C, not yet taken", NULL},
    {"fallbacks", (getter)Writer_get_fallbacks, NULL,
     "calls handed to the fallbacks, not yet taken", NULL},
    {"expire_calls", (getter)Writer_get_expire_calls, NULL,
     "expire_hook calls, not yet taken", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmkv._core.Writer",
    .tp_doc = PyDoc_STR(
        "Writer(buffer, n_stripes, slots_per_stripe, stripes_offset, collections_offset, "
        "access_offset, index_offset, arena_offset, arena_bytes, seed, coll, gen, "
        "lock_timeout_s, clock, coerce_key, lock_timeout_exc, corrupt_exc, write_fallback, "
        "incr_fallback, expire_hook)\n\n"
        "The in-place write path of one Cache handle (set, cas, incr) over a region's writable "
        "buffer, which it holds until close(); every other case goes to the fallbacks: "
        "write_fallback(key, value, ttl_s, if_version) (Cache._write) and "
        "incr_fallback(key, delta) (Cache.incr's Python body). expire_hook() runs the expiry "
        "pass when the writer's sampling saw an expired entry."),
    .tp_basicsize = sizeof(Writer),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Writer_new,
    .tp_init = (initproc)Writer_init,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_traverse = (traverseproc)Writer_traverse,
    .tp_clear = (inquiry)Writer_clear,
    .tp_methods = Writer_methods,
    .tp_getset = Writer_getset,
};

/* --- module functions ------------------------------------------------------------------- */
static PyObject *
core_xxh3_64(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "xxh3_64(data, seed=0) takes 1 or 2 arguments");
        return NULL;
    }
    unsigned long long seed = 0;
    if (nargs == 2) {
        seed = PyLong_AsUnsignedLongLong(args[1]);
        if (seed == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t h = XXH3_64bits_withSeed(b.buf, (size_t)b.len, (XXH64_hash_t)seed);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLongLong(h);
}

static PyObject *
core_writer_pid(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong((long)writer_pid);
}

static PyMethodDef core_methods[] = {
    {"xxh3_64", (PyCFunction)(void (*)(void))core_xxh3_64, METH_FASTCALL,
     "xxh3_64(data, seed=0): XXH3_64bits_withSeed of a bytes-like object, as an int."},
    {"_writer_pid", (PyCFunction)core_writer_pid, METH_NOARGS,
     "_writer_pid(): the pid Writers record as a stripe lock's holder (for tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmkv._core",
    .m_doc = "The compiled read path and in-place write path of a shmkv region (see _core.c).",
    .m_size = -1,
    .m_methods = core_methods,
};

static int
add_layout(PyObject *m)
{
    static const struct { const char *name; long value; } consts[] = {
        {"LAYOUT_VERSION", LAYOUT_VERSION},
        {"ALIGN", ALIGN},
        {"STRIPE_BYTES", STRIPE_BYTES},
        {"S_SEQ", S_SEQ},
        {"ENTRY_HEADER_BYTES", ENTRY_HEADER_BYTES},
        {"E_VERSION", E_VERSION},
        {"E_EXPIRES_AT", E_EXPIRES_AT},
        {"E_VALUE_LEN", E_VALUE_LEN},
        {"E_KEY_COLL", E_KEY_COLL},
        {"MAX_KEY_BYTES", MAX_KEY_BYTES},
        {"S_COUNT", S_COUNT},
        {"S_OWNER_PID", S_OWNER_PID},
        {"S_WRITES", S_WRITES},
        {"S_PAYLOAD", S_PAYLOAD},
        {"S_CHANGES", S_CHANGES},
        {"S_MUTEX", S_MUTEX},
        {"H_EXPIRE_CURSOR", H_EXPIRE_CURSOR},
        {"H_EVENTS_ENABLED", H_EVENTS_ENABLED},
        {"H_LOCK_KIND", H_LOCK_KIND},
        {"H_WRITABLE_UNTIL", H_WRITABLE_UNTIL},
        {"H_ARENA_MUTEX", H_ARENA_MUTEX},
        {"LOCKS_ROBUST", LOCKS_ROBUST},
        {"COLLECTION_BYTES", COLLECTION_BYTES},
        {"C_GENERATION", C_GENERATION},
        {"COLL_LIVE", COLL_LIVE},
        {"MAX_COLLECTION_NAME_BYTES", MAX_COLLECTION_NAME_BYTES},
        {"MIN_BLOCK_BYTES", MIN_BLOCK_BYTES},
        {"E_BLOCK_WORD", E_BLOCK_WORD},
        {"E_CHECKSUM", E_CHECKSUM},
        {"E_SLOT_NO", E_SLOT_NO},
        {"E_KIND", E_KIND},
        {"KIND_BYTES", KIND_BYTES},
        {"KIND_PINNED", KIND_PINNED},
        {"SIZE_MASK", (long)SIZE_MASK},
    };
    PyObject *d = PyDict_New();
    if (!d)
        return -1;
    for (size_t k = 0; k < sizeof consts / sizeof consts[0]; k++) {
        PyObject *v = PyLong_FromLong(consts[k].value);
        if (!v || PyDict_SetItemString(d, consts[k].name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return -1;
        }
        Py_DECREF(v);
    }
    if (PyModule_AddObject(m, "LAYOUT", d) < 0) {
        Py_DECREF(d);
        return -1;
    }
    if (PyModule_AddIntConstant(m, "H_LAYOUT_VERSION", H_LAYOUT_VERSION) < 0
            || PyModule_AddIntConstant(m, "READ_SPINS_BEFORE_YIELD", READ_SPINS_BEFORE_YIELD) < 0
            || PyModule_AddIntConstant(m, "GIL_RELEASE_BYTES", GIL_RELEASE_BYTES) < 0
            || PyModule_AddIntConstant(m, "C_STATE", C_STATE) < 0
            || PyModule_AddIntConstant(m, "C_NAME_LEN", C_NAME_LEN) < 0
            || PyModule_AddIntConstant(m, "C_NAME", C_NAME) < 0
            || PyModule_AddIntConstant(m, "INPLACE_SLACK_BYTES", INPLACE_SLACK_BYTES) < 0
            || PyModule_AddIntConstant(m, "INPLACE_MAX_BYTES", INPLACE_MAX_BYTES) < 0
            || PyModule_AddIntConstant(m, "WRITER_EXPIRY_EVERY", WRITER_EXPIRY_EVERY) < 0
            || PyModule_AddIntConstant(m, "WRITER_EXPIRY_SLOTS", WRITER_EXPIRY_SLOTS) < 0
            || PyModule_AddObject(m, "MAX_LOAD", PyFloat_FromDouble(MAX_LOAD)) < 0
            || PyModule_AddObject(m, "WAIT_SLICE_S",
                                  PyFloat_FromDouble(WAIT_SLICE_NS / 1e9)) < 0
            || PyModule_AddStringConstant(m, "XXH_VERSION",
                                          Py_STRINGIFY(XXH_VERSION_MAJOR) "."
                                          Py_STRINGIFY(XXH_VERSION_MINOR) "."
                                          Py_STRINGIFY(XXH_VERSION_RELEASE)) < 0)
        return -1;
    return 0;
}

PyMODINIT_FUNC
PyInit__core(void)
{
    if (PyType_Ready(&ReaderType) < 0 || PyType_Ready(&WriterType) < 0)
        return NULL;
    if (!writer_pid) {
        writer_pid = getpid();
        int rc = pthread_atfork(NULL, NULL, writer_atfork_child);
        if (rc) {
            errno = rc;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    if (!time_ns_func) {
        PyObject *time_mod = PyImport_ImportModule("time");
        if (!time_mod)
            return NULL;
        time_ns_func = PyObject_GetAttrString(time_mod, "time_ns");
        Py_DECREF(time_mod);
        if (!time_ns_func)
            return NULL;
    }
    PyObject *m = PyModule_Create(&core_module);
    if (!m)
        return NULL;
    if (add_layout(m) < 0 || PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) < 0
            || PyModule_AddObjectRef(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
