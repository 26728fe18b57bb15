/* shmkv/_core_src/zmqcall.c: zmq_call, a RemoteCache request's round trip in C: its frames sent
 * and the next message received on the client's DEALER, through pyzmq's libzmq (zmqlib.h),
 * the GIL released while it waits. clients/connection.py's _call_alone calls it for the usual
 * request (a templated header, small frames, nothing else in flight) and reads the reply as
 * it reads one of its own.
 *
 * Why: the same round trip through pyzmq's Python calls (send twice, recv and a Frame per
 * reply frame) costs a client ~15 us more than in C here (bench/README.md, "The compiled
 * door"). */
#include "zmqlib.h"

/* A reply frame smaller than this comes back as bytes (a value is wanted as bytes anyway), a
 * larger one as a Frame: copied once, by the caller, as a zmq.Frame's would be. */
#define REPLY_COPY_BELOW_BYTES (64u << 10)

static int
send_frames(void *sock, PyObject *head, PyObject *frames)
{
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(frames);
    /* the first frame without waiting: a full pipe (or none yet) is Python's to wait for */
    if (zmq.send(sock, PyBytes_AS_STRING(head), (size_t)PyBytes_GET_SIZE(head),
                 ZMQ_DONTWAIT | (n ? ZMQ_SNDMORE : 0)) < 0)
        return zmq.errno_() == EAGAIN ? 0 : -1;
    for (Py_ssize_t i = 0; i < n; i++) { /* the rest go where the first went: no waiting */
        PyObject *frame = PySequence_Fast_GET_ITEM(frames, i);
        if (zmq.send(sock, PyBytes_AS_STRING(frame), (size_t)PyBytes_GET_SIZE(frame),
                     i + 1 < n ? ZMQ_SNDMORE : 0) < 0)
            return -1;
    }
    return 1;
}

/* The next message's frames (a list), None if none came within the socket's ZMQ_RCVTIMEO, or
 * NULL with an error (a signal handler's included). */
static PyObject *
receive(void *sock)
{
    zmq_msg_t msg;
    zmq.msg_init(&msg);
    int rc;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = zmq.msg_recv(&msg, sock, 0);
        Py_END_ALLOW_THREADS
        if (rc >= 0)
            break;
        const int err = zmq.errno_();
        if (err == EAGAIN) {
            zmq.msg_close(&msg);
            Py_RETURN_NONE;
        }
        if (err != EINTR || PyErr_CheckSignals() < 0) { /* a handler that raised: it stands */
            zmq.msg_close(&msg);
            return err == EINTR ? NULL : zmqlib_error(err);
        }
    }
    PyObject *frames = PyList_New(0);
    for (int more = 1; frames && more;) {
        if (PyList_GET_SIZE(frames) && zmq.msg_recv(&msg, sock, 0) < 0) { /* all there */
            Py_CLEAR(frames);
            zmqlib_error(zmq.errno_());
            break;
        }
        more = zmq.msg_more(&msg);
        const size_t size = zmq.msg_size(&msg);
        PyObject *frame = size < REPLY_COPY_BELOW_BYTES
            ? PyBytes_FromStringAndSize(zmq.msg_data(&msg), (Py_ssize_t)size)
            : zmqlib_frame(&msg);
        if (!frame || PyList_Append(frames, frame) < 0)
            Py_CLEAR(frames);
        Py_XDECREF(frame);
    }
    zmq.msg_close(&msg);
    return frames;
}

/* zmq_call(socket, head, frames) */
PyObject *
core_zmq_call(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "zmq_call(socket, head: bytes, frames)");
        return NULL;
    }
    if (zmqlib_bind() < 0)
        return NULL;
    void *sock = zmqlib_socket(args[0]);
    if (!sock)
        return NULL;
    PyObject *frames = PySequence_Fast(args[2], "zmq_call: frames must be a sequence");
    if (!frames)
        return NULL;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(frames); i++) {
        if (!PyBytes_Check(PySequence_Fast_GET_ITEM(frames, i))) {
            Py_DECREF(frames);
            PyErr_SetString(PyExc_TypeError, "zmq_call: frames must be bytes");
            return NULL;
        }
    }
    const int sent = send_frames(sock, args[1], frames);
    Py_DECREF(frames);
    if (sent < 0)
        return zmqlib_error(zmq.errno_());
    if (!sent)
        Py_RETURN_FALSE;
    return receive(sock);
}
