/* test_digits.c: the example trainer's library (client/examples/lib/): the digits loader, the
 * seeded generator, the Dirichlet split, softmax regression and the federated simulation. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "client/examples/lib/common.h"
#include "client/examples/lib/digits.h"
#include "client/examples/lib/rng.h"
#include "client/examples/lib/sim.h"
#include "client/examples/lib/softmax.h"
#include "client/examples/lib/split.h"
#include "core/alloc.h"
#include "core/safetensors.h"

#define DIGITS_PATH "client/examples/data/digits.csv.gz"

/* ---- helpers ---- */

static char tmpdir[4096];

static const char *tmp_dir(void) {
    if (tmpdir[0])
        return tmpdir;
    const char *env = getenv("FC_TEST_TMPDIR");
    if (env && *env) {
        snprintf(tmpdir, sizeof tmpdir, "%s", env);
    } else {
        char tmpl[] = "/tmp/fc-test-digits.XXXXXX";
        assert_non_null(mkdtemp(tmpl));
        snprintf(tmpdir, sizeof tmpdir, "%s", tmpl);
    }
    return tmpdir;
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

/* A valid row: pixels all `pixel`, then label. */
static void append_row(char *buf, size_t size, unsigned pixel, unsigned label) {
    size_t len = strlen(buf);
    for (int i = 0; i < 64; i++)
        len += (size_t)snprintf(buf + len, size - len, "%u,", pixel);
    snprintf(buf + len, size - len, "%u\n", label);
}

static ex_dataset real_data;

static const ex_dataset *digits(void) {
    if (real_data.n == 0) {
        fc_error err = {0};
        fc_status st = ex_digits_load(DIGITS_PATH, &real_data, &err);
        if (st != FC_OK)
            fail_msg("%s", fc_error_text(&err));
    }
    return &real_data;
}

/* ---- loading ---- */

/* Class counts from `zcat digits.csv.gz | awk -F, '{c[$65]++}'` (and sklearn's documentation). */
static void test_real_file_has_1797_rows_labels_0_to_9_and_scaled_pixels(void **state) {
    (void)state;
    const ex_dataset *d = digits();
    assert_int_equal(d->n, 1797);
    static const size_t expected[10] = {178, 182, 177, 183, 181, 182, 181, 179, 174, 180};
    size_t counts[10] = {0};
    for (size_t i = 0; i < d->n; i++) {
        assert_true(d->y[i] <= 9);
        counts[d->y[i]]++;
    }
    for (int k = 0; k < 10; k++)
        assert_int_equal(counts[k], expected[k]);
    for (size_t i = 0; i < d->n * 64; i++)
        assert_true(d->x[i] >= 0 && d->x[i] <= 1);
    /* First row starts "0,0,5,13,9,1,..." and ends with label 0. */
    assert_true(d->x[2] == 5.0f / 16 && d->x[3] == 13.0f / 16 && d->y[0] == 0);
}

static void expect_parse_error(const char *text, fc_status code, const char *needle) {
    char path[4200];
    snprintf(path, sizeof path, "%s/bad.csv", tmp_dir());
    write_file(path, text);
    ex_dataset d = EX_DATASET_INIT;
    fc_error err = {0};
    assert_int_equal(ex_digits_load(path, &d, &err), code);
    assert_int_equal(d.n, 0);
    assert_null(d.x);
    if (!strstr(err.msg, needle) || strncmp(err.msg, path, strlen(path)) != 0)
        fail_msg("message '%s' lacks '%s' or the path", err.msg, needle);
}

static void test_malformed_rows_are_errors_with_file_and_line(void **state) {
    (void)state;
    char text[4096];
    text[0] = '\0';
    append_row(text, sizeof text, 3, 1);
    append_row(text, sizeof text, 16, 9);
    char good[4096];
    memcpy(good, text, sizeof good);

    append_row(text, sizeof text, 17, 2); /* pixel 17 on line 3 */
    expect_parse_error(text, FC_ERR_FORMAT, "bad.csv:3: field 1 (pixel) is '17'");

    memcpy(text, good, sizeof good);
    append_row(text, sizeof text, 0, 10); /* label 10 */
    expect_parse_error(text, FC_ERR_FORMAT, ":3: field 65 (label) is '10', expected an integer 0..9");

    memcpy(text, good, sizeof good);
    strcat(text, "1,2,x\n");
    expect_parse_error(text, FC_ERR_FORMAT, ":3: field 3 (pixel) is 'x'");

    memcpy(text, good, sizeof good);
    strcat(text, "1,2,3\n");
    expect_parse_error(text, FC_ERR_FORMAT, ":3: row has 3 fields, expected 65");

    memcpy(text, good, sizeof good);
    text[strlen(text) - 1] = ',';
    strcat(text, "4\n"); /* line 2 gets a 66th field */
    expect_parse_error(text, FC_ERR_FORMAT, ":2: row has 66 fields, expected 65");

    memcpy(text, good, sizeof good);
    strcat(text, "\n");
    append_row(text, sizeof text, 1, 1);
    expect_parse_error(text, FC_ERR_FORMAT, ":3: empty row");

    memcpy(text, good, sizeof good);
    text[1] = ' '; /* "3 " instead of "3," merges fields 1 and 2 into one bad field */
    expect_parse_error(text, FC_ERR_FORMAT, ":1: field 1 (pixel) is '3 3'");

    expect_parse_error("", FC_ERR_FORMAT, "no rows");
}

static void test_crlf_and_missing_final_newline_are_accepted(void **state) {
    (void)state;
    char text[4096] = "";
    append_row(text, sizeof text, 8, 7);
    append_row(text, sizeof text, 4, 3);
    /* line 1 ends in \r\n, line 2 has no newline */
    size_t first = strchr(text, '\n') - text;
    memmove(text + first + 1, text + first, strlen(text + first) + 1);
    text[first] = '\r';
    text[strlen(text) - 1] = '\0';
    ex_dataset d = EX_DATASET_INIT;
    fc_error err = {0};
    assert_int_equal(ex_digits_parse(text, strlen(text), "t", &d, &err), FC_OK);
    assert_int_equal(d.n, 2);
    assert_true(d.y[0] == 7 && d.y[1] == 3 && d.x[63] == 0.5f && d.x[64] == 0.25f);
    ex_dataset_free(&d);
}

static void test_missing_and_corrupt_gzip_files_are_io_errors(void **state) {
    (void)state;
    char path[4200];
    snprintf(path, sizeof path, "%s/none.csv.gz", tmp_dir());
    ex_dataset d = EX_DATASET_INIT;
    fc_error err = {0};
    assert_int_equal(ex_digits_load(path, &d, &err), FC_ERR_IO);
    assert_non_null(strstr(err.msg, "none.csv.gz"));
    snprintf(path, sizeof path, "%s/corrupt.csv.gz", tmp_dir());
    write_file(path, "this is not gzip data\n");
    assert_int_equal(ex_digits_load(path, &d, &err), FC_ERR_IO);
    assert_non_null(strstr(err.msg, "gzip -dc failed"));
    assert_int_equal(d.n, 0);
}

static void test_parse_allocation_failures_are_clean(void **state) {
    (void)state;
    char text[4096] = "";
    append_row(text, sizeof text, 1, 2);
    for (long n = 0; n < 4; n++) {
        ex_dataset d = EX_DATASET_INIT;
        fc_alloc_fail_after(n);
        fc_status st = ex_digits_parse(text, strlen(text), "t", &d, NULL);
        fc_alloc_fail_after(-1);
        if (st == FC_OK) {
            assert_int_equal(d.n, 1);
            ex_dataset_free(&d);
            return;
        }
        assert_int_equal(st, FC_ERR_NOMEM);
        assert_null(d.x);
    }
    fail_msg("parse kept failing");
}

/* ---- generator ---- */

/* splitmix64 from state 0: 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4 (the published reference
 * values). xoshiro256** from state {1,2,3,4}: rotl(2*5,7)*9 = 11520; then s1 becomes
 * 2 ^ (3 ^ 1) = 0, so the second output is rotl(0,7)*9 = 0. */
static void test_generators_match_reference_values(void **state) {
    (void)state;
    uint64_t s = 0;
    assert_true(ex_splitmix64(&s) == 0xe220a8397b1dcdafull);
    assert_true(ex_splitmix64(&s) == 0x6e789e6aa1b965f4ull);
    ex_rng r = {{1, 2, 3, 4}};
    assert_true(ex_rng_next(&r) == 11520);
    assert_true(ex_rng_next(&r) == 0);
}

static void test_same_seed_gives_same_stream_and_seeds_differ(void **state) {
    (void)state;
    ex_rng a, b, c;
    ex_rng_seed(&a, 7);
    ex_rng_seed(&b, 7);
    ex_rng_seed(&c, 8);
    int differs = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = ex_rng_next(&a);
        assert_true(x == ex_rng_next(&b));
        differs |= x != ex_rng_next(&c);
    }
    assert_true(differs);
    assert_true(ex_seed_derive(1, 2, 3) == ex_seed_derive(1, 2, 3));
    assert_true(ex_seed_derive(1, 2, 3) != ex_seed_derive(1, 3, 2));
    for (int i = 0; i < 1000; i++) {
        double u = ex_rng_uniform(&a);
        assert_true(u >= 0 && u < 1);
        assert_true(ex_rng_below(&a, 7) < 7);
    }
}

/* Gamma(k) has mean k and variance k: the mean of N draws is within 5 standard errors. */
static void test_gamma_draws_have_the_right_mean_and_variance(void **state) {
    (void)state;
    static const double shapes[] = {0.1, 0.5, 1.0, 2.5, 30.0};
    ex_rng r;
    ex_rng_seed(&r, 2024);
    const int N = 40000;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        double k = shapes[s], sum = 0, sq = 0;
        for (int i = 0; i < N; i++) {
            double g = ex_rng_gamma(&r, k);
            assert_true(g >= 0 && isfinite(g));
            sum += g;
            sq += g * g;
        }
        double mean = sum / N, var = sq / N - mean * mean;
        if (fabs(mean - k) > 5 * sqrt(k / N))
            fail_msg("shape %g: mean %g", k, mean);
        if (fabs(var - k) > 0.15 * k)
            fail_msg("shape %g: variance %g", k, var);
    }
}

static void test_dirichlet_draws_sum_to_one(void **state) {
    (void)state;
    ex_rng r;
    ex_rng_seed(&r, 3);
    double p[10];
    for (int t = 0; t < 200; t++) {
        ex_rng_dirichlet(&r, t % 2 ? 0.05 : 5.0, 10, p);
        double sum = 0;
        for (int i = 0; i < 10; i++) {
            assert_true(p[i] >= 0);
            sum += p[i];
        }
        assert_true(fabs(sum - 1) < 1e-12);
    }
}

/* ---- split ---- */

static ex_split make_split(const ex_dataset *d, size_t clients, double alpha, uint64_t seed) {
    ex_split_config cfg = {clients, alpha, seed, 0.2, 10};
    ex_split s = EX_SPLIT_INIT;
    fc_error err = {0};
    if (ex_split_dirichlet(d->y, d->n, 10, &cfg, &s, &err) != FC_OK)
        fail_msg("%s", fc_error_text(&err));
    return s;
}

static void test_split_assigns_every_example_exactly_once(void **state) {
    (void)state;
    const ex_dataset *d = digits();
    static const double alphas[] = {0.05, 0.5, 100};
    for (size_t a = 0; a < 3; a++) {
        ex_split s = make_split(d, 10, alphas[a], 1);
        unsigned char *seen = calloc(d->n, 1);
        assert_non_null(seen);
        size_t total = 0;
        for (size_t j = 0; j < s.clients; j++) {
            const ex_client_split *c = &s.client[j];
            assert_true(c->n_train >= 1 && c->n_test >= 1 && c->n_train + c->n_test >= 10);
            for (size_t i = 0; i < c->n_train; i++)
                seen[c->train[i]]++;
            for (size_t i = 0; i < c->n_test; i++)
                seen[c->test[i]]++;
            total += c->n_train + c->n_test;
            /* round(0.2 * n), at least 1 */
            size_t n = c->n_train + c->n_test;
            assert_int_equal(c->n_test, (size_t)llround(0.2 * (double)n));
        }
        assert_int_equal(total, d->n);
        for (size_t i = 0; i < d->n; i++)
            assert_int_equal(seen[i], 1);
        free(seen);
        ex_split_free(&s);
    }
}

static void test_split_is_reproducible_by_seed(void **state) {
    (void)state;
    const ex_dataset *d = digits();
    ex_split a = make_split(d, 10, 0.5, 42), b = make_split(d, 10, 0.5, 42),
             c = make_split(d, 10, 0.5, 43);
    assert_memory_equal(a.index, b.index, d->n * sizeof *a.index);
    for (size_t j = 0; j < 10; j++)
        assert_int_equal(a.client[j].n_test, b.client[j].n_test);
    assert_memory_not_equal(a.index, c.index, d->n * sizeof *a.index);
    ex_split_free(&a);
    ex_split_free(&b);
    ex_split_free(&c);
}

/* Mean over clients of the largest share one class has of the client's examples. */
static double mean_top_class_share(const ex_dataset *d, const ex_split *s) {
    double total = 0;
    for (size_t j = 0; j < s->clients; j++) {
        size_t counts[10] = {0}, n = s->client[j].n_train + s->client[j].n_test, top = 0;
        for (size_t i = 0; i < n; i++)
            counts[d->y[s->client[j].test[i]]]++; /* test and train are contiguous */
        for (int k = 0; k < 10; k++)
            if (counts[k] > top)
                top = counts[k];
        total += (double)top / (double)n;
    }
    return total / (double)s->clients;
}

static void test_large_alpha_is_near_uniform_and_small_alpha_is_skewed(void **state) {
    (void)state;
    const ex_dataset *d = digits();
    /* alpha 1e4: every proportion is within a few percent of 1/10, so each client holds
     * n_k / 10 examples of class k, give or take rounding and a little noise. */
    ex_split big = make_split(d, 10, 1e4, 5);
    size_t class_n[10] = {0};
    for (size_t i = 0; i < d->n; i++)
        class_n[d->y[i]]++;
    for (size_t j = 0; j < 10; j++) {
        size_t counts[10] = {0}, n = big.client[j].n_train + big.client[j].n_test;
        for (size_t i = 0; i < n; i++)
            counts[d->y[big.client[j].test[i]]]++;
        for (int k = 0; k < 10; k++)
            if (fabs((double)counts[k] - (double)class_n[k] / 10) > 3)
                fail_msg("client %zu class %d: %zu of %zu", j, k, counts[k], class_n[k]);
    }
    ex_split small = make_split(d, 10, 0.05, 5);
    double uniform_share = mean_top_class_share(d, &big), skewed_share = mean_top_class_share(d, &small);
    assert_true(uniform_share < 0.15);
    assert_true(skewed_share > 0.5);
    ex_split_free(&big);
    ex_split_free(&small);
}

/* One class, tiny alpha: every draw gives nearly all examples to one client, so after the last
 * redraw examples are moved until each of the 5 clients has the minimum of 10. */
static void test_split_tops_up_short_clients_when_redraws_fail(void **state) {
    (void)state;
    uint8_t labels[100] = {0};
    ex_split_config cfg = {5, 0.001, 9, 0.2, 10};
    ex_split s = EX_SPLIT_INIT;
    fc_error err = {0};
    assert_int_equal(ex_split_dirichlet(labels, 100, 1, &cfg, &s, &err), FC_OK);
    assert_int_equal(s.draws, EX_SPLIT_MAX_DRAWS);
    assert_true(s.moved > 0);
    size_t total = 0;
    for (size_t j = 0; j < 5; j++) {
        size_t n = s.client[j].n_train + s.client[j].n_test;
        assert_true(n >= 10);
        assert_int_equal(s.client[j].n_test, (size_t)llround(0.2 * (double)n));
        total += n;
    }
    assert_int_equal(total, 100);
    ex_split_free(&s);
}

static void test_split_rejects_impossible_configs(void **state) {
    (void)state;
    uint8_t labels[40] = {0};
    ex_split s = EX_SPLIT_INIT;
    fc_error err = {0};
    ex_split_config cfg = {10, 0.5, 1, 0.2, 10};
    assert_int_equal(ex_split_dirichlet(labels, 40, 10, &cfg, &s, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "need 100 examples, have 40"));
    cfg = (ex_split_config){2, 0, 1, 0.2, 2};
    assert_int_equal(ex_split_dirichlet(labels, 40, 10, &cfg, &s, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "alpha"));
    cfg = (ex_split_config){2, 1, 1, 0.2, 1};
    assert_int_equal(ex_split_dirichlet(labels, 40, 10, &cfg, &s, &err), FC_ERR_INVALID);
    labels[7] = 10;
    cfg = (ex_split_config){2, 1, 1, 0.2, 2};
    assert_int_equal(ex_split_dirichlet(labels, 40, 10, &cfg, &s, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "example 7 has label 10"));
    assert_null(s.index);
}

static void test_split_allocation_failures_are_clean(void **state) {
    (void)state;
    const ex_dataset *d = digits();
    ex_split_config cfg = {10, 0.5, 1, 0.2, 10};
    for (long n = 0;; n++) {
        ex_split s = EX_SPLIT_INIT;
        fc_alloc_fail_after(n);
        fc_status st = ex_split_dirichlet(d->y, d->n, 10, &cfg, &s, NULL);
        fc_alloc_fail_after(-1);
        if (st == FC_OK) {
            assert_true(n >= 9);
            ex_split_free(&s);
            return;
        }
        assert_int_equal(st, FC_ERR_NOMEM);
        assert_null(s.index);
    }
}

/* ---- softmax regression ---- */

static void random_weights(float *w, uint64_t seed, double scale) {
    ex_rng r;
    ex_rng_seed(&r, seed);
    for (size_t i = 0; i < EX_SM_PARAMS; i++)
        w[i] = (float)(scale * (2 * ex_rng_uniform(&r) - 1));
}

/* With all weights 0 every class has probability 1/10, so the loss is ln 10 and the bias
 * gradient is 1/10 - [k == y]. */
static void test_zero_model_has_loss_ln10_and_known_bias_gradient(void **state) {
    (void)state;
    const ex_dataset *d = digits();
    float w[EX_SM_PARAMS] = {0};
    double g[EX_SM_PARAMS];
    size_t idx[1] = {0};
    double loss = ex_sm_loss_grad(w, d, idx, 1, g);
    assert_true(fabs(loss - log(10.0)) < 1e-12);
    for (int k = 0; k < 10; k++)
        assert_true(fabs(g[EX_SM_WEIGHTS + k] - (0.1 - (k == d->y[0]))) < 1e-12);
    /* weight gradient row k = bias gradient k times x */
    assert_true(fabs(g[3] - (0.1 - (d->y[0] == 0)) * d->x[3]) < 1e-12);
}

static void test_gradient_matches_finite_differences(void **state) {
    (void)state;
    const ex_dataset *d = digits();
    float w[EX_SM_PARAMS];
    random_weights(w, 11, 0.5);
    size_t idx[5] = {0, 17, 300, 999, 1796};
    double g[EX_SM_PARAMS];
    ex_sm_loss_grad(w, d, idx, 5, g);
    double worst = 0;
    for (size_t i = 0; i < EX_SM_PARAMS; i += 7) {
        float saved = w[i];
        float hi = saved + 1e-2f, lo = saved - 1e-2f;
        w[i] = hi;
        double lhi = ex_sm_loss_grad(w, d, idx, 5, NULL);
        w[i] = lo;
        double llo = ex_sm_loss_grad(w, d, idx, 5, NULL);
        w[i] = saved;
        double fd = (lhi - llo) / ((double)hi - (double)lo);
        double e = fabs(fd - g[i]);
        if (e > worst)
            worst = e;
    }
    /* central differences with h = 1e-2 err by O(h^2 * third derivative) < 1e-4 here */
    if (worst > 1e-4)
        fail_msg("largest gradient error %g", worst);
}

static void test_training_decreases_loss_on_a_small_problem(void **state) {
    (void)state;
    const ex_dataset *d = digits();
    size_t idx[50];
    for (size_t i = 0; i < 50; i++)
        idx[i] = i * 7;
    float w[EX_SM_PARAMS] = {0};
    double before = ex_sm_loss_grad(w, d, idx, 50, NULL);
    ex_train_config tc = {20, 0.5, 8, 0};
    ex_rng r;
    ex_rng_seed(&r, 1);
    double last = 0;
    fc_error err = {0};
    assert_int_equal(ex_sm_train(w, d, idx, 50, &tc, NULL, &r, &last, &err), FC_OK);
    double after = ex_sm_loss_grad(w, d, idx, 50, NULL);
    assert_true(after < 0.1 * before);
    assert_true(last > 0 && last < before);
    size_t correct;
    ex_sm_evaluate(w, d, idx, 50, NULL, &correct);
    assert_true(correct >= 48);
}

/* One step on one example: w1 = w0 - lr * (g + mu * (w0 - anchor)), with g from
 * ex_sm_loss_grad (rounded to f32, as the trainer does). */
static void test_prox_term_pulls_toward_the_anchor(void **state) {
    (void)state;
    const ex_dataset *d = digits();
    float w0[EX_SM_PARAMS], anchor[EX_SM_PARAMS], w[EX_SM_PARAMS];
    random_weights(w0, 21, 0.3);
    random_weights(anchor, 22, 0.3);
    double g[EX_SM_PARAMS];
    size_t idx[1] = {5};
    ex_sm_loss_grad(w0, d, idx, 1, g);
    const double lr = 0.25, mu = 0.5;
    memcpy(w, w0, sizeof w);
    ex_train_config tc = {1, lr, 1, mu};
    ex_rng r;
    ex_rng_seed(&r, 1);
    assert_int_equal(ex_sm_train(w, d, idx, 1, &tc, anchor, &r, NULL, NULL), FC_OK);
    for (size_t i = 0; i < EX_SM_PARAMS; i++) {
        double grad = (double)(float)g[i] + mu * ((double)w0[i] - (double)anchor[i]);
        assert_true(fabs((double)w[i] - ((double)w0[i] - lr * grad)) < 1e-6);
    }
    /* Over many steps a large mu keeps the model closer to the anchor than mu = 0. */
    size_t many[100];
    for (size_t i = 0; i < 100; i++)
        many[i] = i;
    double dist[2];
    for (int m = 0; m < 2; m++) {
        memcpy(w, anchor, sizeof w);
        ex_train_config t2 = {5, 0.2, 10, m ? 2.0 : 0.0};
        ex_rng_seed(&r, 2);
        assert_int_equal(ex_sm_train(w, d, many, 100, &t2, anchor, &r, NULL, NULL), FC_OK);
        dist[m] = 0;
        for (size_t i = 0; i < EX_SM_PARAMS; i++)
            dist[m] += ((double)w[i] - anchor[i]) * ((double)w[i] - anchor[i]);
    }
    assert_true(dist[1] < 0.5 * dist[0]);
}

static void test_training_rejects_bad_configs(void **state) {
    (void)state;
    const ex_dataset *d = digits();
    float w[EX_SM_PARAMS] = {0};
    size_t idx[1] = {0};
    ex_rng r;
    ex_rng_seed(&r, 1);
    fc_error err = {0};
    ex_train_config tc = {1, 0.1, 0, 0};
    assert_int_equal(ex_sm_train(w, d, idx, 1, &tc, NULL, &r, NULL, &err), FC_ERR_INVALID);
    tc = (ex_train_config){1, -1, 1, 0};
    assert_int_equal(ex_sm_train(w, d, idx, 1, &tc, NULL, &r, NULL, &err), FC_ERR_INVALID);
    tc = (ex_train_config){1, 0.1, 1, 0.5};
    assert_int_equal(ex_sm_train(w, d, idx, 1, &tc, NULL, &r, NULL, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "mu"));
    tc = (ex_train_config){1, 0.1, 1, 0};
    assert_int_equal(ex_sm_train(w, d, idx, 0, &tc, NULL, &r, NULL, &err), FC_ERR_INVALID);
}

static void test_model_layout_and_safetensors_round_trip(void **state) {
    (void)state;
    float w[EX_SM_PARAMS], back[EX_SM_PARAMS];
    random_weights(w, 31, 1.0);
    fc_model m = FC_MODEL_INIT;
    fc_error err = {0};
    assert_int_equal(ex_sm_to_model(w, &m, &err), FC_OK);
    assert_int_equal(m.count, 2);
    assert_string_equal(m.tensors[0].spec.name, "fc.weight");
    assert_int_equal(m.tensors[0].spec.dtype, FC_DTYPE_F32);
    assert_int_equal(m.tensors[0].spec.ndim, 2);
    assert_true(m.tensors[0].spec.shape[0] == 10 && m.tensors[0].spec.shape[1] == 64);
    assert_string_equal(m.tensors[1].spec.name, "fc.bias");
    assert_int_equal(m.tensors[1].spec.ndim, 1);
    assert_true(m.tensors[1].spec.shape[0] == 10);
    /* W[k][j] is flat element k*64 + j; the bias follows the 640 weights. */
    float v;
    memcpy(&v, (const char *)m.tensors[0].data + (3 * 64 + 5) * 4, 4);
    assert_true(v == w[3 * 64 + 5]);
    memcpy(&v, (const char *)m.tensors[1].data + 4 * 4, 4);
    assert_true(v == w[640 + 4]);

    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", tmp_dir());
    assert_int_equal(fc_st_write_model(path, &m, NULL, 0, &err), FC_OK);
    fc_model r = FC_MODEL_INIT;
    assert_int_equal(fc_st_read_model(path, &r, &err), FC_OK);
    assert_int_equal(ex_sm_from_model(&r, back, &err), FC_OK);
    assert_memory_equal(w, back, sizeof w);
    fc_model_free(&r);
    fc_model_free(&m);
}

static void test_wrong_model_layouts_are_rejected(void **state) {
    (void)state;
    float w[EX_SM_PARAMS] = {0}, out[EX_SM_PARAMS];
    fc_error err = {0};
    fc_model m = FC_MODEL_INIT;
    const uint64_t wrong[2] = {64, 10}, bias[1] = {10};
    assert_int_equal(fc_model_add(&m, "fc.weight", FC_DTYPE_F32, 2, wrong, w, &err), FC_OK);
    assert_int_equal(fc_model_add(&m, "fc.bias", FC_DTYPE_F32, 1, bias, w, &err), FC_OK);
    assert_int_equal(ex_sm_from_model(&m, out, &err), FC_ERR_SHAPE);
    assert_non_null(strstr(err.msg, "'fc.weight' has shape [64,10], expected [10,64]"));
    fc_model_free(&m);

    assert_int_equal(ex_sm_to_model(w, &m, &err), FC_OK);
    float nan = NAN;
    memcpy((char *)m.tensors[1].data + 8, &nan, 4);
    assert_int_equal(ex_sm_from_model(&m, out, &err), FC_ERR_NON_FINITE);
    assert_non_null(strstr(err.msg, "'fc.bias' element 2"));
    fc_model_free(&m);

    const uint64_t right[2] = {10, 64};
    assert_int_equal(fc_model_add(&m, "fc.weight", FC_DTYPE_F32, 2, right, NULL, &err), FC_OK);
    assert_int_equal(ex_sm_from_model(&m, out, &err), FC_ERR_SHAPE);
    assert_non_null(strstr(err.msg, "1 tensors, expected 2"));
    fc_model_free(&m);
}

/* ---- simulation ---- */

typedef struct run_log {
    size_t rounds;
    double acc[8];
} run_log;

static void log_round(const ex_round_stats *rs, void *user) {
    run_log *l = user;
    assert_int_equal(rs->round, l->rounds + 1);
    assert_int_equal(rs->clients, 10);
    assert_true(rs->train_loss > 0 && isfinite(rs->train_loss));
    if (l->rounds < 8)
        l->acc[l->rounds] = rs->eval_accuracy;
    l->rounds++;
}

static void test_short_fedavg_run_learns_and_is_deterministic(void **state) {
    (void)state;
    const ex_dataset *d = digits();
    ex_split s = make_split(d, 10, 0.5, 42);
    ex_sim_config cfg = {.rounds = 5, .train = {2, 0.5, 16, 0}, .rule = "fedavg",
                         .opt = "sgd", .seed = 42};
    float w1[EX_SM_PARAMS] = {0}, w2[EX_SM_PARAMS] = {0};
    run_log l1 = {0}, l2 = {0};
    fc_error err = {0};
    assert_int_equal(ex_sim_federated(d, &s, &cfg, w1, log_round, &l1, &err), FC_OK);
    assert_int_equal(ex_sim_federated(d, &s, &cfg, w2, log_round, &l2, &err), FC_OK);
    assert_int_equal(l1.rounds, 5);
    assert_memory_equal(w1, w2, sizeof w1);
    double acc;
    ex_sim_evaluate(w1, d, &s, NULL, &acc);
    assert_true(acc == l1.acc[4]);
    assert_true(acc > 0.8);
    assert_true(l1.acc[4] > l1.acc[0]);

    float base[EX_SM_PARAMS] = {0};
    ex_train_config tc = {20, 0.5, 16, 0};
    assert_int_equal(ex_sim_centralized(d, &s, &tc, 42, base, &err), FC_OK);
    ex_sim_evaluate(base, d, &s, NULL, &acc);
    assert_true(acc > 0.9);
    ex_split_free(&s);
}

/* The client step is local training from the global model with stream (seed, 1 + client, round),
 * returned as local - global. */
static void test_client_round_returns_trained_minus_global(void **state) {
    (void)state;
    const ex_dataset *d = digits();
    ex_split s = make_split(d, 4, 0.5, 7);
    float global[EX_SM_PARAMS], local[EX_SM_PARAMS], delta[EX_SM_PARAMS];
    random_weights(global, 41, 0.1);
    memcpy(local, global, sizeof local);
    ex_train_config tc = {2, 0.3, 8, 0.1};
    ex_rng r;
    ex_rng_seed(&r, ex_seed_derive(7, 1 + 2, 5));
    double loss_a, loss_b;
    assert_int_equal(ex_sm_train(local, d, s.client[2].train, s.client[2].n_train, &tc, global, &r,
                                 &loss_a, NULL),
                     FC_OK);
    assert_int_equal(ex_client_round(d, &s.client[2], &tc, 7, 2, 5, global, delta, &loss_b, NULL),
                     FC_OK);
    assert_true(loss_a == loss_b);
    for (size_t i = 0; i < EX_SM_PARAMS; i++)
        assert_true(delta[i] == local[i] - global[i]);
    ex_split_free(&s);
}

static void test_unknown_rule_lists_known_rules(void **state) {
    (void)state;
    const ex_dataset *d = digits();
    ex_split s = make_split(d, 3, 0.5, 1);
    ex_sim_config cfg = {.rounds = 1, .train = {1, 0.5, 16, 0}, .rule = "nope", .opt = "sgd"};
    float w[EX_SM_PARAMS] = {0};
    fc_error err = {0};
    assert_int_equal(ex_sim_federated(d, &s, &cfg, w, NULL, NULL, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "unknown rule 'nope'; known: fedavg"));
    cfg.rule = "fedavg";
    cfg.opt = "nope";
    assert_int_equal(ex_sim_federated(d, &s, &cfg, w, NULL, NULL, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "unknown optimizer 'nope'"));
    ex_split_free(&s);
}

static void test_stateful_rule_runs_across_rounds(void **state) {
    (void)state;
    const ex_dataset *d = digits();
    ex_split s = make_split(d, 10, 0.5, 42);
    ex_sim_config cfg = {.rounds = 3, .train = {2, 0.5, 16, 0}, .rule = "fedau", .opt = "sgd",
                         .seed = 42};
    float w[EX_SM_PARAMS] = {0};
    run_log l = {0};
    fc_error err = {0};
    if (ex_sim_federated(d, &s, &cfg, w, log_round, &l, &err) != FC_OK)
        fail_msg("%s", fc_error_text(&err));
    assert_int_equal(l.rounds, 3);
    assert_true(l.acc[2] > 0.5);
    ex_split_free(&s);
}

static int teardown_all(void **state) {
    (void)state;
    ex_dataset_free(&real_data);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_file_has_1797_rows_labels_0_to_9_and_scaled_pixels),
        cmocka_unit_test(test_malformed_rows_are_errors_with_file_and_line),
        cmocka_unit_test(test_crlf_and_missing_final_newline_are_accepted),
        cmocka_unit_test(test_missing_and_corrupt_gzip_files_are_io_errors),
        cmocka_unit_test(test_parse_allocation_failures_are_clean),
        cmocka_unit_test(test_generators_match_reference_values),
        cmocka_unit_test(test_same_seed_gives_same_stream_and_seeds_differ),
        cmocka_unit_test(test_gamma_draws_have_the_right_mean_and_variance),
        cmocka_unit_test(test_dirichlet_draws_sum_to_one),
        cmocka_unit_test(test_split_assigns_every_example_exactly_once),
        cmocka_unit_test(test_split_is_reproducible_by_seed),
        cmocka_unit_test(test_large_alpha_is_near_uniform_and_small_alpha_is_skewed),
        cmocka_unit_test(test_split_tops_up_short_clients_when_redraws_fail),
        cmocka_unit_test(test_split_rejects_impossible_configs),
        cmocka_unit_test(test_split_allocation_failures_are_clean),
        cmocka_unit_test(test_zero_model_has_loss_ln10_and_known_bias_gradient),
        cmocka_unit_test(test_gradient_matches_finite_differences),
        cmocka_unit_test(test_training_decreases_loss_on_a_small_problem),
        cmocka_unit_test(test_prox_term_pulls_toward_the_anchor),
        cmocka_unit_test(test_training_rejects_bad_configs),
        cmocka_unit_test(test_model_layout_and_safetensors_round_trip),
        cmocka_unit_test(test_wrong_model_layouts_are_rejected),
        cmocka_unit_test(test_short_fedavg_run_learns_and_is_deterministic),
        cmocka_unit_test(test_client_round_returns_trained_minus_global),
        cmocka_unit_test(test_unknown_rule_lists_known_rules),
        cmocka_unit_test(test_stateful_rule_runs_across_rounds),
    };
    return cmocka_run_group_tests(tests, NULL, teardown_all);
}
