/* shmkv/_core_src/alloc.c: the arena's allocator and the segment lists, for the Writer's
 * inserts, relocations and deletes: arena.py's alloc_locked and free_locked (segregated free
 * lists with boundary tags: the same class choice, first fit in the class, split and coalescing
 * rules) and lru.py's push_head_locked and unlink_locked, so that a region written by either
 * engine holds the same bytes. Every function here needs the arena lock.
 *
 * Block words, footers and links are shared memory that may hold anything: each is checked as
 * the Python functions check it, and where the Python code would raise CorruptRegion these
 * return A_GARBAGE (nothing changed yet: the caller hands the call to Python, which raises its
 * own message) or A_TORN (something changed: the caller raises). */
#include "writer.h"

#define HEAD_AT(b) (H_BIN_HEADS + 4 * (uint64_t)(b))
#define BITMAP_AT(b) (H_BIN_BITMAP + 8 * ((uint64_t)(b) >> 6))

/* --- size classes (arena.py: bin_of, bin_floor, fit_bin) ---------------------------------- */
static inline unsigned
bin_of(uint32_t size)
{
    if (size < SMALL_LIMIT)
        return size >> 3;
    unsigned fl = 31u - (unsigned)__builtin_clz(size);
    return 128 + (fl - 10) * 8 + ((size >> (fl - 3)) & 7);
}

static inline uint32_t
bin_floor(unsigned b)
{
    if (b < 128)
        return b << 3;
    unsigned fl = (b - 128) / 8 + 10;
    return (1u << fl) + (((b - 128) % 8) << (fl - 3));
}

static inline unsigned
fit_bin(uint32_t size)
{
    unsigned b = bin_of(size);
    return bin_floor(b) == size || size < SMALL_LIMIT ? b : b + 1;
}

static inline uint64_t
ref_off(const Writer *self, uint32_t ref)
{
    return self->arena_off + (uint64_t)ref * ALIGN;
}

/* a free-list link: a ref to a block whose FREE bit is set (arena.py's _check_link) */
static inline int
free_link_ok(const Writer *self, uint32_t ref)
{
    return ref <= self->max_ref && ld32(self->map.base + ref_off(self, ref)) & FREE_BIT;
}

static int
first_nonempty(const uint8_t *base, unsigned b)
{
    unsigned w = b >> 6;
    uint64_t bits = ld64(base + H_BIN_BITMAP + 8 * w, memory_order_relaxed) >> (b & 63);
    if (bits)
        return (int)(b + (unsigned)__builtin_ctzll(bits));
    for (w++; w < NBINS / 64; w++) {
        bits = ld64(base + H_BIN_BITMAP + 8 * w, memory_order_relaxed);
        if (bits)
            return (int)((w << 6) + (unsigned)__builtin_ctzll(bits));
    }
    return -1;
}

/* --- free lists ----------------------------------------------------------------------------- */
static int
unlink_ok(const Writer *self, uint64_t off)
{
    const uint8_t *base = self->map.base;
    uint32_t nxt = ld32(base + off + 8), prv = ld32(base + off + 12);
    return (!nxt || free_link_ok(self, nxt)) && (!prv || free_link_ok(self, prv));
}

/* arena.py's _unlink; unlink_ok(off) must hold */
static void
unlink_free(Writer *self, uint64_t off, unsigned b)
{
    uint8_t *base = self->map.base;
    uint32_t nxt = ld32(base + off + 8), prv = ld32(base + off + 12);
    if (prv) {
        st32(base + ref_off(self, prv) + 8, nxt);
    }
    else {
        st32(base + HEAD_AT(b), nxt);
        if (!nxt)
            st64(base + BITMAP_AT(b),
                 ld64(base + BITMAP_AT(b), memory_order_relaxed) & ~((uint64_t)1 << (b & 63)),
                 memory_order_relaxed);
    }
    if (nxt)
        st32(base + ref_off(self, nxt) + 12, prv);
}

/* arena.py's file_free_locked: A_OK, or A_TORN for a list head that is not a free block
 * (Python raises after the block's own words are written; so do we, after the same stores) */
static int
file_free(Writer *self, uint64_t off, uint32_t size, uint32_t prev_free)
{
    uint8_t *base = self->map.base;
    st32(base + off, size | FREE_BIT | prev_free);
    st32(base + off + size - 4, size); /* footer, read by the next block when it coalesces */
    st32(base + off + size, ld32(base + off + size) | PREV_FREE_BIT);
    unsigned b = size < SMALL_LIMIT ? size >> 3 : bin_of(size);
    uint32_t head = ld32(base + HEAD_AT(b));
    if (head && !free_link_ok(self, head))
        return A_TORN;
    uint32_t ref = (uint32_t)((off - self->arena_off) >> 3);
    st32(base + off + 8, head);
    st32(base + off + 12, 0);
    if (head)
        st32(base + ref_off(self, head) + 12, ref);
    st32(base + HEAD_AT(b), ref);
    st64(base + BITMAP_AT(b),
         ld64(base + BITMAP_AT(b), memory_order_relaxed) | (uint64_t)1 << (b & 63),
         memory_order_relaxed);
    return A_OK;
}

/* --- allocation and freeing ---------------------------------------------------------------- */
/* writer.h */
int
arena_alloc(Writer *self, uint32_t nbytes, uint64_t *out)
{
    uint8_t *base = self->map.base;
    int found = first_nonempty(base, fit_bin(nbytes));
    uint64_t off;
    if (found >= 0) {
        uint32_t ref = ld32(base + HEAD_AT(found));
        if (!ref || ref > self->max_ref)
            return A_GARBAGE;
        off = ref_off(self, ref);
    }
    else {
        /* Good fit skips the request's own class, whose blocks may be smaller; when nothing
         * larger exists, one of them may still fit: first fit among its first 64 blocks. */
        found = (int)bin_of(nbytes);
        uint32_t ref = ld32(base + HEAD_AT(found));
        off = 0;
        for (int k = 0; k < 64 && ref; k++) {
            if (!free_link_ok(self, ref))
                return A_GARBAGE;
            uint64_t o = ref_off(self, ref);
            if ((ld32(base + o) & SIZE_MASK) >= nbytes) {
                off = o;
                break;
            }
            ref = ld32(base + o + 8);
        }
        if (!off)
            return A_NONE;
    }
    const uint32_t word = ld32(base + off);
    uint32_t size = word & SIZE_MASK;
    if (!(word & FREE_BIT) || size < nbytes || off + size > self->arena_last
            || ld32(base + off + size - 4) != size || !unlink_ok(self, off))
        return A_GARBAGE;
    unlink_free(self, off, (unsigned)found);
    const uint32_t rest = size - nbytes;
    if (rest >= MIN_BLOCK_BYTES) {
        size = nbytes;
        if (file_free(self, off + size, rest, 0) != A_OK) /* the next block has PREV_FREE */
            return A_TORN;
    }
    else {
        st32(base + off + size, ld32(base + off + size) & ~PREV_FREE_BIT);
    }
    st32(base + off, size | (word & PREV_FREE_BIT));
    st64(base + H_ARENA_USED, ld64(base + H_ARENA_USED, memory_order_relaxed) + size,
         memory_order_relaxed);
    *out = off;
    return A_OK;
}

/* writer.h */
int
arena_free(Writer *self, uint64_t off, int check_only)
{
    uint8_t *base = self->map.base;
    const uint32_t word = ld32(base + off);
    const uint32_t size = word & SIZE_MASK;
    if (word & FREE_BIT || size < MIN_BLOCK_BYTES || off + size > self->arena_last)
        return A_GARBAGE;
    uint64_t start = off, total = size;
    const uint64_t noff = off + size;
    const uint32_t nword = ld32(base + noff), nsize = nword & SIZE_MASK;
    const int with_next = nword & FREE_BIT && total + nsize <= MAX_BLOCK_BYTES;
    if (with_next && (nsize < MIN_BLOCK_BYTES || noff + nsize > self->arena_last
                      || !unlink_ok(self, noff)))
        return A_GARBAGE;
    uint32_t prev_free = word & PREV_FREE_BIT, psize = 0;
    int with_prev = 0;
    if (prev_free) {
        psize = ld32(base + off - 4); /* the footer of the free block before ours */
        /* as arena.py: tested against the total with the next block already merged */
        with_prev = (uint64_t)psize + total + (with_next ? nsize : 0) <= MAX_BLOCK_BYTES;
        if (with_prev && (psize < MIN_BLOCK_BYTES || psize > off - self->arena_first
                          || (ld32(base + off - psize) & ~PREV_FREE_BIT) != (psize | FREE_BIT)
                          || !unlink_ok(self, off - psize)))
            return A_GARBAGE;
    }
    if (check_only)
        return A_OK;
    if (with_next) {
        unlink_free(self, noff, bin_of(nsize));
        total += nsize;
    }
    if (with_prev) {
        start = off - psize;
        /* re-checked: unlinking the next block may have rewritten this one's links */
        if (!unlink_ok(self, start))
            return A_TORN;
        unlink_free(self, start, bin_of(psize));
        total += psize;
        prev_free = ld32(base + start) & PREV_FREE_BIT;
    }
    st64(base + H_ARENA_USED, ld64(base + H_ARENA_USED, memory_order_relaxed) - size,
         memory_order_relaxed);
    return file_free(self, start, (uint32_t)total, prev_free);
}

/* --- retiring a pinned block (pins.py) --------------------------------------------------------- */
/* Whether any process record pins ref (pins.py's pinned_refs, dead processes' too). */
static int
pinned_by_a_process(const Writer *self, uint32_t ref)
{
    const uint8_t *base = self->map.base;
    for (uint32_t p = 0; p < self->max_procs; p++) {
        const uint8_t *pins = base + self->procs_off + (uint64_t)p * PROC_BYTES + P_PINS;
        for (uint32_t k = 0; k < PINS_PER_PROC; k++)
            if (ld32(pins + 4 * k) == ref)
                return 1;
    }
    return 0;
}

/* writer.h */
int
arena_free_or_retire(Writer *self, uint64_t off, int check_only)
{
    uint8_t *base = self->map.base;
    const uint32_t ref = (uint32_t)((off - self->arena_off) >> 3);
    if (!(ld8(base + off + E_KIND) & KIND_PINNED) || !pinned_by_a_process(self, ref))
        return arena_free(self, off, check_only);
    if (check_only)
        return A_OK;
    /* _push_retired_locked: linked through lru_next, segment SEG_RETIRED */
    st32(base + off + E_LRU_NEXT, ld32(base + H_RETIRED_HEAD));
    const uint32_t word = ld32(base + off);
    st32(base + off, (word & ~SEG_BITS) | SEG_RETIRED_WORD);
    st32(base + H_RETIRED_HEAD, ref);
    st32(base + H_RETIRED_COUNT, ld32(base + H_RETIRED_COUNT) + 1);
    st64(base + H_RETIRED_BYTES,
         ld64(base + H_RETIRED_BYTES, memory_order_relaxed) + (word & SIZE_MASK),
         memory_order_relaxed);
    return A_OK;
}

/* --- the segment lists (lru.py) -------------------------------------------------------------- */
static const uint32_t seg_word[4] = {0, 0x4u, 0x80000000u, 0x80000004u}; /* layout.SEG_WORD */

static inline int
segment_of(uint32_t word)
{
    return (int)((word >> 2 & 1) | (word >> 30 & 2));
}

static inline int
seg_link_ok(const Writer *self, uint32_t ref, uint32_t seg_bits)
{
    return ref <= self->max_ref
           && (ld32(self->map.base + ref_off(self, ref)) & SEG_BITS) == seg_bits;
}

static inline void
seg_count(Writer *self, int seg, int64_t items, int64_t nbytes)
{
    uint8_t *base = self->map.base;
    uint8_t *i = base + H_SEG_ITEMS + 8 * (seg - 1), *b = base + H_SEG_BYTES + 8 * (seg - 1);
    st64(i, ld64(i, memory_order_relaxed) + (uint64_t)items, memory_order_relaxed);
    st64(b, ld64(b, memory_order_relaxed) + (uint64_t)nbytes, memory_order_relaxed);
}

/* writer.h */
int
lru_push_head(Writer *self, uint64_t off, int seg)
{
    uint8_t *base = self->map.base;
    uint8_t *ends = base + H_SEG_ENDS + 8 * (seg - 1);
    const uint32_t ref = (uint32_t)((off - self->arena_off) >> 3);
    const uint32_t head = ld32(ends), seg_bits = seg_word[seg];
    if (head && !seg_link_ok(self, head, seg_bits))
        return A_GARBAGE;
    st32(base + off + E_LRU_PREV, 0);
    st32(base + off + E_LRU_NEXT, head);
    if (head)
        st32(base + ref_off(self, head) + E_LRU_PREV, ref);
    else
        st32(ends + 4, ref);
    st32(ends, ref);
    const uint32_t word = ld32(base + off);
    st32(base + off, (word & ~SEG_BITS) | seg_bits);
    seg_count(self, seg, 1, word & SIZE_MASK);
    return A_OK;
}

/* writer.h */
int
lru_unlink(Writer *self, uint64_t off, int check_only)
{
    uint8_t *base = self->map.base;
    const uint32_t word = ld32(base + off);
    const int seg = segment_of(word);
    if (seg == 0)
        return A_OK;
    if (seg > SEG_PROTECTED)
        return A_GARBAGE;
    const uint32_t prev = ld32(base + off + E_LRU_PREV), nxt = ld32(base + off + E_LRU_NEXT);
    const uint32_t seg_bits = word & SEG_BITS;
    if ((prev && !seg_link_ok(self, prev, seg_bits)) || (nxt && !seg_link_ok(self, nxt, seg_bits)))
        return A_GARBAGE;
    if (check_only)
        return A_OK;
    uint8_t *ends = base + H_SEG_ENDS + 8 * (seg - 1);
    if (prev)
        st32(base + ref_off(self, prev) + E_LRU_NEXT, nxt);
    else
        st32(ends, nxt);
    if (nxt)
        st32(base + ref_off(self, nxt) + E_LRU_PREV, prev);
    else
        st32(ends + 4, prev);
    st32(base + off, word & ~SEG_BITS);
    seg_count(self, seg, -1, -(int64_t)(word & SIZE_MASK));
    return A_OK;
}
