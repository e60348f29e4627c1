/* session.h: the per-connection protocol layer of the daemon (docs/daemon-sessions.md).
 *
 * A session sits on one net_conn: it cuts received plaintext into frames, checks sequence numbers
 * and the state in which each message is allowed (a dispatch table), runs the handshake
 * (version, authentication, mTLS identity, replacement of an older session of the same client),
 * streams model downloads as the output queue drains, stages update uploads into memory counted
 * against a shared budget (or a spill file), parks the staged bytes of an upload whose
 * connection broke so that the client's next session can resume it, validates completed updates
 * on the thread pool and hands accepted ones to a sink. It owns no socket (net does), no database
 * (the injected callbacks reach storage) and no round logic (the scheduler decides; the session
 * only asks what the current round expects). It never blocks the loop, never logs a token, and
 * never lets a partial or unvalidated update reach the sink. Everything runs on the loop thread
 * except the validation work function, which touches only the data handed to it.
 */
#ifndef FC_SERVER_SESSION_H
#define FC_SERVER_SESSION_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/status.h"
#include "core/tensor.h"
#include "proto/stream.h"
#include "proto/wire.h"
#include "server/net.h"

typedef enum sess_state {
    SESS_HELLO_WAIT = 0, /* connection open, waiting for Hello */
    SESS_READY,          /* authenticated, nothing in transfer */
    SESS_DOWNLOADING,    /* a model download is being sent */
    SESS_UPLOADING,      /* an update is being received or validated */
    SESS_CLOSING,        /* close started; every received frame is ignored */
} sess_state;

const char *sess_state_name(sess_state st);

/* ---- staging budget, shared by every session of a server ---- */

/* Staging memory in bytes (heap) up to memory_limit; above it, staging buffers go to spill files
 * under spill_dir (up to spill_limit bytes; spill_dir NULL = no spilling). When both refuse, the
 * session that asked pauses reading its connection and retries when a buffer is released. */
typedef struct sess_budget sess_budget;

fc_status sess_budget_new(uv_loop_t *loop, uint64_t memory_limit, const char *spill_dir,
                          uint64_t spill_limit, sess_budget **out, fc_error *err);
/* Bytes currently held in memory and in spill files. */
uint64_t sess_budget_memory_used(const sess_budget *b);
uint64_t sess_budget_spill_used(const sess_budget *b);
/* Released memory buffers of at least SESS_BUDGET_CACHE_MIN bytes are kept for the next upload
 * of the same size while they fit next to the buffers in use within memory_limit (a round's
 * uploads all have the model's size, so the next round reuses them instead of faulting in fresh
 * pages); they are freed SESS_BUDGET_CACHE_MS after the last release, or when a buffer of
 * another size needs the room. Bytes kept: */
uint64_t sess_budget_memory_cached(const sess_budget *b);
/* How long kept buffers outlive the last release, in ms (default SESS_BUDGET_CACHE_MS). */
void sess_budget_set_cache_ms(sess_budget *b, uint64_t ms);
#define SESS_BUDGET_CACHE_MIN ((uint64_t)64 << 10)
#define SESS_BUDGET_CACHE_MS 30000
/* Sessions waiting for budget. */
size_t sess_budget_waiting(const sess_budget *b);
/* Keeps room for client_id's next upload (0: no reservation). Until that client holds a staging
 * buffer, another client's request of n bytes is granted only if n more bytes would still be
 * free afterwards (in memory or spill). The round driver folds in ascending client id; naming
 * the next client in that order means the budget never fills with updates that have to wait
 * for it, so no update is held outside the budget. Wakes waiters if the name changed. */
void sess_budget_reserve_for(sess_budget *b, uint64_t client_id);
uint64_t sess_budget_reserved_for(const sess_budget *b);
/* Closes the budget's handle; call after every session is gone, then run the loop once. */
void sess_budget_free(sess_budget *b);

/* ---- injected services ---- */

/* Authenticates a Hello. name/token come from the Hello (token never logged), identity is the
 * verified client-certificate CN (NULL without one). Returns FC_OK with *client_id (> 0) and the
 * client's display name copied into name_out (size name_cap), or FC_ERR_AUTH with a detail that
 * names no secret. */
typedef fc_status (*sess_auth_fn)(void *ctx, const char *name, const uint8_t *token,
                                  size_t token_len, const char *identity, uint64_t *client_id,
                                  char *name_out, size_t name_cap, fc_error *err);

/* An in-memory authenticator: (name, SHA-256(token), id) rows; a certificate identity equal to a
 * row's name authenticates as that row when the row allows certificates. */
typedef struct sess_auth_tokens sess_auth_tokens;
fc_status sess_auth_tokens_new(sess_auth_tokens **out, fc_error *err);
/* Adds a client. The token is hashed at once; only the hash is kept. */
fc_status sess_auth_tokens_add(sess_auth_tokens *t, const char *name, const uint8_t *token,
                               size_t token_len, uint64_t client_id, int allow_cert, fc_error *err);
void sess_auth_tokens_free(sess_auth_tokens *t);
/* The sess_auth_fn for a sess_auth_tokens (ctx = the table). Compares hashes with CRYPTO_memcmp
 * and walks the whole table whatever matches, so timing does not reveal which row matched. */
fc_status sess_auth_tokens_check(void *ctx, const char *name, const uint8_t *token,
                                 size_t token_len, const char *identity, uint64_t *client_id,
                                 char *name_out, size_t name_cap, fc_error *err);

/* A model version as a download source presents it. specs/sha256 are borrowed from the source
 * and must stay valid until the download ends (the source keeps versions it announced). */
typedef struct sess_model_info {
    uint64_t version;
    const fc_tensor_spec *specs;
    size_t n_specs;
    uint64_t total_bytes;
    uint8_t sha256[FC_SHA256_BYTES];
} sess_model_info;

typedef struct sess_model_source {
    /* Describes version (0 = latest). FC_ERR_NOT_FOUND if not retained. */
    fc_status (*describe)(void *ctx, uint64_t version, sess_model_info *out, fc_error *err);
    /* Copies len bytes (<= 1 MiB) of version's data stream from offset into buf. */
    fc_status (*read)(void *ctx, uint64_t version, uint64_t offset, void *buf, size_t len,
                      fc_error *err);
    void *ctx;
} sess_model_source;

/* In-memory model source holding one version (tests, small deployments). The model's tensors are
 * copied into one contiguous stream; m may be freed afterwards. */
typedef struct sess_mem_model sess_mem_model;
fc_status sess_mem_model_new(uint64_t version, const fc_model *m, sess_mem_model **out,
                             fc_error *err);
void sess_mem_model_free(sess_mem_model *mm);
/* Fills src with callbacks reading mm. */
void sess_mem_model_source(sess_mem_model *mm, sess_model_source *src);

/* What the current round expects from a client. FC_ERR_STATE (with a detail) when the client may
 * not upload now (no round open, not selected). specs are borrowed until the callback is called
 * again or the round changes; the session copies what it keeps.
 * Initial model proposal: {round = 0, base_version = 0, specs = NULL, n_specs = 0} means "this
 * client may propose the initial model in any layout it announces". The session then checks the
 * announced layout on its own (1..FC_STAGE_DEFAULT_MAX_TENSORS tensors, unique non-empty names,
 * known dtypes, sizes without overflow, total = total_bytes <= max_update_bytes), requires
 * is_delta = false, skips the norm bound (a proposal is weights, not a delta), and hands the
 * validated proposal to the sink as an update with round 0 and is_delta 0; its stage carries the
 * layout (fc_stage_tensor_count / fc_stage_spec). */
typedef struct sess_round_info {
    uint64_t round;
    uint64_t base_version;
    const fc_tensor_spec *specs;
    size_t n_specs;
} sess_round_info;
typedef fc_status (*sess_round_fn)(void *ctx, uint64_t client_id, sess_round_info *out,
                                   fc_error *err);

/* A completed, validated update. The sink takes ownership of stage (fc_stage_free it, which
 * returns its bytes to the budget) and of metrics (fc_free each name and the array). */
typedef struct sess_update {
    uint64_t client_id;
    uint64_t round;
    uint64_t base_version;
    uint64_t num_examples;
    int is_delta;
    fc_stage *stage;
    size_t n_metrics;
    char **metric_names;
    double *metric_values;
} sess_update;
typedef void (*sess_sink_fn)(void *ctx, sess_update *u);
/* Frees what a sess_update owns (for sinks that drop one). */
void sess_update_release(sess_update *u);

/* A rejected update: client, round, the status sent and its message. */
typedef void (*sess_reject_fn)(void *ctx, uint64_t client_id, uint64_t round, fc_status st,
                               const char *reason);

/* An authenticated session of client_id (display name `name`) became ready (up = 1: Welcome
 * sent, the client may get tasks) or ended (up = 0: closed for any reason, including being
 * replaced by a newer session of the same client, which announces its end before the new one
 * announces itself). Called on the loop thread; the callback may call sess_send_task, but not
 * sess_close on the session being announced. */
typedef void (*sess_presence_fn)(void *ctx, uint64_t client_id, const char *name, int up);

/* An evaluation result (EvalResult) that passed the session's checks: num_examples in
 * 1..max_num_examples (2^53 when that is 0), at most SESS_EVAL_MAX_METRICS metrics, names
 * 1..SESS_EVAL_MAX_NAME bytes and unique, values finite. names/values (n entries) are borrowed
 * for the call. FC_OK makes the session answer Ack{ref_seq = the EvalResult's seq}; any other
 * status is sent to the client as a non-fatal Error with that code and err->msg. */
#define SESS_EVAL_MAX_METRICS 32u
#define SESS_EVAL_MAX_NAME 63u
typedef fc_status (*sess_eval_fn)(void *ctx, uint64_t client_id, uint64_t round,
                                  uint64_t model_version, uint64_t num_examples,
                                  const char *const *names, const double *values, size_t n,
                                  fc_error *err);

/* An Error frame the client sent (e.g. UNSUPPORTED "this client has no initial model to
 * propose" in answer to a proposal Task): the client, the status its code maps to, whether it
 * was fatal, the server frame it refers to (0 = none) and its message ("" if none). */
typedef void (*sess_peer_error_fn)(void *ctx, uint64_t client_id, fc_status st, int fatal,
                                   uint64_t ref_seq, const char *message);

/* A parked upload of client_id for round was freed without being resumed (expired, round over,
 * evicted, or the client started afresh); why says which. Not called from sess_server_free. A
 * scheduler that keeps a disconnected client with a parked upload in its round (see
 * sess_server_parked) can count the client as gone here when sess_find finds no session. */
typedef void (*sess_parked_gone_fn)(void *ctx, uint64_t client_id, uint64_t round, const char *why);

typedef struct sess_config {
    uv_loop_t *loop;
    sess_budget *budget; /* required */
    sess_auth_fn auth;   /* required */
    void *auth_ctx;
    sess_model_source models; /* describe/read may be NULL: ModelRequest is UNSUPPORTED */
    sess_round_fn round;      /* NULL: every UpdateBegin is WRONG_STATE */
    void *round_ctx;
    sess_sink_fn sink; /* required when round is set */
    void *sink_ctx;
    sess_reject_fn reject; /* may be NULL */
    void *reject_ctx;
    sess_presence_fn presence; /* may be NULL */
    void *presence_ctx;
    uint64_t max_num_examples;      /* 0 = no upper bound */
    double max_update_norm;         /* L2 bound over all values; 0 = none */
    uint64_t max_update_bytes;      /* largest UpdateBegin.total_bytes; 0 = 16 GiB */
    uint64_t ack_every_bytes;       /* Ack while uploading every this many bytes; 0 = 64 MiB */
    uint32_t heartbeat_interval_ms; /* announced in Welcome, and the server sends a Heartbeat
                                       to a session it has sent nothing for about this long;
                                       0 = 30000 */
    uint32_t max_frame_bytes;       /* 0 = FC_FRAME_MAX_DEFAULT */
    uint32_t max_chunk_bytes;       /* 0 = FC_CHUNK_MAX_DATA (and at most that) */
    const char *software;           /* Welcome.software; NULL = "fedcoordd" */
    sess_eval_fn eval;              /* NULL: EvalResult is answered UNSUPPORTED */
    void *eval_ctx;
    sess_peer_error_fn peer_error; /* may be NULL */
    void *peer_error_ctx;
    /* Upload resume (docs/daemon-sessions.md, "Resumable uploads"): when a connection breaks
     * mid-upload, the staged bytes stay parked under (client, round) for resume_keep_ms, so
     * that the client's next session continues where the bytes stopped. */
    uint32_t resume_keep_ms;   /* 0 = 60000 */
    uint64_t resume_max_bytes; /* parked bytes of all clients together (whole staging buffers);
                                  0 = the budget's memory plus spill limits. A live upload that
                                  finds the budget full evicts parked stages, oldest first. */
    int resume_disabled;       /* 1: a broken upload's bytes are freed at once */
    sess_parked_gone_fn parked_gone; /* may be NULL */
    void *parked_gone_ctx;
} sess_config;

/* A session server: the sessions of one listener. Register it as the listener's user pointer
 * and sess_net_callbacks() as its callbacks. The config is copied (strings and contexts are
 * borrowed). */
typedef struct sess_server sess_server;
typedef struct sess sess;

fc_status sess_server_new(const sess_config *cfg, sess_server **out, fc_error *err);
/* Frees the server; every session must be closed (its listener closed) first. The server's
 * heartbeat timer is closed here: run the loop once afterwards (as for sess_budget_free) so that
 * libuv finishes closing it before uv_loop_close. */
void sess_server_free(sess_server *sv);
/* The net callbacks that drive the sessions of a listener whose user pointer is sv. */
void sess_net_callbacks(net_callbacks *cb);

/* Live sessions, and the authenticated one of a client (NULL if none). */
size_t sess_server_count(const sess_server *sv);
sess *sess_find(sess_server *sv, uint64_t client_id);
/* Accepted updates and rejections so far (for status pages and tests). */
uint64_t sess_server_accepted(const sess_server *sv);
uint64_t sess_server_rejected(const sess_server *sv);
/* Heartbeat frames the server has sent so far. */
uint64_t sess_server_heartbeats(const sess_server *sv);

/* Resume counters (since sess_server_new) and what is parked now. */
typedef struct sess_resume_stats {
    uint64_t parked;                 /* uploads parked when their connection broke */
    uint64_t resumed;                /* uploads that continued from parked bytes */
    uint64_t resumed_bytes;          /* sum of the offsets they continued from: bytes not resent */
    uint64_t fresh;                  /* resume attempts (resume_offset > 0, or a parked stage)
                                        that started at 0 instead */
    uint64_t expired;                /* parked stages freed because nobody resumed in time */
    uint64_t dropped;                /* freed for another reason (round moved on, evicted, ...) */
    uint64_t downloads_resumed;      /* ModelRequests with offset > 0 that were served */
    uint64_t download_resumed_bytes; /* sum of their offsets */
    size_t parked_now;               /* stages parked at this moment */
    uint64_t parked_bytes_now;       /* their staging buffers, in bytes (counted by the budget) */
} sess_resume_stats;
void sess_server_resume_stats(const sess_server *sv, sess_resume_stats *out);
/* Bytes of uploads that were not resent because a parked stage was resumed. */
uint64_t sess_server_resumed_bytes(const sess_server *sv);
/* Checks every parked stage against the round callback now and frees those whose client and
 * round are no longer expected (the daemon may call this when a round closes; a timer does the
 * same once a second, or every resume_keep_ms when that is shorter). */
void sess_server_round_changed(sess_server *sv);
/* 1 if an upload of client_id is parked, with its round and staged bytes (either pointer may be
 * NULL). The session parks before it reports presence(up = 0), so a presence callback can use
 * this to keep the client's round open for a resume instead of counting it as dropped. */
int sess_server_parked(const sess_server *sv, uint64_t client_id, uint64_t *round,
                       uint64_t *staged);

sess_state sess_get_state(const sess *s);
uint64_t sess_client_id(const sess *s);

/* Pushes a Task to an authenticated session. FC_ERR_STATE if the session is not authenticated
 * or closing; builder errors as fc_wire_task. */
fc_status sess_send_task(sess *s, const fc_wire_task_args *task, fc_error *err);

/* Sends Bye(reason) and closes the session. */
void sess_close(sess *s, fc_status reason, const char *detail);

#endif
