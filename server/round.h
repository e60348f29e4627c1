/* round.h: the round scheduler, a pure state machine, synchronous or asynchronous (FedBuff).
 *
 * round.c owns the round state (WAITING -> TRAINING -> AGGREGATING -> COMMITTED | FAILED, plus
 * STOPPED and PAUSED), the view of idle clients and the per-round participant records. In
 * asynchronous mode a "round" is one buffer of buffer_size updates: tasks are not tied to it;
 * up to `concurrency` clients train at once, each from the version current when its task left,
 * and each update counts toward the buffer that is open when it arrives. It never
 * does I/O, never reads a clock, never touches sockets, libuv, SQLite or the aggregate: the
 * daemon feeds it EVENTS (with the monotonic time in milliseconds) and carries out the ACTIONS
 * it queues. See docs/rounds.md for the state machine and every rule.
 *
 * Protocol with the daemon: after every event call, drain the queue with round_next_action()
 * until it returns false. An event called while actions are still queued fails with FC_ERR_BUSY
 * (so no action is ever lost). Not thread-safe: the loop thread owns it.
 */
#ifndef FC_SERVER_ROUND_H
#define FC_SERVER_ROUND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#define ROUND_REASON_MAX 160
#define ROUND_METRIC_NAME_MAX 64
#define ROUND_MAX_METRICS 32
#define ROUND_MAX_SELECT 100000u          /* clients_per_round + over_select */
#define ROUND_MAX_EXAMPLES (1ull << 53)    /* exact in a double */

typedef enum round_mode { ROUND_MODE_SYNC = 0, ROUND_MODE_ASYNC = 1 } round_mode;

/* [round] keys. Defaults from round_config_defaults(); ranges checked by round_config_validate. */
typedef struct round_config {
    round_mode mode;
    uint32_t min_clients;       /* eligible idle clients needed to start a round; 1.. */
    uint32_t clients_per_round; /* updates wanted per round; 1.. */
    uint32_t over_select;       /* extra clients selected beyond clients_per_round (a count) */
    uint64_t round_timeout_ms;  /* deadline after the tasks are sent; 1..604800000 */
    uint32_t min_updates;       /* quorum; 1..min(clients_per_round, min_clients) */
    uint64_t max_rounds;        /* committed training rounds after which the scheduler stops
                                 * (once the last version's evaluation, if due, ran); 0 = unlimited */
    uint64_t eval_every;        /* evaluate model version v when v % eval_every == 0; 0 = never */
    uint64_t seed;              /* selection PRNG seed */
    double mu;                  /* FedProx mu forwarded in the task config; finite, >= 0 */
    /* asynchronous mode only (min_clients, clients_per_round, over_select, min_updates and
     * eval_every are then unused; round_timeout is the deadline of each task) */
    uint32_t buffer_size;       /* K: accepted updates per committed version; 1.. */
    uint32_t concurrency;       /* clients training at once; 1.. */
    uint64_t max_staleness;     /* an update trained more versions back is refused */
} round_config;

void round_config_defaults(round_config *cfg);
/* FC_OK, or FC_ERR_CONFIG naming the key, its value and the accepted range. */
fc_status round_config_validate(const round_config *cfg, fc_error *err);

typedef enum round_state {
    ROUND_WAITING = 0,
    ROUND_TRAINING,    /* tasks out (train or evaluate) */
    ROUND_AGGREGATING, /* closed; aggregation and/or commit in progress */
    ROUND_COMMITTED,
    ROUND_FAILED,
    ROUND_PAUSED,
    ROUND_STOPPED,
} round_state;

typedef enum round_kind { ROUND_KIND_TRAIN = 1, ROUND_KIND_EVALUATE = 2 } round_kind;

typedef enum round_outcome {
    ROUND_PENDING = 0,
    ROUND_ACCEPTED,
    ROUND_REJECTED,
    ROUND_TIMED_OUT,
    ROUND_DROPPED,   /* disconnected while its task was outstanding */
    ROUND_CANCELLED, /* round closed (over-selection or stop) before it answered */
} round_outcome;

typedef enum round_action_type {
    ROUND_ACT_TRANSITION = 1, /* log it: round_id, kind, from, to, reason */
    ROUND_ACT_SEND_TASK,      /* client_id, round_id, kind, model_version; mu from the config.
                               * Async: round_id names the task (the buffer open when it left) */
    ROUND_ACT_CANCEL_TASK,    /* client_id, round_id, reason */
    ROUND_ACT_ARM_TIMER,      /* call round_tick at or after deadline_ms (replaces any earlier) */
    ROUND_ACT_DISARM_TIMER,   /* the round closed before its deadline (async: no task left) */
    ROUND_ACT_START_AGGREGATION, /* round_id: finish the rule once every accepted update is
                                  * folded, then call round_aggregation_done */
    ROUND_ACT_COMMIT,         /* round_id, kind: persist in one transaction the round record,
                               * participants and (TRAIN) the new model model_version, or
                               * (EVALUATE) the metrics; then call round_commit_done */
    ROUND_ACT_RECORD_FAILED,  /* round_id, reason: persist the failed round and its participants;
                               * discard any aggregation state of that round */
} round_action_type;

typedef struct round_action {
    round_action_type type;
    uint64_t round_id;
    round_kind kind;
    uint64_t client_id;
    uint64_t model_version; /* SEND_TASK: version to start from; COMMIT: new (TRAIN) or
                             * evaluated (EVALUATE) version */
    uint64_t deadline_ms;
    round_state from, to;
    char reason[ROUND_REASON_MAX];
} round_action;

typedef struct round_participant {
    uint64_t client_id;
    round_outcome outcome;
    uint64_t num_examples;
    char reason[ROUND_REASON_MAX]; /* rejected: why */
    /* async: the version its task started from, and how many versions were committed since
     * when the answer arrived */
    uint64_t base_version, staleness;
    bool gone; /* async: disconnected after answering in this buffer */
} round_participant;

typedef struct round_metric {
    const char *name;
    double value;
} round_metric;

typedef struct round_metric_result {
    char name[ROUND_METRIC_NAME_MAX];
    double weighted_sum; /* sum of num_examples * value over the reports that had it */
    uint64_t examples;   /* sum of num_examples over those reports */
    double mean;         /* weighted_sum / examples, set when the round closes */
} round_metric_result;

typedef struct round_info {
    uint64_t round_id;
    round_kind kind;
    round_state state; /* TRAINING, AGGREGATING, COMMITTED or FAILED */
    uint64_t model_version;
    uint64_t started_ms, closed_ms, ended_ms;
    uint32_t selected, accepted, rejected, timed_out, dropped, cancelled;
    uint64_t total_examples;
    char reason[ROUND_REASON_MAX]; /* why it failed, else empty */
} round_info;

typedef struct round_restore_info {
    uint64_t last_round_id;     /* highest round id recorded (any outcome); 0 if none */
    uint64_t model_version;     /* newest committed model version */
    uint64_t last_eval_version; /* highest version an evaluation round was run for; 0 if none */
    uint64_t trained_rounds;    /* training rounds committed so far (for max_rounds) */
} round_restore_info;

typedef struct round_sched round_sched;

/* Validates cfg (copied) and creates a scheduler in WAITING with model version 0 and next round
 * id 1. FC_ERR_CONFIG or FC_ERR_NOMEM. */
fc_status round_create(const round_config *cfg, round_sched **out, fc_error *err);
void round_free(round_sched *r);

/* Restart: continue numbering after info->last_round_id. Only before any round started;
 * FC_ERR_STATE otherwise. Moves to STOPPED if max_rounds is already reached. */
fc_status round_restore(round_sched *r, const round_restore_info *info, fc_error *err);

/* Pops the oldest queued action into *out. false when the queue is empty. */
bool round_next_action(round_sched *r, round_action *out);

/* ---- events; each takes the monotonic time now_ms (earlier values are clamped) ---- */
fc_status round_client_available(round_sched *r, uint64_t now_ms, uint64_t client_id,
                                 fc_error *err);
fc_status round_client_gone(round_sched *r, uint64_t now_ms, uint64_t client_id, fc_error *err);
fc_status round_tick(round_sched *r, uint64_t now_ms, fc_error *err);
/* A validated training update. FC_OK: counted, fold it. Otherwise refused, nothing changed
 * (FC_ERR_STATE late "round 12 already closed", FC_ERR_PROTOCOL unselected/duplicate/wrong
 * round or kind), except FC_ERR_RANGE for num_examples outside 1..2^53, which rejects the
 * client's answer. Async: round_id must name the client's outstanding task (FC_ERR_PROTOCOL
 * otherwise) and the buffer must be open: while it is AGGREGATING or PAUSED this is FC_ERR_STATE
 * and the caller holds the update until the next buffer opens (TRAINING again). The answer
 * records the staleness at this moment; max_staleness is the job of round_task_check. */
fc_status round_update_received(round_sched *r, uint64_t now_ms, uint64_t client_id,
                                uint64_t round_id, uint64_t num_examples, fc_error *err);
/* The daemon rejected the client's update (validation); records the reason (truncated to
 * ROUND_REASON_MAX - 1 bytes) as its answer. Same refusals as round_update_received. */
fc_status round_update_rejected(round_sched *r, uint64_t now_ms, uint64_t client_id,
                                uint64_t round_id, const char *reason, fc_error *err);
/* An evaluation report (synchronous mode). Same refusals as round_update_received; bad metrics (non-finite,
 * duplicate or over-long names, more than ROUND_MAX_METRICS distinct names in the round) reject
 * the client's answer with that reason and return FC_ERR_NON_FINITE/FC_ERR_LIMIT/FC_ERR_FORMAT. */
fc_status round_eval_received(round_sched *r, uint64_t now_ms, uint64_t client_id,
                              uint64_t round_id, uint64_t num_examples,
                              const round_metric *metrics, size_t n_metrics, fc_error *err);
/* Result of START_AGGREGATION. st != FC_OK fails the round with "aggregation failed: reason". */
fc_status round_aggregation_done(round_sched *r, uint64_t now_ms, uint64_t round_id,
                                 fc_status st, const char *reason, fc_error *err);
/* Result of COMMIT. st != FC_OK fails the round with "commit failed: reason". */
fc_status round_commit_done(round_sched *r, uint64_t now_ms, uint64_t round_id, fc_status st,
                            const char *reason, fc_error *err);
/* Operator or shutdown stop. A round in TRAINING or AGGREGATING before its commit fails with
 * reason (NULL: "coordinator stopping"); a commit in flight finishes first. Then STOPPED. */
fc_status round_stop(round_sched *r, uint64_t now_ms, const char *reason, fc_error *err);
/* No new round starts while paused; a round in flight finishes first. */
fc_status round_pause(round_sched *r, uint64_t now_ms, fc_error *err);
fc_status round_resume(round_sched *r, uint64_t now_ms, fc_error *err);

/* ---- asynchronous mode ---- */

typedef struct round_task {
    uint64_t client_id;
    uint64_t round_id;      /* the task's name on the wire: the buffer open when it left */
    uint64_t model_version; /* the version it trains from */
    uint64_t deadline_ms;
} round_task;

/* The outstanding task of client_id, and its staleness (versions committed since it left).
 * FC_ERR_NOT_FOUND when the client has none; FC_ERR_REQUIREMENT "stale: ..." when the staleness
 * exceeds max_staleness (the daemon then refuses the upload, which round_update_rejected records).
 * FC_ERR_STATE in synchronous mode. */
fc_status round_task_check(const round_sched *r, uint64_t client_id, round_task *out,
                           uint64_t *staleness, fc_error *err);

typedef struct round_async_stats {
    uint32_t buffer_fill;   /* updates accepted into the open buffer */
    uint32_t buffer_size;
    size_t in_flight;       /* outstanding tasks */
    uint32_t concurrency;
    uint64_t tasks_sent, tasks_expired, tasks_dropped;
} round_async_stats;
/* FC_ERR_STATE in synchronous mode. */
fc_status round_get_async_stats(const round_sched *r, round_async_stats *out);

/* ---- queries ---- */
round_state round_get_state(const round_sched *r);
round_mode round_get_mode(const round_sched *r);
uint64_t round_current_id(const round_sched *r);   /* the open or last round; 0 if none */
uint64_t round_model_version(const round_sched *r);
size_t round_idle_count(const round_sched *r);
/* The current or the previous round (records stay until the round after next starts).
 * FC_ERR_NOT_FOUND for older ids. Pointers are valid until the next event. */
fc_status round_get_info(const round_sched *r, uint64_t round_id, round_info *out);
fc_status round_get_participants(const round_sched *r, uint64_t round_id,
                                 const round_participant **out, size_t *n);
fc_status round_get_metrics(const round_sched *r, uint64_t round_id,
                            const round_metric_result **out, size_t *n);

const char *round_state_name(round_state s);
const char *round_outcome_name(round_outcome o);
const char *round_kind_name(round_kind k);

/* ---- PRNG (documented in docs/rounds.md) ---- */
typedef struct round_prng {
    uint64_t s[4];
} round_prng;
uint64_t round_splitmix64(uint64_t *state);
/* xoshiro256** seeded with four splitmix64 outputs from seed ^ (round_id * 0xD1B54A32D192ED03). */
void round_prng_seed(round_prng *p, uint64_t seed, uint64_t round_id);
uint64_t round_prng_next(round_prng *p);
/* Uniform in [0, n), n >= 1, by rejection (no modulo bias). */
uint64_t round_prng_below(round_prng *p, uint64_t n);

#endif
