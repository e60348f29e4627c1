/* store.h: the coordinator's durable state in one SQLite database (WAL mode).
 *
 * The store owns the schema, its migrations, model versions stored as chunks, rounds with their
 * participants, the rule and optimizer state of each version, client records, the append-only
 * event log, retention, the audit chain and start-up recovery. It knows nothing of sockets or
 * the event loop: the daemon hands work to the writer thread (store_writer_*) and bridges the
 * completion callback to its loop.
 *
 * Threading (see docs/storage.md):
 *  - A `store` handle is one SQLite connection. Use it from one thread at a time; give each
 *    reader thread its own handle (store_open with .readonly = 1).
 *  - Writes in a running daemon go through one store_writer, whose thread owns the write
 *    connection. Functions marked "write" below may also be called directly on a handle that no
 *    writer owns (tools, tests, start-up before the writer starts).
 *  - store_writer_submit and store_writer_call are safe from any thread.
 *
 * Times are integers chosen by the caller (the daemon uses Unix milliseconds); the store never
 * reads a clock, so tests are deterministic.
 */
#ifndef FC_STORE_H
#define FC_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/status.h"

/* The schema version this build writes (PRAGMA user_version). */
#define STORE_SCHEMA_VERSION 2
/* PRAGMA application_id of a fedcoord database: "FCDB". */
#define STORE_APPLICATION_ID 0x46434442
/* Largest model chunk, and the default chunk size. */
#define STORE_MAX_CHUNK ((size_t)16 * 1024 * 1024)
#define STORE_NAME_MAX 256
#define STORE_SHA256_LEN 32

typedef struct store store;

#define STORE_OPTIONS_V1 1
typedef struct store_options {
    int version;           /* STORE_OPTIONS_V1 */
    int readonly;          /* open a read connection: no migration, no writes */
    int must_exist;        /* fail with FC_ERR_NOT_FOUND instead of creating a new database */
    size_t chunk_size;     /* bytes per model chunk; 0 = STORE_MAX_CHUNK. Tests use small ones. */
    int busy_timeout_ms;   /* 0 = 5000 */
} store_options;

/* Opens (and, unless readonly or must_exist, creates) the database at path. A read-write open
 * migrates an older schema forward, each step in its own transaction. Refuses, leaving the file
 * untouched: a file that is not a fedcoord database (FC_ERR_FORMAT), a schema newer than
 * STORE_SCHEMA_VERSION (FC_ERR_VERSION), a readonly open of an older schema (FC_ERR_VERSION).
 * opt may be NULL for defaults. On success *out is owned by the caller (store_close). Blocks on
 * file I/O. Errors: FC_ERR_FORMAT, FC_ERR_VERSION, FC_ERR_NOT_FOUND, FC_ERR_INVALID, FC_ERR_DB,
 * FC_ERR_IO, FC_ERR_NOMEM. */
fc_status store_open(const char *path, const store_options *opt, store **out, fc_error *err);
/* Finalizes the prepared statements and closes the connection. NULL is allowed. */
void store_close(store *s);
/* The schema version of the open database (after migration). */
int store_user_version(store *s);

/* ---- clients ---- */
typedef struct store_client {
    int64_t id;
    char name[STORE_NAME_MAX + 1];
    uint8_t token_sha256[STORE_SHA256_LEN];
    int64_t created_at;
    int64_t revoked_at; /* 0 = active */
    int64_t rounds_participated;
    int64_t updates_accepted, updates_rejected, updates_timed_out, updates_dropped;
    int64_t last_round; /* 0 = never */
} store_client;

/* write. Adds a client. Only the token's SHA-256 is stored. FC_ERR_EXISTS if the name or the
 * token hash is taken, FC_ERR_INVALID for an empty or over-long name. */
fc_status store_client_add(store *s, const char *name, const uint8_t token_sha256[32],
                           int64_t now, int64_t *id_out, fc_error *err);
/* write. Marks a client revoked. FC_ERR_NOT_FOUND if no such client, FC_ERR_STATE if already
 * revoked. */
fc_status store_client_revoke(store *s, const char *name, int64_t now, fc_error *err);
/* Looks a client up by token hash (revoked clients are found too; check revoked_at).
 * FC_ERR_NOT_FOUND if none. */
fc_status store_client_by_token(store *s, const uint8_t token_sha256[32], store_client *out,
                                fc_error *err);
fc_status store_client_by_name(store *s, const char *name, store_client *out, fc_error *err);
/* Calls cb for each client in id order; a non-FC_OK return from cb stops and is returned. */
typedef fc_status (*store_client_cb)(void *ud, const store_client *c);
fc_status store_client_list(store *s, store_client_cb cb, void *ud, fc_error *err);

/* ---- rounds ---- */
typedef enum store_round_state {
    STORE_ROUND_WAITING = 1,
    STORE_ROUND_TRAINING = 2,
    STORE_ROUND_AGGREGATING = 3,
    STORE_ROUND_COMMITTED = 4,
    STORE_ROUND_FAILED = 5,
} store_round_state;
const char *store_round_state_name(store_round_state st);

typedef enum store_outcome {
    STORE_OUTCOME_ACCEPTED = 1,
    STORE_OUTCOME_REJECTED = 2,
    STORE_OUTCOME_TIMED_OUT = 3,
    STORE_OUTCOME_DROPPED = 4,
} store_outcome;
const char *store_outcome_name(store_outcome o);

typedef struct store_participant {
    const char *client;       /* client name (mTLS subjects need not be in the clients table) */
    store_outcome outcome;
    const char *reason;       /* NULL or why it was rejected/dropped */
    uint64_t num_examples;
    uint64_t bytes;
    const uint8_t *update_sha256; /* NULL or 32 bytes */
    const char *metrics_json; /* NULL or JSON text */
} store_participant;

/* write. Records a round that has started (a non-final state) on top of base_version
 * (0 = none). FC_ERR_EXISTS if the id is taken, FC_ERR_INVALID for a final state. */
fc_status store_round_begin(store *s, int64_t round_id, store_round_state state,
                            int64_t base_version, const char *config_json, int64_t now,
                            fc_error *err);
/* write. Moves a running round to another non-final state. FC_ERR_NOT_FOUND, FC_ERR_STATE if
 * the round is already final. */
fc_status store_round_set_state(store *s, int64_t round_id, store_round_state state,
                                fc_error *err);
/* write. Ends a round as FAILED with a reason, recording its participants (may be 0), in one
 * transaction. Creates the record if the round was never begun. FC_ERR_STATE if it is final. */
fc_status store_round_fail(store *s, int64_t round_id, const char *reason,
                           const store_participant *participants, size_t num_participants,
                           int64_t now, fc_error *err);

/* write. Ends an evaluation round as COMMITTED without a new model: the version it evaluated
 * (recorded as its base_version), its config (which must carry "kind":"evaluate" so that
 * store_verify does not expect a model for it), the example-weighted metrics and the
 * participants, in one transaction, with a "round.evaluated" event. Creates the record if the
 * round was never begun. FC_ERR_STATE if it is final. */
fc_status store_round_commit_eval(store *s, int64_t round_id, int64_t evaluated_version,
                                  const char *config_json, const char *metrics_json,
                                  const store_participant *participants, size_t num_participants,
                                  int64_t started_at, int64_t ended_at, fc_error *err);

typedef struct store_round {
    int64_t id;
    store_round_state state;
    int64_t base_version; /* 0 = none */
    int64_t model_version; /* version this round committed, 0 = none */
    int64_t started_at, ended_at; /* ended_at 0 = running */
    char *config_json, *report_json, *metrics_json, *failure_reason; /* owned; NULL if unset */
} store_round;
/* Reads one round; *out owns its strings (store_round_clear). FC_ERR_NOT_FOUND. */
fc_status store_round_get(store *s, int64_t round_id, store_round *out, fc_error *err);
void store_round_clear(store_round *r);
/* Calls cb for rounds with id > after_id in id order, at most limit (0 = all). The strings in
 * *r are borrowed and valid only during the call. A non-FC_OK return from cb stops the walk. */
typedef fc_status (*store_round_cb)(void *ud, const store_round *r);
fc_status store_round_list(store *s, int64_t after_id, size_t limit, store_round_cb cb, void *ud,
                           fc_error *err);
/* Calls cb for each participant of a round, in client-name order. */
typedef fc_status (*store_participant_cb)(void *ud, const store_participant *p);
fc_status store_participants_list(store *s, int64_t round_id, store_participant_cb cb, void *ud,
                                  fc_error *err);

/* ---- model versions ---- */

/* A streaming source of model bytes: copies up to cap bytes into buf and sets *got. *got = 0
 * means the end. A non-FC_OK return aborts the commit. */
typedef fc_status (*store_source_fn)(void *ud, void *buf, size_t cap, size_t *got, fc_error *err);

typedef struct store_commit {
    int64_t round_id;        /* 0 = a version without a round (the initial model) */
    int64_t version;         /* new version; must be greater than every stored version */
    int64_t parent_version;  /* 0 = none; else must exist */
    const char *tensor_specs_json;
    uint64_t model_size;     /* exact number of bytes the source yields */
    const uint8_t *expected_sha256; /* NULL or 32 bytes the data must hash to */
    store_source_fn source;
    void *source_ud;
    /* NULL: the store hashes the bytes as it writes them. Else the caller hashes the same bytes
     * elsewhere (on another thread, while the store writes): once every chunk is written, the
     * store calls sha256(sha256_ud, out, err), which must give the SHA-256 of exactly what the
     * source yielded (or an error, which aborts the commit). */
    fc_status (*sha256)(void *ud, uint8_t out[STORE_SHA256_LEN], fc_error *err);
    void *sha256_ud;
    /* round record (ignored when round_id == 0) */
    int64_t started_at, ended_at;
    const char *config_json, *report_json, *metrics_json;
    const store_participant *participants;
    size_t num_participants;
    /* state of the rule and the server optimizer after this round (blobs may be empty) */
    const char *rule_name, *optimizer_name;
    const void *rule_state;
    size_t rule_state_len;
    const void *optimizer_state;
    size_t optimizer_state_len;
} store_commit;

typedef struct store_commit_result {
    uint8_t sha256[STORE_SHA256_LEN];
    uint8_t chain_hash[STORE_SHA256_LEN];
    uint64_t num_chunks;
} store_commit_result;

/* write. Commits a round in ONE transaction: the model version and its chunks (pulled from
 * c->source, one chunk buffer at a time), the round record (inserted, or updated if begun),
 * the participants, the participation counters of known clients, the rule and optimizer state,
 * and a "round.committed" event. On any error, including a full disk, nothing is written and
 * the previous committed state stays as it was. res may be NULL. Blocks on fsync (synchronous
 * = FULL). Errors: FC_ERR_INVALID (bad arguments, version not increasing, missing parent),
 * FC_ERR_STATE (round already final), FC_ERR_FORMAT (source length != model_size), FC_ERR_HASH
 * (expected_sha256 mismatch), FC_ERR_IO (disk full or I/O error, named in err), FC_ERR_DB. */
fc_status store_commit_round(store *s, const store_commit *c, store_commit_result *res,
                             fc_error *err);

typedef struct store_model_info {
    int64_t version, parent_version, round_id;
    uint8_t sha256[STORE_SHA256_LEN];
    uint8_t parent_sha256[STORE_SHA256_LEN]; /* zero if no parent */
    uint8_t chain_hash[STORE_SHA256_LEN];
    uint64_t size, chunk_size, num_chunks;
    int64_t created_at;
    int64_t pruned_at;       /* 0 = data present */
    char *tensor_specs_json; /* owned (store_model_info_clear) */
} store_model_info;
fc_status store_model_info_get(store *s, int64_t version, store_model_info *out, fc_error *err);
void store_model_info_clear(store_model_info *m);
/* Calls cb for versions > after_version in order, at most limit (0 = all), pruned ones
 * included (pruned_at != 0). tensor_specs_json is borrowed, valid only during the call. */
typedef fc_status (*store_model_cb)(void *ud, const store_model_info *m);
fc_status store_model_list(store *s, int64_t after_version, size_t limit, store_model_cb cb,
                           void *ud, fc_error *err);
/* Newest committed version, or 0 in *out if there is none. */
fc_status store_latest_version(store *s, int64_t *out, fc_error *err);

/* Receives model bytes in order: len bytes starting at model offset `offset`. */
typedef fc_status (*store_sink_fn)(void *ud, const void *data, size_t len, uint64_t offset,
                                   fc_error *err);
/* Streams version's bytes from `offset` to the end through sink, one chunk at a time, inside
 * one read transaction (so pruning cannot tear it). When offset == 0 the SHA-256 of the whole
 * is checked at the end: FC_ERR_CORRUPT on a mismatch or a missing/short chunk -- by then the
 * sink has seen the bytes, so a caller must discard them on error. Resumed reads (offset > 0)
 * check chunk lengths; the whole hash is the downloader's to check. Errors: FC_ERR_NOT_FOUND,
 * FC_ERR_STATE (pruned), FC_ERR_RANGE (offset > size), FC_ERR_CORRUPT, sink's error. */
fc_status store_model_read(store *s, int64_t version, uint64_t offset, store_sink_fn sink,
                           void *ud, fc_error *err);
/* As store_model_read, but only bytes [offset, offset + length) (length 0 or past the end = to
 * the end), in its own short read transaction. A server feeding a slow download calls it one
 * piece at a time so no read transaction stays open for the whole transfer (a long-lived
 * snapshot stops WAL checkpoints from resetting the log). The whole hash is checked only when
 * the range is the whole model. */
fc_status store_model_read_range(store *s, int64_t version, uint64_t offset, uint64_t length,
                                 store_sink_fn sink, void *ud, fc_error *err);

typedef struct store_state {
    int64_t version;
    char *rule_name, *optimizer_name; /* owned, NULL if unset */
    uint8_t *rule_state, *optimizer_state; /* owned, NULL if empty */
    size_t rule_state_len, optimizer_state_len;
} store_state;
/* Reads the rule and optimizer state stored with a version. FC_ERR_NOT_FOUND if the version has
 * none (it does not exist or was pruned). */
fc_status store_state_get(store *s, int64_t version, store_state *out, fc_error *err);
void store_state_clear(store_state *st);

/* ---- retention ---- */
/* write. Deletes the chunks and state of versions that are neither among the newest keep_last,
 * nor a multiple of keep_every (0 = none), nor the newest, nor pinned_version (the base of a
 * running round; 0 = none). Model metadata rows stay, so the chain stays verifiable. */
fc_status store_prune(store *s, uint32_t keep_last, uint32_t keep_every, int64_t pinned_version,
                      int64_t now, uint64_t *pruned, fc_error *err);

/* ---- events (append-only) ---- */
typedef struct store_event {
    int64_t id, ts, round_id; /* round_id 0 = none */
    const char *kind, *client, *detail; /* client/detail may be NULL */
} store_event;
/* write. */
fc_status store_event_append(store *s, int64_t ts, const char *kind, int64_t round_id,
                             const char *client, const char *detail, fc_error *err);
typedef fc_status (*store_event_cb)(void *ud, const store_event *e);
/* Events with id > after_id, oldest first, at most limit (0 = all). */
fc_status store_event_list(store *s, int64_t after_id, size_t limit, store_event_cb cb, void *ud,
                           fc_error *err);

/* ---- recovery at start ---- */
typedef struct store_recovery {
    uint64_t rounds_failed; /* rounds found running and marked FAILED */
    int64_t latest_version; /* 0 = no model yet */
    int64_t last_round;     /* highest round id recorded, 0 = none */
    store_state state;      /* state of latest_version (empty if none) */
} store_recovery;
/* write. Marks every round in a non-final state FAILED ("coordinator restarted"), then reports
 * the latest committed version and its state. The model itself is read with store_model_read.
 * Free with store_recovery_clear. */
fc_status store_recover(store *s, int64_t now, store_recovery *out, fc_error *err);
void store_recovery_clear(store_recovery *r);

/* ---- audit ---- */
typedef struct store_verify_report {
    uint64_t versions, versions_with_data, chunks, rounds;
    int64_t head_version;
    uint8_t head_chain_hash[STORE_SHA256_LEN];
} store_verify_report;
/* Checks PRAGMA integrity_check, then every model version in order: its parent link and
 * parent hash, its chain hash, and (if not pruned) its chunks and data SHA-256 and its state;
 * then that every committed round has its model. Returns FC_OK, or FC_ERR_CORRUPT with err
 * naming the first broken link precisely. rep may be NULL. Reads only. */
fc_status store_verify(store *s, store_verify_report *rep, fc_error *err);
/* Opens path read-only, runs store_verify and prints a human report to out ("fedctl verify
 * DB"). Returns what store_open or store_verify returned. */
fc_status store_verify_print(const char *path, FILE *out, fc_error *err);

/* The chain hash of a version (documented in docs/storage.md). Exposed for tests and tools. */
void store_chain_hash(const uint8_t parent_chain[32], int64_t version, int64_t parent_version,
                      int64_t round_id, const uint8_t sha256[32], uint64_t size,
                      const char *tensor_specs_json, uint8_t out[32]);

/* ---- the writer thread ---- */
typedef struct store_writer store_writer;
/* A unit of write work, run on the writer thread with the write connection. */
typedef fc_status (*store_job_fn)(store *s, void *ud, fc_error *err);
/* Called on the writer thread after a job, with its status and error. The daemon forwards it to
 * its loop with uv_async_send. */
typedef void (*store_done_fn)(void *ud, fc_status st, const fc_error *err);

#define STORE_WRITER_QUEUE_MAX 1024
/* WAL bytes after which the writer has the WAL checkpointed. Small, so that each checkpoint
 * (a copy into the database file and its fsync) is short and done before the next commit's WAL
 * fsync, rather than one 64 MB copy every dozen commits that the commits meanwhile queue behind
 * at the disk. */
#define STORE_WRITER_CHECKPOINT_BYTES (1 << 20)
/* Opens the write connection (in the calling thread, so open errors come back here) and starts
 * the thread. opt->readonly must be 0. The writer's connection does not checkpoint inside
 * COMMIT: once the WAL holds STORE_WRITER_CHECKPOINT_BYTES, a passive checkpoint runs on
 * a second thread with its own connection (or, if that cannot be opened, on the writer after
 * the job's done callback), so the copy into the database file is off the path between a
 * commit and its announcement, and a commit queued meanwhile does not wait for it. */
fc_status store_writer_start(const char *path, const store_options *opt, store_writer **out,
                             fc_error *err);
/* Checkpoints completed so far (for tests and diagnostics). */
unsigned long store_writer_checkpoints(store_writer *w);
/* Queues job; done(done_ud, ...) is called exactly once on the writer thread if this returns
 * FC_OK, and never if it returns an error: FC_ERR_CLOSED after stop, FC_ERR_BUSY if
 * STORE_WRITER_QUEUE_MAX jobs are pending, FC_ERR_NOMEM. Never blocks on I/O. Any thread. */
fc_status store_writer_submit(store_writer *w, store_job_fn job, void *job_ud,
                              store_done_fn done, void *done_ud, fc_error *err);
/* Queues job and waits for it (a future): returns the job's status, err gets its error. Any
 * thread except the writer's own. */
fc_status store_writer_call(store_writer *w, store_job_fn job, void *job_ud, fc_error *err);
/* Runs the jobs already queued, stops the thread, closes the connection and frees w. Submits
 * racing with stop get FC_ERR_CLOSED; the caller must make sure none happens after it returns
 * (w is freed). Call it from the thread that started the writer, never from a job. */
void store_writer_stop(store_writer *w);

#endif
