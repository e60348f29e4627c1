/* alloc.c: allocation wrappers with fault injection for tests. */
#include "core/alloc.h"

#include <stdlib.h>
#include <string.h>

static long fail_countdown = -1;
static unsigned long failures;

static int should_fail(void) {
    if (fail_countdown < 0)
        return 0;
    if (fail_countdown == 0) {
        failures++;
        return 1;
    }
    fail_countdown--;
    return 0;
}

void fc_alloc_fail_after(long n) {
    fail_countdown = n;
    failures = 0;
}

unsigned long fc_alloc_failures(void) { return failures; }

void *fc_malloc(size_t size) {
    if (should_fail())
        return NULL;
    return malloc(size ? size : 1);
}

void *fc_calloc(size_t count, size_t size) {
    if (should_fail())
        return NULL;
    if (count == 0 || size == 0)
        return calloc(1, 1);
    return calloc(count, size);
}

void *fc_realloc(void *ptr, size_t size) {
    if (should_fail())
        return NULL;
    return realloc(ptr, size ? size : 1);
}

void *fc_mallocarray(size_t count, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(count, size, &total))
        return NULL;
    return fc_malloc(total);
}

char *fc_strndup(const char *s, size_t n) {
    size_t len = strnlen(s, n);
    char *copy = fc_malloc(len + 1);
    if (!copy)
        return NULL;
    memcpy(copy, s, len);
    copy[len] = '\0';
    return copy;
}

char *fc_strdup(const char *s) { return fc_strndup(s, strlen(s)); }

void fc_free(void *ptr) { free(ptr); }
