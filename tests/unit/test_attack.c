/* test_attack.c: the simulator's Byzantine attacks (client/examples/lib/attack.h) against
 * hand-computed values on tiny inputs, and ALIE's default z against Python's
 * statistics.NormalDist().inv_cdf. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "client/examples/lib/attack.h"
#include "client/examples/lib/rng.h"

static void test_signflip_is_minus_c_times_own_delta(void **state) {
    (void)state;
    const float own[3] = {1.5f, -2.0f, 0.0f};
    float out[3];
    ex_attack_signflip(own, 3, 1.0, out);
    assert_true(out[0] == -1.5f && out[1] == 2.0f && out[2] == 0.0f);
    ex_attack_signflip(own, 3, 4.0, out);
    assert_true(out[0] == -6.0f && out[1] == 8.0f);
}

static void test_alie_is_mean_minus_z_times_unbiased_std(void **state) {
    (void)state;
    /* Column 0: 1,2,3 -> mean 2, std (ddof 1) 1. Column 1: 0,0,6 -> mean 2, var (4+4+16)/2=12. */
    const float honest[6] = {1, 0, 2, 0, 3, 6};
    float out[2];
    fc_error err = {0};
    assert_int_equal(ex_attack_alie(honest, 3, 2, 0.5, out, &err), FC_OK);
    assert_float_equal(out[0], 1.5, 1e-6);
    assert_float_equal(out[1], 2.0 - 0.5 * sqrt(12.0), 1e-6);
    assert_int_equal(ex_attack_alie(honest, 1, 2, 0.5, out, &err), FC_ERR_INVALID);
}

static void test_ipm_is_minus_eps_times_honest_mean(void **state) {
    (void)state;
    const float honest[4] = {1, -4, 3, 8}; /* mean (2, 2) */
    float out[2];
    fc_error err = {0};
    assert_int_equal(ex_attack_ipm(honest, 2, 2, 0.1, out, &err), FC_OK);
    assert_float_equal(out[0], -0.2, 1e-7);
    assert_float_equal(out[1], -0.2, 1e-7);
    assert_int_equal(ex_attack_ipm(honest, 0, 2, 0.1, out, &err), FC_ERR_INVALID);
}

static void test_noise_is_deterministic_and_scaled_normal(void **state) {
    (void)state;
    float a[4], b[4], c[4];
    ex_attack_noise(7, 4, 2.0, a);
    ex_attack_noise(7, 4, 2.0, b);
    ex_attack_noise(8, 4, 2.0, c);
    ex_rng r;
    ex_rng_seed(&r, 7);
    for (size_t j = 0; j < 4; j++) {
        assert_true(a[j] == b[j]);
        assert_true(a[j] == (float)(2.0 * ex_rng_normal(&r)));
    }
    assert_true(a[0] != c[0] || a[1] != c[1]);
}

static void test_label_flip_maps_y_to_nine_minus_y(void **state) {
    (void)state;
    assert_int_equal(ex_attack_flip_label(0), 9);
    assert_int_equal(ex_attack_flip_label(3), 6);
    assert_int_equal(ex_attack_flip_label(9), 0);
}

static void test_alie_default_z_follows_the_paper(void **state) {
    (void)state;
    double z;
    fc_error err = {0};
    /* n = 25, f = 5: s = 13 - 5 = 8, p = 12/20 = 0.6, z = 0.2533471031357998 (Python). */
    assert_int_equal(ex_alie_z(25, 5, &z, &err), FC_OK);
    assert_float_equal(z, 0.2533471031357998, 1e-12);
    /* n = 20, f = 4: s = 7, p = 9/16, z = 0.15731068461017067. */
    assert_int_equal(ex_alie_z(20, 4, &z, &err), FC_OK);
    assert_float_equal(z, 0.15731068461017067, 1e-12);
    assert_float_equal(ex_norm_quantile(0.01), -2.3263478740408408, 1e-12);
    assert_float_equal(ex_norm_quantile(0.999), 3.090232306167813, 1e-12);
    assert_true(isnan(ex_norm_quantile(0.0)));
    /* f = 10 of 20: s = 1, p = 9/10 still valid; f = 20 of 20 leaves no honest client. */
    assert_int_equal(ex_alie_z(20, 20, &z, &err), FC_ERR_INVALID);
}

static void test_attack_names_parse_and_unknown_is_config_error(void **state) {
    (void)state;
    ex_attack_kind k;
    fc_error err = {0};
    assert_int_equal(ex_attack_parse("ipm", &k, &err), FC_OK);
    assert_int_equal(k, EX_ATTACK_IPM);
    assert_string_equal(ex_attack_name(k), "ipm");
    assert_int_equal(ex_attack_parse("bogus", &k, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "bogus"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signflip_is_minus_c_times_own_delta),
        cmocka_unit_test(test_alie_is_mean_minus_z_times_unbiased_std),
        cmocka_unit_test(test_ipm_is_minus_eps_times_honest_mean),
        cmocka_unit_test(test_noise_is_deterministic_and_scaled_normal),
        cmocka_unit_test(test_label_flip_maps_y_to_nine_minus_y),
        cmocka_unit_test(test_alie_default_z_follows_the_paper),
        cmocka_unit_test(test_attack_names_parse_and_unknown_is_config_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
