/* opt_yogi.c: FedYogi (Reddi et al., ICLR 2021, Alg. 2): the yogi table over the shared fedopt
 * engine (opt_fedopt.c). No bias correction; m starts at 0, v at tau^2.
 */
#include <float.h>

#include "aggregators/opt_fedopt.h"
#include "aggregators/rules.h"

static const agg_param_spec yogi_params[] = {
    {"lr", AGG_PARAM_DOUBLE, "0.01", 0, DBL_MAX, NULL, "server learning rate"},
    {"beta1", AGG_PARAM_DOUBLE, "0.9", 0, 1, NULL, "first-moment decay"},
    {"beta2", AGG_PARAM_DOUBLE, "0.99", 0, 1, NULL, "second-moment decay"},
    {"tau", AGG_PARAM_DOUBLE, "1e-3", 1e-300, DBL_MAX, NULL, "adaptivity (> 0); v starts at tau^2"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static fc_status yogi_create(const agg_params *p, size_t dim, agg_opt_state **out, fc_error *err) {
    return fedopt_create(FEDOPT_YOGI, yogi_params, p, dim, out, err);
}

const agg_opt agg_opt_yogi = {
    .version = AGG_OPT_V1,
    .name = "yogi",
    .summary = "FedYogi: as adam with v -= (1-beta2)*D^2*sign(v-D^2)",
    .params = yogi_params,
    .create = yogi_create,
    .step = fedopt_step,
    .step_range = fedopt_step_range,
    .save_state = fedopt_save,
    .load_state = fedopt_load,
    .destroy = fedopt_destroy,
};
