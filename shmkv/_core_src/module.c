/* shmkv/_core_src/module.c: the shmkv._core module: its init (the types, the process-wide
 * state, the atfork handler), its constants (LAYOUT and the others, which the tests compare
 * with the Python engine's) and its functions (xxh3_64, _writer_pid). */
#include "resp.h"
#include "zmqlib.h"

PyObject *time_ns_func; /* time.time_ns, to recognise the default clock */
pid_t writer_pid;       /* getpid(), refreshed in a forked child */

static void
writer_atfork_child(void)
{
    writer_pid = getpid();
}

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
    uint64_t h = xxh3_64(b.buf, (size_t)b.len, (uint64_t)seed);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLongLong(h);
}

static PyObject *
core_writer_pid(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong((long)writer_pid);
}

/* digest.c */
SHMKV_INTERNAL PyObject *core_range_digests(PyObject *, PyObject *const *, Py_ssize_t);
/* packed.c */
SHMKV_INTERNAL PyObject *core_pack(PyObject *, PyObject *const *, Py_ssize_t);
SHMKV_INTERNAL PyObject *core_pack_found(PyObject *, PyObject *);
SHMKV_INTERNAL PyObject *core_unpack_bytes(PyObject *, PyObject *const *, Py_ssize_t);
SHMKV_INTERNAL PyObject *core_found_values(PyObject *, PyObject *const *, Py_ssize_t);
/* resp.c */
SHMKV_INTERNAL PyObject *core_resp_serve(PyObject *, PyObject *const *, Py_ssize_t);
/* zmqcall.c */
SHMKV_INTERNAL PyObject *core_zmq_call(PyObject *, PyObject *const *, Py_ssize_t);
/* zmtp.c */
SHMKV_INTERNAL PyObject *core_zmtp_call(PyObject *, PyObject *const *, Py_ssize_t);

static PyObject *
core_zmq_bind(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    if (zmqlib_bind() < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"range_digests", (PyCFunction)(void (*)(void))core_range_digests, METH_FASTCALL,
     "range_digests(region, slots_offset, slots, arena_base, max_ref, n_ranges): the sums "
     "of the entry digests of each slot range (shmkv/repl_digest.py), n_ranges u64."},
    {"pack", (PyCFunction)(void (*)(void))core_pack, METH_FASTCALL,
     "pack(items, max_item_bytes=2**32 - 1): [lengths, data] of a list or tuple of bytes "
     "(protocol.pack), or None (an item that is not bytes or is longer)."},
    {"found_values", (PyCFunction)(void (*)(void))core_found_values, METH_FASTCALL,
     "found_values(keys, found, lengths, data): {key: value} of a get_many reply, or None "
     "if found and the packed values do not match the keys."},
    {"pack_found", (PyCFunction)core_pack_found, METH_O,
     "pack_found(values): (found, [lengths, data]) of a list of bytes or None (get_many's "
     "reply), or None."},
    {"unpack_bytes", (PyCFunction)(void (*)(void))core_unpack_bytes, METH_FASTCALL,
     "unpack_bytes(lengths, data, max_items): the items of a packed batch as bytes, or None "
     "if its framing is not sound (protocol.unpack_bytes says why)."},
    {"resp_serve", (PyCFunction)(void (*)(void))core_resp_serve, METH_FASTCALL,
     "resp_serve(reader, writer, data, resp3, max_value_bytes, array_magic): the plain GET, "
     "SET, INCR, DECR and MGET requests at the start of data answered (resp.c): (bytes taken, "
     "replies, commands, writes)."},
    {"zmq_bind", (PyCFunction)core_zmq_bind, METH_NOARGS,
     "zmq_bind(): find the libzmq pyzmq loaded (zmqlib.c); ImportError if there is none, or "
     "it is older than 4.1."},
    {"zmq_call", (PyCFunction)(void (*)(void))core_zmq_call, METH_FASTCALL,
     "zmq_call(socket, head, frames): send head and frames (bytes) on a pyzmq socket and "
     "receive the next message (zmqcall.c): its frames, None if none came within the "
     "socket's RCVTIMEO, or False if nothing was sent (its pipe was full)."},
    {"zmtp_call", (PyCFunction)(void (*)(void))core_zmtp_call, METH_FASTCALL,
     "zmtp_call(fd, head, frames): send head and frames (bytes) as one message on a direct "
     "link's socket (clients/direct.py) and read the reply (zmtp.c): its frames as bytes, None "
     "if none came within the socket's SO_RCVTIMEO, or False if nothing was sent (the link "
     "has something to read, as after the node closed it, or too many frames); OSError if "
     "the link failed. head None: nothing sent, the next message read."},
    {"xxh3_64", (PyCFunction)(void (*)(void))core_xxh3_64, METH_FASTCALL,
     "xxh3_64(data, seed=0): XXH3_64bits_withSeed of a bytes-like object, as an int."},
    {"_writer_pid", (PyCFunction)core_writer_pid, METH_NOARGS,
     "_writer_pid(): the pid Writers record as a stripe lock's holder (for tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmkv._core",
    .m_doc = "The compiled read path, write path and view pin of a shmkv region (see "
             "_core_src/).",
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
        {"E_KIND", E_KIND},
        {"KEY_COLL_MASK", (long)KEY_COLL_MASK},
        {"KEY_LEN_MASK", (long)KEY_LEN_MASK},
        {"PUBLISHED", PUBLISHED},
        {"VERSION_MASK", (long)VERSION_MASK},
        {"KIND_BYTES", KIND_BYTES},
        {"KIND_PINNED", KIND_PINNED},
        {"SIZE_MASK", (long)SIZE_MASK},
        {"KIND_ARRAY", KIND_ARRAY},
        {"KIND_MASK", KIND_MASK},
        {"SEG_BITS", (long)SEG_BITS},
        {"SEG_RETIRED", SEG_RETIRED},
        {"SEG_RETIRED_WORD", (long)SEG_RETIRED_WORD},
        {"PROC_BYTES", PROC_BYTES},
        {"P_OWNER_PID", P_OWNER_PID},
        {"P_PINS", P_PINS},
        {"PINS_PER_PROC", PINS_PER_PROC},
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
            || PyModule_AddStringConstant(m, "XXH_VERSION", xxh_version) < 0)
        return -1;
    return 0;
}

PyMODINIT_FUNC
PyInit__core(void)
{
    if (PyType_Ready(&ReaderType) < 0 || PyType_Ready(&WriterType) < 0
            || PyType_Ready(&ViewType) < 0 || PyType_Ready(&PinType) < 0
            || PyType_Ready(&FrameType) < 0 || PyType_Ready(&PlainGetsType) < 0
            || PyType_Ready(&RespLaneType) < 0)
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
            || PyModule_AddObjectRef(m, "Writer", (PyObject *)&WriterType) < 0
            || PyModule_AddObjectRef(m, "View", (PyObject *)&ViewType) < 0
            || PyModule_AddObjectRef(m, "Pin", (PyObject *)&PinType) < 0
            || PyModule_AddObjectRef(m, "Frame", (PyObject *)&FrameType) < 0
            || PyModule_AddObjectRef(m, "PlainGets", (PyObject *)&PlainGetsType) < 0
            || PyModule_AddObjectRef(m, "RespLane", (PyObject *)&RespLaneType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
