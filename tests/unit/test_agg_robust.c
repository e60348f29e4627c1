/* test_agg_robust.c: the retaining rules (median, trimmed_mean, krum, multikrum, bulyan, geomed,
 * ida) run through the round driver. Expected values are worked out by hand in the comments or
 * come from tests/unit/robust_expected.py (standard-library Python, straight from the
 * definitions); larger cases are checked against a naive per-column sort written here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "aggregators/agg.h"
#include "core/alloc.h"
#include "core/tensor.h"
#include "tests/lib/agg_testutil.h"

#define MAXN 128

/* A set of f32 (or other dtype) updates with ids 1..n and weight 1, built from doubles. */
typedef struct upset {
    size_t n, dim;
    agg_update u[MAXN];
    void *data[MAXN];
} upset;

static void upset_make(upset *s, fc_dtype dt, size_t n, size_t dim, const double *vals) {
    assert_true(n <= MAXN);
    memset(s, 0, sizeof *s);
    s->n = n;
    s->dim = dim;
    for (size_t i = 0; i < n; i++) {
        size_t es = fc_dtype_size(dt);
        s->data[i] = malloc(dim * es);
        assert_non_null(s->data[i]);
        for (size_t j = 0; j < dim; j++) {
            double v = vals[i * dim + j];
            unsigned char *p = (unsigned char *)s->data[i] + j * es;
            if (dt == FC_DTYPE_F64) {
                memcpy(p, &v, 8);
            } else {
                float f = (float)v;
                if (dt == FC_DTYPE_F32) {
                    memcpy(p, &f, 4);
                } else {
                    uint16_t h = dt == FC_DTYPE_F16 ? fc_f32_to_f16(f) : fc_f32_to_bf16(f);
                    memcpy(p, &h, 2);
                }
            }
        }
        s->u[i].client_id = (uint64_t)(i + 1);
        s->u[i].dtype = dt;
        s->u[i].data = s->data[i];
        s->u[i].weight = 1.0;
    }
}

static void upset_free(upset *s) {
    for (size_t i = 0; i < s->n; i++)
        free(s->data[i]);
}

static agg_context ctx_of(size_t dim) {
    agg_context c = {0};
    c.dim = dim;
    c.spool_dir = getenv("FC_TEST_TMPDIR");
    return c;
}

/* Runs rule name over s (in index order) and returns the status; D has dim doubles. */
static fc_status run(const char *name, const char *const *kv, const upset *s, double *D,
                     agg_report *rep, fc_error *err) {
    agg_context c = ctx_of(s->dim);
    return agg_test_round(name, kv, &c, s->u, s->n, NULL, 0, D, rep, NULL, err);
}

static void expect_vec(const double *D, const double *want, size_t n, double tol) {
    for (size_t j = 0; j < n; j++) {
        if (!agg_test_close(D[j], want[j], tol))
            fail_msg("coordinate %zu: got %.17g, want %.17g", j, D[j], want[j]);
    }
}

/* Five 3-d updates used by several tests. Columns, sorted:
 *   col0: -4 1 2 3 10   col1: -2 0 1 2 7   col2: -1 0 5 5 5 */
static const double five[5 * 3] = {
    1, -2, 5, /**/ 3, 0, 5, /**/ 2, 7, -1, /**/ 10, 1, 0, /**/ -4, 2, 5,
};

static void test_median_odd_n_is_middle_value(void **state) {
    (void)state;
    upset s;
    upset_make(&s, FC_DTYPE_F32, 5, 3, five);
    double D[3];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    assert_int_equal(run("median", NULL, &s, D, &rep, &err), FC_OK);
    const double want[3] = {2, 1, 5};
    expect_vec(D, want, 3, 0);
    agg_report_free(&rep);
    upset_free(&s);
}

static void test_median_even_n_is_mean_of_two_middle_values(void **state) {
    (void)state;
    upset s;
    upset_make(&s, FC_DTYPE_F32, 4, 3, five); /* first four: col0 1 2 3 10, col1 -2 0 1 7,
                                                 col2 -1 0 5 5 */
    double D[3];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    assert_int_equal(run("median", NULL, &s, D, &rep, &err), FC_OK);
    const double want[3] = {2.5, 0.5, 2.5};
    expect_vec(D, want, 3, 0);
    agg_report_free(&rep);
    upset_free(&s);
}

static void test_median_ignores_weights_and_rejects_params(void **state) {
    (void)state;
    upset s;
    upset_make(&s, FC_DTYPE_F32, 5, 3, five);
    s.u[4].weight = 1000.0;
    double D[3];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    assert_int_equal(run("median", NULL, &s, D, &rep, &err), FC_OK);
    assert_true(D[0] == 2.0);
    agg_report_free(&rep);
    const char *kv[] = {"f=1", NULL};
    assert_int_equal(run("median", kv, &s, D, &rep, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "'f'"));
    agg_report_free(&rep);
    upset_free(&s);
}

static void test_median_f16_and_bf16_inputs(void **state) {
    (void)state;
    /* Exactly representable in f16 and bf16. col0: -3 0.5 1.25 -> 0.5; col1: 8 -0.25 2 -> 2 */
    const double v[3 * 2] = {0.5, 8, -3, -0.25, 1.25, 2};
    const fc_dtype dts[2] = {FC_DTYPE_F16, FC_DTYPE_BF16};
    for (int t = 0; t < 2; t++) {
        upset s;
        upset_make(&s, dts[t], 3, 2, v);
        double D[2];
        agg_report rep;
        agg_report_init(&rep);
        fc_error err = {0};
        assert_int_equal(run("median", NULL, &s, D, &rep, &err), FC_OK);
        const double want[2] = {0.5, 2};
        expect_vec(D, want, 2, 0);
        agg_report_free(&rep);
        upset_free(&s);
    }
}

static int cmp_dbl(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Deterministic pseudo-random values, many of them tied (multiples of 1/8 in [-8, 8)). */
static double lcg_value(uint64_t *st) {
    *st = *st * 6364136223846793005ull + 1442695040888963407ull;
    return (double)((int)((*st >> 33) % 128) - 64) / 8.0;
}

/* Naive reference: per column, sort and take the statistic from the definition. */
static void naive_coordwise(const double *vals, size_t n, size_t dim, size_t k, int median,
                            double *out) {
    double *col = malloc(n * sizeof *col);
    assert_non_null(col);
    for (size_t j = 0; j < dim; j++) {
        for (size_t i = 0; i < n; i++)
            col[i] = vals[i * dim + j];
        qsort(col, n, sizeof *col, cmp_dbl);
        if (median) {
            out[j] = n % 2 ? col[n / 2] : 0.5 * (col[n / 2 - 1] + col[n / 2]);
        } else {
            double sum = 0;
            for (size_t i = k; i < n - k; i++)
                sum += col[i];
            out[j] = sum / (double)(n - 2 * k);
        }
    }
    free(col);
}

static void test_median_and_trimmed_across_block_boundaries(void **state) {
    (void)state;
    /* dim is not a multiple of the 64-column block, and for n = 7 it spans several gathered
     * blocks (about 512 KiB / (7*4) = 18688 columns each). */
    const size_t ns[3] = {7, 10, 33};
    const size_t dims[3] = {40001, 1000, 131};
    for (int t = 0; t < 3; t++) {
        size_t n = ns[t], dim = dims[t];
        double *vals = malloc(n * dim * sizeof *vals);
        double *want = malloc(dim * sizeof *want), *D = malloc(dim * sizeof *D);
        assert_true(vals && want && D);
        uint64_t st = 42 + (uint64_t)t;
        for (size_t i = 0; i < n * dim; i++)
            vals[i] = lcg_value(&st);
        upset s;
        upset_make(&s, FC_DTYPE_F32, n, dim, vals);
        agg_report rep;
        agg_report_init(&rep);
        fc_error err = {0};
        assert_int_equal(run("median", NULL, &s, D, &rep, &err), FC_OK);
        naive_coordwise(vals, n, dim, 0, 1, want);
        assert_memory_equal(D, want, dim * sizeof *D);
        agg_report_free(&rep);
        const char *kv[] = {"trim=2", NULL};
        assert_int_equal(run("trimmed_mean", kv, &s, D, &rep, &err), FC_OK);
        naive_coordwise(vals, n, dim, 2, 0, want);
        expect_vec(D, want, dim, 1e-15);
        assert_int_equal(rep.trimmed_low, 2);
        assert_int_equal(rep.trimmed_high, 2);
        agg_report_free(&rep);
        upset_free(&s);
        free(vals);
        free(want);
        free(D);
    }
}

static void test_mixed_dtypes_use_exact_f64_comparisons(void **state) {
    (void)state;
    /* One f64 row makes the coordinate rules compare in f64; values are multiples of 1/8, exact
     * in every dtype, so the naive reference applies unchanged. */
    const size_t n = 9, dim = 300;
    double *vals = malloc(n * dim * sizeof *vals), *want = malloc(dim * sizeof *want);
    double *D = malloc(dim * sizeof *D);
    assert_true(vals && want && D);
    uint64_t st = 99;
    for (size_t i = 0; i < n * dim; i++)
        vals[i] = lcg_value(&st);
    upset s;
    upset_make(&s, FC_DTYPE_F32, n, dim, vals);
    const fc_dtype dts[4] = {FC_DTYPE_F64, FC_DTYPE_F16, FC_DTYPE_BF16, FC_DTYPE_F32};
    upset t;
    for (size_t i = 0; i < n; i++) { /* rebuild row i in dtype dts[i % 4] */
        upset_make(&t, dts[i % 4], 1, dim, vals + i * dim);
        free(s.data[i]);
        s.data[i] = t.data[0];
        s.u[i].data = t.data[0];
        s.u[i].dtype = dts[i % 4];
    }
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    assert_int_equal(run("median", NULL, &s, D, &rep, &err), FC_OK);
    naive_coordwise(vals, n, dim, 0, 1, want);
    assert_memory_equal(D, want, dim * sizeof *D);
    agg_report_free(&rep);
    const char *kv[] = {"trim=3", NULL};
    assert_int_equal(run("trimmed_mean", kv, &s, D, &rep, &err), FC_OK);
    naive_coordwise(vals, n, dim, 3, 0, want);
    expect_vec(D, want, dim, 1e-15);
    agg_report_free(&rep);
    upset_free(&s);
    free(vals);
    free(want);
    free(D);
}

static void test_trimmed_mean_hand_values(void **state) {
    (void)state;
    upset s;
    upset_make(&s, FC_DTYPE_F32, 5, 3, five);
    double D[3];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    /* Default beta 0.2, n = 5: k = 1. col0 1 2 3 -> 2; col1 0 1 2 -> 1; col2 0 5 5 -> 10/3. */
    assert_int_equal(run("trimmed_mean", NULL, &s, D, &rep, &err), FC_OK);
    const double want[3] = {2, 1, 10.0 / 3.0};
    expect_vec(D, want, 3, 1e-15);
    assert_int_equal(rep.trimmed_low, 1);
    assert_int_equal(rep.trimmed_high, 1);
    agg_report_free(&rep);
    /* trim=0 is the plain mean: col0 12/5. */
    const char *kv0[] = {"trim=0", NULL};
    assert_int_equal(run("trimmed_mean", kv0, &s, D, &rep, &err), FC_OK);
    assert_true(agg_test_close(D[0], 12.0 / 5.0, 1e-15));
    assert_int_equal(rep.trimmed_low, 0);
    agg_report_free(&rep);
    upset_free(&s);
}

static void test_trimmed_mean_beta_floor_pitfall(void **state) {
    (void)state;
    /* x_i = i^2 for i = 0..99, beta 0.29: k = floor(29 + 1e-9) = 29 (plain floor of 0.29*100
     * gives 28). Mean of 29^2..70^2 = 109081/42 (robust_expected.py: 2597.1666666666665); k = 28
     * would give 2611.5. */
    double vals[100];
    for (int i = 0; i < 100; i++)
        vals[i] = (double)(i * i);
    upset s;
    upset_make(&s, FC_DTYPE_F32, 100, 1, vals);
    double D[1];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    const char *kv[] = {"beta=0.29", NULL};
    assert_int_equal(run("trimmed_mean", kv, &s, D, &rep, &err), FC_OK);
    assert_int_equal(rep.trimmed_low, 29);
    assert_int_equal(rep.trimmed_high, 29);
    assert_true(agg_test_close(D[0], 109081.0 / 42.0, 1e-15));
    agg_report_free(&rep);
    upset_free(&s);
}

static void test_trimmed_mean_needs_one_value_left(void **state) {
    (void)state;
    upset s;
    upset_make(&s, FC_DTYPE_F32, 4, 3, five);
    double D[3];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    const char *kv[] = {"beta=0.5", NULL}; /* k = 2, n - 2k = 0 */
    assert_int_equal(run("trimmed_mean", kv, &s, D, &rep, &err), FC_ERR_REQUIREMENT);
    assert_non_null(strstr(err.msg, "n - 2k >= 1"));
    agg_report_free(&rep);
    const char *kv2[] = {"trim=2", NULL};
    assert_int_equal(run("trimmed_mean", kv2, &s, D, &rep, &err), FC_ERR_REQUIREMENT);
    agg_report_free(&rep);
    const char *kv3[] = {"beta=0.6", NULL};
    assert_int_equal(run("trimmed_mean", kv3, &s, D, &rep, &err), FC_ERR_CONFIG);
    agg_report_free(&rep);
    upset_free(&s);
}

/* 1-D points 0 1 2 3 100, f = 1, 2 neighbours. Squared-distance scores (robust_expected.py):
 * 5 2 2 5 19013. Points 1 and 2 tie; the lowest index (1) wins. */
static const double krum_pts[5] = {0, 1, 2, 3, 100};

static void test_krum_selects_lowest_score_ties_to_lowest_index(void **state) {
    (void)state;
    upset s;
    upset_make(&s, FC_DTYPE_F32, 5, 1, krum_pts);
    double D[1];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    assert_int_equal(run("krum", NULL, &s, D, &rep, &err), FC_OK);
    assert_true(D[0] == 1.0);
    assert_int_equal(rep.n_selected, 1);
    assert_int_equal(rep.selected[0], 1);
    assert_int_equal(rep.n_scores, 5);
    const double want[5] = {5, 2, 2, 5, 19013};
    expect_vec(rep.scores, want, 5, 0);
    agg_report_free(&rep);
    upset_free(&s);
}

static void test_krum_needs_2f_plus_3(void **state) {
    (void)state;
    upset s;
    upset_make(&s, FC_DTYPE_F32, 4, 1, krum_pts);
    double D[1];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    assert_int_equal(run("krum", NULL, &s, D, &rep, &err), FC_ERR_REQUIREMENT);
    assert_non_null(strstr(err.msg, "2f+3 = 5"));
    agg_report_free(&rep);
    const char *kv[] = {"f=0", NULL}; /* n >= 3 suffices; 2 neighbours: scores 5 2 2 5 */
    assert_int_equal(run("krum", kv, &s, D, &rep, &err), FC_OK);
    assert_true(D[0] == 1.0);
    agg_report_free(&rep);
    assert_int_equal(run("multikrum", NULL, &s, D, &rep, &err), FC_ERR_REQUIREMENT);
    agg_report_free(&rep);
    upset_free(&s);
}

static void test_multikrum_averages_m_lowest_scores(void **state) {
    (void)state;
    upset s;
    upset_make(&s, FC_DTYPE_F32, 5, 1, krum_pts);
    double D[1];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    /* Ranking by (score, index): 1 2 0 3 4. Default m = n - f = 4: mean(0,1,2,3) = 1.5. */
    assert_int_equal(run("multikrum", NULL, &s, D, &rep, &err), FC_OK);
    assert_true(D[0] == 1.5);
    assert_int_equal(rep.n_selected, 4);
    const size_t order[4] = {1, 2, 0, 3};
    for (int i = 0; i < 4; i++)
        assert_int_equal(rep.selected[i], order[i]);
    agg_report_free(&rep);
    const char *kv3[] = {"m=3", NULL}; /* mean(1, 2, 0) = 1 */
    assert_int_equal(run("multikrum", kv3, &s, D, &rep, &err), FC_OK);
    assert_true(D[0] == 1.0);
    agg_report_free(&rep);
    const char *kv6[] = {"m=6", NULL};
    assert_int_equal(run("multikrum", kv6, &s, D, &rep, &err), FC_ERR_REQUIREMENT);
    agg_report_free(&rep);
    upset_free(&s);
}

static void test_krum_f16_input(void **state) {
    (void)state;
    /* The same points in f16 and bf16 (all exact) give the same scores. */
    const fc_dtype dts[2] = {FC_DTYPE_F16, FC_DTYPE_BF16};
    for (int t = 0; t < 2; t++) {
        upset s;
        upset_make(&s, dts[t], 5, 1, krum_pts);
        double D[1];
        agg_report rep;
        agg_report_init(&rep);
        fc_error err = {0};
        assert_int_equal(run("krum", NULL, &s, D, &rep, &err), FC_OK);
        assert_true(D[0] == 1.0);
        assert_true(rep.scores[4] == 19013.0);
        agg_report_free(&rep);
        upset_free(&s);
    }
}

static void test_bulyan_reference_example(void **state) {
    (void)state;
    /* aggregators_reference.md 6.4, scaled by 10: {0,1,2,3,4,50,90}, f = 1, theta 5, beta 3.
     * robust_expected.py: selection 2 1 3 0 5 (the 5th pick is 50), first scores
     * 30 15 10 15 30 8229 24309, result 2. */
    const double v[7] = {0, 1, 2, 3, 4, 50, 90};
    upset s;
    upset_make(&s, FC_DTYPE_F32, 7, 1, v);
    double D[1];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    assert_int_equal(run("bulyan", NULL, &s, D, &rep, &err), FC_OK);
    assert_true(D[0] == 2.0);
    assert_int_equal(rep.n_selected, 5);
    const size_t sel[5] = {2, 1, 3, 0, 5};
    for (int i = 0; i < 5; i++)
        assert_int_equal(rep.selected[i], sel[i]);
    const double sc[7] = {30, 15, 10, 15, 30, 8229, 24309};
    expect_vec(rep.scores, sc, 7, 0);
    agg_report_free(&rep);
    upset_free(&s);
}

static void test_bulyan_distance_tie_goes_to_earlier_selected(void **state) {
    (void)state;
    /* robust_expected.py: selection 2 3 1 0 5. Column 1 of the selected, in selection order:
     * 0 1 -1 3 8; median 1; keep 1, 0, then -1 (selected 3rd) and 3 (4th) tie at distance 2:
     * -1 wins, D[1] = 0 (3 would give 4/3). Column 0 gives 2. */
    const double v[7 * 2] = {0, 3, 1, -1, 2, 0, 3, 1, 4, 0, 50, 8, 90, -6};
    upset s;
    upset_make(&s, FC_DTYPE_F64, 7, 2, v);
    double D[2];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    assert_int_equal(run("bulyan", NULL, &s, D, &rep, &err), FC_OK);
    const double want[2] = {2, 0};
    expect_vec(D, want, 2, 0);
    const size_t sel[5] = {2, 3, 1, 0, 5};
    for (int i = 0; i < 5; i++)
        assert_int_equal(rep.selected[i], sel[i]);
    agg_report_free(&rep);
    upset_free(&s);
}

static void test_bulyan_f0_keeps_everything(void **state) {
    (void)state;
    /* f = 0 on 0 1 2 3: theta = beta = 4, neighbour counts 2, 1 (clamped up), 1, 0 (clamped
     * down). robust_expected.py: selection 1 2 0 3, D = 1.5. */
    const double v[4] = {0, 1, 2, 3};
    upset s;
    upset_make(&s, FC_DTYPE_F32, 4, 1, v);
    double D[1];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    const char *kv[] = {"f=0", NULL};
    assert_int_equal(run("bulyan", kv, &s, D, &rep, &err), FC_OK);
    assert_true(D[0] == 1.5);
    const size_t sel[4] = {1, 2, 0, 3};
    assert_int_equal(rep.n_selected, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(rep.selected[i], sel[i]);
    agg_report_free(&rep);
    upset_free(&s);
}

static void test_bulyan_needs_4f_plus_3(void **state) {
    (void)state;
    const double v[7] = {0, 1, 2, 3, 4, 50, 90};
    upset s;
    upset_make(&s, FC_DTYPE_F32, 6, 1, v);
    double D[1];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    assert_int_equal(run("bulyan", NULL, &s, D, &rep, &err), FC_ERR_REQUIREMENT);
    assert_non_null(strstr(err.msg, "4f+3 = 7"));
    agg_report_free(&rep);
    upset_free(&s);
}

/* Points (0,0) (1,0) (0,1) (10,10); values from robust_expected.py. */
static const double gm_pts[4 * 2] = {0, 0, 1, 0, 0, 1, 10, 10};

static void test_geomed_weighted_and_uniform(void **state) {
    (void)state;
    upset s;
    upset_make(&s, FC_DTYPE_F64, 4, 2, gm_pts);
    for (int i = 0; i < 4; i++)
        s.u[i].weight = (double)(i + 1);
    double D[2];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    assert_int_equal(run("geomed", NULL, &s, D, &rep, &err), FC_OK);
    const double want[2] = {1.539229784002815, 1.7003575091827305};
    expect_vec(D, want, 2, 1e-12);
    assert_int_equal(rep.iterations, 4);
    assert_int_equal(rep.n_weights_used, 4);
    const double beta[4] = {0.11986810030858558, 0.2974111558480092, 0.4585388810279247,
                            0.12418186281548058};
    expect_vec(rep.weights_used, beta, 4, 1e-12);
    agg_report_free(&rep);

    const char *kv[] = {"weighting=uniform", NULL};
    assert_int_equal(run("geomed", kv, &s, D, &rep, &err), FC_OK);
    const double want_u[2] = {0.5223976248144695, 0.5223976248144695};
    expect_vec(D, want_u, 2, 1e-12);
    agg_report_free(&rep);

    /* A loose ftol stops early: 4 iterations of at most 100. */
    const char *kv2[] = {"weighting=uniform", "max_iter=100", "ftol=1e-3", NULL};
    assert_int_equal(run("geomed", kv2, &s, D, &rep, &err), FC_OK);
    assert_int_equal(rep.iterations, 4);
    expect_vec(D, want_u, 2, 1e-12);
    agg_report_free(&rep);

    /* max_iter=0 is the weighted mean: (0*1 + 1*2 + 0*3 + 10*4)/10 = 4.2, (0+0+3+40)/10 = 4.3 */
    const char *kv3[] = {"max_iter=0", NULL};
    assert_int_equal(run("geomed", kv3, &s, D, &rep, &err), FC_OK);
    const double want_m[2] = {4.2, 4.3};
    expect_vec(D, want_m, 2, 1e-15);
    assert_int_equal(rep.iterations, 0);
    agg_report_free(&rep);
    upset_free(&s);
}

static void test_ida_inverse_distance_weights(void **state) {
    (void)state;
    upset s;
    upset_make(&s, FC_DTYPE_F64, 4, 2, gm_pts);
    s.u[3].weight = 50.0; /* ignored */
    double D[2];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    assert_int_equal(run("ida", NULL, &s, D, &rep, &err), FC_OK);
    const double want[2] = {1.3241696652121338, 1.3241696652121338};
    expect_vec(D, want, 2, 1e-12);
    const double alpha[4] = {0.2655657810127987, 0.3168511855084147, 0.3168511855084147,
                             0.10073184797037192};
    assert_int_equal(rep.n_weights_used, 4);
    expect_vec(rep.weights_used, alpha, 4, 1e-12);
    agg_report_free(&rep);
    upset_free(&s);
}

static void test_ida_equal_updates_give_uniform_weights(void **state) {
    (void)state;
    const double v[3 * 2] = {1, 2, 1, 2, 1, 2};
    upset s;
    upset_make(&s, FC_DTYPE_F32, 3, 2, v);
    double D[2];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    assert_int_equal(run("ida", NULL, &s, D, &rep, &err), FC_OK);
    assert_true(agg_test_close(D[0], 1.0, 1e-15) && agg_test_close(D[1], 2.0, 1e-15));
    for (int i = 0; i < 3; i++)
        assert_true(agg_test_close(rep.weights_used[i], 1.0 / 3.0, 1e-15));
    agg_report_free(&rep);
    upset_free(&s);
}

/* Every retaining rule gives the same bits whether the updates are kept in memory, spooled to
 * disk (memory_budget 1 byte), split between the two, or borrowed (data_stable), and whatever
 * their arrival order. */
static void test_spooled_and_in_memory_results_are_bitwise_equal(void **state) {
    (void)state;
    const size_t n = 11, dim = 3001;
    double *vals = malloc(n * dim * sizeof *vals);
    assert_non_null(vals);
    uint64_t st = 7;
    for (size_t i = 0; i < n * dim; i++)
        vals[i] = lcg_value(&st) + 0.01 * (double)(i % 17);
    upset s;
    upset_make(&s, FC_DTYPE_F32, n, dim, vals);
    const char *rules[] = {"median", "trimmed_mean", "krum", "multikrum",
                           "bulyan", "geomed",       "ida"};
    const char *kvb[] = {"f=2", NULL};
    const size_t perm[11] = {10, 3, 0, 7, 1, 9, 2, 5, 8, 4, 6};
    double *ref = malloc(dim * sizeof *ref), *D = malloc(dim * sizeof *D);
    assert_true(ref && D);
    for (size_t r = 0; r < sizeof rules / sizeof rules[0]; r++) {
        const char *const *kv = strcmp(rules[r], "bulyan") == 0 ? kvb : NULL;
        agg_report rep;
        agg_report_init(&rep);
        fc_error err = {0};
        agg_context c = ctx_of(dim);
        assert_int_equal(agg_test_round(rules[r], kv, &c, s.u, n, NULL, 0, ref, &rep, NULL, &err),
                         FC_OK);
        agg_report_free(&rep);
        const size_t budgets[3] = {1, 5 * dim * sizeof(float), 0};
        for (int b = 0; b < 3; b++) {
            c.memory_budget = budgets[b];
            for (size_t i = 0; i < n; i++)
                s.u[i].data_stable = b == 2;
            assert_int_equal(
                agg_test_round(rules[r], kv, &c, s.u, n, perm, b == 1, D, &rep, NULL, &err), FC_OK);
            if (!agg_test_same_bits(D, ref, dim))
                fail_msg("rule %s differs with budget %zu", rules[r], budgets[b]);
            agg_report_free(&rep);
        }
        for (size_t i = 0; i < n; i++)
            s.u[i].data_stable = 0;
    }
    free(ref);
    free(D);
    free(vals);
    upset_free(&s);
}

/* Same updates (ids descending with the index, mixed dtypes and magnitudes) offered in 60
 * random orders, with and without expect: D and the JSON report are byte-identical. */
static void test_every_robust_rule_is_independent_of_arrival_order(void **state) {
    (void)state;
    enum { N = 11, DIM = 97 };
    static double vals[N * DIM];
    uint64_t st = 2024;
    for (size_t i = 0; i < N * DIM; i++)
        vals[i] = lcg_value(&st) * ((i % 3) ? 1e3 : 1e-3) + (double)(i % 7) / 7.0;
    upset s;
    upset_make(&s, FC_DTYPE_F32, N, DIM, vals);
    upset t;
    upset_make(&t, FC_DTYPE_F64, 1, DIM, vals + 2 * DIM);
    free(s.data[2]);
    s.data[2] = t.data[0];
    s.u[2].data = t.data[0];
    s.u[2].dtype = FC_DTYPE_F64;
    for (size_t i = 0; i < N; i++) {
        s.u[i].client_id = 100 - 7 * i;
        s.u[i].weight = 0.1 * (double)(i + 1);
    }
    const char *rules[] = {"median", "trimmed_mean", "krum", "multikrum",
                           "bulyan", "geomed",       "ida"};
    const char *kvb[] = {"f=2", NULL};
    agg_context c = ctx_of(DIM);
    double ref[DIM], D[DIM];
    fc_buf jref = FC_BUF_INIT, j = FC_BUF_INIT;
    for (size_t r = 0; r < sizeof rules / sizeof rules[0]; r++) {
        const char *const *kv = strcmp(rules[r], "bulyan") == 0 ? kvb : NULL;
        agg_report rep;
        agg_report_init(&rep);
        fc_error err = {0};
        assert_int_equal(agg_test_round(rules[r], kv, &c, s.u, N, NULL, 0, ref, &rep, NULL, &err),
                         FC_OK);
        fc_buf_reset(&jref);
        assert_int_equal(agg_report_to_json(&rep, &jref), FC_OK);
        size_t p[N];
        for (size_t i = 0; i < N; i++)
            p[i] = i;
        for (int trial = 0; trial < 60; trial++) {
            for (size_t i = N - 1; i > 0; i--) { /* Fisher-Yates with the test LCG */
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                size_t k = (size_t)((st >> 33) % (i + 1)), tmp = p[i];
                p[i] = p[k];
                p[k] = tmp;
            }
            assert_int_equal(
                agg_test_round(rules[r], kv, &c, s.u, N, p, trial & 1, D, &rep, NULL, &err), FC_OK);
            if (!agg_test_same_bits(ref, D, DIM))
                fail_msg("rule %s: D depends on the arrival order", rules[r]);
            fc_buf_reset(&j);
            assert_int_equal(agg_report_to_json(&rep, &j), FC_OK);
            assert_int_equal(j.len, jref.len);
            assert_memory_equal(j.data, jref.data, j.len);
        }
        agg_report_free(&rep);
    }
    fc_buf_free(&j);
    fc_buf_free(&jref);
    upset_free(&s);
}

static void test_nan_update_is_dropped_before_median(void **state) {
    (void)state;
    upset s;
    upset_make(&s, FC_DTYPE_F32, 5, 3, five);
    ((float *)s.data[3])[1] = __builtin_nanf(""); /* drop update 3 (10, NaN, 0) */
    double D[3];
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    assert_int_equal(run("median", NULL, &s, D, &rep, &err), FC_OK);
    /* Left: (1,-2,5) (3,0,5) (2,7,-1) (-4,2,5): even n, col0 1 2 -> 1.5, col1 0 2 -> 1,
     * col2 5 5 -> 5. */
    const double want[3] = {1.5, 1, 5};
    expect_vec(D, want, 3, 0);
    assert_int_equal(rep.n_dropped, 1);
    agg_report_free(&rep);
    upset_free(&s);
}

static void test_allocation_failures_are_clean(void **state) {
    (void)state;
    double vals[7 * 40];
    for (size_t i = 0; i < 7; i++)
        for (size_t j = 0; j < 40; j++)
            vals[i * 40 + j] = (double)((i * 7 + j * 3) % 11);
    upset s;
    upset_make(&s, FC_DTYPE_F32, 7, 40, vals);
    const char *rules[] = {"median", "trimmed_mean", "krum", "multikrum",
                           "bulyan", "geomed",       "ida"};
    double D[40];
    for (size_t r = 0; r < sizeof rules / sizeof rules[0]; r++) {
        int succeeded = 0;
        for (long k = 0; k < 400 && !succeeded; k++) {
            agg_report rep;
            agg_report_init(&rep);
            fc_error err = {0};
            agg_context c = ctx_of(40);
            c.memory_budget = 3 * 40 * sizeof(float); /* some rows go to the spool file */
            fc_alloc_fail_after(k);
            fc_status st = agg_test_round(rules[r], NULL, &c, s.u, 7, NULL, 0, D, &rep, NULL, &err);
            fc_alloc_fail_after(-1);
            agg_report_free(&rep);
            if (st == FC_OK)
                succeeded = 1;
            else
                assert_int_equal(st, FC_ERR_NOMEM);
        }
        assert_true(succeeded);
    }
    upset_free(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_median_odd_n_is_middle_value),
        cmocka_unit_test(test_median_even_n_is_mean_of_two_middle_values),
        cmocka_unit_test(test_median_ignores_weights_and_rejects_params),
        cmocka_unit_test(test_median_f16_and_bf16_inputs),
        cmocka_unit_test(test_median_and_trimmed_across_block_boundaries),
        cmocka_unit_test(test_mixed_dtypes_use_exact_f64_comparisons),
        cmocka_unit_test(test_trimmed_mean_hand_values),
        cmocka_unit_test(test_trimmed_mean_beta_floor_pitfall),
        cmocka_unit_test(test_trimmed_mean_needs_one_value_left),
        cmocka_unit_test(test_krum_selects_lowest_score_ties_to_lowest_index),
        cmocka_unit_test(test_krum_needs_2f_plus_3),
        cmocka_unit_test(test_multikrum_averages_m_lowest_scores),
        cmocka_unit_test(test_krum_f16_input),
        cmocka_unit_test(test_bulyan_reference_example),
        cmocka_unit_test(test_bulyan_distance_tie_goes_to_earlier_selected),
        cmocka_unit_test(test_bulyan_f0_keeps_everything),
        cmocka_unit_test(test_bulyan_needs_4f_plus_3),
        cmocka_unit_test(test_geomed_weighted_and_uniform),
        cmocka_unit_test(test_ida_inverse_distance_weights),
        cmocka_unit_test(test_ida_equal_updates_give_uniform_weights),
        cmocka_unit_test(test_spooled_and_in_memory_results_are_bitwise_equal),
        cmocka_unit_test(test_every_robust_rule_is_independent_of_arrival_order),
        cmocka_unit_test(test_nan_update_is_dropped_before_median),
        cmocka_unit_test(test_allocation_failures_are_clean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
