/* attack.h: the Byzantine attacks of the simulator (fedsim --attack), as crafted updates.
 *
 * Formulas (design: aggregators_reference.md section 7). d is the number of parameters; the
 * "honest" updates are the h deltas of the round's honest clients, row after row (h * d f32).
 *   signflip   out = -c * own                     (c = attack param, default 1)
 *   noise      out ~ N(0, sigma^2 I), replacing the client's update (sigma default sqrt(200))
 *   alie       out_j = mean_j - z * std_j over the honest rows, std unbiased (ddof = 1);
 *              default z = Phi^-1((n - f - s) / (n - f)) with s = floor(n/2 + 1) - f
 *              (Baruch et al., "A Little Is Enough", NeurIPS 2019); every attacker sends it.
 *   ipm        out = -eps * mean(honest)          (Xie et al., UAI 2019; eps default 0.1)
 *   labelflip  data poisoning: the attacker trains normally on labels y' = 9 - y.
 * ALIE and IPM are omniscient: they read the honest updates of the same round, as in the papers.
 * Sums are in double; outputs are rounded to f32 once.
 *
 * This module owns only arithmetic; it never allocates, never prints and never
 * touches the aggregation code.
 */
#ifndef EX_ATTACK_H
#define EX_ATTACK_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

typedef enum ex_attack_kind {
    EX_ATTACK_NONE = 0,
    EX_ATTACK_SIGNFLIP,
    EX_ATTACK_NOISE,
    EX_ATTACK_ALIE,
    EX_ATTACK_IPM,
    EX_ATTACK_LABELFLIP,
} ex_attack_kind;

#define EX_ATTACK_NAMES "none, signflip, noise, alie, ipm, labelflip"

/* Name to kind. Errors: FC_ERR_CONFIG naming the text and the known names. */
fc_status ex_attack_parse(const char *name, ex_attack_kind *out, fc_error *err);
const char *ex_attack_name(ex_attack_kind kind);

/* Standard normal quantile Phi^-1(p) for p in (0, 1): Acklam's rational approximation refined
 * by one Halley step on erfc (error near double precision). NaN outside (0, 1). */
double ex_norm_quantile(double p);

/* ALIE's z for n clients of which f are Byzantine. Errors: FC_ERR_INVALID when f >= n or when
 * (n - f - s) / (n - f) is not inside (0, 1) (too many attackers for the formula). */
fc_status ex_alie_z(size_t n, size_t f, double *z, fc_error *err);

/* The attack's default parameter (c, sigma, z from ex_alie_z(n, f), eps; 0 for none and
 * labelflip). Errors: those of ex_alie_z. */
fc_status ex_attack_default_param(ex_attack_kind kind, size_t n, size_t f, double *param,
                                  fc_error *err);

void ex_attack_signflip(const float *own, size_t d, double c, float *out);
/* d draws sigma * N(0, 1) from a generator seeded with seed (ex_rng, ex_rng_normal), in order. */
void ex_attack_noise(uint64_t seed, size_t d, double sigma, float *out);
/* Errors: FC_ERR_INVALID when h < 2 (no unbiased std). */
fc_status ex_attack_alie(const float *honest, size_t h, size_t d, double z, float *out,
                         fc_error *err);
/* Errors: FC_ERR_INVALID when h = 0. */
fc_status ex_attack_ipm(const float *honest, size_t h, size_t d, double eps, float *out,
                        fc_error *err);
/* Label flipping of the 10 digit classes: y -> 9 - y (y must be < 10). */
unsigned ex_attack_flip_label(unsigned y);

#endif
