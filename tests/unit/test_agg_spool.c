/* test_agg_spool.c: the spool (memory, spool file, borrowed rows) and the robust-rule kernels
 * (sorting networks, pairwise distances, Bulyan's closest-to-median mean). */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "aggregators/kernels.h"
#include "aggregators/spool.h"
#include "core/alloc.h"
#include "core/tensor.h"
#include "tests/lib/testutil.h"

static size_t count_entries(const char *dir) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strncmp(e->d_name, "fc-spool-", 9) == 0)
            n++;
    closedir(d);
    return n;
}

static void test_rows_go_to_memory_then_file_then_read_back_exactly(void **state) {
    (void)state;
    enum { DIM = 1000 };
    static float f32[DIM];
    static uint16_t f16[DIM], bf16[DIM];
    static double f64[DIM];
    for (int j = 0; j < DIM; j++) {
        f32[j] = (float)j * 0.25f - 100.0f;
        f16[j] = fc_f32_to_f16((float)(j % 64) - 32.0f);
        bf16[j] = fc_f32_to_bf16((float)j * 2.0f);
        f64[j] = (double)j / 3.0; /* not representable in f32: must stay f64 */
    }
    agg_context ctx = {0};
    ctx.dim = DIM;
    ctx.spool_dir = fc_test_tmpdir();
    ctx.memory_budget = 2 * DIM * sizeof(float); /* two f32 rows in memory, then the file */
    agg_spool *s = NULL;
    fc_error err = {0};
    assert_int_equal(agg_spool_create(&ctx, &s, &err), FC_OK);
    agg_update u = {0};
    const void *datas[5] = {f32, f16, bf16, f64, f32};
    const fc_dtype dts[5] = {FC_DTYPE_F32, FC_DTYPE_F16, FC_DTYPE_BF16, FC_DTYPE_F64, FC_DTYPE_F32};
    for (int i = 0; i < 5; i++) {
        u.dtype = dts[i];
        u.data = datas[i];
        u.data_stable = i == 4; /* the last is borrowed */
        assert_int_equal(agg_spool_append(s, &u, &err), FC_OK);
    }
    assert_int_equal(agg_spool_rows(s), 5);
    assert_int_equal(agg_spool_mem_bytes(s), 2 * DIM * sizeof(float));
    /* bf16 (as f32) and f64 went to the file, 64-byte aligned. */
    assert_true(agg_spool_file_bytes(s) >= DIM * sizeof(float) + DIM * sizeof(double));
    assert_int_equal(count_entries(fc_test_tmpdir()), 0); /* unlinked at creation */
    assert_true(agg_spool_has_f64(s));
    assert_int_equal(agg_spool_seal(s, &err), FC_OK);
    assert_int_equal(agg_spool_append(s, &u, &err), FC_ERR_STATE);

    fc_dtype dt;
    const void *row = agg_spool_row(s, 4, &dt);
    assert_ptr_equal(row, f32); /* borrowed, not copied */
    assert_int_equal(dt, FC_DTYPE_F32);
    row = agg_spool_row(s, 1, &dt);
    assert_int_equal(dt, FC_DTYPE_F32); /* f16 stored widened */
    row = agg_spool_row(s, 3, &dt);
    assert_int_equal(dt, FC_DTYPE_F64);
    assert_memory_equal(row, f64, sizeof f64);

    /* A block of coordinates [990, 1000) of rows 3, 0, 2, 1 (in that order), as doubles. */
    const size_t rows[4] = {3, 0, 2, 1};
    double blk[4 * 12];
    agg_spool_block_f64(s, rows, 4, 990, 1000, blk, 12);
    for (int j = 0; j < 10; j++) {
        assert_true(blk[0 * 12 + j] == f64[990 + j]);
        assert_true(blk[1 * 12 + j] == (double)f32[990 + j]);
        assert_true(blk[2 * 12 + j] == (double)fc_bf16_to_f32(bf16[990 + j]));
        assert_true(blk[3 * 12 + j] == (double)fc_f16_to_f32(f16[990 + j]));
    }
    agg_spool_release_below(s, DIM); /* a hint; reading again still works */
    agg_spool_block_f64(s, rows, 1, 0, 3, blk, 3);
    assert_true(blk[1] == f64[1]);
    agg_spool_destroy(s);
}

static void test_f32_blocks_without_f64_rows(void **state) {
    (void)state;
    enum { DIM = 70 };
    float a[DIM];
    uint16_t h[DIM];
    for (int j = 0; j < DIM; j++) {
        a[j] = (float)j + 0.5f;
        h[j] = fc_f32_to_bf16(-(float)j);
    }
    agg_context ctx = {0};
    ctx.dim = DIM;
    ctx.spool_dir = fc_test_tmpdir();
    ctx.memory_budget = 1; /* everything to the file */
    agg_spool *s = NULL;
    fc_error err = {0};
    assert_int_equal(agg_spool_create(&ctx, &s, &err), FC_OK);
    agg_update u = {0};
    u.dtype = FC_DTYPE_F32;
    u.data = a;
    assert_int_equal(agg_spool_append(s, &u, &err), FC_OK);
    u.dtype = FC_DTYPE_BF16;
    u.data = h;
    assert_int_equal(agg_spool_append(s, &u, &err), FC_OK);
    assert_int_equal(agg_spool_mem_bytes(s), 0);
    assert_false(agg_spool_has_f64(s));
    assert_int_equal(agg_spool_seal(s, &err), FC_OK);
    float blk[2 * 8];
    agg_spool_block_f32(s, NULL, 0, 62, 70, blk, 8);
    for (int j = 0; j < 8; j++) {
        assert_true(blk[j] == a[62 + j]);
        assert_true(blk[8 + j] == -(float)(62 + j));
    }
    agg_spool_destroy(s);
}

static void test_missing_spool_folder_is_an_io_error_naming_it(void **state) {
    (void)state;
    agg_context ctx = {0};
    ctx.dim = 4;
    ctx.spool_dir = "/nonexistent/fc-spool-test";
    ctx.memory_budget = 1;
    agg_spool *s = NULL;
    fc_error err = {0};
    assert_int_equal(agg_spool_create(&ctx, &s, &err), FC_OK);
    float x[4] = {1, 2, 3, 4};
    agg_update u = {0};
    u.dtype = FC_DTYPE_F32;
    u.data = x;
    assert_int_equal(agg_spool_append(s, &u, &err), FC_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/fc-spool-test"));
    assert_int_equal(agg_spool_rows(s), 0);
    agg_spool_destroy(s);

    ctx.dim = 0;
    assert_int_equal(agg_spool_create(&ctx, &s, &err), FC_ERR_INVALID);
    assert_null(s);
}

static int cmp_f(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Every column of a block, sorted by the network, matches qsort at the positions asked for. */
static void test_sorting_network_sorts_every_size(void **state) {
    (void)state;
    uint64_t st = 1;
    for (size_t n = 1; n <= 70; n++) {
        size_t cnt = agg_k_sortnet_count(n);
        uint32_t *pairs = malloc(2 * (cnt ? cnt : 1) * sizeof *pairs);
        unsigned char *live = malloc(n);
        float *blk = malloc(n * AGG_K_COLS * sizeof *blk);
        float *col = malloc(n * sizeof *col);
        assert_true(pairs && live && blk && col);
        const size_t ranges[3][2] = {{0, n}, {(n - 1) / 2, n / 2 + 1}, {n / 4, n - n / 4}};
        for (int r = 0; r < 3; r++) {
            size_t lo = ranges[r][0], hi = ranges[r][1];
            size_t np = agg_k_sortnet_build(n, lo, hi, pairs, live);
            assert_true(np <= cnt);
            for (size_t i = 0; i < n * AGG_K_COLS; i++) {
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                blk[i] = (float)((int)((st >> 33) % 16) - 8); /* many ties */
            }
            float *orig = malloc(n * AGG_K_COLS * sizeof *orig);
            assert_non_null(orig);
            memcpy(orig, blk, n * AGG_K_COLS * sizeof *orig);
            agg_k_sortnet_f32(blk, pairs, np);
            for (size_t c = 0; c < AGG_K_COLS; c++) {
                for (size_t i = 0; i < n; i++)
                    col[i] = orig[i * AGG_K_COLS + c];
                qsort(col, n, sizeof *col, cmp_f);
                for (size_t p = lo; p < hi; p++)
                    if (blk[p * AGG_K_COLS + c] != col[p])
                        fail_msg("n %zu range [%zu,%zu) column %zu position %zu", n, lo, hi, c, p);
            }
            free(orig);
        }
        free(pairs);
        free(live);
        free(blk);
        free(col);
    }
}

static void test_pairwise_distances_use_explicit_differences(void **state) {
    (void)state;
    /* Large, nearly equal rows: |x|^2+|y|^2-2xy would lose everything; differences are exact.
     * Row a: 1e8 + a at every coordinate (exact in double), 16 coordinates: d(a,b) = 16 (a-b)^2. */
    enum { N = 4, W = 16 };
    double x[N * W], dist[N * N] = {0};
    for (int a = 0; a < N; a++)
        for (int c = 0; c < W; c++)
            x[a * W + c] = 1e8 + a;
    agg_k_pairdist_f64(x, N, W, W, dist);
    agg_k_pairdist_f64(x, N, W, W, dist); /* accumulates */
    for (int a = 0; a < N; a++)
        for (int b = a + 1; b < N; b++)
            assert_true(dist[a * N + b] == 2.0 * W * (double)((a - b) * (a - b)));
}

static void test_closest_mean_ties_and_windows(void **state) {
    (void)state;
    /* theta 5, beta 3. Selection order 4 -4 0 0 9: sorted -4 0 0 4 9, median 0: keep 0 0, then
     * -4 and 4 tie at 4: 4 was selected first -> (0+0+4)/3; one value dropped below. */
    const double orig1[5] = {4, -4, 0, 0, 9}, sorted1[5] = {-4, 0, 0, 4, 9};
    size_t lo = 99;
    assert_true(agg_k_closest_mean_f64(sorted1, orig1, 1, 5, 3, &lo) == 4.0 / 3.0);
    assert_int_equal(lo, 1);
    /* Same values, -4 selected first -> (0+0-4)/3. */
    const double orig2[5] = {-4, 4, 0, 0, 9};
    assert_true(agg_k_closest_mean_f64(sorted1, orig2, 1, 5, 3, &lo) == -4.0 / 3.0);
    assert_int_equal(lo, 0);
    /* Even theta 4: 1 2 3 10, median 2.5, beta 2: 2 and 3 -> 2.5; beta 3: then 1 (1.5) beats
     * 10 -> 2. */
    const double s3[4] = {1, 2, 3, 10};
    assert_true(agg_k_closest_mean_f64(s3, s3, 1, 4, 2, NULL) == 2.5);
    assert_true(agg_k_closest_mean_f64(s3, s3, 1, 4, 3, NULL) == 2.0);
    /* Copies of a tied value: orig 1 5 1 5 3 (sorted 1 1 3 5 5), median 3, beta 4: keep 3, then
     * 1 (pos 0) and 5 (pos 1) alternate by position: 1, 5, 1 -> (3+1+5+1)/4 = 2.5. */
    const double o4[5] = {1, 5, 1, 5, 3}, s4[5] = {1, 1, 3, 5, 5};
    assert_true(agg_k_closest_mean_f64(s4, o4, 1, 5, 4, NULL) == 2.5);
}

typedef struct keyed {
    double dist;
    size_t pos;
} keyed;

static int cmp_keyed(const void *a, const void *b) {
    const keyed *x = a, *y = b;
    if (x->dist != y->dist)
        return x->dist < y->dist ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Against the definition, written naively: sort (|v - med|, position) and average the first
 * beta. Small integer values make ties in value and in distance common; every beta in 1..theta
 * exercises both the growing and the shrinking walk. */
static void test_closest_mean_matches_the_definition(void **state) {
    (void)state;
    uint64_t st = 5;
    for (int trial = 0; trial < 3000; trial++) {
        double orig[12], sorted[12];
        keyed k[12];
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        size_t theta = 1 + (size_t)((st >> 33) % 12);
        for (size_t i = 0; i < theta; i++) {
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            orig[i] = (double)((int)((st >> 33) % 9) - 4);
            sorted[i] = orig[i];
        }
        qsort(sorted, theta, sizeof *sorted, cmp_d);
        size_t m = theta / 2;
        double med = theta % 2 ? sorted[m] : 0.5 * (sorted[m - 1] + sorted[m]);
        for (size_t i = 0; i < theta; i++)
            k[i] = (keyed){orig[i] > med ? orig[i] - med : med - orig[i], i};
        qsort(k, theta, sizeof *k, cmp_keyed);
        for (size_t beta = 1; beta <= theta; beta++) {
            double sum = 0;
            for (size_t i = 0; i < beta; i++)
                sum += orig[k[i].pos];
            double got = agg_k_closest_mean_f64(sorted, orig, 1, theta, beta, NULL);
            /* Same multiset of small integers: the sums are exact in any order. */
            if (got != sum / (double)beta)
                fail_msg("theta %zu beta %zu: got %g, want %g", theta, beta, got,
                         sum / (double)beta);
        }
    }
}

static void test_sum_smallest(void **state) {
    (void)state;
    double v[5] = {9, 1, 4, 1, 16};
    assert_true(agg_k_sum_smallest(v, 5, 3) == 6.0);
    assert_true(agg_k_sum_smallest(v, 5, 0) == 0.0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows_go_to_memory_then_file_then_read_back_exactly),
        cmocka_unit_test(test_f32_blocks_without_f64_rows),
        cmocka_unit_test(test_missing_spool_folder_is_an_io_error_naming_it),
        cmocka_unit_test(test_sorting_network_sorts_every_size),
        cmocka_unit_test(test_pairwise_distances_use_explicit_differences),
        cmocka_unit_test(test_closest_mean_ties_and_windows),
        cmocka_unit_test(test_closest_mean_matches_the_definition),
        cmocka_unit_test(test_sum_smallest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
