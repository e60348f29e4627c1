/* metrics.c: the Prometheus registry and its text exposition format 0.0.4.
 *
 * metrics owns families and series in plain arrays; updates are O(1) arithmetic and never
 * allocate. It never reads a clock, never does I/O, and never takes a lock (loop thread only).
 */
#include "server/metrics.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"

struct metrics_series {
    metrics_family *family;
    char *label_values[METRICS_MAX_LABELS];
    double value;                                /* counter/gauge value; histogram sum */
    uint64_t count;                              /* histogram observations */
    uint64_t bucket_counts[METRICS_MAX_BUCKETS]; /* non-cumulative per bucket */
    metrics_series *next;
};

struct metrics_family {
    metrics_registry *reg;
    metrics_type type;
    char *name, *help;
    char *label_names[METRICS_MAX_LABELS];
    size_t nlabels;
    double buckets[METRICS_MAX_BUCKETS];
    size_t nbuckets;
    metrics_series *series, *series_tail;
    metrics_family *next;
};

struct metrics_registry {
    metrics_family *families, *tail;
};

fc_status metrics_new(metrics_registry **out, fc_error *err) {
    metrics_registry *r = fc_calloc(1, sizeof *r);
    if (!r)
        return fc_error_set(err, FC_ERR_NOMEM, "metrics: no memory for the registry");
    *out = r;
    return FC_OK;
}

static void series_free(metrics_series *s) {
    for (size_t i = 0; i < METRICS_MAX_LABELS; i++)
        fc_free(s->label_values[i]);
    fc_free(s);
}

static void family_free(metrics_family *f) {
    metrics_series *s = f->series;
    while (s) {
        metrics_series *next = s->next;
        series_free(s);
        s = next;
    }
    for (size_t i = 0; i < f->nlabels; i++)
        fc_free(f->label_names[i]);
    fc_free(f->name);
    fc_free(f->help);
    fc_free(f);
}

void metrics_free(metrics_registry *r) {
    if (!r)
        return;
    metrics_family *f = r->families;
    while (f) {
        metrics_family *next = f->next;
        family_free(f);
        f = next;
    }
    fc_free(r);
}

static int is_alpha_(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int valid_metric_name(const char *s) {
    if (!s || !*s || !(is_alpha_(*s) || *s == ':'))
        return 0;
    for (const char *p = s + 1; *p; p++)
        if (!is_alpha_(*p) && !is_digit(*p) && *p != ':')
            return 0;
    return 1;
}

static int valid_label_name(const char *s) {
    if (!s || !*s || !is_alpha_(*s))
        return 0;
    if (s[0] == '_' && s[1] == '_')
        return 0;
    for (const char *p = s + 1; *p; p++)
        if (!is_alpha_(*p) && !is_digit(*p))
            return 0;
    return 1;
}

metrics_family *metrics_family_find(const metrics_registry *r, const char *name) {
    for (metrics_family *f = r->families; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

fc_status metrics_family_add(metrics_registry *r, metrics_type type, const char *name,
                             const char *help, const char *const *label_names, size_t nlabels,
                             const double *buckets, size_t nbuckets, metrics_family **out,
                             fc_error *err) {
    if (type != METRICS_COUNTER && type != METRICS_GAUGE && type != METRICS_HISTOGRAM)
        return fc_error_set(err, FC_ERR_INVALID, "metrics: unknown type %d", (int)type);
    if (!valid_metric_name(name))
        return fc_error_set(err, FC_ERR_INVALID, "metrics: invalid metric name '%s'",
                            name ? name : "(null)");
    if (metrics_family_find(r, name))
        return fc_error_set(err, FC_ERR_EXISTS, "metrics: '%s' is already registered", name);
    if (nlabels > METRICS_MAX_LABELS || (nlabels && !label_names))
        return fc_error_set(err, FC_ERR_INVALID, "metrics: '%s' has %zu labels, at most %d", name,
                            nlabels, METRICS_MAX_LABELS);
    for (size_t i = 0; i < nlabels; i++) {
        if (!valid_label_name(label_names[i]) ||
            (type == METRICS_HISTOGRAM && strcmp(label_names[i], "le") == 0))
            return fc_error_set(err, FC_ERR_INVALID, "metrics: '%s' has invalid label name '%s'",
                                name, label_names[i] ? label_names[i] : "(null)");
        for (size_t j = 0; j < i; j++)
            if (strcmp(label_names[i], label_names[j]) == 0)
                return fc_error_set(err, FC_ERR_INVALID, "metrics: '%s' repeats label name '%s'",
                                    name, label_names[i]);
    }
    if (type == METRICS_HISTOGRAM) {
        if (nbuckets < 1 || nbuckets > METRICS_MAX_BUCKETS || !buckets)
            return fc_error_set(err, FC_ERR_INVALID,
                                "metrics: histogram '%s' needs 1..%d buckets, got %zu", name,
                                METRICS_MAX_BUCKETS, nbuckets);
        for (size_t i = 0; i < nbuckets; i++)
            if (!isfinite(buckets[i]) || (i > 0 && !(buckets[i] > buckets[i - 1])))
                return fc_error_set(err, FC_ERR_INVALID,
                                    "metrics: histogram '%s' bucket %zu (%g) is not finite and "
                                    "above the previous one",
                                    name, i, buckets[i]);
    } else if (nbuckets) {
        return fc_error_set(err, FC_ERR_INVALID, "metrics: '%s' is not a histogram, no buckets",
                            name);
    }
    metrics_family *f = fc_calloc(1, sizeof *f);
    if (!f)
        goto nomem;
    f->reg = r;
    f->type = type;
    f->name = fc_strdup(name);
    f->help = fc_strdup(help ? help : "");
    if (!f->name || !f->help)
        goto nomem;
    for (size_t i = 0; i < nlabels; i++) {
        if (!(f->label_names[i] = fc_strdup(label_names[i])))
            goto nomem;
        f->nlabels = i + 1;
    }
    if (nbuckets)
        memcpy(f->buckets, buckets, nbuckets * sizeof *buckets);
    f->nbuckets = nbuckets;
    if (r->tail)
        r->tail->next = f;
    else
        r->families = f;
    r->tail = f;
    if (out)
        *out = f;
    return FC_OK;
nomem:
    if (f)
        family_free(f);
    return fc_error_set(err, FC_ERR_NOMEM, "metrics: no memory for '%s'", name);
}

metrics_series *metrics_series_find(const metrics_family *f, const char *const *label_values) {
    for (metrics_series *s = f->series; s; s = s->next) {
        size_t i = 0;
        while (i < f->nlabels && strcmp(s->label_values[i], label_values[i]) == 0)
            i++;
        if (i == f->nlabels)
            return s;
    }
    return NULL;
}

fc_status metrics_series_add(metrics_family *f, const char *const *label_values,
                             metrics_series **out, fc_error *err) {
    if (f->nlabels && !label_values)
        return fc_error_set(err, FC_ERR_INVALID, "metrics: '%s' needs %zu label values", f->name,
                            f->nlabels);
    for (size_t i = 0; i < f->nlabels; i++)
        if (!label_values[i])
            return fc_error_set(err, FC_ERR_INVALID, "metrics: '%s' label '%s' has no value",
                                f->name, f->label_names[i]);
    if (metrics_series_find(f, label_values))
        return fc_error_set(err, FC_ERR_EXISTS, "metrics: '%s' already has that label set",
                            f->name);
    metrics_series *s = fc_calloc(1, sizeof *s);
    if (!s)
        goto nomem;
    s->family = f;
    for (size_t i = 0; i < f->nlabels; i++)
        if (!(s->label_values[i] = fc_strdup(label_values[i])))
            goto nomem;
    if (f->series_tail)
        f->series_tail->next = s;
    else
        f->series = s;
    f->series_tail = s;
    if (out)
        *out = s;
    return FC_OK;
nomem:
    if (s)
        series_free(s);
    return fc_error_set(err, FC_ERR_NOMEM, "metrics: no memory for a series of '%s'", f->name);
}

void metrics_counter_add(metrics_series *s, double v) {
    assert(s->family->type == METRICS_COUNTER);
    if (!(v >= 0) || !isfinite(v))
        return;
    s->value += v;
}

void metrics_gauge_set(metrics_series *s, double v) {
    assert(s->family->type == METRICS_GAUGE);
    s->value = v;
}

void metrics_gauge_add(metrics_series *s, double v) {
    assert(s->family->type == METRICS_GAUGE);
    s->value += v;
}

void metrics_histogram_observe(metrics_series *s, double v) {
    const metrics_family *f = s->family;
    assert(f->type == METRICS_HISTOGRAM);
    if (isnan(v))
        return;
    size_t i = 0;
    while (i < f->nbuckets && v > f->buckets[i])
        i++;
    if (i < f->nbuckets)
        s->bucket_counts[i]++; /* else only the implicit +Inf bucket */
    s->count++;
    s->value += v;
}

double metrics_value(const metrics_series *s) { return s->value; }
uint64_t metrics_histogram_count(const metrics_series *s) { return s->count; }

char *metrics_format_value(double v, char *buf, size_t size) {
    if (isnan(v)) {
        snprintf(buf, size, "NaN");
    } else if (isinf(v)) {
        snprintf(buf, size, v > 0 ? "+Inf" : "-Inf");
    } else {
        /* The shortest %g precision that reads back exactly. */
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(buf, size, "%.*g", prec, v);
            if (strtod(buf, NULL) == v)
                break;
        }
    }
    return buf;
}

/* ---- exposition ---- */

static fc_status put(fc_buf *b, const char *s) { return fc_buf_append(b, s, strlen(s)); }

/* HELP text escapes backslash and newline; label values also escape the double quote. */
static fc_status put_escaped(fc_buf *b, const char *s, int quote) {
    for (const char *p = s; *p; p++) {
        fc_status st;
        if (*p == '\\')
            st = put(b, "\\\\");
        else if (*p == '\n')
            st = put(b, "\\n");
        else if (quote && *p == '"')
            st = put(b, "\\\"");
        else
            st = fc_buf_append(b, p, 1);
        if (st != FC_OK)
            return st;
    }
    return FC_OK;
}

/* name{labels[,le="x"]} value\n */
static fc_status put_sample(fc_buf *b, const metrics_series *s, const char *suffix, const char *le,
                            double value) {
    const metrics_family *f = s->family;
    char num[32];
    fc_status st = put(b, f->name);
    if (st == FC_OK)
        st = put(b, suffix);
    if (st == FC_OK && (f->nlabels || le)) {
        st = put(b, "{");
        for (size_t i = 0; st == FC_OK && i < f->nlabels; i++) {
            if (i)
                st = put(b, ",");
            if (st == FC_OK)
                st = put(b, f->label_names[i]);
            if (st == FC_OK)
                st = put(b, "=\"");
            if (st == FC_OK)
                st = put_escaped(b, s->label_values[i], 1);
            if (st == FC_OK)
                st = put(b, "\"");
        }
        if (st == FC_OK && le) {
            if (f->nlabels)
                st = put(b, ",");
            if (st == FC_OK)
                st = put(b, "le=\"");
            if (st == FC_OK)
                st = put(b, le);
            if (st == FC_OK)
                st = put(b, "\"");
        }
        if (st == FC_OK)
            st = put(b, "}");
    }
    if (st == FC_OK)
        st = put(b, " ");
    if (st == FC_OK)
        st = put(b, metrics_format_value(value, num, sizeof num));
    if (st == FC_OK)
        st = put(b, "\n");
    return st;
}

static fc_status render_series(fc_buf *b, const metrics_series *s) {
    const metrics_family *f = s->family;
    if (f->type != METRICS_HISTOGRAM)
        return put_sample(b, s, "", NULL, s->value);
    uint64_t cumulative = 0;
    char le[32];
    fc_status st = FC_OK;
    for (size_t i = 0; st == FC_OK && i < f->nbuckets; i++) {
        cumulative += s->bucket_counts[i];
        st = put_sample(b, s, "_bucket", metrics_format_value(f->buckets[i], le, sizeof le),
                        (double)cumulative);
    }
    if (st == FC_OK)
        st = put_sample(b, s, "_bucket", "+Inf", (double)s->count);
    if (st == FC_OK)
        st = put_sample(b, s, "_sum", NULL, s->value);
    if (st == FC_OK)
        st = put_sample(b, s, "_count", NULL, (double)s->count);
    return st;
}

static const char *type_name(metrics_type t) {
    switch (t) {
    case METRICS_COUNTER:
        return "counter";
    case METRICS_GAUGE:
        return "gauge";
    case METRICS_HISTOGRAM:
        return "histogram";
    }
    return "untyped";
}

fc_status metrics_render(const metrics_registry *r, fc_buf *out, fc_error *err) {
    fc_status st = FC_OK;
    for (const metrics_family *f = r->families; st == FC_OK && f; f = f->next) {
        st = put(out, "# HELP ");
        if (st == FC_OK)
            st = put(out, f->name);
        if (st == FC_OK)
            st = put(out, " ");
        if (st == FC_OK)
            st = put_escaped(out, f->help, 0);
        if (st == FC_OK)
            st = put(out, "\n# TYPE ");
        if (st == FC_OK)
            st = put(out, f->name);
        if (st == FC_OK)
            st = put(out, " ");
        if (st == FC_OK)
            st = put(out, type_name(f->type));
        if (st == FC_OK)
            st = put(out, "\n");
        for (const metrics_series *s = f->series; st == FC_OK && s; s = s->next)
            st = render_series(out, s);
    }
    if (st != FC_OK)
        return fc_error_set(err, st, "metrics: rendering the exposition text");
    return FC_OK;
}

/* ---- the daemon's metric set ---- */

const char *const metrics_reject_reasons[] = {
    "malformed",       "limit_exceeded",    "bad_chunk",      "hash_mismatch",
    "shape_mismatch",  "unsupported_dtype", "size_overflow",  "non_finite",
    "update_rejected", "wrong_state",       "already_exists", "other",
};
const size_t metrics_reject_reason_count =
    sizeof metrics_reject_reasons / sizeof metrics_reject_reasons[0];

/* Seconds. Rounds last seconds to hours; aggregation and commits milliseconds to minutes. */
static const double staleness_buckets[] = {0, 1, 2, 3, 5, 10, 20, 50, 100};
static const double round_buckets[] = {1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200};
static const double fast_buckets[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5,
                                      1,     2.5,   5,    10,   30,  60,   300};

static fc_status add1(metrics_registry *r, metrics_type t, const char *name, const char *help,
                      const double *buckets, size_t nbuckets, metrics_series **out, fc_error *err) {
    metrics_family *f;
    fc_status st = metrics_family_add(r, t, name, help, NULL, 0, buckets, nbuckets, &f, err);
    if (st == FC_OK)
        st = metrics_series_add(f, NULL, out, err);
    return st;
}

fc_status metrics_fedcoord_new(metrics_fedcoord *m, fc_error *err) {
    memset(m, 0, sizeof *m);
    metrics_registry *r;
    fc_status st = metrics_new(&r, err);
    if (st != FC_OK)
        return st;
    metrics_family *f;
    const char *state[] = {"state"}, *reason[] = {"reason"}, *code[] = {"code"};
    const char *committed[] = {"committed"}, *failed[] = {"failed"};
    if ((st = metrics_family_add(r, METRICS_COUNTER, "fedcoord_rounds_total",
                                 "Rounds that ended, by final state.", state, 1, NULL, 0, &f,
                                 err)) != FC_OK ||
        (st = metrics_series_add(f, committed, &m->rounds_committed, err)) != FC_OK ||
        (st = metrics_series_add(f, failed, &m->rounds_failed, err)) != FC_OK)
        goto fail;
    if ((st = add1(r, METRICS_COUNTER, "fedcoord_updates_accepted_total",
                   "Client updates accepted into a round.", NULL, 0, &m->updates_accepted, err)) !=
        FC_OK)
        goto fail;
    if ((st = metrics_family_add(r, METRICS_COUNTER, "fedcoord_updates_rejected_total",
                                 "Client updates rejected, by reason.", reason, 1, NULL, 0,
                                 &m->updates_rejected, err)) != FC_OK)
        goto fail;
    for (size_t i = 0; i < metrics_reject_reason_count; i++) {
        const char *v[] = {metrics_reject_reasons[i]};
        if ((st = metrics_series_add(m->updates_rejected, v, NULL, err)) != FC_OK)
            goto fail;
    }
    if ((st = add1(r, METRICS_COUNTER, "fedcoord_bytes_received_total",
                   "Bytes of update data received from clients.", NULL, 0, &m->bytes_received,
                   err)) != FC_OK ||
        (st = add1(r, METRICS_HISTOGRAM, "fedcoord_round_duration_seconds",
                   "Wall time of ended rounds, from start to commit or failure.", round_buckets,
                   sizeof round_buckets / sizeof *round_buckets, &m->round_duration, err)) !=
            FC_OK ||
        (st = add1(r, METRICS_HISTOGRAM, "fedcoord_aggregation_seconds",
                   "Time spent aggregating a round's updates.", fast_buckets,
                   sizeof fast_buckets / sizeof *fast_buckets, &m->aggregation_time, err)) !=
            FC_OK ||
        (st = add1(r, METRICS_HISTOGRAM, "fedcoord_commit_latency_seconds",
                   "Time from submitting a round commit to the store until it is durable.",
                   fast_buckets, sizeof fast_buckets / sizeof *fast_buckets, &m->commit_latency,
                   err)) != FC_OK ||
        (st = add1(r, METRICS_GAUGE, "fedcoord_connected_clients",
                   "Client sessions currently connected.", NULL, 0, &m->connected_clients, err)) !=
            FC_OK ||
        (st = add1(r, METRICS_GAUGE, "fedcoord_staging_bytes",
                   "Bytes of update data currently held in staging.", NULL, 0, &m->staging_bytes,
                   err)) != FC_OK ||
        (st = add1(r, METRICS_GAUGE, "fedcoord_current_round",
                   "Id of the running or last round, 0 before the first.", NULL, 0,
                   &m->current_round, err)) != FC_OK ||
        (st = add1(r, METRICS_GAUGE, "fedcoord_model_version", "Newest committed model version.",
                   NULL, 0, &m->model_version, err)) != FC_OK ||
        (st = add1(r, METRICS_GAUGE, "fedcoord_buffer_fill",
                   "Async mode: updates accepted into the open buffer.", NULL, 0, &m->buffer_fill,
                   err)) != FC_OK ||
        (st = add1(r, METRICS_GAUGE, "fedcoord_buffer_size",
                   "Async mode: updates per committed version (0 in sync mode).", NULL, 0,
                   &m->buffer_size, err)) != FC_OK ||
        (st = add1(r, METRICS_GAUGE, "fedcoord_tasks_in_flight",
                   "Async mode: clients training a task now.", NULL, 0, &m->tasks_in_flight,
                   err)) != FC_OK ||
        (st = add1(r, METRICS_GAUGE, "fedcoord_versions_per_minute",
                   "Model versions committed in the last 60 seconds.", NULL, 0,
                   &m->versions_per_min, err)) != FC_OK ||
        (st = add1(r, METRICS_HISTOGRAM, "fedcoord_update_staleness",
                   "Async mode: versions committed between a task and its accepted update.",
                   staleness_buckets, sizeof staleness_buckets / sizeof *staleness_buckets,
                   &m->staleness, err)) != FC_OK)
        goto fail;
    if ((st = metrics_family_add(r, METRICS_COUNTER, "fedcoord_http_requests_total",
                                 "HTTP API responses, by status class.", code, 1, NULL, 0, &f,
                                 err)) != FC_OK)
        goto fail;
    for (int i = 0; i < 5; i++) {
        char cls[4] = {(char)('1' + i), 'x', 'x', 0};
        const char *v[] = {cls};
        if ((st = metrics_series_add(f, v, &m->http_requests[i], err)) != FC_OK)
            goto fail;
    }
    m->reg = r;
    return FC_OK;
fail:
    metrics_free(r);
    memset(m, 0, sizeof *m);
    return st;
}

void metrics_fedcoord_reject(metrics_fedcoord *m, const char *reason) {
    size_t i = 0;
    while (i + 1 < metrics_reject_reason_count &&
           !(reason && strcasecmp(reason, metrics_reject_reasons[i]) == 0))
        i++;
    const char *v[] = {metrics_reject_reasons[i]};
    metrics_series *s = metrics_series_find(m->updates_rejected, v);
    assert(s);
    metrics_counter_add(s, 1);
}

void metrics_fedcoord_http(metrics_fedcoord *m, int status) {
    if (status < 100 || status > 599)
        return;
    metrics_counter_add(m->http_requests[status / 100 - 1], 1);
}
