/* test_metrics.c: the Prometheus registry and its text exposition.
 *
 * Expected exposition texts are written out by hand from the format definition (0.0.4):
 * HELP/TYPE lines, label escaping, cumulative buckets, _sum and _count. The daemon's metric set
 * is checked with `promtool check metrics` when promtool is installed (Debian "prometheus",
 * installed by make deps); without it that test is skipped with a message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "server/metrics.h"
#include "tests/lib/testutil.h"

static char *render(metrics_registry *r) {
    fc_buf b = FC_BUF_INIT;
    fc_error err = {0};
    assert_int_equal(metrics_render(r, &b, &err), FC_OK);
    assert_int_equal(fc_buf_append(&b, "", 1), FC_OK);
    return (char *)b.data;
}

static void test_counter_and_gauge_render_exact_text(void **state) {
    (void)state;
    metrics_registry *r;
    fc_error err = {0};
    assert_int_equal(metrics_new(&r, &err), FC_OK);
    metrics_family *c, *g;
    metrics_series *a, *b, *gs;
    const char *ln[] = {"reason"};
    assert_int_equal(metrics_family_add(r, METRICS_COUNTER, "x_total", "Help with \\ and\nline", ln,
                                        1, NULL, 0, &c, &err),
                     FC_OK);
    const char *v1[] = {"a\"b"}, *v2[] = {"back\\slash\nnl"};
    assert_int_equal(metrics_series_add(c, v1, &a, &err), FC_OK);
    assert_int_equal(metrics_series_add(c, v2, &b, &err), FC_OK);
    assert_int_equal(metrics_family_add(r, METRICS_GAUGE, "g", "", NULL, 0, NULL, 0, &g, &err),
                     FC_OK);
    assert_int_equal(metrics_series_add(g, NULL, &gs, &err), FC_OK);
    metrics_counter_add(a, 2);
    metrics_counter_add(a, 0.5);
    metrics_counter_add(a, -1);       /* ignored: counters never decrease */
    metrics_counter_add(b, INFINITY); /* ignored */
    metrics_gauge_set(gs, 10);
    metrics_gauge_add(gs, -10.25);
    char *text = render(r);
    assert_string_equal(text, "# HELP x_total Help with \\\\ and\\nline\n"
                              "# TYPE x_total counter\n"
                              "x_total{reason=\"a\\\"b\"} 2.5\n"
                              "x_total{reason=\"back\\\\slash\\nnl\"} 0\n"
                              "# HELP g \n"
                              "# TYPE g gauge\n"
                              "g -0.25\n");
    fc_free(text);
    metrics_free(r);
}

static void test_histogram_buckets_are_cumulative_with_inf_sum_and_count(void **state) {
    (void)state;
    metrics_registry *r;
    fc_error err = {0};
    assert_int_equal(metrics_new(&r, &err), FC_OK);
    metrics_family *h;
    metrics_series *s;
    const double buckets[] = {0.1, 1, 5};
    const char *ln[] = {"kind"}, *lv[] = {"k"};
    assert_int_equal(
        metrics_family_add(r, METRICS_HISTOGRAM, "h_seconds", "H.", ln, 1, buckets, 3, &h, &err),
        FC_OK);
    assert_int_equal(metrics_series_add(h, lv, &s, &err), FC_OK);
    /* 0.1 lands in le=0.1 (upper bounds are inclusive), 0.5 and 1 in le=1, 7 only in +Inf. */
    metrics_histogram_observe(s, 0.1);
    metrics_histogram_observe(s, 0.5);
    metrics_histogram_observe(s, 1);
    metrics_histogram_observe(s, 7);
    metrics_histogram_observe(s, NAN); /* ignored */
    assert_int_equal(metrics_histogram_count(s), 4);
    char *text = render(r);
    assert_string_equal(text, "# HELP h_seconds H.\n"
                              "# TYPE h_seconds histogram\n"
                              "h_seconds_bucket{kind=\"k\",le=\"0.1\"} 1\n"
                              "h_seconds_bucket{kind=\"k\",le=\"1\"} 3\n"
                              "h_seconds_bucket{kind=\"k\",le=\"5\"} 3\n"
                              "h_seconds_bucket{kind=\"k\",le=\"+Inf\"} 4\n"
                              "h_seconds_sum{kind=\"k\"} 8.6\n"
                              "h_seconds_count{kind=\"k\"} 4\n");
    fc_free(text);
    metrics_free(r);
}

static void test_bad_names_buckets_and_duplicates_are_refused(void **state) {
    (void)state;
    metrics_registry *r;
    fc_error err = {0};
    assert_int_equal(metrics_new(&r, &err), FC_OK);
    metrics_family *f;
    assert_int_equal(metrics_family_add(r, METRICS_COUNTER, "1bad", "", NULL, 0, NULL, 0, &f, &err),
                     FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "1bad"));
    assert_int_equal(metrics_family_add(r, METRICS_COUNTER, "a-b", "", NULL, 0, NULL, 0, &f, &err),
                     FC_ERR_INVALID);
    const char *reserved[] = {"__x"}, *le[] = {"le"}, *dup[] = {"a", "a"};
    assert_int_equal(metrics_family_add(r, METRICS_GAUGE, "g", "", reserved, 1, NULL, 0, &f, &err),
                     FC_ERR_INVALID);
    assert_int_equal(metrics_family_add(r, METRICS_GAUGE, "g", "", dup, 2, NULL, 0, &f, &err),
                     FC_ERR_INVALID);
    const double b_bad[] = {1, 1}, b_inf[] = {INFINITY}, b_ok[] = {1};
    assert_int_equal(metrics_family_add(r, METRICS_HISTOGRAM, "h", "", le, 1, b_ok, 1, &f, &err),
                     FC_ERR_INVALID);
    assert_int_equal(metrics_family_add(r, METRICS_HISTOGRAM, "h", "", NULL, 0, b_bad, 2, &f, &err),
                     FC_ERR_INVALID);
    assert_int_equal(metrics_family_add(r, METRICS_HISTOGRAM, "h", "", NULL, 0, b_inf, 1, &f, &err),
                     FC_ERR_INVALID);
    assert_int_equal(metrics_family_add(r, METRICS_HISTOGRAM, "h", "", NULL, 0, NULL, 0, &f, &err),
                     FC_ERR_INVALID);
    assert_int_equal(metrics_family_add(r, METRICS_GAUGE, "g", "", NULL, 0, b_ok, 1, &f, &err),
                     FC_ERR_INVALID);
    const char *ln[] = {"l"};
    assert_int_equal(metrics_family_add(r, METRICS_GAUGE, "g", "", ln, 1, NULL, 0, &f, &err),
                     FC_OK);
    assert_int_equal(metrics_family_add(r, METRICS_GAUGE, "g", "", NULL, 0, NULL, 0, &f, &err),
                     FC_ERR_EXISTS);
    const char *v[] = {"x"};
    metrics_series *s;
    assert_int_equal(metrics_series_add(f, v, &s, &err), FC_OK);
    assert_int_equal(metrics_series_add(f, v, &s, &err), FC_ERR_EXISTS);
    assert_int_equal(metrics_series_add(f, NULL, &s, &err), FC_ERR_INVALID);
    assert_ptr_equal(metrics_series_find(f, v), metrics_series_find(f, v));
    assert_non_null(metrics_series_find(f, v));
    metrics_free(r);
}

static void test_values_use_shortest_exact_text(void **state) {
    (void)state;
    char buf[32];
    assert_string_equal(metrics_format_value(0.1, buf, sizeof buf), "0.1");
    assert_string_equal(metrics_format_value(3, buf, sizeof buf), "3");
    assert_string_equal(metrics_format_value(1e20, buf, sizeof buf), "1e+20");
    assert_string_equal(metrics_format_value(1.0 / 3.0, buf, sizeof buf), "0.3333333333333333");
    assert_string_equal(metrics_format_value(INFINITY, buf, sizeof buf), "+Inf");
    assert_string_equal(metrics_format_value(-INFINITY, buf, sizeof buf), "-Inf");
    assert_string_equal(metrics_format_value(NAN, buf, sizeof buf), "NaN");
}

static void test_allocation_failures_leave_no_leak(void **state) {
    (void)state;
    /* Every allocation of building the daemon's set fails once in turn: a clean error each
     * time (ASan reports any leak). */
    for (int n = 0; n < 200; n++) {
        metrics_fedcoord m;
        fc_error err = {0};
        fc_alloc_fail_after(n);
        fc_status st = metrics_fedcoord_new(&m, &err);
        fc_alloc_fail_after(-1);
        if (st == FC_OK) {
            metrics_free(m.reg);
            return;
        }
        assert_int_equal(st, FC_ERR_NOMEM);
        assert_null(m.reg);
    }
    fail_msg("metrics_fedcoord_new never succeeded within 200 allocations");
}

static void test_daemon_set_counts_rejections_by_reason(void **state) {
    (void)state;
    metrics_fedcoord m;
    fc_error err = {0};
    assert_int_equal(metrics_fedcoord_new(&m, &err), FC_OK);
    metrics_fedcoord_reject(&m, "SHAPE_MISMATCH");
    metrics_fedcoord_reject(&m, "shape_mismatch");
    metrics_fedcoord_reject(&m, "something new");
    metrics_fedcoord_reject(&m, NULL);
    metrics_fedcoord_http(&m, 404);
    metrics_fedcoord_http(&m, 200);
    metrics_fedcoord_http(&m, 99); /* ignored */
    const char *shape[] = {"shape_mismatch"}, *other[] = {"other"};
    assert_true(metrics_value(metrics_series_find(m.updates_rejected, shape)) == 2);
    assert_true(metrics_value(metrics_series_find(m.updates_rejected, other)) == 2);
    assert_true(metrics_value(m.http_requests[3]) == 1);
    assert_true(metrics_value(m.http_requests[1]) == 1);
    char *text = render(m.reg);
    assert_non_null(strstr(text, "fedcoord_updates_rejected_total{reason=\"shape_mismatch\"} 2\n"));
    assert_non_null(strstr(text, "fedcoord_rounds_total{state=\"committed\"} 0\n"));
    assert_non_null(strstr(text, "# TYPE fedcoord_round_duration_seconds histogram\n"));
    assert_non_null(strstr(text, "fedcoord_http_requests_total{code=\"4xx\"} 1\n"));
    fc_free(text);
    metrics_free(m.reg);
}

static int have_promtool(void) {
    return access("/usr/bin/promtool", X_OK) == 0 ||
           system("command -v promtool >/dev/null 2>&1") == 0;
}

static void test_daemon_set_passes_promtool_check_metrics(void **state) {
    (void)state;
    if (!have_promtool()) {
        print_message("SKIPPED: promtool not installed (Debian package prometheus; make deps)\n");
        skip();
    }
    metrics_fedcoord m;
    fc_error err = {0};
    assert_int_equal(metrics_fedcoord_new(&m, &err), FC_OK);
    metrics_counter_add(m.rounds_committed, 3);
    metrics_counter_add(m.bytes_received, 123456);
    metrics_histogram_observe(m.round_duration, 12.5);
    metrics_histogram_observe(m.aggregation_time, 0.02);
    metrics_histogram_observe(m.commit_latency, 0.004);
    metrics_gauge_set(m.connected_clients, 4);
    metrics_gauge_set(m.staging_bytes, 1 << 20);
    metrics_fedcoord_reject(&m, "non_finite");
    char *text = render(m.reg);
    char path[512], out[512], cmd[1400];
    fc_test_path(path, sizeof path, "metrics.txt");
    fc_test_path(out, sizeof out, "promtool.out");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    snprintf(cmd, sizeof cmd, "promtool check metrics < '%s'", path);
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    int rc = fc_test_run(argv, out, out, 30);
    char *report = fc_test_slurp(out, NULL);
    if (rc != 0)
        print_message("promtool said:\n%s\n", report ? report : "");
    assert_int_equal(rc, 0);
    free(report);
    /* And a broken text is refused, so the check above can fail. */
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("# TYPE x counter\nx{a=\"1\" 1\n", f);
    assert_int_equal(fclose(f), 0);
    assert_int_not_equal(fc_test_run(argv, out, out, 30), 0);
    fc_free(text);
    metrics_free(m.reg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_and_gauge_render_exact_text),
        cmocka_unit_test(test_histogram_buckets_are_cumulative_with_inf_sum_and_count),
        cmocka_unit_test(test_bad_names_buckets_and_duplicates_are_refused),
        cmocka_unit_test(test_values_use_shortest_exact_text),
        cmocka_unit_test(test_allocation_failures_leave_no_leak),
        cmocka_unit_test(test_daemon_set_counts_rejections_by_reason),
        cmocka_unit_test(test_daemon_set_passes_promtool_check_metrics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
