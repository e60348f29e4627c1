/* safetensors.h: reading and writing the safetensors file format.
 *
 * A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (one object
 * mapping tensor names to {"dtype", "shape", "data_offsets"}, plus an optional "__metadata__"
 * string->string map), then the data section: every tensor's little-endian bytes, back to back.
 *
 * This module owns the format: strict validation of foreign files (every header that lies about
 * offsets, shapes or dtypes is an error that names the file, the tensor and the numbers), and
 * crash-safe writing (temporary file, fsync, rename). It never trusts a length from a file before
 * checking it against the file size and the limits below, and it never needs a whole model in
 * one buffer to write one. See docs/safetensors.md.
 *
 * Thread-safety: distinct objects may be used from distinct threads; one object is not to be
 * shared without a lock. Nothing here blocks on anything but local file I/O.
 */
#ifndef FC_SAFETENSORS_H
#define FC_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/status.h"
#include "core/tensor.h"

/* Largest JSON header accepted or written: 100 MB, decimal (100,000,000 bytes), as in the
 * reference implementation. */
#define FC_ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

/* One metadata pair. Strings are NUL-terminated UTF-8. */
typedef struct fc_st_meta {
    const char *key;
    const char *value;
} fc_st_meta;

/* ---- reading ---- */

/* A parsed file: the model (whose tensors borrow their data from the file's bytes) and the
 * metadata. Opaque; freed by fc_st_close. */
typedef struct fc_st_file fc_st_file;

/* Memory-maps path read-only and validates it (see fc_st_parse for what is checked). On success
 * *out owns the mapping; the tensors of fc_st_model(*out) point into it and stay valid until
 * fc_st_close. The mapping is read-only: writing through a tensor's data pointer faults. The file
 * must not be truncated while it is open (reading the lost pages would raise SIGBUS); fedcoord
 * only ever replaces files by rename, which is safe.
 * Blocks on file I/O. Errors: FC_ERR_IO (open/stat/mmap failed), plus those of fc_st_parse. Every
 * message starts with path. */
fc_status fc_st_open(const char *path, fc_st_file **out, fc_error *err);

/* Validates a complete safetensors image of len bytes at buf (borrowed: buf must outlive *out,
 * whose tensors point into it). name is used only in error messages (a path, or "<memory>").
 * Checks, in this order:
 *   - len >= 8; header length N <= FC_ST_MAX_HEADER (FC_ERR_LIMIT); 8 + N <= len;
 *   - the header is one JSON object starting at its first byte (UTF-8, no duplicate keys at any
 *     level, only whitespace after it; FC_ERR_FORMAT);
 *   - "__metadata__", if present, is an object whose values are all strings;
 *   - every other key is a tensor name of 1..FC_MAX_TENSOR_NAME bytes whose value has exactly the
 *     keys "dtype", "shape" and "data_offsets";
 *   - dtype is "F32", "F16", "BF16" or "F64" (anything else, e.g. "I64": FC_ERR_DTYPE);
 *   - shape is an array of at most FC_MAX_DIMS non-negative integers (more: FC_ERR_LIMIT);
 *   - data_offsets is [begin, end] with 0 <= begin <= end;
 *   - element count * dtype size == end - begin, overflow-checked (FC_ERR_OVERFLOW);
 *   - sorted by offset, the tensors tile the data section exactly: no overlap, no gap, no byte
 *     beyond the section and no trailing byte after the last tensor (FC_ERR_FORMAT).
 * The model's tensors are ordered by data offset (zero-size tensors sharing an offset are
 * ordered by name), whatever the JSON key order. Errors: the above, FC_ERR_NOMEM. */
fc_status fc_st_parse(const void *buf, size_t len, const char *name, fc_st_file **out,
                      fc_error *err);

/* The model. Tensors borrow their data (owns_data == 0); data pointers are not necessarily
 * aligned for their dtype (files from other tools may have unpadded headers), so read them with
 * memcpy or fc_convert_to_f32/f64, not by casting. */
const fc_model *fc_st_model(const fc_st_file *f);

/* Number of metadata pairs, and pair i (in header order). Strings are owned by f. */
size_t fc_st_meta_count(const fc_st_file *f);
fc_st_meta fc_st_meta_at(const fc_st_file *f, size_t i);
/* The value for key, or NULL if absent. Owned by f. */
const char *fc_st_meta_get(const fc_st_file *f, const char *key);

/* Offset of the data section from the start of the file (8 + header length). */
uint64_t fc_st_data_start(const fc_st_file *f);

/* Unmaps and frees. NULL is allowed. */
void fc_st_close(fc_st_file *f);

/* Reads path into *out as a model that owns copies of its data, so the file is not kept open.
 * *out must be empty (FC_MODEL_INIT); on error it is left empty. Errors: those of fc_st_open,
 * FC_ERR_NOMEM. */
fc_status fc_st_read_model(const char *path, fc_model *out, fc_error *err);

/* Returns in *out a newly allocated array (free with fc_free) of the tensor's elements widened
 * or copied to f32 / f64. Widening from f16, bf16 and f32 is exact; f64 -> f32 rounds to
 * nearest. An empty tensor gives a valid one-byte allocation. Errors: FC_ERR_NOMEM,
 * FC_ERR_OVERFLOW, FC_ERR_DTYPE. */
fc_status fc_st_tensor_to_f32(const fc_tensor *t, float **out, fc_error *err);
fc_status fc_st_tensor_to_f64(const fc_tensor *t, double **out, fc_error *err);

/* ---- writing ---- */

/* Appends to out the first part of a safetensors file for these specs, in the given order: the
 * 8-byte length, then the JSON header ("__metadata__" first if meta_count > 0), padded with
 * spaces so that the data section starts at a multiple of 8. *data_len receives the size of the
 * data section that must follow. Specs need distinct names (not "__metadata__") of
 * 1..FC_MAX_TENSOR_NAME bytes of valid UTF-8, valid dtypes, ndim <= FC_MAX_DIMS and dimensions
 * and offsets below 2^63 (JSON integers); metadata keys must be distinct.
 * Errors: FC_ERR_INVALID, FC_ERR_EXISTS (duplicate name), FC_ERR_DTYPE, FC_ERR_OVERFLOW,
 * FC_ERR_LIMIT (header over FC_ST_MAX_HEADER), FC_ERR_NOMEM. On error out is unchanged. */
fc_status fc_st_encode_header(const fc_tensor_spec *specs, size_t count, const fc_st_meta *meta,
                              size_t meta_count, fc_buf *out, uint64_t *data_len, fc_error *err);

/* A streaming writer. Opaque. */
typedef struct fc_st_writer fc_st_writer;

/* Creates path + ".tmp.XXXXXX" (mkstemp, mode 0600) in path's directory and writes the header for
 * specs (see fc_st_encode_header). The caller then supplies exactly the data section through
 * fc_st_writer_write, tensor after tensor in spec order, in chunks of any size, and ends with
 * fc_st_writer_finish or fc_st_writer_abort. path is not touched until finish succeeds.
 * Blocks on file I/O. Errors: those of fc_st_encode_header, FC_ERR_IO. On error nothing is left
 * on disk and *out is NULL. */
fc_status fc_st_writer_begin(const char *path, const fc_tensor_spec *specs, size_t count,
                             const fc_st_meta *meta, size_t meta_count, fc_st_writer **out,
                             fc_error *err);

/* Appends len bytes of the data section. Writing more than the header announced is
 * FC_ERR_INVALID; a failed write is FC_ERR_IO. After an error the writer is failed: further
 * writes return the same error, and finish fails. The writer buffers internally. */
fc_status fc_st_writer_write(fc_st_writer *w, const void *data, size_t len, fc_error *err);

/* Bytes of the data section written so far, and announced in total. */
uint64_t fc_st_writer_written(const fc_st_writer *w);
uint64_t fc_st_writer_total(const fc_st_writer *w);

/* Checks that exactly the announced number of bytes was written, flushes, fsyncs, renames the
 * temporary file over path (atomically replacing any existing file) and fsyncs the directory.
 * Always frees w. On error the temporary file is removed and path is left as it was (except for a
 * failure of the final directory fsync, FC_ERR_IO, when the new file is already in place).
 * Errors: FC_ERR_INVALID (too few bytes, or too many earlier), FC_ERR_IO. */
fc_status fc_st_writer_finish(fc_st_writer *w, fc_error *err);

/* Removes the temporary file and frees w. NULL is allowed. */
void fc_st_writer_abort(fc_st_writer *w);

/* Writes model m to path through the streaming writer, tensors in model order. Errors: those of
 * fc_st_writer_begin/write/finish. */
fc_status fc_st_write_model(const char *path, const fc_model *m, const fc_st_meta *meta,
                            size_t meta_count, fc_error *err);

#endif
