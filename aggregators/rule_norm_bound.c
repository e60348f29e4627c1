/* rule_norm_bound.c: norm bounding. Each delta is scaled by min(1, max_norm/||Delta_i||), then
 * averaged as fedavg does (weighting examples|uniform). Streaming: one norm pass and one fold per
 * update, O(dim) memory. It never keeps an update.
 */
#include "aggregators/agg.h"

#include <float.h>
#include <math.h>

#include "aggregators/kernels.h"
#include "aggregators/rules.h"
#include "core/alloc.h"

typedef struct norm_bound_state {
    size_t dim;
    int uniform;
    double max_norm;
    double *acc;
    double wsum;
    uint64_t clipped;
} norm_bound_state;

static const agg_param_spec norm_bound_params[] = {
    {"max_norm", AGG_PARAM_DOUBLE, NULL, 1e-300, DBL_MAX, NULL,
     "L2 norm bound for each delta (> 0)"},
    {"weighting", AGG_PARAM_ENUM, "examples", 0, 0, "examples|uniform",
     "examples: weight by num_examples; uniform: plain mean"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static fc_status nb_create(const agg_params *p, const agg_context *ctx, agg_state **out,
                           fc_error *err) {
    agg_value v[2];
    fc_status st = agg_params_parse("rule norm_bound", norm_bound_params, p, v, err);
    if (st != FC_OK)
        return st;
    norm_bound_state *s = fc_calloc(1, sizeof *s);
    if (!s || !(s->acc = fc_calloc(ctx->dim, sizeof(double)))) {
        fc_free(s);
        return fc_error_set(err, FC_ERR_NOMEM, "rule norm_bound: out of memory for %zu doubles",
                            ctx->dim);
    }
    s->dim = ctx->dim;
    s->max_norm = v[0].d;
    s->uniform = v[1].u == 1;
    *out = (agg_state *)s;
    return FC_OK;
}

static fc_status nb_add(agg_state *st, const agg_update *u, fc_error *err) {
    norm_bound_state *s = (norm_bound_state *)st;
    (void)err;
    double w = s->uniform ? 1.0 : u->weight;
    double norm = sqrt(agg_k_sqnorm(u->dtype, u->data, s->dim));
    double scale = 1.0;
    if (norm > s->max_norm) {
        scale = s->max_norm / norm;
        s->clipped++;
    }
    agg_fold_update(s->acc, u, w * scale, s->dim);
    s->wsum += w;
    return FC_OK;
}

static fc_status nb_finish(agg_state *st, double *out, agg_report *rep, fc_error *err) {
    norm_bound_state *s = (norm_bound_state *)st;
    if (!(s->wsum > 0))
        return fc_error_set(err, FC_ERR_STATE, "rule norm_bound: total weight is 0");
    for (size_t i = 0; i < s->dim; i++)
        out[i] = s->acc[i] / s->wsum;
    rep->clipped = s->clipped;
    return FC_OK;
}

static void nb_destroy(agg_state *st) {
    norm_bound_state *s = (norm_bound_state *)st;
    if (!s)
        return;
    fc_free(s->acc);
    fc_free(s);
}

const agg_rule agg_norm_bound = {
    .version = AGG_RULE_V1,
    .name = "norm_bound",
    .summary = "clip each delta to L2 norm max_norm, then fedavg",
    .flags = AGG_STREAMING | AGG_USES_WEIGHTS,
    .params = norm_bound_params,
    .check_n = NULL,
    .create = nb_create,
    .add = nb_add,
    .finish = nb_finish,
    .save_state = NULL,
    .load_state = NULL,
    .destroy = nb_destroy,
};
