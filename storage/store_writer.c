/* store_writer.c: the writer thread. It owns the write connection and runs queued jobs one at a
 * time, in submission order, calling each job's completion callback on the writer thread.
 *
 * WAL checkpoints run on a second thread with its own connection: a passive checkpoint copies
 * committed pages into the database file without the write lock, so a commit queued meanwhile
 * never waits for that copy (about STORE_WRITER_CHECKPOINT_BYTES and an fsync).
 *
 * The queue is bounded (STORE_WRITER_QUEUE_MAX) so a stuck disk turns into FC_ERR_BUSY for the
 * submitter instead of unbounded memory. This file never touches the event loop: the daemon's
 * done callback does the uv_async_send.
 */
#include <pthread.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "storage/store_internal.h"

typedef struct writer_job {
    struct writer_job *next;
    store_job_fn job;
    void *job_ud;
    store_done_fn done;
    void *done_ud;
} writer_job;

struct store_writer {
    store *s;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    writer_job *head, *tail;
    size_t pending;
    int stopping;
    int wal_pages;  /* pages in the WAL after the last commit; writer thread only */
    int ckpt_pages; /* STORE_WRITER_CHECKPOINT_BYTES in this database's pages */
    /* the checkpointer: its connection and thread (ckpt == NULL: the writer checkpoints) */
    store *ckpt;
    pthread_t ckpt_thread;
    pthread_cond_t ckpt_cv;
    int ckpt_due;
    unsigned long checkpoints; /* completed, under mu */
};

/* Replaces SQLite's auto-checkpoint hook (which would checkpoint inside COMMIT): only records
 * the WAL size; writer_main checkpoints after the job is reported. */
static int wal_hook(void *ud, sqlite3 *db, const char *name, int pages) {
    (void)db, (void)name;
    ((store_writer *)ud)->wal_pages = pages;
    return SQLITE_OK;
}

static void checkpoint(store_writer *w, store *s) {
    int log_pages = 0, done_pages = 0;
    int rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log_pages,
                                       &done_pages);
    /* A failed or partial checkpoint loses nothing: the pages stay in the WAL and are copied
     * by a later one (or by SQLite when the database is next opened). */
    if (rc != SQLITE_OK)
        FC_LOG(FC_LOG_WARN, "store checkpoint failed", FC_LS("db", s->path),
               FC_LS("error", sqlite3_errmsg(s->db)));
    pthread_mutex_lock(&w->mu);
    w->checkpoints++;
    pthread_mutex_unlock(&w->mu);
}

/* Writer thread, after a job: hands a due checkpoint to the checkpointer (or runs it). */
static void checkpoint_if_due(store_writer *w) {
    if (w->wal_pages < w->ckpt_pages) return;
    w->wal_pages = 0;
    if (!w->ckpt) {
        checkpoint(w, w->s);
        return;
    }
    pthread_mutex_lock(&w->mu);
    w->ckpt_due = 1;
    pthread_cond_signal(&w->ckpt_cv);
    pthread_mutex_unlock(&w->mu);
}

static void *checkpointer_main(void *arg) {
    store_writer *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->ckpt_due && !w->stopping) pthread_cond_wait(&w->ckpt_cv, &w->mu);
        if (!w->ckpt_due) break; /* stopping */
        w->ckpt_due = 0;
        pthread_mutex_unlock(&w->mu);
        checkpoint(w, w->ckpt);
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

unsigned long store_writer_checkpoints(store_writer *w) {
    pthread_mutex_lock(&w->mu);
    unsigned long n = w->checkpoints;
    pthread_mutex_unlock(&w->mu);
    return n;
}

static void *writer_main(void *arg) {
    store_writer *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->head && !w->stopping) pthread_cond_wait(&w->cv, &w->mu);
        writer_job *j = w->head;
        if (!j) break; /* stopping and drained */
        w->head = j->next;
        if (!w->head) w->tail = NULL;
        pthread_mutex_unlock(&w->mu);

        fc_error err = {0};
        fc_status st = j->job(w->s, j->job_ud, &err);
        if (st != FC_OK && err.code == FC_OK) err.code = st;
        /* A job must leave no transaction open; if one did, undo it so the next starts clean. */
        if (!sqlite3_get_autocommit(w->s->db)) store_rollback_tx(w->s);
        if (j->done) j->done(j->done_ud, st, &err);
        fc_free(j);
        checkpoint_if_due(w);

        pthread_mutex_lock(&w->mu);
        w->pending--;
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

fc_status store_writer_start(const char *path, const store_options *opt, store_writer **out,
                             fc_error *err) {
    *out = NULL;
    if (opt && opt->readonly)
        return fc_error_set(err, FC_ERR_INVALID, "store writer: needs a read-write connection");
    store_writer *w = fc_calloc(1, sizeof *w);
    if (!w) return fc_error_set(err, FC_ERR_NOMEM, "store writer: out of memory");
    fc_status st = store_open(path, opt, &w->s, err);
    if (st != FC_OK) {
        fc_free(w);
        return st;
    }
    sqlite3_wal_hook(w->s->db, wal_hook, w);
    w->ckpt_pages = 1;
    sqlite3_stmt *q = NULL;
    if (sqlite3_prepare_v2(w->s->db, "PRAGMA page_size", -1, &q, NULL) == SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW && sqlite3_column_int(q, 0) > 0 &&
        STORE_WRITER_CHECKPOINT_BYTES / sqlite3_column_int(q, 0) > 1)
        w->ckpt_pages = (int)(STORE_WRITER_CHECKPOINT_BYTES / sqlite3_column_int(q, 0));
    sqlite3_finalize(q);
    if (pthread_mutex_init(&w->mu, NULL) != 0) goto fail_mutex;
    if (pthread_cond_init(&w->cv, NULL) != 0) goto fail_cond;
    if (pthread_cond_init(&w->ckpt_cv, NULL) != 0) goto fail_ckpt_cond;
    /* Without a second connection (or thread) the writer checkpoints itself, as before. */
    fc_error ce = {0};
    store_options co = opt ? *opt : (store_options){.version = STORE_OPTIONS_V1};
    co.must_exist = 1;
    if (store_open(path, &co, &w->ckpt, &ce) == FC_OK &&
        pthread_create(&w->ckpt_thread, NULL, checkpointer_main, w) != 0) {
        store_close(w->ckpt);
        w->ckpt = NULL;
    }
    if (pthread_create(&w->thread, NULL, writer_main, w) != 0) goto fail_thread;
    *out = w;
    return FC_OK;
fail_thread:
    if (w->ckpt) {
        pthread_mutex_lock(&w->mu);
        w->stopping = 1;
        pthread_cond_signal(&w->ckpt_cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->ckpt_thread, NULL);
        store_close(w->ckpt);
    }
    pthread_cond_destroy(&w->ckpt_cv);
fail_ckpt_cond:
    pthread_cond_destroy(&w->cv);
fail_cond:
    pthread_mutex_destroy(&w->mu);
fail_mutex:
    store_close(w->s);
    fc_free(w);
    return fc_error_set(err, FC_ERR_SYSTEM, "store writer: cannot start the thread");
}

fc_status store_writer_submit(store_writer *w, store_job_fn job, void *job_ud,
                              store_done_fn done, void *done_ud, fc_error *err) {
    if (!w || !job) return fc_error_set(err, FC_ERR_INVALID, "store writer: no job");
    writer_job *j = fc_calloc(1, sizeof *j);
    if (!j) return fc_error_set(err, FC_ERR_NOMEM, "store writer: out of memory");
    j->job = job;
    j->job_ud = job_ud;
    j->done = done;
    j->done_ud = done_ud;
    pthread_mutex_lock(&w->mu);
    fc_status st = FC_OK;
    if (w->stopping)
        st = fc_error_set(err, FC_ERR_CLOSED, "store writer: stopped");
    else if (w->pending >= STORE_WRITER_QUEUE_MAX)
        st = fc_error_set(err, FC_ERR_BUSY, "store writer: %d jobs already queued",
                          STORE_WRITER_QUEUE_MAX);
    if (st == FC_OK) {
        if (w->tail)
            w->tail->next = j;
        else
            w->head = j;
        w->tail = j;
        w->pending++;
        pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    if (st != FC_OK) fc_free(j);
    return st;
}

/* The future behind store_writer_call. */
typedef struct call_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    fc_status st;
    fc_error err;
} call_wait;

static void call_done(void *ud, fc_status st, const fc_error *err) {
    call_wait *cw = ud;
    pthread_mutex_lock(&cw->mu);
    cw->st = st;
    if (err) cw->err = *err;
    cw->done = 1;
    pthread_cond_signal(&cw->cv);
    pthread_mutex_unlock(&cw->mu);
}

fc_status store_writer_call(store_writer *w, store_job_fn job, void *job_ud, fc_error *err) {
    call_wait cw;
    memset(&cw, 0, sizeof cw);
    if (pthread_mutex_init(&cw.mu, NULL) != 0)
        return fc_error_set(err, FC_ERR_SYSTEM, "store writer: mutex init failed");
    if (pthread_cond_init(&cw.cv, NULL) != 0) {
        pthread_mutex_destroy(&cw.mu);
        return fc_error_set(err, FC_ERR_SYSTEM, "store writer: condvar init failed");
    }
    fc_status st = store_writer_submit(w, job, job_ud, call_done, &cw, err);
    if (st == FC_OK) {
        pthread_mutex_lock(&cw.mu);
        while (!cw.done) pthread_cond_wait(&cw.cv, &cw.mu);
        pthread_mutex_unlock(&cw.mu);
        st = cw.st;
        if (err && st != FC_OK) *err = cw.err;
    }
    pthread_cond_destroy(&cw.cv);
    pthread_mutex_destroy(&cw.mu);
    return st;
}

void store_writer_stop(store_writer *w) {
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    if (w->ckpt) { /* after the writer: it may have handed over one last checkpoint */
        pthread_mutex_lock(&w->mu);
        pthread_cond_signal(&w->ckpt_cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->ckpt_thread, NULL);
        store_close(w->ckpt);
    }
    pthread_cond_destroy(&w->ckpt_cv);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    store_close(w->s);
    fc_free(w);
}
