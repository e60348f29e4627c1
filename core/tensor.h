/* tensor.h: named tensors, dtypes and models.
 *
 * A tensor is a name, a dtype, a shape of up to FC_MAX_DIMS dimensions and little-endian data.
 * A model is an ordered set of uniquely named tensors. All size arithmetic here is
 * overflow-checked: a shape whose element count or byte size does not fit in 64 bits is an
 * error, never a wrapped number.
 *
 * Tensor data is either owned by the model (allocated by fc_model_add) or borrowed (for example
 * from a memory-mapped safetensors file, fc_model_add_borrowed). fc_model_free frees only what
 * the model owns.
 */
#ifndef FC_TENSOR_H
#define FC_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#define FC_MAX_DIMS 8
/* Longest tensor name accepted anywhere (wire, files, database), in bytes. */
#define FC_MAX_TENSOR_NAME 1024

/* Numbers are stable: they appear on the wire (proto DType) and in the database. */
typedef enum fc_dtype {
    FC_DTYPE_INVALID = 0,
    FC_DTYPE_F32 = 1,
    FC_DTYPE_F16 = 2,
    FC_DTYPE_BF16 = 3,
    FC_DTYPE_F64 = 4,
} fc_dtype;

/* Bytes per element; 0 for an invalid dtype. */
size_t fc_dtype_size(fc_dtype dt);
/* "f32", "f16", "bf16", "f64", or "invalid". */
const char *fc_dtype_name(fc_dtype dt);
/* safetensors spelling: "F32", "F16", "BF16", "F64"; NULL for invalid. */
const char *fc_dtype_st_name(fc_dtype dt);
/* Parses either spelling; FC_DTYPE_INVALID if unknown. */
fc_dtype fc_dtype_parse(const char *s);

typedef struct fc_tensor_spec {
    char *name; /* NUL-terminated, owned by whoever owns the spec */
    fc_dtype dtype;
    uint32_t ndim; /* 0 = scalar, one element */
    uint64_t shape[FC_MAX_DIMS];
} fc_tensor_spec;

/* Element count of a shape. FC_ERR_OVERFLOW if it does not fit, FC_ERR_INVALID if ndim is too
 * large. */
fc_status fc_shape_numel(uint32_t ndim, const uint64_t *shape, uint64_t *out);
/* Element count and byte size of a spec. */
fc_status fc_spec_numel(const fc_tensor_spec *s, uint64_t *out);
fc_status fc_spec_nbytes(const fc_tensor_spec *s, uint64_t *out);
/* Writes "[64,10]" into buf (always NUL-terminated). Returns buf. */
char *fc_shape_format(uint32_t ndim, const uint64_t *shape, char *buf, size_t size);
/* 1 if dtype, ndim and shape are equal (names are not compared). */
int fc_spec_same_layout(const fc_tensor_spec *a, const fc_tensor_spec *b);

typedef struct fc_tensor {
    fc_tensor_spec spec;
    void *data;      /* nbytes of little-endian elements */
    uint64_t nbytes; /* numel * dtype size */
    int owns_data;
} fc_tensor;

typedef struct fc_model {
    fc_tensor *tensors;
    size_t count;
    size_t cap;
} fc_model;

#define FC_MODEL_INIT {NULL, 0, 0}

/* Adds a tensor that the model owns. data is copied if not NULL; otherwise the tensor is
 * zero-filled. Fails with FC_ERR_EXISTS on a duplicate name, FC_ERR_INVALID on a bad
 * name/dtype/ndim, FC_ERR_OVERFLOW on a shape too large, FC_ERR_NOMEM. */
fc_status fc_model_add(fc_model *m, const char *name, fc_dtype dt, uint32_t ndim,
                       const uint64_t *shape, const void *data, fc_error *err);
/* As fc_model_add, but the tensor points at data without copying; the caller keeps data alive
 * for the model's lifetime. */
fc_status fc_model_add_borrowed(fc_model *m, const char *name, fc_dtype dt, uint32_t ndim,
                                const uint64_t *shape, void *data, fc_error *err);
/* Index of the tensor named name, or -1. Linear search: models hold hundreds of tensors at
 * most, and callers that look up per chunk keep the index. */
long fc_model_find(const fc_model *m, const char *name);
/* Sum of element counts / byte sizes (overflow-checked). */
fc_status fc_model_numel(const fc_model *m, uint64_t *out);
fc_status fc_model_nbytes(const fc_model *m, uint64_t *out);
/* Checks that b has the same tensor names, order, dtypes and shapes as a. On mismatch, fills err
 * with which tensor differs and how, and returns FC_ERR_SHAPE. If ignore_dtype is set, only
 * names and shapes are compared. */
fc_status fc_model_check_layout(const fc_model *a, const fc_model *b, int ignore_dtype,
                                fc_error *err);
void fc_model_free(fc_model *m);

/* Exact conversions. f16 and bf16 widen to f32 exactly (every value, including subnormals,
 * infinities and NaN). Narrowing rounds to nearest, ties to even. */
float fc_f16_to_f32(uint16_t h);
float fc_bf16_to_f32(uint16_t h);
uint16_t fc_f32_to_f16(float f);
uint16_t fc_f32_to_bf16(float f);

/* Converts n little-endian elements of dtype src_dt at src to f32 / f64 at dst. Narrowing f64
 * to f32 rounds to nearest. FC_ERR_DTYPE for an invalid dtype. */
fc_status fc_convert_to_f32(fc_dtype src_dt, const void *src, size_t n, float *dst);
fc_status fc_convert_to_f64(fc_dtype src_dt, const void *src, size_t n, double *dst);
/* Converts n f32 values to dtype dst_dt, little-endian. */
fc_status fc_convert_from_f32(fc_dtype dst_dt, const float *src, size_t n, void *dst);

#endif
