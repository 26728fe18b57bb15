/* shmkv/_core_src/fastpath.c: the Writer's fast path, the in-place overwrite of
 * Cache._put_locked: a call's value and expiry prepared as Python would, the key found and
 * rewritten under the stripe lock (or the call handed back, nothing changed), and the expiry
 * sampling after the write. writer.c explains when it applies and what it does. */
#include "writer.h"

/* --- a call's arguments, as Python takes them ------------------------------------------------- */

/* writer.h */
int
writer_now(Writer *self, uint64_t *now)
{
    if (self->clock_is_time_ns) {
        *now = realtime_ns();
        return 1;
    }
    PyObject *res = PyObject_CallNoArgs(self->clock);
    if (!res)
        return -1;
    int ok = 0;
    if (PyLong_CheckExact(res)) {
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(res, &overflow);
        if (!overflow && n >= 0) {
            *now = (uint64_t)n;
            ok = 1;
        }
    }
    Py_DECREF(res);
    return ok;
}

/* The value's bytes: exact bytes, exact str as UTF-8, or a C-contiguous memoryview without
 * Python objects in its format (what coerce.value_buffer takes as it is: the node's values are
 * views of received frames), whose buffer is held until value_release; 0 for anything else
 * (Python's). Always pair with value_release. */
int
value_bytes(PyObject *value, wreq *r)
{
    Py_ssize_t n;
    r->held.obj = NULL;
    if (PyBytes_CheckExact(value)) {
        r->val = PyBytes_AS_STRING(value);
        n = PyBytes_GET_SIZE(value);
    }
    else if (PyMemoryView_Check(value)) {
        if (PyObject_GetBuffer(value, &r->held, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
            PyErr_Clear(); /* released, or not contiguous: Python copies or says what */
            r->held.obj = NULL;
            return 0;
        }
        if (r->held.format && strchr(r->held.format, 'O')) {
            value_release(r); /* object pointers: Python refuses them */
            return 0;
        }
        r->val = r->held.buf;
        n = r->held.len;
    }
    else if (PyUnicode_CheckExact(value)) {
        r->val = PyUnicode_AsUTF8AndSize(value, &n);
        if (!r->val) {
            PyErr_Clear(); /* a lone surrogate: Python raises its own error */
            return 0;
        }
    }
    else {
        return 0;
    }
    if ((size_t)n > INPLACE_MAX_BYTES) /* never rewritten in place */
        return 0;
    r->vlen = (uint32_t)n;
    return 1;
}

void
value_release(wreq *r)
{
    if (r->held.obj)
        PyBuffer_Release(&r->held); /* sets held.obj to NULL */
}

/* expires_at_ns for ttl_s as cache._expires_at computes it: 1 (in r->exp), 0 for what the
 * fast path leaves to Python, -1 if the clock raised. */
int
expiry(Writer *self, PyObject *ttl, wreq *r)
{
    double t;
    if (ttl == Py_None) {
        r->exp = 0;
        return 1;
    }
    if (PyFloat_CheckExact(ttl)) {
        t = PyFloat_AS_DOUBLE(ttl);
    }
    else if (PyLong_CheckExact(ttl)) {
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(ttl, &overflow);
        if (overflow || n <= 0 || n > (long long)MAX_TTL_S)
            return 0;
        t = (double)n; /* ttl_s * 1e9 is a float product in Python too */
    }
    else {
        return 0;
    }
    if (!(t > 0 && t <= MAX_TTL_S))
        return 0; /* NaN included */
    uint64_t now;
    int rc = writer_now(self, &now);
    if (rc <= 0)
        return rc;
    int64_t d = (int64_t)(t * 1e9); /* int() truncates; at most 3.2e17 */
    r->exp = now + (uint64_t)(d < 1 ? 1 : d);
    return 1;
}

static int
parse_decimal(const uint8_t *p, uint32_t n, int64_t *out)
{
    /* the fullmatch of 0|-?[1-9][0-9]{0,18} (cache._DECIMAL) whose value fits an int64: 1,
     * else 0 */
    uint32_t i = 0;
    int neg = n && p[0] == '-';
    i = (uint32_t)neg;
    if (n - i < 1 || n - i > 19 || (p[i] == '0' && (neg || n - i > 1)))
        return 0;
    uint64_t mag = 0;
    for (; i < n; i++) {
        unsigned d = (unsigned)p[i] - '0';
        if (d > 9)
            return 0;
        mag = mag * 10 + d;
    }
    if (neg) {
        if (mag > (uint64_t)INT64_MAX + 1)
            return 0;
        *out = (int64_t)(0 - mag);
    }
    else {
        if (mag > (uint64_t)INT64_MAX)
            return 0;
        *out = (int64_t)mag;
    }
    return 1;
}

static uint32_t
format_decimal(int64_t v, char *buf)
{
    /* str(v).encode(): at most 20 bytes */
    char tmp[20];
    uint64_t mag = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    int n = 0;
    do {
        tmp[n++] = (char)('0' + mag % 10);
        mag /= 10;
    } while (mag);
    uint32_t len = 0;
    if (v < 0)
        buf[len++] = '-';
    while (n)
        buf[len++] = tmp[--n];
    return len;
}

/* --- the write, and the expiry sampling after it ------------------------------------------- */

/* Under the stripe lock: find the key and, if the fast path applies, write: in place, or
 * through insert.c in a new block. */
static int
writer_locked(Writer *self, const char *key, uint32_t klen, uint64_t h, wreq *r)
{
    uint8_t *const base = self->map.base;
    const uint64_t stripe = h & self->smask;
    uint8_t *rec = NULL;
    int out = claim_stripe(self, stripe, &rec);
    if (out != FAST_DONE)
        return out;
    out = FAST_FALLBACK;

    if (self->coll && !writer_coll_is_live(self))
        goto release;
    if (!writer_fence_open(self, base))
        goto release;
    /* events: appended here as events.py does (a key too long for a ring: Python raises) */
    const int events = ld32(base + H_EVENTS_ENABLED) != 0;
    if (events && !(self->ext && event_fits(self, klen)))
        goto release;

    /* index.find_locked */
    uint64_t off = 0, slot_no = 0;
    uint8_t *const e = writer_find_locked(self, key, klen, h, &off, &slot_no);
    if (e == FIND_GARBAGE)
        goto release; /* garbage: Python raises CorruptRegion */
    if (!e) {
        if (r->op == W_CAS) { /* absent: False */
            r->cas_ok = 0;
            out = FAST_DONE;
            goto release;
        }
        uint64_t exp = r->exp;
        if (r->op == W_INCR) { /* absent counts as 0, with no TTL */
            r->result = r->delta;
            r->vlen = format_decimal(r->result, r->digits);
            r->val = r->digits;
            exp = 0;
        }
        out = writer_insert_locked(self, rec, stripe, h, key, klen, r, exp, NULL, 0, events);
        goto release;
    }
    uint64_t exp = ld64(e + E_EXPIRES_AT, memory_order_relaxed);
    int expired = 0;
    if (exp && r->op != W_SET) {
        uint64_t now;
        int rc = writer_now(self, &now);
        if (rc <= 0) {
            out = rc < 0 ? FAST_ERROR : FAST_FALLBACK;
            goto release;
        }
        if (exp <= now) { /* expired: cas fails, incr starts from 0 (Python's) */
            if (r->op == W_CAS) {
                r->cas_ok = 0;
                out = FAST_DONE;
                goto release;
            }
            expired = 1;
        }
    }
    if (r->op == W_CAS && ((uint64_t)ld32(e + E_VERSION) << 8 | stripe) != r->version) {
        r->cas_ok = 0;
        out = FAST_DONE;
        goto release;
    }
    const uint32_t old_vlen = ld32(e + E_VALUE_LEN);
    if (r->op == W_INCR) {
        int64_t current = 0;
        if (expired) {
            exp = 0;
            r->result = r->delta;
        }
        else if (off + ENTRY_HEADER_BYTES + klen + old_vlen > self->arena_end
                 || !parse_decimal(e + ENTRY_HEADER_BYTES + klen, old_vlen, &current)
                 || __builtin_add_overflow(current, r->delta, &r->result))
            goto release; /* not an integer, or an overflow: Python raises NotAnInteger */
        r->vlen = format_decimal(r->result, r->digits);
        r->val = r->digits;
    }
    else {
        exp = r->exp; /* incr keeps the TTL */
    }
    /* in place only, as _put_locked: a snug fit in an entry no view pins */
    const uint32_t vlen = r->vlen;
    const uint64_t need = (ENTRY_HEADER_BYTES + (uint64_t)klen + vlen + ALIGN - 1)
                          & ~(uint64_t)(ALIGN - 1);
    const uint32_t block = ld32(e + E_BLOCK_WORD) & SIZE_MASK;
    const uint8_t kind = ld8(e + E_KIND);
    if (off + block > self->arena_end)
        goto release;
    if (kind & KIND_PINNED || block < need || block >= need + INPLACE_SLACK_BYTES) {
        out = writer_insert_locked(self, rec, stripe, h, key, klen, r, exp, e, slot_no, events);
        goto release;
    }
    uint64_t writes = ld64(rec + S_WRITES, memory_order_relaxed) + 1;
    if (!(writes & VERSION_MASK)) /* a stored version is never 0 (layout.py) */
        writes++;
    if (writes > MAX_WRITES)
        goto release; /* garbage: Python raises CorruptRegion */
    if (events && !(writes % WRITER_EXPIRY_EVERY)) {
        /* Python's expiry pass runs before this write's event (writer.py), ours after it:
         * with events on, a pass that would remove something is Python's, whole */
        uint64_t cursor;
        int rc = writer_expiry_due(self, &cursor, 0);
        if (rc) {
            out = rc < 0 ? FAST_ERROR : FAST_FALLBACK;
            goto release;
        }
    }

    /* the write: readers of the stripe retry while seq is odd */
    const uint64_t seq = ld64(rec + S_SEQ, memory_order_relaxed);
    st64(rec + S_SEQ, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    st64(rec + S_WRITES, writes, memory_order_relaxed);
    st64(rec + S_CHANGES, ld64(rec + S_CHANGES, memory_order_relaxed) + 1, memory_order_relaxed);
    st64(rec + S_PAYLOAD, ld64(rec + S_PAYLOAD, memory_order_relaxed) + vlen - old_vlen,
         memory_order_relaxed);
    uint8_t *const body = e + ENTRY_HEADER_BYTES;
    memcpy(body + klen, r->val, vlen);
    st32(e + E_VERSION, (uint32_t)writes);
    st64(e + E_EXPIRES_AT, exp, memory_order_relaxed);
    st32(e + E_VALUE_LEN, vlen);
    /* the kind byte keeps key_len's high bits and PUBLISHED; KIND_PINNED is not set here */
    st8(e + E_KIND, (uint8_t)(kind & ~KIND_MASK));
    st32(e + E_CHECKSUM, (uint32_t)xxh3_64(body, (size_t)klen + vlen, self->seed));
    atomic_thread_fence(memory_order_release);
    st64(rec + S_SEQ, seq + 2, memory_order_release);
    /* a write is a use: it keeps the entry's segment (lru.mark(off, True)) */
    uint8_t *a = base + self->access_off + slot_no;
    if (ld8(a) != 1)
        st8(a, 1);
    if (events)
        emit_event(self, rec, stripe, EV_SET, key, klen);
    r->cas_ok = 1;
    r->writes = writes;
    out = FAST_DONE;
release:
    release_stripe(rec);
    return out;
}

/* writer.h */
int
writer_expiry_due(Writer *self, uint64_t *cursor_out, int strict)
{
    uint8_t *const base = self->map.base;
    const uint64_t total = self->index_slots;
    uint64_t now;
    int rc = writer_now(self, &now);
    if (rc <= 0)
        return rc < 0 ? -1 : 1;
    uint64_t cursor = ld64(base + H_EXPIRE_CURSOR, memory_order_relaxed) % total;
    for (int k = 0; k < WRITER_EXPIRY_SLOTS; k++) {
        const uint64_t v = ld64(base + self->index_off + cursor * 8, memory_order_relaxed);
        cursor = cursor + 1 == total ? 0 : cursor + 1;
        const uint32_t ref = (uint32_t)v;
        if (!v)
            continue;
        if (!ref || ref > self->max_ref) {
            if (strict)
                return 1; /* Python's pass raises CorruptRegion */
            continue;     /* garbage the next locked pass will meet */
        }
        const uint64_t exp = ld64(base + self->arena_off + (uint64_t)ref * ALIGN + E_EXPIRES_AT,
                                  memory_order_relaxed);
        if (exp && exp <= now)
            return 1;
    }
    *cursor_out = cursor;
    return 0;
}

/* After every WRITER_EXPIRY_EVERY-th write: the look above, and the Python expiry pass if
 * something there looks expired. 0, or -1 on error. */
static int
writer_expiry_sample(Writer *self)
{
    uint64_t cursor = 0;
    int rc = writer_expiry_due(self, &cursor, 0);
    if (rc < 0)
        return -1;
    if (!rc) {
        /* as expire_sample_locked would have moved it; a racing store loses a hint only */
        st64(self->map.base + H_EXPIRE_CURSOR, cursor, memory_order_relaxed);
        return 0;
    }
    /* the cursor stays: the Python pass samples the same slots */
    self->expire_calls++;
    PyObject *res = PyObject_CallNoArgs(self->expire_hook);
    if (!res)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* The fast path of one call, its arguments prepared in r: FAST_DONE, FAST_FALLBACK (nothing
 * was changed) or FAST_ERROR. */
int
writer_run(Writer *self, PyObject *key_obj, wreq *r)
{
    const char *key;
    Py_ssize_t klen;
    PyObject *owned;
    /* A key that is not exact bytes or str goes through coerce_key here already: every other
     * argument was taken by the fast path, so Python would raise the key's error now too, and
     * coerce_key gives its exact message. */
    if (key_bytes(self->coerce_key, key_obj, &key, &klen, &owned) < 0)
        return FAST_ERROR;
    int rc = writer_run_hashed(self, key, (uint32_t)klen, xxh3_64(key, (size_t)klen, self->hseed),
                               r);
    Py_XDECREF(owned);
    return rc;
}

/* writer.h */
int
writer_run_hashed(Writer *self, const char *key, uint32_t klen, uint64_t h, wreq *r)
{
    r->sampled = 0;
    int rc = writer_locked(self, key, klen, h, r);
    if (rc == FAST_DONE) {
        self->fast++;
        if (r->writes && r->writes % WRITER_EXPIRY_EVERY == 0 && !r->sampled
                && writer_expiry_sample(self) < 0)
            return FAST_ERROR; /* the write is done (r->writes says so); the expiry pass failed */
    }
    return rc;
}
