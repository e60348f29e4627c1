/* buf.h: a growable byte buffer and little/big-endian helpers.
 *
 * fc_buf owns its bytes. Growth is geometric and overflow-checked; a failed growth leaves the
 * buffer as it was.
 */
#ifndef FC_BUF_H
#define FC_BUF_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

typedef struct fc_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
} fc_buf;

#define FC_BUF_INIT {NULL, 0, 0}

/* Ensures room for `extra` more bytes. FC_ERR_NOMEM or FC_ERR_OVERFLOW on failure. */
fc_status fc_buf_reserve(fc_buf *b, size_t extra);
fc_status fc_buf_append(fc_buf *b, const void *data, size_t len);
fc_status fc_buf_append_u8(fc_buf *b, uint8_t v);
fc_status fc_buf_append_u32le(fc_buf *b, uint32_t v);
fc_status fc_buf_append_u64le(fc_buf *b, uint64_t v);
fc_status fc_buf_append_f64le(fc_buf *b, double v);
/* Appends n doubles as little-endian f64 (one copy on little-endian hosts). */
fc_status fc_buf_append_f64le_array(fc_buf *b, const double *v, size_t n);
/* Drops the first n bytes (n <= len), moving the rest to the front. */
void fc_buf_consume(fc_buf *b, size_t n);
void fc_buf_reset(fc_buf *b); /* len = 0, keeps capacity */
void fc_buf_free(fc_buf *b);

/* A bounds-checked reader over borrowed bytes. Every read fails with FC_ERR_FORMAT once the
 * input runs out, and the reader stays failed. */
typedef struct fc_reader {
    const uint8_t *data;
    size_t len;
    size_t pos;
    int failed;
} fc_reader;

void fc_reader_init(fc_reader *r, const void *data, size_t len);
fc_status fc_read_u8(fc_reader *r, uint8_t *v);
fc_status fc_read_u32le(fc_reader *r, uint32_t *v);
fc_status fc_read_u64le(fc_reader *r, uint64_t *v);
fc_status fc_read_f64le(fc_reader *r, double *v);
fc_status fc_read_bytes(fc_reader *r, void *out, size_t n);
/* Returns a pointer to the next n bytes and advances, or NULL (and fails) if short. */
const uint8_t *fc_read_span(fc_reader *r, size_t n);

static inline uint32_t fc_load_u32be(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void fc_store_u32be(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline uint64_t fc_load_u64le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static inline void fc_store_u64le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

#endif
