/* test_rounds.c: whole rounds through the real daemon and real SDK clients over TLS: fedavg over
 * several rounds, fedau under a scripted participation pattern, median with an outlier, a
 * deadline below quorum, and a staging budget of one update (uploads taken in client-id order).
 * Every expected model is computed here by hand from the definitions in docs/aggregators.md, with
 * values chosen so that f32 holds them exactly. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "tests/integration/harness.h"
#include "tests/lib/testutil.h"

#define NPARAM 9 /* w [3,2] and b [3] */

/* Writes the initial model w0[k] = k/2 to DIR/init.safetensors and returns its path in out. */
static void write_initial(it_env *e, char *out, size_t cap) {
    static float w[6], b[3];
    for (int k = 0; k < 6; k++)
        w[k] = (float)k / 2;
    for (int k = 0; k < 3; k++)
        b[k] = (float)(6 + k) / 2;
    const char *names[2] = {"w", "b"};
    const uint32_t ndim[2] = {2, 1};
    const uint64_t shapes[2][FC_MAX_DIMS] = {{3, 2}, {3}};
    const float *data[2] = {w, b};
    fc_error err = {0};
    snprintf(out, cap, "%.500s/init.safetensors", e->dir);
    if (it_write_model_f32(out, 2, names, ndim, shapes, data, &err) != 0)
        fail_msg("initial model: %s", err.msg);
}

static void start(it_env *e, const char *name, const char *extra) {
    if (it_env_init(e, name) != 0)
        fail_msg("%s", e->why);
    char init[IT_PATH_MAX], sections[4096];
    write_initial(e, init, sizeof init);
    snprintf(sections, sizeof sections, "[round]\ninitial_model = %s\n%s", init, extra);
    if (it_daemon_start(e, sections, NULL, 20) != 0)
        fail_msg("%s", e->why);
}

static void check_model(it_env *e, int64_t version, const float *want) {
    store *s = NULL;
    fc_error err = {0};
    float *got = NULL;
    size_t n = 0;
    if (it_store_open(e, &s, &err) != FC_OK ||
        it_model_read_f32(s, version, &got, &n, &err) != FC_OK)
        fail_msg("reading version %lld: %s", (long long)version, err.msg);
    assert_int_equal(n, NPARAM);
    for (size_t k = 0; k < n; k++)
        if (got[k] != want[k])
            fail_msg("version %lld element %zu: %.9g, expected %.9g", (long long)version, k,
                     (double)got[k], (double)want[k]);
    fc_free(got);
    store_close(s);
}

/* ---- fedavg, 3 rounds ---- */

typedef struct scripted {
    float value; /* delta element k in round r: value * (k + 1) * r */
    uint64_t examples;
    uint64_t hold_rounds; /* bit r set: answer nothing in round r */
    unsigned delay_ms;    /* before answering */
} scripted;

static it_action plan_scripted(it_worker *w, const fc_task *t, const float *model, float *delta,
                               size_t numel, uint64_t *num_examples) {
    (void)model;
    scripted *sc = w->ud;
    uint64_t r = fc_task_round(t);
    if (r < 64 && (sc->hold_rounds >> r) & 1)
        return IT_HOLD;
    it_sleep_ms(sc->delay_ms);
    for (size_t k = 0; k < numel; k++)
        delta[k] = sc->value * (float)(k + 1) * (float)r;
    *num_examples = sc->examples;
    return IT_SUBMIT;
}

static void run_workers(it_env *e, const char *const *names, scripted *sc, size_t n, it_worker *w) {
    char tokens[8][64];
    for (size_t i = 0; i < n; i++) {
        if (it_client_add(e, names[i], tokens[i]) != 0)
            fail_msg("%s", e->why);
    }
    for (size_t i = 0; i < n; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].env = e;
        w[i].name = names[i];
        w[i].token = fc_strdup(tokens[i]);
        w[i].plan = plan_scripted;
        w[i].ud = &sc[i];
        w[i].wait_ms = 30000;
        assert_int_equal(it_worker_start(&w[i]), 0);
    }
    for (size_t i = 0; i < n; i++) {
        it_worker_join(&w[i]);
        fc_free((void *)w[i].token);
        if (w[i].fail[0])
            fail_msg("%s", w[i].fail);
        if (w[i].open_st != FC_OK)
            fail_msg("%s could not connect: %s", names[i], w[i].open_err);
        if (!w[i].done)
            fail_msg("%s ended without the server's done: %s", names[i], w[i].end_err);
    }
}

/* Weights 1, 1, 2 and deltas 1, 2, 4 (times (k+1)*r): D_r = (1 + 2 + 8)/4 (k+1) r = 2.75 (k+1) r,
 * so after rounds 1..3: w = w0 + 2.75 (k+1) * 6. Each committed version is checked. */
static void test_fedavg_rounds_commit_the_exact_weighted_mean(void **state) {
    (void)state;
    it_env e;
    start(&e, "fedavg",
          "min_clients = 3\nclients_per_round = 3\nmin_updates = 3\nmax_rounds = 3\n"
          "round_timeout = 30s\n");
    const char *names[3] = {"alice", "bob", "carol"};
    scripted sc[3] = {{1, 1, 0, 0}, {2, 1, 0, 0}, {4, 2, 0, 0}};
    it_worker w[3];
    run_workers(&e, names, sc, 3, w);
    float want[NPARAM];
    for (int r = 0; r <= 3; r++) {
        for (int k = 0; k < NPARAM; k++)
            want[k] = (float)k / 2 + 2.75f * (float)(k + 1) * (float)(r * (r + 1) / 2);
        check_model(&e, r + 1, want);
    }
    for (int i = 0; i < 3; i++)
        for (int t = 0; t < w[i].tasks; t++)
            if (w[i].submit_st[t] != FC_OK)
                fail_msg("%s round %llu: %s", names[i], (unsigned long long)w[i].round[t],
                         w[i].submit_err[t]);
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

/* ---- a staging budget of one update ---- */

#define BIG_PARAM 150000 /* 600 KB: one update fits the 1 MiB budget, two do not */

/* The lowest client id answers last. The budget keeps room for it, so the two others wait for
 * budget ("room kept for client 1, next in fold order") and every update is taken in
 * client-id order: no update ever waits outside the budget for a lower id. Both rounds are the
 * exact weighted mean: D_r = (1 + 2 + 8)/4 (k+1) r. */
static void test_one_update_budget_takes_uploads_in_client_id_order(void **state) {
    (void)state;
    it_env e;
    if (it_env_init(&e, "budget1") != 0)
        fail_msg("%s", e.why);
    static float w0[BIG_PARAM];
    for (int k = 0; k < BIG_PARAM; k++)
        w0[k] = (float)(k % 64);
    const char *tname[1] = {"w"};
    const uint32_t ndim[1] = {1};
    const uint64_t shape[1][FC_MAX_DIMS] = {{BIG_PARAM}};
    const float *data[1] = {w0};
    char init[IT_PATH_MAX], sections[4096];
    fc_error err = {0};
    snprintf(init, sizeof init, "%.500s/init.safetensors", e.dir);
    if (it_write_model_f32(init, 1, tname, ndim, shape, data, &err) != 0)
        fail_msg("initial model: %s", err.msg);
    snprintf(sections, sizeof sections,
             "[round]\ninitial_model = %s\nmin_clients = 3\nclients_per_round = 3\n"
             "min_updates = 3\nmax_rounds = 2\nround_timeout = 30s\n[storage]\n"
             "staging_memory = 1MiB\nstaging_disk = 0\n",
             init);
    if (it_daemon_start(&e, sections, NULL, 20) != 0)
        fail_msg("%s", e.why);
    const char *names[3] = {"alice", "bob", "carol"}; /* client ids 1, 2, 3 */
    scripted sc[3] = {{1, 1, 0, 700}, {2, 1, 0, 0}, {4, 2, 0, 0}};
    it_worker w[3];
    run_workers(&e, names, sc, 3, w);
    store *s = NULL;
    float *got = NULL;
    size_t n = 0;
    if (it_store_open(&e, &s, &err) != FC_OK || it_model_read_f32(s, 3, &got, &n, &err) != FC_OK)
        fail_msg("reading version 3: %s", err.msg);
    assert_int_equal(n, BIG_PARAM);
    for (size_t k = 0; k < n; k++) {
        float want = (float)(k % 64) + 2.75f * (float)(k + 1);
        want += 2.75f * (float)(k + 1) * 2;
        if (got[k] != want)
            fail_msg("version 3 element %zu: %.9g, expected %.9g", k, (double)got[k], (double)want);
    }
    fc_free(got);
    store_close(s);
    if (!it_log_contains(&e, "room kept for client 1, next in fold order"))
        fail_msg("no upload waited for the room kept for client 1");
    /* in each round the updates were accepted in client-id order */
    char *log = fc_test_slurp(e.log, NULL);
    assert_non_null(log);
    for (int r = 1; r <= 2; r++) {
        const char *pos[3];
        for (int c = 0; c < 3; c++) {
            char pat[64];
            snprintf(pat, sizeof pat, "client=%d round=%d bytes=", c + 1, r);
            if (!(pos[c] = strstr(log, pat)))
                fail_msg("no accepted update of client %d in round %d", c + 1, r);
        }
        if (!(pos[0] < pos[1] && pos[1] < pos[2]))
            fail_msg("round %d: updates not accepted in client-id order", r);
    }
    free(log);
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

/* ---- fedau ---- */

/* N = 4 registered (dave never connects), lr = 1, no cutoff; deltas a = 1, b = 2, c = 4 per
 * element (the value ignores k and r here: see plan_fedau). Participation and fedau's weights
 * (docs/aggregators.md, lazy form; t = round - 1):
 *   round 1: a b c, every w = 1                  D = (1 + 2 + 4)/4     = 1.75
 *   round 2: a only (b, c hold), w_a = 1         D = 1/4               = 0.25
 *   round 3: a b c; b, c had a gap of 1 round, but their weight is the mean interval known
 *            before this round: w = 1 for all    D = 7/4               = 1.75
 *   round 4: b c (a holds); now w_b = w_c = (1 + 2)/2 = 1.5
 *                                                D = (1.5*2 + 1.5*4)/4 = 2.25
 * Total 6: every element of w ends at w0 + 6. */
static it_action plan_fedau(it_worker *w, const fc_task *t, const float *model, float *delta,
                            size_t numel, uint64_t *num_examples) {
    (void)model;
    scripted *sc = w->ud;
    uint64_t r = fc_task_round(t);
    if (r < 64 && (sc->hold_rounds >> r) & 1)
        return IT_HOLD;
    for (size_t k = 0; k < numel; k++)
        delta[k] = sc->value;
    *num_examples = sc->examples;
    return IT_SUBMIT;
}

static void test_fedau_follows_the_participation_pattern(void **state) {
    (void)state;
    it_env e;
    start(&e, "fedau",
          "min_clients = 3\nclients_per_round = 3\nmin_updates = 1\nmax_rounds = 4\n"
          "round_timeout = 2s\n[aggregator]\nrule = fedau\n");
    char tok[64];
    if (it_client_add(&e, "dave", tok) != 0) /* registered, never connects: N = 4 */
        fail_msg("%s", e.why);
    const char *names[3] = {"a", "b", "c"};
    /* hold bits: a holds in round 4, b and c in round 2 */
    scripted sc[3] = {{1, 5, 1u << 4, 0}, {2, 7, 1u << 2, 0}, {4, 9, 1u << 2, 0}};
    char tokens[3][64];
    it_worker w[3];
    for (int i = 0; i < 3; i++)
        if (it_client_add(&e, names[i], tokens[i]) != 0)
            fail_msg("%s", e.why);
    for (int i = 0; i < 3; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].env = &e;
        w[i].name = names[i];
        w[i].token = tokens[i];
        w[i].plan = plan_fedau;
        w[i].ud = &sc[i];
        assert_int_equal(it_worker_start(&w[i]), 0);
    }
    for (int i = 0; i < 3; i++)
        it_worker_join(&w[i]);
    for (int i = 0; i < 3; i++)
        if (w[i].fail[0] || !w[i].done)
            fail_msg("%s: %s / %s (%d tasks) | %s: %s %s | %s: %s %s", names[i], w[i].fail,
                     w[i].end_err, w[i].tasks, names[(i + 1) % 3], w[(i + 1) % 3].fail,
                     w[(i + 1) % 3].end_err, names[(i + 2) % 3], w[(i + 2) % 3].fail,
                     w[(i + 2) % 3].end_err);
    const float steps[4] = {1.75f, 0.25f, 1.75f, 2.25f};
    float want[NPARAM];
    float total = 0;
    for (int r = 0; r < 4; r++) {
        total += steps[r];
        for (int k = 0; k < NPARAM; k++)
            want[k] = (float)k / 2 + total;
        check_model(&e, r + 2, want);
    }
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

/* ---- median with an outlier ---- */

/* Five clients send (k+1)*r times 1, 2, 3, 4 and 1000: the coordinate-wise median is 3(k+1)r, so
 * the outlier moves nothing. */
static void test_median_ignores_an_outlier(void **state) {
    (void)state;
    it_env e;
    start(&e, "median",
          "min_clients = 5\nclients_per_round = 5\nmin_updates = 5\nmax_rounds = 2\n"
          "round_timeout = 30s\n[aggregator]\nrule = median\n");
    const char *names[5] = {"m1", "m2", "m3", "m4", "evil"};
    scripted sc[5] = {{1, 1, 0, 0}, {2, 1, 0, 0}, {3, 1, 0, 0}, {4, 1, 0, 0}, {1000, 1, 0, 0}};
    it_worker w[5];
    run_workers(&e, names, sc, 5, w);
    float want[NPARAM];
    for (int k = 0; k < NPARAM; k++)
        want[k] = (float)k / 2 + 3.0f * (float)(k + 1) * 3.0f; /* rounds 1 + 2 */
    check_model(&e, 3, want);
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

/* ---- deadline below quorum ---- */

/* min_updates 2 of 2; lazy holds in round 1: at the deadline round 1 FAILS with its reason and
 * participants, and round 2 starts and commits. */
static void test_deadline_below_quorum_fails_the_round_and_the_next_starts(void **state) {
    (void)state;
    it_env e;
    start(&e, "quorum",
          "min_clients = 2\nclients_per_round = 2\nmin_updates = 2\nmax_rounds = 1\n"
          "round_timeout = 1s\n");
    const char *names[2] = {"busy", "lazy"};
    scripted sc[2] = {{1, 1, 0, 0}, {1, 1, 1u << 1, 0}};
    it_worker w[2];
    run_workers(&e, names, sc, 2, w);
    store *s = NULL;
    fc_error err = {0};
    assert_int_equal(it_store_open(&e, &s, &err), FC_OK);
    store_round r;
    assert_int_equal(store_round_get(s, 1, &r, &err), FC_OK);
    assert_int_equal(r.state, STORE_ROUND_FAILED);
    if (!r.failure_reason || !strstr(r.failure_reason, "deadline passed with 1 of 2 required"))
        fail_msg("round 1 failure reason: %s", r.failure_reason ? r.failure_reason : "(none)");
    store_round_clear(&r);
    it_participant p[4];
    size_t n = 0;
    assert_int_equal(it_participants(s, 1, p, 4, &n, &err), FC_OK);
    assert_int_equal(n, 2);
    assert_string_equal(p[0].client, "busy");
    assert_int_equal(p[0].outcome, STORE_OUTCOME_ACCEPTED);
    assert_string_equal(p[1].client, "lazy");
    assert_int_equal(p[1].outcome, STORE_OUTCOME_TIMED_OUT);
    assert_int_equal(store_round_get(s, 2, &r, &err), FC_OK);
    assert_int_equal(r.state, STORE_ROUND_COMMITTED);
    assert_int_equal(r.model_version, 2);
    store_round_clear(&r);
    store_close(s);
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fedavg_rounds_commit_the_exact_weighted_mean),
        cmocka_unit_test(test_one_update_budget_takes_uploads_in_client_id_order),
        cmocka_unit_test(test_fedau_follows_the_participation_pattern),
        cmocka_unit_test(test_median_ignores_an_outlier),
        cmocka_unit_test(test_deadline_below_quorum_fails_the_round_and_the_next_starts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
