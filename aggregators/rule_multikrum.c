/* rule_multikrum.c: Multi-Krum (Blanchard et al., NeurIPS 2017). Krum scores as in
 * rule_krum.c; D is the uniform mean of the m lowest-scoring updates (m defaults to n-f),
 * ranked by (score, index), so ties go to the lowest index. Needs n >= 2f+3 and m <= n. Weights
 * are ignored. Retaining; O(n^2 d) work, O(n^2) memory beyond the spool.
 */
#include "aggregators/agg.h"

#include <stdlib.h>

#include "aggregators/robust.h"
#include "aggregators/rules.h"
#include "core/alloc.h"

typedef struct multikrum_state {
    agg_rb_base base;
    uint64_t f;
    int m_set;
    uint64_t m;
} multikrum_state;

static const agg_param_spec multikrum_params[] = {
    {"f", AGG_PARAM_UINT, "1", 0, 1e9, NULL, "number of Byzantine updates tolerated"},
    {"m", AGG_PARAM_UINT, "", 1, 1e9, NULL, "updates averaged (default n-f)"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static fc_status multikrum_check_n(const agg_state *st, size_t n, fc_error *err) {
    const multikrum_state *s = (const multikrum_state *)st;
    if ((uint64_t)n < 2 * s->f + 3)
        return fc_error_set(err, FC_ERR_REQUIREMENT,
                            "multikrum needs n >= 2f+3 = %llu updates, got %zu",
                            (unsigned long long)(2 * s->f + 3), n);
    if (s->m_set && s->m > (uint64_t)n)
        return fc_error_set(err, FC_ERR_REQUIREMENT,
                            "multikrum with m = %llu needs n >= m updates, got %zu",
                            (unsigned long long)s->m, n);
    return FC_OK;
}

static fc_status multikrum_create(const agg_params *p, const agg_context *ctx, agg_state **out,
                                  fc_error *err) {
    *out = NULL;
    agg_value v[2];
    fc_status st = agg_params_parse("rule multikrum", multikrum_params, p, v, err);
    if (st != FC_OK)
        return st;
    multikrum_state *s = fc_calloc(1, sizeof *s);
    if (s == NULL)
        return fc_error_set(err, FC_ERR_NOMEM, "rule multikrum: out of memory");
    s->f = v[0].u;
    s->m_set = v[1].set;
    s->m = v[1].u;
    if ((st = agg_rb_base_init(&s->base, ctx, "multikrum", err)) != FC_OK) {
        fc_free(s);
        return st;
    }
    *out = (agg_state *)s;
    return FC_OK;
}

static fc_status multikrum_add(agg_state *st, const agg_update *u, fc_error *err) {
    return agg_rb_base_add(&((multikrum_state *)st)->base, u, "multikrum", err);
}

/* qsort is not stable, so the index is part of the key: (score, index) is a total order. */
typedef struct ranked {
    double score;
    size_t index;
} ranked;

static int ranked_cmp(const void *pa, const void *pb) {
    const ranked *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score < b->score ? -1 : 1;
    return (a->index > b->index) - (a->index < b->index);
}

static int index_cmp(const void *pa, const void *pb) {
    size_t a = *(const size_t *)pa, b = *(const size_t *)pb;
    return (a > b) - (a < b);
}

static fc_status multikrum_finish(agg_state *st, double *out, agg_report *rep, fc_error *err) {
    multikrum_state *s = (multikrum_state *)st;
    size_t n = agg_spool_rows(s->base.spool);
    fc_status rc = multikrum_check_n(st, n, err);
    if (rc != FC_OK || (rc = agg_rb_base_seal(&s->base, "multikrum", err)) != FC_OK)
        return rc;
    size_t m = s->m_set ? (size_t)s->m : n - (size_t)s->f;
    double *dist = fc_mallocarray(n * n, sizeof(double));
    size_t *cand = fc_mallocarray(n, sizeof(size_t));
    double *scratch = fc_mallocarray(n, sizeof(double));
    double *scores = fc_mallocarray(n, sizeof(double));
    ranked *rank = fc_mallocarray(n, sizeof(ranked));
    size_t *sel = fc_mallocarray(m, sizeof(size_t));
    size_t *rows = fc_mallocarray(m, sizeof(size_t));
    if (!dist || !cand || !scratch || !scores || !rank || !sel || !rows) {
        rc = fc_error_set(err, FC_ERR_NOMEM,
                          "rule multikrum: out of memory for %zu x %zu distances", n, n);
        goto done;
    }
    if ((rc = agg_rb_pairwise_sqdist(s->base.spool, dist, "multikrum", err)) != FC_OK)
        goto done;
    for (size_t i = 0; i < n; i++)
        cand[i] = i;
    agg_rb_krum_scores(dist, n, cand, n, n - (size_t)s->f - 2, scores, scratch);
    for (size_t i = 0; i < n; i++)
        rank[i] = (ranked){scores[i], i};
    qsort(rank, n, sizeof *rank, ranked_cmp);
    for (size_t t = 0; t < m; t++)
        sel[t] = rows[t] = rank[t].index;
    /* Sum in index order, so D depends only on the selected set. */
    qsort(rows, m, sizeof *rows, index_cmp);
    agg_rb_mean_rows(s->base.spool, rows, m, out);
    rep->selected = sel;
    rep->n_selected = m;
    rep->scores = scores;
    rep->n_scores = n;
    sel = NULL;
    scores = NULL;
done:
    fc_free(rows);
    fc_free(sel);
    fc_free(rank);
    fc_free(scores);
    fc_free(scratch);
    fc_free(cand);
    fc_free(dist);
    return rc;
}

static void multikrum_destroy(agg_state *st) {
    multikrum_state *s = (multikrum_state *)st;
    if (s == NULL)
        return;
    agg_rb_base_free(&s->base);
    fc_free(s);
}

const agg_rule agg_multikrum = {
    .version = AGG_RULE_V1,
    .name = "multikrum",
    .summary = "uniform mean of the m updates with the lowest Krum scores",
    .flags = 0,
    .params = multikrum_params,
    .check_n = multikrum_check_n,
    .create = multikrum_create,
    .add = multikrum_add,
    .finish = multikrum_finish,
    .save_state = NULL,
    .load_state = NULL,
    .destroy = multikrum_destroy,
};
