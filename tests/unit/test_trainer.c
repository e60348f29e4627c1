/* test_trainer.c: the pieces of the networked example trainer that need no server
 * (client/examples/lib/node.h, ex_sm_train_hooked) and fedtrain's command line: the token file,
 * the initial model, the check of a received model and the SDK-style FedProx hook. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "client/examples/lib/digits.h"
#include "client/examples/lib/node.h"
#include "client/examples/lib/rng.h"
#include "client/examples/lib/softmax.h"
#include "core/prox.h"
#include "core/safetensors.h"
#include "tests/lib/testutil.h"

#define DIGITS_PATH "client/examples/data/digits.csv.gz"

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

static fc_status secret_of(const char *name, const char *text, char *out, size_t cap,
                           fc_error *err) {
    char path[512];
    fc_test_path(path, sizeof path, name);
    write_file(path, text);
    return ex_read_secret_file(path, out, cap, err);
}

static void test_token_file_first_line_is_read_without_blanks(void **state) {
    (void)state;
    char tok[64];
    fc_error err = {0};
    assert_int_equal(secret_of("t1", "abcDEF-_09\n", tok, sizeof tok, &err), FC_OK);
    assert_string_equal(tok, "abcDEF-_09");
    assert_int_equal(secret_of("t2", "  xyz \r\n\n", tok, sizeof tok, &err), FC_OK);
    assert_string_equal(tok, "xyz");
    assert_int_equal(secret_of("t3", "no-newline", tok, sizeof tok, &err), FC_OK);
    assert_string_equal(tok, "no-newline");
}

static void test_bad_token_files_are_named_errors(void **state) {
    (void)state;
    char tok[8];
    fc_error err = {0};
    assert_int_equal(secret_of("e1", "\n\n", tok, sizeof tok, &err), FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "e1"));
    assert_int_equal(secret_of("e2", "one\ntwo\n", tok, sizeof tok, &err), FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "after the first line"));
    assert_int_equal(secret_of("e3", "12345678\n", tok, sizeof tok, &err), FC_ERR_LIMIT);
    assert_null(strstr(err.msg, "12345678")); /* the secret is never echoed */
    assert_int_equal(secret_of("e4", "ab\001cd\n", tok, sizeof tok, &err), FC_ERR_FORMAT);
    char path[512];
    assert_int_equal(ex_read_secret_file(fc_test_path(path, sizeof path, "absent"), tok,
                                         sizeof tok, &err),
                     FC_ERR_IO);
    assert_non_null(strstr(err.msg, "absent"));
}

static void test_initial_model_is_zero_or_seeded_normal(void **state) {
    (void)state;
    static float a[EX_SM_PARAMS], b[EX_SM_PARAMS], c[EX_SM_PARAMS];
    fc_error err = {0};
    assert_int_equal(ex_sm_init(a, 7, 0, &err), FC_OK);
    for (size_t i = 0; i < EX_SM_PARAMS; i++)
        assert_true(a[i] == 0.0f);
    assert_int_equal(ex_sm_init(a, 7, 0.1, &err), FC_OK);
    assert_int_equal(ex_sm_init(b, 7, 0.1, &err), FC_OK);
    assert_int_equal(ex_sm_init(c, 8, 0.1, &err), FC_OK);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    double s2 = 0;
    for (size_t i = 0; i < EX_SM_WEIGHTS; i++)
        s2 += (double)a[i] * a[i];
    /* 640 draws of N(0, 0.01): the sample variance is within 20% of 0.01 (sd of the estimate
     * is 0.01 * sqrt(2/640) = 5.6%). */
    assert_true(fabs(s2 / EX_SM_WEIGHTS - 0.01) < 0.002);
    for (size_t i = EX_SM_WEIGHTS; i < EX_SM_PARAMS; i++)
        assert_true(a[i] == 0.0f);
    assert_int_equal(ex_sm_init(a, 7, -1, &err), FC_ERR_INVALID);
    assert_int_equal(ex_sm_init(a, 7, NAN, &err), FC_ERR_INVALID);
}

static void test_initial_model_file_reads_back_as_the_softmax_layout(void **state) {
    (void)state;
    static float w[EX_SM_PARAMS], back[EX_SM_PARAMS];
    fc_error err = {0};
    assert_int_equal(ex_sm_init(w, 3, 0.05, &err), FC_OK);
    char path[512];
    fc_test_path(path, sizeof path, "init.safetensors");
    assert_int_equal(ex_write_initial_model(path, w, &err), FC_OK);
    fc_st_file *f = NULL;
    assert_int_equal(fc_st_open(path, &f, &err), FC_OK);
    assert_string_equal(fc_st_meta_get(f, "format"), "fedcoord-demo-softmax");
    assert_int_equal(ex_sm_from_model(fc_st_model(f), back, &err), FC_OK);
    assert_memory_equal(w, back, sizeof w);
    fc_st_close(f);
}

static void views_of(const float *w, ex_tensor_view v[2], uint64_t ws[2], uint64_t bs[1]) {
    ws[0] = 10;
    ws[1] = 64;
    bs[0] = 10;
    v[0] = (ex_tensor_view){"fc.weight", FC_DTYPE_F32, 2, ws, EX_SM_WEIGHTS * 4, w};
    v[1] = (ex_tensor_view){"fc.bias", FC_DTYPE_F32, 1, bs, 40, w + EX_SM_WEIGHTS};
}

static void test_received_model_is_checked_before_use(void **state) {
    (void)state;
    static float w[EX_SM_PARAMS], out[EX_SM_PARAMS], bad[EX_SM_PARAMS];
    for (size_t i = 0; i < EX_SM_PARAMS; i++)
        w[i] = (float)i * 0.5f;
    ex_tensor_view v[2];
    uint64_t ws[2], bs[1];
    fc_error err = {0};
    views_of(w, v, ws, bs);
    assert_int_equal(ex_sm_from_views(v, 2, out, &err), FC_OK);
    assert_memory_equal(w, out, sizeof w);

    memset(out, 0, sizeof out);
    assert_int_equal(ex_sm_from_views(v, 1, out, &err), FC_ERR_SHAPE);
    assert_non_null(strstr(err.msg, "1 tensors"));
    v[1].name = "fc.b";
    assert_int_equal(ex_sm_from_views(v, 2, out, &err), FC_ERR_SHAPE);
    assert_non_null(strstr(err.msg, "'fc.b'"));
    views_of(w, v, ws, bs);
    ws[1] = 63;
    assert_int_equal(ex_sm_from_views(v, 2, out, &err), FC_ERR_SHAPE);
    assert_non_null(strstr(err.msg, "[10,63]"));
    views_of(w, v, ws, bs);
    v[0].dtype = FC_DTYPE_F16;
    assert_int_equal(ex_sm_from_views(v, 2, out, &err), FC_ERR_DTYPE);
    assert_non_null(strstr(err.msg, "f16"));
    views_of(w, v, ws, bs);
    v[1].nbytes = 36;
    assert_int_equal(ex_sm_from_views(v, 2, out, &err), FC_ERR_SHAPE);
    memcpy(bad, w, sizeof bad);
    bad[EX_SM_WEIGHTS + 3] = NAN;
    views_of(bad, v, ws, bs);
    assert_int_equal(ex_sm_from_views(v, 2, out, &err), FC_ERR_NON_FINITE);
    assert_non_null(strstr(err.msg, "fc.bias"));
    /* Nothing was written by any failed call. */
    for (size_t i = 0; i < EX_SM_PARAMS; i++)
        assert_true(out[i] == 0.0f);
}

typedef struct prox_user {
    const float *anchor;
    double mu;
    int calls;
} prox_user;

/* What the trainer's hook does through fc_task_prox_add, per tensor. */
static fc_status split_prox(void *user, float *g32, const float *w, fc_error *err) {
    prox_user *p = user;
    p->calls++;
    fc_status st = fc_prox_add(g32, w, p->anchor, EX_SM_WEIGHTS, p->mu);
    if (st == FC_OK)
        st = fc_prox_add(g32 + EX_SM_WEIGHTS, w + EX_SM_WEIGHTS, p->anchor + EX_SM_WEIGHTS,
                         EX_DIGITS_CLASSES, p->mu);
    return st == FC_OK ? FC_OK : fc_error_set(err, st, "prox");
}

static fc_status failing_hook(void *user, float *g32, const float *w, fc_error *err) {
    (void)user;
    (void)g32;
    (void)w;
    return fc_error_set(err, FC_ERR_DTYPE, "hook says no");
}

static void test_hooked_prox_training_equals_builtin_prox_training(void **state) {
    (void)state;
    ex_dataset d = EX_DATASET_INIT;
    fc_error err = {0};
    assert_int_equal(ex_digits_load(DIGITS_PATH, &d, &err), FC_OK);
    static float anchor[EX_SM_PARAMS], a[EX_SM_PARAMS], b[EX_SM_PARAMS];
    assert_int_equal(ex_sm_init(anchor, 11, 0.05, &err), FC_OK);
    size_t idx[120];
    for (size_t i = 0; i < 120; i++)
        idx[i] = i * 13 % d.n;
    ex_train_config tc = {3, 0.3, 16, 0.7};
    memcpy(a, anchor, sizeof a);
    memcpy(b, anchor, sizeof b);
    ex_rng r1, r2;
    ex_rng_seed(&r1, 99);
    ex_rng_seed(&r2, 99);
    double l1 = 0, l2 = 0;
    assert_int_equal(ex_sm_train(a, &d, idx, 120, &tc, anchor, &r1, &l1, &err), FC_OK);
    prox_user pu = {anchor, tc.mu, 0};
    ex_train_config tc_nomu = tc;
    tc_nomu.mu = 0; /* ignored by the hooked variant anyway */
    assert_int_equal(ex_sm_train_hooked(b, &d, idx, 120, &tc_nomu, split_prox, &pu, &r2, &l2,
                                        &err),
                     FC_OK);
    assert_int_equal(pu.calls, 3 * 8); /* 3 epochs of ceil(120 / 16) = 8 batches */
    assert_memory_equal(a, b, sizeof a);
    assert_true(l1 == l2);
    /* The model moved: the test would not notice a hook that did nothing otherwise. */
    assert_memory_not_equal(a, anchor, sizeof a);
    /* A failing hook stops training with its status and message. */
    assert_int_equal(ex_sm_train_hooked(b, &d, idx, 120, &tc, failing_hook, NULL, &r2, NULL,
                                        &err),
                     FC_ERR_DTYPE);
    assert_string_equal(err.msg, "hook says no");
    ex_dataset_free(&d);
}

static int run_fedtrain(const char *const *args, const char *out_name) {
    char bin[512], out[512], errp[512];
    snprintf(bin, sizeof bin, "%s/bin/fedtrain", fc_test_build_dir());
    const char *argv[16] = {bin};
    size_t n = 1;
    for (size_t i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return fc_test_run(argv, fc_test_path(out, sizeof out, out_name),
                       fc_test_path(errp, sizeof errp, "fedtrain.err"), 60);
}

static void test_fedtrain_writes_the_initial_model_and_checks_its_flags(void **state) {
    (void)state;
    char path[512], errp[512];
    fc_test_path(path, sizeof path, "initial.safetensors");
    const char *a1[] = {"--write-initial", path, "--init-std", "0.01", "--seed", "5", NULL};
    assert_int_equal(run_fedtrain(a1, "o1"), 0);
    fc_model m = FC_MODEL_INIT;
    fc_error err = {0};
    assert_int_equal(fc_st_read_model(path, &m, &err), FC_OK);
    static float w[EX_SM_PARAMS], want[EX_SM_PARAMS];
    assert_int_equal(ex_sm_from_model(&m, w, &err), FC_OK);
    assert_int_equal(ex_sm_init(want, 5, 0.01, &err), FC_OK);
    assert_memory_equal(w, want, sizeof w);
    fc_model_free(&m);

    const char *a2[] = {"--ca", "x.pem", "--name", "n", "--token-file", "t", "--client-index",
                        "0", NULL};
    assert_int_equal(run_fedtrain(a2, "o2"), 2);
    char *e = fc_test_slurp(fc_test_path(errp, sizeof errp, "fedtrain.err"), NULL);
    assert_non_null(e);
    assert_non_null(strstr(e, "--server is required"));
    free(e);
    const char *a3[] = {"--server", "127.0.0.1:1", "--ca", "x.pem", "--name", "n",
                        "--token-file", "t", "--client-index", "10", "--clients", "10", NULL};
    assert_int_equal(run_fedtrain(a3, "o3"), 2);
    e = fc_test_slurp(errp, NULL);
    assert_non_null(e);
    assert_non_null(strstr(e, "--client-index 10 is out of range 0..9"));
    free(e);
    const char *a4[] = {"--alpha", "-1", NULL};
    assert_int_equal(run_fedtrain(a4, "o4"), 2);
    char tok[512];
    const char *a5[] = {"--server", "127.0.0.1:1", "--ca", "x.pem", "--name", "n",
                        "--token-file", fc_test_path(tok, sizeof tok, "no-such-token"),
                        "--client-index", "0", NULL};
    assert_int_equal(run_fedtrain(a5, "o5"), 2);
    e = fc_test_slurp(errp, NULL);
    assert_non_null(e);
    assert_non_null(strstr(e, "no-such-token"));
    free(e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_file_first_line_is_read_without_blanks),
        cmocka_unit_test(test_bad_token_files_are_named_errors),
        cmocka_unit_test(test_initial_model_is_zero_or_seeded_normal),
        cmocka_unit_test(test_initial_model_file_reads_back_as_the_softmax_layout),
        cmocka_unit_test(test_received_model_is_checked_before_use),
        cmocka_unit_test(test_hooked_prox_training_equals_builtin_prox_training),
        cmocka_unit_test(test_fedtrain_writes_the_initial_model_and_checks_its_flags),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
