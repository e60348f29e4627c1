/* test_fedctl_aggregate.c: `fedctl aggregate` as a user runs it: the real binary, real
 * safetensors files, expected values worked out by hand from the rule definitions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "aggregators/agg.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "tests/lib/testutil.h"

#define MAX_ARGS 64

static char fedctl[512];

static int setup(void **state) {
    (void)state;
    snprintf(fedctl, sizeof fedctl, "%s/bin/fedctl", fc_test_build_dir());
    return 0;
}

/* Writes a model with tensors w [2,2] and b [2] (in that order, or b first) of dtype dt. */
static void write_wb(const char *name, fc_dtype dt, const float w[4], const float b[2],
                     int b_first) {
    char path[512];
    fc_model m = FC_MODEL_INIT;
    uint64_t sw[2] = {2, 2}, sb[1] = {2};
    uint8_t wbytes[32], bbytes[16];
    assert_int_equal(fc_convert_from_f32(dt, w, 4, wbytes), FC_OK);
    assert_int_equal(fc_convert_from_f32(dt, b, 2, bbytes), FC_OK);
    if (b_first)
        assert_int_equal(fc_model_add(&m, "b", dt, 1, sb, bbytes, NULL), FC_OK);
    assert_int_equal(fc_model_add(&m, "w", dt, 2, sw, wbytes, NULL), FC_OK);
    if (!b_first)
        assert_int_equal(fc_model_add(&m, "b", dt, 1, sb, bbytes, NULL), FC_OK);
    fc_error err = {0};
    assert_int_equal(fc_st_write_model(fc_test_path(path, sizeof path, name), &m, NULL, 0, &err),
                     FC_OK);
    fc_model_free(&m);
}

static const float A_w[4] = {1, 2, 3, 4}, A_b[2] = {0.5f, -1};
static const float B_w[4] = {3, 2, 1, 0}, B_b[2] = {1.5f, 1};
static const float C_w[4] = {2, 2, 2, 2}, C_b[2] = {-1, 0};

/* Runs fedctl with the given args (NULL-terminated; file names are relative to the tmpdir
 * when they end in .safetensors or .json). Returns the exit status; stderr goes to err.txt. */
static int run_fedctl(const char *first, ...) {
    static char paths[MAX_ARGS][512];
    const char *argv[MAX_ARGS + 2];
    size_t n = 0;
    argv[n++] = fedctl;
    argv[n++] = "aggregate";
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && n < MAX_ARGS; a = va_arg(ap, const char *)) {
        size_t len = strlen(a);
        int is_file = (len > 12 && strcmp(a + len - 12, ".safetensors") == 0) ||
                      (len > 5 && strcmp(a + len - 5, ".json") == 0) ||
                      strcmp(a, "missing.bin") == 0 || strcmp(a, "garbage.bin") == 0;
        if (is_file && a[0] != '/') {
            fc_test_path(paths[n], sizeof paths[n], a);
            argv[n] = paths[n];
        } else {
            argv[n] = a;
        }
        n++;
    }
    va_end(ap);
    argv[n] = NULL;
    char out[512], err[512];
    return fc_test_run(argv, fc_test_path(out, sizeof out, "out.txt"),
                       fc_test_path(err, sizeof err, "err.txt"), 60);
}

static char *read_tmp(const char *name) {
    char path[512];
    char *s = fc_test_slurp(fc_test_path(path, sizeof path, name), NULL);
    assert_non_null(s);
    return s;
}

/* The single line fedctl printed on stderr; asserts there is exactly one. */
static char *one_line_error(void) {
    char *s = read_tmp("err.txt");
    size_t len = strlen(s);
    assert_true(len > 0);
    assert_int_equal(s[len - 1], '\n');
    assert_null(memchr(s, '\n', len - 1));
    assert_memory_equal(s, "fedctl aggregate: ", 18);
    return s;
}

/* Reads the output model and checks its f32 values against w and b. */
static void expect_output(const char *name, const float w[4], const float b[2]) {
    char path[512];
    fc_st_file *f = NULL;
    fc_error err = {0};
    assert_int_equal(fc_st_open(fc_test_path(path, sizeof path, name), &f, &err), FC_OK);
    const fc_model *m = fc_st_model(f);
    assert_int_equal(m->count, 2);
    long iw = fc_model_find(m, "w"), ib = fc_model_find(m, "b");
    assert_true(iw >= 0 && ib >= 0);
    assert_int_equal(m->tensors[iw].spec.dtype, FC_DTYPE_F32);
    float got[4];
    memcpy(got, m->tensors[iw].data, sizeof got);
    for (int i = 0; i < 4; i++)
        assert_float_equal(got[i], w[i], 1e-6);
    memcpy(got, m->tensors[ib].data, 2 * sizeof(float));
    for (int i = 0; i < 2; i++)
        assert_float_equal(got[i], b[i], 1e-6);
    assert_int_equal(m->tensors[iw].spec.ndim, 2);
    assert_int_equal(m->tensors[iw].spec.shape[1], 2);
    fc_st_close(f);
}

static void test_fedavg_weighted_matches_hand_computation(void **state) {
    (void)state;
    write_wb("a.safetensors", FC_DTYPE_F32, A_w, A_b, 0);
    write_wb("b.safetensors", FC_DTYPE_F32, B_w, B_b, 0);
    /* D = (1*A + 3*B) / 4 */
    assert_int_equal(run_fedctl("--rule", "fedavg", "--weights", "1,3", "-o", "d.safetensors",
                                "--report", "r.json", "a.safetensors", "b.safetensors", NULL),
                     0);
    const float w[4] = {2.5f, 2.0f, 1.5f, 1.0f}, b[2] = {1.25f, 0.5f};
    expect_output("d.safetensors", w, b);
    char *report = read_tmp("r.json");
    json_error_t jerr;
    json_t *j = json_loads(report, 0, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "rule")), "fedavg");
    json_decref(j);
    free(report);
}

static void test_uniform_weighting_and_base(void **state) {
    (void)state;
    write_wb("a.safetensors", FC_DTYPE_F32, A_w, A_b, 0);
    write_wb("b.safetensors", FC_DTYPE_F32, B_w, B_b, 0);
    const float base_w[4] = {10, 10, 10, 10}, base_b[2] = {0, 1};
    write_wb("base.safetensors", FC_DTYPE_F32, base_w, base_b, 0);
    /* Uniform mean: w = 2,2,2,2; b = 1,0. Plus base. The weights are ignored. */
    assert_int_equal(run_fedctl("--rule", "fedavg", "--param", "weighting=uniform", "--weights",
                                "1,3", "--base", "base.safetensors", "-o", "m.safetensors",
                                "--report", "r.json", "a.safetensors", "b.safetensors", NULL),
                     0);
    const float w[4] = {12, 12, 12, 12}, b[2] = {1, 1};
    expect_output("m.safetensors", w, b);
}

static void test_median_over_mixed_dtypes_and_tensor_order(void **state) {
    (void)state;
    write_wb("a.safetensors", FC_DTYPE_F32, A_w, A_b, 0);
    write_wb("b64.safetensors", FC_DTYPE_F64, B_w, B_b, 1); /* other order, f64 */
    write_wb("c16.safetensors", FC_DTYPE_F16, C_w, C_b, 0); /* exact in f16 */
    /* Per coordinate: w median(1,3,2)=2, (2,2,2)=2, (3,1,2)=2, (4,0,2)=2;
     * b median(0.5,1.5,-1)=0.5, median(-1,1,0)=0. */
    assert_int_equal(run_fedctl("--rule", "median", "-o", "med.safetensors", "--report",
                                "r.json", "a.safetensors", "b64.safetensors", "c16.safetensors",
                                NULL),
                     0);
    const float w[4] = {2, 2, 2, 2}, b[2] = {0.5f, 0};
    expect_output("med.safetensors", w, b);
}

static void test_non_finite_input_is_dropped_and_reported(void **state) {
    (void)state;
    write_wb("a.safetensors", FC_DTYPE_F32, A_w, A_b, 0);
    write_wb("b.safetensors", FC_DTYPE_F32, B_w, B_b, 0);
    const float bad_w[4] = {1, NAN, 3, 4};
    write_wb("nan.safetensors", FC_DTYPE_F32, bad_w, A_b, 0);
    assert_int_equal(run_fedctl("--rule", "fedavg", "-o", "d.safetensors", "--report", "r.json",
                                "a.safetensors", "nan.safetensors", "b.safetensors", NULL),
                     0);
    const float w[4] = {2, 2, 2, 2}, b[2] = {1, 0};
    expect_output("d.safetensors", w, b);
    char *report = read_tmp("r.json");
    json_error_t jerr;
    json_t *j = json_loads(report, 0, &jerr);
    assert_non_null(j);
    json_t *dropped = json_object_get(j, "dropped");
    assert_true(json_is_array(dropped));
    assert_int_equal(json_array_size(dropped), 1);
    json_t *d0 = json_array_get(dropped, 0);
    assert_string_equal(json_string_value(json_object_get(d0, "reason")), "non_finite");
    assert_int_equal(json_integer_value(json_object_get(d0, "client_id")), 1);
    json_decref(j);
    free(report);
}

static void test_report_goes_to_stdout_without_report_option(void **state) {
    (void)state;
    write_wb("a.safetensors", FC_DTYPE_F32, A_w, A_b, 0);
    assert_int_equal(run_fedctl("--rule", "fedavg", "-o", "d.safetensors", "a.safetensors", NULL),
                     0);
    char *out = read_tmp("out.txt");
    json_error_t jerr;
    json_t *j = json_loads(out, 0, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "rule")), "fedavg");
    json_decref(j);
    free(out);
}

/* Every registered rule runs from the command line on 7 inputs (enough for bulyan, f = 1). */
static void test_every_rule_runs(void **state) {
    (void)state;
    char names[7][32];
    for (int k = 0; k < 7; k++) {
        float w[4], b[2];
        for (int i = 0; i < 4; i++)
            w[i] = (float)((k * 7 + i * 3) % 11) / 4.0f - 1.0f;
        b[0] = (float)k / 8.0f;
        b[1] = -(float)k / 16.0f;
        snprintf(names[k], sizeof names[k], "in%d.safetensors", k);
        write_wb(names[k], FC_DTYPE_F32, w, b, 0);
    }
    for (const agg_rule *const *r = agg_rules(); *r; r++) {
        const char *param = strcmp((*r)->name, "norm_bound") == 0 ? "max_norm=1" : NULL;
        int rc = param ? run_fedctl("--rule", (*r)->name, "--param", param, "-o",
                                    "all.safetensors", "--report", "all.json", names[0],
                                    names[1], names[2], names[3], names[4], names[5], names[6],
                                    NULL)
                       : run_fedctl("--rule", (*r)->name, "-o", "all.safetensors", "--report",
                                    "all.json", names[0], names[1], names[2], names[3], names[4],
                                    names[5], names[6], NULL);
        if (rc != 0) {
            char *e = read_tmp("err.txt");
            fail_msg("rule %s: exit %d: %s", (*r)->name, rc, e);
        }
        char *report = read_tmp("all.json");
        json_error_t jerr;
        json_t *j = json_loads(report, 0, &jerr);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "rule")), (*r)->name);
        json_decref(j);
        free(report);
    }
}

static void test_bad_inputs_exit_2_with_one_line(void **state) {
    (void)state;
    char path[512];
    write_wb("a.safetensors", FC_DTYPE_F32, A_w, A_b, 0);
    write_wb("b.safetensors", FC_DTYPE_F32, B_w, B_b, 0);
    FILE *g = fopen(fc_test_path(path, sizeof path, "garbage.bin"), "wb");
    assert_non_null(g);
    fputs("\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", g);
    fclose(g);
    /* A tensor with another shape. */
    fc_model m = FC_MODEL_INIT;
    uint64_t sw[2] = {4, 1}, sb[1] = {2};
    assert_int_equal(fc_model_add(&m, "w", FC_DTYPE_F32, 2, sw, A_w, NULL), FC_OK);
    assert_int_equal(fc_model_add(&m, "b", FC_DTYPE_F32, 1, sb, A_b, NULL), FC_OK);
    assert_int_equal(
        fc_st_write_model(fc_test_path(path, sizeof path, "shape.safetensors"), &m, NULL, 0, NULL),
        FC_OK);
    fc_model_free(&m);

    int n = 0;
    char *msg;
#define CASE(needle_, ...)                                                                        \
    do {                                                                                          \
        assert_int_equal(run_fedctl(__VA_ARGS__, NULL), 2);                                       \
        msg = one_line_error();                                                                   \
        if (!strstr(msg, needle_))                                                                \
            fail_msg("expected '%s' in: %s", needle_, msg);                                       \
        free(msg);                                                                                \
        n++;                                                                                      \
    } while (0)
    CASE("missing.bin", "--rule", "fedavg", "-o", "o.safetensors", "a.safetensors", "missing.bin");
    CASE("garbage.bin", "--rule", "fedavg", "-o", "o.safetensors", "a.safetensors", "garbage.bin");
    CASE("shape", "--rule", "fedavg", "-o", "o.safetensors", "a.safetensors", "shape.safetensors");
    CASE("nosuchrule", "--rule", "nosuchrule", "-o", "o.safetensors", "a.safetensors");
    CASE("bogus", "--rule", "krum", "--param", "bogus=1", "-o", "o.safetensors", "a.safetensors");
    CASE("f", "--rule", "krum", "--param", "f=x", "-o", "o.safetensors", "a.safetensors");
    CASE("krum", "--rule", "krum", "-o", "o.safetensors", "a.safetensors", "b.safetensors");
    CASE("--weights", "--rule", "fedavg", "--weights", "1", "-o", "o.safetensors",
         "a.safetensors", "b.safetensors");
    CASE("--weights", "--rule", "fedavg", "--weights", "1,-2", "-o", "o.safetensors",
         "a.safetensors", "b.safetensors");
    CASE("KEY=VALUE", "--rule", "fedavg", "--param", "weighting", "-o", "o.safetensors",
         "a.safetensors");
    CASE("-o", "--rule", "fedavg", "a.safetensors");
    CASE("--frobnicate", "--rule", "fedavg", "--frobnicate", "-o", "o.safetensors",
         "a.safetensors");
    CASE("--rule", "-o", "o.safetensors", "a.safetensors");
    CASE("no input", "--rule", "fedavg", "-o", "o.safetensors");
    CASE("no update", "--rule", "fedavg", "--weights", "0,0", "-o", "o.safetensors",
         "a.safetensors", "b.safetensors");
#undef CASE
    assert_int_equal(n, 15);
    /* No output was written by any failing run. */
    assert_int_equal(access(fc_test_path(path, sizeof path, "o.safetensors"), F_OK), -1);
}

static void test_help_and_unknown_command(void **state) {
    (void)state;
    const char *help[] = {fedctl, "aggregate", "--help", NULL};
    char out[512];
    assert_int_equal(fc_test_run(help, fc_test_path(out, sizeof out, "help.txt"), NULL, 30), 0);
    char *text = read_tmp("help.txt");
    assert_non_null(strstr(text, "--weights"));
    free(text);
    const char *top[] = {fedctl, "--help", NULL};
    assert_int_equal(fc_test_run(top, fc_test_path(out, sizeof out, "help.txt"), NULL, 30), 0);
    text = read_tmp("help.txt");
    assert_non_null(strstr(text, "aggregate"));
    free(text);
    const char *unknown[] = {fedctl, "frobnicate", NULL};
    assert_int_equal(fc_test_run(unknown, NULL, NULL, 30), 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fedavg_weighted_matches_hand_computation),
        cmocka_unit_test(test_uniform_weighting_and_base),
        cmocka_unit_test(test_median_over_mixed_dtypes_and_tensor_order),
        cmocka_unit_test(test_non_finite_input_is_dropped_and_reported),
        cmocka_unit_test(test_report_goes_to_stdout_without_report_option),
        cmocka_unit_test(test_every_rule_runs),
        cmocka_unit_test(test_bad_inputs_exit_2_with_one_line),
        cmocka_unit_test(test_help_and_unknown_command),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
