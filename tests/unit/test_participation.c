/* test_participation.c: the FedAU experiment's participation model (client/examples/lib/
 * participation.h): p_n from the clients' labels against hand arithmetic, its checks, the
 * Bernoulli draws' frequency and determinism, and the 1/p oracle against a hand computation. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "client/examples/lib/common.h"
#include "client/examples/lib/participation.h"

/* Four clients of four images each; shares of digits 5..9: 0, 1/2, 1, 1/2. */
static uint8_t labels[16] = {0, 1, 2, 3, 5, 6, 0, 1, 5, 6, 7, 8, 9, 9, 1, 1};
static size_t idx[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

static void four_clients(ex_dataset *d, ex_split *s, ex_client_split c[4]) {
    *d = (ex_dataset){16, NULL, labels};
    for (int j = 0; j < 4; j++)
        c[j] = (ex_client_split){idx + 4 * j, 4, NULL, 0};
    memset(s, 0, sizeof *s);
    s->clients = 4;
    s->client = c;
}

static void test_p_follows_the_share_of_high_digits_with_the_requested_mean(void **state) {
    (void)state;
    ex_dataset d;
    ex_split s;
    ex_client_split c[4];
    four_clients(&d, &s, c);
    double p[4];
    fc_error err = {0};
    assert_int_equal(ex_participation_probs(&d, &s, 0.3, 0.05, p, &err), FC_OK);
    /* mean (0.05 + 0.5c + c + 0.5c) / 4 = 0.3  =>  c = 0.575 */
    assert_true(fabs(p[0] - 0.05) < 1e-9);
    assert_true(fabs(p[1] - 0.2875) < 1e-9);
    assert_true(fabs(p[2] - 0.575) < 1e-9);
    assert_true(fabs(p[3] - 0.2875) < 1e-9);
}

static void test_impossible_probabilities_are_refused(void **state) {
    (void)state;
    ex_dataset d;
    ex_split s;
    ex_client_split c[4];
    four_clients(&d, &s, c);
    double p[4];
    fc_error err = {0};
    assert_int_equal(ex_participation_probs(&d, &s, 0.1, 0.2, p, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "p_min 0.2 exceeds p_mean 0.1"));
    assert_int_equal(ex_participation_probs(&d, &s, 0, 0.02, p, &err), FC_ERR_CONFIG);
    s.clients = 1; /* client 0 holds only digits 0..3: no c reaches a mean above p_min */
    assert_int_equal(ex_participation_probs(&d, &s, 0.5, 0.02, p, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "cannot be reached"));
}

static void test_digits_split_gets_mean_min_and_order_of_the_paper_setup(void **state) {
    (void)state;
    ex_split_config sc = {100, 0.1, 1, 0.2, 10};
    ex_dataset d = EX_DATASET_INIT;
    ex_split s = EX_SPLIT_INIT;
    fc_error err = {0};
    assert_int_equal(ex_load_and_split(EX_DEFAULT_DATA, &sc, &d, &s, &err), FC_OK);
    double p[100], share[100], sum = 0;
    assert_int_equal(ex_participation_probs(&d, &s, 0.1, 0.02, p, &err), FC_OK);
    for (size_t j = 0; j < 100; j++) {
        size_t high = 0;
        for (size_t i = 0; i < s.client[j].n_train; i++)
            high += d.y[s.client[j].train[i]] >= 5;
        share[j] = (double)high / (double)s.client[j].n_train;
        assert_true(p[j] >= 0.02 && p[j] <= 1);
        sum += p[j];
    }
    assert_true(fabs(sum / 100 - 0.1) < 1e-9);
    for (size_t a = 0; a < 100; a++)
        for (size_t b = 0; b < 100; b++)
            if (share[a] < share[b])
                assert_true(p[a] <= p[b]);
    ex_split_free(&s);
    ex_dataset_free(&d);
}

static void test_bernoulli_draws_have_the_right_frequency_and_repeat(void **state) {
    (void)state;
    size_t hits = 0, same = 0, other = 0;
    for (size_t t = 0; t < 20000; t++) {
        int a = ex_participates(7, 3, t, 0.1);
        hits += (size_t)a;
        same += a == ex_participates(7, 3, t, 0.1);
        other += a != ex_participates(7, 4, t, 0.1);
    }
    /* 2000 expected, sd sqrt(20000 * 0.1 * 0.9) = 42.4: within 5 sd */
    assert_true(hits > 2000 - 212 && hits < 2000 + 212);
    assert_int_equal(same, 20000);
    assert_true(other > 2000); /* another client draws its own sequence */
    assert_int_equal(ex_participates(7, 3, 0, 1.0), 1);
    assert_int_equal(ex_participates(7, 3, 0, 0.0), 0);
}

static void test_oracle_weights_each_participant_by_its_inverse_probability(void **state) {
    (void)state;
    const float delta[6] = {1, 2, 100, 100, 3, -4};
    const uint8_t in[3] = {1, 0, 1};
    const double p[3] = {0.5, 0.1, 0.25};
    double D[2];
    ex_oracle_aggregate(delta, in, p, 3, 2, D);
    /* (1/3) * ((1, 2) / 0.5 + (3, -4) / 0.25) = (1/3) * (14, -12) */
    assert_true(fabs(D[0] - 14.0 / 3) < 1e-12);
    assert_true(fabs(D[1] + 4.0) < 1e-12);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_p_follows_the_share_of_high_digits_with_the_requested_mean),
        cmocka_unit_test(test_impossible_probabilities_are_refused),
        cmocka_unit_test(test_digits_split_gets_mean_min_and_order_of_the_paper_setup),
        cmocka_unit_test(test_bernoulli_draws_have_the_right_frequency_and_repeat),
        cmocka_unit_test(test_oracle_weights_each_participant_by_its_inverse_probability),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
