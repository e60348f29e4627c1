/* rule_bulyan.c: Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018), the paper's iterative form.
 * Selection: theta = n-2f times, run Krum (same f) on the remaining set, with the neighbour
 * count n'-f-2 clamped to at least 1 (and at most n'-1), and move the winner (ties to the
 * lowest index) to the selected list. Then per coordinate, D is the mean of the beta = n-4f
 * selected values closest to their median (mean of the two middle values for an even theta),
 * ties in distance going to the earlier selected. Needs n >= 4f+3. Weights are ignored.
 *
 * Retaining: one O(n^2 d) distance pass over the spool, selection on the n x n matrix, then the
 * coordinate phase in blocks (memory O(theta * block) beyond the spool). Reports the selection
 * in order and the first round's Krum scores (all n updates).
 */
#include "aggregators/agg.h"

#include <stdio.h>
#include <string.h>

#include "aggregators/robust.h"
#include "aggregators/rules.h"
#include "core/alloc.h"

typedef struct bulyan_state {
    agg_rb_base base;
    uint64_t f;
} bulyan_state;

static const agg_param_spec bulyan_params[] = {
    {"f", AGG_PARAM_UINT, "1", 0, 1e9, NULL, "number of Byzantine updates tolerated"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static fc_status bulyan_check_n(const agg_state *st, size_t n, fc_error *err) {
    uint64_t f = ((const bulyan_state *)st)->f;
    if ((uint64_t)n < 4 * f + 3)
        return fc_error_set(err, FC_ERR_REQUIREMENT,
                            "bulyan needs n >= 4f+3 = %llu updates, got %zu",
                            (unsigned long long)(4 * f + 3), n);
    return FC_OK;
}

static fc_status bulyan_create(const agg_params *p, const agg_context *ctx, agg_state **out,
                               fc_error *err) {
    *out = NULL;
    agg_value v[1];
    fc_status st = agg_params_parse("rule bulyan", bulyan_params, p, v, err);
    if (st != FC_OK)
        return st;
    bulyan_state *s = fc_calloc(1, sizeof *s);
    if (s == NULL)
        return fc_error_set(err, FC_ERR_NOMEM, "rule bulyan: out of memory");
    s->f = v[0].u;
    if ((st = agg_rb_base_init(&s->base, ctx, "bulyan", err)) != FC_OK) {
        fc_free(s);
        return st;
    }
    *out = (agg_state *)s;
    return FC_OK;
}

static fc_status bulyan_add(agg_state *st, const agg_update *u, fc_error *err) {
    return agg_rb_base_add(&((bulyan_state *)st)->base, u, "bulyan", err);
}

/* Neighbour count for Krum on nc remaining points: nc-f-2, clamped to [1, nc-1]. */
static size_t neighbours(size_t nc, size_t f) {
    size_t k = nc > f + 2 ? nc - f - 2 : 0;
    if (k < 1)
        k = 1;
    if (k > nc - 1)
        k = nc - 1;
    return k;
}

static fc_status bulyan_finish(agg_state *st, double *out, agg_report *rep, fc_error *err) {
    bulyan_state *s = (bulyan_state *)st;
    size_t n = agg_spool_rows(s->base.spool);
    fc_status rc = bulyan_check_n(st, n, err);
    if (rc != FC_OK || (rc = agg_rb_base_seal(&s->base, "bulyan", err)) != FC_OK)
        return rc;
    size_t f = (size_t)s->f, theta = n - 2 * f, beta = n - 4 * f;
    double *dist = fc_mallocarray(n * n, sizeof(double));
    size_t *cand = fc_mallocarray(n, sizeof(size_t));
    double *scratch = fc_mallocarray(n, sizeof(double));
    double *scores = fc_mallocarray(n, sizeof(double));
    double *first = fc_mallocarray(n, sizeof(double));
    size_t *sel = fc_mallocarray(theta, sizeof(size_t));
    if (!dist || !cand || !scratch || !scores || !first || !sel) {
        rc = fc_error_set(err, FC_ERR_NOMEM, "rule bulyan: out of memory for %zu x %zu distances",
                          n, n);
        goto done;
    }
    if ((rc = agg_rb_pairwise_sqdist(s->base.spool, dist, "bulyan", err)) != FC_OK)
        goto done;
    for (size_t i = 0; i < n; i++)
        cand[i] = i;
    size_t nc = n;
    for (size_t t = 0; t < theta; t++) {
        agg_rb_krum_scores(dist, n, cand, nc, neighbours(nc, f), scores, scratch);
        if (t == 0)
            memcpy(first, scores, n * sizeof(double));
        size_t w = agg_rb_argmin(scores, nc); /* cand stays ascending: ties to lowest index */
        sel[t] = cand[w];
        memmove(cand + w, cand + w + 1, (nc - w - 1) * sizeof(size_t));
        nc--;
    }
    uint64_t below = 0;
    rc = agg_rb_coordwise(s->base.spool, sel, theta, AGG_RB_CLOSEST, beta, out, &below, "bulyan",
                          err);
    if (rc != FC_OK)
        goto done;
    rep->selected = sel;
    rep->n_selected = theta;
    rep->scores = first;
    rep->n_scores = n;
    sel = NULL;
    first = NULL;
    uint64_t dropped = (uint64_t)(theta - beta) * agg_spool_dim(s->base.spool);
    snprintf(rep->note, sizeof rep->note,
             "theta=%zu selected, beta=%zu kept per coordinate; over all coordinates %llu values "
             "dropped below the kept window and %llu above",
             theta, beta, (unsigned long long)below, (unsigned long long)(dropped - below));
done:
    fc_free(sel);
    fc_free(first);
    fc_free(scores);
    fc_free(scratch);
    fc_free(cand);
    fc_free(dist);
    return rc;
}

static void bulyan_destroy(agg_state *st) {
    bulyan_state *s = (bulyan_state *)st;
    if (s == NULL)
        return;
    agg_rb_base_free(&s->base);
    fc_free(s);
}

const agg_rule agg_bulyan = {
    .version = AGG_RULE_V1,
    .name = "bulyan",
    .summary = "iterative Krum selection of n-2f, then per coordinate the mean of the n-4f "
               "closest to the median",
    .flags = 0,
    .params = bulyan_params,
    .check_n = bulyan_check_n,
    .create = bulyan_create,
    .add = bulyan_add,
    .finish = bulyan_finish,
    .save_state = NULL,
    .load_state = NULL,
    .destroy = bulyan_destroy,
};
