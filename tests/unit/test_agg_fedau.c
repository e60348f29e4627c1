/* test_agg_fedau.c: FedAU weights against hand-simulated participation schedules and an eager
 * implementation of the IBM/fedau loop written independently here; state persistence. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "aggregators/agg.h"
#include "aggregators/rules.h"
#include "core/alloc.h"
#include "tests/lib/agg_testutil.h"

#define ROUNDS 8
#define CLIENTS 4

/* Schedule (hand-written): who participates in rounds 0..7. Client 3 registers at round 3. */
static const int sched[ROUNDS][CLIENTS] = {
    {1, 0, 0, 0}, /* t0 */
    {0, 1, 0, 0}, /* t1 */
    {1, 0, 1, 0}, /* t2 */
    {0, 0, 0, 1}, /* t3 */
    {1, 1, 0, 0}, /* t4 */
    {0, 0, 0, 0}, /* t5: nobody */
    {1, 0, 1, 1}, /* t6 */
    {0, 1, 0, 1}, /* t7 */
};
static const uint64_t reg_round[CLIENTS] = {0, 0, 0, 3};

/* Expected omega per (round, client) when it participates, worked by hand from the IBM loop
 * (M += 1 every round; on participation omega = S ? Omega : 1; close when participating or
 * M == K). 0 = not participating. Without cutoff:
 *   c0: t0 M1 w1 (Om 1) | t2 M2 w1 (Om 3/2) | t4 M2 w3/2 (Om 5/3) | t6 M2 w5/3
 *   c1: t1 M2 w1 (Om 2) | t4 M3 w2 (Om 5/2) | t7 M3 w5/2
 *   c2: t2 M3 w1 (Om 3) | t6 M4 w3
 *   c3 (registered t3): t3 M1 w1 (Om 1) | t6 M3 w1 (Om 2) | t7 M1 w2
 * K = 2 (a cutoff close of length 2 whenever M reaches 2 while absent):
 *   c0: t0 w1 (Om 1) | t2 M2 w1 (Om 3/2) | t4 M2 w3/2 (Om 5/3) | t6 M2 w5/3
 *   c1: t1 M2 w1 (Om 2) | t3 close 2 (Om 2) | t4 M1 w2 (Om 5/3) | t6 close 2 (Om 7/4) | t7 w7/4
 *   c2: t1 close 2 (Om 2) | t2 M1 w2 (Om 3/2) | t4 close 2 (Om 5/3) | t6 M2 w5/3
 *   c3: t3 M1 w1 (Om 1) | t5 close 2 (Om 3/2) | t6 M1 w3/2 (Om 4/3) | t7 M1 w4/3 */
static const double omega_none[ROUNDS][CLIENTS] = {
    {1, 0, 0, 0},   {0, 1, 0, 0}, {1, 0, 1, 0},       {0, 0, 0, 1},
    {1.5, 2, 0, 0}, {0, 0, 0, 0}, {5.0 / 3, 0, 3, 1}, {0, 2.5, 0, 2},
};
static const double omega_k2[ROUNDS][CLIENTS] = {
    {1, 0, 0, 0},
    {0, 1, 0, 0},
    {1, 0, 2, 0},
    {0, 0, 0, 1},
    {1.5, 2, 0, 0},
    {0, 0, 0, 0},
    {5.0 / 3, 0, 5.0 / 3, 1.5},
    {0, 7.0 / 4, 0, 4.0 / 3},
};

/* The eager IBM/fedau loop (reference §3), one step for every registered client every round. */
typedef struct eager {
    uint64_t K;
    uint64_t M[64], S[64];
    double Omega[64];
} eager;

static double eager_round(eager *e, size_t n, const int *part, const uint64_t *reg, uint64_t t,
                          double *omega_out) {
    for (size_t c = 0; c < n; c++) {
        omega_out[c] = 0;
        if (reg[c] > t)
            continue; /* not registered yet: its counters start at its registration round */
        e->M[c]++;
        if (part[c])
            omega_out[c] = e->S[c] > 0 ? e->Omega[c] : 1.0;
        if (part[c] || (e->K && e->M[c] == e->K)) {
            e->S[c]++;
            e->Omega[c] = e->S[c] == 1 ? (double)e->M[c]
                                       : ((double)(e->S[c] - 1) * e->Omega[c] + (double)e->M[c]) /
                                             (double)e->S[c];
            e->M[c] = 0;
        }
    }
    return 0;
}

/* Runs the schedule through the rule (state carried through blobs) and checks omegas against
 * `want` (if given) and the eager loop, and D = (lr/N) sum omega_i Delta_i. */
static void run_schedule(uint64_t K, const double (*want)[CLIENTS]) {
    char kbuf[32];
    snprintf(kbuf, sizeof kbuf, "cutoff=%llu", (unsigned long long)K);
    const char *kv[] = {kbuf, "lr=2", NULL};
    fc_buf state = FC_BUF_INIT;
    eager e;
    memset(&e, 0, sizeof e);
    e.K = K;
    for (uint64_t t = 0; t < ROUNDS; t++) {
        float data[CLIENTS][2];
        agg_update ups[CLIENTS];
        size_t n = 0;
        uint64_t N = 0;
        double om[CLIENTS];
        for (size_t c = 0; c < CLIENTS; c++)
            N += reg_round[c] <= t;
        eager_round(&e, CLIENTS, sched[t], reg_round, t, om);
        for (size_t c = 0; c < CLIENTS; c++) {
            if (!sched[t][c])
                continue;
            data[c][0] = (float)(c + 1);
            data[c][1] = (float)(t + 1);
            ups[n++] = (agg_update){.client_id = 100 + c,
                                    .dtype = FC_DTYPE_F32,
                                    .data = data[c],
                                    .weight = 1,
                                    .registered_round = reg_round[c]};
        }
        agg_context ctx = {.dim = 2, .round = t, .num_registered = N};
        double D[2];
        agg_report rep;
        fc_error err = {0};
        agg_report_init(&rep);
        assert_int_equal(
            agg_test_round("fedau", kv, &ctx, ups, n, NULL, (int)(t & 1), D, &rep, &state, &err),
            FC_OK);
        if (n == 0) {
            assert_true(rep.empty);
            agg_report_free(&rep);
            continue;
        }
        assert_int_equal(rep.n_weights_used, n);
        double want_d[2] = {0, 0};
        size_t k = 0;
        for (size_t c = 0; c < CLIENTS; c++) {
            if (!sched[t][c])
                continue;
            if (want)
                assert_true(agg_test_close(rep.weights_used[k], want[t][c], 1e-12));
            assert_true(agg_test_close(rep.weights_used[k], om[c], 1e-12));
            want_d[0] += om[c] * (double)(c + 1);
            want_d[1] += om[c] * (double)(t + 1);
            k++;
        }
        assert_true(agg_test_close(D[0], 2.0 / (double)N * want_d[0], 1e-12));
        assert_true(agg_test_close(D[1], 2.0 / (double)N * want_d[1], 1e-12));
        agg_report_free(&rep);
    }
    fc_buf_free(&state);
}

static void test_weights_without_cutoff_match_hand_schedule(void **state) {
    (void)state;
    run_schedule(0, omega_none);
}

static void test_weights_with_cutoff_2_match_hand_schedule(void **state) {
    (void)state;
    run_schedule(2, omega_k2);
}

static void test_cutoff_1_makes_every_weight_1(void **state) {
    (void)state;
    static const double ones[ROUNDS][CLIENTS] = {
        {1, 0, 0, 0}, {0, 1, 0, 0}, {1, 0, 1, 0}, {0, 0, 0, 1},
        {1, 1, 0, 0}, {0, 0, 0, 0}, {1, 0, 1, 1}, {0, 1, 0, 1},
    };
    run_schedule(1, ones);
}

/* Random schedules over 40 rounds and 9 clients (two registered late) against the eager loop. */
static void test_lazy_weights_match_eager_loop_on_random_schedules(void **state) {
    (void)state;
    const uint64_t Ks[] = {0, 1, 2, 3, 5};
    unsigned seed = 7;
    for (size_t ki = 0; ki < 5; ki++)
        for (int rep_i = 0; rep_i < 5; rep_i++) {
            enum { NC = 9, T = 40 };
            uint64_t reg[NC] = {0, 0, 0, 0, 0, 0, 0, 4, 17};
            eager e;
            memset(&e, 0, sizeof e);
            e.K = Ks[ki];
            fc_buf st = FC_BUF_INIT;
            char kbuf[32];
            snprintf(kbuf, sizeof kbuf, "cutoff=%llu", (unsigned long long)Ks[ki]);
            const char *kv[] = {kbuf, NULL};
            for (uint64_t t = 0; t < T; t++) {
                int part[NC];
                double om[NC];
                float one[1] = {1};
                agg_update ups[NC];
                size_t n = 0;
                uint64_t N = 0;
                for (size_t c = 0; c < NC; c++) {
                    part[c] = reg[c] <= t && (rand_r(&seed) % 100) < 30;
                    N += reg[c] <= t;
                    if (part[c])
                        ups[n++] = (agg_update){.client_id = c,
                                                .dtype = FC_DTYPE_F32,
                                                .data = one,
                                                .weight = 1,
                                                .registered_round = reg[c]};
                }
                eager_round(&e, NC, part, reg, t, om);
                agg_context ctx = {.dim = 1, .round = t, .num_registered = N};
                double D[1];
                agg_report rep;
                agg_report_init(&rep);
                assert_int_equal(
                    agg_test_round("fedau", kv, &ctx, ups, n, NULL, 0, D, &rep, &st, NULL), FC_OK);
                for (size_t c = 0, k = 0; c < NC; c++)
                    if (part[c])
                        assert_true(agg_test_close(rep.weights_used[k++], om[c], 1e-9));
                agg_report_free(&rep);
            }
            fc_buf_free(&st);
        }
}

/* Rounds 0..5 with the state blob carried directly vs. copied through fresh buffers (as
 * storage would), with and without expect: D and the saved bytes agree bit for bit. */
static void test_state_copied_between_rounds_round_trips_bitwise(void **state) {
    (void)state;
    const char *kv[] = {"cutoff=3", "lr=0.7", NULL};
    fc_buf a = FC_BUF_INIT, b = FC_BUF_INIT;
    for (uint64_t t = 0; t < 6; t++) {
        float d0[3] = {0.1f * (float)t, -1.3f, 7}, d1[3] = {2, 0.25f, -(float)t};
        agg_update ups[2] = {{.client_id = 5, .dtype = FC_DTYPE_F32, .data = d0, .weight = 1},
                             {.client_id = 9, .dtype = FC_DTYPE_F32, .data = d1, .weight = 1}};
        size_t n = (t % 3 == 1) ? 1 : 2;
        agg_context ctx = {.dim = 3, .round = t, .num_registered = 6};
        double Da[3], Db[3];
        agg_report rep;
        agg_report_init(&rep);
        assert_int_equal(
            agg_test_round("fedau", kv, &ctx, ups + (2 - n), n, NULL, 0, Da, &rep, &a, NULL),
            FC_OK);
        /* b: copy the blob through a fresh buffer each round, as storage would. */
        fc_buf copy = FC_BUF_INIT;
        assert_int_equal(fc_buf_append(&copy, b.data, b.len), FC_OK);
        fc_buf_free(&b);
        b = copy;
        assert_int_equal(
            agg_test_round("fedau", kv, &ctx, ups + (2 - n), n, NULL, 1, Db, &rep, &b, NULL),
            FC_OK);
        assert_true(agg_test_same_bits(Da, Db, 3));
        assert_int_equal(a.len, b.len);
        assert_memory_equal(a.data, b.data, a.len);
        agg_report_free(&rep);
    }
    assert_int_equal(a.len, 16 + 2 * 32);
    fc_buf_free(&a);
    fc_buf_free(&b);
}

static void test_bad_state_blobs_are_clear_errors(void **state) {
    (void)state;
    agg_context ctx = {.dim = 1, .round = 1, .num_registered = 2};
    agg_round *r = NULL;
    fc_error err = {0};
    uint8_t blob[16 + 32];
    fc_buf good = FC_BUF_INIT;
    /* A valid blob with one client. */
    float one[1] = {1};
    agg_update u = {.client_id = 1, .dtype = FC_DTYPE_F32, .data = one, .weight = 1};
    double D[1];
    agg_report rep;
    agg_report_init(&rep);
    agg_context c0 = {.dim = 1, .round = 0, .num_registered = 2};
    assert_int_equal(agg_test_round("fedau", NULL, &c0, &u, 1, NULL, 0, D, &rep, &good, NULL),
                     FC_OK);
    agg_report_free(&rep);
    assert_int_equal(good.len, sizeof blob);
    memcpy(blob, good.data, sizeof blob);
    blob[0] = 2; /* version 2 */
    assert_int_equal(agg_round_begin(&agg_fedau, NULL, &ctx, blob, sizeof blob, &r, &err),
                     FC_ERR_VERSION);
    assert_non_null(strstr(err.msg, "version 2"));
    memcpy(blob, good.data, sizeof blob);
    assert_int_equal(agg_round_begin(&agg_fedau, NULL, &ctx, blob, sizeof blob - 1, &r, &err),
                     FC_ERR_FORMAT);
    assert_int_equal(agg_round_begin(&agg_fedau, NULL, &ctx, blob, 3, &r, &err), FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "truncated"));
    blob[8] = 200; /* count 200 with one record */
    assert_int_equal(agg_round_begin(&agg_fedau, NULL, &ctx, blob, sizeof blob, &r, &err),
                     FC_ERR_FORMAT);
    assert_null(r);
    /* A client counted at round 0 cannot participate twice in round 0. */
    assert_int_equal(agg_test_round("fedau", NULL, &c0, &u, 1, NULL, 0, D, &rep, &good, &err),
                     FC_ERR_STATE);
    agg_report_free(&rep);
    fc_buf_free(&good);
}

/* Zero total weight makes the round empty; the counters the streaming rule already touched are
 * not saved: the state given back is the one loaded. */
static void test_empty_round_keeps_fedau_counters(void **state) {
    (void)state;
    float one[1] = {1};
    agg_update u = {.client_id = 1, .dtype = FC_DTYPE_F32, .data = one, .weight = 1};
    agg_context c0 = {.dim = 1, .round = 0, .num_registered = 2};
    agg_context c1 = {.dim = 1, .round = 1, .num_registered = 2};
    fc_buf st = FC_BUF_INIT, before = FC_BUF_INIT;
    double D[1];
    agg_report rep;
    agg_report_init(&rep);
    assert_int_equal(agg_test_round("fedau", NULL, &c0, &u, 1, NULL, 0, D, &rep, &st, NULL), FC_OK);
    assert_int_equal(fc_buf_append(&before, st.data, st.len), FC_OK);
    u.weight = 0;
    assert_int_equal(agg_test_round("fedau", NULL, &c1, &u, 1, NULL, 1, D, &rep, &st, NULL), FC_OK);
    assert_true(rep.empty);
    assert_true(D[0] == 0.0);
    assert_int_equal(st.len, before.len);
    assert_memory_equal(st.data, before.data, st.len);
    agg_report_free(&rep);
    fc_buf_free(&st);
    fc_buf_free(&before);
}

static void test_client_registered_after_the_round_is_refused(void **state) {
    (void)state;
    float one[1] = {1};
    agg_update u = {
        .client_id = 1, .dtype = FC_DTYPE_F32, .data = one, .weight = 1, .registered_round = 5};
    agg_context ctx = {.dim = 1, .round = 4, .num_registered = 2};
    double D[1];
    agg_report rep;
    fc_error err = {0};
    agg_report_init(&rep);
    assert_int_equal(agg_test_round("fedau", NULL, &ctx, &u, 1, NULL, 0, D, &rep, NULL, &err),
                     FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "registered at round 5"));
    agg_report_free(&rep);
    ctx.num_registered = 0;
    agg_round *r = NULL;
    assert_int_equal(agg_round_begin(&agg_fedau, NULL, &ctx, NULL, 0, &r, &err), FC_ERR_INVALID);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_weights_without_cutoff_match_hand_schedule),
        cmocka_unit_test(test_weights_with_cutoff_2_match_hand_schedule),
        cmocka_unit_test(test_cutoff_1_makes_every_weight_1),
        cmocka_unit_test(test_lazy_weights_match_eager_loop_on_random_schedules),
        cmocka_unit_test(test_state_copied_between_rounds_round_trips_bitwise),
        cmocka_unit_test(test_bad_state_blobs_are_clear_errors),
        cmocka_unit_test(test_empty_round_keeps_fedau_counters),
        cmocka_unit_test(test_client_registered_after_the_round_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
