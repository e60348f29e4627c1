/* test_frame.c: the frame codec (proto/frame.h): encoding, incremental decoding under every
 * split, limits, malformed Envelopes, the memory budget and the zero-copy chunk path.
 *
 * Hand-written frames below are built byte by byte from the protobuf wire format (tag =
 * field_number << 3 | wire_type; varints little-endian base 128), not from this codec. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "proto/frame.h"

/* ---- helpers ---- */

static void set_hello(fc_envelope *env, Fedcoord__V1__Hello *hello, uint64_t seq,
                      const char *name) {
    fedcoord__v1__envelope__init(env);
    fedcoord__v1__hello__init(hello);
    hello->protocol_major = 1;
    hello->protocol_minor = 0;
    hello->client_name = (char *)name;
    env->seq = seq;
    env->body_case = FEDCOORD__V1__ENVELOPE__BODY_HELLO;
    env->hello = hello;
}

static void set_bye(fc_envelope *env, Fedcoord__V1__Bye *bye, uint64_t seq, const char *reason) {
    fedcoord__v1__envelope__init(env);
    fedcoord__v1__bye__init(bye);
    bye->reason = (char *)reason;
    env->seq = seq;
    env->body_case = FEDCOORD__V1__ENVELOPE__BODY_BYE;
    env->bye = bye;
}

/* Unpacks and expects status st; returns the error for message checks. */
static fc_error expect_unpack(const uint8_t *p, size_t len, fc_status st) {
    fc_error err = {0};
    fc_envelope *env = NULL;
    assert_int_equal(fc_envelope_unpack(p, len, &env, &err), st);
    if (st != FC_OK)
        assert_null(env);
    fc_envelope_free(env);
    return err;
}

/* Feeds a byte stream in pieces of the given sizes (cycled) and collects the frames' bytes,
 * each prefixed by its 4-byte length, into out. Returns the final feed status. */
static fc_status feed_split(const uint8_t *s, size_t n, const size_t *pieces, size_t npieces,
                            size_t max_frame, fc_buf *out, size_t *nframes) {
    fc_frame_decoder d;
    fc_frame_decoder_init(&d, max_frame);
    size_t pos = 0, k = 0;
    fc_status last = FC_ERR_AGAIN;
    *nframes = 0;
    while (pos < n) {
        size_t piece = pieces[k++ % npieces];
        if (piece > n - pos)
            piece = n - pos;
        const uint8_t *p = s + pos;
        size_t left = piece;
        while (left > 0) {
            size_t used = 0;
            fc_frame f = {0};
            fc_error err = {0};
            last = fc_frame_decoder_feed(&d, p, left, &used, &f, &err);
            assert_true(used <= left);
            p += used;
            left -= used;
            if (last == FC_ERR_AGAIN) {
                assert_int_equal(left, 0);
                break;
            }
            if (last != FC_OK) {
                fc_frame_decoder_free(&d);
                return last;
            }
            uint8_t pre[4];
            fc_store_u32be(pre, (uint32_t)f.len);
            assert_int_equal(fc_buf_append(out, pre, 4), FC_OK);
            assert_int_equal(fc_buf_append(out, f.data, f.len), FC_OK);
            (*nframes)++;
        }
        pos += piece;
    }
    fc_error err = {0};
    last = fc_frame_decoder_finish(&d, &err);
    fc_frame_decoder_free(&d);
    return last;
}

/* A stream of several frames of different types and sizes. */
static void build_session(fc_buf *s) {
    fc_envelope env;
    Fedcoord__V1__Hello hello;
    Fedcoord__V1__Bye bye;
    Fedcoord__V1__Heartbeat hb;
    set_hello(&env, &hello, 1, "client-7");
    assert_int_equal(fc_frame_encode(&env, 0, s, NULL), FC_OK);
    fedcoord__v1__envelope__init(&env);
    fedcoord__v1__heartbeat__init(&hb);
    hb.unix_ms = 1700000000000ull;
    env.seq = 2;
    env.body_case = FEDCOORD__V1__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    assert_int_equal(fc_frame_encode(&env, 0, s, NULL), FC_OK);
    uint8_t data[3000];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 7 + 1);
    assert_int_equal(fc_frame_encode_chunk(3, 0, 0, data, sizeof data, 0, s, NULL), FC_OK);
    assert_int_equal(fc_frame_encode_chunk(4, 1, 3000, data, 17, 0, s, NULL), FC_OK);
    set_bye(&env, &bye, 5, "done");
    assert_int_equal(fc_frame_encode(&env, 0, s, NULL), FC_OK);
}

/* ---- encoding ---- */

static void test_encode_writes_big_endian_length_then_envelope(void **state) {
    (void)state;
    fc_envelope env;
    Fedcoord__V1__Bye bye;
    set_bye(&env, &bye, 1, "ok");
    fc_buf b = FC_BUF_INIT;
    assert_int_equal(fc_frame_encode(&env, 0, &b, NULL), FC_OK);
    /* Envelope: 08 01 (seq=1), ba 01 (field 23, wire 2) 04 (len) 0a 02 'o' 'k' (Bye.reason). */
    static const uint8_t want[] = {0, 0, 0, 9, 0x08, 0x01, 0xba, 0x01, 0x04, 0x0a, 0x02, 'o', 'k'};
    assert_int_equal(b.len, sizeof want);
    assert_memory_equal(b.data, want, sizeof want);
    fc_buf_free(&b);
}

static void test_encode_refuses_envelope_without_body(void **state) {
    (void)state;
    fc_envelope env;
    fedcoord__v1__envelope__init(&env);
    env.seq = 9;
    fc_buf b = FC_BUF_INIT;
    fc_error err = {0};
    assert_int_equal(fc_frame_encode(&env, 0, &b, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "without a body"));
    assert_int_equal(b.len, 0);
    fc_buf_free(&b);
}

/* Finds a Bye reason length that packs the Envelope (seq 1) to exactly `target` bytes. */
static char *reason_for_size(size_t target) {
    fc_envelope env;
    Fedcoord__V1__Bye bye;
    char *s = malloc(target + 1);
    assert_non_null(s);
    for (size_t l = target; l + 16 > target; l--) {
        memset(s, 'r', l);
        s[l] = '\0';
        set_bye(&env, &bye, 1, s);
        if (protobuf_c_message_get_packed_size(&env.base) == target)
            return s;
    }
    fail_msg("no reason length packs to %zu", target);
    return NULL;
}

static void test_encode_accepts_exactly_max_and_refuses_max_plus_one(void **state) {
    (void)state;
    const size_t sizes[] = {100, FC_FRAME_MAX_DEFAULT};
    for (size_t k = 0; k < 2; k++) {
        size_t max = sizes[k];
        fc_envelope env;
        Fedcoord__V1__Bye bye;
        char *s = reason_for_size(max);
        set_bye(&env, &bye, 1, s);
        fc_buf b = FC_BUF_INIT;
        assert_int_equal(fc_frame_encode(&env, k == 0 ? max : 0, &b, NULL), FC_OK);
        assert_int_equal(b.len, max + 4);
        assert_int_equal(fc_load_u32be(b.data), max);
        /* The decoder with the same maximum takes it. */
        fc_frame_decoder d;
        fc_frame_decoder_init(&d, k == 0 ? max : 0);
        size_t used;
        fc_frame f;
        assert_int_equal(fc_frame_decoder_feed(&d, b.data, b.len, &used, &f, NULL), FC_OK);
        assert_int_equal(f.len, max);
        fc_frame_decoder_free(&d);
        free(s);

        s = reason_for_size(max + 1);
        set_bye(&env, &bye, 1, s);
        fc_buf_reset(&b);
        fc_error err = {0};
        assert_int_equal(fc_frame_encode(&env, k == 0 ? max : 0, &b, &err), FC_ERR_LIMIT);
        assert_non_null(strstr(err.msg, "above the maximum frame size"));
        assert_int_equal(b.len, 0);
        fc_buf_free(&b);
        free(s);
    }
}

static void test_chunk_header_matches_protobuf_c_packing(void **state) {
    (void)state;
    const uint64_t seqs[] = {0, 1, 127, 128, 300, UINT64_MAX};
    const uint32_t idx[] = {0, 1, 200, UINT32_MAX};
    const uint64_t offs[] = {0, 5, 1ull << 35, UINT64_MAX};
    const size_t lens[] = {1, 127, 128, 16383, 16384, FC_CHUNK_MAX_DATA};
    uint8_t *data = malloc(FC_CHUNK_MAX_DATA);
    assert_non_null(data);
    for (size_t i = 0; i < FC_CHUNK_MAX_DATA; i++)
        data[i] = (uint8_t)(i ^ (i >> 8));
    for (size_t a = 0; a < 6; a++)
        for (size_t b = 0; b < 4; b++)
            for (size_t c = 0; c < 4; c++)
                for (size_t e = 0; e < 6; e++) {
                    fc_envelope env;
                    Fedcoord__V1__Chunk ch;
                    fedcoord__v1__envelope__init(&env);
                    fedcoord__v1__chunk__init(&ch);
                    env.seq = seqs[a];
                    env.body_case = FEDCOORD__V1__ENVELOPE__BODY_CHUNK;
                    env.chunk = &ch;
                    ch.tensor_index = idx[b];
                    ch.offset = offs[c];
                    ch.data.data = data;
                    ch.data.len = lens[e];
                    fc_buf want = FC_BUF_INIT, got = FC_BUF_INIT;
                    assert_int_equal(fc_frame_encode(&env, 0, &want, NULL), FC_OK);
                    assert_int_equal(fc_frame_encode_chunk(seqs[a], idx[b], offs[c], data,
                                                           lens[e], 0, &got, NULL),
                                     FC_OK);
                    assert_int_equal(got.len, want.len);
                    assert_memory_equal(got.data, want.data, want.len);
                    /* The in-place view sees the same values. */
                    fc_chunk_view v;
                    assert_int_equal(fc_frame_peek_chunk(got.data + 4, got.len - 4, &v), 1);
                    assert_int_equal(v.seq, seqs[a]);
                    assert_int_equal(v.tensor_index, idx[b]);
                    assert_int_equal(v.offset, offs[c]);
                    assert_int_equal(v.data_len, lens[e]);
                    assert_ptr_equal(v.data, got.data + got.len - lens[e]);
                    fc_buf_free(&want);
                    fc_buf_free(&got);
                }
    free(data);
}

static void test_chunk_header_refuses_empty_and_oversized_data(void **state) {
    (void)state;
    uint8_t hdr[FC_FRAME_CHUNK_HEADER_MAX];
    size_t hl;
    fc_error err = {0};
    assert_int_equal(fc_frame_chunk_header(1, 0, 0, 0, 0, hdr, &hl, &err), FC_ERR_CHUNK);
    assert_int_equal(fc_frame_chunk_header(1, 0, 0, FC_CHUNK_MAX_DATA + 1, 0, hdr, &hl, &err),
                     FC_ERR_LIMIT);
    /* A small max_frame applies to chunk frames too. */
    assert_int_equal(fc_frame_chunk_header(1, 0, 0, 1000, 512, hdr, &hl, &err), FC_ERR_LIMIT);
    assert_non_null(strstr(err.msg, "maximum frame size 512"));
}

/* ---- incremental decoding ---- */

static void test_whole_stream_in_one_call_yields_every_frame_in_place(void **state) {
    (void)state;
    fc_buf s = FC_BUF_INIT;
    build_session(&s);
    fc_frame_decoder d;
    fc_frame_decoder_init(&d, 0);
    const uint8_t *p = s.data;
    size_t left = s.len, frames = 0;
    while (left > 0) {
        size_t used;
        fc_frame f;
        fc_status st = fc_frame_decoder_feed(&d, p, left, &used, &f, NULL);
        assert_int_equal(st, FC_OK);
        /* A whole frame in the input is not copied. */
        assert_ptr_equal(f.data, p + 4);
        assert_int_equal(used, f.len + 4);
        p += used;
        left -= used;
        frames++;
    }
    assert_int_equal(frames, 5);
    assert_null(d.buf); /* nothing was buffered */
    assert_int_equal(fc_frame_decoder_finish(&d, NULL), FC_OK);
    fc_frame_decoder_free(&d);
    fc_buf_free(&s);
}

static void test_stream_fed_one_byte_at_a_time_gives_same_frames(void **state) {
    (void)state;
    fc_buf s = FC_BUF_INIT, got = FC_BUF_INIT;
    build_session(&s);
    size_t one = 1, n;
    assert_int_equal(feed_split(s.data, s.len, &one, 1, 0, &got, &n), FC_OK);
    assert_int_equal(n, 5);
    assert_int_equal(got.len, s.len);
    assert_memory_equal(got.data, s.data, s.len);
    fc_buf_free(&s);
    fc_buf_free(&got);
}

static void test_stream_fed_in_random_splits_gives_same_frames(void **state) {
    (void)state;
    fc_buf s = FC_BUF_INIT;
    build_session(&s);
    srand(12345);
    for (int trial = 0; trial < 300; trial++) {
        size_t pieces[64];
        for (size_t i = 0; i < 64; i++)
            pieces[i] = (size_t)(rand() % (trial < 150 ? 9 : 4000)) + 1;
        fc_buf got = FC_BUF_INIT;
        size_t n;
        assert_int_equal(feed_split(s.data, s.len, pieces, 64, 0, &got, &n), FC_OK);
        assert_int_equal(n, 5);
        assert_int_equal(got.len, s.len);
        assert_memory_equal(got.data, s.data, s.len);
        fc_buf_free(&got);
    }
    /* Every split point of the stream into two pieces. */
    for (size_t cut = 1; cut < s.len; cut++) {
        size_t pieces[2] = {cut, s.len - cut};
        fc_buf got = FC_BUF_INIT;
        size_t n;
        assert_int_equal(feed_split(s.data, s.len, pieces, 2, 0, &got, &n), FC_OK);
        assert_int_equal(n, 5);
        assert_memory_equal(got.data, s.data, s.len);
        fc_buf_free(&got);
    }
    fc_buf_free(&s);
}

static void test_truncated_frame_needs_more_input_then_fails_at_end_of_stream(void **state) {
    (void)state;
    fc_buf s = FC_BUF_INIT;
    build_session(&s);
    size_t first = 4 + fc_load_u32be(s.data);
    /* Cut inside the second frame's prefix, then inside its body. */
    const size_t cuts[] = {first + 2, first + 7};
    const char *want[] = {"2 of 4 length-prefix bytes", "Envelope bytes received"};
    for (int k = 0; k < 2; k++) {
        fc_frame_decoder d;
        fc_frame_decoder_init(&d, 0);
        size_t used;
        fc_frame f;
        assert_int_equal(fc_frame_decoder_feed(&d, s.data, cuts[k], &used, &f, NULL), FC_OK);
        assert_int_equal(used, first);
        assert_int_equal(fc_frame_decoder_pending(&d), 0);
        assert_int_equal(fc_frame_decoder_feed(&d, s.data + used, cuts[k] - used, &used, &f, NULL),
                         FC_ERR_AGAIN);
        assert_int_equal(fc_frame_decoder_pending(&d), cuts[k] - first);
        fc_error err = {0};
        assert_int_equal(fc_frame_decoder_finish(&d, &err), FC_ERR_FORMAT);
        assert_non_null(strstr(err.msg, "stream ended inside frame 2"));
        assert_non_null(strstr(err.msg, want[k]));
        fc_frame_decoder_free(&d);
    }
    fc_buf_free(&s);
}

static void test_four_gigabyte_length_is_rejected_without_allocating(void **state) {
    (void)state;
    const uint8_t prefix[] = {0xff, 0xff, 0xff, 0xff, 0x08, 0x01};
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        fc_frame_decoder d;
        fc_frame_decoder_init(&d, 0);
        fc_alloc_fail_after(0); /* any allocation would fail with FC_ERR_NOMEM */
        fc_error err = {0};
        fc_status st = FC_ERR_AGAIN;
        size_t used = 0, total = 0;
        fc_frame f;
        if (bytewise) {
            for (size_t i = 0; i < sizeof prefix && st == FC_ERR_AGAIN; i++) {
                st = fc_frame_decoder_feed(&d, prefix + i, 1, &used, &f, &err);
                total += used;
            }
        } else {
            st = fc_frame_decoder_feed(&d, prefix, sizeof prefix, &used, &f, &err);
            total = used;
        }
        unsigned long failures = fc_alloc_failures();
        fc_alloc_fail_after(-1);
        assert_int_equal(st, FC_ERR_LIMIT);
        assert_int_equal(failures, 0);
        assert_null(d.buf);
        assert_true(total <= 4);
        assert_non_null(strstr(err.msg, "length 4294967295 exceeds the maximum frame size 4194304"));
        /* The error is sticky: framing is lost. */
        assert_int_equal(fc_frame_decoder_feed(&d, prefix, 1, &used, &f, &err), FC_ERR_LIMIT);
        assert_int_equal(used, 0);
        assert_int_equal(fc_frame_decoder_finish(&d, NULL), FC_ERR_LIMIT);
        fc_frame_decoder_free(&d);
    }
}

static void test_decoder_limit_is_exact(void **state) {
    (void)state;
    /* max 100: a 100-byte frame passes, a prefix announcing 101 fails at once. */
    uint8_t frame[104] = {0, 0, 0, 100};
    fc_frame_decoder d;
    fc_frame_decoder_init(&d, 100);
    size_t used;
    fc_frame f;
    assert_int_equal(fc_frame_decoder_feed(&d, frame, 3, &used, &f, NULL), FC_ERR_AGAIN);
    assert_int_equal(fc_frame_decoder_feed(&d, frame + 3, 101, &used, &f, NULL), FC_OK);
    assert_int_equal(f.len, 100);
    const uint8_t over[] = {0, 0, 0, 101};
    fc_error err = {0};
    assert_int_equal(fc_frame_decoder_feed(&d, over, 4, &used, &f, &err), FC_ERR_LIMIT);
    assert_non_null(strstr(err.msg, "frame 2 at stream byte 104: length 101"));
    fc_frame_decoder_free(&d);
    /* The default 4 MiB: 4194305 announced is refused from the prefix alone. */
    const uint8_t big[] = {0x00, 0x40, 0x00, 0x01};
    fc_frame_decoder_init(&d, 0);
    assert_int_equal(fc_frame_decoder_feed(&d, big, 4, &used, &f, NULL), FC_ERR_LIMIT);
    assert_null(d.buf);
    fc_frame_decoder_free(&d);
}

static void test_zero_length_frame_is_an_error(void **state) {
    (void)state;
    const uint8_t z[] = {0, 0, 0, 0, 0, 0, 0, 2, 0x08, 0x01};
    for (size_t split = 1; split <= 4; split++) {
        fc_frame_decoder d;
        fc_frame_decoder_init(&d, 0);
        size_t used;
        fc_frame f;
        fc_error err = {0};
        fc_status st = fc_frame_decoder_feed(&d, z, split, &used, &f, &err);
        if (split < 4) {
            assert_int_equal(st, FC_ERR_AGAIN);
            st = fc_frame_decoder_feed(&d, z + split, sizeof z - split, &used, &f, &err);
        }
        assert_int_equal(st, FC_ERR_FORMAT);
        assert_non_null(strstr(err.msg, "length 0"));
        fc_frame_decoder_free(&d);
    }
    expect_unpack((const uint8_t *)"", 0, FC_ERR_FORMAT);
}

static void test_decoder_buffer_allocation_failure_is_clean(void **state) {
    (void)state;
    fc_buf s = FC_BUF_INIT;
    build_session(&s);
    fc_frame_decoder d;
    fc_frame_decoder_init(&d, 0);
    size_t used;
    fc_frame f;
    fc_error err = {0};
    fc_alloc_fail_after(0);
    fc_status st = fc_frame_decoder_feed(&d, s.data, 6, &used, &f, &err);
    fc_alloc_fail_after(-1);
    assert_int_equal(st, FC_ERR_NOMEM);
    assert_non_null(strstr(err.msg, "frame buffer"));
    fc_frame_decoder_free(&d);
    fc_buf_free(&s);
}

static void test_decoder_memory_is_one_frame_buffer(void **state) {
    (void)state;
    /* Frames of 3000 then 17 then 3000 bytes, split so each is buffered: capacity stays at the
     * largest frame, never the stream. */
    fc_buf s = FC_BUF_INIT;
    uint8_t data[3000] = {0};
    for (uint64_t i = 0; i < 20; i++)
        assert_int_equal(fc_frame_encode_chunk(i + 1, 0, i * 3000, data, i % 2 ? 17 : 3000, 0, &s,
                                               NULL),
                         FC_OK);
    fc_frame_decoder d;
    fc_frame_decoder_init(&d, 0);
    size_t pos = 0, frames = 0;
    while (pos < s.len) {
        size_t piece = s.len - pos < 1000 ? s.len - pos : 1000, used;
        const uint8_t *p = s.data + pos;
        while (piece > 0) {
            fc_frame f;
            fc_status st = fc_frame_decoder_feed(&d, p, piece, &used, &f, NULL);
            p += used;
            pos += used;
            piece -= used;
            if (st == FC_ERR_AGAIN)
                break;
            assert_int_equal(st, FC_OK);
            frames++;
        }
        assert_true(d.buf_cap <= 3020);
    }
    assert_int_equal(frames, 20);
    /* On a frame boundary the buffer can be released; mid-frame it cannot. */
    size_t largest = 0;
    for (size_t at = 0; at < s.len; at += 4 + fc_load_u32be(s.data + at))
        if (fc_load_u32be(s.data + at) > largest)
            largest = fc_load_u32be(s.data + at);
    assert_int_equal(d.buf_cap, largest);
    assert_int_equal(fc_frame_decoder_trim(&d), largest);
    assert_null(d.buf);
    assert_int_equal(fc_frame_decoder_trim(&d), 0);
    size_t used;
    fc_frame f;
    assert_int_equal(fc_frame_decoder_feed(&d, s.data, 10, &used, &f, NULL), FC_ERR_AGAIN);
    assert_int_equal(fc_frame_decoder_trim(&d), 0);
    assert_non_null(d.buf);
    assert_int_equal(fc_frame_decoder_feed(&d, s.data + 10, s.len - 10, &used, &f, NULL), FC_OK);
    assert_int_equal(f.len, fc_load_u32be(s.data));
    assert_memory_equal(f.data, s.data + 4, f.len);
    fc_frame_decoder_free(&d);
    fc_buf_free(&s);
}

/* ---- unpacking ---- */

static void test_unpack_round_trips_a_hello(void **state) {
    (void)state;
    fc_envelope env;
    Fedcoord__V1__Hello hello;
    set_hello(&env, &hello, 42, "Zoë-client");
    char *caps[] = {"dtype.f16", "resume"};
    hello.capabilities = caps;
    hello.n_capabilities = 2;
    uint8_t tok[] = {0, 1, 2, 0xff};
    hello.token.data = tok;
    hello.token.len = sizeof tok;
    fc_buf b = FC_BUF_INIT;
    assert_int_equal(fc_frame_encode(&env, 0, &b, NULL), FC_OK);
    fc_envelope *out = NULL;
    fc_error err = {0};
    assert_int_equal(fc_envelope_unpack(b.data + 4, b.len - 4, &out, &err), FC_OK);
    assert_int_equal(out->seq, 42);
    assert_int_equal(out->body_case, FEDCOORD__V1__ENVELOPE__BODY_HELLO);
    assert_string_equal(out->hello->client_name, "Zoë-client");
    assert_int_equal(out->hello->n_capabilities, 2);
    assert_string_equal(out->hello->capabilities[1], "resume");
    assert_int_equal(out->hello->token.len, 4);
    assert_memory_equal(out->hello->token.data, tok, 4);
    fc_envelope_free(out);
    fc_buf_free(&b);
}

static void test_envelope_with_seq_only_is_unknown_message_type(void **state) {
    (void)state;
    const uint8_t seq_only[] = {0x08, 0x05};
    fc_error err = expect_unpack(seq_only, sizeof seq_only, FC_ERR_PROTOCOL);
    assert_non_null(strstr(err.msg, "unknown message type"));
    assert_non_null(strstr(err.msg, "seq 5"));
    /* Field 99 (a body from some future version), length-delimited, 1 byte: tag 99<<3|2 = 794
     * = varint 9a 06. */
    const uint8_t future[] = {0x08, 0x01, 0x9a, 0x06, 0x01, 0x00};
    err = expect_unpack(future, sizeof future, FC_ERR_PROTOCOL);
    assert_non_null(strstr(err.msg, "unknown message type"));
    assert_non_null(strstr(err.msg, "field 99"));
}

static void test_unknown_fields_beside_a_body_are_ignored(void **state) {
    (void)state;
    /* Bye{reason "x", field 9 varint 7} plus Envelope field 50 fixed32. */
    const uint8_t p[] = {0x08, 0x01, 0xba, 0x01, 0x05, 0x0a, 0x01, 'x',  0x48, 0x07,
                         0x95, 0x03, 1,    2,    3,    4};
    fc_envelope *env = NULL;
    assert_int_equal(fc_envelope_unpack(p, sizeof p, &env, NULL), FC_OK);
    assert_int_equal(env->body_case, FEDCOORD__V1__ENVELOPE__BODY_BYE);
    assert_string_equal(env->bye->reason, "x");
    fc_envelope_free(env);
}

static void test_bad_varints_are_format_errors_naming_the_field(void **state) {
    (void)state;
    /* seq as an 11-byte varint */
    const uint8_t too_long[] = {0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                                0x80, 0x80, 0x80, 0x80, 0x01};
    fc_error err = expect_unpack(too_long, sizeof too_long, FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "Envelope.seq (field 1): varint too long"));
    /* seq truncated mid-varint */
    const uint8_t trunc[] = {0x08, 0x80, 0x80};
    err = expect_unpack(trunc, sizeof trunc, FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "truncated varint"));
    /* 10-byte varint above 2^64 - 1 */
    const uint8_t over[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02};
    err = expect_unpack(over, sizeof over, FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "overflows 64 bits"));
    /* 2^64 - 1 itself is fine (then no body: protocol error, not format) */
    const uint8_t max[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    expect_unpack(max, sizeof max, FC_ERR_PROTOCOL);
    /* a tag that never ends */
    const uint8_t tag[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80};
    err = expect_unpack(tag, sizeof tag, FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "field tag"));
    /* a bad varint nested in Task.round */
    const uint8_t nested[] = {0x6a, 0x03, 0x08, 0x80, 0x80};
    err = expect_unpack(nested, sizeof nested, FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "Envelope.task: byte 3: Task.round (field 1): truncated"));
}

static void test_truncated_and_mistyped_fields_are_format_errors(void **state) {
    (void)state;
    /* Bye announces 10 bytes, 2 follow. */
    const uint8_t past[] = {0xba, 0x01, 0x0a, 0x0a, 0x00};
    fc_error err = expect_unpack(past, sizeof past, FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "length 10 runs past the end"));
    /* seq sent as length-delimited */
    const uint8_t mistyped[] = {0x0a, 0x01, 0x00, 0xba, 0x01, 0x00};
    err = expect_unpack(mistyped, sizeof mistyped, FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "wire type 2, expected 0"));
    /* field number 0 */
    const uint8_t zero[] = {0x00, 0x01};
    err = expect_unpack(zero, sizeof zero, FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "invalid field number 0"));
    /* groups (wire types 3 and 4) and the unused wire types 6 and 7 */
    const uint8_t group[] = {0x0b, 0x0c};
    err = expect_unpack(group, sizeof group, FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "group"));
    const uint8_t wt6[] = {0x0e, 0x00};
    expect_unpack(wt6, sizeof wt6, FC_ERR_FORMAT);
    /* a truncated fixed64 in an unknown field */
    const uint8_t fixed[] = {0xba, 0x01, 0x00, 0x49, 1, 2, 3};
    err = expect_unpack(fixed, sizeof fixed, FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "truncated 8-byte value"));
    /* a malformed packed shape: TensorSpec.shape packed with a dangling continuation byte,
     * inside ModelBegin.tensors inside the Envelope */
    const uint8_t packed[] = {0x7a, 0x06, 0x12, 0x04, 0x1a, 0x02, 0x05, 0x80};
    err = expect_unpack(packed, sizeof packed, FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "malformed packed array"));
}

static void test_strings_must_be_utf8_without_nul(void **state) {
    (void)state;
    /* Hello.client_name (field 3) inside Envelope field 10. */
    struct {
        const char *bytes;
        size_t len;
        fc_status want;
    } cases[] = {
        {"abc", 3, FC_OK},
        {"\xc3\xa9", 2, FC_OK},                 /* é */
        {"\xf0\x9f\x98\x80", 4, FC_OK},         /* U+1F600 */
        {"\xc3", 1, FC_ERR_FORMAT},             /* truncated sequence */
        {"\xc0\xaf", 2, FC_ERR_FORMAT},         /* overlong '/' */
        {"\xed\xa0\x80", 3, FC_ERR_FORMAT},     /* surrogate U+D800 */
        {"\xf4\x90\x80\x80", 4, FC_ERR_FORMAT}, /* above U+10FFFF */
        {"\xff", 1, FC_ERR_FORMAT},
        {"a\0b", 3, FC_ERR_FORMAT}, /* NUL would silently cut the C string */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t p[32] = {0x52, 0, 0x1a, 0};
        p[1] = (uint8_t)(2 + cases[i].len);
        p[3] = (uint8_t)cases[i].len;
        memcpy(p + 4, cases[i].bytes, cases[i].len);
        fc_error err = expect_unpack(p, 4 + cases[i].len, cases[i].want);
        if (cases[i].want != FC_OK)
            assert_non_null(strstr(err.msg, "Hello.client_name (field 3): string is not valid"));
    }
}

static void test_garbage_never_crashes(void **state) {
    (void)state;
    srand(777);
    uint8_t buf[256];
    int ok = 0;
    for (int trial = 0; trial < 20000; trial++) {
        size_t n = (size_t)(rand() % (int)sizeof buf) + 1;
        for (size_t i = 0; i < n; i++)
            buf[i] = (uint8_t)rand();
        fc_envelope *env = NULL;
        fc_status st = fc_envelope_unpack(buf, n, &env, NULL);
        assert_true(st == FC_OK || st == FC_ERR_FORMAT || st == FC_ERR_PROTOCOL);
        ok += st == FC_OK;
        fc_envelope_free(env);
        fc_chunk_view v;
        (void)fc_frame_peek_chunk(buf, n, &v);
    }
    assert_true(ok < 20000);
}

static void test_unpack_memory_budget_caps_tiny_field_floods(void **state) {
    (void)state;
    /* Task{config: N empty map entries}: 2 wire bytes per entry, ~90 bytes of protobuf-c memory
     * (scan record, pointer, entry struct, allocation headers). Above the budget of 48 per byte. */
    size_t entries = 200000;
    size_t body = 2 * entries;
    uint8_t *p = malloc(body + 16);
    assert_non_null(p);
    size_t n = 0;
    p[n++] = 0x6a; /* Envelope.task */
    for (size_t v = body; ; v >>= 7) {
        p[n++] = (uint8_t)(v >= 0x80 ? (v & 0x7f) | 0x80 : v);
        if (v < 0x80)
            break;
    }
    for (size_t i = 0; i < entries; i++) {
        p[n++] = 0x22; /* Task.config, empty entry */
        p[n++] = 0x00;
    }
    fc_error err = expect_unpack(p, n, FC_ERR_LIMIT);
    assert_non_null(strstr(err.msg, "memory budget"));
    free(p);
}

static void test_many_minimal_tensor_specs_fit_the_budget(void **state) {
    (void)state;
    /* The densest legitimate header: ModelBegin with specs {name "a", dtype f32} (7 wire bytes
     * each: 12 05 0a 01 61 10 01). */
    size_t specs = 100000;
    size_t body = 7 * specs;
    uint8_t *p = malloc(body + 16);
    assert_non_null(p);
    size_t n = 0;
    p[n++] = 0x7a; /* Envelope.model_begin */
    for (size_t v = body; ; v >>= 7) {
        p[n++] = (uint8_t)(v >= 0x80 ? (v & 0x7f) | 0x80 : v);
        if (v < 0x80)
            break;
    }
    static const uint8_t spec[] = {0x12, 0x05, 0x0a, 0x01, 'a', 0x10, 0x01};
    for (size_t i = 0; i < specs; i++) {
        memcpy(p + n, spec, sizeof spec);
        n += sizeof spec;
    }
    fc_envelope *env = NULL;
    fc_error err = {0};
    assert_int_equal(fc_envelope_unpack(p, n, &env, &err), FC_OK);
    assert_int_equal(env->model_begin->n_tensors, specs);
    assert_string_equal(env->model_begin->tensors[specs - 1]->name, "a");
    fc_envelope_free(env);
    free(p);
}

static void test_unpack_allocation_failures_are_clean(void **state) {
    (void)state;
    fc_envelope env;
    Fedcoord__V1__Hello hello;
    set_hello(&env, &hello, 3, "c");
    char *caps[] = {"a", "b", "c"};
    hello.capabilities = caps;
    hello.n_capabilities = 3;
    fc_buf b = FC_BUF_INIT;
    assert_int_equal(fc_frame_encode(&env, 0, &b, NULL), FC_OK);
    int succeeded = 0;
    for (long n = 0; n < 50 && !succeeded; n++) {
        fc_envelope *out = NULL;
        fc_alloc_fail_after(n);
        fc_status st = fc_envelope_unpack(b.data + 4, b.len - 4, &out, NULL);
        fc_alloc_fail_after(-1);
        if (st == FC_OK) {
            succeeded = 1;
            assert_int_equal(out->hello->n_capabilities, 3);
        } else {
            assert_int_equal(st, FC_ERR_NOMEM);
            assert_null(out);
        }
        fc_envelope_free(out);
    }
    assert_true(succeeded);
    fc_buf_free(&b);
}

/* ---- zero-copy chunk path ---- */

static void test_peek_chunk_agrees_with_unpack(void **state) {
    (void)state;
    /* Non-canonical but valid forms: fields out of order, zero values written explicitly,
     * non-minimal varints. */
    const uint8_t forms[][32] = {
        /* len, then bytes: chunk first then seq; inside: data, offset, index */
        {14, 0x82, 0x01, 0x09, 0x1a, 0x03, 'a', 'b', 'c', 0x10, 0x05, 0x08, 0x02, 0x08, 0x09},
        /* seq 0 written; index 0 written; offset as a 3-byte varint of 1 */
        {14, 0x08, 0x00, 0x82, 0x01, 0x09, 0x08, 0x00, 0x10, 0x81, 0x80, 0x00, 0x1a, 0x01, 'z'},
        /* no data field at all */
        {7, 0x08, 0x01, 0x82, 0x01, 0x02, 0x08, 0x07},
    };
    for (size_t i = 0; i < 3; i++) {
        const uint8_t *p = forms[i] + 1;
        size_t n = forms[i][0];
        fc_chunk_view v;
        assert_int_equal(fc_frame_peek_chunk(p, n, &v), 1);
        fc_envelope *env = NULL;
        assert_int_equal(fc_envelope_unpack(p, n, &env, NULL), FC_OK);
        assert_int_equal(env->body_case, FEDCOORD__V1__ENVELOPE__BODY_CHUNK);
        assert_int_equal(env->seq, v.seq);
        assert_int_equal(env->chunk->tensor_index, v.tensor_index);
        assert_int_equal(env->chunk->offset, v.offset);
        assert_int_equal(env->chunk->data.len, v.data_len);
        if (v.data_len)
            assert_memory_equal(env->chunk->data.data, v.data, v.data_len);
        fc_envelope_free(env);
    }
}

static void test_peek_chunk_declines_anything_unusual(void **state) {
    (void)state;
    const uint8_t cases[][16] = {
        {4, 0xba, 0x01, 0x01, 0x00},                   /* a Bye */
        {2, 0x08, 0x01},                               /* no body */
        {8, 0x82, 0x01, 0x02, 0x08, 0x01, 0x82, 0x01, 0x00}, /* two chunk bodies */
        {7, 0x82, 0x01, 0x04, 0x08, 0x01, 0x08, 0x02}, /* tensor_index twice */
        {5, 0x82, 0x01, 0x02, 0x20, 0x01},             /* unknown Chunk field 4 */
        {7, 0x82, 0x01, 0x02, 0x08, 0x01, 0x48, 0x00}, /* unknown Envelope field 9 after */
        {5, 0x82, 0x01, 0x05, 0x08, 0x01},             /* chunk length past the end */
        {7, 0x82, 0x01, 0x04, 0x08, 0xff, 0xff, 0xff}, /* truncated varint */
        /* tensor_index 2^32: out of uint32 range */
        {9, 0x82, 0x01, 0x06, 0x08, 0x80, 0x80, 0x80, 0x80, 0x10},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fc_chunk_view v;
        assert_int_equal(fc_frame_peek_chunk(cases[i] + 1, cases[i][0], &v), 0);
    }
}

/* The head of a chunk frame tells the same fields as the whole frame, as soon as it has arrived:
 * for every prefix of the Envelope, peek_chunk_head answers 0 until the payload starts, then 1
 * with peek_chunk's fields and the payload's offset. */
static void test_peek_chunk_head_agrees_with_peek_chunk(void **state) {
    (void)state;
    static uint8_t data[1 << 20];
    const uint64_t seqs[] = {1, 300, (uint64_t)1 << 40};
    const uint32_t idxs[] = {0, 5, 70000};
    const uint64_t offs[] = {0, 4096, (uint64_t)1 << 35};
    const size_t lens[] = {1, 100, 4096, sizeof data};
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 3; b++)
            for (size_t c = 0; c < 3; c++)
                for (size_t d = 0; d < 4; d++) {
                    fc_buf f = FC_BUF_INIT;
                    assert_int_equal(fc_frame_encode_chunk(seqs[a], idxs[b], offs[c], data,
                                                           lens[d], 0, &f, NULL),
                                     FC_OK);
                    const uint8_t *env = f.data + 4;
                    size_t n = f.len - 4;
                    fc_chunk_view full, head;
                    assert_int_equal(fc_frame_peek_chunk(env, n, &full), 1);
                    size_t at = 0, first = 0;
                    for (size_t have = 0; have <= FC_FRAME_CHUNK_HEADER_MAX - 4; have++) {
                        int r = fc_frame_peek_chunk_head(env, have, n, &head, &at);
                        if (!first && r)
                            first = have;
                        assert_int_equal(r, first != 0); /* 0, then 1 from some length on */
                    }
                    assert_true(first > 0);
                    assert_int_equal(at, (size_t)(full.data - env));
                    assert_int_equal(first, at); /* exactly when the payload starts */
                    assert_int_equal(head.seq, full.seq);
                    assert_int_equal(head.tensor_index, full.tensor_index);
                    assert_int_equal(head.offset, full.offset);
                    assert_int_equal(head.data_len, full.data_len);
                    assert_null(head.data);
                    fc_buf_free(&f);
                }
    /* Forms whose payload does not run to the frame's end, or that are not plain chunks. */
    const uint8_t no[][16] = {
        /* data first, then offset and index */
        {14, 0x82, 0x01, 0x09, 0x1a, 0x03, 'a', 'b', 'c', 0x10, 0x05, 0x08, 0x02, 0x08, 0x09},
        {7, 0x08, 0x01, 0x82, 0x01, 0x02, 0x08, 0x07},             /* no data field */
        {9, 0x82, 0x01, 0x03, 0x1a, 0x01, 'z', 0x48, 0x00, 0x00},  /* Envelope field after */
        {8, 0x82, 0x01, 0x05, 0x1a, 0x01, 'z', 0x08, 0x01},        /* Chunk field after data */
        {4, 0xba, 0x01, 0x01, 0x00},                               /* a Bye */
        {6, 0x82, 0x01, 0x03, 0x1a, 0x02, 'z'},                    /* data past the end */
    };
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        fc_chunk_view v;
        size_t at = 0;
        assert_int_equal(fc_frame_peek_chunk_head(no[i] + 1, no[i][0], no[i][0], &v, &at), 0);
    }
}

/* A frame the caller consumed itself still counts in the decoder's later error messages. */
static void test_decoder_counts_frames_passed_by_the_caller(void **state) {
    (void)state;
    fc_frame_decoder d;
    fc_frame_decoder_init(&d, 64);
    fc_frame_decoder_passed(&d, 1000);
    const uint8_t bad[4] = {0, 0, 1, 0}; /* 256 > 64 */
    size_t used = 0;
    fc_frame f;
    fc_error err = {0};
    assert_int_equal(fc_frame_decoder_feed(&d, bad, 4, &used, &f, &err), FC_ERR_LIMIT);
    assert_non_null(strstr(err.msg, "frame 2 at stream byte 1000"));
    fc_frame_decoder_free(&d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_writes_big_endian_length_then_envelope),
        cmocka_unit_test(test_encode_refuses_envelope_without_body),
        cmocka_unit_test(test_encode_accepts_exactly_max_and_refuses_max_plus_one),
        cmocka_unit_test(test_chunk_header_matches_protobuf_c_packing),
        cmocka_unit_test(test_chunk_header_refuses_empty_and_oversized_data),
        cmocka_unit_test(test_whole_stream_in_one_call_yields_every_frame_in_place),
        cmocka_unit_test(test_stream_fed_one_byte_at_a_time_gives_same_frames),
        cmocka_unit_test(test_stream_fed_in_random_splits_gives_same_frames),
        cmocka_unit_test(test_truncated_frame_needs_more_input_then_fails_at_end_of_stream),
        cmocka_unit_test(test_four_gigabyte_length_is_rejected_without_allocating),
        cmocka_unit_test(test_decoder_limit_is_exact),
        cmocka_unit_test(test_zero_length_frame_is_an_error),
        cmocka_unit_test(test_decoder_buffer_allocation_failure_is_clean),
        cmocka_unit_test(test_decoder_memory_is_one_frame_buffer),
        cmocka_unit_test(test_unpack_round_trips_a_hello),
        cmocka_unit_test(test_envelope_with_seq_only_is_unknown_message_type),
        cmocka_unit_test(test_unknown_fields_beside_a_body_are_ignored),
        cmocka_unit_test(test_bad_varints_are_format_errors_naming_the_field),
        cmocka_unit_test(test_truncated_and_mistyped_fields_are_format_errors),
        cmocka_unit_test(test_strings_must_be_utf8_without_nul),
        cmocka_unit_test(test_garbage_never_crashes),
        cmocka_unit_test(test_unpack_memory_budget_caps_tiny_field_floods),
        cmocka_unit_test(test_many_minimal_tensor_specs_fit_the_budget),
        cmocka_unit_test(test_unpack_allocation_failures_are_clean),
        cmocka_unit_test(test_peek_chunk_agrees_with_unpack),
        cmocka_unit_test(test_peek_chunk_declines_anything_unusual),
        cmocka_unit_test(test_peek_chunk_head_agrees_with_peek_chunk),
        cmocka_unit_test(test_decoder_counts_frames_passed_by_the_caller),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
