/* test_wire.c: message builders, validation, tensor spec conversion, the wire error-code table
 * and protocol version checks (proto/wire.h). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "proto/wire.h"

static const uint8_t SHA_A[32] = {0xa1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                  17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 0xfe};

/* Encodes m, checks the frame prefix, decodes and validates it. Caller frees the result. */
static fc_envelope *round_trip(const fc_wire_msg *m) {
    fc_buf b = FC_BUF_INIT;
    fc_error err = {0};
    assert_int_equal(fc_wire_encode(m, 0, &b, &err), FC_OK);
    assert_true(b.len > 4);
    assert_int_equal(fc_load_u32be(b.data), b.len - 4);
    fc_envelope *env = NULL;
    fc_status st = fc_wire_decode(b.data + 4, b.len - 4, &env, &err);
    if (st != FC_OK)
        fail_msg("decode failed: %s", err.msg);
    fc_buf_free(&b);
    assert_int_equal(env->seq, m->env.seq);
    assert_int_equal(env->body_case, m->env.body_case);
    return env;
}

/* Encodes a hand-built Envelope (bypassing the builders' checks) and decodes it. */
static fc_status decode_raw(const fc_envelope *env, fc_error *err) {
    fc_buf b = FC_BUF_INIT;
    assert_int_equal(fc_frame_encode(env, 0, &b, NULL), FC_OK);
    fc_envelope *out = NULL;
    fc_status st = fc_wire_decode(b.data + 4, b.len - 4, &out, err);
    if (st == FC_OK)
        assert_non_null(out);
    else
        assert_null(out);
    fc_envelope_free(out);
    fc_buf_free(&b);
    return st;
}

static fc_tensor_spec spec(const char *name, fc_dtype dt, uint32_t ndim, uint64_t d0, uint64_t d1) {
    fc_tensor_spec s = {.name = (char *)name, .dtype = dt, .ndim = ndim};
    s.shape[0] = d0;
    s.shape[1] = d1;
    return s;
}

/* ---- versions ---- */

static void test_version_major_must_match_minor_may_differ(void **state) {
    (void)state;
    fc_error err = {0};
    assert_int_equal(FC_PROTOCOL_MAJOR, 1);
    assert_int_equal(FC_PROTOCOL_MINOR, 0);
    assert_int_equal(fc_wire_check_version(FC_WIRE_SERVER, 1, 0, &err), FC_OK);
    assert_int_equal(fc_wire_check_version(FC_WIRE_SERVER, 1, 7, &err), FC_OK);
    assert_int_equal(fc_wire_check_version(FC_WIRE_SERVER, 2, 1, &err), FC_ERR_VERSION);
    assert_string_equal(err.msg,
                        "client speaks protocol 2.1, server speaks 1.0: major versions must match");
    assert_int_equal(fc_wire_check_version(FC_WIRE_CLIENT, 3, 0, &err), FC_ERR_VERSION);
    assert_string_equal(err.msg,
                        "server speaks protocol 3.0, client speaks 1.0: major versions must match");
    assert_int_equal(fc_wire_check_version(FC_WIRE_SERVER, 0, 0, &err), FC_ERR_VERSION);
    assert_non_null(strstr(err.msg, "client sent no protocol version"));
}

/* ---- error codes ---- */

static void test_error_codes_are_pinned(void **state) {
    (void)state;
    /* The published table (docs/protocol.md). Changing any row breaks deployed peers. */
    static const struct {
        uint32_t code;
        const char *name;
        fc_status st;
        int fatal;
    } pinned[] = {
        {1, "INTERNAL", FC_ERR_SYSTEM, 1},
        {2, "RESOURCE_EXHAUSTED", FC_ERR_NOMEM, 0},
        {3, "BUSY", FC_ERR_BUSY, 1},
        {4, "TIMEOUT", FC_ERR_TIMEOUT, 1},
        {5, "IO_ERROR", FC_ERR_IO, 0},
        {10, "MALFORMED", FC_ERR_FORMAT, 1},
        {11, "LIMIT_EXCEEDED", FC_ERR_LIMIT, 1},
        {12, "PROTOCOL_VIOLATION", FC_ERR_PROTOCOL, 1},
        {13, "VERSION_MISMATCH", FC_ERR_VERSION, 1},
        {14, "UNSUPPORTED", FC_ERR_UNSUPPORTED, 0},
        {20, "UNAUTHENTICATED", FC_ERR_AUTH, 1},
        {30, "INVALID_ARGUMENT", FC_ERR_INVALID, 0},
        {31, "NOT_FOUND", FC_ERR_NOT_FOUND, 0},
        {32, "ALREADY_EXISTS", FC_ERR_EXISTS, 0},
        {33, "WRONG_STATE", FC_ERR_STATE, 0},
        {34, "OUT_OF_RANGE", FC_ERR_RANGE, 0},
        {40, "BAD_CHUNK", FC_ERR_CHUNK, 0},
        {41, "HASH_MISMATCH", FC_ERR_HASH, 0},
        {42, "SHAPE_MISMATCH", FC_ERR_SHAPE, 0},
        {43, "UNSUPPORTED_DTYPE", FC_ERR_DTYPE, 0},
        {44, "SIZE_OVERFLOW", FC_ERR_OVERFLOW, 0},
        {45, "NON_FINITE", FC_ERR_NON_FINITE, 0},
        {46, "UPDATE_REJECTED", FC_ERR_REQUIREMENT, 0},
    };
    size_t n;
    const fc_wire_error_code *t = fc_wire_error_table(&n);
    assert_int_equal(n, sizeof pinned / sizeof pinned[0]);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(t[i].code, pinned[i].code);
        assert_string_equal(t[i].name, pinned[i].name);
        assert_int_equal(t[i].status, pinned[i].st);
        assert_int_equal(t[i].fatal, pinned[i].fatal);
        assert_true(strlen(t[i].meaning) > 10);
    }
}

static void test_error_mapping_is_a_bijection_over_the_table(void **state) {
    (void)state;
    size_t n;
    const fc_wire_error_code *t = fc_wire_error_table(&n);
    for (size_t i = 0; i < n; i++) {
        assert_true(t[i].code != 0);
        if (i > 0)
            assert_true(t[i].code > t[i - 1].code); /* sorted, hence unique */
        for (size_t j = 0; j < i; j++) {
            assert_int_not_equal(t[i].status, t[j].status);
            assert_string_not_equal(t[i].name, t[j].name);
        }
        assert_ptr_equal(fc_wire_error_by_code(t[i].code), &t[i]);
        assert_ptr_equal(fc_wire_error_for_status(t[i].status), &t[i]);
        assert_int_equal(fc_wire_status_for_code(t[i].code), t[i].status);
    }
    /* Local-only statuses go out as INTERNAL; unknown codes come in as INTERNAL's status. */
    const fc_status local[] = {FC_OK, FC_ERR_TLS, FC_ERR_CONFIG, FC_ERR_DB, FC_ERR_CORRUPT,
                               FC_ERR_AGAIN, FC_ERR_CLOSED};
    for (size_t i = 0; i < sizeof local / sizeof local[0]; i++)
        assert_int_equal(fc_wire_error_for_status(local[i])->code, FC_WIRE_CODE_INTERNAL);
    assert_null(fc_wire_error_by_code(0));
    assert_null(fc_wire_error_by_code(9999));
    assert_int_equal(fc_wire_status_for_code(9999), FC_ERR_SYSTEM);
    /* Every fc_status is either in the table or one of the local ones. */
    static const fc_status all[] = {
#define X(name, num, desc) FC_##name,
        FC_STATUS_MAP(X)
#undef X
    };
    size_t mapped = 0;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        mapped += fc_wire_error_for_status(all[i])->status == all[i];
    assert_int_equal(mapped + sizeof local / sizeof local[0], sizeof all / sizeof all[0]);
}

static void test_error_message_carries_code_name_and_fatal_default(void **state) {
    (void)state;
    fc_wire_msg m;
    assert_int_equal(fc_wire_error(&m, 9, FC_ERR_HASH, FC_WIRE_FATAL_DEFAULT, 7,
                                   "update for round 3: SHA-256 mismatch", NULL),
                     FC_OK);
    fc_envelope *e = round_trip(&m);
    assert_int_equal(e->error->code, 41);
    assert_string_equal(e->error->name, "HASH_MISMATCH");
    assert_string_equal(e->error->message, "update for round 3: SHA-256 mismatch");
    assert_false(e->error->fatal);
    assert_int_equal(e->error->ref_seq, 7);
    fc_envelope_free(e);
    fc_wire_msg_free(&m);
    /* explicit fatal overrides; an unmapped status becomes INTERNAL */
    assert_int_equal(fc_wire_error(&m, 10, FC_ERR_DB, 0, 0, NULL, NULL), FC_OK);
    e = round_trip(&m);
    assert_int_equal(e->error->code, 1);
    assert_string_equal(e->error->name, "INTERNAL");
    assert_false(e->error->fatal);
    assert_string_equal(e->error->message, "");
    fc_envelope_free(e);
    fc_wire_msg_free(&m);
    assert_int_equal(fc_wire_error(&m, 11, FC_ERR_AUTH, FC_WIRE_FATAL_DEFAULT, 0, "x", NULL),
                     FC_OK);
    assert_true(m.body.error.fatal);
    fc_wire_msg_free(&m);
}

/* ---- round trips of every message ---- */

static void test_hello_and_welcome_round_trip(void **state) {
    (void)state;
    const char *caps[] = {"dtype.f16", "resume"};
    const uint8_t tok[] = {0xde, 0xad, 0x00, 0xbe, 0xef};
    const uint8_t resume[] = {9, 8, 7};
    fc_wire_hello_args h = {.client_name = "hospital-3",
                            .token = {tok, sizeof tok},
                            .capabilities = caps,
                            .n_capabilities = 2,
                            .resume_token = {resume, sizeof resume},
                            .software = "libfedclient/0.1"};
    fc_wire_msg m;
    assert_int_equal(fc_wire_hello(&m, 1, &h, NULL), FC_OK);
    fc_envelope *e = round_trip(&m);
    const Fedcoord__V1__Hello *he = e->hello;
    assert_int_equal(he->protocol_major, 1);
    assert_int_equal(he->protocol_minor, 0);
    assert_string_equal(he->client_name, "hospital-3");
    assert_int_equal(he->token.len, sizeof tok);
    assert_memory_equal(he->token.data, tok, sizeof tok);
    assert_int_equal(he->n_capabilities, 2);
    assert_string_equal(he->capabilities[0], "dtype.f16");
    assert_string_equal(he->capabilities[1], "resume");
    assert_memory_equal(he->resume_token.data, resume, sizeof resume);
    assert_string_equal(he->software, "libfedclient/0.1");
    fc_envelope_free(e);
    fc_wire_msg_free(&m);

    fc_wire_welcome_args w = {.session_id = "s-42",
                              .resume_token = {resume, sizeof resume},
                              .heartbeat_interval_ms = 5000,
                              .max_frame_bytes = 4u << 20,
                              .max_chunk_bytes = 1u << 20,
                              .capabilities = caps,
                              .n_capabilities = 1,
                              .software = "fedcoord/0.1"};
    assert_int_equal(fc_wire_welcome(&m, 1, &w, NULL), FC_OK);
    e = round_trip(&m);
    const Fedcoord__V1__Welcome *we = e->welcome;
    assert_int_equal(we->protocol_major, 1);
    assert_string_equal(we->session_id, "s-42");
    assert_int_equal(we->heartbeat_interval_ms, 5000);
    assert_int_equal(we->max_frame_bytes, 4u << 20);
    assert_int_equal(we->max_chunk_bytes, 1u << 20);
    assert_int_equal(we->n_capabilities, 1);
    assert_string_equal(we->software, "fedcoord/0.1");
    assert_int_equal(we->resume_token.len, 3);
    fc_envelope_free(e);
    fc_wire_msg_free(&m);
}

static void test_heartbeat_request_chunk_end_ack_bye_round_trip(void **state) {
    (void)state;
    fc_wire_msg m;
    assert_int_equal(fc_wire_heartbeat(&m, 5, 1764331200123ull, NULL), FC_OK);
    fc_envelope *e = round_trip(&m);
    assert_int_equal(e->heartbeat->unix_ms, 1764331200123ull);
    fc_envelope_free(e);
    fc_wire_msg_free(&m);

    assert_int_equal(fc_wire_model_request(&m, 6, 12, 1u << 30, NULL), FC_OK);
    e = round_trip(&m);
    assert_int_equal(e->model_request->version, 12);
    assert_int_equal(e->model_request->offset, 1u << 30);
    fc_envelope_free(e);
    fc_wire_msg_free(&m);

    uint8_t data[1000];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(255 - i % 256);
    assert_int_equal(fc_wire_chunk(&m, 7, 3, 4096, data, sizeof data, NULL), FC_OK);
    e = round_trip(&m);
    assert_int_equal(e->chunk->tensor_index, 3);
    assert_int_equal(e->chunk->offset, 4096);
    assert_int_equal(e->chunk->data.len, sizeof data);
    assert_memory_equal(e->chunk->data.data, data, sizeof data);
    fc_envelope_free(e);
    fc_wire_msg_free(&m);

    assert_int_equal(fc_wire_model_end(&m, 8, 12, SHA_A, NULL), FC_OK);
    e = round_trip(&m);
    assert_int_equal(e->model_end->version, 12);
    assert_memory_equal(e->model_end->sha256.data, SHA_A, 32);
    fc_envelope_free(e);
    fc_wire_msg_free(&m);

    assert_int_equal(fc_wire_ack(&m, 9, 8, 123456789, "staged", NULL), FC_OK);
    e = round_trip(&m);
    assert_int_equal(e->ack->ref_seq, 8);
    assert_int_equal(e->ack->offset, 123456789);
    assert_string_equal(e->ack->detail, "staged");
    fc_envelope_free(e);
    fc_wire_msg_free(&m);

    assert_int_equal(fc_wire_bye(&m, 10, "training finished", NULL), FC_OK);
    e = round_trip(&m);
    assert_string_equal(e->bye->reason, "training finished");
    fc_envelope_free(e);
    fc_wire_msg_free(&m);
}

static void test_task_round_trips_with_config_and_specs(void **state) {
    (void)state;
    fc_tensor_spec specs[3] = {spec("fc1.weight", FC_DTYPE_F32, 2, 64, 10),
                               spec("fc1.bias", FC_DTYPE_BF16, 1, 64, 0),
                               spec("scale", FC_DTYPE_F64, 0, 0, 0)};
    fc_wire_kv cfg[] = {{"mu", "0.01"}, {"local_epochs", "2"}, {"note", ""}};
    /* bytes: 64*10*4 + 64*2 + 8 = 2696 */
    fc_wire_task_args a = {.round = 12,
                           .kind = FC_TASK_TRAIN,
                           .model_version = 11,
                           .config = cfg,
                           .n_config = 3,
                           .tensors = specs,
                           .n_tensors = 3,
                           .model_sha256 = SHA_A,
                           .model_bytes = 2696,
                           .deadline_unix_ms = 1764331260000ull};
    fc_wire_msg m;
    fc_error err = {0};
    assert_int_equal(fc_wire_task(&m, 3, &a, &err), FC_OK);
    fc_envelope *e = round_trip(&m);
    const Fedcoord__V1__Task *t = e->task;
    assert_int_equal(t->round, 12);
    assert_int_equal(t->kind, FEDCOORD__V1__TASK_KIND__TASK_KIND_TRAIN);
    assert_int_equal(t->model_version, 11);
    assert_int_equal(t->model_bytes, 2696);
    assert_int_equal(t->deadline_unix_ms, 1764331260000ull);
    assert_memory_equal(t->model_sha256.data, SHA_A, 32);
    assert_int_equal(t->n_config, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(t->config[i]->key, cfg[i].key);
        assert_string_equal(t->config[i]->value, cfg[i].value);
    }
    fc_tensor_spec *back = NULL;
    uint64_t total = 0;
    assert_int_equal(fc_wire_specs_from_wire(t->tensors, t->n_tensors, &back, &total, &err), FC_OK);
    assert_int_equal(total, 2696);
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(back[i].name, specs[i].name);
        assert_true(fc_spec_same_layout(&back[i], &specs[i]));
    }
    fc_wire_specs_free(back, 3);
    fc_envelope_free(e);
    fc_wire_msg_free(&m);

    a.kind = FC_TASK_EVALUATE;
    a.n_config = 0;
    assert_int_equal(fc_wire_task(&m, 4, &a, &err), FC_OK);
    e = round_trip(&m);
    assert_int_equal(e->task->kind, FEDCOORD__V1__TASK_KIND__TASK_KIND_EVALUATE);
    assert_int_equal(e->task->n_config, 0);
    fc_envelope_free(e);
    fc_wire_msg_free(&m);
}

static void test_model_begin_and_update_messages_round_trip(void **state) {
    (void)state;
    fc_tensor_spec specs[2] = {spec("w", FC_DTYPE_F16, 2, 3, 5), spec("b", FC_DTYPE_F32, 1, 5, 0)};
    /* 3*5*2 + 5*4 = 50 */
    fc_wire_msg m;
    fc_error err = {0};
    assert_int_equal(fc_wire_model_begin(&m, 2, 7, specs, 2, 50, SHA_A, 30, &err), FC_OK);
    fc_envelope *e = round_trip(&m);
    assert_int_equal(e->model_begin->version, 7);
    assert_int_equal(e->model_begin->total_bytes, 50);
    assert_int_equal(e->model_begin->offset, 30);
    assert_int_equal(e->model_begin->n_tensors, 2);
    assert_string_equal(e->model_begin->tensors[0]->name, "w");
    assert_int_equal(e->model_begin->tensors[0]->dtype, FEDCOORD__V1__DTYPE__DTYPE_F16);
    assert_int_equal(e->model_begin->tensors[0]->n_shape, 2);
    assert_int_equal(e->model_begin->tensors[0]->shape[1], 5);
    fc_envelope_free(e);
    fc_wire_msg_free(&m);

    fc_wire_update_begin_args u = {.round = 4,
                                   .base_version = 7,
                                   .tensors = specs,
                                   .n_tensors = 2,
                                   .total_bytes = 50,
                                   .is_delta = 1,
                                   .resume_offset = 20};
    assert_int_equal(fc_wire_update_begin(&m, 3, &u, &err), FC_OK);
    e = round_trip(&m);
    assert_int_equal(e->update_begin->round, 4);
    assert_int_equal(e->update_begin->base_version, 7);
    assert_int_equal(e->update_begin->total_bytes, 50);
    assert_true(e->update_begin->is_delta);
    assert_int_equal(e->update_begin->resume_offset, 20);
    assert_int_equal(e->update_begin->n_tensors, 2);
    fc_envelope_free(e);
    fc_wire_msg_free(&m);

    fc_wire_metric metrics[] = {{"train_loss", 0.25}, {"accuracy", 0.875}};
    assert_int_equal(fc_wire_update_end(&m, 4, SHA_A, 600, metrics, 2, &err), FC_OK);
    e = round_trip(&m);
    assert_int_equal(e->update_end->num_examples, 600);
    assert_int_equal(e->update_end->n_metrics, 2);
    assert_string_equal(e->update_end->metrics[0]->key, "train_loss");
    assert_true(e->update_end->metrics[0]->value == 0.25);
    assert_true(e->update_end->metrics[1]->value == 0.875);
    assert_memory_equal(e->update_end->sha256.data, SHA_A, 32);
    fc_envelope_free(e);
    fc_wire_msg_free(&m);

    assert_int_equal(fc_wire_eval_result(&m, 5, 4, 7, 250, metrics, 2, &err), FC_OK);
    e = round_trip(&m);
    assert_int_equal(e->eval_result->round, 4);
    assert_int_equal(e->eval_result->model_version, 7);
    assert_int_equal(e->eval_result->num_examples, 250);
    assert_string_equal(e->eval_result->metrics[1]->key, "accuracy");
    fc_envelope_free(e);
    fc_wire_msg_free(&m);
}

/* ---- tensor specs ---- */

/* Builds ModelBegin{specs} by hand and returns fc_wire_decode's verdict. */
static fc_status decode_specs(Fedcoord__V1__TensorSpec **specs, size_t n, uint64_t total,
                              fc_error *err) {
    fc_envelope env;
    Fedcoord__V1__ModelBegin b;
    fedcoord__v1__envelope__init(&env);
    fedcoord__v1__model_begin__init(&b);
    env.seq = 1;
    env.body_case = FEDCOORD__V1__ENVELOPE__BODY_MODEL_BEGIN;
    env.model_begin = &b;
    b.tensors = specs;
    b.n_tensors = n;
    b.total_bytes = total;
    b.sha256.data = (uint8_t *)SHA_A;
    b.sha256.len = 32;
    return decode_raw(&env, err);
}

static void test_invalid_tensor_specs_are_rejected_on_receipt(void **state) {
    (void)state;
    char long_name[FC_MAX_TENSOR_NAME + 2];
    memset(long_name, 'n', sizeof long_name);
    long_name[FC_MAX_TENSOR_NAME + 1] = '\0';
    uint64_t dims9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    uint64_t huge[3] = {1ull << 32, 1ull << 32, 2}; /* 2^65 elements */
    uint64_t big2[1] = {1ull << 61};                /* f32: 2^63 bytes, fits */
    struct {
        const char *name;
        int dtype;
        size_t ndim;
        uint64_t *shape;
        uint64_t total;
        fc_status want;
        const char *msg;
    } cases[] = {
        {"", 1, 0, NULL, 4, FC_ERR_INVALID, "empty name"},
        {long_name, 1, 0, NULL, 4, FC_ERR_LIMIT, "name is 1025 bytes"},
        {long_name + 1, 1, 0, NULL, 4, FC_OK, NULL}, /* exactly 1024 */
        {"t", 0, 0, NULL, 4, FC_ERR_DTYPE, "unknown dtype 0"},
        {"t", 9, 0, NULL, 4, FC_ERR_DTYPE, "unknown dtype 9"},
        {"t", 1, 9, dims9, 4, FC_ERR_LIMIT, "9 dimensions"},
        {"t", 1, 8, dims9, 4, FC_OK, NULL},
        {"t", 1, 3, huge, 0, FC_ERR_OVERFLOW, "does not fit in 64 bits"},
        {"t", 1, 1, big2, 1ull << 63, FC_OK, NULL},
        {"t", 1, 0, NULL, 8, FC_ERR_SHAPE, "declares 8 bytes but its tensors hold 4"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Fedcoord__V1__TensorSpec s;
        fedcoord__v1__tensor_spec__init(&s);
        s.name = (char *)cases[i].name;
        s.dtype = (Fedcoord__V1__DType)cases[i].dtype;
        s.n_shape = cases[i].ndim;
        s.shape = cases[i].shape;
        Fedcoord__V1__TensorSpec *p = &s;
        fc_error err = {0};
        fc_status st = decode_specs(&p, 1, cases[i].total, &err);
        if (st != cases[i].want)
            fail_msg("case %zu: got %s (%s), want %s", i, fc_status_name(st), err.msg,
                     fc_status_name(cases[i].want));
        if (cases[i].msg)
            assert_non_null(strstr(err.msg, cases[i].msg));
    }
    /* Duplicate names, and a total that overflows across tensors. */
    Fedcoord__V1__TensorSpec a, b;
    fedcoord__v1__tensor_spec__init(&a);
    fedcoord__v1__tensor_spec__init(&b);
    a.name = b.name = "dup";
    a.dtype = b.dtype = FEDCOORD__V1__DTYPE__DTYPE_F32;
    Fedcoord__V1__TensorSpec *pair[2] = {&a, &b};
    fc_error err = {0};
    assert_int_equal(decode_specs(pair, 2, 8, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "name 'dup' appears twice"));
    uint64_t half[1] = {1ull << 61}; /* f64: 2^64 bytes alone overflows; use f32 twice */
    b.name = "other";
    a.n_shape = b.n_shape = 1;
    a.shape = b.shape = half;
    a.dtype = b.dtype = FEDCOORD__V1__DTYPE__DTYPE_F64; /* 2^61 * 8 = 2^64: overflows each */
    assert_int_equal(decode_specs(pair, 2, 0, &err), FC_ERR_OVERFLOW);
    uint64_t quarter[1] = {1ull << 60};
    a.shape = b.shape = quarter; /* 2^63 bytes each; together 2^64 */
    assert_int_equal(decode_specs(pair, 2, 0, &err), FC_ERR_OVERFLOW);
    assert_non_null(strstr(err.msg, "total tensor bytes overflow"));
}

static void test_builders_refuse_invalid_specs(void **state) {
    (void)state;
    fc_tensor_spec bad[2] = {spec("x", FC_DTYPE_F32, 1, 4, 0), spec("x", FC_DTYPE_F32, 1, 4, 0)};
    fc_wire_msg m;
    fc_error err = {0};
    assert_int_equal(fc_wire_model_begin(&m, 1, 1, bad, 2, 32, SHA_A, 0, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "appears twice"));
    fc_wire_msg_free(&m);
    bad[1] = spec("y", FC_DTYPE_INVALID, 1, 4, 0);
    assert_int_equal(fc_wire_model_begin(&m, 1, 1, bad, 2, 32, SHA_A, 0, &err), FC_ERR_DTYPE);
    fc_wire_msg_free(&m);
    bad[1] = spec("y", FC_DTYPE_F32, 9, 4, 0);
    fc_wire_update_begin_args u = {.round = 1, .tensors = bad, .n_tensors = 2, .total_bytes = 32};
    assert_int_equal(fc_wire_update_begin(&m, 1, &u, &err), FC_ERR_LIMIT);
    fc_wire_msg_free(&m);
    /* total_bytes that disagrees with the specs */
    bad[1] = spec("y", FC_DTYPE_F32, 1, 4, 0);
    u.total_bytes = 33;
    assert_int_equal(fc_wire_update_begin(&m, 1, &u, &err), FC_ERR_SHAPE);
    fc_wire_msg_free(&m);
    /* resume beyond the data */
    u.total_bytes = 32;
    u.resume_offset = 33;
    assert_int_equal(fc_wire_update_begin(&m, 1, &u, &err), FC_ERR_RANGE);
    fc_wire_msg_free(&m);
}

/* ---- other validation rules ---- */

static void test_chunk_data_limits(void **state) {
    (void)state;
    uint8_t *data = calloc(1, FC_CHUNK_MAX_DATA + 1);
    assert_non_null(data);
    fc_wire_msg m;
    fc_error err = {0};
    assert_int_equal(fc_wire_chunk(&m, 1, 0, 0, data, FC_CHUNK_MAX_DATA, &err), FC_OK);
    fc_wire_msg_free(&m);
    assert_int_equal(fc_wire_chunk(&m, 1, 0, 0, data, FC_CHUNK_MAX_DATA + 1, &err), FC_ERR_LIMIT);
    fc_wire_msg_free(&m);
    assert_int_equal(fc_wire_chunk(&m, 1, 0, 0, data, 0, &err), FC_ERR_CHUNK);
    fc_wire_msg_free(&m);
    /* On receipt: a 1 MiB + 1 chunk fits a 4 MiB frame but is refused by validation. */
    fc_envelope env;
    Fedcoord__V1__Chunk ch;
    fedcoord__v1__envelope__init(&env);
    fedcoord__v1__chunk__init(&ch);
    env.body_case = FEDCOORD__V1__ENVELOPE__BODY_CHUNK;
    env.chunk = &ch;
    ch.data.data = data;
    ch.data.len = FC_CHUNK_MAX_DATA + 1;
    assert_int_equal(decode_raw(&env, &err), FC_ERR_LIMIT);
    assert_non_null(strstr(err.msg, "1048577 bytes, above the limit 1048576"));
    ch.data.len = 0;
    assert_int_equal(decode_raw(&env, &err), FC_ERR_CHUNK);
    free(data);
}

static void test_fast_and_general_chunk_paths_agree_and_validate_alike(void **state) {
    (void)state;
    uint8_t data[300];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 13);
    fc_buf b = FC_BUF_INIT;
    assert_int_equal(fc_frame_encode_chunk(77, 5, 1ull << 40, data, sizeof data, 0, &b, NULL),
                     FC_OK);
    fc_chunk_view fast, slow;
    assert_int_equal(fc_frame_peek_chunk(b.data + 4, b.len - 4, &fast), 1);
    fc_envelope *env = NULL;
    assert_int_equal(fc_wire_decode(b.data + 4, b.len - 4, &env, NULL), FC_OK);
    assert_int_equal(fc_wire_chunk_view(env, &slow, NULL), FC_OK);
    assert_int_equal(fast.seq, slow.seq);
    assert_int_equal(fast.tensor_index, slow.tensor_index);
    assert_int_equal(fast.offset, slow.offset);
    assert_int_equal(fast.data_len, slow.data_len);
    assert_memory_equal(fast.data, slow.data, slow.data_len);
    assert_ptr_equal(fast.data, b.data + b.len - sizeof data); /* in place, no copy */
    assert_int_equal(fc_wire_validate_chunk(&fast, NULL), FC_OK);
    fc_envelope_free(env);
    fc_buf_free(&b);
    /* A non-chunk Envelope is not a chunk view. */
    fc_wire_msg m;
    assert_int_equal(fc_wire_bye(&m, 1, "x", NULL), FC_OK);
    fc_error err = {0};
    assert_int_equal(fc_wire_chunk_view(&m.env, &slow, &err), FC_ERR_PROTOCOL);
    assert_non_null(strstr(err.msg, "expected a chunk, got bye"));
    fc_wire_msg_free(&m);
}

static void test_limits_and_field_rules_on_receipt(void **state) {
    (void)state;
    fc_error err = {0};
    fc_wire_msg m;
    /* sha256 must be exactly 32 bytes */
    fc_envelope env;
    Fedcoord__V1__ModelEnd me;
    fedcoord__v1__envelope__init(&env);
    fedcoord__v1__model_end__init(&me);
    env.body_case = FEDCOORD__V1__ENVELOPE__BODY_MODEL_END;
    env.model_end = &me;
    me.sha256.data = (uint8_t *)SHA_A;
    me.sha256.len = 31;
    assert_int_equal(decode_raw(&env, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "model_end.sha256 is 31 bytes"));
    /* NaN and infinite metrics, duplicate metric names, num_examples 0 */
    fc_wire_metric nan_m[] = {{"loss", NAN}};
    assert_int_equal(fc_wire_update_end(&m, 1, SHA_A, 10, nan_m, 1, &err), FC_ERR_NON_FINITE);
    assert_non_null(strstr(err.msg, "metrics['loss'] is not finite"));
    fc_wire_msg_free(&m);
    fc_wire_metric inf_m[] = {{"loss", -INFINITY}};
    assert_int_equal(fc_wire_eval_result(&m, 1, 1, 1, 10, inf_m, 1, &err), FC_ERR_NON_FINITE);
    fc_wire_msg_free(&m);
    fc_wire_metric dup_m[] = {{"loss", 1}, {"acc", 2}, {"loss", 3}};
    assert_int_equal(fc_wire_update_end(&m, 1, SHA_A, 10, dup_m, 3, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "'loss' appears twice"));
    fc_wire_msg_free(&m);
    assert_int_equal(fc_wire_update_end(&m, 1, SHA_A, 0, NULL, 0, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "num_examples is 0"));
    fc_wire_msg_free(&m);
    /* string limits: 256 bytes of client name pass, 257 fail */
    char name[FC_WIRE_MAX_SHORT_STRING + 2];
    memset(name, 'c', sizeof name);
    name[FC_WIRE_MAX_SHORT_STRING] = '\0';
    fc_wire_hello_args h = {.client_name = name};
    assert_int_equal(fc_wire_hello(&m, 1, &h, &err), FC_OK);
    fc_wire_msg_free(&m);
    name[FC_WIRE_MAX_SHORT_STRING] = 'c';
    name[FC_WIRE_MAX_SHORT_STRING + 1] = '\0';
    assert_int_equal(fc_wire_hello(&m, 1, &h, &err), FC_ERR_LIMIT);
    assert_non_null(strstr(err.msg, "hello.client_name is 257 bytes"));
    fc_wire_msg_free(&m);
    /* too many capabilities; an empty capability */
    const char *caps[FC_WIRE_MAX_LIST + 1];
    for (size_t i = 0; i <= FC_WIRE_MAX_LIST; i++)
        caps[i] = "c";
    h.client_name = "ok";
    h.capabilities = caps;
    h.n_capabilities = FC_WIRE_MAX_LIST + 1;
    assert_int_equal(fc_wire_hello(&m, 1, &h, &err), FC_ERR_LIMIT);
    fc_wire_msg_free(&m);
    caps[1] = "";
    h.n_capabilities = 2;
    assert_int_equal(fc_wire_hello(&m, 1, &h, &err), FC_ERR_INVALID);
    fc_wire_msg_free(&m);
    /* token limit */
    uint8_t tok[FC_WIRE_MAX_TOKEN + 1] = {0};
    h.n_capabilities = 0;
    h.token.data = tok;
    h.token.len = sizeof tok;
    assert_int_equal(fc_wire_hello(&m, 1, &h, &err), FC_ERR_LIMIT);
    fc_wire_msg_free(&m);
    /* welcome rules */
    fc_wire_welcome_args w = {.session_id = "s", .heartbeat_interval_ms = 1000,
                              .max_frame_bytes = 4u << 20, .max_chunk_bytes = 1u << 20};
    assert_int_equal(fc_wire_welcome(&m, 1, &w, &err), FC_OK);
    fc_wire_msg_free(&m);
    w.max_chunk_bytes = (1u << 20) + 1;
    assert_int_equal(fc_wire_welcome(&m, 1, &w, &err), FC_ERR_INVALID);
    fc_wire_msg_free(&m);
    w.max_chunk_bytes = 1u << 20;
    w.max_frame_bytes = 1u << 20;
    assert_int_equal(fc_wire_welcome(&m, 1, &w, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "does not fit max_frame_bytes"));
    fc_wire_msg_free(&m);
    w.max_frame_bytes = 4u << 20;
    w.heartbeat_interval_ms = 0;
    assert_int_equal(fc_wire_welcome(&m, 1, &w, &err), FC_ERR_INVALID);
    fc_wire_msg_free(&m);
    w.heartbeat_interval_ms = 1;
    w.session_id = NULL;
    assert_int_equal(fc_wire_welcome(&m, 1, &w, &err), FC_ERR_INVALID);
    fc_wire_msg_free(&m);
    /* task kind must be train or evaluate; config keys unique and non-empty */
    fc_wire_task_args t = {.round = 1, .kind = (fc_task_kind)0, .model_sha256 = SHA_A};
    assert_int_equal(fc_wire_task(&m, 1, &t, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "task.kind 0"));
    fc_wire_msg_free(&m);
    fc_wire_kv cfg[] = {{"lr", "1"}, {"lr", "2"}};
    t.kind = FC_TASK_TRAIN;
    t.config = cfg;
    t.n_config = 2;
    assert_int_equal(fc_wire_task(&m, 1, &t, &err), FC_ERR_INVALID);
    fc_wire_msg_free(&m);
    t.n_config = 0;
    t.model_sha256 = NULL;
    assert_int_equal(fc_wire_task(&m, 1, &t, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "model_sha256 is 0 bytes"));
    fc_wire_msg_free(&m);
    /* model_begin offset beyond the data */
    fc_tensor_spec s1 = spec("w", FC_DTYPE_F32, 1, 2, 0);
    assert_int_equal(fc_wire_model_begin(&m, 1, 1, &s1, 1, 8, SHA_A, 9, &err), FC_ERR_RANGE);
    fc_wire_msg_free(&m);
    /* error code 0 is reserved */
    Fedcoord__V1__Error e0;
    fedcoord__v1__error__init(&e0);
    env.body_case = FEDCOORD__V1__ENVELOPE__BODY_ERROR;
    env.error = &e0;
    assert_int_equal(decode_raw(&env, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "error.code 0 is reserved"));
    /* bye reason over 4096 bytes */
    char *reason = malloc(FC_WIRE_MAX_TEXT + 2);
    assert_non_null(reason);
    memset(reason, 'r', FC_WIRE_MAX_TEXT + 1);
    reason[FC_WIRE_MAX_TEXT + 1] = '\0';
    assert_int_equal(fc_wire_bye(&m, 1, reason, &err), FC_ERR_LIMIT);
    fc_wire_msg_free(&m);
    free(reason);
}

static void test_validation_errors_name_the_sequence_number(void **state) {
    (void)state;
    fc_wire_msg m;
    fc_error err = {0};
    assert_int_equal(fc_wire_update_end(&m, 314, SHA_A, 0, NULL, 0, &err), FC_ERR_INVALID);
    assert_string_equal(err.msg, "seq 314: update_end.num_examples is 0");
    fc_wire_msg_free(&m);
}

static void test_builder_allocation_failures_are_clean(void **state) {
    (void)state;
    fc_tensor_spec specs[2] = {spec("a", FC_DTYPE_F32, 1, 4, 0), spec("b", FC_DTYPE_F32, 1, 4, 0)};
    fc_wire_kv cfg[] = {{"mu", "0.1"}, {"lr", "0.5"}};
    fc_wire_task_args a = {.round = 1, .kind = FC_TASK_TRAIN, .config = cfg, .n_config = 2,
                           .tensors = specs, .n_tensors = 2, .model_sha256 = SHA_A,
                           .model_bytes = 32};
    int succeeded = 0;
    for (long n = 0; n < 40 && !succeeded; n++) {
        fc_wire_msg m;
        fc_error err = {0};
        fc_alloc_fail_after(n);
        fc_status st = fc_wire_task(&m, 1, &a, &err);
        fc_alloc_fail_after(-1);
        if (st == FC_OK)
            succeeded = 1;
        else
            assert_int_equal(st, FC_ERR_NOMEM);
        fc_wire_msg_free(&m);
    }
    assert_true(succeeded);
    /* Conversion from the wire, failing at each allocation. */
    fc_wire_msg m;
    assert_int_equal(fc_wire_task(&m, 1, &a, NULL), FC_OK);
    succeeded = 0;
    for (long n = 0; n < 40 && !succeeded; n++) {
        fc_tensor_spec *out = NULL;
        fc_alloc_fail_after(n);
        fc_status st = fc_wire_specs_from_wire(m.env.task->tensors, 2, &out, NULL, NULL);
        fc_alloc_fail_after(-1);
        if (st == FC_OK) {
            succeeded = 1;
            assert_string_equal(out[1].name, "b");
        } else {
            assert_int_equal(st, FC_ERR_NOMEM);
            assert_null(out);
        }
        fc_wire_specs_free(out, 2);
    }
    assert_true(succeeded);
    fc_wire_msg_free(&m);
}

static void test_documented_example_frames_match_the_encoder(void **state) {
    (void)state;
    /* The hex examples of docs/protocol.md, section 2, byte for byte. */
    static const uint8_t bye[] = {0x00, 0x00, 0x00, 0x09, 0x08, 0x01, 0xba,
                                  0x01, 0x04, 0x0a, 0x02, 0x6f, 0x6b};
    static const uint8_t hello[] = {0x00, 0x00, 0x00, 0x0e, 0x08, 0x01, 0x52, 0x0a, 0x08,
                                    0x01, 0x1a, 0x02, 0x63, 0x31, 0x22, 0x02, 0x74, 0x6b};
    static const uint8_t chunk[] = {0x00, 0x00, 0x00, 0x14, 0x08, 0x07, 0x82, 0x01,
                                    0x0f, 0x08, 0x01, 0x10, 0x80, 0x20, 0x1a, 0x08,
                                    0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40};
    fc_buf b = FC_BUF_INIT;
    fc_wire_msg m;
    assert_int_equal(fc_wire_bye(&m, 1, "ok", NULL), FC_OK);
    assert_int_equal(fc_wire_encode(&m, 0, &b, NULL), FC_OK);
    fc_wire_msg_free(&m);
    assert_int_equal(b.len, sizeof bye);
    assert_memory_equal(b.data, bye, sizeof bye);
    fc_buf_reset(&b);
    fc_wire_hello_args h = {.client_name = "c1", .token = {(const uint8_t *)"tk", 2}};
    assert_int_equal(fc_wire_hello(&m, 1, &h, NULL), FC_OK);
    assert_int_equal(fc_wire_encode(&m, 0, &b, NULL), FC_OK);
    fc_wire_msg_free(&m);
    assert_int_equal(b.len, sizeof hello);
    assert_memory_equal(b.data, hello, sizeof hello);
    fc_buf_reset(&b);
    const float values[2] = {1.0f, 2.0f}; /* little-endian host: 00 00 80 3f, 00 00 00 40 */
    assert_int_equal(fc_frame_encode_chunk(7, 1, 4096, values, sizeof values, 0, &b, NULL), FC_OK);
    assert_int_equal(b.len, sizeof chunk);
    assert_memory_equal(b.data, chunk, sizeof chunk);
    fc_buf_reset(&b);
    assert_int_equal(fc_wire_chunk(&m, 7, 1, 4096, values, sizeof values, NULL), FC_OK);
    assert_int_equal(fc_wire_encode(&m, 0, &b, NULL), FC_OK);
    fc_wire_msg_free(&m);
    assert_memory_equal(b.data, chunk, sizeof chunk);
    fc_buf_free(&b);
}

static void test_whole_session_decodes_byte_by_byte_and_validates(void **state) {
    (void)state;
    /* Client side of a session: every client message type, in protocol order. */
    fc_buf s = FC_BUF_INIT;
    fc_wire_msg m;
    fc_error err = {0};
    fc_wire_hello_args h = {.client_name = "c", .token = {(const uint8_t *)"t", 1}};
    assert_int_equal(fc_wire_hello(&m, 1, &h, &err), FC_OK);
    assert_int_equal(fc_wire_encode(&m, 0, &s, &err), FC_OK);
    fc_wire_msg_free(&m);
    assert_int_equal(fc_wire_heartbeat(&m, 2, 1, &err), FC_OK);
    assert_int_equal(fc_wire_encode(&m, 0, &s, &err), FC_OK);
    fc_wire_msg_free(&m);
    assert_int_equal(fc_wire_model_request(&m, 3, 0, 0, &err), FC_OK);
    assert_int_equal(fc_wire_encode(&m, 0, &s, &err), FC_OK);
    fc_wire_msg_free(&m);
    fc_tensor_spec sp[2] = {spec("w", FC_DTYPE_F32, 2, 2, 3), spec("b", FC_DTYPE_F32, 1, 3, 0)};
    fc_wire_update_begin_args u = {.round = 1, .tensors = sp, .n_tensors = 2, .total_bytes = 36};
    assert_int_equal(fc_wire_update_begin(&m, 4, &u, &err), FC_OK);
    assert_int_equal(fc_wire_encode(&m, 0, &s, &err), FC_OK);
    fc_wire_msg_free(&m);
    float w[6] = {1, 2, 3, 4, 5, 6}, b[3] = {7, 8, 9};
    assert_int_equal(fc_frame_encode_chunk(5, 0, 0, w, 16, 0, &s, &err), FC_OK);
    assert_int_equal(fc_frame_encode_chunk(6, 0, 16, w + 4, 8, 0, &s, &err), FC_OK);
    assert_int_equal(fc_frame_encode_chunk(7, 1, 0, b, 12, 0, &s, &err), FC_OK);
    assert_int_equal(fc_wire_update_end(&m, 8, SHA_A, 5, NULL, 0, &err), FC_OK);
    assert_int_equal(fc_wire_encode(&m, 0, &s, &err), FC_OK);
    fc_wire_msg_free(&m);
    assert_int_equal(fc_wire_bye(&m, 9, "done", &err), FC_OK);
    assert_int_equal(fc_wire_encode(&m, 0, &s, &err), FC_OK);
    fc_wire_msg_free(&m);

    static const Fedcoord__V1__Envelope__BodyCase want[] = {
        FEDCOORD__V1__ENVELOPE__BODY_HELLO,        FEDCOORD__V1__ENVELOPE__BODY_HEARTBEAT,
        FEDCOORD__V1__ENVELOPE__BODY_MODEL_REQUEST, FEDCOORD__V1__ENVELOPE__BODY_UPDATE_BEGIN,
        FEDCOORD__V1__ENVELOPE__BODY_CHUNK,        FEDCOORD__V1__ENVELOPE__BODY_CHUNK,
        FEDCOORD__V1__ENVELOPE__BODY_CHUNK,        FEDCOORD__V1__ENVELOPE__BODY_UPDATE_END,
        FEDCOORD__V1__ENVELOPE__BODY_BYE};
    fc_frame_decoder d;
    fc_frame_decoder_init(&d, 0);
    size_t n = 0;
    uint8_t staged[36];
    size_t staged_len = 0;
    for (size_t i = 0; i < s.len; i++) {
        size_t used;
        fc_frame f;
        fc_status st = fc_frame_decoder_feed(&d, s.data + i, 1, &used, &f, &err);
        assert_int_equal(used, 1);
        if (st == FC_ERR_AGAIN)
            continue;
        assert_int_equal(st, FC_OK);
        fc_chunk_view v;
        if (fc_frame_peek_chunk(f.data, f.len, &v)) {
            assert_int_equal(fc_wire_validate_chunk(&v, &err), FC_OK);
            assert_true(staged_len + v.data_len <= sizeof staged);
            memcpy(staged + staged_len, v.data, v.data_len); /* the one copy */
            staged_len += v.data_len;
        }
        fc_envelope *env = NULL;
        assert_int_equal(fc_wire_decode(f.data, f.len, &env, &err), FC_OK);
        assert_true(n < sizeof want / sizeof want[0]);
        assert_int_equal(env->body_case, want[n]);
        assert_int_equal(env->seq, n + 1);
        n++;
        fc_envelope_free(env);
    }
    assert_int_equal(n, sizeof want / sizeof want[0]);
    assert_int_equal(fc_frame_decoder_finish(&d, &err), FC_OK);
    assert_int_equal(staged_len, 36);
    assert_memory_equal(staged, w, 24);
    assert_memory_equal(staged + 24, b, 12);
    fc_frame_decoder_free(&d);
    fc_buf_free(&s);
}

static void test_body_names(void **state) {
    (void)state;
    assert_string_equal(fc_wire_body_name(FEDCOORD__V1__ENVELOPE__BODY__NOT_SET), "none");
    assert_string_equal(fc_wire_body_name(FEDCOORD__V1__ENVELOPE__BODY_HELLO), "hello");
    assert_string_equal(fc_wire_body_name(FEDCOORD__V1__ENVELOPE__BODY_MODEL_BEGIN),
                        "model_begin");
    assert_string_equal(fc_wire_body_name(FEDCOORD__V1__ENVELOPE__BODY_BYE), "bye");
    assert_string_equal(fc_wire_body_name((Fedcoord__V1__Envelope__BodyCase)99), "unknown");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version_major_must_match_minor_may_differ),
        cmocka_unit_test(test_error_codes_are_pinned),
        cmocka_unit_test(test_error_mapping_is_a_bijection_over_the_table),
        cmocka_unit_test(test_error_message_carries_code_name_and_fatal_default),
        cmocka_unit_test(test_hello_and_welcome_round_trip),
        cmocka_unit_test(test_heartbeat_request_chunk_end_ack_bye_round_trip),
        cmocka_unit_test(test_task_round_trips_with_config_and_specs),
        cmocka_unit_test(test_model_begin_and_update_messages_round_trip),
        cmocka_unit_test(test_invalid_tensor_specs_are_rejected_on_receipt),
        cmocka_unit_test(test_builders_refuse_invalid_specs),
        cmocka_unit_test(test_chunk_data_limits),
        cmocka_unit_test(test_fast_and_general_chunk_paths_agree_and_validate_alike),
        cmocka_unit_test(test_limits_and_field_rules_on_receipt),
        cmocka_unit_test(test_validation_errors_name_the_sequence_number),
        cmocka_unit_test(test_builder_allocation_failures_are_clean),
        cmocka_unit_test(test_documented_example_frames_match_the_encoder),
        cmocka_unit_test(test_whole_session_decodes_byte_by_byte_and_validates),
        cmocka_unit_test(test_body_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
