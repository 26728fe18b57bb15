/* shmkv/_core_src/writer.c: the Writer type, shmkv._core.Writer, the compiled fast path of a
 * Cache handle's set, cas, incr and delete: the object, its methods, and the hand-over of every
 * other case to the Python engine. The in-place write is in fastpath.c, inserts and relocations
 * in insert.c, deletes in delete.c, the allocator and the lists in alloc.c, events in events.c,
 * the locks in lock.c, the argument parsing in args.c. */
#include "writer.h"

/* --- the Writer, an overview ---------------------------------------------------------------
 *
 * One `Writer` per Cache handle: set(key, value, ttl_s=None), cas(key, value, version,
 * ttl_s=None), incr(key, delta=1) and delete(key), with Cache's signatures, so that the handle
 * can bind them as its own methods; and put_absolute(key, value, expires_at_ns) for a restore.
 * The fast path is Cache._put_locked's write (in place when the new entry fits the key's block
 * snugly, else into a new block that a free block of the arena provides) and Cache.delete:
 * exact bytes or str keys and values (others are coerced by coerce_key, or handed over), no
 * write fence, a live collection, a sound stripe, nothing to evict (a block that a view pins
 * is retired, as pins.py does, once views are enabled).
 * Anything else goes to the Python engine (the fallbacks), which then does the whole call
 * itself: the fast path decides before it changes anything, so a call is done either all in C
 * or all in Python, and behaves as Python's (the twin-region tests compare the bytes).
 *
 * Locking (locks.py's protocol): the stripe's robust process-shared mutex, in the stripe
 * record. trylock; if busy, wait (GIL released) with pthread_mutex_clocklock in slices until
 * lock_timeout_s, then LockTimeout naming the recorded pid. EOWNERDEAD: made consistent at once
 * (lock.c). Held, the stripe needs the Python repair if a pid is still recorded (a holder died
 * inside), its seq is odd or its count is impossible: then the lock is given back untouched
 * (the pid stays: it is the needs-repair mark) and the call goes to Python, which repairs. Else
 * our pid is recorded for the time we hold it. Inserts, relocations and deletes then take the
 * arena lock the same way (a recorded pid or a wait past lock_timeout_s: Python's), and hold
 * it from the allocation (or, for a delete, from before the slot's removal) to the free.
 *
 * The in-place write (fastpath.c), as the in-place branch of _put_locked with
 * _fill_entry(new=False): seq made odd (relaxed store, release fence), the stripe's writes,
 * changes and payload counters, the value, version, expiry, length, kind and checksum of the
 * entry, a release fence, seq made even (release store); then the access byte of the slot the
 * key was found in (lru.mark(off, True)), and the EV_SET when events are on.
 *
 * Expiry sampling (fastpath.c): an in-place writer must reclaim expired entries too (a process
 * that only overwrites would never reclaim anything otherwise). Every WRITER_EXPIRY_EVERY-th
 * write of a stripe (by its writes counter), once the stripe lock is released,
 * WRITER_EXPIRY_SLOTS slots from the region's expiry cursor are looked at without any lock
 * (every ref bounds-checked); if one looks expired, expire_hook() is called (Python: the real
 * expiry pass, under the arena lock, which verifies everything), else the cursor is moved past
 * them (a relaxed store; it is only a hint). An insert looks before it writes (insert.c), as
 * Python's does, and so does an in-place write with events on (Python's pass emits its events
 * before the write's).
 */

/* --- the object ------------------------------------------------------------------------------- */
_Static_assert(offsetof(Writer, map) == offsetof(MappedObject, map),
               "a Writer is a MappedObject");

static int
Writer_init(Writer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "n_stripes", "slots_per_stripe", "stripes_offset",
                             "collections_offset", "access_offset", "index_offset",
                             "arena_offset", "arena_bytes", "seed", "coll", "gen",
                             "lock_timeout_s", "clock", "coerce_key", "lock_timeout_exc",
                             "corrupt_exc", "write_fallback", "incr_fallback", "expire_hook",
                             "set_fallback", "events_offset", "event_ring_bytes",
                             "counts_offset", "max_collections", "delete_fallback", NULL};
    PyObject *buffer, *seed_obj, *timeout_obj, *clock, *coerce_key, *timeout_exc, *corrupt_exc;
    PyObject *write_fallback, *incr_fallback, *expire_hook, *set_fallback = NULL;
    PyObject *delete_fallback = NULL;
    Py_ssize_t events_off = -1, ring_bytes = -1, counts_off = -1, max_colls = -1;
    Py_ssize_t n_stripes, per, stripes_off, colls_off, access_off, index_off, arena_off;
    Py_ssize_t arena_bytes, coll, gen;

    if (self->map.has_view || self->clock) {
        PyErr_SetString(PyExc_TypeError, "Writer is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnnnnnnnnOnnOOOOOOOO|O$nnnnO:Writer", kwlist,
                                     &buffer,
                                     &n_stripes, &per, &stripes_off, &colls_off, &access_off,
                                     &index_off, &arena_off, &arena_bytes, &seed_obj, &coll,
                                     &gen, &timeout_obj, &clock, &coerce_key, &timeout_exc,
                                     &corrupt_exc, &write_fallback, &incr_fallback,
                                     &expire_hook, &set_fallback, &events_off, &ring_bytes,
                                     &counts_off, &max_colls, &delete_fallback))
        return -1;
    if (set_fallback == Py_None)
        set_fallback = NULL;
    if (delete_fallback == Py_None)
        delete_fallback = NULL;
    /* inserts, deletes and events need all four areas' places; without them, Python's */
    const int ext = events_off >= 0 && ring_bytes > 0 && counts_off >= 0 && max_colls > coll;
    if (ext && (events_off % ALIGN || counts_off % 4 || ring_bytes % ALIGN
                || max_colls > 0xFFFF)) {
        PyErr_SetString(PyExc_ValueError, "events_offset and event_ring_bytes must be multiples "
                                          "of 8, counts_offset of 4");
        return -1;
    }
    if (delete_fallback && !PyCallable_Check(delete_fallback)) {
        PyErr_SetString(PyExc_TypeError, "delete_fallback must be callable");
        return -1;
    }
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
            || !PyCallable_Check(expire_hook)
            || (set_fallback && !PyCallable_Check(set_fallback))) {
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
    if (mapped_acquire(&self->map, buffer, 1) < 0) {
        Py_DECREF(timeout_str);
        return -1;
    }
    uint64_t len = (uint64_t)self->map.view.len;
    uint64_t ns = (uint64_t)n_stripes, pp = (uint64_t)per;
    const uint8_t *buf = self->map.base;
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
             || (uint64_t)arena_off + (uint64_t)arena_bytes > len
             || (ext && ((uint64_t)events_off + ns * (uint64_t)ring_bytes > len
                         || (uint64_t)counts_off + ns * (uint64_t)max_colls * 4 > len)))
        bad = "layout does not fit in the buffer";
    if (bad) {
        mapped_release(&self->map);
        Py_DECREF(timeout_str);
        PyErr_SetString(PyExc_ValueError, bad);
        return -1;
    }
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
    self->set_fallback = Py_XNewRef(set_fallback);
    self->ext = ext;
    self->events_off = ext ? (uint64_t)events_off : 0;
    self->ring_bytes = ext ? (uint64_t)ring_bytes : 0;
    self->counts_off = ext ? (uint64_t)counts_off : 0;
    self->max_colls = ext ? (uint32_t)max_colls : 0;
    self->arena_first = (uint64_t)arena_off + ALIGN;
    self->arena_last = (uint64_t)arena_off + (uint64_t)arena_bytes - ALIGN;
    self->delete_fallback = Py_XNewRef(delete_fallback);
    self->map.closed = 0;
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
    Py_VISIT(self->set_fallback);
    Py_VISIT(self->delete_fallback);
    Py_VISIT(self->expire_hook);
    Py_VISIT(self->free_pins);
    Py_VISIT(self->pin_fallback);
    Py_VISIT(self->after_unpin);
    Py_VISIT(self->array_headers);
    Py_VISIT(self->decode_array);
    Py_VISIT(self->ndarray_type);
    return mapped_traverse(&self->map, visit, arg);
}

static int
Writer_clear(Writer *self)
{
    mapped_close(&self->map);
    Py_CLEAR(self->timeout_str);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->coerce_key);
    Py_CLEAR(self->timeout_exc);
    Py_CLEAR(self->corrupt_exc);
    Py_CLEAR(self->write_fallback);
    Py_CLEAR(self->incr_fallback);
    Py_CLEAR(self->set_fallback);
    Py_CLEAR(self->delete_fallback);
    Py_CLEAR(self->expire_hook);
    Py_CLEAR(self->free_pins);
    Py_CLEAR(self->pin_fallback);
    Py_CLEAR(self->after_unpin);
    Py_CLEAR(self->array_headers);
    Py_CLEAR(self->decode_array);
    Py_CLEAR(self->ndarray_type);
    return 0;
}

/* --- the methods ------------------------------------------------------------------------------ */
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
    /* set's options (nx, xx, keepttl, get) are Python's business, the whole call: checked
     * before anything is looked at, so a plain set pays nothing for them (kwnames is NULL) */
    if (kwnames && self->set_fallback && has_other_keyword(&set_sig, kwnames)) {
        self->fallbacks++;
        return PyObject_Vectorcall(self->set_fallback, args, nargs, kwnames);
    }
    if (parse_args(&set_sig, args, nargs, kwnames, a) < 0)
        return NULL;
    PyObject *key = a[0], *value = a[1], *ttl = a[2] ? a[2] : Py_None;
    if (mapped_enter(&self->map) < 0)
        return NULL;
    wreq r;
    r.op = W_SET;
    r.writes = 0;
    int rc = value_bytes(value, &r);
    if (rc > 0)
        rc = expiry(self, ttl, &r);
    if (rc > 0)
        rc = writer_run(self, key, &r);
    value_release(&r);
    PyObject *res = NULL;
    if (rc == FAST_DONE) {
        res = Py_NewRef(Py_None);
    }
    else if (rc == FAST_FALLBACK) {
        res = call_write_fallback(self, key, value, ttl, Py_None);
        if (res)
            Py_SETREF(res, Py_NewRef(Py_None));
    }
    mapped_leave(&self->map);
    return res;
}

/* put_absolute(key, value, expires_at_ns): what snapshot.put_absolute does for a bytes value
 * (any contiguous buffer), with an absolute expiry: True if it was done in C, False if the
 * caller must do it in Python (nothing was changed). */
static PyObject *
Writer_put_absolute(Writer *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "put_absolute(key, value, expires_at_ns)");
        return NULL;
    }
    unsigned long long exp = PyLong_Check(args[2]) ? PyLong_AsUnsignedLongLong(args[2]) : 0;
    if (!PyLong_Check(args[2]) || (exp == (unsigned long long)-1 && PyErr_Occurred())) {
        PyErr_Clear();
        self->fallbacks++;
        Py_RETURN_FALSE; /* Python says what is wrong with it */
    }
    if (mapped_enter(&self->map) < 0)
        return NULL;
    Py_buffer vb;
    int rc = FAST_FALLBACK;
    if (PyObject_GetBuffer(args[1], &vb, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
    }
    else {
        if ((size_t)vb.len <= INPLACE_MAX_BYTES) {
            wreq r;
            r.op = W_SET;
            r.writes = 0;
            r.val = (const char *)vb.buf;
            r.vlen = (uint32_t)vb.len;
            r.exp = (uint64_t)exp;
            rc = writer_run(self, args[0], &r);
        }
        PyBuffer_Release(&vb);
    }
    mapped_leave(&self->map);
    if (rc == FAST_ERROR)
        return NULL;
    if (rc == FAST_FALLBACK)
        self->fallbacks++;
    return PyBool_FromLong(rc == FAST_DONE);
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
    if (mapped_enter(&self->map) < 0)
        return NULL;
    wreq r;
    r.op = W_CAS;
    r.writes = 0;
    r.held.obj = NULL;
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
    value_release(&r);
    PyObject *res = NULL;
    if (rc == FAST_DONE)
        res = PyBool_FromLong(r.cas_ok);
    else if (rc == FAST_FALLBACK)
        res = call_write_fallback(self, key, value, ttl, version);
    mapped_leave(&self->map);
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
    if (mapped_enter(&self->map) < 0)
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
    mapped_leave(&self->map);
    return res;
}

static PyObject *
Writer_close(Writer *self, PyObject *Py_UNUSED(ignored))
{
    mapped_close(&self->map);
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

static PyObject *
Writer_view(Writer *self, PyObject *key)
{
    return writer_view(self, key, 0);
}

static PyObject *
Writer_view_array(Writer *self, PyObject *key)
{
    return writer_view(self, key, 1);
}

static PyObject *
Writer_get_pins_fast(Writer *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->pins_fast);
}

static PyObject *
Writer_get_pins_fallback(Writer *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->pins_fallback);
}

static PyMethodDef Writer_methods[] = {
    {"view", (PyCFunction)Writer_view, METH_O,
     "view(key): Cache.view, a View to enter (pin.c)."},
    {"view_array", (PyCFunction)Writer_view_array, METH_O,
     "view_array(key): Cache.view_array, a View to enter (pin.c)."},
    {"enable_views", (PyCFunction)writer_enable_views, METH_VARARGS,
     "enable_views(free_pins, procs_offset, max_procs, pin_fallback, after_unpin, "
     "array_headers, decode_array, ndarray): what views need: the PinTable's list of free pin "
     "slots, where the process records are, Cache._pin_entry, PinTable.after_unpin, "
     "arrays.py's cache of decoded headers and its decode_header, numpy.ndarray."},
    {"pin", (PyCFunction)writer_pin, METH_O,
     "pin(key): pin key's entry as a view does: (pin, entry offset, value offset, value "
     "bytes, kind); KeyError if absent."},
    {"unpin", (PyCFunction)(void (*)(void))writer_unpin, METH_FASTCALL,
     "unpin(pin, off): drop a pin (from pin() or PinTable.pin_locked)."},
    {"set", (PyCFunction)(void (*)(void))Writer_set, METH_FASTCALL | METH_KEYWORDS,
     "set(key, value, ttl_s=None, **options): Cache.set; in C, else write_fallback "
     "(set_fallback with an option)."},
    {"cas", (PyCFunction)(void (*)(void))Writer_cas, METH_FASTCALL | METH_KEYWORDS,
     "cas(key, value, version, ttl_s=None): Cache.cas; in C, else write_fallback."},
    {"incr", (PyCFunction)(void (*)(void))Writer_incr, METH_FASTCALL | METH_KEYWORDS,
     "incr(key, delta=1): Cache.incr; in C, else incr_fallback."},
    {"put_absolute", (PyCFunction)(void (*)(void))Writer_put_absolute, METH_FASTCALL,
     "put_absolute(key, value, expires_at_ns): a restore's write of a bytes value with an "
     "absolute expiry; True if done in C, False if the caller must write it in Python."},
    {"delete", (PyCFunction)(void (*)(void))writer_delete, METH_FASTCALL | METH_KEYWORDS,
     "delete(key): Cache.delete; in C, else delete_fallback."},
    {"take_counts", (PyCFunction)Writer_take_counts, METH_NOARGS,
     "take_counts(): (calls done in C, calls handed to the fallbacks, expire_hook calls) "
     "since the last call, then zeroed."},
    {"close", (PyCFunction)Writer_close, METH_NOARGS,
     "close(): release the buffer (once no call is in flight); idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Writer_getset[] = {
    {"closed", (getter)mapped_get_closed, NULL, "True once close() was called", NULL},
    {"fast", (getter)Writer_get_fast, NULL, "calls done in C, not yet taken", NULL},
    {"fallbacks", (getter)Writer_get_fallbacks, NULL,
     "calls handed to the fallbacks, not yet taken", NULL},
    {"expire_calls", (getter)Writer_get_expire_calls, NULL,
     "expire_hook calls, not yet taken", NULL},
    {"pins_fast", (getter)Writer_get_pins_fast, NULL, "pins taken in C", NULL},
    {"pins_fallback", (getter)Writer_get_pins_fallback, NULL,
     "pins handed to pin_fallback", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmkv._core.Writer",
    .tp_doc = PyDoc_STR(
        "Writer(buffer, n_stripes, slots_per_stripe, stripes_offset, collections_offset, "
        "access_offset, index_offset, arena_offset, arena_bytes, seed, coll, gen, "
        "lock_timeout_s, clock, coerce_key, lock_timeout_exc, corrupt_exc, write_fallback, "
        "incr_fallback, expire_hook, set_fallback=None, *, events_offset, event_ring_bytes, "
        "counts_offset, max_collections, delete_fallback)\n\n"
        "The write path of one Cache handle (set, cas, incr, delete) over a region's writable "
        "buffer, which it holds until close(); every case it does not do goes to the "
        "fallbacks: write_fallback(key, value, ttl_s, if_version) (Cache._write), "
        "incr_fallback(key, delta) (Cache.incr's Python body), delete_fallback(key) "
        "(Cache.delete's); set_fallback(*args, **kwargs) (Cache.set in Python) takes a set "
        "with an option (nx, xx, keepttl, get). expire_hook() runs the expiry pass when the "
        "writer's sampling saw an expired entry. Without the keyword-only areas, inserts, "
        "relocations, deletes and writes with events on all go to the fallbacks."),
    .tp_basicsize = sizeof(Writer),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = mapped_new,
    .tp_init = (initproc)Writer_init,
    .tp_dealloc = mapped_dealloc,
    .tp_traverse = (traverseproc)Writer_traverse,
    .tp_clear = (inquiry)Writer_clear,
    .tp_methods = Writer_methods,
    .tp_getset = Writer_getset,
};
