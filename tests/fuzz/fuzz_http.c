/* fuzz_http.c: libFuzzer target for HTTP request parsing and the API's routing.
 *
 * The input is everything a client sent on one connection. It goes through
 * http_process_bytes (the same parser, limits and response framing as a server connection)
 * with api_handle over a small real store (two model versions, rounds, clients, written once
 * at start in a temporary folder), a provider, and a metrics registry. Limits are small so
 * that inputs reach them. Beyond "no crash, no leak", the output must parse back as a sequence
 * of complete HTTP/1.1 responses (http-parser in response mode), at most one per request plus
 * one error, each with a body of exactly its Content-Length (inputs that contain "HEAD" are
 * exempt: those responses have a length and no body).
 */
#define _GNU_SOURCE /* memmem */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <http_parser.h>

#include "core/alloc.h"
#include "core/log.h"
#include "server/api.h"
#include "server/http.h"
#include "server/metrics.h"
#include "storage/store.h"

static api *g_api;
static metrics_fedcoord g_metrics;
static http_limits g_limits;

static fc_status p_status(void *ctx, json_t *out, fc_error *err) {
    (void)ctx;
    (void)err;
    json_object_set_new(out, "state", json_string("training"));
    return FC_OK;
}

static int p_ready(void *ctx, const char **why) {
    (void)ctx;
    *why = "never";
    return 0;
}

static fc_status p_control(void *ctx, const char *action, fc_error *err) {
    (void)ctx;
    if (strcmp(action, "stop") == 0)
        return fc_error_set(err, FC_ERR_STATE, "stopping already");
    return FC_OK;
}

typedef struct src {
    const uint8_t *d;
    size_t len, pos;
} src;

static fc_status src_read(void *ud, void *buf, size_t cap, size_t *got, fc_error *err) {
    (void)err;
    src *s = ud;
    size_t n = s->len - s->pos < cap ? s->len - s->pos : cap;
    memcpy(buf, s->d + s->pos, n);
    s->pos += n;
    *got = n;
    return FC_OK;
}

static void die(const char *what, const fc_error *err) {
    fprintf(stderr, "fuzz_http setup: %s: %s\n", what, err ? err->msg : "");
    abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fc_log_set_level(FC_LOG_ERROR);
    static char dir[] = "/tmp/fuzz_http.XXXXXX";
    if (!mkdtemp(dir))
        die("mkdtemp", NULL);
    static char path[64];
    snprintf(path, sizeof path, "%s/f.db", dir);
    store *s;
    fc_error err = {0};
    store_options opt = {.version = STORE_OPTIONS_V1, .chunk_size = 64};
    if (store_open(path, &opt, &s, &err) != FC_OK)
        die("store_open", &err);
    uint8_t tok[32] = {1};
    int64_t id;
    if (store_client_add(s, "alice", tok, 1, &id, &err) != FC_OK)
        die("client", &err);
    uint8_t data[400];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 7);
    store_participant part = {
        .client = "alice", .outcome = STORE_OUTCOME_ACCEPTED, .metrics_json = "{\"loss\":1}"};
    for (int v = 1; v <= 2; v++) {
        src sr = {data, sizeof data, 0};
        store_commit c = {.round_id = v,
                          .version = v,
                          .parent_version = v - 1,
                          .tensor_specs_json =
                              "[{\"name\":\"w\",\"dtype\":\"f32\",\"shape\":[10,8]},"
                              "{\"name\":\"h\",\"dtype\":\"f16\",\"shape\":[40]}]",
                          .model_size = sizeof data,
                          .source = src_read,
                          .source_ud = &sr,
                          .started_at = v * 10,
                          .ended_at = v * 10 + 5,
                          .report_json = "{\"selected\":[\"alice\"]}",
                          .participants = &part,
                          .num_participants = 1};
        if (store_commit_round(s, &c, NULL, &err) != FC_OK)
            die("commit", &err);
    }
    if (store_round_fail(s, 3, "timeout", NULL, 0, 40, &err) != FC_OK)
        die("fail", &err);
    store_close(s);
    if (metrics_fedcoord_new(&g_metrics, &err) != FC_OK)
        die("metrics", &err);
    api_config ac = {.version = API_CONFIG_V1,
                     .store_path = path,
                     .admin_token = "tok",
                     .metrics = g_metrics.reg,
                     .http_metrics = &g_metrics,
                     .max_list = 20,
                     .export_piece = 50,
                     .provider = {.version = API_PROVIDER_V1,
                                  .status = p_status,
                                  .ready = p_ready,
                                  .control = p_control}};
    if (api_new(&ac, &g_api, &err) != FC_OK)
        die("api_new", &err);
    http_limits_default(&g_limits);
    g_limits.max_header_bytes = 2048;
    g_limits.max_body_bytes = 512;
    g_limits.stream_chunk = 100;
    return 0;
}

/* ---- the oracle: the output is well-formed responses ---- */

typedef struct check {
    size_t responses, body;
    int in_message;
    uint64_t expect_body;
} check;

static int ck_headers(http_parser *p) {
    check *c = p->data;
    if (!(p->flags & F_CONTENTLENGTH))
        abort(); /* every response has a Content-Length */
    c->expect_body = p->content_length;
    return 0;
}

static int ck_body(http_parser *p, const char *at, size_t len) {
    (void)at;
    ((check *)p->data)->body += len;
    return 0;
}

static int ck_begin(http_parser *p) {
    check *c = p->data;
    c->in_message = 1;
    c->body = 0;
    return 0;
}

static int ck_complete(http_parser *p) {
    check *c = p->data;
    if (c->body != c->expect_body)
        abort();
    c->in_message = 0;
    c->responses++;
    return 0;
}

static const http_parser_settings ck_settings = {.on_message_begin = ck_begin,
                                                 .on_headers_complete = ck_headers,
                                                 .on_body = ck_body,
                                                 .on_message_complete = ck_complete};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fc_buf out = FC_BUF_INIT;
    fc_error err = {0};
    if (http_process_bytes(&g_limits, api_handle, g_api, data, size, &out, &err) != FC_OK)
        abort(); /* only FC_ERR_NOMEM is allowed, and nothing here injects it */
    /* A response to HEAD has a Content-Length but no body: framing is checked without HEAD. */
    if (out.len && !memmem(data, size, "HEAD", 4)) {
        http_parser p;
        check c = {0};
        http_parser_init(&p, HTTP_RESPONSE);
        p.data = &c;
        size_t n = http_parser_execute(&p, &ck_settings, (const char *)out.data, out.len);
        if (n != out.len || HTTP_PARSER_ERRNO(&p) != HPE_OK || c.in_message)
            abort();
        if (c.responses == 0)
            abort();
        /* One response per request: never more responses than request lines could exist. */
        size_t lines = 1;
        for (size_t i = 0; i < size; i++)
            lines += data[i] == '\n';
        if (c.responses > lines)
            abort();
    }
    fc_buf_free(&out);
    return 0;
}
