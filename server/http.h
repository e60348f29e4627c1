/* http.h: the daemon's HTTP/1.1 server (operators' API) on the daemon's libuv loop.
 *
 * http owns request parsing (http-parser), request limits and timeouts, keep-alive, response
 * framing, and streamed responses pulled only as the output queue drains. Sockets, TLS,
 * connection limits and output queues belong to net.h: each server is one net listener
 * (plain on loopback, or TLS). http never interprets paths or bodies: a handler does
 * (server/api.h), and never blocks the loop. Loop thread only; nothing here is thread-safe.
 */
#ifndef FC_SERVER_HTTP_H
#define FC_SERVER_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "core/buf.h"
#include "core/status.h"
#include "server/net.h"

/* Limits. http_limits_default fills the defaults given in brackets. A zero timeout disables
 * that timeout; zero sizes are invalid. */
typedef struct http_limits {
    size_t max_header_bytes;     /* request line + header lines [16384]; over: 431 */
    size_t max_body_bytes;       /* request body [65536]; over: 413 */
    uint64_t request_timeout_ms; /* first byte of a request -> whole request read [10000]: 408 */
    uint64_t idle_timeout_ms;    /* keep-alive wait for the next request [30000]: closed */
    uint64_t send_timeout_ms;    /* response output making no progress [30000]: closed */
    size_t max_connections;      /* live connections [256] */
    size_t max_per_peer;         /* live connections from one address [32] */
    size_t stream_chunk;         /* bytes asked of a stream producer per pull [65536] */
    size_t output_high_water;    /* queued output above this stops pulling [262144] */
    size_t max_output_bytes;     /* queued output above this closes [67108864] */
} http_limits;

void http_limits_default(http_limits *l);

/* A complete request, valid only during the handler call. */
typedef struct http_request {
    int method;                /* enum http_method of http_parser.h (HTTP_GET, HTTP_POST...) */
    const char *method_name;   /* "GET" */
    const char *path;          /* request-target up to '?', raw (no percent-decoding) */
    const char *query;         /* after '?', raw; "" when there is none */
    const char *authorization; /* Authorization header value, or NULL */
    const uint8_t *body;       /* body bytes (not NUL-terminated); NULL when empty */
    size_t body_len;
    int keep_alive;   /* the client wants the connection kept */
    const char *peer; /* "127.0.0.1:50312", or "-" without a connection */
} http_request;

typedef struct http_response http_response;

/* A streamed body. produce appends between 1 and max bytes to out (never more; max is never
 * more than the bytes still owed). A non-FC_OK return or no bytes aborts the response: the
 * connection is closed (the client sees a body shorter than Content-Length). release is called
 * exactly once, when the stream ends for any reason (completion, error, connection closed). */
typedef struct http_stream {
    fc_status (*produce)(void *ud, fc_buf *out, size_t max, fc_error *err);
    void (*release)(void *ud);
    void *ud;
} http_stream;

/* One of these is called by the handler, once. The body is copied. content_type may be NULL
 * (no Content-Type). Errors: FC_ERR_STATE (already responded), FC_ERR_INVALID (status outside
 * 200..599), FC_ERR_NOMEM. If the handler returns without a response, the client gets 500. */
fc_status http_respond(http_response *res, int status, const char *content_type, const void *body,
                       size_t len);
/* A JSON error body {"error":{"code":code,"message":message}}. */
fc_status http_respond_error(http_response *res, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A body of exactly length bytes pulled from stream as the socket drains. On success the
 * response owns the stream (release will be called); on error release is NOT called. */
fc_status http_respond_stream(http_response *res, int status, const char *content_type,
                              uint64_t length, const http_stream *stream);
/* Adds a response header (before or after respond). name is a token, value has no CR, LF or
 * NUL. Errors: FC_ERR_INVALID, FC_ERR_NOMEM. */
fc_status http_response_header(http_response *res, const char *name, const char *value);
/* Closes the connection after this response, whatever the client asked. */
void http_response_close(http_response *res);

/* Deferring: work that must not run on the loop (a store read) takes the response away.
 * http_defer returns a handle, or NULL when deferring is impossible (no connection, as in
 * http_process_bytes; a response already set; no memory): the handler then answers at once.
 * The connection waits (reading paused, requests stay in order) until the owner fills
 * http_deferred_response(d) with http_respond* and calls http_deferred_finish(d) on the loop
 * thread, exactly once. If the connection closed meanwhile, finish discards the response
 * (releasing a stream). finish frees d. */
typedef struct http_deferred http_deferred;
http_deferred *http_defer(http_response *res);
http_response *http_deferred_response(http_deferred *d);
void http_deferred_finish(http_deferred *d);
/* Undoes http_defer before the handler returns (e.g. the work could not be queued); the
 * handler then answers on res as usual. Frees d. */
void http_defer_cancel(http_deferred *d);

/* Handles one request by calling one http_respond* on res (or http_defer). Never blocks. */
typedef void (*http_handler_fn)(void *ud, const http_request *req, http_response *res);

/* "OK", "Not Found"... ; "Unknown" for others. */
const char *http_status_text(int status);

/* ---- a server on the loop ---- */

typedef struct http_server http_server;

#define HTTP_SERVER_CONFIG_V1 1
typedef struct http_server_config {
    int version;      /* HTTP_SERVER_CONFIG_V1 */
    const char *host; /* numeric address; plain HTTP only on loopback */
    int port;         /* 0 = pick a free one (http_server_port) */
    int tls;          /* 1: serve HTTPS with tls_cfg (net.h) */
    net_tls_config tls_cfg;
    http_limits limits;
    http_handler_fn handler; /* required */
    void *handler_ud;
    /* Optional: called with every response status sent, including those http itself sends
     * (400, 408, 413, 431...). For metrics. */
    void (*on_status)(void *ud, int status);
} http_server_config;

/* Opens the listener on loop and starts serving. The config is copied. Errors: FC_ERR_CONFIG
 * (bad limits, address, TLS files, plain on a non-loopback address), FC_ERR_IO (bind/listen),
 * FC_ERR_NOMEM. */
fc_status http_server_start(uv_loop_t *loop, const http_server_config *cfg, http_server **out,
                            fc_error *err);
int http_server_port(const http_server *s);
size_t http_server_connections(const http_server *s);
/* Stops accepting, closes every connection (streams are released) and frees s; on_stopped
 * (may be NULL) is called from the loop once everything is closed. Call at most once. */
void http_server_stop(http_server *s, void (*on_stopped)(void *arg), void *arg);

/* ---- without a connection (fuzzing, tests) ---- */

/* Treats data as everything a client sent on one connection: parses requests with the same
 * parser and limits as a server connection, calls handler for each, and appends each response
 * to out byte for byte as a connection would send it (streams are pulled to the end). Stops
 * after a response that closes the connection. Incomplete trailing input gets no response
 * (a connection would wait). Returns FC_OK or FC_ERR_NOMEM. */
fc_status http_process_bytes(const http_limits *lim, http_handler_fn handler, void *ud,
                             const uint8_t *data, size_t len, fc_buf *out, fc_error *err);

#endif
