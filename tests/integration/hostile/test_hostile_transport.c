/* test_hostile_transport.c: hostile connections at the transport and session level, made while
 * two honest clients run rounds on the same daemon: TLS garbage, plaintext to the TLS port, a
 * 4 GB frame length, a frame with a truncated body, a connection cut mid-frame, an unknown
 * message type, a wrong protocol version, a message before Hello, a bad token, a revoked token,
 * slow-loris, half-open connections before and after the TLS handshake, and a flood of 5,000
 * connections. Each case checks what the client got (an Error frame with code and message where
 * the connection can still carry one, else the close) and the daemon's log line for that very
 * connection (matched by its source port); the rounds all commit with exactly the honest mean. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "tests/integration/hostile/hostile.h"
#include "tests/lib/rawcl.h"
#include "tests/lib/testutil.h"

#define ROUNDS 14

static int local_port(int fd) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    return getsockname(fd, (struct sockaddr *)&a, &len) == 0 ? ntohs(a.sin_port) : 0;
}

static void recv_timeout(int fd, int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

/* A plain TCP connection to the client port (no TLS). */
static int tcp_open(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0)
            close(fd);
        fail_msg("TCP connect to %d failed: %s", port, strerror(errno));
    }
    recv_timeout(fd, 8000);
    return fd;
}

/* 1 when the server closed fd (EOF or reset) within its receive timeout, discarding bytes. */
static int tcp_sees_close(int fd) {
    char buf[512];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 1;
        if (n < 0)
            return 0; /* timeout */
    }
}

/* One line of the daemon's log holds all of a, b and c (c may be NULL). */
static void log_line_has(const it_env *e, const char *a, const char *b, const char *c) {
    for (int tries = 0; tries < 200; tries++) {
        char *log = fc_test_slurp(e->log, NULL);
        for (char *line = log, *end; line && *line; line = end + 1) {
            end = strchr(line, '\n');
            if (!end)
                break;
            *end = '\0';
            if (strstr(line, a) && strstr(line, b) && (!c || strstr(line, c))) {
                free(log);
                return;
            }
        }
        free(log);
        it_sleep_ms(25);
    }
    fail_msg("no line of %s holds \"%s\", \"%s\"%s%s", e->log, a, b, c ? " and " : "",
             c ? c : "");
}

static void peer_of(int fd, char *out, size_t cap) {
    snprintf(out, cap, "peer=127.0.0.1:%d ", local_port(fd));
}

/* Opens TLS and expects, after sending `frame` (len bytes, raw), an Error frame with `code` whose
 * message holds `needle`, then the close; and a log line for this connection with `logged`. */
static void tls_expect_error(it_env *e, const void *frame, size_t len, int code,
                             const char *needle, const char *logged) {
    rawcl c;
    if (!rawcl_open(&c, e->port, &e->pki, 0))
        fail_msg("TLS connect failed");
    recv_timeout(c.fd, 8000);
    char peer[64];
    peer_of(c.fd, peer, sizeof peer);
    assert_true(rawcl_write(&c, frame, len));
    fc_envelope *env = rawcl_recv(&c);
    if (!env || env->body_case != FEDCOORD__V1__ENVELOPE__BODY_ERROR)
        fail_msg("expected an Error frame (code %d, \"%s\"), got %s", code, needle,
                 env ? "another frame" : "the close");
    if ((int)env->error->code != code || !strstr(env->error->message, needle))
        fail_msg("Error %u \"%s\", expected %d with \"%s\"", env->error->code,
                 env->error->message, code, needle);
    fc_envelope_free(env);
    assert_true(rawcl_sees_close(&c));
    rawcl_free(&c);
    log_line_has(e, peer, logged, NULL);
}

/* Sends m as the first frame of a fresh TLS connection and expects an Error, as above. */
static void tls_send_expect(it_env *e, fc_wire_msg *m, int code, const char *needle,
                            const char *logged) {
    fc_error err = {0};
    fc_buf b = FC_BUF_INIT;
    assert_int_equal(fc_wire_encode(m, 4u << 20, &b, &err), FC_OK);
    fc_wire_msg_free(m);
    tls_expect_error(e, b.data, b.len, code, needle, logged);
    fc_buf_free(&b);
}

static void hello_msg(fc_wire_msg *m, const char *name, const char *token) {
    fc_error err = {0};
    fc_wire_hello_args a = {.client_name = name,
                            .token = {(const uint8_t *)token, strlen(token)},
                            .software = "hostile"};
    assert_int_equal(fc_wire_hello(m, 1, &a, &err), FC_OK);
}

static void test_hostile_connections_while_rounds_run(void **state) {
    (void)state;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < 6000) {
        rl.rlim_cur = rl.rlim_max < 6000 ? rl.rlim_max : 6000;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    it_env e;
    char sections[1024];
    snprintf(sections, sizeof sections,
             "min_clients = 2\nclients_per_round = 2\nmin_updates = 2\nmax_rounds = %d\n"
             "round_timeout = 60s\n[limits]\nhandshake_timeout = 1s\nidle_timeout = 3s\n"
             "min_rate = 1KiB\nrate_window = 1s\nmax_connections = 2048\n"
             "max_connections_per_peer = 0\n[storage]\nkeep_last = 100\n",
             ROUNDS);
    hx_start(&e, "transport", sections, NULL);
    char tr[64], tv[64];
    hx_add(&e, "spare", tr);
    hx_add(&e, "revoked", tv);
    hx_plan plans[2];
    it_worker w[2];
    hx_start_honest(&e, w, plans, 700); /* ~10 s of rounds */
    char peer[64];

    /* 1. TLS garbage */
    int fd = tcp_open(e.port);
    peer_of(fd, peer, sizeof peer);
    uint8_t junk[64];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 37 + 11);
    assert_int_equal(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
    assert_true(tcp_sees_close(fd));
    close(fd);
    log_line_has(&e, peer, "reason=ERR_TLS", NULL);

    /* 2. plaintext (an HTTP request) to the TLS port */
    fd = tcp_open(e.port);
    peer_of(fd, peer, sizeof peer);
    const char *get = "GET /v1/status HTTP/1.1\r\nHost: localhost\r\n\r\n";
    assert_int_equal(write(fd, get, strlen(get)), (ssize_t)strlen(get));
    assert_true(tcp_sees_close(fd));
    close(fd);
    log_line_has(&e, peer, "reason=ERR_TLS", NULL);

    /* 3. a frame length of 4 GB */
    const uint8_t huge[4] = {0xff, 0xff, 0xff, 0xff};
    tls_expect_error(&e, huge, 4, 11, "4294967295", "4294967295");

    /* 4. a frame whose protobuf body is cut short (the length matches the bytes sent) */
    fc_wire_msg m;
    hello_msg(&m, "spare", tr);
    fc_buf b = FC_BUF_INIT;
    fc_error err = {0};
    assert_int_equal(fc_wire_encode(&m, 4u << 20, &b, &err), FC_OK);
    fc_wire_msg_free(&m);
    uint32_t cut = (uint32_t)(b.len - 4 - 5);
    uint8_t *trunc = b.data;
    trunc[0] = (uint8_t)(cut >> 24), trunc[1] = (uint8_t)(cut >> 16);
    trunc[2] = (uint8_t)(cut >> 8), trunc[3] = (uint8_t)cut;
    tls_expect_error(&e, trunc, 4 + cut, 10, "", "MALFORMED");
    fc_buf_free(&b);

    /* 5. a connection cut in the middle of a frame: nothing can answer it; the daemon logs
     * the close of that connection and serves on */
    rawcl c;
    assert_true(rawcl_open(&c, e.port, &e.pki, 0));
    peer_of(c.fd, peer, sizeof peer);
    const uint8_t half[8] = {0, 0, 0, 100, 1, 2, 3, 4};
    assert_true(rawcl_write(&c, half, sizeof half));
    rawcl_free(&c);
    log_line_has(&e, peer, "reason=ERR_CLOSED", "peer closed the connection");

    /* 6. an unknown message type: an Envelope with seq 1 and only field 99 */
    const uint8_t unknown[] = {0, 0, 0, 5, 0x08, 0x01, 0x9a, 0x06, 0x00};
    tls_expect_error(&e, unknown, sizeof unknown, 12, "unknown message type",
                     "unknown message type");

    /* 7. a wrong protocol version */
    hello_msg(&m, "spare", tr);
    m.body.hello.protocol_major = 7;
    tls_send_expect(&e, &m, 13, "protocol", "VERSION");

    /* 8. a message before Hello */
    assert_int_equal(fc_wire_model_request(&m, 1, 1, 0, &err), FC_OK);
    tls_send_expect(&e, &m, 12, "Hello", "PROTOCOL");

    /* 9. a bad token, 10. a revoked token: the SDK reports them */
    fc_client *cl = NULL;
    assert_int_equal(it_client_open(&e, "spare", "not-the-token-of-spare-at-all-000000000000",
                                    0, &cl),
                     FC_ERR_AUTH);
    if (!strstr(fc_client_error(cl), "UNAUTHENTICATED: unknown client or wrong token"))
        fail_msg("bad token: %s", fc_client_error(cl));
    fc_client_close(cl);
    hx_log_has(&e, "code=UNAUTHENTICATED detail=\"unknown client or wrong token\"", 2000);
    if (it_client_revoke(&e, "revoked") != 0)
        fail_msg("%s", e.why);
    it_sleep_ms(1200); /* the daemon reads revocations every second */
    cl = NULL;
    assert_int_equal(it_client_open(&e, "revoked", tv, 0, &cl), FC_ERR_AUTH);
    if (!strstr(fc_client_error(cl), "UNAUTHENTICATED"))
        fail_msg("revoked token: %s", fc_client_error(cl));
    fc_client_close(cl);

    /* 11. slow-loris: a frame dribbled at a byte every 400 ms (min_rate 1 KiB/s over 1 s) */
    assert_true(rawcl_open(&c, e.port, &e.pki, 0));
    recv_timeout(c.fd, 8000);
    peer_of(c.fd, peer, sizeof peer);
    const uint8_t slow[8] = {0, 0, 0, 50, 0x08, 0x01, 0x12, 0x2c};
    for (size_t i = 0; i < 4 && rawcl_write(&c, &slow[i], 1); i++)
        it_sleep_ms(400);
    fc_envelope *env = rawcl_recv(&c); /* the daemon says why before it closes */
    if (!env || env->body_case != FEDCOORD__V1__ENVELOPE__BODY_ERROR || env->error->code != 11 ||
        !strstr(env->error->message, "minimum rate is 1024 bytes/s"))
        fail_msg("slow-loris: expected Error 11 about the minimum rate, got %s",
                 env && env->body_case == FEDCOORD__V1__ENVELOPE__BODY_ERROR
                     ? env->error->message : "something else");
    fc_envelope_free(env);
    assert_true(rawcl_sees_close(&c));
    rawcl_free(&c);
    log_line_has(&e, peer, "reason=ERR_LIMIT", "frame incomplete");

    /* 12. half-open before TLS: connected, silent (handshake_timeout 1 s) */
    fd = tcp_open(e.port);
    peer_of(fd, peer, sizeof peer);
    assert_true(tcp_sees_close(fd));
    close(fd);
    log_line_has(&e, peer, "reason=ERR_TIMEOUT", "handshake");

    /* 13. half-open after TLS: handshake done, then silence (idle_timeout 3 s) */
    assert_true(rawcl_open(&c, e.port, &e.pki, 0));
    recv_timeout(c.fd, 8000);
    peer_of(c.fd, peer, sizeof peer);
    env = rawcl_recv(&c);
    if (!env || env->body_case != FEDCOORD__V1__ENVELOPE__BODY_ERROR || env->error->code != 4 ||
        !strstr(env->error->message, "idle timeout"))
        fail_msg("half-open: expected Error 4 about the idle timeout");
    fc_envelope_free(env);
    assert_true(rawcl_sees_close(&c));
    rawcl_free(&c);
    log_line_has(&e, peer, "reason=ERR_TIMEOUT", "idle timeout");

    /* 14. a flood of 5,000 connections (the daemon allows 2,048): the surplus is refused and
     * logged, the daemon stays up, and the honest rounds go on */
    int *flood = fc_mallocarray(5000, sizeof *flood);
    assert_non_null(flood);
    size_t opened = 0;
    for (size_t i = 0; i < 5000; i++) {
        int f = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (f < 0)
            break;
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)e.port)};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        if (connect(f, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
            close(f);
            continue;
        }
        flood[opened++] = f;
    }
    assert_true(opened >= 4000);
    log_line_has(&e, "reason=ERR_LIMIT", "too many connections", NULL);
    for (size_t i = 0; i < opened; i++)
        close(flood[i]);
    fc_free(flood);

    /* the honest clients were served throughout: every round is the exact honest mean */
    hx_join_honest(w, 2);
    float step[ROUNDS];
    for (int k = 0; k < ROUNDS; k++)
        step[k] = 2.0f;
    hx_check_versions(&e, 1, ROUNDS, step);
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostile_connections_while_rounds_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
