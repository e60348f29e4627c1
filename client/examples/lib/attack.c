/* attack.c: crafted Byzantine updates for the simulator (see attack.h). Pure arithmetic over
 * caller-owned buffers; it never allocates and never prints. */
#include "client/examples/lib/attack.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#include "client/examples/lib/digits.h"
#include "client/examples/lib/rng.h"

static const char *const NAMES[] = {"none", "signflip", "noise", "alie", "ipm", "labelflip"};

fc_status ex_attack_parse(const char *name, ex_attack_kind *out, fc_error *err) {
    for (size_t i = 0; name && i < sizeof NAMES / sizeof NAMES[0]; i++) {
        if (strcmp(name, NAMES[i]) == 0) {
            *out = (ex_attack_kind)i;
            return FC_OK;
        }
    }
    return fc_error_set(err, FC_ERR_CONFIG, "unknown attack '%s'; known: %s",
                        name ? name : "(none)", EX_ATTACK_NAMES);
}

const char *ex_attack_name(ex_attack_kind kind) {
    size_t i = (size_t)kind;
    return i < sizeof NAMES / sizeof NAMES[0] ? NAMES[i] : "?";
}

double ex_norm_quantile(double p) {
    /* P. J. Acklam, "An algorithm for computing the inverse normal cumulative distribution
     * function" (2003): relative error below 1.15e-9, then one Halley step. */
    static const double a[6] = {-3.969683028665376e+01, 2.209460984245205e+02,
                                -2.759285104469687e+02, 1.383577518672690e+02,
                                -3.066479806614716e+01, 2.506628277459239e+00};
    static const double b[5] = {-5.447609879822406e+01, 1.615858368580409e+02,
                                -1.556989798598866e+02, 6.680131188771972e+01,
                                -1.328068155288572e+01};
    static const double c[6] = {-7.784894002430293e-03, -3.223964580411365e-01,
                                -2.400758277161838e+00, -2.549732539343734e+00,
                                4.374664141464968e+00, 2.938163982698783e+00};
    static const double d[4] = {7.784695709041462e-03, 3.224671290700398e-01,
                                2.445134137142996e+00, 3.754408661907416e+00};
    const double p_low = 0.02425;
    if (!(p > 0.0 && p < 1.0))
        return NAN;
    double x;
    if (p < p_low || p > 1.0 - p_low) {
        double q = sqrt(-2.0 * log(p < p_low ? p : 1.0 - p));
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0);
        if (p > 1.0 - p_low)
            x = -x;
    } else {
        double q = p - 0.5, r = q * q;
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0);
    }
    double e = 0.5 * erfc(-x / sqrt(2.0)) - p;
    double u = e * sqrt(2.0 * M_PI) * exp(x * x / 2.0);
    return x - u / (1.0 + x * u / 2.0);
}

fc_status ex_alie_z(size_t n, size_t f, double *z, fc_error *err) {
    if (f >= n)
        return fc_error_set(err, FC_ERR_INVALID, "alie: %zu attackers of %zu clients leave no "
                            "honest client", f, n);
    /* s = floor(n/2 + 1) - f, as a signed count: it is <= 0 once f reaches half of n. */
    long long s = (long long)(n / 2 + 1) - (long long)f;
    double p = (double)((long long)(n - f) - s) / (double)(n - f);
    if (!(p > 0.0 && p < 1.0))
        return fc_error_set(err, FC_ERR_INVALID,
                            "alie: default z needs (n-f-s)/(n-f) in (0, 1), got %g for n = %zu, "
                            "f = %zu (s = %lld); give z with --attack-param", p, n, f, s);
    *z = ex_norm_quantile(p);
    return FC_OK;
}

fc_status ex_attack_default_param(ex_attack_kind kind, size_t n, size_t f, double *param,
                                  fc_error *err) {
    switch (kind) {
    case EX_ATTACK_SIGNFLIP: *param = 1.0; return FC_OK;
    case EX_ATTACK_NOISE: *param = sqrt(200.0); return FC_OK;
    case EX_ATTACK_ALIE: return ex_alie_z(n, f, param, err);
    case EX_ATTACK_IPM: *param = 0.1; return FC_OK;
    case EX_ATTACK_NONE:
    case EX_ATTACK_LABELFLIP: *param = 0.0; return FC_OK;
    }
    return fc_error_set(err, FC_ERR_INVALID, "attack kind %d is not known", (int)kind);
}

void ex_attack_signflip(const float *own, size_t d, double c, float *out) {
    for (size_t j = 0; j < d; j++)
        out[j] = (float)(-c * (double)own[j]);
}

void ex_attack_noise(uint64_t seed, size_t d, double sigma, float *out) {
    ex_rng rng;
    ex_rng_seed(&rng, seed);
    for (size_t j = 0; j < d; j++)
        out[j] = (float)(sigma * ex_rng_normal(&rng));
}

fc_status ex_attack_alie(const float *honest, size_t h, size_t d, double z, float *out,
                         fc_error *err) {
    if (h < 2)
        return fc_error_set(err, FC_ERR_INVALID, "alie needs at least 2 honest updates for an "
                            "unbiased std, got %zu", h);
    for (size_t j = 0; j < d; j++) {
        double sum = 0;
        for (size_t i = 0; i < h; i++)
            sum += honest[i * d + j];
        double mean = sum / (double)h, ss = 0;
        for (size_t i = 0; i < h; i++) {
            double dev = honest[i * d + j] - mean;
            ss += dev * dev;
        }
        out[j] = (float)(mean - z * sqrt(ss / (double)(h - 1)));
    }
    return FC_OK;
}

fc_status ex_attack_ipm(const float *honest, size_t h, size_t d, double eps, float *out,
                        fc_error *err) {
    if (h == 0)
        return fc_error_set(err, FC_ERR_INVALID, "ipm needs at least 1 honest update, got 0");
    for (size_t j = 0; j < d; j++) {
        double sum = 0;
        for (size_t i = 0; i < h; i++)
            sum += honest[i * d + j];
        out[j] = (float)(-eps * (sum / (double)h));
    }
    return FC_OK;
}

unsigned ex_attack_flip_label(unsigned y) {
    assert(y < EX_DIGITS_CLASSES);
    return EX_DIGITS_CLASSES - 1 - y;
}
