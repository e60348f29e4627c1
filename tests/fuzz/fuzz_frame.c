/* fuzz_frame.c: libFuzzer target for the frame decoder, Envelope unpacking and validation.
 *
 * Input layout: byte 0 is a control byte, then (control & 0x0f) split bytes, then the byte
 * stream. The stream is fed to the incremental decoder in pieces whose sizes cycle through
 * split[k] + 1 (or in one piece when there are no split bytes); bit 0x80 of the control byte
 * selects a small 1 KiB max_frame instead of the default 4 MiB. Each complete frame is peeked
 * for the zero-copy chunk path, unpacked and validated.
 *
 * Properties checked (abort on violation, besides the sanitizers):
 *  - feeding in pieces yields exactly the frames (and the final status) of feeding at once;
 *  - a frame the chunk fast path accepts unpacks to the same seq/index/offset/data, and the
 *    chunk limit check agrees with full validation;
 *  - a frame whose head (any prefix) the direct-payload path accepts is one the fast path
 *    accepts, with the same fields and the payload running from the head to the frame's end;
 *  - a valid Envelope re-encodes, and the re-encoding decodes and re-encodes to the same bytes;
 *  - every status is one of the documented ones.
 * Seeds: tests/fuzz/frame/ (written by tests/fuzz/gen_frame_corpus.c).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "proto/frame.h"
#include "proto/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                               \
    do {                                                                                          \
        if (!(cond))                                                                              \
            abort();                                                                              \
    } while (0)

static void check_frame(const uint8_t *p, size_t n) {
    fc_chunk_view fast;
    int peeked = fc_frame_peek_chunk(p, n, &fast);
    fc_envelope *env = NULL;
    fc_error err = {0};
    fc_status st = fc_envelope_unpack(p, n, &env, &err);
    CHECK(st == FC_OK || st == FC_ERR_FORMAT || st == FC_ERR_PROTOCOL || st == FC_ERR_LIMIT);
    CHECK((st == FC_OK) == (env != NULL));
    /* the head of a chunk frame tells the same as the whole frame, from any prefix length */
    for (size_t have = 0; have <= n && have <= FC_FRAME_CHUNK_HEADER_MAX; have++) {
        fc_chunk_view head;
        size_t at = 0;
        if (!fc_frame_peek_chunk_head(p, have, n, &head, &at))
            continue;
        CHECK(peeked && at <= have && at + head.data_len == n && fast.data == p + at);
        CHECK(head.seq == fast.seq && head.tensor_index == fast.tensor_index &&
              head.offset == fast.offset && head.data_len == fast.data_len);
    }
    if (peeked) {
        CHECK(st == FC_OK);
        fc_chunk_view slow;
        CHECK(fc_wire_chunk_view(env, &slow, NULL) == FC_OK);
        CHECK(slow.seq == fast.seq && slow.tensor_index == fast.tensor_index &&
              slow.offset == fast.offset && slow.data_len == fast.data_len);
        CHECK(fast.data >= p && fast.data + fast.data_len <= p + n);
        CHECK(slow.data_len == 0 || memcmp(slow.data, fast.data, slow.data_len) == 0);
        CHECK((fc_wire_validate_chunk(&fast, NULL) == FC_OK) ==
              (fc_wire_validate(env, NULL) == FC_OK));
    }
    if (st != FC_OK)
        return;
    st = fc_wire_validate(env, &err);
    CHECK(st == FC_OK || st == FC_ERR_LIMIT || st == FC_ERR_INVALID || st == FC_ERR_DTYPE ||
          st == FC_ERR_OVERFLOW || st == FC_ERR_SHAPE || st == FC_ERR_CHUNK ||
          st == FC_ERR_NON_FINITE || st == FC_ERR_RANGE || st == FC_ERR_NOMEM);
    if (st == FC_OK) {
        fc_buf a = FC_BUF_INIT, b = FC_BUF_INIT;
        CHECK(fc_frame_encode(env, FC_FRAME_MAX_CEILING, &a, NULL) == FC_OK);
        fc_envelope *again = NULL;
        CHECK(fc_wire_decode(a.data + 4, a.len - 4, &again, NULL) == FC_OK);
        CHECK(again->body_case == env->body_case && again->seq == env->seq);
        CHECK(fc_frame_encode(again, FC_FRAME_MAX_CEILING, &b, NULL) == FC_OK);
        CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
        fc_envelope_free(again);
        fc_buf_free(&a);
        fc_buf_free(&b);
    }
    fc_envelope_free(env);
}

/* Feeds the stream in pieces; appends each frame (4-byte length + bytes) to out. Returns the
 * final status: the first error, or finish()'s verdict. */
static fc_status run(const uint8_t *s, size_t n, const uint8_t *splits, size_t nsplits,
                     size_t max_frame, fc_buf *out, int check) {
    fc_frame_decoder d;
    fc_frame_decoder_init(&d, max_frame);
    size_t pos = 0, k = 0;
    fc_status st = FC_OK;
    while (pos < n) {
        size_t piece = nsplits ? (size_t)splits[k++ % nsplits] + 1 : n - pos;
        if (piece > n - pos)
            piece = n - pos;
        const uint8_t *p = s + pos;
        size_t left = piece;
        pos += piece;
        while (left > 0) {
            size_t used;
            fc_frame f;
            st = fc_frame_decoder_feed(&d, p, left, &used, &f, NULL);
            CHECK(used <= left);
            p += used;
            left -= used;
            if (st == FC_ERR_AGAIN) {
                CHECK(left == 0);
                break;
            }
            if (st != FC_OK) {
                CHECK(st == FC_ERR_LIMIT || st == FC_ERR_FORMAT || st == FC_ERR_NOMEM);
                fc_frame_decoder_free(&d);
                return st;
            }
            CHECK(f.len > 0 && f.len <= d.max_frame);
            CHECK(d.buf_cap <= d.max_frame);
            uint8_t pre[4];
            fc_store_u32be(pre, (uint32_t)f.len);
            CHECK(fc_buf_append(out, pre, 4) == FC_OK);
            CHECK(fc_buf_append(out, f.data, f.len) == FC_OK);
            if (check)
                check_frame(f.data, f.len);
        }
    }
    st = fc_frame_decoder_finish(&d, NULL);
    CHECK(st == FC_OK || st == FC_ERR_FORMAT);
    fc_frame_decoder_free(&d);
    return st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    uint8_t control = data[0];
    size_t nsplits = control & 0x0f;
    if (size < 1 + nsplits)
        return 0;
    const uint8_t *splits = data + 1;
    const uint8_t *stream = data + 1 + nsplits;
    size_t n = size - 1 - nsplits;
    size_t max_frame = (control & 0x80) ? 1024 : 0;

    fc_buf whole = FC_BUF_INIT, pieces = FC_BUF_INIT;
    fc_status a = run(stream, n, NULL, 0, max_frame, &whole, 0);
    fc_status b = run(stream, n, splits, nsplits, max_frame, &pieces, 1);
    CHECK(a == b);
    CHECK(whole.len == pieces.len);
    CHECK(whole.len == 0 || memcmp(whole.data, pieces.data, whole.len) == 0);
    /* Frames are the stream's own bytes, in order. */
    CHECK(whole.len <= n && (whole.len == 0 || memcmp(whole.data, stream, whole.len) == 0));
    fc_buf_free(&whole);
    fc_buf_free(&pieces);
    return 0;
}
