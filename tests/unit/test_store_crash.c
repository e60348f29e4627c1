/* test_store_crash.c: kill -9 at random moments must lose no committed round.
 *
 * A forked child commits rounds with 3-chunk models in a loop (and now and then begins a round,
 * prunes, appends events), reporting each version it committed through a pipe once
 * store_commit_round has returned. The parent SIGKILLs it at least CRASH_KILLS times: one run in
 * eight after a random delay from the start (start-up, migration, recovery), the others a random
 * delay after the child's first commit (inside the commit loop), and after every kill reopens the database like a restarting coordinator
 * and checks: integrity_check ok, the chain verifies, the newest version is at least the last
 * one reported committed, it reads back whole with the right bytes and SHA-256, its state blobs
 * and round record are present, and no partial version or running round is visible.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <sqlite3.h>

#include "storage/store.h"
#include "storage/store_internal.h"

#define CRASH_KILLS 200
#define CRASH_TIME_LIMIT_S 50.0
#define MAX_DELAY_US 10000
#define CHUNK 4096
#define MODEL_BYTES (3 * CHUNK - 100) /* three chunks, the last one short */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fill_pattern(uint8_t *p, size_t n, uint32_t seed) {
    uint32_t x = seed * 2654435761u + 7;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (uint8_t)x;
    }
}

static void state_text(char *out, size_t n, const char *what, int64_t v) {
    snprintf(out, n, "%s-state-of-version-%lld", what, (long long)v);
}

typedef struct src {
    const uint8_t *data;
    size_t len, pos;
} src;

static fc_status src_read(void *ud, void *buf, size_t cap, size_t *got, fc_error *err) {
    (void)err;
    src *s = ud;
    size_t n = s->len - s->pos;
    if (n > cap) n = cap;
    if (n > 1000) n = 1000; /* pieces smaller than a chunk */
    memcpy(buf, s->data + s->pos, n);
    s->pos += n;
    *got = n;
    return FC_OK;
}

static store_options crash_options(void) {
    store_options o = {.version = STORE_OPTIONS_V1, .chunk_size = CHUNK};
    return o;
}

/* The child: commit forever. Exit codes name the step that failed (never expected). */
static void child_loop(const char *path, int report_fd) {
    store *s = NULL;
    store_options opt = crash_options();
    fc_error err = {0};
    if (store_open(path, &opt, &s, &err) != FC_OK) _exit(10);
    store_recovery rec;
    if (store_recover(s, 1, &rec, &err) != FC_OK) _exit(11);
    int64_t v = rec.latest_version;
    int64_t round = rec.last_round;
    store_recovery_clear(&rec);
    uint8_t data[MODEL_BYTES];
    for (;;) {
        int64_t next = v + 1;
        round++;
        if (next % 3 == 0 &&
            store_round_begin(s, round, STORE_ROUND_TRAINING, v, "{}", 2, &err) != FC_OK)
            _exit(12);
        fill_pattern(data, sizeof data, (uint32_t)next);
        src in = {.data = data, .len = sizeof data};
        char rule[64], optst[64];
        state_text(rule, sizeof rule, "rule", next);
        state_text(optst, sizeof optst, "opt", next);
        store_participant p = {.client = "c1", .outcome = STORE_OUTCOME_ACCEPTED,
                               .num_examples = 3, .bytes = MODEL_BYTES};
        store_commit c = {
            .round_id = round, .version = next, .parent_version = v,
            .tensor_specs_json = "[{\"name\":\"w\",\"dtype\":\"f32\",\"shape\":[3047]}]",
            .model_size = sizeof data, .source = src_read, .source_ud = &in,
            .started_at = 2, .ended_at = 3, .report_json = "{}", .metrics_json = "{}",
            .participants = &p, .num_participants = 1,
            .rule_name = "fedavg", .optimizer_name = "sgd",
            .rule_state = rule, .rule_state_len = strlen(rule),
            .optimizer_state = optst, .optimizer_state_len = strlen(optst),
        };
        if (store_commit_round(s, &c, NULL, &err) != FC_OK) _exit(13);
        v = next;
        if (write(report_fd, &v, sizeof v) != (ssize_t)sizeof v) _exit(14);
        if (v % 4 == 0 && store_prune(s, 3, 5, v, 4, NULL, &err) != FC_OK) _exit(15);
        if (v % 5 == 0 && store_event_append(s, 5, "test.tick", 0, NULL, NULL, &err) != FC_OK)
            _exit(16);
    }
}

typedef struct checked {
    uint8_t *data;
    size_t len;
} checked;

static fc_status collect(void *ud, const void *d, size_t len, uint64_t off, fc_error *err) {
    (void)err;
    checked *c = ud;
    if (off != c->len || c->len + len > MODEL_BYTES) return FC_ERR_RANGE;
    memcpy(c->data + c->len, d, len);
    c->len += len;
    return FC_OK;
}

static int64_t scalar(store *s, const char *sql) {
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(s->db, sql, -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    int64_t n = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    return n;
}

/* Reopens after a kill and checks everything the issue lists. Returns the newest version. */
static int64_t check_after_kill(const char *path, int64_t reported, int iteration) {
    store *s = NULL;
    store_options opt = crash_options();
    fc_error err = {0};
    if (store_open(path, &opt, &s, &err) != FC_OK)
        fail_msg("kill %d: reopen failed: %s", iteration, fc_error_text(&err));
    store_verify_report rep;
    if (store_verify(s, &rep, &err) != FC_OK) /* integrity_check + chain + data hashes */
        fail_msg("kill %d: verify failed: %s", iteration, fc_error_text(&err));
    store_recovery rec;
    if (store_recover(s, 6, &rec, &err) != FC_OK)
        fail_msg("kill %d: recovery failed: %s", iteration, fc_error_text(&err));
    int64_t v = rec.latest_version;
    if (v < reported)
        fail_msg("kill %d: version %lld was reported committed but the newest is %lld", iteration,
                 (long long)reported, (long long)v);
    assert_int_equal(rep.head_version, v);
    if (v > 0) {
        /* Whole, with the right bytes: the SHA-256 is checked by the read itself. */
        uint8_t back[MODEL_BYTES], want[MODEL_BYTES];
        checked c = {.data = back};
        if (store_model_read(s, v, 0, collect, &c, &err) != FC_OK)
            fail_msg("kill %d: reading version %lld: %s", iteration, (long long)v,
                     fc_error_text(&err));
        assert_int_equal(c.len, MODEL_BYTES);
        fill_pattern(want, sizeof want, (uint32_t)v);
        assert_memory_equal(back, want, MODEL_BYTES);
        uint8_t sha[32];
        unsigned int n = 0;
        EVP_Digest(want, sizeof want, sha, &n, EVP_sha256(), NULL);
        store_model_info m;
        assert_int_equal(store_model_info_get(s, v, &m, &err), FC_OK);
        assert_memory_equal(m.sha256, sha, 32);
        assert_int_equal(m.num_chunks, 3);
        /* Its state. */
        char rule[64], optst[64];
        state_text(rule, sizeof rule, "rule", v);
        state_text(optst, sizeof optst, "opt", v);
        assert_int_equal(rec.state.rule_state_len, strlen(rule));
        assert_memory_equal(rec.state.rule_state, rule, strlen(rule));
        assert_int_equal(rec.state.optimizer_state_len, strlen(optst));
        assert_memory_equal(rec.state.optimizer_state, optst, strlen(optst));
        /* Its round record. */
        store_round r;
        assert_int_equal(store_round_get(s, m.round_id, &r, &err), FC_OK);
        assert_int_equal(r.state, STORE_ROUND_COMMITTED);
        assert_int_equal(r.model_version, v);
        store_round_clear(&r);
        store_model_info_clear(&m);
    }
    /* No partial version: every live version has all its chunks and its state; no orphans. */
    assert_int_equal(scalar(s, "SELECT count(*) FROM models m WHERE m.pruned_at IS NULL AND"
                               " (m.num_chunks != (SELECT count(*) FROM model_chunks c"
                               "  WHERE c.version = m.version)"
                               "  OR NOT EXISTS (SELECT 1 FROM state t WHERE t.version ="
                               "  m.version))"),
                     0);
    assert_int_equal(scalar(s, "SELECT count(*) FROM model_chunks WHERE version NOT IN"
                               " (SELECT version FROM models)"),
                     0);
    assert_int_equal(scalar(s, "SELECT count(*) FROM rounds WHERE state NOT IN"
                               " ('COMMITTED', 'FAILED')"),
                     0);
    store_recovery_clear(&rec);
    store_close(s);
    return v;
}

static void test_sigkill_at_random_moments_loses_no_committed_round(void **state) {
    (void)state;
    const char *dir = getenv("FC_TEST_TMPDIR");
    char tmpl[] = "/tmp/fc-test-crash.XXXXXX";
    if (!dir || !*dir) {
        dir = mkdtemp(tmpl);
        assert_non_null(dir);
    }
    char path[600];
    snprintf(path, sizeof path, "%s/crash-%d.db", dir, (int)getpid());
    unlink(path);
    unsigned seed = (unsigned)time(NULL);
    srand(seed);
    print_message("crash test seed %u\n", seed);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    assert_int_equal(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0);

    double start = now_s();
    int64_t reported = 0, newest = 0;
    int kills = 0, progressed = 0;
    while (kills < CRASH_KILLS) {
        if (now_s() - start > CRASH_TIME_LIMIT_S)
            fail_msg("only %d kills in %.0f s", kills, CRASH_TIME_LIMIT_S);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            child_loop(path, fds[1]);
        }
        if (kills % 8 == 0) {
            /* Some kills land during start-up: open, migration, recovery. */
            usleep((useconds_t)(rand() % 3000));
        } else {
            /* The rest land in the commit loop: wait until this child has committed once (so a
             * slow machine or a sanitizer build still gets there), then a random delay. */
            struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
            int ready = poll(&pfd, 1, 10000);
            if (ready != 1) {
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                fail_msg("kill %d: the child committed nothing in 10 s", kills + 1);
            }
            usleep((useconds_t)(rand() % MAX_DELAY_US));
        }
        assert_int_equal(kill(pid, SIGKILL), 0);
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
            fail_msg("child ended by itself (exit %d) before the kill", WEXITSTATUS(status));
        kills++;
        int64_t v;
        while (read(fds[0], &v, sizeof v) == (ssize_t)sizeof v)
            if (v > reported) reported = v;
        int64_t now_newest = check_after_kill(path, reported, kills);
        if (now_newest > newest) progressed++;
        newest = now_newest;
    }
    close(fds[0]);
    close(fds[1]);
    print_message("%d kills in %.1f s; %d runs made progress; newest version %lld; last "
                  "reported %lld\n",
                  kills, now_s() - start, progressed, (long long)newest, (long long)reported);
    /* The kills must land while commits happen, not only during start-up. */
    assert_true(progressed >= CRASH_KILLS / 4);
    assert_true(newest >= CRASH_KILLS / 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigkill_at_random_moments_loses_no_committed_round),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
