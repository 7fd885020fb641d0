/*
 * sealserve.ipc._ringcore: the compiled hot path of a channel.
 *
 * The same ring as sealserve/ipc/_ring.py (the producer's bookkeeping) and the same reads and
 * writes as sealserve/ipc/_subscriber.py (the consumer's), in C: a message costs tens of
 * nanoseconds of bookkeeping here instead of microseconds of interpreter.  The pure-Python
 * modules stay the reference and the fallback; one conformance suite runs on both.
 *
 * Shared words are read and written with __atomic builtins (acquire loads, release stores,
 * sequentially consistent fences), so this file is correct on x86-64 and aarch64 alike.
 * Every value read from shared memory is untrusted: the consumer validates descriptors before
 * using them (with overflow-safe bounds checks) and the producer only compares what
 * subscribers write.  Each object keeps a buffer export of the segment's mapping, so the memory
 * cannot be unmapped under it; close() gives the export back, after which every method raises.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* -- layout (sealserve/ipc/_layout.py; a unit test checks these against it) ---------------- */
#define W_HEAD 16
#define W_TAIL 17
#define W_SPACE_WANT 20
#define W_WAKE_STAMP 21
#define W_DATA_EPOCH 22
#define W_PCPU 23
#define W_SPACE_EPOCH 24
#define W_SPACE_STAMP 25
#define W_CONSUMERS 32
#define C_STATE 0
#define C_PID 1
#define C_START 2
#define C_WAITING 3
#define C_CPU 4
#define D_MARKS 5
#define D_MARKS_BYTE 40
#define D_MASK 4
#define D_PROGRESS 3
#define D_TAG 0
#define CONSUMER_FREE 0
#define CONSUMER_LIVE 1
#define CONSUMER_LEFT 2
#define CONSUMER_DEAD 3
#define MARK_SHIFT 48
#define FLAG_ABORTED (1ULL << 33)
#define ARENA_ALIGN 64
#define MAX_SUBSCRIBERS 16
#define RECLAIM_BATCH 4
#define EAGER_BYTES (64 << 10)

/* Notification outcomes, index policy * 3 + outcome (sealserve/ipc/_stats.py). */
#define OUT_WOKEN 0
#define OUT_COALESCED 1
#define OUT_NONE 2

static inline uint64_t ld(volatile uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void st(volatile uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static inline int64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline int64_t perf_ns(void) { return monotonic_ns(); }

static long futex_wake_raw(volatile uint64_t *word, int count) {
    /* The futex is the low 32 bits of a little-endian 64-bit word. */
    return syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, count, NULL, NULL, 0);
}

static int current_cpu_raw(void) {
    int cpu = sched_getcpu();
    return cpu < 0 ? -1 : cpu;
}

/* A buffer export of the segment's mapping: keeps it mapped while we hold raw pointers. */
static int take_mapping(PyObject *segment, Py_buffer *view, char **base) {
    PyObject *bytes = PyObject_GetAttrString(segment, "bytes");
    if (bytes == NULL) return -1;
    int rc = PyObject_GetBuffer(bytes, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS);
    Py_DECREF(bytes);
    if (rc < 0) return -1;
    *base = (char *)view->buf;
    return 0;
}

static int geometry_int(PyObject *geometry, const char *name, int64_t *out) {
    PyObject *v = PyObject_GetAttrString(geometry, name);
    if (v == NULL) return -1;
    long long x = PyLong_AsLongLong(v);
    Py_DECREF(v);
    if (x == -1 && PyErr_Occurred()) return -1;
    *out = (int64_t)x;
    return 0;
}


/* -- calling the Python half of a class ------------------------------------------------------ */

/* The attribute `name` of the first class after `base` in type(self)'s MRO (borrowed), bound
 * to self if it is a descriptor (a new reference).  The compiled Loan and Sample implement the
 * hot methods; the pure-Python base classes after them in the MRO implement everything, so
 * the rare paths (errors, early publication, pipelined waits) run the reference code. */
static PyObject *python_half(PyObject *self, PyTypeObject *base, const char *name) {
    PyObject *mro = Py_TYPE(self)->tp_mro;
    Py_ssize_t n = PyTuple_GET_SIZE(mro), i = 0;
    while (i < n && PyTuple_GET_ITEM(mro, i) != (PyObject *)base) i++;
    for (i++; i < n; i++) {
        PyObject *dict = ((PyTypeObject *)PyTuple_GET_ITEM(mro, i))->tp_dict;
        PyObject *attr = dict ? PyDict_GetItemString(dict, name) : NULL;
        if (attr == NULL) continue;
        descrgetfunc get = Py_TYPE(attr)->tp_descr_get;
        if (get != NULL) return get(attr, self, (PyObject *)Py_TYPE(self));
        Py_INCREF(attr);
        return attr;
    }
    PyErr_Format(PyExc_AttributeError, "no Python implementation of %s", name);
    return NULL;
}

static PyObject *call_python_half(PyObject *self, PyTypeObject *base, const char *name,
                                  PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *bound = python_half(self, base, name);
    if (bound == NULL) return NULL;
    PyObject *res = PyObject_Vectorcall(bound, args, nargs, kwnames);
    Py_DECREF(bound);
    return res;
}

static int bump(PyObject *list, Py_ssize_t i, long long by) {
    PyObject *old = PyList_GET_ITEM(list, i);
    long long v = PyLong_AsLongLong(old);
    if (v == -1 && PyErr_Occurred()) return -1;
    PyObject *nv = PyLong_FromLongLong(v + by);
    if (nv == NULL) return -1;
    PyList_SET_ITEM(list, i, nv);
    Py_DECREF(old);
    return 0;
}

static PyObject *s_release;

static int release_view(PyObject **slot) {
    PyObject *view = *slot;
    if (view == NULL || view == Py_None) return 0;
    *slot = NULL;
    PyObject *res = PyObject_CallMethodNoArgs(view, s_release);
    Py_DECREF(view);
    if (res == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_BufferError)) return -1;
        PyErr_Clear(); /* an export is alive; it keeps the mapping */
    }
    Py_XDECREF(res);
    return 0;
}

/* ========================================================================================== */
/* Rec: one descriptor's current message (as sealserve.ipc._ring.Rec).                        */

typedef struct {
    PyObject_HEAD
    long long desc;
    long long mark;
    long long offset;
    long long nbytes;
    long long footprint;
    long long seq;
    long long mask;
    long long length;
    long long flags;
    long long progress;
    char ready;
    char done;
    uint64_t rel[4]; /* mask_lo, marks_lo, mask_hi, marks_hi: the mark words once released */
} RecObject;

static PyMemberDef Rec_members[] = {
    {"desc", T_LONGLONG, offsetof(RecObject, desc), READONLY, NULL},
    {"mark", T_LONGLONG, offsetof(RecObject, mark), 0, NULL},
    {"offset", T_LONGLONG, offsetof(RecObject, offset), 0, NULL},
    {"nbytes", T_LONGLONG, offsetof(RecObject, nbytes), 0, NULL},
    {"footprint", T_LONGLONG, offsetof(RecObject, footprint), 0, NULL},
    {"seq", T_LONGLONG, offsetof(RecObject, seq), 0, NULL},
    {"mask", T_LONGLONG, offsetof(RecObject, mask), 0, NULL},
    {"length", T_LONGLONG, offsetof(RecObject, length), 0, NULL},
    {"flags", T_LONGLONG, offsetof(RecObject, flags), 0, NULL},
    {"progress", T_LONGLONG, offsetof(RecObject, progress), 0, NULL},
    {"ready", T_BOOL, offsetof(RecObject, ready), 0, NULL},
    {"done", T_BOOL, offsetof(RecObject, done), 0, NULL},
    {NULL}};

static PyObject *Rec_get_release(RecObject *self, void *closure) {
    return Py_BuildValue("(KKKK)", (unsigned long long)self->rel[0], (unsigned long long)self->rel[1],
                         (unsigned long long)self->rel[2], (unsigned long long)self->rel[3]);
}

static PyGetSetDef Rec_getset[] = {{"release", (getter)Rec_get_release, NULL, NULL, NULL}, {NULL}};

static PyObject *Rec_repr(RecObject *self) {
    return PyUnicode_FromFormat("Rec(seq=%lld, desc=%lld, offset=%lld, nbytes=%lld)", self->seq,
                                self->desc, self->offset, self->nbytes);
}

static PyTypeObject RecType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sealserve.ipc._ringcore.Rec",
    .tp_basicsize = sizeof(RecObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One descriptor's current message: its arena allocation and publication state.",
    .tp_members = Rec_members,
    .tp_getset = Rec_getset,
    .tp_repr = (reprfunc)Rec_repr,
};

/* ========================================================================================== */
/* ProducerRing                                                                               */

typedef struct {
    PyObject_HEAD
    PyObject *segment;
    Py_buffer view;
    int has_view;
    char *base;
    volatile uint64_t *w;
    int64_t capacity;
    int64_t cmask;
    int max_subscribers;
    int64_t desc_off;   /* bytes */
    int64_t queue_word; /* word index */
    int64_t mark_word;  /* word index of descriptor 0's marks */
    int64_t arena_size;
    int64_t window;     /* allocations walk forward within this many bytes, then wrap */
    int64_t trim_above; /* -1: never */
    int64_t next_seq, head, tail;
    RecObject **recs;
    int32_t *free_stack;
    int64_t nfree;
    int32_t *infl; /* circular: descriptors in flight, in sequence order */
    int64_t infl_head, infl_len;
    int32_t *pend; /* circular: submitted, not yet published */
    int64_t pend_head, pend_len;
    int64_t *starts, *ends; /* live allocations, sorted by offset */
    int64_t nalloc;
    int64_t cursor;
    int64_t in_use;
    long long wakeups;
    long long notified[6];
    uint32_t epoch;
    int live[MAX_SUBSCRIBERS];
    int nlive;
    long long live_mask;
    int64_t waiting_words[MAX_SUBSCRIBERS];
    uint64_t rel_cache[256][4];
    uint8_t rel_valid[256];
    /* bound by the publisher (bind()) for loans made in C: no reference to the publisher */
    PyObject *lock_acquire; /* the publisher's lock's bound acquire and release */
    PyObject *lock_release;
    PyObject *counters;   /* [messages, bytes] of the loan path */
    PyObject *arena;      /* writable memoryview of the arena */
    PyTypeObject *loan_type;
} RingObject;

#define INFL(r, i) ((r)->infl[((r)->infl_head + (i)) & (r)->cmask])
#define PEND(r, i) ((r)->pend[((r)->pend_head + (i)) & (r)->cmask])

static int ring_check(RingObject *r) {
    if (r->base == NULL) {
        PyErr_SetString(PyExc_ValueError, "the ring is closed; its segment may be unmapped");
        return -1;
    }
    return 0;
}

static inline int64_t consumer_word(int slot) { return W_CONSUMERS + 8 * slot; }

static void ring_live_changed(RingObject *r) {
    for (int i = 0; i < r->nlive; i++) r->waiting_words[i] = consumer_word(r->live[i]) + C_WAITING;
    memset(r->rel_valid, 0, sizeof r->rel_valid);
}

static void ring_add_live(RingObject *r, int slot) {
    r->live[r->nlive++] = slot;
    r->live_mask |= 1LL << slot;
    ring_live_changed(r);
}

static void ring_unbind(RingObject *r) {
    Py_CLEAR(r->lock_acquire);
    Py_CLEAR(r->lock_release);
    Py_CLEAR(r->counters);
    Py_CLEAR(r->arena);
    Py_CLEAR(r->loan_type);
}

static void ring_dealloc(RingObject *r) {
    ring_unbind(r);
    if (r->has_view) PyBuffer_Release(&r->view);
    if (r->recs != NULL) {
        for (int64_t i = 0; i < r->capacity; i++) Py_XDECREF(r->recs[i]);
        PyMem_Free(r->recs);
    }
    PyMem_Free(r->free_stack);
    PyMem_Free(r->infl);
    PyMem_Free(r->pend);
    PyMem_Free(r->starts);
    PyMem_Free(r->ends);
    Py_XDECREF(r->segment);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static int ring_init(RingObject *r, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"segment", "trim_above", "window_bytes", NULL};
    PyObject *segment, *trim = Py_None, *window = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$OO", kwlist, &segment, &trim, &window))
        return -1;
    if (r->segment != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ProducerRing is already initialised");
        return -1;
    }
    PyObject *g = PyObject_GetAttrString(segment, "geometry");
    if (g == NULL) return -1;
    int64_t cap, maxs, doff, qoff, asize;
    int bad = geometry_int(g, "capacity", &cap) || geometry_int(g, "max_subscribers", &maxs) ||
              geometry_int(g, "desc_offset", &doff) || geometry_int(g, "queue_offset", &qoff) ||
              geometry_int(g, "arena_size", &asize);
    Py_DECREF(g);
    if (bad) return -1;
    if (cap < 2 || (cap & (cap - 1)) || maxs < 1 || maxs > MAX_SUBSCRIBERS) {
        PyErr_SetString(PyExc_ValueError, "segment geometry out of range");
        return -1;
    }
    r->trim_above = -1;
    if (trim != Py_None) {
        long long t = PyLong_AsLongLong(trim);
        if (t == -1 && PyErr_Occurred()) return -1;
        r->trim_above = t;
    }
    r->window = asize;
    if (window != Py_None) {
        long long wb = PyLong_AsLongLong(window);
        if (wb == -1 && PyErr_Occurred()) return -1;
        if (wb < 1) {
            PyErr_Format(PyExc_ValueError, "window_bytes must be >= 1, got %lld", wb);
            return -1;
        }
        r->window = wb;
    }
    if (take_mapping(segment, &r->view, &r->base) < 0) return -1;
    r->has_view = 1;
    Py_INCREF(segment);
    r->segment = segment;
    r->w = (volatile uint64_t *)r->base;
    r->capacity = cap;
    r->cmask = cap - 1;
    r->max_subscribers = (int)maxs;
    r->desc_off = doff;
    r->queue_word = qoff >> 3;
    r->mark_word = (doff >> 3) + D_MARKS;
    r->arena_size = asize;
    r->recs = PyMem_Calloc((size_t)cap, sizeof(RecObject *));
    r->free_stack = PyMem_Calloc((size_t)cap, sizeof(int32_t));
    r->infl = PyMem_Calloc((size_t)cap, sizeof(int32_t));
    r->pend = PyMem_Calloc((size_t)cap, sizeof(int32_t));
    r->starts = PyMem_Calloc((size_t)cap + 1, sizeof(int64_t));
    r->ends = PyMem_Calloc((size_t)cap + 1, sizeof(int64_t));
    if (!r->recs || !r->free_stack || !r->infl || !r->pend || !r->starts || !r->ends) {
        PyErr_NoMemory();
        return -1;
    }
    for (int64_t i = 0; i < cap; i++) {
        RecObject *rec = PyObject_New(RecObject, &RecType);
        if (rec == NULL) return -1;
        rec->desc = i;
        rec->mark = 0x80;
        rec->offset = rec->nbytes = rec->footprint = 0;
        rec->seq = -1;
        rec->mask = rec->length = rec->flags = rec->progress = 0;
        rec->ready = rec->done = 0;
        memset(rec->rel, 0, sizeof rec->rel);
        r->recs[i] = rec;
        /* a stack: the most recently freed (hottest) descriptor goes first; 0 on top */
        r->free_stack[i] = (int32_t)(cap - 1 - i);
    }
    r->nfree = cap;
    r->next_seq = r->head = r->tail = (int64_t)ld(&r->w[W_HEAD]);
    r->epoch = (uint32_t)(ld(&r->w[W_DATA_EPOCH]) & 0xFFFFFFFFu);
    for (int slot = 0; slot < r->max_subscribers; slot++)
        if (ld(&r->w[consumer_word(slot) + C_STATE]) == CONSUMER_LIVE) ring_add_live(r, slot);
    return 0;
}

/* -- subscribers ------------------------------------------------------------------------- */

static PyObject *ring_attach(RingObject *r, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"pid", NULL};
    long long pid = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$L", kwlist, &pid)) return NULL;
    if (ring_check(r) < 0) return NULL;
    int slot = -1;
    for (int s = 0; s < r->max_subscribers; s++) {
        if (ld(&r->w[consumer_word(s) + C_STATE]) == CONSUMER_FREE) {
            slot = s;
            break;
        }
    }
    if (slot < 0) Py_RETURN_NONE;
    /* Clear the slot's mark byte everywhere except in descriptors still in flight whose mask
     * names the slot: there the earlier occupant's marks let them be reclaimed. */
    uint8_t *keep = PyMem_Calloc((size_t)r->capacity, 1);
    if (keep == NULL) return PyErr_NoMemory();
    for (int64_t i = 0; i < r->infl_len; i++) {
        RecObject *rec = r->recs[INFL(r, i)];
        if ((rec->mask >> slot) & 1) keep[rec->desc] = 1;
    }
    volatile uint8_t *b = (volatile uint8_t *)r->base;
    int64_t at = r->desc_off + D_MARKS_BYTE + slot;
    for (int64_t i = 0; i < r->capacity; i++)
        if (!keep[i]) __atomic_store_n(&b[at + 64 * i], 0, __ATOMIC_RELAXED);
    PyMem_Free(keep);
    int64_t cw = consumer_word(slot);
    st(&r->w[cw + C_START], (uint64_t)r->head);
    st(&r->w[cw + C_WAITING], 0);
    st(&r->w[cw + C_PID], (uint64_t)pid);
    st(&r->w[cw + C_STATE], CONSUMER_LIVE);
    ring_add_live(r, slot);
    return PyLong_FromLong(slot);
}

static PyObject *ring_drop(RingObject *r, PyObject *arg) {
    long slot = PyLong_AsLong(arg);
    if (slot == -1 && PyErr_Occurred()) return NULL;
    if (ring_check(r) < 0) return NULL;
    if (slot < 0 || slot >= MAX_SUBSCRIBERS || !((r->live_mask >> slot) & 1)) return PyLong_FromLong(0);
    volatile uint8_t *b = (volatile uint8_t *)r->base;
    long released = 0;
    for (int64_t i = 0; i < r->infl_len; i++) {
        RecObject *rec = r->recs[INFL(r, i)];
        if ((rec->mask >> slot) & 1) {
            int64_t at = r->desc_off + rec->desc * 64 + D_MARKS_BYTE + slot;
            if (__atomic_load_n(&b[at], __ATOMIC_ACQUIRE) != (uint8_t)rec->mark) {
                __atomic_store_n(&b[at], (uint8_t)rec->mark, __ATOMIC_RELEASE);
                released++;
            }
        }
    }
    int j = 0;
    for (int i = 0; i < r->nlive; i++)
        if (r->live[i] != slot) r->live[j++] = r->live[i];
    r->nlive = j;
    r->live_mask &= ~(1LL << slot);
    ring_live_changed(r);
    st(&r->w[consumer_word((int)slot) + C_STATE], CONSUMER_FREE);
    return PyLong_FromLong(released);
}

static PyObject *ring_departed_slots(RingObject *r, PyObject *unused) {
    if (ring_check(r) < 0) return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (int i = 0; i < r->nlive; i++) {
        int slot = r->live[i];
        uint64_t state = ld(&r->w[consumer_word(slot) + C_STATE]);
        const char *why = state == CONSUMER_LEFT ? "left" : state == CONSUMER_DEAD ? "died" : NULL;
        if (why == NULL) continue;
        PyObject *item = Py_BuildValue("(is)", slot, why);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

/* -- arena ------------------------------------------------------------------------------- */

static int64_t bisect_left(const int64_t *a, int64_t n, int64_t x) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = (lo + hi) >> 1;
        if (a[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static void alloc_insert(RingObject *r, int64_t i, int64_t start, int64_t end) {
    memmove(&r->starts[i + 1], &r->starts[i], (size_t)(r->nalloc - i) * sizeof(int64_t));
    memmove(&r->ends[i + 1], &r->ends[i], (size_t)(r->nalloc - i) * sizeof(int64_t));
    r->starts[i] = start;
    r->ends[i] = end;
    r->nalloc++;
}

static void alloc_delete(RingObject *r, int64_t i) {
    memmove(&r->starts[i], &r->starts[i + 1], (size_t)(r->nalloc - i - 1) * sizeof(int64_t));
    memmove(&r->ends[i], &r->ends[i + 1], (size_t)(r->nalloc - i - 1) * sizeof(int64_t));
    r->nalloc--;
}

/* Arena offset for need bytes (recorded as live), or -1: right after the latest allocation
 * while that stays within the window, else the start when free, else right after the latest
 * allocation anyway, else the first gap that fits (as _ring.ProducerRing._place). */
static int64_t ring_place(RingObject *r, int64_t need) {
    if (need == 0) return 0;
    int64_t at = r->cursor;
    int64_t i = bisect_left(r->starts, r->nalloc, at);
    int after_prev = i == 0 || r->ends[i - 1] <= at;
    if (!(at + need <= r->window && at + need <= r->arena_size && after_prev &&
          (i == r->nalloc || r->starts[i] >= at + need))) {
        if (r->nalloc == 0 || r->starts[0] >= need) {
            at = i = 0;
        } else {
            int64_t limit = i < r->nalloc ? r->starts[i] : r->arena_size;
            if (!(after_prev && limit - at >= need)) {
                at = -1;
                for (int64_t k = 1; k < r->nalloc; k++) {
                    if (r->starts[k] - r->ends[k - 1] >= need) {
                        at = r->ends[k - 1];
                        i = k;
                        break;
                    }
                }
                if (at < 0 && r->arena_size - r->ends[r->nalloc - 1] >= need) {
                    at = r->ends[r->nalloc - 1];
                    i = r->nalloc;
                }
                if (at < 0) return -1;
            }
        }
    }
    alloc_insert(r, i, at, at + need);
    r->cursor = at + need;
    r->in_use += need;
    return at;
}

static void ring_give_back(RingObject *r, RecObject *rec) {
    int64_t need = rec->footprint;
    if (need) {
        int64_t i = r->starts[0] == rec->offset ? 0 : bisect_left(r->starts, r->nalloc, rec->offset);
        alloc_delete(r, i);
        r->in_use -= need;
    }
    r->free_stack[r->nfree++] = (int32_t)rec->desc;
}

static int ring_trim(RingObject *r, RecObject *rec) {
    if (r->trim_above < 0 || rec->nbytes < r->trim_above) return 0;
    PyObject *res = PyObject_CallMethod(r->segment, "trim", "LL", rec->offset, rec->nbytes);
    if (res == NULL) return -1;
    Py_DECREF(res);
    return 0;
}

static inline int rec_released(RingObject *r, RecObject *rec) {
    int64_t mw = r->mark_word + rec->desc * 8;
    if ((ld(&r->w[mw]) & rec->rel[0]) != rec->rel[1]) return 0;
    if (rec->rel[2] && (ld(&r->w[mw + 1]) & rec->rel[2]) != rec->rel[3]) return 0;
    return rec->done;
}

/* Retire released messages; returns the oldest still held (borrowed) or NULL (none) and sets
 * *err on a Python error. */
static RecObject *ring_reclaim_c(RingObject *r, int everything, int *err) {
    int freed = 0;
    *err = 0;
    while (r->infl_len) {
        RecObject *rec = r->recs[INFL(r, 0)];
        if (!rec_released(r, rec)) break;
        r->infl_head = (r->infl_head + 1) & r->cmask;
        r->infl_len--;
        freed = 1;
        if (ring_trim(r, rec) < 0) *err = 1;
        ring_give_back(r, rec);
    }
    if (everything && r->infl_len > 1) {
        int64_t kept = 0, n = r->infl_len;
        for (int64_t i = 0; i < n; i++) {
            int32_t d = INFL(r, i);
            RecObject *rec = r->recs[d];
            if (!rec_released(r, rec)) {
                INFL(r, kept) = d; /* compacts in place: kept <= i */
                kept++;
            } else {
                if (ring_trim(r, rec) < 0) *err = 1;
                ring_give_back(r, rec);
            }
        }
        if (kept < n) freed = 1;
        r->infl_len = kept;
    }
    if (freed) {
        r->tail = r->infl_len ? r->recs[INFL(r, 0)]->seq : r->head;
        st(&r->w[W_TAIL], (uint64_t)r->tail);
    }
    return r->infl_len ? r->recs[INFL(r, 0)] : NULL;
}

static PyObject *ring_reclaim(RingObject *r, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"everything", NULL};
    int everything = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$p", kwlist, &everything)) return NULL;
    if (ring_check(r) < 0) return NULL;
    int err;
    RecObject *held = ring_reclaim_c(r, everything, &err);
    if (err) return NULL;
    if (held == NULL) Py_RETURN_NONE;
    Py_INCREF(held);
    return (PyObject *)held;
}

static RecObject *ring_allocate_c(RingObject *r, int64_t nbytes, int *err) {
    *err = 0;
    if (r->infl_len && nbytes >= EAGER_BYTES) {
        ring_reclaim_c(r, 0, err); /* large: make room at the start (hot lines) if it is there */
        if (*err) return NULL;
    }
    int64_t need = (nbytes + ARENA_ALIGN - 1) & ~(int64_t)(ARENA_ALIGN - 1);
    int64_t offset = r->nfree ? ring_place(r, need) : -1;
    if (offset < 0) {
        if (!r->infl_len) return NULL;
        ring_reclaim_c(r, 1, err);
        if (*err) return NULL;
        offset = r->nfree ? ring_place(r, need) : -1;
        if (offset < 0) return NULL;
    }
    RecObject *rec = r->recs[r->free_stack[--r->nfree]];
    rec->mark = ((rec->mark + 1) & 0x7F) | 0x80; /* a new generation: stale marks never match */
    rec->offset = offset;
    rec->nbytes = nbytes;
    rec->footprint = need;
    rec->seq = -1;
    return rec;
}

static PyObject *ring_allocate(RingObject *r, PyObject *arg) {
    long long nbytes = PyLong_AsLongLong(arg);
    if (nbytes == -1 && PyErr_Occurred()) return NULL;
    if (ring_check(r) < 0) return NULL;
    if (nbytes < 0) {
        PyErr_Format(PyExc_ValueError, "nbytes must be >= 0, got %lld", nbytes);
        return NULL;
    }
    int err;
    RecObject *rec = ring_allocate_c(r, nbytes, &err);
    if (err) return NULL;
    if (rec == NULL) Py_RETURN_NONE;
    Py_INCREF(rec);
    return (PyObject *)rec;
}

static RecObject *as_rec(RingObject *r, PyObject *obj) {
    if (!PyObject_TypeCheck(obj, &RecType)) {
        PyErr_SetString(PyExc_TypeError, "expected a Rec of this ring");
        return NULL;
    }
    RecObject *rec = (RecObject *)obj;
    if (rec->desc < 0 || rec->desc >= r->capacity || r->recs[rec->desc] != rec) {
        PyErr_SetString(PyExc_ValueError, "that Rec belongs to another ring");
        return NULL;
    }
    return rec;
}

static PyObject *ring_free_unpublished(RingObject *r, PyObject *arg) {
    RecObject *rec = as_rec(r, arg);
    if (rec == NULL || ring_check(r) < 0) return NULL;
    ring_give_back(r, rec);
    Py_RETURN_NONE;
}

/* -- publication and notification ----------------------------------------------------------- */

static void ring_wake_all_c(RingObject *r) {
    st(&r->w[W_PCPU], (uint64_t)(current_cpu_raw() + 1));
    st(&r->w[W_WAKE_STAMP], (uint64_t)monotonic_ns());
    r->epoch = r->epoch + 1;
    st(&r->w[W_DATA_EPOCH], (uint64_t)r->epoch);
    futex_wake_raw(&r->w[W_DATA_EPOCH], INT32_MAX);
    r->wakeups++;
}

/* Wake sleeping subscribers if any (a flag is the epoch its reader slept on, plus one). */
static int ring_notify_c(RingObject *r, int batch) {
    fence();
    int outcome = OUT_NONE;
    for (int i = 0; i < r->nlive; i++) {
        uint64_t flag = ld(&r->w[r->waiting_words[i]]);
        if (flag) {
            if (!batch || flag == (uint64_t)r->epoch + 1) {
                ring_wake_all_c(r);
                r->notified[batch ? 3 : 0]++;
                return 1;
            }
            outcome = OUT_COALESCED;
        }
    }
    r->notified[(batch ? 3 : 0) + outcome]++;
    return 0;
}

static void ring_release_words(RingObject *r, RecObject *rec) {
    int mark = (int)rec->mark & 0xFF;
    if (!r->rel_valid[mark]) {
        uint64_t lo = 0, hi = 0;
        for (int slot = 0; slot < MAX_SUBSCRIBERS; slot++) {
            if ((r->live_mask >> slot) & 1) {
                if (slot < 8) lo |= 1ULL << (8 * slot);
                else hi |= 1ULL << (8 * (slot - 8));
            }
        }
        r->rel_cache[mark][0] = lo * 0xFF;
        r->rel_cache[mark][1] = lo * (uint64_t)mark;
        r->rel_cache[mark][2] = hi * 0xFF;
        r->rel_cache[mark][3] = hi * (uint64_t)mark;
        r->rel_valid[mark] = 1;
    }
    memcpy(rec->rel, r->rel_cache[mark], sizeof rec->rel);
}

static void ring_publish_c(RingObject *r, RecObject *rec) {
    int64_t seq = rec->seq;
    rec->mask = r->live_mask;
    ring_release_words(r, rec);
    volatile uint64_t *d = (volatile uint64_t *)(r->base + r->desc_off + rec->desc * 64);
    st(&d[1], (uint64_t)rec->offset);
    st(&d[2], (uint64_t)rec->length);
    st(&d[3], (uint64_t)rec->progress);
    st(&d[4], (uint64_t)rec->mask | (uint64_t)rec->flags | ((uint64_t)rec->mark << MARK_SHIFT));
    st(&d[0], (uint64_t)(seq + 1));
    st(&r->w[r->queue_word + (seq & r->cmask)], (uint64_t)rec->desc);
    INFL(r, r->infl_len) = (int32_t)rec->desc;
    r->infl_len++;
    r->head = seq + 1;
}

static void ring_advance_c(RingObject *r, int batch) {
    int moved = 0;
    while (r->pend_len && r->recs[PEND(r, 0)]->ready) {
        RecObject *rec = r->recs[PEND(r, 0)];
        r->pend_head = (r->pend_head + 1) & r->cmask;
        r->pend_len--;
        ring_publish_c(r, rec);
        moved = 1;
    }
    if (moved) {
        st(&r->w[W_HEAD], (uint64_t)r->head);
        ring_notify_c(r, batch);
    }
}

/* Give rec its sequence number and publish what can be (as ProducerRing.submit); -1 on a
 * Python error (a trim callback failed). */
static int64_t ring_submit_c(RingObject *r, RecObject *rec, long long length, long long flags,
                             long long progress, int ready, int batch) {
    int64_t seq = rec->seq = r->next_seq;
    r->next_seq = seq + 1;
    rec->length = length;
    rec->flags = flags;
    rec->progress = progress;
    if (progress != length || !ready || r->pend_len) {
        rec->ready = (char)ready;
        rec->done = progress == length;
        if (!ready || r->pend_len) {
            PEND(r, r->pend_len) = (int32_t)rec->desc;
            r->pend_len++;
            ring_advance_c(r, batch);
            return seq;
        }
        ring_publish_c(r, rec);
        st(&r->w[W_HEAD], (uint64_t)r->head);
        ring_notify_c(r, batch);
        return seq;
    }
    rec->ready = rec->done = 1;
    ring_publish_c(r, rec);
    st(&r->w[W_HEAD], (uint64_t)r->head);
    ring_notify_c(r, batch);
    /* Bookkeeping after publication, off the message's critical path. */
    if (r->infl_len >= RECLAIM_BATCH) {
        int err;
        ring_reclaim_c(r, 0, &err);
        if (err) return -1;
    }
    return seq;
}

static PyObject *ring_submit(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 5 || nargs > 6) {
        PyErr_SetString(PyExc_TypeError, "submit(rec, length, flags, progress, ready, batch=False)");
        return NULL;
    }
    RecObject *rec = as_rec(r, args[0]);
    if (rec == NULL || ring_check(r) < 0) return NULL;
    long long length = PyLong_AsLongLong(args[1]);
    long long flags = PyLong_AsLongLong(args[2]);
    long long progress = PyLong_AsLongLong(args[3]);
    if (PyErr_Occurred()) return NULL;
    int ready = PyObject_IsTrue(args[4]);
    int batch = nargs > 5 ? PyObject_IsTrue(args[5]) : 0;
    if (ready < 0 || batch < 0) return NULL;
    int64_t seq = ring_submit_c(r, rec, length, flags, progress, ready, batch);
    if (seq < 0) return NULL;
    return PyLong_FromLongLong(seq);
}

static PyObject *ring_mark_ready(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "mark_ready(rec, batch=False)");
        return NULL;
    }
    RecObject *rec = as_rec(r, args[0]);
    if (rec == NULL || ring_check(r) < 0) return NULL;
    int batch = nargs > 1 ? PyObject_IsTrue(args[1]) : 0;
    if (batch < 0) return NULL;
    rec->ready = 1;
    ring_advance_c(r, batch);
    Py_RETURN_NONE;
}

static PyObject *ring_finish(RingObject *r, PyObject *arg) {
    RecObject *rec = as_rec(r, arg);
    if (rec == NULL || ring_check(r) < 0) return NULL;
    rec->done = 1;
    fence();
    if (ld(&r->w[W_SPACE_WANT])) {
        st(&r->w[W_SPACE_EPOCH], (ld(&r->w[W_SPACE_EPOCH]) + 1) & 0xFFFFFFFFu);
        futex_wake_raw(&r->w[W_SPACE_EPOCH], INT32_MAX);
    }
    Py_RETURN_NONE;
}

static PyObject *ring_write_progress(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "write_progress(rec, batch=False)");
        return NULL;
    }
    RecObject *rec = as_rec(r, args[0]);
    if (rec == NULL || ring_check(r) < 0) return NULL;
    int batch = nargs > 1 ? PyObject_IsTrue(args[1]) : 0;
    if (batch < 0) return NULL;
    if (rec->seq < 0 || rec->seq >= r->head) Py_RETURN_NONE;
    volatile uint64_t *d = (volatile uint64_t *)(r->base + r->desc_off + rec->desc * 64);
    if (rec->flags & (long long)FLAG_ABORTED)
        st(&d[D_MASK], (uint64_t)rec->mask | (uint64_t)rec->flags | ((uint64_t)rec->mark << MARK_SHIFT));
    st(&d[D_PROGRESS], (uint64_t)rec->progress);
    ring_notify_c(r, batch);
    Py_RETURN_NONE;
}

static PyObject *ring_notify(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (ring_check(r) < 0) return NULL;
    int batch = nargs > 0 ? PyObject_IsTrue(args[0]) : 0;
    if (batch < 0) return NULL;
    return PyBool_FromLong(ring_notify_c(r, batch));
}

static PyObject *ring_wake_flagged(RingObject *r, PyObject *unused) {
    if (ring_check(r) < 0) return NULL;
    fence();
    for (int i = 0; i < r->nlive; i++) {
        if (ld(&r->w[r->waiting_words[i]])) {
            ring_wake_all_c(r);
            Py_RETURN_TRUE;
        }
    }
    Py_RETURN_FALSE;
}

static PyObject *ring_wake_all(RingObject *r, PyObject *unused) {
    if (ring_check(r) < 0) return NULL;
    ring_wake_all_c(r);
    Py_RETURN_NONE;
}

static PyObject *ring_unpublished(RingObject *r, PyObject *unused) { return PyLong_FromLongLong(r->pend_len); }

static PyObject *ring_allocations(RingObject *r, PyObject *unused) {
    PyObject *out = PyList_New(r->nalloc);
    if (out == NULL) return NULL;
    for (int64_t i = 0; i < r->nalloc; i++) {
        PyObject *item = Py_BuildValue("(LL)", (long long)r->starts[i], (long long)r->ends[i]);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

static PyObject *ring_close(RingObject *r, PyObject *unused) {
    ring_unbind(r);
    if (r->has_view) {
        PyBuffer_Release(&r->view);
        r->has_view = 0;
    }
    r->base = NULL;
    r->w = NULL;
    Py_RETURN_NONE;
}

/* -- attributes ------------------------------------------------------------------------------ */

static PyObject *ring_get_in_flight(RingObject *r, void *c) { return PyLong_FromLongLong(r->infl_len + r->pend_len); }
static PyObject *ring_get_desc_in_use(RingObject *r, void *c) { return PyLong_FromLongLong(r->capacity - r->nfree); }
static PyObject *ring_get_arena_in_use(RingObject *r, void *c) { return PyLong_FromLongLong(r->in_use); }

static PyObject *ring_get_notified(RingObject *r, void *c) {
    PyObject *out = PyList_New(6);
    if (out == NULL) return NULL;
    for (int i = 0; i < 6; i++) {
        PyObject *v = PyLong_FromLongLong(r->notified[i]);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

static PyObject *ring_get_live(RingObject *r, void *c) {
    PyObject *out = PyList_New(r->nlive);
    if (out == NULL) return NULL;
    for (int i = 0; i < r->nlive; i++) PyList_SET_ITEM(out, i, PyLong_FromLong(r->live[i]));
    return out;
}

static PyObject *ring_get_cpu_words(RingObject *r, void *c) {
    PyObject *out = PyTuple_New(r->nlive);
    if (out == NULL) return NULL;
    for (int i = 0; i < r->nlive; i++)
        PyTuple_SET_ITEM(out, i, PyLong_FromLongLong(consumer_word(r->live[i]) + C_CPU));
    return out;
}

static PyGetSetDef ring_getset[] = {
    {"in_flight", (getter)ring_get_in_flight, NULL, "Messages submitted and not yet reclaimed.", NULL},
    {"descriptors_in_use", (getter)ring_get_desc_in_use, NULL, "Descriptors taken.", NULL},
    {"arena_in_use", (getter)ring_get_arena_in_use, NULL, "Arena bytes allocated.", NULL},
    {"notified", (getter)ring_get_notified, NULL, "Notification outcomes by policy.", NULL},
    {"live", (getter)ring_get_live, NULL, "Live subscriber slots.", NULL},
    {"cpu_words", (getter)ring_get_cpu_words, NULL, "Where live subscribers write their CPU.", NULL},
    {NULL}};

static PyMemberDef ring_members[] = {
    {"capacity", T_LONGLONG, offsetof(RingObject, capacity), READONLY, NULL},
    {"max_subscribers", T_INT, offsetof(RingObject, max_subscribers), READONLY, NULL},
    {"arena_size", T_LONGLONG, offsetof(RingObject, arena_size), READONLY, NULL},
    {"window_bytes", T_LONGLONG, offsetof(RingObject, window), READONLY, NULL},
    {"next_seq", T_LONGLONG, offsetof(RingObject, next_seq), READONLY, NULL},
    {"head", T_LONGLONG, offsetof(RingObject, head), READONLY, NULL},
    {"tail", T_LONGLONG, offsetof(RingObject, tail), READONLY, NULL},
    {"wakeups", T_LONGLONG, offsetof(RingObject, wakeups), READONLY, NULL},
    {"live_mask", T_LONGLONG, offsetof(RingObject, live_mask), READONLY, NULL},
    {NULL}};

static PyObject *ring_bind(RingObject *r, PyObject *const *args, Py_ssize_t nargs);

static PyObject *ring_unbind_method(RingObject *r, PyObject *unused) {
    ring_unbind(r);
    Py_RETURN_NONE;
}
static PyObject *ring_lend(RingObject *r, PyObject *const *args, Py_ssize_t nargs);
static PyObject *ring_adopt(RingObject *r, PyObject *const *args, Py_ssize_t nargs);

static PyMethodDef ring_methods[] = {
    {"attach", (PyCFunction)(void (*)(void))ring_attach, METH_VARARGS | METH_KEYWORDS, NULL},
    {"drop", (PyCFunction)ring_drop, METH_O, NULL},
    {"departed_slots", (PyCFunction)ring_departed_slots, METH_NOARGS, NULL},
    {"allocate", (PyCFunction)ring_allocate, METH_O, NULL},
    {"free_unpublished", (PyCFunction)ring_free_unpublished, METH_O, NULL},
    {"submit", (PyCFunction)(void (*)(void))ring_submit, METH_FASTCALL, NULL},
    {"mark_ready", (PyCFunction)(void (*)(void))ring_mark_ready, METH_FASTCALL, NULL},
    {"finish", (PyCFunction)ring_finish, METH_O, NULL},
    {"write_progress", (PyCFunction)(void (*)(void))ring_write_progress, METH_FASTCALL, NULL},
    {"notify", (PyCFunction)(void (*)(void))ring_notify, METH_FASTCALL, NULL},
    {"wake_flagged", (PyCFunction)ring_wake_flagged, METH_NOARGS, NULL},
    {"wake_all", (PyCFunction)ring_wake_all, METH_NOARGS, NULL},
    {"unpublished", (PyCFunction)ring_unpublished, METH_NOARGS, NULL},
    {"reclaim", (PyCFunction)(void (*)(void))ring_reclaim, METH_VARARGS | METH_KEYWORDS, NULL},
    {"allocations", (PyCFunction)ring_allocations, METH_NOARGS, NULL},
    {"close", (PyCFunction)ring_close, METH_NOARGS, "Give the segment's mapping back."},
    {"bind", (PyCFunction)(void (*)(void))ring_bind, METH_FASTCALL, NULL},
    {"unbind", (PyCFunction)ring_unbind_method, METH_NOARGS,
     "Stop lending and committing in C (the publisher closed or failed)."},
    {"lend", (PyCFunction)(void (*)(void))ring_lend, METH_FASTCALL, NULL},
    {"adopt", (PyCFunction)(void (*)(void))ring_adopt, METH_FASTCALL, NULL},
    {NULL}};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sealserve.ipc._ringcore.ProducerRing",
    .tp_basicsize = sizeof(RingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Allocation, publication and reclamation of one channel's messages (compiled).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ring_init,
    .tp_dealloc = (destructor)ring_dealloc,
    .tp_methods = ring_methods,
    .tp_members = ring_members,
    .tp_getset = ring_getset,
};


/* ========================================================================================== */
/* LoanBase: the storage and hot methods of a loan (view, commit, the with block).           */

#define LOAN_OPEN 0
#define LOAN_PUBLISHED 1
#define LOAN_COMMITTED 2

typedef struct {
    PyObject_HEAD
    PyObject *pub;
    PyObject *rec;
    RingObject *ring;
    char batch;
    long long nbytes;
    int state;
    PyObject *view;
} LoanObject;

static PyTypeObject LoanType;

static void loan_dealloc(LoanObject *l) {
    Py_XDECREF(l->pub);
    Py_XDECREF(l->rec);
    Py_XDECREF(l->ring);
    Py_XDECREF(l->view);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

static PyObject *loan_get_view(LoanObject *l, void *closure) {
    if (l->state > LOAN_PUBLISHED || l->ring == NULL || l->ring->arena == NULL) {
        PyObject *prop = python_half((PyObject *)l, &LoanType, "view");
        return prop; /* the Python property raised, or returned the view */
    }
    if (l->view != NULL && l->view != Py_None) {
        Py_INCREF(l->view);
        return l->view;
    }
    long long off = ((RecObject *)l->rec)->offset;
    PyObject *view = PySequence_GetSlice(l->ring->arena, off, off + l->nbytes);
    if (view == NULL) return NULL;
    Py_XSETREF(l->view, view);
    Py_INCREF(view);
    return view;
}

static int loan_set_view(LoanObject *l, PyObject *value, void *closure) {
    Py_XINCREF(value);
    Py_XSETREF(l->view, value);
    return 0;
}

static PyObject *loan_commit(LoanObject *l, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    RingObject *r = l->ring;
    int fast = l->state == LOAN_OPEN && r != NULL && r->lock_acquire != NULL && r->base != NULL &&
               kwnames == NULL && (nargs == 0 || (nargs == 1 && args[0] == Py_None));
    if (!fast) return call_python_half((PyObject *)l, &LoanType, "commit", args, nargs, kwnames);
    /* Our own references: unbind() (the publisher closing or failing, under this lock) may
     * drop the ring's while we wait for the lock. */
    PyObject *acquire = r->lock_acquire, *release = r->lock_release;
    Py_INCREF(acquire);
    Py_INCREF(release);
    PyObject *got = PyObject_CallNoArgs(acquire);
    Py_DECREF(acquire);
    if (got == NULL) {
        Py_DECREF(release);
        return NULL;
    }
    Py_DECREF(got);
    /* Still bound once we hold the lock: the publisher is open and has not failed. */
    int usable = r->lock_acquire != NULL && r->base != NULL;
    int64_t seq = -1;
    if (usable) seq = ring_submit_c(r, (RecObject *)l->rec, l->nbytes, 0, l->nbytes, 1, l->batch);
    PyObject *etype, *evalue, *etb;
    PyErr_Fetch(&etype, &evalue, &etb);
    PyObject *rel = PyObject_CallNoArgs(release);
    Py_DECREF(release);
    if (etype != NULL) {
        Py_XDECREF(rel);
        PyErr_Restore(etype, evalue, etb);
        return NULL;
    }
    if (rel == NULL) return NULL;
    Py_DECREF(rel);
    if (!usable) /* closed or broken: the Python half raises the right error */
        return call_python_half((PyObject *)l, &LoanType, "commit", args, nargs, kwnames);
    if (seq < 0) return NULL;
    if (bump(r->counters, 0, 1) < 0 || bump(r->counters, 1, l->nbytes) < 0) return NULL;
    l->state = LOAN_COMMITTED;
    if (release_view(&l->view) < 0) return NULL; /* writes through it would land in a message */
    return PyLong_FromLongLong(seq);
}

static PyObject *loan_enter(PyObject *self, PyObject *unused) {
    Py_INCREF(self);
    return self;
}

static PyObject *loan_exit(LoanObject *l, PyObject *const *args, Py_ssize_t nargs) {
    if (l->state == LOAN_OPEN && nargs >= 1 && args[0] == Py_None) {
        PyObject *seq = loan_commit(l, NULL, 0, NULL);
        if (seq == NULL) return NULL;
        Py_DECREF(seq);
        Py_RETURN_NONE;
    }
    return call_python_half((PyObject *)l, &LoanType, "__exit__", args, nargs, NULL);
}

static PyMemberDef loan_members[] = {
    {"_pub", T_OBJECT, offsetof(LoanObject, pub), READONLY, NULL},
    {"_rec", T_OBJECT, offsetof(LoanObject, rec), READONLY, NULL},
    {"_batch", T_BOOL, offsetof(LoanObject, batch), READONLY, NULL},
    {"nbytes", T_LONGLONG, offsetof(LoanObject, nbytes), READONLY, NULL},
    {"_state", T_INT, offsetof(LoanObject, state), 0, NULL},
    {NULL}};

static PyObject *loan_get_private_view(LoanObject *l, void *closure) {
    PyObject *v = l->view ? l->view : Py_None;
    Py_INCREF(v);
    return v;
}

static PyGetSetDef loan_getset[] = {
    {"view", (getter)loan_get_view, NULL, "The writable shared memory of this loan.", NULL},
    {"_view", (getter)loan_get_private_view, (setter)loan_set_view, NULL, NULL},
    {NULL}};

static PyMethodDef loan_methods[] = {
    {"commit", (PyCFunction)(void (*)(void))loan_commit, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"__enter__", (PyCFunction)loan_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))loan_exit, METH_FASTCALL, NULL},
    {NULL}};

static PyTypeObject LoanType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sealserve.ipc._ringcore.LoanBase",
    .tp_basicsize = sizeof(LoanObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The storage and hot methods of a loan; sealserve.ipc.Loan has the rest.",
    .tp_dealloc = (destructor)loan_dealloc,
    .tp_methods = loan_methods,
    .tp_members = loan_members,
    .tp_getset = loan_getset,
};

/* bind(lock, counters, arena, loan_type): what loans made in C need from the publisher. */
static PyObject *ring_bind(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "bind(lock, counters, arena, loan_type)");
        return NULL;
    }
    if (!PyList_Check(args[1]) || PyList_GET_SIZE(args[1]) < 2) {
        PyErr_SetString(PyExc_TypeError, "counters must be a list [messages, bytes]");
        return NULL;
    }
    if (!PyType_Check(args[3]) || !PyType_IsSubtype((PyTypeObject *)args[3], &LoanType)) {
        PyErr_SetString(PyExc_TypeError, "loan_type must be a subclass of LoanBase");
        return NULL;
    }
    PyObject *acquire = PyObject_GetAttrString(args[0], "acquire");
    PyObject *release = acquire ? PyObject_GetAttrString(args[0], "release") : NULL;
    if (release == NULL) {
        Py_XDECREF(acquire);
        return NULL;
    }
    ring_unbind(r);
    r->lock_acquire = acquire;
    r->lock_release = release;
    Py_INCREF(args[1]);
    r->counters = args[1];
    Py_INCREF(args[2]);
    r->arena = args[2];
    Py_INCREF(args[3]);
    r->loan_type = (PyTypeObject *)args[3];
    Py_RETURN_NONE;
}

static PyObject *make_loan(RingObject *r, PyObject *pub, RecObject *rec, int batch) {
    LoanObject *l = (LoanObject *)r->loan_type->tp_alloc(r->loan_type, 0);
    if (l == NULL) return NULL;
    Py_INCREF(pub);
    l->pub = pub;
    Py_INCREF(rec);
    l->rec = (PyObject *)rec;
    Py_INCREF(r);
    l->ring = r;
    l->batch = (char)batch;
    l->nbytes = rec->nbytes;
    l->state = LOAN_OPEN;
    l->view = NULL;
    return (PyObject *)l;
}

/* adopt(pub, rec, batch) -> a loan of the bound type for a record allocated already. */
static PyObject *ring_adopt(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "adopt(pub, rec, batch)");
        return NULL;
    }
    RecObject *rec = as_rec(r, args[1]);
    if (rec == NULL || ring_check(r) < 0) return NULL;
    int batch = PyObject_IsTrue(args[2]);
    if (batch < 0) return NULL;
    if (r->loan_type == NULL || r->lock_acquire == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind() the ring before lending");
        return NULL;
    }
    return make_loan(r, args[0], rec, batch);
}

/* lend(pub, nbytes, batch) -> a loan of the bound type, or None when there is no room.  The
 * caller holds the publisher's lock (as for allocate). */
static PyObject *ring_lend(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "lend(pub, nbytes, batch)");
        return NULL;
    }
    if (ring_check(r) < 0) return NULL;
    if (r->loan_type == NULL || r->lock_acquire == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind() the ring before lending");
        return NULL;
    }
    long long nbytes = PyLong_AsLongLong(args[1]);
    if (nbytes == -1 && PyErr_Occurred()) return NULL;
    int batch = PyObject_IsTrue(args[2]);
    if (batch < 0) return NULL;
    if (nbytes < 0) {
        PyErr_Format(PyExc_ValueError, "nbytes must be >= 0, got %lld", nbytes);
        return NULL;
    }
    int err;
    RecObject *rec = ring_allocate_c(r, nbytes, &err);
    if (err) return NULL;
    if (rec == NULL) Py_RETURN_NONE;
    PyObject *l = make_loan(r, args[0], rec, batch);
    if (l == NULL) ring_give_back(r, rec);
    return l;
}

/* ========================================================================================== */
/* Reader: the consumer's reads of one segment (as sealserve.ipc._subscriber.Subscriber).    */

typedef struct {
    PyObject_HEAD
    PyObject *segment;
    Py_buffer view;
    int has_view;
    char *base;
    volatile uint64_t *w;
    int64_t capacity, cmask, queue_word, desc_off, asize;
    int slot;
    int64_t cw;
    int64_t mark_base;
    uint64_t bit;
    long long cursor;
    int spinning;          /* spins under way without the GIL: the mapping must stay */
    volatile int closing;  /* close() was called during a spin; the last spin lets go */
    /* bound by the subscriber (bind()) for samples made in C: no reference to it */
    PyObject *ro;          /* read-only memoryview of the arena */
    PyObject *received;    /* [messages, bytes] of the subscriber's counters */
    PyTypeObject *sample_type;
    long long held;        /* samples made here and not yet released */
    long long wakeups;     /* wake-ups of a producer waiting for room */
} ReaderObject;

typedef struct {
    PyObject_HEAD
    PyObject *sub;
    ReaderObject *reader;
    long long seq;
    long long desc;
    long long mark;
    long long offset;
    long long nbytes;
    char complete;
    char released;
} SampleObject;

static PyTypeObject SampleType;


/* What next() found (the first element of its tuple). */
#define NEXT_MESSAGE 0
#define NEXT_ABORTED 1
#define NEXT_BAD_QUEUE 2
#define NEXT_BAD_TAG 3
#define NEXT_OUTSIDE 4

static int reader_check(ReaderObject *r) {
    if (r->base == NULL) {
        PyErr_SetString(PyExc_ValueError, "the reader is closed; its segment may be unmapped");
        return -1;
    }
    return 0;
}

static void reader_unbind(ReaderObject *r) {
    Py_CLEAR(r->ro);
    Py_CLEAR(r->received);
    Py_CLEAR(r->sample_type);
}

static void reader_dealloc(ReaderObject *r) {
    reader_unbind(r);
    if (r->has_view) PyBuffer_Release(&r->view);
    Py_XDECREF(r->segment);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static int reader_init(ReaderObject *r, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"segment", "slot", "cursor", NULL};
    PyObject *segment;
    int slot;
    long long cursor;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O$iL", kwlist, &segment, &slot, &cursor)) return -1;
    if (r->segment != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Reader is already initialised");
        return -1;
    }
    if (slot < 0 || slot >= MAX_SUBSCRIBERS) {
        PyErr_Format(PyExc_ValueError, "slot must be within [0, %d), got %d", MAX_SUBSCRIBERS, slot);
        return -1;
    }
    PyObject *g = PyObject_GetAttrString(segment, "geometry");
    if (g == NULL) return -1;
    int64_t cap, doff, qoff, asize;
    int bad = geometry_int(g, "capacity", &cap) || geometry_int(g, "desc_offset", &doff) ||
              geometry_int(g, "queue_offset", &qoff) || geometry_int(g, "arena_size", &asize);
    Py_DECREF(g);
    if (bad) return -1;
    if (take_mapping(segment, &r->view, &r->base) < 0) return -1;
    r->has_view = 1;
    Py_INCREF(segment);
    r->segment = segment;
    r->w = (volatile uint64_t *)r->base;
    r->capacity = cap;
    r->cmask = cap - 1;
    r->queue_word = qoff >> 3;
    r->desc_off = doff;
    r->asize = asize;
    r->slot = slot;
    r->cw = consumer_word(slot);
    r->mark_base = doff + D_MARKS_BYTE + slot;
    r->bit = 1ULL << slot;
    r->cursor = cursor;
    return 0;
}

/* The next message for this subscriber, or None if none is published yet.  Returns a tuple
 * (kind, seq, desc, mark, offset, length, progress): kind NEXT_MESSAGE for a message to
 * deliver; NEXT_ABORTED for one whose copy failed (release it; the cursor moved on); or an
 * error kind: a corrupt queue entry or tag (the cursor stays), or a descriptor pointing
 * outside the arena (the cursor moved on), as the pure-Python subscriber does.  Messages
 * published before this subscriber attached are skipped here. */
static PyObject *make_sample(ReaderObject *r, PyObject *sub, int64_t seq, uint64_t desc, int mark,
                             uint64_t offset, uint64_t length, uint64_t progress) {
    SampleObject *smp = (SampleObject *)r->sample_type->tp_alloc(r->sample_type, 0);
    if (smp == NULL) return NULL;
    Py_INCREF(sub);
    smp->sub = sub;
    Py_INCREF(r);
    smp->reader = r;
    smp->seq = seq;
    smp->desc = (long long)desc;
    smp->mark = mark;
    smp->offset = (long long)offset;
    smp->nbytes = (long long)length;
    smp->complete = progress == length;
    smp->released = 0;
    r->held++;
    if (bump(r->received, 0, 1) < 0 || bump(r->received, 1, (long long)length) < 0) {
        Py_DECREF(smp);
        return NULL;
    }
    return (PyObject *)smp;
}

static PyObject *reader_next(ReaderObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (reader_check(r) < 0) return NULL;
    PyObject *sub = nargs > 0 ? args[0] : NULL;
    if (sub != NULL && r->sample_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind() the reader before taking samples");
        return NULL;
    }
    for (;;) {
        int64_t seq = r->cursor;
        if ((int64_t)ld(&r->w[W_HEAD]) <= seq) Py_RETURN_NONE;
        uint64_t desc = ld(&r->w[r->queue_word + (seq & r->cmask)]);
        if (desc >= (uint64_t)r->capacity)
            return Py_BuildValue("(iLKiLLL)", NEXT_BAD_QUEUE, (long long)seq, (unsigned long long)desc, 0, 0LL, 0LL, 0LL);
        volatile uint64_t *d = (volatile uint64_t *)(r->base + r->desc_off + desc * 64);
        uint64_t tag = ld(&d[0]);
        uint64_t offset = ld(&d[1]);
        uint64_t length = ld(&d[2]);
        uint64_t progress = ld(&d[3]);
        uint64_t mask = ld(&d[4]);
        if (tag != (uint64_t)seq + 1)
            return Py_BuildValue("(iLKiLLL)", NEXT_BAD_TAG, (long long)seq, (unsigned long long)tag, 0, 0LL, 0LL, 0LL);
        r->cursor = seq + 1;
        if (!(mask & r->bit)) continue; /* published before this subscriber attached */
        int mark = (int)((mask >> MARK_SHIFT) & 0xFF);
        if (mask & FLAG_ABORTED)
            return Py_BuildValue("(iLKiLLL)", NEXT_ABORTED, (long long)seq, (unsigned long long)desc, mark, 0LL, 0LL, 0LL);
        /* overflow-safe: offset + length could wrap around in 64 bits */
        if (offset > (uint64_t)r->asize || length > (uint64_t)r->asize - offset || progress > length) {
            return Py_BuildValue("(iLKiLLL)", NEXT_OUTSIDE, (long long)seq, (unsigned long long)desc, 0, 0LL, 0LL, 0LL);
        }
        if (sub != NULL) return make_sample(r, sub, seq, desc, mark, offset, length, progress);
        return Py_BuildValue("(iLKiLLL)", NEXT_MESSAGE, (long long)seq, (unsigned long long)desc, mark,
                             (long long)offset, (long long)length, (long long)progress);
    }
}

static int reader_wake_producer(ReaderObject *r) {
    st(&r->w[r->cw + C_CPU], (uint64_t)(current_cpu_raw() + 1));
    st(&r->w[W_SPACE_STAMP], (uint64_t)monotonic_ns());
    st(&r->w[W_SPACE_EPOCH], (ld(&r->w[W_SPACE_EPOCH]) + 1) & 0xFFFFFFFFu);
    futex_wake_raw(&r->w[W_SPACE_EPOCH], INT32_MAX);
    return 1;
}

/* release(desc, mark, seq) -> bool: write this subscriber's release mark; True if the producer
 * was waiting for it and was woken. */
static PyObject *reader_release(ReaderObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "release(desc, mark, seq)");
        return NULL;
    }
    if (reader_check(r) < 0) return NULL;
    long long desc = PyLong_AsLongLong(args[0]);
    long long mark = PyLong_AsLongLong(args[1]);
    long long seq = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (desc < 0 || desc >= r->capacity) {
        PyErr_SetString(PyExc_ValueError, "descriptor out of range");
        return NULL;
    }
    volatile uint8_t *b = (volatile uint8_t *)r->base;
    __atomic_store_n(&b[r->mark_base + desc * 64], (uint8_t)mark, __ATOMIC_RELEASE);
    fence();
    uint64_t want = ld(&r->w[W_SPACE_WANT]);
    if (want && (uint64_t)seq + 1 >= want) {
        r->wakeups += reader_wake_producer(r);
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

/* progress(desc, seq, nbytes) -> (ready, aborted) for a message being written; -1 ready if the
 * descriptor was reused (overwritten) or is corrupt. */
static PyObject *reader_progress(ReaderObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "progress(desc, seq, nbytes)");
        return NULL;
    }
    if (reader_check(r) < 0) return NULL;
    long long desc = PyLong_AsLongLong(args[0]);
    long long seq = PyLong_AsLongLong(args[1]);
    long long nbytes = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (desc < 0 || desc >= r->capacity) {
        PyErr_SetString(PyExc_ValueError, "descriptor out of range");
        return NULL;
    }
    volatile uint64_t *d = (volatile uint64_t *)(r->base + r->desc_off + desc * 64);
    if (ld(&d[D_TAG]) != (uint64_t)seq + 1) return Py_BuildValue("(Li)", -1LL, 0);
    uint64_t ready = ld(&d[D_PROGRESS]);
    if (ready > (uint64_t)nbytes) return Py_BuildValue("(Li)", -2LL, 0);
    int aborted = (ld(&d[D_MASK]) & FLAG_ABORTED) != 0;
    return Py_BuildValue("(Li)", (long long)ready, aborted);
}

/* spin(seq, budget_ns, yield_each_turn) -> bool: wait, without the GIL, until a message past
 * seq is published or budget_ns has passed. */
static PyObject *reader_spin(ReaderObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "spin(seq, budget_ns, yield_each_turn)");
        return NULL;
    }
    if (reader_check(r) < 0) return NULL;
    long long seq = PyLong_AsLongLong(args[0]);
    long long budget = PyLong_AsLongLong(args[1]);
    int yield = PyObject_IsTrue(args[2]);
    if (PyErr_Occurred() || yield < 0) return NULL;
    volatile uint64_t *head = &r->w[W_HEAD];
    int hit = 0;
    r->spinning++;
    Py_BEGIN_ALLOW_THREADS
    int64_t limit = perf_ns() + budget;
    for (unsigned n = 1; !r->closing; n++) {
        if ((int64_t)ld(head) > seq) {
            hit = 1;
            break;
        }
        /* the clock before the yield: the peer that ran meanwhile may have answered */
        if ((yield || (n & 63) == 0) && perf_ns() >= limit) break;
        if (yield) {
            sched_yield();
        } else {
            cpu_relax();
        }
    }
    Py_END_ALLOW_THREADS
    if (--r->spinning == 0 && r->closing && r->has_view) {
        PyBuffer_Release(&r->view); /* close() came while we spun: let go now */
        r->has_view = 0;
    }
    return PyBool_FromLong(hit);
}

static PyObject *reader_close(ReaderObject *r, PyObject *unused) {
    reader_unbind(r);
    r->base = NULL;
    r->w = NULL;
    if (r->spinning) {
        r->closing = 1; /* the spinning thread lets the mapping go when it stops */
    } else if (r->has_view) {
        PyBuffer_Release(&r->view);
        r->has_view = 0;
    }
    Py_RETURN_NONE;
}

/* bind(ro, received, sample_type): what samples made in C need from the subscriber. */
static PyObject *reader_bind(ReaderObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "bind(ro, received, sample_type)");
        return NULL;
    }
    if (!PyList_Check(args[1]) || PyList_GET_SIZE(args[1]) < 2) {
        PyErr_SetString(PyExc_TypeError, "received must be a list [messages, bytes]");
        return NULL;
    }
    if (!PyType_Check(args[2]) || !PyType_IsSubtype((PyTypeObject *)args[2], &SampleType)) {
        PyErr_SetString(PyExc_TypeError, "sample_type must be a subclass of SampleBase");
        return NULL;
    }
    reader_unbind(r);
    Py_INCREF(args[0]);
    r->ro = args[0];
    Py_INCREF(args[1]);
    r->received = args[1];
    Py_INCREF(args[2]);
    r->sample_type = (PyTypeObject *)args[2];
    Py_RETURN_NONE;
}

static PyMemberDef reader_members[] = {
    {"cursor", T_LONGLONG, offsetof(ReaderObject, cursor), 0, "The next sequence number to read."},
    {"slot", T_INT, offsetof(ReaderObject, slot), READONLY, NULL},
    {"held", T_LONGLONG, offsetof(ReaderObject, held), READONLY, "Samples not yet released."},
    {"wakeups", T_LONGLONG, offsetof(ReaderObject, wakeups), READONLY, "Producer wake-ups sent."},
    {NULL}};

static PyObject *reader_bind(ReaderObject *r, PyObject *const *args, Py_ssize_t nargs);

static PyMethodDef reader_methods[] = {
    {"next", (PyCFunction)(void (*)(void))reader_next, METH_FASTCALL, NULL},
    {"bind", (PyCFunction)(void (*)(void))reader_bind, METH_FASTCALL, NULL},
    {"release", (PyCFunction)(void (*)(void))reader_release, METH_FASTCALL, NULL},
    {"progress", (PyCFunction)(void (*)(void))reader_progress, METH_FASTCALL, NULL},
    {"spin", (PyCFunction)(void (*)(void))reader_spin, METH_FASTCALL, NULL},
    {"close", (PyCFunction)reader_close, METH_NOARGS, "Give the segment's mapping back."},
    {NULL}};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sealserve.ipc._ringcore.Reader",
    .tp_basicsize = sizeof(ReaderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The consumer's reads and release marks of one segment slot (compiled).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)reader_init,
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_methods = reader_methods,
    .tp_members = reader_members,
};


/* ========================================================================================== */
/* SampleBase: the storage and hot methods of a sample (view, release, the with block).      */


static void sample_dealloc(SampleObject *smp) {
    Py_XDECREF(smp->sub);
    Py_XDECREF(smp->reader);
    Py_TYPE(smp)->tp_free((PyObject *)smp);
}

static PyObject *sample_get_view(SampleObject *smp, void *closure) {
    ReaderObject *r = smp->reader;
    if (smp->released || !smp->complete || r == NULL || r->base == NULL || r->ro == NULL)
        return python_half((PyObject *)smp, &SampleType, "view");
    return PySequence_GetSlice(r->ro, smp->offset, smp->offset + smp->nbytes);
}

static int reader_wake_producer(ReaderObject *r);

static PyObject *sample_release(SampleObject *smp, PyObject *unused) {
    if (smp->released) Py_RETURN_NONE;
    smp->released = 1;
    ReaderObject *r = smp->reader;
    if (r == NULL || r->base == NULL) Py_RETURN_NONE; /* the subscriber closed */
    r->held--;
    volatile uint8_t *b = (volatile uint8_t *)r->base;
    __atomic_store_n(&b[r->mark_base + smp->desc * 64], (uint8_t)smp->mark, __ATOMIC_RELEASE);
    fence();
    uint64_t want = ld(&r->w[W_SPACE_WANT]);
    if (want && (uint64_t)smp->seq + 1 >= want) r->wakeups += reader_wake_producer(r);
    Py_RETURN_NONE;
}

static PyObject *sample_enter(PyObject *self, PyObject *unused) {
    Py_INCREF(self);
    return self;
}

static PyObject *sample_exit(SampleObject *smp, PyObject *const *args, Py_ssize_t nargs) {
    return sample_release(smp, NULL);
}

static PyObject *sample_get_released(SampleObject *smp, void *closure) { return PyBool_FromLong(smp->released); }

static PyMemberDef sample_members[] = {
    {"_sub", T_OBJECT, offsetof(SampleObject, sub), READONLY, NULL},
    {"seq", T_LONGLONG, offsetof(SampleObject, seq), READONLY, NULL},
    {"_desc", T_LONGLONG, offsetof(SampleObject, desc), READONLY, NULL},
    {"_mark", T_LONGLONG, offsetof(SampleObject, mark), READONLY, NULL},
    {"_offset", T_LONGLONG, offsetof(SampleObject, offset), READONLY, NULL},
    {"nbytes", T_LONGLONG, offsetof(SampleObject, nbytes), READONLY, NULL},
    {"_complete", T_BOOL, offsetof(SampleObject, complete), 0, NULL},
    {"_released", T_BOOL, offsetof(SampleObject, released), 0, NULL},
    {NULL}};

static PyGetSetDef sample_getset[] = {
    {"view", (getter)sample_get_view, NULL, "The payload as a read-only memoryview.", NULL},
    {"released", (getter)sample_get_released, NULL, NULL, NULL},
    {NULL}};

static PyMethodDef sample_methods[] = {
    {"release", (PyCFunction)sample_release, METH_NOARGS, "Hand the slot back to the producer."},
    {"__enter__", (PyCFunction)sample_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))sample_exit, METH_FASTCALL, NULL},
    {NULL}};

static PyTypeObject SampleType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sealserve.ipc._ringcore.SampleBase",
    .tp_basicsize = sizeof(SampleObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The storage and hot methods of a sample; sealserve.ipc.Sample has the rest.",
    .tp_dealloc = (destructor)sample_dealloc,
    .tp_methods = sample_methods,
    .tp_members = sample_members,
    .tp_getset = sample_getset,
};

/* ========================================================================================== */
/* Module functions: futex, fence, CPU.                                                        */

static PyObject *mod_futex_wait(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "futex_wait(address, expected, timeout_s)");
        return NULL;
    }
    unsigned long long address = PyLong_AsUnsignedLongLong(args[0]);
    unsigned long long expected = PyLong_AsUnsignedLongLong(args[1]);
    if (PyErr_Occurred()) return NULL;
    struct timespec ts, *tsp = NULL;
    if (args[2] != Py_None) {
        double secs = PyFloat_AsDouble(args[2]);
        if (secs == -1.0 && PyErr_Occurred()) return NULL;
        if (secs < 0) secs = 0;
        ts.tv_sec = (time_t)secs;
        ts.tv_nsec = (long)((secs - (double)ts.tv_sec) * 1e9);
        tsp = &ts;
    }
    long rc;
    int err;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_futex, (uint32_t *)(uintptr_t)address, FUTEX_WAIT, (uint32_t)expected, tsp, NULL, 0);
    err = errno;
    Py_END_ALLOW_THREADS
    if (rc == 0) Py_RETURN_TRUE;
    if (err == ETIMEDOUT) Py_RETURN_FALSE;
    if (err == EAGAIN || err == EINTR) Py_RETURN_TRUE;
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyObject *mod_futex_wake(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "futex_wake(address, count=INT_MAX)");
        return NULL;
    }
    unsigned long long address = PyLong_AsUnsignedLongLong(args[0]);
    long count = nargs > 1 ? PyLong_AsLong(args[1]) : INT32_MAX;
    if (PyErr_Occurred()) return NULL;
    long rc = syscall(SYS_futex, (uint32_t *)(uintptr_t)address, FUTEX_WAKE, (int)count, NULL, NULL, 0);
    if (rc < 0) return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(rc);
}

static PyObject *mod_full_fence(PyObject *m, PyObject *unused) {
    fence();
    Py_RETURN_NONE;
}

static PyObject *mod_current_cpu(PyObject *m, PyObject *unused) { return PyLong_FromLong(current_cpu_raw()); }

static PyMethodDef module_methods[] = {
    {"futex_wait", (PyCFunction)(void (*)(void))mod_futex_wait, METH_FASTCALL,
     "Sleep while the 32-bit word at address holds expected (the GIL is released)."},
    {"futex_wake", (PyCFunction)(void (*)(void))mod_futex_wake, METH_FASTCALL,
     "Wake up to count waiters on the word at address."},
    {"full_fence", (PyCFunction)mod_full_fence, METH_NOARGS, "A sequentially consistent fence."},
    {"current_cpu", (PyCFunction)mod_current_cpu, METH_NOARGS, "The CPU this thread runs on."},
    {NULL}};

static struct PyModuleDef ringcore_module = {
    PyModuleDef_HEAD_INIT, "sealserve.ipc._ringcore",
    "The compiled hot path of sealserve.ipc channels (see _ringcore.c).", -1, module_methods};

PyMODINIT_FUNC PyInit__ringcore(void) {
    if (PyType_Ready(&RecType) < 0 || PyType_Ready(&RingType) < 0 || PyType_Ready(&ReaderType) < 0 ||
        PyType_Ready(&LoanType) < 0 || PyType_Ready(&SampleType) < 0)
        return NULL;
    s_release = PyUnicode_InternFromString("release");
    if (s_release == NULL) return NULL;
    PyObject *m = PyModule_Create(&ringcore_module);
    if (m == NULL) return NULL;
    Py_INCREF(&RecType);
    Py_INCREF(&RingType);
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "Rec", (PyObject *)&RecType) < 0 ||
        PyModule_AddObject(m, "ProducerRing", (PyObject *)&RingType) < 0 ||
        PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0 ||
        PyModule_AddObjectRef(m, "LoanBase", (PyObject *)&LoanType) < 0 ||
        PyModule_AddObjectRef(m, "SampleBase", (PyObject *)&SampleType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* The layout this file was compiled against, checked against _layout.py by a test. */
    PyObject *layout = Py_BuildValue(
        "{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:K,s:i,s:i,s:i,s:i,s:i}",
        "HEAD", W_HEAD, "TAIL", W_TAIL, "SPACE_WANT", W_SPACE_WANT, "WAKE_STAMP", W_WAKE_STAMP,
        "DATA_EPOCH", W_DATA_EPOCH, "PCPU", W_PCPU, "SPACE_EPOCH", W_SPACE_EPOCH, "SPACE_STAMP",
        W_SPACE_STAMP, "CONSUMERS", W_CONSUMERS, "C_STATE", C_STATE, "C_PID", C_PID, "C_START",
        C_START, "C_WAITING", C_WAITING, "C_CPU", C_CPU, "D_MARKS", D_MARKS, "D_MARKS_BYTE",
        D_MARKS_BYTE, "MARK_SHIFT", MARK_SHIFT, "FLAG_ABORTED", (unsigned long long)FLAG_ABORTED,
        "ARENA_ALIGN", ARENA_ALIGN, "MAX_SUBSCRIBERS", MAX_SUBSCRIBERS, "CONSUMER_LIVE",
        CONSUMER_LIVE, "CONSUMER_LEFT", CONSUMER_LEFT, "CONSUMER_DEAD", CONSUMER_DEAD);
    if (layout == NULL || PyModule_AddObject(m, "LAYOUT", layout) < 0) {
        Py_XDECREF(layout);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "NEXT_MESSAGE", NEXT_MESSAGE);
    PyModule_AddIntConstant(m, "NEXT_ABORTED", NEXT_ABORTED);
    PyModule_AddIntConstant(m, "NEXT_BAD_QUEUE", NEXT_BAD_QUEUE);
    PyModule_AddIntConstant(m, "NEXT_BAD_TAG", NEXT_BAD_TAG);
    PyModule_AddIntConstant(m, "NEXT_OUTSIDE", NEXT_OUTSIDE);
    return m;
}
