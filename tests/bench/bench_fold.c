/* bench_fold.c: the streaming fold (f32 update into the f64 accumulator, acc[i] += w*x[i]) against
 * a STREAM-like triad (a[i] = b[i] + s*c[i] in doubles) over arrays of the same length, in the
 * same run. Bytes moved: fold 4 (read x) + 8 (read acc) + 8 (write acc) = 20 per element; triad
 * 8+8+8 = 24 per element (write-allocate traffic is not counted, as STREAM does not).
 * Prints GB/s for each (best of several repetitions) and the ratio fold/triad (goal >= 0.8).
 * BENCH_QUICK=1 uses d = 4M instead of 50M. Also reports the f16 and bf16 folds and the f32
 * finiteness check that the round driver runs on every update before the fold.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aggregators/kernels.h"
#include "core/alloc.h"
#include "core/tensor.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Kept out of line so that the compiler cannot fuse it with the timing loop, and compiled at -O3
 * so that the baseline is the fully vectorised triad STREAM would measure. */
__attribute__((noinline, optimize("O3"))) static void
triad(double *restrict a, const double *restrict b, const double *restrict c, double s, size_t n) {
    for (size_t i = 0; i < n; i++)
        a[i] = b[i] + s * c[i];
}

int main(void) {
    const char *quick = getenv("BENCH_QUICK");
    size_t n = (quick && quick[0] == '1') ? (size_t)4 << 20 : (size_t)50 * 1000 * 1000;
    int reps = (quick && quick[0] == '1') ? 5 : 7;
    double *acc = fc_mallocarray(n, sizeof(double));
    double *a = fc_mallocarray(n, sizeof(double));
    double *b = fc_mallocarray(n, sizeof(double));
    double *c = fc_mallocarray(n, sizeof(double));
    float *x = fc_mallocarray(n, sizeof(float));
    uint16_t *h = fc_mallocarray(n, sizeof(uint16_t));
    if (!acc || !a || !b || !c || !x || !h) {
        fprintf(stderr, "bench_fold: out of memory for d = %zu\n", n);
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        acc[i] = 0;
        a[i] = 0;
        b[i] = (double)(i % 1000) * 1e-3;
        c[i] = 1.0 - b[i];
        x[i] = (float)(i % 977) * 1e-3f;
        h[i] = (uint16_t)(0x3000 + (i % 1024));
    }
    double best_fold = 1e30, best_triad = 1e30, best_f16 = 1e30, best_bf16 = 1e30;
    double best_finite = 1e30;
    int finite_all = 1;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        agg_k_fold_f32(acc, x, 0.5, n);
        double t1 = now();
        triad(a, b, c, 0.5, n);
        double t2 = now();
        agg_k_fold_f16(acc, h, 0.5, n);
        double t3 = now();
        agg_k_fold_bf16(acc, h, 0.5, n);
        double t4 = now();
        finite_all &= agg_k_all_finite(FC_DTYPE_F32, x, n);
        double t5 = now();
        if (t5 - t4 < best_finite)
            best_finite = t5 - t4;
        if (t1 - t0 < best_fold)
            best_fold = t1 - t0;
        if (t2 - t1 < best_triad)
            best_triad = t2 - t1;
        if (t3 - t2 < best_f16)
            best_f16 = t3 - t2;
        if (t4 - t3 < best_bf16)
            best_bf16 = t4 - t3;
    }
    double gb_fold = 20.0 * (double)n / best_fold / 1e9;
    double gb_triad = 24.0 * (double)n / best_triad / 1e9;
    double gb_f16 = 18.0 * (double)n / best_f16 / 1e9;
    double gb_bf16 = 18.0 * (double)n / best_bf16 / 1e9;
    printf("bench_fold: d = %zu, best of %d\n", n, reps);
    printf("  fold f32->f64   %8.2f GB/s  (%.2f ms)\n", gb_fold, best_fold * 1e3);
    printf("  triad f64       %8.2f GB/s  (%.2f ms)\n", gb_triad, best_triad * 1e3);
    printf("  ratio fold/triad %.2f (goal >= 0.80)\n", gb_fold / gb_triad);
    printf("  fold f16->f64   %8.2f GB/s  (%.2f ms)\n", gb_f16, best_f16 * 1e3);
    printf("  fold bf16->f64  %8.2f GB/s  (%.2f ms)\n", gb_bf16, best_bf16 * 1e3);
    /* Use the results so that nothing is optimised away. */
    double sink = acc[n / 2] + a[n / 3];
    printf("  finite f32      %8.2f GB/s  (%.2f ms)\n", 4.0 * (double)n / best_finite / 1e9,
           best_finite * 1e3);
    printf("  (checksum %g, finite %d)\n", sink, finite_all);
    fc_free(acc);
    fc_free(a);
    fc_free(b);
    fc_free(c);
    fc_free(x);
    fc_free(h);
    return 0;
}
