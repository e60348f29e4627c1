/* spool.c: row storage for retaining rules (see spool.h). It owns the copies, the spool file and
 * its mapping; it never writes to a borrowed row and never keeps a file name on disk (the file
 * is unlinked right after mkstemp, so no error path or crash can leave it behind).
 */
#include "aggregators/spool.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "aggregators/kernels.h"
#include "core/alloc.h"

enum { ROW_BORROWED = 1, ROW_MEMORY = 2, ROW_FILE = 3 };

/* Rows in the file start on this boundary, so f64 rows are aligned in the mapping. */
#define SPOOL_ALIGN 64u
/* Conversion buffer for f16/bf16 rows written to the file, in elements. */
#define SPOOL_CONV_ELEMS 16384u
/* agg_spool_release_below acts at most once per this many coordinates (a madvise per row). */
#define SPOOL_RELEASE_STEP ((size_t)1 << 18)

typedef struct spool_row {
    int kind;
    fc_dtype dtype;   /* element dtype as stored / borrowed */
    const void *data; /* borrowed pointer, or memory copy; file rows: set by seal */
    void *owned;      /* ROW_MEMORY: the copy to free */
    uint64_t offset;  /* ROW_FILE: byte offset in the file */
} spool_row;

struct agg_spool {
    size_t dim;
    size_t budget; /* 0 = unlimited */
    char dir[512];
    spool_row *rows;
    size_t n, cap;
    size_t mem_bytes;
    int fd;              /* -1 until the first row goes to disk */
    uint64_t file_bytes; /* bytes written, including alignment padding */
    void *map;           /* read-only mapping of the whole file after seal */
    size_t map_len;
    int sealed;
    int has_f64;
    size_t released; /* coordinates already released from the mapping */
};

fc_status agg_spool_create(const agg_context *ctx, agg_spool **out, fc_error *err) {
    *out = NULL;
    if (ctx == NULL || ctx->dim == 0)
        return fc_error_set(err, FC_ERR_INVALID, "spool: dimension must be at least 1");
    agg_spool *s = fc_calloc(1, sizeof *s);
    if (s == NULL)
        return fc_error_set(err, FC_ERR_NOMEM, "spool: out of memory");
    s->dim = ctx->dim;
    s->budget = ctx->memory_budget;
    s->fd = -1;
    const char *dir = ctx->spool_dir;
    if (dir == NULL || dir[0] == '\0')
        dir = getenv("TMPDIR");
    if (dir == NULL || dir[0] == '\0')
        dir = "/tmp";
    if (strlen(dir) + sizeof "/fc-spool-XXXXXX" > sizeof s->dir) {
        fc_free(s);
        return fc_error_set(err, FC_ERR_INVALID, "spool: folder name too long: %.64s...", dir);
    }
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    *out = s;
    return FC_OK;
}

size_t agg_spool_rows(const agg_spool *s) { return s->n; }
size_t agg_spool_dim(const agg_spool *s) { return s->dim; }
int agg_spool_has_f64(const agg_spool *s) { return s->has_f64; }
size_t agg_spool_mem_bytes(const agg_spool *s) { return s->mem_bytes; }
uint64_t agg_spool_file_bytes(const agg_spool *s) { return s->file_bytes; }

static fc_status open_file(agg_spool *s, fc_error *err) {
    char path[sizeof s->dir + 32];
    snprintf(path, sizeof path, "%s/fc-spool-XXXXXX", s->dir);
    int fd = mkstemp(path);
    if (fd < 0)
        return fc_error_set(err, FC_ERR_IO, "spool: cannot create a file in '%s': %s", s->dir,
                            strerror(errno));
    /* Unlinked at once: the data lives as long as the descriptor and never outlives us. */
    if (unlink(path) != 0) {
        int e = errno;
        close(fd);
        return fc_error_set(err, FC_ERR_IO, "spool: cannot unlink '%s': %s", path, strerror(e));
    }
    s->fd = fd;
    return FC_OK;
}

static fc_status write_at(agg_spool *s, uint64_t off, const void *data, size_t len, fc_error *err) {
    const unsigned char *p = data;
    while (len > 0) {
        size_t chunk = len > ((size_t)1 << 30) ? ((size_t)1 << 30) : len;
        ssize_t w = pwrite(s->fd, p, chunk, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return fc_error_set(err, FC_ERR_IO, "spool: writing to the spool file in '%s': %s",
                                s->dir, strerror(errno));
        }
        if (w == 0)
            return fc_error_set(err, FC_ERR_IO, "spool: short write to the spool file in '%s'",
                                s->dir);
        p += w;
        off += (uint64_t)w;
        len -= (size_t)w;
    }
    return FC_OK;
}

/* Writes the row converted to its stored dtype at off. */
static fc_status write_row(agg_spool *s, uint64_t off, const agg_update *u, fc_error *err) {
    size_t dim = s->dim;
    if (u->dtype == FC_DTYPE_F32 || u->dtype == FC_DTYPE_F64)
        return write_at(s, off, u->data, dim * fc_dtype_size(u->dtype), err);
    float *conv = fc_mallocarray(SPOOL_CONV_ELEMS, sizeof *conv);
    if (conv == NULL)
        return fc_error_set(err, FC_ERR_NOMEM, "spool: out of memory");
    fc_status st = FC_OK;
    const unsigned char *src = u->data;
    for (size_t j = 0; j < dim && st == FC_OK; j += SPOOL_CONV_ELEMS) {
        size_t m = dim - j < SPOOL_CONV_ELEMS ? dim - j : SPOOL_CONV_ELEMS;
        st = fc_convert_to_f32(u->dtype, src + j * 2, m, conv);
        if (st != FC_OK) {
            fc_error_set(err, st, "spool: cannot convert %s data", fc_dtype_name(u->dtype));
            break;
        }
        st = write_at(s, off + (uint64_t)j * sizeof(float), conv, m * sizeof(float), err);
    }
    fc_free(conv);
    return st;
}

fc_status agg_spool_append(agg_spool *s, const agg_update *u, fc_error *err) {
    if (s->sealed)
        return fc_error_set(err, FC_ERR_STATE, "spool: append after seal");
    if (!agg_k_dtype_ok(u->dtype) || u->data == NULL)
        return fc_error_set(err, FC_ERR_DTYPE, "spool: update has no data or dtype %d",
                            (int)u->dtype);
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        spool_row *rows = fc_realloc(s->rows, cap * sizeof *rows);
        if (rows == NULL || cap < s->cap)
            return fc_error_set(err, FC_ERR_NOMEM, "spool: out of memory for row %zu", s->n);
        s->rows = rows;
        s->cap = cap;
    }
    spool_row row = {0};
    fc_dtype stored = u->dtype == FC_DTYPE_F64 ? FC_DTYPE_F64 : FC_DTYPE_F32;
    size_t bytes;
    if (__builtin_mul_overflow(s->dim, fc_dtype_size(stored), &bytes))
        return fc_error_set(err, FC_ERR_OVERFLOW, "spool: row of %zu elements too large", s->dim);

    if (u->data_stable) {
        row.kind = ROW_BORROWED;
        row.dtype = u->dtype;
        row.data = u->data;
    } else if (s->fd < 0 &&
               (s->budget == 0 || (bytes <= s->budget && s->mem_bytes <= s->budget - bytes))) {
        void *copy = fc_malloc(bytes);
        if (copy == NULL)
            return fc_error_set(err, FC_ERR_NOMEM, "spool: out of memory for a %zu-byte row",
                                bytes);
        if (stored == u->dtype) {
            memcpy(copy, u->data, bytes);
        } else {
            fc_status st = fc_convert_to_f32(u->dtype, u->data, s->dim, copy);
            if (st != FC_OK) {
                fc_free(copy);
                return fc_error_set(err, st, "spool: cannot convert %s data",
                                    fc_dtype_name(u->dtype));
            }
        }
        row.kind = ROW_MEMORY;
        row.dtype = stored;
        row.data = copy;
        row.owned = copy;
        s->mem_bytes += bytes;
    } else {
        if (s->fd < 0) {
            fc_status st = open_file(s, err);
            if (st != FC_OK)
                return st;
        }
        uint64_t off = (s->file_bytes + SPOOL_ALIGN - 1) / SPOOL_ALIGN * SPOOL_ALIGN;
        if (off + bytes < off || off + bytes > (uint64_t)SIZE_MAX)
            return fc_error_set(err, FC_ERR_OVERFLOW, "spool: spool file too large");
        fc_status st = write_row(s, off, u, err);
        if (st != FC_OK)
            return st; /* file_bytes unchanged: the partial row is never read */
        row.kind = ROW_FILE;
        row.dtype = stored;
        row.offset = off;
        s->file_bytes = off + bytes;
    }
    if (row.dtype == FC_DTYPE_F64)
        s->has_f64 = 1;
    s->rows[s->n++] = row;
    return FC_OK;
}

fc_status agg_spool_seal(agg_spool *s, fc_error *err) {
    if (s->sealed)
        return FC_OK;
    if (s->fd >= 0 && s->file_bytes > 0) {
        void *map = mmap(NULL, (size_t)s->file_bytes, PROT_READ, MAP_SHARED, s->fd, 0);
        if (map == MAP_FAILED)
            return fc_error_set(err, FC_ERR_IO, "spool: cannot map the %llu-byte spool file: %s",
                                (unsigned long long)s->file_bytes, strerror(errno));
        s->map = map;
        s->map_len = (size_t)s->file_bytes;
        for (size_t i = 0; i < s->n; i++)
            if (s->rows[i].kind == ROW_FILE)
                s->rows[i].data = (const unsigned char *)map + s->rows[i].offset;
    }
    s->sealed = 1;
    return FC_OK;
}

const void *agg_spool_row(const agg_spool *s, size_t i, fc_dtype *dt) {
    assert(s->sealed && i < s->n);
    if (dt != NULL)
        *dt = s->rows[i].dtype;
    return s->rows[i].data;
}

void agg_spool_block_f32(const agg_spool *s, const size_t *rows, size_t nrows, size_t j0, size_t j1,
                         float *out, size_t stride) {
    assert(s->sealed && j0 <= j1 && j1 <= s->dim && stride >= j1 - j0 && !s->has_f64);
    if (rows == NULL)
        nrows = s->n;
    size_t w = j1 - j0;
    for (size_t r = 0; r < nrows; r++) {
        const spool_row *row = &s->rows[rows ? rows[r] : r];
        float *dst = out + r * stride;
        switch (row->dtype) {
        case FC_DTYPE_F32:
            memcpy(dst, (const float *)row->data + j0, w * sizeof(float));
            break;
        case FC_DTYPE_F16:
        case FC_DTYPE_BF16:
            agg_k_to_f32(row->dtype, (const uint16_t *)row->data + j0, dst, w);
            break;
        default:
            assert(0 && "f64 row in an f32 block");
        }
    }
}

void agg_spool_block_f64(const agg_spool *s, const size_t *rows, size_t nrows, size_t j0, size_t j1,
                         double *out, size_t stride) {
    assert(s->sealed && j0 <= j1 && j1 <= s->dim && stride >= j1 - j0);
    if (rows == NULL)
        nrows = s->n;
    size_t w = j1 - j0;
    for (size_t r = 0; r < nrows; r++) {
        const spool_row *row = &s->rows[rows ? rows[r] : r];
        const unsigned char *base = row->data;
        agg_k_to_f64(row->dtype, base + j0 * fc_dtype_size(row->dtype), out + r * stride, w);
    }
}

void agg_spool_release_below(agg_spool *s, size_t j) {
    if (s->map == NULL || j <= s->released || j - s->released < SPOOL_RELEASE_STEP)
        return;
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t pg = page > 0 ? (uintptr_t)page : 4096u;
    for (size_t i = 0; i < s->n; i++) {
        const spool_row *row = &s->rows[i];
        if (row->kind != ROW_FILE)
            continue;
        uintptr_t a = (uintptr_t)row->data;
        uintptr_t b = a + j * fc_dtype_size(row->dtype);
        a = (a + pg - 1) / pg * pg;
        b = b / pg * pg;
        /* A clean read-only shared file mapping: dropping the pages loses nothing, a later
         * read would fault them back in from the file. */
        if (b > a)
            (void)madvise((void *)a, b - a, MADV_DONTNEED);
    }
    s->released = j;
}

void agg_spool_destroy(agg_spool *s) {
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++)
        fc_free(s->rows[i].owned);
    fc_free(s->rows);
    if (s->map != NULL)
        munmap(s->map, s->map_len);
    if (s->fd >= 0)
        close(s->fd);
    fc_free(s);
}
