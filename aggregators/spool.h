/* spool.h: storage for rules that need every update of a round ("retaining" rules: median,
 * trimmed_mean, krum, multikrum, bulyan, geomed, ida).
 *
 * A spool holds n rows of dim elements, appended in index order. Each row is kept in one of
 * three ways:
 *   - borrowed: the update was data_stable (e.g. a memory-mapped safetensors file), so the spool
 *     keeps the caller's pointer and its dtype (f32, f16, bf16 or f64) and copies nothing;
 *   - in memory: a copy, while the copies stay within ctx->memory_budget bytes (0 = unlimited);
 *   - on disk: appended to one spool file under ctx->spool_dir (else $TMPDIR, else /tmp), which
 *     is unlinked as soon as it is created and memory-mapped read-only for reading. Once a row
 *     has gone to disk, every later copied row goes there too.
 * Copies are stored as f32 for f32, f16 and bf16 input (exact: every f16/bf16 value is an f32
 * value) and as f64 for f64 input (exact; narrowing it would make a retaining rule disagree with
 * the streaming ones, which fold f64 input unrounded). So the spool never changes a value.
 *
 * Readers get a row pointer with its dtype, or a block: coordinates [j0, j1) of a list of rows,
 * converted to f32 or f64 (exact widening). The spool never interprets the values and never
 * touches the caller's memory beyond reading it.
 */
#ifndef FC_AGG_SPOOL_H
#define FC_AGG_SPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "aggregators/agg.h"

typedef struct agg_spool agg_spool;

/* Creates an empty spool for vectors of ctx->dim elements, honouring ctx->memory_budget and
 * ctx->spool_dir (both read now; ctx is not kept). No file is created until one is needed.
 * FC_ERR_INVALID for dim 0, FC_ERR_NOMEM. */
fc_status agg_spool_create(const agg_context *ctx, agg_spool **out, fc_error *err);

/* Appends u's vector as the next row (index agg_spool_rows() before the call). Keeps the pointer
 * when u->data_stable is set; otherwise copies into memory or the spool file. FC_ERR_DTYPE for
 * an unknown dtype, FC_ERR_IO (with the folder and errno text) when the spool file cannot be
 * created or written, FC_ERR_NOMEM, FC_ERR_OVERFLOW. On error the spool is unchanged. */
fc_status agg_spool_append(agg_spool *s, const agg_update *u, fc_error *err);

size_t agg_spool_rows(const agg_spool *s);
size_t agg_spool_dim(const agg_spool *s);
/* 1 if some row is f64 (readers that want exact values then work in f64), else 0. */
int agg_spool_has_f64(const agg_spool *s);
/* Bytes copied into memory / into the spool file so far. */
size_t agg_spool_mem_bytes(const agg_spool *s);
uint64_t agg_spool_file_bytes(const agg_spool *s);

/* Makes every row readable: maps the spool file (if any). Must be called after the last append
 * and before any read; appending afterwards is FC_ERR_STATE. FC_ERR_IO if mmap fails. */
fc_status agg_spool_seal(agg_spool *s, fc_error *err);

/* Row i (i < rows) and its element dtype (f32, f16, bf16 or f64). Valid until destroy. */
const void *agg_spool_row(const agg_spool *s, size_t i, fc_dtype *dt);

/* Copies coordinates [j0, j1) of rows rows[0..nrows) (every row in order if rows is NULL, with
 * nrows = agg_spool_rows) into out: row r goes to out + r*stride, converted exactly. j0 <= j1 <=
 * dim and stride >= j1 - j0 are the caller's duty (asserted). The _f32 form must not be used
 * when agg_spool_has_f64. */
void agg_spool_block_f32(const agg_spool *s, const size_t *rows, size_t nrows, size_t j0, size_t j1,
                         float *out, size_t stride);
void agg_spool_block_f64(const agg_spool *s, const size_t *rows, size_t nrows, size_t j0, size_t j1,
                         double *out, size_t stride);

/* Hint: no coordinate below j is read again. Lets the spool drop the already-read part of its
 * file mapping from memory (the data stays in the file). Never touches borrowed rows. */
void agg_spool_release_below(agg_spool *s, size_t j);

/* Frees the copies, unmaps and closes the spool file. NULL is a no-op. */
void agg_spool_destroy(agg_spool *s);

#endif
