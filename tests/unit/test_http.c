/* test_http.c: the HTTP server and the operators' API over real loopback sockets.
 *
 * The libuv loop runs in a second thread; the test thread is the HTTP client, writing raw
 * requests on blocking sockets (with receive timeouts) and parsing the raw responses itself.
 * The store is a real SQLite file in FC_TEST_TMPDIR written with store_commit_round. Expected
 * bytes come from the committed data (model bytes, SHA-256 computed here with OpenSSL), never
 * from the server's own output.
 */
#define _GNU_SOURCE /* memmem, strcasestr */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <sqlite3.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/safetensors.h"
#include "server/api.h"
#include "server/http.h"
#include "server/metrics.h"
#include "storage/store.h"
#include "tests/lib/testutil.h"
#include "tests/lib/tlsgen.h"

#define ADMIN "s3cret-admin-token"

/* ---- the database ---- */

static char g_db[512];
/* Version 1: w f32 [30,40], b f32 [40]. Version 2: big f32 [3 Mi] (12 MiB), parent 1. */
#define V1_W 1200
#define V1_B 40
#define V1_SIZE ((V1_W + V1_B) * 4)
#define V2_N (3u << 20)
#define V2_SIZE ((size_t)V2_N * 4)
static uint8_t *g_v1, *g_v2;
static uint8_t g_client_sha[32];

static void sha256(const void *d, size_t n, uint8_t out[32]) {
    unsigned int len = 0;
    assert_int_equal(EVP_Digest(d, n, out, &len, EVP_sha256(), NULL), 1);
}

static void hex(const uint8_t *h, char out[65]) {
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", h[i]);
}

static void fill(uint8_t *p, size_t n, uint32_t seed) {
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (uint8_t)x;
    }
}

typedef struct src {
    const uint8_t *d;
    size_t len, pos;
} src;

static fc_status src_read(void *ud, void *buf, size_t cap, size_t *got, fc_error *err) {
    (void)err;
    src *s = ud;
    size_t n = s->len - s->pos < cap ? s->len - s->pos : cap;
    memcpy(buf, s->d + s->pos, n);
    s->pos += n;
    *got = n;
    return FC_OK;
}

static int setup_db(void **state) {
    (void)state;
    fc_test_path(g_db, sizeof g_db, "http.db");
    unlink(g_db);
    store *s;
    fc_error err = {0};
    store_options opt = {.version = STORE_OPTIONS_V1, .chunk_size = 1 << 20};
    if (store_open(g_db, &opt, &s, &err) != FC_OK)
        return -1;
    memset(g_client_sha, 0xab, 32);
    uint8_t other[32];
    memset(other, 0xcd, 32);
    int64_t cid;
    if (store_client_add(s, "alice", g_client_sha, 10, &cid, &err) != FC_OK ||
        store_client_add(s, "bob", other, 11, &cid, &err) != FC_OK)
        return -1;
    g_v1 = malloc(V1_SIZE);
    g_v2 = malloc(V2_SIZE);
    fill(g_v1, V1_SIZE, 1);
    fill(g_v2, V2_SIZE, 2);
    src s1 = {g_v1, V1_SIZE, 0}, s2 = {g_v2, V2_SIZE, 0};
    store_participant parts[2] = {
        {.client = "alice",
         .outcome = STORE_OUTCOME_ACCEPTED,
         .num_examples = 10,
         .bytes = 40,
         .metrics_json = "{\"loss\":0.25}"},
        {.client = "bob", .outcome = STORE_OUTCOME_REJECTED, .reason = "norm too large"},
    };
    store_commit c1 = {.round_id = 1,
                       .version = 1,
                       .tensor_specs_json = "[{\"name\":\"w\",\"dtype\":\"f32\",\"shape\":[30,40]},"
                                            "{\"name\":\"b\",\"dtype\":\"f32\",\"shape\":[40]}]",
                       .model_size = V1_SIZE,
                       .source = src_read,
                       .source_ud = &s1,
                       .started_at = 1000,
                       .ended_at = 4000,
                       .config_json = "{\"lr\":0.1}",
                       .report_json = "{\"selected\":[\"alice\"],\"trimmed\":0}",
                       .metrics_json = "{\"loss\":0.5,\"accuracy\":0.8}",
                       .participants = parts,
                       .num_participants = 2,
                       .rule_name = "fedavg",
                       .optimizer_name = "sgd"};
    if (store_commit_round(s, &c1, NULL, &err) != FC_OK)
        return -1;
    store_commit c2 = {.round_id = 2,
                       .version = 2,
                       .parent_version = 1,
                       .tensor_specs_json =
                           "[{\"name\":\"big\",\"dtype\":\"F32\",\"shape\":[3145728]}]",
                       .model_size = V2_SIZE,
                       .source = src_read,
                       .source_ud = &s2,
                       .started_at = 5000,
                       .ended_at = 9000,
                       .rule_name = "fedavg",
                       .optimizer_name = "sgd"};
    if (store_commit_round(s, &c2, NULL, &err) != FC_OK)
        return -1;
    if (store_round_fail(s, 3, "too few clients", NULL, 0, 12000, &err) != FC_OK)
        return -1;
    store_close(s);
    return 0;
}

static int teardown_db(void **state) {
    (void)state;
    free(g_v1);
    free(g_v2);
    return 0;
}

/* ---- the daemon side: provider and server on a loop thread ---- */

typedef struct fake_daemon {
    atomic_int ready;
    atomic_int controls;
    char last_action[16];
    atomic_int paused;
} fake_daemon;

static fc_status fd_status(void *ctx, json_t *out, fc_error *err) {
    (void)ctx;
    (void)err;
    json_object_set_new(out, "mode", json_string("sync"));
    json_object_set_new(out, "state", json_string("training"));
    json_object_set_new(
        out, "round",
        json_pack("{s:i,s:s,s:i,s:i}", "id", 4, "phase", "training", "selected", 3, "received", 1));
    return FC_OK;
}

static int fd_ready(void *ctx, const char **why) {
    fake_daemon *d = ctx;
    if (!d->ready)
        *why = "model not loaded yet";
    return d->ready;
}

static fc_status fd_control(void *ctx, const char *action, fc_error *err) {
    fake_daemon *d = ctx;
    if (strcmp(action, "pause") == 0 && d->paused)
        return fc_error_set(err, FC_ERR_STATE, "already paused");
    if (strcmp(action, "pause") == 0)
        d->paused = 1;
    snprintf(d->last_action, sizeof d->last_action, "%s", action);
    d->controls++;
    return FC_OK;
}

static void fd_client_live(void *ctx, const char *name, json_t *out) {
    (void)ctx;
    if (strcmp(name, "alice") == 0)
        json_object_set_new(out, "connected", json_true());
}

typedef struct harness {
    uv_loop_t loop;
    uv_async_t stop;
    uv_async_t busy; /* fills the thread pool with sleepers (see pool_busy_cb) */
    uv_work_t sleepers[4];
    pthread_t th;
    http_server *srv;
    api *api;
    metrics_fedcoord m;
    fake_daemon d;
    int port;
} harness;

static harness *H;
static const char *g_serve_db; /* NULL: g_db */

static void *loop_main(void *arg) {
    harness *h = arg;
    uv_run(&h->loop, UV_RUN_DEFAULT);
    return NULL;
}

static atomic_int g_sleeping;

static void sleeper_work(uv_work_t *w) {
    (void)w;
    g_sleeping++;
    struct timespec ts = {.tv_nsec = 600 * 1000000L};
    nanosleep(&ts, NULL);
}

static void sleeper_done(uv_work_t *w, int status) {
    (void)w;
    (void)status;
}

/* Occupies libuv's 4 pool threads for 600 ms, so store reads queued now wait that long. */
static void pool_busy_cb(uv_async_t *a) {
    harness *h = a->data;
    for (int i = 0; i < 4; i++)
        uv_queue_work(&h->loop, &h->sleepers[i], sleeper_work, sleeper_done);
}

static void stop_cb(uv_async_t *a) {
    harness *h = a->data;
    http_server_stop(h->srv, NULL, NULL);
    uv_close((uv_handle_t *)a, NULL);
    uv_close((uv_handle_t *)&h->busy, NULL);
}

static void h_start_tls(harness *h, const http_limits *lim, int auth_reads,
                        const net_tls_config *tls) {
    memset(h, 0, sizeof *h);
    fc_error err = {0};
    assert_int_equal(uv_loop_init(&h->loop), 0);
    assert_int_equal(metrics_fedcoord_new(&h->m, &err), FC_OK);
    h->d.ready = 1;
    api_config ac = {.version = API_CONFIG_V1,
                     .store_path = g_serve_db ? g_serve_db : g_db,
                     .admin_token = ADMIN,
                     .auth_reads = auth_reads,
                     .metrics = h->m.reg,
                     .http_metrics = &h->m,
                     .provider = {.version = API_PROVIDER_V1,
                                  .ctx = &h->d,
                                  .status = fd_status,
                                  .ready = fd_ready,
                                  .control = fd_control,
                                  .client_live = fd_client_live}};
    assert_int_equal(api_new(&ac, &h->api, &err), FC_OK);
    http_server_config hc = {.version = HTTP_SERVER_CONFIG_V1, .host = "127.0.0.1"};
    if (tls) {
        hc.tls = 1;
        hc.tls_cfg = *tls;
    }
    if (lim)
        hc.limits = *lim;
    else
        http_limits_default(&hc.limits);
    assert_int_equal(api_server_start(h->api, &h->loop, &hc, &h->srv, &err), FC_OK);
    h->port = http_server_port(h->srv);
    assert_int_equal(uv_async_init(&h->loop, &h->stop, stop_cb), 0);
    h->stop.data = h;
    assert_int_equal(uv_async_init(&h->loop, &h->busy, pool_busy_cb), 0);
    h->busy.data = h;
    assert_int_equal(pthread_create(&h->th, NULL, loop_main, h), 0);
}

static void h_start_with(harness *h, const http_limits *lim, int auth_reads) {
    h_start_tls(h, lim, auth_reads, NULL);
}

static void h_stop(harness *h) {
    uv_async_send(&h->stop);
    pthread_join(h->th, NULL);
    assert_int_equal(uv_loop_close(&h->loop), 0);
    api_free(h->api);
    metrics_free(h->m.reg);
}

static int setup_server(void **state) {
    (void)state;
    H = calloc(1, sizeof *H);
    h_start_with(H, NULL, 0);
    return 0;
}

static int teardown_server(void **state) {
    (void)state;
    h_stop(H);
    free(H);
    H = NULL;
    return 0;
}

/* ---- the client side ---- */

typedef struct conn {
    int fd;
    char buf[1 << 16];
    size_t len;
} conn;

typedef struct resp {
    int status;
    char head[8192];
    char *body;
    size_t body_len;
    long content_length;
} resp;

static void conn_open_rcvbuf(conn *c, int port, int rcvbuf) {
    c->len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    if (rcvbuf)
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof sa), 0);
}

static void conn_open(conn *c, int port) { conn_open_rcvbuf(c, port, 0); }

static void conn_send(conn *c, const char *data, size_t len) {
    while (len) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        assert_true(n > 0);
        data += n;
        len -= (size_t)n;
    }
}

static void conn_sends(conn *c, const char *s) { conn_send(c, s, strlen(s)); }

/* Reads more bytes into c->buf; returns bytes read (0 = EOF, -1 = error/timeout). */
static ssize_t conn_fill(conn *c) {
    if (c->len == sizeof c->buf)
        return -1;
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (n > 0)
        c->len += (size_t)n;
    return n;
}

static void conn_take(conn *c, void *out, size_t n) {
    memcpy(out, c->buf, n);
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

static const char *header_value(const resp *r, const char *name, char *out, size_t size) {
    size_t nl = strlen(name);
    const char *p = strstr(r->head, "\r\n");
    while (p && p[2]) {
        p += 2;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            const char *e = strstr(v, "\r\n");
            size_t n = e ? (size_t)(e - v) : strlen(v);
            if (n >= size)
                n = size - 1;
            memcpy(out, v, n);
            out[n] = 0;
            return out;
        }
        p = strstr(p, "\r\n");
    }
    return NULL;
}

/* Reads one response; returns 0, or -1 if the connection ended or timed out first. */
static int conn_read(conn *c, resp *r) {
    memset(r, 0, sizeof *r);
    char *end;
    while (!(c->len && (end = memmem(c->buf, c->len, "\r\n\r\n", 4))))
        if (conn_fill(c) <= 0)
            return -1;
    size_t hl = (size_t)(end - c->buf) + 4;
    assert_true(hl < sizeof r->head);
    conn_take(c, r->head, hl);
    r->head[hl] = 0;
    assert_int_equal(sscanf(r->head, "HTTP/1.1 %d", &r->status), 1);
    char v[64];
    assert_non_null(header_value(r, "Content-Length", v, sizeof v));
    r->content_length = atol(v);
    r->body = malloc((size_t)r->content_length + 1);
    size_t got = 0;
    while (got < (size_t)r->content_length) {
        if (!c->len && conn_fill(c) <= 0)
            break;
        size_t n =
            c->len < (size_t)r->content_length - got ? c->len : (size_t)r->content_length - got;
        conn_take(c, r->body + got, n);
        got += n;
    }
    r->body[got] = 0;
    r->body_len = got;
    return got == (size_t)r->content_length ? 0 : -1;
}

static void resp_free(resp *r) {
    free(r->body);
    r->body = NULL;
}

static int conn_at_eof(conn *c) {
    if (c->len)
        return 0;
    return conn_fill(c) == 0;
}

static void conn_close(conn *c) { close(c->fd); }

/* One request on a fresh connection. */
static void request(const char *raw, resp *r) {
    conn c;
    conn_open(&c, H->port);
    conn_sends(&c, raw);
    assert_int_equal(conn_read(&c, r), 0);
    conn_close(&c);
}

static void get(const char *path, const char *auth, resp *r) {
    char raw[2048];
    snprintf(raw, sizeof raw, "GET %s HTTP/1.1\r\nHost: t\r\n%s%s%sConnection: close\r\n\r\n", path,
             auth ? "Authorization: " : "", auth ? auth : "", auth ? "\r\n" : "");
    request(raw, r);
}

/* The "code" of a JSON error body. */
static void assert_error(const resp *r, int status, const char *code) {
    if (r->status != status)
        print_message("unexpected response:\n%s%s\n", r->head, r->body);
    assert_int_equal(r->status, status);
    json_error_t e;
    json_t *j = json_loads(r->body, 0, &e);
    assert_non_null(j);
    const char *got = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    assert_non_null(got);
    assert_string_equal(got, code);
    assert_non_null(json_string_value(json_object_get(json_object_get(j, "error"), "message")));
    json_decref(j);
    char ct[64];
    assert_non_null(header_value(r, "Content-Type", ct, sizeof ct));
    assert_string_equal(ct, "application/json");
}

static json_t *body_json(const resp *r) {
    json_error_t e;
    json_t *j = json_loads(r->body, 0, &e);
    if (!j)
        print_message("not JSON: %s (%s)\n", r->body, e.text);
    assert_non_null(j);
    return j;
}

/* ---- tests ---- */

static void test_keep_alive_serves_pipelined_requests_on_one_connection(void **state) {
    (void)state;
    conn c;
    conn_open(&c, H->port);
    conn_sends(&c,
               "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /readyz HTTP/1.1\r\nHost: t\r\n\r\n");
    resp r1, r2, r3;
    assert_int_equal(conn_read(&c, &r1), 0);
    assert_int_equal(r1.status, 200);
    assert_string_equal(r1.body, "{\"status\":\"ok\"}\n");
    char v[64];
    assert_string_equal(header_value(&r1, "Connection", v, sizeof v), "keep-alive");
    assert_int_equal(conn_read(&c, &r2), 0);
    assert_int_equal(r2.status, 200);
    assert_string_equal(r2.body, "{\"ready\":true}\n");
    /* A third request later on the same connection. */
    conn_sends(&c, "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_int_equal(conn_read(&c, &r3), 0);
    assert_int_equal(r3.status, 200);
    assert_string_equal(header_value(&r3, "Connection", v, sizeof v), "close");
    assert_true(conn_at_eof(&c));
    conn_close(&c);
    resp_free(&r1);
    resp_free(&r2);
    resp_free(&r3);
}

static void test_pipelined_store_reads_answer_in_order(void **state) {
    (void)state;
    /* /v1/rounds, /v1/clients and /v1/models/1 are read on the thread pool; /healthz is not.
     * The answers still come back in request order. */
    conn c;
    conn_open(&c, H->port);
    conn_sends(&c, "GET /v1/rounds/1 HTTP/1.1\r\nHost: t\r\n\r\n"
                   "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
                   "GET /v1/clients HTTP/1.1\r\nHost: t\r\n\r\n"
                   "GET /v1/models/1 HTTP/1.1\r\nHost: t\r\n\r\n"
                   "GET /v1/rounds/99 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    resp r;
    assert_int_equal(conn_read(&c, &r), 0);
    assert_non_null(strstr(r.body, "\"participants\""));
    resp_free(&r);
    assert_int_equal(conn_read(&c, &r), 0);
    assert_string_equal(r.body, "{\"status\":\"ok\"}\n");
    resp_free(&r);
    assert_int_equal(conn_read(&c, &r), 0);
    assert_non_null(strstr(r.body, "\"clients\""));
    assert_non_null(strstr(r.body, "\"connected\":true")); /* live field added on the loop */
    resp_free(&r);
    assert_int_equal(conn_read(&c, &r), 0);
    assert_non_null(strstr(r.body, "\"version\":1"));
    resp_free(&r);
    assert_int_equal(conn_read(&c, &r), 0);
    assert_error(&r, 404, "not_found");
    resp_free(&r);
    assert_true(conn_at_eof(&c));
    conn_close(&c);
    /* Connections that leave with store reads in flight. */
    for (int i = 0; i < 20; i++) {
        conn_open(&c, H->port);
        conn_sends(&c, "GET /v1/rounds HTTP/1.1\r\nHost: t\r\n\r\n"
                       "GET /v1/clients HTTP/1.1\r\nHost: t\r\n\r\n");
        conn_close(&c);
    }
    get("/v1/models", NULL, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
}

static void test_stop_while_a_store_read_waits_drops_its_answer(void **state) {
    (void)state;
    harness h;
    h_start_with(&h, NULL, 0);
    g_sleeping = 0;
    uv_async_send(&h.busy);
    struct timespec ts = {.tv_nsec = 50 * 1000000L};
    for (int i = 0; i < 2000 && g_sleeping < 4; i++)
        nanosleep(&(struct timespec){.tv_nsec = 1000000L}, NULL);
    assert_int_equal(g_sleeping, 4); /* all pool threads are busy for 600 ms from now */
    /* This read queues behind the sleepers; the server stops before it runs. The connection
     * is then closing (its linger waits for our FIN, which we do not send) when the read
     * finishes: the answer must be dropped, and the connection's close later must not touch
     * the finished work (ASan would see a use after free). */
    conn c;
    conn_open(&c, h.port);
    conn_sends(&c, "GET /v1/rounds HTTP/1.1\r\nHost: t\r\n\r\n");
    nanosleep(&ts, NULL);
    h_stop(&h);
    char buf[64];
    ssize_t n = recv(c.fd, buf, sizeof buf, 0);
    assert_true(n <= 0); /* no response, only the close */
    conn_close(&c);
}

static void test_huge_headers_get_431_and_close(void **state) {
    (void)state;
    size_t n = 20000;
    char *raw = malloc(n + 100);
    strcpy(raw, "GET /healthz HTTP/1.1\r\nX-Big: ");
    size_t l = strlen(raw);
    memset(raw + l, 'a', n);
    strcpy(raw + l + n, "\r\n\r\n");
    conn c;
    conn_open(&c, H->port);
    conn_sends(&c, raw);
    resp r;
    assert_int_equal(conn_read(&c, &r), 0);
    assert_error(&r, 431, "headers_too_large");
    assert_true(conn_at_eof(&c));
    conn_close(&c);
    resp_free(&r);
    free(raw);
}

static void test_bad_methods_get_405(void **state) {
    (void)state;
    resp r;
    request("BREW /healthz HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_error(&r, 405, "method_not_allowed");
    resp_free(&r);
    request("DELETE /v1/status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", &r);
    assert_error(&r, 405, "method_not_allowed");
    char v[32];
    assert_string_equal(header_value(&r, "Allow", v, sizeof v), "GET, HEAD");
    resp_free(&r);
    request("GET /v1/control/pause HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", &r);
    assert_error(&r, 405, "method_not_allowed");
    assert_string_equal(header_value(&r, "Allow", v, sizeof v), "POST");
    resp_free(&r);
}

static void test_unknown_paths_and_traversal_get_404(void **state) {
    (void)state;
    const char *paths[] = {
        "/nope",
        "/v1/models/../../etc/passwd/safetensors",
        "/v1/models/%2e%2e/safetensors",
        "/v1/models/01",
        "/v1/models/1a",
        "/v1/models/-1",
        "/v1/models/+1",
        "/v1/rounds/",
        "//v1/status",
        "/v1/status/",
        "/v1/models/1/safetensors/x",
        "/v1/models/99",
        "/v1/rounds/1234567890123456789",
        "/etc/passwd",
        "/v1/models/1%00/safetensors",
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        resp r;
        get(paths[i], NULL, &r);
        assert_error(&r, 404, "not_found");
        resp_free(&r);
    }
    /* A request-target that is not a path at all is a bad request. */
    resp r;
    request("GET ../../etc/passwd HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_true(r.status == 400 || r.status == 404);
    resp_free(&r);
}

static void test_control_needs_the_admin_token(void **state) {
    (void)state;
    resp r;
    request("POST /v1/control/pause HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", &r);
    assert_error(&r, 401, "unauthorized");
    char v[64];
    assert_non_null(header_value(&r, "WWW-Authenticate", v, sizeof v));
    resp_free(&r);
    request("POST /v1/control/pause HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " ADMIN
            "x\r\nContent-Length: 0\r\n\r\n",
            &r);
    assert_error(&r, 401, "unauthorized");
    resp_free(&r);
    request("POST /v1/control/pause HTTP/1.1\r\nHost: t\r\nAuthorization: Basic " ADMIN
            "\r\nContent-Length: 0\r\n\r\n",
            &r);
    assert_error(&r, 401, "unauthorized");
    resp_free(&r);
    assert_int_equal(H->d.controls, 0);
    request("POST /v1/control/pause HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " ADMIN
            "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            &r);
    assert_int_equal(r.status, 202);
    assert_string_equal(r.body, "{\"accepted\":\"pause\"}\n");
    resp_free(&r);
    assert_int_equal(H->d.controls, 1);
    assert_string_equal(H->d.last_action, "pause");
    /* The provider refuses a second pause: 409. */
    request("POST /v1/control/pause HTTP/1.1\r\nHost: t\r\nAuthorization: bearer " ADMIN
            "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            &r);
    assert_error(&r, 409, "conflict");
    resp_free(&r);
    request("POST /v1/control/stop HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " ADMIN
            "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            &r);
    assert_int_equal(r.status, 202);
    assert_string_equal(H->d.last_action, "stop");
    resp_free(&r);
}

static void test_oversize_body_gets_413(void **state) {
    (void)state;
    resp r;
    request("POST /v1/control/resume HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " ADMIN
            "\r\nContent-Length: 1000000\r\n\r\n",
            &r);
    assert_error(&r, 413, "body_too_large");
    resp_free(&r);
    /* Chunked: the limit is counted as the body arrives. */
    conn c;
    conn_open(&c, H->port);
    conn_sends(&c, "POST /v1/control/resume HTTP/1.1\r\nHost: t\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n");
    char chunk[8300];
    int hl = snprintf(chunk, sizeof chunk, "2000\r\n");
    memset(chunk + hl, 'x', 0x2000);
    memcpy(chunk + hl + 0x2000, "\r\n", 2);
    int got_413 = 0;
    for (int i = 0; i < 10 && !got_413; i++) {
        if (send(c.fd, chunk, (size_t)hl + 0x2000 + 2, MSG_NOSIGNAL) <= 0)
            break;
    }
    assert_int_equal(conn_read(&c, &r), 0);
    assert_error(&r, 413, "body_too_large");
    resp_free(&r);
    conn_close(&c);
}

static void check_export(const resp *r, const uint8_t *model, size_t size, int version) {
    assert_int_equal(r->status, 200);
    char v[128], want[65];
    uint8_t h[32];
    sha256(model, size, h);
    hex(h, want);
    assert_string_equal(header_value(r, "X-Fedcoord-Model-SHA256", v, sizeof v), want);
    assert_string_equal(header_value(r, "Content-Type", v, sizeof v), "application/octet-stream");
    fc_st_file *f;
    fc_error err = {0};
    assert_int_equal(fc_st_parse(r->body, r->body_len, "<export>", &f, &err), FC_OK);
    const fc_model *m = fc_st_model(f);
    /* The data section is exactly the committed bytes, tensors in spec order. */
    size_t off = 0;
    for (size_t i = 0; i < m->count; i++) {
        uint64_t nb = m->tensors[i].nbytes;
        assert_memory_equal(m->tensors[i].data, model + off, nb);
        off += nb;
    }
    assert_int_equal(off, size);
    assert_int_equal(fc_st_data_start(f) + size, r->body_len);
    char vs[16];
    snprintf(vs, sizeof vs, "%d", version);
    assert_string_equal(fc_st_meta_get(f, "fedcoord_version"), vs);
    fc_st_close(f);
}

static void test_safetensors_export_parses_back_and_equals_the_committed_model(void **state) {
    (void)state;
    resp r;
    get("/v1/models/1/safetensors", NULL, &r);
    check_export(&r, g_v1, V1_SIZE, 1);
    char v[64];
    assert_non_null(header_value(&r, "Content-Disposition", v, sizeof v));
    assert_non_null(strstr(v, "model-v1.safetensors"));
    resp_free(&r);
    /* The 12 MiB model streams in pieces and arrives whole. */
    get("/v1/models/2/safetensors", NULL, &r);
    check_export(&r, g_v2, V2_SIZE, 2);
    resp_free(&r);
}

static void test_slow_client_does_not_stop_other_requests(void **state) {
    (void)state;
    /* The slow client asks for 12 MiB with a tiny receive window and reads nothing. */
    conn slow;
    conn_open_rcvbuf(&slow, H->port, 4096);
    conn_sends(&slow, "GET /v1/models/2/safetensors HTTP/1.1\r\nHost: t\r\n\r\n");
    struct timespec ts = {.tv_nsec = 200 * 1000000L};
    nanosleep(&ts, NULL);
    for (int i = 0; i < 5; i++) {
        resp r;
        get(i % 2 ? "/v1/rounds" : "/healthz", NULL, &r);
        assert_int_equal(r.status, 200);
        resp_free(&r);
    }
    resp big;
    get("/v1/models/1/safetensors", NULL, &big);
    check_export(&big, g_v1, V1_SIZE, 1);
    resp_free(&big);
    /* Now the slow client reads, and gets every byte, in order. */
    resp r;
    assert_int_equal(conn_read(&slow, &r), 0);
    check_export(&r, g_v2, V2_SIZE, 2);
    resp_free(&r);
    /* And its connection is still usable (keep-alive after a stream). */
    conn_sends(&slow, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(conn_read(&slow, &r), 0);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    conn_close(&slow);
}

static void test_client_that_disconnects_mid_export_releases_the_stream(void **state) {
    (void)state;
    for (int i = 0; i < 3; i++) {
        conn c;
        conn_open_rcvbuf(&c, H->port, 4096);
        conn_sends(&c, "GET /v1/models/2/safetensors HTTP/1.1\r\nHost: t\r\n\r\n");
        char buf[1000];
        assert_true(recv(c.fd, buf, sizeof buf, 0) > 0);
        conn_close(&c);
    }
    resp r;
    get("/healthz", NULL, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    /* teardown's api_free and the leak checker under ASan verify the streams were freed. */
}

static void test_head_gives_the_length_without_the_body(void **state) {
    (void)state;
    conn c;
    conn_open(&c, H->port);
    conn_sends(&c, "HEAD /v1/models/1/safetensors HTTP/1.1\r\nHost: t\r\n\r\n"
                   "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    char *end;
    while (!(c.len && (end = memmem(c.buf, c.len, "\r\n\r\n", 4))))
        assert_true(conn_fill(&c) > 0);
    resp h = {0};
    size_t hl = (size_t)(end - c.buf) + 4;
    conn_take(&c, h.head, hl);
    assert_int_equal(sscanf(h.head, "HTTP/1.1 %d", &h.status), 1);
    assert_int_equal(h.status, 200);
    char v[64];
    /* The same length a GET sends: 8-byte length + JSON header + the model bytes. */
    resp g;
    get("/v1/models/1/safetensors", NULL, &g);
    assert_non_null(header_value(&h, "Content-Length", v, sizeof v));
    assert_int_equal(atol(v), g.content_length);
    resp_free(&g);
    /* The next bytes are the next response, not a body. */
    resp r;
    assert_int_equal(conn_read(&c, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"status\":\"ok\"}\n");
    resp_free(&r);
    conn_close(&c);
}

static void test_stopping_the_server_mid_export_releases_the_streams(void **state) {
    (void)state;
    harness h;
    h_start_with(&h, NULL, 0);
    conn c[2];
    for (int i = 0; i < 2; i++) {
        conn_open_rcvbuf(&c[i], h.port, 4096);
        conn_sends(&c[i], "GET /v1/models/2/safetensors HTTP/1.1\r\nHost: t\r\n\r\n");
        char buf[100];
        assert_true(recv(c[i].fd, buf, sizeof buf, 0) > 0); /* streaming has begun */
    }
    /* The clients read nothing more; stop must still finish (linger bounds the flush), and
     * the streams' store references must be released (ASan checks for leaks). */
    h_stop(&h);
    for (int i = 0; i < 2; i++)
        conn_close(&c[i]);
}

static void test_rounds_list_pages_newest_first(void **state) {
    (void)state;
    resp r;
    get("/v1/rounds?limit=2", NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    json_t *rounds = json_object_get(j, "rounds");
    assert_int_equal(json_array_size(rounds), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(rounds, 0), "id")), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(rounds, 0), "state")),
                        "failed");
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(rounds, 0), "failure_reason")),
        "too few clients");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(rounds, 1), "id")), 2);
    assert_int_equal(json_integer_value(json_object_get(j, "next_before")), 2);
    json_decref(j);
    resp_free(&r);
    get("/v1/rounds?before=2&limit=5", NULL, &r);
    j = body_json(&r);
    rounds = json_object_get(j, "rounds");
    assert_int_equal(json_array_size(rounds), 1);
    json_t *r1 = json_array_get(rounds, 0);
    assert_int_equal(json_integer_value(json_object_get(r1, "id")), 1);
    assert_int_equal(json_integer_value(json_object_get(r1, "duration_ms")), 3000);
    assert_int_equal(json_integer_value(json_object_get(r1, "model_version")), 1);
    assert_true(json_is_null(json_object_get(j, "next_before")));
    json_decref(j);
    resp_free(&r);
    const char *bad[] = {"/v1/rounds?limit=0",         "/v1/rounds?limit=abc",
                         "/v1/rounds?limit=1001",      "/v1/rounds?foo=1",
                         "/v1/rounds?limit=1&limit=2", "/v1/rounds?before",
                         "/v1/rounds?limit=1&",        "/v1/status?x=1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        get(bad[i], NULL, &r);
        assert_error(&r, 400, "bad_request");
        resp_free(&r);
    }
}

static void test_round_detail_has_participants_report_and_metrics(void **state) {
    (void)state;
    resp r;
    get("/v1/rounds/1", NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "committed");
    json_t *rep = json_object_get(j, "report");
    assert_string_equal(json_string_value(json_array_get(json_object_get(rep, "selected"), 0)),
                        "alice");
    assert_true(json_real_value(json_object_get(json_object_get(j, "metrics"), "accuracy")) == 0.8);
    assert_true(json_real_value(json_object_get(json_object_get(j, "config"), "lr")) == 0.1);
    json_t *parts = json_object_get(j, "participants");
    assert_int_equal(json_array_size(parts), 2);
    json_t *bob = json_array_get(parts, 1);
    assert_string_equal(json_string_value(json_object_get(bob, "client")), "bob");
    assert_string_equal(json_string_value(json_object_get(bob, "outcome")), "rejected");
    assert_string_equal(json_string_value(json_object_get(bob, "reason")), "norm too large");
    json_t *alice = json_array_get(parts, 0);
    assert_int_equal(json_integer_value(json_object_get(alice, "num_examples")), 10);
    assert_true(json_real_value(json_object_get(json_object_get(alice, "metrics"), "loss")) ==
                0.25);
    json_decref(j);
    resp_free(&r);
    get("/v1/rounds/77", NULL, &r);
    assert_error(&r, 404, "not_found");
    resp_free(&r);
}

static void test_clients_show_counters_and_liveness_never_tokens(void **state) {
    (void)state;
    resp r;
    get("/v1/clients", NULL, &r);
    assert_int_equal(r.status, 200);
    char h[65];
    hex(g_client_sha, h);
    assert_null(strstr(r.body, h));
    assert_null(strstr(r.body, "abababab"));
    assert_null(strcasestr(r.body, "token"));
    json_t *j = body_json(&r);
    json_t *cl = json_object_get(j, "clients");
    assert_int_equal(json_array_size(cl), 2);
    json_t *alice = json_array_get(cl, 0), *bob = json_array_get(cl, 1);
    assert_string_equal(json_string_value(json_object_get(alice, "name")), "alice");
    assert_true(json_is_true(json_object_get(alice, "connected")));
    assert_true(json_is_false(json_object_get(bob, "connected")));
    assert_int_equal(json_integer_value(json_object_get(alice, "rounds_participated")), 1);
    assert_int_equal(json_integer_value(json_object_get(bob, "rejections")), 1);
    json_decref(j);
    resp_free(&r);
}

static void test_models_list_detail_and_parent_chain(void **state) {
    (void)state;
    resp r;
    get("/v1/models", NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    json_t *ms = json_object_get(j, "models");
    assert_int_equal(json_array_size(ms), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(ms, 0), "version")), 2);
    json_decref(j);
    resp_free(&r);
    get("/v1/models/2", NULL, &r);
    assert_int_equal(r.status, 200);
    j = body_json(&r);
    uint8_t h1[32], h2[32];
    char x1[65], x2[65];
    sha256(g_v1, V1_SIZE, h1);
    sha256(g_v2, V2_SIZE, h2);
    hex(h1, x1);
    hex(h2, x2);
    assert_string_equal(json_string_value(json_object_get(j, "sha256")), x2);
    assert_string_equal(json_string_value(json_object_get(j, "parent_sha256")), x1);
    assert_int_equal(json_integer_value(json_object_get(j, "size")), V2_SIZE);
    json_t *chain = json_object_get(j, "parent_chain");
    assert_int_equal(json_array_size(chain), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(chain, 0), "version")), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(chain, 0), "sha256")), x1);
    json_t *t = json_array_get(json_object_get(j, "tensors"), 0);
    assert_string_equal(json_string_value(json_object_get(t, "name")), "big");
    json_decref(j);
    resp_free(&r);
}

static void test_status_readyz_and_metrics_come_from_the_daemon(void **state) {
    (void)state;
    resp r;
    get("/v1/status", NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "training");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "round"), "id")), 4);
    json_decref(j);
    resp_free(&r);
    H->d.ready = 0;
    get("/readyz", NULL, &r);
    assert_error(&r, 503, "not_ready");
    assert_non_null(strstr(r.body, "model not loaded yet"));
    resp_free(&r);
    H->d.ready = 1;
    get("/metrics", NULL, &r);
    assert_int_equal(r.status, 200);
    char v[128];
    assert_string_equal(header_value(&r, "Content-Type", v, sizeof v),
                        "text/plain; version=0.0.4; charset=utf-8");
    assert_non_null(strstr(r.body, "# TYPE fedcoord_rounds_total counter\n"));
    /* The earlier 503 of /readyz was counted before this response was rendered. */
    assert_null(strstr(r.body, "fedcoord_http_requests_total{code=\"5xx\"} 0\n"));
    assert_non_null(strstr(r.body, "fedcoord_http_requests_total{code=\"5xx\"} "));
    resp_free(&r);
}

static void test_store_missing_gives_503(void **state) {
    (void)state;
    metrics_fedcoord m;
    fc_error err = {0};
    assert_int_equal(metrics_fedcoord_new(&m, &err), FC_OK);
    char path[512];
    fc_test_path(path, sizeof path, "missing.db");
    api *a;
    api_config ac = {
        .version = API_CONFIG_V1, .store_path = path, .provider = {.version = API_PROVIDER_V1}};
    assert_int_equal(api_new(&ac, &a, &err), FC_OK);
    http_limits lim;
    http_limits_default(&lim);
    fc_buf out = FC_BUF_INIT;
    const char *raw = "GET /v1/rounds HTTP/1.1\r\n\r\nGET /v1/status HTTP/1.1\r\n\r\n"
                      "POST /v1/control/stop HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
                      "GET /metrics HTTP/1.1\r\n\r\n";
    assert_int_equal(
        http_process_bytes(&lim, api_handle, a, (const uint8_t *)raw, strlen(raw), &out, &err),
        FC_OK);
    assert_int_equal(fc_buf_append(&out, "", 1), FC_OK);
    const char *text = (const char *)out.data;
    const char *p1 = strstr(text, "HTTP/1.1 503 Service Unavailable");
    assert_non_null(p1);
    assert_non_null(strstr(text, "\"store_unavailable\""));
    const char *p2 = strstr(p1 + 1, "HTTP/1.1 503 Service Unavailable");
    assert_non_null(p2);                                       /* no status provider */
    const char *p3 = strstr(p2 + 1, "HTTP/1.1 403 Forbidden"); /* no admin token */
    assert_non_null(p3);
    assert_non_null(strstr(p3 + 1, "HTTP/1.1 503 Service Unavailable")); /* no registry */
    fc_buf_free(&out);
    api_free(a);
    metrics_free(m.reg);
}

static void test_process_bytes_answers_like_a_connection(void **state) {
    (void)state;
    api *a;
    fc_error err = {0};
    api_config ac = {
        .version = API_CONFIG_V1, .store_path = g_db, .provider = {.version = API_PROVIDER_V1}};
    assert_int_equal(api_new(&ac, &a, &err), FC_OK);
    http_limits lim;
    http_limits_default(&lim);
    fc_buf out = FC_BUF_INIT;
    const char *raw = "GET /healthz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n"
                      "GET /healthz HTTP/1.1\r\n\r\n";
    assert_int_equal(
        http_process_bytes(&lim, api_handle, a, (const uint8_t *)raw, strlen(raw), &out, &err),
        FC_OK);
    assert_int_equal(fc_buf_append(&out, "", 1), FC_OK);
    const char *expect1 = "HTTP/1.1 200 OK\r\nContent-Length: 16\r\nConnection: keep-alive\r\n"
                          "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                          "Content-Type: application/json\r\n\r\n{\"status\":\"ok\"}\n";
    assert_memory_equal(out.data, expect1, strlen(expect1));
    /* HTTP/1.0 without keep-alive: "Connection: close" and nothing after it. */
    const char *second = (const char *)out.data + strlen(expect1);
    assert_non_null(strstr(second, "Connection: close\r\n"));
    assert_null(strstr(second + 1, "HTTP/1.1"));
    fc_buf_free(&out);
    api_free(a);
}

static void test_allocation_failures_give_clean_errors_without_leaks(void **state) {
    (void)state;
    const char *raw = "GET /v1/rounds?limit=2 HTTP/1.1\r\n\r\nGET /v1/rounds/1 HTTP/1.1\r\n\r\n"
                      "GET /v1/models/2 HTTP/1.1\r\n\r\nGET /v1/clients HTTP/1.1\r\n\r\n"
                      "GET /metrics HTTP/1.1\r\n\r\n"
                      "POST /v1/control/pause HTTP/1.1\r\nAuthorization: Bearer " ADMIN
                      "\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                      "GET /v1/models/1/safetensors HTTP/1.1\r\n\r\n";
    fake_daemon d = {.ready = 1};
    int completed = 0;
    for (int n = 0; n < 2000 && !completed; n++) {
        metrics_fedcoord m;
        fc_error err = {0};
        assert_int_equal(metrics_fedcoord_new(&m, &err), FC_OK);
        api *a;
        api_config ac = {
            .version = API_CONFIG_V1,
            .store_path = g_db,
            .admin_token = ADMIN,
            .metrics = m.reg,
            .http_metrics = &m,
            .provider = {
                .version = API_PROVIDER_V1, .ctx = &d, .status = fd_status, .control = fd_control}};
        assert_int_equal(api_new(&ac, &a, &err), FC_OK);
        http_limits lim;
        http_limits_default(&lim);
        fc_buf out = FC_BUF_INIT;
        fc_alloc_fail_after(n);
        fc_status st =
            http_process_bytes(&lim, api_handle, a, (const uint8_t *)raw, strlen(raw), &out, &err);
        fc_alloc_fail_after(-1);
        assert_true(st == FC_OK || st == FC_ERR_NOMEM);
        if (st == FC_OK) {
            /* Every response that went out is complete; the last one is the export (200) or
             * an error. Count the heads. */
            size_t heads = 0;
            for (size_t i = 0; i + 8 < out.len; i++)
                heads += memcmp(out.data + i, "HTTP/1.1", 8) == 0;
            assert_true(heads >= 1 && heads <= 7);
            if (heads == 7 && d.paused)
                completed = 1;
        }
        d.paused = 0;
        fc_buf_free(&out);
        api_free(a);
        metrics_free(m.reg);
    }
    assert_true(completed);
}

static void test_specs_json_round_trips_and_rejects_bad_entries(void **state) {
    (void)state;
    fc_tensor_spec in[2] = {{.name = "a", .dtype = FC_DTYPE_F16, .ndim = 2, .shape = {3, 4}},
                            {.name = "b", .dtype = FC_DTYPE_F64, .ndim = 0}};
    char *text;
    fc_error err = {0};
    assert_int_equal(api_specs_to_json(in, 2, &text, &err), FC_OK);
    assert_string_equal(text, "[{\"name\":\"a\",\"dtype\":\"f16\",\"shape\":[3,4]},"
                              "{\"name\":\"b\",\"dtype\":\"f64\",\"shape\":[]}]");
    fc_tensor_spec *out;
    size_t n;
    assert_int_equal(api_specs_from_json(text, 10, &out, &n, &err), FC_OK);
    assert_int_equal(n, 2);
    assert_string_equal(out[0].name, "a");
    assert_int_equal(out[0].dtype, FC_DTYPE_F16);
    assert_int_equal(out[0].shape[1], 4);
    assert_int_equal(out[1].ndim, 0);
    api_specs_free(out, n);
    fc_free(text);
    assert_int_equal(api_specs_from_json(text = "[{\"name\":\"a\",\"dtype\":\"I64\",\"shape\":[]}]",
                                         10, &out, &n, &err),
                     FC_ERR_DTYPE);
    assert_int_equal(api_specs_from_json("[{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[-1]}]", 10,
                                         &out, &n, &err),
                     FC_ERR_FORMAT);
    assert_int_equal(api_specs_from_json("{}", 10, &out, &n, &err), FC_ERR_FORMAT);
    assert_int_equal(api_specs_from_json("[{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[],"
                                         "\"x\":1}]",
                                         10, &out, &n, &err),
                     FC_ERR_FORMAT);
    assert_int_equal(api_specs_from_json("[1,2,3]", 2, &out, &n, &err), FC_ERR_LIMIT);
}

/* ---- servers with other settings ---- */

static void test_auth_reads_protects_everything_but_health(void **state) {
    (void)state;
    harness *saved = H;
    harness h;
    h_start_with(&h, NULL, 1);
    H = &h;
    resp r;
    get("/v1/status", NULL, &r);
    assert_error(&r, 401, "unauthorized");
    resp_free(&r);
    get("/metrics", "Bearer wrong", &r);
    assert_error(&r, 401, "unauthorized");
    resp_free(&r);
    get("/v1/models/1/safetensors", NULL, &r);
    assert_error(&r, 401, "unauthorized");
    resp_free(&r);
    get("/v1/status", "Bearer " ADMIN, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    get("/healthz", NULL, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    get("/readyz", NULL, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    H = saved;
    h_stop(&h);
}

static void test_slow_request_gets_408_and_idle_connection_is_closed(void **state) {
    (void)state;
    harness *saved = H;
    harness h;
    http_limits lim;
    http_limits_default(&lim);
    lim.request_timeout_ms = 300;
    lim.idle_timeout_ms = 300;
    h_start_with(&h, &lim, 0);
    H = &h;
    conn c;
    conn_open(&c, h.port);
    conn_sends(&c, "GET /healthz HTTP/1.1\r\nHost: t\r\n"); /* never finished */
    resp r;
    assert_int_equal(conn_read(&c, &r), 0);
    assert_error(&r, 408, "request_timeout");
    resp_free(&r);
    assert_true(conn_at_eof(&c));
    conn_close(&c);
    /* An idle keep-alive connection is closed without a response. */
    conn_open(&c, h.port);
    conn_sends(&c, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(conn_read(&c, &r), 0);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    assert_true(conn_at_eof(&c));
    conn_close(&c);
    H = saved;
    h_stop(&h);
}

static void test_https_serves_the_export_over_tls(void **state) {
    (void)state;
    tlsgen_pki pki;
    fc_error err = {0};
    assert_int_equal(tlsgen_create(NULL, &pki, &err), FC_OK);
    net_tls_config tls = {.cert_file = pki.server_cert, .key_file = pki.server_key};
    harness h;
    h_start_tls(&h, NULL, 0, &tls);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_load_verify_locations(ctx, pki.ca_cert, NULL), 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    conn c;
    conn_open(&c, h.port);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, c.fd);
    SSL_set1_host(ssl, "localhost");
    assert_int_equal(SSL_connect(ssl), 1);
    const char *req = "GET /v1/models/1/safetensors HTTP/1.1\r\nHost: t\r\n"
                      "Connection: close\r\n\r\n";
    assert_int_equal(SSL_write(ssl, req, (int)strlen(req)), (int)strlen(req));
    size_t cap = V1_SIZE + 4096, len = 0;
    char *all = malloc(cap);
    int n;
    while (len < cap && (n = SSL_read(ssl, all + len, (int)(cap - len))) > 0)
        len += (size_t)n;
    char *end = memmem(all, len, "\r\n\r\n", 4);
    assert_non_null(end);
    resp r = {0};
    size_t hl = (size_t)(end - all) + 4;
    memcpy(r.head, all, hl);
    assert_int_equal(sscanf(r.head, "HTTP/1.1 %d", &r.status), 1);
    r.body = all + hl;
    r.body_len = len - hl;
    check_export(&r, g_v1, V1_SIZE, 1);
    SSL_free(ssl);
    conn_close(&c);
    free(all);
    /* Plain HTTP to the TLS port gets no HTTP response. */
    conn_open(&c, h.port);
    conn_sends(&c, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    char buf[64];
    ssize_t got = recv(c.fd, buf, sizeof buf - 1, 0);
    if (got > 0) {
        buf[got] = 0;
        assert_null(strstr(buf, "HTTP/1.1 200"));
    }
    conn_close(&c);
    SSL_CTX_free(ctx);
    h_stop(&h);
}

/* A database with versions 1..3 of V1's layout; 1 and 2 pruned, 3's bytes corrupted in place
 * (same length, so only the whole-model SHA-256 can tell). */
static void make_damaged_db(char *path, size_t size) {
    fc_test_path(path, size, "damaged.db");
    unlink(path);
    store *s;
    fc_error err = {0};
    store_options opt = {.version = STORE_OPTIONS_V1, .chunk_size = 1024};
    assert_int_equal(store_open(path, &opt, &s, &err), FC_OK);
    for (int v = 1; v <= 3; v++) {
        src sr = {g_v1, V1_SIZE, 0};
        store_commit c = {.round_id = v,
                          .version = v,
                          .parent_version = v - 1,
                          .tensor_specs_json =
                              "[{\"name\":\"w\",\"dtype\":\"f32\",\"shape\":[30,40]},"
                              "{\"name\":\"b\",\"dtype\":\"f32\",\"shape\":[40]}]",
                          .model_size = V1_SIZE,
                          .source = src_read,
                          .source_ud = &sr,
                          .started_at = v,
                          .ended_at = v + 1};
        assert_int_equal(store_commit_round(s, &c, NULL, &err), FC_OK);
    }
    uint64_t pruned = 0;
    assert_int_equal(store_prune(s, 1, 0, 0, 100, &pruned, &err), FC_OK);
    assert_int_equal(pruned, 2);
    store_close(s);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "UPDATE model_chunks SET data = zeroblob(length(data)) "
                                  "WHERE version = 3 AND seq = 4",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_changes(db), 1);
    sqlite3_close(db);
}

static void test_corrupt_model_never_arrives_whole_and_pruned_is_gone(void **state) {
    (void)state;
    char path[512];
    make_damaged_db(path, sizeof path);
    g_serve_db = path;
    harness h;
    h_start_with(&h, NULL, 0);
    g_serve_db = NULL;
    harness *saved = H;
    H = &h;
    resp r;
    get("/v1/models/1/safetensors", NULL, &r);
    assert_error(&r, 410, "gone");
    resp_free(&r);
    get("/v1/models/1", NULL, &r);
    assert_int_equal(r.status, 200); /* metadata stays */
    assert_non_null(strstr(r.body, "\"pruned\":true"));
    resp_free(&r);
    /* Version 3: the head promises the full length; the connection ends short of it. */
    conn c;
    conn_open(&c, h.port);
    conn_sends(&c, "GET /v1/models/3/safetensors HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(conn_read(&c, &r), -1);
    assert_int_equal(r.status, 200);
    assert_true(r.body_len < (size_t)r.content_length);
    /* The header went out in its own pull; the data (4960 bytes, one 64 KiB pull) was read,
     * failed the SHA-256 check, and never left. */
    assert_int_equal(r.content_length - (long)r.body_len, V1_SIZE);
    resp_free(&r);
    conn_close(&c);
    H = saved;
    h_stop(&h);
}

static void test_bad_limits_and_configs_are_refused(void **state) {
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    http_server_config hc = {
        .version = HTTP_SERVER_CONFIG_V1, .host = "0.0.0.0", .handler = api_handle};
    http_limits_default(&hc.limits);
    http_server *s;
    fc_error err = {0};
    /* plain HTTP on a non-loopback address */
    assert_int_equal(http_server_start(&loop, &hc, &s, &err), FC_ERR_CONFIG);
    hc.host = "127.0.0.1";
    hc.limits.max_body_bytes = 0;
    assert_int_equal(http_server_start(&loop, &hc, &s, &err), FC_ERR_CONFIG);
    api *a;
    api_config ac = {.version = API_CONFIG_V1,
                     .store_path = g_db,
                     .auth_reads = 1,
                     .provider = {.version = API_PROVIDER_V1}};
    assert_int_equal(api_new(&ac, &a, &err), FC_ERR_CONFIG);
    ac.auth_reads = 0;
    ac.provider.version = 0;
    assert_int_equal(api_new(&ac, &a, &err), FC_ERR_CONFIG);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    setenv("UV_THREADPOOL_SIZE", "4", 1); /* pool_busy_cb fills exactly this many threads */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_keep_alive_serves_pipelined_requests_on_one_connection,
                                        setup_server, teardown_server),
        cmocka_unit_test_setup_teardown(test_pipelined_store_reads_answer_in_order, setup_server,
                                        teardown_server),
        cmocka_unit_test(test_stop_while_a_store_read_waits_drops_its_answer),
        cmocka_unit_test_setup_teardown(test_huge_headers_get_431_and_close, setup_server,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(test_bad_methods_get_405, setup_server, teardown_server),
        cmocka_unit_test_setup_teardown(test_unknown_paths_and_traversal_get_404, setup_server,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(test_control_needs_the_admin_token, setup_server,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(test_oversize_body_gets_413, setup_server, teardown_server),
        cmocka_unit_test_setup_teardown(
            test_safetensors_export_parses_back_and_equals_the_committed_model, setup_server,
            teardown_server),
        cmocka_unit_test_setup_teardown(test_slow_client_does_not_stop_other_requests, setup_server,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(test_client_that_disconnects_mid_export_releases_the_stream,
                                        setup_server, teardown_server),
        cmocka_unit_test_setup_teardown(test_head_gives_the_length_without_the_body, setup_server,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(test_rounds_list_pages_newest_first, setup_server,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(test_round_detail_has_participants_report_and_metrics,
                                        setup_server, teardown_server),
        cmocka_unit_test_setup_teardown(test_clients_show_counters_and_liveness_never_tokens,
                                        setup_server, teardown_server),
        cmocka_unit_test_setup_teardown(test_models_list_detail_and_parent_chain, setup_server,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(test_status_readyz_and_metrics_come_from_the_daemon,
                                        setup_server, teardown_server),
        cmocka_unit_test(test_stopping_the_server_mid_export_releases_the_streams),
        cmocka_unit_test(test_store_missing_gives_503),
        cmocka_unit_test(test_process_bytes_answers_like_a_connection),
        cmocka_unit_test(test_specs_json_round_trips_and_rejects_bad_entries),
        cmocka_unit_test(test_allocation_failures_give_clean_errors_without_leaks),
        cmocka_unit_test(test_auth_reads_protects_everything_but_health),
        cmocka_unit_test(test_slow_request_gets_408_and_idle_connection_is_closed),
        cmocka_unit_test(test_https_serves_the_export_over_tls),
        cmocka_unit_test(test_corrupt_model_never_arrives_whole_and_pruned_is_gone),
        cmocka_unit_test(test_bad_limits_and_configs_are_refused),
    };
    return cmocka_run_group_tests(tests, setup_db, teardown_db);
}
