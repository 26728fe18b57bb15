/* shmkv/_core_src/core.h: what every part of the shmkv._core extension shares: the includes,
 * the region layout's constants, the atomic loads and stores of region fields, the key
 * coercion and the clock read that both the Reader and the Writer do, the process-wide state
 * that module init sets up, and the two type objects.
 *
 * shmkv._core: the compiled read path of a shmkv region, and the compiled fast path of its
 * common writes.
 *
 * One `Reader` per Cache handle does what the pure-Python Reader does (reader.py, formerly
 * Cache._read), in C, with the same arguments and results: coerce the key, hash it with xxh3_64
 * (seed ^ collection), probe the key's stripe sub-table, check the entry, copy the value, and
 * validate the copy with the stripe's seqlock, retrying if a writer moved it. It takes no lock
 * and writes nothing but the slot's access byte on a hit. See reader.c.
 *
 * One `Writer` per Cache handle does the common writes (set, cas, incr and delete) exactly as
 * the Python engine does them (writer.py's put_locked and fill_entry, evict.py's removal),
 * under the stripe's robust mutex and, for an insert, a relocation or a delete, the arena's
 * (locks.py's protocol), and hands every other case, before it has changed anything, to the
 * Python engine through the fallbacks it was given: eviction, pinned entries, the write
 * fence, dropped collections, locks that need a repair, every unusual argument and every
 * error. See writer.c (the type, its methods and an overview), fastpath.c (the in-place
 * write), insert.c, delete.c, alloc.c (the allocator and the lists), events.c, lock.c and
 * args.c (argument parsing).
 *
 * The Writer also makes the handle's views (Cache.view, Cache.view_array): a `View` pins the
 * value under the same stripe mutex, and a `Pin` exports its bytes read-only and drops the pin
 * when the last object built on them goes; every unusual case goes to the Python pin. See
 * pin.c (the pin and the Pin) and view.c (the View).
 *
 * module.c holds the module: its init, its functions and its constants.
 *
 * The region format is the table in layout.py; the constants used here are #defined below and
 * exported as `_core.LAYOUT` (tests/unit/test_core.py checks them against layout.py).
 */
#ifndef SHMKV_CORE_H
#define SHMKV_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Names shared between the files of the extension, and only there: not exported from the
 * shared object (only PyInit__core is), and not interposable by another library's symbol. */
#define SHMKV_INTERNAL __attribute__((visibility("hidden")))

/* --- layout (layout.py, LAYOUT_VERSION 7): same names there ------------------------------- */
/* These are layout.py's names and values. module.c exports them as `_core.LAYOUT` (and the
 * few that layout.py does not name one by one), and tests/unit/test_core.py checks them
 * against layout.py. */
#define LAYOUT_VERSION 7
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
#define H_ARENA_MUTEX 2560   /* the arena lock: inserts, relocations, deletes (lock.c) */
#define LOCKS_ROBUST 2
#define COLLECTION_BYTES 64
#define C_GENERATION 0       /* u16 */
#define COLL_LIVE 1
#define MAX_COLLECTION_NAME_BYTES 40
#define ENTRY_HEADER_BYTES 36
#define MIN_BLOCK_BYTES 40
#define E_BLOCK_WORD 0       /* u32 */
#define E_CHECKSUM 4         /* u32 */
#define E_EXPIRES_AT 16
#define E_VERSION 24         /* u32: the writes counter's low 32 bits */
#define E_VALUE_LEN 28       /* u32 */
#define E_KEY_COLL 32        /* u32: key_len | kind bits << 8 | collection << 16 */
#define E_KIND 33            /* u8: key_len's high bits, then the kind bits */
#define KEY_COLL_MASK 0xFFFF1FFFu
#define KEY_LEN_MASK 0x1FFFu
#define KIND_BYTES 0
#define KIND_ARRAY 0x20
#define KIND_PINNED 0x40
#define PUBLISHED 0x80
#define KIND_MASK KIND_ARRAY
#define SIZE_MASK 0x7FFFFFF8u
#define SEG_BITS 0x80000004u    /* the segment in the block word: bits 2 and 31 */
#define SEG_RETIRED 3
#define SEG_RETIRED_WORD 0x80000004u /* layout.SEG_WORD[SEG_RETIRED] */
#define VERSION_MASK 0xFFFFFFFFu
#define PROC_BYTES 512
#define P_OWNER_PID 0        /* u32 */
#define P_PINS 16            /* PINS_PER_PROC u32 block refs */
#define PINS_PER_PROC ((PROC_BYTES - P_PINS) / 4)
#define MAX_KEY_BYTES 4096
/* not named in layout.py: the u32 after the 8-byte magic (layout.HEADER "<8sI..."), and the
 * collection record's u8 state, after its u16 generation (layout.COLLECTION "<HBB...") */
#define H_LAYOUT_VERSION 8
#define C_STATE 2
#define C_NAME_LEN 3         /* u8 */
#define C_NAME 24
#define S_MUTEX_BYTES 48
/* what a reader loads at E_EXPIRES_AT: expires_at_ns u64, version u32, value_len u32,
 * key_coll u32 */
#define ENTRY_READ_BYTES 20

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
#define MAX_WRITES (((uint64_t)1 << 56) - 1)   /* repair.MAX_WRITES: past it, garbage */
/* a contended lock is waited for in slices of this, so that signal handlers run (locks.py) */
#define WAIT_SLICE_NS 50000000L

_Static_assert(sizeof(_Atomic uint64_t) == 8 && _Alignof(_Atomic uint64_t) == 8,
               "u64 fields must be loadable as naturally aligned atomics");
_Static_assert(sizeof(_Atomic uint32_t) == 4 && sizeof(_Atomic uint8_t) == 1,
               "u32/u8 fields must be loadable as atomics");
_Static_assert(E_EXPIRES_AT + ENTRY_READ_BYTES == ENTRY_HEADER_BYTES,
               "a reader's fields end where the key begins");
_Static_assert(sizeof(pthread_mutex_t) <= S_MUTEX_BYTES && S_MUTEX + S_MUTEX_BYTES <= STRIPE_BYTES,
               "a stripe's mutex must fit its record");
_Static_assert(S_MUTEX % _Alignof(pthread_mutex_t) == 0 && H_ARENA_MUTEX % 64 == 0,
               "mutexes must be aligned");

/* --- process-wide state, set up by module init (module.c) ---------------------------------- */
SHMKV_INTERNAL extern PyObject *time_ns_func; /* time.time_ns, to recognise the default clock */
SHMKV_INTERNAL extern pid_t writer_pid;       /* getpid(), refreshed in a forked child */

/* --- the borrowed mapping that both types hold (the helpers are below) ----------------------- */
/* A Py_buffer on the region's mmap, taken at __init__ and held until close(). A close() while
 * a method call is in flight (from another thread while the call has released the GIL, or from
 * a callback the call makes) only marks the object closed: the last call leaving releases the
 * buffer, so that no call reads memory that is no longer held. */
typedef struct {
    Py_buffer view;
    int has_view;        /* view holds the buffer: released by the last user after close() */
    int closed;
    Py_ssize_t inflight; /* method calls in progress (one may have released the GIL) */
    uint8_t *base;       /* view.buf while it is held, else NULL */
} MappedView;

/* What the Reader and the Writer begin with, so that their tp_new, tp_dealloc and `closed`
 * getter can be shared (each type checks with _Static_assert that its map is where this one's
 * is). */
typedef struct {
    PyObject_HEAD
    MappedView map;
} MappedObject;

/* --- the two types (reader.c, writer.c), which module init readies and adds ----------------- */
SHMKV_INTERNAL extern PyTypeObject ReaderType;
SHMKV_INTERNAL extern PyTypeObject WriterType;

/* --- the Reader (reader.c; its get_many is batch.c) ------------------------------------------ */
typedef struct {
    PyObject_HEAD
    MappedView map;      /* first, as in every MappedObject */
    uint64_t smask;      /* n_stripes - 1 */
    uint32_t per;        /* slots_per_stripe */
    uint64_t stripes_off, index_off, access_off, arena_off, arena_end;
    uint64_t seed;       /* region seed ^ collection */
    uint32_t coll_hi;    /* collection << 16 */
    int clock_is_time_ns;
    PyObject *clock, *coerce_key, *wait_writer, *corrupt_exc;
    uint64_t hits, misses;
} Reader;

enum want { WANT_CONTAINS, WANT_VALUE, WANT_VERSIONED };

/* The read of one key, already coerced and hashed (h: xxh3_64 with self->seed): 1 on a hit
 * (*out: a new reference), 0 on a miss, -1 on error; counts it, as get does (reader.c). */
SHMKV_INTERNAL int reader_read_hashed(Reader *self, const char *key, Py_ssize_t klen,
                                      uint64_t h, enum want want, PyObject **out);
/* The same for a get whose value of copy_below bytes or more is not copied (*out: its length,
 * an int), for the RESP fast path (resp.c) */
SHMKV_INTERNAL int reader_read_below(Reader *self, const char *key, Py_ssize_t klen, uint64_t h,
                                     uint64_t copy_below, PyObject **out);
/* get_many's body (as_list: get_list's; max_bytes < 0: no limit), called between mapped_enter
   and mapped_leave (batch.c) */
SHMKV_INTERNAL PyObject *reader_get_many(Reader *self, PyObject *keys, int as_list,
                                         Py_ssize_t max_bytes);
/* A key of a batch read (batch.c's steps, for callers whose keys are bytes already: the
 * compiled door's get_many, zmqmany.c): read them BATCH_GROUP at a time, each group
 * hashed with batch_hash, then batch_prefetch, then each read with reader_read_hashed. */
#define BATCH_GROUP 32
typedef struct {
    const char *data;
    Py_ssize_t len;
    uint64_t h;  /* xxh3_64(data, seed) */
    uint64_t at; /* batch_prefetch's guess of the offset of its entry's value, or 0 */
} BatchKey;
/* hash the key and prefetch its home slot (step 1) */
SHMKV_INTERNAL void batch_hash(const Reader *self, BatchKey *key);
/* prefetch the entries and values of a group of hashed keys (steps 2 and 2b) */
SHMKV_INTERNAL void batch_prefetch(const Reader *self, BatchKey *keys, int n);

/* --- hashing (hash.c) ------------------------------------------------------------------------ */
/* XXH3_64bits_withSeed of the vendored xxHash */
SHMKV_INTERNAL uint64_t xxh3_64(const void *data, size_t len, uint64_t seed);
SHMKV_INTERNAL extern const char xxh_version[]; /* "major.minor.release" of that xxHash */

/* the u32 little-endian length at p, unaligned (a packed batch's: packed.c, zmqmany.c) */
static inline uint32_t
le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* write n there as le32 reads it; the byte after */
static inline uint8_t *
put_le32(uint8_t *p, uint32_t n)
{
    for (int b = 0; b < 4; b++)
        *p++ = (uint8_t)(n >> (8 * b));
    return p;
}

/* --- atomic loads and stores of region fields ----------------------------------------------- */
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

/* --- what both types do ---------------------------------------------------------------------- */

/* Unix ns from the system clock: what time.time_ns() would return. */
static inline uint64_t
realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The key's bytes: exact bytes and str directly, a memoryview (the node's keys are views of
 * received frames) copied into new bytes without a Python call, anything else (and every
 * error) through coerce_key (the handle's, given to the Reader and the Writer), so that
 * errors carry the project's messages. *owned gets a new reference to keep while the bytes
 * are used, or NULL. 0, or -1 with an exception set. */
static inline int
key_bytes(PyObject *coerce_key, PyObject *key, const char **data, Py_ssize_t *len,
          PyObject **owned)
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
    else if (PyMemoryView_Check(key)) {
        Py_buffer view; /* copied, not borrowed: a lock wait releases the GIL meanwhile */
        if (PyObject_GetBuffer(key, &view, PyBUF_SIMPLE) == 0) {
            PyObject *copy = view.len <= MAX_KEY_BYTES
                ? PyBytes_FromStringAndSize(view.buf, view.len) : NULL;
            PyBuffer_Release(&view);
            if (copy) {
                *data = PyBytes_AS_STRING(copy);
                *len = PyBytes_GET_SIZE(copy);
                *owned = copy;
                return 0;
            }
            if (PyErr_Occurred())
                return -1;
        }
        else {
            PyErr_Clear(); /* released or not contiguous: coerce_key says or copies */
        }
    }
    PyObject *b = PyObject_CallOneArg(coerce_key, key);
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

/* --- the borrowed mapping (MappedView) -------------------------------------------------------- */

/* Take the buffer of obj (writable: PyBUF_WRITABLE, else read-only) into m: 0, or -1 with an
 * exception set. The caller checks the buffer, and releases it with mapped_release if it is
 * not the region it wants; m stays closed until the caller's __init__ sets closed = 0. */
static inline int
mapped_acquire(MappedView *m, PyObject *obj, int writable)
{
    if (PyObject_GetBuffer(obj, &m->view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0)
        return -1;
    m->has_view = 1;
    m->base = (uint8_t *)m->view.buf;
    return 0;
}

/* Give the buffer back, if it is held (idempotent). Only when no call is in flight. */
static inline void
mapped_release(MappedView *m)
{
    if (m->has_view) {
        m->has_view = 0;
        m->base = NULL;
        PyBuffer_Release(&m->view);
    }
}

/* Before a method call uses the buffer: 0, or -1 with ValueError("closed"). */
static inline int
mapped_enter(MappedView *m)
{
    if (m->closed) {
        PyErr_SetString(PyExc_ValueError, "closed");
        return -1;
    }
    m->inflight++;
    return 0;
}

/* After a method call that mapped_enter let in: the last one out after a close() releases. */
static inline void
mapped_leave(MappedView *m)
{
    if (--m->inflight == 0 && m->closed)
        mapped_release(m);
}

/* close(), tp_clear: closed from now on; the buffer is released at once if no call is in
 * flight, else the last call in flight releases it (mapped_leave). Idempotent. */
static inline void
mapped_close(MappedView *m)
{
    m->closed = 1;
    if (!m->inflight)
        mapped_release(m);
}

/* tp_traverse's part for the buffer's exporter */
static inline int
mapped_traverse(MappedView *m, visitproc visit, void *arg)
{
    if (m->has_view)
        Py_VISIT(m->view.obj);
    return 0;
}

/* tp_new of a MappedObject type: closed until __init__ succeeds */
static inline PyObject *
mapped_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    MappedObject *self = (MappedObject *)type->tp_alloc(type, 0);
    if (self)
        self->map.closed = 1; /* until __init__ succeeds */
    return (PyObject *)self;
}

/* tp_dealloc of a MappedObject type, whose tp_clear closes the map */
static inline void
mapped_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    Py_TYPE(self)->tp_clear(self);
    mapped_release(&((MappedObject *)self)->map);
    Py_TYPE(self)->tp_free(self);
}

/* the `closed` getter of a MappedObject type */
static inline PyObject *
mapped_get_closed(PyObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((MappedObject *)self)->map.closed);
}

#endif /* SHMKV_CORE_H */
