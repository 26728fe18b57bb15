/* shmkv/_core_src/pin.h: what pin.c (the compiled pin and the Pin that owns one) and view.c
 * (the View context manager built on a Pin) share. */
#ifndef SHMKV_PIN_H
#define SHMKV_PIN_H
#include "writer.h"

typedef struct {
    PyObject_HEAD
    Writer *owner;  /* holds one of owner->map.inflight: the mapping stays while the pin does */
    PyObject *at;   /* the pin slot, a u32 index into the region, given back to free_pins */
    uint64_t off;   /* the pinned entry */
    uint8_t *ptr;   /* the value's bytes */
    Py_ssize_t len;
    pid_t pid;      /* the pinning process: a forked child never drops its parent's pins */
} Pin;

typedef struct {
    PyObject_HEAD
    Writer *owner;
    PyObject *key;
    Pin *pin;       /* while open */
    PyObject *mv;   /* view(): the memoryview handed out, released at the end of the block */
    int as_array;
    int state;      /* 0, VIEW_OPEN, VIEW_CLOSED */
} View;

enum { VIEW_OPEN = 1, VIEW_CLOSED = 2 };

/* What a pin gives a view (the tuple of Cache._pin_entry). */
typedef struct {
    PyObject *at;   /* new reference */
    uint64_t off, start;
    uint32_t vlen;
    uint8_t kind;
} pinned;

/* pin.c */
SHMKV_INTERNAL int pin_any(Writer *self, PyObject *key, pinned *out);
SHMKV_INTERNAL Pin *pin_new(Writer *owner, const pinned *p);
/* view.c */
SHMKV_INTERNAL int view_strings_init(void);

#endif
