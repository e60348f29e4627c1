/* test_stream.c: chunk splitting, SHA-256, staging reassembly and every malformed chunk. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "proto/stream.h"

/* ---- helpers ---- */

typedef struct layout_entry {
    const char *name;
    fc_dtype dtype;
    uint32_t ndim;
    uint64_t shape[3];
} layout_entry;

/* Builds an owned model with deterministic, position-dependent bytes (an LCG seeded per model),
 * so a byte copied to the wrong place is detected. */
static void build_model(fc_model *m, const layout_entry *l, size_t n, uint32_t seed) {
    *m = (fc_model)FC_MODEL_INIT;
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        fc_error err = {0};
        assert_int_equal(fc_model_add(m, l[i].name, l[i].dtype, l[i].ndim, l[i].shape, NULL, &err),
                         FC_OK);
        uint8_t *p = m->tensors[i].data;
        for (uint64_t k = 0; k < m->tensors[i].nbytes; k++) {
            x = x * 1664525u + 1013904223u;
            p[k] = (uint8_t)(x >> 24);
        }
    }
}

/* Copies a model's specs into an array (names borrowed). */
static fc_tensor_spec *specs_of(const fc_model *m) {
    fc_tensor_spec *s = calloc(m->count ? m->count : 1, sizeof *s);
    assert_non_null(s);
    for (size_t i = 0; i < m->count; i++)
        s[i] = m->tensors[i].spec;
    return s;
}

static uint64_t model_bytes(const fc_model *m) {
    uint64_t n = 0;
    assert_int_equal(fc_model_nbytes(m, &n), FC_OK);
    return n;
}

static fc_stage *stage_for(const fc_model *m, const fc_stage_config *cfg) {
    fc_tensor_spec *specs = specs_of(m);
    fc_stage_config defaults = {.max_total_bytes = UINT64_MAX};
    fc_stage *s = NULL;
    fc_error err = {0};
    fc_status st = fc_stage_create(specs, m->count, model_bytes(m), cfg ? cfg : &defaults, &s, &err);
    if (st != FC_OK)
        fail_msg("fc_stage_create: %s", fc_error_text(&err));
    free(specs);
    return s;
}

/* Checks that the staged bytes equal the model's, tensor by tensor, through a model view. */
static void assert_staged_equals(const fc_stage *s, const fc_model *m) {
    fc_model view = FC_MODEL_INIT;
    fc_error err = {0};
    assert_int_equal(fc_stage_view_model(s, &view, &err), FC_OK);
    assert_int_equal(view.count, m->count);
    for (size_t i = 0; i < m->count; i++) {
        assert_string_equal(view.tensors[i].spec.name, m->tensors[i].spec.name);
        assert_true(fc_spec_same_layout(&view.tensors[i].spec, &m->tensors[i].spec));
        assert_int_equal(view.tensors[i].nbytes, m->tensors[i].nbytes);
        assert_int_equal(view.tensors[i].owns_data, 0);
        if (m->tensors[i].nbytes)
            assert_memory_equal(view.tensors[i].data, m->tensors[i].data,
                                (size_t)m->tensors[i].nbytes);
    }
    fc_model_free(&view);
}

/* Streams every chunk of m from start_offset into s with chunks of max_chunk bytes. */
static void feed_all(fc_stage *s, const fc_model *m, size_t max_chunk, uint64_t start) {
    fc_stream_splitter sp;
    fc_error err = {0};
    assert_int_equal(fc_stream_split_model(&sp, m, max_chunk, start, &err), FC_OK);
    fc_chunk_desc c;
    while (fc_stream_split_next(&sp, &c)) {
        fc_status st = fc_stage_add_chunk(s, c.tensor_index, c.offset, c.data, c.len, &err);
        if (st != FC_OK)
            fail_msg("add_chunk(%u, %llu, %zu): %s", c.tensor_index, (unsigned long long)c.offset,
                     c.len, fc_error_text(&err));
    }
}

static void finish_ok(fc_stage *s, const fc_model *m) {
    uint8_t hash[FC_SHA256_BYTES];
    fc_error err = {0};
    assert_int_equal(fc_stream_model_sha256(m, hash, &err), FC_OK);
    fc_status st = fc_stage_finish(s, hash, sizeof hash, &err);
    if (st != FC_OK)
        fail_msg("finish: %s", fc_error_text(&err));
    assert_true(fc_stage_complete(s));
}

static size_t largest_element(const fc_model *m) {
    size_t e = 0;
    for (size_t i = 0; i < m->count; i++)
        if (m->tensors[i].nbytes && fc_dtype_size(m->tensors[i].spec.dtype) > e)
            e = fc_dtype_size(m->tensors[i].spec.dtype);
    return e;
}

/* Chunks the splitter must produce, from the definition: per non-empty tensor,
 * ceil(size / (max_chunk rounded down to whole elements)). */
static uint64_t expected_chunks(const fc_model *m, size_t max_chunk) {
    uint64_t n = 0;
    for (size_t i = 0; i < m->count; i++) {
        size_t es = fc_dtype_size(m->tensors[i].spec.dtype);
        uint64_t per = max_chunk - max_chunk % es;
        n += (m->tensors[i].nbytes + per - 1) / per;
    }
    return n;
}

/* The layouts the round-trip tests run over. */
static const layout_entry layout_single[] = {{"w", FC_DTYPE_F32, 2, {5, 7}}};
static const layout_entry layout_mixed[] = {
    {"embed", FC_DTYPE_F16, 2, {3, 5}},   {"norm.scale", FC_DTYPE_BF16, 1, {4}},
    {"empty", FC_DTYPE_F32, 2, {0, 4}},   {"head.w", FC_DTYPE_F64, 2, {3, 3}},
    {"head.b", FC_DTYPE_F32, 0, {0}},     {"tail", FC_DTYPE_F16, 1, {1}},
};
static const layout_entry layout_half[] = {{"a", FC_DTYPE_F16, 1, {9}},
                                           {"b", FC_DTYPE_BF16, 3, {2, 3, 2}}};
static const layout_entry layout_f64[] = {{"x", FC_DTYPE_F64, 1, {17}}, {"y", FC_DTYPE_F64, 0, {0}}};
/* 3 MiB + 4 bytes of f32 then a small tensor: exercises full 1 MiB chunks. */
static const layout_entry layout_big[] = {{"big", FC_DTYPE_F32, 1, {786433}},
                                          {"small", FC_DTYPE_F16, 1, {3}}};

static const struct {
    const layout_entry *l;
    size_t n;
} layouts[] = {
    {layout_single, 1}, {layout_mixed, 6}, {layout_half, 2}, {layout_f64, 2}, {layout_big, 2},
};

/* ---- SHA-256 ---- */

static void test_sha256_matches_known_vectors(void **state) {
    (void)state;
    /* FIPS 180-2 examples and sha256sum of "abcd". */
    static const struct {
        const char *msg;
        const char *hex;
    } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcd", "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        fc_stream_hash h = {0};
        fc_error err = {0};
        assert_int_equal(fc_stream_hash_init(&h, &err), FC_OK);
        /* Byte at a time, to check the incremental path. */
        for (size_t k = 0; k < strlen(v[i].msg); k++)
            assert_int_equal(fc_stream_hash_update(&h, v[i].msg + k, 1, &err), FC_OK);
        uint8_t out[FC_SHA256_BYTES];
        char hex[2 * FC_SHA256_BYTES + 1];
        assert_int_equal(fc_stream_hash_final(&h, out, &err), FC_OK);
        assert_string_equal(fc_stream_hex(out, sizeof out, hex), v[i].hex);
        /* Finished: the context is gone and further use is a state error, not a crash. */
        assert_int_equal(fc_stream_hash_update(&h, "x", 1, &err), FC_ERR_STATE);
        assert_int_equal(fc_stream_hash_final(&h, out, &err), FC_ERR_STATE);
        fc_stream_hash_free(&h);
    }
}

static void test_model_sha256_is_hash_of_concatenated_tensor_data(void **state) {
    (void)state;
    /* The 56-byte FIPS message as f32[6] + f16[4] + f64[3] + empty: 24 + 8 + 24 = 56 bytes. */
    const char *msg = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    fc_model m = FC_MODEL_INIT;
    fc_error err = {0};
    uint64_t s6[] = {6}, s4[] = {4}, s3[] = {3}, s0[] = {0};
    assert_int_equal(fc_model_add(&m, "a", FC_DTYPE_F32, 1, s6, msg, &err), FC_OK);
    assert_int_equal(fc_model_add(&m, "b", FC_DTYPE_F16, 1, s4, msg + 24, &err), FC_OK);
    assert_int_equal(fc_model_add(&m, "e", FC_DTYPE_F32, 1, s0, NULL, &err), FC_OK);
    assert_int_equal(fc_model_add(&m, "c", FC_DTYPE_F64, 1, s3, msg + 32, &err), FC_OK);
    uint8_t out[FC_SHA256_BYTES];
    char hex[2 * FC_SHA256_BYTES + 1];
    assert_int_equal(fc_stream_model_sha256(&m, out, &err), FC_OK);
    assert_string_equal(fc_stream_hex(out, sizeof out, hex),
                        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    fc_model_free(&m);
}

/* ---- splitter ---- */

static void test_split_then_reassemble_every_chunk_size(void **state) {
    (void)state;
    static const size_t extra_sizes[] = {
        512, 1000, 1024, 4093, 4096, 65536, 65539, 1u << 19, (1u << 20) - 1, 1u << 20,
    };
    for (size_t li = 0; li < sizeof layouts / sizeof layouts[0]; li++) {
        fc_model m;
        build_model(&m, layouts[li].l, layouts[li].n, (uint32_t)li);
        uint64_t total = model_bytes(&m);
        size_t max_es = largest_element(&m);
        int big = layouts[li].l == layout_big;
        /* Every chunk size from 1 to 300 bytes (the big model only from 200, to stay fast), then
         * larger sizes up to the 1 MiB maximum. */
        size_t nsizes = 300 + sizeof extra_sizes / sizeof extra_sizes[0];
        for (size_t k = big ? 200 : 0; k < nsizes; k++) {
            size_t max_chunk = k < 300 ? k + 1 : extra_sizes[k - 300];
            fc_stream_splitter sp;
            fc_error err = {0};
            fc_status st = fc_stream_split_model(&sp, &m, max_chunk, 0, &err);
            if (max_chunk < max_es) {
                assert_int_equal(st, FC_ERR_INVALID);
                assert_non_null(strstr(err.msg, "is smaller than one"));
                continue;
            }
            assert_int_equal(st, FC_OK);
            assert_int_equal(fc_stream_split_total(&sp), total);
            fc_stage *s = stage_for(&m, NULL);
            fc_chunk_desc c;
            uint64_t global = 0, chunks = 0;
            size_t prev_tensor = 0;
            uint64_t prev_end = 0;
            while (fc_stream_split_next(&sp, &c)) {
                chunks++;
                size_t es = fc_dtype_size(m.tensors[c.tensor_index].spec.dtype);
                assert_true(c.len >= 1 && c.len <= max_chunk);
                assert_int_equal(c.len % es, 0);
                assert_int_equal(c.offset % es, 0);
                assert_int_equal(c.global_offset, global);
                assert_true(c.offset + c.len <= m.tensors[c.tensor_index].nbytes);
                assert_ptr_equal(c.data, (uint8_t *)m.tensors[c.tensor_index].data + c.offset);
                /* In order: same tensor continuing, or the start of a later one. */
                if (c.tensor_index == prev_tensor && chunks > 1)
                    assert_int_equal(c.offset, prev_end);
                else
                    assert_int_equal(c.offset, 0);
                prev_tensor = c.tensor_index;
                prev_end = c.offset + c.len;
                global += c.len;
                assert_int_equal(fc_stage_add_chunk(s, c.tensor_index, c.offset, c.data, c.len,
                                                    &err),
                                 FC_OK);
                assert_int_equal(fc_stage_received(s), global);
            }
            assert_int_equal(global, total);
            assert_int_equal(chunks, expected_chunks(&m, max_chunk));
            assert_int_equal(fc_stream_split_next(&sp, &c), 0); /* stays finished */
            finish_ok(s, &m);
            assert_staged_equals(s, &m);
            fc_stage_free(s);
        }
        fc_model_free(&m);
    }
}

static void test_default_chunk_size_is_1mib(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_big, 2, 7);
    fc_stream_splitter sp;
    fc_error err = {0};
    assert_int_equal(fc_stream_split_model(&sp, &m, 0, 0, &err), FC_OK);
    /* big is 3 MiB + 4 bytes: three full chunks and 4 bytes; small is 6 bytes. */
    const size_t want[] = {1u << 20, 1u << 20, 1u << 20, 4, 6};
    fc_chunk_desc c;
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(fc_stream_split_next(&sp, &c), 1);
        assert_int_equal(c.len, want[i]);
    }
    assert_int_equal(fc_stream_split_next(&sp, &c), 0);
    /* Larger than the protocol maximum is refused. */
    assert_int_equal(fc_stream_split_model(&sp, &m, (1u << 20) + 1, 0, &err), FC_ERR_INVALID);
    fc_model_free(&m);
}

static void test_split_specs_gives_layout_without_data(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_mixed, 6, 3);
    fc_tensor_spec *specs = specs_of(&m);
    fc_stream_splitter a, b;
    fc_error err = {0};
    assert_int_equal(fc_stream_split_specs(&a, specs, m.count, 16, 0, &err), FC_OK);
    assert_int_equal(fc_stream_split_model(&b, &m, 16, 0, &err), FC_OK);
    fc_chunk_desc ca, cb;
    for (;;) {
        int ra = fc_stream_split_next(&a, &ca), rb = fc_stream_split_next(&b, &cb);
        assert_int_equal(ra, rb);
        if (!ra)
            break;
        assert_null(ca.data);
        assert_int_equal(ca.tensor_index, cb.tensor_index);
        assert_int_equal(ca.offset, cb.offset);
        assert_int_equal(ca.len, cb.len);
        assert_int_equal(ca.global_offset, cb.global_offset);
    }
    specs[0].dtype = (fc_dtype)9;
    assert_int_equal(fc_stream_split_specs(&a, specs, m.count, 16, 0, &err), FC_ERR_DTYPE);
    free(specs);
    fc_model_free(&m);
}

static void test_split_start_offset_is_checked(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_mixed, 6, 4);
    uint64_t total = model_bytes(&m); /* 30 + 8 + 0 + 72 + 4 + 2 = 116 */
    assert_int_equal(total, 116);
    fc_stream_splitter sp;
    fc_error err = {0};
    fc_chunk_desc c;
    /* Past the end. */
    assert_int_equal(fc_stream_split_model(&sp, &m, 0, total + 1, &err), FC_ERR_RANGE);
    assert_non_null(strstr(err.msg, "past the end"));
    /* At the end: nothing left to send. */
    assert_int_equal(fc_stream_split_model(&sp, &m, 0, total, &err), FC_OK);
    assert_int_equal(fc_stream_split_next(&sp, &c), 0);
    /* Byte 39 is offset 1 of head.w (starts at 38, f64): inside an element. */
    assert_int_equal(fc_stream_split_model(&sp, &m, 0, 39, &err), FC_ERR_RANGE);
    assert_non_null(strstr(err.msg, "'head.w'"));
    /* Byte 38 is the start of head.w (the empty tensor before it is skipped). */
    assert_int_equal(fc_stream_split_model(&sp, &m, 0, 38, &err), FC_OK);
    assert_int_equal(fc_stream_split_next(&sp, &c), 1);
    assert_int_equal(c.tensor_index, 3);
    assert_int_equal(c.offset, 0);
    assert_int_equal(c.global_offset, 38);
    /* Byte 46 is offset 8 of head.w. */
    assert_int_equal(fc_stream_split_model(&sp, &m, 16, 46, &err), FC_OK);
    assert_int_equal(fc_stream_split_next(&sp, &c), 1);
    assert_int_equal(c.tensor_index, 3);
    assert_int_equal(c.offset, 8);
    assert_int_equal(c.len, 16);
    assert_int_equal(fc_stream_split_position(&sp), 62);
    fc_model_free(&m);
}

/* ---- reassembly ---- */

static void test_reassembly_split_at_every_boundary(void **state) {
    (void)state;
    static const layout_entry l[] = {{"w", FC_DTYPE_F32, 1, {16}},
                                     {"h", FC_DTYPE_F16, 1, {5}},
                                     {"d", FC_DTYPE_F64, 1, {4}}};
    fc_model m;
    build_model(&m, l, 3, 11);
    for (size_t t = 0; t < m.count; t++) {
        size_t es = fc_dtype_size(m.tensors[t].spec.dtype);
        size_t size = (size_t)m.tensors[t].nbytes;
        for (size_t p = es; p < size; p += es) {
            fc_stage *s = stage_for(&m, NULL);
            fc_error err = {0};
            for (size_t i = 0; i < m.count; i++) {
                const uint8_t *d = m.tensors[i].data;
                size_t n = (size_t)m.tensors[i].nbytes;
                if (i != t) {
                    assert_int_equal(fc_stage_add_chunk(s, (uint32_t)i, 0, d, n, &err), FC_OK);
                    continue;
                }
                assert_int_equal(fc_stage_add_chunk(s, (uint32_t)i, 0, d, p, &err), FC_OK);
                assert_int_equal(fc_stage_add_chunk(s, (uint32_t)i, p, d + p, n - p, &err), FC_OK);
            }
            finish_ok(s, &m);
            assert_staged_equals(s, &m);
            fc_stage_free(s);
        }
    }
    fc_model_free(&m);
}

static void test_resume_continues_from_acknowledged_offset(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_mixed, 6, 5);
    fc_stage *s = stage_for(&m, NULL);
    fc_stream_splitter sp;
    fc_error err = {0};
    assert_int_equal(fc_stream_split_model(&sp, &m, 8, 0, &err), FC_OK);
    fc_chunk_desc c;
    uint64_t sent = 0;
    for (int i = 0; i < 7; i++) { /* 30 bytes of embed in 8,8,8,6, then norm.scale 8, head.w */
        assert_int_equal(fc_stream_split_next(&sp, &c), 1);
        assert_int_equal(fc_stage_add_chunk(s, c.tensor_index, c.offset, c.data, c.len, &err),
                         FC_OK);
        sent += c.len;
    }
    assert_int_equal(sent, 30 + 8 + 16);
    /* The connection drops; the acknowledged offset is what was received. */
    assert_int_equal(fc_stage_received(s), sent);
    assert_int_equal(fc_stage_check_resume(s, sent, &err), FC_OK);
    assert_int_equal(fc_stage_check_resume(s, sent + 8, &err), FC_ERR_RANGE);
    assert_int_equal(fc_stage_check_resume(s, sent - 8, &err), FC_ERR_RANGE);
    assert_non_null(strstr(err.msg, "54 bytes"));
    /* A new sender picks up at that offset with a different chunk size. */
    feed_all(s, &m, 24, fc_stage_received(s));
    finish_ok(s, &m);
    assert_staged_equals(s, &m);
    assert_int_equal(fc_stage_check_resume(s, fc_stage_total(s), &err), FC_ERR_STATE);
    fc_stage_free(s);
    fc_model_free(&m);
}

/* 16384 + 256 + 4096 + 4096 + 0 = 24832 bytes; the last tensor is empty. */
static const layout_entry layout_named[] = {
    {"fc1.weight", FC_DTYPE_F32, 2, {64, 64}}, {"fc1.bias", FC_DTYPE_F32, 1, {64}},
    {"fc2.weight", FC_DTYPE_F32, 2, {16, 64}}, {"fc2.bias", FC_DTYPE_F32, 1, {1024}},
    {"scale", FC_DTYPE_F16, 1, {0}},
};

static void test_chunk_bad_tensor_index_is_rejected(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_named, 5, 1);
    fc_stage *s = stage_for(&m, NULL);
    fc_error err = {0};
    assert_int_equal(fc_stage_add_chunk(s, 7, 0, m.tensors[0].data, 4, &err), FC_ERR_CHUNK);
    assert_string_equal(err.msg, "chunk for tensor 7 but the update announced 5 tensors");
    assert_int_equal(fc_stage_add_chunk(s, 5, 0, m.tensors[0].data, 4, &err), FC_ERR_CHUNK);
    assert_int_equal(fc_stage_add_chunk(s, UINT32_MAX, 0, m.tensors[0].data, 4, &err),
                     FC_ERR_CHUNK);
    assert_int_equal(fc_stage_received(s), 0); /* a rejected chunk changes nothing */
    feed_all(s, &m, 0, 0);
    finish_ok(s, &m);
    fc_stage_free(s);
    fc_model_free(&m);
}

static void test_chunk_bad_offset_is_rejected(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_named, 5, 2);
    fc_stage *s = stage_for(&m, NULL);
    fc_error err = {0};
    const uint8_t *d = m.tensors[3].data;
    /* fc2.bias is 4096 bytes: offset 4096 is its end, 4092 + 8 runs past it. */
    assert_int_equal(fc_stage_add_chunk(s, 3, 4096, d, 4, &err), FC_ERR_CHUNK);
    assert_string_equal(err.msg, "chunk at offset 4096 of 'fc2.bias' with 4 bytes runs past the "
                                 "tensor's end (4096 bytes)");
    assert_int_equal(fc_stage_add_chunk(s, 3, 4092, d, 8, &err), FC_ERR_CHUNK);
    assert_non_null(strstr(err.msg, "runs past the tensor's end"));
    assert_int_equal(fc_stage_add_chunk(s, 3, UINT64_MAX - 7, d, 4, &err), FC_ERR_CHUNK);
    assert_non_null(strstr(err.msg, "runs past"));
    assert_int_equal(fc_stage_received(s), 0);
    fc_stage_free(s);
    fc_model_free(&m);
}

static void test_chunk_offset_plus_length_overflow_is_rejected(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_named, 5, 3);
    fc_stage *s = stage_for(&m, NULL);
    fc_error err = {0};
    /* UINT64_MAX - 3 + 8 wraps to 4: a naive `offset + len <= size` check would pass. */
    assert_int_equal(fc_stage_add_chunk(s, 0, UINT64_MAX - 3, m.tensors[0].data, 8, &err),
                     FC_ERR_CHUNK);
    assert_string_equal(err.msg, "chunk at offset 18446744073709551612 of 'fc1.weight': offset + "
                                 "length 8 overflows 64 bits");
    assert_int_equal(fc_stage_received(s), 0);
    fc_stage_free(s);
    fc_model_free(&m);
}

static void test_chunk_misaligned_is_rejected(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_named, 5, 4);
    fc_stage *s = stage_for(&m, NULL);
    fc_error err = {0};
    const uint8_t *d = m.tensors[0].data;
    assert_int_equal(fc_stage_add_chunk(s, 0, 0, d, 6, &err), FC_ERR_CHUNK); /* length */
    assert_string_equal(err.msg, "chunk at offset 0 of 'fc1.weight' with 6 bytes is not aligned "
                                 "to its 4-byte f32 elements");
    assert_int_equal(fc_stage_add_chunk(s, 0, 0, d, 1, &err), FC_ERR_CHUNK);
    assert_int_equal(fc_stage_add_chunk(s, 0, 0, d, 4, &err), FC_OK);
    assert_int_equal(fc_stage_add_chunk(s, 0, 6, d + 6, 4, &err), FC_ERR_CHUNK); /* offset */
    assert_non_null(strstr(err.msg, "not aligned"));
    assert_int_equal(fc_stage_received(s), 4);
    fc_stage_free(s);
    fc_model_free(&m);
}

static void test_chunk_overlap_is_rejected(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_named, 5, 5);
    fc_stage *s = stage_for(&m, NULL);
    fc_error err = {0};
    const uint8_t *d = m.tensors[0].data;
    assert_int_equal(fc_stage_add_chunk(s, 0, 0, d, 8192, &err), FC_OK);
    assert_int_equal(fc_stage_add_chunk(s, 0, 4096, d + 4096, 8192, &err), FC_ERR_CHUNK);
    assert_string_equal(err.msg, "chunk at offset 4096 of 'fc1.weight' overlaps bytes already "
                                 "received (next expected 8192)");
    assert_int_equal(fc_stage_received(s), 8192);
    /* Overlap seen from a tensor already complete: the next byte is named with its tensor. */
    assert_int_equal(fc_stage_add_chunk(s, 0, 8192, d + 8192, 8192, &err), FC_OK);
    assert_int_equal(fc_stage_add_chunk(s, 0, 16380, d + 16380, 4, &err), FC_ERR_CHUNK);
    assert_string_equal(err.msg, "chunk at offset 16380 of 'fc1.weight' overlaps bytes already "
                                 "received (next expected offset 0 of 'fc1.bias')");
    fc_stage_free(s);
    fc_model_free(&m);
}

static void test_duplicate_chunk_is_rejected(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_named, 5, 6);
    fc_stage *s = stage_for(&m, NULL);
    fc_error err = {0};
    const uint8_t *d = m.tensors[1].data;
    assert_int_equal(fc_stage_add_chunk(s, 0, 0, m.tensors[0].data, 16384, &err), FC_OK);
    assert_int_equal(fc_stage_add_chunk(s, 1, 0, d, 128, &err), FC_OK);
    assert_int_equal(fc_stage_add_chunk(s, 1, 0, d, 128, &err), FC_ERR_CHUNK);
    assert_string_equal(err.msg, "chunk at offset 0 of 'fc1.bias' overlaps bytes already received "
                                 "(next expected 128)");
    assert_int_equal(fc_stage_received(s), 16384 + 128);
    /* The stream goes on after the rejected duplicate and still verifies. */
    feed_all(s, &m, 0, fc_stage_received(s));
    finish_ok(s, &m);
    fc_stage_free(s);
    fc_model_free(&m);
}

static void test_chunk_leaving_gap_is_rejected(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_named, 5, 7);
    fc_stage *s = stage_for(&m, NULL);
    fc_error err = {0};
    const uint8_t *d = m.tensors[0].data;
    assert_int_equal(fc_stage_add_chunk(s, 0, 0, d, 4096, &err), FC_OK);
    assert_int_equal(fc_stage_add_chunk(s, 0, 8192, d + 8192, 4096, &err), FC_ERR_CHUNK);
    assert_string_equal(err.msg, "chunk at offset 8192 of 'fc1.weight' leaves a gap: next "
                                 "expected 4096 (chunks must arrive in order)");
    /* Skipping to a later tensor. */
    assert_int_equal(fc_stage_add_chunk(s, 3, 0, m.tensors[3].data, 4096, &err), FC_ERR_CHUNK);
    assert_string_equal(err.msg, "chunk at offset 0 of 'fc2.bias' leaves a gap: next expected "
                                 "offset 4096 of 'fc1.weight' (chunks must arrive in order)");
    assert_int_equal(fc_stage_received(s), 4096);
    fc_stage_free(s);
    fc_model_free(&m);
}

static void test_extra_bytes_after_complete_are_rejected(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_named, 5, 8);
    fc_stage *s = stage_for(&m, NULL);
    fc_error err = {0};
    feed_all(s, &m, 0, 0);
    assert_int_equal(fc_stage_received(s), fc_stage_total(s));
    assert_int_equal(fc_stage_add_chunk(s, 3, 4092, m.tensors[3].data, 4, &err), FC_ERR_CHUNK);
    assert_string_equal(err.msg, "chunk at offset 4092 of 'fc2.bias' after all 24832 bytes of the "
                                 "update were received");
    finish_ok(s, &m);
    /* After the end message, any chunk is a state error. */
    assert_int_equal(fc_stage_add_chunk(s, 0, 0, m.tensors[0].data, 4, &err), FC_ERR_STATE);
    assert_int_equal(fc_stage_finish(s, (const uint8_t *)"0123456789abcdef0123456789abcdef", 32,
                                     &err),
                     FC_ERR_STATE);
    fc_stage_free(s);
    fc_model_free(&m);
}

static void test_zero_length_chunk_is_rejected(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_named, 5, 9);
    fc_stage *s = stage_for(&m, NULL);
    fc_error err = {0};
    assert_int_equal(fc_stage_add_chunk(s, 0, 0, m.tensors[0].data, 0, &err), FC_ERR_CHUNK);
    assert_string_equal(err.msg, "zero-length chunk at offset 0 of 'fc1.weight'");
    /* The zero-size tensor cannot receive a chunk at all. */
    assert_int_equal(fc_stage_add_chunk(s, 4, 0, m.tensors[0].data, 2, &err), FC_ERR_CHUNK);
    assert_non_null(strstr(err.msg, "runs past the tensor's end (0 bytes)"));
    fc_stage_free(s);
    fc_model_free(&m);
}

static void test_chunk_larger_than_max_chunk_is_rejected(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_big, 2, 10);
    fc_stage *s = stage_for(&m, NULL);
    fc_error err = {0};
    assert_int_equal(fc_stage_add_chunk(s, 0, 0, m.tensors[0].data, (1u << 20) + 4, &err),
                     FC_ERR_LIMIT);
    assert_string_equal(err.msg, "chunk of 1048580 bytes at offset 0 of 'big' exceeds the maximum "
                                 "chunk size 1048576");
    fc_stage_free(s);
    /* A smaller configured maximum is enforced too. */
    fc_stage_config cfg = {.max_total_bytes = UINT64_MAX, .max_chunk = 4096};
    s = stage_for(&m, &cfg);
    assert_int_equal(fc_stage_add_chunk(s, 0, 0, m.tensors[0].data, 4100, &err), FC_ERR_LIMIT);
    assert_int_equal(fc_stage_add_chunk(s, 0, 0, m.tensors[0].data, 4096, &err), FC_OK);
    fc_stage_free(s);
    fc_model_free(&m);
}

static void test_finish_before_complete_names_missing_bytes(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_named, 5, 11);
    fc_stage *s = stage_for(&m, NULL);
    fc_error err = {0};
    uint8_t hash[FC_SHA256_BYTES];
    assert_int_equal(fc_stream_model_sha256(&m, hash, &err), FC_OK);
    /* Nothing received: the first tensor is missing entirely, and the later ones. */
    assert_int_equal(fc_stage_finish(s, hash, sizeof hash, &err), FC_ERR_CHUNK);
    assert_string_equal(err.msg, "update ended with 16384 of 16384 bytes of 'fc1.weight' missing, "
                                 "and all 8448 bytes of 3 later tensors");
    /* Everything but the last 1024 bytes of fc2.bias (the empty tensor after it needs none). */
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(fc_stage_add_chunk(s, i, 0, m.tensors[i].data,
                                            (size_t)m.tensors[i].nbytes, &err),
                         FC_OK);
    assert_int_equal(fc_stage_add_chunk(s, 3, 0, m.tensors[3].data, 3072, &err), FC_OK);
    assert_int_equal(fc_stage_finish(s, hash, sizeof hash, &err), FC_ERR_CHUNK);
    assert_string_equal(err.msg, "update ended with 1024 of 4096 bytes of 'fc2.bias' missing");
    assert_false(fc_stage_complete(s));
    /* Not fatal: the rest may still come, and then the stream verifies. */
    assert_int_equal(fc_stage_add_chunk(s, 3, 3072, (uint8_t *)m.tensors[3].data + 3072, 1024,
                                        &err),
                     FC_OK);
    assert_int_equal(fc_stage_finish(s, hash, sizeof hash, &err), FC_OK);
    assert_staged_equals(s, &m);
    fc_stage_free(s);
    fc_model_free(&m);
}

/* hash_at_finish: chunks are only copied; fc_stage_check_end gives the same end errors without
 * hashing, and fc_stage_finish hashes the whole buffer: a correct hash completes the stage, a
 * wrong one fails it with the same message as the chunk-by-chunk hash. */
static void test_hash_at_finish_checks_the_same(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_named, 5, 11);
    fc_stage_config cfg = {.max_total_bytes = UINT64_MAX, .hash_at_finish = 1};
    fc_error err = {0};
    uint8_t hash[FC_SHA256_BYTES], wrong[FC_SHA256_BYTES];
    assert_int_equal(fc_stream_model_sha256(&m, hash, &err), FC_OK);
    memcpy(wrong, hash, sizeof wrong);
    wrong[7] ^= 1;
    for (int pass = 0; pass < 2; pass++) {
        fc_stage *s = stage_for(&m, &cfg);
        assert_int_equal(fc_stage_check_end(s, sizeof hash, &err), FC_ERR_CHUNK);
        assert_string_equal(err.msg, "update ended with 16384 of 16384 bytes of 'fc1.weight' "
                                     "missing, and all 8448 bytes of 3 later tensors");
        for (uint32_t i = 0; i < 4; i++)
            if (m.tensors[i].nbytes)
                assert_int_equal(fc_stage_add_chunk(s, i, 0, m.tensors[i].data,
                                                    (size_t)m.tensors[i].nbytes, &err),
                                 FC_OK);
        assert_int_equal(fc_stage_check_end(s, 31, &err), FC_ERR_PROTOCOL);
        assert_int_equal(fc_stage_check_end(s, sizeof hash, &err), FC_OK);
        if (pass == 0) {
            assert_int_equal(fc_stage_finish(s, hash, sizeof hash, &err), FC_OK);
            assert_staged_equals(s, &m);
            assert_int_equal(fc_stage_check_end(s, sizeof hash, &err), FC_ERR_STATE);
        } else {
            assert_int_equal(fc_stage_finish(s, wrong, sizeof wrong, &err), FC_ERR_HASH);
            assert_non_null(strstr(err.msg, "SHA-256 mismatch: announced "));
            assert_false(fc_stage_complete(s));
        }
        fc_stage_free(s);
    }
    fc_model_free(&m);
}

static void test_hash_mismatch_is_rejected(void **state) {
    (void)state;
    fc_model m = FC_MODEL_INIT;
    fc_error err = {0};
    uint64_t shape[] = {1};
    assert_int_equal(fc_model_add(&m, "w", FC_DTYPE_F32, 1, shape, "abcd", &err), FC_OK);
    fc_stage *s = stage_for(&m, NULL);
    assert_int_equal(fc_stage_add_chunk(s, 0, 0, "abcd", 4, &err), FC_OK);
    uint8_t wrong[FC_SHA256_BYTES];
    for (size_t i = 0; i < sizeof wrong; i++)
        wrong[i] = (uint8_t)(0xab + i);
    assert_int_equal(fc_stage_finish(s, wrong, sizeof wrong, &err), FC_ERR_HASH);
    /* Computed digest: sha256sum of "abcd". */
    assert_string_equal(err.msg,
                        "SHA-256 mismatch: announced "
                        "abacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9ca "
                        "computed 88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589");
    assert_false(fc_stage_complete(s));
    /* Failed for good: no view, no more chunks, no second end. */
    fc_model view = FC_MODEL_INIT;
    assert_int_equal(fc_stage_view_model(s, &view, &err), FC_ERR_STATE);
    assert_int_equal(fc_stage_add_chunk(s, 0, 0, "abcd", 4, &err), FC_ERR_STATE);
    assert_int_equal(fc_stage_finish(s, wrong, sizeof wrong, &err), FC_ERR_STATE);
    assert_int_equal(fc_stage_check_resume(s, 0, &err), FC_ERR_STATE);
    fc_stage_free(s);
    fc_model_free(&m);
}

static void test_hash_of_wrong_length_is_a_protocol_error(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_single, 1, 12);
    fc_stage *s = stage_for(&m, NULL);
    fc_error err = {0};
    feed_all(s, &m, 0, 0);
    uint8_t hash[FC_SHA256_BYTES];
    assert_int_equal(fc_stream_model_sha256(&m, hash, &err), FC_OK);
    assert_int_equal(fc_stage_finish(s, hash, 31, &err), FC_ERR_PROTOCOL);
    assert_string_equal(err.msg, "end of the update carries a 31-byte SHA-256, expected 32");
    assert_int_equal(fc_stage_finish(s, NULL, 0, &err), FC_ERR_PROTOCOL);
    assert_int_equal(fc_stage_finish(s, hash, sizeof hash, &err), FC_OK); /* unchanged by those */
    fc_stage_free(s);
    fc_model_free(&m);
}

static void test_view_requires_a_complete_stream(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_half, 2, 13);
    fc_stage *s = stage_for(&m, NULL);
    fc_error err = {0};
    fc_model view = FC_MODEL_INIT;
    assert_int_equal(fc_stage_view_model(s, &view, &err), FC_ERR_STATE);
    feed_all(s, &m, 0, 0);
    /* All bytes received but not verified yet. */
    assert_int_equal(fc_stage_view_model(s, &view, &err), FC_ERR_STATE);
    assert_string_equal(err.msg, "the update is not complete: 42 of 42 bytes verified");
    finish_ok(s, &m);
    assert_int_equal(fc_stage_tensor_count(s), 2);
    assert_string_equal(fc_stage_spec(s, 1)->name, "b");
    assert_null(fc_stage_spec(s, 2));
    assert_staged_equals(s, &m);
    fc_stage_free(s);
    fc_model_free(&m);
}

static void test_stream_of_only_empty_tensors_verifies(void **state) {
    (void)state;
    static const layout_entry l[] = {{"e1", FC_DTYPE_F32, 1, {0}}, {"e2", FC_DTYPE_F64, 2, {3, 0}}};
    fc_model m;
    build_model(&m, l, 2, 14);
    fc_stage_config cfg = {.max_total_bytes = 0};
    fc_stage *s = stage_for(&m, &cfg);
    fc_error err = {0};
    assert_int_equal(fc_stage_received(s), 0);
    assert_int_equal(fc_stage_add_chunk(s, 0, 0, "abcd", 4, &err), FC_ERR_CHUNK);
    /* SHA-256 of nothing. */
    static const uint8_t empty[] = {0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14,
                                    0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
                                    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c,
                                    0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};
    assert_int_equal(fc_stage_finish(s, empty, sizeof empty, &err), FC_OK);
    assert_staged_equals(s, &m);
    fc_stage_free(s);
    fc_model_free(&m);
}

/* ---- announced layout validation ---- */

static fc_status try_create(const fc_tensor_spec *specs, size_t n, uint64_t total,
                            const fc_stage_config *cfg, fc_error *err) {
    fc_stage *s = (fc_stage *)(uintptr_t)1;
    fc_status st = fc_stage_create(specs, n, total, cfg, &s, err);
    if (st == FC_OK)
        fc_stage_free(s);
    else
        assert_null(s);
    return st;
}

static void test_announced_size_too_large_is_rejected(void **state) {
    (void)state;
    fc_tensor_spec sp[2] = {{"a", FC_DTYPE_F32, 2, {1024, 1024}}, {"b", FC_DTYPE_F16, 1, {2}}};
    fc_stage_config cfg = {.max_total_bytes = 4u << 20};
    fc_error err = {0};
    assert_int_equal(try_create(sp, 2, 4194308, &cfg, &err), FC_ERR_LIMIT);
    assert_string_equal(err.msg, "the update's tensors hold 4194308 bytes, at most 4194304 "
                                 "allowed");
    cfg.max_total_bytes = 4194308;
    assert_int_equal(try_create(sp, 2, 4194308, &cfg, &err), FC_OK);
    /* A tensor whose size overflows 64 bits. */
    fc_tensor_spec big = {"huge", FC_DTYPE_F32, 2, {1ull << 62, 4}};
    cfg.max_total_bytes = UINT64_MAX;
    assert_int_equal(try_create(&big, 1, 0, &cfg, &err), FC_ERR_OVERFLOW);
    assert_string_equal(err.msg, "tensor 'huge': shape [4611686018427387904,4] f32 overflows 64 "
                                 "bits");
    /* Two tensors whose sum overflows. */
    fc_tensor_spec two[2] = {{"x", FC_DTYPE_F64, 1, {1ull << 60}}, {"y", FC_DTYPE_F64, 1, {1ull << 60}}};
    assert_int_equal(try_create(two, 2, 0, &cfg, &err), FC_ERR_OVERFLOW);
    assert_string_equal(err.msg, "the update's total size overflows 64 bits at tensor 'y'");
}

static void test_announced_total_must_match_tensors(void **state) {
    (void)state;
    fc_tensor_spec sp[1] = {{"a", FC_DTYPE_BF16, 1, {10}}};
    fc_stage_config cfg = {.max_total_bytes = 1000, .label = "model"};
    fc_error err = {0};
    assert_int_equal(try_create(sp, 1, 21, &cfg, &err), FC_ERR_PROTOCOL);
    assert_string_equal(err.msg, "the model announces total_bytes 21 but its tensors hold 20 "
                                 "bytes");
    assert_int_equal(try_create(sp, 1, 20, &cfg, &err), FC_OK);
}

static void test_announced_layout_errors_are_named(void **state) {
    (void)state;
    fc_stage_config cfg = {.max_total_bytes = 1u << 20, .max_tensors = 3};
    fc_error err = {0};
    fc_tensor_spec ok = {"ok", FC_DTYPE_F32, 1, {2}};
    assert_int_equal(try_create(NULL, 0, 0, &cfg, &err), FC_ERR_INVALID);
    assert_string_equal(err.msg, "the update announces no tensors");

    fc_tensor_spec four[4] = {ok, ok, ok, ok};
    four[1].name = "b", four[2].name = "c", four[3].name = "d";
    assert_int_equal(try_create(four, 4, 32, &cfg, &err), FC_ERR_LIMIT);
    assert_string_equal(err.msg, "the update announces 4 tensors, at most 3 allowed");

    fc_tensor_spec dup[3] = {ok, {"z", FC_DTYPE_F16, 0, {0}}, ok};
    assert_int_equal(try_create(dup, 3, 18, &cfg, &err), FC_ERR_EXISTS);
    assert_string_equal(err.msg, "tensor name 'ok' is announced twice");

    fc_tensor_spec bad = ok;
    bad.name = NULL;
    assert_int_equal(try_create(&bad, 1, 8, &cfg, &err), FC_ERR_INVALID);
    assert_string_equal(err.msg, "tensor 0 has no name");
    bad.name = "";
    assert_int_equal(try_create(&bad, 1, 8, &cfg, &err), FC_ERR_INVALID);
    assert_string_equal(err.msg, "tensor 0 has an empty name");
    char longname[FC_MAX_TENSOR_NAME + 2];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    bad.name = longname;
    assert_int_equal(try_create(&bad, 1, 8, &cfg, &err), FC_ERR_INVALID);
    assert_string_equal(err.msg, "tensor 0: name longer than 1024 bytes");
    longname[FC_MAX_TENSOR_NAME] = '\0'; /* exactly 1024 bytes is fine */
    assert_int_equal(try_create(&bad, 1, 8, &cfg, &err), FC_OK);

    static const char *const not_clean[] = {
        "bad\xff", "over\xc0\xaflong", "cut\xe2\x82", "surrogate\xed\xa0\x80", "tab\there",
        "del\x7f", "big\xf4\x90\x80\x80",
    };
    for (size_t i = 0; i < sizeof not_clean / sizeof not_clean[0]; i++) {
        bad.name = (char *)(uintptr_t)not_clean[i];
        assert_int_equal(try_create(&bad, 1, 8, &cfg, &err), FC_ERR_INVALID);
        assert_string_equal(err.msg, "tensor 0: name is not UTF-8 or contains a control character");
    }
    bad.name = "caf\xc3\xa9.\xe2\x82\xac.\xf0\x9f\x98\x80"; /* é, €, U+1F600 */
    assert_int_equal(try_create(&bad, 1, 8, &cfg, &err), FC_OK);

    bad = ok;
    bad.dtype = (fc_dtype)7;
    assert_int_equal(try_create(&bad, 1, 8, &cfg, &err), FC_ERR_DTYPE);
    assert_string_equal(err.msg, "tensor 'ok': unknown dtype 7");
    bad = ok;
    bad.ndim = FC_MAX_DIMS + 1;
    assert_int_equal(try_create(&bad, 1, 8, &cfg, &err), FC_ERR_INVALID);
    assert_string_equal(err.msg, "tensor 'ok': 9 dimensions, at most 8 allowed");

    fc_stage_config toobig = {.max_total_bytes = 100, .max_chunk = (1u << 20) + 1};
    assert_int_equal(try_create(&ok, 1, 8, &toobig, &err), FC_ERR_INVALID);
}

/* ---- buffer providers ---- */

typedef struct counting_ctx {
    int acquired, released;
    uint64_t last_size;
    int fail;
} counting_ctx;

static fc_status counting_acquire(void *ctx, uint64_t nbytes, void **out, fc_error *err) {
    counting_ctx *c = ctx;
    if (c->fail)
        return fc_error_set(err, FC_ERR_BUSY, "memory budget exhausted (%llu bytes asked)",
                            (unsigned long long)nbytes);
    c->acquired++;
    c->last_size = nbytes;
    *out = malloc((size_t)nbytes);
    return *out ? FC_OK : FC_ERR_NOMEM;
}

static void counting_release(void *ctx, void *mem, uint64_t nbytes) {
    counting_ctx *c = ctx;
    assert_int_equal(nbytes, c->last_size);
    c->released++;
    free(mem);
}

static void test_staging_buffer_comes_from_the_provider_once(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_named, 5, 15);
    counting_ctx ctx = {0};
    fc_stage_provider prov = {"budget", counting_acquire, counting_release, &ctx, NULL};
    fc_stage_config cfg = {.max_total_bytes = UINT64_MAX, .provider = &prov};
    fc_stage *s = stage_for(&m, &cfg);
    assert_int_equal(ctx.acquired, 1);
    assert_int_equal(ctx.last_size, model_bytes(&m));
    feed_all(s, &m, 4096, 0);
    finish_ok(s, &m);
    assert_staged_equals(s, &m);
    assert_int_equal(ctx.acquired, 1);
    fc_stage_free(s);
    assert_int_equal(ctx.released, 1);

    /* A provider refusal is reported with the provider's name. */
    ctx.fail = 1;
    fc_tensor_spec *specs = specs_of(&m);
    fc_error err = {0};
    assert_int_equal(try_create(specs, m.count, model_bytes(&m), &cfg, &err), FC_ERR_BUSY);
    assert_string_equal(err.msg, "budget staging: memory budget exhausted (24832 bytes asked)");
    free(specs);
    fc_model_free(&m);
}

static const char *test_tmpdir(char *buf, size_t size) {
    const char *d = getenv("FC_TEST_TMPDIR");
    if (d && *d) {
        snprintf(buf, size, "%s", d);
        return buf;
    }
    snprintf(buf, size, "/tmp/fc-test-stream.XXXXXX");
    assert_non_null(mkdtemp(buf));
    return buf;
}

static int count_dir_entries(const char *dir) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static void test_spill_provider_stages_into_an_unlinked_file(void **state) {
    (void)state;
    char dir[512];
    test_tmpdir(dir, sizeof dir);
    char sub[600];
    snprintf(sub, sizeof sub, "%s/spill", dir);
    (void)mkdir(sub, 0700);
    fc_model m;
    build_model(&m, layout_big, 2, 16);
    fc_stage_provider prov;
    fc_stage_spill_provider(&prov, sub);
    fc_stage_config cfg = {.max_total_bytes = UINT64_MAX, .provider = &prov};
    fc_stage *s = stage_for(&m, &cfg);
    assert_int_equal(count_dir_entries(sub), 0); /* unlinked as soon as it was created */
    feed_all(s, &m, 0, 0);
    finish_ok(s, &m);
    assert_staged_equals(s, &m);
    fc_stage_free(s);

    /* A missing directory is an I/O error naming it. */
    snprintf(sub, sizeof sub, "%s/does-not-exist", dir);
    fc_stage_spill_provider(&prov, sub);
    fc_tensor_spec *specs = specs_of(&m);
    fc_error err = {0};
    assert_int_equal(try_create(specs, m.count, model_bytes(&m), &cfg, &err), FC_ERR_IO);
    assert_non_null(strstr(err.msg, "does-not-exist"));
    assert_non_null(strstr(err.msg, "spill staging: "));
    free(specs);
    fc_model_free(&m);
}

/* Resident file-backed pages of this process (RssFile in /proc/self/status), in bytes. */
static uint64_t rss_file(void) {
    FILE *f = fopen("/proc/self/status", "r");
    assert_non_null(f);
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "RssFile: %llu kB", &kb) == 1)
            break;
    fclose(f);
    return (uint64_t)kb * 1024;
}

/* A 64 MiB update staged in a spill file keeps about one FC_STAGE_EVICT_WINDOW resident while it
 * is written and hashed, and a reader that calls fc_stage_done_with behind it drops what it has
 * read; the bytes stay intact (they come back from the file). A heap stage ignores the call. */
static void test_spill_stage_keeps_a_window_resident(void **state) {
    (void)state;
    char dir[512], sub[600];
    test_tmpdir(dir, sizeof dir);
    snprintf(sub, sizeof sub, "%s/spill-window", dir);
    (void)mkdir(sub, 0700);
    static const layout_entry big[] = {{"w", FC_DTYPE_F32, 2, {4096, 4096, 0}}};
    fc_model m;
    build_model(&m, big, 1, 7);
    const uint64_t total = model_bytes(&m), window = FC_STAGE_EVICT_WINDOW;
    const uint64_t slack = 2 * window + (4u << 20); /* the window being filled, one chunk, libs */
    fc_stage_provider prov;
    fc_stage_spill_provider(&prov, sub);
    fc_stage_config cfg = {.max_total_bytes = UINT64_MAX, .provider = &prov, .hash_at_finish = 1};
    uint64_t base = rss_file(), peak = 0;
    fc_stage *s = stage_for(&m, &cfg);
    fc_stream_splitter sp;
    fc_error err = {0};
    assert_int_equal(fc_stream_split_model(&sp, &m, 0, 0, &err), FC_OK);
    fc_chunk_desc c;
    while (fc_stream_split_next(&sp, &c)) {
        assert_int_equal(fc_stage_add_chunk(s, c.tensor_index, c.offset, c.data, c.len, &err),
                         FC_OK);
        uint64_t r = rss_file();
        peak = r > peak ? r : peak;
    }
    print_message("spill stage of %llu MiB: resident file pages +%llu MiB while written\n",
                  (unsigned long long)(total >> 20), (unsigned long long)((peak - base) >> 20));
    assert_true(peak - base < slack);
    finish_ok(s, &m); /* hashes every window, reading back the dropped ones */
    assert_true(rss_file() - base < slack);
    fc_model view = FC_MODEL_INIT;
    assert_int_equal(fc_stage_view_model(s, &view, &err), FC_OK);
    const uint8_t *got = view.tensors[0].data, *want = m.tensors[0].data;
    for (uint64_t off = 0; off < total; off += window) {
        assert_memory_equal(got + off, want + off, (size_t)window);
        fc_stage_done_with(s, got + off, (size_t)window);
        uint64_t r = rss_file();
        peak = r > peak ? r : peak;
    }
    print_message("read back with fc_stage_done_with: +%llu MiB\n",
                  (unsigned long long)((rss_file() - base) >> 20));
    assert_true(rss_file() - base < slack);
    assert_true(peak - base < slack);
    fc_stage_done_with(s, got, 0);                     /* nothing */
    fc_stage_done_with(s, got + total - 8, 64);        /* runs past the end: ignored */
    fc_stage_done_with(s, want, 64);                   /* not the stage's buffer: ignored */
    assert_memory_equal(got + total - 8, want + total - 8, 8);
    fc_model_free(&view);
    fc_stage_free(s);

    /* On the heap, done_with must not drop anything: those pages have no file behind them. */
    s = stage_for(&m, NULL);
    feed_all(s, &m, 0, 0);
    finish_ok(s, &m);
    assert_int_equal(fc_stage_view_model(s, &view, &err), FC_OK);
    fc_stage_done_with(s, view.tensors[0].data, (size_t)total);
    assert_memory_equal(view.tensors[0].data, want, (size_t)total);
    fc_model_free(&view);
    fc_stage_free(s);
    fc_model_free(&m);
}

/* ---- allocation failures ---- */

static void test_every_allocation_failure_is_clean(void **state) {
    (void)state;
    fc_model m;
    build_model(&m, layout_mixed, 6, 17);
    fc_tensor_spec *specs = specs_of(&m);
    uint8_t hash[FC_SHA256_BYTES];
    fc_error err = {0};
    assert_int_equal(fc_stream_model_sha256(&m, hash, &err), FC_OK);
    fc_stage_config cfg = {.max_total_bytes = 1u << 20};
    int succeeded = 0;
    unsigned long failures = 0;
    for (long n = 0; n < 100 && !succeeded; n++) {
        fc_alloc_fail_after(n);
        unsigned long before = fc_alloc_failures();
        fc_stage *s = NULL;
        fc_status st = fc_stage_create(specs, m.count, model_bytes(&m), &cfg, &s, &err);
        if (st == FC_OK) {
            feed_all(s, &m, 16, 0);
            assert_int_equal(fc_stage_finish(s, hash, sizeof hash, &err), FC_OK);
            fc_model view = FC_MODEL_INIT;
            st = fc_stage_view_model(s, &view, &err);
            if (st == FC_OK) {
                succeeded = 1;
                fc_model_free(&view);
            } else {
                assert_int_equal(st, FC_ERR_NOMEM);
                assert_int_equal(view.count, 0);
            }
            fc_stage_free(s);
        } else {
            assert_int_equal(st, FC_ERR_NOMEM);
            assert_null(s);
            assert_true(fc_alloc_failures() > before);
        }
        failures += fc_alloc_failures() - before;
    }
    fc_alloc_fail_after(-1);
    assert_true(succeeded);
    assert_true(failures >= 8); /* stage, specs, starts, names..., buffer, view: all exercised */
    free(specs);
    fc_model_free(&m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_matches_known_vectors),
        cmocka_unit_test(test_model_sha256_is_hash_of_concatenated_tensor_data),
        cmocka_unit_test(test_split_then_reassemble_every_chunk_size),
        cmocka_unit_test(test_default_chunk_size_is_1mib),
        cmocka_unit_test(test_split_specs_gives_layout_without_data),
        cmocka_unit_test(test_split_start_offset_is_checked),
        cmocka_unit_test(test_reassembly_split_at_every_boundary),
        cmocka_unit_test(test_resume_continues_from_acknowledged_offset),
        cmocka_unit_test(test_chunk_bad_tensor_index_is_rejected),
        cmocka_unit_test(test_chunk_bad_offset_is_rejected),
        cmocka_unit_test(test_chunk_offset_plus_length_overflow_is_rejected),
        cmocka_unit_test(test_chunk_misaligned_is_rejected),
        cmocka_unit_test(test_chunk_overlap_is_rejected),
        cmocka_unit_test(test_duplicate_chunk_is_rejected),
        cmocka_unit_test(test_chunk_leaving_gap_is_rejected),
        cmocka_unit_test(test_extra_bytes_after_complete_are_rejected),
        cmocka_unit_test(test_zero_length_chunk_is_rejected),
        cmocka_unit_test(test_chunk_larger_than_max_chunk_is_rejected),
        cmocka_unit_test(test_finish_before_complete_names_missing_bytes),
        cmocka_unit_test(test_hash_mismatch_is_rejected),
        cmocka_unit_test(test_hash_of_wrong_length_is_a_protocol_error),
        cmocka_unit_test(test_view_requires_a_complete_stream),
        cmocka_unit_test(test_stream_of_only_empty_tensors_verifies),
        cmocka_unit_test(test_announced_size_too_large_is_rejected),
        cmocka_unit_test(test_announced_total_must_match_tensors),
        cmocka_unit_test(test_announced_layout_errors_are_named),
        cmocka_unit_test(test_staging_buffer_comes_from_the_provider_once),
        cmocka_unit_test(test_spill_provider_stages_into_an_unlinked_file),
        cmocka_unit_test(test_spill_stage_keeps_a_window_resident),
        cmocka_unit_test(test_hash_at_finish_checks_the_same),
        cmocka_unit_test(test_every_allocation_failure_is_clean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
