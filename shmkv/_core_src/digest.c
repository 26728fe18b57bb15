/* shmkv/_core_src/digest.c: range_digests, the per-slot-range digests of one stripe that a
 * replica compares with its primary's (shmkv/repl_digest.py is the definition and the
 * pure-Python twin; tests/unit/test_repl_digest.py holds the two to each other).
 *
 * Called under the stripe's lock (by repl_digest.stripe_digests), so every slot and entry it
 * reads is stable; it still checks each offset against the buffer, so that a damaged slot can
 * cost a wrong digest (the replica then re-reads that range) but never a read outside the
 * mapping. */
#include "core.h"

#define PREFETCH_AHEAD 32

static inline uint64_t
mix64(uint64_t x) /* splitmix64's finalizer */
{
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* range_digests(region, slots_offset, slots, arena_base, max_ref, n_ranges) -> bytes */
SHMKV_INTERNAL PyObject *
core_range_digests(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "range_digests(region, slots_offset, slots, "
                        "arena_base, max_ref, n_ranges) takes 6 arguments");
        return NULL;
    }
    unsigned long long v[5];
    for (int i = 0; i < 5; i++) {
        v[i] = PyLong_AsUnsignedLongLong(args[i + 1]);
        if (v[i] == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
    }
    const uint64_t slots_off = v[0], n_slots = v[1], arena_base = v[2], max_ref = v[3];
    const uint64_t n_ranges = v[4];
    if (n_ranges == 0 || n_ranges > (1u << 20)) {
        PyErr_SetString(PyExc_ValueError, "n_ranges must be in 1..2**20");
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint64_t len = (uint64_t)b.len;
    if (slots_off % 8 || slots_off > len || n_slots > (len - slots_off) / 8) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "the slots lie outside the region");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n_ranges * 8));
    if (out == NULL) {
        PyBuffer_Release(&b);
        return NULL;
    }
    uint64_t *sums = (uint64_t *)(void *)PyBytes_AS_STRING(out);
    memset(sums, 0, n_ranges * 8);
    const uint8_t *base = (const uint8_t *)b.buf;
    Py_BEGIN_ALLOW_THREADS
    for (uint64_t i = 0; i < n_slots; i++) {
        /* each entry is a cache miss, and the mixing below is long enough to keep only a
         * few in flight: ask for the entry PREFETCH_AHEAD slots on now */
        if (i + PREFETCH_AHEAD < n_slots) {
            const uint64_t ahead = ld64(base + slots_off + (i + PREFETCH_AHEAD) * 8,
                                        memory_order_relaxed) & 0xFFFFFFFFull;
            if (ahead && ahead <= max_ref && arena_base + ahead * ALIGN + 64 <= len) {
                __builtin_prefetch(base + arena_base + ahead * ALIGN);
                __builtin_prefetch(base + arena_base + ahead * ALIGN + ENTRY_HEADER_BYTES - 1);
            }
        }
        const uint64_t slot = ld64(base + slots_off + i * 8, memory_order_relaxed);
        const uint64_t ref = slot & 0xFFFFFFFFull;
        if (ref == 0 || ref > max_ref)
            continue;
        const uint64_t off = arena_base + ref * ALIGN;
        if (off + ENTRY_HEADER_BYTES > len)
            continue;
        const uint8_t *e = base + off;
        const uint64_t hi = slot >> 32;
        const uint64_t a = hi << 32 | ld32(e + E_VERSION);
        const uint64_t exp = ld64(e + E_EXPIRES_AT, memory_order_relaxed);
        const uint64_t c = (uint64_t)ld32(e + E_VALUE_LEN) << 32
                           | (ld32(e + E_KEY_COLL) & (0xFFFF0000u | KEY_LEN_MASK))
                           | (uint64_t)(ld8(e + E_KIND) & KIND_MASK) << 8;
        const uint64_t d = mix64(a ^ mix64(exp ^ mix64(c ^ mix64(ld32(e + E_CHECKSUM)))));
        sums[(hi * n_ranges) >> 32] += d;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    return out;
}
