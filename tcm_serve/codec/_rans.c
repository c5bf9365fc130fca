/*
 * tcm_serve.codec._rans -- rANS range coder, byte-compatible with CompressAI 1.2.x.
 *
 * Coder parameters (CompressAI's rans_interface + Fabian Giesen's rans64 scheme):
 *   - 64-bit state, normalisation interval [2^31, 2^63), 32-bit output words stored
 *     little-endian, probability precision 16 bits;
 *   - the encoder walks its symbol list backwards so that the decoder reads in order;
 *   - escape ("bypass") coding: a value outside [0, max) of its table (max = cdf_length - 2)
 *     is coded as the table symbol `max`, followed by the number n of 4-bit groups of the raw
 *     value (in fields of 15 while n >= 15, then the remainder) and the n groups, least
 *     significant first. raw = -2v-1 for v < 0, 2(v-max) for v >= max.
 *
 * Everything is written from scratch against that description. Plain C99 and the
 * Python C API (buffer protocol) only; no numpy headers.
 *
 * Safety: every argument is validated before any memory is touched; the decoder never
 * reads past the end of its data, bounds every table search by cdf_length, caps the
 * number of bypass groups at 8 (raw values fit in 32 bits), and every loop consumes
 * input or terminates within a constant number of steps. The GIL is released around the
 * encode and decode loops.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RANS_L ((uint64_t)1 << 31) /* lower bound of the normalisation interval */
#define PRECISION 16
#define PROB_ONE ((int32_t)1 << PRECISION)
#define BYPASS_BITS 4
#define BYPASS_MAX ((1 << BYPASS_BITS) - 1) /* 15 */
#define MAX_BYPASS_GROUPS 8                 /* 8 groups of 4 bits = 32-bit raw value */

static const char CORRUPT_MSG[] = "rANS stream truncated or corrupt";

/* ------------------------------------------------------------------------------------ */
/* little-endian word access                                                            */

static inline uint32_t load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void store_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v & 0xFFu);
    p[1] = (unsigned char)((v >> 8) & 0xFFu);
    p[2] = (unsigned char)((v >> 16) & 0xFFu);
    p[3] = (unsigned char)((v >> 24) & 0xFFu);
}

/* ------------------------------------------------------------------------------------ */
/* buffer helpers                                                                       */

/* True if the buffer's format denotes a native-order signed 32-bit integer. */
static int format_is_int32(const Py_buffer *view)
{
    const char *f = view->format;
    if (view->itemsize != 4)
        return 0;
    if (f == NULL)
        return 0; /* unsigned bytes */
    if (*f == '@' || *f == '=')
        f++;
    else if (*f == '<' || *f == '>' || *f == '!') {
        const uint16_t probe = 1;
        const int little = *(const unsigned char *)&probe == 1;
        if ((*f == '<') != little)
            return 0; /* foreign byte order */
        f++;
    }
    if (f[0] == 'i' && f[1] == '\0')
        return 1;
    if (f[0] == 'l' && f[1] == '\0' && sizeof(long) == 4)
        return 1;
    return 0;
}

static int format_is_float32(const Py_buffer *view)
{
    const char *f = view->format;
    if (view->itemsize != 4 || f == NULL)
        return 0;
    if (*f == '@' || *f == '=')
        f++;
    else if (*f == '<' || *f == '>' || *f == '!') {
        const uint16_t probe = 1;
        const int little = *(const unsigned char *)&probe == 1;
        if ((*f == '<') != little)
            return 0;
        f++;
    }
    return f[0] == 'f' && f[1] == '\0';
}

/*
 * Acquire a C-contiguous int32 buffer of the given dimensionality (1 or 2).
 * Any failure is reported as TypeError (wrong kind of object / dtype / layout) or
 * ValueError (wrong number of dimensions). Returns 0 on success, -1 with an exception set.
 */
static int get_int32_buffer(PyObject *obj, Py_buffer *view, int ndim, int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT;
    if (writable)
        flags |= PyBUF_WRITABLE;
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s int32 buffer", name,
                     writable ? " writable" : "");
        return -1;
    }
    if (!format_is_int32(view)) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_TypeError, "%s must have dtype int32 (itemsize 4, format 'i')", name);
        return -1;
    }
    if (view->ndim != ndim) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "%s must be %d-dimensional, got %d dimensions", name, ndim,
                     view->ndim);
        return -1;
    }
    return 0;
}

/* The set of tables used by one encode/decode call, validated. */
typedef struct {
    Py_buffer cdfs_view;
    Py_buffer lengths_view;
    Py_buffer offsets_view;
    const int32_t *cdfs; /* K x L, row-major */
    Py_ssize_t K;
    Py_ssize_t L;
    int32_t *lengths; /* private copies (K entries), immune to concurrent mutation */
    int32_t *offsets;
    int have_cdfs, have_lengths, have_offsets;
} Tables;

static void tables_release(Tables *t)
{
    if (t->have_cdfs)
        PyBuffer_Release(&t->cdfs_view);
    if (t->have_lengths)
        PyBuffer_Release(&t->lengths_view);
    if (t->have_offsets)
        PyBuffer_Release(&t->offsets_view);
    t->have_cdfs = t->have_lengths = t->have_offsets = 0;
    PyMem_Free(t->lengths);
    PyMem_Free(t->offsets);
    t->lengths = t->offsets = NULL;
}

static int tables_acquire(Tables *t, PyObject *cdfs, PyObject *lengths, PyObject *offsets)
{
    memset(t, 0, sizeof(*t));
    if (get_int32_buffer(cdfs, &t->cdfs_view, 2, 0, "cdfs") != 0)
        goto fail;
    t->have_cdfs = 1;
    if (get_int32_buffer(lengths, &t->lengths_view, 1, 0, "cdf_lengths") != 0)
        goto fail;
    t->have_lengths = 1;
    if (get_int32_buffer(offsets, &t->offsets_view, 1, 0, "offsets") != 0)
        goto fail;
    t->have_offsets = 1;

    t->K = t->cdfs_view.shape[0];
    t->L = t->cdfs_view.shape[1];
    t->cdfs = (const int32_t *)t->cdfs_view.buf;
    if (t->K < 1) {
        PyErr_SetString(PyExc_ValueError, "cdfs must have at least one row");
        goto fail;
    }
    if (t->L < 2) {
        PyErr_SetString(PyExc_ValueError, "cdfs must have at least two columns");
        goto fail;
    }
    if (t->K > INT32_MAX || t->L > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "cdfs is too large");
        goto fail;
    }
    if (t->lengths_view.shape[0] != t->K || t->offsets_view.shape[0] != t->K) {
        PyErr_Format(PyExc_ValueError,
                     "cdf_lengths (%zd) and offsets (%zd) must have one entry per cdf row (%zd)",
                     t->lengths_view.shape[0], t->offsets_view.shape[0], t->K);
        goto fail;
    }
    t->lengths = (int32_t *)PyMem_Malloc((size_t)t->K * sizeof(int32_t));
    t->offsets = (int32_t *)PyMem_Malloc((size_t)t->K * sizeof(int32_t));
    if (t->lengths == NULL || t->offsets == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    memcpy(t->lengths, t->lengths_view.buf, (size_t)t->K * sizeof(int32_t));
    memcpy(t->offsets, t->offsets_view.buf, (size_t)t->K * sizeof(int32_t));
    for (Py_ssize_t k = 0; k < t->K; k++) {
        if (t->lengths[k] < 2 || (Py_ssize_t)t->lengths[k] > t->L) {
            PyErr_Format(PyExc_ValueError, "cdf_lengths[%zd] = %d is outside [2, %zd]", k,
                         (int)t->lengths[k], t->L);
            goto fail;
        }
    }
    return 0;
fail:
    tables_release(t);
    return -1;
}

/* ------------------------------------------------------------------------------------ */
/* encoder                                                                              */

enum {
    ENC_OK = 0,
    ENC_BAD_INDEX,
    ENC_RAW_TOO_LARGE,
    ENC_BAD_CDF,
    ENC_NOMEM,
};

/* Number of 4-bit groups needed for raw (0 for raw == 0). */
static inline int bypass_groups(uint64_t raw)
{
    int n = 0;
    while (raw != 0) {
        raw >>= BYPASS_BITS;
        n++;
    }
    return n;
}

/* Map a symbol to (table value, raw escape value). Returns 0 or an ENC_* error. */
static inline int map_symbol(int32_t symbol, int32_t offset, int32_t max_value, int32_t *value,
                             uint64_t *raw, int *escaped)
{
    int64_t v = (int64_t)symbol - (int64_t)offset;
    *escaped = 0;
    *raw = 0;
    if (v < 0) {
        *raw = (uint64_t)(-2 * v - 1);
        v = max_value;
        *escaped = 1;
    } else if (v >= max_value) {
        *raw = (uint64_t)(2 * (v - max_value));
        v = max_value;
        *escaped = 1;
    }
    if (*raw > 0xFFFFFFFFull)
        return ENC_RAW_TOO_LARGE;
    *value = (int32_t)v;
    return ENC_OK;
}

typedef struct {
    uint64_t x;
    unsigned char *buf; /* output, filled from the end backwards */
    size_t pos;         /* word index of the first written word */
} Encoder;

static inline void enc_put(Encoder *e, uint32_t start, uint32_t freq)
{
    uint64_t x = e->x;
    const uint64_t x_max = ((RANS_L >> PRECISION) << 32) * freq;
    if (x >= x_max) {
        e->pos--;
        store_le32(e->buf + 4 * e->pos, (uint32_t)x);
        x >>= 32;
    }
    e->x = ((x / freq) << PRECISION) + (x % freq) + start;
}

static inline void enc_put_bits(Encoder *e, uint32_t val)
{
    uint64_t x = e->x;
    const uint64_t freq = (uint64_t)1 << (PRECISION - BYPASS_BITS);
    const uint64_t x_max = ((RANS_L >> PRECISION) << 32) * freq;
    if (x >= x_max) {
        e->pos--;
        store_le32(e->buf + 4 * e->pos, (uint32_t)x);
        x >>= 32;
    }
    e->x = (x << BYPASS_BITS) | val;
}

/*
 * The whole encoder, GIL-free. On success *out holds a PyMem_Raw buffer and the
 * byte range [*out_start, *out_start + *out_len) of it is the stream.
 */
static int encode_core(const int32_t *symbols, const int32_t *indexes, Py_ssize_t n, const Tables *t,
                       unsigned char **out, size_t *out_start, size_t *out_len, Py_ssize_t *err_pos)
{
    /* Pass 1: validate and count the number of coder steps (each emits at most one word). */
    size_t steps = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const int32_t k = indexes[i];
        if (k < 0 || (Py_ssize_t)k >= t->K) {
            *err_pos = i;
            return ENC_BAD_INDEX;
        }
        int32_t value = 0;
        uint64_t raw = 0;
        int escaped = 0;
        const int rc = map_symbol(symbols[i], t->offsets[k], t->lengths[k] - 2, &value, &raw, &escaped);
        if (rc != ENC_OK) {
            *err_pos = i;
            return rc;
        }
        const int32_t *cdf = t->cdfs + (size_t)k * (size_t)t->L;
        const int32_t start = cdf[value];
        const int32_t stop = cdf[value + 1];
        if (start < 0 || stop > PROB_ONE || stop <= start) {
            *err_pos = i;
            return ENC_BAD_CDF;
        }
        steps += 1;
        if (escaped) {
            const int groups = bypass_groups(raw);
            steps += (size_t)(groups / BYPASS_MAX) + 1 + (size_t)groups;
        }
    }

    const size_t words = steps + 2;
    unsigned char *buf = (unsigned char *)PyMem_RawMalloc(words * 4);
    if (buf == NULL)
        return ENC_NOMEM;

    /* Pass 2: encode in reverse; per symbol, undo the order of CompressAI's pushes
     * (symbol, count fields, raw groups). */
    Encoder e;
    e.x = RANS_L;
    e.buf = buf;
    e.pos = words;
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        const int32_t k = indexes[i];
        int32_t value = 0;
        uint64_t raw = 0;
        int escaped = 0;
        (void)map_symbol(symbols[i], t->offsets[k], t->lengths[k] - 2, &value, &raw, &escaped);
        const int32_t *cdf = t->cdfs + (size_t)k * (size_t)t->L;
        const int32_t start = cdf[value];
        const int32_t stop = cdf[value + 1];
        if (start < 0 || stop > PROB_ONE || stop <= start) {
            /* The table changed under us (shared writable buffer); refuse. */
            PyMem_RawFree(buf);
            *err_pos = i;
            return ENC_BAD_CDF;
        }
        if (escaped) {
            const int groups = bypass_groups(raw);
            for (int j = groups - 1; j >= 0; j--)
                enc_put_bits(&e, (uint32_t)((raw >> (j * BYPASS_BITS)) & BYPASS_MAX));
            enc_put_bits(&e, (uint32_t)(groups % BYPASS_MAX));
            for (int j = 0; j < groups / BYPASS_MAX; j++)
                enc_put_bits(&e, BYPASS_MAX);
        }
        enc_put(&e, (uint32_t)start, (uint32_t)(stop - start));
    }
    /* flush: two words, low half first */
    e.pos -= 2;
    store_le32(buf + 4 * e.pos, (uint32_t)e.x);
    store_le32(buf + 4 * (e.pos + 1), (uint32_t)(e.x >> 32));

    *out = buf;
    *out_start = e.pos * 4;
    *out_len = (words - e.pos) * 4;
    return ENC_OK;
}

PyDoc_STRVAR(encode_doc,
             "encode(symbols, indexes, cdfs, cdf_lengths, offsets) -> bytes\n\n"
             "rANS-encode int32 symbols, each with the table row given by the matching entry\n"
             "of indexes, like CompressAI's BufferedRansEncoder.encode_with_indexes + flush.\n"
             "symbols, indexes: 1-D int32 of equal length; cdfs: C-contiguous int32 (K, L);\n"
             "cdf_lengths, offsets: int32 (K,).");

static PyObject *rans_encode(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"symbols", "indexes", "cdfs", "cdf_lengths", "offsets", NULL};
    PyObject *sym_obj, *idx_obj, *cdfs_obj, *len_obj, *off_obj;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO:encode", kwlist, &sym_obj, &idx_obj,
                                     &cdfs_obj, &len_obj, &off_obj))
        return NULL;

    Py_buffer sym_view, idx_view;
    Tables t;
    if (get_int32_buffer(sym_obj, &sym_view, 1, 0, "symbols") != 0)
        return NULL;
    if (get_int32_buffer(idx_obj, &idx_view, 1, 0, "indexes") != 0) {
        PyBuffer_Release(&sym_view);
        return NULL;
    }
    if (sym_view.shape[0] != idx_view.shape[0]) {
        PyErr_Format(PyExc_ValueError, "symbols (%zd) and indexes (%zd) must have the same length",
                     sym_view.shape[0], idx_view.shape[0]);
        PyBuffer_Release(&sym_view);
        PyBuffer_Release(&idx_view);
        return NULL;
    }
    if (tables_acquire(&t, cdfs_obj, len_obj, off_obj) != 0) {
        PyBuffer_Release(&sym_view);
        PyBuffer_Release(&idx_view);
        return NULL;
    }

    const Py_ssize_t n = sym_view.shape[0];
    unsigned char *buf = NULL;
    size_t start = 0, len = 0;
    Py_ssize_t err_pos = -1;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = encode_core((const int32_t *)sym_view.buf, (const int32_t *)idx_view.buf, n, &t, &buf,
                     &start, &len, &err_pos);
    Py_END_ALLOW_THREADS

    PyObject *result = NULL;
    switch (rc) {
    case ENC_OK:
        result = PyBytes_FromStringAndSize((const char *)buf + start, (Py_ssize_t)len);
        break;
    case ENC_BAD_INDEX:
        PyErr_Format(PyExc_ValueError, "indexes[%zd] = %d is outside [0, %zd)", err_pos,
                     (int)((const int32_t *)idx_view.buf)[err_pos], t.K);
        break;
    case ENC_RAW_TOO_LARGE:
        PyErr_Format(PyExc_ValueError,
                     "symbols[%zd] = %d is too far outside its table to escape-code (raw value "
                     "exceeds 32 bits)",
                     err_pos, (int)((const int32_t *)sym_view.buf)[err_pos]);
        break;
    case ENC_BAD_CDF:
        PyErr_Format(PyExc_ValueError,
                     "invalid cdf entry for symbols[%zd] (table row must be increasing within "
                     "[0, 65536])",
                     err_pos);
        break;
    default:
        PyErr_NoMemory();
        break;
    }
    PyMem_RawFree(buf);
    tables_release(&t);
    PyBuffer_Release(&sym_view);
    PyBuffer_Release(&idx_view);
    return result;
}

/* ------------------------------------------------------------------------------------ */
/* decoder                                                                              */

typedef struct {
    PyObject_HEAD
    unsigned char *data; /* private copy of the stream */
    size_t nwords;       /* number of whole 32-bit words in data */
    size_t pos;          /* next word to read */
    uint64_t x;          /* rANS state */
    int busy;            /* a decode call is running (GIL released) */
    int failed;          /* a previous call hit a corrupt stream */
} DecoderObject;

enum {
    DEC_OK = 0,
    DEC_CORRUPT,
    DEC_BAD_INDEX,
    DEC_BAD_CDF,
};

static inline int dec_refill(DecoderObject *d, uint64_t *x)
{
    if (*x < RANS_L) {
        if (d->pos >= d->nwords)
            return -1;
        *x = (*x << 32) | (uint64_t)load_le32(d->data + 4 * d->pos);
        d->pos++;
    }
    return 0;
}

static inline int dec_get_bits(DecoderObject *d, uint64_t *x, uint32_t *val)
{
    *val = (uint32_t)(*x & BYPASS_MAX);
    *x >>= BYPASS_BITS;
    return dec_refill(d, x);
}

static int decode_core(DecoderObject *d, const int32_t *indexes, int32_t *out, Py_ssize_t n,
                       const Tables *t, Py_ssize_t *err_pos)
{
    /* Check every index before touching the state, so that a bad index list leaves the
     * decoder usable. */
    for (Py_ssize_t i = 0; i < n; i++) {
        if (indexes[i] < 0 || (Py_ssize_t)indexes[i] >= t->K) {
            *err_pos = i;
            return DEC_BAD_INDEX;
        }
    }
    uint64_t x = d->x;
    const uint64_t mask = ((uint64_t)1 << PRECISION) - 1;
    int rc = DEC_OK;
    Py_ssize_t i;
    for (i = 0; i < n; i++) {
        const int32_t k = indexes[i];
        if (k < 0 || (Py_ssize_t)k >= t->K) { /* indexes changed under us */
            rc = DEC_BAD_CDF;
            break;
        }
        const int32_t len = t->lengths[k];
        const int32_t max_value = len - 2;
        const int32_t *cdf = t->cdfs + (size_t)k * (size_t)t->L;
        const int32_t cum = (int32_t)(x & mask);

        /* first j in [0, len) with cdf[j] > cum (upper bound); symbol s = j - 1 */
        int32_t lo = 0, hi = len;
        while (lo < hi) {
            const int32_t mid = lo + (hi - lo) / 2;
            if (cdf[mid] > cum)
                hi = mid;
            else
                lo = mid + 1;
        }
        const int32_t s = lo - 1;
        if (s < 0 || s > max_value) {
            rc = DEC_BAD_CDF;
            break;
        }
        const int32_t start = cdf[s];
        const int32_t stop = cdf[s + 1];
        if (start < 0 || stop > PROB_ONE || stop <= start || cum < start) {
            rc = DEC_BAD_CDF;
            break;
        }
        x = (uint64_t)(stop - start) * (x >> PRECISION) + (x & mask) - (uint64_t)start;
        if (dec_refill(d, &x) != 0) {
            rc = DEC_CORRUPT;
            break;
        }

        int64_t value = s;
        if (s == max_value) {
            /* bypass: number of 4-bit groups (fields of 15 continue), then the groups */
            uint32_t field;
            int groups = 0;
            do {
                if (dec_get_bits(d, &x, &field) != 0) {
                    rc = DEC_CORRUPT;
                    break;
                }
                groups += (int)field;
            } while (field == BYPASS_MAX && groups <= MAX_BYPASS_GROUPS);
            if (rc != DEC_OK)
                break;
            if (groups > MAX_BYPASS_GROUPS) {
                rc = DEC_CORRUPT;
                break;
            }
            uint64_t raw = 0;
            for (int j = 0; j < groups; j++) {
                if (dec_get_bits(d, &x, &field) != 0) {
                    rc = DEC_CORRUPT;
                    break;
                }
                raw |= (uint64_t)field << (j * BYPASS_BITS);
            }
            if (rc != DEC_OK)
                break;
            if (raw & 1)
                value = -(int64_t)(raw >> 1) - 1;
            else
                value = (int64_t)(raw >> 1) + max_value;
        }
        const int64_t symbol = value + (int64_t)t->offsets[k];
        if (symbol < INT32_MIN || symbol > INT32_MAX) {
            rc = DEC_CORRUPT;
            break;
        }
        out[i] = (int32_t)symbol;
    }
    d->x = x;
    *err_pos = i;
    return rc;
}

static void Decoder_dealloc(DecoderObject *self)
{
    PyMem_Free(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Decoder_init(DecoderObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"data", NULL};
    Py_buffer view;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*:Decoder", kwlist, &view))
        return -1;
    if (self->busy) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_RuntimeError, "Decoder is in use by another thread");
        return -1;
    }
    if (view.len < 8) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "rANS stream too short (fewer than 8 bytes)");
        return -1;
    }
    if (view.len % 4 != 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "rANS stream length is not a multiple of 4 bytes");
        return -1;
    }
    unsigned char *data = (unsigned char *)PyMem_Malloc((size_t)view.len);
    if (data == NULL) {
        PyBuffer_Release(&view);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(data, view.buf, (size_t)view.len);
    PyMem_Free(self->data);
    self->data = data;
    self->nwords = (size_t)view.len / 4;
    self->x = (uint64_t)load_le32(data) | ((uint64_t)load_le32(data + 4) << 32);
    self->pos = 2;
    self->failed = 0;
    PyBuffer_Release(&view);
    return 0;
}

PyDoc_STRVAR(decode_doc,
             "decode(indexes, cdfs, cdf_lengths, offsets, out) -> None\n\n"
             "Decode len(indexes) symbols continuing from the current stream position and write\n"
             "them into the writable int32 buffer out. Raises ValueError on a truncated or\n"
             "corrupt stream (after which the decoder refuses further calls).");

static PyObject *Decoder_decode(DecoderObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"indexes", "cdfs", "cdf_lengths", "offsets", "out", NULL};
    PyObject *idx_obj, *cdfs_obj, *len_obj, *off_obj, *out_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO:decode", kwlist, &idx_obj, &cdfs_obj,
                                     &len_obj, &off_obj, &out_obj))
        return NULL;
    if (self->data == NULL) {
        PyErr_SetString(PyExc_ValueError, "Decoder was not initialised");
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Decoder is in use by another thread");
        return NULL;
    }
    if (self->failed) {
        PyErr_SetString(PyExc_ValueError, "rANS stream truncated or corrupt (decoder already failed)");
        return NULL;
    }

    Py_buffer idx_view, out_view;
    Tables t;
    if (get_int32_buffer(idx_obj, &idx_view, 1, 0, "indexes") != 0)
        return NULL;
    if (get_int32_buffer(out_obj, &out_view, 1, 1, "out") != 0) {
        PyBuffer_Release(&idx_view);
        return NULL;
    }
    if (idx_view.shape[0] != out_view.shape[0]) {
        PyErr_Format(PyExc_ValueError, "out (%zd) must have the same length as indexes (%zd)",
                     out_view.shape[0], idx_view.shape[0]);
        PyBuffer_Release(&idx_view);
        PyBuffer_Release(&out_view);
        return NULL;
    }
    if (tables_acquire(&t, cdfs_obj, len_obj, off_obj) != 0) {
        PyBuffer_Release(&idx_view);
        PyBuffer_Release(&out_view);
        return NULL;
    }

    const Py_ssize_t n = idx_view.shape[0];
    Py_ssize_t err_pos = -1;
    int rc;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    rc = decode_core(self, (const int32_t *)idx_view.buf, (int32_t *)out_view.buf, n, &t, &err_pos);
    Py_END_ALLOW_THREADS
    self->busy = 0;

    PyObject *result = NULL;
    switch (rc) {
    case DEC_OK:
        result = Py_None;
        Py_INCREF(result);
        break;
    case DEC_BAD_INDEX:
        PyErr_Format(PyExc_ValueError, "indexes[%zd] = %d is outside [0, %zd)", err_pos,
                     (int)((const int32_t *)idx_view.buf)[err_pos], t.K);
        break;
    case DEC_BAD_CDF:
        self->failed = 1;
        PyErr_Format(PyExc_ValueError,
                     "invalid cdf table row for indexes[%zd] (must be increasing from 0 to 65536)",
                     err_pos);
        break;
    default:
        self->failed = 1;
        PyErr_SetString(PyExc_ValueError, CORRUPT_MSG);
        break;
    }
    tables_release(&t);
    PyBuffer_Release(&idx_view);
    PyBuffer_Release(&out_view);
    return result;
}

static PyObject *Decoder_get_remaining(DecoderObject *self, void *closure)
{
    (void)closure;
    if (self->data == NULL)
        return PyLong_FromLong(0);
    return PyLong_FromSize_t((self->nwords - self->pos) * 4);
}

static PyObject *Decoder_get_finished(DecoderObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->data != NULL && !self->failed && self->pos == self->nwords &&
                           self->x == RANS_L);
}

static PyMethodDef Decoder_methods[] = {
    {"decode", (PyCFunction)(void (*)(void))Decoder_decode, METH_VARARGS | METH_KEYWORDS, decode_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Decoder_getset[] = {
    {"remaining", (getter)Decoder_get_remaining, NULL,
     "Number of stream bytes not yet read into the coder state.", NULL},
    {"finished", (getter)Decoder_get_finished, NULL,
     "True when every word has been consumed and the state is back at its initial value,\n"
     "i.e. exactly the symbols the encoder wrote have been decoded.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Decoder_doc,
             "Decoder(data: bytes)\n\n"
             "rANS decoder over one stream; state carries over between decode() calls so a\n"
             "stream can be decoded in several parts. data must be at least 8 bytes and a\n"
             "multiple of 4 (ValueError otherwise).");

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tcm_serve.codec._rans.Decoder",
    .tp_basicsize = sizeof(DecoderObject),
    .tp_itemsize = 0,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Decoder_doc,
    .tp_methods = Decoder_methods,
    .tp_getset = Decoder_getset,
    .tp_init = (initproc)Decoder_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------------------------ */
/* pmf -> quantised CDF                                                                 */

PyDoc_STRVAR(quantize_cdf_doc,
             "quantize_cdf(pmf) -> bytes\n\n"
             "CompressAI's pmf_to_quantized_cdf at 16-bit precision. pmf: 1-D float32 buffer\n"
             "(including the tail mass as last entry). Returns len(pmf)+1 native int32 values:\n"
             "a CDF from 0 to 65536 in which every bin has width >= 1.");

static PyObject *rans_quantize_cdf(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "pmf must be a C-contiguous float32 buffer");
        return NULL;
    }
    if (!format_is_float32(&view)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "pmf must have dtype float32 (itemsize 4, format 'f')");
        return NULL;
    }
    if (view.ndim != 1) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "pmf must be 1-dimensional");
        return NULL;
    }
    const Py_ssize_t n = view.shape[0];
    const float *pmf = (const float *)view.buf;
    if (n < 1) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "pmf is empty (total mass 0)");
        return NULL;
    }
    if (n >= ((Py_ssize_t)1 << PRECISION)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "pmf has too many entries for 16-bit precision");
        return NULL;
    }
    uint32_t *cdf = (uint32_t *)PyMem_Malloc((size_t)(n + 1) * sizeof(uint32_t));
    if (cdf == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }

    /* frequencies: round-half-away(p * 2^16), product in float32 */
    uint64_t total = 0;
    cdf[0] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const float p = pmf[i];
        if (!isfinite(p) || p < 0.0f) {
            PyMem_Free(cdf);
            PyBuffer_Release(&view);
            PyErr_Format(PyExc_ValueError, "pmf[%zd] is negative or not finite", i);
            return NULL;
        }
        volatile float prod = p * 65536.0f; /* keep the float32 rounding of the product */
        const double d = (double)prod;
        if (d >= 2147483648.0) {
            PyMem_Free(cdf);
            PyBuffer_Release(&view);
            PyErr_Format(PyExc_ValueError, "pmf[%zd] is too large", i);
            return NULL;
        }
        /* d < 2^31 and d >= 0: d + 0.5 is exact in double, truncation = floor */
        const uint32_t f = (uint32_t)(d + 0.5);
        cdf[i + 1] = f;
        total += f;
    }
    if (total == 0) {
        PyMem_Free(cdf);
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "pmf has total mass 0 after quantisation");
        return NULL;
    }
    if (total >= ((uint64_t)1 << 31)) {
        PyMem_Free(cdf);
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "pmf total mass is too large");
        return NULL;
    }
    PyBuffer_Release(&view);

    /* rescale to the precision, cumulate, pin the end */
    for (Py_ssize_t i = 0; i <= n; i++)
        cdf[i] = (uint32_t)(((uint64_t)PROB_ONE * (uint64_t)cdf[i]) / total);
    for (Py_ssize_t i = 1; i <= n; i++)
        cdf[i] += cdf[i - 1];
    cdf[n] = (uint32_t)PROB_ONE;

    /* give every zero-width bin one count, taken from the narrowest bin wider than 1
     * (leftmost if tied) */
    for (Py_ssize_t i = 0; i < n; i++) {
        if (cdf[i] != cdf[i + 1])
            continue;
        uint32_t best_freq = UINT32_MAX;
        Py_ssize_t best = -1;
        for (Py_ssize_t j = 0; j < n; j++) {
            const uint32_t freq = cdf[j + 1] - cdf[j];
            if (freq > 1 && freq < best_freq) {
                best_freq = freq;
                best = j;
            }
        }
        if (best < 0) {
            PyMem_Free(cdf);
            PyErr_SetString(PyExc_ValueError, "cannot give every pmf entry a non-zero frequency");
            return NULL;
        }
        if (best < i) {
            for (Py_ssize_t j = best + 1; j <= i; j++)
                cdf[j]--;
        } else {
            for (Py_ssize_t j = i + 1; j <= best; j++)
                cdf[j]++;
        }
    }

    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n + 1) * 4);
    if (result != NULL) {
        int32_t *dst = (int32_t *)PyBytes_AS_STRING(result);
        for (Py_ssize_t i = 0; i <= n; i++)
            dst[i] = (int32_t)cdf[i];
    }
    PyMem_Free(cdf);
    return result;
}

/* ------------------------------------------------------------------------------------ */
/* module                                                                               */

static PyMethodDef module_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))rans_encode, METH_VARARGS | METH_KEYWORDS, encode_doc},
    {"quantize_cdf", (PyCFunction)rans_quantize_cdf, METH_O, quantize_cdf_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tcm_serve.codec._rans",
    .m_doc = "rANS entropy coder byte-compatible with CompressAI 1.2.x (64-bit state, 16-bit "
             "precision, 4-bit bypass coding).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__rans(void)
{
    if (PyType_Ready(&DecoderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    Py_INCREF(&DecoderType);
    if (PyModule_AddObject(m, "Decoder", (PyObject *)&DecoderType) < 0) {
        Py_DECREF(&DecoderType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "PRECISION", PRECISION) < 0 ||
        PyModule_AddIntConstant(m, "BYPASS_BITS", BYPASS_BITS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
