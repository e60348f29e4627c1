/* test_prox.c: the FedProx gradient helper. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/prox.h"

/* grad [1,2], w [0.5,-1], w_t [0,1], mu 0.1: grad += 0.1*[0.5,-2] = [1.05, 1.8]. */
static void test_prox_adds_mu_times_distance_to_anchor(void **state) {
    (void)state;
    float g[2] = {1, 2};
    const float w[2] = {0.5f, -1}, wt[2] = {0, 1};
    assert_int_equal(fc_prox_add(g, w, wt, 2, 0.1), FC_OK);
    assert_true(g[0] == (float)1.05 && g[1] == (float)1.8);
}

static void test_prox_with_zero_mu_leaves_gradient(void **state) {
    (void)state;
    float g[2] = {1, 2};
    const float w[2] = {5, 6}, wt[2] = {0, 0};
    assert_int_equal(fc_prox_add(g, w, wt, 2, 0), FC_OK);
    assert_true(g[0] == 1 && g[1] == 2);
}

static void test_prox_rejects_bad_mu_and_null_arrays(void **state) {
    (void)state;
    float g[1] = {1};
    const float w[1] = {2}, wt[1] = {0};
    assert_int_equal(fc_prox_add(g, w, wt, 1, -0.1), FC_ERR_INVALID);
    assert_int_equal(fc_prox_add(g, w, wt, 1, NAN), FC_ERR_INVALID);
    assert_int_equal(fc_prox_add(g, w, wt, 1, INFINITY), FC_ERR_INVALID);
    assert_int_equal(fc_prox_add(g, NULL, wt, 1, 1), FC_ERR_INVALID);
    assert_true(g[0] == 1);
    assert_int_equal(fc_prox_add(NULL, NULL, NULL, 0, 1), FC_OK);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prox_adds_mu_times_distance_to_anchor),
        cmocka_unit_test(test_prox_with_zero_mu_leaves_gradient),
        cmocka_unit_test(test_prox_rejects_bad_mu_and_null_arrays),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
