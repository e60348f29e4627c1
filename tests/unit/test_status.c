/* test_status.c: the error space and detail messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/status.h"

static void test_every_code_has_distinct_name_and_text(void **state) {
    (void)state;
    static const fc_status all[] = {
#define X(name, num, desc) FC_##name,
        FC_STATUS_MAP(X)
#undef X
    };
    size_t n = sizeof all / sizeof all[0];
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(all[i], (int)i); /* append-only and dense */
        assert_string_not_equal(fc_strerror(all[i]), "unknown error");
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(fc_status_name(all[i]), fc_status_name(all[j]));
    }
    assert_string_equal(fc_status_name(FC_ERR_HASH), "ERR_HASH");
    assert_string_equal(fc_strerror((fc_status)9999), "unknown error");
}

static void test_numbers_are_stable(void **state) {
    (void)state;
    /* These numbers are on disk and in logs; changing one is a compatibility break. */
    assert_int_equal(FC_OK, 0);
    assert_int_equal(FC_ERR_NOMEM, 1);
    assert_int_equal(FC_ERR_FORMAT, 4);
    assert_int_equal(FC_ERR_HASH, 13);
    assert_int_equal(FC_ERR_SYSTEM, 29);
}

static void test_error_set_and_prefix(void **state) {
    (void)state;
    fc_error err = {0};
    assert_int_equal(fc_error_set(&err, FC_ERR_SHAPE, "tensor '%s' has shape [%d]", "w", 3),
                     FC_ERR_SHAPE);
    assert_string_equal(fc_error_text(&err), "tensor 'w' has shape [3]");
    assert_int_equal(fc_error_prefix(&err, "update from %s", "c1"), FC_ERR_SHAPE);
    assert_string_equal(err.msg, "update from c1: tensor 'w' has shape [3]");
    /* NULL err is allowed everywhere. */
    assert_int_equal(fc_error_set(NULL, FC_ERR_IO, "x"), FC_ERR_IO);
    assert_int_equal(fc_error_prefix(NULL, "x"), FC_OK);
    /* Without a detail, the text falls back to the code's description. */
    fc_error bare = {.code = FC_ERR_HASH};
    assert_string_equal(fc_error_text(&bare), "SHA-256 mismatch");
    fc_error_prefix(&bare, "model.safetensors");
    assert_string_equal(bare.msg, "model.safetensors: SHA-256 mismatch");
}

static void test_long_detail_is_truncated_not_overflowed(void **state) {
    (void)state;
    char big[2 * FC_ERROR_MSG_MAX];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    fc_error err = {0};
    fc_error_set(&err, FC_ERR_INVALID, "%s", big);
    assert_int_equal(strlen(err.msg), FC_ERROR_MSG_MAX - 1);
    fc_error_prefix(&err, "prefix");
    assert_int_equal(strlen(err.msg), FC_ERROR_MSG_MAX - 1);
    assert_memory_equal(err.msg, "prefix: aaa", 11);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_code_has_distinct_name_and_text),
        cmocka_unit_test(test_numbers_are_stable),
        cmocka_unit_test(test_error_set_and_prefix),
        cmocka_unit_test(test_long_detail_is_truncated_not_overflowed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
