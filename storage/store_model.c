/* store_model.c: model versions as chunks, the one-transaction round commit, streaming reads,
 * rule/optimizer state, retention and the audit chain.
 *
 * A version's bytes are only ever held one chunk at a time: commits pull them from a source
 * callback into one chunk buffer, reads hand them to a sink callback chunk by chunk. This file
 * never opens sockets and never decides what to keep beyond the retention rule it is given.
 */
#include <assert.h>
#include <string.h>

#include <openssl/evp.h>

#include "core/alloc.h"
#include "storage/store_internal.h"

static const char CHAIN_TAG[] = "fedcoord-chain-v1"; /* hashed with its NUL */

static void put_be64(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

static int sha256_once(const void *data, size_t len, uint8_t out[32]) {
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32;
}

void store_chain_hash(const uint8_t parent_chain[32], int64_t version, int64_t parent_version,
                      int64_t round_id, const uint8_t sha256[32], uint64_t size,
                      const char *tensor_specs_json, uint8_t out[32]) {
    uint8_t buf[sizeof CHAIN_TAG + 32 + 8 * 3 + 32 + 8 + 32];
    uint8_t *p = buf;
    memcpy(p, CHAIN_TAG, sizeof CHAIN_TAG);
    p += sizeof CHAIN_TAG;
    if (parent_chain)
        memcpy(p, parent_chain, 32);
    else
        memset(p, 0, 32);
    p += 32;
    put_be64(p, (uint64_t)version);
    put_be64(p + 8, (uint64_t)parent_version);
    put_be64(p + 16, (uint64_t)round_id);
    p += 24;
    memcpy(p, sha256, 32);
    p += 32;
    put_be64(p, size);
    p += 8;
    const char *specs = tensor_specs_json ? tensor_specs_json : "";
    if (!sha256_once(specs, strlen(specs), p)) memset(p, 0xff, 32);
    p += 32;
    assert((size_t)(p - buf) == sizeof buf);
    if (!sha256_once(buf, sizeof buf, out)) memset(out, 0, 32);
}

/* ---- model metadata ---- */

void store_model_info_clear(store_model_info *m) {
    if (!m) return;
    fc_free(m->tensor_specs_json);
    memset(m, 0, sizeof *m);
}

static void copy_hash(sqlite3_stmt *q, int col, uint8_t out[32]) {
    if (sqlite3_column_bytes(q, col) == 32)
        memcpy(out, sqlite3_column_blob(q, col), 32);
    else
        memset(out, 0, 32);
}

/* Fills m from a MODEL_SELECT row; tensor_specs_json is borrowed when borrow is set. */
static fc_status read_model_row(sqlite3_stmt *q, store_model_info *m, int borrow) {
    memset(m, 0, sizeof *m);
    m->version = sqlite3_column_int64(q, 0);
    m->parent_version = sqlite3_column_int64(q, 1);
    m->round_id = sqlite3_column_int64(q, 2);
    copy_hash(q, 3, m->sha256);
    copy_hash(q, 4, m->parent_sha256);
    copy_hash(q, 5, m->chain_hash);
    m->size = (uint64_t)sqlite3_column_int64(q, 6);
    m->chunk_size = (uint64_t)sqlite3_column_int64(q, 7);
    m->num_chunks = (uint64_t)sqlite3_column_int64(q, 8);
    m->created_at = sqlite3_column_int64(q, 9);
    m->pruned_at = sqlite3_column_int64(q, 10);
    if (borrow) {
        m->tensor_specs_json = (char *)sqlite3_column_text(q, 11);
        return FC_OK;
    }
    return store_column_strdup(q, 11, &m->tensor_specs_json);
}

fc_status store_model_info_get(store *s, int64_t version, store_model_info *out, fc_error *err) {
    memset(out, 0, sizeof *out);
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_MODEL_GET, err);
    sqlite3_bind_int64(q, 1, version);
    int rc = sqlite3_step(q);
    fc_status st = FC_OK;
    if (rc == SQLITE_ROW) {
        if (read_model_row(q, out, 0) != FC_OK)
            st = fc_error_set(err, FC_ERR_NOMEM, "model version %lld: out of memory",
                              (long long)version);
    } else if (rc == SQLITE_DONE) {
        st = fc_error_set(err, FC_ERR_NOT_FOUND, "no model version %lld", (long long)version);
    } else {
        st = store_sqlite_error(s, rc, err, "reading model metadata");
    }
    sqlite3_reset(q);
    return st;
}

fc_status store_model_list(store *s, int64_t after_version, size_t limit, store_model_cb cb,
                           void *ud, fc_error *err) {
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_MODEL_LIST, err);
    sqlite3_bind_int64(q, 1, after_version);
    sqlite3_bind_int64(q, 2, store_list_limit(limit));
    fc_status st = FC_OK;
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        store_model_info m;
        read_model_row(q, &m, 1);
        if ((st = cb(ud, &m)) != FC_OK) break;
    }
    if (st == FC_OK && rc != SQLITE_DONE) st = store_sqlite_error(s, rc, err, "listing models");
    sqlite3_reset(q);
    return st;
}

fc_status store_latest_version(store *s, int64_t *out, fc_error *err) {
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_MODEL_LATEST, err);
    int rc = sqlite3_step(q);
    *out = rc == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 0;
    sqlite3_reset(q);
    return rc == SQLITE_ROW ? FC_OK : store_sqlite_error(s, rc, err, "reading the latest version");
}

/* ---- state ---- */

void store_state_clear(store_state *st) {
    if (!st) return;
    fc_free(st->rule_name);
    fc_free(st->optimizer_name);
    fc_free(st->rule_state);
    fc_free(st->optimizer_state);
    memset(st, 0, sizeof *st);
}

static fc_status column_blobdup(sqlite3_stmt *q, int col, uint8_t **out, size_t *len) {
    *out = NULL;
    *len = 0;
    int n = sqlite3_column_bytes(q, col);
    if (n <= 0) return FC_OK;
    const void *b = sqlite3_column_blob(q, col);
    if (!b) return FC_ERR_NOMEM;
    *out = fc_malloc((size_t)n);
    if (!*out) return FC_ERR_NOMEM;
    memcpy(*out, b, (size_t)n);
    *len = (size_t)n;
    return FC_OK;
}

fc_status store_state_get(store *s, int64_t version, store_state *out, fc_error *err) {
    memset(out, 0, sizeof *out);
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_STATE_GET, err);
    sqlite3_bind_int64(q, 1, version);
    int rc = sqlite3_step(q);
    fc_status st = FC_OK;
    if (rc == SQLITE_ROW) {
        out->version = version;
        if (store_column_strdup(q, 0, &out->rule_name) != FC_OK ||
            column_blobdup(q, 1, &out->rule_state, &out->rule_state_len) != FC_OK ||
            store_column_strdup(q, 2, &out->optimizer_name) != FC_OK ||
            column_blobdup(q, 3, &out->optimizer_state, &out->optimizer_state_len) != FC_OK) {
            store_state_clear(out);
            st = fc_error_set(err, FC_ERR_NOMEM, "state of version %lld: out of memory",
                              (long long)version);
        }
    } else if (rc == SQLITE_DONE) {
        st = fc_error_set(err, FC_ERR_NOT_FOUND, "no state stored for model version %lld",
                          (long long)version);
    } else {
        st = store_sqlite_error(s, rc, err, "reading state");
    }
    sqlite3_reset(q);
    return st;
}

/* ---- commit ---- */

static fc_status check_commit(const store *s, const store_commit *c, fc_error *err) {
    (void)s;
    if (!c) return fc_error_set(err, FC_ERR_INVALID, "store: no commit");
    if (c->version <= 0)
        return fc_error_set(err, FC_ERR_INVALID, "commit: version %lld must be positive",
                            (long long)c->version);
    if (c->parent_version < 0 || c->parent_version >= c->version)
        return fc_error_set(err, FC_ERR_INVALID,
                            "commit of version %lld: parent version %lld must be in [0, %lld)",
                            (long long)c->version, (long long)c->parent_version,
                            (long long)c->version);
    if (c->round_id < 0)
        return fc_error_set(err, FC_ERR_INVALID, "commit: negative round id");
    if (c->round_id == 0 && c->num_participants)
        return fc_error_set(err, FC_ERR_INVALID,
                            "commit of version %lld: participants without a round",
                            (long long)c->version);
    if (!c->tensor_specs_json)
        return fc_error_set(err, FC_ERR_INVALID, "commit of version %lld: no tensor specs",
                            (long long)c->version);
    if (!c->source)
        return fc_error_set(err, FC_ERR_INVALID, "commit of version %lld: no data source",
                            (long long)c->version);
    if (c->model_size > INT64_MAX)
        return fc_error_set(err, FC_ERR_RANGE, "commit of version %lld: size out of range",
                            (long long)c->version);
    if ((c->rule_state_len && !c->rule_state) ||
        (c->optimizer_state_len && !c->optimizer_state))
        return fc_error_set(err, FC_ERR_INVALID, "commit of version %lld: state length without "
                            "data", (long long)c->version);
    if (c->rule_state_len > INT32_MAX || c->optimizer_state_len > INT32_MAX)
        return fc_error_set(err, FC_ERR_LIMIT, "commit of version %lld: state blob over 2 GiB",
                            (long long)c->version);
    return FC_OK;
}

/* Fills buf from the source until it is full or the source ends. */
static fc_status fill_chunk(const store_commit *c, uint8_t *buf, size_t cap, size_t *filled,
                            fc_error *err) {
    *filled = 0;
    while (*filled < cap) {
        size_t got = 0;
        fc_status st = c->source(c->source_ud, buf + *filled, cap - *filled, &got, err);
        if (st != FC_OK) return fc_error_prefix(err, "model source of version %lld",
                                                (long long)c->version);
        if (got == 0) break;
        if (got > cap - *filled)
            return fc_error_set(err, FC_ERR_INVALID,
                                "model source of version %lld returned %zu bytes for %zu asked",
                                (long long)c->version, got, cap - *filled);
        *filled += got;
    }
    return FC_OK;
}

/* Inside the transaction: streams the source into chunks and hashes it. */
static fc_status write_chunks(store *s, const store_commit *c, EVP_MD_CTX *md, uint64_t *nchunks,
                              fc_error *err) {
    size_t cap = s->chunk_size;
    if (c->model_size < cap) cap = c->model_size ? (size_t)c->model_size : 1;
    uint8_t *buf = fc_malloc(cap);
    if (!buf) return fc_error_set(err, FC_ERR_NOMEM, "commit: no memory for a %zu-byte chunk", cap);
    uint64_t total = 0;
    fc_status st = FC_OK;
    *nchunks = 0;
    for (;;) {
        size_t filled;
        if ((st = fill_chunk(c, buf, cap, &filled, err)) != FC_OK) break;
        if (filled == 0) break;
        if (filled > c->model_size - total) {
            st = fc_error_set(err, FC_ERR_FORMAT,
                              "commit of version %lld: source yields more than the declared "
                              "%llu bytes",
                              (long long)c->version, (unsigned long long)c->model_size);
            break;
        }
        if (!c->sha256 && EVP_DigestUpdate(md, buf, filled) != 1) {
            st = fc_error_set(err, FC_ERR_SYSTEM, "commit: SHA-256 update failed");
            break;
        }
        sqlite3_stmt *q;
        if ((st = store_stmt(s, SQ_CHUNK_INSERT, &q, err)) != FC_OK) break;
        sqlite3_bind_int64(q, 1, c->version);
        sqlite3_bind_int64(q, 2, (int64_t)*nchunks);
        sqlite3_bind_blob(q, 3, buf, (int)filled, SQLITE_STATIC);
        int rc = sqlite3_step(q);
        sqlite3_reset(q);
        if (rc != SQLITE_DONE) {
            char what[96];
            snprintf(what, sizeof what, "writing chunk %llu of model version %lld",
                     (unsigned long long)*nchunks, (long long)c->version);
            st = store_sqlite_error(s, rc, err, what);
            break;
        }
        total += filled;
        (*nchunks)++;
        if (filled < cap) break; /* the source ended */
    }
    fc_free(buf);
    if (st == FC_OK && total != c->model_size)
        st = fc_error_set(err, FC_ERR_FORMAT,
                          "commit of version %lld: source yielded %llu bytes, declared %llu",
                          (long long)c->version, (unsigned long long)total,
                          (unsigned long long)c->model_size);
    return st;
}

static fc_status insert_state(store *s, const store_commit *c, fc_error *err) {
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_STATE_INSERT, err);
    sqlite3_bind_int64(q, 1, c->version);
    if (c->rule_name) sqlite3_bind_text(q, 2, c->rule_name, -1, SQLITE_STATIC);
    if (c->rule_state_len)
        sqlite3_bind_blob(q, 3, c->rule_state, (int)c->rule_state_len, SQLITE_STATIC);
    if (c->optimizer_name) sqlite3_bind_text(q, 4, c->optimizer_name, -1, SQLITE_STATIC);
    if (c->optimizer_state_len)
        sqlite3_bind_blob(q, 5, c->optimizer_state, (int)c->optimizer_state_len, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    return rc == SQLITE_DONE ? FC_OK : store_sqlite_error(s, rc, err, "writing rule state");
}

/* Reads the newest version and the parent's chain hash and data hash. */
static fc_status read_head(store *s, const store_commit *c, uint8_t parent_chain[32],
                           uint8_t parent_sha[32], fc_error *err) {
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_MODEL_MAX_VERSION, err);
    sqlite3_bind_int64(q, 1, c->parent_version);
    int rc = sqlite3_step(q);
    if (rc != SQLITE_ROW) {
        sqlite3_reset(q);
        return store_sqlite_error(s, rc, err, "reading the newest version");
    }
    int64_t newest = sqlite3_column_int64(q, 0);
    int parent_found = sqlite3_column_bytes(q, 1) == 32 && sqlite3_column_bytes(q, 2) == 32;
    copy_hash(q, 1, parent_chain);
    copy_hash(q, 2, parent_sha);
    sqlite3_reset(q);
    if (c->version <= newest)
        return fc_error_set(err, FC_ERR_INVALID,
                            "commit: version %lld is not newer than the stored version %lld",
                            (long long)c->version, (long long)newest);
    if (c->parent_version > 0 && !parent_found)
        return fc_error_set(err, FC_ERR_INVALID,
                            "commit of version %lld: parent version %lld does not exist",
                            (long long)c->version, (long long)c->parent_version);
    return FC_OK;
}

static fc_status commit_body(store *s, const store_commit *c, store_commit_result *res,
                             EVP_MD_CTX *md, fc_error *err) {
    uint8_t parent_chain[32] = {0}, parent_sha[32] = {0}, zeros[32] = {0};
    fc_status st = read_head(s, c, parent_chain, parent_sha, err);
    if (st != FC_OK) return st;
    if (c->round_id > 0) {
        st = store_round_finish(s, c->round_id, STORE_ROUND_COMMITTED, c->started_at,
                                c->ended_at, c->parent_version, c->config_json, c->report_json,
                                c->metrics_json, NULL, err);
        if (st != FC_OK) return st;
    }
    /* The row goes in first (chunks reference it) with placeholder hashes, finalized below;
     * no reader can see it before COMMIT. */
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_MODEL_INSERT, err);
    sqlite3_bind_int64(q, 1, c->version);
    if (c->parent_version > 0) sqlite3_bind_int64(q, 2, c->parent_version);
    if (c->round_id > 0) sqlite3_bind_int64(q, 3, c->round_id);
    sqlite3_bind_blob(q, 4, zeros, 32, SQLITE_STATIC);
    if (c->parent_version > 0) sqlite3_bind_blob(q, 5, parent_sha, 32, SQLITE_STATIC);
    sqlite3_bind_blob(q, 6, zeros, 32, SQLITE_STATIC);
    sqlite3_bind_text(q, 7, c->tensor_specs_json, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 8, (int64_t)c->model_size);
    sqlite3_bind_int64(q, 9, (int64_t)s->chunk_size);
    sqlite3_bind_int64(q, 10, 0);
    sqlite3_bind_int64(q, 11, c->ended_at);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    if (rc == SQLITE_CONSTRAINT_UNIQUE)
        return fc_error_set(err, FC_ERR_EXISTS, "round %lld already has a model version",
                            (long long)c->round_id);
    if (rc != SQLITE_DONE) return store_sqlite_error(s, rc, err, "inserting a model version");

    uint64_t nchunks = 0;
    if ((st = write_chunks(s, c, md, &nchunks, err)) != FC_OK) return st;
    uint8_t sha[32], chain[32];
    unsigned int mdlen = 0;
    if (c->sha256) {
        if ((st = c->sha256(c->sha256_ud, sha, err)) != FC_OK)
            return fc_error_prefix(err, "SHA-256 of version %lld", (long long)c->version);
    } else if (EVP_DigestFinal_ex(md, sha, &mdlen) != 1 || mdlen != 32) {
        return fc_error_set(err, FC_ERR_SYSTEM, "commit: SHA-256 final failed");
    }
    if (c->expected_sha256 && memcmp(sha, c->expected_sha256, 32) != 0) {
        char got[65], want[65];
        store_sha256_hex(sha, got);
        store_sha256_hex(c->expected_sha256, want);
        return fc_error_set(err, FC_ERR_HASH, "commit of version %lld: data hashes to %s, "
                            "expected %s", (long long)c->version, got, want);
    }
    store_chain_hash(c->parent_version > 0 ? parent_chain : NULL, c->version, c->parent_version,
                     c->round_id, sha, c->model_size, c->tensor_specs_json, chain);
    STORE_STMT(q, s, SQ_MODEL_FINALIZE, err);
    sqlite3_bind_int64(q, 1, c->version);
    sqlite3_bind_blob(q, 2, sha, 32, SQLITE_STATIC);
    sqlite3_bind_blob(q, 3, chain, 32, SQLITE_STATIC);
    sqlite3_bind_int64(q, 4, (int64_t)nchunks);
    rc = sqlite3_step(q);
    sqlite3_reset(q);
    if (rc != SQLITE_DONE) return store_sqlite_error(s, rc, err, "finalizing a model version");
    if ((st = insert_state(s, c, err)) != FC_OK) return st;
    if (c->round_id > 0 &&
        (st = store_participants_insert(s, c->round_id, c->participants, c->num_participants,
                                        err)) != FC_OK)
        return st;
    char detail[160], hex[65];
    store_sha256_hex(sha, hex);
    snprintf(detail, sizeof detail, "{\"version\":%lld,\"sha256\":\"%s\"}", (long long)c->version,
             hex);
    if ((st = store_event_append(s, c->ended_at, c->round_id > 0 ? "round.committed"
                                                                 : "model.committed",
                                 c->round_id, NULL, detail, err)) != FC_OK)
        return st;
    if (res) {
        memcpy(res->sha256, sha, 32);
        memcpy(res->chain_hash, chain, 32);
        res->num_chunks = nchunks;
    }
    return FC_OK;
}

fc_status store_commit_round(store *s, const store_commit *c, store_commit_result *res,
                             fc_error *err) {
    fc_status st = check_commit(s, c, err);
    if (st != FC_OK) return st;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        return fc_error_set(err, FC_ERR_SYSTEM, "commit: cannot start SHA-256");
    }
    if ((st = store_begin_write(s, err)) == FC_OK) {
        st = commit_body(s, c, res, md, err);
        if (st == FC_OK)
            st = store_commit_tx(s, err);
        else
            store_rollback_tx(s);
    }
    EVP_MD_CTX_free(md);
    if (st != FC_OK) fc_error_prefix(err, "round %lld not committed", (long long)c->round_id);
    return st;
}

/* ---- streaming reads ---- */

/* Streams bytes [offset, end) of m to sink (may be NULL) and, when md is set, hashes the whole
 * chunks it reads. Checks that chunks are contiguous and each has the length the metadata
 * implies. offset <= end <= m->size. */
static fc_status scan_chunks(store *s, const store_model_info *m, uint64_t offset, uint64_t end,
                             store_sink_fn sink, void *ud, EVP_MD_CTX *md, uint64_t *seen,
                             fc_error *err) {
    sqlite3_stmt *q;
    STORE_STMT(q, s, SQ_CHUNK_SCAN, err);
    uint64_t seq = offset / m->chunk_size;
    uint64_t end_seq = end / m->chunk_size + (end % m->chunk_size != 0);
    if (offset == end) end_seq = seq; /* nothing to read */
    sqlite3_bind_int64(q, 1, m->version);
    sqlite3_bind_int64(q, 2, (int64_t)seq);
    sqlite3_bind_int64(q, 3, (int64_t)end_seq);
    fc_status st = FC_OK;
    int rc;
    *seen = 0;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        int64_t got_seq = sqlite3_column_int64(q, 0);
        if (got_seq != (int64_t)seq || seq >= m->num_chunks) {
            st = fc_error_set(err, FC_ERR_CORRUPT,
                              "model version %lld: chunk %llu missing (found chunk %lld; %llu "
                              "chunks expected)",
                              (long long)m->version, (unsigned long long)seq, (long long)got_seq,
                              (unsigned long long)m->num_chunks);
            break;
        }
        uint64_t start = seq * m->chunk_size;
        uint64_t want = m->size - start < m->chunk_size ? m->size - start : m->chunk_size;
        const uint8_t *data = sqlite3_column_blob(q, 1);
        int len = sqlite3_column_bytes(q, 1);
        if (len < 0 || (uint64_t)len != want || (len > 0 && !data)) {
            st = fc_error_set(err, FC_ERR_CORRUPT,
                              "model version %lld: chunk %llu has %d bytes, expected %llu",
                              (long long)m->version, (unsigned long long)seq, len,
                              (unsigned long long)want);
            break;
        }
        if (md && EVP_DigestUpdate(md, data, (size_t)len) != 1) {
            st = fc_error_set(err, FC_ERR_SYSTEM, "SHA-256 update failed");
            break;
        }
        uint64_t skip = offset > start ? offset - start : 0;
        uint64_t stop = end - start < (uint64_t)len ? end - start : (uint64_t)len;
        if (sink && stop > skip &&
            (st = sink(ud, data + skip, (size_t)(stop - skip), start + skip, err)) != FC_OK)
            break;
        seq++;
        (*seen)++;
    }
    if (st == FC_OK && rc != SQLITE_DONE && rc != SQLITE_ROW)
        st = store_sqlite_error(s, rc, err, "reading model chunks");
    sqlite3_reset(q);
    if (st == FC_OK && seq != end_seq)
        st = fc_error_set(err, FC_ERR_CORRUPT,
                          "model version %lld: chunk %llu missing (%llu chunks expected)",
                          (long long)m->version, (unsigned long long)seq,
                          (unsigned long long)m->num_chunks);
    return st;
}

static fc_status check_layout(const store_model_info *m, fc_error *err) {
    if (m->chunk_size == 0 || m->chunk_size > STORE_MAX_CHUNK)
        return fc_error_set(err, FC_ERR_CORRUPT, "model version %lld: bad chunk size %llu",
                            (long long)m->version, (unsigned long long)m->chunk_size);
    uint64_t expect = m->size / m->chunk_size + (m->size % m->chunk_size != 0);
    if (m->num_chunks != expect)
        return fc_error_set(err, FC_ERR_CORRUPT,
                            "model version %lld: %llu chunks recorded for %llu bytes of %llu-byte "
                            "chunks",
                            (long long)m->version, (unsigned long long)m->num_chunks,
                            (unsigned long long)m->size, (unsigned long long)m->chunk_size);
    return FC_OK;
}

/* Reads m's bytes [offset, end) and, for a full read, compares the SHA-256. */
static fc_status read_model(store *s, const store_model_info *m, uint64_t offset, uint64_t end,
                            store_sink_fn sink, void *ud, uint64_t *chunks, fc_error *err) {
    fc_status st = check_layout(m, err);
    if (st != FC_OK) return st;
    EVP_MD_CTX *md = NULL;
    if (offset == 0 && end == m->size) {
        md = EVP_MD_CTX_new();
        if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
            EVP_MD_CTX_free(md);
            return fc_error_set(err, FC_ERR_SYSTEM, "cannot start SHA-256");
        }
    }
    uint64_t seen = 0;
    st = scan_chunks(s, m, offset, end, sink, ud, md, &seen, err);
    if (st == FC_OK && md) {
        uint8_t sha[32];
        unsigned int n = 0;
        if (EVP_DigestFinal_ex(md, sha, &n) != 1 || n != 32) {
            st = fc_error_set(err, FC_ERR_SYSTEM, "SHA-256 final failed");
        } else if (memcmp(sha, m->sha256, 32) != 0) {
            char got[65], want[65];
            store_sha256_hex(sha, got);
            store_sha256_hex(m->sha256, want);
            st = fc_error_set(err, FC_ERR_CORRUPT,
                              "model version %lld: data hashes to %s, recorded sha256 %s",
                              (long long)m->version, got, want);
        }
    }
    EVP_MD_CTX_free(md);
    if (chunks) *chunks = seen;
    return st;
}

fc_status store_model_read_range(store *s, int64_t version, uint64_t offset, uint64_t length,
                                 store_sink_fn sink, void *ud, fc_error *err) {
    if (!sink) return fc_error_set(err, FC_ERR_INVALID, "store_model_read: no sink");
    int own_tx = sqlite3_get_autocommit(s->db);
    fc_status st = own_tx ? store_begin_read(s, err) : FC_OK;
    if (st != FC_OK) return st;
    store_model_info m;
    if ((st = store_model_info_get(s, version, &m, err)) != FC_OK) goto done;
    if (m.pruned_at) {
        st = fc_error_set(err, FC_ERR_STATE, "model version %lld was pruned by retention",
                          (long long)version);
    } else if (offset > m.size) {
        st = fc_error_set(err, FC_ERR_RANGE,
                          "model version %lld: offset %llu is past its size %llu",
                          (long long)version, (unsigned long long)offset,
                          (unsigned long long)m.size);
    } else {
        uint64_t end = length == 0 || length > m.size - offset ? m.size : offset + length;
        st = read_model(s, &m, offset, end, sink, ud, NULL, err);
    }
    store_model_info_clear(&m);
done:
    if (own_tx) {
        if (st == FC_OK)
            st = store_commit_tx(s, err);
        else
            store_rollback_tx(s);
    }
    return st;
}

fc_status store_model_read(store *s, int64_t version, uint64_t offset, store_sink_fn sink,
                           void *ud, fc_error *err) {
    return store_model_read_range(s, version, offset, 0, sink, ud, err);
}

/* ---- retention ---- */

/* Versions to prune: not among the newest ?1, not a multiple of ?2 (when ?2 > 0), not the
 * newest, not pinned (?3), not pruned yet. */
#define VICTIMS                                                                                  \
    "SELECT version FROM (SELECT version, pruned_at,"                                           \
    " row_number() OVER (ORDER BY version DESC) AS rn FROM models)"                             \
    " WHERE pruned_at IS NULL AND rn > max(?1, 1) AND (?2 = 0 OR version % ?2 != 0)"            \
    " AND version != ?3"

static fc_status prune_step(store *s, const char *sql, uint32_t keep_last, uint32_t keep_every,
                            int64_t pinned, int64_t now, uint64_t *changes, fc_error *err) {
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &q, NULL);
    if (rc != SQLITE_OK) return store_sqlite_error(s, rc, err, "preparing retention");
    sqlite3_bind_int64(q, 1, keep_last);
    sqlite3_bind_int64(q, 2, keep_every);
    sqlite3_bind_int64(q, 3, pinned);
    if (sqlite3_bind_parameter_count(q) >= 4) sqlite3_bind_int64(q, 4, now ? now : 1);
    rc = sqlite3_step(q);
    sqlite3_finalize(q);
    if (rc != SQLITE_DONE) return store_sqlite_error(s, rc, err, "pruning model versions");
    if (changes) *changes = (uint64_t)sqlite3_changes64(s->db);
    return FC_OK;
}

fc_status store_prune(store *s, uint32_t keep_last, uint32_t keep_every, int64_t pinned_version,
                      int64_t now, uint64_t *pruned, fc_error *err) {
    uint64_t n = 0;
    fc_status st = store_begin_write(s, err);
    if (st != FC_OK) return st;
    /* Chunks and state first: the victim set is defined on models.pruned_at, set last. */
    if ((st = prune_step(s, "DELETE FROM model_chunks WHERE version IN (" VICTIMS ")", keep_last,
                         keep_every, pinned_version, now, NULL, err)) != FC_OK ||
        (st = prune_step(s, "DELETE FROM state WHERE version IN (" VICTIMS ")", keep_last,
                         keep_every, pinned_version, now, NULL, err)) != FC_OK ||
        (st = prune_step(s, "UPDATE models SET pruned_at = ?4 WHERE version IN (" VICTIMS ")",
                         keep_last, keep_every, pinned_version, now, &n, err)) != FC_OK)
        goto rollback;
    if (n) {
        char detail[96];
        snprintf(detail, sizeof detail, "{\"pruned\":%llu,\"keep_last\":%u,\"keep_every\":%u}",
                 (unsigned long long)n, keep_last, keep_every);
        if ((st = store_event_append(s, now, "models.pruned", 0, NULL, detail, err)) != FC_OK)
            goto rollback;
    }
    if ((st = store_commit_tx(s, err)) != FC_OK) return st;
    if (pruned) *pruned = n;
    return FC_OK;
rollback:
    store_rollback_tx(s);
    return st;
}

/* ---- verification ---- */

static fc_status integrity_check(store *s, fc_error *err) {
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(s->db, "PRAGMA integrity_check(1)", -1, &q, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_step(q);
    fc_status st = FC_OK;
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(q, 0);
        if (!t || strcmp((const char *)t, "ok") != 0)
            st = fc_error_set(err, FC_ERR_CORRUPT, "%s: integrity_check: %s", s->path,
                              t ? (const char *)t : "(no text)");
    } else {
        st = store_sqlite_error(s, rc, err, "running integrity_check");
        if (st == FC_ERR_DB) st = FC_ERR_CORRUPT;
    }
    sqlite3_finalize(q);
    if (st != FC_OK) return st;
    rc = sqlite3_prepare_v2(s->db, "PRAGMA foreign_key_check", -1, &q, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_step(q);
    if (rc == SQLITE_ROW)
        st = fc_error_set(err, FC_ERR_CORRUPT,
                          "%s: foreign_key_check: row %lld of table %s points at a missing "
                          "row of %s",
                          s->path, (long long)sqlite3_column_int64(q, 1),
                          (const char *)sqlite3_column_text(q, 0),
                          (const char *)sqlite3_column_text(q, 2));
    else if (rc != SQLITE_DONE)
        st = store_sqlite_error(s, rc, err, "running foreign_key_check");
    sqlite3_finalize(q);
    return st;
}

static fc_status verify_link(store *s, const store_model_info *m, sqlite3_stmt *rows,
                             store_verify_report *rep, fc_error *err) {
    char a[65], b[65];
    long long v = (long long)m->version;
    int parent_sha_null = sqlite3_column_type(rows, 4) == SQLITE_NULL;
    uint8_t parent_chain[32] = {0};
    if (sqlite3_column_bytes(rows, 3) != 32 || sqlite3_column_bytes(rows, 5) != 32 ||
        (!parent_sha_null && sqlite3_column_bytes(rows, 4) != 32))
        return fc_error_set(err, FC_ERR_CORRUPT, "model version %lld: a hash column is not 32 "
                            "bytes", v);
    if (m->parent_version == 0) {
        if (!parent_sha_null)
            return fc_error_set(err, FC_ERR_CORRUPT,
                                "model version %lld: has a parent hash but no parent", v);
    } else {
        store_model_info p;
        fc_status st = store_model_info_get(s, m->parent_version, &p, err);
        if (st == FC_ERR_NOT_FOUND)
            return fc_error_set(err, FC_ERR_CORRUPT,
                                "model version %lld: parent version %lld is missing", v,
                                (long long)m->parent_version);
        if (st != FC_OK) return st;
        memcpy(parent_chain, p.chain_hash, 32);
        int same = !parent_sha_null && memcmp(p.sha256, m->parent_sha256, 32) == 0;
        store_sha256_hex(m->parent_sha256, a);
        store_sha256_hex(p.sha256, b);
        store_model_info_clear(&p);
        if (m->parent_version >= m->version)
            return fc_error_set(err, FC_ERR_CORRUPT,
                                "model version %lld: parent version %lld is not older", v,
                                (long long)m->parent_version);
        if (!same)
            return fc_error_set(err, FC_ERR_CORRUPT,
                                "model version %lld: recorded parent hash %s does not match "
                                "version %lld's sha256 %s",
                                v, parent_sha_null ? "(none)" : a,
                                (long long)m->parent_version, b);
    }
    uint8_t chain[32];
    store_chain_hash(m->parent_version ? parent_chain : NULL, m->version, m->parent_version,
                     m->round_id, m->sha256, m->size, m->tensor_specs_json, chain);
    if (memcmp(chain, m->chain_hash, 32) != 0) {
        store_sha256_hex(m->chain_hash, a);
        store_sha256_hex(chain, b);
        return fc_error_set(err, FC_ERR_CORRUPT,
                            "model version %lld: chain hash %s does not match the recomputed "
                            "%s (a field of this row was changed)",
                            v, a, b);
    }
    fc_status st = check_layout(m, err);
    if (st != FC_OK) return st;
    if (m->round_id > 0) {
        store_round r;
        st = store_round_get(s, m->round_id, &r, err);
        if (st == FC_ERR_NOT_FOUND)
            return fc_error_set(err, FC_ERR_CORRUPT, "model version %lld: round %lld is missing",
                                v, (long long)m->round_id);
        if (st != FC_OK) return st;
        store_round_state rs = r.state;
        store_round_clear(&r);
        if (rs != STORE_ROUND_COMMITTED)
            return fc_error_set(err, FC_ERR_CORRUPT,
                                "model version %lld: its round %lld is %s, not COMMITTED", v,
                                (long long)m->round_id, store_round_state_name(rs));
    }
    if (m->pruned_at) return FC_OK;
    uint64_t chunks = 0;
    if ((st = read_model(s, m, 0, m->size, NULL, NULL, &chunks, err)) != FC_OK) return st;
    store_state state;
    st = store_state_get(s, m->version, &state, err);
    if (st == FC_ERR_NOT_FOUND)
        return fc_error_set(err, FC_ERR_CORRUPT, "model version %lld: its state row is missing",
                            v);
    if (st != FC_OK) return st;
    store_state_clear(&state);
    rep->versions_with_data++;
    rep->chunks += chunks;
    return FC_OK;
}

static fc_status verify_all(store *s, store_verify_report *rep, fc_error *err) {
    sqlite3_stmt *rows = NULL;
    int rc = sqlite3_prepare_v2(s->db,
                                "SELECT version, coalesce(parent_version, 0),"
                                " coalesce(round_id, 0), sha256, parent_sha256, chain_hash, size,"
                                " chunk_size, num_chunks, coalesce(pruned_at, 0),"
                                " tensor_specs_json FROM models ORDER BY version",
                                -1, &rows, NULL);
    if (rc != SQLITE_OK) return store_sqlite_error(s, rc, err, "preparing verification");
    fc_status st = FC_OK;
    while ((rc = sqlite3_step(rows)) == SQLITE_ROW) {
        store_model_info m = {
            .version = sqlite3_column_int64(rows, 0),
            .parent_version = sqlite3_column_int64(rows, 1),
            .round_id = sqlite3_column_int64(rows, 2),
            .size = (uint64_t)sqlite3_column_int64(rows, 6),
            .chunk_size = (uint64_t)sqlite3_column_int64(rows, 7),
            .num_chunks = (uint64_t)sqlite3_column_int64(rows, 8),
            .pruned_at = sqlite3_column_int64(rows, 9),
            .tensor_specs_json = (char *)sqlite3_column_text(rows, 10),
        };
        copy_hash(rows, 3, m.sha256);
        copy_hash(rows, 4, m.parent_sha256);
        copy_hash(rows, 5, m.chain_hash);
        if ((st = verify_link(s, &m, rows, rep, err)) != FC_OK) break;
        rep->versions++;
        rep->head_version = m.version;
        memcpy(rep->head_chain_hash, m.chain_hash, 32);
    }
    if (st == FC_OK && rc != SQLITE_DONE)
        st = store_sqlite_error(s, rc, err, "scanning model versions");
    sqlite3_finalize(rows);
    if (st != FC_OK) return st;
    if (rep->head_version > 0) {
        store_model_info head;
        if ((st = store_model_info_get(s, rep->head_version, &head, err)) != FC_OK) return st;
        int pruned = head.pruned_at != 0;
        store_model_info_clear(&head);
        if (pruned)
            return fc_error_set(err, FC_ERR_CORRUPT,
                                "newest model version %lld has no data (pruned)",
                                (long long)rep->head_version);
    }
    rc = sqlite3_prepare_v2(s->db,
                            "SELECT (SELECT count(*) FROM rounds), (SELECT min(id) FROM rounds r"
                            " WHERE r.state = 'COMMITTED'"
                            " AND coalesce(json_extract(r.config_json, '$.kind'), '') <> 'evaluate'"
                            " AND NOT EXISTS"
                            " (SELECT 1 FROM models m WHERE m.round_id = r.id))",
                            -1, &rows, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_step(rows);
    if (rc == SQLITE_ROW) {
        rep->rounds = (uint64_t)sqlite3_column_int64(rows, 0);
        if (sqlite3_column_type(rows, 1) != SQLITE_NULL)
            st = fc_error_set(err, FC_ERR_CORRUPT, "round %lld is COMMITTED but has no model",
                              (long long)sqlite3_column_int64(rows, 1));
    } else {
        st = store_sqlite_error(s, rc, err, "checking rounds");
    }
    sqlite3_finalize(rows);
    return st;
}

fc_status store_verify(store *s, store_verify_report *rep, fc_error *err) {
    store_verify_report local;
    if (!rep) rep = &local;
    memset(rep, 0, sizeof *rep);
    fc_status st = integrity_check(s, err);
    if (st != FC_OK) return st;
    if ((st = store_begin_read(s, err)) != FC_OK) return st;
    st = verify_all(s, rep, err);
    if (st == FC_OK)
        st = store_commit_tx(s, err);
    else
        store_rollback_tx(s);
    return st;
}

fc_status store_verify_print(const char *path, FILE *out, fc_error *err) {
    store_options opt = {.version = STORE_OPTIONS_V1, .readonly = 1, .must_exist = 1};
    store *s = NULL;
    fprintf(out, "verify %s\n", path);
    fc_status st = store_open(path, &opt, &s, err);
    if (st != FC_OK) {
        fprintf(out, "  result: cannot open: %s\n", err ? fc_error_text(err) : fc_strerror(st));
        return st;
    }
    store_verify_report rep;
    st = store_verify(s, &rep, err);
    store_close(s);
    if (st != FC_OK) {
        fprintf(out, "  result: BROKEN: %s\n", err ? fc_error_text(err) : fc_strerror(st));
        return st;
    }
    char hex[65];
    store_sha256_hex(rep.head_chain_hash, hex);
    fprintf(out,
            "  integrity_check: ok\n"
            "  model versions: %llu (%llu with data, %llu chunks read and hashed)\n"
            "  rounds: %llu\n",
            (unsigned long long)rep.versions, (unsigned long long)rep.versions_with_data,
            (unsigned long long)rep.chunks, (unsigned long long)rep.rounds);
    if (rep.head_version)
        fprintf(out, "  head: version %lld, chain hash %s\n", (long long)rep.head_version, hex);
    fprintf(out, "  result: OK\n");
    return FC_OK;
}
