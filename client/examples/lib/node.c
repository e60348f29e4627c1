/* node.c: file and model helpers of the networked example trainer (see node.h). */
#include "client/examples/lib/node.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "client/examples/lib/rng.h"
#include "core/safetensors.h"

static int is_blank(int c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

fc_status ex_read_secret_file(const char *path, char *out, size_t cap, fc_error *err) {
    if (!path || !out || cap < 2)
        return fc_error_set(err, FC_ERR_INVALID, "secret file: missing argument");
    if (cap > EX_SECRET_MAX + 1)
        cap = EX_SECRET_MAX + 1;
    FILE *f = fopen(path, "rb");
    if (!f)
        return fc_error_set(err, FC_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    /* Read at most cap + 2 bytes of the first line plus a little more, enough to tell "too long"
     * and "a second line" apart without reading an arbitrarily large file into memory. */
    char buf[EX_SECRET_MAX + 64];
    size_t len = fread(buf, 1, sizeof buf, f);
    int read_error = ferror(f);
    int more = !feof(f) && len == sizeof buf;
    fclose(f);
    if (read_error)
        return fc_error_set(err, FC_ERR_IO, "%s: read failed", path);
    size_t a = 0;
    while (a < len && is_blank((unsigned char)buf[a]))
        a++;
    size_t b = a;
    while (b < len && buf[b] != '\n' && buf[b] != '\r')
        b++;
    size_t end = b;
    while (end > a && is_blank((unsigned char)buf[end - 1]))
        end--;
    if (end == a)
        return fc_error_set(err, FC_ERR_FORMAT, "%s: no secret on the first line", path);
    if (end - a > cap - 1 || (b == len && more))
        return fc_error_set(err, FC_ERR_LIMIT, "%s: secret longer than %zu bytes", path, cap - 1);
    for (size_t i = a; i < end; i++)
        if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f)
            return fc_error_set(err, FC_ERR_FORMAT,
                                "%s: control character in the secret (byte %zu)", path, i + 1);
    for (size_t i = b; i < len; i++)
        if (!is_blank((unsigned char)buf[i]))
            return fc_error_set(err, FC_ERR_FORMAT,
                                "%s: text after the first line (expected one secret only)", path);
    if (more)
        return fc_error_set(err, FC_ERR_FORMAT,
                            "%s: text after the first line (expected one secret only)", path);
    memcpy(out, buf + a, end - a);
    out[end - a] = '\0';
    return FC_OK;
}

fc_status ex_sm_init(float *w, uint64_t seed, double std, fc_error *err) {
    if (!w)
        return fc_error_set(err, FC_ERR_INVALID, "initial model: missing argument");
    if (!isfinite(std) || std < 0)
        return fc_error_set(err, FC_ERR_INVALID,
                            "initial model: standard deviation %g must be finite and >= 0", std);
    memset(w, 0, EX_SM_PARAMS * sizeof *w);
    if (std > 0) {
        ex_rng r;
        ex_rng_seed(&r, ex_seed_derive(seed, EX_INIT_STREAM, 0));
        for (size_t i = 0; i < EX_SM_WEIGHTS; i++)
            w[i] = (float)(std * ex_rng_normal(&r));
    }
    return FC_OK;
}

fc_status ex_write_initial_model(const char *path, const float *w, fc_error *err) {
    fc_model m = FC_MODEL_INIT;
    static const fc_st_meta meta[1] = {{"format", "fedcoord-demo-softmax"}};
    fc_status st = ex_sm_to_model(w, &m, err);
    if (st == FC_OK)
        st = fc_st_write_model(path, &m, meta, 1, err);
    fc_model_free(&m);
    return st;
}

fc_status ex_sm_from_views(const ex_tensor_view *v, size_t count, float *w, fc_error *err) {
    static const char *const names[2] = {EX_SM_WEIGHT_NAME, EX_SM_BIAS_NAME};
    static const uint32_t ndims[2] = {2, 1};
    static const uint64_t shapes[2][2] = {{EX_DIGITS_CLASSES, EX_DIGITS_FEATURES},
                                          {EX_DIGITS_CLASSES, 0}};
    static const char *const want[2] = {"[10,64]", "[10]"};
    static const size_t numel[2] = {EX_SM_WEIGHTS, EX_DIGITS_CLASSES};
    if ((!v && count) || !w)
        return fc_error_set(err, FC_ERR_INVALID, "model: missing argument");
    if (count != 2)
        return fc_error_set(err, FC_ERR_SHAPE,
                            "model has %zu tensors, expected 2 (fc.weight f32 [10,64], "
                            "fc.bias f32 [10])",
                            count);
    float tmp[EX_SM_PARAMS];
    size_t off = 0;
    for (size_t t = 0; t < 2; t++) {
        char got[96];
        const char *name = v[t].name ? v[t].name : "";
        if (strcmp(name, names[t]) != 0)
            return fc_error_set(err, FC_ERR_SHAPE, "model tensor %zu is '%s', expected '%s'", t,
                                name, names[t]);
        if (v[t].ndim != ndims[t] || !v[t].shape || v[t].shape[0] != shapes[t][0] ||
            (ndims[t] == 2 && v[t].shape[1] != shapes[t][1]))
            return fc_error_set(err, FC_ERR_SHAPE, "model tensor '%s' has shape %s, expected %s",
                                names[t],
                                v[t].shape && v[t].ndim <= FC_MAX_DIMS
                                    ? fc_shape_format(v[t].ndim, v[t].shape, got, sizeof got)
                                    : "(none)",
                                want[t]);
        if (v[t].dtype != FC_DTYPE_F32)
            return fc_error_set(err, FC_ERR_DTYPE, "model tensor '%s' has dtype %s, expected f32",
                                names[t], fc_dtype_name(v[t].dtype));
        if (v[t].nbytes != numel[t] * sizeof(float) || !v[t].data)
            return fc_error_set(err, FC_ERR_SHAPE,
                                "model tensor '%s' has %llu bytes, expected %zu", names[t],
                                (unsigned long long)v[t].nbytes, numel[t] * sizeof(float));
        fc_status cst = fc_convert_to_f32(FC_DTYPE_F32, v[t].data, numel[t], tmp + off);
        if (cst != FC_OK)
            return fc_error_set(err, cst, "model tensor '%s': conversion failed", names[t]);
        for (size_t i = 0; i < numel[t]; i++)
            if (!isfinite(tmp[off + i]))
                return fc_error_set(err, FC_ERR_NON_FINITE,
                                    "model tensor '%s' element %zu is not finite", names[t], i);
        off += numel[t];
    }
    memcpy(w, tmp, sizeof tmp);
    return FC_OK;
}
