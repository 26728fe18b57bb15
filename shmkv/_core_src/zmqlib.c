/* shmkv/_core_src/zmqlib.c: libzmq's functions found in pyzmq's copy of the library, and the
 * Frame type (zmqlib.h says why). */
#include "zmqlib.h"

#include <dlfcn.h>
#include <link.h>

zmqlib zmq;

/* dl_iterate_phdr's callback: the path of the first loaded object named libzmq*. pyzmq's
 * wheels load theirs with RTLD_LOCAL, so dlsym(RTLD_DEFAULT) cannot see it; dlopen of the same
 * path with RTLD_NOLOAD hands back that very copy, never a second one. */
static int
find_libzmq(struct dl_phdr_info *info, size_t Py_UNUSED(size), void *data)
{
    const char *path = info->dlpi_name, *name = path ? strrchr(path, '/') : NULL;
    name = name ? name + 1 : path;
    if (!name || strncmp(name, "libzmq", 6) != 0)
        return 0;
    PyOS_snprintf((char *)data, PATH_MAX, "%s", path);
    return 1;
}

int
zmqlib_bind(void)
{
    if (zmq.msg_recv)
        return 0;
    char path[PATH_MAX] = "";
    dl_iterate_phdr(find_libzmq, path);
    void *lib = *path ? dlopen(path, RTLD_NOW | RTLD_NOLOAD) : NULL;
    if (!lib) {
        PyErr_SetString(PyExc_ImportError, "no libzmq is loaded in this process (import zmq "
                        "first)");
        return -1;
    }
    void (*version)(int *, int *, int *) = (void (*)(int *, int *, int *))dlsym(lib,
                                                                                "zmq_version");
    int major = 0, minor = 0, patch = 0;
    if (version)
        version(&major, &minor, &patch);
    zmqlib found = {
        .msg_init = (int (*)(zmq_msg_t *))dlsym(lib, "zmq_msg_init"),
        .msg_init_size = (int (*)(zmq_msg_t *, size_t))dlsym(lib, "zmq_msg_init_size"),
        .msg_data = (void *(*)(zmq_msg_t *))dlsym(lib, "zmq_msg_data"),
        .msg_size = (size_t (*)(const zmq_msg_t *))dlsym(lib, "zmq_msg_size"),
        .msg_more = (int (*)(const zmq_msg_t *))dlsym(lib, "zmq_msg_more"),
        .msg_send = (int (*)(zmq_msg_t *, void *, int))dlsym(lib, "zmq_msg_send"),
        .msg_recv = (int (*)(zmq_msg_t *, void *, int))dlsym(lib, "zmq_msg_recv"),
        .msg_close = (int (*)(zmq_msg_t *))dlsym(lib, "zmq_msg_close"),
        .msg_move = (int (*)(zmq_msg_t *, zmq_msg_t *))dlsym(lib, "zmq_msg_move"),
        .send = (int (*)(void *, const void *, size_t, int))dlsym(lib, "zmq_send"),
        .getsockopt = (int (*)(void *, int, void *, size_t *))dlsym(lib, "zmq_getsockopt"),
        .poll = (int (*)(zmq_pollitem_t *, int, long))dlsym(lib, "zmq_poll"),
        .errno_ = (int (*)(void))dlsym(lib, "zmq_errno"),
        .strerror = (const char *(*)(int))dlsym(lib, "zmq_strerror"),
    };
    /* the handle is not closed: pyzmq keeps the library loaded for the process's life */
    if (major < 4 || (major == 4 && minor < 1) || !found.msg_init || !found.msg_init_size
            || !found.msg_data || !found.msg_size || !found.msg_more || !found.msg_send
            || !found.msg_recv || !found.msg_close || !found.msg_move || !found.send
            || !found.getsockopt || !found.poll || !found.errno_ || !found.strerror) {
        PyErr_Format(PyExc_ImportError, "the libzmq loaded (%s, version %d.%d.%d) lacks what "
                     "the compiled door needs (libzmq 4.1 or later)", path, major, minor, patch);
        return -1;
    }
    zmq = found;
    return 0;
}

void *
zmqlib_socket(PyObject *sock)
{
    PyObject *address = PyObject_GetAttrString(sock, "underlying");
    if (!address)
        return NULL;
    void *handle = PyLong_AsVoidPtr(address);
    Py_DECREF(address);
    if (!handle && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "the socket is closed");
    return handle;
}

PyObject *
zmqlib_error(int err)
{
    PyErr_SetObject(PyExc_OSError, Py_BuildValue("(is)", err, zmq.strerror(err)));
    return NULL;
}

/* --- Frame ------------------------------------------------------------------------------- */
typedef struct {
    PyObject_HEAD
    zmq_msg_t msg;
} Frame;

PyObject *
zmqlib_frame(zmq_msg_t *msg)
{
    Frame *f = PyObject_New(Frame, &FrameType);
    if (!f) {
        zmq.msg_close(msg);
        return NULL;
    }
    zmq.msg_init(&f->msg);
    zmq.msg_move(&f->msg, msg); /* leaves msg empty */
    return (PyObject *)f;
}

static void
Frame_dealloc(Frame *self)
{
    zmq.msg_close(&self->msg);
    PyObject_Free(self);
}

static int
Frame_getbuffer(Frame *self, Py_buffer *view, int flags)
{
    /* writable, as a zmq.Frame: its receiver owns the message (get_array's caller may change
     * the array over it) */
    return PyBuffer_FillInfo(view, (PyObject *)self, zmq.msg_data(&self->msg),
                             (Py_ssize_t)zmq.msg_size(&self->msg), 0, flags);
}

static Py_ssize_t
Frame_length(Frame *self)
{
    return (Py_ssize_t)zmq.msg_size(&self->msg);
}

static PyBufferProcs Frame_as_buffer = {.bf_getbuffer = (getbufferproc)Frame_getbuffer};
static PySequenceMethods Frame_as_sequence = {.sq_length = (lenfunc)Frame_length};

PyTypeObject FrameType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmkv._core.Frame",
    .tp_doc = "A received ZeroMQ frame, through the buffer protocol (no copy); its receiver's.",
    .tp_basicsize = sizeof(Frame),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Frame_dealloc,
    .tp_as_buffer = &Frame_as_buffer,
    .tp_as_sequence = &Frame_as_sequence,
};
