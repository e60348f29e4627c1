/* stream.h: tensor streaming. Splitting a model into chunks, and reassembling one incoming
 * stream of chunks into a staging area.
 *
 * A model (or an update) travels as a header listing its tensors, then Chunk messages, then an
 * end message with a SHA-256 of all tensor data in tensor order (docs/streaming.md). A chunk is
 * (tensor_index, offset within that tensor, data); it never spans two tensors and carries at most
 * max_chunk bytes (FC_STREAM_MAX_CHUNK, 1 MiB, by default).
 *
 * This module owns the chunking arithmetic, the reassembly rules and the staging buffer of one
 * stream. It never reads or writes sockets, never parses frames (proto/frame.h does), and never
 * holds more than the staging buffer plus a small, fixed amount of bookkeeping per announced
 * tensor: a 10 GB update costs the same bookkeeping as a 10 MB one.
 *
 * Ordering. Chunks of one stream must arrive in order: each chunk starts exactly at the next
 * expected byte of the concatenated tensor data (the "global offset"). This makes overlap and gap
 * detection O(1) with no per-byte or per-interval memory, lets the SHA-256 run incrementally as
 * bytes arrive (no second pass over a multi-GB buffer), and makes resumption trivial: the
 * acknowledged offset is the received prefix, and a resumed stream continues from it. A sender
 * over one ordered connection (TLS over TCP) produces exactly this order; an interval set would
 * only buy out-of-order delivery, which the transport never produces.
 *
 * Thread-safety: none. A splitter or a stage belongs to one thread at a time.
 */
#ifndef FC_STREAM_H
#define FC_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"

/* Largest chunk payload, in bytes, and the default for max_chunk everywhere. */
#define FC_STREAM_MAX_CHUNK ((size_t)1 << 20)
/* Default limit on the number of tensors a stream may announce. */
#define FC_STAGE_DEFAULT_MAX_TENSORS 65536u

#define FC_SHA256_BYTES 32
/* How far a stage whose provider evicts lets written or hashed bytes stay resident: every
 * window is dropped once the stage moves past it. */
#define FC_STAGE_EVICT_WINDOW ((uint64_t)16 << 20)

/* ---- SHA-256 (OpenSSL EVP), incremental ---- */

/* An incremental SHA-256. Zero-initialise, then fc_stream_hash_init. Holds one OpenSSL digest
 * context (a few hundred bytes). */
typedef struct fc_stream_hash {
    void *ctx; /* EVP_MD_CTX */
} fc_stream_hash;

/* Starts a hash. FC_ERR_NOMEM or FC_ERR_SYSTEM (OpenSSL failure, detail in err). On failure h
 * holds nothing and fc_stream_hash_free is still safe. */
fc_status fc_stream_hash_init(fc_stream_hash *h, fc_error *err);
/* Adds len bytes. FC_ERR_STATE if h was not initialised or is finished; FC_ERR_SYSTEM. */
fc_status fc_stream_hash_update(fc_stream_hash *h, const void *data, size_t len, fc_error *err);
/* Writes the digest and releases the context; h may then be initialised again. */
fc_status fc_stream_hash_final(fc_stream_hash *h, uint8_t out[FC_SHA256_BYTES], fc_error *err);
/* Releases the context if any. Safe on a zeroed or finished hash. */
void fc_stream_hash_free(fc_stream_hash *h);

/* SHA-256 of all tensor data of m, in tensor order (the stream hash). Tensors with NULL data
 * must have zero bytes; otherwise FC_ERR_INVALID. */
fc_status fc_stream_model_sha256(const fc_model *m, uint8_t out[FC_SHA256_BYTES], fc_error *err);

/* Writes the lowercase hex of n bytes plus a NUL into out (2n+1 bytes). Returns out. */
char *fc_stream_hex(const uint8_t *bytes, size_t n, char *out);

/* ---- splitter (sender side) ---- */

/* One chunk to send. data points into the source model (NULL when the splitter was built from
 * specs only: the caller then reads len bytes of tensor data from its own source, e.g. at byte
 * global_offset of the concatenated data). */
typedef struct fc_chunk_desc {
    uint32_t tensor_index;
    uint64_t offset;        /* byte offset within the tensor */
    uint64_t global_offset; /* byte offset within the concatenated tensor data */
    size_t len;             /* 1..max_chunk, a multiple of the tensor's element size */
    const uint8_t *data;
} fc_chunk_desc;

/* An iterator over the chunks of a layout. Caller-owned, allocation-free; borrows the model or
 * spec array, which must stay unchanged while it is in use. Fields are private. */
typedef struct fc_stream_splitter {
    const fc_model *model;       /* either this ... */
    const fc_tensor_spec *specs; /* ... or this */
    size_t count;
    size_t max_chunk;
    size_t tensor;     /* tensor holding the next byte */
    uint64_t offset;   /* next byte within that tensor */
    uint64_t global;   /* next byte within the concatenated data */
    uint64_t total;    /* bytes in all tensors */
    uint64_t cur_size; /* bytes of tensor `tensor` */
} fc_stream_splitter;

/* Prepares to split model m into chunks of at most max_chunk bytes (0 = FC_STREAM_MAX_CHUNK),
 * starting at byte start_offset of the concatenated data (0 for a whole model; the receiver's
 * acknowledged offset to resume). Each chunk's length is max_chunk rounded down to a whole
 * number of elements, or what is left of the tensor.
 * Errors: FC_ERR_INVALID if max_chunk > FC_STREAM_MAX_CHUNK, or smaller than one element of some
 * tensor, or a tensor with bytes has no data, or the model has more than UINT32_MAX tensors;
 * FC_ERR_OVERFLOW if the total size does not fit in 64 bits; FC_ERR_RANGE if start_offset is past
 * the end or not on an element boundary of the tensor it falls in. O(tensors); allocates nothing. */
fc_status fc_stream_split_model(fc_stream_splitter *sp, const fc_model *m, size_t max_chunk,
                                uint64_t start_offset, fc_error *err);

/* The same over a layout alone (data pointers in the descriptors are NULL). Specs are validated
 * as in fc_stream_split_model plus dtype/ndim checks (FC_ERR_DTYPE, FC_ERR_INVALID). */
fc_status fc_stream_split_specs(fc_stream_splitter *sp, const fc_tensor_spec *specs, size_t count,
                                size_t max_chunk, uint64_t start_offset, fc_error *err);

/* Fills *out with the next chunk and returns 1, or returns 0 when every byte has been produced.
 * Tensors of zero bytes produce no chunk. O(1) amortised. */
int fc_stream_split_next(fc_stream_splitter *sp, fc_chunk_desc *out);

/* Total bytes of the layout, and bytes already produced (including start_offset). */
uint64_t fc_stream_split_total(const fc_stream_splitter *sp);
uint64_t fc_stream_split_position(const fc_stream_splitter *sp);

/* ---- staging (receiver side) ---- */

/* Where the staging buffer comes from. Every staging buffer is obtained through one provider
 * call, so a server can count it against its memory budget or place it in a spill file.
 * acquire must return nbytes of writable memory (any content) in *out, or an error with a
 * detail; it is never called with nbytes == 0. release gets back exactly what acquire gave. */
typedef struct fc_stage_provider {
    const char *name; /* "heap", "spill", ... for messages */
    fc_status (*acquire)(void *ctx, uint64_t nbytes, void **out, fc_error *err);
    void (*release)(void *ctx, void *mem, uint64_t nbytes);
    void *ctx;
    /* Optional: bytes [off, off + len) of a buffer from acquire (nbytes long) are written and
     * will not be read again soon. A file-backed provider drops their pages from the process
     * (the file keeps the bytes; reading them faults them back in). NULL for memory that would
     * lose its contents. */
    void (*evict)(void *ctx, void *mem, uint64_t off, uint64_t len);
} fc_stage_provider;

/* The default provider: fc_malloc / fc_free. */
const fc_stage_provider *fc_stage_heap_provider(void);

/* Fills *p with a provider that backs each staging buffer with a file created in directory dir
 * (which p borrows: it must outlive every stage using p). The file is created with mkstemp,
 * unlinked at once (so nothing is left behind after a crash), its blocks reserved with
 * posix_fallocate (a full disk fails acquire with FC_ERR_IO rather than SIGBUS later), and mapped
 * MAP_SHARED. The page cache can then write staged bytes back to disk instead of holding them in
 * anonymous memory. Its evict drops the whole pages of a range from the mapping
 * (MADV_DONTNEED): a stage on it keeps about FC_STAGE_EVICT_WINDOW bytes resident while it is
 * written, hashed at finish, and read through fc_stage_done_with. */
void fc_stage_spill_provider(fc_stage_provider *p, const char *dir);

typedef struct fc_stage_config {
    /* Largest total of announced tensor bytes accepted. Required: 0 refuses every stream with
     * bytes (a stream of zero-size tensors only is still accepted). */
    uint64_t max_total_bytes;
    uint32_t max_tensors;               /* 0 = FC_STAGE_DEFAULT_MAX_TENSORS */
    size_t max_chunk;                   /* 0 = FC_STREAM_MAX_CHUNK; larger is FC_ERR_INVALID */
    const fc_stage_provider *provider;  /* NULL = fc_stage_heap_provider() */
    const char *label;                  /* "update" (default) or "model", for messages; static */
    /* 0: each chunk is hashed as it is copied in. 1: fc_stage_finish hashes the whole buffer in
     * one pass, so a server can check the end on its event loop (fc_stage_check_end) and leave
     * the hash to a worker thread. */
    int hash_at_finish;
} fc_stage_config;

typedef struct fc_stage fc_stage; /* opaque */

/* Creates the staging area for one incoming stream from its announced tensor specs and
 * announced total size (UpdateBegin.total_bytes / ModelBegin.total_bytes). Validates the layout:
 *   FC_ERR_INVALID  no tensors, a name empty / longer than FC_MAX_TENSOR_NAME / not UTF-8 /
 *                   containing a control character, ndim > FC_MAX_DIMS, bad config;
 *   FC_ERR_EXISTS   two tensors with the same name;
 *   FC_ERR_DTYPE    unknown dtype;
 *   FC_ERR_OVERFLOW a tensor's or the total's size does not fit in 64 bits;
 *   FC_ERR_LIMIT    more than max_tensors tensors, or total above max_total_bytes or SIZE_MAX;
 *   FC_ERR_PROTOCOL announced_total differs from the sum of the tensors' sizes;
 *   FC_ERR_NOMEM, or the provider's error.
 * Memory: the staging buffer (one provider call, of exactly the total size) plus the specs
 * (names included) and one 64-bit offset per tensor. The specs are copied; the caller keeps its
 * own. On success *out is owned by the caller (fc_stage_free). */
fc_status fc_stage_create(const fc_tensor_spec *specs, size_t count, uint64_t announced_total,
                          const fc_stage_config *cfg, fc_stage **out, fc_error *err);

/* Copies one chunk straight into place. Checks, in this order, each with its own detail:
 *   FC_ERR_STATE  the stage is finished or failed;
 *   FC_ERR_CHUNK  tensor_index out of range; len == 0;
 *   FC_ERR_LIMIT  len > max_chunk;
 *   FC_ERR_CHUNK  offset + len overflows, or runs past the tensor's end; offset or len not a
 *                 multiple of the element size; bytes after the whole stream was received;
 *                 overlap with bytes already received (this includes a duplicate chunk); a gap
 *                 before the chunk (it does not start at the next expected byte);
 *   FC_ERR_SYSTEM hashing failed.
 * A rejected chunk changes nothing: the stage stays as it was, and the caller decides whether
 * the stream goes on. Does O(len) work and allocates nothing. */
fc_status fc_stage_add_chunk(fc_stage *s, uint32_t tensor_index, uint64_t offset, const void *data,
                             size_t len, fc_error *err);
/* fc_stage_add_chunk in two steps, for a receiver that writes a chunk's payload straight into
 * place as it arrives: fc_stage_chunk_dst makes the same checks with the same errors, changes
 * nothing, and gives where the len bytes go; the caller writes them there, then
 * fc_stage_chunk_done records them (hash, eviction) as add_chunk would. Between the two the
 * stage must not be used otherwise. A chunk never completed leaves the stage as it was (the
 * bytes past fc_stage_received are not part of it). fc_stage_chunk_done: FC_ERR_STATE if len
 * does not fit what is left, FC_ERR_SYSTEM if hashing failed. */
fc_status fc_stage_chunk_dst(fc_stage *s, uint32_t tensor_index, uint64_t offset, size_t len,
                             uint8_t **dst, fc_error *err);
fc_status fc_stage_chunk_done(fc_stage *s, size_t len, fc_error *err);

/* Ends the stream: every byte must have been received (FC_ERR_CHUNK "update ended with N of M
 * bytes of 'name' missing", the stage stays open so the stream may still continue) and the
 * SHA-256 of the data must equal sha256 (FC_ERR_HASH "SHA-256 mismatch: announced .. computed
 * .."; the stage is then failed for good). sha256_len must be FC_SHA256_BYTES (else
 * FC_ERR_PROTOCOL, stage unchanged). On FC_OK the stage is complete and its data readable. */
fc_status fc_stage_finish(fc_stage *s, const uint8_t *sha256, size_t sha256_len, fc_error *err);
/* The checks of fc_stage_finish that need no hashing, with the same errors (FC_ERR_STATE,
 * FC_ERR_PROTOCOL, FC_ERR_CHUNK); changes nothing. FC_OK means only the hash is left to check. */
fc_status fc_stage_check_end(const fc_stage *s, size_t sha256_len, fc_error *err);

/* The reader has finished with bytes [p, p + len) of the complete staging buffer (pointers from
 * fc_stage_view_model) and will not read them again soon: a stage whose provider evicts (a
 * spill file) drops those pages from memory; any other stage ignores the call. */
void fc_stage_done_with(const fc_stage *s, const void *p, size_t len);

/* Bytes received so far: the contiguous prefix of the concatenated data, which is what the
 * receiver acknowledges (Ack.offset) and where a resumed stream must restart. */
uint64_t fc_stage_received(const fc_stage *s);
/* Announced total size. */
uint64_t fc_stage_total(const fc_stage *s);
/* 1 once fc_stage_finish succeeded. */
int fc_stage_complete(const fc_stage *s);

/* Checks a resumed stream's starting offset (UpdateBegin.resume_offset / ModelBegin.offset)
 * against what was received: it must be exactly fc_stage_received(). FC_ERR_RANGE otherwise,
 * FC_ERR_STATE if the stage is finished or failed. */
fc_status fc_stage_check_resume(const fc_stage *s, uint64_t resume_offset, fc_error *err);

/* Number of tensors and tensor i's spec (borrowed from the stage), for i < count. */
size_t fc_stage_tensor_count(const fc_stage *s);
const fc_tensor_spec *fc_stage_spec(const fc_stage *s, size_t i);

/* Fills *out (which must be empty: FC_MODEL_INIT) with a model whose tensors borrow the staged
 * bytes. Valid until fc_stage_free; free it with fc_model_free before or after. FC_ERR_STATE if
 * the stage is not complete; FC_ERR_NOMEM. */
fc_status fc_stage_view_model(const fc_stage *s, fc_model *out, fc_error *err);

/* Releases the staging buffer (through its provider) and everything else. NULL is fine. */
void fc_stage_free(fc_stage *s);

#endif
