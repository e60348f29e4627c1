/* test_agg_opt.c: server optimizers. Expected values by hand (sgd) or from tests/agg_expected.py
 * (adam, yogi, adagrad), which implements the definitions independently in Python. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "aggregators/agg.h"
#include "aggregators/rules.h"
#include "tests/lib/agg_testutil.h"

static agg_opt_state *make(const agg_opt *o, const char *const *kv, size_t dim) {
    agg_kv items[8];
    size_t n = 0;
    static char store[8][64];
    for (; kv && kv[n]; n++) {
        strncpy(store[n], kv[n], 63);
        store[n][63] = '\0';
        char *eq = strchr(store[n], '=');
        *eq = '\0';
        items[n] = (agg_kv){store[n], eq + 1};
    }
    agg_params p = {items, n};
    agg_opt_state *s = NULL;
    fc_error err = {0};
    assert_int_equal(o->create(&p, dim, &s, &err), FC_OK);
    return s;
}

/* w0 = [1,-1]; D1 = [1,2], D2 = [-1,0.5]; lr 0.5, momentum 0.9.
 * plain: b1 = [1,2], w1 = [1.5, 0]; b2 = 0.9*b1 + D2 = [-0.1, 2.3], w2 = [1.45, 1.15].
 * nesterov: w1 = w0 + 0.5*(D1 + 0.9*b1) = [1.95, 0.9];
 *           w2 = w1 + 0.5*(D2 + 0.9*b2) = [1.95-0.545, 0.9+1.285] = [1.405, 2.185]. */
static void test_sgd_momentum_and_nesterov_by_hand(void **state) {
    (void)state;
    const double D1[2] = {1, 2}, D2[2] = {-1, 0.5};
    const char *kv[] = {"lr=0.5", "momentum=0.9", NULL};
    const char *kvn[] = {"lr=0.5", "momentum=0.9", "nesterov=true", NULL};
    float w[2] = {1, -1}, wn[2] = {1, -1};
    agg_opt_state *s = make(&agg_opt_sgd, kv, 2), *sn = make(&agg_opt_sgd, kvn, 2);
    assert_int_equal(agg_opt_sgd.step(s, w, D1, NULL), FC_OK);
    assert_true(w[0] == 1.5f && w[1] == 0.0f);
    assert_int_equal(agg_opt_sgd.step(s, w, D2, NULL), FC_OK);
    assert_true(fabsf(w[0] - 1.45f) < 1e-6f && fabsf(w[1] - 1.15f) < 1e-6f);
    assert_int_equal(agg_opt_sgd.step(sn, wn, D1, NULL), FC_OK);
    assert_true(fabsf(wn[0] - 1.95f) < 1e-6f && fabsf(wn[1] - 0.9f) < 1e-6f);
    assert_int_equal(agg_opt_sgd.step(sn, wn, D2, NULL), FC_OK);
    assert_true(fabsf(wn[0] - 1.405f) < 1e-6f && fabsf(wn[1] - 2.185f) < 1e-6f);
    agg_opt_sgd.destroy(s);
    agg_opt_sgd.destroy(sn);
}

static void test_sgd_defaults_apply_the_delta(void **state) {
    (void)state;
    const double D[3] = {0.25, -3, 1e-3};
    float w[3] = {1, 2, 3};
    agg_opt_state *s = make(&agg_opt_sgd, NULL, 3);
    assert_int_equal(agg_opt_sgd.step(s, w, D, NULL), FC_OK);
    assert_true(w[0] == 1.25f && w[1] == -1.0f && w[2] == (float)(3.0 + 1e-3));
    assert_int_equal(agg_opt_sgd.step(s, w, D, NULL), FC_OK); /* momentum 0: b = D again */
    assert_true(w[0] == 1.5f && w[1] == -4.0f);
    /* nothing to remember with momentum 0: the state is the 17-byte header with started = 0 */
    fc_buf blob = FC_BUF_INIT;
    assert_int_equal(agg_opt_sgd.save_state(s, &blob, NULL), FC_OK);
    assert_int_equal(blob.len, 17);
    assert_int_equal(((const uint8_t *)blob.data)[16], 0);
    fc_buf_free(&blob);
    agg_opt_sgd.destroy(s);
}

static const double seqD[3][2] = {{1.0, -2.0}, {0.5, 0.25}, {-3.0, 0.0}};

static void check_sequence(const agg_opt *o, const char *const *kv, const double want[3][2]) {
    float w[2] = {1, -1};
    agg_opt_state *s = make(o, kv, 2);
    for (int k = 0; k < 3; k++) {
        assert_int_equal(o->step(s, w, seqD[k], NULL), FC_OK);
        assert_true(fabs((double)w[0] - want[k][0]) < 1e-6);
        assert_true(fabs((double)w[1] - want[k][1]) < 1e-6);
    }
    o->destroy(s);
}

static void test_adam_matches_definition(void **state) {
    (void)state;
    static const double want[3][2] = {{1.0990050488825425, -1.0995012623676585},
                                      {1.2236048965290558, -1.1763998559333428},
                                      {1.1693667982885856, -1.2459555125129849}};
    check_sequence(&agg_opt_adam, NULL, want);
}

static void test_yogi_matches_definition(void **state) {
    (void)state;
    static const double want[3][2] = {{1.0099004999875005, -1.0099501249992187},
                                      {1.0223109815307092, -1.017602219345057},
                                      {1.016893083715358, -1.0244891042563113}};
    check_sequence(&agg_opt_yogi, NULL, want);
}

static void test_adagrad_matches_definition(void **state) {
    (void)state;
    static const double want[3][2] = {{1.0999000499999876, -1.0999500124999992},
                                      {1.1445814274385235, -1.087552691360651},
                                      {1.0509064340271035, -1.087552691360651}};
    check_sequence(&agg_opt_adagrad, NULL, want);
}

/* Steps 1..6 in one instance vs. saved after step 3 and loaded into a fresh one: bitwise. */
static void test_resumed_optimizer_continues_bitwise(void **state) {
    (void)state;
    const agg_opt *opts[] = {&agg_opt_sgd, &agg_opt_adam, &agg_opt_yogi, &agg_opt_adagrad};
    const char *kv_sgd[] = {"lr=0.7", "momentum=0.9", "nesterov=true", NULL};
    for (size_t k = 0; k < 4; k++) {
        const char *const *kv = k == 0 ? kv_sgd : NULL;
        float w1[5] = {1, 2, 3, 4, 5}, w2[5];
        double D[5];
        agg_opt_state *a = make(opts[k], kv, 5), *b = NULL;
        for (int t = 0; t < 6; t++) {
            for (int i = 0; i < 5; i++)
                D[i] = sin(1.0 + t * 5 + i) * (i + 1);
            if (t == 3) {
                fc_buf blob = FC_BUF_INIT;
                fc_error err = {0};
                assert_int_equal(opts[k]->save_state(a, &blob, &err), FC_OK);
                b = make(opts[k], kv, 5);
                assert_int_equal(opts[k]->load_state(b, blob.data, blob.len, &err), FC_OK);
                memcpy(w2, w1, sizeof w1);
                fc_buf_free(&blob);
            }
            assert_int_equal(opts[k]->step(a, w1, D, NULL), FC_OK);
            if (b)
                assert_int_equal(opts[k]->step(b, w2, D, NULL), FC_OK);
        }
        assert_memory_equal(w1, w2, sizeof w1);
        fc_buf sa = FC_BUF_INIT, sb = FC_BUF_INIT;
        assert_int_equal(opts[k]->save_state(a, &sa, NULL), FC_OK);
        assert_int_equal(opts[k]->save_state(b, &sb, NULL), FC_OK);
        assert_int_equal(sa.len, sb.len);
        assert_memory_equal(sa.data, sb.data, sa.len);
        fc_buf_free(&sa);
        fc_buf_free(&sb);
        opts[k]->destroy(a);
        opts[k]->destroy(b);
    }
}

/* A step taken as uneven consecutive ranges (as the daemon does while it streams w_t from the
 * store) gives bitwise the same model and state as one whole step, over two rounds so that the
 * state a first step leaves behind is used. A range past dim is refused and changes nothing. */
static void test_step_in_ranges_equals_one_step(void **state) {
    (void)state;
    enum { DIM = 37 };
    static const char *const sgd_m[] = {"lr=0.5", "momentum=0.9", NULL};
    static const char *const sgd_n[] = {"lr=0.5", "momentum=0.9", "nesterov=true", NULL};
    static const char *const none[] = {NULL};
    const struct {
        const agg_opt *o;
        const char *const *kv;
    } cases[] = {{&agg_opt_sgd, none}, {&agg_opt_sgd, sgd_m}, {&agg_opt_sgd, sgd_n},
                 {&agg_opt_adam, none}, {&agg_opt_yogi, none}, {&agg_opt_adagrad, none}};
    const size_t cuts[] = {0, 1, 2, 10, 11, 30, DIM}; /* ranges [cuts[k], cuts[k+1]) */
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        agg_opt_state *whole = make(cases[c].o, cases[c].kv, DIM);
        agg_opt_state *parts = make(cases[c].o, cases[c].kv, DIM);
        float w1[DIM], w2[DIM];
        double D[DIM];
        for (size_t i = 0; i < DIM; i++)
            w1[i] = w2[i] = (float)i * 0.25f - 3.0f;
        for (int round = 0; round < 2; round++) {
            for (size_t i = 0; i < DIM; i++)
                D[i] = sin((double)(i + 1) * (round + 1.5)) * 0.1;
            assert_int_equal(cases[c].o->step(whole, w1, D, NULL), FC_OK);
            for (size_t k = 0; k + 1 < sizeof cuts / sizeof cuts[0]; k++)
                assert_int_equal(cases[c].o->step_range(parts, w2 + cuts[k], D + cuts[k], cuts[k],
                                                        cuts[k + 1] - cuts[k], NULL),
                                 FC_OK);
            assert_memory_equal(w1, w2, sizeof w1);
        }
        fc_buf b1 = FC_BUF_INIT, b2 = FC_BUF_INIT;
        assert_int_equal(cases[c].o->save_state(whole, &b1, NULL), FC_OK);
        assert_int_equal(cases[c].o->save_state(parts, &b2, NULL), FC_OK);
        assert_int_equal(b1.len, b2.len);
        assert_memory_equal(b1.data, b2.data, b1.len);
        fc_error err = {0};
        assert_int_equal(cases[c].o->step_range(parts, w2, D, 30, 8, &err), FC_ERR_RANGE);
        assert_non_null(strstr(err.msg, "[30, 30 + 8) of 37"));
        b2.len = 0;
        assert_int_equal(cases[c].o->save_state(parts, &b2, NULL), FC_OK);
        assert_memory_equal(b1.data, b2.data, b1.len);
        fc_buf_free(&b1);
        fc_buf_free(&b2);
        cases[c].o->destroy(whole);
        cases[c].o->destroy(parts);
    }
}

static void test_bad_optimizer_state_is_a_clear_error(void **state) {
    (void)state;
    const agg_opt *opts[] = {&agg_opt_sgd, &agg_opt_adam, &agg_opt_yogi, &agg_opt_adagrad};
    for (size_t k = 0; k < 4; k++) {
        agg_opt_state *a = make(opts[k], NULL, 3), *b = make(opts[k], NULL, 4);
        const double D[3] = {1, 2, 3};
        float w[3] = {0, 0, 0};
        fc_buf blob = FC_BUF_INIT;
        fc_error err = {0};
        assert_int_equal(opts[k]->step(a, w, D, NULL), FC_OK);
        assert_int_equal(opts[k]->save_state(a, &blob, NULL), FC_OK);
        assert_int_equal(opts[k]->load_state(b, blob.data, blob.len, &err), FC_ERR_SHAPE);
        assert_non_null(strstr(err.msg, "state is for 3 elements, the model has 4"));
        assert_int_equal(opts[k]->load_state(a, blob.data, blob.len - 1, &err), FC_ERR_FORMAT);
        assert_int_equal(opts[k]->load_state(a, blob.data, 2, &err), FC_ERR_FORMAT);
        assert_non_null(strstr(err.msg, "truncated"));
        blob.data[0] = 7;
        assert_int_equal(opts[k]->load_state(a, blob.data, blob.len, &err), FC_ERR_VERSION);
        assert_non_null(strstr(err.msg, "version 7 is not supported"));
        blob.data[0] = 1;
        blob.data[4] ^= 0xff; /* another optimizer's tag */
        assert_int_equal(opts[k]->load_state(a, blob.data, blob.len, &err), FC_ERR_FORMAT);
        fc_buf_free(&blob);
        opts[k]->destroy(a);
        opts[k]->destroy(b);
    }
    /* adam state into yogi */
    agg_opt_state *a = make(&agg_opt_adam, NULL, 2), *y = make(&agg_opt_yogi, NULL, 2);
    fc_buf blob = FC_BUF_INIT;
    fc_error err = {0};
    assert_int_equal(agg_opt_adam.save_state(a, &blob, NULL), FC_OK);
    assert_int_equal(agg_opt_yogi.load_state(y, blob.data, blob.len, &err), FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "not yogi state"));
    fc_buf_free(&blob);
    agg_opt_adam.destroy(a);
    agg_opt_yogi.destroy(y);
}

static void test_optimizer_params_are_validated(void **state) {
    (void)state;
    agg_kv items[1] = {{"tau", "0"}};
    agg_params p = {items, 1};
    agg_opt_state *s = NULL;
    fc_error err = {0};
    assert_int_equal(agg_opt_adam.create(&p, 2, &s, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "optimizer adam: bad value for 'tau'"));
    items[0] = (agg_kv){"momentum", "1.5"};
    assert_int_equal(agg_opt_sgd.create(&p, 2, &s, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "lr (number, default 1.0)"));
    items[0] = (agg_kv){"beta1", "0.5"};
    assert_int_equal(agg_opt_adagrad.create(&p, 2, &s, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "unknown parameter 'beta1'"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sgd_momentum_and_nesterov_by_hand),
        cmocka_unit_test(test_sgd_defaults_apply_the_delta),
        cmocka_unit_test(test_adam_matches_definition),
        cmocka_unit_test(test_yogi_matches_definition),
        cmocka_unit_test(test_adagrad_matches_definition),
        cmocka_unit_test(test_resumed_optimizer_continues_bitwise),
        cmocka_unit_test(test_step_in_ranges_equals_one_step),
        cmocka_unit_test(test_bad_optimizer_state_is_a_clear_error),
        cmocka_unit_test(test_optimizer_params_are_validated),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
