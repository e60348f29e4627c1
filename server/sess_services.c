/* sess_services.c: the services sessions are built on but that hold no connection state: the
 * shared staging budget (memory, then spill files, then "wait"), the in-memory token
 * authenticator and the in-memory model source.
 *
 * The budget never blocks and never sleeps: a refused request is reported to the caller, which
 * pauses its connection; the budget wakes waiters from an idle handle after a release. The
 * authenticator keeps only SHA-256 hashes of tokens and never logs or copies a token.
 */
#define _POSIX_C_SOURCE 200809L
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "core/alloc.h"
#include "core/log.h"
#include "server/sess_internal.h"

/* ---- budget ---- */

struct sess_budget {
    uv_loop_t *loop;
    uv_idle_t idle;
    int idle_on;
    uint64_t memory_limit, memory_used;
    char *spill_dir;
    uint64_t spill_limit, spill_used;
    sess_waiter *head, *tail; /* sessions waiting for budget, ascending order, FIFO in ties */
    size_t waiting;
    uint64_t priority;        /* sess_budget_reserve_for: 0 = none */
    size_t priority_tickets;  /* live tickets of the priority client */
    struct sess_ticket *live; /* tickets holding bytes (for priority_tickets) */
    /* Released memory buffers kept for the next uploads of the same size (see cache_put), linked
     * through their own first bytes. memory_used + cached <= memory_limit at all times. */
    struct cached_buf *cache;
    uint64_t cached;
    uv_timer_t cache_timer;
    uint64_t cache_ms;
    int open_handles; /* while closing */
};

/* A released staging buffer, kept: the header lives in the buffer itself. */
typedef struct cached_buf {
    struct cached_buf *next;
    uint64_t nbytes;
} cached_buf;

/* A staging buffer's ticket: which pool it came from and for which client. Freed by release. */
typedef struct sess_ticket {
    sess_budget *b;
    uint64_t client;
    int spilled;
    int holding; /* on b->live */
    fc_stage_provider spill;
    struct sess_ticket *prev, *next;
} sess_ticket;

static void budget_idle_cb(uv_idle_t *h);
static void budget_closed_cb(uv_handle_t *h);

/* Wakes the waiters from an idle handle (never from inside the caller's own call chain). */
static void wake_later(sess_budget *b) {
    if (b->head && !b->idle_on && uv_idle_start(&b->idle, budget_idle_cb) == 0)
        b->idle_on = 1;
}

static void budget_idle_cb(uv_idle_t *h) {
    sess_budget *b = h->data;
    uv_idle_stop(h);
    b->idle_on = 0;
    /* Wake every waiter once; those still refused queue themselves again. */
    sess_waiter *w = b->head;
    b->head = b->tail = NULL;
    b->waiting = 0;
    while (w) {
        sess_waiter *next = w->next;
        w->next = NULL;
        w->queued = 0;
        w->wake(w);
        w = next;
    }
}

fc_status sess_budget_new(uv_loop_t *loop, uint64_t memory_limit, const char *spill_dir,
                          uint64_t spill_limit, sess_budget **out, fc_error *err) {
    *out = NULL;
    sess_budget *b = fc_calloc(1, sizeof *b);
    if (!b)
        return fc_error_set(err, FC_ERR_NOMEM, "staging budget");
    b->loop = loop;
    b->memory_limit = memory_limit;
    b->spill_limit = spill_limit;
    if (spill_dir && !(b->spill_dir = fc_strdup(spill_dir))) {
        fc_free(b);
        return fc_error_set(err, FC_ERR_NOMEM, "staging budget spill dir");
    }
    if (uv_timer_init(loop, &b->cache_timer) != 0) {
        fc_free(b->spill_dir);
        fc_free(b);
        return fc_error_set(err, FC_ERR_SYSTEM, "uv_timer_init failed");
    }
    b->cache_timer.data = b;
    uv_unref((uv_handle_t *)&b->cache_timer); /* kept buffers never keep the loop running */
    b->cache_ms = SESS_BUDGET_CACHE_MS;
    if (uv_idle_init(loop, &b->idle) != 0) {
        b->open_handles = 1; /* the timer's close callback frees b */
        uv_close((uv_handle_t *)&b->cache_timer, budget_closed_cb);
        return fc_error_set(err, FC_ERR_SYSTEM, "uv_idle_init failed");
    }
    b->idle.data = b;
    *out = b;
    return FC_OK;
}

uint64_t sess_budget_memory_used(const sess_budget *b) { return b->memory_used; }
uint64_t sess_budget_spill_used(const sess_budget *b) { return b->spill_used; }
size_t sess_budget_waiting(const sess_budget *b) { return b->waiting; }
uint64_t sess_budget_capacity(const sess_budget *b) {
    uint64_t spill = b->spill_dir ? b->spill_limit : 0;
    return b->memory_limit > UINT64_MAX - spill ? UINT64_MAX : b->memory_limit + spill;
}

uint64_t sess_budget_memory_cached(const sess_budget *b) { return b->cached; }
void sess_budget_set_cache_ms(sess_budget *b, uint64_t ms) { b->cache_ms = ms; }

/* Frees cached buffers until at most keep bytes stay cached. */
static void cache_trim(sess_budget *b, uint64_t keep) {
    while (b->cache && b->cached > keep) {
        cached_buf *c = b->cache;
        b->cache = c->next;
        b->cached -= c->nbytes;
        fc_stage_heap_provider()->release(NULL, c, c->nbytes);
    }
}

static void cache_timer_cb(uv_timer_t *t) { cache_trim(t->data, 0); }

static void budget_closed_cb(uv_handle_t *h) {
    sess_budget *b = h->data;
    if (--b->open_handles)
        return;
    fc_free(b->spill_dir);
    fc_free(b);
}

void sess_budget_free(sess_budget *b) {
    if (!b)
        return;
    assert(b->memory_used == 0 && b->spill_used == 0 && b->waiting == 0);
    cache_trim(b, 0);
    b->open_handles = 2;
    uv_close((uv_handle_t *)&b->idle, budget_closed_cb);
    uv_close((uv_handle_t *)&b->cache_timer, budget_closed_cb);
}

void sess_budget_wait(sess_budget *b, sess_waiter *w) {
    if (w->queued)
        return;
    w->queued = 1;
    w->next = NULL;
    if (!b->tail || b->tail->order <= w->order) { /* the common case: append */
        if (b->tail)
            b->tail->next = w;
        else
            b->head = w;
        b->tail = w;
    } else {
        sess_waiter **pp = &b->head;
        while ((*pp)->order <= w->order)
            pp = &(*pp)->next;
        w->next = *pp;
        *pp = w;
    }
    b->waiting++;
}

void sess_budget_unwait(sess_budget *b, sess_waiter *w) {
    if (!w->queued)
        return;
    sess_waiter **pp = &b->head, *prev = NULL;
    while (*pp && *pp != w) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp) {
        *pp = w->next;
        if (b->tail == w)
            b->tail = prev;
        b->waiting--;
    }
    w->queued = 0;
    w->next = NULL;
}

static int fits(uint64_t used, uint64_t limit, uint64_t n) {
    return n <= limit && used <= limit - n;
}

/* Whether n bytes may come from a pool (used/limit), the other pool being other_used/other_limit:
 * with reserve, n more bytes must still fit afterwards, in this pool or the other. */
static int may_take(uint64_t used, uint64_t limit, uint64_t other_used, uint64_t other_limit,
                    uint64_t n, int reserve) {
    if (!fits(used, limit, n))
        return 0;
    return !reserve || fits(used + n, limit, n) || fits(other_used, other_limit, n);
}

static void ticket_hold(sess_ticket *t, int spilled, uint64_t nbytes) {
    sess_budget *b = t->b;
    if (spilled)
        b->spill_used += nbytes;
    else
        b->memory_used += nbytes;
    t->spilled = spilled;
    t->holding = 1;
    t->prev = NULL;
    t->next = b->live;
    if (b->live)
        b->live->prev = t;
    b->live = t;
    if (b->priority && t->client == b->priority)
        b->priority_tickets++;
}

/* Takes a cached buffer of exactly nbytes, if there is one. */
static int cache_take(sess_budget *b, uint64_t nbytes, void **out) {
    for (cached_buf **pp = &b->cache; *pp; pp = &(*pp)->next)
        if ((*pp)->nbytes == nbytes) {
            cached_buf *c = *pp;
            *pp = c->next;
            b->cached -= nbytes;
            *out = c;
            return 1;
        }
    return 0;
}

/* Keeps a released buffer for the next upload of its size, if it fits next to the buffers in
 * use within the memory limit: in a synchronous round every update has the model's size, so
 * the next round's uploads reuse these instead of faulting in (and the kernel zeroing) fresh
 * pages. Small buffers are not worth it. Kept buffers go cache_ms after the last release, so an
 * idle daemon does not hold them. */
static int cache_put(sess_budget *b, void *mem, uint64_t nbytes) {
    if (nbytes < SESS_BUDGET_CACHE_MIN ||
        !fits(b->memory_used + b->cached, b->memory_limit, nbytes))
        return 0;
    cached_buf *c = mem;
    c->next = b->cache;
    c->nbytes = nbytes;
    b->cache = c;
    b->cached += nbytes;
    (void)uv_timer_start(&b->cache_timer, cache_timer_cb, b->cache_ms, 0);
    return 1;
}

static fc_status ticket_acquire(void *ctx, uint64_t nbytes, void **out, fc_error *err) {
    sess_ticket *t = ctx;
    sess_budget *b = t->b;
    uint64_t spill_limit = b->spill_dir ? b->spill_limit : 0;
    /* While a reservation stands (the priority client holds nothing yet), another client gets a
     * buffer only if one of nbytes is still left for the priority client afterwards, in either
     * pool: in a synchronous round every update has the model's size. */
    int reserve = b->priority && t->client != b->priority && b->priority_tickets == 0;
    int mem =
        may_take(b->memory_used, b->memory_limit, b->spill_used, spill_limit, nbytes, reserve);
    if (mem) {
        if (!cache_take(b, nbytes, out)) {
            cache_trim(b, b->memory_limit - b->memory_used - nbytes); /* room for the new one */
            fc_status st = fc_stage_heap_provider()->acquire(NULL, nbytes, out, err);
            if (st != FC_OK)
                return st;
        }
        ticket_hold(t, 0, nbytes);
        return FC_OK;
    }
    int spill =
        may_take(b->spill_used, spill_limit, b->memory_used, b->memory_limit, nbytes, reserve);
    if (b->spill_dir && spill) {
        fc_stage_spill_provider(&t->spill, b->spill_dir);
        fc_status st = t->spill.acquire(t->spill.ctx, nbytes, out, err);
        if (st != FC_OK)
            return st;
        ticket_hold(t, 1, nbytes);
        return FC_OK;
    }
    int fits_memory = nbytes <= b->memory_limit;
    int fits_spill = b->spill_dir && nbytes <= b->spill_limit;
    if (!fits_memory && !fits_spill) /* waiting would never help */
        return fc_error_set(err, FC_ERR_LIMIT,
                            "%llu bytes exceed the staging capacity (memory %llu, spill %llu)",
                            (unsigned long long)nbytes, (unsigned long long)b->memory_limit,
                            (unsigned long long)spill_limit);
    char why[64] = "staging budget exhausted";
    if (fits(b->memory_used, b->memory_limit, nbytes) ||
        (b->spill_dir && fits(b->spill_used, spill_limit, nbytes)))
        snprintf(why, sizeof why, "room kept for client %llu, next in fold order",
                 (unsigned long long)b->priority);
    return fc_error_set(err, FC_ERR_BUSY, "%s: %llu bytes asked, memory %llu/%llu, spill %llu/%llu",
                        why, (unsigned long long)nbytes, (unsigned long long)b->memory_used,
                        (unsigned long long)b->memory_limit, (unsigned long long)b->spill_used,
                        (unsigned long long)spill_limit);
}

static void ticket_release(void *ctx, void *mem, uint64_t nbytes) {
    sess_ticket *t = ctx;
    sess_budget *b = t->b;
    if (t->spilled) {
        t->spill.release(t->spill.ctx, mem, nbytes);
        b->spill_used -= nbytes;
    } else {
        b->memory_used -= nbytes;
        if (!cache_put(b, mem, nbytes))
            fc_stage_heap_provider()->release(NULL, mem, nbytes);
    }
    if (t->holding) {
        if (t->prev)
            t->prev->next = t->next;
        else
            b->live = t->next;
        if (t->next)
            t->next->prev = t->prev;
        if (b->priority && t->client == b->priority)
            b->priority_tickets--;
    }
    fc_free(t);
    wake_later(b);
}

static void ticket_evict(void *ctx, void *mem, uint64_t off, uint64_t len) {
    sess_ticket *t = ctx;
    if (t->spilled && t->spill.evict)
        t->spill.evict(t->spill.ctx, mem, off, len);
}

void sess_budget_reserve_for(sess_budget *b, uint64_t client_id) {
    if (b->priority == client_id)
        return;
    b->priority = client_id;
    b->priority_tickets = 0;
    for (const sess_ticket *t = b->live; client_id && t; t = t->next)
        if (t->client == client_id)
            b->priority_tickets++;
    wake_later(b); /* the new priority client may be waiting, and others may now fit */
}

uint64_t sess_budget_reserved_for(const sess_budget *b) { return b->priority; }

fc_status sess_budget_stage(sess_budget *b, uint64_t client_id, const fc_tensor_spec *specs,
                            size_t n, uint64_t total, uint64_t max_total, fc_stage **out,
                            fc_error *err) {
    /* The session checks the end on the loop and hashes on a worker (fc_stage_check_end). */
    fc_stage_config cfg = {.max_total_bytes = max_total, .label = "update", .hash_at_finish = 1};
    *out = NULL;
    if (total == 0) /* nothing to acquire: the stage never calls the provider */
        return fc_stage_create(specs, n, total, &cfg, out, err);
    sess_ticket *t = fc_calloc(1, sizeof *t);
    if (!t)
        return fc_error_set(err, FC_ERR_NOMEM, "staging ticket");
    t->b = b;
    t->client = client_id;
    fc_stage_provider p = {"budget", ticket_acquire, ticket_release, t, ticket_evict};
    cfg.provider = &p;
    fc_status st = fc_stage_create(specs, n, total, &cfg, out, err);
    if (st != FC_OK) /* acquire failed or was never reached: release will not run */
        fc_free(t);
    return st;
}

/* ---- token authenticator ---- */

typedef struct auth_row {
    char *name;
    uint8_t hash[FC_SHA256_BYTES];
    uint64_t id;
    int allow_cert;
} auth_row;

struct sess_auth_tokens {
    auth_row *rows;
    size_t n, cap;
};

static fc_status sha256(const uint8_t *p, size_t n, uint8_t out[FC_SHA256_BYTES], fc_error *err) {
    unsigned int len = 0;
    if (EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) != 1 || len != FC_SHA256_BYTES)
        return fc_error_set(err, FC_ERR_SYSTEM, "SHA-256 of a token failed");
    return FC_OK;
}

fc_status sess_auth_tokens_new(sess_auth_tokens **out, fc_error *err) {
    *out = fc_calloc(1, sizeof **out);
    return *out ? FC_OK : fc_error_set(err, FC_ERR_NOMEM, "token table");
}

fc_status sess_auth_tokens_add(sess_auth_tokens *t, const char *name, const uint8_t *token,
                               size_t token_len, uint64_t client_id, int allow_cert,
                               fc_error *err) {
    if (!name || !*name || client_id == 0)
        return fc_error_set(err, FC_ERR_INVALID,
                            "token table: a client needs a name and an id > 0");
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->rows[i].name, name) == 0)
            return fc_error_set(err, FC_ERR_EXISTS, "token table: client '%s' already added", name);
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        auth_row *r = fc_realloc(t->rows, cap * sizeof *r);
        if (!r)
            return fc_error_set(err, FC_ERR_NOMEM, "token table");
        t->rows = r;
        t->cap = cap;
    }
    auth_row *r = &t->rows[t->n];
    memset(r, 0, sizeof *r);
    fc_status st = sha256(token, token_len, r->hash, err);
    if (st != FC_OK)
        return st;
    if (!(r->name = fc_strdup(name)))
        return fc_error_set(err, FC_ERR_NOMEM, "token table");
    r->id = client_id;
    r->allow_cert = allow_cert;
    t->n++;
    return FC_OK;
}

void sess_auth_tokens_free(sess_auth_tokens *t) {
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++) {
        OPENSSL_cleanse(t->rows[i].hash, sizeof t->rows[i].hash);
        fc_free(t->rows[i].name);
    }
    fc_free(t->rows);
    fc_free(t);
}

fc_status sess_auth_tokens_check(void *ctx, const char *name, const uint8_t *token,
                                 size_t token_len, const char *identity, uint64_t *client_id,
                                 char *name_out, size_t name_cap, fc_error *err) {
    sess_auth_tokens *t = ctx;
    *client_id = 0;
    if (identity && token_len == 0) {
        /* Certificate login: the CN is the client's name; the name field may repeat it. */
        if (name && *name && strcmp(name, identity) != 0)
            return fc_error_set(err, FC_ERR_AUTH,
                                "client name '%s' differs from its certificate's '%s'", name,
                                identity);
        for (size_t i = 0; i < t->n; i++)
            if (t->rows[i].allow_cert && strcmp(t->rows[i].name, identity) == 0) {
                *client_id = t->rows[i].id;
                snprintf(name_out, name_cap, "%s", identity);
                return FC_OK;
            }
        return fc_error_set(err, FC_ERR_AUTH, "no client accepts certificate '%s'", identity);
    }
    if (!name || !*name || token_len == 0)
        return fc_error_set(err, FC_ERR_AUTH, "Hello carries no client name and token");
    uint8_t h[FC_SHA256_BYTES];
    fc_status st = sha256(token, token_len, h, err);
    if (st != FC_OK)
        return st;
    uint64_t found = 0;
    const char *found_name = NULL;
    for (size_t i = 0; i < t->n; i++) {
        /* Every row's hash is compared, so the time does not depend on which row matches. */
        int same_hash = CRYPTO_memcmp(h, t->rows[i].hash, FC_SHA256_BYTES) == 0;
        if (same_hash && strcmp(t->rows[i].name, name) == 0) {
            found = t->rows[i].id;
            found_name = t->rows[i].name;
        }
    }
    OPENSSL_cleanse(h, sizeof h);
    if (!found)
        return fc_error_set(err, FC_ERR_AUTH, "unknown client '%s' or wrong token", name);
    *client_id = found;
    snprintf(name_out, name_cap, "%s", found_name);
    return FC_OK;
}

/* ---- in-memory model source ---- */

struct sess_mem_model {
    sess_model_info info;
    fc_tensor_spec *specs;
    uint8_t *data;
};

fc_status sess_mem_model_new(uint64_t version, const fc_model *m, sess_mem_model **out,
                             fc_error *err) {
    *out = NULL;
    if (version == 0)
        return fc_error_set(err, FC_ERR_INVALID, "model version 0 is reserved for 'latest'");
    uint64_t total = 0;
    fc_status st = fc_model_nbytes(m, &total);
    if (st != FC_OK)
        return fc_error_set(err, st, "model size");
    if (total > SIZE_MAX)
        return fc_error_set(err, FC_ERR_LIMIT, "model of %llu bytes does not fit in memory",
                            (unsigned long long)total);
    sess_mem_model *mm = fc_calloc(1, sizeof *mm);
    if (!mm)
        return fc_error_set(err, FC_ERR_NOMEM, "in-memory model");
    mm->specs = fc_calloc(m->count ? m->count : 1, sizeof *mm->specs);
    mm->data = fc_malloc(total ? (size_t)total : 1);
    if (!mm->specs || !mm->data) {
        st = fc_error_set(err, FC_ERR_NOMEM, "in-memory model of %llu bytes",
                          (unsigned long long)total);
        goto fail;
    }
    size_t pos = 0;
    for (size_t i = 0; i < m->count; i++) {
        mm->specs[i] = m->tensors[i].spec;
        mm->specs[i].name = fc_strdup(m->tensors[i].spec.name);
        if (!mm->specs[i].name) {
            st = fc_error_set(err, FC_ERR_NOMEM, "in-memory model");
            goto fail;
        }
        if (m->tensors[i].nbytes)
            memcpy(mm->data + pos, m->tensors[i].data, (size_t)m->tensors[i].nbytes);
        pos += (size_t)m->tensors[i].nbytes;
    }
    if ((st = fc_stream_model_sha256(m, mm->info.sha256, err)) != FC_OK)
        goto fail;
    mm->info.version = version;
    mm->info.specs = mm->specs;
    mm->info.n_specs = m->count;
    mm->info.total_bytes = total;
    *out = mm;
    return FC_OK;
fail:
    mm->info.n_specs = m->count;
    sess_mem_model_free(mm);
    return st;
}

void sess_mem_model_free(sess_mem_model *mm) {
    if (!mm)
        return;
    if (mm->specs)
        for (size_t i = 0; i < mm->info.n_specs; i++)
            fc_free(mm->specs[i].name);
    fc_free(mm->specs);
    fc_free(mm->data);
    fc_free(mm);
}

static fc_status mem_describe(void *ctx, uint64_t version, sess_model_info *out, fc_error *err) {
    sess_mem_model *mm = ctx;
    if (version != 0 && version != mm->info.version)
        return fc_error_set(err, FC_ERR_NOT_FOUND, "model version %llu is not retained",
                            (unsigned long long)version);
    *out = mm->info;
    return FC_OK;
}

static fc_status mem_read(void *ctx, uint64_t version, uint64_t offset, void *buf, size_t len,
                          fc_error *err) {
    sess_mem_model *mm = ctx;
    if (version != mm->info.version)
        return fc_error_set(err, FC_ERR_NOT_FOUND, "model version %llu is not retained",
                            (unsigned long long)version);
    if (offset > mm->info.total_bytes || len > mm->info.total_bytes - offset)
        return fc_error_set(err, FC_ERR_RANGE, "read of %zu bytes at %llu past the model's %llu",
                            len, (unsigned long long)offset,
                            (unsigned long long)mm->info.total_bytes);
    memcpy(buf, mm->data + offset, len);
    return FC_OK;
}

void sess_mem_model_source(sess_mem_model *mm, sess_model_source *src) {
    src->describe = mem_describe;
    src->read = mem_read;
    src->ctx = mm;
}
