/* robust.c: block loops and Krum scoring shared by the retaining rules (see robust.h). It owns
 * the scratch blocks it allocates and frees them on every path; it never changes the spool.
 */
#include "aggregators/robust.h"

#include <assert.h>
#include <string.h>

#include "aggregators/kernels.h"
#include "core/alloc.h"

/* Target size of one gathered block of every row, in bytes: well inside L2. */
#define RB_BLOCK_BYTES ((size_t)512 * 1024)

fc_status agg_rb_base_init(agg_rb_base *b, const agg_context *ctx, const char *rule,
                           fc_error *err) {
    b->dim = ctx->dim;
    b->spool = NULL;
    fc_status st = agg_spool_create(ctx, &b->spool, err);
    if (st != FC_OK)
        fc_error_prefix(err, "rule %s", rule);
    return st;
}

fc_status agg_rb_base_add(agg_rb_base *b, const agg_update *u, const char *rule, fc_error *err) {
    fc_status st = agg_spool_append(b->spool, u, err);
    if (st != FC_OK)
        fc_error_prefix(err, "rule %s: update %zu (client %llu)", rule, agg_spool_rows(b->spool),
                        (unsigned long long)u->client_id);
    return st;
}

fc_status agg_rb_base_seal(agg_rb_base *b, const char *rule, fc_error *err) {
    fc_status st = agg_spool_seal(b->spool, err);
    if (st != FC_OK)
        fc_error_prefix(err, "rule %s", rule);
    return st;
}

void agg_rb_base_free(agg_rb_base *b) {
    agg_spool_destroy(b->spool);
    b->spool = NULL;
}

static size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

/* Block width (a multiple of `mult`) so that nrows rows of it take about RB_BLOCK_BYTES. */
static size_t block_width(size_t nrows, size_t esize, size_t dim, size_t mult) {
    size_t w = RB_BLOCK_BYTES / (nrows * esize);
    w = w / mult * mult;
    if (w < mult)
        w = mult;
    size_t cap = round_up(dim, mult);
    return w < cap ? w : cap;
}

fc_status agg_rb_coordwise(agg_spool *s, const size_t *rows, size_t nrows, agg_rb_coord_kind kind,
                           size_t param, double *out, uint64_t *below_out, const char *rule,
                           fc_error *err) {
    const size_t dim = agg_spool_dim(s);
    if (rows == NULL)
        nrows = agg_spool_rows(s);
    assert(nrows >= 1);
    const int f64 = kind == AGG_RB_CLOSEST || agg_spool_has_f64(s);
    const size_t es = f64 ? sizeof(double) : sizeof(float);
    size_t lo = 0, hi = nrows; /* sorted positions that must be exact */
    switch (kind) {
    case AGG_RB_MEDIAN:
        lo = (nrows - 1) / 2;
        hi = nrows / 2 + 1;
        break;
    case AGG_RB_TRIMMED:
        assert(2 * param < nrows);
        lo = param;
        hi = nrows - param;
        break;
    case AGG_RB_CLOSEST:
        assert(param >= 1 && param <= nrows);
        break;
    }
    const int need_sort = !(kind == AGG_RB_TRIMMED && param == 0) && nrows > 1;
    const size_t G = block_width(nrows, es, dim, AGG_K_COLS);

    fc_status st = FC_ERR_NOMEM;
    void *big = fc_mallocarray(nrows, G * es);
    void *net = fc_mallocarray(nrows, AGG_K_COLS * es);
    double *orig =
        kind == AGG_RB_CLOSEST ? fc_mallocarray(nrows, AGG_K_COLS * sizeof(double)) : NULL;
    size_t npairs_max = need_sort ? agg_k_sortnet_count(nrows) : 0;
    uint32_t *pairs =
        need_sort ? fc_mallocarray(npairs_max ? npairs_max : 1, 2 * sizeof(uint32_t)) : NULL;
    unsigned char *live = need_sort ? fc_malloc(nrows) : NULL;
    if (!big || !net || (kind == AGG_RB_CLOSEST && !orig) || (need_sort && (!pairs || !live))) {
        fc_error_set(err, FC_ERR_NOMEM, "rule %s: out of memory for a %zu x %zu block", rule, nrows,
                     G);
        goto done;
    }
    size_t npairs = need_sort ? agg_k_sortnet_build(nrows, lo, hi, pairs, live) : 0;
    uint64_t below = 0;
    double col[AGG_K_COLS];

    for (size_t j0 = 0; j0 < dim; j0 += G) {
        size_t w = dim - j0 < G ? dim - j0 : G;
        if (f64)
            agg_spool_block_f64(s, rows, nrows, j0, j0 + w, big, G);
        else
            agg_spool_block_f32(s, rows, nrows, j0, j0 + w, big, G);
        for (size_t c0 = 0; c0 < w; c0 += AGG_K_COLS) {
            size_t cw = w - c0 < AGG_K_COLS ? w - c0 : AGG_K_COLS;
            /* Compact the sub-block; pad columns past cw with zeros (they are never read). */
            for (size_t r = 0; r < nrows; r++) {
                unsigned char *dst = (unsigned char *)net + r * AGG_K_COLS * es;
                memcpy(dst, (unsigned char *)big + (r * G + c0) * es, cw * es);
                if (cw < AGG_K_COLS)
                    memset(dst + cw * es, 0, (AGG_K_COLS - cw) * es);
            }
            if (kind == AGG_RB_CLOSEST)
                memcpy(orig, net, nrows * AGG_K_COLS * sizeof(double));
            if (npairs) {
                if (f64)
                    agg_k_sortnet_f64(net, pairs, npairs);
                else
                    agg_k_sortnet_f32(net, pairs, npairs);
            }
            double *o = out + j0 + c0;
            if (kind == AGG_RB_MEDIAN) {
                size_t m = nrows / 2;
                if (f64) {
                    const double *v = net;
                    for (size_t c = 0; c < cw; c++)
                        o[c] = (nrows & 1)
                                   ? v[m * AGG_K_COLS + c]
                                   : 0.5 * (v[(m - 1) * AGG_K_COLS + c] + v[m * AGG_K_COLS + c]);
                } else {
                    const float *v = net;
                    for (size_t c = 0; c < cw; c++)
                        o[c] = (nrows & 1) ? (double)v[m * AGG_K_COLS + c]
                                           : 0.5 * ((double)v[(m - 1) * AGG_K_COLS + c] +
                                                    (double)v[m * AGG_K_COLS + c]);
                }
            } else if (kind == AGG_RB_TRIMMED) {
                if (f64)
                    agg_k_rowsum_f64(net, lo, hi, col);
                else
                    agg_k_rowsum_f32(net, lo, hi, col);
                double kept = (double)(hi - lo);
                for (size_t c = 0; c < cw; c++)
                    o[c] = col[c] / kept;
            } else {
                const double *v = net;
                for (size_t c = 0; c < cw; c++) {
                    size_t l = 0;
                    o[c] = agg_k_closest_mean_f64(v + c, orig + c, AGG_K_COLS, nrows, param, &l);
                    below += l;
                }
            }
        }
        agg_spool_release_below(s, j0 + w);
    }
    if (below_out)
        *below_out = below;
    st = FC_OK;
done:
    fc_free(live);
    fc_free(pairs);
    fc_free(orig);
    fc_free(net);
    fc_free(big);
    return st;
}

fc_status agg_rb_pairwise_sqdist(agg_spool *s, double *dist, const char *rule, fc_error *err) {
    const size_t n = agg_spool_rows(s), dim = agg_spool_dim(s);
    const size_t G = block_width(n, sizeof(double), dim, 8);
    double *blk = fc_mallocarray(n, G * sizeof(double));
    if (blk == NULL)
        return fc_error_set(err, FC_ERR_NOMEM, "rule %s: out of memory for a %zu x %zu block", rule,
                            n, G);
    memset(dist, 0, n * n * sizeof(double));
    for (size_t j0 = 0; j0 < dim; j0 += G) {
        size_t w = dim - j0 < G ? dim - j0 : G;
        size_t wp = round_up(w, 8);
        agg_spool_block_f64(s, NULL, n, j0, j0 + w, blk, G);
        if (wp > w)
            for (size_t r = 0; r < n; r++)
                memset(blk + r * G + w, 0, (wp - w) * sizeof(double));
        agg_k_pairdist_f64(blk, n, G, wp, dist);
        agg_spool_release_below(s, j0 + w);
    }
    for (size_t a = 0; a < n; a++) {
        dist[a * n + a] = 0.0;
        for (size_t b = a + 1; b < n; b++)
            dist[b * n + a] = dist[a * n + b];
    }
    fc_free(blk);
    return FC_OK;
}

void agg_rb_krum_scores(const double *dist, size_t n, const size_t *cand, size_t nc, size_t k,
                        double *scores, double *scratch) {
    assert(nc >= 1 && k <= nc - 1);
    for (size_t t = 0; t < nc; t++) {
        size_t m = 0;
        for (size_t u = 0; u < nc; u++)
            if (u != t)
                scratch[m++] = dist[cand[t] * n + cand[u]];
        scores[t] = agg_k_sum_smallest(scratch, m, k);
    }
}

size_t agg_rb_argmin(const double *v, size_t n) {
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (v[i] < v[best])
            best = i;
    return best;
}

void agg_rb_mean_rows(const agg_spool *s, const size_t *rows, size_t m, double *out) {
    size_t dim = agg_spool_dim(s);
    memset(out, 0, dim * sizeof(double));
    for (size_t t = 0; t < m; t++) {
        fc_dtype dt;
        const void *x = agg_spool_row(s, rows[t], &dt);
        agg_k_fold(dt, out, x, 1.0, dim);
    }
    for (size_t j = 0; j < dim; j++)
        out[j] /= (double)m;
}
