/* test_net.c: the connection layer with real TLS on loopback.
 *
 * The libuv loop and the layer run in the test (main) thread; peers are blocking OpenSSL
 * clients on plain sockets in pthreads. cmocka assertions run only in the main thread: client
 * threads record what they saw and wake the loop through a uv_async_t. Timing tests use small
 * timeouts with generous margins and never assert an upper bound on time (the watchdog only
 * turns a hang into a failure).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/status.h"
#include "server/net.h"
#include "tests/lib/tlsgen.h"

static tlsgen_pki pki;

#define WATCHDOG_MS 20000
#define MAX_RECS 32

/* ---- time ---- */

static uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- the server-side owner used by the tests ---- */

typedef enum owner_mode {
    MODE_ECHO,        /* echo every byte back */
    MODE_ECHO_PAUSE,  /* echo; pause reading while the output is above the high-water mark */
    MODE_FRAME,       /* 200-byte frames; partial flag set inside a frame; reply "ok" per frame */
    MODE_FLOOD,       /* write a byte pattern whenever not blocked, up to flood_cap */
    MODE_CLOSE_TWICE, /* on open: ref, close twice */
    MODE_OVERFLOW,    /* on open: one write larger than max_output_bytes */
} owner_mode;

#define FRAME_SIZE 200

typedef struct rec {
    uint64_t id;
    int opened;
    int closed;
    fc_status reason;
    char detail[FC_ERROR_MSG_MAX];
    char identity[128];
    int has_identity;
    size_t in_frame;
    size_t frames;
    size_t received;
} rec;

typedef struct owner {
    owner_mode mode;
    int opens, closes, limits;
    fc_status limit_status;
    char limit_detail[FC_ERROR_MSG_MAX];
    const char *last_words; /* written from on_limit when set */
    rec recs[MAX_RECS];
    int nrecs;
    int overflowed;
    /* MODE_FLOOD */
    size_t flood_cap, flood_written;
    int blocked, bp_on, bp_off;
    int paused, data_while_paused;
    /* MODE_CLOSE_TWICE, MODE_OVERFLOW */
    net_conn *kept;
    fc_status first_write, second_close_write;
} owner;

static owner *owner_of(net_conn *c) { return net_listener_user(net_conn_listener(c)); }

static rec *rec_of(net_conn *c) {
    rec *r = net_conn_user(c);
    if (r)
        return r;
    owner *o = owner_of(c);
    if (o->nrecs >= MAX_RECS) {
        o->overflowed = 1;
        r = &o->recs[MAX_RECS - 1];
    } else {
        r = &o->recs[o->nrecs++];
    }
    memset(r, 0, sizeof *r);
    r->id = net_conn_id(c);
    net_conn_set_user(c, r);
    return r;
}

static void flood(net_conn *c) {
    owner *o = owner_of(c);
    static uint8_t chunk[65536];
    while (!o->blocked && o->flood_written < o->flood_cap && net_conn_state(c) == NET_OPEN) {
        size_t n = sizeof chunk;
        if (n > o->flood_cap - o->flood_written)
            n = o->flood_cap - o->flood_written;
        for (size_t i = 0; i < n; i++)
            chunk[i] = (uint8_t)((o->flood_written + i) % 251);
        if (net_write(c, chunk, n) != FC_OK)
            return;
        o->flood_written += n;
    }
}

static void cb_open(net_conn *c) {
    owner *o = owner_of(c);
    rec *r = rec_of(c);
    o->opens++;
    r->opened = 1;
    const char *id = net_conn_identity(c);
    if (id) {
        r->has_identity = 1;
        snprintf(r->identity, sizeof r->identity, "%s", id);
    }
    switch (o->mode) {
    case MODE_FLOOD:
        flood(c);
        break;
    case MODE_CLOSE_TWICE:
        o->kept = c;
        net_conn_ref(c);
        net_close(c, FC_OK, "done by owner");
        net_close(c, FC_ERR_LIMIT, "second close must be ignored");
        o->second_close_write = net_write(c, "x", 1);
        break;
    case MODE_OVERFLOW: {
        size_t n = 1u << 20;
        uint8_t *big = fc_calloc(1, n);
        if (big) {
            o->first_write = net_write(c, big, n);
            fc_free(big);
        }
        break;
    }
    default:
        break;
    }
}

static void cb_data(net_conn *c, const uint8_t *data, size_t len) {
    owner *o = owner_of(c);
    rec *r = rec_of(c);
    r->received += len;
    if (o->paused)
        o->data_while_paused++;
    switch (o->mode) {
    case MODE_ECHO:
    case MODE_ECHO_PAUSE:
        (void)net_write(c, data, len);
        break;
    case MODE_FRAME:
        r->in_frame += len;
        while (r->in_frame >= FRAME_SIZE) {
            r->in_frame -= FRAME_SIZE;
            r->frames++;
            (void)net_write(c, "ok", 2);
        }
        /* Called on every chunk: re-setting the flag must not restart the window, or a
         * slow-loris peer would never be dropped. */
        net_set_partial(c, r->in_frame > 0);
        break;
    default:
        break;
    }
}

static void cb_limit(net_conn *c, fc_status st, const char *detail) {
    owner *o = owner_of(c);
    o->limits++;
    o->limit_status = st;
    snprintf(o->limit_detail, sizeof o->limit_detail, "%s", detail);
    if (o->last_words)
        (void)net_write(c, o->last_words, strlen(o->last_words));
}

static void cb_backpressure(net_conn *c, int blocked) {
    owner *o = owner_of(c);
    o->blocked = blocked;
    if (blocked)
        o->bp_on++;
    else
        o->bp_off++;
    if (o->mode == MODE_ECHO_PAUSE) {
        o->paused = blocked;
        if (blocked)
            net_pause_reading(c);
        else
            net_resume_reading(c);
    } else if (o->mode == MODE_FLOOD && !blocked) {
        flood(c);
    }
}

static void cb_close(net_conn *c, fc_status reason, const char *detail) {
    owner *o = owner_of(c);
    rec *r = rec_of(c);
    o->closes++;
    r->closed = 1;
    r->reason = reason;
    snprintf(r->detail, sizeof r->detail, "%s", detail ? detail : "");
    net_conn_set_user(c, NULL);
}

/* ---- the harness: loop, listener, wake-ups from client threads ---- */

typedef struct harness {
    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t watchdog;
    int watchdog_fired;
    net_listener *l;
    int port;
    int listener_closed;
    owner own;
} harness;

static void wake_cb(uv_async_t *a) { (void)a; }

static void watchdog_cb(uv_timer_t *t) {
    harness *h = t->data;
    h->watchdog_fired = 1;
}

static void base_config(net_listener_config *cfg, harness *h) {
    memset(cfg, 0, sizeof *cfg);
    cfg->name = "test";
    cfg->host = "127.0.0.1";
    cfg->port = 0;
    cfg->tls.cert_file = pki.server_cert;
    cfg->tls.key_file = pki.server_key;
    net_limits_default(&cfg->limits);
    cfg->limits.close_linger_ms = 500;
    cfg->cb.on_open = cb_open;
    cfg->cb.on_data = cb_data;
    cfg->cb.on_limit = cb_limit;
    cfg->cb.on_backpressure = cb_backpressure;
    cfg->cb.on_close = cb_close;
    cfg->user = &h->own;
}

static void h_init(harness *h) {
    memset(h, 0, sizeof *h);
    assert_int_equal(uv_loop_init(&h->loop), 0);
    assert_int_equal(uv_async_init(&h->loop, &h->wake, wake_cb), 0);
    assert_int_equal(uv_timer_init(&h->loop, &h->watchdog), 0);
    h->watchdog.data = h;
}

static void h_listen(harness *h, const net_listener_config *cfg) {
    fc_error err = {0};
    fc_status st = net_listener_open(&h->loop, cfg, &h->l, &err);
    if (st != FC_OK)
        fail_msg("net_listener_open: %s", fc_error_text(&err));
    h->port = net_listener_port(h->l);
    assert_true(h->port > 0);
}

static void h_start(harness *h, const net_listener_config *cfg) {
    h_init(h);
    h_listen(h, cfg);
}

typedef int (*pred_fn)(harness *h, void *arg);

static void h_run_until(harness *h, pred_fn pred, void *arg) {
    h->watchdog_fired = 0;
    uv_timer_start(&h->watchdog, watchdog_cb, WATCHDOG_MS, 0);
    while (!pred(h, arg) && !h->watchdog_fired)
        uv_run(&h->loop, UV_RUN_ONCE);
    uv_timer_stop(&h->watchdog);
    if (h->watchdog_fired && !pred(h, arg))
        fail_msg("timed out waiting for a condition (watchdog %d ms)", WATCHDOG_MS);
}

static void listener_closed_cb(void *arg) { ((harness *)arg)->listener_closed = 1; }

static int pred_listener_closed(harness *h, void *arg) {
    (void)arg;
    return h->listener_closed;
}

static void h_close_handles_cb(uv_handle_t *hd) { (void)hd; }

/* Closes everything and checks the loop ends with no handle left (nothing leaked). */
static void h_finish(harness *h) {
    if (h->l) {
        net_close_all(h->l, FC_ERR_CLOSED, "test finished");
        net_listener_close(h->l, listener_closed_cb, h);
        h->l = NULL;
        h_run_until(h, pred_listener_closed, NULL);
    }
    uv_close((uv_handle_t *)&h->wake, h_close_handles_cb);
    uv_close((uv_handle_t *)&h->watchdog, h_close_handles_cb);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&h->loop), 0);
}

/* ---- client side (runs in threads) ---- */

typedef struct job {
    harness *h;
    int port;
    atomic_int done;
    atomic_int ready; /* client reached a checkpoint */
    atomic_int go;    /* main thread lets it continue */
    /* inputs */
    const char *cert, *key;
    int max_version;
    size_t size;
    /* outputs */
    int ok[8];
    size_t got[8];
    uint64_t elapsed_ms;
    char note[256];
} job;

static void job_finish(job *j) {
    atomic_store(&j->done, 1);
    uv_async_send(&j->h->wake);
}

static void job_checkpoint(job *j) {
    atomic_store(&j->ready, 1);
    uv_async_send(&j->h->wake);
    while (!atomic_load(&j->go))
        sleep_ms(2);
}

static int pred_job_ready(harness *h, void *arg) {
    (void)h;
    return atomic_load(&((job *)arg)->ready);
}

static int tcp_connect(int port, const char *src, int v6) {
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (src) {
        struct sockaddr_in a = {.sin_family = AF_INET};
        inet_pton(AF_INET, src, &a.sin_addr);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
            close(fd);
            return -1;
        }
    }
    int rc;
    if (v6) {
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
        inet_pton(AF_INET6, "::1", &a.sin6_addr);
        rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    } else {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    }
    if (rc != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

typedef struct tc {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
} tc;

/* Connects and runs the TLS handshake. Returns 1 if the client side completed it. */
static int tc_open(tc *t, int port, const char *cert, const char *key, int max_version,
                   const char *src, int v6) {
    memset(t, 0, sizeof *t);
    t->fd = -1;
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (!t->ctx)
        return 0;
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    if (max_version)
        SSL_CTX_set_max_proto_version(t->ctx, max_version);
    if (SSL_CTX_load_verify_locations(t->ctx, pki.ca_cert, NULL) != 1)
        return 0;
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    if (cert && (SSL_CTX_use_certificate_chain_file(t->ctx, cert) != 1 ||
                 SSL_CTX_use_PrivateKey_file(t->ctx, key, SSL_FILETYPE_PEM) != 1))
        return 0;
    t->fd = tcp_connect(port, src, v6);
    if (t->fd < 0)
        return 0;
    t->ssl = SSL_new(t->ctx);
    if (!t->ssl)
        return 0;
    SSL_set_fd(t->ssl, t->fd);
    SSL_set1_host(t->ssl, "localhost");
    SSL_set_tlsext_host_name(t->ssl, "localhost");
    return SSL_connect(t->ssl) == 1;
}

static void tc_free(tc *t) {
    if (t->ssl)
        SSL_free(t->ssl);
    if (t->ctx)
        SSL_CTX_free(t->ctx);
    if (t->fd >= 0)
        close(t->fd);
    memset(t, 0, sizeof *t);
    t->fd = -1;
    ERR_clear_error();
}

static int tc_write(tc *t, const void *data, size_t len) {
    return SSL_write(t->ssl, data, (int)len) == (int)len;
}

static int tc_read_exact(tc *t, void *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        int r = SSL_read(t->ssl, (uint8_t *)buf + got, (int)(len - got));
        if (r <= 0)
            return 0;
        got += (size_t)r;
    }
    return 1;
}

/* Reads until the connection ends. Returns 1 if it ended with the server's close_notify. */
static int tc_read_until_close(tc *t, size_t *bytes) {
    uint8_t buf[4096];
    for (;;) {
        int r = SSL_read(t->ssl, buf, sizeof buf);
        if (r > 0) {
            if (bytes)
                *bytes += (size_t)r;
            continue;
        }
        return SSL_get_error(t->ssl, r) == SSL_ERROR_ZERO_RETURN;
    }
}

/* A clean client close: send close_notify, wait for the server's. */
static void tc_shutdown(tc *t) {
    if (SSL_shutdown(t->ssl) == 0)
        tc_read_until_close(t, NULL);
}

static int ioctl_nonblock(int fd, int on) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -1;
    return fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

/* Sends out[0..len) while reading back len bytes into in, without deadlock (non-blocking). */
static int tc_pump(tc *t, const uint8_t *out, uint8_t *in, size_t len) {
    if (ioctl_nonblock(t->fd, 1) != 0)
        return 0;
    SSL_set_mode(t->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    size_t sent = 0, got = 0;
    uint64_t start = mono_ms();
    while (got < len) {
        if (mono_ms() - start > 15000)
            return 0;
        int progress = 0;
        if (sent < len) {
            size_t n = len - sent > 65536 ? 65536 : len - sent;
            int r = SSL_write(t->ssl, out + sent, (int)n);
            if (r > 0) {
                sent += (size_t)r;
                progress = 1;
            } else {
                int e = SSL_get_error(t->ssl, r);
                if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ)
                    return 0;
            }
        }
        int r = SSL_read(t->ssl, in + got, (int)(len - got > 65536 ? 65536 : len - got));
        if (r > 0) {
            got += (size_t)r;
            progress = 1;
        } else {
            int e = SSL_get_error(t->ssl, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                return 0;
        }
        if (!progress) {
            struct pollfd p = {.fd = t->fd, .events = POLLIN | (sent < len ? POLLOUT : 0)};
            poll(&p, 1, 50);
        }
    }
    ioctl_nonblock(t->fd, 0);
    return memcmp(out, in, len) == 0;
}

static void spawn(pthread_t *th, job *j, harness *h, void *(*fn)(void *)) {
    j->h = h;
    j->port = h->port;
    assert_int_equal(pthread_create(th, NULL, fn, j), 0);
}

/* Finds the one record with the given reason; fails if there is not exactly one. */
static rec *find_rec(owner *o, fc_status reason) {
    rec *found = NULL;
    int n = 0;
    for (int i = 0; i < o->nrecs; i++)
        if (o->recs[i].closed && o->recs[i].reason == reason) {
            found = &o->recs[i];
            n++;
        }
    if (n != 1)
        fail_msg("expected one connection closed with %s, found %d", fc_status_name(reason), n);
    return found;
}

typedef struct both {
    job *j;
    int closes;
} both;

static int pred_done_and_closes(harness *h, void *arg) {
    both *b = arg;
    return atomic_load(&b->j->done) && h->own.closes >= b->closes;
}

static void run_job(harness *h, job *j, void *(*fn)(void *), int closes) {
    pthread_t th;
    spawn(&th, j, h, fn);
    both b = {j, closes};
    h_run_until(h, pred_done_and_closes, &b);
    pthread_join(th, NULL);
}

/* ---- echo ---- */

static void *client_echo_small(void *arg) {
    job *j = arg;
    tc t;
    j->ok[0] = tc_open(&t, j->port, NULL, NULL, 0, NULL, 0);
    if (j->ok[0]) {
        char back[15] = {0};
        j->ok[1] = tc_write(&t, "hello fedcoord", 14) && tc_read_exact(&t, back, 14) &&
                   memcmp(back, "hello fedcoord", 14) == 0;
        /* A TLS 1.3 post-handshake message: the server must answer the KeyUpdate and keep
         * going. */
        char again[6] = {0};
        j->ok[2] = SSL_key_update(t.ssl, SSL_KEY_UPDATE_REQUESTED) == 1 &&
                   tc_write(&t, "again", 5) && tc_read_exact(&t, again, 5) &&
                   memcmp(again, "again", 5) == 0;
        snprintf(j->note, sizeof j->note, "%s", SSL_get_version(t.ssl));
        tc_shutdown(&t);
    }
    tc_free(&t);
    job_finish(j);
    return NULL;
}

static void test_small_payload_is_echoed_over_tls13(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    h_start(&h, &cfg);
    job j = {0};
    run_job(&h, &j, client_echo_small, 1);
    assert_true(j.ok[0]);
    assert_true(j.ok[1]);
    assert_true(j.ok[2]);
    assert_string_equal(j.note, "TLSv1.3");
    assert_int_equal(h.own.opens, 1);
    rec *r = find_rec(&h.own, FC_ERR_CLOSED);
    assert_true(r->opened);
    assert_false(r->has_identity);
    assert_int_equal(r->received, 19);
    assert_string_equal(r->detail, "peer sent close_notify");
    assert_int_equal(net_listener_count(h.l), 0);
    h_finish(&h);
}

static void *client_echo_large(void *arg) {
    job *j = arg;
    tc t;
    uint8_t *out = malloc(j->size), *in = malloc(j->size);
    if (out && in && tc_open(&t, j->port, NULL, NULL, 0, NULL, 0)) {
        j->ok[0] = 1;
        uint32_t x = 12345;
        for (size_t i = 0; i < j->size; i++) {
            x = x * 1103515245u + 12345u;
            out[i] = (uint8_t)(x >> 16);
        }
        j->ok[1] = tc_pump(&t, out, in, j->size);
        tc_shutdown(&t);
    }
    tc_free(&t);
    free(out);
    free(in);
    job_finish(j);
    return NULL;
}

static void test_multi_megabyte_payload_is_echoed_with_pause_and_resume(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    cfg.limits.output_high_water = 16 * 1024; /* one 64 KB read echoed crosses it */
    h_start(&h, &cfg);
    h.own.mode = MODE_ECHO_PAUSE;
    job j = {.size = 6u << 20};
    run_job(&h, &j, client_echo_large, 1);
    assert_true(j.ok[0]);
    assert_true(j.ok[1]);
    rec *r = find_rec(&h.own, FC_ERR_CLOSED);
    assert_int_equal(r->received, 6u << 20);
    /* Every pause was followed by a resume (otherwise the echo could not have completed),
     * and no data arrived while paused. */
    assert_int_equal(h.own.bp_on, h.own.bp_off);
    assert_true(h.own.bp_on >= 1);
    assert_int_equal(h.own.data_while_paused, 0);
    h_finish(&h);
}

/* ---- protocol versions and garbage ---- */

static void *client_tls12(void *arg) {
    job *j = arg;
    tc t;
    j->ok[0] = tc_open(&t, j->port, NULL, NULL, TLS1_2_VERSION, NULL, 0);
    if (j->ok[0]) {
        snprintf(j->note, sizeof j->note, "%s", SSL_get_version(t.ssl));
        char back[3] = {0};
        j->ok[1] = tc_write(&t, "abc", 3) && tc_read_exact(&t, back, 3);
        tc_shutdown(&t);
    }
    tc_free(&t);
    job_finish(j);
    return NULL;
}

static void test_tls12_client_is_refused_when_minimum_is_13(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    h_start(&h, &cfg);
    job j = {0};
    run_job(&h, &j, client_tls12, 1);
    assert_false(j.ok[0]);
    assert_int_equal(h.own.opens, 0);
    rec *r = find_rec(&h.own, FC_ERR_TLS);
    assert_non_null(strstr(r->detail, "TLS handshake failed"));
    assert_non_null(strstr(r->detail, "unsupported protocol"));
    h_finish(&h);
}

static void test_tls12_client_is_accepted_when_minimum_is_12(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    cfg.tls.min_version = NET_TLS_1_2;
    h_start(&h, &cfg);
    job j = {0};
    run_job(&h, &j, client_tls12, 1);
    assert_true(j.ok[0]);
    assert_true(j.ok[1]);
    assert_string_equal(j.note, "TLSv1.2");
    assert_int_equal(h.own.opens, 1);
    h_finish(&h);
}

static void *client_plaintext(void *arg) {
    job *j = arg;
    int fd = tcp_connect(j->port, NULL, 0);
    if (fd >= 0) {
        const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        j->ok[0] = send(fd, req, sizeof req - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof req - 1);
        char buf[256];
        ssize_t n;
        while ((n = recv(fd, buf, sizeof buf, 0)) > 0)
            j->got[0] += (size_t)n;
        j->ok[1] = n == 0 || errno == ECONNRESET; /* closed, not timed out */
        close(fd);
    }
    job_finish(j);
    return NULL;
}

static void test_plaintext_to_tls_port_closes_with_tls_error(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    h_start(&h, &cfg);
    job j = {0};
    run_job(&h, &j, client_plaintext, 1);
    assert_true(j.ok[0]);
    assert_true(j.ok[1]);
    assert_int_equal(h.own.opens, 0);
    rec *r = find_rec(&h.own, FC_ERR_TLS);
    assert_non_null(strstr(r->detail, "TLS handshake failed: "));
    h_finish(&h);
}

/* ---- timeouts ---- */

static void *client_silent(void *arg) {
    job *j = arg;
    int fd = tcp_connect(j->port, NULL, 0);
    if (fd >= 0) {
        uint64_t start = mono_ms();
        char buf[64];
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        j->elapsed_ms = mono_ms() - start;
        j->ok[0] = n == 0 || (n < 0 && errno == ECONNRESET);
        close(fd);
    }
    job_finish(j);
    return NULL;
}

static void test_handshake_timeout_closes_silent_client(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    cfg.limits.handshake_timeout_ms = 200;
    h_start(&h, &cfg);
    job j = {0};
    run_job(&h, &j, client_silent, 1);
    assert_true(j.ok[0]);
    assert_true(j.elapsed_ms >= 150);
    assert_int_equal(h.own.opens, 0);
    assert_int_equal(h.own.limits, 1);
    assert_int_equal(h.own.limit_status, FC_ERR_TIMEOUT);
    rec *r = find_rec(&h.own, FC_ERR_TIMEOUT);
    assert_string_equal(r->detail, "handshake not completed within 200 ms");
    assert_string_equal(h.own.limit_detail, r->detail);
    h_finish(&h);
}

static void *client_idle(void *arg) {
    job *j = arg;
    tc t;
    j->ok[0] = tc_open(&t, j->port, NULL, NULL, 0, NULL, 0);
    if (j->ok[0]) {
        /* Ten bytes 100 ms apart: twice as long in total as the idle timeout, so each
         * received byte must have reset it. */
        int echoed = 1;
        for (int i = 0; i < 10 && echoed; i++) {
            char b = (char)('a' + i), back = 0;
            echoed = tc_write(&t, &b, 1) && tc_read_exact(&t, &back, 1) && back == b;
            sleep_ms(100);
        }
        j->ok[1] = echoed;
        uint64_t start = mono_ms();
        char bye[9] = {0};
        j->ok[2] = tc_read_exact(&t, bye, 8) && strcmp(bye, "bye:idle") == 0;
        j->ok[3] = tc_read_until_close(&t, NULL);
        j->elapsed_ms = mono_ms() - start;
    }
    tc_free(&t);
    job_finish(j);
    return NULL;
}

static void test_idle_timeout_sends_last_words_then_closes(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    cfg.limits.idle_timeout_ms = 500;
    h_start(&h, &cfg);
    h.own.last_words = "bye:idle";
    job j = {0};
    run_job(&h, &j, client_idle, 1);
    assert_true(j.ok[0]);
    assert_true(j.ok[1]); /* survived 1 s of activity with a 500 ms idle timeout */
    assert_true(j.ok[2]); /* the owner's last message arrived */
    assert_true(j.ok[3]); /* then a clean TLS close */
    assert_true(j.elapsed_ms >= 200);
    rec *r = find_rec(&h.own, FC_ERR_TIMEOUT);
    assert_int_equal(r->received, 10);
    assert_string_equal(r->detail, "no data received for 500 ms (idle timeout)");
    h_finish(&h);
}

/* ---- slow loris ---- */

static void *client_slow_frame(void *arg) {
    job *j = arg;
    tc t;
    j->ok[0] = tc_open(&t, j->port, NULL, NULL, 0, NULL, 0);
    if (j->ok[0]) {
        uint64_t start = mono_ms();
        /* 1 byte every 250 ms into a 200-byte frame: far below 50 bytes/s. */
        for (int i = 0; i < 80; i++) {
            if (!tc_write(&t, "s", 1))
                break;
            struct pollfd p = {.fd = t.fd, .events = POLLIN};
            if (poll(&p, 1, 250) > 0)
                break; /* the server's close arrived */
        }
        j->ok[1] = tc_read_until_close(&t, &j->got[0]);
        j->elapsed_ms = mono_ms() - start;
    }
    tc_free(&t);
    job_finish(j);
    return NULL;
}

static void *client_fast_frame(void *arg) {
    job *j = arg;
    tc t;
    j->ok[0] = tc_open(&t, j->port, NULL, NULL, 0, NULL, 0);
    if (j->ok[0]) {
        /* 20 bytes every 50 ms: about 400 bytes/s, eight times the minimum. */
        char chunk[20];
        memset(chunk, 'f', sizeof chunk);
        int sent = 1;
        for (int i = 0; i < FRAME_SIZE / 20 && sent; i++) {
            sent = tc_write(&t, chunk, sizeof chunk);
            sleep_ms(50);
        }
        char ok[3] = {0};
        j->ok[1] = sent && tc_read_exact(&t, ok, 2) && strcmp(ok, "ok") == 0;
        tc_shutdown(&t);
    }
    tc_free(&t);
    job_finish(j);
    return NULL;
}

static int pred_two_jobs(harness *h, void *arg) {
    job *j = arg;
    return atomic_load(&j[0].done) && atomic_load(&j[1].done) && h->own.closes >= 2;
}

static void test_slow_loris_is_dropped_while_fast_client_is_served(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    cfg.limits.min_rate_bps = 50;
    cfg.limits.rate_window_ms = 300;
    h_start(&h, &cfg);
    h.own.mode = MODE_FRAME;
    job j[2] = {0};
    pthread_t th[2];
    spawn(&th[0], &j[0], &h, client_slow_frame);
    spawn(&th[1], &j[1], &h, client_fast_frame);
    h_run_until(&h, pred_two_jobs, j);
    pthread_join(th[0], NULL);
    pthread_join(th[1], NULL);
    assert_true(j[0].ok[0]);
    assert_true(j[0].ok[1]); /* closed by the server, cleanly */
    assert_true(j[1].ok[0]);
    assert_true(j[1].ok[1]); /* the fast client's frame was answered */
    rec *slow = find_rec(&h.own, FC_ERR_LIMIT);
    assert_int_equal(slow->frames, 0);
    assert_true(slow->received < FRAME_SIZE);
    assert_non_null(strstr(slow->detail, "minimum rate is 50 bytes/s"));
    rec *fast = find_rec(&h.own, FC_ERR_CLOSED);
    assert_int_equal(fast->frames, 1);
    assert_int_equal(fast->received, FRAME_SIZE);
    h_finish(&h);
}

/* ---- connection limits ---- */

static void *client_three(void *arg) {
    job *j = arg;
    tc t[4];
    const char *src[4] = {NULL, NULL, NULL, j->cert /* source address of the 4th */};
    int n = j->cert ? 4 : 3;
    for (int i = 0; i < n; i++) {
        j->ok[i] = tc_open(&t[i], j->port, NULL, NULL, 0, src[i], 0);
        if (j->ok[i]) {
            /* An echo proves the server really serves it (TLS 1.3 clients finish first). */
            char b = 'q', back = 0;
            j->ok[i] = tc_write(&t[i], &b, 1) && tc_read_exact(&t[i], &back, 1) && back == b;
        }
    }
    for (int i = 0; i < n; i++) {
        if (j->ok[i])
            tc_shutdown(&t[i]);
        tc_free(&t[i]);
    }
    job_finish(j);
    return NULL;
}

static void test_connections_over_total_limit_are_closed_after_accept(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    cfg.limits.max_connections = 2;
    cfg.limits.max_per_peer = 0;
    h_start(&h, &cfg);
    job j = {0};
    run_job(&h, &j, client_three, 3);
    assert_true(j.ok[0]);
    assert_true(j.ok[1]);
    assert_false(j.ok[2]);
    assert_int_equal(h.own.opens, 2);
    assert_int_equal(h.own.limits, 0); /* no on_limit for rejections at accept */
    rec *r = find_rec(&h.own, FC_ERR_LIMIT);
    assert_false(r->opened);
    assert_string_equal(r->detail, "too many connections: 2 open, limit 2");
    assert_int_equal(net_listener_count(h.l), 0);
    h_finish(&h);
}

static void test_connections_over_per_peer_limit_are_closed_after_accept(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    cfg.limits.max_connections = 10;
    cfg.limits.max_per_peer = 2;
    cfg.host = "0.0.0.0";
    h_start(&h, &cfg);
    job j = {.cert = "127.0.0.2"}; /* the 4th connection comes from another address */
    run_job(&h, &j, client_three, 4);
    assert_true(j.ok[0]);
    assert_true(j.ok[1]);
    assert_false(j.ok[2]);
    assert_true(j.ok[3]);
    assert_int_equal(h.own.opens, 3);
    rec *r = find_rec(&h.own, FC_ERR_LIMIT);
    assert_string_equal(r->detail, "too many connections from this address: limit 2");
    h_finish(&h);
}

/* ---- mutual TLS ---- */

static void *client_mtls(void *arg) {
    job *j = arg;
    const char *certs[4] = {NULL, pki.expired_cert, pki.rogue_cert, pki.client_cert};
    const char *keys[4] = {NULL, pki.expired_key, pki.rogue_key, pki.client_key};
    for (int i = 0; i < 4; i++) {
        tc t;
        int hs = tc_open(&t, j->port, certs[i], keys[i], 0, NULL, 0);
        /* TLS 1.3: the client finishes before the server checks its certificate, so the
         * refusal shows on the first exchange. */
        char back[4] = {0};
        j->ok[i] = hs && tc_write(&t, "ping", 4) && tc_read_exact(&t, back, 4) &&
                   memcmp(back, "ping", 4) == 0;
        if (j->ok[i])
            tc_shutdown(&t);
        tc_free(&t);
    }
    job_finish(j);
    return NULL;
}

static void test_mtls_require_refuses_missing_expired_and_untrusted_certificates(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    cfg.tls.ca_file = pki.ca_cert;
    cfg.tls.mtls = NET_MTLS_REQUIRE;
    h_start(&h, &cfg);
    job j = {0};
    run_job(&h, &j, client_mtls, 4);
    assert_false(j.ok[0]);
    assert_false(j.ok[1]);
    assert_false(j.ok[2]);
    assert_true(j.ok[3]);
    assert_int_equal(h.own.nrecs, 4);
    assert_int_equal(h.own.opens, 1);
    int tls_errors = 0;
    for (int i = 0; i < 4; i++) {
        rec *r = &h.own.recs[i];
        assert_true(r->closed);
        if (r->opened) {
            assert_true(r->has_identity);
            assert_string_equal(r->identity, "client-1");
            continue;
        }
        assert_int_equal(r->reason, FC_ERR_TLS);
        tls_errors++;
    }
    assert_int_equal(tls_errors, 3);
    /* The details say why, in connection order. */
    assert_non_null(strstr(h.own.recs[0].detail, "peer did not return a certificate"));
    assert_non_null(strstr(h.own.recs[1].detail, "certificate has expired"));
    assert_non_null(strstr(h.own.recs[2].detail, "unable to get local issuer certificate"));
    h_finish(&h);
}

static void *client_mtls_optional(void *arg) {
    job *j = arg;
    const char *certs[2] = {NULL, pki.client_cert};
    const char *keys[2] = {NULL, pki.client_key};
    for (int i = 0; i < 2; i++) {
        tc t;
        char back[4] = {0};
        j->ok[i] = tc_open(&t, j->port, certs[i], keys[i], 0, NULL, 0) &&
                   tc_write(&t, "ping", 4) && tc_read_exact(&t, back, 4);
        if (j->ok[i])
            tc_shutdown(&t);
        tc_free(&t);
    }
    job_finish(j);
    return NULL;
}

static void test_mtls_optional_accepts_anonymous_and_names_certified_client(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    cfg.tls.ca_file = pki.ca_cert;
    cfg.tls.mtls = NET_MTLS_OPTIONAL;
    h_start(&h, &cfg);
    job j = {0};
    run_job(&h, &j, client_mtls_optional, 2);
    assert_true(j.ok[0]);
    assert_true(j.ok[1]);
    assert_int_equal(h.own.opens, 2);
    assert_false(h.own.recs[0].has_identity);
    assert_true(h.own.recs[1].has_identity);
    assert_string_equal(h.own.recs[1].identity, "client-1");
    h_finish(&h);
}

/* ---- backpressure ---- */

#define FLOOD_BYTES (24u << 20)

static void *client_slow_reader(void *arg) {
    job *j = arg;
    tc t;
    j->ok[0] = tc_open(&t, j->port, NULL, NULL, 0, NULL, 0);
    if (j->ok[0]) {
        sleep_ms(400); /* not reading: the server's queue must fill up */
        job_checkpoint(j);
        static uint8_t buf[65536];
        size_t got = 0;
        int pattern_ok = 1;
        while (got < FLOOD_BYTES) {
            int r = SSL_read(t.ssl, buf, sizeof buf);
            if (r <= 0)
                break;
            for (int i = 0; i < r; i++)
                if (buf[i] != (uint8_t)((got + (size_t)i) % 251))
                    pattern_ok = 0;
            got += (size_t)r;
        }
        j->got[0] = got;
        j->ok[1] = pattern_ok;
        tc_shutdown(&t);
    }
    tc_free(&t);
    job_finish(j);
    return NULL;
}

static void test_backpressure_fires_when_peer_does_not_read(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    cfg.limits.output_high_water = 512 * 1024;
    h_start(&h, &cfg);
    h.own.mode = MODE_FLOOD;
    h.own.flood_cap = FLOOD_BYTES;
    job j = {0};
    pthread_t th;
    spawn(&th, &j, &h, client_slow_reader);
    h_run_until(&h, pred_job_ready, &j);
    /* The peer has not read for 400 ms: the owner is told to stop, and it did stop well
     * before writing everything (kernel buffers hold at most a few MB). */
    assert_int_equal(h.own.blocked, 1);
    assert_true(h.own.bp_on >= 1);
    assert_true(h.own.flood_written < FLOOD_BYTES);
    atomic_store(&j.go, 1);
    both b = {&j, 1};
    h_run_until(&h, pred_done_and_closes, &b);
    pthread_join(th, NULL);
    assert_true(j.ok[0]);
    assert_int_equal(j.got[0], FLOOD_BYTES);
    assert_true(j.ok[1]);
    assert_int_equal(h.own.flood_written, FLOOD_BYTES);
    assert_true(h.own.bp_off >= 1); /* drained notifications let the owner continue */
    h_finish(&h);
}

/* ---- the close path ---- */

static void *client_expect_close(void *arg) {
    job *j = arg;
    tc t;
    j->ok[0] = tc_open(&t, j->port, NULL, NULL, 0, NULL, 0);
    if (j->ok[0])
        j->ok[1] = tc_read_until_close(&t, &j->got[0]);
    tc_free(&t);
    job_finish(j);
    return NULL;
}

static void test_close_is_idempotent_and_refs_keep_memory_valid(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    h_start(&h, &cfg);
    h.own.mode = MODE_CLOSE_TWICE;
    job j = {0};
    run_job(&h, &j, client_expect_close, 1);
    assert_true(j.ok[0]);
    assert_true(j.ok[1]); /* the client saw close_notify */
    assert_int_equal(h.own.closes, 1);
    rec *r = find_rec(&h.own, FC_OK);
    assert_string_equal(r->detail, "done by owner");
    assert_int_equal(h.own.second_close_write, FC_ERR_CLOSED);
    /* After on_close the reference keeps the struct readable (ASan checks this). */
    net_conn *c = h.own.kept;
    assert_int_equal(net_conn_state(c), NET_CLOSED);
    assert_int_equal(net_conn_id(c), r->id);
    assert_int_equal(net_write(c, "x", 1), FC_ERR_CLOSED);
    net_close(c, FC_ERR_IO, "closing a closed connection does nothing");
    assert_int_equal(h.own.closes, 1);
    net_conn_unref(c);
    h_finish(&h);
}

static void test_write_over_output_limit_closes_with_limit(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    cfg.limits.output_high_water = 128 * 1024;
    cfg.limits.max_output_bytes = 256 * 1024;
    h_start(&h, &cfg);
    h.own.mode = MODE_OVERFLOW;
    job j = {0};
    run_job(&h, &j, client_expect_close, 1);
    assert_int_equal(h.own.first_write, FC_ERR_LIMIT);
    rec *r = find_rec(&h.own, FC_ERR_LIMIT);
    assert_string_equal(r->detail,
                        "output queue would reach 1048576 bytes, limit 262144 (peer is not "
                        "reading)");
    assert_true(j.ok[0]);
    assert_int_equal(j.got[0], 0); /* nothing of the refused write was sent */
    h_finish(&h);
}

/* ---- graceful shutdown ---- */

static void *client_two_idle(void *arg) {
    job *j = arg;
    tc t[2];
    for (int i = 0; i < 2; i++) {
        char back = 0;
        j->ok[i] = tc_open(&t[i], j->port, NULL, NULL, 0, NULL, 0) && tc_write(&t[i], "h", 1) &&
                   tc_read_exact(&t[i], &back, 1);
    }
    job_checkpoint(j);
    for (int i = 0; i < 2; i++) {
        j->ok[2 + i] = j->ok[i] && tc_read_until_close(&t[i], NULL);
        tc_free(&t[i]);
    }
    /* The listener is closed: a new connection is refused. */
    int fd = tcp_connect(j->port, NULL, 0);
    j->ok[4] = fd < 0;
    if (fd >= 0)
        close(fd);
    job_finish(j);
    return NULL;
}

static int pred_ready_and_opens(harness *h, void *arg) {
    return atomic_load(&((job *)arg)->ready) && h->own.opens >= 2;
}

static int pred_done_and_listener_closed(harness *h, void *arg) {
    return atomic_load(&((job *)arg)->done) && h->listener_closed;
}

static void test_listener_close_and_close_all_shut_down_gracefully(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    h_start(&h, &cfg);
    job j = {0};
    pthread_t th;
    spawn(&th, &j, &h, client_two_idle);
    h_run_until(&h, pred_ready_and_opens, &j);
    net_listener_close(h.l, listener_closed_cb, &h);
    net_close_all(h.l, FC_ERR_CLOSED, "server shutting down");
    h.l = NULL;
    atomic_store(&j.go, 1);
    h_run_until(&h, pred_done_and_listener_closed, &j);
    pthread_join(th, NULL);
    for (int i = 0; i < 5; i++)
        assert_true(j.ok[i]);
    assert_int_equal(h.own.closes, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(h.own.recs[i].reason, FC_ERR_CLOSED);
        assert_string_equal(h.own.recs[i].detail, "server shutting down");
    }
    h_finish(&h);
}

/* ---- plain and IPv6 listeners ---- */

static void *client_plain_echo(void *arg) {
    job *j = arg;
    int fd = tcp_connect(j->port, NULL, 0);
    if (fd >= 0) {
        char back[5] = {0};
        j->ok[0] = send(fd, "GET /", 5, MSG_NOSIGNAL) == 5 && recv(fd, back, 5, MSG_WAITALL) == 5 &&
                   memcmp(back, "GET /", 5) == 0;
        close(fd);
    }
    job_finish(j);
    return NULL;
}

static void test_plain_listener_on_loopback_carries_bytes(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    cfg.plain = 1;
    cfg.tls.cert_file = NULL; /* not needed */
    h_start(&h, &cfg);
    job j = {0};
    run_job(&h, &j, client_plain_echo, 1);
    assert_true(j.ok[0]);
    rec *r = find_rec(&h.own, FC_ERR_CLOSED);
    assert_true(r->opened);
    assert_false(r->has_identity);
    assert_int_equal(r->received, 5);
    h_finish(&h);
}

static void *client_v6_echo(void *arg) {
    job *j = arg;
    tc t;
    j->ok[0] = tc_open(&t, j->port, NULL, NULL, 0, NULL, 1);
    if (j->ok[0]) {
        char back[2] = {0};
        j->ok[1] = tc_write(&t, "v6", 2) && tc_read_exact(&t, back, 2);
        tc_shutdown(&t);
    }
    tc_free(&t);
    job_finish(j);
    return NULL;
}

static int ipv6_loopback_available(void) {
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in6 a = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "::1", &a.sin6_addr);
    int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

static void test_ipv6_listener_serves_tls(void **state) {
    (void)state;
    if (!ipv6_loopback_available())
        skip();
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    cfg.host = "::1";
    h_start(&h, &cfg);
    job j = {0};
    run_job(&h, &j, client_v6_echo, 1);
    assert_true(j.ok[0]);
    assert_true(j.ok[1]);
    assert_int_equal(h.own.opens, 1);
    h_finish(&h);
}

/* ---- configuration errors ---- */

static fc_status try_open(harness *h, const net_listener_config *cfg, fc_error *err) {
    net_listener *l = NULL;
    fc_status st = net_listener_open(&h->loop, cfg, &l, err);
    if (st == FC_OK) {
        net_listener_close(l, NULL, NULL);
        return FC_OK;
    }
    assert_null(l);
    return st;
}

static void test_bad_listener_configs_are_refused_with_details(void **state) {
    (void)state;
    harness h;
    h_init(&h);
    net_listener_config cfg;
    fc_error err = {0};

    base_config(&cfg, &h);
    cfg.plain = 1;
    cfg.host = "0.0.0.0";
    assert_int_equal(try_open(&h, &cfg, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "plain is allowed only on a loopback address"));

    base_config(&cfg, &h);
    cfg.host = "localhost";
    assert_int_equal(try_open(&h, &cfg, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "'localhost' is not a numeric IPv4 or IPv6 address"));

    base_config(&cfg, &h);
    cfg.port = 70000;
    assert_int_equal(try_open(&h, &cfg, &err), FC_ERR_CONFIG);

    char missing[TLSGEN_PATH_MAX + 16];
    snprintf(missing, sizeof missing, "%s/missing.pem", pki.dir);
    base_config(&cfg, &h);
    cfg.tls.cert_file = missing;
    assert_int_equal(try_open(&h, &cfg, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, missing));

    base_config(&cfg, &h);
    cfg.tls.key_file = pki.client_key; /* does not match server.pem */
    assert_int_equal(try_open(&h, &cfg, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, pki.client_key));
    assert_non_null(strstr(err.msg, "mismatch"));

    base_config(&cfg, &h);
    cfg.tls.mtls = NET_MTLS_REQUIRE;
    assert_int_equal(try_open(&h, &cfg, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "no CA file"));

    base_config(&cfg, &h);
    cfg.limits.output_high_water = 2u << 20;
    cfg.limits.max_output_bytes = 1u << 20;
    assert_int_equal(try_open(&h, &cfg, &err), FC_ERR_CONFIG);

    /* Address in use: a second listener on the same port fails with FC_ERR_IO. */
    base_config(&cfg, &h);
    h_listen(&h, &cfg);
    cfg.port = h.port;
    assert_int_equal(try_open(&h, &cfg, &err), FC_ERR_IO);
    assert_non_null(strstr(err.msg, "cannot listen"));

    net_tls_version v;
    assert_int_equal(net_tls_parse_version("1.2", &v, &err), FC_OK);
    assert_int_equal(v, NET_TLS_1_2);
    assert_int_equal(net_tls_parse_version("1.1", &v, &err), FC_ERR_CONFIG);
    net_mtls m;
    assert_int_equal(net_mtls_parse("require", &m, &err), FC_OK);
    assert_int_equal(m, NET_MTLS_REQUIRE);
    assert_int_equal(net_mtls_parse("yes", &m, &err), FC_ERR_CONFIG);
    h_finish(&h); /* also frees the failed listeners: their handles close in the loop */
}

/* ---- allocation failures ---- */

static void test_listener_open_fails_cleanly_on_every_allocation_failure(void **state) {
    (void)state;
    harness h;
    h_init(&h);
    net_listener_config cfg;
    base_config(&cfg, &h);
    int succeeded = 0;
    for (long n = 0; n < 50 && !succeeded; n++) {
        fc_error err = {0};
        net_listener *l = NULL;
        fc_alloc_fail_after(n);
        fc_status st = net_listener_open(&h.loop, &cfg, &l, &err);
        fc_alloc_fail_after(-1);
        if (st == FC_OK) {
            succeeded = 1;
            net_listener_close(l, NULL, NULL);
        } else {
            assert_int_equal(st, FC_ERR_NOMEM);
            assert_null(l);
        }
        uv_run(&h.loop, UV_RUN_NOWAIT);
    }
    assert_true(succeeded);
    h_finish(&h); /* ASan: nothing leaked on any path */
}

static void *client_two_attempts(void *arg) {
    job *j = arg;
    tc t;
    j->ok[0] = tc_open(&t, j->port, NULL, NULL, 0, NULL, 0);
    if (j->ok[0]) {
        char b = 0;
        j->ok[0] = tc_write(&t, "a", 1) && tc_read_exact(&t, &b, 1);
    }
    tc_free(&t);
    job_checkpoint(j);
    char b = 0;
    j->ok[1] = tc_open(&t, j->port, NULL, NULL, 0, NULL, 0) && tc_write(&t, "b", 1) &&
               tc_read_exact(&t, &b, 1) && b == 'b';
    if (j->ok[1])
        tc_shutdown(&t);
    tc_free(&t);
    job_finish(j);
    return NULL;
}

static void test_out_of_memory_at_accept_drops_connection_and_keeps_listening(void **state) {
    (void)state;
    harness h;
    net_listener_config cfg;
    base_config(&cfg, &h);
    h_start(&h, &cfg);
    job j = {0};
    pthread_t th;
    fc_alloc_fail_after(0); /* only the loop thread allocates through fc_ */
    spawn(&th, &j, &h, client_two_attempts);
    h_run_until(&h, pred_job_ready, &j);
    unsigned long injected = fc_alloc_failures();
    fc_alloc_fail_after(-1);
    assert_true(injected >= 1);
    atomic_store(&j.go, 1);
    both b = {&j, 1};
    h_run_until(&h, pred_done_and_closes, &b);
    pthread_join(th, NULL);
    assert_false(j.ok[0]); /* dropped at accept */
    assert_true(j.ok[1]);  /* the listener still works */
    assert_int_equal(h.own.opens, 1);
    h_finish(&h);
}

static void test_tlsgen_issues_certificates_that_verify_against_the_ca(void **state) {
    (void)state;
    /* Independent check of the helper: X509 verification with OpenSSL's own store. */
    const char *good[] = {pki.server_cert, pki.client_cert};
    X509_STORE *store = X509_STORE_new();
    assert_non_null(store);
    assert_int_equal(X509_STORE_load_file(store, pki.ca_cert), 1);
    for (int i = 0; i < 3; i++) {
        const char *path = i < 2 ? good[i] : pki.rogue_cert;
        FILE *f = fopen(path, "r");
        assert_non_null(f);
        X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
        fclose(f);
        assert_non_null(x);
        X509_STORE_CTX *ctx = X509_STORE_CTX_new();
        assert_int_equal(X509_STORE_CTX_init(ctx, store, x, NULL), 1);
        int ok = X509_verify_cert(ctx);
        assert_int_equal(ok == 1, i < 2);
        X509_STORE_CTX_free(ctx);
        X509_free(x);
    }
    X509_STORE_free(store);
    ERR_clear_error();
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
        cmocka_unit_test(test_tlsgen_issues_certificates_that_verify_against_the_ca),
        cmocka_unit_test(test_small_payload_is_echoed_over_tls13),
        cmocka_unit_test(test_multi_megabyte_payload_is_echoed_with_pause_and_resume),
        cmocka_unit_test(test_tls12_client_is_refused_when_minimum_is_13),
        cmocka_unit_test(test_tls12_client_is_accepted_when_minimum_is_12),
        cmocka_unit_test(test_plaintext_to_tls_port_closes_with_tls_error),
        cmocka_unit_test(test_handshake_timeout_closes_silent_client),
        cmocka_unit_test(test_idle_timeout_sends_last_words_then_closes),
        cmocka_unit_test(test_slow_loris_is_dropped_while_fast_client_is_served),
        cmocka_unit_test(test_connections_over_total_limit_are_closed_after_accept),
        cmocka_unit_test(test_connections_over_per_peer_limit_are_closed_after_accept),
        cmocka_unit_test(test_mtls_require_refuses_missing_expired_and_untrusted_certificates),
        cmocka_unit_test(test_mtls_optional_accepts_anonymous_and_names_certified_client),
        cmocka_unit_test(test_backpressure_fires_when_peer_does_not_read),
        cmocka_unit_test(test_close_is_idempotent_and_refs_keep_memory_valid),
        cmocka_unit_test(test_write_over_output_limit_closes_with_limit),
        cmocka_unit_test(test_listener_close_and_close_all_shut_down_gracefully),
        cmocka_unit_test(test_plain_listener_on_loopback_carries_bytes),
        cmocka_unit_test(test_ipv6_listener_serves_tls),
        cmocka_unit_test(test_bad_listener_configs_are_refused_with_details),
        cmocka_unit_test(test_listener_open_fails_cleanly_on_every_allocation_failure),
        cmocka_unit_test(test_out_of_memory_at_accept_drops_connection_and_keeps_listening),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
