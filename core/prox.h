/* prox.h: the FedProx proximal term for trainers (Li et al., MLSys 2020).
 *
 * FedProx needs nothing on the server except forwarding mu. A trainer minimising
 * F(w) + (mu/2)*||w - w_t||^2 adds mu*(w - w_t) to each gradient, where w_t is the model the task
 * delivered (kept frozen for the whole local training).
 */
#ifndef FC_PROX_H
#define FC_PROX_H

#include <stddef.h>

#include "core/status.h"

/* grad[i] += mu * (w[i] - w_t[i]) for i < n, computed in double and rounded once to f32.
 * mu must be finite and >= 0 (mu = 0 leaves grad unchanged): FC_ERR_INVALID otherwise, or when a
 * pointer is NULL with n > 0; grad is then untouched. Does not allocate; never blocks. */
fc_status fc_prox_add(float *grad, const float *w, const float *w_t, size_t n, double mu);

#endif
