/* test_config.c: the INI loader, its value types, error messages, overrides, dump and docs.
 * Every file-based test writes a real file into FC_TEST_TMPDIR. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "core/config.h"
#include "tests/lib/testutil.h"

static const char *const rules[] = {"fedavg", "krum", "median", NULL};

static const fc_config_key schema[] = {
    {.section = "server", .key = "listen", .type = FC_CONFIG_STRING, .def = "0.0.0.0:8443",
     .help = "listen address"},
    {.section = "server", .key = "name", .type = FC_CONFIG_STRING, .help = "a name"},
    {.section = "tls", .key = "cert", .type = FC_CONFIG_PATH, .flags = FC_CONFIG_REQUIRED,
     .help = "certificate | PEM"},
    {.section = "tls", .key = "mutual", .type = FC_CONFIG_BOOL, .def = "false", .help = "mTLS"},
    {.section = "round", .key = "min_clients", .type = FC_CONFIG_INT, .def = "2", .min = "1",
     .max = "100000", .help = "quorum"},
    {.section = "round", .key = "seed", .type = FC_CONFIG_INT, .def = "0", .help = "PRNG seed"},
    {.section = "round", .key = "timeout", .type = FC_CONFIG_DURATION, .def = "5m", .min = "1s",
     .max = "1d", .help = "deadline"},
    {.section = "round", .key = "mu", .type = FC_CONFIG_DOUBLE, .def = "0", .min = "0",
     .max = "10", .help = "FedProx mu"},
    {.section = "aggregator", .key = "rule", .type = FC_CONFIG_ENUM, .def = "fedavg",
     .choices = rules, .help = "rule"},
    {.section = "limits", .key = "max_frame", .type = FC_CONFIG_SIZE, .def = "4MiB",
     .min = "1KiB", .max = "1GiB", .help = "frame limit"},
    {.section = "limits", .key = "staging", .type = FC_CONFIG_SIZE, .def = "1G",
     .help = "staging budget"},
    {.section = "limits", .key = "idle", .type = FC_CONFIG_DURATION, .def = "0",
     .help = "idle timeout"},
};
#define NKEYS (sizeof schema / sizeof schema[0])

static const char *tmpdir;

static int setup_tmpdir(void **state) {
    (void)state;
    tmpdir = fc_test_tmpdir();
    return 0;
}

/* Writes text (len bytes) to tmpdir/name and returns the path (static buffer). */
static const char *write_file_n(const char *name, const char *text, size_t len) {
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return path;
}

static const char *write_file(const char *name, const char *text) {
    return write_file_n(name, text, strlen(text));
}

static fc_config *new_config(void) {
    fc_config *cfg = NULL;
    fc_error err = {0};
    assert_int_equal(fc_config_new(schema, NKEYS, &cfg, &err), FC_OK);
    return cfg;
}

/* Loads text from a real file named t.ini; returns the status, err gets the message. */
static fc_status load_text(fc_config *cfg, const char *text, fc_error *err) {
    const char *path = write_file("t.ini", text);
    return fc_config_load_file(cfg, path, err);
}

/* The expected prefix "<tmpdir>/t.ini:<line>: " of a message about line `line`. */
static const char *at_line(int line) {
    static char buf[1100];
    snprintf(buf, sizeof buf, "%s/t.ini:%d: ", tmpdir, line);
    return buf;
}

static void assert_error(fc_config *cfg, const char *text, int line, const char *rest) {
    fc_error err = {0};
    assert_int_equal(load_text(cfg, text, &err), FC_ERR_CONFIG);
    char want[2048];
    snprintf(want, sizeof want, "%s%s", at_line(line), rest);
    assert_string_equal(err.msg, want);
}

static void test_empty_file_gives_every_default(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    fc_error err = {0};
    assert_int_equal(load_text(cfg, "", &err), FC_OK);
    assert_string_equal(fc_config_get_string(cfg, "server", "listen"), "0.0.0.0:8443");
    assert_string_equal(fc_config_get_string(cfg, "server", "name"), "");
    assert_string_equal(fc_config_get_path(cfg, "tls", "cert"), "");
    assert_false(fc_config_get_bool(cfg, "tls", "mutual"));
    assert_int_equal(fc_config_get_int(cfg, "round", "min_clients"), 2);
    assert_int_equal(fc_config_get_duration_ms(cfg, "round", "timeout"), 5 * 60 * 1000);
    assert_true(fc_config_get_double(cfg, "round", "mu") == 0.0);
    assert_string_equal(fc_config_get_enum(cfg, "aggregator", "rule"), "fedavg");
    assert_int_equal(fc_config_get_enum_index(cfg, "aggregator", "rule"), 0);
    assert_int_equal(fc_config_get_size(cfg, "limits", "max_frame"), 4u * 1024 * 1024);
    assert_int_equal(fc_config_get_size(cfg, "limits", "staging"), 1024u * 1024 * 1024);
    assert_int_equal(fc_config_get_duration_ms(cfg, "limits", "idle"), 0);
    const char *where = NULL;
    assert_int_equal(fc_config_source_of(cfg, "round", "min_clients", &where),
                     FC_CONFIG_FROM_DEFAULT);
    assert_string_equal(where, "default");
    /* Comments and blank lines only are empty too. */
    assert_int_equal(load_text(cfg, "; comment\n# other\n\n   \n", &err), FC_OK);
    fc_config_free(cfg);
}

static void test_file_values_of_every_type_are_parsed(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    fc_error err = {0};
    const char *text = "[server]\n"
                       "listen = 127.0.0.1:9000\n"
                       "name = \"  spaced name  \"\n"
                       "[tls]\n"
                       "cert = /etc/fedcoord/server.pem\n"
                       "mutual = Yes\n"
                       "[round]\n"
                       "min_clients = 100000\n"
                       "seed = -9223372036854775808\n"
                       "timeout = 1h30m\n"
                       "mu = 2.5e-1\n"
                       "[aggregator]\n"
                       "rule = krum\n"
                       "[limits]\n"
                       "max_frame = 16k\n"
                       "staging = 3 GiB\n"
                       "idle = 500ms\n";
    assert_int_equal(load_text(cfg, text, &err), FC_OK);
    assert_string_equal(fc_config_get_string(cfg, "server", "listen"), "127.0.0.1:9000");
    assert_string_equal(fc_config_get_string(cfg, "server", "name"), "  spaced name  ");
    assert_string_equal(fc_config_get_path(cfg, "tls", "cert"), "/etc/fedcoord/server.pem");
    assert_true(fc_config_get_bool(cfg, "tls", "mutual"));
    assert_int_equal(fc_config_get_int(cfg, "round", "min_clients"), 100000);
    assert_true(fc_config_get_int(cfg, "round", "seed") == INT64_MIN);
    assert_int_equal(fc_config_get_duration_ms(cfg, "round", "timeout"), 5400000);
    assert_true(fc_config_get_double(cfg, "round", "mu") == 0.25);
    assert_string_equal(fc_config_get_enum(cfg, "aggregator", "rule"), "krum");
    assert_int_equal(fc_config_get_enum_index(cfg, "aggregator", "rule"), 1);
    assert_int_equal(fc_config_get_size(cfg, "limits", "max_frame"), 16384);
    assert_int_equal(fc_config_get_size(cfg, "limits", "staging"), 3ull << 30);
    assert_int_equal(fc_config_get_duration_ms(cfg, "limits", "idle"), 500);
    const char *where = NULL;
    assert_int_equal(fc_config_source_of(cfg, "round", "timeout", &where), FC_CONFIG_FROM_FILE);
    char want[1100];
    snprintf(want, sizeof want, "%s/t.ini:10", tmpdir);
    assert_string_equal(where, want);
    assert_int_equal(fc_config_check_required(cfg, &err), FC_OK);
    fc_config_free(cfg);
}

typedef struct good_case {
    const char *section, *key, *text;
    int64_t i;   /* expected int / duration ms / bool (0/1) / enum index */
    uint64_t u;  /* expected size */
    double d;    /* expected double */
} good_case;

static void test_accepted_spellings_of_each_type(void **state) {
    (void)state;
    static const good_case cases[] = {
        {"tls", "mutual", "true", 1, 0, 0},        {"tls", "mutual", "FALSE", 0, 0, 0},
        {"tls", "mutual", "yes", 1, 0, 0},         {"tls", "mutual", "no", 0, 0, 0},
        {"tls", "mutual", "on", 1, 0, 0},          {"tls", "mutual", "Off", 0, 0, 0},
        {"tls", "mutual", "1", 1, 0, 0},           {"tls", "mutual", "0", 0, 0, 0},
        {"round", "min_clients", "1", 1, 0, 0},    {"round", "min_clients", "+42", 42, 0, 0},
        {"round", "seed", "9223372036854775807", INT64_MAX, 0, 0},
        {"round", "seed", "-17", -17, 0, 0},
        {"round", "timeout", "1s", 1000, 0, 0},    {"round", "timeout", "30s", 30000, 0, 0},
        {"round", "timeout", "1500ms", 1500, 0, 0}, {"round", "timeout", "5m", 300000, 0, 0},
        {"round", "timeout", "1d", 86400000, 0, 0}, {"round", "timeout", "2m30s", 150000, 0, 0},
        {"round", "timeout", "1h0m1s5ms", 3601005, 0, 0},
        {"limits", "idle", "0", 0, 0, 0},           {"limits", "idle", "0ms", 0, 0, 0},
        {"aggregator", "rule", "median", 2, 0, 0},
        {"limits", "max_frame", "1024", 0, 1024, 0}, {"limits", "max_frame", "1KiB", 0, 1024, 0},
        {"limits", "max_frame", "1k", 0, 1024, 0},   {"limits", "max_frame", "2M", 0, 2 << 20, 0},
        {"limits", "max_frame", "2m", 0, 2 << 20, 0},
        {"limits", "max_frame", "4MiB", 0, 4 << 20, 0},
        {"limits", "max_frame", "1GiB", 0, 1 << 30, 0},
        {"limits", "max_frame", "2048B", 0, 2048, 0},
        {"limits", "max_frame", "8 KiB", 0, 8192, 0},
        {"limits", "staging", "0", 0, 0, 0},
        {"limits", "staging", "16T", 0, 16ull << 40, 0},
        {"limits", "staging", "16777215TiB", 0, 16777215ull << 40, 0},
        {"limits", "staging", "18446744073709551615", 0, UINT64_MAX, 0},
        {"round", "mu", "0.5", 0, 0, 0.5},          {"round", "mu", "10", 0, 0, 10.0},
        {"round", "mu", ".25", 0, 0, 0.25},         {"round", "mu", "1e-3", 0, 0, 0.001},
        {"round", "mu", "+1.5E0", 0, 0, 1.5},       {"round", "mu", "5.", 0, 0, 5.0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const good_case *c = &cases[i];
        fc_config *cfg = new_config();
        char text[256];
        snprintf(text, sizeof text, "[%s]\n%s = %s\n", c->section, c->key, c->text);
        fc_error err = {0};
        fc_status st = load_text(cfg, text, &err);
        if (st != FC_OK)
            fail_msg("case %zu (%s): %s", i, c->text, err.msg);
        const fc_config_key *k = NULL;
        for (size_t j = 0; j < NKEYS; j++)
            if (!strcmp(schema[j].section, c->section) && !strcmp(schema[j].key, c->key))
                k = &schema[j];
        assert_non_null(k);
        switch (k->type) {
        case FC_CONFIG_BOOL:
            assert_int_equal(fc_config_get_bool(cfg, c->section, c->key), c->i);
            break;
        case FC_CONFIG_INT:
            assert_true(fc_config_get_int(cfg, c->section, c->key) == c->i);
            break;
        case FC_CONFIG_DURATION:
            assert_true(fc_config_get_duration_ms(cfg, c->section, c->key) == c->i);
            break;
        case FC_CONFIG_ENUM:
            assert_int_equal(fc_config_get_enum_index(cfg, c->section, c->key), c->i);
            break;
        case FC_CONFIG_SIZE:
            assert_true(fc_config_get_size(cfg, c->section, c->key) == c->u);
            break;
        case FC_CONFIG_DOUBLE:
            assert_true(fc_config_get_double(cfg, c->section, c->key) == c->d);
            break;
        default:
            fail();
        }
        fc_config_free(cfg);
    }
}

typedef struct bad_case {
    const char *section, *key, *text, *expected;
} bad_case;

static void test_bad_values_name_file_line_key_and_accepted_range(void **state) {
    (void)state;
    static const char int_range[] = "an integer in 1..100000";
    static const char size_range[] =
        "a size in 1KiB..1GiB (whole bytes, or with a suffix K/KiB, M/MiB, G/GiB or T/TiB)";
    static const char size_any[] =
        "a size (whole bytes, or with a suffix K/KiB, M/MiB, G/GiB or T/TiB)";
    static const char dur_range[] = "a duration in 1s..1d (e.g. 500ms, 30s, 5m, 1h30m)";
    static const char dbl_range[] = "a finite decimal number in 0..10";
    static const char bools[] = "true/false, yes/no, on/off or 1/0";
    static const bad_case cases[] = {
        {"round", "min_clients", "-3", int_range},
        {"round", "min_clients", "0", int_range},
        {"round", "min_clients", "100001", int_range},
        {"round", "min_clients", "3.0", int_range},
        {"round", "min_clients", "0x10", int_range},
        {"round", "min_clients", "12abc", int_range},
        {"round", "min_clients", "", int_range},
        {"round", "min_clients", "- 3", int_range},
        {"round", "seed", "9223372036854775808", "an integer"},
        {"round", "seed", "-9223372036854775809", "an integer"},
        {"round", "seed", "99999999999999999999999", "an integer"},
        {"tls", "mutual", "maybe", bools},
        {"tls", "mutual", "2", bools},
        {"tls", "mutual", "", bools},
        {"limits", "max_frame", "512", size_range},
        {"limits", "max_frame", "2GiB", size_range},
        {"limits", "max_frame", "4MB", size_range},
        {"limits", "max_frame", "4kib", size_range},
        {"limits", "max_frame", "1.5M", size_range},
        {"limits", "max_frame", "-1k", size_range},
        {"limits", "max_frame", "M", size_range},
        {"limits", "staging", "16777216TiB", size_any},
        {"limits", "staging", "18446744073709551616", size_any},
        {"round", "timeout", "30", dur_range},
        {"round", "timeout", "500ms", dur_range},
        {"round", "timeout", "2d", dur_range},
        {"round", "timeout", "1.5s", dur_range},
        {"round", "timeout", "30s1h", dur_range},
        {"round", "timeout", "1m1m", dur_range},
        {"round", "timeout", "5 m", dur_range},
        {"round", "timeout", "-5s", dur_range},
        {"round", "timeout", "5w", dur_range},
        {"limits", "idle", "9223372036854775807s", "a duration (e.g. 500ms, 30s, 5m, 1h30m)"},
        {"round", "mu", "-0.5", dbl_range},
        {"round", "mu", "10.0001", dbl_range},
        {"round", "mu", "nan", dbl_range},
        {"round", "mu", "inf", dbl_range},
        {"round", "mu", "1e400", dbl_range},
        {"round", "mu", "1e-400", dbl_range},
        {"round", "mu", "0x1p3", dbl_range},
        {"round", "mu", "1,5", dbl_range},
        {"round", "mu", ".", dbl_range},
        {"round", "mu", "1e", dbl_range},
        {"aggregator", "rule", "Krum", "one of: fedavg, krum, median"},
        {"aggregator", "rule", "", "one of: fedavg, krum, median"},
        {"server", "listen", "a\tb", "text without control characters"},
        {"tls", "cert", "/x\x01y", "a path without control characters"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad_case *c = &cases[i];
        fc_config *cfg = new_config();
        char text[256], shown[128], want[512];
        snprintf(text, sizeof text, "; leading comment\n[%s]\n\n%s = %s\n", c->section, c->key,
                 c->text);
        /* Control characters are shown escaped in messages. */
        size_t o = 0;
        for (const char *p = c->text; *p; p++)
            o += (size_t)((unsigned char)*p < 0x20 ? snprintf(shown + o, 8, "\\x%02x", *p)
                                                   : snprintf(shown + o, 8, "%c", *p));
        shown[o] = '\0';
        snprintf(want, sizeof want, "[%s] %s = \"%s\": expected %s", c->section, c->key, shown,
                 c->expected);
        fc_error err = {0};
        assert_int_equal(load_text(cfg, text, &err), FC_ERR_CONFIG);
        char full[2200];
        snprintf(full, sizeof full, "%s%s", at_line(4), want);
        if (strcmp(err.msg, full) != 0)
            fail_msg("case %zu:\n got  %s\n want %s", i, err.msg, full);
        fc_config_free(cfg);
    }
}

static void test_message_has_documented_shape(void **state) {
    (void)state;
    /* The exact example from the design: file, line, [section] key, value, accepted range. */
    fc_config *cfg = new_config();
    assert_error(cfg, "[round]\nseed = 1\nmin_clients = -3\n", 3,
                 "[round] min_clients = \"-3\": expected an integer in 1..100000");
    fc_config_free(cfg);
}

static void test_long_bad_value_is_shown_escaped_and_cut(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    char text[256] = "[server]\nname = a", shown[512] = "[server] name = \"a";
    memset(text + strlen(text), '\x01', 100);
    strcat(text, "\n");
    for (int i = 0; i < 79; i++)
        strcat(shown, "\\x01");
    strcat(shown, "...\": expected text without control characters");
    assert_error(cfg, text, 2, shown);
    fc_config_free(cfg);
}

static void test_unknown_section_is_rejected(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    /* Even an unknown section with no keys in it is an error. */
    assert_error(cfg, "[round]\nseed = 1\n[storage]\n", 3,
                 "unknown section [storage]; known sections: server, tls, round, aggregator, "
                 "limits");
    assert_error(cfg, "[rounds]\nseed = 1\n", 1, "unknown section [rounds] (did you mean [round]?)");
    assert_error(cfg, "[ round ]\n", 1, "unknown section [ round ] (did you mean [round]?)");
    assert_error(cfg, "[round\nseed = 1\n", 1, "section header \"[round\" has no closing ']'");
    assert_error(cfg, "[round] seed = 1\n", 1,
                 "unexpected text \"seed = 1\" after the section header");
    assert_error(cfg, "[]\n", 1, "empty section name \"[]\"");
    /* A comment after the header is fine. */
    fc_error err = {0};
    assert_int_equal(load_text(cfg, "[round] ; the round\nseed = 4\n", &err), FC_OK);
    assert_int_equal(fc_config_get_int(cfg, "round", "seed"), 4);
    fc_config_free(cfg);
}

static void test_unknown_key_is_rejected(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    assert_error(cfg, "[round]\nmin_client = 3\n", 2,
                 "unknown key \"min_client\" in [round] (did you mean min_clients?)");
    assert_error(cfg, "[round]\nseed = 1\nbananas = 3\n", 3,
                 "unknown key \"bananas\" in [round]; known keys: min_clients, seed, timeout, mu");
    assert_error(cfg, "seed = 1\n", 1, "key \"seed\" appears before any [section]");
    assert_error(cfg, "[round]\n= 5\n", 2, "missing key name before '='");
    fc_config_free(cfg);
}

static void test_duplicate_key_is_rejected(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    assert_error(cfg, "[round]\nseed = 1\nmu = 1\n\nseed = 2\n", 5,
                 "[round] seed: duplicate key (first set on line 2)");
    /* Also across two headers of the same section. */
    assert_error(cfg, "[round]\nseed = 1\n[tls]\nmutual = on\n[round]\nseed = 1\n", 6,
                 "[round] seed: duplicate key (first set on line 2)");
    fc_config_free(cfg);
}

static void test_line_without_equals_is_rejected(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    assert_error(cfg, "[round]\nseed = 1\nmin_clients 5\n", 3,
                 "cannot parse \"min_clients 5\": expected \"[section]\", \"key = value\" or a "
                 "comment");
    /* An indented line is not a continuation of the previous value: it stands alone. */
    assert_error(cfg, "[server]\nlisten = a\n    more text\n", 3,
                 "cannot parse \"more text\": expected \"[section]\", \"key = value\" or a "
                 "comment");
    /* inih would parse an inline comment before '=' as the end of the line. */
    assert_error(cfg, "[round]\nseed ;x = 1\n", 2,
                 "cannot parse \"seed ;x = 1\": expected \"[section]\", \"key = value\" or a "
                 "comment");
    fc_config_free(cfg);
}

static void test_overlong_line_is_an_error_not_truncated(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    char text[1024];
    /* "name = " is 7 characters: a value of 190 makes a line of exactly 197, the limit. */
    char value[400];
    memset(value, 'v', 190);
    value[190] = '\0';
    snprintf(text, sizeof text, "[server]\nname = %s\nlisten = x\n", value);
    fc_error err = {0};
    assert_int_equal(load_text(cfg, text, &err), FC_OK);
    assert_int_equal(strlen(fc_config_get_string(cfg, "server", "name")), 190);
    /* One more character is an error on that line; with CRLF the limit is the same. */
    memset(value, 'v', 191);
    value[191] = '\0';
    snprintf(text, sizeof text, "[server]\nname = %s\r\nlisten = x\r\n", value);
    assert_error(cfg, text, 2, "line is 198 characters long; the limit is 197");
    /* Comments have the same limit: inih would read the tail of a long line as a line of its
     * own. */
    memset(value, 'v', 399);
    value[399] = '\0';
    snprintf(text, sizeof text, "[server]\nlisten = x\n; %s\nbogus = 1\n", value);
    assert_error(cfg, text, 3, "line is 401 characters long; the limit is 197");
    snprintf(text, sizeof text, "[server]\nname = %s\n", value);
    assert_error(cfg, text, 2, "line is 406 characters long; the limit is 197");
    fc_config_free(cfg);
}

static void test_nul_byte_is_an_error(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    static const char text[] = "[server]\nname = ab\0cd\n";
    const char *path = write_file_n("t.ini", text, sizeof text - 1);
    fc_error err = {0};
    assert_int_equal(fc_config_load_file(cfg, path, &err), FC_ERR_CONFIG);
    char want[1200];
    snprintf(want, sizeof want, "%sline contains a NUL byte", at_line(2));
    assert_string_equal(err.msg, want);
    fc_config_free(cfg);
}

static void test_comments_quotes_crlf_and_bom(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    fc_error err = {0};
    const char *text = "\xEF\xBB\xBF; a file saved with a byte order mark\r\n"
                       "[round]\r\n"
                       "  min_clients = 7 ; an inline comment\r\n"
                       "\tseed: 5\r\n"
                       "# a hash comment\r\n"
                       "[server]\r\n"
                       "name = a;b#c\r\n"
                       "listen = \"\"\r\n";
    assert_int_equal(load_text(cfg, text, &err), FC_OK);
    assert_int_equal(fc_config_get_int(cfg, "round", "min_clients"), 7);
    assert_int_equal(fc_config_get_int(cfg, "round", "seed"), 5);
    /* ';' is a comment only after a blank; '#' only at the start of a line. */
    assert_string_equal(fc_config_get_string(cfg, "server", "name"), "a;b#c");
    assert_string_equal(fc_config_get_string(cfg, "server", "listen"), "");
    assert_error(cfg, "[server]\nname = \"open\n", 2,
                 "[server] name = \"\\\"open\": unbalanced double quote (a quoted value must end "
                 "with '\"'; note that ';' after a space starts a comment)");
    assert_error(cfg, "[server]\nname = \"a ;b\"\n", 2,
                 "[server] name = \"\\\"a\": unbalanced double quote (a quoted value must end "
                 "with '\"'; note that ';' after a space starts a comment)");
    fc_config_free(cfg);
}

static void test_failed_load_leaves_config_unchanged(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    fc_error err = {0};
    assert_int_equal(load_text(cfg, "[round]\nseed = 11\n", &err), FC_OK);
    assert_int_equal(load_text(cfg, "[round]\nseed = 12\nmu = 1\nmin_clients = 0\n", &err),
                     FC_ERR_CONFIG);
    assert_int_equal(fc_config_get_int(cfg, "round", "seed"), 11);
    assert_true(fc_config_get_double(cfg, "round", "mu") == 0.0);
    fc_config_free(cfg);
}

static void test_file_errors(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    fc_error err = {0};
    char path[1100];
    snprintf(path, sizeof path, "%s/does-not-exist.ini", tmpdir);
    assert_int_equal(fc_config_load_file(cfg, path, &err), FC_ERR_IO);
    assert_non_null(strstr(err.msg, "does-not-exist.ini: cannot open: No such file"));
    assert_int_equal(fc_config_load_file(cfg, tmpdir, &err), FC_ERR_IO);
    assert_non_null(strstr(err.msg, ": not a regular file"));
    /* Over the size limit, even if it is all comments. */
    size_t big = FC_CONFIG_MAX_FILE + 1;
    char *text = malloc(big);
    assert_non_null(text);
    for (size_t i = 0; i < big; i++)
        text[i] = (i % 64 == 63) ? '\n' : ';';
    const char *p = write_file_n("big.ini", text, big);
    free(text);
    assert_int_equal(fc_config_load_file(cfg, p, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "big.ini: file is larger than 1048576 bytes"));
    fc_config_free(cfg);
}

static void test_set_overrides_file_values(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    fc_error err = {0};
    assert_int_equal(load_text(cfg, "[round]\nmin_clients = 5\nseed = 3\n", &err), FC_OK);
    assert_int_equal(fc_config_set(cfg, "round.min_clients=9", "--set", &err), FC_OK);
    assert_int_equal(fc_config_set(cfg, " limits.max_frame = 8MiB ", "--set", &err), FC_OK);
    assert_int_equal(fc_config_set(cfg, "server.name=a=b", "--set", &err), FC_OK);
    assert_int_equal(fc_config_get_int(cfg, "round", "min_clients"), 9);
    assert_int_equal(fc_config_get_int(cfg, "round", "seed"), 3);
    assert_int_equal(fc_config_get_size(cfg, "limits", "max_frame"), 8u << 20);
    assert_string_equal(fc_config_get_string(cfg, "server", "name"), "a=b");
    const char *where = NULL;
    assert_int_equal(fc_config_source_of(cfg, "round", "min_clients", &where),
                     FC_CONFIG_FROM_OVERRIDE);
    assert_string_equal(where, "--set");
    /* A later --set of the same key wins. */
    assert_int_equal(fc_config_set(cfg, "round.min_clients=10", "--set", &err), FC_OK);
    assert_int_equal(fc_config_get_int(cfg, "round", "min_clients"), 10);
    /* Overrides apply after the file even when a file is loaded afterwards. */
    assert_int_equal(load_text(cfg, "[round]\nmin_clients = 6\nseed = 4\n", &err), FC_OK);
    assert_int_equal(fc_config_get_int(cfg, "round", "min_clients"), 10);
    assert_int_equal(fc_config_get_int(cfg, "round", "seed"), 4);
    /* The file is still validated for keys that are overridden. */
    assert_int_equal(load_text(cfg, "[round]\nmin_clients = 0\n", &err), FC_ERR_CONFIG);
    fc_config_free(cfg);
}

static void test_set_errors_name_the_source(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    fc_error err = {0};
    assert_int_equal(fc_config_set(cfg, "round.min_clients=0", "--set", &err), FC_ERR_CONFIG);
    assert_string_equal(err.msg,
                        "--set: [round] min_clients = \"0\": expected an integer in 1..100000");
    assert_int_equal(fc_config_set(cfg, "round.min_clientz=3", "--set", &err), FC_ERR_CONFIG);
    assert_string_equal(err.msg,
                        "--set: unknown key \"min_clientz\" in [round] (did you mean min_clients?)");
    assert_int_equal(fc_config_set(cfg, "storage.path=/x", "--set", &err), FC_ERR_CONFIG);
    assert_string_equal(err.msg, "--set: unknown section [storage]; known sections: server, tls, "
                                 "round, aggregator, limits");
    assert_int_equal(fc_config_set(cfg, "round.min_clients", NULL, &err), FC_ERR_CONFIG);
    assert_string_equal(err.msg, "--set: \"round.min_clients\": expected section.key=value");
    assert_int_equal(fc_config_set(cfg, "min_clients=3", "--set", &err), FC_ERR_CONFIG);
    assert_string_equal(err.msg, "--set: \"min_clients=3\": expected section.key=value");
    assert_int_equal(fc_config_set(cfg, "tls.mutual=perhaps", "--set", &err), FC_ERR_CONFIG);
    assert_string_equal(err.msg, "--set: [tls] mutual = \"perhaps\": expected true/false, "
                                 "yes/no, on/off or 1/0");
    assert_int_equal(fc_config_set(cfg, "server.name=a ;b", "--set", &err), FC_ERR_CONFIG);
    assert_string_equal(err.msg, "--set: [server] name = \"a ;b\": a value cannot contain ';' "
                                 "after a space (in a file that starts a comment)");
    assert_int_equal(fc_config_set(cfg, "server.name=\"x", "--set", &err), FC_ERR_CONFIG);
    char longv[300] = "server.name=";
    memset(longv + 12, 'x', 200);
    longv[212] = '\0';
    assert_int_equal(fc_config_set(cfg, longv, "--set", &err), FC_ERR_CONFIG);
    assert_string_equal(err.msg, "--set: [server] name: value is 200 characters long; "
                                 "\"key=value\" must fit in a 197-character line");
    /* Nothing was changed by the failures. */
    assert_int_equal(fc_config_get_int(cfg, "round", "min_clients"), 2);
    assert_string_equal(fc_config_get_string(cfg, "server", "name"), "");
    assert_int_equal(fc_config_source_of(cfg, "server", "name", NULL), FC_CONFIG_FROM_DEFAULT);
    fc_config_free(cfg);
}

static void test_required_key_must_be_set(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    fc_error err = {0};
    assert_int_equal(fc_config_check_required(cfg, &err), FC_ERR_CONFIG);
    assert_string_equal(err.msg, "[tls] cert is required: set it in the file or with --set "
                                 "tls.cert=...");
    assert_int_equal(fc_config_set(cfg, "tls.cert=/c.pem", "--set", &err), FC_OK);
    assert_int_equal(fc_config_check_required(cfg, &err), FC_OK);
    fc_config_free(cfg);
}

static void test_dump_marks_sources_and_loads_back(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    fc_error err = {0};
    assert_int_equal(load_text(cfg, "[round]\nseed = 7\n\nmu = 0.5\n[server]\nname = \" x\"\n",
                               &err),
                     FC_OK);
    assert_int_equal(fc_config_set(cfg, "limits.idle=30s", "--set", &err), FC_OK);
    fc_buf out = FC_BUF_INIT;
    assert_int_equal(fc_config_dump(cfg, &out), FC_OK);
    assert_int_equal(fc_buf_append_u8(&out, 0), FC_OK);
    char want[4096];
    snprintf(want, sizeof want,
             "[server]\n"
             "listen = 0.0.0.0:8443 ; default\n"
             "name = \" x\" ; %s/t.ini:6\n"
             "\n[tls]\n"
             "cert = \"\" ; default\n"
             "mutual = false ; default\n"
             "\n[round]\n"
             "min_clients = 2 ; default\n"
             "seed = 7 ; %s/t.ini:2\n"
             "timeout = 5m ; default\n"
             "mu = 0.5 ; %s/t.ini:4\n"
             "\n[aggregator]\n"
             "rule = fedavg ; default\n"
             "\n[limits]\n"
             "max_frame = 4MiB ; default\n"
             "staging = 1G ; default\n"
             "idle = 30s ; --set\n",
             tmpdir, tmpdir, tmpdir);
    assert_string_equal((const char *)out.data, want);
    /* The dump is a valid file giving the same values. */
    fc_config *again = new_config();
    assert_int_equal(fc_config_load_string(again, "dump", (const char *)out.data, out.len - 1, &err),
                     FC_OK);
    assert_string_equal(fc_config_get_string(again, "server", "name"), " x");
    assert_int_equal(fc_config_get_int(again, "round", "seed"), 7);
    assert_int_equal(fc_config_get_duration_ms(again, "limits", "idle"), 30000);
    fc_buf_free(&out);
    fc_config_free(again);
    /* A value near the line limit: its source comment goes on the line above. */
    char set[256] = "server.listen=", value[200];
    memset(value, 'a', 183); /* "listen = " + 183 = 192: no room for " ; --set" */
    value[183] = '\0';
    strcat(set, value);
    assert_int_equal(fc_config_set(cfg, set, "--set", &err), FC_OK);
    assert_int_equal(fc_config_dump(cfg, &out), FC_OK);
    assert_int_equal(fc_buf_append_u8(&out, 0), FC_OK);
    char expect[300];
    snprintf(expect, sizeof expect, "[server]\n; --set\nlisten = %s\n", value);
    assert_memory_equal(out.data, expect, strlen(expect));
    again = new_config();
    assert_int_equal(fc_config_load_string(again, "dump", (const char *)out.data, out.len - 1, &err),
                     FC_OK);
    assert_string_equal(fc_config_get_string(again, "server", "listen"), value);
    fc_buf_free(&out);
    fc_config_free(again);
    fc_config_free(cfg);
}

static void test_schema_renders_as_markdown(void **state) {
    (void)state;
    fc_buf out = FC_BUF_INIT;
    assert_int_equal(fc_config_schema_markdown(schema, 5, &out), FC_OK);
    assert_int_equal(fc_buf_append_u8(&out, 0), FC_OK);
    assert_string_equal((const char *)out.data,
                        "| Section | Key | Type | Default | Range | Description |\n"
                        "|---|---|---|---|---|---|\n"
                        "| `[server]` | `listen` | string | `0.0.0.0:8443` |  | listen address |\n"
                        "| `[server]` | `name` | string | (unset) |  | a name |\n"
                        "| `[tls]` | `cert` | path | (required) |  | certificate \\| PEM |\n"
                        "| `[tls]` | `mutual` | bool | `false` | true/false | mTLS |\n"
                        "| `[round]` | `min_clients` | integer | `2` | 1..100000 | quorum |\n");
    fc_buf_reset(&out);
    assert_int_equal(fc_config_schema_markdown(schema + 8, 2, &out), FC_OK);
    assert_int_equal(fc_buf_append_u8(&out, 0), FC_OK);
    assert_non_null(strstr((const char *)out.data,
                           "| `[aggregator]` | `rule` | enum | `fedavg` | `fedavg`, `krum`, "
                           "`median` | rule |\n"));
    assert_non_null(strstr((const char *)out.data,
                           "| `[limits]` | `max_frame` | size | `4MiB` | 1KiB..1GiB | frame "
                           "limit |\n"));
    fc_buf_free(&out);
}

static void test_bad_schemas_are_refused(void **state) {
    (void)state;
    static const fc_config_key bad_default[] = {
        {.section = "a", .key = "n", .type = FC_CONFIG_INT, .def = "0", .min = "1", .max = "2"}};
    static const fc_config_key min_above_max[] = {
        {.section = "a", .key = "n", .type = FC_CONFIG_INT, .def = "1", .min = "3", .max = "2"}};
    static const fc_config_key enum_no_choices[] = {
        {.section = "a", .key = "e", .type = FC_CONFIG_ENUM, .def = "x"}};
    static const fc_config_key dup[] = {
        {.section = "a", .key = "s", .type = FC_CONFIG_STRING},
        {.section = "a", .key = "s", .type = FC_CONFIG_STRING}};
    static const fc_config_key dotted[] = {{.section = "a.b", .key = "s", .type = FC_CONFIG_STRING}};
    static const fc_config_key no_default[] = {{.section = "a", .key = "b", .type = FC_CONFIG_BOOL}};
    static const fc_config_key range_on_bool[] = {
        {.section = "a", .key = "b", .type = FC_CONFIG_BOOL, .def = "on", .min = "0"}};
    fc_config *cfg = NULL;
    fc_error err = {0};
    assert_int_equal(fc_config_new(bad_default, 1, &cfg, &err), FC_ERR_INVALID);
    assert_string_equal(err.msg, "schema entry 0 ([a] n): default \"0\" is not accepted by the "
                                 "entry itself");
    assert_null(cfg);
    assert_int_equal(fc_config_new(min_above_max, 1, &cfg, &err), FC_ERR_INVALID);
    assert_string_equal(err.msg, "schema entry 0 ([a] n): min 3 is above max 2");
    assert_int_equal(fc_config_new(enum_no_choices, 1, &cfg, &err), FC_ERR_INVALID);
    assert_int_equal(fc_config_new(dup, 2, &cfg, &err), FC_ERR_INVALID);
    assert_string_equal(err.msg, "schema entry 1 ([a] s): duplicate entry");
    assert_int_equal(fc_config_new(dotted, 1, &cfg, &err), FC_ERR_INVALID);
    assert_int_equal(fc_config_new(no_default, 1, &cfg, &err), FC_ERR_INVALID);
    assert_int_equal(fc_config_new(range_on_bool, 1, &cfg, &err), FC_ERR_INVALID);
    assert_int_equal(fc_config_new(schema, 0, &cfg, &err), FC_ERR_INVALID);
    assert_null(cfg);
}

/* Runs fn in a child process and returns the signal that ended it (0 if it exited). */
static int child_signal(void (*fn)(fc_config *), fc_config *cfg) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr))
            _exit(3);
        fn(cfg);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

static void get_unknown(fc_config *cfg) { (void)fc_config_get_int(cfg, "round", "nope"); }
static void get_wrong_type(fc_config *cfg) { (void)fc_config_get_int(cfg, "tls", "mutual"); }
static void get_known(fc_config *cfg) { (void)fc_config_get_int(cfg, "round", "seed"); }

static void test_getter_for_unknown_key_is_a_programming_error(void **state) {
    (void)state;
    fc_config *cfg = new_config();
    assert_int_equal(child_signal(get_known, cfg), 0);
    assert_int_equal(child_signal(get_unknown, cfg), SIGABRT);
    assert_int_equal(child_signal(get_wrong_type, cfg), SIGABRT);
    fc_config_free(cfg);
}

static void test_allocation_failures_are_clean(void **state) {
    (void)state;
    const char *path = write_file("t.ini", "[round]\nseed = 5\nmu = 1\n[server]\nname = n\n");
    fc_error err = {0};
    /* fc_config_new */
    for (long n = 0;; n++) {
        fc_config *cfg = NULL;
        fc_alloc_fail_after(n);
        fc_status st = fc_config_new(schema, NKEYS, &cfg, &err);
        fc_alloc_fail_after(-1);
        if (st == FC_OK) {
            fc_config_free(cfg);
            break;
        }
        assert_int_equal(st, FC_ERR_NOMEM);
        assert_null(cfg);
    }
    /* load and set: every failure is FC_ERR_NOMEM and leaves the values as they were. */
    fc_config *cfg = new_config();
    int loaded = 0;
    for (long n = 0; !loaded; n++) {
        fc_alloc_fail_after(n);
        fc_status st = fc_config_load_file(cfg, path, &err);
        unsigned long failures = fc_alloc_failures();
        fc_alloc_fail_after(-1);
        if (st == FC_OK) {
            loaded = 1;
            assert_int_equal(failures, 0);
            break;
        }
        assert_int_equal(st, FC_ERR_NOMEM);
        assert_true(failures > 0);
        assert_int_equal(fc_config_get_int(cfg, "round", "seed"), 0);
        assert_string_equal(fc_config_get_string(cfg, "server", "name"), "");
    }
    assert_int_equal(fc_config_get_int(cfg, "round", "seed"), 5);
    for (long n = 0;; n++) {
        fc_alloc_fail_after(n);
        fc_status st = fc_config_set(cfg, "round.seed=6", "--set", &err);
        fc_alloc_fail_after(-1);
        if (st == FC_OK)
            break;
        assert_int_equal(st, FC_ERR_NOMEM);
        assert_int_equal(fc_config_get_int(cfg, "round", "seed"), 5);
    }
    assert_int_equal(fc_config_get_int(cfg, "round", "seed"), 6);
    fc_config_free(cfg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_file_gives_every_default),
        cmocka_unit_test(test_file_values_of_every_type_are_parsed),
        cmocka_unit_test(test_accepted_spellings_of_each_type),
        cmocka_unit_test(test_bad_values_name_file_line_key_and_accepted_range),
        cmocka_unit_test(test_message_has_documented_shape),
        cmocka_unit_test(test_long_bad_value_is_shown_escaped_and_cut),
        cmocka_unit_test(test_unknown_section_is_rejected),
        cmocka_unit_test(test_unknown_key_is_rejected),
        cmocka_unit_test(test_duplicate_key_is_rejected),
        cmocka_unit_test(test_line_without_equals_is_rejected),
        cmocka_unit_test(test_overlong_line_is_an_error_not_truncated),
        cmocka_unit_test(test_nul_byte_is_an_error),
        cmocka_unit_test(test_comments_quotes_crlf_and_bom),
        cmocka_unit_test(test_failed_load_leaves_config_unchanged),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_set_overrides_file_values),
        cmocka_unit_test(test_set_errors_name_the_source),
        cmocka_unit_test(test_required_key_must_be_set),
        cmocka_unit_test(test_dump_marks_sources_and_loads_back),
        cmocka_unit_test(test_schema_renders_as_markdown),
        cmocka_unit_test(test_bad_schemas_are_refused),
        cmocka_unit_test(test_getter_for_unknown_key_is_a_programming_error),
        cmocka_unit_test(test_allocation_failures_are_clean),
    };
    return cmocka_run_group_tests(tests, setup_tmpdir, NULL);
}
