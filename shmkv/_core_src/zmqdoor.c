/* shmkv/_core_src/zmqdoor.c: the ZeroMQ door's compiled path, PlainGets: the plain gets and
 * get_manys waiting on a node's ROUTER read, answered and sent in C, on a Reader (get_many's
 * part is zmqmany.c). broker/compiled_door.py makes one per door; broker/zmq_door.py calls
 * serve() where it would read a request itself, and wait() where its loop would poll.
 *
 * serve(budget) reads the messages waiting, without blocking, and answers each that is a plain
 * get (broker/compact.py: a header of exactly request_bytes starting with request_prefix, then
 * one key frame) as zmq_door.py's _answer_plain_get would: the same read, the same reply
 * (reply_prefix, the request's id, reply_found or reply_missing; then the value), the same
 * drop of a reply whose client has gone or stopped reading. A plain get_many (the same header
 * but many_prefix, then a packed batch of keys: two frames) is answered as dispatch.py's
 * get_many would: reply_prefix, the id, reply_bools and a found byte per key; the values found
 * packed (broker/protocol.py's pack). It stops at the first message that is anything else, or
 * one it leaves to Python (a key over MAX_KEY_BYTES, a value of copy_below bytes or more, a
 * batch past max_batch_keys or whose table does not add up, a reply past max_reply_bytes, a
 * read that raised: Python meets the same and answers it, with the counts of what was read
 * here taken back), and hands that message back as broker/router.py's receive() reads one:
 * (routing id, [header bytes, frames...], frames dropped past max_frames), nothing of it done,
 * its frames kept without a copy (FrameType).
 *
 * wait(sockets, timeout_ms, budget) is the loop's poll (a zmq.Poller's sockets) with the GIL
 * released, serving as serve() does whenever the ROUTER is all that is ready, and polling
 * again: it returns when anything else is ready (a signal's wake-up descriptor, a subscription,
 * a RESP connection, the supervisor's link), a message is handed back, budget are answered or
 * the time is up, with what the last poll found.
 *
 * The caller calls both only while Python has nothing to do before a reply: no request parked
 * on a lock (it would be passed) and nobody subscribed to events (they go out before it).
 *
 * Why: a get through pyzmq and the Python loop cost the node ~25 us of CPU more than the same
 * round trip in C; a pass of the loop per get, ~10-15 more (bench/README.md, "The compiled
 * door"). */
#include "zmqdoor.h"

double
door_monotonic_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int
copy_prefix(PyObject *b, char *to, Py_ssize_t *len, const char *what)
{
    if (!PyBytes_Check(b) || PyBytes_GET_SIZE(b) > MAX_PREFIX_BYTES) {
        PyErr_Format(PyExc_ValueError, "%s must be bytes of at most %d", what,
                     MAX_PREFIX_BYTES);
        return -1;
    }
    *len = PyBytes_GET_SIZE(b);
    memcpy(to, PyBytes_AS_STRING(b), (size_t)*len);
    return 0;
}

static int
PlainGets_init(PlainGets *self, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"reader", "socket", "request_prefix", "request_bytes", "id_at",
                         "reply_prefix", "reply_found", "reply_missing", "max_frames",
                         "copy_below", "bounds_s", "many_prefix", "reply_bools",
                         "max_batch_keys", "max_reply_bytes", NULL};
    PyObject *reader, *sock, *request_prefix, *reply_prefix, *bounds, *many_prefix;
    Py_ssize_t request_bytes, id_at;
    int found, missing, bools, max_frames;
    unsigned long long copy_below, max_batch_keys, max_reply_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OSnnSbbiKOSbKK:PlainGets", kw,
                                     &ReaderType, &reader, &sock, &request_prefix,
                                     &request_bytes, &id_at, &reply_prefix, &found, &missing,
                                     &max_frames, &copy_below, &bounds, &many_prefix, &bools,
                                     &max_batch_keys, &max_reply_bytes))
        return -1;
    if (zmqlib_bind() < 0 || copy_prefix(request_prefix, self->request_prefix,
                                         &self->request_prefix_len, "request_prefix") < 0
            || copy_prefix(many_prefix, self->many_prefix, &self->many_prefix_len,
                           "many_prefix") < 0
            || copy_prefix(reply_prefix, self->reply_prefix, &self->reply_prefix_len,
                           "reply_prefix") < 0)
        return -1;
    if (request_bytes < self->request_prefix_len || request_bytes < self->many_prefix_len
            || id_at < 0 || id_at + 8 > request_bytes
            || max_frames < 2 || max_frames >= MAX_PARTS) {
        PyErr_SetString(PyExc_ValueError, "PlainGets: the request's layout does not hold");
        return -1;
    }
    PyObject *seq = PySequence_Fast(bounds, "bounds_s must be a sequence of floats");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n && i < MAX_BOUNDS; i++)
        self->bounds_s[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
    Py_DECREF(seq);
    if (n > MAX_BOUNDS) {
        PyErr_Format(PyExc_ValueError, "at most %d bounds", MAX_BOUNDS);
        return -1;
    }
    if (PyErr_Occurred())
        return -1;
    void *handle = zmqlib_socket(sock);
    if (!handle)
        return -1;
    Py_XSETREF(self->reader, (Reader *)Py_NewRef(reader));
    Py_XSETREF(self->socket, Py_NewRef(sock));
    self->handle = handle;
    self->request_bytes = (size_t)request_bytes;
    self->id_at = (size_t)id_at;
    self->reply_found = (char)found;
    self->reply_missing = (char)missing;
    self->reply_bools = (char)bools;
    self->max_batch_keys = (uint64_t)max_batch_keys;
    self->max_reply_bytes = (uint64_t)max_reply_bytes;
    self->max_frames = max_frames;
    self->copy_below = (uint64_t)copy_below;
    self->n_bounds = (int)n;
    return 0;
}

static int
PlainGets_traverse(PlainGets *self, visitproc visit, void *arg)
{
    Py_VISIT(self->reader);
    Py_VISIT(self->socket);
    return 0;
}

static int
PlainGets_clear(PlainGets *self)
{
    Py_CLEAR(self->reader);
    Py_CLEAR(self->socket);
    return 0;
}

static void
PlainGets_dealloc(PlainGets *self)
{
    PyObject_GC_UnTrack(self);
    PlainGets_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* --- one message -------------------------------------------------------------------------- */
/* count an answer to op in its latency bucket, as metrics.RequestCounts.observe */
void
door_observe(PlainGets *self, int op, double started_s)
{
    Counts *c = &self->counts[op];
    const double latency_s = door_monotonic_s() - started_s;
    int bucket = 0;
    while (bucket < self->n_bounds && latency_s > self->bounds_s[bucket])
        bucket++; /* bisect_left */
    c->per_bucket[bucket]++;
    c->sum_s += latency_s;
    c->answered++;
}

/* Send a reply's routing id as router.send_or_drop does: dropped if the client has gone or has
 * a full pipe (once more after reading the socket's pending commands); 1 sent (its frames
 * follow), 0 dropped, or -1 with an error. */
int
door_send_routing_id(PlainGets *self, zmq_msg_t *routing_id)
{
    void *sock = self->handle;
    for (int attempt = 0;; attempt++) {
        if (zmq.msg_send(routing_id, sock, ZMQ_DONTWAIT | ZMQ_SNDMORE) >= 0)
            return 1;
        int err = zmq.errno_();
        if (err == EHOSTUNREACH || (err == EAGAIN && attempt == 1))
            return 0; /* the client has gone, or reads none of its replies: dropped */
        if (err != EAGAIN) {
            zmqlib_error(err);
            return -1;
        }
        int events;
        size_t len = sizeof events;
        zmq.getsockopt(sock, ZMQ_EVENTS, &events, &len);
    }
}

/* Send the reply [routing id, head, value?]: 0 (sent or dropped), or -1 with an error. */
static int
send_reply(PlainGets *self, zmq_msg_t *routing_id, const char *head, size_t head_len,
           PyObject *value)
{
    void *sock = self->handle;
    const int rc = door_send_routing_id(self, routing_id);
    if (rc <= 0)
        return rc;
    if (zmq.send(sock, head, head_len, value ? ZMQ_SNDMORE : 0) < 0
            || (value && zmq.send(sock, PyBytes_AS_STRING(value),
                                  (size_t)PyBytes_GET_SIZE(value), 0) < 0)) {
        zmqlib_error(zmq.errno_());
        return -1;
    }
    return 0;
}

/* Answer the plain get parts[1..2] (a header and a key): ANSWERED, PYTHONS (nothing done: one
 * Python answers), or -1 with an error. */
static int
answer_get(PlainGets *self, zmq_msg_t *parts, double started_s)
{
    if (zmq.msg_size(&parts[2]) > MAX_KEY_BYTES)
        return PYTHONS;
    const char *head = zmq.msg_data(&parts[1]);
    Reader *reader = self->reader;
    const char *key = zmq.msg_data(&parts[2]);
    const size_t klen = zmq.msg_size(&parts[2]);
    if (mapped_enter(&reader->map) < 0) {
        PyErr_Clear(); /* closed: Python's read says so */
        return PYTHONS;
    }
    PyObject *value = NULL;
    int rc = reader_read_below(reader, key, (Py_ssize_t)klen, xxh3_64(key, klen, reader->seed),
                               self->copy_below, &value);
    mapped_leave(&reader->map);
    if (rc < 0) {
        PyErr_Clear(); /* a corrupt region: Python's read raises it again, and answers it */
        return PYTHONS;
    }
    if (rc == 1 && !PyBytes_CheckExact(value)) { /* large: sent from a pin, by Python */
        reader->hits--; /* Python reads it again, and counts it then */
        Py_DECREF(value);
        return PYTHONS;
    }
    char reply[MAX_PREFIX_BYTES + 9];
    const size_t plen = (size_t)self->reply_prefix_len;
    memcpy(reply, self->reply_prefix, plen);
    memcpy(reply + plen, head + self->id_at, 8);
    reply[plen + 8] = rc ? self->reply_found : self->reply_missing;
    int sent = send_reply(self, &parts[0], reply, plen + 9, value);
    Py_XDECREF(value);
    if (sent < 0)
        return -1;
    door_observe(self, OP_GET, started_s);
    return ANSWERED;
}

/* Answer the message parts[0..n_parts) if it is a plain get or get_many: ANSWERED, PYTHONS
 * (nothing done), or -1 with an error. */
static int
answer(PlainGets *self, zmq_msg_t *parts, int n_parts, double started_s)
{
    if (n_parts < 3 || zmq.msg_size(&parts[1]) != self->request_bytes)
        return PYTHONS;
    const char *head = zmq.msg_data(&parts[1]);
    if (n_parts == 3 && !memcmp(head, self->request_prefix, (size_t)self->request_prefix_len))
        return answer_get(self, parts, started_s);
    if (n_parts == 4 && self->many_prefix_len
            && !memcmp(head, self->many_prefix, (size_t)self->many_prefix_len))
        return door_answer_many(self, parts, started_s);
    return PYTHONS;
}

/* The message parts[0..n_parts) (and `dropped` frames past them) as router.receive returns it:
 * (routing id, [header bytes, frames...], dropped); the parts are moved into it. */
static PyObject *
hand_back(zmq_msg_t *parts, int n_parts, Py_ssize_t dropped)
{
    PyObject *frames = PyList_New(0), *routing_id = NULL, *out = NULL;
    if (!frames)
        return NULL;
    for (int i = 0; i < n_parts; i++) {
        const size_t size = zmq.msg_size(&parts[i]);
        PyObject *frame = i < 2 || size < FRAME_COPY_BELOW_BYTES
            ? PyBytes_FromStringAndSize(zmq.msg_data(&parts[i]), (Py_ssize_t)size)
            : zmqlib_frame(&parts[i]);
        if (!frame)
            goto done;
        if (i == 0)
            routing_id = frame;
        else if (PyList_Append(frames, frame) < 0) {
            Py_DECREF(frame);
            goto done;
        }
        else
            Py_DECREF(frame);
    }
    out = Py_BuildValue("(OOn)", routing_id, frames, dropped);
done:
    Py_XDECREF(routing_id);
    Py_DECREF(frames);
    return out;
}

/* Answer what waits on the socket, up to budget messages: how many were answered (*left: the
 * first other message, handed back, or NULL), or -1 with an error. */
static Py_ssize_t
serve_waiting(PlainGets *self, Py_ssize_t budget, PyObject **left)
{
    zmq_msg_t parts[MAX_PARTS];
    const int max_parts = self->max_frames + 1;
    Py_ssize_t answered = 0;
    *left = NULL;
    while (answered < budget) {
        zmq.msg_init(&parts[0]);
        if (zmq.msg_recv(&parts[0], self->handle, ZMQ_DONTWAIT) < 0) {
            int err = zmq.errno_();
            zmq.msg_close(&parts[0]);
            if (err == EAGAIN || err == EINTR) /* none waits (a signal: the loop's to see) */
                break;
            zmqlib_error(err);
            return -1;
        }
        const double started_s = door_monotonic_s();
        /* a multipart message is delivered whole: its other frames are there */
        int n_parts = 1, more = zmq.msg_more(&parts[0]);
        while (more && n_parts < max_parts) {
            zmq.msg_init(&parts[n_parts]);
            zmq.msg_recv(&parts[n_parts], self->handle, 0);
            more = zmq.msg_more(&parts[n_parts++]);
        }
        Py_ssize_t dropped = 0; /* past max_frames: read to its end, not kept */
        while (more) {
            zmq_msg_t scratch;
            zmq.msg_init(&scratch);
            zmq.msg_recv(&scratch, self->handle, 0);
            more = zmq.msg_more(&scratch);
            zmq.msg_close(&scratch);
            dropped++;
        }
        int rc = dropped ? PYTHONS : answer(self, parts, n_parts, started_s);
        if (rc == PYTHONS)
            *left = hand_back(parts, n_parts, dropped);
        for (int i = 0; i < n_parts; i++)
            zmq.msg_close(&parts[i]);
        if (rc < 0 || (rc == PYTHONS && !*left))
            return -1;
        if (rc == PYTHONS)
            break;
        answered++;
    }
    return answered;
}

static int
initialised(PlainGets *self)
{
    if (!self->socket)
        PyErr_SetString(PyExc_ValueError, "PlainGets is not initialised");
    return self->socket != NULL;
}

/* serve(budget): (gets answered, the message handed back or None) */
static PyObject *
PlainGets_serve(PlainGets *self, PyObject *budget_obj)
{
    const Py_ssize_t budget = PyLong_AsSsize_t(budget_obj);
    if ((budget == -1 && PyErr_Occurred()) || !initialised(self))
        return NULL;
    PyObject *left;
    const Py_ssize_t answered = serve_waiting(self, budget, &left);
    if (answered < 0)
        return NULL;
    PyObject *out = Py_BuildValue("(nO)", answered, left ? left : Py_None);
    Py_XDECREF(left);
    return out;
}

/* --- the wait ------------------------------------------------------------------------------- */
/* The items of a zmq.Poller's `sockets` ([(socket or fd, flags)]) as zmq_poll's: *router_at is
 * this door's socket's index, or -1. 0, or -1 with an error. */
static int
poll_items(PlainGets *self, PyObject *sockets, zmq_pollitem_t *items, Py_ssize_t n,
           Py_ssize_t *router_at)
{
    *router_at = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(sockets, i), *obj;
        int flags;
        if (!PyTuple_Check(pair) || !PyArg_ParseTuple(pair, "Oi", &obj, &flags)) {
            PyErr_SetString(PyExc_TypeError, "wait(): the poller's items are (socket or fd, "
                                             "flags)");
            return -1;
        }
        items[i].events = (short)flags;
        items[i].revents = 0;
        if (PyLong_Check(obj)) {
            items[i].socket = NULL;
            items[i].fd = (int)PyLong_AsLong(obj);
            if (items[i].fd == -1 && PyErr_Occurred())
                return -1;
        }
        else {
            items[i].fd = 0;
            if (!(items[i].socket = zmqlib_socket(obj)))
                return -1;
            if (items[i].socket == self->handle)
                *router_at = i;
        }
    }
    return 0;
}

/* wait(sockets, timeout_ms, budget): poll a zmq.Poller's sockets (timeout_ms < 0: no limit)
 * with the GIL released and, while this door's socket is all that is ready, answer what waits
 * on it and poll again, until the time is up, anything else is ready, a message is handed
 * back or budget are answered. (answered, [(socket or fd, revents)] of the last poll as
 * zmq.Poller.poll gives them, the message handed back or None). */
static PyObject *
PlainGets_wait(PlainGets *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "wait(sockets: list, timeout_ms, budget)");
        return NULL;
    }
    const long timeout_ms = PyLong_AsLong(args[1]);
    const Py_ssize_t budget = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred() || !initialised(self))
        return NULL;
    PyObject *sockets = args[0];
    const Py_ssize_t n = PyList_GET_SIZE(sockets);
    zmq_pollitem_t *items = PyMem_Calloc((size_t)n + 1, sizeof *items);
    Py_ssize_t router_at, answered = 0;
    PyObject *left = NULL, *ready = NULL;
    if (!items)
        return PyErr_NoMemory();
    if (poll_items(self, sockets, items, n, &router_at) < 0)
        goto done;
    const double deadline_s = door_monotonic_s() + (double)timeout_ms / 1000;
    for (;;) {
        long wait_ms = -1;
        if (timeout_ms >= 0) {
            const double left_s = deadline_s - door_monotonic_s();
            wait_ms = left_s > 0 ? (long)(left_s * 1000 + 0.999) : 0;
        }
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = zmq.poll(items, (int)n, wait_ms);
        Py_END_ALLOW_THREADS
        if (rc < 0) {
            const int err = zmq.errno_();
            if (err != EINTR) {
                zmqlib_error(err);
                goto done;
            }
            break; /* a signal: the loop's to handle (its wake-up descriptor says which) */
        }
        if (rc != 1 || router_at < 0 || !items[router_at].revents || answered >= budget)
            break;
        const Py_ssize_t served = serve_waiting(self, budget - answered, &left);
        if (served < 0)
            goto done;
        answered += served;
        if (left || answered >= budget)
            break;
        if (PyErr_CheckSignals() < 0)
            goto done;
    }
    if (!(ready = PyList_New(0)))
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!items[i].revents)
            continue;
        PyObject *pair = Py_BuildValue("(Oi)", PyTuple_GET_ITEM(PyList_GET_ITEM(sockets, i), 0),
                                       (int)items[i].revents);
        if (!pair || PyList_Append(ready, pair) < 0) {
            Py_XDECREF(pair);
            Py_CLEAR(ready);
            goto done;
        }
        Py_DECREF(pair);
    }
done:
    PyMem_Free(items);
    if (!ready) {
        Py_XDECREF(left);
        return NULL;
    }
    PyObject *out = Py_BuildValue("(nNO)", answered, ready, left ? left : Py_None);
    Py_XDECREF(left);
    return out;
}

/* counts(op): (requests of op answered: 0 get, 1 get_many; [count per latency bucket, the last
 * past every bound], sum of their latencies in seconds), since this was made */
static PyObject *
PlainGets_counts(PlainGets *self, PyObject *op_obj)
{
    const long op = PyLong_AsLong(op_obj);
    if (op == -1 && PyErr_Occurred())
        return NULL;
    if (op < 0 || op >= N_OPS) {
        PyErr_Format(PyExc_ValueError, "counts(op): op is 0 (get) or 1 (get_many), not %ld",
                     op);
        return NULL;
    }
    const Counts *c = &self->counts[op];
    PyObject *per_bucket = PyList_New(self->n_bounds + 1);
    if (!per_bucket)
        return NULL;
    for (int i = 0; i <= self->n_bounds; i++) {
        PyObject *n = PyLong_FromUnsignedLongLong(c->per_bucket[i]);
        if (!n) {
            Py_DECREF(per_bucket);
            return NULL;
        }
        PyList_SET_ITEM(per_bucket, i, n);
    }
    return Py_BuildValue("(KNd)", (unsigned long long)c->answered, per_bucket, c->sum_s);
}

static PyMethodDef PlainGets_methods[] = {
    {"serve", (PyCFunction)PlainGets_serve, METH_O,
     "serve(budget): answer up to budget plain gets and get_manys waiting on the socket; "
     "(answered, the first other message as (routing id, frames, frames dropped), or None "
     "if none waits)."},
    {"wait", (PyCFunction)(void (*)(void))PlainGets_wait, METH_FASTCALL,
     "wait(sockets, timeout_ms, budget): poll a zmq.Poller's sockets, answering this door's "
     "plain requests while they are all that is ready; (answered, ready as Poller.poll gives "
     "it, the message handed back or None)."},
    {"counts", (PyCFunction)PlainGets_counts, METH_O,
     "counts(op): (requests of op answered: 0 get, 1 get_many; count per latency bucket, sum "
     "of latencies in seconds)."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject PlainGetsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmkv._core.PlainGets",
    .tp_doc = "The ZeroMQ door's plain gets and get_manys, answered in C (zmqdoor.c).",
    .tp_basicsize = sizeof(PlainGets),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)PlainGets_init,
    .tp_traverse = (traverseproc)PlainGets_traverse,
    .tp_clear = (inquiry)PlainGets_clear,
    .tp_dealloc = (destructor)PlainGets_dealloc,
    .tp_methods = PlainGets_methods,
};
