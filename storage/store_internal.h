/* store_internal.h: what the storage/ source files share: the connection struct, the prepared
 * statement cache and the SQLite error mapping. Nothing outside storage/ includes it.
 */
#ifndef FC_STORE_INTERNAL_H
#define FC_STORE_INTERNAL_H

#include <sqlite3.h>

#include "storage/store.h"

/* Statements prepared once per connection and reused (reset after each use). */
typedef enum store_stmt_id {
    SQ_CLIENT_ADD,
    SQ_CLIENT_REVOKE,
    SQ_CLIENT_BY_TOKEN,
    SQ_CLIENT_BY_NAME,
    SQ_CLIENT_LIST,
    SQ_CLIENT_COUNT,
    SQ_ROUND_INSERT,
    SQ_ROUND_GET,
    SQ_ROUND_LIST,
    SQ_ROUND_STATE,
    SQ_ROUND_SET_STATE,
    SQ_ROUND_FINISH,
    SQ_ROUND_FAIL_RUNNING,
    SQ_ROUND_MAX,
    SQ_PART_INSERT,
    SQ_PART_LIST,
    SQ_MODEL_INSERT,
    SQ_MODEL_GET,
    SQ_MODEL_LIST,
    SQ_MODEL_LATEST,
    SQ_MODEL_MAX_VERSION,
    SQ_MODEL_FINALIZE,
    SQ_CHUNK_INSERT,
    SQ_CHUNK_SCAN,
    SQ_STATE_INSERT,
    SQ_STATE_GET,
    SQ_EVENT_APPEND,
    SQ_EVENT_LIST,
    SQ_COUNT
} store_stmt_id;

struct store {
    sqlite3 *db;
    char *path;
    int readonly;
    size_t chunk_size;
    int user_version;
    sqlite3_stmt *stmts[SQ_COUNT];
};

/* The prepared statement for id, reset and with bindings cleared. */
fc_status store_stmt(store *s, store_stmt_id id, sqlite3_stmt **out, fc_error *err);
#define STORE_STMT(q, s, id, err)                                                                 \
    do {                                                                                          \
        fc_status stmt_st_ = store_stmt((s), (id), &(q), (err));                                 \
        if (stmt_st_ != FC_OK) return stmt_st_;                                                   \
    } while (0)

/* Maps a SQLite failure to an fc_status with a detail naming what was being done and SQLite's
 * own message. SQLITE_FULL and SQLITE_IOERR* map to FC_ERR_IO, SQLITE_CONSTRAINT to
 * FC_ERR_EXISTS when unique, SQLITE_CORRUPT/NOTADB to FC_ERR_CORRUPT, the rest to FC_ERR_DB. */
fc_status store_sqlite_error(store *s, int rc, fc_error *err, const char *what);

/* Transactions on the connection. begin_write takes the write lock at once (BEGIN IMMEDIATE). */
fc_status store_begin_write(store *s, fc_error *err);
fc_status store_begin_read(store *s, fc_error *err);
fc_status store_commit_tx(store *s, fc_error *err);
void store_rollback_tx(store *s);

/* Reads application_id, user_version and the object count without writing; refuses a foreign
 * file (FC_ERR_FORMAT) or a newer schema (FC_ERR_VERSION). fresh = a file with nothing in it. */
fc_status store_schema_check(store *s, int *version, int *fresh, fc_error *err);

/* Runs the migrations from the file's current version to STORE_SCHEMA_VERSION (schema.c). */
fc_status store_schema_prepare(store *s, int must_migrate, fc_error *err);

/* Inserts participants of round_id and bumps the counters of known clients. Inside a write
 * transaction. */
fc_status store_participants_insert(store *s, int64_t round_id,
                                    const store_participant *p, size_t n, fc_error *err);

/* Inside a write transaction: creates the round record if missing, refuses a final one, and
 * finishes it in final_state (store.c). */
fc_status store_round_finish(store *s, int64_t round_id, store_round_state final_state,
                             int64_t started_at, int64_t ended_at, int64_t base_version,
                             const char *config_json, const char *report_json,
                             const char *metrics_json, const char *failure_reason,
                             fc_error *err);

/* A LIMIT value: 0 (no limit) becomes -1. */
int64_t store_list_limit(size_t limit);

/* Text column as a fresh copy (NULL for SQL NULL); FC_ERR_NOMEM on failure. */
fc_status store_column_strdup(sqlite3_stmt *st, int col, char **out);

void store_sha256_hex(const uint8_t h[32], char out[65]);

#endif
