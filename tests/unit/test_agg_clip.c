/* test_agg_clip.c: norm_bound and centered_clip, values written from the definitions. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "aggregators/agg.h"
#include "aggregators/rules.h"
#include "tests/lib/agg_testutil.h"

static agg_update upd(uint64_t id, const void *data, double w) {
    return (agg_update){.client_id = id, .dtype = FC_DTYPE_F32, .data = data, .weight = w};
}

/* max_norm 1: [3,4] (norm 5) -> [0.6,0.8]; [0.6,0] (norm 0.6) kept.
 * examples (w 1, 3): ([0.6,0.8] + 3*[0.6,0]) / 4 = [0.6, 0.2]; uniform: [0.6, 0.4]. */
static void test_norm_bound_clips_then_averages(void **state) {
    (void)state;
    static const float a[2] = {3, 4}, b[2] = {0.6f, 0};
    agg_update ups[2] = {upd(1, a, 1), upd(2, b, 3)};
    agg_context ctx = {.dim = 2};
    double D[2];
    agg_report rep;
    agg_report_init(&rep);
    const char *kv[] = {"max_norm=1", NULL};
    assert_int_equal(agg_test_round("norm_bound", kv, &ctx, ups, 2, NULL, 0, D, &rep, NULL, NULL),
                     FC_OK);
    assert_true(agg_test_close(D[0], 0.6, 1e-7)); /* 0.6f is not 0.6 */
    assert_true(agg_test_close(D[1], 0.2, 1e-15));
    assert_int_equal(rep.clipped, 1);
    const char *kvu[] = {"max_norm=1", "weighting=uniform", NULL};
    assert_int_equal(agg_test_round("norm_bound", kvu, &ctx, ups, 2, NULL, 1, D, &rep, NULL, NULL),
                     FC_OK);
    assert_true(agg_test_close(D[0], 0.6, 1e-7));
    assert_true(agg_test_close(D[1], 0.4, 1e-15));
    agg_report_free(&rep);
}

static void test_norm_bound_requires_max_norm(void **state) {
    (void)state;
    agg_context ctx = {.dim = 2};
    agg_round *r = NULL;
    fc_error err = {0};
    assert_int_equal(agg_round_begin(&agg_norm_bound, NULL, &ctx, NULL, 0, &r, &err),
                     FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "missing required parameter 'max_norm'"));
    assert_non_null(strstr(err.msg, "weighting (examples|uniform, default examples)"));
}

/* tau 1, iters 1, v = 0: ([0.6,0.8] + [0.5,0]) / 2 = [0.55, 0.4], one clip.
 * Next round, v = [0.55,0.4]: [0.55,2.4] - v = [0,2] -> [0,1]; D = [0.55, 1.4]. */
static void test_centered_clip_one_iteration_and_persisted_centre(void **state) {
    (void)state;
    static const float a[2] = {3, 4}, b[2] = {0.5f, 0};
    agg_update ups[2] = {upd(1, a, 1), upd(2, b, 1)};
    agg_context ctx = {.dim = 2};
    const char *kv[] = {"tau=1", NULL};
    fc_buf st = FC_BUF_INIT;
    double D[2];
    agg_report rep;
    agg_report_init(&rep);
    assert_int_equal(agg_test_round("centered_clip", kv, &ctx, ups, 2, NULL, 0, D, &rep, &st, NULL),
                     FC_OK);
    assert_true(agg_test_close(D[0], 0.55, 1e-15));
    assert_true(agg_test_close(D[1], 0.4, 1e-15));
    assert_int_equal(rep.clipped, 1);
    assert_int_equal(rep.iterations, 1);
    assert_int_equal(st.len, 16 + 2 * 8);
    /* 0.55 and 2.4 are not floats; use f64 so that Delta - v is exactly [0, 2]. */
    double c[2] = {D[0], D[1] + 2.0};
    agg_update u = {.client_id = 1, .dtype = FC_DTYPE_F64, .data = c, .weight = 1};
    assert_int_equal(agg_test_round("centered_clip", kv, &ctx, &u, 1, NULL, 0, D, &rep, &st, NULL),
                     FC_OK);
    assert_true(agg_test_close(D[0], 0.55, 1e-15));
    assert_true(agg_test_close(D[1], 1.4, 1e-15));
    assert_int_equal(rep.clipped, 1);
    agg_report_free(&rep);
    fc_buf_free(&st);
}

/* iters 2, same inputs: tests/agg_expected.py gives [0.8063120216533546, 0.6133564399804394];
 * clipped steps: [3,4] in both iterations = 2. */
static void test_centered_clip_two_iterations_match_script(void **state) {
    (void)state;
    static const float a[2] = {3, 4}, b[2] = {0.5f, 0};
    agg_update ups[2] = {upd(1, a, 1), upd(2, b, 1)};
    ups[0].data_stable = 1;
    agg_context ctx = {.dim = 2};
    const char *kv[] = {"tau=1", "iters=2", NULL};
    double D[2];
    agg_report rep;
    agg_report_init(&rep);
    assert_int_equal(
        agg_test_round("centered_clip", kv, &ctx, ups, 2, NULL, 0, D, &rep, NULL, NULL), FC_OK);
    assert_true(agg_test_close(D[0], 0.8063120216533546, 1e-14));
    assert_true(agg_test_close(D[1], 0.6133564399804394, 1e-14));
    assert_int_equal(rep.clipped, 2);
    assert_int_equal(rep.iterations, 2);
    agg_report_free(&rep);
}

/* The same inputs as above in f16 ([3,4] = 0x4200,0x4400) and bf16 ([0.5,0] = 0x3f00,0): the
 * half-precision paths of the norm and clipped-difference kernels give the same results. */
static void test_clip_rules_read_f16_and_bf16(void **state) {
    (void)state;
    static const uint16_t h[2] = {0x4200, 0x4400}, bf[2] = {0x3f00, 0x0000};
    agg_update ups[2] = {{.client_id = 1, .dtype = FC_DTYPE_F16, .data = h, .weight = 1},
                         {.client_id = 2, .dtype = FC_DTYPE_BF16, .data = bf, .weight = 1}};
    agg_context ctx = {.dim = 2};
    double D[2];
    agg_report rep;
    agg_report_init(&rep);
    const char *cc[] = {"tau=1", "iters=2", NULL};
    assert_int_equal(
        agg_test_round("centered_clip", cc, &ctx, ups, 2, NULL, 0, D, &rep, NULL, NULL), FC_OK);
    assert_true(agg_test_close(D[0], 0.8063120216533546, 1e-14));
    assert_true(agg_test_close(D[1], 0.6133564399804394, 1e-14));
    /* norm_bound, max_norm 1, uniform: ([0.6,0.8] + [0.5,0]) / 2 = [0.55, 0.4]. */
    const char *nb[] = {"max_norm=1", "weighting=uniform", NULL};
    assert_int_equal(agg_test_round("norm_bound", nb, &ctx, ups, 2, NULL, 0, D, &rep, NULL, NULL),
                     FC_OK);
    assert_true(agg_test_close(D[0], 0.55, 1e-15));
    assert_true(agg_test_close(D[1], 0.4, 1e-15));
    assert_int_equal(rep.clipped, 1);
    agg_report_free(&rep);
}

static void test_centered_clip_state_errors_are_clear(void **state) {
    (void)state;
    static const float a[2] = {3, 4};
    agg_update u = upd(1, a, 1);
    agg_context ctx = {.dim = 2};
    fc_buf st = FC_BUF_INIT;
    double D[2];
    agg_report rep;
    fc_error err = {0};
    agg_round *r = NULL;
    agg_report_init(&rep);
    assert_int_equal(
        agg_test_round("centered_clip", NULL, &ctx, &u, 1, NULL, 0, D, &rep, &st, NULL), FC_OK);
    agg_report_free(&rep);
    agg_context ctx3 = {.dim = 3};
    assert_int_equal(agg_round_begin(&agg_centered_clip, NULL, &ctx3, st.data, st.len, &r, &err),
                     FC_ERR_SHAPE);
    assert_non_null(strstr(err.msg, "state is for 2 elements, the model has 3"));
    assert_int_equal(agg_round_begin(&agg_centered_clip, NULL, &ctx, st.data, st.len - 8, &r, &err),
                     FC_ERR_FORMAT);
    st.data[0] = 9;
    assert_int_equal(agg_round_begin(&agg_centered_clip, NULL, &ctx, st.data, st.len, &r, &err),
                     FC_ERR_VERSION);
    assert_non_null(strstr(err.msg, "version 9"));
    fc_buf_free(&st);
}

/* The empty round leaves the centre exactly as loaded. */
static void test_empty_round_keeps_centered_clip_state(void **state) {
    (void)state;
    static const float a[2] = {3, 4};
    float bad[2] = {NAN, 1};
    agg_update u = upd(1, a, 1), ub = upd(2, bad, 1);
    agg_context ctx = {.dim = 2};
    fc_buf st = FC_BUF_INIT, before = FC_BUF_INIT;
    double D[2];
    agg_report rep;
    agg_report_init(&rep);
    assert_int_equal(
        agg_test_round("centered_clip", NULL, &ctx, &u, 1, NULL, 0, D, &rep, &st, NULL), FC_OK);
    assert_int_equal(fc_buf_append(&before, st.data, st.len), FC_OK);
    assert_int_equal(
        agg_test_round("centered_clip", NULL, &ctx, &ub, 1, NULL, 0, D, &rep, &st, NULL), FC_OK);
    assert_true(rep.empty);
    assert_int_equal(st.len, before.len);
    assert_memory_equal(st.data, before.data, st.len);
    agg_report_free(&rep);
    fc_buf_free(&st);
    fc_buf_free(&before);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_norm_bound_clips_then_averages),
        cmocka_unit_test(test_norm_bound_requires_max_norm),
        cmocka_unit_test(test_centered_clip_one_iteration_and_persisted_centre),
        cmocka_unit_test(test_centered_clip_two_iterations_match_script),
        cmocka_unit_test(test_clip_rules_read_f16_and_bf16),
        cmocka_unit_test(test_centered_clip_state_errors_are_clear),
        cmocka_unit_test(test_empty_round_keeps_centered_clip_state),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
