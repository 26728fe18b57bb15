/* shmkv/_core_src/view.c: the View, what `with cache.view(key) as mv:` and
 * `with cache.view_array(key) as a:` enter on the compiled engine: it pins the key (pin.c),
 * builds the memoryview or the ndarray on the Pin, and at the end of the block releases the
 * memoryview; the Pin, and with it the pin, goes when the last thing built on it goes.
 *
 * view_array decodes the array header (arrays.py) once per distinct header bytes: it looks the
 * bytes up in arrays.DECODED, and calls arrays.decode_header only when they are not there.
 */
#include "pin.h"

/* --- the View: what `with cache.view(key) as mv:` enters ------------------------------------- */

/* more than any valid array header (arrays.py: 16 + 8 * MAX_NDIM + a u16 descr + padding) */
#define ARRAY_HEADER_MAX_BYTES (1u << 17)
/* the largest header looked up in arrays.py's cache from C (arrays.MAX_CACHED_HEADER_BYTES) */
#define ARRAY_HEADER_CACHED_BYTES 4096u

/* (dtype, shape, data_offset, data bytes) of the array value that p exports: from arrays.py's
 * cache of decoded headers, else decode_array(head, value bytes) (arrays.decode_header), which
 * raises TypeError for what is not an array. A new reference, or NULL with an exception. Only
 * bytes go to Python, never the Pin: a traceback must not keep the pin alive. */
static PyObject *
array_header(Writer *w, Pin *p)
{
    uint64_t n = (uint64_t)p->len;
    if (n >= 16) {
        uint32_t data_offset;
        memcpy(&data_offset, p->ptr + 8, 4); /* the header's data_offset (arrays.py), LE */
        n = data_offset < 16 ? 16 : data_offset;
        if (n > (uint64_t)p->len)
            n = (uint64_t)p->len;
        if (n > ARRAY_HEADER_MAX_BYTES)
            n = ARRAY_HEADER_MAX_BYTES;
    }
    PyObject *head = PyBytes_FromStringAndSize((const char *)p->ptr, (Py_ssize_t)n);
    if (!head)
        return NULL;
    if (n <= ARRAY_HEADER_CACHED_BYTES) {
        PyObject *hit = PyDict_GetItemWithError(w->array_headers, head);
        if (hit && PyTuple_CheckExact(hit) && PyTuple_GET_SIZE(hit) == 4) {
            /* the data must end the value: the same header over another length is damaged */
            const unsigned long long data_offset = PyLong_AsUnsignedLongLong(
                PyTuple_GET_ITEM(hit, 2));
            const unsigned long long nbytes = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(hit, 3));
            if (!PyErr_Occurred() && data_offset + nbytes == (uint64_t)p->len) {
                Py_DECREF(head);
                return Py_NewRef(hit);
            }
            PyErr_Clear();
        }
        else if (PyErr_Occurred()) {
            Py_DECREF(head);
            return NULL;
        }
    }
    PyObject *len_obj = PyLong_FromSsize_t(p->len);
    PyObject *res = NULL;
    if (len_obj) {
        PyObject *args[2] = {head, len_obj};
        res = PyObject_Vectorcall(w->decode_array, args, 2, NULL);
        Py_DECREF(len_obj);
    }
    Py_DECREF(head);
    return res;
}

static PyObject *
view_array_of(View *self, Pin *p, uint8_t kind)
{
    Writer *w = self->owner;
    if ((kind & KIND_MASK) != KIND_ARRAY)
        return PyErr_Format(PyExc_TypeError, "the value at %R was stored with set(), not "
                            "set_array(); read it with get() or view()", self->key);
    PyObject *head = array_header(w, p);
    if (!head)
        return NULL;
    if (!PyTuple_Check(head) || PyTuple_GET_SIZE(head) < 3) {
        Py_DECREF(head);
        PyErr_SetString(PyExc_TypeError, "decode_array must return (dtype, shape, data_offset, "
                                         "data bytes)");
        return NULL;
    }
    /* numpy.ndarray(shape, dtype, buffer, offset): read-only (the buffer is), its base the Pin */
    PyObject *args[4] = {PyTuple_GET_ITEM(head, 1), PyTuple_GET_ITEM(head, 0), (PyObject *)p,
                         PyTuple_GET_ITEM(head, 2)};
    PyObject *arr = PyObject_Vectorcall(w->ndarray_type, args, 4, NULL);
    Py_DECREF(head);
    return arr;
}

static PyObject *
View_enter(View *self, PyObject *Py_UNUSED(ignored))
{
    if (self->state) {
        PyErr_SetString(PyExc_RuntimeError, "a ValueView can be entered once; call view() again");
        return NULL;
    }
    self->state = VIEW_OPEN;
    Writer *w = self->owner;
    pinned p;
    if (mapped_enter(&w->map) < 0) {
        /* a closed handle: Python raises its CacheClosed */
        PyErr_Clear();
        PyObject *r = PyObject_CallOneArg(w->pin_fallback, self->key);
        Py_XDECREF(r);
        if (r)
            PyErr_SetString(PyExc_ValueError, "closed");
        self->state = VIEW_CLOSED;
        return NULL;
    }
    if (pin_any(w, self->key, &p) < 0) {
        mapped_leave(&w->map);
        self->state = VIEW_CLOSED;
        return NULL;
    }
    Pin *pin = pin_new(w, &p);
    mapped_leave(&w->map);
    if (!pin) {
        self->state = VIEW_CLOSED;
        return NULL;
    }
    PyObject *res;
    if (self->as_array) {
        res = view_array_of(self, pin, p.kind);
    }
    else {
        res = PyMemoryView_FromObject((PyObject *)pin);
        if (res)
            self->mv = Py_NewRef(res);
    }
    if (!res) {
        Py_DECREF(pin); /* unpins */
        self->state = VIEW_CLOSED;
        return NULL;
    }
    self->pin = pin;
    return res;
}

static PyObject *str_release;

int
view_strings_init(void)
{
    if (!str_release && !(str_release = PyUnicode_InternFromString("release")))
        return -1;
    return 0;
}

/* The end of the block: release the memoryview and drop our hold of the pin. The pin goes now,
 * unless something built on the bytes still lives (it holds the Pin). */
static PyObject *
View_close(View *self, PyObject *Py_UNUSED(ignored))
{
    if (self->state != VIEW_OPEN)
        Py_RETURN_NONE;
    self->state = VIEW_CLOSED;
    if (self->mv) {
        PyObject *r = PyObject_CallMethodNoArgs(self->mv, str_release);
        if (r) {
            Py_DECREF(r);
        }
        else if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear(); /* an object made from it (np.frombuffer(mv), ...) lives: it keeps
                            * the memoryview, which keeps the Pin */
        }
        else {
            return NULL;
        }
        Py_CLEAR(self->mv);
    }
    Py_CLEAR(self->pin);
    Py_RETURN_NONE;
}

static PyObject *
View_exit(View *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    (void)nargs;
    return View_close(self, NULL);
}

static void
View_dealloc(View *self)
{
    Py_XDECREF(self->mv);
    Py_XDECREF(self->pin);
    Py_DECREF(self->key);
    Py_DECREF(self->owner);
    PyObject_Free(self);
}

static PyMethodDef View_methods[] = {
    {"__enter__", (PyCFunction)View_enter, METH_NOARGS,
     "Pin the value: its read-only memoryview (view) or ndarray (view_array)."},
    {"__exit__", (PyCFunction)(void (*)(void))View_exit, METH_FASTCALL,
     "close(): the end of the with block."},
    {"close", (PyCFunction)View_close, METH_NOARGS,
     "Release the view (what the end of the `with` block does); idempotent."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject ViewType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmkv._core.View",
    .tp_doc = PyDoc_STR("What Cache.view and Cache.view_array return on the compiled engine: "
                        "views.py's ValueView, compiled; see views.py for the lifetime rule."),
    .tp_basicsize = sizeof(View),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_dealloc = (destructor)View_dealloc,
    .tp_methods = View_methods,
};

