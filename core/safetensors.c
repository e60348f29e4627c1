/* safetensors.c: strict safetensors reader (mmap + jansson) and streaming, crash-safe writer.
 *
 * The reader owns validation of foreign bytes: nothing from a file is used (as a length, an
 * offset or an allocation size) before it is checked against the file and the limits. The
 * writer never holds more than the header and a 64 KiB buffer, and never leaves a partial file
 * at the destination path. This file never interprets tensor values; that is core/tensor.c.
 */
#include "core/safetensors.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"

/* Names and dtype strings from a file can be long; cap what goes into a 512-byte message so
 * the numbers that disagree still fit. */
#define NAME_FMT "'%.160s'"
#define FILE_FMT "%.200s"

#define WRITER_BUF_SIZE ((size_t)64 * 1024)

typedef unsigned long long ull;

struct fc_st_file {
    fc_model model;
    char **meta_keys;
    char **meta_values;
    size_t meta_count;
    uint64_t data_start;
    void *map; /* NULL when parsed from a caller's buffer */
    size_t map_len;
};

/* One tensor entry of the header, validated but not yet placed. name points into the JSON. */
typedef struct st_entry {
    const char *name;
    fc_dtype dtype;
    uint32_t ndim;
    uint64_t shape[FC_MAX_DIMS];
    uint64_t begin, end;
} st_entry;

static const char *json_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a real number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "an unknown JSON value";
}

/* Only the safetensors spellings; fc_dtype_parse also takes lower case, which the format does
 * not. */
static fc_dtype st_dtype_parse(const char *s) {
    static const fc_dtype all[] = {FC_DTYPE_F32, FC_DTYPE_F16, FC_DTYPE_BF16, FC_DTYPE_F64};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(s, fc_dtype_st_name(all[i])) == 0)
            return all[i];
    return FC_DTYPE_INVALID;
}

/* ---- reading ---- */

static fc_status parse_metadata(const char *file, json_t *v, fc_st_file *f, fc_error *err) {
    if (!json_is_object(v))
        return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": __metadata__ is %s, expected an object "
                            "of strings", file, json_type_name(v));
    size_t n = json_object_size(v);
    f->meta_keys = fc_calloc(n, sizeof *f->meta_keys);
    f->meta_values = fc_calloc(n, sizeof *f->meta_values);
    if (!f->meta_keys || !f->meta_values)
        return fc_error_set(err, FC_ERR_NOMEM, FILE_FMT ": out of memory for %zu metadata entries",
                            file, n);
    const char *key;
    json_t *value;
    json_object_foreach(v, key, value) {
        if (!json_is_string(value))
            return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": __metadata__ key " NAME_FMT
                                " is %s, expected a string", file, key, json_type_name(value));
        char *k = fc_strdup(key);
        char *s = k ? fc_strdup(json_string_value(value)) : NULL;
        if (!s) {
            fc_free(k);
            return fc_error_set(err, FC_ERR_NOMEM, FILE_FMT ": out of memory for metadata", file);
        }
        f->meta_keys[f->meta_count] = k;
        f->meta_values[f->meta_count] = s;
        f->meta_count++;
    }
    return FC_OK;
}

/* Reads a non-negative JSON integer. */
static int get_uint(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return 0;
    *out = (uint64_t)json_integer_value(v);
    return 1;
}

static fc_status parse_entry(const char *file, const char *name, json_t *v, st_entry *e,
                             fc_error *err) {
    size_t name_len = strlen(name);
    if (name_len == 0)
        return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": a tensor has an empty name", file);
    if (name_len > FC_MAX_TENSOR_NAME)
        return fc_error_set(err, FC_ERR_LIMIT, FILE_FMT ": tensor name " NAME_FMT "... is %zu "
                            "bytes, at most %d allowed", file, name, name_len, FC_MAX_TENSOR_NAME);
    if (!json_is_object(v))
        return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": tensor " NAME_FMT " is %s, expected "
                            "an object", file, name, json_type_name(v));
    const char *key;
    json_t *field;
    json_object_foreach(v, key, field) {
        if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 &&
            strcmp(key, "data_offsets") != 0)
            return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": tensor " NAME_FMT " has unknown "
                                "field '%.64s' (allowed: dtype, shape, data_offsets)", file, name,
                                key);
    }
    static const char *const required[] = {"dtype", "shape", "data_offsets"};
    for (size_t i = 0; i < 3; i++)
        if (!json_object_get(v, required[i]))
            return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": tensor " NAME_FMT " has no '%s'",
                                file, name, required[i]);

    memset(e, 0, sizeof *e);
    e->name = name;

    json_t *dtype = json_object_get(v, "dtype");
    if (!json_is_string(dtype))
        return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": tensor " NAME_FMT " dtype is %s, "
                            "expected a string", file, name, json_type_name(dtype));
    e->dtype = st_dtype_parse(json_string_value(dtype));
    if (e->dtype == FC_DTYPE_INVALID)
        return fc_error_set(err, FC_ERR_DTYPE, FILE_FMT ": tensor " NAME_FMT " has dtype "
                            "'%.32s'; supported are F32, F16, BF16 and F64", file, name,
                            json_string_value(dtype));

    json_t *shape = json_object_get(v, "shape");
    if (!json_is_array(shape))
        return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": tensor " NAME_FMT " shape is %s, "
                            "expected an array", file, name, json_type_name(shape));
    size_t ndim = json_array_size(shape);
    if (ndim > FC_MAX_DIMS)
        return fc_error_set(err, FC_ERR_LIMIT, FILE_FMT ": tensor " NAME_FMT " has %zu "
                            "dimensions, at most %d supported", file, name, ndim, FC_MAX_DIMS);
    e->ndim = (uint32_t)ndim;
    for (size_t i = 0; i < ndim; i++) {
        json_t *d = json_array_get(shape, i);
        if (!get_uint(d, &e->shape[i])) {
            if (json_is_integer(d))
                return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": tensor " NAME_FMT
                                    " shape[%zu] is %lld, expected a non-negative integer", file,
                                    name, i, (long long)json_integer_value(d));
            return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": tensor " NAME_FMT " shape[%zu] "
                                "is %s, expected a non-negative integer", file, name, i,
                                json_type_name(d));
        }
    }

    json_t *offs = json_object_get(v, "data_offsets");
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        !get_uint(json_array_get(offs, 0), &e->begin) ||
        !get_uint(json_array_get(offs, 1), &e->end))
        return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": tensor " NAME_FMT " data_offsets "
                            "must be [begin, end], two non-negative integers", file, name);
    if (e->end < e->begin)
        return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": tensor " NAME_FMT " data_offsets "
                            "[%llu, %llu] end before begin", file, name, (ull)e->begin,
                            (ull)e->end);

    fc_tensor_spec spec = {.name = NULL, .dtype = e->dtype, .ndim = e->ndim};
    memcpy(spec.shape, e->shape, sizeof spec.shape);
    uint64_t nbytes;
    char sh[256];
    if (fc_spec_nbytes(&spec, &nbytes) != FC_OK)
        return fc_error_set(err, FC_ERR_OVERFLOW, FILE_FMT ": tensor " NAME_FMT " shape %s of %s "
                            "has more bytes than fit in 64 bits", file, name,
                            fc_shape_format(e->ndim, e->shape, sh, sizeof sh),
                            fc_dtype_st_name(e->dtype));
    if (nbytes != e->end - e->begin)
        return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": tensor " NAME_FMT " data_offsets "
                            "[%llu, %llu] hold %llu bytes but shape %s of %s needs %llu", file,
                            name, (ull)e->begin, (ull)e->end, (ull)(e->end - e->begin),
                            fc_shape_format(e->ndim, e->shape, sh, sizeof sh),
                            fc_dtype_st_name(e->dtype), (ull)nbytes);
    return FC_OK;
}

static int entry_cmp(const void *pa, const void *pb) {
    const st_entry *a = pa, *b = pb;
    if (a->begin != b->begin)
        return a->begin < b->begin ? -1 : 1;
    if (a->end != b->end)
        return a->end < b->end ? -1 : 1;
    return strcmp(a->name, b->name);
}

/* Entries sorted by offset must tile [0, data_len) exactly. */
static fc_status check_tiling(const char *file, const st_entry *e, size_t n, uint64_t data_len,
                              fc_error *err) {
    uint64_t expected = 0;
    for (size_t i = 0; i < n; i++) {
        if (e[i].begin < expected)
            return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": tensor " NAME_FMT " data_offsets "
                                "[%llu, %llu] overlap tensor " NAME_FMT " at [%llu, %llu]", file,
                                e[i].name, (ull)e[i].begin, (ull)e[i].end, e[i - 1].name,
                                (ull)e[i - 1].begin, (ull)e[i - 1].end);
        if (e[i].begin > expected) {
            if (i == 0)
                return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": gap in the data section: the "
                                    "first tensor " NAME_FMT " begins at %llu, not 0", file,
                                    e[i].name, (ull)e[i].begin);
            return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": gap in the data section: tensor "
                                NAME_FMT " begins at %llu but tensor " NAME_FMT " ends at %llu",
                                file, e[i].name, (ull)e[i].begin, e[i - 1].name, (ull)expected);
        }
        if (e[i].end > data_len)
            return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": tensor " NAME_FMT " data_offsets "
                                "[%llu, %llu] run past the data section of %llu bytes", file,
                                e[i].name, (ull)e[i].begin, (ull)e[i].end, (ull)data_len);
        expected = e[i].end;
    }
    if (expected != data_len)
        return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": %llu trailing bytes: the data section "
                            "is %llu bytes but the tensors cover %llu", file,
                            (ull)(data_len - expected), (ull)data_len, (ull)expected);
    return FC_OK;
}

/* Builds the model directly instead of through fc_model_add_borrowed: its duplicate check is a
 * linear scan per tensor, and a 100 MB header can name about a million tensors, which would make
 * loading quadratic in a number the file controls. JSON_REJECT_DUPLICATES has already proved the
 * names distinct, and parse_entry has checked everything else fc_model_add checks. */
static fc_status build_model(const char *file, const st_entry *e, size_t n, uint8_t *data,
                             fc_model *m, fc_error *err) {
    m->tensors = fc_mallocarray(n ? n : 1, sizeof *m->tensors);
    if (!m->tensors)
        return fc_error_set(err, FC_ERR_NOMEM, FILE_FMT ": out of memory for %zu tensors", file,
                            n);
    m->cap = n;
    for (size_t i = 0; i < n; i++) {
        fc_tensor *t = &m->tensors[i];
        memset(t, 0, sizeof *t);
        t->spec.name = fc_strdup(e[i].name);
        if (!t->spec.name)
            return fc_error_set(err, FC_ERR_NOMEM, FILE_FMT ": out of memory for tensor names",
                                file);
        t->spec.dtype = e[i].dtype;
        t->spec.ndim = e[i].ndim;
        memcpy(t->spec.shape, e[i].shape, sizeof t->spec.shape);
        t->data = data + e[i].begin;
        t->nbytes = e[i].end - e[i].begin;
        t->owns_data = 0;
        m->count++;
    }
    return FC_OK;
}

static void file_free(fc_st_file *f) {
    fc_model_free(&f->model);
    for (size_t i = 0; i < f->meta_count; i++) {
        fc_free(f->meta_keys[i]);
        fc_free(f->meta_values[i]);
    }
    fc_free(f->meta_keys);
    fc_free(f->meta_values);
    if (f->map)
        munmap(f->map, f->map_len);
    fc_free(f);
}

fc_status fc_st_parse(const void *buf, size_t len, const char *name, fc_st_file **out,
                      fc_error *err) {
    *out = NULL;
    if (!name)
        name = "<memory>";
    if (!buf && len)
        return fc_error_set(err, FC_ERR_INVALID, FILE_FMT ": NULL buffer", name);
    if (len < 8)
        return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": file is %zu bytes, shorter than the "
                            "8-byte header length", name, len);
    const uint8_t *bytes = buf;
    uint64_t hlen = fc_load_u64le(bytes);
    if (hlen > FC_ST_MAX_HEADER)
        return fc_error_set(err, FC_ERR_LIMIT, FILE_FMT ": header length %llu exceeds the limit "
                            "of %llu bytes", name, (ull)hlen, (ull)FC_ST_MAX_HEADER);
    if (hlen > len - 8)
        return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": header length %llu but only %zu "
                            "bytes follow the length field", name, (ull)hlen, len - 8);

    /* serde_json tolerates leading whitespace but the reference reader refuses it; so do we. */
    if (hlen == 0 || bytes[8] != '{')
        return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": header does not start with '{'",
                            name);

    fc_status st;
    st_entry *entries = NULL;
    size_t n = 0;
    fc_st_file *f = NULL;
    json_error_t jerr;
    json_t *root = json_loadb((const char *)bytes + 8, (size_t)hlen, JSON_REJECT_DUPLICATES,
                              &jerr);
    if (!root) {
        st = fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": header is not valid JSON: %s (line %d, "
                          "column %d)", name, jerr.text, jerr.line, jerr.column);
        goto fail;
    }
    if (!json_is_object(root)) {
        st = fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": header is %s, expected an object",
                          name, json_type_name(root));
        goto fail;
    }
    f = fc_calloc(1, sizeof *f);
    entries = fc_mallocarray(json_object_size(root) ? json_object_size(root) : 1,
                             sizeof *entries);
    if (!f || !entries) {
        st = fc_error_set(err, FC_ERR_NOMEM, FILE_FMT ": out of memory", name);
        goto fail;
    }
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (strcmp(key, "__metadata__") == 0)
            st = parse_metadata(name, value, f, err);
        else
            st = parse_entry(name, key, value, &entries[n++], err);
        if (st != FC_OK)
            goto fail;
    }
    qsort(entries, n, sizeof *entries, entry_cmp);
    uint64_t data_start = 8 + hlen;
    uint64_t data_len = (uint64_t)len - data_start;
    if ((st = check_tiling(name, entries, n, data_len, err)) != FC_OK)
        goto fail;
    /* Borrowed tensors are writable in the fc_tensor type; this module documents them as
     * read-only, and a mapped file is mapped PROT_READ. */
    uint8_t *data = (uint8_t *)(uintptr_t)(bytes + data_start);
    if ((st = build_model(name, entries, n, data, &f->model, err)) != FC_OK)
        goto fail;
    f->data_start = data_start;
    fc_free(entries);
    json_decref(root);
    *out = f;
    return FC_OK;
fail:
    if (f)
        file_free(f);
    fc_free(entries);
    json_decref(root);
    return st;
}

fc_status fc_st_open(const char *path, fc_st_file **out, fc_error *err) {
    *out = NULL;
    /* O_NONBLOCK so that a FIFO given by mistake is refused below instead of blocking here; it
     * changes nothing for a regular file. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return fc_error_set(err, FC_ERR_IO, FILE_FMT ": cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return fc_error_set(err, FC_ERR_IO, FILE_FMT ": cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return fc_error_set(err, FC_ERR_IO, FILE_FMT ": not a regular file", path);
    }
    if (sb.st_size < 8) { /* mmap cannot map an empty file; the message matches fc_st_parse's */
        close(fd);
        return fc_error_set(err, FC_ERR_FORMAT, FILE_FMT ": file is %lld bytes, shorter than the "
                            "8-byte header length", path, (long long)sb.st_size);
    }
#if SIZE_MAX < UINT64_MAX
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return fc_error_set(err, FC_ERR_LIMIT, FILE_FMT ": file of %lld bytes does not fit in "
                            "the address space", path, (long long)sb.st_size);
    }
#endif
    size_t len = (size_t)sb.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd); /* the mapping keeps the file referenced */
    if (map == MAP_FAILED)
        return fc_error_set(err, FC_ERR_IO, FILE_FMT ": cannot map %zu bytes: %s", path, len,
                            strerror(map_errno));
    fc_st_file *f;
    fc_status st = fc_st_parse(map, len, path, &f, err);
    if (st != FC_OK) {
        munmap(map, len);
        return st;
    }
    f->map = map;
    f->map_len = len;
    *out = f;
    return FC_OK;
}

const fc_model *fc_st_model(const fc_st_file *f) { return &f->model; }

size_t fc_st_meta_count(const fc_st_file *f) { return f->meta_count; }

fc_st_meta fc_st_meta_at(const fc_st_file *f, size_t i) {
    fc_st_meta m = {NULL, NULL};
    if (i < f->meta_count) {
        m.key = f->meta_keys[i];
        m.value = f->meta_values[i];
    }
    return m;
}

const char *fc_st_meta_get(const fc_st_file *f, const char *key) {
    for (size_t i = 0; i < f->meta_count; i++)
        if (strcmp(f->meta_keys[i], key) == 0)
            return f->meta_values[i];
    return NULL;
}

uint64_t fc_st_data_start(const fc_st_file *f) { return f->data_start; }

void fc_st_close(fc_st_file *f) {
    if (f)
        file_free(f);
}

fc_status fc_st_read_model(const char *path, fc_model *out, fc_error *err) {
    fc_st_file *f;
    fc_status st = fc_st_open(path, &f, err);
    if (st != FC_OK)
        return st;
    /* Turn each borrowed tensor into an owned copy in place; fc_model_free frees only owned
     * data, so a failure half-way is cleaned up by fc_st_close. */
    fc_model *m = &f->model;
    for (size_t i = 0; i < m->count; i++) {
        fc_tensor *t = &m->tensors[i];
        void *copy = fc_malloc((size_t)t->nbytes);
        if (!copy) {
            st = fc_error_set(err, FC_ERR_NOMEM, FILE_FMT ": out of memory copying tensor "
                              NAME_FMT " (%llu bytes)", path, t->spec.name, (ull)t->nbytes);
            fc_st_close(f);
            return st;
        }
        if (t->nbytes)
            memcpy(copy, t->data, (size_t)t->nbytes);
        t->data = copy;
        t->owns_data = 1;
    }
    *out = *m;
    memset(m, 0, sizeof *m);
    fc_st_close(f);
    return FC_OK;
}

static fc_status tensor_convert(const fc_tensor *t, size_t esize, void **out, fc_error *err) {
    *out = NULL;
    uint64_t n;
    size_t bytes;
    if (fc_spec_numel(&t->spec, &n) != FC_OK || n > SIZE_MAX ||
        __builtin_mul_overflow((size_t)n, esize, &bytes))
        return fc_error_set(err, FC_ERR_OVERFLOW, "tensor " NAME_FMT " is too large to convert",
                            t->spec.name);
    if (fc_dtype_size(t->spec.dtype) == 0)
        return fc_error_set(err, FC_ERR_DTYPE, "tensor " NAME_FMT " has invalid dtype %d",
                            t->spec.name, (int)t->spec.dtype);
    void *dst = fc_malloc(bytes);
    if (!dst)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory converting tensor " NAME_FMT
                            " (%zu bytes)", t->spec.name, bytes);
    if (n) {
        fc_status st = esize == 4 ? fc_convert_to_f32(t->spec.dtype, t->data, (size_t)n, dst)
                                  : fc_convert_to_f64(t->spec.dtype, t->data, (size_t)n, dst);
        if (st != FC_OK) {
            fc_free(dst);
            return fc_error_set(err, st, "cannot convert tensor " NAME_FMT, t->spec.name);
        }
    }
    *out = dst;
    return FC_OK;
}

fc_status fc_st_tensor_to_f32(const fc_tensor *t, float **out, fc_error *err) {
    void *p;
    fc_status st = tensor_convert(t, sizeof(float), &p, err);
    *out = p;
    return st;
}

fc_status fc_st_tensor_to_f64(const fc_tensor *t, double **out, fc_error *err) {
    void *p;
    fc_status st = tensor_convert(t, sizeof(double), &p, err);
    *out = p;
    return st;
}

/* ---- writing ---- */

static int str_ptr_cmp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Finds a repeated string among n in O(n log n). Returns it, or NULL. */
static fc_status find_duplicate(const char **names, size_t n, const char **dup) {
    *dup = NULL;
    if (n < 2)
        return FC_OK;
    const char **sorted = fc_mallocarray(n, sizeof *sorted);
    if (!sorted)
        return FC_ERR_NOMEM;
    memcpy(sorted, names, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, str_ptr_cmp);
    for (size_t i = 1; i < n && !*dup; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0)
            *dup = sorted[i];
    /* *dup points at the caller's string, not into sorted. */
    fc_free(sorted);
    return FC_OK;
}

static fc_status check_unique(const char *what, const char **names, size_t n, fc_error *err) {
    const char *dup;
    if (find_duplicate(names, n, &dup) != FC_OK)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory checking %s", what);
    if (dup)
        return fc_error_set(err, FC_ERR_EXISTS, "duplicate %s " NAME_FMT, what, dup);
    return FC_OK;
}

static fc_status validate_specs(const fc_tensor_spec *specs, size_t count, const fc_st_meta *meta,
                                size_t meta_count, uint64_t *data_len, fc_error *err) {
    uint64_t total = 0;
    for (size_t i = 0; i < count; i++) {
        const fc_tensor_spec *s = &specs[i];
        size_t len = s->name ? strnlen(s->name, FC_MAX_TENSOR_NAME + 1) : 0;
        if (len == 0 || len > FC_MAX_TENSOR_NAME)
            return fc_error_set(err, FC_ERR_INVALID, "tensor %zu: name is missing, empty or "
                                "longer than %d bytes", i, FC_MAX_TENSOR_NAME);
        if (strcmp(s->name, "__metadata__") == 0)
            return fc_error_set(err, FC_ERR_INVALID, "tensor %zu: '__metadata__' is reserved",
                                i);
        if (fc_dtype_size(s->dtype) == 0)
            return fc_error_set(err, FC_ERR_DTYPE, "tensor " NAME_FMT ": invalid dtype %d",
                                s->name, (int)s->dtype);
        if (s->ndim > FC_MAX_DIMS)
            return fc_error_set(err, FC_ERR_INVALID, "tensor " NAME_FMT ": %u dimensions, at "
                                "most %d allowed", s->name, s->ndim, FC_MAX_DIMS);
        for (uint32_t d = 0; d < s->ndim; d++)
            if (s->shape[d] > (uint64_t)INT64_MAX)
                return fc_error_set(err, FC_ERR_OVERFLOW, "tensor " NAME_FMT ": dimension %u is "
                                    "%llu, above the JSON integer range", s->name, d,
                                    (ull)s->shape[d]);
        uint64_t nbytes;
        if (fc_spec_nbytes(s, &nbytes) != FC_OK || __builtin_add_overflow(total, nbytes, &total) ||
            total > (uint64_t)INT64_MAX)
            return fc_error_set(err, FC_ERR_OVERFLOW, "tensor " NAME_FMT ": data section size "
                                "overflows", s->name);
    }
    for (size_t i = 0; i < meta_count; i++)
        if (!meta[i].key || !meta[i].value)
            return fc_error_set(err, FC_ERR_INVALID, "metadata entry %zu has a NULL key or value",
                                i);
    fc_status st = FC_OK;
    size_t n = count > meta_count ? count : meta_count;
    const char **names = fc_mallocarray(n ? n : 1, sizeof *names);
    if (!names)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory checking names");
    for (size_t i = 0; i < count; i++)
        names[i] = specs[i].name;
    st = check_unique("tensor name", names, count, err);
    if (st == FC_OK) {
        for (size_t i = 0; i < meta_count; i++)
            names[i] = meta[i].key;
        st = check_unique("metadata key", names, meta_count, err);
    }
    fc_free(names);
    *data_len = total;
    return st;
}

static json_t *header_json(const fc_tensor_spec *specs, size_t count, const fc_st_meta *meta,
                           size_t meta_count, fc_error *err) {
    json_t *root = json_object();
    if (!root)
        goto nomem;
    if (meta_count) {
        json_t *m = json_object();
        if (!m || json_object_set_new(root, "__metadata__", m) != 0)
            goto nomem;
        for (size_t i = 0; i < meta_count; i++) {
            json_t *v = json_string(meta[i].value);
            if (!v) {
                fc_error_set(err, FC_ERR_INVALID, "metadata " NAME_FMT ": value is not valid "
                             "UTF-8", meta[i].key);
                goto fail;
            }
            if (json_object_set_new(m, meta[i].key, v) != 0) {
                fc_error_set(err, FC_ERR_INVALID, "metadata key " NAME_FMT " is not valid UTF-8",
                             meta[i].key);
                goto fail;
            }
        }
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < count; i++) {
        const fc_tensor_spec *s = &specs[i];
        uint64_t nbytes;
        fc_status size_st = fc_spec_nbytes(s, &nbytes);
        assert(size_st == FC_OK); /* validate_specs checked every spec */
        (void)size_st;
        json_t *e = json_object(), *shape = json_array(), *offs = json_array();
        int bad = !e || !shape || !offs;
        bad = bad || json_object_set_new(e, "dtype", json_string(fc_dtype_st_name(s->dtype)));
        for (uint32_t d = 0; !bad && d < s->ndim; d++)
            bad = json_array_append_new(shape, json_integer((json_int_t)s->shape[d])) != 0;
        bad = bad || json_array_append_new(offs, json_integer((json_int_t)offset)) != 0;
        bad = bad || json_array_append_new(offs, json_integer((json_int_t)(offset + nbytes)));
        if (bad || json_object_set(e, "shape", shape) != 0 ||
            json_object_set(e, "data_offsets", offs) != 0) {
            json_decref(e);
            json_decref(shape);
            json_decref(offs);
            goto nomem;
        }
        json_decref(shape);
        json_decref(offs);
        if (json_object_set_new(root, s->name, e) != 0) {
            /* json_object_set_new consumed e. Allocation failure or a key that is not UTF-8;
             * jansson does not say which, but the names were non-empty C strings, so check. */
            json_t *probe = json_string(s->name);
            if (probe) {
                json_decref(probe);
                goto nomem;
            }
            fc_error_set(err, FC_ERR_INVALID, "tensor name " NAME_FMT " is not valid UTF-8",
                         s->name);
            goto fail;
        }
        offset += nbytes;
    }
    return root;
nomem:
    fc_error_set(err, FC_ERR_NOMEM, "out of memory building the safetensors header");
fail:
    json_decref(root);
    return NULL;
}

fc_status fc_st_encode_header(const fc_tensor_spec *specs, size_t count, const fc_st_meta *meta,
                              size_t meta_count, fc_buf *out, uint64_t *data_len, fc_error *err) {
    uint64_t total = 0;
    fc_status st = validate_specs(specs, count, meta, meta_count, &total, err);
    if (st != FC_OK)
        return st;
    json_t *root = header_json(specs, count, meta, meta_count, err);
    if (!root)
        return err ? err->code : FC_ERR_NOMEM;
    const size_t flags = JSON_COMPACT | JSON_PRESERVE_ORDER;
    size_t text_len = json_dumpb(root, NULL, 0, flags);
    if (text_len == 0) {
        json_decref(root);
        return fc_error_set(err, FC_ERR_NOMEM, "cannot serialise the safetensors header");
    }
    size_t padded = text_len + (8 - text_len % 8) % 8;
    if ((uint64_t)padded > FC_ST_MAX_HEADER) {
        json_decref(root);
        return fc_error_set(err, FC_ERR_LIMIT, "safetensors header would be %zu bytes, above "
                            "the limit of %llu", padded, (ull)FC_ST_MAX_HEADER);
    }
    if ((st = fc_buf_reserve(out, 8 + padded)) != FC_OK) {
        json_decref(root);
        return fc_error_set(err, st, "out of memory for a %zu-byte header", padded);
    }
    uint8_t *p = out->data + out->len;
    size_t written = json_dumpb(root, (char *)p + 8, text_len, flags);
    json_decref(root);
    if (written != text_len)
        return fc_error_set(err, FC_ERR_NOMEM, "cannot serialise the safetensors header");
    fc_store_u64le(p, padded);
    memset(p + 8 + text_len, ' ', padded - text_len);
    out->len += 8 + padded;
    *data_len = total;
    return FC_OK;
}

struct fc_st_writer {
    int fd;
    char *path;
    char *tmp_path;
    char *dir;
    uint64_t total;
    uint64_t written;
    fc_error failure; /* code != FC_OK once the writer has failed */
    uint8_t *buf;
    size_t buf_len;
};

/* The directory that holds path, for the fsync that makes the rename durable. Computed in
 * begin so that finish never allocates after the rename. */
static char *parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        return fc_strdup(".");
    return fc_strndup(path, slash == path ? 1 : (size_t)(slash - path));
}

static fc_status fsync_dir(const fc_st_writer *w, fc_error *err) {
    int fd = open(w->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    fc_status st = FC_OK;
    if (fd < 0 || fsync(fd) != 0)
        st = fc_error_set(err, FC_ERR_IO, FILE_FMT ": renamed into place, but syncing directory "
                          "%.200s failed: %s", w->path, w->dir, strerror(errno));
    if (fd >= 0)
        close(fd);
    return st;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void writer_free(fc_st_writer *w) {
    if (w->fd >= 0)
        close(w->fd);
    if (w->tmp_path)
        unlink(w->tmp_path);
    fc_free(w->tmp_path);
    fc_free(w->path);
    fc_free(w->dir);
    fc_free(w->buf);
    fc_free(w);
}

fc_status fc_st_writer_begin(const char *path, const fc_tensor_spec *specs, size_t count,
                             const fc_st_meta *meta, size_t meta_count, fc_st_writer **out,
                             fc_error *err) {
    *out = NULL;
    if (!path || !*path)
        return fc_error_set(err, FC_ERR_INVALID, "safetensors writer: empty path");
    fc_buf header = FC_BUF_INIT;
    uint64_t total;
    fc_status st = fc_st_encode_header(specs, count, meta, meta_count, &header, &total, err);
    if (st != FC_OK) {
        fc_error_prefix(err, FILE_FMT, path);
        return st;
    }
    fc_st_writer *w = fc_calloc(1, sizeof *w);
    size_t plen = strlen(path);
    if (!w) {
        fc_buf_free(&header);
        return fc_error_set(err, FC_ERR_NOMEM, FILE_FMT ": out of memory", path);
    }
    w->fd = -1;
    w->total = total;
    w->path = fc_strdup(path);
    w->dir = parent_dir(path);
    char *tmpl = fc_malloc(plen + sizeof ".tmp.XXXXXX");
    w->buf = fc_malloc(WRITER_BUF_SIZE);
    if (!w->path || !w->dir || !tmpl || !w->buf) {
        st = fc_error_set(err, FC_ERR_NOMEM, FILE_FMT ": out of memory", path);
        fc_free(tmpl);
        goto fail;
    }
    memcpy(tmpl, path, plen);
    memcpy(tmpl + plen, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
    w->fd = mkstemp(tmpl);
    if (w->fd < 0) {
        st = fc_error_set(err, FC_ERR_IO, FILE_FMT ": cannot create a temporary file: %s", path,
                          strerror(errno));
        fc_free(tmpl);
        goto fail;
    }
    w->tmp_path = tmpl;
    if (fcntl(w->fd, F_SETFD, FD_CLOEXEC) != 0 || write_all(w->fd, header.data, header.len) != 0) {
        st = fc_error_set(err, FC_ERR_IO, FILE_FMT ": cannot write the header to %.200s: %s",
                          path, w->tmp_path, strerror(errno));
        goto fail;
    }
    fc_buf_free(&header);
    *out = w;
    return FC_OK;
fail:
    fc_buf_free(&header);
    writer_free(w);
    return st;
}

static fc_status writer_fail(fc_st_writer *w, fc_error *err, fc_status code, const char *fmt,
                             ...) __attribute__((format(printf, 4, 5)));

static fc_status writer_fail(fc_st_writer *w, fc_error *err, fc_status code, const char *fmt,
                             ...) {
    va_list ap;
    va_start(ap, fmt);
    char msg[FC_ERROR_MSG_MAX];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fc_error_set(&w->failure, code, FILE_FMT ": %s", w->path, msg);
    if (err)
        *err = w->failure;
    return code;
}

static fc_status writer_flush(fc_st_writer *w, fc_error *err) {
    if (w->buf_len && write_all(w->fd, w->buf, w->buf_len) != 0)
        return writer_fail(w, err, FC_ERR_IO, "write to %.200s failed: %s", w->tmp_path,
                           strerror(errno));
    w->buf_len = 0;
    return FC_OK;
}

fc_status fc_st_writer_write(fc_st_writer *w, const void *data, size_t len, fc_error *err) {
    if (w->failure.code != FC_OK) {
        if (err)
            *err = w->failure;
        return w->failure.code;
    }
    if ((uint64_t)len > w->total - w->written)
        return writer_fail(w, err, FC_ERR_INVALID, "%zu more bytes would make %llu, but the "
                           "header announced a data section of %llu bytes", len,
                           (ull)w->written + len, (ull)w->total);
    const uint8_t *p = data;
    size_t left = len;
    while (left > 0) {
        if (w->buf_len == 0 && left >= WRITER_BUF_SIZE) { /* large chunk: no copy */
            if (write_all(w->fd, p, left) != 0)
                return writer_fail(w, err, FC_ERR_IO, "write to %.200s failed: %s", w->tmp_path,
                                   strerror(errno));
            break;
        }
        size_t take = WRITER_BUF_SIZE - w->buf_len;
        if (take > left)
            take = left;
        memcpy(w->buf + w->buf_len, p, take);
        w->buf_len += take;
        p += take;
        left -= take;
        if (w->buf_len == WRITER_BUF_SIZE) {
            fc_status st = writer_flush(w, err);
            if (st != FC_OK)
                return st;
        }
    }
    w->written += len;
    return FC_OK;
}

uint64_t fc_st_writer_written(const fc_st_writer *w) { return w->written; }
uint64_t fc_st_writer_total(const fc_st_writer *w) { return w->total; }

fc_status fc_st_writer_finish(fc_st_writer *w, fc_error *err) {
    fc_status st;
    int fd;
    if (w->failure.code != FC_OK) {
        if (err)
            *err = w->failure;
        st = w->failure.code;
        goto fail;
    }
    if (w->written != w->total) {
        st = writer_fail(w, err, FC_ERR_INVALID, "%llu bytes of tensor data written, but the "
                         "header announced %llu", (ull)w->written, (ull)w->total);
        goto fail;
    }
    if ((st = writer_flush(w, err)) != FC_OK)
        goto fail;
    if (fsync(w->fd) != 0) {
        st = writer_fail(w, err, FC_ERR_IO, "fsync of %.200s failed: %s", w->tmp_path,
                         strerror(errno));
        goto fail;
    }
    fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0) {
        st = writer_fail(w, err, FC_ERR_IO, "close of %.200s failed: %s", w->tmp_path,
                         strerror(errno));
        goto fail;
    }
    if (rename(w->tmp_path, w->path) != 0) {
        st = writer_fail(w, err, FC_ERR_IO, "rename of %.200s failed: %s", w->tmp_path,
                         strerror(errno));
        goto fail;
    }
    fc_free(w->tmp_path);
    w->tmp_path = NULL; /* renamed: nothing to unlink */
    st = fsync_dir(w, err);
fail:
    writer_free(w);
    return st;
}

void fc_st_writer_abort(fc_st_writer *w) {
    if (w)
        writer_free(w);
}

fc_status fc_st_write_model(const char *path, const fc_model *m, const fc_st_meta *meta,
                            size_t meta_count, fc_error *err) {
    fc_tensor_spec *specs = fc_mallocarray(m->count ? m->count : 1, sizeof *specs);
    if (!specs)
        return fc_error_set(err, FC_ERR_NOMEM, FILE_FMT ": out of memory", path);
    for (size_t i = 0; i < m->count; i++)
        specs[i] = m->tensors[i].spec; /* names borrowed from m */
    fc_st_writer *w;
    fc_status st = fc_st_writer_begin(path, specs, m->count, meta, meta_count, &w, err);
    fc_free(specs);
    if (st != FC_OK)
        return st;
    for (size_t i = 0; i < m->count; i++) {
        const fc_tensor *t = &m->tensors[i];
        if (t->nbytes > SIZE_MAX) {
            fc_st_writer_abort(w);
            return fc_error_set(err, FC_ERR_OVERFLOW, FILE_FMT ": tensor " NAME_FMT " too large",
                                path, t->spec.name);
        }
        if (t->nbytes && (st = fc_st_writer_write(w, t->data, (size_t)t->nbytes, err)) != FC_OK) {
            fc_st_writer_abort(w);
            return st;
        }
    }
    return fc_st_writer_finish(w, err);
}
