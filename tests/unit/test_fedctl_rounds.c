/* test_fedctl_rounds.c: `fedctl rounds` and `fedctl export` as an operator runs them, on real
 * store files built with the store API: the progress table (weighted train loss, accuracy of
 * the evaluation, failed rounds, --limit, --follow --until), and the export of a model version
 * to safetensors (round trip, pruned and missing versions, a corrupt chunk, bad usage). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "core/safetensors.h"
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

#define SPECS "[{\"name\":\"w\",\"dtype\":\"f32\",\"shape\":[2,3]},{\"name\":\"b\",\"dtype\":\"f32\",\"shape\":[3]}]"

/* Model of version v: 9 floats, value 10*v + i. */
static void model_of(int v, float m[9]) {
    for (int i = 0; i < 9; i++)
        m[i] = (float)(10 * v + i);
}

static store *open_rw(const char *path) {
    store_options opt = {.version = STORE_OPTIONS_V1, .chunk_size = 16};
    store *s = NULL;
    fc_error err = {0};
    if (store_open(path, &opt, &s, &err) != FC_OK)
        fail_msg("open %s: %s", path, fc_error_text(&err));
    return s;
}

/* Commits training round `round_id` producing version v, with three participants: alice (100
 * examples, train_loss l1), bob (300, l2) accepted, carol rejected (train_loss 9, must not
 * count). The round lasts dur_ms. */
static void commit_train(store *s, int64_t round_id, int v, double l1, double l2, int64_t dur_ms) {
    float m[9];
    model_of(v, m);
    source src = {(const uint8_t *)m, sizeof m, 0};
    char ma[64], mb[64];
    snprintf(ma, sizeof ma, "{\"train_loss\":%.17g,\"train_accuracy\":0.5}", l1);
    snprintf(mb, sizeof mb, "{\"train_loss\":%.17g}", l2);
    store_participant p[3] = {
        {.client = "alice", .outcome = STORE_OUTCOME_ACCEPTED, .num_examples = 100,
         .metrics_json = ma},
        {.client = "bob", .outcome = STORE_OUTCOME_ACCEPTED, .num_examples = 300,
         .metrics_json = mb},
        {.client = "carol", .outcome = STORE_OUTCOME_REJECTED, .reason = "norm",
         .num_examples = 50, .metrics_json = "{\"train_loss\":9}"},
    };
    store_commit c = {.round_id = round_id,
                      .version = v,
                      .parent_version = v - 1,
                      .tensor_specs_json = SPECS,
                      .model_size = sizeof m,
                      .source = read_source,
                      .source_ud = &src,
                      .started_at = 1000000 * round_id,
                      .ended_at = 1000000 * round_id + dur_ms,
                      .config_json = "{\"kind\":\"train\"}",
                      .report_json = "{}",
                      .participants = p,
                      .num_participants = 3,
                      .rule_name = "fedavg",
                      .optimizer_name = "sgd"};
    fc_error err = {0};
    if (store_commit_round(s, &c, NULL, &err) != FC_OK)
        fail_msg("commit %d: %s", v, fc_error_text(&err));
}

static void fail_round(store *s, int64_t round_id, const char *reason) {
    fc_error err = {0};
    assert_int_equal(store_round_begin(s, round_id, STORE_ROUND_TRAINING, 0, "{\"kind\":\"train\"}",
                                       1, &err),
                     FC_OK);
    assert_int_equal(store_round_fail(s, round_id, reason, NULL, 0, 2, &err), FC_OK);
}

static int run_fedctl(const char *const *args, const char *out_name) {
    const char *argv[20] = {fedctl};
    size_t n = 1;
    for (size_t i = 0; args[i] && n < 19; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    char out[512], errp[512];
    return fc_test_run(argv, fc_test_path(out, sizeof out, out_name),
                       fc_test_path(errp, sizeof errp, "fedctl.err"), 60);
}

static char *slurp_tmp(const char *name) {
    char path[512];
    char *s = fc_test_slurp(fc_test_path(path, sizeof path, name), NULL);
    assert_non_null(s);
    return s;
}

static void test_table_has_weighted_loss_clients_and_time_per_training_round(void **state) {
    (void)state;
    char db[512];
    fc_test_path(db, sizeof db, "table.db");
    remove(db);
    store *s = open_rw(db);
    /* (100*0.5 + 300*0.1) / 400 = 0.2; (100*1 + 300*2) / 400 = 1.75 */
    commit_train(s, 1, 1, 0.5, 0.1, 1500);
    fail_round(s, 2, "deadline passed with 1 of 2 required updates");
    commit_train(s, 3, 2, 1.0, 2.0, 250);
    store_close(s);
    const char *args[] = {"rounds", "--db", db, NULL};
    assert_int_equal(run_fedctl(args, "t.out"), 0);
    char *out = slurp_tmp("t.out");
    assert_string_equal(out, " round  clients  train_loss  eval_acc   time_s  version\n"
                             "     1        2      0.2000         -     1.50        1\n"
                             "failed training round 2: deadline passed with 1 of 2 required "
                             "updates\n"
                             "     2        2      1.7500         -     0.25        2\n");
    free(out);
    const char *lim[] = {"rounds", "--db", db, "--limit", "1", NULL};
    assert_int_equal(run_fedctl(lim, "l.out"), 0);
    out = slurp_tmp("l.out");
    assert_string_equal(out, " round  clients  train_loss  eval_acc   time_s  version\n"
                             "     2        2      1.7500         -     0.25        2\n");
    free(out);
}

static void commit_eval(store *s, int64_t round_id, int64_t version, double acc) {
    char cfg[96], met[96];
    snprintf(cfg, sizeof cfg, "{\"kind\":\"evaluate\",\"model_version\":%lld}",
             (long long)version);
    snprintf(met, sizeof met, "{\"accuracy\":%.17g,\"loss\":0.3}", acc);
    store_participant p[1] = {{.client = "alice", .outcome = STORE_OUTCOME_ACCEPTED,
                               .num_examples = 20, .metrics_json = "{\"accuracy\":0.1}"}};
    fc_error err = {0};
    if (store_round_commit_eval(s, round_id, version, cfg, met, p, 1, 1000000 * round_id,
                                1000000 * round_id + 5, &err) != FC_OK)
        fail_msg("eval %lld: %s", (long long)round_id, fc_error_text(&err));
}

/* The daemon's layout with eval_every = 1: the initial model (version 1) is evaluated first,
 * then each training round is followed by the evaluation of the version it produced. */
static void test_each_row_carries_the_accuracy_of_its_evaluation_round(void **state) {
    (void)state;
    char db[512];
    fc_test_path(db, sizeof db, "eval.db");
    remove(db);
    store *s = open_rw(db);
    float m[9];
    model_of(1, m);
    source src = {(const uint8_t *)m, sizeof m, 0};
    store_commit init = {.version = 1, .tensor_specs_json = SPECS, .model_size = sizeof m,
                         .source = read_source, .source_ud = &src};
    fc_error err = {0};
    assert_int_equal(store_commit_round(s, &init, NULL, &err), FC_OK);
    commit_eval(s, 1, 1, 0.125);
    commit_train(s, 2, 2, 0.5, 0.1, 100);
    commit_eval(s, 3, 2, 0.75);
    commit_train(s, 4, 3, 1.0, 2.0, 200);
    commit_eval(s, 5, 3, 0.875);
    store_close(s);
    const char *args[] = {"rounds", "--db", db, NULL};
    assert_int_equal(run_fedctl(args, "ev.out"), 0);
    char *out = slurp_tmp("ev.out");
    assert_string_equal(out, " round  clients  train_loss  eval_acc   time_s  version\n"
                             "     1        2      0.2000    0.7500     0.10        2\n"
                             "     2        2      1.7500    0.8750     0.20        3\n");
    free(out);
    /* --until 2 returns as soon as round 2's evaluation is in. */
    const char *until[] = {"rounds", "--db", db, "--follow", "--until", "2", "--interval", "10",
                           NULL};
    assert_int_equal(run_fedctl(until, "eu.out"), 0);
    out = slurp_tmp("eu.out");
    assert_non_null(strstr(out, "     2        2      1.7500    0.8750"));
    free(out);
}

static void test_follow_until_returns_once_the_round_is_printed(void **state) {
    (void)state;
    char db[512];
    fc_test_path(db, sizeof db, "follow.db");
    remove(db);
    store *s = open_rw(db);
    commit_train(s, 1, 1, 0.5, 0.5, 100);
    commit_train(s, 2, 2, 0.25, 0.25, 100);
    commit_train(s, 3, 3, 0.125, 0.125, 100);
    store_close(s);
    /* Version 2 is complete (round 3 follows it), so --until 2 returns at once. */
    const char *args[] = {"rounds", "--db", db, "--follow", "--until", "2", "--interval", "10",
                          NULL};
    assert_int_equal(run_fedctl(args, "f.out"), 0);
    char *out = slurp_tmp("f.out");
    assert_non_null(strstr(out, "     2        2      0.2500"));
    free(out);
    /* --while-pid of a process that is gone: prints the rest, pending row included, exits 0. */
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0)
        _exit(0);
    assert_int_equal(waitpid(child, NULL, 0), child);
    char pid[32];
    snprintf(pid, sizeof pid, "%ld", (long)child);
    const char *gone[] = {"rounds", "--db", db, "--follow", "--while-pid", pid, "--interval",
                          "10", NULL};
    assert_int_equal(run_fedctl(gone, "g.out"), 0);
    out = slurp_tmp("g.out");
    assert_non_null(strstr(out, "     3        2      0.1250"));
    free(out);
}

static void test_rounds_bad_usage_and_missing_database_are_bad_input(void **state) {
    (void)state;
    char db[512];
    fc_test_path(db, sizeof db, "nothing-here.db");
    const char *a1[] = {"rounds", "--db", db, NULL};
    assert_int_equal(run_fedctl(a1, "b.out"), 2);
    /* without --db it asks a daemon's HTTP API: none listens on port 1 */
    setenv("FEDCOORD_URL", "http://127.0.0.1:1", 1);
    const char *a2[] = {"rounds", NULL};
    assert_int_equal(run_fedctl(a2, "b.out"), 1);
    unsetenv("FEDCOORD_URL");
    char *e = slurp_tmp("fedctl.err");
    assert_non_null(strstr(e, "fedctl rounds: cannot reach the fedcoord HTTP API at "
                              "http://127.0.0.1:1"));
    free(e);
    const char *a3[] = {"rounds", "--db", db, "--until", "3", NULL};
    assert_int_equal(run_fedctl(a3, "b.out"), 2);
    const char *a4[] = {"rounds", "--db", db, "--limit", "0", NULL};
    assert_int_equal(run_fedctl(a4, "b.out"), 2);
    e = slurp_tmp("fedctl.err");
    assert_non_null(strstr(e, "--limit '0'"));
    free(e);
}

static void test_export_writes_the_stored_version_as_safetensors(void **state) {
    (void)state;
    char db[512], out[512];
    fc_test_path(db, sizeof db, "export.db");
    fc_test_path(out, sizeof out, "v2.safetensors");
    remove(db);
    remove(out);
    store *s = open_rw(db);
    commit_train(s, 1, 1, 0.5, 0.5, 10);
    commit_train(s, 2, 2, 0.5, 0.5, 10);
    commit_train(s, 3, 3, 0.5, 0.5, 10);
    store_close(s);
    const char *args[] = {"export", "--db", db, "--version", "2", "--out", out, NULL};
    assert_int_equal(run_fedctl(args, "e.out"), 0);
    fc_st_file *f = NULL;
    fc_error err = {0};
    assert_int_equal(fc_st_open(out, &f, &err), FC_OK);
    const fc_model *m = fc_st_model(f);
    assert_int_equal(m->count, 2);
    assert_string_equal(m->tensors[0].spec.name, "w");
    assert_int_equal(m->tensors[0].spec.ndim, 2);
    assert_int_equal(m->tensors[0].spec.shape[0], 2);
    assert_int_equal(m->tensors[0].spec.shape[1], 3);
    assert_string_equal(m->tensors[1].spec.name, "b");
    float want[9], got[9];
    model_of(2, want);
    memcpy(got, m->tensors[0].data, 6 * sizeof(float));
    memcpy(got + 6, m->tensors[1].data, 3 * sizeof(float));
    assert_memory_equal(want, got, sizeof want);
    assert_string_equal(fc_st_meta_get(f, "fedcoord.version"), "2");
    assert_string_equal(fc_st_meta_get(f, "fedcoord.round"), "2");
    assert_int_equal(strlen(fc_st_meta_get(f, "fedcoord.sha256")), 64);
    fc_st_close(f);
    /* Without --version: the newest. */
    const char *latest[] = {"export", "--db", db, "--out", out, NULL};
    assert_int_equal(run_fedctl(latest, "e.out"), 0);
    fc_model mm = FC_MODEL_INIT;
    assert_int_equal(fc_st_read_model(out, &mm, &err), FC_OK);
    model_of(3, want);
    memcpy(got, mm.tensors[0].data, 6 * sizeof(float));
    memcpy(got + 6, mm.tensors[1].data, 3 * sizeof(float));
    assert_memory_equal(want, got, sizeof want);
    fc_model_free(&mm);
    char *o = slurp_tmp("e.out");
    assert_non_null(strstr(o, "exported model version 3"));
    free(o);
}

static void test_export_refuses_missing_pruned_and_corrupt_versions(void **state) {
    (void)state;
    char db[512], out[512];
    fc_test_path(db, sizeof db, "export-bad.db");
    fc_test_path(out, sizeof out, "bad.safetensors");
    remove(db);
    remove(out);
    store *s = open_rw(db);
    for (int v = 1; v <= 4; v++)
        commit_train(s, v, v, 0.5, 0.5, 10);
    uint64_t pruned = 0;
    fc_error err = {0};
    assert_int_equal(store_prune(s, 2, 0, 0, 5, &pruned, &err), FC_OK);
    assert_true(pruned >= 1);
    store_close(s);
    const char *missing[] = {"export", "--db", db, "--version", "9", "--out", out, NULL};
    assert_int_equal(run_fedctl(missing, "x.out"), 2);
    char *e = slurp_tmp("fedctl.err");
    assert_non_null(strstr(e, "no model version 9"));
    free(e);
    const char *pr[] = {"export", "--db", db, "--version", "1", "--out", out, NULL};
    assert_int_equal(run_fedctl(pr, "x.out"), 2);
    e = slurp_tmp("fedctl.err");
    assert_non_null(strstr(e, "pruned"));
    free(e);
    /* Corrupt a chunk of version 4: the streamed hash fails and no file is left. */
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h,
                                  "UPDATE model_chunks SET data = zeroblob(length(data)) WHERE "
                                  "rowid = (SELECT min(rowid) FROM model_chunks WHERE version = 4)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_changes(h), 1);
    sqlite3_close(h);
    const char *bad[] = {"export", "--db", db, "--version", "4", "--out", out, NULL};
    assert_int_equal(run_fedctl(bad, "x.out"), 1);
    e = slurp_tmp("fedctl.err");
    assert_non_null(strstr(e, "version 4"));
    free(e);
    assert_int_equal(access(out, F_OK), -1);
    const char *usage[] = {"export", "--db", db, "--version", "x1", "--out", out, NULL};
    assert_int_equal(run_fedctl(usage, "x.out"), 2);
    const char *noout[] = {"export", "--db", db, NULL};
    assert_int_equal(run_fedctl(noout, "x.out"), 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_has_weighted_loss_clients_and_time_per_training_round),
        cmocka_unit_test(test_each_row_carries_the_accuracy_of_its_evaluation_round),
        cmocka_unit_test(test_follow_until_returns_once_the_round_is_printed),
        cmocka_unit_test(test_rounds_bad_usage_and_missing_database_are_bad_input),
        cmocka_unit_test(test_export_writes_the_stored_version_as_safetensors),
        cmocka_unit_test(test_export_refuses_missing_pruned_and_corrupt_versions),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
