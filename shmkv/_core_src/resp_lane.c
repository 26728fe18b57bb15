/* shmkv/_core_src/resp_lane.c: the RESP door's read lane, RespLane: a thread of the node's
 * process that serves the connections the door hands it (broker/resp_lane.py says which: those
 * that only read), waiting on them with epoll, reading, answering (resp.c's answers, reads
 * only: GET and MGET) and writing in C, the GIL taken once a round (every connection epoll
 * reported), only to answer.
 *
 * Why: a GET through the node's poll loop cost ~25 us of CPU in user space here against
 * Redis's ~3 (the loop's Python, zmq_poll's passes over the ZeroMQ sockets); in the lane ~5-8,
 * an epoll_wait, a recv and a send (bench/README.md, "The Redis-protocol door").
 *
 * A connection goes back to the door, with what it sent that the lane did not answer and the
 * replies the socket did not take (in that order, so nothing changes order), when it sends
 * anything but a plain GET or MGET the lane can answer (a write, another command, half a
 * request, a large value: resp.c's docstring), while any request of the node is parked on a
 * lock (waits.py keeps their order; the door queues behind them), when the socket takes less
 * than a reply, and when the peer closes or fails. Each goes on the list take_back() returns,
 * and back_fd (an eventfd the node's loop polls) turns readable. stop() ends the thread and
 * hands every connection back. The door never touches a connection while the lane has it.
 */
#include "resp.h"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

/* a recv's room, per connection of a round: a client's requests are far smaller (more comes
 * in the next round; a request cut at the end goes to the door whole) */
#define LANE_READ_BYTES (16u << 10)
#define LANE_EVENTS 64
#define STOP_TOKEN UINT64_MAX

typedef struct {
    PyObject_HEAD
    Reader *reader;     /* the lane's own handle's: nothing else uses it */
    PyObject *magic;    /* an array value's first bytes: GET on one is Python's (WRONGTYPE) */
    PyObject *parked;   /* the node's list of parked requests (waits.py) */
    PyObject *returned; /* [(fd, unread bytes, unsent bytes, closed)] for the door */
    PyObject *adopted;  /* {fd} the lane serves */
    uint64_t max_value_bytes;
    int epfd, stop_fd, back_fd;
    int running;
    pthread_t thread;
    uint64_t commands;  /* answered here; under the GIL */
    /* a round's room (serve_round), made by start() so that it fails there, not in the thread */
    char *bufs;         /* LANE_EVENTS * LANE_READ_BYTES */
    struct Turn *turns; /* LANE_EVENTS */
    RespOut *out;
} RespLane;

/* --- the thread ------------------------------------------------------------------------------ */
/* Send what the socket takes now: the bytes sent */
static size_t
send_now(int fd, const char *buf, size_t len)
{
    size_t sent = 0;
    while (sent < len) {
        const ssize_t n = send(fd, buf + sent, len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0)
            sent += (size_t)n;
        else if (n < 0 && errno == EINTR)
            continue;
        else
            break; /* full, or failed: the door's write meets it again and says so */
    }
    return sent;
}

/* Give the connection back to the door (the GIL held): it is no longer polled here. */
static void
hand_back(RespLane *self, int fd, const char *unread, size_t unread_len, const char *unsent,
          size_t unsent_len, int closed)
{
    epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL);
    PyObject *key = PyLong_FromLong(fd);
    PyObject *item = Py_BuildValue("(iy#y#O)", fd, unread_len ? unread : "",
                                   (Py_ssize_t)unread_len, unsent_len ? unsent : "",
                                   (Py_ssize_t)unsent_len, closed ? Py_True : Py_False);
    if (!key || !item || PySet_Discard(self->adopted, key) < 0
            || PyList_Append(self->returned, item) < 0)
        PyErr_WriteUnraisable((PyObject *)self); /* out of memory: the connection is lost */
    Py_XDECREF(key);
    Py_XDECREF(item);
    const uint64_t one = 1;
    if (write(self->back_fd, &one, sizeof one) < 0) { /* a counter: never full in practice */
    }
}

/* One connection's part of a round: what it sent (at most LANE_READ_BYTES, in the round's
 * buffer), what was answered, the replies' place in the round's output */
typedef struct Turn {
    int fd, resp3;
    ssize_t got;       /* recv's: > 0 bytes, 0 closed, -1 failed */
    Py_ssize_t taken;  /* bytes answered */
    size_t out_at, out_len, sent;
} Turn;

/* One round: every connection epoll reported, read without the GIL, answered with it (once for
 * all of them: taking it costs more than a GET's answer), written without it; then those that
 * go back, handed back with it. */
static void
serve_round(RespLane *self, const struct epoll_event *events, int n, PyThreadState **ts)
{
    char *const bufs = self->bufs;
    Turn *const turns = self->turns;
    RespOut *const o = self->out;
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (events[i].data.u64 == STOP_TOKEN)
            continue;
        Turn *t = &turns[m];
        t->fd = (int)(uint32_t)events[i].data.u64;
        t->resp3 = (int)(events[i].data.u64 >> 32);
        do
            t->got = recv(t->fd, bufs + (size_t)m * LANE_READ_BYTES, LANE_READ_BYTES, 0);
        while (t->got < 0 && errno == EINTR);
        if (t->got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            continue; /* nothing after all */
        t->taken = 0;
        t->out_len = t->sent = 0;
        m++;
    }
    if (!m)
        return;
    PyEval_RestoreThread(*ts);
    const int parked = PyList_GET_SIZE(self->parked) > 0; /* queued behind, by the door */
    o->len = 0;
    for (int k = 0; k < m && !parked; k++) {
        Turn *t = &turns[k];
        if (t->got <= 0)
            continue;
        long commands = 0, writes = 0;
        t->out_at = o->len;
        t->taken = resp_answer(self->reader, NULL, bufs + (size_t)k * LANE_READ_BYTES,
                               (size_t)t->got, t->resp3, self->max_value_bytes, self->magic, o,
                               &commands, &writes);
        if (t->taken < 0) { /* the handle closed: the door's own path says what */
            PyErr_Clear();
            t->taken = 0;
        }
        t->out_len = o->len - t->out_at;
        self->commands += (uint64_t)commands;
    }
    *ts = PyEval_SaveThread();
    int back = 0;
    for (int k = 0; k < m; k++) {
        Turn *t = &turns[k];
        if (t->out_len)
            t->sent = send_now(t->fd, o->buf + t->out_at, t->out_len);
        back |= t->got <= 0 || t->taken < t->got || t->sent < t->out_len;
    }
    if (!back)
        return;
    PyEval_RestoreThread(*ts);
    for (int k = 0; k < m; k++) {
        Turn *t = &turns[k];
        if (t->got <= 0) /* closed or failed: the door drops it */
            hand_back(self, t->fd, NULL, 0, NULL, 0, 1);
        else if (t->taken < t->got || t->sent < t->out_len)
            hand_back(self, t->fd, bufs + (size_t)k * LANE_READ_BYTES + t->taken,
                      (size_t)(t->got - t->taken), o->buf + t->out_at + t->sent,
                      t->out_len - t->sent, 0);
    }
    *ts = PyEval_SaveThread();
}

static void *
lane_main(void *arg)
{
    RespLane *self = arg;
    PyGILState_STATE gil = PyGILState_Ensure(); /* this thread's state, kept until the end */
    PyThreadState *ts = PyEval_SaveThread();
    struct epoll_event events[LANE_EVENTS];
    for (int stop = 0; !stop;) {
        const int n = epoll_wait(self->epfd, events, LANE_EVENTS, -1);
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++)
            stop |= events[i].data.u64 == STOP_TOKEN;
        serve_round(self, events, n, &ts);
    }
    PyEval_RestoreThread(ts);
    PyGILState_Release(gil);
    return NULL;
}

/* --- the object ------------------------------------------------------------------------------ */
static PyObject *
RespLane_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    RespLane *self = (RespLane *)PyType_GenericNew(type, args, kwds);
    if (self)
        self->epfd = self->stop_fd = self->back_fd = -1;
    return (PyObject *)self;
}

static int
RespLane_init(RespLane *self, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"reader", "max_value_bytes", "array_magic", "parked", NULL};
    PyObject *reader, *magic, *parked;
    unsigned long long max_value;
    if (self->reader) {
        PyErr_SetString(PyExc_RuntimeError, "RespLane is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!KSO!:RespLane", kw, &ReaderType, &reader,
                                     &max_value, &magic, &PyList_Type, &parked))
        return -1;
    if (!(self->returned = PyList_New(0)) || !(self->adopted = PySet_New(NULL)))
        return -1;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    self->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    self->back_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = STOP_TOKEN};
    if (self->epfd < 0 || self->stop_fd < 0 || self->back_fd < 0
            || epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->stop_fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->reader = (Reader *)Py_NewRef(reader);
    self->magic = Py_NewRef(magic);
    self->parked = Py_NewRef(parked);
    self->max_value_bytes = (uint64_t)max_value;
    return 0;
}

static PyObject *
RespLane_start(RespLane *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->reader || self->running) {
        PyErr_SetString(PyExc_RuntimeError, "RespLane: not initialised, or started already");
        return NULL;
    }
    if (!self->out) { /* made once; dealloc frees them */
        char *bufs = PyMem_Malloc((size_t)LANE_EVENTS * LANE_READ_BYTES);
        Turn *turns = PyMem_Malloc(LANE_EVENTS * sizeof *turns);
        RespOut *out = PyMem_Malloc(sizeof *out);
        if (!bufs || !turns || !out) {
            PyMem_Free(bufs);
            PyMem_Free(turns);
            PyMem_Free(out);
            return PyErr_NoMemory();
        }
        resp_out_init(out);
        self->bufs = bufs;
        self->turns = turns;
        self->out = out;
    }
    /* the thread takes no signal: the node's main thread handles them (signals.py) */
    sigset_t all, before;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &before);
    const int err = pthread_create(&self->thread, NULL, lane_main, self);
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->running = 1;
    Py_INCREF(self); /* the thread's: until stop() has joined it */
    Py_RETURN_NONE;
}

/* adopt(fd, resp3): serve the connection until it is handed back */
static PyObject *
RespLane_adopt(RespLane *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "adopt(fd, resp3)");
        return NULL;
    }
    const long fd = PyLong_AsLong(args[0]);
    const int resp3 = PyObject_IsTrue(args[1]);
    if ((fd == -1 && PyErr_Occurred()) || resp3 < 0)
        return NULL;
    if (fd < 0 || fd > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "adopt(): %ld is not a file descriptor", fd);
        return NULL;
    }
    if (!self->running) {
        PyErr_SetString(PyExc_RuntimeError, "RespLane: not running");
        return NULL;
    }
    struct epoll_event ev = {.events = EPOLLIN,
                             .data.u64 = (uint64_t)(uint32_t)fd | (uint64_t)resp3 << 32};
    if (PySet_Add(self->adopted, args[0]) < 0)
        return NULL;
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        PyObject *exc = PyErr_SetFromErrno(PyExc_OSError);
        PySet_Discard(self->adopted, args[0]);
        return exc;
    }
    Py_RETURN_NONE;
}

/* take_back(): [(fd, unread bytes, unsent bytes, closed)] handed back since the last call */
static PyObject *
RespLane_take_back(RespLane *self, PyObject *Py_UNUSED(ignored))
{
    uint64_t count;
    if (read(self->back_fd, &count, sizeof count) < 0) { /* none signalled: fine */
    }
    PyObject *done = self->returned;
    if (!(self->returned = PyList_New(0))) {
        self->returned = done;
        return NULL;
    }
    return done;
}

/* stop(): end the thread; every connection it had is handed back */
static PyObject *
RespLane_stop(RespLane *self, PyObject *Py_UNUSED(ignored))
{
    if (self->running) {
        const uint64_t one = 1;
        if (write(self->stop_fd, &one, sizeof one) < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        Py_BEGIN_ALLOW_THREADS /* it may be waiting for the GIL to finish a connection */
        pthread_join(self->thread, NULL);
        Py_END_ALLOW_THREADS
        self->running = 0;
        Py_DECREF(self); /* the thread's */
    }
    if (self->adopted) {
        PyObject *left = PySequence_List(self->adopted);
        if (!left)
            return NULL;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(left); i++)
            hand_back(self, (int)PyLong_AsLong(PyList_GET_ITEM(left, i)), NULL, 0, NULL, 0, 0);
        Py_DECREF(left);
    }
    Py_RETURN_NONE;
}

static void
RespLane_dealloc(RespLane *self)
{
    /* running holds a reference: a lane freed has no thread */
    Py_CLEAR(self->reader);
    Py_CLEAR(self->magic);
    Py_CLEAR(self->parked);
    Py_CLEAR(self->returned);
    Py_CLEAR(self->adopted);
    if (self->out)
        resp_out_free(self->out);
    PyMem_Free(self->out);
    PyMem_Free(self->turns);
    PyMem_Free(self->bufs);
    for (int *fd = &self->epfd; fd <= &self->back_fd; fd++)
        if (*fd >= 0)
            close(*fd);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
RespLane_get_back_fd(RespLane *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->back_fd);
}

static PyObject *
RespLane_get_commands(RespLane *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->commands);
}

static PyMethodDef RespLane_methods[] = {
    {"start", (PyCFunction)RespLane_start, METH_NOARGS, "start(): start the lane's thread."},
    {"adopt", (PyCFunction)(void (*)(void))RespLane_adopt, METH_FASTCALL,
     "adopt(fd, resp3): serve this connection (non-blocking, nothing queued for it) until "
     "it is handed back."},
    {"take_back", (PyCFunction)RespLane_take_back, METH_NOARGS,
     "take_back(): [(fd, unread bytes, unsent bytes, closed)] handed back since the last "
     "call, in order."},
    {"stop", (PyCFunction)RespLane_stop, METH_NOARGS,
     "stop(): end the thread and hand every connection back."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef RespLane_getset[] = {
    {"back_fd", (getter)RespLane_get_back_fd, NULL,
     "an eventfd, readable while connections wait to be taken back", NULL},
    {"commands", (getter)RespLane_get_commands, NULL, "commands answered by the lane", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject RespLaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmkv._core.RespLane",
    .tp_doc = "The RESP door's read lane: a thread serving connections that only read "
              "(resp_lane.c).",
    .tp_basicsize = sizeof(RespLane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = RespLane_new,
    .tp_init = (initproc)RespLane_init,
    .tp_dealloc = (destructor)RespLane_dealloc,
    .tp_methods = RespLane_methods,
    .tp_getset = RespLane_getset,
};
