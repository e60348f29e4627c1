/* conn.c: the SDK's connection: sockets, TLS, frames, heartbeats, handshake and reconnection.
 *
 * One fc_client owns at most one connection. The socket is non-blocking and every wait is a
 * poll() bounded by a deadline, so no call can hang past its timeout. OpenSSL runs directly on
 * the file descriptor. This file never interprets tasks, models or uploads (client.c does), never
 * uses libuv, and never aborts on out-of-memory.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "client/conn.h"
#include "core/alloc.h"
#include "core/ssl_error.h"

#define DEFAULT_CONNECT_MS 10000u
#define DEFAULT_IO_MS 120000u
#define DEFAULT_ATTEMPTS 8
#define DEFAULT_BACKOFF_BASE_MS 250u
#define DEFAULT_BACKOFF_MAX_MS 30000u
#define DEFAULT_MAX_MODEL ((uint64_t)16 << 30)
#define SOFTWARE "libfedclient/0.1"

uint64_t conn_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void conn_sleep_ms(uint64_t ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static uint64_t unix_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* OpenSSL errors go through the project's one mapping (core/ssl_error.c). */
static fc_status tls_error(fc_client *c, fc_status code, const char *what) {
    return fc_ssl_error(&c->err, code, c->ssl, what);
}

/* OpenSSL 3 reports a TCP end without close_notify as an SSL error with this reason. */
static int unexpected_eof(void) {
    unsigned long e = ERR_peek_error();
    return e != 0 && ERR_GET_LIB(e) == ERR_LIB_SSL &&
           ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING;
}

/* ---- configuration ---- */

static fc_status dup_opt(fc_client *c, char **dst, const char *src) {
    if (!src || !*src) {
        *dst = NULL;
        return FC_OK;
    }
    *dst = fc_strdup(src);
    return *dst ? FC_OK : fc_error_set(&c->err, FC_ERR_NOMEM, "out of memory copying the config");
}

static fc_status parse_server(fc_client *c, const char *server) {
    const char *colon;
    const char *host = server;
    size_t host_len;
    if (server[0] == '[') {
        const char *close = strchr(server, ']');
        if (!close || close[1] != ':')
            return fc_error_set(&c->err, FC_ERR_CONFIG, "server \"%s\": expected \"[ipv6]:port\"",
                                server);
        host = server + 1;
        host_len = (size_t)(close - host);
        colon = close + 1;
    } else {
        colon = strrchr(server, ':');
        if (!colon || strchr(server, ':') != colon)
            return fc_error_set(&c->err, FC_ERR_CONFIG,
                                "server \"%s\": expected \"host:port\" (IPv6 as \"[addr]:port\")",
                                server);
        host_len = (size_t)(colon - server);
    }
    const char *port = colon + 1;
    char *end = NULL;
    errno = 0;
    long p = strtol(port, &end, 10);
    if (host_len == 0 || !*port || *end || errno || p < 1 || p > 65535)
        return fc_error_set(&c->err, FC_ERR_CONFIG,
                            "server \"%s\": needs a host and a port number 1..65535", server);
    c->host = fc_strndup(host, host_len);
    c->port = fc_strdup(port);
    if (!c->host || !c->port)
        return fc_error_set(&c->err, FC_ERR_NOMEM, "out of memory copying the config");
    return FC_OK;
}

static fc_status file_error(fc_client *c, const char *field, const char *path) {
    char what[600];
    snprintf(what, sizeof what, "config: loading %s %s", field, path);
    return tls_error(c, FC_ERR_CONFIG, what);
}

fc_status conn_configure(fc_client *c, const fc_client_config *in) {
    fc_client_config cfg;
    memset(&cfg, 0, sizeof cfg);
    if (in->size < offsetof(fc_client_config, connect_timeout_ms))
        return fc_error_set(&c->err, FC_ERR_INVALID,
                            "fc_client_config.size is %zu: initialise the config with "
                            "FC_CLIENT_CONFIG_INIT",
                            in->size);
    memcpy(&cfg, in, in->size < sizeof cfg ? in->size : sizeof cfg);
    if (!cfg.server || !*cfg.server)
        return fc_error_set(&c->err, FC_ERR_CONFIG, "config: server (\"host:port\") is required");
    if (!cfg.ca_file || !*cfg.ca_file)
        return fc_error_set(&c->err, FC_ERR_CONFIG,
                            "config: ca_file is required (the server certificate is always "
                            "verified)");
    if ((cfg.cert_file && *cfg.cert_file) != (cfg.key_file && *cfg.key_file))
        return fc_error_set(&c->err, FC_ERR_CONFIG,
                            "config: cert_file and key_file go together (mutual TLS)");
    if (cfg.token && strlen(cfg.token) > FC_WIRE_MAX_TOKEN)
        return fc_error_set(&c->err, FC_ERR_CONFIG, "config: token longer than %u bytes",
                            FC_WIRE_MAX_TOKEN);
    if (cfg.client_name && strlen(cfg.client_name) > FC_WIRE_MAX_SHORT_STRING)
        return fc_error_set(&c->err, FC_ERR_CONFIG, "config: client_name longer than %u bytes",
                            FC_WIRE_MAX_SHORT_STRING);
    if (cfg.token && *cfg.token && (!cfg.client_name || !*cfg.client_name))
        return fc_error_set(&c->err, FC_ERR_CONFIG, "config: client_name is required with a token");
    fc_status st = parse_server(c, cfg.server);
    if (st != FC_OK)
        return st;
    if ((st = dup_opt(c, &c->verify_name, cfg.server_name ? cfg.server_name : c->host)) ||
        (st = dup_opt(c, &c->ca_file, cfg.ca_file)) ||
        (st = dup_opt(c, &c->cert_file, cfg.cert_file)) ||
        (st = dup_opt(c, &c->key_file, cfg.key_file)) || (st = dup_opt(c, &c->token, cfg.token)) ||
        (st = dup_opt(c, &c->client_name, cfg.client_name)))
        return st;
    c->connect_timeout_ms = cfg.connect_timeout_ms ? cfg.connect_timeout_ms : DEFAULT_CONNECT_MS;
    c->io_timeout_ms = cfg.io_timeout_ms ? cfg.io_timeout_ms : DEFAULT_IO_MS;
    c->max_attempts = cfg.reconnect_max_attempts == 0  ? DEFAULT_ATTEMPTS
                      : cfg.reconnect_max_attempts < 0 ? 0
                                                       : cfg.reconnect_max_attempts;
    c->backoff_base_ms = cfg.reconnect_base_ms ? cfg.reconnect_base_ms : DEFAULT_BACKOFF_BASE_MS;
    c->backoff_max_ms = cfg.reconnect_max_ms ? cfg.reconnect_max_ms : DEFAULT_BACKOFF_MAX_MS;
    if (c->backoff_max_ms < c->backoff_base_ms)
        c->backoff_max_ms = c->backoff_base_ms;
    c->max_model_bytes = cfg.max_model_bytes ? cfg.max_model_bytes : DEFAULT_MAX_MODEL;

    ERR_clear_error();
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx)
        return tls_error(c, FC_ERR_NOMEM, "creating the TLS context");
    if (!SSL_CTX_set_min_proto_version(c->ctx, TLS1_3_VERSION))
        return tls_error(c, FC_ERR_TLS, "requiring TLS 1.3");
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(c->ctx, c->ca_file, NULL) != 1)
        return file_error(c, "ca_file", c->ca_file);
    if (c->cert_file) {
        if (SSL_CTX_use_certificate_chain_file(c->ctx, c->cert_file) != 1)
            return file_error(c, "cert_file", c->cert_file);
        if (SSL_CTX_use_PrivateKey_file(c->ctx, c->key_file, SSL_FILETYPE_PEM) != 1)
            return file_error(c, "key_file", c->key_file);
        if (SSL_CTX_check_private_key(c->ctx) != 1)
            return tls_error(c, FC_ERR_CONFIG, "client key does not match the certificate");
    }
    uint64_t seed = 0;
    if (RAND_bytes((unsigned char *)&seed, sizeof seed) != 1)
        seed = unix_ms() ^ (uint64_t)getpid() << 32;
    c->rng = seed | 1;
    return FC_OK;
}

/* ---- connection ---- */

/* A write to a socket whose peer is gone raises SIGPIPE, which kills a process that did not
 * ignore it. A library must not impose that choice on its host program, so every OpenSSL call
 * that may write blocks SIGPIPE in the calling thread and discards one that it raised (one that
 * was already pending before the call is left for the program). */
typedef struct pipe_guard {
    sigset_t old;
    int was_pending;
} pipe_guard;

static void pipe_block(pipe_guard *g) {
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigemptyset(&pending);
    g->was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &set, &g->old);
}

static void pipe_unblock(pipe_guard *g) {
    if (!g->was_pending) {
        sigset_t set, pending;
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        sigemptyset(&pending);
        if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
            struct timespec zero = {0, 0};
            int saved = errno;
            while (sigtimedwait(&set, NULL, &zero) == SIGPIPE) {
            }
            errno = saved;
        }
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

void conn_drop(fc_client *c) {
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    c->connected = 0;
    fc_frame_decoder_free(&c->dec);
    c->in_pos = c->in_len = 0;
}

/* The connection broke: drop it and mark the failure as one a reconnect may repair. */
static fc_status lost(fc_client *c, fc_status st, const char *what, const char *why) {
    conn_drop(c);
    c->lost = 1;
    return fc_error_set(&c->err, st, "%s: %s", what, why);
}

/* Waits for events on fd until deadline (0 = none). 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, uint64_t deadline) {
    for (;;) {
        int timeout = -1;
        if (deadline) {
            uint64_t now = conn_now_ms();
            timeout =
                now >= deadline ? 0 : (int)(deadline - now > 1000000 ? 1000000 : deadline - now);
        }
        struct pollfd p = {fd, events, 0};
        int r = poll(&p, 1, timeout);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        return r > 0 ? 1 : 0;
    }
}

static fc_status tcp_connect(fc_client *c, uint64_t deadline) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gr = getaddrinfo(c->host, c->port, &hints, &res);
    if (gr != 0) {
        c->lost = gr == EAI_AGAIN;
        return fc_error_set(&c->err, FC_ERR_IO, "resolving %s: %s", c->host, gai_strerror(gr));
    }
    int last_errno = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd =
            socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        int r = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (r != 0 && errno == EINPROGRESS) {
            int w = wait_fd(fd, POLLOUT, deadline);
            if (w <= 0) {
                last_errno = w == 0 ? ETIMEDOUT : errno;
                close(fd);
                continue;
            }
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
                soerr = errno;
            r = soerr ? -1 : 0;
            errno = soerr;
        }
        if (r != 0) {
            last_errno = errno;
            close(fd);
            continue;
        }
        c->fd = fd;
        freeaddrinfo(res);
        return FC_OK;
    }
    freeaddrinfo(res);
    c->lost = 1;
    if (last_errno == ETIMEDOUT)
        return fc_error_set(&c->err, FC_ERR_TIMEOUT, "connecting to %s:%s: no answer within %u ms",
                            c->host, c->port, c->connect_timeout_ms);
    return fc_error_set(&c->err, FC_ERR_IO, "connecting to %s:%s: %s", c->host, c->port,
                        strerror(last_errno));
}

static int is_ip_literal(const char *s) {
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static fc_status tls_handshake(fc_client *c, uint64_t deadline) {
    ERR_clear_error();
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl)
        return tls_error(c, FC_ERR_NOMEM, "creating the TLS session");
    if (SSL_set_fd(c->ssl, c->fd) != 1)
        return tls_error(c, FC_ERR_TLS, "attaching TLS to the socket");
    if (is_ip_literal(c->verify_name)) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
        if (X509_VERIFY_PARAM_set1_ip_asc(vp, c->verify_name) != 1)
            return tls_error(c, FC_ERR_TLS, "setting the expected server address");
    } else {
        if (SSL_set_tlsext_host_name(c->ssl, c->verify_name) != 1 ||
            SSL_set1_host(c->ssl, c->verify_name) != 1)
            return tls_error(c, FC_ERR_TLS, "setting the expected server name");
    }
    for (;;) {
        pipe_guard pg;
        pipe_block(&pg);
        int r = SSL_connect(c->ssl);
        pipe_unblock(&pg);
        if (r == 1)
            return FC_OK;
        int e = SSL_get_error(c->ssl, r);
        short ev;
        if (e == SSL_ERROR_WANT_READ)
            ev = POLLIN;
        else if (e == SSL_ERROR_WANT_WRITE)
            ev = POLLOUT;
        else if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_ZERO_RETURN ||
                 (e == SSL_ERROR_SSL && (ERR_peek_error() == 0 || unexpected_eof()) &&
                  SSL_get_verify_result(c->ssl) == X509_V_OK)) {
            c->lost = 1; /* the peer went away during the handshake: worth another attempt */
            fc_error_set(&c->err, FC_ERR_CLOSED,
                         "TLS handshake with %s:%s: connection closed "
                         "by the server (%s)",
                         c->host, c->port, errno ? strerror(errno) : "EOF");
            ERR_clear_error();
            return FC_ERR_CLOSED;
        } else {
            char what[300];
            snprintf(what, sizeof what, "TLS handshake with %s:%s (expecting \"%s\")", c->host,
                     c->port, c->verify_name);
            return tls_error(c, FC_ERR_TLS, what);
        }
        int w = wait_fd(c->fd, ev, deadline);
        if (w <= 0) {
            c->lost = 1;
            return fc_error_set(&c->err, FC_ERR_TIMEOUT,
                                "TLS handshake with %s:%s: not completed within %u ms", c->host,
                                c->port, c->connect_timeout_ms);
        }
    }
}

static fc_status write_all(fc_client *c, const uint8_t *p, size_t len) {
    uint64_t deadline = conn_now_ms() + c->io_timeout_ms;
    while (len > 0) {
        size_t done = 0;
        ERR_clear_error();
        pipe_guard pg;
        pipe_block(&pg);
        int r = SSL_write_ex(c->ssl, p, len, &done);
        pipe_unblock(&pg);
        if (r == 1) {
            p += done;
            len -= done;
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        short ev;
        if (e == SSL_ERROR_WANT_WRITE)
            ev = POLLOUT;
        else if (e == SSL_ERROR_WANT_READ)
            ev = POLLIN;
        else {
            ERR_clear_error();
            return lost(c, FC_ERR_CLOSED, "sending to the server",
                        e == SSL_ERROR_SYSCALL && errno ? strerror(errno) : "connection lost");
        }
        int w = wait_fd(c->fd, ev, deadline);
        if (w <= 0)
            return lost(c, FC_ERR_TIMEOUT, "sending to the server",
                        "no progress within the I/O timeout");
    }
    c->last_send_ms = conn_now_ms();
    return FC_OK;
}

static fc_status flush_out(fc_client *c) {
    fc_status st = write_all(c, c->out.data, c->out.len);
    fc_buf_reset(&c->out);
    return st;
}

fc_status conn_send(fc_client *c, fc_wire_msg *m) {
    fc_buf_reset(&c->out);
    fc_status st = fc_wire_encode(m, c->max_frame ? c->max_frame : 0, &c->out, &c->err);
    fc_wire_msg_free(m);
    if (st != FC_OK)
        return st;
    return flush_out(c);
}

fc_status conn_send_chunk(fc_client *c, uint32_t tensor_index, uint64_t offset, const void *data,
                          size_t len) {
    fc_buf_reset(&c->out);
    fc_status st = fc_frame_encode_chunk(++c->seq_out, tensor_index, offset, data, len,
                                         c->max_frame, &c->out, &c->err);
    if (st != FC_OK)
        return st;
    return flush_out(c);
}

static fc_status send_heartbeat(fc_client *c) {
    fc_wire_msg m;
    fc_status st = fc_wire_heartbeat(&m, ++c->seq_out, unix_ms(), &c->err);
    if (st != FC_OK) {
        fc_wire_msg_free(&m);
        return st;
    }
    return conn_send(c, &m);
}

/* Reads what the socket has into c->in, waiting until deadline (0 = none) while sending
 * heartbeats. FC_OK when bytes arrived, FC_ERR_TIMEOUT at the deadline. */
static fc_status fill(fc_client *c, uint64_t deadline) {
    for (;;) {
        size_t got = 0;
        ERR_clear_error();
        pipe_guard pg;
        pipe_block(&pg);
        int r = SSL_read_ex(c->ssl, c->in, CONN_IN_CAP, &got);
        pipe_unblock(&pg);
        if (r == 1) {
            c->in_pos = 0;
            c->in_len = got;
            c->last_recv_ms = conn_now_ms();
            return FC_OK;
        }
        int e = SSL_get_error(c->ssl, r);
        short ev;
        if (e == SSL_ERROR_WANT_READ)
            ev = POLLIN;
        else if (e == SSL_ERROR_WANT_WRITE)
            ev = POLLOUT;
        else if (e == SSL_ERROR_ZERO_RETURN)
            return lost(c, FC_ERR_CLOSED, "receiving", "the server closed the connection");
        else if (e == SSL_ERROR_SSL && unexpected_eof()) {
            /* TCP ended without close_notify (a middlebox or the server's host cut the
             * connection): a network accident like a reset, so it is retried */
            ERR_clear_error();
            return lost(c, FC_ERR_CLOSED, "receiving from the server",
                        "the connection ended without a TLS close_notify");
        } else if (e == SSL_ERROR_SSL && ERR_peek_error() != 0) {
            /* A TLS alert or record failure, e.g. the server refused our certificate after the
             * TLS 1.3 handshake: a verdict, not a network accident, so it is not retried. */
            fc_status st = tls_error(c, FC_ERR_TLS, "TLS error from the server");
            conn_drop(c);
            c->lost = 0;
            return st;
        } else {
            ERR_clear_error();
            return lost(c, FC_ERR_CLOSED, "receiving from the server",
                        e == SSL_ERROR_SYSCALL && errno ? strerror(errno) : "connection lost");
        }
        uint64_t now = conn_now_ms();
        /* Silence counts from the later of the last byte received and the start of this wait:
         * time the caller spent training between calls is not the server's silence. */
        uint64_t quiet_from = c->last_recv_ms > c->wait_from_ms ? c->last_recv_ms : c->wait_from_ms;
        uint64_t idle_at = quiet_from + c->io_timeout_ms;
        if (now >= idle_at)
            return lost(c, FC_ERR_TIMEOUT, "receiving",
                        "no data from the server within the I/O timeout");
        if (deadline && now >= deadline)
            return fc_error_set(&c->err, FC_ERR_TIMEOUT, "no message from the server in time");
        uint64_t hb_at = c->heartbeat_ms ? c->last_send_ms + c->heartbeat_ms : 0;
        if (hb_at && now >= hb_at) {
            fc_status st = send_heartbeat(c);
            if (st != FC_OK)
                return st;
            continue;
        }
        uint64_t wake = idle_at;
        if (deadline && deadline < wake)
            wake = deadline;
        if (hb_at && hb_at < wake)
            wake = hb_at;
        if (wait_fd(c->fd, ev, wake) < 0)
            return lost(c, FC_ERR_IO, "waiting for the server", strerror(errno));
    }
}

fc_status conn_recv(fc_client *c, uint64_t deadline, conn_msg *out) {
    memset(out, 0, sizeof *out);
    if (!c->connected)
        return fc_error_set(&c->err, FC_ERR_CLOSED, "not connected");
    c->wait_from_ms = conn_now_ms();
    for (;;) {
        if (c->in_pos < c->in_len) {
            size_t used = 0;
            fc_frame f;
            fc_status st = fc_frame_decoder_feed(&c->dec, c->in + c->in_pos, c->in_len - c->in_pos,
                                                 &used, &f, &c->err);
            c->in_pos += used;
            if (st == FC_OK) {
                if (fc_frame_peek_chunk(f.data, f.len, &out->chunk)) {
                    st = fc_wire_validate_chunk(&out->chunk, &c->err);
                    if (st != FC_OK)
                        return conn_violation(c, st);
                    out->is_chunk = 1;
                    return FC_OK;
                }
                st = fc_wire_decode(f.data, f.len, &out->env, &c->err);
                if (st != FC_OK)
                    return conn_violation(c, st);
                if (out->env->body_case == FEDCOORD__V1__ENVELOPE__BODY_HEARTBEAT) {
                    fc_envelope_free(out->env);
                    out->env = NULL;
                    continue;
                }
                if (out->env->body_case == FEDCOORD__V1__ENVELOPE__BODY_CHUNK) {
                    st = fc_wire_chunk_view(out->env, &out->chunk, &c->err);
                    if (st == FC_OK)
                        st = fc_wire_validate_chunk(&out->chunk, &c->err);
                    if (st != FC_OK) {
                        fc_envelope_free(out->env);
                        out->env = NULL;
                        return conn_violation(c, st);
                    }
                    out->is_chunk = 1; /* chunk points into env: the caller frees env */
                }
                return FC_OK;
            }
            if (st != FC_ERR_AGAIN)
                return conn_violation(c, st);
            continue;
        }
        fc_status st = fill(c, deadline);
        if (st != FC_OK)
            return st;
    }
}

fc_status conn_violation(fc_client *c, fc_status st) {
    fc_error_prefix(&c->err, "from the server");
    conn_drop(c);
    c->lost = 0;
    return st;
}

fc_status conn_server_error(fc_client *c, const Fedcoord__V1__Error *e) {
    fc_status st = fc_wire_status_for_code(e->code);
    const fc_wire_error_code *row = fc_wire_error_by_code(e->code);
    fc_error_set(&c->err, st, "server error %u %s: %s", e->code,
                 row ? row->name : (e->name && *e->name ? e->name : "UNKNOWN"),
                 e->message && *e->message ? e->message : "(no message)");
    if (e->fatal) {
        conn_drop(c);
        c->lost = 0;
    }
    return st;
}

/* ---- handshake ---- */

static int has_cap(const Fedcoord__V1__Welcome *w, const char *cap) {
    for (size_t i = 0; i < w->n_capabilities; i++)
        if (strcmp(w->capabilities[i], cap) == 0)
            return 1;
    return 0;
}

static fc_status hello_welcome(fc_client *c, uint64_t deadline) {
    static const char *const caps[] = {"resume"};
    fc_wire_hello_args a;
    memset(&a, 0, sizeof a);
    a.client_name = c->client_name ? c->client_name : "";
    a.token.data = (const uint8_t *)c->token;
    a.token.len = c->token ? strlen(c->token) : 0;
    a.capabilities = caps;
    a.n_capabilities = 1;
    a.resume_token.data = c->resume_token;
    a.resume_token.len = c->resume_len;
    a.software = SOFTWARE;
    fc_wire_msg m;
    fc_status st = fc_wire_hello(&m, ++c->seq_out, &a, &c->err);
    if (st != FC_OK) {
        fc_wire_msg_free(&m);
        return st;
    }
    if ((st = conn_send(c, &m)) != FC_OK)
        return st;
    conn_msg msg;
    st = conn_recv(c, deadline, &msg);
    if (st == FC_ERR_TIMEOUT && c->connected) {
        c->lost = 1;
        conn_drop(c);
        return fc_error_set(&c->err, FC_ERR_TIMEOUT, "no Welcome from %s:%s within %u ms", c->host,
                            c->port, c->connect_timeout_ms);
    }
    if (st != FC_OK)
        return st;
    fc_envelope *env = msg.env;
    if (msg.is_chunk || !env) {
        fc_envelope_free(env);
        fc_error_set(&c->err, FC_ERR_PROTOCOL, "expected Welcome, got a chunk");
        return conn_violation(c, FC_ERR_PROTOCOL);
    }
    if (env->body_case == FEDCOORD__V1__ENVELOPE__BODY_ERROR) {
        st = conn_server_error(c, env->error);
        fc_envelope_free(env);
        conn_drop(c);
        c->lost = st == FC_ERR_BUSY || st == FC_ERR_TIMEOUT;
        return st;
    }
    if (env->body_case != FEDCOORD__V1__ENVELOPE__BODY_WELCOME) {
        fc_error_set(&c->err, FC_ERR_PROTOCOL, "expected Welcome, got %s",
                     fc_wire_body_name(env->body_case));
        fc_envelope_free(env);
        return conn_violation(c, FC_ERR_PROTOCOL);
    }
    const Fedcoord__V1__Welcome *w = env->welcome;
    st = fc_wire_check_version(FC_WIRE_CLIENT, w->protocol_major, w->protocol_minor, &c->err);
    if (st != FC_OK) {
        fc_envelope_free(env);
        conn_drop(c);
        return st;
    }
    c->heartbeat_ms = w->heartbeat_interval_ms;
    c->max_frame = w->max_frame_bytes ? w->max_frame_bytes : (uint32_t)FC_FRAME_MAX_DEFAULT;
    c->max_chunk = w->max_chunk_bytes ? w->max_chunk_bytes : (uint32_t)FC_STREAM_MAX_CHUNK;
    if (c->max_chunk > FC_STREAM_MAX_CHUNK)
        c->max_chunk = (uint32_t)FC_STREAM_MAX_CHUNK;
    c->server_resume = has_cap(w, "resume");
    c->resume_len = w->resume_token.len <= sizeof c->resume_token ? w->resume_token.len : 0;
    if (c->resume_len)
        memcpy(c->resume_token, w->resume_token.data, c->resume_len);
    snprintf(c->session_id, sizeof c->session_id, "%s", w->session_id ? w->session_id : "");
    fc_envelope_free(env);
    return FC_OK;
}

fc_status conn_establish(fc_client *c) {
    conn_drop(c);
    c->lost = 0;
    c->seq_out = 0;
    c->heartbeat_ms = 0;
    c->max_frame = 0;
    uint64_t deadline = conn_now_ms() + c->connect_timeout_ms;
    fc_status st = tcp_connect(c, deadline);
    if (st == FC_OK)
        st = tls_handshake(c, deadline);
    if (st != FC_OK) {
        int was_lost = c->lost;
        conn_drop(c);
        c->lost = was_lost;
        return st;
    }
    fc_frame_decoder_init(&c->dec, FC_FRAME_MAX_DEFAULT);
    c->connected = 1;
    c->last_recv_ms = c->last_send_ms = conn_now_ms();
    st = hello_welcome(c, deadline);
    if (st != FC_OK) {
        int was_lost = c->lost;
        conn_drop(c);
        c->lost = was_lost;
        return st;
    }
    c->connects++;
    return FC_OK;
}

static uint64_t next_rand(fc_client *c) {
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return c->rng;
}

/* Delay before retry k (k >= 1): min(max, base * 2^(k-1)), jittered uniformly into
 * [d/2, d] so that clients dropped together do not come back together. */
static uint64_t backoff_ms(fc_client *c, int k) {
    uint64_t d = c->backoff_base_ms;
    for (int i = 1; i < k && d < c->backoff_max_ms; i++)
        d *= 2;
    if (d > c->backoff_max_ms)
        d = c->backoff_max_ms;
    return d / 2 + next_rand(c) % (d / 2 + 1);
}

fc_status conn_reconnect(fc_client *c) {
    if (c->finished)
        return fc_error_set(&c->err, FC_ERR_CLOSED, "the session has ended");
    fc_status st = FC_OK;
    for (int k = 0;; k++) {
        if (k > 0)
            conn_sleep_ms(backoff_ms(c, k));
        st = conn_establish(c);
        if (st == FC_OK)
            return FC_OK;
        if (!c->lost)
            return st;
        if (k >= c->max_attempts) {
            c->lost = 0;
            char last[FC_ERROR_MSG_MAX];
            snprintf(last, sizeof last, "%s", c->err.msg);
            return fc_error_set(&c->err, FC_ERR_CLOSED,
                                "could not reach the server after %d attempt%s: %s", k + 1,
                                k ? "s" : "", last);
        }
    }
}
