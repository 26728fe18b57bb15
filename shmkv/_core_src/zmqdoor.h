/* shmkv/_core_src/zmqdoor.h: what the compiled door's files share (zmqdoor.c: PlainGets, its
 * plain gets and its wait; zmqmany.c: its get_many). */
#ifndef SHMKV_ZMQDOOR_H
#define SHMKV_ZMQDOOR_H

#include "zmqlib.h"

#include <time.h>

/* Frames smaller than this are handed back as bytes (the engine takes bytes without a
 * conversion, and a key is never larger), larger ones as Frames (no copy of a large value). */
#define FRAME_COPY_BELOW_BYTES (MAX_KEY_BYTES + 1)
#define MAX_BOUNDS 32
#define MAX_PREFIX_BYTES 64
#define MAX_PARTS 32 /* a message's routing id and frames kept, at most */

/* what Python's metrics read of an op (counts()): requests answered, latency histogram, sum */
typedef struct {
    uint64_t answered, per_bucket[MAX_BOUNDS + 1];
    double sum_s;
} Counts;
enum { OP_GET, OP_GET_MANY, N_OPS };

typedef struct {
    PyObject_HEAD
    Reader *reader;
    PyObject *socket;        /* the zmq.Socket, kept alive while this is */
    void *handle;            /* its libzmq socket */
    char request_prefix[MAX_PREFIX_BYTES], many_prefix[MAX_PREFIX_BYTES];
    char reply_prefix[MAX_PREFIX_BYTES];
    Py_ssize_t request_prefix_len, many_prefix_len, reply_prefix_len;
    size_t request_bytes, id_at;
    char reply_found, reply_missing, reply_bools;
    uint64_t copy_below;     /* values this large or larger are Python's (zero-copy sends) */
    uint64_t max_batch_keys, max_reply_bytes;
    int max_frames;
    int n_bounds;
    double bounds_s[MAX_BOUNDS];
    Counts counts[N_OPS];
} PlainGets;

enum { ANSWERED = 1, PYTHONS = 0 }; /* what answering a message did: all, or nothing */

/* CLOCK_MONOTONIC in seconds */
SHMKV_INTERNAL double door_monotonic_s(void);
/* count an answer to op (OP_GET, OP_GET_MANY) that began at started_s */
SHMKV_INTERNAL void door_observe(PlainGets *self, int op, double started_s);
/* send a reply's routing id (router.send_or_drop's drop rule): 1 sent, 0 dropped, -1 error */
SHMKV_INTERNAL int door_send_routing_id(PlainGets *self, zmq_msg_t *routing_id);
/* answer the plain get_many parts[1..3]: ANSWERED, PYTHONS (nothing done), or -1 */
SHMKV_INTERNAL int door_answer_many(PlainGets *self, zmq_msg_t *parts, double started_s);

#endif
