/* daemon_round.c: the bridge between the round scheduler (server/round.c, a pure state machine)
 * and the world: it carries out the scheduler's actions (send tasks, arm the deadline, aggregate,
 * commit, record failures) and feeds it events (presence, updates, rejections, evaluation
 * reports, the deadline).
 *
 * Aggregation of one round runs as a queue of jobs on the libuv thread pool, one at a time, so
 * the round driver (aggregators/round.c) is never used from two threads: ADD folds one validated
 * update, DROP tells the driver a client will not deliver, FINISH runs the rule's finish, reads
 * w_t and steps the optimizer (the store hashes w_{t+1} as it writes it). The commit then goes to the store's writer thread
 * as one transaction; only after it is durable is the new version current and announced.
 * Nothing partial reaches the aggregate: the session layer hands over only complete, validated
 * updates, and a round that fails is discarded with its driver.
 *
 * Async mode (docs/rounds.md): a round is one FedBuff buffer. Tasks belong to clients, not to
 * rounds (round_task_check answers the session's "what may this client upload"); the driver
 * holds a buffer's updates with their staleness and folds them in client-id order at its close
 * (its members are not known in advance), and answers that arrive while the previous buffer is
 * being committed (or while paused) are held in order and replayed into the next buffer.
 */
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "proto/stream.h"
#include "server/daemon.h"

typedef enum fold_kind { FOLD_ADD = 1, FOLD_DROP, FOLD_FINISH } fold_kind;

typedef struct fold_job {
    uv_work_t w;
    dround *rd;
    fold_kind kind;
    sess_update up;   /* ADD */
    uint64_t staleness; /* ADD, async */
    uint64_t client;  /* DROP */
    char reason[64];  /* DROP */
    fc_status st;
    fc_error err;
    uint64_t took_us;
    int opt_stepped;  /* FINISH: the optimizer's state moved (undone if the round fails) */
    struct fold_job *next;
} fold_job;

typedef struct dpart {
    uint64_t client_id;
    int offered;     /* added or dropped in the driver */
    fold_job *ready; /* its add or drop, waiting for every lower client id (see release_in_order) */
    uint64_t bytes;
    char *metrics_json;
} dpart;

typedef struct dmetric {
    char name[ROUND_METRIC_NAME_MAX];
    double sum;
    double examples;
} dmetric;

struct dround {
    fcd *d;
    uint64_t id;
    round_kind kind;
    uint64_t base_version;
    const dmodel *base;
    int64_t started_unix;
    uint64_t started_mono;
    uint64_t closed_us; /* when the round closed (the last answer arrived), uv_hrtime in us */
    agg_round *agg;
    int expected;
    dpart *parts; /* one per selected client: selection order, then ascending id once expected */
    size_t n_parts, cap_parts;
    size_t cursor; /* expected: parts before it are handed to the driver, in ascending id */
    fold_job *q_head, *q_tail;
    int busy;      /* a job is on the pool */
    int abandoned; /* failed or shut down: free once idle */
    int begin_pending; /* the round's start is not yet queued for the store */
    /* FINISH results */
    int finished;
    char *report_json;
    fc_buf rule_state, opt_state;
    float *w;
    agg_round *w_owner; /* w lives in this finished round's buffer of D (see step_piece) */
    dmetric metrics[ROUND_MAX_METRICS];
    size_t n_metrics;
    dround *next;
};

static void enqueue(dround *rd, fold_job *j);
static void queue_drop(dround *rd, uint64_t client, const char *reason);

/* ---- helpers ---- */

static dpart *find_part(dround *rd, uint64_t client) {
    for (size_t i = 0; i < rd->n_parts; i++)
        if (rd->parts[i].client_id == client)
            return &rd->parts[i];
    return NULL;
}

static void dround_destroy(dround *rd) {
    if (!rd)
        return;
    for (fold_job *j = rd->q_head, *n; j; j = n) {
        n = j->next;
        sess_update_release(&j->up);
        fc_free(j);
    }
    for (size_t i = 0; i < rd->n_parts; i++) {
        fc_free(rd->parts[i].metrics_json);
        if (rd->parts[i].ready) {
            sess_update_release(&rd->parts[i].ready->up);
            fc_free(rd->parts[i].ready);
        }
    }
    fc_free(rd->parts);
    agg_round_free(rd->agg);
    fc_free(rd->report_json);
    fc_buf_free(&rd->rule_state);
    fc_buf_free(&rd->opt_state);
    if (rd->w_owner)
        agg_round_free(rd->w_owner);
    else
        fc_free(rd->w);
    fc_free(rd);
}

/* Names the next client in fold order to the staging budget (0: none); see release_in_order. */
static void reserve_for(fcd *d, uint64_t client_id) {
    if (d->budget)
        sess_budget_reserve_for(d->budget, client_id);
}

/* Leaves the round: freed now if no job uses it, else when its job returns. */
static void abandon(fcd *d, dround *rd) {
    if (!rd)
        return;
    if (d->cur == rd) {
        d->cur = NULL;
        reserve_for(d, 0);
    }
    rd->abandoned = 1;
    if (!rd->busy) {
        dround_destroy(rd);
        return;
    }
    rd->next = d->zombies;
    d->zombies = rd;
}

static char *metrics_json_of(const char *const *names, const double *values, size_t n) {
    json_t *o = json_object();
    for (size_t i = 0; o && i < n; i++)
        if (json_object_set_new(o, names[i], json_real(values[i])) != 0) {
            json_decref(o);
            o = NULL;
        }
    if (!o)
        return NULL;
    char *text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    char *copy = text ? fc_strdup(text) : NULL;
    free(text);
    return copy;
}

static const char *store_worker_path(const fcd *d) { return d->db_path; }

/* ---- the pool jobs ---- */

typedef struct sub_sink {
    float *dst;
    uint64_t size;
    const fc_stage *stage; /* dst's stage: its pages may go once subtracted (spilled) */
} sub_sink;

/* Turns full weights into a delta in place: dst[i] -= w_t[i]. */
static fc_status subtract_base(void *ud, const void *data, size_t len, uint64_t offset,
                               fc_error *err) {
    sub_sink *s = ud;
    if (offset % 4 || len % 4 || offset + len > s->size)
        return fc_error_set(err, FC_ERR_CORRUPT, "base model bytes out of range");
    const float *src = data;
    float *dst = s->dst + offset / 4;
    for (size_t i = 0; i < len / 4; i++)
        dst[i] -= src[i];
    fc_stage_done_with(s->stage, dst, len);
    return FC_OK;
}

/* agg_update.consumed: a spilled update's pages go as the rule's fold moves past them. */
static void fold_consumed(void *ctx, const void *p, size_t len) {
    fc_stage_done_with(ctx, p, len);
}

/* w_{t+1} = step(w_t, D), one piece of w_t at a time as the store reads it, written as f32 over
 * D's own buffer: element i lands at bytes [4i, 4i + 4), inside D's elements below i, which
 * the step has already read. The model then needs no buffer of its own next to D. */
typedef struct step_sink {
    fcd *d;
    const double *D;
    float *out; /* (float *)D */
    float *tmp; /* one piece: w_t, stepped in place, then copied to out */
    size_t cap; /* floats in tmp */
    uint64_t size;
    uint64_t next; /* the next byte expected: the ranges must cover the model once, in order */
} step_sink;

static fc_status step_piece(void *ud, const void *data, size_t len, uint64_t offset,
                            fc_error *err) {
    step_sink *s = ud;
    if (offset != s->next || len % 4 || len > s->size - offset)
        return fc_error_set(err, FC_ERR_CORRUPT, "base model bytes out of range or out of order");
    size_t first = (size_t)(offset / 4), n = len / 4;
    if (n > s->cap) {
        float *t = fc_realloc(s->tmp, len);
        if (!t)
            return fc_error_set(err, FC_ERR_NOMEM, "out of memory for %zu bytes of the model", len);
        s->tmp = t;
        s->cap = n;
    }
    memcpy(s->tmp, data, len);
    fc_status st = s->d->opt->step_range(s->d->opt_state, s->tmp, s->D + first, first, n, err);
    if (st != FC_OK)
        return st;
    memcpy(s->out + first, s->tmp, len);
    s->next += len;
    return FC_OK;
}

/* Reads version bytes through the pool's shared read connection (opened on first use). */
static fc_status worker_read(dround *rd, int64_t version, store_sink_fn sink, void *ud,
                             fc_error *err) {
    fcd *d = rd->d;
    pthread_mutex_lock(&d->wro_mu);
    fc_status st = FC_OK;
    if (!d->wro) {
        store_options o = {.version = STORE_OPTIONS_V1, .readonly = 1, .must_exist = 1};
        st = store_open(store_worker_path(d), &o, &d->wro, err);
    }
    if (st == FC_OK)
        st = store_model_read(d->wro, version, 0, sink, ud, err);
    pthread_mutex_unlock(&d->wro_mu);
    return st;
}

static void job_add(fold_job *j) {
    dround *rd = j->rd;
    fc_model m = FC_MODEL_INIT;
    j->st = fc_stage_view_model(j->up.stage, &m, &j->err);
    if (j->st != FC_OK)
        return;
    void *flat = m.count ? m.tensors[0].data : NULL;
    fc_model_free(&m);
    if (!j->up.is_delta) { /* the session checked base_version: the round's, or the task's */
        sub_sink s = {flat, rd->base->bytes, j->up.stage};
        if ((j->st = worker_read(rd, (int64_t)j->up.base_version, subtract_base, &s, &j->err)) !=
            FC_OK)
            return;
    }
    const dclient *cl = daemon_client(rd->d, j->up.client_id);
    agg_update u = {
        .client_id = j->up.client_id,
        .client_name = cl ? cl->name : NULL,
        .dtype = FC_DTYPE_F32,
        .data = flat,
        .weight = (double)j->up.num_examples,
        .staleness = j->staleness,
        .registered_round = cl ? cl->registered_round : 0,
        /* the session's validation checked every value of a delta; for full weights the driver
         * checks w - w_t, which can overflow */
        .finite_checked = j->up.is_delta,
        .consumed = fold_consumed,
        .consumed_ctx = j->up.stage,
    };
    j->st = agg_round_add(rd->agg, &u, &j->err);
}

static void job_finish(fold_job *j) {
    dround *rd = j->rd;
    fcd *d = rd->d;
    agg_report rep;
    agg_report_init(&rep);
    double *D = NULL;
    j->st = agg_round_finish_shared(rd->agg, &D, &rep, &j->err);
    if (j->st == FC_OK && rep.empty)
        j->st = fc_error_set(&j->err, FC_ERR_REQUIREMENT, "no usable update (%s)", rep.note);
    fc_buf json = FC_BUF_INIT;
    if (j->st == FC_OK && agg_report_to_json(&rep, &json) == FC_OK &&
        fc_buf_append(&json, "", 1) == FC_OK) {
        rd->report_json = (char *)json.data;
        json = (fc_buf)FC_BUF_INIT;
    }
    fc_buf_free(&json);
    agg_report_free(&rep);
    if (j->st == FC_OK)
        j->st = agg_round_save_state(rd->agg, &rd->rule_state, &j->err);
    if (j->st == FC_OK && rd->base->bytes > DAEMON_CACHE_BYTES && d->opt->step_range) {
        /* A model too large to cache: w_{t+1} takes the consumed half of D's buffer instead of
         * a buffer of its own, so the finish needs 2x the model (D) rather than 3x (D and w). */
        step_sink ss = {.d = d, .D = D, .out = (float *)D, .size = rd->base->bytes};
        j->opt_stepped = 1;
        j->st = worker_read(rd, (int64_t)rd->base_version, step_piece, &ss, &j->err);
        fc_free(ss.tmp);
        if (j->st == FC_OK && ss.next != ss.size)
            j->st = fc_error_set(&j->err, FC_ERR_CORRUPT, "base model has %" PRIu64
                                 " of %" PRIu64 " bytes", ss.next, ss.size);
        if (j->st == FC_OK) {
            fc_drop_pages((uint8_t *)D + rd->base->bytes, rd->base->bytes); /* D's upper half */
            rd->w = (float *)D;
            rd->w_owner = rd->agg;
            rd->agg = NULL;
        }
    }
    if (j->st == FC_OK && !rd->w) {
        /* the buffer of the version before last, kept for this (no fresh pages to fault in) */
        pthread_mutex_lock(&d->wro_mu);
        if (d->w_spare && d->w_spare_bytes == rd->base->bytes) {
            rd->w = d->w_spare;
            d->w_spare = NULL;
        }
        pthread_mutex_unlock(&d->wro_mu);
    }
    if (j->st == FC_OK && !rd->w &&
        !(rd->w = fc_mallocarray(rd->base->numel ? rd->base->numel : 1, 4)))
        j->st = fc_error_set(&j->err, FC_ERR_NOMEM, "out of memory for the model (%" PRIu64
                             " floats)", rd->base->numel);
    if (j->st == FC_OK && !rd->w_owner) {
        if (d->w_cache && d->w_cache_version == rd->base_version)
            memcpy(rd->w, d->w_cache, rd->base->bytes);
        else
            j->st = worker_read(rd, (int64_t)rd->base_version, dmodel_f32_sink(),
                                &(dmodel_f32){(uint8_t *)rd->w, rd->base->bytes}, &j->err);
        if (j->st == FC_OK) {
            j->opt_stepped = 1;
            j->st = d->opt->step(d->opt_state, rd->w, D, &j->err);
        }
    }
    /* The accumulator (which holds D) goes now: w_t+1 and the state are all the commit needs. */
    agg_round_free(rd->agg);
    rd->agg = NULL;
    if (j->st == FC_OK)
        j->st = d->opt->save_state(d->opt_state, &rd->opt_state, &j->err);
    rd->finished = j->st == FC_OK;
}

/* The optimizer stepped (or began to) for a version that will not be stored: back to the state
 * of the last committed version, or, when none was committed, to none at all (the next round
 * creates a fresh one). */
static void opt_rewind(fcd *d) {
    if (!d->opt_state)
        return;
    fc_error le = {0};
    if (d->opt_blob_len) {
        if (d->opt->load_state(d->opt_state, d->opt_blob, d->opt_blob_len, &le) == FC_OK)
            return;
        FC_LOG(FC_LOG_ERROR, "optimizer state not restored", FC_LS("error", le.msg));
    }
    d->opt->destroy(d->opt_state);
    d->opt_state = NULL;
}

static void job_work(uv_work_t *w) {
    fold_job *j = w->data;
    uint64_t t0 = uv_hrtime();
    switch (j->kind) {
    case FOLD_ADD: job_add(j); break;
    case FOLD_DROP:
        j->st = agg_round_drop(j->rd->agg, j->client, NULL, j->reason, &j->err);
        break;
    case FOLD_FINISH: job_finish(j); break;
    }
    j->took_us = (uv_hrtime() - t0) / 1000;
}

static void run_next(dround *rd);

static void job_after(uv_work_t *w, int status) {
    fold_job *j = w->data;
    dround *rd = j->rd;
    fcd *d = rd->d;
    rd->busy = 0;
    if (status != 0 && j->st == FC_OK)
        j->st = fc_error_set(&j->err, FC_ERR_SYSTEM, "aggregation job cancelled");
    fold_kind kind = j->kind;
    fc_status st = j->st;
    fc_error err = j->err;
    uint64_t took = j->took_us, client = kind == FOLD_ADD ? j->up.client_id : j->client;
    int stepped = j->opt_stepped;
    sess_update_release(&j->up);
    fc_free(j);
    if (rd->abandoned) {
        for (dround **p = &d->zombies; *p; p = &(*p)->next)
            if (*p == rd) {
                *p = rd->next;
                break;
            }
        dround_destroy(rd);
        dround_pump(d); /* shutdown may be waiting for this */
        return;
    }
    if (kind == FOLD_FINISH) {
        if (st != FC_OK && stepped)
            opt_rewind(d);
        if (st == FC_OK) {
            FC_LOG(FC_LOG_INFO, "aggregated", FC_LU("round", rd->id), FC_LU("us", took));
            DMETRIC(d, metrics_histogram_observe, aggregation_time, (double)took / 1e6);
        }
        fc_error e = {0};
        round_aggregation_done(d->sched, daemon_now_ms(), rd->id, st,
                               st == FC_OK ? NULL : err.msg, &e);
        dround_pump(d);
        return;
    }
    if (st != FC_OK)
        FC_LOG(FC_LOG_ERROR, "fold failed", FC_LU("round", rd->id), FC_LU("client", client),
               FC_LS("error", err.msg));
    else
        FC_LOG(FC_LOG_DEBUG, kind == FOLD_ADD ? "folded" : "dropped", FC_LU("round", rd->id),
               FC_LU("client", client), FC_LU("us", took));
    run_next(rd);
}

static void run_next(dround *rd) {
    if (rd->busy || !rd->q_head)
        return;
    fold_job *j = rd->q_head;
    rd->q_head = j->next;
    if (!rd->q_head)
        rd->q_tail = NULL;
    j->next = NULL;
    j->w.data = j;
    if (uv_queue_work(rd->d->loop, &j->w, job_work, job_after) != 0) {
        j->st = fc_error_set(&j->err, FC_ERR_SYSTEM, "could not queue aggregation work");
        rd->busy = 1;
        job_after(&j->w, 0);
        return;
    }
    rd->busy = 1;
}

static void enqueue(dround *rd, fold_job *j) {
    j->rd = rd;
    if (rd->q_tail)
        rd->q_tail->next = j;
    else
        rd->q_head = j;
    rd->q_tail = j;
    run_next(rd);
}

/* Synchronous rounds hand the driver their adds and drops in ascending client id, so it never
 * has to copy an update that arrived ahead of a lower id: such an update waits here in its
 * staging buffer, which stays counted against the staging budget. The budget keeps room for
 * the next client in that order (sess_budget_reserve_for), so waiting updates cannot fill it. */
static void release_in_order(dround *rd) {
    while (rd->cursor < rd->n_parts) {
        dpart *p = &rd->parts[rd->cursor];
        if (p->ready) {
            fold_job *j = p->ready;
            p->ready = NULL;
            enqueue(rd, j);
        } else if (!p->offered) {
            break;
        }
        rd->cursor++;
    }
    if (rd->d->cur == rd && rd->agg)
        reserve_for(rd->d, rd->cursor < rd->n_parts ? rd->parts[rd->cursor].client_id : 0);
}

/* Hands j (an add or drop of p's client) to the driver, in ascending client id once the
 * selection is declared (expect_selected). j NULL (out of memory): p is passed over, and the
 * driver reports it "missing" at finish. */
static void offer(dround *rd, dpart *p, fold_job *j) {
    p->offered = 1;
    if (!rd->expected) {
        if (j)
            enqueue(rd, j);
        return;
    }
    p->ready = j;
    release_in_order(rd);
}

static void queue_drop(dround *rd, uint64_t client, const char *reason) {
    dpart *p = find_part(rd, client);
    if (!p || p->offered || !rd->agg)
        return;
    fold_job *j = fc_calloc(1, sizeof *j);
    if (j) {
        j->kind = FOLD_DROP;
        j->client = client;
        snprintf(j->reason, sizeof j->reason, "%s", reason);
    }
    offer(rd, p, j);
}

/* ---- store jobs ---- */

typedef struct parts_buf {
    store_participant *p;
    size_t n;
    char (*reasons)[ROUND_REASON_MAX + 32];
} parts_buf;

static void parts_free(parts_buf *pb) {
    fc_free(pb->p);
    fc_free(pb->reasons);
    memset(pb, 0, sizeof *pb);
}

/* The scheduler's participant records as store rows (strings borrowed from rd and the daemon's
 * client table, both of which outlive the job). */
static fc_status parts_build(fcd *d, dround *rd, uint64_t round_id, parts_buf *pb) {
    const round_participant *rp = NULL;
    size_t n = 0;
    memset(pb, 0, sizeof *pb);
    if (round_get_participants(d->sched, round_id, &rp, &n) != FC_OK || n == 0)
        return FC_OK;
    pb->p = fc_calloc(n, sizeof *pb->p);
    pb->reasons = fc_calloc(n, sizeof *pb->reasons);
    if (!pb->p || !pb->reasons) {
        parts_free(pb);
        return FC_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        const dclient *cl = daemon_client(d, rp[i].client_id);
        store_participant *sp = &pb->p[pb->n];
        dpart *dp = rd ? find_part(rd, rp[i].client_id) : NULL;
        sp->client = cl ? cl->name : "?";
        sp->num_examples = rp[i].num_examples;
        sp->bytes = dp ? dp->bytes : 0;
        sp->metrics_json = dp ? dp->metrics_json : NULL;
        const char *why = rp[i].reason[0] ? rp[i].reason : NULL;
        switch (rp[i].outcome) {
        case ROUND_ACCEPTED: sp->outcome = STORE_OUTCOME_ACCEPTED; break;
        case ROUND_REJECTED: sp->outcome = STORE_OUTCOME_REJECTED; break;
        case ROUND_TIMED_OUT: sp->outcome = STORE_OUTCOME_TIMED_OUT; break;
        case ROUND_DROPPED:
            sp->outcome = STORE_OUTCOME_DROPPED;
            if (!why)
                why = "disconnected";
            break;
        case ROUND_CANCELLED:
            sp->outcome = STORE_OUTCOME_DROPPED;
            if (!why)
                why = "cancelled: the round closed before it answered";
            break;
        default:
            sp->outcome = STORE_OUTCOME_DROPPED;
            if (!why)
                why = "the round ended before it answered";
            break;
        }
        if (why) {
            snprintf(pb->reasons[pb->n], sizeof pb->reasons[pb->n], "%s", why);
            sp->reason = pb->reasons[pb->n];
        }
        pb->n++;
    }
    return FC_OK;
}

static char *round_config_json(fcd *d, const dround *rd) {
    json_t *o = json_pack("{s:s, s:I, s:s, s:s, s:I}", "kind",
                          rd->kind == ROUND_KIND_EVALUATE ? "evaluate" : "train", "model_version",
                          (json_int_t)rd->base_version, "rule", d->cfg->aggregator.rule->name,
                          "optimizer", d->opt->name, "selected", (json_int_t)rd->n_parts);
    if (o && d->cfg->round.mode == DCFG_ROUND_ASYNC &&
        (json_object_set_new(o, "mode", json_string("async")) != 0 ||
         json_object_set_new(o, "buffer_size", json_integer(d->cfg->round.buffer_size)) != 0)) {
        json_decref(o);
        o = NULL;
    }
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    char *copy = text ? fc_strdup(text) : NULL;
    free(text);
    return copy;
}

static char *round_metrics_json(const dround *rd) {
    const char *names[ROUND_MAX_METRICS];
    double values[ROUND_MAX_METRICS];
    size_t n = 0;
    for (size_t i = 0; i < rd->n_metrics; i++)
        if (rd->metrics[i].examples > 0) {
            names[n] = rd->metrics[i].name;
            values[n++] = rd->metrics[i].sum / rd->metrics[i].examples;
        }
    return metrics_json_of(names, values, n);
}

typedef struct begin_job {
    int64_t round_id, base, now;
    char *config_json;
} begin_job;

static fc_status begin_fn(store *s, void *ud, fc_error *err) {
    begin_job *b = ud;
    return store_round_begin(s, b->round_id, STORE_ROUND_TRAINING, b->base, b->config_json,
                             b->now, err);
}

static void begin_done(fcd *d, dwjob *j, fc_status st, const fc_error *err) {
    (void)d;
    begin_job *b = j->ud;
    if (st != FC_OK)
        FC_LOG(FC_LOG_WARN, "round start not recorded", FC_LI("round", b->round_id),
               FC_LS("error", err->msg));
    fc_free(b->config_json);
    fc_free(b);
    fc_free(j);
}

typedef struct fail_job {
    int64_t round_id, now;
    char reason[ROUND_REASON_MAX];
    parts_buf parts;
    dround *rd; /* kept alive until the participants are written */
} fail_job;

static fc_status fail_fn(store *s, void *ud, fc_error *err) {
    fail_job *f = ud;
    return store_round_fail(s, f->round_id, f->reason, f->parts.p, f->parts.n, f->now, err);
}

static void fail_done(fcd *d, dwjob *j, fc_status st, const fc_error *err) {
    fail_job *f = j->ud;
    if (st != FC_OK)
        FC_LOG(FC_LOG_ERROR, "failed round not recorded", FC_LI("round", f->round_id),
               FC_LS("error", err->msg));
    parts_free(&f->parts);
    abandon(d, f->rd);
    fc_free(f);
    fc_free(j);
    dround_pump(d);
}

typedef struct commit_job {
    dround *rd;
    store_commit c;
    parts_buf parts;
    char *metrics_json, *config_json;
    uint64_t pos;
    uint64_t t0;
    /* The SHA-256 of w runs on the pool while the writer writes the chunks (c.sha256). */
    int hashing;            /* a hash job was queued */
    int ran;                /* commit_fn ran (writer thread; read after its done callback) */
    int hash_after_pending; /* its after-work callback has not run yet (loop thread) */
    int free_pending;       /* commit_done ran first: hash_after frees the job */
    uv_work_t hash_req;
    pthread_mutex_t hash_mu;
    pthread_cond_t hash_cv;
    int hash_done;
    fc_status hash_st;
    uint8_t sha[FC_SHA256_BYTES];
} commit_job;

static void hash_work(uv_work_t *w) {
    commit_job *cj = w->data;
    fc_stream_hash h = {0};
    fc_error e = {0};
    uint8_t sha[FC_SHA256_BYTES] = {0};
    fc_status st = fc_stream_hash_init(&h, &e);
    if (st == FC_OK && cj->rd->base->bytes)
        st = fc_stream_hash_update(&h, cj->rd->w, (size_t)cj->rd->base->bytes, &e);
    if (st == FC_OK)
        st = fc_stream_hash_final(&h, sha, &e);
    fc_stream_hash_free(&h);
    pthread_mutex_lock(&cj->hash_mu);
    cj->hash_st = st;
    memcpy(cj->sha, sha, sizeof sha);
    cj->hash_done = 1;
    pthread_cond_broadcast(&cj->hash_cv);
    pthread_mutex_unlock(&cj->hash_mu);
}

/* Writer thread: waits until the pool has hashed w (it no longer reads it after that). */
static fc_status wait_hash(commit_job *cj) {
    pthread_mutex_lock(&cj->hash_mu);
    while (!cj->hash_done)
        pthread_cond_wait(&cj->hash_cv, &cj->hash_mu);
    fc_status st = cj->hash_st;
    pthread_mutex_unlock(&cj->hash_mu);
    return st;
}

static fc_status commit_sha256(void *ud, uint8_t out[STORE_SHA256_LEN], fc_error *err) {
    commit_job *cj = ud;
    fc_status st = wait_hash(cj);
    if (st != FC_OK)
        return fc_error_set(err, st, "hashing the new model on the pool failed");
    memcpy(out, cj->sha, STORE_SHA256_LEN);
    return FC_OK;
}

static void commit_job_free(commit_job *cj) {
    if (cj->hashing) {
        pthread_cond_destroy(&cj->hash_cv);
        pthread_mutex_destroy(&cj->hash_mu);
    }
    fc_free(cj);
}

static void hash_after(uv_work_t *w, int status) {
    (void)status; /* the work always ran: nothing cancels it */
    commit_job *cj = w->data;
    cj->hash_after_pending = 0;
    if (cj->free_pending)
        commit_job_free(cj);
}

/* Loop thread, before the commit goes to the writer: hashes w on the pool, or leaves the hash
 * to the store if that cannot start. */
static void start_hash(fcd *d, commit_job *cj) {
    if (pthread_mutex_init(&cj->hash_mu, NULL) != 0)
        return;
    if (pthread_cond_init(&cj->hash_cv, NULL) != 0) {
        pthread_mutex_destroy(&cj->hash_mu);
        return;
    }
    cj->hash_req.data = cj;
    if (uv_queue_work(d->loop, &cj->hash_req, hash_work, hash_after) != 0) {
        pthread_cond_destroy(&cj->hash_cv);
        pthread_mutex_destroy(&cj->hash_mu);
        return;
    }
    cj->hashing = 1;
    cj->hash_after_pending = 1;
    cj->c.sha256 = commit_sha256;
    cj->c.sha256_ud = cj;
}

static fc_status w_source(void *ud, void *buf, size_t cap, size_t *got, fc_error *err) {
    (void)err;
    commit_job *cj = ud;
    uint64_t left = cj->rd->base->bytes - cj->pos;
    size_t k = left < cap ? (size_t)left : cap;
    memcpy(buf, (const uint8_t *)cj->rd->w + cj->pos, k);
    cj->pos += k;
    *got = k;
    return FC_OK;
}

static fc_status commit_fn(store *s, void *ud, fc_error *err) {
    commit_job *cj = ud;
    cj->pos = 0;
    if (cj->rd->kind == ROUND_KIND_EVALUATE)
        return store_round_commit_eval(s, (int64_t)cj->rd->id, (int64_t)cj->rd->base_version,
                                       cj->config_json, cj->metrics_json, cj->parts.p,
                                       cj->parts.n, cj->rd->started_unix, daemon_unix_ms(), err);
    cj->c.ended_at = daemon_unix_ms();
    cj->ran = 1;
    fc_status st = store_commit_round(s, &cj->c, NULL, err);
    if (cj->hashing)
        (void)wait_hash(cj); /* even on error: the pool must be done with w before it is freed */
    return st;
}

typedef struct prune_job {
    uint32_t keep_last, keep_every;
    int64_t pinned;
    uint64_t pruned;
} prune_job;

static fc_status prune_fn(store *s, void *ud, fc_error *err) {
    prune_job *p = ud;
    return store_prune(s, p->keep_last, p->keep_every, p->pinned, daemon_unix_ms(), &p->pruned,
                       err);
}

static void prune_done(fcd *d, dwjob *j, fc_status st, const fc_error *err) {
    (void)d;
    prune_job *p = j->ud;
    if (st != FC_OK)
        FC_LOG(FC_LOG_WARN, "retention failed", FC_LS("error", err->msg));
    else if (p->pruned)
        FC_LOG(FC_LOG_INFO, "old model versions pruned", FC_LU("versions", p->pruned),
               FC_LU("keep_last", p->keep_last), FC_LU("keep_every", p->keep_every));
    fc_free(p);
    fc_free(j);
}

/* [storage] keep_last / keep_every, after each new version (the current one is always kept). */
static void queue_prune(fcd *d, uint64_t current) {
    prune_job *p = fc_calloc(1, sizeof *p);
    dwjob *j = fc_calloc(1, sizeof *j);
    if (!p || !j) {
        fc_free(p);
        fc_free(j);
        return;
    }
    p->keep_last = (uint32_t)d->cfg->storage.keep_last;
    p->keep_every = (uint32_t)d->cfg->storage.keep_every;
    p->pinned = (int64_t)current;
    j->fn = prune_fn;
    j->ud = p;
    j->done = prune_done;
    daemon_submit(d, j);
}

static void commit_done(fcd *d, dwjob *j, fc_status st, const fc_error *err) {
    commit_job *cj = j->ud;
    if (cj->hashing && !cj->ran) /* the writer refused the job: w is freed below */
        (void)wait_hash(cj);
    dround *rd = cj->rd;
    uint64_t took_us = (uv_hrtime() - cj->t0) / 1000;
    fc_error e = {0};
    if (st == FC_OK && rd->kind == ROUND_KIND_TRAIN) {
        if ((st = dmodel_load(d, (uint64_t)cj->c.version, &e)) != FC_OK)
            err = &e;
    }
    if (st == FC_OK) {
        if (rd->kind == ROUND_KIND_TRAIN) {
            uint8_t *blob = NULL;
            if (rd->rule_state.len && (blob = fc_malloc(rd->rule_state.len)))
                memcpy(blob, rd->rule_state.data, rd->rule_state.len);
            fc_free(d->rule_blob);
            d->rule_blob = blob;
            d->rule_blob_len = blob ? rd->rule_state.len : 0;
            fc_free(d->opt_blob);
            d->opt_blob = NULL;
            d->opt_blob_len = 0;
            if (rd->opt_state.len && (d->opt_blob = fc_malloc(rd->opt_state.len))) {
                memcpy(d->opt_blob, rd->opt_state.data, rd->opt_state.len);
                d->opt_blob_len = rd->opt_state.len;
            }
            pthread_mutex_lock(&d->wro_mu);
            if (!d->w_spare && d->w_cache && rd->base->bytes <= DAEMON_CACHE_BYTES) {
                d->w_spare = d->w_cache; /* the next finish writes w_{t+2} into it */
                d->w_spare_bytes = rd->base->bytes;
            } else {
                fc_free(d->w_cache);
            }
            pthread_mutex_unlock(&d->wro_mu);
            d->w_cache = NULL;
            if (rd->base->bytes <= DAEMON_CACHE_BYTES) {
                d->w_cache = rd->w; /* w_{t+1} is the next round's w_t */
                d->w_cache_version = (uint64_t)cj->c.version;
                rd->w = NULL;
            }
        }
        DMETRIC(d, metrics_counter_add, rounds_committed, 1);
        DMETRIC(d, metrics_histogram_observe, commit_latency, (double)took_us / 1e6);
        DMETRIC(d, metrics_histogram_observe, round_duration,
                (double)(daemon_now_ms() - rd->started_mono) / 1e3);
        if (rd->kind == ROUND_KIND_TRAIN) {
            DMETRIC(d, metrics_gauge_set, model_version, (double)cj->c.version);
            queue_prune(d, (uint64_t)cj->c.version);
            d->commit_ms[d->n_commits++ % DAEMON_VPM_RING] = daemon_now_ms();
        }
        FC_LOG(FC_LOG_INFO, "round committed", FC_LU("round", rd->id),
               FC_LS("kind", round_kind_name(rd->kind)),
               FC_LU("version", rd->kind == ROUND_KIND_TRAIN ? (uint64_t)cj->c.version
                                                              : rd->base_version),
               FC_LU("participants", cj->parts.n), FC_LU("commit_us", took_us),
               FC_LU("close_to_commit_us",
                     uv_hrtime() / 1000 - rd->closed_us),
               FC_LS("metrics", cj->metrics_json ? cj->metrics_json : "{}"));
    } else if (rd->kind == ROUND_KIND_TRAIN) {
        opt_rewind(d);
    }
    round_commit_done(d->sched, daemon_now_ms(), rd->id, st, st == FC_OK ? NULL : err->msg, &e);
    parts_free(&cj->parts);
    fc_free(cj->metrics_json);
    fc_free(cj->config_json);
    if (cj->hash_after_pending)
        cj->free_pending = 1;
    else
        commit_job_free(cj);
    fc_free(j);
    if (d->cur == rd) {
        d->cur = NULL;
        reserve_for(d, 0);
    }
    dround_destroy(rd);
    dround_pump(d);
}

static void start_commit(fcd *d, dround *rd) {
    commit_job *cj = fc_calloc(1, sizeof *cj);
    dwjob *j = fc_calloc(1, sizeof *j);
    fc_error e = {0};
    if (!cj || !j || parts_build(d, rd, rd->id, &cj->parts) != FC_OK) {
        fc_free(cj);
        fc_free(j);
        round_commit_done(d->sched, daemon_now_ms(), rd->id, FC_ERR_NOMEM, "out of memory", &e);
        return;
    }
    cj->rd = rd;
    cj->t0 = uv_hrtime();
    cj->config_json = round_config_json(d, rd);
    if (rd->kind == ROUND_KIND_EVALUATE) {
        const round_metric_result *mr = NULL;
        size_t n = 0;
        const char *names[ROUND_MAX_METRICS];
        double values[ROUND_MAX_METRICS];
        size_t k = 0;
        if (round_get_metrics(d->sched, rd->id, &mr, &n) == FC_OK)
            for (size_t i = 0; i < n && k < ROUND_MAX_METRICS; i++)
                if (mr[i].examples) {
                    names[k] = mr[i].name;
                    values[k++] = mr[i].mean;
                }
        cj->metrics_json = metrics_json_of(names, values, k);
    } else {
        cj->metrics_json = round_metrics_json(rd);
        const dmodel *cur = dmodel_current(d);
        cj->c = (store_commit){
            .round_id = (int64_t)rd->id,
            .version = (int64_t)cur->version + 1,
            .parent_version = (int64_t)rd->base_version,
            .tensor_specs_json = rd->base->specs_json,
            .model_size = rd->base->bytes,
            .source = w_source,
            .source_ud = cj,
            .started_at = rd->started_unix,
            .config_json = cj->config_json,
            .report_json = rd->report_json,
            .metrics_json = cj->metrics_json,
            .participants = cj->parts.p,
            .num_participants = cj->parts.n,
            .rule_name = d->cfg->aggregator.rule->name,
            .optimizer_name = d->opt->name,
            .rule_state = rd->rule_state.data,
            .rule_state_len = rd->rule_state.len,
            .optimizer_state = rd->opt_state.data,
            .optimizer_state_len = rd->opt_state.len,
        };
        start_hash(d, cj);
    }
    j->fn = commit_fn;
    j->ud = cj;
    j->done = commit_done;
    daemon_submit(d, j);
}

/* ---- carrying out actions ---- */

static uint64_t count_registered(fcd *d);

void dround_refresh_registered(fcd *d) { (void)count_registered(d); }

static dround *new_round(fcd *d, const round_action *a) {
    dround *rd = fc_calloc(1, sizeof *rd);
    if (!rd)
        return NULL;
    rd->d = d;
    rd->id = a->round_id;
    rd->kind = a->kind;
    rd->base = dmodel_current(d);
    rd->base_version = rd->base->version;
    rd->started_unix = daemon_unix_ms();
    rd->started_mono = daemon_now_ms();
    if (rd->kind == ROUND_KIND_TRAIN && !d->opt_state) {
        fc_error err = {0};
        fc_status st = d->opt->create(&d->cfg->optimizer.params, (size_t)rd->base->numel,
                                      &d->opt_state, &err);
        if (st == FC_OK && d->opt_blob_len)
            st = d->opt->load_state(d->opt_state, d->opt_blob, d->opt_blob_len, &err);
        if (st != FC_OK) {
            FC_LOG(FC_LOG_ERROR, "server optimizer could not start", FC_LS("error", err.msg));
            fc_free(rd);
            return NULL;
        }
    }
    if (rd->kind == ROUND_KIND_TRAIN) {
        agg_context ctx = {
            .dim = (size_t)rd->base->numel,
            .round = rd->id - 1,
            .num_registered = count_registered(d),
            .spool_dir = d->spill_dir,
            .memory_budget = (size_t)d->cfg->storage.staging_memory,
        };
        fc_error err = {0};
        if (agg_round_begin(d->cfg->aggregator.rule, &d->cfg->aggregator.params, &ctx,
                            d->rule_blob, d->rule_blob_len, &rd->agg, &err) != FC_OK) {
            FC_LOG(FC_LOG_ERROR, "aggregation could not start", FC_LU("round", rd->id),
                   FC_LS("error", err.msg));
            fc_free(rd);
            return NULL;
        }
    }
    return rd;
}

static void send_task(fcd *d, const round_action *a) {
    dround *rd = d->cur;
    if (rd && rd->id == a->round_id && d->cfg->round.mode == DCFG_ROUND_SYNC) {
        if (rd->n_parts == rd->cap_parts) {
            size_t cap = rd->cap_parts ? rd->cap_parts * 2 : 16;
            dpart *p = fc_realloc(rd->parts, cap * sizeof *p);
            if (p) {
                rd->parts = p;
                rd->cap_parts = cap;
            }
        }
        if (rd->n_parts < rd->cap_parts)
            rd->parts[rd->n_parts++] = (dpart){.client_id = a->client_id};
    }
    sess *s = sess_find(d->sv, a->client_id);
    const dmodel *m = dmodel_current(d);
    if (!s || !m) {
        if (d->n_deferred_gone < sizeof d->deferred_gone / sizeof d->deferred_gone[0])
            d->deferred_gone[d->n_deferred_gone++] = a->client_id;
        return;
    }
    char mu[32];
    snprintf(mu, sizeof mu, "%.17g", d->cfg->round.mu);
    fc_wire_kv kv[] = {{"mu", mu}};
    fc_wire_task_args t = {
        .round = a->round_id,
        .kind = a->kind == ROUND_KIND_EVALUATE ? FC_TASK_EVALUATE : FC_TASK_TRAIN,
        .model_version = m->version,
        .config = kv,
        .n_config = 1,
        .tensors = m->specs,
        .n_tensors = m->n_specs,
        .model_sha256 = m->sha256,
        .model_bytes = m->bytes,
        .deadline_unix_ms = (uint64_t)daemon_unix_ms() + (uint64_t)d->cfg->round.round_timeout_ms,
    };
    fc_error err = {0};
    if (sess_send_task(s, &t, &err) != FC_OK)
        FC_LOG(FC_LOG_WARN, "task not sent", FC_LU("round", a->round_id),
               FC_LU("client", a->client_id), FC_LS("error", err.msg));
}

/* libuv's timers count from the loop's cached (coarse) clock, which can be a few ms behind
 * daemon_now_ms(): a timer may fire before the scheduler's deadline. Then it is simply re-armed
 * for the rest, so a deadline is never missed. */
static void arm_deadline(fcd *d, uint64_t deadline_ms);

static void on_deadline(uv_timer_t *t) {
    fcd *d = t->data;
    uint64_t now = daemon_now_ms();
    if (now < d->deadline_at) {
        arm_deadline(d, d->deadline_at);
        return;
    }
    fc_error err = {0};
    round_tick(d->sched, now, &err);
    dround_pump(d);
}

static void arm_deadline(fcd *d, uint64_t deadline_ms) {
    uint64_t now = daemon_now_ms();
    d->deadline_at = deadline_ms;
    uv_update_time(d->loop);
    uv_timer_start(&d->deadline, on_deadline, deadline_ms > now ? deadline_ms - now + 1 : 0, 0);
}

static void record_failed(fcd *d, const round_action *a) {
    dround *rd = d->cur && d->cur->id == a->round_id ? d->cur : NULL;
    if (rd)
        d->cur = NULL;
    fail_job *f = fc_calloc(1, sizeof *f);
    dwjob *j = fc_calloc(1, sizeof *j);
    if (!f || !j) {
        fc_free(f);
        fc_free(j);
        abandon(d, rd);
        return;
    }
    f->round_id = (int64_t)a->round_id;
    f->now = daemon_unix_ms();
    snprintf(f->reason, sizeof f->reason, "%s", a->reason[0] ? a->reason : "failed");
    parts_build(d, rd, a->round_id, &f->parts);
    f->rd = rd; /* its participants' metrics are borrowed until the job ends */
    j->fn = fail_fn;
    j->ud = f;
    j->done = fail_done;
    daemon_submit(d, j);
}

static void handle(fcd *d, const round_action *a, int *agg_failed) {
    switch (a->type) {
    case ROUND_ACT_TRANSITION:
        FC_LOG(a->to == ROUND_FAILED ? FC_LOG_WARN : FC_LOG_INFO, "round state",
               FC_LU("round", a->round_id), FC_LS("kind", round_kind_name(a->kind)),
               FC_LS("from", round_state_name(a->from)), FC_LS("to", round_state_name(a->to)),
               FC_LS("reason", a->reason));
        if (a->to == ROUND_FAILED) {
            DMETRIC(d, metrics_counter_add, rounds_failed, 1);
            if (d->cur && d->cur->id == a->round_id)
                DMETRIC(d, metrics_histogram_observe, round_duration,
                        (double)(daemon_now_ms() - d->cur->started_mono) / 1e3);
        }
        if (a->to == ROUND_TRAINING && a->from != ROUND_TRAINING) {
            DMETRIC(d, metrics_gauge_set, current_round, (double)a->round_id);
            abandon(d, d->cur);
            d->cur = new_round(d, a);
            if (!d->cur) {
                fc_error err = {0};
                round_stop(d->sched, daemon_now_ms(), "aggregation could not start", &err);
                break;
            }
            d->cur->begin_pending = 1; /* recorded once its tasks are out (see pump) */
        }
        if (a->to == ROUND_AGGREGATING && d->cur)
            d->cur->closed_us = uv_hrtime() / 1000;
        if (a->to == ROUND_AGGREGATING || a->to == ROUND_FAILED)
            d->round_changed = 1; /* parked uploads of this round are now useless */
        if (a->to == ROUND_STOPPED) {
            for (size_t i = 0; i < d->n_clients; i++)
                if (d->clients[i].connected)
                    daemon_bye_later(d, d->clients[i].id);
        }
        break;
    case ROUND_ACT_SEND_TASK: send_task(d, a); break;
    case ROUND_ACT_CANCEL_TASK:
        if (d->cfg->round.mode == DCFG_ROUND_ASYNC)
            FC_LOG(FC_LOG_INFO, "task cancelled", FC_LU("client", a->client_id),
                   FC_LU("task_round", a->round_id), FC_LS("reason", a->reason));
        else if (d->cur && d->cur->id == a->round_id)
            queue_drop(d->cur, a->client_id, "cancelled");
        break;
    case ROUND_ACT_ARM_TIMER: arm_deadline(d, a->deadline_ms); break;
    case ROUND_ACT_DISARM_TIMER: uv_timer_stop(&d->deadline); break;
    case ROUND_ACT_START_AGGREGATION: {
        dround *rd = d->cur; /* training rounds only: evaluation rounds go straight to COMMIT */
        if (!rd || rd->id != a->round_id) {
            *agg_failed = 1;
            break;
        }
        for (size_t i = 0; i < rd->n_parts; i++)
            if (!rd->parts[i].offered)
                queue_drop(rd, rd->parts[i].client_id, "did not deliver");
        fold_job *j = fc_calloc(1, sizeof *j);
        if (!j) {
            *agg_failed = 1;
            break;
        }
        j->kind = FOLD_FINISH;
        enqueue(rd, j);
        break;
    }
    case ROUND_ACT_COMMIT:
        if (d->cur && d->cur->id == a->round_id)
            start_commit(d, d->cur);
        break;
    case ROUND_ACT_RECORD_FAILED: record_failed(d, a); break;
    }
}

/* ---- the pump: drain actions, then apply the events they produced ---- */

static void queue_begin(fcd *d, dround *rd) {
    rd->begin_pending = 0;
    begin_job *b = fc_calloc(1, sizeof *b);
    dwjob *j = fc_calloc(1, sizeof *j);
    if (!b || !j || !(b->config_json = round_config_json(d, rd))) {
        fc_free(b);
        fc_free(j);
        return; /* only the crash bookkeeping of this round is lost; the commit records it */
    }
    b->round_id = (int64_t)rd->id;
    b->base = (int64_t)rd->base_version;
    b->now = rd->started_unix;
    j->fn = begin_fn;
    j->ud = b;
    j->done = begin_done;
    daemon_submit(d, j);
}

static int part_cmp(const void *a, const void *b) {
    uint64_t x = ((const dpart *)a)->client_id, y = ((const dpart *)b)->client_id;
    return (x > y) - (x < y);
}

static void expect_selected(dround *rd) {
    rd->expected = 1;
    qsort(rd->parts, rd->n_parts, sizeof *rd->parts, part_cmp);
    uint64_t *ids = rd->agg && rd->n_parts ? fc_mallocarray(rd->n_parts, sizeof *ids) : NULL;
    fc_error err = {0};
    if (ids) { /* without expect the driver holds updates until finish: same result */
        for (size_t i = 0; i < rd->n_parts; i++)
            ids[i] = rd->parts[i].client_id;
        if (agg_round_expect(rd->agg, ids, rd->n_parts, &err) != FC_OK)
            FC_LOG(FC_LOG_WARN, "selection not declared to the driver", FC_LU("round", rd->id),
                   FC_LS("error", err.msg));
        fc_free(ids);
    }
    release_in_order(rd); /* names the lowest selected id to the staging budget */
}

static void maybe_ask_proposal(fcd *d);
static void held_replay_one(fcd *d);
static void held_free_all(fcd *d);

void dround_pump(fcd *d) {
    if (!d->sched)
        return;
    for (int guard = 0; guard < 1000; guard++) {
        round_action a;
        int agg_failed = 0;
        while (round_next_action(d->sched, &a))
            handle(d, &a, &agg_failed);
        if (d->round_changed && d->sv) {
            d->round_changed = 0;
            sess_server_round_changed(d->sv);
        }
        if (d->cur && d->cur->begin_pending) {
            if (!d->cur->expected && d->cfg->round.mode == DCFG_ROUND_SYNC)
                expect_selected(d->cur);
            queue_begin(d, d->cur);
        }
        if (d->held_head && round_get_state(d->sched) == ROUND_TRAINING && d->cur) {
            held_replay_one(d);
            continue;
        }
        if (d->held_head && round_get_state(d->sched) == ROUND_STOPPED) {
            FC_LOG(FC_LOG_INFO, "held answers discarded: the scheduler stopped",
                   FC_LU("answers", d->n_held));
            held_free_all(d);
        }
        fc_error err = {0};
        uint64_t now = daemon_now_ms();
        if (agg_failed) {
            round_aggregation_done(d->sched, now, round_current_id(d->sched), FC_ERR_NOMEM,
                                   "out of memory starting the aggregation", &err);
            continue;
        }
        if (d->n_deferred_gone) {
            uint64_t id = d->deferred_gone[--d->n_deferred_gone];
            round_client_gone(d->sched, now, id, &err);
            continue;
        }
        break;
    }
    maybe_ask_proposal(d);
}

/* ---- proposal of the initial model ---- */

static void maybe_ask_proposal(fcd *d) {
    if (d->models || d->proposer || d->proposal_committing || d->stopping)
        return;
    for (size_t i = 0; i < d->n_clients; i++) {
        if (!d->clients[i].connected || d->clients[i].no_proposal)
            continue;
        sess *s = sess_find(d->sv, d->clients[i].id);
        if (!s)
            continue;
        /* the wire wants a model hash: the SHA-256 of no bytes */
        static const uint8_t empty_sha[32] = {
            0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4,
            0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b,
            0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};
        fc_wire_task_args t = {.round = 0, .kind = FC_TASK_TRAIN, .model_version = 0,
                               .model_sha256 = empty_sha};
        fc_error err = {0};
        if (sess_send_task(s, &t, &err) == FC_OK) {
            d->proposer = d->clients[i].id;
            FC_LOG(FC_LOG_INFO, "asked for the initial model", FC_LS("client", d->clients[i].name));
            return;
        }
    }
}

/* ---- events from sessions ---- */

static void client_gone(fcd *d, uint64_t client_id, const char *reason) {
    fc_error err = {0};
    if (d->models)
        round_client_gone(d->sched, daemon_now_ms(), client_id, &err);
    if (d->cur)
        queue_drop(d->cur, client_id, reason);
}

void dround_presence(fcd *d, uint64_t client_id, int up) {
    fc_error err = {0};
    uint64_t now = daemon_now_ms();
    if (up) {
        if (round_get_state(d->sched) == ROUND_STOPPED) {
            daemon_bye_later(d, client_id);
            return;
        }
        if (d->models)
            round_client_available(d->sched, now, client_id, &err);
    } else {
        if (d->proposer == client_id)
            d->proposer = 0;
        uint64_t parked_round = 0;
        int parked = sess_server_parked(d->sv, client_id, &parked_round, NULL), keep = 0;
        if (parked && d->cfg->round.mode == DCFG_ROUND_ASYNC) { /* its task, whatever buffer */
            round_task t;
            keep = round_task_check(d->sched, client_id, &t, NULL, NULL) != FC_ERR_NOT_FOUND &&
                   t.round_id == parked_round;
        } else if (parked && d->cur) {
            keep = parked_round == d->cur->id;
        }
        if (keep) {
            /* Its upload is kept for a resume: the client stays in the round until it comes
             * back, the deadline passes, or the kept bytes are freed (dround_parked_gone). */
            FC_LOG(FC_LOG_INFO, "client left mid-upload; its round waits for a resume",
                   FC_LU("client", client_id), FC_LU("round", parked_round));
        } else {
            client_gone(d, client_id, "disconnected");
        }
    }
    dround_pump(d);
}

void dround_parked_gone(void *ctx, uint64_t client_id, uint64_t round, const char *why) {
    fcd *d = ctx;
    if (sess_find(d->sv, client_id))
        return; /* it is back and uploading afresh */
    FC_LOG(FC_LOG_INFO, "kept upload freed without a resume", FC_LU("client", client_id),
           FC_LU("round", round), FC_LS("why", why));
    client_gone(d, client_id, "disconnected mid-upload and did not resume");
    dround_pump(d);
}

fc_status dround_round_info(void *ctx, uint64_t client_id, sess_round_info *out, fc_error *err) {
    fcd *d = ctx;
    if (!d->models) {
        if (client_id == d->proposer && !d->proposal_committing) {
            memset(out, 0, sizeof *out);
            return FC_OK;
        }
        return fc_error_set(err, FC_ERR_STATE, "no model yet and no proposal was asked of you");
    }
    if (d->cfg->round.mode == DCFG_ROUND_ASYNC) {
        round_task t;
        fc_status st = round_task_check(d->sched, client_id, &t, NULL, err);
        if (st == FC_ERR_NOT_FOUND)
            return fc_error_set(err, FC_ERR_STATE,
                                "you have no task outstanding (async mode): wait for a task");
        if (st != FC_OK)
            return st; /* stale */
        const dmodel *m = dmodel_current(d);
        out->round = t.round_id;
        out->base_version = t.model_version;
        out->specs = m->specs;
        out->n_specs = m->n_specs;
        return FC_OK;
    }
    dround *rd = d->cur;
    if (!rd || round_get_state(d->sched) != ROUND_TRAINING)
        return fc_error_set(err, FC_ERR_STATE, "no round is accepting updates now");
    if (rd->kind != ROUND_KIND_TRAIN)
        return fc_error_set(err, FC_ERR_STATE, "round %" PRIu64 " is an evaluation round",
                            rd->id);
    const round_participant *rp = NULL;
    size_t n = 0;
    round_get_participants(d->sched, rd->id, &rp, &n);
    for (size_t i = 0; i < n; i++)
        if (rp[i].client_id == client_id) {
            if (rp[i].outcome != ROUND_PENDING)
                return fc_error_set(err, FC_ERR_STATE,
                                    "round %" PRIu64 " already has your answer (%s)", rd->id,
                                    round_outcome_name(rp[i].outcome));
            out->round = rd->id;
            out->base_version = rd->base_version;
            out->specs = rd->base->specs;
            out->n_specs = rd->base->n_specs;
            return FC_OK;
        }
    return fc_error_set(err, FC_ERR_STATE, "you are not selected in round %" PRIu64, rd->id);
}

static void add_train_metrics(dround *rd, const sess_update *u) {
    for (size_t i = 0; i < u->n_metrics; i++) {
        size_t k = 0;
        while (k < rd->n_metrics && strcmp(rd->metrics[k].name, u->metric_names[i]) != 0)
            k++;
        if (k == rd->n_metrics) {
            if (k == ROUND_MAX_METRICS || strlen(u->metric_names[i]) >= ROUND_METRIC_NAME_MAX)
                continue;
            snprintf(rd->metrics[k].name, sizeof rd->metrics[k].name, "%s", u->metric_names[i]);
            rd->n_metrics++;
        }
        rd->metrics[k].sum += (double)u->num_examples * u->metric_values[i];
        rd->metrics[k].examples += (double)u->num_examples;
    }
}

static void async_update(fcd *d, sess_update *u);

void dround_sink(void *ctx, sess_update *u) {
    fcd *d = ctx;
    if (u->round == 0) {
        dmodel_commit_proposal(d, u);
        return;
    }
    if (d->cfg->round.mode == DCFG_ROUND_ASYNC) {
        async_update(d, u);
        dround_pump(d);
        return;
    }
    fc_error err = {0};
    fc_status st = round_update_received(d->sched, daemon_now_ms(), u->client_id, u->round,
                                         u->num_examples, &err);
    dround *rd = d->cur;
    if (st != FC_OK || !rd || rd->id != u->round || !rd->agg) {
        FC_LOG(FC_LOG_INFO, "update discarded", FC_LU("client", u->client_id),
               FC_LU("round", u->round), FC_LS("reason", st != FC_OK ? err.msg : "round gone"));
        sess_update_release(u);
        dround_pump(d);
        return;
    }
    dpart *p = find_part(rd, u->client_id);
    fold_job *j = fc_calloc(1, sizeof *j);
    if (!p || !j) {
        fc_free(j);
        sess_update_release(u);
        dround_pump(d);
        return;
    }
    p->bytes = fc_stage_total(u->stage);
    DMETRIC(d, metrics_counter_add, updates_accepted, 1);
    DMETRIC(d, metrics_counter_add, bytes_received, (double)p->bytes);
    fc_free(p->metrics_json);
    p->metrics_json = metrics_json_of((const char *const *)u->metric_names, u->metric_values,
                                      u->n_metrics);
    add_train_metrics(rd, u);
    j->kind = FOLD_ADD;
    j->up = *u;
    memset(u, 0, sizeof *u);
    offer(rd, p, j);
    dround_pump(d);
}

/* ---- async mode: answers into the open buffer, held while it is not open ---- */

typedef struct dheld {
    int is_update;
    sess_update up; /* is_update */
    uint64_t client, round;
    char why[ROUND_REASON_MAX];
    struct dheld *next;
} dheld;

/* Answers wait while the buffer is being committed (or paused), and behind earlier ones. */
static int must_hold(const fcd *d) {
    round_state rs = round_get_state(d->sched);
    return d->held_head || (rs != ROUND_TRAINING && rs != ROUND_STOPPED);
}

static int hold(fcd *d, dheld *h) {
    if (!h)
        return 0;
    if (d->held_tail)
        d->held_tail->next = h;
    else
        d->held_head = h;
    d->held_tail = h;
    d->n_held++;
    return 1;
}

static void async_update_now(fcd *d, sess_update *u) {
    uint64_t tau = 0;
    round_task_check(d->sched, u->client_id, NULL, &tau, NULL); /* tau even when stale */
    fc_error err = {0};
    fc_status st = round_update_received(d->sched, daemon_now_ms(), u->client_id, u->round,
                                         u->num_examples, &err);
    dround *rd = d->cur;
    fold_job *j = NULL;
    if (st == FC_OK && rd && rd->agg && rd->n_parts == rd->cap_parts) {
        size_t cap = rd->cap_parts ? rd->cap_parts * 2 : 16;
        dpart *g = fc_realloc(rd->parts, cap * sizeof *g);
        if (g) {
            rd->parts = g;
            rd->cap_parts = cap;
        }
    }
    if (st != FC_OK || !rd || !rd->agg || rd->n_parts == rd->cap_parts ||
        !(j = fc_calloc(1, sizeof *j))) {
        FC_LOG(st != FC_OK ? FC_LOG_INFO : FC_LOG_ERROR, "update discarded",
               FC_LU("client", u->client_id), FC_LU("round", u->round),
               FC_LS("reason", st != FC_OK ? err.msg : "out of memory"));
        sess_update_release(u);
        return;
    }
    dpart *p = &rd->parts[rd->n_parts++];
    *p = (dpart){.client_id = u->client_id, .offered = 1, .bytes = fc_stage_total(u->stage)};
    DMETRIC(d, metrics_counter_add, updates_accepted, 1);
    DMETRIC(d, metrics_counter_add, bytes_received, (double)p->bytes);
    DMETRIC(d, metrics_histogram_observe, staleness, (double)tau);
    p->metrics_json = metrics_json_of((const char *const *)u->metric_names, u->metric_values,
                                      u->n_metrics);
    add_train_metrics(rd, u);
    j->kind = FOLD_ADD;
    j->staleness = tau;
    j->up = *u;
    memset(u, 0, sizeof *u);
    enqueue(rd, j);
}

static void async_update(fcd *d, sess_update *u) {
    if (must_hold(d)) {
        dheld *h = fc_calloc(1, sizeof *h);
        if (h) {
            h->is_update = 1;
            h->up = *u;
            memset(u, 0, sizeof *u);
        }
        if (hold(d, h))
            return;
        FC_LOG(FC_LOG_ERROR, "update discarded", FC_LU("client", u->client_id),
               FC_LU("round", u->round), FC_LS("reason", "out of memory holding it"));
        sess_update_release(u);
        return;
    }
    async_update_now(d, u);
}

static void async_reject_now(fcd *d, uint64_t client, uint64_t round, const char *why) {
    fc_error err = {0};
    if (round_update_rejected(d->sched, daemon_now_ms(), client, round, why, &err) != FC_OK)
        FC_LOG(FC_LOG_DEBUG, "rejection not recorded", FC_LU("client", client),
               FC_LU("round", round), FC_LS("reason", err.msg));
}

static void async_reject(fcd *d, uint64_t client, uint64_t round, const char *why) {
    if (must_hold(d)) {
        dheld *h = fc_calloc(1, sizeof *h);
        if (h) {
            h->client = client;
            h->round = round;
            snprintf(h->why, sizeof h->why, "%s", why);
        }
        if (hold(d, h))
            return;
    }
    async_reject_now(d, client, round, why);
}

static void held_replay_one(fcd *d) {
    dheld *h = d->held_head;
    d->held_head = h->next;
    if (!d->held_head)
        d->held_tail = NULL;
    d->n_held--;
    if (h->is_update)
        async_update_now(d, &h->up);
    else
        async_reject_now(d, h->client, h->round, h->why);
    fc_free(h);
}

static void held_free_all(fcd *d) {
    while (d->held_head) {
        dheld *h = d->held_head;
        d->held_head = h->next;
        sess_update_release(&h->up);
        fc_free(h);
    }
    d->held_tail = NULL;
    d->n_held = 0;
}

uint64_t dround_versions_last_minute(const fcd *d) {
    uint64_t now = daemon_now_ms(), n = 0;
    size_t k = d->n_commits < DAEMON_VPM_RING ? d->n_commits : DAEMON_VPM_RING;
    for (size_t i = 0; i < k; i++)
        n += d->commit_ms[i] + 60000 > now;
    return n;
}

void dround_gauges(fcd *d) {
    DMETRIC(d, metrics_gauge_set, versions_per_min, (double)dround_versions_last_minute(d));
    round_async_stats st;
    if (!d->metrics || !d->sched || round_get_async_stats(d->sched, &st) != FC_OK)
        return;
    DMETRIC(d, metrics_gauge_set, buffer_fill, (double)st.buffer_fill);
    DMETRIC(d, metrics_gauge_set, buffer_size, (double)st.buffer_size);
    DMETRIC(d, metrics_gauge_set, tasks_in_flight, (double)st.in_flight);
}

void dround_reject(void *ctx, uint64_t client_id, uint64_t round, fc_status st,
                   const char *reason) {
    fcd *d = ctx;
    fc_error err = {0};
    char why[ROUND_REASON_MAX];
    snprintf(why, sizeof why, "%s: %s", fc_wire_error_for_status(st)->name, reason ? reason : "");
    if (d->metrics)
        metrics_fedcoord_reject(d->metrics, fc_wire_error_for_status(st)->name);
    if (d->cfg->round.mode == DCFG_ROUND_ASYNC) {
        async_reject(d, client_id, round, why);
        dround_pump(d);
        return;
    }
    if (round_update_rejected(d->sched, daemon_now_ms(), client_id, round, why, &err) == FC_OK &&
        d->cur && d->cur->id == round)
        queue_drop(d->cur, client_id, "rejected");
    dround_pump(d);
}

fc_status dround_eval(void *ctx, uint64_t client_id, uint64_t round, uint64_t model_version,
                      uint64_t num_examples, const char *const *names, const double *values,
                      size_t n, fc_error *err) {
    fcd *d = ctx;
    dround *rd = d->cur;
    if (!rd || rd->id != round || rd->kind != ROUND_KIND_EVALUATE)
        return fc_error_set(err, FC_ERR_STATE, "round %" PRIu64 " is not an open evaluation round",
                            round);
    if (model_version != rd->base_version)
        return fc_error_set(err, FC_ERR_REQUIREMENT,
                            "evaluation of version %" PRIu64 ", round %" PRIu64
                            " evaluates version %" PRIu64,
                            model_version, round, rd->base_version);
    round_metric m[ROUND_MAX_METRICS];
    if (n > ROUND_MAX_METRICS)
        return fc_error_set(err, FC_ERR_LIMIT, "%zu metrics, at most %d", n, ROUND_MAX_METRICS);
    for (size_t i = 0; i < n; i++)
        m[i] = (round_metric){names[i], values[i]};
    fc_status st = round_eval_received(d->sched, daemon_now_ms(), client_id, round, num_examples,
                                       m, n, err);
    if (st == FC_OK) {
        dpart *p = find_part(rd, client_id);
        if (p) {
            fc_free(p->metrics_json);
            p->metrics_json = metrics_json_of(names, values, n);
        }
    }
    dround_pump(d);
    return st;
}

/* ---- registration count (fedau's N) ---- */

static fc_status count_one(void *ud, const store_client *c) {
    if (c->revoked_at == 0)
        (*(uint64_t *)ud)++;
    return FC_OK;
}

/* Clients in the table that are not revoked (certificate clients are enrolled there too). */
static uint64_t count_registered(fcd *d) {
    uint64_t n = 0;
    fc_error err = {0};
    if (store_client_list(d->ro, count_one, &n, &err) != FC_OK)
        FC_LOG(FC_LOG_WARN, "could not count registered clients", FC_LS("error", err.msg));
    d->registration_scans++;
    d->registered_count = n;
    return n;
}

/* ---- life cycle ---- */

fc_status dround_init(fcd *d, const store_recovery *rec, fc_error *err) {
    round_config rc;
    round_config_defaults(&rc);
    rc.min_clients = (uint32_t)d->cfg->round.min_clients;
    rc.clients_per_round = (uint32_t)d->cfg->round.clients_per_round;
    rc.over_select = (uint32_t)d->cfg->round.over_select;
    rc.min_updates = (uint32_t)d->cfg->round.min_updates;
    rc.round_timeout_ms = (uint64_t)d->cfg->round.round_timeout_ms;
    rc.max_rounds = (uint64_t)d->cfg->round.max_rounds;
    rc.eval_every = (uint64_t)d->cfg->round.eval_every;
    rc.seed = (uint64_t)d->cfg->round.seed;
    rc.mu = d->cfg->round.mu;
    rc.mode = d->cfg->round.mode == DCFG_ROUND_ASYNC ? ROUND_MODE_ASYNC : ROUND_MODE_SYNC;
    rc.buffer_size = (uint32_t)d->cfg->round.buffer_size;
    rc.concurrency = (uint32_t)d->cfg->round.concurrency;
    rc.max_staleness = (uint64_t)d->cfg->round.max_staleness;
    fc_status st = round_create(&rc, &d->sched, err);
    if (st != FC_OK)
        return st;
    d->last_round_at_start = (uint64_t)rec->last_round;
    round_restore_info ri = {
        .last_round_id = (uint64_t)rec->last_round,
        .model_version = (uint64_t)rec->latest_version,
        /* version 1 is the initial model; each committed training round adds one */
        .trained_rounds = rec->latest_version > 1 ? (uint64_t)rec->latest_version - 1 : 0,
    };
    /* The newest version already evaluated, from the recent round records. */
    int64_t after = rec->last_round > 200 ? rec->last_round - 200 : 0;
    uint64_t evaluated = 0;
    for (int64_t id = rec->last_round; id > after && !evaluated; id--) {
        store_round r;
        memset(&r, 0, sizeof r);
        if (store_round_get(d->ro, id, &r, NULL) != FC_OK)
            continue;
        if (r.state == STORE_ROUND_COMMITTED && r.config_json &&
            strstr(r.config_json, "\"kind\":\"evaluate\""))
            evaluated = (uint64_t)r.base_version;
        store_round_clear(&r);
    }
    ri.last_eval_version = evaluated;
    return round_restore(d->sched, &ri, err);
}

void dround_model_ready(fcd *d) {
    fc_error err = {0};
    uint64_t now = daemon_now_ms();
    for (size_t i = 0; i < d->n_clients; i++)
        if (d->clients[i].connected)
            round_client_available(d->sched, now, d->clients[i].id, &err);
    dround_pump(d);
}

int dround_quiet(fcd *d) {
    if (d->sched && round_get_state(d->sched) != ROUND_STOPPED) {
        fc_error err = {0};
        round_stop(d->sched, daemon_now_ms(), "coordinator stopping", &err);
        dround_pump(d);
    }
    if (d->cur && round_get_state(d->sched) == ROUND_STOPPED && !d->cur->busy)
        abandon(d, d->cur);
    return !d->cur && !d->zombies && d->jobs_in_flight == 0 && !d->proposal_committing;
}

void dround_free_all(fcd *d) {
    held_free_all(d);
    abandon(d, d->cur);
    while (d->zombies) {
        dround *z = d->zombies;
        d->zombies = z->next;
        dround_destroy(z);
    }
    round_free(d->sched);
    d->sched = NULL;
}
