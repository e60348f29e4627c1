/* test_symbols.c: the ABI of libfedclient.so. Runs `nm -D --defined-only` on the shared library
 * (found under $FC_BUILD_DIR, default "build") and checks that every exported symbol is an fc_
 * function of the public header, that the whole public API is there, and that the internal
 * core/ and proto/ functions linked into the library stay hidden. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define MAX_SYMS 512

static char syms[MAX_SYMS][256];
static size_t n_syms;

static void load_symbols(void) {
    const char *build = getenv("FC_BUILD_DIR");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "nm -D --defined-only '%s/lib/libfedclient.so' 2>&1",
             build && *build ? build : "build");
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[512];
    n_syms = 0;
    while (fgets(line, sizeof line, p)) {
        char addr[64], type[8], name[256];
        if (sscanf(line, "%63s %7s %255s", addr, type, name) != 3)
            fail_msg("unexpected nm output: %s", line);
        if (strcmp(type, "A") == 0) /* the version node itself (FEDCLIENT_1) */
            continue;
        char *at = strchr(name, '@');
        if (at)
            *at = '\0';
        assert_true(n_syms < MAX_SYMS);
        snprintf(syms[n_syms++], sizeof syms[0], "%s", name);
    }
    assert_int_equal(pclose(p), 0);
}

static int exported(const char *name) {
    for (size_t i = 0; i < n_syms; i++)
        if (strcmp(syms[i], name) == 0)
            return 1;
    return 0;
}

static void test_every_exported_symbol_starts_with_fc(void **state) {
    (void)state;
    load_symbols();
    assert_true(n_syms > 0);
    for (size_t i = 0; i < n_syms; i++)
        if (strncmp(syms[i], "fc_", 3) != 0)
            fail_msg("libfedclient.so exports '%s', which is not an fc_ symbol", syms[i]);
}

static void test_public_api_is_exported(void **state) {
    (void)state;
    load_symbols();
    static const char *const api[] = {
        "fc_client_open",   "fc_client_close",       "fc_client_error",       "fc_client_next_task",
        "fc_client_submit", "fc_client_report_eval", "fc_strerror",           "fc_task_free",
        "fc_task_round",    "fc_task_tensor",        "fc_task_config_double", "fc_task_prox_add",
        "fc_client_set_initial_model",
    };
    for (size_t i = 0; i < sizeof api / sizeof api[0]; i++)
        if (!exported(api[i]))
            fail_msg("public function %s is not exported", api[i]);
}

static void test_internal_functions_stay_hidden(void **state) {
    (void)state;
    load_symbols();
    static const char *const internal[] = {
        "fc_frame_encode", "fc_wire_hello", "fc_stage_create", "fc_model_add",
        "fc_malloc",       "fc_error_set",  "conn_recv",       "fc_alloc_fail_after",
    };
    for (size_t i = 0; i < sizeof internal / sizeof internal[0]; i++)
        if (exported(internal[i]))
            fail_msg("internal function %s is exported", internal[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_exported_symbol_starts_with_fc),
        cmocka_unit_test(test_public_api_is_exported),
        cmocka_unit_test(test_internal_functions_stay_hidden),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
