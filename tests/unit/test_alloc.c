/* test_alloc.c: the allocation wrappers and their fault injection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/alloc.h"

static int teardown_injection(void **state) {
    (void)state;
    fc_alloc_fail_after(-1);
    return 0;
}

/* Allocates through the wrapper selected by kind; returns the pointer (to be freed). */
static void *alloc_kind(int kind) {
    switch (kind) {
    case 0:
        return fc_malloc(16);
    case 1:
        return fc_calloc(4, 4);
    case 2:
        return fc_realloc(NULL, 16);
    case 3:
        return fc_mallocarray(4, 4);
    case 4:
        return fc_strdup("abc");
    default:
        return fc_strndup("abcdef", 3);
    }
}

static void test_fail_after_n_fails_exactly_the_next_allocation(void **state) {
    (void)state;
    for (int kind = 0; kind < 6; kind++) {
        for (long n = 0; n < 6; n++) {
            void *ok[6] = {0};
            fc_alloc_fail_after(n);
            assert_int_equal(fc_alloc_failures(), 0);
            for (long i = 0; i < n; i++) {
                ok[i] = alloc_kind(kind);
                assert_non_null(ok[i]); /* the first n succeed */
            }
            assert_int_equal(fc_alloc_failures(), 0);
            assert_null(alloc_kind(kind)); /* the (n+1)th fails */
            assert_int_equal(fc_alloc_failures(), 1);
            /* ... and so does every one after it, each counted. */
            assert_null(fc_malloc(1));
            assert_null(fc_calloc(1, 1));
            assert_int_equal(fc_alloc_failures(), 3);
            fc_alloc_fail_after(-1);
            void *p = fc_malloc(8);
            assert_non_null(p); /* off again */
            fc_free(p);
            for (long i = 0; i < n; i++)
                fc_free(ok[i]);
        }
    }
}

static void test_failed_realloc_keeps_the_old_block(void **state) {
    (void)state;
    char *p = fc_malloc(4);
    assert_non_null(p);
    memcpy(p, "abc", 4);
    fc_alloc_fail_after(0);
    assert_null(fc_realloc(p, 1 << 20));
    fc_alloc_fail_after(-1);
    assert_string_equal(p, "abc"); /* still valid, still ours */
    char *q = fc_realloc(p, 1 << 20);
    assert_non_null(q);
    assert_string_equal(q, "abc");
    fc_free(q);
}

static void test_mallocarray_refuses_overflow(void **state) {
    (void)state;
    assert_null(fc_mallocarray(SIZE_MAX, 2));
    assert_null(fc_mallocarray((SIZE_MAX >> 1) + 2, 2));
    assert_null(fc_mallocarray(2, (SIZE_MAX >> 1) + 1));
    /* An overflow is not an injected failure and does not consume the countdown. */
    fc_alloc_fail_after(1);
    assert_null(fc_mallocarray(SIZE_MAX / 3 + 1, 3 + 1));
    assert_int_equal(fc_alloc_failures(), 0);
    void *p = fc_mallocarray(3, 5);
    assert_non_null(p);
    fc_free(p);
    assert_null(fc_mallocarray(3, 5));
    assert_int_equal(fc_alloc_failures(), 1);
    fc_alloc_fail_after(-1);
    /* Exact products that fit are allocated and usable. */
    uint32_t *a = fc_mallocarray(1000, sizeof *a);
    assert_non_null(a);
    for (size_t i = 0; i < 1000; i++)
        a[i] = (uint32_t)i;
    assert_int_equal(a[999], 999);
    fc_free(a);
}

static void test_zero_sizes_give_freeable_pointers(void **state) {
    (void)state;
    void *a = fc_malloc(0), *b = fc_calloc(0, 8), *c = fc_calloc(8, 0), *d = fc_mallocarray(0, 8);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_non_null(d);
    void *e = fc_realloc(a, 0);
    assert_non_null(e);
    fc_free(e);
    fc_free(b);
    fc_free(c);
    fc_free(d);
    fc_free(NULL);
}

static void test_calloc_zeroes_and_strndup_bounds(void **state) {
    (void)state;
    unsigned char *z = fc_calloc(64, 2);
    assert_non_null(z);
    for (size_t i = 0; i < 128; i++)
        assert_int_equal(z[i], 0);
    fc_free(z);
    char *s = fc_strndup("abcdef", 3);
    assert_string_equal(s, "abc");
    fc_free(s);
    /* n beyond the string stops at its end. */
    s = fc_strndup("ab", 100);
    assert_string_equal(s, "ab");
    fc_free(s);
    /* Not NUL-terminated within n: reads only n bytes. */
    char raw[4] = {'w', 'x', 'y', 'z'};
    s = fc_strndup(raw, 4);
    assert_string_equal(s, "wxyz");
    fc_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_fail_after_n_fails_exactly_the_next_allocation,
                                  teardown_injection),
        cmocka_unit_test_teardown(test_failed_realloc_keeps_the_old_block, teardown_injection),
        cmocka_unit_test_teardown(test_mallocarray_refuses_overflow, teardown_injection),
        cmocka_unit_test(test_zero_sizes_give_freeable_pointers),
        cmocka_unit_test(test_calloc_zeroes_and_strndup_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
