/* client.c: the SDK's public API: tasks, model download, update upload, evaluation results.
 *
 * client.c owns the protocol exchanges of a training client on top of conn.c: it turns Task
 * frames into fc_task objects holding a hash-checked copy of the model, streams updates (computing
 * w_i - w_t chunk by chunk, never a second model-sized buffer), and decides which exchanges are
 * repeated after a reconnect. It never touches sockets or TLS directly (conn.c does) and never
 * aborts on out-of-memory.
 */
#include <errno.h>
#include <math.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/conn.h"
#include "core/alloc.h"
#include "core/prox.h"

struct fc_task {
    uint64_t round, version, deadline_ms;
    fc_task_type kind;
    char **keys, **values;
    size_t n_config;
    fc_tensor_spec *specs;
    size_t n_specs;
    uint64_t total;
    uint8_t sha[FC_SHA256_BYTES];
    fc_stage *stage; /* the downloaded model's bytes */
    fc_model model;  /* view of stage once complete */
};

/* One upload: a result (a delta) or an initial model proposal (weights). */
typedef struct upload {
    const fc_task *t;
    fc_submit_kind kind;
    const void *const *tensors;
    uint8_t sha[FC_SHA256_BYTES];
    uint64_t num_examples;
    const fc_wire_metric *metrics;
    size_t n_metrics;
    uint64_t acked; /* highest offset the server acknowledged */
    uint64_t sent;  /* end of the last chunk handed to the connection */
    int is_delta;   /* UpdateBegin.is_delta: 1 for results, 0 for an initial model proposal */
} upload;

/* ---- small helpers ---- */

static void clear_err(fc_client *c) {
    c->err.code = FC_OK;
    c->err.msg[0] = '\0';
}

/* Reconnects for a call that lost its connection, or gives up. Returns FC_OK to try again. */
static fc_status retry_after_loss(fc_client *c, int *cycles) {
    if (c->finished)
        return c->err.code ? c->err.code : FC_ERR_CLOSED;
    if (c->max_attempts == 0 || ++*cycles > c->max_attempts) {
        c->lost = 0;
        char last[FC_ERROR_MSG_MAX];
        snprintf(last, sizeof last, "%s", c->err.msg);
        return fc_error_set(&c->err, FC_ERR_CLOSED, "connection lost, not retried further: %s",
                            last);
    }
    return conn_reconnect(c);
}

static fc_status ensure_connected(fc_client *c) {
    if (c->connected)
        return FC_OK;
    if (c->finished)
        return fc_error_set(&c->err, FC_ERR_CLOSED, "the server ended the session");
    return conn_reconnect(c);
}

static void stash_task(fc_client *c, fc_envelope *env) {
    fc_envelope_free(c->pending_task);
    c->pending_task = env;
}

/* Handles a frame that is not the one an exchange waits for. Returns FC_OK when it was
 * absorbed (env freed or kept), else the status that ends the exchange. */
static fc_status handle_other(fc_client *c, fc_envelope *env, const char *waiting_for) {
    fc_status st;
    switch (env->body_case) {
    case FEDCOORD__V1__ENVELOPE__BODY_ACK:
        fc_envelope_free(env);
        return FC_OK;
    case FEDCOORD__V1__ENVELOPE__BODY_TASK:
        stash_task(c, env);
        return FC_OK;
    case FEDCOORD__V1__ENVELOPE__BODY_ERROR:
        st = conn_server_error(c, env->error);
        fc_envelope_free(env);
        return st;
    case FEDCOORD__V1__ENVELOPE__BODY_BYE:
        fc_error_set(&c->err, FC_ERR_CLOSED, "the server ended the session while %s: %s",
                     waiting_for,
                     env->bye->reason && *env->bye->reason ? env->bye->reason : "(no reason)");
        fc_envelope_free(env);
        conn_drop(c);
        c->lost = 0;
        c->finished = 1;
        return FC_ERR_CLOSED;
    default:
        fc_error_set(&c->err, FC_ERR_PROTOCOL, "unexpected %s while %s",
                     fc_wire_body_name(env->body_case), waiting_for);
        fc_envelope_free(env);
        return conn_violation(c, FC_ERR_PROTOCOL);
    }
}

/* ---- tasks ---- */

static void task_free_model(fc_task *t) {
    fc_model_free(&t->model);
    fc_stage_free(t->stage);
    t->stage = NULL;
}

void fc_task_free(fc_task *t) {
    if (!t)
        return;
    task_free_model(t);
    for (size_t i = 0; i < t->n_config; i++) {
        fc_free(t->keys[i]);
        fc_free(t->values[i]);
    }
    fc_free(t->keys);
    fc_free(t->values);
    fc_wire_specs_free(t->specs, t->n_specs);
    fc_free(t);
}

static fc_status task_from_env(fc_client *c, const Fedcoord__V1__Task *w, fc_task **out) {
    fc_task *t = fc_calloc(1, sizeof *t);
    if (!t)
        return fc_error_set(&c->err, FC_ERR_NOMEM, "out of memory for a task");
    fc_model m0 = FC_MODEL_INIT;
    t->model = m0;
    t->round = w->round;
    t->version = w->model_version;
    t->deadline_ms = w->deadline_unix_ms;
    t->kind = w->kind == FEDCOORD__V1__TASK_KIND__TASK_KIND_EVALUATE ? FC_TASK_TYPE_EVALUATE
                                                                     : FC_TASK_TYPE_TRAIN;
    fc_status st = fc_wire_specs_from_wire(w->tensors, w->n_tensors, &t->specs, &t->total, &c->err);
    if (st != FC_OK) {
        fc_error_prefix(&c->err, "task for round %llu", (unsigned long long)w->round);
        goto fail;
    }
    t->n_specs = w->n_tensors;
    if (t->total > c->max_model_bytes) {
        st = fc_error_set(&c->err, FC_ERR_LIMIT,
                          "task for round %llu: model of %llu bytes exceeds max_model_bytes %llu",
                          (unsigned long long)w->round, (unsigned long long)t->total,
                          (unsigned long long)c->max_model_bytes);
        goto fail;
    }
    memcpy(t->sha, w->model_sha256.data, FC_SHA256_BYTES); /* length checked by fc_wire_validate */
    if (w->n_config) {
        t->keys = fc_calloc(w->n_config, sizeof *t->keys);
        t->values = fc_calloc(w->n_config, sizeof *t->values);
        if (!t->keys || !t->values) {
            st = fc_error_set(&c->err, FC_ERR_NOMEM, "out of memory for the task config");
            goto fail;
        }
        for (size_t i = 0; i < w->n_config; i++) {
            t->keys[i] = fc_strdup(w->config[i]->key ? w->config[i]->key : "");
            t->values[i] = fc_strdup(w->config[i]->value ? w->config[i]->value : "");
            t->n_config = i + 1;
            if (!t->keys[i] || !t->values[i]) {
                st = fc_error_set(&c->err, FC_ERR_NOMEM, "out of memory for the task config");
                goto fail;
            }
        }
    }
    *out = t;
    return FC_OK;
fail:
    fc_task_free(t);
    return st;
}

static fc_status check_begin(fc_client *c, fc_task *t, const Fedcoord__V1__ModelBegin *b) {
    if (b->version != t->version)
        return fc_error_set(&c->err, FC_ERR_PROTOCOL,
                            "ModelBegin sends version %llu, the task asked for %llu",
                            (unsigned long long)b->version, (unsigned long long)t->version);
    if (b->n_tensors != t->n_specs)
        return fc_error_set(&c->err, FC_ERR_SHAPE, "ModelBegin lists %zu tensors, the task %zu",
                            b->n_tensors, t->n_specs);
    for (size_t i = 0; i < t->n_specs; i++) {
        const Fedcoord__V1__TensorSpec *s = b->tensors[i];
        const fc_tensor_spec *e = &t->specs[i];
        int same = s->name && strcmp(s->name, e->name) == 0 && (int)s->dtype == (int)e->dtype &&
                   s->n_shape == e->ndim;
        for (size_t d = 0; same && d < e->ndim; d++)
            same = s->shape[d] == e->shape[d];
        if (!same)
            return fc_error_set(&c->err, FC_ERR_SHAPE,
                                "ModelBegin tensor %zu ('%s') differs from the task's '%s'", i,
                                s->name ? s->name : "", e->name);
    }
    if (b->total_bytes != t->total)
        return fc_error_set(&c->err, FC_ERR_SHAPE, "ModelBegin total %llu, the task %llu",
                            (unsigned long long)b->total_bytes, (unsigned long long)t->total);
    if (b->sha256.len != FC_SHA256_BYTES || memcmp(b->sha256.data, t->sha, FC_SHA256_BYTES) != 0)
        return fc_error_set(&c->err, FC_ERR_HASH,
                            "ModelBegin announces a SHA-256 different from the task's");
    return FC_OK;
}

/* One ModelRequest exchange, resuming from the bytes already staged. */
static fc_status download_once(fc_client *c, fc_task *t) {
    uint64_t offset = t->stage ? fc_stage_received(t->stage) : 0;
    fc_wire_msg m;
    fc_status st = fc_wire_model_request(&m, ++c->seq_out, t->version, offset, &c->err);
    if (st != FC_OK) {
        fc_wire_msg_free(&m);
        return st;
    }
    if ((st = conn_send(c, &m)) != FC_OK)
        return st;
    int begun = 0;
    for (;;) {
        conn_msg msg;
        if ((st = conn_recv(c, 0, &msg)) != FC_OK)
            return st;
        fc_envelope *env = msg.env;
        if (msg.is_chunk) {
            if (!begun) {
                fc_envelope_free(env);
                fc_error_set(&c->err, FC_ERR_PROTOCOL, "model chunk before ModelBegin");
                return conn_violation(c, FC_ERR_PROTOCOL);
            }
            st = fc_stage_add_chunk(t->stage, msg.chunk.tensor_index, msg.chunk.offset,
                                    msg.chunk.data, msg.chunk.data_len, &c->err);
            fc_envelope_free(env);
            if (st != FC_OK) {
                task_free_model(t);
                return conn_violation(c, st);
            }
            continue;
        }
        if (env->body_case == FEDCOORD__V1__ENVELOPE__BODY_MODEL_BEGIN && !begun) {
            const Fedcoord__V1__ModelBegin *b = env->model_begin;
            st = check_begin(c, t, b);
            if (st == FC_OK && t->stage) {
                st = fc_stage_check_resume(t->stage, b->offset, &c->err);
            } else if (st == FC_OK) {
                if (b->offset != 0) {
                    st = fc_error_set(&c->err, FC_ERR_PROTOCOL,
                                      "ModelBegin starts at byte %llu, 0 was requested",
                                      (unsigned long long)b->offset);
                } else {
                    fc_stage_config sc;
                    memset(&sc, 0, sizeof sc);
                    sc.max_total_bytes = c->max_model_bytes;
                    sc.max_tensors = FC_WIRE_MAX_TENSORS;
                    sc.label = "model";
                    st = fc_stage_create(t->specs, t->n_specs, t->total, &sc, &t->stage, &c->err);
                    if (st == FC_ERR_NOMEM || st == FC_ERR_LIMIT) {
                        fc_envelope_free(env);
                        conn_drop(c);
                        c->lost = 0;
                        return st;
                    }
                }
            }
            fc_envelope_free(env);
            if (st != FC_OK) {
                task_free_model(t);
                return conn_violation(c, st);
            }
            begun = 1;
            continue;
        }
        if (env->body_case == FEDCOORD__V1__ENVELOPE__BODY_MODEL_END && begun) {
            const Fedcoord__V1__ModelEnd *e = env->model_end;
            if (e->version != t->version || memcmp(e->sha256.data, t->sha, FC_SHA256_BYTES) != 0) {
                fc_envelope_free(env);
                task_free_model(t);
                return fc_error_set(&c->err, FC_ERR_HASH,
                                    "ModelEnd for version %llu announces a different SHA-256 "
                                    "than the task",
                                    (unsigned long long)t->version);
            }
            st = fc_stage_finish(t->stage, t->sha, FC_SHA256_BYTES, &c->err);
            fc_envelope_free(env);
            if (st == FC_OK)
                st = fc_stage_view_model(t->stage, &t->model, &c->err);
            if (st != FC_OK) {
                fc_error_prefix(&c->err, "model version %llu", (unsigned long long)t->version);
                task_free_model(t);
            }
            return st;
        }
        if ((st = handle_other(c, env, "downloading the model")) != FC_OK) {
            task_free_model(t);
            return st;
        }
    }
}

/* Downloads t's model, resuming after connection loss and retrying once from byte 0 after a
 * hash mismatch (docs/protocol.md 5.3). */
static fc_status download(fc_client *c, fc_task *t, int *cycles) {
    int hash_retries = 0;
    for (;;) {
        fc_status st = ensure_connected(c);
        if (st == FC_OK)
            st = download_once(c, t);
        if (st == FC_OK)
            return FC_OK;
        if (c->lost) {
            if ((st = retry_after_loss(c, cycles)) != FC_OK)
                return st;
            continue;
        }
        if (st == FC_ERR_HASH && hash_retries++ == 0) {
            task_free_model(t);
            continue;
        }
        return st;
    }
}

/* ---- initial model proposal ---- */

/* The server has no model and asks this client to propose one (docs/protocol.md, 5.7). */
static int is_proposal(const Fedcoord__V1__Task *w) {
    return w->round == 0 && w->model_version == 0 && w->n_tensors == 0 &&
           w->kind == FEDCOORD__V1__TASK_KIND__TASK_KIND_TRAIN;
}

static fc_status upload_once(fc_client *c, upload *u);

/* Answers a proposal Task (seq task_seq): uploads the initial model as weights, or tells the
 * server this client has none. */
static fc_status answer_proposal(fc_client *c, uint64_t task_seq) {
    fc_status st;
    if (!c->initial) {
        fc_wire_msg m;
        st = fc_wire_error(&m, ++c->seq_out, FC_ERR_UNSUPPORTED, 0, task_seq,
                           "this client has no initial model to propose", &c->err);
        if (st != FC_OK) {
            fc_wire_msg_free(&m);
            return st;
        }
        return conn_send(c, &m);
    }
    upload u;
    memset(&u, 0, sizeof u);
    u.t = c->initial;
    u.kind = FC_SUBMIT_DELTA; /* the bytes as they are */
    u.tensors = c->initial_data;
    memcpy(u.sha, c->initial_sha, FC_SHA256_BYTES);
    u.num_examples = 1;
    u.is_delta = 0;
    st = upload_once(c, &u);
    if (st != FC_OK && !c->lost)
        fc_error_prefix(&c->err, "proposing the initial model");
    return st;
}

static void initial_free(fc_task *t, const void **data) {
    fc_task_free(t);
    fc_free((void *)data);
}

fc_status fc_client_set_initial_model(fc_client *c, size_t n, const fc_tensor_desc *tensors) {
    if (!c)
        return FC_ERR_INVALID;
    clear_err(c);
    if (n == 0 && !tensors) { /* clear */
        initial_free(c->initial, c->initial_data);
        c->initial = NULL;
        c->initial_data = NULL;
        return FC_OK;
    }
    if (n == 0 || !tensors)
        return fc_error_set(&c->err, FC_ERR_INVALID,
                            "set_initial_model: %s (n = 0 with tensors NULL clears it)",
                            n == 0 ? "no tensors" : "tensors is NULL");
    if (n > FC_STAGE_DEFAULT_MAX_TENSORS)
        return fc_error_set(&c->err, FC_ERR_LIMIT, "set_initial_model: %zu tensors, at most %u", n,
                            FC_STAGE_DEFAULT_MAX_TENSORS);
    fc_status st = FC_ERR_NOMEM;
    const void **data = NULL;
    fc_task *t = fc_calloc(1, sizeof *t);
    if (!t)
        return fc_error_set(&c->err, FC_ERR_NOMEM, "set_initial_model: out of memory");
    fc_model m0 = FC_MODEL_INIT;
    t->model = m0;
    t->kind = FC_TASK_TYPE_TRAIN; /* round 0, version 0 */
    for (size_t i = 0; i < n; i++) {
        const fc_tensor_desc *d = &tensors[i];
        if (!d->name || d->ndim > FC_MAX_DIMS || (d->ndim > 0 && !d->shape)) {
            st = fc_error_set(&c->err, FC_ERR_INVALID, "set_initial_model: tensor %zu ('%s'): %s",
                              i, d->name ? d->name : "(null)",
                              !d->name                ? "name is NULL"
                              : d->ndim > FC_MAX_DIMS ? "more than 8 dimensions"
                                                      : "shape is NULL");
            goto fail;
        }
        uint64_t numel = 1;
        if (d->ndim > 0 && fc_shape_numel((uint32_t)d->ndim, d->shape, &numel) != FC_OK) {
            st = fc_error_set(&c->err, FC_ERR_OVERFLOW,
                              "set_initial_model: tensor '%s': element count does not fit in "
                              "64 bits",
                              d->name);
            goto fail;
        }
        if (numel > 0 && !d->data) {
            st = fc_error_set(&c->err, FC_ERR_INVALID,
                              "set_initial_model: tensor '%s': data is NULL", d->name);
            goto fail;
        }
        st = fc_model_add(&t->model, d->name, d->dtype, (uint32_t)d->ndim, d->shape, d->data,
                          &c->err);
        if (st != FC_OK) {
            fc_error_prefix(&c->err, "set_initial_model: tensor %zu", i);
            goto fail;
        }
    }
    t->n_specs = n;
    t->specs = fc_calloc(n, sizeof *t->specs);
    data = fc_calloc(n, sizeof *data);
    if (!t->specs || !data) {
        st = fc_error_set(&c->err, FC_ERR_NOMEM, "set_initial_model: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        t->specs[i] = t->model.tensors[i].spec;
        t->specs[i].name = fc_strdup(t->model.tensors[i].spec.name);
        if (!t->specs[i].name) {
            st = fc_error_set(&c->err, FC_ERR_NOMEM, "set_initial_model: out of memory");
            goto fail;
        }
        data[i] = t->model.tensors[i].data;
    }
    if ((st = fc_model_nbytes(&t->model, &t->total)) != FC_OK) {
        fc_error_set(&c->err, st, "set_initial_model: the model's size does not fit in 64 bits");
        goto fail;
    }
    uint8_t sha[FC_SHA256_BYTES];
    if ((st = fc_stream_model_sha256(&t->model, sha, &c->err)) != FC_OK) {
        fc_error_prefix(&c->err, "set_initial_model");
        goto fail;
    }
    initial_free(c->initial, c->initial_data); /* only now: a failure keeps the previous one */
    c->initial = t;
    c->initial_data = data;
    memcpy(c->initial_sha, sha, FC_SHA256_BYTES);
    return FC_OK;
fail:
    initial_free(t, data);
    return st;
}

fc_status fc_client_next_task(fc_client *c, uint32_t timeout_ms, fc_task **out) {
    if (!c || !out)
        return FC_ERR_INVALID;
    *out = NULL;
    clear_err(c);
    if (c->finished)
        return fc_error_set(&c->err, FC_ERR_CLOSED, "the server ended the session");
    uint64_t deadline = timeout_ms ? conn_now_ms() + timeout_ms : 0;
    int cycles = 0;
    fc_task *t = NULL;
    fc_status st;
    while (!t) {
        fc_envelope *env = c->pending_task;
        c->pending_task = NULL;
        if (!env) {
            st = ensure_connected(c);
            if (st == FC_OK) {
                conn_msg msg;
                st = conn_recv(c, deadline, &msg);
                if (st == FC_OK && msg.is_chunk) {
                    fc_envelope_free(msg.env);
                    fc_error_set(&c->err, FC_ERR_PROTOCOL, "chunk outside a download");
                    return conn_violation(c, FC_ERR_PROTOCOL);
                }
                env = msg.env;
            }
            if (st != FC_OK) {
                if (c->lost && (st = retry_after_loss(c, &cycles)) == FC_OK)
                    continue;
                return st;
            }
        }
        if (env->body_case == FEDCOORD__V1__ENVELOPE__BODY_TASK && is_proposal(env->task)) {
            st = answer_proposal(c, env->seq);
            fc_envelope_free(env);
            if (st == FC_OK)
                continue;
            if (c->lost && (st = retry_after_loss(c, &cycles)) == FC_OK)
                continue; /* the server asks again on the new session if it still needs one */
            return st;
        }
        if (env->body_case == FEDCOORD__V1__ENVELOPE__BODY_TASK) {
            st = task_from_env(c, env->task, &t);
            fc_envelope_free(env);
            if (st != FC_OK)
                return st;
            break;
        }
        if (env->body_case == FEDCOORD__V1__ENVELOPE__BODY_BYE) {
            fc_error_set(&c->err, FC_OK, "the server ended the session: %s",
                         env->bye->reason && *env->bye->reason ? env->bye->reason : "(no reason)");
            fc_envelope_free(env);
            conn_drop(c);
            c->lost = 0;
            c->finished = 1;
            return FC_OK;
        }
        if ((st = handle_other(c, env, "waiting for a task")) != FC_OK)
            return st;
    }
    st = download(c, t, &cycles);
    if (st != FC_OK) {
        fc_task_free(t);
        return st;
    }
    *out = t;
    return FC_OK;
}

uint64_t fc_task_round(const fc_task *t) { return t->round; }
fc_task_type fc_task_get_kind(const fc_task *t) { return t->kind; }
uint64_t fc_task_model_version(const fc_task *t) { return t->version; }
uint64_t fc_task_deadline_ms(const fc_task *t) { return t->deadline_ms; }

const char *fc_task_config(const fc_task *t, const char *key) {
    if (!t || !key)
        return NULL;
    for (size_t i = 0; i < t->n_config; i++)
        if (strcmp(t->keys[i], key) == 0)
            return t->values[i];
    return NULL;
}

fc_status fc_task_config_double(const fc_task *t, const char *key, double def, double *out) {
    *out = def;
    const char *v = fc_task_config(t, key);
    if (!v)
        return FC_ERR_NOT_FOUND;
    char *end = NULL;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end || errno == ERANGE || !isfinite(d))
        return FC_ERR_FORMAT;
    *out = d;
    return FC_OK;
}

fc_status fc_task_config_int64(const fc_task *t, const char *key, int64_t def, int64_t *out) {
    *out = def;
    const char *v = fc_task_config(t, key);
    if (!v)
        return FC_ERR_NOT_FOUND;
    char *end = NULL;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (end == v || *end || errno == ERANGE)
        return FC_ERR_FORMAT;
    *out = (int64_t)n;
    return FC_OK;
}

double fc_task_lr(const fc_task *t, double def) {
    double v;
    fc_task_config_double(t, "lr", def, &v);
    return v;
}

int64_t fc_task_epochs(const fc_task *t, int64_t def) {
    int64_t v;
    if (fc_task_config_int64(t, "local_epochs", def, &v) == FC_ERR_NOT_FOUND)
        fc_task_config_int64(t, "epochs", def, &v);
    return v;
}

double fc_task_mu(const fc_task *t, double def) {
    double v;
    fc_task_config_double(t, "mu", def, &v);
    return v;
}

size_t fc_task_tensor_count(const fc_task *t) { return t->n_specs; }

fc_status fc_task_tensor(const fc_task *t, size_t i, fc_tensor_info *out) {
    if (!t || !out)
        return FC_ERR_INVALID;
    if (i >= t->n_specs || i >= t->model.count)
        return FC_ERR_RANGE;
    const fc_tensor *x = &t->model.tensors[i];
    memset(out, 0, sizeof *out);
    out->name = t->specs[i].name;
    out->dtype = t->specs[i].dtype;
    out->ndim = t->specs[i].ndim;
    memcpy(out->shape, t->specs[i].shape, sizeof out->shape);
    if (fc_spec_numel(&t->specs[i], &out->numel) != FC_OK)
        return FC_ERR_OVERFLOW;
    out->nbytes = x->nbytes;
    out->data = x->data;
    return FC_OK;
}

long fc_task_find_tensor(const fc_task *t, const char *name) {
    if (!t || !name)
        return -1;
    for (size_t i = 0; i < t->n_specs; i++)
        if (strcmp(t->specs[i].name, name) == 0)
            return (long)i;
    return -1;
}

fc_status fc_task_prox_add(const fc_task *t, size_t i, float *grad, const float *w, double mu) {
    fc_tensor_info info;
    if (!t)
        return FC_ERR_INVALID;
    fc_status st = fc_task_tensor(t, i, &info);
    if (st != FC_OK)
        return st;
    if (info.dtype != FC_DTYPE_F32)
        return FC_ERR_DTYPE;
    if (info.numel > SIZE_MAX)
        return FC_ERR_OVERFLOW;
    size_t n = (size_t)info.numel;
    if (n > 0 && (!grad || !w))
        return FC_ERR_INVALID;
    if (!isfinite(mu) || mu < 0)
        return FC_ERR_INVALID;
    if ((uintptr_t)info.data % alignof(float) == 0)
        return fc_prox_add(grad, w, (const float *)info.data, n, mu);
    /* The staged tensor is unaligned (an earlier tensor had an odd byte size): go blockwise
     * through an aligned copy. */
    float block[256];
    const uint8_t *src = info.data;
    for (size_t k = 0; k < n; k += 256) {
        size_t len = n - k < 256 ? n - k : 256;
        memcpy(block, src + k * sizeof(float), len * sizeof(float));
        if ((st = fc_prox_add(grad + k, w + k, block, len, mu)) != FC_OK)
            return st;
    }
    return FC_OK;
}

/* ---- uploads ---- */

/* The bytes of one upload chunk: the caller's delta as is, or w_i - w_t in the tensor's dtype. */
static const uint8_t *chunk_bytes(fc_client *c, const fc_task *t, fc_submit_kind kind,
                                  const void *const *tensors, const fc_chunk_desc *d) {
    const uint8_t *w = (const uint8_t *)tensors[d->tensor_index] + d->offset;
    if (kind == FC_SUBMIT_DELTA)
        return w;
    const uint8_t *base = (const uint8_t *)t->model.tensors[d->tensor_index].data + d->offset;
    uint8_t *out = c->scratch;
    switch (t->specs[d->tensor_index].dtype) {
    case FC_DTYPE_F32:
        for (size_t k = 0; k < d->len; k += 4) {
            float a, b;
            memcpy(&a, w + k, 4);
            memcpy(&b, base + k, 4);
            float r = a - b;
            memcpy(out + k, &r, 4);
        }
        break;
    case FC_DTYPE_F64:
        for (size_t k = 0; k < d->len; k += 8) {
            double a, b;
            memcpy(&a, w + k, 8);
            memcpy(&b, base + k, 8);
            double r = a - b;
            memcpy(out + k, &r, 8);
        }
        break;
    case FC_DTYPE_F16:
    case FC_DTYPE_BF16: {
        int bf = t->specs[d->tensor_index].dtype == FC_DTYPE_BF16;
        for (size_t k = 0; k < d->len; k += 2) {
            uint16_t a = (uint16_t)(w[k] | w[k + 1] << 8),
                     b = (uint16_t)(base[k] | base[k + 1] << 8);
            float fa = bf ? fc_bf16_to_f32(a) : fc_f16_to_f32(a);
            float fb = bf ? fc_bf16_to_f32(b) : fc_f16_to_f32(b);
            uint16_t r = bf ? fc_f32_to_bf16(fa - fb) : fc_f32_to_f16(fa - fb);
            out[k] = (uint8_t)(r & 0xff);
            out[k + 1] = (uint8_t)(r >> 8);
        }
        break;
    }
    default:
        return NULL;
    }
    return out;
}

static fc_status upload_hash(fc_client *c, const fc_task *t, fc_submit_kind kind,
                             const void *const *tensors, uint8_t sha[FC_SHA256_BYTES]) {
    fc_stream_splitter sp;
    fc_stream_hash h = {0};
    fc_status st =
        fc_stream_split_specs(&sp, t->specs, t->n_specs, FC_STREAM_MAX_CHUNK, 0, &c->err);
    if (st == FC_OK)
        st = fc_stream_hash_init(&h, &c->err);
    fc_chunk_desc d;
    while (st == FC_OK && fc_stream_split_next(&sp, &d)) {
        const uint8_t *p = chunk_bytes(c, t, kind, tensors, &d);
        st = p ? fc_stream_hash_update(&h, p, d.len, &c->err)
               : fc_error_set(&c->err, FC_ERR_DTYPE, "tensor %u has an unknown dtype",
                              d.tensor_index);
    }
    if (st == FC_OK)
        st = fc_stream_hash_final(&h, sha, &c->err);
    fc_stream_hash_free(&h);
    return st;
}

/* Waits for the Ack of frame ref_seq, absorbing other traffic. Later Acks update *acked. */
static fc_status wait_ack(fc_client *c, uint64_t ref_seq, uint64_t *acked, uint64_t total,
                          uint64_t *ack_offset, const char *what) {
    for (;;) {
        conn_msg msg;
        fc_status st = conn_recv(c, 0, &msg);
        if (st != FC_OK)
            return st;
        if (msg.is_chunk) {
            fc_envelope_free(msg.env);
            fc_error_set(&c->err, FC_ERR_PROTOCOL, "chunk while %s", what);
            return conn_violation(c, FC_ERR_PROTOCOL);
        }
        fc_envelope *env = msg.env;
        if (env->body_case == FEDCOORD__V1__ENVELOPE__BODY_ACK) {
            const Fedcoord__V1__Ack *a = env->ack;
            if (acked && a->offset <= total && a->offset > *acked)
                *acked = a->offset;
            if (a->ref_seq == ref_seq) {
                if (ack_offset)
                    *ack_offset = a->offset;
                fc_envelope_free(env);
                return FC_OK;
            }
            fc_envelope_free(env);
            continue;
        }
        if (env->body_case == FEDCOORD__V1__ENVELOPE__BODY_ERROR) {
            st = conn_server_error(c, env->error);
            fc_error_prefix(&c->err, "%s", what);
            fc_envelope_free(env);
            return st;
        }
        if ((st = handle_other(c, env, what)) != FC_OK)
            return st;
    }
}

/* Reads whatever complete frames are already available without waiting. */
static fc_status drain(fc_client *c, uint64_t *acked, uint64_t total) {
    for (;;) {
        conn_msg msg;
        fc_status st = conn_recv(c, conn_now_ms(), &msg);
        if (st == FC_ERR_TIMEOUT && c->connected)
            return FC_OK;
        if (st != FC_OK)
            return st;
        if (msg.is_chunk) {
            fc_envelope_free(msg.env);
            fc_error_set(&c->err, FC_ERR_PROTOCOL, "chunk while uploading");
            return conn_violation(c, FC_ERR_PROTOCOL);
        }
        fc_envelope *env = msg.env;
        if (env->body_case == FEDCOORD__V1__ENVELOPE__BODY_ACK) {
            if (env->ack->offset <= total && env->ack->offset > *acked)
                *acked = env->ack->offset;
            fc_envelope_free(env);
            continue;
        }
        if (env->body_case == FEDCOORD__V1__ENVELOPE__BODY_ERROR) {
            st = conn_server_error(c, env->error);
            fc_error_prefix(&c->err, "uploading the update");
            fc_envelope_free(env);
            return st;
        }
        if ((st = handle_other(c, env, "uploading the update")) != FC_OK)
            return st;
    }
}

static fc_status upload_once(fc_client *c, upload *u) {
    const fc_task *t = u->t;
    fc_wire_update_begin_args a;
    memset(&a, 0, sizeof a);
    a.round = t->round;
    a.base_version = t->version;
    a.tensors = t->specs;
    a.n_tensors = t->n_specs;
    a.total_bytes = t->total;
    a.is_delta = u->is_delta;
    /* Offer to resume from everything sent so far: the server staged at most that much and
     * answers with what it holds (S <= resume_offset), so nothing that arrived is sent again. */
    a.resume_offset = u->sent > u->acked ? u->sent : u->acked;
    fc_wire_msg m;
    fc_status st = fc_wire_update_begin(&m, ++c->seq_out, &a, &c->err);
    if (st != FC_OK) {
        fc_wire_msg_free(&m);
        return st;
    }
    uint64_t begin_seq = c->seq_out;
    if ((st = conn_send(c, &m)) != FC_OK)
        return st;
    uint64_t start = 0;
    if ((st = wait_ack(c, begin_seq, NULL, t->total, &start, "starting the upload")) != FC_OK)
        return st;
    if (start > a.resume_offset) {
        fc_error_set(&c->err, FC_ERR_PROTOCOL,
                     "server asks to resume the upload at byte %llu, beyond the %llu offered",
                     (unsigned long long)start, (unsigned long long)a.resume_offset);
        return conn_violation(c, FC_ERR_PROTOCOL);
    }
    u->acked = start;
    u->sent = start;
    fc_stream_splitter sp;
    st = fc_stream_split_specs(&sp, t->specs, t->n_specs, c->max_chunk, start, &c->err);
    if (st != FC_OK)
        return conn_violation(c, st);
    fc_chunk_desc d;
    while (fc_stream_split_next(&sp, &d)) {
        const uint8_t *p = chunk_bytes(c, t, u->kind, u->tensors, &d);
        if ((st = conn_send_chunk(c, d.tensor_index, d.offset, p, d.len)) != FC_OK)
            return st;
        u->sent = d.global_offset + d.len;
        if ((st = drain(c, &u->acked, t->total)) != FC_OK)
            return st;
    }
    st = fc_wire_update_end(&m, ++c->seq_out, u->sha, u->num_examples, u->metrics, u->n_metrics,
                            &c->err);
    if (st != FC_OK) {
        fc_wire_msg_free(&m);
        return st;
    }
    uint64_t end_seq = c->seq_out;
    if ((st = conn_send(c, &m)) != FC_OK)
        return st;
    return wait_ack(c, end_seq, &u->acked, t->total, NULL, "finishing the upload");
}

static fc_status convert_metrics(fc_client *c, const fc_metric *metrics, size_t n,
                                 fc_wire_metric **out) {
    *out = NULL;
    if (n == 0)
        return FC_OK;
    if (!metrics)
        return fc_error_set(&c->err, FC_ERR_INVALID, "metrics is NULL with n_metrics %zu", n);
    if (n > FC_WIRE_MAX_LIST)
        return fc_error_set(&c->err, FC_ERR_INVALID, "%zu metrics, at most %u", n,
                            FC_WIRE_MAX_LIST);
    fc_wire_metric *w = fc_mallocarray(n, sizeof *w);
    if (!w)
        return fc_error_set(&c->err, FC_ERR_NOMEM, "out of memory for the metrics");
    for (size_t i = 0; i < n; i++) {
        if (!metrics[i].name || !*metrics[i].name ||
            strlen(metrics[i].name) > FC_WIRE_MAX_SHORT_STRING) {
            fc_free(w);
            return fc_error_set(&c->err, FC_ERR_INVALID, "metric %zu: name must be 1..%u bytes", i,
                                FC_WIRE_MAX_SHORT_STRING);
        }
        if (!isfinite(metrics[i].value)) {
            fc_free(w);
            return fc_error_set(&c->err, FC_ERR_INVALID, "metric '%s' is not finite",
                                metrics[i].name);
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(metrics[j].name, metrics[i].name) == 0) {
                fc_free(w);
                return fc_error_set(&c->err, FC_ERR_INVALID, "metric '%s' appears twice",
                                    metrics[i].name);
            }
        w[i].name = metrics[i].name;
        w[i].value = metrics[i].value;
    }
    *out = w;
    return FC_OK;
}

fc_status fc_client_submit(fc_client *c, const fc_task *t, fc_submit_kind kind,
                           const void *const *tensors, uint64_t num_examples,
                           const fc_metric *metrics, size_t n_metrics) {
    if (!c)
        return FC_ERR_INVALID;
    clear_err(c);
    if (!t || !tensors)
        return fc_error_set(&c->err, FC_ERR_INVALID, "submit: task and tensors are required");
    if (t->kind != FC_TASK_TYPE_TRAIN)
        return fc_error_set(&c->err, FC_ERR_INVALID,
                            "submit: round %llu is an evaluate task: use fc_client_report_eval",
                            (unsigned long long)t->round);
    if (kind != FC_SUBMIT_WEIGHTS && kind != FC_SUBMIT_DELTA)
        return fc_error_set(&c->err, FC_ERR_INVALID, "submit: unknown kind %d", (int)kind);
    if (num_examples == 0)
        return fc_error_set(&c->err, FC_ERR_INVALID, "submit: num_examples must be at least 1");
    if (t->model.count != t->n_specs)
        return fc_error_set(&c->err, FC_ERR_STATE, "submit: the task has no model");
    for (size_t i = 0; i < t->n_specs; i++)
        if (!tensors[i] && t->model.tensors[i].nbytes > 0)
            return fc_error_set(&c->err, FC_ERR_INVALID, "submit: tensor %zu ('%s') is NULL", i,
                                t->specs[i].name);
    upload u;
    memset(&u, 0, sizeof u);
    u.t = t;
    u.kind = kind;
    u.tensors = tensors;
    u.num_examples = num_examples;
    u.n_metrics = n_metrics;
    u.is_delta = 1;
    fc_wire_metric *wm = NULL;
    fc_status st = convert_metrics(c, metrics, n_metrics, &wm);
    if (st != FC_OK)
        return st;
    u.metrics = wm;
    if ((st = upload_hash(c, t, kind, tensors, u.sha)) != FC_OK)
        goto done;
    int cycles = 0;
    for (;;) {
        st = ensure_connected(c);
        if (st == FC_OK)
            st = upload_once(c, &u);
        if (st == FC_OK || !c->lost)
            break;
        if ((st = retry_after_loss(c, &cycles)) != FC_OK)
            break;
    }
done:
    fc_free(wm);
    if (st == FC_OK)
        clear_err(c);
    return st;
}

fc_status fc_client_report_eval(fc_client *c, const fc_task *t, uint64_t num_examples,
                                const fc_metric *metrics, size_t n_metrics) {
    if (!c)
        return FC_ERR_INVALID;
    clear_err(c);
    if (!t)
        return fc_error_set(&c->err, FC_ERR_INVALID, "report_eval: task is NULL");
    if (t->kind != FC_TASK_TYPE_EVALUATE)
        return fc_error_set(&c->err, FC_ERR_INVALID,
                            "report_eval: round %llu is a train task: use fc_client_submit",
                            (unsigned long long)t->round);
    if (num_examples == 0)
        return fc_error_set(&c->err, FC_ERR_INVALID, "report_eval: num_examples must be >= 1");
    fc_wire_metric *wm = NULL;
    fc_status st = convert_metrics(c, metrics, n_metrics, &wm);
    if (st != FC_OK)
        return st;
    int cycles = 0;
    for (;;) {
        st = ensure_connected(c);
        if (st == FC_OK) {
            fc_wire_msg m;
            st = fc_wire_eval_result(&m, ++c->seq_out, t->round, t->version, num_examples, wm,
                                     n_metrics, &c->err);
            if (st != FC_OK) {
                fc_wire_msg_free(&m);
                break;
            }
            uint64_t seq = c->seq_out;
            st = conn_send(c, &m);
            if (st == FC_OK)
                st = wait_ack(c, seq, NULL, 0, NULL, "reporting evaluation results");
        }
        if (st == FC_OK || !c->lost)
            break;
        if ((st = retry_after_loss(c, &cycles)) != FC_OK)
            break;
    }
    fc_free(wm);
    return st;
}

/* ---- lifetime ---- */

static void client_free(fc_client *c) {
    conn_drop(c);
    if (c->ctx)
        SSL_CTX_free(c->ctx);
    fc_envelope_free(c->pending_task);
    initial_free(c->initial, c->initial_data);
    fc_buf_free(&c->out);
    fc_free(c->in);
    fc_free(c->scratch);
    fc_free(c->host);
    fc_free(c->port);
    fc_free(c->verify_name);
    fc_free(c->ca_file);
    fc_free(c->cert_file);
    fc_free(c->key_file);
    fc_free(c->token);
    fc_free(c->client_name);
    fc_free(c);
}

fc_status fc_client_open(const fc_client_config *cfg, fc_client **out) {
    if (!out)
        return FC_ERR_INVALID;
    *out = NULL;
    if (!cfg)
        return FC_ERR_INVALID;
    fc_client *c = fc_calloc(1, sizeof *c);
    if (!c)
        return FC_ERR_NOMEM;
    c->fd = -1;
    c->in = fc_malloc(CONN_IN_CAP);
    c->scratch = fc_malloc(FC_STREAM_MAX_CHUNK);
    if (!c->in || !c->scratch) {
        client_free(c);
        return FC_ERR_NOMEM;
    }
    *out = c;
    fc_status st = conn_configure(c, cfg);
    if (st != FC_OK)
        return st;
    st = conn_reconnect(c);
    return st;
}

void fc_client_close(fc_client *c) {
    if (!c)
        return;
    if (c->connected) {
        fc_wire_msg m;
        if (fc_wire_bye(&m, ++c->seq_out, "client closing", &c->err) == FC_OK) {
            if (conn_send(c, &m) == FC_OK && c->ssl)
                SSL_shutdown(c->ssl); /* close_notify, best effort, non-blocking */
        } else {
            fc_wire_msg_free(&m);
        }
    }
    c->finished = 1;
    client_free(c);
}

const char *fc_client_error(const fc_client *c) {
    if (!c)
        return "no client";
    return c->err.msg[0] ? c->err.msg : (c->err.code ? fc_strerror(c->err.code) : "");
}

fc_status fc_client_last_status(const fc_client *c) { return c ? c->err.code : FC_ERR_INVALID; }
