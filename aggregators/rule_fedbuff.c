/* rule_fedbuff.c: FedBuff (Nguyen et al., AISTATS 2022), the buffer of the daemon's asynchronous
 * mode. Each update is folded with its staleness weight s(tau_i) (agg_staleness_weight), and D is
 * the mean of the buffer: D = (1/k) sum s(tau_i) Delta_i over the k updates (the paper's division
 * by K), or with weighting=examples D = sum s(tau_i) n_i Delta_i / sum n_i. Streaming: one
 * double accumulator of dim elements; it never keeps an update.
 */
#include "aggregators/agg.h"

#include <math.h>

#include "aggregators/kernels.h"
#include "aggregators/rules.h"
#include "core/alloc.h"

enum { P_FN = 0, P_A, P_B, P_WEIGHTING, P_COUNT };
enum { W_UNIFORM = 0, W_EXAMPLES = 1 };

typedef struct fedbuff_state {
    size_t dim;
    agg_staleness_fn fn;
    double a, b;
    int examples;
    double *acc;
    double wsum;      /* k (uniform) or sum n_i (examples) */
    double *used;     /* effective weight s(tau_i) (* n_i) per index, for the report */
    size_t n, cap;
} fedbuff_state;

static const agg_param_spec fedbuff_params[] = {
    {"staleness_fn", AGG_PARAM_ENUM, "poly", 0, 0, "poly|constant|hinge",
     "poly: (1+tau)^-a; constant: 1; hinge: 1 if tau <= b else 1/(a(tau-b)+1)"},
    {"a", AGG_PARAM_DOUBLE, "", 0, 1e6, NULL,
     "exponent of poly (default 0.5) or slope of hinge (default 10)"},
    {"b", AGG_PARAM_DOUBLE, "4", 0, 1e9, NULL, "hinge: staleness up to which the weight is 1"},
    {"weighting", AGG_PARAM_ENUM, "uniform", 0, 0, "uniform|examples",
     "uniform: divide the buffer by its size k; examples: weight by num_examples too"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

double agg_staleness_weight(agg_staleness_fn fn, double a, double b, uint64_t tau) {
    double t = (double)tau;
    switch (fn) {
    case AGG_STALENESS_CONSTANT: return 1.0;
    case AGG_STALENESS_POLY: return pow(1.0 + t, -a);
    case AGG_STALENESS_HINGE: return t <= b ? 1.0 : 1.0 / (a * (t - b) + 1.0);
    }
    return 1.0;
}

static fc_status fedbuff_create(const agg_params *p, const agg_context *ctx, agg_state **out,
                                fc_error *err) {
    agg_value v[P_COUNT];
    fc_status st = agg_params_parse("rule fedbuff", fedbuff_params, p, v, err);
    if (st != FC_OK)
        return st;
    fedbuff_state *s = fc_calloc(1, sizeof *s);
    if (!s || !(s->acc = fc_calloc(ctx->dim ? ctx->dim : 1, sizeof(double)))) {
        fc_free(s);
        return fc_error_set(err, FC_ERR_NOMEM, "rule fedbuff: out of memory for %zu doubles",
                            ctx->dim);
    }
    static const agg_staleness_fn fns[] = {AGG_STALENESS_POLY, AGG_STALENESS_CONSTANT,
                                           AGG_STALENESS_HINGE};
    s->dim = ctx->dim;
    s->fn = fns[v[P_FN].u];
    s->a = v[P_A].set ? v[P_A].d : s->fn == AGG_STALENESS_HINGE ? 10.0 : 0.5;
    s->b = v[P_B].d;
    s->examples = v[P_WEIGHTING].u == W_EXAMPLES;
    *out = (agg_state *)s;
    return FC_OK;
}

static fc_status fedbuff_add(agg_state *st, const agg_update *u, fc_error *err) {
    fedbuff_state *s = (fedbuff_state *)st;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        double *g = fc_realloc(s->used, cap * sizeof *g);
        if (!g)
            return fc_error_set(err, FC_ERR_NOMEM, "rule fedbuff: out of memory for %zu weights",
                                cap);
        s->used = g;
        s->cap = cap;
    }
    double base = s->examples ? u->weight : 1.0;
    double w = agg_staleness_weight(s->fn, s->a, s->b, u->staleness) * base;
    agg_fold_update(s->acc, u, w, s->dim);
    s->used[s->n++] = w;
    s->wsum += base;
    return FC_OK;
}

static fc_status fedbuff_finish(agg_state *st, double *out, agg_report *rep, fc_error *err) {
    fedbuff_state *s = (fedbuff_state *)st;
    if (!(s->wsum > 0))
        return fc_error_set(err, FC_ERR_STATE, "rule fedbuff: total weight is 0");
    double *w = fc_mallocarray(s->n, sizeof *w);
    if (!w)
        return fc_error_set(err, FC_ERR_NOMEM, "rule fedbuff: out of memory for the report");
    for (size_t i = 0; i < s->n; i++)
        w[i] = s->used[i];
    fc_free(rep->weights_used);
    rep->weights_used = w;
    rep->n_weights_used = s->n;
    for (size_t i = 0; i < s->dim; i++)
        out[i] = s->acc[i] / s->wsum;
    return FC_OK;
}

static void fedbuff_destroy(agg_state *st) {
    fedbuff_state *s = (fedbuff_state *)st;
    if (!s)
        return;
    fc_free(s->acc);
    fc_free(s->used);
    fc_free(s);
}

static double *fedbuff_result_buffer(agg_state *st) { return ((fedbuff_state *)st)->acc; }

const agg_rule agg_fedbuff = {
    .version = AGG_RULE_V1,
    .name = "fedbuff",
    .summary = "staleness-weighted mean of an asynchronous buffer ([round] mode = async)",
    .flags = AGG_STREAMING | AGG_USES_WEIGHTS,
    .params = fedbuff_params,
    .check_n = NULL,
    .create = fedbuff_create,
    .add = fedbuff_add,
    .finish = fedbuff_finish,
    .save_state = NULL,
    .load_state = NULL,
    .destroy = fedbuff_destroy,
    .result_buffer = fedbuff_result_buffer,
};
