/* rule_fedavg.c: FedAvg (McMahan et al. 2017). D = sum n_i Delta_i / sum n_i, or the uniform
 * mean. Streaming: one double accumulator of dim elements. It never keeps an update.
 */
#include "aggregators/agg.h"

#include "aggregators/kernels.h"
#include "aggregators/rules.h"
#include "core/alloc.h"

enum { W_EXAMPLES = 0, W_UNIFORM = 1 };

typedef struct fedavg_state {
    size_t dim;
    int uniform;
    double *acc;
    double wsum;
    size_t n;
} fedavg_state;

static const agg_param_spec fedavg_params[] = {
    {"weighting", AGG_PARAM_ENUM, "examples", 0, 0, "examples|uniform",
     "examples: weight by num_examples; uniform: plain mean"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static fc_status fedavg_create(const agg_params *p, const agg_context *ctx, agg_state **out,
                               fc_error *err) {
    agg_value v[1];
    fc_status st = agg_params_parse("rule fedavg", fedavg_params, p, v, err);
    if (st != FC_OK)
        return st;
    fedavg_state *s = fc_calloc(1, sizeof *s);
    if (!s || !(s->acc = fc_calloc(ctx->dim, sizeof(double)))) {
        fc_free(s);
        return fc_error_set(err, FC_ERR_NOMEM, "rule fedavg: out of memory for %zu doubles",
                            ctx->dim);
    }
    s->dim = ctx->dim;
    s->uniform = v[0].u == W_UNIFORM;
    *out = (agg_state *)s;
    return FC_OK;
}

static fc_status fedavg_add(agg_state *st, const agg_update *u, fc_error *err) {
    fedavg_state *s = (fedavg_state *)st;
    (void)err;
    double w = s->uniform ? 1.0 : u->weight;
    agg_fold_update(s->acc, u, w, s->dim);
    s->wsum += w;
    s->n++;
    return FC_OK;
}

static fc_status fedavg_finish(agg_state *st, double *out, agg_report *rep, fc_error *err) {
    fedavg_state *s = (fedavg_state *)st;
    (void)rep;
    if (!(s->wsum > 0))
        return fc_error_set(err, FC_ERR_STATE, "rule fedavg: total weight is 0");
    for (size_t i = 0; i < s->dim; i++)
        out[i] = s->acc[i] / s->wsum;
    return FC_OK;
}

static void fedavg_destroy(agg_state *st) {
    fedavg_state *s = (fedavg_state *)st;
    if (!s)
        return;
    fc_free(s->acc);
    fc_free(s);
}

static double *fedavg_result_buffer(agg_state *st) { return ((fedavg_state *)st)->acc; }

const agg_rule agg_fedavg = {
    .version = AGG_RULE_V1,
    .name = "fedavg",
    .summary = "weighted (num_examples) or uniform mean of the deltas",
    .flags = AGG_STREAMING | AGG_USES_WEIGHTS,
    .params = fedavg_params,
    .check_n = NULL,
    .create = fedavg_create,
    .add = fedavg_add,
    .finish = fedavg_finish,
    .save_state = NULL,
    .load_state = NULL,
    .destroy = fedavg_destroy,
    .result_buffer = fedavg_result_buffer,
};
