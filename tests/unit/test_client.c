/* test_client.c: the client SDK against a protocol conformance peer.
 *
 * The peer is a real TLS server on loopback built from server/net (libuv) running in its own
 * thread, speaking the real frame protocol through proto/wire: it plays the coordinator's side
 * (Welcome, Task, model download, upload verification, Acks, Errors, drops), steered by knobs
 * each test sets before starting it. It is not the daemon. Results are read after the peer
 * thread has been joined, so no test depends on timing beyond generous bounds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include "core/alloc.h"
#include "core/status.h"
#include "core/tensor.h"
#include "proto/frame.h"
#include "proto/stream.h"
#include "proto/wire.h"
#include "server/net.h"
#include "tests/lib/tlsgen.h"

#include "fedcoord/client.h"

static tlsgen_pki pki;

/* ---- the model the peer serves: w f32[2,3], b f32[3], s f64 scalar (44 bytes) ---- */

static const float MODEL_W[6] = {1, 2, 3, 4, 5, 6};
static const float MODEL_B[3] = {0.5f, -1, 2};
static const double MODEL_S = 10.0;
/* Deltas the tests train: dyadic values, so w_t + d and (w_t + d) - w_t are exact in f32. */
static const float DW[6] = {0.25f, -0.5f, 1, 0, 2, -3};
static const float DB[3] = {-0.125f, 4, 0.5f};
static const double DS = -2.5;

static void build_model(fc_model *m, const float *w, const float *b, double s) {
    fc_error err = {0};
    uint64_t sw[2] = {2, 3}, sb[1] = {3};
    assert_int_equal(fc_model_add(m, "w", FC_DTYPE_F32, 2, sw, w, &err), FC_OK);
    assert_int_equal(fc_model_add(m, "b", FC_DTYPE_F32, 1, sb, b, &err), FC_OK);
    assert_int_equal(fc_model_add(m, "s", FC_DTYPE_F64, 0, NULL, &s, &err), FC_OK);
}

/* ---- the peer ---- */

typedef struct peer {
    /* knobs, set before peer_start */
    uint32_t welcome_major;         /* 0 = ours */
    uint32_t heartbeat_ms;          /* Welcome.heartbeat_interval_ms */
    uint32_t max_chunk;             /* Welcome.max_chunk_bytes, and download chunk size */
    int task_on_connection;         /* send the Task after the Nth Welcome (0 = never) */
    int task_kind;                  /* 1 train, 2 evaluate */
    int heartbeat_before_task;      /* send a Heartbeat frame first */
    int corrupt_downloads;          /* flip a byte in this many downloads */
    int drop_on_connection;         /* close the Nth connection right after Welcome */
    int close_listener_on_drop;     /* ...and stop listening: the server "never comes back" */
    int drop_upload_after_chunks;   /* ack and close after this many upload chunks (once) */
    int drop_download_after_chunks; /* close after sending this many model chunks (once) */
    int reject_update;              /* answer UpdateEnd with Error SHAPE_MISMATCH */
    int bye_instead_of_task;        /* send Bye where the Task would go */
    int require_client_cert;        /* mutual TLS: REQUIRE */
    int drop_after_model;           /* close right after ModelEnd (server idle timeout) */
    int heartbeat_everywhere;       /* a Heartbeat before every answer and between chunks */

    /* loop-thread state */
    uv_loop_t loop;
    uv_async_t stop;
    net_listener *l;
    int port;
    pthread_t th;
    fc_model model;
    uint8_t model_sha[FC_SHA256_BYTES];
    uint64_t model_bytes;
    fc_stage *up;
    int upload_dropped;

    /* results, read after peer_stop */
    int connections, hellos, heartbeats, model_requests, byes, evals, update_begins;
    int download_dropped;
    uint64_t last_model_offset;
    int second_hello_had_resume_token;
    uint64_t last_resume_offset;
    int is_delta;
    int update_ok;
    uint8_t update_sha[FC_SHA256_BYTES];
    uint8_t *update_data;
    uint64_t update_len;
    uint64_t num_examples;
    double metric_loss;
    int metric_count;
    uint64_t eval_examples;
    double eval_accuracy;
    char hello_name[64];
} peer;

typedef struct pconn {
    peer *p;
    net_conn *c;
    fc_frame_decoder dec;
    uint64_t seq;
    int index; /* 1-based connection number */
} pconn;

static void psend(pconn *pc, fc_wire_msg *m) {
    fc_buf out = {0};
    fc_error err = {0};
    if (fc_wire_encode(m, 0, &out, &err) != FC_OK)
        fail_msg("peer encode: %s", err.msg);
    fc_wire_msg_free(m);
    net_write(pc->c, out.data, out.len);
    fc_buf_free(&out);
}

/* A server Heartbeat where the SDK waits for something else (knob heartbeat_everywhere). */
static void heartbeat_here(pconn *pc) {
    if (!pc->p->heartbeat_everywhere)
        return;
    fc_error err = {0};
    fc_wire_msg m;
    assert_int_equal(fc_wire_heartbeat(&m, ++pc->seq, 1, &err), FC_OK);
    psend(pc, &m);
}

static void send_task(pconn *pc) {
    peer *p = pc->p;
    fc_error err = {0};
    fc_wire_msg m;
    if (p->bye_instead_of_task) {
        assert_int_equal(fc_wire_bye(&m, ++pc->seq, "training finished", &err), FC_OK);
        psend(pc, &m);
        return;
    }
    if (p->heartbeat_before_task) {
        assert_int_equal(fc_wire_heartbeat(&m, ++pc->seq, 1, &err), FC_OK);
        psend(pc, &m);
    }
    fc_tensor_spec specs[4];
    assert_true(p->model.count <= 4);
    for (size_t i = 0; i < p->model.count; i++)
        specs[i] = p->model.tensors[i].spec;
    fc_wire_kv cfg[] = {{"lr", "0.05"}, {"local_epochs", "3"}, {"mu", "0.5"}, {"bad", "x1"}};
    fc_wire_task_args a;
    memset(&a, 0, sizeof a);
    a.round = 7;
    a.kind = p->task_kind == 2 ? FC_TASK_EVALUATE : FC_TASK_TRAIN;
    a.model_version = 3;
    a.config = cfg;
    a.n_config = 4;
    a.tensors = specs;
    a.n_tensors = p->model.count;
    a.model_sha256 = p->model_sha;
    a.model_bytes = p->model_bytes;
    if (fc_wire_task(&m, ++pc->seq, &a, &err) != FC_OK)
        fail_msg("peer task: %s", err.msg);
    psend(pc, &m);
}

static void drop(pconn *pc);

static void send_model(pconn *pc, const Fedcoord__V1__ModelRequest *r) {
    peer *p = pc->p;
    fc_error err = {0};
    fc_wire_msg m;
    fc_tensor_spec specs[4];
    assert_true(p->model.count <= 4);
    for (size_t i = 0; i < p->model.count; i++)
        specs[i] = p->model.tensors[i].spec;
    heartbeat_here(pc);
    assert_int_equal(fc_wire_model_begin(&m, ++pc->seq, 3, specs, p->model.count, p->model_bytes,
                                         p->model_sha, r->offset, &err),
                     FC_OK);
    psend(pc, &m);
    fc_stream_splitter sp;
    assert_int_equal(fc_stream_split_model(&sp, &p->model, p->max_chunk, r->offset, &err), FC_OK);
    int corrupt = p->corrupt_downloads > 0;
    if (corrupt)
        p->corrupt_downloads--;
    p->last_model_offset = r->offset;
    int sent = 0;
    fc_chunk_desc d;
    while (fc_stream_split_next(&sp, &d)) {
        if (p->drop_download_after_chunks && !p->download_dropped &&
            sent == p->drop_download_after_chunks) {
            p->download_dropped = 1;
            drop(pc);
            return;
        }
        sent++;
        uint8_t buf[64];
        assert_true(d.len <= sizeof buf);
        memcpy(buf, d.data, d.len);
        if (corrupt) {
            buf[0] ^= 0x40;
            corrupt = 0;
        }
        fc_buf out = {0};
        assert_int_equal(
            fc_frame_encode_chunk(++pc->seq, d.tensor_index, d.offset, buf, d.len, 0, &out, &err),
            FC_OK);
        net_write(pc->c, out.data, out.len);
        fc_buf_free(&out);
        heartbeat_here(pc);
    }
    assert_int_equal(fc_wire_model_end(&m, ++pc->seq, 3, p->model_sha, &err), FC_OK);
    psend(pc, &m);
    if (p->drop_after_model)
        drop(pc);
}

static void drop(pconn *pc) {
    peer *p = pc->p;
    net_close(pc->c, FC_ERR_CLOSED, "peer drops the connection");
    if (p->close_listener_on_drop && p->l) {
        net_listener_close(p->l, NULL, NULL);
        p->l = NULL;
    }
}

static void on_chunk(pconn *pc, const fc_chunk_view *v) {
    peer *p = pc->p;
    fc_error err = {0};
    assert_non_null(p->up);
    if (fc_stage_add_chunk(p->up, v->tensor_index, v->offset, v->data, v->data_len, &err) != FC_OK)
        fail_msg("peer: upload chunk rejected: %s", err.msg);
    if (p->drop_upload_after_chunks && !p->upload_dropped &&
        fc_stage_received(p->up) >= (uint64_t)p->drop_upload_after_chunks * p->max_chunk) {
        p->upload_dropped = 1;
        fc_wire_msg m;
        assert_int_equal(fc_wire_ack(&m, ++pc->seq, v->seq, fc_stage_received(p->up), NULL, &err),
                         FC_OK);
        psend(pc, &m);
        drop(pc);
    }
}

static void on_message(pconn *pc, fc_envelope *env) {
    peer *p = pc->p;
    fc_error err = {0};
    fc_wire_msg m;
    switch (env->body_case) {
    case FEDCOORD__V1__ENVELOPE__BODY_HELLO: {
        p->hellos++;
        if (p->hellos == 2)
            p->second_hello_had_resume_token =
                env->hello->resume_token.len == 5 &&
                memcmp(env->hello->resume_token.data, "tok-1", 5) == 0;
        snprintf(p->hello_name, sizeof p->hello_name, "%s", env->hello->client_name);
        char tok[16];
        snprintf(tok, sizeof tok, "tok-%d", pc->index);
        static const char *const caps[] = {"resume"};
        fc_wire_welcome_args a;
        memset(&a, 0, sizeof a);
        a.session_id = "session-1";
        a.resume_token.data = (const uint8_t *)tok;
        a.resume_token.len = strlen(tok);
        a.heartbeat_interval_ms = p->heartbeat_ms;
        a.max_frame_bytes = (uint32_t)FC_FRAME_MAX_DEFAULT;
        a.max_chunk_bytes = p->max_chunk;
        a.capabilities = caps;
        a.n_capabilities = 1;
        a.software = "conformance-peer";
        if (fc_wire_welcome(&m, ++pc->seq, &a, &err) != FC_OK)
            fail_msg("peer welcome: %s", err.msg);
        if (p->welcome_major)
            m.body.welcome.protocol_major = p->welcome_major;
        psend(pc, &m);
        if (p->drop_on_connection == pc->index) {
            drop(pc);
            break;
        }
        if (p->task_on_connection == pc->index)
            send_task(pc);
        break;
    }
    case FEDCOORD__V1__ENVELOPE__BODY_HEARTBEAT:
        p->heartbeats++;
        break;
    case FEDCOORD__V1__ENVELOPE__BODY_MODEL_REQUEST:
        p->model_requests++;
        send_model(pc, env->model_request);
        break;
    case FEDCOORD__V1__ENVELOPE__BODY_UPDATE_BEGIN: {
        const Fedcoord__V1__UpdateBegin *b = env->update_begin;
        p->update_begins++;
        p->is_delta = b->is_delta;
        p->last_resume_offset = b->resume_offset;
        uint64_t start = 0;
        if (!p->up) {
            fc_tensor_spec *specs = NULL;
            uint64_t total = 0;
            assert_int_equal(
                fc_wire_specs_from_wire(b->tensors, b->n_tensors, &specs, &total, &err), FC_OK);
            fc_stage_config sc;
            memset(&sc, 0, sizeof sc);
            sc.max_total_bytes = 1 << 20;
            sc.max_chunk = p->max_chunk;
            assert_int_equal(
                fc_stage_create(specs, b->n_tensors, b->total_bytes, &sc, &p->up, &err), FC_OK);
            fc_wire_specs_free(specs, b->n_tensors);
        } else {
            start = fc_stage_received(p->up);
            if (start > b->resume_offset)
                fail_msg("client resumes at %llu, peer holds %llu",
                         (unsigned long long)b->resume_offset, (unsigned long long)start);
        }
        heartbeat_here(pc);
        assert_int_equal(fc_wire_ack(&m, ++pc->seq, env->seq, start, NULL, &err), FC_OK);
        psend(pc, &m);
        break;
    }
    case FEDCOORD__V1__ENVELOPE__BODY_UPDATE_END: {
        const Fedcoord__V1__UpdateEnd *e = env->update_end;
        memcpy(p->update_sha, e->sha256.data, FC_SHA256_BYTES);
        p->num_examples = e->num_examples;
        p->metric_count = (int)e->n_metrics;
        for (size_t i = 0; i < e->n_metrics; i++)
            if (strcmp(e->metrics[i]->key, "train_loss") == 0)
                p->metric_loss = e->metrics[i]->value;
        if (p->reject_update) {
            assert_int_equal(fc_wire_error(&m, ++pc->seq, FC_ERR_SHAPE, 0, env->seq,
                                           "update for round 7 has tensor 'w' shape [3,2], round "
                                           "expects [2,3]",
                                           &err),
                             FC_OK);
            psend(pc, &m);
            break;
        }
        heartbeat_here(pc);
        fc_status st = fc_stage_finish(p->up, e->sha256.data, e->sha256.len, &err);
        if (st == FC_OK) {
            p->update_ok = 1;
            fc_model v = FC_MODEL_INIT;
            assert_int_equal(fc_stage_view_model(p->up, &v, &err), FC_OK);
            p->update_len = fc_stage_total(p->up);
            p->update_data = malloc(p->update_len);
            uint64_t at = 0;
            for (size_t i = 0; i < v.count; i++) {
                memcpy(p->update_data + at, v.tensors[i].data, v.tensors[i].nbytes);
                at += v.tensors[i].nbytes;
            }
            fc_model_free(&v);
            assert_int_equal(fc_wire_ack(&m, ++pc->seq, env->seq, p->update_len, NULL, &err),
                             FC_OK);
        } else {
            assert_int_equal(fc_wire_error(&m, ++pc->seq, st, 0, env->seq, err.msg, &err), FC_OK);
        }
        psend(pc, &m);
        break;
    }
    case FEDCOORD__V1__ENVELOPE__BODY_EVAL_RESULT:
        p->evals++;
        p->eval_examples = env->eval_result->num_examples;
        for (size_t i = 0; i < env->eval_result->n_metrics; i++)
            if (strcmp(env->eval_result->metrics[i]->key, "accuracy") == 0)
                p->eval_accuracy = env->eval_result->metrics[i]->value;
        heartbeat_here(pc);
        assert_int_equal(fc_wire_ack(&m, ++pc->seq, env->seq, 0, NULL, &err), FC_OK);
        psend(pc, &m);
        break;
    case FEDCOORD__V1__ENVELOPE__BODY_BYE:
        p->byes++;
        net_close(pc->c, FC_OK, "bye");
        break;
    default:
        fail_msg("peer: unexpected %s", fc_wire_body_name(env->body_case));
    }
}

static void cb_open(net_conn *c) {
    peer *p = net_listener_user(net_conn_listener(c));
    pconn *pc = calloc(1, sizeof *pc);
    assert_non_null(pc);
    pc->p = p;
    pc->c = c;
    pc->index = ++p->connections;
    fc_frame_decoder_init(&pc->dec, 0);
    net_conn_set_user(c, pc);
}

static void cb_data(net_conn *c, const uint8_t *data, size_t len) {
    pconn *pc = net_conn_user(c);
    fc_error err = {0};
    while (len > 0 && net_conn_state(c) == NET_OPEN) {
        size_t used;
        fc_frame f;
        fc_status st = fc_frame_decoder_feed(&pc->dec, data, len, &used, &f, &err);
        data += used;
        len -= used;
        if (st == FC_ERR_AGAIN)
            break;
        if (st != FC_OK)
            fail_msg("peer framing: %s", err.msg);
        fc_chunk_view v;
        if (fc_frame_peek_chunk(f.data, f.len, &v)) {
            on_chunk(pc, &v);
            continue;
        }
        fc_envelope *env = NULL;
        if (fc_wire_decode(f.data, f.len, &env, &err) != FC_OK)
            fail_msg("peer decode: %s", err.msg);
        on_message(pc, env);
        fc_envelope_free(env);
    }
}

static void cb_close(net_conn *c, fc_status reason, const char *detail) {
    (void)reason;
    (void)detail;
    pconn *pc = net_conn_user(c);
    if (pc) {
        fc_frame_decoder_free(&pc->dec);
        free(pc);
    }
}

static void stop_cb(uv_async_t *a) {
    peer *p = a->data;
    if (p->l) {
        net_close_all(p->l, FC_ERR_CLOSED, "test finished");
        net_listener_close(p->l, NULL, NULL);
        p->l = NULL;
    }
    uv_close((uv_handle_t *)&p->stop, NULL);
}

static void *peer_thread(void *arg) {
    peer *p = arg;
    uv_run(&p->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void peer_init(peer *p) {
    memset(p, 0, sizeof *p);
    p->max_chunk = 8;
    p->heartbeat_ms = 30000;
    p->task_kind = 1;
    fc_model m = FC_MODEL_INIT;
    p->model = m;
    build_model(&p->model, MODEL_W, MODEL_B, MODEL_S);
    fc_error err = {0};
    assert_int_equal(fc_stream_model_sha256(&p->model, p->model_sha, &err), FC_OK);
    assert_int_equal(fc_model_nbytes(&p->model, &p->model_bytes), FC_OK);
}

/* Replaces the served model with h f16[3] = {1, 2, -0.5} (6 bytes, so the next tensor starts
 * unaligned) and w f32[2] = {3, 4}. f16 bits: 1.0 = 0x3C00, 2.0 = 0x4000, -0.5 = 0xB800. */
static const uint16_t HALF_H[3] = {0x3C00, 0x4000, 0xB800};
static const float HALF_W[2] = {3, 4};

static void peer_use_half_model(peer *p) {
    fc_model_free(&p->model);
    fc_error err = {0};
    uint64_t sh[1] = {3}, sw[1] = {2};
    assert_int_equal(fc_model_add(&p->model, "h", FC_DTYPE_F16, 1, sh, HALF_H, &err), FC_OK);
    assert_int_equal(fc_model_add(&p->model, "w", FC_DTYPE_F32, 1, sw, HALF_W, &err), FC_OK);
    assert_int_equal(fc_stream_model_sha256(&p->model, p->model_sha, &err), FC_OK);
    assert_int_equal(fc_model_nbytes(&p->model, &p->model_bytes), FC_OK);
}

static void peer_start(peer *p) {
    assert_int_equal(uv_loop_init(&p->loop), 0);
    assert_int_equal(uv_async_init(&p->loop, &p->stop, stop_cb), 0);
    p->stop.data = p;
    net_listener_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "peer";
    cfg.host = "127.0.0.1";
    cfg.tls.cert_file = pki.server_cert;
    cfg.tls.key_file = pki.server_key;
    if (p->require_client_cert) {
        cfg.tls.ca_file = pki.ca_cert;
        cfg.tls.mtls = NET_MTLS_REQUIRE;
    }
    net_limits_default(&cfg.limits);
    cfg.limits.close_linger_ms = 200;
    cfg.cb.on_open = cb_open;
    cfg.cb.on_data = cb_data;
    cfg.cb.on_close = cb_close;
    cfg.user = p;
    fc_error err = {0};
    if (net_listener_open(&p->loop, &cfg, &p->l, &err) != FC_OK)
        fail_msg("peer listen: %s", err.msg);
    p->port = net_listener_port(p->l);
    assert_int_equal(pthread_create(&p->th, NULL, peer_thread, p), 0);
}

static void peer_stop(peer *p) {
    uv_async_send(&p->stop);
    assert_int_equal(pthread_join(p->th, NULL), 0);
    assert_int_equal(uv_loop_close(&p->loop), 0);
}

static void peer_free(peer *p) {
    fc_model_free(&p->model);
    fc_stage_free(p->up);
    free(p->update_data);
}

/* ---- client side ---- */

static char server_addr[64];

static fc_client_config client_config(const peer *p) {
    fc_client_config cfg = FC_CLIENT_CONFIG_INIT;
    snprintf(server_addr, sizeof server_addr, "127.0.0.1:%d", p->port);
    cfg.server = server_addr;
    cfg.ca_file = pki.ca_cert;
    cfg.token = "secret-token";
    cfg.client_name = "site-1";
    cfg.connect_timeout_ms = 5000;
    cfg.io_timeout_ms = 5000;
    cfg.reconnect_max_attempts = 3;
    cfg.reconnect_base_ms = 10;
    cfg.reconnect_max_ms = 40;
    return cfg;
}

static fc_client *open_ok(const fc_client_config *cfg) {
    fc_client *c = NULL;
    fc_status st = fc_client_open(cfg, &c);
    if (st != FC_OK)
        fail_msg("fc_client_open: %s: %s", fc_strerror(st), c ? fc_client_error(c) : "");
    return c;
}

static fc_task *next_task_ok(fc_client *c) {
    fc_task *t = NULL;
    fc_status st = fc_client_next_task(c, 10000, &t);
    if (st != FC_OK)
        fail_msg("fc_client_next_task: %s: %s", fc_strerror(st), fc_client_error(c));
    assert_non_null(t);
    return t;
}

/* ---- tests ---- */

static void test_open_sends_hello_and_accepts_welcome(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    assert_int_equal(fc_client_last_status(c), FC_OK);
    fc_client_close(c);
    peer_stop(&p);
    assert_int_equal(p.hellos, 1);
    assert_string_equal(p.hello_name, "site-1");
    assert_int_equal(p.byes, 1); /* close sends Bye */
    peer_free(&p);
}

static void test_server_signed_by_another_ca_is_refused(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    cfg.ca_file = pki.rogue_ca_cert;
    fc_client *c = NULL;
    assert_int_equal(fc_client_open(&cfg, &c), FC_ERR_TLS);
    assert_non_null(c);
    assert_non_null(strstr(fc_client_error(c), "certificate verification failed"));
    fc_client_close(c);
    peer_stop(&p);
    assert_int_equal(p.hellos, 0);
    peer_free(&p);
}

static void test_wrong_host_name_is_refused(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    cfg.server_name = "coordinator.example.org";
    fc_client *c = NULL;
    assert_int_equal(fc_client_open(&cfg, &c), FC_ERR_TLS);
    assert_non_null(strstr(fc_client_error(c), "hostname mismatch"));
    fc_client_close(c);
    /* the certificate's DNS name is accepted */
    cfg.server_name = "localhost";
    c = open_ok(&cfg);
    fc_client_close(c);
    peer_stop(&p);
    assert_int_equal(p.hellos, 1);
    peer_free(&p);
}

static void test_mutual_tls_presents_the_client_certificate(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.require_client_cert = 1;
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    cfg.token = NULL;
    cfg.client_name = NULL;
    cfg.cert_file = pki.client_cert;
    cfg.key_file = pki.client_key;
    fc_client *c = open_ok(&cfg);
    fc_client_close(c);
    /* without a certificate the server's refusal is a TLS error, not retried */
    cfg.cert_file = cfg.key_file = NULL;
    c = NULL;
    assert_int_equal(fc_client_open(&cfg, &c), FC_ERR_TLS);
    assert_non_null(strstr(fc_client_error(c), "certificate required"));
    fc_client_close(c);
    peer_stop(&p);
    assert_int_equal(p.hellos, 1);
    peer_free(&p);
}

static void test_protocol_major_mismatch_is_a_clear_error(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.welcome_major = 2;
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = NULL;
    assert_int_equal(fc_client_open(&cfg, &c), FC_ERR_VERSION);
    assert_non_null(strstr(fc_client_error(c), "major versions must match"));
    fc_client_close(c);
    peer_stop(&p);
    assert_int_equal(p.hellos, 1); /* not retried */
    peer_free(&p);
}

static void test_bad_config_names_the_field(void **state) {
    (void)state;
    fc_client_config cfg = FC_CLIENT_CONFIG_INIT;
    cfg.server = "localhost"; /* no port */
    cfg.ca_file = pki.ca_cert;
    fc_client *c = NULL;
    assert_int_equal(fc_client_open(&cfg, &c), FC_ERR_CONFIG);
    assert_non_null(strstr(fc_client_error(c), "host:port"));
    fc_client_close(c);
    cfg.server = "127.0.0.1:1";
    cfg.ca_file = NULL;
    assert_int_equal(fc_client_open(&cfg, &c), FC_ERR_CONFIG);
    assert_non_null(strstr(fc_client_error(c), "ca_file"));
    fc_client_close(c);
    cfg.ca_file = pki.ca_cert;
    cfg.size = 4;
    assert_int_equal(fc_client_open(&cfg, &c), FC_ERR_INVALID);
    fc_client_close(c);
}

static void test_task_downloads_model_and_exposes_fields(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.task_on_connection = 1;
    p.heartbeat_before_task = 1;
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = next_task_ok(c);
    assert_int_equal(fc_task_round(t), 7);
    assert_int_equal(fc_task_get_kind(t), FC_TASK_TYPE_TRAIN);
    assert_int_equal(fc_task_model_version(t), 3);
    assert_true(fc_task_lr(t, 1.0) == 0.05);
    assert_int_equal(fc_task_epochs(t, 1), 3);
    assert_true(fc_task_mu(t, 0.0) == 0.5);
    double d = 0;
    assert_int_equal(fc_task_config_double(t, "bad", 9.0, &d), FC_ERR_FORMAT);
    assert_true(d == 9.0);
    assert_int_equal(fc_task_config_double(t, "absent", 1.5, &d), FC_ERR_NOT_FOUND);
    assert_null(fc_task_config(t, "absent"));
    assert_int_equal(fc_task_tensor_count(t), 3);
    fc_tensor_info info;
    assert_int_equal(fc_task_tensor(t, 0, &info), FC_OK);
    assert_string_equal(info.name, "w");
    assert_int_equal(info.dtype, FC_DTYPE_F32);
    assert_int_equal(info.ndim, 2);
    assert_int_equal(info.shape[0], 2);
    assert_int_equal(info.shape[1], 3);
    assert_int_equal(info.numel, 6);
    assert_memory_equal(info.data, MODEL_W, sizeof MODEL_W);
    assert_int_equal(fc_task_tensor(t, 2, &info), FC_OK);
    assert_int_equal(info.dtype, FC_DTYPE_F64);
    assert_int_equal(info.ndim, 0);
    assert_memory_equal(info.data, &MODEL_S, 8);
    assert_int_equal(fc_task_tensor(t, 3, &info), FC_ERR_RANGE);
    assert_int_equal(fc_task_find_tensor(t, "b"), 1);
    assert_int_equal(fc_task_find_tensor(t, "nope"), -1);
    fc_task_free(t);
    fc_client_close(c);
    peer_stop(&p);
    assert_int_equal(p.model_requests, 1);
    peer_free(&p);
}

static void test_download_resumes_after_drop(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.task_on_connection = 1;
    p.drop_download_after_chunks = 3; /* 24 of 44 bytes arrive, then the connection goes */
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = next_task_ok(c);
    fc_tensor_info info;
    assert_int_equal(fc_task_tensor(t, 0, &info), FC_OK);
    assert_memory_equal(info.data, MODEL_W, sizeof MODEL_W);
    assert_int_equal(fc_task_tensor(t, 1, &info), FC_OK);
    assert_memory_equal(info.data, MODEL_B, sizeof MODEL_B);
    assert_int_equal(fc_task_tensor(t, 2, &info), FC_OK);
    assert_memory_equal(info.data, &MODEL_S, 8);
    fc_task_free(t);
    fc_client_close(c);
    peer_stop(&p);
    assert_int_equal(p.connections, 2);
    assert_true(p.second_hello_had_resume_token);
    assert_int_equal(p.model_requests, 2);
    assert_int_equal(p.last_model_offset, 24);
    peer_free(&p);
}

/* Every allocation of fc_client_open fails in turn: each failure is a clean error, never a
 * crash, and (under ASan) never a leak. No peer runs, so no other thread allocates. */
static void test_open_survives_every_allocation_failure(void **state) {
    (void)state;
    fc_client_config cfg = FC_CLIENT_CONFIG_INIT;
    cfg.server = "127.0.0.1:1"; /* refused */
    cfg.ca_file = pki.ca_cert;
    cfg.token = "t";
    cfg.client_name = "n";
    cfg.reconnect_max_attempts = -1;
    int completed = 0;
    for (long n = 0; n < 100 && !completed; n++) {
        fc_client *c = NULL;
        fc_alloc_fail_after(n);
        fc_status st = fc_client_open(&cfg, &c);
        int injected = fc_alloc_failures() != 0;
        fc_alloc_fail_after(-1);
        if (st == FC_ERR_NOMEM) {
            assert_true(injected);
        } else {
            assert_int_equal(st, FC_ERR_CLOSED);
            assert_non_null(c);
            completed = !injected;
        }
        fc_client_close(c);
    }
    assert_true(completed);
}

static void test_corrupted_model_chunk_is_a_hash_error(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.task_on_connection = 1;
    p.corrupt_downloads = 2; /* the retry from byte 0 is corrupted too */
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = NULL;
    assert_int_equal(fc_client_next_task(c, 10000, &t), FC_ERR_HASH);
    assert_null(t);
    assert_non_null(strstr(fc_client_error(c), "SHA-256 mismatch"));
    fc_client_close(c);
    peer_stop(&p);
    assert_int_equal(p.model_requests, 2);
    peer_free(&p);
}

static void test_one_corrupted_download_is_retried_from_zero(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.task_on_connection = 1;
    p.corrupt_downloads = 1;
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = next_task_ok(c);
    fc_tensor_info info;
    assert_int_equal(fc_task_tensor(t, 0, &info), FC_OK);
    assert_memory_equal(info.data, MODEL_W, sizeof MODEL_W);
    fc_task_free(t);
    fc_client_close(c);
    peer_stop(&p);
    assert_int_equal(p.model_requests, 2);
    peer_free(&p);
}

static void expected_delta(fc_model *d) {
    fc_model m = FC_MODEL_INIT;
    *d = m;
    build_model(d, DW, DB, DS);
}

static void check_uploaded_delta(const peer *p) {
    assert_true(p->update_ok);
    assert_true(p->is_delta);
    fc_model d;
    expected_delta(&d);
    uint8_t bytes[44];
    memcpy(bytes, DW, 24);
    memcpy(bytes + 24, DB, 12);
    memcpy(bytes + 36, &DS, 8);
    assert_int_equal(p->update_len, 44);
    assert_memory_equal(p->update_data, bytes, 44);
    uint8_t sha[FC_SHA256_BYTES];
    fc_error err = {0};
    assert_int_equal(fc_stream_model_sha256(&d, sha, &err), FC_OK);
    assert_memory_equal(p->update_sha, sha, FC_SHA256_BYTES);
    fc_model_free(&d);
}

static void trained_weights(float w[6], float b[3], double *s) {
    for (int i = 0; i < 6; i++)
        w[i] = MODEL_W[i] + DW[i];
    for (int i = 0; i < 3; i++)
        b[i] = MODEL_B[i] + DB[i];
    *s = MODEL_S + DS;
}

static void test_submit_weights_uploads_the_exact_delta(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.task_on_connection = 1;
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = next_task_ok(c);
    float w[6], b[3];
    double s;
    trained_weights(w, b, &s);
    const void *tensors[3] = {w, b, &s};
    fc_metric metrics[] = {{"train_loss", 0.75}, {"steps", 12}};
    fc_status st = fc_client_submit(c, t, FC_SUBMIT_WEIGHTS, tensors, 128, metrics, 2);
    if (st != FC_OK)
        fail_msg("submit: %s", fc_client_error(c));
    fc_task_free(t);
    fc_client_close(c);
    peer_stop(&p);
    check_uploaded_delta(&p);
    assert_int_equal(p.num_examples, 128);
    assert_int_equal(p.metric_count, 2);
    assert_true(p.metric_loss == 0.75);
    assert_int_equal(p.update_begins, 1);
    peer_free(&p);
}

static void test_submit_delta_is_uploaded_as_given(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.task_on_connection = 1;
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = next_task_ok(c);
    const void *tensors[3] = {DW, DB, &DS};
    assert_int_equal(fc_client_submit(c, t, FC_SUBMIT_DELTA, tensors, 5, NULL, 0), FC_OK);
    /* invalid calls are refused before anything is sent */
    assert_int_equal(fc_client_submit(c, t, FC_SUBMIT_DELTA, tensors, 0, NULL, 0), FC_ERR_INVALID);
    fc_metric nan_metric = {"loss", NAN};
    assert_int_equal(fc_client_submit(c, t, FC_SUBMIT_DELTA, tensors, 5, &nan_metric, 1),
                     FC_ERR_INVALID);
    assert_non_null(strstr(fc_client_error(c), "not finite"));
    assert_int_equal(fc_client_report_eval(c, t, 5, NULL, 0), FC_ERR_INVALID);
    fc_task_free(t);
    fc_client_close(c);
    peer_stop(&p);
    check_uploaded_delta(&p);
    assert_int_equal(p.update_begins, 1);
    peer_free(&p);
}

/* The server may send Heartbeat at any point after Welcome: before ModelBegin, between model
 * chunks, before the Acks of UpdateBegin, UpdateEnd and EvalResult. The SDK skips them all. */
static void test_server_heartbeats_anywhere_are_absorbed(void **state) {
    (void)state;
    for (int kind = 1; kind <= 2; kind++) {
        peer p;
        peer_init(&p);
        p.task_on_connection = 1;
        p.task_kind = kind;
        p.heartbeat_everywhere = 1;
        p.heartbeat_before_task = 1;
        peer_start(&p);
        fc_client_config cfg = client_config(&p);
        fc_client *c = open_ok(&cfg);
        fc_task *t = next_task_ok(c);
        fc_tensor_info info;
        assert_int_equal(fc_task_tensor(t, 0, &info), FC_OK);
        assert_memory_equal(info.data, MODEL_W, sizeof MODEL_W);
        if (kind == 1) {
            const void *tensors[3] = {DW, DB, &DS};
            assert_int_equal(fc_client_submit(c, t, FC_SUBMIT_DELTA, tensors, 5, NULL, 0), FC_OK);
        } else {
            fc_metric m[] = {{"accuracy", 0.5}};
            assert_int_equal(fc_client_report_eval(c, t, 8, m, 1), FC_OK);
        }
        fc_task_free(t);
        fc_client_close(c);
        peer_stop(&p);
        if (kind == 1)
            check_uploaded_delta(&p);
        else
            assert_int_equal(p.evals, 1);
        assert_int_equal(p.connections, 1); /* no reconnect: nothing was treated as an error */
        assert_int_equal(p.byes, 1);
        peer_free(&p);
    }
}

static void test_upload_resumes_from_acked_offset_after_drop(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.task_on_connection = 1;
    p.drop_upload_after_chunks = 2; /* 16 of 44 bytes, then the connection goes */
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = next_task_ok(c);
    float w[6], b[3];
    double s;
    trained_weights(w, b, &s);
    const void *tensors[3] = {w, b, &s};
    fc_status st = fc_client_submit(c, t, FC_SUBMIT_WEIGHTS, tensors, 9, NULL, 0);
    if (st != FC_OK)
        fail_msg("submit: %s", fc_client_error(c));
    fc_task_free(t);
    fc_client_close(c);
    peer_stop(&p);
    check_uploaded_delta(&p);
    assert_int_equal(p.hellos, 2);
    assert_true(p.second_hello_had_resume_token);
    assert_int_equal(p.update_begins, 2);
    /* the client offers what it sent (at least the 16 acknowledged bytes, at most all 44); the
     * peer answered 16 (it fails the test if it would have to go back), the client went on
     * from there and the delta arrived intact (check_uploaded_delta) */
    assert_true(p.last_resume_offset >= 16 && p.last_resume_offset <= 44);
    peer_free(&p);
}

/* The server closed the session while the trainer was busy (idle timeout): submit notices,
 * reconnects with the resume token and uploads. */
static void test_submit_reconnects_when_session_was_closed_during_training(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.task_on_connection = 1;
    p.drop_after_model = 1;
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = next_task_ok(c);
    const void *tensors[3] = {DW, DB, &DS};
    fc_status st = fc_client_submit(c, t, FC_SUBMIT_DELTA, tensors, 5, NULL, 0);
    if (st != FC_OK)
        fail_msg("submit: %s", fc_client_error(c));
    fc_task_free(t);
    fc_client_close(c);
    peer_stop(&p);
    check_uploaded_delta(&p);
    assert_int_equal(p.hellos, 2);
    assert_true(p.second_hello_had_resume_token);
    peer_free(&p);
}

/* f16 weights become an f16 delta computed through f32: trained h = {1.5, 2, 0.25}
 * (0x3E00, 0x4000, 0x3400) minus {1, 2, -0.5} is {0.5, 0, 0.75} = 0x3800, 0x0000, 0x3A00;
 * trained w = {3.5, 1} gives {0.5, -3}. FedProx works on the unaligned f32 tensor. */
static void test_f16_delta_and_unaligned_tensor(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    peer_use_half_model(&p);
    p.task_on_connection = 1;
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = next_task_ok(c);
    fc_tensor_info info;
    assert_int_equal(fc_task_tensor(t, 0, &info), FC_OK);
    assert_int_equal(info.dtype, FC_DTYPE_F16);
    assert_memory_equal(info.data, HALF_H, 6);
    float grad[2] = {0, 1}, wcur[2] = {5, 4};
    assert_int_equal(fc_task_prox_add(t, 1, grad, wcur, 2.0), FC_OK);
    assert_true(grad[0] == 4.0f); /* 0 + 2 * (5 - 3) */
    assert_true(grad[1] == 1.0f); /* 1 + 2 * (4 - 4) */
    const uint16_t h[3] = {0x3E00, 0x4000, 0x3400};
    const float w[2] = {3.5f, 1.0f};
    const void *tensors[2] = {h, w};
    fc_status st = fc_client_submit(c, t, FC_SUBMIT_WEIGHTS, tensors, 3, NULL, 0);
    if (st != FC_OK)
        fail_msg("submit: %s", fc_client_error(c));
    fc_task_free(t);
    fc_client_close(c);
    peer_stop(&p);
    assert_true(p.update_ok);
    const uint8_t want_h[6] = {0x00, 0x38, 0x00, 0x00, 0x00, 0x3A};
    const float want_w[2] = {0.5f, -3.0f};
    assert_int_equal(p.update_len, 14);
    assert_memory_equal(p.update_data, want_h, 6);
    assert_memory_equal(p.update_data + 6, want_w, 8);
    peer_free(&p);
}

static void test_server_error_frame_surfaces_code_and_text(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.task_on_connection = 1;
    p.reject_update = 1;
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = next_task_ok(c);
    const void *tensors[3] = {DW, DB, &DS};
    assert_int_equal(fc_client_submit(c, t, FC_SUBMIT_DELTA, tensors, 5, NULL, 0), FC_ERR_SHAPE);
    assert_int_equal(fc_client_last_status(c), FC_ERR_SHAPE);
    const char *msg = fc_client_error(c);
    assert_non_null(strstr(msg, "42 SHAPE_MISMATCH"));
    assert_non_null(strstr(msg, "round expects [2,3]"));
    fc_task_free(t);
    fc_client_close(c);
    peer_stop(&p);
    assert_int_equal(p.update_begins, 1); /* a server verdict is not retried */
    peer_free(&p);
}

static void test_eval_task_reports_metrics(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.task_on_connection = 1;
    p.task_kind = 2;
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = next_task_ok(c);
    assert_int_equal(fc_task_get_kind(t), FC_TASK_TYPE_EVALUATE);
    fc_metric m[] = {{"accuracy", 0.875}, {"loss", 0.25}};
    assert_int_equal(fc_client_report_eval(c, t, 64, m, 2), FC_OK);
    const void *tensors[3] = {DW, DB, &DS};
    assert_int_equal(fc_client_submit(c, t, FC_SUBMIT_DELTA, tensors, 5, NULL, 0), FC_ERR_INVALID);
    fc_task_free(t);
    fc_client_close(c);
    peer_stop(&p);
    assert_int_equal(p.evals, 1);
    assert_int_equal(p.eval_examples, 64);
    assert_true(p.eval_accuracy == 0.875);
    peer_free(&p);
}

static void test_client_sends_heartbeats_while_waiting(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.heartbeat_ms = 40;
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = NULL;
    assert_int_equal(fc_client_next_task(c, 400, &t), FC_ERR_TIMEOUT);
    assert_null(t);
    fc_client_close(c);
    peer_stop(&p);
    /* 400 ms of silence at a 40 ms interval: about 10; demand a safe minimum */
    assert_true(p.heartbeats >= 3);
    assert_int_equal(p.byes, 1); /* the session survived the timeout */
    peer_free(&p);
}

static void test_bye_means_done(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.task_on_connection = 1;
    p.bye_instead_of_task = 1;
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = NULL;
    assert_int_equal(fc_client_next_task(c, 10000, &t), FC_OK);
    assert_null(t);
    assert_non_null(strstr(fc_client_error(c), "training finished"));
    assert_int_equal(fc_client_next_task(c, 10, &t), FC_ERR_CLOSED);
    fc_client_close(c);
    peer_stop(&p);
    peer_free(&p);
}

static void test_reconnects_with_resume_token_after_drop(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.drop_on_connection = 1;
    p.task_on_connection = 2;
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = next_task_ok(c);
    assert_int_equal(fc_task_round(t), 7);
    fc_task_free(t);
    fc_client_close(c);
    peer_stop(&p);
    assert_int_equal(p.connections, 2);
    assert_true(p.second_hello_had_resume_token);
    peer_free(&p);
}

static void test_gives_up_when_server_never_comes_back(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.drop_on_connection = 1;
    p.close_listener_on_drop = 1;
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    fc_status st = fc_client_next_task(c, 20000, &t);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    assert_int_equal(st, FC_ERR_CLOSED);
    /* 4 attempts with base 10 ms, ceiling 40 ms: the waits are jittered into [5,10], [10,20],
     * [20,40] ms, so at least 35 ms pass; far less than the 20 s task timeout. */
    assert_true(ms >= 35.0);
    assert_true(ms < 5000.0);
    assert_null(t);
    assert_non_null(strstr(fc_client_error(c), "could not reach the server after 4 attempts"));
    fc_client_close(c);
    peer_stop(&p);
    assert_int_equal(p.connections, 1);
    peer_free(&p);
}

static void test_fedprox_helper_uses_the_task_model(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    p.task_on_connection = 1;
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    fc_client *c = open_ok(&cfg);
    fc_task *t = next_task_ok(c);
    float w[6] = {2, 2, 2, 2, 2, 2};
    float grad[6] = {1, 1, 1, 1, 1, 1};
    assert_int_equal(fc_task_prox_add(t, 0, grad, w, 0.5), FC_OK);
    /* grad + 0.5 * (w - MODEL_W), MODEL_W = 1..6 */
    const float want[6] = {1.5f, 1.0f, 0.5f, 0.0f, -0.5f, -1.0f};
    assert_memory_equal(grad, want, sizeof want);
    assert_int_equal(fc_task_prox_add(t, 2, grad, w, 0.5), FC_ERR_DTYPE);
    assert_int_equal(fc_task_prox_add(t, 0, grad, w, -1), FC_ERR_INVALID);
    assert_int_equal(fc_task_prox_add(t, 9, grad, w, 0.5), FC_ERR_RANGE);
    fc_task_free(t);
    fc_client_close(c);
    peer_stop(&p);
    peer_free(&p);
}

static void test_unreachable_server_fails_after_attempts(void **state) {
    (void)state;
    peer p;
    peer_init(&p);
    peer_start(&p);
    fc_client_config cfg = client_config(&p);
    peer_stop(&p); /* nothing listens on the port any more */
    fc_client *c = NULL;
    assert_int_equal(fc_client_open(&cfg, &c), FC_ERR_CLOSED);
    assert_non_null(strstr(fc_client_error(c), "Connection refused"));
    fc_client_close(c);
    peer_free(&p);
}

static int setup(void **state) {
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    fc_error err = {0};
    if (tlsgen_create(NULL, &pki, &err) != FC_OK)
        fail_msg("tlsgen: %s", err.msg);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_sends_hello_and_accepts_welcome),
        cmocka_unit_test(test_server_signed_by_another_ca_is_refused),
        cmocka_unit_test(test_wrong_host_name_is_refused),
        cmocka_unit_test(test_mutual_tls_presents_the_client_certificate),
        cmocka_unit_test(test_protocol_major_mismatch_is_a_clear_error),
        cmocka_unit_test(test_bad_config_names_the_field),
        cmocka_unit_test(test_task_downloads_model_and_exposes_fields),
        cmocka_unit_test(test_download_resumes_after_drop),
        cmocka_unit_test(test_open_survives_every_allocation_failure),
        cmocka_unit_test(test_corrupted_model_chunk_is_a_hash_error),
        cmocka_unit_test(test_one_corrupted_download_is_retried_from_zero),
        cmocka_unit_test(test_submit_weights_uploads_the_exact_delta),
        cmocka_unit_test(test_submit_delta_is_uploaded_as_given),
        cmocka_unit_test(test_server_heartbeats_anywhere_are_absorbed),
        cmocka_unit_test(test_upload_resumes_from_acked_offset_after_drop),
        cmocka_unit_test(test_submit_reconnects_when_session_was_closed_during_training),
        cmocka_unit_test(test_f16_delta_and_unaligned_tensor),
        cmocka_unit_test(test_server_error_frame_surfaces_code_and_text),
        cmocka_unit_test(test_eval_task_reports_metrics),
        cmocka_unit_test(test_client_sends_heartbeats_while_waiting),
        cmocka_unit_test(test_bye_means_done),
        cmocka_unit_test(test_reconnects_with_resume_token_after_drop),
        cmocka_unit_test(test_gives_up_when_server_never_comes_back),
        cmocka_unit_test(test_fedprox_helper_uses_the_task_model),
        cmocka_unit_test(test_unreachable_server_fails_after_attempts),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
