/* test_secrets.c: secrets never reach the logs or the database (docs/security.md).
 *
 * Runs the real daemon with log_level = debug and the HTTP API enabled with an admin token,
 * registers clients with the real fedctl, then logs in with a good token, a wrong token and a
 * revoked token. Afterwards every daemon log must hold none of the tokens nor the admin token,
 * and the database files (main, -wal) must hold no client token, only its SHA-256.
 * It owns only its test folder.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <openssl/sha.h>

#include "core/alloc.h"
#include "tests/integration/harness.h"

/* 1 if the file at path contains needle (a missing file contains nothing). */
static int file_contains(const char *path, const void *needle, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    size_t r;
    while ((r = fread(buf + len, 1, cap - len, f)) > 0) {
        len += r;
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    fclose(f);
    int found = 0;
    for (size_t i = 0; !found && n <= len && i + n <= len; i++)
        found = memcmp(buf + i, needle, n) == 0;
    free(buf);
    return found;
}

static void test_tokens_never_reach_logs_or_database(void **state) {
    (void)state;
    it_env e;
    if (it_env_init(&e, "secrets") != 0)
        fail_msg("%s", e.why);
    const char admin[] = "admin-secret-6f1c0e9d2b7a4c3e8f5a1d0b9c8e7f6a";
    char admin_file[IT_PATH_MAX + 16], set_admin[IT_PATH_MAX + 64];
    snprintf(admin_file, sizeof admin_file, "%.590s/admin", e.dir);
    FILE *f = fopen(admin_file, "w");
    assert_non_null(f);
    fprintf(f, "%s\n", admin);
    fclose(f);

    char alice[64], bob[64];
    if (it_client_add(&e, "alice", alice) != 0 || it_client_add(&e, "bob", bob) != 0)
        fail_msg("%s", e.why);
    snprintf(set_admin, sizeof set_admin, "http.admin_token_file=%s", admin_file);
    const char *sets[] = {"server.log_level=debug", "http.enabled=true", "http.port=0",
                          set_admin, NULL};
    if (it_daemon_start(&e, "[round]\nmin_clients = 5\n", sets, 20) != 0)
        fail_msg("%s", e.why);

    /* a good login */
    fc_client *c = NULL;
    fc_status st = it_client_open(&e, "alice", alice, 0, &c);
    if (st != FC_OK)
        fail_msg("alice could not log in: %s", c ? fc_client_error(c) : fc_strerror(st));
    fc_client_close(c);
    /* a wrong token: alice's with its last character changed */
    char wrong[64];
    snprintf(wrong, sizeof wrong, "%s", alice);
    wrong[42] = wrong[42] == 'A' ? 'B' : 'A';
    c = NULL;
    assert_int_not_equal(it_client_open(&e, "alice", wrong, 0, &c), FC_OK);
    fc_client_close(c);
    /* a revoked token */
    if (it_client_revoke(&e, "bob") != 0)
        fail_msg("%s", e.why);
    c = NULL;
    assert_int_not_equal(it_client_open(&e, "bob", bob, 0, &c), FC_OK);
    fc_client_close(c);
    if (!it_log_contains(&e, "level=debug"))
        fail_msg("the daemon wrote no debug line: the test would prove nothing");
    if (!it_log_contains(&e, "wrong token") || !it_log_contains(&e, "client 'bob' is revoked"))
        fail_msg("the failed logins were not logged: the test would prove nothing");

    /* the database holds the SHA-256 of each token, never the token */
    store *s = NULL;
    fc_error err = {0};
    assert_int_equal(it_store_open(&e, &s, &err), FC_OK);
    store_client sc;
    assert_int_equal(store_client_by_name(s, "alice", &sc, &err), FC_OK);
    uint8_t h[32];
    SHA256((const unsigned char *)alice, strlen(alice), h);
    assert_memory_equal(sc.token_sha256, h, 32);
    assert_int_equal(store_client_by_name(s, "bob", &sc, &err), FC_OK);
    assert_true(sc.revoked_at > 0);
    store_close(s);

    assert_int_equal(it_daemon_signal_wait(&e, 15, 20), 0);
    char path[IT_PATH_MAX + 16];
    for (int n = 1; n <= e.starts; n++) {
        snprintf(path, sizeof path, "%.590s/daemon-%d.log", e.dir, n);
        const char *secrets[4] = {alice, wrong, bob, admin};
        for (int k = 0; k < 4; k++)
            if (file_contains(path, secrets[k], strlen(secrets[k])))
                fail_msg("%s contains secret #%d", path, k);
    }
    const char *suffix[2] = {"", "-wal"};
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s%s", e.db, suffix[k]);
        if (file_contains(path, alice, strlen(alice)) || file_contains(path, bob, strlen(bob)))
            fail_msg("%s contains a client token", path);
    }
    it_env_cleanup(&e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokens_never_reach_logs_or_database),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
