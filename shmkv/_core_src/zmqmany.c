/* shmkv/_core_src/zmqmany.c: the compiled door's get_many (zmqdoor.c says when it answers one):
 * the keys of a packed batch read in batch.c's prefetching groups, the reply's three frames
 * made in libzmq's own messages. */
#include "zmqdoor.h"

/* Read the n keys of a packed batch (their u32 lengths at table, their bytes back to back at
 * data) into values (a new reference or NULL each), in BATCH_GROUP groups as batch.c does;
 * *hits and *misses say how many it counted. 1, 0 when the values' bytes pass max_bytes
 * (*total_bytes: theirs so far), or -1 with an error; what was read is in values either way. */
static int
read_batch(Reader *reader, const uint8_t *table, const char *data, size_t n,
           uint64_t max_bytes, PyObject **values, uint64_t *total_bytes, size_t *hits,
           size_t *misses)
{
    BatchKey group[BATCH_GROUP];
    for (size_t first = 0; first < n; first += BATCH_GROUP) {
        const int m = n - first < BATCH_GROUP ? (int)(n - first) : BATCH_GROUP;
        for (int k = 0; k < m; k++) {
            group[k].data = data;
            group[k].len = (Py_ssize_t)le32(table + 4 * (first + (size_t)k));
            data += group[k].len;
            batch_hash(reader, &group[k]);
        }
        batch_prefetch(reader, group, m);
        for (int k = 0; k < m; k++) {
            PyObject **value = &values[first + (size_t)k];
            const int rc = reader_read_hashed(reader, group[k].data, group[k].len, group[k].h,
                                              WANT_VALUE, value);
            if (rc < 0)
                return -1;
            if (rc == 0) {
                (*misses)++;
                continue;
            }
            (*hits)++;
            if ((*total_bytes += (uint64_t)PyBytes_GET_SIZE(*value)) > max_bytes)
                return 0;
        }
    }
    return 1;
}

/* Send get_many's reply [routing id, head + a found byte per key, lengths, values] of the n
 * values read: 0 (sent or dropped), or -1 with an error. */
static int
send_many(PlainGets *self, zmq_msg_t *routing_id, const char *request, PyObject **values,
          size_t n, uint64_t total_bytes)
{
    const size_t plen = (size_t)self->reply_prefix_len;
    size_t present = 0;
    for (size_t i = 0; i < n; i++)
        present += values[i] != NULL;
    zmq_msg_t frames[3];
    const size_t sizes[3] = {plen + 9 + n, 4 * present, (size_t)total_bytes};
    for (int i = 0; i < 3; i++)
        if (zmq.msg_init_size(&frames[i], sizes[i]) < 0) {
            while (i--)
                zmq.msg_close(&frames[i]);
            PyErr_NoMemory();
            return -1;
        }
    char *head = zmq.msg_data(&frames[0]), *data = zmq.msg_data(&frames[2]);
    uint8_t *lengths = zmq.msg_data(&frames[1]);
    memcpy(head, self->reply_prefix, plen);
    memcpy(head + plen, request + self->id_at, 8);
    head[plen + 8] = self->reply_bools;
    for (size_t i = 0; i < n; i++) {
        head[plen + 9 + i] = values[i] != NULL;
        if (!values[i])
            continue;
        const uint32_t len = (uint32_t)PyBytes_GET_SIZE(values[i]);
        lengths = put_le32(lengths, len);
        memcpy(data, PyBytes_AS_STRING(values[i]), len);
        data += len;
    }
    int rc = door_send_routing_id(self, routing_id);
    for (int i = 0; i < 3 && rc > 0; i++)
        if (zmq.msg_send(&frames[i], self->handle, i < 2 ? ZMQ_SNDMORE : 0) < 0) {
            zmqlib_error(zmq.errno_());
            rc = -1;
        }
    for (int i = 0; i < 3; i++)
        zmq.msg_close(&frames[i]); /* those not sent */
    return rc < 0 ? -1 : 0;
}

/* Answer the plain get_many parts[1..3] (a header and a packed batch of keys): ANSWERED,
 * PYTHONS (nothing done, nothing counted), or -1 with an error. */
int
door_answer_many(PlainGets *self, zmq_msg_t *parts, double started_s)
{
    const size_t table_bytes = zmq.msg_size(&parts[2]), n = table_bytes / 4;
    if (table_bytes % 4 || n == 0 || n > self->max_batch_keys)
        return PYTHONS;
    const uint8_t *table = zmq.msg_data(&parts[2]);
    uint64_t keys_bytes = 0;
    for (size_t i = 0; i < n; i++) {
        const uint32_t len = le32(table + 4 * i);
        if (len > MAX_KEY_BYTES)
            return PYTHONS;
        keys_bytes += len;
    }
    if (keys_bytes != zmq.msg_size(&parts[3]))
        return PYTHONS;
    PyObject **values = PyMem_Calloc(n, sizeof *values);
    if (!values) {
        PyErr_NoMemory();
        return -1;
    }
    Reader *reader = self->reader;
    uint64_t total_bytes = 0;
    size_t hits = 0, misses = 0;
    int rc = PYTHONS;
    if (mapped_enter(&reader->map) == 0) {
        const int read = read_batch(reader, table, zmq.msg_data(&parts[3]), n,
                                    self->max_reply_bytes, values, &total_bytes, &hits,
                                    &misses);
        mapped_leave(&reader->map);
        if (read > 0)
            rc = send_many(self, &parts[0], zmq.msg_data(&parts[1]), values, n, total_bytes)
                < 0 ? -1 : ANSWERED;
    }
    if (rc == PYTHONS) { /* closed, corrupt, or too large: Python reads it all again */
        PyErr_Clear();
        reader->hits -= hits;
        reader->misses -= misses;
    }
    for (size_t i = 0; i < n; i++)
        Py_XDECREF(values[i]);
    PyMem_Free(values);
    if (rc == ANSWERED)
        door_observe(self, OP_GET_MANY, started_s);
    return rc;
}
