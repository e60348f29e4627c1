/* test_hostile_updates.c: a selected client that sends bad updates, one case per round, next to
 * two honest clients (delta +1 and +3, so every honest round adds exactly 2). Each case checks the
 * status and message the hostile client got, the daemon's log line, that the round committed
 * from the honest clients alone (version v+1 = v + 2 exactly, or + 3 where the hostile client's
 * one valid update counts), and that the store records the refusal. A client that was not
 * selected also tries another client's round and a round that was never assigned. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "tests/integration/hostile/hostile.h"

typedef struct hcase {
    const char *what;
    fc_status want;      /* status the hostile client must get */
    const char *needle;  /* in its message */
    const char *logged;  /* in the daemon's log */
    store_outcome outcome; /* the hostile client's stored outcome in that round */
    const char *stored;    /* in the stored reason */
} hcase;

enum {
    C_SHAPE, C_NAME, C_DTYPE, C_NAN, C_INF, C_EXAMPLES_0, C_EXAMPLES_2_63, C_HASH, C_OVERLAP,
    C_OUT_OF_RANGE, C_MISSING, C_BASE_VERSION, C_REPLAY, C_FUTURE, C_DUPLICATE, C_COUNT
};

static const hcase cases[C_COUNT] = {
    [C_SHAPE] = {"wrong shape", FC_ERR_SHAPE, "shape [3,2], round expects [2,3]", "[3,2]",
                 STORE_OUTCOME_REJECTED, "SHAPE_MISMATCH"},
    [C_NAME] = {"wrong tensor name", FC_ERR_SHAPE, "named 'bias', round expects 'w'", "'bias'",
                STORE_OUTCOME_REJECTED, "SHAPE_MISMATCH"},
    [C_DTYPE] = {"wrong dtype", FC_ERR_DTYPE, "dtype f16, round expects f32", "dtype f16",
                 STORE_OUTCOME_REJECTED, "UNSUPPORTED_DTYPE"},
    [C_NAN] = {"NaN", FC_ERR_NON_FINITE, "NaN or infinite value in tensor 'w'",
               "NaN or infinite", STORE_OUTCOME_REJECTED, "NON_FINITE"},
    [C_INF] = {"+Inf", FC_ERR_NON_FINITE, "NaN or infinite value in tensor 'w'",
               "NaN or infinite", STORE_OUTCOME_REJECTED, "NON_FINITE"},
    [C_EXAMPLES_0] = {"num_examples 0", FC_ERR_INVALID, "update_end.num_examples is 0",
                      "update_end.num_examples is 0",
                      /* a frame the codec refuses ends the session */
                      STORE_OUTCOME_DROPPED, "disconnected"},
    [C_EXAMPLES_2_63] = {"num_examples 2^63", FC_ERR_REQUIREMENT,
                         "claims 9223372036854775808 examples, allowed 1..",
                         "claims 9223372036854775808 examples", STORE_OUTCOME_REJECTED,
                         "UPDATE_REJECTED"},
    [C_HASH] = {"hash mismatch", FC_ERR_HASH, "SHA-256 mismatch", "SHA-256 mismatch",
                STORE_OUTCOME_REJECTED, "HASH_MISMATCH"},
    [C_OVERLAP] = {"overlapping chunks", FC_ERR_CHUNK, "overlap", "overlap",
                   STORE_OUTCOME_REJECTED, "BAD_CHUNK"},
    [C_OUT_OF_RANGE] = {"chunk past the end", FC_ERR_CHUNK, "runs past the tensor's end",
                        "runs past the tensor's end", STORE_OUTCOME_REJECTED, "BAD_CHUNK"},
    [C_MISSING] = {"missing chunk", FC_ERR_CHUNK, "missing", "missing",
                   STORE_OUTCOME_REJECTED, "BAD_CHUNK"},
    [C_BASE_VERSION] = {"wrong base version", FC_ERR_REQUIREMENT, "trained from version",
                        "trained from version", STORE_OUTCOME_REJECTED, "trained from version"},
    /* a refusal for another round id does not answer this round's task: the NaN update that
     * follows does (hostile_main) */
    [C_REPLAY] = {"replay of a past round", FC_ERR_STATE, "but the current round is",
                  "but the current round is", STORE_OUTCOME_REJECTED, "NON_FINITE"},
    [C_FUTURE] = {"round not started", FC_ERR_STATE, "but the current round is",
                  "but the current round is", STORE_OUTCOME_REJECTED, "NON_FINITE"},
    /* its first, valid update counts */
    [C_DUPLICATE] = {"second update in the same round", FC_ERR_STATE, "already has your answer",
                     "already has your answer", STORE_OUTCOME_ACCEPTED, ""},
};

typedef struct hostile {
    it_env *e;
    atomic_int gate; /* the honest clients wait while it is 1 */
    const char *token, *lurker_token;
    fc_status got[C_COUNT];
    char msg[C_COUNT][512];
    uint64_t round[C_COUNT];
    fc_status lurk_other, lurk_never;
    char lurk_other_msg[512], lurk_never_msg[512];
    char fail[512];
} hostile;

/* A client that was never selected: another client's round, then a round never assigned. */
static void lurk(hostile *h, uint64_t round, uint64_t version) {
    fc_client *c = NULL;
    float ones[HX_NUMEL] = {1, 1, 1, 1, 1, 1};
    fc_tensor_spec sp = hx_spec("w", FC_DTYPE_F32, 2, 3);
    it_raw_opts o = {.num_examples = 1, .is_delta = 1};
    if (it_client_open(h->e, "lurker", h->lurker_token, 0, &c) != FC_OK) {
        snprintf(h->fail, sizeof h->fail, "lurker: %s", c ? fc_client_error(c) : "no memory");
        fc_client_close(c);
        return;
    }
    h->lurk_other = it_raw_upload_opts(c, round, version, &sp, 1, ones, sizeof ones, &o);
    snprintf(h->lurk_other_msg, sizeof h->lurk_other_msg, "%s", fc_client_error(c));
    h->lurk_never = it_raw_upload_opts(c, 999, version, &sp, 1, ones, sizeof ones, &o);
    snprintf(h->lurk_never_msg, sizeof h->lurk_never_msg, "%s", fc_client_error(c));
    fc_client_close(c); /* gone before the round ends: never selected */
}

static void *hostile_main(void *arg) {
    hostile *h = arg;
    fc_client *c = NULL;
    if (it_client_open(h->e, "hostile", h->token, 1, &c) != FC_OK) {
        snprintf(h->fail, sizeof h->fail, "hostile: %s", c ? fc_client_error(c) : "no memory");
        fc_client_close(c);
        return NULL;
    }
    for (int k = 0; k < C_COUNT; k++) {
        fc_task *t = NULL;
        if (k == C_DUPLICATE) /* before its round's tasks go out */
            atomic_store(&h->gate, 1);
        fc_status st = fc_client_next_task(c, 30000, &t);
        if (st != FC_OK || !t) {
            snprintf(h->fail, sizeof h->fail, "hostile: no task for case %d: %s", k,
                     fc_client_error(c));
            break;
        }
        uint64_t r = fc_task_round(t), v = fc_task_model_version(t);
        h->round[k] = r;
        float d[HX_NUMEL] = {1, 1, 1, 1, 1, 1};
        uint16_t half[HX_NUMEL] = {0};
        fc_tensor_spec sp = hx_spec("w", FC_DTYPE_F32, 2, 3);
        it_raw_opts o = {.num_examples = 1, .is_delta = 1};
        const void *data = d;
        uint64_t total = sizeof d;
        uint64_t round = r, base = v;
        switch (k) {
        case C_SHAPE: sp = hx_spec("w", FC_DTYPE_F32, 3, 2); break;
        case C_NAME: sp.name = "bias"; break;
        case C_DTYPE:
            sp.dtype = FC_DTYPE_F16;
            data = half;
            total = sizeof half;
            break;
        case C_NAN: d[4] = NAN; break;
        case C_INF: d[1] = INFINITY; break;
        case C_EXAMPLES_0: o.num_examples = 0; break;
        case C_EXAMPLES_2_63: o.num_examples = 1ull << 63; break;
        case C_HASH: o.bad_hash = 1; break;
        case C_OVERLAP: o.chunks = IT_CHUNKS_OVERLAP; break;
        case C_OUT_OF_RANGE: o.chunks = IT_CHUNKS_OUT_OF_RANGE; break;
        case C_MISSING: o.chunks = IT_CHUNKS_MISSING; break;
        case C_BASE_VERSION: base = v + 7; break;
        case C_REPLAY: round = r - 1; break;
        case C_FUTURE: round = r + 5; break;
        case C_DUPLICATE: /* a valid update of 5 (it counts), then the same again */
            for (size_t i = 0; i < HX_NUMEL; i++)
                d[i] = 5;
            h->got[k] = it_raw_upload_opts(c, round, base, &sp, 1, data, total, &o);
            if (h->got[k] != FC_OK) {
                snprintf(h->fail, sizeof h->fail, "duplicate case: the first update failed: %s",
                         fc_client_error(c));
                fc_task_free(t);
                atomic_store(&h->gate, 0);
                goto out;
            }
            break;
        }
        if (k == C_REPLAY)
            lurk(h, r, v); /* the round is still open: the hostile client has not answered */
        h->got[k] = it_raw_upload_opts(c, round, base, &sp, 1, data, total, &o);
        snprintf(h->msg[k], sizeof h->msg[k], "%s", fc_client_error(c));
        atomic_store(&h->gate, 0);
        if (k == C_REPLAY || k == C_FUTURE) {
            /* refused at UpdateBegin for another round: its own task is still open in this
             * round; answer it with an update that is rejected (NaN) so the round closes
             * without waiting for the deadline */
            float bad[HX_NUMEL] = {NAN, 1, 1, 1, 1, 1};
            it_raw_opts ok = {.num_examples = 1, .is_delta = 1};
            fc_tensor_spec good = hx_spec("w", FC_DTYPE_F32, 2, 3);
            it_raw_upload_opts(c, r, v, &good, 1, bad, sizeof bad, &ok);
        }
        fc_task_free(t);
    }
out:
    fc_client_close(c);
    return NULL;
}

static void test_bad_updates_from_a_selected_client(void **state) {
    (void)state;
    it_env e;
    char sections[512];
    snprintf(sections, sizeof sections,
             "min_clients = 3\nclients_per_round = 3\nmin_updates = 2\nmax_rounds = %d\n"
             "round_timeout = 30s\n[storage]\nkeep_last = 100\n",
             C_COUNT);
    hx_start(&e, "updates", sections, NULL);
    char t1[64], t2[64], th[64], tl[64];
    hx_add(&e, "good1", t1);
    hx_add(&e, "good2", t2);
    hx_add(&e, "hostile", th);
    hx_add(&e, "lurker", tl);
    /* the hostile client holds the honest ones back in the duplicate case's round, so that its
     * two updates both land while the round is open */
    hostile h;
    memset(&h, 0, sizeof h);
    atomic_init(&h.gate, 0);
    hx_plan one = {1, 0, &h.gate}, three = {3, 0, &h.gate};
    it_worker w[2];
    hx_honest(&w[0], &e, "good1", t1, &one);
    hx_honest(&w[1], &e, "good2", t2, &three);
    h.e = &e;
    h.token = th;
    h.lurker_token = tl;
    pthread_t th_id;
    assert_int_equal(it_worker_start(&w[0]), 0);
    assert_int_equal(it_worker_start(&w[1]), 0);
    assert_int_equal(pthread_create(&th_id, NULL, hostile_main, &h), 0);
    pthread_join(th_id, NULL);
    hx_join_honest(w, 2);
    if (h.fail[0])
        fail_msg("%s", h.fail);
    /* 1. a clear error at the client and in the daemon's log */
    for (int k = 0; k < C_COUNT; k++) {
        if (h.got[k] != cases[k].want || !strstr(h.msg[k], cases[k].needle))
            fail_msg("case '%s' (round %llu): got %s \"%s\", expected %s with \"%s\"",
                     cases[k].what, (unsigned long long)h.round[k], fc_status_name(h.got[k]),
                     h.msg[k], fc_status_name(cases[k].want), cases[k].needle);
        hx_log_has(&e, cases[k].logged, 2000);
    }
    if (h.lurk_other != FC_ERR_STATE || !strstr(h.lurk_other_msg, "not selected in round"))
        fail_msg("another client's round: %s \"%s\"", fc_status_name(h.lurk_other),
                 h.lurk_other_msg);
    if (h.lurk_never != FC_ERR_STATE || !strstr(h.lurk_never_msg, "not selected in round"))
        fail_msg("a round never assigned: %s \"%s\"", fc_status_name(h.lurk_never),
                 h.lurk_never_msg);
    /* 2 and 3. every round committed from the honest clients alone: +2 (mean of 1 and 3), and
     * +3 in the duplicate case's round (mean of 1, 3 and the hostile client's one valid 5) */
    float step[C_COUNT];
    for (int k = 0; k < C_COUNT; k++)
        step[k] = k == C_DUPLICATE ? 3.0f : 2.0f;
    hx_check_versions(&e, 1, C_COUNT, step);
    /* the store records each refusal with its reason */
    store *s = NULL;
    fc_error err = {0};
    assert_int_equal(it_store_open(&e, &s, &err), FC_OK);
    for (int k = 0; k < C_COUNT; k++) {
        it_participant p[4];
        size_t n = 0;
        assert_int_equal(it_participants(s, (int64_t)h.round[k], p, 4, &n, &err), FC_OK);
        assert_int_equal(n, 3); /* good1, good2, hostile: the lurker never took part */
        assert_string_equal(p[2].client, "hostile");
        if (p[2].outcome != cases[k].outcome || !strstr(p[2].reason, cases[k].stored))
            fail_msg("case '%s': stored outcome %d \"%s\", expected %d with \"%s\"",
                     cases[k].what, (int)p[2].outcome, p[2].reason, (int)cases[k].outcome,
                     cases[k].stored);
    }
    store_close(s);
    assert_int_equal(it_daemon_signal_wait(&e, SIGTERM, 20), 0);
    it_env_cleanup(&e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_updates_from_a_selected_client),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
