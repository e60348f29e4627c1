/* kernels.h: the numeric inner loops of every rule and optimizer, in one place.
 *
 * Plain C loops over flat arrays that gcc vectorises at -O2. Accumulators are double. Inputs in
 * a client dtype (f32, f16, bf16, f64) are little-endian, aligned to their element size (the round
 * driver guarantees it), and finite unless a function says otherwise. Kernels never allocate and
 * never fail: dtype dispatch on an unknown dtype is an internal error (assert); callers check the
 * dtype first (agg_k_dtype_ok).
 *
 * Reductions (norms, distances) sum in a fixed order that depends only on n, so a result is
 * reproducible bit for bit on the same build.
 */
#ifndef FC_AGG_KERNELS_H
#define FC_AGG_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/tensor.h"

/* 1 if dt is one of the four dtypes the kernels handle. */
int agg_k_dtype_ok(fc_dtype dt);

/* Exact f16 -> double for a FINITE f16 (Inf/NaN give a wrong finite value: check first).
 * Branch-free so that folds vectorise: the f16 exponent/mantissa bits placed in an f32 and
 * scaled by 2^112 re-bias the exponent exactly, subnormals included. */
static inline double agg_k_f16_to_f64(uint16_t h) {
    uint32_t bits = (((uint32_t)h & 0x7fffu) << 13) | (((uint32_t)h & 0x8000u) << 16);
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)(f * 0x1p112f);
}

/* ---- finiteness ---- */

/* 1 if all n elements of x (dtype dt) are finite, 0 if any is NaN or +-Inf. */
int agg_k_all_finite(fc_dtype dt, const void *x, size_t n);

/* ---- folds: acc[i] += w * x[i] (the streaming hot path) ---- */

void agg_k_fold_f32(double *restrict acc, const float *restrict x, double w, size_t n);
void agg_k_fold_f64(double *restrict acc, const double *restrict x, double w, size_t n);
void agg_k_fold_f16(double *restrict acc, const uint16_t *restrict x, double w, size_t n);
void agg_k_fold_bf16(double *restrict acc, const uint16_t *restrict x, double w, size_t n);
void agg_k_fold(fc_dtype dt, double *restrict acc, const void *restrict x, double w, size_t n);

/* acc[i] += w * (x[i] - v[i]) with x in dtype dt (centered clipping). */
void agg_k_fold_diff(fc_dtype dt, double *restrict acc, const void *restrict x,
                     const double *restrict v, double w, size_t n);

/* ---- norms and distances (explicit differences, never |x|^2+|y|^2-2xy) ---- */

/* sum x[i]^2 with x in dtype dt. */
double agg_k_sqnorm(fc_dtype dt, const void *x, size_t n);
double agg_k_sqnorm_f64(const double *x, size_t n);
/* sum (x[i] - v[i])^2 with x in dtype dt and v double. */
double agg_k_sqdist_dt_f64(fc_dtype dt, const void *x, const double *v, size_t n);
/* sum (a[i] - b[i])^2. */
double agg_k_sqdist_f64(const double *a, const double *b, size_t n);

/* ---- elementwise ---- */

/* x[i] *= s. */
void agg_k_scale(double *x, double s, size_t n);
/* dst[i] = (double)src[i] for src in dtype dt. */
void agg_k_to_f64(fc_dtype dt, const void *restrict src, double *restrict dst, size_t n);
/* dst[i] = (float)src[i] (round to nearest). */
void agg_k_f64_to_f32(float *restrict dst, const double *restrict src, size_t n);

/* ==== Robust-rule kernels (median, trimmed_mean, krum, bulyan, geomed, ida) ====
 * Added by the aggrobust branch below this line. */

/* ---- robust rules ---- */

/* Coordinate-wise rules (median, trimmed_mean, bulyan) work on blocks of AGG_K_COLS coordinates
 * of every row: row r of a block is AGG_K_COLS contiguous values at blk + r*AGG_K_COLS. Each
 * column is sorted by the same comparator network, which gcc turns into vector min/max across
 * the columns, with no branch on the data. */
#define AGG_K_COLS 64

/* dst[i] = (float)src[i] for src in f32, f16 or bf16 (exact). */
void agg_k_to_f32(fc_dtype dt, const void *restrict src, float *restrict dst, size_t n);

/* Number of comparators of Batcher's odd-even merge sorting network for n inputs (n >= 1). */
size_t agg_k_sortnet_count(size_t n);
/* Writes the network for n inputs as pairs (a, b), a < b: after applying them in order,
 * position p holds the p-th smallest value for every p in [lo, hi) (lo < hi <= n). Comparators
 * that cannot affect those positions are left out. pairs has room for 2*agg_k_sortnet_count(n)
 * entries; live is scratch of n bytes. Returns the number of pairs written. */
size_t agg_k_sortnet_build(size_t n, size_t lo, size_t hi, uint32_t *pairs, unsigned char *live);
/* Applies npairs comparators to a block (rows of AGG_K_COLS values): per column,
 * row a gets min and row b gets max. */
void agg_k_sortnet_f32(float *blk, const uint32_t *pairs, size_t npairs);
void agg_k_sortnet_f64(double *blk, const uint32_t *pairs, size_t npairs);
/* out[c] = sum of blk rows lo..hi-1 at column c, summed in row order, for c < AGG_K_COLS. */
void agg_k_rowsum_f32(const float *blk, size_t lo, size_t hi, double *out);
void agg_k_rowsum_f64(const double *blk, size_t lo, size_t hi, double *out);

/* Pairwise squared distances over one block of columns: for every a < b < n,
 * dist[a*n + b] += sum over c < w of (x[a][c] - x[b][c])^2, where row r is at x + r*stride and
 * w is a multiple of 8 (pad both rows with equal values, e.g. zeros). Explicit differences;
 * eight partial sums in a fixed order. */
void agg_k_pairdist_f64(const double *x, size_t n, size_t stride, size_t w, double *dist);

/* Sum of the k smallest of v[0..m) (k <= m), added in ascending order. Sorts v in place. */
double agg_k_sum_smallest(double *v, size_t m, size_t k);

/* Bulyan's coordinate step for one column: sorted holds the column's theta values ascending
 * (stride apart), orig the same values in selection order (stride apart). Returns the mean of
 * the beta values closest to their median (mean of the two middle values for even theta),
 * ties in distance going to the value selected earlier. If lo_out is not NULL it receives how
 * many values below the kept window were dropped. */
double agg_k_closest_mean_f64(const double *sorted, const double *orig, size_t stride, size_t theta,
                              size_t beta, size_t *lo_out);

#endif
