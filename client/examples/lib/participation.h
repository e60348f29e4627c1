/* participation.h: who takes part in a simulated round when clients come and go at their own,
 * unknown rates (the FedAU experiment, docs/experiments/fedau.md).
 *
 * Each client j has a Bernoulli probability p_j, tied to its data as in the FedAU paper's setup:
 * raw_j is the share of client j's training labels in 5..9, and p_j = clamp(c * raw_j, p_min, 1)
 * with the one c > 0 that makes the mean of p equal p_mean (found by bisection). Clients that
 * hold mostly digits 0..4 therefore take part rarely, which biases a plain average over the
 * participants towards digits 5..9. Client j takes part in round t when a uniform draw from a
 * generator seeded by ex_seed_derive(seed ^ EX_PART_STREAM, 1 + j, t) is below p_j. It never
 * prints and never allocates.
 */
#ifndef EX_PARTICIPATION_H
#define EX_PARTICIPATION_H

#include <stddef.h>
#include <stdint.h>

#include "client/examples/lib/digits.h"
#include "client/examples/lib/split.h"
#include "core/status.h"

/* Mixed into the seed of the participation draws so that they never share a stream with
 * training or the split. */
#define EX_PART_STREAM 0x5041525449ull

/* p[j] for every client of s (s->clients values). FC_ERR_CONFIG when p_min or p_mean is outside
 * (0, 1], p_min > p_mean, or no c reaches p_mean (every client holds only digits 0..4). */
fc_status ex_participation_probs(const ex_dataset *d, const ex_split *s, double p_mean,
                                 double p_min, double *p, fc_error *err);

/* 1 if client j takes part in round t (0-based) with probability p. */
int ex_participates(uint64_t seed, size_t j, size_t t, double p);

/* The "known probability" oracle: D[i] = (1/C) * sum over clients j with in[j] of
 * delta[j*P + i] / p[j], for C clients of P values each (D has P doubles). */
void ex_oracle_aggregate(const float *delta, const uint8_t *in, const double *p, size_t C,
                         size_t P, double *D);

#endif
