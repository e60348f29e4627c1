/* session.c: one protocol session per client connection (see session.h and
 * docs/daemon-sessions.md). Owns the session state machine, the dispatch table, sequence
 * numbers, download pacing and upload staging; never blocks, never does work proportional to a
 * model on the loop (whole-update checks go to the thread pool), never logs a token.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "aggregators/kernels.h"
#include "core/alloc.h"
#include "core/log.h"
#include "server/sess_internal.h"

#define SESS_NAME_MAX 257

/* The staged bytes of an upload whose connection broke, kept for the client's next session.
 * Counted against the budget (the stage's buffer came from it) and by sess_server.parked_bytes
 * (whole buffers). */
typedef struct sess_parked {
    struct sess_parked *next;
    uint64_t client_id, round, base;
    int is_delta, proposal;
    fc_stage *stage;
    uint64_t expires_ms; /* uv_now() */
} sess_parked;

/* A parked_gone report waiting for the park timer: reports never run inside the session or
 * owner code that freed the stage. */
typedef struct sess_gone_note {
    struct sess_gone_note *next;
    uint64_t client_id, round;
    char why[256];
} sess_gone_note;

struct sess_server {
    sess_config cfg;
    sess *head;
    size_t count;
    uint64_t accepted, rejected;
    /* One repeating timer for every session's heartbeat: each tick walks the sessions and sends
     * a Heartbeat to those that have sent nothing for about the interval. Sending costs one
     * timestamp store per frame, so busy sessions cost nothing extra; 10,000 idle sessions
     * cost one list walk per tick (interval / 4). */
    uv_timer_t *hb;
    uint64_t hb_tick_ms;
    uint64_t heartbeats;
    /* Parked uploads, oldest first (at most one per client), and the timer that expires them
     * and asks the round callback whether they are still wanted; it runs only while something
     * is parked. */
    sess_parked *parked;
    uint64_t parked_bytes, resume_cap;
    size_t n_parked;
    uv_timer_t *park_timer;
    uint64_t park_tick_ms;
    sess_resume_stats rs;
    int shutting_down; /* sess_server_free: no more callbacks */
    sess_gone_note *notes, *notes_tail;
};

struct sess {
    sess_server *sv;
    net_conn *c;
    sess_state state;
    uint64_t gen; /* bumped when the session closes: thread-pool work compares it */
    int refs;     /* 1 for the connection, 1 per job on the thread pool */
    sess *prev, *next;
    fc_frame_decoder dec;
    uint64_t in_seq, out_seq;
    uint64_t last_sent_ms; /* uv_now() of the last frame written: heartbeats are due from it */
    uint64_t client_id;
    char name[SESS_NAME_MAX];
    int announced; /* presence(up = 1) was reported and presence(up = 0) not yet */
    char id[32];
    fc_buf out;     /* reused encode buffer */
    fc_buf pending; /* received bytes held while reading is paused for budget */
    sess_waiter waiter;
    int waiting_budget;
    fc_envelope *wait_begin; /* the UpdateBegin waiting for budget */
    /* download */
    sess_model_info dl;
    fc_stream_splitter sp;
    int blocked;
    /* upload */
    fc_stage *stage;
    uint64_t up_round, up_base;
    int up_delta;
    int up_proposal; /* the upload is an initial model proposal */
    uint64_t up_last_ack;
    int validating;
    int discard_chunks; /* chunks of an aborted upload still in flight are dropped */
    /* Chunk frames of an upload bypass the frame decoder (see process_bytes): the first bytes
     * of each frame are gathered here, and a chunk's payload is then copied straight into the
     * stage as it arrives. */
    uint8_t head[FC_FRAME_CHUNK_HEADER_MAX];
    size_t head_have;
    struct {
        int active;
        uint8_t *dst; /* where the next payload byte goes; NULL: the upload went, discard */
        size_t left, len;
        uint64_t seq;
    } direct;
};

typedef struct sess_job {
    uv_work_t req;
    sess *s;
    net_conn *c; /* referenced while the job runs */
    uint64_t gen;
    uint64_t end_seq;
    double max_norm;
    uint8_t sha256[FC_SHA256_BYTES]; /* announced by UpdateEnd; checked by the job */
    sess_update up;
    fc_status st;
    char msg[FC_ERROR_MSG_MAX + 64];
} sess_job;

const char *sess_state_name(sess_state st) {
    switch (st) {
    case SESS_HELLO_WAIT:
        return "hello_wait";
    case SESS_READY:
        return "ready";
    case SESS_DOWNLOADING:
        return "downloading";
    case SESS_UPLOADING:
        return "uploading";
    case SESS_CLOSING:
        return "closing";
    }
    return "unknown";
}

static void set_state(sess *s, sess_state st) {
    if (s->state == st)
        return;
    FC_LOG(FC_LOG_DEBUG, "session state", FC_LS("session", s->id),
           FC_LS("from", sess_state_name(s->state)), FC_LS("to", sess_state_name(st)));
    s->state = st;
}

/* ---- sending ---- */

/* Every frame the session writes goes through here, so that the heartbeat clock sees it. */
static fc_status sess_write(sess *s, const void *data, size_t len) {
    s->last_sent_ms = uv_now(s->sv->cfg.loop);
    return net_write(s->c, data, len);
}

static fc_status send_msg(sess *s, fc_wire_msg *m) {
    fc_error err = {0};
    fc_buf_reset(&s->out);
    fc_status st = fc_wire_encode(m, 0, &s->out, &err);
    fc_wire_msg_free(m);
    if (st == FC_OK)
        st = sess_write(s, s->out.data, s->out.len);
    if (st != FC_OK)
        FC_LOG(FC_LOG_WARN, "session send failed", FC_LS("session", s->id),
               FC_LS("status", fc_status_name(st)));
    return st;
}

static void send_error(sess *s, fc_status st, int fatal, uint64_t ref_seq, const char *msg) {
    fc_wire_msg m;
    fc_error err = {0};
    if (fc_wire_error(&m, ++s->out_seq, st, fatal, ref_seq, msg, &err) != FC_OK) {
        fc_wire_msg_free(&m);
        return;
    }
    send_msg(s, &m);
}

static void send_ack(sess *s, uint64_t ref_seq, uint64_t offset) {
    fc_wire_msg m;
    fc_error err = {0};
    if (fc_wire_ack(&m, ++s->out_seq, ref_seq, offset, NULL, &err) != FC_OK) {
        fc_wire_msg_free(&m);
        return;
    }
    send_msg(s, &m);
}

/* ---- the one close path ---- */

static void session_free(sess *s) {
    fc_frame_decoder_free(&s->dec);
    fc_buf_free(&s->out);
    fc_buf_free(&s->pending);
    fc_free(s);
}

static void sess_unref(sess *s) {
    if (--s->refs == 0)
        session_free(s);
}

static void abort_upload(sess *s) {
    fc_stage_free(s->stage);
    s->stage = NULL;
    s->direct.dst = NULL; /* a chunk arriving straight into it: the rest is discarded */
    if (s->wait_begin) {
        fc_envelope_free(s->wait_begin);
        s->wait_begin = NULL;
    }
    if (s->waiting_budget) {
        sess_budget_unwait(s->sv->cfg.budget, &s->waiter);
        s->waiting_budget = 0;
    }
}

/* Tells the owner that an authenticated session came (up = 1) or went (up = 0); each session
 * announces its going exactly once, and only if it announced its coming. */
static void announce(sess *s, int up) {
    sess_server *sv = s->sv;
    if (up == s->announced)
        return;
    s->announced = up;
    if (sv->cfg.presence)
        sv->cfg.presence(sv->cfg.presence_ctx, s->client_id, s->name, up);
}

static void park_upload(sess *s);

/* Every error and every orderly end leads here; idempotent. Resources go in on_close. keep: the
 * connection ended without the client giving the upload up (lost, replaced, timed out), so its
 * staged bytes are parked for a resume instead of freed. */
static void begin_close(sess *s, fc_status reason, const char *detail, int keep) {
    if (s->state == SESS_CLOSING)
        return;
    set_state(s, SESS_CLOSING);
    if (keep)
        park_upload(s); /* before the presence report, which may ask sess_server_parked() */
    announce(s, 0);
    s->gen++;
    abort_upload(s);
    if (s->c)
        net_close(s->c, reason, detail);
}

/* A fatal protocol error: Error frame, then close. */
static void fail(sess *s, fc_status st, uint64_t ref_seq, const char *msg) {
    if (s->state == SESS_CLOSING)
        return;
    FC_LOG(FC_LOG_INFO, "session error", FC_LS("session", s->id),
           FC_LS("peer", net_conn_peer(s->c)), FC_LS("code", fc_wire_error_for_status(st)->name),
           FC_LS("detail", msg));
    send_error(s, st, 1, ref_seq, msg);
    begin_close(s, st, msg, 0); /* the stream is broken: nothing of it is trusted later */
}

void sess_close(sess *s, fc_status reason, const char *detail) {
    if (s->state == SESS_CLOSING)
        return;
    fc_wire_msg m;
    fc_error err = {0};
    if (fc_wire_bye(&m, ++s->out_seq, detail ? detail : "closing", &err) == FC_OK)
        send_msg(s, &m);
    else
        fc_wire_msg_free(&m);
    begin_close(s, reason, detail, reason == FC_ERR_EXISTS); /* a replaced session may resume */
}

/* A non-fatal refusal of the upload in progress (or being started): Error, rejection report,
 * staging freed, back to READY. */
static void reject_upload(sess *s, fc_status st, uint64_t ref_seq, uint64_t round,
                          const char *msg) {
    sess_server *sv = s->sv;
    abort_upload(s);
    s->validating = 0;
    s->discard_chunks = 0;
    send_error(s, st, 0, ref_seq, msg);
    sv->rejected++;
    FC_LOG(FC_LOG_INFO, "update rejected", FC_LS("session", s->id), FC_LU("client", s->client_id),
           FC_LU("round", round), FC_LS("code", fc_wire_error_for_status(st)->name),
           FC_LS("reason", msg));
    if (sv->cfg.reject)
        sv->cfg.reject(sv->cfg.reject_ctx, s->client_id, round, st, msg);
    if (s->state == SESS_UPLOADING)
        set_state(s, SESS_READY);
}

/* ---- download ---- */

static void end_download(sess *s) {
    if (s->state == SESS_DOWNLOADING)
        set_state(s, SESS_READY);
}

/* Sends chunks until the output queue crosses its high-water mark or the model is done. Each
 * step reads and sends one chunk (<= 1 MiB): O(frame) per step. */
static void pump_download(sess *s) {
    sess_server *sv = s->sv;
    size_t max_frame = sv->cfg.max_frame_bytes;
    while (s->state == SESS_DOWNLOADING && !s->blocked) {
        fc_chunk_desc d;
        fc_error err = {0};
        if (!fc_stream_split_next(&s->sp, &d)) {
            fc_wire_msg m;
            end_download(s);
            if (fc_wire_model_end(&m, ++s->out_seq, s->dl.version, s->dl.sha256, &err) == FC_OK)
                send_msg(s, &m);
            else
                fail(s, FC_ERR_SYSTEM, 0, "could not build ModelEnd");
            return;
        }
        uint8_t hdr[FC_FRAME_CHUNK_HEADER_MAX];
        size_t hlen = 0;
        fc_status st = fc_frame_chunk_header(s->out_seq + 1, d.tensor_index, d.offset, d.len,
                                             max_frame, hdr, &hlen, &err);
        if (st == FC_OK) {
            fc_buf_reset(&s->out);
            st = fc_buf_reserve(&s->out, hlen + d.len);
        }
        if (st == FC_OK) {
            memcpy(s->out.data, hdr, hlen);
            st = sv->cfg.models.read(sv->cfg.models.ctx, s->dl.version, d.global_offset,
                                     s->out.data + hlen, d.len, &err);
            if (st != FC_OK) {
                fc_error_prefix(&err, "model %llu at byte %llu", (unsigned long long)s->dl.version,
                                (unsigned long long)d.global_offset);
                end_download(s);
                send_error(s, st == FC_ERR_NOT_FOUND ? st : FC_ERR_IO, 0, 0, err.msg);
                return;
            }
        }
        if (st != FC_OK) {
            fail(s, FC_ERR_SYSTEM, 0, "could not frame a model chunk");
            return;
        }
        s->out_seq++;
        s->out.len = hlen + d.len;
        if (sess_write(s, s->out.data, s->out.len) != FC_OK)
            return; /* net is closing the connection; on_close follows */
    }
}

static void h_model_request(sess *s, const fc_envelope *env) {
    sess_server *sv = s->sv;
    const Fedcoord__V1__ModelRequest *r = env->model_request;
    fc_error err = {0};
    if (!sv->cfg.models.describe || !sv->cfg.models.read) {
        send_error(s, FC_ERR_UNSUPPORTED, 0, env->seq, "this server does not serve models");
        return;
    }
    fc_status st = sv->cfg.models.describe(sv->cfg.models.ctx, r->version, &s->dl, &err);
    if (st != FC_OK) {
        send_error(s, st, 0, env->seq, err.msg);
        return;
    }
    if (r->offset > s->dl.total_bytes) {
        char msg[160];
        snprintf(msg, sizeof msg, "offset %llu is beyond model %llu's %llu bytes",
                 (unsigned long long)r->offset, (unsigned long long)s->dl.version,
                 (unsigned long long)s->dl.total_bytes);
        send_error(s, FC_ERR_RANGE, 0, env->seq, msg);
        return;
    }
    st = fc_stream_split_specs(&s->sp, s->dl.specs, s->dl.n_specs, sv->cfg.max_chunk_bytes,
                               r->offset, &err);
    if (st != FC_OK) {
        fc_error_prefix(&err, "model %llu", (unsigned long long)s->dl.version);
        send_error(s, st, 0, env->seq, err.msg);
        return;
    }
    fc_wire_msg m;
    if (fc_wire_model_begin(&m, ++s->out_seq, s->dl.version, s->dl.specs, s->dl.n_specs,
                            s->dl.total_bytes, s->dl.sha256, r->offset, &err) != FC_OK) {
        fc_wire_msg_free(&m);
        fail(s, FC_ERR_SYSTEM, env->seq, "could not build ModelBegin");
        return;
    }
    if (send_msg(s, &m) != FC_OK)
        return;
    if (r->offset > 0) {
        sv->rs.downloads_resumed++;
        sv->rs.download_resumed_bytes += r->offset;
        FC_LOG(FC_LOG_INFO, "model download resumed", FC_LS("session", s->id),
               FC_LU("client", s->client_id), FC_LU("version", s->dl.version),
               FC_LU("offset", r->offset), FC_LU("total", s->dl.total_bytes));
    }
    set_state(s, SESS_DOWNLOADING);
    pump_download(s);
}

/* ---- upload ---- */

static int same_specs_report(const sess_round_info *ri, const fc_tensor_spec *sp, size_t n,
                             uint64_t round, fc_status *st, char *msg, size_t cap) {
    if (n != ri->n_specs) {
        *st = FC_ERR_SHAPE;
        snprintf(msg, cap, "update for round %llu has %zu tensors, round expects %zu",
                 (unsigned long long)round, n, ri->n_specs);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        const fc_tensor_spec *a = &sp[i], *b = &ri->specs[i];
        char sa[160], sb[160];
        if (strcmp(a->name, b->name) != 0) {
            *st = FC_ERR_SHAPE;
            snprintf(msg, cap,
                     "update for round %llu has tensor %zu named '%s', round expects '%s'",
                     (unsigned long long)round, i, a->name, b->name);
            return 0;
        }
        if (a->ndim != b->ndim || memcmp(a->shape, b->shape, a->ndim * sizeof a->shape[0]) != 0) {
            *st = FC_ERR_SHAPE;
            snprintf(msg, cap, "update for round %llu has tensor '%s' shape %s, round expects %s",
                     (unsigned long long)round, a->name,
                     fc_shape_format(a->ndim, a->shape, sa, sizeof sa),
                     fc_shape_format(b->ndim, b->shape, sb, sizeof sb));
            return 0;
        }
        if (a->dtype != b->dtype) {
            *st = FC_ERR_DTYPE;
            snprintf(msg, cap,
                     "update for round %llu has tensor '%s' of dtype %s, round expects %s",
                     (unsigned long long)round, a->name, fc_dtype_name(a->dtype),
                     fc_dtype_name(b->dtype));
            return 0;
        }
    }
    return 1;
}

/* An initial model proposal (round 0, the round announces no layout): the layout is the
 * client's, so only its own consistency is checked here (fc_wire_specs_from_wire already checked
 * names, uniqueness, dtypes, dimensions and size overflow; the staging budget checks the total
 * against max_update_bytes). */
static int check_proposal(const Fedcoord__V1__UpdateBegin *ub, fc_status *st, char *msg,
                          size_t cap) {
    if (ub->is_delta) {
        *st = FC_ERR_INVALID;
        snprintf(msg, cap,
                 "initial model proposal (round 0) is a delta: a proposal must carry the "
                 "model's weights (is_delta false)");
        return 0;
    }
    if (ub->n_tensors == 0) {
        *st = FC_ERR_INVALID;
        snprintf(msg, cap, "initial model proposal (round 0) has no tensors");
        return 0;
    }
    if (ub->n_tensors > FC_STAGE_DEFAULT_MAX_TENSORS) {
        *st = FC_ERR_LIMIT;
        snprintf(msg, cap, "initial model proposal (round 0) has %zu tensors, at most %u",
                 ub->n_tensors, FC_STAGE_DEFAULT_MAX_TENSORS);
        return 0;
    }
    return 1;
}

/* ---- parked uploads: resume across connections ---- */

/* Removes p from the list; the caller frees or adopts it. */
static void parked_unlink(sess_server *sv, sess_parked *p) {
    for (sess_parked **pp = &sv->parked; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            p->next = NULL;
            sv->n_parked--;
            sv->parked_bytes -= fc_stage_total(p->stage);
            if (!sv->parked && !sv->notes)
                uv_timer_stop(sv->park_timer);
            return;
        }
    assert(!"parked stage not in the list");
}

static void park_tick(uv_timer_t *t);

/* Queues a parked_gone report; the park timer delivers it on its next turn (at once). */
static void note_gone(sess_server *sv, uint64_t client_id, uint64_t round, const char *why) {
    if (!sv->cfg.parked_gone || sv->shutting_down)
        return;
    sess_gone_note *n = fc_calloc(1, sizeof *n);
    if (!n) {
        FC_LOG(FC_LOG_WARN, "parked upload report lost: out of memory", FC_LU("client", client_id),
               FC_LU("round", round));
        return;
    }
    n->client_id = client_id;
    n->round = round;
    snprintf(n->why, sizeof n->why, "%s", why);
    if (sv->notes_tail)
        sv->notes_tail->next = n;
    else
        sv->notes = n;
    sv->notes_tail = n;
    if (uv_timer_start(sv->park_timer, park_tick, 0, sv->park_tick_ms) != 0)
        FC_LOG(FC_LOG_WARN, "park timer did not start", FC_LU("client", client_id));
}

/* Frees an unlinked parked stage (its bytes go back to the budget) and says why; notify: report
 * it through parked_gone. */
static void parked_free(sess_server *sv, sess_parked *p, int expired, int notify, const char *why) {
    FC_LOG(FC_LOG_INFO, "parked upload freed", FC_LU("client", p->client_id),
           FC_LU("round", p->round), FC_LU("staged", fc_stage_received(p->stage)),
           FC_LU("total", fc_stage_total(p->stage)), FC_LS("reason", why));
    if (expired)
        sv->rs.expired++;
    else
        sv->rs.dropped++;
    if (notify)
        note_gone(sv, p->client_id, p->round, why);
    fc_stage_free(p->stage);
    fc_free(p);
}

static sess_parked *take_parked(sess_server *sv, uint64_t client_id) {
    for (sess_parked *p = sv->parked; p; p = p->next)
        if (p->client_id == client_id) {
            parked_unlink(sv, p);
            return p;
        }
    return NULL;
}

/* Frees the oldest parked stage; 0 if there was none. */
static int evict_oldest(sess_server *sv, const char *why) {
    sess_parked *p = sv->parked;
    if (!p)
        return 0;
    parked_unlink(sv, p);
    parked_free(sv, p, 0, 1, why);
    return 1;
}

/* Expires parked stages and frees those the round callback no longer expects. */
static void sweep_parked(sess_server *sv) {
    uint64_t now = uv_now(sv->cfg.loop);
    sess_parked *next;
    for (sess_parked *p = sv->parked; p; p = next) {
        next = p->next;
        char why[FC_ERROR_MSG_MAX + 96];
        int gone = 0, expired = 0;
        if (now >= p->expires_ms) {
            gone = expired = 1;
            snprintf(why, sizeof why, "not resumed within %u ms", sv->cfg.resume_keep_ms);
        } else if (sv->cfg.round) {
            sess_round_info ri;
            fc_error err = {0};
            memset(&ri, 0, sizeof ri);
            fc_status st = sv->cfg.round(sv->cfg.round_ctx, p->client_id, &ri, &err);
            if (st != FC_OK) {
                gone = 1;
                snprintf(why, sizeof why, "the round no longer expects this client: %s",
                         err.msg[0] ? err.msg : fc_strerror(st));
            } else if (ri.round != p->round || ri.base_version != p->base) {
                gone = 1;
                snprintf(why, sizeof why,
                         "round %llu from version %llu is over (current round %llu, version %llu)",
                         (unsigned long long)p->round, (unsigned long long)p->base,
                         (unsigned long long)ri.round, (unsigned long long)ri.base_version);
            }
        }
        if (gone) {
            parked_unlink(sv, p);
            parked_free(sv, p, expired, 1, why);
        }
    }
    if (!sv->parked && !sv->notes)
        uv_timer_stop(sv->park_timer);
}

/* Delivers the queued parked_gone reports, then expires and checks what is parked. */
static void park_tick(uv_timer_t *t) {
    sess_server *sv = t->data;
    sess_gone_note *n = sv->notes;
    sv->notes = sv->notes_tail = NULL;
    while (n) {
        sess_gone_note *next = n->next;
        sv->cfg.parked_gone(sv->cfg.parked_gone_ctx, n->client_id, n->round, n->why);
        fc_free(n);
        n = next;
    }
    sweep_parked(sv);
}

/* The session ends with an upload in progress that the client did not give up: keep its
 * staged bytes for the client's next session (takes s->stage), unless there is nothing worth
 * keeping or no room under resume_max_bytes. */
static void park_upload(sess *s) {
    sess_server *sv = s->sv;
    if (!s->stage || s->validating || sv->cfg.resume_disabled)
        return;
    uint64_t got = fc_stage_received(s->stage), total = fc_stage_total(s->stage);
    if (got == 0 || fc_stage_complete(s->stage))
        return;
    sess_parked *old = take_parked(sv, s->client_id);
    if (old)
        parked_free(sv, old, 0, 0, "replaced by a newer broken upload of the same client");
    if (total > sv->resume_cap) {
        FC_LOG(FC_LOG_INFO, "upload not parked", FC_LS("session", s->id),
               FC_LU("client", s->client_id), FC_LU("round", s->up_round), FC_LU("total", total),
               FC_LU("resume_max_bytes", sv->resume_cap));
        return;
    }
    while (sv->parked_bytes > sv->resume_cap - total)
        evict_oldest(sv, "evicted to park a newer upload (resume_max_bytes)");
    sess_parked *p = fc_calloc(1, sizeof *p);
    if (!p)
        return; /* the caller frees the stage */
    if (!uv_is_active((uv_handle_t *)sv->park_timer) &&
        uv_timer_start(sv->park_timer, park_tick, sv->park_tick_ms, sv->park_tick_ms) != 0) {
        fc_free(p);
        return;
    }
    p->client_id = s->client_id;
    p->round = s->up_round;
    p->base = s->up_base;
    p->is_delta = s->up_delta;
    p->proposal = s->up_proposal;
    p->stage = s->stage;
    p->expires_ms = uv_now(sv->cfg.loop) + sv->cfg.resume_keep_ms;
    s->stage = NULL;
    s->direct.dst = NULL;
    sess_parked **tail = &sv->parked;
    while (*tail)
        tail = &(*tail)->next;
    *tail = p;
    sv->n_parked++;
    sv->parked_bytes += total;
    sv->rs.parked++;
    FC_LOG(FC_LOG_INFO, "upload parked for resume", FC_LS("session", s->id),
           FC_LU("client", s->client_id), FC_LU("round", s->up_round), FC_LU("staged", got),
           FC_LU("total", total), FC_LU("keep_ms", sv->cfg.resume_keep_ms));
}

/* Whether UpdateBegin ub (layout specs/total, proposal or not) continues parked upload p. On 0,
 * why says what differs: the upload then starts at 0 and p is freed. */
static int resume_matches(const sess_parked *p, const Fedcoord__V1__UpdateBegin *ub,
                          const fc_tensor_spec *specs, uint64_t total, int proposal, char *why,
                          size_t cap) {
    uint64_t got = fc_stage_received(p->stage);
    if (ub->resume_offset == 0) {
        snprintf(why, cap, "the client starts the upload afresh (resume_offset 0)");
        return 0;
    }
    if (ub->round != p->round || ub->base_version != p->base) {
        snprintf(why, cap,
                 "the parked bytes are for round %llu from version %llu, the upload for round "
                 "%llu from version %llu",
                 (unsigned long long)p->round, (unsigned long long)p->base,
                 (unsigned long long)ub->round, (unsigned long long)ub->base_version);
        return 0;
    }
    if ((ub->is_delta != 0) != (p->is_delta != 0) || proposal != p->proposal) {
        snprintf(why, cap, "the parked upload was %s, this one is %s",
                 p->proposal   ? "a proposal"
                 : p->is_delta ? "a delta"
                               : "weights",
                 proposal       ? "a proposal"
                 : ub->is_delta ? "a delta"
                                : "weights");
        return 0;
    }
    if (total != fc_stage_total(p->stage) || ub->n_tensors != fc_stage_tensor_count(p->stage)) {
        snprintf(why, cap, "%zu tensors of %llu bytes announced, the parked upload has %zu of %llu",
                 ub->n_tensors, (unsigned long long)total, fc_stage_tensor_count(p->stage),
                 (unsigned long long)fc_stage_total(p->stage));
        return 0;
    }
    for (size_t i = 0; i < ub->n_tensors; i++) {
        const fc_tensor_spec *a = &specs[i], *b = fc_stage_spec(p->stage, i);
        if (strcmp(a->name, b->name) != 0 || a->dtype != b->dtype || a->ndim != b->ndim ||
            memcmp(a->shape, b->shape, a->ndim * sizeof a->shape[0]) != 0) {
            snprintf(why, cap, "tensor %zu ('%.200s') differs from the parked upload's ('%.200s')",
                     i, a->name, b->name);
            return 0;
        }
    }
    if (got > ub->resume_offset) {
        snprintf(why, cap,
                 "the client resumes at byte %llu but %llu bytes are staged, and staged bytes "
                 "cannot be taken back (the SHA-256 runs as they arrive)",
                 (unsigned long long)ub->resume_offset, (unsigned long long)got);
        return 0;
    }
    return 1;
}

/* Continues parked upload p in session s (takes p): Ack{offset = staged bytes}. */
static void resume_upload(sess *s, sess_parked *p, uint64_t begin_seq) {
    sess_server *sv = s->sv;
    uint64_t at = fc_stage_received(p->stage);
    s->stage = p->stage;
    s->up_round = p->round;
    s->up_base = p->base;
    s->up_delta = p->is_delta;
    s->up_proposal = p->proposal;
    s->up_last_ack = at;
    s->validating = 0;
    s->discard_chunks = 0;
    fc_free(p);
    sv->rs.resumed++;
    sv->rs.resumed_bytes += at;
    FC_LOG(FC_LOG_INFO, "upload resumed", FC_LS("session", s->id), FC_LU("client", s->client_id),
           FC_LU("round", s->up_round), FC_LU("offset", at),
           FC_LU("total", fc_stage_total(s->stage)));
    set_state(s, SESS_UPLOADING);
    send_ack(s, begin_seq, at);
}

static void budget_wake(sess_waiter *w);

/* Returns 1 if the upload started or was refused, 0 if it waits for budget (env kept). */
static int start_upload(sess *s, fc_envelope *env) {
    sess_server *sv = s->sv;
    const Fedcoord__V1__UpdateBegin *ub = env->update_begin;
    fc_error err = {0};
    char msg[FC_ERROR_MSG_MAX];
    if (!sv->cfg.round) {
        reject_upload(s, FC_ERR_STATE, env->seq, ub->round, "this server runs no rounds");
        return 1;
    }
    sess_round_info ri;
    memset(&ri, 0, sizeof ri);
    fc_status st = sv->cfg.round(sv->cfg.round_ctx, s->client_id, &ri, &err);
    if (st != FC_OK) {
        reject_upload(s, st, env->seq, ub->round, err.msg);
        return 1;
    }
    if (ub->round != ri.round) {
        snprintf(msg, sizeof msg, "update for round %llu, but the current round is %llu",
                 (unsigned long long)ub->round, (unsigned long long)ri.round);
        reject_upload(s, FC_ERR_STATE, env->seq, ub->round, msg);
        return 1;
    }
    if (ub->base_version != ri.base_version) {
        snprintf(msg, sizeof msg,
                 "update for round %llu was trained from version %llu, round "
                 "expects version %llu",
                 (unsigned long long)ub->round, (unsigned long long)ub->base_version,
                 (unsigned long long)ri.base_version);
        reject_upload(s, FC_ERR_REQUIREMENT, env->seq, ub->round, msg);
        return 1;
    }
    fc_tensor_spec *specs = NULL;
    uint64_t total = 0;
    st = fc_wire_specs_from_wire(ub->tensors, ub->n_tensors, &specs, &total, &err);
    if (st != FC_OK) {
        reject_upload(s, st, env->seq, ub->round, err.msg);
        return 1;
    }
    int proposal = ri.round == 0 && ri.n_specs == 0;
    if (proposal ? !check_proposal(ub, &st, msg, sizeof msg)
                 : !same_specs_report(&ri, specs, ub->n_tensors, ub->round, &st, msg, sizeof msg)) {
        fc_wire_specs_free(specs, ub->n_tensors);
        reject_upload(s, st, env->seq, ub->round, msg);
        return 1;
    }
    sess_parked *p = take_parked(sv, s->client_id);
    if (p) {
        char why[FC_ERROR_MSG_MAX];
        if (resume_matches(p, ub, specs, total, proposal, why, sizeof why)) {
            fc_wire_specs_free(specs, ub->n_tensors);
            resume_upload(s, p, env->seq);
            return 1;
        }
        FC_LOG(FC_LOG_INFO, "upload starts afresh", FC_LS("session", s->id),
               FC_LU("client", s->client_id), FC_LU("round", ub->round),
               FC_LU("resume_offset", ub->resume_offset), FC_LS("reason", why));
        sv->rs.fresh++;
        parked_free(sv, p, 0, 1, why); /* before asking the budget: its bytes are free again */
    } else if (ub->resume_offset > 0) {
        FC_LOG(FC_LOG_INFO, "upload starts afresh", FC_LS("session", s->id),
               FC_LU("client", s->client_id), FC_LU("round", ub->round),
               FC_LU("resume_offset", ub->resume_offset),
               FC_LS("reason", "nothing is parked for this client"));
        sv->rs.fresh++;
    }
    uint64_t max_total = sv->cfg.max_update_bytes ? sv->cfg.max_update_bytes : (uint64_t)16 << 30;
    fc_stage *stage = NULL;
    st = sess_budget_stage(sv->cfg.budget, s->client_id, specs, ub->n_tensors, total, max_total,
                           &stage, &err);
    /* A live upload comes before parked ones: make room by freeing them, oldest first. */
    while (st == FC_ERR_BUSY && evict_oldest(sv, "evicted: a live upload needs the staging budget"))
        st = sess_budget_stage(sv->cfg.budget, s->client_id, specs, ub->n_tensors, total, max_total,
                               &stage, &err);
    fc_wire_specs_free(specs, ub->n_tensors);
    if (st == FC_ERR_BUSY) {
        /* Both pools refused: stop reading this connection until a staging buffer is freed. */
        FC_LOG(FC_LOG_INFO, "upload waits for staging budget", FC_LS("session", s->id),
               FC_LU("client", s->client_id), FC_LU("bytes", total), FC_LS("reason", err.msg));
        s->wait_begin = env;
        s->waiter.wake = budget_wake;
        s->waiter.order = s->client_id;
        s->waiting_budget = 1;
        sess_budget_wait(sv->cfg.budget, &s->waiter);
        net_pause_reading(s->c);
        return 0;
    }
    if (st != FC_OK) {
        reject_upload(s, st, env->seq, ub->round, err.msg);
        return 1;
    }
    s->stage = stage;
    s->up_round = ub->round;
    s->up_base = ub->base_version;
    s->up_delta = ub->is_delta;
    s->up_proposal = proposal;
    s->up_last_ack = 0;
    s->validating = 0;
    s->discard_chunks = 0;
    set_state(s, SESS_UPLOADING);
    send_ack(s, env->seq, 0); /* a fresh upload starts at byte 0 (protocol 5.4) */
    return 1;
}

static void process_bytes(sess *s, const uint8_t *p, size_t len);

static void budget_wake(sess_waiter *w) {
    sess *s = (sess *)(void *)((char *)w - offsetof(sess, waiter)); /* container_of */
    if (s->state == SESS_CLOSING || !s->wait_begin)
        return;
    s->waiting_budget = 0;
    fc_envelope *env = s->wait_begin;
    s->wait_begin = NULL;
    if (!start_upload(s, env))
        return; /* still waiting */
    fc_envelope_free(env);
    if (s->state == SESS_CLOSING)
        return;
    fc_buf held = s->pending;
    s->pending = (fc_buf)FC_BUF_INIT;
    net_resume_reading(s->c);
    process_bytes(s, held.data, held.len);
    fc_buf_free(&held);
}

static void chunk_staged(sess *s, uint64_t seq, fc_status st, const fc_error *err);

/* An upload is taking chunks: its stage is open and UpdateEnd has not been seen. */
static int taking_chunks(const sess *s) {
    return s->state == SESS_UPLOADING && !s->validating && s->stage;
}

static void h_chunk(sess *s, const fc_chunk_view *v) {
    sess_server *sv = s->sv;
    fc_error err = {0};
    if (!taking_chunks(s)) {
        if (s->discard_chunks && s->state == SESS_READY)
            return; /* the rest of an upload this side already refused */
        fail(s, FC_ERR_PROTOCOL, v->seq, "Chunk with no upload in progress");
        return;
    }
    fc_status st = fc_wire_validate_chunk(v, &err);
    if (st == FC_OK && v->data_len > sv->cfg.max_chunk_bytes)
        st = fc_error_set(&err, FC_ERR_LIMIT, "chunk of %zu bytes exceeds max_chunk_bytes %u",
                          v->data_len, sv->cfg.max_chunk_bytes);
    if (st == FC_OK)
        st = fc_stage_add_chunk(s->stage, v->tensor_index, v->offset, v->data, v->data_len, &err);
    chunk_staged(s, v->seq, st, &err);
}

/* After a chunk was added to the stage (st FC_OK) or refused: the refusal, or the periodic Ack. */
static void chunk_staged(sess *s, uint64_t seq, fc_status st, const fc_error *err) {
    sess_server *sv = s->sv;
    if (st != FC_OK) {
        char msg[FC_ERROR_MSG_MAX + 64];
        snprintf(msg, sizeof msg, "update for round %llu: %s", (unsigned long long)s->up_round,
                 err->msg);
        reject_upload(s, st, seq, s->up_round, msg);
        s->discard_chunks = 1; /* the client's later chunks and UpdateEnd are already on the way */
        return;
    }
    uint64_t got = fc_stage_received(s->stage);
    uint64_t every = sv->cfg.ack_every_bytes ? sv->cfg.ack_every_bytes : (uint64_t)64 << 20;
    if (got - s->up_last_ack >= every) {
        s->up_last_ack = got;
        send_ack(s, seq, got);
    }
}

/* A chunk frame's payload goes straight into the stage when, from the frame's first bytes, it
 * is certain that the frame is a chunk the stage takes: the same checks as handle_frame and
 * h_chunk, in the same order, with nothing changed when one fails (the frame then goes
 * through the decoder and gets the usual error). The payload is then copied once, from the
 * TLS plaintext into place, with no frame buffer. */
static int direct_begin(sess *s) {
    sess_server *sv = s->sv;
    uint32_t n = fc_load_u32be(s->head);
    fc_chunk_view v;
    size_t at = 0;
    fc_error err = {0};
    uint8_t *dst = NULL;
    if ((size_t)n + FC_FRAME_PREFIX_BYTES <= sizeof s->head || n > s->dec.max_frame ||
        !taking_chunks(s) ||
        !fc_frame_peek_chunk_head(s->head + FC_FRAME_PREFIX_BYTES,
                                  s->head_have - FC_FRAME_PREFIX_BYTES, n, &v, &at) ||
        v.seq != s->in_seq + 1 || fc_wire_validate_chunk(&v, &err) != FC_OK ||
        v.data_len > sv->cfg.max_chunk_bytes ||
        fc_stage_chunk_dst(s->stage, v.tensor_index, v.offset, v.data_len, &dst, &err) != FC_OK)
        return 0;
    s->in_seq = v.seq;
    size_t early = s->head_have - FC_FRAME_PREFIX_BYTES - at; /* payload already in the head */
    memcpy(dst, s->head + FC_FRAME_PREFIX_BYTES + at, early);
    s->direct.active = 1;
    s->direct.dst = dst + early;
    s->direct.left = v.data_len - early;
    s->direct.len = v.data_len;
    s->direct.seq = v.seq;
    s->head_have = 0;
    fc_frame_decoder_passed(&s->dec, (uint64_t)n + FC_FRAME_PREFIX_BYTES);
    return 1;
}

/* The last payload byte of a direct chunk arrived. */
static void direct_end(sess *s) {
    uint64_t seq = s->direct.seq;
    size_t len = s->direct.len;
    int staged = s->direct.dst != NULL;
    memset(&s->direct, 0, sizeof s->direct);
    if (!staged) { /* the upload went while the payload arrived: as h_chunk would answer now */
        if (!(s->discard_chunks && s->state == SESS_READY))
            fail(s, FC_ERR_PROTOCOL, seq, "Chunk with no upload in progress");
        return;
    }
    fc_error err = {0};
    fc_status st = fc_stage_chunk_done(s->stage, len, &err);
    chunk_staged(s, seq, st, &err);
}

static void job_work(uv_work_t *req) {
    sess_job *j = req->data;
    fc_model m = FC_MODEL_INIT;
    fc_error err = {0};
    /* The SHA-256 of the whole update, here rather than chunk by chunk on the loop thread. */
    j->st = fc_stage_finish(j->up.stage, j->sha256, sizeof j->sha256, &err);
    if (j->st != FC_OK) {
        snprintf(j->msg, sizeof j->msg, "update for round %llu: %s",
                 (unsigned long long)j->up.round, err.msg);
        return;
    }
    j->st = fc_stage_view_model(j->up.stage, &m, &err);
    if (j->st != FC_OK) {
        snprintf(j->msg, sizeof j->msg, "%s", err.msg);
        return;
    }
    double sq = 0;
    for (size_t i = 0; i < m.count; i++) {
        const fc_tensor *t = &m.tensors[i];
        size_t es = fc_dtype_size(t->spec.dtype);
        size_t n = (size_t)(t->nbytes / es), window = (size_t)FC_STAGE_EVICT_WINDOW / es;
        /* a window at a time, so that a spilled update's pages can go once checked */
        for (size_t k = 0; k < n; k += window) {
            const uint8_t *p = (const uint8_t *)t->data + k * es;
            size_t c = n - k < window ? n - k : window;
            if (!agg_k_all_finite(t->spec.dtype, p, c)) {
                j->st = FC_ERR_NON_FINITE;
                snprintf(j->msg, sizeof j->msg,
                         "update for round %llu has a NaN or infinite value in tensor '%s'",
                         (unsigned long long)j->up.round, t->spec.name);
                goto out;
            }
            if (j->max_norm > 0)
                sq += agg_k_sqnorm(t->spec.dtype, p, c);
            fc_stage_done_with(j->up.stage, p, c * es);
        }
    }
    if (j->max_norm > 0 && !(sqrt(sq) <= j->max_norm)) {
        j->st = FC_ERR_REQUIREMENT;
        snprintf(j->msg, sizeof j->msg,
                 "update for round %llu has L2 norm %.6g above the bound %.6g",
                 (unsigned long long)j->up.round, sqrt(sq), j->max_norm);
    }
out:
    fc_model_free(&m);
}

/* Validation ran off the loop; the round may have closed meanwhile (deadline, stop). Asks the
 * round callback again so that a late update gets an error instead of an Ack. 0 with j->st and
 * j->msg set when the update is no longer wanted. */
static int still_expected(sess *s, sess_job *j) {
    sess_server *sv = s->sv;
    sess_round_info ri;
    fc_error err = {0};
    memset(&ri, 0, sizeof ri);
    fc_status st = sv->cfg.round(sv->cfg.round_ctx, s->client_id, &ri, &err);
    if (st == FC_OK && ri.round == j->up.round)
        return 1;
    j->st = st != FC_OK ? st : FC_ERR_STATE;
    int n = snprintf(j->msg, sizeof j->msg, "round %llu closed while the update was validated",
                     (unsigned long long)j->up.round);
    if (st != FC_OK && n > 0 && (size_t)n < sizeof j->msg - 2)
        snprintf(j->msg + n, sizeof j->msg - (size_t)n, ": %.400s", err.msg);
    return 0;
}

static void job_after(uv_work_t *req, int status) {
    sess_job *j = req->data;
    sess *s = j->s;
    net_conn *c = j->c;
    if (status != 0 && j->st == FC_OK) {
        j->st = FC_ERR_SYSTEM;
        snprintf(j->msg, sizeof j->msg, "validation was cancelled");
    }
    if (s->gen != j->gen || s->state == SESS_CLOSING) {
        /* The session closed meanwhile: the update dies with it. */
        sess_update_release(&j->up);
    } else if (j->st == FC_OK && !still_expected(s, j)) {
        sess_update_release(&j->up);
        reject_upload(s, j->st, j->end_seq, j->up.round, j->msg);
    } else if (j->st == FC_OK) {
        sess_server *sv = s->sv;
        uint64_t total = fc_stage_total(j->up.stage);
        s->validating = 0;
        set_state(s, SESS_READY);
        sv->accepted++;
        FC_LOG(FC_LOG_INFO, "update accepted", FC_LS("session", s->id),
               FC_LU("client", s->client_id), FC_LU("round", j->up.round), FC_LU("bytes", total));
        sv->cfg.sink(sv->cfg.sink_ctx, &j->up);
        send_ack(s, j->end_seq, total);
    } else {
        sess_update_release(&j->up);
        reject_upload(s, j->st, j->end_seq, j->up.round, j->msg);
    }
    fc_free(j);
    if (c)
        net_conn_unref(c);
    sess_unref(s);
}

static void h_update_end(sess *s, const fc_envelope *env) {
    sess_server *sv = s->sv;
    const Fedcoord__V1__UpdateEnd *ue = env->update_end;
    fc_error err = {0};
    char msg[FC_ERROR_MSG_MAX + 64];
    if (s->state == SESS_READY && s->discard_chunks) {
        s->discard_chunks = 0; /* the end of an upload refused at a chunk: already answered */
        return;
    }
    if (s->validating || !s->stage) {
        fail(s, FC_ERR_PROTOCOL, env->seq, "UpdateEnd while the update is already being validated");
        return;
    }
    fc_status st = fc_stage_check_end(s->stage, ue->sha256.len, &err);
    if (st != FC_OK) {
        snprintf(msg, sizeof msg, "update for round %llu: %s", (unsigned long long)s->up_round,
                 err.msg);
        reject_upload(s, st, env->seq, s->up_round, msg);
        return;
    }
    if (ue->num_examples == 0 ||
        (sv->cfg.max_num_examples && ue->num_examples > sv->cfg.max_num_examples)) {
        snprintf(msg, sizeof msg, "update for round %llu claims %llu examples, allowed 1..%llu",
                 (unsigned long long)s->up_round, (unsigned long long)ue->num_examples,
                 (unsigned long long)sv->cfg.max_num_examples);
        reject_upload(s, FC_ERR_REQUIREMENT, env->seq, s->up_round, msg);
        return;
    }
    sess_job *j = fc_calloc(1, sizeof *j);
    if (j && ue->n_metrics) {
        j->up.metric_names = fc_calloc(ue->n_metrics, sizeof *j->up.metric_names);
        j->up.metric_values = fc_calloc(ue->n_metrics, sizeof *j->up.metric_values);
        if (j->up.metric_names && j->up.metric_values)
            for (size_t i = 0; i < ue->n_metrics; i++) {
                if (!(j->up.metric_names[i] = fc_strdup(ue->metrics[i]->key)))
                    break;
                j->up.metric_values[i] = ue->metrics[i]->value;
                j->up.n_metrics = i + 1;
            }
    }
    if (!j || (ue->n_metrics && j->up.n_metrics != ue->n_metrics)) {
        if (j)
            sess_update_release(&j->up);
        fc_free(j);
        reject_upload(s, FC_ERR_NOMEM, env->seq, s->up_round,
                      "out of memory for the update's metrics");
        return;
    }
    j->req.data = j;
    j->s = s;
    j->gen = s->gen;
    j->end_seq = env->seq;
    memcpy(j->sha256, ue->sha256.data, sizeof j->sha256); /* the length was checked */
    /* The norm bound limits deltas; an initial model proposal is weights. */
    j->max_norm = s->up_proposal ? 0 : sv->cfg.max_update_norm;
    j->up.client_id = s->client_id;
    j->up.round = s->up_round;
    j->up.base_version = s->up_base;
    j->up.num_examples = ue->num_examples;
    j->up.is_delta = s->up_delta;
    j->up.stage = s->stage;
    if (uv_queue_work(sv->cfg.loop, &j->req, job_work, job_after) != 0) {
        j->up.stage = NULL;
        sess_update_release(&j->up);
        fc_free(j);
        reject_upload(s, FC_ERR_SYSTEM, env->seq, s->up_round,
                      "could not queue the update's validation");
        return;
    }
    s->stage = NULL; /* the job owns it now */
    s->validating = 1;
    s->refs++;
    j->c = s->c;
    net_conn_ref(j->c);
}

void sess_update_release(sess_update *u) {
    if (!u)
        return;
    fc_stage_free(u->stage);
    u->stage = NULL;
    for (size_t i = 0; i < u->n_metrics; i++)
        fc_free(u->metric_names[i]);
    fc_free(u->metric_names);
    fc_free(u->metric_values);
    u->metric_names = NULL;
    u->metric_values = NULL;
    u->n_metrics = 0;
}

/* ---- handshake and small messages ---- */

static void h_hello(sess *s, const fc_envelope *env) {
    sess_server *sv = s->sv;
    const Fedcoord__V1__Hello *h = env->hello;
    fc_error err = {0};
    fc_status st =
        fc_wire_check_version(FC_WIRE_SERVER, h->protocol_major, h->protocol_minor, &err);
    if (st != FC_OK) {
        fail(s, st, env->seq, err.msg);
        return;
    }
    uint64_t id = 0;
    char name[SESS_NAME_MAX] = "";
    st = sv->cfg.auth(sv->cfg.auth_ctx, h->client_name ? h->client_name : "", h->token.data,
                      h->token.len, net_conn_identity(s->c), &id, name, sizeof name, &err);
    if (st == FC_OK && id == 0)
        st = fc_error_set(&err, FC_ERR_AUTH, "authenticator returned no client");
    if (st != FC_OK) {
        fail(s, st == FC_ERR_AUTH ? FC_ERR_AUTH : FC_ERR_SYSTEM, env->seq,
             st == FC_ERR_AUTH ? err.msg : "authentication failed internally");
        return;
    }
    s->client_id = id;
    snprintf(s->name, sizeof s->name, "%s", name);
    /* A client has one session: a reconnect replaces the older one. */
    for (sess *o = sv->head; o; o = o->next)
        if (o != s && o->client_id == id && o->state != SESS_CLOSING) {
            char why[160 + SESS_NAME_MAX];
            snprintf(why, sizeof why, "replaced by a new session of client '%s' from %s", name,
                     net_conn_peer(s->c));
            FC_LOG(FC_LOG_INFO, "session replaced", FC_LS("old", o->id), FC_LS("new", s->id));
            sess_close(o, FC_ERR_EXISTS, why);
        }
    uint8_t token[16];
    if (RAND_bytes(token, sizeof token) != 1) {
        fail(s, FC_ERR_SYSTEM, env->seq, "no randomness for a resume token");
        return;
    }
    fc_wire_welcome_args a = {
        .session_id = s->id,
        .resume_token = {token, sizeof token},
        .heartbeat_interval_ms = sv->cfg.heartbeat_interval_ms,
        .max_frame_bytes = sv->cfg.max_frame_bytes,
        .max_chunk_bytes = sv->cfg.max_chunk_bytes,
        .software = sv->cfg.software,
    };
    fc_wire_msg m;
    if (fc_wire_welcome(&m, ++s->out_seq, &a, &err) != FC_OK) {
        fc_wire_msg_free(&m);
        fail(s, FC_ERR_SYSTEM, env->seq, "could not build Welcome");
        return;
    }
    if (send_msg(s, &m) != FC_OK)
        return;
    FC_LOG(FC_LOG_INFO, "session authenticated", FC_LS("session", s->id), FC_LS("client", s->name),
           FC_LU("client_id", id), FC_LS("peer", net_conn_peer(s->c)));
    set_state(s, SESS_READY);
    announce(s, 1);
}

static void h_heartbeat(sess *s, const fc_envelope *env) {
    (void)s, (void)env; /* any frame resets net's idle timer; nothing to answer */
}

static void h_ack(sess *s, const fc_envelope *env) { (void)s, (void)env; }

static void h_update_begin(sess *s, fc_envelope **envp) {
    if (!start_upload(s, *envp))
        *envp = NULL; /* kept until budget frees */
}

/* The session's own rules for an EvalResult (the codec already checked the wire limits).
 * Returns FC_OK or the code to send, with a message naming the field or metric. */
static fc_status check_eval(const sess_server *sv, const Fedcoord__V1__EvalResult *r, char *msg,
                            size_t cap) {
    uint64_t max_examples = sv->cfg.max_num_examples ? sv->cfg.max_num_examples : (uint64_t)1 << 53;
    if (r->num_examples == 0 || r->num_examples > max_examples) {
        snprintf(msg, cap, "evaluation result for round %llu claims %llu examples, allowed 1..%llu",
                 (unsigned long long)r->round, (unsigned long long)r->num_examples,
                 (unsigned long long)max_examples);
        return FC_ERR_REQUIREMENT;
    }
    if (r->n_metrics > SESS_EVAL_MAX_METRICS) {
        snprintf(msg, cap, "evaluation result for round %llu has %zu metrics, at most %u",
                 (unsigned long long)r->round, r->n_metrics, SESS_EVAL_MAX_METRICS);
        return FC_ERR_LIMIT;
    }
    for (size_t i = 0; i < r->n_metrics; i++) {
        const char *name = r->metrics[i]->key ? r->metrics[i]->key : "";
        size_t len = strlen(name);
        if (len == 0) {
            snprintf(msg, cap, "evaluation result for round %llu: metric %zu has an empty name",
                     (unsigned long long)r->round, i);
            return FC_ERR_INVALID;
        }
        if (len > SESS_EVAL_MAX_NAME) {
            snprintf(msg, cap,
                     "evaluation result for round %llu: metric name '%.80s...' is %zu bytes, "
                     "at most %u",
                     (unsigned long long)r->round, name, len, SESS_EVAL_MAX_NAME);
            return FC_ERR_LIMIT;
        }
        if (!isfinite(r->metrics[i]->value)) {
            snprintf(msg, cap, "evaluation result for round %llu: metric '%s' is not finite",
                     (unsigned long long)r->round, name);
            return FC_ERR_NON_FINITE;
        }
    }
    return FC_OK;
}

static void h_eval_result(sess *s, const fc_envelope *env) {
    sess_server *sv = s->sv;
    const Fedcoord__V1__EvalResult *r = env->eval_result;
    char msg[FC_ERROR_MSG_MAX];
    if (!sv->cfg.eval) {
        send_error(s, FC_ERR_UNSUPPORTED, 0, env->seq,
                   "this server does not collect evaluation results");
        return;
    }
    fc_status st = check_eval(sv, r, msg, sizeof msg);
    if (st == FC_OK) {
        const char *names[SESS_EVAL_MAX_METRICS];
        double values[SESS_EVAL_MAX_METRICS];
        for (size_t i = 0; i < r->n_metrics; i++) {
            names[i] = r->metrics[i]->key;
            values[i] = r->metrics[i]->value;
        }
        fc_error err = {0};
        st = sv->cfg.eval(sv->cfg.eval_ctx, s->client_id, r->round, r->model_version,
                          r->num_examples, names, values, r->n_metrics, &err);
        if (st != FC_OK)
            snprintf(msg, sizeof msg, "%s", err.msg[0] ? err.msg : fc_strerror(st));
    }
    if (st != FC_OK) {
        FC_LOG(FC_LOG_INFO, "evaluation result refused", FC_LS("session", s->id),
               FC_LU("client", s->client_id), FC_LU("round", r->round),
               FC_LS("code", fc_wire_error_for_status(st)->name), FC_LS("reason", msg));
        send_error(s, st, 0, env->seq, msg);
        return;
    }
    FC_LOG(FC_LOG_DEBUG, "evaluation result accepted", FC_LS("session", s->id),
           FC_LU("client", s->client_id), FC_LU("round", r->round),
           FC_LU("examples", r->num_examples));
    send_ack(s, env->seq, 0);
}

static void h_error(sess *s, const fc_envelope *env) {
    const Fedcoord__V1__Error *e = env->error;
    FC_LOG(FC_LOG_INFO, "client sent an error", FC_LS("session", s->id), FC_LU("code", e->code),
           FC_LS("message", e->message ? e->message : ""));
    if (s->sv->cfg.peer_error && s->client_id)
        s->sv->cfg.peer_error(s->sv->cfg.peer_error_ctx, s->client_id,
                              fc_wire_status_for_code(e->code), e->fatal, e->ref_seq,
                              e->message ? e->message : "");
    if (e->fatal) {
        begin_close(s, FC_ERR_CLOSED, "client sent a fatal error", 0);
        return;
    }
    if (s->state == SESS_DOWNLOADING)
        end_download(s); /* the client gave up the download */
    else if (s->state == SESS_UPLOADING && !s->validating) {
        abort_upload(s);
        set_state(s, SESS_READY);
    }
}

static void h_bye(sess *s, const fc_envelope *env) {
    (void)env;
    begin_close(s, FC_OK, "client said bye", 0);
}

/* ---- dispatch ---- */

#define ST(x) (1u << (x))
#define AUTHED (ST(SESS_READY) | ST(SESS_DOWNLOADING) | ST(SESS_UPLOADING))

typedef struct dispatch_row {
    Fedcoord__V1__Envelope__BodyCase body;
    unsigned states;
    void (*handler)(sess *s, const fc_envelope *env);
    void (*owning)(sess *s, fc_envelope **envp); /* handlers that may keep the envelope */
} dispatch_row;

static void h_chunk_env(sess *s, const fc_envelope *env) {
    fc_chunk_view v;
    fc_error err = {0};
    if (fc_wire_chunk_view(env, &v, &err) != FC_OK) {
        fail(s, FC_ERR_PROTOCOL, env->seq, err.msg);
        return;
    }
    h_chunk(s, &v);
}

static const dispatch_row dispatch[] = {
    {FEDCOORD__V1__ENVELOPE__BODY_HELLO, ST(SESS_HELLO_WAIT), h_hello, NULL},
    {FEDCOORD__V1__ENVELOPE__BODY_HEARTBEAT, AUTHED, h_heartbeat, NULL},
    {FEDCOORD__V1__ENVELOPE__BODY_MODEL_REQUEST, ST(SESS_READY), h_model_request, NULL},
    {FEDCOORD__V1__ENVELOPE__BODY_UPDATE_BEGIN, ST(SESS_READY), NULL, h_update_begin},
    {FEDCOORD__V1__ENVELOPE__BODY_CHUNK, ST(SESS_UPLOADING) | ST(SESS_READY), h_chunk_env, NULL},
    {FEDCOORD__V1__ENVELOPE__BODY_UPDATE_END, ST(SESS_UPLOADING) | ST(SESS_READY), h_update_end,
     NULL},
    {FEDCOORD__V1__ENVELOPE__BODY_EVAL_RESULT, AUTHED, h_eval_result, NULL},
    {FEDCOORD__V1__ENVELOPE__BODY_ACK, AUTHED, h_ack, NULL},
    {FEDCOORD__V1__ENVELOPE__BODY_ERROR, ST(SESS_HELLO_WAIT) | AUTHED, h_error, NULL},
    {FEDCOORD__V1__ENVELOPE__BODY_BYE, ST(SESS_HELLO_WAIT) | AUTHED, h_bye, NULL},
};

static int check_seq(sess *s, uint64_t seq) {
    if (seq == s->in_seq + 1) {
        s->in_seq = seq;
        return 1;
    }
    char msg[128];
    snprintf(msg, sizeof msg, "frame seq %llu, expected %llu", (unsigned long long)seq,
             (unsigned long long)(s->in_seq + 1));
    fail(s, FC_ERR_PROTOCOL, seq, msg);
    return 0;
}

static void handle_frame(sess *s, const uint8_t *data, size_t len) {
    fc_chunk_view v;
    fc_error err = {0};
    if (s->state == SESS_UPLOADING || s->state == SESS_READY) {
        if (fc_frame_peek_chunk(data, len, &v)) { /* zero-copy path: data stays in place */
            if (check_seq(s, v.seq))
                h_chunk(s, &v);
            return;
        }
    }
    fc_envelope *env = NULL;
    fc_status st = fc_envelope_unpack(data, len, &env, &err);
    if (st != FC_OK) {
        fail(s, st, 0, err.msg);
        return;
    }
    st = fc_wire_validate(env, &err);
    if (st != FC_OK && env->body_case == FEDCOORD__V1__ENVELOPE__BODY_EVAL_RESULT &&
        (ST(s->state) & AUTHED)) {
        /* A well-framed EvalResult with a bad value (NaN metric, num_examples 0, ...) leaves
         * the stream intact: refuse the report, keep the session. */
        if (check_seq(s, env->seq)) {
            FC_LOG(FC_LOG_INFO, "evaluation result refused", FC_LS("session", s->id),
                   FC_LU("client", s->client_id), FC_LS("code", fc_wire_error_for_status(st)->name),
                   FC_LS("reason", err.msg));
            send_error(s, st, 0, env->seq, err.msg);
        }
        fc_envelope_free(env);
        return;
    }
    if (st != FC_OK) {
        fc_envelope_free(env);
        fail(s, st, 0, err.msg);
        return;
    }
    if (!check_seq(s, env->seq)) {
        fc_envelope_free(env);
        return;
    }
    const dispatch_row *row = NULL;
    for (size_t i = 0; i < sizeof dispatch / sizeof dispatch[0]; i++)
        if (dispatch[i].body == env->body_case)
            row = &dispatch[i];
    char msg[160];
    if (!row) {
        snprintf(msg, sizeof msg, "%s is a server-to-client message",
                 fc_wire_body_name(env->body_case));
        fail(s, FC_ERR_PROTOCOL, env->seq, msg);
    } else if (!(row->states & ST(s->state)) ||
               ((row->body == FEDCOORD__V1__ENVELOPE__BODY_CHUNK ||
                 row->body == FEDCOORD__V1__ENVELOPE__BODY_UPDATE_END) &&
                s->state == SESS_READY && !s->discard_chunks)) {
        snprintf(msg, sizeof msg, "%s is not allowed in state %s%s",
                 fc_wire_body_name(env->body_case), sess_state_name(s->state),
                 s->state == SESS_HELLO_WAIT ? ": the first frame must be Hello" : "");
        fail(s, FC_ERR_PROTOCOL, env->seq, msg);
    } else if (row->owning) {
        row->owning(s, &env);
    } else {
        row->handler(s, env);
    }
    fc_envelope_free(env);
}

/* Feeds the frame decoder and handles the frame it completes, if any. Returns bytes used. */
static size_t decode_take(sess *s, const uint8_t *p, size_t len) {
    size_t used = 0;
    fc_frame f;
    fc_error err = {0};
    fc_status st = fc_frame_decoder_feed(&s->dec, p, len, &used, &f, &err);
    if (st == FC_ERR_AGAIN)
        return len;
    if (st != FC_OK) {
        fail(s, st, 0, err.msg);
        return len;
    }
    handle_frame(s, f.data, f.len);
    return used;
}

/* Bytes of the current frame to gather before deciding: the prefix, then the whole head of a
 * chunk frame (or the whole frame, if smaller). A bad length is left to the decoder. */
static size_t head_need(const sess *s) {
    if (s->head_have < FC_FRAME_PREFIX_BYTES)
        return FC_FRAME_PREFIX_BYTES;
    uint32_t n = fc_load_u32be(s->head);
    if (n == 0 || n > s->dec.max_frame)
        return FC_FRAME_PREFIX_BYTES;
    return (size_t)n + FC_FRAME_PREFIX_BYTES < sizeof s->head ? (size_t)n + FC_FRAME_PREFIX_BYTES
                                                              : sizeof s->head;
}

static size_t head_take(sess *s, const uint8_t *p, size_t len) {
    size_t need = head_need(s), n = need - s->head_have;
    if (n > len)
        n = len;
    memcpy(s->head + s->head_have, p, n);
    s->head_have += n;
    if (s->head_have < head_need(s) || direct_begin(s))
        return n;
    /* not a direct chunk: the gathered bytes (at most this one frame) go to the decoder */
    uint8_t h[sizeof s->head];
    size_t hn = s->head_have, off = 0;
    memcpy(h, s->head, hn);
    s->head_have = 0;
    while (off < hn && s->state != SESS_CLOSING)
        off += decode_take(s, h + off, hn - off);
    return n;
}

static size_t direct_take(sess *s, const uint8_t *p, size_t len) {
    size_t n = len < s->direct.left ? len : s->direct.left;
    if (s->direct.dst) {
        memcpy(s->direct.dst, p, n);
        s->direct.dst += n;
    }
    s->direct.left -= n;
    if (s->direct.left == 0)
        direct_end(s);
    return n;
}

static void process_bytes(sess *s, const uint8_t *p, size_t len) {
    while (len > 0 && s->state != SESS_CLOSING) {
        if (s->waiting_budget) { /* hold the rest until the upload can start */
            if (fc_buf_append(&s->pending, p, len) != FC_OK)
                fail(s, FC_ERR_NOMEM, 0, "out of memory holding received bytes");
            return;
        }
        size_t used;
        if (s->direct.active)
            used = direct_take(s, p, len);
        else if (s->head_have > 0 || (taking_chunks(s) && fc_frame_decoder_pending(&s->dec) == 0))
            used = head_take(s, p, len);
        else
            used = decode_take(s, p, len);
        p += used, len -= used;
    }
    if (s->state != SESS_CLOSING && s->c) {
        size_t pending = fc_frame_decoder_pending(&s->dec) + s->head_have +
                         (s->direct.active ? s->direct.len : 0);
        net_set_partial(s->c, pending > 0);
        /* Between frames and outside the chunks of an upload, give the frame buffer back: it has
         * the capacity of the largest frame seen (a 1 MiB chunk), and a session that uploaded
         * once would otherwise keep it for its lifetime, so memory grew with the client count. */
        if (pending == 0 && (s->state != SESS_UPLOADING || s->validating))
            fc_frame_decoder_trim(&s->dec);
    }
}

/* ---- net callbacks ---- */

static void cb_open(net_conn *c) {
    sess_server *sv = net_listener_user(net_conn_listener(c));
    sess *s = fc_calloc(1, sizeof *s);
    if (!s) {
        net_close(c, FC_ERR_NOMEM, "out of memory for a session");
        return;
    }
    s->sv = sv;
    s->c = c;
    s->refs = 1;
    s->state = SESS_HELLO_WAIT;
    s->last_sent_ms = uv_now(sv->cfg.loop);
    snprintf(s->id, sizeof s->id, "s%llu", (unsigned long long)net_conn_id(c));
    fc_frame_decoder_init(&s->dec, sv->cfg.max_frame_bytes);
    s->next = sv->head;
    if (sv->head)
        sv->head->prev = s;
    sv->head = s;
    sv->count++;
    net_conn_set_user(c, s);
}

static void cb_data(net_conn *c, const uint8_t *data, size_t len) {
    sess *s = net_conn_user(c);
    if (!s || s->state == SESS_CLOSING)
        return;
    process_bytes(s, data, len);
}

static void cb_limit(net_conn *c, fc_status st, const char *detail) {
    sess *s = net_conn_user(c);
    if (!s || s->state == SESS_CLOSING)
        return;
    send_error(s, st, 1, 0, detail);
    begin_close(s, st, detail, 1); /* idle or too slow: a network problem, resumable */
}

static void cb_backpressure(net_conn *c, int blocked) {
    sess *s = net_conn_user(c);
    if (!s)
        return;
    s->blocked = blocked;
    if (!blocked && s->state == SESS_DOWNLOADING)
        pump_download(s);
}

static void cb_close(net_conn *c, fc_status reason, const char *detail) {
    sess *s = net_conn_user(c);
    if (!s)
        return;
    (void)reason;
    if (s->state != SESS_CLOSING) { /* closed by net (peer gone, limit): same cleanup */
        set_state(s, SESS_CLOSING);
        park_upload(s);
        announce(s, 0);
        s->gen++;
        abort_upload(s);
    }
    FC_LOG(FC_LOG_DEBUG, "session closed", FC_LS("session", s->id),
           FC_LS("detail", detail ? detail : ""));
    sess_server *sv = s->sv;
    if (s->prev)
        s->prev->next = s->next;
    else
        sv->head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    sv->count--;
    s->c = NULL;
    net_conn_set_user(c, NULL);
    sess_unref(s);
}

void sess_net_callbacks(net_callbacks *cb) {
    memset(cb, 0, sizeof *cb);
    cb->on_open = cb_open;
    cb->on_data = cb_data;
    cb->on_limit = cb_limit;
    cb->on_backpressure = cb_backpressure;
    cb->on_close = cb_close;
}

/* ---- server heartbeats ---- */

static uint64_t unix_ms(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void send_heartbeat(sess *s) {
    fc_wire_msg m;
    fc_error err = {0};
    if (fc_wire_heartbeat(&m, ++s->out_seq, unix_ms(), &err) != FC_OK) {
        fc_wire_msg_free(&m);
        s->out_seq--;
        return;
    }
    if (send_msg(s, &m) == FC_OK)
        s->sv->heartbeats++;
}

/* A session is due when it has sent nothing for (interval - tick): the Heartbeat then leaves
 * between 3/4 of the interval and the interval after the last frame, never later. Sessions
 * that are not authenticated yet or closing get none, nor one whose output queue is above the
 * high-water mark (the peer has bytes coming already). */
static void heartbeat_tick(uv_timer_t *t) {
    sess_server *sv = t->data;
    uint64_t now = uv_now(sv->cfg.loop);
    uint64_t quiet = sv->cfg.heartbeat_interval_ms - sv->hb_tick_ms;
    sess *next;
    for (sess *s = sv->head; s; s = next) {
        next = s->next;
        if (s->state == SESS_HELLO_WAIT || s->state == SESS_CLOSING || !s->c || s->blocked)
            continue;
        if (now - s->last_sent_ms >= quiet)
            send_heartbeat(s);
    }
}

static void heartbeat_closed(uv_handle_t *h) { fc_free(h); }

/* ---- server ---- */

fc_status sess_server_new(const sess_config *cfg, sess_server **out, fc_error *err) {
    *out = NULL;
    if (!cfg->loop || !cfg->budget || !cfg->auth)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "sessions need a loop, a staging budget and an authenticator");
    if (cfg->round && !cfg->sink)
        return fc_error_set(err, FC_ERR_CONFIG, "sessions that accept updates need a sink");
    sess_server *sv = fc_calloc(1, sizeof *sv);
    if (!sv)
        return fc_error_set(err, FC_ERR_NOMEM, "session server");
    sv->cfg = *cfg;
    if (!sv->cfg.max_frame_bytes)
        sv->cfg.max_frame_bytes = (uint32_t)FC_FRAME_MAX_DEFAULT;
    if (!sv->cfg.max_chunk_bytes || sv->cfg.max_chunk_bytes > FC_CHUNK_MAX_DATA)
        sv->cfg.max_chunk_bytes = (uint32_t)FC_CHUNK_MAX_DATA;
    if (sv->cfg.max_frame_bytes < FC_WIRE_MIN_FRAME ||
        sv->cfg.max_chunk_bytes + 64 > sv->cfg.max_frame_bytes) {
        uint32_t chunk = sv->cfg.max_chunk_bytes; /* read before sv is freed */
        fc_free(sv);
        return fc_error_set(err, FC_ERR_CONFIG,
                            "max_frame_bytes %u must be >= %u and 64 above max_chunk_bytes %u",
                            cfg->max_frame_bytes, FC_WIRE_MIN_FRAME, chunk);
    }
    if (!sv->cfg.heartbeat_interval_ms)
        sv->cfg.heartbeat_interval_ms = 30000;
    if (!sv->cfg.software)
        sv->cfg.software = "fedcoordd";
    sv->hb_tick_ms = sv->cfg.heartbeat_interval_ms / 4 ? sv->cfg.heartbeat_interval_ms / 4 : 1;
    sv->hb = fc_malloc(sizeof *sv->hb);
    if (!sv->hb) {
        fc_free(sv);
        return fc_error_set(err, FC_ERR_NOMEM, "session server heartbeat timer");
    }
    int rc = uv_timer_init(sv->cfg.loop, sv->hb);
    if (rc != 0) {
        fc_free(sv->hb);
        fc_free(sv);
        return fc_error_set(err, FC_ERR_SYSTEM, "session heartbeat timer: %s", uv_strerror(rc));
    }
    sv->hb->data = sv;
    rc = uv_timer_start(sv->hb, heartbeat_tick, sv->hb_tick_ms, sv->hb_tick_ms);
    if (rc != 0) {
        uv_close((uv_handle_t *)sv->hb, heartbeat_closed);
        fc_free(sv);
        return fc_error_set(err, FC_ERR_SYSTEM, "session heartbeat timer: %s", uv_strerror(rc));
    }
    uv_unref((uv_handle_t *)sv->hb); /* heartbeats alone must not keep the loop running */
    if (!sv->cfg.resume_keep_ms)
        sv->cfg.resume_keep_ms = 60000;
    sv->resume_cap =
        sv->cfg.resume_max_bytes ? sv->cfg.resume_max_bytes : sess_budget_capacity(cfg->budget);
    sv->park_tick_ms = sv->cfg.resume_keep_ms < 1000 ? sv->cfg.resume_keep_ms : 1000;
    sv->park_timer = fc_malloc(sizeof *sv->park_timer);
    if (!sv->park_timer || (rc = uv_timer_init(sv->cfg.loop, sv->park_timer)) != 0) {
        fc_status st = sv->park_timer ? FC_ERR_SYSTEM : FC_ERR_NOMEM;
        fc_free(sv->park_timer);
        uv_timer_stop(sv->hb);
        uv_close((uv_handle_t *)sv->hb, heartbeat_closed);
        fc_free(sv);
        return fc_error_set(err, st, "session resume timer");
    }
    sv->park_timer->data = sv;
    uv_unref((uv_handle_t *)sv->park_timer);
    *out = sv;
    return FC_OK;
}

void sess_server_free(sess_server *sv) {
    if (!sv)
        return;
    assert(sv->count == 0);
    sv->shutting_down = 1;
    while (evict_oldest(sv, "the session server is shutting down"))
        ;
    while (sv->notes) {
        sess_gone_note *n = sv->notes;
        sv->notes = n->next;
        fc_free(n);
    }
    uv_timer_stop(sv->hb);
    uv_close((uv_handle_t *)sv->hb, heartbeat_closed);
    uv_timer_stop(sv->park_timer);
    uv_close((uv_handle_t *)sv->park_timer, heartbeat_closed);
    fc_free(sv);
}

size_t sess_server_count(const sess_server *sv) { return sv->count; }
uint64_t sess_server_accepted(const sess_server *sv) { return sv->accepted; }
uint64_t sess_server_rejected(const sess_server *sv) { return sv->rejected; }
uint64_t sess_server_heartbeats(const sess_server *sv) { return sv->heartbeats; }
uint64_t sess_server_resumed_bytes(const sess_server *sv) { return sv->rs.resumed_bytes; }

void sess_server_resume_stats(const sess_server *sv, sess_resume_stats *out) {
    *out = sv->rs;
    out->parked_now = sv->n_parked;
    out->parked_bytes_now = sv->parked_bytes;
}

void sess_server_round_changed(sess_server *sv) { sweep_parked(sv); }

int sess_server_parked(const sess_server *sv, uint64_t client_id, uint64_t *round,
                       uint64_t *staged) {
    for (const sess_parked *p = sv->parked; p; p = p->next)
        if (p->client_id == client_id) {
            if (round)
                *round = p->round;
            if (staged)
                *staged = fc_stage_received(p->stage);
            return 1;
        }
    return 0;
}

sess *sess_find(sess_server *sv, uint64_t client_id) {
    for (sess *s = sv->head; s; s = s->next)
        if (s->client_id == client_id && s->state != SESS_CLOSING && s->state != SESS_HELLO_WAIT)
            return s;
    return NULL;
}

sess_state sess_get_state(const sess *s) { return s->state; }
uint64_t sess_client_id(const sess *s) { return s->client_id; }

fc_status sess_send_task(sess *s, const fc_wire_task_args *task, fc_error *err) {
    if (s->state == SESS_CLOSING || s->state == SESS_HELLO_WAIT || !s->c)
        return fc_error_set(err, FC_ERR_STATE, "session %s is %s: no task can be sent", s->id,
                            sess_state_name(s->state));
    fc_wire_msg m;
    fc_status st = fc_wire_task(&m, s->out_seq + 1, task, err);
    if (st != FC_OK) {
        fc_wire_msg_free(&m);
        return st;
    }
    s->out_seq++;
    st = send_msg(s, &m);
    return st == FC_OK ? FC_OK
                       : fc_error_set(err, st, "session %s: sending the task failed", s->id);
}
