/* test_tls_policy.c: the TLS versions and cipher suites the client listener offers
 * (server/tls.c through server/net.c), as documented in docs/security.md. A real listener on a
 * private uv loop; the client is plain OpenSSL in a thread, pinned to one protocol version.
 * It owns only its loop, listener and the PKI files tlsgen writes into the test folder.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "server/net.h"
#include "tests/lib/testutil.h"
#include "tests/lib/tlsgen.h"

static tlsgen_pki pki;
/* TLS 1.3 suites the next client offers (NULL: OpenSSL's default list). */
static const char *g_suites;

typedef struct client_job {
    int port;
    int max_version; /* the client offers only up to this version */
    int min_version;
    atomic_int done;
    int handshake_ok;
    int version;        /* negotiated */
    char cipher[128];   /* negotiated suite name */
} client_job;

static void *client_main(void *arg) {
    client_job *j = arg;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = NULL;
    int fd = -1;
    if (!ctx)
        goto out;
    SSL_CTX_set_min_proto_version(ctx, j->min_version);
    SSL_CTX_set_max_proto_version(ctx, j->max_version);
    if (g_suites && SSL_CTX_set_ciphersuites(ctx, g_suites) != 1)
        goto out;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(ctx, pki.ca_cert, NULL) != 1)
        goto out;
    fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)j->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        goto out;
    ssl = SSL_new(ctx);
    if (!ssl)
        goto out;
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, "localhost");
    if (SSL_connect(ssl) == 1) {
        j->handshake_ok = 1;
        j->version = SSL_version(ssl);
        snprintf(j->cipher, sizeof j->cipher, "%s", SSL_get_cipher_name(ssl));
        SSL_shutdown(ssl);
    }
out:
    ERR_clear_error();
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    if (fd >= 0)
        close(fd);
    atomic_store(&j->done, 1);
    return NULL;
}

static void on_data(net_conn *c, const uint8_t *d, size_t n) { (void)c, (void)d, (void)n; }
static void on_close(net_conn *c, fc_status r, const char *d) { (void)c, (void)r, (void)d; }
static void closed_cb(void *arg) { *(int *)arg = 1; }
static void tick_cb(uv_timer_t *t) { (void)t; }

/* Runs one client of [min_v, max_v] against a listener whose minimum is server_min. */
static void handshake(net_tls_version server_min, int min_v, int max_v, client_job *j) {
    uv_loop_t loop;
    uv_timer_t tick;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(uv_timer_init(&loop, &tick), 0);
    uv_timer_start(&tick, tick_cb, 5, 5);
    net_listener_config lc;
    memset(&lc, 0, sizeof lc);
    lc.name = "client";
    lc.host = "127.0.0.1";
    lc.tls.cert_file = pki.server_cert;
    lc.tls.key_file = pki.server_key;
    lc.tls.min_version = server_min;
    net_limits_default(&lc.limits);
    lc.limits.close_linger_ms = 200;
    lc.cb.on_data = on_data;
    lc.cb.on_close = on_close;
    net_listener *l = NULL;
    fc_error err = {0};
    if (net_listener_open(&loop, &lc, &l, &err) != FC_OK)
        fail_msg("listener: %s", err.msg);
    memset(j, 0, sizeof *j);
    j->port = net_listener_port(l);
    j->min_version = min_v;
    j->max_version = max_v;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, client_main, j), 0);
    uint64_t t0 = uv_hrtime();
    while (!atomic_load(&j->done) && uv_hrtime() - t0 < 10000000000ull)
        uv_run(&loop, UV_RUN_ONCE);
    assert_true(atomic_load(&j->done));
    pthread_join(th, NULL);
    int closed = 0;
    net_close_all(l, FC_ERR_CLOSED, "test finished");
    net_listener_close(l, closed_cb, &closed);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* The suites OpenSSL 3 enables for TLS 1.3 by default; server/tls.c does not change them. */
static int documented_tls13_suite(const char *name) {
    return !strcmp(name, "TLS_AES_256_GCM_SHA384") ||
           !strcmp(name, "TLS_CHACHA20_POLY1305_SHA256") ||
           !strcmp(name, "TLS_AES_128_GCM_SHA256");
}

static void test_tls12_only_client_is_refused_by_default(void **state) {
    (void)state;
    client_job j;
    handshake(NET_TLS_DEFAULT, TLS1_VERSION, TLS1_2_VERSION, &j);
    assert_false(j.handshake_ok);
}

static void test_tls13_handshake_negotiates_a_documented_suite(void **state) {
    (void)state;
    client_job j;
    handshake(NET_TLS_DEFAULT, TLS1_3_VERSION, TLS1_3_VERSION, &j);
    assert_true(j.handshake_ok);
    assert_int_equal(j.version, TLS1_3_VERSION);
    if (!documented_tls13_suite(j.cipher))
        fail_msg("negotiated %s, not a documented TLS 1.3 suite", j.cipher);
}

static void test_each_documented_tls13_suite_is_accepted(void **state) {
    (void)state;
    const char *suites[3] = {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
                             "TLS_AES_128_GCM_SHA256"};
    for (int k = 0; k < 3; k++) {
        client_job j;
        g_suites = suites[k];
        handshake(NET_TLS_DEFAULT, TLS1_3_VERSION, TLS1_3_VERSION, &j);
        g_suites = NULL;
        if (!j.handshake_ok)
            fail_msg("a client offering only %s was refused", suites[k]);
        assert_string_equal(j.cipher, suites[k]);
    }
}

static void test_tls12_client_is_accepted_when_min_version_is_1_2(void **state) {
    (void)state;
    client_job j;
    handshake(NET_TLS_1_2, TLS1_2_VERSION, TLS1_2_VERSION, &j);
    assert_true(j.handshake_ok);
    assert_int_equal(j.version, TLS1_2_VERSION);
    /* forward secrecy and AEAD: an ECDHE suite with GCM or ChaCha20-Poly1305 */
    if (strncmp(j.cipher, "ECDHE-", 6) != 0 ||
        (!strstr(j.cipher, "GCM") && !strstr(j.cipher, "CHACHA20")))
        fail_msg("TLS 1.2 negotiated %s", j.cipher);
}

int main(void) {
    fc_error err = {0};
    if (tlsgen_create(NULL, &pki, &err) != FC_OK) {
        fprintf(stderr, "pki: %s\n", err.msg);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls12_only_client_is_refused_by_default),
        cmocka_unit_test(test_tls13_handshake_negotiates_a_documented_suite),
        cmocka_unit_test(test_each_documented_tls13_suite_is_accepted),
        cmocka_unit_test(test_tls12_client_is_accepted_when_min_version_is_1_2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
