/* agg.h: the aggregation interface. Rules, server optimizers, the registry, and the round
 * driver that both the daemon and `fedctl aggregate` run.
 *
 * The exact definitions of every rule live in docs/aggregators.md (taken from the design's
 * aggregators.md). This header is the contract:
 *
 *   - A rule (agg_rule) combines client deltas into one delta D. It is a const table of function
 *     pointers, one per file, listed in registry.c. A rule instance (agg_state) lives for one
 *     round: create -> [load_state] -> add... -> finish -> [save_state] -> destroy.
 *   - A server optimizer (agg_opt) turns D into the next model: w_{t+1} = step(w_t, D). Its state
 *     (momentum, moments) persists across rounds as a blob.
 *   - The round driver (agg_round) does what every rule needs and no rule should repeat: input
 *     checks (non-finite values, bad weights), the rule's requirement on n, the deterministic
 *     order of updates by client id, the empty-round rule, and the report.
 *
 * Nothing here knows about sockets, the event loop or SQLite. Functions are thread-compatible:
 * one instance must not be used from two threads at once; distinct instances are independent.
 *
 * Vectors are flat: a model's tensors concatenated in tensor order, `dim` elements in all.
 */
#ifndef FC_AGG_H
#define FC_AGG_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/status.h"
#include "core/tensor.h"

#define AGG_RULE_V1 1
#define AGG_OPT_V1 1

/* Rule flags. */
enum {
    AGG_STREAMING = 1u << 0,     /* O(dim) state: folds each update in add() and keeps nothing */
    AGG_STATEFUL = 1u << 1,      /* has cross-round state: save_state/load_state are set */
    AGG_USES_WEIGHTS = 1u << 2,  /* reads agg_update.weight (else weights are ignored) */
    AGG_USES_CLIENTS = 1u << 3,  /* reads client_id / registered_round beyond ordering (fedau) */
};

/* ---- parameters ---- */

typedef enum agg_param_type {
    AGG_PARAM_DOUBLE = 1,
    AGG_PARAM_UINT = 2,
    AGG_PARAM_BOOL = 3,
    AGG_PARAM_ENUM = 4, /* one of a '|'-separated list in `choices` */
} agg_param_type;

/* Describes one accepted key. Tables end with {NULL}. */
typedef struct agg_param_spec {
    const char *key;
    agg_param_type type;
    const char *default_value; /* as text; NULL = required, "" = unset by default */
    double min, max;           /* inclusive range for DOUBLE/UINT; none if min >= max */
    const char *choices;       /* for ENUM: "examples|uniform" */
    const char *help;          /* one line, for --help and error messages */
} agg_param_spec;

/* key=value pairs as given by the operator (config file or --param). Borrowed strings. */
typedef struct agg_kv {
    const char *key;
    const char *value;
} agg_kv;

typedef struct agg_params {
    const agg_kv *items;
    size_t count;
} agg_params;

/* Parsed values, one per spec entry (same index). `set` is 0 for an unset optional value. */
typedef struct agg_value {
    int set;
    double d;    /* DOUBLE, and UINT as a double too */
    uint64_t u;  /* UINT, BOOL (0/1), ENUM (index into choices) */
} agg_value;

/* Validates params against specs and fills values[] (the caller provides one slot per spec
 * entry). An unknown key, a missing required key, or a bad or out-of-range value is
 * FC_ERR_CONFIG with a message that names the key and lists what `what` (e.g. "rule krum")
 * accepts: "rule krum: unknown parameter 'ff'; accepted: f (uint, default 1)". */
fc_status agg_params_parse(const char *what, const agg_param_spec *specs, const agg_params *p,
                           agg_value *values, fc_error *err);

/* ---- per-round context and updates ---- */

typedef struct agg_context {
    size_t dim;               /* elements per update */
    uint64_t round;           /* round number t (0-based), for fedau */
    uint64_t num_registered;  /* N: clients registered at the round's start, for fedau */
    const char *spool_dir;    /* where retaining rules may create spool files; NULL = TMPDIR */
    size_t memory_budget;     /* bytes a retaining rule may keep in RAM before spooling;
                                 0 = unlimited */
} agg_context;

typedef struct agg_update {
    uint64_t client_id;        /* the order index: updates are ranked by ascending client_id */
    const char *client_name;   /* for reports; may be NULL */
    fc_dtype dtype;            /* element type of data */
    const void *data;          /* dim little-endian elements: the client's delta */
    int data_stable;           /* 1: data stays valid and unchanged until finish() returns (e.g.
                                  a memory-mapped file), so a rule may keep the pointer instead of
                                  copying */
    double weight;             /* n_i, normally num_examples */
    uint64_t staleness;        /* versions behind the current model (async); 0 otherwise */
    uint64_t registered_round; /* round at which this client was registered (fedau) */
    int finite_checked;        /* 1: the caller already checked that every value is finite (a
                                  server validates each upload), so the driver skips that pass */
    /* Optional. A streaming rule that reads data once, front to back, calls this after each
     * window of a few MiB it has finished reading ([p, p + len) within data), so a caller whose
     * data is a mapped spill file can drop those pages as the fold moves on. NULL: not called.
     * The driver clears it when it hands the rule a copy instead of data. */
    void (*consumed)(void *ctx, const void *p, size_t len);
    void *consumed_ctx;
} agg_update;

/* Staleness weights of the asynchronous buffer (rule fedbuff; docs/aggregators.md). */
typedef enum agg_staleness_fn {
    AGG_STALENESS_POLY = 1,     /* (1+tau)^-a */
    AGG_STALENESS_CONSTANT = 2, /* 1 */
    AGG_STALENESS_HINGE = 3,    /* 1 if tau <= b, else 1/(a(tau-b)+1) */
} agg_staleness_fn;
double agg_staleness_weight(agg_staleness_fn fn, double a, double b, uint64_t tau);

/* ---- reports ---- */

typedef struct agg_dropped {
    uint64_t client_id;
    char *client_name; /* owned copy or NULL */
    char *reason;      /* owned: "non_finite", "bad_weight", "shape_mismatch", "stale", ... */
} agg_dropped;

/* What a rule decided. Filled by the driver and the rule; freed by agg_report_free. All arrays
 * are owned. Indices are positions in ascending client_id order among the accepted updates. */
typedef struct agg_report {
    char rule[32];
    size_t n_in;          /* clients accounted for: n_used + n_dropped (dropped include
                             invalid, agg_round_drop'ed and expected-but-missing ones) */
    size_t n_used;        /* updates that reached the rule */
    double total_weight;  /* sum of weights of used updates */
    uint64_t *client_ids; /* n_used client ids, index order */
    size_t *selected;     /* krum, multikrum, bulyan: selected indices, selection order */
    size_t n_selected;
    double *scores;       /* krum, multikrum, bulyan: score per index (n_scores entries) */
    size_t n_scores;
    double *weights_used; /* effective weight per index when the rule derives its own (fedau,
                             ida, geomed); NULL otherwise */
    size_t n_weights_used;
    uint64_t trimmed_low, trimmed_high; /* trimmed_mean, bulyan: values dropped per coordinate */
    uint64_t iterations;                /* geomed, centered_clip */
    uint64_t clipped;                   /* norm_bound, centered_clip: updates (or steps) clipped */
    agg_dropped *dropped;
    size_t n_dropped;
    int empty;            /* 1: no valid update or zero total weight; model left unchanged */
    char note[256];       /* free text, e.g. "total weight 0" */
} agg_report;

void agg_report_init(agg_report *r);
void agg_report_free(agg_report *r);
fc_status agg_report_add_dropped(agg_report *r, uint64_t client_id, const char *client_name,
                                 const char *reason);
/* Serialises the report as one JSON object into out (appended). */
fc_status agg_report_to_json(const agg_report *r, fc_buf *out);

/* ---- rules ---- */

typedef struct agg_state agg_state; /* each rule defines its own struct agg_state_<rule> and
                                       casts; the driver treats it as opaque */

typedef struct agg_rule {
    int version; /* AGG_RULE_V1 */
    const char *name;
    const char *summary;
    unsigned flags;
    const agg_param_spec *params; /* accepted keys; {NULL}-terminated */
    /* Minimum n for this rule with these params, after dropping; FC_ERR_REQUIREMENT with a
     * reason on failure ("krum needs n >= 2f+3 = 5 updates, got 4"). NULL: any n >= 1. The
     * driver calls it at finish with the number of updates that reached add(), n >= 1. */
    fc_status (*check_n)(const agg_state *s, size_t n, fc_error *err);
    fc_status (*create)(const agg_params *p, const agg_context *ctx, agg_state **out,
                        fc_error *err);
    /* Called for EVERY rule (streaming or not) in strictly ascending client_id order with
     * validated updates: known dtype, every value finite, weight finite and >= 0. The k-th call
     * (from 0) is index k in the report. u->data is aligned to its element size (the driver
     * copies a misaligned update) and is valid only until add() returns unless u->data_stable
     * is 1, in which case it stays valid and unchanged until finish() returns. */
    fc_status (*add)(agg_state *s, const agg_update *u, fc_error *err);
    /* Writes dim doubles of D to out_delta. Fills rule-specific report fields. Called once, only
     * when check_n passed and the round is not empty (>= 1 update and total weight > 0). */
    fc_status (*finish)(agg_state *s, double *out_delta, agg_report *rep, fc_error *err);
    /* Cross-round state (AGG_STATEFUL only; NULL otherwise). The blob starts with a version
     * number; load_state refuses an unknown version with FC_ERR_VERSION. save_state is called
     * after finish and captures the state the next round starts from. */
    fc_status (*save_state)(const agg_state *s, fc_buf *out, fc_error *err);
    fc_status (*load_state)(agg_state *s, const void *blob, size_t len, fc_error *err);
    void (*destroy)(agg_state *s);
    /* Optional. A buffer of dim doubles owned by the state that finish() may write D into
     * (finish must then work when out_delta aliases it, e.g. an accumulator scaled in place).
     * Lets agg_round_finish_shared avoid a second dim-sized buffer. NULL: no such buffer. */
    double *(*result_buffer)(agg_state *s);
} agg_rule;

/* ---- server optimizers ---- */

typedef struct agg_opt_state agg_opt_state;

typedef struct agg_opt {
    int version; /* AGG_OPT_V1 */
    const char *name;
    const char *summary;
    const agg_param_spec *params;
    fc_status (*create)(const agg_params *p, size_t dim, agg_opt_state **out, fc_error *err);
    /* w (dim f32 values) is updated in place from D (dim doubles). Never called for an empty
     * round, so state does not advance then. */
    fc_status (*step)(agg_opt_state *s, float *w, const double *delta, fc_error *err);
    /* The same step over elements [first, first + count) only: w and delta point at element
     * first. Every optimizer here is elementwise, so a step may be taken as consecutive ranges
     * that cover [0, dim) once, in ascending order (a caller streaming w_t in blocks); the
     * state's per-round flags advance when the range that ends at dim is done. step(w, D) is
     * step_range(w, D, 0, dim). FC_ERR_RANGE if the range runs past dim. */
    fc_status (*step_range)(agg_opt_state *s, float *w, const double *delta, size_t first,
                            size_t count, fc_error *err);
    fc_status (*save_state)(const agg_opt_state *s, fc_buf *out, fc_error *err);
    fc_status (*load_state)(agg_opt_state *s, const void *blob, size_t len, fc_error *err);
    void (*destroy)(agg_opt_state *s);
} agg_opt;

/* ---- registry ---- */

const agg_rule *agg_rule_find(const char *name);
const agg_opt *agg_opt_find(const char *name);
/* NULL-terminated lists, in documentation order. */
const agg_rule *const *agg_rules(void);
const agg_opt *const *agg_opts(void);
/* "fedavg, fedau, median, ..." for error messages. */
const char *agg_rule_names(void);
const char *agg_opt_names(void);

/* ---- round driver ---- */

typedef struct agg_round agg_round;

/* Starts a round with rule `rule` (params p) over vectors of ctx->dim elements. If rule_state is
 * not NULL it is loaded into the rule (stateful rules). */
fc_status agg_round_begin(const agg_rule *rule, const agg_params *p, const agg_context *ctx,
                          const void *rule_state, size_t rule_state_len, agg_round **out,
                          fc_error *err);
/* Declares the clients expected this round (the selected set), so that a rule can take each
 * update as soon as every lower expected client_id has arrived or been dropped; only updates
 * that arrive early are kept (as owned copies, or as pointers when data_stable). Without it,
 * the driver keeps every update (copied unless data_stable) and hands them to the rule in
 * ascending client_id order at finish. Optional; call at most once, before the first add or
 * drop (else FC_ERR_STATE). A duplicate id in the list is FC_ERR_EXISTS. After it, an add or
 * drop of an id not in the list is FC_ERR_NOT_FOUND (nothing recorded). Expected ids that never
 * arrive are reported as dropped with reason "missing" at finish. */
fc_status agg_round_expect(agg_round *r, const uint64_t *client_ids, size_t n, fc_error *err);
/* Offers one update, in any arrival order. Validates it: an unknown dtype or NULL data is
 * dropped as "bad_dtype", a NaN/Inf value anywhere as "non_finite", a negative or non-finite
 * weight as "bad_weight"; a dropped update is recorded in the report and FC_OK is returned (the
 * round goes on). FC_ERR_EXISTS if client_id was already offered. The driver makes the result
 * independent of arrival order: every rule sees updates in ascending client_id order. An error
 * returned by the rule's add() fails the round: it is returned here and by finish. */
fc_status agg_round_add(agg_round *r, const agg_update *u, fc_error *err);
/* Records that a client will not deliver (timed out, rejected upstream) with a reason. It counts
 * as offered (n_in) and as arrived for the ordering of agg_round_expect. FC_ERR_EXISTS if
 * client_id was already offered or dropped. */
fc_status agg_round_drop(agg_round *r, uint64_t client_id, const char *client_name,
                         const char *reason, fc_error *err);
/* Closes the round: checks the rule's requirement on n (FC_ERR_REQUIREMENT with a reason, and
 * nothing applied), runs finish, and writes D (dim doubles) to out_delta. rep must be
 * agg_report_init'ed (or zeroed); it is always filled, also on failure.
 * EMPTY ROUND (no valid update, or total weight 0): returns FC_OK with rep->empty = 1, a reason
 * in rep->note, out_delta all zeros, and the rule's finish is not run. The caller must then NOT
 * step the optimizer nor publish a new model version; agg_round_save_state gives back the blob
 * loaded at begin unchanged. Callable once (FC_ERR_STATE after). */
fc_status agg_round_finish(agg_round *r, double *out_delta, agg_report *rep, fc_error *err);
/* As agg_round_finish, but D is written into a buffer owned by the round and *out_delta points
 * at it, valid until agg_round_free: the rule's own accumulator when the rule lends it
 * (agg_rule.result_buffer: fedavg, fedau), so a streaming round needs one dim-sized buffer of
 * doubles instead of two; else a buffer the round allocates. *out_delta is NULL on error. */
fc_status agg_round_finish_shared(agg_round *r, double **out_delta, agg_report *rep,
                                  fc_error *err);
/* The rule's state after a successful finish, for persisting, appended to out: nothing for
 * stateless rules; on an empty round the blob given to agg_round_begin (possibly nothing).
 * FC_ERR_STATE before finish or after a failed one. */
fc_status agg_round_save_state(const agg_round *r, fc_buf *out, fc_error *err);
void agg_round_free(agg_round *r);

#endif
