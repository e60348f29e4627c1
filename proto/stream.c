/* stream.c: chunk splitting, stream SHA-256 and staging reassembly (see stream.h).
 *
 * Owns the staging buffer of one incoming stream and the rules a chunk must obey. It never
 * touches sockets or frames, never allocates anything sized by a chunk, and never exposes staged
 * bytes as a model before the whole stream arrived and its hash matched.
 */
#include "proto/stream.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#include "core/alloc.h"

/* ---- SHA-256 ---- */

static fc_status openssl_error(fc_error *err, const char *what) {
    unsigned long e = ERR_get_error();
    char detail[256] = "no OpenSSL error queued";
    if (e)
        ERR_error_string_n(e, detail, sizeof detail);
    ERR_clear_error();
    return fc_error_set(err, FC_ERR_SYSTEM, "SHA-256: %s failed: %s", what, detail);
}

fc_status fc_stream_hash_init(fc_stream_hash *h, fc_error *err) {
    h->ctx = NULL;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return fc_error_set(err, FC_ERR_NOMEM, "SHA-256: out of memory for a digest context");
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        return openssl_error(err, "EVP_DigestInit_ex");
    }
    h->ctx = ctx;
    return FC_OK;
}

fc_status fc_stream_hash_update(fc_stream_hash *h, const void *data, size_t len, fc_error *err) {
    if (!h->ctx)
        return fc_error_set(err, FC_ERR_STATE, "SHA-256: update on a hash that is not started");
    if (len == 0)
        return FC_OK;
    if (EVP_DigestUpdate((EVP_MD_CTX *)h->ctx, data, len) != 1)
        return openssl_error(err, "EVP_DigestUpdate");
    return FC_OK;
}

fc_status fc_stream_hash_final(fc_stream_hash *h, uint8_t out[FC_SHA256_BYTES], fc_error *err) {
    if (!h->ctx)
        return fc_error_set(err, FC_ERR_STATE, "SHA-256: final on a hash that is not started");
    unsigned int n = 0;
    int ok = EVP_DigestFinal_ex((EVP_MD_CTX *)h->ctx, out, &n);
    fc_stream_hash_free(h);
    if (ok != 1)
        return openssl_error(err, "EVP_DigestFinal_ex");
    if (n != FC_SHA256_BYTES)
        return fc_error_set(err, FC_ERR_SYSTEM, "SHA-256: digest of %u bytes", n);
    return FC_OK;
}

void fc_stream_hash_free(fc_stream_hash *h) {
    if (h && h->ctx) {
        EVP_MD_CTX_free((EVP_MD_CTX *)h->ctx);
        h->ctx = NULL;
    }
}

fc_status fc_stream_model_sha256(const fc_model *m, uint8_t out[FC_SHA256_BYTES], fc_error *err) {
    for (size_t i = 0; i < m->count; i++)
        if (m->tensors[i].nbytes && !m->tensors[i].data)
            return fc_error_set(err, FC_ERR_INVALID, "tensor '%s' has %llu bytes but no data",
                                m->tensors[i].spec.name,
                                (unsigned long long)m->tensors[i].nbytes);
    fc_stream_hash h = {0};
    fc_status st = fc_stream_hash_init(&h, err);
    if (st != FC_OK)
        return st;
    for (size_t i = 0; i < m->count; i++) {
        st = fc_stream_hash_update(&h, m->tensors[i].data, (size_t)m->tensors[i].nbytes, err);
        if (st != FC_OK) {
            fc_stream_hash_free(&h);
            return st;
        }
    }
    return fc_stream_hash_final(&h, out, err);
}

char *fc_stream_hex(const uint8_t *bytes, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = '\0';
    return out;
}

/* ---- splitter ---- */

static uint64_t split_tensor_size(const fc_stream_splitter *sp, size_t i) {
    if (sp->model)
        return sp->model->tensors[i].nbytes;
    uint64_t n = 0;
    /* Validated by split_init: cannot fail here. */
    (void)fc_spec_nbytes(&sp->specs[i], &n);
    return n;
}

static const fc_tensor_spec *split_spec(const fc_stream_splitter *sp, size_t i) {
    return sp->model ? &sp->model->tensors[i].spec : &sp->specs[i];
}

static const char *spec_name(const fc_tensor_spec *s) {
    return s->name ? s->name : "(unnamed)";
}

static fc_status split_init(fc_stream_splitter *sp, const fc_model *m, const fc_tensor_spec *specs,
                            size_t count, size_t max_chunk, uint64_t start, fc_error *err) {
    memset(sp, 0, sizeof *sp);
    if (max_chunk == 0)
        max_chunk = FC_STREAM_MAX_CHUNK;
    if (max_chunk > FC_STREAM_MAX_CHUNK)
        return fc_error_set(err, FC_ERR_INVALID, "chunk size %zu exceeds the maximum %zu",
                            max_chunk, FC_STREAM_MAX_CHUNK);
    if ((uint64_t)count > UINT32_MAX)
        return fc_error_set(err, FC_ERR_INVALID, "%zu tensors: tensor indices are 32-bit", count);
    sp->model = m;
    sp->specs = specs;
    sp->count = count;
    sp->max_chunk = max_chunk;

    uint64_t total = 0;
    for (size_t i = 0; i < count; i++) {
        const fc_tensor_spec *s = split_spec(sp, i);
        size_t esize = fc_dtype_size(s->dtype);
        if (esize == 0)
            return fc_error_set(err, FC_ERR_DTYPE, "tensor %zu '%s': invalid dtype %d", i,
                                spec_name(s), (int)s->dtype);
        if (s->ndim > FC_MAX_DIMS)
            return fc_error_set(err, FC_ERR_INVALID, "tensor %zu '%s': %u dimensions, at most %d",
                                i, spec_name(s), s->ndim, FC_MAX_DIMS);
        uint64_t size;
        if (fc_spec_nbytes(s, &size) != FC_OK)
            return fc_error_set(err, FC_ERR_OVERFLOW, "tensor %zu '%s': size overflows 64 bits",
                                i, spec_name(s));
        if (m && m->tensors[i].nbytes != size)
            return fc_error_set(err, FC_ERR_INVALID, "tensor '%s': %llu bytes, shape needs %llu",
                                spec_name(s), (unsigned long long)m->tensors[i].nbytes,
                                (unsigned long long)size);
        if (size == 0)
            continue;
        if (m && !m->tensors[i].data)
            return fc_error_set(err, FC_ERR_INVALID, "tensor '%s' has %llu bytes but no data",
                                spec_name(s), (unsigned long long)size);
        if (esize > max_chunk)
            return fc_error_set(err, FC_ERR_INVALID,
                                "chunk size %zu is smaller than one %s element (%zu bytes) of '%s'",
                                max_chunk, fc_dtype_name(s->dtype), esize, spec_name(s));
        if (__builtin_add_overflow(total, size, &total))
            return fc_error_set(err, FC_ERR_OVERFLOW, "model size overflows 64 bits at tensor '%s'",
                                spec_name(s));
    }
    sp->total = total;
    if (start > total)
        return fc_error_set(err, FC_ERR_RANGE, "start offset %llu is past the end of the data "
                            "(%llu bytes)", (unsigned long long)start, (unsigned long long)total);

    /* Find the tensor holding byte `start` (the first non-empty tensor ending after it). */
    uint64_t tensor_start = 0;
    size_t i = 0;
    for (; i < count; i++) {
        uint64_t size = split_tensor_size(sp, i);
        if (start < tensor_start + size)
            break;
        tensor_start += size;
    }
    sp->tensor = i;
    sp->global = start;
    if (i < count) {
        sp->offset = start - tensor_start;
        sp->cur_size = split_tensor_size(sp, i);
        size_t esize = fc_dtype_size(split_spec(sp, i)->dtype);
        if (sp->offset % esize != 0)
            return fc_error_set(err, FC_ERR_RANGE,
                                "start offset %llu falls inside an element: offset %llu of '%s' "
                                "is not a multiple of %zu",
                                (unsigned long long)start, (unsigned long long)sp->offset,
                                spec_name(split_spec(sp, i)), esize);
    }
    return FC_OK;
}

fc_status fc_stream_split_model(fc_stream_splitter *sp, const fc_model *m, size_t max_chunk,
                                uint64_t start_offset, fc_error *err) {
    return split_init(sp, m, NULL, m->count, max_chunk, start_offset, err);
}

fc_status fc_stream_split_specs(fc_stream_splitter *sp, const fc_tensor_spec *specs, size_t count,
                                size_t max_chunk, uint64_t start_offset, fc_error *err) {
    return split_init(sp, NULL, specs, count, max_chunk, start_offset, err);
}

int fc_stream_split_next(fc_stream_splitter *sp, fc_chunk_desc *out) {
    while (sp->tensor < sp->count && sp->offset == sp->cur_size) {
        sp->tensor++;
        sp->offset = 0;
        sp->cur_size = sp->tensor < sp->count ? split_tensor_size(sp, sp->tensor) : 0;
    }
    if (sp->tensor >= sp->count)
        return 0;
    size_t esize = fc_dtype_size(split_spec(sp, sp->tensor)->dtype);
    size_t chunk = sp->max_chunk - sp->max_chunk % esize;
    uint64_t left = sp->cur_size - sp->offset;
    size_t len = left < chunk ? (size_t)left : chunk;
    out->tensor_index = (uint32_t)sp->tensor;
    out->offset = sp->offset;
    out->global_offset = sp->global;
    out->len = len;
    out->data = sp->model ? (const uint8_t *)sp->model->tensors[sp->tensor].data + sp->offset
                          : NULL;
    sp->offset += len;
    sp->global += len;
    return 1;
}

uint64_t fc_stream_split_total(const fc_stream_splitter *sp) {
    return sp->total;
}

uint64_t fc_stream_split_position(const fc_stream_splitter *sp) {
    return sp->global;
}

/* ---- buffer providers ---- */

static fc_status heap_acquire(void *ctx, uint64_t nbytes, void **out, fc_error *err) {
    (void)ctx;
    if (nbytes > SIZE_MAX)
        return fc_error_set(err, FC_ERR_LIMIT, "staging buffer of %llu bytes: too large",
                            (unsigned long long)nbytes);
    void *p = fc_malloc((size_t)nbytes);
    if (!p)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory for a staging buffer of %llu bytes",
                            (unsigned long long)nbytes);
    *out = p;
    return FC_OK;
}

static void heap_release(void *ctx, void *mem, uint64_t nbytes) {
    (void)ctx;
    (void)nbytes;
    fc_free(mem);
}

static const fc_stage_provider heap_provider = {"heap", heap_acquire, heap_release, NULL, NULL};

const fc_stage_provider *fc_stage_heap_provider(void) {
    return &heap_provider;
}

static fc_status spill_acquire(void *ctx, uint64_t nbytes, void **out, fc_error *err) {
    const char *dir = ctx;
    if (nbytes > SIZE_MAX || nbytes > (uint64_t)INT64_MAX)
        return fc_error_set(err, FC_ERR_LIMIT, "spill file of %llu bytes: too large",
                            (unsigned long long)nbytes);
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/fc-stage-XXXXXX", dir);
    if (n < 0 || (size_t)n >= sizeof path)
        return fc_error_set(err, FC_ERR_INVALID, "spill directory path is too long");
    int fd = mkstemp(path);
    if (fd < 0)
        return fc_error_set(err, FC_ERR_IO, "%s: cannot create a spill file: %s", path,
                            strerror(errno));
    /* Unlinked at once: the mapping keeps the file alive, and a crash leaves nothing behind. */
    (void)unlink(path);
    int rc = posix_fallocate(fd, 0, (off_t)nbytes);
    if (rc != 0) {
        close(fd);
        return fc_error_set(err, FC_ERR_IO, "%s: cannot reserve %llu bytes for a spill file: %s",
                            dir, (unsigned long long)nbytes, strerror(rc));
    }
    void *p = mmap(NULL, (size_t)nbytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int map_errno = errno;
    close(fd);
    if (p == MAP_FAILED)
        return fc_error_set(err, FC_ERR_SYSTEM, "%s: cannot map a spill file of %llu bytes: %s",
                            dir, (unsigned long long)nbytes, strerror(map_errno));
    *out = p;
    return FC_OK;
}

static void spill_release(void *ctx, void *mem, uint64_t nbytes) {
    (void)ctx;
    (void)munmap(mem, (size_t)nbytes);
}

static void spill_evict(void *ctx, void *mem, uint64_t off, uint64_t len) {
    (void)ctx;
    /* Shared file pages: the page cache keeps the bytes (dirty ones are written back), so this
     * only unmaps them from the process. */
    fc_drop_pages((uint8_t *)mem + off, (size_t)len);
}

void fc_stage_spill_provider(fc_stage_provider *p, const char *dir) {
    p->name = "spill";
    p->acquire = spill_acquire;
    p->release = spill_release;
    p->evict = spill_evict;
    p->ctx = (void *)(uintptr_t)dir; /* only ever read back as const char * */
}

/* ---- staging ---- */

typedef enum stage_state { STAGE_OPEN, STAGE_COMPLETE, STAGE_FAILED } stage_state;

struct fc_stage {
    fc_tensor_spec *specs; /* count entries; names owned */
    uint64_t *starts;      /* count + 1 entries: global offset of each tensor, then the total */
    size_t count;
    uint64_t total;
    uint64_t received;     /* contiguous prefix received; also the next expected byte */
    size_t cur;            /* tensor holding byte `received` (count once all arrived) */
    size_t max_chunk;
    uint8_t *buf;          /* total bytes from provider, NULL when total is 0 */
    fc_stage_provider provider;
    uint64_t evicted;      /* provider.evict: bytes [0, evicted) dropped while being written */
    fc_stream_hash hash;   /* over bytes [0, received), or nothing until finish (hash_at_finish) */
    int hash_at_finish;
    stage_state state;
    const char *label;
};

/* Accepts well-formed UTF-8 without control characters (they would garble logs and messages). */
static int name_is_clean_utf8(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x20 || c == 0x7f)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned cp, min;
        if ((c & 0xe0) == 0xc0) {
            need = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            need = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            need = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (len - i <= need)
            return 0;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += need + 1;
    }
    return 1;
}

static int cmp_name_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Names are unique: sort a scratch array of pointers (O(n log n), freed before returning)
 * rather than compare all pairs, since max_tensors may be large. */
static fc_status check_unique_names(const fc_tensor_spec *specs, size_t count, fc_error *err) {
    if (count < 2)
        return FC_OK;
    const char **names = fc_mallocarray(count, sizeof *names);
    if (!names)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory checking %zu tensor names", count);
    for (size_t i = 0; i < count; i++)
        names[i] = specs[i].name;
    qsort(names, count, sizeof *names, cmp_name_ptr);
    fc_status st = FC_OK;
    for (size_t i = 1; i < count; i++)
        if (strcmp(names[i - 1], names[i]) == 0) {
            st = fc_error_set(err, FC_ERR_EXISTS, "tensor name '%s' is announced twice", names[i]);
            break;
        }
    fc_free(names);
    return st;
}

static fc_status check_spec(const fc_tensor_spec *s, size_t i, uint64_t *size, fc_error *err) {
    if (!s->name)
        return fc_error_set(err, FC_ERR_INVALID, "tensor %zu has no name", i);
    size_t len = strnlen(s->name, FC_MAX_TENSOR_NAME + 1);
    if (len == 0)
        return fc_error_set(err, FC_ERR_INVALID, "tensor %zu has an empty name", i);
    if (len > FC_MAX_TENSOR_NAME)
        return fc_error_set(err, FC_ERR_INVALID, "tensor %zu: name longer than %d bytes", i,
                            FC_MAX_TENSOR_NAME);
    if (!name_is_clean_utf8((const unsigned char *)s->name, len))
        return fc_error_set(err, FC_ERR_INVALID,
                            "tensor %zu: name is not UTF-8 or contains a control character", i);
    if (fc_dtype_size(s->dtype) == 0)
        return fc_error_set(err, FC_ERR_DTYPE, "tensor '%s': unknown dtype %d", s->name,
                            (int)s->dtype);
    if (s->ndim > FC_MAX_DIMS)
        return fc_error_set(err, FC_ERR_INVALID, "tensor '%s': %u dimensions, at most %d allowed",
                            s->name, s->ndim, FC_MAX_DIMS);
    if (fc_spec_nbytes(s, size) != FC_OK) {
        char shape[256];
        return fc_error_set(err, FC_ERR_OVERFLOW, "tensor '%s': shape %s %s overflows 64 bits",
                            s->name, fc_shape_format(s->ndim, s->shape, shape, sizeof shape),
                            fc_dtype_name(s->dtype));
    }
    return FC_OK;
}

void fc_stage_free(fc_stage *s) {
    if (!s)
        return;
    if (s->buf)
        s->provider.release(s->provider.ctx, s->buf, s->total);
    if (s->specs)
        for (size_t i = 0; i < s->count; i++)
            fc_free(s->specs[i].name);
    fc_free(s->specs);
    fc_free(s->starts);
    fc_stream_hash_free(&s->hash);
    fc_free(s);
}

/* Moves s->cur to the tensor holding byte s->received, skipping empty tensors. */
static void stage_advance(fc_stage *s) {
    while (s->cur < s->count && s->received >= s->starts[s->cur + 1])
        s->cur++;
}

fc_status fc_stage_create(const fc_tensor_spec *specs, size_t count, uint64_t announced_total,
                          const fc_stage_config *cfg, fc_stage **out, fc_error *err) {
    *out = NULL;
    fc_stage_config defaults = {0};
    if (!cfg)
        cfg = &defaults;
    uint64_t max_tensors = cfg->max_tensors ? cfg->max_tensors : FC_STAGE_DEFAULT_MAX_TENSORS;
    size_t max_chunk = cfg->max_chunk ? cfg->max_chunk : FC_STREAM_MAX_CHUNK;
    const fc_stage_provider *prov = cfg->provider ? cfg->provider : fc_stage_heap_provider();
    const char *label = cfg->label ? cfg->label : "update";

    if (max_chunk > FC_STREAM_MAX_CHUNK)
        return fc_error_set(err, FC_ERR_INVALID, "max_chunk %zu exceeds the protocol maximum %zu",
                            max_chunk, FC_STREAM_MAX_CHUNK);
    if (!prov->acquire || !prov->release)
        return fc_error_set(err, FC_ERR_INVALID, "staging buffer provider is incomplete");
    if (count == 0)
        return fc_error_set(err, FC_ERR_INVALID, "the %s announces no tensors", label);
    if ((uint64_t)count > max_tensors)
        return fc_error_set(err, FC_ERR_LIMIT, "the %s announces %zu tensors, at most %llu allowed",
                            label, count, (unsigned long long)max_tensors);

    uint64_t total = 0;
    for (size_t i = 0; i < count; i++) {
        uint64_t size;
        fc_status st = check_spec(&specs[i], i, &size, err);
        if (st != FC_OK)
            return st;
        if (__builtin_add_overflow(total, size, &total))
            return fc_error_set(err, FC_ERR_OVERFLOW,
                                "the %s's total size overflows 64 bits at tensor '%s'", label,
                                specs[i].name);
    }
    fc_status st = check_unique_names(specs, count, err);
    if (st != FC_OK)
        return st;
    if (total > cfg->max_total_bytes)
        return fc_error_set(err, FC_ERR_LIMIT, "the %s's tensors hold %llu bytes, at most %llu "
                            "allowed", label, (unsigned long long)total,
                            (unsigned long long)cfg->max_total_bytes);
    if (total > SIZE_MAX)
        return fc_error_set(err, FC_ERR_LIMIT, "the %s's %llu bytes do not fit in memory", label,
                            (unsigned long long)total);
    if (announced_total != total)
        return fc_error_set(err, FC_ERR_PROTOCOL, "the %s announces total_bytes %llu but its "
                            "tensors hold %llu bytes", label,
                            (unsigned long long)announced_total, (unsigned long long)total);

    fc_stage *s = fc_calloc(1, sizeof *s);
    if (!s)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory for a staging area");
    s->provider = *prov;
    s->label = label;
    s->hash_at_finish = cfg->hash_at_finish != 0;
    s->max_chunk = max_chunk;
    s->total = total;
    s->specs = fc_calloc(count, sizeof *s->specs);
    s->starts = fc_mallocarray(count + 1, sizeof *s->starts);
    if (!s->specs || !s->starts) {
        st = fc_error_set(err, FC_ERR_NOMEM, "out of memory for %zu tensor specs", count);
        goto fail;
    }
    s->count = count; /* from here fc_stage_free frees names that are set */
    uint64_t at = 0;
    for (size_t i = 0; i < count; i++) {
        s->specs[i] = specs[i];
        s->specs[i].name = fc_strdup(specs[i].name);
        if (!s->specs[i].name) {
            st = fc_error_set(err, FC_ERR_NOMEM, "out of memory for %zu tensor specs", count);
            goto fail;
        }
        s->starts[i] = at;
        uint64_t size = 0;
        (void)fc_spec_nbytes(&specs[i], &size); /* checked above */
        at += size;
    }
    s->starts[count] = at;
    st = fc_stream_hash_init(&s->hash, err);
    if (st != FC_OK)
        goto fail;
    if (total > 0) {
        void *mem = NULL;
        st = s->provider.acquire(s->provider.ctx, total, &mem, err);
        if (st != FC_OK) {
            fc_error_prefix(err, "%s staging", s->provider.name ? s->provider.name : "custom");
            goto fail;
        }
        s->buf = mem;
    }
    stage_advance(s);
    *out = s;
    return FC_OK;
fail:
    fc_stage_free(s);
    return st;
}

/* Describes the next expected byte for messages: "8192" within the same tensor, otherwise
 * "offset 0 of 'fc2.bias'". */
static const char *describe_next(const fc_stage *s, size_t tensor, char *buf, size_t size) {
    if (s->cur >= s->count)
        snprintf(buf, size, "the end");
    else if (s->cur == tensor)
        snprintf(buf, size, "%llu", (unsigned long long)(s->received - s->starts[s->cur]));
    else
        snprintf(buf, size, "offset %llu of '%s'",
                 (unsigned long long)(s->received - s->starts[s->cur]), s->specs[s->cur].name);
    return buf;
}

fc_status fc_stage_chunk_dst(fc_stage *s, uint32_t tensor_index, uint64_t offset, size_t len,
                             uint8_t **dst, fc_error *err) {
    if (s->state != STAGE_OPEN)
        return fc_error_set(err, FC_ERR_STATE, "chunk for tensor %u after the %s %s",
                            (unsigned)tensor_index, s->label,
                            s->state == STAGE_COMPLETE ? "was complete" : "failed");
    if (tensor_index >= s->count)
        return fc_error_set(err, FC_ERR_CHUNK, "chunk for tensor %u but the %s announced %zu "
                            "tensors", (unsigned)tensor_index, s->label, s->count);
    const fc_tensor_spec *spec = &s->specs[tensor_index];
    const char *name = spec->name;
    if (len == 0)
        return fc_error_set(err, FC_ERR_CHUNK, "zero-length chunk at offset %llu of '%s'",
                            (unsigned long long)offset, name);
    if (len > s->max_chunk)
        return fc_error_set(err, FC_ERR_LIMIT, "chunk of %zu bytes at offset %llu of '%s' exceeds "
                            "the maximum chunk size %zu", len, (unsigned long long)offset, name,
                            s->max_chunk);
    uint64_t size = s->starts[tensor_index + 1] - s->starts[tensor_index];
    uint64_t end;
    if (__builtin_add_overflow(offset, (uint64_t)len, &end))
        return fc_error_set(err, FC_ERR_CHUNK, "chunk at offset %llu of '%s': offset + length %zu "
                            "overflows 64 bits", (unsigned long long)offset, name, len);
    if (end > size)
        return fc_error_set(err, FC_ERR_CHUNK, "chunk at offset %llu of '%s' with %zu bytes runs "
                            "past the tensor's end (%llu bytes)", (unsigned long long)offset,
                            name, len, (unsigned long long)size);
    size_t esize = fc_dtype_size(spec->dtype);
    if (offset % esize != 0 || len % esize != 0)
        return fc_error_set(err, FC_ERR_CHUNK, "chunk at offset %llu of '%s' with %zu bytes is not "
                            "aligned to its %zu-byte %s elements", (unsigned long long)offset,
                            name, len, esize, fc_dtype_name(spec->dtype));
    char next[1100];
    uint64_t global = s->starts[tensor_index] + offset;
    if (s->received == s->total)
        return fc_error_set(err, FC_ERR_CHUNK, "chunk at offset %llu of '%s' after all %llu bytes "
                            "of the %s were received", (unsigned long long)offset, name,
                            (unsigned long long)s->total, s->label);
    if (global < s->received)
        return fc_error_set(err, FC_ERR_CHUNK, "chunk at offset %llu of '%s' overlaps bytes "
                            "already received (next expected %s)", (unsigned long long)offset,
                            name, describe_next(s, tensor_index, next, sizeof next));
    if (global > s->received)
        return fc_error_set(err, FC_ERR_CHUNK, "chunk at offset %llu of '%s' leaves a gap: next "
                            "expected %s (chunks must arrive in order)", (unsigned long long)offset,
                            name, describe_next(s, tensor_index, next, sizeof next));

    *dst = s->buf + global;
    return FC_OK;
}

fc_status fc_stage_chunk_done(fc_stage *s, size_t len, fc_error *err) {
    if (s->state != STAGE_OPEN || len == 0 || len > s->total - s->received)
        return fc_error_set(err, FC_ERR_STATE, "chunk of %zu bytes recorded out of turn", len);
    fc_status st =
        s->hash_at_finish ? FC_OK : fc_stream_hash_update(&s->hash, s->buf + s->received, len, err);
    if (st != FC_OK) {
        s->state = STAGE_FAILED;
        return st;
    }
    s->received += len;
    if (s->provider.evict && s->received - s->evicted >= FC_STAGE_EVICT_WINDOW) {
        uint64_t upto = s->received - s->received % FC_STAGE_EVICT_WINDOW;
        s->provider.evict(s->provider.ctx, s->buf, s->evicted, upto - s->evicted);
        s->evicted = upto;
    }
    stage_advance(s);
    return FC_OK;
}

fc_status fc_stage_add_chunk(fc_stage *s, uint32_t tensor_index, uint64_t offset, const void *data,
                             size_t len, fc_error *err) {
    uint8_t *dst = NULL;
    fc_status st = fc_stage_chunk_dst(s, tensor_index, offset, len, &dst, err);
    if (st != FC_OK)
        return st;
    memcpy(dst, data, len);
    return fc_stage_chunk_done(s, len, err);
}

/* Hashes the whole buffer, a window at a time so that an evicting provider can drop each one. */
static fc_status hash_all(fc_stage *s, fc_error *err) {
    for (uint64_t off = 0; off < s->total; off += FC_STAGE_EVICT_WINDOW) {
        uint64_t n =
            s->total - off < FC_STAGE_EVICT_WINDOW ? s->total - off : FC_STAGE_EVICT_WINDOW;
        fc_status st = fc_stream_hash_update(&s->hash, s->buf + off, (size_t)n, err);
        if (st != FC_OK)
            return st;
        if (s->provider.evict)
            s->provider.evict(s->provider.ctx, s->buf, off, n);
    }
    return FC_OK;
}

void fc_stage_done_with(const fc_stage *s, const void *p, size_t len) {
    const uint8_t *b = p;
    if (!s->provider.evict || !s->buf || b < s->buf || b > s->buf + s->total ||
        len > (size_t)(s->buf + s->total - b))
        return;
    s->provider.evict(s->provider.ctx, s->buf, (uint64_t)(b - s->buf), len);
}

fc_status fc_stage_check_end(const fc_stage *s, size_t sha256_len, fc_error *err) {
    if (s->state != STAGE_OPEN)
        return fc_error_set(err, FC_ERR_STATE, "end of the %s after it %s", s->label,
                            s->state == STAGE_COMPLETE ? "was complete" : "failed");
    if (sha256_len != FC_SHA256_BYTES)
        return fc_error_set(err, FC_ERR_PROTOCOL, "end of the %s carries a %zu-byte SHA-256, "
                            "expected %d", s->label, sha256_len, FC_SHA256_BYTES);
    if (s->received < s->total) {
        size_t i = s->cur;
        uint64_t size = s->starts[i + 1] - s->starts[i];
        uint64_t missing = s->starts[i + 1] - s->received;
        uint64_t later_bytes = s->total - s->starts[i + 1];
        size_t later_tensors = 0;
        for (size_t k = i + 1; k < s->count; k++)
            if (s->starts[k + 1] > s->starts[k])
                later_tensors++;
        if (later_tensors == 0)
            return fc_error_set(err, FC_ERR_CHUNK, "%s ended with %llu of %llu bytes of '%s' "
                                "missing", s->label, (unsigned long long)missing,
                                (unsigned long long)size, s->specs[i].name);
        return fc_error_set(err, FC_ERR_CHUNK, "%s ended with %llu of %llu bytes of '%s' missing, "
                            "and all %llu bytes of %zu later tensor%s", s->label,
                            (unsigned long long)missing, (unsigned long long)size,
                            s->specs[i].name, (unsigned long long)later_bytes, later_tensors,
                            later_tensors == 1 ? "" : "s");
    }
    return FC_OK;
}

fc_status fc_stage_finish(fc_stage *s, const uint8_t *sha256, size_t sha256_len, fc_error *err) {
    fc_status st = fc_stage_check_end(s, sha256 ? sha256_len : 0, err);
    if (st != FC_OK)
        return st;
    if (s->hash_at_finish && s->total > 0 && (st = hash_all(s, err)) != FC_OK) {
        s->state = STAGE_FAILED;
        return st;
    }
    uint8_t computed[FC_SHA256_BYTES];
    st = fc_stream_hash_final(&s->hash, computed, err);
    if (st != FC_OK) {
        s->state = STAGE_FAILED;
        return st;
    }
    if (memcmp(computed, sha256, FC_SHA256_BYTES) != 0) {
        char want[2 * FC_SHA256_BYTES + 1], got[2 * FC_SHA256_BYTES + 1];
        s->state = STAGE_FAILED;
        return fc_error_set(err, FC_ERR_HASH, "SHA-256 mismatch: announced %s computed %s",
                            fc_stream_hex(sha256, FC_SHA256_BYTES, want),
                            fc_stream_hex(computed, FC_SHA256_BYTES, got));
    }
    s->state = STAGE_COMPLETE;
    return FC_OK;
}

uint64_t fc_stage_received(const fc_stage *s) {
    return s->received;
}

uint64_t fc_stage_total(const fc_stage *s) {
    return s->total;
}

int fc_stage_complete(const fc_stage *s) {
    return s->state == STAGE_COMPLETE;
}

fc_status fc_stage_check_resume(const fc_stage *s, uint64_t resume_offset, fc_error *err) {
    if (s->state != STAGE_OPEN)
        return fc_error_set(err, FC_ERR_STATE, "cannot resume the %s: it %s", s->label,
                            s->state == STAGE_COMPLETE ? "is already complete" : "failed");
    if (resume_offset != s->received)
        return fc_error_set(err, FC_ERR_RANGE, "resume at byte %llu, but %llu bytes of the %s were "
                            "received and acknowledged", (unsigned long long)resume_offset,
                            (unsigned long long)s->received, s->label);
    return FC_OK;
}

size_t fc_stage_tensor_count(const fc_stage *s) {
    return s->count;
}

const fc_tensor_spec *fc_stage_spec(const fc_stage *s, size_t i) {
    return i < s->count ? &s->specs[i] : NULL;
}

fc_status fc_stage_view_model(const fc_stage *s, fc_model *out, fc_error *err) {
    if (s->state != STAGE_COMPLETE)
        return fc_error_set(err, FC_ERR_STATE, "the %s is not complete: %llu of %llu bytes "
                            "verified", s->label, (unsigned long long)s->received,
                            (unsigned long long)s->total);
    if (out->count != 0 || out->tensors)
        return fc_error_set(err, FC_ERR_INVALID, "view_model needs an empty model");
    /* Built directly rather than through fc_model_add_borrowed, whose duplicate-name search
     * would make this quadratic; the specs were validated (unique names) at create. */
    fc_tensor *t = fc_calloc(s->count, sizeof *t);
    if (!t)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory for a view of %zu tensors",
                            s->count);
    for (size_t i = 0; i < s->count; i++) {
        t[i].spec = s->specs[i];
        t[i].spec.name = fc_strdup(s->specs[i].name);
        if (!t[i].spec.name) {
            for (size_t k = 0; k < i; k++)
                fc_free(t[k].spec.name);
            fc_free(t);
            return fc_error_set(err, FC_ERR_NOMEM, "out of memory for a view of %zu tensors",
                                s->count);
        }
        t[i].nbytes = s->starts[i + 1] - s->starts[i];
        t[i].data = t[i].nbytes ? s->buf + s->starts[i] : NULL;
        t[i].owns_data = 0;
    }
    out->tensors = t;
    out->count = s->count;
    out->cap = s->count;
    return FC_OK;
}
