/* test_agg_fedbuff.c: the staleness functions at hand-computed points, and the FedBuff buffer
 * mean D = (1/k) sum s(tau_i) Delta_i (or the examples-weighted form) against hand arithmetic. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "aggregators/agg.h"
#include "tests/lib/agg_testutil.h"

static void test_poly_weight_is_inverse_power_of_one_plus_tau(void **state) {
    (void)state;
    assert_true(agg_test_close(agg_staleness_weight(AGG_STALENESS_POLY, 0.5, 0, 0), 1.0, 1e-15));
    /* 1/sqrt(1+3) = 0.5; 1/sqrt(1+8) = 1/3; (1+1)^-2 = 0.25 */
    assert_true(agg_test_close(agg_staleness_weight(AGG_STALENESS_POLY, 0.5, 0, 3), 0.5, 1e-15));
    assert_true(
        agg_test_close(agg_staleness_weight(AGG_STALENESS_POLY, 0.5, 0, 8), 1.0 / 3, 1e-15));
    assert_true(agg_test_close(agg_staleness_weight(AGG_STALENESS_POLY, 2, 0, 1), 0.25, 1e-15));
}

static void test_constant_weight_ignores_tau(void **state) {
    (void)state;
    assert_true(agg_staleness_weight(AGG_STALENESS_CONSTANT, 0.5, 4, 0) == 1.0);
    assert_true(agg_staleness_weight(AGG_STALENESS_CONSTANT, 0.5, 4, 1000000) == 1.0);
}

static void test_hinge_weight_is_flat_to_b_then_falls(void **state) {
    (void)state;
    /* a = 10, b = 4: tau <= 4 -> 1; tau 5 -> 1/11; tau 6 -> 1/21 */
    for (uint64_t t = 0; t <= 4; t++)
        assert_true(agg_staleness_weight(AGG_STALENESS_HINGE, 10, 4, t) == 1.0);
    assert_true(agg_test_close(agg_staleness_weight(AGG_STALENESS_HINGE, 10, 4, 5), 1.0 / 11,
                               1e-15));
    assert_true(agg_test_close(agg_staleness_weight(AGG_STALENESS_HINGE, 10, 4, 6), 1.0 / 21,
                               1e-15));
}

/* Three updates of dim 2 with staleness 0, 3 and 8: s = 1, 1/2, 1/3. */
static const float d0[2] = {6, -3}, d1[2] = {4, 2}, d2[2] = {9, 12};

static void three_updates(agg_update u[3]) {
    const float *d[3] = {d0, d1, d2};
    const uint64_t tau[3] = {0, 3, 8};
    const double n[3] = {1, 2, 3};
    for (int i = 0; i < 3; i++)
        u[i] = (agg_update){.client_id = (uint64_t)i + 1, .dtype = FC_DTYPE_F32, .data = d[i],
                            .weight = n[i], .staleness = tau[i]};
}

/* One fedbuff round over the three updates with params kv; the report is freed unless rep. */
static fc_status run3(const char *const *kv, double D[2], agg_report *rep, fc_error *err) {
    agg_update u[3];
    three_updates(u);
    agg_context ctx = {.dim = 2};
    agg_report local;
    agg_report_init(&local);
    fc_status st = agg_test_round("fedbuff", kv, &ctx, u, 3, NULL, 0, D, rep ? rep : &local,
                                  NULL, err);
    agg_report_free(&local);
    return st;
}

static void test_buffer_mean_divides_the_weighted_sum_by_k(void **state) {
    (void)state;
    double D[2];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    assert_int_equal(run3(NULL, D, &rep, &err), FC_OK);
    /* (1*6 + 0.5*4 + (1/3)*9) / 3 = 11/3; (1*-3 + 0.5*2 + (1/3)*12) / 3 = 2/3 */
    assert_true(agg_test_close(D[0], 11.0 / 3, 1e-12));
    assert_true(agg_test_close(D[1], 2.0 / 3, 1e-12));
    assert_int_equal(rep.n_weights_used, 3);
    assert_true(agg_test_close(rep.weights_used[1], 0.5, 1e-15));
    agg_report_free(&rep);
}

static void test_examples_weighting_normalises_by_total_examples(void **state) {
    (void)state;
    double D[2];
    fc_error err = {0};
    const char *kv[] = {"weighting=examples", "staleness_fn=constant", NULL};
    assert_int_equal(run3(kv, D, NULL, &err), FC_OK);
    /* (1*6 + 2*4 + 3*9) / 6 = 41/6; (-3 + 4 + 36) / 6 = 37/6 */
    assert_true(agg_test_close(D[0], 41.0 / 6, 1e-12));
    assert_true(agg_test_close(D[1], 37.0 / 6, 1e-12));
}

static void test_hinge_parameters_reach_the_rule(void **state) {
    (void)state;
    double D[2];
    fc_error err = {0};
    /* a = 1, b = 2: s = 1, 1/(1*(3-2)+1) = 1/2, 1/(8-2+1) = 1/7 */
    const char *kv[] = {"staleness_fn=hinge", "a=1", "b=2", NULL};
    assert_int_equal(run3(kv, D, NULL, &err), FC_OK);
    assert_true(agg_test_close(D[0], (6 + 2 + 9.0 / 7) / 3, 1e-12));
}

static void test_unknown_staleness_function_is_refused_by_name(void **state) {
    (void)state;
    double D[2];
    fc_error err = {0};
    const char *kv[] = {"staleness_fn=exp", NULL};
    assert_int_equal(run3(kv, D, NULL, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "staleness_fn"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_poly_weight_is_inverse_power_of_one_plus_tau),
        cmocka_unit_test(test_constant_weight_ignores_tau),
        cmocka_unit_test(test_hinge_weight_is_flat_to_b_then_falls),
        cmocka_unit_test(test_buffer_mean_divides_the_weighted_sum_by_k),
        cmocka_unit_test(test_examples_weighting_normalises_by_total_examples),
        cmocka_unit_test(test_hinge_parameters_reach_the_rule),
        cmocka_unit_test(test_unknown_staleness_function_is_refused_by_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
