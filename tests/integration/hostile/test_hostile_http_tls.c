/* test_hostile_http_tls.c: hostile requests to the operators' HTTP API while honest clients run
 * rounds (huge headers, a bad method and a method the path does not allow, path traversal in the
 * model export, a missing and a wrong admin token), client certificates that are untrusted,
 * expired or missing under mutual TLS, and, in asynchronous mode, an update for another
 * client's task and one from a client that was never given a task. Each case checks the answer
 * (status and JSON error, or the failed handshake), the daemon's log line, and that the rounds
 * commit exactly the honest mean. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "tests/integration/hostile/hostile.h"
#include "tests/lib/rawcl.h"
#include "tests/lib/testutil.h"

/* Sends req verbatim to 127.0.0.1:port and returns the status of the answer (0 if none), the
 * answer's text in out (cap bytes, NUL-terminated). */
static int raw_http(int port, const char *req, size_t len, char *out, size_t cap) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    struct timeval tv = {5, 0};
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        fail_msg("HTTP connect failed: %s", strerror(errno));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    size_t sent = 0;
    while (sent < len) { /* the server may answer and close before it read everything */
        ssize_t n = write(fd, req + sent, len - sent);
        if (n <= 0)
            break;
        sent += (size_t)n;
    }
    size_t got = 0;
    for (ssize_t n; got + 1 < cap && (n = read(fd, out + got, cap - 1 - got)) > 0;)
        got += (size_t)n;
    out[got] = '\0';
    close(fd);
    return got > 12 && strncmp(out, "HTTP/1.1 ", 9) == 0 ? atoi(out + 9) : 0;
}

static void expect_http(int port, const char *req, int status, const char *needle) {
    char out[8192];
    int got = raw_http(port, req, strlen(req), out, sizeof out);
    if (got != status || !strstr(out, needle))
        fail_msg("%.40s...: status %d, expected %d with \"%s\":\n%s", req, got, status, needle,
                 out);
}

static void test_hostile_http_requests_while_rounds_run(void **state) {
    (void)state;
    it_env e;
    if (it_env_init(&e, "http") != 0) /* for the token file's folder; hx_start re-inits */
        fail_msg("%s", e.why);
    char tokfile[IT_PATH_MAX + 32], set_tok[IT_PATH_MAX + 64];
    snprintf(tokfile, sizeof tokfile, "%s/admin.token", e.dir);
    FILE *f = fopen(tokfile, "w");
    assert_non_null(f);
    fputs("an-admin-token-of-forty-characters-00000\n", f);
    fclose(f);
    snprintf(set_tok, sizeof set_tok, "http.admin_token_file=%s", tokfile);
    const char *sets[] = {"http.enabled=true", "http.port=0", set_tok, NULL};
    hx_start(&e, "http",
             "min_clients = 2\nclients_per_round = 2\nmin_updates = 2\nmax_rounds = 8\n"
             "round_timeout = 60s\n",
             sets);
    int port = it_http_port(&e, 20);
    assert_true(port > 0);
    hx_plan plans[2];
    it_worker w[2];
    hx_start_honest(&e, w, plans, 250);

    /* 1. huge headers: 64 KiB of one header */
    size_t big = 64 * 1024;
    char *req = fc_malloc(big + 256);
    assert_non_null(req);
    int n = snprintf(req, 256, "GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Junk: ");
    memset(req + n, 'a', big);
    memcpy(req + n + big, "\r\n\r\n", 5);
    char out[8192];
    int st = raw_http(port, req, strlen(req), out, sizeof out);
    fc_free(req);
    if (st != 431 || !strstr(out, "\"error\""))
        fail_msg("huge headers: %d\n%s", st, out);
    hx_log_has(&e, "msg=\"http request refused\"", 2000);
    hx_log_has(&e, "status=431", 2000);

    /* 2. a method HTTP does not have, 3. a method the path does not allow */
    expect_http(port, "BREW /v1/status HTTP/1.1\r\nHost: x\r\n\r\n", 405,
                "unknown request method");
    hx_log_has(&e, "status=405 detail=\"unknown request method\"", 2000);
    expect_http(port, "DELETE /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405,
                "\"error\"");
    hx_log_has(&e, "method=DELETE path=/v1/status status=405", 2000);

    /* 4. path traversal in the model export: refused, and no file is read */
    expect_http(port,
                "GET /v1/models/..%2F..%2F..%2Fetc%2Fpasswd/safetensors HTTP/1.1\r\nHost: x\r\n"
                "Connection: close\r\n\r\n",
                404, "\"error\"");
    expect_http(port,
                "GET /v1/models/1/../../../../etc/passwd HTTP/1.1\r\nHost: x\r\n"
                "Connection: close\r\n\r\n",
                404, "\"error\"");
    char *log = fc_test_slurp(e.log, NULL);
    assert_non_null(log);
    assert_null(strstr(log, "root:x:0:0"));
    free(log);
    hx_log_has(&e, "status=404", 2000);

    /* 5. control without the admin token, 6. with a wrong one */
    expect_http(port, "POST /v1/control/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                      "Connection: close\r\n\r\n",
                401, "\"error\"");
    expect_http(port, "POST /v1/control/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                      "Authorization: Bearer an-admin-token-of-forty-characters-00001\r\n"
                      "Connection: close\r\n\r\n",
                401, "\"error\"");
    hx_log_has(&e, "msg=\"http auth refused\"", 2000);

    /* the rounds were never paused and commit exactly the honest mean */
    hx_join_honest(w, 2);
    float step[8] = {2, 2, 2, 2, 2, 2, 2, 2};
    hx_check_versions(&e, 1, 8, step);
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

/* Under client_auth = require: a certificate from an untrusted CA, an expired one and none at
 * all are refused in the handshake and logged; a valid one then still gets its Welcome. */
static void test_bad_client_certificates_under_mutual_tls(void **state) {
    (void)state;
    it_env e;
    const char *sets[] = {"tls.client_auth=require", NULL};
    hx_start(&e, "mtls", "min_clients = 1\nclients_per_round = 1\nmin_updates = 1\n", sets);
    const char *which[3] = {"rogue", "expired", "none"};
    for (int k = 0; k < 3; k++) {
        tlsgen_pki pki = e.pki;
        if (k == 0) {
            snprintf(pki.client_cert, sizeof pki.client_cert, "%s", e.pki.rogue_cert);
            snprintf(pki.client_key, sizeof pki.client_key, "%s", e.pki.rogue_key);
        } else if (k == 1) {
            snprintf(pki.client_cert, sizeof pki.client_cert, "%s", e.pki.expired_cert);
            snprintf(pki.client_key, sizeof pki.client_key, "%s", e.pki.expired_key);
        }
        rawcl c;
        int opened = rawcl_open(&c, e.port, &pki, k < 2);
        if (opened) { /* TLS 1.3: the client learns of the refusal on its first read */
            struct timeval tv = {5, 0};
            setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            fc_envelope *env = rawcl_recv(&c);
            if (env)
                fail_msg("%s certificate: the daemon answered", which[k]);
        }
        rawcl_free(&c);
    }
    /* one refused handshake per case, each with the certificate problem in the log */
    hx_log_has(&e, "reason=ERR_TLS", 3000);
    char *log = fc_test_slurp(e.log, NULL);
    size_t refused = 0;
    for (const char *p = log; p && (p = strstr(p, "reason=ERR_TLS")); p++)
        refused++;
    free(log);
    assert_int_equal(refused, 3);
    hx_log_has(&e, "certificate", 1000);
    /* a valid certificate is still served */
    rawcl c;
    assert_true(rawcl_open(&c, e.port, &e.pki, 1));
    fc_wire_msg m;
    fc_error err = {0};
    fc_wire_hello_args a = {.client_name = "client-1", .software = "hostile-test"};
    assert_int_equal(fc_wire_hello(&m, 1, &a, &err), FC_OK);
    assert_true(rawcl_send(&c, &m));
    fc_envelope *env = rawcl_recv(&c);
    assert_non_null(env);
    assert_int_equal(env->body_case, FEDCOORD__V1__ENVELOPE__BODY_WELCOME);
    fc_envelope_free(env);
    rawcl_free(&c);
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

/* Async mode, concurrency 1: the client holding the task answers it; the other, which has no
 * task, tries that task's round and version (another client's task) and is refused; the
 * versions are exactly the task holder's deltas. */
static void test_async_update_for_another_clients_task(void **state) {
    (void)state;
    it_env e;
    hx_start(&e, "async",
             "mode = async\nbuffer_size = 1\nconcurrency = 1\nmax_staleness = 5\nmax_rounds = 3\n"
             "round_timeout = 60s\n[aggregator]\nrule = fedbuff\n",
             NULL);
    char ta[64], tb[64];
    hx_add(&e, "holder", ta);
    hx_add(&e, "thief", tb);
    hx_plan p = {2, 400, NULL};
    it_worker w;
    hx_honest(&w, &e, "holder", ta, &p);
    assert_int_equal(it_worker_start(&w), 0);
    if (it_wait_round_exists(&e, 1, 20) != 0)
        fail_msg("no buffer opened: %s", e.why);
    it_sleep_ms(100); /* the holder has its task (concurrency 1) */
    fc_client *c = NULL;
    assert_int_equal(it_client_open(&e, "thief", tb, 0, &c), FC_OK);
    float d[HX_NUMEL] = {9, 9, 9, 9, 9, 9};
    fc_tensor_spec sp = hx_spec("w", FC_DTYPE_F32, 2, 3);
    it_raw_opts o = {.num_examples = 1, .is_delta = 1};
    fc_status st = it_raw_upload_opts(c, 1, 1, &sp, 1, d, sizeof d, &o);
    if (st != FC_ERR_STATE || !strstr(fc_client_error(c), "no task outstanding"))
        fail_msg("another client's task: %s \"%s\"", fc_status_name(st), fc_client_error(c));
    st = it_raw_upload_opts(c, 77, 1, &sp, 1, d, sizeof d, &o);
    if (st != FC_ERR_STATE || !strstr(fc_client_error(c), "no task outstanding"))
        fail_msg("a task never assigned: %s \"%s\"", fc_status_name(st), fc_client_error(c));
    fc_client_close(c);
    hx_log_has(&e, "no task outstanding", 2000);
    hx_join_honest(&w, 1);
    /* each buffer of one fresh update of 2 (poly weight 1 at staleness 0, divided by k = 1) */
    float step[3] = {2, 2, 2};
    hx_check_versions(&e, 1, 3, step);
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostile_http_requests_while_rounds_run),
        cmocka_unit_test(test_bad_client_certificates_under_mutual_tls),
        cmocka_unit_test(test_async_update_for_another_clients_task),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
