/* shmkv/_core_src/zmqlib.h: the few libzmq functions the compiled door and client use
 * (zmqdoor.c, zmqcall.c), found at run time in the libzmq that pyzmq loaded (zmqlib.c).
 *
 * The extension is not linked against libzmq: `pip install .` must not need a system package,
 * and two libzmqs in one process (ours and pyzmq's) could not share a socket. pyzmq's Socket
 * hands out its libzmq socket (`Socket.underlying`, an address), so C code can send and
 * receive on the very socket Python opened, through pyzmq's own copy of the library. These
 * declarations are zmq.h's (libzmq 4.1 and later: zmq_msg_t is 64 bytes, pointer-aligned). */
#ifndef SHMKV_ZMQLIB_H
#define SHMKV_ZMQLIB_H

#include "core.h"

typedef struct {
    unsigned char _[64] __attribute__((aligned(sizeof(void *))));
} zmq_msg_t;

/* zmq_poll's item, as zmq.h has it on POSIX systems */
typedef struct {
    void *socket;
    int fd;
    short events;
    short revents;
} zmq_pollitem_t;

enum {
    ZMQ_DONTWAIT = 1,
    ZMQ_SNDMORE = 2,
    ZMQ_EVENTS = 15,
};

typedef struct {
    int (*msg_init)(zmq_msg_t *);
    int (*msg_init_size)(zmq_msg_t *, size_t);
    void *(*msg_data)(zmq_msg_t *);
    size_t (*msg_size)(const zmq_msg_t *);
    int (*msg_more)(const zmq_msg_t *);
    int (*msg_send)(zmq_msg_t *, void *, int);
    int (*msg_recv)(zmq_msg_t *, void *, int);
    int (*msg_close)(zmq_msg_t *);
    int (*msg_move)(zmq_msg_t *, zmq_msg_t *);
    int (*send)(void *, const void *, size_t, int);
    int (*getsockopt)(void *, int, void *, size_t *);
    int (*poll)(zmq_pollitem_t *, int, long);
    int (*errno_)(void);
    const char *(*strerror)(int);
} zmqlib;

/* The functions, once zmqlib_bind() has found them (NULL before). */
SHMKV_INTERNAL extern zmqlib zmq;

/* Find pyzmq's libzmq among the loaded objects and bind zmq's functions: 0, or -1 with
 * ImportError (no libzmq loaded: import zmq first; or one older than 4.1). Idempotent. */
SHMKV_INTERNAL int zmqlib_bind(void);

/* The libzmq socket of a pyzmq Socket (its `underlying` address): NULL with an error if it is
 * not one, or closed. */
SHMKV_INTERNAL void *zmqlib_socket(PyObject *sock);

/* A received frame as a Python object with the buffer protocol (writable: its receiver's),
 * which owns the message (no copy): what a zmq.Frame is to the Python code that reads it.
 * *msg is moved into it (left empty); NULL on error, *msg then closed. */
SHMKV_INTERNAL PyObject *zmqlib_frame(zmq_msg_t *msg);
SHMKV_INTERNAL extern PyTypeObject FrameType;

/* The ZeroMQ door's compiled plain gets (zmqdoor.c). */
SHMKV_INTERNAL extern PyTypeObject PlainGetsType;

/* OSError(errno, libzmq's message) for a call that failed; NULL. */
SHMKV_INTERNAL PyObject *zmqlib_error(int err);

#endif
