/* bench_http.c: latency and memory cost of the operators' HTTP API (/v1/status, /metrics).
 *
 *   build/bench/bench_http               10 s per endpoint at 100 requests/s
 *   BENCH_QUICK=1 build/bench/bench_http  3 s per endpoint
 *   BENCH_DIR=/path                      where the database goes (default: $TMPDIR or /tmp)
 *
 * The server (http + api + the daemon metric set, real SQLite store with 500 rounds) runs on a
 * libuv loop in its own thread, with a 10 ms timer standing in for a running round: it updates
 * the metrics (observations, gauges, counters) as the daemon would. A client thread sends
 * requests on one keep-alive connection paced at 100 per second and records each latency
 * (request written -> whole response read). Then it opens 200 idle keep-alive connections and
 * reports the RSS growth per connection. If wrk (Debian package) is installed, it finally runs
 * wrk against both endpoints for the throughput ceiling.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/log.h"
#include "server/api.h"
#include "server/http.h"
#include "server/metrics.h"
#include "storage/store.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = atol(line + 6);
    if (f)
        fclose(f);
    return kb;
}

static void die(const char *what, const char *detail) {
    fprintf(stderr, "bench_http: %s: %s\n", what, detail ? detail : "");
    exit(1);
}

/* ---- the store ---- */

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

static void make_store(const char *path) {
    unlink(path);
    store *s;
    fc_error err = {0};
    if (store_open(path, NULL, &s, &err) != FC_OK)
        die("store_open", err.msg);
    static uint8_t data[4096];
    store_participant parts[4] = {
        {.client = "c1", .outcome = STORE_OUTCOME_ACCEPTED, .metrics_json = "{\"loss\":0.5}"},
        {.client = "c2", .outcome = STORE_OUTCOME_ACCEPTED, .metrics_json = "{\"loss\":0.4}"},
        {.client = "c3", .outcome = STORE_OUTCOME_REJECTED, .reason = "non_finite"},
        {.client = "c4", .outcome = STORE_OUTCOME_TIMED_OUT},
    };
    for (int v = 1; v <= 500; v++) {
        src sr = {data, sizeof data, 0};
        store_commit c = {.round_id = v,
                          .version = v,
                          .parent_version = v - 1,
                          .tensor_specs_json =
                              "[{\"name\":\"w\",\"dtype\":\"f32\",\"shape\":[1024]}]",
                          .model_size = sizeof data,
                          .source = src_read,
                          .source_ud = &sr,
                          .started_at = v * 1000,
                          .ended_at = v * 1000 + 700,
                          .report_json = "{\"selected\":[\"c1\",\"c2\"],\"trimmed\":1}",
                          .metrics_json = "{\"loss\":0.45,\"accuracy\":0.9}",
                          .participants = parts,
                          .num_participants = 4};
        if (store_commit_round(s, &c, NULL, &err) != FC_OK)
            die("commit", err.msg);
    }
    store_close(s);
}

/* ---- the server side ---- */

typedef struct server {
    uv_loop_t loop;
    uv_timer_t tick;
    uv_async_t stop;
    metrics_fedcoord m;
    api *api;
    http_server *srv;
    uint64_t ticks;
} server;

static fc_status p_status(void *ctx, json_t *out, fc_error *err) {
    server *sv = ctx;
    (void)err;
    json_object_set_new(out, "mode", json_string("sync"));
    json_object_set_new(out, "state", json_string("training"));
    json_object_set_new(out, "round",
                        json_pack("{s:I,s:s,s:I,s:I,s:i,s:i,s:i,s:i}", "id", (json_int_t)501,
                                  "phase", "training", "started_ms", (json_int_t)1764300000000,
                                  "deadline_ms", (json_int_t)1764300060000, "selected", 8,
                                  "received", (int)(sv->ticks % 8), "rejected", 0, "required", 6));
    json_object_set_new(
        out, "model",
        json_pack("{s:i,s:s}", "version", 500, "sha256",
                  "8945edb504af759964449383ea8c85efccdbfe80cb2c0e9eef136a6986d5c90b"));
    json_object_set_new(out, "clients",
                        json_pack("{s:i,s:i,s:i}", "registered", 10, "connected", 8, "busy", 3));
    json_object_set_new(out, "uptime_s", json_integer((json_int_t)(sv->ticks / 100)));
    json_object_set_new(out, "staging_bytes", json_integer(1 << 20));
    return FC_OK;
}

static int p_ready(void *ctx, const char **why) {
    (void)ctx;
    (void)why;
    return 1;
}

/* A stand-in for a running round: what the daemon records every few milliseconds. */
static void tick_cb(uv_timer_t *t) {
    server *sv = t->data;
    sv->ticks++;
    metrics_counter_add(sv->m.bytes_received, 65536);
    metrics_gauge_set(sv->m.staging_bytes, (double)((sv->ticks % 64) << 16));
    metrics_gauge_set(sv->m.connected_clients, 8);
    if (sv->ticks % 10 == 0)
        metrics_counter_add(sv->m.updates_accepted, 1);
    if (sv->ticks % 50 == 0)
        metrics_fedcoord_reject(&sv->m, "non_finite");
    if (sv->ticks % 100 == 0) {
        metrics_counter_add(sv->m.rounds_committed, 1);
        metrics_histogram_observe(sv->m.round_duration, 1.0 + (double)(sv->ticks % 7));
        metrics_histogram_observe(sv->m.aggregation_time, 0.002 * (double)(sv->ticks % 5));
        metrics_histogram_observe(sv->m.commit_latency, 0.004);
    }
}

static void stop_cb(uv_async_t *a) {
    server *sv = a->data;
    uv_timer_stop(&sv->tick);
    uv_close((uv_handle_t *)&sv->tick, NULL);
    http_server_stop(sv->srv, NULL, NULL);
    uv_close((uv_handle_t *)a, NULL);
}

static void *loop_main(void *arg) {
    server *sv = arg;
    uv_run(&sv->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* ---- the client side ---- */

static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        die("connect", NULL);
    return fd;
}

/* Sends one request and reads its whole response; returns the body length. */
static long roundtrip(int fd, const char *req) {
    static char buf[1 << 20];
    size_t len = strlen(req), have = 0;
    if (send(fd, req, len, MSG_NOSIGNAL) != (ssize_t)len)
        die("send", NULL);
    for (;;) {
        ssize_t n = recv(fd, buf + have, sizeof buf - have - 1, 0);
        if (n <= 0)
            die("recv", "connection ended");
        have += (size_t)n;
        buf[have] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (!end)
            continue;
        char *cl = strstr(buf, "Content-Length: ");
        if (!cl)
            die("response", "no Content-Length");
        long body = atol(cl + 16);
        if ((long)have >= (end - buf) + 4 + body) {
            if (strncmp(buf, "HTTP/1.1 200", 12) != 0)
                die("response", buf);
            return body;
        }
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void paced(int port, const char *path, double seconds) {
    int fd = connect_to(port);
    char req[256];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: bench\r\n\r\n", path);
    size_t n = (size_t)(seconds * 100);
    double *lat = malloc(n * sizeof *lat);
    long rss0 = rss_kb(), body = 0;
    double start = now_s();
    for (size_t i = 0; i < n; i++) {
        double due = start + (double)i / 100.0;
        double wait = due - now_s();
        if (wait > 0) {
            struct timespec ts = {.tv_sec = (time_t)wait,
                                  .tv_nsec = (long)((wait - (double)(time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);
        }
        double t0 = now_s();
        body = roundtrip(fd, req);
        lat[i] = (now_s() - t0) * 1e6;
    }
    long rss1 = rss_kb();
    qsort(lat, n, sizeof *lat, cmp_double);
    printf("  %-11s %5zu requests at 100/s, body %6ld B: latency p50 %6.0f us, p99 %6.0f us, "
           "max %6.0f us; RSS %ld -> %ld KiB\n",
           path, n, body, lat[n / 2], lat[n * 99 / 100], lat[n - 1], rss0, rss1);
    free(lat);
    close(fd);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    fc_log_set_level(FC_LOG_WARN);
    double seconds = getenv("BENCH_QUICK") ? 3 : 10;
    const char *dir = getenv("BENCH_DIR") ? getenv("BENCH_DIR")
                      : getenv("TMPDIR")  ? getenv("TMPDIR")
                                          : "/tmp";
    char path[512];
    snprintf(path, sizeof path, "%s/bench_http-%d.db", dir, (int)getpid());
    make_store(path);

    server sv;
    memset(&sv, 0, sizeof sv);
    fc_error err = {0};
    if (uv_loop_init(&sv.loop) != 0)
        die("uv_loop_init", NULL);
    if (metrics_fedcoord_new(&sv.m, &err) != FC_OK)
        die("metrics", err.msg);
    api_config ac = {
        .version = API_CONFIG_V1,
        .store_path = path,
        .metrics = sv.m.reg,
        .http_metrics = &sv.m,
        .provider = {.version = API_PROVIDER_V1, .ctx = &sv, .status = p_status, .ready = p_ready}};
    if (api_new(&ac, &sv.api, &err) != FC_OK)
        die("api_new", err.msg);
    http_server_config hc = {.version = HTTP_SERVER_CONFIG_V1, .host = "127.0.0.1"};
    http_limits_default(&hc.limits);
    hc.limits.max_per_peer = 512; /* every bench connection comes from 127.0.0.1 */
    if (api_server_start(sv.api, &sv.loop, &hc, &sv.srv, &err) != FC_OK)
        die("server", err.msg);
    int port = http_server_port(sv.srv);
    uv_timer_init(&sv.loop, &sv.tick);
    sv.tick.data = &sv;
    uv_timer_start(&sv.tick, tick_cb, 10, 10);
    uv_async_init(&sv.loop, &sv.stop, stop_cb);
    sv.stop.data = &sv;
    pthread_t th;
    if (pthread_create(&th, NULL, loop_main, &sv) != 0)
        die("pthread_create", NULL);

    printf("bench_http: server with 500 rounds, metric updates every 10 ms, one keep-alive "
           "connection\n");
    paced(port, "/v1/status", seconds);
    paced(port, "/metrics", seconds);
    paced(port, "/v1/rounds", seconds);

    enum { IDLE = 200 };
    int fds[IDLE];
    long r0 = rss_kb();
    for (int i = 0; i < IDLE; i++) {
        fds[i] = connect_to(port);
        roundtrip(fds[i], "GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n");
    }
    long r1 = rss_kb();
    printf("  %d idle keep-alive connections: RSS +%ld KiB (%.1f KiB each, client sockets "
           "included)\n",
           IDLE, r1 - r0, (double)(r1 - r0) / IDLE);
    for (int i = 0; i < IDLE; i++)
        close(fds[i]);

    if (system("command -v wrk >/dev/null 2>&1") == 0) {
        const char *paths[] = {"/v1/status", "/metrics"};
        for (int i = 0; i < 2; i++) {
            char cmd[256];
            snprintf(cmd, sizeof cmd,
                     "wrk -t1 -c8 -d%ds --latency http://127.0.0.1:%d%s | "
                     "grep -E 'Requests/sec|Latency|50%%|99%%'",
                     (int)(seconds / 2 > 1 ? seconds / 2 : 1), port, paths[i]);
            printf("  wrk -t1 -c8 %s:\n", paths[i]);
            fflush(stdout);
            if (system(cmd) != 0)
                printf("  (wrk failed)\n");
        }
    } else {
        printf("  wrk not installed (Debian package wrk): throughput ceiling not measured\n");
    }

    uv_async_send(&sv.stop);
    pthread_join(th, NULL);
    uv_loop_close(&sv.loop);
    api_free(sv.api);
    metrics_free(sv.m.reg);
    unlink(path);
    char side[600];
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
    return 0;
}
