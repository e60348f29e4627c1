/* rule_centered_clip.c: centered clipping (Karimireddy, He, Jaggi, ICML 2021).
 *
 *   v <- v + (1/n) sum_i clip_tau(Delta_i - v),  clip_tau(x) = x * min(1, tau/||x||),
 *
 * repeated `iters` times; v starts from the previous round's D (0 in the first round) and is the
 * rule's persisted state. With iters = 1 it streams (one distance pass and one fold per update,
 * O(dim) memory). With iters > 1 it must revisit every update, so it keeps them: pointers when
 * the data is stable (memory-mapped), else owned copies in their own dtype (O(n*dim) memory).
 *
 * State blob v1 (little-endian): u32 version=1, u32 tag "CCLP", u64 dim, dim f64 v.
 */
#include "aggregators/agg.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "aggregators/kernels.h"
#include "aggregators/rules.h"
#include "core/alloc.h"

#define CC_STATE_V1 1u
#define CC_TAG 0x504c4343u /* "CCLP" */

typedef struct cc_kept {
    fc_dtype dtype;
    const void *data;
    void *owned;
} cc_kept;

typedef struct cc_state {
    size_t dim;
    double tau;
    uint64_t iters;
    double *v;   /* centre: previous D, then the iterate */
    double *acc; /* sum of clipped differences of the current iteration */
    size_t n;
    uint64_t clipped;
    cc_kept *kept; /* iters > 1 only */
    size_t cap_kept;
} cc_state;

static const agg_param_spec cc_params[] = {
    {"tau", AGG_PARAM_DOUBLE, "10.0", 1e-300, DBL_MAX, NULL, "clipping radius (> 0)"},
    {"iters", AGG_PARAM_UINT, "1", 1, 1000, NULL, "clipping iterations per round"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static fc_status cc_create(const agg_params *p, const agg_context *ctx, agg_state **out,
                           fc_error *err) {
    agg_value val[2];
    fc_status st = agg_params_parse("rule centered_clip", cc_params, p, val, err);
    if (st != FC_OK)
        return st;
    cc_state *s = fc_calloc(1, sizeof *s);
    if (!s)
        return fc_error_set(err, FC_ERR_NOMEM, "rule centered_clip: out of memory");
    s->dim = ctx->dim;
    s->tau = val[0].d;
    s->iters = val[1].u;
    s->v = fc_calloc(ctx->dim, sizeof(double));
    s->acc = fc_calloc(ctx->dim, sizeof(double));
    if (!s->v || !s->acc) {
        fc_free(s->v);
        fc_free(s->acc);
        fc_free(s);
        return fc_error_set(err, FC_ERR_NOMEM,
                            "rule centered_clip: out of memory for %zu "
                            "doubles",
                            ctx->dim);
    }
    *out = (agg_state *)s;
    return FC_OK;
}

/* acc += clip_tau(x - v); counts a clip. */
static void clip_fold(cc_state *s, fc_dtype dt, const void *x) {
    double norm = sqrt(agg_k_sqdist_dt_f64(dt, x, s->v, s->dim));
    double c = 1.0;
    if (norm > s->tau) {
        c = s->tau / norm;
        s->clipped++;
    }
    agg_k_fold_diff(dt, s->acc, x, s->v, c, s->dim);
}

static fc_status cc_add(agg_state *st, const agg_update *u, fc_error *err) {
    cc_state *s = (cc_state *)st;
    if (s->iters == 1) {
        clip_fold(s, u->dtype, u->data);
        s->n++;
        return FC_OK;
    }
    if (s->n == s->cap_kept) {
        size_t cap = s->cap_kept ? s->cap_kept * 2 : 16;
        cc_kept *g = fc_realloc(s->kept, cap * sizeof *g);
        if (!g)
            return fc_error_set(err, FC_ERR_NOMEM, "rule centered_clip: out of memory");
        s->kept = g;
        s->cap_kept = cap;
    }
    cc_kept *k = &s->kept[s->n];
    k->dtype = u->dtype;
    k->owned = NULL;
    k->data = u->data;
    if (!u->data_stable) {
        size_t bytes = s->dim * fc_dtype_size(u->dtype);
        if (!(k->owned = fc_malloc(bytes)))
            return fc_error_set(err, FC_ERR_NOMEM,
                                "rule centered_clip: out of memory keeping "
                                "client %llu's update",
                                (unsigned long long)u->client_id);
        memcpy(k->owned, u->data, bytes);
        k->data = k->owned;
    }
    s->n++;
    return FC_OK;
}

/* v += acc / n, acc = 0. */
static void cc_step(cc_state *s) {
    for (size_t i = 0; i < s->dim; i++) {
        s->v[i] += s->acc[i] / (double)s->n;
        s->acc[i] = 0.0;
    }
}

static fc_status cc_finish(agg_state *st, double *out, agg_report *rep, fc_error *err) {
    cc_state *s = (cc_state *)st;
    if (s->n == 0)
        return fc_error_set(err, FC_ERR_STATE, "rule centered_clip: no update");
    if (s->iters == 1) {
        cc_step(s); /* the one iteration was folded in add() */
    } else {
        for (uint64_t it = 0; it < s->iters; it++) {
            for (size_t i = 0; i < s->n; i++)
                clip_fold(s, s->kept[i].dtype, s->kept[i].data);
            cc_step(s);
        }
    }
    memcpy(out, s->v, s->dim * sizeof *out);
    rep->iterations = s->iters;
    rep->clipped = s->clipped;
    return FC_OK;
}

static fc_status cc_save(const agg_state *st, fc_buf *out, fc_error *err) {
    const cc_state *s = (const cc_state *)st;
    fc_status rc = fc_buf_reserve(out, 16 + s->dim * sizeof(double));
    if (rc == FC_OK)
        rc = fc_buf_append_u32le(out, CC_STATE_V1);
    if (rc == FC_OK)
        rc = fc_buf_append_u32le(out, CC_TAG);
    if (rc == FC_OK)
        rc = fc_buf_append_u64le(out, s->dim);
    for (size_t i = 0; rc == FC_OK && i < s->dim; i++)
        rc = fc_buf_append_f64le(out, s->v[i]);
    if (rc != FC_OK)
        return fc_error_set(err, rc, "rule centered_clip: saving state: %s", fc_strerror(rc));
    return FC_OK;
}

static fc_status cc_load(agg_state *st, const void *blob, size_t len, fc_error *err) {
    cc_state *s = (cc_state *)st;
    fc_reader rd;
    uint32_t version = 0, tag = 0;
    uint64_t dim = 0;
    fc_reader_init(&rd, blob, len);
    if (fc_read_u32le(&rd, &version) != FC_OK)
        return fc_error_set(err, FC_ERR_FORMAT,
                            "rule centered_clip: state of %zu bytes is truncated", len);
    if (version != CC_STATE_V1)
        return fc_error_set(err, FC_ERR_VERSION,
                            "rule centered_clip: state version %u is not supported (this build "
                            "reads version %u)",
                            version, CC_STATE_V1);
    if (fc_read_u32le(&rd, &tag) != FC_OK || fc_read_u64le(&rd, &dim) != FC_OK)
        return fc_error_set(err, FC_ERR_FORMAT, "rule centered_clip: state header is truncated");
    if (tag != CC_TAG)
        return fc_error_set(err, FC_ERR_FORMAT,
                            "rule centered_clip: the state blob is not centered_clip state");
    if (dim != s->dim)
        return fc_error_set(err, FC_ERR_SHAPE,
                            "rule centered_clip: state is for %llu elements, the model has %zu",
                            (unsigned long long)dim, s->dim);
    if (len - 16 != s->dim * sizeof(double))
        return fc_error_set(err, FC_ERR_FORMAT,
                            "rule centered_clip: state holds %zu bytes of centre, expected %zu",
                            len - 16, s->dim * sizeof(double));
    for (size_t i = 0; i < s->dim; i++) {
        double x;
        if (fc_read_f64le(&rd, &x) != FC_OK)
            return fc_error_set(err, FC_ERR_FORMAT, "rule centered_clip: state truncated");
        if (!isfinite(x))
            return fc_error_set(err, FC_ERR_CORRUPT,
                                "rule centered_clip: state centre element %zu is not finite", i);
        s->v[i] = x;
    }
    return FC_OK;
}

static void cc_destroy(agg_state *st) {
    cc_state *s = (cc_state *)st;
    if (!s)
        return;
    if (s->iters > 1)
        for (size_t i = 0; i < s->n; i++)
            fc_free(s->kept[i].owned);
    fc_free(s->kept);
    fc_free(s->v);
    fc_free(s->acc);
    fc_free(s);
}

const agg_rule agg_centered_clip = {
    .version = AGG_RULE_V1,
    .name = "centered_clip",
    .summary = "centered clipping around the previous aggregate (persists its centre)",
    .flags = AGG_STATEFUL,
    .params = cc_params,
    .check_n = NULL,
    .create = cc_create,
    .add = cc_add,
    .finish = cc_finish,
    .save_state = cc_save,
    .load_state = cc_load,
    .destroy = cc_destroy,
};
