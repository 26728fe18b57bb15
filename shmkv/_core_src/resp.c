/* shmkv/_core_src/resp.c: the RESP door's compiled path, resp_serve: the plainest requests of
 * Redis's hottest commands (GET, SET key value, INCR, DECR, MGET), read from what a
 * connection sent and answered in C, on a handle's Reader and Writer. broker/resp_door.py
 * calls it on each read before its Python parser, and runs whatever it leaves (its docstring
 * says when).
 *
 * It takes requests from the start of the bytes while each one is complete, in RESP's array
 * form (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`), one of those commands with its exact arity, and
 * answerable here; it stops before the first that is not, with nothing of that one done, so
 * that Python runs it (and all after it) whole, with its own errors and rules:
 *   - anything else: another command or arity, an inline request, a malformed or incomplete
 *     one, a key longer than MAX_KEY_BYTES (the parser and the executor have the errors);
 *   - a GET whose value is an array (WRONGTYPE is Python's) or max_value_bytes or more (the
 *     door's output cap and large replies are Python's); an MGET with such a value, of more
 *     than MGET_MAX_KEYS keys, or whose reply passes MGET_MAX_BYTES (its reads are taken back);
 *   - a write the Writer's fast path hands back (eviction, a fence, a stripe needing repair,
 *     a value that is not an integer for INCR, ...) or one whose lock stayed busy (Python
 *     parks it): nothing was changed by it;
 *   - OUT_BUDGET_BYTES of replies made: the door's cap on a connection's output is Python's.
 * So a request is answered exactly as the Python path would: the same engine calls, the same
 * replies, in order. What the Python path adds per command (the command table, the session's
 * checks) is the caller's: it calls this only for a session in db 0, authenticated, not a
 * subscriber, with nothing parked and no --min-replicas-to-write.
 */
#include "resp.h"

#define OUT_BUDGET_BYTES (1u << 20)
/* An MGET of more keys, or whose reply passes MGET_MAX_BYTES, is Python's */
#define MGET_MAX_KEYS 1000
#define MGET_MAX_BYTES (1u << 20)

/* --- the request -------------------------------------------------------------------------- */
enum rcmd { R_GET, R_SET, R_INCR, R_DECR, R_MGET };

typedef struct {
    enum rcmd cmd;
    const char *key, *val; /* MGET: where its first key's bulk string begins, and its end */
    uint32_t klen, vlen;   /* MGET: klen is its number of keys */
} rreq;

/* A bulk string `$<n>\r\n<n bytes>\r\n` at *p: its bytes, *p moved past it; 0 if it is not
 * one (or not all there), its length past max_bytes included. */
static int
bulk(const char **p, const char *end, uint32_t max_bytes, const char **data, uint32_t *len)
{
    const char *q = *p;
    if (q >= end || *q++ != '$')
        return 0;
    uint64_t n = 0;
    const char *digits = q;
    while (q < end && *q >= '0' && *q <= '9' && q - digits < 10)
        n = n * 10 + (uint64_t)(*q++ - '0');
    if (q == digits || n > max_bytes || end - q < 2 || q[0] != '\r' || q[1] != '\n')
        return 0;
    q += 2;
    if ((uint64_t)(end - q) < n + 2 || q[n] != '\r' || q[n + 1] != '\n')
        return 0;
    *data = q;
    *len = (uint32_t)n;
    *p = q + n + 2;
    return 1;
}

static inline int
is_name(const char *s, uint32_t n, const char *upper)
{
    for (uint32_t i = 0; i < n; i++)
        if ((s[i] & ~0x20) != upper[i]) /* ASCII letters only: the names have no others */
            return 0;
    return upper[n] == '\0';
}

/* One request at *p: 1 with *q filled and *p past it, or 0 (not for this path). */
static int
parse(const char **p, const char *end, rreq *q)
{
    const char *s = *p, *name;
    uint32_t nlen, argc = 0;
    if (end - s < 4 || s[0] != '*' || s[1] < '1' || s[1] > '9')
        return 0;
    for (s++; s < end && *s >= '0' && *s <= '9' && argc <= MGET_MAX_KEYS; s++)
        argc = argc * 10 + (uint32_t)(*s - '0');
    if (argc < 2 || argc > MGET_MAX_KEYS + 1 || end - s < 2 || s[0] != '\r' || s[1] != '\n')
        return 0;
    s += 2;
    if (!bulk(&s, end, 4, &name, &nlen))
        return 0;
    if (is_name(name, nlen, "MGET")) {
        q->cmd = R_MGET;
        q->key = s;
        q->klen = argc - 1;
        for (uint32_t i = 1; i < argc; i++) /* all there, each a key of this path */
            if (!bulk(&s, end, MAX_KEY_BYTES, &name, &nlen))
                return 0;
        q->val = s; /* where the request ends */
        *p = s;
        return 1;
    }
    if (argc > 3 || !bulk(&s, end, MAX_KEY_BYTES, &q->key, &q->klen))
        return 0;
    if (argc == 3) {
        if (!is_name(name, nlen, "SET") || !bulk(&s, end, INPLACE_MAX_BYTES, &q->val, &q->vlen))
            return 0;
        q->cmd = R_SET;
    }
    else if (is_name(name, nlen, "GET")) {
        q->cmd = R_GET;
    }
    else if (is_name(name, nlen, "INCR")) {
        q->cmd = R_INCR;
    }
    else if (is_name(name, nlen, "DECR")) {
        q->cmd = R_DECR;
    }
    else {
        return 0;
    }
    *p = s;
    return 1;
}

/* --- the replies (RespOut: resp.h) -------------------------------------------------------- */
/* Room for more bytes: 0, or -1 (out of memory: the command is left to Python, which raises) */
static int
reserve(RespOut *o, size_t more)
{
    if (o->len + more <= o->cap)
        return 0;
    size_t cap = o->cap * 2 > o->len + more ? o->cap * 2 : o->len + more;
    char *buf = o->buf == o->stack ? PyMem_Malloc(cap) : PyMem_Realloc(o->buf, cap);
    if (!buf)
        return -1;
    if (o->buf == o->stack)
        memcpy(buf, o->stack, o->len);
    o->buf = buf;
    o->cap = cap;
    return 0;
}

static inline void
put(RespOut *o, const char *s, size_t n)
{
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

/* `<prefix><n>\r\n`, reserved ahead */
static void
put_number(RespOut *o, char prefix, long long n)
{
    o->len += (size_t)PyOS_snprintf(o->buf + o->len, 24, "%c%lld\r\n", prefix, n);
}

/* --- one command ---------------------------------------------------------------------------- */
enum { DONE = 1, STOP = 0 };

/* One key's value appended as a bulk string (nil if absent): DONE, or STOP (an array value, or
 * one of max_value_bytes or more: Python's; its hit is taken back, Python counts it) */
static int
read_one(Reader *reader, const char *key, uint32_t klen, uint64_t max_value_bytes,
         PyObject *magic, int resp3, RespOut *o)
{
    PyObject *value = NULL;
    int rc = reader_read_below(reader, key, klen, xxh3_64(key, klen, reader->seed),
                               max_value_bytes, &value);
    if (rc < 0) {
        PyErr_Clear(); /* a corrupt region: Python's read raises it again, and answers it */
        return STOP;
    }
    if (rc == 0) {
        if (reserve(o, 5) < 0) {
            reader->misses--;
            return STOP;
        }
        put(o, resp3 ? "_\r\n" : "$-1\r\n", resp3 ? 3 : 5);
        return DONE;
    }
    const Py_ssize_t mlen = PyBytes_GET_SIZE(magic);
    const Py_ssize_t n = PyBytes_CheckExact(value) ? PyBytes_GET_SIZE(value) : -1;
    if (n < 0 || (n >= mlen && memcmp(PyBytes_AS_STRING(value), PyBytes_AS_STRING(magic),
                                      (size_t)mlen) == 0) || reserve(o, (size_t)n + 32) < 0) {
        reader->hits--; /* Python reads it again, and counts it then */
        Py_DECREF(value);
        return STOP;
    }
    put_number(o, '$', n);
    put(o, PyBytes_AS_STRING(value), (size_t)n);
    put(o, "\r\n", 2);
    Py_DECREF(value);
    return DONE;
}

/* MGET: every key's value, or nothing of it at all (STOP: the reply and the counts of the keys
 * read are taken back) */
static int
mget(Reader *reader, const rreq *q, uint64_t max_value_bytes, PyObject *magic, int resp3,
     RespOut *o)
{
    const size_t start = o->len;
    const uint64_t hits = reader->hits, misses = reader->misses;
    const char *at = q->key, *key;
    uint32_t klen;
    if (reserve(o, 16) < 0)
        return STOP;
    put_number(o, '*', q->klen);
    for (uint32_t i = 0; i < q->klen; i++) {
        bulk(&at, q->val, MAX_KEY_BYTES, &key, &klen); /* parse checked it */
        if (read_one(reader, key, klen, max_value_bytes, magic, resp3, o) != DONE
                || o->len - start > MGET_MAX_BYTES) {
            o->len = start;
            reader->hits = hits;
            reader->misses = misses;
            return STOP;
        }
    }
    return DONE;
}

static int
write_one(Writer *writer, const rreq *q, RespOut *o)
{
    if (reserve(o, 24) < 0) /* before the write: a write done is always answered */
        return STOP;
    wreq r;
    r.held.obj = NULL;
    r.writes = 0;
    r.exp = 0; /* a plain SET drops the key's TTL, as Redis's does */
    if (q->cmd == R_SET) {
        r.op = W_SET;
        r.val = q->val;
        r.vlen = q->vlen;
    }
    else {
        r.op = W_INCR;
        r.delta = q->cmd == R_INCR ? 1 : -1;
    }
    int rc = writer_run_hashed(writer, q->key, q->klen, xxh3_64(q->key, q->klen, writer->hseed),
                               &r);
    if (rc == FAST_ERROR && r.writes) {
        /* Done; only the expiry pass after it failed (a busy arena lock, say): the next
         * sample and the node's maintenance pass look at those slots again. */
        PyErr_Clear();
        rc = FAST_DONE;
    }
    if (rc != FAST_DONE) {
        PyErr_Clear(); /* a lock that stayed busy: Python's try parks the command */
        return STOP;
    }
    if (q->cmd == R_SET)
        put(o, "+OK\r\n", 5);
    else
        put_number(o, ':', r.result);
    return DONE;
}

/* --- resp_answer, resp_serve ---------------------------------------------------------------- */
Py_ssize_t
resp_answer(Reader *reader, Writer *writer, const char *data, size_t len, int resp3,
            uint64_t max_value_bytes, PyObject *magic, RespOut *o, long *commands, long *writes)
{
    if (mapped_enter(&reader->map) < 0)
        return -1;
    if (writer && mapped_enter(&writer->map) < 0) {
        mapped_leave(&reader->map);
        return -1;
    }
    const char *p = data, *const end = data + len;
    const size_t start = o->len; /* o may hold other connections' replies (resp_lane.c) */
    rreq q;
    while (o->len - start < OUT_BUDGET_BYTES) {
        const char *next = p;
        if (!parse(&next, end, &q))
            break;
        int rc;
        if (q.cmd == R_GET)
            rc = read_one(reader, q.key, q.klen, max_value_bytes, magic, resp3, o);
        else if (q.cmd == R_MGET)
            rc = mget(reader, &q, max_value_bytes, magic, resp3, o);
        else
            rc = writer ? write_one(writer, &q, o) : STOP;
        if (rc != DONE)
            break;
        p = next;
        (*commands)++;
        *writes += q.cmd != R_GET && q.cmd != R_MGET;
    }
    if (writer)
        mapped_leave(&writer->map);
    mapped_leave(&reader->map);
    return p - data;
}

/* resp_serve(reader, writer, data, resp3, max_value_bytes, array_magic) ->
 * (bytes taken from data, the replies, commands answered, writes among them) */
SHMKV_INTERNAL PyObject *
core_resp_serve(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyObject_TypeCheck(args[0], &ReaderType)
            || !PyObject_TypeCheck(args[1], &WriterType) || !PyBytes_CheckExact(args[2])
            || !PyBytes_CheckExact(args[5])) {
        PyErr_SetString(PyExc_TypeError, "resp_serve(reader, writer, data: bytes, resp3, "
                                         "max_value_bytes, array_magic: bytes)");
        return NULL;
    }
    Reader *reader = (Reader *)args[0];
    Writer *writer = (Writer *)args[1];
    PyObject *data = args[2], *magic = args[5];
    const int resp3 = PyObject_IsTrue(args[3]);
    const unsigned long long max_value = PyLong_AsUnsignedLongLong(args[4]);
    if (resp3 < 0 || (max_value == (unsigned long long)-1 && PyErr_Occurred()))
        return NULL;
    if (reader->seed != writer->hseed) {
        PyErr_SetString(PyExc_ValueError, "resp_serve: the reader and the writer are of "
                                          "different collections");
        return NULL;
    }
    /* data is immutable and held by the caller: the keys and values stay put while a lock
     * wait releases the GIL */
    RespOut o;
    resp_out_init(&o);
    long commands = 0, writes = 0;
    const Py_ssize_t taken = resp_answer(reader, writer, PyBytes_AS_STRING(data),
                                         (size_t)PyBytes_GET_SIZE(data), resp3, max_value,
                                         magic, &o, &commands, &writes);
    PyObject *result = NULL;
    PyObject *replies = taken < 0 ? NULL : PyBytes_FromStringAndSize(o.buf, (Py_ssize_t)o.len);
    if (replies)
        result = Py_BuildValue("nNll", taken, replies, commands, writes);
    resp_out_free(&o);
    return result;
}
