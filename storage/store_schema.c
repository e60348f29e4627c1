/* store_schema.c: the schema and its forward-only migrations.
 *
 * The schema version lives in PRAGMA user_version, the file's identity in PRAGMA
 * application_id. MIGRATIONS[i] takes a database from version i to i + 1; each step runs in its
 * own transaction together with the user_version update, so a crash mid-migration leaves the
 * previous version. A file is checked before anything is written to it: a foreign file or a
 * newer schema is refused and left untouched. This file never changes the meaning of an old
 * step: once released, a step's SQL is frozen (the tests recreate old versions from copies).
 */
#include <stdio.h>
#include <string.h>

#include "storage/store_internal.h"

/* v1: the base schema. */
static const char MIGRATE_V1[] =
    "CREATE TABLE clients("
    " id INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL UNIQUE,"
    " token_sha256 BLOB NOT NULL UNIQUE CHECK(length(token_sha256) = 32),"
    " created_at INTEGER NOT NULL,"
    " revoked_at INTEGER,"
    " rounds_participated INTEGER NOT NULL DEFAULT 0,"
    " updates_accepted INTEGER NOT NULL DEFAULT 0,"
    " updates_rejected INTEGER NOT NULL DEFAULT 0,"
    " updates_timed_out INTEGER NOT NULL DEFAULT 0,"
    " updates_dropped INTEGER NOT NULL DEFAULT 0,"
    " last_round INTEGER);"
    "CREATE TABLE rounds("
    " id INTEGER PRIMARY KEY CHECK(id > 0),"
    " state TEXT NOT NULL CHECK(state IN"
    "  ('WAITING','TRAINING','AGGREGATING','COMMITTED','FAILED')),"
    " base_version INTEGER,"
    " started_at INTEGER NOT NULL,"
    " ended_at INTEGER,"
    " config_json TEXT,"
    " report_json TEXT,"
    " metrics_json TEXT,"
    " failure_reason TEXT);"
    "CREATE TABLE participants("
    " round_id INTEGER NOT NULL REFERENCES rounds(id),"
    " client TEXT NOT NULL,"
    " outcome TEXT NOT NULL CHECK(outcome IN ('accepted','rejected','timed_out','dropped')),"
    " reason TEXT,"
    " num_examples INTEGER NOT NULL DEFAULT 0,"
    " bytes INTEGER NOT NULL DEFAULT 0,"
    " update_sha256 BLOB CHECK(update_sha256 IS NULL OR length(update_sha256) = 32),"
    " metrics_json TEXT,"
    " PRIMARY KEY(round_id, client));"
    "CREATE TABLE models("
    " version INTEGER PRIMARY KEY CHECK(version > 0),"
    " parent_version INTEGER REFERENCES models(version),"
    " round_id INTEGER UNIQUE REFERENCES rounds(id),"
    " sha256 BLOB NOT NULL CHECK(length(sha256) = 32),"
    " parent_sha256 BLOB CHECK(parent_sha256 IS NULL OR length(parent_sha256) = 32),"
    " chain_hash BLOB NOT NULL CHECK(length(chain_hash) = 32),"
    " tensor_specs_json TEXT NOT NULL,"
    " size INTEGER NOT NULL CHECK(size >= 0),"
    " chunk_size INTEGER NOT NULL CHECK(chunk_size > 0 AND chunk_size <= 16777216),"
    " num_chunks INTEGER NOT NULL CHECK(num_chunks >= 0),"
    " created_at INTEGER NOT NULL,"
    " pruned_at INTEGER);"
    "CREATE TABLE model_chunks("
    " version INTEGER NOT NULL REFERENCES models(version),"
    " seq INTEGER NOT NULL CHECK(seq >= 0),"
    " data BLOB NOT NULL CHECK(length(data) <= 16777216),"
    " UNIQUE(version, seq));"
    "CREATE TABLE state("
    " version INTEGER PRIMARY KEY REFERENCES models(version),"
    " rule_name TEXT,"
    " rule_blob BLOB,"
    " optimizer_name TEXT,"
    " optimizer_blob BLOB);";

/* v2: the append-only audit log (enforced by triggers), and an index for per-client history. */
static const char MIGRATE_V2[] =
    "CREATE TABLE events("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " ts INTEGER NOT NULL,"
    " kind TEXT NOT NULL,"
    " round_id INTEGER,"
    " client TEXT,"
    " detail TEXT);"
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events"
    " BEGIN SELECT RAISE(ABORT, 'events is append-only'); END;"
    "CREATE TRIGGER events_no_delete BEFORE DELETE ON events"
    " BEGIN SELECT RAISE(ABORT, 'events is append-only'); END;"
    "CREATE INDEX participants_by_client ON participants(client, round_id);";

static const char *const MIGRATIONS[] = {MIGRATE_V1, MIGRATE_V2};
_Static_assert(sizeof MIGRATIONS / sizeof MIGRATIONS[0] == STORE_SCHEMA_VERSION,
               "one migration step per schema version");

static fc_status pragma_int(store *s, const char *sql, int *out, fc_error *err) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *out = sqlite3_column_int(st, 0);
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_OK) {
        if (rc == SQLITE_NOTADB || rc == SQLITE_CORRUPT)
            return fc_error_set(err, FC_ERR_FORMAT, "%s: not a fedcoord database (%s)", s->path,
                                sqlite3_errstr(rc));
        return store_sqlite_error(s, rc, err, sql);
    }
    return FC_OK;
}

static fc_status run_step(store *s, int to_version, fc_error *err) {
    fc_status st = store_begin_write(s, err);
    if (st != FC_OK) return st;
    char *msg = NULL;
    int rc = sqlite3_exec(s->db, MIGRATIONS[to_version - 1], NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        st = fc_error_set(err, rc == SQLITE_FULL || (rc & 0xff) == SQLITE_IOERR ? FC_ERR_IO
                                                                                 : FC_ERR_DB,
                          "%s: migration to schema v%d failed: %s", s->path, to_version,
                          msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        store_rollback_tx(s);
        return st;
    }
    char sql[96];
    snprintf(sql, sizeof sql, "PRAGMA application_id = %d; PRAGMA user_version = %d;",
             STORE_APPLICATION_ID, to_version);
    rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        st = store_sqlite_error(s, rc, err, "setting the schema version");
        store_rollback_tx(s);
        return st;
    }
    return store_commit_tx(s, err);
}

fc_status store_schema_check(store *s, int *version_out, int *fresh_out, fc_error *err) {
    int app_id = 0, version = 0, objects = 0;
    fc_status st;
    /* Read-only probes: nothing is written until the file is known to be ours. */
    if ((st = pragma_int(s, "PRAGMA application_id", &app_id, err)) != FC_OK) return st;
    if ((st = pragma_int(s, "PRAGMA user_version", &version, err)) != FC_OK) return st;
    if ((st = pragma_int(s, "SELECT count(*) FROM sqlite_master", &objects, err)) != FC_OK)
        return st;
    int fresh = app_id == 0 && version == 0 && objects == 0;
    if (!fresh && app_id != STORE_APPLICATION_ID)
        return fc_error_set(err, FC_ERR_FORMAT,
                            "%s: not a fedcoord database (application_id 0x%08x, expected "
                            "0x%08x); refusing to touch it",
                            s->path, (unsigned)app_id, (unsigned)STORE_APPLICATION_ID);
    if (version < 0 || version > STORE_SCHEMA_VERSION)
        return fc_error_set(err, FC_ERR_VERSION,
                            "%s: schema version %d is newer than this build supports (%d); "
                            "upgrade fedcoord",
                            s->path, version, STORE_SCHEMA_VERSION);
    *version_out = version;
    *fresh_out = fresh;
    return FC_OK;
}

fc_status store_schema_prepare(store *s, int must_migrate, fc_error *err) {
    int version = 0, fresh = 0;
    fc_status st = store_schema_check(s, &version, &fresh, err);
    if (st != FC_OK) return st;
    if (version < STORE_SCHEMA_VERSION && !must_migrate)
        return fc_error_set(err, FC_ERR_VERSION,
                            "%s: schema version %d needs migration to %d; open it read-write "
                            "once (start the coordinator)",
                            s->path, version, STORE_SCHEMA_VERSION);
    if (must_migrate && fresh) {
        /* Model chunks dominate the file: 64 KiB pages cut the per-page overhead of blob
         * overflow chains (commit latency fell ~2x in bench_store). Only a file with no pages
         * yet takes it; an existing file keeps its page size. */
        int rc = sqlite3_exec(s->db, "PRAGMA page_size = 65536", NULL, NULL, NULL);
        if (rc != SQLITE_OK) return store_sqlite_error(s, rc, err, "setting page_size");
    }
    if (must_migrate) {
        /* WAL is persistent in the file header; setting it again is a no-op. */
        sqlite3_stmt *jm = NULL;
        int rc = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &jm, NULL);
        if (rc == SQLITE_OK) rc = sqlite3_step(jm);
        int wal = rc == SQLITE_ROW && sqlite3_column_text(jm, 0) &&
                  strcmp((const char *)sqlite3_column_text(jm, 0), "wal") == 0;
        sqlite3_finalize(jm);
        if (rc != SQLITE_ROW) return store_sqlite_error(s, rc, err, "setting journal_mode=WAL");
        if (!wal)
            return fc_error_set(err, FC_ERR_DB, "%s: the file system refused WAL mode", s->path);
    }
    for (int v = version + 1; v <= STORE_SCHEMA_VERSION; v++)
        if ((st = run_step(s, v, err)) != FC_OK) return st;
    s->user_version = STORE_SCHEMA_VERSION;
    return FC_OK;
}
