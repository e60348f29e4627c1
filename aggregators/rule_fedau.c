/* rule_fedau.c: FedAU (Wang & Ji, ICLR 2024; IBM/fedau), the lazy form of the reference §3.
 *
 * Per client it keeps c (round of the last closed interval), S (closed intervals) and Omega (their
 * mean length). A participant in round t first accounts the cutoff closes that happened while it
 * was absent, takes omega = Omega (1 before any close), then closes its current interval. Only
 * participants are touched. D = (eta/N) sum omega_i Delta_i, N = clients registered at the round's
 * start. Streaming: O(dim) accumulator plus 32 bytes per known client. It never keeps an update.
 *
 * State blob v1 (little-endian): u32 version=1, u32 tag "FDAU", u64 count, then count records
 * sorted by ascending client_id: u64 client_id, u64 c+1 (so that "never closed" -1 is 0),
 * u64 S, f64 Omega.
 */
#include "aggregators/agg.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "aggregators/kernels.h"
#include "aggregators/rules.h"
#include "core/alloc.h"

#define FEDAU_STATE_V1 1u
#define FEDAU_TAG 0x55414446u /* "FDAU" */
#define FEDAU_RECORD 32u

typedef struct fedau_client {
    uint64_t id;
    int64_t last_close; /* c_n; -1 = none */
    uint64_t closes;    /* S_n */
    double omega_mean;  /* Omega_n */
} fedau_client;

typedef struct fedau_state {
    size_t dim;
    uint64_t round, num_registered, cutoff;
    double lr;
    double *acc;
    fedau_client *clients; /* sorted by id */
    size_t n_clients, cap_clients;
    double *omegas; /* omega per index, for the report */
    size_t n, cap_omegas;
} fedau_state;

static const agg_param_spec fedau_params[] = {
    {"cutoff", AGG_PARAM_UINT, "0", 0, 1e15, NULL, "interval cutoff K; 0 = no cutoff"},
    {"lr", AGG_PARAM_DOUBLE, "1.0", 0, DBL_MAX, NULL, "global learning rate eta"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static fc_status fedau_create(const agg_params *p, const agg_context *ctx, agg_state **out,
                              fc_error *err) {
    agg_value v[2];
    fc_status st = agg_params_parse("rule fedau", fedau_params, p, v, err);
    if (st != FC_OK)
        return st;
    if (ctx->num_registered == 0)
        return fc_error_set(err, FC_ERR_INVALID,
                            "rule fedau: the number of registered clients N is 0");
    if (ctx->round > (uint64_t)INT64_MAX - 1)
        return fc_error_set(err, FC_ERR_RANGE, "rule fedau: round %llu is too large",
                            (unsigned long long)ctx->round);
    fedau_state *s = fc_calloc(1, sizeof *s);
    if (!s || !(s->acc = fc_calloc(ctx->dim, sizeof(double)))) {
        fc_free(s);
        return fc_error_set(err, FC_ERR_NOMEM, "rule fedau: out of memory for %zu doubles",
                            ctx->dim);
    }
    s->dim = ctx->dim;
    s->round = ctx->round;
    s->num_registered = ctx->num_registered;
    s->cutoff = v[0].u;
    s->lr = v[1].d;
    *out = (agg_state *)s;
    return FC_OK;
}

/* Index of id, or where it would be inserted (*found says which). */
static size_t find_client(const fedau_state *s, uint64_t id, int *found) {
    size_t lo = 0, hi = s->n_clients;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->clients[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < s->n_clients && s->clients[lo].id == id;
    return lo;
}

static fc_status fedau_check_n(const agg_state *st, size_t n, fc_error *err) {
    const fedau_state *s = (const fedau_state *)st;
    if ((uint64_t)n > s->num_registered)
        return fc_error_set(err, FC_ERR_REQUIREMENT,
                            "rule fedau: %zu participants but only N = %llu registered clients", n,
                            (unsigned long long)s->num_registered);
    return FC_OK;
}

static fc_status fedau_add(agg_state *st, const agg_update *u, fc_error *err) {
    fedau_state *s = (fedau_state *)st;
    int found;
    size_t k;
    const int64_t t = (int64_t)s->round;
    if (u->registered_round > s->round)
        return fc_error_set(err, FC_ERR_INVALID,
                            "rule fedau: client %llu registered at round %llu, after round %llu",
                            (unsigned long long)u->client_id,
                            (unsigned long long)u->registered_round, (unsigned long long)s->round);
    k = find_client(s, u->client_id, &found);
    if (found && s->clients[k].last_close >= t)
        return fc_error_set(err, FC_ERR_STATE,
                            "rule fedau: client %llu was already counted at round %lld, this is "
                            "round %lld",
                            (unsigned long long)u->client_id, (long long)s->clients[k].last_close,
                            (long long)t);
    if (s->n == s->cap_omegas) {
        size_t cap = s->cap_omegas ? s->cap_omegas * 2 : 16;
        double *g = fc_realloc(s->omegas, cap * sizeof *g);
        if (!g)
            return fc_error_set(err, FC_ERR_NOMEM, "rule fedau: out of memory");
        s->omegas = g;
        s->cap_omegas = cap;
    }
    if (!found) {
        if (s->n_clients == s->cap_clients) {
            size_t cap = s->cap_clients ? s->cap_clients * 2 : 16;
            fedau_client *g = fc_realloc(s->clients, cap * sizeof *g);
            if (!g)
                return fc_error_set(err, FC_ERR_NOMEM, "rule fedau: out of memory");
            s->clients = g;
            s->cap_clients = cap;
        }
        memmove(s->clients + k + 1, s->clients + k, (s->n_clients - k) * sizeof *s->clients);
        s->n_clients++;
        /* A client registered at round r counts as if its last close was at r-1. */
        s->clients[k] = (fedau_client){u->client_id, (int64_t)u->registered_round - 1, 0, 0.0};
    }
    fedau_client *c = &s->clients[k];
    /* The lazy form, exactly as the reference §3 writes it. */
    uint64_t g = (uint64_t)(t - 1 - c->last_close);
    uint64_t q = s->cutoff ? g / s->cutoff : 0;
    uint64_t r = g - q * s->cutoff;
    double S = (double)c->closes;
    if (q > 0) {
        c->omega_mean = (S * c->omega_mean + (double)q * (double)s->cutoff) / (S + (double)q);
        c->closes += q;
        S = (double)c->closes;
    }
    double omega = c->closes > 0 ? c->omega_mean : 1.0;
    c->omega_mean = (S * c->omega_mean + (double)r + 1.0) / (S + 1.0);
    c->closes += 1;
    c->last_close = t;
    agg_fold_update(s->acc, u, omega, s->dim);
    s->omegas[s->n++] = omega;
    return FC_OK;
}

static fc_status fedau_finish(agg_state *st, double *out, agg_report *rep, fc_error *err) {
    fedau_state *s = (fedau_state *)st;
    double scale = s->lr / (double)s->num_registered;
    for (size_t i = 0; i < s->dim; i++)
        out[i] = scale * s->acc[i];
    if (s->n) {
        double *w = fc_mallocarray(s->n, sizeof *w);
        if (!w)
            return fc_error_set(err, FC_ERR_NOMEM, "rule fedau: out of memory");
        memcpy(w, s->omegas, s->n * sizeof *w);
        fc_free(rep->weights_used);
        rep->weights_used = w;
        rep->n_weights_used = s->n;
    }
    return FC_OK;
}

static fc_status fedau_save(const agg_state *st, fc_buf *out, fc_error *err) {
    const fedau_state *s = (const fedau_state *)st;
    fc_status rc = fc_buf_reserve(out, 16 + s->n_clients * (size_t)FEDAU_RECORD);
    if (rc == FC_OK)
        rc = fc_buf_append_u32le(out, FEDAU_STATE_V1);
    if (rc == FC_OK)
        rc = fc_buf_append_u32le(out, FEDAU_TAG);
    if (rc == FC_OK)
        rc = fc_buf_append_u64le(out, s->n_clients);
    for (size_t i = 0; rc == FC_OK && i < s->n_clients; i++) {
        const fedau_client *c = &s->clients[i];
        if ((rc = fc_buf_append_u64le(out, c->id)) == FC_OK &&
            (rc = fc_buf_append_u64le(out, (uint64_t)(c->last_close + 1))) == FC_OK &&
            (rc = fc_buf_append_u64le(out, c->closes)) == FC_OK)
            rc = fc_buf_append_f64le(out, c->omega_mean);
    }
    if (rc != FC_OK)
        return fc_error_set(err, rc, "rule fedau: saving state: %s", fc_strerror(rc));
    return FC_OK;
}

static fc_status fedau_load(agg_state *st, const void *blob, size_t len, fc_error *err) {
    fedau_state *s = (fedau_state *)st;
    fc_reader rd;
    uint32_t version = 0, tag = 0;
    uint64_t count = 0;
    fc_reader_init(&rd, blob, len);
    if (fc_read_u32le(&rd, &version) != FC_OK)
        return fc_error_set(err, FC_ERR_FORMAT, "rule fedau: state of %zu bytes is truncated", len);
    if (version != FEDAU_STATE_V1)
        return fc_error_set(err, FC_ERR_VERSION,
                            "rule fedau: state version %u is not supported (this build reads "
                            "version %u)",
                            version, FEDAU_STATE_V1);
    if (fc_read_u32le(&rd, &tag) != FC_OK || fc_read_u64le(&rd, &count) != FC_OK)
        return fc_error_set(err, FC_ERR_FORMAT, "rule fedau: state header is truncated");
    if (tag != FEDAU_TAG)
        return fc_error_set(err, FC_ERR_FORMAT, "rule fedau: the state blob is not fedau state");
    if (count > (len - 16) / FEDAU_RECORD || (len - 16) != count * FEDAU_RECORD)
        return fc_error_set(err, FC_ERR_FORMAT,
                            "rule fedau: state says %llu clients but holds %zu bytes of records",
                            (unsigned long long)count, len - 16);
    fedau_client *cl = count ? fc_mallocarray((size_t)count, sizeof *cl) : NULL;
    if (count && !cl)
        return fc_error_set(err, FC_ERR_NOMEM, "rule fedau: out of memory loading state");
    for (size_t i = 0; i < count; i++) {
        uint64_t id, c1, S;
        double om;
        if (fc_read_u64le(&rd, &id) || fc_read_u64le(&rd, &c1) || fc_read_u64le(&rd, &S) ||
            fc_read_f64le(&rd, &om)) {
            fc_free(cl);
            return fc_error_set(err, FC_ERR_FORMAT, "rule fedau: state record %zu truncated", i);
        }
        if ((i > 0 && id <= cl[i - 1].id) || c1 > (uint64_t)INT64_MAX || !isfinite(om) || om < 0 ||
            (S == 0 && om != 0)) {
            fc_free(cl);
            return fc_error_set(err, FC_ERR_CORRUPT,
                                "rule fedau: state record %zu (client %llu) is inconsistent", i,
                                (unsigned long long)id);
        }
        cl[i] = (fedau_client){id, (int64_t)c1 - 1, S, om};
    }
    fc_free(s->clients);
    s->clients = cl;
    s->n_clients = s->cap_clients = (size_t)count;
    return FC_OK;
}

static void fedau_destroy(agg_state *st) {
    fedau_state *s = (fedau_state *)st;
    if (!s)
        return;
    fc_free(s->acc);
    fc_free(s->clients);
    fc_free(s->omegas);
    fc_free(s);
}

static double *fedau_result_buffer(agg_state *st) { return ((fedau_state *)st)->acc; }

const agg_rule agg_fedau = {
    .version = AGG_RULE_V1,
    .name = "fedau",
    .summary = "FedAU: participation-adaptive weights, D = (lr/N) sum omega_i Delta_i",
    .flags = AGG_STREAMING | AGG_STATEFUL | AGG_USES_CLIENTS,
    .params = fedau_params,
    .check_n = fedau_check_n,
    .create = fedau_create,
    .add = fedau_add,
    .finish = fedau_finish,
    .save_state = fedau_save,
    .load_state = fedau_load,
    .destroy = fedau_destroy,
    .result_buffer = fedau_result_buffer,
};
