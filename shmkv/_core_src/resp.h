/* shmkv/_core_src/resp.h: the RESP door's compiled answers (resp.c), for its two callers:
 * resp_serve (Python's, on bytes a connection sent) and the read lane's thread (resp_lane.c,
 * on bytes it read itself). */
#ifndef SHMKV_RESP_H
#define SHMKV_RESP_H

#include "writer.h"

/* The replies being made: on the stack first, on the heap once they pass it */
typedef struct {
    char *buf;
    size_t len, cap;
    char stack[16384];
} RespOut;

static inline void
resp_out_init(RespOut *o)
{
    o->buf = o->stack;
    o->len = 0;
    o->cap = sizeof o->stack;
}

static inline void
resp_out_free(RespOut *o)
{
    if (o->buf != o->stack)
        PyMem_Free(o->buf);
    resp_out_init(o);
}

/* Answer the plain requests at the start of data[:len] (resp.c's docstring says which), with
 * the GIL held; writer NULL: reads only (a write stops it, as anything else). The replies are
 * appended to o (which may hold others already: the budget is this call's); *commands and *writes count what was answered. Returns the bytes taken, or -1
 * with an error (the region closed). */
SHMKV_INTERNAL Py_ssize_t resp_answer(Reader *reader, Writer *writer, const char *data,
                                      size_t len, int resp3, uint64_t max_value_bytes,
                                      PyObject *magic, RespOut *o, long *commands, long *writes);

/* The read lane (resp_lane.c) */
SHMKV_INTERNAL extern PyTypeObject RespLaneType;

#endif
