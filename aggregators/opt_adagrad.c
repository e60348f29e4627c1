/* opt_adagrad.c: FedAdagrad (Reddi et al., ICLR 2021, Alg. 2): m = D (beta1 = 0), v += D^2,
 * w += lr*m/(sqrt(v)+tau), over the shared fedopt engine (opt_fedopt.c). v starts at tau^2.
 */
#include <float.h>

#include "aggregators/opt_fedopt.h"
#include "aggregators/rules.h"

static const agg_param_spec adagrad_params[] = {
    {"lr", AGG_PARAM_DOUBLE, "0.1", 0, DBL_MAX, NULL, "server learning rate"},
    {"tau", AGG_PARAM_DOUBLE, "1e-3", 1e-300, DBL_MAX, NULL, "adaptivity (> 0); v starts at tau^2"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static fc_status adagrad_create(const agg_params *p, size_t dim, agg_opt_state **out,
                                fc_error *err) {
    return fedopt_create(FEDOPT_ADAGRAD, adagrad_params, p, dim, out, err);
}

const agg_opt agg_opt_adagrad = {
    .version = AGG_OPT_V1,
    .name = "adagrad",
    .summary = "FedAdagrad: m = D, v += D^2, w += lr*m/(sqrt(v)+tau)",
    .params = adagrad_params,
    .create = adagrad_create,
    .step = fedopt_step,
    .step_range = fedopt_step_range,
    .save_state = fedopt_save,
    .load_state = fedopt_load,
    .destroy = fedopt_destroy,
};
