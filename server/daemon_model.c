/* daemon_model.c: model versions as the daemon serves them.
 *
 * Owns the descriptions of announced versions (specs, size, SHA-256), the session layer's model
 * source (downloads are read from the store in 1 MiB ranges on the loop thread, so no version's
 * data is held in memory between rounds), the import of [round] initial_model and the commit of
 * a client's proposed initial model. Every stored version is f32. It never aggregates and never
 * writes the store except through the writer.
 */
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/safetensors.h"
#include "proto/stream.h"
#include "server/api.h"
#include "server/daemon.h"

/* Tensor specs are stored as api_specs_to_json writes them (docs/http-api.md), so the HTTP
 * export can rebuild a safetensors header from any version. A model has at most this many. */
#define DMODEL_MAX_TENSORS 1000000

void dmodel_free(dmodel *m) {
    if (!m)
        return;
    api_specs_free(m->specs, m->n_specs);
    fc_free(m->specs_json);
    fc_free(m);
}

const dmodel *dmodel_current(const fcd *d) { return d->models; }

static const dmodel *find_version(const fcd *d, uint64_t version) {
    for (const dmodel *m = d->models; m; m = m->next)
        if (m->version == version)
            return m;
    return NULL;
}

fc_status dmodel_load(fcd *d, uint64_t version, fc_error *err) {
    store_model_info info;
    memset(&info, 0, sizeof info);
    fc_status st = store_model_info_get(d->ro, (int64_t)version, &info, err);
    if (st != FC_OK)
        return st;
    dmodel *m = fc_calloc(1, sizeof *m);
    if (!m) {
        store_model_info_clear(&info);
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
    }
    m->version = version;
    m->bytes = info.size;
    memcpy(m->sha256, info.sha256, 32);
    m->specs_json = fc_strdup(info.tensor_specs_json ? info.tensor_specs_json : "[]");
    store_model_info_clear(&info);
    if (!m->specs_json) {
        dmodel_free(m);
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
    }
    if ((st = api_specs_from_json(m->specs_json, DMODEL_MAX_TENSORS, &m->specs, &m->n_specs,
                                  err)) != FC_OK) {
        fc_error_prefix(err, "model version %llu", (unsigned long long)version);
        dmodel_free(m);
        return st;
    }
    uint64_t total = 0, numel = 0;
    for (size_t i = 0; i < m->n_specs; i++) {
        uint64_t k = 0;
        if (m->specs[i].dtype != FC_DTYPE_F32 || fc_spec_numel(&m->specs[i], &k) != FC_OK) {
            dmodel_free(m);
            return fc_error_set(err, FC_ERR_CORRUPT,
                                "model version %llu: tensor %zu is not a valid f32 tensor",
                                (unsigned long long)version, i);
        }
        numel += k;
        total += k * 4;
    }
    if (total != m->bytes) {
        dmodel_free(m);
        return fc_error_set(err, FC_ERR_CORRUPT,
                            "model version %llu: specs give %llu bytes, the store has %llu",
                            (unsigned long long)version, (unsigned long long)total,
                            (unsigned long long)m->bytes);
    }
    m->numel = numel;
    m->next = d->models;
    d->models = m;
    return FC_OK;
}

/* ---- the session layer's model source ---- */

static fc_status src_describe(void *ctx, uint64_t version, sess_model_info *out, fc_error *err) {
    fcd *d = ctx;
    const dmodel *m = version ? find_version(d, version) : d->models;
    if (!m)
        return fc_error_set(err, FC_ERR_NOT_FOUND,
                            version ? "model version %llu is not available"
                                    : "no model yet (version %llu)",
                            (unsigned long long)version);
    out->version = m->version;
    out->specs = m->specs;
    out->n_specs = m->n_specs;
    out->total_bytes = m->bytes;
    memcpy(out->sha256, m->sha256, 32);
    return FC_OK;
}

typedef struct copy_sink {
    uint8_t *buf;
    uint64_t base;
    size_t len;
} copy_sink;

static fc_status copy_into(void *ud, const void *data, size_t len, uint64_t offset,
                           fc_error *err) {
    copy_sink *c = ud;
    if (offset < c->base || offset - c->base + len > c->len)
        return fc_error_set(err, FC_ERR_CORRUPT, "store returned bytes outside the range asked");
    memcpy(c->buf + (offset - c->base), data, len);
    return FC_OK;
}

static fc_status src_read(void *ctx, uint64_t version, uint64_t offset, void *buf, size_t len,
                          fc_error *err) {
    fcd *d = ctx;
    copy_sink c = {buf, offset, len};
    return store_model_read_range(d->ro, (int64_t)version, offset, len, copy_into, &c, err);
}

void dmodel_source(fcd *d, sess_model_source *src) {
    src->describe = src_describe;
    src->read = src_read;
    src->ctx = d;
}

/* ---- reading a version's bytes into memory ---- */

static fc_status into_f32(void *ud, const void *data, size_t len, uint64_t offset,
                          fc_error *err) {
    dmodel_f32 *s = ud;
    if (offset + len > s->size)
        return fc_error_set(err, FC_ERR_CORRUPT, "model data longer than its description");
    memcpy(s->dst + offset, data, len);
    return FC_OK;
}

store_sink_fn dmodel_f32_sink(void) { return into_f32; }

/* ---- committing a first version (initial model or proposal) ---- */

/* Source over a model's tensors, converted to f32 in order. */
typedef struct model_src {
    const fc_model *m;
    size_t tensor;
    uint64_t elem; /* next element of the current tensor */
} model_src;

static fc_status model_source(void *ud, void *buf, size_t cap, size_t *got, fc_error *err) {
    model_src *s = ud;
    size_t room = cap / 4, done = 0;
    float *out = buf;
    while (done < room && s->tensor < s->m->count) {
        const fc_tensor *t = &s->m->tensors[s->tensor];
        uint64_t n = t->nbytes / fc_dtype_size(t->spec.dtype);
        if (s->elem >= n) {
            s->tensor++;
            s->elem = 0;
            continue;
        }
        size_t k = (size_t)(n - s->elem < room - done ? n - s->elem : room - done);
        const uint8_t *src = (const uint8_t *)t->data + s->elem * fc_dtype_size(t->spec.dtype);
        if (fc_convert_to_f32(t->spec.dtype, src, k, out + done) != FC_OK)
            return fc_error_set(err, FC_ERR_FORMAT, "tensor '%s' has an unsupported dtype",
                                t->spec.name);
        done += k;
        s->elem += k;
    }
    *got = done * 4;
    return FC_OK;
}

typedef struct first_commit {
    fcd *d;
    fc_model model;          /* the tensors (owned or borrowed) */
    fc_st_file *file;        /* initial_model mapping */
    sess_update up;          /* proposal */
    fc_tensor_spec *specs;   /* f32 specs */
    char *specs_json;
    uint64_t bytes;
    char origin[DAEMON_NAME_MAX + 32];
} first_commit;

static void first_commit_free(first_commit *fc) {
    if (!fc)
        return;
    fc_model_free(&fc->model);
    fc_st_close(fc->file);
    sess_update_release(&fc->up);
    fc_free(fc->specs);
    fc_free(fc->specs_json);
    fc_free(fc);
}

/* Checks the layout (f32-convertible, finite) and fills specs/specs_json/bytes. */
static fc_status first_prepare(first_commit *fc, fc_error *err) {
    const fc_model *m = &fc->model;
    if (m->count == 0)
        return fc_error_set(err, FC_ERR_FORMAT, "%s has no tensors", fc->origin);
    fc->specs = fc_calloc(m->count, sizeof *fc->specs);
    if (!fc->specs)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
    uint64_t bytes = 0;
    for (size_t i = 0; i < m->count; i++) {
        const fc_tensor *t = &m->tensors[i];
        uint64_t n = t->nbytes / fc_dtype_size(t->spec.dtype);
        fc->specs[i] = t->spec;
        fc->specs[i].dtype = FC_DTYPE_F32;
        for (uint64_t k = 0; k < n; k++) {
            float v;
            fc_convert_to_f32(t->spec.dtype, (const uint8_t *)t->data + k * fc_dtype_size(t->spec.dtype), 1, &v);
            if (!(v - v == 0))
                return fc_error_set(err, FC_ERR_NON_FINITE,
                                    "%s: tensor '%s' element %llu is not finite", fc->origin,
                                    t->spec.name, (unsigned long long)k);
        }
        bytes += n * 4;
    }
    fc->bytes = bytes;
    return api_specs_to_json(fc->specs, m->count, &fc->specs_json, err);
}

static fc_status first_job(store *s, void *ud, fc_error *err) {
    first_commit *fc = ud;
    int64_t latest = 0;
    fc_status st = store_latest_version(s, &latest, err);
    if (st != FC_OK)
        return st;
    if (latest != 0)
        return fc_error_set(err, FC_ERR_EXISTS, "a model version already exists");
    model_src src = {&fc->model, 0, 0};
    store_commit c = {
        .round_id = 0,
        .version = 1,
        .tensor_specs_json = fc->specs_json,
        .model_size = fc->bytes,
        .source = model_source,
        .source_ud = &src,
        .ended_at = daemon_unix_ms(), /* the version's creation time */
    };
    return store_commit_round(s, &c, NULL, err);
}

fc_status dmodel_import_initial(fcd *d, fc_error *err) {
    const char *path = d->cfg->round.initial_model;
    first_commit *fc = fc_calloc(1, sizeof *fc);
    if (!fc)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
    snprintf(fc->origin, sizeof fc->origin, "[round] initial_model %s", path);
    fc_status st = fc_st_open(path, &fc->file, err);
    if (st == FC_OK) {
        const fc_model *m = fc_st_model(fc->file);
        for (size_t i = 0; st == FC_OK && i < m->count; i++)
            st = fc_model_add_borrowed(&fc->model, m->tensors[i].spec.name,
                                       m->tensors[i].spec.dtype, m->tensors[i].spec.ndim,
                                       m->tensors[i].spec.shape, m->tensors[i].data, err);
    } else {
        fc_error_prefix(err, "[round] initial_model");
    }
    if (st == FC_OK)
        st = first_prepare(fc, err);
    if (st == FC_OK)
        st = store_writer_call(d->writer, first_job, fc, err);
    if (st == FC_OK)
        FC_LOG(FC_LOG_INFO, "initial model imported", FC_LS("path", path), FC_LU("version", 1),
               FC_LU("bytes", fc->bytes));
    first_commit_free(fc);
    return st;
}

static void proposal_done(fcd *d, dwjob *j, fc_status st, const fc_error *err) {
    first_commit *fc = j->ud;
    d->proposal_committing = 0;
    if (st == FC_OK) {
        fc_error e = {0};
        st = dmodel_load(d, 1, &e);
        if (st != FC_OK)
            FC_LOG(FC_LOG_ERROR, "proposed model committed but unreadable",
                   FC_LS("error", e.msg));
        else
            FC_LOG(FC_LOG_INFO, "initial model committed", FC_LS("from", fc->origin),
                   FC_LU("version", 1), FC_LU("bytes", fc->bytes));
    } else {
        FC_LOG(FC_LOG_WARN, "proposed model not committed", FC_LS("from", fc->origin),
               FC_LS("error", err->msg));
    }
    first_commit_free(fc);
    fc_free(j);
    if (d->models) {
        /* the scheduler started without a model: it counts versions from this one */
        round_restore_info ri = {.last_round_id = d->last_round_at_start,
                                 .model_version = d->models->version};
        fc_error e = {0};
        if (round_restore(d->sched, &ri, &e) != FC_OK)
            FC_LOG(FC_LOG_ERROR, "scheduler not told of the initial model", FC_LS("error", e.msg));
        dround_model_ready(d);
    }
    else
        dround_pump(d); /* ask another client */
}

void dmodel_commit_proposal(fcd *d, sess_update *u) {
    const dclient *cl = daemon_client(d, u->client_id);
    first_commit *fc = fc_calloc(1, sizeof *fc);
    dwjob *j = fc_calloc(1, sizeof *j);
    fc_error err = {0};
    if (!fc || !j || d->models || d->proposal_committing) {
        FC_LOG(FC_LOG_INFO, "proposal ignored", FC_LU("client", u->client_id),
               FC_LS("reason", d->models ? "a model exists" : "out of memory or busy"));
        sess_update_release(u);
        fc_free(fc);
        fc_free(j);
        return;
    }
    fc->d = d;
    fc->up = *u;
    memset(u, 0, sizeof *u);
    snprintf(fc->origin, sizeof fc->origin, "client %s", cl ? cl->name : "?");
    fc_status st = fc_stage_view_model(fc->up.stage, &fc->model, &err);
    if (st == FC_OK)
        st = first_prepare(fc, &err);
    if (st != FC_OK) {
        FC_LOG(FC_LOG_WARN, "proposal refused", FC_LS("from", fc->origin),
               FC_LS("error", err.msg));
        first_commit_free(fc);
        fc_free(j);
        d->proposer = 0;
        dround_pump(d);
        return;
    }
    d->proposal_committing = 1;
    j->fn = first_job;
    j->ud = fc;
    j->done = proposal_done;
    daemon_submit(d, j);
}
