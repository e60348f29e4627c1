/* test_fedctl_verify.c: `fedctl verify DB` as an operator runs it, on a real store: a good
 * chain, a tampered chunk, a missing file and a file that is not a fedcoord database. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "storage/store.h"
#include "tests/lib/testutil.h"

static char fedctl[512];

static int setup(void **state) {
    (void)state;
    snprintf(fedctl, sizeof fedctl, "%s/bin/fedctl", fc_test_build_dir());
    return 0;
}

typedef struct source {
    const uint8_t *data;
    size_t len, pos;
} source;

static fc_status read_source(void *ud, void *buf, size_t cap, size_t *got, fc_error *err) {
    (void)err;
    source *s = ud;
    size_t n = s->len - s->pos < cap ? s->len - s->pos : cap;
    memcpy(buf, s->data + s->pos, n);
    s->pos += n;
    *got = n;
    return FC_OK;
}

/* Creates a store with `versions` committed rounds of a 3-chunk model. */
static void make_store(const char *path, int versions) {
    store_options opt = {.version = STORE_OPTIONS_V1, .chunk_size = 64};
    store *s = NULL;
    fc_error err = {0};
    remove(path);
    assert_int_equal(store_open(path, &opt, &s, &err), FC_OK);
    uint8_t model[160];
    for (int v = 1; v <= versions; v++) {
        for (size_t i = 0; i < sizeof model; i++)
            model[i] = (uint8_t)(i * 7 + (size_t)v);
        source src = {model, sizeof model, 0};
        store_commit c = {.round_id = v,
                          .version = v,
                          .parent_version = v - 1,
                          .tensor_specs_json = "[{\"name\":\"w\",\"dtype\":\"f32\",\"shape\":[40]}]",
                          .model_size = sizeof model,
                          .source = read_source,
                          .source_ud = &src,
                          .started_at = 1000 * v,
                          .ended_at = 1000 * v + 10,
                          .config_json = "{}",
                          .report_json = "{}",
                          .rule_name = "fedavg",
                          .optimizer_name = "sgd"};
        if (store_commit_round(s, &c, NULL, &err) != FC_OK)
            fail_msg("commit %d: %s", v, fc_error_text(&err));
    }
    store_close(s);
}

static int run_verify(const char *db) {
    const char *argv[] = {fedctl, "verify", db, NULL};
    char out[512], errp[512];
    return fc_test_run(argv, fc_test_path(out, sizeof out, "out.txt"),
                       fc_test_path(errp, sizeof errp, "err.txt"), 60);
}

static char *tmp_text(const char *name) {
    char path[512];
    char *s = fc_test_slurp(fc_test_path(path, sizeof path, name), NULL);
    assert_non_null(s);
    return s;
}

static void test_good_chain_verifies(void **state) {
    (void)state;
    char db[512];
    make_store(fc_test_path(db, sizeof db, "good.db"), 4);
    assert_int_equal(run_verify(db), 0);
    char *out = tmp_text("out.txt");
    assert_true(strlen(out) > 0);
    free(out);
}

static void test_tampered_chunk_fails_naming_the_version(void **state) {
    (void)state;
    char db[512];
    make_store(fc_test_path(db, sizeof db, "bad.db"), 4);
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    /* Flip the data of one chunk of version 3 behind the store's back. */
    char *msg = NULL;
    int rc = sqlite3_exec(h,
                          "UPDATE model_chunks SET data = zeroblob(length(data)) "
                          "WHERE rowid = (SELECT min(rowid) FROM model_chunks WHERE version = 3)",
                          NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fail_msg("tamper: %s", msg ? msg : "?");
    assert_int_equal(sqlite3_changes(h), 1);
    sqlite3_close(h);
    assert_int_equal(run_verify(db), 1);
    char *err = tmp_text("err.txt");
    assert_non_null(strstr(err, "fedctl verify: "));
    assert_non_null(strstr(err, "3"));
    free(err);
}

static void test_missing_and_foreign_files_are_bad_input(void **state) {
    (void)state;
    char path[512];
    assert_int_equal(run_verify(fc_test_path(path, sizeof path, "nope.db")), 2);
    char *err = tmp_text("err.txt");
    assert_non_null(strstr(err, "nope.db"));
    free(err);
    FILE *f = fopen(fc_test_path(path, sizeof path, "notes.txt"), "w");
    assert_non_null(f);
    fputs("these are not the pages you are looking for\n", f);
    fclose(f);
    assert_int_equal(run_verify(path), 2);
    const char *usage[] = {fedctl, "verify", NULL};
    assert_int_equal(fc_test_run(usage, NULL, NULL, 30), 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_chain_verifies),
        cmocka_unit_test(test_tampered_chunk_fails_naming_the_version),
        cmocka_unit_test(test_missing_and_foreign_files_are_bad_input),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
