/* net.c: listeners and connections on libuv, TLS over memory BIOs, limits and backpressure.
 *
 * net owns every socket of the daemon, the per-connection TLS session and output queue, and
 * enforces the connection limits. It never interprets the bytes it carries, never blocks, and
 * frees a connection only from libuv's close callback (after on_close, and after the owner's
 * last net_conn_unref).
 *
 * Data path (TLS): uv_read -> BIO_write(rbio) -> SSL_do_handshake / SSL_read -> on_data.
 * net_write -> SSL_write -> wbio -> BIO_read into a write request -> uv_write.
 */
#include "server/net.h"

#include <assert.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <openssl/bio.h>
#include <openssl/buffer.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "core/alloc.h"
#include "core/log.h"
#include "server/tls.h"

#define NET_READ_BUF 65536
#define NET_PLAIN_BUF 16384
#define NET_WRITE_CHUNK 262144 /* plaintext per SSL_write, so wbio never holds much */
#define NET_BACKLOG 511

typedef struct peer_key {
    uint8_t family; /* 4 or 6 */
    uint8_t addr[16];
} peer_key;

typedef struct write_req {
    uv_write_t req;
    net_conn *conn;
    size_t len;
    char data[];
} write_req;

typedef enum close_mode { CLOSE_GRACEFUL, CLOSE_HARD } close_mode;

struct net_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown_req;
    net_listener *listener;
    net_conn *prev, *next;
    uint64_t id;
    net_state state;
    int refs;
    int handles_open;
    SSL *ssl;
    BIO *rbio, *wbio;
    char *identity;
    void *user;
    fc_status reason;
    char *detail;
    peer_key key;
    char peer[64];
    uint64_t accepted_at, last_rx, window_start, window_bytes, closing_at;
    size_t queued;
    unsigned reading : 1, paused : 1, partial : 1, blocked : 1, eof : 1, rejected : 1,
        counted : 1, handshake_done : 1, tls_fatal : 1, needs_drain : 1, shutdown_sent : 1,
        shutdown_done : 1;
};

struct net_listener {
    uv_tcp_t tcp;
    uv_idle_t idle;
    uv_tcp_t dump;
    uv_loop_t *loop;
    SSL_CTX *ctx;
    char *name;
    int port;
    int plain;
    net_limits limits;
    net_callbacks cb;
    void *user;
    net_conn *conns;
    size_t live;
    int handles_open;
    int closing, idle_close_requested, idle_active, dump_busy;
    void (*on_closed)(void *arg);
    void *closed_arg;
    uint8_t read_buf[NET_READ_BUF];
    uint8_t plain_buf[NET_PLAIN_BUF];
};

static atomic_ullong next_conn_id = 1;

static void begin_close(net_conn *c, fc_status reason, const char *detail, close_mode mode);
static void arm_timer(net_conn *c);
static void start_reading(net_conn *c);
static void tls_advance(net_conn *c);

/* ---- names, parsing, defaults ---- */

const char *net_state_name(net_state st) {
    switch (st) {
    case NET_HANDSHAKE:
        return "handshake";
    case NET_OPEN:
        return "open";
    case NET_CLOSING:
        return "closing";
    case NET_CLOSED:
        return "closed";
    }
    return "unknown";
}

fc_status net_tls_parse_version(const char *s, net_tls_version *out, fc_error *err) {
    if (s && strcmp(s, "1.3") == 0)
        *out = NET_TLS_1_3;
    else if (s && strcmp(s, "1.2") == 0)
        *out = NET_TLS_1_2;
    else
        return fc_error_set(err, FC_ERR_CONFIG, "TLS minimum version '%s' is not 1.2 or 1.3",
                            s ? s : "(null)");
    return FC_OK;
}

fc_status net_mtls_parse(const char *s, net_mtls *out, fc_error *err) {
    if (s && strcmp(s, "off") == 0)
        *out = NET_MTLS_OFF;
    else if (s && strcmp(s, "optional") == 0)
        *out = NET_MTLS_OPTIONAL;
    else if (s && strcmp(s, "require") == 0)
        *out = NET_MTLS_REQUIRE;
    else
        return fc_error_set(err, FC_ERR_CONFIG,
                            "mutual TLS mode '%s' is not off, optional or require",
                            s ? s : "(null)");
    return FC_OK;
}

void net_limits_default(net_limits *l) {
    l->handshake_timeout_ms = 10000;
    l->idle_timeout_ms = 120000;
    l->min_rate_bps = 1024;
    l->rate_window_ms = 10000;
    l->max_connections = 1024;
    l->max_per_peer = 16;
    l->output_high_water = 4u << 20;
    l->max_output_bytes = 64u << 20;
    l->close_linger_ms = 2000;
}

/* ---- state transitions (the only place state changes; each one is logged) ---- */

static void set_state(net_conn *c, net_state to) {
    net_state from = c->state;
    c->state = to;
    net_listener *l = c->listener;
    switch (to) {
    case NET_HANDSHAKE:
        FC_LOG(FC_LOG_DEBUG, "connection accepted", FC_LS("listener", l->name),
               FC_LU("conn", c->id), FC_LS("peer", c->peer));
        break;
    case NET_OPEN:
        FC_LOG(FC_LOG_INFO, "connection open", FC_LS("listener", l->name), FC_LU("conn", c->id),
               FC_LS("peer", c->peer), FC_LS("from", net_state_name(from)),
               FC_LS("tls", c->ssl ? SSL_get_version(c->ssl) : "none"),
               FC_LS("identity", c->identity ? c->identity : "-"));
        break;
    case NET_CLOSING:
        FC_LOG(FC_LOG_INFO, "connection closing", FC_LS("listener", l->name),
               FC_LU("conn", c->id), FC_LS("peer", c->peer), FC_LS("from", net_state_name(from)),
               FC_LS("reason", fc_status_name(c->reason)),
               FC_LS("detail", c->detail ? c->detail : ""));
        break;
    case NET_CLOSED:
        if (from == NET_CLOSING)
            FC_LOG(FC_LOG_DEBUG, "connection closed", FC_LS("listener", l->name),
                   FC_LU("conn", c->id), FC_LS("peer", c->peer));
        else
            FC_LOG(FC_LOG_INFO, "connection closed", FC_LS("listener", l->name),
                   FC_LU("conn", c->id), FC_LS("peer", c->peer),
                   FC_LS("from", net_state_name(from)),
                   FC_LS("reason", fc_status_name(c->reason)),
                   FC_LS("detail", c->detail ? c->detail : ""));
        break;
    }
}

/* ---- listener bookkeeping ---- */

static void listener_free(net_listener *l) {
    void (*cb)(void *) = l->on_closed;
    void *arg = l->closed_arg;
    FC_LOG(FC_LOG_INFO, "listener closed", FC_LS("listener", l->name), FC_LI("port", l->port));
    SSL_CTX_free(l->ctx);
    fc_free(l->name);
    fc_free(l);
    if (cb)
        cb(arg);
}

static void listener_handle_closed(uv_handle_t *h);

/* Frees the listener once it is closing, has no connections and all its handles are closed.
 * The idle handle stays open while connections exist, because resumed connections use it. */
static void listener_maybe_finish(net_listener *l) {
    if (!l->closing || l->conns)
        return;
    if (!l->idle_close_requested) {
        l->idle_close_requested = 1;
        uv_close((uv_handle_t *)&l->idle, listener_handle_closed);
        return;
    }
    if (l->handles_open == 0)
        listener_free(l);
}

static void listener_handle_closed(uv_handle_t *h) {
    net_listener *l = h->data;
    assert(l->handles_open > 0);
    l->handles_open--;
    if (h == (uv_handle_t *)&l->dump)
        l->dump_busy = 0;
    listener_maybe_finish(l);
}

/* ---- connection memory ---- */

static void conn_free(net_conn *c) {
    fc_free(c->identity);
    fc_free(c->detail);
    fc_free(c);
}

/* Both handles are closed: the connection is gone. Unlink, tell the owner, drop our ref. */
static void conn_handle_closed(uv_handle_t *h) {
    net_conn *c = h->data;
    assert(c->handles_open > 0);
    if (--c->handles_open > 0)
        return;
    net_listener *l = c->listener;
    if (c->prev)
        c->prev->next = c->next;
    else
        l->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    if (c->counted) {
        assert(l->live > 0);
        l->live--;
        c->counted = 0;
    }
    if (c->ssl) {
        SSL_free(c->ssl); /* frees both BIOs */
        c->ssl = NULL;
        c->rbio = c->wbio = NULL;
    }
    l->cb.on_close(c, c->reason, c->detail ? c->detail : fc_strerror(c->reason));
    c->listener = NULL;
    net_conn_unref(c);
    listener_maybe_finish(l);
}

static void close_handles(net_conn *c) {
    if (c->state == NET_CLOSED)
        return;
    set_state(c, NET_CLOSED);
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
}

/* ---- output ---- */

static void backpressure_check_drained(net_conn *c) {
    net_listener *l = c->listener;
    if (c->blocked && c->queued <= l->limits.output_high_water / 2) {
        c->blocked = 0;
        if (c->state == NET_OPEN && l->cb.on_backpressure)
            l->cb.on_backpressure(c, 0);
    }
}

static void start_shutdown(net_conn *c);

static void write_cb(uv_write_t *req, int status) {
    write_req *w = (write_req *)req;
    net_conn *c = w->conn;
    assert(c->queued >= w->len);
    c->queued -= w->len;
    fc_free(w);
    if (c->state == NET_CLOSED)
        return;
    if (status < 0) {
        char detail[128];
        snprintf(detail, sizeof detail, "write failed: %s", uv_strerror(status));
        if (c->state == NET_CLOSING) {
            close_handles(c);
            return;
        }
        begin_close(c, FC_ERR_IO, detail, CLOSE_HARD);
        return;
    }
    if (c->state == NET_CLOSING) {
        if (c->queued == 0)
            start_shutdown(c);
        return;
    }
    backpressure_check_drained(c);
}

/* Hands len bytes (copied) to uv_write. */
static fc_status submit_write(net_conn *c, const void *data, size_t len, char *detail,
                              size_t detail_size) {
    write_req *w = fc_malloc(sizeof *w + len);
    if (!w) {
        snprintf(detail, detail_size, "out of memory queueing %zu bytes of output", len);
        return FC_ERR_NOMEM;
    }
    w->conn = c;
    w->len = len;
    memcpy(w->data, data, len);
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)len);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, write_cb);
    if (rc != 0) {
        fc_free(w);
        snprintf(detail, detail_size, "write failed: %s", uv_strerror(rc));
        return FC_ERR_IO;
    }
    c->queued += len;
    return FC_OK;
}

/* Moves all ciphertext from wbio into one write request. */
static fc_status flush_tls(net_conn *c, char *detail, size_t detail_size) {
    size_t n = BIO_ctrl_pending(c->wbio);
    if (n == 0)
        return FC_OK;
    if (n > (size_t)INT32_MAX) {
        snprintf(detail, detail_size, "TLS output of %zu bytes is too large", n);
        return FC_ERR_LIMIT;
    }
    write_req *w = fc_malloc(sizeof *w + n);
    if (!w) {
        snprintf(detail, detail_size, "out of memory queueing %zu bytes of TLS output", n);
        return FC_ERR_NOMEM;
    }
    int got = BIO_read(c->wbio, w->data, (int)n);
    if (got != (int)n) {
        fc_free(w);
        snprintf(detail, detail_size, "reading %zu bytes from the TLS output BIO gave %d", n,
                 got);
        return FC_ERR_TLS;
    }
    w->conn = c;
    w->len = n;
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)n);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, write_cb);
    if (rc != 0) {
        fc_free(w);
        snprintf(detail, detail_size, "write failed: %s", uv_strerror(rc));
        return FC_ERR_IO;
    }
    c->queued += n;
    return FC_OK;
}

/* flush_tls for paths that close the connection themselves on failure. */
static int flush_or_close(net_conn *c) {
    char detail[160];
    fc_status st = flush_tls(c, detail, sizeof detail);
    if (st == FC_OK)
        return 1;
    begin_close(c, st, detail, CLOSE_HARD);
    return 0;
}

fc_status net_write(net_conn *c, const void *data, size_t len) {
    switch (c->state) {
    case NET_HANDSHAKE:
        return FC_ERR_STATE;
    case NET_OPEN:
        break;
    case NET_CLOSING:
    case NET_CLOSED:
        return FC_ERR_CLOSED;
    }
    net_listener *l = c->listener;
    if (len == 0)
        return FC_OK;
    if (l->limits.max_output_bytes && (len > l->limits.max_output_bytes ||
                                       c->queued > l->limits.max_output_bytes - len)) {
        char detail[200];
        snprintf(detail, sizeof detail,
                 "output queue would reach %zu bytes, limit %zu (peer is not reading)",
                 c->queued + len, l->limits.max_output_bytes);
        begin_close(c, FC_ERR_LIMIT, detail, CLOSE_GRACEFUL);
        return FC_ERR_LIMIT;
    }
    char detail[FC_ERROR_MSG_MAX];
    fc_status st = FC_OK;
    if (!c->ssl) {
        st = submit_write(c, data, len, detail, sizeof detail);
    } else {
        const uint8_t *p = data;
        size_t left = len;
        while (left > 0 && st == FC_OK) {
            int chunk = left > NET_WRITE_CHUNK ? NET_WRITE_CHUNK : (int)left;
            ERR_clear_error();
            int r = SSL_write(c->ssl, p, chunk);
            if (r <= 0) {
                fc_error e = {0};
                c->tls_fatal = 1;
                net_tls_error(&e, FC_ERR_TLS, NULL, "TLS write failed");
                snprintf(detail, sizeof detail, "%s", e.msg);
                st = FC_ERR_TLS;
                break;
            }
            p += r;
            left -= (size_t)r;
            st = flush_tls(c, detail, sizeof detail);
        }
    }
    if (st != FC_OK) {
        begin_close(c, st, detail, CLOSE_HARD);
        return st;
    }
    if (!c->blocked && c->queued > l->limits.output_high_water) {
        c->blocked = 1;
        if (l->cb.on_backpressure)
            l->cb.on_backpressure(c, 1);
    }
    return FC_OK;
}

/* ---- closing ---- */

static void shutdown_cb(uv_shutdown_t *req, int status) {
    net_conn *c = req->data;
    if (c->state == NET_CLOSED)
        return;
    c->shutdown_done = 1;
    if (status < 0 || c->eof)
        close_handles(c);
    /* else: wait for the peer's FIN (read_cb) or the linger timer. */
}

static void start_shutdown(net_conn *c) {
    if (c->shutdown_sent)
        return;
    c->shutdown_sent = 1;
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, shutdown_cb) != 0)
        close_handles(c);
}

static void begin_close(net_conn *c, fc_status reason, const char *detail, close_mode mode) {
    if (c->state == NET_CLOSING || c->state == NET_CLOSED)
        return;
    c->reason = reason;
    c->detail = fc_strdup(detail ? detail : fc_strerror(reason)); /* NULL on OOM: code text */
    if (mode == CLOSE_HARD) {
        close_handles(c);
        return;
    }
    c->closing_at = uv_now(c->listener->loop);
    set_state(c, NET_CLOSING);
    if (c->ssl) {
        if (c->handshake_done && !c->tls_fatal) {
            ERR_clear_error();
            (void)SSL_shutdown(c->ssl); /* queues close_notify; the peer's is not awaited */
            ERR_clear_error();
        }
        char d[160];
        if (flush_tls(c, d, sizeof d) != FC_OK) {
            close_handles(c);
            return;
        }
    }
    if (!c->eof)
        start_reading(c); /* discard input, watch for the FIN */
    arm_timer(c);
    if (c->queued == 0)
        start_shutdown(c);
}

void net_close(net_conn *c, fc_status reason, const char *detail) {
    begin_close(c, reason, detail, CLOSE_GRACEFUL);
}

/* A limit tripped: let the owner queue a last message, then close gracefully. */
static void limit_close(net_conn *c, fc_status status, const char *detail) {
    if (c->state == NET_CLOSING || c->state == NET_CLOSED)
        return;
    net_listener *l = c->listener;
    if (l->cb.on_limit)
        l->cb.on_limit(c, status, detail);
    begin_close(c, status, detail, CLOSE_GRACEFUL);
}

/* ---- timers: one per connection, armed for the nearest deadline ---- */

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

static void timer_cb(uv_timer_t *t);

static void arm_timer(net_conn *c) {
    const net_limits *lim = &c->listener->limits;
    uint64_t deadline = UINT64_MAX;
    switch (c->state) {
    case NET_HANDSHAKE:
        if (lim->handshake_timeout_ms)
            deadline = c->accepted_at + lim->handshake_timeout_ms;
        break;
    case NET_OPEN:
        if (c->paused)
            break;
        if (lim->idle_timeout_ms)
            deadline = c->last_rx + lim->idle_timeout_ms;
        if (c->partial && lim->min_rate_bps && lim->rate_window_ms)
            deadline = min_u64(deadline, c->window_start + lim->rate_window_ms);
        break;
    case NET_CLOSING:
        deadline = c->closing_at + lim->close_linger_ms;
        break;
    case NET_CLOSED:
        return;
    }
    if (deadline == UINT64_MAX) {
        uv_timer_stop(&c->timer);
        return;
    }
    uint64_t now = uv_now(c->listener->loop);
    uv_timer_start(&c->timer, timer_cb, deadline > now ? deadline - now : 0, 0);
}

/* Bytes already received by the kernel but not yet read by the loop. */
static int input_pending(net_conn *c) {
    uv_os_fd_t fd;
    if (uv_fileno((const uv_handle_t *)&c->tcp, &fd) != 0)
        return 0;
    char byte;
    return recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

static void timer_cb(uv_timer_t *t) {
    net_conn *c = t->data;
    const net_limits *lim = &c->listener->limits;
    uint64_t now = uv_now(c->listener->loop);
    char detail[200];
    switch (c->state) {
    case NET_HANDSHAKE:
        if (lim->handshake_timeout_ms && now >= c->accepted_at + lim->handshake_timeout_ms) {
            snprintf(detail, sizeof detail, "handshake not completed within %llu ms",
                     (unsigned long long)lim->handshake_timeout_ms);
            limit_close(c, FC_ERR_TIMEOUT, detail);
            return;
        }
        break;
    case NET_OPEN: {
        if (c->paused)
            break;
        int idle_due = lim->idle_timeout_ms && now >= c->last_rx + lim->idle_timeout_ms;
        int window_due = c->partial && lim->min_rate_bps && lim->rate_window_ms &&
                         now >= c->window_start + lim->rate_window_ms;
        /* A fixed requirement per window: a stalled loop must not inflate it. */
        uint64_t need = lim->min_rate_bps * lim->rate_window_ms / 1000;
        if (need == 0)
            need = 1;
        if ((idle_due || (window_due && c->window_bytes < need)) && input_pending(c)) {
            /* Timers run before I/O in a loop iteration: after a stall the peer's bytes may
             * be waiting in the socket. Read them first, then judge again. */
            uv_timer_start(&c->timer, timer_cb, 1, 0);
            return;
        }
        if (idle_due) {
            snprintf(detail, sizeof detail, "no data received for %llu ms (idle timeout)",
                     (unsigned long long)lim->idle_timeout_ms);
            limit_close(c, FC_ERR_TIMEOUT, detail);
            return;
        }
        if (window_due) {
            if (c->window_bytes < need) {
                snprintf(detail, sizeof detail,
                         "frame incomplete: %llu bytes received in %llu ms, minimum rate is "
                         "%llu bytes/s",
                         (unsigned long long)c->window_bytes,
                         (unsigned long long)(now - c->window_start),
                         (unsigned long long)lim->min_rate_bps);
                limit_close(c, FC_ERR_LIMIT, detail);
                return;
            }
            c->window_start = now;
            c->window_bytes = 0;
        }
        break;
    }
    case NET_CLOSING:
        if (now >= c->closing_at + lim->close_linger_ms) {
            FC_LOG(FC_LOG_DEBUG, "connection linger expired", FC_LU("conn", c->id),
                   FC_LS("peer", c->peer), FC_LU("unsent", c->queued));
            close_handles(c);
            return;
        }
        break;
    case NET_CLOSED:
        return;
    }
    arm_timer(c);
}

/* ---- input ---- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    /* One buffer per listener: every read is consumed before read_cb returns. */
    net_conn *c = h->data;
    buf->base = (char *)c->listener->read_buf;
    buf->len = sizeof c->listener->read_buf;
}

static void deliver(net_conn *c, const uint8_t *data, size_t len) {
    if (c->partial)
        c->window_bytes += len;
    c->listener->cb.on_data(c, data, len);
}

static void open_conn(net_conn *c) {
    c->last_rx = uv_now(c->listener->loop);
    set_state(c, NET_OPEN);
    arm_timer(c);
    if (c->listener->cb.on_open)
        c->listener->cb.on_open(c);
}

static void tls_fail(net_conn *c, const char *what) {
    fc_error e = {0};
    c->tls_fatal = 1;
    net_tls_error(&e, FC_ERR_TLS, c->ssl, what);
    begin_close(c, FC_ERR_TLS, e.msg, CLOSE_GRACEFUL); /* graceful: flush the alert */
}

/* A memory BIO keeps the capacity of the largest read it ever buffered (NET_READ_BUF), for the
 * life of the connection. Once it is drained between frames, a large one is replaced by a fresh
 * BIO, so a connection that uploaded once does not keep 64 KiB after it: with a thousand clients
 * that was tens of megabytes. Inside a frame (net_set_partial) it is kept for the next read. */
static void shrink_rbio(net_conn *c) {
    BUF_MEM *bm = NULL;
    if (!c->ssl || c->partial || BIO_ctrl_pending(c->rbio) != 0 || SSL_pending(c->ssl) > 0)
        return; /* mid-frame the next read follows at once: keep it */
    BIO_get_mem_ptr(c->rbio, &bm);
    if (!bm || bm->max <= NET_PLAIN_BUF)
        return;
    BIO *nb = BIO_new(BIO_s_mem());
    if (!nb) {
        ERR_clear_error();
        return; /* keep the old one: only memory is lost */
    }
    BIO_set_mem_eof_return(nb, -1);
    SSL_set0_rbio(c->ssl, nb); /* frees the old rbio */
    c->rbio = nb;
}

static void tls_read_loop(net_conn *c) {
    net_listener *l = c->listener;
    while (c->state == NET_OPEN && !c->paused) {
        ERR_clear_error();
        int r = SSL_read(c->ssl, l->plain_buf, (int)sizeof l->plain_buf);
        if (r > 0) {
            deliver(c, l->plain_buf, (size_t)r);
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            break; /* memory BIOs: WANT_WRITE only means "flush", done below */
        if (e == SSL_ERROR_ZERO_RETURN) {
            begin_close(c, FC_ERR_CLOSED, "peer sent close_notify", CLOSE_GRACEFUL);
            return;
        }
        tls_fail(c, "TLS read failed");
        return;
    }
    if (c->state == NET_OPEN)
        flush_or_close(c); /* post-handshake messages (e.g. KeyUpdate responses) */
    if (c->state == NET_OPEN)
        shrink_rbio(c);
}

static void tls_advance(net_conn *c) {
    if (c->state == NET_HANDSHAKE) {
        ERR_clear_error();
        int r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                flush_or_close(c);
                return;
            }
            tls_fail(c, "TLS handshake failed");
            return;
        }
        c->handshake_done = 1;
        fc_error e = {0};
        if (net_tls_peer_cn(c->ssl, &c->identity, &e) != FC_OK) {
            begin_close(c, e.code, e.msg, CLOSE_GRACEFUL);
            return;
        }
        if (!flush_or_close(c))
            return;
        open_conn(c);
    }
    if (c->state == NET_OPEN)
        tls_read_loop(c);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    net_conn *c = s->data;
    if (nread == 0 || c->state == NET_CLOSED)
        return;
    if (nread < 0) {
        c->eof = 1;
        if (c->reading) {
            uv_read_stop(s);
            c->reading = 0;
        }
        char detail[160];
        switch (c->state) {
        case NET_HANDSHAKE:
            if (nread == UV_EOF)
                begin_close(c, FC_ERR_TLS, "peer closed the connection during the TLS handshake",
                            CLOSE_HARD);
            else {
                snprintf(detail, sizeof detail, "read failed during the handshake: %s",
                         uv_strerror((int)nread));
                begin_close(c, FC_ERR_IO, detail, CLOSE_HARD);
            }
            break;
        case NET_OPEN:
            if (nread == UV_EOF)
                begin_close(c, FC_ERR_CLOSED, "peer closed the connection", CLOSE_GRACEFUL);
            else {
                snprintf(detail, sizeof detail, "read failed: %s", uv_strerror((int)nread));
                begin_close(c, FC_ERR_IO, detail, CLOSE_HARD);
            }
            break;
        case NET_CLOSING:
            if (nread != UV_EOF || c->shutdown_done)
                close_handles(c);
            break;
        case NET_CLOSED:
            break;
        }
        return;
    }
    c->last_rx = uv_now(c->listener->loop);
    switch (c->state) {
    case NET_HANDSHAKE:
    case NET_OPEN:
        if (!c->ssl) {
            deliver(c, (const uint8_t *)buf->base, (size_t)nread);
            return;
        }
        if (BIO_write(c->rbio, buf->base, (int)nread) != (int)nread) {
            ERR_clear_error();
            begin_close(c, FC_ERR_NOMEM, "out of memory buffering TLS input", CLOSE_HARD);
            return;
        }
        tls_advance(c);
        break;
    case NET_CLOSING: /* discarded: we only wait for the FIN */
    case NET_CLOSED:
        break;
    }
}

static void start_reading(net_conn *c) {
    if (c->reading || c->eof || c->state == NET_CLOSED)
        return;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    if (rc != 0) {
        char detail[128];
        snprintf(detail, sizeof detail, "cannot read: %s", uv_strerror(rc));
        begin_close(c, FC_ERR_IO, detail, CLOSE_HARD);
        return;
    }
    c->reading = 1;
}

void net_pause_reading(net_conn *c) {
    if (c->paused || c->state == NET_CLOSING || c->state == NET_CLOSED) {
        c->paused = 1;
        return;
    }
    c->paused = 1;
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
    arm_timer(c);
}

static void idle_cb(uv_idle_t *h) {
    net_listener *l = h->data;
    uv_idle_stop(h);
    l->idle_active = 0;
    net_conn *next;
    for (net_conn *c = l->conns; c; c = next) {
        next = c->next; /* nodes leave the list only in close callbacks, never during this */
        if (!c->needs_drain)
            continue;
        c->needs_drain = 0;
        if ((c->state == NET_OPEN || c->state == NET_HANDSHAKE) && !c->paused && c->ssl)
            tls_advance(c);
    }
}

void net_resume_reading(net_conn *c) {
    if (!c->paused)
        return;
    c->paused = 0;
    if (c->state != NET_OPEN && c->state != NET_HANDSHAKE)
        return;
    net_listener *l = c->listener;
    uint64_t now = uv_now(l->loop);
    c->last_rx = now;
    c->window_start = now;
    c->window_bytes = 0;
    start_reading(c);
    if (c->state != NET_OPEN && c->state != NET_HANDSHAKE)
        return;
    if (c->ssl && (SSL_pending(c->ssl) > 0 || BIO_ctrl_pending(c->rbio) > 0)) {
        c->needs_drain = 1;
        if (!l->idle_active) {
            uv_idle_start(&l->idle, idle_cb);
            l->idle_active = 1;
        }
    }
    arm_timer(c);
}

void net_set_partial(net_conn *c, int partial) {
    if (partial && !c->partial) {
        c->partial = 1;
        c->window_start = c->listener ? uv_now(c->listener->loop) : 0;
        c->window_bytes = 0;
    } else if (!partial && c->partial) {
        c->partial = 0;
    } else {
        return;
    }
    /* Mid-frame, more records follow at once: keeping the record buffers saves an allocation,
     * a free and a cleanse of 16 KiB or more per record. */
    if (c->ssl) {
        if (partial)
            SSL_clear_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);
        else
            SSL_set_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);
    }
    if (c->state == NET_OPEN)
        arm_timer(c);
}

/* ---- accept ---- */

static void peer_identify(net_conn *c) {
    struct sockaddr_storage ss;
    int len = (int)sizeof ss;
    memset(&c->key, 0, sizeof c->key);
    snprintf(c->peer, sizeof c->peer, "unknown");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    char host[INET6_ADDRSTRLEN] = "";
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        c->key.family = 4;
        memcpy(c->key.addr, &a->sin_addr, 4);
        uv_ip4_name(a, host, sizeof host);
        snprintf(c->peer, sizeof c->peer, "%s:%u", host, (unsigned)ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
            /* A v4 client on a dual-stack socket counts as its IPv4 address. */
            c->key.family = 4;
            memcpy(c->key.addr, a->sin6_addr.s6_addr + 12, 4);
        } else {
            /* IPv6 peers are counted per /64: one host usually owns a whole /64 (privacy
             * addresses), so a /128 limit would be no limit at all. */
            c->key.family = 6;
            memcpy(c->key.addr, a->sin6_addr.s6_addr, 8);
        }
        uv_ip6_name(a, host, sizeof host);
        snprintf(c->peer, sizeof c->peer, "[%s]:%u", host, (unsigned)ntohs(a->sin6_port));
    }
}

static size_t count_peer(const net_listener *l, const peer_key *key) {
    size_t n = 0;
    for (const net_conn *c = l->conns; c; c = c->next)
        if (c->counted && memcmp(&c->key, key, sizeof *key) == 0)
            n++;
    return n;
}

/* Out of memory at accept: take the socket and close it so the listener keeps accepting. */
static void accept_and_drop(net_listener *l) {
    FC_LOG(FC_LOG_ERROR, "out of memory accepting a connection", FC_LS("listener", l->name));
    if (l->dump_busy || l->closing)
        return;
    if (uv_tcp_init(l->loop, &l->dump) != 0)
        return;
    l->dump.data = l;
    l->dump_busy = 1;
    l->handles_open++;
    (void)uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&l->dump);
    uv_close((uv_handle_t *)&l->dump, listener_handle_closed);
}

static void on_connection(uv_stream_t *server, int status) {
    net_listener *l = server->data;
    if (status < 0) {
        FC_LOG(FC_LOG_WARN, "accept failed", FC_LS("listener", l->name),
               FC_LS("error", uv_strerror(status)));
        return;
    }
    net_conn *c = fc_calloc(1, sizeof *c);
    if (!c) {
        accept_and_drop(l);
        return;
    }
    if (uv_tcp_init(l->loop, &c->tcp) != 0) {
        fc_free(c);
        accept_and_drop(l);
        return;
    }
    uv_timer_init(l->loop, &c->timer); /* cannot fail */
    c->tcp.data = c;
    c->timer.data = c;
    c->handles_open = 2;
    c->refs = 1;
    c->id = atomic_fetch_add(&next_conn_id, 1);
    c->listener = l;
    c->accepted_at = uv_now(l->loop);
    c->next = l->conns;
    if (l->conns)
        l->conns->prev = c;
    l->conns = c;
    snprintf(c->peer, sizeof c->peer, "unknown");

    int rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc != 0) {
        char detail[128];
        snprintf(detail, sizeof detail, "accept failed: %s", uv_strerror(rc));
        begin_close(c, FC_ERR_IO, detail, CLOSE_HARD);
        return;
    }
    peer_identify(c);
    set_state(c, NET_HANDSHAKE);

    char detail[200];
    if (l->limits.max_connections && l->live >= l->limits.max_connections) {
        c->rejected = 1;
        snprintf(detail, sizeof detail, "too many connections: %zu open, limit %zu", l->live,
                 l->limits.max_connections);
        begin_close(c, FC_ERR_LIMIT, detail, CLOSE_HARD);
        return;
    }
    if (l->limits.max_per_peer && count_peer(l, &c->key) >= l->limits.max_per_peer) {
        c->rejected = 1;
        snprintf(detail, sizeof detail, "too many connections from this address: limit %zu",
                 l->limits.max_per_peer);
        begin_close(c, FC_ERR_LIMIT, detail, CLOSE_HARD);
        return;
    }
    c->counted = 1;
    l->live++;
    (void)uv_tcp_nodelay(&c->tcp, 1);

    if (l->plain) {
        start_reading(c);
        if (c->state == NET_HANDSHAKE)
            open_conn(c);
        return;
    }
    c->ssl = SSL_new(l->ctx);
    BIO *rbio = BIO_new(BIO_s_mem());
    BIO *wbio = BIO_new(BIO_s_mem());
    if (!c->ssl || !rbio || !wbio) {
        BIO_free(rbio);
        BIO_free(wbio);
        ERR_clear_error();
        begin_close(c, FC_ERR_NOMEM, "out of memory creating the TLS session", CLOSE_HARD);
        return;
    }
    BIO_set_mem_eof_return(rbio, -1); /* empty input means "want more", not EOF */
    BIO_set_mem_eof_return(wbio, -1);
    SSL_set_bio(c->ssl, rbio, wbio);
    c->rbio = rbio;
    c->wbio = wbio;
    SSL_set_accept_state(c->ssl);
    start_reading(c);
    if (c->state == NET_HANDSHAKE)
        arm_timer(c);
}

/* ---- listeners ---- */

static int is_loopback(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    return IN6_IS_ADDR_LOOPBACK(&a->sin6_addr);
}

static fc_status check_config(const net_listener_config *cfg, struct sockaddr_storage *addr,
                              fc_error *err) {
    const char *name = cfg->name ? cfg->name : "listener";
    if (!cfg->cb.on_data || !cfg->cb.on_close)
        return fc_error_set(err, FC_ERR_INVALID, "%s: on_data and on_close are required", name);
    if (cfg->port < 0 || cfg->port > 65535)
        return fc_error_set(err, FC_ERR_CONFIG, "%s: port %d is outside 0..65535", name,
                            cfg->port);
    if (!cfg->host)
        return fc_error_set(err, FC_ERR_CONFIG, "%s: listen address is not set", name);
    memset(addr, 0, sizeof *addr);
    if (uv_ip4_addr(cfg->host, cfg->port, (struct sockaddr_in *)addr) != 0 &&
        uv_ip6_addr(cfg->host, cfg->port, (struct sockaddr_in6 *)addr) != 0)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "%s: listen address '%s' is not a numeric IPv4 or IPv6 address", name,
                            cfg->host);
    if (cfg->plain && !is_loopback(addr))
        return fc_error_set(err, FC_ERR_CONFIG,
                            "%s: plain (non-TLS) listener on '%s' refused: plain is allowed only "
                            "on a loopback address",
                            name, cfg->host);
    const net_limits *lim = &cfg->limits;
    if (lim->min_rate_bps && !lim->rate_window_ms)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "%s: a minimum rate needs a rate window above 0 ms", name);
    if (lim->min_rate_bps > UINT64_MAX / 1000 || lim->rate_window_ms > UINT64_MAX / 1000)
        return fc_error_set(err, FC_ERR_CONFIG, "%s: rate limit values are too large", name);
    if (lim->max_output_bytes && lim->output_high_water > lim->max_output_bytes)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "%s: output high-water mark %zu exceeds the output limit %zu", name,
                            lim->output_high_water, lim->max_output_bytes);
    return FC_OK;
}

fc_status net_listener_open(uv_loop_t *loop, const net_listener_config *cfg, net_listener **out,
                            fc_error *err) {
    *out = NULL;
    struct sockaddr_storage addr;
    fc_status st = check_config(cfg, &addr, err);
    if (st != FC_OK)
        return st;
    net_listener *l = fc_calloc(1, sizeof *l);
    if (!l)
        return fc_error_set(err, FC_ERR_NOMEM, "allocating a listener");
    l->loop = loop;
    l->plain = cfg->plain;
    l->limits = cfg->limits;
    l->cb = cfg->cb;
    l->user = cfg->user;
    l->name = fc_strdup(cfg->name ? cfg->name : "listener");
    if (!l->name) {
        fc_free(l);
        return fc_error_set(err, FC_ERR_NOMEM, "allocating a listener");
    }
    if (!cfg->plain && (st = net_tls_ctx_new(&cfg->tls, &l->ctx, err)) != FC_OK) {
        fc_error_prefix(err, "%s", l->name);
        fc_free(l->name);
        fc_free(l);
        return st;
    }
    /* From here on the handles exist, so failures close them and free l in the callback. */
    uv_idle_init(loop, &l->idle);
    l->idle.data = l;
    l->handles_open = 1;
    int rc = uv_tcp_init(loop, &l->tcp);
    if (rc != 0) {
        st = fc_error_set(err, FC_ERR_IO, "%s: socket: %s", l->name, uv_strerror(rc));
        l->closing = 1;
        listener_maybe_finish(l);
        return st;
    }
    l->tcp.data = l;
    l->handles_open = 2;
    rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, NET_BACKLOG, on_connection);
    if (rc != 0) {
        st = fc_error_set(err, FC_ERR_IO, "%s: cannot listen on %s port %d: %s", l->name,
                          cfg->host, cfg->port, uv_strerror(rc));
        net_listener_close(l, NULL, NULL);
        return st;
    }
    struct sockaddr_storage bound;
    int len = (int)sizeof bound;
    if ((rc = uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&bound, &len)) != 0) {
        st = fc_error_set(err, FC_ERR_IO, "%s: getsockname: %s", l->name, uv_strerror(rc));
        net_listener_close(l, NULL, NULL);
        return st;
    }
    l->port = bound.ss_family == AF_INET
                  ? ntohs(((struct sockaddr_in *)&bound)->sin_port)
                  : ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
    FC_LOG(FC_LOG_INFO, "listening", FC_LS("listener", l->name), FC_LS("host", cfg->host),
           FC_LI("port", l->port), FC_LS("tls", l->plain ? "off" : "on"),
           FC_LS("mtls", l->plain || cfg->tls.mtls == NET_MTLS_OFF
                             ? "off"
                             : cfg->tls.mtls == NET_MTLS_REQUIRE ? "require" : "optional"));
    *out = l;
    return FC_OK;
}

int net_listener_port(const net_listener *l) { return l->port; }
void *net_listener_user(const net_listener *l) { return l->user; }
size_t net_listener_count(const net_listener *l) { return l->live; }

void net_listener_close(net_listener *l, void (*on_closed)(void *arg), void *arg) {
    assert(!l->closing);
    l->closing = 1;
    l->on_closed = on_closed;
    l->closed_arg = arg;
    uv_close((uv_handle_t *)&l->tcp, listener_handle_closed);
    listener_maybe_finish(l);
}

void net_close_all(net_listener *l, fc_status reason, const char *detail) {
    net_conn *next;
    for (net_conn *c = l->conns; c; c = next) {
        next = c->next;
        net_close(c, reason, detail);
    }
}

/* ---- accessors and references ---- */

void net_conn_ref(net_conn *c) { c->refs++; }

void net_conn_unref(net_conn *c) {
    assert(c->refs > 0);
    if (--c->refs == 0) {
        assert(c->state == NET_CLOSED && c->handles_open == 0);
        conn_free(c);
    }
}

net_state net_conn_state(const net_conn *c) { return c->state; }
uint64_t net_conn_id(const net_conn *c) { return c->id; }
const char *net_conn_peer(const net_conn *c) { return c->peer; }
const char *net_conn_identity(const net_conn *c) { return c->identity; }
size_t net_conn_queued(const net_conn *c) { return c->queued; }
net_listener *net_conn_listener(const net_conn *c) { return c->listener; }
void net_conn_set_user(net_conn *c, void *user) { c->user = user; }
void *net_conn_user(const net_conn *c) { return c->user; }
