/* rule_ida.c: inverse distance aggregation (Yeganeh et al., MICCAI-DCL 2020). With mean the
 * unweighted mean of the updates, alpha_i is proportional to 1 / max(eps, ||Delta_i - mean||)
 * and D = sum alpha_i Delta_i (alphas normalised to sum 1). num_examples are ignored. Reports
 * the alphas. Retaining: three passes over the spool (mean, distances, weighted sum) with O(d)
 * memory beyond it. Not Byzantine-robust on its own: an update at the mean dominates.
 */
#include "aggregators/agg.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "aggregators/kernels.h"
#include "aggregators/robust.h"
#include "aggregators/rules.h"
#include "core/alloc.h"

typedef struct ida_state {
    agg_rb_base base;
    double eps;
} ida_state;

static const agg_param_spec ida_params[] = {
    {"eps", AGG_PARAM_DOUBLE, "1e-12", DBL_MIN, DBL_MAX, NULL, "distances below eps count as eps"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static fc_status ida_create(const agg_params *p, const agg_context *ctx, agg_state **out,
                            fc_error *err) {
    *out = NULL;
    agg_value v[1];
    fc_status st = agg_params_parse("rule ida", ida_params, p, v, err);
    if (st != FC_OK)
        return st;
    ida_state *s = fc_calloc(1, sizeof *s);
    if (s == NULL)
        return fc_error_set(err, FC_ERR_NOMEM, "rule ida: out of memory");
    s->eps = v[0].d;
    if ((st = agg_rb_base_init(&s->base, ctx, "ida", err)) != FC_OK) {
        fc_free(s);
        return st;
    }
    *out = (agg_state *)s;
    return FC_OK;
}

static fc_status ida_add(agg_state *st, const agg_update *u, fc_error *err) {
    return agg_rb_base_add(&((ida_state *)st)->base, u, "ida", err);
}

static fc_status ida_finish(agg_state *st, double *out, agg_report *rep, fc_error *err) {
    ida_state *s = (ida_state *)st;
    agg_spool *sp = s->base.spool;
    size_t n = agg_spool_rows(sp), dim = agg_spool_dim(sp);
    fc_status rc = agg_rb_base_seal(&s->base, "ida", err);
    if (rc != FC_OK)
        return rc;
    double *alpha = fc_mallocarray(n, sizeof(double));
    double *mean = fc_mallocarray(dim, sizeof(double));
    if (!alpha || !mean) {
        rc = fc_error_set(err, FC_ERR_NOMEM, "rule ida: out of memory for %zu doubles", dim);
        goto done;
    }
    memset(mean, 0, dim * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        fc_dtype dt;
        const void *x = agg_spool_row(sp, i, &dt);
        agg_k_fold(dt, mean, x, 1.0, dim);
    }
    for (size_t j = 0; j < dim; j++)
        mean[j] /= (double)n;
    double asum = 0.0;
    for (size_t i = 0; i < n; i++) {
        fc_dtype dt;
        const void *x = agg_spool_row(sp, i, &dt);
        double d = sqrt(agg_k_sqdist_dt_f64(dt, x, mean, dim));
        alpha[i] = 1.0 / (d > s->eps ? d : s->eps);
        asum += alpha[i];
    }
    memset(out, 0, dim * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        fc_dtype dt;
        const void *x = agg_spool_row(sp, i, &dt);
        alpha[i] /= asum;
        agg_k_fold(dt, out, x, alpha[i], dim);
    }
    rep->weights_used = alpha;
    rep->n_weights_used = n;
    alpha = NULL;
done:
    fc_free(mean);
    fc_free(alpha);
    return rc;
}

static void ida_destroy(agg_state *st) {
    ida_state *s = (ida_state *)st;
    if (s == NULL)
        return;
    agg_rb_base_free(&s->base);
    fc_free(s);
}

const agg_rule agg_ida = {
    .version = AGG_RULE_V1,
    .name = "ida",
    .summary = "inverse distance weighting around the unweighted mean",
    .flags = 0,
    .params = ida_params,
    .check_n = NULL,
    .create = ida_create,
    .add = ida_add,
    .finish = ida_finish,
    .save_state = NULL,
    .load_state = NULL,
    .destroy = ida_destroy,
};
