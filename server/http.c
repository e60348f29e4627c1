/* http.c: HTTP/1.1 requests and responses over net.c connections.
 *
 * http owns the per-connection request parser (http-parser, paused after each complete request
 * so that requests are answered strictly in order), request limits, the keep-alive, request and
 * send deadlines (one sweep timer per server), response heads, and pulling streamed bodies
 * only while net reports no backpressure. It never blocks, never reads a file, and never
 * interprets a path: the handler does.
 */
#include "server/http.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <http_parser.h>

#include "core/alloc.h"
#include "core/log.h"

void http_limits_default(http_limits *l) {
    l->max_header_bytes = 16384;
    l->max_body_bytes = 65536;
    l->request_timeout_ms = 10000;
    l->idle_timeout_ms = 30000;
    l->send_timeout_ms = 30000;
    l->max_connections = 256;
    l->max_per_peer = 32;
    l->stream_chunk = 65536;
    l->output_high_water = 262144;
    l->max_output_bytes = (size_t)64 << 20;
}

const char *http_status_text(int status) {
    switch (status) {
    case 200:
        return "OK";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    }
    return "Unknown";
}

/* ---- responses ---- */

struct http_response {
    int status; /* 0 = no response yet */
    int close;  /* close after sending */
    int streaming;
    uint64_t length; /* Content-Length */
    char content_type[128];
    fc_buf headers; /* extra header lines, each "Name: value\r\n" */
    fc_buf body;
    http_stream stream;
    struct http_conn *conn;  /* NULL without a connection: deferring is impossible */
    http_deferred *deferred; /* set by http_defer */
};

static void response_reset(http_response *r) {
    fc_buf_free(&r->headers);
    fc_buf_free(&r->body);
    memset(r, 0, sizeof *r);
}

static fc_status response_begin(http_response *r, int status, const char *content_type) {
    if (r->status)
        return FC_ERR_STATE;
    if (status < 200 || status > 599)
        return FC_ERR_INVALID;
    if (content_type) {
        size_t n = strlen(content_type);
        if (n >= sizeof r->content_type || strpbrk(content_type, "\r\n"))
            return FC_ERR_INVALID;
        memcpy(r->content_type, content_type, n + 1);
    }
    return FC_OK;
}

fc_status http_respond(http_response *r, int status, const char *content_type, const void *body,
                       size_t len) {
    fc_status st = response_begin(r, status, content_type);
    if (st != FC_OK)
        return st;
    fc_buf_reset(&r->body);
    if (len && (st = fc_buf_append(&r->body, body, len)) != FC_OK)
        return st;
    r->status = status;
    r->length = len;
    return FC_OK;
}

/* Appends s as a JSON string body (quotes included), escaping what JSON requires. */
static fc_status json_string(fc_buf *b, const char *s) {
    fc_status st = fc_buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; st == FC_OK && *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            st = fc_buf_append(b, esc, 2);
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            st = fc_buf_append(b, esc, 6);
        } else if (*p >= 0x80) {
            /* Messages may quote request bytes: keep the body valid UTF-8 and ASCII. */
            snprintf(esc, sizeof esc, "\\u%04x", 0xfffd);
            st = fc_buf_append(b, esc, 6);
        } else {
            st = fc_buf_append(b, p, 1);
        }
    }
    if (st == FC_OK)
        st = fc_buf_append(b, "\"", 1);
    return st;
}

fc_status http_respond_error(http_response *r, int status, const char *code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fc_buf b = FC_BUF_INIT;
    fc_status st = fc_buf_append(&b, "{\"error\":{\"code\":", 17);
    if (st == FC_OK)
        st = json_string(&b, code);
    if (st == FC_OK)
        st = fc_buf_append(&b, ",\"message\":", 11);
    if (st == FC_OK)
        st = json_string(&b, msg);
    if (st == FC_OK)
        st = fc_buf_append(&b, "}}\n", 3);
    if (st == FC_OK)
        st = http_respond(r, status, "application/json", b.data, b.len);
    fc_buf_free(&b);
    return st;
}

fc_status http_respond_stream(http_response *r, int status, const char *content_type,
                              uint64_t length, const http_stream *stream) {
    if (!stream || !stream->produce)
        return FC_ERR_INVALID;
    fc_status st = response_begin(r, status, content_type);
    if (st != FC_OK)
        return st;
    r->status = status;
    r->length = length;
    r->streaming = 1;
    r->stream = *stream;
    return FC_OK;
}

static int is_token_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

fc_status http_response_header(http_response *r, const char *name, const char *value) {
    if (!name || !*name || !value)
        return FC_ERR_INVALID;
    for (const char *p = name; *p; p++)
        if (!is_token_char(*p))
            return FC_ERR_INVALID;
    if (strpbrk(value, "\r\n"))
        return FC_ERR_INVALID;
    fc_status st = fc_buf_append(&r->headers, name, strlen(name));
    if (st == FC_OK)
        st = fc_buf_append(&r->headers, ": ", 2);
    if (st == FC_OK)
        st = fc_buf_append(&r->headers, value, strlen(value));
    if (st == FC_OK)
        st = fc_buf_append(&r->headers, "\r\n", 2);
    return st;
}

void http_response_close(http_response *r) { r->close = 1; }

/* The status line and headers. */
static fc_status response_head(const http_response *r, int keep_alive, fc_buf *out) {
    char line[512];
    int n = snprintf(line, sizeof line,
                     "HTTP/1.1 %d %s\r\nContent-Length: %llu\r\nConnection: %s\r\n"
                     "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
                     r->status, http_status_text(r->status), (unsigned long long)r->length,
                     keep_alive ? "keep-alive" : "close");
    fc_status st = fc_buf_append(out, line, (size_t)n);
    if (st == FC_OK && r->content_type[0]) {
        n = snprintf(line, sizeof line, "Content-Type: %s\r\n", r->content_type);
        st = fc_buf_append(out, line, (size_t)n);
    }
    if (st == FC_OK && r->headers.len)
        st = fc_buf_append(out, r->headers.data, r->headers.len);
    if (st == FC_OK)
        st = fc_buf_append(out, "\r\n", 2);
    return st;
}

/* ---- request parsing ---- */

typedef enum parse_result { PARSE_MORE, PARSE_REQUEST, PARSE_ERROR } parse_result;

typedef struct reqparse {
    http_parser parser;
    const http_limits *lim;
    fc_buf url, field, value, auth, body;
    size_t header_bytes;
    int in_message, value_pending;
    int err_status;
    char err_code[32];
    char err_msg[160];
} reqparse;

static void rp_fail(reqparse *p, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void rp_fail(reqparse *p, int status, const char *code, const char *fmt, ...) {
    if (p->err_status)
        return;
    p->err_status = status;
    snprintf(p->err_code, sizeof p->err_code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err_msg, sizeof p->err_msg, fmt, ap);
    va_end(ap);
}

static reqparse *rp_of(http_parser *hp) { return hp->data; }

/* Counts header bytes (request line and header lines) against the limit. */
static int rp_count(reqparse *p, size_t n) {
    p->header_bytes += n;
    if (p->header_bytes > p->lim->max_header_bytes) {
        rp_fail(p, 431, "headers_too_large", "request line and headers exceed %zu bytes",
                p->lim->max_header_bytes);
        return -1;
    }
    return 0;
}

static int rp_alloc_fail(reqparse *p) {
    rp_fail(p, 503, "no_memory", "out of memory reading the request");
    return -1;
}

static int on_message_begin(http_parser *hp) {
    reqparse *p = rp_of(hp);
    p->in_message = 1;
    p->header_bytes = 0;
    p->value_pending = 0;
    fc_buf_reset(&p->url);
    fc_buf_reset(&p->field);
    fc_buf_reset(&p->value);
    fc_buf_reset(&p->auth);
    fc_buf_reset(&p->body);
    return 0;
}

static int on_url(http_parser *hp, const char *at, size_t len) {
    reqparse *p = rp_of(hp);
    if (rp_count(p, len))
        return -1;
    if (fc_buf_append(&p->url, at, len) != FC_OK)
        return rp_alloc_fail(p);
    return 0;
}

/* A header (field, value) is complete: keep Authorization, drop the rest. */
static int header_done(reqparse *p) {
    if (!p->value_pending)
        return 0;
    p->value_pending = 0;
    if (p->field.len == 13 && strncasecmp((const char *)p->field.data, "authorization", 13) == 0) {
        if (p->auth.len) {
            rp_fail(p, 400, "bad_request", "more than one Authorization header");
            return -1;
        }
        if (fc_buf_append(&p->auth, p->value.data ? p->value.data : (uint8_t *)"", p->value.len) !=
                FC_OK ||
            fc_buf_append(&p->auth, "", 1) != FC_OK)
            return rp_alloc_fail(p);
    }
    fc_buf_reset(&p->field);
    fc_buf_reset(&p->value);
    return 0;
}

static int on_header_field(http_parser *hp, const char *at, size_t len) {
    reqparse *p = rp_of(hp);
    if (rp_count(p, len + 4))
        return -1; /* ": " and CRLF */
    if (header_done(p))
        return -1;
    if (fc_buf_append(&p->field, at, len) != FC_OK)
        return rp_alloc_fail(p);
    return 0;
}

static int on_header_value(http_parser *hp, const char *at, size_t len) {
    reqparse *p = rp_of(hp);
    if (rp_count(p, len))
        return -1;
    p->value_pending = 1;
    if (fc_buf_append(&p->value, at, len) != FC_OK)
        return rp_alloc_fail(p);
    return 0;
}

static int on_headers_complete(http_parser *hp) {
    reqparse *p = rp_of(hp);
    if (header_done(p))
        return -1;
    if (hp->method == HTTP_CONNECT) {
        rp_fail(p, 405, "method_not_allowed", "CONNECT is not supported");
        return -1;
    }
    if (hp->upgrade) {
        rp_fail(p, 400, "bad_request", "protocol upgrades are not supported");
        return -1;
    }
    if ((hp->flags & F_CONTENTLENGTH) && hp->content_length > p->lim->max_body_bytes) {
        rp_fail(p, 413, "body_too_large", "request body of %llu bytes exceeds %zu bytes",
                (unsigned long long)hp->content_length, p->lim->max_body_bytes);
        return -1;
    }
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t len) {
    reqparse *p = rp_of(hp);
    if (p->body.len + len > p->lim->max_body_bytes) {
        rp_fail(p, 413, "body_too_large", "request body exceeds %zu bytes", p->lim->max_body_bytes);
        return -1;
    }
    if (fc_buf_append(&p->body, at, len) != FC_OK)
        return rp_alloc_fail(p);
    return 0;
}

static int on_message_complete(http_parser *hp) {
    reqparse *p = rp_of(hp);
    p->in_message = 0;
    if (fc_buf_append(&p->url, "", 1) != FC_OK)
        return rp_alloc_fail(p);
    http_parser_pause(hp, 1); /* one request at a time: resumed after its response */
    return 0;
}

static const http_parser_settings rp_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void rp_init(reqparse *p, const http_limits *lim) {
    memset(p, 0, sizeof *p);
    p->lim = lim;
    http_parser_init(&p->parser, HTTP_REQUEST);
    p->parser.data = p;
}

static void rp_free(reqparse *p) {
    fc_buf_free(&p->url);
    fc_buf_free(&p->field);
    fc_buf_free(&p->value);
    fc_buf_free(&p->auth);
    fc_buf_free(&p->body);
}

/* Maps a parser error that no callback explained. */
static void rp_map_errno(reqparse *p) {
    enum http_errno e = HTTP_PARSER_ERRNO(&p->parser);
    switch (e) {
    case HPE_INVALID_METHOD:
        rp_fail(p, 405, "method_not_allowed", "unknown request method");
        break;
    case HPE_HEADER_OVERFLOW:
        rp_fail(p, 431, "headers_too_large", "request headers are too large");
        break;
    case HPE_INVALID_VERSION:
        rp_fail(p, 400, "bad_request", "unsupported HTTP version");
        break;
    default:
        rp_fail(p, 400, "bad_request", "malformed request: %s", http_errno_description(e));
        break;
    }
}

/* Feeds bytes. PARSE_REQUEST: a request is complete after *consumed bytes (resume with
 * rp_next). PARSE_MORE: all consumed. PARSE_ERROR: p->err_* say what; the connection ends. */
static parse_result rp_feed(reqparse *p, const uint8_t *data, size_t len, size_t *consumed) {
    *consumed = 0;
    if (p->err_status)
        return PARSE_ERROR;
    if (!len)
        return PARSE_MORE;
    size_t n = http_parser_execute(&p->parser, &rp_settings, (const char *)data, len);
    *consumed = n;
    enum http_errno e = HTTP_PARSER_ERRNO(&p->parser);
    if (p->err_status)
        return PARSE_ERROR;
    if (e == HPE_PAUSED)
        return PARSE_REQUEST;
    if (e != HPE_OK) {
        rp_map_errno(p);
        return PARSE_ERROR;
    }
    if (n != len) { /* only after an upgrade, refused above; be safe */
        rp_fail(p, 400, "bad_request", "unexpected data after the request");
        return PARSE_ERROR;
    }
    return PARSE_MORE;
}

static void rp_next(reqparse *p) { http_parser_pause(&p->parser, 0); }

/* Builds the request view of a completed message. The strings point into p (and qbuf). */
static void rp_request(reqparse *p, http_request *req, const char *peer) {
    memset(req, 0, sizeof *req);
    req->method = (int)p->parser.method;
    req->method_name = http_method_str((enum http_method)p->parser.method);
    char *url = (char *)p->url.data;
    char *q = strchr(url, '?');
    if (q) {
        *q = 0;
        req->query = q + 1;
    } else {
        req->query = "";
    }
    char *hash = strchr(q ? q + 1 : url, '#');
    if (hash)
        *hash = 0;
    req->path = url;
    req->authorization = p->auth.len ? (const char *)p->auth.data : NULL;
    req->body = p->body.len ? p->body.data : NULL;
    req->body_len = p->body.len;
    req->keep_alive = http_should_keep_alive(&p->parser);
    req->peer = peer;
}

/* Runs the handler and makes sure res holds a response. */
static void run_handler(http_handler_fn handler, void *ud, const http_request *req,
                        http_response *res) {
    handler(ud, req, res);
    if (!res->status && !res->deferred) {
        if (res->streaming && res->stream.release)
            res->stream.release(res->stream.ud);
        response_reset(res);
        if (http_respond_error(res, 500, "internal", "the request produced no response") != FC_OK) {
            res->status = 500; /* empty body: the head still goes out */
            res->length = 0;
        }
    }
}

/* ---- connections ---- */

typedef enum hc_state {
    HC_IDLE,      /* between requests (keep-alive) */
    HC_READING,   /* a request has started */
    HC_STREAMING, /* sending a streamed body */
    HC_WAITING,   /* the handler deferred its response (work off the loop) */
    HC_CLOSING,   /* net_close issued */
} hc_state;

typedef enum hc_deadline { DL_NONE, DL_IDLE, DL_REQUEST, DL_SEND } hc_deadline;

typedef struct http_conn http_conn;

struct http_server {
    uv_loop_t *loop;
    net_listener *listener;
    uv_timer_t sweep;
    http_limits limits;
    http_handler_fn handler;
    void *handler_ud;
    void (*on_status)(void *ud, int status);
    http_conn *conns;
    int stopping, listener_closed, sweep_closed;
    void (*on_stopped)(void *arg);
    void *stopped_arg;
};

struct http_conn {
    http_server *srv;
    net_conn *nc;
    http_conn *prev, *next;
    hc_state state;
    reqparse rp;
    fc_buf in; /* received bytes not parsed yet (only while a response streams) */
    hc_deadline deadline_kind;
    uint64_t deadline; /* uv_now ms */
    int blocked;       /* net reported backpressure */
    int close_after;   /* close once the current response is sent */
    int in_drive;
    http_stream stream;     /* while HC_STREAMING */
    http_deferred *pending; /* while HC_WAITING */
    uint64_t remaining;
    fc_buf chunk;
};

static const char *hc_state_name(hc_state s) {
    switch (s) {
    case HC_IDLE:
        return "idle";
    case HC_READING:
        return "reading";
    case HC_STREAMING:
        return "streaming";
    case HC_WAITING:
        return "waiting";
    case HC_CLOSING:
        return "closing";
    }
    return "unknown";
}

static void set_deadline(http_conn *c, hc_deadline kind) {
    uint64_t ms = 0;
    if (kind == DL_IDLE)
        ms = c->srv->limits.idle_timeout_ms;
    if (kind == DL_REQUEST)
        ms = c->srv->limits.request_timeout_ms;
    if (kind == DL_SEND)
        ms = c->srv->limits.send_timeout_ms;
    c->deadline_kind = ms ? kind : DL_NONE;
    c->deadline = ms ? uv_now(c->srv->loop) + ms : 0;
}

static void hc_set_state(http_conn *c, hc_state to) {
    if (c->state == to)
        return;
    FC_LOG(FC_LOG_DEBUG, "http connection", FC_LU("conn", net_conn_id(c->nc)),
           FC_LS("from", hc_state_name(c->state)), FC_LS("to", hc_state_name(to)));
    c->state = to;
}

static void release_stream(http_conn *c) {
    if (c->stream.produce) {
        http_stream s = c->stream;
        memset(&c->stream, 0, sizeof c->stream);
        if (s.release)
            s.release(s.ud);
    }
}

static void hc_close(http_conn *c, fc_status reason, const char *detail) {
    if (c->state == HC_CLOSING)
        return;
    hc_set_state(c, HC_CLOSING);
    c->deadline_kind = DL_NONE;
    release_stream(c);
    net_close(c->nc, reason, detail);
}

static void note_status(http_server *s, int status) {
    if (s->on_status)
        s->on_status(s->handler_ud, status);
}

/* Sends an error produced by http itself and closes. */
static void hc_send_error(http_conn *c, int status, const char *code, const char *msg) {
    http_response res = {0};
    fc_buf out = FC_BUF_INIT;
    if (http_respond_error(&res, status, code, "%s", msg) == FC_OK &&
        response_head(&res, 0, &out) == FC_OK &&
        fc_buf_append(&out, res.body.data, res.body.len) == FC_OK) {
        note_status(c->srv, status);
        (void)net_write(c->nc, out.data, out.len); /* a failure closes the connection anyway */
    }
    fc_buf_free(&out);
    response_reset(&res);
    FC_LOG(FC_LOG_INFO, "http request refused", FC_LU("conn", net_conn_id(c->nc)),
           FC_LS("peer", net_conn_peer(c->nc)), FC_LI("status", status), FC_LS("detail", msg));
    hc_close(c, FC_OK, msg);
}

/* The current response is fully queued. */
static void response_done(http_conn *c) {
    if (c->close_after) {
        hc_close(c, FC_OK, "response sent, connection not kept");
        return;
    }
    hc_set_state(c, HC_IDLE);
    set_deadline(c, DL_IDLE);
    rp_next(&c->rp);
}

/* Pulls the stream while the output queue accepts more. */
static void pump(http_conn *c) {
    const http_limits *lim = &c->srv->limits;
    assert(c->state != HC_STREAMING || c->stream.produce);
    while (c->state == HC_STREAMING && !c->blocked && c->remaining > 0) {
        size_t max = lim->stream_chunk;
        if (max > c->remaining)
            max = (size_t)c->remaining;
        fc_buf_reset(&c->chunk);
        fc_error err = {0};
        fc_status st = c->stream.produce(c->stream.ud, &c->chunk, max, &err);
        if (st == FC_OK && (c->chunk.len == 0 || c->chunk.len > max))
            st = fc_error_set(&err, FC_ERR_INVALID, "stream produced %zu bytes, asked 1..%zu",
                              c->chunk.len, max);
        if (st != FC_OK) {
            FC_LOG(FC_LOG_ERROR, "http stream failed", FC_LU("conn", net_conn_id(c->nc)),
                   FC_LS("error", err.msg));
            hc_close(c, st, err.msg);
            return;
        }
        c->remaining -= c->chunk.len;
        if (net_write(c->nc, c->chunk.data, c->chunk.len) != FC_OK) {
            hc_close(c, FC_ERR_CLOSED, "write failed");
            return;
        }
    }
    if (c->state != HC_STREAMING)
        return;
    if (c->remaining == 0) {
        release_stream(c);
        fc_buf_free(&c->chunk);
        response_done(c);
    } else if (c->blocked) {
        FC_LOG(FC_LOG_DEBUG, "http stream waits for the client", FC_LU("conn", net_conn_id(c->nc)),
               FC_LU("remaining", c->remaining), FC_LU("queued", net_conn_queued(c->nc)));
        set_deadline(c, DL_SEND);
    }
}

struct http_deferred {
    struct http_conn *c; /* NULL once the connection is gone */
    net_conn *nc;        /* referenced until finish */
    http_response res;
    http_response *origin; /* the handler's response, until dispatch takes d over */
    int want_keep, head_only;
};

/* Queues the head and body (or starts the stream) of res, then frees res's buffers. */
static void send_response(http_conn *c, http_response *res, int want_keep, int head_only) {
    http_server *s = c->srv;
    int keep = want_keep && !res->close && !s->stopping;
    c->close_after = !keep;
    fc_buf out = FC_BUF_INIT;
    fc_status st = response_head(res, keep, &out);
    if (st == FC_OK && !res->streaming && !head_only)
        st = fc_buf_append(&out, res->body.data, res->body.len);
    if (res->streaming && head_only) { /* the head with the GET's Content-Length */
        if (res->stream.release)
            res->stream.release(res->stream.ud);
        res->streaming = 0;
    }
    note_status(s, res->status);
    if (st == FC_OK)
        st = net_write(c->nc, out.data, out.len);
    fc_buf_free(&out);
    if (res->streaming) {
        c->stream = res->stream;
        c->remaining = res->length;
        res->streaming = 0;
    }
    response_reset(res);
    if (st != FC_OK) {
        hc_close(c, st, "could not queue the response");
        return;
    }
    if (c->stream.produce) {
        hc_set_state(c, HC_STREAMING);
        set_deadline(c, DL_NONE);
        pump(c);
    } else {
        response_done(c);
    }
}

/* Answers one parsed request. */
static void dispatch(http_conn *c) {
    http_server *s = c->srv;
    http_request req;
    rp_request(&c->rp, &req, net_conn_peer(c->nc));
    http_response res = {0};
    res.conn = c;
    run_handler(s->handler, s->handler_ud, &req, &res);
    /* refused requests (4xx, 5xx) are worth an operator's eye; the rest is debug detail */
    FC_LOG(res.status >= 400 ? FC_LOG_INFO : FC_LOG_DEBUG, "http request",
           FC_LU("conn", net_conn_id(c->nc)), FC_LS("peer", net_conn_peer(c->nc)),
           FC_LS("method", req.method_name), FC_LS("path", req.path), FC_LI("status", res.status));
    int head_only = req.method == HTTP_HEAD;
    if (res.deferred) {
        http_deferred *d = res.deferred;
        d->origin = NULL;
        d->want_keep = req.keep_alive;
        d->head_only = head_only;
        response_reset(&res);
        c->pending = d;
        hc_set_state(c, HC_WAITING);
        set_deadline(c, DL_NONE);
        return;
    }
    send_response(c, &res, req.keep_alive, head_only);
}

http_deferred *http_defer(http_response *res) {
    http_conn *c = res->conn;
    if (!c || res->status || res->deferred)
        return NULL;
    http_deferred *d = fc_calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->c = c;
    d->nc = c->nc;
    d->origin = res;
    net_conn_ref(d->nc);
    res->deferred = d;
    return d;
}

void http_defer_cancel(http_deferred *d) {
    assert(d->origin && d->origin->deferred == d);
    d->origin->deferred = NULL;
    response_reset(&d->res);
    net_conn_unref(d->nc);
    fc_free(d);
}

http_response *http_deferred_response(http_deferred *d) { return &d->res; }

static void drive(http_conn *c);

void http_deferred_finish(http_deferred *d) {
    http_conn *c = d->c;
    http_response *res = &d->res;
    if (c && c->pending == d && c->state == HC_WAITING) {
        c->pending = NULL;
        if (!res->status) {
            response_reset(res);
            if (http_respond_error(res, 500, "internal", "the request produced no response") !=
                FC_OK) {
                res->status = 500;
                res->length = 0;
            }
        }
        send_response(c, res, d->want_keep, d->head_only);
        drive(c); /* pipelined requests, and reading again */
    } else {
        if (c && c->pending == d)
            c->pending = NULL; /* closing, not yet closed: cb_close must not see d */
        if (res->streaming && res->stream.release)
            res->stream.release(res->stream.ud);
        response_reset(res);
    }
    net_conn_unref(d->nc);
    fc_free(d);
}

/* Parses buffered input and answers requests until input runs out or a response streams. */
static void drive(http_conn *c) {
    if (c->in_drive)
        return; /* re-entered from a callback; the outer loop continues */
    c->in_drive = 1;
    for (;;) {
        if (c->state == HC_STREAMING)
            pump(c);
        if (c->state == HC_STREAMING || c->state == HC_CLOSING || c->state == HC_WAITING)
            break;
        if (!c->in.len)
            break;
        size_t used = 0;
        parse_result r = rp_feed(&c->rp, c->in.data, c->in.len, &used);
        if (used && c->state == HC_IDLE) {
            hc_set_state(c, HC_READING);
            set_deadline(c, DL_REQUEST);
        }
        fc_buf_consume(&c->in, used);
        if (r == PARSE_ERROR) {
            hc_send_error(c, c->rp.err_status, c->rp.err_code, c->rp.err_msg);
            break;
        }
        if (r == PARSE_MORE)
            break;
        dispatch(c);
    }
    c->in_drive = 0;
    if (c->state == HC_STREAMING || c->state == HC_CLOSING || c->state == HC_WAITING)
        net_pause_reading(c->nc);
    else
        net_resume_reading(c->nc);
}

static http_server *server_of(net_conn *nc) { return net_listener_user(net_conn_listener(nc)); }

static void cb_open(net_conn *nc) {
    http_server *s = server_of(nc);
    http_conn *c = fc_calloc(1, sizeof *c);
    if (!c) {
        net_close(nc, FC_ERR_NOMEM, "no memory for an HTTP connection");
        return;
    }
    c->srv = s;
    c->nc = nc;
    rp_init(&c->rp, &s->limits);
    c->state = HC_IDLE;
    set_deadline(c, DL_IDLE);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    net_conn_set_user(nc, c);
}

static void cb_data(net_conn *nc, const uint8_t *data, size_t len) {
    http_conn *c = net_conn_user(nc);
    if (!c || c->state == HC_CLOSING)
        return;
    if (fc_buf_append(&c->in, data, len) != FC_OK) {
        hc_close(c, FC_ERR_NOMEM, "no memory for received bytes");
        return;
    }
    drive(c);
}

static void cb_backpressure(net_conn *nc, int blocked) {
    http_conn *c = net_conn_user(nc);
    if (!c)
        return;
    c->blocked = blocked;
    if (!blocked && c->state == HC_STREAMING) {
        set_deadline(c, DL_NONE);
        drive(c);
    }
}

static void cb_close(net_conn *nc, fc_status reason, const char *detail) {
    (void)reason;
    (void)detail;
    http_conn *c = net_conn_user(nc);
    if (!c)
        return;
    http_server *s = c->srv;
    net_conn_set_user(nc, NULL);
    release_stream(c);
    if (c->pending)
        c->pending->c = NULL; /* the deferred work finds the connection gone */
    if (c->prev)
        c->prev->next = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (s->conns == c)
        s->conns = c->next;
    rp_free(&c->rp);
    fc_buf_free(&c->in);
    fc_buf_free(&c->chunk);
    fc_free(c);
}

static void sweep_cb(uv_timer_t *t) {
    http_server *s = t->data;
    uint64_t now = uv_now(s->loop);
    http_conn *c = s->conns;
    while (c) {
        http_conn *next = c->next; /* net_close never frees synchronously, but be careful */
        if (c->deadline_kind != DL_NONE && now >= c->deadline && c->state != HC_CLOSING) {
            hc_deadline kind = c->deadline_kind;
            c->deadline_kind = DL_NONE;
            if (kind == DL_REQUEST)
                hc_send_error(c, 408, "request_timeout", "request not received in time");
            else if (kind == DL_IDLE)
                hc_close(c, FC_ERR_TIMEOUT, "keep-alive connection idle");
            else
                hc_close(c, FC_ERR_TIMEOUT, "response output made no progress");
        }
        c = next;
    }
}

static fc_status check_limits(const http_limits *l, fc_error *err) {
    if (!l->max_header_bytes || !l->max_body_bytes || !l->max_connections || !l->max_per_peer ||
        !l->stream_chunk || !l->output_high_water || !l->max_output_bytes)
        return fc_error_set(err, FC_ERR_CONFIG, "http: a size limit is zero");
    if (l->output_high_water + l->stream_chunk > l->max_output_bytes)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "http: output high water (%zu) plus stream chunk (%zu) exceeds the "
                            "output limit (%zu)",
                            l->output_high_water, l->stream_chunk, l->max_output_bytes);
    return FC_OK;
}

/* The sweep period: a quarter of the shortest timeout, within [10, 1000] ms. */
static uint64_t sweep_period(const http_limits *l) {
    uint64_t p = 1000;
    const uint64_t t[] = {l->request_timeout_ms, l->idle_timeout_ms, l->send_timeout_ms};
    for (size_t i = 0; i < 3; i++)
        if (t[i] && t[i] / 4 < p)
            p = t[i] / 4;
    return p < 10 ? 10 : p;
}

fc_status http_server_start(uv_loop_t *loop, const http_server_config *cfg, http_server **out,
                            fc_error *err) {
    if (!cfg || cfg->version != HTTP_SERVER_CONFIG_V1 || !cfg->handler)
        return fc_error_set(err, FC_ERR_CONFIG, "http: config version or handler missing");
    fc_status st = check_limits(&cfg->limits, err);
    if (st != FC_OK)
        return st;
    http_server *s = fc_calloc(1, sizeof *s);
    if (!s)
        return fc_error_set(err, FC_ERR_NOMEM, "http: no memory for the server");
    s->loop = loop;
    s->limits = cfg->limits;
    s->handler = cfg->handler;
    s->handler_ud = cfg->handler_ud;
    s->on_status = cfg->on_status;
    net_listener_config ncfg = {0};
    ncfg.name = "http";
    ncfg.host = cfg->host ? cfg->host : "127.0.0.1";
    ncfg.port = cfg->port;
    ncfg.plain = !cfg->tls;
    if (cfg->tls)
        ncfg.tls = cfg->tls_cfg;
    net_limits_default(&ncfg.limits);
    ncfg.limits.idle_timeout_ms = 0; /* http keeps its own request, idle and send deadlines */
    ncfg.limits.min_rate_bps = 0;
    ncfg.limits.max_connections = cfg->limits.max_connections;
    ncfg.limits.max_per_peer = cfg->limits.max_per_peer;
    ncfg.limits.output_high_water = cfg->limits.output_high_water;
    ncfg.limits.max_output_bytes = cfg->limits.max_output_bytes;
    ncfg.cb.on_open = cb_open;
    ncfg.cb.on_data = cb_data;
    ncfg.cb.on_backpressure = cb_backpressure;
    ncfg.cb.on_close = cb_close;
    ncfg.user = s;
    if ((st = net_listener_open(loop, &ncfg, &s->listener, err)) != FC_OK) {
        fc_error_prefix(err, "http");
        fc_free(s);
        return st;
    }
    uv_timer_init(loop, &s->sweep);
    s->sweep.data = s;
    uint64_t period = sweep_period(&s->limits);
    uv_timer_start(&s->sweep, sweep_cb, period, period);
    FC_LOG(FC_LOG_INFO, "http listening", FC_LS("host", ncfg.host),
           FC_LI("port", net_listener_port(s->listener)), FC_LS("tls", cfg->tls ? "on" : "off"));
    *out = s;
    return FC_OK;
}

int http_server_port(const http_server *s) { return net_listener_port(s->listener); }
size_t http_server_connections(const http_server *s) { return net_listener_count(s->listener); }

static void maybe_finish_stop(http_server *s) {
    if (!s->listener_closed || !s->sweep_closed)
        return;
    void (*cb)(void *) = s->on_stopped;
    void *arg = s->stopped_arg;
    fc_free(s);
    if (cb)
        cb(arg);
}

static void listener_closed_cb(void *arg) {
    http_server *s = arg;
    s->listener_closed = 1;
    maybe_finish_stop(s);
}

static void sweep_closed_cb(uv_handle_t *h) {
    http_server *s = h->data;
    s->sweep_closed = 1;
    maybe_finish_stop(s);
}

void http_server_stop(http_server *s, void (*on_stopped)(void *arg), void *arg) {
    if (s->stopping)
        return;
    s->stopping = 1;
    s->on_stopped = on_stopped;
    s->stopped_arg = arg;
    for (http_conn *c = s->conns; c; c = c->next)
        hc_close(c, FC_OK, "http server stopping"); /* releases streams; no more pulls */
    uv_timer_stop(&s->sweep);
    uv_close((uv_handle_t *)&s->sweep, sweep_closed_cb);
    net_close_all(s->listener, FC_OK, "http server stopping");
    net_listener_close(s->listener, listener_closed_cb, s);
}

/* ---- without a connection ---- */

fc_status http_process_bytes(const http_limits *lim, http_handler_fn handler, void *ud,
                             const uint8_t *data, size_t len, fc_buf *out, fc_error *err) {
    reqparse rp;
    rp_init(&rp, lim);
    fc_status st = FC_OK;
    fc_buf chunk = FC_BUF_INIT;
    while (st == FC_OK) {
        size_t used = 0;
        parse_result r = rp_feed(&rp, data, len, &used);
        data += used;
        len -= used;
        if (r == PARSE_MORE)
            break;
        http_response res = {0};
        int keep = 0, head_only = 0;
        if (r == PARSE_ERROR) {
            st = http_respond_error(&res, rp.err_status, rp.err_code, "%s", rp.err_msg);
        } else {
            http_request req;
            rp_request(&rp, &req, "-");
            run_handler(handler, ud, &req, &res);
            keep = req.keep_alive && !res.close;
            head_only = req.method == HTTP_HEAD;
        }
        if (st == FC_OK)
            st = response_head(&res, keep, out);
        if (st == FC_OK && !res.streaming && !head_only)
            st = fc_buf_append(out, res.body.data, res.body.len);
        if (res.streaming && (st != FC_OK || head_only)) {
            if (res.stream.release)
                res.stream.release(res.stream.ud);
        } else if (res.streaming) {
            uint64_t remaining = res.length;
            while (remaining > 0) {
                size_t max = lim->stream_chunk < remaining ? lim->stream_chunk : (size_t)remaining;
                fc_buf_reset(&chunk);
                fc_error perr = {0};
                fc_status ps = res.stream.produce(res.stream.ud, &chunk, max, &perr);
                if (ps != FC_OK || chunk.len == 0 || chunk.len > max) {
                    keep = 0; /* a connection would be closed here */
                    break;
                }
                remaining -= chunk.len;
                if ((st = fc_buf_append(out, chunk.data, chunk.len)) != FC_OK)
                    break;
            }
            if (res.stream.release)
                res.stream.release(res.stream.ud);
        }
        response_reset(&res);
        if (st != FC_OK || !keep)
            break;
        rp_next(&rp);
    }
    fc_buf_free(&chunk);
    rp_free(&rp);
    if (st != FC_OK)
        return fc_error_set(err, st, "http: processing a request in memory");
    return FC_OK;
}
