/* harness.c: see harness.h. Runs the real daemon and fedctl as child processes, never signals a
 * process it did not start, and never writes outside the test's folder. */
#include "tests/integration/harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/conn.h"
#include "core/alloc.h"
#include "core/safetensors.h"
#include "proto/stream.h"
#include "proto/wire.h"
#include "tests/lib/testutil.h"

uint64_t it_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void it_sleep_ms(unsigned ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int why(it_env *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int why(it_env *e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->why, sizeof e->why, fmt, ap);
    va_end(ap);
    return -1;
}

int it_env_init(it_env *e, const char *name) {
    memset(e, 0, sizeof *e);
    snprintf(e->dir, sizeof e->dir, "%s/%s", fc_test_tmpdir(), name);
    snprintf(e->data_dir, sizeof e->data_dir, "%.500s/data", e->dir);
    snprintf(e->db, sizeof e->db, "%.500s/fedcoord.db", e->data_dir);
    snprintf(e->config, sizeof e->config, "%.500s/fedcoord.ini", e->dir);
    snprintf(e->fedcoord, sizeof e->fedcoord, "%s/bin/fedcoord", fc_test_build_dir());
    snprintf(e->fedctl, sizeof e->fedctl, "%s/bin/fedctl", fc_test_build_dir());
    if (mkdir(e->dir, 0700) != 0 && errno != EEXIST)
        return why(e, "mkdir %s: %s", e->dir, strerror(errno));
    if (mkdir(e->data_dir, 0700) != 0 && errno != EEXIST)
        return why(e, "mkdir %s: %s", e->data_dir, strerror(errno));
    if (access(e->fedcoord, X_OK) != 0)
        return why(e, "%s is not an executable (build it first)", e->fedcoord);
    fc_error err = {0};
    if (tlsgen_create(e->dir, &e->pki, &err) != FC_OK)
        return why(e, "tlsgen: %s", err.msg);
    return 0;
}

static int reap(it_env *e, int timeout_ms) {
    uint64_t end = it_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        int status;
        pid_t r = waitpid(e->pid, &status, WNOHANG);
        if (r == e->pid) {
            e->pid = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        if (r < 0) {
            e->pid = 0;
            return -2;
        }
        if (it_now_ms() >= end)
            return -1;
        it_sleep_ms(5);
    }
}

void it_daemon_kill(it_env *e) {
    if (e->pid <= 0)
        return;
    kill(e->pid, SIGKILL);
    int status;
    while (waitpid(e->pid, &status, 0) < 0 && errno == EINTR) {
    }
    e->pid = 0;
}

int it_daemon_kill_restart(it_env *e, int timeout_s) {
    int port = e->port;
    it_daemon_kill(e);
    char set_port[64];
    snprintf(set_port, sizeof set_port, "server.port=%d", port);
    const char *sets[] = {set_port, NULL};
    return it_daemon_restart(e, sets, timeout_s);
}

void it_env_cleanup(it_env *e) { it_daemon_kill(e); }

int it_daemon_signal_wait(it_env *e, int sig, int timeout_s) {
    if (e->pid <= 0)
        return why(e, "no daemon running");
    kill(e->pid, sig);
    int rc = reap(e, timeout_s * 1000);
    if (rc == -1) {
        why(e, "daemon did not exit within %d s of signal %d", timeout_s, sig);
        it_daemon_kill(e);
        return -1;
    }
    return rc;
}

static void log_tail(it_env *e, const char *prefix) {
    size_t len = 0;
    char *text = fc_test_slurp(e->log, &len);
    const char *tail = text ? text : "(no log)";
    if (text && len > 1500)
        tail = text + len - 1500;
    snprintf(e->why, sizeof e->why, "%s; log %s ends:\n%s", prefix, e->log, tail);
    free(text);
}

/* Finds "port=N" on the line holding "msg=listening". */
static int find_port(const char *log) {
    const char *p = strstr(log, "msg=listening");
    if (!p)
        return 0;
    const char *bol = p;
    while (bol > log && bol[-1] != '\n')
        bol--;
    const char *eol = strchr(p, '\n');
    if (!eol)
        return 0; /* line not complete yet */
    for (const char *q = bol; q < eol; q++)
        if ((q == bol || q[-1] == ' ') && strncmp(q, "port=", 5) == 0)
            return atoi(q + 5);
    return 0;
}

static int spawn(it_env *e, const char *const *sets, int timeout_s) {
    const char *argv[64];
    size_t n = 0;
    argv[n++] = e->fedcoord;
    argv[n++] = "--config";
    argv[n++] = e->config;
    for (size_t i = 0; sets && sets[i] && n + 3 < sizeof argv / sizeof argv[0]; i++) {
        argv[n++] = "--set";
        argv[n++] = sets[i];
    }
    argv[n] = NULL;
    e->starts++;
    snprintf(e->log, sizeof e->log, "%.500s/daemon-%d.log", e->dir, e->starts);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return why(e, "fork: %s", strerror(errno));
    if (pid == 0) {
        /* A failed assertion longjmps past the test's cleanup: the daemon must not outlive
         * the test program. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(e->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int nul = open("/dev/null", O_RDWR);
        if (fd < 0 || nul < 0 || dup2(fd, 2) < 0 || dup2(fd, 1) < 0 || dup2(nul, 0) < 0)
            _exit(126);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    e->pid = pid;
    e->port = 0;
    uint64_t end = it_now_ms() + (uint64_t)timeout_s * 1000u;
    for (;;) {
        char *text = fc_test_slurp(e->log, NULL);
        int port = text ? find_port(text) : 0;
        free(text);
        if (port > 0) {
            e->port = port;
            return 0;
        }
        int rc = reap(e, 0);
        if (rc != -1) {
            char msg[64];
            snprintf(msg, sizeof msg, "daemon exited with status %d before listening", rc);
            log_tail(e, msg);
            return -1;
        }
        if (it_now_ms() >= end) {
            it_daemon_kill(e);
            log_tail(e, "daemon did not log msg=listening in time");
            return -1;
        }
        it_sleep_ms(10);
    }
}

int it_daemon_start(it_env *e, const char *sections, const char *const *sets, int timeout_s) {
    FILE *f = fopen(e->config, "w");
    if (!f)
        return why(e, "%s: %s", e->config, strerror(errno));
    fprintf(f,
            "[server]\nlisten = 127.0.0.1\nport = 0\ndata_dir = %s\n\n"
            "[tls]\ncert = %s\nkey = %s\nca = %s\n\n"
            "[http]\nenabled = false\n\n%s\n",
            e->data_dir, e->pki.server_cert, e->pki.server_key, e->pki.ca_cert,
            sections ? sections : "");
    if (fclose(f) != 0)
        return why(e, "writing %s failed", e->config);
    return spawn(e, sets, timeout_s);
}

int it_daemon_restart(it_env *e, const char *const *sets, int timeout_s) {
    if (e->pid > 0)
        return why(e, "a daemon is still running");
    return spawn(e, sets, timeout_s);
}

uint64_t it_daemon_peak_rss(const it_env *e) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)e->pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    uint64_t kb = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            kb = strtoull(line + 6, NULL, 10);
    fclose(f);
    return kb * 1024u;
}

int it_log_contains(const it_env *e, const char *needle) {
    char *text = fc_test_slurp(e->log, NULL);
    int found = text && strstr(text, needle) != NULL;
    free(text);
    return found;
}

/* ---- fedctl ---- */

static int fedctl(it_env *e, const char *verb, const char *name, char *out, size_t out_size) {
    char outp[IT_PATH_MAX + 16], errp[IT_PATH_MAX + 16];
    snprintf(outp, sizeof outp, "%s/fedctl.out", e->dir);
    snprintf(errp, sizeof errp, "%s/fedctl.err", e->dir);
    const char *argv[] = {e->fedctl, "client", verb, name, "--db", e->db, NULL};
    int rc = fc_test_run(argv, outp, errp, 60);
    char *text = fc_test_slurp(rc == 0 ? outp : errp, NULL);
    if (rc != 0) {
        why(e, "fedctl client %s %s: exit %d: %s", verb, name, rc, text ? text : "");
        free(text);
        return -1;
    }
    if (out) {
        snprintf(out, out_size, "%s", text ? text : "");
        out[strcspn(out, "\r\n")] = '\0';
    }
    free(text);
    return 0;
}

int it_client_add(it_env *e, const char *name, char token[64]) {
    if (fedctl(e, "add", name, token, 64) != 0)
        return -1;
    if (strlen(token) != 43)
        return why(e, "fedctl client add %s printed '%s', not a 43-character token", name, token);
    return 0;
}

int it_client_revoke(it_env *e, const char *name) { return fedctl(e, "revoke", name, NULL, 0); }

fc_status it_client_open(const it_env *e, const char *name, const char *token, int retry,
                         fc_client **out) {
    char server[64];
    snprintf(server, sizeof server, "127.0.0.1:%d", e->port);
    fc_client_config cfg = FC_CLIENT_CONFIG_INIT;
    cfg.server = server;
    cfg.ca_file = e->pki.ca_cert;
    cfg.client_name = name;
    cfg.token = token;
    cfg.connect_timeout_ms = 20000;
    cfg.io_timeout_ms = 60000;
    cfg.reconnect_max_attempts = retry ? 4 : -1;
    cfg.reconnect_base_ms = 100;
    cfg.reconnect_max_ms = 1000;
    return fc_client_open(&cfg, out);
}

/* ---- raw upload ---- */

/* Waits for the Ack of ref_seq or an Error; other frames (acks of chunks, heartbeats) are
 * skipped. */
static fc_status raw_wait(fc_client *c, uint64_t ref_seq) {
    for (;;) {
        conn_msg msg;
        fc_status st = conn_recv(c, conn_now_ms() + 60000, &msg);
        if (st != FC_OK)
            return st;
        fc_envelope *env = msg.env;
        if (msg.is_chunk) {
            fc_envelope_free(env);
            continue;
        }
        if (env->body_case == FEDCOORD__V1__ENVELOPE__BODY_ERROR) {
            st = conn_server_error(c, env->error);
            fc_envelope_free(env);
            return st;
        }
        int done = env->body_case == FEDCOORD__V1__ENVELOPE__BODY_ACK &&
                   env->ack->ref_seq == ref_seq;
        fc_envelope_free(env);
        if (done)
            return FC_OK;
    }
}

/* UpdateBegin, and the server's Ack of it. */
static fc_status raw_begin(fc_client *c, uint64_t round, uint64_t base_version,
                           const fc_tensor_spec *specs, size_t n, uint64_t total, int is_delta) {
    fc_wire_update_begin_args a;
    memset(&a, 0, sizeof a);
    a.round = round;
    a.base_version = base_version;
    a.tensors = specs;
    a.n_tensors = n;
    a.total_bytes = total;
    a.is_delta = is_delta;
    fc_wire_msg m;
    fc_status st = fc_wire_update_begin(&m, ++c->seq_out, &a, &c->err);
    if (st != FC_OK) {
        fc_wire_msg_free(&m);
        return st;
    }
    uint64_t begin_seq = c->seq_out;
    if ((st = conn_send(c, &m)) != FC_OK)
        return st;
    return raw_wait(c, begin_seq);
}

fc_status it_raw_upload(fc_client *c, uint64_t round, uint64_t base_version,
                        const fc_tensor_spec *specs, size_t n, const void *data, uint64_t total,
                        uint64_t send_bytes, uint64_t num_examples) {
    return it_raw_upload_kind(c, round, base_version, specs, n, data, total, send_bytes,
                              num_examples, 1);
}

fc_status it_raw_upload_kind(fc_client *c, uint64_t round, uint64_t base_version,
                             const fc_tensor_spec *specs, size_t n, const void *data,
                             uint64_t total, uint64_t send_bytes, uint64_t num_examples,
                             int is_delta) {
    fc_status st = raw_begin(c, round, base_version, specs, n, total, is_delta);
    if (st != FC_OK)
        return st;
    fc_wire_msg m;
    fc_stream_splitter sp;
    size_t chunk = c->max_chunk ? c->max_chunk : FC_STREAM_MAX_CHUNK;
    if ((st = fc_stream_split_specs(&sp, specs, n, chunk, 0, &c->err)) != FC_OK)
        return st;
    fc_chunk_desc d;
    uint64_t sent = 0;
    while (sent < send_bytes && fc_stream_split_next(&sp, &d)) {
        st = conn_send_chunk(c, d.tensor_index, d.offset,
                             (const uint8_t *)data + d.global_offset, d.len);
        if (st != FC_OK)
            return st;
        sent += d.len;
    }
    if (sent < total) {
        conn_drop(c); /* dies mid-upload: no UpdateEnd, no Bye */
        c->finished = 1;
        return FC_OK;
    }
    uint8_t sha[FC_SHA256_BYTES];
    fc_stream_hash h = {0};
    if ((st = fc_stream_hash_init(&h, &c->err)) == FC_OK &&
        (st = fc_stream_hash_update(&h, data, (size_t)total, &c->err)) == FC_OK)
        st = fc_stream_hash_final(&h, sha, &c->err);
    fc_stream_hash_free(&h);
    if (st != FC_OK)
        return st;
    st = fc_wire_update_end(&m, ++c->seq_out, sha, num_examples, NULL, 0, &c->err);
    if (st != FC_OK) {
        fc_wire_msg_free(&m);
        return st;
    }
    uint64_t end_seq = c->seq_out;
    if ((st = conn_send(c, &m)) != FC_OK)
        return st;
    return raw_wait(c, end_seq);
}

fc_status it_raw_upload_opts(fc_client *c, uint64_t round, uint64_t base_version,
                             const fc_tensor_spec *specs, size_t n, const void *data,
                             uint64_t total, const it_raw_opts *o) {
    fc_status st = raw_begin(c, round, base_version, specs, n, total, o->is_delta);
    if (st != FC_OK)
        return st;
    fc_wire_msg m;
    uint64_t half = total / 2 / 4 * 4;
    uint8_t *buf = fc_calloc(1, (size_t)total + 8); /* room to send past the end */
    if (!buf)
        return FC_ERR_NOMEM;
    memcpy(buf, data, (size_t)total);
    switch (o->chunks) {
    case IT_CHUNKS_ALL: st = conn_send_chunk(c, 0, 0, buf, (size_t)total); break;
    case IT_CHUNKS_OVERLAP:
        if ((st = conn_send_chunk(c, 0, 0, buf, (size_t)half)) == FC_OK)
            st = conn_send_chunk(c, 0, half - 4, buf + half - 4, (size_t)(total - half + 4));
        break;
    case IT_CHUNKS_OUT_OF_RANGE:
        if ((st = conn_send_chunk(c, 0, 0, buf, (size_t)half)) == FC_OK)
            st = conn_send_chunk(c, 0, half + 8, buf + half, (size_t)(total - half));
        break;
    case IT_CHUNKS_MISSING: st = conn_send_chunk(c, 0, 0, buf, (size_t)half); break;
    }
    uint8_t sha[FC_SHA256_BYTES];
    fc_stream_hash h = {0};
    if (st == FC_OK && (st = fc_stream_hash_init(&h, &c->err)) == FC_OK &&
        (st = fc_stream_hash_update(&h, data, (size_t)total, &c->err)) == FC_OK)
        st = fc_stream_hash_final(&h, sha, &c->err);
    fc_stream_hash_free(&h);
    fc_free(buf);
    if (st != FC_OK)
        return st;
    if (o->bad_hash)
        sha[7] ^= 0x10;
    /* The builder refuses num_examples 0, which a hostile client sends anyway: build a valid
     * frame, then patch the field. */
    st = fc_wire_update_end(&m, c->seq_out + 1, sha, o->num_examples ? o->num_examples : 1, NULL,
                            0, &c->err);
    if (st != FC_OK) {
        fc_wire_msg_free(&m);
        return st;
    }
    c->seq_out++;
    m.env.update_end->num_examples = o->num_examples;
    uint64_t end_seq = c->seq_out;
    if ((st = conn_send(c, &m)) != FC_OK)
        return st;
    return raw_wait(c, end_seq);
}

/* ---- models ---- */

int it_write_model_f32(const char *path, size_t n, const char *const *names,
                       const uint32_t *ndim, const uint64_t (*shapes)[FC_MAX_DIMS],
                       const float *const *data, fc_error *err) {
    fc_model m = FC_MODEL_INIT;
    fc_status st = FC_OK;
    for (size_t i = 0; i < n && st == FC_OK; i++)
        st = fc_model_add_borrowed(&m, names[i], FC_DTYPE_F32, ndim[i], shapes[i],
                                   (void *)data[i], err);
    if (st == FC_OK)
        st = fc_st_write_model(path, &m, NULL, 0, err);
    fc_model_free(&m);
    return st == FC_OK ? 0 : -1;
}

fc_status it_store_open(const it_env *e, store **out, fc_error *err) {
    store_options o = {.version = STORE_OPTIONS_V1, .readonly = 1, .must_exist = 1};
    return store_open(e->db, &o, out, err);
}

typedef struct read_sink {
    uint8_t *buf;
    uint64_t size;
} read_sink;

static fc_status sink_copy(void *ud, const void *data, size_t len, uint64_t offset,
                           fc_error *err) {
    read_sink *s = ud;
    if (offset > s->size || len > s->size - offset)
        return fc_error_set(err, FC_ERR_RANGE, "model bytes beyond the announced size");
    memcpy(s->buf + offset, data, len);
    return FC_OK;
}

fc_status it_model_read_f32(store *s, int64_t version, float **out, size_t *n, fc_error *err) {
    store_model_info mi;
    memset(&mi, 0, sizeof mi);
    fc_status st = store_model_info_get(s, version, &mi, err);
    if (st != FC_OK)
        return st;
    uint64_t size = mi.size;
    store_model_info_clear(&mi);
    if (size % 4 != 0)
        return fc_error_set(err, FC_ERR_FORMAT, "model version %" PRId64 " has %" PRIu64
                            " bytes, not whole f32s", version, size);
    read_sink sk = {fc_malloc(size ? (size_t)size : 1), size};
    if (!sk.buf)
        return fc_error_set(err, FC_ERR_NOMEM, "no memory for %" PRIu64 " bytes", size);
    if ((st = store_model_read(s, version, 0, sink_copy, &sk, err)) != FC_OK) {
        fc_free(sk.buf);
        return st;
    }
    *out = (float *)(void *)sk.buf;
    *n = (size_t)(size / 4);
    return FC_OK;
}

static int round_state(it_env *e, int64_t round_id, int *state) {
    store *s = NULL;
    fc_error err = {0};
    fc_status st = it_store_open(e, &s, &err);
    if (st == FC_OK) {
        store_round r;
        memset(&r, 0, sizeof r);
        st = store_round_get(s, round_id, &r, &err);
        if (st == FC_OK)
            *state = (int)r.state;
        store_round_clear(&r);
    }
    store_close(s);
    if (st != FC_OK && st != FC_ERR_NOT_FOUND) {
        why(e, "reading round %" PRId64 ": %s", round_id, err.msg);
        return -1;
    }
    return st == FC_OK ? 1 : 0;
}

int it_wait_round_final(it_env *e, int64_t round_id, int timeout_s) {
    uint64_t end = it_now_ms() + (uint64_t)timeout_s * 1000u;
    for (;;) {
        int state = 0;
        int rc = round_state(e, round_id, &state);
        if (rc == 1 && (state == STORE_ROUND_COMMITTED || state == STORE_ROUND_FAILED))
            return state;
        if (it_now_ms() >= end) {
            if (rc >= 0)
                why(e, "round %" PRId64 " not final after %d s (state %d)", round_id, timeout_s,
                    state);
            return 0;
        }
        it_sleep_ms(20);
    }
}

int it_wait_round_exists(it_env *e, int64_t round_id, int timeout_s) {
    uint64_t end = it_now_ms() + (uint64_t)timeout_s * 1000u;
    for (;;) {
        int state = 0;
        int rc = round_state(e, round_id, &state);
        if (rc == 1)
            return 0;
        if (it_now_ms() >= end)
            return why(e, "round %" PRId64 " not in the store after %d s", round_id, timeout_s);
        it_sleep_ms(20);
    }
}

typedef struct part_acc {
    it_participant *out;
    size_t cap, n;
} part_acc;

static fc_status part_cb(void *ud, const store_participant *p) {
    part_acc *a = ud;
    if (a->n < a->cap) {
        it_participant *o = &a->out[a->n];
        snprintf(o->client, sizeof o->client, "%s", p->client ? p->client : "");
        o->outcome = p->outcome;
        snprintf(o->reason, sizeof o->reason, "%s", p->reason ? p->reason : "");
        o->num_examples = p->num_examples;
    }
    a->n++;
    return FC_OK;
}

fc_status it_participants(store *s, int64_t round_id, it_participant *out, size_t cap, size_t *n,
                          fc_error *err) {
    part_acc a = {out, cap, 0};
    fc_status st = store_participants_list(s, round_id, part_cb, &a, err);
    *n = a.n;
    return st;
}

/* ---- scripted workers ---- */

static void worker_fail(it_worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void worker_fail(it_worker *w, const char *fmt, ...) {
    if (w->fail[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->fail, sizeof w->fail, fmt, ap);
    va_end(ap);
}

/* Flattens the task's f32 tensors into one array; NULL (and a failure) on another dtype. */
static float *task_flat(it_worker *w, const fc_task *t, size_t *numel) {
    size_t n = 0, k = fc_task_tensor_count(t);
    fc_tensor_info info;
    for (size_t i = 0; i < k; i++) {
        if (fc_task_tensor(t, i, &info) != FC_OK || info.dtype != FC_DTYPE_F32) {
            worker_fail(w, "%s: task tensor %zu is not f32", w->name, i);
            return NULL;
        }
        n += (size_t)info.numel;
    }
    float *flat = fc_mallocarray(n ? n : 1, sizeof *flat);
    if (!flat) {
        worker_fail(w, "%s: no memory for %zu floats", w->name, n);
        return NULL;
    }
    size_t at = 0;
    for (size_t i = 0; i < k; i++) {
        fc_task_tensor(t, i, &info);
        memcpy(flat + at, info.data, (size_t)info.nbytes);
        at += (size_t)info.numel;
    }
    *numel = n;
    return flat;
}

static it_action worker_task(it_worker *w, fc_client *c, const fc_task *t) {
    size_t numel = 0, k = fc_task_tensor_count(t);
    float *model = task_flat(w, t, &numel), *delta = NULL;
    const void **ptrs = NULL;
    it_action act = IT_STOP;
    int i = w->tasks;
    if (!model)
        goto out;
    delta = fc_calloc(numel ? numel : 1, sizeof *delta);
    ptrs = fc_calloc(k ? k : 1, sizeof *ptrs);
    if (!delta || !ptrs) {
        worker_fail(w, "%s: no memory", w->name);
        goto out;
    }
    uint64_t n_examples = 1;
    act = w->plan(w, t, model, delta, numel, &n_examples);
    if (act == IT_SUBMIT) {
        size_t at = 0;
        for (size_t j = 0; j < k; j++) {
            fc_tensor_info info;
            fc_task_tensor(t, j, &info);
            ptrs[j] = delta + at;
            at += (size_t)info.numel;
        }
        w->submit_st[i] = fc_client_submit(c, t, FC_SUBMIT_DELTA, ptrs, n_examples, NULL, 0);
        snprintf(w->submit_err[i], sizeof w->submit_err[i], "%s", fc_client_error(c));
    }
out:
    fc_free(ptrs);
    fc_free(delta);
    fc_free(model);
    return act;
}

static void *worker_main(void *arg) {
    it_worker *w = arg;
    fc_client *c = NULL;
    w->open_st = it_client_open(w->env, w->name, w->token, w->retry, &c);
    if (w->open_st != FC_OK) {
        snprintf(w->open_err, sizeof w->open_err, "%s", c ? fc_client_error(c) : "no memory");
        fc_client_close(c);
        return NULL;
    }
    for (;;) {
        fc_task *t = NULL;
        fc_status st = fc_client_next_task(c, w->wait_ms ? w->wait_ms : 60000, &t);
        if (st != FC_OK || !t) {
            w->end_st = st;
            w->done = st == FC_OK;
            snprintf(w->end_err, sizeof w->end_err, "%s", fc_client_error(c));
            break;
        }
        if (w->tasks >= IT_MAX_TASKS) {
            worker_fail(w, "%s: more than %d tasks", w->name, IT_MAX_TASKS);
            fc_task_free(t);
            break;
        }
        w->round[w->tasks] = fc_task_round(t);
        w->version[w->tasks] = fc_task_model_version(t);
        it_action act = IT_STOP;
        if (fc_task_get_kind(t) != FC_TASK_TYPE_TRAIN)
            worker_fail(w, "%s: round %llu is not a train task", w->name,
                        (unsigned long long)fc_task_round(t));
        else
            act = worker_task(w, c, t);
        fc_task_free(t);
        w->tasks++;
        if (act == IT_STOP || (w->max_tasks && w->tasks >= w->max_tasks))
            break;
    }
    fc_client_close(c);
    return NULL;
}

int it_worker_start(it_worker *w) {
    w->started = pthread_create(&w->thread, NULL, worker_main, w) == 0;
    return w->started ? 0 : -1;
}

void it_worker_join(it_worker *w) {
    if (w->started)
        pthread_join(w->thread, NULL);
    w->started = 0;
}

/* ---- the HTTP API ---- */

void it_http_reply_free(it_http_reply *r) {
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

int it_http(int port, const char *method, const char *path, const char *token,
            it_http_reply *out, char *why, size_t why_len) {
    memset(out, 0, sizeof *out);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        snprintf(why, why_len, "connect to the HTTP port %d failed: %s", port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s%s"
                     "Content-Length: 0\r\n\r\n",
                     method, path, token ? "Authorization: Bearer " : "", token ? token : "",
                     token ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof req || write(fd, req, (size_t)n) != n) {
        snprintf(why, why_len, "%s %s: request not sent", method, path);
        close(fd);
        return -1;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (; buf;) {
        if (len == cap) {
            char *g = realloc(buf, cap * 2);
            if (!g) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = g;
            cap *= 2;
        }
        ssize_t got = read(fd, buf + len, cap - len);
        if (got <= 0)
            break;
        len += (size_t)got;
    }
    close(fd);
    const char *sep = NULL;
    for (size_t i = 0; buf && i + 3 < len && !sep; i++)
        if (memcmp(buf + i, "\r\n\r\n", 4) == 0)
            sep = buf + i;
    if (!sep) {
        snprintf(why, why_len, "no complete HTTP answer to %s %s", method, path);
        free(buf);
        return -1;
    }
    size_t hl = (size_t)(sep - buf);
    out->head = malloc(hl + 1);
    out->body_len = len - hl - 4;
    out->body = malloc(out->body_len + 1);
    if (!out->head || !out->body) {
        snprintf(why, why_len, "no memory for the answer to %s %s", method, path);
        free(buf);
        it_http_reply_free(out);
        return -1;
    }
    memcpy(out->head, buf, hl);
    out->head[hl] = '\0';
    memcpy(out->body, sep + 4, out->body_len);
    out->body[out->body_len] = '\0';
    out->status = hl > 9 ? atoi(out->head + 9) : 0;
    free(buf);
    return 0;
}

int it_http_port(const it_env *e, int timeout_s) {
    uint64_t end = it_now_ms() + (uint64_t)timeout_s * 1000;
    do {
        char *log = fc_test_slurp(e->log, NULL);
        const char *p = log ? strstr(log, "http_port=") : NULL;
        int port = p ? atoi(p + 10) : 0;
        free(log);
        if (port > 0)
            return port;
        it_sleep_ms(10);
    } while (it_now_ms() < end);
    return 0;
}
