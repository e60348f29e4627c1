/* api.c: routes of the operators' HTTP API, their JSON, auth, and the safetensors export.
 *
 * api owns its read-only store handles (the loop's, opened on first use, and a small pool for
 * reads on the thread pool, each used by one thread at a time), strict path and query parsing,
 * the admin-token check (constant time), and the export stream, which reads the model from the
 * store one bounded piece per pull and checks the whole SHA-256 before the last byte goes out.
 * It also serves the dashboard page (GET /) from the bytes compiled into the binary
 * (server/dashboard.h), under a Content-Security-Policy that admits only that page's script.
 * Nothing from a request ever names a file: paths select routes and numbers only. It never
 * writes to the store and never exposes tokens or their hashes.
 */
#include "server/api.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <http_parser.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/safetensors.h"
#include "server/dashboard.h"
#include "storage/store.h"

#define API_DEFAULT_LIST 50
#define API_DEFAULT_MAX_LIST 1000
#define API_DEFAULT_PIECE 262144
#define API_MAX_CHAIN 100
#define API_MAX_TENSORS 1000000
#define API_BUSY_TIMEOUT_MS 50
#define API_CSP_MAX 512
#define API_POOL_MAX 8

struct api {
    char *store_path;
    uint8_t admin_sha[32];
    int have_admin;
    int auth_reads;
    metrics_registry *metrics;
    metrics_fedcoord *http_metrics;
    api_provider provider;
    size_t max_list, export_piece;
    store *st;               /* the loop thread's handle (export, and the path without a loop) */
    int refs;                /* 1 for the owner + 1 per running export or store job */
    uv_loop_t *loop;         /* set by api_server_start: store reads then run on the thread pool */
    pthread_mutex_t pool_mu; /* guards pool: read handles of the thread-pool jobs */
    store *pool[API_POOL_MAX];
    size_t pool_n;
    char dashboard_csp[API_CSP_MAX]; /* the page's Content-Security-Policy (dashboard_csp) */
};

static void sha256(const void *d, size_t n, uint8_t out[32]) {
    unsigned int len = 0;
    if (EVP_Digest(d, n, out, &len, EVP_sha256(), NULL) != 1)
        memset(out, 0, 32);
}

static void hex32(const uint8_t *h, char out[65]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = digits[h[i] >> 4];
        out[2 * i + 1] = digits[h[i] & 15];
    }
    out[64] = 0;
}

/* The dashboard's Content-Security-Policy: nothing may load from anywhere but its own origin's
 * API; the one inline script runs because of its SHA-256 (so an injected script would not), the
 * inline style is allowed, images only as data: URLs. The hash covers the bytes between the
 * page's first "<script>" and the following "</script>", as browsers hash them. */
/* Offset of needle in hay[from..n), or n when absent. */
static size_t find_bytes(const char *hay, size_t n, size_t from, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = from; i + k <= n; i++)
        if (memcmp(hay + i, needle, k) == 0) return i;
    return n;
}

static fc_status dashboard_csp(char *out, size_t size, fc_error *err) {
    const char *page = (const char *)fc_dashboard_html;
    size_t n = fc_dashboard_html_len;
    size_t start = find_bytes(page, n, 0, "<script>");
    if (start < n) start += strlen("<script>");
    size_t end = start < n ? find_bytes(page, n, start, "</script>") : n;
    if (end >= n)
        return fc_error_set(err, FC_ERR_CORRUPT, "api: the dashboard page has no <script> block");
    uint8_t h[32];
    unsigned char b64[48];
    sha256(page + start, end - start, h);
    if (EVP_EncodeBlock(b64, h, 32) != 44)
        return fc_error_set(err, FC_ERR_SYSTEM, "api: base64 of the dashboard hash failed");
    int len = snprintf(out, size,
                       "default-src 'none'; script-src 'sha256-%s'; style-src 'unsafe-inline'; "
                       "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                       "frame-ancestors 'none'",
                       (const char *)b64);
    if (len < 0 || (size_t)len >= size)
        return fc_error_set(err, FC_ERR_LIMIT, "api: the dashboard CSP does not fit");
    return FC_OK;
}

fc_status api_new(const api_config *cfg, api **out, fc_error *err) {
    if (!cfg || cfg->version != API_CONFIG_V1 || !cfg->store_path || !*cfg->store_path)
        return fc_error_set(err, FC_ERR_CONFIG, "api: config version or store path missing");
    if (cfg->provider.version != API_PROVIDER_V1)
        return fc_error_set(err, FC_ERR_CONFIG, "api: provider version %d is not %d",
                            cfg->provider.version, API_PROVIDER_V1);
    if (cfg->auth_reads && !(cfg->admin_token && *cfg->admin_token))
        return fc_error_set(err, FC_ERR_CONFIG,
                            "api: auth on reads needs an admin token, none is set");
    char csp[API_CSP_MAX];
    fc_status st = dashboard_csp(csp, sizeof csp, err);
    if (st != FC_OK) return st;
    api *a = fc_calloc(1, sizeof *a);
    if (!a || !(a->store_path = fc_strdup(cfg->store_path))) {
        fc_free(a);
        return fc_error_set(err, FC_ERR_NOMEM, "api: no memory");
    }
    if (cfg->admin_token && *cfg->admin_token) {
        sha256(cfg->admin_token, strlen(cfg->admin_token), a->admin_sha);
        a->have_admin = 1;
    }
    a->auth_reads = cfg->auth_reads;
    a->metrics = cfg->metrics;
    a->http_metrics = cfg->http_metrics;
    a->provider = cfg->provider;
    a->max_list = cfg->max_list ? cfg->max_list : API_DEFAULT_MAX_LIST;
    a->export_piece = cfg->export_piece ? cfg->export_piece : API_DEFAULT_PIECE;
    a->refs = 1;
    memcpy(a->dashboard_csp, csp, sizeof csp);
    if (pthread_mutex_init(&a->pool_mu, NULL) != 0) {
        fc_free(a->store_path);
        fc_free(a);
        return fc_error_set(err, FC_ERR_SYSTEM, "api: pthread_mutex_init failed");
    }
    *out = a;
    return FC_OK;
}

static void api_unref(api *a) {
    if (--a->refs > 0)
        return;
    store_close(a->st);
    for (size_t i = 0; i < a->pool_n; i++)
        store_close(a->pool[i]);
    pthread_mutex_destroy(&a->pool_mu);
    fc_free(a->store_path);
    OPENSSL_cleanse(a->admin_sha, sizeof a->admin_sha);
    fc_free(a);
}

void api_free(api *a) {
    if (a)
        api_unref(a);
}

void api_on_status(void *api_ptr, int status) {
    api *a = api_ptr;
    if (a->http_metrics)
        metrics_fedcoord_http(a->http_metrics, status);
}

fc_status api_server_start(api *a, uv_loop_t *loop, const http_server_config *http_cfg,
                           http_server **out, fc_error *err) {
    http_server_config cfg = *http_cfg;
    cfg.handler = api_handle;
    cfg.handler_ud = a;
    cfg.on_status = api_on_status;
    a->loop = loop;
    return http_server_start(loop, &cfg, out, err);
}

/* ---- responses ---- */

static void respond_json(http_response *res, int status, json_t *obj) {
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!text) {
        http_respond_error(res, 503, "no_memory", "out of memory building the response");
        return;
    }
    size_t n = strlen(text);
    text[n] = '\n'; /* replace the NUL: the body is counted, not terminated */
    http_respond(res, status, "application/json", text, n + 1);
    free(text);
}

/* jansson setters that may fail on memory; a failure makes the object NULL-like: callers
 * check once with json_ok at the end. */
static int set_new(json_t *o, const char *k, json_t *v, int *ok) {
    if (!v || json_object_set_new(o, k, v) != 0)
        *ok = 0;
    return *ok;
}

/* Adds child (owned) to o under key when ok, then answers 200 with o, or 503 when memory ran out
 * here or earlier (ok == 0). Takes o and child. */
static void respond_with_member(http_response *res, json_t *o, const char *key, json_t *child,
                                int ok) {
    if (ok)
        set_new(o, key, child, &ok);
    else
        json_decref(child);
    if (!ok) {
        json_decref(o);
        http_respond_error(res, 503, "no_memory", "out of memory");
        return;
    }
    respond_json(res, 200, o);
}

static json_t *json_text_or_null(const char *s) { return s ? json_string(s) : json_null(); }

/* Embeds stored JSON text as JSON; text that does not parse is kept as a string. */
static json_t *json_embedded(const char *s) {
    if (!s)
        return json_null();
    json_t *v = json_loads(s, JSON_DECODE_ANY, NULL);
    return v ? v : json_string(s);
}

static json_t *json_hash(const uint8_t *h) {
    char hex[65];
    hex32(h, hex);
    return json_string(hex);
}

static int is_zero32(const uint8_t *h) {
    for (int i = 0; i < 32; i++)
        if (h[i])
            return 0;
    return 1;
}

/* ---- store access ---- */

static store *get_store(api *a, http_response *res) {
    if (a->st)
        return a->st;
    /* A short busy timeout: a WAL reader rarely waits, and when it must, the loop must not
     * sleep for seconds; the operator gets 503 and retries. */
    store_options opt = {.version = STORE_OPTIONS_V1,
                         .readonly = 1,
                         .must_exist = 1,
                         .busy_timeout_ms = API_BUSY_TIMEOUT_MS};
    fc_error err = {0};
    if (store_open(a->store_path, &opt, &a->st, &err) != FC_OK) {
        a->st = NULL;
        http_respond_error(res, 503, "store_unavailable", "the store cannot be read: %s", err.msg);
        return NULL;
    }
    return a->st;
}

static void store_failed(http_response *res, fc_status st, const fc_error *err) {
    if (st == FC_ERR_NOT_FOUND)
        http_respond_error(res, 404, "not_found", "%s", err->msg);
    else if (st == FC_ERR_NOMEM)
        http_respond_error(res, 503, "no_memory", "%s", err->msg);
    else
        http_respond_error(res, 503, "store_unavailable", "%s", err->msg);
}

/* A read handle for a thread-pool job: a pooled one, or a new one (5 s busy timeout: this
 * thread may wait). On failure, answers 503 in res and returns NULL. Any thread. */
static store *pool_take(api *a, http_response *res) {
    store *s = NULL;
    pthread_mutex_lock(&a->pool_mu);
    if (a->pool_n)
        s = a->pool[--a->pool_n];
    pthread_mutex_unlock(&a->pool_mu);
    if (s)
        return s;
    store_options opt = {.version = STORE_OPTIONS_V1, .readonly = 1, .must_exist = 1};
    fc_error err = {0};
    if (store_open(a->store_path, &opt, &s, &err) != FC_OK) {
        http_respond_error(res, 503, "store_unavailable", "the store cannot be read: %s", err.msg);
        return NULL;
    }
    return s;
}

static void pool_give(api *a, store *s) {
    pthread_mutex_lock(&a->pool_mu);
    if (a->pool_n < API_POOL_MAX) {
        a->pool[a->pool_n++] = s;
        s = NULL;
    }
    pthread_mutex_unlock(&a->pool_mu);
    store_close(s);
}

/* ---- auth ---- */

/* 1 if the Authorization header is "Bearer <admin token>". Compares SHA-256 digests with
 * CRYPTO_memcmp, so the time taken does not depend on how much of the token matched. */
static int token_ok(const api *a, const char *authorization) {
    if (!a->have_admin || !authorization)
        return 0;
    if (strncasecmp(authorization, "Bearer ", 7) != 0)
        return 0;
    const char *tok = authorization + 7;
    while (*tok == ' ')
        tok++;
    size_t n = strlen(tok);
    while (n && (tok[n - 1] == ' ' || tok[n - 1] == '\t'))
        n--;
    uint8_t h[32];
    sha256(tok, n, h);
    int same = CRYPTO_memcmp(h, a->admin_sha, 32) == 0;
    OPENSSL_cleanse(h, sizeof h);
    return same;
}

static void refuse_auth(http_response *res, const char *authorization) {
    http_response_header(res, "WWW-Authenticate", "Bearer realm=\"fedcoord\"");
    if (!authorization)
        http_respond_error(res, 401, "unauthorized",
                           "this endpoint needs Authorization: Bearer <admin token>");
    else
        http_respond_error(res, 401, "unauthorized", "the bearer token is not the admin token");
}

/* ---- path and query parsing ---- */

/* A positive decimal id without sign or leading zero, at most 18 digits (fits int64). */
static int parse_id(const char *s, size_t n, int64_t *out) {
    if (n == 0 || n > 18 || s[0] == '0')
        return 0;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}

typedef struct list_query {
    size_t limit;
    int64_t before; /* INT64_MAX = from the newest */
} list_query;

/* Accepts "", "limit=N", "before=N" joined by '&', each at most once. */
static int parse_list_query(const api *a, const char *q, list_query *out, char *why,
                            size_t why_size) {
    out->limit = API_DEFAULT_LIST < a->max_list ? API_DEFAULT_LIST : a->max_list;
    out->before = INT64_MAX;
    int seen_limit = 0, seen_before = 0;
    while (*q) {
        const char *end = strchr(q, '&');
        size_t n = end ? (size_t)(end - q) : strlen(q);
        const char *eq = memchr(q, '=', n);
        int64_t v;
        if (!eq) {
            snprintf(why, why_size, "query parameter without a value");
            return 0;
        }
        size_t klen = (size_t)(eq - q), vlen = n - klen - 1;
        if (klen == 5 && memcmp(q, "limit", 5) == 0 && !seen_limit) {
            if (!parse_id(eq + 1, vlen, &v) || (uint64_t)v > a->max_list) {
                snprintf(why, why_size, "limit must be an integer from 1 to %zu", a->max_list);
                return 0;
            }
            out->limit = (size_t)v;
            seen_limit = 1;
        } else if (klen == 6 && memcmp(q, "before", 6) == 0 && !seen_before) {
            if (!parse_id(eq + 1, vlen, &v)) {
                snprintf(why, why_size, "before must be a positive integer");
                return 0;
            }
            out->before = v;
            seen_before = 1;
        } else {
            snprintf(why, why_size, "unknown or repeated query parameter (allowed: limit, before)");
            return 0;
        }
        q += n;
        if (*q == '&') {
            q++;
            if (!*q) {
                snprintf(why, why_size, "query ends with '&'");
                return 0;
            }
        }
    }
    return 1;
}

/* The newest `limit` ids below `before` from an ascending walk, kept in a ring. */
typedef struct id_ring {
    int64_t *ids;
    size_t cap, count, head; /* head: next slot to write */
    int64_t before;
} id_ring;

static void ring_push(id_ring *r, int64_t id) {
    r->ids[r->head] = id;
    r->head = (r->head + 1) % r->cap;
    if (r->count < r->cap)
        r->count++;
}

/* The i-th newest id (0 = newest). */
static int64_t ring_newest(const id_ring *r, size_t i) {
    return r->ids[(r->head + r->cap - 1 - i) % r->cap];
}

static fc_status ring_round_cb(void *ud, const store_round *rd) {
    id_ring *r = ud;
    if (rd->id >= r->before)
        return FC_ERR_RANGE; /* ascending: nothing later qualifies */
    ring_push(r, rd->id);
    return FC_OK;
}

static fc_status ring_model_cb(void *ud, const store_model_info *m) {
    id_ring *r = ud;
    if (m->version >= r->before)
        return FC_ERR_RANGE;
    ring_push(r, m->version);
    return FC_OK;
}

/* ---- JSON of store records ---- */

/* The API spells states and outcomes in lower case (the store's names are upper case). */
static const char *round_state_text(store_round_state st) {
    switch (st) {
    case STORE_ROUND_WAITING:
        return "waiting";
    case STORE_ROUND_TRAINING:
        return "training";
    case STORE_ROUND_AGGREGATING:
        return "aggregating";
    case STORE_ROUND_COMMITTED:
        return "committed";
    case STORE_ROUND_FAILED:
        return "failed";
    }
    return "unknown";
}

static const char *outcome_text(store_outcome o) {
    switch (o) {
    case STORE_OUTCOME_ACCEPTED:
        return "accepted";
    case STORE_OUTCOME_REJECTED:
        return "rejected";
    case STORE_OUTCOME_TIMED_OUT:
        return "timed_out";
    case STORE_OUTCOME_DROPPED:
        return "dropped";
    }
    return "unknown";
}

static json_t *round_json(const store_round *r) {
    int ok = 1;
    json_t *o = json_object();
    if (!o)
        return NULL;
    set_new(o, "id", json_integer(r->id), &ok);
    set_new(o, "state", json_string(round_state_text(r->state)), &ok);
    set_new(o, "base_version", r->base_version ? json_integer(r->base_version) : json_null(), &ok);
    set_new(o, "model_version", r->model_version ? json_integer(r->model_version) : json_null(),
            &ok);
    set_new(o, "started_at_ms", json_integer(r->started_at), &ok);
    set_new(o, "ended_at_ms", r->ended_at ? json_integer(r->ended_at) : json_null(), &ok);
    set_new(o, "duration_ms", r->ended_at ? json_integer(r->ended_at - r->started_at) : json_null(),
            &ok);
    set_new(o, "failure_reason", json_text_or_null(r->failure_reason), &ok);
    if (!ok) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static fc_status participant_cb(void *ud, const store_participant *p) {
    json_t *arr = ud;
    int ok = 1;
    json_t *o = json_object();
    if (!o)
        return FC_ERR_NOMEM;
    set_new(o, "client", json_string(p->client ? p->client : ""), &ok);
    set_new(o, "outcome", json_string(outcome_text(p->outcome)), &ok);
    set_new(o, "reason", json_text_or_null(p->reason), &ok);
    set_new(o, "num_examples", json_integer((json_int_t)p->num_examples), &ok);
    set_new(o, "bytes", json_integer((json_int_t)p->bytes), &ok);
    set_new(o, "update_sha256", p->update_sha256 ? json_hash(p->update_sha256) : json_null(), &ok);
    set_new(o, "metrics", json_embedded(p->metrics_json), &ok);
    if (!ok || json_array_append_new(arr, o) != 0) {
        if (ok)
            json_decref(o);
        return FC_ERR_NOMEM;
    }
    return FC_OK;
}

static json_t *model_json(const store_model_info *m) {
    int ok = 1;
    json_t *o = json_object();
    if (!o)
        return NULL;
    set_new(o, "version", json_integer(m->version), &ok);
    set_new(o, "parent_version", m->parent_version ? json_integer(m->parent_version) : json_null(),
            &ok);
    set_new(o, "round_id", m->round_id ? json_integer(m->round_id) : json_null(), &ok);
    set_new(o, "sha256", json_hash(m->sha256), &ok);
    set_new(o, "parent_sha256",
            is_zero32(m->parent_sha256) ? json_null() : json_hash(m->parent_sha256), &ok);
    set_new(o, "chain_hash", json_hash(m->chain_hash), &ok);
    set_new(o, "size", json_integer((json_int_t)m->size), &ok);
    set_new(o, "chunk_size", json_integer((json_int_t)m->chunk_size), &ok);
    set_new(o, "num_chunks", json_integer((json_int_t)m->num_chunks), &ok);
    set_new(o, "created_at_ms", json_integer(m->created_at), &ok);
    set_new(o, "pruned", json_boolean(m->pruned_at != 0), &ok);
    set_new(o, "tensors", json_embedded(m->tensor_specs_json), &ok);
    if (!ok) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* ---- endpoints ---- */

/* GET / and /index.html: the dashboard page from the binary, under its CSP. It holds no data,
 * so it needs no token even with auth_reads; its script asks the operator for one. */
static void get_dashboard(api *a, http_response *res) {
    if (http_response_header(res, "Content-Security-Policy", a->dashboard_csp) != FC_OK ||
        http_response_header(res, "X-Frame-Options", "DENY") != FC_OK ||
        http_response_header(res, "Referrer-Policy", "no-referrer") != FC_OK ||
        http_respond(res, 200, "text/html; charset=utf-8", fc_dashboard_html,
                     fc_dashboard_html_len) != FC_OK)
        http_respond_error(res, 503, "no_memory", "out of memory");
}

static void get_healthz(api *a, const http_request *req, http_response *res) {
    (void)a;
    (void)req;
    respond_json(res, 200, json_pack("{s:s}", "status", "ok"));
}

static void get_readyz(api *a, const http_request *req, http_response *res) {
    (void)req;
    const char *why = NULL;
    int ready = a->provider.ready ? a->provider.ready(a->provider.ctx, &why) : 0;
    if (ready)
        respond_json(res, 200, json_pack("{s:b}", "ready", 1));
    else
        http_respond_error(res, 503, "not_ready", "%s", why ? why : "the coordinator is not ready");
}

static void get_metrics(api *a, const http_request *req, http_response *res) {
    (void)req;
    if (!a->metrics) {
        http_respond_error(res, 503, "unavailable", "no metrics registry");
        return;
    }
    fc_buf b = FC_BUF_INIT;
    fc_error err = {0};
    if (metrics_render(a->metrics, &b, &err) != FC_OK)
        http_respond_error(res, 503, "no_memory", "%s", err.msg);
    else
        http_respond(res, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
    fc_buf_free(&b);
}

static void get_status(api *a, const http_request *req, http_response *res) {
    (void)req;
    if (!a->provider.status) {
        http_respond_error(res, 503, "unavailable", "live status is not available");
        return;
    }
    json_t *o = json_object();
    fc_error err = {0};
    if (!o) {
        http_respond_error(res, 503, "no_memory", "out of memory");
        return;
    }
    if (a->provider.status(a->provider.ctx, o, &err) != FC_OK) {
        json_decref(o);
        http_respond_error(res, 503, "unavailable", "%s", err.msg[0] ? err.msg : "no status");
        return;
    }
    respond_json(res, 200, o);
}

/* Walks ids, then fetches the newest `limit` below `before`, newest first. */
static void get_list(store *s, list_query q, http_response *res, int rounds) {
    id_ring ring = {.cap = q.limit, .before = q.before};
    json_t *arr = NULL, *o = NULL;
    fc_error err = {0};
    fc_status st;
    if (!(ring.ids = fc_mallocarray(q.limit, sizeof *ring.ids)) || !(arr = json_array())) {
        st = fc_error_set(&err, FC_ERR_NOMEM, "out of memory listing");
        goto fail;
    }
    st = rounds ? store_round_list(s, 0, 0, ring_round_cb, &ring, &err)
                : store_model_list(s, 0, 0, ring_model_cb, &ring, &err);
    if (st == FC_ERR_RANGE)
        st = FC_OK;
    if (st != FC_OK)
        goto fail;
    for (size_t i = 0; i < ring.count; i++) {
        int64_t id = ring_newest(&ring, i);
        json_t *item;
        if (rounds) {
            store_round r;
            if ((st = store_round_get(s, id, &r, &err)) != FC_OK)
                goto fail;
            item = round_json(&r);
            store_round_clear(&r);
        } else {
            store_model_info m;
            if ((st = store_model_info_get(s, id, &m, &err)) != FC_OK)
                goto fail;
            item = model_json(&m);
            store_model_info_clear(&m);
        }
        if (!item || json_array_append_new(arr, item) != 0) {
            st = fc_error_set(&err, FC_ERR_NOMEM, "out of memory listing");
            goto fail;
        }
    }
    o = json_object();
    int ok = o != NULL;
    if (ok)
        set_new(o, rounds ? "rounds" : "models", arr, &ok); /* takes arr, even on failure */
    else
        json_decref(arr);
    arr = NULL;
    if (ok)
        set_new(o, "next_before",
                ring.count == q.limit ? json_integer(ring_newest(&ring, ring.count - 1))
                                      : json_null(),
                &ok);
    fc_free(ring.ids);
    if (!ok) {
        json_decref(o);
        http_respond_error(res, 503, "no_memory", "out of memory listing");
        return;
    }
    respond_json(res, 200, o);
    return;
fail:
    json_decref(arr);
    fc_free(ring.ids);
    store_failed(res, st, &err);
}

static void get_round(store *s, int64_t id, http_response *res) {
    store_round r;
    fc_error err = {0};
    fc_status st = store_round_get(s, id, &r, &err);
    if (st != FC_OK) {
        if (st == FC_ERR_NOT_FOUND)
            http_respond_error(res, 404, "not_found", "round %" PRId64 " does not exist", id);
        else
            store_failed(res, st, &err);
        return;
    }
    json_t *o = round_json(&r), *parts = json_array();
    int ok = o && parts;
    if (ok) {
        set_new(o, "config", json_embedded(r.config_json), &ok);
        set_new(o, "report", json_embedded(r.report_json), &ok);
        set_new(o, "metrics", json_embedded(r.metrics_json), &ok);
    }
    store_round_clear(&r);
    if (ok && (st = store_participants_list(s, id, participant_cb, parts, &err)) != FC_OK) {
        json_decref(o);
        json_decref(parts);
        store_failed(res, st, &err);
        return;
    }
    respond_with_member(res, o, "participants", parts, ok);
}

static fc_status client_cb(void *ud, const store_client *c) {
    json_t *arr = ud;
    int ok = 1;
    json_t *o = json_object();
    if (!o)
        return FC_ERR_NOMEM;
    /* Never the token hash. */
    set_new(o, "name", json_string(c->name), &ok);
    set_new(o, "created_at_ms", json_integer(c->created_at), &ok);
    set_new(o, "revoked", json_boolean(c->revoked_at != 0), &ok);
    set_new(o, "rounds_participated", json_integer(c->rounds_participated), &ok);
    set_new(o, "updates_accepted", json_integer(c->updates_accepted), &ok);
    set_new(o, "rejections", json_integer(c->updates_rejected), &ok);
    set_new(o, "updates_timed_out", json_integer(c->updates_timed_out), &ok);
    set_new(o, "updates_dropped", json_integer(c->updates_dropped), &ok);
    set_new(o, "last_round", c->last_round ? json_integer(c->last_round) : json_null(), &ok);
    set_new(o, "connected", json_false(), &ok);
    if (!ok || json_array_append_new(arr, o) != 0) {
        if (ok)
            json_decref(o);
        return FC_ERR_NOMEM;
    }
    return FC_OK;
}

/* The store part of /v1/clients (any thread): *out is the array, or NULL after answering
 * an error in res. */
static void read_clients(store *s, http_response *res, json_t **out) {
    json_t *arr = json_array();
    fc_error err = {0};
    fc_status st = arr ? store_client_list(s, client_cb, arr, &err)
                       : fc_error_set(&err, FC_ERR_NOMEM, "out of memory");
    *out = NULL;
    if (st != FC_OK) {
        json_decref(arr);
        store_failed(res, st, &err);
        return;
    }
    *out = arr;
}

/* The live part (loop thread): the provider adds its fields, then the answer. Takes arr. */
static void finish_clients(api *a, json_t *arr, http_response *res) {
    if (a->provider.client_live) {
        size_t i;
        json_t *o;
        json_array_foreach(arr, i, o) {
            const char *name = json_string_value(json_object_get(o, "name"));
            if (name)
                a->provider.client_live(a->provider.ctx, name, o);
        }
    }
    respond_json(res, 200, json_pack("{s:o}", "clients", arr));
}

/* ---- store reads off the loop ---- */

typedef struct store_job {
    uv_work_t work;
    api *a;
    http_deferred *d;
    int route; /* route_id */
    int64_t id;
    list_query q;
    json_t *clients;
} store_job;

static void store_read(api *a, store *s, int which, int64_t id, list_query q, http_response *res,
                       json_t **clients);

static void job_work(uv_work_t *w) {
    store_job *j = w->data;
    http_response *res = http_deferred_response(j->d);
    store *s = pool_take(j->a, res);
    if (!s)
        return;
    store_read(j->a, s, j->route, j->id, j->q, res, &j->clients);
    pool_give(j->a, s);
}

static void job_done(uv_work_t *w, int status) {
    store_job *j = w->data;
    http_response *res = http_deferred_response(j->d);
    if (status != 0) {
        json_decref(j->clients);
        j->clients = NULL;
        http_respond_error(res, 503, "unavailable", "the store read was cancelled");
    }
    if (j->clients)
        finish_clients(j->a, j->clients, res);
    http_deferred_finish(j->d);
    api_unref(j->a);
    fc_free(j);
}

/* Runs a store read on the thread pool when served by a loop, else right here. */
static void run_store_read(api *a, int which, int64_t id, list_query q, http_response *res) {
    if (a->loop) {
        store_job *j = fc_calloc(1, sizeof *j);
        http_deferred *d = j ? http_defer(res) : NULL;
        if (d) {
            j->a = a;
            j->d = d;
            j->route = which;
            j->id = id;
            j->q = q;
            j->work.data = j;
            if (uv_queue_work(a->loop, &j->work, job_work, job_done) == 0) {
                a->refs++;
                return;
            }
            http_defer_cancel(d); /* libuv refused: read here after all */
        }
        fc_free(j); /* no connection, no memory, or no queue: read here */
    }
    store *s = get_store(a, res);
    if (!s)
        return;
    json_t *clients = NULL;
    store_read(a, s, which, id, q, res, &clients);
    if (clients)
        finish_clients(a, clients, res);
}

static void get_model(store *s, int64_t version, http_response *res) {
    store_model_info m;
    fc_error err = {0};
    fc_status st = store_model_info_get(s, version, &m, &err);
    if (st != FC_OK) {
        if (st == FC_ERR_NOT_FOUND)
            http_respond_error(res, 404, "not_found", "model version %" PRId64 " does not exist",
                               version);
        else
            store_failed(res, st, &err);
        return;
    }
    json_t *o = model_json(&m), *chain = json_array();
    int64_t parent = m.parent_version;
    store_model_info_clear(&m);
    int ok = o && chain;
    /* The parent chain, nearest first, bounded. */
    for (int i = 0; ok && parent && i < API_MAX_CHAIN; i++) {
        store_model_info p;
        if ((st = store_model_info_get(s, parent, &p, &err)) != FC_OK)
            break;
        json_t *item = json_pack("{s:I,s:o,s:b}", "version", (json_int_t)p.version, "sha256",
                                 json_hash(p.sha256), "pruned", p.pruned_at != 0);
        parent = p.parent_version;
        store_model_info_clear(&p);
        if (!item || json_array_append_new(chain, item) != 0)
            ok = 0;
    }
    respond_with_member(res, o, "parent_chain", chain, ok);
}

/* ---- tensor specs JSON ---- */

void api_specs_free(fc_tensor_spec *specs, size_t count) {
    if (!specs)
        return;
    for (size_t i = 0; i < count; i++)
        fc_free(specs[i].name);
    fc_free(specs);
}

fc_status api_specs_to_json(const fc_tensor_spec *specs, size_t count, char **out, fc_error *err) {
    json_t *arr = json_array();
    int ok = arr != NULL;
    for (size_t i = 0; ok && i < count; i++) {
        const char *dt = fc_dtype_name(specs[i].dtype);
        if (!specs[i].name || specs[i].ndim > FC_MAX_DIMS || fc_dtype_size(specs[i].dtype) == 0) {
            json_decref(arr);
            return fc_error_set(err, FC_ERR_INVALID, "tensor spec %zu is invalid", i);
        }
        json_t *shape = json_array();
        ok = shape != NULL;
        for (uint32_t d = 0; ok && d < specs[i].ndim; d++)
            ok = json_array_append_new(shape, json_integer((json_int_t)specs[i].shape[d])) == 0;
        json_t *o =
            ok ? json_pack("{s:s,s:s,s:o}", "name", specs[i].name, "dtype", dt, "shape", shape)
               : NULL;
        if (!ok)
            json_decref(shape);
        ok = o && json_array_append_new(arr, o) == 0;
    }
    char *text = ok ? json_dumps(arr, JSON_COMPACT) : NULL;
    json_decref(arr);
    if (!text)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory encoding tensor specs");
    *out = fc_strdup(text);
    free(text);
    if (!*out)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory encoding tensor specs");
    return FC_OK;
}

fc_status api_specs_from_json(const char *text, size_t max_count, fc_tensor_spec **out,
                              size_t *count, fc_error *err) {
    json_error_t jerr;
    json_t *arr = json_loads(text ? text : "", JSON_REJECT_DUPLICATES, &jerr);
    if (!arr || !json_is_array(arr)) {
        json_decref(arr);
        return fc_error_set(err, FC_ERR_FORMAT, "tensor specs are not a JSON array: %s",
                            arr ? "not an array" : jerr.text);
    }
    size_t n = json_array_size(arr);
    if (n > max_count) {
        json_decref(arr);
        return fc_error_set(err, FC_ERR_LIMIT, "%zu tensor specs, at most %zu", n, max_count);
    }
    fc_tensor_spec *specs = fc_calloc(n ? n : 1, sizeof *specs);
    fc_status st = FC_OK;
    if (!specs) {
        json_decref(arr);
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory for %zu tensor specs", n);
    }
    for (size_t i = 0; i < n && st == FC_OK; i++) {
        json_t *e = json_array_get(arr, i);
        json_t *name = json_object_get(e, "name"), *dtype = json_object_get(e, "dtype"),
               *shape = json_object_get(e, "shape");
        if (!json_is_object(e) || !json_is_string(name) || !json_is_string(dtype) ||
            !json_is_array(shape) || json_object_size(e) != 3) {
            st = fc_error_set(err, FC_ERR_FORMAT,
                              "tensor spec %zu is not {\"name\",\"dtype\",\"shape\"}", i);
            break;
        }
        size_t nlen = json_string_length(name);
        if (nlen == 0 || nlen > FC_MAX_TENSOR_NAME || memchr(json_string_value(name), 0, nlen)) {
            st = fc_error_set(err, FC_ERR_FORMAT, "tensor spec %zu has a bad name", i);
            break;
        }
        specs[i].dtype = fc_dtype_parse(json_string_value(dtype));
        if (specs[i].dtype == FC_DTYPE_INVALID) {
            st = fc_error_set(err, FC_ERR_DTYPE, "tensor spec %zu ('%s') has dtype '%s'", i,
                              json_string_value(name), json_string_value(dtype));
            break;
        }
        if (json_array_size(shape) > FC_MAX_DIMS) {
            st = fc_error_set(err, FC_ERR_FORMAT, "tensor spec %zu has more than %d dimensions", i,
                              FC_MAX_DIMS);
            break;
        }
        specs[i].ndim = (uint32_t)json_array_size(shape);
        for (uint32_t d = 0; d < specs[i].ndim; d++) {
            json_t *dim = json_array_get(shape, d);
            if (!json_is_integer(dim) || json_integer_value(dim) < 0) {
                st = fc_error_set(err, FC_ERR_FORMAT,
                                  "tensor spec %zu dimension %u is not a non-negative integer", i,
                                  d);
                break;
            }
            specs[i].shape[d] = (uint64_t)json_integer_value(dim);
        }
        if (st == FC_OK && !(specs[i].name = fc_strdup(json_string_value(name))))
            st = fc_error_set(err, FC_ERR_NOMEM, "out of memory for tensor names");
    }
    json_decref(arr);
    if (st != FC_OK) {
        api_specs_free(specs, n);
        return st;
    }
    *out = specs;
    *count = n;
    return FC_OK;
}

/* ---- safetensors export ---- */

typedef struct export_stream {
    api *a;
    int64_t version;
    fc_buf head; /* safetensors length + JSON header */
    size_t head_sent;
    uint64_t offset, size; /* model bytes produced, total */
    uint8_t expected[32];
    EVP_MD_CTX *md;
    fc_buf *out; /* during a store read */
} export_stream;

static fc_status export_sink(void *ud, const void *data, size_t len, uint64_t offset,
                             fc_error *err) {
    export_stream *x = ud;
    (void)offset;
    if (fc_buf_append(x->out, data, len) != FC_OK)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory exporting a model");
    return FC_OK;
}

static fc_status export_produce(void *ud, fc_buf *out, size_t max, fc_error *err) {
    export_stream *x = ud;
    if (x->head_sent < x->head.len) {
        size_t n = x->head.len - x->head_sent;
        if (n > max)
            n = max;
        fc_status st = fc_buf_append(out, x->head.data + x->head_sent, n);
        if (st != FC_OK)
            return fc_error_set(err, st, "out of memory exporting a model");
        x->head_sent += n;
        return FC_OK;
    }
    if (!x->a->st)
        return fc_error_set(err, FC_ERR_CLOSED, "the store was closed");
    uint64_t want = max < x->a->export_piece ? max : x->a->export_piece;
    if (want > x->size - x->offset)
        want = x->size - x->offset;
    size_t before = out->len;
    x->out = out;
    fc_status st =
        store_model_read_range(x->a->st, x->version, x->offset, want, export_sink, x, err);
    if (st != FC_OK)
        return st;
    size_t got = out->len - before;
    if (got != want)
        return fc_error_set(err, FC_ERR_CORRUPT,
                            "model version %" PRId64 ": read %zu bytes at offset %" PRIu64
                            ", expected %" PRIu64,
                            x->version, got, x->offset, want);
    if (EVP_DigestUpdate(x->md, out->data + before, got) != 1)
        return fc_error_set(err, FC_ERR_SYSTEM, "SHA-256 update failed");
    x->offset += got;
    if (x->offset == x->size) {
        /* Checked before the last piece leaves: a corrupt model never arrives whole. */
        uint8_t h[32];
        unsigned int hl = 0;
        if (EVP_DigestFinal_ex(x->md, h, &hl) != 1 || memcmp(h, x->expected, 32) != 0)
            return fc_error_set(err, FC_ERR_CORRUPT,
                                "model version %" PRId64 " does not match its SHA-256", x->version);
    }
    return FC_OK;
}

static void export_release(void *ud) {
    export_stream *x = ud;
    EVP_MD_CTX_free(x->md);
    fc_buf_free(&x->head);
    api_unref(x->a);
    fc_free(x);
}

static void get_safetensors(api *a, int64_t version, http_response *res) {
    store *s = get_store(a, res);
    if (!s)
        return;
    store_model_info m;
    fc_error err = {0};
    fc_status st = store_model_info_get(s, version, &m, &err);
    if (st != FC_OK) {
        if (st == FC_ERR_NOT_FOUND)
            http_respond_error(res, 404, "not_found", "model version %" PRId64 " does not exist",
                               version);
        else
            store_failed(res, st, &err);
        return;
    }
    fc_tensor_spec *specs = NULL;
    size_t count = 0;
    export_stream *x = NULL;
    if (m.pruned_at) {
        http_respond_error(res, 410, "gone",
                           "model version %" PRId64 " was pruned by retention; only its "
                           "metadata is kept",
                           version);
        goto done;
    }
    if ((st = api_specs_from_json(m.tensor_specs_json, API_MAX_TENSORS, &specs, &count, &err)) !=
        FC_OK) {
        http_respond_error(res, 500, "corrupt", "model version %" PRId64 ": %s", version, err.msg);
        goto done;
    }
    x = fc_calloc(1, sizeof *x);
    if (!x || !(x->md = EVP_MD_CTX_new()) || EVP_DigestInit_ex(x->md, EVP_sha256(), NULL) != 1) {
        http_respond_error(res, 503, "no_memory", "out of memory");
        goto done;
    }
    char hex[65], ver[24];
    hex32(m.sha256, hex);
    snprintf(ver, sizeof ver, "%" PRId64, version);
    fc_st_meta meta[] = {{"fedcoord_version", ver}, {"fedcoord_sha256", hex}};
    uint64_t data_len = 0;
    if ((st = fc_st_encode_header(specs, count, meta, 2, &x->head, &data_len, &err)) != FC_OK) {
        http_respond_error(res, 500, "corrupt", "model version %" PRId64 ": %s", version, err.msg);
        goto done;
    }
    if (data_len != m.size) {
        http_respond_error(res, 500, "corrupt",
                           "model version %" PRId64 ": tensor specs describe %" PRIu64
                           " bytes, the store holds %" PRIu64,
                           version, data_len, m.size);
        goto done;
    }
    x->a = a;
    x->version = version;
    x->size = m.size;
    memcpy(x->expected, m.sha256, 32);
    char disp[96];
    snprintf(disp, sizeof disp, "attachment; filename=\"model-v%" PRId64 ".safetensors\"", version);
    http_stream stream = {export_produce, export_release, x};
    if (http_response_header(res, "Content-Disposition", disp) != FC_OK ||
        http_response_header(res, "X-Fedcoord-Model-Version", ver) != FC_OK ||
        http_response_header(res, "X-Fedcoord-Model-SHA256", hex) != FC_OK ||
        http_respond_stream(res, 200, "application/octet-stream", x->head.len + m.size, &stream) !=
            FC_OK) {
        http_respond_error(res, 503, "no_memory", "out of memory");
        goto done;
    }
    a->refs++; /* released by export_release */
    x = NULL;
done:
    if (x) {
        EVP_MD_CTX_free(x->md);
        fc_buf_free(&x->head);
        fc_free(x);
    }
    api_specs_free(specs, count);
    store_model_info_clear(&m);
}

static void post_control(api *a, const char *action, http_response *res) {
    if (!a->provider.control) {
        http_respond_error(res, 503, "unavailable", "control is not available");
        return;
    }
    fc_error err = {0};
    fc_status st = a->provider.control(a->provider.ctx, action, &err);
    if (st == FC_OK) {
        FC_LOG(FC_LOG_INFO, "http control accepted", FC_LS("action", action));
        respond_json(res, 202, json_pack("{s:s}", "accepted", action));
    } else if (st == FC_ERR_STATE) {
        http_respond_error(res, 409, "conflict", "%s", err.msg[0] ? err.msg : "not now");
    } else {
        http_respond_error(res, 503, "unavailable", "%s", err.msg[0] ? err.msg : "failed");
    }
}

/* ---- routing ---- */

typedef enum route_id {
    R_DASHBOARD,
    R_HEALTHZ,
    R_READYZ,
    R_METRICS,
    R_STATUS,
    R_ROUNDS,
    R_ROUND,
    R_CLIENTS,
    R_MODELS,
    R_MODEL,
    R_EXPORT,
    R_PAUSE,
    R_RESUME,
    R_STOP,
} route_id;

typedef struct route {
    route_id id;
    const char *pattern; /* "{id}" stands for one numeric segment */
    int method;          /* HTTP_GET or HTTP_POST */
    int open;            /* never needs the token */
    int admin;           /* always needs the token */
    int query;           /* takes ?limit=&before= */
} route;

static const route routes[] = {
    {R_DASHBOARD, "/", HTTP_GET, 1, 0, 0},
    {R_DASHBOARD, "/index.html", HTTP_GET, 1, 0, 0},
    {R_HEALTHZ, "/healthz", HTTP_GET, 1, 0, 0},
    {R_READYZ, "/readyz", HTTP_GET, 1, 0, 0},
    {R_METRICS, "/metrics", HTTP_GET, 0, 0, 0},
    {R_STATUS, "/v1/status", HTTP_GET, 0, 0, 0},
    {R_ROUNDS, "/v1/rounds", HTTP_GET, 0, 0, 1},
    {R_ROUND, "/v1/rounds/{id}", HTTP_GET, 0, 0, 0},
    {R_CLIENTS, "/v1/clients", HTTP_GET, 0, 0, 0},
    {R_MODELS, "/v1/models", HTTP_GET, 0, 0, 1},
    {R_MODEL, "/v1/models/{id}", HTTP_GET, 0, 0, 0},
    {R_EXPORT, "/v1/models/{id}/safetensors", HTTP_GET, 0, 0, 0},
    {R_PAUSE, "/v1/control/pause", HTTP_POST, 0, 1, 0},
    {R_RESUME, "/v1/control/resume", HTTP_POST, 0, 1, 0},
    {R_STOP, "/v1/control/stop", HTTP_POST, 0, 1, 0},
};

/* Matches path against pattern segment by segment; "{id}" takes one strict number. */
static int route_match(const char *pattern, const char *path, int64_t *id) {
    const char *p = pattern, *s = path;
    while (*p && *s) {
        if (strncmp(p, "{id}", 4) == 0) {
            const char *end = strchr(s, '/');
            size_t n = end ? (size_t)(end - s) : strlen(s);
            if (!parse_id(s, n, id))
                return 0;
            p += 4;
            s += n;
        } else {
            if (*p != *s)
                return 0;
            p++;
            s++;
        }
    }
    return !*p && !*s;
}

void api_handle(void *api_ptr, const http_request *req, http_response *res) {
    api *a = api_ptr;
    const route *found = NULL;
    int64_t id = 0;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (route_match(routes[i].pattern, req->path, &id)) {
            found = &routes[i];
            break;
        }
    if (!found) {
        http_respond_error(res, 404, "not_found", "no such endpoint");
        return;
    }
    int method = req->method == HTTP_HEAD ? HTTP_GET : req->method; /* http drops the body */
    if (method != found->method) {
        http_response_header(res, "Allow", found->method == HTTP_GET ? "GET, HEAD" : "POST");
        http_respond_error(res, 405, "method_not_allowed", "%s is not allowed here; use %s",
                           req->method_name, found->method == HTTP_GET ? "GET" : "POST");
        return;
    }
    if (found->admin && !a->have_admin) {
        http_respond_error(res, 403, "control_disabled",
                           "no admin token is configured, so control is disabled");
        return;
    }
    if ((found->admin || (a->auth_reads && !found->open)) && !token_ok(a, req->authorization)) {
        FC_LOG(FC_LOG_WARN, "http auth refused", FC_LS("peer", req->peer),
               FC_LS("path", req->path));
        refuse_auth(res, req->authorization);
        return;
    }
    if (!found->query && req->query[0]) {
        http_respond_error(res, 400, "bad_request", "this endpoint takes no query parameters");
        return;
    }
    switch (found->id) {
    case R_DASHBOARD:
        get_dashboard(a, res);
        break;
    case R_HEALTHZ:
        get_healthz(a, req, res);
        break;
    case R_READYZ:
        get_readyz(a, req, res);
        break;
    case R_METRICS:
        get_metrics(a, req, res);
        break;
    case R_STATUS:
        get_status(a, req, res);
        break;
    case R_ROUNDS:
    case R_MODELS: {
        list_query q;
        char why[128];
        if (!parse_list_query(a, req->query, &q, why, sizeof why))
            http_respond_error(res, 400, "bad_request", "%s", why);
        else
            run_store_read(a, found->id, 0, q, res);
        break;
    }
    case R_ROUND:
    case R_CLIENTS:
    case R_MODEL: {
        list_query none = {0};
        run_store_read(a, found->id, id, none, res);
        break;
    }
    case R_EXPORT:
        get_safetensors(a, id, res);
        break;
    case R_PAUSE:
        post_control(a, "pause", res);
        break;
    case R_RESUME:
        post_control(a, "resume", res);
        break;
    case R_STOP:
        post_control(a, "stop", res);
        break;
    }
}

/* The store reads behind the deferred routes. Touches nothing of a but its config (any
 * thread); clients get their live fields later, on the loop. */
static void store_read(api *a, store *s, int which, int64_t id, list_query q, http_response *res,
                       json_t **clients) {
    (void)a;
    switch ((route_id)which) {
    case R_ROUNDS:
        get_list(s, q, res, 1);
        break;
    case R_MODELS:
        get_list(s, q, res, 0);
        break;
    case R_ROUND:
        get_round(s, id, res);
        break;
    case R_MODEL:
        get_model(s, id, res);
        break;
    case R_CLIENTS:
        read_clients(s, res, clients);
        break;
    default:
        http_respond_error(res, 500, "internal", "route %d is not a store read", which);
        break;
    }
}
