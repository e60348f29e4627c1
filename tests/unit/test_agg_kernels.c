/* test_agg_kernels.c: the numeric kernels, per dtype, against values worked out by hand. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "aggregators/kernels.h"
#include "core/tensor.h"

static void test_finiteness_is_detected_in_every_dtype(void **state) {
    (void)state;
    float f[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    double d[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    uint16_t h[9] = {0x3c00, 0x7bff, 0xfbff, 0x0001, 0x8000, 0, 0, 0, 0}; /* max, -max, subnormal */
    uint16_t b[9] = {0x3f80, 0x7f7f, 0xff7f, 0x0001, 0, 0, 0, 0, 0};
    assert_true(agg_k_all_finite(FC_DTYPE_F32, f, 9));
    assert_true(agg_k_all_finite(FC_DTYPE_F64, d, 9));
    assert_true(agg_k_all_finite(FC_DTYPE_F16, h, 9));
    assert_true(agg_k_all_finite(FC_DTYPE_BF16, b, 9));
    f[8] = NAN;
    assert_false(agg_k_all_finite(FC_DTYPE_F32, f, 9));
    assert_true(agg_k_all_finite(FC_DTYPE_F32, f, 8)); /* only n elements are read */
    f[8] = -INFINITY;
    assert_false(agg_k_all_finite(FC_DTYPE_F32, f, 9));
    d[0] = INFINITY;
    assert_false(agg_k_all_finite(FC_DTYPE_F64, d, 9));
    h[5] = 0x7c00; /* +inf */
    assert_false(agg_k_all_finite(FC_DTYPE_F16, h, 9));
    h[5] = 0xfe00; /* nan */
    assert_false(agg_k_all_finite(FC_DTYPE_F16, h, 9));
    b[7] = 0xff80; /* -inf */
    assert_false(agg_k_all_finite(FC_DTYPE_BF16, b, 9));
    b[7] = 0x7fc1; /* nan */
    assert_false(agg_k_all_finite(FC_DTYPE_BF16, b, 9));
}

/* The kernels run blocks of 8 plus a scalar tail: a non-finite value is found at every position,
 * in the blocks and in the tail, for every dtype; folds agree with a plain loop at every n. */
static void test_blocked_kernels_cover_every_position(void **state) {
    (void)state;
    enum { N = 21 };
    for (size_t pos = 0; pos < N; pos++) {
        float f[N];
        double d[N];
        uint16_t h[N], b[N];
        for (size_t i = 0; i < N; i++) {
            f[i] = (float)i;
            d[i] = (double)i;
            h[i] = 0x3c00;
            b[i] = 0x3f80;
        }
        f[pos] = INFINITY;
        d[pos] = NAN;
        h[pos] = 0xfc00;
        b[pos] = 0x7f81;
        assert_false(agg_k_all_finite(FC_DTYPE_F32, f, N));
        assert_false(agg_k_all_finite(FC_DTYPE_F64, d, N));
        assert_false(agg_k_all_finite(FC_DTYPE_F16, h, N));
        assert_false(agg_k_all_finite(FC_DTYPE_BF16, b, N));
        assert_true(agg_k_all_finite(FC_DTYPE_F32, f, pos));
        assert_true(agg_k_all_finite(FC_DTYPE_F64, d, pos));
    }
    for (size_t n = 0; n <= N; n++) {
        float x[N];
        double acc[N], want[N];
        for (size_t i = 0; i < N; i++) {
            x[i] = (float)i * 0.37f - 3.0f;
            acc[i] = want[i] = (double)i;
        }
        agg_k_fold_f32(acc, x, 1.5, n);
        for (size_t i = 0; i < n; i++)
            want[i] += 1.5 * (double)x[i];
        assert_memory_equal(acc, want, sizeof acc);
    }
}

static void test_fold_accumulates_weighted_values_per_dtype(void **state) {
    (void)state;
    static const float f[3] = {1.5f, -2, 0.25f};
    static const double d[3] = {0.1, 0.2, 0.3};
    static const uint16_t h[3] = {0x3c00, 0xc200, 0x0001}; /* 1, -3, 2^-24 */
    static const uint16_t b[3] = {0x3f80, 0xc040, 0x0001}; /* 1, -3, 2^-133 */
    double acc[3] = {1, 1, 1};
    agg_k_fold(FC_DTYPE_F32, acc, f, 2.0, 3);
    assert_true(acc[0] == 4.0 && acc[1] == -3.0 && acc[2] == 1.5);
    agg_k_fold(FC_DTYPE_F64, acc, d, 10.0, 3);
    assert_true(acc[0] == 4.0 + 10 * 0.1 && acc[1] == -3.0 + 10 * 0.2);
    double acc2[3] = {0, 0, 0};
    agg_k_fold(FC_DTYPE_F16, acc2, h, 0.5, 3);
    assert_true(acc2[0] == 0.5 && acc2[1] == -1.5 && acc2[2] == 0x1p-25);
    double acc3[3] = {0, 0, 0};
    agg_k_fold(FC_DTYPE_BF16, acc3, b, 4.0, 3);
    assert_true(acc3[0] == 4.0 && acc3[1] == -12.0 && acc3[2] == 0x1p-131);
}

static void test_f16_conversion_is_exact_for_all_finite_values(void **state) {
    (void)state;
    for (uint32_t x = 0; x < 0x10000; x++) {
        uint16_t h = (uint16_t)x;
        if ((h & 0x7c00) == 0x7c00)
            continue;
        assert_true(agg_k_f16_to_f64(h) == (double)fc_f16_to_f32(h));
    }
}

/* Explicit differences: 1e8+1 vs 1e8 is exactly 1 apart per element. */
static void test_distance_uses_explicit_differences(void **state) {
    (void)state;
    double a[20], b[20];
    float fa[20];
    for (int i = 0; i < 20; i++) {
        a[i] = 1e8 + 1;
        b[i] = 1e8;
        fa[i] = 16777216.0f + 2.0f; /* 2^24 + 2 */
    }
    assert_true(agg_k_sqdist_f64(a, b, 20) == 20.0);
    double v[20];
    for (int i = 0; i < 20; i++)
        v[i] = 16777216.0;
    assert_true(agg_k_sqdist_dt_f64(FC_DTYPE_F32, fa, v, 20) == 80.0);
    assert_true(agg_k_sqnorm_f64(b, 20) == 20 * 1e16);
    static const uint16_t h[3] = {0x4000, 0x3c00, 0xbc00}; /* 2, 1, -1 */
    assert_true(agg_k_sqnorm(FC_DTYPE_F16, h, 3) == 6.0);
    static const float f3[3] = {3, 4, 12};
    assert_true(agg_k_sqnorm(FC_DTYPE_F32, f3, 3) == 169.0);
}

static void test_fold_diff_scale_and_conversions(void **state) {
    (void)state;
    static const float x[2] = {3, 5};
    static const double v[2] = {1, 1};
    double acc[2] = {0, 0};
    agg_k_fold_diff(FC_DTYPE_F32, acc, x, v, 0.5, 2);
    assert_true(acc[0] == 1.0 && acc[1] == 2.0);
    agg_k_scale(acc, 3, 2);
    assert_true(acc[0] == 3.0 && acc[1] == 6.0);
    static const uint16_t b[2] = {0x4040, 0xbf80}; /* 3, -1 */
    double out[2];
    agg_k_to_f64(FC_DTYPE_BF16, b, out, 2);
    assert_true(out[0] == 3.0 && out[1] == -1.0);
    float f[2];
    const double src[2] = {0.1, 1e40};
    agg_k_f64_to_f32(f, src, 2);
    assert_true(f[0] == 0.1f && isinf(f[1]));
    assert_true(agg_k_dtype_ok(FC_DTYPE_BF16));
    assert_false(agg_k_dtype_ok(FC_DTYPE_INVALID));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_finiteness_is_detected_in_every_dtype),
        cmocka_unit_test(test_blocked_kernels_cover_every_position),
        cmocka_unit_test(test_fold_accumulates_weighted_values_per_dtype),
        cmocka_unit_test(test_f16_conversion_is_exact_for_all_finite_values),
        cmocka_unit_test(test_distance_uses_explicit_differences),
        cmocka_unit_test(test_fold_diff_scale_and_conversions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
