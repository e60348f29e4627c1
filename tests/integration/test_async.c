/* test_async.c: asynchronous mode (FedBuff) with the real daemon and real SDK clients over TLS:
 * fast clients advance the version while slow ones train, each committed version is the exact
 * buffer mean of its participants' deltas, a slow update past max_staleness is refused with the
 * reason at the client and in the store, and a SIGKILL mid-buffer restarts from the newest
 * committed version with the open buffer discarded. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <stdlib.h>

#include "core/alloc.h"
#include "tests/integration/harness.h"

#define ROWS 2
#define COLS 3
#define NUMEL (ROWS * COLS)

/* Starts a daemon in async mode with w0[k] = k + 1 and the given [round] keys; [aggregator] is
 * fedbuff with `params`. */
static void start_async(it_env *e, const char *name, const char *round_keys, const char *params,
                        const char *const *sets) {
    if (it_env_init(e, name) != 0)
        fail_msg("%s", e->why);
    float w0[NUMEL];
    for (size_t k = 0; k < NUMEL; k++)
        w0[k] = (float)(k + 1);
    const char *names[1] = {"w"};
    const uint32_t ndim[1] = {2};
    const uint64_t shapes[1][FC_MAX_DIMS] = {{ROWS, COLS}};
    const float *data[1] = {w0};
    char init[IT_PATH_MAX], sections[2048];
    fc_error err = {0};
    snprintf(init, sizeof init, "%.500s/init.safetensors", e->dir);
    if (it_write_model_f32(init, 1, names, ndim, shapes, data, &err) != 0)
        fail_msg("initial model: %s", err.msg);
    snprintf(sections, sizeof sections,
             "[round]\nmode = async\ninitial_model = %s\nround_timeout = 60s\n%s\n"
             "[aggregator]\nrule = fedbuff\nparams = \"%s\"\n[storage]\nkeep_last = 100\n",
             init, round_keys, params);
    if (it_daemon_start(e, sections, sets, 20) != 0)
        fail_msg("%s", e->why);
}

/* What a client does: sleep `first_ms` before its first update and `ms` before the others, and
 * before its first update also wait until the store holds `versions_ahead` versions newer than
 * its task's (so that "slow" does not depend on the machine's load); then send `value`. */
typedef struct speed {
    unsigned first_ms, ms;
    float value;
    uint64_t versions_ahead;
} speed;

static void wait_versions(it_worker *w, uint64_t target) {
    uint64_t end = it_now_ms() + 30000;
    for (int64_t latest = 0; (uint64_t)latest < target && it_now_ms() < end; it_sleep_ms(20)) {
        store *s = NULL;
        if (it_store_open(w->env, &s, NULL) == FC_OK)
            store_latest_version(s, &latest, NULL);
        store_close(s);
    }
}

static it_action plan_speed(it_worker *w, const fc_task *t, const float *model, float *delta,
                            size_t numel, uint64_t *num_examples) {
    (void)model;
    const speed *sp = w->ud;
    it_sleep_ms(w->tasks == 0 ? sp->first_ms : sp->ms);
    if (w->tasks == 0 && sp->versions_ahead)
        wait_versions(w, fc_task_model_version(t) + sp->versions_ahead);
    for (size_t k = 0; k < numel; k++)
        delta[k] = sp->value;
    *num_examples = 1;
    return IT_SUBMIT;
}

static void worker_init(it_worker *w, it_env *e, const char *name, const char *token,
                        speed *sp, int max_tasks) {
    memset(w, 0, sizeof *w);
    w->env = e;
    w->name = name;
    w->token = token;
    w->plan = plan_speed;
    w->ud = sp;
    w->retry = 1;
    w->wait_ms = 60000;
    w->max_tasks = max_tasks;
}

static store *open_store(it_env *e) {
    store *s = NULL;
    fc_error err = {0};
    if (it_store_open(e, &s, &err) != FC_OK)
        fail_msg("store: %s", err.msg);
    return s;
}

/* The value client `name` sends (its first letter: f = fast 1, s = slow 10, ...). */
typedef float (*value_of_fn)(const char *name);

/* Every committed version v+1 of rounds first..last equals v plus the uniform mean of its
 * accepted participants' values (constant staleness weight); returns the number of accepted
 * participants named with prefix `who` and the smallest base version of a round holding one. */
static void check_chain(it_env *e, int64_t first, int64_t last, value_of_fn value_of,
                        const char *who, size_t *n_who, int64_t *min_base_who) {
    store *s = open_store(e);
    fc_error err = {0};
    *n_who = 0;
    *min_base_who = INT64_MAX;
    for (int64_t id = first; id <= last; id++) {
        store_round r;
        memset(&r, 0, sizeof r);
        assert_int_equal(store_round_get(s, id, &r, &err), FC_OK);
        if (r.state != STORE_ROUND_COMMITTED)
            fail_msg("round %lld is not committed (state %d, %s)", (long long)id, (int)r.state,
                     r.failure_reason ? r.failure_reason : "");
        it_participant p[16];
        size_t n = 0;
        assert_int_equal(it_participants(s, id, p, 16, &n, &err), FC_OK);
        double sum = 0;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (p[i].outcome != STORE_OUTCOME_ACCEPTED)
                continue;
            sum += value_of(p[i].client);
            k++;
            if (strncmp(p[i].client, who, strlen(who)) == 0) {
                (*n_who)++;
                if (r.base_version < *min_base_who)
                    *min_base_who = r.base_version;
            }
        }
        assert_int_equal(k, 2); /* buffer_size */
        float *before = NULL, *after = NULL;
        size_t m = 0;
        assert_int_equal(it_model_read_f32(s, r.base_version, &before, &m, &err), FC_OK);
        assert_int_equal(it_model_read_f32(s, r.model_version, &after, &m, &err), FC_OK);
        assert_int_equal(r.model_version, r.base_version + 1);
        for (size_t j = 0; j < m; j++)
            if (after[j] != before[j] + (float)(sum / 2))
                fail_msg("round %lld element %zu: %g, expected %g + %g", (long long)id, j,
                         (double)after[j], (double)before[j], sum / 2);
        fc_free(before);
        fc_free(after);
        store_round_clear(&r);
    }
    assert_int_equal(store_verify(s, NULL, &err), FC_OK);
    store_close(s);
}

static long long json_int_at(json_t *o, const char *a, const char *b) {
    json_t *v = json_object_get(o, a);
    if (b)
        v = json_object_get(v, b);
    if (!json_is_integer(v))
        fail_msg("status: %s%s%s is not an integer", a, b ? "." : "", b ? b : "");
    return (long long)json_integer_value(v);
}

/* The value of the exposition line "name value". */
static double metric(const char *text, const char *name) {
    size_t n = strlen(name);
    for (const char *p = text; (p = strstr(p, name)) != NULL; p += n)
        if ((p == text || p[-1] == '\n') && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    fail_msg("metric %s not exported", name);
    return -1;
}

/* The mixed run as operators see it: /v1/status and /metrics after 14 buffers of 2, two of the
 * 28 updates (the slow ones) at least 2 versions stale. */
static void check_http(it_env *e) {
    int port = it_http_port(e, 20);
    assert_true(port > 0);
    it_http_reply r;
    char why[256];
    if (it_http(port, "GET", "/v1/status", NULL, &r, why, sizeof why) != 0)
        fail_msg("%s", why);
    assert_int_equal(r.status, 200);
    json_t *o = json_loads(r.body, 0, NULL);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "mode")), "async");
    assert_int_equal(json_int_at(o, "async", "buffer_size"), 2);
    assert_int_equal(json_int_at(o, "async", "concurrency"), 4);
    assert_int_equal(json_int_at(o, "async", "in_flight"), 0); /* stopped: tasks cancelled */
    assert_int_equal(json_int_at(o, "versions_per_minute", NULL), 14);
    json_decref(o);
    it_http_reply_free(&r);
    if (it_http(port, "GET", "/metrics", NULL, &r, why, sizeof why) != 0)
        fail_msg("%s", why);
    assert_int_equal(r.status, 200);
    /* values are written in the shortest exact form (20 may read "2e+01") */
    assert_true(metric(r.body, "fedcoord_update_staleness_count") == 28);
    assert_true(metric(r.body, "fedcoord_update_staleness_bucket{le=\"1\"}") <= 26);
    assert_true(metric(r.body, "fedcoord_buffer_size") == 2);
    it_http_reply_free(&r);
}

static float fast_or_slow(const char *name) { return name[0] == 's' ? 10.0f : 1.0f; }

/* Two fast clients (100 ms per update) and two slow ones (one update, sent once two newer
 * versions exist), K = 2,
 * concurrency 4: the fast clients commit versions while the slow ones train, the slow updates
 * land in a later buffer with their staleness, and every version is the exact buffer mean. */
static void test_fast_clients_advance_versions_while_slow_ones_train(void **state) {
    (void)state;
    it_env e;
    const char *const http_on[] = {"http.enabled=true", "http.port=0", NULL};
    start_async(&e, "mixed",
                "buffer_size = 2\nconcurrency = 4\nmax_staleness = 100\nmax_rounds = 14\n",
                "staleness_fn=constant", http_on);
    char tf1[64], tf2[64], ts1[64], ts2[64];
    if (it_client_add(&e, "f1", tf1) || it_client_add(&e, "f2", tf2) ||
        it_client_add(&e, "s1", ts1) || it_client_add(&e, "s2", ts2))
        fail_msg("%s", e.why);
    speed fast = {100, 100, 1.0f, 0}, slow = {300, 0, 10.0f, 2};
    it_worker w[4];
    worker_init(&w[0], &e, "f1", tf1, &fast, 0);
    worker_init(&w[1], &e, "f2", tf2, &fast, 0);
    worker_init(&w[2], &e, "s1", ts1, &slow, 1);
    worker_init(&w[3], &e, "s2", ts2, &slow, 1);
    for (int i = 0; i < 4; i++)
        assert_int_equal(it_worker_start(&w[i]), 0);
    for (int i = 0; i < 4; i++)
        it_worker_join(&w[i]);
    for (int i = 0; i < 4; i++) {
        if (w[i].fail[0])
            fail_msg("%s", w[i].fail);
        if (w[i].open_st != FC_OK)
            fail_msg("%s: %s", w[i].name, w[i].open_err);
    }
    /* the slow clients trained from the first version and were accepted */
    for (int i = 2; i < 4; i++) {
        assert_int_equal(w[i].version[0], 1);
        if (w[i].submit_st[0] != FC_OK)
            fail_msg("%s: %s", w[i].name, w[i].submit_err[0]);
    }
    assert_true(w[0].done && w[1].done); /* Bye at max_rounds */
    size_t n_slow = 0;
    int64_t min_base_slow = 0;
    check_chain(&e, 1, 14, fast_or_slow, "s", &n_slow, &min_base_slow);
    assert_int_equal(n_slow, 2);
    /* versions advanced while the slow clients trained */
    assert_true(min_base_slow >= 3);
    assert_true(it_log_contains(&e, "async buffer: collecting 2 updates"));
    check_http(&e);
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

/* K = 1 and max_staleness = 2: a fast client commits a version about every 100 ms; a slow
 * update sent once three newer versions exist is refused as stale: the client gets the reason,
 * the store records it, and no version contains it. */
static void test_stale_update_is_refused_and_recorded(void **state) {
    (void)state;
    it_env e;
    start_async(&e, "stale",
                "buffer_size = 1\nconcurrency = 2\nmax_staleness = 2\nmax_rounds = 14\n",
                "staleness_fn=poly,a=0.5", NULL);
    char tf[64], ts[64];
    if (it_client_add(&e, "f1", tf) || it_client_add(&e, "s1", ts))
        fail_msg("%s", e.why);
    speed fast = {100, 100, 1.0f, 0}, slow = {300, 0, 10.0f, 3};
    it_worker wf, ws;
    worker_init(&wf, &e, "f1", tf, &fast, 0);
    worker_init(&ws, &e, "s1", ts, &slow, 1);
    assert_int_equal(it_worker_start(&wf), 0);
    assert_int_equal(it_worker_start(&ws), 0);
    it_worker_join(&ws);
    if (ws.submit_st[0] != FC_ERR_REQUIREMENT)
        fail_msg("the slow update (version %llu): %s, %s", (unsigned long long)ws.version[0],
                 fc_status_name(ws.submit_st[0]), ws.submit_err[0]);
    if (!strstr(ws.submit_err[0], "stale") || !strstr(ws.submit_err[0], "max_staleness 2"))
        fail_msg("client message: %s", ws.submit_err[0]);
    it_worker_join(&wf); /* Bye at max_rounds */
    if (wf.fail[0] || !wf.done)
        fail_msg("fast client: %s %s", wf.fail, wf.end_err);
    store *s = open_store(&e);
    fc_error err = {0};
    int found = 0;
    int64_t latest = 0;
    assert_int_equal(store_latest_version(s, &latest, &err), FC_OK);
    float *w = NULL;
    size_t m = 0;
    for (int64_t id = 1; id <= latest + 2; id++) {
        it_participant p[8];
        size_t n = 0;
        if (it_participants(s, id, p, 8, &n, &err) != FC_OK)
            continue;
        for (size_t i = 0; i < n; i++)
            if (strcmp(p[i].client, "s1") == 0) {
                assert_int_equal(p[i].outcome, STORE_OUTCOME_REJECTED);
                assert_non_null(strstr(p[i].reason, "stale"));
                found = 1;
            }
    }
    assert_true(found);
    /* every committed update was a fast one: the fast client rests until its buffer commits,
     * so each buffer is one fresh update (staleness 0, weight 1) that adds exactly 1 */
    assert_int_equal(latest, 15);
    assert_int_equal(it_model_read_f32(s, latest, &w, &m, &err), FC_OK);
    for (size_t k = 0; k < m; k++)
        assert_true(w[k] == (float)(k + 1) + 14.0f);
    fc_free(w);
    assert_int_equal(store_verify(s, NULL, &err), FC_OK);
    store_close(s);
    assert_true(it_log_contains(&e, "stale"));
    it_daemon_kill(&e);
    it_env_cleanup(&e);
}

static float ab_value(const char *name) { return name[0] == 'b' ? 3.0f : 1.0f; }

/* K = 2: client a's update waits in the open buffer while b trains (3 s); the daemon is
 * SIGKILLed and restarted. The open buffer (round 1) is FAILED "coordinator restarted" and its
 * update discarded, version 1 is untouched, tasks restart from version 1 in round 2, and the
 * following versions are exact buffer means. */
static void test_restart_discards_the_open_buffer_and_continues(void **state) {
    (void)state;
    it_env e;
    start_async(&e, "restart",
                "buffer_size = 2\nconcurrency = 2\nmax_staleness = 10\nmax_rounds = 3\n",
                "staleness_fn=constant", NULL);
    char ta[64], tb[64];
    if (it_client_add(&e, "a", ta) || it_client_add(&e, "b", tb))
        fail_msg("%s", e.why);
    speed fa = {0, 0, 1.0f, 0}, fb = {3000, 0, 3.0f, 0};
    it_worker wa, wb;
    worker_init(&wa, &e, "a", ta, &fa, 0);
    worker_init(&wb, &e, "b", tb, &fb, 0);
    assert_int_equal(it_worker_start(&wa), 0);
    assert_int_equal(it_worker_start(&wb), 0);
    uint64_t t0 = it_now_ms();
    while (!it_log_contains(&e, "msg=\"update accepted\"") && it_now_ms() - t0 < 20000)
        it_sleep_ms(20);
    if (!it_log_contains(&e, "msg=\"update accepted\""))
        fail_msg("no update accepted before the kill");
    store *s = open_store(&e);
    float *v1 = NULL;
    size_t n = 0;
    fc_error err = {0};
    assert_int_equal(it_model_read_f32(s, 1, &v1, &n, &err), FC_OK);
    store_close(s);
    if (it_daemon_kill_restart(&e, 20) != 0)
        fail_msg("restart: %s", e.why);
    it_worker_join(&wa);
    it_worker_join(&wb);
    if (!wa.done || !wb.done)
        fail_msg("clients did not finish: a: %s / b: %s", wa.end_err, wb.end_err);
    s = open_store(&e);
    store_round r;
    assert_int_equal(store_round_get(s, 1, &r, &err), FC_OK);
    assert_int_equal(r.state, STORE_ROUND_FAILED);
    assert_string_equal(r.failure_reason, "coordinator restarted");
    store_round_clear(&r);
    float *again = NULL;
    assert_int_equal(it_model_read_f32(s, 1, &again, &n, &err), FC_OK);
    assert_memory_equal(again, v1, n * sizeof *v1);
    assert_int_equal(store_round_get(s, 2, &r, &err), FC_OK);
    assert_int_equal(r.base_version, 1);
    store_round_clear(&r);
    store_close(s);
    fc_free(v1);
    fc_free(again);
    size_t n_b = 0;
    int64_t min_base_b = 0;
    check_chain(&e, 2, 4, ab_value, "b", &n_b, &min_base_b);
    assert_int_equal(n_b, 3); /* b is in every buffer after the restart */
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fast_clients_advance_versions_while_slow_ones_train),
        cmocka_unit_test(test_stale_update_is_refused_and_recorded),
        cmocka_unit_test(test_restart_discards_the_open_buffer_and_continues),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
