/* rule_trimmed_mean.c: the coordinate-wise trimmed mean (Yin et al., ICML 2018). Per
 * coordinate, the k lowest and k highest values are dropped and the rest averaged. k = trim if
 * set, else floor(beta*n + 1e-9) (the 1e-9 keeps 0.29*100 at 29, where plain floor gives 28).
 * Needs n - 2k >= 1. Weights are ignored. Retaining, coordinate blocks like median.
 */
#include "aggregators/agg.h"

#include <math.h>

#include "aggregators/robust.h"
#include "aggregators/rules.h"
#include "core/alloc.h"

typedef struct trimmed_state {
    agg_rb_base base;
    int trim_set;
    uint64_t trim;
    double beta;
} trimmed_state;

static const agg_param_spec trimmed_params[] = {
    {"trim", AGG_PARAM_UINT, "", 0, 4294967295.0, NULL,
     "values k dropped at each end per coordinate (overrides beta)"},
    {"beta", AGG_PARAM_DOUBLE, "0.2", 0, 0.5, NULL,
     "fraction trimmed at each end: k = floor(beta*n + 1e-9)"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static uint64_t trim_count(const trimmed_state *s, size_t n) {
    if (s->trim_set)
        return s->trim;
    return (uint64_t)floor(s->beta * (double)n + 1e-9);
}

static fc_status trimmed_check_n(const agg_state *st, size_t n, fc_error *err) {
    const trimmed_state *s = (const trimmed_state *)st;
    uint64_t k = trim_count(s, n);
    if (k > n / 2 || n - 2 * k < 1)
        return fc_error_set(err, FC_ERR_REQUIREMENT,
                            "trimmed_mean with %s%s needs n - 2k >= 1, got n = %zu and k = %llu",
                            s->trim_set ? "trim" : "beta",
                            s->trim_set ? "" : " (k = floor(beta*n))", n, (unsigned long long)k);
    return FC_OK;
}

static fc_status trimmed_create(const agg_params *p, const agg_context *ctx, agg_state **out,
                                fc_error *err) {
    *out = NULL;
    agg_value v[2];
    fc_status st = agg_params_parse("rule trimmed_mean", trimmed_params, p, v, err);
    if (st != FC_OK)
        return st;
    trimmed_state *s = fc_calloc(1, sizeof *s);
    if (s == NULL)
        return fc_error_set(err, FC_ERR_NOMEM, "rule trimmed_mean: out of memory");
    s->trim_set = v[0].set;
    s->trim = v[0].u;
    s->beta = v[1].d;
    if ((st = agg_rb_base_init(&s->base, ctx, "trimmed_mean", err)) != FC_OK) {
        fc_free(s);
        return st;
    }
    *out = (agg_state *)s;
    return FC_OK;
}

static fc_status trimmed_add(agg_state *st, const agg_update *u, fc_error *err) {
    return agg_rb_base_add(&((trimmed_state *)st)->base, u, "trimmed_mean", err);
}

static fc_status trimmed_finish(agg_state *st, double *out, agg_report *rep, fc_error *err) {
    trimmed_state *s = (trimmed_state *)st;
    size_t n = agg_spool_rows(s->base.spool);
    fc_status rc = trimmed_check_n(st, n, err);
    if (rc != FC_OK)
        return rc;
    if ((rc = agg_rb_base_seal(&s->base, "trimmed_mean", err)) != FC_OK)
        return rc;
    size_t k = (size_t)trim_count(s, n);
    rc =
        agg_rb_coordwise(s->base.spool, NULL, 0, AGG_RB_TRIMMED, k, out, NULL, "trimmed_mean", err);
    if (rc != FC_OK)
        return rc;
    rep->trimmed_low = k;
    rep->trimmed_high = k;
    return FC_OK;
}

static void trimmed_destroy(agg_state *st) {
    trimmed_state *s = (trimmed_state *)st;
    if (s == NULL)
        return;
    agg_rb_base_free(&s->base);
    fc_free(s);
}

const agg_rule agg_trimmed_mean = {
    .version = AGG_RULE_V1,
    .name = "trimmed_mean",
    .summary = "coordinate-wise mean after dropping the k lowest and k highest values",
    .flags = 0,
    .params = trimmed_params,
    .check_n = trimmed_check_n,
    .create = trimmed_create,
    .add = trimmed_add,
    .finish = trimmed_finish,
    .save_state = NULL,
    .load_state = NULL,
    .destroy = trimmed_destroy,
};
