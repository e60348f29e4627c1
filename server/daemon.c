/* daemon.c: the fedcoord daemon's start, loop and end.
 *
 * Owns start-up (data folder, store and its writer thread, recovery, the initial model, the
 * optimizer's state, the client listener), authentication against the store, session presence,
 * the bridge that brings writer-thread completions back to the loop, the revocation tail (a
 * client revoked with `fedctl client revoke` loses its live session within a second), signals
 * and the orderly shutdown. Round logic lives in daemon_round.c, model versions in
 * daemon_model.c. Everything here runs on the loop thread except the writer's done callback,
 * which only queues and wakes the loop.
 */
#include <errno.h>
#include <malloc.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/alloc.h"
#include "core/log.h"
#include "server/daemon.h"

uint64_t daemon_now_ms(void) { return uv_hrtime() / 1000000u; }

int64_t daemon_unix_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- writer bridge ---- */

static void job_done_writer(void *ud, fc_status st, const fc_error *err) {
    dwjob *j = ud;
    fcd *d = j->ud2;
    j->st = st;
    if (err)
        j->err = *err;
    pthread_mutex_lock(&d->done_mu);
    if (d->done_tail)
        d->done_tail->next = j;
    else
        d->done_head = j;
    d->done_tail = j;
    pthread_mutex_unlock(&d->done_mu);
    uv_async_send(&d->wake);
}

static void on_wake(uv_async_t *a) {
    fcd *d = a->data;
    pthread_mutex_lock(&d->done_mu);
    dwjob *list = d->done_head;
    d->done_head = d->done_tail = NULL;
    pthread_mutex_unlock(&d->done_mu);
    while (list) {
        dwjob *j = list;
        list = j->next;
        j->next = NULL;
        d->jobs_in_flight--;
        if (j->done)
            j->done(d, j, j->st, &j->err);
        else
            fc_free(j);
    }
}

void daemon_submit(fcd *d, dwjob *j) {
    j->ud2 = d;
    j->next = NULL;
    d->jobs_in_flight++;
    fc_error err = {0};
    fc_status st = store_writer_submit(d->writer, j->fn, j->ud, job_done_writer, j, &err);
    if (st != FC_OK)
        job_done_writer(j, st, &err); /* same path: completes from the next loop iteration */
}

/* ---- clients ---- */

static size_t client_pos(const fcd *d, uint64_t id) {
    size_t lo = 0, hi = d->n_clients;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (d->clients[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

const dclient *daemon_client(const fcd *d, uint64_t id) {
    size_t i = client_pos(d, id);
    return i < d->n_clients && d->clients[i].id == id ? &d->clients[i] : NULL;
}

static dclient *client_note(fcd *d, uint64_t id, const char *name) {
    size_t i = client_pos(d, id);
    if (i < d->n_clients && d->clients[i].id == id)
        return &d->clients[i];
    if (d->n_clients == d->cap_clients) {
        size_t cap = d->cap_clients ? d->cap_clients * 2 : 64;
        dclient *c = fc_realloc(d->clients, cap * sizeof *c);
        if (!c)
            return NULL;
        d->clients = c;
        d->cap_clients = cap;
    }
    memmove(&d->clients[i + 1], &d->clients[i], (d->n_clients - i) * sizeof *d->clients);
    d->n_clients++;
    dclient *c = &d->clients[i];
    memset(c, 0, sizeof *c);
    c->id = id;
    snprintf(c->name, sizeof c->name, "%s", name);
    /* fedau: a client first seen once rounds have run starts counting at the next round. */
    c->registered_round = d->sched && d->registration_scans ? round_current_id(d->sched) : 0;
    return c;
}

/* Certificate identities without a table row get ids above this, stable for the process. */
#define CERT_ID_BASE (UINT64_C(1) << 62)

typedef struct add_cert {
    const char *name;
    uint8_t hash[32];
    int64_t id;
} add_cert;

static fc_status add_cert_fn(store *s, void *ud, fc_error *err) {
    add_cert *a = ud;
    return store_client_add(s, a->name, a->hash, daemon_unix_ms(), &a->id, err);
}

static fc_status authenticate(void *ctx, const char *name, const uint8_t *token, size_t token_len,
                              const char *identity, uint64_t *client_id, char *name_out,
                              size_t name_cap, fc_error *err) {
    fcd *d = ctx;
    store_client c;
    fc_error e = {0};
    memset(&c, 0, sizeof c);
    if (token_len == 0) {
        if (!identity)
            return fc_error_set(err, FC_ERR_AUTH, "no token and no client certificate");
        if (name && *name && strcmp(name, identity) != 0)
            return fc_error_set(err, FC_ERR_AUTH,
                                "client name '%s' does not match the certificate", name);
        fc_status st = store_client_by_name(d->ro, identity, &c, &e);
        if (st == FC_ERR_NOT_FOUND) {
            /* A certificate the CA vouches for names a client: enrol it once, with a random
             * token hash that no token can match. */
            add_cert a = {identity, {0}, 0};
            if (!dcfg_valid_client_name(identity))
                return fc_error_set(err, FC_ERR_AUTH,
                                    "certificate name is not a valid client name");
            if (RAND_bytes(a.hash, sizeof a.hash) != 1 ||
                store_writer_call(d->writer, add_cert_fn, &a, &e) != FC_OK)
                return fc_error_set(err, FC_ERR_SYSTEM, "could not enrol the certificate's client");
            FC_LOG(FC_LOG_INFO, "client enrolled by certificate", FC_LS("client", identity));
            c.id = a.id;
            snprintf(c.name, sizeof c.name, "%s", identity);
        } else if (st != FC_OK) {
            return fc_error_set(err, FC_ERR_SYSTEM, "client lookup failed");
        }
    } else {
        uint8_t hash[32];
        unsigned int hl = 0;
        if (EVP_Digest(token, token_len, hash, &hl, EVP_sha256(), NULL) != 1)
            return fc_error_set(err, FC_ERR_SYSTEM, "hashing failed");
        fc_status st = store_client_by_token(d->ro, hash, &c, &e);
        if (st == FC_ERR_NOT_FOUND || (st == FC_OK && CRYPTO_memcmp(hash, c.token_sha256, 32)))
            return fc_error_set(err, FC_ERR_AUTH, "unknown client or wrong token");
        if (st != FC_OK)
            return fc_error_set(err, FC_ERR_SYSTEM, "client lookup failed");
        if (name && *name && strcmp(name, c.name) != 0)
            return fc_error_set(err, FC_ERR_AUTH, "unknown client or wrong token");
    }
    if (c.revoked_at != 0)
        return fc_error_set(err, FC_ERR_AUTH, "client '%s' is revoked", c.name);
    if (!client_note(d, (uint64_t)c.id, c.name))
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
    *client_id = (uint64_t)c.id;
    snprintf(name_out, name_cap, "%s", c.name);
    return FC_OK;
}

static void on_presence(void *ctx, uint64_t client_id, const char *name, int up) {
    fcd *d = ctx;
    dclient *c = client_note(d, client_id, name);
    if (c)
        c->connected = up;
    DMETRIC(d, metrics_gauge_add, connected_clients, up ? 1.0 : -1.0);
    dround_presence(d, client_id, up);
}

/* A client answered the proposal task with an error (it has no initial model): ask another. */
static void on_peer_error(void *ctx, uint64_t client_id, fc_status st, int fatal,
                          uint64_t ref_seq, const char *message) {
    fcd *d = ctx;
    (void)ref_seq;
    FC_LOG(FC_LOG_INFO, "client reported an error", FC_LU("client", client_id),
           FC_LS("code", fc_status_name(st)), FC_LI("fatal", fatal), FC_LS("message", message));
    if (client_id != d->proposer || d->models)
        return;
    dclient *c = client_note(d, client_id, "");
    if (c)
        c->no_proposal = 1;
    d->proposer = 0;
    dround_pump(d);
}

/* ---- deferred work and housekeeping ---- */

static void on_deferred(uv_timer_t *t) {
    fcd *d = t->data;
    size_t n = d->n_bye;
    d->n_bye = 0;
    for (size_t i = 0; i < n; i++) {
        sess *s = sess_find(d->sv, d->bye_ids[i]);
        if (s)
            sess_close(s, FC_OK, "training complete");
    }
}

void daemon_bye_later(fcd *d, uint64_t client_id) {
    if (d->n_bye == d->cap_bye) {
        size_t cap = d->cap_bye ? d->cap_bye * 2 : 64;
        uint64_t *b = fc_realloc(d->bye_ids, cap * sizeof *b);
        if (!b)
            return;
        d->bye_ids = b;
        d->cap_bye = cap;
    }
    d->bye_ids[d->n_bye++] = client_id;
    uv_timer_start(&d->deferred, on_deferred, 0, 0);
}

typedef struct tail_ctx {
    fcd *d;
    int64_t last;
} tail_ctx;

static fc_status tail_event(void *ud, const store_event *e) {
    tail_ctx *t = ud;
    t->last = e->id;
    if (strcmp(e->kind, "client.revoked") != 0 || !e->client)
        return FC_OK;
    fcd *d = t->d;
    for (size_t i = 0; i < d->n_clients; i++)
        if (strcmp(d->clients[i].name, e->client) == 0) {
            sess *s = sess_find(d->sv, d->clients[i].id);
            FC_LOG(FC_LOG_INFO, "client revoked", FC_LS("client", e->client),
                   FC_LS("session", s ? "closed" : "none"));
            if (s)
                sess_close(s, FC_ERR_AUTH, "client revoked");
        }
    return FC_OK;
}

static fc_status tail_event_skip(void *ud, const store_event *e) {
    ((tail_ctx *)ud)->last = e->id;
    return FC_OK;
}

static void tail_events(fcd *d) {
    tail_ctx t = {d, d->last_event_id};
    fc_error err = {0};
    for (;;) {
        int64_t before = t.last;
        if (store_event_list(d->ro, t.last, 1000, tail_event, &t, &err) != FC_OK) {
            FC_LOG(FC_LOG_WARN, "event log not readable", FC_LS("error", err.msg));
            break;
        }
        if (t.last == before)
            break;
    }
    d->last_event_id = t.last;
}

static void on_tick(uv_timer_t *t) {
    fcd *d = t->data;
    tail_events(d);
    DMETRIC(d, metrics_gauge_set, staging_bytes,
            (double)(sess_budget_memory_used(d->budget) + sess_budget_spill_used(d->budget)));
    dround_gauges(d);
}

/* ---- shutdown ---- */

static void on_listener_closed(void *arg) {
    fcd *d = arg;
    d->listener_closed = 1;
    d->listener = NULL;
}

static void finish_when_quiet(uv_timer_t *t);

static void begin_shutdown(fcd *d, const char *why) {
    if (d->stopping)
        return;
    d->stopping = 1;
    FC_LOG(FC_LOG_INFO, "shutting down", FC_LS("reason", why));
    uv_timer_stop(&d->tick);
    dround_quiet(d);
    if (d->listener) {
        net_close_all(d->listener, FC_ERR_CLOSED, "server shutting down");
        net_listener_close(d->listener, on_listener_closed, d);
    }
    daemon_http_stop(d);
    uv_timer_start(&d->deferred, finish_when_quiet, 10, 10);
}

static void finish_when_quiet(uv_timer_t *t) {
    fcd *d = t->data;
    if (!dround_quiet(d) || !d->listener_closed || !d->http_closed)
        return;
    uv_timer_stop(&d->deferred);
    uv_close((uv_handle_t *)&d->tick, NULL);
    uv_close((uv_handle_t *)&d->deadline, NULL);
    uv_close((uv_handle_t *)&d->deferred, NULL);
    uv_close((uv_handle_t *)&d->wake, NULL);
    uv_close((uv_handle_t *)&d->sig_term, NULL);
    uv_close((uv_handle_t *)&d->sig_int, NULL);
}

static void on_signal(uv_signal_t *s, int signum) {
    fcd *d = s->data;
    begin_shutdown(d, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---- start ---- */

static fc_status make_dir(const char *path, const char *what, fc_error *err) {
    if (mkdir(path, 0700) == 0 || errno == EEXIST) {
        struct stat sb;
        if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
            return FC_OK;
        return fc_error_set(err, FC_ERR_CONFIG, "%s %s exists and is not a folder", what, path);
    }
    return fc_error_set(err, FC_ERR_IO, "%s %s: cannot create: %s", what, path, strerror(errno));
}

static fc_status recover_fn(store *s, void *ud, fc_error *err) {
    return store_recover(s, daemon_unix_ms(), ud, err);
}

static fc_status start(fcd *d, fc_error *err) {
    dcfg *cfg = d->cfg;
    fc_status st = make_dir(cfg->server.data_dir, "[server] data_dir", err);
    if (st != FC_OK)
        return st;
    size_t n = strlen(cfg->server.data_dir) + 16;
    if (!(d->spill_dir = fc_malloc(n)) || !(d->db_path = fc_strdup(cfg->storage.db)))
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
    snprintf(d->spill_dir, n, "%s/staging", cfg->server.data_dir);
    if ((st = make_dir(d->spill_dir, "staging folder", err)) != FC_OK)
        return st;
    store_options wo = {.version = STORE_OPTIONS_V1, .chunk_size = DAEMON_CHUNK_BYTES};
    if ((st = store_writer_start(d->db_path, &wo, &d->writer, err)) != FC_OK) {
        fc_error_prefix(err, "[storage] db %s", d->db_path);
        return st;
    }
    store_recovery rec;
    memset(&rec, 0, sizeof rec);
    if ((st = store_writer_call(d->writer, recover_fn, &rec, err)) != FC_OK)
        return st;
    if (rec.rounds_failed)
        FC_LOG(FC_LOG_WARN, "rounds in flight at the last stop marked failed",
               FC_LU("rounds", rec.rounds_failed));
    store_options ro = {.version = STORE_OPTIONS_V1, .readonly = 1, .must_exist = 1};
    if ((st = store_open(d->db_path, &ro, &d->ro, err)) != FC_OK)
        goto out;
    if (rec.latest_version == 0 && cfg->round.initial_model) {
        if ((st = dmodel_import_initial(d, err)) != FC_OK)
            goto out;
        rec.latest_version = 1;
    }
    if (rec.latest_version && (st = dmodel_load(d, (uint64_t)rec.latest_version, err)) != FC_OK)
        goto out;
    /* rule and optimizer state of the newest version (stored with it) */
    if (rec.state.rule_state_len) {
        if (rec.state.rule_name && strcmp(rec.state.rule_name, cfg->aggregator.rule->name) != 0)
            FC_LOG(FC_LOG_WARN, "rule changed since the last version; its state is not reused",
                   FC_LS("stored", rec.state.rule_name),
                   FC_LS("configured", cfg->aggregator.rule->name));
        else if ((d->rule_blob = fc_malloc(rec.state.rule_state_len))) {
            memcpy(d->rule_blob, rec.state.rule_state, rec.state.rule_state_len);
            d->rule_blob_len = rec.state.rule_state_len;
        }
    }
    d->opt = cfg->optimizer.opt;
    if (rec.state.optimizer_state_len && rec.state.optimizer_name &&
        strcmp(rec.state.optimizer_name, d->opt->name) == 0 &&
        (d->opt_blob = fc_malloc(rec.state.optimizer_state_len))) {
        memcpy(d->opt_blob, rec.state.optimizer_state, rec.state.optimizer_state_len);
        d->opt_blob_len = rec.state.optimizer_state_len;
    }
    if ((st = dround_init(d, &rec, err)) != FC_OK)
        goto out;
    {
        tail_ctx t = {d, 0};
        /* skip the history: only revocations from now on matter */
        for (;;) {
            int64_t before = t.last;
            if ((st = store_event_list(d->ro, t.last, 10000, tail_event_skip, &t, err)) != FC_OK)
                goto out;
            if (t.last == before)
                break;
        }
        d->last_event_id = t.last;
    }
out:
    store_recovery_clear(&rec);
    return st;
}

static fc_status open_network(fcd *d, fc_error *err) {
    dcfg *cfg = d->cfg;
    fc_status st = sess_budget_new(d->loop, cfg->storage.staging_memory, d->spill_dir,
                                   cfg->storage.staging_disk, &d->budget, err);
    if (st != FC_OK)
        return st;
    sess_config sc = {
        .loop = d->loop,
        .budget = d->budget,
        .auth = authenticate,
        .auth_ctx = d,
        .round = dround_round_info,
        .round_ctx = d,
        .sink = dround_sink,
        .sink_ctx = d,
        .reject = dround_reject,
        .reject_ctx = d,
        .presence = on_presence,
        .presence_ctx = d,
        .eval = dround_eval,
        .eval_ctx = d,
        .peer_error = on_peer_error,
        .peer_error_ctx = d,
        .parked_gone = dround_parked_gone,
        .parked_gone_ctx = d,
        .max_num_examples = (uint64_t)cfg->limits.max_num_examples,
        .max_update_norm = cfg->limits.norm_bound,
        .max_update_bytes = cfg->limits.max_update_bytes,
        .max_frame_bytes = (uint32_t)cfg->limits.max_frame,
        .software = "fedcoord/0.1.0",
    };
    dmodel_source(d, &sc.models);
    if ((st = sess_server_new(&sc, &d->sv, err)) != FC_OK)
        return st;
    net_listener_config lc = {
        .name = "client",
        .host = cfg->server.listen,
        .port = cfg->server.port,
        .tls = cfg->tls,
        .limits = cfg->limits.net,
        .user = d->sv,
    };
    sess_net_callbacks(&lc.cb);
    if ((st = net_listener_open(d->loop, &lc, &d->listener, err)) != FC_OK)
        return st;
    FC_LOG(FC_LOG_INFO, "listening", FC_LS("address", cfg->server.listen),
           FC_LI("port", net_listener_port(d->listener)), FC_LS("db", d->db_path),
           FC_LU("model_version", d->models ? d->models->version : 0),
           FC_LS("rule", cfg->aggregator.rule->name), FC_LS("optimizer", d->opt->name));
    return FC_OK;
}

static void free_all(fcd *d) {
    dround_free_all(d);
    daemon_http_free(d);
    if (d->sv)
        sess_server_free(d->sv);
    if (d->budget)
        sess_budget_free(d->budget);
    uv_run(d->loop, UV_RUN_NOWAIT);
    if (d->writer)
        store_writer_stop(d->writer); /* runs what is queued, then closes */
    on_wake(&d->wake);
    store_close(d->ro);
    store_close(d->wro);
    fc_free(d->w_cache);
    fc_free(d->w_spare);
    while (d->models) {
        dmodel *m = d->models;
        d->models = m->next;
        dmodel_free(m);
    }
    if (d->opt_state)
        d->opt->destroy(d->opt_state);
    fc_free(d->rule_blob);
    fc_free(d->opt_blob);
    fc_free(d->clients);
    fc_free(d->bye_ids);
    fc_free(d->spill_dir);
    fc_free(d->db_path);
    pthread_mutex_destroy(&d->done_mu);
    pthread_mutex_destroy(&d->wro_mu);
}

int daemon_run(dcfg *cfg) {
    fcd dd;
    fcd *d = &dd;
    memset(d, 0, sizeof *d);
    d->cfg = cfg;
    d->exit_code = 0;
    d->started_ms = daemon_now_ms();
    signal(SIGPIPE, SIG_IGN);
    /* Model-sized buffers (staging, accumulators, w) come and go every round, on several
     * threads. A fixed mmap threshold keeps glibc from raising it after the first free, so
     * each such buffer is its own mapping and its pages go back to the system when freed:
     * resident memory then follows the live buffers instead of the peak of every arena. */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    fc_log_set_level(cfg->server.log_level);
    fc_log_set_json(cfg->server.log_format == DCFG_LOG_JSON);
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "fedcoord: cannot start the event loop\n");
        return 1;
    }
    d->loop = &loop;
    pthread_mutex_init(&d->done_mu, NULL);
    pthread_mutex_init(&d->wro_mu, NULL);
    uv_async_init(&loop, &d->wake, on_wake);
    d->wake.data = d;
    uv_timer_init(&loop, &d->tick);
    uv_timer_init(&loop, &d->deadline);
    uv_timer_init(&loop, &d->deferred);
    d->tick.data = d->deadline.data = d->deferred.data = d;
    uv_signal_init(&loop, &d->sig_term);
    uv_signal_init(&loop, &d->sig_int);
    d->sig_term.data = d->sig_int.data = d;
    fc_error err = {0};
    fc_status st = start(d, &err);
    if (st == FC_OK)
        st = open_network(d, &err);
    if (st == FC_OK)
        st = daemon_http_start(d, &err);
    if (st != FC_OK) {
        FC_LOG(FC_LOG_ERROR, "start failed", FC_LS("error", err.msg));
        fprintf(stderr, "fedcoord: %s\n", err.msg);
        d->exit_code = st == FC_ERR_CONFIG ? 2 : 1;
        d->stopping = 1;
        if (d->listener)
            net_listener_close(d->listener, on_listener_closed, d);
        else
            d->listener_closed = 1;
        daemon_http_stop(d);
        finish_when_quiet(&d->deferred);
    } else {
        uv_signal_start(&d->sig_term, on_signal, SIGTERM);
        uv_signal_start(&d->sig_int, on_signal, SIGINT);
        uv_timer_start(&d->tick, on_tick, 1000, 1000);
        dround_refresh_registered(d);
        if (d->models)
            DMETRIC(d, metrics_gauge_set, model_version, (double)d->models->version);
        if (d->models)
            dround_model_ready(d);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    free_all(d);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
        FC_LOG(FC_LOG_WARN, "event loop closed with handles open", FC_LI("open", 1));
    if (d->exit_code == 0)
        FC_LOG(FC_LOG_INFO, "stopped", FC_LI("exit", 0));
    return d->exit_code;
}
