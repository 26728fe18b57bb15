/* shmkv/_core_src/reader.c: the Reader type, shmkv._core.Reader, the lock-free read path of
 * one Cache handle (reader.py's Reader, compiled): get, get_with_version, contains, get_many.
 *
 * Memory ordering, the standard seqlock reader: seq is loaded with acquire, then the slots, the
 * entry fields (relaxed atomic loads of their natural width), key and value bytes are read,
 * then an acquire fence and seq is loaded again. Whatever was read is used only if seq was even
 * and unchanged; a block freed and reused meanwhile can hold any bytes, so every offset is
 * bounds-checked against the arena before it is followed.
 */
#include "core.h"

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/* --- the Reader type (its struct is in core.h) ------------------------------------------ */
_Static_assert(offsetof(Reader, map) == offsetof(MappedObject, map),
               "a Reader is a MappedObject");

static int
Reader_init(Reader *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "n_stripes", "slots_per_stripe", "stripes_offset",
                             "index_offset", "access_offset", "arena_offset", "arena_bytes",
                             "seed", "coll", "clock", "coerce_key", "wait_writer",
                             "corrupt_exc", NULL};
    PyObject *buffer, *seed_obj, *clock, *coerce_key, *wait_writer, *corrupt_exc;
    Py_ssize_t n_stripes, per, stripes_off, index_off, access_off, arena_off, arena_bytes, coll;

    if (self->map.has_view || self->clock) {
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
    if (mapped_acquire(&self->map, buffer, 1) < 0)
        return -1;
    uint64_t len = (uint64_t)self->map.view.len;
    uint64_t ns = (uint64_t)n_stripes, pp = (uint64_t)per;
    const char *bad = NULL;
    if ((uintptr_t)self->map.base % ALIGN)
        bad = "buffer is not 8-byte aligned";
    else if (len < H_LAYOUT_VERSION + 4
             || ld32(self->map.base + H_LAYOUT_VERSION) != LAYOUT_VERSION)
        bad = "buffer is not a region of the layout version shmkv._core was built for";
    else if ((uint64_t)stripes_off + ns * STRIPE_BYTES > len
             || (uint64_t)access_off + ns * pp > len
             || (uint64_t)index_off + ns * pp * 8 > len
             || (uint64_t)arena_off + (uint64_t)arena_bytes > len)
        bad = "layout does not fit in the buffer";
    if (bad) {
        mapped_release(&self->map);
        PyErr_SetString(PyExc_ValueError, bad);
        return -1;
    }
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
    self->map.closed = 0;
    return 0;
}

static int
Reader_traverse(Reader *self, visitproc visit, void *arg)
{
    Py_VISIT(self->clock);
    Py_VISIT(self->coerce_key);
    Py_VISIT(self->wait_writer);
    Py_VISIT(self->corrupt_exc);
    return mapped_traverse(&self->map, visit, arg);
}

static int
Reader_clear(Reader *self)
{
    mapped_close(&self->map);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->coerce_key);
    Py_CLEAR(self->wait_writer);
    Py_CLEAR(self->corrupt_exc);
    return 0;
}

/* --- the read ----------------------------------------------------------------------------- */

/* 1 if an entry that expires at exp (unix ns, not 0) has expired, 0 if not, -1 on error */
static int
expired(Reader *self, uint64_t exp)
{
    if (self->clock_is_time_ns)
        return exp <= realtime_ns();
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

/* Read the key of bytes key[:klen], whose xxh3_64 with self->seed is h, consistently.
 * Returns 1 on a hit (*out: new reference to the value, the (value, version) tuple, or Py_True
 * for WANT_CONTAINS; a value of copy_below bytes or more is not copied: its length as an int
 * instead), 0 on a miss, -1 on error. Counts the hit or miss and marks the slot's access byte
 * on a hit, like the pure-Python Reader. */
static inline __attribute__((always_inline)) int
read_hashed(Reader *self, const char *key, Py_ssize_t klen, uint64_t h, enum want want,
            uint64_t copy_below, PyObject **out)
{
    uint8_t *const base = self->map.base;
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
                /* one load checks key_len and collection; the kind bits are masked off */
                const uint32_t kc = ld32(e + E_KEY_COLL) & KEY_COLL_MASK;
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
                            else if (vlen >= copy_below) {
                                found = PyLong_FromUnsignedLong(vlen);
                                if (!found)
                                    goto done;
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
                                    version = (uint64_t)ld32(e + E_VERSION) << 8 | stripe;
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
            if (want == WANT_VERSIONED && PyBytes_Check(found)) {
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
    return rc;
}

/* read_hashed, for get_many (batch.c), which coerces and hashes its keys ahead */
int
reader_read_hashed(Reader *self, const char *key, Py_ssize_t klen, uint64_t h, enum want want,
                   PyObject **out)
{
    return read_hashed(self, key, klen, h, want, UINT64_MAX, out);
}

/* read_hashed with copy_below, for the RESP fast path (resp.c) */
int
reader_read_below(Reader *self, const char *key, Py_ssize_t klen, uint64_t h,
                  uint64_t copy_below, PyObject **out)
{
    return read_hashed(self, key, klen, h, WANT_VALUE, copy_below, out);
}

/* read_hashed of key as given: coerced (the handle's errors) and hashed */
static int
reader_read(Reader *self, PyObject *key_obj, enum want want, uint64_t copy_below,
            PyObject **out)
{
    const char *key;
    Py_ssize_t klen;
    PyObject *owned;
    if (key_bytes(self->coerce_key, key_obj, &key, &klen, &owned) < 0)
        return -1;
    int rc = read_hashed(self, key, klen, xxh3_64(key, (size_t)klen, self->seed), want,
                         copy_below, out);
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
    if (mapped_enter(&self->map) < 0)
        return NULL;
    PyObject *found = NULL;
    int rc = reader_read(self, key, WANT_VALUE, UINT64_MAX, &found);
    mapped_leave(&self->map);
    if (rc < 0)
        return NULL;
    if (rc == 0)
        return Py_NewRef(dflt ? dflt : Py_None);
    return found;
}

static PyObject *
Reader_get_with_version(Reader *self, PyObject *key)
{
    if (mapped_enter(&self->map) < 0)
        return NULL;
    PyObject *found = NULL;
    int rc = reader_read(self, key, WANT_VERSIONED, UINT64_MAX, &found);
    mapped_leave(&self->map);
    if (rc < 0)
        return NULL;
    return rc ? found : Py_NewRef(Py_None);
}

/* get_below(key, limit_bytes, versioned): get or get_with_version, but a value of limit_bytes
 * or more is not copied: its length (an int) instead. For the node's zero-copy sends
 * (broker/zerocopy.py), which pin only what is large. */
static PyObject *
Reader_get_below(Reader *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "get_below(key, limit_bytes, versioned)");
        return NULL;
    }
    unsigned long long limit = PyLong_AsUnsignedLongLong(args[1]);
    if (limit == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    int versioned = PyObject_IsTrue(args[2]);
    if (versioned < 0 || mapped_enter(&self->map) < 0)
        return NULL;
    PyObject *found = NULL;
    int rc = reader_read(self, args[0], versioned ? WANT_VERSIONED : WANT_VALUE,
                         (uint64_t)limit, &found);
    mapped_leave(&self->map);
    if (rc < 0)
        return NULL;
    return rc ? found : Py_NewRef(Py_None);
}

static PyObject *
Reader_contains(Reader *self, PyObject *key)
{
    if (mapped_enter(&self->map) < 0)
        return NULL;
    PyObject *found = NULL;
    int rc = reader_read(self, key, WANT_CONTAINS, UINT64_MAX, &found);
    mapped_leave(&self->map);
    if (rc < 0)
        return NULL;
    Py_XDECREF(found);
    return PyBool_FromLong(rc);
}

static PyObject *
Reader_get_many(Reader *self, PyObject *keys)
{
    if (mapped_enter(&self->map) < 0)
        return NULL;
    PyObject *found = reader_get_many(self, keys, 0, -1); /* batch.c */
    mapped_leave(&self->map);
    return found;
}

static PyObject *
Reader_get_list(Reader *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t max_bytes = -1;
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get_list() takes 1 or 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (nargs == 2 && args[1] != Py_None) {
        max_bytes = PyLong_AsSsize_t(args[1]);
        if (max_bytes == -1 && PyErr_Occurred())
            return NULL;
        if (max_bytes < 0) {
            PyErr_SetString(PyExc_ValueError, "get_list(): max_bytes must be >= 0 or None");
            return NULL;
        }
    }
    if (mapped_enter(&self->map) < 0)
        return NULL;
    PyObject *found = reader_get_many(self, args[0], 1, max_bytes); /* batch.c */
    mapped_leave(&self->map);
    return found;
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
    mapped_close(&self->map);
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

static PyMethodDef Reader_methods[] = {
    {"get", (PyCFunction)(void (*)(void))Reader_get, METH_FASTCALL | METH_KEYWORDS,
     "get(key, default=None): the value of key as bytes, or default if absent or expired."},
    {"get_with_version", (PyCFunction)Reader_get_with_version, METH_O,
     "get_with_version(key): (value, version), or None if absent or expired."},
    {"get_below", (PyCFunction)(void (*)(void))Reader_get_below, METH_FASTCALL,
     "get_below(key, limit_bytes, versioned): get (versioned: get_with_version), but the "
     "length (an int) of a value of limit_bytes or more, not a copy."},
    {"contains", (PyCFunction)Reader_contains, METH_O,
     "contains(key): True if key is present and not expired (no value copy)."},
    {"get_many", (PyCFunction)Reader_get_many, METH_O,
     "get_many(keys): {key as given: value} of the keys that are present."},
    {"get_list", (PyCFunction)(void (*)(void))Reader_get_list, METH_FASTCALL,
     "get_list(keys, max_bytes=None): [value or None], one per key, in the keys' order; "
     "shorter than keys if the values' bytes passed max_bytes (it ends with the value that "
     "did)."},
    {"take_counts", (PyCFunction)Reader_take_counts, METH_NOARGS,
     "take_counts(): (hits, misses) counted since the last call, then zeroed."},
    {"close", (PyCFunction)Reader_close, METH_NOARGS,
     "close(): release the buffer (once no call is in flight); idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Reader_getset[] = {
    {"hits", (getter)Reader_get_hits, NULL, "hits not yet taken by take_counts()", NULL},
    {"misses", (getter)Reader_get_misses, NULL, "misses not yet taken by take_counts()", NULL},
    {"closed", (getter)mapped_get_closed, NULL, "True once close() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject ReaderType = {
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
    .tp_new = mapped_new,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = mapped_dealloc,
    .tp_traverse = (traverseproc)Reader_traverse,
    .tp_clear = (inquiry)Reader_clear,
    .tp_methods = Reader_methods,
    .tp_getset = Reader_getset,
};
