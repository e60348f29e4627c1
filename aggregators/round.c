/* round.c: the round driver shared by the daemon and `fedctl aggregate`. It owns input checks,
 * the ascending-client_id order in which every rule sees updates, the requirement on n, the
 * empty-round rule and the report's common fields. It never does a rule's arithmetic and never
 * touches the optimizer: an empty round is signalled to the caller through the report.
 *
 * Order. With agg_round_expect the expected ids are sorted; a cursor walks them, and an update
 * is handed to the rule as soon as every lower expected id has arrived or been dropped. Updates
 * that arrive ahead of the cursor are held (owned copy, or pointer when data_stable). Without
 * expect every update is held and handed over at finish after a sort by client_id. Either way
 * the rule sees the same sequence, so D does not depend on arrival order.
 */
#include "aggregators/agg.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregators/kernels.h"
#include "aggregators/rules.h"
#include "core/alloc.h"

enum slot_state { SLOT_PENDING = 0, SLOT_HELD, SLOT_DONE };

typedef struct slot {
    uint64_t client_id;
    int state;    /* expect mode only */
    agg_update u; /* when HELD */
    void *owned;  /* owned copy of the data, or NULL if u.data is stable and aligned */
    char *name;   /* owned copy of the client name */
} slot;

struct agg_round {
    const agg_rule *rule;
    agg_context ctx;
    agg_state *st;
    fc_buf loaded; /* the blob given at begin, returned unchanged on an empty round */
    int expecting;
    slot *slots; /* expect: one per expected id, sorted; else: held updates */
    size_t n_slots, cap_slots;
    size_t cursor;  /* expect: first slot not yet DONE */
    uint64_t *seen; /* no expect: sorted ids offered or dropped, for duplicate checks */
    size_t n_seen, cap_seen;
    agg_report rep; /* dropped list and common fields, moved to the caller at finish */
    uint64_t *used_ids;
    size_t n_used, cap_used;
    double total_weight;
    int fed_any;
    uint64_t last_fed;
    fc_status failed; /* first error from the rule's add(), or a fatal driver error */
    fc_error fail_err;
    int finished; /* 0 open, 1 finished OK, 2 finished empty, 3 finished with failure */
    double *result; /* agg_round_finish_shared's buffer when the rule lends none */
};

static fc_status fail_round(agg_round *r, fc_status st, const fc_error *e) {
    if (r->failed == FC_OK) {
        r->failed = st;
        if (e && e->code != FC_OK)
            r->fail_err = *e;
        else
            fc_error_set(&r->fail_err, st, "%s", fc_strerror(st));
    }
    return st;
}

static int id_cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int slot_cmp(const void *a, const void *b) {
    return id_cmp(&((const slot *)a)->client_id, &((const slot *)b)->client_id);
}

static int dropped_cmp(const void *a, const void *b) {
    return id_cmp(&((const agg_dropped *)a)->client_id, &((const agg_dropped *)b)->client_id);
}

/* Lowest index i with a[i] >= id. */
static size_t lower_bound(const uint64_t *a, size_t n, uint64_t id) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (a[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static long find_expected(const agg_round *r, uint64_t id) {
    size_t lo = 0, hi = r->n_slots;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->slots[mid].client_id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (lo < r->n_slots && r->slots[lo].client_id == id) ? (long)lo : -1;
}

static void slot_release(slot *s) {
    fc_free(s->owned);
    fc_free(s->name);
    s->owned = NULL;
    s->name = NULL;
}

fc_status agg_round_begin(const agg_rule *rule, const agg_params *p, const agg_context *ctx,
                          const void *rule_state, size_t rule_state_len, agg_round **out,
                          fc_error *err) {
    agg_round *r;
    fc_status st;
    *out = NULL;
    if (!rule || !ctx)
        return fc_error_set(err, FC_ERR_INVALID, "aggregation: no rule or context");
    if (rule->version != AGG_RULE_V1)
        return fc_error_set(err, FC_ERR_VERSION, "rule %s: interface version %d, expected %d",
                            rule->name, rule->version, AGG_RULE_V1);
    if (ctx->dim == 0 || ctx->dim > SIZE_MAX / sizeof(double))
        return fc_error_set(err, FC_ERR_INVALID, "rule %s: bad vector size %zu", rule->name,
                            ctx->dim);
    if (rule_state_len > 0 && (!(rule->flags & AGG_STATEFUL) || !rule->load_state))
        return fc_error_set(err, FC_ERR_INVALID,
                            "rule %s keeps no state, but a %zu-byte state "
                            "was given",
                            rule->name, rule_state_len);
    if (rule_state_len > 0 && !rule_state)
        return fc_error_set(err, FC_ERR_INVALID, "rule %s: state is NULL", rule->name);
    if (!(r = fc_calloc(1, sizeof *r)))
        return fc_error_set(err, FC_ERR_NOMEM, "rule %s: out of memory", rule->name);
    r->rule = rule;
    r->ctx = *ctx;
    agg_report_init(&r->rep);
    snprintf(r->rep.rule, sizeof r->rep.rule, "%s", rule->name);
    if ((st = rule->create(p, ctx, &r->st, err)) != FC_OK)
        goto fail;
    if (rule_state_len > 0) {
        if ((st = fc_buf_append(&r->loaded, rule_state, rule_state_len)) != FC_OK) {
            fc_error_set(err, st, "rule %s: out of memory", rule->name);
            goto fail;
        }
        if ((st = rule->load_state(r->st, rule_state, rule_state_len, err)) != FC_OK)
            goto fail;
    }
    *out = r;
    return FC_OK;
fail:
    agg_round_free(r);
    return st;
}

fc_status agg_round_expect(agg_round *r, const uint64_t *client_ids, size_t n, fc_error *err) {
    if (r->finished || r->expecting || r->n_seen > 0 || r->n_slots > 0 || r->rep.n_dropped > 0)
        return fc_error_set(err, FC_ERR_STATE,
                            "agg_round_expect must come once, before any update or drop");
    if (n > 0 && !client_ids)
        return fc_error_set(err, FC_ERR_INVALID, "expected client list is NULL");
    slot *s = n ? fc_mallocarray(n, sizeof *s) : NULL;
    if (n && !s)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory for %zu expected clients", n);
    if (n)
        memset(s, 0, n * sizeof *s);
    for (size_t i = 0; i < n; i++)
        s[i].client_id = client_ids[i];
    if (n)
        qsort(s, n, sizeof *s, slot_cmp);
    for (size_t i = 1; i < n; i++)
        if (s[i].client_id == s[i - 1].client_id) {
            unsigned long long dup = s[i].client_id;
            fc_free(s);
            return fc_error_set(err, FC_ERR_EXISTS, "client %llu is expected twice", dup);
        }
    r->slots = s;
    r->n_slots = r->cap_slots = n;
    r->expecting = 1;
    return FC_OK;
}

/* Hands one validated update to the rule, in order. */
static fc_status feed(agg_round *r, const agg_update *u) {
    fc_error e = {0};
    fc_status st;
    if (r->failed)
        return r->failed;
    if (r->fed_any && u->client_id <= r->last_fed) /* the ordering invariant of this file */
        return fail_round(r, FC_ERR_STATE, NULL);
    if (r->n_used == r->cap_used) {
        size_t cap = r->cap_used ? r->cap_used * 2 : 16;
        uint64_t *g = fc_realloc(r->used_ids, cap * sizeof *g);
        if (!g) {
            fc_error_set(&e, FC_ERR_NOMEM, "out of memory");
            return fail_round(r, FC_ERR_NOMEM, &e);
        }
        r->used_ids = g;
        r->cap_used = cap;
    }
    if ((st = r->rule->add(r->st, u, &e)) != FC_OK) {
        if (e.code == FC_OK)
            fc_error_set(&e, st, "rule %s rejected the update of client %llu", r->rule->name,
                         (unsigned long long)u->client_id);
        return fail_round(r, st, &e);
    }
    r->used_ids[r->n_used++] = u->client_id;
    r->total_weight += u->weight;
    r->fed_any = 1;
    r->last_fed = u->client_id;
    return FC_OK;
}

/* Expect mode: feeds every held slot from the cursor on until a pending one. */
static fc_status advance(agg_round *r) {
    while (r->cursor < r->n_slots && r->slots[r->cursor].state != SLOT_PENDING) {
        slot *s = &r->slots[r->cursor];
        if (s->state == SLOT_HELD) {
            fc_status st = feed(r, &s->u);
            slot_release(s);
            s->state = SLOT_DONE;
            if (st != FC_OK)
                return st;
        }
        r->cursor++;
    }
    return FC_OK;
}

/* Records id as offered (no-expect mode), or finds its expected slot. FC_ERR_EXISTS on a
 * duplicate, FC_ERR_NOT_FOUND for an unexpected id. *slot_out is the expected slot or -1. */
static fc_status register_id(agg_round *r, uint64_t id, long *slot_out, fc_error *err) {
    *slot_out = -1;
    if (r->expecting) {
        long k = find_expected(r, id);
        if (k < 0)
            return fc_error_set(err, FC_ERR_NOT_FOUND, "client %llu was not expected this round",
                                (unsigned long long)id);
        if (r->slots[k].state != SLOT_PENDING)
            return fc_error_set(err, FC_ERR_EXISTS, "client %llu already delivered this round",
                                (unsigned long long)id);
        *slot_out = k;
        return FC_OK;
    }
    size_t pos = lower_bound(r->seen, r->n_seen, id);
    if (pos < r->n_seen && r->seen[pos] == id)
        return fc_error_set(err, FC_ERR_EXISTS, "client %llu already delivered this round",
                            (unsigned long long)id);
    if (r->n_seen == r->cap_seen) {
        size_t cap = r->cap_seen ? r->cap_seen * 2 : 16;
        uint64_t *g = fc_realloc(r->seen, cap * sizeof *g);
        if (!g)
            return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
        r->seen = g;
        r->cap_seen = cap;
    }
    memmove(r->seen + pos + 1, r->seen + pos, (r->n_seen - pos) * sizeof *r->seen);
    r->seen[pos] = id;
    r->n_seen++;
    return FC_OK;
}

static void unregister_id(agg_round *r, uint64_t id) {
    if (r->expecting)
        return;
    size_t pos = lower_bound(r->seen, r->n_seen, id);
    if (pos < r->n_seen && r->seen[pos] == id) {
        memmove(r->seen + pos, r->seen + pos + 1, (r->n_seen - pos - 1) * sizeof *r->seen);
        r->n_seen--;
    }
}

static fc_status record_drop(agg_round *r, long k, uint64_t id, const char *name,
                             const char *reason, fc_error *err) {
    fc_status st = agg_report_add_dropped(&r->rep, id, name, reason);
    if (st != FC_OK) {
        unregister_id(r, id);
        return fc_error_set(err, st, "out of memory recording a dropped update");
    }
    if (k >= 0) {
        r->slots[k].state = SLOT_DONE;
        st = advance(r);
        if (st != FC_OK && err)
            *err = r->fail_err;
    }
    return st;
}

/* Makes u holdable past this call (or aligned): copies data unless stable and aligned. */
static fc_status make_slot(slot *s, const agg_update *u, size_t dim, int must_hold) {
    size_t es = fc_dtype_size(u->dtype);
    int aligned = ((uintptr_t)u->data % es) == 0;
    memset(s, 0, sizeof *s);
    s->client_id = u->client_id;
    s->u = *u;
    if (!aligned || (must_hold && !u->data_stable)) {
        if (!(s->owned = fc_mallocarray(dim, es)))
            return FC_ERR_NOMEM;
        memcpy(s->owned, u->data, dim * es);
        s->u.data = s->owned;
        s->u.data_stable = 0; /* the copy is freed right after the rule's add() */
        s->u.consumed = NULL; /* the caller's pages are no longer what the rule reads */
    }
    if (must_hold && u->client_name) {
        if (!(s->name = fc_strdup(u->client_name))) {
            slot_release(s);
            return FC_ERR_NOMEM;
        }
        s->u.client_name = s->name;
    } else if (must_hold) {
        s->u.client_name = NULL;
    }
    return FC_OK;
}

fc_status agg_round_add(agg_round *r, const agg_update *u, fc_error *err) {
    long k;
    fc_status st;
    const char *reason = NULL;
    if (r->finished)
        return fc_error_set(err, FC_ERR_STATE, "round already finished");
    if (r->failed) {
        if (err)
            *err = r->fail_err;
        return r->failed;
    }
    if (!u)
        return fc_error_set(err, FC_ERR_INVALID, "update is NULL");
    if ((st = register_id(r, u->client_id, &k, err)) != FC_OK)
        return st;
    if (!agg_k_dtype_ok(u->dtype) || !u->data)
        reason = "bad_dtype";
    else if (!u->finite_checked && !agg_k_all_finite(u->dtype, u->data, r->ctx.dim))
        reason = "non_finite";
    else if (!isfinite(u->weight) || u->weight < 0)
        reason = "bad_weight";
    if (reason)
        return record_drop(r, k, u->client_id, u->client_name, reason, err);

    int now = r->expecting && (size_t)k == r->cursor;
    slot s;
    if ((st = make_slot(&s, u, r->ctx.dim, !now)) != FC_OK) {
        unregister_id(r, u->client_id);
        return fc_error_set(err, st, "out of memory holding the update of client %llu",
                            (unsigned long long)u->client_id);
    }
    if (now) {
        st = feed(r, &s.u);
        slot_release(&s);
        r->slots[k].state = SLOT_DONE;
        if (st == FC_OK)
            st = advance(r);
        if (st != FC_OK && err)
            *err = r->fail_err;
        return st;
    }
    if (r->expecting) {
        s.state = SLOT_HELD;
        r->slots[k] = s;
        return FC_OK;
    }
    if (r->n_slots == r->cap_slots) {
        size_t cap = r->cap_slots ? r->cap_slots * 2 : 16;
        slot *g = fc_realloc(r->slots, cap * sizeof *g);
        if (!g) {
            slot_release(&s);
            unregister_id(r, u->client_id);
            return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
        }
        r->slots = g;
        r->cap_slots = cap;
    }
    r->slots[r->n_slots++] = s;
    return FC_OK;
}

fc_status agg_round_drop(agg_round *r, uint64_t client_id, const char *client_name,
                         const char *reason, fc_error *err) {
    long k;
    fc_status st;
    if (r->finished)
        return fc_error_set(err, FC_ERR_STATE, "round already finished");
    if (!reason)
        return fc_error_set(err, FC_ERR_INVALID, "drop of client %llu without a reason",
                            (unsigned long long)client_id);
    if ((st = register_id(r, client_id, &k, err)) != FC_OK)
        return st;
    return record_drop(r, k, client_id, client_name, reason, err);
}

/* Moves the driver's common fields into rep. */
static void fill_report(agg_round *r, agg_report *rep) {
    if (r->rep.n_dropped > 1)
        qsort(r->rep.dropped, r->rep.n_dropped, sizeof *r->rep.dropped, dropped_cmp);
    r->rep.n_used = r->n_used;
    r->rep.n_in = r->n_used + r->rep.n_dropped;
    r->rep.total_weight = r->total_weight;
    r->rep.client_ids = r->used_ids;
    r->used_ids = NULL;
    r->cap_used = 0;
    *rep = r->rep;
    agg_report_init(&r->rep);
}

static void zero(double *d, size_t n) { memset(d, 0, n * sizeof *d); }

static void set_note(agg_report *rep, const char *text) {
    size_t n = strlen(text);
    if (n >= sizeof rep->note)
        n = sizeof rep->note - 1;
    memcpy(rep->note, text, n);
    rep->note[n] = '\0';
}

/* Ends a round in failure: D zero, the reason in the note and in err. */
static fc_status finish_failed(agg_round *r, double *out_delta, agg_report *rep, fc_status st,
                               fc_error *e, fc_error *err) {
    zero(out_delta, r->ctx.dim);
    if (e->code == FC_OK)
        fc_error_set(e, st, "rule %s: %s", r->rule->name, fc_strerror(st));
    set_note(rep, e->msg);
    if (err)
        *err = *e;
    r->finished = 3;
    return st;
}

/* out_delta may be the rule's own accumulator (agg_round_finish_shared), so it is written
 * (zeros included) only once every update has been fed. */
static fc_status finish_into(agg_round *r, double *out_delta, agg_report *rep, fc_error *err) {
    fc_status st = FC_OK;
    fc_error e = {0};
    agg_report_free(rep);
    if (r->finished) {
        snprintf(rep->rule, sizeof rep->rule, "%s", r->rule->name);
        return fc_error_set(err, FC_ERR_STATE, "round already finished");
    }
    if (!r->failed) {
        if (r->expecting) {
            for (size_t i = r->cursor; i < r->n_slots; i++)
                if (r->slots[i].state == SLOT_PENDING) {
                    if ((st = agg_report_add_dropped(&r->rep, r->slots[i].client_id, NULL,
                                                     "missing")) != FC_OK) {
                        fc_error_set(&e, st, "out of memory");
                        fail_round(r, st, &e);
                        break;
                    }
                    r->slots[i].state = SLOT_DONE;
                }
            if (!r->failed)
                advance(r);
        } else {
            if (r->n_slots > 1)
                qsort(r->slots, r->n_slots, sizeof *r->slots, slot_cmp);
            for (size_t i = 0; i < r->n_slots && !r->failed; i++) {
                feed(r, &r->slots[i].u);
                slot_release(&r->slots[i]);
            }
        }
    }
    fill_report(r, rep);
    if (r->failed) {
        e = r->fail_err;
        return finish_failed(r, out_delta, rep, r->failed, &e, err);
    }
    if (r->n_used == 0 || !(r->total_weight > 0)) {
        rep->empty = 1;
        zero(out_delta, r->ctx.dim);
        set_note(rep, r->n_used == 0 ? "no valid update" : "total weight 0");
        r->finished = 2;
        return FC_OK;
    }
    if (r->rule->check_n && (st = r->rule->check_n(r->st, r->n_used, &e)) != FC_OK)
        return finish_failed(r, out_delta, rep, st, &e, err);
    if ((st = r->rule->finish(r->st, out_delta, rep, &e)) != FC_OK)
        return finish_failed(r, out_delta, rep, st, &e, err);
    if (!agg_k_all_finite(FC_DTYPE_F64, out_delta, r->ctx.dim)) {
        fc_error_set(&e, FC_ERR_NON_FINITE,
                     "rule %s: the aggregate overflowed to a non-finite value", r->rule->name);
        return finish_failed(r, out_delta, rep, FC_ERR_NON_FINITE, &e, err);
    }
    r->finished = 1;
    return FC_OK;
}

fc_status agg_round_finish(agg_round *r, double *out_delta, agg_report *rep, fc_error *err) {
    return finish_into(r, out_delta, rep, err);
}

fc_status agg_round_finish_shared(agg_round *r, double **out_delta, agg_report *rep,
                                  fc_error *err) {
    *out_delta = NULL;
    double *buf = NULL;
    if (!r->finished && r->st && r->rule->result_buffer)
        buf = r->rule->result_buffer(r->st);
    if (!buf) {
        if (!r->result && !r->finished &&
            !(r->result = fc_mallocarray(r->ctx.dim ? r->ctx.dim : 1, sizeof(double)))) {
            agg_report_free(rep);
            snprintf(rep->rule, sizeof rep->rule, "%s", r->rule->name);
            return fc_error_set(err, FC_ERR_NOMEM, "rule %s: out of memory for %zu doubles",
                                r->rule->name, r->ctx.dim);
        }
        buf = r->result;
    }
    fc_status st = finish_into(r, buf, rep, err);
    if (st == FC_OK)
        *out_delta = buf;
    return st;
}

fc_status agg_round_save_state(const agg_round *r, fc_buf *out, fc_error *err) {
    if (r->finished == 2)
        return fc_buf_append(out, r->loaded.data, r->loaded.len);
    if (r->finished != 1)
        return fc_error_set(err, FC_ERR_STATE,
                            "rule %s: no state to save before a successful "
                            "finish",
                            r->rule->name);
    if (!(r->rule->flags & AGG_STATEFUL) || !r->rule->save_state)
        return FC_OK;
    return r->rule->save_state(r->st, out, err);
}

void agg_round_free(agg_round *r) {
    if (!r)
        return;
    for (size_t i = 0; i < r->n_slots; i++)
        slot_release(&r->slots[i]);
    fc_free(r->slots);
    fc_free(r->seen);
    fc_free(r->used_ids);
    agg_report_free(&r->rep);
    fc_buf_free(&r->loaded);
    fc_free(r->result);
    if (r->st)
        r->rule->destroy(r->st);
    fc_free(r);
}

/* 16 MiB of update data per window: large enough that the calls cost nothing, small enough that
 * a caller dropping pages behind the fold keeps little of a multi-GB spilled update resident. */
#define FOLD_WINDOW_BYTES ((size_t)16 << 20)

void agg_fold_update(double *acc, const agg_update *u, double w, size_t dim) {
    size_t es = fc_dtype_size(u->dtype);
    if (!u->consumed || es == 0) {
        agg_k_fold(u->dtype, acc, u->data, w, dim);
        return;
    }
    size_t step = FOLD_WINDOW_BYTES / es;
    const uint8_t *x = u->data;
    for (size_t i = 0; i < dim; i += step) {
        size_t n = dim - i < step ? dim - i : step;
        agg_k_fold(u->dtype, acc + i, x + i * es, w, n);
        u->consumed(u->consumed_ctx, x + i * es, n * es);
    }
}
