/* fuzz_safetensors.c: libFuzzer target for the in-memory safetensors parser.
 *
 * Every input must either be refused with an error code and a message, or give a model whose
 * tensors lie inside the input (ASan checks every byte as it is converted). An accepted input
 * must also survive a round trip: its specs and metadata re-encoded by fc_st_encode_header, with
 * the same data section, parse back to the same model and metadata.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/safetensors.h"
#include "core/tensor.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_safetensors: %s: %s\n", what, detail);
    abort();
}

static void touch_tensors(const fc_model *m) {
    for (size_t i = 0; i < m->count; i++) {
        double *d;
        fc_error err = {0};
        if (fc_st_tensor_to_f64(&m->tensors[i], &d, &err) != FC_OK)
            fail("convert to f64", err.msg);
        fc_free(d);
    }
}

static void round_trip(const uint8_t *data, size_t size, const fc_st_file *f) {
    const fc_model *m = fc_st_model(f);
    fc_tensor_spec *specs = fc_mallocarray(m->count ? m->count : 1, sizeof *specs);
    size_t nmeta = fc_st_meta_count(f);
    fc_st_meta *meta = fc_mallocarray(nmeta ? nmeta : 1, sizeof *meta);
    if (!specs || !meta)
        fail("round trip", "out of memory");
    for (size_t i = 0; i < m->count; i++)
        specs[i] = m->tensors[i].spec;
    for (size_t i = 0; i < nmeta; i++)
        meta[i] = fc_st_meta_at(f, i);
    fc_buf out = FC_BUF_INIT;
    uint64_t data_len;
    fc_error err = {0};
    if (fc_st_encode_header(specs, m->count, meta, nmeta, &out, &data_len, &err) != FC_OK)
        fail("re-encode an accepted header", err.msg);
    uint64_t start = fc_st_data_start(f);
    if (data_len != size - start)
        fail("round trip", "data section size differs");
    if (fc_buf_append(&out, data + start, (size_t)data_len) != FC_OK)
        fail("round trip", "out of memory");
    fc_st_file *g;
    if (fc_st_parse(out.data, out.len, "re-encoded", &g, &err) != FC_OK)
        fail("parse a re-encoded header", err.msg);
    const fc_model *r = fc_st_model(g);
    if (fc_model_check_layout(m, r, 0, &err) != FC_OK)
        fail("round trip layout", err.msg);
    for (size_t i = 0; i < m->count; i++)
        if (r->tensors[i].nbytes != m->tensors[i].nbytes ||
            (m->tensors[i].nbytes &&
             memcmp(r->tensors[i].data, m->tensors[i].data, (size_t)m->tensors[i].nbytes) != 0))
            fail("round trip", "tensor data differs");
    if (fc_st_meta_count(g) != nmeta)
        fail("round trip", "metadata count differs");
    for (size_t i = 0; i < nmeta; i++) {
        const char *v = fc_st_meta_get(g, meta[i].key);
        if (!v || strcmp(v, meta[i].value) != 0)
            fail("round trip", "metadata differs");
    }
    if (fc_st_data_start(g) % 8 != 0)
        fail("round trip", "re-encoded data section is not 8-byte aligned");
    fc_st_close(g);
    fc_buf_free(&out);
    fc_free(specs);
    fc_free(meta);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fc_st_file *f;
    fc_error err = {0};
    fc_status st = fc_st_parse(data, size, "fuzz", &f, &err);
    if (st != FC_OK) {
        if (err.code != st || err.msg[0] == '\0' || f != NULL)
            fail("refusal", "error without code or message");
        return 0;
    }
    touch_tensors(fc_st_model(f));
    round_trip(data, size, f);
    fc_st_close(f);
    return 0;
}
