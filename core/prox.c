/* prox.c: the FedProx proximal gradient term (see prox.h). Pure arithmetic on caller-owned
 * arrays; it never allocates and never keeps a pointer.
 */
#include "core/prox.h"

#include <math.h>

fc_status fc_prox_add(float *grad, const float *w, const float *w_t, size_t n, double mu) {
    if (!isfinite(mu) || mu < 0)
        return FC_ERR_INVALID;
    if (n > 0 && (!grad || !w || !w_t))
        return FC_ERR_INVALID;
    if (mu == 0)
        return FC_OK;
    for (size_t i = 0; i < n; i++)
        grad[i] = (float)((double)grad[i] + mu * ((double)w[i] - (double)w_t[i]));
    return FC_OK;
}
