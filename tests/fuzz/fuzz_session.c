/* fuzz_session.c: libFuzzer target for the daemon's message handler (server/session.c), fed
 * whole sessions over a real plain loopback net listener (server/net.c) driven by a private uv
 * loop, with in-memory services: sess_auth_tokens (alice/tok-alice = client 1), a one-version
 * sess_mem_model, a round callback that accepts round 1 (base version 7, tensors w f32[4] and
 * b f32[2]) and a sink that frees accepted updates. Upload resume is disabled so that no state
 * survives from one input to the next. It owns only the harness; it never touches a file.
 *
 * Input layout: byte 0 is a control byte; bit 0 prepends a valid Hello of alice (seq 1), so the
 * fuzzer reaches the authenticated states at once. The rest is written to the connection as the
 * client's byte stream (length-prefixed Envelope frames, proto/frame.h), then the write side is
 * shut down. The loop runs until the session is closed, for at most MAX_TURNS turns; a session
 * still open then is closed by the harness. Each input ends with no session and no staged byte
 * (checked: abort otherwise), so nothing leaks between executions.
 *
 * Seeds: FUZZ_SESSION_SEEDS=DIR build/fuzz/bin/fuzz_session writes the seed corpus into DIR
 * (committed as tests/fuzz/session/) and exits.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/log.h"
#include "proto/frame.h"
#include "proto/wire.h"
#include "server/net.h"
#include "server/session.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                               \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fprintf(stderr, "fuzz_session: check failed at line %d: %s\n", __LINE__, #cond);      \
            abort();                                                                              \
        }                                                                                         \
    } while (0)

#define MAX_TURNS 400
#define ROUND 1
#define BASE 7
static const char TOKEN[] = "tok-alice";

static struct {
    uv_loop_t loop;
    uv_timer_t tick;
    sess_budget *budget;
    sess_auth_tokens *auth;
    sess_mem_model *model;
    sess_server *sv;
    net_listener *l;
    net_callbacks inner;
    int port;
    int opened, closed; /* connections opened/closed during the current input */
    int fd;             /* the client socket of the current input, -1 when none */
    fc_tensor_spec specs[2];
} G;

/* Wraps the session callbacks to count opens and closes. */
static void w_open(net_conn *c) {
    G.opened++;
    if (G.inner.on_open)
        G.inner.on_open(c);
}
static void w_close(net_conn *c, fc_status reason, const char *detail) {
    G.closed++;
    G.inner.on_close(c, reason, detail);
}

static fc_status round_cb(void *ctx, uint64_t client_id, sess_round_info *out, fc_error *err) {
    (void)ctx, (void)client_id, (void)err;
    out->round = ROUND;
    out->base_version = BASE;
    out->specs = G.specs;
    out->n_specs = 2;
    return FC_OK;
}

static void sink_cb(void *ctx, sess_update *u) {
    (void)ctx;
    sess_update_release(u);
}

/* Discards what the server sent, so that its output queue drains. */
static void drain_client(void) {
    uint8_t buf[65536];
    while (G.fd >= 0) {
        ssize_t n = recv(G.fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0)
            break;
    }
}

static void tick_cb(uv_timer_t *t) {
    (void)t;
    drain_client();
}

static void setup(void) {
    fc_error err = {0};
    CHECK(uv_loop_init(&G.loop) == 0);
    CHECK(uv_timer_init(&G.loop, &G.tick) == 0);
    CHECK(sess_budget_new(&G.loop, 1u << 20, NULL, 0, &G.budget, &err) == FC_OK);
    CHECK(sess_auth_tokens_new(&G.auth, &err) == FC_OK);
    CHECK(sess_auth_tokens_add(G.auth, "alice", (const uint8_t *)TOKEN, strlen(TOKEN), 1, 0,
                               &err) == FC_OK);
    CHECK(sess_auth_tokens_add(G.auth, "bob", (const uint8_t *)"tok-bob", 7, 2, 0, &err) ==
          FC_OK);
    fc_model m = FC_MODEL_INIT;
    uint64_t s1[1] = {4}, s2[1] = {2};
    CHECK(fc_model_add(&m, "w", FC_DTYPE_F32, 1, s1, NULL, &err) == FC_OK);
    CHECK(fc_model_add(&m, "b", FC_DTYPE_F32, 1, s2, NULL, &err) == FC_OK);
    CHECK(sess_mem_model_new(BASE, &m, &G.model, &err) == FC_OK);
    fc_model_free(&m);
    G.specs[0] = (fc_tensor_spec){.name = "w", .dtype = FC_DTYPE_F32, .ndim = 1, .shape = {4}};
    G.specs[1] = (fc_tensor_spec){.name = "b", .dtype = FC_DTYPE_F32, .ndim = 1, .shape = {2}};
    sess_config cfg = {
        .loop = &G.loop,
        .budget = G.budget,
        .auth = sess_auth_tokens_check,
        .auth_ctx = G.auth,
        .round = round_cb,
        .sink = sink_cb,
        .max_num_examples = 1000,
        .max_update_bytes = 1u << 16,
        .ack_every_bytes = 8,
        .max_frame_bytes = 1u << 16,
        .max_chunk_bytes = 1u << 14,
        .resume_disabled = 1,
    };
    sess_mem_model_source(G.model, &cfg.models);
    CHECK(sess_server_new(&cfg, &G.sv, &err) == FC_OK);
    net_listener_config lc;
    memset(&lc, 0, sizeof lc);
    lc.name = "fuzz";
    lc.host = "127.0.0.1";
    lc.plain = 1;
    net_limits_default(&lc.limits);
    lc.limits.close_linger_ms = 200;
    lc.limits.max_per_peer = 0;
    sess_net_callbacks(&G.inner);
    lc.cb = G.inner;
    lc.cb.on_open = w_open;
    lc.cb.on_close = w_close;
    lc.user = G.sv;
    CHECK(net_listener_open(&G.loop, &lc, &G.l, &err) == FC_OK);
    G.port = net_listener_port(G.l);
    G.fd = -1;
}

/* Appends m (built with seq 0) as a frame with sequence number seq. */
static void put(fc_buf *b, fc_wire_msg *m, uint64_t seq) {
    fc_error err = {0};
    m->env.seq = seq;
    CHECK(fc_wire_encode(m, 0, b, &err) == FC_OK);
    fc_wire_msg_free(m);
}

static void put_hello(fc_buf *b, const char *name, const char *token) {
    fc_wire_msg m;
    fc_error err = {0};
    fc_wire_hello_args a = {.client_name = name,
                            .token = {(const uint8_t *)token, strlen(token)},
                            .software = "fuzz"};
    CHECK(fc_wire_hello(&m, 0, &a, &err) == FC_OK);
    put(b, &m, 1);
}

static void run_once(const uint8_t *data, size_t size) {
    fc_buf in = FC_BUF_INIT;
    if (size > 0 && (data[0] & 1))
        put_hello(&in, "alice", TOKEN);
    if (size > 1)
        CHECK(fc_buf_append(&in, data + 1, size - 1) == FC_OK);

    G.opened = G.closed = 0;
    G.fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(G.fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)G.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* close with a reset: no TIME_WAIT, so a million inputs do not exhaust the local ports */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    CHECK(setsockopt(G.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    /* Non-blocking connect: libFuzzer's SIGALRM (its -timeout watchdog) interrupts a blocking
     * connect with EINTR. Here the connection completes while the loop turns (the listener
     * accepts), and a signal only interrupts poll, which is simply repeated. */
    CHECK(fcntl(G.fd, F_SETFL, O_NONBLOCK) == 0);
    int rc = connect(G.fd, (struct sockaddr *)&sa, sizeof sa);
    CHECK(rc == 0 || errno == EINPROGRESS || errno == EINTR);
    for (int waited = 0; rc != 0; waited++) {
        CHECK(waited < 5000); /* 5 s */
        uv_run(&G.loop, UV_RUN_NOWAIT);
        struct pollfd pf = {.fd = G.fd, .events = POLLOUT};
        int pr = poll(&pf, 1, 1);
        if (pr < 0 && errno == EINTR)
            continue;
        CHECK(pr >= 0);
        if (pr == 1) {
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            CHECK(getsockopt(G.fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0);
            if (soerr != 0)
                fprintf(stderr, "fuzz_session: connect: %s\n", strerror(soerr));
            CHECK(soerr == 0);
            rc = 0;
        }
    }
    size_t off = 0;
    uv_timer_start(&G.tick, tick_cb, 1, 1);
    int turns = 0;
    /* write everything (the server reads as the loop turns), then half-close */
    while (off < in.len && turns < MAX_TURNS) {
        ssize_t n = send(G.fd, in.data + off, in.len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0)
            off += (size_t)n;
        else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            break; /* the server closed the connection */
        drain_client();
        uv_run(&G.loop, UV_RUN_NOWAIT);
        if (G.closed)
            break;
        if (n <= 0)
            uv_run(&G.loop, UV_RUN_ONCE), turns++;
    }
    shutdown(G.fd, SHUT_WR);
    while (!(G.opened && G.closed) && turns++ < MAX_TURNS) {
        drain_client();
        uv_run(&G.loop, UV_RUN_ONCE);
    }
    if (!G.closed) {
        /* a session that answered and waits for more: end it as the daemon would at shutdown */
        if (!G.opened) {
            while (!G.opened)
                uv_run(&G.loop, UV_RUN_ONCE);
        }
        net_close_all(G.l, FC_ERR_CLOSED, "fuzz input done");
        while (!G.closed) {
            drain_client();
            uv_run(&G.loop, UV_RUN_ONCE);
        }
    }
    close(G.fd);
    G.fd = -1;
    /* validation work on the pool and the connection's memory finish in later turns (the 1 ms
     * tick bounds each turn) */
    for (int i = 0; i < 5000 && (sess_server_count(G.sv) || net_listener_count(G.l) ||
                                 sess_budget_memory_used(G.budget));
         i++)
        uv_run(&G.loop, UV_RUN_ONCE);
    uv_timer_stop(&G.tick);
    CHECK(sess_server_count(G.sv) == 0);
    CHECK(net_listener_count(G.l) == 0);
    CHECK(sess_budget_memory_used(G.budget) == 0);
    fc_buf_free(&in);
}

/* ---- seed generator ---- */

static void write_seed(const char *dir, const char *name, int preamble, const fc_buf *b) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f);
    uint8_t ctl = preamble ? 1 : 0;
    CHECK(fwrite(&ctl, 1, 1, f) == 1);
    CHECK(b->len == 0 || fwrite(b->data, 1, b->len, f) == b->len);
    CHECK(fclose(f) == 0);
}

static void put_upload(fc_buf *b, uint64_t seq, int bad_hash) {
    fc_error err = {0};
    fc_wire_msg m;
    fc_wire_update_begin_args a = {.round = ROUND,
                                   .base_version = BASE,
                                   .tensors = G.specs,
                                   .n_tensors = 2,
                                   .total_bytes = 24,
                                   .is_delta = 1};
    CHECK(fc_wire_update_begin(&m, 0, &a, &err) == FC_OK);
    put(b, &m, seq++);
    float w[4] = {0.5f, -0.25f, 1.0f, 2.0f}, bias[2] = {0.125f, -1.0f};
    CHECK(fc_frame_encode_chunk(seq++, 0, 0, w, sizeof w, 0, b, &err) == FC_OK);
    CHECK(fc_frame_encode_chunk(seq++, 1, 0, bias, sizeof bias, 0, b, &err) == FC_OK);
    uint8_t sha[32];
    unsigned hl = 0;
    EVP_MD_CTX *x = EVP_MD_CTX_new();
    CHECK(x);
    EVP_DigestInit_ex(x, EVP_sha256(), NULL);
    EVP_DigestUpdate(x, w, sizeof w);
    EVP_DigestUpdate(x, bias, sizeof bias);
    EVP_DigestFinal_ex(x, sha, &hl);
    EVP_MD_CTX_free(x);
    if (bad_hash)
        sha[0] ^= 1;
    fc_wire_metric met = {"train_loss", 0.5};
    CHECK(fc_wire_update_end(&m, 0, sha, 10, &met, 1, &err) == FC_OK);
    put(b, &m, seq);
}

static void write_seeds(const char *dir) {
    fc_error err = {0};
    fc_wire_msg m;
    fc_buf b = FC_BUF_INIT;
    /* hello + model request + bye */
    CHECK(fc_wire_model_request(&m, 0, 0, 0, &err) == FC_OK);
    put(&b, &m, 2);
    CHECK(fc_wire_bye(&m, 0, "done", &err) == FC_OK);
    put(&b, &m, 3);
    write_seed(dir, "model_request", 1, &b);
    fc_buf_free(&b);
    /* hello + model request from an offset */
    CHECK(fc_wire_model_request(&m, 0, BASE, 8, &err) == FC_OK);
    put(&b, &m, 2);
    write_seed(dir, "model_resume", 1, &b);
    fc_buf_free(&b);
    /* hello + a valid upload + bye */
    put_upload(&b, 2, 0);
    CHECK(fc_wire_bye(&m, 0, "done", &err) == FC_OK);
    put(&b, &m, 6);
    write_seed(dir, "upload", 1, &b);
    fc_buf_free(&b);
    /* hello + an upload with a wrong hash */
    put_upload(&b, 2, 1);
    write_seed(dir, "upload_bad_hash", 1, &b);
    fc_buf_free(&b);
    /* hello + heartbeat + model request + upload */
    CHECK(fc_wire_heartbeat(&m, 0, 1, &err) == FC_OK);
    put(&b, &m, 2);
    CHECK(fc_wire_model_request(&m, 0, 0, 0, &err) == FC_OK);
    put(&b, &m, 3);
    put_upload(&b, 4, 0);
    write_seed(dir, "heartbeat_model_upload", 1, &b);
    fc_buf_free(&b);
    /* no preamble: a Hello with a wrong token; a Hello of bob */
    put_hello(&b, "alice", "wrong-token");
    write_seed(dir, "hello_bad_token", 0, &b);
    fc_buf_free(&b);
    put_hello(&b, "bob", "tok-bob");
    CHECK(fc_wire_model_request(&m, 0, 0, 0, &err) == FC_OK);
    put(&b, &m, 2);
    write_seed(dir, "hello_bob_model", 0, &b);
    fc_buf_free(&b);
    /* hello, then an UpdateBegin for a round that is not open */
    fc_wire_update_begin_args a = {
        .round = 5, .base_version = BASE, .tensors = G.specs, .n_tensors = 2, .total_bytes = 24};
    CHECK(fc_wire_update_begin(&m, 0, &a, &err) == FC_OK);
    put(&b, &m, 2);
    write_seed(dir, "upload_wrong_round", 1, &b);
    fc_buf_free(&b);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fc_log_set_level(FC_LOG_ERROR);
    setup();
    const char *dir = getenv("FUZZ_SESSION_SEEDS");
    if (dir && *dir) {
        write_seeds(dir);
        exit(0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    run_once(data, size);
    return 0;
}
