/* frame.h: the frame codec of the fedcoord wire protocol.
 *
 * A frame is a 4-byte big-endian length N, then N bytes of one protobuf fedcoord.v1.Envelope
 * (docs/protocol.md, "Framing"). This module owns the byte layer: encoding an Envelope into a
 * frame, cutting an arbitrarily split byte stream back into frames, and turning a frame's bytes
 * into an unpacked Envelope with every structural defect reported as an fc_status. It never
 * interprets what a message means (proto/wire.c does), never allocates more than the frame size
 * allows, and never reads outside the bytes it was given.
 *
 * Limits
 *   N counts the Envelope bytes only, not the 4-byte prefix. N = 0 is an error (an Envelope must
 *   carry a body). N > max_frame is FC_ERR_LIMIT, detected from the prefix alone, before any
 *   allocation. The default max_frame is FC_FRAME_MAX_DEFAULT (4 MiB).
 *
 * Thread-safety: none of these functions share state; one decoder belongs to one thread.
 */
#ifndef FC_FRAME_H
#define FC_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/status.h"
#include "fedcoord.pb-c.h"

#define FC_FRAME_PREFIX_BYTES 4
/* Default and largest allowed maximum Envelope size (N) of one frame. */
#define FC_FRAME_MAX_DEFAULT ((size_t)4 << 20)
#define FC_FRAME_MAX_CEILING ((size_t)UINT32_MAX)
/* Largest Chunk.data payload accepted anywhere. */
#define FC_CHUNK_MAX_DATA ((size_t)1 << 20)

typedef Fedcoord__V1__Envelope fc_envelope;

/* ---- encoding ---- */

/* Appends one frame (prefix + packed env) to out. max_frame 0 means FC_FRAME_MAX_DEFAULT.
 * FC_ERR_LIMIT if the packed Envelope would exceed max_frame, FC_ERR_INVALID if env has no body
 * (the receiver would reject it as an unknown message type), FC_ERR_NOMEM. On error out is unchanged. Does not block. */
fc_status fc_frame_encode(const fc_envelope *env, size_t max_frame, fc_buf *out, fc_error *err);

/* Longest frame header fc_frame_chunk_header() can produce. */
#define FC_FRAME_CHUNK_HEADER_MAX 48

/* Writes the bytes that precede `data_len` bytes of Chunk data in a frame carrying
 * Envelope{seq, chunk{tensor_index, offset, data}}: length prefix, Envelope tags, Chunk tags.
 * The frame is then hdr[0..*hdr_len) followed by the data itself, so a sender can writev() the
 * payload from where it lies, or append it with one copy. The layout is byte-identical to what
 * protobuf-c packs for the same Envelope (checked by the tests). FC_ERR_LIMIT if data_len exceeds
 * FC_CHUNK_MAX_DATA or the frame would exceed max_frame (0 = default), FC_ERR_CHUNK if data_len
 * is 0. */
fc_status fc_frame_chunk_header(uint64_t seq, uint32_t tensor_index, uint64_t offset,
                                size_t data_len, size_t max_frame,
                                uint8_t hdr[FC_FRAME_CHUNK_HEADER_MAX], size_t *hdr_len,
                                fc_error *err);

/* Appends a whole chunk frame to out: fc_frame_chunk_header() plus one copy of data. */
fc_status fc_frame_encode_chunk(uint64_t seq, uint32_t tensor_index, uint64_t offset,
                                const void *data, size_t data_len, size_t max_frame, fc_buf *out,
                                fc_error *err);

/* ---- incremental decoding ---- */

/* Caller-owned decoder state. Initialise with fc_frame_decoder_init, release with
 * fc_frame_decoder_free. The fields are private; read them only through the functions below.
 * Memory: at most one buffer of the largest partial frame seen, never above max_frame bytes. */
typedef struct fc_frame_decoder {
    size_t max_frame;
    uint8_t prefix[FC_FRAME_PREFIX_BYTES];
    size_t prefix_have; /* bytes of the current length prefix received */
    size_t frame_len;   /* N of the current frame once the prefix is complete */
    size_t frame_have;  /* payload bytes of the current frame received into buf */
    uint8_t *buf;       /* partial-frame buffer, capacity buf_cap */
    size_t buf_cap;
    fc_status failed; /* FC_OK, or the error that stopped the stream (sticky) */
    uint64_t frames;  /* complete frames returned */
    uint64_t bytes;   /* bytes consumed */
} fc_frame_decoder;

/* A complete frame's Envelope bytes. `data` points either into the decoder's buffer or straight
 * into the caller's input (when a whole frame arrived in one piece: no copy). It stays valid
 * until the next fc_frame_decoder_* call on this decoder, and, in the second case, only while
 * the caller's input bytes are unchanged. */
typedef struct fc_frame {
    const uint8_t *data;
    size_t len;
} fc_frame;

/* max_frame 0 means FC_FRAME_MAX_DEFAULT; larger than FC_FRAME_MAX_CEILING is clamped to it.
 * Allocates nothing. */
void fc_frame_decoder_init(fc_frame_decoder *d, size_t max_frame);
void fc_frame_decoder_free(fc_frame_decoder *d);

/* Consumes input until one frame is complete or the input is used up; *consumed says how many
 * bytes were taken. Returns
 *   FC_OK        a frame is complete: *frame is set; call again with the rest of the input;
 *   FC_ERR_AGAIN all len bytes were consumed and no frame is complete yet;
 *   FC_ERR_LIMIT the length prefix exceeds max_frame (no allocation was attempted);
 *   FC_ERR_FORMAT the length prefix is 0;
 *   FC_ERR_NOMEM the frame buffer could not be allocated.
 * Errors are sticky: the byte stream has lost its framing, so every later call returns the same
 * status (the connection must close). Typical loop:
 *
 *     while (len > 0) {
 *         size_t used; fc_frame f;
 *         fc_status st = fc_frame_decoder_feed(&d, p, len, &used, &f, &err);
 *         p += used, len -= used;
 *         if (st == FC_ERR_AGAIN) break;
 *         if (st != FC_OK) goto fail;
 *         handle(f.data, f.len);
 *     }
 */
fc_status fc_frame_decoder_feed(fc_frame_decoder *d, const void *data, size_t len,
                                size_t *consumed, fc_frame *frame, fc_error *err);

/* Call at end of stream. FC_OK if the stream ended on a frame boundary; FC_ERR_FORMAT ("stream
 * ended inside a frame: ...") if a frame was cut short; the sticky error if the decoder failed. */
fc_status fc_frame_decoder_finish(const fc_frame_decoder *d, fc_error *err);

/* Records one whole frame of frame_bytes (prefix included) that the caller consumed itself, on a
 * frame boundary (e.g. a chunk whose payload it copied straight into place), so that the frame
 * count and stream offsets in later error messages stay right. Ignored off a boundary. */
void fc_frame_decoder_passed(fc_frame_decoder *d, uint64_t frame_bytes);
/* Bytes of an incomplete frame (prefix included) held right now; 0 on a frame boundary. A server
 * uses it to enforce a minimum progress rate on half-received frames. */
size_t fc_frame_decoder_pending(const fc_frame_decoder *d);

/* Frees the frame buffer if no partial frame is held (the buffer otherwise keeps the capacity of
 * the largest frame received so far, up to max_frame). A server calls it when a connection goes
 * quiet, so idle connections hold no frame memory. Invalidates the last fc_frame returned from
 * the buffer. Returns the number of bytes released. */
size_t fc_frame_decoder_trim(fc_frame_decoder *d);

/* ---- from frame bytes to an Envelope ---- */

/* Unpacks N Envelope bytes. The schema-driven pre-scan checks every varint, length, wire type,
 * nesting depth and string (UTF-8, no NUL byte) first, so errors name the field and byte offset.
 * All memory comes from a counting allocator capped at FC_FRAME_UNPACK_BUDGET(len).
 * Returns FC_OK with *out owned by the caller (free with fc_envelope_free), or
 *   FC_ERR_FORMAT   not a well-formed Envelope (bad varint, truncation, wrong wire type, bad
 *                   UTF-8, groups, too deep);
 *   FC_ERR_PROTOCOL well-formed but no known body ("unknown message type");
 *   FC_ERR_LIMIT    decoding would exceed the memory budget or len > FC_FRAME_MAX_CEILING;
 *   FC_ERR_NOMEM.
 * Message semantics (tensor specs, chunk sizes, ...) are checked by fc_wire_validate(). */
fc_status fc_envelope_unpack(const uint8_t *data, size_t len, fc_envelope **out, fc_error *err);

/* Frees an Envelope returned by fc_envelope_unpack. NULL is fine. */
void fc_envelope_free(fc_envelope *env);

/* Memory budget of one unpack: a fixed allowance plus a multiple of the frame size that covers
 * protobuf-c's per-field bookkeeping for any legitimate message (see frame.c). */
#define FC_FRAME_UNPACK_BUDGET(len) ((size_t)64 * 1024 + (size_t)48 * (len))

/* ---- zero-copy chunk path ---- */

/* A Chunk Envelope seen in place: data points into the frame bytes. */
typedef struct fc_chunk_view {
    uint64_t seq;
    uint32_t tensor_index;
    uint64_t offset;
    const uint8_t *data;
    size_t data_len;
} fc_chunk_view;

/* Recognises a frame whose Envelope is exactly {seq?, chunk{tensor_index?, offset?, data?}}
 * with no repeated, unknown or out-of-range fields, and returns 1 with *out pointing into data.
 * Returns 0 for anything else, including malformed bytes: the caller then uses
 * fc_envelope_unpack, which is authoritative and explains errors. Whenever this returns 1,
 * fc_envelope_unpack yields the same seq, tensor_index, offset and data (tested and fuzzed).
 * Does not check the chunk's semantics (size limits: see fc_wire_validate_chunk). */
int fc_frame_peek_chunk(const uint8_t *data, size_t len, fc_chunk_view *out);
/* The same recognition from the head of a frame, before its payload has arrived: env holds the
 * first `have` bytes of an env_len-byte Envelope. Returns 1 if they begin a chunk frame whose
 * Chunk is the Envelope's last field and whose data is the Chunk's last field, so that the
 * frame's remaining bytes are all payload: *out gets seq, tensor_index, offset and data_len
 * (data NULL) and *data_at the Envelope offset of the first payload byte (<= have). Then
 * fc_frame_peek_chunk over the whole frame returns the same fields (tested and fuzzed). Returns
 * 0 otherwise, also when `have` is too short to tell; FC_FRAME_CHUNK_HEADER_MAX - 4 bytes
 * always suffice for a head written by fc_frame_chunk_header. */
int fc_frame_peek_chunk_head(const uint8_t *env, size_t have, size_t env_len, fc_chunk_view *out,
                             size_t *data_at);

#endif
