/* alloc.h: the project's allocator entry points.
 *
 * All heap allocation in core/, proto/, aggregators/, storage/ and the SDK goes through these
 * wrappers so that tests can make the Nth allocation fail (SQLite-style fault injection) and
 * check that every failure gives a clean FC_ERR_NOMEM with no leak. They never abort.
 */
#ifndef FC_ALLOC_H
#define FC_ALLOC_H

#include <stddef.h>

void *fc_malloc(size_t size);
void *fc_calloc(size_t count, size_t size);
void *fc_realloc(void *ptr, size_t size);
/* fc_mallocarray: count*size with overflow check; NULL on overflow. */
void *fc_mallocarray(size_t count, size_t size);
char *fc_strdup(const char *s);
char *fc_strndup(const char *s, size_t n);
void fc_free(void *ptr);
/* The bytes [p, p + len) of a mapping are not needed in memory now: the whole pages inside the
 * range are dropped from the process (MADV_DONTNEED; the partial pages at the ends stay). In a
 * block from these functions they read back as zeros, and the block stays allocated (fc_free it
 * as usual); in a shared file mapping the file keeps the bytes. Advice only. */
void fc_drop_pages(void *p, size_t len);

/* Fault injection, for tests. After fc_alloc_fail_after(n), the next n allocations succeed and
 * every one after fails until fc_alloc_fail_after(-1) turns injection off. Not thread-safe:
 * tests that use it run single-threaded. fc_alloc_failures() counts injected failures. */
void fc_alloc_fail_after(long n);
unsigned long fc_alloc_failures(void);

#endif
