/* tensor.c: dtypes, shapes, models and exact float conversions. */
#include "core/tensor.h"

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"

size_t fc_dtype_size(fc_dtype dt) {
    switch (dt) {
    case FC_DTYPE_F32:
        return 4;
    case FC_DTYPE_F16:
    case FC_DTYPE_BF16:
        return 2;
    case FC_DTYPE_F64:
        return 8;
    case FC_DTYPE_INVALID:
        break;
    }
    return 0;
}

const char *fc_dtype_name(fc_dtype dt) {
    switch (dt) {
    case FC_DTYPE_F32:
        return "f32";
    case FC_DTYPE_F16:
        return "f16";
    case FC_DTYPE_BF16:
        return "bf16";
    case FC_DTYPE_F64:
        return "f64";
    case FC_DTYPE_INVALID:
        break;
    }
    return "invalid";
}

const char *fc_dtype_st_name(fc_dtype dt) {
    switch (dt) {
    case FC_DTYPE_F32:
        return "F32";
    case FC_DTYPE_F16:
        return "F16";
    case FC_DTYPE_BF16:
        return "BF16";
    case FC_DTYPE_F64:
        return "F64";
    case FC_DTYPE_INVALID:
        break;
    }
    return NULL;
}

fc_dtype fc_dtype_parse(const char *s) {
    static const struct {
        const char *name;
        fc_dtype dt;
    } names[] = {{"F32", FC_DTYPE_F32},   {"f32", FC_DTYPE_F32},   {"F16", FC_DTYPE_F16},
                 {"f16", FC_DTYPE_F16},   {"BF16", FC_DTYPE_BF16}, {"bf16", FC_DTYPE_BF16},
                 {"F64", FC_DTYPE_F64},   {"f64", FC_DTYPE_F64}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i].name) == 0)
            return names[i].dt;
    return FC_DTYPE_INVALID;
}

fc_status fc_shape_numel(uint32_t ndim, const uint64_t *shape, uint64_t *out) {
    if (ndim > FC_MAX_DIMS)
        return FC_ERR_INVALID;
    uint64_t n = 1;
    for (uint32_t i = 0; i < ndim; i++)
        if (__builtin_mul_overflow(n, shape[i], &n))
            return FC_ERR_OVERFLOW;
    *out = n;
    return FC_OK;
}

fc_status fc_spec_numel(const fc_tensor_spec *s, uint64_t *out) {
    return fc_shape_numel(s->ndim, s->shape, out);
}

fc_status fc_spec_nbytes(const fc_tensor_spec *s, uint64_t *out) {
    size_t esize = fc_dtype_size(s->dtype);
    if (esize == 0)
        return FC_ERR_DTYPE;
    uint64_t n;
    fc_status st = fc_spec_numel(s, &n);
    if (st != FC_OK)
        return st;
    if (__builtin_mul_overflow(n, (uint64_t)esize, out))
        return FC_ERR_OVERFLOW;
    return FC_OK;
}

char *fc_shape_format(uint32_t ndim, const uint64_t *shape, char *buf, size_t size) {
    size_t pos = 0;
    if (size == 0)
        return buf;
    buf[0] = '\0';
    pos += (size_t)snprintf(buf + pos, size - pos, "[");
    for (uint32_t i = 0; i < ndim && i < FC_MAX_DIMS && pos < size; i++)
        pos += (size_t)snprintf(buf + pos, size - pos, "%s%llu", i ? "," : "",
                                (unsigned long long)shape[i]);
    if (pos < size)
        snprintf(buf + pos, size - pos, "]");
    return buf;
}

int fc_spec_same_layout(const fc_tensor_spec *a, const fc_tensor_spec *b) {
    if (a->dtype != b->dtype || a->ndim != b->ndim)
        return 0;
    for (uint32_t i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

static fc_status model_push(fc_model *m, const char *name, fc_dtype dt, uint32_t ndim,
                            const uint64_t *shape, fc_tensor **out, fc_error *err) {
    size_t name_len = name ? strnlen(name, FC_MAX_TENSOR_NAME + 1) : 0;
    if (name_len == 0 || name_len > FC_MAX_TENSOR_NAME)
        return fc_error_set(err, FC_ERR_INVALID, "tensor name is empty or longer than %d bytes",
                            FC_MAX_TENSOR_NAME);
    if (fc_dtype_size(dt) == 0)
        return fc_error_set(err, FC_ERR_DTYPE, "tensor '%s': invalid dtype %d", name, (int)dt);
    if (ndim > FC_MAX_DIMS)
        return fc_error_set(err, FC_ERR_INVALID, "tensor '%s': %u dimensions, at most %d allowed",
                            name, ndim, FC_MAX_DIMS);
    if (fc_model_find(m, name) >= 0)
        return fc_error_set(err, FC_ERR_EXISTS, "duplicate tensor name '%s'", name);
    fc_tensor t;
    memset(&t, 0, sizeof t);
    t.spec.dtype = dt;
    t.spec.ndim = ndim;
    for (uint32_t i = 0; i < ndim; i++)
        t.spec.shape[i] = shape[i];
    if (fc_spec_nbytes(&t.spec, &t.nbytes) != FC_OK)
        return fc_error_set(err, FC_ERR_OVERFLOW, "tensor '%s': shape too large", name);
    if (t.nbytes > SIZE_MAX)
        return fc_error_set(err, FC_ERR_OVERFLOW, "tensor '%s': too large for this machine", name);
    if (m->count == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 8;
        fc_tensor *p = fc_realloc(m->tensors, cap * sizeof *p);
        if (!p)
            return fc_error_set(err, FC_ERR_NOMEM, "out of memory adding tensor '%s'", name);
        m->tensors = p;
        m->cap = cap;
    }
    t.spec.name = fc_strndup(name, name_len);
    if (!t.spec.name)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory adding tensor '%s'", name);
    m->tensors[m->count] = t;
    *out = &m->tensors[m->count];
    return FC_OK;
}

fc_status fc_model_add(fc_model *m, const char *name, fc_dtype dt, uint32_t ndim,
                       const uint64_t *shape, const void *data, fc_error *err) {
    fc_tensor *t;
    fc_status st = model_push(m, name, dt, ndim, shape, &t, err);
    if (st != FC_OK)
        return st;
    t->data = data ? fc_malloc((size_t)t->nbytes) : fc_calloc(1, (size_t)t->nbytes);
    if (!t->data) {
        fc_free(t->spec.name);
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory for tensor '%s' (%llu bytes)", name,
                            (unsigned long long)t->nbytes);
    }
    if (data && t->nbytes)
        memcpy(t->data, data, (size_t)t->nbytes);
    t->owns_data = 1;
    m->count++;
    return FC_OK;
}

fc_status fc_model_add_borrowed(fc_model *m, const char *name, fc_dtype dt, uint32_t ndim,
                                const uint64_t *shape, void *data, fc_error *err) {
    fc_tensor *t;
    fc_status st = model_push(m, name, dt, ndim, shape, &t, err);
    if (st != FC_OK)
        return st;
    t->data = data;
    t->owns_data = 0;
    m->count++;
    return FC_OK;
}

long fc_model_find(const fc_model *m, const char *name) {
    for (size_t i = 0; i < m->count; i++)
        if (strcmp(m->tensors[i].spec.name, name) == 0)
            return (long)i;
    return -1;
}

fc_status fc_model_numel(const fc_model *m, uint64_t *out) {
    uint64_t total = 0;
    for (size_t i = 0; i < m->count; i++) {
        uint64_t n;
        fc_status st = fc_spec_numel(&m->tensors[i].spec, &n);
        if (st != FC_OK)
            return st;
        if (__builtin_add_overflow(total, n, &total))
            return FC_ERR_OVERFLOW;
    }
    *out = total;
    return FC_OK;
}

fc_status fc_model_nbytes(const fc_model *m, uint64_t *out) {
    uint64_t total = 0;
    for (size_t i = 0; i < m->count; i++)
        if (__builtin_add_overflow(total, m->tensors[i].nbytes, &total))
            return FC_ERR_OVERFLOW;
    *out = total;
    return FC_OK;
}

fc_status fc_model_check_layout(const fc_model *a, const fc_model *b, int ignore_dtype,
                                fc_error *err) {
    if (a->count != b->count)
        return fc_error_set(err, FC_ERR_SHAPE, "model has %zu tensors, expected %zu", b->count,
                            a->count);
    for (size_t i = 0; i < a->count; i++) {
        const fc_tensor_spec *x = &a->tensors[i].spec, *y = &b->tensors[i].spec;
        if (strcmp(x->name, y->name) != 0)
            return fc_error_set(err, FC_ERR_SHAPE, "tensor %zu is named '%s', expected '%s'", i,
                                y->name, x->name);
        if (!ignore_dtype && x->dtype != y->dtype)
            return fc_error_set(err, FC_ERR_SHAPE, "tensor '%s' has dtype %s, expected %s",
                                y->name, fc_dtype_name(y->dtype), fc_dtype_name(x->dtype));
        int same = x->ndim == y->ndim;
        for (uint32_t d = 0; same && d < x->ndim; d++)
            same = x->shape[d] == y->shape[d];
        if (!same) {
            char sx[160], sy[160];
            return fc_error_set(err, FC_ERR_SHAPE, "tensor '%s' has shape %s, expected %s",
                                y->name, fc_shape_format(y->ndim, y->shape, sy, sizeof sy),
                                fc_shape_format(x->ndim, x->shape, sx, sizeof sx));
        }
    }
    return FC_OK;
}

void fc_model_free(fc_model *m) {
    for (size_t i = 0; i < m->count; i++) {
        if (m->tensors[i].owns_data)
            fc_free(m->tensors[i].data);
        fc_free(m->tensors[i].spec.name);
    }
    fc_free(m->tensors);
    m->tensors = NULL;
    m->count = m->cap = 0;
}

/* ---- conversions ---- */

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

float fc_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) /* inf or NaN: keep the payload */
        return f32_from_bits(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        if (mant == 0)
            return f32_from_bits(sign);
        /* subnormal: value = mant * 2^-24, exact in f32 */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}

float fc_bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

uint16_t fc_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet and non-zero */
        return (uint16_t)((u >> 16) | 0x40u);
    uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)((u + rounding) >> 16);
}

uint16_t fc_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) /* NaN */
        return (uint16_t)(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
    if (abs >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (abs < 0x38800000u) { /* below the smallest normal half, 2^-14 */
        /* subnormal half: round abs * 2^24 to nearest even integer */
        float a = f32_from_bits(abs);
        float scaled = a * 0x1p24f; /* exact: a < 2^-14 so scaled < 2^10 */
        uint32_t whole = (uint32_t)scaled;
        float frac = scaled - (float)whole;
        if (frac > 0.5f || (frac == 0.5f && (whole & 1u)))
            whole++;
        return (uint16_t)(sign | whole);
    }
    /* normal: rebias exponent and round mantissa 23 -> 10 bits, ties to even */
    uint32_t rebased = abs - (112u << 23);
    uint32_t rounding = 0xfffu + ((rebased >> 13) & 1u);
    return (uint16_t)(sign | ((rebased + rounding) >> 13));
}

fc_status fc_convert_to_f32(fc_dtype src_dt, const void *src, size_t n, float *dst) {
    const uint8_t *p = src;
    switch (src_dt) {
    case FC_DTYPE_F32:
        memcpy(dst, src, n * 4);
        return FC_OK;
    case FC_DTYPE_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = fc_f16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        return FC_OK;
    case FC_DTYPE_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = fc_bf16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        return FC_OK;
    case FC_DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        return FC_OK;
    case FC_DTYPE_INVALID:
        break;
    }
    return FC_ERR_DTYPE;
}

fc_status fc_convert_to_f64(fc_dtype src_dt, const void *src, size_t n, double *dst) {
    const uint8_t *p = src;
    switch (src_dt) {
    case FC_DTYPE_F32:
        for (size_t i = 0; i < n; i++) {
            float f;
            memcpy(&f, p + 4 * i, 4);
            dst[i] = f;
        }
        return FC_OK;
    case FC_DTYPE_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = fc_f16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        return FC_OK;
    case FC_DTYPE_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = fc_bf16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        return FC_OK;
    case FC_DTYPE_F64:
        memcpy(dst, src, n * 8);
        return FC_OK;
    case FC_DTYPE_INVALID:
        break;
    }
    return FC_ERR_DTYPE;
}

fc_status fc_convert_from_f32(fc_dtype dst_dt, const float *src, size_t n, void *dst) {
    uint8_t *p = dst;
    switch (dst_dt) {
    case FC_DTYPE_F32:
        memcpy(dst, src, n * 4);
        return FC_OK;
    case FC_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = fc_f32_to_f16(src[i]);
            p[2 * i] = (uint8_t)h;
            p[2 * i + 1] = (uint8_t)(h >> 8);
        }
        return FC_OK;
    case FC_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = fc_f32_to_bf16(src[i]);
            p[2 * i] = (uint8_t)h;
            p[2 * i + 1] = (uint8_t)(h >> 8);
        }
        return FC_OK;
    case FC_DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            double d = src[i];
            memcpy(p + 8 * i, &d, 8);
        }
        return FC_OK;
    case FC_DTYPE_INVALID:
        break;
    }
    return FC_ERR_DTYPE;
}
