/* test_agg_round.c: the round driver (input checks, order, empty round, requirement, report)
 * and the fedavg rule. Expected values are written from the definitions by hand. */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "aggregators/agg.h"
#include "aggregators/rules.h"
#include "core/alloc.h"
#include "tests/lib/agg_testutil.h"

static agg_update f32_update(uint64_t id, const void *data, double weight) {
    agg_update u = {0};
    u.client_id = id;
    u.dtype = FC_DTYPE_F32;
    u.data = data;
    u.weight = weight;
    return u;
}

/* fedavg by examples: ([1,2,3]*1 + [3,0,-1]*3 + [.5,.5,.5]*0) / 4 = [2.5, 0.5, 0]. */
static void test_fedavg_weights_by_examples(void **state) {
    (void)state;
    static const float a[3] = {1, 2, 3}, b[3] = {3, 0, -1}, c[3] = {0.5f, 0.5f, 0.5f};
    agg_update ups[3] = {f32_update(10, a, 1), f32_update(20, b, 3), f32_update(30, c, 0)};
    agg_context ctx = {.dim = 3};
    double D[3];
    agg_report rep;
    fc_error err = {0};
    agg_report_init(&rep);
    assert_int_equal(agg_test_round("fedavg", NULL, &ctx, ups, 3, NULL, 0, D, &rep, NULL, &err),
                     FC_OK);
    assert_true(D[0] == 2.5 && D[1] == 0.5 && D[2] == 0.0);
    assert_int_equal(rep.n_used, 3);
    assert_int_equal(rep.n_in, 3);
    assert_true(rep.total_weight == 4.0);
    assert_int_equal(rep.client_ids[0], 10);
    assert_int_equal(rep.client_ids[2], 30);
    assert_false(rep.empty);
    agg_report_free(&rep);
}

/* uniform: ([1,2,3] + [3,0,-1] + [.5,.5,.5]) / 3 = [1.5, 2.5/3, 2.5/3]. */
static void test_fedavg_uniform_ignores_weights(void **state) {
    (void)state;
    static const float a[3] = {1, 2, 3}, b[3] = {3, 0, -1}, c[3] = {0.5f, 0.5f, 0.5f};
    agg_update ups[3] = {f32_update(1, a, 1), f32_update(2, b, 3), f32_update(3, c, 0)};
    agg_context ctx = {.dim = 3};
    const char *kv[] = {"weighting=uniform", NULL};
    double D[3];
    agg_report rep;
    agg_report_init(&rep);
    assert_int_equal(agg_test_round("fedavg", kv, &ctx, ups, 3, NULL, 0, D, &rep, NULL, NULL),
                     FC_OK);
    assert_true(agg_test_close(D[0], 1.5, 1e-15));
    assert_true(agg_test_close(D[1], 2.5 / 3, 1e-15));
    assert_true(agg_test_close(D[2], 2.5 / 3, 1e-15));
    agg_report_free(&rep);
}

/* f16 [1, 2, -1.5, 2^-24] and bf16 [1, -2, 0.5, 3], weights 1 and 1: mean. */
static void test_fedavg_reads_f16_and_bf16(void **state) {
    (void)state;
    static const uint16_t h[4] = {0x3c00, 0x4000, 0xbe00, 0x0001};
    static const uint16_t bf[4] = {0x3f80, 0xc000, 0x3f00, 0x4040};
    agg_update ups[2] = {{.client_id = 1, .dtype = FC_DTYPE_F16, .data = h, .weight = 1},
                         {.client_id = 2, .dtype = FC_DTYPE_BF16, .data = bf, .weight = 1}};
    agg_context ctx = {.dim = 4};
    double D[4];
    agg_report rep;
    agg_report_init(&rep);
    assert_int_equal(agg_test_round("fedavg", NULL, &ctx, ups, 2, NULL, 0, D, &rep, NULL, NULL),
                     FC_OK);
    assert_true(D[0] == 1.0);
    assert_true(D[1] == 0.0);
    assert_true(D[2] == -0.5);
    assert_true(D[3] == (0x1p-24 + 3.0) / 2);
    agg_report_free(&rep);
}

static void test_single_update_is_the_aggregate(void **state) {
    (void)state;
    static const double a[2] = {0.1, -7.25};
    agg_update u = {.client_id = 5, .dtype = FC_DTYPE_F64, .data = a, .weight = 42};
    agg_context ctx = {.dim = 2};
    double D[2];
    agg_report rep;
    agg_report_init(&rep);
    assert_int_equal(agg_test_round("fedavg", NULL, &ctx, &u, 1, NULL, 0, D, &rep, NULL, NULL),
                     FC_OK);
    assert_true(D[0] == 0.1 && D[1] == -7.25);
    agg_report_free(&rep);
}

static const char *reason_of(const agg_report *rep, uint64_t id) {
    for (size_t i = 0; i < rep->n_dropped; i++)
        if (rep->dropped[i].client_id == id)
            return rep->dropped[i].reason;
    return NULL;
}

static void test_non_finite_and_bad_weight_updates_are_dropped_with_reasons(void **state) {
    (void)state;
    static const float ok[2] = {1, 2}, ok2[2] = {3, 4};
    float nan_[2] = {1, NAN}, pinf[2] = {INFINITY, 0}, ninf[2] = {0, -INFINITY};
    static const uint16_t h_inf[2] = {0x3c00, 0x7c00}, bf_nan[2] = {0x7fc0, 0};
    static const double d_inf[2] = {0, -INFINITY};
    agg_update ups[10] = {f32_update(1, ok, 1),
                          f32_update(2, nan_, 1),
                          f32_update(3, pinf, 1),
                          f32_update(4, ninf, 1),
                          f32_update(5, ok2, -1),
                          f32_update(6, ok2, NAN),
                          f32_update(7, ok2, INFINITY),
                          f32_update(11, ok2, 1),
                          {.client_id = 8, .dtype = FC_DTYPE_F16, .data = h_inf, .weight = 1},
                          {.client_id = 9, .dtype = FC_DTYPE_BF16, .data = bf_nan, .weight = 1}};
    agg_update more[2] = {{.client_id = 12, .dtype = FC_DTYPE_F64, .data = d_inf, .weight = 1},
                          {.client_id = 13, .dtype = (fc_dtype)9, .data = ok, .weight = 1}};
    agg_context ctx = {.dim = 2};
    agg_round *r = NULL;
    double D[2];
    agg_report rep;
    fc_error err = {0};
    agg_report_init(&rep);
    assert_int_equal(agg_round_begin(&agg_fedavg, NULL, &ctx, NULL, 0, &r, &err), FC_OK);
    for (size_t i = 0; i < 10; i++)
        assert_int_equal(agg_round_add(r, &ups[i], &err), FC_OK);
    for (size_t i = 0; i < 2; i++)
        assert_int_equal(agg_round_add(r, &more[i], &err), FC_OK);
    assert_int_equal(agg_round_finish(r, D, &rep, &err), FC_OK);
    assert_true(D[0] == 2.0 && D[1] == 3.0); /* mean of [1,2] and [3,4] */
    assert_int_equal(rep.n_used, 2);
    assert_int_equal(rep.n_dropped, 10);
    assert_int_equal(rep.n_in, 12);
    assert_string_equal(reason_of(&rep, 2), "non_finite");
    assert_string_equal(reason_of(&rep, 3), "non_finite");
    assert_string_equal(reason_of(&rep, 4), "non_finite");
    assert_string_equal(reason_of(&rep, 5), "bad_weight");
    assert_string_equal(reason_of(&rep, 6), "bad_weight");
    assert_string_equal(reason_of(&rep, 7), "bad_weight");
    assert_string_equal(reason_of(&rep, 8), "non_finite");
    assert_string_equal(reason_of(&rep, 9), "non_finite");
    assert_string_equal(reason_of(&rep, 12), "non_finite");
    assert_string_equal(reason_of(&rep, 13), "bad_dtype");
    for (size_t i = 1; i < rep.n_dropped; i++) /* dropped list is in client_id order */
        assert_true(rep.dropped[i - 1].client_id < rep.dropped[i].client_id);
    agg_report_free(&rep);
    agg_round_free(r);
}

/* finite_checked = 1 is the caller's word that every value is finite (the daemon's validation
 * checked it): the driver skips its own pass, so even a NaN is folded as given (and only the
 * check of the aggregate at finish catches it). */
static void test_finite_checked_skips_the_drivers_pass(void **state) {
    (void)state;
    static const float ok[2] = {1, 2};
    float nan_[2] = {NAN, 4};
    agg_update a = f32_update(1, ok, 1), b = f32_update(2, nan_, 1);
    b.finite_checked = 1;
    agg_context ctx = {.dim = 2};
    agg_round *r = NULL;
    double D[2];
    agg_report rep;
    fc_error err = {0};
    agg_report_init(&rep);
    assert_int_equal(agg_round_begin(&agg_fedavg, NULL, &ctx, NULL, 0, &r, &err), FC_OK);
    assert_int_equal(agg_round_add(r, &a, &err), FC_OK);
    assert_int_equal(agg_round_add(r, &b, &err), FC_OK);
    /* folded, not dropped: the aggregate itself is then refused as non-finite */
    assert_int_equal(agg_round_finish(r, D, &rep, &err), FC_ERR_NON_FINITE);
    assert_int_equal(rep.n_used, 2);
    assert_int_equal(rep.n_dropped, 0);
    agg_report_free(&rep);
    agg_round_free(r);
}

typedef struct seen_windows {
    const uint8_t *next; /* where the next window must start */
    size_t calls, largest;
} seen_windows;

static void record_window(void *ctx, const void *p, size_t len) {
    seen_windows *w = ctx;
    assert_ptr_equal(p, w->next);
    w->next += len;
    w->calls++;
    w->largest = len > w->largest ? len : w->largest;
}

/* The streaming rules tell agg_update.consumed what they have read, window by window, in order,
 * covering the whole update; the fold is the same. A copy made by the driver (misaligned data,
 * or data that is not stable while the driver holds it) is not the caller's memory, so nothing
 * is reported for it. */
static void test_streaming_fold_reports_consumed_windows(void **state) {
    (void)state;
    const size_t dim = ((size_t)16 << 20) / 4 * 2 + 123; /* two full 16 MiB windows and a tail */
    float *x = fc_mallocarray(dim, sizeof *x);
    uint8_t *raw = fc_malloc(dim * sizeof *x + 1);
    assert_non_null(x);
    assert_non_null(raw);
    for (size_t i = 0; i < dim; i++)
        x[i] = (float)(i % 977) - 488.0f;
    memcpy(raw + 1, x, dim * sizeof *x);
    const char *rules[] = {"fedavg", "fedau", "norm_bound"};
    const agg_kv huge = {"max_norm", "1e300"}; /* norm_bound: no clipping, D is the update */
    const agg_params norm_params = {&huge, 1};
    for (size_t k = 0; k < sizeof rules / sizeof rules[0]; k++) {
        for (int misaligned = 0; misaligned < 2; misaligned++) {
            seen_windows seen = {(const uint8_t *)(misaligned ? raw + 1 : (uint8_t *)x), 0, 0};
            agg_update u = f32_update(1, misaligned ? (const void *)(raw + 1) : x, 2);
            u.data_stable = 1; /* held until finish without a copy (no agg_round_expect) */
            u.consumed = record_window;
            u.consumed_ctx = &seen;
            agg_context ctx = {.dim = dim, .num_registered = 1};
            agg_round *r = NULL;
            fc_error err = {0};
            agg_report rep;
            agg_report_init(&rep);
            double *D = NULL;
            assert_int_equal(agg_round_begin(agg_rule_find(rules[k]), k == 2 ? &norm_params : NULL,
                                             &ctx, NULL, 0, &r, &err),
                             FC_OK);
            assert_int_equal(agg_round_add(r, &u, &err), FC_OK);
            assert_int_equal(agg_round_finish_shared(r, &D, &rep, &err), FC_OK);
            if (misaligned) {
                assert_int_equal(seen.calls, 0);
            } else {
                assert_int_equal(seen.calls, 3);
                assert_int_equal(seen.largest, (size_t)16 << 20);
                assert_ptr_equal(seen.next, (const uint8_t *)(x + dim));
            }
            for (size_t i = 0; i < dim; i += 4099)
                if (D[i] != (double)x[i])
                    fail_msg("%s: D[%zu] = %g, expected %g", rules[k], i, D[i], (double)x[i]);
            agg_report_free(&rep);
            agg_round_free(r);
        }
    }
    fc_free(raw);
    fc_free(x);
}

static void test_duplicate_client_is_rejected(void **state) {
    (void)state;
    static const float a[1] = {1};
    agg_update u = f32_update(3, a, 1);
    agg_context ctx = {.dim = 1};
    agg_round *r = NULL;
    fc_error err = {0};
    assert_int_equal(agg_round_begin(&agg_fedavg, NULL, &ctx, NULL, 0, &r, &err), FC_OK);
    assert_int_equal(agg_round_add(r, &u, &err), FC_OK);
    assert_int_equal(agg_round_add(r, &u, &err), FC_ERR_EXISTS);
    assert_non_null(strstr(err.msg, "client 3"));
    assert_int_equal(agg_round_drop(r, 3, NULL, "timeout", &err), FC_ERR_EXISTS);
    agg_round_free(r);
    /* Also with expect, and for a dropped one. */
    uint64_t ids[2] = {3, 4};
    assert_int_equal(agg_round_begin(&agg_fedavg, NULL, &ctx, NULL, 0, &r, &err), FC_OK);
    assert_int_equal(agg_round_expect(r, ids, 2, &err), FC_OK);
    assert_int_equal(agg_round_drop(r, 4, "b", "timeout", &err), FC_OK);
    assert_int_equal(
        agg_round_add(
            r, &(agg_update){.client_id = 4, .dtype = FC_DTYPE_F32, .data = a, .weight = 1}, &err),
        FC_ERR_EXISTS);
    agg_round_free(r);
}

static void test_expect_rejects_unknown_ids_and_reports_missing(void **state) {
    (void)state;
    static const float a[1] = {1}, b[1] = {5};
    uint64_t ids[3] = {30, 10, 20};
    uint64_t dup[2] = {1, 1};
    agg_context ctx = {.dim = 1};
    agg_round *r = NULL;
    double D[1];
    agg_report rep;
    fc_error err = {0};
    agg_report_init(&rep);
    assert_int_equal(agg_round_begin(&agg_fedavg, NULL, &ctx, NULL, 0, &r, &err), FC_OK);
    assert_int_equal(agg_round_expect(r, dup, 2, &err), FC_ERR_EXISTS);
    assert_int_equal(agg_round_expect(r, ids, 3, &err), FC_OK);
    assert_int_equal(agg_round_expect(r, ids, 3, &err), FC_ERR_STATE);
    agg_update u = f32_update(15, a, 1);
    assert_int_equal(agg_round_add(r, &u, &err), FC_ERR_NOT_FOUND);
    u = f32_update(30, b, 1);
    assert_int_equal(agg_round_add(r, &u, &err), FC_OK);
    u = f32_update(10, a, 1);
    assert_int_equal(agg_round_add(r, &u, &err), FC_OK);
    assert_int_equal(agg_round_finish(r, D, &rep, &err), FC_OK);
    assert_true(D[0] == 3.0);
    assert_int_equal(rep.n_dropped, 1);
    assert_int_equal(rep.dropped[0].client_id, 20);
    assert_string_equal(rep.dropped[0].reason, "missing");
    assert_int_equal(rep.client_ids[0], 10);
    assert_int_equal(rep.client_ids[1], 30);
    assert_int_equal(agg_round_finish(r, D, &rep, &err), FC_ERR_STATE);
    agg_report_free(&rep);
    agg_round_free(r);
}

static void test_empty_round_gives_zero_and_flag(void **state) {
    (void)state;
    float bad[2] = {NAN, 0};
    static const float a[2] = {1, 2};
    agg_context ctx = {.dim = 2};
    double D[2] = {9, 9};
    agg_report rep;
    agg_report_init(&rep);
    /* No valid update. */
    agg_update u = f32_update(1, bad, 1);
    assert_int_equal(agg_test_round("fedavg", NULL, &ctx, &u, 1, NULL, 0, D, &rep, NULL, NULL),
                     FC_OK);
    assert_true(rep.empty);
    assert_true(D[0] == 0.0 && D[1] == 0.0);
    assert_string_equal(rep.note, "no valid update");
    /* Zero total weight. */
    agg_update z[2] = {f32_update(1, a, 0), f32_update(2, a, 0)};
    D[0] = D[1] = 9;
    assert_int_equal(agg_test_round("fedavg", NULL, &ctx, z, 2, NULL, 1, D, &rep, NULL, NULL),
                     FC_OK);
    assert_true(rep.empty);
    assert_int_equal(rep.n_used, 2);
    assert_true(D[0] == 0.0 && D[1] == 0.0);
    assert_string_equal(rep.note, "total weight 0");
    /* Nothing offered at all. */
    assert_int_equal(agg_test_round("fedavg", NULL, &ctx, NULL, 0, NULL, 0, D, &rep, NULL, NULL),
                     FC_OK);
    assert_true(rep.empty);
    agg_report_free(&rep);
}

static void test_misaligned_and_stable_data_give_the_same_result(void **state) {
    (void)state;
    /* The same f32 values at an odd address, and as stable pointers. */
    static const float a[3] = {0.1f, 0.2f, 0.3f}, b[3] = {-1.f, 5.f, 1e-3f};
    unsigned char *raw = fc_malloc(sizeof a + 1);
    assert_non_null(raw);
    memcpy(raw + 1, a, sizeof a);
    agg_context ctx = {.dim = 3};
    agg_update u1[2] = {f32_update(1, a, 2), f32_update(2, b, 1)};
    agg_update u2[2] = {f32_update(1, raw + 1, 2), f32_update(2, b, 1)};
    u2[1].data_stable = 1;
    size_t rev[2] = {1, 0};
    double D1[3], D2[3];
    agg_report rep;
    agg_report_init(&rep);
    assert_int_equal(agg_test_round("fedavg", NULL, &ctx, u1, 2, NULL, 0, D1, &rep, NULL, NULL),
                     FC_OK);
    assert_int_equal(agg_test_round("fedavg", NULL, &ctx, u2, 2, rev, 1, D2, &rep, NULL, NULL),
                     FC_OK);
    assert_true(agg_test_same_bits(D1, D2, 3));
    agg_report_free(&rep);
    fc_free(raw);
}

/* ---- order independence ---- */

#define N_ORD 7
#define D_ORD 33

static void next_perm(size_t *p, unsigned *seed) {
    for (size_t i = N_ORD - 1; i > 0; i--) {
        size_t j = (size_t)(rand_r(seed) % (i + 1));
        size_t t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
}

/* The same updates (with awkward values and mixed dtypes so that summation order would show)
 * in 200 arrival orders, with and without expect, give bit-identical D and reports. */
static void check_order_independence(const char *rule, const char *const *kv) {
    static float f[N_ORD][D_ORD];
    static double dd[D_ORD];
    static uint16_t h[D_ORD];
    agg_update ups[N_ORD];
    unsigned seed = 12345;
    for (size_t i = 0; i < N_ORD; i++)
        for (size_t j = 0; j < D_ORD; j++)
            f[i][j] = (float)((rand_r(&seed) % 20001) - 10000) / 777.0f * (j % 3 ? 1e3f : 1e-3f);
    for (size_t j = 0; j < D_ORD; j++) {
        dd[j] = 1.0 / (double)(j + 3);
        h[j] = (uint16_t)(0x3000 + j * 37);
    }
    for (size_t i = 0; i < N_ORD; i++)
        ups[i] = f32_update(100 - 7 * i, f[i], 0.1 * (double)(i + 1));
    ups[2].dtype = FC_DTYPE_F64;
    ups[2].data = dd;
    ups[4].dtype = FC_DTYPE_F16;
    ups[4].data = h;
    agg_context ctx = {.dim = D_ORD, .round = 3, .num_registered = 10};
    double ref[D_ORD], D[D_ORD];
    agg_report rep;
    fc_buf json_ref = FC_BUF_INIT, json = FC_BUF_INIT;
    fc_error err = {0};
    agg_report_init(&rep);
    size_t p[N_ORD];
    for (size_t i = 0; i < N_ORD; i++)
        p[i] = i;
    assert_int_equal(agg_test_round(rule, kv, &ctx, ups, N_ORD, p, 0, ref, &rep, NULL, &err),
                     FC_OK);
    assert_int_equal(agg_report_to_json(&rep, &json_ref), FC_OK);
    for (int trial = 0; trial < 200; trial++) {
        next_perm(p, &seed);
        assert_int_equal(
            agg_test_round(rule, kv, &ctx, ups, N_ORD, p, trial & 1, D, &rep, NULL, &err), FC_OK);
        assert_true(agg_test_same_bits(ref, D, D_ORD));
        fc_buf_reset(&json);
        assert_int_equal(agg_report_to_json(&rep, &json), FC_OK);
        assert_int_equal(json.len, json_ref.len);
        assert_memory_equal(json.data, json_ref.data, json.len);
    }
    agg_report_free(&rep);
    fc_buf_free(&json);
    fc_buf_free(&json_ref);
}

static void test_result_is_bit_identical_in_any_arrival_order(void **state) {
    (void)state;
    check_order_independence("fedavg", NULL);
    const char *uni[] = {"weighting=uniform", NULL};
    check_order_independence("fedavg", uni);
    check_order_independence("fedau", NULL);
    const char *nb[] = {"max_norm=3000", NULL};
    check_order_independence("norm_bound", nb);
    const char *cc[] = {"tau=5000", "iters=3", NULL};
    check_order_independence("centered_clip", cc);
    const char *cc1[] = {"tau=5000", NULL};
    check_order_independence("centered_clip", cc1);
}

/* ---- requirement and failures ---- */

static void test_requirement_failure_fails_the_round_with_a_reason(void **state) {
    (void)state;
    static const float a[1] = {1};
    agg_update ups[3] = {f32_update(1, a, 1), f32_update(2, a, 1), f32_update(3, a, 1)};
    agg_context ctx = {.dim = 1, .round = 0, .num_registered = 2}; /* 3 participants > N */
    double D[1] = {5};
    agg_report rep;
    fc_error err = {0};
    agg_report_init(&rep);
    assert_int_equal(agg_test_round("fedau", NULL, &ctx, ups, 3, NULL, 0, D, &rep, NULL, &err),
                     FC_ERR_REQUIREMENT);
    assert_non_null(strstr(err.msg, "3 participants"));
    assert_true(D[0] == 0.0);
    assert_int_equal(rep.n_used, 3);
    assert_string_equal(rep.rule, "fedau");
    assert_non_null(strstr(rep.note, "N = 2"));
    agg_report_free(&rep);
}

static void test_state_for_a_stateless_rule_is_refused(void **state) {
    (void)state;
    agg_context ctx = {.dim = 1};
    agg_round *r = NULL;
    fc_error err = {0};
    assert_int_equal(agg_round_begin(&agg_fedavg, NULL, &ctx, "x", 1, &r, &err), FC_ERR_INVALID);
    assert_null(r);
    ctx.dim = 0;
    assert_int_equal(agg_round_begin(&agg_fedavg, NULL, &ctx, NULL, 0, &r, &err), FC_ERR_INVALID);
}

static void test_allocation_failures_fail_cleanly(void **state) {
    (void)state;
    static const float a[4] = {1, 2, 3, 4}, b[4] = {4, 3, 2, 1};
    agg_update ups[2] = {f32_update(2, a, 1), f32_update(1, b, 1)};
    agg_context ctx = {.dim = 4, .num_registered = 4};
    const char *rules[] = {"fedavg", "fedau", "centered_clip"};
    for (size_t k = 0; k < 3; k++)
        for (long n = 0; n < 40; n++) {
            double D[4];
            agg_report rep;
            fc_buf st = FC_BUF_INIT;
            agg_report_init(&rep);
            fc_alloc_fail_after(n);
            fc_status s = agg_test_round(rules[k], NULL, &ctx, ups, 2, NULL, (int)(n & 1), D, &rep,
                                         &st, NULL);
            fc_alloc_fail_after(-1);
            assert_true(s == FC_OK || s == FC_ERR_NOMEM);
            if (n == 39) /* enough allocations for the whole round: it must succeed */
                assert_int_equal(s, FC_OK);
            agg_report_free(&rep);
            fc_buf_free(&st);
        }
}

/* ---- report JSON ---- */

/* finish_shared gives the same D as finish, in the rule's accumulator for fedavg (one buffer)
 * and in a buffer of the round's own for a rule that lends none (median); an empty round gives
 * zeros there too. */
static void run_shared(const char *rule, const agg_update *ups, size_t n, double *copy,
                       int *lent) {
    agg_context ctx = {.dim = 3};
    agg_round *r = NULL;
    fc_error err = {0};
    assert_int_equal(agg_round_begin(agg_rule_find(rule), NULL, &ctx, NULL, 0, &r, &err), FC_OK);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(agg_round_add(r, &ups[i], &err), FC_OK);
    agg_report rep;
    agg_report_init(&rep);
    double *D = NULL;
    assert_int_equal(agg_round_finish_shared(r, &D, &rep, &err), FC_OK);
    assert_non_null(D);
    memcpy(copy, D, 3 * sizeof *D);
    *lent = agg_rule_find(rule)->result_buffer != NULL;
    double *again = NULL;
    assert_int_equal(agg_round_finish_shared(r, &again, &rep, &err), FC_ERR_STATE);
    assert_null(again);
    agg_report_free(&rep);
    agg_round_free(r);
}

static void test_finish_shared_gives_the_same_delta_as_finish(void **state) {
    (void)state;
    static const float a[3] = {1, 2, 3}, b[3] = {3, 0, -1}, c[3] = {0.5f, 0.5f, 0.5f};
    agg_update ups[3] = {f32_update(10, a, 1), f32_update(20, b, 3), f32_update(30, c, 0)};
    double D[3];
    int lent = 0;
    run_shared("fedavg", ups, 3, D, &lent);
    assert_true(lent);
    assert_true(D[0] == 2.5 && D[1] == 0.5 && D[2] == 0.0); /* as test_fedavg_weights_by_examples */
    run_shared("median", ups, 3, D, &lent);
    assert_false(lent);
    assert_true(D[0] == 1.0 && D[1] == 0.5 && D[2] == 0.5); /* coordinate-wise medians */
    run_shared("fedavg", ups, 0, D, &lent);
    assert_true(D[0] == 0.0 && D[1] == 0.0 && D[2] == 0.0);
}

static void test_report_json_parses_back_with_nulls_for_non_finite(void **state) {
    (void)state;
    agg_report rep;
    fc_buf out = FC_BUF_INIT;
    agg_report_init(&rep);
    snprintf(rep.rule, sizeof rep.rule, "krum");
    rep.n_in = 3;
    rep.n_used = 2;
    rep.total_weight = 2.5;
    rep.client_ids = fc_mallocarray(2, sizeof *rep.client_ids);
    rep.client_ids[0] = 7;
    rep.client_ids[1] = UINT64_MAX;
    rep.scores = fc_mallocarray(2, sizeof *rep.scores);
    rep.scores[0] = NAN;
    rep.scores[1] = 1.25;
    rep.n_scores = 2;
    rep.selected = fc_mallocarray(1, sizeof *rep.selected);
    rep.selected[0] = 1;
    rep.n_selected = 1;
    rep.clipped = 4;
    assert_int_equal(agg_report_add_dropped(&rep, 9, "c\"9", "non_finite"), FC_OK);
    assert_int_equal(agg_report_add_dropped(&rep, 10, "bad\xff\xfename", "timeout"), FC_OK);
    snprintf(rep.note, sizeof rep.note, "a note");
    assert_int_equal(agg_report_to_json(&rep, &out), FC_OK);
    json_error_t jerr;
    json_t *o = json_loadb((const char *)out.data, out.len, 0, &jerr);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "rule")), "krum");
    assert_int_equal(json_integer_value(json_object_get(o, "n_in")), 3);
    assert_true(json_real_value(json_object_get(o, "total_weight")) == 2.5);
    json_t *scores = json_object_get(o, "scores");
    assert_true(json_is_null(json_array_get(scores, 0)));
    assert_true(json_real_value(json_array_get(scores, 1)) == 1.25);
    json_t *ids = json_object_get(o, "client_ids");
    assert_int_equal(json_integer_value(json_array_get(ids, 0)), 7);
    assert_string_equal(json_string_value(json_array_get(ids, 1)), "18446744073709551615");
    assert_int_equal(json_integer_value(json_array_get(json_object_get(o, "selected"), 0)), 1);
    assert_int_equal(json_integer_value(json_object_get(o, "clipped")), 4);
    assert_true(json_is_false(json_object_get(o, "empty")));
    json_t *d0 = json_array_get(json_object_get(o, "dropped"), 0);
    assert_string_equal(json_string_value(json_object_get(d0, "client_name")), "c\"9");
    assert_string_equal(json_string_value(json_object_get(d0, "reason")), "non_finite");
    json_t *d1 = json_array_get(json_object_get(o, "dropped"), 1);
    assert_string_equal(json_string_value(json_object_get(d1, "client_name")), "bad??name");
    assert_true(json_is_null(json_object_get(o, "weights_used")) == 0);
    assert_string_equal(json_string_value(json_object_get(o, "note")), "a note");
    json_decref(o);
    fc_buf_free(&out);
    agg_report_free(&rep);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fedavg_weights_by_examples),
        cmocka_unit_test(test_fedavg_uniform_ignores_weights),
        cmocka_unit_test(test_fedavg_reads_f16_and_bf16),
        cmocka_unit_test(test_single_update_is_the_aggregate),
        cmocka_unit_test(test_non_finite_and_bad_weight_updates_are_dropped_with_reasons),
        cmocka_unit_test(test_finite_checked_skips_the_drivers_pass),
        cmocka_unit_test(test_streaming_fold_reports_consumed_windows),
        cmocka_unit_test(test_duplicate_client_is_rejected),
        cmocka_unit_test(test_expect_rejects_unknown_ids_and_reports_missing),
        cmocka_unit_test(test_empty_round_gives_zero_and_flag),
        cmocka_unit_test(test_misaligned_and_stable_data_give_the_same_result),
        cmocka_unit_test(test_result_is_bit_identical_in_any_arrival_order),
        cmocka_unit_test(test_requirement_failure_fails_the_round_with_a_reason),
        cmocka_unit_test(test_state_for_a_stateless_rule_is_refused),
        cmocka_unit_test(test_allocation_failures_fail_cleanly),
        cmocka_unit_test(test_report_json_parses_back_with_nulls_for_non_finite),
        cmocka_unit_test(test_finish_shared_gives_the_same_delta_as_finish),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
