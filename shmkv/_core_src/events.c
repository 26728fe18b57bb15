/* shmkv/_core_src/events.c: keyspace events from the Writer: events.py's emit_locked, for the
 * EV_SET of a write and the EV_DEL or EV_EXPIRED of a delete, appended to the key's stripe's
 * ring under the stripe lock (the ring format is layout.py's). */
#include "writer.h"

/* writer.h */
void
emit_event(Writer *self, uint8_t *rec, uint64_t stripe, uint8_t kind, const char *key,
           uint32_t klen)
{
    uint8_t record[EVENT_HEADER_BYTES + MAX_KEY_BYTES + 8];
    const uint32_t body = EVENT_HEADER_BYTES + klen, size = (body + 7) & ~7u;
    const uint16_t coll = (uint16_t)self->coll, key_len = (uint16_t)klen;
    memset(record, 0, EVENT_HEADER_BYTES);
    memcpy(record, &size, 4); /* layout.EVENT_HEADER "<IBxHHxxI": size, kind, coll, key_len */
    record[4] = kind;
    memcpy(record + 6, &coll, 2);
    memcpy(record + 8, &key_len, 2);
    memcpy(record + EVENT_HEADER_BYTES, key, klen);
    memset(record + body, 0, size - body);
    const uint64_t ring = self->ring_bytes;
    const uint64_t head = ld64(rec + S_EVENTS_HEAD, memory_order_relaxed);
    uint8_t *ring0 = self->map.base + self->events_off + stripe * ring;
    const uint64_t at = head % ring;
    const uint64_t first = size < ring - at ? size : ring - at;
    memcpy(ring0 + at, record, first);
    if (first < size) /* wraps around the end of the ring */
        memcpy(ring0, record + first, size - first);
    /* the record is in place before the head moves past it: a reader never parses half of
     * one */
    st64(rec + S_EVENTS_HEAD, head + size, memory_order_release);
    st64(rec + S_EVENTS_COUNT, ld64(rec + S_EVENTS_COUNT, memory_order_relaxed) + 1,
         memory_order_relaxed);
}
