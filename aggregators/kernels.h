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

#endif
