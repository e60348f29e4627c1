/* alloc.c: allocation wrappers with fault injection for tests. */
#include "core/alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Buffers of FC_HUGE_MIN bytes or more (model-sized accumulators, staging buffers, model copies)
 * ask the kernel for transparent huge pages where it offers them only on request ("madvise"
 * mode): one fault per 2 MiB instead of one per 4 KiB. A round allocates and frees such buffers
 * each time, so without this it pays thousands of page faults per model-sized buffer. */
#define FC_HUGE_PAGE ((uintptr_t)2 << 20)
#define FC_HUGE_MIN ((size_t)4 << 20)

static void *advise_huge(void *p, size_t size) {
#ifdef MADV_HUGEPAGE
    if (p && size >= FC_HUGE_MIN) {
        uintptr_t a = ((uintptr_t)p + FC_HUGE_PAGE - 1) & ~(FC_HUGE_PAGE - 1);
        uintptr_t e = ((uintptr_t)p + size) & ~(FC_HUGE_PAGE - 1);
        if (e > a)
            (void)madvise((void *)a, e - a, MADV_HUGEPAGE); /* advice only: errors are harmless */
    }
#endif
    return p;
}

void fc_drop_pages(void *p, size_t len) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1);
    uintptr_t e = ((uintptr_t)p + len) & ~(page - 1);
    if (p && e > a)
        (void)madvise((void *)a, e - a, MADV_DONTNEED); /* advice only: the pages may stay */
}

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
    return advise_huge(malloc(size ? size : 1), size);
}

void *fc_calloc(size_t count, size_t size) {
    if (should_fail())
        return NULL;
    if (count == 0 || size == 0)
        return calloc(1, 1);
    return count > SIZE_MAX / size ? NULL : advise_huge(calloc(count, size), count * size);
}

void *fc_realloc(void *ptr, size_t size) {
    if (should_fail())
        return NULL;
    return advise_huge(realloc(ptr, size ? size : 1), size);
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
