/* store.c: the connection (open, pragmas, prepared statements, transactions, error mapping),
 * clients, rounds, participants and the event log.
 *
 * Model versions, retention and verification live in store_model.c, the schema in
 * store_schema.c, the writer thread in store_writer.c. Nothing here knows about sockets or an
 * event loop, and nothing here reads a clock: times come from the caller.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "storage/store_internal.h"

#define CLIENT_COLS                                                                              \
    "id, name, token_sha256, created_at, coalesce(revoked_at, 0), rounds_participated,"          \
    " updates_accepted, updates_rejected, updates_timed_out, updates_dropped,"                  \
    " coalesce(last_round, 0)"

#define ROUND_SELECT                                                                             \
    "SELECT r.id, r.state, coalesce(r.base_version, 0), r.started_at,"                          \
    " coalesce(r.ended_at, 0), r.config_json, r.report_json, r.metrics_json, r.failure_reason,"  \
    " coalesce((SELECT version FROM models m WHERE m.round_id = r.id), 0) FROM rounds r"

#define MODEL_SELECT                                                                             \
    "SELECT version, coalesce(parent_version, 0), coalesce(round_id, 0), sha256,"               \
    " parent_sha256, chain_hash, size, chunk_size, num_chunks, created_at,"                     \
    " coalesce(pruned_at, 0), tensor_specs_json FROM models"

static const char *const STMT_SQL[SQ_COUNT] = {
    [SQ_CLIENT_ADD] = "INSERT INTO clients(name, token_sha256, created_at) VALUES(?1, ?2, ?3)",
    [SQ_CLIENT_REVOKE] = "UPDATE clients SET revoked_at = ?2 WHERE name = ?1",
    [SQ_CLIENT_BY_TOKEN] = "SELECT " CLIENT_COLS " FROM clients WHERE token_sha256 = ?1",
    [SQ_CLIENT_BY_NAME] = "SELECT " CLIENT_COLS " FROM clients WHERE name = ?1",
    [SQ_CLIENT_LIST] = "SELECT " CLIENT_COLS " FROM clients ORDER BY id",
    [SQ_CLIENT_COUNT] =
        "UPDATE clients SET rounds_participated = rounds_participated + 1,"
        " updates_accepted = updates_accepted + (?2 = 'accepted'),"
        " updates_rejected = updates_rejected + (?2 = 'rejected'),"
        " updates_timed_out = updates_timed_out + (?2 = 'timed_out'),"
        " updates_dropped = updates_dropped + (?2 = 'dropped'),"
        " last_round = max(coalesce(last_round, 0), ?3) WHERE name = ?1",
    [SQ_ROUND_INSERT] = "INSERT INTO rounds(id, state, base_version, started_at, config_json)"
                        " VALUES(?1, ?2, ?3, ?4, ?5)",
    [SQ_ROUND_GET] = ROUND_SELECT " WHERE r.id = ?1",
    [SQ_ROUND_LIST] = ROUND_SELECT " WHERE r.id > ?1 ORDER BY r.id LIMIT ?2",
    [SQ_ROUND_STATE] = "SELECT state FROM rounds WHERE id = ?1",
    [SQ_ROUND_SET_STATE] = "UPDATE rounds SET state = ?2 WHERE id = ?1",
    [SQ_ROUND_FINISH] = "UPDATE rounds SET state = ?2, ended_at = ?3, report_json = ?4,"
                        " metrics_json = ?5, failure_reason = ?6,"
                        " config_json = coalesce(?7, config_json),"
                        " base_version = coalesce(?8, base_version) WHERE id = ?1",
    [SQ_ROUND_FAIL_RUNNING] = "UPDATE rounds SET state = 'FAILED', ended_at = ?1,"
                              " failure_reason = ?2"
                              " WHERE state NOT IN ('COMMITTED', 'FAILED') RETURNING id",
    [SQ_ROUND_MAX] = "SELECT coalesce(max(id), 0) FROM rounds",
    [SQ_PART_INSERT] = "INSERT INTO participants(round_id, client, outcome, reason,"
                       " num_examples, bytes, update_sha256, metrics_json)"
                       " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [SQ_PART_LIST] = "SELECT client, outcome, reason, num_examples, bytes, update_sha256,"
                     " metrics_json FROM participants WHERE round_id = ?1 ORDER BY client",
    [SQ_MODEL_INSERT] =
        "INSERT INTO models(version, parent_version, round_id, sha256, parent_sha256,"
        " chain_hash, tensor_specs_json, size, chunk_size, num_chunks, created_at)"
        " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    [SQ_MODEL_GET] = MODEL_SELECT " WHERE version = ?1",
    [SQ_MODEL_LIST] = MODEL_SELECT " WHERE version > ?1 ORDER BY version LIMIT ?2",
    [SQ_MODEL_LATEST] = "SELECT coalesce(max(version), 0) FROM models",
    [SQ_MODEL_MAX_VERSION] = "SELECT coalesce(max(version), 0), "
                             " (SELECT chain_hash FROM models WHERE version = ?1),"
                             " (SELECT sha256 FROM models WHERE version = ?1),"
                             " (SELECT pruned_at FROM models WHERE version = ?1) FROM models",
    [SQ_MODEL_FINALIZE] = "UPDATE models SET sha256 = ?2, chain_hash = ?3, num_chunks = ?4"
                          " WHERE version = ?1",
    [SQ_CHUNK_INSERT] = "INSERT INTO model_chunks(version, seq, data) VALUES(?1, ?2, ?3)",
    [SQ_CHUNK_SCAN] = "SELECT seq, data FROM model_chunks WHERE version = ?1 AND seq >= ?2"
                      " AND seq < ?3 ORDER BY seq",
    [SQ_STATE_INSERT] = "INSERT INTO state(version, rule_name, rule_blob, optimizer_name,"
                        " optimizer_blob) VALUES(?1, ?2, ?3, ?4, ?5)",
    [SQ_STATE_GET] = "SELECT rule_name, rule_blob, optimizer_name, optimizer_blob FROM state"
                     " WHERE version = ?1",
    [SQ_EVENT_APPEND] = "INSERT INTO events(ts, kind, round_id, client, detail)"
                        " VALUES(?1, ?2, ?3, ?4, ?5)",
    [SQ_EVENT_LIST] = "SELECT id, ts, kind, coalesce(round_id, 0), client, detail FROM events"
                      " WHERE id > ?1 ORDER BY id LIMIT ?2",
};

/* ---- errors ---- */

fc_status store_sqlite_error(store *s, int rc, fc_error *err, const char *what) {
    int primary = rc & 0xff;
    fc_status code = FC_ERR_DB;
    const char *cause = "database error";
    switch (primary) {
    case SQLITE_FULL: code = FC_ERR_IO; cause = "disk or database full"; break;
    case SQLITE_IOERR: code = FC_ERR_IO; cause = "I/O error"; break;
    case SQLITE_CANTOPEN: code = FC_ERR_IO; cause = "cannot open"; break;
    case SQLITE_READONLY: code = FC_ERR_IO; cause = "read-only"; break;
    case SQLITE_NOMEM: code = FC_ERR_NOMEM; cause = "out of memory"; break;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: code = FC_ERR_CORRUPT; cause = "database file corrupt"; break;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: code = FC_ERR_BUSY; cause = "database busy"; break;
    case SQLITE_CONSTRAINT:
        cause = "constraint violated";
        code = (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY)
                   ? FC_ERR_EXISTS
                   : FC_ERR_INVALID;
        break;
    default: break;
    }
    const char *detail = s && s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc);
    return fc_error_set(err, code, "%s: %s: %s: %s (sqlite code %d)",
                        s ? s->path : "store", what, cause, detail, rc);
}

/* ---- statements and transactions ---- */

fc_status store_stmt(store *s, store_stmt_id id, sqlite3_stmt **out, fc_error *err) {
    assert(id < SQ_COUNT && STMT_SQL[id]);
    *out = NULL;
    if (!s->stmts[id]) {
        int rc = sqlite3_prepare_v3(s->db, STMT_SQL[id], -1, SQLITE_PREPARE_PERSISTENT,
                                    &s->stmts[id], NULL);
        if (rc != SQLITE_OK) {
            s->stmts[id] = NULL;
            return store_sqlite_error(s, rc, err, "preparing a statement");
        }
    } else {
        sqlite3_reset(s->stmts[id]);
        sqlite3_clear_bindings(s->stmts[id]);
    }
    *out = s->stmts[id];
    return FC_OK;
}

static fc_status exec_sql(store *s, const char *sql, fc_error *err, const char *what) {
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? FC_OK : store_sqlite_error(s, rc, err, what);
}

fc_status store_begin_write(store *s, fc_error *err) {
    if (s->readonly)
        return fc_error_set(err, FC_ERR_STATE, "%s: write on a read-only connection", s->path);
    return exec_sql(s, "BEGIN IMMEDIATE", err, "beginning a write transaction");
}

fc_status store_begin_read(store *s, fc_error *err) {
    return exec_sql(s, "BEGIN", err, "beginning a read transaction");
}

fc_status store_commit_tx(store *s, fc_error *err) {
    fc_status st = exec_sql(s, "COMMIT", err, "committing");
    if (st != FC_OK) store_rollback_tx(s);
    return st;
}

void store_rollback_tx(store *s) {
    /* Reset every statement first: an active read statement would keep the transaction open. */
    for (int i = 0; i < SQ_COUNT; i++)
        if (s->stmts[i]) sqlite3_reset(s->stmts[i]);
    if (!sqlite3_get_autocommit(s->db)) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

fc_status store_column_strdup(sqlite3_stmt *st, int col, char **out) {
    *out = NULL;
    if (sqlite3_column_type(st, col) == SQLITE_NULL) return FC_OK;
    const unsigned char *t = sqlite3_column_text(st, col);
    if (!t) return FC_ERR_NOMEM;
    *out = fc_strndup((const char *)t, (size_t)sqlite3_column_bytes(st, col));
    return *out ? FC_OK : FC_ERR_NOMEM;
}

void store_sha256_hex(const uint8_t h[32], char out[65]) {
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[h[i] >> 4];
        out[2 * i + 1] = hex[h[i] & 15];
    }
    out[64] = '\0';
}

/* ---- open and close ---- */

/* Lets SQLite recover the file as any of its users would on open: roll back a hot journal,
 * or rebuild a WAL index. The connection never checkpoints on close, so committed WAL pages of
 * a foreign file stay where they are. */
static void recover_in_place(const char *path) {
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) ==
        SQLITE_OK) {
        sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
        sqlite3_exec(db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL);
    }
    sqlite3_close(db);
}

/* Before a read-write open of an existing file, checks it through a read-only connection: a
 * read-write connection that is the last to close a WAL database checkpoints it, which would
 * write into another application's file. */
static fc_status probe_readonly(store *s, int may_recover, fc_error *err) {
    struct stat sb;
    if (stat(s->path, &sb) != 0 || sb.st_size == 0) return FC_OK; /* nothing to protect */
    store probe = {.path = s->path, .readonly = 1};
    int rc = sqlite3_open_v2(s->path, &probe.db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                             NULL);
    fc_status st = FC_OK;
    int needs_recovery = 0;
    if (rc != SQLITE_OK) {
        st = store_sqlite_error(&probe, rc, err, "opening");
    } else {
        int version, fresh;
        sqlite3_extended_result_codes(probe.db, 1);
        st = store_schema_check(&probe, &version, &fresh, err);
        int ext = sqlite3_extended_errcode(probe.db);
        needs_recovery = st != FC_OK &&
                         (ext == SQLITE_READONLY_ROLLBACK || ext == SQLITE_READONLY_RECOVERY);
    }
    sqlite3_close(probe.db);
    /* A process killed mid-transaction (for example while creating the database, before WAL
     * mode was set) leaves a hot journal that only a read-write connection may roll back.
     * Rolling it back restores the file to its last committed state, which is what any SQLite
     * user of the file would do, so it is safe even for a foreign file. Then check again. */
    if (needs_recovery && may_recover) {
        recover_in_place(s->path);
        return probe_readonly(s, 0, err);
    }
    return st;
}

fc_status store_open(const char *path, const store_options *opt, store **out, fc_error *err) {
    store_options defaults = {.version = STORE_OPTIONS_V1};
    if (!opt) opt = &defaults;
    *out = NULL;
    if (!path || !*path) return fc_error_set(err, FC_ERR_INVALID, "store: empty database path");
    if (opt->version != STORE_OPTIONS_V1)
        return fc_error_set(err, FC_ERR_INVALID, "store: unknown options version %d",
                            opt->version);
    size_t chunk = opt->chunk_size ? opt->chunk_size : STORE_MAX_CHUNK;
    if (chunk > STORE_MAX_CHUNK)
        return fc_error_set(err, FC_ERR_RANGE, "store: chunk_size %zu exceeds the maximum %zu",
                            chunk, STORE_MAX_CHUNK);
    if (opt->busy_timeout_ms < 0)
        return fc_error_set(err, FC_ERR_RANGE, "store: negative busy_timeout_ms");
    if ((opt->readonly || opt->must_exist) && access(path, F_OK) != 0)
        return fc_error_set(err, errno == ENOENT ? FC_ERR_NOT_FOUND : FC_ERR_IO, "%s: %s", path,
                            strerror(errno));

    store *s = fc_calloc(1, sizeof *s);
    if (!s) return fc_error_set(err, FC_ERR_NOMEM, "store: out of memory");
    s->path = fc_strdup(path);
    s->readonly = opt->readonly;
    s->chunk_size = chunk;
    fc_status st = FC_ERR_NOMEM;
    if (!s->path) {
        fc_error_set(err, st, "store: out of memory");
        goto fail;
    }
    if (!opt->readonly && (st = probe_readonly(s, 1, err)) != FC_OK) goto fail;
    int flags = opt->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE;
    if (!opt->readonly && !opt->must_exist) flags |= SQLITE_OPEN_CREATE;
    if (flags & SQLITE_OPEN_CREATE) {
        /* The database holds token hashes and every model: create it owner-only (0600) whatever
         * the umask. SQLite gives the -wal and -shm files the main file's permissions. An
         * existing file keeps the mode its operator gave it. */
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) {
            st = fc_error_set(err, FC_ERR_IO, "%s: creating the database file: %s", path,
                              strerror(errno));
            goto fail;
        }
        close(fd);
    }
    int rc = sqlite3_open_v2(path, &s->db, flags | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        st = store_sqlite_error(s, rc, err, "opening");
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, opt->busy_timeout_ms ? opt->busy_timeout_ms : 5000);
    if ((st = exec_sql(s, "PRAGMA foreign_keys = ON", err, "enabling foreign keys")) != FC_OK)
        goto fail;
    if ((st = store_schema_prepare(s, !opt->readonly, err)) != FC_OK) goto fail;
    if (!opt->readonly) {
        /* FULL: the WAL is fsynced at every commit, so a committed round survives power loss.
         * The journal size limit truncates the WAL after a checkpoint of a large model. */
        st = exec_sql(s, "PRAGMA synchronous = FULL; PRAGMA journal_size_limit = 67108864", err,
                      "setting durability pragmas");
        if (st != FC_OK) goto fail;
    }
    *out = s;
    return FC_OK;
fail:
    store_close(s);
    return st;
}

void store_close(store *s) {
    if (!s) return;
    for (int i = 0; i < SQ_COUNT; i++) sqlite3_finalize(s->stmts[i]);
    if (s->db) sqlite3_close(s->db);
    fc_free(s->path);
    fc_free(s);
}

int store_user_version(store *s) { return s->user_version; }

/* ---- clients ---- */

static fc_status check_name(const char *name, const char *what, fc_error *err) {
    if (!name || !*name)
        return fc_error_set(err, FC_ERR_INVALID, "store: empty %s", what);
    size_t n = strnlen(name, STORE_NAME_MAX + 1);
    if (n > STORE_NAME_MAX)
        return fc_error_set(err, FC_ERR_INVALID, "store: %s longer than %d bytes", what,
                            STORE_NAME_MAX);
    return FC_OK;
}

static fc_status client_insert(store *s, const char *name, const uint8_t token_sha256[32],
                               int64_t now, int64_t *id_out, fc_error *err) {
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_CLIENT_ADD, err);
    sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_blob(q, 2, token_sha256, 32, SQLITE_STATIC);
    sqlite3_bind_int64(q, 3, now);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    if (rc != SQLITE_DONE) {
        if (rc == SQLITE_CONSTRAINT_UNIQUE)
            return fc_error_set(err, FC_ERR_EXISTS,
                                "client '%s': name or token already registered", name);
        return store_sqlite_error(s, rc, err, "adding a client");
    }
    if (id_out) *id_out = sqlite3_last_insert_rowid(s->db);
    return FC_OK;
}

/* A credential change and its audit event commit together, or not at all. */
fc_status store_client_add(store *s, const char *name, const uint8_t token_sha256[32],
                           int64_t now, int64_t *id_out, fc_error *err) {
    fc_status st = check_name(name, "client name", err);
    if (st != FC_OK) return st;
    if (!token_sha256) return fc_error_set(err, FC_ERR_INVALID, "store: no token hash");
    if ((st = store_begin_write(s, err)) != FC_OK) return st;
    if ((st = client_insert(s, name, token_sha256, now, id_out, err)) != FC_OK ||
        (st = store_event_append(s, now, "client.added", 0, name, NULL, err)) != FC_OK) {
        store_rollback_tx(s);
        return st;
    }
    return store_commit_tx(s, err);
}

static void read_client(sqlite3_stmt *q, store_client *c) {
    memset(c, 0, sizeof *c);
    c->id = sqlite3_column_int64(q, 0);
    const unsigned char *name = sqlite3_column_text(q, 1);
    int n = sqlite3_column_bytes(q, 1);
    if (name) memcpy(c->name, name, (size_t)(n > STORE_NAME_MAX ? STORE_NAME_MAX : n));
    const void *tok = sqlite3_column_blob(q, 2);
    if (tok && sqlite3_column_bytes(q, 2) == 32) memcpy(c->token_sha256, tok, 32);
    c->created_at = sqlite3_column_int64(q, 3);
    c->revoked_at = sqlite3_column_int64(q, 4);
    c->rounds_participated = sqlite3_column_int64(q, 5);
    c->updates_accepted = sqlite3_column_int64(q, 6);
    c->updates_rejected = sqlite3_column_int64(q, 7);
    c->updates_timed_out = sqlite3_column_int64(q, 8);
    c->updates_dropped = sqlite3_column_int64(q, 9);
    c->last_round = sqlite3_column_int64(q, 10);
}

fc_status store_client_revoke(store *s, const char *name, int64_t now, fc_error *err) {
    fc_status st = store_begin_write(s, err);
    if (st != FC_OK) return st;
    store_client c;
    if ((st = store_client_by_name(s, name, &c, err)) != FC_OK) goto fail;
    if (c.revoked_at) {
        st = fc_error_set(err, FC_ERR_STATE, "client '%s' is already revoked", name);
        goto fail;
    }
    sqlite3_stmt *q;
    if ((st = store_stmt(s, SQ_CLIENT_REVOKE, &q, err)) != FC_OK) goto fail;
    sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, now ? now : 1); /* 0 means "active" to readers */
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    if (rc != SQLITE_DONE) {
        st = store_sqlite_error(s, rc, err, "revoking a client");
        goto fail;
    }
    if ((st = store_event_append(s, now, "client.revoked", 0, name, NULL, err)) != FC_OK)
        goto fail;
    return store_commit_tx(s, err);
fail:
    store_rollback_tx(s);
    return st;
}

static fc_status client_lookup(store *s, store_stmt_id id, const void *key, int keylen,
                               store_client *out, fc_error *err, const char *what) {
    sqlite3_stmt *q;
    STORE_STMT(q, s, id, err);
    if (keylen < 0)
        sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
    else
        sqlite3_bind_blob(q, 1, key, keylen, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    fc_status st = FC_OK;
    if (rc == SQLITE_ROW)
        read_client(q, out);
    else if (rc == SQLITE_DONE)
        st = fc_error_set(err, FC_ERR_NOT_FOUND, "no client with this %s", what);
    else
        st = store_sqlite_error(s, rc, err, "looking up a client");
    sqlite3_reset(q);
    return st;
}

fc_status store_client_by_token(store *s, const uint8_t token_sha256[32], store_client *out,
                                fc_error *err) {
    if (!token_sha256) return fc_error_set(err, FC_ERR_INVALID, "store: no token hash");
    return client_lookup(s, SQ_CLIENT_BY_TOKEN, token_sha256, 32, out, err, "token");
}

fc_status store_client_by_name(store *s, const char *name, store_client *out, fc_error *err) {
    fc_status st = check_name(name, "client name", err);
    if (st != FC_OK) return st;
    st = client_lookup(s, SQ_CLIENT_BY_NAME, name, -1, out, err, "name");
    if (st == FC_ERR_NOT_FOUND) fc_error_set(err, st, "no client named '%s'", name);
    return st;
}

fc_status store_client_list(store *s, store_client_cb cb, void *ud, fc_error *err) {
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_CLIENT_LIST, err);
    fc_status st = FC_OK;
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        store_client c;
        read_client(q, &c);
        if ((st = cb(ud, &c)) != FC_OK) break;
    }
    if (st == FC_OK && rc != SQLITE_DONE) st = store_sqlite_error(s, rc, err, "listing clients");
    sqlite3_reset(q);
    return st;
}

/* ---- rounds ---- */

static const char *const ROUND_STATE_NAMES[] = {NULL,        "WAITING",   "TRAINING",
                                                "AGGREGATING", "COMMITTED", "FAILED"};

const char *store_round_state_name(store_round_state st) {
    return st >= STORE_ROUND_WAITING && st <= STORE_ROUND_FAILED ? ROUND_STATE_NAMES[st] : "?";
}

static store_round_state parse_round_state(const unsigned char *t) {
    for (int i = STORE_ROUND_WAITING; i <= STORE_ROUND_FAILED; i++)
        if (t && strcmp((const char *)t, ROUND_STATE_NAMES[i]) == 0) return (store_round_state)i;
    return (store_round_state)0;
}

static const char *const OUTCOME_NAMES[] = {NULL, "accepted", "rejected", "timed_out",
                                            "dropped"};

const char *store_outcome_name(store_outcome o) {
    return o >= STORE_OUTCOME_ACCEPTED && o <= STORE_OUTCOME_DROPPED ? OUTCOME_NAMES[o] : "?";
}

static store_outcome parse_outcome(const unsigned char *t) {
    for (int i = STORE_OUTCOME_ACCEPTED; i <= STORE_OUTCOME_DROPPED; i++)
        if (t && strcmp((const char *)t, OUTCOME_NAMES[i]) == 0) return (store_outcome)i;
    return (store_outcome)0;
}

/* State of round_id, or 0 in *state if it has no record. */
static fc_status round_state(store *s, int64_t round_id, store_round_state *state,
                             fc_error *err) {
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_ROUND_STATE, err);
    sqlite3_bind_int64(q, 1, round_id);
    int rc = sqlite3_step(q);
    fc_status st = FC_OK;
    *state = (store_round_state)0;
    if (rc == SQLITE_ROW)
        *state = parse_round_state(sqlite3_column_text(q, 0));
    else if (rc != SQLITE_DONE)
        st = store_sqlite_error(s, rc, err, "reading a round's state");
    sqlite3_reset(q);
    return st;
}

static fc_status round_insert(store *s, int64_t round_id, store_round_state state,
                              int64_t base_version, const char *config_json, int64_t now,
                              fc_error *err) {
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_ROUND_INSERT, err);
    sqlite3_bind_int64(q, 1, round_id);
    sqlite3_bind_text(q, 2, store_round_state_name(state), -1, SQLITE_STATIC);
    if (base_version > 0) sqlite3_bind_int64(q, 3, base_version);
    sqlite3_bind_int64(q, 4, now);
    if (config_json) sqlite3_bind_text(q, 5, config_json, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY)
        return fc_error_set(err, FC_ERR_EXISTS, "round %lld already exists", (long long)round_id);
    return rc == SQLITE_DONE ? FC_OK : store_sqlite_error(s, rc, err, "inserting a round");
}

fc_status store_round_begin(store *s, int64_t round_id, store_round_state state,
                            int64_t base_version, const char *config_json, int64_t now,
                            fc_error *err) {
    if (round_id <= 0)
        return fc_error_set(err, FC_ERR_INVALID, "round id %lld must be positive",
                            (long long)round_id);
    if (state < STORE_ROUND_WAITING || state > STORE_ROUND_AGGREGATING)
        return fc_error_set(err, FC_ERR_INVALID, "round %lld cannot begin in state %s",
                            (long long)round_id, store_round_state_name(state));
    if (base_version < 0)
        return fc_error_set(err, FC_ERR_INVALID, "round %lld: negative base version",
                            (long long)round_id);
    return round_insert(s, round_id, state, base_version, config_json, now, err);
}

fc_status store_round_set_state(store *s, int64_t round_id, store_round_state state,
                                fc_error *err) {
    if (state < STORE_ROUND_WAITING || state > STORE_ROUND_AGGREGATING)
        return fc_error_set(err, FC_ERR_INVALID,
                            "round %lld: %s is set by store_commit_round/store_round_fail",
                            (long long)round_id, store_round_state_name(state));
    store_round_state cur;
    fc_status st = round_state(s, round_id, &cur, err);
    if (st != FC_OK) return st;
    if (!cur) return fc_error_set(err, FC_ERR_NOT_FOUND, "no round %lld", (long long)round_id);
    if (cur == STORE_ROUND_COMMITTED || cur == STORE_ROUND_FAILED)
        return fc_error_set(err, FC_ERR_STATE, "round %lld is already %s", (long long)round_id,
                            store_round_state_name(cur));
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_ROUND_SET_STATE, err);
    sqlite3_bind_int64(q, 1, round_id);
    sqlite3_bind_text(q, 2, store_round_state_name(state), -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    return rc == SQLITE_DONE ? FC_OK : store_sqlite_error(s, rc, err, "setting a round's state");
}

fc_status store_round_finish(store *s, int64_t round_id, store_round_state final_state,
                             int64_t started_at, int64_t ended_at, int64_t base_version,
                             const char *config_json, const char *report_json,
                             const char *metrics_json, const char *failure_reason,
                             fc_error *err) {
    store_round_state cur;
    fc_status st = round_state(s, round_id, &cur, err);
    if (st != FC_OK) return st;
    if (cur == STORE_ROUND_COMMITTED || cur == STORE_ROUND_FAILED)
        return fc_error_set(err, FC_ERR_STATE, "round %lld is already %s", (long long)round_id,
                            store_round_state_name(cur));
    if (!cur) {
        st = round_insert(s, round_id, STORE_ROUND_AGGREGATING, base_version, NULL, started_at,
                          err);
        if (st != FC_OK) return st;
    }
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_ROUND_FINISH, err);
    sqlite3_bind_int64(q, 1, round_id);
    sqlite3_bind_text(q, 2, store_round_state_name(final_state), -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 3, ended_at);
    if (report_json) sqlite3_bind_text(q, 4, report_json, -1, SQLITE_STATIC);
    if (metrics_json) sqlite3_bind_text(q, 5, metrics_json, -1, SQLITE_STATIC);
    if (failure_reason) sqlite3_bind_text(q, 6, failure_reason, -1, SQLITE_STATIC);
    if (config_json) sqlite3_bind_text(q, 7, config_json, -1, SQLITE_STATIC);
    if (base_version > 0) sqlite3_bind_int64(q, 8, base_version);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    return rc == SQLITE_DONE ? FC_OK : store_sqlite_error(s, rc, err, "finishing a round");
}

static fc_status check_participants(const store_participant *p, size_t n, fc_error *err) {
    if (n && !p) return fc_error_set(err, FC_ERR_INVALID, "store: participants missing");
    for (size_t i = 0; i < n; i++) {
        fc_status st = check_name(p[i].client, "participant client name", err);
        if (st != FC_OK) return fc_error_prefix(err, "participant %zu", i);
        if (p[i].outcome < STORE_OUTCOME_ACCEPTED || p[i].outcome > STORE_OUTCOME_DROPPED)
            return fc_error_set(err, FC_ERR_INVALID, "participant '%s': invalid outcome %d",
                                p[i].client, (int)p[i].outcome);
        if (p[i].num_examples > INT64_MAX || p[i].bytes > INT64_MAX)
            return fc_error_set(err, FC_ERR_RANGE, "participant '%s': count out of range",
                                p[i].client);
    }
    return FC_OK;
}

fc_status store_participants_insert(store *s, int64_t round_id, const store_participant *p,
                                    size_t n, fc_error *err) {
    fc_status st = check_participants(p, n, err);
    if (st != FC_OK) return st;
    for (size_t i = 0; i < n; i++) {
        sqlite3_stmt *q;
        STORE_STMT(q, s, SQ_PART_INSERT, err);
        sqlite3_bind_int64(q, 1, round_id);
        sqlite3_bind_text(q, 2, p[i].client, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 3, store_outcome_name(p[i].outcome), -1, SQLITE_STATIC);
        if (p[i].reason) sqlite3_bind_text(q, 4, p[i].reason, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 5, (int64_t)p[i].num_examples);
        sqlite3_bind_int64(q, 6, (int64_t)p[i].bytes);
        if (p[i].update_sha256) sqlite3_bind_blob(q, 7, p[i].update_sha256, 32, SQLITE_STATIC);
        if (p[i].metrics_json) sqlite3_bind_text(q, 8, p[i].metrics_json, -1, SQLITE_STATIC);
        int rc = sqlite3_step(q);
        sqlite3_reset(q);
        if (rc == SQLITE_CONSTRAINT_PRIMARYKEY)
            return fc_error_set(err, FC_ERR_EXISTS, "round %lld lists client '%s' twice",
                                (long long)round_id, p[i].client);
        if (rc != SQLITE_DONE) return store_sqlite_error(s, rc, err, "inserting a participant");
        STORE_STMT(q, s, SQ_CLIENT_COUNT, err);
        sqlite3_bind_text(q, 1, p[i].client, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, store_outcome_name(p[i].outcome), -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 3, round_id);
        rc = sqlite3_step(q);
        sqlite3_reset(q);
        if (rc != SQLITE_DONE)
            return store_sqlite_error(s, rc, err, "updating participation counters");
    }
    return FC_OK;
}

fc_status store_round_fail(store *s, int64_t round_id, const char *reason,
                           const store_participant *participants, size_t num_participants,
                           int64_t now, fc_error *err) {
    if (round_id <= 0)
        return fc_error_set(err, FC_ERR_INVALID, "round id %lld must be positive",
                            (long long)round_id);
    if (!reason || !*reason)
        return fc_error_set(err, FC_ERR_INVALID, "round %lld: a failure needs a reason",
                            (long long)round_id);
    fc_status st = check_participants(participants, num_participants, err);
    if (st != FC_OK) return st;
    if ((st = store_begin_write(s, err)) != FC_OK) return st;
    st = store_round_finish(s, round_id, STORE_ROUND_FAILED, now, now, 0, NULL, NULL, NULL,
                            reason, err);
    if (st == FC_OK)
        st = store_participants_insert(s, round_id, participants, num_participants, err);
    if (st == FC_OK) st = store_event_append(s, now, "round.failed", round_id, NULL, reason, err);
    if (st == FC_OK) return store_commit_tx(s, err);
    store_rollback_tx(s);
    return st;
}

fc_status store_round_commit_eval(store *s, int64_t round_id, int64_t evaluated_version,
                                  const char *config_json, const char *metrics_json,
                                  const store_participant *participants, size_t num_participants,
                                  int64_t started_at, int64_t ended_at, fc_error *err) {
    if (round_id <= 0)
        return fc_error_set(err, FC_ERR_INVALID, "round id %lld must be positive",
                            (long long)round_id);
    fc_status st = check_participants(participants, num_participants, err);
    if (st != FC_OK) return st;
    if ((st = store_begin_write(s, err)) != FC_OK) return st;
    st = store_round_finish(s, round_id, STORE_ROUND_COMMITTED, started_at, ended_at,
                            evaluated_version, config_json, NULL, metrics_json, NULL, err);
    if (st == FC_OK)
        st = store_participants_insert(s, round_id, participants, num_participants, err);
    if (st == FC_OK)
        st = store_event_append(s, ended_at, "round.evaluated", round_id, NULL, metrics_json, err);
    if (st == FC_OK) return store_commit_tx(s, err);
    store_rollback_tx(s);
    return st;
}

void store_round_clear(store_round *r) {
    if (!r) return;
    fc_free(r->config_json);
    fc_free(r->report_json);
    fc_free(r->metrics_json);
    fc_free(r->failure_reason);
    memset(r, 0, sizeof *r);
}

/* Fills r from a ROUND_SELECT row; strings are borrowed from the statement when borrow is set,
 * copied otherwise. */
static fc_status read_round(sqlite3_stmt *q, store_round *r, int borrow) {
    memset(r, 0, sizeof *r);
    r->id = sqlite3_column_int64(q, 0);
    r->state = parse_round_state(sqlite3_column_text(q, 1));
    r->base_version = sqlite3_column_int64(q, 2);
    r->started_at = sqlite3_column_int64(q, 3);
    r->ended_at = sqlite3_column_int64(q, 4);
    r->model_version = sqlite3_column_int64(q, 9);
    char **fields[4] = {&r->config_json, &r->report_json, &r->metrics_json, &r->failure_reason};
    for (int i = 0; i < 4; i++) {
        if (borrow) {
            *fields[i] = (char *)sqlite3_column_text(q, 5 + i);
        } else if (store_column_strdup(q, 5 + i, fields[i]) != FC_OK) {
            store_round_clear(r);
            return FC_ERR_NOMEM;
        }
    }
    return FC_OK;
}

fc_status store_round_get(store *s, int64_t round_id, store_round *out, fc_error *err) {
    memset(out, 0, sizeof *out);
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_ROUND_GET, err);
    sqlite3_bind_int64(q, 1, round_id);
    int rc = sqlite3_step(q);
    fc_status st = FC_OK;
    if (rc == SQLITE_ROW) {
        if (read_round(q, out, 0) != FC_OK)
            st = fc_error_set(err, FC_ERR_NOMEM, "round %lld: out of memory",
                              (long long)round_id);
    } else if (rc == SQLITE_DONE) {
        st = fc_error_set(err, FC_ERR_NOT_FOUND, "no round %lld", (long long)round_id);
    } else {
        st = store_sqlite_error(s, rc, err, "reading a round");
    }
    sqlite3_reset(q);
    return st;
}

int64_t store_list_limit(size_t limit) {
    return limit == 0 || limit > INT64_MAX ? -1 : (int64_t)limit;
}

fc_status store_round_list(store *s, int64_t after_id, size_t limit, store_round_cb cb, void *ud,
                           fc_error *err) {
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_ROUND_LIST, err);
    sqlite3_bind_int64(q, 1, after_id);
    sqlite3_bind_int64(q, 2, store_list_limit(limit));
    fc_status st = FC_OK;
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        store_round r;
        read_round(q, &r, 1);
        if ((st = cb(ud, &r)) != FC_OK) break;
    }
    if (st == FC_OK && rc != SQLITE_DONE) st = store_sqlite_error(s, rc, err, "listing rounds");
    sqlite3_reset(q);
    return st;
}

fc_status store_participants_list(store *s, int64_t round_id, store_participant_cb cb, void *ud,
                                  fc_error *err) {
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_PART_LIST, err);
    sqlite3_bind_int64(q, 1, round_id);
    fc_status st = FC_OK;
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        store_participant p = {
            .client = (const char *)sqlite3_column_text(q, 0),
            .outcome = parse_outcome(sqlite3_column_text(q, 1)),
            .reason = (const char *)sqlite3_column_text(q, 2),
            .num_examples = (uint64_t)sqlite3_column_int64(q, 3),
            .bytes = (uint64_t)sqlite3_column_int64(q, 4),
            .update_sha256 = sqlite3_column_bytes(q, 5) == 32 ? sqlite3_column_blob(q, 5) : NULL,
            .metrics_json = (const char *)sqlite3_column_text(q, 6),
        };
        if ((st = cb(ud, &p)) != FC_OK) break;
    }
    if (st == FC_OK && rc != SQLITE_DONE)
        st = store_sqlite_error(s, rc, err, "listing participants");
    sqlite3_reset(q);
    return st;
}

/* ---- events ---- */

fc_status store_event_append(store *s, int64_t ts, const char *kind, int64_t round_id,
                             const char *client, const char *detail, fc_error *err) {
    if (!kind || !*kind) return fc_error_set(err, FC_ERR_INVALID, "store: event without a kind");
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_EVENT_APPEND, err);
    sqlite3_bind_int64(q, 1, ts);
    sqlite3_bind_text(q, 2, kind, -1, SQLITE_STATIC);
    if (round_id > 0) sqlite3_bind_int64(q, 3, round_id);
    if (client) sqlite3_bind_text(q, 4, client, -1, SQLITE_STATIC);
    if (detail) sqlite3_bind_text(q, 5, detail, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    return rc == SQLITE_DONE ? FC_OK : store_sqlite_error(s, rc, err, "appending an event");
}

fc_status store_event_list(store *s, int64_t after_id, size_t limit, store_event_cb cb, void *ud,
                           fc_error *err) {
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_EVENT_LIST, err);
    sqlite3_bind_int64(q, 1, after_id);
    sqlite3_bind_int64(q, 2, store_list_limit(limit));
    fc_status st = FC_OK;
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        store_event e = {
            .id = sqlite3_column_int64(q, 0),
            .ts = sqlite3_column_int64(q, 1),
            .kind = (const char *)sqlite3_column_text(q, 2),
            .round_id = sqlite3_column_int64(q, 3),
            .client = (const char *)sqlite3_column_text(q, 4),
            .detail = (const char *)sqlite3_column_text(q, 5),
        };
        if ((st = cb(ud, &e)) != FC_OK) break;
    }
    if (st == FC_OK && rc != SQLITE_DONE) st = store_sqlite_error(s, rc, err, "listing events");
    sqlite3_reset(q);
    return st;
}

/* ---- recovery ---- */

fc_status store_recover(store *s, int64_t now, store_recovery *out, fc_error *err) {
    memset(out, 0, sizeof *out);
    fc_status st = store_begin_write(s, err);
    if (st != FC_OK) return st;
    sqlite3_stmt *q;
    if ((st = store_stmt(s, SQ_ROUND_FAIL_RUNNING, &q, err)) != FC_OK) goto rollback;
    sqlite3_bind_int64(q, 1, now);
    sqlite3_bind_text(q, 2, "coordinator restarted", -1, SQLITE_STATIC);
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) out->rounds_failed++;
    sqlite3_reset(q);
    if (rc != SQLITE_DONE) {
        st = store_sqlite_error(s, rc, err, "failing interrupted rounds");
        goto rollback;
    }
    if (out->rounds_failed) {
        char detail[64];
        snprintf(detail, sizeof detail, "{\"rounds_failed\":%llu}",
                 (unsigned long long)out->rounds_failed);
        if ((st = store_event_append(s, now, "coordinator.recovered", 0, NULL, detail, err)) !=
            FC_OK)
            goto rollback;
    }
    if ((st = store_latest_version(s, &out->latest_version, err)) != FC_OK) goto rollback;
    if ((st = store_stmt(s, SQ_ROUND_MAX, &q, err)) != FC_OK) goto rollback;
    rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) out->last_round = sqlite3_column_int64(q, 0);
    sqlite3_reset(q);
    if (rc != SQLITE_ROW) {
        st = store_sqlite_error(s, rc, err, "reading the last round");
        goto rollback;
    }
    if (out->latest_version > 0 &&
        (st = store_state_get(s, out->latest_version, &out->state, err)) != FC_OK) {
        if (st == FC_ERR_NOT_FOUND)
            st = fc_error_set(err, FC_ERR_CORRUPT, "%s: latest version %lld has no state row",
                              s->path, (long long)out->latest_version);
        goto rollback;
    }
    if ((st = store_commit_tx(s, err)) != FC_OK) goto fail;
    return FC_OK;
rollback:
    store_rollback_tx(s);
fail:
    store_recovery_clear(out);
    return st;
}

void store_recovery_clear(store_recovery *r) {
    if (!r) return;
    store_state_clear(&r->state);
    memset(r, 0, sizeof *r);
}
