/* opt_sgd.c: the server SGD step with optional momentum (FedAvgM, Hsu et al. 2019) and Nesterov
 * (the DiLoCo outer step, Douillard et al. 2023), as aggregators.md fixes it:
 *
 *   b = momentum*b + D   (b = D at the first step)
 *   w += lr*(D + momentum*b)   with nesterov,   w += lr*b   without.
 *
 * The arithmetic is double; w is rounded to f32 once per element per step. Memory: dim doubles.
 * State blob v1 (little-endian): u32 version=1, u32 tag "OSGD", u64 dim, u8 started, then dim f64
 * b when started.
 */
#include "aggregators/agg.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "aggregators/rules.h"
#include "core/alloc.h"

#define SGD_STATE_V1 1u
#define SGD_TAG 0x4447534fu /* "OSGD" */

typedef struct sgd_state {
    size_t dim;
    double lr, momentum;
    int nesterov;
    int started;
    double *b;
} sgd_state;

static const agg_param_spec sgd_params[] = {
    {"lr", AGG_PARAM_DOUBLE, "1.0", 0, DBL_MAX, NULL, "server learning rate"},
    {"momentum", AGG_PARAM_DOUBLE, "0", 0, 1, NULL, "momentum coefficient in [0, 1]"},
    {"nesterov", AGG_PARAM_BOOL, "false", 0, 0, NULL, "Nesterov momentum"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static fc_status sgd_create(const agg_params *p, size_t dim, agg_opt_state **out, fc_error *err) {
    agg_value v[3];
    fc_status st = agg_params_parse("optimizer sgd", sgd_params, p, v, err);
    if (st != FC_OK)
        return st;
    if (dim == 0)
        return fc_error_set(err, FC_ERR_INVALID, "optimizer sgd: vector size is 0");
    sgd_state *s = fc_calloc(1, sizeof *s);
    /* With momentum 0, b = D at every step: no buffer, and no state to persist. */
    if (!s || (v[1].d != 0 && !(s->b = fc_calloc(dim, sizeof(double))))) {
        fc_free(s);
        return fc_error_set(err, FC_ERR_NOMEM, "optimizer sgd: out of memory for %zu doubles", dim);
    }
    s->dim = dim;
    s->lr = v[0].d;
    s->momentum = v[1].d;
    s->nesterov = v[2].u != 0;
    *out = (agg_opt_state *)s;
    return FC_OK;
}

static fc_status sgd_step_range(agg_opt_state *st, float *w, const double *delta, size_t first,
                                size_t count, fc_error *err) {
    sgd_state *s = (sgd_state *)st;
    const double lr = s->lr, mu = s->momentum;
    if (first > s->dim || count > s->dim - first)
        return fc_error_set(err, FC_ERR_RANGE, "optimizer sgd: elements [%zu, %zu + %zu) of %zu",
                            first, first, count, s->dim);
    if (!s->b) { /* momentum 0: w += lr*D (Nesterov adds mu*b = 0) */
        for (size_t i = 0; i < count; i++)
            w[i] = (float)((double)w[i] + lr * delta[i]);
        return FC_OK;
    }
    double *restrict b = s->b + first;
    if (!s->started)
        memcpy(b, delta, count * sizeof *b);
    else
        for (size_t i = 0; i < count; i++)
            b[i] = mu * b[i] + delta[i];
    if (s->nesterov)
        for (size_t i = 0; i < count; i++)
            w[i] = (float)((double)w[i] + lr * (delta[i] + mu * b[i]));
    else
        for (size_t i = 0; i < count; i++)
            w[i] = (float)((double)w[i] + lr * b[i]);
    if (first + count == s->dim)
        s->started = 1;
    return FC_OK;
}

static fc_status sgd_step(agg_opt_state *st, float *w, const double *delta, fc_error *err) {
    return sgd_step_range(st, w, delta, 0, ((sgd_state *)st)->dim, err);
}

static fc_status sgd_save(const agg_opt_state *st, fc_buf *out, fc_error *err) {
    const sgd_state *s = (const sgd_state *)st;
    fc_status rc = fc_buf_reserve(out, 17 + (s->started ? s->dim * sizeof(double) : 0));
    if (rc == FC_OK)
        rc = fc_buf_append_u32le(out, SGD_STATE_V1);
    if (rc == FC_OK)
        rc = fc_buf_append_u32le(out, SGD_TAG);
    if (rc == FC_OK)
        rc = fc_buf_append_u64le(out, s->dim);
    if (rc == FC_OK)
        rc = fc_buf_append_u8(out, (uint8_t)s->started);
    if (rc == FC_OK && s->started)
        rc = fc_buf_append_f64le_array(out, s->b, s->dim);
    if (rc != FC_OK)
        return fc_error_set(err, rc, "optimizer sgd: saving state: %s", fc_strerror(rc));
    return FC_OK;
}

static fc_status sgd_load(agg_opt_state *st, const void *blob, size_t len, fc_error *err) {
    sgd_state *s = (sgd_state *)st;
    fc_reader rd;
    uint32_t version = 0, tag = 0;
    uint64_t dim = 0;
    uint8_t started = 0;
    fc_reader_init(&rd, blob, len);
    if (fc_read_u32le(&rd, &version) != FC_OK)
        return fc_error_set(err, FC_ERR_FORMAT, "optimizer sgd: state of %zu bytes is truncated",
                            len);
    if (version != SGD_STATE_V1)
        return fc_error_set(err, FC_ERR_VERSION,
                            "optimizer sgd: state version %u is not supported (this build reads "
                            "version %u)",
                            version, SGD_STATE_V1);
    if (fc_read_u32le(&rd, &tag) || fc_read_u64le(&rd, &dim) || fc_read_u8(&rd, &started))
        return fc_error_set(err, FC_ERR_FORMAT, "optimizer sgd: state header is truncated");
    if (tag != SGD_TAG)
        return fc_error_set(err, FC_ERR_FORMAT, "optimizer sgd: the state blob is not sgd state");
    if (dim != s->dim)
        return fc_error_set(err, FC_ERR_SHAPE,
                            "optimizer sgd: state is for %llu elements, the model has %zu",
                            (unsigned long long)dim, s->dim);
    if (started > 1)
        return fc_error_set(err, FC_ERR_CORRUPT, "optimizer sgd: bad 'started' flag %u", started);
    size_t want = started ? s->dim * sizeof(double) : 0;
    if (len - 17 != want)
        return fc_error_set(err, FC_ERR_FORMAT,
                            "optimizer sgd: state holds %zu bytes of momentum, expected %zu",
                            len - 17, want);
    for (size_t i = 0; started && i < s->dim; i++) {
        double x = 0;
        if (fc_read_f64le(&rd, &x) != FC_OK || !isfinite(x))
            return fc_error_set(err, FC_ERR_CORRUPT,
                                "optimizer sgd: momentum element %zu is not finite", i);
        if (s->b)
            s->b[i] = x; /* a momentum-0 configuration has no use for a stored b */
    }
    s->started = s->b ? started : 0;
    return FC_OK;
}

static void sgd_destroy(agg_opt_state *st) {
    sgd_state *s = (sgd_state *)st;
    if (!s)
        return;
    fc_free(s->b);
    fc_free(s);
}

const agg_opt agg_opt_sgd = {
    .version = AGG_OPT_V1,
    .name = "sgd",
    .summary = "w += lr*b with momentum b (optionally Nesterov); lr=1, momentum=0 is w += D",
    .params = sgd_params,
    .create = sgd_create,
    .step = sgd_step,
    .step_range = sgd_step_range,
    .save_state = sgd_save,
    .load_state = sgd_load,
    .destroy = sgd_destroy,
};
