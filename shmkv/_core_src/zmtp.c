/* shmkv/_core_src/zmtp.c: zmtp_call, a RemoteCache request's round trip over a direct link
 * (clients/direct.py): a plain blocking socket that speaks ZMTP 3 (RFC 23) to the node's
 * ROUTER, the handshake done by direct.py. The request's frames go out in one sendmsg and the
 * reply is read with recv, the GIL released while either waits: one thread at the client's
 * end, as a Redis client has, where a libzmq socket hands each message to and from its I/O
 * thread (two wake-ups a round trip, each up to tens of microseconds on a small VM:
 * bench/README.md, "A direct link").
 *
 * A frame on the wire: flags (MORE 0x01, LONG 0x02, COMMAND 0x04), then its size in one
 * octet, or in eight (network order) with LONG, then its bytes. After the handshake a node
 * sends replies only: a command (a PING, an ERROR) is not ours to read here, and fails the
 * call (the caller drops the link). */
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define ZMTP_MORE 0x01u
#define ZMTP_LONG 0x02u
#define ZMTP_SHORT_MAX 255u
#define FRAME_HEAD_MAX 9
/* a call's frames, its header included; a request with more goes the usual way */
#define MAX_CALL_FRAMES 16
/* bytes looked at at once; a larger frame is read straight into its bytes object */
#define PEEK_BYTES (16u << 10)

/* -1 with a Python error set: errno's OSError, or ConnectionError saying why */
static int
link_error(int err, const char *why)
{
    if (why)
        PyErr_Format(PyExc_ConnectionError, "direct link: %s", why);
    else {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
    }
    return -1;
}

/* recv(flags) into buf, the GIL released: bytes read (> 0), 0 if none came within the
 * socket's SO_RCVTIMEO, -1 with an error (the node's close included; a signal handler's). */
static ssize_t
recv_some(int fd, void *buf, size_t len, int flags)
{
    for (;;) {
        ssize_t got;
        Py_BEGIN_ALLOW_THREADS
        got = recv(fd, buf, len, flags);
        Py_END_ALLOW_THREADS
        if (got > 0)
            return got;
        if (got == 0)
            return link_error(0, "the node closed the connection");
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (errno != EINTR)
            return link_error(errno, NULL);
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
}

/* Exactly len bytes into buf: 1, 0 on a timeout, -1 an error. */
static int
recv_exactly(int fd, void *buf, size_t len)
{
    for (size_t have = 0; have < len;) {
        const ssize_t got = recv_some(fd, (char *)buf + have, len - have, MSG_WAITALL);
        if (got <= 0)
            return (int)got;
        have += (size_t)got;
    }
    return 1;
}

typedef struct {
    size_t head_bytes; /* 2, or 9 with LONG */
    uint64_t size;
    int more;
} FrameHead;

/* The head of the frame at p (n bytes there): 1, 0 if n is too short to tell, -1 with an
 * error (a command, unknown flags, a size no reply has). */
static int
frame_head(const uint8_t *p, size_t n, FrameHead *h)
{
    if (n < 2)
        return 0;
    if (p[0] & ~(ZMTP_MORE | ZMTP_LONG))
        return link_error(0, "a command or unknown flags where a reply frame was due");
    h->more = p[0] & ZMTP_MORE;
    if (!(p[0] & ZMTP_LONG)) {
        h->head_bytes = 2;
        h->size = p[1];
        return 1;
    }
    if (n < FRAME_HEAD_MAX)
        return 0;
    h->head_bytes = FRAME_HEAD_MAX;
    h->size = 0;
    for (int i = 1; i < FRAME_HEAD_MAX; i++)
        h->size = h->size << 8 | p[i];
    return h->size > (uint64_t)PY_SSIZE_T_MAX / 2
        ? link_error(0, "a frame larger than any reply") : 1;
}

/* The next frame read exactly off the socket (*more set), Py_None on a timeout, NULL with an
 * error: for a frame the bytes looked at did not hold whole. */
static PyObject *
read_frame(int fd, int *more)
{
    uint8_t p[FRAME_HEAD_MAX];
    FrameHead h;
    int rc = recv_exactly(fd, p, 2);
    if (rc > 0 && (rc = frame_head(p, 2, &h)) == 0) /* LONG: seven octets more */
        if ((rc = recv_exactly(fd, p + 2, FRAME_HEAD_MAX - 2)) > 0)
            rc = frame_head(p, FRAME_HEAD_MAX, &h);
    if (rc <= 0)
        return rc ? NULL : Py_NewRef(Py_None);
    PyObject *frame = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)h.size);
    if (!frame)
        return NULL;
    if ((rc = recv_exactly(fd, PyBytes_AS_STRING(frame), (size_t)h.size)) <= 0) {
        Py_DECREF(frame);
        return rc ? NULL : Py_NewRef(Py_None);
    }
    *more = h.more;
    return frame;
}

/* The next message's frames, None on a timeout, NULL with an error. Exactly its bytes are
 * taken off the socket (looked at with MSG_PEEK, then read): whatever follows stays for the
 * next call, as a libzmq socket keeps the next message. Usually two recvs: one look, one
 * read of the whole reply. */
static PyObject *
receive(int fd)
{
    uint8_t *buf = PyMem_Malloc(PEEK_BYTES);
    PyObject *frames = buf ? PyList_New(0) : PyErr_NoMemory();
    for (int more = 1; frames && more;) {
        const ssize_t seen = recv_some(fd, buf, PEEK_BYTES, MSG_PEEK);
        if (seen <= 0) {
            Py_SETREF(frames, seen ? NULL : Py_NewRef(Py_None));
            break;
        }
        size_t pos = 0; /* the whole frames seen are taken from the look */
        FrameHead h;
        int rc;
        while (more && (rc = frame_head(buf + pos, (size_t)seen - pos, &h)) > 0
               && h.size <= (size_t)seen - pos - h.head_bytes) {
            PyObject *frame = PyBytes_FromStringAndSize(
                (const char *)buf + pos + h.head_bytes, (Py_ssize_t)h.size);
            if (!frame || PyList_Append(frames, frame) < 0) {
                Py_XDECREF(frame);
                rc = -1;
                break;
            }
            Py_DECREF(frame);
            pos += h.head_bytes + (size_t)h.size;
            more = h.more;
        }
        if (rc < 0 || (pos && (rc = recv_exactly(fd, buf, pos)) <= 0)) {
            Py_SETREF(frames, rc ? NULL : Py_NewRef(Py_None));
            break;
        }
        if (more && pos == 0) { /* a frame larger than the look, or cut: read as it comes */
            PyObject *frame = read_frame(fd, &more);
            if (frame == Py_None || !frame || PyList_Append(frames, frame) < 0) {
                Py_SETREF(frames, frame == Py_None ? Py_NewRef(Py_None) : NULL);
                Py_XDECREF(frame);
                break;
            }
            Py_DECREF(frame);
        }
    }
    PyMem_Free(buf);
    return frames;
}

/* Sends every iovec, the GIL released: 0, or -1 with errno (EAGAIN: SO_SNDTIMEO ran out). */
static int
send_all(int fd, struct iovec *iov, int n)
{
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    while (msg.msg_iovlen) {
        ssize_t sent;
        Py_BEGIN_ALLOW_THREADS
        sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
        Py_END_ALLOW_THREADS
        if (sent < 0) {
            if (errno == EINTR && PyErr_CheckSignals() == 0)
                continue;
            return -1;
        }
        while (msg.msg_iovlen && (size_t)sent >= msg.msg_iov->iov_len) {
            sent -= (ssize_t)msg.msg_iov->iov_len;
            msg.msg_iov++;
            msg.msg_iovlen--;
        }
        if (msg.msg_iovlen) {
            msg.msg_iov->iov_base = (char *)msg.msg_iov->iov_base + sent;
            msg.msg_iov->iov_len -= (size_t)sent;
        }
    }
    return 0;
}

/* Whether the link may carry a request: nothing to read on it (a close by the node, say
 * after a restart while this client was idle, shows as readable). */
static int
link_idle(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 0;
}

/* zmtp_call(fd, head, frames); head None: receive only */
PyObject *
core_zmtp_call(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyLong_Check(args[0])
            || !(PyBytes_Check(args[1]) || args[1] == Py_None)) {
        PyErr_SetString(PyExc_TypeError, "zmtp_call(fd: int, head: bytes | None, frames)");
        return NULL;
    }
    const long fd_long = PyLong_AsLong(args[0]);
    if (fd_long < 0 || fd_long > INT_MAX) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "zmtp_call: not a file descriptor");
        return NULL;
    }
    const int fd = (int)fd_long;
    if (args[1] == Py_None) /* nothing to send: the next message */
        return receive(fd);
    PyObject *frames = PySequence_Fast(args[2], "zmtp_call: frames must be a sequence");
    if (!frames)
        return NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(frames) + 1;
    if (n > MAX_CALL_FRAMES) {
        Py_DECREF(frames);
        Py_RETURN_FALSE;
    }
    uint8_t heads[MAX_CALL_FRAMES][FRAME_HEAD_MAX];
    struct iovec iov[2 * MAX_CALL_FRAMES];
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *frame = i ? PySequence_Fast_GET_ITEM(frames, i - 1) : args[1];
        if (!PyBytes_Check(frame)) {
            Py_DECREF(frames);
            PyErr_SetString(PyExc_TypeError, "zmtp_call: frames must be bytes");
            return NULL;
        }
        const uint64_t size = (uint64_t)PyBytes_GET_SIZE(frame);
        uint8_t *h = heads[i];
        h[0] = i + 1 < n ? ZMTP_MORE : 0;
        size_t head_bytes = 2;
        if (size <= ZMTP_SHORT_MAX) {
            h[1] = (uint8_t)size;
        } else {
            h[0] |= ZMTP_LONG;
            for (int b = 0; b < 8; b++)
                h[1 + b] = (uint8_t)(size >> (56 - 8 * b));
            head_bytes = FRAME_HEAD_MAX;
        }
        iov[2 * i] = (struct iovec){.iov_base = h, .iov_len = head_bytes};
        iov[2 * i + 1] = (struct iovec){.iov_base = PyBytes_AS_STRING(frame),
                                        .iov_len = (size_t)size};
    }
    if (!link_idle(fd)) {
        Py_DECREF(frames);
        Py_RETURN_FALSE;
    }
    const int rc = send_all(fd, iov, (int)(2 * n)); /* frames holds every buffer till here */
    Py_DECREF(frames);
    if (rc < 0)
        return PyErr_Occurred() ? NULL : (link_error(errno, NULL), NULL);
    return receive(fd);
}
