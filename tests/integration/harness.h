/* harness.h: the integration tests' harness. It runs the REAL daemon (FC_BUILD_DIR/bin/fedcoord)
 * as a child process with a temporary data folder and TLS material generated at run time
 * (tests/lib/tlsgen.h), registers clients with the real fedctl, opens real SDK clients, drives a
 * raw upload through the SDK's transport when a test needs a malformed or interrupted one, and
 * reads the daemon's store back read-only.
 *
 * It owns the child processes it starts and the files under its folder; it never signals a
 * process it did not start. Functions return 0 / FC_OK on success and write a human-readable
 * reason into it_env.why (or the fc_error given) otherwise, so tests can fail_msg() with it.
 * Not thread-safe except where marked: client threads only use it_client_* and the store readers
 * on their own handles.
 */
#ifndef FC_TESTS_INTEGRATION_HARNESS_H
#define FC_TESTS_INTEGRATION_HARNESS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/status.h"
#include "core/tensor.h"
#include "storage/store.h"
#include "tests/lib/tlsgen.h"

#include "fedcoord/client.h"

#define IT_PATH_MAX 600
#define IT_WHY_MAX 2048

typedef struct it_env {
    char dir[IT_PATH_MAX];      /* this test's folder: <tmpdir>/<name> */
    char data_dir[IT_PATH_MAX]; /* DIR/data (created, so fedctl can create the db first) */
    char db[IT_PATH_MAX];       /* DIR/data/fedcoord.db */
    char config[IT_PATH_MAX];   /* DIR/fedcoord.ini */
    char log[IT_PATH_MAX];      /* DIR/daemon-N.log, N = start count */
    char fedcoord[IT_PATH_MAX], fedctl[IT_PATH_MAX];
    tlsgen_pki pki;
    pid_t pid;        /* running daemon, 0 = none */
    int port;         /* its client port */
    int starts;       /* daemons started so far */
    char why[IT_WHY_MAX];
} it_env;

/* Creates <tmpdir>/<name>, the data folder and the PKI. 0 or -1 (reason in e->why). */
int it_env_init(it_env *e, const char *name);
/* Kills (SIGKILL) a daemon still running and reaps it. Safe to call twice. */
void it_env_cleanup(it_env *e);

/* Writes DIR/fedcoord.ini: [server] (127.0.0.1, port 0, the data folder), [tls] (the PKI's
 * server certificate, key and CA), [http] enabled = false, then `sections` verbatim (the test's
 * [round], [aggregator], [optimizer], [storage], [limits] sections; none of the three above).
 * Starts fedcoord --config DIR/fedcoord.ini [--set S]... (sets: NULL-terminated, may be NULL),
 * stderr to a fresh DIR/daemon-N.log, and waits up to timeout_s for its "msg=listening" line,
 * whose port= value becomes e->port. -1 if it exits or times out first (why has the log tail). */
int it_daemon_start(it_env *e, const char *sections, const char *const *sets, int timeout_s);
/* As it_daemon_start with the config file already written (a restart on the same data). */
int it_daemon_restart(it_env *e, const char *const *sets, int timeout_s);
/* Sends sig and waits up to timeout_s for the exit. Returns the exit status, 128 + signal if
 * it died of a signal, or -1 on timeout (the daemon is then SIGKILLed and reaped). */
int it_daemon_signal_wait(it_env *e, int sig, int timeout_s);
/* SIGKILL and reap. */
void it_daemon_kill(it_env *e);
/* SIGKILL, reap, and it_daemon_restart on the same client port (so that SDK clients with retry
 * find it again). 0 or -1 (why has the reason). */
int it_daemon_kill_restart(it_env *e, int timeout_s);
/* VmHWM (peak resident set) of the running daemon in bytes, 0 if unreadable. */
uint64_t it_daemon_peak_rss(const it_env *e);
/* 1 if the daemon's log contains needle. */
int it_log_contains(const it_env *e, const char *needle);

/* fedctl client add NAME --db DB; the token (43 chars) goes into token[64]. */
int it_client_add(it_env *e, const char *name, char token[64]);
/* fedctl client revoke NAME --db DB. */
int it_client_revoke(it_env *e, const char *name);

/* Opens an SDK client to the running daemon as name/token. retry = 0 never reconnects. The
 * handle is returned even on failure (when memory allowed), for fc_client_error. Any thread. */
fc_status it_client_open(const it_env *e, const char *name, const char *token, int retry,
                         fc_client **out);

/* A raw upload through the SDK's own transport (client/conn.h), for what the SDK refuses to
 * send: UpdateBegin for (round, base_version) announcing specs[n], then `send_bytes` bytes of
 * data (the whole total when send_bytes >= total) in max_chunk pieces, then -- only if all was
 * sent -- UpdateEnd with the data's SHA-256 and num_examples, and waits for the server's answer.
 * When send_bytes < total the connection is dropped right after the last piece (no Bye, no
 * UpdateEnd): a client dying mid-upload. Returns FC_OK (accepted), the status mapped from the
 * server's Error frame (detail in fc_client_error(c)), or a transport error. */
fc_status it_raw_upload(fc_client *c, uint64_t round, uint64_t base_version,
                        const fc_tensor_spec *specs, size_t n, const void *data, uint64_t total,
                        uint64_t send_bytes, uint64_t num_examples);

/* it_raw_upload with UpdateBegin.is_delta chosen: 0 sends full trained weights, which the
 * daemon turns into a delta against the round's base version. */
fc_status it_raw_upload_kind(fc_client *c, uint64_t round, uint64_t base_version,
                             const fc_tensor_spec *specs, size_t n, const void *data,
                             uint64_t total, uint64_t send_bytes, uint64_t num_examples,
                             int is_delta);

/* How it_raw_upload_opts cuts and ends an upload (for the hostile-client tests; one tensor).
 * ALL sends the data as one chunk. The three bad shapes send it as two chunks split at the
 * middle (a multiple of 4 bytes):
 * OVERLAP sends the second chunk 4 bytes early, OUT_OF_RANGE sends it 8 bytes past the end, and
 * MISSING sends only the first chunk before UpdateEnd. */
typedef enum it_chunks {
    IT_CHUNKS_ALL = 0,
    IT_CHUNKS_OVERLAP,
    IT_CHUNKS_OUT_OF_RANGE,
    IT_CHUNKS_MISSING,
} it_chunks;

typedef struct it_raw_opts {
    uint64_t num_examples;
    int is_delta;     /* 1: a delta; 0: full weights */
    it_chunks chunks;
    int bad_hash;     /* UpdateEnd announces a SHA-256 with one bit flipped */
} it_raw_opts;

/* A whole upload as it_raw_upload, with the options above. Returns FC_OK (accepted) or the
 * status of the server's first Error (its message in fc_client_error(c)). */
fc_status it_raw_upload_opts(fc_client *c, uint64_t round, uint64_t base_version,
                             const fc_tensor_spec *specs, size_t n, const void *data,
                             uint64_t total, const it_raw_opts *o);

/* Writes a safetensors file of f32 tensors: names[i], shape ndim[i]/shapes[i], data[i]. */
int it_write_model_f32(const char *path, size_t n, const char *const *names,
                       const uint32_t *ndim, const uint64_t (*shapes)[FC_MAX_DIMS],
                       const float *const *data, fc_error *err);

/* ---- the store, read-only ---- */
fc_status it_store_open(const it_env *e, store **out, fc_error *err);
/* Reads model version as f32 values (the model's data stream: tensors back to back). *out is
 * fc_malloc'ed (fc_free), *n its element count. */
fc_status it_model_read_f32(store *s, int64_t version, float **out, size_t *n, fc_error *err);
/* Polls the store (a fresh read-only connection each time) until round_id is COMMITTED or
 * FAILED, at most timeout_s. Returns the final state, or 0 on timeout/error (why in e->why). */
int it_wait_round_final(it_env *e, int64_t round_id, int timeout_s);
/* Polls until round_id exists in the store in any state. 0 on success. */
int it_wait_round_exists(it_env *e, int64_t round_id, int timeout_s);

/* One participant of a round, copied out of the store. */
typedef struct it_participant {
    char client[STORE_NAME_MAX + 1];
    store_outcome outcome;
    char reason[512];
    uint64_t num_examples;
} it_participant;
/* Up to cap participants of round_id into out (client-name order); *n their count. */
fc_status it_participants(store *s, int64_t round_id, it_participant *out, size_t cap, size_t *n,
                          fc_error *err);

/* ---- scripted SDK clients, one thread each ---- */

typedef enum it_action {
    IT_SUBMIT = 1, /* fc_client_submit(FC_SUBMIT_DELTA) the delta plan() wrote */
    IT_HOLD,       /* answer nothing; ask for the next task */
    IT_STOP,       /* close the client now */
} it_action;

#define IT_MAX_TASKS 16

typedef struct it_worker it_worker;
/* Called for each train task with its model flattened to f32 (model[numel], tensors back to
 * back). Writes the delta into delta[numel] and *num_examples, returns the action. May record a
 * failure in w->fail (tests assert it is empty). */
typedef it_action (*it_plan_fn)(it_worker *w, const fc_task *t, const float *model, float *delta,
                                size_t numel, uint64_t *num_examples);

struct it_worker {
    /* set by the test */
    const it_env *env;
    const char *name, *token;
    int retry;             /* reconnect after a lost connection */
    uint32_t wait_ms;      /* fc_client_next_task timeout; 0 = 60000 */
    int max_tasks;         /* stop after this many tasks; 0 = until done or an error */
    it_plan_fn plan;
    void *ud;
    /* results */
    fc_status open_st;
    char open_err[512];
    int tasks;
    uint64_t round[IT_MAX_TASKS], version[IT_MAX_TASKS];
    fc_status submit_st[IT_MAX_TASKS];
    char submit_err[IT_MAX_TASKS][512];
    fc_status end_st; /* status of the next_task call that ended the loop (FC_OK: done/max) */
    int done;         /* the server said done (Bye) */
    char end_err[512];
    char fail[512];
    /* private */
    pthread_t thread;
    int started;
};

/* Starts w in its own thread (w must stay alive until it_worker_join). 0 or -1. */
int it_worker_start(it_worker *w);
void it_worker_join(it_worker *w);

/* ---- the HTTP API ---- */

typedef struct it_http_reply {
    int status;
    char *head; /* status line and headers (malloc) */
    char *body; /* NUL-terminated copy (malloc) */
    size_t body_len;
} it_http_reply;
/* One request to 127.0.0.1:port on a fresh connection (Connection: close, with a bearer token
 * when token is not NULL), the whole answer read. 0, or -1 with the reason in why. */
int it_http(int port, const char *method, const char *path, const char *token,
            it_http_reply *out, char *why, size_t why_len);
void it_http_reply_free(it_http_reply *r);
/* The HTTP API starts after the client listener: polls the daemon's log for its
 * "http_port=N" line, at most timeout_s. The port, or 0. */
int it_http_port(const it_env *e, int timeout_s);

/* Milliseconds on the monotonic clock; a sleep. */
uint64_t it_now_ms(void);
void it_sleep_ms(unsigned ms);

#endif
