/* test_lifecycle.c: the daemon's life and its refusals, with a real process and real SDK clients
 * over TLS: SIGKILL in the middle of a round and a restart, an orderly SIGTERM, a bad token, a
 * client revoked while connected, updates with the wrong shape or NaN, and a client that dies in
 * the middle of its upload. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "tests/integration/harness.h"


/* Starts a daemon whose initial model is w [rows, cols] with w0[k] = k + 1. */
static void start_sized(it_env *e, const char *name, const char *round_keys,
                        const char *const *sets, uint64_t rows, uint64_t cols) {
    if (it_env_init(e, name) != 0)
        fail_msg("%s", e->why);
    float *w0 = fc_mallocarray((size_t)(rows * cols), sizeof *w0);
    assert_non_null(w0);
    for (size_t k = 0; k < rows * cols; k++)
        w0[k] = (float)(k + 1);
    const char *names[1] = {"w"};
    const uint32_t ndim[1] = {2};
    const uint64_t shapes[1][FC_MAX_DIMS] = {{rows, cols}};
    const float *data[1] = {w0};
    char init[IT_PATH_MAX], sections[2048];
    fc_error err = {0};
    snprintf(init, sizeof init, "%.500s/init.safetensors", e->dir);
    if (it_write_model_f32(init, 1, names, ndim, shapes, data, &err) != 0)
        fail_msg("initial model: %s", err.msg);
    fc_free(w0);
    snprintf(sections, sizeof sections, "[round]\ninitial_model = %s\n%s", init, round_keys);
    if (it_daemon_start(e, sections, sets, 20) != 0)
        fail_msg("%s", e->why);
}

static void start(it_env *e, const char *name, const char *round_keys, const char *const *sets) {
    start_sized(e, name, round_keys, sets, 2, 3);
}

static void add(it_env *e, const char *name, char *token) {
    if (it_client_add(e, name, token) != 0)
        fail_msg("%s", e->why);
}

static store *open_store(it_env *e) {
    store *s = NULL;
    fc_error err = {0};
    if (it_store_open(e, &s, &err) != FC_OK)
        fail_msg("store: %s", err.msg);
    return s;
}

/* delta = +1 everywhere, except in rounds listed in the hold mask (answer nothing) */
typedef struct plan_ud {
    uint64_t hold_mask;
    int held;
} plan_ud;

static it_action plan_ones(it_worker *w, const fc_task *t, const float *model, float *delta,
                           size_t numel, uint64_t *num_examples) {
    (void)model;
    plan_ud *p = w->ud;
    uint64_t r = fc_task_round(t);
    if (p && r < 64 && (p->hold_mask >> r) & 1 && !p->held) {
        p->held = 1;
        return IT_HOLD;
    }
    for (size_t k = 0; k < numel; k++)
        delta[k] = 1;
    *num_examples = 1;
    return IT_SUBMIT;
}

static void worker_init(it_worker *w, it_env *e, const char *name, const char *token, void *ud) {
    memset(w, 0, sizeof *w);
    w->env = e;
    w->name = name;
    w->token = token;
    w->plan = plan_ones;
    w->ud = ud;
    w->retry = 1;
    w->wait_ms = 60000;
}

/* Rounds 1 and 2 commit; both clients hold their first round-3 task; the daemon is SIGKILLed
 * while round 3 trains and restarted on the same port and data. The earlier rounds and versions
 * are intact, round 3 is FAILED "coordinator restarted", numbering continues, and the clients
 * (which reconnect on their own) finish max_rounds = 3 training rounds: version 4 = w0 + 3. */
static void test_sigkill_mid_round_then_restart_continues(void **state) {
    (void)state;
    it_env e;
    start(&e, "sigkill",
          "min_clients = 2\nclients_per_round = 2\nmin_updates = 2\nmax_rounds = 3\n"
          "round_timeout = 60s\n",
          NULL);
    char ta[64], tb[64];
    add(&e, "a", ta);
    add(&e, "b", tb);
    plan_ud ua = {1u << 3, 0}, ub = {1u << 3, 0};
    it_worker wa, wb;
    worker_init(&wa, &e, "a", ta, &ua);
    worker_init(&wb, &e, "b", tb, &ub);
    wa.retry = wb.retry = 1;
    assert_int_equal(it_worker_start(&wa), 0);
    assert_int_equal(it_worker_start(&wb), 0);
    if (it_wait_round_exists(&e, 3, 30) != 0)
        fail_msg("round 3 never started: %s", e.why);
    it_sleep_ms(300); /* both hold their round-3 task */
    store *s = open_store(&e);
    float *v3 = NULL;
    size_t n = 0;
    fc_error err = {0};
    assert_int_equal(it_model_read_f32(s, 3, &v3, &n, &err), FC_OK);
    store_close(s);
    if (it_daemon_kill_restart(&e, 20) != 0)
        fail_msg("restart: %s", e.why);
    it_worker_join(&wa);
    it_worker_join(&wb);
    if (!wa.done || !wb.done)
        fail_msg("clients did not finish: a: %s / b: %s", wa.end_err, wb.end_err);
    assert_true(it_log_contains(&e, "rounds in flight at the last stop marked failed"));
    s = open_store(&e);
    store_round r;
    assert_int_equal(store_round_get(s, 3, &r, &err), FC_OK);
    assert_int_equal(r.state, STORE_ROUND_FAILED);
    assert_string_equal(r.failure_reason, "coordinator restarted");
    store_round_clear(&r);
    for (int64_t id = 1; id <= 2; id++) {
        assert_int_equal(store_round_get(s, id, &r, &err), FC_OK);
        assert_int_equal(r.state, STORE_ROUND_COMMITTED);
        assert_int_equal(r.model_version, id + 1);
        store_round_clear(&r);
    }
    float *again = NULL, *v4 = NULL;
    assert_int_equal(it_model_read_f32(s, 3, &again, &n, &err), FC_OK);
    assert_memory_equal(again, v3, n * sizeof *v3); /* committed state untouched */
    assert_int_equal(it_model_read_f32(s, 4, &v4, &n, &err), FC_OK);
    for (size_t k = 0; k < n; k++)
        assert_true(v4[k] == (float)(k + 1) + 3.0f);
    int64_t latest = 0;
    assert_int_equal(store_latest_version(s, &latest, &err), FC_OK);
    assert_int_equal(latest, 4);
    assert_int_equal(store_verify(s, NULL, &err), FC_OK);
    fc_free(v3);
    fc_free(again);
    fc_free(v4);
    store_close(s);
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

/* SIGTERM while a round trains: exit 0, the round recorded FAILED "coordinator stopping", the
 * log says stopped, the store verifies. */
static void test_sigterm_stops_in_order(void **state) {
    (void)state;
    it_env e;
    start(&e, "sigterm",
          "min_clients = 2\nclients_per_round = 2\nmin_updates = 2\nround_timeout = 60s\n", NULL);
    char ta[64], tb[64];
    add(&e, "a", ta);
    add(&e, "b", tb);
    plan_ud hold = {1u << 1, 0};
    it_worker wa, wb;
    worker_init(&wa, &e, "a", ta, NULL);
    worker_init(&wb, &e, "b", tb, &hold); /* b never answers round 1 */
    wa.retry = wb.retry = 0;
    assert_int_equal(it_worker_start(&wa), 0);
    assert_int_equal(it_worker_start(&wb), 0);
    if (it_wait_round_exists(&e, 1, 30) != 0)
        fail_msg("%s", e.why);
    it_sleep_ms(300);
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_worker_join(&wa);
    it_worker_join(&wb);
    assert_true(it_log_contains(&e, "msg=stopped"));
    store *s = open_store(&e);
    fc_error err = {0};
    store_round r;
    assert_int_equal(store_round_get(s, 1, &r, &err), FC_OK);
    assert_int_equal(r.state, STORE_ROUND_FAILED);
    assert_string_equal(r.failure_reason, "coordinator stopping");
    store_round_clear(&r);
    assert_int_equal(store_verify(s, NULL, &err), FC_OK);
    store_close(s);
    it_env_cleanup(&e);
}

/* A wrong token is refused with a clear error and no retry; a revoked client loses its live
 * session within the daemon's revocation poll and cannot log in again. */
static void test_bad_token_refused_and_revoked_client_disconnected(void **state) {
    (void)state;
    it_env e;
    start(&e, "auth", "min_clients = 3\nclients_per_round = 3\nmin_updates = 3\n", NULL);
    char ta[64];
    add(&e, "alice", ta);
    fc_client *c = NULL;
    assert_int_equal(it_client_open(&e, "alice", "not-the-token", 0, &c), FC_ERR_AUTH);
    assert_non_null(strstr(fc_client_error(c), "unknown client or wrong token"));
    fc_client_close(c);
    c = NULL;
    /* alice connects (no round starts: 3 clients needed) and waits for a task */
    it_worker w;
    worker_init(&w, &e, "alice", ta, NULL);
    w.retry = 0;
    w.wait_ms = 30000;
    assert_int_equal(it_worker_start(&w), 0);
    it_sleep_ms(500);
    assert_int_equal(it_client_revoke(&e, "alice"), 0);
    uint64_t t0 = it_now_ms();
    it_worker_join(&w);
    uint64_t took = it_now_ms() - t0;
    if (!strstr(w.end_err, "client revoked"))
        fail_msg("alice's session ended with: %s", w.end_err);
    assert_true(took < 5000);
    assert_int_equal(it_client_open(&e, "alice", ta, 0, &c), FC_ERR_AUTH);
    assert_non_null(strstr(fc_client_error(c), "revoked"));
    fc_client_close(c);
    assert_true(it_log_contains(&e, "msg=\"client revoked\" client=alice session=closed"));
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

/* Round 1 selects good, shape and nan:
 *   good submits +1;
 *   shape announces w as [3,2] (raw upload): SHAPE_MISMATCH at the client, recorded;
 *   nan submits a NaN: NON_FINITE at the client, recorded.
 * Rejections count as answers, so the round closes at once and commits from good alone
 * (min_updates 1): w0 + 1, with the two others recorded with their reasons. */
static it_action plan_nan(it_worker *w, const fc_task *t, const float *model, float *delta,
                          size_t numel, uint64_t *num_examples) {
    (void)w, (void)t, (void)model;
    for (size_t k = 0; k < numel; k++)
        delta[k] = k == 2 ? 0.0f / 0.0f : 1.0f;
    *num_examples = 1;
    return IT_SUBMIT;
}

typedef struct raw_job {
    it_env *e;
    const char *name, *token;
    uint32_t ndim;
    uint64_t shape[2];
    uint64_t send_bytes;
    fc_status st;
    char err[512];
    int weights; /* send full weights w_t + 1 instead of the delta 1 */
} raw_job;

static void *raw_main(void *arg) {
    raw_job *j = arg;
    fc_client *c = NULL;
    fc_task *t = NULL;
    j->st = it_client_open(j->e, j->name, j->token, 0, &c);
    if (j->st == FC_OK)
        j->st = fc_client_next_task(c, 30000, &t);
    if (j->st == FC_OK && t) {
        size_t count = (size_t)(j->shape[0] * j->shape[1]);
        float *data = fc_mallocarray(count, sizeof *data);
        if (!data) {
            j->st = FC_ERR_NOMEM;
            goto out;
        }
        for (size_t k = 0; k < count; k++)
            data[k] = 1;
        if (j->weights) { /* the trained weights: this task's model plus one */
            size_t at = 0;
            for (size_t i = 0; i < fc_task_tensor_count(t); i++) {
                fc_tensor_info info;
                fc_task_tensor(t, i, &info);
                for (size_t k = 0; k < (size_t)info.numel && at < count; k++)
                    data[at++] += ((const float *)info.data)[k];
            }
        }
        fc_tensor_spec spec;
        memset(&spec, 0, sizeof spec);
        spec.name = "w";
        spec.dtype = FC_DTYPE_F32;
        spec.ndim = j->ndim;
        spec.shape[0] = j->shape[0];
        spec.shape[1] = j->shape[1];
        j->st = it_raw_upload_kind(c, fc_task_round(t), fc_task_model_version(t), &spec, 1, data,
                                   count * sizeof *data, j->send_bytes, 1, !j->weights);
        fc_free(data);
    }
out:
    snprintf(j->err, sizeof j->err, "%s", c ? fc_client_error(c) : "");
    fc_task_free(t);
    fc_client_close(c);
    return NULL;
}

static void test_bad_updates_are_rejected_and_the_round_commits_from_the_others(void **state) {
    (void)state;
    it_env e;
    start(&e, "reject",
          "min_clients = 3\nclients_per_round = 3\nmin_updates = 1\nmax_rounds = 1\n"
          "round_timeout = 30s\n",
          NULL);
    char tg[64], ts[64], tn[64];
    add(&e, "good", tg);
    add(&e, "shape", ts);
    add(&e, "nan", tn);
    it_worker wg, wn;
    worker_init(&wg, &e, "good", tg, NULL);
    worker_init(&wn, &e, "nan", tn, NULL);
    wn.plan = plan_nan;
    wg.retry = wn.retry = 0;
    raw_job js = {&e, "shape", ts, 2, {3, 2}, UINT64_MAX, 0, "", 0};
    pthread_t ths;
    assert_int_equal(it_worker_start(&wg), 0);
    assert_int_equal(it_worker_start(&wn), 0);
    assert_int_equal(pthread_create(&ths, NULL, raw_main, &js), 0);
    pthread_join(ths, NULL);
    it_worker_join(&wg);
    it_worker_join(&wn);
    assert_int_equal(js.st, FC_ERR_SHAPE);
    if (!strstr(js.err, "shape [3,2], round expects [2,3]"))
        fail_msg("shape client saw: %s", js.err);
    assert_int_equal(wn.submit_st[0], FC_ERR_NON_FINITE);
    if (!strstr(wn.submit_err[0], "NaN or infinite value in tensor 'w'"))
        fail_msg("nan client saw: %s", wn.submit_err[0]);
    assert_int_equal(wg.submit_st[0], FC_OK);
    if (it_wait_round_final(&e, 1, 20) != STORE_ROUND_COMMITTED)
        fail_msg("round 1 did not commit: %s", e.why);
    store *s = open_store(&e);
    fc_error err = {0};
    it_participant p[8];
    size_t n = 0;
    assert_int_equal(it_participants(s, 1, p, 8, &n, &err), FC_OK);
    assert_int_equal(n, 3);
    assert_string_equal(p[0].client, "good"); /* client-name order: good, nan, shape */
    assert_int_equal(p[0].outcome, STORE_OUTCOME_ACCEPTED);
    assert_int_equal(p[1].outcome, STORE_OUTCOME_REJECTED);
    if (!strstr(p[1].reason, "NON_FINITE"))
        fail_msg("nan's recorded reason: %s", p[1].reason);
    assert_int_equal(p[2].outcome, STORE_OUTCOME_REJECTED);
    if (!strstr(p[2].reason, "SHAPE_MISMATCH") || !strstr(p[2].reason, "[3,2]"))
        fail_msg("shape's recorded reason: %s", p[2].reason);
    float *v2 = NULL;
    assert_int_equal(it_model_read_f32(s, 2, &v2, &n, &err), FC_OK);
    for (size_t k = 0; k < n; k++)
        assert_true(v2[k] == (float)(k + 1) + 1.0f); /* only good's +1 */
    fc_free(v2);
    store_close(s);
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

/* A client sends 1 MiB of its 2 MiB update and its connection drops (no UpdateEnd, no Bye).
 * Nothing of it reaches the aggregate: at the deadline the round commits from good alone
 * (w0 + 1 exactly), and dies is recorded as not having delivered. */
static void test_client_killed_mid_upload_leaves_no_trace(void **state) {
    (void)state;
    it_env e;
    start_sized(&e, "midupload",
                "min_clients = 2\nclients_per_round = 2\nmin_updates = 1\nmax_rounds = 1\n"
                "round_timeout = 3s\n",
                NULL, 512, 1024);
    char tg[64], td[64];
    add(&e, "good", tg);
    add(&e, "dies", td);
    it_worker wg;
    worker_init(&wg, &e, "good", tg, NULL);
    wg.retry = 0;
    raw_job jd = {&e, "dies", td, 2, {512, 1024}, 1u << 20, 0, "", 0};
    pthread_t thd;
    assert_int_equal(it_worker_start(&wg), 0);
    assert_int_equal(pthread_create(&thd, NULL, raw_main, &jd), 0);
    pthread_join(thd, NULL);
    it_worker_join(&wg);
    assert_int_equal(jd.st, FC_OK); /* it dropped the connection itself */
    assert_int_equal(wg.submit_st[0], FC_OK);
    if (it_wait_round_final(&e, 1, 20) != STORE_ROUND_COMMITTED)
        fail_msg("round 1 did not commit: %s", e.why);
    store *s = open_store(&e);
    fc_error err = {0};
    it_participant p[4];
    size_t n = 0;
    assert_int_equal(it_participants(s, 1, p, 4, &n, &err), FC_OK);
    assert_int_equal(n, 2);
    assert_string_equal(p[0].client, "dies");
    assert_true(p[0].outcome == STORE_OUTCOME_DROPPED || p[0].outcome == STORE_OUTCOME_TIMED_OUT);
    assert_int_equal(p[1].outcome, STORE_OUTCOME_ACCEPTED);
    float *v2 = NULL;
    assert_int_equal(it_model_read_f32(s, 2, &v2, &n, &err), FC_OK);
    assert_int_equal(n, 512 * 1024);
    for (size_t k = 0; k < n; k++)
        if (v2[k] != (float)(k + 1) + 1.0f)
            fail_msg("element %zu: %.9g, expected %.9g", k, (double)v2[k],
                     (double)((float)(k + 1) + 1.0f));
    fc_free(v2);
    store_close(s);
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

/* An update sent as full trained weights (UpdateBegin.is_delta = false) is turned into a delta
 * against the round's base by the daemon: two clients, one sending the delta +1 and one the
 * weights w_t + 1, commit exactly w0 + 1. */
static void test_full_weight_updates_become_deltas(void **state) {
    (void)state;
    it_env e;
    start(&e, "weights",
          "min_clients = 2\nclients_per_round = 2\nmin_updates = 2\nmax_rounds = 1\n"
          "round_timeout = 30s\n",
          NULL);
    char ta[64], tb[64];
    add(&e, "delta", ta);
    add(&e, "weights", tb);
    raw_job ja = {&e, "delta", ta, 2, {2, 3}, UINT64_MAX, 0, "", 0};
    raw_job jb = {&e, "weights", tb, 2, {2, 3}, UINT64_MAX, 0, "", 1};
    pthread_t tha, thb;
    assert_int_equal(pthread_create(&tha, NULL, raw_main, &ja), 0);
    assert_int_equal(pthread_create(&thb, NULL, raw_main, &jb), 0);
    pthread_join(tha, NULL);
    pthread_join(thb, NULL);
    if (ja.st != FC_OK || jb.st != FC_OK)
        fail_msg("delta: %s / weights: %s", ja.err, jb.err);
    if (it_wait_round_final(&e, 1, 20) != STORE_ROUND_COMMITTED)
        fail_msg("round 1: %s", e.why);
    store *s = open_store(&e);
    fc_error err = {0};
    float *v2 = NULL;
    size_t n = 0;
    assert_int_equal(it_model_read_f32(s, 2, &v2, &n, &err), FC_OK);
    assert_int_equal(n, 6);
    for (size_t k = 0; k < n; k++)
        assert_true(v2[k] == (float)(k + 1) + 1.0f);
    fc_free(v2);
    store_close(s);
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigkill_mid_round_then_restart_continues),
        cmocka_unit_test(test_sigterm_stops_in_order),
        cmocka_unit_test(test_bad_token_refused_and_revoked_client_disconnected),
        cmocka_unit_test(test_bad_updates_are_rejected_and_the_round_commits_from_the_others),
        cmocka_unit_test(test_client_killed_mid_upload_leaves_no_trace),
        cmocka_unit_test(test_full_weight_updates_become_deltas),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
