/* test_buf.c: the growable buffer and the bounds-checked reader. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "core/buf.h"

static void test_append_grows_and_keeps_contents(void **state) {
    (void)state;
    fc_buf b = FC_BUF_INIT;
    size_t last_cap = 0, growths = 0;
    for (unsigned i = 0; i < 100000; i++) {
        uint8_t byte = (uint8_t)(i * 7);
        assert_int_equal(fc_buf_append_u8(&b, byte), FC_OK);
        assert_true(b.cap >= b.len);
        if (b.cap != last_cap) {
            growths++;
            last_cap = b.cap;
        }
    }
    assert_int_equal(b.len, 100000);
    /* Geometric growth: from 64 bytes to >= 100000 in 11 doublings, not 100000 steps. */
    assert_true(growths <= 12);
    for (unsigned i = 0; i < 100000; i++)
        assert_int_equal(b.data[i], (uint8_t)(i * 7));
    fc_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
}

static void test_append_of_own_bytes_survives_growth(void **state) {
    (void)state;
    fc_buf b = FC_BUF_INIT;
    assert_int_equal(fc_buf_append(&b, "abcdefgh", 8), FC_OK);
    /* Append the buffer to itself until it has to move; the copied bytes must stay right. */
    for (int i = 0; i < 6; i++)
        assert_int_equal(fc_buf_append(&b, b.data, b.len), FC_OK);
    assert_int_equal(b.len, 8u << 6);
    for (size_t i = 0; i < b.len; i++)
        assert_int_equal(b.data[i], "abcdefgh"[i % 8]);
    fc_buf_free(&b);
}

static void test_little_endian_appends(void **state) {
    (void)state;
    fc_buf b = FC_BUF_INIT;
    assert_int_equal(fc_buf_append_u32le(&b, 0x01020304u), FC_OK);
    assert_int_equal(fc_buf_append_u64le(&b, 0x0A0B0C0D0E0F1011ull), FC_OK);
    assert_int_equal(fc_buf_append_f64le(&b, 1.0), FC_OK); /* 0x3FF0000000000000 */
    assert_int_equal(fc_buf_append(&b, NULL, 0), FC_OK);
    static const uint8_t want[] = {0x04, 0x03, 0x02, 0x01, 0x11, 0x10, 0x0F, 0x0E, 0x0D, 0x0C,
                                   0x0B, 0x0A, 0,    0,    0,    0,    0,    0,    0xF0, 0x3F};
    assert_int_equal(b.len, sizeof want);
    assert_memory_equal(b.data, want, sizeof want);
    uint8_t be[4];
    fc_store_u32be(be, 0xDEADBEEFu);
    assert_int_equal(be[0], 0xDE);
    assert_int_equal(be[3], 0xEF);
    assert_int_equal(fc_load_u32be(be), 0xDEADBEEFu);
    fc_buf_free(&b);
}

static void test_reserve_overflow_is_refused_and_buffer_kept(void **state) {
    (void)state;
    fc_buf b = FC_BUF_INIT;
    assert_int_equal(fc_buf_append(&b, "abc", 3), FC_OK);
    uint8_t *data = b.data;
    size_t cap = b.cap;
    assert_int_equal(fc_buf_reserve(&b, SIZE_MAX), FC_ERR_OVERFLOW);
    assert_int_equal(fc_buf_reserve(&b, SIZE_MAX - 2), FC_ERR_OVERFLOW);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, cap);
    assert_int_equal(b.len, 3);
    /* Reserving what is already there changes nothing. */
    assert_int_equal(fc_buf_reserve(&b, cap - 3), FC_OK);
    assert_int_equal(b.cap, cap);
    fc_buf_free(&b);
}

static void test_failed_growth_leaves_buffer_unchanged(void **state) {
    (void)state;
    fc_buf b = FC_BUF_INIT;
    assert_int_equal(fc_buf_append(&b, "0123456789", 10), FC_OK);
    size_t cap = b.cap;
    char big[200];
    memset(big, 'x', sizeof big);
    fc_alloc_fail_after(0);
    assert_int_equal(fc_buf_append(&b, big, sizeof big), FC_ERR_NOMEM);
    assert_int_equal(fc_alloc_failures(), 1);
    fc_alloc_fail_after(-1);
    assert_int_equal(b.len, 10);
    assert_int_equal(b.cap, cap);
    assert_memory_equal(b.data, "0123456789", 10);
    assert_int_equal(fc_buf_append(&b, big, sizeof big), FC_OK);
    assert_int_equal(b.len, 210);
    fc_buf_free(&b);
}

static void test_consume_and_reset(void **state) {
    (void)state;
    fc_buf b = FC_BUF_INIT;
    assert_int_equal(fc_buf_append(&b, "hello world", 11), FC_OK);
    fc_buf_consume(&b, 6);
    assert_int_equal(b.len, 5);
    assert_memory_equal(b.data, "world", 5);
    fc_buf_consume(&b, 0);
    assert_int_equal(b.len, 5);
    fc_buf_consume(&b, 5);
    assert_int_equal(b.len, 0);
    size_t cap = b.cap;
    assert_int_equal(fc_buf_append(&b, "xy", 2), FC_OK);
    fc_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, cap); /* keeps capacity */
    fc_buf_free(&b);
}

static void test_reader_reads_in_order(void **state) {
    (void)state;
    static const uint8_t in[] = {0x7F, 0x04, 0x03, 0x02, 0x01, 0x11, 0x10, 0x0F, 0x0E,
                                 0x0D, 0x0C, 0x0B, 0x0A, 0,    0,    0,    0,    0,
                                 0,    0xF0, 0x3F, 'a',  'b',  'c'};
    fc_reader r;
    fc_reader_init(&r, in, sizeof in);
    uint8_t u8;
    uint32_t u32;
    uint64_t u64;
    double d;
    char tail[3];
    assert_int_equal(fc_read_u8(&r, &u8), FC_OK);
    assert_int_equal(u8, 0x7F);
    assert_int_equal(fc_read_u32le(&r, &u32), FC_OK);
    assert_int_equal(u32, 0x01020304u);
    assert_int_equal(fc_read_u64le(&r, &u64), FC_OK);
    assert_true(u64 == 0x0A0B0C0D0E0F1011ull);
    assert_int_equal(fc_read_f64le(&r, &d), FC_OK);
    assert_true(d == 1.0);
    assert_int_equal(fc_read_bytes(&r, tail, 3), FC_OK);
    assert_memory_equal(tail, "abc", 3);
    assert_int_equal(r.pos, sizeof in);
    assert_false(r.failed);
    /* Zero bytes at the end is fine; one more is not. */
    assert_int_equal(fc_read_bytes(&r, tail, 0), FC_OK);
    assert_int_equal(fc_read_u8(&r, &u8), FC_ERR_FORMAT);
    assert_true(r.failed);
}

static void test_every_read_past_the_end_fails_and_stays_failed(void **state) {
    (void)state;
    static const uint8_t in[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    /* For every read kind and every position where it does not fit. */
    for (int kind = 0; kind < 5; kind++) {
        static const size_t width[] = {1, 4, 8, 8, 5};
        for (size_t avail = 0; avail < width[kind]; avail++) {
            fc_reader r;
            fc_reader_init(&r, in + sizeof in - avail, avail);
            uint8_t u8 = 0xAA;
            uint32_t u32 = 0xAAAAAAAAu;
            uint64_t u64 = 0xAAull;
            double d = 42.0;
            uint8_t bytes[5] = {0xAA, 0xAA, 0xAA, 0xAA, 0xAA};
            fc_status st = FC_OK;
            switch (kind) {
            case 0:
                st = fc_read_u8(&r, &u8);
                break;
            case 1:
                st = fc_read_u32le(&r, &u32);
                break;
            case 2:
                st = fc_read_u64le(&r, &u64);
                break;
            case 3:
                st = fc_read_f64le(&r, &d);
                break;
            case 4:
                st = fc_read_bytes(&r, bytes, 5);
                break;
            }
            assert_int_equal(st, FC_ERR_FORMAT);
            assert_true(r.failed);
            assert_int_equal(r.pos, 0);
            /* Outputs untouched. */
            assert_int_equal(u8, 0xAA);
            assert_int_equal(u32, 0xAAAAAAAAu);
            assert_true(u64 == 0xAAull && d == 42.0);
            assert_int_equal(bytes[0], 0xAA);
            /* Stays failed: even reads that would fit now fail. */
            assert_int_equal(fc_read_bytes(&r, bytes, 0), FC_ERR_FORMAT);
            assert_null(fc_read_span(&r, 0));
            if (avail)
                assert_int_equal(fc_read_u8(&r, &u8), FC_ERR_FORMAT);
        }
    }
    /* A huge length does not wrap the bounds check. */
    fc_reader r;
    fc_reader_init(&r, in, sizeof in);
    assert_non_null(fc_read_span(&r, 3));
    assert_null(fc_read_span(&r, SIZE_MAX));
    assert_null(fc_read_span(&r, SIZE_MAX - 2));
    assert_true(r.failed);
    assert_int_equal(r.pos, 3);
}

static void test_reader_over_empty_input(void **state) {
    (void)state;
    fc_reader r;
    fc_reader_init(&r, NULL, 0);
    uint8_t b;
    assert_int_equal(fc_read_bytes(&r, &b, 0), FC_OK);
    assert_non_null(fc_read_span(&r, 0));
    assert_false(r.failed);
    assert_int_equal(fc_read_u8(&r, &b), FC_ERR_FORMAT);
    assert_true(r.failed);
}

/* The array form writes exactly what element-by-element appends write. */
static void test_f64_array_matches_element_appends(void **state) {
    (void)state;
    const double v[5] = {0.0, -1.5, 1e308, -0.0, 3.141592653589793};
    fc_buf a = FC_BUF_INIT, b = FC_BUF_INIT;
    assert_int_equal(fc_buf_append_u8(&a, 7), FC_OK);
    assert_int_equal(fc_buf_append_u8(&b, 7), FC_OK);
    for (int i = 0; i < 5; i++)
        assert_int_equal(fc_buf_append_f64le(&a, v[i]), FC_OK);
    assert_int_equal(fc_buf_append_f64le_array(&b, v, 5), FC_OK);
    assert_int_equal(a.len, 41);
    assert_int_equal(b.len, 41);
    assert_memory_equal(a.data, b.data, 41);
    assert_int_equal(((const uint8_t *)b.data)[1 + 8 + 7], 0xbf); /* -1.5 = 0xBFF8... LE */
    fc_buf_free(&a);
    fc_buf_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_grows_and_keeps_contents),
        cmocka_unit_test(test_append_of_own_bytes_survives_growth),
        cmocka_unit_test(test_little_endian_appends),
        cmocka_unit_test(test_reserve_overflow_is_refused_and_buffer_kept),
        cmocka_unit_test(test_failed_growth_leaves_buffer_unchanged),
        cmocka_unit_test(test_consume_and_reset),
        cmocka_unit_test(test_reader_reads_in_order),
        cmocka_unit_test(test_every_read_past_the_end_fails_and_stays_failed),
        cmocka_unit_test(test_reader_over_empty_input),
        cmocka_unit_test(test_f64_array_matches_element_appends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
