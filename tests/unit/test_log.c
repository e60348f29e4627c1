/* test_log.c: logfmt and JSON records, quoting and escaping, levels, truncation, output fd. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/log.h"

/* 2026-11-28T12:00:00.123Z */
#define T0 1795867200123LL

static char buf[4096];

static const char *fmt(int json, const char *msg, const fc_log_field *fields) {
    fc_log_format(buf, sizeof buf, json, T0, FC_LOG_INFO, msg, fields);
    return buf;
}

static void test_logfmt_plain_values_are_bare(void **state) {
    (void)state;
    const fc_log_field f[] = {FC_LI("round", 12), FC_LS("rule", "krum"), FC_LU("n", 7u),
                              FC_LI("neg", -3), FC_LD("lr", 0.5), FC_LOG_END_FIELD};
    assert_string_equal(fmt(0, "committed", f), "ts=2026-11-28T12:00:00.123Z level=info "
                                                "msg=committed round=12 rule=krum n=7 neg=-3 "
                                                "lr=0.5\n");
}

static void test_logfmt_quotes_and_escapes(void **state) {
    (void)state;
    const fc_log_field f[] = {FC_LS("space", "a b"),       FC_LS("quote", "say \"hi\""),
                              FC_LS("eq", "k=v"),          FC_LS("nl", "line1\nline2"),
                              FC_LS("ctl", "a\x01z\x7f"),  FC_LS("bs", "c:\\x"),
                              FC_LS("empty", ""),          FC_LS("tab", "a\tb\r"),
                              FC_LS("null", NULL),         FC_LOG_END_FIELD};
    assert_string_equal(fmt(0, "round committed", f),
                        "ts=2026-11-28T12:00:00.123Z level=info msg=\"round committed\" "
                        "space=\"a b\" quote=\"say \\\"hi\\\"\" eq=\"k=v\" "
                        "nl=\"line1\\nline2\" ctl=\"a\\u0001z\\u007f\" bs=\"c:\\\\x\" empty=\"\" "
                        "tab=\"a\\tb\\r\" null=\"\"\n");
}

static void test_record_without_fields(void **state) {
    (void)state;
    assert_string_equal(fmt(0, "hello", NULL), "ts=2026-11-28T12:00:00.123Z level=info msg=hello\n");
    fc_log_format(buf, sizeof buf, 1, T0, FC_LOG_ERROR, "x", NULL);
    assert_string_equal(buf, "{\"ts\":\"2026-11-28T12:00:00.123Z\",\"level\":\"error\",\"msg\":\"x\"}\n");
}

/* Parses one JSON line (which must end in exactly one '\n'). */
static json_t *parse_line(const char *line) {
    size_t len = strlen(line);
    assert_true(len > 0 && line[len - 1] == '\n');
    assert_null(memchr(line, '\n', len - 1));
    json_error_t jerr;
    json_t *j = json_loadb(line, len - 1, 0, &jerr);
    if (!j)
        fail_msg("not JSON (%s): %s", jerr.text, line);
    return j;
}

static void test_json_mode_is_valid_json_that_round_trips(void **state) {
    (void)state;
    const char *tricky = "quote\" backslash\\ nl\n cr\r tab\t ctl\x01\x1f del\x7f eq= ü €";
    const fc_log_field f[] = {FC_LS("s", tricky),          FC_LI("i", -42),
                              FC_LU("u", 9000000000000000000ull),
                              FC_LD("d", 0.25),            FC_LD("nan", 0.0 / 0.0),
                              FC_LD("inf", 1.0 / 0.0),     FC_LS("key with \"quote\"", "v"),
                              FC_LOG_END_FIELD};
    json_t *j = parse_line(fmt(1, "msg \"x\"", f));
    assert_string_equal(json_string_value(json_object_get(j, "ts")), "2026-11-28T12:00:00.123Z");
    assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "msg \"x\"");
    assert_string_equal(json_string_value(json_object_get(j, "s")), tricky);
    assert_int_equal(json_integer_value(json_object_get(j, "i")), -42);
    assert_true(json_integer_value(json_object_get(j, "u")) == 9000000000000000000ll);
    assert_true(json_number_value(json_object_get(j, "d")) == 0.25);
    assert_true(json_is_null(json_object_get(j, "nan")));
    assert_true(json_is_null(json_object_get(j, "inf")));
    assert_string_equal(json_string_value(json_object_get(j, "key with \"quote\"")), "v");
    json_decref(j);
}

static void test_json_mode_replaces_invalid_utf8(void **state) {
    (void)state;
    /* A lone continuation byte, a truncated sequence, an overlong '/', a surrogate. */
    const fc_log_field f[] = {FC_LS("name", "a\x80" "b\xC3" "c\xC0\xAF" "d\xED\xA0\x80" "e"),
                              FC_LOG_END_FIELD};
    json_t *j = parse_line(fmt(1, "bad bytes", f));
    const char *want = "a\xEF\xBF\xBD" "b\xEF\xBF\xBD" "c\xEF\xBF\xBD\xEF\xBF\xBD"
                       "d\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" "e";
    assert_string_equal(json_string_value(json_object_get(j, "name")), want);
    json_decref(j);
}

static void test_long_record_is_cut_but_ends_in_newline(void **state) {
    (void)state;
    static char big[20000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    /* Escapes that take several bytes must not be split either. */
    for (size_t i = 0; i < sizeof big - 1; i += 7)
        big[i] = '"';
    const fc_log_field f[] = {FC_LS("payload", big), FC_LI("after", 1), FC_LOG_END_FIELD};
    for (int json = 0; json <= 1; json++) {
        size_t len = fc_log_format(buf, sizeof buf, json, T0, FC_LOG_WARN, "long", f);
        assert_int_equal(len, strlen(buf));
        assert_true(len < sizeof buf);
        assert_true(len > sizeof buf - 64); /* it was filled, not dropped */
        assert_int_equal(buf[len - 1], '\n');
        assert_null(memchr(buf, '\n', len - 1));
        assert_null(strstr(buf, "after"));
        if (json) {
            json_t *j = parse_line(buf);
            assert_true(json_is_true(json_object_get(j, "truncated")));
            const char *p = json_string_value(json_object_get(j, "payload"));
            assert_non_null(p);
            assert_memory_equal(p, big, strlen(p)); /* a prefix of the value */
            json_decref(j);
        } else {
            assert_non_null(strstr(buf, "\" truncated=true\n"));
        }
    }
    /* The same through the writer: one line. */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fc_log_set_fd(fds[1]);
    fc_log_set_json(0);
    fc_log_fields(FC_LOG_ERROR, big, f);
    fc_log_set_fd(2);
    close(fds[1]);
    static char got[8192];
    ssize_t n = read(fds[0], got, sizeof got);
    close(fds[0]);
    assert_true(n > 0 && n < 4096);
    assert_int_equal(got[n - 1], '\n');
}

static void test_tiny_buffers_do_not_overflow(void **state) {
    (void)state;
    /* A canary on each side of a buffer of each small size. */
    for (size_t size = 0; size < 200; size++) {
        char area[210];
        memset(area, '#', sizeof area);
        const fc_log_field f[] = {FC_LS("k", "a long enough value with \"quotes\""),
                                  FC_LOG_END_FIELD};
        size_t len = fc_log_format(area + 1, size, 1, T0, FC_LOG_INFO, "message", f);
        assert_int_equal(area[0], '#');
        for (size_t i = size + 1; i < sizeof area; i++)
            assert_int_equal(area[i], '#');
        if (size == 0) {
            assert_int_equal(len, 0);
            continue;
        }
        assert_int_equal(area[1 + len], '\0');
        if (size >= 2)
            assert_int_equal(area[len], '\n');
        if (len > 1) { /* anything more than an empty line is a whole JSON object */
            json_t *j = parse_line(area + 1);
            json_decref(j);
        }
    }
}

static void test_levels_filter_and_output_goes_to_fd(void **state) {
    (void)state;
    char path[600];
    const char *dir = getenv("FC_TEST_TMPDIR");
    snprintf(path, sizeof path, "%s/log.txt", dir && *dir ? dir : "/tmp");
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    fc_log_set_fd(fd);
    fc_log_set_json(0);
    fc_log_set_level(FC_LOG_WARN);
    assert_int_equal(fc_log_get_level(), FC_LOG_WARN);
    fc_log_msg(FC_LOG_DEBUG, "debug dropped");
    fc_log_msg(FC_LOG_INFO, "info dropped");
    fc_log_msg(FC_LOG_WARN, "warn kept");
    FC_LOG(FC_LOG_ERROR, "error kept", FC_LI("code", 5));
    fc_log_set_level(FC_LOG_DEBUG);
    fc_log_msg(FC_LOG_DEBUG, "debug kept");
    fc_log_set_json(1);
    fc_log_msg(FC_LOG_INFO, "json kept");
    fc_log_set_json(0);
    fc_log_set_level(FC_LOG_INFO);
    fc_log_set_fd(2);
    char got[2048] = {0};
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    ssize_t n = read(fd, got, sizeof got - 1);
    close(fd);
    assert_true(n > 0);
    assert_null(strstr(got, "dropped"));
    /* Four records, one per line, in order. */
    const char *want[] = {" level=warn msg=\"warn kept\"\n", " level=error msg=\"error kept\" code=5\n",
                          " level=debug msg=\"debug kept\"\n", "\"level\":\"info\",\"msg\":\"json kept\"}\n"};
    const char *p = got;
    for (size_t i = 0; i < 4; i++) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl);
        size_t wl = strlen(want[i]);
        assert_true((size_t)(nl + 1 - p) >= wl);
        assert_memory_equal(nl + 1 - wl, want[i], wl);
        p = nl + 1;
    }
    assert_int_equal(*p, '\0');
}

static void test_parse_level(void **state) {
    (void)state;
    fc_log_level l = FC_LOG_INFO;
    assert_int_equal(fc_log_parse_level("debug", &l), 0);
    assert_int_equal(l, FC_LOG_DEBUG);
    assert_int_equal(fc_log_parse_level("error", &l), 0);
    assert_int_equal(l, FC_LOG_ERROR);
    assert_int_equal(fc_log_parse_level("warn", &l), 0);
    assert_int_equal(l, FC_LOG_WARN);
    assert_int_equal(fc_log_parse_level("WARN", &l), -1);
    assert_int_equal(fc_log_parse_level("verbose", &l), -1);
    assert_int_equal(l, FC_LOG_WARN);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logfmt_plain_values_are_bare),
        cmocka_unit_test(test_logfmt_quotes_and_escapes),
        cmocka_unit_test(test_record_without_fields),
        cmocka_unit_test(test_json_mode_is_valid_json_that_round_trips),
        cmocka_unit_test(test_json_mode_replaces_invalid_utf8),
        cmocka_unit_test(test_long_record_is_cut_but_ends_in_newline),
        cmocka_unit_test(test_tiny_buffers_do_not_overflow),
        cmocka_unit_test(test_levels_filter_and_output_goes_to_fd),
        cmocka_unit_test(test_parse_level),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
