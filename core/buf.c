/* buf.c: growable byte buffer and bounds-checked reader.
 *
 * buf.c owns the bytes of an fc_buf; an fc_reader only borrows its input and never reads
 * outside [data, data + len). */
#include "core/buf.h"

#include <string.h>

#include "core/alloc.h"

fc_status fc_buf_reserve(fc_buf *b, size_t extra) {
    size_t need;
    if (__builtin_add_overflow(b->len, extra, &need))
        return FC_ERR_OVERFLOW;
    if (need <= b->cap)
        return FC_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (__builtin_mul_overflow(cap, (size_t)2, &cap)) {
            cap = need;
            break;
        }
    }
    uint8_t *p = fc_realloc(b->data, cap);
    if (!p)
        return FC_ERR_NOMEM;
    b->data = p;
    b->cap = cap;
    return FC_OK;
}

fc_status fc_buf_append(fc_buf *b, const void *data, size_t len) {
    if (len == 0)
        return FC_OK;
    /* data may point into this buffer; growing would free it, so remember its offset. */
    const uint8_t *src = data;
    int inside = b->data && src >= b->data && src < b->data + b->cap;
    size_t src_off = inside ? (size_t)(src - b->data) : 0;
    fc_status st = fc_buf_reserve(b, len);
    if (st != FC_OK)
        return st;
    memmove(b->data + b->len, inside ? b->data + src_off : src, len);
    b->len += len;
    return FC_OK;
}

fc_status fc_buf_append_u8(fc_buf *b, uint8_t v) { return fc_buf_append(b, &v, 1); }

fc_status fc_buf_append_u32le(fc_buf *b, uint32_t v) {
    uint8_t p[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    return fc_buf_append(b, p, 4);
}

fc_status fc_buf_append_u64le(fc_buf *b, uint64_t v) {
    uint8_t p[8];
    fc_store_u64le(p, v);
    return fc_buf_append(b, p, 8);
}

fc_status fc_buf_append_f64le(fc_buf *b, double v) {
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    return fc_buf_append_u64le(b, bits);
}

fc_status fc_buf_append_f64le_array(fc_buf *b, const double *v, size_t n) {
    if (n > SIZE_MAX / sizeof(double))
        return FC_ERR_RANGE;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return fc_buf_append(b, v, n * sizeof(double));
#else
    fc_status st = fc_buf_reserve(b, n * sizeof(double));
    for (size_t i = 0; st == FC_OK && i < n; i++)
        st = fc_buf_append_f64le(b, v[i]);
    return st;
#endif
}

void fc_buf_consume(fc_buf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

void fc_buf_reset(fc_buf *b) { b->len = 0; }

void fc_buf_free(fc_buf *b) {
    fc_free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void fc_reader_init(fc_reader *r, const void *data, size_t len) {
    /* Empty input may come as NULL; a zero-length read must still succeed, and it returns
     * data + pos, which must not be NULL (nor NULL + 0, undefined behaviour). */
    static const uint8_t empty[1];
    r->data = data ? data : empty;
    r->len = len;
    r->pos = 0;
    r->failed = 0;
}

const uint8_t *fc_read_span(fc_reader *r, size_t n) {
    if (r->failed || n > r->len - r->pos) {
        r->failed = 1;
        return NULL;
    }
    const uint8_t *p = r->data + r->pos;
    r->pos += n;
    return p;
}

fc_status fc_read_bytes(fc_reader *r, void *out, size_t n) {
    const uint8_t *p = fc_read_span(r, n);
    if (!p)
        return FC_ERR_FORMAT;
    if (n)
        memcpy(out, p, n);
    return FC_OK;
}

fc_status fc_read_u8(fc_reader *r, uint8_t *v) { return fc_read_bytes(r, v, 1); }

fc_status fc_read_u32le(fc_reader *r, uint32_t *v) {
    const uint8_t *p = fc_read_span(r, 4);
    if (!p)
        return FC_ERR_FORMAT;
    *v = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    return FC_OK;
}

fc_status fc_read_u64le(fc_reader *r, uint64_t *v) {
    const uint8_t *p = fc_read_span(r, 8);
    if (!p)
        return FC_ERR_FORMAT;
    *v = fc_load_u64le(p);
    return FC_OK;
}

fc_status fc_read_f64le(fc_reader *r, double *v) {
    uint64_t bits;
    fc_status st = fc_read_u64le(r, &bits);
    if (st == FC_OK)
        memcpy(v, &bits, sizeof *v);
    return st;
}
