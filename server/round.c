/* round.c: the round scheduler, synchronous or asynchronous (see round.h and docs/rounds.md).
 *
 * Owns the round state machine, the sorted set of idle clients, the selection PRNG and the
 * participant records of the current and previous round. It must never do I/O, read a clock or
 * touch the aggregate: every effect leaves as a queued round_action. Every state change goes
 * through transition(), which queues a TRANSITION action for the daemon to log.
 *
 * Memory: the participant arrays and the action queue are sized from the configuration at
 * create; the idle set grows with the number of registered clients. Nothing else allocates, and
 * nothing on the close/fail paths can fail: the idle set always has room for the busy clients.
 * Async mode: the task table holds `concurrency` entries; a buffer's participant array grows
 * on the answer path (an allocation failure refuses that answer and changes nothing). A client
 * answers at most once per buffer: after its answer it rests until the buffer ends.
 */
#include "server/round.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"

typedef struct round_slot {
    round_info info;
    round_participant *parts;
    size_t n_parts, cap_parts;
    round_metric_result metrics[ROUND_MAX_METRICS];
    size_t n_metrics;
    uint64_t deadline_ms;
    bool commit_pending;
} round_slot;

struct round_sched {
    round_config cfg;
    round_state state;
    uint64_t now;
    uint64_t next_round_id;
    uint64_t model_version;
    uint64_t last_eval_version;
    uint64_t trained; /* committed training rounds, restored ones included */
    bool started_any, pause_requested, stop_requested;
    char stop_reason[ROUND_REASON_MAX];
    uint64_t *idle; /* sorted ascending, no duplicates */
    size_t n_idle, cap_idle;
    size_t n_busy; /* selected, connected, not yet answered */
    uint32_t max_select;
    round_slot slots[2];
    round_slot *cur, *prev; /* cur NULL until the first round starts */
    round_action *queue;
    size_t q_head, q_len, q_cap;
    /* async mode */
    round_task *tasks; /* n_tasks == n_busy outstanding tasks, unordered */
    size_t n_tasks;
    size_t n_resting;  /* answered in the open buffer, still connected: idle when it ends */
    uint64_t armed;    /* the deadline the daemon's timer is armed for; 0 = none */
    round_prng aprng;  /* which idle client gets the next task */
    uint64_t tasks_sent, tasks_expired, tasks_dropped;
};

static bool is_async(const round_sched *r) { return r->cfg.mode == ROUND_MODE_ASYNC; }

/* ---------------------------------------------------------------- config */

void round_config_defaults(round_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->min_clients = 2;
    cfg->clients_per_round = 10;
    cfg->over_select = 0;
    cfg->round_timeout_ms = 600000;
    cfg->min_updates = 2;
    cfg->max_rounds = 0;
    cfg->eval_every = 0;
    cfg->seed = 0;
    cfg->mu = 0.0;
    cfg->mode = ROUND_MODE_SYNC;
    cfg->buffer_size = 10;
    cfg->concurrency = 100;
    cfg->max_staleness = 20;
}

static fc_status async_config_validate(const round_config *c, fc_error *err) {
    if (c->buffer_size < 1 || c->buffer_size > ROUND_MAX_SELECT)
        return fc_error_set(err, FC_ERR_CONFIG, "[round] buffer_size = %" PRIu32 ": accepted 1..%u",
                            c->buffer_size, ROUND_MAX_SELECT);
    if (c->concurrency < 1 || c->concurrency > ROUND_MAX_SELECT)
        return fc_error_set(err, FC_ERR_CONFIG, "[round] concurrency = %" PRIu32 ": accepted 1..%u",
                            c->concurrency, ROUND_MAX_SELECT);
    if (c->eval_every)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "[round] eval_every = %" PRIu64 ": evaluation rounds exist only in "
                            "mode = sync (set eval_every = 0 with mode = async)",
                            c->eval_every);
    return FC_OK;
}

fc_status round_config_validate(const round_config *c, fc_error *err) {
    if (!c)
        return fc_error_set(err, FC_ERR_INVALID, "[round]: no configuration");
    if (c->min_clients < 1)
        return fc_error_set(err, FC_ERR_CONFIG, "[round] min_clients = 0: must be at least 1");
    if (c->clients_per_round < 1 || c->clients_per_round > ROUND_MAX_SELECT)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "[round] clients_per_round = %" PRIu32 ": accepted 1..%u",
                            c->clients_per_round, ROUND_MAX_SELECT);
    if (c->over_select > ROUND_MAX_SELECT - c->clients_per_round)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "[round] over_select = %" PRIu32 ": clients_per_round + over_select "
                            "must not exceed %u",
                            c->over_select, ROUND_MAX_SELECT);
    if (c->round_timeout_ms < 1 || c->round_timeout_ms > 604800000ull)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "[round] round_timeout = %" PRIu64 " ms: accepted 1..604800000 ms",
                            c->round_timeout_ms);
    if (c->min_updates < 1)
        return fc_error_set(err, FC_ERR_CONFIG, "[round] min_updates = 0: must be at least 1");
    if (c->min_updates > c->clients_per_round)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "[round] min_updates = %" PRIu32 " exceeds clients_per_round = %" PRIu32,
                            c->min_updates, c->clients_per_round);
    if (c->min_updates > c->min_clients)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "[round] min_updates = %" PRIu32 " exceeds min_clients = %" PRIu32
                            ": a round started with min_clients could never reach quorum",
                            c->min_updates, c->min_clients);
    if (!isfinite(c->mu) || c->mu < 0)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "[round] mu = %g: must be a finite number >= 0", c->mu);
    if (c->mode != ROUND_MODE_SYNC && c->mode != ROUND_MODE_ASYNC)
        return fc_error_set(err, FC_ERR_CONFIG, "[round] mode %d: accepted sync or async",
                            (int)c->mode);
    if (c->mode == ROUND_MODE_ASYNC)
        return async_config_validate(c, err);
    return FC_OK;
}

/* ---------------------------------------------------------------- names */

const char *round_state_name(round_state s) {
    switch (s) {
    case ROUND_WAITING: return "WAITING";
    case ROUND_TRAINING: return "TRAINING";
    case ROUND_AGGREGATING: return "AGGREGATING";
    case ROUND_COMMITTED: return "COMMITTED";
    case ROUND_FAILED: return "FAILED";
    case ROUND_PAUSED: return "PAUSED";
    case ROUND_STOPPED: return "STOPPED";
    }
    return "UNKNOWN";
}

const char *round_outcome_name(round_outcome o) {
    switch (o) {
    case ROUND_PENDING: return "pending";
    case ROUND_ACCEPTED: return "accepted";
    case ROUND_REJECTED: return "rejected";
    case ROUND_TIMED_OUT: return "timed_out";
    case ROUND_DROPPED: return "dropped";
    case ROUND_CANCELLED: return "cancelled";
    }
    return "unknown";
}

const char *round_kind_name(round_kind k) {
    switch (k) {
    case ROUND_KIND_TRAIN: return "train";
    case ROUND_KIND_EVALUATE: return "evaluate";
    }
    return "unknown";
}

/* ---------------------------------------------------------------- PRNG */

uint64_t round_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void round_prng_seed(round_prng *p, uint64_t seed, uint64_t round_id) {
    uint64_t sm = seed ^ (round_id * 0xD1B54A32D192ED03ull);
    for (int i = 0; i < 4; i++)
        p->s[i] = round_splitmix64(&sm);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t round_prng_next(round_prng *p) {
    uint64_t *s = p->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t round_prng_below(round_prng *p, uint64_t n) {
    assert(n >= 1);
    uint64_t threshold = (0 - n) % n; /* 2^64 mod n: values below it would bias the modulo */
    for (;;) {
        uint64_t x = round_prng_next(p);
        if (x >= threshold)
            return x % n;
    }
}

/* ---------------------------------------------------------------- lifecycle */

fc_status round_create(const round_config *cfg, round_sched **out, fc_error *err) {
    fc_status st = round_config_validate(cfg, err);
    if (st != FC_OK)
        return st;
    round_sched *r = fc_calloc(1, sizeof *r);
    if (!r)
        return fc_error_set(err, FC_ERR_NOMEM, "round scheduler: out of memory");
    r->cfg = *cfg;
    r->state = ROUND_WAITING;
    r->next_round_id = 1;
    r->max_select = cfg->clients_per_round + cfg->over_select;
    /* Worst event: deadline failure (cancel all, 3 transitions, record) that starts the next
     * round (send to all, timer): 2 * max_select + 5. Async: a tick that expires every task
     * and hands them all out again, or a commit that opens the next buffer and fills every
     * free slot: 2 * concurrency + 5. */
    size_t widest = r->max_select;
    if (is_async(r)) {
        widest = cfg->concurrency;
        r->max_select = cfg->buffer_size + cfg->concurrency; /* first size of a buffer's records */
        r->tasks = fc_mallocarray(cfg->concurrency, sizeof *r->tasks);
        round_prng_seed(&r->aprng, cfg->seed, 0);
    }
    r->q_cap = 2 * widest + 16;
    r->queue = fc_mallocarray(r->q_cap, sizeof *r->queue);
    r->slots[0].parts = fc_mallocarray(r->max_select, sizeof(round_participant));
    r->slots[1].parts = fc_mallocarray(r->max_select, sizeof(round_participant));
    r->slots[0].cap_parts = r->slots[1].cap_parts = r->max_select;
    if (!r->queue || !r->slots[0].parts || !r->slots[1].parts || (is_async(r) && !r->tasks)) {
        round_free(r);
        return fc_error_set(err, FC_ERR_NOMEM, "round scheduler: out of memory for %" PRIu32
                            " selected clients", cfg->clients_per_round + cfg->over_select);
    }
    *out = r;
    return FC_OK;
}

void round_free(round_sched *r) {
    if (!r)
        return;
    fc_free(r->queue);
    fc_free(r->tasks);
    fc_free(r->slots[0].parts);
    fc_free(r->slots[1].parts);
    fc_free(r->idle);
    fc_free(r);
}

/* ---------------------------------------------------------------- actions */

static round_action *push(round_sched *r, round_action_type type) {
    assert(r->q_head + r->q_len < r->q_cap); /* bound derived in round_create */
    round_action *a = &r->queue[r->q_head + r->q_len++];
    memset(a, 0, sizeof *a);
    a->type = type;
    if (r->cur) {
        a->round_id = r->cur->info.round_id;
        a->kind = r->cur->info.kind;
    }
    return a;
}

bool round_next_action(round_sched *r, round_action *out) {
    if (!r || r->q_len == 0)
        return false;
    *out = r->queue[r->q_head++];
    if (--r->q_len == 0)
        r->q_head = 0;
    return true;
}

__attribute__((format(printf, 2, 0))) static void set_reason(char *dst, const char *fmt,
                                                            va_list ap) {
    vsnprintf(dst, ROUND_REASON_MAX, fmt, ap);
}

static void copy_reason(char *dst, const char *src) {
    snprintf(dst, ROUND_REASON_MAX, "%s", src ? src : "");
}

__attribute__((format(printf, 3, 4))) static void transition(round_sched *r, round_state to,
                                                             const char *fmt, ...) {
    round_action *a = push(r, ROUND_ACT_TRANSITION);
    a->from = r->state;
    a->to = to;
    va_list ap;
    va_start(ap, fmt);
    set_reason(a->reason, fmt, ap);
    va_end(ap);
    r->state = to;
    if (r->cur && (to == ROUND_TRAINING || to == ROUND_AGGREGATING || to == ROUND_COMMITTED ||
                   to == ROUND_FAILED))
        r->cur->info.state = to;
}

static fc_status begin_event(round_sched *r, uint64_t now, fc_error *err) {
    if (!r)
        return fc_error_set(err, FC_ERR_INVALID, "round scheduler: NULL");
    if (r->q_len)
        return fc_error_set(err, FC_ERR_BUSY,
                            "round scheduler: %zu actions not yet drained with round_next_action",
                            r->q_len);
    if (now > r->now)
        r->now = now;
    return FC_OK;
}

/* ---------------------------------------------------------------- idle set */

static size_t idle_lower_bound(const round_sched *r, uint64_t id) {
    size_t lo = 0, hi = r->n_idle;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->idle[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool idle_contains(const round_sched *r, uint64_t id) {
    size_t i = idle_lower_bound(r, id);
    return i < r->n_idle && r->idle[i] == id;
}

/* Capacity for it was reserved (n_idle + n_busy <= cap_idle): cannot fail. */
static void idle_insert(round_sched *r, uint64_t id) {
    assert(r->n_idle < r->cap_idle);
    size_t i = idle_lower_bound(r, id);
    assert(i == r->n_idle || r->idle[i] != id);
    memmove(&r->idle[i + 1], &r->idle[i], (r->n_idle - i) * sizeof *r->idle);
    r->idle[i] = id;
    r->n_idle++;
}

static void idle_remove_at(round_sched *r, size_t i) {
    memmove(&r->idle[i], &r->idle[i + 1], (r->n_idle - i - 1) * sizeof *r->idle);
    r->n_idle--;
}

/* ---------------------------------------------------------------- rounds */

static round_participant *find_part(round_slot *s, uint64_t client) {
    for (size_t i = 0; i < s->n_parts; i++)
        if (s->parts[i].client_id == client)
            return &s->parts[i];
    return NULL;
}

static bool eval_due(const round_sched *r) {
    uint64_t v = r->model_version, k = r->cfg.eval_every;
    return k && v > 0 && v % k == 0 && v > r->last_eval_version;
}

/* max_rounds training rounds are committed and the last version needs no evaluation. */
static bool done_training(const round_sched *r) {
    return r->cfg.max_rounds && r->trained >= r->cfg.max_rounds && !eval_due(r);
}

/* Floyd's sampling of k distinct indices of [0, n) in k draws, with O(k^2) membership checks;
 * the indices are kept in parts[].client_id, then sorted and mapped to ids, which are ascending
 * because the idle set is sorted. The chosen clients leave the idle set (one O(idle) pass). */
static void select_clients(round_sched *r, round_slot *s, size_t k) {
    round_prng p;
    round_prng_seed(&p, r->cfg.seed, s->info.round_id);
    size_t n = r->n_idle;
    for (size_t j = n - k; j < n; j++) {
        uint64_t t = round_prng_below(&p, (uint64_t)j + 1);
        bool seen = false;
        for (size_t i = 0; i < s->n_parts && !seen; i++)
            seen = s->parts[i].client_id == t;
        s->parts[s->n_parts++].client_id = seen ? (uint64_t)j : t;
    }
    for (size_t i = 1; i < k; i++) { /* insertion sort: k is small */
        uint64_t v = s->parts[i].client_id;
        size_t j = i;
        for (; j > 0 && s->parts[j - 1].client_id > v; j--)
            s->parts[j].client_id = s->parts[j - 1].client_id;
        s->parts[j].client_id = v;
    }
    size_t w = 0, c = 0;
    for (size_t i = 0; i < n; i++) {
        if (c < k && s->parts[c].client_id == i) {
            uint64_t id = r->idle[i];
            memset(&s->parts[c], 0, sizeof s->parts[c]);
            s->parts[c].client_id = id;
            s->parts[c].outcome = ROUND_PENDING;
            c++;
        } else {
            r->idle[w++] = r->idle[i];
        }
    }
    assert(c == k && r->n_busy == 0);
    r->n_idle = w;
    r->n_busy = k;
}

/* The other slot becomes the current round (its participant array is kept and reused). */
static round_slot *next_slot(round_sched *r) {
    round_slot *next = r->cur == &r->slots[0] ? &r->slots[1] : &r->slots[0];
    r->prev = r->cur;
    r->cur = next;
    round_participant *parts = next->parts;
    size_t cap = next->cap_parts;
    memset(next, 0, sizeof *next);
    next->parts = parts;
    next->cap_parts = cap;
    next->info.round_id = r->next_round_id++;
    return next;
}

/* ---------------------------------------------------------------- async mode */

/* Arms the daemon's timer for the earliest task deadline, if that changed. */
static void async_arm(round_sched *r) {
    uint64_t min = 0;
    for (size_t i = 0; i < r->n_tasks; i++)
        if (!min || r->tasks[i].deadline_ms < min)
            min = r->tasks[i].deadline_ms;
    if (min == r->armed)
        return;
    r->armed = min;
    if (min)
        push(r, ROUND_ACT_ARM_TIMER)->deadline_ms = min;
    else
        push(r, ROUND_ACT_DISARM_TIMER);
}

/* Hands tasks to idle clients, chosen uniformly by the seeded PRNG, up to concurrency. Only
 * while a buffer is open and no pause or stop is pending. */
static void async_dispatch(round_sched *r) {
    if (r->state == ROUND_TRAINING && !r->pause_requested && !r->stop_requested) {
        while (r->n_tasks < r->cfg.concurrency && r->n_idle > 0) {
            size_t i = (size_t)round_prng_below(&r->aprng, r->n_idle);
            uint64_t id = r->idle[i];
            idle_remove_at(r, i);
            round_task *t = &r->tasks[r->n_tasks++];
            t->client_id = id;
            t->round_id = r->cur->info.round_id;
            t->model_version = r->model_version;
            t->deadline_ms = r->now + r->cfg.round_timeout_ms;
            r->n_busy++;
            r->tasks_sent++;
            round_action *a = push(r, ROUND_ACT_SEND_TASK);
            a->client_id = id;
            a->model_version = t->model_version;
            a->deadline_ms = t->deadline_ms;
        }
    }
    async_arm(r);
}

static round_task *find_task(round_sched *r, uint64_t client) {
    for (size_t i = 0; i < r->n_tasks; i++)
        if (r->tasks[i].client_id == client)
            return &r->tasks[i];
    return NULL;
}

static void task_remove(round_sched *r, round_task *t) {
    *t = r->tasks[--r->n_tasks];
    r->n_busy--;
}

/* Ends every outstanding task (stop, max_rounds): the clients are told and become idle. */
static void async_cancel_all(round_sched *r, const char *why) {
    while (r->n_tasks) {
        round_task *t = &r->tasks[r->n_tasks - 1];
        round_action *a = push(r, ROUND_ACT_CANCEL_TASK);
        a->client_id = t->client_id;
        a->round_id = t->round_id;
        copy_reason(a->reason, why);
        uint64_t id = t->client_id;
        task_remove(r, t);
        idle_insert(r, id);
    }
    async_arm(r);
}

/* Opens the next buffer: the clients that rested in the last one are idle again. */
static void async_open(round_sched *r) {
    if (r->state != ROUND_WAITING)
        return;
    round_slot *next = next_slot(r);
    next->info.kind = ROUND_KIND_TRAIN;
    next->info.model_version = r->model_version;
    next->info.started_ms = r->now;
    r->started_any = true;
    if (r->prev)
        for (size_t i = 0; i < r->prev->n_parts; i++)
            if (!r->prev->parts[i].gone) {
                r->n_resting--;
                idle_insert(r, r->prev->parts[i].client_id);
            }
    assert(r->n_resting == 0);
    transition(r, ROUND_TRAINING,
               "async buffer: collecting %" PRIu32 " updates on version %" PRIu64
               " (%zu tasks in flight, %zu clients idle)",
               r->cfg.buffer_size, r->model_version, r->n_tasks, r->n_idle);
    async_dispatch(r);
}

static void async_close(round_sched *r) {
    round_slot *s = r->cur;
    s->info.closed_ms = r->now;
    s->info.selected = (uint32_t)s->n_parts;
    transition(r, ROUND_AGGREGATING,
               "buffer full: %" PRIu32 " updates (%" PRIu32 " rejected) on version %" PRIu64,
               s->info.accepted, s->info.rejected, r->model_version);
    push(r, ROUND_ACT_START_AGGREGATION);
}

/* Writes a client's answer into its record and the round's counts. */
static void record_answer(round_slot *s, round_participant *p, round_outcome o, uint64_t n,
                          const char *reason) {
    p->outcome = o;
    p->num_examples = o == ROUND_ACCEPTED ? n : 0;
    if (o == ROUND_ACCEPTED) {
        s->info.accepted++;
        s->info.total_examples += n;
    } else {
        s->info.rejected++;
        copy_reason(p->reason, reason);
    }
}

/* The answer of client's task `round_id` goes into the open buffer. */
static fc_status async_answer(round_sched *r, uint64_t client, uint64_t round_id,
                              round_outcome o, uint64_t n, const char *reason, fc_error *err) {
    round_task *t = find_task(r, client);
    if (!t)
        return fc_error_set(err, FC_ERR_PROTOCOL, "client %" PRIu64 " has no task outstanding",
                            client);
    if (t->round_id != round_id)
        return fc_error_set(err, FC_ERR_PROTOCOL,
                            "client %" PRIu64 "'s task is round %" PRIu64 ", not round %" PRIu64,
                            client, t->round_id, round_id);
    round_slot *s = r->cur;
    if (r->state != ROUND_TRAINING)
        return fc_error_set(err, FC_ERR_STATE,
                            "no buffer is open (round %" PRIu64 " %s): hold the answer until one is",
                            s ? s->info.round_id : 0, round_state_name(r->state));
    if (s->n_parts == s->cap_parts) {
        size_t cap = s->cap_parts ? 2 * s->cap_parts : 16;
        round_participant *g = cap > SIZE_MAX / sizeof *g ? NULL
                                                          : fc_realloc(s->parts, cap * sizeof *g);
        if (!g)
            return fc_error_set(err, FC_ERR_NOMEM, "client %" PRIu64 ": no memory for the answer "
                                "%zu of round %" PRIu64, client, cap, s->info.round_id);
        s->parts = g;
        s->cap_parts = cap;
    }
    round_participant *p = &s->parts[s->n_parts++];
    memset(p, 0, sizeof *p);
    p->client_id = client;
    p->base_version = t->model_version;
    p->staleness = r->model_version - t->model_version;
    record_answer(s, p, o, n, reason);
    task_remove(r, t);
    r->n_resting++;
    if (o == ROUND_ACCEPTED && s->info.accepted >= r->cfg.buffer_size)
        async_close(r);
    else
        async_dispatch(r);
    return FC_OK;
}

/* Tasks past their deadline end; their clients may get a fresh task at once. */
static void async_expire(round_sched *r) {
    for (size_t i = 0; i < r->n_tasks;) {
        round_task *t = &r->tasks[i];
        if (t->deadline_ms > r->now) {
            i++;
            continue;
        }
        round_action *a = push(r, ROUND_ACT_CANCEL_TASK);
        a->client_id = t->client_id;
        a->round_id = t->round_id;
        snprintf(a->reason, sizeof a->reason, "task of round %" PRIu64 " passed its deadline",
                 t->round_id);
        uint64_t id = t->client_id;
        task_remove(r, t); /* moves the last task into slot i */
        r->tasks_expired++;
        idle_insert(r, id);
    }
    async_dispatch(r);
}

fc_status round_task_check(const round_sched *r, uint64_t client_id, round_task *out,
                           uint64_t *staleness, fc_error *err) {
    if (!r || !is_async(r))
        return fc_error_set(err, FC_ERR_STATE, "tasks are tracked per client only in async mode");
    for (size_t i = 0; i < r->n_tasks; i++) {
        if (r->tasks[i].client_id != client_id)
            continue;
        const round_task *t = &r->tasks[i];
        uint64_t tau = r->model_version - t->model_version;
        if (out)
            *out = *t;
        if (staleness)
            *staleness = tau;
        if (tau > r->cfg.max_staleness)
            return fc_error_set(err, FC_ERR_REQUIREMENT,
                                "stale: trained from version %" PRIu64 ", %" PRIu64
                                " versions behind the current %" PRIu64 " (max_staleness %" PRIu64
                                ")",
                                t->model_version, tau, r->model_version, r->cfg.max_staleness);
        return FC_OK;
    }
    return fc_error_set(err, FC_ERR_NOT_FOUND, "client %" PRIu64 " has no task outstanding",
                        client_id);
}

fc_status round_get_async_stats(const round_sched *r, round_async_stats *out) {
    if (!r || !is_async(r))
        return FC_ERR_STATE;
    memset(out, 0, sizeof *out);
    out->buffer_fill = r->state == ROUND_TRAINING && r->cur ? r->cur->info.accepted : 0;
    out->buffer_size = r->cfg.buffer_size;
    out->in_flight = r->n_tasks;
    out->concurrency = r->cfg.concurrency;
    out->tasks_sent = r->tasks_sent;
    out->tasks_expired = r->tasks_expired;
    out->tasks_dropped = r->tasks_dropped;
    return FC_OK;
}

round_mode round_get_mode(const round_sched *r) { return r->cfg.mode; }

/* ---------------------------------------------------------------- sync rounds */

static void try_start(round_sched *r) {
    if (is_async(r)) {
        async_open(r);
        return;
    }
    if (r->state != ROUND_WAITING || r->n_idle < r->cfg.min_clients)
        return;
    round_slot *next = next_slot(r);
    next->info.kind = eval_due(r) ? ROUND_KIND_EVALUATE : ROUND_KIND_TRAIN;
    next->info.model_version = r->model_version;
    next->info.started_ms = r->now;
    next->deadline_ms = r->now + r->cfg.round_timeout_ms;
    r->started_any = true;
    size_t eligible = r->n_idle;
    size_t k = r->max_select < eligible ? r->max_select : eligible;
    select_clients(r, next, k);
    next->info.selected = (uint32_t)k;
    transition(r, ROUND_TRAINING, "%s round: selected %zu of %zu eligible clients",
               round_kind_name(next->info.kind), k, eligible);
    for (size_t i = 0; i < k; i++) {
        round_action *a = push(r, ROUND_ACT_SEND_TASK);
        a->client_id = next->parts[i].client_id;
        a->model_version = r->model_version;
        a->deadline_ms = next->deadline_ms;
    }
    push(r, ROUND_ACT_ARM_TIMER)->deadline_ms = next->deadline_ms;
}

/* After COMMITTED or FAILED: on to STOPPED, PAUSED or the next round. */
static void round_ended(round_sched *r) {
    round_slot *s = r->cur;
    s->info.ended_ms = r->now;
    if (s->info.kind == ROUND_KIND_EVALUATE && s->info.model_version > r->last_eval_version)
        r->last_eval_version = s->info.model_version;
    if (is_async(r) && (r->stop_requested || done_training(r)))
        async_cancel_all(r, r->stop_requested ? r->stop_reason : "max_rounds reached");
    if (r->stop_requested)
        transition(r, ROUND_STOPPED, "%s", r->stop_reason);
    else if (done_training(r))
        transition(r, ROUND_STOPPED, "max_rounds %" PRIu64 " reached", r->cfg.max_rounds);
    else if (r->pause_requested)
        transition(r, ROUND_PAUSED, "paused by operator");
    else {
        transition(r, ROUND_WAITING, "waiting for round %" PRIu64, r->next_round_id);
        try_start(r);
    }
}

__attribute__((format(printf, 2, 3))) static void fail_round(round_sched *r, const char *fmt,
                                                             ...) {
    round_slot *s = r->cur;
    va_list ap;
    va_start(ap, fmt);
    set_reason(s->info.reason, fmt, ap);
    va_end(ap);
    s->commit_pending = false;
    transition(r, ROUND_FAILED, "%s", s->info.reason);
    copy_reason(push(r, ROUND_ACT_RECORD_FAILED)->reason, s->info.reason);
    round_ended(r);
}

/* Ends every outstanding task with `outcome` and tells the client. */
static void end_pending(round_sched *r, round_outcome outcome, const char *why) {
    round_slot *s = r->cur;
    for (size_t i = 0; i < s->n_parts; i++) {
        round_participant *p = &s->parts[i];
        if (p->outcome != ROUND_PENDING)
            continue;
        p->outcome = outcome;
        if (outcome == ROUND_TIMED_OUT)
            s->info.timed_out++;
        else
            s->info.cancelled++;
        round_action *a = push(r, ROUND_ACT_CANCEL_TASK);
        a->client_id = p->client_id;
        copy_reason(a->reason, why);
        r->n_busy--;
        idle_insert(r, p->client_id);
    }
}

static void finish_metrics(round_slot *s) {
    for (size_t i = 0; i < s->n_metrics; i++)
        s->metrics[i].mean = s->metrics[i].weighted_sum / (double)s->metrics[i].examples;
}

static void close_round(round_sched *r, bool at_deadline) {
    round_slot *s = r->cur;
    char why[ROUND_REASON_MAX];
    uint64_t id = s->info.round_id;
    if (at_deadline)
        snprintf(why, sizeof why, "round %" PRIu64 " deadline passed", id);
    else
        snprintf(why, sizeof why, "round %" PRIu64 " closed with %" PRIu32 " updates", id,
                 s->info.accepted);
    end_pending(r, at_deadline ? ROUND_TIMED_OUT : ROUND_CANCELLED, why);
    if (!at_deadline)
        push(r, ROUND_ACT_DISARM_TIMER);
    s->info.closed_ms = r->now;
    uint32_t need = r->cfg.min_updates, got = s->info.accepted;
    if (got < need) {
        if (at_deadline)
            fail_round(r, "deadline passed with %" PRIu32 " of %" PRIu32 " required updates", got,
                       need);
        else
            fail_round(r,
                       "all %" PRIu32 " selected clients answered with %" PRIu32 " of %" PRIu32
                       " required updates (%" PRIu32 " rejected, %" PRIu32 " dropped)",
                       s->info.selected, got, need, s->info.rejected, s->info.dropped);
        return;
    }
    transition(r, ROUND_AGGREGATING, "%s with %" PRIu32 " of %" PRIu32 " selected clients",
               at_deadline ? "deadline passed" : "closed", got, s->info.selected);
    if (s->info.kind == ROUND_KIND_TRAIN) {
        push(r, ROUND_ACT_START_AGGREGATION);
    } else {
        finish_metrics(s);
        s->commit_pending = true;
        push(r, ROUND_ACT_COMMIT)->model_version = s->info.model_version;
    }
}

static void check_close(round_sched *r) {
    round_slot *s = r->cur;
    if (r->state != ROUND_TRAINING)
        return;
    uint32_t answered = s->info.accepted + s->info.rejected + s->info.dropped;
    if (s->info.accepted >= r->cfg.clients_per_round || answered == s->info.selected)
        close_round(r, false);
}

static void answer(round_sched *r, round_participant *p, round_outcome o, uint64_t n,
                   const char *reason) {
    record_answer(r->cur, p, o, n, reason);
    r->n_busy--;
    idle_insert(r, p->client_id);
    check_close(r);
}

/* Finds the pending participant `client` of the open round `round_id` of kind `kind`. */
static fc_status find_answerable(round_sched *r, uint64_t client, uint64_t round_id,
                                 round_kind kind, round_participant **out, fc_error *err) {
    round_slot *s = r->cur;
    if (!s || round_id > s->info.round_id)
        return fc_error_set(err, FC_ERR_PROTOCOL, "round %" PRIu64 " has not started", round_id);
    if (round_id < s->info.round_id || r->state != ROUND_TRAINING)
        return fc_error_set(err, FC_ERR_STATE, "round %" PRIu64 " already closed", round_id);
    if (s->info.kind != kind)
        return fc_error_set(err, FC_ERR_PROTOCOL, "round %" PRIu64 " is a%s round", round_id,
                            s->info.kind == ROUND_KIND_TRAIN ? " training" : "n evaluation");
    round_participant *p = find_part(s, client);
    if (!p)
        return fc_error_set(err, FC_ERR_PROTOCOL,
                            "client %" PRIu64 " was not selected for round %" PRIu64, client,
                            round_id);
    if (p->outcome != ROUND_PENDING)
        return fc_error_set(err, FC_ERR_PROTOCOL,
                            "client %" PRIu64 " already answered round %" PRIu64 " (%s)", client,
                            round_id, round_outcome_name(p->outcome));
    *out = p;
    return FC_OK;
}

/* ---------------------------------------------------------------- events */

fc_status round_restore(round_sched *r, const round_restore_info *info, fc_error *err) {
    fc_status st = begin_event(r, 0, err);
    if (st != FC_OK)
        return st;
    if (!info)
        return fc_error_set(err, FC_ERR_INVALID, "round_restore: no restore info");
    if (r->started_any || r->state != ROUND_WAITING)
        return fc_error_set(err, FC_ERR_STATE,
                            "round_restore: only before the first round (state %s)",
                            round_state_name(r->state));
    if (info->last_round_id == UINT64_MAX)
        return fc_error_set(err, FC_ERR_RANGE, "round_restore: last round id %" PRIu64
                            " leaves no next id", info->last_round_id);
    r->next_round_id = info->last_round_id + 1;
    r->model_version = info->model_version;
    r->last_eval_version = info->last_eval_version;
    r->trained = info->trained_rounds;
    if (done_training(r))
        transition(r, ROUND_STOPPED, "max_rounds %" PRIu64 " reached before restart (last round %"
                   PRIu64 ")", r->cfg.max_rounds, info->last_round_id);
    return FC_OK;
}

fc_status round_client_available(round_sched *r, uint64_t now_ms, uint64_t client_id,
                                 fc_error *err) {
    fc_status st = begin_event(r, now_ms, err);
    if (st != FC_OK)
        return st;
    if (idle_contains(r, client_id))
        return fc_error_set(err, FC_ERR_EXISTS, "client %" PRIu64 " is already available",
                            client_id);
    round_participant *rest = NULL;
    if (is_async(r)) {
        if (find_task(r, client_id))
            return fc_error_set(err, FC_ERR_EXISTS,
                                "client %" PRIu64 " has a task outstanding (report it gone first)",
                                client_id);
        rest = r->cur && r->state != ROUND_WAITING ? find_part(r->cur, client_id) : NULL;
        if (rest && !rest->gone)
            return fc_error_set(err, FC_ERR_EXISTS,
                                "client %" PRIu64 " already answered in buffer %" PRIu64,
                                client_id, r->cur->info.round_id);
    } else if (r->cur && r->state == ROUND_TRAINING) {
        round_participant *p = find_part(r->cur, client_id);
        if (p && p->outcome == ROUND_PENDING)
            return fc_error_set(err, FC_ERR_EXISTS,
                                "client %" PRIu64 " is busy in round %" PRIu64
                                " (report it gone first)",
                                client_id, r->cur->info.round_id);
    }
    size_t need = r->n_idle + r->n_busy + r->n_resting + 1;
    if (need > r->cap_idle) {
        size_t cap = r->cap_idle ? r->cap_idle * 2 : 16;
        if (cap < need)
            cap = need;
        uint64_t *grown = cap > SIZE_MAX / sizeof *grown
                              ? NULL
                              : fc_realloc(r->idle, cap * sizeof *grown);
        if (!grown) {
            return fc_error_set(err, FC_ERR_NOMEM, "client %" PRIu64 ": no memory for %zu clients",
                                client_id, need);
        }
        r->idle = grown;
        r->cap_idle = cap;
    }
    if (rest) { /* back after answering in this buffer: it rests until the buffer ends */
        rest->gone = false;
        r->n_resting++;
        return FC_OK;
    }
    idle_insert(r, client_id);
    if (is_async(r) && r->state != ROUND_WAITING)
        async_dispatch(r);
    else
        try_start(r);
    return FC_OK;
}

fc_status round_client_gone(round_sched *r, uint64_t now_ms, uint64_t client_id, fc_error *err) {
    fc_status st = begin_event(r, now_ms, err);
    if (st != FC_OK)
        return st;
    size_t i = idle_lower_bound(r, client_id);
    if (i < r->n_idle && r->idle[i] == client_id) {
        idle_remove_at(r, i);
        return FC_OK;
    }
    if (is_async(r)) {
        round_task *t = find_task(r, client_id);
        if (t) {
            task_remove(r, t);
            r->tasks_dropped++;
            async_dispatch(r);
            return FC_OK;
        }
        round_participant *p = r->cur && r->state != ROUND_WAITING ? find_part(r->cur, client_id)
                                                                   : NULL;
        if (p && !p->gone) {
            p->gone = true;
            r->n_resting--;
            return FC_OK;
        }
    } else if (r->cur && r->state == ROUND_TRAINING) {
        round_participant *p = find_part(r->cur, client_id);
        if (p && p->outcome == ROUND_PENDING) {
            p->outcome = ROUND_DROPPED;
            r->cur->info.dropped++;
            r->n_busy--;
            check_close(r);
            return FC_OK;
        }
    }
    return fc_error_set(err, FC_ERR_NOT_FOUND, "client %" PRIu64 " is not registered", client_id);
}

fc_status round_tick(round_sched *r, uint64_t now_ms, fc_error *err) {
    fc_status st = begin_event(r, now_ms, err);
    if (st != FC_OK)
        return st;
    if (is_async(r))
        async_expire(r);
    else if (r->state == ROUND_TRAINING && r->now >= r->cur->deadline_ms)
        close_round(r, true);
    return FC_OK;
}

fc_status round_update_received(round_sched *r, uint64_t now_ms, uint64_t client_id,
                                uint64_t round_id, uint64_t num_examples, fc_error *err) {
    fc_status st = begin_event(r, now_ms, err);
    round_participant *p = NULL;
    if (st == FC_OK && !is_async(r))
        st = find_answerable(r, client_id, round_id, ROUND_KIND_TRAIN, &p, err);
    if (st != FC_OK)
        return st;
    if (num_examples < 1 || num_examples > ROUND_MAX_EXAMPLES) {
        char why[ROUND_REASON_MAX];
        snprintf(why, sizeof why, "num_examples %" PRIu64 " outside 1..%llu", num_examples,
                 ROUND_MAX_EXAMPLES);
        if (is_async(r)) {
            if ((st = async_answer(r, client_id, round_id, ROUND_REJECTED, 0, why, err)) != FC_OK)
                return st;
        } else {
            answer(r, p, ROUND_REJECTED, 0, why);
        }
        return fc_error_set(err, FC_ERR_RANGE, "client %" PRIu64 " round %" PRIu64 ": %s",
                            client_id, round_id, why);
    }
    if (is_async(r))
        return async_answer(r, client_id, round_id, ROUND_ACCEPTED, num_examples, NULL, err);
    answer(r, p, ROUND_ACCEPTED, num_examples, NULL);
    return FC_OK;
}

fc_status round_update_rejected(round_sched *r, uint64_t now_ms, uint64_t client_id,
                                uint64_t round_id, const char *reason, fc_error *err) {
    fc_status st = begin_event(r, now_ms, err);
    round_participant *p = NULL;
    if (st == FC_OK && is_async(r))
        return async_answer(r, client_id, round_id, ROUND_REJECTED, 0,
                            reason && *reason ? reason : "rejected", err);
    if (st == FC_OK && r->cur && round_id == r->cur->info.round_id)
        st = find_answerable(r, client_id, round_id, r->cur->info.kind, &p, err);
    else if (st == FC_OK)
        st = find_answerable(r, client_id, round_id, ROUND_KIND_TRAIN, &p, err);
    if (st != FC_OK)
        return st;
    answer(r, p, ROUND_REJECTED, 0, reason && *reason ? reason : "rejected");
    return FC_OK;
}

static fc_status check_metrics(const round_slot *s, const round_metric *m, size_t n, char *why,
                               fc_status *code) {
    size_t fresh = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = m[i].name ? strnlen(m[i].name, ROUND_METRIC_NAME_MAX) : 0;
        if (len == 0 || len >= ROUND_METRIC_NAME_MAX) {
            snprintf(why, ROUND_REASON_MAX, "metric %zu: name must be 1..%d bytes", i,
                     ROUND_METRIC_NAME_MAX - 1);
            return *code = FC_ERR_FORMAT;
        }
        if (!isfinite(m[i].value)) {
            snprintf(why, ROUND_REASON_MAX, "metric '%s' is not finite", m[i].name);
            return *code = FC_ERR_NON_FINITE;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(m[j].name, m[i].name) == 0) {
                snprintf(why, ROUND_REASON_MAX, "metric '%s' reported twice", m[i].name);
                return *code = FC_ERR_FORMAT;
            }
        bool known = false;
        for (size_t j = 0; j < s->n_metrics && !known; j++)
            known = strcmp(s->metrics[j].name, m[i].name) == 0;
        if (!known && s->n_metrics + ++fresh > ROUND_MAX_METRICS) {
            snprintf(why, ROUND_REASON_MAX, "more than %d distinct metric names in the round",
                     ROUND_MAX_METRICS);
            return *code = FC_ERR_LIMIT;
        }
    }
    return FC_OK;
}

fc_status round_eval_received(round_sched *r, uint64_t now_ms, uint64_t client_id,
                              uint64_t round_id, uint64_t num_examples,
                              const round_metric *metrics, size_t n_metrics, fc_error *err) {
    fc_status st = begin_event(r, now_ms, err);
    round_participant *p = NULL;
    if (st == FC_OK && is_async(r))
        return fc_error_set(err, FC_ERR_PROTOCOL, "async mode runs no evaluation rounds");
    if (st == FC_OK)
        st = find_answerable(r, client_id, round_id, ROUND_KIND_EVALUATE, &p, err);
    if (st != FC_OK)
        return st;
    round_slot *s = r->cur;
    char why[ROUND_REASON_MAX] = "";
    fc_status code = FC_OK;
    if (num_examples < 1 || num_examples > ROUND_MAX_EXAMPLES) {
        snprintf(why, sizeof why, "num_examples %" PRIu64 " outside 1..%llu", num_examples,
                 ROUND_MAX_EXAMPLES);
        code = FC_ERR_RANGE;
    } else if (n_metrics && !metrics) {
        snprintf(why, sizeof why, "%zu metrics but no metric array", n_metrics);
        code = FC_ERR_INVALID;
    } else {
        check_metrics(s, metrics, n_metrics, why, &code);
    }
    if (code != FC_OK) {
        answer(r, p, ROUND_REJECTED, 0, why);
        return fc_error_set(err, code, "client %" PRIu64 " round %" PRIu64 ": %s", client_id,
                            round_id, why);
    }
    for (size_t i = 0; i < n_metrics; i++) {
        round_metric_result *m = NULL;
        for (size_t j = 0; j < s->n_metrics && !m; j++)
            if (strcmp(s->metrics[j].name, metrics[i].name) == 0)
                m = &s->metrics[j];
        if (!m) {
            m = &s->metrics[s->n_metrics++];
            memset(m, 0, sizeof *m);
            snprintf(m->name, sizeof m->name, "%s", metrics[i].name);
        }
        m->weighted_sum += (double)num_examples * metrics[i].value;
        m->examples += num_examples;
    }
    answer(r, p, ROUND_ACCEPTED, num_examples, NULL);
    return FC_OK;
}

fc_status round_aggregation_done(round_sched *r, uint64_t now_ms, uint64_t round_id,
                                 fc_status result, const char *reason, fc_error *err) {
    fc_status st = begin_event(r, now_ms, err);
    if (st != FC_OK)
        return st;
    round_slot *s = r->cur;
    if (!s || s->info.round_id != round_id || r->state != ROUND_AGGREGATING ||
        s->info.kind != ROUND_KIND_TRAIN || s->commit_pending)
        return fc_error_set(err, FC_ERR_STATE, "round %" PRIu64 " is not aggregating", round_id);
    if (result != FC_OK) {
        fail_round(r, "aggregation failed: %s", reason && *reason ? reason : fc_strerror(result));
        return FC_OK;
    }
    s->commit_pending = true;
    push(r, ROUND_ACT_COMMIT)->model_version = r->model_version + 1;
    return FC_OK;
}

fc_status round_commit_done(round_sched *r, uint64_t now_ms, uint64_t round_id, fc_status result,
                            const char *reason, fc_error *err) {
    fc_status st = begin_event(r, now_ms, err);
    if (st != FC_OK)
        return st;
    round_slot *s = r->cur;
    if (!s || s->info.round_id != round_id || r->state != ROUND_AGGREGATING || !s->commit_pending)
        return fc_error_set(err, FC_ERR_STATE, "round %" PRIu64 " has no commit in progress",
                            round_id);
    if (result != FC_OK) {
        fail_round(r, "commit failed: %s", reason && *reason ? reason : fc_strerror(result));
        return FC_OK;
    }
    s->commit_pending = false;
    if (s->info.kind == ROUND_KIND_TRAIN) {
        r->model_version++;
        r->trained++;
        transition(r, ROUND_COMMITTED, "committed model version %" PRIu64 " from %" PRIu32
                   " updates", r->model_version, s->info.accepted);
    } else {
        transition(r, ROUND_COMMITTED, "evaluated model version %" PRIu64 " with %" PRIu32
                   " reports", s->info.model_version, s->info.accepted);
    }
    round_ended(r);
    return FC_OK;
}

fc_status round_stop(round_sched *r, uint64_t now_ms, const char *reason, fc_error *err) {
    fc_status st = begin_event(r, now_ms, err);
    if (st != FC_OK)
        return st;
    if (r->state == ROUND_STOPPED)
        return FC_OK;
    r->stop_requested = true;
    copy_reason(r->stop_reason, reason && *reason ? reason : "coordinator stopping");
    switch (r->state) {
    case ROUND_WAITING:
    case ROUND_PAUSED:
        transition(r, ROUND_STOPPED, "%s", r->stop_reason);
        break;
    case ROUND_TRAINING:
        end_pending(r, ROUND_CANCELLED, r->stop_reason);
        push(r, ROUND_ACT_DISARM_TIMER);
        r->cur->info.closed_ms = r->now;
        fail_round(r, "%s", r->stop_reason);
        break;
    case ROUND_AGGREGATING:
        if (!r->cur->commit_pending)
            fail_round(r, "%s", r->stop_reason);
        break; /* else STOPPED when the commit finishes */
    default:
        assert(0 && "transient state outside an event");
    }
    return FC_OK;
}

fc_status round_pause(round_sched *r, uint64_t now_ms, fc_error *err) {
    fc_status st = begin_event(r, now_ms, err);
    if (st != FC_OK)
        return st;
    if (r->state == ROUND_STOPPED)
        return fc_error_set(err, FC_ERR_STATE, "cannot pause: scheduler stopped");
    r->pause_requested = true;
    if (r->state == ROUND_WAITING)
        transition(r, ROUND_PAUSED, "paused by operator");
    return FC_OK;
}

fc_status round_resume(round_sched *r, uint64_t now_ms, fc_error *err) {
    fc_status st = begin_event(r, now_ms, err);
    if (st != FC_OK)
        return st;
    if (r->state == ROUND_STOPPED)
        return fc_error_set(err, FC_ERR_STATE, "cannot resume: scheduler stopped");
    r->pause_requested = false;
    if (r->state == ROUND_PAUSED) {
        transition(r, ROUND_WAITING, "resumed by operator");
        try_start(r);
    } else if (is_async(r)) {
        async_dispatch(r);
    }
    return FC_OK;
}

/* ---------------------------------------------------------------- queries */

round_state round_get_state(const round_sched *r) { return r->state; }
uint64_t round_current_id(const round_sched *r) { return r->cur ? r->cur->info.round_id : 0; }
uint64_t round_model_version(const round_sched *r) { return r->model_version; }
size_t round_idle_count(const round_sched *r) { return r->n_idle; }

static const round_slot *slot_for(const round_sched *r, uint64_t id) {
    if (r->cur && r->cur->info.round_id == id)
        return r->cur;
    if (r->prev && r->prev->info.round_id == id)
        return r->prev;
    return NULL;
}

fc_status round_get_info(const round_sched *r, uint64_t round_id, round_info *out) {
    const round_slot *s = slot_for(r, round_id);
    if (!s)
        return FC_ERR_NOT_FOUND;
    *out = s->info;
    return FC_OK;
}

fc_status round_get_participants(const round_sched *r, uint64_t round_id,
                                 const round_participant **out, size_t *n) {
    const round_slot *s = slot_for(r, round_id);
    if (!s)
        return FC_ERR_NOT_FOUND;
    *out = s->parts;
    *n = s->n_parts;
    return FC_OK;
}

fc_status round_get_metrics(const round_sched *r, uint64_t round_id,
                            const round_metric_result **out, size_t *n) {
    const round_slot *s = slot_for(r, round_id);
    if (!s)
        return FC_ERR_NOT_FOUND;
    *out = s->metrics;
    *n = s->n_metrics;
    return FC_OK;
}
