/* gen_frame_corpus.c: writes the seed corpus of fuzz_frame into a folder (run once by hand; the
 * output is committed as tests/fuzz/frame/). Not part of the build:
 *
 *   make && cc -std=c11 -I. -Ibuild/gen tests/fuzz/gen_frame_corpus.c build/lib/libfccore.a \
 *       -lprotobuf-c -o build/gen_frame_corpus && build/gen_frame_corpus tests/fuzz/frame
 *
 * Each seed is: control byte, split bytes, then a stream of frames (see fuzz_frame.c). Valid
 * seeds are whole client and server sessions built with proto/wire.h; invalid seeds break one
 * rule each.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/wire.h"

static const char *outdir;

static void die(const char *what, const fc_error *err) {
    fprintf(stderr, "gen_frame_corpus: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

static void put(fc_buf *s, fc_wire_msg *m, fc_status st, fc_error *err) {
    if (st != FC_OK)
        die("build", err);
    if (fc_wire_encode(m, 0, s, err) != FC_OK)
        die("encode", err);
    fc_wire_msg_free(m);
}

static void write_seed(const char *name, uint8_t control, const uint8_t *splits, size_t nsplits,
                       const uint8_t *stream, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", outdir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fputc(control | (uint8_t)nsplits, f) == EOF ||
        fwrite(splits, 1, nsplits, f) != nsplits || fwrite(stream, 1, n, f) != n || fclose(f))
        die(path, NULL);
}

static const uint8_t SHA[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

static void client_session(fc_buf *s) {
    fc_wire_msg m;
    fc_error err = {0};
    const char *caps[] = {"dtype.f16", "resume"};
    const uint8_t tok[] = "tok-0123456789abcdef";
    fc_wire_hello_args h = {.client_name = "client-1", .token = {tok, sizeof tok - 1},
                            .capabilities = caps, .n_capabilities = 2, .software = "gen/1"};
    put(s, &m, fc_wire_hello(&m, 1, &h, &err), &err);
    put(s, &m, fc_wire_heartbeat(&m, 2, 1764331200000ull, &err), &err);
    put(s, &m, fc_wire_model_request(&m, 3, 4, 0, &err), &err);
    fc_tensor_spec specs[2] = {{.name = "fc.weight", .dtype = FC_DTYPE_F32, .ndim = 2,
                                .shape = {4, 8}},
                               {.name = "fc.bias", .dtype = FC_DTYPE_F16, .ndim = 1,
                                .shape = {4}}};
    fc_wire_update_begin_args u = {.round = 5, .base_version = 4, .tensors = specs,
                                   .n_tensors = 2, .total_bytes = 136, .is_delta = 1};
    put(s, &m, fc_wire_update_begin(&m, 4, &u, &err), &err);
    uint8_t data[128];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 3);
    if (fc_frame_encode_chunk(5, 0, 0, data, 100, 0, s, &err) != FC_OK ||
        fc_frame_encode_chunk(6, 0, 100, data, 28, 0, s, &err) != FC_OK ||
        fc_frame_encode_chunk(7, 1, 0, data, 8, 0, s, &err) != FC_OK)
        die("chunk", &err);
    fc_wire_metric metrics[] = {{"train_loss", 0.5}};
    put(s, &m, fc_wire_update_end(&m, 8, SHA, 64, metrics, 1, &err), &err);
    fc_wire_metric eval[] = {{"loss", 0.4}, {"accuracy", 0.9}};
    put(s, &m, fc_wire_eval_result(&m, 9, 6, 5, 32, eval, 2, &err), &err);
    put(s, &m, fc_wire_bye(&m, 10, "done", &err), &err);
}

static void server_session(fc_buf *s) {
    fc_wire_msg m;
    fc_error err = {0};
    const uint8_t resume[] = {0xaa, 0xbb, 0xcc};
    fc_wire_welcome_args w = {.session_id = "sess-9", .resume_token = {resume, 3},
                              .heartbeat_interval_ms = 10000, .max_frame_bytes = 4u << 20,
                              .max_chunk_bytes = 1u << 20, .software = "fedcoord/gen"};
    put(s, &m, fc_wire_welcome(&m, 1, &w, &err), &err);
    fc_tensor_spec specs[1] = {{.name = "w", .dtype = FC_DTYPE_BF16, .ndim = 3,
                                .shape = {2, 3, 4}}};
    fc_wire_kv cfg[] = {{"mu", "0.01"}, {"local_epochs", "1"}};
    fc_wire_task_args t = {.round = 5, .kind = FC_TASK_TRAIN, .model_version = 4, .config = cfg,
                           .n_config = 2, .tensors = specs, .n_tensors = 1,
                           .model_sha256 = SHA, .model_bytes = 48, .deadline_unix_ms = 99};
    put(s, &m, fc_wire_task(&m, 2, &t, &err), &err);
    put(s, &m, fc_wire_model_begin(&m, 3, 4, specs, 1, 48, SHA, 0, &err), &err);
    uint8_t data[48] = {0};
    if (fc_frame_encode_chunk(4, 0, 0, data, 48, 0, s, &err) != FC_OK)
        die("chunk", &err);
    put(s, &m, fc_wire_model_end(&m, 5, 4, SHA, &err), &err);
    put(s, &m, fc_wire_ack(&m, 6, 4, 136, "staged", &err), &err);
    put(s, &m, fc_wire_error(&m, 7, FC_ERR_HASH, FC_WIRE_FATAL_DEFAULT, 8, "hash differs", &err),
        &err);
    put(s, &m, fc_wire_bye(&m, 8, "shutdown", &err), &err);
}

static void raw(const char *name, uint8_t control, const uint8_t *bytes, size_t n) {
    write_seed(name, control, NULL, 0, bytes, n);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: gen_frame_corpus OUTDIR\n");
        return 2;
    }
    outdir = argv[1];
    fc_buf c = FC_BUF_INIT, sv = FC_BUF_INIT;
    client_session(&c);
    server_session(&sv);
    const uint8_t one[] = {0};
    const uint8_t mixed[] = {2, 0, 17, 254, 5, 1, 63};
    write_seed("client_whole", 0, NULL, 0, c.data, c.len);
    write_seed("client_bytewise", 0, one, 1, c.data, c.len);
    write_seed("client_mixed", 0, mixed, sizeof mixed, c.data, c.len);
    write_seed("server_whole", 0, NULL, 0, sv.data, sv.len);
    write_seed("server_mixed_small_max", 0x80, mixed, sizeof mixed, sv.data, sv.len);
    /* truncated: the client session cut inside its last frame */
    write_seed("truncated", 0, mixed, 3, c.data, c.len - 3);

    static const uint8_t zero_len[] = {0, 0, 0, 0};
    raw("zero_length", 0, zero_len, sizeof zero_len);
    static const uint8_t four_gb[] = {0xff, 0xff, 0xff, 0xff, 0x08, 0x01};
    raw("four_gb_prefix", 0, four_gb, sizeof four_gb);
    static const uint8_t seq_only[] = {0, 0, 0, 2, 0x08, 0x05};
    raw("unknown_type_seq_only", 0, seq_only, sizeof seq_only);
    static const uint8_t future[] = {0, 0, 0, 6, 0x08, 0x01, 0x9a, 0x06, 0x01, 0x00};
    raw("unknown_type_field_99", 0, future, sizeof future);
    static const uint8_t bad_varint[] = {0, 0, 0, 12, 0x08, 0x80, 0x80, 0x80, 0x80, 0x80,
                                         0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
    raw("bad_varint", 0, bad_varint, sizeof bad_varint);
    static const uint8_t bad_utf8[] = {0, 0, 0, 5, 0x52, 0x03, 0x1a, 0x01, 0xff};
    raw("bad_utf8", 0, bad_utf8, sizeof bad_utf8);
    static const uint8_t past_end[] = {0, 0, 0, 5, 0xba, 0x01, 0x0a, 0x0a, 0x00};
    raw("length_past_end", 0, past_end, sizeof past_end);
    /* ModelBegin with a spec of unknown dtype 9 and 9 dims */
    static const uint8_t bad_spec[] = {0, 0, 0, 22, 0x7a, 0x14, 0x12, 0x10, 0x0a, 0x01, 't',
                                       0x10, 0x09, 0x1a, 0x09, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                       0x18, 0x00};
    raw("bad_tensor_spec", 0, bad_spec, sizeof bad_spec);
    /* empty chunk data and a group wire type */
    static const uint8_t empty_chunk[] = {0, 0, 0, 5, 0x82, 0x01, 0x02, 0x08, 0x01};
    raw("empty_chunk", 0, empty_chunk, sizeof empty_chunk);
    static const uint8_t group[] = {0, 0, 0, 2, 0x0b, 0x0c};
    raw("group", 0, group, sizeof group);
    fc_buf_free(&c);
    fc_buf_free(&sv);
    return 0;
}
