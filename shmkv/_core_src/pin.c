/* shmkv/_core_src/pin.c: the compiled view: Writer.view(key) and Writer.view_array(key), the
 * context managers that Cache.view and Cache.view_array return on the compiled engine, and the
 * compiled pin under them (pins.py's pin_locked and unpin, cache.py's _pin_entry).
 *
 * The pin, as pins.py says and under the same lock: the key's stripe mutex is taken (lock.c),
 * the key found (index.find_locked), its expiry checked with the handle's clock, the block's
 * ref stored into one of this process's pin slots and KIND_PINNED set on the entry, the mutex
 * released. The lock, not a fence: the writer must see the pin before it decides that a block
 * is free, and every Python writer reads pins under this same mutex; a lock-free pin would need
 * a full fence on both sides, the Python writer has none, and the uncontended mutex pair costs
 * ~14 ns of a view's ~320 ns open+close (bench/README.md, bench/results/views-*.md). Every
 * unusual case goes, before anything is changed, to the Python path (pin_fallback,
 * Cache._pin_entry), which stays the reference: no free pin slot in the list, a slot whose
 * record this process does not hold (no record claimed yet, or a child forked from the
 * claimer: the record's owner pid is not ours), a stripe that needs a repair, a collection that
 * is not plainly live, a ref out of bounds, a clock that is not an int.
 *
 * Pin slots: the free ones are the u32 indexes in the region's PinTable._free, a Python list
 * that both paths pop from and append to (one owner of that state: PinTable claims the record
 * and fills it; C only takes and gives back). A slot is popped before the mutex is taken (the
 * wait for it releases the GIL) and appended back if nothing was pinned.
 *
 * The lifetime rule (views.py): a `Pin` object owns one pin, and drops it when it dies. It
 * exports the value's bytes, read-only, by the buffer protocol; the memoryview of view() and
 * the ndarray of view_array() are built on it, so anything that still uses the bytes (a slice
 * of the memoryview, an array over it) holds the Pin through numpy's base or the memoryview's
 * managed buffer, and the pin goes exactly when the last of them goes. A Pin also holds its
 * Writer's mapping (map.inflight), so that a view outlives its closed handle. Unpinning takes
 * no lock (a slot cleared late only delays a sweep); when the entry was retired meanwhile, or
 * the handle is closed, after_unpin (PinTable.after_unpin) sweeps or finishes the close. A Pin
 * that a forked child inherited and drops leaves the pin alone: it is the parent's.
 *
 * The View context manager built on a Pin is in view.c.
 */
#include "pin.h"

/* ---------------------------------------------------------------------------------------------- */

static void
key_error(PyObject *key)
{
    PyObject *t = PyTuple_Pack(1, key); /* KeyError(key) even for a tuple key */
    if (t) {
        PyErr_SetObject(PyExc_KeyError, t);
        Py_DECREF(t);
    }
}

/* Under the stripe mutex, what pin_fast decides: FAST_DONE (pinned), FAST_FALLBACK (nothing
 * changed), FAST_ERROR (KeyError, or the clock raised). */
static int
pin_locked(Writer *self, PyObject *key_obj, const char *key, uint32_t klen, uint64_t h,
           uint64_t slot_off, pinned *out)
{
    uint8_t *const base = self->map.base;
    if (self->coll && !writer_coll_is_live(self))
        return FAST_FALLBACK;
    uint64_t off = 0, slot_no = 0;
    uint8_t *const e = writer_find_locked(self, key, klen, h, &off, &slot_no);
    if (e == FIND_GARBAGE)
        return FAST_FALLBACK; /* Python raises CorruptRegion */
    if (!e) {
        key_error(key_obj);
        return FAST_ERROR;
    }
    const uint64_t exp = ld64(e + E_EXPIRES_AT, memory_order_relaxed);
    if (exp) {
        uint64_t now;
        int rc = writer_now(self, &now);
        if (rc <= 0)
            return rc < 0 ? FAST_ERROR : FAST_FALLBACK;
        if (exp <= now) {
            key_error(key_obj);
            return FAST_ERROR;
        }
    }
    const uint32_t vlen = ld32(e + E_VALUE_LEN);
    const uint64_t start = off + ENTRY_HEADER_BYTES + klen;
    if (start + vlen > self->arena_end)
        return FAST_FALLBACK; /* garbage: Python decides */
    /* the pin, then the mark that makes writers look for pins (pins.py's pin_locked); both
     * are seen by the next holder of this mutex, which is where writers read them */
    st32(base + slot_off, (uint32_t)((off - self->arena_off) >> 3));
    const uint8_t kind = ld8(e + E_KIND);
    st8(e + E_KIND, kind | KIND_PINNED);
    out->off = off;
    out->start = start;
    out->vlen = vlen;
    out->kind = kind | KIND_PINNED;
    return FAST_DONE;
}

/* The compiled pin: FAST_DONE (out filled), FAST_FALLBACK (nothing changed) or FAST_ERROR.
 * Called between mapped_enter and mapped_leave. */
static int
pin_fast(Writer *self, PyObject *key_obj, pinned *out)
{
    uint8_t *const base = self->map.base;
    PyObject *const free_pins = self->free_pins;
    /* the key first: coerce_key may run Python code, which may change the list */
    const char *key;
    Py_ssize_t klen;
    PyObject *owned;
    if (key_bytes(self->coerce_key, key_obj, &key, &klen, &owned) < 0)
        return FAST_ERROR;
    const Py_ssize_t n = PyList_GET_SIZE(free_pins);
    PyObject *at = n ? PyList_GET_ITEM(free_pins, n - 1) : NULL;
    unsigned long at_u32 = 0;
    if (at && PyLong_CheckExact(at)) {
        at_u32 = PyLong_AsUnsignedLong(at);
        if (at_u32 == (unsigned long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            at = NULL;
        }
    }
    else {
        at = NULL; /* no record claimed yet, or every slot in use */
    }
    /* the slot must be in a record that this process holds: after a fork, the list is the
     * parent's, whose record the child must not use */
    const uint64_t slot_off = (uint64_t)at_u32 * 4;
    const uint64_t in_procs = slot_off - self->procs_off;
    if (!at || slot_off < self->procs_off
            || in_procs >= (uint64_t)self->max_procs * PROC_BYTES
            || in_procs % PROC_BYTES < P_PINS
            || ld32(base + self->procs_off + in_procs / PROC_BYTES * PROC_BYTES + P_OWNER_PID)
               != (uint32_t)writer_pid) {
        Py_XDECREF(owned);
        return FAST_FALLBACK;
    }
    Py_INCREF(at);
    if (PyList_SetSlice(free_pins, n - 1, n, NULL) < 0) { /* ours until given back */
        Py_DECREF(at);
        Py_XDECREF(owned);
        return FAST_ERROR;
    }
    const uint64_t h = xxh3_64(key, (size_t)klen, self->hseed);
    const uint64_t stripe = h & self->smask;
    uint8_t *const rec = base + self->stripes_off + stripe * STRIPE_BYTES;
    pthread_mutex_t *const m = (pthread_mutex_t *)(void *)(rec + S_MUTEX);
    int out_rc;
    if (lock_stripe(self, m, rec, stripe) < 0) {
        out_rc = FAST_ERROR;
    }
    else if (ld32(rec + S_OWNER_PID) || ld64(rec + S_SEQ, memory_order_relaxed) & 1
             || ld32(rec + S_COUNT) > self->max_count) {
        /* needs Python's repair: leave the recorded pid as it is (fastpath.c) */
        pthread_mutex_unlock(m);
        out_rc = FAST_FALLBACK;
    }
    else {
        st32(rec + S_OWNER_PID, (uint32_t)writer_pid);
        out_rc = pin_locked(self, key_obj, key, (uint32_t)klen, h, slot_off, out);
        st32(rec + S_OWNER_PID, 0);
        pthread_mutex_unlock(m);
    }
    Py_XDECREF(owned);
    if (out_rc == FAST_DONE) {
        out->at = at;
        self->pins_fast++;
        return FAST_DONE;
    }
    /* nothing pinned: the slot goes back where it was */
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    int rc = PyList_Append(free_pins, at);
    Py_DECREF(at);
    if (rc < 0) {
        Py_XDECREF(exc_type);
        Py_XDECREF(exc_value);
        Py_XDECREF(exc_tb);
        return FAST_ERROR;
    }
    PyErr_Restore(exc_type, exc_value, exc_tb);
    return out_rc;
}

/* Pin key: the fast path, else pin_fallback (Cache._pin_entry). 0 (out filled), or -1 with an
 * exception set. Called between mapped_enter and mapped_leave. */
int
pin_any(Writer *self, PyObject *key, pinned *out)
{
    int rc = pin_fast(self, key, out);
    if (rc == FAST_DONE)
        return 0;
    if (rc == FAST_ERROR)
        return -1;
    self->pins_fallback++;
    PyObject *res = PyObject_CallOneArg(self->pin_fallback, key);
    if (!res)
        return -1;
    unsigned long long off, start, vlen, kind;
    if (!PyTuple_CheckExact(res) || PyTuple_GET_SIZE(res) != 5
            || !PyLong_Check(PyTuple_GET_ITEM(res, 0))) {
        Py_DECREF(res);
        PyErr_SetString(PyExc_TypeError, "pin_fallback must return (pin, entry offset, value "
                                         "offset, value bytes, kind)");
        return -1;
    }
    off = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(res, 1));
    start = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(res, 2));
    vlen = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(res, 3));
    kind = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(res, 4));
    if (PyErr_Occurred()) {
        Py_DECREF(res);
        return -1;
    }
    if (start + vlen > self->arena_end || kind > 0xFF) { /* cannot be: Python checked it */
        Py_DECREF(res);
        PyErr_SetString(self->corrupt_exc, "pin_fallback pinned a value outside the arena");
        return -1;
    }
    out->at = Py_NewRef(PyTuple_GET_ITEM(res, 0));
    out->off = off;
    out->start = start;
    out->vlen = (uint32_t)vlen;
    out->kind = (uint8_t)kind;
    Py_DECREF(res);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */

/* Drop the pin in slot at of the entry at off (pins.py's unpin): clear the slot, give it back to
 * free_pins, and call after_unpin(off) if the entry was retired meanwhile or the handle closed.
 * The caller holds one count of the mapping (map.inflight), which this gives back before it
 * calls after_unpin: that may finish the close of the region, which needs the mapping
 * released. 0, or -1 with an exception set. */
static int
drop_pin(Writer *self, PyObject *at, uint64_t off)
{
    uint8_t *const base = self->map.base;
    int rc = 0, retired = 0;
    const unsigned long at_u32 = PyLong_AsUnsignedLong(at);
    const uint64_t slot_off = (uint64_t)at_u32 * 4, in_procs = slot_off - self->procs_off;
    if (at_u32 == (unsigned long)-1 && PyErr_Occurred()) {
        rc = -1;
    }
    else if (slot_off < self->procs_off || in_procs >= (uint64_t)self->max_procs * PROC_BYTES
             || in_procs % PROC_BYTES < P_PINS) {
        PyErr_SetString(PyExc_ValueError, "not a pin slot of the region");
        rc = -1;
    }
    else {
        /* release: every read of the bytes comes before the slot is seen free */
        atomic_store_explicit((_Atomic uint32_t *)(void *)(base + slot_off), 0,
                              memory_order_release);
        retired = (ld32(base + off + E_BLOCK_WORD) & SEG_BITS) == SEG_RETIRED_WORD;
        rc = PyList_Append(self->free_pins, at);
    }
    mapped_leave(&self->map);
    if (rc < 0 || !(retired || self->map.closed))
        return rc;
    PyObject *off_obj = PyLong_FromUnsignedLongLong(off);
    if (!off_obj)
        return -1;
    PyObject *r = PyObject_CallOneArg(self->after_unpin, off_obj);
    Py_DECREF(off_obj);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */

Pin *
pin_new(Writer *owner, const pinned *p)
{
    Pin *self = PyObject_New(Pin, &PinType);
    if (!self) {
        Py_DECREF(p->at); /* the slot stays taken: a pin nobody can drop; memory is gone */
        return NULL;
    }
    self->owner = (Writer *)Py_NewRef(owner);
    owner->map.inflight++; /* the mapping stays until this pin goes (mapped_leave) */
    self->at = p->at;
    self->off = p->off;
    self->ptr = owner->map.base + p->start;
    self->len = (Py_ssize_t)p->vlen;
    self->pid = writer_pid;
    return self;
}

static void
Pin_dealloc(Pin *self)
{
    Writer *w = self->owner;
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    if (self->pid == writer_pid) {
        if (drop_pin(w, self->at, self->off) < 0)
            PyErr_WriteUnraisable(w->after_unpin);
    }
    else { /* a child forked with a view open: the pin is the parent's, and stays */
        mapped_leave(&w->map);
    }
    PyErr_Restore(exc_type, exc_value, exc_tb);
    Py_DECREF(self->at);
    Py_DECREF(w);
    PyObject_Free(self);
}

static int
Pin_getbuffer(Pin *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->ptr, self->len, 1, flags);
}

static PyBufferProcs Pin_as_buffer = {
    .bf_getbuffer = (getbufferproc)Pin_getbuffer,
    .bf_releasebuffer = NULL,
};

static PyObject *
Pin_get_slot(Pin *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->at);
}

static PyObject *
Pin_get_entry(Pin *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->off);
}

static PyGetSetDef Pin_getset[] = {
    {"slot", (getter)Pin_get_slot, NULL, "the pin slot (a u32 index into the region)", NULL},
    {"entry", (getter)Pin_get_entry, NULL, "the pinned entry's offset", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject PinType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmkv._core.Pin",
    .tp_doc = PyDoc_STR("One view's pin of a value's bytes, exported read-only by the buffer "
                        "protocol; the pin is dropped when this object goes. Made by View."),
    .tp_basicsize = sizeof(Pin),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_dealloc = (destructor)Pin_dealloc,
    .tp_as_buffer = &Pin_as_buffer,
    .tp_getset = Pin_getset,
};

/* ---------------------------------------------------------------------------------------------- */

static int
views_enabled(Writer *self)
{
    if (self->free_pins)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "enable_views() was not called on this Writer");
    return 0;
}

PyObject *
writer_view(Writer *self, PyObject *key, int as_array)
{
    if (!views_enabled(self))
        return NULL;
    View *v = PyObject_New(View, &ViewType);
    if (!v)
        return NULL;
    v->owner = (Writer *)Py_NewRef(self);
    v->key = Py_NewRef(key);
    v->pin = NULL;
    v->mv = NULL;
    v->as_array = as_array;
    v->state = 0;
    return (PyObject *)v;
}

/* enable_views(free_pins, procs_offset, max_procs, pin_fallback, after_unpin, array_headers,
 * decode_array, ndarray) */
PyObject *
writer_enable_views(Writer *self, PyObject *args)
{
    PyObject *free_pins, *pin_fallback, *after_unpin, *array_headers, *decode_array, *ndarray;
    Py_ssize_t procs_off, max_procs;
    if (!PyArg_ParseTuple(args, "O!nnOOO!OO:enable_views", &PyList_Type, &free_pins,
                          &procs_off, &max_procs, &pin_fallback, &after_unpin, &PyDict_Type,
                          &array_headers, &decode_array, &ndarray))
        return NULL;
    if (self->free_pins) {
        PyErr_SetString(PyExc_RuntimeError, "enable_views() was called already");
        return NULL;
    }
    if (!PyCallable_Check(pin_fallback) || !PyCallable_Check(after_unpin)
            || !PyCallable_Check(decode_array) || !PyCallable_Check(ndarray)) {
        PyErr_SetString(PyExc_TypeError, "pin_fallback, after_unpin, decode_array and ndarray "
                                         "must be callable");
        return NULL;
    }
    if (mapped_enter(&self->map) < 0)
        return NULL;
    const uint64_t len = (uint64_t)self->map.view.len;
    mapped_leave(&self->map);
    if (procs_off < 0 || procs_off % ALIGN || max_procs < 1 || max_procs > 0xFFFF
            || (uint64_t)procs_off + (uint64_t)max_procs * PROC_BYTES > len) {
        PyErr_SetString(PyExc_ValueError, "the process records do not fit in the buffer");
        return NULL;
    }
    if (view_strings_init() < 0)
        return NULL;
    self->procs_off = (uint64_t)procs_off;
    self->max_procs = (uint32_t)max_procs;
    self->free_pins = Py_NewRef(free_pins);
    self->pin_fallback = Py_NewRef(pin_fallback);
    self->after_unpin = Py_NewRef(after_unpin);
    self->array_headers = Py_NewRef(array_headers);
    self->decode_array = Py_NewRef(decode_array);
    self->ndarray_type = Py_NewRef(ndarray);
    Py_RETURN_NONE;
}

/* pin(key): pin as a view does, fast path or pin_fallback: (pin, entry offset, value offset,
 * value bytes, kind), to be dropped by unpin(pin, off) (or PinTable.unpin: they are the same) */
PyObject *
writer_pin(Writer *self, PyObject *key)
{
    if (!views_enabled(self) || mapped_enter(&self->map) < 0)
        return NULL;
    pinned p;
    PyObject *res = NULL;
    if (pin_any(self, key, &p) == 0) {
        res = Py_BuildValue("(NKKIB)", p.at, (unsigned long long)p.off,
                            (unsigned long long)p.start, (unsigned int)p.vlen,
                            (unsigned char)p.kind);
    }
    mapped_leave(&self->map);
    return res;
}

/* unpin(pin, off): drop a pin taken by pin() or by PinTable.pin_locked */
PyObject *
writer_unpin(Writer *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "unpin(pin, off) takes 2 arguments");
        return NULL;
    }
    unsigned long long off = PyLong_AsUnsignedLongLong(args[1]);
    if (off == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (!views_enabled(self) || mapped_enter(&self->map) < 0)
        return NULL;
    if (off + ENTRY_HEADER_BYTES > self->arena_end || off < self->arena_off) {
        mapped_leave(&self->map);
        PyErr_SetString(PyExc_ValueError, "off is not an entry of the arena");
        return NULL;
    }
    if (drop_pin(self, args[0], off) < 0) /* gives the mapping back */
        return NULL;
    Py_RETURN_NONE;
}
