/* opt_fedopt.c: the engine behind adam, yogi and adagrad, exactly as aggregators.md fixes them:
 *
 *   m = beta1*m + (1-beta1)*D                 (adagrad: m = D)
 *   adam:    v = beta2*v + (1-beta2)*D^2
 *   yogi:    v = v - (1-beta2)*D^2*sign(v - D^2)
 *   adagrad: v = v + D^2
 *   w += lr * m / (sqrt(v) + tau)
 *
 * m starts at 0 and v at tau^2; no bias correction. Memory: 2*dim doubles.
 * State blob v1 (little-endian): u32 version=1, u32 tag "OADM"/"OYOG"/"OADG", u64 dim,
 * dim f64 m, dim f64 v.
 */
#include "aggregators/opt_fedopt.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"

#define FEDOPT_STATE_V1 1u

typedef struct fedopt_state {
    fedopt_kind kind;
    size_t dim;
    double lr, beta1, beta2, tau;
    double *m, *v;
} fedopt_state;

static const char *kind_name(fedopt_kind k) {
    return k == FEDOPT_ADAM ? "adam" : k == FEDOPT_YOGI ? "yogi" : "adagrad";
}

static uint32_t kind_tag(fedopt_kind k) {
    return k == FEDOPT_ADAM ? 0x4d44414fu : k == FEDOPT_YOGI ? 0x474f594fu : 0x4744414fu;
}

/* Looks a parsed value up by key (the three optimizers order their specs differently). */
static double value_of(const agg_param_spec *specs, const agg_value *v, const char *key,
                       double fallback) {
    for (size_t i = 0; specs[i].key; i++)
        if (strcmp(specs[i].key, key) == 0)
            return v[i].d;
    return fallback;
}

fc_status fedopt_create(fedopt_kind kind, const agg_param_spec *specs, const agg_params *p,
                        size_t dim, agg_opt_state **out, fc_error *err) {
    agg_value v[8];
    char what[32];
    size_t nspecs = 0;
    while (specs[nspecs].key)
        nspecs++;
    if (nspecs > 8)
        return fc_error_set(err, FC_ERR_INVALID, "internal: too many optimizer parameters");
    snprintf(what, sizeof what, "optimizer %s", kind_name(kind));
    fc_status st = agg_params_parse(what, specs, p, v, err);
    if (st != FC_OK)
        return st;
    if (dim == 0 || dim > SIZE_MAX / sizeof(double))
        return fc_error_set(err, FC_ERR_INVALID, "%s: bad vector size %zu", what, dim);
    fedopt_state *s = fc_calloc(1, sizeof *s);
    if (!s)
        return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", what);
    s->kind = kind;
    s->dim = dim;
    s->lr = value_of(specs, v, "lr", 0);
    s->beta1 = value_of(specs, v, "beta1", 0);
    s->beta2 = value_of(specs, v, "beta2", 0);
    s->tau = value_of(specs, v, "tau", 0);
    s->m = fc_calloc(dim, sizeof(double));
    s->v = fc_mallocarray(dim, sizeof(double));
    if (!s->m || !s->v) {
        fedopt_destroy((agg_opt_state *)s);
        return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory for %zu doubles", what, dim);
    }
    for (size_t i = 0; i < dim; i++)
        s->v[i] = s->tau * s->tau;
    *out = (agg_opt_state *)s;
    return FC_OK;
}

fc_status fedopt_step_range(agg_opt_state *st, float *w, const double *delta, size_t first,
                            size_t count, fc_error *err) {
    fedopt_state *s = (fedopt_state *)st;
    if (first > s->dim || count > s->dim - first)
        return fc_error_set(err, FC_ERR_RANGE, "optimizer %s: elements [%zu, %zu + %zu) of %zu",
                            kind_name(s->kind), first, first, count, s->dim);
    double *restrict m = s->m + first, *restrict v = s->v + first;
    const double b1 = s->beta1, b2 = s->beta2, lr = s->lr, tau = s->tau;
    switch (s->kind) {
    case FEDOPT_ADAM:
        for (size_t i = 0; i < count; i++) {
            double d = delta[i];
            m[i] = b1 * m[i] + (1 - b1) * d;
            v[i] = b2 * v[i] + (1 - b2) * (d * d);
        }
        break;
    case FEDOPT_YOGI:
        for (size_t i = 0; i < count; i++) {
            double d = delta[i], d2 = d * d;
            double diff = v[i] - d2;
            double sign = (diff > 0) - (diff < 0);
            m[i] = b1 * m[i] + (1 - b1) * d;
            v[i] = v[i] - (1 - b2) * d2 * sign;
        }
        break;
    case FEDOPT_ADAGRAD:
        for (size_t i = 0; i < count; i++) {
            double d = delta[i];
            m[i] = d;
            v[i] = v[i] + d * d;
        }
        break;
    }
    for (size_t i = 0; i < count; i++)
        w[i] = (float)((double)w[i] + lr * m[i] / (sqrt(v[i]) + tau));
    return FC_OK;
}

fc_status fedopt_step(agg_opt_state *st, float *w, const double *delta, fc_error *err) {
    return fedopt_step_range(st, w, delta, 0, ((fedopt_state *)st)->dim, err);
}

fc_status fedopt_save(const agg_opt_state *st, fc_buf *out, fc_error *err) {
    const fedopt_state *s = (const fedopt_state *)st;
    fc_status rc = fc_buf_reserve(out, 16 + 2 * s->dim * sizeof(double));
    if (rc == FC_OK)
        rc = fc_buf_append_u32le(out, FEDOPT_STATE_V1);
    if (rc == FC_OK)
        rc = fc_buf_append_u32le(out, kind_tag(s->kind));
    if (rc == FC_OK)
        rc = fc_buf_append_u64le(out, s->dim);
    if (rc == FC_OK)
        rc = fc_buf_append_f64le_array(out, s->m, s->dim);
    if (rc == FC_OK)
        rc = fc_buf_append_f64le_array(out, s->v, s->dim);
    if (rc != FC_OK)
        return fc_error_set(err, rc, "optimizer %s: saving state: %s", kind_name(s->kind),
                            fc_strerror(rc));
    return FC_OK;
}

fc_status fedopt_load(agg_opt_state *st, const void *blob, size_t len, fc_error *err) {
    fedopt_state *s = (fedopt_state *)st;
    const char *name = kind_name(s->kind);
    fc_reader rd;
    uint32_t version = 0, tag = 0;
    uint64_t dim = 0;
    fc_reader_init(&rd, blob, len);
    if (fc_read_u32le(&rd, &version) != FC_OK)
        return fc_error_set(err, FC_ERR_FORMAT, "optimizer %s: state of %zu bytes is truncated",
                            name, len);
    if (version != FEDOPT_STATE_V1)
        return fc_error_set(err, FC_ERR_VERSION,
                            "optimizer %s: state version %u is not supported (this build reads "
                            "version %u)",
                            name, version, FEDOPT_STATE_V1);
    if (fc_read_u32le(&rd, &tag) != FC_OK || fc_read_u64le(&rd, &dim) != FC_OK)
        return fc_error_set(err, FC_ERR_FORMAT, "optimizer %s: state header is truncated", name);
    if (tag != kind_tag(s->kind))
        return fc_error_set(err, FC_ERR_FORMAT, "optimizer %s: the state blob is not %s state",
                            name, name);
    if (dim != s->dim)
        return fc_error_set(err, FC_ERR_SHAPE,
                            "optimizer %s: state is for %llu elements, the model has %zu", name,
                            (unsigned long long)dim, s->dim);
    if (len - 16 != 2 * s->dim * sizeof(double))
        return fc_error_set(err, FC_ERR_FORMAT,
                            "optimizer %s: state holds %zu bytes of moments, expected %zu", name,
                            len - 16, 2 * s->dim * sizeof(double));
    /* Read into the arrays only after the size check, so a bad blob leaves them as they were
     * except for non-finite values, which are checked first in a separate pass. */
    fc_reader check = rd;
    for (size_t i = 0; i < 2 * s->dim; i++) {
        double x = 0;
        if (fc_read_f64le(&check, &x) != FC_OK || !isfinite(x) || (i >= s->dim && x < 0))
            return fc_error_set(err, FC_ERR_CORRUPT,
                                "optimizer %s: state element %zu is not a valid moment", name, i);
    }
    for (size_t i = 0; i < s->dim; i++)
        fc_read_f64le(&rd, &s->m[i]);
    for (size_t i = 0; i < s->dim; i++)
        fc_read_f64le(&rd, &s->v[i]);
    return FC_OK;
}

void fedopt_destroy(agg_opt_state *st) {
    fedopt_state *s = (fedopt_state *)st;
    if (!s)
        return;
    fc_free(s->m);
    fc_free(s->v);
    fc_free(s);
}
