/* shmkv/_core_src/packed.c: the packed batch form of the wire protocol (broker/protocol.py's
 * pack and unpack: a frame of u32 little-endian lengths, then the items back to back), in C for
 * the node and the clients. In Python a batch of 100 keys took ~3 us to pack and ~6 us to cut
 * up, and a get_many reply's two frames ~5.5 us to build, on each side of every batch: a third
 * of what the node spent on get_many(100).
 *
 * Each function answers None for what it leaves to Python (an item that is not bytes, a
 * length table that is not whole or does not add up, more than max_items items): Python then
 * does the whole call, with its own errors and messages.
 */
#include "core.h"

/* [lengths, data] of a sequence of exact bytes of at most max_item_bytes; lengths only for
 * pack_found's present ones */
static PyObject *
pack_items(PyObject *const *items, Py_ssize_t n, uint64_t max_item_bytes, int skip_none,
           PyObject **found_out)
{
    Py_ssize_t present = 0, total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (items[i] == Py_None && skip_none)
            continue;
        if (!PyBytes_CheckExact(items[i])
                || (uint64_t)PyBytes_GET_SIZE(items[i]) > max_item_bytes)
            Py_RETURN_NONE;
        present++;
        total += PyBytes_GET_SIZE(items[i]);
    }
    PyObject *lengths = PyBytes_FromStringAndSize(NULL, present * 4);
    PyObject *data = lengths ? PyBytes_FromStringAndSize(NULL, total) : NULL;
    PyObject *found = data && found_out ? PyList_New(n) : NULL;
    if (!data || (found_out && !found)) {
        Py_XDECREF(lengths);
        Py_XDECREF(data);
        return NULL;
    }
    uint8_t *len_at = (uint8_t *)PyBytes_AS_STRING(lengths);
    char *data_at = PyBytes_AS_STRING(data);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (items[i] == Py_None) {
            PyList_SET_ITEM(found, i, Py_NewRef(Py_False)); /* only with skip_none */
            continue;
        }
        if (found)
            PyList_SET_ITEM(found, i, Py_NewRef(Py_True));
        const uint32_t k = (uint32_t)PyBytes_GET_SIZE(items[i]);
        len_at = put_le32(len_at, k);
        memcpy(data_at, PyBytes_AS_STRING(items[i]), k);
        data_at += k;
    }
    PyObject *frames = Py_BuildValue("[NN]", lengths, data);
    if (!frames)
        Py_XDECREF(found);
    else if (found_out)
        *found_out = found;
    return frames;
}

/* pack(items: list | tuple of bytes, max_item_bytes=2**32 - 1) -> [lengths, data] | None (an
 * item longer than max_item_bytes: None, as for one that is not bytes; the clients' keys) */
SHMKV_INTERNAL PyObject *
core_pack(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "pack(items, max_item_bytes=2**32 - 1)");
        return NULL;
    }
    uint64_t max_item_bytes = UINT32_MAX;
    if (nargs == 2) {
        const unsigned long long max = PyLong_AsUnsignedLongLong(args[1]);
        if (max == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
        if (max < max_item_bytes)
            max_item_bytes = max;
    }
    PyObject *items = args[0];
    if (!PyList_CheckExact(items) && !PyTuple_CheckExact(items))
        Py_RETURN_NONE;
    return pack_items(PySequence_Fast_ITEMS(items), PySequence_Fast_GET_SIZE(items),
                      max_item_bytes, 0, NULL);
}

/* pack_found(values: list of bytes or None) -> (found: list of bool, [lengths, data]) | None:
 * get_many's reply (broker/dispatch.py) */
SHMKV_INTERNAL PyObject *
core_pack_found(PyObject *Py_UNUSED(module), PyObject *values)
{
    if (!PyList_CheckExact(values))
        Py_RETURN_NONE;
    PyObject *found = NULL;
    PyObject *frames = pack_items(PySequence_Fast_ITEMS(values), PyList_GET_SIZE(values),
                                  UINT32_MAX, 1, &found);
    if (!frames || frames == Py_None)
        return frames;
    return Py_BuildValue("(NN)", found, frames);
}

/* The buffers of a packed batch's two frames: 0, or -1 (no error set) if either is not a
 * contiguous buffer, which the caller leaves to Python, whose view of it says what */
static int
table_and_data(PyObject *lengths, PyObject *items, Py_buffer *table, Py_buffer *data)
{
    if (PyObject_GetBuffer(lengths, table, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return -1;
    }
    if (PyObject_GetBuffer(items, data, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        PyBuffer_Release(table);
        return -1;
    }
    return 0;
}

/* unpack_bytes(lengths, data, max_items) -> list of bytes | None */
SHMKV_INTERNAL PyObject *
core_unpack_bytes(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "unpack_bytes(lengths, data, max_items)");
        return NULL;
    }
    const Py_ssize_t max_items = PyLong_AsSsize_t(args[2]);
    if (max_items == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer table, data;
    if (table_and_data(args[0], args[1], &table, &data) < 0)
        Py_RETURN_NONE;
    PyObject *res = NULL;
    const Py_ssize_t n = table.len / 4;
    const uint8_t *len_at = table.buf;
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i < n && n <= max_items; i++)
        total += le32(len_at + 4 * i);
    if (table.len % 4 || n > max_items || total != (uint64_t)data.len) {
        res = Py_NewRef(Py_None);
        goto done;
    }
    if (!(res = PyList_New(n)))
        goto done;
    const char *at = data.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint32_t k = le32(len_at + 4 * i);
        PyObject *item = PyBytes_FromStringAndSize(at, k);
        if (!item) {
            Py_CLEAR(res);
            goto done;
        }
        PyList_SET_ITEM(res, i, item);
        at += k;
    }
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&table);
    return res;
}

/* found_values(keys: list | tuple, found: list of bool, lengths, data) -> {key: value} | None:
 * get_many's reply as a client returns it (clients/commands.py), the values cut out of data
 * straight into the dict; None if found is not one bool per key or the table does not hold
 * one value per key found, adding up to data */
SHMKV_INTERNAL PyObject *
core_found_values(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "found_values(keys, found, lengths, data)");
        return NULL;
    }
    PyObject *keys = args[0], *found = args[1];
    if ((!PyList_CheckExact(keys) && !PyTuple_CheckExact(keys)) || !PyList_CheckExact(found)
            || PyList_GET_SIZE(found) != PySequence_Fast_GET_SIZE(keys))
        Py_RETURN_NONE;
    const Py_ssize_t n = PyList_GET_SIZE(found);
    Py_ssize_t present = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyList_GET_ITEM(found, i);
        if (f != Py_True && f != Py_False)
            Py_RETURN_NONE;
        present += f == Py_True;
    }
    Py_buffer table, data;
    if (table_and_data(args[2], args[3], &table, &data) < 0)
        Py_RETURN_NONE;
    PyObject *res = NULL;
    const uint8_t *len_at = table.buf;
    uint64_t total = 0;
    if (table.len == present * 4)
        for (Py_ssize_t i = 0; i < present; i++)
            total += le32(len_at + 4 * i);
    if (table.len != present * 4 || total != (uint64_t)data.len) {
        res = Py_NewRef(Py_None);
        goto done;
    }
    if (!(res = PyDict_New()))
        goto done;
    PyObject *const *key = PySequence_Fast_ITEMS(keys);
    const char *at = data.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyList_GET_ITEM(found, i) != Py_True)
            continue;
        const uint32_t k = le32(len_at);
        len_at += 4;
        PyObject *value = PyBytes_FromStringAndSize(at, k);
        if (!value || PyDict_SetItem(res, key[i], value) < 0) {
            Py_XDECREF(value);
            Py_CLEAR(res);
            goto done;
        }
        Py_DECREF(value);
        at += k;
    }
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&table);
    return res;
}
