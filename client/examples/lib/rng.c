/* rng.c: splitmix64, xoshiro256** and the distributions built on them (see rng.h). It owns no
 * memory and touches nothing but the state it is given. */
#include "client/examples/lib/rng.h"

#include <assert.h>
#include <math.h>

uint64_t ex_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t ex_seed_derive(uint64_t seed, uint64_t a, uint64_t b) {
    uint64_t st = seed;
    uint64_t h = ex_splitmix64(&st);
    st = h ^ a;
    h = ex_splitmix64(&st);
    st = h ^ b;
    return ex_splitmix64(&st);
}

void ex_rng_seed(ex_rng *r, uint64_t seed) {
    uint64_t st = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = ex_splitmix64(&st);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t ex_rng_next(ex_rng *r) {
    uint64_t *s = r->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double ex_rng_uniform(ex_rng *r) { return (double)(ex_rng_next(r) >> 11) * 0x1.0p-53; }

uint64_t ex_rng_below(ex_rng *r, uint64_t n) {
    assert(n > 0);
    /* Accept only draws below the largest multiple of n, so every residue is equally likely. */
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = ex_rng_next(r);
    while (x >= limit);
    return x % n;
}

void ex_rng_shuffle(ex_rng *r, size_t *v, size_t n) {
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)ex_rng_below(r, i);
        size_t t = v[i - 1];
        v[i - 1] = v[j];
        v[j] = t;
    }
}

double ex_rng_normal(ex_rng *r) {
    double u, v, s;
    do {
        u = 2.0 * ex_rng_uniform(r) - 1.0;
        v = 2.0 * ex_rng_uniform(r) - 1.0;
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    return u * sqrt(-2.0 * log(s) / s);
}

double ex_rng_gamma(ex_rng *r, double shape) {
    assert(isfinite(shape) && shape > 0);
    if (shape < 1.0) {
        /* Boost: if G ~ Gamma(a+1) and U ~ U(0,1), G * U^(1/a) ~ Gamma(a). 1 - uniform is in
         * (0, 1], so pow never sees 0. */
        double g = ex_rng_gamma(r, shape + 1.0);
        double u = 1.0 - ex_rng_uniform(r);
        return g * pow(u, 1.0 / shape);
    }
    const double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x, v;
        do {
            x = ex_rng_normal(r);
            v = 1.0 + c * x;
        } while (v <= 0.0);
        v = v * v * v;
        double u = 1.0 - ex_rng_uniform(r); /* (0, 1] keeps log finite */
        if (u < 1.0 - 0.0331 * (x * x) * (x * x))
            return d * v;
        if (log(u) < 0.5 * x * x + d * (1.0 - v + log(v)))
            return d * v;
    }
}

void ex_rng_dirichlet(ex_rng *r, double alpha, size_t k, double *out) {
    double sum = 0;
    for (size_t i = 0; i < k; i++) {
        out[i] = ex_rng_gamma(r, alpha);
        sum += out[i];
    }
    if (sum > 0) {
        for (size_t i = 0; i < k; i++)
            out[i] /= sum;
        return;
    }
    size_t pick = k ? (size_t)ex_rng_below(r, k) : 0;
    for (size_t i = 0; i < k; i++)
        out[i] = i == pick ? 1.0 : 0.0;
}
