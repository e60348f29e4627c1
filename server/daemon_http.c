/* daemon_http.c: the daemon's side of the operator HTTP API (server/api.c, docs/http-api.md).
 *
 * Owns the metrics registry the daemon updates, the admin token read from [http]
 * admin_token_file, the api_provider callbacks (live status, readiness, pause/resume/stop,
 * per-client liveness) and the HTTP listener on the daemon's own loop. It never reads the store
 * itself (the API has its own read connection) and never blocks: every callback only reads the
 * loop thread's state.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "server/api.h"
#include "server/daemon.h"

/* The admin token: the file's first line, without the line end; at least 16 characters. */
static fc_status read_token(const char *path, char **out, fc_error *err) {
    *out = NULL;
    FILE *f = fopen(path, "r");
    if (!f)
        return fc_error_set(err, FC_ERR_CONFIG, "[http] admin_token_file %s: %s", path,
                            strerror(errno));
    char line[1024];
    char *got = fgets(line, sizeof line, f);
    fclose(f);
    size_t n = got ? strcspn(line, "\r\n") : 0;
    line[n] = '\0';
    if (n < 16)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "[http] admin_token_file %s: the token on its first line has %zu "
                            "characters; use at least 16 (e.g. openssl rand -hex 32)",
                            path, n);
    if (!(*out = fc_strdup(line)))
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
    return FC_OK;
}

static void hex(const uint8_t *b, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = '\0';
}

static fc_status p_status(void *ctx, json_t *o, fc_error *err) {
    fcd *d = ctx;
    (void)err;
    size_t connected = 0;
    for (size_t i = 0; i < d->n_clients; i++)
        connected += d->clients[i].connected != 0;
    round_state rs = round_get_state(d->sched);
    int async = d->cfg->round.mode == DCFG_ROUND_ASYNC;
    json_object_set_new(o, "mode", json_string(async ? "async" : "sync"));
    json_object_set_new(o, "versions_per_minute",
                        json_integer((json_int_t)dround_versions_last_minute(d)));
    round_async_stats as;
    if (async && round_get_async_stats(d->sched, &as) == FC_OK)
        json_object_set_new(o, "async",
                            json_pack("{s:i, s:i, s:I, s:i, s:I, s:I, s:I, s:I, s:I}",
                                      "buffer_fill", (int)as.buffer_fill, "buffer_size",
                                      (int)as.buffer_size, "in_flight", (json_int_t)as.in_flight,
                                      "concurrency", (int)as.concurrency, "max_staleness",
                                      (json_int_t)d->cfg->round.max_staleness, "held",
                                      (json_int_t)d->n_held, "tasks_sent",
                                      (json_int_t)as.tasks_sent, "tasks_expired",
                                      (json_int_t)as.tasks_expired, "tasks_dropped",
                                      (json_int_t)as.tasks_dropped));
    json_object_set_new(o, "state", json_string(round_state_name(rs)));
    uint64_t rid = round_current_id(d->sched);
    round_info ri;
    if (rid && round_get_info(d->sched, rid, &ri) == FC_OK) {
        json_t *r = json_object();
        json_object_set_new(r, "id", json_integer((json_int_t)ri.round_id));
        json_object_set_new(r, "kind", json_string(round_kind_name(ri.kind)));
        json_object_set_new(r, "phase", json_string(round_state_name(ri.state)));
        json_object_set_new(r, "model_version", json_integer((json_int_t)ri.model_version));
        json_object_set_new(r, "started_ms_ago",
                            json_integer((json_int_t)(daemon_now_ms() - ri.started_ms)));
        if (ri.state == ROUND_TRAINING && !async)
            json_object_set_new(
                r, "deadline_in_ms",
                json_integer((json_int_t)(ri.started_ms + (uint64_t)d->cfg->round.round_timeout_ms) -
                             (json_int_t)daemon_now_ms()));
        json_object_set_new(r, "selected", json_integer(ri.selected));
        json_object_set_new(r, "received", json_integer(ri.accepted));
        json_object_set_new(r, "rejected", json_integer(ri.rejected));
        json_object_set_new(r, "timed_out", json_integer(ri.timed_out));
        json_object_set_new(r, "dropped", json_integer(ri.dropped));
        json_object_set_new(r, "required", json_integer(async ? d->cfg->round.buffer_size
                                                              : d->cfg->round.min_updates));
        if (ri.reason[0])
            json_object_set_new(r, "reason", json_string(ri.reason));
        json_object_set_new(o, "round", r);
    } else {
        json_object_set_new(o, "round", json_null());
    }
    const dmodel *m = dmodel_current(d);
    if (m) {
        char sha[65];
        hex(m->sha256, 32, sha);
        json_object_set_new(o, "model",
                            json_pack("{s:I, s:s, s:I, s:I}", "version", (json_int_t)m->version,
                                      "sha256", sha, "bytes", (json_int_t)m->bytes, "parameters",
                                      (json_int_t)m->numel));
    } else {
        json_object_set_new(o, "model", json_null());
    }
    json_object_set_new(o, "clients",
                        json_pack("{s:I, s:I, s:I}", "registered",
                                  (json_int_t)d->registered_count, "connected",
                                  (json_int_t)connected, "idle",
                                  (json_int_t)round_idle_count(d->sched)));
    json_object_set_new(o, "uptime_s",
                        json_integer((json_int_t)((daemon_now_ms() - d->started_ms) / 1000)));
    json_object_set_new(
        o, "staging_bytes",
        json_integer((json_int_t)(sess_budget_memory_used(d->budget) +
                                  sess_budget_spill_used(d->budget))));
    json_object_set_new(o, "rule", json_string(d->cfg->aggregator.rule->name));
    json_object_set_new(o, "optimizer", json_string(d->opt->name));
    return FC_OK;
}

static int p_ready(void *ctx, const char **why) {
    fcd *d = ctx;
    if (d->stopping) {
        *why = "shutting down";
        return 0;
    }
    if (!d->models) {
        *why = "no model yet: waiting for [round] initial_model or a client's proposal";
        return 0;
    }
    return 1;
}

static fc_status p_control(void *ctx, const char *action, fc_error *err) {
    fcd *d = ctx;
    uint64_t now = daemon_now_ms();
    round_state rs = round_get_state(d->sched);
    fc_status st;
    if (rs == ROUND_STOPPED)
        return fc_error_set(err, FC_ERR_STATE, "the federation is stopped");
    if (strcmp(action, "pause") == 0) {
        if (rs == ROUND_PAUSED)
            return fc_error_set(err, FC_ERR_STATE, "already paused");
        st = round_pause(d->sched, now, err);
    } else if (strcmp(action, "resume") == 0) {
        if (rs != ROUND_PAUSED)
            return fc_error_set(err, FC_ERR_STATE, "not paused (state %s)", round_state_name(rs));
        st = round_resume(d->sched, now, err);
    } else if (strcmp(action, "stop") == 0) {
        st = round_stop(d->sched, now, "stopped by operator", err);
    } else {
        return fc_error_set(err, FC_ERR_INVALID, "unknown action '%s'", action);
    }
    if (st == FC_OK)
        FC_LOG(FC_LOG_INFO, "operator control", FC_LS("action", action));
    dround_pump(d);
    return st;
}

static void p_client_live(void *ctx, const char *name, json_t *out) {
    fcd *d = ctx;
    int connected = 0;
    for (size_t i = 0; i < d->n_clients; i++)
        if (strcmp(d->clients[i].name, name) == 0) {
            connected = d->clients[i].connected;
            break;
        }
    json_object_set_new(out, "connected", json_boolean(connected));
}

fc_status daemon_http_start(fcd *d, fc_error *err) {
    const dcfg *cfg = d->cfg;
    if (!cfg->http.enabled)
        return FC_OK;
    if (!(d->metrics = fc_calloc(1, sizeof *d->metrics)))
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
    fc_status st = metrics_fedcoord_new(d->metrics, err); /* creates the registry */
    if (st != FC_OK) {
        fc_free(d->metrics);
        d->metrics = NULL;
        return st;
    }
    d->metrics_reg = d->metrics->reg;
    if (cfg->http.admin_token_file &&
        (st = read_token(cfg->http.admin_token_file, &d->admin_token, err)) != FC_OK)
        return st;
    api_config ac = {
        .version = API_CONFIG_V1,
        .store_path = d->db_path,
        .admin_token = d->admin_token,
        .auth_reads = cfg->http.auth_reads,
        .metrics = d->metrics_reg,
        .http_metrics = d->metrics,
        .provider = {.version = API_PROVIDER_V1,
                     .ctx = d,
                     .status = p_status,
                     .ready = p_ready,
                     .control = p_control,
                     .client_live = p_client_live},
    };
    if ((st = api_new(&ac, &d->api, err)) != FC_OK)
        return st;
    http_server_config hc = {
        .version = HTTP_SERVER_CONFIG_V1,
        .host = cfg->http.listen,
        .port = cfg->http.port,
        .tls = cfg->http.tls,
        .tls_cfg = cfg->tls,
    };
    hc.tls_cfg.mtls = NET_MTLS_OFF; /* operators authenticate with the bearer token */
    http_limits_default(&hc.limits);
    if ((st = api_server_start(d->api, d->loop, &hc, &d->http, err)) != FC_OK) {
        fc_error_prefix(err, "[http]");
        return st;
    }
    FC_LOG(FC_LOG_INFO, "http api ready", FC_LS("address", cfg->http.listen),
           FC_LI("http_port", http_server_port(d->http)), FC_LS("tls", cfg->http.tls ? "on" : "off"),
           FC_LS("control", d->admin_token ? "token" : "disabled"),
           FC_LS("reads", cfg->http.auth_reads ? "token" : "open"));
    return FC_OK;
}

static void on_http_stopped(void *arg) {
    fcd *d = arg;
    d->http_closed = 1;
}

void daemon_http_stop(fcd *d) {
    if (d->http) {
        http_server_stop(d->http, on_http_stopped, d);
        d->http = NULL;
    } else {
        d->http_closed = 1;
    }
}

void daemon_http_free(fcd *d) {
    api_free(d->api);
    d->api = NULL;
    fc_free(d->metrics);
    d->metrics = NULL;
    metrics_free(d->metrics_reg);
    d->metrics_reg = NULL;
    if (d->admin_token) {
        memset(d->admin_token, 0, strlen(d->admin_token));
        fc_free(d->admin_token);
        d->admin_token = NULL;
    }
}
