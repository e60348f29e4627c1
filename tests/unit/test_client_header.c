/* test_client_header.c: the public header stands alone and agrees with the library.
 *
 * This file includes <fedcoord/client.h> and nothing of the source tree, as an SDK user would.
 * The header carries its own copy of the fc_status and fc_dtype enums (the installed SDK has no
 * core/ headers); these tests pin every number and check each code's description against the
 * library's fc_strerror, so the copy cannot drift from core/status.h unnoticed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include <fedcoord/client.h>

static void test_status_numbers_and_texts_match_the_library(void **state) {
    (void)state;
    static const struct {
        fc_status st;
        int number;
        const char *text;
    } codes[] = {
        {FC_OK, 0, "success"},
        {FC_ERR_NOMEM, 1, "out of memory"},
        {FC_ERR_INVALID, 2, "invalid argument"},
        {FC_ERR_IO, 3, "input/output error"},
        {FC_ERR_FORMAT, 4, "malformed input"},
        {FC_ERR_OVERFLOW, 5, "size arithmetic overflow"},
        {FC_ERR_LIMIT, 6, "limit exceeded"},
        {FC_ERR_NOT_FOUND, 7, "not found"},
        {FC_ERR_EXISTS, 8, "already exists"},
        {FC_ERR_PROTOCOL, 9, "protocol violation"},
        {FC_ERR_VERSION, 10, "incompatible version"},
        {FC_ERR_AUTH, 11, "authentication failed"},
        {FC_ERR_TLS, 12, "TLS error"},
        {FC_ERR_HASH, 13, "SHA-256 mismatch"},
        {FC_ERR_SHAPE, 14, "tensor name, dtype or shape mismatch"},
        {FC_ERR_DTYPE, 15, "unsupported dtype"},
        {FC_ERR_CONFIG, 16, "configuration error"},
        {FC_ERR_STATE, 17, "operation not allowed in this state"},
        {FC_ERR_DB, 18, "database error"},
        {FC_ERR_CORRUPT, 19, "stored data is corrupt"},
        {FC_ERR_AGAIN, 20, "more input needed"},
        {FC_ERR_CLOSED, 21, "connection closed"},
        {FC_ERR_TIMEOUT, 22, "timed out"},
        {FC_ERR_UNSUPPORTED, 23, "not supported"},
        {FC_ERR_NON_FINITE, 24, "non-finite value"},
        {FC_ERR_REQUIREMENT, 25, "requirement not met"},
        {FC_ERR_BUSY, 26, "resource busy"},
        {FC_ERR_RANGE, 27, "value out of range"},
        {FC_ERR_CHUNK, 28, "bad chunk"},
        {FC_ERR_SYSTEM, 29, "system call failed"},
    };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        assert_int_equal((int)codes[i].st, codes[i].number);
        assert_string_equal(fc_strerror(codes[i].st), codes[i].text);
    }
}

static void test_dtype_numbers_are_the_wire_numbers(void **state) {
    (void)state;
    assert_int_equal(FC_DTYPE_F32, 1);
    assert_int_equal(FC_DTYPE_F16, 2);
    assert_int_equal(FC_DTYPE_BF16, 3);
    assert_int_equal(FC_DTYPE_F64, 4);
    assert_int_equal(FC_MAX_DIMS, 8);
}

static void test_config_init_sets_size_and_zero_defaults(void **state) {
    (void)state;
    fc_client_config cfg = FC_CLIENT_CONFIG_INIT;
    assert_int_equal(cfg.size, sizeof(fc_client_config));
    assert_null(cfg.server);
    assert_null(cfg.token);
    assert_int_equal(cfg.connect_timeout_ms, 0);
    assert_int_equal(cfg.reconnect_max_attempts, 0);
    assert_int_equal(cfg.max_model_bytes, 0);
}

static void test_null_arguments_are_refused_without_a_handle(void **state) {
    (void)state;
    fc_client *c = (fc_client *)&c;
    assert_int_equal(fc_client_open(NULL, &c), FC_ERR_INVALID);
    assert_null(c);
    fc_client_config cfg = FC_CLIENT_CONFIG_INIT;
    assert_int_equal(fc_client_open(&cfg, NULL), FC_ERR_INVALID);
    assert_int_equal(fc_client_next_task(NULL, 1, NULL), FC_ERR_INVALID);
    assert_int_equal(fc_client_submit(NULL, NULL, FC_SUBMIT_DELTA, NULL, 1, NULL, 0),
                     FC_ERR_INVALID);
    assert_string_equal(fc_client_error(NULL), "no client");
    fc_client_close(NULL);
    fc_task_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_numbers_and_texts_match_the_library),
        cmocka_unit_test(test_dtype_numbers_are_the_wire_numbers),
        cmocka_unit_test(test_config_init_sets_size_and_zero_defaults),
        cmocka_unit_test(test_null_arguments_are_refused_without_a_handle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
