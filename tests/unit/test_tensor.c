/* test_tensor.c: dtypes, overflow-checked sizes, models, and the exact f16/bf16 conversions.
 *
 * Expected conversion results come from the IEEE 754 definitions, computed independently with
 * ldexp (value = significand * 2^exponent), never from the functions under test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/tensor.h"

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- dtypes and sizes ---- */

static void test_dtype_sizes_names_and_parsing(void **state) {
    (void)state;
    assert_int_equal(fc_dtype_size(FC_DTYPE_F32), 4);
    assert_int_equal(fc_dtype_size(FC_DTYPE_F16), 2);
    assert_int_equal(fc_dtype_size(FC_DTYPE_BF16), 2);
    assert_int_equal(fc_dtype_size(FC_DTYPE_F64), 8);
    assert_int_equal(fc_dtype_size(FC_DTYPE_INVALID), 0);
    assert_int_equal(fc_dtype_size((fc_dtype)77), 0);
    /* Wire and database numbers are stable. */
    assert_int_equal(FC_DTYPE_F32, 1);
    assert_int_equal(FC_DTYPE_F16, 2);
    assert_int_equal(FC_DTYPE_BF16, 3);
    assert_int_equal(FC_DTYPE_F64, 4);
    assert_string_equal(fc_dtype_name(FC_DTYPE_BF16), "bf16");
    assert_string_equal(fc_dtype_name((fc_dtype)77), "invalid");
    assert_string_equal(fc_dtype_st_name(FC_DTYPE_BF16), "BF16");
    assert_null(fc_dtype_st_name(FC_DTYPE_INVALID));
    const fc_dtype all[4] = {FC_DTYPE_F32, FC_DTYPE_F16, FC_DTYPE_BF16, FC_DTYPE_F64};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(fc_dtype_parse(fc_dtype_name(all[i])), all[i]);
        assert_int_equal(fc_dtype_parse(fc_dtype_st_name(all[i])), all[i]);
    }
    assert_int_equal(fc_dtype_parse("I64"), FC_DTYPE_INVALID);
    assert_int_equal(fc_dtype_parse(""), FC_DTYPE_INVALID);
    assert_int_equal(fc_dtype_parse("F32 "), FC_DTYPE_INVALID);
    assert_int_equal(fc_dtype_parse("Bf16"), FC_DTYPE_INVALID);
}

static void test_shape_sizes_are_overflow_checked(void **state) {
    (void)state;
    uint64_t n = 99;
    assert_int_equal(fc_shape_numel(0, NULL, &n), FC_OK);
    assert_int_equal(n, 1); /* a scalar has one element */
    const uint64_t s3[3] = {2, 3, 4};
    assert_int_equal(fc_shape_numel(3, s3, &n), FC_OK);
    assert_int_equal(n, 24);
    const uint64_t zero_big[2] = {0, UINT64_MAX};
    assert_int_equal(fc_shape_numel(2, zero_big, &n), FC_OK);
    assert_int_equal(n, 0);
    const uint64_t max1[2] = {UINT64_MAX, 1};
    assert_int_equal(fc_shape_numel(2, max1, &n), FC_OK);
    assert_true(n == UINT64_MAX);
    const uint64_t over[2] = {4294967296ull, 4294967296ull};
    assert_int_equal(fc_shape_numel(2, over, &n), FC_ERR_OVERFLOW);
    const uint64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    assert_int_equal(fc_shape_numel(9, nine, &n), FC_ERR_INVALID);

    fc_tensor_spec s = {.name = "t", .dtype = FC_DTYPE_F32, .ndim = 1, .shape = {1ull << 61}};
    assert_int_equal(fc_spec_nbytes(&s, &n), FC_OK);
    assert_true(n == 1ull << 63);
    s.shape[0] = 1ull << 62; /* 2^62 elements fit, 2^64 bytes do not */
    assert_int_equal(fc_spec_numel(&s, &n), FC_OK);
    assert_int_equal(fc_spec_nbytes(&s, &n), FC_ERR_OVERFLOW);
    s.dtype = FC_DTYPE_INVALID;
    assert_int_equal(fc_spec_nbytes(&s, &n), FC_ERR_DTYPE);
    s.dtype = FC_DTYPE_F64;
    s.ndim = 0;
    assert_int_equal(fc_spec_nbytes(&s, &n), FC_OK);
    assert_int_equal(n, 8);
}

static void test_shape_format_is_bounded(void **state) {
    (void)state;
    char buf[64];
    const uint64_t s[2] = {64, 10};
    assert_string_equal(fc_shape_format(2, s, buf, sizeof buf), "[64,10]");
    assert_string_equal(fc_shape_format(0, NULL, buf, sizeof buf), "[]");
    const uint64_t big[1] = {UINT64_MAX};
    assert_string_equal(fc_shape_format(1, big, buf, sizeof buf), "[18446744073709551615]");
    char small[4];
    memset(small, 'x', sizeof small);
    fc_shape_format(2, s, small, sizeof small);
    assert_string_equal(small, "[64"); /* truncated, still terminated */
    char one[1] = {'x'};
    fc_shape_format(2, s, one, 1);
    assert_int_equal(one[0], '\0');
}

static void test_same_layout_compares_dtype_and_shape_only(void **state) {
    (void)state;
    fc_tensor_spec a = {.name = "a", .dtype = FC_DTYPE_F32, .ndim = 2, .shape = {3, 4}};
    fc_tensor_spec b = a;
    b.name = "b";
    assert_true(fc_spec_same_layout(&a, &b));
    b.shape[1] = 5;
    assert_false(fc_spec_same_layout(&a, &b));
    b = a;
    b.dtype = FC_DTYPE_F16;
    assert_false(fc_spec_same_layout(&a, &b));
    b = a;
    b.ndim = 1;
    assert_false(fc_spec_same_layout(&a, &b));
}

/* ---- models ---- */

static void test_model_add_find_and_reject_duplicates(void **state) {
    (void)state;
    fc_model m = FC_MODEL_INIT;
    fc_error err = {0};
    const uint64_t s[2] = {2, 3};
    float v[6] = {1, 2, 3, 4, 5, 6};
    assert_int_equal(fc_model_add(&m, "fc1.weight", FC_DTYPE_F32, 2, s, v, &err), FC_OK);
    v[0] = 100; /* the model holds a copy */
    assert_true(((float *)m.tensors[0].data)[0] == 1.0f);
    assert_int_equal(m.tensors[0].nbytes, 24);
    assert_int_equal(m.tensors[0].owns_data, 1);
    assert_int_equal(fc_model_add(&m, "zeros", FC_DTYPE_F64, 1, s, NULL, &err), FC_OK);
    for (int i = 0; i < 2; i++)
        assert_true(((double *)m.tensors[1].data)[i] == 0.0);
    assert_int_equal(fc_model_add_borrowed(&m, "borrowed", FC_DTYPE_F32, 2, s, v, &err), FC_OK);
    assert_ptr_equal(m.tensors[2].data, v);
    assert_int_equal(m.tensors[2].owns_data, 0);

    assert_int_equal(fc_model_find(&m, "zeros"), 1);
    assert_int_equal(fc_model_find(&m, "missing"), -1);

    assert_int_equal(fc_model_add(&m, "zeros", FC_DTYPE_F32, 1, s, NULL, &err), FC_ERR_EXISTS);
    assert_string_equal(err.msg, "duplicate tensor name 'zeros'");
    assert_int_equal(fc_model_add_borrowed(&m, "fc1.weight", FC_DTYPE_F32, 1, s, v, &err),
                     FC_ERR_EXISTS);
    assert_int_equal(fc_model_add(&m, "", FC_DTYPE_F32, 1, s, NULL, &err), FC_ERR_INVALID);
    assert_int_equal(fc_model_add(&m, NULL, FC_DTYPE_F32, 1, s, NULL, &err), FC_ERR_INVALID);
    char longname[FC_MAX_TENSOR_NAME + 2];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(fc_model_add(&m, longname, FC_DTYPE_F32, 1, s, NULL, &err), FC_ERR_INVALID);
    longname[FC_MAX_TENSOR_NAME] = '\0'; /* exactly the limit is fine */
    assert_int_equal(fc_model_add(&m, longname, FC_DTYPE_F32, 0, NULL, NULL, &err), FC_OK);
    assert_int_equal(fc_model_add(&m, "bad", (fc_dtype)9, 1, s, NULL, &err), FC_ERR_DTYPE);
    assert_non_null(strstr(err.msg, "'bad': invalid dtype 9"));
    assert_int_equal(fc_model_add(&m, "bad", FC_DTYPE_F32, 9, s, NULL, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "9 dimensions"));
    const uint64_t huge[2] = {1ull << 62, 4};
    assert_int_equal(fc_model_add(&m, "bad", FC_DTYPE_F32, 2, huge, NULL, &err), FC_ERR_OVERFLOW);
    assert_int_equal(m.count, 4); /* failures added nothing */

    uint64_t numel, nbytes;
    assert_int_equal(fc_model_numel(&m, &numel), FC_OK);
    assert_int_equal(numel, 6 + 2 + 6 + 1);
    assert_int_equal(fc_model_nbytes(&m, &nbytes), FC_OK);
    assert_int_equal(nbytes, 24 + 16 + 24 + 4);
    fc_model_free(&m);
    assert_int_equal(m.count, 0);
    assert_null(m.tensors);
    fc_model_free(&m); /* idempotent */
}

static void test_model_grows_and_keeps_order(void **state) {
    (void)state;
    fc_model m = FC_MODEL_INIT;
    char name[16];
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof name, "t%03d", i);
        const uint64_t s[1] = {(uint64_t)i};
        assert_int_equal(fc_model_add(&m, name, FC_DTYPE_F16, 1, s, NULL, NULL), FC_OK);
    }
    assert_int_equal(m.count, 100);
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof name, "t%03d", i);
        assert_int_equal(fc_model_find(&m, name), i);
        assert_int_equal(m.tensors[i].nbytes, 2 * i);
    }
    fc_model_free(&m);
}

static void test_model_add_survives_every_allocation_failure(void **state) {
    (void)state;
    const uint64_t s[1] = {4};
    for (long n = 0; n < 100; n++) {
        fc_model m = FC_MODEL_INIT;
        fc_error err = {0};
        fc_status st = FC_OK;
        fc_alloc_fail_after(n);
        for (int i = 0; i < 12 && st == FC_OK; i++) {
            char name[16];
            snprintf(name, sizeof name, "t%d", i);
            st = fc_model_add(&m, name, FC_DTYPE_F32, 1, s, NULL, &err);
        }
        fc_alloc_fail_after(-1);
        if (st != FC_OK) {
            assert_int_equal(st, FC_ERR_NOMEM);
            assert_non_null(strstr(err.msg, "out of memory"));
        }
        for (size_t i = 0; i < m.count; i++)
            assert_non_null(m.tensors[i].data);
        fc_model_free(&m);
    }
}

static void test_check_layout_names_the_difference(void **state) {
    (void)state;
    fc_model a = FC_MODEL_INIT, b = FC_MODEL_INIT;
    fc_error err = {0};
    const uint64_t s23[2] = {2, 3}, s32[2] = {3, 2}, s6[1] = {6};
    assert_int_equal(fc_model_add(&a, "w", FC_DTYPE_F32, 2, s23, NULL, &err), FC_OK);
    assert_int_equal(fc_model_add(&a, "b", FC_DTYPE_F32, 1, s6, NULL, &err), FC_OK);

    assert_int_equal(fc_model_add(&b, "w", FC_DTYPE_F32, 2, s23, NULL, &err), FC_OK);
    assert_int_equal(fc_model_check_layout(&a, &b, 0, &err), FC_ERR_SHAPE);
    assert_string_equal(err.msg, "model has 1 tensors, expected 2");
    fc_model_free(&b);

    assert_int_equal(fc_model_add(&b, "b", FC_DTYPE_F32, 1, s6, NULL, &err), FC_OK);
    assert_int_equal(fc_model_add(&b, "w", FC_DTYPE_F32, 2, s23, NULL, &err), FC_OK);
    assert_int_equal(fc_model_check_layout(&a, &b, 0, &err), FC_ERR_SHAPE);
    assert_string_equal(err.msg, "tensor 0 is named 'b', expected 'w'");
    fc_model_free(&b);

    assert_int_equal(fc_model_add(&b, "w", FC_DTYPE_F16, 2, s23, NULL, &err), FC_OK);
    assert_int_equal(fc_model_add(&b, "b", FC_DTYPE_F32, 1, s6, NULL, &err), FC_OK);
    assert_int_equal(fc_model_check_layout(&a, &b, 0, &err), FC_ERR_SHAPE);
    assert_string_equal(err.msg, "tensor 'w' has dtype f16, expected f32");
    assert_int_equal(fc_model_check_layout(&a, &b, 1, &err), FC_OK); /* ignore_dtype */
    fc_model_free(&b);

    assert_int_equal(fc_model_add(&b, "w", FC_DTYPE_F32, 2, s32, NULL, &err), FC_OK);
    assert_int_equal(fc_model_add(&b, "b", FC_DTYPE_F32, 1, s6, NULL, &err), FC_OK);
    assert_int_equal(fc_model_check_layout(&a, &b, 1, &err), FC_ERR_SHAPE);
    assert_string_equal(err.msg, "tensor 'w' has shape [3,2], expected [2,3]");
    fc_model_free(&b);

    assert_int_equal(fc_model_add(&b, "w", FC_DTYPE_F32, 1, s6, NULL, &err), FC_OK);
    assert_int_equal(fc_model_add(&b, "b", FC_DTYPE_F32, 1, s6, NULL, &err), FC_OK);
    assert_int_equal(fc_model_check_layout(&a, &b, 0, &err), FC_ERR_SHAPE);
    assert_string_equal(err.msg, "tensor 'w' has shape [6], expected [2,3]");
    fc_model_free(&b);

    assert_int_equal(fc_model_check_layout(&a, &a, 0, &err), FC_OK);
    fc_model_free(&a);
}

/* ---- conversions ---- */

/* IEEE binary16: 1 sign, 5 exponent (bias 15), 10 fraction bits. */
static float f16_reference(uint16_t h) {
    int sign = h >> 15, exp = (h >> 10) & 31, frac = h & 1023;
    double v;
    if (exp == 31)
        return float_of((sign ? 0x80000000u : 0) | 0x7f800000u | ((uint32_t)frac << 13));
    if (exp == 0)
        v = ldexp(frac, -24); /* subnormal: frac * 2^(1-15-10) */
    else
        v = ldexp(1024 + frac, exp - 25); /* (1 + frac/2^10) * 2^(exp-15) */
    return (float)(sign ? -v : v); /* exact: 11 significant bits fit in 24 */
}

/* bfloat16: 1 sign, 8 exponent (bias 127), 7 fraction bits. */
static float bf16_reference(uint16_t h) {
    int sign = h >> 15, exp = (h >> 7) & 255, frac = h & 127;
    double v;
    if (exp == 255)
        return float_of((sign ? 0x80000000u : 0) | 0x7f800000u | ((uint32_t)frac << 16));
    if (exp == 0)
        v = ldexp(frac, -133); /* subnormal: frac * 2^(1-127-7) */
    else
        v = ldexp(128 + frac, exp - 134);
    return (float)(sign ? -v : v);
}

static void test_every_f16_widens_exactly(void **state) {
    (void)state;
    for (uint32_t h = 0; h <= 0xffff; h++) {
        uint32_t got = bits_of(fc_f16_to_f32((uint16_t)h));
        uint32_t want = bits_of(f16_reference((uint16_t)h));
        if (got != want)
            fail_msg("f16 0x%04x widened to 0x%08x, expected 0x%08x", h, got, want);
    }
    /* A few by value, as anchors for the reference itself. */
    assert_true(fc_f16_to_f32(0x3c00) == 1.0f);
    assert_true(fc_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(fc_f16_to_f32(0x0001) == 5.9604644775390625e-08f);
    assert_true(fc_f16_to_f32(0x0400) == 6.103515625e-05f);
    assert_true(fc_f16_to_f32(0xc000) == -2.0f);
    assert_true(isinf(fc_f16_to_f32(0xfc00)) && fc_f16_to_f32(0xfc00) < 0);
    assert_true(isnan(fc_f16_to_f32(0x7e00)));
    assert_int_equal(bits_of(fc_f16_to_f32(0x8000)), 0x80000000u);
}

static void test_every_bf16_widens_exactly(void **state) {
    (void)state;
    for (uint32_t h = 0; h <= 0xffff; h++) {
        uint32_t got = bits_of(fc_bf16_to_f32((uint16_t)h));
        uint32_t want = bits_of(bf16_reference((uint16_t)h));
        if (got != want)
            fail_msg("bf16 0x%04x widened to 0x%08x, expected 0x%08x", h, got, want);
    }
    assert_true(fc_bf16_to_f32(0x3f80) == 1.0f);
    assert_true(fc_bf16_to_f32(0xbe20) == -0.15625f);
}

static int f16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }
static int bf16_is_nan(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0; }

static void test_f32_to_f16_rounds_to_nearest_even(void **state) {
    (void)state;
    static const struct {
        float in;
        uint16_t out;
    } cases[] = {
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {1.0f, 0x3c00},
        {-1.0f, 0xbc00},
        {65504.0f, 0x7bff},             /* largest half */
        {65519.99609375f, 0x7bff},      /* just below the midpoint to infinity */
        {65520.0f, 0x7c00},             /* midpoint: ties to even, which is infinity */
        {-65520.0f, 0xfc00},
        {1e6f, 0x7c00},
        {0x1p-24f, 0x0001},             /* smallest subnormal */
        {0x1p-25f, 0x0000},             /* half of it: tie, even is 0 */
        {0x1.000002p-25f, 0x0001},      /* just above the tie */
        {0x1.8p-24f, 0x0002},           /* 1.5 * smallest: tie between 1 and 2, even is 2 */
        {0x1.4p-23f, 0x0002},           /* 2.5 * smallest: tie between 2 and 3, even is 2 */
        {0x1.ff8p-15f, 0x03ff},         /* 1023 * 2^-24, largest subnormal */
        {0x1.ffcp-15f, 0x0400},         /* 1023.5 * 2^-24: tie, rounds up to smallest normal */
        {0x1p-14f, 0x0400},             /* smallest normal */
        {0x1.002p0f, 0x3c00},           /* 1 + 2^-11: tie between 0x3c00 and 0x3c01, even */
        {0x1.006p0f, 0x3c02},           /* 1 + 3*2^-11: tie between 0x3c01 and 0x3c02, even */
        {0x1.002002p0f, 0x3c01},        /* just above the first tie */
        {0x1.001ffep0f, 0x3c00},        /* just below it */
        {0x1.ffep0f, 0x4000},           /* 2 - 2^-11: tie, rounds up across the exponent */
        {0x1p-30f, 0x0000},             /* far below the smallest subnormal */
        {-0x1p-24f, 0x8001},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = fc_f32_to_f16(cases[i].in);
        if (got != cases[i].out)
            fail_msg("f32 %a narrowed to 0x%04x, expected 0x%04x", (double)cases[i].in, got,
                     cases[i].out);
    }
    assert_int_equal(fc_f32_to_f16(INFINITY), 0x7c00);
    assert_int_equal(fc_f32_to_f16(-INFINITY), 0xfc00);
    /* NaN stays NaN, whatever the payload, and keeps its sign. */
    const uint32_t nans[4] = {0x7fc00000u, 0x7f800001u, 0xffffffffu, 0x7f802000u};
    for (int i = 0; i < 4; i++) {
        uint16_t h = fc_f32_to_f16(float_of(nans[i]));
        assert_true(f16_is_nan(h));
        assert_int_equal(h >> 15, nans[i] >> 31);
    }
    /* Every finite half survives a round trip, and every midpoint between neighbours rounds to
     * the even one (just below goes down, just above goes up). Midpoints of halves have 12
     * significant bits, so they are exact in f32. */
    for (uint32_t h = 0; h < 0x7c00; h++) {
        assert_int_equal(fc_f32_to_f16(f16_reference((uint16_t)h)), h);
        assert_int_equal(fc_f32_to_f16(f16_reference((uint16_t)(h | 0x8000))), h | 0x8000);
        double lo = f16_reference((uint16_t)h);
        double hi = h + 1 < 0x7c00 ? (double)f16_reference((uint16_t)(h + 1)) : 65536.0;
        float mid = (float)((lo + hi) / 2);
        assert_true((double)mid == (lo + hi) / 2);
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        uint16_t got = fc_f32_to_f16(mid);
        if (got != even)
            fail_msg("midpoint %a of 0x%04x and next narrowed to 0x%04x, expected 0x%04x",
                     (double)mid, h, got, even);
        assert_int_equal(fc_f32_to_f16(nextafterf(mid, 0.0f)), h);
        assert_int_equal(fc_f32_to_f16(nextafterf(mid, INFINITY)), h + 1);
    }
}

static void test_f32_to_bf16_rounds_to_nearest_even(void **state) {
    (void)state;
    static const struct {
        uint32_t in;
        uint16_t out;
    } cases[] = {
        {0x3f800000u, 0x3f80}, /* 1.0 */
        {0x3f808000u, 0x3f80}, /* 1 + 2^-8: tie, even */
        {0x3f818000u, 0x3f82}, /* 1 + 3*2^-8: tie, even is up */
        {0x3f808001u, 0x3f81}, /* just above the tie */
        {0x3f807fffu, 0x3f80}, /* just below */
        {0x7f7f7fffu, 0x7f7f}, /* below the midpoint to infinity */
        {0x7f7f8000u, 0x7f80}, /* midpoint: even is infinity */
        {0x7f7fffffu, 0x7f80}, /* FLT_MAX rounds to infinity */
        {0xff7fffffu, 0xff80},
        {0x7f800000u, 0x7f80}, /* infinity */
        {0x80000000u, 0x8000}, /* -0 */
        {0x00000001u, 0x0000}, /* tiny subnormal */
        {0x00008000u, 0x0000}, /* subnormal tie, even is 0 */
        {0x00018000u, 0x0002}, /* subnormal tie between 1 and 2 */
        {0x007fffffu, 0x0080}, /* largest f32 subnormal rounds up to smallest bf16 normal */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = fc_f32_to_bf16(float_of(cases[i].in));
        if (got != cases[i].out)
            fail_msg("f32 0x%08x narrowed to bf16 0x%04x, expected 0x%04x", cases[i].in, got,
                     cases[i].out);
    }
    /* NaN stays NaN even when its payload lives only in the low 16 bits (truncation would give
     * infinity). */
    const uint32_t nans[4] = {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fff0000u};
    for (int i = 0; i < 4; i++) {
        uint16_t h = fc_f32_to_bf16(float_of(nans[i]));
        assert_true(bf16_is_nan(h));
        assert_int_equal(h >> 15, nans[i] >> 31);
    }
    /* Every finite bf16 survives a round trip; every midpoint goes to the even neighbour. */
    for (uint32_t h = 0; h < 0x7f80; h++) {
        assert_int_equal(fc_f32_to_bf16(bf16_reference((uint16_t)h)), h);
        assert_int_equal(fc_f32_to_bf16(bf16_reference((uint16_t)(h | 0x8000))), h | 0x8000);
        uint32_t mid = (h << 16) | 0x8000u;
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        assert_int_equal(fc_f32_to_bf16(float_of(mid)), even);
        assert_int_equal(fc_f32_to_bf16(float_of(mid - 1)), h);
        assert_int_equal(fc_f32_to_bf16(float_of(mid + 1)), h + 1);
    }
}

static void test_buffer_conversions_read_little_endian(void **state) {
    (void)state;
    float out[3];
    double dout[3];
    const uint8_t f16[6] = {0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00}; /* 1, -2, 2^-24 */
    assert_int_equal(fc_convert_to_f32(FC_DTYPE_F16, f16, 3, out), FC_OK);
    assert_true(out[0] == 1.0f && out[1] == -2.0f && out[2] == 0x1p-24f);
    assert_int_equal(fc_convert_to_f64(FC_DTYPE_F16, f16, 3, dout), FC_OK);
    assert_true(dout[0] == 1.0 && dout[1] == -2.0 && dout[2] == 0x1p-24);
    const uint8_t bf16[4] = {0x80, 0x3f, 0x20, 0xbe}; /* 1, -0.15625 */
    assert_int_equal(fc_convert_to_f32(FC_DTYPE_BF16, bf16, 2, out), FC_OK);
    assert_true(out[0] == 1.0f && out[1] == -0.15625f);
    assert_int_equal(fc_convert_to_f64(FC_DTYPE_BF16, bf16, 2, dout), FC_OK);
    assert_true(dout[1] == -0.15625);
    const uint8_t f32[4] = {0x00, 0x00, 0x40, 0xbf}; /* -0.75 */
    assert_int_equal(fc_convert_to_f32(FC_DTYPE_F32, f32, 1, out), FC_OK);
    assert_true(out[0] == -0.75f);
    assert_int_equal(fc_convert_to_f64(FC_DTYPE_F32, f32, 1, dout), FC_OK);
    assert_true(dout[0] == -0.75);
    const uint8_t f64[8] = {0x9a, 0x99, 0x99, 0x99, 0x99, 0x99, 0xb9, 0x3f}; /* 0.1 */
    assert_int_equal(fc_convert_to_f64(FC_DTYPE_F64, f64, 1, dout), FC_OK);
    assert_true(dout[0] == 0.1);
    assert_int_equal(fc_convert_to_f32(FC_DTYPE_F64, f64, 1, out), FC_OK);
    assert_true(out[0] == 0x1.99999ap-4f); /* 0.1 rounded to nearest f32 */
    assert_int_equal(fc_convert_to_f32(FC_DTYPE_INVALID, f64, 1, out), FC_ERR_DTYPE);
    assert_int_equal(fc_convert_to_f64(FC_DTYPE_INVALID, f64, 1, dout), FC_ERR_DTYPE);

    const float src[3] = {1.0f, 65520.0f, 0x1.002p0f};
    uint8_t bytes[24];
    assert_int_equal(fc_convert_from_f32(FC_DTYPE_F16, src, 3, bytes), FC_OK);
    const uint8_t want16[6] = {0x00, 0x3c, 0x00, 0x7c, 0x00, 0x3c};
    assert_memory_equal(bytes, want16, 6);
    assert_int_equal(fc_convert_from_f32(FC_DTYPE_BF16, src, 1, bytes), FC_OK);
    assert_int_equal(bytes[0], 0x80);
    assert_int_equal(bytes[1], 0x3f);
    assert_int_equal(fc_convert_from_f32(FC_DTYPE_F64, src, 3, bytes), FC_OK);
    assert_int_equal(fc_convert_to_f32(FC_DTYPE_F64, bytes, 3, out), FC_OK);
    assert_memory_equal(out, src, sizeof src);
    assert_int_equal(fc_convert_from_f32(FC_DTYPE_F32, src, 3, bytes), FC_OK);
    assert_memory_equal(bytes, src, 12);
    assert_int_equal(fc_convert_from_f32(FC_DTYPE_INVALID, src, 3, bytes), FC_ERR_DTYPE);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_sizes_names_and_parsing),
        cmocka_unit_test(test_shape_sizes_are_overflow_checked),
        cmocka_unit_test(test_shape_format_is_bounded),
        cmocka_unit_test(test_same_layout_compares_dtype_and_shape_only),
        cmocka_unit_test(test_model_add_find_and_reject_duplicates),
        cmocka_unit_test(test_model_grows_and_keeps_order),
        cmocka_unit_test(test_model_add_survives_every_allocation_failure),
        cmocka_unit_test(test_check_layout_names_the_difference),
        cmocka_unit_test(test_every_f16_widens_exactly),
        cmocka_unit_test(test_every_bf16_widens_exactly),
        cmocka_unit_test(test_f32_to_f16_rounds_to_nearest_even),
        cmocka_unit_test(test_f32_to_bf16_rounds_to_nearest_even),
        cmocka_unit_test(test_buffer_conversions_read_little_endian),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
