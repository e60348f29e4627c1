/* bench_store.c: commit latency of a model version, as a ratio to writing the same bytes to a
 * plain file with write() + fsync(), both measured in this run on the same file system.
 *
 *   build/bench/bench_store            1M and 100M f32 parameters (4 MB and 400 MB)
 *   BENCH_QUICK=1 build/bench/bench_store   1M and 10M parameters
 *   BENCH_DIR=/path                    where the files go (default: $TMPDIR or /tmp)
 *
 * The store commit is the full store_commit_round: round record, one participant, state blobs,
 * the chunks (16 MiB each) pulled from a streaming source in 1 MiB pieces, SHA-256, the chain
 * hash, COMMIT with synchronous=FULL, and any WAL checkpoint SQLite runs at that commit. The
 * "writer" column is the same commit through store_writer_call on an idle writer, whose
 * connection checkpoints after reporting instead (what the daemon sees before it announces).
 * Each size is measured several times and the median reported.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "storage/store.h"

#define PIECE (1u << 20)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct repeat_src {
    const uint8_t *block; /* PIECE bytes, repeated */
    uint64_t total, pos;
} repeat_src;

static fc_status repeat_read(void *ud, void *buf, size_t cap, size_t *got, fc_error *err) {
    (void)err;
    repeat_src *r = ud;
    uint64_t left = r->total - r->pos;
    size_t n = cap < PIECE ? cap : PIECE;
    if (n > left) n = (size_t)left;
    memcpy(buf, r->block, n);
    r->pos += n;
    *got = n;
    return FC_OK;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

typedef struct writer_job {
    const uint8_t *block;
    uint64_t total;
    int64_t version;
    double secs;
} writer_job;

static int store_commit_once(store *s, int64_t version, const uint8_t *block, uint64_t total,
                             double *secs, int prune);

static fc_status run_writer_job(store *s, void *ud, fc_error *err) {
    writer_job *j = ud;
    if (store_commit_once(s, j->version, j->block, j->total, &j->secs, 0) != 0)
        return fc_error_set(err, FC_ERR_IO, "commit failed");
    return FC_OK;
}

/* Waits for an idle writer, pruning old versions first (untimed). */
static fc_status prune_job(store *s, void *ud, fc_error *err) {
    (void)ud;
    return store_prune(s, 1, 0, 0, 3, NULL, err);
}

/* Latency of store_writer_call for one commit, starting from an idle writer. */
static int writer_commit_once(store_writer *w, int64_t version, const uint8_t *block,
                              uint64_t total, double *secs) {
    fc_error err = {0};
    if (store_writer_call(w, prune_job, NULL, &err) != FC_OK) return -1; /* and idle after */
    writer_job j = {.block = block, .total = total, .version = version};
    double t0 = now_s();
    if (store_writer_call(w, run_writer_job, &j, &err) != FC_OK) return -1;
    *secs = now_s() - t0;
    return 0;
}

static int plain_write(const char *path, const uint8_t *block, uint64_t total, double *secs) {
    double t0 = now_s();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return -1;
    uint64_t done = 0;
    while (done < total) {
        size_t n = total - done < PIECE ? (size_t)(total - done) : PIECE;
        ssize_t w = write(fd, block, n);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        done += (uint64_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) return -1;
    *secs = now_s() - t0;
    return 0;
}

static int store_commit_once(store *s, int64_t version, const uint8_t *block, uint64_t total,
                             double *secs, int prune) {
    repeat_src src = {.block = block, .total = total};
    store_participant p = {.client = "bench", .outcome = STORE_OUTCOME_ACCEPTED,
                           .num_examples = 1, .bytes = total};
    static const char rule[64] = "rule state", opt[256] = "optimizer state";
    store_commit c = {
        .round_id = version, .version = version, .parent_version = version - 1,
        .tensor_specs_json = "[{\"name\":\"w\",\"dtype\":\"f32\",\"shape\":[0]}]",
        .model_size = total, .source = repeat_read, .source_ud = &src,
        .started_at = 1, .ended_at = 2, .report_json = "{}", .metrics_json = "{}",
        .participants = &p, .num_participants = 1, .rule_name = "fedavg",
        .optimizer_name = "sgd", .rule_state = rule, .rule_state_len = sizeof rule,
        .optimizer_state = opt, .optimizer_state_len = sizeof opt,
    };
    fc_error err = {0};
    double t0 = now_s();
    if (store_commit_round(s, &c, NULL, &err) != FC_OK) {
        fprintf(stderr, "bench_store: commit failed: %s\n", fc_error_text(&err));
        return -1;
    }
    *secs = now_s() - t0;
    /* Keep the database from growing across repetitions: only the newest keeps its chunks. */
    if (prune && store_prune(s, 1, 0, 0, 3, NULL, &err) != FC_OK) {
        fprintf(stderr, "bench_store: prune failed: %s\n", fc_error_text(&err));
        return -1;
    }
    return 0;
}

int main(void) {
    const char *dir = getenv("BENCH_DIR");
    if (!dir || !*dir) dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = "/tmp";
    int quick = getenv("BENCH_QUICK") && strcmp(getenv("BENCH_QUICK"), "0") != 0;
    const uint64_t params[2] = {1000000, quick ? 10000000 : 100000000};
    const int reps[2] = {7, quick ? 3 : 3};

    uint8_t *block = fc_malloc(PIECE);
    if (!block) return 1;
    uint32_t x = 12345;
    for (size_t i = 0; i < PIECE; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        block[i] = (uint8_t)x;
    }
    char db_path[512], file_path[512], wdb_path[512];
    snprintf(wdb_path, sizeof wdb_path, "%s/bench_store_writer-%d.db", dir, (int)getpid());
    snprintf(db_path, sizeof db_path, "%s/bench_store-%d.db", dir, (int)getpid());
    snprintf(file_path, sizeof file_path, "%s/bench_store-%d.bin", dir, (int)getpid());
    store *s = NULL;
    fc_error err = {0};
    if (store_open(db_path, NULL, &s, &err) != FC_OK) {
        fprintf(stderr, "bench_store: %s\n", fc_error_text(&err));
        return 1;
    }
    store_writer *w = NULL;
    if (store_writer_start(wdb_path, NULL, &w, &err) != FC_OK) {
        fprintf(stderr, "bench_store: %s\n", fc_error_text(&err));
        store_close(s);
        return 1;
    }
    int rc = 0;
    int64_t version = 0, wversion = 0;
    printf("bench_store: dir=%s%s\n", dir, quick ? " (quick)" : "");
    printf("%-12s %10s %12s %12s %8s %12s %8s\n", "params(f32)", "bytes", "file+fsync",
           "commit", "ratio", "writer", "ratio");
    for (int k = 0; k < 2 && rc == 0; k++) {
        uint64_t bytes = params[k] * 4;
        double tf[9], tc[9], tw[9];
        for (int r = 0; r < reps[k] && rc == 0; r++) {
            /* Alternate the order so neither side always runs on a warmer cache. */
            if (r % 2 == 0) {
                rc = plain_write(file_path, block, bytes, &tf[r]);
                if (rc == 0) rc = store_commit_once(s, ++version, block, bytes, &tc[r], 1);
            } else {
                rc = store_commit_once(s, ++version, block, bytes, &tc[r], 1);
                if (rc == 0) rc = plain_write(file_path, block, bytes, &tf[r]);
            }
            if (rc == 0) rc = writer_commit_once(w, ++wversion, block, bytes, &tw[r]);
            unlink(file_path);
        }
        if (rc != 0) break;
        double mf = median(tf, reps[k]), mc = median(tc, reps[k]), mw = median(tw, reps[k]);
        printf("%-12llu %10llu %10.1fms %10.1fms %8.2f %10.1fms %8.2f\n",
               (unsigned long long)params[k], (unsigned long long)bytes, mf * 1e3, mc * 1e3,
               mc / mf, mw * 1e3, mw / mf);
    }
    if (rc != 0) fprintf(stderr, "bench_store: failed\n");
    store_close(s);
    store_writer_stop(w);
    const char *dbs[2] = {db_path, wdb_path};
    for (int i = 0; i < 2; i++) {
        char side[600];
        unlink(dbs[i]);
        snprintf(side, sizeof side, "%s-wal", dbs[i]);
        unlink(side);
        snprintf(side, sizeof side, "%s-shm", dbs[i]);
        unlink(side);
    }
    fc_free(block);
    return rc == 0 ? 0 : 1;
}
