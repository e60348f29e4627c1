/* rule_median.c: the coordinate-wise median (Yin et al., ICML 2018). For an even n it is the
 * mean of the two middle values. Weights are ignored. Retaining: every update goes to a spool;
 * finish works in coordinate blocks, so memory beyond the spool is O(n * block). It never
 * changes an update.
 */
#include "aggregators/agg.h"

#include "aggregators/robust.h"
#include "aggregators/rules.h"
#include "core/alloc.h"

typedef struct median_state {
    agg_rb_base base;
} median_state;

static const agg_param_spec median_params[] = {
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static fc_status median_create(const agg_params *p, const agg_context *ctx, agg_state **out,
                               fc_error *err) {
    *out = NULL;
    agg_value none[1];
    fc_status st = agg_params_parse("rule median", median_params, p, none, err);
    if (st != FC_OK)
        return st;
    median_state *s = fc_calloc(1, sizeof *s);
    if (s == NULL)
        return fc_error_set(err, FC_ERR_NOMEM, "rule median: out of memory");
    if ((st = agg_rb_base_init(&s->base, ctx, "median", err)) != FC_OK) {
        fc_free(s);
        return st;
    }
    *out = (agg_state *)s;
    return FC_OK;
}

static fc_status median_add(agg_state *st, const agg_update *u, fc_error *err) {
    return agg_rb_base_add(&((median_state *)st)->base, u, "median", err);
}

static fc_status median_finish(agg_state *st, double *out, agg_report *rep, fc_error *err) {
    median_state *s = (median_state *)st;
    (void)rep;
    fc_status rc = agg_rb_base_seal(&s->base, "median", err);
    if (rc != FC_OK)
        return rc;
    return agg_rb_coordwise(s->base.spool, NULL, 0, AGG_RB_MEDIAN, 0, out, NULL, "median", err);
}

static void median_destroy(agg_state *st) {
    median_state *s = (median_state *)st;
    if (s == NULL)
        return;
    agg_rb_base_free(&s->base);
    fc_free(s);
}

const agg_rule agg_median = {
    .version = AGG_RULE_V1,
    .name = "median",
    .summary = "coordinate-wise median (mean of the two middle values for even n)",
    .flags = 0,
    .params = median_params,
    .check_n = NULL,
    .create = median_create,
    .add = median_add,
    .finish = median_finish,
    .save_state = NULL,
    .load_state = NULL,
    .destroy = median_destroy,
};
