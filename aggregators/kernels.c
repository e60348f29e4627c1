/* kernels.c: the numeric inner loops (see kernels.h). It owns arithmetic only: no allocation,
 * no error reporting, no knowledge of rules. Loops are written so that gcc vectorises them at
 * -O2; reductions use a fixed number of independent partial sums so that they vectorise without
 * -ffast-math and still give the same bits for the same n.
 */
#include "aggregators/kernels.h"

#include <assert.h>
#include <stdlib.h>
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

/* ---- robust rules ---- */

void agg_k_to_f32(fc_dtype dt, const void *restrict src, float *restrict dst, size_t n) {
    switch (dt) {
    case FC_DTYPE_F32:
        memcpy(dst, src, n * sizeof(float));
        break;
    case FC_DTYPE_BF16: {
        const uint16_t *h = src;
        for (size_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)h[i] << 16;
            memcpy(&dst[i], &bits, sizeof bits);
        }
        break;
    }
    case FC_DTYPE_F16: {
        const uint16_t *h = src;
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)agg_k_f16_to_f64(h[i]); /* exact: every f16 is an f32 */
        break;
    }
    default:
        assert(0 && "agg_k_to_f32: f32, f16 or bf16 only");
    }
}

/* Batcher's odd-even merge sort for the next power of two P >= n, leaving out every comparator
 * that touches a position >= n. That is exact: think of positions >= n as +Inf; they never move,
 * so those comparators never change anything. */
static size_t sortnet_emit(size_t n, uint32_t *pairs) {
    size_t P = 1, count = 0;
    while (P < n)
        P <<= 1;
    for (size_t p = 1; p < P; p <<= 1)
        for (size_t k = p; k >= 1; k >>= 1) {
            for (size_t j = k % p; j + k < n; j += 2 * k)
                for (size_t i = 0; i < k && i + j + k < n; i++)
                    if ((i + j) / (2 * p) == (i + j + k) / (2 * p)) {
                        if (pairs) {
                            pairs[2 * count] = (uint32_t)(i + j);
                            pairs[2 * count + 1] = (uint32_t)(i + j + k);
                        }
                        count++;
                    }
            if (k == 1)
                break;
        }
    return count;
}

size_t agg_k_sortnet_count(size_t n) { return sortnet_emit(n, NULL); }

size_t agg_k_sortnet_build(size_t n, size_t lo, size_t hi, uint32_t *pairs, unsigned char *live) {
    assert(lo < hi && hi <= n && n < ((size_t)1 << 31));
    size_t total = sortnet_emit(n, pairs);
    /* Backwards: a comparator matters iff one of its outputs is live; then both inputs are. */
    memset(live, 0, n);
    memset(live + lo, 1, hi - lo);
    size_t kept = 0;
    for (size_t c = total; c-- > 0;) {
        uint32_t a = pairs[2 * c], b = pairs[2 * c + 1];
        if (live[a] || live[b]) {
            live[a] = live[b] = 1;
            pairs[2 * c] = a | 0x80000000u; /* mark kept; positions are < 2^31 here */
            kept++;
        }
    }
    size_t w = 0;
    for (size_t c = 0; c < total; c++)
        if (pairs[2 * c] & 0x80000000u) {
            pairs[2 * w] = pairs[2 * c] & 0x7fffffffu;
            pairs[2 * w + 1] = pairs[2 * c + 1];
            w++;
        }
    assert(w == kept);
    return kept;
}

/* Comparator networks. `x < y ? x : y` on finite values is exactly what minps/maxps compute,
 * but gcc only emits them when told that no NaN occurs (true: the driver drops non-finite
 * updates) and that the sign of a zero may follow either operand (it never changes a value);
 * ivdep says rows a and b of one comparator never overlap (a < b). AVX2 clones are picked at
 * load time on CPUs that have it. */
#if defined(__clang__)
/* clang has no optimize attribute and emits min/max for these loops without it. clang 14 does
 * not emit target_clones functions that are only called from other files (undefined symbols at
 * link time), so clang builds (the fuzzers) get the portable version only. */
#define NET_ATTRS
#define CLONE_ATTRS
#define NET_IVDEP
#else
#define CLONE_ATTRS __attribute__((target_clones("avx2", "default")))
#define NET_ATTRS                                                                                  \
    __attribute__((target_clones("avx2", "default"),                                               \
                   optimize("finite-math-only", "no-signed-zeros")))
#define NET_IVDEP _Pragma("GCC ivdep")
#endif

NET_ATTRS void agg_k_sortnet_f32(float *blk, const uint32_t *pairs, size_t npairs) {
    for (size_t k = 0; k < npairs; k++) {
        float *a = blk + (size_t)pairs[2 * k] * AGG_K_COLS;
        float *b = blk + (size_t)pairs[2 * k + 1] * AGG_K_COLS;
        NET_IVDEP
        for (size_t c = 0; c < AGG_K_COLS; c++) {
            float x = a[c], y = b[c];
            a[c] = x < y ? x : y;
            b[c] = x < y ? y : x;
        }
    }
}

NET_ATTRS void agg_k_sortnet_f64(double *blk, const uint32_t *pairs, size_t npairs) {
    for (size_t k = 0; k < npairs; k++) {
        double *a = blk + (size_t)pairs[2 * k] * AGG_K_COLS;
        double *b = blk + (size_t)pairs[2 * k + 1] * AGG_K_COLS;
        NET_IVDEP
        for (size_t c = 0; c < AGG_K_COLS; c++) {
            double x = a[c], y = b[c];
            a[c] = x < y ? x : y;
            b[c] = x < y ? y : x;
        }
    }
}

void agg_k_rowsum_f32(const float *blk, size_t lo, size_t hi, double *out) {
    for (size_t c = 0; c < AGG_K_COLS; c++)
        out[c] = 0.0;
    for (size_t r = lo; r < hi; r++) {
        const float *row = blk + r * AGG_K_COLS;
        for (size_t c = 0; c < AGG_K_COLS; c++)
            out[c] += (double)row[c];
    }
}

void agg_k_rowsum_f64(const double *blk, size_t lo, size_t hi, double *out) {
    for (size_t c = 0; c < AGG_K_COLS; c++)
        out[c] = 0.0;
    for (size_t r = lo; r < hi; r++) {
        const double *row = blk + r * AGG_K_COLS;
        for (size_t c = 0; c < AGG_K_COLS; c++)
            out[c] += row[c];
    }
}

static inline double sqdist8(const double *restrict a, const double *restrict b, size_t w) {
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (size_t c = 0; c < w; c += 8)
        for (size_t l = 0; l < 8; l++) {
            double t = a[c + l] - b[c + l];
            s[l] += t * t;
        }
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

CLONE_ATTRS void
agg_k_pairdist_f64(const double *x, size_t n, size_t stride, size_t w, double *dist) {
    assert(w % 8 == 0);
    for (size_t a = 0; a < n; a++)
        for (size_t b = a + 1; b < n; b++)
            dist[a * n + b] += sqdist8(x + a * stride, x + b * stride, w);
}

static int cmp_double(const void *pa, const void *pb) {
    double a = *(const double *)pa, b = *(const double *)pb;
    return (a > b) - (a < b);
}

double agg_k_sum_smallest(double *v, size_t m, size_t k) {
    assert(k <= m);
    qsort(v, m, sizeof *v, cmp_double);
    double s = 0.0;
    for (size_t i = 0; i < k; i++)
        s += v[i];
    return s;
}

/* Position in selection order of the (skip+1)-th value equal to x. */
static size_t nth_position(const double *orig, size_t stride, size_t theta, double x, size_t skip) {
    for (size_t i = 0; i < theta; i++)
        if (orig[i * stride] == x && skip-- == 0)
            return i;
    assert(0 && "value not in column");
    return theta;
}

double agg_k_closest_mean_f64(const double *sorted, const double *orig, size_t stride, size_t theta,
                              size_t beta, size_t *lo_out) {
    assert(beta >= 1 && beta <= theta);
#define S(i) sorted[(size_t)(i)*stride]
    size_t m = theta / 2;
    double med = (theta & 1) ? S(m) : 0.5 * (S(m - 1) + S(m));
    /* Every value left of m is <= med and every value from m on is >= med, so the beta closest
     * values form a window [l, r) of the sorted column. Keeping the beta smallest keys
     * (distance, selection position) is the same as dropping the theta-beta largest, so take
     * whichever walk is shorter: grow the window from m, or shrink it from [0, theta). Copies of
     * one value are kept earliest-selected first (and dropped latest-selected first). */
    size_t l, r;
    if (beta <= theta - beta) {
        l = r = m;
        while (r - l < beta) {
            int take_left;
            if (l == 0)
                take_left = 0;
            else if (r == theta)
                take_left = 1;
            else {
                double dl = med - S(l - 1), dr = S(r) - med;
                if (dl != dr)
                    take_left = dl < dr;
                else if (S(l - 1) == S(r))
                    take_left = 1; /* same value: which copy does not change the mean */
                else {
                    /* Equal distance, different values: the earlier selected wins. The
                     * candidate of each side is the next unused copy in selection order. */
                    double vl = S(l - 1), vr = S(r);
                    size_t used_l = 0, used_r = 0;
                    for (size_t i = l; i < r; i++) {
                        used_l += S(i) == vl;
                        used_r += S(i) == vr;
                    }
                    take_left = nth_position(orig, stride, theta, vl, used_l) <
                                nth_position(orig, stride, theta, vr, used_r);
                }
            }
            if (take_left)
                l--;
            else
                r++;
        }
    } else {
        l = 0;
        r = theta;
        while (r - l > beta) {
            double dl = med - S(l), dr = S(r - 1) - med;
            int drop_left;
            if (dl != dr)
                drop_left = dl > dr;
            else if (S(l) == S(r - 1))
                drop_left = 1; /* same value: which copy does not change the mean */
            else {
                /* Equal distance, different values: the later selected goes. The candidate of
                 * each side is the latest-selected copy still kept, i.e. the kept-th copy. */
                double vl = S(l), vr = S(r - 1);
                size_t kept_l = 0, kept_r = 0;
                for (size_t i = l; i < r; i++) {
                    kept_l += S(i) == vl;
                    kept_r += S(i) == vr;
                }
                drop_left = nth_position(orig, stride, theta, vl, kept_l - 1) >
                            nth_position(orig, stride, theta, vr, kept_r - 1);
            }
            if (drop_left)
                l++;
            else
                r--;
        }
    }
    double sum = 0.0;
    for (size_t i = l; i < r; i++)
        sum += S(i);
#undef S
    if (lo_out)
        *lo_out = l;
    return sum / (double)beta;
}
