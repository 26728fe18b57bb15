/* shmkv/_core_src/lock.c: taking a stripe's robust process-shared mutex for the Writer
 * (locks.py's protocol): trylock; if busy, wait with the GIL released, in slices so that signal
 * handlers run, until lock_timeout_s; a dead holder's lock is made consistent at once. What the
 * Writer does once it holds the lock is in fastpath.c; see writer.c for the whole protocol. */
#include "writer.h"

static inline void
timespec_add_ns(struct timespec *t, int64_t ns)
{
    t->tv_sec += ns / 1000000000;
    t->tv_nsec += ns % 1000000000;
    if (t->tv_nsec >= 1000000000) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000;
    }
}

static inline int
timespec_before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

#define WAIT_INTERRUPTED (-1) /* not a pthread code: those are positive */

/* Take m, waiting at most lock_timeout_s in WAIT_SLICE_NS slices with the GIL released, so that
 * signal handlers (Ctrl-C) run between slices: pthread's code (0, EOWNERDEAD, ...), ETIMEDOUT
 * past the deadline, or WAIT_INTERRUPTED with the exception a signal handler raised. */
static int
wait_for(Writer *self, pthread_mutex_t *m)
{
    int rc = pthread_mutex_trylock(m);
    if (rc != EBUSY)
        return rc;
    struct timespec now, deadline, until;
    clock_gettime(CLOCK_MONOTONIC, &now);
    deadline = now;
    timespec_add_ns(&deadline, (int64_t)(self->timeout_s * 1e9));
    for (;;) {
        until = now;
        timespec_add_ns(&until, WAIT_SLICE_NS);
        if (timespec_before(&deadline, &until))
            until = deadline;
        Py_BEGIN_ALLOW_THREADS
        rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &until);
        Py_END_ALLOW_THREADS
        if (rc != ETIMEDOUT)
            return rc;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (!timespec_before(&now, &deadline))
            return ETIMEDOUT;
        if (PyErr_CheckSignals() < 0)
            return WAIT_INTERRUPTED;
    }
}

/* Take stripe's mutex (locks.py's acquire_stripe, without the claim): 0, or -1 with
 * LockTimeout, CorruptRegion or what a signal handler raised. */
int
lock_stripe(Writer *self, pthread_mutex_t *m, const uint8_t *rec, uint64_t stripe)
{
    int rc = wait_for(self, m);
    if (rc == ETIMEDOUT) {
        unsigned pid = ld32(rec + S_OWNER_PID);
        char who[16] = "?";
        if (pid)
            PyOS_snprintf(who, sizeof who, "%u", pid);
        PyErr_Format(self->timeout_exc,
                     "stripe %llu lock not acquired within %U s; held by pid %s, which "
                     "is alive (a dead holder's lock passes to the next locker). If it "
                     "is stopped or stuck, stop it; if it is just busy, raise "
                     "lock_timeout_s", (unsigned long long)stripe, self->timeout_str, who);
        return -1;
    }
    if (rc == WAIT_INTERRUPTED)
        return -1;
    if (rc == 0)
        return 0;
    if (rc == EOWNERDEAD) { /* its holder died: consistent now, repaired by Python (pid) */
        pthread_mutex_consistent(m);
        return 0;
    }
    if (rc == EDEADLK)
        PyErr_Format(self->timeout_exc, "stripe %llu lock: this thread holds it already (a "
                     "lock is not re-entrant: a bug in the caller)", (unsigned long long)stripe);
    else
        PyErr_Format(self->corrupt_exc, "stripe %llu lock: pthread says %s (error %d); close "
                     "every process using the region and open it again, which re-initialises "
                     "its locks", (unsigned long long)stripe, strerror(rc), rc);
    return -1;
}

/* writer.h */
int
claim_stripe(Writer *self, uint64_t stripe, uint8_t **rec_out)
{
    uint8_t *const rec = self->map.base + self->stripes_off + stripe * STRIPE_BYTES;
    pthread_mutex_t *const m = (pthread_mutex_t *)(void *)(rec + S_MUTEX);
    if (lock_stripe(self, m, rec, stripe) < 0)
        return FAST_ERROR;
    /* A pid still recorded (its holder died inside), an odd seq, an impossible count: the
     * stripe needs Python's repair. Leave everything as it is, the pid above all. */
    if (ld32(rec + S_OWNER_PID) || ld64(rec + S_SEQ, memory_order_relaxed) & 1
            || ld32(rec + S_COUNT) > self->max_count) {
        pthread_mutex_unlock(m);
        return FAST_FALLBACK;
    }
    st32(rec + S_OWNER_PID, (uint32_t)writer_pid);
    *rec_out = rec;
    return FAST_DONE;
}

/* writer.h */
int
lock_arena(Writer *self)
{
    uint8_t *const base = self->map.base;
    pthread_mutex_t *const m = (pthread_mutex_t *)(void *)(base + H_ARENA_MUTEX);
    /* held by a writer of another stripe, for an allocation: short. Waited for here with the
     * GIL released; past lock_timeout_s, Python waits again and raises LockTimeout. */
    int rc = wait_for(self, m);
    if (rc == ETIMEDOUT)
        return 0;
    if (rc == WAIT_INTERRUPTED)
        return -1;
    if (rc == EOWNERDEAD)
        pthread_mutex_consistent(m); /* its holder died: the recorded pid makes Python repair */
    else if (rc)
        return 0; /* Python raises what it means */
    if (ld32(base + H_ARENA_OWNER_PID)) {
        pthread_mutex_unlock(m); /* the pid stays: the needs-repair mark */
        return 0;
    }
    st32(base + H_ARENA_OWNER_PID, (uint32_t)writer_pid);
    return 1;
}

/* writer.h */
void
unlock_arena(Writer *self)
{
    st32(self->map.base + H_ARENA_OWNER_PID, 0);
    pthread_mutex_unlock((pthread_mutex_t *)(void *)(self->map.base + H_ARENA_MUTEX));
}
