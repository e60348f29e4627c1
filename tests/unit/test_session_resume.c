/* test_session_resume.c: resumable uploads and downloads between the daemon's real session
 * layer (server/session.c over server/net, REAL TLS on loopback) and real clients.
 *
 * - Raw frame clients (proto/wire) drive the server's parking rules exactly: an upload whose
 *   connection breaks is parked, a later session of the same client continues it from the
 *   staged bytes, any mismatch starts afresh, parked stages expire, leave when the round moves
 *   on, count against the staging budget, are capped and give way to live uploads.
 * - The SDK (libfedclient) downloads a model and uploads an update through a TCP proxy in this
 *   test that cuts the connection at seeded random byte positions several times per transfer;
 *   both arrive byte for byte, and the server's counters show that they resumed from offsets
 *   above 0 instead of starting again.
 *
 * The libuv loop and the sessions run in the main thread; clients (and the proxy) run in
 * pthreads; the main thread asserts after joining them. The watchdog only turns a hang into a
 * failure.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
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

#define WATCHDOG_MS 30000
#define ROUND 12
#define BASE 7
#define ALICE 1
#define BOB 2
#define CHUNK (64u * 1024u) /* the server's max_chunk_bytes, and the raw clients' chunk size */

/* The layout of the model, of the round and of every update: "emb" f32 [256,1024] (1 MiB) and
 * "head" f32 [500000] (2,000,000 bytes). */
#define EMB_N (256u * 1024u)
#define HEAD_N 500000u
#define TOTAL ((uint64_t)(EMB_N + HEAD_N) * 4u)

static const fc_tensor_spec layout[2] = {
    {.name = "emb", .dtype = FC_DTYPE_F32, .ndim = 2, .shape = {256, 1024}},
    {.name = "head", .dtype = FC_DTYPE_F32, .ndim = 1, .shape = {HEAD_N}},
};

static float model_f[EMB_N + HEAD_N];  /* the served model */
static float update_f[EMB_N + HEAD_N]; /* every client's update (a delta) */

static void fill_data(void) {
    for (size_t i = 0; i < EMB_N + HEAD_N; i++) {
        model_f[i] = (float)((i * 2654435761u) % 1000003u) * 0.001f;
        update_f[i] = (float)((i * 40503u) % 65521u) * 1e-6f - 0.03f;
    }
}

static void stream_sha(const void *data, size_t n, uint8_t sha[32]) {
    unsigned len = 0;
    EVP_Digest(data, n, sha, &len, EVP_sha256(), NULL);
}

/* ---- server side ---- */

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
    uint8_t model_sha[FC_SHA256_BYTES];
    uint64_t round; /* what the round callback answers */
    int sinks, rejects;
    uint64_t sink_client;
    uint8_t *sunk; /* bytes of the last accepted update */
    uint64_t sunk_len;
    int gone_parked;                  /* presence(up = 0) calls that found an upload parked */
    uint64_t gone_round, gone_staged; /* what sess_server_parked said then */
    int parked_gone;                  /* parked_gone reports */
    uint64_t pg_client, pg_round;
    char pg_why[256];
} harness;

static fc_status round_cb(void *ctx, uint64_t client_id, sess_round_info *out, fc_error *err) {
    harness *h = ctx;
    (void)client_id, (void)err;
    out->round = h->round;
    out->base_version = BASE;
    out->specs = layout;
    out->n_specs = 2;
    return FC_OK;
}

static void sink_cb(void *ctx, sess_update *u) {
    harness *h = ctx;
    h->sinks++;
    h->sink_client = u->client_id;
    fc_model m = FC_MODEL_INIT;
    fc_error err = {0};
    free(h->sunk);
    h->sunk = malloc(fc_stage_total(u->stage));
    h->sunk_len = 0;
    if (h->sunk && fc_stage_view_model(u->stage, &m, &err) == FC_OK) {
        for (size_t i = 0; i < m.count; i++) {
            memcpy(h->sunk + h->sunk_len, m.tensors[i].data, m.tensors[i].nbytes);
            h->sunk_len += m.tensors[i].nbytes;
        }
        fc_model_free(&m);
    }
    sess_update_release(u);
}

static void reject_cb(void *ctx, uint64_t client_id, uint64_t round, fc_status st,
                      const char *reason) {
    harness *h = ctx;
    (void)client_id, (void)round, (void)st, (void)reason;
    h->rejects++;
}

static void presence_cb(void *ctx, uint64_t client_id, const char *name, int up) {
    harness *h = ctx;
    (void)name;
    if (!up && sess_server_parked(h->sv, client_id, &h->gone_round, &h->gone_staged))
        h->gone_parked++;
}

static void parked_gone_cb(void *ctx, uint64_t client_id, uint64_t round, const char *why) {
    harness *h = ctx;
    h->parked_gone++;
    h->pg_client = client_id;
    h->pg_round = round;
    snprintf(h->pg_why, sizeof h->pg_why, "%s", why);
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

typedef struct opts {
    uint64_t memory_limit; /* 0 = 4 * TOTAL */
    uint32_t keep_ms;
    uint64_t max_parked;
} opts;

static void h_start(harness *h, const opts *o) {
    memset(h, 0, sizeof *h);
    fc_error err = {0};
    h->round = ROUND;
    assert_int_equal(uv_loop_init(&h->loop), 0);
    assert_int_equal(uv_async_init(&h->loop, &h->wake, wake_cb), 0);
    assert_int_equal(uv_timer_init(&h->loop, &h->watchdog), 0);
    h->watchdog.data = h;
    assert_int_equal(sess_budget_new(&h->loop, o->memory_limit ? o->memory_limit : 4 * TOTAL, NULL,
                                     0, &h->budget, &err),
                     FC_OK);
    assert_int_equal(sess_auth_tokens_new(&h->auth, &err), FC_OK);
    assert_int_equal(
        sess_auth_tokens_add(h->auth, "alice", (const uint8_t *)"tok-alice", 9, ALICE, 0, &err),
        FC_OK);
    assert_int_equal(
        sess_auth_tokens_add(h->auth, "bob", (const uint8_t *)"tok-bob", 7, BOB, 0, &err), FC_OK);
    fc_model m = FC_MODEL_INIT;
    assert_int_equal(fc_model_add(&m, "emb", FC_DTYPE_F32, 2, layout[0].shape, model_f, &err),
                     FC_OK);
    assert_int_equal(
        fc_model_add(&m, "head", FC_DTYPE_F32, 1, layout[1].shape, model_f + EMB_N, &err), FC_OK);
    assert_int_equal(fc_stream_model_sha256(&m, h->model_sha, &err), FC_OK);
    assert_int_equal(sess_mem_model_new(BASE, &m, &h->model, &err), FC_OK);
    fc_model_free(&m);
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
        .presence = presence_cb,
        .presence_ctx = h,
        .parked_gone = parked_gone_cb,
        .parked_gone_ctx = h,
        .max_num_examples = 1000,
        .ack_every_bytes = CHUNK,
        .max_chunk_bytes = CHUNK,
        .resume_keep_ms = o->keep_ms,
        .resume_max_bytes = o->max_parked,
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
static int pred_parked(harness *h, void *arg) {
    sess_resume_stats rs;
    sess_server_resume_stats(h->sv, &rs);
    return rs.parked_now == (size_t)(uintptr_t)arg;
}
static int pred_gone(harness *h, void *arg) { return h->parked_gone >= (int)(uintptr_t)arg; }
static void listener_closed_cb(void *arg) { ((harness *)arg)->closed = 1; }
static void close_cb(uv_handle_t *hd) { (void)hd; }

/* Ends the test; parked stages (if any) are freed by sess_server_free. */
static void h_finish(harness *h) {
    net_close_all(h->l, FC_ERR_CLOSED, "test finished");
    net_listener_close(h->l, listener_closed_cb, h);
    h_run_until(h, pred_closed, NULL);
    sess_server_free(h->sv);
    assert_int_equal(sess_budget_memory_used(h->budget), 0);
    sess_budget_free(h->budget);
    sess_auth_tokens_free(h->auth);
    sess_mem_model_free(h->model);
    uv_close((uv_handle_t *)&h->wake, close_cb);
    uv_close((uv_handle_t *)&h->watchdog, close_cb);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&h->loop), 0);
    free(h->sunk);
}

static sess_resume_stats stats(harness *h) {
    sess_resume_stats rs;
    sess_server_resume_stats(h->sv, &rs);
    return rs;
}

/* ---- raw clients (threads) ---- */

typedef rawcl cl;

typedef struct job {
    harness *h;
    int (*fn)(struct job *j);
    atomic_int done;
    atomic_int step;   /* the client's progress, for the main thread */
    atomic_int resume; /* the main thread lets the client go on */
    char fail[1024];
    const char *name, *token;
    uint64_t cut_at;     /* first connection: stage this many bytes, then vanish */
    uint64_t resume_off; /* second connection: UpdateBegin.resume_offset */
    int delta2;          /* second connection: is_delta */
    uint64_t ack[4];     /* the offsets the UpdateBegins were answered with */
    uint64_t final;      /* offset of the Ack of UpdateEnd */
    int replace;         /* reconnect while the first connection is still open (c_two_sessions);
                            break the sequence instead of saying Bye (c_stage_and_quit) */
} job;

#define CHECK(j, cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            snprintf((j)->fail, sizeof(j)->fail, __VA_ARGS__);                                     \
            return 0;                                                                              \
        }                                                                                          \
    } while (0)

static int login(job *j, cl *c) {
    CHECK(j, rawcl_open(c, j->h->port, &pki, 0), "TLS connect failed");
    fc_wire_msg m;
    fc_error err = {0};
    fc_wire_hello_args a = {.client_name = j->name,
                            .token = {(const uint8_t *)j->token, strlen(j->token)},
                            .software = "test"};
    CHECK(j, fc_wire_hello(&m, 0, &a, &err) == FC_OK && rawcl_send(c, &m), "send Hello");
    fc_envelope *e = rawcl_recv(c);
    int ok = e && e->body_case == FEDCOORD__V1__ENVELOPE__BODY_WELCOME;
    fc_envelope_free(e);
    CHECK(j, ok, "no Welcome");
    return 1;
}

/* Sends UpdateBegin and reads its answer: *start = the Ack's offset. */
static int begin(job *j, cl *c, uint64_t resume_offset, int is_delta, uint64_t *start) {
    fc_error err = {0};
    fc_wire_update_begin_args a = {.round = ROUND,
                                   .base_version = BASE,
                                   .tensors = layout,
                                   .n_tensors = 2,
                                   .total_bytes = TOTAL,
                                   .is_delta = is_delta,
                                   .resume_offset = resume_offset};
    fc_wire_msg m;
    CHECK(j, fc_wire_update_begin(&m, 0, &a, &err) == FC_OK, "build UpdateBegin: %s", err.msg);
    CHECK(j, rawcl_send(c, &m), "send UpdateBegin");
    uint64_t seq = c->seq;
    fc_envelope *e = rawcl_recv(c);
    CHECK(j, e, "no answer to UpdateBegin");
    int ok = e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ACK && e->ack->ref_seq == seq;
    if (ok)
        *start = e->ack->offset;
    else if (e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ERROR)
        snprintf(j->fail, sizeof j->fail, "UpdateBegin refused: %s", e->error->message);
    else
        snprintf(j->fail, sizeof j->fail, "UpdateBegin answered with %s",
                 fc_wire_body_name(e->body_case));
    fc_envelope_free(e);
    return ok;
}

/* Sends the chunks of stream bytes [from, to) (to on a chunk boundary or TOTAL). */
static int send_range(job *j, cl *c, uint64_t from, uint64_t to) {
    fc_stream_splitter sp;
    fc_error err = {0};
    CHECK(j, fc_stream_split_specs(&sp, layout, 2, CHUNK, from, &err) == FC_OK, "split: %s",
          err.msg);
    fc_chunk_desc d;
    const uint8_t *bytes = (const uint8_t *)update_f;
    while (fc_stream_split_next(&sp, &d) && d.global_offset < to) {
        fc_buf b = FC_BUF_INIT;
        int ok = fc_frame_encode_chunk(++c->seq, d.tensor_index, d.offset, bytes + d.global_offset,
                                       d.len, 0, &b, &err) == FC_OK &&
                 rawcl_write(c, b.data, b.len);
        fc_buf_free(&b);
        CHECK(j, ok, "send chunk at %llu", (unsigned long long)d.global_offset);
    }
    return 1;
}

/* Reads until the server acknowledges `want` staged bytes. */
static int wait_acked(job *j, cl *c, uint64_t want) {
    for (;;) {
        fc_envelope *e = rawcl_recv(c);
        CHECK(j, e, "connection ended before %llu bytes were acknowledged",
              (unsigned long long)want);
        int done = e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ACK && e->ack->offset >= want;
        int error = e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ERROR;
        fc_envelope_free(e);
        CHECK(j, !error, "error while waiting for the Ack of %llu", (unsigned long long)want);
        if (done)
            return 1;
    }
}

/* UpdateEnd with the SHA-256 of the whole update, then the answer: j->final = Ack offset. */
static int finish(job *j, cl *c) {
    uint8_t sha[32];
    stream_sha(update_f, TOTAL, sha);
    fc_wire_msg m;
    fc_error err = {0};
    CHECK(j, fc_wire_update_end(&m, 0, sha, 10, NULL, 0, &err) == FC_OK, "build UpdateEnd");
    CHECK(j, rawcl_send(c, &m), "send UpdateEnd");
    uint64_t end_seq = c->seq;
    for (;;) {
        fc_envelope *e = rawcl_recv(c);
        CHECK(j, e, "connection ended before the answer to UpdateEnd");
        if (e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ERROR) {
            snprintf(j->fail, sizeof j->fail, "UpdateEnd refused: %s", e->error->message);
            fc_envelope_free(e);
            return 0;
        }
        int final = e->body_case == FEDCOORD__V1__ENVELOPE__BODY_ACK && e->ack->ref_seq == end_seq;
        if (final)
            j->final = e->ack->offset;
        fc_envelope_free(e);
        if (final)
            return 1;
    }
}

/* Waits (in the client thread) until the main thread sets j->resume. */
static void wait_go(job *j) {
    while (!atomic_load(&j->resume))
        usleep(1000);
}

/* First connection: stage cut_at bytes and vanish (or, with replace, stay open). Then, when
 * the main thread says so, a second session sends UpdateBegin(resume_off, delta2), the chunks
 * from where the server answered, and UpdateEnd. */
static int c_two_sessions(job *j) {
    cl c1, c2;
    uint64_t s = 0;
    if (!login(j, &c1) || !begin(j, &c1, 0, 1, &s)) {
        rawcl_free(&c1);
        return 0;
    }
    j->ack[0] = s;
    int ok = send_range(j, &c1, 0, j->cut_at) && (j->cut_at == 0 || wait_acked(j, &c1, j->cut_at));
    if (!j->replace)
        rawcl_free(&c1);
    if (!ok)
        return 0;
    atomic_store(&j->step, 1);
    uv_async_send(&j->h->wake);
    wait_go(j);
    ok = login(j, &c2) && begin(j, &c2, j->resume_off, j->delta2, &s);
    if (ok) {
        j->ack[1] = s;
        ok = send_range(j, &c2, s, TOTAL) && finish(j, &c2);
    }
    rawcl_free(&c2);
    if (j->replace)
        rawcl_free(&c1);
    return ok;
}

/* One session: stage cut_at bytes and vanish. */
static int c_stage_and_vanish(job *j) {
    cl c;
    uint64_t s = 0;
    int ok = login(j, &c) && begin(j, &c, 0, 1, &s) && send_range(j, &c, 0, j->cut_at) &&
             wait_acked(j, &c, j->cut_at);
    rawcl_free(&c);
    return ok;
}

/* One session: stage cut_at bytes, then give the upload up: Bye (iarg 0) or a frame out of
 * sequence, a protocol violation (iarg 1). */
static int c_stage_and_quit(job *j) {
    cl c;
    uint64_t s = 0;
    int ok = login(j, &c) && begin(j, &c, 0, 1, &s) && send_range(j, &c, 0, j->cut_at) &&
             wait_acked(j, &c, j->cut_at);
    if (ok) {
        fc_wire_msg m;
        fc_error err = {0};
        fc_wire_bye(&m, 0, "giving up", &err);
        if (j->replace)
            c.seq += 5; /* seq gap: PROTOCOL_VIOLATION */
        ok = rawcl_send(&c, &m);
        fc_envelope *e;
        while ((e = rawcl_recv(&c)) != NULL) /* until the server closes */
            fc_envelope_free(e);
    }
    rawcl_free(&c);
    return ok;
}

/* One whole upload from 0 in one session. */
static int c_whole(job *j) {
    cl c;
    uint64_t s = 1;
    int ok = login(j, &c) && begin(j, &c, 0, 1, &s);
    if (ok) {
        j->ack[0] = s;
        ok = send_range(j, &c, 0, TOTAL) && finish(j, &c);
    }
    rawcl_free(&c);
    return ok;
}

static void *job_main(void *arg) {
    job *j = arg;
    if (!j->name)
        j->name = "alice", j->token = "tok-alice";
    j->fn(j);
    atomic_store(&j->done, 1);
    uv_async_send(&j->h->wake);
    return NULL;
}

static int pred_job(harness *h, void *arg) {
    (void)h;
    return atomic_load(&((job *)arg)->done);
}
static int pred_step(harness *h, void *arg) {
    (void)h;
    return atomic_load(&((job *)arg)->step) >= 1 || atomic_load(&((job *)arg)->done);
}

static void job_start(harness *h, job *j, pthread_t *th) {
    j->h = h;
    assert_int_equal(pthread_create(th, NULL, job_main, j), 0);
}

static void job_end(harness *h, job *j, pthread_t th) {
    h_run_until(h, pred_job, j);
    pthread_join(th, NULL);
    if (j->fail[0])
        fail_msg("client: %s", j->fail);
    h_run_until(h, pred_no_sessions, NULL);
}

static void run_job(harness *h, job *j) {
    pthread_t th;
    job_start(h, j, &th);
    job_end(h, j, th);
}

/* 1 MiB + 5 chunks: the cut falls inside the second tensor. */
#define CUT ((uint64_t)(EMB_N * 4u) + 5u * CHUNK)

/* Runs c_two_sessions: the first part is staged and parked before the second session. */
static void two_sessions(harness *h, job *j) {
    pthread_t th;
    j->fn = c_two_sessions;
    job_start(h, j, &th);
    h_run_until(h, pred_step, j);
    if (j->fail[0] || atomic_load(&j->done)) {
        pthread_join(th, NULL);
        fail_msg("client: %s", j->fail);
    }
    if (!j->replace) { /* the first connection is gone: once its session ended, it is parked */
        h_run_until(h, pred_no_sessions, NULL);
        assert_int_equal(stats(h).parked_now, 1);
        assert_int_equal(stats(h).parked_bytes_now, TOTAL);
        assert_int_equal(sess_budget_memory_used(h->budget), TOTAL);
    }
    atomic_store(&j->resume, 1);
    job_end(h, j, th);
}

/* ---- tests: raw clients ---- */

static void test_upload_resumes_from_the_staged_bytes_after_a_disconnect(void **state) {
    (void)state;
    harness h;
    opts o = {0};
    h_start(&h, &o);
    job j = {.cut_at = CUT, .resume_off = CUT, .delta2 = 1};
    two_sessions(&h, &j);
    assert_int_equal(j.ack[0], 0);
    assert_int_equal(j.ack[1], CUT); /* the second session continued from the staged bytes */
    /* the owner could see the parked upload when the first session's end was reported */
    assert_int_equal(h.gone_parked, 1);
    assert_int_equal(h.gone_round, ROUND);
    assert_int_equal(h.gone_staged, CUT);
    assert_int_equal(h.parked_gone, 0); /* resumed, not gone */
    assert_int_equal(j.final, TOTAL);
    assert_int_equal(h.sinks, 1);
    assert_int_equal(h.sink_client, ALICE);
    assert_int_equal(h.sunk_len, TOTAL);
    assert_memory_equal(h.sunk, update_f, TOTAL);
    sess_resume_stats rs = stats(&h);
    assert_int_equal(rs.parked, 1);
    assert_int_equal(rs.resumed, 1);
    assert_int_equal(rs.resumed_bytes, CUT);
    assert_int_equal(sess_server_resumed_bytes(h.sv), CUT);
    assert_int_equal(rs.fresh, 0);
    assert_int_equal(rs.parked_now, 0);
    assert_int_equal(sess_budget_memory_used(h.budget), 0); /* the sink released the stage */
    h_finish(&h);
}

/* A client offering more than the server holds (it sent bytes that never arrived) continues
 * from what the server holds: S <= resume_offset. */
static void
test_resume_offset_above_the_staged_bytes_continues_from_the_staged_bytes(void **state) {
    (void)state;
    harness h;
    opts o = {0};
    h_start(&h, &o);
    job j = {.cut_at = CUT, .resume_off = CUT + 3 * CHUNK, .delta2 = 1};
    two_sessions(&h, &j);
    assert_int_equal(j.ack[1], CUT);
    assert_int_equal(h.sinks, 1);
    assert_memory_equal(h.sunk, update_f, TOTAL);
    assert_int_equal(stats(&h).resumed_bytes, CUT);
    h_finish(&h);
}

/* The old connection is still open (half-open from the server's view) when the client comes
 * back: the new session replaces it, and the replaced session's upload is parked. */
static void test_replaced_session_parks_its_upload_for_the_new_one(void **state) {
    (void)state;
    harness h;
    opts o = {0};
    h_start(&h, &o);
    job j = {.cut_at = CUT, .resume_off = CUT, .delta2 = 1, .replace = 1};
    two_sessions(&h, &j);
    assert_int_equal(j.ack[1], CUT);
    assert_int_equal(h.sinks, 1);
    assert_memory_equal(h.sunk, update_f, TOTAL);
    assert_int_equal(stats(&h).resumed, 1);
    h_finish(&h);
}

/* Each mismatch starts the upload at 0, frees the parked stage first, and the whole update
 * then arrives intact. */
static void check_fresh(uint64_t resume_off, int delta2) {
    harness h;
    opts o = {0};
    h_start(&h, &o);
    job j = {.cut_at = CUT, .resume_off = resume_off, .delta2 = delta2};
    two_sessions(&h, &j);
    assert_int_equal(j.ack[1], 0);
    assert_int_equal(j.final, TOTAL);
    assert_int_equal(h.sinks, 1);
    assert_memory_equal(h.sunk, update_f, TOTAL);
    sess_resume_stats rs = stats(&h);
    assert_int_equal(rs.parked, 1);
    assert_int_equal(rs.resumed, 0);
    assert_int_equal(rs.resumed_bytes, 0);
    assert_int_equal(rs.fresh, 1);
    assert_int_equal(rs.dropped, 1);
    assert_int_equal(rs.parked_now, 0);
    h_run_until(&h, pred_gone, (void *)(uintptr_t)1); /* reported from the timer, not inline */
    assert_int_equal(h.parked_gone, 1);
    assert_int_equal(h.pg_client, ALICE);
    assert_int_equal(h.pg_round, ROUND);
    h_finish(&h);
}

static void test_resume_offset_below_the_staged_bytes_starts_fresh(void **state) {
    (void)state;
    check_fresh(CUT - CHUNK, 1); /* staged bytes cannot be taken back */
}

static void test_resume_offset_zero_starts_fresh(void **state) {
    (void)state;
    check_fresh(0, 1);
}

static void test_resume_of_a_delta_as_weights_starts_fresh(void **state) {
    (void)state;
    check_fresh(CUT, 0);
}

/* A first session that staged nothing leaves nothing parked; the second session's
 * resume_offset > 0 is then answered with 0. */
static void test_resume_with_nothing_parked_starts_at_zero(void **state) {
    (void)state;
    harness h;
    opts o = {0};
    h_start(&h, &o);
    job j = {.fn = c_two_sessions, .cut_at = 0, .resume_off = 5 * CHUNK, .delta2 = 1};
    pthread_t th;
    job_start(&h, &j, &th);
    h_run_until(&h, pred_step, &j);
    h_run_until(&h, pred_no_sessions, NULL);
    assert_int_equal(stats(&h).parked_now, 0); /* 0 bytes staged: nothing to keep */
    atomic_store(&j.resume, 1);
    job_end(&h, &j, th);
    assert_int_equal(j.ack[1], 0);
    assert_int_equal(h.sinks, 1);
    assert_memory_equal(h.sunk, update_f, TOTAL);
    sess_resume_stats rs = stats(&h);
    assert_int_equal(rs.parked, 0);
    assert_int_equal(rs.fresh, 1);
    h_finish(&h);
}

/* A client that gives its upload up (Bye), or breaks the stream, leaves nothing parked. */
static void test_bye_or_protocol_violation_mid_upload_parks_nothing(void **state) {
    (void)state;
    for (int violation = 0; violation < 2; violation++) {
        harness h;
        opts o = {0};
        h_start(&h, &o);
        job j = {.fn = c_stage_and_quit, .cut_at = CUT, .replace = violation};
        run_job(&h, &j);
        sess_resume_stats rs = stats(&h);
        assert_int_equal(rs.parked, 0);
        assert_int_equal(rs.parked_now, 0);
        assert_int_equal(sess_budget_memory_used(h.budget), 0);
        h_finish(&h);
    }
}

static void test_parked_stage_expires_and_returns_its_bytes_to_the_budget(void **state) {
    (void)state;
    harness h;
    opts o = {.keep_ms = 150};
    h_start(&h, &o);
    job j = {.fn = c_stage_and_vanish, .cut_at = CUT};
    run_job(&h, &j);
    h_run_until(&h, pred_parked, (void *)(uintptr_t)1);
    assert_int_equal(sess_budget_memory_used(h.budget), TOTAL);
    uint64_t t0 = uv_now(&h.loop);
    h_run_until(&h, pred_parked, (void *)(uintptr_t)0);
    uv_update_time(&h.loop);
    /* not before its time: 150 ms after parking, and t0 came at most a loop turn after it */
    assert_true(uv_now(&h.loop) - t0 >= 75);
    assert_int_equal(sess_budget_memory_used(h.budget), 0);
    sess_resume_stats rs = stats(&h);
    assert_int_equal(rs.expired, 1);
    assert_int_equal(rs.dropped, 0);
    assert_int_equal(rs.parked_bytes_now, 0);
    h_run_until(&h, pred_gone, (void *)(uintptr_t)1);
    assert_int_equal(h.pg_client, ALICE);
    assert_int_equal(h.pg_round, ROUND);
    assert_non_null(strstr(h.pg_why, "not resumed within 150 ms"));
    h_finish(&h);
}

static void test_parked_stage_is_freed_when_the_round_moves_on(void **state) {
    (void)state;
    harness h;
    opts o = {0}; /* 60 s keep: only the round check can free it in time */
    h_start(&h, &o);
    job j = {.fn = c_stage_and_vanish, .cut_at = CUT};
    run_job(&h, &j);
    h_run_until(&h, pred_parked, (void *)(uintptr_t)1);
    sess_server_round_changed(h.sv); /* still round 12: kept */
    assert_int_equal(stats(&h).parked_now, 1);
    h.round = ROUND + 1;
    sess_server_round_changed(h.sv);
    assert_int_equal(stats(&h).parked_now, 0);
    assert_int_equal(stats(&h).dropped, 1);
    assert_int_equal(sess_budget_memory_used(h.budget), 0);
    assert_int_equal(h.parked_gone, 0); /* never inside the owner's own call */
    h_run_until(&h, pred_gone, (void *)(uintptr_t)1);
    assert_non_null(strstr(h.pg_why, "round 12 from version 7 is over"));
    /* the same through the timer alone (a sweep at least once a second) */
    h.round = ROUND;
    job j2 = {.fn = c_stage_and_vanish, .cut_at = CUT};
    run_job(&h, &j2);
    h_run_until(&h, pred_parked, (void *)(uintptr_t)1);
    h.round = ROUND + 1;
    h_run_until(&h, pred_parked, (void *)(uintptr_t)0);
    assert_int_equal(stats(&h).dropped, 2);
    assert_int_equal(stats(&h).expired, 0);
    assert_int_equal(sess_budget_memory_used(h.budget), 0);
    h_finish(&h);
}

/* resume_max_bytes = one update: bob's parked stage evicts alice's (oldest first); one larger
 * than the cap is not parked at all. The budget counts exactly the parked buffers. */
static void test_parked_bytes_are_capped_oldest_evicted_first(void **state) {
    (void)state;
    harness h;
    opts o = {.max_parked = TOTAL};
    h_start(&h, &o);
    job a = {.fn = c_stage_and_vanish, .cut_at = CUT};
    run_job(&h, &a);
    h_run_until(&h, pred_parked, (void *)(uintptr_t)1);
    assert_int_equal(sess_budget_memory_used(h.budget), TOTAL);
    job b = {.fn = c_stage_and_vanish, .cut_at = 2 * CHUNK, .name = "bob", .token = "tok-bob"};
    run_job(&h, &b);
    sess_resume_stats rs = stats(&h);
    assert_int_equal(rs.parked, 2);
    assert_int_equal(rs.parked_now, 1);
    assert_int_equal(rs.dropped, 1); /* alice's, evicted */
    assert_int_equal(rs.parked_bytes_now, TOTAL);
    assert_int_equal(sess_budget_memory_used(h.budget), TOTAL);
    /* alice comes back: nothing of hers is left, so she starts at 0 */
    job a2 = {.fn = c_two_sessions, .cut_at = CHUNK, .resume_off = CUT, .delta2 = 1};
    two_sessions(&h, &a2); /* her new first part evicts bob's in turn */
    assert_int_equal(a2.ack[1], CHUNK);
    assert_memory_equal(h.sunk, update_f, TOTAL);
    h_finish(&h);

    opts small = {.max_parked = TOTAL - 1};
    h_start(&h, &small);
    job c = {.fn = c_stage_and_vanish, .cut_at = CUT};
    run_job(&h, &c);
    assert_int_equal(stats(&h).parked, 0);
    assert_int_equal(stats(&h).parked_now, 0);
    assert_int_equal(sess_budget_memory_used(h.budget), 0);
    h_finish(&h);
}

/* The budget holds one update and a bit: alice's parked stage must not make bob wait. */
static void test_live_upload_evicts_parked_stages_when_the_budget_is_full(void **state) {
    (void)state;
    harness h;
    opts o = {.memory_limit = TOTAL + 4096};
    h_start(&h, &o);
    job a = {.fn = c_stage_and_vanish, .cut_at = CUT};
    run_job(&h, &a);
    h_run_until(&h, pred_parked, (void *)(uintptr_t)1);
    assert_int_equal(sess_budget_memory_used(h.budget), TOTAL);
    job b = {.fn = c_whole, .name = "bob", .token = "tok-bob"};
    run_job(&h, &b);
    assert_int_equal(b.final, TOTAL);
    assert_int_equal(h.sinks, 1);
    assert_int_equal(h.sink_client, BOB);
    assert_memory_equal(h.sunk, update_f, TOTAL);
    sess_resume_stats rs = stats(&h);
    assert_int_equal(rs.parked_now, 0);
    assert_int_equal(rs.dropped, 1);
    assert_int_equal(sess_budget_waiting(h.budget), 0);
    h_run_until(&h, pred_gone, (void *)(uintptr_t)1);
    assert_int_equal(h.pg_client, ALICE);
    assert_non_null(strstr(h.pg_why, "a live upload needs the staging budget"));
    assert_int_equal(sess_budget_memory_used(h.budget), 0);
    h_finish(&h);
}

/* ---- the cutting proxy ---- */

/* Relays one connection at a time between the SDK and the server, and cuts (closes both sides)
 * after a planned number of bytes in one direction: plan_up[k] client-to-server bytes on the
 * connection that takes the k-th upstream cut, plan_down likewise server-to-client. */
#define MAX_CUTS 8
typedef struct proxy {
    int lfd, port, server_port;
    atomic_int stop;
    uint64_t plan_up[MAX_CUTS], plan_down[MAX_CUTS];
    int n_up, n_down;
    atomic_int cuts_up, cuts_down, conns;
    uint64_t relayed_up; /* client-to-server bytes over all connections */
} proxy;

static uint64_t rng_next(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static int connect_server(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
        return fd;
    if (fd >= 0)
        close(fd);
    return -1;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return 0;
        p += w, n -= (size_t)w;
    }
    return 1;
}

/* Relays until one side ends or a cut is due. */
static void relay(proxy *p, int cfd, int sfd) {
    int up_k = atomic_load(&p->cuts_up), down_k = atomic_load(&p->cuts_down);
    uint64_t up_at = up_k < p->n_up ? p->plan_up[up_k] : UINT64_MAX;
    uint64_t down_at = down_k < p->n_down ? p->plan_down[down_k] : UINT64_MAX;
    uint64_t up = 0, down = 0;
    static uint8_t buf[65536];
    while (!atomic_load(&p->stop)) {
        struct pollfd fds[2] = {{cfd, POLLIN, 0}, {sfd, POLLIN, 0}};
        if (poll(fds, 2, 50) < 0)
            return;
        for (int k = 0; k < 2; k++) {
            if (!(fds[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            int src = k == 0 ? cfd : sfd, dst = k == 0 ? sfd : cfd;
            uint64_t *count = k == 0 ? &up : &down, at = k == 0 ? up_at : down_at;
            size_t want = sizeof buf;
            if (at - *count < want)
                want = (size_t)(at - *count);
            ssize_t r = recv(src, buf, want, 0);
            if (r <= 0 || !write_all(dst, buf, (size_t)r))
                return;
            *count += (uint64_t)r;
            if (k == 0)
                p->relayed_up += (uint64_t)r;
            if (*count >= at) { /* cut here: exactly `at` bytes went through */
                atomic_fetch_add(k == 0 ? &p->cuts_up : &p->cuts_down, 1);
                return;
            }
        }
    }
}

static void *proxy_main(void *arg) {
    proxy *p = arg;
    while (!atomic_load(&p->stop)) {
        struct pollfd pf = {p->lfd, POLLIN, 0};
        if (poll(&pf, 1, 50) <= 0)
            continue;
        int cfd = accept(p->lfd, NULL, NULL);
        if (cfd < 0)
            continue;
        atomic_fetch_add(&p->conns, 1);
        int sfd = connect_server(p->server_port);
        if (sfd >= 0) {
            relay(p, cfd, sfd);
            /* A plain FIN: the server still reads every byte relayed before the cut (a reset
             * would let its kernel drop them unread), then sees the stream end without a Bye */
            close(sfd);
        }
        close(cfd);
    }
    return NULL;
}

static void proxy_start(proxy *p, int server_port, uint64_t seed, pthread_t *th) {
    p->server_port = server_port;
    /* cut positions in [128 KiB, 640 KiB): at least two chunks get through each time, and
     * three cuts never add up to a whole transfer, so every planned cut lands mid-transfer */
    for (int k = 0; k < p->n_up; k++)
        p->plan_up[k] = 128 * 1024 + rng_next(&seed) % (512 * 1024);
    for (int k = 0; k < p->n_down; k++)
        p->plan_down[k] = 128 * 1024 + rng_next(&seed) % (512 * 1024);
    p->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    socklen_t len = sizeof a;
    assert_true(p->lfd >= 0);
    assert_int_equal(bind(p->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(p->lfd, 8), 0);
    assert_int_equal(getsockname(p->lfd, (struct sockaddr *)&a, &len), 0);
    p->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(th, NULL, proxy_main, p), 0);
}

static void proxy_stop(proxy *p, pthread_t th) {
    atomic_store(&p->stop, 1);
    pthread_join(th, NULL);
    close(p->lfd);
}

/* ---- the SDK through the proxy ---- */

typedef struct sdk_job {
    harness *h;
    int proxy_port;
    atomic_int done;
    char fail[1024];
    int model_ok;
    uint64_t model_bytes;
} sdk_job;

static void *sdk_main(void *arg) {
    sdk_job *j = arg;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", j->proxy_port);
    fc_client_config cfg = FC_CLIENT_CONFIG_INIT;
    cfg.server = addr;
    cfg.ca_file = pki.ca_cert;
    cfg.token = "tok-alice";
    cfg.client_name = "alice";
    cfg.io_timeout_ms = 10000;
    cfg.reconnect_max_attempts = 20;
    cfg.reconnect_base_ms = 5;
    cfg.reconnect_max_ms = 20;
    fc_client *c = NULL;
    fc_task *t = NULL;
    fc_status st = fc_client_open(&cfg, &c);
    if (st == FC_OK)
        st = fc_client_next_task(c, 20000, &t);
    if (st == FC_OK && !t)
        st = FC_ERR_CLOSED;
    if (st == FC_OK) {
        /* the downloaded model, byte for byte */
        fc_tensor_info a, b;
        j->model_ok = fc_task_tensor_count(t) == 2 && fc_task_tensor(t, 0, &a) == FC_OK &&
                      fc_task_tensor(t, 1, &b) == FC_OK && a.nbytes == EMB_N * 4u &&
                      b.nbytes == HEAD_N * 4u && memcmp(a.data, model_f, a.nbytes) == 0 &&
                      memcmp(b.data, model_f + EMB_N, b.nbytes) == 0;
        j->model_bytes = a.nbytes + b.nbytes;
        const void *tensors[2] = {update_f, update_f + EMB_N};
        fc_metric met = {"train_loss", 0.25};
        st = fc_client_submit(c, t, FC_SUBMIT_DELTA, tensors, 10, &met, 1);
    }
    if (st != FC_OK)
        snprintf(j->fail, sizeof j->fail, "SDK: %s: %s", fc_status_name(st),
                 c ? fc_client_error(c) : "no client");
    fc_task_free(t);
    fc_client_close(c);
    atomic_store(&j->done, 1);
    uv_async_send(&j->h->wake);
    return NULL;
}

static int pred_sdk_done(harness *h, void *arg) {
    (void)h;
    return atomic_load(&((sdk_job *)arg)->done);
}
static int pred_sdk_ready(harness *h, void *arg) {
    return atomic_load(&((sdk_job *)arg)->done) ||
           (sess_find(h->sv, ALICE) && sess_get_state(sess_find(h->sv, ALICE)) == SESS_READY);
}

static void test_sdk_download_and_upload_resume_through_a_cutting_proxy(void **state) {
    (void)state;
    harness h;
    opts o = {0};
    h_start(&h, &o);
    proxy p;
    memset(&p, 0, sizeof p);
    p.n_up = 3;
    p.n_down = 3;
    pthread_t pth, cth;
    proxy_start(&p, h.port, 0x5eedf00dull, &pth);
    sdk_job j;
    memset(&j, 0, sizeof j);
    j.h = &h;
    j.proxy_port = p.port;
    assert_int_equal(pthread_create(&cth, NULL, sdk_main, &j), 0);
    h_run_until(&h, pred_sdk_ready, &j);
    if (!atomic_load(&j.done)) {
        fc_wire_task_args ta = {.round = ROUND,
                                .kind = FC_TASK_TRAIN,
                                .model_version = BASE,
                                .tensors = layout,
                                .n_tensors = 2,
                                .model_sha256 = h.model_sha,
                                .model_bytes = TOTAL};
        fc_error err = {0};
        assert_int_equal(sess_send_task(sess_find(h.sv, ALICE), &ta, &err), FC_OK);
    }
    h_run_until(&h, pred_sdk_done, &j);
    pthread_join(cth, NULL);
    proxy_stop(&p, pth);
    if (j.fail[0])
        fail_msg("%s", j.fail);
    sess_resume_stats rs = stats(&h);
    printf("proxy: %d connections, %d download cuts at", atomic_load(&p.conns),
           atomic_load(&p.cuts_down));
    for (int k = 0; k < p.n_down; k++)
        printf(" %llu", (unsigned long long)p.plan_down[k]);
    printf(", %d upload cuts at", atomic_load(&p.cuts_up));
    for (int k = 0; k < p.n_up; k++)
        printf(" %llu", (unsigned long long)p.plan_up[k]);
    printf("; %llu bytes relayed upstream for a %llu-byte update\n",
           (unsigned long long)p.relayed_up, (unsigned long long)TOTAL);
    printf("server: downloads resumed %llu (%llu bytes not resent), uploads parked %llu, "
           "resumed %llu (%llu bytes not resent), fresh %llu\n",
           (unsigned long long)rs.downloads_resumed, (unsigned long long)rs.download_resumed_bytes,
           (unsigned long long)rs.parked, (unsigned long long)rs.resumed,
           (unsigned long long)rs.resumed_bytes, (unsigned long long)rs.fresh);
    /* every planned cut happened, mid-transfer */
    assert_int_equal(atomic_load(&p.cuts_down), p.n_down);
    assert_int_equal(atomic_load(&p.cuts_up), p.n_up);
    /* exact bytes both ways */
    assert_true(j.model_ok);
    assert_int_equal(j.model_bytes, TOTAL);
    assert_int_equal(h.sinks, 1);
    assert_int_equal(h.sunk_len, TOTAL);
    assert_memory_equal(h.sunk, update_f, TOTAL);
    /* both transfers continued from offsets above 0 */
    assert_true(rs.downloads_resumed >= 1);
    assert_true(rs.download_resumed_bytes > 0);
    assert_true(rs.resumed >= 1);
    assert_true(sess_server_resumed_bytes(h.sv) > 0);
    /* and what was resumed was not sent again: the bytes through the proxy upstream stay below
     * the update plus what every cut connection carried after its last staged chunk (< 2
     * chunks each, the cut connection's handshake and frame overhead included) */
    assert_true(p.relayed_up < TOTAL + (uint64_t)(p.n_up + p.n_down + 1) * (2 * CHUNK + 16384));
    h_run_until(&h, pred_no_sessions, NULL);
    h_finish(&h);
}

static int group_setup(void **state) {
    (void)state;
    fc_error err = {0};
    signal(SIGPIPE, SIG_IGN); /* net.h: libuv writes with write(2); the proxy cuts sockets */
    fill_data();
    if (tlsgen_create(NULL, &pki, &err) != FC_OK) {
        fprintf(stderr, "tlsgen: %s\n", fc_error_text(&err));
        return -1;
    }
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_upload_resumes_from_the_staged_bytes_after_a_disconnect),
        cmocka_unit_test(test_resume_offset_above_the_staged_bytes_continues_from_the_staged_bytes),
        cmocka_unit_test(test_replaced_session_parks_its_upload_for_the_new_one),
        cmocka_unit_test(test_resume_offset_below_the_staged_bytes_starts_fresh),
        cmocka_unit_test(test_resume_offset_zero_starts_fresh),
        cmocka_unit_test(test_resume_of_a_delta_as_weights_starts_fresh),
        cmocka_unit_test(test_resume_with_nothing_parked_starts_at_zero),
        cmocka_unit_test(test_bye_or_protocol_violation_mid_upload_parks_nothing),
        cmocka_unit_test(test_parked_stage_expires_and_returns_its_bytes_to_the_budget),
        cmocka_unit_test(test_parked_stage_is_freed_when_the_round_moves_on),
        cmocka_unit_test(test_parked_bytes_are_capped_oldest_evicted_first),
        cmocka_unit_test(test_live_upload_evicts_parked_stages_when_the_budget_is_full),
        cmocka_unit_test(test_sdk_download_and_upload_resume_through_a_cutting_proxy),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
