/* kernels.c: the numeric inner loops (see kernels.h). It owns arithmetic only: no allocation,
 * no error reporting, no knowledge of rules. Loops are written so that gcc vectorises them at
 * -O2; reductions use a fixed number of independent partial sums so that they vectorise without
 * -ffast-math and still give the same bits for the same n.
 */
#include "aggregators/kernels.h"

#include <assert.h>
#include <string.h>

int agg_k_dtype_ok(fc_dtype dt) {
    return dt == FC_DTYPE_F32 || dt == FC_DTYPE_F16 || dt == FC_DTYPE_BF16 || dt == FC_DTYPE_F64;
}

static inline double bf16_to_f64(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)f;
}

static inline double load_f64(const void *x, fc_dtype dt, size_t i) {
    switch (dt) {
    case FC_DTYPE_F32:
        return (double)((const float *)x)[i];
    case FC_DTYPE_F64:
        return ((const double *)x)[i];
    case FC_DTYPE_F16:
        return agg_k_f16_to_f64(((const uint16_t *)x)[i]);
    case FC_DTYPE_BF16:
        return bf16_to_f64(((const uint16_t *)x)[i]);
    default:
        assert(0 && "bad dtype");
        return 0.0;
    }
}

/* gcc 12 at -O2 (the "very cheap" vectoriser cost model) vectorises a loop only when no scalar
 * epilogue is needed. So every hot loop below runs a fixed-width inner loop of BLOCK elements,
 * which it does vectorise, and finishes the last n % BLOCK elements in a scalar tail. */
#define BLOCK 8

/* ---- finiteness ---- */

/* A value is non-finite iff its exponent bits are all ones; adding one exponent unit then carries
 * into the top bit. Or-ing that bit over the array (no early exit) keeps the loop branch-free. */
static int finite_f32(const float *x, size_t n) {
    uint32_t bad = 0;
    size_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK)
        for (size_t l = 0; l < BLOCK; l++) {
            uint32_t b;
            memcpy(&b, &x[i + l], sizeof b);
            bad |= ((b & 0x7f800000u) + 0x00800000u) & 0x80000000u;
        }
    for (; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], sizeof b);
        bad |= ((b & 0x7f800000u) + 0x00800000u) & 0x80000000u;
    }
    return bad == 0;
}

static int finite_f64(const double *x, size_t n) {
    uint64_t bad = 0;
    size_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK)
        for (size_t l = 0; l < BLOCK; l++) {
            uint64_t b;
            memcpy(&b, &x[i + l], sizeof b);
            bad |= ((b & 0x7ff0000000000000ull) + 0x0010000000000000ull) & 0x8000000000000000ull;
        }
    for (; i < n; i++) {
        uint64_t b;
        memcpy(&b, &x[i], sizeof b);
        bad |= ((b & 0x7ff0000000000000ull) + 0x0010000000000000ull) & 0x8000000000000000ull;
    }
    return bad == 0;
}

/* f16: exponent 0x7c00, unit 0x0400; bf16: exponent 0x7f80, unit 0x0080. */
static int finite_u16(const uint16_t *x, size_t n, uint32_t expmask, uint32_t unit) {
    uint32_t bad = 0;
    size_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK)
        for (size_t l = 0; l < BLOCK; l++)
            bad |= (((uint32_t)x[i + l] & expmask) + unit) & 0x8000u;
    for (; i < n; i++)
        bad |= (((uint32_t)x[i] & expmask) + unit) & 0x8000u;
    return bad == 0;
}

int agg_k_all_finite(fc_dtype dt, const void *x, size_t n) {
    switch (dt) {
    case FC_DTYPE_F32:
        return finite_f32(x, n);
    case FC_DTYPE_F64:
        return finite_f64(x, n);
    case FC_DTYPE_F16:
        return finite_u16(x, n, 0x7c00u, 0x0400u);
    case FC_DTYPE_BF16:
        return finite_u16(x, n, 0x7f80u, 0x0080u);
    default:
        assert(0 && "bad dtype");
        return 0;
    }
}

/* ---- folds ---- */

void agg_k_fold_f32(double *restrict acc, const float *restrict x, double w, size_t n) {
    size_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK)
        for (size_t l = 0; l < BLOCK; l++)
            acc[i + l] += w * (double)x[i + l];
    for (; i < n; i++)
        acc[i] += w * (double)x[i];
}

void agg_k_fold_f64(double *restrict acc, const double *restrict x, double w, size_t n) {
    size_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK)
        for (size_t l = 0; l < BLOCK; l++)
            acc[i + l] += w * x[i + l];
    for (; i < n; i++)
        acc[i] += w * x[i];
}

void agg_k_fold_f16(double *restrict acc, const uint16_t *restrict x, double w, size_t n) {
    size_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK)
        for (size_t l = 0; l < BLOCK; l++)
            acc[i + l] += w * agg_k_f16_to_f64(x[i + l]);
    for (; i < n; i++)
        acc[i] += w * agg_k_f16_to_f64(x[i]);
}

void agg_k_fold_bf16(double *restrict acc, const uint16_t *restrict x, double w, size_t n) {
    size_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK)
        for (size_t l = 0; l < BLOCK; l++)
            acc[i + l] += w * bf16_to_f64(x[i + l]);
    for (; i < n; i++)
        acc[i] += w * bf16_to_f64(x[i]);
}

void agg_k_fold(fc_dtype dt, double *restrict acc, const void *restrict x, double w, size_t n) {
    switch (dt) {
    case FC_DTYPE_F32:
        agg_k_fold_f32(acc, x, w, n);
        break;
    case FC_DTYPE_F64:
        agg_k_fold_f64(acc, x, w, n);
        break;
    case FC_DTYPE_F16:
        agg_k_fold_f16(acc, x, w, n);
        break;
    case FC_DTYPE_BF16:
        agg_k_fold_bf16(acc, x, w, n);
        break;
    default:
        assert(0 && "bad dtype");
    }
}

void agg_k_fold_diff(fc_dtype dt, double *restrict acc, const void *restrict x,
                     const double *restrict v, double w, size_t n) {
    size_t i = 0;
    switch (dt) {
    case FC_DTYPE_F32: {
        const float *xf = x;
        for (; i + BLOCK <= n; i += BLOCK)
            for (size_t l = 0; l < BLOCK; l++)
                acc[i + l] += w * ((double)xf[i + l] - v[i + l]);
        break;
    }
    case FC_DTYPE_F64: {
        const double *xd = x;
        for (; i + BLOCK <= n; i += BLOCK)
            for (size_t l = 0; l < BLOCK; l++)
                acc[i + l] += w * (xd[i + l] - v[i + l]);
        break;
    }
    default:
        break;
    }
    for (; i < n; i++)
        acc[i] += w * (load_f64(x, dt, i) - v[i]);
}

/* ---- reductions ----
 * Eight partial sums, element i going to lane i % 8, then combined pairwise in a fixed tree. */
#define LANES 8

static double combine(const double *p) {
    return ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]));
}

double agg_k_sqnorm_f64(const double *x, size_t n) {
    double p[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (size_t l = 0; l < LANES; l++)
            p[l] += x[i + l] * x[i + l];
    for (size_t l = 0; i < n; i++, l++)
        p[l] += x[i] * x[i];
    return combine(p);
}

double agg_k_sqdist_f64(const double *a, const double *b, size_t n) {
    double p[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (size_t l = 0; l < LANES; l++) {
            double t = a[i + l] - b[i + l];
            p[l] += t * t;
        }
    for (size_t l = 0; i < n; i++, l++) {
        double t = a[i] - b[i];
        p[l] += t * t;
    }
    return combine(p);
}

static double sqnorm_f32(const float *x, size_t n) {
    double p[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (size_t l = 0; l < LANES; l++) {
            double t = (double)x[i + l];
            p[l] += t * t;
        }
    for (size_t l = 0; i < n; i++, l++) {
        double t = (double)x[i];
        p[l] += t * t;
    }
    return combine(p);
}

static double sqdist_f32_f64(const float *x, const double *v, size_t n) {
    double p[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (size_t l = 0; l < LANES; l++) {
            double t = (double)x[i + l] - v[i + l];
            p[l] += t * t;
        }
    for (size_t l = 0; i < n; i++, l++) {
        double t = (double)x[i] - v[i];
        p[l] += t * t;
    }
    return combine(p);
}

static double sqdist_generic(fc_dtype dt, const void *x, const double *v, size_t n) {
    double p[LANES] = {0};
    for (size_t i = 0; i < n; i++) {
        double t = load_f64(x, dt, i) - (v ? v[i] : 0.0);
        p[i % LANES] += t * t;
    }
    return combine(p);
}

double agg_k_sqnorm(fc_dtype dt, const void *x, size_t n) {
    switch (dt) {
    case FC_DTYPE_F32:
        return sqnorm_f32(x, n);
    case FC_DTYPE_F64:
        return agg_k_sqnorm_f64(x, n);
    default:
        return sqdist_generic(dt, x, NULL, n);
    }
}

double agg_k_sqdist_dt_f64(fc_dtype dt, const void *x, const double *v, size_t n) {
    switch (dt) {
    case FC_DTYPE_F32:
        return sqdist_f32_f64(x, v, n);
    case FC_DTYPE_F64:
        return agg_k_sqdist_f64(x, v, n);
    default:
        return sqdist_generic(dt, x, v, n);
    }
}

/* ---- elementwise ---- */

void agg_k_scale(double *x, double s, size_t n) {
    size_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK)
        for (size_t l = 0; l < BLOCK; l++)
            x[i + l] *= s;
    for (; i < n; i++)
        x[i] *= s;
}

void agg_k_to_f64(fc_dtype dt, const void *restrict src, double *restrict dst, size_t n) {
    switch (dt) {
    case FC_DTYPE_F32: {
        const float *s = src;
        size_t i = 0;
        for (; i + BLOCK <= n; i += BLOCK)
            for (size_t l = 0; l < BLOCK; l++)
                dst[i + l] = (double)s[i + l];
        for (; i < n; i++)
            dst[i] = (double)s[i];
        break;
    }
    case FC_DTYPE_F64:
        memcpy(dst, src, n * sizeof(double));
        break;
    default:
        for (size_t i = 0; i < n; i++)
            dst[i] = load_f64(src, dt, i);
    }
}

void agg_k_f64_to_f32(float *restrict dst, const double *restrict src, size_t n) {
    size_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK)
        for (size_t l = 0; l < BLOCK; l++)
            dst[i + l] = (float)src[i + l];
    for (; i < n; i++)
        dst[i] = (float)src[i];
}

/* ==== Robust-rule kernels (median, trimmed_mean, krum, bulyan, geomed, ida) ====
 * Added by the aggrobust branch below this line. */
