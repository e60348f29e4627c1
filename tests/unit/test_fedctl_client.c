/* test_fedctl_client.c: `fedctl client add|revoke|list` as an operator runs them: the real
 * build/bin/fedctl against a real database in the test's temporary folder. Checks that the
 * printed token's SHA-256 is what the store holds, that the token itself is nowhere in the
 * database files, and the exit status and message of each bad input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "storage/store.h"
#include "tests/lib/testutil.h"

static char fedctl[512];

static int setup(void **state) {
    (void)state;
    snprintf(fedctl, sizeof fedctl, "%s/bin/fedctl", fc_test_build_dir());
    return 0;
}

static char *tmp_text(const char *name, size_t *len) {
    char path[512];
    char *s = fc_test_slurp(fc_test_path(path, sizeof path, name), len);
    assert_non_null(s);
    return s;
}

/* Runs fedctl client ARGS... (NULL-terminated), output in out.txt / err.txt. */
static int run_client(const char *a1, const char *a2, const char *a3, const char *a4) {
    const char *argv[] = {fedctl, "client", a1, a2, a3, a4, NULL};
    char out[512], err[512];
    return fc_test_run(argv, fc_test_path(out, sizeof out, "out.txt"),
                       fc_test_path(err, sizeof err, "err.txt"), 60);
}

static void fresh_db(char *db, size_t size, const char *name) {
    fc_test_path(db, size, name);
    char side[600];
    remove(db);
    snprintf(side, sizeof side, "%s-wal", db);
    remove(side);
    snprintf(side, sizeof side, "%s-shm", db);
    remove(side);
}

/* Adds `name`, returns the printed token (one line, heap string without the newline). */
static char *add_client(const char *db, const char *name) {
    assert_int_equal(run_client("add", name, "--db", db), 0);
    char *out = tmp_text("out.txt", NULL);
    char *nl = strchr(out, '\n');
    assert_non_null(nl);
    assert_string_equal(nl + 1, ""); /* the token is the only line on stdout */
    *nl = '\0';
    char *err = tmp_text("err.txt", NULL);
    assert_non_null(strstr(err, "only"));
    assert_non_null(strstr(err, name));
    assert_null(strstr(err, out)); /* the note does not repeat the token */
    free(err);
    return out;
}

static void sha256(const char *text, uint8_t out[32]) {
    unsigned len = 0;
    assert_int_equal(EVP_Digest(text, strlen(text), out, &len, EVP_sha256(), NULL), 1);
    assert_int_equal(len, 32);
}

static int contains(const uint8_t *hay, size_t n, const void *needle, size_t m) {
    for (size_t i = 0; m <= n && i + m <= n; i++)
        if (memcmp(hay + i, needle, m) == 0)
            return 1;
    return 0;
}

static void test_add_stores_only_the_sha256_of_the_printed_token(void **state) {
    (void)state;
    char db[512];
    fresh_db(db, sizeof db, "add.db");
    char *token = add_client(db, "alice");
    /* 32 random bytes as unpadded base64url. */
    assert_int_equal(strlen(token), 43);
    assert_int_equal(strspn(token, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
                     43);
    uint8_t hash[32];
    sha256(token, hash);

    store *s = NULL;
    fc_error err = {0};
    store_options opt = {.version = STORE_OPTIONS_V1, .readonly = 1, .must_exist = 1};
    assert_int_equal(store_open(db, &opt, &s, &err), FC_OK);
    store_client c;
    if (store_client_by_token(s, hash, &c, &err) != FC_OK)
        fail_msg("token hash not in the store: %s", fc_error_text(&err));
    assert_string_equal(c.name, "alice");
    assert_int_equal(c.revoked_at, 0);
    assert_true(c.created_at > 1600000000000LL); /* Unix milliseconds */
    store_close(s);

    /* The token's bytes are in no database file; its hash is (so the search can find). */
    const char *suffixes[] = {"", "-wal"};
    int hash_seen = 0;
    for (size_t i = 0; i < 2; i++) {
        char path[600];
        snprintf(path, sizeof path, "%s%s", db, suffixes[i]);
        size_t len = 0;
        char *bytes = fc_test_slurp(path, &len);
        if (!bytes)
            continue;
        assert_false(contains((const uint8_t *)bytes, len, token, strlen(token)));
        assert_false(contains((const uint8_t *)bytes, len, token, 16));
        hash_seen |= contains((const uint8_t *)bytes, len, hash, sizeof hash);
        free(bytes);
    }
    assert_true(hash_seen);

    /* A second client gets a different token. */
    char *token2 = add_client(db, "bob.v2_x-1");
    assert_string_not_equal(token, token2);
    free(token2);
    free(token);
}

static void test_duplicate_name_is_refused_with_exit_2(void **state) {
    (void)state;
    char db[512];
    fresh_db(db, sizeof db, "dup.db");
    free(add_client(db, "carol"));
    assert_int_equal(run_client("add", "carol", "--db", db), 2);
    char *out = tmp_text("out.txt", NULL);
    assert_string_equal(out, ""); /* no token printed */
    free(out);
    char *err = tmp_text("err.txt", NULL);
    assert_non_null(strstr(err, "fedctl client: add: a client named 'carol' already exists"));
    free(err);
}

static void test_bad_names_and_missing_db_are_refused(void **state) {
    (void)state;
    char db[512];
    fresh_db(db, sizeof db, "names.db");
    const char *bad[] = {"",      "has space", "semi;colon", "slash/x", "über",
                         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" /* 65 */};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(run_client("add", bad[i], "--db", db), 2);
        char *err = tmp_text("err.txt", NULL);
        assert_non_null(strstr(err, "bad client name"));
        free(err);
    }
    /* 64 characters is the longest accepted name. */
    free(add_client(db, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));

    assert_int_equal(run_client("add", "dave", NULL, NULL), 2);
    char *err = tmp_text("err.txt", NULL);
    assert_non_null(strstr(err, "--db PATH is required"));
    free(err);
    assert_int_equal(run_client("list", NULL, NULL, NULL), 2);
    assert_int_equal(run_client("add", "--db", db, NULL), 2); /* no NAME */
    assert_int_equal(run_client("frobnicate", "--db", db, NULL), 2);
    assert_int_equal(run_client("add", "x", "--db", NULL), 2);
    assert_int_equal(run_client("add", "x", "--bogus", db), 2);
}

static void test_revoke_marks_the_client_and_refuses_unknown_or_repeated(void **state) {
    (void)state;
    char db[512];
    fresh_db(db, sizeof db, "revoke.db");
    char *token = add_client(db, "erin");
    assert_int_equal(run_client("revoke", "erin", "--db", db), 0);

    uint8_t hash[32];
    sha256(token, hash);
    store *s = NULL;
    fc_error err = {0};
    store_options opt = {.version = STORE_OPTIONS_V1, .readonly = 1, .must_exist = 1};
    assert_int_equal(store_open(db, &opt, &s, &err), FC_OK);
    store_client c;
    assert_int_equal(store_client_by_token(s, hash, &c, &err), FC_OK);
    assert_true(c.revoked_at >= c.created_at && c.revoked_at > 0);
    store_close(s);

    assert_int_equal(run_client("revoke", "erin", "--db", db), 2);
    char *e = tmp_text("err.txt", NULL);
    assert_non_null(strstr(e, "client 'erin' is already revoked"));
    free(e);
    assert_int_equal(run_client("revoke", "frank", "--db", db), 2);
    e = tmp_text("err.txt", NULL);
    assert_non_null(strstr(e, "no client named 'frank'"));
    free(e);
    /* Revoking in a database that does not exist does not create one. */
    char missing[512];
    fresh_db(missing, sizeof missing, "missing.db");
    assert_int_equal(run_client("revoke", "erin", "--db", missing), 2);
    FILE *f = fopen(missing, "rb");
    assert_null(f);
    free(token);
}

static void test_list_shows_clients_and_counters_never_tokens(void **state) {
    (void)state;
    char db[512];
    fresh_db(db, sizeof db, "list.db");
    char *t1 = add_client(db, "gina");
    char *t2 = add_client(db, "hugo");
    assert_int_equal(run_client("revoke", "hugo", "--db", db), 0);
    assert_int_equal(run_client("list", "--db", db, NULL), 0);
    char *out = tmp_text("out.txt", NULL);
    assert_non_null(strstr(out, "NAME"));
    assert_non_null(strstr(out, "ROUNDS"));
    char *g = strstr(out, "\ngina "), *h = strstr(out, "\nhugo ");
    assert_non_null(g);
    assert_non_null(h);
    assert_true(g < h); /* id order */
    /* gina is active: her REVOKED column is "-"; hugo's is a UTC time. */
    char line[256];
    sscanf(g + 1, "%255[^\n]", line);
    char name[64], created[32], revoked[32];
    long long rounds, acc, rej, to, dr;
    assert_int_equal(sscanf(line, "%63s %31s %31s %lld %lld %lld %lld %lld", name, created,
                            revoked, &rounds, &acc, &rej, &to, &dr),
                     8);
    assert_string_equal(revoked, "-");
    assert_int_equal(created[strlen(created) - 1], 'Z');
    assert_int_equal(rounds + acc + rej + to + dr, 0);
    sscanf(h + 1, "%255[^\n]", line);
    assert_int_equal(sscanf(line, "%63s %31s %31s", name, created, revoked), 3);
    assert_int_equal(revoked[strlen(revoked) - 1], 'Z');

    /* Neither the tokens nor their hashes (in hex) appear. */
    assert_null(strstr(out, t1));
    assert_null(strstr(out, t2));
    uint8_t hash[32];
    sha256(t1, hash);
    char hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", hash[i]);
    assert_null(strstr(out, hex));
    assert_null(strstr(out, "token"));
    free(out);
    free(t1);
    free(t2);

    /* list of a missing database is bad input and creates nothing. */
    char missing[512];
    fresh_db(missing, sizeof missing, "missing-list.db");
    assert_int_equal(run_client("list", "--db", missing, NULL), 2);
    assert_null(fopen(missing, "rb"));
}

/* If the token cannot be written (stdout is /dev/full), nobody has seen it: the client is
 * revoked at once and the command fails. */
static void test_unwritable_stdout_revokes_the_new_client(void **state) {
    (void)state;
    char db[512], errp[512];
    fresh_db(db, sizeof db, "full.db");
    const char *argv[] = {fedctl, "client", "add", "ivan", "--db", db, NULL};
    assert_int_equal(fc_test_run(argv, "/dev/full", fc_test_path(errp, sizeof errp, "err.txt"), 60),
                     1);
    char *e = tmp_text("err.txt", NULL);
    assert_non_null(strstr(e, "cannot write the token"));
    assert_non_null(strstr(e, "'ivan' was revoked"));
    free(e);
    store *s = NULL;
    fc_error err = {0};
    store_options opt = {.version = STORE_OPTIONS_V1, .readonly = 1, .must_exist = 1};
    assert_int_equal(store_open(db, &opt, &s, &err), FC_OK);
    store_client c;
    assert_int_equal(store_client_by_name(s, "ivan", &c, &err), FC_OK);
    assert_true(c.revoked_at > 0);
    store_close(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_stores_only_the_sha256_of_the_printed_token),
        cmocka_unit_test(test_duplicate_name_is_refused_with_exit_2),
        cmocka_unit_test(test_bad_names_and_missing_db_are_refused),
        cmocka_unit_test(test_revoke_marks_the_client_and_refuses_unknown_or_repeated),
        cmocka_unit_test(test_list_shows_clients_and_counters_never_tokens),
        cmocka_unit_test(test_unwritable_stdout_revokes_the_new_client),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
