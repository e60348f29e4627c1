/* test_safetensors.c: the safetensors reader (strict validation, foreign files built byte by
 * byte) and the streaming, atomic writer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/safetensors.h"
#include "core/tensor.h"

static char tmpdir[PATH_MAX];

static int group_setup(void **state) {
    (void)state;
    const char *env = getenv("FC_TEST_TMPDIR");
    if (env && *env) {
        snprintf(tmpdir, sizeof tmpdir, "%s", env);
        return 0;
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fc-test-st.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static const char *tmp_path(const char *name) {
    static char buf[PATH_MAX + 64];
    snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
    return buf;
}

static void write_file(const char *path, const void *data, size_t len) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    if (len)
        assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Number of entries in tmpdir whose name starts with prefix (to find leftover temp files). */
static int count_with_prefix(const char *prefix) {
    DIR *d = opendir(tmpdir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strncmp(de->d_name, prefix, strlen(prefix)) == 0)
            n++;
    closedir(d);
    return n;
}

/* Builds length + json + data into a heap buffer (fc_buf). */
static fc_buf image(const char *json, const void *data, size_t data_len) {
    fc_buf b = FC_BUF_INIT;
    assert_int_equal(fc_buf_append_u64le(&b, strlen(json)), FC_OK);
    assert_int_equal(fc_buf_append(&b, json, strlen(json)), FC_OK);
    assert_int_equal(fc_buf_append(&b, data, data_len), FC_OK);
    return b;
}

/* Parses json+data and expects failure with code, and a message containing every needle. */
static void expect_bad(const char *json, const void *data, size_t data_len, fc_status code,
                       const char *needle1, const char *needle2) {
    fc_buf b = image(json, data, data_len);
    fc_st_file *f = (fc_st_file *)1;
    fc_error err = {0};
    fc_status st = fc_st_parse(b.data, b.len, "bad.safetensors", &f, &err);
    if (st != code || !strstr(err.msg, "bad.safetensors") ||
        (needle1 && !strstr(err.msg, needle1)) || (needle2 && !strstr(err.msg, needle2)))
        print_error("header %s\n  got %s: %s\n  want %s with '%s' and '%s'\n", json,
                    fc_status_name(st), err.msg, fc_status_name(code), needle1 ? needle1 : "",
                    needle2 ? needle2 : "");
    assert_int_equal(st, code);
    assert_null(f);
    assert_non_null(strstr(err.msg, "bad.safetensors"));
    if (needle1)
        assert_non_null(strstr(err.msg, needle1));
    if (needle2)
        assert_non_null(strstr(err.msg, needle2));
    fc_buf_free(&b);
}

static const uint8_t ZEROS[64];

static float load_f32(const void *p) {
    float f;
    memcpy(&f, p, 4);
    return f;
}

/* ---- hand-built fixtures: what the Python safetensors library writes ---- */

/* torch: save_file({"weight": ..., "bias": ...}, metadata={"format": "pt"}). serde_json compact
 * output, "__metadata__" first, field order dtype/shape/data_offsets, 3 spaces of padding so
 * that 8 + 152 is a multiple of 8. */
static const uint8_t PT_FILE[] = {
    0x98, 0, 0, 0, 0, 0, 0, 0, /* header length 152, little-endian */
    '{', '"', '_', '_', 'm', 'e', 't', 'a', 'd', 'a', 't', 'a', '_', '_', '"', ':', '{', '"',
    'f', 'o', 'r', 'm', 'a', 't', '"', ':', '"', 'p', 't', '"', '}', ',', '"', 'b', 'i', 'a',
    's', '"', ':', '{', '"', 'd', 't', 'y', 'p', 'e', '"', ':', '"', 'F', '3', '2', '"', ',',
    '"', 's', 'h', 'a', 'p', 'e', '"', ':', '[', '2', ']', ',', '"', 'd', 'a', 't', 'a', '_',
    'o', 'f', 'f', 's', 'e', 't', 's', '"', ':', '[', '0', ',', '8', ']', '}', ',', '"', 'w',
    'e', 'i', 'g', 'h', 't', '"', ':', '{', '"', 'd', 't', 'y', 'p', 'e', '"', ':', '"', 'F',
    '3', '2', '"', ',', '"', 's', 'h', 'a', 'p', 'e', '"', ':', '[', '2', ',', '2', ']', ',',
    '"', 'd', 'a', 't', 'a', '_', 'o', 'f', 'f', 's', 'e', 't', 's', '"', ':', '[', '8', ',',
    '2', '4', ']', '}', '}', ' ', ' ', ' ',
    /* bias = [1.0, -2.5] */
    0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc0,
    /* weight = [[0.5, 2.0], [-1.0, 3.0]] */
    0x00, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x80, 0xbf, 0x00, 0x00, 0x40, 0x40};

/* numpy, mixed dtypes: the library orders tensors by dtype (F64, F32, BF16, F16), so the keys
 * are not alphabetical. 258 bytes of JSON + 6 spaces = 264 = 0x108. */
static const char NP_JSON[] =
    "{\"__metadata__\":{\"format\":\"np\"},"
    "\"w64\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]},"
    "\"w32\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
    "\"wbf\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[12,16]},"
    "\"wh\":{\"dtype\":\"F16\",\"shape\":[1,3],\"data_offsets\":[16,22]}}      ";
static const uint8_t NP_LEN[8] = {0x08, 0x01, 0, 0, 0, 0, 0, 0};
static const uint8_t NP_DATA[22] = {
    0x9a, 0x99, 0x99, 0x99, 0x99, 0x99, 0xb9, 0x3f, /* w64 = 0.1 (0x3FB999999999999A) */
    0x00, 0x00, 0x40, 0xbf,                         /* w32 = [-0.75] */
    0x80, 0x3f, 0x20, 0xbe,                         /* wbf = [1.0, -0.15625] */
    0x00, 0x3c, 0xff, 0x7b, 0x01, 0x00};            /* wh = [[1.0, 65504, 2^-24]] */

/* An older or foreign writer: no padding (164 bytes), keys not in offset order, fields in another
 * order, and a zero-size tensor at the end. */
static const char OLD_JSON[] =
    "{\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[4,8]},"
    "\"empty\":{\"shape\":[0],\"dtype\":\"F32\",\"data_offsets\":[8,8]},"
    "\"a\":{\"data_offsets\":[0,4],\"shape\":[1],\"dtype\":\"F32\"}}";
static const uint8_t OLD_LEN[8] = {0xa4, 0, 0, 0, 0, 0, 0, 0};
static const uint8_t OLD_DATA[8] = {0x00, 0x00, 0x28, 0x42,  /* a = [42.0] */
                                    0x00, 0xc0, 0x00, 0x38}; /* b = [-2.0, 0.5] (f16) */

static fc_buf concat3(const void *a, size_t al, const void *b, size_t bl, const void *c,
                      size_t cl) {
    fc_buf out = FC_BUF_INIT;
    assert_int_equal(fc_buf_append(&out, a, al), FC_OK);
    assert_int_equal(fc_buf_append(&out, b, bl), FC_OK);
    assert_int_equal(fc_buf_append(&out, c, cl), FC_OK);
    return out;
}

static void test_fixture_lengths_are_self_consistent(void **state) {
    (void)state;
    /* Guards the fixtures themselves: the declared lengths are the literal JSON lengths. */
    assert_int_equal(fc_load_u64le(PT_FILE), 152);
    assert_int_equal(sizeof PT_FILE, 8 + 152 + 24);
    assert_int_equal(PT_FILE[8 + 152 - 4], '}');
    assert_int_equal(fc_load_u64le(NP_LEN), strlen(NP_JSON));
    assert_int_equal(fc_load_u64le(OLD_LEN), strlen(OLD_JSON));
}

static void test_pytorch_file_loads_from_disk(void **state) {
    (void)state;
    const char *path = tmp_path("pt.safetensors");
    write_file(path, PT_FILE, sizeof PT_FILE);
    fc_st_file *f;
    fc_error err = {0};
    assert_int_equal(fc_st_open(path, &f, &err), FC_OK);
    const fc_model *m = fc_st_model(f);
    assert_int_equal(m->count, 2);
    assert_string_equal(m->tensors[0].spec.name, "bias");
    assert_string_equal(m->tensors[1].spec.name, "weight");
    assert_int_equal(m->tensors[1].spec.ndim, 2);
    assert_int_equal(m->tensors[1].spec.shape[0], 2);
    assert_int_equal(m->tensors[1].spec.shape[1], 2);
    assert_int_equal(m->tensors[0].owns_data, 0);
    assert_int_equal(fc_st_data_start(f), 160);
    const float bias[2] = {1.0f, -2.5f}, weight[4] = {0.5f, 2.0f, -1.0f, 3.0f};
    for (int i = 0; i < 2; i++)
        assert_true(load_f32((uint8_t *)m->tensors[0].data + 4 * i) == bias[i]);
    for (int i = 0; i < 4; i++)
        assert_true(load_f32((uint8_t *)m->tensors[1].data + 4 * i) == weight[i]);
    assert_int_equal(fc_st_meta_count(f), 1);
    assert_string_equal(fc_st_meta_get(f, "format"), "pt");
    assert_null(fc_st_meta_get(f, "missing"));
    fc_st_meta kv = fc_st_meta_at(f, 0);
    assert_string_equal(kv.key, "format");
    assert_string_equal(kv.value, "pt");
    assert_null(fc_st_meta_at(f, 1).key);
    fc_st_close(f);
}

static void test_numpy_mixed_dtypes_load_and_widen_exactly(void **state) {
    (void)state;
    fc_buf b = concat3(NP_LEN, 8, NP_JSON, strlen(NP_JSON), NP_DATA, sizeof NP_DATA);
    fc_st_file *f;
    fc_error err = {0};
    assert_int_equal(fc_st_parse(b.data, b.len, "np", &f, &err), FC_OK);
    const fc_model *m = fc_st_model(f);
    assert_int_equal(m->count, 4);
    const char *names[4] = {"w64", "w32", "wbf", "wh"};
    const fc_dtype dts[4] = {FC_DTYPE_F64, FC_DTYPE_F32, FC_DTYPE_BF16, FC_DTYPE_F16};
    for (int i = 0; i < 4; i++) {
        assert_string_equal(m->tensors[i].spec.name, names[i]);
        assert_int_equal(m->tensors[i].spec.dtype, dts[i]);
    }
    assert_int_equal(m->tensors[0].spec.ndim, 0); /* scalar */
    assert_int_equal(m->tensors[0].nbytes, 8);
    double *d;
    assert_int_equal(fc_st_tensor_to_f64(&m->tensors[0], &d, &err), FC_OK);
    assert_true(d[0] == 0.1);
    fc_free(d);
    float *x;
    assert_int_equal(fc_st_tensor_to_f32(&m->tensors[1], &x, &err), FC_OK);
    assert_true(x[0] == -0.75f);
    fc_free(x);
    assert_int_equal(fc_st_tensor_to_f32(&m->tensors[2], &x, &err), FC_OK);
    assert_true(x[0] == 1.0f && x[1] == -0.15625f);
    fc_free(x);
    assert_int_equal(fc_st_tensor_to_f32(&m->tensors[3], &x, &err), FC_OK);
    assert_true(x[0] == 1.0f && x[1] == 65504.0f && x[2] == ldexpf(1.0f, -24));
    fc_free(x);
    assert_int_equal(fc_st_tensor_to_f64(&m->tensors[3], &d, &err), FC_OK);
    assert_true(d[2] == ldexp(1.0, -24));
    fc_free(d);
    assert_string_equal(fc_st_meta_get(f, "format"), "np");
    fc_st_close(f);
    fc_buf_free(&b);
}

static void test_unpadded_header_with_shuffled_keys_orders_by_offset(void **state) {
    (void)state;
    fc_buf b = concat3(OLD_LEN, 8, OLD_JSON, strlen(OLD_JSON), OLD_DATA, sizeof OLD_DATA);
    fc_st_file *f;
    fc_error err = {0};
    assert_int_equal(fc_st_parse(b.data, b.len, "old", &f, &err), FC_OK);
    const fc_model *m = fc_st_model(f);
    assert_int_equal(m->count, 3);
    assert_string_equal(m->tensors[0].spec.name, "a");
    assert_string_equal(m->tensors[1].spec.name, "b");
    assert_string_equal(m->tensors[2].spec.name, "empty");
    assert_int_equal(m->tensors[2].nbytes, 0);
    assert_int_equal(m->tensors[2].spec.shape[0], 0);
    assert_true(load_f32(m->tensors[0].data) == 42.0f);
    float *x;
    assert_int_equal(fc_st_tensor_to_f32(&m->tensors[1], &x, &err), FC_OK);
    assert_true(x[0] == -2.0f && x[1] == 0.5f);
    fc_free(x);
    assert_int_equal(fc_st_tensor_to_f32(&m->tensors[2], &x, &err), FC_OK); /* empty is fine */
    fc_free(x);
    assert_int_equal(fc_st_meta_count(f), 0);
    assert_int_equal(fc_st_data_start(f), 8 + 164);
    fc_st_close(f);
    fc_buf_free(&b);
}

static void test_zero_size_tensors_sharing_an_offset_are_ordered_by_name(void **state) {
    (void)state;
    static const char json[] = "{\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
                               "\"y\":{\"dtype\":\"F16\",\"shape\":[3,0],\"data_offsets\":[4,4]},"
                               "\"x\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                               "\"w\":{\"dtype\":\"F64\",\"shape\":[0],\"data_offsets\":[0,0]}}";
    fc_buf b = image(json, ZEROS, 4);
    fc_st_file *f;
    fc_error err = {0};
    assert_int_equal(fc_st_parse(b.data, b.len, "z", &f, &err), FC_OK);
    const fc_model *m = fc_st_model(f);
    const char *order[4] = {"w", "x", "y", "z"};
    for (int i = 0; i < 4; i++)
        assert_string_equal(m->tensors[i].spec.name, order[i]);
    fc_st_close(f);
    fc_buf_free(&b);
}

static void test_empty_model_is_valid(void **state) {
    (void)state;
    fc_buf b = image("{}      ", NULL, 0);
    fc_st_file *f;
    assert_int_equal(fc_st_parse(b.data, b.len, "e", &f, NULL), FC_OK);
    assert_int_equal(fc_st_model(f)->count, 0);
    fc_st_close(f);
    fc_buf_free(&b);
    b = image("{\"__metadata__\":{}}", NULL, 0);
    assert_int_equal(fc_st_parse(b.data, b.len, "e", &f, NULL), FC_OK);
    assert_int_equal(fc_st_meta_count(f), 0);
    fc_st_close(f);
    fc_buf_free(&b);
}

/* ---- malformed input ---- */

static void test_empty_and_truncated_files_are_rejected(void **state) {
    (void)state;
    fc_st_file *f;
    fc_error err = {0};
    const char *path = tmp_path("empty.safetensors");
    write_file(path, NULL, 0);
    assert_int_equal(fc_st_open(path, &f, &err), FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "empty.safetensors: file is 0 bytes"));
    path = tmp_path("short.safetensors");
    write_file(path, PT_FILE, 5);
    assert_int_equal(fc_st_open(path, &f, &err), FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "file is 5 bytes"));
    assert_int_equal(fc_st_parse(PT_FILE, 7, "mem", &f, &err), FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "mem: file is 7 bytes"));
    /* Cut inside the header. */
    path = tmp_path("cut.safetensors");
    write_file(path, PT_FILE, 100);
    assert_int_equal(fc_st_open(path, &f, &err), FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "header length 152 but only 92 bytes follow"));
    /* Cut inside the data: the last tensor runs past the end. */
    write_file(path, PT_FILE, sizeof PT_FILE - 1);
    assert_int_equal(fc_st_open(path, &f, &err), FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "'weight' data_offsets [8, 24] run past the data section of "
                                    "23 bytes"));
    assert_int_equal(fc_st_open(tmp_path("does-not-exist"), &f, &err), FC_ERR_IO);
    assert_non_null(strstr(err.msg, "does-not-exist: cannot open"));
    assert_int_equal(fc_st_open(tmpdir, &f, &err), FC_ERR_IO); /* a directory */
    assert_non_null(strstr(err.msg, "not a regular file"));
    path = tmp_path("fifo.safetensors"); /* must be refused, not block waiting for a writer */
    assert_int_equal(mkfifo(path, 0600), 0);
    assert_int_equal(fc_st_open(path, &f, &err), FC_ERR_IO);
    assert_non_null(strstr(err.msg, "fifo.safetensors: not a regular file"));
}

static void test_header_length_beyond_file_or_limit_is_rejected(void **state) {
    (void)state;
    uint8_t buf[64] = {0};
    fc_st_file *f;
    fc_error err = {0};
    fc_store_u64le(buf, 57);
    assert_int_equal(fc_st_parse(buf, sizeof buf, "x", &f, &err), FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "header length 57 but only 56 bytes follow"));
    fc_store_u64le(buf, 100000001);
    assert_int_equal(fc_st_parse(buf, sizeof buf, "x", &f, &err), FC_ERR_LIMIT);
    assert_non_null(strstr(err.msg, "header length 100000001 exceeds the limit of 100000000"));
    fc_store_u64le(buf, UINT64_MAX);
    assert_int_equal(fc_st_parse(buf, sizeof buf, "x", &f, &err), FC_ERR_LIMIT);
    assert_non_null(strstr(err.msg, "18446744073709551615"));
    fc_store_u64le(buf, 0); /* empty header: not a JSON object */
    assert_int_equal(fc_st_parse(buf, 8, "x", &f, &err), FC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "x: header does not start with '{'"));
}

static void test_header_that_is_not_a_json_object_is_rejected(void **state) {
    (void)state;
    expect_bad("{\"a\":", NULL, 0, FC_ERR_FORMAT, "not valid JSON", NULL);
    expect_bad("hello", NULL, 0, FC_ERR_FORMAT, "does not start with '{'", NULL);
    expect_bad("[1,2]", NULL, 0, FC_ERR_FORMAT, "does not start with '{'", NULL);
    expect_bad(" {}", NULL, 0, FC_ERR_FORMAT, "does not start with '{'", NULL);
    expect_bad("{\"a\":}", NULL, 0, FC_ERR_FORMAT, "not valid JSON", NULL);
    expect_bad("{} x", NULL, 0, FC_ERR_FORMAT, "not valid JSON", NULL);
    expect_bad("{}{}", NULL, 0, FC_ERR_FORMAT, "not valid JSON", NULL);
    expect_bad("{\"a\":\"\xff\"}", NULL, 0, FC_ERR_FORMAT, "not valid JSON", NULL); /* not UTF-8 */
    expect_bad("{\"a\\u0000b\":{}}", NULL, 0, FC_ERR_FORMAT, "not valid JSON", NULL); /* NUL */
    /* A NUL byte in the header region. */
    static const uint8_t nul[] = {3, 0, 0, 0, 0, 0, 0, 0, '{', '}', 0};
    fc_st_file *f;
    fc_error err = {0};
    assert_int_equal(fc_st_parse(nul, sizeof nul, "nul", &f, &err), FC_ERR_FORMAT);
}

static void test_duplicate_names_are_rejected(void **state) {
    (void)state;
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               ZEROS, 8, FC_ERR_FORMAT, "duplicate object key", "\"a\"");
    /* Same name through an escape. */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"\\u0061\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               ZEROS, 8, FC_ERR_FORMAT, "duplicate", NULL);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}",
               ZEROS, 4, FC_ERR_FORMAT, "duplicate", "dtype");
    expect_bad("{\"__metadata__\":{},\"__metadata__\":{}}", NULL, 0, FC_ERR_FORMAT, "duplicate",
               NULL);
}

static void test_unknown_dtypes_are_rejected_naming_the_tensor(void **state) {
    (void)state;
    expect_bad("{\"ids\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", ZEROS, 8,
               FC_ERR_DTYPE, "tensor 'ids' has dtype 'I64'", "F32, F16, BF16 and F64");
    expect_bad("{\"m\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[0,1]}}", ZEROS, 1,
               FC_ERR_DTYPE, "'m' has dtype 'BOOL'", NULL);
    expect_bad("{\"m\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", ZEROS, 4,
               FC_ERR_DTYPE, "'f32'", NULL); /* the format spells dtypes in capitals */
    expect_bad("{\"m\":{\"dtype\":\"\",\"shape\":[1],\"data_offsets\":[0,4]}}", ZEROS, 4,
               FC_ERR_DTYPE, "'m' has dtype ''", NULL);
    expect_bad("{\"m\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", ZEROS, 4,
               FC_ERR_FORMAT, "'m' dtype is an integer, expected a string", NULL);
}

static void test_bad_shapes_are_rejected(void **state) {
    (void)state;
    expect_bad("{\"s\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,16]}}", ZEROS, 16,
               FC_ERR_FORMAT, "'s' shape is an integer, expected an array", NULL);
    expect_bad("{\"s\":{\"dtype\":\"F32\",\"shape\":[2,-2],\"data_offsets\":[0,16]}}", ZEROS, 16,
               FC_ERR_FORMAT, "'s' shape[1] is -2, expected a non-negative integer", NULL);
    expect_bad("{\"s\":{\"dtype\":\"F32\",\"shape\":[4.0],\"data_offsets\":[0,16]}}", ZEROS, 16,
               FC_ERR_FORMAT, "shape[0] is a real number", NULL);
    expect_bad("{\"s\":{\"dtype\":\"F32\",\"shape\":[\"4\"],\"data_offsets\":[0,16]}}", ZEROS, 16,
               FC_ERR_FORMAT, "shape[0] is a string", NULL);
    expect_bad("{\"s\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
               "\"data_offsets\":[0,4]}}",
               ZEROS, 4, FC_ERR_LIMIT, "'s' has 9 dimensions, at most 8", NULL);
    /* 8 dimensions is fine. */
    fc_buf b = image("{\"s\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1],"
                     "\"data_offsets\":[0,4]}}",
                     ZEROS, 4);
    fc_st_file *f;
    assert_int_equal(fc_st_parse(b.data, b.len, "ok", &f, NULL), FC_OK);
    assert_int_equal(fc_st_model(f)->tensors[0].spec.ndim, 8);
    fc_st_close(f);
    fc_buf_free(&b);
    /* A dimension beyond int64 is not a JSON integer jansson accepts. */
    expect_bad("{\"s\":{\"dtype\":\"F32\",\"shape\":[18446744073709551616],"
               "\"data_offsets\":[0,4]}}",
               ZEROS, 4, FC_ERR_FORMAT, "not valid JSON", NULL);
}

static void test_shape_product_overflow_is_rejected(void **state) {
    (void)state;
    /* 2^32 * 2^32 elements: the element count itself overflows. */
    expect_bad("{\"o\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
               "\"data_offsets\":[0,0]}}",
               NULL, 0, FC_ERR_OVERFLOW, "'o' shape [4294967296,4294967296] of F32", "64 bits");
    /* 2^62 elements fit, but 2^62 * 4 bytes do not. */
    expect_bad("{\"o\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],"
               "\"data_offsets\":[0,0]}}",
               NULL, 0, FC_ERR_OVERFLOW, "'o'", NULL);
    /* A zero dimension makes any product zero: not an overflow. */
    fc_buf b = image("{\"o\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,0],"
                     "\"data_offsets\":[0,0]}}",
                     NULL, 0);
    fc_st_file *f;
    assert_int_equal(fc_st_parse(b.data, b.len, "ok", &f, NULL), FC_OK);
    fc_st_close(f);
    fc_buf_free(&b);
}

static void test_byte_length_must_match_shape_times_dtype(void **state) {
    (void)state;
    expect_bad("{\"fc1.weight\":{\"dtype\":\"F32\",\"shape\":[4,4],\"data_offsets\":[0,12]}}",
               ZEROS, 12, FC_ERR_FORMAT,
               "'fc1.weight' data_offsets [0, 12] hold 12 bytes but shape [4,4] of F32 needs 64",
               NULL);
    expect_bad("{\"h\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,12]}}", ZEROS, 12,
               FC_ERR_FORMAT, "hold 12 bytes but shape [3] of BF16 needs 6", NULL);
    expect_bad("{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,4]}}", ZEROS, 4,
               FC_ERR_FORMAT, "shape [] of F64 needs 8", NULL);
}

static void test_offsets_that_lie_are_rejected(void **state) {
    (void)state;
    /* overlap */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               ZEROS, 12, FC_ERR_FORMAT, "'b' data_offsets [4, 12] overlap tensor 'a' at [0, 8]",
               NULL);
    /* two tensors on the same bytes */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
               ZEROS, 8, FC_ERR_FORMAT, "overlap", NULL);
    /* a zero-size tensor inside another one */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
               ZEROS, 8, FC_ERR_FORMAT, "'e' data_offsets [4, 4] overlap tensor 'a'", NULL);
    /* gap between tensors */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
               ZEROS, 12, FC_ERR_FORMAT, "gap", "'b' begins at 8 but tensor 'a' ends at 4");
    /* first tensor not at 0 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", ZEROS, 8,
               FC_ERR_FORMAT, "first tensor 'a' begins at 4, not 0", NULL);
    /* out of range */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", ZEROS, 4,
               FC_ERR_FORMAT, "'a' data_offsets [0, 8] run past the data section of 4 bytes",
               NULL);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],"
               "\"data_offsets\":[9223372036854775807,9223372036854775807]}}",
               NULL, 0, FC_ERR_FORMAT, "begins at 9223372036854775807", NULL);
    /* end before begin */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", ZEROS, 8,
               FC_ERR_FORMAT, "'a' data_offsets [8, 4] end before begin", NULL);
    /* not a pair of non-negative integers */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", ZEROS, 4,
               FC_ERR_FORMAT, "'a' data_offsets must be [begin, end]", NULL);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", ZEROS, 4,
               FC_ERR_FORMAT, "data_offsets must be", NULL);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", ZEROS, 4,
               FC_ERR_FORMAT, "data_offsets must be", NULL);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":\"0-4\"}}", ZEROS, 4,
               FC_ERR_FORMAT, "data_offsets must be", NULL);
}

static void test_trailing_data_is_rejected(void **state) {
    (void)state;
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", ZEROS, 5,
               FC_ERR_FORMAT, "1 trailing bytes: the data section is 5 bytes but the tensors "
                              "cover 4",
               NULL);
    expect_bad("{}", ZEROS, 3, FC_ERR_FORMAT, "3 trailing bytes", NULL);
}

static void test_bad_entries_are_rejected(void **state) {
    (void)state;
    expect_bad("{\"a\":[1]}", NULL, 0, FC_ERR_FORMAT, "tensor 'a' is an array, expected an object",
               NULL);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", ZEROS, 4, FC_ERR_FORMAT,
               "'a' has no 'data_offsets'", NULL);
    expect_bad("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", ZEROS, 4, FC_ERR_FORMAT,
               "'a' has no 'dtype'", NULL);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", ZEROS, 4, FC_ERR_FORMAT,
               "'a' has no 'shape'", NULL);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":1}}",
               ZEROS, 4, FC_ERR_FORMAT, "'a' has unknown field 'extra'", NULL);
    expect_bad("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", ZEROS, 4,
               FC_ERR_FORMAT, "empty name", NULL);
    char json[1200];
    char name[FC_MAX_TENSOR_NAME + 2];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    snprintf(json, sizeof json, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
             name);
    expect_bad(json, ZEROS, 4, FC_ERR_LIMIT, "is 1025 bytes, at most 1024", NULL);
}

static void test_metadata_must_be_a_string_map(void **state) {
    (void)state;
    expect_bad("{\"__metadata__\":[\"format\"]}", NULL, 0, FC_ERR_FORMAT,
               "__metadata__ is an array, expected an object", NULL);
    expect_bad("{\"__metadata__\":\"pt\"}", NULL, 0, FC_ERR_FORMAT, "__metadata__ is a string",
               NULL);
    expect_bad("{\"__metadata__\":{\"format\":\"pt\",\"epoch\":3}}", NULL, 0, FC_ERR_FORMAT,
               "__metadata__ key 'epoch' is an integer, expected a string", NULL);
    expect_bad("{\"__metadata__\":{\"nested\":{}}}", NULL, 0, FC_ERR_FORMAT,
               "'nested' is an object", NULL);
}

static void test_parse_survives_every_allocation_failure(void **state) {
    (void)state;
    fc_buf b = concat3(NP_LEN, 8, NP_JSON, strlen(NP_JSON), NP_DATA, sizeof NP_DATA);
    int succeeded = 0;
    for (long n = 0; n < 1000 && !succeeded; n++) {
        fc_st_file *f;
        fc_error err = {0};
        fc_alloc_fail_after(n);
        fc_status st = fc_st_parse(b.data, b.len, "np", &f, &err);
        unsigned long failures = fc_alloc_failures();
        fc_alloc_fail_after(-1);
        if (st == FC_OK) {
            assert_int_equal(failures, 0);
            assert_int_equal(fc_st_model(f)->count, 4);
            fc_st_close(f);
            succeeded = 1;
        } else {
            assert_int_equal(st, FC_ERR_NOMEM);
            assert_null(f);
            assert_non_null(strstr(err.msg, "out of memory"));
        }
    }
    assert_true(succeeded);
    fc_buf_free(&b);
}

/* ---- writing ---- */

static void fill_pattern(uint8_t *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)((i * 131u + seed * 7u + (i >> 8)) & 0xffu);
}

static void test_round_trip_every_dtype(void **state) {
    (void)state;
    fc_model m = FC_MODEL_INIT;
    fc_error err = {0};
    /* Bit patterns that must survive untouched: NaN payloads, infinities, subnormals, -0. */
    const uint32_t f32v[6] = {0x3f800000u, 0x7fc00001u, 0xff800000u, 0x00000001u, 0x80000000u,
                              0x12345678u};
    const uint16_t f16v[4] = {0x7c01u, 0x0001u, 0x8000u, 0x7bffu};
    const uint16_t bf16v[3] = {0x7f81u, 0x0001u, 0xc2f7u};
    const uint64_t f64v[2] = {0x7ff0000000000001ull, 0x0000000000000001ull};
    const uint64_t s6[2] = {2, 3}, s4[1] = {4}, s3[3] = {1, 3, 1}, s2[1] = {2};
    assert_int_equal(fc_model_add(&m, "layer.f32", FC_DTYPE_F32, 2, s6, f32v, &err), FC_OK);
    assert_int_equal(fc_model_add(&m, "layer.f16", FC_DTYPE_F16, 1, s4, f16v, &err), FC_OK);
    assert_int_equal(fc_model_add(&m, "layer.bf16", FC_DTYPE_BF16, 3, s3, bf16v, &err), FC_OK);
    assert_int_equal(fc_model_add(&m, "layer.f64", FC_DTYPE_F64, 1, s2, f64v, &err), FC_OK);
    const fc_st_meta meta[2] = {{"format", "pt"}, {"round", "12"}};
    const char *path = tmp_path("rt.safetensors");
    assert_int_equal(fc_st_write_model(path, &m, meta, 2, &err), FC_OK);

    fc_st_file *f;
    assert_int_equal(fc_st_open(path, &f, &err), FC_OK);
    const fc_model *r = fc_st_model(f);
    assert_int_equal(fc_model_check_layout(&m, r, 0, &err), FC_OK);
    for (size_t i = 0; i < m.count; i++) {
        assert_int_equal(r->tensors[i].nbytes, m.tensors[i].nbytes);
        assert_memory_equal(r->tensors[i].data, m.tensors[i].data, m.tensors[i].nbytes);
    }
    assert_int_equal(fc_st_meta_count(f), 2);
    assert_string_equal(fc_st_meta_at(f, 0).key, "format");
    assert_string_equal(fc_st_meta_get(f, "round"), "12");
    assert_int_equal(fc_st_data_start(f) % 8, 0);
    fc_st_close(f);

    /* The owned-copy reader gives the same model, with data that outlives the file. */
    fc_model owned = FC_MODEL_INIT;
    assert_int_equal(fc_st_read_model(path, &owned, &err), FC_OK);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(fc_model_check_layout(&m, &owned, 0, &err), FC_OK);
    for (size_t i = 0; i < m.count; i++) {
        assert_int_equal(owned.tensors[i].owns_data, 1);
        assert_memory_equal(owned.tensors[i].data, m.tensors[i].data, m.tensors[i].nbytes);
    }
    fc_model_free(&owned);
    fc_model_free(&m);
}

static void test_round_trip_scalar_and_zero_size_tensors(void **state) {
    (void)state;
    fc_model m = FC_MODEL_INIT;
    fc_error err = {0};
    const double pi = 3.141592653589793;
    const uint64_t zero[1] = {0}, zero2[2] = {5, 0}, one[1] = {1};
    const float one_val = -7.0f;
    assert_int_equal(fc_model_add(&m, "empty.first", FC_DTYPE_F32, 1, zero, NULL, &err), FC_OK);
    assert_int_equal(fc_model_add(&m, "scalar", FC_DTYPE_F64, 0, NULL, &pi, &err), FC_OK);
    assert_int_equal(fc_model_add(&m, "empty.mid", FC_DTYPE_BF16, 2, zero2, NULL, &err), FC_OK);
    assert_int_equal(fc_model_add(&m, "one", FC_DTYPE_F32, 1, one, &one_val, &err), FC_OK);
    assert_int_equal(fc_model_add(&m, "empty.last", FC_DTYPE_F16, 1, zero, NULL, &err), FC_OK);
    const char *path = tmp_path("scalar.safetensors");
    assert_int_equal(fc_st_write_model(path, &m, NULL, 0, &err), FC_OK);
    fc_st_file *f;
    assert_int_equal(fc_st_open(path, &f, &err), FC_OK);
    const fc_model *r = fc_st_model(f);
    /* Order by offset, ties by name: empty.first (0,0) < scalar (0,8); empty.mid (8,8) < one. */
    const char *order[5] = {"empty.first", "scalar", "empty.mid", "one", "empty.last"};
    assert_int_equal(r->count, 5);
    for (int i = 0; i < 5; i++)
        assert_string_equal(r->tensors[i].spec.name, order[i]);
    assert_int_equal(r->tensors[1].spec.ndim, 0);
    double *d;
    assert_int_equal(fc_st_tensor_to_f64(&r->tensors[1], &d, &err), FC_OK);
    assert_true(d[0] == pi);
    fc_free(d);
    assert_int_equal(r->tensors[2].nbytes, 0);
    assert_int_equal(r->tensors[2].spec.shape[0], 5);
    assert_true(load_f32(r->tensors[3].data) == -7.0f);
    fc_st_close(f);
    fc_model_free(&m);
}

static void test_written_header_matches_the_reference_layout(void **state) {
    (void)state;
    fc_tensor_spec specs[2] = {{.name = "x", .dtype = FC_DTYPE_F32, .ndim = 1, .shape = {2}},
                               {.name = "b", .dtype = FC_DTYPE_BF16, .ndim = 2, .shape = {1, 3}}};
    const fc_st_meta meta[1] = {{"format", "pt"}};
    fc_buf out = FC_BUF_INIT;
    uint64_t data_len = 0;
    fc_error err = {0};
    assert_int_equal(fc_st_encode_header(specs, 2, meta, 1, &out, &data_len, &err), FC_OK);
    static const char expect[] =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,3],\"data_offsets\":[8,14]}}";
    size_t jl = strlen(expect); /* 145 */
    size_t padded = (jl + 7) / 8 * 8;
    assert_int_equal(data_len, 14);
    assert_int_equal(out.len, 8 + padded);
    assert_int_equal(fc_load_u64le(out.data), padded);
    assert_memory_equal(out.data + 8, expect, jl);
    for (size_t i = 8 + jl; i < out.len; i++)
        assert_int_equal(out.data[i], ' ');
    fc_buf_free(&out);
    /* No metadata and no tensors: "{}" and six spaces. */
    assert_int_equal(fc_st_encode_header(NULL, 0, NULL, 0, &out, &data_len, &err), FC_OK);
    assert_int_equal(out.len, 16);
    assert_memory_equal(out.data, "\x08\0\0\0\0\0\0\0{}      ", 16);
    assert_int_equal(data_len, 0);
    fc_buf_free(&out);
}

static void test_writer_rejects_bad_specs(void **state) {
    (void)state;
    fc_buf out = FC_BUF_INIT;
    uint64_t n;
    fc_error err = {0};
    fc_tensor_spec s[3] = {{.name = "a", .dtype = FC_DTYPE_F32, .ndim = 1, .shape = {1}},
                           {.name = "b", .dtype = FC_DTYPE_F32, .ndim = 1, .shape = {1}},
                           {.name = "a", .dtype = FC_DTYPE_F32, .ndim = 1, .shape = {1}}};
    assert_int_equal(fc_st_encode_header(s, 3, NULL, 0, &out, &n, &err), FC_ERR_EXISTS);
    assert_non_null(strstr(err.msg, "duplicate tensor name 'a'"));
    s[2].name = "__metadata__";
    assert_int_equal(fc_st_encode_header(s, 3, NULL, 0, &out, &n, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "reserved"));
    s[2].name = "";
    assert_int_equal(fc_st_encode_header(s, 3, NULL, 0, &out, &n, &err), FC_ERR_INVALID);
    s[2].name = "c\xff";
    assert_int_equal(fc_st_encode_header(s, 3, NULL, 0, &out, &n, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "not valid UTF-8"));
    s[2].name = "c";
    s[2].dtype = (fc_dtype)9;
    assert_int_equal(fc_st_encode_header(s, 3, NULL, 0, &out, &n, &err), FC_ERR_DTYPE);
    s[2].dtype = FC_DTYPE_F16;
    s[2].ndim = 9;
    assert_int_equal(fc_st_encode_header(s, 3, NULL, 0, &out, &n, &err), FC_ERR_INVALID);
    s[2].ndim = 2;
    s[2].shape[0] = UINT64_MAX / 2;
    s[2].shape[1] = 3;
    assert_int_equal(fc_st_encode_header(s, 3, NULL, 0, &out, &n, &err), FC_ERR_OVERFLOW);
    s[2].ndim = 1;
    s[2].shape[0] = (uint64_t)INT64_MAX + 1; /* not a JSON integer */
    assert_int_equal(fc_st_encode_header(s, 3, NULL, 0, &out, &n, &err), FC_ERR_OVERFLOW);
    s[2].shape[0] = 1;
    const fc_st_meta dup[2] = {{"k", "1"}, {"k", "2"}};
    assert_int_equal(fc_st_encode_header(s, 3, dup, 2, &out, &n, &err), FC_ERR_EXISTS);
    assert_non_null(strstr(err.msg, "duplicate metadata key 'k'"));
    const fc_st_meta bad[1] = {{"k", "\xc3"}};
    assert_int_equal(fc_st_encode_header(s, 3, bad, 1, &out, &n, &err), FC_ERR_INVALID);
    assert_int_equal(out.len, 0); /* nothing appended on error */
    assert_int_equal(fc_st_encode_header(s, 3, NULL, 0, &out, &n, &err), FC_OK);
    assert_int_equal(n, 10);
    fc_buf_free(&out);
    /* The writer reports the same errors with the path, and creates nothing. */
    fc_st_writer *w = (fc_st_writer *)1;
    s[2].name = "a";
    const char *path = tmp_path("badspec.safetensors");
    assert_int_equal(fc_st_writer_begin(path, s, 3, NULL, 0, &w, &err), FC_ERR_EXISTS);
    assert_null(w);
    assert_non_null(strstr(err.msg, "badspec.safetensors: duplicate tensor name"));
    assert_false(file_exists(path));
    assert_int_equal(count_with_prefix("badspec.safetensors"), 0);
}

static void test_writer_streams_in_odd_chunk_sizes(void **state) {
    (void)state;
    /* Large enough to cross the writer's 64 KiB buffer several times. */
    fc_tensor_spec specs[3] = {
        {.name = "big", .dtype = FC_DTYPE_F32, .ndim = 2, .shape = {301, 257}},
        {.name = "mid", .dtype = FC_DTYPE_F16, .ndim = 1, .shape = {12345}},
        {.name = "small", .dtype = FC_DTYPE_F64, .ndim = 0}};
    size_t total = 301 * 257 * 4 + 12345 * 2 + 8;
    uint8_t *data = malloc(total);
    assert_non_null(data);
    fill_pattern(data, total, 3);
    const size_t chunks[] = {1, 7, 4093, 65535, 65536, 65537, 3, 200000, 13};
    const char *path = tmp_path("stream.safetensors");
    fc_st_writer *w;
    fc_error err = {0};
    assert_int_equal(fc_st_writer_begin(path, specs, 3, NULL, 0, &w, &err), FC_OK);
    assert_int_equal(fc_st_writer_total(w), total);
    assert_int_equal(fc_st_writer_write(w, data, 0, &err), FC_OK); /* empty chunk is fine */
    size_t pos = 0;
    for (size_t i = 0; pos < total; i = (i + 1) % (sizeof chunks / sizeof chunks[0])) {
        size_t n = chunks[i] < total - pos ? chunks[i] : total - pos;
        assert_int_equal(fc_st_writer_write(w, data + pos, n, &err), FC_OK);
        pos += n;
        assert_int_equal(fc_st_writer_written(w), pos);
    }
    assert_false(file_exists(path)); /* nothing at path before finish */
    assert_int_equal(count_with_prefix("stream.safetensors.tmp."), 1);
    assert_int_equal(fc_st_writer_finish(w, &err), FC_OK);
    assert_int_equal(count_with_prefix("stream.safetensors.tmp."), 0);
    fc_st_file *f;
    assert_int_equal(fc_st_open(path, &f, &err), FC_OK);
    const fc_model *m = fc_st_model(f);
    assert_int_equal(m->count, 3);
    size_t off = 0;
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(m->tensors[i].spec.name, specs[i].name);
        assert_memory_equal(m->tensors[i].data, data + off, m->tensors[i].nbytes);
        off += m->tensors[i].nbytes;
    }
    assert_int_equal(off, total);
    fc_st_close(f);
    free(data);
}

static void test_writer_with_too_few_bytes_leaves_no_file(void **state) {
    (void)state;
    fc_tensor_spec s = {.name = "w", .dtype = FC_DTYPE_F32, .ndim = 1, .shape = {4}};
    const char *path = tmp_path("few.safetensors");
    fc_st_writer *w;
    fc_error err = {0};
    assert_int_equal(fc_st_writer_begin(path, &s, 1, NULL, 0, &w, &err), FC_OK);
    assert_int_equal(fc_st_writer_write(w, ZEROS, 15, &err), FC_OK);
    assert_int_equal(fc_st_writer_finish(w, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "few.safetensors: 15 bytes of tensor data written, but the "
                                    "header announced 16"));
    assert_false(file_exists(path));
    assert_int_equal(count_with_prefix("few.safetensors"), 0);
}

static void test_writer_with_too_many_bytes_leaves_no_file(void **state) {
    (void)state;
    fc_tensor_spec s = {.name = "w", .dtype = FC_DTYPE_F16, .ndim = 1, .shape = {3}};
    const char *path = tmp_path("many.safetensors");
    fc_st_writer *w;
    fc_error err = {0};
    /* finish after the failed write */
    assert_int_equal(fc_st_writer_begin(path, &s, 1, NULL, 0, &w, &err), FC_OK);
    assert_int_equal(fc_st_writer_write(w, ZEROS, 4, &err), FC_OK);
    assert_int_equal(fc_st_writer_write(w, ZEROS, 3, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "3 more bytes would make 7, but the header announced a data "
                                    "section of 6 bytes"));
    /* The writer stays failed, even for a write that would fit. */
    fc_error err2 = {0};
    assert_int_equal(fc_st_writer_write(w, ZEROS, 2, &err2), FC_ERR_INVALID);
    assert_string_equal(err2.msg, err.msg);
    assert_int_equal(fc_st_writer_finish(w, &err2), FC_ERR_INVALID);
    assert_false(file_exists(path));
    assert_int_equal(count_with_prefix("many.safetensors"), 0);
    /* abort after the failed write */
    assert_int_equal(fc_st_writer_begin(path, &s, 1, NULL, 0, &w, &err), FC_OK);
    assert_int_equal(fc_st_writer_write(w, ZEROS, 64, &err), FC_ERR_INVALID);
    fc_st_writer_abort(w);
    assert_false(file_exists(path));
    assert_int_equal(count_with_prefix("many.safetensors"), 0);
    fc_st_writer_abort(NULL);
}

static void test_writer_replaces_an_existing_file_atomically(void **state) {
    (void)state;
    const char *path = tmp_path("replace.safetensors");
    write_file(path, "old contents", 12);
    struct stat before, after;
    assert_int_equal(stat(path, &before), 0);
    fc_tensor_spec s = {.name = "v", .dtype = FC_DTYPE_F32, .ndim = 1, .shape = {1}};
    const float v = 2.5f;
    fc_st_writer *w;
    fc_error err = {0};
    /* A failed write leaves the old file exactly as it was. */
    assert_int_equal(fc_st_writer_begin(path, &s, 1, NULL, 0, &w, &err), FC_OK);
    assert_int_equal(fc_st_writer_finish(w, &err), FC_ERR_INVALID);
    char buf[32] = {0};
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    assert_int_equal(fread(buf, 1, sizeof buf, fp), 12);
    fclose(fp);
    assert_string_equal(buf, "old contents");
    /* Until finish, the old file is what readers see; after, the new one, under a new inode
     * (rename, not rewrite in place). */
    assert_int_equal(fc_st_writer_begin(path, &s, 1, NULL, 0, &w, &err), FC_OK);
    assert_int_equal(fc_st_writer_write(w, &v, 4, &err), FC_OK);
    assert_int_equal(stat(path, &after), 0);
    assert_int_equal(after.st_size, 12);
    assert_int_equal(fc_st_writer_finish(w, &err), FC_OK);
    assert_int_equal(stat(path, &after), 0);
    assert_true(after.st_ino != before.st_ino);
    fc_st_file *f;
    assert_int_equal(fc_st_open(path, &f, &err), FC_OK);
    assert_true(load_f32(fc_st_model(f)->tensors[0].data) == 2.5f);
    fc_st_close(f);
    assert_int_equal(count_with_prefix("replace.safetensors."), 0);
}

static void test_writer_in_a_missing_directory_fails_cleanly(void **state) {
    (void)state;
    fc_tensor_spec s = {.name = "v", .dtype = FC_DTYPE_F32, .ndim = 1, .shape = {1}};
    fc_st_writer *w;
    fc_error err = {0};
    assert_int_equal(fc_st_writer_begin(tmp_path("no/such/dir/x.safetensors"), &s, 1, NULL, 0,
                                        &w, &err),
                     FC_ERR_IO);
    assert_null(w);
    assert_non_null(strstr(err.msg, "x.safetensors: cannot create a temporary file"));
    assert_int_equal(fc_st_writer_begin("", &s, 1, NULL, 0, &w, &err), FC_ERR_INVALID);
    /* A relative path with no directory part syncs "." */
    char cwd[PATH_MAX];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(tmpdir), 0);
    fc_model m = FC_MODEL_INIT;
    assert_int_equal(fc_st_write_model("rel.safetensors", &m, NULL, 0, &err), FC_OK);
    assert_true(file_exists("rel.safetensors"));
    assert_int_equal(chdir(cwd), 0);
}

static void test_write_and_read_survive_every_allocation_failure(void **state) {
    (void)state;
    fc_model m = FC_MODEL_INIT;
    fc_error err = {0};
    const uint64_t s[1] = {3};
    const float v[3] = {1, 2, 3};
    assert_int_equal(fc_model_add(&m, "a", FC_DTYPE_F32, 1, s, v, &err), FC_OK);
    assert_int_equal(fc_model_add(&m, "b", FC_DTYPE_F32, 1, s, v, &err), FC_OK);
    const fc_st_meta meta[1] = {{"k", "v"}};
    const char *path = tmp_path("oom.safetensors");
    int wrote = 0, read = 0;
    for (long n = 0; n < 1000 && !wrote; n++) {
        fc_alloc_fail_after(n);
        fc_status st = fc_st_write_model(path, &m, meta, 1, &err);
        fc_alloc_fail_after(-1);
        if (st == FC_OK)
            wrote = 1;
        else {
            assert_int_equal(st, FC_ERR_NOMEM);
            assert_false(file_exists(path));
            assert_int_equal(count_with_prefix("oom.safetensors"), 0);
        }
    }
    assert_true(wrote);
    for (long n = 0; n < 1000 && !read; n++) {
        fc_model r = FC_MODEL_INIT;
        fc_alloc_fail_after(n);
        fc_status st = fc_st_read_model(path, &r, &err);
        fc_alloc_fail_after(-1);
        if (st == FC_OK) {
            assert_int_equal(fc_model_check_layout(&m, &r, 0, &err), FC_OK);
            fc_model_free(&r);
            read = 1;
        } else {
            assert_int_equal(st, FC_ERR_NOMEM);
            assert_int_equal(r.count, 0);
        }
    }
    assert_true(read);
    fc_model_free(&m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_lengths_are_self_consistent),
        cmocka_unit_test(test_pytorch_file_loads_from_disk),
        cmocka_unit_test(test_numpy_mixed_dtypes_load_and_widen_exactly),
        cmocka_unit_test(test_unpadded_header_with_shuffled_keys_orders_by_offset),
        cmocka_unit_test(test_zero_size_tensors_sharing_an_offset_are_ordered_by_name),
        cmocka_unit_test(test_empty_model_is_valid),
        cmocka_unit_test(test_empty_and_truncated_files_are_rejected),
        cmocka_unit_test(test_header_length_beyond_file_or_limit_is_rejected),
        cmocka_unit_test(test_header_that_is_not_a_json_object_is_rejected),
        cmocka_unit_test(test_duplicate_names_are_rejected),
        cmocka_unit_test(test_unknown_dtypes_are_rejected_naming_the_tensor),
        cmocka_unit_test(test_bad_shapes_are_rejected),
        cmocka_unit_test(test_shape_product_overflow_is_rejected),
        cmocka_unit_test(test_byte_length_must_match_shape_times_dtype),
        cmocka_unit_test(test_offsets_that_lie_are_rejected),
        cmocka_unit_test(test_trailing_data_is_rejected),
        cmocka_unit_test(test_bad_entries_are_rejected),
        cmocka_unit_test(test_metadata_must_be_a_string_map),
        cmocka_unit_test(test_parse_survives_every_allocation_failure),
        cmocka_unit_test(test_round_trip_every_dtype),
        cmocka_unit_test(test_round_trip_scalar_and_zero_size_tensors),
        cmocka_unit_test(test_written_header_matches_the_reference_layout),
        cmocka_unit_test(test_writer_rejects_bad_specs),
        cmocka_unit_test(test_writer_streams_in_odd_chunk_sizes),
        cmocka_unit_test(test_writer_with_too_few_bytes_leaves_no_file),
        cmocka_unit_test(test_writer_with_too_many_bytes_leaves_no_file),
        cmocka_unit_test(test_writer_replaces_an_existing_file_atomically),
        cmocka_unit_test(test_writer_in_a_missing_directory_fails_cleanly),
        cmocka_unit_test(test_write_and_read_survive_every_allocation_failure),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
