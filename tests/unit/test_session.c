/* test_session.c: the daemon's session layer over REAL TLS on loopback.
 *
 * The libuv loop, net and the sessions run in the test (main) thread. Each test's peer is a
 * blocking OpenSSL client in a pthread that speaks frames with the real codec (proto/frame.h,
 * proto/wire.h). Client threads never call cmocka: they record what they saw (and the first
 * thing that went wrong) in a job, and the main thread asserts afterwards. The watchdog only
 * turns a hang into a failure; no test depends on timing.
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
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "core/alloc.h"
#include "proto/frame.h"
#include "proto/stream.h"
#include "proto/wire.h"
#include "server/session.h"
#include "tests/lib/testutil.h"
#include "tests/lib/rawcl.h"
#include "tests/lib/tlsgen.h"

static tlsgen_pki pki;

#define WATCHDOG_MS 20000
#define ROUND 12
#define BASE 3

/* ---- server side: harness and injected services ---- */

typedef struct received {
    int sinks;
    uint64_t sink_client, sink_examples, sink_round;
    size_t n_metrics;
    double metric0;
    uint8_t *bytes;
    uint64_t nbytes;
    uint64_t spill_at_sink, waiting_at_sink;
    int rejects;
    uint64_t reject_client;
    fc_status reject_st;
    char reject_reason[FC_ERROR_MSG_MAX];
    int evals;
    uint64_t eval_client, eval_round, eval_version, eval_examples;
    size_t eval_n;
    char eval_name0[64];
    double eval_value0;
} received;

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
    fc_tensor_spec round_specs[2];
    received rx;
} harness;

static fc_status round_cb(void *ctx, uint64_t client_id, sess_round_info *out, fc_error *err) {
    harness *h = ctx;
    (void)client_id, (void)err;
    out->round = ROUND;
    out->base_version = BASE;
    out->specs = h->round_specs;
    out->n_specs = 2;
    return FC_OK;
}

static void sink_cb(void *ctx, sess_update *u) {
    harness *h = ctx;
    received *r = &h->rx;
    r->sinks++;
    r->sink_client = u->client_id;
    r->sink_examples = u->num_examples;
    r->sink_round = u->round;
    r->n_metrics = u->n_metrics;
    r->metric0 = u->n_metrics ? u->metric_values[0] : 0;
    r->spill_at_sink = sess_budget_spill_used(h->budget);
    r->waiting_at_sink = sess_budget_waiting(h->budget);
    fc_model m = FC_MODEL_INIT;
    fc_error err = {0};
    if (fc_stage_view_model(u->stage, &m, &err) == FC_OK) {
        uint64_t total = fc_stage_total(u->stage);
        free(r->bytes);
        r->bytes = malloc(total);
        r->nbytes = 0;
        for (size_t i = 0; i < m.count; i++) {
            memcpy(r->bytes + r->nbytes, m.tensors[i].data, m.tensors[i].nbytes);
            r->nbytes += m.tensors[i].nbytes;
        }
        fc_model_free(&m);
    }
    sess_update_release(u);
}

static void reject_cb(void *ctx, uint64_t client_id, uint64_t round, fc_status st,
                      const char *reason) {
    harness *h = ctx;
    (void)round;
    h->rx.rejects++;
    h->rx.reject_client = client_id;
    h->rx.reject_st = st;
    snprintf(h->rx.reject_reason, sizeof h->rx.reject_reason, "%s", reason);
}

/* Accepts evaluations of round ROUND, version BASE; refuses others as the daemon would. */
static fc_status eval_cb(void *ctx, uint64_t client_id, uint64_t round, uint64_t model_version,
                         uint64_t num_examples, const char *const *names, const double *values,
                         size_t n, fc_error *err) {
    harness *h = ctx;
    received *r = &h->rx;
    if (round != ROUND)
        return fc_error_set(err, FC_ERR_STATE, "round %llu is not an open evaluation round",
                            (unsigned long long)round);
    r->evals++;
    r->eval_client = client_id;
    r->eval_round = round;
    r->eval_version = model_version;
    r->eval_examples = num_examples;
    r->eval_n = n;
    snprintf(r->eval_name0, sizeof r->eval_name0, "%s", n ? names[0] : "");
    r->eval_value0 = n ? values[0] : 0;
    return FC_OK;
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

/* Model: tensor "emb" f32 [512,1024] (2 MiB) and "head" f32 [300000]: 3.2 MB in 4 chunks+. */
#define EMB_N (512u * 1024u)
#define HEAD_N 300000u

static float model_value(size_t i) { return (float)((i * 2654435761u) % 1000003u) * 0.001f; }

typedef struct opts {
    uint64_t memory_limit;
    const char *spill_dir;
    uint64_t spill_limit;
    size_t high_water;
    uint64_t max_examples;
    uint64_t min_rate_bps, rate_window_ms;
    int no_resume; /* sess_config.resume_disabled */
} opts;

static void h_start(harness *h, const opts *o) {
    memset(h, 0, sizeof *h);
    fc_error err = {0};
    assert_int_equal(uv_loop_init(&h->loop), 0);
    assert_int_equal(uv_async_init(&h->loop, &h->wake, wake_cb), 0);
    assert_int_equal(uv_timer_init(&h->loop, &h->watchdog), 0);
    h->watchdog.data = h;
    assert_int_equal(
        sess_budget_new(&h->loop, o->memory_limit, o->spill_dir, o->spill_limit, &h->budget, &err),
        FC_OK);
    assert_int_equal(sess_auth_tokens_new(&h->auth, &err), FC_OK);
    assert_int_equal(
        sess_auth_tokens_add(h->auth, "alice", (const uint8_t *)"tok-alice", 9, 1, 0, &err), FC_OK);
    assert_int_equal(
        sess_auth_tokens_add(h->auth, "bob", (const uint8_t *)"tok-bob", 7, 2, 0, &err), FC_OK);
    assert_int_equal(
        sess_auth_tokens_add(h->auth, "client-1", (const uint8_t *)"unused", 6, 3, 1, &err), FC_OK);
    /* the model */
    fc_model m = FC_MODEL_INIT;
    uint64_t s1[2] = {512, 1024}, s2[1] = {HEAD_N};
    assert_int_equal(fc_model_add(&m, "emb", FC_DTYPE_F32, 2, s1, NULL, &err), FC_OK);
    assert_int_equal(fc_model_add(&m, "head", FC_DTYPE_F32, 1, s2, NULL, &err), FC_OK);
    float *a = m.tensors[0].data, *b = m.tensors[1].data;
    for (size_t i = 0; i < EMB_N; i++)
        a[i] = model_value(i);
    for (size_t i = 0; i < HEAD_N; i++)
        b[i] = model_value(EMB_N + i);
    assert_int_equal(sess_mem_model_new(7, &m, &h->model, &err), FC_OK);
    fc_model_free(&m);
    /* the round: fc1.weight f32 [64,64], fc1.bias f32 [64] */
    h->round_specs[0] =
        (fc_tensor_spec){.name = "fc1.weight", .dtype = FC_DTYPE_F32, .ndim = 2, .shape = {64, 64}};
    h->round_specs[1] =
        (fc_tensor_spec){.name = "fc1.bias", .dtype = FC_DTYPE_F32, .ndim = 1, .shape = {64}};
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
        .eval = eval_cb,
        .eval_ctx = h,
        .max_num_examples = o->max_examples ? o->max_examples : 1000,
        .ack_every_bytes = 4096,
        .resume_disabled = o->no_resume,
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
    if (o->high_water)
        lc.limits.output_high_water = o->high_water;
    if (o->min_rate_bps) {
        lc.limits.min_rate_bps = o->min_rate_bps;
        lc.limits.rate_window_ms = o->rate_window_ms;
    }
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
static void listener_closed_cb(void *arg) { ((harness *)arg)->closed = 1; }
static void close_cb(uv_handle_t *hd) { (void)hd; }

static void h_finish(harness *h) {
    net_close_all(h->l, FC_ERR_CLOSED, "test finished");
    net_listener_close(h->l, listener_closed_cb, h);
    h_run_until(h, pred_closed, NULL);
    assert_int_equal(sess_budget_memory_used(h->budget), 0);
    assert_int_equal(sess_budget_spill_used(h->budget), 0);
    sess_server_free(h->sv);
    sess_budget_free(h->budget);
    sess_auth_tokens_free(h->auth);
    sess_mem_model_free(h->model);
    uv_close((uv_handle_t *)&h->wake, close_cb);
    uv_close((uv_handle_t *)&h->watchdog, close_cb);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&h->loop), 0);
    free(h->rx.bytes);
}

/* ---- client side (threads) ---- */

typedef rawcl cl;

typedef struct job {
    harness *h;
    void (*fn)(struct job *j);
    atomic_int done;
    int ok;
    char fail[1024];
    int iarg;
    /* outputs */
    uint32_t code[8];
    int fatal[8];
    char msg[8][512];
    uint64_t u[8];
    int n;
} job;

#define CHECK(j, cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            snprintf((j)->fail, sizeof(j)->fail, __VA_ARGS__);                                     \
            return 0;                                                                              \
        }                                                                                          \
    } while (0)

static int hello(cl *c, const char *name, const char *token, uint32_t major) {
    fc_wire_msg m;
    fc_error err = {0};
    fc_wire_hello_args a = {.client_name = name,
                            .token = {(const uint8_t *)token, token ? strlen(token) : 0},
                            .software = "test"};
    if (fc_wire_hello(&m, 0, &a, &err) != FC_OK)
        return 0;
    m.body.hello.protocol_major = major;
    return rawcl_send(c, &m);
}

/* Reads the next frame and records an Error into slot j->n. Returns the body case. */
static int expect_error(job *j, cl *c) {
    fc_envelope *e = rawcl_recv(c);
    CHECK(j, e, "connection ended instead of an Error");
    if (e->body_case != FEDCOORD__V1__ENVELOPE__BODY_ERROR) {
        snprintf(j->fail, sizeof j->fail, "got %s instead of an Error",
                 fc_wire_body_name(e->body_case));
        fc_envelope_free(e);
        return 0;
    }
    j->code[j->n] = e->error->code;
    j->fatal[j->n] = e->error->fatal;
    snprintf(j->msg[j->n], sizeof j->msg[0], "%s", e->error->message ? e->error->message : "");
    j->n++;
    fc_envelope_free(e);
    return 1;
}

static int login(job *j, cl *c, const char *name, const char *token) {
    CHECK(j, rawcl_open(c, j->h->port, &pki, 0), "TLS connect failed");
    CHECK(j, hello(c, name, token, FC_PROTOCOL_MAJOR), "send Hello");
    fc_envelope *e = rawcl_recv(c);
    CHECK(j, e, "no Welcome");
    int ok = e->body_case == FEDCOORD__V1__ENVELOPE__BODY_WELCOME && e->welcome->session_id &&
             *e->welcome->session_id && e->welcome->resume_token.len > 0;
    fc_envelope_free(e);
    CHECK(j, ok, "first answer is not a complete Welcome");
    return 1;
}

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

/* Runs j->fn in a thread while the loop serves it, then waits for every session to end. */
static void run_job(harness *h, job *j) {
    pthread_t th;
    j->h = h;
    assert_int_equal(pthread_create(&th, NULL, job_main, j), 0);
    h_run_until(h, pred_job, j);
    pthread_join(th, NULL);
    h_run_until(h, pred_no_sessions, NULL);
    if (j->fail[0])
        fail_msg("client: %s", j->fail);
}

/* ---- handshake ---- */

static int c_hello_ok(job *j) {
    cl c;
    int ok = login(j, &c, "alice", "tok-alice");
    if (ok) {
        fc_wire_msg m;
        fc_error err = {0};
        fc_wire_heartbeat(&m, 0, 1, &err);
        rawcl_send(&c, &m);
        fc_wire_bye(&m, 0, "done", &err);
        rawcl_send(&c, &m);
        ok = rawcl_sees_close(&c);
        if (!ok)
            snprintf(j->fail, sizeof j->fail, "server answered after Bye");
    }
    rawcl_free(&c);
    j->ok = ok;
    return ok;
}
static void c_hello_ok_v(job *j) { c_hello_ok(j); }

static void test_hello_with_valid_token_gets_welcome(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1 << 20};
    h_start(&h, &o);
    job j = {.fn = c_hello_ok_v};
    run_job(&h, &j);
    assert_true(j.ok);
    h_finish(&h);
}

static int c_refused(job *j) {
    cl c;
    CHECK(j, rawcl_open(&c, j->h->port, &pki, 0), "TLS connect failed");
    int ok = 0;
    if (j->iarg == 0)
        ok = hello(&c, "alice", "wrong-token", FC_PROTOCOL_MAJOR);
    else if (j->iarg == 1)
        ok = hello(&c, "alice", "tok-alice", 2);
    else if (j->iarg == 2) {
        fc_wire_msg m;
        fc_error err = {0};
        fc_wire_model_request(&m, 0, 7, 0, &err);
        ok = rawcl_send(&c, &m);
    }
    if (ok && expect_error(j, &c)) {
        j->u[0] = (uint64_t)rawcl_sees_close(&c);
        j->ok = 1;
    }
    rawcl_free(&c);
    return 1;
}
static void c_refused_v(job *j) { c_refused(j); }

static void test_bad_token_is_refused_with_unauthenticated_and_closed(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1 << 20};
    h_start(&h, &o);
    job j = {.fn = c_refused_v, .iarg = 0};
    run_job(&h, &j);
    assert_true(j.ok);
    assert_int_equal(j.code[0], 20);
    assert_true(j.fatal[0]);
    assert_non_null(strstr(j.msg[0], "alice"));
    assert_null(strstr(j.msg[0], "wrong-token")); /* the token never travels back */
    assert_int_equal(j.u[0], 1);
    h_finish(&h);
}

static void test_protocol_major_mismatch_is_refused_with_the_message(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1 << 20};
    h_start(&h, &o);
    job j = {.fn = c_refused_v, .iarg = 1};
    run_job(&h, &j);
    assert_int_equal(j.code[0], 13);
    assert_non_null(strstr(j.msg[0], "client speaks protocol 2.0, server speaks 1.0"));
    assert_int_equal(j.u[0], 1);
    h_finish(&h);
}

static void test_message_before_hello_is_a_protocol_violation(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1 << 20};
    h_start(&h, &o);
    job j = {.fn = c_refused_v, .iarg = 2};
    run_job(&h, &j);
    assert_int_equal(j.code[0], 12);
    assert_true(j.fatal[0]);
    assert_non_null(strstr(j.msg[0], "model_request is not allowed in state hello_wait"));
    assert_int_equal(j.u[0], 1);
    h_finish(&h);
}

static int c_wrong_state(job *j) {
    cl c;
    if (!login(j, &c, "alice", "tok-alice"))
        return 0;
    fc_wire_msg m;
    fc_error err = {0};
    uint8_t sha[32] = {0};
    if (j->iarg == 0)
        fc_wire_update_end(&m, 0, sha, 1, NULL, 0, &err);
    else
        fc_wire_hello(&m, 0,
                      &(fc_wire_hello_args){.client_name = "alice",
                                            .token = {(const uint8_t *)"tok-alice", 9}},
                      &err);
    if (j->iarg == 2) { /* a seq gap */
        c.seq++;
        fc_wire_msg_free(&m);
        fc_wire_heartbeat(&m, 0, 1, &err);
    }
    rawcl_send(&c, &m);
    if (expect_error(j, &c))
        j->u[0] = (uint64_t)rawcl_sees_close(&c);
    rawcl_free(&c);
    return 1;
}
static void c_wrong_state_v(job *j) { c_wrong_state(j); }

static void test_wrong_state_second_hello_and_seq_gap_are_protocol_violations(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1 << 20};
    h_start(&h, &o);
    const char *want[3] = {"update_end is not allowed in state ready",
                           "hello is not allowed in state ready", "frame seq 3, expected 2"};
    for (int i = 0; i < 3; i++) {
        job j = {.fn = c_wrong_state_v, .iarg = i};
        run_job(&h, &j);
        assert_int_equal(j.code[0], 12);
        assert_true(j.fatal[0]);
        if (!strstr(j.msg[0], want[i]))
            fail_msg("case %d: message '%s' lacks '%s'", i, j.msg[0], want[i]);
        assert_int_equal(j.u[0], 1);
    }
    h_finish(&h);
}

static int c_replace(job *j) {
    cl a, b;
    if (!login(j, &a, "alice", "tok-alice"))
        return 0;
    if (!login(j, &b, "alice", "tok-alice"))
        return 0;
    fc_envelope *e = rawcl_recv(&a);
    CHECK(j, e, "old session got no Bye");
    int bye = e->body_case == FEDCOORD__V1__ENVELOPE__BODY_BYE;
    snprintf(j->msg[0], sizeof j->msg[0], "%s", bye && e->bye->reason ? e->bye->reason : "");
    fc_envelope_free(e);
    CHECK(j, bye, "old session got something else than Bye");
    j->u[0] = (uint64_t)rawcl_sees_close(&a);
    /* the new session works */
    fc_wire_msg m;
    fc_error err = {0};
    fc_wire_model_request(&m, 0, 99, 0, &err);
    rawcl_send(&b, &m);
    j->n = 1;
    if (expect_error(j, &b))
        j->u[1] = j->code[1];
    rawcl_free(&a);
    rawcl_free(&b);
    return 1;
}
static void c_replace_v(job *j) { c_replace(j); }

static void test_reconnect_with_same_identity_replaces_old_session(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1 << 20};
    h_start(&h, &o);
    job j = {.fn = c_replace_v};
    run_job(&h, &j);
    assert_non_null(strstr(j.msg[0], "replaced by a new session of client 'alice'"));
    assert_int_equal(j.u[0], 1);
    assert_int_equal(j.u[1], 31); /* NOT_FOUND for version 99, non-fatal: session alive */
    h_finish(&h);
}

static int c_mtls(job *j) {
    cl c;
    CHECK(j, rawcl_open(&c, j->h->port, &pki, 1), "TLS connect with certificate failed");
    CHECK(j, hello(&c, "", NULL, FC_PROTOCOL_MAJOR), "send Hello");
    fc_envelope *e = rawcl_recv(&c);
    CHECK(j, e, "no answer");
    j->ok = e->body_case == FEDCOORD__V1__ENVELOPE__BODY_WELCOME;
    fc_envelope_free(e);
    rawcl_free(&c);
    return 1;
}
static void c_mtls_v(job *j) { c_mtls(j); }

static void test_client_certificate_authenticates_without_token(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1 << 20};
    h_start(&h, &o);
    job j = {.fn = c_mtls_v};
    run_job(&h, &j);
    assert_true(j.ok);
    h_finish(&h);
}

/* ---- download ---- */

static int c_download(job *j) {
    cl c;
    if (!login(j, &c, "bob", "tok-bob"))
        return 0;
    uint64_t offset = (uint64_t)j->iarg;
    fc_wire_msg m;
    fc_error err = {0};
    fc_wire_model_request(&m, 0, 0, offset, &err);
    rawcl_send(&c, &m);
    fc_envelope *e = rawcl_recv(&c);
    CHECK(j, e && e->body_case == FEDCOORD__V1__ENVELOPE__BODY_MODEL_BEGIN, "no ModelBegin");
    uint64_t total = e->model_begin->total_bytes;
    uint8_t begin_sha[32];
    memcpy(begin_sha, e->model_begin->sha256.data, 32);
    j->u[0] = e->model_begin->version;
    j->u[1] = e->model_begin->offset;
    size_t n_t = e->model_begin->n_tensors;
    uint64_t starts[2] = {0, (uint64_t)EMB_N * 4};
    fc_envelope_free(e);
    CHECK(j, n_t == 2 && total == (uint64_t)(EMB_N + HEAD_N) * 4, "layout");
    /* What the client held before: the first offset bytes of the same model. */
    uint8_t *have = malloc(total);
    for (uint64_t i = 0; i < offset / 4; i++) {
        float v = model_value(i);
        memcpy(have + i * 4, &v, 4);
    }
    uint64_t pos = offset;
    int chunks = 0, ok = 1;
    for (;;) {
        e = rawcl_recv(&c);
        if (!e) {
            ok = 0;
            break;
        }
        if (e->body_case == FEDCOORD__V1__ENVELOPE__BODY_CHUNK) {
            const Fedcoord__V1__Chunk *ch = e->chunk;
            uint64_t g = starts[ch->tensor_index < 2 ? ch->tensor_index : 0] + ch->offset;
            if (g != pos || pos + ch->data.len > total) {
                ok = 0;
                fc_envelope_free(e);
                break;
            }
            memcpy(have + pos, ch->data.data, ch->data.len);
            pos += ch->data.len;
            chunks++;
            fc_envelope_free(e);
            continue;
        }
        if (e->body_case == FEDCOORD__V1__ENVELOPE__BODY_MODEL_END) {
            uint8_t h[32];
            unsigned hl = 0;
            EVP_Digest(have, total, h, &hl, EVP_sha256(), NULL);
            j->u[2] =
                memcmp(h, e->model_end->sha256.data, 32) == 0 && memcmp(h, begin_sha, 32) == 0;
        }
        fc_envelope_free(e);
        break;
    }
    j->u[3] = pos;
    j->u[4] = (uint64_t)chunks;
    /* and the values are the model's */
    int same = 1;
    for (uint64_t i = 0; i < total / 4 && same; i++) {
        float v = model_value(i), got;
        memcpy(&got, have + i * 4, 4);
        same = memcmp(&v, &got, 4) == 0;
    }
    j->u[5] = (uint64_t)same;
    free(have);
    rawcl_free(&c);
    CHECK(j, ok, "download broke off at byte %llu", (unsigned long long)pos);
    return 1;
}
static void c_download_v(job *j) { c_download(j); }

static void test_model_download_from_zero_streams_whole_model_with_backpressure(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1 << 20, .high_water = 256 << 10};
    h_start(&h, &o);
    job j = {.fn = c_download_v, .iarg = 0};
    run_job(&h, &j);
    assert_int_equal(j.u[0], 7);
    assert_int_equal(j.u[1], 0);
    assert_int_equal(j.u[2], 1); /* SHA-256 verified by the client */
    assert_int_equal(j.u[3], (EMB_N + HEAD_N) * 4ull);
    assert_int_equal(j.u[4], 2 + 2); /* 2 MiB in 1 MiB chunks + 1.2 MB in 2 */
    assert_int_equal(j.u[5], 1);
    h_finish(&h);
}

static void test_model_download_resumes_from_an_offset(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1 << 20, .high_water = 256 << 10};
    h_start(&h, &o);
    job j = {.fn = c_download_v, .iarg = 3000000}; /* inside "head", element aligned */
    run_job(&h, &j);
    assert_int_equal(j.u[1], 3000000);
    assert_int_equal(j.u[2], 1);
    assert_int_equal(j.u[3], (EMB_N + HEAD_N) * 4ull);
    assert_int_equal(j.u[4], 1);
    assert_int_equal(j.u[5], 1);
    h_finish(&h);
}

/* ---- upload ---- */

enum {
    UP_OK,
    UP_SHAPE,
    UP_NAN,
    UP_HASH,
    UP_GAP,
    UP_TOO_MANY,
    UP_EXAMPLES,
    UP_DISCONNECT,
    UP_STALE,
    UP_END_CLOSE,
    UP_DRIBBLE /* every chunk frame written in pieces of 1 to 13 bytes */
};

/* Sends one chunk frame in small pieces, so that the server sees its head and payload split
 * across many TLS records. */
static int send_chunk_dribbled(cl *c, uint32_t tensor_index, uint64_t offset, const void *data,
                               size_t len) {
    static const size_t steps[] = {1, 2, 3, 5, 7, 11, 13};
    fc_buf b = FC_BUF_INIT;
    fc_error err = {0};
    int ok = fc_frame_encode_chunk(++c->seq, tensor_index, offset, data, len, 0, &b, &err) == FC_OK;
    for (size_t off = 0, k = 0; ok && off < b.len; off += steps[k++ % 7]) {
        size_t n = b.len - off < steps[k % 7] ? b.len - off : steps[k % 7];
        ok = rawcl_write(c, b.data + off, n);
    }
    fc_buf_free(&b);
    return ok;
}

#define W_N (64 * 64)
#define B_N 64
static void update_data(float *w, float *b) {
    for (size_t i = 0; i < W_N; i++)
        w[i] = (float)i * 0.25f - 100.0f;
    for (size_t i = 0; i < B_N; i++)
        b[i] = (float)i;
}

static float up_w[W_N], up_b[B_N];

/* Sends UpdateBegin. Returns 1 (sent) or 0 (failure recorded). */
static int upload_begin(job *j, cl *c, int kind) {
    fc_error err = {0};
    fc_tensor_spec specs[2] = {
        {.name = "fc1.weight",
         .dtype = FC_DTYPE_F32,
         .ndim = 2,
         .shape = {64, kind == UP_SHAPE ? 10 : 64}},
        {.name = "fc1.bias", .dtype = FC_DTYPE_F32, .ndim = 1, .shape = {64}}};
    uint64_t wbytes = (kind == UP_SHAPE ? 640 : W_N) * 4ull;
    fc_wire_update_begin_args a = {.round = ROUND,
                                   .base_version = kind == UP_STALE ? BASE - 1 : BASE,
                                   .tensors = specs,
                                   .n_tensors = 2,
                                   .total_bytes = wbytes + B_N * 4};
    fc_wire_msg m;
    CHECK(j, fc_wire_update_begin(&m, 0, &a, &err) == FC_OK, "build UpdateBegin: %s", err.msg);
    CHECK(j, rawcl_send(c, &m), "send UpdateBegin");
    return 1;
}

/* Reads the answer to UpdateBegin, then sends the chunks and UpdateEnd of case `kind` and
 * reads until the final answer. Errors land in j->code/msg; returns 0 on a broken exchange. */
static int upload_data(job *j, cl *c, int kind);

static int upload_rest(job *j, cl *c, int kind) {
    uint64_t begin_seq = c->seq;
    fc_envelope *e = rawcl_recv(c);
    CHECK(j, e, "no answer to UpdateBegin");
    if (e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ERROR) {
        j->code[j->n] = e->error->code;
        j->fatal[j->n] = e->error->fatal;
        snprintf(j->msg[j->n++], sizeof j->msg[0], "%s", e->error->message);
        fc_envelope_free(e);
        return 1;
    }
    int ack0 = e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ACK && e->ack->ref_seq == begin_seq &&
               e->ack->offset == 0;
    fc_envelope_free(e);
    CHECK(j, ack0, "UpdateBegin not answered with Ack(offset 0)");
    return upload_data(j, c, kind);
}

/* The chunk phase and UpdateEnd, after the Ack of UpdateBegin. */
static int upload_data(job *j, cl *c, int kind) {
    fc_error err = {0};
    fc_wire_msg m;
    fc_envelope *e;
    float *w = up_w, *b = up_b;
    update_data(w, b);
    if (kind == UP_NAN)
        w[1000] = NAN;
    /* weight in 4 chunks of 4 KiB, bias in one */
    for (int k = 0; k < 4; k++) {
        if (kind == UP_GAP && k == 2)
            continue;
        if (kind == UP_DRIBBLE)
            send_chunk_dribbled(c, 0, (uint64_t)k * 4096, (uint8_t *)w + k * 4096, 4096);
        else
            rawcl_send_chunk(c, 0, (uint64_t)k * 4096, (uint8_t *)w + k * 4096, 4096);
        if (kind == UP_DISCONNECT && k == 1) {
            /* wait for the server's first Ack (4 KiB staged), then vanish */
            e = rawcl_recv(c);
            j->u[6] = e && e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ACK ? e->ack->offset : 0;
            fc_envelope_free(e);
            return 1;
        }
    }
    if (kind == UP_DRIBBLE)
        send_chunk_dribbled(c, 1, 0, b, B_N * 4);
    else
        rawcl_send_chunk(c, 1, 0, b, B_N * 4);
    if (kind == UP_TOO_MANY)
        rawcl_send_chunk(c, 1, B_N * 4, b, 16);
    uint8_t sha[32];
    EVP_MD_CTX *x = EVP_MD_CTX_new();
    unsigned hl = 0;
    EVP_DigestInit_ex(x, EVP_sha256(), NULL);
    EVP_DigestUpdate(x, w, W_N * 4);
    EVP_DigestUpdate(x, b, B_N * 4);
    EVP_DigestFinal_ex(x, sha, &hl);
    EVP_MD_CTX_free(x);
    if (kind == UP_HASH)
        sha[5] ^= 1;
    fc_wire_metric met = {"train_loss", 0.5};
    fc_wire_update_end(&m, 0, sha, kind == UP_EXAMPLES ? 5000 : 100, &met, 1, &err);
    rawcl_send(c, &m);
    uint64_t end_seq = c->seq;
    if (kind == UP_END_CLOSE) {
        /* close cleanly (close_notify, then drain to EOF) so no TCP reset can discard the
         * UpdateEnd before the server reads it */
        SSL_shutdown(c->ssl);
        while ((e = rawcl_recv(c)) != NULL)
            fc_envelope_free(e);
        return 1;
    }
    /* read Acks until the answer for UpdateEnd or an Error */
    for (;;) {
        e = rawcl_recv(c);
        CHECK(j, e, "connection ended during upload");
        if (e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ERROR) {
            j->code[j->n] = e->error->code;
            j->fatal[j->n] = e->error->fatal;
            snprintf(j->msg[j->n++], sizeof j->msg[0], "%s", e->error->message);
            fc_envelope_free(e);
            return 1;
        }
        int final = e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ACK && e->ack->ref_seq == end_seq;
        if (e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ACK && !final)
            j->u[1]++; /* intermediate acks */
        if (final)
            j->u[0] = e->ack->offset;
        fc_envelope_free(e);
        if (final)
            return 1;
    }
}

static int upload(job *j, cl *c, int kind) {
    return upload_begin(j, c, kind) && upload_rest(j, c, kind);
}

static int c_upload(job *j) {
    cl c;
    if (!login(j, &c, "alice", "tok-alice"))
        return 0;
    if (!upload(j, &c, j->iarg)) {
        rawcl_free(&c);
        return 0;
    }
    if (j->iarg != UP_DISCONNECT && j->iarg != UP_OK && j->iarg != UP_END_CLOSE &&
        j->iarg != UP_DRIBBLE) {
        /* the session goes on: a good upload after the rejected one is accepted */
        j->u[7] = (uint64_t)upload(j, &c, UP_OK);
    }
    rawcl_free(&c); /* abrupt close, no Bye */
    return 1;
}
static void c_upload_v(job *j) { c_upload(j); }

static void check_upload_ok(int kind) {
    harness h;
    opts o = {.memory_limit = 1 << 20};
    h_start(&h, &o);
    job j = {.fn = c_upload_v, .iarg = kind};
    run_job(&h, &j);
    assert_int_equal(j.n, 0);
    assert_int_equal(j.u[0], (W_N + B_N) * 4);
    assert_int_equal(j.u[1], 4); /* an Ack every 4096 bytes: after chunks 1..4 */
    assert_int_equal(h.rx.sinks, 1);
    assert_int_equal(h.rx.rejects, 0);
    assert_int_equal(h.rx.sink_client, 1);
    assert_int_equal(h.rx.sink_round, ROUND);
    assert_int_equal(h.rx.sink_examples, 100);
    assert_int_equal(h.rx.n_metrics, 1);
    assert_true(h.rx.metric0 == 0.5);
    static float w[W_N], b[B_N];
    update_data(w, b);
    assert_int_equal(h.rx.nbytes, (W_N + B_N) * 4);
    assert_memory_equal(h.rx.bytes, w, W_N * 4);
    assert_memory_equal(h.rx.bytes + W_N * 4, b, B_N * 4);
    assert_int_equal(sess_server_accepted(h.sv), 1);
    h_finish(&h);
}

static void test_upload_ok_reaches_sink_with_exact_bytes(void **state) {
    (void)state;
    check_upload_ok(UP_OK);
}

/* Chunk payloads go straight into the stage once a frame's head shows a chunk the stage takes;
 * heads and payloads split across many tiny records must give the same bytes and Acks. */
static void test_upload_in_tiny_pieces_reaches_sink_with_exact_bytes(void **state) {
    (void)state;
    check_upload_ok(UP_DRIBBLE);
}

static void check_rejected(int kind, uint32_t code, fc_status st, const char *needle) {
    harness h;
    opts o = {.memory_limit = 1 << 20};
    h_start(&h, &o);
    job j = {.fn = c_upload_v, .iarg = kind};
    run_job(&h, &j);
    assert_int_equal(j.n, 1);
    if (j.code[0] != code)
        fail_msg("wire code %u (%s), want %u", j.code[0], j.msg[0], code);
    assert_false(j.fatal[0]);
    if (!strstr(j.msg[0], needle))
        fail_msg("message '%s' lacks '%s'", j.msg[0], needle);
    assert_int_equal(h.rx.rejects, 1);
    assert_int_equal(h.rx.reject_client, 1);
    assert_int_equal(h.rx.reject_st, st);
    assert_string_equal(h.rx.reject_reason, j.msg[0]);
    /* the rejected update never reached the sink; the follow-up good one did */
    assert_int_equal(j.u[7], 1);
    assert_int_equal(h.rx.sinks, 1);
    assert_int_equal(sess_server_rejected(h.sv), 1);
    assert_int_equal(sess_server_accepted(h.sv), 1);
    h_finish(&h);
}

static void test_upload_with_wrong_shape_is_refused_at_begin(void **state) {
    (void)state;
    check_rejected(
        UP_SHAPE, 42, FC_ERR_SHAPE,
        "update for round 12 has tensor 'fc1.weight' shape [64,10], round expects [64,64]");
}
static void test_upload_with_nan_is_rejected_as_non_finite(void **state) {
    (void)state;
    check_rejected(UP_NAN, 45, FC_ERR_NON_FINITE, "NaN or infinite value in tensor 'fc1.weight'");
}
static void test_upload_with_bad_hash_is_rejected(void **state) {
    (void)state;
    check_rejected(UP_HASH, 41, FC_ERR_HASH, "SHA-256 mismatch");
}
static void test_upload_with_gap_is_rejected_as_bad_chunk(void **state) {
    (void)state;
    check_rejected(UP_GAP, 40, FC_ERR_CHUNK, "update for round 12");
}
static void test_upload_with_too_many_bytes_is_rejected_as_bad_chunk(void **state) {
    (void)state;
    check_rejected(UP_TOO_MANY, 40, FC_ERR_CHUNK, "update for round 12");
}
static void test_upload_with_num_examples_out_of_range_is_rejected(void **state) {
    (void)state;
    check_rejected(UP_EXAMPLES, 46, FC_ERR_REQUIREMENT, "claims 5000 examples, allowed 1..1000");
}
static void test_upload_from_stale_base_version_is_rejected(void **state) {
    (void)state;
    check_rejected(UP_STALE, 46, FC_ERR_REQUIREMENT,
                   "trained from version 2, round expects version 3");
}

/* With resume disabled; parking for a resume is tested in test_session_resume.c. */
static void test_disconnect_mid_upload_frees_staging_and_sinks_nothing(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1 << 20, .no_resume = 1};
    h_start(&h, &o);
    job j = {.fn = c_upload_v, .iarg = UP_DISCONNECT};
    run_job(&h, &j);
    assert_int_equal(
        j.u[6], 4096); /* the server had acknowledged staged bytes before the client vanished */
    assert_int_equal(h.rx.sinks, 0);
    assert_int_equal(h.rx.rejects, 0);
    assert_int_equal(sess_budget_memory_used(h.budget), 0);
    h_finish(&h);
}

static void test_upload_over_memory_budget_spills_to_file(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1024, .spill_dir = fc_test_tmpdir(), .spill_limit = 1 << 20};
    h_start(&h, &o);
    job j = {.fn = c_upload_v, .iarg = UP_OK};
    run_job(&h, &j);
    assert_int_equal(j.n, 0);
    assert_int_equal(h.rx.sinks, 1);
    assert_int_equal(h.rx.spill_at_sink, (W_N + B_N) * 4);
    static float w[W_N], b[B_N];
    update_data(w, b);
    assert_memory_equal(h.rx.bytes, w, W_N * 4);
    h_finish(&h);
}

/* alice holds the whole budget; bob's UpdateBegin must wait (his connection paused) until
 * alice's update is handed over and its buffer released, then bob's upload completes. */
typedef struct two_sync {
    job j;
    atomic_int ready, go;
} two_sync;

static int c_two(job *j) {
    two_sync *t = (two_sync *)j;
    cl a, b;
    if (!login(j, &a, "alice", "tok-alice") || !login(j, &b, "bob", "tok-bob"))
        return 0;
    if (!upload_begin(j, &a, UP_OK))
        return 0;
    fc_envelope *e = rawcl_recv(&a);
    CHECK(j, e && e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ACK, "alice's begin not acked");
    fc_envelope_free(e);
    if (!upload_begin(j, &b, UP_OK))
        return 0;
    atomic_store(&t->ready, 1);
    uv_async_send(&j->h->wake);
    while (!atomic_load(&t->go))
        usleep(2000);
    /* alice completes; her update is handed to the sink, which releases the buffer */
    j->u[2] = (uint64_t)upload_data(j, &a, UP_OK);
    j->u[3] = j->u[0];
    j->u[0] = 0;
    j->u[4] = (uint64_t)upload_rest(j, &b, UP_OK);
    rawcl_free(&a);
    rawcl_free(&b);
    return 1;
}
static void c_two_v(job *j) { c_two(j); }

static int pred_ready(harness *h, void *arg) {
    (void)h;
    return atomic_load(&((two_sync *)arg)->ready);
}
static int pred_waiting(harness *h, void *arg) {
    (void)arg;
    return sess_budget_waiting(h->budget) == 1;
}

static void test_budget_exhaustion_pauses_reading_until_budget_frees(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = (W_N + B_N) * 4}; /* exactly one update, no spill */
    h_start(&h, &o);
    two_sync t;
    memset(&t, 0, sizeof t);
    t.j.fn = c_two_v;
    t.j.h = &h;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, job_main, &t.j), 0);
    h_run_until(&h, pred_ready, &t);
    h_run_until(&h, pred_waiting, NULL); /* bob's UpdateBegin is parked: budget refused */
    assert_int_equal(sess_budget_memory_used(h.budget), (W_N + B_N) * 4);
    assert_int_equal(h.rx.sinks, 0);
    atomic_store(&t.go, 1);
    h_run_until(&h, pred_job, &t.j);
    pthread_join(th, NULL);
    h_run_until(&h, pred_no_sessions, NULL);
    if (t.j.fail[0])
        fail_msg("client: %s", t.j.fail);
    assert_int_equal(t.j.n, 0);
    assert_int_equal(t.j.u[2], 1);
    assert_int_equal(t.j.u[3], (W_N + B_N) * 4);
    assert_int_equal(t.j.u[4], 1);
    assert_int_equal(t.j.u[0], (W_N + B_N) * 4); /* bob's final Ack */
    assert_int_equal(h.rx.sinks, 2);
    assert_int_equal(h.rx.waiting_at_sink, 0);
    assert_int_equal(h.rx.sink_client, 2);
    h_finish(&h);
}

/* Validation runs on the thread pool. With every pool thread held busy, the client sends a
 * complete, valid update and disconnects; when the pool frees up, the after-work callback sees
 * the session is gone (generation changed): nothing reaches the sink, the buffer is released. */
static atomic_int pool_hold;
static void blocker_work(uv_work_t *w) {
    (void)w;
    while (atomic_load(&pool_hold))
        usleep(1000);
}
static void blocker_after(uv_work_t *w, int st) {
    (void)st;
    *(int *)w->data = 1;
}
static int pred_memory_free(harness *h, void *arg) {
    (void)arg;
    return sess_budget_memory_used(h->budget) == 0;
}

static void test_session_closed_during_validation_sinks_nothing(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1 << 20};
    h_start(&h, &o);
    uv_work_t blockers[4];
    int finished[4] = {0};
    atomic_store(&pool_hold, 1);
    for (int i = 0; i < 4; i++) {
        blockers[i].data = &finished[i];
        assert_int_equal(uv_queue_work(&h.loop, &blockers[i], blocker_work, blocker_after), 0);
    }
    job j = {.fn = c_upload_v, .iarg = UP_END_CLOSE};
    run_job(&h, &j); /* returns once the connection is closed on the server side */
    assert_int_equal(sess_budget_memory_used(h.budget), (W_N + B_N) * 4); /* held by the job */
    atomic_store(&pool_hold, 0);
    h_run_until(&h, pred_memory_free, NULL);
    assert_int_equal(h.rx.sinks, 0);
    assert_int_equal(h.rx.rejects, 0);
    assert_int_equal(sess_server_accepted(h.sv), 0);
    h_finish(&h);
    for (int i = 0; i < 4; i++)
        assert_int_equal(finished[i], 1);
}

/* An update larger than memory and spill together is refused at once, not parked forever. */
static void test_update_larger_than_staging_capacity_is_refused(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1024};
    h_start(&h, &o);
    job j = {.fn = c_upload_v, .iarg = UP_OK};
    pthread_t th;
    j.h = &h;
    /* the client's UpdateBegin gets an Error; its upload() then stops */
    assert_int_equal(pthread_create(&th, NULL, job_main, &j), 0);
    h_run_until(&h, pred_job, &j);
    pthread_join(th, NULL);
    h_run_until(&h, pred_no_sessions, NULL);
    assert_int_equal(j.n, 1);
    assert_int_equal(j.code[0], 11);
    assert_false(j.fatal[0]);
    assert_non_null(
        strstr(j.msg[0], "16640 bytes exceed the staging capacity (memory 1024, spill 0)"));
    assert_int_equal(sess_budget_waiting(h.budget), 0);
    assert_int_equal(h.rx.sinks, 0);
    assert_int_equal(h.rx.rejects, 1);
    h_finish(&h);
}

/* A client that stops inside a frame is dropped by net's progress rule (the session marks
 * half-received frames with net_set_partial) and told why. */
static int c_loris(job *j) {
    cl c;
    if (!login(j, &c, "alice", "tok-alice"))
        return 0;
    uint8_t two[2] = {0, 0};
    CHECK(j, rawcl_write(&c, two, 2), "write");
    if (expect_error(j, &c))
        j->u[0] = (uint64_t)rawcl_sees_close(&c);
    rawcl_free(&c);
    return 1;
}
static void c_loris_v(job *j) { c_loris(j); }

/* Begins an upload, then stops halfway through the first chunk's payload. */
static int c_loris_chunk(job *j) {
    cl c;
    if (!login(j, &c, "alice", "tok-alice"))
        return 0;
    if (!upload_begin(j, &c, UP_OK)) {
        rawcl_free(&c);
        return 0;
    }
    fc_envelope *e = rawcl_recv(&c);
    int ack0 = e && e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ACK;
    fc_envelope_free(e);
    CHECK(j, ack0, "UpdateBegin not answered with an Ack");
    static float w[W_N], b[B_N];
    update_data(w, b);
    fc_buf f = FC_BUF_INIT;
    fc_error err = {0};
    CHECK(j, fc_frame_encode_chunk(++c.seq, 0, 0, w, 4096, 0, &f, &err) == FC_OK, "encode");
    CHECK(j, rawcl_write(&c, f.data, 2000), "write");
    fc_buf_free(&f);
    if (expect_error(j, &c))
        j->u[0] = (uint64_t)rawcl_sees_close(&c);
    rawcl_free(&c);
    return 1;
}
static void c_loris_chunk_v(job *j) { c_loris_chunk(j); }

/* A chunk whose payload stops arriving is half a frame like any other, even though its bytes
 * go straight into the stage: the progress rule drops the connection. */
static void test_half_sent_chunk_is_dropped_by_progress_rule(void **state) {
    (void)state;
    harness h;
    opts o = {
        .memory_limit = 1 << 20, .min_rate_bps = 10000, .rate_window_ms = 100, .no_resume = 1};
    h_start(&h, &o);
    job j = {.fn = c_loris_chunk_v};
    run_job(&h, &j);
    assert_int_equal(j.code[0], 11); /* LIMIT_EXCEEDED from net's FC_ERR_LIMIT */
    assert_true(j.fatal[0]);
    assert_int_equal(j.u[0], 1);
    assert_int_equal(h.rx.sinks, 0);
    assert_int_equal(sess_budget_memory_used(h.budget), 0);
    h_finish(&h);
}

static void test_half_sent_frame_is_dropped_by_progress_rule(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1 << 20, .min_rate_bps = 10000, .rate_window_ms = 100};
    h_start(&h, &o);
    job j = {.fn = c_loris_v};
    run_job(&h, &j);
    assert_int_equal(j.code[0], 11); /* LIMIT_EXCEEDED from net's FC_ERR_LIMIT */
    assert_true(j.fatal[0]);
    assert_int_equal(j.u[0], 1);
    h_finish(&h);
}

/* The scheduler pushes a Task into an authenticated session. */
static int c_task(job *j) {
    two_sync *t = (two_sync *)j;
    cl c;
    if (!login(j, &c, "bob", "tok-bob"))
        return 0;
    atomic_store(&t->ready, 1);
    uv_async_send(&j->h->wake);
    fc_envelope *e = rawcl_recv(&c);
    CHECK(j, e && e->body_case == FEDCOORD__V1__ENVELOPE__BODY_TASK, "no Task");
    j->u[0] = e->task->round;
    j->u[1] = e->task->model_version;
    j->u[2] = e->task->n_tensors;
    j->u[3] = e->seq;
    fc_envelope_free(e);
    rawcl_free(&c);
    return 1;
}
static void c_task_v(job *j) { c_task(j); }

static void test_send_task_reaches_the_client(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1 << 20};
    h_start(&h, &o);
    two_sync t;
    memset(&t, 0, sizeof t);
    t.j.fn = c_task_v;
    t.j.h = &h;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, job_main, &t.j), 0);
    h_run_until(&h, pred_ready, &t);
    assert_null(sess_find(h.sv, 1));
    sess *s = sess_find(h.sv, 2);
    assert_non_null(s);
    assert_int_equal(sess_get_state(s), SESS_READY);
    uint8_t sha[32] = {1};
    fc_wire_task_args ta = {.round = ROUND,
                            .kind = FC_TASK_TRAIN,
                            .model_version = BASE,
                            .tensors = h.round_specs,
                            .n_tensors = 2,
                            .model_sha256 = sha,
                            .model_bytes = (W_N + B_N) * 4};
    fc_error err = {0};
    assert_int_equal(sess_send_task(s, &ta, &err), FC_OK);
    h_run_until(&h, pred_job, &t.j);
    pthread_join(th, NULL);
    h_run_until(&h, pred_no_sessions, NULL);
    if (t.j.fail[0])
        fail_msg("client: %s", t.j.fail);
    assert_int_equal(t.j.u[0], ROUND);
    assert_int_equal(t.j.u[1], BASE);
    assert_int_equal(t.j.u[2], 2);
    assert_int_equal(t.j.u[3], 2); /* Welcome was 1 */
    h_finish(&h);
}

/* ---- evaluation results ---- */

static int send_eval(cl *c, uint64_t round, uint64_t examples) {
    fc_wire_msg m;
    fc_error err = {0};
    fc_wire_metric met[2] = {{"accuracy", 0.875}, {"loss", 0.25}};
    if (fc_wire_eval_result(&m, 0, round, BASE, examples, met, 2, &err) != FC_OK)
        return 0;
    return rawcl_send(c, &m);
}

/* Reads the next frame: 1 if it is an Ack of ref_seq. */
static int expect_ack(job *j, cl *c, uint64_t ref_seq) {
    fc_envelope *e = rawcl_recv(c);
    CHECK(j, e, "connection ended instead of an Ack");
    int ok = e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ACK && e->ack->ref_seq == ref_seq;
    if (!ok)
        snprintf(j->fail, sizeof j->fail, "got %s instead of the Ack of %llu",
                 fc_wire_body_name(e->body_case), (unsigned long long)ref_seq);
    fc_envelope_free(e);
    return ok;
}

static int c_eval(job *j, cl *c) {
    if (!login(j, c, "bob", "tok-bob"))
        return 0;
    /* accepted: Ack of its seq */
    CHECK(j, send_eval(c, ROUND, 40), "send EvalResult");
    if (!expect_ack(j, c, c->seq))
        return 0;
    /* refused by the round: non-fatal Error with the callback's status and detail */
    CHECK(j, send_eval(c, ROUND + 1, 40), "send EvalResult");
    if (!expect_error(j, c))
        return 0;
    /* more examples than [limits] max_num_examples (1000 here): refused before the callback */
    CHECK(j, send_eval(c, ROUND, 5000), "send EvalResult");
    if (!expect_error(j, c))
        return 0;
    /* the session is still usable: another accepted report */
    CHECK(j, send_eval(c, ROUND, 7), "send EvalResult");
    return expect_ack(j, c, c->seq);
}

static void c_eval_v(job *j) {
    cl c;
    memset(&c, 0, sizeof c);
    c.fd = -1;
    j->ok = c_eval(j, &c);
    rawcl_free(&c);
}

static void test_eval_result_reaches_the_callback_and_is_acked(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = 1 << 20};
    h_start(&h, &o);
    job j;
    memset(&j, 0, sizeof j);
    j.fn = c_eval_v;
    run_job(&h, &j);
    assert_true(j.ok);
    assert_int_equal(j.n, 2);
    assert_int_equal(j.code[0], fc_wire_error_for_status(FC_ERR_STATE)->code);
    assert_false(j.fatal[0]);
    assert_non_null(strstr(j.msg[0], "round 13 is not an open evaluation round"));
    assert_int_equal(j.code[1], fc_wire_error_for_status(FC_ERR_REQUIREMENT)->code);
    assert_non_null(strstr(j.msg[1], "claims 5000 examples, allowed 1..1000"));
    assert_int_equal(h.rx.evals, 2);
    assert_int_equal(h.rx.eval_client, 2);
    assert_int_equal(h.rx.eval_round, ROUND);
    assert_int_equal(h.rx.eval_version, BASE);
    assert_int_equal(h.rx.eval_examples, 7);
    assert_int_equal(h.rx.eval_n, 2);
    assert_string_equal(h.rx.eval_name0, "accuracy");
    assert_true(h.rx.eval_value0 == 0.875);
    h_finish(&h);
}

/* The token table on its own: hashes only, name and token must both match, certificates only
 * for rows that allow them, and no detail ever contains the token. */
static void test_token_table_checks_name_token_and_certificate(void **state) {
    (void)state;
    sess_auth_tokens *t = NULL;
    fc_error err = {0};
    char name[64];
    uint64_t id = 0;
    assert_int_equal(sess_auth_tokens_new(&t, &err), FC_OK);
    assert_int_equal(sess_auth_tokens_add(t, "alice", (const uint8_t *)"s3cret", 6, 1, 0, &err),
                     FC_OK);
    assert_int_equal(sess_auth_tokens_add(t, "node-7", (const uint8_t *)"x", 1, 7, 1, &err), FC_OK);
    assert_int_equal(sess_auth_tokens_add(t, "alice", (const uint8_t *)"y", 1, 9, 0, &err),
                     FC_ERR_EXISTS);
    assert_int_equal(sess_auth_tokens_check(t, "alice", (const uint8_t *)"s3cret", 6, NULL, &id,
                                            name, sizeof name, &err),
                     FC_OK);
    assert_int_equal(id, 1);
    assert_string_equal(name, "alice");
    /* right token, wrong name; right name, wrong token; a prefix of the token */
    assert_int_equal(sess_auth_tokens_check(t, "node-7", (const uint8_t *)"s3cret", 6, NULL, &id,
                                            name, sizeof name, &err),
                     FC_ERR_AUTH);
    assert_int_equal(id, 0);
    assert_int_equal(sess_auth_tokens_check(t, "alice", (const uint8_t *)"s3creT", 6, NULL, &id,
                                            name, sizeof name, &err),
                     FC_ERR_AUTH);
    assert_null(strstr(err.msg, "s3cre"));
    assert_int_equal(sess_auth_tokens_check(t, "alice", (const uint8_t *)"s3cre", 5, NULL, &id,
                                            name, sizeof name, &err),
                     FC_ERR_AUTH);
    /* certificates: allowed for node-7, not for alice, and the name must agree with the CN */
    assert_int_equal(sess_auth_tokens_check(t, "", NULL, 0, "node-7", &id, name, sizeof name, &err),
                     FC_OK);
    assert_int_equal(id, 7);
    assert_int_equal(sess_auth_tokens_check(t, "", NULL, 0, "alice", &id, name, sizeof name, &err),
                     FC_ERR_AUTH);
    assert_int_equal(
        sess_auth_tokens_check(t, "alice", NULL, 0, "node-7", &id, name, sizeof name, &err),
        FC_ERR_AUTH);
    assert_non_null(strstr(err.msg, "differs from its certificate"));
    assert_int_equal(sess_auth_tokens_check(t, "", NULL, 0, NULL, &id, name, sizeof name, &err),
                     FC_ERR_AUTH);
    sess_auth_tokens_free(t);
}

static int group_setup(void **state) {
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    setenv("UV_THREADPOOL_SIZE", "4", 1); /* before the pool starts: the blocker test fills it */
    fc_error err = {0};
    if (tlsgen_create(NULL, &pki, &err) != FC_OK) {
        fprintf(stderr, "tlsgen: %s\n", fc_error_text(&err));
        return -1;
    }
    return 0;
}

/* Regression (found by fuzz_session): the refusal of a frame limit too small for the chunk
 * limit read the freed server to format its message (heap-use-after-free under ASan). */
static void test_frame_limit_below_chunk_limit_is_refused(void **state) {
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    sess_budget *budget = NULL;
    sess_auth_tokens *auth = NULL;
    fc_error err = {0};
    assert_int_equal(sess_budget_new(&loop, 1u << 20, NULL, 0, &budget, &err), FC_OK);
    assert_int_equal(sess_auth_tokens_new(&auth, &err), FC_OK);
    sess_config cfg = {.loop = &loop,
                       .budget = budget,
                       .auth = sess_auth_tokens_check,
                       .auth_ctx = auth,
                       .max_frame_bytes = 1u << 16};
    sess_server *sv = NULL;
    assert_int_equal(sess_server_new(&cfg, &sv, &err), FC_ERR_CONFIG);
    assert_null(sv);
    char want[64];
    snprintf(want, sizeof want, "max_chunk_bytes %u", (unsigned)FC_CHUNK_MAX_DATA);
    if (!strstr(err.msg, want))
        fail_msg("message \"%s\" does not name %s", err.msg, want);
    sess_auth_tokens_free(auth);
    sess_budget_free(budget);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_table_checks_name_token_and_certificate),
        cmocka_unit_test(test_hello_with_valid_token_gets_welcome),
        cmocka_unit_test(test_bad_token_is_refused_with_unauthenticated_and_closed),
        cmocka_unit_test(test_protocol_major_mismatch_is_refused_with_the_message),
        cmocka_unit_test(test_message_before_hello_is_a_protocol_violation),
        cmocka_unit_test(test_wrong_state_second_hello_and_seq_gap_are_protocol_violations),
        cmocka_unit_test(test_reconnect_with_same_identity_replaces_old_session),
        cmocka_unit_test(test_client_certificate_authenticates_without_token),
        cmocka_unit_test(test_model_download_from_zero_streams_whole_model_with_backpressure),
        cmocka_unit_test(test_model_download_resumes_from_an_offset),
        cmocka_unit_test(test_upload_ok_reaches_sink_with_exact_bytes),
        cmocka_unit_test(test_upload_in_tiny_pieces_reaches_sink_with_exact_bytes),
        cmocka_unit_test(test_upload_with_wrong_shape_is_refused_at_begin),
        cmocka_unit_test(test_upload_with_nan_is_rejected_as_non_finite),
        cmocka_unit_test(test_upload_with_bad_hash_is_rejected),
        cmocka_unit_test(test_upload_with_gap_is_rejected_as_bad_chunk),
        cmocka_unit_test(test_upload_with_too_many_bytes_is_rejected_as_bad_chunk),
        cmocka_unit_test(test_upload_with_num_examples_out_of_range_is_rejected),
        cmocka_unit_test(test_upload_from_stale_base_version_is_rejected),
        cmocka_unit_test(test_disconnect_mid_upload_frees_staging_and_sinks_nothing),
        cmocka_unit_test(test_upload_over_memory_budget_spills_to_file),
        cmocka_unit_test(test_budget_exhaustion_pauses_reading_until_budget_frees),
        cmocka_unit_test(test_session_closed_during_validation_sinks_nothing),
        cmocka_unit_test(test_update_larger_than_staging_capacity_is_refused),
        cmocka_unit_test(test_half_sent_frame_is_dropped_by_progress_rule),
        cmocka_unit_test(test_half_sent_chunk_is_dropped_by_progress_rule),
        cmocka_unit_test(test_send_task_reaches_the_client),
        cmocka_unit_test(test_eval_result_reaches_the_callback_and_is_acked),
        cmocka_unit_test(test_frame_limit_below_chunk_limit_is_refused),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
