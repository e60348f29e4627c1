/* rule_geomed.c: the geometric median by smoothed Weiszfeld iterations, as in RFA (Pillutla,
 * Kakade, Harchaoui, IEEE TSP 2022). alpha_i = n_i / sum n (weighting=examples) or 1/n
 * (uniform). z starts at the alpha-weighted mean; each iteration sets
 * beta_i = alpha_i / max(nu, ||z - Delta_i||) and z = sum beta_i Delta_i / sum beta_i, and it
 * stops when |obj_prev - obj| < ftol * obj (obj = sum alpha_i ||z - Delta_i||) or after
 * max_iter iterations. Reports the iterations run and the final normalised beta.
 *
 * Retaining: every iteration is two passes over the spool (distances, weighted sum) with O(d)
 * memory beyond it. It never changes an update.
 */
#include "aggregators/agg.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "aggregators/kernels.h"
#include "aggregators/robust.h"
#include "aggregators/rules.h"
#include "core/alloc.h"

typedef struct geomed_state {
    agg_rb_base base;
    double nu, ftol;
    uint64_t max_iter;
    int uniform;
    double *weights; /* n_i as given, index order */
    size_t n_weights, cap_weights;
} geomed_state;

static const agg_param_spec geomed_params[] = {
    {"nu", AGG_PARAM_DOUBLE, "1e-5", DBL_MIN, DBL_MAX, NULL,
     "smoothing: distances below nu count as nu"},
    {"max_iter", AGG_PARAM_UINT, "4", 0, 1e6, NULL, "Weiszfeld iterations at most"},
    {"ftol", AGG_PARAM_DOUBLE, "1e-6", 0, 1, NULL,
     "stop when the objective improves by less than ftol * objective"},
    {"weighting", AGG_PARAM_ENUM, "examples", 0, 0, "examples|uniform",
     "examples: alpha_i proportional to num_examples; uniform: 1/n"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static fc_status geomed_create(const agg_params *p, const agg_context *ctx, agg_state **out,
                               fc_error *err) {
    *out = NULL;
    agg_value v[4];
    fc_status st = agg_params_parse("rule geomed", geomed_params, p, v, err);
    if (st != FC_OK)
        return st;
    geomed_state *s = fc_calloc(1, sizeof *s);
    if (s == NULL)
        return fc_error_set(err, FC_ERR_NOMEM, "rule geomed: out of memory");
    s->nu = v[0].d;
    s->max_iter = v[1].u;
    s->ftol = v[2].d;
    s->uniform = v[3].u == 1;
    if ((st = agg_rb_base_init(&s->base, ctx, "geomed", err)) != FC_OK) {
        fc_free(s);
        return st;
    }
    *out = (agg_state *)s;
    return FC_OK;
}

static fc_status geomed_add(agg_state *st, const agg_update *u, fc_error *err) {
    geomed_state *s = (geomed_state *)st;
    if (s->n_weights == s->cap_weights) {
        size_t cap = s->cap_weights ? 2 * s->cap_weights : 16;
        double *w = fc_realloc(s->weights, cap * sizeof *w);
        if (w == NULL)
            return fc_error_set(err, FC_ERR_NOMEM, "rule geomed: out of memory");
        s->weights = w;
        s->cap_weights = cap;
    }
    fc_status rc = agg_rb_base_add(&s->base, u, "geomed", err);
    if (rc != FC_OK)
        return rc;
    s->weights[s->n_weights++] = u->weight;
    return FC_OK;
}

/* dist[i] = ||z - row i||, and returns sum alpha_i dist[i]. */
static double distances(const agg_spool *sp, const double *z, const double *alpha, double *dist) {
    size_t n = agg_spool_rows(sp), dim = agg_spool_dim(sp);
    double obj = 0.0;
    for (size_t i = 0; i < n; i++) {
        fc_dtype dt;
        const void *x = agg_spool_row(sp, i, &dt);
        dist[i] = sqrt(agg_k_sqdist_dt_f64(dt, x, z, dim));
        obj += alpha[i] * dist[i];
    }
    return obj;
}

/* z = sum w_i row_i / sum w_i. */
static void weighted_mean(const agg_spool *sp, const double *w, double *z) {
    size_t n = agg_spool_rows(sp), dim = agg_spool_dim(sp);
    double wsum = 0.0;
    memset(z, 0, dim * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        fc_dtype dt;
        const void *x = agg_spool_row(sp, i, &dt);
        if (w[i] != 0.0)
            agg_k_fold(dt, z, x, w[i], dim);
        wsum += w[i];
    }
    for (size_t j = 0; j < dim; j++)
        z[j] /= wsum;
}

static fc_status geomed_finish(agg_state *st, double *out, agg_report *rep, fc_error *err) {
    geomed_state *s = (geomed_state *)st;
    size_t n = agg_spool_rows(s->base.spool);
    fc_status rc = agg_rb_base_seal(&s->base, "geomed", err);
    if (rc != FC_OK)
        return rc;
    double *alpha = fc_mallocarray(n, sizeof(double));
    double *beta = fc_mallocarray(n, sizeof(double));
    double *dist = fc_mallocarray(n, sizeof(double));
    if (!alpha || !beta || !dist) {
        rc = fc_error_set(err, FC_ERR_NOMEM, "rule geomed: out of memory");
        goto done;
    }
    double total = 0.0;
    for (size_t i = 0; i < n; i++)
        total += s->uniform ? 1.0 : s->weights[i];
    if (!(total > 0)) {
        rc = fc_error_set(err, FC_ERR_STATE, "rule geomed: total weight is 0");
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        alpha[i] = (s->uniform ? 1.0 : s->weights[i]) / total;

    weighted_mean(s->base.spool, alpha, out);
    memcpy(beta, alpha, n * sizeof(double));
    double obj = distances(s->base.spool, out, alpha, dist);
    uint64_t it = 0;
    while (it < s->max_iter) {
        double prev = obj, bsum = 0.0;
        for (size_t i = 0; i < n; i++) {
            beta[i] = alpha[i] / (dist[i] > s->nu ? dist[i] : s->nu);
            bsum += beta[i];
        }
        for (size_t i = 0; i < n; i++)
            beta[i] /= bsum;
        weighted_mean(s->base.spool, beta, out);
        obj = distances(s->base.spool, out, alpha, dist);
        it++;
        if (fabs(prev - obj) < s->ftol * obj)
            break;
    }
    rep->iterations = it;
    rep->weights_used = beta;
    rep->n_weights_used = n;
    beta = NULL;
done:
    fc_free(dist);
    fc_free(beta);
    fc_free(alpha);
    return rc;
}

static void geomed_destroy(agg_state *st) {
    geomed_state *s = (geomed_state *)st;
    if (s == NULL)
        return;
    agg_rb_base_free(&s->base);
    fc_free(s->weights);
    fc_free(s);
}

const agg_rule agg_geomed = {
    .version = AGG_RULE_V1,
    .name = "geomed",
    .summary = "geometric median by smoothed Weiszfeld iterations (RFA)",
    .flags = AGG_USES_WEIGHTS,
    .params = geomed_params,
    .check_n = NULL,
    .create = geomed_create,
    .add = geomed_add,
    .finish = geomed_finish,
    .save_state = NULL,
    .load_state = NULL,
    .destroy = geomed_destroy,
};
