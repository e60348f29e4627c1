/* fedctl_http.c: the fedctl subcommands that talk to a running daemon's HTTP API
 * (docs/http-api.md): status, round ID, clients, models, pause, resume, stop, watch, and the
 * HTTP mode of `rounds` and `export` (used when they get no --db).
 *
 * It owns a small blocking HTTP/1.1 client (one request per connection, HTTPS through OpenSSL
 * when the URL says https) and the human tables. It never touches the store. The address comes
 * from --url or FEDCOORD_URL (default http://127.0.0.1:7080), the admin token from --token-file
 * or FEDCOORD_TOKEN. Errors say what failed and how to fix it.
 */
#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/safetensors.h"
#include "server/fedctl.h"

#define DEFAULT_URL "http://127.0.0.1:7080"
#define MAX_HEAD 65536

typedef struct hopts {
    const char *cmd;
    char host[256];
    char port[16];
    int tls;
    const char *url, *ca;
    char token[512];
    int json;
    /* per command */
    const char *arg;   /* round id, version */
    const char *out;   /* export */
    long limit;
    int forever;       /* watch: do not stop at STOPPED */
} hopts;

typedef struct hresp {
    int status;
    fc_buf body;
    char sha[65]; /* X-Fedcoord-Model-SHA256, if any */
} hresp;

/* ---- options ---- */

static int parse_url(hopts *o) {
    const char *u = o->url;
    const char *rest;
    if (strncmp(u, "http://", 7) == 0) {
        rest = u + 7;
        o->tls = 0;
    } else if (strncmp(u, "https://", 8) == 0) {
        rest = u + 8;
        o->tls = 1;
    } else {
        return fedctl_bad_input(o->cmd, "--url '%s': expected http://HOST:PORT or https://HOST:PORT",
                                u);
    }
    const char *colon = strrchr(rest, ':');
    size_t hl = colon ? (size_t)(colon - rest) : strcspn(rest, "/");
    if (hl == 0 || hl >= sizeof o->host)
        return fedctl_bad_input(o->cmd, "--url '%s': no host", u);
    memcpy(o->host, rest, hl);
    o->host[hl] = '\0';
    if (colon) {
        size_t pl = strcspn(colon + 1, "/");
        if (pl == 0 || pl >= sizeof o->port)
            return fedctl_bad_input(o->cmd, "--url '%s': bad port", u);
        memcpy(o->port, colon + 1, pl);
        o->port[pl] = '\0';
    } else {
        snprintf(o->port, sizeof o->port, "%s", o->tls ? "443" : "80");
    }
    return FEDCTL_OK;
}

static int read_token(hopts *o, const char *file) {
    const char *env = getenv("FEDCOORD_TOKEN");
    if (!file) {
        if (env)
            snprintf(o->token, sizeof o->token, "%s", env);
        return FEDCTL_OK;
    }
    FILE *f = fopen(file, "r");
    if (!f)
        return fedctl_bad_input(o->cmd, "--token-file %s: %s", file, strerror(errno));
    if (!fgets(o->token, sizeof o->token, f))
        o->token[0] = '\0';
    fclose(f);
    o->token[strcspn(o->token, "\r\n")] = '\0';
    if (!o->token[0])
        return fedctl_bad_input(o->cmd, "--token-file %s: the first line is empty", file);
    return FEDCTL_OK;
}

/* Common flags; the command's own positional argument goes to o->arg. */
static int parse_opts(const char *cmd, int argc, char **argv, hopts *o, int want_arg) {
    memset(o, 0, sizeof *o);
    o->cmd = cmd;
    o->url = getenv("FEDCOORD_URL") ? getenv("FEDCOORD_URL") : DEFAULT_URL;
    const char *token_file = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        if (strcmp(a, "--url") == 0)
            slot = &o->url;
        else if (strcmp(a, "--token-file") == 0)
            slot = &token_file;
        else if (strcmp(a, "--ca") == 0)
            slot = &o->ca;
        else if (strcmp(a, "-o") == 0 || strcmp(a, "--out") == 0)
            slot = &o->out;
        if (slot) {
            if (i + 1 >= argc)
                return fedctl_bad_input(cmd, "option %s needs a value", a);
            *slot = argv[++i];
        } else if (strcmp(a, "--json") == 0) {
            o->json = 1;
        } else if (strcmp(a, "--forever") == 0) {
            o->forever = 1;
        } else if (strcmp(a, "--limit") == 0) {
            if (i + 1 >= argc)
                return fedctl_bad_input(cmd, "option --limit needs a value");
            char *end;
            o->limit = strtol(argv[++i], &end, 10);
            if (*end || o->limit < 1 || o->limit > 1000)
                return fedctl_bad_input(cmd, "--limit '%s': expected 1..1000", argv[i]);
        } else if (a[0] != '-' && want_arg && !o->arg) {
            o->arg = a;
        } else {
            return fedctl_bad_input(cmd, "unexpected argument '%s' (see fedctl %s --help)", a, cmd);
        }
    }
    int rc = parse_url(o);
    if (rc == FEDCTL_OK)
        rc = read_token(o, token_file);
    return rc;
}

/* ---- the HTTP client ---- */

typedef struct hconn {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
} hconn;

static void hconn_close(hconn *c) {
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->ctx)
        SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    c->ssl = NULL, c->ctx = NULL, c->fd = -1;
}

static int unreachable(const hopts *o, const char *why) {
    return fedctl_failed(o->cmd,
                         "cannot reach the fedcoord HTTP API at %s (%s); is the daemon running "
                         "with [http] enabled? set --url or FEDCOORD_URL",
                         o->url, why);
}

static int hconn_open(const hopts *o, hconn *c) {
    memset(c, 0, sizeof *c);
    c->fd = -1;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int gai = getaddrinfo(o->host, o->port, &hints, &res);
    if (gai != 0)
        return unreachable(o, gai_strerror(gai));
    int err = ECONNREFUSED;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        c->fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (c->fd < 0)
            continue;
        struct timeval tv = {30, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        err = errno;
        close(c->fd);
        c->fd = -1;
    }
    freeaddrinfo(res);
    if (c->fd < 0)
        return unreachable(o, strerror(err));
    if (!o->tls)
        return FEDCTL_OK;
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx || (o->ca ? SSL_CTX_load_verify_locations(c->ctx, o->ca, NULL)
                          : SSL_CTX_set_default_verify_paths(c->ctx)) != 1) {
        hconn_close(c);
        return fedctl_bad_input(o->cmd, "cannot load the CA %s", o->ca ? o->ca : "defaults");
    }
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1 ||
        SSL_set_tlsext_host_name(c->ssl, o->host) != 1 || SSL_set1_host(c->ssl, o->host) != 1 ||
        SSL_connect(c->ssl) != 1) {
        char e[256];
        ERR_error_string_n(ERR_get_error(), e, sizeof e);
        hconn_close(c);
        return fedctl_failed(o->cmd, "TLS with %s failed: %s (pass the daemon's CA with --ca)",
                             o->url, e);
    }
    return FEDCTL_OK;
}

static int hconn_write(hconn *c, const void *p, size_t n) {
    if (c->ssl)
        return SSL_write(c->ssl, p, (int)n) == (int)n;
    const char *b = p;
    while (n) {
        ssize_t w = send(c->fd, b, n, MSG_NOSIGNAL);
        if (w <= 0)
            return 0;
        b += w;
        n -= (size_t)w;
    }
    return 1;
}

static ssize_t hconn_read(hconn *c, void *p, size_t n) {
    if (c->ssl) {
        int r = SSL_read(c->ssl, p, (int)n);
        return r > 0 ? r : 0;
    }
    return recv(c->fd, p, n, 0);
}

/* Sends one request and reads the answer. The body goes to sink (with *sink_hash updated) when
 * sink is set, else to r->body. Returns FEDCTL_OK when an answer arrived (any status). */
static int request(const hopts *o, const char *method, const char *path, FILE *sink,
                   EVP_MD_CTX *sink_hash, hresp *r) {
    memset(r, 0, sizeof *r);
    r->body = (fc_buf)FC_BUF_INIT;
    hconn c;
    int rc = hconn_open(o, &c);
    if (rc != FEDCTL_OK)
        return rc;
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: fedctl\r\nConnection: close\r\n"
                     "Content-Length: 0\r\n%s%s%s\r\n",
                     method, path, o->host, o->token[0] ? "Authorization: Bearer " : "", o->token,
                     o->token[0] ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof req || !hconn_write(&c, req, (size_t)n)) {
        hconn_close(&c);
        return unreachable(o, "the request could not be sent");
    }
    char *head = fc_malloc(MAX_HEAD + 1);
    size_t hl = 0;
    char *body0 = NULL;
    while (head && hl < MAX_HEAD) {
        ssize_t got = hconn_read(&c, head + hl, MAX_HEAD - hl);
        if (got <= 0)
            break;
        hl += (size_t)got;
        head[hl] = '\0';
        if ((body0 = strstr(head, "\r\n\r\n")))
            break;
    }
    if (!head || !body0 || strncmp(head, "HTTP/1.", 7) != 0) {
        fc_free(head);
        hconn_close(&c);
        return fedctl_failed(o->cmd, "%s did not answer with HTTP (is --url the HTTP port?)",
                             o->url);
    }
    *body0 = '\0';
    r->status = atoi(head + 9);
    long long length = -1;
    for (char *line = strstr(head, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "Content-Length:", 15) == 0)
            length = atoll(line + 17);
        if (strncasecmp(line + 2, "X-Fedcoord-Model-SHA256:", 24) == 0)
            sscanf(line + 26, "%64s", r->sha);
    }
    size_t have = hl - (size_t)(body0 + 4 - head);
    const char *first = body0 + 4;
    int ok = 1;
    uint64_t total = 0;
    char buf[65536];
    for (;;) {
        const char *p = have ? first : buf;
        size_t len = have;
        if (!have) {
            if (length >= 0 && total >= (uint64_t)length)
                break;
            ssize_t got = hconn_read(&c, buf, sizeof buf);
            if (got <= 0)
                break;
            len = (size_t)got;
        }
        have = 0;
        total += len;
        if (sink && r->status == 200) {
            if (fwrite(p, 1, len, sink) != len || EVP_DigestUpdate(sink_hash, p, len) != 1)
                ok = 0;
        } else if (fc_buf_append(&r->body, p, len) != FC_OK) {
            ok = 0;
        }
    }
    fc_free(head);
    hconn_close(&c);
    if (!ok)
        return fedctl_failed(o->cmd, "out of memory or write error while reading the answer");
    if (length >= 0 && total < (uint64_t)length)
        return fedctl_failed(o->cmd, "the answer to %s %s was cut short (%llu of %lld bytes)",
                             method, path, (unsigned long long)total, length);
    fc_buf_append(&r->body, "", 1);
    r->body.len--;
    return FEDCTL_OK;
}

/* An HTTP error status as one line that says what to do. */
static int api_error(const hopts *o, const hresp *r, const char *what) {
    json_t *j = json_loads((const char *)r->body.data, 0, NULL);
    const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    char m[512];
    snprintf(m, sizeof m, "%s", msg ? msg : "(no message)");
    json_decref(j);
    if (r->status == 401)
        return fedctl_failed(o->cmd,
                             "unauthorised: %s; pass the admin token with --token-file FILE or "
                             "FEDCOORD_TOKEN",
                             m);
    if (r->status == 404)
        return fedctl_failed(o->cmd, "not found: %s (%s)", what, m);
    return fedctl_failed(o->cmd, "%s: HTTP %d: %s", what, r->status, m);
}

/* GET path into a parsed JSON object; FEDCTL_OK or the error already printed. */
static int get_json(const hopts *o, const char *path, const char *what, json_t **out) {
    hresp r;
    int rc = request(o, "GET", path, NULL, NULL, &r);
    if (rc == FEDCTL_OK && r.status != 200)
        rc = api_error(o, &r, what);
    if (rc == FEDCTL_OK) {
        json_error_t je;
        *out = json_loads((const char *)r.body.data, 0, &je);
        if (!*out)
            rc = fedctl_failed(o->cmd, "%s: the answer is not JSON (%s)", what, je.text);
    }
    fc_buf_free(&r.body);
    return rc;
}

static void print_json(const json_t *j) {
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (s)
        puts(s);
    free(s);
}

/* ---- formatting helpers ---- */

static const char *str(const json_t *o, const char *k) {
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "-";
}

static long long num(const json_t *o, const char *k) {
    return (long long)json_integer_value(json_object_get(o, k));
}

static void numstr(const json_t *o, const char *k, char *buf, size_t cap) {
    const json_t *v = json_object_get(o, k);
    if (json_is_integer(v))
        snprintf(buf, cap, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(buf, cap, "%.4g", json_real_value(v));
    else if (json_is_true(v) || json_is_false(v))
        snprintf(buf, cap, "%s", json_is_true(v) ? "yes" : "no");
    else
        snprintf(buf, cap, "-");
}

/* ---- status ---- */

static void print_status(const json_t *s) {
    const json_t *rd = json_object_get(s, "round"), *m = json_object_get(s, "model"),
                 *c = json_object_get(s, "clients");
    printf("state     %s (%s)\n", str(s, "state"), str(s, "mode"));
    if (json_is_object(rd)) {
        printf("round     %lld %s %s: received %lld of %lld selected (required %lld, rejected "
               "%lld)",
               num(rd, "id"), str(rd, "kind"), str(rd, "phase"), num(rd, "received"),
               num(rd, "selected"), num(rd, "required"), num(rd, "rejected"));
        if (json_object_get(rd, "deadline_in_ms"))
            printf(", deadline in %.1f s", (double)num(rd, "deadline_in_ms") / 1000.0);
        printf("\n");
    } else {
        printf("round     none yet\n");
    }
    if (json_is_object(m))
        printf("model     version %lld, %lld parameters, sha256 %.16s...\n", num(m, "version"),
               num(m, "parameters"), str(m, "sha256"));
    else
        printf("model     none yet\n");
    printf("clients   %lld registered, %lld connected, %lld idle\n", num(c, "registered"),
           num(c, "connected"), num(c, "idle"));
    printf("rule      %s + %s\n", str(s, "rule"), str(s, "optimizer"));
    printf("uptime    %lld s, staging %lld bytes\n", num(s, "uptime_s"), num(s, "staging_bytes"));
}

static int run_status(int argc, char **argv) {
    hopts o;
    json_t *j = NULL;
    int rc = parse_opts("status", argc, argv, &o, 0);
    if (rc == FEDCTL_OK)
        rc = get_json(&o, "/v1/status", "status", &j);
    if (rc == FEDCTL_OK)
        o.json ? print_json(j) : print_status(j);
    json_decref(j);
    return rc;
}

/* ---- rounds, round, clients, models ---- */

static void print_round_row(const json_t *r) {
    char base[32], ver[32], dur[32];
    numstr(r, "base_version", base, sizeof base);
    numstr(r, "model_version", ver, sizeof ver);
    numstr(r, "duration_ms", dur, sizeof dur);
    const char *why = json_string_value(json_object_get(r, "failure_reason"));
    printf("%6lld  %-10s %6s %7s %10s  %s\n", num(r, "id"), str(r, "state"), base, ver, dur,
           why ? why : "");
}

int fedctl_http_rounds(int argc, char **argv) {
    hopts o;
    json_t *j = NULL;
    int rc = parse_opts("rounds", argc, argv, &o, 0);
    char path[64];
    snprintf(path, sizeof path, "/v1/rounds?limit=%ld", o.limit ? o.limit : 20);
    if (rc == FEDCTL_OK)
        rc = get_json(&o, path, "rounds", &j);
    if (rc == FEDCTL_OK && o.json) {
        print_json(j);
    } else if (rc == FEDCTL_OK) {
        printf("%6s  %-10s %6s %7s %10s  %s\n", "ROUND", "STATE", "BASE", "VERSION", "TIME_MS",
               "REASON");
        const json_t *a = json_object_get(j, "rounds");
        for (size_t i = json_array_size(a); i-- > 0;) /* oldest first */
            print_round_row(json_array_get(a, i));
    }
    json_decref(j);
    return rc;
}

static int valid_id(const char *s) {
    if (!s || !*s || strlen(s) > 18)
        return 0;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9')
            return 0;
    return atoll(s) > 0;
}

static int run_round(int argc, char **argv) {
    hopts o;
    json_t *j = NULL;
    int rc = parse_opts("round", argc, argv, &o, 1);
    if (rc == FEDCTL_OK && !valid_id(o.arg))
        return fedctl_bad_input("round", "expected a round id >= 1 (fedctl round ID)");
    char path[64], what[64];
    snprintf(path, sizeof path, "/v1/rounds/%s", o.arg ? o.arg : "");
    snprintf(what, sizeof what, "round %s", o.arg ? o.arg : "");
    if (rc == FEDCTL_OK)
        rc = get_json(&o, path, what, &j);
    if (rc == FEDCTL_OK && o.json) {
        print_json(j);
    } else if (rc == FEDCTL_OK) {
        printf("%6s  %-10s %6s %7s %10s  %s\n", "ROUND", "STATE", "BASE", "VERSION", "TIME_MS",
               "REASON");
        print_round_row(j);
        const json_t *parts = json_object_get(j, "participants");
        printf("\n%-24s %-10s %9s  %s\n", "CLIENT", "OUTCOME", "EXAMPLES", "REASON");
        for (size_t i = 0; i < json_array_size(parts); i++) {
            const json_t *p = json_array_get(parts, i);
            const char *why = json_string_value(json_object_get(p, "reason"));
            printf("%-24s %-10s %9lld  %s\n", str(p, "client"), str(p, "outcome"),
                   num(p, "num_examples"), why ? why : "");
        }
        char *metrics = json_dumps(json_object_get(j, "metrics"), JSON_COMPACT);
        char *report = json_dumps(json_object_get(j, "report"), JSON_COMPACT);
        printf("\nmetrics   %s\nreport    %s\n", metrics ? metrics : "null",
               report ? report : "null");
        free(metrics);
        free(report);
    }
    json_decref(j);
    return rc;
}

static int run_clients(int argc, char **argv) {
    hopts o;
    json_t *j = NULL;
    int rc = parse_opts("clients", argc, argv, &o, 0);
    if (rc == FEDCTL_OK)
        rc = get_json(&o, "/v1/clients", "clients", &j);
    if (rc == FEDCTL_OK && o.json) {
        print_json(j);
    } else if (rc == FEDCTL_OK) {
        printf("%-24s %-9s %-7s %6s %8s %8s %10s\n", "NAME", "CONNECTED", "REVOKED", "ROUNDS",
               "ACCEPTED", "REJECTED", "LAST_ROUND");
        const json_t *a = json_object_get(j, "clients");
        for (size_t i = 0; i < json_array_size(a); i++) {
            const json_t *c = json_array_get(a, i);
            char conn[8], rev[8];
            numstr(c, "connected", conn, sizeof conn);
            numstr(c, "revoked", rev, sizeof rev);
            printf("%-24s %-9s %-7s %6lld %8lld %8lld %10lld\n", str(c, "name"), conn, rev,
                   num(c, "rounds_participated"), num(c, "updates_accepted"),
                   num(c, "rejections"), num(c, "last_round"));
        }
    }
    json_decref(j);
    return rc;
}

static int run_models(int argc, char **argv) {
    hopts o;
    json_t *j = NULL;
    int rc = parse_opts("models", argc, argv, &o, 0);
    char path[64];
    snprintf(path, sizeof path, "/v1/models?limit=%ld", o.limit ? o.limit : 20);
    if (rc == FEDCTL_OK)
        rc = get_json(&o, path, "models", &j);
    if (rc == FEDCTL_OK && o.json) {
        print_json(j);
    } else if (rc == FEDCTL_OK) {
        printf("%7s %7s %6s %12s  %-16s %s\n", "VERSION", "PARENT", "ROUND", "BYTES", "SHA256",
               "DATA");
        const json_t *a = json_object_get(j, "models");
        for (size_t i = json_array_size(a); i-- > 0;) {
            const json_t *m = json_array_get(a, i);
            char parent[32], round[32];
            numstr(m, "parent_version", parent, sizeof parent);
            numstr(m, "round_id", round, sizeof round);
            printf("%7lld %7s %6s %12lld  %.16s %s\n", num(m, "version"), parent, round,
                   num(m, "size"), str(m, "sha256"),
                   json_is_true(json_object_get(m, "pruned")) ? "pruned" : "kept");
        }
    }
    json_decref(j);
    return rc;
}

/* ---- export ---- */

int fedctl_http_export(int argc, char **argv) {
    hopts o;
    int rc = parse_opts("export", argc, argv, &o, 1);
    if (rc != FEDCTL_OK)
        return rc;
    if (!valid_id(o.arg))
        return fedctl_bad_input("export", "expected a model version >= 1 (fedctl export VERSION "
                                          "-o FILE.safetensors)");
    if (!o.out)
        return fedctl_bad_input("export", "-o FILE.safetensors is required");
    size_t tl = strlen(o.out) + 16;
    char *tmp = fc_malloc(tl);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!tmp || !md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        fc_free(tmp);
        EVP_MD_CTX_free(md);
        return fedctl_failed("export", "out of memory");
    }
    snprintf(tmp, tl, "%s.partial", o.out);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        rc = fedctl_bad_input("export", "-o %s: %s", o.out, strerror(errno));
        goto done;
    }
    char path[96], what[64];
    snprintf(path, sizeof path, "/v1/models/%s/safetensors", o.arg);
    snprintf(what, sizeof what, "model version %s", o.arg);
    hresp r;
    rc = request(&o, "GET", path, f, md, &r);
    if (fclose(f) != 0 && rc == FEDCTL_OK)
        rc = fedctl_failed("export", "writing %s failed", tmp);
    if (rc == FEDCTL_OK && r.status != 200)
        rc = r.status == 410 ? fedctl_failed("export", "model version %s is pruned: its tensors "
                                                       "are no longer stored",
                                             o.arg)
                             : api_error(&o, &r, what);
    fc_buf_free(&r.body);
    if (rc == FEDCTL_OK) {
        /* the data section (after the header) must hash to the committed SHA-256 */
        fc_st_file *st = NULL;
        fc_error err = {0};
        rc = fc_st_open(tmp, &st, &err) == FC_OK ? FEDCTL_OK
                                                  : fedctl_failed("export", "the download is not a "
                                                                            "valid safetensors "
                                                                            "file: %s",
                                                                  err.msg);
        if (rc == FEDCTL_OK) {
            const fc_model *m = fc_st_model(st);
            EVP_MD_CTX *h = EVP_MD_CTX_new();
            unsigned char dig[32];
            char hex[65];
            int ok = h && EVP_DigestInit_ex(h, EVP_sha256(), NULL) == 1;
            for (size_t i = 0; ok && i < m->count; i++)
                ok = EVP_DigestUpdate(h, m->tensors[i].data, (size_t)m->tensors[i].nbytes) == 1;
            ok = ok && EVP_DigestFinal_ex(h, dig, NULL) == 1;
            EVP_MD_CTX_free(h);
            for (int i = 0; i < 32; i++)
                snprintf(hex + 2 * i, 3, "%02x", dig[i]);
            if (!ok || !r.sha[0] || strcmp(hex, r.sha) != 0)
                rc = fedctl_failed("export", "the downloaded model's SHA-256 %s does not match the "
                                             "committed %s",
                                   hex, r.sha[0] ? r.sha : "(none sent)");
            fc_st_close(st);
        }
    }
    if (rc == FEDCTL_OK && rename(tmp, o.out) != 0)
        rc = fedctl_failed("export", "rename to %s: %s", o.out, strerror(errno));
    if (rc == FEDCTL_OK && !o.json)
        printf("model version %s written to %s (sha256 %s)\n", o.arg, o.out, r.sha);
    else if (rc == FEDCTL_OK)
        printf("{\"version\": %s, \"path\": \"%s\", \"sha256\": \"%s\"}\n", o.arg, o.out, r.sha);
done:
    if (rc != FEDCTL_OK)
        unlink(tmp);
    fc_free(tmp);
    EVP_MD_CTX_free(md);
    return rc;
}

/* ---- control ---- */

static int control(const char *action, int argc, char **argv) {
    hopts o;
    int rc = parse_opts(action, argc, argv, &o, 0);
    if (rc != FEDCTL_OK)
        return rc;
    char path[64];
    snprintf(path, sizeof path, "/v1/control/%s", action);
    hresp r;
    rc = request(&o, "POST", path, NULL, NULL, &r);
    if (rc == FEDCTL_OK && r.status != 202 && r.status != 200)
        rc = api_error(&o, &r, action);
    if (rc == FEDCTL_OK)
        printf("%s: accepted\n", action);
    fc_buf_free(&r.body);
    return rc;
}

static int run_pause(int argc, char **argv) { return control("pause", argc, argv); }
static int run_resume(int argc, char **argv) { return control("resume", argc, argv); }
static int run_stop(int argc, char **argv) { return control("stop", argc, argv); }

/* ---- watch ---- */

static volatile sig_atomic_t interrupted;
static void on_int(int sig) {
    (void)sig;
    interrupted = 1;
}

static int run_watch(int argc, char **argv) {
    hopts o;
    int rc = parse_opts("watch", argc, argv, &o, 0);
    if (rc != FEDCTL_OK)
        return rc;
    signal(SIGINT, on_int);
    int tty = isatty(STDOUT_FILENO);
    long long last_done = -1; /* newest finished round already printed */
    while (!interrupted) {
        json_t *s = NULL, *rl = NULL;
        if ((rc = get_json(&o, "/v1/status", "status", &s)) != FEDCTL_OK)
            return rc;
        if ((rc = get_json(&o, "/v1/rounds?limit=20", "rounds", &rl)) != FEDCTL_OK) {
            json_decref(s);
            return rc;
        }
        const json_t *a = json_object_get(rl, "rounds");
        for (size_t i = json_array_size(a); i-- > 0;) {
            const json_t *r = json_array_get(a, i);
            const char *st = str(r, "state");
            if (num(r, "id") <= last_done ||
                (strcmp(st, "committed") != 0 && strcmp(st, "failed") != 0))
                continue;
            if (last_done < 0 && i > 0) /* first poll: only the newest finished round */
                continue;
            last_done = num(r, "id");
            if (o.json) {
                char *line = json_dumps(r, JSON_COMPACT);
                printf("%s\n", line ? line : "{}");
                free(line);
            } else {
                if (tty)
                    printf("\r\033[K");
                print_round_row(r);
            }
        }
        const json_t *rd = json_object_get(s, "round");
        if (!o.json && tty && json_is_object(rd) && strcmp(str(rd, "phase"), "TRAINING") == 0) {
            long long sel = num(rd, "selected"), got = num(rd, "received");
            int width = 30, fill = sel > 0 ? (int)(got * width / sel) : 0;
            char bar[64];
            for (int k = 0; k < width; k++)
                bar[k] = k < fill ? '#' : '.';
            bar[width] = '\0';
            printf("\r\033[Kround %lld [%s] %lld/%lld updates, deadline in %.0f s", num(rd, "id"),
                   bar, got, sel, (double)num(rd, "deadline_in_ms") / 1000.0);
        }
        fflush(stdout);
        int stopped = strcmp(str(s, "state"), "STOPPED") == 0;
        json_decref(s);
        json_decref(rl);
        if (stopped && !o.forever) {
            if (!o.json)
                printf("%sthe federation is stopped\n", tty ? "\r\033[K" : "");
            return FEDCTL_OK;
        }
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
    }
    if (tty && !o.json)
        printf("\n");
    return FEDCTL_OK;
}

/* ---- the command table ---- */

#define COMMON_HELP                                                                                \
    "  --url URL          the daemon's HTTP API (default $FEDCOORD_URL or " DEFAULT_URL ")\n"      \
    "  --token-file FILE  the admin token (default $FEDCOORD_TOKEN); needed for control, and\n"   \
    "                     for reads when the daemon sets [http] auth_reads\n"                      \
    "  --ca FILE          CA bundle for an https:// URL\n"                                         \
    "  --json             the API's JSON instead of a table\n"                                     \
    "Exit status: 0 ok, 1 the API could not be reached or refused, 2 bad usage.\n"

const fedctl_command fedctl_cmd_status = {
    "status", "the federation's live state (HTTP API)",
    "usage: fedctl status [--url URL] [--token-file FILE] [--json]\n\n"
    "State, current round progress, model version and clients of a running daemon.\n" COMMON_HELP,
    run_status};
const fedctl_command fedctl_cmd_round = {
    "round", "one round: participants, outcomes, metrics, report (HTTP API)",
    "usage: fedctl round ID [--url URL] [--token-file FILE] [--json]\n" COMMON_HELP, run_round};
const fedctl_command fedctl_cmd_clients = {
    "clients", "registered clients with live connection state (HTTP API)",
    "usage: fedctl clients [--url URL] [--token-file FILE] [--json]\n" COMMON_HELP, run_clients};
const fedctl_command fedctl_cmd_models = {
    "models", "model versions (HTTP API)",
    "usage: fedctl models [--limit N] [--url URL] [--token-file FILE] [--json]\n" COMMON_HELP,
    run_models};
const fedctl_command fedctl_cmd_pause = {
    "pause", "start no new round (a running one finishes) (HTTP API, admin token)",
    "usage: fedctl pause [--url URL] [--token-file FILE]\n" COMMON_HELP, run_pause};
const fedctl_command fedctl_cmd_resume = {
    "resume", "start rounds again after pause (HTTP API, admin token)",
    "usage: fedctl resume [--url URL] [--token-file FILE]\n" COMMON_HELP, run_resume};
const fedctl_command fedctl_cmd_stop = {
    "stop", "end the federation: fail the open round, start no more (HTTP API, admin token)",
    "usage: fedctl stop [--url URL] [--token-file FILE]\n" COMMON_HELP, run_stop};
const fedctl_command fedctl_cmd_watch = {
    "watch", "live round progress and one line per finished round (HTTP API)",
    "usage: fedctl watch [--forever] [--url URL] [--token-file FILE] [--json]\n\n"
    "Polls every second. On a terminal the running round shows as a progress bar; each committed\n"
    "or failed round prints one line (--json: one JSON object per round). Ends when the\n"
    "federation is stopped (unless --forever) or on Ctrl-C.\n" COMMON_HELP,
    run_watch};
