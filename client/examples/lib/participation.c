/* participation.c: the data-tied Bernoulli participation of the FedAU experiment (see
 * participation.h). */
#include "client/examples/lib/participation.h"

#include <math.h>

#include "client/examples/lib/rng.h"

static double clamp_mean(const double *raw, size_t n, double c, double p_min) {
    double sum = 0;
    for (size_t j = 0; j < n; j++) {
        double p = c * raw[j];
        sum += p < p_min ? p_min : p > 1 ? 1 : p;
    }
    return sum / (double)n;
}

fc_status ex_participation_probs(const ex_dataset *d, const ex_split *s, double p_mean,
                                 double p_min, double *p, fc_error *err) {
    if (!(p_mean > 0 && p_mean <= 1) || !(p_min > 0 && p_min <= 1))
        return fc_error_set(err, FC_ERR_CONFIG,
                            "participation: p_mean %g and p_min %g must be in (0, 1]", p_mean,
                            p_min);
    if (p_min > p_mean)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "participation: p_min %g exceeds p_mean %g", p_min, p_mean);
    size_t n = s->clients;
    for (size_t j = 0; j < n; j++) { /* raw share of digits 5..9, kept in p for now */
        const ex_client_split *c = &s->client[j];
        size_t high = 0;
        for (size_t i = 0; i < c->n_train; i++)
            high += d->y[c->train[i]] >= 5;
        p[j] = c->n_train ? (double)high / (double)c->n_train : 0;
    }
    if (clamp_mean(p, n, 1e12, p_min) < p_mean)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "participation: mean %g cannot be reached (too few clients hold "
                            "digits 5..9)", p_mean);
    double lo = 0, hi = 1e12;
    for (int it = 0; it < 200; it++) { /* the mean is non-decreasing in c */
        double mid = 0.5 * (lo + hi);
        if (clamp_mean(p, n, mid, p_min) < p_mean)
            lo = mid;
        else
            hi = mid;
    }
    for (size_t j = 0; j < n; j++) {
        double v = hi * p[j];
        p[j] = v < p_min ? p_min : v > 1 ? 1 : v;
    }
    return FC_OK;
}

int ex_participates(uint64_t seed, size_t j, size_t t, double p) {
    ex_rng r;
    ex_rng_seed(&r, ex_seed_derive(seed ^ EX_PART_STREAM, 1 + (uint64_t)j, (uint64_t)t));
    return ex_rng_uniform(&r) < p;
}

void ex_oracle_aggregate(const float *delta, const uint8_t *in, const double *p, size_t C,
                         size_t P, double *D) {
    for (size_t i = 0; i < P; i++)
        D[i] = 0;
    for (size_t j = 0; j < C; j++)
        for (size_t i = 0; in[j] && i < P; i++)
            D[i] += (double)delta[j * P + i] / p[j] / (double)C;
}
