/* rng.h: the seeded random numbers of the example trainer.
 *
 * Generator: xoshiro256** (Blackman & Vigna, 2018), its 256-bit state filled from a 64-bit seed
 * by splitmix64 (Steele, Lea & Flood, 2014), as the xoshiro authors recommend. The integer
 * stream (ex_rng_next, ex_rng_below, ex_rng_shuffle) is bit-exact on every platform. Draws that
 * go through libm (ex_rng_normal, ex_rng_gamma, ex_rng_dirichlet use log, sqrt, pow) are
 * reproducible wherever libm rounds the same way (glibc everywhere we run).
 *
 * This module owns only generator state; it never allocates and never reads the clock.
 */
#ifndef EX_RNG_H
#define EX_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct ex_rng {
    uint64_t s[4];
} ex_rng;

/* One splitmix64 step: advances *state and returns the next output. */
uint64_t ex_splitmix64(uint64_t *state);
/* A seed derived from seed and two stream numbers (e.g. client, round), by splitmix64 mixing, so
 * that independent streams never share a state. */
uint64_t ex_seed_derive(uint64_t seed, uint64_t a, uint64_t b);

void ex_rng_seed(ex_rng *r, uint64_t seed);
uint64_t ex_rng_next(ex_rng *r);
/* Uniform double in [0, 1) with 53 random bits. */
double ex_rng_uniform(ex_rng *r);
/* Uniform integer in [0, n) without modulo bias (rejection); n must be > 0. */
uint64_t ex_rng_below(ex_rng *r, uint64_t n);
/* Fisher-Yates shuffle of n size_t values. */
void ex_rng_shuffle(ex_rng *r, size_t *v, size_t n);
/* Standard normal by the Marsaglia polar method (one value per call; the spare is dropped so
 * that the stream does not depend on call history beyond the state). */
double ex_rng_normal(ex_rng *r);
/* Gamma(shape, 1) by Marsaglia & Tsang (2000). For shape < 1 it draws Gamma(shape + 1) and
 * multiplies by U^(1/shape) (their boost). shape must be finite and > 0; returns a value > 0
 * except for underflow at tiny shapes, where it may return 0. */
double ex_rng_gamma(ex_rng *r, double shape);
/* Dirichlet(alpha, ..., alpha) over k components into out (sums to 1). If every gamma draw
 * underflows to 0 (possible only for tiny alpha), one uniformly chosen component gets 1. */
void ex_rng_dirichlet(ex_rng *r, double alpha, size_t k, double *out);

#endif
