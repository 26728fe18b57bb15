/* shmkv/_core_src/args.c: the argument parsing of Writer.set, cas and incr, which the handle
 * binds in place of Cache.set/cas/incr: a call with the wrong arguments fails as a call of the
 * Python method does, with CPython 3.11's messages (self counted). */
#include "writer.h"

static const char *const set_names[] = {"key", "value", "ttl_s"};
static const char *const cas_names[] = {"key", "value", "version", "ttl_s"};
static const char *const incr_names[] = {"key", "delta"};
static const char *const delete_names[] = {"key"};
const signature set_sig = {"Cache.set", set_names, 3, 2};
const signature cas_sig = {"Cache.cas", cas_names, 4, 3};
const signature incr_sig = {"Cache.incr", incr_names, 2, 1};
const signature delete_sig = {"Cache.delete", delete_names, 1, 1};

int
has_other_keyword(const signature *sig, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int known = !PyUnicode_Check(name)
                    || PyUnicode_CompareWithASCIIString(name, "self") == 0;
        for (int p = 0; p < sig->n && !known; p++)
            known = PyUnicode_CompareWithASCIIString(name, sig->names[p]) == 0;
        if (!known)
            return 1;
    }
    return 0;
}

int
parse_args(const signature *sig, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
           PyObject **out)
{
    for (int j = 0; j < sig->n; j++)
        out[j] = j < nargs ? args[j] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int j = -1, is_self = 0;
        if (PyUnicode_Check(name)) {
            is_self = PyUnicode_CompareWithASCIIString(name, "self") == 0;
            for (int p = 0; p < sig->n && !is_self && j < 0; p++)
                if (PyUnicode_CompareWithASCIIString(name, sig->names[p]) == 0)
                    j = p;
        }
        if (!is_self && j < 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%S'",
                         sig->qualname, name);
            return -1;
        }
        if (is_self || out[j]) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%S'",
                         sig->qualname, name);
            return -1;
        }
        out[j] = args[nargs + k];
    }
    if (nargs > sig->n) {
        if (sig->required < sig->n)
            PyErr_Format(PyExc_TypeError, "%s() takes from %d to %d positional arguments but "
                         "%zd were given", sig->qualname, sig->required + 1, sig->n + 1,
                         nargs + 1);
        else
            PyErr_Format(PyExc_TypeError, "%s() takes %d positional arguments but %zd were "
                         "given", sig->qualname, sig->n + 1, nargs + 1);
        return -1;
    }
    int missing[4], nmissing = 0;
    for (int j = 0; j < sig->required; j++)
        if (!out[j])
            missing[nmissing++] = j;
    if (nmissing) {
        const char *const *nm = sig->names;
        if (nmissing == 1)
            PyErr_Format(PyExc_TypeError, "%s() missing 1 required positional argument: '%s'",
                         sig->qualname, nm[missing[0]]);
        else if (nmissing == 2)
            PyErr_Format(PyExc_TypeError, "%s() missing 2 required positional arguments: "
                         "'%s' and '%s'", sig->qualname, nm[missing[0]], nm[missing[1]]);
        else
            PyErr_Format(PyExc_TypeError, "%s() missing 3 required positional arguments: "
                         "'%s', '%s', and '%s'", sig->qualname, nm[missing[0]], nm[missing[1]],
                         nm[missing[2]]);
        return -1;
    }
    return 0;
}
