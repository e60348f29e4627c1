/* test_store.c: the SQLite store on real database files in FC_TEST_TMPDIR.
 *
 * Expected values come from the definitions: bytes written are the bytes read back, SHA-256 is
 * computed independently here with OpenSSL, retention victims are worked out by hand in the
 * comments, and old schema versions are created with their own frozen SQL below.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <sqlite3.h>

#include "core/alloc.h"
#include "storage/store.h"
#include "storage/store_internal.h"
#include "tests/lib/testutil.h"

/* ---- helpers ---- */

static int g_seq;

/* A fresh database path for each call. */
static void new_path(char *out, size_t n, const char *tag) {
    snprintf(out, n, "%s/%s-%d-%d.db", fc_test_tmpdir(), tag, (int)getpid(), ++g_seq);
    unlink(out);
}

static void sha256(const void *d, size_t n, uint8_t out[32]) {
    unsigned int len = 0;
    assert_int_equal(EVP_Digest(d, n, out, &len, EVP_sha256(), NULL), 1);
}

static void file_sha256(const char *path, uint8_t out[32]) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    uint8_t buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) EVP_DigestUpdate(md, buf, n);
    unsigned int len = 0;
    EVP_DigestFinal_ex(md, out, &len);
    EVP_MD_CTX_free(md);
    fclose(f);
}

static void fill_pattern(uint8_t *p, size_t n, uint32_t seed) {
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (uint8_t)x;
    }
}

typedef struct mem_source {
    const uint8_t *data;
    size_t len, pos, step; /* step: most bytes per call (0 = as much as asked) */
    size_t fail_at;        /* return FC_ERR_IO once pos reaches this (0 = never) */
} mem_source;

static fc_status mem_read(void *ud, void *buf, size_t cap, size_t *got, fc_error *err) {
    mem_source *m = ud;
    if (m->fail_at && m->pos >= m->fail_at)
        return fc_error_set(err, FC_ERR_IO, "test source fails at %zu", m->pos);
    size_t n = m->len - m->pos;
    if (n > cap) n = cap;
    if (m->step && n > m->step) n = m->step;
    if (n) memcpy(buf, m->data + m->pos, n);
    m->pos += n;
    *got = n;
    return FC_OK;
}

typedef struct mem_sink {
    uint8_t *data;
    size_t cap, len;
    uint64_t first_offset;
    int calls;
    int fail_after; /* fail on this call (0 = never) */
} mem_sink;

static fc_status mem_write(void *ud, const void *data, size_t len, uint64_t offset,
                           fc_error *err) {
    mem_sink *m = ud;
    if (m->calls == 0) m->first_offset = offset;
    m->calls++;
    if (m->fail_after && m->calls == m->fail_after)
        return fc_error_set(err, FC_ERR_CLOSED, "test sink closed");
    assert_int_equal(offset, m->first_offset + m->len); /* contiguous */
    assert_true(m->len + len <= m->cap);
    if (len) memcpy(m->data + m->len, data, len);
    m->len += len;
    return FC_OK;
}

static store *open_small(const char *path, size_t chunk) {
    store_options opt = {.version = STORE_OPTIONS_V1, .chunk_size = chunk};
    store *s = NULL;
    fc_error err = {0};
    fc_status st = store_open(path, &opt, &s, &err);
    if (st != FC_OK) fail_msg("store_open: %s", fc_error_text(&err));
    return s;
}

static const char SPECS[] = "[{\"name\":\"w\",\"dtype\":\"f32\",\"shape\":[250]}]";

/* Commits version v (parent v-1, round v-1 unless v == 1) with `len` pattern bytes. */
static fc_status commit_version(store *s, int64_t v, size_t len, uint8_t *data_out,
                                fc_error *err) {
    uint8_t *data = malloc(len ? len : 1); /* not fc_malloc: tests inject failures there */
    assert_non_null(data);
    fill_pattern(data, len, (uint32_t)v);
    mem_source src = {.data = data, .len = len, .step = 100};
    char rule[32], opt_state[32];
    snprintf(rule, sizeof rule, "rule-state-%lld", (long long)v);
    snprintf(opt_state, sizeof opt_state, "opt-state-%lld", (long long)v);
    store_participant parts[2] = {
        {.client = "alice", .outcome = STORE_OUTCOME_ACCEPTED, .num_examples = 10, .bytes = 40},
        {.client = "bob", .outcome = STORE_OUTCOME_REJECTED, .reason = "norm too large"},
    };
    store_commit c = {
        .round_id = v > 1 ? v - 1 : 0,
        .version = v,
        .parent_version = v - 1,
        .tensor_specs_json = SPECS,
        .model_size = len,
        .source = mem_read,
        .source_ud = &src,
        .started_at = 1000 * v,
        .ended_at = 1000 * v + 500,
        .config_json = "{\"lr\":0.1}",
        .report_json = "{\"selected\":[\"alice\"]}",
        .metrics_json = "{\"loss\":0.5}",
        .participants = v > 1 ? parts : NULL,
        .num_participants = v > 1 ? 2 : 0,
        .rule_name = "fedavg",
        .optimizer_name = "sgd",
        .rule_state = rule,
        .rule_state_len = strlen(rule),
        .optimizer_state = opt_state,
        .optimizer_state_len = strlen(opt_state),
    };
    fc_status st = store_commit_round(s, &c, NULL, err);
    if (data_out) memcpy(data_out, data, len);
    free(data);
    return st;
}

static void must_commit(store *s, int64_t v, size_t len) {
    fc_error err = {0};
    fc_status st = commit_version(s, v, len, NULL, &err);
    if (st != FC_OK) fail_msg("commit v%lld: %s", (long long)v, fc_error_text(&err));
}

static int64_t count_rows(store *s, const char *sql) {
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(s->db, sql, -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    int64_t n = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    return n;
}

static void exec_raw(const char *path, const char *sql) {
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) fail_msg("exec_raw %s: %s", sql, msg);
    sqlite3_close(db);
}

/* ---- open, schema, migrations ---- */

static void test_open_creates_current_schema_in_wal_mode(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "open");
    store *s = open_small(path, 0);
    assert_int_equal(store_user_version(s), STORE_SCHEMA_VERSION);
    assert_int_equal(count_rows(s, "PRAGMA user_version"), 2);
    assert_int_equal(count_rows(s, "PRAGMA application_id"), STORE_APPLICATION_ID);
    assert_int_equal(count_rows(s, "PRAGMA foreign_keys"), 1);
    assert_int_equal(count_rows(s, "PRAGMA synchronous"), 2); /* FULL */
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(s->db, "PRAGMA journal_mode", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(q, 0), "wal");
    sqlite3_finalize(q);
    assert_int_equal(count_rows(s, "SELECT count(*) FROM sqlite_master WHERE name IN ('clients',"
                                   "'rounds','participants','models','model_chunks','state',"
                                   "'events')"),
                     7);
    store_close(s);
    /* Reopening an up-to-date file migrates nothing and keeps the version. */
    s = open_small(path, 0);
    assert_int_equal(store_user_version(s), 2);
    store_close(s);
}

/* The v1 schema exactly as released (frozen copy; the store's own SQL is not used). */
static const char V1_SQL[] =
    "CREATE TABLE clients(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    " token_sha256 BLOB NOT NULL UNIQUE CHECK(length(token_sha256) = 32),"
    " created_at INTEGER NOT NULL, revoked_at INTEGER,"
    " rounds_participated INTEGER NOT NULL DEFAULT 0,"
    " updates_accepted INTEGER NOT NULL DEFAULT 0, updates_rejected INTEGER NOT NULL DEFAULT 0,"
    " updates_timed_out INTEGER NOT NULL DEFAULT 0, updates_dropped INTEGER NOT NULL DEFAULT 0,"
    " last_round INTEGER);"
    "CREATE TABLE rounds(id INTEGER PRIMARY KEY CHECK(id > 0), state TEXT NOT NULL CHECK(state IN"
    " ('WAITING','TRAINING','AGGREGATING','COMMITTED','FAILED')), base_version INTEGER,"
    " started_at INTEGER NOT NULL, ended_at INTEGER, config_json TEXT, report_json TEXT,"
    " metrics_json TEXT, failure_reason TEXT);"
    "CREATE TABLE participants(round_id INTEGER NOT NULL REFERENCES rounds(id),"
    " client TEXT NOT NULL, outcome TEXT NOT NULL CHECK(outcome IN"
    " ('accepted','rejected','timed_out','dropped')), reason TEXT,"
    " num_examples INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,"
    " update_sha256 BLOB CHECK(update_sha256 IS NULL OR length(update_sha256) = 32),"
    " metrics_json TEXT, PRIMARY KEY(round_id, client));"
    "CREATE TABLE models(version INTEGER PRIMARY KEY CHECK(version > 0),"
    " parent_version INTEGER REFERENCES models(version),"
    " round_id INTEGER UNIQUE REFERENCES rounds(id),"
    " sha256 BLOB NOT NULL CHECK(length(sha256) = 32),"
    " parent_sha256 BLOB CHECK(parent_sha256 IS NULL OR length(parent_sha256) = 32),"
    " chain_hash BLOB NOT NULL CHECK(length(chain_hash) = 32), tensor_specs_json TEXT NOT NULL,"
    " size INTEGER NOT NULL CHECK(size >= 0),"
    " chunk_size INTEGER NOT NULL CHECK(chunk_size > 0 AND chunk_size <= 16777216),"
    " num_chunks INTEGER NOT NULL CHECK(num_chunks >= 0), created_at INTEGER NOT NULL,"
    " pruned_at INTEGER);"
    "CREATE TABLE model_chunks(version INTEGER NOT NULL REFERENCES models(version),"
    " seq INTEGER NOT NULL CHECK(seq >= 0), data BLOB NOT NULL CHECK(length(data) <= 16777216),"
    " UNIQUE(version, seq));"
    "CREATE TABLE state(version INTEGER PRIMARY KEY REFERENCES models(version), rule_name TEXT,"
    " rule_blob BLOB, optimizer_name TEXT, optimizer_blob BLOB);"
    "PRAGMA application_id = 1178813506; PRAGMA user_version = 1;";

static void test_migrates_from_v1_keeping_data(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "v1");
    exec_raw(path, "PRAGMA journal_mode = WAL;");
    exec_raw(path, V1_SQL);
    exec_raw(path, "INSERT INTO clients(name, token_sha256, created_at) VALUES('old',"
                   " zeroblob(32), 7);"
                   "INSERT INTO rounds(id, state, started_at) VALUES(3, 'TRAINING', 9);");
    store *s = open_small(path, 0);
    assert_int_equal(store_user_version(s), 2);
    assert_int_equal(count_rows(s, "PRAGMA user_version"), 2);
    /* What v2 adds exists and works. */
    assert_int_equal(count_rows(s, "SELECT count(*) FROM sqlite_master WHERE name IN"
                                   " ('events', 'events_no_update', 'events_no_delete',"
                                   " 'participants_by_client')"),
                     4);
    fc_error err = {0};
    assert_int_equal(store_event_append(s, 1, "test", 0, NULL, NULL, &err), FC_OK);
    store_client c;
    assert_int_equal(store_client_by_name(s, "old", &c, &err), FC_OK);
    assert_int_equal(c.created_at, 7);
    store_round r;
    assert_int_equal(store_round_get(s, 3, &r, &err), FC_OK);
    assert_int_equal(r.state, STORE_ROUND_TRAINING);
    store_round_clear(&r);
    store_close(s);
}

static void test_migrates_from_empty_file(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "empty");
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fclose(f);
    store *s = open_small(path, 0);
    assert_int_equal(store_user_version(s), 2);
    store_close(s);
}

static void test_migration_is_refused_on_readonly_open(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "rov1");
    exec_raw(path, V1_SQL);
    uint8_t before[32], after[32];
    file_sha256(path, before);
    store_options opt = {.version = STORE_OPTIONS_V1, .readonly = 1};
    store *s = NULL;
    fc_error err = {0};
    assert_int_equal(store_open(path, &opt, &s, &err), FC_ERR_VERSION);
    assert_null(s);
    assert_non_null(strstr(err.msg, "needs migration"));
    file_sha256(path, after);
    assert_memory_equal(before, after, 32);
}

static void test_missing_file_is_not_found_when_it_must_exist(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "missing");
    store_options opt = {.version = STORE_OPTIONS_V1, .must_exist = 1};
    store *s = NULL;
    fc_error err = {0};
    assert_int_equal(store_open(path, &opt, &s, &err), FC_ERR_NOT_FOUND);
    assert_int_equal(access(path, F_OK), -1);
    opt.chunk_size = STORE_MAX_CHUNK + 1;
    opt.must_exist = 0;
    assert_int_equal(store_open(path, &opt, &s, &err), FC_ERR_RANGE);
    opt.chunk_size = 0;
    opt.version = 99;
    assert_int_equal(store_open(path, &opt, &s, &err), FC_ERR_INVALID);
}

static void refuse_untouched(const char *path, fc_status want, const char *needle) {
    uint8_t before[32], after[32];
    file_sha256(path, before);
    store *s = NULL;
    fc_error err = {0};
    assert_int_equal(store_open(path, NULL, &s, &err), want);
    assert_null(s);
    if (!strstr(err.msg, needle)) fail_msg("error '%s' lacks '%s'", err.msg, needle);
    assert_non_null(strstr(err.msg, path));
    file_sha256(path, after);
    assert_memory_equal(before, after, 32);
}

static void test_newer_schema_is_refused_untouched(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "newer");
    store *s = open_small(path, 0);
    must_commit(s, 1, 300);
    store_close(s);
    exec_raw(path, "PRAGMA user_version = 3");
    refuse_untouched(path, FC_ERR_VERSION, "schema version 3 is newer");
}

static void test_random_bytes_file_is_refused_untouched(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "random");
    uint8_t junk[8192];
    fill_pattern(junk, sizeof junk, 42);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(junk, 1, sizeof junk, f), sizeof junk);
    fclose(f);
    refuse_untouched(path, FC_ERR_FORMAT, "not a fedcoord database");
    /* Shorter than a SQLite header, and plain text. */
    new_path(path, sizeof path, "text");
    f = fopen(path, "wb");
    assert_non_null(f);
    fputs("hello world\n", f);
    fclose(f);
    refuse_untouched(path, FC_ERR_FORMAT, "not a fedcoord database");
}

static void test_other_applications_database_is_refused_untouched(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "foreign");
    exec_raw(path, "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);"
                   "INSERT INTO notes(body) VALUES('hello');");
    refuse_untouched(path, FC_ERR_FORMAT, "not a fedcoord database");
    /* Another application that set its own application_id, even with our table names. */
    new_path(path, sizeof path, "foreign2");
    exec_raw(path, "PRAGMA application_id = 1234; PRAGMA user_version = 2;"
                   "CREATE TABLE models(x);");
    refuse_untouched(path, FC_ERR_FORMAT, "application_id");
    /* A WAL-mode database whose last writer left committed pages in its WAL: a read-write
     * connection closing last would checkpoint them into the main file. */
    new_path(path, sizeof path, "foreign-wal");
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;"
                                      "CREATE TABLE t(x); INSERT INTO t VALUES(1)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    char wal[620];
    snprintf(wal, sizeof wal, "%s-wal", path);
    assert_int_equal(access(wal, F_OK), 0); /* the pages are still in the WAL */
    refuse_untouched(path, FC_ERR_FORMAT, "not a fedcoord database");
    uint8_t wal_before[32], wal_after[32];
    file_sha256(wal, wal_before);
    store *s = NULL;
    fc_error err = {0};
    assert_int_equal(store_open(path, NULL, &s, &err), FC_ERR_FORMAT);
    file_sha256(wal, wal_after);
    assert_memory_equal(wal_before, wal_after, 32);
}

/* A process that dies inside a rollback-journal transaction leaves a hot journal, which a
 * read-only connection cannot roll back. The fedcoord case is a daemon killed while it created
 * its database (before WAL mode is set); found by the SIGKILL crash test. */
static void leave_hot_journal(const char *path, const char *committed_sql) {
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        sqlite3 *db = NULL;
        if (sqlite3_open(path, &db) != SQLITE_OK) _exit(2);
        if (committed_sql && sqlite3_exec(db, committed_sql, NULL, NULL, NULL) != SQLITE_OK)
            _exit(3);
        /* A one-page cache forces the uncommitted pages out to the main file. */
        if (sqlite3_exec(db,
                         "PRAGMA journal_mode = DELETE; PRAGMA cache_size = 1;"
                         "BEGIN; PRAGMA application_id = 1178815554;"
                         "CREATE TABLE junk(x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
                         "SELECT i + 1 FROM n WHERE i < 400) "
                         "INSERT INTO junk SELECT randomblob(2000) FROM n;",
                         NULL, NULL, NULL) != SQLITE_OK)
            _exit(4);
        _exit(0); /* dies mid-transaction: no COMMIT, no close */
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    char journal[620];
    snprintf(journal, sizeof journal, "%s-journal", path);
    assert_int_equal(access(journal, F_OK), 0);
}

static void test_hot_journal_from_a_killed_creator_is_recovered(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "hotjournal");
    leave_hot_journal(path, NULL);
    store *s = NULL;
    fc_error err = {0};
    if (store_open(path, NULL, &s, &err) != FC_OK) fail_msg("open: %s", err.msg);
    must_commit(s, 1, 300);
    assert_int_equal(count_rows(s, "SELECT count(*) FROM sqlite_master WHERE name = 'junk'"), 0);
    store_close(s);
    /* The same wreck over another application's committed database is still refused. */
    new_path(path, sizeof path, "hotjournal-foreign");
    leave_hot_journal(path, "PRAGMA application_id = 1234; CREATE TABLE notes(x);");
    assert_int_equal(store_open(path, NULL, &s, &err), FC_ERR_FORMAT);
    assert_null(s);
    assert_non_null(strstr(err.msg, "not a fedcoord database"));
}

/* ---- clients ---- */

typedef struct name_list {
    char names[8][STORE_NAME_MAX + 1];
    int n;
} name_list;

static fc_status collect_client(void *ud, const store_client *c) {
    name_list *l = ud;
    if (l->n < 8) snprintf(l->names[l->n++], sizeof l->names[0], "%s", c->name);
    return FC_OK;
}

static void test_clients_add_lookup_revoke_list(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "clients");
    store *s = open_small(path, 0);
    fc_error err = {0};
    uint8_t t1[32], t2[32];
    sha256("token-one", 9, t1);
    sha256("token-two", 9, t2);
    int64_t id1 = 0, id2 = 0;
    assert_int_equal(store_client_add(s, "alice", t1, 100, &id1, &err), FC_OK);
    assert_int_equal(store_client_add(s, "bob", t2, 200, &id2, &err), FC_OK);
    assert_true(id2 > id1);
    assert_int_equal(store_client_add(s, "alice", t2, 300, NULL, &err), FC_ERR_EXISTS);
    assert_non_null(strstr(err.msg, "alice"));
    assert_int_equal(store_client_add(s, "carol", t1, 300, NULL, &err), FC_ERR_EXISTS);
    assert_int_equal(store_client_add(s, "", t1, 300, NULL, &err), FC_ERR_INVALID);
    char longname[STORE_NAME_MAX + 2];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(store_client_add(s, longname, t1, 300, NULL, &err), FC_ERR_INVALID);

    store_client c;
    assert_int_equal(store_client_by_token(s, t2, &c, &err), FC_OK);
    assert_string_equal(c.name, "bob");
    assert_int_equal(c.id, id2);
    assert_int_equal(c.created_at, 200);
    assert_int_equal(c.revoked_at, 0);
    assert_memory_equal(c.token_sha256, t2, 32);
    uint8_t t3[32];
    sha256("nope", 4, t3);
    assert_int_equal(store_client_by_token(s, t3, &c, &err), FC_ERR_NOT_FOUND);
    assert_int_equal(store_client_by_name(s, "zed", &c, &err), FC_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "zed"));
    /* Only the hash is stored: the token text appears nowhere in the database. */
    assert_int_equal(count_rows(s, "SELECT count(*) FROM clients WHERE CAST(token_sha256 AS TEXT)"
                                   " LIKE '%token-one%'"),
                     0);

    assert_int_equal(store_client_revoke(s, "alice", 500, &err), FC_OK);
    assert_int_equal(store_client_by_token(s, t1, &c, &err), FC_OK);
    assert_int_equal(c.revoked_at, 500);
    assert_int_equal(store_client_revoke(s, "alice", 600, &err), FC_ERR_STATE);
    assert_int_equal(store_client_revoke(s, "nobody", 600, &err), FC_ERR_NOT_FOUND);

    name_list l = {0};
    assert_int_equal(store_client_list(s, collect_client, &l, &err), FC_OK);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.names[0], "alice");
    assert_string_equal(l.names[1], "bob");
    store_close(s);
}

/* ---- rounds ---- */

typedef struct part_list {
    char client[4][32];
    store_outcome outcome[4];
    char reason[4][64];
    uint64_t examples[4];
    int has_sha[4];
    int n;
} part_list;

static fc_status collect_part(void *ud, const store_participant *p) {
    part_list *l = ud;
    if (l->n >= 4) return FC_ERR_LIMIT;
    snprintf(l->client[l->n], 32, "%s", p->client);
    l->outcome[l->n] = p->outcome;
    snprintf(l->reason[l->n], 64, "%s", p->reason ? p->reason : "");
    l->examples[l->n] = p->num_examples;
    l->has_sha[l->n] = p->update_sha256 != NULL;
    l->n++;
    return FC_OK;
}

static void test_round_lifecycle_and_failure_with_participants(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "rounds");
    store *s = open_small(path, 0);
    fc_error err = {0};
    uint8_t tok[32];
    sha256("t", 1, tok);
    assert_int_equal(store_client_add(s, "alice", tok, 1, NULL, &err), FC_OK);
    assert_int_equal(store_round_begin(s, 1, STORE_ROUND_WAITING, 0, "{\"k\":1}", 10, &err),
                     FC_OK);
    assert_int_equal(store_round_begin(s, 1, STORE_ROUND_WAITING, 0, NULL, 10, &err),
                     FC_ERR_EXISTS);
    assert_int_equal(store_round_begin(s, 2, STORE_ROUND_COMMITTED, 0, NULL, 10, &err),
                     FC_ERR_INVALID);
    assert_int_equal(store_round_begin(s, 0, STORE_ROUND_WAITING, 0, NULL, 10, &err),
                     FC_ERR_INVALID);
    assert_int_equal(store_round_set_state(s, 1, STORE_ROUND_TRAINING, &err), FC_OK);
    assert_int_equal(store_round_set_state(s, 9, STORE_ROUND_TRAINING, &err), FC_ERR_NOT_FOUND);
    assert_int_equal(store_round_set_state(s, 1, STORE_ROUND_FAILED, &err), FC_ERR_INVALID);

    uint8_t usha[32];
    sha256("update", 6, usha);
    store_participant parts[2] = {
        {.client = "alice", .outcome = STORE_OUTCOME_TIMED_OUT},
        {.client = "mtls-subject", .outcome = STORE_OUTCOME_DROPPED, .reason = "disconnected",
         .num_examples = 5, .update_sha256 = usha},
    };
    assert_int_equal(store_round_fail(s, 1, "", parts, 2, 20, &err), FC_ERR_INVALID);
    assert_int_equal(store_round_fail(s, 1, "below quorum: 1 of 2", parts, 2, 20, &err), FC_OK);
    assert_int_equal(store_round_fail(s, 1, "again", NULL, 0, 30, &err), FC_ERR_STATE);
    assert_int_equal(store_round_set_state(s, 1, STORE_ROUND_TRAINING, &err), FC_ERR_STATE);

    store_round r;
    assert_int_equal(store_round_get(s, 1, &r, &err), FC_OK);
    assert_int_equal(r.state, STORE_ROUND_FAILED);
    assert_int_equal(r.started_at, 10);
    assert_int_equal(r.ended_at, 20);
    assert_int_equal(r.model_version, 0);
    assert_string_equal(r.config_json, "{\"k\":1}");
    assert_string_equal(r.failure_reason, "below quorum: 1 of 2");
    assert_null(r.report_json);
    store_round_clear(&r);
    assert_int_equal(store_round_get(s, 77, &r, &err), FC_ERR_NOT_FOUND);

    part_list l = {0};
    assert_int_equal(store_participants_list(s, 1, collect_part, &l, &err), FC_OK);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.client[0], "alice");
    assert_int_equal(l.outcome[0], STORE_OUTCOME_TIMED_OUT);
    assert_string_equal(l.client[1], "mtls-subject");
    assert_int_equal(l.outcome[1], STORE_OUTCOME_DROPPED);
    assert_string_equal(l.reason[1], "disconnected");
    assert_int_equal(l.examples[1], 5);
    assert_true(l.has_sha[1]);
    assert_false(l.has_sha[0]);

    store_client c;
    assert_int_equal(store_client_by_name(s, "alice", &c, &err), FC_OK);
    assert_int_equal(c.rounds_participated, 1);
    assert_int_equal(c.updates_timed_out, 1);
    assert_int_equal(c.updates_accepted, 0);
    assert_int_equal(c.last_round, 1);

    /* A failure for a round never begun creates its record; a bad participant rolls it back. */
    store_participant bad = {.client = "x", .outcome = (store_outcome)9};
    assert_int_equal(store_round_fail(s, 2, "r", &bad, 1, 40, &err), FC_ERR_INVALID);
    assert_int_equal(store_round_get(s, 2, &r, &err), FC_ERR_NOT_FOUND);
    store_participant dup[2] = {{.client = "x", .outcome = STORE_OUTCOME_ACCEPTED},
                                {.client = "x", .outcome = STORE_OUTCOME_ACCEPTED}};
    assert_int_equal(store_round_fail(s, 2, "r", dup, 2, 40, &err), FC_ERR_EXISTS);
    assert_int_equal(store_round_get(s, 2, &r, &err), FC_ERR_NOT_FOUND);
    assert_int_equal(store_round_fail(s, 2, "deadline", NULL, 0, 40, &err), FC_OK);
    assert_int_equal(store_round_get(s, 2, &r, &err), FC_OK);
    assert_int_equal(r.state, STORE_ROUND_FAILED);
    store_round_clear(&r);
    store_close(s);
}

/* An evaluation round ends COMMITTED without a model: metrics and participants in one
 * transaction; verify accepts it (its config says kind evaluate) but still flags a committed
 * training round without a model. */
static void test_evaluation_round_commits_without_a_model(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "evalround");
    store *s = open_small(path, 64);
    fc_error err = {0};
    must_commit(s, 1, 100);
    store_participant parts[1] = {{.client = "alice", .outcome = STORE_OUTCOME_ACCEPTED,
                                   .num_examples = 7, .metrics_json = "{\"accuracy\":0.5}"}};
    const char *cfg = "{\"kind\":\"evaluate\",\"model_version\":1}";
    assert_int_equal(store_round_begin(s, 2, STORE_ROUND_TRAINING, 1, cfg, 50, &err), FC_OK);
    assert_int_equal(store_round_commit_eval(s, 2, 1, cfg, "{\"accuracy\":0.5}", parts, 1, 50,
                                             60, &err),
                     FC_OK);
    assert_int_equal(store_round_commit_eval(s, 2, 1, cfg, NULL, NULL, 0, 50, 70, &err),
                     FC_ERR_STATE);
    store_round r;
    assert_int_equal(store_round_get(s, 2, &r, &err), FC_OK);
    assert_int_equal(r.state, STORE_ROUND_COMMITTED);
    assert_int_equal(r.base_version, 1);
    assert_int_equal(r.model_version, 0);
    assert_int_equal(r.ended_at, 60);
    assert_string_equal(r.metrics_json, "{\"accuracy\":0.5}");
    store_round_clear(&r);
    part_list l = {0};
    assert_int_equal(store_participants_list(s, 2, collect_part, &l, &err), FC_OK);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.examples[0], 7);
    assert_int_equal(store_verify(s, NULL, &err), FC_OK);
    /* a training round marked committed without a model is still caught */
    assert_int_equal(store_round_commit_eval(s, 3, 1, "{\"kind\":\"train\"}", NULL, NULL, 0, 80,
                                             90, &err),
                     FC_OK);
    assert_int_equal(store_verify(s, NULL, &err), FC_ERR_CORRUPT);
    assert_non_null(strstr(err.msg, "round 3 is COMMITTED but has no model"));
    store_close(s);
}

/* ---- commit and reads ---- */

static void test_commit_round_writes_model_round_participants_and_state(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "commit");
    store *s = open_small(path, 64);
    fc_error err = {0};
    uint8_t tok[32];
    sha256("a", 1, tok);
    assert_int_equal(store_client_add(s, "alice", tok, 1, NULL, &err), FC_OK);
    must_commit(s, 1, 1000); /* initial model, no round */
    assert_int_equal(store_round_begin(s, 1, STORE_ROUND_TRAINING, 1, NULL, 1000, &err), FC_OK);
    uint8_t data[1000];
    assert_int_equal(commit_version(s, 2, sizeof data, data, &err), FC_OK);

    int64_t latest = 0;
    assert_int_equal(store_latest_version(s, &latest, &err), FC_OK);
    assert_int_equal(latest, 2);
    store_model_info m;
    assert_int_equal(store_model_info_get(s, 2, &m, &err), FC_OK);
    uint8_t want_sha[32];
    sha256(data, sizeof data, want_sha);
    assert_memory_equal(m.sha256, want_sha, 32);
    assert_int_equal(m.parent_version, 1);
    assert_int_equal(m.round_id, 1);
    assert_int_equal(m.size, 1000);
    assert_int_equal(m.chunk_size, 64);
    assert_int_equal(m.num_chunks, 16); /* ceil(1000 / 64) */
    assert_string_equal(m.tensor_specs_json, SPECS);
    store_model_info p;
    assert_int_equal(store_model_info_get(s, 1, &p, &err), FC_OK);
    assert_memory_equal(m.parent_sha256, p.sha256, 32);
    uint8_t chain[32];
    store_chain_hash(p.chain_hash, 2, 1, 1, want_sha, 1000, SPECS, chain);
    assert_memory_equal(m.chain_hash, chain, 32);
    store_model_info_clear(&p);
    store_model_info_clear(&m);
    assert_int_equal(store_model_info_get(s, 3, &m, &err), FC_ERR_NOT_FOUND);

    store_state st;
    assert_int_equal(store_state_get(s, 2, &st, &err), FC_OK);
    assert_string_equal(st.rule_name, "fedavg");
    assert_string_equal(st.optimizer_name, "sgd");
    assert_int_equal(st.rule_state_len, strlen("rule-state-2"));
    assert_memory_equal(st.rule_state, "rule-state-2", st.rule_state_len);
    assert_memory_equal(st.optimizer_state, "opt-state-2", st.optimizer_state_len);
    store_state_clear(&st);

    store_round r;
    assert_int_equal(store_round_get(s, 1, &r, &err), FC_OK);
    assert_int_equal(r.state, STORE_ROUND_COMMITTED);
    assert_int_equal(r.model_version, 2);
    assert_int_equal(r.base_version, 1);
    assert_int_equal(r.started_at, 1000); /* from store_round_begin, not overwritten */
    assert_int_equal(r.ended_at, 2500);
    assert_string_equal(r.report_json, "{\"selected\":[\"alice\"]}");
    assert_string_equal(r.metrics_json, "{\"loss\":0.5}");
    assert_string_equal(r.config_json, "{\"lr\":0.1}");
    store_round_clear(&r);

    part_list l = {0};
    assert_int_equal(store_participants_list(s, 1, collect_part, &l, &err), FC_OK);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.outcome[1], STORE_OUTCOME_REJECTED);
    assert_string_equal(l.reason[1], "norm too large");
    store_client c;
    assert_int_equal(store_client_by_name(s, "alice", &c, &err), FC_OK);
    assert_int_equal(c.updates_accepted, 1);
    assert_int_equal(c.rounds_participated, 1);

    /* Full read returns the same bytes, hash-checked. */
    uint8_t back[1000];
    mem_sink sink = {.data = back, .cap = sizeof back};
    assert_int_equal(store_model_read(s, 2, 0, mem_write, &sink, &err), FC_OK);
    assert_int_equal(sink.len, 1000);
    assert_int_equal(sink.calls, 16); /* one call per chunk */
    assert_memory_equal(back, data, 1000);

    /* Committing the same round again is refused. */
    assert_int_equal(commit_version(s, 3, 10, NULL, &err), FC_OK); /* round 2 */
    store_commit again = {.round_id = 2, .version = 4, .parent_version = 3,
                          .tensor_specs_json = "[]", .source = mem_read};
    mem_source empty = {0};
    again.source_ud = &empty;
    assert_int_equal(store_commit_round(s, &again, NULL, &err), FC_ERR_STATE);
    assert_non_null(strstr(err.msg, "already COMMITTED"));
    store_close(s);
}

static void test_failed_commits_leave_nothing_behind(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "atomic");
    store *s = open_small(path, 64);
    fc_error err = {0};
    must_commit(s, 1, 500);
    must_commit(s, 2, 500);
    int64_t chunks = count_rows(s, "SELECT count(*) FROM model_chunks");
    int64_t events = count_rows(s, "SELECT count(*) FROM events");
    uint8_t data[1000];
    fill_pattern(data, sizeof data, 3);
    store_participant dup[2] = {{.client = "x", .outcome = STORE_OUTCOME_ACCEPTED},
                                {.client = "x", .outcome = STORE_OUTCOME_ACCEPTED}};
    uint8_t wrong_sha[32] = {1};
    struct {
        const char *what;
        int64_t version, parent;
        size_t declared, fail_at;
        const uint8_t *expect;
        const store_participant *parts;
        size_t nparts;
        fc_status want;
    } cases[] = {
        {"version not newer", 2, 1, 1000, 0, NULL, NULL, 0, FC_ERR_INVALID},
        {"missing parent", 3, 0, 1000, 0, NULL, NULL, 0, FC_OK},
        {"parent absent", 5, 4, 1000, 0, NULL, NULL, 0, FC_ERR_INVALID},
        {"source shorter than declared", 3, 2, 1001, 0, NULL, NULL, 0, FC_ERR_FORMAT},
        {"source longer than declared", 3, 2, 999, 0, NULL, NULL, 0, FC_ERR_FORMAT},
        {"source fails midway", 3, 2, 1000, 640, NULL, NULL, 0, FC_ERR_IO},
        {"expected hash differs", 3, 2, 1000, 0, wrong_sha, NULL, 0, FC_ERR_HASH},
        {"participant listed twice", 3, 2, 1000, 0, NULL, dup, 2, FC_ERR_EXISTS},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (cases[i].want == FC_OK) continue; /* parent 0 is legal: a fresh lineage */
        mem_source src = {.data = data, .len = 1000, .step = 33, .fail_at = cases[i].fail_at};
        store_commit c = {.round_id = 10, .version = cases[i].version,
                          .parent_version = cases[i].parent, .tensor_specs_json = SPECS,
                          .model_size = cases[i].declared, .source = mem_read,
                          .source_ud = &src, .expected_sha256 = cases[i].expect,
                          .participants = cases[i].parts, .num_participants = cases[i].nparts};
        fc_status st = store_commit_round(s, &c, NULL, &err);
        if (st != cases[i].want)
            fail_msg("%s: got %s (%s)", cases[i].what, fc_status_name(st), err.msg);
        assert_non_null(strstr(err.msg, "round 10 not committed"));
        int64_t latest = 0;
        assert_int_equal(store_latest_version(s, &latest, &err), FC_OK);
        assert_int_equal(latest, 2);
        assert_int_equal(count_rows(s, "SELECT count(*) FROM model_chunks"), chunks);
        assert_int_equal(count_rows(s, "SELECT count(*) FROM rounds WHERE id = 10"), 0);
        assert_int_equal(count_rows(s, "SELECT count(*) FROM participants WHERE round_id = 10"),
                         0);
        assert_int_equal(count_rows(s, "SELECT count(*) FROM state WHERE version = 3"), 0);
        assert_int_equal(count_rows(s, "SELECT count(*) FROM events"), events);
    }
    /* The connection is still usable and the chain intact. */
    must_commit(s, 3, 1000);
    assert_int_equal(store_verify(s, NULL, &err), FC_OK);
    store_close(s);
}

/* store_commit.sha256: the caller's hash of the same bytes replaces the store's own. The version
 * records exactly that hash (and reads verify against it); a failing callback aborts the commit
 * with its error and leaves the store as it was. */
typedef struct given_hash {
    const uint8_t *data;
    size_t len;
    int fail;
    int calls;
} given_hash;

static fc_status give_hash(void *ud, uint8_t out[STORE_SHA256_LEN], fc_error *err) {
    given_hash *g = ud;
    g->calls++;
    if (g->fail) return fc_error_set(err, FC_ERR_SYSTEM, "test hash failed");
    unsigned int n = 0;
    assert_int_equal(EVP_Digest(g->data, g->len, out, &n, EVP_sha256(), NULL), 1);
    return FC_OK;
}

static void test_commit_takes_the_callers_hash(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "givenhash");
    store *s = open_small(path, 300);
    fc_error err = {0};
    uint8_t data[1000], want[32];
    fill_pattern(data, sizeof data, 7);
    unsigned int n = 0;
    assert_int_equal(EVP_Digest(data, sizeof data, want, &n, EVP_sha256(), NULL), 1);
    for (int pass = 0; pass < 2; pass++) {
        mem_source src = {.data = data, .len = sizeof data, .step = 100};
        given_hash g = {.data = data, .len = sizeof data, .fail = pass == 0};
        store_commit c = {.version = 1, .tensor_specs_json = SPECS, .model_size = sizeof data,
                          .source = mem_read, .source_ud = &src, .sha256 = give_hash,
                          .sha256_ud = &g, .ended_at = 5};
        store_commit_result res;
        fc_status st = store_commit_round(s, &c, &res, &err);
        assert_int_equal(g.calls, 1);
        int64_t latest = -1;
        assert_int_equal(store_latest_version(s, &latest, &err), FC_OK);
        if (pass == 0) {
            assert_int_equal(st, FC_ERR_SYSTEM);
            assert_non_null(strstr(err.msg, "SHA-256 of version 1: test hash failed"));
            assert_int_equal(latest, 0);
            continue;
        }
        assert_int_equal(st, FC_OK);
        assert_memory_equal(res.sha256, want, 32);
        assert_int_equal(latest, 1);
    }
    uint8_t back[1000];
    mem_sink sink = {.data = back, .cap = sizeof back};
    assert_int_equal(store_model_read(s, 1, 0, mem_write, &sink, &err), FC_OK);
    assert_memory_equal(back, data, sizeof data);
    assert_int_equal(store_verify(s, NULL, &err), FC_OK);
    store_close(s);
}

static void test_commit_result_and_empty_model(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "empty-model");
    store *s = open_small(path, 64);
    fc_error err = {0};
    mem_source src = {0};
    uint8_t want[32];
    sha256("", 0, want);
    store_commit c = {.version = 1, .tensor_specs_json = "[]", .source = mem_read,
                      .source_ud = &src, .expected_sha256 = want};
    store_commit_result res;
    assert_int_equal(store_commit_round(s, &c, &res, &err), FC_OK);
    assert_memory_equal(res.sha256, want, 32);
    assert_int_equal(res.num_chunks, 0);
    mem_sink sink = {.data = NULL, .cap = 0};
    assert_int_equal(store_model_read(s, 1, 0, mem_write, &sink, &err), FC_OK);
    assert_int_equal(sink.calls, 0);
    assert_int_equal(store_verify(s, NULL, &err), FC_OK);
    store_close(s);
}

static void test_reads_resume_from_any_offset(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "offset");
    store *s = open_small(path, 64);
    fc_error err = {0};
    uint8_t data[1000];
    assert_int_equal(commit_version(s, 1, sizeof data, data, &err), FC_OK);
    const uint64_t offsets[] = {1, 63, 64, 65, 500, 959, 960, 999, 1000};
    for (size_t i = 0; i < sizeof offsets / sizeof offsets[0]; i++) {
        uint8_t back[1000];
        mem_sink sink = {.data = back, .cap = sizeof back};
        assert_int_equal(store_model_read(s, 1, offsets[i], mem_write, &sink, &err), FC_OK);
        assert_int_equal(sink.len, 1000 - offsets[i]);
        if (sink.len) {
            assert_int_equal(sink.first_offset, offsets[i]);
            assert_memory_equal(back, data + offsets[i], sink.len);
        }
    }
    mem_sink sink = {.data = NULL, .cap = 0};
    assert_int_equal(store_model_read(s, 1, 1001, mem_write, &sink, &err), FC_ERR_RANGE);
    assert_int_equal(store_model_read(s, 9, 0, mem_write, &sink, &err), FC_ERR_NOT_FOUND);
    /* A sink error stops the read and comes back unchanged. */
    uint8_t back[1000];
    mem_sink failing = {.data = back, .cap = sizeof back, .fail_after = 3};
    assert_int_equal(store_model_read(s, 1, 0, mem_write, &failing, &err), FC_ERR_CLOSED);
    assert_int_equal(failing.calls, 3);
    store_close(s);
}

static void test_range_reads_return_exactly_the_bytes_asked(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "range");
    store *s = open_small(path, 64);
    fc_error err = {0};
    uint8_t data[1000];
    assert_int_equal(commit_version(s, 1, sizeof data, data, &err), FC_OK);
    /* {offset, length, bytes expected} worked out from size 1000 and 64-byte chunks. */
    const uint64_t cases[][3] = {
        {0, 64, 64},    {0, 1, 1},       {63, 2, 2},   {64, 64, 64},  {100, 300, 300},
        {960, 40, 40},  {960, 100, 40},  {999, 5, 1},  {1000, 5, 0},  {500, 0, 500},
        {0, 1000, 1000}, {0, 0, 1000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t back[1000];
        mem_sink sink = {.data = back, .cap = sizeof back};
        assert_int_equal(store_model_read_range(s, 1, cases[i][0], cases[i][1], mem_write, &sink,
                                                &err),
                         FC_OK);
        assert_int_equal(sink.len, cases[i][2]);
        if (sink.len) {
            assert_int_equal(sink.first_offset, cases[i][0]);
            assert_memory_equal(back, data + cases[i][0], sink.len);
        }
    }
    /* Chunk-aligned range reads touch only their chunks: corrupting chunk 3 breaks the whole
     * read (hash) and the range over it (the hash is not checked there, but the length is), not
     * the range before it. */
    assert_int_equal(sqlite3_exec(s->db, "UPDATE model_chunks SET data = X'00' WHERE version = 1"
                                         " AND seq = 3",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    uint8_t back[1000];
    mem_sink a = {.data = back, .cap = sizeof back};
    assert_int_equal(store_model_read_range(s, 1, 0, 192, mem_write, &a, &err), FC_OK);
    mem_sink b = {.data = back, .cap = sizeof back};
    assert_int_equal(store_model_read_range(s, 1, 150, 100, mem_write, &b, &err), FC_ERR_CORRUPT);
    assert_non_null(strstr(err.msg, "chunk 3 has 1 bytes, expected 64"));
    mem_sink c = {.data = back, .cap = sizeof back};
    assert_int_equal(store_model_read_range(s, 1, 0, 1000, mem_write, &c, &err), FC_ERR_CORRUPT);
    store_close(s);
}

static void test_corrupted_chunk_is_detected_on_full_read(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "corrupt");
    store *s = open_small(path, 64);
    fc_error err = {0};
    must_commit(s, 1, 1000);
    must_commit(s, 2, 1000);
    /* Same length, one byte flipped: only the SHA-256 can tell. */
    assert_int_equal(sqlite3_exec(s->db,
                                  "UPDATE model_chunks SET data = CAST(X'00' || substr(data, 2)"
                                  " AS BLOB) WHERE version = 2 AND seq = 5",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(count_rows(s, "SELECT length(data) FROM model_chunks WHERE version = 2 AND"
                                   " seq = 5"),
                     64);
    uint8_t back[1000];
    mem_sink sink = {.data = back, .cap = sizeof back};
    assert_int_equal(store_model_read(s, 2, 0, mem_write, &sink, &err), FC_ERR_CORRUPT);
    assert_non_null(strstr(err.msg, "model version 2: data hashes to"));
    assert_int_equal(store_verify(s, NULL, &err), FC_ERR_CORRUPT);
    assert_non_null(strstr(err.msg, "model version 2"));
    /* Version 1 is unaffected. */
    mem_sink ok = {.data = back, .cap = sizeof back};
    assert_int_equal(store_model_read(s, 1, 0, mem_write, &ok, &err), FC_OK);
    /* A missing chunk and a short chunk are named precisely. */
    assert_int_equal(sqlite3_exec(s->db, "DELETE FROM model_chunks WHERE version = 1 AND seq = 7",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    mem_sink miss = {.data = back, .cap = sizeof back};
    assert_int_equal(store_model_read(s, 1, 0, mem_write, &miss, &err), FC_ERR_CORRUPT);
    assert_non_null(strstr(err.msg, "chunk 7 missing"));
    assert_int_equal(sqlite3_exec(s->db, "UPDATE model_chunks SET data = X'0102' WHERE version = 2"
                                         " AND seq = 0",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    mem_sink shortread = {.data = back, .cap = sizeof back};
    assert_int_equal(store_model_read(s, 2, 100, mem_write, &shortread, &err), FC_OK);
    assert_int_equal(store_model_read(s, 2, 10, mem_write, &shortread, &err), FC_ERR_CORRUPT);
    assert_non_null(strstr(err.msg, "chunk 0 has 2 bytes, expected 64"));
    store_close(s);
}

typedef struct id_list {
    int64_t ids[16];
    int64_t extra[16];
    int n;
} id_list;

static fc_status collect_round(void *ud, const store_round *r) {
    id_list *l = ud;
    if (l->n >= 16) return FC_ERR_LIMIT;
    l->ids[l->n] = r->id;
    l->extra[l->n++] = r->model_version;
    assert_string_equal(r->metrics_json, "{\"loss\":0.5}");
    return FC_OK;
}

static fc_status collect_model(void *ud, const store_model_info *m) {
    id_list *l = ud;
    if (l->n >= 16) return FC_ERR_LIMIT;
    l->ids[l->n] = m->version;
    l->extra[l->n++] = m->parent_version;
    assert_string_equal(m->tensor_specs_json, SPECS);
    return FC_OK;
}

static fc_status stop_at_second(void *ud, const store_model_info *m) {
    (void)m;
    return ++*(int *)ud == 2 ? FC_ERR_CLOSED : FC_OK;
}

static void test_rounds_and_models_are_listed_in_order_with_paging(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "lists");
    store *s = open_small(path, 64);
    fc_error err = {0};
    for (int64_t v = 1; v <= 6; v++) must_commit(s, v, 100); /* rounds 1..5 */
    id_list rounds = {0};
    assert_int_equal(store_round_list(s, 0, 0, collect_round, &rounds, &err), FC_OK);
    assert_int_equal(rounds.n, 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(rounds.ids[i], i + 1);
        assert_int_equal(rounds.extra[i], i + 2); /* round r committed version r + 1 */
    }
    id_list page = {0};
    assert_int_equal(store_round_list(s, 2, 2, collect_round, &page, &err), FC_OK);
    assert_int_equal(page.n, 2);
    assert_int_equal(page.ids[0], 3);
    assert_int_equal(page.ids[1], 4);
    id_list models = {0};
    assert_int_equal(store_model_list(s, 4, 0, collect_model, &models, &err), FC_OK);
    assert_int_equal(models.n, 2);
    assert_int_equal(models.ids[0], 5);
    assert_int_equal(models.extra[0], 4);
    assert_int_equal(models.ids[1], 6);
    int calls = 0;
    assert_int_equal(store_model_list(s, 0, 0, stop_at_second, &calls, &err), FC_ERR_CLOSED);
    assert_int_equal(calls, 2);
    /* The statement was reset: the next call works. */
    id_list all = {0};
    assert_int_equal(store_model_list(s, 0, 3, collect_model, &all, &err), FC_OK);
    assert_int_equal(all.n, 3);
    store_close(s);
}

/* ---- retention ---- */

static void test_retention_keeps_last_k_every_mth_newest_and_pinned(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "retain");
    store *s = open_small(path, 64);
    fc_error err = {0};
    for (int64_t v = 1; v <= 10; v++) must_commit(s, v, 200);
    uint64_t pruned = 0;
    /* keep_last 2 -> 10, 9; every 4th -> 4, 8; pinned -> 3. Pruned: 1, 2, 5, 6, 7. */
    assert_int_equal(store_prune(s, 2, 4, 3, 99, &pruned, &err), FC_OK);
    assert_int_equal(pruned, 5);
    const int expect_data[11] = {0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1};
    for (int64_t v = 1; v <= 10; v++) {
        store_model_info m;
        assert_int_equal(store_model_info_get(s, v, &m, &err), FC_OK); /* metadata stays */
        assert_int_equal(m.pruned_at == 0, expect_data[v]);
        store_model_info_clear(&m);
        uint8_t back[200];
        mem_sink sink = {.data = back, .cap = sizeof back};
        store_state st;
        if (expect_data[v]) {
            assert_int_equal(store_model_read(s, v, 0, mem_write, &sink, &err), FC_OK);
            assert_int_equal(store_state_get(s, v, &st, &err), FC_OK);
            store_state_clear(&st);
        } else {
            assert_int_equal(store_model_read(s, v, 0, mem_write, &sink, &err), FC_ERR_STATE);
            assert_int_equal(store_state_get(s, v, &st, &err), FC_ERR_NOT_FOUND);
        }
    }
    assert_int_equal(count_rows(s, "SELECT count(DISTINCT version) FROM model_chunks"), 5);
    /* The chain still verifies over pruned links. */
    store_verify_report rep;
    assert_int_equal(store_verify(s, &rep, &err), FC_OK);
    assert_int_equal(rep.versions, 10);
    assert_int_equal(rep.versions_with_data, 5);
    /* Idempotent. */
    assert_int_equal(store_prune(s, 2, 4, 3, 99, &pruned, &err), FC_OK);
    assert_int_equal(pruned, 0);
    /* keep_last 0, nothing else: only the newest survives. */
    assert_int_equal(store_prune(s, 0, 0, 0, 100, &pruned, &err), FC_OK);
    assert_int_equal(pruned, 4); /* 3, 4, 8, 9 */
    assert_int_equal(count_rows(s, "SELECT group_concat(version) FROM (SELECT DISTINCT version"
                                   " FROM model_chunks)"),
                     10);
    assert_int_equal(store_verify(s, NULL, &err), FC_OK);
    /* The next commit builds on the newest as usual. */
    must_commit(s, 11, 200);
    assert_int_equal(count_rows(s, "SELECT count(*) FROM events WHERE kind = 'models.pruned'"),
                     2);
    store_close(s);
}

/* ---- audit chain ---- */

static void build_chain(const char *path) {
    store *s = open_small(path, 64);
    for (int64_t v = 1; v <= 5; v++) must_commit(s, v, 300);
    store_close(s);
}

static void expect_broken(const char *tamper_sql, const char *needle) {
    char path[600];
    new_path(path, sizeof path, "chain");
    build_chain(path);
    store *s = open_small(path, 64);
    fc_error err = {0};
    assert_int_equal(store_verify(s, NULL, &err), FC_OK);
    char *msg = NULL;
    if (sqlite3_exec(s->db, tamper_sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("tamper: %s", msg);
    assert_int_equal(store_verify(s, NULL, &err), FC_ERR_CORRUPT);
    if (!strstr(err.msg, needle)) fail_msg("'%s' does not contain '%s'", err.msg, needle);
    store_close(s);
}

static void test_verify_detects_tampered_rows(void **state) {
    (void)state;
    /* The data hash of version 3 rewritten: its own chain hash no longer matches. */
    expect_broken("UPDATE models SET sha256 = randomblob(32) WHERE version = 3",
                  "model version 3: chain hash");
    /* The parent hash recorded by version 4 changed. */
    expect_broken("UPDATE models SET parent_sha256 = randomblob(32) WHERE version = 4",
                  "model version 4: recorded parent hash");
    /* Tensor specs altered. */
    expect_broken("UPDATE models SET tensor_specs_json = '[]' WHERE version = 2",
                  "model version 2: chain hash");
    /* A forged chain hash on version 2 breaks version 2 (first link) already. */
    expect_broken("UPDATE models SET chain_hash = randomblob(32) WHERE version = 2",
                  "model version 2: chain hash");
    /* Data and both hashes replaced consistently for version 5 still break: its chain hash is
     * bound to version 4's. Here only data changes: the data hash catches it. */
    expect_broken("UPDATE model_chunks SET data = randomblob(64) WHERE version = 5 AND seq = 0",
                  "model version 5: data hashes to");
    /* State deleted from a live version. */
    expect_broken("DELETE FROM state WHERE version = 4", "model version 4: its state row");
    /* A committed round whose model row was deleted (with its dependants). */
    expect_broken("PRAGMA foreign_keys = OFF; DELETE FROM model_chunks WHERE version = 5;"
                  " DELETE FROM state WHERE version = 5; DELETE FROM models WHERE version = 5",
                  "round 4 is COMMITTED but has no model");
    /* A round moved back to running under its model. */
    expect_broken("UPDATE rounds SET state = 'TRAINING' WHERE id = 2",
                  "model version 3: its round 2 is TRAINING");
}

static void test_verify_print_reports_ok_and_first_broken_link(void **state) {
    (void)state;
    char path[600], out_path[700];
    new_path(path, sizeof path, "print");
    build_chain(path);
    snprintf(out_path, sizeof out_path, "%s.txt", path);
    FILE *out = fopen(out_path, "w+");
    assert_non_null(out);
    fc_error err = {0};
    assert_int_equal(store_verify_print(path, out, &err), FC_OK);
    char text[2048] = {0};
    rewind(out);
    size_t n = fread(text, 1, sizeof text - 1, out);
    text[n] = '\0';
    assert_non_null(strstr(text, "integrity_check: ok"));
    assert_non_null(strstr(text, "model versions: 5 (5 with data, 25 chunks"));
    assert_non_null(strstr(text, "head: version 5"));
    assert_non_null(strstr(text, "result: OK"));
    exec_raw(path, "UPDATE models SET size = size WHERE version = 1;"
                   "UPDATE models SET round_id = NULL WHERE version = 3");
    rewind(out);
    assert_int_equal(ftruncate(fileno(out), 0), 0);
    assert_int_equal(store_verify_print(path, out, &err), FC_ERR_CORRUPT);
    fflush(out);
    rewind(out);
    n = fread(text, 1, sizeof text - 1, out);
    text[n] = '\0';
    assert_non_null(strstr(text, "result: BROKEN: model version 3: chain hash"));
    fclose(out);
}

/* ---- events ---- */

typedef struct event_list {
    int64_t ids[16];
    char kinds[16][32];
    int n;
} event_list;

static fc_status collect_event(void *ud, const store_event *e) {
    event_list *l = ud;
    if (l->n >= 16) return FC_ERR_LIMIT;
    l->ids[l->n] = e->id;
    snprintf(l->kinds[l->n], 32, "%s", e->kind);
    l->n++;
    return FC_OK;
}

static void test_events_are_append_only_and_listed_in_order(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "events");
    store *s = open_small(path, 0);
    fc_error err = {0};
    assert_int_equal(store_event_append(s, 1, "a", 0, NULL, NULL, &err), FC_OK);
    assert_int_equal(store_event_append(s, 2, "b", 4, "alice", "{\"x\":1}", &err), FC_OK);
    assert_int_equal(store_event_append(s, 3, "c", 0, NULL, NULL, &err), FC_OK);
    assert_int_equal(store_event_append(s, 4, "", 0, NULL, NULL, &err), FC_ERR_INVALID);
    event_list l = {0};
    assert_int_equal(store_event_list(s, 0, 0, collect_event, &l, &err), FC_OK);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.kinds[0], "a");
    assert_string_equal(l.kinds[2], "c");
    event_list after = {0};
    assert_int_equal(store_event_list(s, l.ids[0], 1, collect_event, &after, &err), FC_OK);
    assert_int_equal(after.n, 1);
    assert_string_equal(after.kinds[0], "b");
    char *msg = NULL;
    assert_int_not_equal(sqlite3_exec(s->db, "UPDATE events SET kind = 'z'", NULL, NULL, &msg),
                         SQLITE_OK);
    assert_non_null(strstr(msg, "append-only"));
    sqlite3_free(msg);
    assert_int_not_equal(sqlite3_exec(s->db, "DELETE FROM events", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(count_rows(s, "SELECT count(*) FROM events"), 3);
    store_close(s);
}

static void test_client_changes_are_audited_in_the_same_transaction(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "audit");
    store *s = open_small(path, 0);
    fc_error err = {0};
    uint8_t h1[32], h2[32], h3[32];
    memset(h1, 1, sizeof h1);
    memset(h2, 2, sizeof h2);
    memset(h3, 3, sizeof h3);
    assert_int_equal(store_client_add(s, "alice", h1, 10, NULL, &err), FC_OK);
    assert_int_equal(store_client_revoke(s, "alice", 20, &err), FC_OK);
    assert_int_equal(store_client_add(s, "erin", h3, 25, NULL, &err), FC_OK);
    /* Refused changes leave no event behind. */
    assert_int_equal(store_client_add(s, "alice", h2, 30, NULL, &err), FC_ERR_EXISTS);
    assert_int_equal(store_client_revoke(s, "alice", 40, &err), FC_ERR_STATE);
    assert_int_equal(store_client_revoke(s, "bob", 50, &err), FC_ERR_NOT_FOUND);
    event_list l = {0};
    assert_int_equal(store_event_list(s, 0, 0, collect_event, &l, &err), FC_OK);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.kinds[0], "client.added");
    assert_string_equal(l.kinds[1], "client.revoked");
    assert_string_equal(l.kinds[2], "client.added");
    assert_int_equal(count_rows(s, "SELECT count(*) FROM events WHERE client = 'alice'"), 2);
    /* When the audit insert fails, the credential change is rolled back with it. */
    assert_int_equal(sqlite3_exec(s->db,
                                  "CREATE TEMP TRIGGER no_events BEFORE INSERT ON events "
                                  "BEGIN SELECT RAISE(ABORT, 'audit log unavailable'); END",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_not_equal(store_client_add(s, "carol", h2, 60, NULL, &err), FC_OK);
    store_client c;
    assert_int_equal(store_client_by_name(s, "carol", &c, &err), FC_ERR_NOT_FOUND);
    assert_int_not_equal(store_client_revoke(s, "erin", 70, &err), FC_OK);
    assert_int_equal(store_client_by_name(s, "erin", &c, &err), FC_OK);
    assert_int_equal(c.revoked_at, 0);
    store_close(s);
}

/* ---- recovery ---- */

static void test_recover_fails_interrupted_rounds_and_returns_latest_state(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "recover");
    store *s = open_small(path, 64);
    fc_error err = {0};
    store_recovery rec;
    assert_int_equal(store_recover(s, 5, &rec, &err), FC_OK); /* empty database */
    assert_int_equal(rec.latest_version, 0);
    assert_int_equal(rec.rounds_failed, 0);
    store_recovery_clear(&rec);
    must_commit(s, 1, 300);
    must_commit(s, 2, 300);
    assert_int_equal(store_round_begin(s, 2, STORE_ROUND_AGGREGATING, 2, NULL, 7, &err), FC_OK);
    store_close(s);

    s = open_small(path, 64);
    assert_int_equal(store_recover(s, 9, &rec, &err), FC_OK);
    assert_int_equal(rec.rounds_failed, 1);
    assert_int_equal(rec.latest_version, 2);
    assert_int_equal(rec.last_round, 2);
    assert_string_equal(rec.state.rule_name, "fedavg");
    assert_memory_equal(rec.state.rule_state, "rule-state-2", strlen("rule-state-2"));
    assert_memory_equal(rec.state.optimizer_state, "opt-state-2", strlen("opt-state-2"));
    store_recovery_clear(&rec);
    store_round r;
    assert_int_equal(store_round_get(s, 2, &r, &err), FC_OK);
    assert_int_equal(r.state, STORE_ROUND_FAILED);
    assert_int_equal(r.ended_at, 9);
    assert_string_equal(r.failure_reason, "coordinator restarted");
    store_round_clear(&r);
    assert_int_equal(store_round_get(s, 1, &r, &err), FC_OK);
    assert_int_equal(r.state, STORE_ROUND_COMMITTED); /* untouched */
    store_round_clear(&r);
    assert_int_equal(store_recover(s, 10, &rec, &err), FC_OK);
    assert_int_equal(rec.rounds_failed, 0);
    store_recovery_clear(&rec);
    store_close(s);
}

/* ---- writer thread ---- */

typedef struct commit_job {
    int64_t version;
    size_t len;
} commit_job;

static fc_status run_commit_job(store *s, void *ud, fc_error *err) {
    commit_job *j = ud;
    return commit_version(s, j->version, j->len, NULL, err);
}

typedef struct done_log {
    pthread_mutex_t mu;
    int64_t order[64];
    fc_status st[64];
    int n;
} done_log;

typedef struct done_arg {
    done_log *log;
    int64_t version;
} done_arg;

static void on_done(void *ud, fc_status st, const fc_error *err) {
    (void)err;
    done_arg *a = ud;
    pthread_mutex_lock(&a->log->mu);
    a->log->order[a->log->n] = a->version;
    a->log->st[a->log->n] = st;
    a->log->n++;
    pthread_mutex_unlock(&a->log->mu);
}

typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int open, entered;
} gate;

static fc_status wait_gate(store *s, void *ud, fc_error *err) {
    (void)s;
    (void)err;
    gate *g = ud;
    pthread_mutex_lock(&g->mu);
    g->entered = 1;
    pthread_cond_broadcast(&g->cv);
    while (!g->open) pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    return FC_OK;
}

static fc_status leave_tx_open(store *s, void *ud, fc_error *err) {
    (void)ud;
    return store_begin_write(s, err);
}

static void test_writer_thread_runs_jobs_in_order_while_readers_read(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "writer");
    store_options opt = {.version = STORE_OPTIONS_V1, .chunk_size = 256};
    store_writer *w = NULL;
    fc_error err = {0};
    assert_int_equal(store_writer_start(path, &opt, &w, &err), FC_OK);
    store_options ro = {.version = STORE_OPTIONS_V1, .readonly = 1};
    store *reader = NULL;
    assert_int_equal(store_open(path, &ro, &reader, &err), FC_OK);

    commit_job first = {1, 4000};
    assert_int_equal(store_writer_call(w, run_commit_job, &first, &err), FC_OK);
    done_log log = {.n = 0};
    pthread_mutex_init(&log.mu, NULL);
    commit_job jobs[20];
    done_arg args[20];
    for (int i = 0; i < 20; i++) {
        jobs[i] = (commit_job){i + 2, 4000};
        args[i] = (done_arg){&log, i + 2};
        assert_int_equal(store_writer_submit(w, run_commit_job, &jobs[i], on_done, &args[i],
                                             &err),
                         FC_OK);
    }
    /* Meanwhile the reader streams version 1 from its own connection. */
    uint8_t back[4000], want[4000];
    fill_pattern(want, sizeof want, 1);
    mem_sink sink = {.data = back, .cap = sizeof back};
    assert_int_equal(store_model_read(reader, 1, 0, mem_write, &sink, &err), FC_OK);
    assert_memory_equal(back, want, sizeof want);
    /* A job that fails reports through the future with its error text. */
    commit_job dup = {5, 10};
    assert_int_equal(store_writer_call(w, run_commit_job, &dup, &err), FC_ERR_INVALID);
    assert_non_null(strstr(err.msg, "not newer"));
    pthread_mutex_lock(&log.mu);
    assert_int_equal(log.n, 20);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(log.order[i], i + 2);
        assert_int_equal(log.st[i], FC_OK);
    }
    pthread_mutex_unlock(&log.mu);
    int64_t latest = 0;
    assert_int_equal(store_latest_version(reader, &latest, &err), FC_OK);
    assert_int_equal(latest, 21);
    assert_int_equal(store_verify(reader, NULL, &err), FC_OK);

    /* A job that leaves a transaction open does not poison the next one. */
    assert_int_equal(store_writer_call(w, leave_tx_open, NULL, &err), FC_OK);
    commit_job next = {22, 100};
    assert_int_equal(store_writer_call(w, run_commit_job, &next, &err), FC_OK);

    /* The queue is bounded: with the thread held, submissions past the limit are refused. */
    gate g = {.open = 0};
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    assert_int_equal(store_writer_submit(w, wait_gate, &g, NULL, NULL, &err), FC_OK);
    pthread_mutex_lock(&g.mu);
    while (!g.entered) pthread_cond_wait(&g.cv, &g.mu);
    pthread_mutex_unlock(&g.mu);
    int accepted = 0;
    fc_status st;
    while ((st = store_writer_submit(w, wait_gate, &g, NULL, NULL, &err)) == FC_OK) accepted++;
    assert_int_equal(st, FC_ERR_BUSY);
    assert_int_equal(accepted, STORE_WRITER_QUEUE_MAX - 1); /* the running job still counts */
    pthread_mutex_lock(&g.mu);
    g.open = 1;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    store_writer_stop(w); /* drains the queue */
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&g.mu);
    pthread_mutex_destroy(&log.mu);
    store_close(reader);
    assert_int_equal(store_writer_start(path, &ro, &w, &err), FC_ERR_INVALID);
}

/* A sink that, on its first call, prunes the version being read from another connection. */
typedef struct prune_during_read {
    mem_sink sink;
    store *writer;
    fc_status prune_st;
    uint64_t pruned;
} prune_during_read;

static fc_status prune_then_collect(void *ud, const void *data, size_t len, uint64_t offset,
                                    fc_error *err) {
    prune_during_read *p = ud;
    if (p->sink.calls == 0) {
        fc_error perr = {0};
        p->prune_st = store_prune(p->writer, 1, 0, 0, 5, &p->pruned, &perr);
    }
    return mem_write(&p->sink, data, len, offset, err);
}

static void test_pruning_cannot_tear_a_read_in_progress(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "snapshot");
    store *w = open_small(path, 64);
    uint8_t v1[1000];
    fc_error err = {0};
    assert_int_equal(commit_version(w, 1, sizeof v1, v1, &err), FC_OK);
    must_commit(w, 2, 1000);
    store_options ro = {.version = STORE_OPTIONS_V1, .readonly = 1};
    store *r = NULL;
    assert_int_equal(store_open(path, &ro, &r, &err), FC_OK);
    uint8_t back[1000];
    prune_during_read p = {.sink = {.data = back, .cap = sizeof back}, .writer = w};
    assert_int_equal(store_model_read(r, 1, 0, prune_then_collect, &p, &err), FC_OK);
    assert_int_equal(p.prune_st, FC_OK); /* WAL: the writer did not wait for the reader */
    assert_int_equal(p.pruned, 1);
    assert_int_equal(p.sink.len, 1000);
    assert_memory_equal(back, v1, sizeof v1); /* the reader's snapshot still had v1 whole */
    /* A read that starts now sees the pruned state. */
    mem_sink after = {.data = back, .cap = sizeof back};
    assert_int_equal(store_model_read(r, 1, 0, mem_write, &after, &err), FC_ERR_STATE);
    store_close(r);
    store_close(w);
}

typedef struct poll_reader {
    const char *path;
    atomic_int stop;
    int reads, failures;
    int64_t max_seen;
    char first_error[FC_ERROR_MSG_MAX];
} poll_reader;

static fc_status discard(void *ud, const void *data, size_t len, uint64_t offset, fc_error *err) {
    (void)ud, (void)data, (void)len, (void)offset, (void)err;
    return FC_OK;
}

static void *reader_main(void *arg) {
    poll_reader *pr = arg;
    store_options ro = {.version = STORE_OPTIONS_V1, .readonly = 1};
    store *r = NULL;
    fc_error err = {0};
    if (store_open(pr->path, &ro, &r, &err) != FC_OK) {
        pr->failures++;
        snprintf(pr->first_error, sizeof pr->first_error, "%s", err.msg);
        return NULL;
    }
    while (!atomic_load(&pr->stop)) {
        int64_t v = 0;
        fc_status st = store_latest_version(r, &v, &err);
        if (st == FC_OK && v > 0) {
            store_state ss;
            st = store_model_read(r, v, 0, discard, NULL, &err);
            if (st == FC_OK) st = store_state_get(r, v, &ss, &err);
            if (st == FC_OK) store_state_clear(&ss);
            if (v > pr->max_seen) pr->max_seen = v;
        }
        if (st == FC_OK) {
            pr->reads++;
        } else if (pr->failures++ == 0) {
            snprintf(pr->first_error, sizeof pr->first_error, "%s", err.msg);
        }
    }
    store_close(r);
    return NULL;
}

static void test_readers_see_only_whole_versions_while_the_writer_commits(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "concurrent");
    store_options opt = {.version = STORE_OPTIONS_V1, .chunk_size = 512};
    store_writer *w = NULL;
    fc_error err = {0};
    assert_int_equal(store_writer_start(path, &opt, &w, &err), FC_OK);
    commit_job first = {1, 5000};
    assert_int_equal(store_writer_call(w, run_commit_job, &first, &err), FC_OK);
    poll_reader pr = {.path = path};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, reader_main, &pr), 0);
    commit_job jobs[30];
    for (int i = 0; i < 30; i++) {
        jobs[i] = (commit_job){i + 2, 5000};
        assert_int_equal(store_writer_call(w, run_commit_job, &jobs[i], &err), FC_OK);
    }
    atomic_store(&pr.stop, 1);
    assert_int_equal(pthread_join(th, NULL), 0);
    store_writer_stop(w);
    if (pr.failures) fail_msg("%d reader failures, first: %s", pr.failures, pr.first_error);
    assert_true(pr.reads > 0);
    assert_true(pr.max_seen >= 1 && pr.max_seen <= 31);
}

static off_t file_size(const char *path) {
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    return sb.st_size;
}

typedef struct size_at_done {
    const char *path;
    off_t size;
    fc_status st;
} size_at_done;

static void record_size(void *ud, fc_status st, const fc_error *err) {
    (void)err;
    size_at_done *d = ud;
    d->st = st;
    d->size = file_size(d->path);
}

static fc_status noop_job(store *s, void *ud, fc_error *err) {
    (void)s, (void)ud, (void)err;
    return FC_OK;
}

static void test_writer_checkpoints_after_reporting_on_its_own_thread(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "ckpt");
    /* 1 KiB pages, fixed before the store sees the file (still an empty database to it): the
     * checkpoint threshold is then STORE_WRITER_CHECKPOINT_BYTES / 1 KiB pages. */
    exec_raw(path, "PRAGMA page_size = 1024; CREATE TABLE x(y); DROP TABLE x; VACUUM;");
    store_options opt = {.version = STORE_OPTIONS_V1, .chunk_size = 65536};
    store_writer *w = NULL;
    fc_error err = {0};
    assert_int_equal(store_writer_start(path, &opt, &w, &err), FC_OK);
    off_t empty = file_size(path);
    commit_job job = {1, 1500000};
    size_at_done d = {.path = path};
    assert_int_equal(store_writer_checkpoints(w), 0);
    assert_int_equal(store_writer_submit(w, run_commit_job, &job, record_size, &d, &err), FC_OK);
    assert_int_equal(store_writer_call(w, noop_job, NULL, &err), FC_OK); /* after the commit */
    assert_int_equal(d.st, FC_OK);
    /* When the commit was reported, its pages were only in the WAL... */
    assert_true(d.size < 1500000);
    assert_true(d.size <= empty + 65536);
    /* ...and the checkpointer thread copied them into the database file after it. */
    for (int i = 0; i < 1000 && store_writer_checkpoints(w) == 0; i++)
        usleep(10000);
    assert_int_equal(store_writer_checkpoints(w), 1);
    assert_true(file_size(path) >= 1500000);
    /* a commit while the database is being checkpointed still goes through */
    commit_job job2 = {2, 1500000};
    assert_int_equal(store_writer_call(w, run_commit_job, &job2, &err), FC_OK);
    store_writer_stop(w);
    store *s = open_small(path, 0);
    assert_int_equal(count_rows(s, "PRAGMA page_size"), 1024);
    assert_int_equal(store_verify(s, NULL, &err), FC_OK);
    store_close(s);
}

/* ---- durability ---- */

static void test_disk_full_rolls_back_and_keeps_previous_state(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "full");
    store *s = open_small(path, 4096);
    fc_error err = {0};
    uint8_t v1[20000];
    assert_int_equal(commit_version(s, 1, sizeof v1, v1, &err), FC_OK);
    int64_t pages = count_rows(s, "PRAGMA page_count");
    char sql[96];
    snprintf(sql, sizeof sql, "PRAGMA max_page_count = %lld", (long long)pages + 3);
    assert_int_equal(sqlite3_exec(s->db, sql, NULL, NULL, NULL), SQLITE_OK);
    fc_status st = commit_version(s, 2, 200000, NULL, &err);
    assert_int_equal(st, FC_ERR_IO);
    if (!strstr(err.msg, "full")) fail_msg("error does not name the cause: %s", err.msg);
    print_message("disk full error: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "round 1 not committed"));
    int64_t latest = 0;
    assert_int_equal(store_latest_version(s, &latest, &err), FC_OK);
    assert_int_equal(latest, 1);
    store_round r;
    assert_int_equal(store_round_get(s, 1, &r, &err), FC_ERR_NOT_FOUND);
    store_close(s);

    /* Reopened: the earlier state is intact and readable, and a commit then succeeds. */
    s = open_small(path, 4096);
    uint8_t back[20000];
    mem_sink sink = {.data = back, .cap = sizeof back};
    assert_int_equal(store_model_read(s, 1, 0, mem_write, &sink, &err), FC_OK);
    assert_memory_equal(back, v1, sizeof v1);
    assert_int_equal(store_verify(s, NULL, &err), FC_OK);
    must_commit(s, 2, 200000);
    store_close(s);
}

/* ---- allocation failures ---- */

static void test_allocation_failures_give_clean_errors(void **state) {
    (void)state;
    char path[600];
    new_path(path, sizeof path, "nomem");
    store *s = open_small(path, 64);
    must_commit(s, 1, 300);
    int ok_seen = 0;
    for (long n = 0; n < 40 && !ok_seen; n++) {
        fc_error err = {0};
        fc_alloc_fail_after(n);
        store_recovery rec;
        fc_status st = store_recover(s, 1, &rec, &err);
        fc_alloc_fail_after(-1);
        if (st == FC_OK) {
            ok_seen = 1;
            assert_int_equal(rec.latest_version, 1);
            store_recovery_clear(&rec);
        } else {
            assert_int_equal(st, FC_ERR_NOMEM);
        }
        assert_true(sqlite3_get_autocommit(s->db)); /* no transaction left open */
    }
    assert_true(ok_seen);
    /* Reads that copy strings and blobs out. */
    for (long n = 0; n < 3; n++) {
        fc_error err = {0};
        store_state ss;
        store_round r;
        store_model_info m;
        fc_alloc_fail_after(n);
        fc_status a = store_state_get(s, 1, &ss, &err);
        fc_alloc_fail_after(n);
        fc_status b = store_model_info_get(s, 1, &m, &err);
        fc_alloc_fail_after(-1);
        assert_true(a == FC_OK || a == FC_ERR_NOMEM);
        assert_true(b == FC_OK || b == FC_ERR_NOMEM);
        if (n == 0) assert_int_equal(a, FC_ERR_NOMEM); /* the rule name copy */
        if (n == 0) assert_int_equal(b, FC_ERR_NOMEM); /* the specs copy */
        if (a == FC_OK) store_state_clear(&ss);
        if (b == FC_OK) store_model_info_clear(&m);
        assert_int_equal(store_round_get(s, 99, &r, &err), FC_ERR_NOT_FOUND);
    }
    /* Opening a store and starting a writer. */
    for (long n = 0; n < 6; n++) {
        fc_error err = {0};
        store *other = NULL;
        store_writer *w = NULL;
        fc_alloc_fail_after(n);
        fc_status a = store_open(path, NULL, &other, &err);
        fc_alloc_fail_after(n);
        fc_status b = store_writer_start(path, NULL, &w, &err);
        fc_alloc_fail_after(-1);
        assert_true(a == FC_OK || a == FC_ERR_NOMEM);
        assert_true(b == FC_OK || b == FC_ERR_NOMEM);
        if (n == 0) assert_int_equal(a, FC_ERR_NOMEM);
        if (n == 0) assert_int_equal(b, FC_ERR_NOMEM);
        if (a == FC_OK) store_close(other);
        else assert_null(other);
        if (b == FC_OK) store_writer_stop(w);
        else assert_null(w);
    }
    for (long n = 0; n < 10; n++) {
        fc_error err = {0};
        fc_alloc_fail_after(n);
        fc_status st = commit_version(s, 2, 300, NULL, &err);
        fc_alloc_fail_after(-1);
        if (st == FC_OK) break;
        assert_int_equal(st, FC_ERR_NOMEM);
        int64_t latest = 0;
        assert_int_equal(store_latest_version(s, &latest, &err), FC_OK);
        assert_int_equal(latest, 1);
    }
    store_close(s);
}

/* A new database and its -wal and -shm files are owner-only (0600) even under a permissive
 * umask: they hold token hashes and every model. */
static void test_new_database_files_are_owner_only(void **state) {
    (void)state;
    char path[600], side[640];
    new_path(path, sizeof path, "perm");
    mode_t old = umask(0);
    store *s = open_small(path, 0);
    umask(old);
    exec_raw(path, "CREATE TABLE IF NOT EXISTS perm_probe(x); INSERT INTO perm_probe VALUES (1)");
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* the store's connection is open, so the WAL index exists; a write made the WAL */
    snprintf(side, sizeof side, "%s-wal", path);
    assert_int_equal(stat(side, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    snprintf(side, sizeof side, "%s-shm", path);
    assert_int_equal(stat(side, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    store_close(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_creates_current_schema_in_wal_mode),
        cmocka_unit_test(test_new_database_files_are_owner_only),
        cmocka_unit_test(test_migrates_from_v1_keeping_data),
        cmocka_unit_test(test_migrates_from_empty_file),
        cmocka_unit_test(test_migration_is_refused_on_readonly_open),
        cmocka_unit_test(test_missing_file_is_not_found_when_it_must_exist),
        cmocka_unit_test(test_newer_schema_is_refused_untouched),
        cmocka_unit_test(test_random_bytes_file_is_refused_untouched),
        cmocka_unit_test(test_other_applications_database_is_refused_untouched),
        cmocka_unit_test(test_hot_journal_from_a_killed_creator_is_recovered),
        cmocka_unit_test(test_clients_add_lookup_revoke_list),
        cmocka_unit_test(test_round_lifecycle_and_failure_with_participants),
        cmocka_unit_test(test_evaluation_round_commits_without_a_model),
        cmocka_unit_test(test_commit_round_writes_model_round_participants_and_state),
        cmocka_unit_test(test_failed_commits_leave_nothing_behind),
        cmocka_unit_test(test_commit_result_and_empty_model),
        cmocka_unit_test(test_commit_takes_the_callers_hash),
        cmocka_unit_test(test_reads_resume_from_any_offset),
        cmocka_unit_test(test_range_reads_return_exactly_the_bytes_asked),
        cmocka_unit_test(test_corrupted_chunk_is_detected_on_full_read),
        cmocka_unit_test(test_rounds_and_models_are_listed_in_order_with_paging),
        cmocka_unit_test(test_retention_keeps_last_k_every_mth_newest_and_pinned),
        cmocka_unit_test(test_verify_detects_tampered_rows),
        cmocka_unit_test(test_verify_print_reports_ok_and_first_broken_link),
        cmocka_unit_test(test_events_are_append_only_and_listed_in_order),
        cmocka_unit_test(test_client_changes_are_audited_in_the_same_transaction),
        cmocka_unit_test(test_recover_fails_interrupted_rounds_and_returns_latest_state),
        cmocka_unit_test(test_writer_thread_runs_jobs_in_order_while_readers_read),
        cmocka_unit_test(test_pruning_cannot_tear_a_read_in_progress),
        cmocka_unit_test(test_readers_see_only_whole_versions_while_the_writer_commits),
        cmocka_unit_test(test_writer_checkpoints_after_reporting_on_its_own_thread),
        cmocka_unit_test(test_disk_full_rolls_back_and_keeps_previous_state),
        cmocka_unit_test(test_allocation_failures_give_clean_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
