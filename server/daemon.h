/* daemon.h: the fedcoord daemon's internals, shared by daemon.c (start, loop, signals,
 * authentication, presence), daemon_model.c (model versions as the daemon serves them) and
 * daemon_round.c (the scheduler bridge: tasks, folding on the thread pool, finish, commit).
 *
 * One libuv loop thread owns every field of `daemon`. Work that may take long runs elsewhere:
 * folding and finishing on the libuv thread pool (one job of a round at a time, so the round
 * driver is never used from two threads), every write on the store's writer thread. Results come
 * back to the loop (uv_after_work, or the writer bridge's uv_async) before they touch state.
 * Nothing here is a public API: server/main.c calls daemon_run and nothing else.
 */
#ifndef FC_SERVER_DAEMON_H
#define FC_SERVER_DAEMON_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "aggregators/agg.h"
#include "core/status.h"
#include "core/tensor.h"
#include "server/daemon_config.h"
#include "server/metrics.h"
#include "server/net.h"
#include "server/round.h"
#include "server/session.h"
#include "storage/store.h"

#define DAEMON_NAME_MAX 128
/* Model chunk size in the daemon's database: the size of one download read, so a read touches
 * exactly one row. */
#define DAEMON_CHUNK_BYTES (1u << 20)
/* Largest model whose values the daemon keeps in memory between rounds (inside the 64 MB
 * allowance of the memory goal); larger ones are read back from the store at each finish. */
#define DAEMON_CACHE_BYTES (UINT64_C(64) << 20)

/* A committed model version as the daemon announces it. Kept until exit once announced, because
 * downloads in flight borrow its specs (see docs/daemon.md). */
typedef struct dmodel {
    uint64_t version;
    fc_tensor_spec *specs;
    size_t n_specs;
    uint64_t bytes, numel;
    uint8_t sha256[32];
    char *specs_json;
    struct dmodel *next;
} dmodel;

typedef struct dclient {
    uint64_t id;
    char name[DAEMON_NAME_MAX];
    uint64_t registered_round; /* fedau: round t from which its participation counts */
    int connected;             /* has an authenticated session */
    int no_proposal;           /* answered the proposal task with an error: not asked again */
} dclient;

/* A job for the writer thread whose completion is handled back on the loop. */
typedef struct fcd fcd;
typedef struct dwjob dwjob;
typedef void (*dwjob_done)(struct fcd *d, dwjob *j, fc_status st, const fc_error *err);
struct dwjob {
    store_job_fn fn;
    dwjob_done done; /* on the loop thread; may be NULL (then j is freed) */
    void *ud;
    void *ud2; /* the daemon, set by daemon_submit */
    fc_status st;
    fc_error err;
    dwjob *next;
};

typedef struct dround dround; /* daemon_round.c */

struct fcd {
    dcfg *cfg;
    uv_loop_t *loop;
    store_writer *writer;
    store *ro; /* loop thread's read connection */
    char *db_path, *spill_dir;
    /* writer -> loop bridge */
    uv_async_t wake;
    pthread_mutex_t done_mu;
    dwjob *done_head, *done_tail;
    size_t jobs_in_flight;
    /* network */
    sess_budget *budget;
    sess_server *sv;
    net_listener *listener;
    int listener_closed;
    uv_signal_t sig_term, sig_int;
    uv_timer_t tick;     /* revocation tail and housekeeping, every second */
    uv_timer_t deadline; /* the scheduler's timer */
    uint64_t deadline_at; /* when it is due (daemon_now_ms) */
    uv_timer_t deferred; /* zero-delay work that may not run inside a callback */
    int64_t last_event_id;
    /* clients ever authenticated, sorted by id */
    dclient *clients;
    size_t n_clients, cap_clients;
    int registration_scans;
    uint64_t *bye_ids; /* sessions to end with Bye from the deferred timer */
    size_t n_bye, cap_bye;
    /* models */
    dmodel *models; /* newest first; models->version is current */
    const agg_opt *opt;
    agg_opt_state *opt_state; /* created once the model's size is known */
    uint8_t *rule_blob;       /* rule state of the current version */
    size_t rule_blob_len;
    /* w of the current version, kept when at most DAEMON_CACHE_BYTES (else read from the store
     * at each round's finish); read by the pool's finish job, replaced on the loop at commit */
    float *w_cache;
    uint64_t w_cache_version;
    /* the cache's previous buffer, reused by the next finish (same size; under wro_mu) */
    float *w_spare;
    uint64_t w_spare_bytes;
    /* the pool jobs' read connection and w_spare (jobs of an abandoned round may overlap a new
     * round's) */
    store *wro;
    pthread_mutex_t wro_mu;
    uint8_t *opt_blob; /* optimizer state of the current version */
    size_t opt_blob_len;
    /* proposal of the initial model (no [round] initial_model and no model yet) */
    uint64_t proposer; /* client asked to propose, 0 = none */
    uint64_t last_round_at_start; /* highest round id in the store at start */
    int proposal_committing;
    /* rounds */
    round_sched *sched;
    dround *cur; /* the round in TRAINING/AGGREGATING, or NULL */
    dround *zombies; /* rounds abandoned while a pool job still uses them */
    uint64_t deferred_gone[64];
    size_t n_deferred_gone;
    /* async mode: answers that arrived while the last buffer was being committed, replayed in
     * order into the next buffer (daemon_round.c), and the commit times of the last minute */
    struct dheld *held_head, *held_tail;
    size_t n_held;
#define DAEMON_VPM_RING 4096
    uint64_t commit_ms[DAEMON_VPM_RING];
    size_t n_commits;
    /* operator HTTP API (daemon_http.c); metrics is NULL when [http] enabled = false */
    metrics_registry *metrics_reg;
    metrics_fedcoord *metrics;
    struct api *api;
    struct http_server *http;
    int http_closed;
    char *admin_token;
    uint64_t registered_count; /* clients in the table, not revoked (last count) */
    int round_changed; /* a round closed: the session layer may free parked uploads */
    int stopping;  /* SIGTERM/SIGINT received */
    int exit_code;
    uint64_t started_ms;
};

/* ---- daemon.c ---- */
int daemon_run(dcfg *cfg);
uint64_t daemon_now_ms(void);  /* monotonic */
int64_t daemon_unix_ms(void);  /* wall clock */
/* Queues j on the writer; j->done runs on the loop. On a submit error j->done runs from the
 * next loop iteration with that error, so callers have one path. */
void daemon_submit(fcd *d, dwjob *j);
const dclient *daemon_client(const fcd *d, uint64_t id);
/* Ends a session with Bye after the current callback (sessions may not be closed from inside
 * their own presence callback). */
void daemon_bye_later(fcd *d, uint64_t client_id);

/* ---- daemon_http.c ---- */
fc_status daemon_http_start(fcd *d, fc_error *err);
void daemon_http_stop(fcd *d);   /* sets http_closed once the listener is gone */
void daemon_http_free(fcd *d);

/* Metrics updates; no-ops when the HTTP API is off. */
#define DMETRIC(d, fn, series, v)                                                                 \
    do {                                                                                          \
        if ((d)->metrics)                                                                         \
            fn((d)->metrics->series, (v));                                                        \
    } while (0)

/* ---- daemon_model.c ---- */
void dmodel_free(dmodel *m);
/* Describes version from the store (read connection) and puts it at the head of d->models. */
fc_status dmodel_load(fcd *d, uint64_t version, fc_error *err);
const dmodel *dmodel_current(const fcd *d);
void dmodel_source(fcd *d, sess_model_source *src);
/* Imports [round] initial_model as version 1 (f32) if the store has no model. */
fc_status dmodel_import_initial(fcd *d, fc_error *err);
/* A store sink that copies a version's bytes into dst (size bytes). */
typedef struct dmodel_f32 {
    uint8_t *dst;
    uint64_t size;
} dmodel_f32;
store_sink_fn dmodel_f32_sink(void);
/* Commits a proposed initial model (the stage of a round-0 update) as version 1. */
void dmodel_commit_proposal(fcd *d, sess_update *u);

/* ---- daemon_round.c ---- */
fc_status dround_init(fcd *d, const store_recovery *rec, fc_error *err);
void dround_free_all(fcd *d);
void dround_pump(fcd *d);
void dround_presence(fcd *d, uint64_t client_id, int up);
/* Counts registered clients again (status, fedau's N). */
void dround_refresh_registered(fcd *d);
fc_status dround_round_info(void *ctx, uint64_t client_id, sess_round_info *out, fc_error *err);
void dround_sink(void *ctx, sess_update *u);
void dround_parked_gone(void *ctx, uint64_t client_id, uint64_t round, const char *why);
void dround_reject(void *ctx, uint64_t client_id, uint64_t round, fc_status st,
                   const char *reason);
fc_status dround_eval(void *ctx, uint64_t client_id, uint64_t round, uint64_t model_version,
                      uint64_t num_examples, const char *const *names, const double *values,
                      size_t n, fc_error *err);
/* A model became current (initial import or proposal): start scheduling. */
void dround_model_ready(fcd *d);
/* Versions committed in the 60 s before now (status and metrics). */
uint64_t dround_versions_last_minute(const fcd *d);
/* Refreshes the gauges that change without an event (versions per minute, async buffer). */
void dround_gauges(fcd *d);
/* Shutdown: stop the scheduler; returns 1 when nothing is in flight any more. */
int dround_quiet(fcd *d);

#endif
