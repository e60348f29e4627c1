/* test_round.c: the synchronous round scheduler, driven with injected time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "server/round.h"

#define MAXA 256
typedef struct capture {
    round_action a[MAXA];
    size_t n;
} capture;

static capture cap;

static void drain(round_sched *r) {
    cap.n = 0;
    round_action a;
    while (round_next_action(r, &a)) {
        assert_true(cap.n < MAXA);
        cap.a[cap.n++] = a;
    }
}

static size_t count(round_action_type t) {
    size_t c = 0;
    for (size_t i = 0; i < cap.n; i++)
        c += cap.a[i].type == t;
    return c;
}

static const round_action *find(round_action_type t, size_t nth) {
    for (size_t i = 0; i < cap.n; i++)
        if (cap.a[i].type == t && nth-- == 0)
            return &cap.a[i];
    return NULL;
}

static bool saw_transition(round_state from, round_state to) {
    for (size_t i = 0; i < cap.n; i++)
        if (cap.a[i].type == ROUND_ACT_TRANSITION && cap.a[i].from == from && cap.a[i].to == to)
            return true;
    return false;
}

static const round_action *transition_to(round_state to) {
    for (size_t i = 0; i < cap.n; i++)
        if (cap.a[i].type == ROUND_ACT_TRANSITION && cap.a[i].to == to)
            return &cap.a[i];
    return NULL;
}

static round_config cfg_basic(uint32_t min_clients, uint32_t per_round, uint32_t over,
                              uint32_t min_updates) {
    round_config c;
    round_config_defaults(&c);
    c.min_clients = min_clients;
    c.clients_per_round = per_round;
    c.over_select = over;
    c.min_updates = min_updates;
    c.round_timeout_ms = 1000;
    c.seed = 42;
    return c;
}

static round_sched *make(const round_config *c) {
    round_sched *r = NULL;
    fc_error err = {0};
    assert_int_equal(round_create(c, &r, &err), FC_OK);
    return r;
}

static void avail(round_sched *r, uint64_t now, uint64_t id) {
    fc_error err = {0};
    assert_int_equal(round_client_available(r, now, id, &err), FC_OK);
    drain(r);
}

/* The ids sent a task in the last drained batch, in order. */
static size_t sent_ids(uint64_t *ids) {
    size_t n = 0;
    for (size_t i = 0; i < cap.n; i++)
        if (cap.a[i].type == ROUND_ACT_SEND_TASK)
            ids[n++] = cap.a[i].client_id;
    return n;
}

static void test_config_validation_names_the_key(void **state) {
    (void)state;
    fc_error err = {0};
    round_config c = cfg_basic(3, 3, 0, 4);
    assert_int_equal(round_config_validate(&c, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "min_updates = 4 exceeds clients_per_round = 3"));
    c = cfg_basic(2, 5, 0, 3);
    assert_int_equal(round_config_validate(&c, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "exceeds min_clients = 2"));
    c = cfg_basic(2, 5, 0, 0);
    assert_int_equal(round_config_validate(&c, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "min_updates = 0"));
    c = cfg_basic(2, 5, 0, 2);
    c.round_timeout_ms = 0;
    assert_int_equal(round_config_validate(&c, &err), FC_ERR_CONFIG);
    c = cfg_basic(2, 5, ROUND_MAX_SELECT, 2);
    assert_int_equal(round_config_validate(&c, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "over_select"));
    c = cfg_basic(2, 5, 0, 2);
    c.mu = -1;
    assert_int_equal(round_config_validate(&c, &err), FC_ERR_CONFIG);
    round_config_defaults(&c);
    assert_int_equal(round_config_validate(&c, &err), FC_OK);
    round_sched *r = NULL;
    c.clients_per_round = 0;
    assert_int_equal(round_create(&c, &r, &err), FC_ERR_CONFIG);
    assert_null(r);
}

/* splitmix64 reference outputs for state 0 (Vigna's splitmix64.c). */
static void test_splitmix64_matches_reference(void **state) {
    (void)state;
    uint64_t s = 0;
    assert_true(round_splitmix64(&s) == 0xE220A8397B1DCDAFull);
    assert_true(round_splitmix64(&s) == 0x6E789E6AA1B965F4ull);
    assert_true(round_splitmix64(&s) == 0x06C45D188009454Full);
}

static void test_prng_below_stays_in_range(void **state) {
    (void)state;
    round_prng p;
    round_prng_seed(&p, 7, 1);
    unsigned hits[3] = {0};
    for (int i = 0; i < 3000; i++) {
        uint64_t v = round_prng_below(&p, 3);
        assert_true(v < 3);
        hits[v]++;
    }
    for (int i = 0; i < 3; i++)
        assert_true(hits[i] > 800 && hits[i] < 1200);
    assert_true(round_prng_below(&p, 1) == 0);
}

static void test_happy_path_reaches_committed(void **state) {
    (void)state;
    round_config c = cfg_basic(3, 3, 0, 2);
    c.mu = 0.01;
    round_sched *r = make(&c);
    fc_error err = {0};
    avail(r, 0, 1);
    avail(r, 0, 2);
    assert_int_equal(round_get_state(r), ROUND_WAITING);
    assert_int_equal(count(ROUND_ACT_SEND_TASK), 0);
    avail(r, 10, 3);
    assert_int_equal(round_get_state(r), ROUND_TRAINING);
    assert_true(saw_transition(ROUND_WAITING, ROUND_TRAINING));
    uint64_t ids[8];
    assert_int_equal(sent_ids(ids), 3);
    assert_true(ids[0] == 1 && ids[1] == 2 && ids[2] == 3);
    assert_true(find(ROUND_ACT_SEND_TASK, 0)->round_id == 1);
    assert_true(find(ROUND_ACT_SEND_TASK, 0)->kind == ROUND_KIND_TRAIN);
    assert_true(find(ROUND_ACT_SEND_TASK, 0)->model_version == 0);
    assert_true(find(ROUND_ACT_ARM_TIMER, 0)->deadline_ms == 1010);
    assert_int_equal(round_idle_count(r), 0);

    assert_int_equal(round_update_received(r, 20, 1, 1, 100, &err), FC_OK);
    drain(r);
    assert_int_equal(round_update_received(r, 30, 2, 1, 50, &err), FC_OK);
    drain(r);
    assert_int_equal(round_update_rejected(r, 40, 3, 1, "tensor 'w' is not finite", &err), FC_OK);
    drain(r);
    assert_int_equal(round_get_state(r), ROUND_AGGREGATING);
    assert_int_equal(count(ROUND_ACT_START_AGGREGATION), 1);
    assert_int_equal(count(ROUND_ACT_DISARM_TIMER), 1);
    assert_int_equal(round_idle_count(r), 3);

    assert_int_equal(round_aggregation_done(r, 50, 1, FC_OK, NULL, &err), FC_OK);
    drain(r);
    const round_action *commit = find(ROUND_ACT_COMMIT, 0);
    assert_non_null(commit);
    assert_true(commit->round_id == 1 && commit->model_version == 1);
    /* the commit record reads the participants while handling COMMIT */
    const round_participant *parts;
    size_t n;
    assert_int_equal(round_get_participants(r, 1, &parts, &n), FC_OK);
    assert_int_equal(n, 3);
    assert_int_equal(parts[0].outcome, ROUND_ACCEPTED);
    assert_true(parts[0].num_examples == 100);
    assert_int_equal(parts[2].outcome, ROUND_REJECTED);
    assert_string_equal(parts[2].reason, "tensor 'w' is not finite");

    assert_int_equal(round_commit_done(r, 60, 1, FC_OK, NULL, &err), FC_OK);
    drain(r);
    assert_true(saw_transition(ROUND_AGGREGATING, ROUND_COMMITTED));
    assert_true(saw_transition(ROUND_COMMITTED, ROUND_WAITING));
    assert_true(round_model_version(r) == 1);
    /* all three are idle again, so round 2 starts at once from version 1 */
    assert_int_equal(round_get_state(r), ROUND_TRAINING);
    assert_true(round_current_id(r) == 2);
    assert_true(find(ROUND_ACT_SEND_TASK, 0)->model_version == 1);
    round_info info;
    assert_int_equal(round_get_info(r, 1, &info), FC_OK);
    assert_int_equal(info.state, ROUND_COMMITTED);
    assert_true(info.accepted == 2 && info.rejected == 1 && info.total_examples == 150);
    assert_true(info.started_ms == 10 && info.closed_ms == 40 && info.ended_ms == 60);
    round_free(r);
}

static void select_with_order(uint64_t seed, const uint64_t *order, size_t n, uint64_t *out,
                              size_t *k) {
    round_config c = cfg_basic((uint32_t)n, 4, 0, 2);
    c.seed = seed;
    round_sched *r = make(&c);
    for (size_t i = 0; i < n; i++)
        avail(r, 0, order[i]);
    *k = sent_ids(out);
    round_free(r);
}

static void test_selection_is_reproducible_regardless_of_arrival_order(void **state) {
    (void)state;
    uint64_t fwd[20], rev[20], a[8], b[8];
    for (size_t i = 0; i < 20; i++) {
        fwd[i] = 100 + i * 7;
        rev[19 - i] = fwd[i];
    }
    size_t ka, kb;
    select_with_order(42, fwd, 20, a, &ka);
    select_with_order(42, rev, 20, b, &kb);
    assert_int_equal(ka, 4);
    assert_int_equal(kb, 4);
    assert_memory_equal(a, b, sizeof(uint64_t) * 4);
    for (size_t i = 1; i < 4; i++)
        assert_true(a[i - 1] < a[i]);
}

static void test_different_seeds_select_differently(void **state) {
    (void)state;
    uint64_t ids[20], a[8], b[8];
    for (size_t i = 0; i < 20; i++)
        ids[i] = i + 1;
    size_t ka, kb;
    select_with_order(1, ids, 20, a, &ka);
    select_with_order(2, ids, 20, b, &kb);
    assert_memory_not_equal(a, b, sizeof(uint64_t) * 4);
}

/* Known answer from tests/round_select.py (an independent Python implementation of the
 * documented PRNG and Floyd sampling). */
static void test_selection_matches_reference_script(void **state) {
    (void)state;
    uint64_t ids[20], a[8];
    for (size_t i = 0; i < 20; i++)
        ids[i] = i + 1;
    size_t k;
    select_with_order(42, ids, 20, a, &k);
    assert_int_equal(k, 4);
    const uint64_t expect[4] = {1, 5, 15, 18};
    assert_memory_equal(a, expect, sizeof expect);
}

static void test_not_enough_clients_stays_waiting(void **state) {
    (void)state;
    round_config c = cfg_basic(3, 3, 0, 2);
    round_sched *r = make(&c);
    fc_error err = {0};
    avail(r, 0, 1);
    avail(r, 0, 2);
    assert_int_equal(round_tick(r, 100000, &err), FC_OK);
    drain(r);
    assert_int_equal(round_get_state(r), ROUND_WAITING);
    assert_int_equal(cap.n, 0);
    assert_int_equal(round_client_gone(r, 100001, 2, &err), FC_OK);
    drain(r);
    avail(r, 100002, 3);
    assert_int_equal(round_get_state(r), ROUND_WAITING);
    assert_int_equal(round_client_available(r, 1, 3, &err), FC_ERR_EXISTS);
    assert_int_equal(round_client_gone(r, 1, 99, &err), FC_ERR_NOT_FOUND);
    round_free(r);
}

static void test_over_selection_closes_at_clients_per_round_and_cancels_rest(void **state) {
    (void)state;
    round_config c = cfg_basic(5, 3, 2, 2);
    round_sched *r = make(&c);
    fc_error err = {0};
    for (uint64_t id = 1; id <= 5; id++)
        avail(r, 0, id);
    uint64_t ids[8];
    assert_int_equal(sent_ids(ids), 5);
    assert_int_equal(round_update_received(r, 1, ids[4], 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_update_received(r, 2, ids[0], 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_get_state(r), ROUND_TRAINING);
    assert_int_equal(round_update_received(r, 3, ids[2], 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_get_state(r), ROUND_AGGREGATING);
    assert_int_equal(count(ROUND_ACT_CANCEL_TASK), 2);
    assert_true(find(ROUND_ACT_CANCEL_TASK, 0)->client_id == ids[1]);
    assert_true(find(ROUND_ACT_CANCEL_TASK, 1)->client_id == ids[3]);
    const round_participant *p;
    size_t n;
    assert_int_equal(round_get_participants(r, 1, &p, &n), FC_OK);
    assert_int_equal(p[1].outcome, ROUND_CANCELLED);
    assert_int_equal(p[3].outcome, ROUND_CANCELLED);
    assert_int_equal(round_update_received(r, 4, ids[1], 1, 10, &err), FC_ERR_STATE);
    assert_string_equal(err.msg, "round 1 already closed");
    round_free(r);
}

static void test_deadline_with_quorum_closes(void **state) {
    (void)state;
    round_config c = cfg_basic(3, 3, 0, 2);
    round_sched *r = make(&c);
    fc_error err = {0};
    for (uint64_t id = 1; id <= 3; id++)
        avail(r, 0, id);
    assert_int_equal(round_update_received(r, 5, 1, 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_update_received(r, 6, 2, 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_tick(r, 999, &err), FC_OK);
    drain(r);
    assert_int_equal(round_get_state(r), ROUND_TRAINING);
    assert_int_equal(round_tick(r, 1000, &err), FC_OK);
    drain(r);
    assert_int_equal(round_get_state(r), ROUND_AGGREGATING);
    assert_int_equal(count(ROUND_ACT_START_AGGREGATION), 1);
    assert_true(find(ROUND_ACT_CANCEL_TASK, 0)->client_id == 3);
    const round_participant *p;
    size_t n;
    assert_int_equal(round_get_participants(r, 1, &p, &n), FC_OK);
    assert_int_equal(p[2].outcome, ROUND_TIMED_OUT);
    round_free(r);
}

static void test_deadline_below_quorum_fails_and_next_round_starts(void **state) {
    (void)state;
    round_config c = cfg_basic(3, 3, 0, 3);
    round_sched *r = make(&c);
    fc_error err = {0};
    for (uint64_t id = 1; id <= 3; id++)
        avail(r, 0, id);
    assert_int_equal(round_update_received(r, 5, 1, 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_update_received(r, 6, 2, 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_tick(r, 2000, &err), FC_OK);
    drain(r);
    const round_action *f = transition_to(ROUND_FAILED);
    assert_non_null(f);
    assert_string_equal(f->reason, "deadline passed with 2 of 3 required updates");
    const round_action *rec = find(ROUND_ACT_RECORD_FAILED, 0);
    assert_non_null(rec);
    assert_true(rec->round_id == 1);
    assert_string_equal(rec->reason, "deadline passed with 2 of 3 required updates");
    assert_true(saw_transition(ROUND_FAILED, ROUND_WAITING));
    assert_int_equal(round_get_state(r), ROUND_TRAINING);
    assert_true(round_current_id(r) == 2);
    assert_int_equal(count(ROUND_ACT_SEND_TASK), 3);
    assert_true(find(ROUND_ACT_ARM_TIMER, 0)->deadline_ms == 3000);
    round_info info;
    assert_int_equal(round_get_info(r, 1, &info), FC_OK);
    assert_int_equal(info.state, ROUND_FAILED);
    assert_int_equal(info.timed_out, 1);
    assert_true(round_model_version(r) == 0);
    round_free(r);
}

static void test_disconnect_counts_as_dropped_and_round_closes(void **state) {
    (void)state;
    round_config c = cfg_basic(3, 3, 0, 2);
    round_sched *r = make(&c);
    fc_error err = {0};
    for (uint64_t id = 1; id <= 3; id++)
        avail(r, 0, id);
    assert_int_equal(round_update_received(r, 5, 1, 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_client_gone(r, 6, 3, &err), FC_OK);
    drain(r);
    assert_int_equal(round_get_state(r), ROUND_TRAINING);
    assert_int_equal(round_update_received(r, 7, 2, 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_get_state(r), ROUND_AGGREGATING);
    assert_int_equal(count(ROUND_ACT_CANCEL_TASK), 0);
    const round_participant *p;
    size_t n;
    assert_int_equal(round_get_participants(r, 1, &p, &n), FC_OK);
    assert_int_equal(p[2].outcome, ROUND_DROPPED);
    assert_int_equal(round_idle_count(r), 2);
    round_free(r);
}

static void test_bad_updates_are_refused_with_reasons(void **state) {
    (void)state;
    round_config c = cfg_basic(2, 2, 0, 2);
    round_sched *r = make(&c);
    fc_error err = {0};
    avail(r, 0, 1);
    avail(r, 0, 2);
    uint64_t ids[4];
    assert_int_equal(sent_ids(ids), 2);
    avail(r, 0, 3); /* arrives after the round started: idle, not selected */
    uint64_t unselected = 3;
    assert_int_equal(round_update_received(r, 1, unselected, 1, 10, &err), FC_ERR_PROTOCOL);
    assert_non_null(strstr(err.msg, "was not selected for round 1"));
    assert_int_equal(round_update_received(r, 1, ids[0], 2, 10, &err), FC_ERR_PROTOCOL);
    assert_string_equal(err.msg, "round 2 has not started");
    assert_int_equal(round_eval_received(r, 1, ids[0], 1, 10, NULL, 0, &err), FC_ERR_PROTOCOL);
    assert_string_equal(err.msg, "round 1 is a training round");
    assert_int_equal(round_update_received(r, 1, ids[0], 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_update_received(r, 2, ids[0], 1, 10, &err), FC_ERR_PROTOCOL);
    assert_non_null(strstr(err.msg, "already answered round 1 (accepted)"));
    /* undrained actions make the next event refuse */
    assert_int_equal(round_update_received(r, 3, ids[1], 1, 0, &err), FC_ERR_RANGE);
    assert_int_equal(round_tick(r, 4, &err), FC_ERR_BUSY);
    drain(r);
    const round_participant *p;
    size_t n;
    assert_int_equal(round_get_participants(r, 1, &p, &n), FC_OK);
    assert_int_equal(p[1].outcome, ROUND_REJECTED);
    assert_non_null(strstr(p[1].reason, "num_examples 0"));
    /* 1 of 2 required: every selected client answered, so the round fails */
    assert_non_null(strstr(transition_to(ROUND_FAILED)->reason, "1 of 2 required updates"));
    assert_int_equal(round_update_received(r, 5, ids[0], 1, 10, &err), FC_ERR_STATE);
    assert_string_equal(err.msg, "round 1 already closed");
    round_free(r);
}

static void finish_train_round(round_sched *r, uint64_t now, uint64_t id, const uint64_t *ids,
                               size_t n) {
    fc_error err = {0};
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(round_update_received(r, now, ids[i], id, 10, &err), FC_OK);
        drain(r);
    }
    assert_int_equal(round_aggregation_done(r, now, id, FC_OK, NULL, &err), FC_OK);
    drain(r);
    assert_int_equal(round_commit_done(r, now, id, FC_OK, NULL, &err), FC_OK);
    drain(r);
}

/* eval_every = 2: rounds 1, 2 train (versions 1, 2), round 3 evaluates version 2, rounds 4, 5
 * train, round 6 evaluates version 4. */
static void test_eval_every_gives_evaluation_rounds_with_weighted_metrics(void **state) {
    (void)state;
    round_config c = cfg_basic(3, 3, 0, 2);
    c.eval_every = 2;
    round_sched *r = make(&c);
    fc_error err = {0};
    for (uint64_t id = 1; id <= 3; id++)
        avail(r, 0, id);
    const uint64_t ids[3] = {1, 2, 3};
    finish_train_round(r, 1, 1, ids, 3);
    assert_true(find(ROUND_ACT_SEND_TASK, 0)->kind == ROUND_KIND_TRAIN);
    finish_train_round(r, 2, 2, ids, 3);
    const round_action *t = find(ROUND_ACT_SEND_TASK, 0);
    assert_true(t->round_id == 3 && t->kind == ROUND_KIND_EVALUATE && t->model_version == 2);

    /* loss: (100*0.5 + 300*0.9) / 400 = 0.8; acc only from clients 1 and 3:
     * (100*0.75 + 50*0.6) / 150 = 0.7 */
    round_metric m1[2] = {{"loss", 0.5}, {"acc", 0.75}};
    round_metric m2[1] = {{"loss", 0.9}};
    round_metric m3[2] = {{"acc", 0.6}, {"acc", 0.1}};
    assert_int_equal(round_update_received(r, 3, 1, 3, 10, &err), FC_ERR_PROTOCOL);
    assert_string_equal(err.msg, "round 3 is an evaluation round");
    assert_int_equal(round_eval_received(r, 3, 1, 3, 100, m1, 2, &err), FC_OK);
    drain(r);
    assert_int_equal(round_eval_received(r, 3, 2, 3, 300, m2, 1, &err), FC_OK);
    drain(r);
    assert_int_equal(round_eval_received(r, 3, 3, 3, 50, m3, 2, &err), FC_ERR_FORMAT);
    drain(r);
    /* client 3 reported acc twice: its answer is rejected, so acc comes from client 1 only */
    assert_int_equal(round_get_state(r), ROUND_AGGREGATING);
    assert_int_equal(count(ROUND_ACT_START_AGGREGATION), 0);
    const round_action *commit = find(ROUND_ACT_COMMIT, 0);
    assert_true(commit->kind == ROUND_KIND_EVALUATE && commit->model_version == 2);
    const round_metric_result *mr;
    size_t n;
    assert_int_equal(round_get_metrics(r, 3, &mr, &n), FC_OK);
    assert_int_equal(n, 2);
    assert_string_equal(mr[0].name, "loss");
    assert_true(mr[0].mean == 0.8);
    assert_true(mr[0].examples == 400);
    assert_string_equal(mr[1].name, "acc");
    assert_true(mr[1].mean == 0.75);
    assert_int_equal(round_commit_done(r, 4, 3, FC_OK, NULL, &err), FC_OK);
    drain(r);
    assert_true(round_model_version(r) == 2);
    t = find(ROUND_ACT_SEND_TASK, 0);
    assert_true(t->round_id == 4 && t->kind == ROUND_KIND_TRAIN);
    finish_train_round(r, 5, 4, ids, 3);
    assert_true(find(ROUND_ACT_SEND_TASK, 0)->kind == ROUND_KIND_TRAIN);
    finish_train_round(r, 6, 5, ids, 3);
    t = find(ROUND_ACT_SEND_TASK, 0);
    assert_true(t->round_id == 6 && t->kind == ROUND_KIND_EVALUATE && t->model_version == 4);
    round_metric a1[2] = {{"loss", 0.5}, {"acc", 0.75}};
    round_metric a2[1] = {{"loss", 0.9}};
    round_metric a3[1] = {{"acc", 0.6}};
    assert_int_equal(round_eval_received(r, 7, 1, 6, 100, a1, 2, &err), FC_OK);
    drain(r);
    assert_int_equal(round_eval_received(r, 7, 2, 6, 300, a2, 1, &err), FC_OK);
    drain(r);
    assert_int_equal(round_eval_received(r, 7, 3, 6, 50, a3, 1, &err), FC_OK);
    drain(r);
    assert_int_equal(round_get_metrics(r, 6, &mr, &n), FC_OK);
    assert_int_equal(n, 2);
    assert_true(mr[0].mean == 0.8);
    assert_true(mr[1].mean > 0.7 - 1e-15 && mr[1].mean < 0.7 + 1e-15);
    assert_true(mr[1].examples == 150);
    round_free(r);
}

static void test_max_rounds_stops(void **state) {
    (void)state;
    round_config c = cfg_basic(2, 2, 0, 2);
    c.max_rounds = 2;
    round_sched *r = make(&c);
    avail(r, 0, 1);
    avail(r, 0, 2);
    const uint64_t ids[2] = {1, 2};
    finish_train_round(r, 1, 1, ids, 2);
    assert_int_equal(round_get_state(r), ROUND_TRAINING);
    finish_train_round(r, 2, 2, ids, 2);
    assert_int_equal(round_get_state(r), ROUND_STOPPED);
    assert_string_equal(transition_to(ROUND_STOPPED)->reason, "max_rounds 2 reached");
    assert_int_equal(count(ROUND_ACT_SEND_TASK), 0);
    round_free(r);
}

/* max_rounds counts committed training rounds: a failed round and evaluation rounds do not use
 * it up, and the last version is still evaluated before the stop. eval_every = 1, max 2:
 * train 1 (v1), eval 2, train 3 fails below quorum, train 4 (v2), eval 5, stop. */
static void test_max_rounds_counts_committed_training_rounds(void **state) {
    (void)state;
    round_config c = cfg_basic(2, 2, 0, 2);
    c.max_rounds = 2;
    c.eval_every = 1;
    round_sched *r = make(&c);
    fc_error err = {0};
    avail(r, 0, 1);
    avail(r, 0, 2);
    const uint64_t ids[2] = {1, 2};
    const round_metric acc[1] = {{"accuracy", 0.5}};
    finish_train_round(r, 1, 1, ids, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(round_eval_received(r, 2, ids[i], 2, 10, acc, 1, &err), FC_OK);
        drain(r);
    }
    assert_int_equal(round_commit_done(r, 2, 2, FC_OK, NULL, &err), FC_OK);
    drain(r);
    assert_int_equal(round_current_id(r), 3);
    assert_int_equal(round_update_received(r, 3, 1, 3, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_tick(r, 5000, &err), FC_OK); /* deadline with 1 of 2: fails */
    drain(r);
    assert_true(saw_transition(ROUND_TRAINING, ROUND_FAILED));
    assert_int_equal(round_get_state(r), ROUND_TRAINING); /* round 4 started */
    finish_train_round(r, 6000, 4, ids, 2);
    assert_int_equal(round_get_state(r), ROUND_TRAINING); /* round 5 evaluates version 2 */
    const round_action *t = find(ROUND_ACT_SEND_TASK, 0);
    assert_true(t->round_id == 5 && t->kind == ROUND_KIND_EVALUATE && t->model_version == 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(round_eval_received(r, 6001, ids[i], 5, 10, acc, 1, &err), FC_OK);
        drain(r);
    }
    assert_int_equal(round_commit_done(r, 6002, 5, FC_OK, NULL, &err), FC_OK);
    drain(r);
    assert_int_equal(round_get_state(r), ROUND_STOPPED);
    assert_string_equal(transition_to(ROUND_STOPPED)->reason, "max_rounds 2 reached");
    round_free(r);
}

static void test_stop_during_training_fails_round_cleanly(void **state) {
    (void)state;
    round_config c = cfg_basic(2, 2, 0, 2);
    round_sched *r = make(&c);
    fc_error err = {0};
    avail(r, 0, 1);
    avail(r, 0, 2);
    assert_int_equal(round_update_received(r, 1, 1, 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_stop(r, 2, NULL, &err), FC_OK);
    drain(r);
    assert_string_equal(transition_to(ROUND_FAILED)->reason, "coordinator stopping");
    assert_true(saw_transition(ROUND_FAILED, ROUND_STOPPED));
    assert_true(find(ROUND_ACT_CANCEL_TASK, 0)->client_id == 2);
    assert_non_null(find(ROUND_ACT_RECORD_FAILED, 0));
    assert_int_equal(round_get_state(r), ROUND_STOPPED);
    const round_participant *p;
    size_t n;
    assert_int_equal(round_get_participants(r, 1, &p, &n), FC_OK);
    assert_int_equal(p[1].outcome, ROUND_CANCELLED);
    assert_int_equal(round_stop(r, 3, NULL, &err), FC_OK);
    drain(r);
    assert_int_equal(cap.n, 0);
    assert_int_equal(round_aggregation_done(r, 3, 1, FC_OK, NULL, &err), FC_ERR_STATE);
    round_free(r);
}

static void test_restore_continues_numbering(void **state) {
    (void)state;
    round_config c = cfg_basic(2, 2, 0, 2);
    c.eval_every = 5;
    round_sched *r = make(&c);
    fc_error err = {0};
    round_restore_info ri = {.last_round_id = 12, .model_version = 10, .last_eval_version = 5};
    assert_int_equal(round_restore(r, &ri, &err), FC_OK);
    drain(r);
    avail(r, 0, 1);
    avail(r, 0, 2);
    const round_action *t = find(ROUND_ACT_SEND_TASK, 0);
    assert_true(t->round_id == 13 && t->model_version == 10 && t->kind == ROUND_KIND_EVALUATE);
    assert_int_equal(round_restore(r, &ri, &err), FC_ERR_STATE);
    round_free(r);

    /* 12 training rounds done, but version 10 is due an evaluation: it runs, then the stop */
    c.max_rounds = 12;
    ri.trained_rounds = 12;
    r = make(&c);
    assert_int_equal(round_restore(r, &ri, &err), FC_OK);
    drain(r);
    assert_int_equal(round_get_state(r), ROUND_WAITING);
    avail(r, 0, 1);
    avail(r, 0, 2);
    t = find(ROUND_ACT_SEND_TASK, 0);
    assert_true(t->round_id == 13 && t->kind == ROUND_KIND_EVALUATE);
    round_free(r);
    /* nothing due: stopped at once */
    ri.last_eval_version = 10;
    r = make(&c);
    assert_int_equal(round_restore(r, &ri, &err), FC_OK);
    drain(r);
    assert_int_equal(round_get_state(r), ROUND_STOPPED);
    round_free(r);
    /* 11 done: one more training round runs */
    ri.trained_rounds = 11;
    r = make(&c);
    assert_int_equal(round_restore(r, &ri, &err), FC_OK);
    drain(r);
    assert_int_equal(round_get_state(r), ROUND_WAITING);
    round_free(r);
}

static void test_aggregation_failure_fails_round_with_reason(void **state) {
    (void)state;
    round_config c = cfg_basic(2, 2, 0, 2);
    round_sched *r = make(&c);
    fc_error err = {0};
    avail(r, 0, 1);
    avail(r, 0, 2);
    assert_int_equal(round_update_received(r, 1, 1, 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_update_received(r, 1, 2, 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_aggregation_done(r, 2, 7, FC_OK, NULL, &err), FC_ERR_STATE);
    assert_int_equal(round_aggregation_done(r, 2, 1, FC_ERR_REQUIREMENT,
                                            "krum needs n > 2f + 2 updates", &err),
                     FC_OK);
    drain(r);
    assert_string_equal(find(ROUND_ACT_RECORD_FAILED, 0)->reason,
                        "aggregation failed: krum needs n > 2f + 2 updates");
    assert_true(round_model_version(r) == 0);
    assert_true(round_current_id(r) == 2);
    round_free(r);
}

static void test_commit_failure_fails_round(void **state) {
    (void)state;
    round_config c = cfg_basic(2, 2, 0, 2);
    round_sched *r = make(&c);
    fc_error err = {0};
    avail(r, 0, 1);
    avail(r, 0, 2);
    assert_int_equal(round_update_received(r, 1, 1, 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_update_received(r, 1, 2, 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_commit_done(r, 2, 1, FC_OK, NULL, &err), FC_ERR_STATE);
    assert_int_equal(round_aggregation_done(r, 2, 1, FC_OK, NULL, &err), FC_OK);
    drain(r);
    assert_int_equal(round_commit_done(r, 3, 1, FC_ERR_DB, "disk I/O error", &err), FC_OK);
    drain(r);
    assert_string_equal(transition_to(ROUND_FAILED)->reason, "commit failed: disk I/O error");
    assert_true(round_model_version(r) == 0);
    round_info info;
    assert_int_equal(round_get_info(r, 1, &info), FC_OK);
    assert_int_equal(info.state, ROUND_FAILED);
    round_free(r);
}

static void test_pause_holds_next_round_until_resume(void **state) {
    (void)state;
    round_config c = cfg_basic(2, 2, 0, 2);
    round_sched *r = make(&c);
    fc_error err = {0};
    assert_int_equal(round_pause(r, 0, &err), FC_OK);
    drain(r);
    avail(r, 0, 1);
    avail(r, 0, 2);
    assert_int_equal(round_get_state(r), ROUND_PAUSED);
    assert_int_equal(round_resume(r, 1, &err), FC_OK);
    drain(r);
    assert_int_equal(round_get_state(r), ROUND_TRAINING);
    round_free(r);
}

static void test_allocation_failures_are_clean(void **state) {
    (void)state;
    round_config c = cfg_basic(2, 2, 0, 2);
    fc_error err = {0};
    for (long n = 0; n < 4; n++) { /* 4 allocations: struct, queue, 2 participant arrays */
        round_sched *r = NULL;
        fc_alloc_fail_after(n);
        fc_status st = round_create(&c, &r, &err);
        fc_alloc_fail_after(-1);
        assert_int_equal(st, FC_ERR_NOMEM);
        assert_null(r);
    }
    round_sched *r = make(&c);
    fc_alloc_fail_after(0);
    fc_status st = round_client_available(r, 0, 1, &err);
    fc_alloc_fail_after(-1);
    assert_int_equal(st, FC_ERR_NOMEM);
    assert_int_equal(round_idle_count(r), 0);
    avail(r, 0, 1);
    avail(r, 0, 2);
    assert_int_equal(round_get_state(r), ROUND_TRAINING);
    round_free(r);
}

static void test_non_finite_metric_rejects_the_report(void **state) {
    (void)state;
    round_config c = cfg_basic(2, 2, 0, 1);
    c.eval_every = 1;
    round_sched *r = make(&c);
    fc_error err = {0};
    round_restore_info ri = {.last_round_id = 1, .model_version = 1, .last_eval_version = 0};
    assert_int_equal(round_restore(r, &ri, &err), FC_OK);
    avail(r, 0, 1);
    avail(r, 0, 2);
    assert_true(find(ROUND_ACT_SEND_TASK, 0)->kind == ROUND_KIND_EVALUATE);
    round_metric bad[1] = {{"loss", (double)INFINITY}};
    assert_int_equal(round_eval_received(r, 1, 1, 2, 10, bad, 1, &err), FC_ERR_NON_FINITE);
    assert_non_null(strstr(err.msg, "metric 'loss' is not finite"));
    drain(r);
    round_metric good[1] = {{"loss", 2.0}};
    assert_int_equal(round_eval_received(r, 2, 2, 2, 10, good, 1, &err), FC_OK);
    drain(r);
    const round_metric_result *mr;
    size_t n;
    assert_int_equal(round_get_metrics(r, 2, &mr, &n), FC_OK);
    assert_int_equal(n, 1);
    assert_true(mr[0].mean == 2.0 && mr[0].examples == 10);
    const round_participant *p;
    assert_int_equal(round_get_participants(r, 2, &p, &n), FC_OK);
    assert_int_equal(p[0].outcome, ROUND_REJECTED);
    round_free(r);
}

static void test_stop_during_commit_lets_commit_finish(void **state) {
    (void)state;
    round_config c = cfg_basic(2, 2, 0, 2);
    round_sched *r = make(&c);
    fc_error err = {0};
    avail(r, 0, 1);
    avail(r, 0, 2);
    assert_int_equal(round_update_received(r, 1, 1, 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_update_received(r, 1, 2, 1, 10, &err), FC_OK);
    drain(r);
    assert_int_equal(round_aggregation_done(r, 2, 1, FC_OK, NULL, &err), FC_OK);
    drain(r);
    assert_int_equal(round_stop(r, 3, "operator stop", &err), FC_OK);
    drain(r);
    assert_int_equal(cap.n, 0);
    assert_int_equal(round_get_state(r), ROUND_AGGREGATING);
    assert_int_equal(round_commit_done(r, 4, 1, FC_OK, NULL, &err), FC_OK);
    drain(r);
    assert_true(saw_transition(ROUND_AGGREGATING, ROUND_COMMITTED));
    assert_string_equal(transition_to(ROUND_STOPPED)->reason, "operator stop");
    assert_int_equal(count(ROUND_ACT_SEND_TASK), 0);
    assert_true(round_model_version(r) == 1);
    round_free(r);
}

/* The worst event for the action queue: a deadline failure with every selected client pending
 * that immediately starts the next round with the same number of clients (2k + 5 actions). */
static void test_worst_case_event_fits_the_action_queue(void **state) {
    (void)state;
    round_config c = cfg_basic(100, 50, 50, 50);
    round_sched *r = make(&c);
    fc_error err = {0};
    for (uint64_t id = 1; id <= 100; id++)
        avail(r, 0, id);
    assert_int_equal(count(ROUND_ACT_SEND_TASK), 100);
    assert_int_equal(round_tick(r, 1000, &err), FC_OK);
    drain(r);
    assert_int_equal(count(ROUND_ACT_CANCEL_TASK), 100);
    assert_int_equal(count(ROUND_ACT_SEND_TASK), 100);
    assert_int_equal(cap.n, 205);
    assert_true(round_current_id(r) == 2);
    assert_string_equal(find(ROUND_ACT_RECORD_FAILED, 0)->reason,
                        "deadline passed with 0 of 50 required updates");
    round_free(r);
}

/* ---------------------------------------------------------------- asynchronous mode */

static round_config cfg_async(uint32_t buffer, uint32_t conc, uint64_t max_stale) {
    round_config c;
    round_config_defaults(&c);
    c.mode = ROUND_MODE_ASYNC;
    c.buffer_size = buffer;
    c.concurrency = conc;
    c.max_staleness = max_stale;
    c.round_timeout_ms = 1000;
    c.seed = 7;
    return c;
}

/* The task round id sent to client id in the last drained batch (0 if none). */
static uint64_t task_of(uint64_t id) {
    for (size_t i = 0; i < cap.n; i++)
        if (cap.a[i].type == ROUND_ACT_SEND_TASK && cap.a[i].client_id == id)
            return cap.a[i].round_id;
    return 0;
}

static void accept_ok(round_sched *r, uint64_t now, uint64_t id, uint64_t round) {
    fc_error err = {0};
    assert_int_equal(round_update_received(r, now, id, round, 10, &err), FC_OK);
    drain(r);
}

/* Aggregation and commit of the buffer that just closed succeed. */
static void commit_buffer(round_sched *r, uint64_t now) {
    fc_error err = {0};
    const round_action *a = find(ROUND_ACT_START_AGGREGATION, 0);
    assert_non_null(a);
    uint64_t id = a->round_id;
    assert_int_equal(round_aggregation_done(r, now, id, FC_OK, NULL, &err), FC_OK);
    drain(r);
    assert_non_null(find(ROUND_ACT_COMMIT, 0));
    assert_int_equal(round_commit_done(r, now, id, FC_OK, NULL, &err), FC_OK);
    drain(r);
}

static void test_async_config_is_checked(void **state) {
    (void)state;
    fc_error err = {0};
    round_sched *r = NULL;
    round_config c = cfg_async(10, 10, 5);
    c.eval_every = 3;
    assert_int_equal(round_create(&c, &r, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "eval_every"));
    c = cfg_async(0, 10, 5);
    assert_int_equal(round_create(&c, &r, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "buffer_size"));
    c = cfg_async(10, 0, 5);
    assert_int_equal(round_create(&c, &r, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "concurrency"));
    round_config d;
    round_config_defaults(&d);
    assert_int_equal(d.buffer_size, 10); /* FedBuff's K */
}

static void test_async_hands_out_tasks_up_to_concurrency(void **state) {
    (void)state;
    round_config c = cfg_async(2, 3, 5);
    round_sched *r = make(&c);
    avail(r, 0, 1);
    assert_non_null(transition_to(ROUND_TRAINING)); /* the first buffer opens at once */
    assert_int_equal(count(ROUND_ACT_SEND_TASK), 1);
    assert_int_equal(find(ROUND_ACT_ARM_TIMER, 0)->deadline_ms, 1000);
    avail(r, 5, 2);
    avail(r, 6, 3);
    assert_int_equal(count(ROUND_ACT_SEND_TASK), 1);
    avail(r, 7, 4); /* concurrency 3: client 4 waits */
    assert_int_equal(count(ROUND_ACT_SEND_TASK), 0);
    round_async_stats st;
    assert_int_equal(round_get_async_stats(r, &st), FC_OK);
    assert_int_equal(st.in_flight, 3);
    assert_int_equal(round_idle_count(r), 1);
    round_free(r);
}

static void test_async_versions_advance_without_waiting_for_slow_clients(void **state) {
    (void)state;
    round_config c = cfg_async(2, 4, 1);
    round_sched *r = make(&c);
    uint64_t task[5] = {0};
    for (uint64_t id = 1; id <= 4; id++) {
        avail(r, 0, id);
        task[id] = task_of(id);
        assert_int_equal(task[id], 1);
    }
    /* fast clients 1 and 2 fill buffer 1; 3 and 4 are still training */
    accept_ok(r, 10, 1, task[1]);
    assert_int_equal(count(ROUND_ACT_SEND_TASK), 0); /* 1 rests until the buffer ends */
    accept_ok(r, 11, 2, task[2]);
    assert_non_null(transition_to(ROUND_AGGREGATING));
    commit_buffer(r, 12);
    assert_int_equal(round_model_version(r), 1);
    assert_true(saw_transition(ROUND_WAITING, ROUND_TRAINING));
    /* the next buffer (round 2) opens and the rested fast clients train version 1 */
    assert_int_equal(count(ROUND_ACT_SEND_TASK), 2);
    assert_int_equal(find(ROUND_ACT_SEND_TASK, 0)->model_version, 1);
    task[1] = task_of(1);
    task[2] = task_of(2);
    assert_int_equal(task[1], 2);
    accept_ok(r, 20, 1, task[1]);
    accept_ok(r, 21, 2, task[2]);
    commit_buffer(r, 22);
    assert_int_equal(round_model_version(r), 2);
    /* slow client 3 (version 0) is now 2 versions behind: refused at max_staleness 1 */
    round_task t;
    uint64_t tau = 0;
    fc_error err = {0};
    assert_int_equal(round_task_check(r, 3, &t, &tau, &err), FC_ERR_REQUIREMENT);
    assert_int_equal(tau, 2);
    assert_int_equal(t.model_version, 0);
    assert_non_null(strstr(err.msg, "stale"));
    assert_int_equal(round_update_rejected(r, 30, 3, task[3], err.msg, &err), FC_OK);
    drain(r);
    const round_participant *parts = NULL;
    size_t n = 0;
    assert_int_equal(round_get_participants(r, 3, &parts, &n), FC_OK);
    assert_int_equal(n, 1);
    assert_int_equal(parts[0].outcome, ROUND_REJECTED);
    assert_int_equal(parts[0].staleness, 2);
    assert_non_null(strstr(parts[0].reason, "stale"));
    round_free(r);
}

static void test_async_accepted_update_records_its_staleness(void **state) {
    (void)state;
    round_config c = cfg_async(1, 2, 5);
    round_sched *r = make(&c);
    avail(r, 0, 1);
    uint64_t slow = task_of(1);
    avail(r, 0, 2);
    accept_ok(r, 1, 2, task_of(2));
    commit_buffer(r, 2); /* version 1; client 2 trains again */
    accept_ok(r, 3, 2, task_of(2));
    commit_buffer(r, 4); /* version 2 */
    round_task t;
    uint64_t tau = 0;
    assert_int_equal(round_task_check(r, 1, &t, &tau, NULL), FC_OK);
    assert_int_equal(tau, 2);
    accept_ok(r, 5, 1, slow);
    const round_participant *parts = NULL;
    size_t n = 0;
    assert_int_equal(round_get_participants(r, 3, &parts, &n), FC_OK);
    assert_int_equal(n, 1);
    assert_int_equal(parts[0].outcome, ROUND_ACCEPTED);
    assert_int_equal(parts[0].base_version, 0);
    assert_int_equal(parts[0].staleness, 2);
    round_free(r);
}

static void test_async_refuses_updates_without_a_matching_task(void **state) {
    (void)state;
    round_config c = cfg_async(2, 1, 5);
    round_sched *r = make(&c);
    avail(r, 0, 1);
    avail(r, 0, 2); /* concurrency 1: no task for 2 */
    uint64_t t1 = task_of(1) ? task_of(1) : 1;
    fc_error err = {0};
    assert_int_equal(round_update_received(r, 1, 2, t1, 10, &err), FC_ERR_PROTOCOL);
    assert_non_null(strstr(err.msg, "no task"));
    assert_int_equal(round_update_received(r, 1, 1, t1 + 7, 10, &err), FC_ERR_PROTOCOL);
    assert_non_null(strstr(err.msg, "not round"));
    assert_int_equal(round_task_check(r, 2, NULL, NULL, &err), FC_ERR_NOT_FOUND);
    round_free(r);
}

static void test_async_update_during_commit_waits_for_the_next_buffer(void **state) {
    (void)state;
    round_config c = cfg_async(1, 2, 5);
    round_sched *r = make(&c);
    avail(r, 0, 1);
    avail(r, 0, 2);
    uint64_t t1 = task_of(1) ? task_of(1) : 1, t2 = 1;
    accept_ok(r, 1, 1, t1);
    assert_int_equal(round_get_state(r), ROUND_AGGREGATING);
    fc_error err = {0};
    assert_int_equal(round_update_received(r, 2, 2, t2, 10, &err), FC_ERR_STATE);
    commit_buffer(r, 3);
    accept_ok(r, 4, 2, t2); /* now it lands in buffer 2 */
    const round_participant *parts = NULL;
    size_t n = 0;
    assert_int_equal(round_get_participants(r, 2, &parts, &n), FC_OK);
    assert_int_equal(n, 1);
    assert_int_equal(parts[0].client_id, 2);
    assert_int_equal(parts[0].staleness, 1);
    round_free(r);
}

static void test_async_task_deadline_cancels_and_reassigns(void **state) {
    (void)state;
    round_config c = cfg_async(5, 1, 5);
    round_sched *r = make(&c);
    avail(r, 0, 1);
    avail(r, 100, 2);
    fc_error err = {0};
    assert_int_equal(round_tick(r, 999, &err), FC_OK);
    drain(r);
    assert_int_equal(count(ROUND_ACT_CANCEL_TASK), 0);
    assert_int_equal(round_tick(r, 1000, &err), FC_OK);
    drain(r);
    assert_int_equal(count(ROUND_ACT_CANCEL_TASK), 1);
    assert_int_equal(find(ROUND_ACT_CANCEL_TASK, 0)->client_id, 1);
    assert_non_null(strstr(find(ROUND_ACT_CANCEL_TASK, 0)->reason, "deadline"));
    assert_int_equal(count(ROUND_ACT_SEND_TASK), 1); /* the freed slot goes out again */
    assert_int_equal(find(ROUND_ACT_ARM_TIMER, 0)->deadline_ms, 2000);
    round_async_stats st;
    round_get_async_stats(r, &st);
    assert_int_equal(st.tasks_expired, 1);
    assert_int_equal(st.tasks_sent, 2);
    round_free(r);
}

static void test_async_gone_client_frees_its_slot(void **state) {
    (void)state;
    round_config c = cfg_async(5, 1, 5);
    round_sched *r = make(&c);
    avail(r, 0, 1);
    avail(r, 0, 2);
    round_async_stats st;
    round_get_async_stats(r, &st);
    assert_int_equal(st.in_flight, 1);
    fc_error err = {0};
    round_task t;
    uint64_t holder = round_task_check(r, 1, &t, NULL, NULL) == FC_OK ? 1 : 2;
    assert_int_equal(round_client_gone(r, 1, holder, &err), FC_OK);
    drain(r);
    assert_int_equal(count(ROUND_ACT_SEND_TASK), 1);
    assert_int_equal(find(ROUND_ACT_SEND_TASK, 0)->client_id, holder == 1 ? 2 : 1);
    round_get_async_stats(r, &st);
    assert_int_equal(st.tasks_dropped, 1);
    round_free(r);
}

static void test_async_stop_cancels_tasks_and_fails_the_open_buffer(void **state) {
    (void)state;
    round_config c = cfg_async(5, 3, 5);
    round_sched *r = make(&c);
    for (uint64_t id = 1; id <= 3; id++)
        avail(r, 0, id);
    accept_ok(r, 1, 1, 1);
    fc_error err = {0};
    assert_int_equal(round_stop(r, 2, NULL, &err), FC_OK);
    drain(r);
    assert_int_equal(count(ROUND_ACT_CANCEL_TASK), 2);
    assert_int_equal(count(ROUND_ACT_RECORD_FAILED), 1);
    assert_int_equal(round_get_state(r), ROUND_STOPPED);
    round_free(r);
}

static void test_async_max_rounds_counts_committed_buffers(void **state) {
    (void)state;
    round_config c = cfg_async(1, 2, 5);
    c.max_rounds = 2;
    round_sched *r = make(&c);
    avail(r, 0, 1);
    avail(r, 0, 2);
    accept_ok(r, 1, 1, 1);
    commit_buffer(r, 2);
    assert_int_equal(round_get_state(r), ROUND_TRAINING);
    accept_ok(r, 3, 2, 1);
    commit_buffer(r, 4);
    assert_int_equal(round_get_state(r), ROUND_STOPPED);
    assert_int_equal(round_model_version(r), 2);
    assert_int_equal(count(ROUND_ACT_CANCEL_TASK), 1); /* client 1's third task */
    round_free(r);
}

static void test_async_pause_stops_new_tasks_until_resume(void **state) {
    (void)state;
    round_config c = cfg_async(1, 2, 5);
    round_sched *r = make(&c);
    avail(r, 0, 1);
    fc_error err = {0};
    assert_int_equal(round_pause(r, 1, &err), FC_OK);
    drain(r);
    avail(r, 2, 2);
    assert_int_equal(count(ROUND_ACT_SEND_TASK), 0);
    accept_ok(r, 3, 1, 1);
    commit_buffer(r, 4);
    assert_int_equal(round_get_state(r), ROUND_PAUSED);
    assert_int_equal(round_resume(r, 5, &err), FC_OK);
    drain(r);
    assert_int_equal(round_get_state(r), ROUND_TRAINING);
    assert_int_equal(count(ROUND_ACT_SEND_TASK), 2);
    round_free(r);
}

/* Random event sequences against a model of every client (offline, idle, training, resting):
 * a task goes only to a connected idle client, never more than concurrency train at once, the
 * scheduler is work-conserving (a free slot and an idle client never coexist while a buffer is
 * open), a buffer closes at exactly buffer_size accepted updates and each commit adds one
 * version. */
enum { C_OFF = 0, C_IDLE, C_TRAIN, C_REST };
#define SIM_N 12

typedef struct sim_client {
    int st;
    int answered; /* in the open buffer: it rests, also across a reconnection */
    int held;     /* answered while no buffer was open (paused): 1 accept, 2 reject */
    uint64_t task_round, task_version;
} sim_client;

static void sim_apply(round_sched *r, sim_client *c, uint64_t *version, uint32_t k,
                      uint32_t conc, uint64_t now, int paused) {
    fc_error err = {0};
    for (int again = 1; again;) {
        again = 0;
        drain(r);
        for (size_t i = 0; i < cap.n; i++) {
            const round_action *a = &cap.a[i];
            sim_client *x = a->client_id >= 1 && a->client_id <= SIM_N ? &c[a->client_id] : NULL;
            switch (a->type) {
            case ROUND_ACT_SEND_TASK:
                assert_non_null(x);
                assert_int_equal(x->st, C_IDLE);
                assert_int_equal(a->model_version, *version);
                x->st = C_TRAIN;
                x->task_round = a->round_id;
                x->task_version = a->model_version;
                break;
            case ROUND_ACT_CANCEL_TASK:
                assert_non_null(x);
                assert_int_equal(x->st, C_TRAIN);
                x->st = C_IDLE;
                break;
            case ROUND_ACT_TRANSITION:
                if (a->to == ROUND_TRAINING)
                    for (int j = 1; j <= SIM_N; j++) {
                        c[j].answered = 0;
                        if (c[j].st == C_REST)
                            c[j].st = C_IDLE;
                    }
                break;
            case ROUND_ACT_START_AGGREGATION: {
                round_info info;
                assert_int_equal(round_get_info(r, a->round_id, &info), FC_OK);
                assert_int_equal(info.accepted, k);
                assert_int_equal(round_aggregation_done(r, now, a->round_id, FC_OK, NULL, &err),
                                 FC_OK);
                again = 1;
                break;
            }
            case ROUND_ACT_COMMIT:
                assert_int_equal(a->model_version, *version + 1);
                assert_int_equal(round_commit_done(r, now, a->round_id, FC_OK, NULL, &err), FC_OK);
                (*version)++;
                again = 1;
                break;
            default: break;
            }
            if (again) {
                for (size_t j = i + 1; j < cap.n; j++) /* none follow a hand-off action */
                    assert_true(cap.a[j].type == ROUND_ACT_TRANSITION);
                break;
            }
        }
    }
    size_t training = 0, idle = 0;
    for (int j = 1; j <= SIM_N; j++) {
        training += c[j].st == C_TRAIN;
        idle += c[j].st == C_IDLE;
    }
    assert_true(training <= conc);
    if (round_get_state(r) == ROUND_TRAINING && !paused)
        assert_true(training == conc || idle == 0);
    round_async_stats st;
    assert_int_equal(round_get_async_stats(r, &st), FC_OK);
    assert_int_equal(st.in_flight, training);
    assert_true(st.buffer_fill < k || round_get_state(r) != ROUND_TRAINING);
}

static void test_async_random_events_keep_the_invariants(void **state) {
    (void)state;
    for (uint64_t seed = 1; seed <= 30; seed++) {
        uint64_t sm = seed;
        uint32_t k = 1 + (uint32_t)(round_splitmix64(&sm) % 4);
        uint32_t conc = 1 + (uint32_t)(round_splitmix64(&sm) % 6);
        round_config c = cfg_async(k, conc, round_splitmix64(&sm) % 4);
        c.seed = seed;
        round_sched *r = make(&c);
        sim_client cl[SIM_N + 1];
        memset(cl, 0, sizeof cl);
        uint64_t version = 0, now = 0;
        int paused = 0;
        fc_error err = {0};
        for (int step = 0; step < 3000; step++) {
            /* sim_apply finishes every aggregation and commit it sees */
            assert_int_not_equal(round_get_state(r), ROUND_AGGREGATING);
            uint64_t id = 1 + round_splitmix64(&sm) % SIM_N;
            sim_client *x = &cl[id];
            switch (round_splitmix64(&sm) % 7) {
            case 0:
                if (x->st == C_OFF) {
                    assert_int_equal(round_client_available(r, now, id, &err), FC_OK);
                    x->st = x->answered ? C_REST : C_IDLE;
                } else {
                    assert_int_equal(round_client_gone(r, now, id, &err), FC_OK);
                    x->st = C_OFF;
                }
                break;
            case 1:
            case 2:
            case 3: {
                if (x->st != C_TRAIN)
                    break;
                if (x->held)
                    break;
                int reject = round_splitmix64(&sm) % 4 == 0;
                fc_status st = reject ? round_update_rejected(r, now, id, x->task_round, "bad", &err)
                                      : round_update_received(r, now, id, x->task_round, 5, &err);
                if (round_get_state(r) == ROUND_PAUSED) {
                    /* no buffer open: refused, nothing changed; the daemon holds it */
                    assert_int_equal(st, FC_ERR_STATE);
                    x->held = reject ? 2 : 1;
                    break;
                }
                assert_int_equal(st, FC_OK);
                x->st = C_REST;
                x->answered = 1;
                break;
            }
            case 4: now += round_splitmix64(&sm) % 700; break;
            case 5: assert_int_equal(round_tick(r, now, &err), FC_OK); break;
            case 6:
                if (round_splitmix64(&sm) % 8) /* pauses are rarer than the rest */
                    break;
                paused = !paused;
                assert_int_equal(paused ? round_pause(r, now, &err) : round_resume(r, now, &err),
                                 FC_OK);
                break;
            }
            sim_apply(r, cl, &version, k, conc, now, paused);
            for (uint64_t j = 1; j <= SIM_N && round_get_state(r) == ROUND_TRAINING; j++) {
                if (!cl[j].held || cl[j].st != C_TRAIN) { /* replay, as the daemon does */
                    cl[j].held = 0;
                    continue;
                }
                fc_status st = cl[j].held == 2
                                   ? round_update_rejected(r, now, j, cl[j].task_round, "bad", &err)
                                   : round_update_received(r, now, j, cl[j].task_round, 5, &err);
                assert_int_equal(st, FC_OK);
                cl[j].held = 0;
                cl[j].st = C_REST;
                cl[j].answered = 1;
                sim_apply(r, cl, &version, k, conc, now, paused);
            }
        }
        assert_true(version > 0);
        round_free(r);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_validation_names_the_key),
        cmocka_unit_test(test_splitmix64_matches_reference),
        cmocka_unit_test(test_prng_below_stays_in_range),
        cmocka_unit_test(test_happy_path_reaches_committed),
        cmocka_unit_test(test_selection_is_reproducible_regardless_of_arrival_order),
        cmocka_unit_test(test_different_seeds_select_differently),
        cmocka_unit_test(test_selection_matches_reference_script),
        cmocka_unit_test(test_not_enough_clients_stays_waiting),
        cmocka_unit_test(test_over_selection_closes_at_clients_per_round_and_cancels_rest),
        cmocka_unit_test(test_deadline_with_quorum_closes),
        cmocka_unit_test(test_deadline_below_quorum_fails_and_next_round_starts),
        cmocka_unit_test(test_disconnect_counts_as_dropped_and_round_closes),
        cmocka_unit_test(test_bad_updates_are_refused_with_reasons),
        cmocka_unit_test(test_eval_every_gives_evaluation_rounds_with_weighted_metrics),
        cmocka_unit_test(test_max_rounds_stops),
        cmocka_unit_test(test_max_rounds_counts_committed_training_rounds),
        cmocka_unit_test(test_stop_during_training_fails_round_cleanly),
        cmocka_unit_test(test_restore_continues_numbering),
        cmocka_unit_test(test_aggregation_failure_fails_round_with_reason),
        cmocka_unit_test(test_commit_failure_fails_round),
        cmocka_unit_test(test_pause_holds_next_round_until_resume),
        cmocka_unit_test(test_allocation_failures_are_clean),
        cmocka_unit_test(test_worst_case_event_fits_the_action_queue),
        cmocka_unit_test(test_stop_during_commit_lets_commit_finish),
        cmocka_unit_test(test_non_finite_metric_rejects_the_report),
        cmocka_unit_test(test_async_config_is_checked),
        cmocka_unit_test(test_async_hands_out_tasks_up_to_concurrency),
        cmocka_unit_test(test_async_versions_advance_without_waiting_for_slow_clients),
        cmocka_unit_test(test_async_accepted_update_records_its_staleness),
        cmocka_unit_test(test_async_refuses_updates_without_a_matching_task),
        cmocka_unit_test(test_async_update_during_commit_waits_for_the_next_buffer),
        cmocka_unit_test(test_async_task_deadline_cancels_and_reassigns),
        cmocka_unit_test(test_async_gone_client_frees_its_slot),
        cmocka_unit_test(test_async_stop_cancels_tasks_and_fails_the_open_buffer),
        cmocka_unit_test(test_async_max_rounds_counts_committed_buffers),
        cmocka_unit_test(test_async_pause_stops_new_tasks_until_resume),
        cmocka_unit_test(test_async_random_events_keep_the_invariants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
