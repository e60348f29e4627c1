/* api.h: the operators' HTTP API (docs/http-api.md): routes, auth, JSON, model export, and the
 * dashboard page at GET / (server/dashboard.html, compiled in).
 *
 * api owns routing and the JSON of every endpoint. History (rounds, clients, models, model
 * bytes) comes from read-only store handles: lists and details are read on the libuv thread
 * pool (served by api_server_start), the export in bounded pieces on the loop. Live state
 * comes from the daemon through api_provider callbacks, always on the loop thread. It never
 * writes to the store and never touches the filesystem with anything taken from a request.
 * Every api_ function is for the loop thread only.
 */
#ifndef FC_SERVER_API_H
#define FC_SERVER_API_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "core/status.h"
#include "core/tensor.h"
#include "server/http.h"
#include "server/metrics.h"

/* What the daemon implements. Every callback is optional (NULL): the endpoint then answers
 * 503 "unavailable" (status, control) or uses the documented fallback. Called on the loop
 * thread during a request; they must not block. */
#define API_PROVIDER_V1 1
typedef struct api_provider {
    int version; /* API_PROVIDER_V1 */
    void *ctx;
    /* Fills the /v1/status object (an empty object on entry): mode, state, round {...},
     * model {...}, clients {...}, uptime_s, staging_bytes (see docs/http-api.md). A non-FC_OK
     * return gives 503 with err's message. */
    fc_status (*status)(void *ctx, json_t *out, fc_error *err);
    /* 1 when the daemon is ready (store open, model loaded). When 0, *why (may be left NULL)
     * says what is missing. NULL callback: never ready. */
    int (*ready)(void *ctx, const char **why);
    /* action is "pause", "resume" or "stop". FC_OK: 202 {"accepted":action}. FC_ERR_STATE:
     * 409 "conflict" with err's message (e.g. already paused). Anything else: 503. */
    fc_status (*control)(void *ctx, const char *action, fc_error *err);
    /* Adds live fields of client `name` to out (e.g. "connected": true, "last_seen_ms").
     * NULL: every client gets "connected": false. */
    void (*client_live)(void *ctx, const char *name, json_t *out);
} api_provider;

#define API_CONFIG_V1 1
typedef struct api_config {
    int version;               /* API_CONFIG_V1 */
    const char *store_path;    /* the daemon's database, opened read-only on first use */
    const char *admin_token;   /* Bearer token for control (and reads if auth_reads); NULL or ""
                                * disables control (403) */
    int auth_reads;            /* 1: every endpoint except /healthz and /readyz needs the token */
    metrics_registry *metrics; /* rendered by /metrics; NULL: 503 */
    metrics_fedcoord *http_metrics; /* optional: counts responses by status class */
    api_provider provider;
    size_t max_list;     /* largest ?limit= accepted [1000]; 0 = default */
    size_t export_piece; /* model bytes read from the store per pull [262144]; 0 = default */
} api_config;

typedef struct api api;

/* Creates the API. Copies strings; does not open the store yet (a missing database makes the
 * store endpoints answer 503 until it exists). Errors: FC_ERR_CONFIG, FC_ERR_NOMEM. */
fc_status api_new(const api_config *cfg, api **out, fc_error *err);
/* Drops the owner's reference. Exports and thread-pool reads still running hold their own
 * references and end when the HTTP server releases them or their after-work callback runs, so
 * keep running the loop until uv_run returns (libuv keeps it alive for queued work). The last
 * reference closes every store handle. NULL is allowed. */
void api_free(api *a);

/* The http_handler_fn of the API: pass api_handle with the api as handler_ud. */
void api_handle(void *api_ptr, const http_request *req, http_response *res);
/* The http on_status hook: counts responses in cfg->http_metrics (if set). */
void api_on_status(void *api_ptr, int status);

/* An HTTP server serving this API on loop; from then on the store reads of lists and details
 * run on loop's thread pool. http_cfg's handler, handler_ud and on_status are filled in here. Same
 * errors as http_server_start. Stop with http_server_stop before api_free. */
fc_status api_server_start(api *a, uv_loop_t *loop, const http_server_config *http_cfg,
                           http_server **out, fc_error *err);

/* ---- the tensor specs JSON stored with each model version ---- */

/* [{"name":"fc1.weight","dtype":"f32","shape":[64,10]}, ...] in model order; the model bytes
 * are the tensors' little-endian data back to back in that order. *out is a new string
 * (fc_free). Errors: FC_ERR_INVALID, FC_ERR_NOMEM. */
fc_status api_specs_to_json(const fc_tensor_spec *specs, size_t count, char **out, fc_error *err);
/* Parses that JSON (dtype in either spelling, "f32" or "F32"). *out is an array of *count specs
 * whose names are owned by it; free with api_specs_free. Errors: FC_ERR_FORMAT naming the
 * entry, FC_ERR_DTYPE, FC_ERR_LIMIT (more than max_count entries), FC_ERR_NOMEM. */
fc_status api_specs_from_json(const char *json, size_t max_count, fc_tensor_spec **out,
                              size_t *count, fc_error *err);
void api_specs_free(fc_tensor_spec *specs, size_t count);

#endif
