/* fedctl_rounds.c: `fedctl rounds`, the training progress table read from the database: one row
 * per training round with its clients, their example-weighted mean train loss, the federated
 * evaluation accuracy of the model it produced, and its duration. With --follow it polls the
 * database (read-only, beside the running daemon) and prints each row once it is complete.
 *
 * What it reads (docs/fedctl.md): a committed training round has model_version > 0; its
 * accepted participants' metrics_json hold their "train_loss". An evaluation round has no model
 * of its own; its config_json names "kind": "evaluate" (or it is a committed round without a
 * model version) and its metrics_json holds the example-weighted means, "accuracy" among them.
 * It never writes to the database.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include <jansson.h>

#include "core/alloc.h"
#include "server/fedctl.h"
#include "storage/store.h"

#define CMD "rounds"
#define MAX_LIMIT 1000000u
/* With --follow, a finished training round whose evaluation has not started after this long
 * (and nothing else happened) is printed without it. */
#define EVAL_GRACE_MS 15000

static const char usage_text[] =
    "usage: fedctl rounds --db PATH [--limit N] [--follow [--until N] [--while-pid PID]\n"
    "                     [--interval MS]]\n"
    "       fedctl rounds [--limit N] [--url URL] [--token-file FILE] [--json]\n"
    "\n"
    "Without --db it asks a running daemon's HTTP API (--url, default $FEDCOORD_URL or\n"
    "http://127.0.0.1:7080) and lists its newest rounds: id, state, base and produced version,\n"
    "duration and failure reason (--json: the API's JSON). With --db:\n"
    "\n"
    "Prints one row per committed training round: its number (1, 2, ... counting committed\n"
    "training rounds), the clients whose updates were accepted, their example-weighted mean\n"
    "train loss (metric train_loss), the federated evaluation accuracy of the model it produced\n"
    "(the evaluation round's example-weighted mean of metric accuracy; '-' if it was not\n"
    "evaluated), the round's duration in seconds and the model version it produced. Failed\n"
    "rounds are printed as 'failed' lines with their reason. Opens the database read-only, so\n"
    "it can run beside the daemon.\n"
    "\n"
    "  --limit N       print only the last N rows of the history (then follow, with --follow)\n"
    "  --follow        keep polling and print rows as rounds complete\n"
    "  --until N       with --follow: exit 0 once the row of training round N is printed\n"
    "  --while-pid PID with --follow: exit 0 once process PID is gone (e.g. the daemon)\n"
    "  --interval MS   with --follow: polling interval (default 500)\n"
    "\n"
    "Exit status: 0 on success, 1 if the database cannot be read, 2 for bad input (usage, a\n"
    "missing database or a file that is not a fedcoord database).\n";

typedef struct args {
    const char *db;
    size_t limit; /* 0 = all */
    int follow;
    int64_t until; /* 0 = none */
    long pid;      /* 0 = none */
    long interval_ms;
} args;

/* One training round's row. */
typedef struct row {
    int64_t ordinal; /* training rounds committed so far, this one included */
    int64_t round_id, version;
    size_t clients;
    double loss_sum, loss_examples; /* example-weighted train_loss */
    double seconds;
    int have_acc;
    double acc;
    int64_t ended_at;
} row;

typedef struct view {
    const args *a;
    int64_t next_id;    /* lowest round id not yet consumed */
    int have_pending;   /* a training row waiting for its evaluation */
    row pending;
    int64_t pending_since_ms; /* local clock when it became pending */
    int header_done;
    int64_t trained;              /* committed training rounds consumed */
    int64_t last_printed;         /* ordinal of the last row printed */
    /* --limit on the history: a ring of the last `limit` lines */
    int buffering;
    char **ring;
    size_t ring_n, ring_at;
    fc_status fail; /* out of memory while buffering */
} view;

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void emit(view *v, const char *line) {
    if (!v->header_done) {
        printf("%6s %8s %11s %9s %8s %8s\n", "round", "clients", "train_loss", "eval_acc",
               "time_s", "version");
        v->header_done = 1;
    }
    if (v->buffering && v->a->limit) {
        char *copy = fc_strdup(line);
        if (!copy) {
            v->fail = FC_ERR_NOMEM;
            return;
        }
        if (v->ring_n < v->a->limit) {
            v->ring[v->ring_n++] = copy;
        } else {
            fc_free(v->ring[v->ring_at]);
            v->ring[v->ring_at] = copy;
            v->ring_at = (v->ring_at + 1) % v->a->limit;
        }
        return;
    }
    fputs(line, stdout);
    fflush(stdout);
}

static void flush_ring(view *v) {
    for (size_t i = 0; i < v->ring_n; i++) {
        size_t k = (v->ring_at + i) % v->ring_n;
        fputs(v->ring[k], stdout);
        fc_free(v->ring[k]);
    }
    v->ring_n = v->ring_at = 0;
    v->buffering = 0;
    fflush(stdout);
}

static void emit_row(view *v, const row *r) {
    char line[256], loss[32], acc[32];
    if (r->loss_examples > 0)
        snprintf(loss, sizeof loss, "%.4f", r->loss_sum / r->loss_examples);
    else
        snprintf(loss, sizeof loss, "-");
    if (r->have_acc)
        snprintf(acc, sizeof acc, "%.4f", r->acc);
    else
        snprintf(acc, sizeof acc, "-");
    snprintf(line, sizeof line, "%6" PRId64 " %8zu %11s %9s %8.2f %8" PRId64 "\n", r->ordinal,
             r->clients, loss, acc, r->seconds, r->version);
    emit(v, line);
    v->last_printed = r->ordinal;
}

/* A number from a metrics object: {"name": 0.5} or {"name": {"mean": 0.5, ...}}. */
static int metric_value(const char *json, const char *name, double *out) {
    if (!json)
        return 0;
    json_t *root = json_loads(json, 0, NULL);
    int ok = 0;
    if (json_is_object(root)) {
        json_t *m = json_object_get(root, name);
        if (json_is_object(m))
            m = json_object_get(m, "mean");
        if (json_is_number(m) && isfinite(json_number_value(m))) {
            *out = json_number_value(m);
            ok = 1;
        }
    }
    json_decref(root);
    return ok;
}

/* "kind" of a round's config_json, if it has one: 1 train, 2 evaluate, 0 unknown. The
 * evaluated version ("model_version") is written to *evaluated when present. */
static int config_kind(const char *json, int64_t *evaluated) {
    if (!json)
        return 0;
    json_t *root = json_loads(json, 0, NULL);
    int kind = 0;
    if (json_is_object(root)) {
        const char *k = json_string_value(json_object_get(root, "kind"));
        if (k && (strcmp(k, "evaluate") == 0 || strcmp(k, "eval") == 0 ||
                  strcmp(k, "EVALUATE") == 0))
            kind = 2;
        else if (k && (strcmp(k, "train") == 0 || strcmp(k, "TRAIN") == 0))
            kind = 1;
        json_t *mv = json_object_get(root, "model_version");
        if (json_is_integer(mv))
            *evaluated = json_integer_value(mv);
    }
    json_decref(root);
    return kind;
}

static fc_status add_participant(void *ud, const store_participant *p) {
    row *r = ud;
    if (p->outcome != STORE_OUTCOME_ACCEPTED)
        return FC_OK;
    r->clients++;
    double loss;
    if (p->num_examples > 0 && metric_value(p->metrics_json, "train_loss", &loss)) {
        r->loss_sum += (double)p->num_examples * loss;
        r->loss_examples += (double)p->num_examples;
    }
    return FC_OK;
}

static void flush_pending(view *v) {
    if (v->have_pending) {
        emit_row(v, &v->pending);
        v->have_pending = 0;
    }
}

typedef struct walk {
    view *v;
    store *s;
    int stop;       /* reached a round that is still running */
    int saw_later;  /* a round exists after the pending one (running or not) */
    fc_status st;
    fc_error *err;
} walk;

static fc_status on_round(void *ud, const store_round *r) {
    walk *w = ud;
    view *v = w->v;
    if (w->stop)
        return FC_OK;
    if (v->have_pending && r->id > v->pending.round_id)
        w->saw_later = 1;
    int final = r->state == STORE_ROUND_COMMITTED || r->state == STORE_ROUND_FAILED;
    if (!final) {
        w->stop = 1;
        return FC_OK;
    }
    int64_t evaluated = r->base_version;
    int kind = config_kind(r->config_json, &evaluated);
    if (kind == 0)
        kind = r->model_version > 0 ? 1 : (r->state == STORE_ROUND_COMMITTED ? 2 : 0);
    if (kind == 2 && v->have_pending && evaluated == v->pending.version) {
        double acc;
        if (r->state == STORE_ROUND_COMMITTED && metric_value(r->metrics_json, "accuracy", &acc)) {
            v->pending.have_acc = 1;
            v->pending.acc = acc;
        }
        flush_pending(v);
    } else {
        flush_pending(v);
        if (r->state == STORE_ROUND_FAILED) {
            char line[512];
            snprintf(line, sizeof line, "failed %sround %" PRId64 ": %s\n",
                     kind == 2 ? "evaluation " : kind == 1 ? "training " : "", r->id,
                     r->failure_reason ? r->failure_reason : "(no reason recorded)");
            emit(v, line);
        } else if (kind == 1) {
            row nr = {.ordinal = ++v->trained, .round_id = r->id, .version = r->model_version,
                      .ended_at = r->ended_at};
            nr.seconds = r->ended_at > r->started_at ? (double)(r->ended_at - r->started_at) / 1e3
                                                     : 0;
            fc_status st = store_participants_list(w->s, r->id, add_participant, &nr, w->err);
            if (st != FC_OK) {
                w->st = st;
                return st;
            }
            v->pending = nr;
            v->have_pending = 1;
            v->pending_since_ms = now_ms();
        }
    }
    v->next_id = r->id + 1;
    return FC_OK;
}

/* Reads every round from next_id on. *saw_later tells whether a round (of any state) exists
 * after the pending row. */
static fc_status poll_once(view *v, store *s, int *saw_later, fc_error *err) {
    walk w = {.v = v, .s = s, .err = err};
    fc_status st = store_round_list(s, v->next_id - 1, 0, on_round, &w, err);
    if (st == FC_OK)
        st = w.st;
    if (st == FC_OK && v->fail != FC_OK)
        st = fc_error_set(err, v->fail, "out of memory");
    *saw_later = w.saw_later;
    return st;
}

static int pid_alive(long pid) {
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int parse_long(const char *flag, const char *v, long min, long max, long *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || errno || *end || x < min || x > max || v[0] == '+' || v[0] == ' ')
        return fedctl_bad_input(CMD, "%s '%s': expected an integer in %ld..%ld", flag, v, min,
                                max);
    *out = x;
    return FEDCTL_OK;
}

static int parse(int argc, char **argv, args *a) {
    memset(a, 0, sizeof *a);
    a->interval_ms = 500;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--follow") == 0) {
            a->follow = 1;
            continue;
        }
        static const char *const valued[] = {"--db", "--limit", "--until", "--while-pid",
                                             "--interval"};
        int which = -1;
        for (int k = 0; k < 5; k++)
            if (strcmp(arg, valued[k]) == 0)
                which = k;
        if (which < 0)
            return fedctl_bad_input(CMD, "unexpected argument '%s' (see fedctl rounds --help)",
                                    arg);
        if (i + 1 >= argc || !argv[i + 1][0])
            return fedctl_bad_input(CMD, "%s needs a value", arg);
        const char *v = argv[++i];
        long x = 0;
        int rc = FEDCTL_OK;
        switch (which) {
        case 0:
            if (a->db)
                return fedctl_bad_input(CMD, "--db given twice");
            a->db = v;
            break;
        case 1:
            rc = parse_long(arg, v, 1, MAX_LIMIT, &x);
            a->limit = (size_t)x;
            break;
        case 2:
            rc = parse_long(arg, v, 1, 1000000000L, &x);
            a->until = x;
            break;
        case 3:
            rc = parse_long(arg, v, 1, 0x7fffffffL, &x);
            a->pid = x;
            break;
        default:
            rc = parse_long(arg, v, 10, 60000, &x);
            a->interval_ms = x;
            break;
        }
        if (rc != FEDCTL_OK)
            return rc;
    }
    if (!a->db)
        return fedctl_bad_input(CMD, "--db PATH is required");
    if (!a->follow && (a->until || a->pid))
        return fedctl_bad_input(CMD, "--until and --while-pid need --follow");
    return FEDCTL_OK;
}

static int run(int argc, char **argv) {
    if (!fedctl_has_flag(argc, argv, "--db"))
        return fedctl_http_rounds(argc, argv); /* a running daemon, over HTTP */
    args a;
    int rc = parse(argc, argv, &a);
    if (rc != FEDCTL_OK)
        return rc;
    store *s = NULL;
    if ((rc = fedctl_open_store_ro(CMD, a.db, &s)) != FEDCTL_OK)
        return rc;
    view v = {.a = &a, .next_id = 1};
    if (a.limit) {
        v.ring = fc_calloc(a.limit, sizeof *v.ring);
        if (!v.ring) {
            store_close(s);
            return fedctl_failed(CMD, "out of memory for --limit %zu", a.limit);
        }
        v.buffering = 1;
    }
    int saw_later = 0;
    fc_error err = {0};
    fc_status st = poll_once(&v, s, &saw_later, &err);
    if (!a.follow && st == FC_OK)
        flush_pending(&v);
    if (v.buffering)
        flush_ring(&v);
    while (st == FC_OK && a.follow) {
        if (a.until && v.last_printed >= a.until)
            break;
        if (v.have_pending && !saw_later && now_ms() - v.pending_since_ms > EVAL_GRACE_MS)
            flush_pending(&v);
        if (a.pid && !pid_alive(a.pid)) {
            /* The daemon is gone: one last read, then print what is complete. */
            st = poll_once(&v, s, &saw_later, &err);
            flush_pending(&v);
            break;
        }
        if (a.until && v.last_printed >= a.until)
            break;
        sleep_ms(a.interval_ms);
        st = poll_once(&v, s, &saw_later, &err);
    }
    if (v.ring) {
        for (size_t i = 0; i < v.ring_n; i++)
            fc_free(v.ring[i]);
        fc_free(v.ring);
    }
    store_close(s);
    if (st != FC_OK)
        return fedctl_failed(CMD, "%s: %s", a.db, fc_error_text(&err));
    return FEDCTL_OK;
}

const fedctl_command fedctl_cmd_rounds = {
    .name = "rounds",
    .summary = "print the training progress table (optionally following a running daemon)",
    .usage = usage_text,
    .run = run,
};
