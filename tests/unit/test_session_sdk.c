/* test_session_sdk.c: evaluation results, server heartbeats and the initial model proposal,
 * between the daemon's real session layer (server/session.c over server/net, REAL TLS on
 * loopback) and real clients: the SDK (libfedclient) where it can say what is tested, and a raw
 * frame client (proto/wire) for what the SDK never sends (bad reports, a delta proposal).
 *
 * The libuv loop and the sessions run in the main thread; each client runs in a pthread and
 * records what it saw; the main thread asserts after joining it. The watchdog only turns a hang
 * into a failure. The heartbeat tests use a 100 ms interval and only assert that at least two
 * Heartbeats arrive within a generous window, never exact times.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/status.h"
#include "core/tensor.h"
#include "proto/frame.h"
#include "proto/stream.h"
#include "proto/wire.h"
#include "server/session.h"
#include "tests/lib/rawcl.h"
#include "tests/lib/tlsgen.h"

#include "fedcoord/client.h"

static tlsgen_pki pki;

#define WATCHDOG_MS 20000
#define MODEL_VERSION 7
#define EVAL_ROUND 9
#define ALICE 1 /* client id of "alice" */

/* ---- server side ---- */

typedef struct sunk {
    uint64_t client, round, base, examples;
    int is_delta;
    size_t n;
    char names[4][32];
    fc_dtype dtype[4];
    uint32_t ndim[4];
    uint64_t shape[4][FC_MAX_DIMS];
    uint8_t *bytes;
    uint64_t nbytes;
} sunk;

typedef struct harness {
    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t watchdog;
    int fired;
    net_listener *l;
    int port;
    int closed;
    sess_budget *budget;
    sess_server *sv;
    sess_auth_tokens *auth;
    sess_mem_model *model;
    fc_tensor_spec model_specs[1];
    uint8_t model_sha[FC_SHA256_BYTES];
    int proposal; /* the round callback asks every client for the initial model */
    fc_tensor_spec round_specs[1];
    /* sink */
    int sinks;
    sunk sk;
    /* evaluation callback */
    int evals;
    uint64_t eval_client, eval_round, eval_version, eval_examples;
    size_t eval_n;
    char eval_names[4][64];
    double eval_values[4];
    fc_status eval_answer;
    const char *eval_answer_msg;
    /* rejections and client errors */
    int rejects;
    fc_status reject_st;
    int peer_errors;
    fc_status peer_st;
    int peer_fatal;
    uint64_t peer_ref;
    char peer_msg[256];
} harness;

static fc_status round_cb(void *ctx, uint64_t client_id, sess_round_info *out, fc_error *err) {
    harness *h = ctx;
    (void)client_id, (void)err;
    if (h->proposal) {
        out->round = 0;
        out->base_version = 0;
        out->specs = NULL;
        out->n_specs = 0;
    } else {
        out->round = 3;
        out->base_version = MODEL_VERSION;
        out->specs = h->round_specs;
        out->n_specs = 1;
    }
    return FC_OK;
}

static void sink_cb(void *ctx, sess_update *u) {
    harness *h = ctx;
    sunk *k = &h->sk;
    h->sinks++;
    k->client = u->client_id;
    k->round = u->round;
    k->base = u->base_version;
    k->examples = u->num_examples;
    k->is_delta = u->is_delta;
    k->n = fc_stage_tensor_count(u->stage);
    for (size_t i = 0; i < k->n && i < 4; i++) {
        const fc_tensor_spec *sp = fc_stage_spec(u->stage, i);
        snprintf(k->names[i], sizeof k->names[i], "%s", sp->name);
        k->dtype[i] = sp->dtype;
        k->ndim[i] = sp->ndim;
        memcpy(k->shape[i], sp->shape, sizeof sp->shape);
    }
    fc_model m = FC_MODEL_INIT;
    fc_error err = {0};
    if (fc_stage_view_model(u->stage, &m, &err) == FC_OK) {
        free(k->bytes);
        k->bytes = malloc(fc_stage_total(u->stage) + 1);
        k->nbytes = 0;
        for (size_t i = 0; i < m.count; i++) {
            memcpy(k->bytes + k->nbytes, m.tensors[i].data, m.tensors[i].nbytes);
            k->nbytes += m.tensors[i].nbytes;
        }
        fc_model_free(&m);
    }
    sess_update_release(u);
}

static void reject_cb(void *ctx, uint64_t client_id, uint64_t round, fc_status st,
                      const char *reason) {
    harness *h = ctx;
    (void)client_id, (void)round, (void)reason;
    h->rejects++;
    h->reject_st = st;
}

static fc_status eval_cb(void *ctx, uint64_t client_id, uint64_t round, uint64_t model_version,
                         uint64_t num_examples, const char *const *names, const double *values,
                         size_t n, fc_error *err) {
    harness *h = ctx;
    h->evals++;
    h->eval_client = client_id;
    h->eval_round = round;
    h->eval_version = model_version;
    h->eval_examples = num_examples;
    h->eval_n = n;
    for (size_t i = 0; i < n && i < 4; i++) {
        snprintf(h->eval_names[i], sizeof h->eval_names[i], "%s", names[i]);
        h->eval_values[i] = values[i];
    }
    if (h->eval_answer != FC_OK)
        return fc_error_set(err, h->eval_answer, "%s", h->eval_answer_msg);
    return FC_OK;
}

static void peer_error_cb(void *ctx, uint64_t client_id, fc_status st, int fatal, uint64_t ref_seq,
                          const char *message) {
    harness *h = ctx;
    (void)client_id;
    h->peer_errors++;
    h->peer_st = st;
    h->peer_fatal = fatal;
    h->peer_ref = ref_seq;
    snprintf(h->peer_msg, sizeof h->peer_msg, "%s", message);
}

static void wake_cb(uv_async_t *a) { (void)a; }
static void watchdog_cb(uv_timer_t *t) { ((harness *)t->data)->fired = 1; }

typedef int (*pred_fn)(harness *h, void *arg);

static void h_run_until(harness *h, pred_fn pred, void *arg) {
    h->fired = 0;
    uv_timer_start(&h->watchdog, watchdog_cb, WATCHDOG_MS, 0);
    while (!pred(h, arg) && !h->fired)
        uv_run(&h->loop, UV_RUN_ONCE);
    uv_timer_stop(&h->watchdog);
    if (!pred(h, arg))
        fail_msg("timed out waiting for a condition (watchdog %d ms)", WATCHDOG_MS);
}

/* The served model: "w" f32 [2,3] = 1..6, version MODEL_VERSION. */
static void h_start(harness *h, uint32_t heartbeat_ms, int with_eval) {
    memset(h, 0, sizeof *h);
    fc_error err = {0};
    assert_int_equal(uv_loop_init(&h->loop), 0);
    assert_int_equal(uv_async_init(&h->loop, &h->wake, wake_cb), 0);
    assert_int_equal(uv_timer_init(&h->loop, &h->watchdog), 0);
    h->watchdog.data = h;
    assert_int_equal(sess_budget_new(&h->loop, 1 << 20, NULL, 0, &h->budget, &err), FC_OK);
    assert_int_equal(sess_auth_tokens_new(&h->auth, &err), FC_OK);
    assert_int_equal(
        sess_auth_tokens_add(h->auth, "alice", (const uint8_t *)"tok-alice", 9, ALICE, 0, &err),
        FC_OK);
    fc_model m = FC_MODEL_INIT;
    uint64_t shape[2] = {2, 3};
    float w[6] = {1, 2, 3, 4, 5, 6};
    assert_int_equal(fc_model_add(&m, "w", FC_DTYPE_F32, 2, shape, w, &err), FC_OK);
    assert_int_equal(fc_stream_model_sha256(&m, h->model_sha, &err), FC_OK);
    assert_int_equal(sess_mem_model_new(MODEL_VERSION, &m, &h->model, &err), FC_OK);
    fc_model_free(&m);
    h->model_specs[0] =
        (fc_tensor_spec){.name = "w", .dtype = FC_DTYPE_F32, .ndim = 2, .shape = {2, 3}};
    h->round_specs[0] = h->model_specs[0];
    sess_config cfg = {
        .loop = &h->loop,
        .budget = h->budget,
        .auth = sess_auth_tokens_check,
        .auth_ctx = h->auth,
        .round = round_cb,
        .round_ctx = h,
        .sink = sink_cb,
        .sink_ctx = h,
        .reject = reject_cb,
        .reject_ctx = h,
        .max_num_examples = 1000,
        .max_update_norm = 1.0, /* a proposal is weights: the delta bound must not apply */
        .heartbeat_interval_ms = heartbeat_ms,
        .eval = with_eval ? eval_cb : NULL,
        .eval_ctx = h,
        .peer_error = peer_error_cb,
        .peer_error_ctx = h,
    };
    sess_mem_model_source(h->model, &cfg.models);
    assert_int_equal(sess_server_new(&cfg, &h->sv, &err), FC_OK);
    net_listener_config lc;
    memset(&lc, 0, sizeof lc);
    lc.name = "client";
    lc.host = "127.0.0.1";
    lc.tls.cert_file = pki.server_cert;
    lc.tls.key_file = pki.server_key;
    lc.tls.ca_file = pki.ca_cert;
    lc.tls.mtls = NET_MTLS_OPTIONAL;
    net_limits_default(&lc.limits);
    lc.limits.close_linger_ms = 500;
    sess_net_callbacks(&lc.cb);
    lc.user = h->sv;
    if (net_listener_open(&h->loop, &lc, &h->l, &err) != FC_OK)
        fail_msg("listener: %s", fc_error_text(&err));
    h->port = net_listener_port(h->l);
}

static int pred_no_sessions(harness *h, void *arg) {
    (void)arg;
    return sess_server_count(h->sv) == 0 && net_listener_count(h->l) == 0;
}
static int pred_closed(harness *h, void *arg) {
    (void)arg;
    return h->closed;
}
static int pred_authenticated(harness *h, void *arg) {
    (void)arg;
    return sess_find(h->sv, ALICE) != NULL && sess_get_state(sess_find(h->sv, ALICE)) == SESS_READY;
}
static int pred_sinks(harness *h, void *arg) {
    (void)arg;
    return h->sinks > 0;
}
static int pred_peer_error(harness *h, void *arg) {
    (void)arg;
    return h->peer_errors > 0;
}
static void listener_closed_cb(void *arg) { ((harness *)arg)->closed = 1; }
static void close_cb(uv_handle_t *hd) { (void)hd; }

static void h_finish(harness *h) {
    net_close_all(h->l, FC_ERR_CLOSED, "test finished");
    net_listener_close(h->l, listener_closed_cb, h);
    h_run_until(h, pred_closed, NULL);
    assert_int_equal(sess_budget_memory_used(h->budget), 0);
    sess_server_free(h->sv);
    sess_budget_free(h->budget);
    sess_auth_tokens_free(h->auth);
    sess_mem_model_free(h->model);
    uv_close((uv_handle_t *)&h->wake, close_cb);
    uv_close((uv_handle_t *)&h->watchdog, close_cb);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&h->loop), 0);
    free(h->sk.bytes);
}

static void send_task(harness *h, fc_task_kind kind, uint64_t round) {
    sess *s = sess_find(h->sv, ALICE);
    assert_non_null(s);
    fc_wire_task_args ta = {.round = round,
                            .kind = kind,
                            .model_version = MODEL_VERSION,
                            .tensors = h->model_specs,
                            .n_tensors = 1,
                            .model_sha256 = h->model_sha,
                            .model_bytes = 24};
    fc_error err = {0};
    assert_int_equal(sess_send_task(s, &ta, &err), FC_OK);
}

/* The proposal Task: round 0, train, model version 0, no tensors (SHA-256 of no bytes). */
static void send_proposal_task(harness *h) {
    sess *s = sess_find(h->sv, ALICE);
    assert_non_null(s);
    uint8_t empty_sha[FC_SHA256_BYTES];
    fc_model none = FC_MODEL_INIT;
    fc_error err = {0};
    assert_int_equal(fc_stream_model_sha256(&none, empty_sha, &err), FC_OK);
    fc_wire_task_args ta = {
        .round = 0, .kind = FC_TASK_TRAIN, .model_version = 0, .model_sha256 = empty_sha};
    assert_int_equal(sess_send_task(s, &ta, &err), FC_OK);
}

/* ---- client threads ---- */

typedef struct job {
    harness *h;
    void (*fn)(struct job *j);
    atomic_int done;
    atomic_int waited; /* the SDK client's first wait ended */
    int iarg;
    char fail[1024];
    /* SDK results */
    fc_status st[8];
    char err[8][512];
    uint64_t u[8];
    int n;
    /* raw results */
    uint32_t code[16];
    int fatal[16];
    uint64_t ref[16];
    char msg[16][512];
    int body[16];
    int nr;
} job;

#define CHECK(j, cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            snprintf((j)->fail, sizeof(j)->fail, __VA_ARGS__);                                     \
            return 0;                                                                              \
        }                                                                                          \
    } while (0)

static void *job_main(void *arg) {
    job *j = arg;
    j->fn(j);
    atomic_store(&j->done, 1);
    uv_async_send(&j->h->wake);
    return NULL;
}

static int pred_job(harness *h, void *arg) {
    (void)h;
    return atomic_load(&((job *)arg)->done);
}
static int pred_waited(harness *h, void *arg) {
    (void)h;
    return atomic_load(&((job *)arg)->waited) || atomic_load(&((job *)arg)->done);
}

static void job_start(harness *h, job *j, pthread_t *th) {
    j->h = h;
    assert_int_equal(pthread_create(th, NULL, job_main, j), 0);
}

static void job_end(harness *h, job *j, pthread_t th) {
    h_run_until(h, pred_job, j);
    pthread_join(th, NULL);
    h_run_until(h, pred_no_sessions, NULL);
    if (j->fail[0])
        fail_msg("client: %s", j->fail);
}

/* Records a call's status and fc_client_error in slot j->n. */
static void note(job *j, fc_client *c, fc_status st) {
    if (j->n >= 8)
        return;
    j->st[j->n] = st;
    snprintf(j->err[j->n], sizeof j->err[0], "%s", c ? fc_client_error(c) : "");
    j->n++;
}

static fc_client *sdk_open(job *j) {
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", j->h->port);
    fc_client_config cfg = FC_CLIENT_CONFIG_INIT;
    cfg.server = addr;
    cfg.ca_file = pki.ca_cert;
    cfg.token = "tok-alice";
    cfg.client_name = "alice";
    cfg.io_timeout_ms = 10000;
    cfg.reconnect_max_attempts = -1;
    fc_client *c = NULL;
    fc_status st = fc_client_open(&cfg, &c);
    if (st != FC_OK) {
        snprintf(j->fail, sizeof j->fail, "open: %s", c ? fc_client_error(c) : "no memory");
        fc_client_close(c);
        return NULL;
    }
    return c;
}

/* ---- raw frame client ---- */

typedef rawcl cl;

static int login(job *j, cl *c) {
    CHECK(j, rawcl_open(c, j->h->port, &pki, 0), "TLS connect failed");
    fc_wire_msg m;
    fc_error err = {0};
    fc_wire_hello_args a = {
        .client_name = "alice", .token = {(const uint8_t *)"tok-alice", 9}, .software = "test"};
    CHECK(j, fc_wire_hello(&m, 0, &a, &err) == FC_OK && rawcl_send(c, &m), "send Hello");
    fc_envelope *e = rawcl_recv(c);
    CHECK(j, e, "no Welcome");
    int ok = e->body_case == FEDCOORD__V1__ENVELOPE__BODY_WELCOME;
    if (ok)
        j->u[7] = e->welcome->heartbeat_interval_ms;
    fc_envelope_free(e);
    CHECK(j, ok, "first answer is not a Welcome");
    return 1;
}

/* Reads the next frame other than a Heartbeat and records it in slot j->nr: body, and for an
 * Error its code, fatal flag, ref_seq and message; for an Ack its ref_seq. */
static int record_answer(job *j, cl *c) {
    fc_envelope *e;
    for (;;) {
        e = rawcl_recv(c);
        CHECK(j, e, "connection ended instead of an answer (slot %d)", j->nr);
        if (e->body_case != FEDCOORD__V1__ENVELOPE__BODY_HEARTBEAT)
            break;
        fc_envelope_free(e);
    }
    CHECK(j, j->nr < 16, "too many answers");
    int k = j->nr++;
    j->body[k] = (int)e->body_case;
    if (e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ERROR) {
        j->code[k] = e->error->code;
        j->fatal[k] = e->error->fatal;
        j->ref[k] = e->error->ref_seq;
        snprintf(j->msg[k], sizeof j->msg[0], "%s", e->error->message ? e->error->message : "");
    } else if (e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ACK) {
        j->ref[k] = e->ack->ref_seq;
    }
    fc_envelope_free(e);
    return 1;
}

/* ---- evaluation results ---- */

/* SDK: next task (an evaluation), report two metrics, close. */
static void c_sdk_eval(job *j) {
    fc_client *c = sdk_open(j);
    if (!c)
        return;
    fc_task *t = NULL;
    fc_status st = fc_client_next_task(c, 10000, &t);
    note(j, c, st);
    if (st == FC_OK && t) {
        j->u[0] = fc_task_round(t);
        j->u[1] = (uint64_t)fc_task_get_kind(t);
        fc_metric m[2] = {{"accuracy", 0.75}, {"loss", 0.5}};
        note(j, c, fc_client_report_eval(c, t, 50, m, 2));
        /* the session survives a refused report: a second one gets the same answer */
        note(j, c, fc_client_report_eval(c, t, 60, m, 1));
    }
    fc_task_free(t);
    fc_client_close(c);
}

static void run_sdk_eval(harness *h, job *j) {
    pthread_t th;
    j->fn = c_sdk_eval;
    job_start(h, j, &th);
    h_run_until(h, pred_authenticated, NULL);
    send_task(h, FC_TASK_EVALUATE, EVAL_ROUND);
    job_end(h, j, th);
    assert_int_equal(j->n, 3);
    assert_int_equal(j->st[0], FC_OK);
    assert_int_equal(j->u[0], EVAL_ROUND);
    assert_int_equal(j->u[1], FC_TASK_TYPE_EVALUATE);
}

static void test_eval_result_is_acked_and_reaches_the_callback(void **state) {
    (void)state;
    harness h;
    h_start(&h, 0, 1);
    job j;
    memset(&j, 0, sizeof j);
    run_sdk_eval(&h, &j);
    assert_int_equal(j.st[1], FC_OK);
    assert_int_equal(j.st[2], FC_OK);
    assert_int_equal(h.evals, 2);
    /* the second report is the last one the callback saw */
    assert_int_equal(h.eval_client, ALICE);
    assert_int_equal(h.eval_round, EVAL_ROUND);
    assert_int_equal(h.eval_version, MODEL_VERSION);
    assert_int_equal(h.eval_examples, 60);
    assert_int_equal(h.eval_n, 1);
    assert_string_equal(h.eval_names[0], "accuracy");
    assert_true(h.eval_values[0] == 0.75);
    h_finish(&h);
}

static void test_eval_result_refused_by_the_daemon_surfaces_its_error_in_the_sdk(void **state) {
    (void)state;
    harness h;
    h_start(&h, 0, 1);
    h.eval_answer = FC_ERR_STATE;
    h.eval_answer_msg = "round 9 no longer takes evaluation results";
    job j;
    memset(&j, 0, sizeof j);
    run_sdk_eval(&h, &j);
    for (int k = 1; k <= 2; k++) {
        assert_int_equal(j.st[k], FC_ERR_STATE);
        if (!strstr(j.err[k], "WRONG_STATE") ||
            !strstr(j.err[k], "round 9 no longer takes evaluation results"))
            fail_msg("report %d: fc_client_error is '%s'", k, j.err[k]);
    }
    assert_int_equal(h.evals, 2);
    assert_int_equal(h.eval_n, 1);
    h_finish(&h);
}

static void test_eval_result_without_eval_callback_is_unsupported(void **state) {
    (void)state;
    harness h;
    h_start(&h, 0, 0);
    job j;
    memset(&j, 0, sizeof j);
    run_sdk_eval(&h, &j);
    assert_int_equal(j.st[1], FC_ERR_UNSUPPORTED);
    assert_non_null(strstr(j.err[1], "does not collect evaluation results"));
    assert_int_equal(h.evals, 0);
    h_finish(&h);
}

/* Raw: bad reports, each answered by a non-fatal Error on the same connection, then a good one
 * answered by an Ack. iarg selects nothing; the cases are in order:
 *   0: 33 metrics                      LIMIT_EXCEEDED
 *   1: a 64-byte metric name           LIMIT_EXCEEDED
 *   2: num_examples 5000 (max 1000)    UPDATE_REJECTED
 *   3: metric "loss" = NaN             NON_FINITE
 *   4: num_examples 0                  INVALID_ARGUMENT
 *   5: a valid report                  Ack */
static int c_raw_evals(job *j) {
    cl c;
    if (!login(j, &c))
        return 0;
    for (int k = 0; k < 6; k++) {
        fc_wire_metric ms[33];
        char names[33][16];
        size_t n = 1;
        uint64_t examples = 10;
        char longname[65];
        memset(longname, 'a', 64);
        longname[64] = '\0';
        ms[0].name = "loss";
        ms[0].value = 0.25;
        if (k == 0) {
            n = 33;
            for (size_t i = 0; i < n; i++) {
                snprintf(names[i], sizeof names[i], "m%zu", i);
                ms[i].name = names[i];
                ms[i].value = (double)i;
            }
        } else if (k == 1) {
            ms[0].name = longname;
        } else if (k == 2) {
            examples = 5000;
        }
        fc_wire_msg m;
        fc_error err = {0};
        CHECK(j,
              fc_wire_eval_result(&m, 0, EVAL_ROUND, MODEL_VERSION, examples, ms, n, &err) == FC_OK,
              "build EvalResult %d: %s", k, err.msg);
        if (k == 3)
            m.body.eval_result.metrics[0]->value = NAN; /* what a broken peer could send */
        if (k == 4)
            m.body.eval_result.num_examples = 0;
        CHECK(j, rawcl_send(&c, &m), "send EvalResult %d", k);
        j->u[k] = c.seq;
        if (!record_answer(j, &c))
            return 0;
    }
    fc_wire_msg m;
    fc_error err = {0};
    fc_wire_bye(&m, 0, "done", &err);
    rawcl_send(&c, &m);
    rawcl_free(&c);
    return 1;
}
static void c_raw_evals_v(job *j) { c_raw_evals(j); }

static void test_bad_eval_results_get_non_fatal_errors_naming_the_problem(void **state) {
    (void)state;
    harness h;
    h_start(&h, 0, 1);
    job j;
    memset(&j, 0, sizeof j);
    j.fn = c_raw_evals_v;
    pthread_t th;
    job_start(&h, &j, &th);
    job_end(&h, &j, th);
    assert_int_equal(j.nr, 6);
    static const uint32_t want_code[5] = {11, 11, 46, 45, 30};
    static const char *const want_text[5] = {"33 metrics, at most 32", "at most 63", "5000",
                                             "'loss'", "num_examples is 0"};
    for (int k = 0; k < 5; k++) {
        assert_int_equal(j.body[k], FEDCOORD__V1__ENVELOPE__BODY_ERROR);
        if (j.code[k] != want_code[k] || j.fatal[k] || j.ref[k] != j.u[k] ||
            !strstr(j.msg[k], want_text[k]))
            fail_msg("case %d: code %u fatal %d ref %llu (want %llu) message '%s'", k, j.code[k],
                     j.fatal[k], (unsigned long long)j.ref[k], (unsigned long long)j.u[k],
                     j.msg[k]);
    }
    assert_int_equal(j.body[5], FEDCOORD__V1__ENVELOPE__BODY_ACK);
    assert_int_equal(j.ref[5], j.u[5]);
    assert_int_equal(h.evals, 1); /* only the valid report reached the daemon */
    assert_int_equal(h.eval_examples, 10);
    h_finish(&h);
}

/* ---- server heartbeats ---- */

static double elapsed_ms(const struct timespec *a) {
    struct timespec b;
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (double)(b.tv_sec - a->tv_sec) * 1000.0 + (double)(b.tv_nsec - a->tv_nsec) / 1e6;
}

/* Raw: log in, then stay silent and count the frames that arrive within 600 ms. */
static int c_silent(job *j) {
    cl c;
    if (!login(j, &c))
        return 0;
    struct timeval tv = {.tv_sec = 0, .tv_usec = 50 * 1000};
    setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (elapsed_ms(&t0) < 600) {
        fc_envelope *e = rawcl_recv(&c);
        if (!e) { /* the 50 ms read timeout; a closed connection is seen below */
            if (SSL_get_error(c.ssl, -1) == SSL_ERROR_ZERO_RETURN)
                break;
            ERR_clear_error();
            continue;
        }
        if (e->body_case == FEDCOORD__V1__ENVELOPE__BODY_HEARTBEAT)
            j->u[0]++;
        else
            j->u[1]++;
        fc_envelope_free(e);
    }
    rawcl_free(&c);
    return 1;
}
static void c_silent_v(job *j) { c_silent(j); }

static void test_silent_client_receives_heartbeats_at_the_announced_interval(void **state) {
    (void)state;
    harness h;
    h_start(&h, 100, 0);
    job j;
    memset(&j, 0, sizeof j);
    j.fn = c_silent_v;
    pthread_t th;
    job_start(&h, &j, &th);
    job_end(&h, &j, th);
    assert_int_equal(j.u[7], 100); /* Welcome announced the interval */
    if (j.u[0] < 2)
        fail_msg("%llu heartbeats within 600 ms at a 100 ms interval", (unsigned long long)j.u[0]);
    assert_true(j.u[0] <= 12); /* not a flood: at most one per tick (25 ms) could ever come */
    assert_int_equal(j.u[1], 0);
    assert_true(sess_server_heartbeats(h.sv) >= j.u[0]);
    h_finish(&h);
}

/* SDK: a first wait times out while the server sends heartbeats (they are absorbed silently,
 * the session stays up), a second wait gets the task sent afterwards. */
static void c_sdk_wait(job *j) {
    fc_client *c = sdk_open(j);
    if (!c)
        return;
    fc_task *t = NULL;
    note(j, c, fc_client_next_task(c, 450, &t));
    fc_task_free(t);
    t = NULL;
    atomic_store(&j->waited, 1);
    uv_async_send(&j->h->wake);
    fc_status st = fc_client_next_task(c, 10000, &t);
    note(j, c, st);
    if (st == FC_OK && t)
        j->u[0] = fc_task_round(t);
    fc_task_free(t);
    fc_client_close(c);
}

static void test_sdk_absorbs_server_heartbeats_while_waiting(void **state) {
    (void)state;
    harness h;
    h_start(&h, 100, 0);
    job j;
    memset(&j, 0, sizeof j);
    j.fn = c_sdk_wait;
    pthread_t th;
    job_start(&h, &j, &th);
    h_run_until(&h, pred_authenticated, NULL);
    h_run_until(&h, pred_waited, &j);
    uint64_t beats = sess_server_heartbeats(h.sv);
    uint64_t conns = sess_server_count(h.sv);
    if (sess_find(h.sv, ALICE))
        send_task(&h, FC_TASK_EVALUATE, EVAL_ROUND);
    job_end(&h, &j, th);
    assert_int_equal(j.st[0], FC_ERR_TIMEOUT);
    assert_int_equal(j.st[1], FC_OK);
    assert_int_equal(j.u[0], EVAL_ROUND);
    assert_int_equal(conns, 1);
    if (beats < 2)
        fail_msg("the server sent %llu heartbeats during a 450 ms wait at 100 ms",
                 (unsigned long long)beats);
    h_finish(&h);
}

/* ---- initial model proposal ---- */

static const float INIT_W[6] = {0.5f, -1.25f, 2, 3.75f, -0.125f, 8};
static const uint16_t INIT_B[3] = {0x3f80, 0xbf00, 0x4040}; /* bf16 1.0, -0.5, 3.0 */
static const double INIT_S = -6.5;

/* SDK: optional argument checks, then (iarg 1) an initial model, then wait for the next task
 * (the server ends with Bye once it has what it wanted). */
static void c_sdk_propose(job *j) {
    fc_client *c = sdk_open(j);
    if (!c)
        return;
    uint64_t sw[2] = {2, 3}, sb[1] = {3};
    fc_tensor_desc good[3] = {{"enc.w", FC_DTYPE_F32, 2, sw, INIT_W},
                              {"enc.b", FC_DTYPE_BF16, 1, sb, INIT_B},
                              {"scale", FC_DTYPE_F64, 0, NULL, &INIT_S}};
    if (j->iarg == 1) {
        /* refused descriptions: duplicate name, unknown dtype, NULL data, 9 dimensions */
        fc_tensor_desc dup[2] = {good[0], good[0]};
        note(j, c, fc_client_set_initial_model(c, 2, dup));
        fc_tensor_desc bad = good[1];
        bad.dtype = (fc_dtype)9;
        note(j, c, fc_client_set_initial_model(c, 1, &bad));
        bad = good[0];
        bad.data = NULL;
        note(j, c, fc_client_set_initial_model(c, 1, &bad));
        uint64_t s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
        bad.ndim = 9;
        bad.shape = s9;
        bad.data = INIT_W;
        note(j, c, fc_client_set_initial_model(c, 1, &bad));
        note(j, c, fc_client_set_initial_model(c, 3, good));
    } else if (j->iarg == 2) { /* a NaN the server must refuse */
        float w_nan[6];
        memcpy(w_nan, INIT_W, sizeof w_nan);
        w_nan[4] = NAN;
        fc_tensor_desc d = good[0];
        d.data = w_nan;
        note(j, c, fc_client_set_initial_model(c, 1, &d));
    }
    fc_task *t = NULL;
    fc_status st = fc_client_next_task(c, 15000, &t);
    note(j, c, st);
    j->u[0] = t != NULL;
    fc_task_free(t);
    fc_client_close(c);
}

static void test_sdk_proposes_its_initial_model_and_the_sink_gets_exact_tensors(void **state) {
    (void)state;
    harness h;
    h_start(&h, 0, 0);
    h.proposal = 1;
    job j;
    memset(&j, 0, sizeof j);
    j.fn = c_sdk_propose;
    j.iarg = 1;
    pthread_t th;
    job_start(&h, &j, &th);
    h_run_until(&h, pred_authenticated, NULL);
    send_proposal_task(&h);
    h_run_until(&h, pred_sinks, NULL);
    sess_close(sess_find(h.sv, ALICE), FC_OK, "training finished");
    job_end(&h, &j, th);
    /* argument checks */
    assert_int_equal(j.n, 6);
    assert_int_equal(j.st[0], FC_ERR_EXISTS);
    assert_non_null(strstr(j.err[0], "enc.w"));
    assert_int_equal(j.st[1], FC_ERR_DTYPE);
    assert_non_null(strstr(j.err[1], "enc.b"));
    assert_int_equal(j.st[2], FC_ERR_INVALID);
    assert_non_null(strstr(j.err[2], "data is NULL"));
    assert_int_equal(j.st[3], FC_ERR_INVALID);
    assert_int_equal(j.st[4], FC_OK);
    /* the proposal was answered inside next_task, which then saw the Bye ("done") */
    assert_int_equal(j.st[5], FC_OK);
    assert_int_equal(j.u[0], 0);
    /* the sink got exactly the proposed tensors, as weights for round 0 */
    assert_int_equal(h.sinks, 1);
    assert_int_equal(h.rejects, 0);
    const sunk *k = &h.sk;
    assert_int_equal(k->client, ALICE);
    assert_int_equal(k->round, 0);
    assert_int_equal(k->base, 0);
    assert_int_equal(k->is_delta, 0);
    assert_int_equal(k->examples, 1);
    assert_int_equal(k->n, 3);
    assert_string_equal(k->names[0], "enc.w");
    assert_string_equal(k->names[1], "enc.b");
    assert_string_equal(k->names[2], "scale");
    assert_int_equal(k->dtype[0], FC_DTYPE_F32);
    assert_int_equal(k->dtype[1], FC_DTYPE_BF16);
    assert_int_equal(k->dtype[2], FC_DTYPE_F64);
    assert_int_equal(k->ndim[0], 2);
    assert_int_equal(k->shape[0][0], 2);
    assert_int_equal(k->shape[0][1], 3);
    assert_int_equal(k->ndim[1], 1);
    assert_int_equal(k->shape[1][0], 3);
    assert_int_equal(k->ndim[2], 0);
    assert_int_equal(k->nbytes, 24 + 6 + 8);
    assert_memory_equal(k->bytes, INIT_W, 24);
    /* bf16 little-endian: 0x3f80 -> 80 3f */
    static const uint8_t b_le[6] = {0x80, 0x3f, 0x00, 0xbf, 0x40, 0x40};
    assert_memory_equal(k->bytes + 24, b_le, 6);
    assert_memory_equal(k->bytes + 30, &INIT_S, 8);
    h_finish(&h);
}

static void test_refused_proposal_is_returned_by_next_task_with_the_server_reason(void **state) {
    (void)state;
    harness h;
    h_start(&h, 0, 0);
    h.proposal = 1;
    job j;
    memset(&j, 0, sizeof j);
    j.fn = c_sdk_propose;
    j.iarg = 2;
    pthread_t th;
    job_start(&h, &j, &th);
    h_run_until(&h, pred_authenticated, NULL);
    send_proposal_task(&h);
    job_end(&h, &j, th);
    assert_int_equal(j.n, 2);
    assert_int_equal(j.st[0], FC_OK);
    assert_int_equal(j.st[1], FC_ERR_NON_FINITE);
    if (!strstr(j.err[1], "proposing the initial model") || !strstr(j.err[1], "NON_FINITE") ||
        !strstr(j.err[1], "'enc.w'"))
        fail_msg("fc_client_error is '%s'", j.err[1]);
    assert_int_equal(j.u[0], 0);
    assert_int_equal(h.sinks, 0);
    assert_int_equal(h.rejects, 1);
    assert_int_equal(h.reject_st, FC_ERR_NON_FINITE);
    h_finish(&h);
}

static void test_sdk_without_initial_model_answers_unsupported_and_keeps_waiting(void **state) {
    (void)state;
    harness h;
    h_start(&h, 0, 0);
    h.proposal = 1;
    job j;
    memset(&j, 0, sizeof j);
    j.fn = c_sdk_propose;
    j.iarg = 0;
    pthread_t th;
    job_start(&h, &j, &th);
    h_run_until(&h, pred_authenticated, NULL);
    send_proposal_task(&h);
    h_run_until(&h, pred_peer_error, NULL);
    /* the client is still in next_task, on the same session */
    assert_non_null(sess_find(h.sv, ALICE));
    assert_int_equal(atomic_load(&j.done), 0);
    send_task(&h, FC_TASK_EVALUATE, EVAL_ROUND);
    job_end(&h, &j, th);
    assert_int_equal(h.peer_st, FC_ERR_UNSUPPORTED);
    assert_int_equal(h.peer_fatal, 0);
    assert_int_equal(h.peer_ref, 2); /* Welcome 1, the proposal Task 2 */
    assert_string_equal(h.peer_msg, "this client has no initial model to propose");
    assert_int_equal(h.sinks, 0);
    assert_int_equal(j.n, 1);
    assert_int_equal(j.st[0], FC_OK);
    assert_int_equal(j.u[0], 1); /* the user saw the real task only */
    h_finish(&h);
}

/* Raw: UpdateBegin for round 0 with a layout of the client's choice.
 *   1: is_delta true                    INVALID_ARGUMENT (non-fatal)
 *   2: the same as weights              Ack{0}, then chunks and UpdateEnd: Ack, sink */
static int c_raw_proposal(job *j) {
    cl c;
    if (!login(j, &c))
        return 0;
    fc_tensor_spec sp[1] = {{.name = "emb", .dtype = FC_DTYPE_F32, .ndim = 1, .shape = {4}}};
    float data[4] = {1, -2, 30, 400}; /* L2 norm far above the 1.0 delta bound */
    for (int delta = 1; delta >= 0; delta--) {
        fc_wire_msg m;
        fc_error err = {0};
        fc_wire_update_begin_args a = {.round = 0,
                                       .base_version = 0,
                                       .tensors = sp,
                                       .n_tensors = 1,
                                       .total_bytes = 16,
                                       .is_delta = delta};
        CHECK(j, fc_wire_update_begin(&m, 0, &a, &err) == FC_OK && rawcl_send(&c, &m),
              "send UpdateBegin");
        j->u[j->nr] = c.seq;
        if (!record_answer(j, &c))
            return 0;
    }
    CHECK(j, rawcl_send_chunk(&c, 0, 0, data, sizeof data), "send chunk");
    fc_model mm = FC_MODEL_INIT;
    uint8_t sha[FC_SHA256_BYTES];
    fc_error err = {0};
    uint64_t shape[1] = {4};
    CHECK(j, fc_model_add(&mm, "emb", FC_DTYPE_F32, 1, shape, data, &err) == FC_OK, "model");
    fc_stream_model_sha256(&mm, sha, &err);
    fc_model_free(&mm);
    fc_wire_msg m;
    CHECK(j, fc_wire_update_end(&m, 0, sha, 1, NULL, 0, &err) == FC_OK && rawcl_send(&c, &m),
          "send UpdateEnd");
    j->u[j->nr] = c.seq;
    if (!record_answer(j, &c))
        return 0;
    fc_wire_bye(&m, 0, "done", &err);
    rawcl_send(&c, &m);
    rawcl_free(&c);
    return 1;
}
static void c_raw_proposal_v(job *j) { c_raw_proposal(j); }

static void test_delta_proposal_is_refused_and_weights_are_accepted(void **state) {
    (void)state;
    harness h;
    h_start(&h, 0, 0);
    h.proposal = 1;
    job j;
    memset(&j, 0, sizeof j);
    j.fn = c_raw_proposal_v;
    pthread_t th;
    job_start(&h, &j, &th);
    job_end(&h, &j, th);
    assert_int_equal(j.nr, 3);
    assert_int_equal(j.body[0], FEDCOORD__V1__ENVELOPE__BODY_ERROR);
    assert_int_equal(j.code[0], 30);
    assert_false(j.fatal[0]);
    assert_int_equal(j.ref[0], j.u[0]);
    assert_non_null(strstr(j.msg[0], "is a delta"));
    assert_int_equal(j.body[1], FEDCOORD__V1__ENVELOPE__BODY_ACK);
    assert_int_equal(j.ref[1], j.u[1]);
    assert_int_equal(j.body[2], FEDCOORD__V1__ENVELOPE__BODY_ACK);
    assert_int_equal(j.ref[2], j.u[2]);
    assert_int_equal(h.rejects, 1);
    assert_int_equal(h.reject_st, FC_ERR_INVALID);
    assert_int_equal(h.sinks, 1);
    assert_int_equal(h.sk.round, 0);
    assert_int_equal(h.sk.is_delta, 0);
    assert_int_equal(h.sk.n, 1);
    assert_string_equal(h.sk.names[0], "emb");
    float want[4] = {1, -2, 30, 400};
    assert_int_equal(h.sk.nbytes, 16);
    assert_memory_equal(h.sk.bytes, want, 16);
    h_finish(&h);
}

/* An ordinary round still checks the layout: a client proposing its own layout outside round 0
 * is refused as before. */
static int c_raw_wrong_layout(job *j) {
    cl c;
    if (!login(j, &c))
        return 0;
    fc_tensor_spec sp[1] = {{.name = "emb", .dtype = FC_DTYPE_F32, .ndim = 1, .shape = {4}}};
    fc_wire_msg m;
    fc_error err = {0};
    fc_wire_update_begin_args a = {.round = 3,
                                   .base_version = MODEL_VERSION,
                                   .tensors = sp,
                                   .n_tensors = 1,
                                   .total_bytes = 16,
                                   .is_delta = 1};
    CHECK(j, fc_wire_update_begin(&m, 0, &a, &err) == FC_OK && rawcl_send(&c, &m), "send UpdateBegin");
    if (!record_answer(j, &c))
        return 0;
    fc_wire_bye(&m, 0, "done", &err);
    rawcl_send(&c, &m);
    rawcl_free(&c);
    return 1;
}
static void c_raw_wrong_layout_v(job *j) { c_raw_wrong_layout(j); }

static void test_regular_round_still_requires_the_round_layout(void **state) {
    (void)state;
    harness h;
    h_start(&h, 0, 0);
    job j;
    memset(&j, 0, sizeof j);
    j.fn = c_raw_wrong_layout_v;
    pthread_t th;
    job_start(&h, &j, &th);
    job_end(&h, &j, th);
    assert_int_equal(j.nr, 1);
    assert_int_equal(j.code[0], 42); /* SHAPE_MISMATCH */
    assert_non_null(strstr(j.msg[0], "named 'emb', round expects 'w'"));
    assert_int_equal(h.sinks, 0);
    h_finish(&h);
}

/* fc_client_set_initial_model under every allocation failure: a clean FC_ERR_NOMEM each time
 * (ASan's leak check sees any leak), and the earlier initial model stays in place. Needs no
 * server: a client handle exists even when the connection was refused. */
static void test_set_initial_model_survives_every_allocation_failure(void **state) {
    (void)state;
    fc_client_config cfg = FC_CLIENT_CONFIG_INIT;
    cfg.server = "127.0.0.1:1"; /* refused */
    cfg.ca_file = pki.ca_cert;
    cfg.token = "t";
    cfg.client_name = "n";
    cfg.reconnect_max_attempts = -1;
    fc_client *c = NULL;
    assert_int_equal(fc_client_open(&cfg, &c), FC_ERR_CLOSED);
    assert_non_null(c);
    uint64_t sw[2] = {2, 3}, sb[1] = {3};
    fc_tensor_desc good[3] = {{"enc.w", FC_DTYPE_F32, 2, sw, INIT_W},
                              {"enc.b", FC_DTYPE_BF16, 1, sb, INIT_B},
                              {"scale", FC_DTYPE_F64, 0, NULL, &INIT_S}};
    assert_int_equal(fc_client_set_initial_model(c, 1, good), FC_OK);
    int completed = 0;
    for (long n = 0; n < 200 && !completed; n++) {
        fc_alloc_fail_after(n);
        fc_status st = fc_client_set_initial_model(c, 3, good);
        int injected = fc_alloc_failures() != 0;
        fc_alloc_fail_after(-1);
        if (st == FC_ERR_NOMEM) {
            assert_true(injected);
            assert_non_null(strstr(fc_client_error(c), "memory"));
        } else {
            assert_int_equal(st, FC_OK);
            completed = !injected;
        }
    }
    assert_true(completed);
    /* clearing, and the argument rules that need no tensor */
    assert_int_equal(fc_client_set_initial_model(c, 0, NULL), FC_OK);
    assert_int_equal(fc_client_set_initial_model(c, 1, NULL), FC_ERR_INVALID);
    assert_int_equal(fc_client_set_initial_model(c, 0, good), FC_ERR_INVALID);
    assert_int_equal(fc_client_set_initial_model(NULL, 1, good), FC_ERR_INVALID);
    fc_client_close(c);
}

static int group_setup(void **state) {
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    fc_error err = {0};
    if (tlsgen_create(NULL, &pki, &err) != FC_OK) {
        fprintf(stderr, "tlsgen: %s\n", fc_error_text(&err));
        return -1;
    }
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eval_result_is_acked_and_reaches_the_callback),
        cmocka_unit_test(test_eval_result_refused_by_the_daemon_surfaces_its_error_in_the_sdk),
        cmocka_unit_test(test_eval_result_without_eval_callback_is_unsupported),
        cmocka_unit_test(test_bad_eval_results_get_non_fatal_errors_naming_the_problem),
        cmocka_unit_test(test_silent_client_receives_heartbeats_at_the_announced_interval),
        cmocka_unit_test(test_sdk_absorbs_server_heartbeats_while_waiting),
        cmocka_unit_test(test_sdk_proposes_its_initial_model_and_the_sink_gets_exact_tensors),
        cmocka_unit_test(test_refused_proposal_is_returned_by_next_task_with_the_server_reason),
        cmocka_unit_test(test_sdk_without_initial_model_answers_unsupported_and_keeps_waiting),
        cmocka_unit_test(test_delta_proposal_is_refused_and_weights_are_accepted),
        cmocka_unit_test(test_regular_round_still_requires_the_round_layout),
        cmocka_unit_test(test_set_initial_model_survives_every_allocation_failure),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
