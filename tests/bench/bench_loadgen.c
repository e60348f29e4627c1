/* bench_loadgen.c: the load generator of the daemon benchmarks (tests/bench/daemon_bench.py).
 *
 * It holds many concurrent client sessions against a running fedcoord over TLS 1.3 on loopback
 * and speaks the real protocol: every message is built with proto/wire.c (fc_wire_hello,
 * fc_wire_update_begin, fc_wire_update_end, fc_wire_heartbeat) and framed with proto/frame.c
 * (fc_wire_encode, fc_frame_chunk_header), every received frame is cut by fc_frame_decoder and
 * decoded and validated by fc_wire_decode, and uploads are split with fc_stream_split_specs and
 * hashed with fc_stream_hash, exactly as the SDK (client/conn.c, client/client.c) does. What
 * differs from the SDK is only the I/O structure: the SDK blocks one thread per connection, so
 * here each worker thread drives many sessions with non-blocking sockets and epoll.
 *
 * Clients never download the model: a train task is answered with a delta update of zeros (the
 * task's own tensor layout, read from one shared zero-filled mapping that costs no memory), so
 * the figures measure the daemon's ingest, staging, folding and commit path.
 *
 * It never listens, never touches anything but loopback, and never writes outside what the
 * caller names.
 *
 * Usage:
 *   bench_loadgen enroll DB N              add clients bench-00000.. with tokens bt-00000.. to DB
 *   bench_loadgen rounds PORT CA N [opts]  N sessions answer every train task until Bye
 *   bench_loadgen idle PORT CA N [opts]    N idle sessions with heartbeats, held --hold seconds
 * Options: --threads T (2), --timeout S (600), --hold S (30), --inflight K (128 handshakes at once)
 * Output: key=value lines on stdout ("connected ...", "result ..."); errors on stderr.
 * Run without arguments (as tests/bench/run would) it prints the usage and exits 0.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/status.h"
#include "proto/frame.h"
#include "proto/stream.h"
#include "proto/wire.h"
#include "storage/store.h"

#define MAX_ROUNDS 4096
#define READ_CAP ((size_t)256 * 1024)

enum { S_IDLE, S_CONNECTING, S_HANDSHAKE, S_WELCOME, S_READY, S_BEGIN, S_CHUNKS, S_END, S_DONE };

typedef struct session {
    int idx;
    int fd;
    int state;
    SSL *ssl;
    fc_frame_decoder dec;
    fc_buf out;          /* encoded control frames and chunk headers */
    size_t out_off;      /* bytes of out already written */
    const uint8_t *bulk; /* chunk data still to write (points into the shared payload) */
    size_t bulk_len;
    uint64_t seq;
    uint32_t hb_ms, max_chunk, max_frame;
    uint64_t last_send_ms;
    /* current upload */
    uint64_t round, version;
    fc_tensor_spec *specs;
    size_t n_specs;
    uint64_t total;
    uint64_t begin_seq, end_seq;
    fc_stream_splitter sp;
    int failed;
} session;

typedef struct worker {
    int id;
    int ep;
    session *s;
    size_t n;
    uint8_t *rbuf;
    /* per-round timing (ms) and totals */
    uint64_t first_begin[MAX_ROUNDS], last_ack[MAX_ROUNDS];
    uint64_t uploads, payload_bytes, errors, byes, connected;
    pthread_t th;
} worker;

static SSL_CTX *g_ctx;
static struct sockaddr_in g_addr;
static int g_idle_mode;
static size_t g_total_sessions;
static uint64_t g_deadline_ms;
static uint64_t g_hold_ms;
static atomic_size_t g_connected, g_inflight, g_finished;
static size_t g_inflight_max = 128;
static const uint8_t *g_payload;
static uint64_t g_payload_len;
static uint8_t g_sha[FC_SHA256_BYTES];
static uint64_t g_sha_len = UINT64_MAX;
static pthread_mutex_t g_sha_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int g_stop;

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t unix_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sess_fail(worker *w, session *s, const char *what) {
    if (!s->failed && s->state != S_DONE) {
        fprintf(stderr, "loadgen: session %d: %s\n", s->idx, what);
        w->errors++;
    }
    s->failed = 1;
    if (s->state >= S_READY && s->state < S_DONE)
        atomic_fetch_sub(&g_connected, 1);
    if (s->state == S_CONNECTING || s->state == S_HANDSHAKE || s->state == S_WELCOME)
        atomic_fetch_sub(&g_inflight, 1);
    if (s->ssl)
        SSL_free(s->ssl);
    s->ssl = NULL;
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    if (s->state != S_DONE)
        atomic_fetch_add(&g_finished, 1);
    s->state = S_DONE;
    fc_frame_decoder_free(&s->dec);
    fc_buf_free(&s->out);
    fc_wire_specs_free(s->specs, s->n_specs);
    s->specs = NULL;
    s->n_specs = 0;
}

static int queue_msg(worker *w, session *s, fc_wire_msg *m) {
    fc_error err = {0};
    fc_status st = fc_wire_encode(m, s->max_frame ? s->max_frame : 0, &s->out, &err);
    fc_wire_msg_free(m);
    if (st != FC_OK) {
        sess_fail(w, s, err.msg);
        return -1;
    }
    s->last_send_ms = now_ms();
    return 0;
}

/* Writes out, then bulk. Returns 0 when everything queued is written, 1 when the socket is full,
 * -1 on failure. */
static int flush_out(worker *w, session *s) {
    for (;;) {
        const uint8_t *p;
        size_t len;
        int is_bulk = 0;
        if (s->out_off < s->out.len) {
            p = s->out.data + s->out_off;
            len = s->out.len - s->out_off;
        } else if (s->bulk_len) {
            s->out.len = 0, s->out_off = 0;
            p = s->bulk;
            len = s->bulk_len;
            is_bulk = 1;
        } else {
            s->out.len = 0, s->out_off = 0;
            return 0;
        }
        size_t done = 0;
        int r = SSL_write_ex(s->ssl, p, len, &done);
        if (r == 1) {
            if (is_bulk)
                s->bulk += done, s->bulk_len -= done;
            else
                s->out_off += done;
            continue;
        }
        int e = SSL_get_error(s->ssl, r);
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
            return 1;
        sess_fail(w, s, "write failed (connection lost)");
        return -1;
    }
}

static void arm(worker *w, session *s, int want_out) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | (want_out ? EPOLLOUT : 0);
    ev.data.ptr = s;
    if (epoll_ctl(w->ep, EPOLL_CTL_MOD, s->fd, &ev) != 0)
        sess_fail(w, s, "epoll_ctl");
}

static int start_connect(worker *w, session *s) {
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        sess_fail(w, s, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    atomic_fetch_add(&g_inflight, 1);
    s->state = S_CONNECTING;
    if (connect(s->fd, (struct sockaddr *)&g_addr, sizeof g_addr) != 0 && errno != EINPROGRESS) {
        sess_fail(w, s, strerror(errno));
        return -1;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.ptr = s;
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, s->fd, &ev) != 0) {
        sess_fail(w, s, "epoll_ctl add");
        return -1;
    }
    return 0;
}

static void send_hello(worker *w, session *s) {
    char name[32], token[32];
    snprintf(name, sizeof name, "bench-%05d", s->idx);
    snprintf(token, sizeof token, "bt-%05d", s->idx);
    static const char *const caps[] = {"resume"};
    fc_wire_hello_args a;
    memset(&a, 0, sizeof a);
    a.client_name = name;
    a.token.data = (const uint8_t *)token;
    a.token.len = strlen(token);
    a.capabilities = caps;
    a.n_capabilities = 1;
    a.software = "fedcoord-bench-loadgen";
    fc_wire_msg m;
    fc_error err = {0};
    if (fc_wire_hello(&m, ++s->seq, &a, &err) != FC_OK) {
        fc_wire_msg_free(&m);
        sess_fail(w, s, err.msg);
        return;
    }
    queue_msg(w, s, &m);
}

/* SHA-256 of the first len payload bytes, computed once per size with the SDK's hash. */
static int payload_sha(uint64_t len, uint8_t out[FC_SHA256_BYTES]) {
    pthread_mutex_lock(&g_sha_lock);
    int rc = 0;
    if (g_sha_len != len) {
        fc_stream_hash h = {0};
        fc_error err = {0};
        fc_status st = fc_stream_hash_init(&h, &err);
        for (uint64_t off = 0; st == FC_OK && off < len; off += (uint64_t)1 << 26) {
            uint64_t n = len - off < ((uint64_t)1 << 26) ? len - off : (uint64_t)1 << 26;
            st = fc_stream_hash_update(&h, g_payload + off, (size_t)n, &err);
        }
        if (st == FC_OK)
            st = fc_stream_hash_final(&h, g_sha, &err);
        fc_stream_hash_free(&h);
        if (st == FC_OK)
            g_sha_len = len;
        else
            rc = -1;
    }
    memcpy(out, g_sha, FC_SHA256_BYTES);
    pthread_mutex_unlock(&g_sha_lock);
    return rc;
}

static void on_task(worker *w, session *s, const Fedcoord__V1__Task *t) {
    if (t->kind != FEDCOORD__V1__TASK_KIND__TASK_KIND_TRAIN || g_idle_mode)
        return; /* evaluation tasks are not part of these benchmarks */
    fc_error err = {0};
    fc_wire_specs_free(s->specs, s->n_specs);
    s->specs = NULL;
    if (fc_wire_specs_from_wire(t->tensors, t->n_tensors, &s->specs, &s->total, &err) != FC_OK) {
        sess_fail(w, s, err.msg);
        return;
    }
    s->n_specs = t->n_tensors;
    if (s->total > g_payload_len) {
        sess_fail(w, s, "task model is larger than the payload mapping (--payload)");
        return;
    }
    s->round = t->round;
    s->version = t->model_version;
    fc_wire_update_begin_args a;
    memset(&a, 0, sizeof a);
    a.round = t->round;
    a.base_version = t->model_version;
    a.tensors = s->specs;
    a.n_tensors = s->n_specs;
    a.total_bytes = s->total;
    a.is_delta = 1;
    fc_wire_msg m;
    if (fc_wire_update_begin(&m, ++s->seq, &a, &err) != FC_OK) {
        fc_wire_msg_free(&m);
        sess_fail(w, s, err.msg);
        return;
    }
    s->begin_seq = s->seq;
    uint64_t r = t->round % MAX_ROUNDS;
    uint64_t t0 = now_ms();
    if (!w->first_begin[r] || t0 < w->first_begin[r])
        w->first_begin[r] = t0;
    if (queue_msg(w, s, &m) == 0)
        s->state = S_BEGIN;
}

static void next_chunk(worker *w, session *s) {
    fc_chunk_desc d;
    fc_error err = {0};
    if (fc_stream_split_next(&s->sp, &d)) {
        uint8_t hdr[FC_FRAME_CHUNK_HEADER_MAX];
        size_t hl;
        if (fc_frame_chunk_header(++s->seq, d.tensor_index, d.offset, d.len, s->max_frame, hdr, &hl,
                                  &err) != FC_OK ||
            fc_buf_append(&s->out, hdr, hl) != FC_OK) {
            sess_fail(w, s, err.msg[0] ? err.msg : "chunk header");
            return;
        }
        s->bulk = g_payload + d.global_offset;
        s->bulk_len = d.len;
        s->last_send_ms = now_ms();
        return;
    }
    uint8_t sha[FC_SHA256_BYTES];
    if (payload_sha(s->total, sha) != 0) {
        sess_fail(w, s, "hashing the payload");
        return;
    }
    fc_wire_msg m;
    if (fc_wire_update_end(&m, ++s->seq, sha, 1, NULL, 0, &err) != FC_OK) {
        fc_wire_msg_free(&m);
        sess_fail(w, s, err.msg);
        return;
    }
    s->end_seq = s->seq;
    if (queue_msg(w, s, &m) == 0)
        s->state = S_END;
}

static void on_frame(worker *w, session *s, const uint8_t *data, size_t len) {
    fc_envelope *env = NULL;
    fc_error err = {0};
    if (fc_wire_decode(data, len, &env, &err) != FC_OK) {
        sess_fail(w, s, err.msg);
        return;
    }
    switch (env->body_case) {
    case FEDCOORD__V1__ENVELOPE__BODY_WELCOME: {
        const Fedcoord__V1__Welcome *wl = env->welcome;
        if (s->state != S_WELCOME || fc_wire_check_version(FC_WIRE_CLIENT, wl->protocol_major,
                                                           wl->protocol_minor, &err) != FC_OK) {
            sess_fail(w, s, err.msg[0] ? err.msg : "unexpected Welcome");
            break;
        }
        s->hb_ms = wl->heartbeat_interval_ms;
        s->max_frame = wl->max_frame_bytes ? wl->max_frame_bytes : (uint32_t)FC_FRAME_MAX_DEFAULT;
        s->max_chunk = wl->max_chunk_bytes ? wl->max_chunk_bytes : (uint32_t)FC_STREAM_MAX_CHUNK;
        if (s->max_chunk > FC_STREAM_MAX_CHUNK)
            s->max_chunk = (uint32_t)FC_STREAM_MAX_CHUNK;
        s->state = S_READY;
        atomic_fetch_sub(&g_inflight, 1);
        atomic_fetch_add(&g_connected, 1);
        w->connected++;
        break;
    }
    case FEDCOORD__V1__ENVELOPE__BODY_TASK:
        if (s->state == S_READY)
            on_task(w, s, env->task);
        break;
    case FEDCOORD__V1__ENVELOPE__BODY_ACK: {
        const Fedcoord__V1__Ack *a = env->ack;
        if (s->state == S_BEGIN && a->ref_seq == s->begin_seq) {
            if (fc_stream_split_specs(&s->sp, s->specs, s->n_specs, s->max_chunk, a->offset,
                                      &err) != FC_OK) {
                sess_fail(w, s, err.msg);
                break;
            }
            s->state = S_CHUNKS;
            next_chunk(w, s);
        } else if (s->state == S_END && a->ref_seq == s->end_seq) {
            w->uploads++;
            w->payload_bytes += s->total;
            uint64_t r = s->round % MAX_ROUNDS;
            uint64_t t1 = now_ms();
            if (t1 > w->last_ack[r])
                w->last_ack[r] = t1;
            s->state = S_READY;
        }
        break;
    }
    case FEDCOORD__V1__ENVELOPE__BODY_ERROR: {
        char msg[600];
        snprintf(msg, sizeof msg, "server error %s: %s", env->error->name ? env->error->name : "?",
                 env->error->message ? env->error->message : "");
        if (env->error->fatal || s->state == S_BEGIN || s->state == S_CHUNKS || s->state == S_END) {
            sess_fail(w, s, msg);
        } else {
            fprintf(stderr, "loadgen: session %d: %s\n", s->idx, msg);
            w->errors++;
        }
        break;
    }
    case FEDCOORD__V1__ENVELOPE__BODY_BYE:
        w->byes++;
        s->failed = 1; /* not an error: the orderly end */
        sess_fail(w, s, "bye");
        break;
    default:
        break; /* heartbeats and anything else need no answer */
    }
    fc_envelope_free(env);
}

static void on_readable(worker *w, session *s) {
    for (int rounds = 0; rounds < 64 && s->state != S_DONE; rounds++) {
        size_t got = 0;
        int r = SSL_read_ex(s->ssl, w->rbuf, READ_CAP, &got);
        if (r != 1) {
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            sess_fail(w, s, e == SSL_ERROR_ZERO_RETURN ? "server closed" : "read failed");
            return;
        }
        const uint8_t *p = w->rbuf;
        size_t len = got;
        while (len > 0 && s->state != S_DONE) {
            size_t used;
            fc_frame f;
            fc_error err = {0};
            fc_status st = fc_frame_decoder_feed(&s->dec, p, len, &used, &f, &err);
            p += used, len -= used;
            if (st == FC_ERR_AGAIN)
                break;
            if (st != FC_OK) {
                sess_fail(w, s, err.msg);
                return;
            }
            on_frame(w, s, f.data, f.len);
        }
    }
}

static void drive(worker *w, session *s, uint32_t events) {
    if (s->state == S_CONNECTING) {
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr) {
            sess_fail(w, s, soerr ? strerror(soerr) : "connect");
            return;
        }
        s->ssl = SSL_new(g_ctx);
        if (!s->ssl || SSL_set_fd(s->ssl, s->fd) != 1 ||
            SSL_set_tlsext_host_name(s->ssl, "localhost") != 1 ||
            SSL_set1_host(s->ssl, "localhost") != 1) {
            sess_fail(w, s, "SSL_new");
            return;
        }
        SSL_set_mode(s->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        s->state = S_HANDSHAKE;
    }
    if (s->state == S_HANDSHAKE) {
        int r = SSL_connect(s->ssl);
        if (r != 1) {
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_READ)
                arm(w, s, 0);
            else if (e == SSL_ERROR_WANT_WRITE)
                arm(w, s, 1);
            else {
                char buf[256];
                ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
                sess_fail(w, s, buf);
            }
            return;
        }
        fc_frame_decoder_init(&s->dec, FC_FRAME_MAX_DEFAULT);
        s->state = S_WELCOME;
        send_hello(w, s);
        if (s->state == S_DONE)
            return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        on_readable(w, s);
    for (int guard = 0; guard < 16 && s->state != S_DONE; guard++) {
        int fr = flush_out(w, s);
        if (fr < 0)
            return;
        if (fr == 1) {
            arm(w, s, 1);
            return;
        }
        if (s->state == S_CHUNKS) {
            next_chunk(w, s);
            continue;
        }
        break;
    }
    /* Write interest while anything is left to send: the guard above can end the loop right
     * after UpdateEnd was queued, and without EPOLLOUT it would wait for the next read. */
    if (s->state != S_DONE)
        arm(w, s, s->state == S_CHUNKS || s->out.len > s->out_off || s->bulk_len);
}

static void heartbeats(worker *w, uint64_t t) {
    for (size_t i = 0; i < w->n; i++) {
        session *s = &w->s[i];
        if (s->state < S_READY || s->state == S_DONE || !s->hb_ms)
            continue;
        if (s->out.len > s->out_off || s->bulk_len)
            continue; /* data is going out anyway */
        if (t - s->last_send_ms < s->hb_ms / 2)
            continue;
        fc_wire_msg m;
        fc_error err = {0};
        if (fc_wire_heartbeat(&m, ++s->seq, unix_ms(), &err) != FC_OK) {
            fc_wire_msg_free(&m);
            sess_fail(w, s, err.msg);
            continue;
        }
        if (queue_msg(w, s, &m) == 0)
            drive(w, s, 0);
    }
}

static void *worker_main(void *arg) {
    worker *w = arg;
    struct epoll_event evs[256];
    size_t next = 0;
    uint64_t last_hb = now_ms();
    for (;;) {
        uint64_t t = now_ms();
        /* idle mode: the main thread ends the hold through g_stop */
        if (atomic_load(&g_stop) || t > g_deadline_ms)
            break;
        if (atomic_load(&g_finished) >= g_total_sessions)
            break;
        while (next < w->n && atomic_load(&g_inflight) < g_inflight_max) {
            start_connect(w, &w->s[next]);
            next++;
        }
        int n = epoll_wait(w->ep, evs, 256, 50);
        for (int i = 0; i < n; i++) {
            session *s = evs[i].data.ptr;
            if (s->state != S_DONE)
                drive(w, s, evs[i].events);
        }
        t = now_ms();
        if (t - last_hb >= 250) {
            heartbeats(w, t);
            last_hb = t;
        }
    }
    return NULL;
}

static int enroll(const char *db, int n) {
    store *st = NULL;
    fc_error err = {0};
    if (store_open(db, NULL, &st, &err) != FC_OK) {
        fprintf(stderr, "loadgen: %s\n", err.msg);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        char name[32], token[32];
        snprintf(name, sizeof name, "bench-%05d", i);
        snprintf(token, sizeof token, "bt-%05d", i);
        uint8_t sha[32];
        unsigned int sl = 0;
        if (EVP_Digest(token, strlen(token), sha, &sl, EVP_sha256(), NULL) != 1) {
            fprintf(stderr, "loadgen: sha256 failed\n");
            store_close(st);
            return 1;
        }
        int64_t id;
        fc_status s = store_client_add(st, name, sha, (int64_t)time(NULL), &id, &err);
        if (s != FC_OK && s != FC_ERR_EXISTS) {
            fprintf(stderr, "loadgen: adding %s: %s\n", name, err.msg);
            store_close(st);
            return 1;
        }
    }
    store_close(st);
    printf("result mode=enroll clients=%d\n", n);
    return 0;
}

static void usage(void) {
    printf(
        "bench_loadgen: load generator of tests/bench/daemon_bench.py (run by make bench)\n"
        "  bench_loadgen enroll DB N\n"
        "  bench_loadgen rounds PORT CA N [--threads T] [--timeout S] [--payload BYTES]\n"
        "  bench_loadgen idle PORT CA N [--threads T] [--timeout S] [--hold S] [--inflight K]\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage();
        return 0;
    }
    if (strcmp(argv[1], "enroll") == 0 && argc == 4)
        return enroll(argv[2], atoi(argv[3]));
    if (argc < 5 || (strcmp(argv[1], "rounds") != 0 && strcmp(argv[1], "idle") != 0)) {
        usage();
        return 2;
    }
    g_idle_mode = strcmp(argv[1], "idle") == 0;
    int port = atoi(argv[2]);
    const char *ca = argv[3];
    size_t n = (size_t)strtoull(argv[4], NULL, 10);
    int threads = 2;
    double timeout_s = 600, hold_s = 30;
    uint64_t payload = 0;
    for (int i = 5; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--timeout") == 0)
            timeout_s = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--hold") == 0)
            hold_s = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--payload") == 0)
            payload = strtoull(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--inflight") == 0)
            g_inflight_max = (size_t)atoi(argv[i + 1]);
        else {
            usage();
            return 2;
        }
    }
    if (n == 0 || threads < 1 || threads > 64 || port <= 0) {
        usage();
        return 2;
    }
    /* Every session is one descriptor: raise the soft limit to the hard one. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < n + 64)
        fprintf(stderr, "loadgen: warning: descriptor limit %llu is below %zu sessions\n",
                (unsigned long long)rl.rlim_cur, n);
    /* The payload: one shared read-only zero mapping (the kernel's zero page: no memory). */
    g_payload_len = payload ? payload : 4096;
    void *pm = mmap(NULL, (size_t)g_payload_len, PROT_READ,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (pm == MAP_FAILED) {
        fprintf(stderr, "loadgen: mmap of %llu payload bytes: %s\n",
                (unsigned long long)g_payload_len, strerror(errno));
        return 1;
    }
    g_payload = pm;
    g_ctx = SSL_CTX_new(TLS_client_method());
    if (!g_ctx || !SSL_CTX_set_min_proto_version(g_ctx, TLS1_3_VERSION) ||
        SSL_CTX_load_verify_locations(g_ctx, ca, NULL) != 1) {
        fprintf(stderr, "loadgen: TLS context (CA %s) failed\n", ca);
        return 1;
    }
    SSL_CTX_set_verify(g_ctx, SSL_VERIFY_PEER, NULL);
    memset(&g_addr, 0, sizeof g_addr);
    g_addr.sin_family = AF_INET;
    g_addr.sin_port = htons((uint16_t)port);
    g_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    g_total_sessions = n;
    uint64_t t_start = now_ms();
    g_deadline_ms = t_start + (uint64_t)(timeout_s * 1000);
    g_hold_ms = (uint64_t)(hold_s * 1000);
    session *all = fc_calloc(n, sizeof *all);
    worker *ws = fc_calloc((size_t)threads, sizeof *ws);
    if (!all || !ws)
        return 1;
    for (size_t i = 0; i < n; i++) {
        all[i].idx = (int)i;
        all[i].fd = -1;
        memset(&all[i].out, 0, sizeof all[i].out);
    }
    size_t per = (n + (size_t)threads - 1) / (size_t)threads;
    for (int t = 0; t < threads; t++) {
        worker *w = &ws[t];
        w->id = t;
        size_t lo = (size_t)t * per, hi = lo + per < n ? lo + per : n;
        w->s = all + (lo < n ? lo : n);
        w->n = lo < n ? hi - lo : 0;
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        w->rbuf = fc_malloc(READ_CAP);
        if (w->ep < 0 || !w->rbuf)
            return 1;
    }
    for (int t = 0; t < threads; t++)
        if (pthread_create(&ws[t].th, NULL, worker_main, &ws[t]) != 0)
            return 1;
    if (g_idle_mode) {
        /* Wait until every session is connected (or failed), report, hold, report again. */
        while (atomic_load(&g_connected) + atomic_load(&g_finished) < n && now_ms() < g_deadline_ms)
            usleep(100 * 1000);
        printf("connected sessions=%zu failed=%zu seconds=%.2f\n", atomic_load(&g_connected),
               atomic_load(&g_finished), (double)(now_ms() - t_start) / 1000.0);
        fflush(stdout);
        uint64_t until = now_ms() + g_hold_ms;
        while (now_ms() < until && now_ms() < g_deadline_ms)
            usleep(100 * 1000);
        printf("held sessions=%zu\n", atomic_load(&g_connected));
        fflush(stdout);
        atomic_store(&g_stop, 1);
    }
    for (int t = 0; t < threads; t++)
        pthread_join(ws[t].th, NULL);
    uint64_t uploads = 0, bytes = 0, errors = 0, byes = 0;
    uint64_t fb[MAX_ROUNDS] = {0}, la[MAX_ROUNDS] = {0};
    for (int t = 0; t < threads; t++) {
        worker *w = &ws[t];
        uploads += w->uploads, bytes += w->payload_bytes, errors += w->errors, byes += w->byes;
        for (int r = 0; r < MAX_ROUNDS; r++) {
            if (w->first_begin[r] && (!fb[r] || w->first_begin[r] < fb[r]))
                fb[r] = w->first_begin[r];
            if (w->last_ack[r] > la[r])
                la[r] = w->last_ack[r];
        }
    }
    /* Upload time: per round, first UpdateBegin sent to last UpdateEnd acknowledged. */
    uint64_t upload_ms = 0;
    int rounds = 0;
    for (int r = 0; r < MAX_ROUNDS; r++)
        if (fb[r] && la[r] > fb[r]) {
            upload_ms += la[r] - fb[r];
            rounds++;
        }
    size_t still = 0; /* sessions still open: the hold ended (idle) or the timeout hit */
    for (size_t i = 0; i < n; i++)
        if (all[i].state != S_DONE) {
            still++;
            all[i].failed = 1; /* counted in open_at_end, not as an error */
            sess_fail(&ws[0], &all[i], "closed by the load generator");
        }
    printf("result mode=%s sessions=%zu rounds=%d uploads=%llu payload_bytes=%llu upload_ms=%llu "
           "errors=%llu byes=%llu open_at_end=%zu seconds=%.2f\n",
           argv[1], n, rounds, (unsigned long long)uploads, (unsigned long long)bytes,
           (unsigned long long)upload_ms, (unsigned long long)errors, (unsigned long long)byes,
           still, (double)(now_ms() - t_start) / 1000.0);
    for (int t = 0; t < threads; t++) {
        close(ws[t].ep);
        fc_free(ws[t].rbuf);
    }
    fc_free(ws);
    fc_free(all);
    SSL_CTX_free(g_ctx);
    munmap(pm, (size_t)g_payload_len);
    return 0;
}
