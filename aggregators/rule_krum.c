/* rule_krum.c: Krum (Blanchard et al., NeurIPS 2017). score(i) is the sum of the n-f-2 smallest
 * squared distances from Delta_i to the other updates; D is the Delta with the lowest score,
 * ties to the lowest index. Needs n >= 2f+3. Weights are ignored. Retaining: the updates go to a
 * spool and finish computes the n x n distances in one blocked pass over it (O(n^2 d) work,
 * O(n^2) memory beyond the spool). It never changes an update.
 */
#include "aggregators/agg.h"

#include "aggregators/robust.h"
#include "aggregators/rules.h"
#include "core/alloc.h"

typedef struct krum_state {
    agg_rb_base base;
    uint64_t f;
} krum_state;

static const agg_param_spec krum_params[] = {
    {"f", AGG_PARAM_UINT, "1", 0, 1e9, NULL, "number of Byzantine updates tolerated"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static fc_status krum_check_n(const agg_state *st, size_t n, fc_error *err) {
    uint64_t f = ((const krum_state *)st)->f;
    if ((uint64_t)n < 2 * f + 3)
        return fc_error_set(err, FC_ERR_REQUIREMENT, "krum needs n >= 2f+3 = %llu updates, got %zu",
                            (unsigned long long)(2 * f + 3), n);
    return FC_OK;
}

static fc_status krum_create(const agg_params *p, const agg_context *ctx, agg_state **out,
                             fc_error *err) {
    *out = NULL;
    agg_value v[1];
    fc_status st = agg_params_parse("rule krum", krum_params, p, v, err);
    if (st != FC_OK)
        return st;
    krum_state *s = fc_calloc(1, sizeof *s);
    if (s == NULL)
        return fc_error_set(err, FC_ERR_NOMEM, "rule krum: out of memory");
    s->f = v[0].u;
    if ((st = agg_rb_base_init(&s->base, ctx, "krum", err)) != FC_OK) {
        fc_free(s);
        return st;
    }
    *out = (agg_state *)s;
    return FC_OK;
}

static fc_status krum_add(agg_state *st, const agg_update *u, fc_error *err) {
    return agg_rb_base_add(&((krum_state *)st)->base, u, "krum", err);
}

static fc_status krum_finish(agg_state *st, double *out, agg_report *rep, fc_error *err) {
    krum_state *s = (krum_state *)st;
    size_t n = agg_spool_rows(s->base.spool);
    fc_status rc = krum_check_n(st, n, err);
    if (rc != FC_OK || (rc = agg_rb_base_seal(&s->base, "krum", err)) != FC_OK)
        return rc;
    double *dist = fc_mallocarray(n * n, sizeof(double));
    size_t *cand = fc_mallocarray(n, sizeof(size_t));
    double *scratch = fc_mallocarray(n, sizeof(double));
    double *scores = fc_mallocarray(n, sizeof(double));
    size_t *sel = fc_malloc(sizeof(size_t));
    if (!dist || !cand || !scratch || !scores || !sel) {
        rc = fc_error_set(err, FC_ERR_NOMEM, "rule krum: out of memory for %zu x %zu distances", n,
                          n);
        goto done;
    }
    if ((rc = agg_rb_pairwise_sqdist(s->base.spool, dist, "krum", err)) != FC_OK)
        goto done;
    for (size_t i = 0; i < n; i++)
        cand[i] = i;
    agg_rb_krum_scores(dist, n, cand, n, n - (size_t)s->f - 2, scores, scratch);
    sel[0] = agg_rb_argmin(scores, n);
    agg_rb_mean_rows(s->base.spool, sel, 1, out);
    rep->selected = sel;
    rep->n_selected = 1;
    rep->scores = scores;
    rep->n_scores = n;
    sel = NULL;
    scores = NULL;
done:
    fc_free(sel);
    fc_free(scores);
    fc_free(scratch);
    fc_free(cand);
    fc_free(dist);
    return rc;
}

static void krum_destroy(agg_state *st) {
    krum_state *s = (krum_state *)st;
    if (s == NULL)
        return;
    agg_rb_base_free(&s->base);
    fc_free(s);
}

const agg_rule agg_krum = {
    .version = AGG_RULE_V1,
    .name = "krum",
    .summary = "the update with the lowest sum of squared distances to its n-f-2 nearest",
    .flags = 0,
    .params = krum_params,
    .check_n = krum_check_n,
    .create = krum_create,
    .add = krum_add,
    .finish = krum_finish,
    .save_state = NULL,
    .load_state = NULL,
    .destroy = krum_destroy,
};
